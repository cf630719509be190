//! The attribution rules: from what is known when a connection dies to a verdict, a kind, a
//! confidence and the evidence in words. Precedence is the order of the checks in each
//! function; every rule is stated where it is applied.
//!
//! Which event decides a death (the others of the same death are duplicates):
//! - RST sent on the socket ([`active_reset`]): a local close, or a keepalive timeout;
//! - RST sent in reply to a segment ([`reply_reset`]): no socket, or a segment that did not fit;
//! - RST received ([`reset_received`]): refused, forged, idle expiry or a peer abort;
//! - an error report with no RST before it ([`socket_error`]): silent timeout, refused,
//!   destroyed, or a reset whose RST this observer did not see.

mod evidence;
mod received;
mod sent;
mod silent;

use std::net::SocketAddr;

use super::{
    conn::Keepalive,
    finding::{Confidence, Fact, FindingKind, GapEnd, Verdict},
};
use crate::event::{Task, TcpEvent, TcpState};

const ECONNRESET: i32 = 104;
const EPIPE: i32 = 32;
const ETIMEDOUT: i32 = 110;
const ECONNREFUSED: i32 = 111;
const ECONNABORTED: i32 = 103;

/// What is known about a connection at the event that decides its death.
pub(super) struct Facts<'a> {
    pub ev: &'a TcpEvent,
    pub remote: SocketAddr,
    /// The state the rules reason about: the socket's state at the event, or the state
    /// before it closed when the event came after the close.
    pub state: TcpState,
    /// Process that last used the socket.
    pub owner: Option<&'a Task>,
    pub keepalive: Option<Keepalive>,
    /// TTL of the RST that just arrived.
    pub rst_ttl: Option<u8>,
    /// TCP flags of that RST: RST alone is a stack's answer for a connection it does not
    /// have, RST|ACK an abort by a live socket.
    pub rst_flags: Option<u8>,
    pub peer_ttl: Option<PeerTtl>,
    /// The idle gap that ended in this death.
    pub gap: Option<Gap>,
    pub threshold: Threshold,
    /// Another connection to the same remote heard from the peer during this one's silence.
    pub alive: Option<Alive>,
    /// How long the connection had been idle when the peer's FIN came.
    pub idle_at_fin_ms: Option<u64>,
    /// The shortest such idle time learned for the remote (this death included).
    pub learned_close_ms: Option<u64>,
}

/// The peer's TTL / hop limit from a handshake.
#[derive(Clone, Copy, Debug)]
pub(super) struct PeerTtl {
    pub ttl: u8,
    /// From this connection's own handshake, rather than another one with the same host.
    pub own_handshake: bool,
}

/// An idle gap and how it was measured.
#[derive(Clone, Copy, Debug)]
pub(super) struct Gap {
    pub ms: u64,
    pub source: GapSource,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum GapSource {
    /// This host sent after the gap and the death followed.
    IdleSend,
    /// The first keepalive probe went out after the gap and the death followed.
    KeepaliveProbe,
    /// Only the time since the last segment received is known.
    ReceiveIdle,
}

impl Gap {
    /// The gap was flagged by the kernel side as ending in a transmission, so it measures
    /// what the path had to remember, not merely a quiet receive side.
    fn is_explicit(&self) -> bool {
        self.source != GapSource::ReceiveIdle
    }

    fn fact(&self) -> Fact {
        Fact::IdleGap {
            idle_ms: self.ms,
            ended_by: match self.source {
                GapSource::IdleSend => GapEnd::Send,
                GapSource::KeepaliveProbe => GapEnd::KeepaliveProbe,
                GapSource::ReceiveIdle => GapEnd::Unknown,
            },
        }
    }

    fn sentence(&self) -> String {
        match self.source {
            GapSource::IdleSend | GapSource::ReceiveIdle => {
                format!("idle {} ms before the RST", self.ms)
            }
            GapSource::KeepaliveProbe => {
                format!(
                    "idle {} ms when the first keepalive probe went out",
                    self.ms
                )
            }
        }
    }
}

/// How long an idle gap must be to count as an idle expiry.
#[derive(Clone, Copy, Debug)]
pub(super) enum Threshold {
    /// Connections to the remote survived `lo_ms`: a longer gap may be the timeout.
    Learned { lo_ms: u64 },
    /// Nothing learned: the configured floor.
    Floor { ms: u64 },
}

impl Threshold {
    /// A gap equal to one that was survived cannot be the timeout, hence the strict `>`.
    fn reached(&self, gap_ms: u64) -> bool {
        match *self {
            Self::Learned { lo_ms } => gap_ms > lo_ms,
            Self::Floor { ms } => gap_ms >= ms,
        }
    }

    fn fact(&self, gap_ms: u64) -> Fact {
        let (threshold_ms, learned) = match *self {
            Self::Learned { lo_ms } => (lo_ms, true),
            Self::Floor { ms } => (ms, false),
        };
        Fact::IdleThreshold {
            idle_ms: gap_ms,
            threshold_ms,
            learned,
            reached: self.reached(gap_ms),
        }
    }

    fn sentence(&self, gap_ms: u64, remote: SocketAddr) -> String {
        let reached = self.reached(gap_ms);
        match *self {
            Self::Learned { lo_ms } => format!(
                "{} the {lo_ms} ms idle that connections to {remote} survived",
                if reached {
                    "longer than"
                } else {
                    "not longer than"
                }
            ),
            Self::Floor { ms } => format!(
                "{} the {ms} ms idle floor (nothing learned for {remote} yet)",
                if reached { "at least" } else { "below" }
            ),
        }
    }
}

/// Another connection to the same remote received a segment `ago_ms` before this death.
#[derive(Clone, Copy, Debug)]
pub(super) struct Alive {
    pub ago_ms: u64,
}

/// What the rules decided.
#[derive(Debug)]
pub(super) struct Decision {
    pub verdict: Verdict,
    pub kind: FindingKind,
    pub confidence: Confidence,
    pub evidence: Vec<String>,
    /// The same facts for machines.
    pub facts: Vec<Fact>,
    /// The idle gap that ended this death, when it bounds the path's idle timeout (and so
    /// teaches the remote's learner).
    pub learn_gap_ms: Option<u64>,
    /// The peer had closed its end (FIN) before the RST.
    pub peer_closed_first: bool,
}

impl Decision {
    fn new(verdict: Verdict, kind: FindingKind, confidence: Confidence) -> Self {
        Self {
            verdict,
            kind,
            confidence,
            evidence: Vec::new(),
            facts: Vec::new(),
            learn_gap_ms: None,
            peer_closed_first: false,
        }
    }

    fn with(mut self, evidence: impl IntoIterator<Item = String>) -> Self {
        self.evidence.extend(evidence);
        self
    }

    fn fact(mut self, facts: impl IntoIterator<Item = Fact>) -> Self {
        self.facts.extend(facts);
        self
    }
}

pub(super) use self::{
    received::reset_received,
    sent::{
        active_reset, answers_a_reset, is_reply_reset, refuses_connection_attempt, reply_reset,
    },
    silent::socket_error,
};
