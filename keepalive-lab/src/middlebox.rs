//! The middlebox of the lab: how it treats flows it forgot ([`MiddleboxMode`]), conntrack's idle
//! timeout ([`Middlebox`]), and the nftables script that makes it so, with the VIP's
//! round-robin DNAT.

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use crate::{LabError, VIP_V4, VIP_V6};

/// The nftables table the middlebox rules live in.
const TABLE: &str = "lb";

/// How the middlebox treats TCP segments of flows it does not know (any more).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MiddleboxMode {
    /// Answers them with an RST it forges (`reject with tcp reset`), like most L4 load balancers.
    Reject,
    /// Drops them silently, like a NAT gateway that forgot the flow.
    Drop,
    /// Plain router: no filtering. Conntrack still runs when there is a VIP (for the DNAT).
    Forward,
}

impl MiddleboxMode {
    /// The name used on command lines: `reject`, `drop` or `forward`.
    pub fn as_str(self) -> &'static str {
        match self {
            MiddleboxMode::Reject => "reject",
            MiddleboxMode::Drop => "drop",
            MiddleboxMode::Forward => "forward",
        }
    }
}

impl fmt::Display for MiddleboxMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MiddleboxMode {
    type Err = LabError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "reject" => Ok(MiddleboxMode::Reject),
            "drop" => Ok(MiddleboxMode::Drop),
            "forward" => Ok(MiddleboxMode::Forward),
            other => Err(LabError::InvalidConfig(format!(
                "middlebox mode {other:?}: expected reject, drop or forward"
            ))),
        }
    }
}

/// What the middlebox does: its mode and conntrack's idle timeout for established TCP flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Middlebox {
    /// How forgotten flows are treated.
    pub mode: MiddleboxMode,
    /// `net.netfilter.nf_conntrack_tcp_timeout_established`, in seconds (1 to 2 147 483).
    pub established_timeout_secs: u32,
}

impl Middlebox {
    /// Largest timeout accepted: the kernel stores it in jiffies in an `int` (HZ up to 1000).
    const MAX_TIMEOUT_SECS: u32 = 2_147_483;

    pub(crate) fn validate(self) -> Result<(), LabError> {
        if (1..=Self::MAX_TIMEOUT_SECS).contains(&self.established_timeout_secs) {
            Ok(())
        } else {
            Err(LabError::InvalidConfig(format!(
                "established timeout {} s: use 1 to {} s",
                self.established_timeout_secs,
                Self::MAX_TIMEOUT_SECS
            )))
        }
    }
}

impl Default for Middlebox {
    /// Reject mode with a 5 s established timeout.
    fn default() -> Self {
        Middlebox {
            mode: MiddleboxMode::Reject,
            established_timeout_secs: 5,
        }
    }
}

/// Where the VIP's new flows go.
#[derive(Debug)]
pub(crate) struct VipRules {
    pub(crate) servers_v4: Vec<Ipv4Addr>,
    pub(crate) servers_v6: Vec<Ipv6Addr>,
}

/// The middlebox's nftables script: replaces table `lb` in one transaction. The filter rules
/// make forgotten flows invalid and reject (or drop) them; with a VIP they also guard the input hook (forgotten VIP flows are not DNATed,
/// so they arrive for the VIP, a local address) and a nat chain spreads new flows round-robin.
pub(crate) fn ruleset(mode: MiddleboxMode, vip: Option<&VipRules>) -> String {
    let mut script = format!("table inet {TABLE}\ndelete table inet {TABLE}\n");
    let forgotten = match mode {
        MiddleboxMode::Reject => Some("reject with tcp reset"),
        MiddleboxMode::Drop => Some("drop"),
        MiddleboxMode::Forward => None,
    };
    if forgotten.is_none() && vip.is_none() {
        return script;
    }
    script.push_str(&format!("table inet {TABLE} {{\n"));
    if let Some(verdict) = forgotten {
        let rules = format!(
            "\t\tct state invalid tcp flags rst drop\n\
             \t\tct state invalid {verdict}\n\
             \t\tct state new tcp flags & (syn | ack) != syn {verdict}\n"
        );
        let mut hooks = vec![("forward_flows", "forward")];
        if vip.is_some() {
            hooks.push(("vip_input", "input"));
        }
        for (chain, hook) in hooks {
            script.push_str(&format!(
                "\tchain {chain} {{\n\t\ttype filter hook {hook} priority filter; policy accept;\n{rules}\t}}\n"
            ));
        }
    }
    if let Some(vip) = vip {
        script.push_str(
            "\tchain vip_dnat {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n",
        );
        script.push_str(&dnat_rule("ip", &VIP_V4.to_string(), &vip.servers_v4));
        if !vip.servers_v6.is_empty() {
            script.push_str(&dnat_rule("ip6", &VIP_V6.to_string(), &vip.servers_v6));
        }
        script.push_str("\t}\n");
    }
    script.push_str("}\n");
    script
}

fn dnat_rule<A: fmt::Display>(family: &str, vip: &str, servers: &[A]) -> String {
    let map: Vec<String> = servers
        .iter()
        .enumerate()
        .map(|(index, server)| format!("{index} : {server}"))
        .collect();
    format!(
        "\t\t{family} daddr {vip} meta l4proto tcp dnat {family} to numgen inc mod {} map {{ {} }}\n",
        servers.len(),
        map.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reject_ruleset_forges_resets_for_forgotten_flows() {
        assert_eq!(
            ruleset(MiddleboxMode::Reject, None),
            "table inet lb\ndelete table inet lb\ntable inet lb {\n\
             \tchain forward_flows {\n\t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tct state invalid tcp flags rst drop\n\
             \t\tct state invalid reject with tcp reset\n\
             \t\tct state new tcp flags & (syn | ack) != syn reject with tcp reset\n\t}\n}\n"
        );
    }

    #[test]
    fn drop_ruleset_never_forges_resets() {
        let script = ruleset(MiddleboxMode::Drop, None);
        assert!(!script.contains("reject"), "{script}");
        assert!(script.contains("ct state invalid drop"), "{script}");
    }

    #[test]
    fn forward_without_vip_only_removes_the_table() {
        assert_eq!(
            ruleset(MiddleboxMode::Forward, None),
            "table inet lb\ndelete table inet lb\n"
        );
    }

    #[test]
    fn vip_ruleset_guards_input_and_spreads_round_robin() {
        let vip = VipRules {
            servers_v4: vec![
                Ipv4Addr::new(198, 51, 100, 130),
                Ipv4Addr::new(198, 51, 100, 134),
            ],
            servers_v6: vec![
                "fd6b:a1:0:10::2".parse().unwrap(),
                "fd6b:a1:0:11::2".parse().unwrap(),
            ],
        };
        let script = ruleset(MiddleboxMode::Reject, Some(&vip));
        assert!(
            script.contains("type filter hook input priority filter"),
            "{script}"
        );
        assert!(
            script.contains(
                "ip daddr 198.51.100.100 meta l4proto tcp dnat ip to numgen inc mod 2 \
                 map { 0 : 198.51.100.130, 1 : 198.51.100.134 }"
            ),
            "{script}"
        );
        assert!(
            script.contains(
                "ip6 daddr fd6b:a1:0:ff::100 meta l4proto tcp dnat ip6 to numgen inc mod 2 \
                 map { 0 : fd6b:a1:0:10::2, 1 : fd6b:a1:0:11::2 }"
            ),
            "{script}"
        );
        let forward = ruleset(MiddleboxMode::Forward, Some(&vip));
        assert!(!forward.contains("filter"), "{forward}");
        assert!(forward.contains("dnat ip to"), "{forward}");
    }

    #[test]
    fn modes_parse_and_print() {
        for mode in [
            MiddleboxMode::Reject,
            MiddleboxMode::Drop,
            MiddleboxMode::Forward,
        ] {
            assert_eq!(
                mode.to_string().parse::<MiddleboxMode>().expect("parses"),
                mode
            );
        }
        assert!("silent".parse::<MiddleboxMode>().is_err());
    }
}
