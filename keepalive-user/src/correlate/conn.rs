//! A connection as its deciding record describes it: the record's socket snapshot and the
//! context the kernel side kept. Only connections that sent such a record are remembered,
//! briefly, for the other records of the same death.

use std::net::SocketAddr;

use super::{KeepaliveSysctls, finding::Finding, finding::KeepaliveSummary};
use crate::event::{IdleSend, KeepaliveState, Origin, Task, TcpEvent, TcpEventKind, TcpState};

/// Receive times derived from `idle_rx_ms` are only as exact as a jiffy (10 ms at HZ 100):
/// a receive counts as later than a send only beyond this margin.
const ANSWER_SLACK_NS: u64 = 20_000_000;

/// One connection as its records describe it.
#[derive(Clone, Debug)]
pub(super) struct Conn {
    pub netns: u32,
    pub netns_cookie: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The process that last used the socket in process context.
    pub owner: Option<Task>,
    pub established_ns: Option<u64>,
    /// When the kernel side created the connection's context.
    pub born_ns: Option<u64>,
    /// Last state seen.
    pub state: TcpState,
    /// Connected from this host, as the socket tells (the kernel side reads it from the socket
    /// for connections older than the observer too): only then is the remote a service whose
    /// path is worth learning. An accepted connection's remote is a client's ephemeral port,
    /// and one of unknown origin (no context) might be.
    pub client: bool,
    /// TTL / hop limit of the peer's SYN or SYN-ACK.
    pub peer_ttl: Option<u8>,
    /// Keepalive settings and progress at the last record that carried them.
    pub keepalive: Option<KeepaliveState>,
    /// A send after an idle gap that had not been answered.
    pub pending_idle: Option<IdleSend>,
    /// When a segment from the peer last arrived, as far as records tell.
    pub last_rx_ns: Option<u64>,
    pub outcome: Outcome,
    /// The state the socket left when it became CLOSE.
    pub state_before_close: Option<TcpState>,
    /// When the connection was first remembered: forgotten a grace period later.
    pub seen_ns: u64,
}

/// Whether the connection's death has been reported.
#[derive(Clone, Debug)]
pub(super) enum Outcome {
    Open,
    Reported,
    /// Decided but held back: a later event of the same death may change the verdict.
    Provisional(Box<Finding>),
    /// Decided, and waiting briefly for the record of its other end on this host.
    Pairing(Box<Finding>),
}

impl Conn {
    pub(super) fn new(ev: &TcpEvent) -> Self {
        let context = ev.context.as_ref();
        let mut conn = Self {
            netns: ev.netns,
            netns_cookie: ev.netns_cookie,
            local: ev.local,
            remote: ev.remote,
            owner: context.and_then(|c| c.owner.clone()),
            established_ns: context.and_then(|c| c.established_ns),
            born_ns: context.and_then(|c| c.born_ns),
            state: ev.new_state,
            client: context.and_then(|c| c.origin) == Some(Origin::Connected),
            peer_ttl: context.and_then(|c| c.peer_ttl),
            keepalive: None,
            pending_idle: context.and_then(|c| c.idle_send),
            last_rx_ns: None,
            outcome: Outcome::Open,
            state_before_close: context.and_then(|c| c.state_before_close),
            seen_ns: ev.mono_ns,
        };
        conn.observe(ev);
        conn
    }

    /// Whether `ev` is about a later connection of the same socket (a closed socket that
    /// connected again keeps its cookie).
    pub(super) fn is_succeeded_by(&self, ev: &TcpEvent) -> bool {
        let born = ev.context.as_ref().and_then(|c| c.born_ns);
        matches!((self.born_ns, born), (Some(a), Some(b)) if a != b)
    }

    /// Takes what any record tells about the connection.
    pub(super) fn observe(&mut self, ev: &TcpEvent) {
        // After close the kernel reports port 0: only take complete addresses.
        if ev.local.port() != 0 {
            self.local = ev.local;
        }
        if ev.remote.port() != 0 {
            self.remote = ev.remote;
        }
        if ev.netns_cookie != 0 {
            self.netns = ev.netns;
            self.netns_cookie = ev.netns_cookie;
        }
        if ev.new_state != TcpState::Close {
            self.state = ev.new_state;
        }
        if let Some(context) = &ev.context {
            if let Some(state) = context.state_before_close {
                self.state_before_close = Some(state);
            }
            if let Some(ttl) = context.peer_ttl {
                self.peer_ttl = Some(ttl);
            }
            if let Some(owner) = &context.owner {
                self.owner = Some(owner.clone());
            }
        }
        if let Some(keepalive) = &ev.keepalive {
            self.keepalive = Some(keepalive.clone());
        }
        // An RST sent from another process (ss -K) must not replace the owner; one sent from
        // the owner's own process names the thread that closed the socket, which need not be
        // the one that last used it (a pool's worker, a namespace-entering helper thread).
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
        self.state_before_close.unwrap_or(self.state)
    }
}

/// When the peer was last heard from, from the event's `idle_rx_ms`. Only meaningful once the
/// handshake is done: before that the receive timestamp is not set.
pub(super) fn last_rx_ns(ev: &TcpEvent) -> Option<u64> {
    use TcpState::*;
    let state = match ev.old_state {
        Close => ev
            .context
            .as_ref()
            .and_then(|c| c.state_before_close)
            .unwrap_or(Close),
        state => state,
    };
    let synchronized = matches!(
        state,
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
