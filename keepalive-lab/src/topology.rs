//! The lab's topology: client ⇄ middlebox ⇄ server(s), each in its own network namespace, with
//! addresses from 198.51.100.0/24 (and optionally fd6b:a1::/48) only, and no default routes.
//!
//! Address plan (IPv4 /30 links, IPv6 /64 links, middlebox side `.1`/`::1`):
//!
//! | link | middlebox | host |
//! |---|---|---|
//! | client | 198.51.100.1, fd6b:a1:0:1::1 | 198.51.100.2, fd6b:a1:0:1::2 |
//! | server *i* (0 to 15) | 198.51.100.(129+4i), fd6b:a1:0:(10+i)::1 | 198.51.100.(130+4i), fd6b:a1:0:(10+i)::2 |
//!
//! The optional VIP, 198.51.100.100 and fd6b:a1:0:ff::100, is a local address of the
//! middlebox that new flows DNAT from, round-robin, to the servers (same port). With IPv6,
//! duplicate address detection is off in every namespace, so addresses work at once.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::middlebox::{Middlebox, MiddleboxMode, VipRules, ruleset};
use crate::{
    LabError, Netns,
    cmd::{self, Tool, check_tools},
};

/// The IPv4 lab network; every lab address is inside it.
pub const LAB_NET_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 51, 100, 0), 24);
/// The IPv6 lab network (unique local addresses); every lab address is inside it.
pub const LAB_NET_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0xfd6b, 0xa1, 0, 0, 0, 0, 0, 0), 48);
/// The virtual IPv4 address the middlebox DNATs to the servers.
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 100);
/// The virtual IPv6 address the middlebox DNATs to the servers.
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd6b, 0xa1, 0, 0xff, 0, 0, 0, 0x100);
/// Most servers a topology can have (the server links fill 198.51.100.128/26).
pub const MAX_SERVERS: usize = 16;

/// Name of the client's and servers' interface towards the middlebox.
const UPLINK: &str = "to-mb";

/// One end host of the lab: its namespace and addresses.
#[derive(Debug)]
pub struct Host {
    netns: Netns,
    ipv4: Ipv4Addr,
    ipv6: Option<Ipv6Addr>,
}

impl Host {
    /// The host's namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The host's IPv4 address.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4
    }

    /// The host's IPv6 address, when the topology has IPv6.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.ipv6
    }
}

/// Builds a [`Topology`].
#[derive(Clone, Debug)]
pub struct TopologyBuilder {
    servers: usize,
    ipv6: bool,
    vip: bool,
    middlebox: Middlebox,
}

impl Default for TopologyBuilder {
    fn default() -> Self {
        TopologyBuilder {
            servers: 1,
            ipv6: false,
            vip: false,
            middlebox: Middlebox::default(),
        }
    }
}

impl TopologyBuilder {
    /// One server, IPv4 only, no VIP, [`Middlebox::default`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of servers, 1 to [`MAX_SERVERS`].
    pub fn servers(mut self, count: usize) -> Self {
        self.servers = count;
        self
    }

    /// Also give every link IPv6 addresses from fd6b:a1::/48.
    pub fn ipv6(mut self, enabled: bool) -> Self {
        self.ipv6 = enabled;
        self
    }

    /// Put the VIP ([`VIP_V4`], and [`VIP_V6`] with IPv6) on the middlebox, DNAT to the servers.
    pub fn vip(mut self, enabled: bool) -> Self {
        self.vip = enabled;
        self
    }

    /// The middlebox's mode and timeout.
    pub fn middlebox(mut self, middlebox: Middlebox) -> Self {
        self.middlebox = middlebox;
        self
    }

    /// Creates the namespaces, links, addresses, routes, sysctls and middlebox rules. On error,
    /// whatever was already created is deleted again.
    pub fn build(self) -> Result<Topology, LabError> {
        if !(1..=MAX_SERVERS).contains(&self.servers) {
            return Err(LabError::InvalidConfig(format!(
                "{} servers: use 1 to {MAX_SERVERS}",
                self.servers
            )));
        }
        self.middlebox.validate()?;
        check_tools(&[Tool::Ip, Tool::Nft])?;

        let middlebox = Netns::create("mb")?;
        let client = Host {
            netns: Netns::create("client")?,
            ipv4: client_link_v4()[1],
            ipv6: self.ipv6.then(|| client_link_v6()[1]),
        };
        let servers = (0..self.servers)
            .map(|index| {
                Ok(Host {
                    netns: Netns::create(&format!("srv{index}"))?,
                    ipv4: server_link_v4(index)[1],
                    ipv6: self.ipv6.then(|| server_link_v6(index)[1]),
                })
            })
            .collect::<Result<Vec<_>, LabError>>()?;
        let topology = Topology {
            client,
            servers,
            middlebox,
            vip: self.vip,
        };
        topology.wire(self.ipv6)?;
        topology.set_middlebox(self.middlebox)?;
        Ok(topology)
    }
}

/// Client ⇄ middlebox ⇄ servers, each in its own namespace; all deleted on drop.
#[derive(Debug)]
pub struct Topology {
    client: Host,
    servers: Vec<Host>,
    middlebox: Netns,
    vip: bool,
}

impl Topology {
    /// A [`TopologyBuilder`] with the defaults.
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::new()
    }

    /// The client host.
    pub fn client(&self) -> &Host {
        &self.client
    }

    /// The middlebox's namespace.
    pub fn middlebox(&self) -> &Netns {
        &self.middlebox
    }

    /// The server hosts, in address order.
    pub fn servers(&self) -> &[Host] {
        &self.servers
    }

    /// The first server (a topology always has at least one).
    pub fn server(&self) -> &Host {
        // The builder refuses zero servers, so the slice is never empty.
        &self.servers[0]
    }

    /// The VIP's IPv4 address, when the topology has one.
    pub fn vip_v4(&self) -> Option<Ipv4Addr> {
        self.vip.then_some(VIP_V4)
    }

    /// The VIP's IPv6 address, when the topology has one and IPv6.
    pub fn vip_v6(&self) -> Option<Ipv6Addr> {
        (self.vip && self.client.ipv6.is_some()).then_some(VIP_V6)
    }

    /// Names of every namespace of the topology.
    pub fn netns_names(&self) -> Vec<&str> {
        self.all_netns().map(Netns::name).collect()
    }

    /// Replaces the middlebox's rules (one nft transaction), then sets the conntrack sysctls
    /// (established timeout, `nf_conntrack_tcp_loose=0`) once the rules exist: the rules load
    /// conntrack, whose sysctls appear with it. Flows already tracked keep their entries.
    pub fn set_middlebox(&self, middlebox: Middlebox) -> Result<(), LabError> {
        middlebox.validate()?;
        let vip = self.vip_rules();
        self.middlebox.nft(&ruleset(middlebox.mode, vip.as_ref()))?;
        if middlebox.mode == MiddleboxMode::Forward && vip.is_none() {
            return Ok(());
        }
        let timeout = middlebox.established_timeout_secs.to_string();
        self.middlebox.set_sysctls(&[
            (
                "net.netfilter.nf_conntrack_tcp_timeout_established",
                &timeout,
            ),
            ("net.netfilter.nf_conntrack_tcp_loose", "0"),
        ])
    }

    /// The TCP flows the middlebox tracks, one `conntrack -L` line each.
    pub fn conntrack_tcp_flows(&self) -> Result<Vec<String>, LabError> {
        let conntrack = cmd::locate(Tool::Conntrack)?;
        let listing = self.middlebox.run(conntrack, &["-L", "-p", "tcp"])?;
        Ok(listing.lines().map(str::to_owned).collect())
    }

    /// Deletes every namespace now and reports the first failure; dropping the topology does
    /// the same and prints failures to standard error.
    pub fn teardown(self) -> Result<(), LabError> {
        let Topology {
            client,
            servers,
            middlebox,
            vip: _,
        } = self;
        let results: Vec<Result<(), LabError>> = [client.netns, middlebox]
            .into_iter()
            .chain(servers.into_iter().map(|server| server.netns))
            .map(Netns::delete)
            .collect();
        results.into_iter().collect()
    }

    fn wire(&self, ipv6: bool) -> Result<(), LabError> {
        if ipv6 {
            // Duplicate address detection would hold the first connection back by ~2 s.
            for netns in self.all_netns() {
                netns.set_sysctls(&[
                    ("net.ipv6.conf.all.accept_dad", "0"),
                    ("net.ipv6.conf.default.accept_dad", "0"),
                ])?;
            }
        }
        let mut middlebox = Vec::new();
        let mut links = vec![(
            &self.client,
            "to-client".to_owned(),
            client_link_v4(),
            client_link_v6(),
        )];
        for (index, server) in self.servers.iter().enumerate() {
            links.push((
                server,
                format!("to-srv{index}"),
                server_link_v4(index),
                server_link_v6(index),
            ));
        }
        for (host, device, v4, v6) in &links {
            middlebox.push(format!(
                "link add {device} type veth peer name {UPLINK} netns {}",
                host.netns.name()
            ));
            middlebox.push(format!("addr add {}/30 dev {device}", v4[0]));
            if ipv6 {
                middlebox.push(format!("addr add {}/64 dev {device}", v6[0]));
            }
            middlebox.push(format!("link set {device} up"));
        }
        if self.vip {
            middlebox.push(format!("addr add {VIP_V4}/32 dev lo"));
            if ipv6 {
                middlebox.push(format!("addr add {VIP_V6}/128 dev lo"));
            }
        }
        self.middlebox.ip_batch(&middlebox)?;
        let mut forwarding = vec![("net.ipv4.ip_forward", "1")];
        if ipv6 {
            forwarding.push(("net.ipv6.conf.all.forwarding", "1"));
        }
        self.middlebox.set_sysctls(&forwarding)?;

        for (host, _, v4, v6) in &links {
            let mut commands = vec![
                format!("addr add {}/30 dev {UPLINK}", v4[1]),
                format!("link set {UPLINK} up"),
                format!("route add {}/{} via {}", LAB_NET_V4.0, LAB_NET_V4.1, v4[0]),
            ];
            if ipv6 {
                commands.push(format!("addr add {}/64 dev {UPLINK}", v6[1]));
                commands.push(format!(
                    "route add {}/{} via {}",
                    LAB_NET_V6.0, LAB_NET_V6.1, v6[0]
                ));
            }
            host.netns.ip_batch(&commands)?;
        }
        Ok(())
    }

    fn all_netns(&self) -> impl Iterator<Item = &Netns> {
        [&self.client.netns, &self.middlebox]
            .into_iter()
            .chain(self.servers.iter().map(|server| &server.netns))
    }

    fn vip_rules(&self) -> Option<VipRules> {
        self.vip.then(|| VipRules {
            servers_v4: self.servers.iter().map(Host::ipv4).collect(),
            servers_v6: self.servers.iter().filter_map(Host::ipv6).collect(),
        })
    }
}

/// `[middlebox side, client side]` of the client link.
fn client_link_v4() -> [Ipv4Addr; 2] {
    [
        Ipv4Addr::new(198, 51, 100, 1),
        Ipv4Addr::new(198, 51, 100, 2),
    ]
}

fn client_link_v6() -> [Ipv6Addr; 2] {
    [link_v6(1, 1), link_v6(1, 2)]
}

/// `[middlebox side, server side]` of server `index`'s link (`index` < [`MAX_SERVERS`]).
fn server_link_v4(index: usize) -> [Ipv4Addr; 2] {
    let base = 128 + 4 * (index % MAX_SERVERS) as u8;
    [
        Ipv4Addr::new(198, 51, 100, base + 1),
        Ipv4Addr::new(198, 51, 100, base + 2),
    ]
}

fn server_link_v6(index: usize) -> [Ipv6Addr; 2] {
    let subnet = 0x10 + (index % MAX_SERVERS) as u16;
    [link_v6(subnet, 1), link_v6(subnet, 2)]
}

fn link_v6(subnet: u16, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd6b, 0xa1, 0, subnet, 0, 0, 0, host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_lab_v4(addr: Ipv4Addr) -> bool {
        u32::from(addr) >> (32 - LAB_NET_V4.1) == u32::from(LAB_NET_V4.0) >> (32 - LAB_NET_V4.1)
    }

    fn in_lab_v6(addr: Ipv6Addr) -> bool {
        u128::from(addr) >> (128 - LAB_NET_V6.1) == u128::from(LAB_NET_V6.0) >> (128 - LAB_NET_V6.1)
    }

    #[test]
    fn addresses_stay_inside_the_lab_networks_and_never_overlap() {
        let mut v4 = vec![VIP_V4];
        let mut v6 = vec![VIP_V6];
        v4.extend(client_link_v4());
        v6.extend(client_link_v6());
        for index in 0..MAX_SERVERS {
            v4.extend(server_link_v4(index));
            v6.extend(server_link_v6(index));
        }
        assert!(v4.iter().all(|a| in_lab_v4(*a)), "{v4:?}");
        assert!(v6.iter().all(|a| in_lab_v6(*a)), "{v6:?}");
        let unique_v4: std::collections::BTreeSet<_> = v4.iter().collect();
        let unique_v6: std::collections::BTreeSet<_> = v6.iter().collect();
        assert_eq!(unique_v4.len(), v4.len());
        assert_eq!(unique_v6.len(), v6.len());
        assert_eq!(server_link_v4(0)[1], Ipv4Addr::new(198, 51, 100, 130));
        assert_eq!(server_link_v4(15)[1], Ipv4Addr::new(198, 51, 100, 190));
    }

    #[test]
    fn bad_configurations_are_errors() {
        assert!(matches!(
            TopologyBuilder::new().servers(0).build(),
            Err(LabError::InvalidConfig(_))
        ));
        assert!(matches!(
            TopologyBuilder::new().servers(MAX_SERVERS + 1).build(),
            Err(LabError::InvalidConfig(_))
        ));
        let zero_timeout = Middlebox {
            mode: MiddleboxMode::Reject,
            established_timeout_secs: 0,
        };
        assert!(matches!(
            TopologyBuilder::new().middlebox(zero_timeout).build(),
            Err(LabError::InvalidConfig(_))
        ));
    }
}
