//! fentry variants of the reset hooks, for kernels whose tracepoints lack the reset reason or
//! miss NO_SOCKET replies (before 6.10), or when asked for. The position of the
//! `enum sk_rst_reason` argument comes from the kernel's BTF through the configuration
//! (`tcp_send_active_reset` is `(sk, gfp)` on 6.1, `(sk, reason)` on 6.12, `(sk, gfp, reason)`
//! on 6.18) and is read with `bpf_get_func_arg`, which takes the position at run time.

use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_get_func_arg, macros::fentry, programs::FEntryContext,
};
use keepalive_common::NO_ARG;

use crate::{
    context::{self, Create},
    emit::config,
    kernel::{Probe, cookie_of},
    resets::{NO_REASON, reset_received, reset_sent},
};

/// Argument `n` of the traced function; [`NO_REASON`] for [`NO_ARG`] or a position it does
/// not have. The helper exists from 5.17; `n` is a constant of the frozen configuration, so
/// the verifier of an older kernel (where it is always [`NO_ARG`]) never walks the call.
#[inline(always)]
fn arg_at(ctx: &FEntryContext, n: u32) -> u64 {
    if n == NO_ARG {
        return NO_REASON;
    }
    let mut value = 0u64;
    // SAFETY: the context is the program's own; the helper checks `n` against the function's
    // argument count and writes only `value`.
    let found = unsafe { bpf_get_func_arg(ctx.as_ptr(), n, &mut value) } == 0;
    if found { value } else { NO_REASON }
}

#[fentry(function = "tcp_reset")]
pub fn fentry_tcp_reset(ctx: FEntryContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let cookie = cookie_of(sk);
    let context = context::of_tcp_sock::<Probe>(sk, || cookie, Create::Yes);
    reset_received::<Probe>(sk, cookie, context);
    0
}

#[fentry(function = "tcp_send_active_reset")]
pub fn fentry_tcp_send_active_reset(ctx: FEntryContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let reason = arg_at(&ctx, config().active_reset_reason_arg);
    let cookie = cookie_of(sk);
    let context = context::of_tcp_sock::<Probe>(sk, || cookie, Create::Yes);
    reset_sent::<Probe>(sk, core::ptr::null(), reason, cookie, context);
    0
}

#[fentry(function = "tcp_v4_send_reset")]
pub fn fentry_tcp_v4_send_reset(ctx: FEntryContext) -> i32 {
    send_reset(&ctx);
    0
}

#[fentry(function = "tcp_v6_send_reset")]
pub fn fentry_tcp_v6_send_reset(ctx: FEntryContext) -> i32 {
    send_reset(&ctx);
    0
}

/// `tcp_v{4,6}_send_reset(sk, skb[, reason])`: an RST answering `skb`; sk is NULL when no
/// socket owns the segment.
#[inline(always)]
fn send_reset(ctx: &FEntryContext) {
    let sk: *const u8 = ctx.arg(0);
    let skb: *const u8 = ctx.arg(1);
    if skb.is_null() {
        return;
    }
    let reason = arg_at(ctx, config().reply_reset_reason_arg);
    let cookie = cookie_of(sk);
    // A reply RST's socket (a listener, TIME_WAIT, a request socket) keeps no context.
    reset_sent::<Probe>(sk, skb, reason, cookie, None);
}
