//! Reading kernel structs through the offsets the daemon found in BTF.

use aya_ebpf::helpers::{bpf_get_socket_cookie, bpf_probe_read_kernel, bpf_skc_to_tcp_sock};
use keepalive_common::{ConnContext, Event, HandshakeKey, context_flags, flags, tcp_state};

use crate::emit::config;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;

/// How a program reads kernel memory: [`Btf`] through pointers the verifier knows the type
/// of, [`Probe`] through any address.
pub trait Memory {
    /// A `T` at `base + offset`, or zero when it cannot be read.
    fn read<T: Copy + Default>(base: *const u8, offset: u32) -> T;

    /// `sk` as a full TCP socket: the pointer to read `tcp_sock` (and `inet_sock`,
    /// `inet_connection_sock`) fields through. `None` for anything else, and for time-wait and
    /// request sockets: mini sockets whose memory ends after `sock_common`.
    fn full_tcp(sk: *const u8) -> Option<*const u8>;
}

/// `bpf_probe_read_kernel`: for plain addresses (kprobe arguments, `container_of` results).
pub struct Probe;

impl Memory for Probe {
    #[inline(always)]
    fn read<T: Copy + Default>(base: *const u8, offset: u32) -> T {
        // SAFETY: bpf_probe_read_kernel validates the address; a fault yields an error.
        unsafe { bpf_probe_read_kernel(base.add(offset as usize).cast::<T>()).unwrap_or_default() }
    }

    #[inline(always)]
    fn full_tcp(sk: *const u8) -> Option<*const u8> {
        let o = &config().offsets;
        let state: u8 = Self::read(sk, o.skc_state);
        if state == tcp_state::TIME_WAIT || state == tcp_state::NEW_SYN_RECV {
            return None;
        }
        is_tcp::<Self>(sk).then_some(sk)
    }
}

/// Plain loads through a pointer argument the verifier knows the BTF type of (`tp_btf`): the
/// offsets, read from the frozen read-only CONFIG, are constants to the verifier, which checks
/// each load against the type and makes it fault-safe (a fault reads zero). A load costs about
/// a nanosecond where the helper call costs ~25 ns (`cargo xtask bench`). `tcp_sock` fields lie
/// past `struct sock`, so they are read through the pointer `bpf_skc_to_tcp_sock` returns.
pub struct Btf;

impl Memory for Btf {
    #[inline(always)]
    fn read<T: Copy + Default>(base: *const u8, offset: u32) -> T {
        // SAFETY: the verifier checks the load against the pointer's BTF type and turns it
        // into one that yields zero instead of faulting.
        unsafe { core::ptr::read_volatile(base.add(offset as usize).cast::<T>()) }
    }

    #[inline(always)]
    fn full_tcp(sk: *const u8) -> Option<*const u8> {
        // SAFETY: `sk` is a BTF-typed socket pointer; the helper checks that it is a full
        // TCP socket and returns NULL otherwise.
        let tcp = unsafe { bpf_skc_to_tcp_sock(sk as *mut _) } as *const u8;
        (!tcp.is_null()).then_some(tcp)
    }
}

/// Whether `sk` is a TCP socket (of any kind: full, request or time-wait), by a plain read:
/// cheaper than [`is_full_tcp`]'s helper call where only the protocol matters.
#[inline(always)]
pub fn is_tcp<M: Memory>(sk: *const u8) -> bool {
    M::read::<u16>(sk, config().offsets.sk_protocol) == IPPROTO_TCP
}

/// Whether the socket is a full TCP socket (see [`Memory::full_tcp`]).
#[inline(always)]
pub fn is_full_tcp<M: Memory>(sk: *const u8) -> bool {
    M::full_tcp(sk).is_some()
}

/// The socket cookie of a BTF-typed socket pointer: the stored one, else through the helper,
/// which assigns one when the socket has none yet (only the first hook to see a socket pays
/// for the helper call). Where tracing programs may not call the helper (before 5.12), a
/// socket without a cookie yet gets [`address_hash`]. Zero for NULL.
#[inline(always)]
pub fn cookie_of(sk: *const u8) -> u64 {
    // Arguments the kernel marks nullable (tcp_send_reset's sk) allow no pointer arithmetic
    // before this check.
    if sk.is_null() {
        return 0;
    }
    let stored: u64 = Btf::read(sk, config().offsets.skc_cookie);
    if stored != 0 {
        return stored;
    }
    // The flag is a constant of the frozen configuration: the verifier of a kernel without
    // the helper never walks the branch that calls it.
    if config().cookie_helper == 0 {
        return address_hash(sk);
    }
    // SAFETY: `sk` is a BTF-typed socket pointer passed by the hook; the helper accepts any
    // `sock_common`.
    unsafe { bpf_get_socket_cookie(sk as *mut _) }
}

/// A name for a socket that has no cookie: a keyed hash of its address, with the top bit set
/// so that it never meets a real cookie (a counter from 1), and the address never leaves the
/// kernel as it is. The verifier allows no arithmetic but addition on a pointer, so its value
/// is first copied out as a plain number.
#[inline(always)]
fn address_hash(sk: *const u8) -> u64 {
    let slot = sk;
    // SAFETY: reads the eight bytes of a local variable.
    let address: u64 =
        unsafe { bpf_probe_read_kernel(core::ptr::from_ref(&slot).cast::<u64>()) }.unwrap_or(0);
    // The finaliser of splitmix64: every bit of the address moves every bit of the name.
    let mut h = address ^ config().socket_hash_key;
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (h ^ (h >> 31)) | 1 << 63
}

/// The cookie as stored in the socket, for pointers the helper will not accept (computed
/// with container_of, or kprobe arguments). When no cookie was ever assigned: zero where
/// tracing programs assign cookies (they see every connection first), else, as
/// [`cookie_of`] does there, [`address_hash`].
#[inline(always)]
pub fn stored_cookie(sk: *const u8) -> u64 {
    let stored: u64 = Probe::read(sk, config().offsets.skc_cookie);
    if stored != 0 || config().cookie_helper != 0 {
        return stored;
    }
    address_hash(sk)
}

/// Fills addresses, ports, state, netns, error and the TCP fields from a socket.
#[inline(always)]
pub fn fill_from_sock<M: Memory>(event: &mut Event, sk: *const u8) {
    let o = &config().offsets;
    let family: u16 = M::read(sk, o.skc_family);
    event.family = family as u8;
    if family == AF_INET6 {
        event.local_addr = M::read(sk, o.skc_v6_rcv_saddr);
        event.remote_addr = M::read(sk, o.skc_v6_daddr);
    } else if family == AF_INET {
        let local: [u8; 4] = M::read(sk, o.skc_rcv_saddr);
        let remote: [u8; 4] = M::read(sk, o.skc_daddr);
        event.local_addr[..4].copy_from_slice(&local);
        event.remote_addr[..4].copy_from_slice(&remote);
    }
    event.remote_port = u16::from_be(M::read(sk, o.skc_dport));
    let state: u8 = M::read(sk, o.skc_state);
    event.old_state = state;
    event.new_state = state;
    let net: u64 = M::read(sk, o.skc_net);
    if net != 0 {
        event.netns = M::read(net as *const u8, o.net_ns_inum);
        event.netns_cookie = M::read(net as *const u8, o.net_cookie);
    }
    event.flags |= flags::HAS_SOCK;
    let Some(tcp) = M::full_tcp(sk) else {
        // Mini sockets only have skc_num.
        event.local_port = M::read(sk, o.skc_num);
        return;
    };
    // A full socket keeps its port in inet_sport after close unhashes it (skc_num reads 0
    // by then, e.g. when the RST of an abortive close is sent).
    event.local_port = u16::from_be(M::read(tcp, o.inet_sport));
    event.flags |= flags::HAS_TCP;
    event.sk_err = M::read(sk, o.sk_err);
    event.rcv_tstamp = M::read(tcp, o.rcv_tstamp);
    event.lsndtime = M::read(tcp, o.lsndtime);
    event.keepalive_time = M::read(tcp, o.keepalive_time);
    event.keepalive_intvl = M::read(tcp, o.keepalive_intvl);
    event.keepalive_probes = M::read(tcp, o.keepalive_probes);
    event.probes_out = M::read(tcp, o.icsk_probes_out);
    event.retransmits = M::read(tcp, o.icsk_retransmits);
    let sk_flags: u64 = M::read(sk, o.skc_flags);
    if sk_flags & (1 << (config().sock_keepopen_bit & 63)) != 0 {
        event.flags |= flags::KEEPALIVE_ON;
    }
}

/// For an RST this host sends on a socket: what tells the kind of close when the kernel
/// gives no reason, as [`flags`] bits (`LINGER_ZERO`, `PROBES_EXHAUSTED`) and the bytes not
/// read by the application. Zero for anything but a full TCP socket.
#[inline(always)]
pub fn reset_facts<M: Memory>(sk: *const u8) -> (u8, u32) {
    let Some(tcp) = M::full_tcp(sk) else {
        return (0, 0);
    };
    let cfg = config();
    let o = &cfg.offsets;
    let sk_flags: u64 = M::read(sk, o.skc_flags);
    let lingertime: u64 = M::read(sk, o.sk_lingertime);
    let rcv_nxt: u32 = M::read(tcp, o.rcv_nxt);
    let copied_seq: u32 = M::read(tcp, o.copied_seq);
    let probes_out: u8 = M::read(tcp, o.icsk_probes_out);
    let socket_count: u8 = M::read(tcp, o.keepalive_probes);
    let net: u64 = M::read(sk, o.skc_net);
    // A NULL `net` makes the read fault, which yields 0: no branch needed.
    let net_count: u8 = M::read(net as *const u8, o.net_keepalive_probes);
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

/// The network namespace cookie of a socket (`sk->__sk_common.skc_net->net_cookie`).
#[inline(always)]
pub fn netns_cookie<M: Memory>(sk: *const u8) -> u64 {
    let o = &config().offsets;
    let net: u64 = M::read(sk, o.skc_net);
    // A NULL `net` makes the read fault, which yields 0.
    M::read(net as *const u8, o.net_cookie)
}

/// The handshake-TTL key of a full socket: its addresses and namespace.
#[inline(always)]
pub fn handshake_key<M: Memory>(sk: *const u8) -> HandshakeKey {
    let o = &config().offsets;
    let mut key = HandshakeKey {
        netns_cookie: netns_cookie::<M>(sk),
        ..HandshakeKey::default()
    };
    let family: u16 = M::read(sk, o.skc_family);
    if family == AF_INET6 {
        key.local_addr = M::read(sk, o.skc_v6_rcv_saddr);
        key.remote_addr = M::read(sk, o.skc_v6_daddr);
    } else {
        let local: [u8; 4] = M::read(sk, o.skc_rcv_saddr);
        let remote: [u8; 4] = M::read(sk, o.skc_daddr);
        key.local_addr[..4].copy_from_slice(&local);
        key.remote_addr[..4].copy_from_slice(&remote);
    }
    key.local_port = M::read(sk, o.skc_num);
    key.remote_port = u16::from_be(M::read(sk, o.skc_dport));
    key
}

/// For a context created on first sight of a connection that was open before the observer
/// started: whether it was accepted or connected, told from the socket itself. An accepted
/// socket is a clone of its listener and keeps the listener's backlog; a connected one never
/// listened.
#[inline(always)]
pub fn mark_origin<M: Memory>(context: &mut ConnContext, sk: *const u8) {
    if context.flags & (context_flags::ACCEPTED | context_flags::CONNECTED) != 0 {
        return;
    }
    let backlog: u32 = M::read(sk, config().offsets.sk_max_ack_backlog);
    context.flags |= if backlog != 0 {
        context_flags::ACCEPTED
    } else {
        context_flags::CONNECTED
    };
}
