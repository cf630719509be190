//! kprobe variants of the idle hooks (see `idle_reuse_fentry`), for kernels without fentry.
//! A kprobe gets plain addresses, which socket storage does not take: these work only with
//! the context in the bounded map, found by the cookie stored in the socket.

use aya_ebpf::{macros::kprobe, programs::ProbeContext};

use crate::{
    context::{self, Create},
    idle_reuse::{reply_after_idle, send_after_idle, sends_established},
    idle_reuse_fentry::answer_is_reset,
    kernel::{Probe, mark_origin, stored_cookie},
};

#[kprobe]
pub fn kprobe_tcp_sendmsg(ctx: ProbeContext) -> u32 {
    let Some(sk) = ctx.arg::<*const u8>(0) else {
        return 0;
    };
    if !sends_established::<Probe>(sk) {
        return 0;
    }
    // A socket without a stored cookie has never been seen, and has no context to keep.
    if let Some(context) = context::by_cookie(stored_cookie(sk), Create::Yes) {
        mark_origin::<Probe>(context, sk);
        send_after_idle::<Probe>(sk, context);
    }
    0
}

#[kprobe]
pub fn kprobe_tcp_rcv_established(ctx: ProbeContext) -> u32 {
    let (Some(sk), Some(skb)) = (ctx.arg::<*const u8>(0), ctx.arg::<*const u8>(1)) else {
        return 0;
    };
    let cookie = stored_cookie(sk);
    let Some(context) = context::by_cookie(cookie, Create::No) else {
        return 0;
    };
    if context.idle_send_ns != 0 && !answer_is_reset(skb) {
        reply_after_idle::<Probe>(sk, cookie, 0, context);
    }
    0
}
