//! Whether a connection survived an idle gap: a send after at least the idle floor with no
//! segment received and no data sent ([`EventKind::IdleSend`]), then the first successful
//! receive on that socket ([`EventKind::ReplyAfterIdle`]).
//!
//! The send side hooks `tcp_sendmsg_locked`, which fires before anything is transmitted:
//! `sock_send_length` fires after the send returns, and on a fast path (loopback) the peer's
//! ACK has already refreshed `rcv_tstamp` by then, hiding the gap. Sends and receives below
//! the floor cost a protocol check, a jiffies comparison and, for receives, one hash lookup.

use aya_ebpf::{
    helpers::bpf_jiffies64, macros::btf_tracepoint, macros::map, maps::LruHashMap,
    programs::BtfTracePointContext,
};
use keepalive_common::{EventKind, tcp_state};

use crate::{
    emit::{config, new_event, submit},
    kernel::{Btf, Memory, cookie_of, fill_from_sock},
};

/// Cookies of sockets that sent after an idle gap and have not received since.
#[map(name = "AWAITING_REPLY")]
static AWAITING_REPLY: LruHashMap<u64, u32> = LruHashMap::with_max_entries(65536, 0);

/// `BPF_NOEXIST`: fails when the key is present, so one idle send is reported once even when
/// `tcp_sendmsg_locked` fires for several buffers of the same message.
const BPF_NOEXIST: u64 = 1;
const IPPROTO_TCP: u16 = 6;

#[btf_tracepoint(function = "tcp_sendmsg_locked")]
pub fn tcp_sendmsg_locked(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let cfg = config();
    // An established socket is a full one: the state is read before the helper is called.
    if sk.is_null()
        || cfg.idle_floor_jiffies == 0
        || Btf::read::<u8>(sk, cfg.offsets.skc_state) != tcp_state::ESTABLISHED
    {
        return 0;
    }
    let Some(tcp) = Btf::full_tcp(sk) else {
        return 0;
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_jiffies64() } as u32;
    let rcv_tstamp: u32 = Btf::read(tcp, cfg.offsets.rcv_tstamp);
    let lsndtime: u32 = Btf::read(tcp, cfg.offsets.lsndtime);
    if now.wrapping_sub(rcv_tstamp) < cfg.idle_floor_jiffies
        || now.wrapping_sub(lsndtime) < cfg.idle_floor_jiffies
    {
        return 0;
    }
    let cookie = cookie_of(sk);
    if AWAITING_REPLY.insert(&cookie, &now, BPF_NOEXIST).is_err() {
        return 0;
    }
    let Some(mut event) = new_event(EventKind::IdleSend) else {
        return 0;
    };
    fill_from_sock::<Btf>(&mut event, sk);
    event.cookie = cookie;
    submit(event);
    0
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let received: i32 = ctx.arg(1);
    // Every socket's receives pass here: TCP ones go on to the lookup (only full sockets
    // receive data, and only sockets in AWAITING_REPLY are reported).
    if received <= 0
        || sk.is_null()
        || Btf::read::<u16>(sk, config().offsets.sk_protocol) != IPPROTO_TCP
    {
        return 0;
    }
    let cookie = cookie_of(sk);
    // SAFETY: the value is copied out before the entry is removed.
    if unsafe { AWAITING_REPLY.get(&cookie) }.is_none() {
        return 0;
    }
    let _ = AWAITING_REPLY.remove(&cookie);
    let Some(mut event) = new_event(EventKind::ReplyAfterIdle) else {
        return 0;
    };
    fill_from_sock::<Btf>(&mut event, sk);
    event.cookie = cookie;
    event.bytes = received;
    submit(event);
    0
}
