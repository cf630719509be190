//! Socket lifecycle and errors. `inet_sock_set_state(sk, old, new)` sends nothing: it keeps
//! in the connection's context what the rules need from the lifecycle (who connected, when it
//! was established, whether the peer closed first, the state before CLOSE).
//! `inet_sk_error_report(sk)` (or `sock_def_error_report(sk)`) sends the error (ECONNRESET, ETIMEDOUT, ECONNREFUSED) with that
//! context. `tcp_destroy_sock(sk)` forgets the fallback map's entry.

use aya_ebpf::{
    helpers::bpf_jiffies64,
    macros::{btf_tracepoint, fentry},
    programs::{BtfTracePointContext, FEntryContext},
};
use keepalive_common::{EventKind, context_flags, tcp_state};

use crate::{
    context::{self, Create},
    emit::{config, new_event, now_ns, submit},
    kernel::{Btf, Memory, cookie_of, fill_from_sock, handshake_key, is_full_tcp, is_tcp},
};

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let old = ctx.arg::<i32>(1) as u8;
    let new = ctx.arg::<i32>(2) as u8;
    use tcp_state::*;
    // Only the transitions a rule needs touch the context, and the check costs no helper call:
    // this runs about ten times per connection. Listeners are not connections, and a socket
    // that reaches CLOSE from LAST_ACK or TIME_WAIT ended cleanly (its RST, if any, came from
    // a state before those).
    let wanted = match (old, new) {
        (_, LISTEN) | (LISTEN | LAST_ACK | TIME_WAIT | CLOSING, CLOSE) => false,
        (_, SYN_SENT | ESTABLISHED | CLOSE) | (LISTEN, SYN_RECV) | (ESTABLISHED, CLOSE_WAIT) => {
            true
        }
        _ => false,
    };
    // The tracepoint also fires for other protocols' sockets; only full sockets change state.
    if !wanted || sk.is_null() || !is_tcp::<Btf>(sk) {
        return 0;
    }
    let Some(context) = context::of_tcp_sock::<Btf>(sk, || cookie_of(sk), Create::Yes) else {
        return 0;
    };
    match (old, new) {
        (CLOSE, SYN_SENT) => {
            // connect() runs in the connecting task. A closed socket that connects again is
            // a new connection: nothing of the old one carries over.
            *context = keepalive_common::ConnContext::zeroed();
            context.born_ns = now_ns();
            context.flags = context_flags::CONNECTED | context_flags::FROM_HANDSHAKE;
            context::set_owner(context);
        }
        (LISTEN, SYN_RECV) => {
            // The accepted socket, cloned from its listener in softirq: no owner yet.
            context.flags = context_flags::ACCEPTED | context_flags::FROM_HANDSHAKE;
            if let Some(ttl) = context::take_handshake_ttl(&handshake_key::<Btf>(sk)) {
                context.peer_ttl = ttl;
            }
        }
        (_, ESTABLISHED) => context.established_ns = now_ns(),
        (ESTABLISHED, CLOSE_WAIT) => {
            context.flags |= context_flags::PEER_FIN_FIRST;
            context.peer_fin_ns = now_ns();
            if let Some(tcp) = Btf::full_tcp(sk) {
                // SAFETY: helper without arguments.
                let now = unsafe { bpf_jiffies64() } as u32;
                context.peer_fin_gap = now.wrapping_sub(Btf::read(tcp, config().offsets.lsndtime));
            }
        }
        (_, CLOSE) => context.state_before_close = old,
        _ => {}
    }
    0
}

/// Sends the error, unless an RST record of the same death went out already (the ECONNRESET
/// after an RST received, the ECONNREFUSED after the RST refusing a connect, the ETIMEDOUT
/// after a keepalive-timeout RST): the first record decided it. An error report without an
/// error (`tcp_disconnect` reports one) decides nothing.
#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: BtfTracePointContext) -> i32 {
    socket_error(ctx.arg(0))
}

/// The same on the function every TCP socket reports its errors through, for kernels without
/// the tracepoint (before 5.14). Its argument is as typed as the tracepoint's.
#[fentry(function = "sock_def_error_report")]
pub fn fentry_sock_def_error_report(ctx: FEntryContext) -> i32 {
    socket_error(ctx.arg(0))
}

#[inline(always)]
fn socket_error(sk: *const u8) -> i32 {
    if sk.is_null() || Btf::read::<i32>(sk, config().offsets.sk_err) == 0 || !is_full_tcp::<Btf>(sk)
    {
        return 0;
    }
    let cookie = cookie_of(sk);
    let context = context::of_tcp_sock::<Btf>(sk, || cookie, Create::Yes);
    if context
        .as_ref()
        .is_some_and(|c| c.flags & context_flags::DEATH_SENT != 0)
    {
        return 0;
    }
    let Some(mut event) = new_event(EventKind::SocketError) else {
        return 0;
    };
    fill_from_sock::<Btf>(&mut event, sk);
    event.cookie = cookie;
    context::attach_to(&mut event, context.as_deref());
    submit(event);
    0
}

#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    if !sk.is_null() {
        context::forget(cookie_of(sk));
    }
    0
}
