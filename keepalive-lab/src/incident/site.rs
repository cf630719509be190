//! One middlebox mode's lab: the topology with its VIP and four nginx servers, and which
//! findings are about it.

use std::collections::BTreeSet;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use super::observer::Finding;
use super::servers::Servers;
use crate::{Middlebox, MiddleboxMode, Topology, VIP_V4, interrupt};

pub const PORT: u16 = 80;
const SERVERS: usize = 4;

/// One middlebox mode's lab: namespaces, middlebox rules, nginx. Fields drop in order: the
/// servers stop before their namespaces go.
pub struct Site {
    /// Kept for its drop, which stops nginx.
    _servers: Servers,
    pub topology: Topology,
    /// Inodes of the lab's namespaces, as the observer's findings carry them.
    inodes: BTreeSet<u32>,
    pub client_inode: u32,
}

impl Site {
    pub fn build(mode: MiddleboxMode, timeout: u32, workdir: &Path, nginx: &str) -> Result<Site> {
        let started = Instant::now();
        let topology = Topology::builder()
            .servers(SERVERS)
            .vip(true)
            .middlebox(Middlebox {
                mode,
                established_timeout_secs: timeout,
            })
            .build()?;
        interrupt::check()?;
        let dir = workdir.join(format!("servers-{mode}"));
        let servers = Servers::start(topology.servers(), PORT, &dir)?;
        let mut inodes = BTreeSet::new();
        for name in topology.netns_names() {
            let path = Path::new(crate::NETNS_DIR).join(name);
            let inode = std::os::unix::fs::MetadataExt::ino(
                &fs::metadata(&path).with_context(|| format!("cannot stat {}", path.display()))?,
            );
            inodes.insert(u32::try_from(inode).context("namespace inode exceeds 32 bits")?);
        }
        let client_inode = topology.client().netns().inode()?;
        let addresses: Vec<String> = topology
            .servers()
            .iter()
            .map(|server| server.ipv4().to_string())
            .collect();
        println!(
            "\nlab up in {:.1} s: client {} -> VIP {VIP_V4}:{PORT} (middlebox {mode}: DNAT \
             round-robin, conntrack forgets flows idle > {timeout} s) -> nginx {nginx} on {}",
            started.elapsed().as_secs_f64(),
            topology.client().ipv4(),
            addresses.join(", ")
        );
        Ok(Site {
            _servers: servers,
            topology,
            inodes,
            client_inode,
        })
    }

    /// Whether a finding is about this lab since `since_ns` (CLOCK_MONOTONIC): in one of its
    /// namespaces, and not about the fence's loopback connection. Other labs on the host use
    /// the same addresses in other namespaces, and a namespace's inode number is reused once it
    /// is freed, so an event from before `since_ns` may carry one of ours (the observer can
    /// report a death up to its close grace after the event).
    pub fn owns(&self, finding: &Finding, since_ns: u64) -> bool {
        finding.mono_ns >= since_ns
            && self.inodes.contains(&finding.netns)
            && !finding.local.ip().is_loopback()
            && !finding.remote.ip().is_loopback()
    }

    pub fn vip(&self) -> SocketAddr {
        SocketAddr::from((VIP_V4, PORT))
    }
}
