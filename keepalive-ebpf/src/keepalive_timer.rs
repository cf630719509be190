//! The keepalive timer. There is no tracepoint in `tcp_keepalive_timer`, so this watches every
//! timer expiry and keeps only those whose callback is `tcp_keepalive_timer` (address from
//! /proc/kallsyms); the socket is `container_of(timer, struct sock, sk_timer)`.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use keepalive_common::EventKind;

use crate::{
    emit::{config, new_event, submit},
    kernel::{fill_from_sock, is_full_tcp, read, stored_cookie},
};

#[btf_tracepoint(function = "timer_expire_entry")]
pub fn timer_expire_entry(ctx: BtfTracePointContext) -> i32 {
    let timer: *const u8 = ctx.arg(0);
    let cfg = config();
    if timer.is_null() || cfg.keepalive_timer_fn == 0 {
        return 0;
    }
    let function: u64 = read(timer, cfg.offsets.timer_function);
    if function != cfg.keepalive_timer_fn {
        return 0;
    }
    let sk = timer.wrapping_sub(cfg.offsets.sk_timer as usize);
    if !is_full_tcp(sk) {
        return 0;
    }
    let mut event = new_event(EventKind::KeepaliveTimer);
    fill_from_sock(&mut event, sk);
    // The helper refuses a pointer computed by container_of; the stored cookie is the same
    // value once any other hook has seen the socket.
    event.cookie = stored_cookie(sk);
    submit(&event);
    0
}
