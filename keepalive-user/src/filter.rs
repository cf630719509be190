//! What to watch: `--remote CIDR`, `--port`, `--netns` and `--process`. The first three are
//! applied by the kernel programs before a record is sent (see `kernel::filter`); the process
//! name is applied here, to what is printed, since the owner of a record is only settled in
//! userspace. A connection is reported when it matches every filter given (and any value of a
//! repeated one).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt as _,
    path::Path,
    str::FromStr,
};

use crate::{
    correlate::Finding,
    event::{Comm, TcpEvent},
};

/// The longest command name the kernel keeps (`TASK_COMM_LEN` - 1).
const COMM_MAX: usize = 15;

/// An IPv4 or IPv6 network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    /// The network's address, host bits cleared.
    pub addr: IpAddr,
    /// Bits of the prefix.
    pub prefix_len: u8,
}

impl FromStr for Cidr {
    type Err = String;

    /// `198.51.100.0/24`, `fd6b:a1::/64`, or an address alone (a host).
    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            None => max,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|&len| len <= max)
                .ok_or_else(|| format!("`/{prefix}` is not a prefix length from 0 to {max}"))?,
        };
        Ok(Self {
            addr: masked(addr, prefix_len),
            prefix_len,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

fn masked(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from_bits(v4.to_bits() & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & mask))
        }
    }
}

/// A network namespace by its inode number, or by a file that is one (`/run/netns/NAME`,
/// `/proc/PID/ns/net`): the number the records' `netns` shows.
pub fn parse_netns(text: &str) -> Result<u32, String> {
    if let Ok(inode) = text.parse::<u32>() {
        return Ok(inode);
    }
    let metadata = Path::new(text).metadata().map_err(|error| {
        format!("`{text}` is neither a namespace's inode number nor a file to read: {error}")
    })?;
    u32::try_from(metadata.ino())
        .map_err(|_| format!("`{text}` has inode {}: not a namespace", metadata.ino()))
}

/// A command name as the kernel keeps it: at most 15 bytes.
pub fn parse_process(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("the process name is empty".to_owned());
    }
    if text.len() > COMM_MAX {
        return Err(format!(
            "`{text}` is longer than the {COMM_MAX} bytes the kernel keeps of a command name: \
             give `{}`",
            text.get(..COMM_MAX).unwrap_or(text)
        ));
    }
    Ok(text.to_owned())
}

/// Every filter given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Remote networks (applied in the kernel).
    pub remotes: Vec<Cidr>,
    /// Local or remote ports (applied in the kernel).
    pub ports: Vec<u16>,
    /// Network namespace inodes (applied in the kernel).
    pub netns: Vec<u32>,
    /// Command names of the connection's owner (applied here), as the kernel's bytes: an
    /// event's name is compared as it is, a finding's in its escaped form.
    pub processes: Vec<Comm>,
}

impl Filter {
    /// Whether an event is about a process being watched.
    pub fn admits_event(&self, event: &TcpEvent) -> bool {
        if self.processes.is_empty() {
            return true;
        }
        let owner = event
            .context
            .as_ref()
            .and_then(|context| context.owner.as_ref())
            .or(event.task.as_ref());
        owner.is_some_and(|task| self.processes.contains(&task.comm))
    }

    /// Whether a finding is about a process being watched.
    pub fn admits_finding(&self, finding: &Finding) -> bool {
        self.admits_comm(finding.comm.as_deref())
    }

    fn admits_comm(&self, comm: Option<&str>) -> bool {
        self.processes.is_empty()
            || comm.is_some_and(|comm| self.processes.iter().any(|name| name.to_string() == comm))
    }

    /// The filters in words, for the start-up report.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let mut list = |flag: &str, values: Vec<String>| {
            if !values.is_empty() {
                parts.push(format!("{flag} {}", values.join(" or ")));
            }
        };
        list("remote", self.remotes.iter().map(Cidr::to_string).collect());
        list("port", self.ports.iter().map(u16::to_string).collect());
        list("netns", self.netns.iter().map(u32::to_string).collect());
        list(
            "process",
            self.processes.iter().map(Comm::to_string).collect(),
        );
        if parts.is_empty() {
            "none: every connection".to_owned()
        } else {
            parts.join(", and ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_with_host_bits_cleared() {
        let cidr: Cidr = "198.51.100.77/24".parse().unwrap();
        assert_eq!(cidr.to_string(), "198.51.100.0/24");
        assert_eq!(
            "fd6b:a1::5/64".parse::<Cidr>().unwrap().to_string(),
            "fd6b:a1::/64"
        );
        assert_eq!(
            "127.0.0.2".parse::<Cidr>().unwrap().to_string(),
            "127.0.0.2/32"
        );
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().prefix_len, 0);
        for (bad, says) in [
            ("198.51.100.0/33", "from 0 to 32"),
            ("fd6b::/129", "from 0 to 128"),
            ("example.com/24", "not an IPv4 or IPv6 address"),
            ("198.51.100.0/x", "`/x`"),
        ] {
            let error = bad.parse::<Cidr>().unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn namespaces_by_number_or_file() {
        assert_eq!(parse_netns("4026531840"), Ok(4_026_531_840));
        let own = parse_netns("/proc/self/ns/net").unwrap();
        assert!(own > 0);
        let error = parse_netns("/nonexistent/netns").unwrap_err();
        assert!(error.contains("/nonexistent/netns"), "{error}");
    }

    #[test]
    fn process_names_fit_the_kernels_comm() {
        assert_eq!(parse_process("nginx"), Ok("nginx".to_owned()));
        let error = parse_process("a-very-long-process-name").unwrap_err();
        assert!(error.contains("give `a-very-long-pro`"), "{error}");
        assert!(parse_process("").is_err());
    }

    #[test]
    fn a_process_filter_needs_a_known_owner() {
        let filter = Filter {
            processes: vec![Comm::from("java")],
            ..Filter::default()
        };
        assert!(filter.admits_comm(Some("java")));
        assert!(!filter.admits_comm(Some("python3")));
        assert!(!filter.admits_comm(None));
        assert!(Filter::default().admits_comm(None));
        assert_eq!(filter.describe(), "process java");
        let odd = Filter {
            processes: vec![Comm::from("a|b")],
            ..Filter::default()
        };
        assert!(
            odd.admits_comm(Some(r"a\x7cb")),
            "a finding carries the escaped name"
        );
        assert!(!odd.admits_comm(Some("a|b")));
        assert_eq!(odd.describe(), r"process a\x7cb");
        let both = Filter {
            ports: vec![80, 443],
            remotes: vec!["198.51.100.0/24".parse().unwrap()],
            ..filter
        };
        assert_eq!(
            both.describe(),
            "remote 198.51.100.0/24, and port 80 or 443, and process java"
        );
    }
}
