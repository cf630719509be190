//! kprobe variants of the reset hooks, for kernels that have kprobes but not fentry. Arguments
//! come from the registers of the calling convention, at the positions the kernel's BTF gives
//! (see `resets_fentry`). A kprobe gets plain addresses, which `bpf_get_socket_cookie` does
//! not take: the cookie is the one stored in the socket, assigned when the state-change hook
//! first saw it.

use core::ptr::read_volatile;

use aya_ebpf::{macros::kprobe, programs::ProbeContext};

use crate::{
    context::{self, Create},
    emit::config,
    kernel::{Probe, stored_cookie},
    resets::{NO_REASON, reset_received, reset_sent},
};

/// Register argument `n` (the reason is never past the third); [`NO_REASON`] for any other
/// position, [`NO_ARG`](keepalive_common::NO_ARG) included.
#[inline(always)]
fn arg_at(ctx: &ProbeContext, n: u32) -> u64 {
    // Each register is read at a constant offset, then chosen: a context read at a variable
    // offset would not pass the verifier. Going through volatile locals keeps the compiler
    // from turning the choice between two reads into one read at a chosen offset.
    let a1 = ctx.arg::<u64>(1).unwrap_or(NO_REASON);
    let a2 = ctx.arg::<u64>(2).unwrap_or(NO_REASON);
    // SAFETY: reads of initialised locals.
    let (a1, a2) = unsafe { (read_volatile(&a1), read_volatile(&a2)) };
    match n {
        1 => a1,
        2 => a2,
        _ => NO_REASON,
    }
}

/// The socket's stored cookie; 0 for no socket.
#[inline(always)]
fn cookie(sk: *const u8) -> u64 {
    if sk.is_null() { 0 } else { stored_cookie(sk) }
}

#[kprobe]
pub fn kprobe_tcp_reset(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<*const u8>(0) {
        let cookie = cookie(sk);
        let context = context::by_cookie(cookie, Create::No);
        reset_received::<Probe>(sk, cookie, context);
    }
    0
}

#[kprobe]
pub fn kprobe_tcp_send_active_reset(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<*const u8>(0) {
        let reason = arg_at(&ctx, config().active_reset_reason_arg);
        let cookie = cookie(sk);
        let context = context::by_cookie(cookie, Create::No);
        reset_sent::<Probe>(sk, core::ptr::null(), reason, cookie, context);
    }
    0
}

#[kprobe]
pub fn kprobe_tcp_v4_send_reset(ctx: ProbeContext) -> u32 {
    send_reset(&ctx);
    0
}

#[kprobe]
pub fn kprobe_tcp_v6_send_reset(ctx: ProbeContext) -> u32 {
    send_reset(&ctx);
    0
}

/// `tcp_v{4,6}_send_reset(sk, skb[, reason])`: an RST answering `skb`; sk is NULL when no
/// socket owns the segment.
#[inline(always)]
fn send_reset(ctx: &ProbeContext) {
    let (Some(sk), Some(skb)) = (ctx.arg::<*const u8>(0), ctx.arg::<*const u8>(1)) else {
        return;
    };
    if skb.is_null() {
        return;
    }
    let reason = arg_at(ctx, config().reply_reset_reason_arg);
    // A reply RST's socket (a listener, TIME_WAIT, a request socket) keeps no context.
    reset_sent::<Probe>(sk, skb, reason, cookie(sk), None);
}
