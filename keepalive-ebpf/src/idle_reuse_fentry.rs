//! fentry variants of the idle hooks, for kernels without the `tcp_sendmsg_locked` and
//! `sock_recv_length` tracepoints. The send side hooks `tcp_sendmsg(sk, msg, size)`, entered
//! before the socket is locked and anything is transmitted (`tcp_sendmsg_locked` may be
//! inlined into it). The reply is the first segment `tcp_rcv_established(sk, skb)` takes
//! after the idle send that is not an RST, usually the peer's ACK of it: it proves the path
//! carried the send and its answer, without reading a return value whose position differs between kernels.
//! Arguments are BTF-typed, so the tracepoint's plain loads and socket storage serve here too.

use aya_ebpf::{macros::fentry, programs::FEntryContext};
use keepalive_common::tcp_flags;

use crate::{
    context::{self, Create},
    idle_reuse::{reply_after_idle, send_after_idle, sends_established},
    kernel::{Btf, cookie_of},
    resets::segment_flags,
};

/// Whether the segment after an idle send is an RST: a middlebox that forgot the flow
/// forges one, and `tcp_rcv_established` takes it too; it answers nothing.
#[inline(always)]
pub fn answer_is_reset(skb: *const u8) -> bool {
    skb.is_null() || segment_flags(skb) & tcp_flags::RST != 0
}

#[fentry(function = "tcp_sendmsg")]
pub fn fentry_tcp_sendmsg(ctx: FEntryContext) -> i32 {
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

#[fentry(function = "tcp_rcv_established")]
pub fn fentry_tcp_rcv_established(ctx: FEntryContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let skb: *const u8 = ctx.arg(1);
    if sk.is_null() {
        return 0;
    }
    // Every segment of every established connection passes here: the cookie is asked for
    // only when a context waits for it.
    if let Some(context) = context::of_sock(sk, || cookie_of(sk), Create::No)
        && context.idle_send_ns != 0
        && !answer_is_reset(skb)
    {
        reply_after_idle::<Btf>(sk, cookie_of(sk), 0, context);
    }
    0
}
