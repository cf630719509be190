//! Correlation: a pure state machine from decoded records to findings.
//!
//! The clock comes only from the inputs (record timestamps and ticks), so a recorded stream
//! replays to the same findings anywhere. The kernel side sends only the records that decide a
//! verdict, each with the connection's context, so nothing is kept per healthy connection:
//! only per destination (learned windows, liveness, TTL baselines), and, briefly, connections
//! that sent a deciding record, for the other records of the same death. Every table is
//! bounded.
//!
//! One death can still send several records, in an order that matters:
//! - RST received: `ResetReceived`, then the error report;
//! - abortive close: `ResetSent` (after the state became CLOSE: the context names the state
//!   before), then for `tcp_disconnect` the error report;
//! - keepalive timeout: `ResetSent`, then ETIMEDOUT; a retransmission timeout has no RST;
//! - `ss -K`: the error report (ECONNABORTED), then `ResetSent`.
//!
//! The first record that decides the death reports it once; the connection is remembered for
//! a grace period so that the later ones find it.

mod advice;
mod config;
mod conn;
mod facts;
mod finding;
mod learn;
mod local_peer;
mod lru;
mod remote;
mod rules;

use std::{
    collections::VecDeque,
    net::{IpAddr, SocketAddr},
};

pub use advice::{KnownTimeout, known_in as known_defaults_in};
pub use config::{CorrelatorConfig, KeepaliveSysctls, SysctlError};
pub use finding::{
    Action, Confidence, Fact, Finding, FindingKind, GapEnd, KeepaliveSummary, MissingFact,
    SCHEMA_VERSION, Verdict,
};
pub use learn::{Learned, Window};

use self::{
    conn::{Conn, Outcome},
    local_peer::{End, EndKey, may_be_local},
    lru::Lru,
    remote::{HostKey, Remote, RemoteKey},
    rules::{Decision, Facts},
};
use crate::event::{TcpEvent, TcpEventKind, TcpState};

/// An RST segment's TTL belongs to the `ResetReceived` that follows it at once; one older than
/// this belongs to an RST the kernel ignored (out of window).
const RST_TTL_MAX_AGE_NS: u64 = 1_000_000_000;

/// Sizes of the correlator's tables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Connections remembered for the other records of their death.
    pub recent: usize,
    /// Remotes with a learned window or liveness.
    pub remotes: usize,
    /// Peer hosts with a known handshake TTL.
    pub hosts: usize,
    /// Remembered connections forgotten to stay within `max_recent` before their grace ended.
    pub evicted_recent: u64,
}

/// The correlator: feed it every decoded record and a tick about once a second.
#[derive(Debug)]
pub struct Correlator {
    config: CorrelatorConfig,
    recent: Lru<u64, Conn>,
    remotes: Lru<RemoteKey, Remote>,
    /// Last handshake TTL per peer host: the fallback for connections whose own handshake
    /// was not seen (opened before the observer started).
    host_ttls: Lru<HostKey, u8>,
    /// Ends of connections that had a finding, for linking the two ends of a connection on
    /// this host.
    ends: Lru<EndKey, End>,
    /// Findings waiting for their other end's record: (cookie, when).
    pairing: VecDeque<(u64, u64)>,
}

impl Correlator {
    /// A correlator with empty tables.
    pub fn new(config: CorrelatorConfig) -> Self {
        Self {
            recent: Lru::new(config.max_recent),
            remotes: Lru::new(config.max_remotes),
            host_ttls: Lru::new(config.max_remotes),
            ends: Lru::new(config.max_recent),
            pairing: VecDeque::new(),
            config,
        }
    }

    /// Takes one record; returns the findings it completes (usually one, at most a few).
    pub fn on_event(&mut self, ev: &TcpEvent) -> Vec<Finding> {
        let mut out = Vec::new();
        self.learn_host_ttl(ev);
        match ev.kind {
            TcpEventKind::ReplyAfterIdle => self.on_reply_after_idle(ev),
            TcpEventKind::KeepaliveTimer => {
                self.observe(ev, &mut out);
            }
            TcpEventKind::ResetSent => self.on_reset_sent(ev, &mut out),
            TcpEventKind::ResetReceived => self.on_reset_received(ev, &mut out),
            TcpEventKind::SocketError => self.on_socket_error(ev, &mut out),
        }
        out
    }

    /// Lets time pass: forgets remembered connections whose grace is over, reporting the
    /// deaths that were held back for a record that did not come.
    pub fn on_tick(&mut self, mono_ns: u64) -> Vec<Finding> {
        let grace_ns = self.config.close_grace_ms.saturating_mul(1_000_000);
        let mut out = Vec::new();
        self.release_pairing(mono_ns, &mut out);
        while let Some((&cookie, conn)) = self.recent.oldest() {
            if conn.seen_ns.saturating_add(grace_ns) > mono_ns {
                break;
            }
            if let Some(conn) = self.recent.remove(&cookie) {
                release(conn, &mut out);
            }
        }
        out
    }

    /// Releases every finding still held back (at exit, or at the end of a replay): nothing
    /// decided is lost.
    pub fn finish(&mut self) -> Vec<Finding> {
        self.on_tick(u64::MAX)
    }

    /// The learned idle timeout of the path to `remote` in the network namespace with cookie
    /// `netns_cookie`, while both bounds are known and consistent.
    pub fn timeout_window(&self, netns_cookie: u64, remote: SocketAddr) -> Option<Window> {
        self.remotes
            .get(&(netns_cookie, remote))
            .and_then(|r| r.learner.window())
    }

    /// What is learned per remote, least recently used first: (network namespace cookie,
    /// remote, what was learned).
    pub fn learned(&self) -> impl Iterator<Item = (u64, SocketAddr, Learned)> + '_ {
        self.remotes
            .iter_oldest_first()
            .filter_map(|(&(netns_cookie, remote), state)| {
                Some((netns_cookie, remote, state.learner.learned()?))
            })
    }

    /// The last handshake TTL per peer host, least recently seen first: (network namespace
    /// cookie, host, TTL).
    pub fn peer_ttls(&self) -> impl Iterator<Item = (u64, IpAddr, u8)> + '_ {
        self.host_ttls
            .iter_oldest_first()
            .map(|(&(netns_cookie, host), &ttl)| (netns_cookie, host, ttl))
    }

    /// Goes on from what an earlier run learned about `remote` (restored oldest first, so
    /// that the table's eviction order is kept).
    pub fn restore_learned(&mut self, netns_cookie: u64, remote: SocketAddr, learned: Learned) {
        self.remotes
            .get_or_insert_with((netns_cookie, remote), Remote::default)
            .learner = learn::Learner::resume(learned);
    }

    /// A peer host's handshake TTL from an earlier run.
    pub fn restore_peer_ttl(&mut self, netns_cookie: u64, host: IpAddr, ttl: u8) {
        self.host_ttls.insert((netns_cookie, host), ttl);
    }

    /// Sizes of the tables.
    pub fn stats(&self) -> TableStats {
        TableStats {
            recent: self.recent.len(),
            remotes: self.remotes.len(),
            hosts: self.host_ttls.len(),
            evicted_recent: self.recent.evicted(),
        }
    }

    /// Finds or creates the connection a record is about and updates it.
    fn observe(&mut self, ev: &TcpEvent, out: &mut Vec<Finding>) -> Option<&mut Conn> {
        if ev.cookie == 0 {
            return None;
        }
        match self.recent.peek_mut(&ev.cookie) {
            Some(conn) if !conn.is_succeeded_by(ev) => conn.observe(ev),
            known => {
                if known.is_some()
                    && let Some(old) = self.recent.remove(&ev.cookie)
                {
                    release(old, out);
                }
                if let Some((_, evicted)) = self.recent.insert(ev.cookie, Conn::new(ev)) {
                    release(evicted, out);
                }
            }
        }
        self.heard(ev);
        self.recent.peek_mut(&ev.cookie)
    }

    /// When the remote was last heard from, for the liveness of other connections to it.
    fn heard(&mut self, ev: &TcpEvent) {
        let Some(conn) = self.recent.get(&ev.cookie) else {
            return;
        };
        // Remotes are services (ip:port): an accepted connection's remote is a client's
        // ephemeral port, which would only churn the table and evict the services' windows.
        // The origin comes from the socket itself, also for connections older than the
        // observer.
        if !conn.client {
            return;
        }
        let key = (conn.netns_cookie, conn.remote);
        if let Some(at) = conn::last_rx_ns(ev) {
            self.remotes
                .get_or_insert_with(key, Remote::default)
                .heard_from(ev.cookie, at);
        }
    }

    /// A record's handshake TTL is the peer host's distance for its later connections that
    /// were opened before the observer started.
    fn learn_host_ttl(&mut self, ev: &TcpEvent) {
        if let Some(ttl) = ev.context.as_ref().and_then(|c| c.peer_ttl) {
            self.host_ttls
                .insert((ev.netns_cookie, ev.remote.ip()), ttl);
        }
    }

    fn on_reply_after_idle(&mut self, ev: &TcpEvent) {
        let context = ev.context.as_ref();
        if context.and_then(|c| c.origin) != Some(crate::event::Origin::Connected) {
            return;
        }
        let key = (ev.netns_cookie, ev.remote);
        let state = self.remotes.get_or_insert_with(key, Remote::default);
        state.heard_from(ev.cookie, ev.mono_ns);
        if let Some(idle) = context.and_then(|c| c.idle_send) {
            state.learner.survived(idle.gap_ms, ev.mono_ns, ev.remote);
        }
    }

    fn on_reset_sent(&mut self, ev: &TcpEvent, out: &mut Vec<Finding>) {
        // Without reset reasons (before 6.10) the RST answering data that arrived after this
        // host's close comes from `tcp_v{4,6}_send_reset`, like any reply, on the full socket
        // the kernel has just closed (`tcp_done` in FIN_WAIT1, `tcp_reset` in FIN_WAIT2, where
        // the held record of the same socket waits for it, see `on_reset_received`): no other
        // reply comes from a socket in CLOSE.
        let data_after_close = ev.reason.is_none()
            && ev.cookie != 0
            && ev.old_state == TcpState::Close
            && ev.reset_facts.is_some_and(|f| f.answers_segment);
        if rules::is_reply_reset(ev) && !data_after_close {
            if rules::refuses_connection_attempt(ev) || rules::answers_a_reset(ev) {
                return;
            }
            // One finding per RST: each answers one segment, and the socket (none, a
            // listener, TIME_WAIT, or an open connection that goes on) has not died.
            let conn = Conn::new(ev);
            let decision = rules::reply_reset(ev);
            let finding = self.finding(ev, &conn, None, decision);
            out.push(finding);
            return;
        }
        let Some(conn) = self.observe(ev, out) else {
            return;
        };
        let replaces_provisional = matches!(conn.outcome, Outcome::Provisional(_))
            && (data_after_close
                || ev.reason.as_ref().and_then(|r| r.name.as_deref()) == Some("TCP_ABORT_ON_DATA"));
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
        if state == TcpState::Close && !data_after_close {
            state = TcpState::Unknown;
        }
        let facts = self.facts(ev, &conn, state, None);
        let decision = rules::active_reset(&facts);
        let wait = decision.verdict == Verdict::LocalClose
            && may_be_local(conn.remote, facts.peer_ttl.map(|p| p.ttl));
        let finding = self.finding(ev, &conn, Some(&facts), decision);
        self.emit(finding, wait, out);
    }

    fn on_reset_received(&mut self, ev: &TcpEvent, out: &mut Vec<Finding>) {
        let rst = ev
            .context
            .as_ref()
            .and_then(|c| c.rst)
            .filter(|rst| ev.mono_ns.saturating_sub(rst.at_ns) <= RST_TTL_MAX_AGE_NS);
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
        let facts = self.facts(ev, &conn, state, rst);
        let decision = rules::reset_received(&facts);
        let finding = self.finding(ev, &conn, Some(&facts), decision);
        // In FIN_WAIT1/2 `tcp_reset` also runs when the peer sends data after our close
        // (TCP_ABORT_ON_DATA), and then this host's own RST follows. With no RST segment
        // seen, hold the verdict until the close grace ends or that RST arrives.
        let held = rst.is_none() && matches!(state, TcpState::FinWait1 | TcpState::FinWait2);
        if held && let Some(conn) = self.recent.peek_mut(&ev.cookie) {
            conn.outcome = Outcome::Provisional(Box::new(finding));
            return;
        }
        let wait = finding.verdict == Verdict::PeerReset
            && finding.kind != FindingKind::Refused
            && may_be_local(conn.remote, finding.rst_ttl);
        self.emit(finding, wait, out);
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
        if let Some(conn) = self.recent.peek_mut(&ev.cookie) {
            conn.outcome = Outcome::Reported;
        }
        self.emit(finding, false, out);
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
            facts: mut machine_facts,
            learn_gap_ms,
            peer_closed_first,
        } = decision;
        let mut window = None;
        // Replies to segments (no socket, listeners) belong to no connection to learn about,
        // and accepted connections' remotes are no services.
        if facts.is_some() && conn.client {
            let key = (conn.netns_cookie, conn.remote);
            if let Some(gap) = learn_gap_ms {
                self.remotes
                    .get_or_insert_with(key, Remote::default)
                    .learner
                    .died(gap, ev.mono_ns, conn.remote);
            }
            if kind == FindingKind::KeepaliveRace
                && let Some(idle_ms) = facts.and_then(|f| f.idle_at_fin_ms)
            {
                self.remotes
                    .get_or_insert_with(key, Remote::default)
                    .closed_after(idle_ms);
            }
            if let Some(remote) = self.remotes.get_mut(&key) {
                window = remote.learner.window();
                if let Some(w) = window {
                    let (sentences, window_facts) = advice::window_evidence(conn.remote, w);
                    evidence.extend(sentences);
                    machine_facts.extend(window_facts);
                }
                evidence.extend(remote.learner.take_note());
            }
        }
        if let Some(age_ns) = conn.established_ns.map(|at| ev.mono_ns.saturating_sub(at)) {
            evidence.push(format!(
                "connection established {} ms before",
                age_ns / 1_000_000
            ));
            machine_facts.push(Fact::ConnectionAge {
                age_ms: age_ns / 1_000_000,
            });
        }
        let reason = ev.reason.as_ref().map(|r| r.label());
        let owner = conn.owner.as_ref().or(ev.task.as_ref());
        let advice = advice::advice(&advice::AdviceInput {
            verdict,
            kind,
            confidence,
            remote: conn.remote,
            owner,
            reason: reason.as_deref(),
            window,
            learned_gap_ms: learn_gap_ms,
            peer_closed_first,
            learned_close_ms: facts.and_then(|f| f.learned_close_ms),
        });
        Finding {
            mono_ns: ev.mono_ns,
            verdict,
            kind,
            confidence,
            cookie: ev.cookie,
            netns: conn.netns,
            netns_cookie: conn.netns_cookie,
            local: conn.local,
            remote: conn.remote,
            pid: owner.map(|o| o.pid),
            comm: owner.map(|o| o.comm.to_string()),
            idle_ms: facts.and_then(|f| f.gap).map(|g| g.ms),
            keepalive: facts.and_then(|f| f.keepalive).map(|k| k.summary()),
            rst_ttl: facts.and_then(|f| f.rst_ttl),
            peer_ttl: facts.and_then(|f| f.peer_ttl).map(|p| p.ttl),
            reason,
            timeout_window_ms: window.map(|w| (w.lo_ms, w.hi_ms)),
            evidence,
            facts: machine_facts,
            advice: advice.text,
            actions: advice.actions,
        }
    }
}

/// Reports a death that was held back, as a connection is forgotten (grace over, or evicted
/// to stay within a cap).
fn release(conn: Conn, out: &mut Vec<Finding>) {
    if let Outcome::Provisional(finding) | Outcome::Pairing(finding) = conn.outcome {
        out.push(*finding);
    }
}
