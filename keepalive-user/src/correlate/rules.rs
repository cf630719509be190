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

use std::net::SocketAddr;

use keepalive_common::tcp_flags;

use super::{
    conn::{Keepalive, fmt_duration},
    finding::{Confidence, FindingKind, Verdict},
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
    pub peer_ttl: Option<PeerTtl>,
    /// The idle gap that ended in this death.
    pub gap: Option<Gap>,
    pub threshold: Threshold,
    /// Another connection to the same remote heard from the peer during this one's silence.
    pub alive: Option<Alive>,
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
            learn_gap_ms: None,
            peer_closed_first: false,
        }
    }

    fn with(mut self, evidence: impl IntoIterator<Item = String>) -> Self {
        self.evidence.extend(evidence);
        self
    }
}

fn reason_name(ev: &TcpEvent) -> Option<&str> {
    ev.reason.as_ref()?.name.as_deref()
}

/// Reset reasons with which the kernel ends the socket's own connection
/// (`tcp_send_active_reset` callers, and the RST after `tcp_reset` for data after close).
/// Every other reason answers a segment that did not fit, and the socket lives on.
const ENDING_REASONS: &[&str] = &[
    "NOT_SPECIFIED",
    "TCP_ABORT_ON_CLOSE",
    "TCP_ABORT_ON_LINGER",
    "TCP_ABORT_ON_MEMORY",
    "TCP_ABORT_ON_DATA",
    "TCP_STATE",
    "TCP_KEEPALIVE_TIMEOUT",
    "TCP_DISCONNECT_WITH_DATA",
];

/// Whether an RST this host sent answers a segment rather than ending the socket's own
/// connection: there was no socket, or only a listener, a TIME_WAIT or a request socket, or
/// the reason is one of a rejected segment. Without a reason (kernels before 6.10) an RST on
/// a full socket counts as ending it unless the hook saw it answer a segment.
pub(super) fn is_reply_reset(ev: &TcpEvent) -> bool {
    ev.cookie == 0
        || matches!(
            ev.old_state,
            TcpState::Listen | TcpState::TimeWait | TcpState::NewSynRecv
        )
        || reason_name(ev).is_some_and(|name| !ENDING_REASONS.contains(&name))
        || (ev.reason.is_none() && ev.reset_facts.is_some_and(|f| f.answers_segment))
}

/// Whether a reply RST refused a new connection: it answered a bare SYN (a closed port, a
/// port scan). No connection died, so there is no finding; when the connecting side is on
/// this host it gets its own `refused` finding. Recordings made before the answered segment's
/// flags were captured carry none, and keep their `no_socket` findings.
pub(super) fn refuses_connection_attempt(ev: &TcpEvent) -> bool {
    ev.tcp_flags
        .is_some_and(|f| f & tcp_flags::SYN != 0 && f & (tcp_flags::ACK | tcp_flags::RST) == 0)
}

/// An RST this host sent in reply to a segment.
///
/// - No socket (NO_SOCKET), a TIME_WAIT socket, or only a listener matched: `local_close` /
///   `no_socket`. The remote is using a connection this host no longer has (restart, stale
///   pooled connection, a middlebox that re-routed the flow). `confirmed` with a kernel
///   reason, or without one (kernels before 6.10) when the hook saw the segment and no socket
///   for it; `likely` otherwise, where no socket is the only cause of a socketless RST.
/// - A pending handshake (request socket) or an open connection rejected the segment:
///   `local_close` / `bad_state`, `confirmed`. An open connection goes on, so its own death
///   is still reported when it comes.
pub(super) fn reply_reset(ev: &TcpEvent) -> Decision {
    let reason = ev
        .reason
        .as_ref()
        .map_or_else(|| "none".to_owned(), |r| r.label());
    let named = reason_name(ev).is_some();
    let (local, remote) = (ev.local, ev.remote);
    let no_socket = ev.cookie == 0
        || matches!(ev.old_state, TcpState::Listen | TcpState::TimeWait)
        || matches!(reason_name(ev), Some("NO_SOCKET" | "TCP_TIMEWAIT_SOCKET"));
    if !no_socket {
        let what = if ev.old_state == TcpState::NewSynRecv {
            "its pending handshake".to_owned()
        } else {
            format!("the connection ({})", ev.old_state)
        };
        return Decision::new(
            Verdict::LocalClose,
            FindingKind::BadState,
            Confidence::Confirmed,
        )
        .with([format!(
            "a segment from {remote} did not fit {what} with {local}, and this host answered \
             with an RST (kernel reason {reason})"
        )]);
    }
    let sentence = match ev.old_state {
        TcpState::Listen => format!(
            "only a listener matched the segment from {remote} to {local}: no connection \
             exists for it, so this host answered with an RST (kernel reason {reason})"
        ),
        TcpState::TimeWait => format!(
            "the connection {local} <-> {remote} was already closed (TIME_WAIT) when the \
             peer's segment arrived, and this host answered with an RST (kernel reason \
             {reason})"
        ),
        _ => format!(
            "this host had no socket for {local} <-> {remote} and answered the peer's segment \
             with an RST (kernel reason {reason})"
        ),
    };
    // Without a reason, a hook on tcp_v{4,6}_send_reset that saw the segment and no socket
    // is as direct as the kernel's NO_SOCKET.
    let seen_without_socket = ev.cookie == 0 && ev.reset_facts.is_some_and(|f| f.answers_segment);
    let confidence = if named || seen_without_socket {
        Confidence::Confirmed
    } else {
        Confidence::Likely
    };
    Decision::new(Verdict::LocalClose, FindingKind::NoSocket, confidence).with([sentence])
}

/// States in which `tcp_disconnect` resets the peer (`tcp_need_reset` in net/ipv4/tcp.c).
fn resets_on_disconnect(state: TcpState) -> bool {
    use TcpState::*;
    matches!(
        state,
        Established | CloseWait | FinWait1 | FinWait2 | SynRecv
    )
}

/// An RST this host sent to end the socket's own connection.
///
/// - TCP_KEEPALIVE_TIMEOUT: the keepalive probes went unanswered; see [`silent_timeout`].
/// - A reason naming a local abort: `local_close` with that kind, `confirmed`, with the
///   process that owned the socket.
/// - TCP_STATE: `tcp_disconnect` or `tcp_abort` reset a connection that needed it. With
///   `sk_err` ECONNABORTED it was `tcp_abort` (`ss -K`): `destroyed`. From a process (close
///   or connect(AF_UNSPEC)) on a socket in a state that needs a reset, it is the abortive
///   close of SO_LINGER {1, 0}: `linger_zero` (on 6.18 the linger-0 close goes through
///   `tcp_disconnect` and is reported as TCP_STATE, not TCP_ABORT_ON_LINGER). Otherwise
///   `bad_state`.
/// - No reason from the kernel (before 6.10): the socket's state tells, see
///   [`from_socket_state`].
/// - NOT_SPECIFIED, or a reason this kernel does not name: `local_abort`, `likely`.
pub(super) fn active_reset(f: &Facts) -> Decision {
    let ev = f.ev;
    let state = f.state;
    let local = |kind, what: &str| {
        let reason = reason_name(ev).unwrap_or("none");
        Decision::new(Verdict::LocalClose, kind, Confidence::Confirmed).with([
            format!("kernel reason {reason}: {what}"),
            format!("socket was {state}"),
            process_sentence(ev.task.as_ref(), f.owner),
        ])
    };
    match reason_name(ev) {
        Some("TCP_KEEPALIVE_TIMEOUT") => silent_timeout(f, Silence::KeepaliveTimeout),
        Some("TCP_ABORT_ON_CLOSE") => local(
            FindingKind::AbortOnClose,
            "the socket was closed with unread data in its receive queue",
        ),
        Some("TCP_ABORT_ON_LINGER") => local(
            FindingKind::AbortOnLinger,
            "the socket was closed and the peer's FIN did not come within the FIN_WAIT2 \
             timeout",
        ),
        Some("TCP_ABORT_ON_MEMORY") => local(
            FindingKind::AbortOnMemory,
            "too many orphaned sockets or too little TCP memory",
        ),
        Some("TCP_ABORT_ON_DATA") => local(
            FindingKind::AbortOnData,
            "the peer sent data after this host had closed the socket",
        ),
        Some("TCP_DISCONNECT_WITH_DATA") => local(
            FindingKind::DisconnectWithData,
            "the socket was disconnected with data still queued",
        ),
        Some("TCP_STATE") if ev.sk_err == Some(ECONNABORTED) => local(
            FindingKind::Destroyed,
            "the socket was destroyed from outside (ECONNABORTED: ss -K or SOCK_DESTROY)",
        ),
        Some("TCP_STATE") if ev.task.is_some() && resets_on_disconnect(state) => local(
            FindingKind::LingerZero,
            "an abortive close from the process: close() with SO_LINGER {1, 0} (or \
             connect(AF_UNSPEC), or closing a listener with unaccepted connections)",
        ),
        Some("TCP_STATE") => local(
            FindingKind::BadState,
            "the connection's state required a reset",
        ),
        None if ev.reason.is_none() => from_socket_state(f),
        // NOT_SPECIFIED, or a value this kernel does not name: see `is_reply_reset`.
        _ => {
            let mut decision = local(
                FindingKind::LocalAbort,
                "the kernel names no cause (kernels before 6.10 have no reasons)",
            );
            decision.confidence = Confidence::Likely;
            decision
        }
    }
}

/// An RST this host sent to end the socket's own connection, on a kernel that gives no reason
/// (before 6.10): the kind follows from the socket's state at the RST, as the kernel's own
/// choice of reason does.
///
/// - Keepalive on and its probes used up: the keepalive timer gave up; see [`silent_timeout`].
/// - `sk_err` ECONNABORTED: `tcp_abort` (`ss -K`): `destroyed`.
/// - Unread data (more than a FIN, or anything without a zero linger): `__tcp_close` checks it
///   first, so `abort_on_close`.
/// - `SO_LINGER {1, 0}`: `linger_zero`.
/// - None of these: `local_abort`, `likely`.
///
/// All but the last are `confirmed`: each is the condition under which the kernel sends it.
fn from_socket_state(f: &Facts) -> Decision {
    let ev = f.ev;
    let facts = ev.reset_facts.unwrap_or_default();
    let local = |kind, what: String, confidence| {
        Decision::new(Verdict::LocalClose, kind, confidence).with([
            format!("{what} (the kernel gives no reset reason; seen on the socket)"),
            format!("socket was {}", f.state),
            process_sentence(ev.task.as_ref(), f.owner),
        ])
    };
    let unread = facts.unread_bytes;
    if facts.probes_exhausted {
        silent_timeout(f, Silence::KeepaliveTimeout)
    } else if ev.sk_err == Some(ECONNABORTED) {
        local(
            FindingKind::Destroyed,
            "the socket was destroyed from outside (ECONNABORTED: ss -K or SOCK_DESTROY)"
                .to_owned(),
            Confidence::Confirmed,
        )
    } else if unread > 1 || (unread == 1 && !facts.linger_zero) {
        local(
            FindingKind::AbortOnClose,
            format!("the socket was closed with {unread} unread byte(s) in its receive queue"),
            Confidence::Confirmed,
        )
    } else if facts.linger_zero {
        local(
            FindingKind::LingerZero,
            "an abortive close from the process: SO_LINGER {1, 0} was set on the socket".to_owned(),
            Confidence::Confirmed,
        )
    } else {
        local(
            FindingKind::LocalAbort,
            "this host aborted the connection and nothing on the socket says why".to_owned(),
            Confidence::Likely,
        )
    }
}

fn process_sentence(task: Option<&Task>, owner: Option<&Task>) -> String {
    match (task, owner) {
        (Some(task), Some(owner)) if task.pid != owner.pid => format!(
            "RST sent from pid {} ({}), not from the owner pid {} ({})",
            task.pid, task.comm, owner.pid, owner.comm
        ),
        (Some(task), _) => format!("RST sent from pid {} ({})", task.pid, task.comm),
        (None, Some(owner)) => format!("socket owned by pid {} ({})", owner.pid, owner.comm),
        (None, None) => "owning process not seen".to_owned(),
    }
}

/// Why a connection died silently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Silence {
    KeepaliveTimeout,
    TimedOut,
}

/// No RST, no answer: keepalive probes unanswered until the keepalive-timeout reset, or
/// ETIMEDOUT after retransmissions (or unanswered SYNs). `middlebox_drop` / `silent_timeout`:
/// `likely` when another connection to the same remote heard from the peer while this one
/// got no answer (the peer host was up, so the path dropped the flow), `possible` otherwise
/// (the peer host may have been down). The gap before the unanswered transmission teaches the
/// remote's learner.
fn silent_timeout(f: &Facts, how: Silence) -> Decision {
    let probes = f.keepalive.map_or(0, |k| k.probes_out);
    let mut evidence = vec![match how {
        Silence::KeepaliveTimeout => format!(
            "{probes} keepalive probes went unanswered and the kernel gave up with an RST \
             (TCP_KEEPALIVE_TIMEOUT)"
        ),
        Silence::TimedOut if f.state == TcpState::SynSent => format!(
            "ETIMEDOUT with no RST: connect() to {} got no answer to its SYNs",
            f.remote
        ),
        Silence::TimedOut if probes > 0 => {
            format!("ETIMEDOUT with no RST: {probes} keepalive probes went unanswered")
        }
        Silence::TimedOut => match f.ev.retransmits.filter(|&r| r > 0) {
            Some(r) => format!("ETIMEDOUT with no RST: {r} retransmissions went unanswered"),
            None => "ETIMEDOUT with no RST: retransmissions went unanswered".to_owned(),
        },
    }];
    if let Some(k) = f.keepalive.filter(|k| k.enabled) {
        evidence.push(format!("keepalive on: {}", k.settings()));
    }
    let gap = f.gap.filter(Gap::is_explicit);
    if let Some(gap) = gap {
        evidence.push(match gap.source {
            GapSource::IdleSend => format!(
                "this host sent after {} ms idle and never got an answer",
                gap.ms
            ),
            _ => gap.sentence(),
        });
    }
    let confidence = match f.alive {
        Some(alive) => {
            evidence.push(format!(
                "another connection to {} received a segment {} ms before this death, while \
                 this one got no answer: the peer host was up",
                f.remote, alive.ago_ms
            ));
            Confidence::Likely
        }
        None => {
            evidence.push(format!(
                "no other connection to {} was heard from while this one got no answer: the \
                 peer host may have been down",
                f.remote
            ));
            Confidence::Possible
        }
    };
    let mut decision = Decision::new(
        Verdict::MiddleboxDrop,
        FindingKind::SilentTimeout,
        confidence,
    )
    .with(evidence);
    decision.learn_gap_ms = gap.map(|g| g.ms);
    decision
}

/// The idle-expiry test and its evidence.
struct IdleCheck {
    /// RST after an idle gap at or above the threshold, keepalive off or slower than the gap,
    /// on an ESTABLISHED socket (in the closing states a FIN exchange, not idleness, is going
    /// on).
    applies: bool,
    /// Keepalive was on with an idle time shorter than the gap and no probe outstanding: the
    /// probes would have kept the flow alive, so idleness does not explain the RST.
    keepalive_protects: bool,
    evidence: Vec<String>,
}

fn idle_check(f: &Facts) -> IdleCheck {
    let Some(gap) = f.gap else {
        return IdleCheck {
            applies: false,
            keepalive_protects: false,
            evidence: Vec::new(),
        };
    };
    let mut evidence = vec![gap.sentence()];
    let keepalive_protects = f
        .keepalive
        .is_some_and(|k| k.enabled && k.probes_out == 0 && k.idle_ms < gap.ms);
    if let Some(k) = f.keepalive {
        evidence.push(keepalive_vs_gap(k, gap.ms));
    }
    let established = f.state == TcpState::Established;
    if established && !keepalive_protects {
        evidence.push(f.threshold.sentence(gap.ms, f.remote));
    }
    IdleCheck {
        applies: established && !keepalive_protects && f.threshold.reached(gap.ms),
        keepalive_protects,
        evidence,
    }
}

fn keepalive_vs_gap(k: Keepalive, gap_ms: u64) -> String {
    if !k.enabled {
        "keepalive off".to_owned()
    } else if k.probes_out > 0 {
        format!(
            "keepalive on ({}): {} probe(s) sent without an answer",
            k.settings(),
            k.probes_out
        )
    } else if k.idle_ms < gap_ms {
        format!(
            "keepalive idle {} is shorter than the {gap_ms} ms gap, so its probes should have \
             kept the flow alive",
            fmt_duration(k.idle_ms)
        )
    } else {
        format!(
            "keepalive on but its idle {} is longer than the {gap_ms} ms gap, so no probe went \
             out",
            fmt_duration(k.idle_ms)
        )
    }
}

/// The RST's TTL against the peer's.
enum TtlCompare {
    Unknown(String),
    Same(Vec<String>),
    Differ(Vec<String>),
}

fn compare_ttl(f: &Facts) -> TtlCompare {
    match (f.rst_ttl, f.peer_ttl) {
        (Some(rst), Some(peer)) => {
            let mut evidence = vec![hop_sentence(rst, peer.ttl)];
            if !peer.own_handshake {
                evidence.push(format!(
                    "peer TTL from another connection's handshake with {}",
                    f.remote.ip()
                ));
            }
            if rst == peer.ttl {
                TtlCompare::Same(evidence)
            } else {
                TtlCompare::Differ(evidence)
            }
        }
        (None, _) => TtlCompare::Unknown("the RST's TTL was not seen".to_owned()),
        (Some(rst), None) => TtlCompare::Unknown(format!(
            "RST TTL {rst}, but no handshake TTL is known for {}",
            f.remote.ip()
        )),
    }
}

/// The initial TTL a sender most likely used: the smallest common default at or above it.
fn initial_ttl(ttl: u8) -> u8 {
    [32, 64, 128].into_iter().find(|&i| ttl <= i).unwrap_or(255)
}

fn hop_sentence(rst: u8, peer: u8) -> String {
    if rst == peer {
        return format!("RST TTL {rst} equals the peer's TTL: it came from the peer's distance");
    }
    let (rst_initial, peer_initial) = (initial_ttl(rst), initial_ttl(peer));
    if rst_initial != peer_initial {
        return format!(
            "RST TTL {rst}, peer TTL {peer}: different initial TTLs ({rst_initial} and \
             {peer_initial}), so a different sender"
        );
    }
    let diff = rst.abs_diff(peer);
    let hops = if diff == 1 {
        "1 hop".to_owned()
    } else {
        format!("{diff} hops")
    };
    let direction = if rst > peer { "closer" } else { "farther" };
    format!("RST TTL {rst}, peer TTL {peer}: {hops} {direction} than the peer")
}

/// An RST arrived on the socket. In order:
///
/// 1. In SYN_SENT it answers our SYN: `peer_reset` / `refused`, `confirmed` when its TTL is
///    the peer's, `likely` when unknown, `possible` when it differs (a firewall on the path
///    may have refused it).
/// 2. Its TTL differs from the peer's handshake TTL: `middlebox_drop` / `forged_rst`. If the
///    idle-expiry test holds as well, the two independent signals agree: `confirmed`, with the
///    idle evidence; otherwise `likely` (a route change can also shift a TTL).
/// 3. Its TTL equals the peer's: `peer_reset` / `peer_abort`, `confirmed`, even after a long
///    idle gap: a device at the peer's distance is the peer host (or its own firewall).
/// 4. TTL unknown and the idle-expiry test holds: `middlebox_drop` / `idle_expiry_rst`,
///    `likely` against a learned bound, `possible` against the configured floor.
/// 5. Otherwise `peer_reset` / `peer_abort`, `likely`.
///
/// In CLOSE_WAIT the peer had sent its FIN first: the RST answers this host's use of a
/// connection the peer had closed (a stale pooled connection), said in the evidence.
pub(super) fn reset_received(f: &Facts) -> Decision {
    if f.state == TcpState::SynSent {
        return refused(f);
    }
    let idle = idle_check(f);
    let peer_closed_first = f.state == TcpState::CloseWait;
    let mut decision = match compare_ttl(f) {
        TtlCompare::Differ(ttl_evidence) => {
            let confidence = if idle.applies {
                Confidence::Confirmed
            } else {
                Confidence::Likely
            };
            let mut d = Decision::new(Verdict::MiddleboxDrop, FindingKind::ForgedRst, confidence)
                .with(ttl_evidence)
                .with(idle.evidence);
            // A forged RST after a flagged idle gap that keepalive did not cover also bounds
            // the path's timeout; one in the middle of traffic (a firewall's policy) does not.
            let explicit = f.gap.is_some_and(|g| g.is_explicit());
            if idle.applies || (explicit && !idle.keepalive_protects) {
                d.learn_gap_ms = f.gap.map(|g| g.ms);
            }
            d
        }
        TtlCompare::Same(ttl_evidence) => Decision::new(
            Verdict::PeerReset,
            FindingKind::PeerAbort,
            Confidence::Confirmed,
        )
        .with(ttl_evidence)
        .with(idle.evidence),
        TtlCompare::Unknown(sentence) if idle.applies => {
            let confidence = match f.threshold {
                Threshold::Learned { .. } => Confidence::Likely,
                Threshold::Floor { .. } => Confidence::Possible,
            };
            let mut d = Decision::new(
                Verdict::MiddleboxDrop,
                FindingKind::IdleExpiryRst,
                confidence,
            )
            .with(idle.evidence)
            .with([sentence]);
            d.learn_gap_ms = f.gap.map(|g| g.ms);
            d
        }
        TtlCompare::Unknown(sentence) => Decision::new(
            Verdict::PeerReset,
            FindingKind::PeerAbort,
            Confidence::Likely,
        )
        .with([sentence])
        .with(idle.evidence),
    };
    if peer_closed_first {
        decision.evidence.push(
            "the peer had closed its end first (FIN received, socket in CLOSE_WAIT) and \
             answered this host's later segment with an RST"
                .to_owned(),
        );
        decision.peer_closed_first = true;
    } else if f.state != TcpState::Established {
        decision
            .evidence
            .push(format!("socket was {} when the RST arrived", f.state));
    }
    decision
}

fn refused(f: &Facts) -> Decision {
    let first = format!(
        "the RST answered this host's SYN: nothing accepted the connection to {}",
        f.remote
    );
    let (confidence, ttl) = match compare_ttl(f) {
        TtlCompare::Same(e) => (Confidence::Confirmed, e),
        TtlCompare::Unknown(s) => (Confidence::Likely, vec![s]),
        TtlCompare::Differ(mut e) => {
            e.push("a firewall on the path may have refused it".to_owned());
            (Confidence::Possible, e)
        }
    };
    Decision::new(Verdict::PeerReset, FindingKind::Refused, confidence)
        .with([first])
        .with(ttl)
}

/// An error report on a connection whose death no RST decided.
///
/// - ETIMEDOUT: [`silent_timeout`].
/// - ECONNREFUSED without an RST: an ICMP port unreachable (a firewall's REJECT) or an RST
///   that was not seen; `peer_reset` / `refused`, `possible`.
/// - ECONNABORTED: `tcp_abort` destroyed it (`ss -K`, SOCK_DESTROY); `local_close` /
///   `destroyed`, `confirmed`.
/// - ECONNRESET or EPIPE in SYN_SENT: `tcp_disconnect` abandoned a pending connect; nothing
///   went on the wire, so no finding. Elsewhere the RST event was lost or came before this
///   observer started: `peer_reset` / `peer_abort`, `possible`.
/// - Other errors (ICMP unreachables) end no connection this product attributes: no finding.
pub(super) fn socket_error(f: &Facts) -> Option<Decision> {
    let decision = match f.ev.sk_err? {
        ETIMEDOUT => silent_timeout(f, Silence::TimedOut),
        ECONNREFUSED => Decision::new(
            Verdict::PeerReset,
            FindingKind::Refused,
            Confidence::Possible,
        )
        .with([format!(
            "ECONNREFUSED on the connection to {} but no RST was seen: an ICMP port \
                 unreachable (a firewall's REJECT) or an RST this observer missed",
            f.remote
        )]),
        ECONNABORTED => Decision::new(
            Verdict::LocalClose,
            FindingKind::Destroyed,
            Confidence::Confirmed,
        )
        .with([
            "ECONNABORTED: the socket was destroyed from outside its process (ss -K or \
             SOCK_DESTROY)"
                .to_owned(),
            format!("socket was {}", f.state),
            process_sentence(None, f.owner),
        ]),
        ECONNRESET | EPIPE if f.state == TcpState::SynSent => return None,
        err @ (ECONNRESET | EPIPE) => Decision::new(
            Verdict::PeerReset,
            FindingKind::PeerAbort,
            Confidence::Possible,
        )
        .with([format!(
            "error {err} (connection reset) but no RST event was seen: events were \
                     lost or the observer started late"
        )]),
        _ => return None,
    };
    Some(decision)
}

#[cfg(test)]
mod tests {
    use super::{hop_sentence, initial_ttl};

    #[test]
    fn hops_assume_a_common_initial_ttl() {
        assert_eq!(initial_ttl(63), 64);
        assert_eq!(initial_ttl(64), 64);
        assert_eq!(initial_ttl(120), 128);
        assert_eq!(initial_ttl(250), 255);
        assert_eq!(
            hop_sentence(64, 63),
            "RST TTL 64, peer TTL 63: 1 hop closer than the peer"
        );
        assert_eq!(
            hop_sentence(60, 63),
            "RST TTL 60, peer TTL 63: 3 hops farther than the peer"
        );
        assert!(hop_sentence(255, 63).contains("different initial TTLs (255 and 64)"));
    }
}
