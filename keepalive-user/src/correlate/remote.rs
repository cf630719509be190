//! What is known about one destination across its connections: the learned idle timeout and
//! when the peer was last heard from. The only per-destination knowledge the daemon keeps; it
//! keeps nothing per healthy connection.

use std::net::{IpAddr, SocketAddr};

use super::learn::Learner;

/// A remote `ip:port` in a network namespace (by the namespace's cookie, never reused).
pub(super) type RemoteKey = (u64, SocketAddr);
/// A peer host in a network namespace.
pub(super) type HostKey = (u64, IpAddr);

/// What is known about one remote across connections.
#[derive(Debug, Default)]
pub(super) struct Remote {
    pub learner: Learner,
    /// The shortest idle time after which the remote closed a connection this host then
    /// reused (a keep-alive race): about the server's keep-alive timeout.
    pub peer_close_ms: Option<u64>,
    /// The two most recent (cookie, ns) at which a connection to this remote heard from the
    /// peer, with distinct cookies, newest first: enough to answer "when did any other
    /// connection than X last hear from the peer".
    heard: [Option<(u64, u64)>; 2],
}

impl Remote {
    /// The remote closed a connection idle for `idle_ms` that this host then reused.
    pub(super) fn closed_after(&mut self, idle_ms: u64) {
        self.peer_close_ms = Some(self.peer_close_ms.map_or(idle_ms, |ms| ms.min(idle_ms)));
    }

    pub(super) fn heard_from(&mut self, cookie: u64, at_ns: u64) {
        match self.heard {
            [Some((c, t)), _] if c == cookie => self.heard[0] = Some((c, t.max(at_ns))),
            [first, Some((c, t))] if c == cookie => {
                let updated = Some((c, t.max(at_ns)));
                self.heard = if first.is_some_and(|(_, f)| f >= at_ns) {
                    [first, updated]
                } else {
                    [updated, first]
                };
            }
            [first, _] => self.heard = [Some((cookie, at_ns)), first],
        }
    }

    pub(super) fn last_heard_by_other(&self, cookie: u64) -> Option<u64> {
        self.heard
            .iter()
            .flatten()
            .find(|(c, _)| *c != cookie)
            .map(|&(_, at)| at)
    }
}
