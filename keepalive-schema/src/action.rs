//! The advice of a finding for machines: what to change, as an action code (`"action"`) and
//! its numbers, beside the sentence of `advice` that says the same for people.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::event::Comm;

/// One thing to change. In JSON an object tagged with `"action"`, e.g.
/// `{"action":"keepalive_idle_below","seconds":4,"suggested":2}`; in journald one field per
/// value, `ACTION_KEEPALIVE_IDLE_BELOW_SECONDS=4`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Turn TCP keepalive on (`SO_KEEPALIVE`) with `TCP_KEEPIDLE` below `seconds`.
    KeepaliveIdleBelow {
        /// The bound, seconds.
        seconds: u64,
        /// A value well clear of it, seconds.
        suggested: u64,
    },
    /// Evict pooled connections idle longer than `seconds`.
    EvictIdleAfter {
        /// Seconds (rounded down).
        seconds: u64,
        /// The same in milliseconds, when the bound is below a few seconds.
        ms: Option<u64>,
    },
    /// Turn TCP keepalive on, below the middlebox's idle timeout (not known yet).
    EnableKeepalive,
    /// Check the idle and session timeouts of the middleboxes on the path to `remote`.
    CheckMiddlebox {
        /// The destination.
        remote: SocketAddr,
    },
    /// Check whether the peer host is up and reachable.
    CheckPeerHost {
        /// The destination.
        remote: SocketAddr,
    },
    /// Check the peer application's logs for an abortive close, a crash or a restart.
    CheckPeerApplication {
        /// The peer.
        remote: SocketAddr,
    },
    /// Retry on a new connection, and check the peer's and the load balancer's restarts.
    RetryOnNewConnection {
        /// The peer.
        remote: SocketAddr,
    },
    /// Drop pooled connections the peer has closed (FIN received) before reusing them.
    DropPeerClosed,
    /// Remove `SO_LINGER {1, 0}` from the process's sockets.
    RemoveZeroLinger {
        /// The process, when known.
        pid: Option<u32>,
        /// Its command name, escaped.
        comm: Option<Comm>,
    },
    /// Read the peer's data to EOF (or `shutdown(SHUT_WR)` and drain) before `close()`.
    DrainBeforeClose {
        /// The process, when known.
        pid: Option<u32>,
        /// Its command name, escaped.
        comm: Option<Comm>,
    },
    /// Let the send queue drain before shutdown or disconnect.
    DrainSendQueue,
    /// Find out why the peer never sends its FIN, or raise `TCP_LINGER2` / `tcp_fin_timeout`.
    RaiseFinTimeout,
    /// Raise `net.ipv4.tcp_max_orphans` or `net.ipv4.tcp_mem`.
    RaiseOrphanLimits,
    /// Look for stale or duplicated flows (NAT port reuse, timestamps/PAWS).
    CheckStaleFlows,
    /// Make the remote's client retry on reset and evict connections it has not used.
    ClientRetryAndEvict {
        /// That client.
        remote: SocketAddr,
    },
    /// Find out which tool destroys sockets (`ss -K`, `SOCK_DESTROY`).
    FindSocketKiller,
    /// Check the process's close and error paths.
    CheckClosePaths,
    /// Check that a service listens on `remote` and the path allows it.
    CheckListener {
        /// The destination.
        remote: SocketAddr,
    },
}
