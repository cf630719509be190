//! RSTs this host sent: in reply to a segment, or to end the socket's own connection.

use keepalive_common::tcp_flags;

use super::{
    Decision, ECONNABORTED, Facts,
    silent::{Silence, silent_timeout},
};
use crate::{
    correlate::finding::{Confidence, Fact, FindingKind, Verdict},
    event::{Task, TcpEvent, TcpState},
};

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
pub(in crate::correlate) fn is_reply_reset(ev: &TcpEvent) -> bool {
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
pub(in crate::correlate) fn refuses_connection_attempt(ev: &TcpEvent) -> bool {
    ev.tcp_flags
        .is_some_and(|f| f & tcp_flags::SYN != 0 && f & (tcp_flags::ACK | tcp_flags::RST) == 0)
}

/// Whether the "reply" answers an RST: the kernel never answers one (`tcp_v{4,6}_send_reset`
/// returns at once), but fentry and kprobe hooks on those functions fire on entry, before
/// that check. Nothing was sent, so there is no finding.
pub(in crate::correlate) fn answers_a_reset(ev: &TcpEvent) -> bool {
    ev.tcp_flags.is_some_and(|f| f & tcp_flags::RST != 0)
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
pub(in crate::correlate) fn reply_reset(ev: &TcpEvent) -> Decision {
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
        .fact([
            Fact::KernelReason {
                reason: reason.clone(),
            },
            Fact::SocketState {
                state: ev.old_state,
            },
        ])
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
    Decision::new(Verdict::LocalClose, FindingKind::NoSocket, confidence)
        .with([sentence])
        .fact([
            Fact::KernelReason { reason },
            Fact::SocketState {
                state: ev.old_state,
            },
        ])
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
pub(in crate::correlate) fn active_reset(f: &Facts) -> Decision {
    let ev = f.ev;
    let state = f.state;
    let local = |kind, what: &str| {
        let reason = reason_name(ev).unwrap_or("none");
        Decision::new(Verdict::LocalClose, kind, Confidence::Confirmed)
            .with([
                format!("kernel reason {reason}: {what}"),
                format!("socket was {state}"),
                process_sentence(ev.task.as_ref(), f.owner),
            ])
            .fact([
                Fact::KernelReason {
                    reason: reason.to_owned(),
                },
                Fact::SocketState { state },
            ])
            .fact(process_fact(ev.task.as_ref(), f.owner))
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
/// - An RST answering a segment from the full socket the kernel had just closed (the only
///   replies that come this way): data arrived after this host's close and the kernel reset
///   (RFC 1122, `tcp_rcv_state_process` in FIN_WAIT1/2): `abort_on_data`, as
///   TCP_ABORT_ON_DATA says on later kernels.
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
        let mut decision = Decision::new(Verdict::LocalClose, kind, confidence)
            .with([
                format!("{what} (the kernel gives no reset reason; seen on the socket)"),
                format!("socket was {}", f.state),
                process_sentence(ev.task.as_ref(), f.owner),
            ])
            .fact([Fact::NoKernelReason, Fact::SocketState { state: f.state }])
            .fact(process_fact(ev.task.as_ref(), f.owner));
        if facts.unread_bytes > 0 {
            decision.facts.push(Fact::UnreadBytes {
                bytes: facts.unread_bytes,
            });
        }
        if facts.linger_zero {
            decision.facts.push(Fact::LingerZero);
        }
        decision
    };
    let unread = facts.unread_bytes;
    if facts.probes_exhausted {
        silent_timeout(f, Silence::KeepaliveTimeout)
    } else if facts.answers_segment {
        local(
            FindingKind::AbortOnData,
            "the peer sent data after this host had closed the socket, and the kernel answered \
             it with an RST"
                .to_owned(),
            Confidence::Confirmed,
        )
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

/// The process that sent the RST, and the owner when another one.
pub(super) fn process_fact(task: Option<&Task>, owner: Option<&Task>) -> Vec<Fact> {
    task.into_iter()
        .chain(owner.filter(|o| task.is_none_or(|t| t.pid != o.pid)))
        .map(|t| Fact::Process {
            pid: t.pid,
            comm: t.comm,
        })
        .collect()
}

pub(super) fn process_sentence(task: Option<&Task>, owner: Option<&Task>) -> String {
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
