//! A finding: the product's answer to "who reset this connection, after how long idle, with what
//! keepalive settings, and what to change".

use std::{fmt, net::SocketAddr};

use serde::{Deserialize, Serialize};

pub use crate::{
    action::Action,
    fact::{Fact, GapEnd, MissingFact},
};

/// Version of the finding schema: raised when a field changes meaning or goes away (adding
/// one does not). 2: structured `facts` and `actions`; command names escaped.
pub const SCHEMA_VERSION: u32 = 2;

/// The name an enum has in the output (its serde name), and `Display` printing it.
macro_rules! output_names {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// The name used in JSON and journald, e.g. `"middlebox_drop"`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name),+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// Who ended the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// This host ended it (an abortive close, or an RST for a socket it no longer has).
    LocalClose,
    /// The peer host sent the RST.
    PeerReset,
    /// Something on the path (load balancer, NAT, firewall) forgot the flow.
    MiddleboxDrop,
}

/// The finer cause behind a [`Verdict`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// Closed with `SO_LINGER {1, 0}`.
    LingerZero,
    /// Closed with unread data in the receive queue.
    AbortOnClose,
    /// Closed, then the peer's FIN did not come within the FIN_WAIT2 timeout (`TCP_LINGER2`).
    AbortOnLinger,
    /// Closed, then the peer kept sending data.
    AbortOnData,
    /// Aborted for lack of memory (too many orphans).
    AbortOnMemory,
    /// `shutdown`/`disconnect` with data still queued.
    DisconnectWithData,
    /// RST forced by an unexpected state.
    BadState,
    /// RST in reply to a segment for which this host has no socket.
    NoSocket,
    /// Destroyed from outside the owning process (`ss -K`, `SOCK_DESTROY`).
    Destroyed,
    /// This host aborted the connection and the kernel gave no reason (kernels before 6.10).
    LocalAbort,
    /// RST whose TTL differs from the peer's handshake TTL: forged by a device on the path.
    ForgedRst,
    /// RST after an idle gap at or above the learned (or default) idle timeout.
    IdleExpiryRst,
    /// The flow vanished silently: keepalive probes or retransmissions went unanswered.
    SilentTimeout,
    /// The peer refused the connection (RST answering a SYN).
    Refused,
    /// The peer aborted an established connection.
    PeerAbort,
    /// The peer closed an idle keep-alive connection (FIN) and this host reused it: the
    /// peer's RST answered the reuse.
    KeepaliveRace,
    /// The peer's kernel had no connection for this flow (it restarted, its socket was
    /// destroyed, or a load balancer sent the flow to a backend that never saw it): its RST
    /// answered this host's segment without an ACK, as a stack with no socket does.
    PeerLostState,
}

/// How sure the finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Confidence {
    /// Some evidence points this way, other explanations remain.
    Possible,
    /// Most evidence points this way.
    Likely,
    /// The kernel said so directly, or independent signals agree.
    Confirmed,
}

output_names!(Verdict {
    LocalClose => "local_close",
    PeerReset => "peer_reset",
    MiddleboxDrop => "middlebox_drop",
});

output_names!(FindingKind {
    LingerZero => "linger_zero",
    AbortOnClose => "abort_on_close",
    AbortOnLinger => "abort_on_linger",
    AbortOnData => "abort_on_data",
    AbortOnMemory => "abort_on_memory",
    DisconnectWithData => "disconnect_with_data",
    BadState => "bad_state",
    NoSocket => "no_socket",
    Destroyed => "destroyed",
    LocalAbort => "local_abort",
    ForgedRst => "forged_rst",
    IdleExpiryRst => "idle_expiry_rst",
    SilentTimeout => "silent_timeout",
    Refused => "refused",
    PeerAbort => "peer_abort",
    KeepaliveRace => "keepalive_race",
    PeerLostState => "peer_lost_state",
});

output_names!(Confidence {
    Possible => "possible",
    Likely => "likely",
    Confirmed => "confirmed",
});

/// Effective keepalive settings of the connection (socket values, or the namespace's sysctls
/// where the socket left them at 0).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepaliveSummary {
    /// `SO_KEEPALIVE` on.
    pub enabled: bool,
    /// Idle time before the first probe, seconds.
    pub idle_s: u64,
    /// Interval between probes, seconds.
    pub interval_s: u64,
    /// Probes before the connection is dropped.
    pub count: u32,
    /// Probes sent without an answer when the connection died.
    pub probes_sent: u32,
}

/// One attributed reset or abnormal connection death.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// CLOCK_MONOTONIC nanoseconds of the event that decided it.
    pub mono_ns: u64,
    /// Who ended the connection.
    pub verdict: Verdict,
    /// The finer cause.
    pub kind: FindingKind,
    /// How sure.
    pub confidence: Confidence,
    /// Socket cookie (0 for an RST sent without a socket).
    pub cookie: u64,
    /// Network namespace inode (as `/proc/PID/ns/net` shows it).
    pub netns: u32,
    /// Network namespace cookie: the namespace's identity (inodes are reused).
    pub netns_cookie: u64,
    /// This host's end.
    pub local: SocketAddr,
    /// The peer's end.
    pub remote: SocketAddr,
    /// Owning process, when known.
    pub pid: Option<u32>,
    /// Owning process's command name, when known.
    pub comm: Option<String>,
    /// The idle gap that ended in the reset, milliseconds.
    pub idle_ms: Option<u64>,
    /// Keepalive settings, when the socket was a full TCP socket.
    pub keepalive: Option<KeepaliveSummary>,
    /// TTL / hop limit of the RST, when seen.
    pub rst_ttl: Option<u8>,
    /// TTL / hop limit of the peer's handshake segment, when seen.
    pub peer_ttl: Option<u8>,
    /// Kernel reset reason name.
    pub reason: Option<String>,
    /// Learned idle timeout for the remote: survived `lo` ms, died after `hi` ms.
    pub timeout_window_ms: Option<(u64, u64)>,
    /// The facts that decided it, as short sentences with numbers.
    pub evidence: Vec<String>,
    /// The same facts for machines: codes and their values.
    #[serde(default)]
    pub facts: Vec<Fact>,
    /// What to change, one sentence with numbers.
    pub advice: String,
    /// The same for machines: actions and their numbers.
    #[serde(default)]
    pub actions: Vec<Action>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_are_the_serde_names() {
        let kinds = [
            FindingKind::LingerZero,
            FindingKind::AbortOnClose,
            FindingKind::AbortOnLinger,
            FindingKind::AbortOnData,
            FindingKind::AbortOnMemory,
            FindingKind::DisconnectWithData,
            FindingKind::BadState,
            FindingKind::NoSocket,
            FindingKind::Destroyed,
            FindingKind::LocalAbort,
            FindingKind::ForgedRst,
            FindingKind::IdleExpiryRst,
            FindingKind::SilentTimeout,
            FindingKind::Refused,
            FindingKind::PeerAbort,
            FindingKind::KeepaliveRace,
            FindingKind::PeerLostState,
        ];
        for kind in kinds {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        for verdict in [
            Verdict::LocalClose,
            Verdict::PeerReset,
            Verdict::MiddleboxDrop,
        ] {
            assert_eq!(serde_json::to_value(verdict).unwrap(), verdict.as_str());
        }
        for confidence in [
            Confidence::Possible,
            Confidence::Likely,
            Confidence::Confirmed,
        ] {
            assert_eq!(
                serde_json::to_value(confidence).unwrap(),
                confidence.as_str()
            );
        }
        assert_eq!(Verdict::MiddleboxDrop.to_string(), "middlebox_drop");
    }

    #[test]
    fn facts_and_actions_are_codes_with_their_values() {
        let fact = Fact::RstTtlCloser {
            rst_ttl: 64,
            peer_ttl: 63,
            hops: 1,
        };
        assert_eq!(
            serde_json::to_value(&fact).unwrap(),
            serde_json::json!({"fact": "rst_ttl_closer", "rst_ttl": 64, "peer_ttl": 63, "hops": 1})
        );
        let missing = Fact::Missing {
            missing: MissingFact::RstFlags,
        };
        assert_eq!(
            serde_json::to_value(&missing).unwrap(),
            serde_json::json!({"fact": "missing", "missing": "rst_flags"})
        );
        let action = Action::KeepaliveIdleBelow {
            seconds: 4,
            suggested: 2,
        };
        assert_eq!(
            serde_json::to_value(&action).unwrap(),
            serde_json::json!({"action": "keepalive_idle_below", "seconds": 4, "suggested": 2})
        );
        let back: Fact =
            serde_json::from_value(serde_json::json!({"fact": "keepalive_off"})).unwrap();
        assert_eq!(back, Fact::KeepaliveOff);
    }
}
