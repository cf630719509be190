//! `keepalive-observer sockets`: the host's TCP connections with the risk that each is reset
//! on its next use, from inet_diag (`diag`), the socket iterator (`iter`), the namespace's
//! sysctls, the owning processes (`owners`) and the destinations' windows (`windows`), judged
//! by the rules in `risk` and written by `report`.

pub mod diag;
pub mod iter;
pub mod learned;
pub mod model;
pub mod netns;
pub mod owners;
pub mod report;
pub mod risk;
pub mod windows;

use std::{
    collections::{HashMap, HashSet},
    io::{self, Write},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use keepalive_common::SocketAudit;
use keepalive_schema::{socket::Risk, state::StateError};

use self::{
    diag::{DiagError, Dump},
    iter::{IterError, SocketIterator},
    learned::Learned,
    model::{Connection, DiagSocket, KeepaliveSysctls},
    netns::{Namespace, NetnsError},
    report::Judged,
    windows::{GivenWindow, Windows},
};

/// TCP_LISTEN.
const LISTEN: u8 = 10;

/// Errors of the audit.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A namespace could not be found or entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The socket iterator could not be loaded or read.
    #[error(transparent)]
    Iter(#[from] IterError),
    /// inet_diag could not be read.
    #[error(transparent)]
    Diag(#[from] DiagError),
    /// The daemon's state file could not be read.
    #[error(transparent)]
    State(#[from] StateError),
    /// A keepalive sysctl of a namespace could not be read.
    #[error("reading {path}: {why}")]
    Sysctl {
        /// The sysctl's file.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// Writing the output failed.
    #[error("writing the output: {0}")]
    Output(#[from] io::Error),
}

/// Which connections to list.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only those to this remote (an address, or address and port).
    pub remote: Option<RemoteFilter>,
    /// Only those with this local or remote port.
    pub port: Option<u16>,
    /// Only those of a process with this command name or pid.
    pub process: Option<String>,
    /// Only those at these risks (all when empty).
    pub risks: Vec<Risk>,
}

/// `--remote`: an address, or an address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteFilter {
    /// Any port of this address.
    Host(IpAddr),
    /// This address and port.
    Service(SocketAddr),
}

impl std::str::FromStr for RemoteFilter {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.parse()
            .map(Self::Service)
            .or_else(|_| text.parse().map(Self::Host))
            .map_err(|_| format!("`{text}` is neither an address nor address:port"))
    }
}

impl Filter {
    fn keeps(&self, (c, v): &Judged) -> bool {
        let remote = match self.remote {
            None => true,
            Some(RemoteFilter::Host(ip)) => c.diag.remote.ip() == ip,
            Some(RemoteFilter::Service(service)) => c.diag.remote == service,
        };
        let port = self
            .port
            .is_none_or(|p| c.diag.local.port() == p || c.diag.remote.port() == p);
        let process = self.process.as_deref().is_none_or(|p| {
            c.owner
                .as_ref()
                .is_some_and(|o| o.comm == p || o.pid.to_string() == p)
        });
        let risk = self.risks.is_empty() || self.risks.contains(&v.risk);
        remote && port && process && risk
    }
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// The table.
    Table,
    /// JSON lines.
    Json,
}

/// What to audit and how to print it.
#[derive(Clone, Debug)]
pub struct AuditOptions {
    /// Only this namespace (`--netns`); every one in use when `None`.
    pub netns: Option<String>,
    /// Windows given on the command line.
    pub windows: Vec<GivenWindow>,
    /// The daemon's state directory, for the windows it learned.
    pub state_dir: PathBuf,
    /// Which connections to list.
    pub filter: Filter,
}

/// What was read in one namespace.
struct NamespaceReading {
    namespace: Namespace,
    dump: Dump,
    audits: HashMap<u64, SocketAudit>,
    sysctls: KeepaliveSysctls,
    /// The namespace's cookie (`SO_NETNS_COOKIE`), which the state file keys on.
    cookie: Option<u64>,
}

/// What one audit found.
#[derive(Debug, Default)]
pub struct Audited {
    /// The connections kept by the filter, with their verdicts, worst first.
    pub judged: Vec<Judged>,
    /// Network namespaces read.
    pub namespaces: usize,
    /// What may be missing, in words.
    pub incomplete: Vec<String>,
}

/// Runs audits; the socket iterator is loaded by the first one (root, or CAP_BPF and
/// CAP_PERFMON) and kept.
#[derive(Default)]
pub struct Auditor {
    iterator: Option<SocketIterator>,
}

impl Auditor {
    /// Reads every namespace of `options` (all in use, or `--netns`) and judges its
    /// connections against the windows learned in `options.state_dir` and the given ones.
    pub fn audit(&mut self, options: &AuditOptions) -> Result<Audited, AuditError> {
        // What the user gave is checked before anything needs privileges.
        let (namespaces, only_one) = match &options.netns {
            Some(given) => (vec![netns::named(given)?], true),
            None => (netns::all(), false),
        };
        let learned = Learned::load(&options.state_dir)?;
        let iterator = match &mut self.iterator {
            Some(iterator) => iterator,
            None => self.iterator.insert(SocketIterator::load()?),
        };
        let mut readings = Vec::new();
        let mut incomplete = Vec::new();
        let mut vanished = 0;
        let mut unentered = 0;
        for namespace in namespaces {
            let link = iterator.link()?;
            let reading = netns::run_in(&namespace, || -> Result<_, AuditError> {
                // inet_diag first: it gives every socket it reports a cookie, which the
                // iterator then reads from the socket to match the two.
                let dump = diag::dump()?;
                let audits = iter::read(link)?;
                Ok((
                    dump,
                    audits,
                    sysctls()?,
                    crate::kernel::netns::current_cookie().ok(),
                ))
            });
            match reading {
                Ok(Ok((dump, audits, sysctls, cookie))) => readings.push(NamespaceReading {
                    namespace,
                    dump,
                    audits,
                    sysctls,
                    cookie,
                }),
                Ok(Err(error)) => return Err(error),
                // A namespace may vanish with its last process between listing and entering,
                // and its connections with it.
                Err(NetnsError::Vanished { .. }) if !only_one => vanished += 1,
                // Entering another namespace needs CAP_SYS_ADMIN: without it, the others are
                // still read and the missing ones said.
                Err(NetnsError::Enter { .. }) if !only_one => unentered += 1,
                Err(error) => return Err(error.into()),
            }
        }
        if unentered > 0 {
            let (namespaces, their) = if unentered == 1 {
                ("namespace", "its")
            } else {
                ("namespaces", "their")
            };
            incomplete.push(format!(
                "{unentered} network {namespaces} could not be entered (setns needs \
                 CAP_SYS_ADMIN): {their} connections are not listed"
            ));
        }
        match vanished {
            0 => {}
            1 => incomplete.push(
                "1 network namespace vanished (its processes exited) before it could be read"
                    .to_owned(),
            ),
            n => incomplete.push(format!(
                "{n} network namespaces vanished (their processes exited) before they could be \
                 read"
            )),
        }
        let owners = owners::socket_owners();
        let hz = iterator.hz();
        let mut judged = Vec::new();
        for reading in &readings {
            if reading.dump.interrupted {
                incomplete.push(format!(
                    "the socket list of network namespace {} changed while it was read: a \
                     connection may be missing",
                    reading.namespace.inode
                ));
            }
            let windows = Windows::new(
                learned.windows(reading.namespace.inode, reading.cookie),
                &options.windows,
            );
            judged.extend(
                connections(reading, &owners, &windows, hz)
                    .into_iter()
                    .map(|c| {
                        let verdict = risk::judge(&c);
                        (c, verdict)
                    })
                    .filter(|j| options.filter.keeps(j)),
            );
        }
        judged.sort_by(|(a, va), (b, vb)| {
            (va.risk, a.diag.remote, std::cmp::Reverse(a.idle())).cmp(&(
                vb.risk,
                b.diag.remote,
                std::cmp::Reverse(b.idle()),
            ))
        });
        Ok(Audited {
            judged,
            namespaces: readings.len(),
            incomplete,
        })
    }
}

/// Runs the audit and writes its output.
pub fn run(options: &AuditOptions, output: Output, out: &mut impl Write) -> Result<(), AuditError> {
    let audited = Auditor::default().audit(options)?;
    let summaries = report::summaries(&audited.judged);
    let audit = report::audit_line(audited.namespaces, &audited.judged, audited.incomplete);
    match output {
        Output::Table => report::table(out, &audited.judged, &summaries, &audit)?,
        Output::Json => report::json(out, &audited.judged, &summaries, audit)?,
    }
    Ok(())
}

/// The connections of one namespace (listeners left out), with everything joined.
fn connections(
    reading: &NamespaceReading,
    owners: &HashMap<u32, model::Owner>,
    windows: &Windows,
    hz: u32,
) -> Vec<Connection> {
    let listeners: HashSet<SocketAddr> = reading
        .dump
        .sockets
        .iter()
        .filter(|s| s.state == LISTEN)
        .map(|s| s.local)
        .collect();
    let accepted = |s: &DiagSocket| {
        let port = s.local.port();
        let wildcard = match s.local {
            SocketAddr::V4(_) => IpAddr::from([0u8; 4]),
            SocketAddr::V6(_) => IpAddr::from([0u16; 8]),
        };
        listeners.contains(&s.local)
            || listeners.contains(&SocketAddr::new(wildcard, port))
            // A dual-stack listener on [::] takes IPv4 connections too.
            || listeners.contains(&SocketAddr::new(IpAddr::from([0u16; 8]), port))
    };
    reading
        .dump
        .sockets
        .iter()
        .filter(|s| s.state != LISTEN)
        .map(|s| {
            let accepted = accepted(s);
            Connection {
                netns: reading.namespace.inode,
                diag: s.clone(),
                accepted,
                owner: owners.get(&s.inode).cloned(),
                keepalive: reading
                    .audits
                    .get(&s.cookie)
                    .map(|a| iter::effective(a, &reading.sysctls, hz)),
                window: if accepted {
                    windows.towards_peer(s.remote.ip())
                } else {
                    windows.for_remote(s.remote)
                },
            }
        })
        .collect()
}

/// The calling thread's namespace's keepalive sysctls (`/proc/sys/net` shows the namespace
/// of the thread that opens it).
fn sysctls() -> Result<KeepaliveSysctls, AuditError> {
    let read = |name: &str| -> Result<u64, AuditError> {
        let path = format!("/proc/sys/net/ipv4/{name}");
        let text = std::fs::read_to_string(&path).map_err(|e| AuditError::Sysctl {
            path: path.clone(),
            why: e.to_string(),
        })?;
        text.trim().parse().map_err(|_| AuditError::Sysctl {
            path,
            why: format!("`{}` is not a number", text.trim()),
        })
    };
    Ok(KeepaliveSysctls {
        idle: Duration::from_secs(read("tcp_keepalive_time")?),
        interval: Duration::from_secs(read("tcp_keepalive_intvl")?),
        count: u8::try_from(read("tcp_keepalive_probes")?).unwrap_or(u8::MAX),
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::sockets::model::Owner;

    fn socket(local: &str, remote: &str, state: u8, inode: u32) -> DiagSocket {
        DiagSocket {
            cookie: u64::from(inode),
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            state,
            inode,
            timer: None,
            idle_rx: Some(Duration::from_secs(10)),
            idle_tx: Some(Duration::from_secs(10)),
            retransmits: 0,
            probes: 0,
        }
    }

    fn reading(sockets: Vec<DiagSocket>) -> NamespaceReading {
        NamespaceReading {
            namespace: Namespace {
                inode: 42,
                paths: vec![PathBuf::from("/proc/self/ns/net")],
            },
            dump: Dump {
                sockets,
                interrupted: false,
            },
            audits: [3, 5]
                .into_iter()
                .map(|cookie| {
                    let audit = SocketAudit {
                        cookie,
                        ..SocketAudit::default()
                    };
                    (cookie, audit)
                })
                .collect(),
            sysctls: KeepaliveSysctls {
                idle: Duration::from_secs(7200),
                interval: Duration::from_secs(75),
                count: 9,
            },
            cookie: Some(7),
        }
    }

    #[test]
    fn listeners_are_left_out_and_tell_accepted_connections_apart() {
        let reading = reading(vec![
            socket("0.0.0.0:8080", "0.0.0.0:0", LISTEN, 1),
            socket("[::]:9090", "[::]:0", LISTEN, 2),
            socket("198.51.100.130:8080", "198.51.100.2:40000", 1, 3),
            socket("198.51.100.130:9090", "198.51.100.2:40001", 1, 4),
            socket("198.51.100.2:40002", "198.51.100.100:80", 1, 5),
        ]);
        let owners = HashMap::from([(
            5,
            Owner {
                pid: 9,
                comm: "java".to_owned(),
            },
        )]);
        let windows = Windows::new(Vec::new(), &["198.51.100.2=60".parse().unwrap()]);
        let connections = connections(&reading, &owners, &windows, 250);
        let side: Vec<_> = connections
            .iter()
            .map(|c| (c.diag.inode, c.accepted))
            .collect();
        assert_eq!(side, [(3, true), (4, true), (5, false)]);
        assert_eq!(connections[0].netns, 42);
        assert!(
            connections[0].keepalive.is_some(),
            "the iterator saw cookie 3"
        );
        assert!(connections[1].keepalive.is_none(), "nor cookie 4");
        assert!(
            connections[0].window.is_some(),
            "towards the peer 198.51.100.2"
        );
        assert!(
            connections[2].window.is_none(),
            "nothing for 198.51.100.100:80"
        );
        assert_eq!(connections[2].owner.as_ref().map(|o| o.pid), Some(9));
    }

    #[test]
    fn filters_keep_what_they_name() {
        let owners = HashMap::from([(
            5,
            Owner {
                pid: 9,
                comm: "java".to_owned(),
            },
        )]);
        let reading = reading(vec![
            socket("198.51.100.2:40002", "198.51.100.100:80", 1, 5),
            socket("198.51.100.2:40003", "198.51.100.101:443", 1, 6),
        ]);
        let windows = Windows::new(Vec::new(), &["198.51.100.100:80=5".parse().unwrap()]);
        let judged: Vec<Judged> = connections(&reading, &owners, &windows, 250)
            .into_iter()
            .map(|c| {
                let v = risk::judge(&c);
                (c, v)
            })
            .collect();
        let kept = |filter: Filter| -> Vec<u32> {
            judged
                .iter()
                .filter(|j| filter.keeps(j))
                .map(|(c, _)| c.diag.inode)
                .collect()
        };
        assert_eq!(kept(Filter::default()), [5, 6]);
        let remote = |text: &str| Filter {
            remote: Some(text.parse().unwrap()),
            ..Filter::default()
        };
        assert_eq!(kept(remote("198.51.100.100")), [5]);
        assert_eq!(kept(remote("198.51.100.101:443")), [6]);
        assert_eq!(kept(remote("198.51.100.101:80")), Vec::<u32>::new());
        let port = Filter {
            port: Some(40003),
            ..Filter::default()
        };
        assert_eq!(kept(port), [6]);
        for process in ["java", "9"] {
            let filter = Filter {
                process: Some(process.to_owned()),
                ..Filter::default()
            };
            assert_eq!(kept(filter), [5], "{process}");
        }
        let risks = Filter {
            risks: vec![Risk::WillReset],
            ..Filter::default()
        };
        assert_eq!(kept(risks), [5], "idle 10 s past the 5 s window");
        assert!("nowhere".parse::<RemoteFilter>().is_err());
    }
}
