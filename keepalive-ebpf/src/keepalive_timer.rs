//! The keepalive timer. There is no tracepoint in `tcp_keepalive_timer`, so this watches every
//! timer expiry and keeps only those whose callback is `tcp_keepalive_timer` (address from
//! /proc/kallsyms); the socket is `container_of(timer, struct sock, sk_timer)`. Kernels that
//! allow it hook the function itself (`keepalive_timer_fentry`, `keepalive_timer_kprobe`).
//!
//! A healthy keepalive connection's timer fires with no probe outstanding and sends nothing;
//! only a firing with an unanswered probe (`icsk_probes_out` above zero) is sent.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use keepalive_common::EventKind;

use crate::{
    context::{self, Create},
    emit::{config, new_event, submit},
    kernel::{Btf, Memory, Probe, fill_from_sock, stored_cookie},
};

/// Emits [`EventKind::KeepaliveTimer`] for the socket that owns `timer` (its `sk_timer`)
/// when a keepalive probe is outstanding.
#[inline(always)]
pub fn keepalive_timer_fired(timer: *const u8) {
    let cfg = config();
    let sk = timer.wrapping_sub(cfg.offsets.sk_timer as usize);
    if timer.is_null() {
        return;
    }
    let Some(tcp) = Probe::full_tcp(sk) else {
        return;
    };
    if Probe::read::<u8>(tcp, cfg.offsets.icsk_probes_out) == 0 {
        return;
    }
    let Some(mut event) = new_event(EventKind::KeepaliveTimer) else {
        return;
    };
    fill_from_sock::<Probe>(&mut event, sk);
    // The helper refuses a pointer computed by container_of; the stored cookie is the same
    // value once any other hook has seen the socket. Socket storage refuses the pointer too:
    // only the fallback map gives this record a context.
    let cookie = stored_cookie(sk);
    event.cookie = cookie;
    context::attach_to(
        &mut event,
        context::by_cookie(cookie, Create::No).as_deref(),
    );
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
