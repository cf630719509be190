//! Whether a connection survived an idle gap. A send after at least the idle floor with no
//! segment received and no data sent is kept in the connection's context (nothing is sent);
//! the first successful receive after it sends [`EventKind::ReplyAfterIdle`] with the gap,
//! and a death before any answer carries the pending send in its own record.
//!
//! The send side hooks `tcp_sendmsg_locked`, which fires before anything is transmitted:
//! `sock_send_length` fires after the send returns, and on a fast path (loopback) the peer's
//! ACK has already refreshed `rcv_tstamp` by then, hiding the gap. The send hook also notes
//! the process using the socket as its owner. Kernels without these tracepoints (6.1 has
//! neither, 6.12 no `tcp_sendmsg_locked`) get the fentry and kprobe variants
//! (`idle_reuse_fentry`, `idle_reuse_kprobe`), which emit through the same functions.

use aya_ebpf::{helpers::bpf_jiffies64, macros::btf_tracepoint, programs::BtfTracePointContext};
use keepalive_common::{ConnContext, EventKind, tcp_state};

use crate::{
    context::{self, Create},
    emit::{config, new_event, now_ns, submit},
    kernel::{Btf, Memory, cookie_of, fill_from_sock, is_tcp},
};

/// Whether `sk` is an established socket about to send: read before any helper is called,
/// so that sends on other sockets cost one load.
#[inline(always)]
pub fn sends_established<M: Memory>(sk: *const u8) -> bool {
    !sk.is_null() && M::read::<u8>(sk, config().offsets.skc_state) == tcp_state::ESTABLISHED
}

/// Notes the sending process as the owner and keeps a send after an idle gap in `context`:
/// one after at least the idle floor with nothing received and nothing sent.
#[inline(always)]
pub fn send_after_idle<M: Memory>(sk: *const u8, context: &mut ConnContext) {
    context::set_owner(context);
    let cfg = config();
    if cfg.idle_floor_jiffies == 0 || context.idle_send_ns != 0 {
        return;
    }
    let Some(tcp) = M::full_tcp(sk) else {
        return;
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_jiffies64() } as u32;
    let rx_gap = now.wrapping_sub(M::read(tcp, cfg.offsets.rcv_tstamp));
    let tx_gap = now.wrapping_sub(M::read(tcp, cfg.offsets.lsndtime));
    if rx_gap < cfg.idle_floor_jiffies || tx_gap < cfg.idle_floor_jiffies {
        return;
    }
    context.idle_send_ns = now_ns();
    context.idle_send_gap = rx_gap.min(tx_gap);
}

/// Sends [`EventKind::ReplyAfterIdle`] when `context` holds an unanswered idle send, and
/// clears it. `received` is the bytes the application read, 0 when the hook saw the
/// answering segment arrive rather than read.
#[inline(always)]
pub fn reply_after_idle<M: Memory>(
    sk: *const u8,
    cookie: u64,
    received: i32,
    context: &mut ConnContext,
) {
    if context.idle_send_ns == 0 {
        return;
    }
    if let Some(mut event) = new_event(EventKind::ReplyAfterIdle) {
        fill_from_sock::<M>(&mut event, sk);
        event.cookie = cookie;
        event.bytes = received;
        context::attach_to(&mut event, Some(context));
        submit(event);
    }
    context.idle_send_ns = 0;
    context.idle_send_gap = 0;
}

#[btf_tracepoint(function = "tcp_sendmsg_locked")]
pub fn tcp_sendmsg_locked(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    if !sends_established::<Btf>(sk) {
        return 0;
    }
    // Created here for connections that were open before the observer started.
    if let Some(context) = context::of_tcp_sock::<Btf>(sk, || cookie_of(sk), Create::Yes) {
        send_after_idle::<Btf>(sk, context);
    }
    0
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let received: i32 = ctx.arg(1);
    // Every socket's receives pass here: only TCP ones with a context are looked at further.
    if received <= 0 || sk.is_null() || !is_tcp::<Btf>(sk) {
        return 0;
    }
    let cookie = cookie_of(sk);
    if let Some(context) = context::of_sock(sk, || cookie, Create::No) {
        reply_after_idle::<Btf>(sk, cookie, received, context);
    }
    0
}
