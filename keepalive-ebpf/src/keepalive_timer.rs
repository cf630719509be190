//! The keepalive timer. There is no tracepoint in `tcp_keepalive_timer`, so this watches every
//! timer expiry and keeps only those whose callback is `tcp_keepalive_timer` (address from
//! /proc/kallsyms); the socket is `container_of(timer, struct sock, sk_timer)`. Kernels that
//! allow it hook the function itself (`keepalive_timer_fentry`, `keepalive_timer_kprobe`).

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use keepalive_common::EventKind;

use crate::{
    emit::{config, new_event, submit},
    kernel::{Btf, Memory, Probe, fill_from_sock, is_full_tcp, stored_cookie},
};

/// Emits [`EventKind::KeepaliveTimer`] for the socket that owns `timer` (its `sk_timer`).
#[inline(always)]
pub fn keepalive_timer_fired(timer: *const u8) {
    let sk = timer.wrapping_sub(config().offsets.sk_timer as usize);
    if timer.is_null() || !is_full_tcp::<Probe>(sk) {
        return;
    }
    let Some(mut event) = new_event(EventKind::KeepaliveTimer) else {
        return;
    };
    fill_from_sock::<Probe>(&mut event, sk);
    // The helper refuses a pointer computed by container_of; the stored cookie is the same
    // value once any other hook has seen the socket.
    event.cookie = stored_cookie(sk);
    submit(event);
}

#[btf_tracepoint(function = "timer_expire_entry")]
pub fn timer_expire_entry(ctx: BtfTracePointContext) -> i32 {
    let timer: *const u8 = ctx.arg(0);
    let cfg = config();
    if timer.is_null() || cfg.keepalive_timer_fn == 0 {
        return 0;
    }
    // Every timer in the system passes here: a plain load keeps the filter cheap.
    let function: u64 = Btf::read(timer, cfg.offsets.timer_function);
    if function != cfg.keepalive_timer_fn {
        return 0;
    }
    keepalive_timer_fired(timer);
    0
}
