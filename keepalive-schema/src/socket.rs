//! The output of `keepalive-observer sockets`: one line per connection with its risk, then
//! summaries per destination and per process, then the audit's totals.

use std::{fmt, net::SocketAddr};

use serde::{Deserialize, Serialize};

/// How likely a connection is to be reset on its next use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    /// Its idle time is already past the destination's bound with keepalive off, or its
    /// keepalive idle is at or above the bound: the next use meets a forgotten flow.
    WillReset,
    /// Keepalive off and its idle time approaching the destination's bound.
    AtRisk,
    /// An accepted connection idle longer than any window towards its peer, keepalive off:
    /// the client side is probably long gone.
    OrphanSuspect,
    /// Nothing known puts it at risk.
    Ok,
}

impl Risk {
    /// Every risk, worst first.
    pub const ALL: [Self; 4] = [Self::WillReset, Self::AtRisk, Self::OrphanSuspect, Self::Ok];

    /// The name in output, e.g. `"will_reset"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WillReset => "will_reset",
            Self::AtRisk => "at_risk",
            Self::OrphanSuspect => "orphan_suspect",
            Self::Ok => "ok",
        }
    }
}

impl fmt::Display for Risk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of `sockets --format json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SocketsLine {
    /// A connection.
    Socket(Box<SocketLine>),
    /// A summary per destination or per process.
    Summary(SummaryLine),
    /// The totals of the audit, last.
    Audit(AuditLine),
}

/// Which end of the connection this host is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// This host connected.
    Connected,
    /// Accepted from one of this host's listeners.
    Accepted,
}

/// A connection with its risk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SocketLine {
    /// Inode of its network namespace.
    pub netns: u64,
    /// Socket cookie (the daemon's key for it).
    pub cookie: u64,
    /// This host's end.
    pub local: SocketAddr,
    /// The peer's end.
    pub remote: SocketAddr,
    /// TCP state as `ss` names it (`ESTAB`, `CLOSE-WAIT`, …).
    pub state: String,
    /// Which end this host is.
    pub side: Side,
    /// The owning process, when one holds it open.
    pub pid: Option<u32>,
    /// Its command name.
    pub comm: Option<String>,
    /// Milliseconds since the last segment received.
    pub idle_rx_ms: Option<u64>,
    /// Milliseconds since the last data sent.
    pub idle_tx_ms: Option<u64>,
    /// Its effective keepalive settings; `None` when they could not be read.
    pub keepalive: Option<KeepaliveLine>,
    /// Its pending timer.
    pub timer: Option<TimerLine>,
    /// Retransmissions of the current unacknowledged segment.
    pub retransmits: u8,
    /// Keepalive or zero-window probes sent without an answer.
    pub probes: u8,
    /// The destination's window it was judged against.
    pub window: Option<WindowLine>,
    /// Its risk.
    pub risk: Risk,
    /// The rule that decided it, as a code (e.g. `idle_past_bound`).
    pub code: String,
    /// The same in words, with the numbers.
    pub reason: String,
}

/// Effective keepalive settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepaliveLine {
    /// `SO_KEEPALIVE` is on.
    pub on: bool,
    /// Idle before the first probe, milliseconds.
    pub idle_ms: u64,
    /// Between probes, milliseconds.
    pub interval_ms: u64,
    /// Unanswered probes before the connection is dropped.
    pub count: u8,
    /// Where the idle time comes from: `socket` (`TCP_KEEPIDLE`) or `sysctl`.
    pub idle_from: String,
}

/// A pending timer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerLine {
    /// `keepalive`, `retransmit`, `probe` or `timewait`.
    pub kind: String,
    /// When it fires, milliseconds from now.
    pub fires_in_ms: Option<u64>,
}

/// A destination's window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowLine {
    /// The bound: longest idle gap seen to survive, or the given timeout, milliseconds.
    pub bound_ms: u64,
    /// Shortest idle gap seen to end in a reset or silent death, milliseconds.
    pub upper_ms: Option<u64>,
    /// `learned` or `given`.
    pub source: String,
}

/// What a summary line groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The connections to one destination.
    Destination,
    /// The connections of one process to one destination (or from one peer).
    Process,
}

/// A summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SummaryLine {
    /// What it groups.
    pub scope: Scope,
    /// The worst risk among them.
    pub risk: Risk,
    /// How many connections.
    pub connections: usize,
    /// The summary in words, with what to change.
    pub text: String,
}

/// The audit's totals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLine {
    /// Network namespaces read.
    pub namespaces: usize,
    /// Connections listed (after filters).
    pub connections: usize,
    /// Connections by risk, worst first.
    pub will_reset: usize,
    /// See [`Risk::AtRisk`].
    pub at_risk: usize,
    /// See [`Risk::OrphanSuspect`].
    pub orphan_suspect: usize,
    /// See [`Risk::Ok`].
    pub ok: usize,
    /// What may be missing, in words (an interrupted dump, a namespace that vanished).
    pub incomplete: Vec<String>,
}
