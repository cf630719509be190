//! The evidence of a finding for machines: each fact that weighed in the verdict, as a code
//! (`"fact"`) and its values, beside the sentences of `evidence` that say the same for people.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::event::{Comm, TcpState};

/// One fact that weighed in a verdict. In JSON an object tagged with `"fact"`, e.g.
/// `{"fact":"rst_ttl_closer","rst_ttl":64,"peer_ttl":63,"hops":1}`; in journald one field per
/// value, `FACT_RST_TTL_CLOSER_RST_TTL=64`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fact", rename_all = "snake_case")]
pub enum Fact {
    /// The idle gap that ended in the death, and what ended it.
    IdleGap {
        /// Milliseconds without a segment in either direction.
        idle_ms: u64,
        /// What was sent after the gap.
        ended_by: GapEnd,
    },
    /// The gap against the idle time connections to the remote survived (`learned`), or
    /// against the configured floor when nothing is learned yet.
    IdleThreshold {
        /// The gap, milliseconds.
        idle_ms: u64,
        /// The learned survival or the floor, milliseconds.
        threshold_ms: u64,
        /// Learned from connections to the remote, not the configured floor.
        learned: bool,
        /// The gap is longer than a survived one (or at least the floor).
        reached: bool,
    },
    /// Keepalive was off on the socket.
    KeepaliveOff,
    /// Keepalive was on (values from the socket, or the namespace's sysctls).
    KeepaliveOn {
        /// Idle time before the first probe, milliseconds.
        idle_ms: u64,
        /// Interval between probes, milliseconds.
        interval_ms: u64,
        /// Probes before the connection is dropped.
        count: u32,
        /// Probes sent without an answer.
        probes_out: u8,
    },
    /// The RST arrived with the peer's TTL: sent from the peer's distance.
    RstTtlEqual {
        /// TTL / hop limit of the RST.
        rst_ttl: u8,
        /// TTL / hop limit of the peer's segments.
        peer_ttl: u8,
    },
    /// The RST arrived from closer than the peer: a device on the path.
    RstTtlCloser {
        /// TTL / hop limit of the RST.
        rst_ttl: u8,
        /// TTL / hop limit of the peer's segments.
        peer_ttl: u8,
        /// How many hops closer.
        hops: u8,
    },
    /// The RST arrived from farther than the peer.
    RstTtlFarther {
        /// TTL / hop limit of the RST.
        rst_ttl: u8,
        /// TTL / hop limit of the peer's segments.
        peer_ttl: u8,
        /// How many hops farther.
        hops: u8,
    },
    /// The RST and the peer's segments started from different initial TTLs: other senders.
    RstTtlOtherSender {
        /// TTL / hop limit of the RST.
        rst_ttl: u8,
        /// TTL / hop limit of the peer's segments.
        peer_ttl: u8,
        /// The RST's likely initial TTL (64, 128 or 255).
        rst_initial: u8,
        /// The peer's likely initial TTL.
        peer_initial: u8,
    },
    /// The RST arrived with an unchanged common initial TTL (64, 128, 255): its sender is on
    /// this host or its local link.
    RstTtlLocalLink {
        /// TTL / hop limit of the RST.
        rst_ttl: u8,
    },
    /// The peer's TTL came from another connection to the same host (this one's handshake was
    /// not seen).
    PeerTtlFromOtherConnection {
        /// That TTL / hop limit.
        peer_ttl: u8,
    },
    /// The RST carried no ACK: a stack answering a segment for a connection it does not have.
    RstWithoutAck,
    /// The RST carried an ACK: a live socket aborted the connection.
    RstWithAck,
    /// The peer had closed its end (FIN) before this host used the connection again.
    PeerClosedFirst {
        /// How long the connection had been idle when the peer's FIN came, milliseconds.
        idle_at_fin_ms: Option<u64>,
        /// The shortest such idle time learned for the remote, milliseconds.
        learned_close_ms: Option<u64>,
    },
    /// The kernel's reset reason.
    KernelReason {
        /// Its name, e.g. `TCP_ABORT_ON_CLOSE`.
        reason: String,
    },
    /// The kernel gives no reset reason (before 6.10): the kind was read from the socket.
    NoKernelReason,
    /// Bytes the application had not read when the socket was closed.
    UnreadBytes {
        /// How many.
        bytes: u32,
    },
    /// `SO_LINGER {1, 0}` was set on the socket.
    LingerZero,
    /// The socket's state when it happened.
    SocketState {
        /// The state.
        state: TcpState,
    },
    /// The process that sent the RST or owned the socket.
    Process {
        /// Process id.
        pid: u32,
        /// Command name, escaped.
        comm: Comm,
    },
    /// Both ends of the connection are sockets of this host: the process on the other end.
    LocalPeer {
        /// Process id of the other end's owner, when known.
        pid: Option<u32>,
        /// Its command name, escaped.
        comm: Option<Comm>,
        /// Its end's address.
        addr: SocketAddr,
    },
    /// Another connection to the same remote was answered while this one got none.
    OtherConnectionAnswered {
        /// How long before this death, milliseconds.
        ago_ms: u64,
    },
    /// No other connection to the same remote was answered while this one got none.
    NoOtherConnectionAnswered,
    /// Probes or retransmissions went unanswered until the kernel gave up.
    Unanswered {
        /// Keepalive probes sent without an answer.
        probes: u8,
        /// Retransmissions, when counted.
        retransmits: Option<u8>,
    },
    /// The socket's error.
    SocketError {
        /// `sk_err` (errno).
        errno: i32,
    },
    /// The learned idle timeout of the path to the remote.
    LearnedWindow {
        /// Longest idle gap survived, milliseconds.
        lo_ms: u64,
        /// Shortest idle gap that ended in a death, milliseconds.
        hi_ms: u64,
    },
    /// A middlebox's default idle timeout inside the learned window.
    KnownTimeout {
        /// Product.
        name: String,
        /// Its default, seconds.
        secs: u64,
    },
    /// The connection was opened before the observer started: its handshake was not seen.
    HandshakeNotSeen,
    /// How long the connection had been established.
    ConnectionAge {
        /// Milliseconds.
        age_ms: u64,
    },
    /// A fact that would have decided more was not known: why the confidence is lower.
    Missing {
        /// Which fact.
        missing: MissingFact,
    },
}

/// What was sent after an idle gap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapEnd {
    /// Data from this host.
    Send,
    /// The first keepalive probe.
    KeepaliveProbe,
    /// Unknown: only the time since the last segment received is known.
    Unknown,
}

/// A fact whose absence keeps a verdict below `confirmed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingFact {
    /// The RST segment's TTL was not seen.
    RstTtl,
    /// No handshake TTL is known for the peer host.
    PeerTtl,
    /// The RST segment's flags were not seen.
    RstFlags,
    /// An idle gap at or above the learned timeout (or the floor).
    IdleExpiry,
    /// No other connection to the remote was answered meanwhile.
    OtherConnectionAnswered,
}
