//! fentry on `tcp_keepalive_timer(struct timer_list *t)`: the keepalive timer without
//! filtering every timer expiry of the system.

use aya_ebpf::{macros::fentry, programs::FEntryContext};

use crate::keepalive_timer::keepalive_timer_fired;

#[fentry(function = "tcp_keepalive_timer")]
pub fn fentry_tcp_keepalive_timer(ctx: FEntryContext) -> i32 {
    keepalive_timer_fired(ctx.arg(0));
    0
}
