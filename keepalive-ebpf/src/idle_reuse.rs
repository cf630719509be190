//! Whether a connection survived an idle gap: a send after at least the idle floor without
//! receiving anything ([`EventKind::IdleSend`]), then the first successful receive on that
//! socket ([`EventKind::ReplyAfterIdle`]). Sends and receives below the floor cost a protocol
//! check, a jiffies comparison and, for receives, one hash lookup.

use aya_ebpf::{
    helpers::bpf_jiffies64, macros::btf_tracepoint, macros::map, maps::LruHashMap,
    programs::BtfTracePointContext,
};
use keepalive_common::{EventKind, tcp_state};

use crate::{
    emit::{config, new_event, submit},
    kernel::{cookie_of, fill_from_sock, is_full_tcp, read},
};

/// Cookies of sockets that sent after an idle gap and have not received since.
#[map(name = "AWAITING_REPLY")]
static AWAITING_REPLY: LruHashMap<u64, u32> = LruHashMap::with_max_entries(65536, 0);

#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let sent: i32 = ctx.arg(1);
    let cfg = config();
    if sent <= 0 || sk.is_null() || cfg.idle_floor_jiffies == 0 || !is_full_tcp(sk) {
        return 0;
    }
    if read::<u8>(sk, cfg.offsets.skc_state) != tcp_state::ESTABLISHED {
        return 0;
    }
    let rcv_tstamp: u32 = read(sk, cfg.offsets.rcv_tstamp);
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_jiffies64() } as u32;
    if now.wrapping_sub(rcv_tstamp) < cfg.idle_floor_jiffies {
        return 0;
    }
    let cookie = cookie_of(sk);
    if AWAITING_REPLY.insert(&cookie, &now, 0).is_err() {
        return 0;
    }
    let mut event = new_event(EventKind::IdleSend);
    fill_from_sock(&mut event, sk);
    event.cookie = cookie;
    event.bytes = sent;
    submit(&event);
    0
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let received: i32 = ctx.arg(1);
    if received <= 0 || sk.is_null() || !is_full_tcp(sk) {
        return 0;
    }
    let cookie = cookie_of(sk);
    // SAFETY: the value is copied out before the entry is removed.
    if unsafe { AWAITING_REPLY.get(&cookie) }.is_none() {
        return 0;
    }
    let _ = AWAITING_REPLY.remove(&cookie);
    let mut event = new_event(EventKind::ReplyAfterIdle);
    fill_from_sock(&mut event, sk);
    event.cookie = cookie;
    event.bytes = received;
    submit(&event);
    0
}
