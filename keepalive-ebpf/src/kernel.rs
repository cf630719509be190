//! Reading kernel structs through the offsets the daemon found in BTF.

use aya_ebpf::helpers::{bpf_get_socket_cookie, bpf_probe_read_kernel};
use keepalive_common::{Event, flags, tcp_state};

use crate::emit::config;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;

/// Reads a `T` at `base + offset`, or zero when the read faults.
#[inline(always)]
pub fn read<T: Default>(base: *const u8, offset: u32) -> T {
    // SAFETY: bpf_probe_read_kernel validates the address; a fault yields an error, not a crash.
    unsafe { bpf_probe_read_kernel(base.add(offset as usize).cast::<T>()).unwrap_or_default() }
}

/// Whether the socket is TCP. Time-wait and request sockets are mini sockets whose memory
/// ends after `sock_common`: nothing past it may be read from them.
#[inline(always)]
pub fn is_full_tcp(sk: *const u8) -> bool {
    let o = &config().offsets;
    let state: u8 = read(sk, o.skc_state);
    if state == tcp_state::TIME_WAIT || state == tcp_state::NEW_SYN_RECV {
        return false;
    }
    read::<u16>(sk, o.sk_protocol) == IPPROTO_TCP
}

/// The socket cookie through the helper, which assigns one when the socket has none yet.
#[inline(always)]
pub fn cookie_of(sk: *const u8) -> u64 {
    // SAFETY: `sk` is a BTF-typed socket pointer passed by the tracepoint; the helper accepts
    // any `sock_common` and handles NULL.
    unsafe { bpf_get_socket_cookie(sk as *mut _) }
}

/// The cookie as stored in the socket, for pointers the helper will not accept (computed
/// with container_of). Zero when no cookie was ever assigned.
#[inline(always)]
pub fn stored_cookie(sk: *const u8) -> u64 {
    read(sk, config().offsets.skc_cookie)
}

/// Fills addresses, ports, state, netns, error and the TCP fields from a socket.
#[inline(always)]
pub fn fill_from_sock(event: &mut Event, sk: *const u8) {
    let o = &config().offsets;
    let family: u16 = read(sk, o.skc_family);
    event.family = family as u8;
    if family == AF_INET6 {
        event.local_addr = read(sk, o.skc_v6_rcv_saddr);
        event.remote_addr = read(sk, o.skc_v6_daddr);
    } else if family == AF_INET {
        let local: [u8; 4] = read(sk, o.skc_rcv_saddr);
        let remote: [u8; 4] = read(sk, o.skc_daddr);
        event.local_addr[..4].copy_from_slice(&local);
        event.remote_addr[..4].copy_from_slice(&remote);
    }
    event.remote_port = u16::from_be(read(sk, o.skc_dport));
    let state: u8 = read(sk, o.skc_state);
    // A full socket keeps its port in inet_sport after close unhashes it (skc_num reads 0
    // by then, e.g. when the RST of an abortive close is sent); mini sockets only have skc_num.
    event.local_port = if state == tcp_state::TIME_WAIT || state == tcp_state::NEW_SYN_RECV {
        read(sk, o.skc_num)
    } else {
        u16::from_be(read(sk, o.inet_sport))
    };
    event.old_state = state;
    event.new_state = state;
    let net: u64 = read(sk, o.skc_net);
    if net != 0 {
        event.netns = read(net as *const u8, o.net_ns_inum);
    }
    event.flags |= flags::HAS_SOCK;
    if !is_full_tcp(sk) {
        return;
    }
    event.flags |= flags::HAS_TCP;
    event.sk_err = read(sk, o.sk_err);
    event.rcv_tstamp = read(sk, o.rcv_tstamp);
    event.lsndtime = read(sk, o.lsndtime);
    event.keepalive_time = read(sk, o.keepalive_time);
    event.keepalive_intvl = read(sk, o.keepalive_intvl);
    event.keepalive_probes = read(sk, o.keepalive_probes);
    event.probes_out = read(sk, o.icsk_probes_out);
    event.retransmits = read(sk, o.icsk_retransmits);
    let sk_flags: u64 = read(sk, o.skc_flags);
    if sk_flags & (1 << (config().sock_keepopen_bit & 63)) != 0 {
        event.flags |= flags::KEEPALIVE_ON;
    }
}

/// For an RST this host sends on a socket: what tells the kind of close when the kernel
/// gives no reason, as [`flags`] bits (`LINGER_ZERO`, `PROBES_EXHAUSTED`) and the bytes not
/// read by the application. Zero for anything but a full TCP socket.
#[inline(always)]
pub fn reset_facts(sk: *const u8) -> (u8, u32) {
    if !is_full_tcp(sk) {
        return (0, 0);
    }
    let cfg = config();
    let o = &cfg.offsets;
    let sk_flags: u64 = read(sk, o.skc_flags);
    let lingertime: u64 = read(sk, o.sk_lingertime);
    let rcv_nxt: u32 = read(sk, o.rcv_nxt);
    let copied_seq: u32 = read(sk, o.copied_seq);
    let probes_out: u8 = read(sk, o.icsk_probes_out);
    let socket_count: u8 = read(sk, o.keepalive_probes);
    let net: u64 = read(sk, o.skc_net);
    // A NULL `net` makes the read fault, which yields 0: no branch needed.
    let net_count: u8 = read(net as *const u8, o.net_keepalive_probes);
    let count = if socket_count != 0 {
        socket_count
    } else {
        net_count
    };
    let keepalive_on = sk_flags & (1 << (cfg.sock_keepopen_bit & 63)) != 0;
    let mut bits = 0;
    if sk_flags & (1 << (cfg.sock_linger_bit & 63)) != 0 && lingertime == 0 {
        bits |= flags::LINGER_ZERO;
    }
    if keepalive_on && count != 0 && probes_out >= count {
        bits |= flags::PROBES_EXHAUSTED;
    }
    (bits, rcv_nxt.wrapping_sub(copied_seq))
}
