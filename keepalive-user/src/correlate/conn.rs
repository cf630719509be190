//! What is remembered about one connection, keyed by its socket cookie.

use std::net::SocketAddr;

use super::{KeepaliveSysctls, finding::Finding, finding::KeepaliveSummary};
use crate::event::{KeepaliveState, Task, TcpEvent, TcpEventKind, TcpState};

/// Receive times derived from `idle_rx_ms` are only as exact as a jiffy (10 ms at HZ 100):
/// a receive counts as later than a send only beyond this margin.
const ANSWER_SLACK_NS: u64 = 20_000_000;

/// One connection as seen so far.
#[derive(Clone, Debug)]
pub(super) struct Conn {
    pub netns: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The process that last used the socket in process context.
    pub owner: Option<Task>,
    pub established_ns: Option<u64>,
    /// Last state seen.
    pub state: TcpState,
    /// Accepted from a listener: the remote is a client's ephemeral port.
    pub passive: bool,
    /// TTL / hop limit of the peer's SYN or SYN-ACK.
    pub peer_ttl: Option<u8>,
    /// Keepalive settings and progress at the last event that carried them.
    pub keepalive: Option<KeepaliveState>,
    /// A send after an idle gap that has not been answered yet.
    pub pending_idle: Option<PendingIdle>,
    /// When a segment from the peer last arrived, as far as events tell.
    pub last_rx_ns: Option<u64>,
    pub outcome: Outcome,
    pub closed: Option<Closed>,
}

/// A send after an idle gap, waiting for its answer.
#[derive(Clone, Copy, Debug)]
pub(super) struct PendingIdle {
    /// Idle time of the flow before the send, milliseconds.
    pub gap_ms: u64,
    pub at_ns: u64,
}

/// When and from which state the socket became CLOSE.
#[derive(Clone, Copy, Debug)]
pub(super) struct Closed {
    pub at_ns: u64,
    pub state_before: TcpState,
}

/// Whether the connection's death has been reported.
#[derive(Clone, Debug)]
pub(super) enum Outcome {
    Open,
    Reported,
    /// Decided but held back: a later event of the same death may change the verdict.
    Provisional(Box<Finding>),
}

impl Conn {
    pub(super) fn new(ev: &TcpEvent) -> Self {
        let mut conn = Self {
            netns: ev.netns,
            local: ev.local,
            remote: ev.remote,
            owner: None,
            established_ns: None,
            state: ev.new_state,
            passive: ev.kind == TcpEventKind::StateChange
                && matches!(ev.old_state, TcpState::Listen | TcpState::SynRecv),
            peer_ttl: None,
            keepalive: None,
            pending_idle: None,
            last_rx_ns: None,
            outcome: Outcome::Open,
            closed: None,
        };
        conn.observe(ev);
        conn
    }

    /// Takes what any event tells about the connection.
    pub(super) fn observe(&mut self, ev: &TcpEvent) {
        // After close the kernel reports port 0, and during connect() the local port is
        // assigned after the SYN_SENT transition: only take complete addresses.
        if self.closed.is_none() {
            if ev.local.port() != 0 {
                self.local = ev.local;
            }
            if ev.remote.port() != 0 {
                self.remote = ev.remote;
            }
            if ev.netns != 0 {
                self.netns = ev.netns;
            }
        }
        if let Some(keepalive) = &ev.keepalive {
            self.keepalive = Some(keepalive.clone());
        }
        // An RST sent from another process (ss -K) must not replace the owner; one sent from
        // the owner's own process names the thread that closed the socket, which need not be
        // the one that connected it (a pool's worker, a namespace-entering helper thread).
        if let Some(task) = &ev.task
            && (ev.kind != TcpEventKind::ResetSent
                || self
                    .owner
                    .as_ref()
                    .is_none_or(|owner| owner.pid == task.pid))
        {
            self.owner = Some(task.clone());
        }
        if let Some(at) = last_rx_ns(ev) {
            self.last_rx_ns = Some(self.last_rx_ns.map_or(at, |known| known.max(at)));
            // A segment after the idle send answered it even if the application never read
            // a reply; left pending, that old gap would be blamed for a later death.
            if self
                .pending_idle
                .is_some_and(|p| at > p.at_ns.saturating_add(ANSWER_SLACK_NS))
            {
                self.pending_idle = None;
            }
        }
    }

    /// The state the socket was in before it started to close.
    pub(super) fn state_before_close(&self) -> TcpState {
        self.closed.map_or(self.state, |closed| closed.state_before)
    }
}

/// When the peer was last heard from, from the event's `idle_rx_ms`. Only meaningful once the
/// handshake is done: before that the receive timestamp is not set.
pub(super) fn last_rx_ns(ev: &TcpEvent) -> Option<u64> {
    use TcpState::*;
    let synchronized = matches!(
        ev.old_state,
        Established | CloseWait | FinWait1 | FinWait2 | LastAck | Closing
    );
    let idle_ms = ev.idle_rx_ms.filter(|_| synchronized)?;
    Some(ev.mono_ns.saturating_sub(idle_ms.saturating_mul(1_000_000)))
}

/// Keepalive settings with the namespace's sysctls filled in where the socket has none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Keepalive {
    pub enabled: bool,
    pub idle_ms: u64,
    pub interval_ms: u64,
    pub count: u32,
    /// Probes sent without an answer.
    pub probes_out: u8,
    /// At least one value came from the sysctls.
    pub from_sysctls: bool,
}

impl Keepalive {
    pub(super) fn effective(state: &KeepaliveState, sysctls: &KeepaliveSysctls) -> Self {
        Self {
            enabled: state.enabled,
            idle_ms: state
                .idle_ms
                .unwrap_or(sysctls.tcp_keepalive_time.saturating_mul(1000)),
            interval_ms: state
                .interval_ms
                .unwrap_or(sysctls.tcp_keepalive_intvl.saturating_mul(1000)),
            count: state.count.map_or(sysctls.tcp_keepalive_probes, u32::from),
            probes_out: state.probes_out,
            from_sysctls: state.idle_ms.is_none()
                || state.interval_ms.is_none()
                || state.count.is_none(),
        }
    }

    pub(super) fn summary(&self) -> KeepaliveSummary {
        KeepaliveSummary {
            enabled: self.enabled,
            idle_s: round_secs(self.idle_ms),
            interval_s: round_secs(self.interval_ms),
            count: self.count,
            probes_sent: u32::from(self.probes_out),
        }
    }

    /// "idle 7200 s, interval 75 s, 9 probes", noting where the sysctls filled in.
    pub(super) fn settings(&self) -> String {
        let source = if self.from_sysctls {
            " (namespace sysctls where the socket sets none)"
        } else {
            ""
        };
        format!(
            "idle {}, interval {}, {} probes{source}",
            fmt_duration(self.idle_ms),
            fmt_duration(self.interval_ms),
            self.count
        )
    }
}

fn round_secs(ms: u64) -> u64 {
    ms.saturating_add(500) / 1000
}

/// Whole seconds as "N s", anything else as "N ms".
pub(super) fn fmt_duration(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}
