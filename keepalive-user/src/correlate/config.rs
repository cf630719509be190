//! What the correlator needs to know that the events do not carry.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// The namespace's `net.ipv4.tcp_keepalive_*` sysctls: what a socket uses for every keepalive
/// setting it left at 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepaliveSysctls {
    /// `net.ipv4.tcp_keepalive_time`: seconds idle before the first probe.
    pub tcp_keepalive_time: u64,
    /// `net.ipv4.tcp_keepalive_intvl`: seconds between probes.
    pub tcp_keepalive_intvl: u64,
    /// `net.ipv4.tcp_keepalive_probes`: unanswered probes before the connection is dropped.
    pub tcp_keepalive_probes: u32,
}

impl Default for KeepaliveSysctls {
    /// The kernel's defaults (`TCP_KEEPALIVE_TIME`, `TCP_KEEPALIVE_INTVL`,
    /// `TCP_KEEPALIVE_PROBES` in include/net/tcp.h).
    fn default() -> Self {
        Self {
            tcp_keepalive_time: 7200,
            tcp_keepalive_intvl: 75,
            tcp_keepalive_probes: 9,
        }
    }
}

/// Why the keepalive sysctls could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The sysctl file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file did not hold a non-negative integer.
    #[error("{} holds {value:?}, expected a non-negative integer", path.display())]
    Parse {
        /// The sysctl file.
        path: PathBuf,
        /// What it held.
        value: String,
    },
}

impl KeepaliveSysctls {
    /// Reads this process's network namespace's values from /proc/sys/net/ipv4.
    pub fn read_host() -> Result<Self, SysctlError> {
        Self::read_from(Path::new("/proc/sys/net/ipv4"))
    }

    /// Reads `tcp_keepalive_time`, `tcp_keepalive_intvl` and `tcp_keepalive_probes` from `dir`.
    pub fn read_from(dir: &Path) -> Result<Self, SysctlError> {
        Ok(Self {
            tcp_keepalive_time: read_number(&dir.join("tcp_keepalive_time"))?,
            tcp_keepalive_intvl: read_number(&dir.join("tcp_keepalive_intvl"))?,
            tcp_keepalive_probes: read_number(&dir.join("tcp_keepalive_probes"))?,
        })
    }
}

fn read_number<T: std::str::FromStr>(path: &Path) -> Result<T, SysctlError> {
    let text = fs::read_to_string(path).map_err(|source| SysctlError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.trim().parse().map_err(|_| SysctlError::Parse {
        path: path.to_owned(),
        value: text.trim().to_owned(),
    })
}

/// Settings of a [`Correlator`](super::Correlator).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorrelatorConfig {
    /// Keepalive values for sockets that left theirs at 0.
    pub sysctls: KeepaliveSysctls,
    /// With nothing learned for a remote yet, an RST after at least this much idle (keepalive
    /// off or slower) is blamed on a middlebox's idle timeout, with confidence `possible`.
    /// Default 30 s: well below the shortest common middlebox default (Azure LB, 240 s), so
    /// short custom timeouts are still caught, yet above the think time of busy
    /// request/response traffic, whose resets are seldom idle expiries. Once a remote has a
    /// learned lower bound, that bound replaces the floor.
    pub idle_expiry_floor_ms: u64,
    /// Connections that sent a deciding record, remembered until the other records of the
    /// same death (the error report after an RST) have arrived; the least recently used are
    /// forgotten beyond this.
    pub max_recent: usize,
    /// How long such a connection is remembered, milliseconds.
    pub close_grace_ms: u64,
    /// Remotes with learned timeouts and liveness, and hosts with a known handshake TTL.
    pub max_remotes: usize,
}

impl Default for CorrelatorConfig {
    fn default() -> Self {
        Self {
            sysctls: KeepaliveSysctls::default(),
            idle_expiry_floor_ms: 30_000,
            max_recent: 16_384,
            close_grace_ms: 2_000,
            max_remotes: 16_384,
        }
    }
}
