//! Whether a connection survived an idle gap. A send after at least the idle floor with no
//! segment received and no data sent is kept in the connection's context (nothing is sent);
//! the first successful receive after it sends [`EventKind::ReplyAfterIdle`] with the gap,
//! and a death before any answer carries the pending send in its own record.
//!
//! The send side hooks `tcp_sendmsg_locked`, which fires before anything is transmitted:
//! `sock_send_length` fires after the send returns, and on a fast path (loopback) the peer's
//! ACK has already refreshed `rcv_tstamp` by then, hiding the gap. The send hook also notes
//! the process using the socket as its owner.

use aya_ebpf::{helpers::bpf_jiffies64, macros::btf_tracepoint, programs::BtfTracePointContext};
use keepalive_common::{EventKind, tcp_state};

use crate::{
    context::{self, Create},
    emit::{config, new_event, now_ns, submit},
    kernel::{Btf, Memory, cookie_of, fill_from_sock, is_tcp},
};

#[btf_tracepoint(function = "tcp_sendmsg_locked")]
pub fn tcp_sendmsg_locked(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let cfg = config();
    // An established socket is a full one: the state is read before any helper is called.
    if sk.is_null() || Btf::read::<u8>(sk, cfg.offsets.skc_state) != tcp_state::ESTABLISHED {
        return 0;
    }
    let Some(tcp) = Btf::full_tcp(sk) else {
        return 0;
    };
    // Created here for connections that were open before the observer started.
    let Some(context) = context::of_tcp_sock::<Btf>(sk, || cookie_of(sk), Create::Yes) else {
        return 0;
    };
    context::set_owner(context);
    if cfg.idle_floor_jiffies == 0 || context.idle_send_ns != 0 {
        return 0;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_jiffies64() } as u32;
    let rx_gap = now.wrapping_sub(Btf::read(tcp, cfg.offsets.rcv_tstamp));
    let tx_gap = now.wrapping_sub(Btf::read(tcp, cfg.offsets.lsndtime));
    if rx_gap < cfg.idle_floor_jiffies || tx_gap < cfg.idle_floor_jiffies {
        return 0;
    }
    context.idle_send_ns = now_ns();
    context.idle_send_gap = rx_gap.min(tx_gap);
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
    let Some(context) = context::of_sock(sk, || cookie, Create::No) else {
        return 0;
    };
    if context.idle_send_ns == 0 {
        return 0;
    }
    if let Some(mut event) = new_event(EventKind::ReplyAfterIdle) {
        fill_from_sock::<Btf>(&mut event, sk);
        event.cookie = cookie;
        event.bytes = received;
        context::attach_to(&mut event, Some(context));
        submit(event);
    }
    context.idle_send_ns = 0;
    context.idle_send_gap = 0;
    0
}
