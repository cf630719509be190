//! RSTs sent and received, and the tracepoint programs for them.
//!
//! `tcp_send_reset(sk, skb, reason)` fires for both ways this host sends an RST: on its own
//! socket (`tcp_send_active_reset`, skb NULL) and in reply to a segment (`tcp_v{4,6}_send_reset`,
//! skb set; sk NULL when no socket owns the segment). `tcp_receive_reset(sk)` fires in
//! `tcp_reset` when an RST arrives on a socket. The reason argument exists from 6.10; before
//! that the tracepoint is `tcp_send_reset(sk, skb)` and does not fire for NO_SOCKET replies.
//! The fentry and kprobe variants (`resets_fentry`, `resets_kprobe`) emit through the same
//! functions.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use keepalive_common::{ConnContext, EventKind, context_flags, counter, flags, tcp_flags};

use crate::{
    context::{self, Create},
    emit::{config, count, new_event, submit},
    kernel::{Btf, Memory, Probe, cookie_of, fill_from_sock, is_full_tcp, reset_facts},
};

/// Offset of the flags byte in the TCP header.
const TCP_FLAGS_BYTE: u32 = 13;
const ETH_IPV4: u8 = 4;
const ETH_IPV6: u8 = 6;

/// [`reset_sent`]'s reason when the hook has none. A plain value rather than an `Option`:
/// the payload of a `None` is undefined, and kept in a register across a call it is a read
/// of an uninitialised register to the verifier of older kernels (5.10 refuses it).
pub const NO_REASON: u64 = u64::MAX;

/// Emits [`EventKind::ResetSent`]. `sk` is NULL when no socket owns the segment being
/// answered, `skb` is NULL for an RST on the socket's own connection, `reason` is
/// [`NO_REASON`] when the hook has no reset reason. An RST answering a SYN ends no
/// connection: refusing a bare SYN (a closed port, a scan, a SYN flood) or a SYN-ACK for
/// which this host has no connecting socket (the backscatter of a flood spoofing this
/// host's address, or an answer after the connect was given up). It is counted, not sent:
/// strangers choose how many.
#[inline(always)]
pub fn reset_sent<M: Memory>(
    sk: *const u8,
    skb: *const u8,
    reason: u64,
    cookie: u64,
    context: Option<&mut ConnContext>,
) {
    if !skb.is_null() && answers_syn(skb) {
        count(counter::SYN_REFUSALS);
        return;
    }
    let Some(mut event) = new_event(EventKind::ResetSent) else {
        return;
    };
    let (facts, unread) = if sk.is_null() {
        (0, 0)
    } else {
        reset_facts::<M>(sk)
    };
    let (reason, no_reason) = if reason == NO_REASON {
        (0, flags::NO_REASON)
    } else {
        (reason as u32, 0)
    };
    event.reason = reason;
    event.flags = facts | no_reason;
    event.unread = unread;
    if !sk.is_null() {
        fill_from_sock::<M>(&mut event, sk);
        event.cookie = cookie;
        context::attach_to(&mut event, context.as_deref());
    }
    if !skb.is_null() {
        fill_from_segment(&mut event, skb);
    } else if let Some(context) = context {
        // This RST ends the socket's own connection.
        context.flags |= context_flags::DEATH_SENT;
    }
    submit(event);
}

/// Emits [`EventKind::ResetReceived`] for an RST that arrived on `sk`; the context holds
/// the RST segment's TTL and flags when the ingress program saw it.
#[inline(always)]
pub fn reset_received<M: Memory>(sk: *const u8, cookie: u64, context: Option<&mut ConnContext>) {
    if sk.is_null() {
        return;
    }
    let Some(mut event) = new_event(EventKind::ResetReceived) else {
        return;
    };
    fill_from_sock::<M>(&mut event, sk);
    event.cookie = cookie;
    context::attach_to(&mut event, context.as_deref());
    if let Some(context) = context {
        context.flags |= context_flags::DEATH_SENT;
    }
    submit(event);
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let skb: *const u8 = ctx.arg(1);
    let reason: u64 = ctx.arg(2);
    let cookie = cookie_of(sk);
    // An RST answering a segment comes from a socket that lives on (a listener, TIME_WAIT, an
    // open connection rejecting a segment): its context, if any, is only read.
    let create = if skb.is_null() {
        Create::Yes
    } else {
        Create::No
    };
    let context = if !sk.is_null() && is_full_tcp::<Btf>(sk) {
        context::of_tcp_sock::<Btf>(sk, || cookie, create)
    } else {
        None
    };
    reset_sent::<Btf>(sk, skb, reason, cookie, context);
    0
}

/// The tracepoint before 6.10: `tcp_send_reset(sk, skb)`, no reason. Only RSTs on the
/// socket's own connection are taken from it: it misses NO_SOCKET replies, so replies come
/// from `tcp_v{4,6}_send_reset` hooks or not at all.
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset_no_reason(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let skb: *const u8 = ctx.arg(1);
    if sk.is_null() || !skb.is_null() {
        return 0;
    }
    let cookie = cookie_of(sk);
    let context = context::of_tcp_sock::<Btf>(sk, || cookie, Create::Yes);
    reset_sent::<Btf>(sk, skb, NO_REASON, cookie, context);
    0
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let cookie = cookie_of(sk);
    let context = context::of_tcp_sock::<Btf>(sk, || cookie, Create::Yes);
    reset_received::<Btf>(sk, cookie, context);
    0
}

/// The TCP header of the segment `skb` holds; NULL when it has no head.
#[inline(always)]
fn tcp_header(skb: *const u8) -> *const u8 {
    let o = &config().offsets;
    let head: u64 = Probe::read(skb, o.skb_head);
    if head == 0 {
        return core::ptr::null();
    }
    let transport: u16 = Probe::read(skb, o.skb_transport_header);
    (head as *const u8).wrapping_add(transport as usize)
}

/// The TCP flags of the segment `skb` holds; 0 when it has no head.
#[inline(always)]
pub fn segment_flags(skb: *const u8) -> u8 {
    let tcp = tcp_header(skb);
    if tcp.is_null() {
        return 0;
    }
    Probe::read(tcp, TCP_FLAGS_BYTE)
}

/// Whether `skb` is a SYN or a SYN-ACK: a connection attempt or its answer, not a segment
/// of an established connection.
#[inline(always)]
fn answers_syn(skb: *const u8) -> bool {
    let segment = segment_flags(skb);
    segment & tcp_flags::SYN != 0 && segment & tcp_flags::RST == 0
}

/// Takes the addresses from the segment being answered: its source is the remote end. A
/// listener or a missing socket knows no remote address, so the segment's tuple wins.
#[inline(always)]
fn fill_from_segment(event: &mut keepalive_common::Event, skb: *const u8) {
    let o = &config().offsets;
    let head: u64 = Probe::read(skb, o.skb_head);
    if head == 0 {
        return;
    }
    let head = head as *const u8;
    let network: u16 = Probe::read(skb, o.skb_network_header);
    let ip = unsafe { head.add(network as usize) };
    let version = Probe::read::<u8>(ip, 0) >> 4;
    if version == ETH_IPV4 {
        let src: [u8; 4] = Probe::read(ip, 12);
        let dst: [u8; 4] = Probe::read(ip, 16);
        event.remote_addr = [0; 16];
        event.local_addr = [0; 16];
        event.remote_addr[..4].copy_from_slice(&src);
        event.local_addr[..4].copy_from_slice(&dst);
        event.family = 2;
    } else if version == ETH_IPV6 {
        event.remote_addr = Probe::read(ip, 8);
        event.local_addr = Probe::read(ip, 24);
        event.family = 10;
    } else {
        return;
    }
    let tcp = tcp_header(skb);
    event.remote_port = u16::from_be(Probe::read(tcp, 0));
    event.local_port = u16::from_be(Probe::read(tcp, 2));
    // The answered segment's flags tell a refused connection attempt (a bare SYN) from a
    // segment of a connection this host has forgotten.
    event.tcp_flags = Probe::read(tcp, TCP_FLAGS_BYTE);
    event.flags |= flags::FROM_SEGMENT;
    if event.netns_cookie == 0 {
        // No socket (NO_SOCKET): the namespace of the device the segment came in on.
        let dev: u64 = Probe::read(skb, o.skb_dev);
        let net: u64 = Probe::read(dev as *const u8, o.dev_nd_net);
        event.netns_cookie = Probe::read(net as *const u8, o.net_cookie);
        event.netns = Probe::read(net as *const u8, o.net_ns_inum);
    }
}
