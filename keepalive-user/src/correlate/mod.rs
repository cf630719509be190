//! Correlation: a pure state machine from decoded events to findings.
//!
//! The clock comes only from the inputs (event timestamps and ticks), so a recorded stream
//! replays to the same findings anywhere. Per-connection state is keyed by socket cookie;
//! every table is bounded.
//!
//! The kernel reports one death as several events, in an order that matters:
//! - RST received: `ResetReceived`, then the state change to CLOSE, then the error report;
//! - abortive close: the state change to CLOSE, then `ResetSent` (`tcp_disconnect` and
//!   `__tcp_close` set CLOSE first), then for `tcp_disconnect` the error report;
//! - keepalive timeout: `ResetSent`, CLOSE, then ETIMEDOUT; a retransmission timeout has no RST;
//! - `ss -K`: the error report (ECONNABORTED), `ResetSent`, then CLOSE.
//!
//! So a connection is not forgotten at CLOSE: it moves to a short-lived closing table, where
//! the trailing events find it, and the first event that decides the death reports it once.

mod advice;
mod config;
mod conn;
mod finding;
mod learn;
mod lru;
mod rules;

use std::net::{IpAddr, SocketAddr};

pub use config::{CorrelatorConfig, KeepaliveSysctls, SysctlError};
pub use finding::{Confidence, Finding, FindingKind, KeepaliveSummary, Verdict};
pub use learn::Window;

use self::{
    conn::{Closed, Conn, Keepalive, Outcome, PendingIdle},
    learn::Learner,
    lru::Lru,
    rules::{Alive, Decision, Facts, Gap, GapSource, PeerTtl, Threshold},
};
use crate::event::{TcpEvent, TcpEventKind, TcpState};
use keepalive_common::tcp_flags;

/// An RST's TTL belongs to the `ResetReceived` that follows it at once; one older than this
/// belongs to an RST the kernel ignored (out of window).
const RST_TTL_MAX_AGE_NS: u64 = 1_000_000_000;
/// RST TTLs waiting for their `ResetReceived`.
const MAX_RST_TTLS: usize = 4096;
/// When it is unknown since when a dying connection went unanswered, another connection's
/// receive within this time counts as the peer being up.
const ALIVE_FALLBACK_NS: u64 = 60_000_000_000;

/// Sizes of the correlator's tables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Open connections tracked.
    pub connections: usize,
    /// Closed connections kept for their trailing events.
    pub closing: usize,
    /// Remotes with a learned window or liveness.
    pub remotes: usize,
    /// Listener SYN TTLs waiting for their accepted socket.
    pub handshake_ttls: usize,
    /// Open connections forgotten to stay within `max_connections`, since start.
    pub evicted_connections: u64,
    /// Closed connections forgotten to stay within `max_closing` before their grace ended.
    pub evicted_closing: u64,
}

/// A remote `ip:port` in a network namespace.
type RemoteKey = (u32, SocketAddr);
/// A connection's addresses in a network namespace: (netns, local, remote).
type TupleKey = (u32, SocketAddr, SocketAddr);

/// What is known about one remote across connections.
#[derive(Debug, Default)]
struct Remote {
    learner: Learner,
    /// The two most recent (cookie, ns) at which a connection to this remote heard from the
    /// peer, with distinct cookies, newest first: enough to answer "when did any other
    /// connection than X last hear from the peer".
    heard: [Option<(u64, u64)>; 2],
}

impl Remote {
    fn heard_from(&mut self, cookie: u64, at_ns: u64) {
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

    fn last_heard_by_other(&self, cookie: u64) -> Option<u64> {
        self.heard
            .iter()
            .flatten()
            .find(|(c, _)| *c != cookie)
            .map(|&(_, at)| at)
    }
}

/// The correlator: feed it every decoded event and a tick about once a second.
#[derive(Debug)]
pub struct Correlator {
    config: CorrelatorConfig,
    conns: Lru<u64, Conn>,
    closing: Lru<u64, Conn>,
    remotes: Lru<RemoteKey, Remote>,
    /// Peer TTLs of SYNs received by listeners, until the accepted socket appears. Segment
    /// events may carry netns 0 (the ingress program sees packets, not namespaces), so
    /// lookups try the connection's namespace, then 0; the same holds for `host_ttls`.
    handshake_ttls: Lru<TupleKey, u8>,
    /// Last handshake TTL per peer host: the fallback for connections whose own handshake
    /// was not seen (opened before the observer started).
    host_ttls: Lru<(u32, IpAddr), u8>,
    /// TTL and arrival of the RST that just arrived on a socket.
    rst_ttls: Lru<u64, (u8, u64)>,
}

impl Correlator {
    /// A correlator with empty tables.
    pub fn new(config: CorrelatorConfig) -> Self {
        Self {
            conns: Lru::new(config.max_connections),
            closing: Lru::new(config.max_closing),
            remotes: Lru::new(config.max_remotes),
            handshake_ttls: Lru::new(config.max_handshake_ttls),
            host_ttls: Lru::new(config.max_remotes),
            rst_ttls: Lru::new(MAX_RST_TTLS),
            config,
        }
    }

    /// Takes one event; returns the findings it completes (usually none, at most a few).
    pub fn on_event(&mut self, ev: &TcpEvent) -> Vec<Finding> {
        let mut out = Vec::new();
        match ev.kind {
            TcpEventKind::SegmentTtl => self.on_segment_ttl(ev, &mut out),
            TcpEventKind::StateChange => self.on_state_change(ev, &mut out),
            TcpEventKind::IdleSend => self.on_idle_send(ev, &mut out),
            TcpEventKind::ReplyAfterIdle => self.on_reply_after_idle(ev, &mut out),
            TcpEventKind::KeepaliveTimer => {
                self.observe(ev, &mut out);
            }
            TcpEventKind::ResetSent => self.on_reset_sent(ev, &mut out),
            TcpEventKind::ResetReceived => self.on_reset_received(ev, &mut out),
            TcpEventKind::SocketError => self.on_socket_error(ev, &mut out),
        }
        out
    }

    /// Lets time pass: forgets closed connections whose grace is over, reporting the deaths
    /// that were held back for a trailing event that did not come.
    pub fn on_tick(&mut self, mono_ns: u64) -> Vec<Finding> {
        let grace_ns = self.config.close_grace_ms.saturating_mul(1_000_000);
        let mut out = Vec::new();
        while let Some((&cookie, conn)) = self.closing.oldest() {
            let closed_at = conn.closed.map_or(0, |c| c.at_ns);
            if closed_at.saturating_add(grace_ns) > mono_ns {
                break;
            }
            if let Some(conn) = self.closing.remove(&cookie) {
                release(conn, &mut out);
            }
        }
        out
    }

    /// The learned idle timeout of the path to `remote` in network namespace `netns`, while
    /// both bounds are known and consistent.
    pub fn timeout_window(&self, netns: u32, remote: SocketAddr) -> Option<Window> {
        self.remotes
            .get(&(netns, remote))
            .and_then(|r| r.learner.window())
    }

    /// Sizes of the tables.
    pub fn stats(&self) -> TableStats {
        TableStats {
            connections: self.conns.len(),
            closing: self.closing.len(),
            remotes: self.remotes.len(),
            handshake_ttls: self.handshake_ttls.len(),
            evicted_connections: self.conns.evicted(),
            evicted_closing: self.closing.evicted(),
        }
    }

    /// Finds or creates the connection an event is about and updates it. Events after the
    /// close of an unknown socket create it directly in the closing table.
    fn observe(&mut self, ev: &TcpEvent, out: &mut Vec<Finding>) -> Option<&mut Conn> {
        if ev.cookie == 0 {
            return None;
        }
        if self.closing.contains(&ev.cookie) {
            let conn = self.closing.peek_mut(&ev.cookie)?;
            conn.observe(ev);
            return Some(conn);
        }
        if self.conns.contains(&ev.cookie) {
            let conn = self.conns.get_mut(&ev.cookie)?;
            conn.observe(ev);
        } else {
            let mut conn = Conn::new(ev);
            if ev.new_state == TcpState::Close && ev.kind != TcpEventKind::StateChange {
                conn.closed = Some(Closed {
                    at_ns: ev.mono_ns,
                    state_before: TcpState::Unknown,
                });
                self.insert_closing(ev.cookie, conn, out);
                return self.closing.peek_mut(&ev.cookie);
            }
            if let Some((_, evicted)) = self.conns.insert(ev.cookie, conn) {
                release(evicted, out);
            }
        }
        self.after_observe(ev);
        self.conns.peek_mut(&ev.cookie)
    }

    /// Cross-connection bookkeeping for an open connection: the handshake TTL a listener saw
    /// for its tuple, and when the remote was last heard from.
    fn after_observe(&mut self, ev: &TcpEvent) {
        let Some(conn) = self.conns.peek_mut(&ev.cookie) else {
            return;
        };
        if conn.peer_ttl.is_none() && conn.local.port() != 0 {
            let (local, remote) = (conn.local, conn.remote);
            conn.peer_ttl = self
                .handshake_ttls
                .remove(&(conn.netns, local, remote))
                .or_else(|| self.handshake_ttls.remove(&(0, local, remote)));
            conn.passive |= conn.peer_ttl.is_some();
        }
        // Remotes are services (ip:port): an accepted connection's remote is a client's
        // ephemeral port, which would only churn the table and evict the services' windows.
        if conn.passive {
            return;
        }
        let key = (conn.netns, conn.remote);
        if let Some(at) = conn::last_rx_ns(ev) {
            self.remotes
                .get_or_insert_with(key, Remote::default)
                .heard_from(ev.cookie, at);
        }
    }

    fn insert_closing(&mut self, cookie: u64, conn: Conn, out: &mut Vec<Finding>) {
        if let Some((_, evicted)) = self.closing.insert(cookie, conn) {
            release(evicted, out);
        }
    }

    fn on_segment_ttl(&mut self, ev: &TcpEvent, out: &mut Vec<Finding>) {
        let (Some(ttl), Some(flags)) = (ev.ttl, ev.tcp_flags) else {
            return;
        };
        if flags & tcp_flags::RST != 0 {
            if ev.cookie != 0 {
                self.rst_ttls.insert(ev.cookie, (ttl, ev.mono_ns));
            }
            return;
        }
        if flags & tcp_flags::SYN == 0 {
            return;
        }
        self.host_ttls.insert((ev.netns, ev.remote.ip()), ttl);
        if flags & tcp_flags::ACK == 0 {
            // A SYN carries the listener's cookie: remember the TTL by tuple until the
            // accepted socket shows up.
            self.handshake_ttls
                .insert((ev.netns, ev.local, ev.remote), ttl);
            return;
        }
        let Some(conn) = self.observe(ev, out) else {
            return;
        };
        conn.peer_ttl = Some(ttl);
        let key = (conn.netns, conn.remote);
        self.remotes
            .get_or_insert_with(key, Remote::default)
            .heard_from(ev.cookie, ev.mono_ns);
    }

    fn on_state_change(&mut self, ev: &TcpEvent, out: &mut Vec<Finding>) {
        // Listeners are not connections; their SYNs are matched to accepted sockets by tuple.
        // (An accepted socket's first transition is LISTEN -> SYN_RECV: it is cloned from
        // the listener.)
        if ev.new_state == TcpState::Listen
            || (ev.old_state == TcpState::Listen && ev.new_state == TcpState::Close)
        {
            return;
        }
        if self.closing.contains(&ev.cookie) {
            // A closed socket may connect() again and keeps its cookie: a new connection.
            if ev.old_state != TcpState::Close || ev.new_state != TcpState::SynSent {
                return;
            }
            if let Some(old) = self.closing.remove(&ev.cookie) {
                release(old, out);
            }
        }
        let Some(conn) = self.observe(ev, out) else {
            return;
        };
        match ev.new_state {
            TcpState::Close => {
                let Some(mut conn) = self.conns.remove(&ev.cookie) else {
                    return;
                };
                conn.closed = Some(Closed {
                    at_ns: ev.mono_ns,
                    state_before: ev.old_state,
                });
                self.insert_closing(ev.cookie, conn, out);
            }
            TcpState::Established => {
                conn.state = TcpState::Established;
                conn.established_ns = Some(ev.mono_ns);
                conn.passive |= ev.old_state == TcpState::SynRecv;
                if ev.old_state == TcpState::SynSent {
                    let key = (conn.netns, conn.remote);
                    self.remotes
                        .get_or_insert_with(key, Remote::default)
                        .heard_from(ev.cookie, ev.mono_ns);
                }
            }
            state => conn.state = state,
        }
    }

    fn on_idle_send(&mut self, ev: &TcpEvent, out: &mut Vec<Finding>) {
        // Any packet refreshes a middlebox's idle timer, so the flow was idle for the
        // shorter of the two gaps; the kernel side emits this only when both exceed the floor.
        let Some(gap_ms) = ev
            .idle_rx_ms
            .map(|rx| ev.idle_tx_ms.map_or(rx, |tx| rx.min(tx)))
        else {
            return;
        };
        let Some(conn) = self.observe(ev, out) else {
            return;
        };
        if conn.closed.is_none() && conn.pending_idle.is_none() {
            conn.pending_idle = Some(PendingIdle {
                gap_ms,
                at_ns: ev.mono_ns,
            });
        }
    }

    fn on_reply_after_idle(&mut self, ev: &TcpEvent, out: &mut Vec<Finding>) {
        let Some(conn) = self.observe(ev, out) else {
            return;
        };
        conn.last_rx_ns = Some(ev.mono_ns);
        let pending = conn.pending_idle.take();
        if conn.passive {
            return;
        }
        let (key, remote) = ((conn.netns, conn.remote), conn.remote);
        let state = self.remotes.get_or_insert_with(key, Remote::default);
        state.heard_from(ev.cookie, ev.mono_ns);
        if let Some(pending) = pending {
            state.learner.survived(pending.gap_ms, remote);
        }
    }

    fn on_reset_sent(&mut self, ev: &TcpEvent, out: &mut Vec<Finding>) {
        if rules::is_reply_reset(ev) {
            if rules::refuses_connection_attempt(ev) {
                return;
            }
            // One finding per RST: each answers one segment, and the socket (none, a
            // listener, TIME_WAIT, or an open connection that goes on) has not died.
            let conn = self
                .conns
                .get(&ev.cookie)
                .cloned()
                .unwrap_or_else(|| Conn::new(ev));
            let decision = rules::reply_reset(ev);
            let finding = self.finding(ev, &conn, None, decision);
            out.push(finding);
            return;
        }
        let Some(conn) = self.observe(ev, out) else {
            return;
        };
        let replaces_provisional = matches!(conn.outcome, Outcome::Provisional(_))
            && ev.reason.as_ref().and_then(|r| r.name.as_deref()) == Some("TCP_ABORT_ON_DATA");
        if !matches!(conn.outcome, Outcome::Open) && !replaces_provisional {
            return;
        }
        conn.outcome = Outcome::Reported;
        let conn = conn.clone();
        let mut state = if matches!(ev.old_state, TcpState::Close | TcpState::Unknown) {
            conn.state_before_close()
        } else {
            ev.old_state
        };
        if state == TcpState::Close {
            state = TcpState::Unknown;
        }
        let facts = self.facts(ev, &conn, state, None);
        let decision = rules::active_reset(&facts);
        let finding = self.finding(ev, &conn, Some(&facts), decision);
        out.push(finding);
    }

    fn on_reset_received(&mut self, ev: &TcpEvent, out: &mut Vec<Finding>) {
        let rst_ttl = self
            .rst_ttls
            .remove(&ev.cookie)
            .filter(|&(_, at)| ev.mono_ns.saturating_sub(at) <= RST_TTL_MAX_AGE_NS)
            .map(|(ttl, _)| ttl);
        let Some(conn) = self.observe(ev, out) else {
            return;
        };
        if !matches!(conn.outcome, Outcome::Open) {
            return;
        }
        conn.outcome = Outcome::Reported;
        let conn = conn.clone();
        let state = if ev.old_state == TcpState::Unknown {
            conn.state
        } else {
            ev.old_state
        };
        let facts = self.facts(ev, &conn, state, rst_ttl);
        let decision = rules::reset_received(&facts);
        let finding = self.finding(ev, &conn, Some(&facts), decision);
        // In FIN_WAIT1/2 `tcp_reset` also runs when the peer sends data after our close
        // (TCP_ABORT_ON_DATA), and then this host's own RST follows. With no RST segment
        // seen, hold the verdict until the close grace ends or that RST arrives.
        let held = rst_ttl.is_none() && matches!(state, TcpState::FinWait1 | TcpState::FinWait2);
        if held && let Some(conn) = self.conn_mut(ev.cookie) {
            conn.outcome = Outcome::Provisional(Box::new(finding));
            return;
        }
        out.push(finding);
    }

    fn on_socket_error(&mut self, ev: &TcpEvent, out: &mut Vec<Finding>) {
        let Some(conn) = self.observe(ev, out) else {
            return;
        };
        if !matches!(conn.outcome, Outcome::Open) {
            return;
        }
        let conn = conn.clone();
        let state = conn.state_before_close();
        let facts = self.facts(ev, &conn, state, None);
        let Some(decision) = rules::socket_error(&facts) else {
            return;
        };
        let finding = self.finding(ev, &conn, Some(&facts), decision);
        if let Some(conn) = self.conn_mut(ev.cookie) {
            conn.outcome = Outcome::Reported;
        }
        out.push(finding);
    }

    fn conn_mut(&mut self, cookie: u64) -> Option<&mut Conn> {
        if self.closing.contains(&cookie) {
            self.closing.peek_mut(&cookie)
        } else {
            self.conns.peek_mut(&cookie)
        }
    }

    /// Gathers what the rules need about a connection at its deciding event.
    fn facts<'a>(
        &self,
        ev: &'a TcpEvent,
        conn: &'a Conn,
        state: TcpState,
        rst_ttl: Option<u8>,
    ) -> Facts<'a> {
        let keepalive = ev
            .keepalive
            .as_ref()
            .or(conn.keepalive.as_ref())
            .map(|k| Keepalive::effective(k, &self.config.sysctls));
        let peer_ttl = conn
            .peer_ttl
            .map(|ttl| PeerTtl {
                ttl,
                own_handshake: true,
            })
            .or_else(|| {
                let ip = conn.remote.ip();
                self.host_ttls
                    .get(&(conn.netns, ip))
                    .or_else(|| self.host_ttls.get(&(0, ip)))
                    .map(|&ttl| PeerTtl {
                        ttl,
                        own_handshake: false,
                    })
            });
        let remote = self
            .remotes
            .get(&(conn.netns, conn.remote))
            .filter(|_| !conn.passive);
        let threshold = match remote.and_then(|r| r.learner.lo_ms()) {
            Some(lo_ms) => Threshold::Learned { lo_ms },
            None => Threshold::Floor {
                ms: self.config.idle_expiry_floor_ms,
            },
        };
        let gap = death_gap(ev, conn, state, keepalive);
        let silent_since = silent_since(ev, conn, keepalive);
        let alive = remote
            .and_then(|r| r.last_heard_by_other(ev.cookie))
            .filter(|&at| at > silent_since)
            .map(|at| Alive {
                ago_ms: ev.mono_ns.saturating_sub(at) / 1_000_000,
            });
        Facts {
            ev,
            remote: conn.remote,
            state,
            owner: conn.owner.as_ref(),
            keepalive,
            rst_ttl,
            peer_ttl,
            gap,
            threshold,
            alive,
        }
    }

    /// Turns a decision into a finding: teaches the remote's learner, adds the window and
    /// the advice.
    fn finding(
        &mut self,
        ev: &TcpEvent,
        conn: &Conn,
        facts: Option<&Facts>,
        decision: Decision,
    ) -> Finding {
        let Decision {
            verdict,
            kind,
            confidence,
            mut evidence,
            learn_gap_ms,
            peer_closed_first,
        } = decision;
        let mut window = None;
        // Replies to segments (no socket, listeners) belong to no connection to learn about,
        // and accepted connections' remotes are no services.
        if facts.is_some() && !conn.passive {
            let key = (conn.netns, conn.remote);
            if let Some(gap) = learn_gap_ms {
                self.remotes
                    .get_or_insert_with(key, Remote::default)
                    .learner
                    .died(gap, conn.remote);
            }
            if let Some(remote) = self.remotes.get_mut(&key) {
                window = remote.learner.window();
                if let Some(w) = window {
                    evidence.extend(advice::window_evidence(conn.remote, w));
                }
                evidence.extend(remote.learner.take_note());
            }
        }
        if let Some(age_ns) = conn.established_ns.map(|at| ev.mono_ns.saturating_sub(at)) {
            evidence.push(format!(
                "connection established {} ms before",
                age_ns / 1_000_000
            ));
        }
        let reason = ev.reason.as_ref().map(|r| r.label());
        let owner = conn.owner.as_ref().or(ev.task.as_ref());
        let advice = advice::advice(&advice::AdviceInput {
            verdict,
            kind,
            remote: conn.remote,
            owner,
            reason: reason.as_deref(),
            window,
            learned_gap_ms: learn_gap_ms,
            peer_closed_first,
        });
        Finding {
            mono_ns: ev.mono_ns,
            verdict,
            kind,
            confidence,
            cookie: ev.cookie,
            netns: conn.netns,
            local: conn.local,
            remote: conn.remote,
            pid: owner.map(|o| o.pid),
            comm: owner.map(|o| o.comm.clone()),
            idle_ms: facts.and_then(|f| f.gap).map(|g| g.ms),
            keepalive: facts.and_then(|f| f.keepalive).map(|k| k.summary()),
            rst_ttl: facts.and_then(|f| f.rst_ttl),
            peer_ttl: facts.and_then(|f| f.peer_ttl).map(|p| p.ttl),
            reason,
            timeout_window_ms: window.map(|w| (w.lo_ms, w.hi_ms)),
            evidence,
            advice,
        }
    }
}

/// Reports a death that was held back, as a connection is forgotten (grace over, or evicted
/// to stay within a cap).
fn release(conn: Conn, out: &mut Vec<Finding>) {
    if let Outcome::Provisional(finding) = conn.outcome {
        out.push(*finding);
    }
}

/// The idle gap that ended in this death: the first keepalive probe's when probes were
/// outstanding, else the unanswered idle send's, else (on an open connection) the time since
/// the peer was last heard from.
fn death_gap(
    ev: &TcpEvent,
    conn: &Conn,
    state: TcpState,
    keepalive: Option<Keepalive>,
) -> Option<Gap> {
    if state == TcpState::SynSent {
        return None;
    }
    if let Some(k) = keepalive.filter(|k| k.enabled && k.probes_out > 0) {
        return Some(Gap {
            ms: k.idle_ms,
            source: GapSource::KeepaliveProbe,
        });
    }
    if let Some(pending) = conn.pending_idle {
        return Some(Gap {
            ms: pending.gap_ms,
            source: GapSource::IdleSend,
        });
    }
    conn::last_rx_ns(ev).map(|_| Gap {
        ms: ev.idle_rx_ms.unwrap_or(0),
        source: GapSource::ReceiveIdle,
    })
}

/// Since when a dying connection got no answer: its unanswered idle send, or its first
/// unanswered keepalive probe, or the last time it heard from the peer.
fn silent_since(ev: &TcpEvent, conn: &Conn, keepalive: Option<Keepalive>) -> u64 {
    if let Some(pending) = conn.pending_idle {
        return pending.at_ns;
    }
    let fallback = ev.mono_ns.saturating_sub(ALIVE_FALLBACK_NS);
    let Some(last_rx) = conn.last_rx_ns else {
        return fallback;
    };
    match keepalive.filter(|k| k.enabled && k.probes_out > 0) {
        Some(k) => last_rx.saturating_add(k.idle_ms.saturating_mul(1_000_000)),
        None => last_rx,
    }
}
