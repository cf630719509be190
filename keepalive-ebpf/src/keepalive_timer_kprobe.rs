//! kprobe on `tcp_keepalive_timer(struct timer_list *t)`, for kernels without fentry.

use aya_ebpf::{macros::kprobe, programs::ProbeContext};

use crate::keepalive_timer::keepalive_timer_fired;

#[kprobe]
pub fn kprobe_tcp_keepalive_timer(ctx: ProbeContext) -> u32 {
    if let Some(timer) = ctx.arg::<*const u8>(0) {
        keepalive_timer_fired(timer);
    }
    0
}
