//! Socket lifecycle and errors: `inet_sock_set_state(sk, old, new)` for every TCP state
//! transition, `inet_sk_error_report(sk)` when `sk_err` is reported (ECONNRESET, ETIMEDOUT,
//! ECONNREFUSED).

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use keepalive_common::EventKind;

use crate::{
    emit::{new_event, submit},
    kernel::{Btf, cookie_of, fill_from_sock, is_full_tcp},
};

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    if sk.is_null() || !is_full_tcp::<Btf>(sk) {
        return 0;
    }
    let Some(mut event) = new_event(EventKind::StateChange) else {
        return 0;
    };
    fill_from_sock::<Btf>(&mut event, sk);
    event.old_state = old as u8;
    event.new_state = new as u8;
    event.cookie = cookie_of(sk);
    submit(event);
    0
}

#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    if sk.is_null() || !is_full_tcp::<Btf>(sk) {
        return 0;
    }
    let Some(mut event) = new_event(EventKind::SocketError) else {
        return 0;
    };
    fill_from_sock::<Btf>(&mut event, sk);
    event.cookie = cookie_of(sk);
    submit(event);
    0
}
