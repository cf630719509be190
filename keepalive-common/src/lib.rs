//! Records shared by the kernel programs and the daemon.
//!
//! Everything here is `#[repr(C)]` with explicit padding so that both sides agree on the layout
//! byte for byte. The kernel side only collects: it copies what the kernel knows at the moment of
//! a hook into an [`Event`], and all judgement happens in userspace.
#![no_std]

/// Name of the ring buffer map that carries [`Event`]s to userspace.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the per-CPU array (one `u64` slot) counting events the ring buffer had no room for.
pub const LOST_MAP: &str = "LOST_EVENTS";
/// Name of the global holding the [`ProbeConfig`].
pub const CONFIG_GLOBAL: &str = "CONFIG";
/// Size of the ring buffer in bytes (a power of two, a multiple of the page size).
pub const EVENTS_RING_BYTES: u32 = 1 << 22;

/// What happened. Stored as `u8` in [`Event::kind`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// This host sent an RST: on its own socket (`tcp_send_active_reset`) or in reply to a
    /// segment (`tcp_v{4,6}_send_reset`, possibly with no socket at all).
    ResetSent = 1,
    /// This host received an RST on a socket (`tcp_reset`).
    ResetReceived = 2,
    /// The keepalive timer of a socket fired (`tcp_keepalive_timer`).
    KeepaliveTimer = 3,
    /// An error was reported on a socket (`sk_err` set, e.g. ECONNRESET, ETIMEDOUT).
    SocketError = 4,
    /// A TCP state transition.
    StateChange = 5,
    /// A send on a connection that had received nothing for at least the idle floor.
    IdleSend = 6,
    /// The first successful receive after an [`EventKind::IdleSend`]: the path survived the gap.
    ReplyAfterIdle = 7,
    /// TTL / hop limit of an incoming SYN, SYN-ACK or RST segment.
    SegmentTtl = 8,
}

impl EventKind {
    /// Decodes the raw kind byte; `None` for a value this build does not know.
    pub const fn from_raw(raw: u8) -> Option<Self> {
        Some(match raw {
            1 => Self::ResetSent,
            2 => Self::ResetReceived,
            3 => Self::KeepaliveTimer,
            4 => Self::SocketError,
            5 => Self::StateChange,
            6 => Self::IdleSend,
            7 => Self::ReplyAfterIdle,
            8 => Self::SegmentTtl,
            _ => return None,
        })
    }
}

/// Bits of [`Event::flags`].
pub mod flags {
    /// The event was taken from a socket (`struct sock` fields are valid).
    pub const HAS_SOCK: u8 = 1 << 0;
    /// The socket is a full TCP socket (`tcp_sock` / `inet_connection_sock` fields are valid).
    pub const HAS_TCP: u8 = 1 << 1;
    /// `SO_KEEPALIVE` is on (`SOCK_KEEPOPEN`).
    pub const KEEPALIVE_ON: u8 = 1 << 2;
    /// The addresses come from a segment (`skb`) rather than a socket.
    pub const FROM_SEGMENT: u8 = 1 << 3;
    /// [`EventKind::ResetSent`](super::EventKind::ResetSent): the hook had no reset reason
    /// (kernels before 6.10); [`Event::reason`](super::Event::reason) means nothing.
    pub const NO_REASON: u8 = 1 << 4;
    /// [`EventKind::ResetSent`](super::EventKind::ResetSent): `SO_LINGER` was on with a zero
    /// linger time (`SOCK_LINGER` set, `sk_lingertime` 0).
    pub const LINGER_ZERO: u8 = 1 << 5;
    /// [`EventKind::ResetSent`](super::EventKind::ResetSent): keepalive was on and its probes
    /// were used up (`icsk_probes_out` at or above the socket's or the namespace's count).
    pub const PROBES_EXHAUSTED: u8 = 1 << 6;
}

/// [`ProbeConfig`] argument position meaning "the function has no such argument".
pub const NO_ARG: u32 = u32::MAX;

/// TCP flag bits as they appear in [`Event::tcp_flags`] (byte 13 of the TCP header).
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// One record in the ring buffer. Addresses are always seen from this host: `local_*` is this
/// host's end, `remote_*` the peer's, whichever way the segment travelled.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC in nanoseconds.
    pub ts_ns: u64,
    /// Socket cookie (`bpf_get_socket_cookie`), 0 when there is no socket.
    pub cookie: u64,
    /// `jiffies` when the event was taken (low 32 bits, as the kernel's own tcp timestamps).
    pub jiffies: u32,
    /// Inode number of the socket's network namespace, 0 when unknown.
    pub netns: u32,
    /// [`EventKind`] as `u8`.
    pub kind: u8,
    /// [`flags`] bits.
    pub flags: u8,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u8,
    /// TCP state before a transition; the current state for other events.
    pub old_state: u8,
    /// TCP state after a transition; the current state for other events.
    pub new_state: u8,
    /// `icsk_probes_out`: keepalive / zero-window probes sent without an answer.
    pub probes_out: u8,
    /// `icsk_retransmits`.
    pub retransmits: u8,
    /// `keepalive_probes` set on the socket (0: the namespace's `tcp_keepalive_probes`).
    pub keepalive_probes: u8,
    /// Local address (IPv4 in the first four bytes), network byte order.
    pub local_addr: [u8; 16],
    /// Remote address (IPv4 in the first four bytes), network byte order.
    pub remote_addr: [u8; 16],
    /// Local port, host byte order.
    pub local_port: u16,
    /// Remote port, host byte order.
    pub remote_port: u16,
    /// Raw `enum sk_rst_reason` for [`EventKind::ResetSent`]; its names are resolved from BTF.
    pub reason: u32,
    /// `sk_err` (positive errno), 0 when none.
    pub sk_err: i32,
    /// `tcp_sock.rcv_tstamp`: jiffies of the last segment received.
    pub rcv_tstamp: u32,
    /// `tcp_sock.lsndtime`: jiffies of the last data sent.
    pub lsndtime: u32,
    /// `tcp_sock.keepalive_time` in jiffies (0: the namespace's `tcp_keepalive_time`).
    pub keepalive_time: u32,
    /// `tcp_sock.keepalive_intvl` in jiffies (0: the namespace's `tcp_keepalive_intvl`).
    pub keepalive_intvl: u32,
    /// Bytes received ([`EventKind::ReplyAfterIdle`]).
    pub bytes: i32,
    /// IPv4 TTL or IPv6 hop limit of the segment ([`EventKind::SegmentTtl`]).
    pub ttl: u8,
    /// TCP flags of the segment ([`EventKind::SegmentTtl`]), or of the segment an RST answers
    /// ([`EventKind::ResetSent`] with [`flags::FROM_SEGMENT`]).
    pub tcp_flags: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 2],
    /// Thread-group id of the task that was current (only meaningful in process context).
    pub pid: u32,
    /// Thread id of the task that was current.
    pub tid: u32,
    /// `comm` of the task that was current, NUL-padded.
    pub comm: [u8; 16],
    /// [`EventKind::ResetSent`] on a full TCP socket: bytes received but not read by the
    /// application (`rcv_nxt - copied_seq`, a received FIN counts as one). Zero in other
    /// events and in records from builds before this field (it was zero padding then).
    pub unread: u32,
}

impl Event {
    /// An all-zero event of the given kind.
    pub const fn zeroed(kind: EventKind) -> Self {
        Self {
            ts_ns: 0,
            cookie: 0,
            jiffies: 0,
            netns: 0,
            kind: kind as u8,
            flags: 0,
            family: 0,
            old_state: 0,
            new_state: 0,
            probes_out: 0,
            retransmits: 0,
            keepalive_probes: 0,
            local_addr: [0; 16],
            remote_addr: [0; 16],
            local_port: 0,
            remote_port: 0,
            reason: 0,
            sk_err: 0,
            rcv_tstamp: 0,
            lsndtime: 0,
            keepalive_time: 0,
            keepalive_intvl: 0,
            bytes: 0,
            ttl: 0,
            tcp_flags: 0,
            _pad: [0; 2],
            pid: 0,
            tid: 0,
            comm: [0; 16],
            unread: 0,
        }
    }
}

/// Byte offsets of the kernel struct members the programs read, taken from the running
/// kernel's BTF at load time. Rust eBPF objects get no CO-RE relocations, so nothing here may
/// be computed for one kernel build and shipped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `sock.__sk_common.skc_family` (u16).
    pub skc_family: u32,
    /// `sock.__sk_common.skc_state` (u8).
    pub skc_state: u32,
    /// `sock.__sk_common.skc_daddr` (be32).
    pub skc_daddr: u32,
    /// `sock.__sk_common.skc_rcv_saddr` (be32).
    pub skc_rcv_saddr: u32,
    /// `sock.__sk_common.skc_dport` (be16).
    pub skc_dport: u32,
    /// `sock.__sk_common.skc_num` (u16, host order; zeroed when a closing socket is unhashed).
    pub skc_num: u32,
    /// `inet_sock.inet_sport` (be16; kept after close, unlike `skc_num`).
    pub inet_sport: u32,
    /// `sock.__sk_common.skc_v6_daddr` (16 bytes).
    pub skc_v6_daddr: u32,
    /// `sock.__sk_common.skc_v6_rcv_saddr` (16 bytes).
    pub skc_v6_rcv_saddr: u32,
    /// `sock.__sk_common.skc_net` (pointer to `struct net`).
    pub skc_net: u32,
    /// `sock.__sk_common.skc_flags` (unsigned long).
    pub skc_flags: u32,
    /// `sock.__sk_common.skc_cookie` (atomic64_t; 0 until a cookie is first asked for).
    pub skc_cookie: u32,
    /// `timer_list.function` (pointer).
    pub timer_function: u32,
    /// `net.ns.inum` (u32).
    pub net_ns_inum: u32,
    /// `sock.sk_protocol` (u16).
    pub sk_protocol: u32,
    /// `sock.sk_type` (u16).
    pub sk_type: u32,
    /// `sock.sk_err` (int).
    pub sk_err: u32,
    /// The socket's keepalive timer (`struct timer_list`: `sock.sk_timer`, or
    /// `inet_connection_sock.icsk_keepalive_timer` where that exists), for container_of.
    pub sk_timer: u32,
    /// `tcp_sock.rcv_tstamp` (u32 jiffies).
    pub rcv_tstamp: u32,
    /// `tcp_sock.lsndtime` (u32 jiffies).
    pub lsndtime: u32,
    /// `tcp_sock.keepalive_time` (u32 jiffies).
    pub keepalive_time: u32,
    /// `tcp_sock.keepalive_intvl` (u32 jiffies).
    pub keepalive_intvl: u32,
    /// `tcp_sock.keepalive_probes` (u8).
    pub keepalive_probes: u32,
    /// `inet_connection_sock.icsk_probes_out` (u8).
    pub icsk_probes_out: u32,
    /// `inet_connection_sock.icsk_retransmits` (u8).
    pub icsk_retransmits: u32,
    /// `sk_buff.head` (pointer).
    pub skb_head: u32,
    /// `sk_buff.network_header` (u16 offset from head).
    pub skb_network_header: u32,
    /// `sk_buff.transport_header` (u16 offset from head).
    pub skb_transport_header: u32,
    /// `sock.sk_lingertime` (unsigned long, jiffies).
    pub sk_lingertime: u32,
    /// `tcp_sock.rcv_nxt` (u32).
    pub rcv_nxt: u32,
    /// `tcp_sock.copied_seq` (u32).
    pub copied_seq: u32,
    /// `net.ipv4.sysctl_tcp_keepalive_probes` (u8): the namespace's keepalive count.
    pub net_keepalive_probes: u32,
}

/// Everything the programs need to know about the running kernel and the daemon's settings.
/// Set once as a read-only global before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Struct member offsets.
    pub offsets: KernelOffsets,
    /// Address of `tcp_keepalive_timer` (from /proc/kallsyms); 0 disables the timer hook.
    pub keepalive_timer_fn: u64,
    /// Bit number of `SOCK_KEEPOPEN` in `enum sock_flags`.
    pub sock_keepopen_bit: u32,
    /// A send after at least this many jiffies without receiving emits [`EventKind::IdleSend`].
    pub idle_floor_jiffies: u32,
    /// Bit number of `SOCK_LINGER` in `enum sock_flags`.
    pub sock_linger_bit: u32,
    /// Position of the `enum sk_rst_reason` argument of `tcp_send_active_reset`, or
    /// [`NO_ARG`]: it moved from kernel to kernel (none before 6.10).
    pub active_reset_reason_arg: u32,
    /// Position of the `enum sk_rst_reason` argument of `tcp_v4_send_reset` and
    /// `tcp_v6_send_reset`, or [`NO_ARG`].
    pub reply_reset_reason_arg: u32,
    /// Explicit tail padding to a multiple of 8 bytes, always zero.
    pub _pad: u32,
}

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`, stable ABI).
pub mod tcp_state {
    /// TCP_ESTABLISHED.
    pub const ESTABLISHED: u8 = 1;
    /// TCP_SYN_SENT.
    pub const SYN_SENT: u8 = 2;
    /// TCP_SYN_RECV.
    pub const SYN_RECV: u8 = 3;
    /// TCP_FIN_WAIT1.
    pub const FIN_WAIT1: u8 = 4;
    /// TCP_FIN_WAIT2.
    pub const FIN_WAIT2: u8 = 5;
    /// TCP_TIME_WAIT.
    pub const TIME_WAIT: u8 = 6;
    /// TCP_CLOSE.
    pub const CLOSE: u8 = 7;
    /// TCP_CLOSE_WAIT.
    pub const CLOSE_WAIT: u8 = 8;
    /// TCP_LAST_ACK.
    pub const LAST_ACK: u8 = 9;
    /// TCP_LISTEN.
    pub const LISTEN: u8 = 10;
    /// TCP_CLOSING.
    pub const CLOSING: u8 = 11;
    /// TCP_NEW_SYN_RECV.
    pub const NEW_SYN_RECV: u8 = 12;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers and byte arrays with explicit padding; every bit
    // pattern is valid.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: as above, `u32`/`u64` fields only, no implicit padding.
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: as above; `KernelOffsets` ends on an 8-byte boundary, so the `u64` after it
    // needs no padding.
    unsafe impl aya::Pod for super::ProbeConfig {}
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, size_of};

    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Event>(), 128);
        assert_eq!(align_of::<Event>(), 8);
        // An even number of u32 offsets keeps the u64 after them aligned without padding.
        assert_eq!(size_of::<KernelOffsets>(), 32 * 4);
        assert_eq!(size_of::<ProbeConfig>(), 32 * 4 + 8 + 6 * 4);
        assert_eq!(core::mem::offset_of!(Event, unread), 124);
    }

    #[test]
    fn every_kind_round_trips() {
        for raw in 0..=u8::MAX {
            if let Some(kind) = EventKind::from_raw(raw) {
                assert_eq!(kind as u8, raw);
            }
        }
        assert_eq!(EventKind::from_raw(0), None);
        assert_eq!(EventKind::from_raw(8), Some(EventKind::SegmentTtl));
    }
}
