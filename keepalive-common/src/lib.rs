//! Records shared by the kernel programs and the daemon.
//!
//! Everything here is `#[repr(C)]` with explicit padding so that both sides agree on the layout
//! byte for byte. The kernel side only collects: it copies what the kernel knows at the moment of
//! a hook into an [`Event`], and all judgement happens in userspace.
#![no_std]

/// Name of the ring buffer map that carries [`Event`]s to userspace.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the per-CPU array of `u64` counters indexed by [`counter`]: what the programs counted
/// instead of sending.
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the socket-local storage map holding each connection's [`ConnContext`].
pub const CONTEXT_STORAGE_MAP: &str = "CONN_CONTEXT";
/// Name of the bounded hash map (socket cookie → [`ConnContext`]) used instead of socket storage
/// where the hooks cannot use it ([`ProbeConfig::context_in_map`]).
pub const CONTEXT_HASH_MAP: &str = "CONN_CONTEXT_BY_COOKIE";
/// Entries of [`CONTEXT_HASH_MAP`]: the most connections whose context the fallback keeps.
pub const CONTEXT_HASH_ENTRIES: u32 = 65_536;
/// Entries of the map holding the TTL of SYNs received by listeners until the accepted socket
/// takes it over (one handshake round trip).
pub const HANDSHAKE_TTL_ENTRIES: u32 = 16_384;
/// Name of the LPM trie of the IPv4 networks (`--remote`) whose connections are reported, when
/// [`filter::REMOTE`] is set; the key is the prefix length then the address, the value unused.
pub const FILTER_REMOTE_V4_MAP: &str = "FILTER_REMOTE_V4";
/// Name of the LPM trie of the IPv6 networks (`--remote`), as [`FILTER_REMOTE_V4_MAP`].
pub const FILTER_REMOTE_V6_MAP: &str = "FILTER_REMOTE_V6";
/// Name of the hash set of ports (`--port`, local or remote, host byte order) whose
/// connections are reported, when [`filter::PORT`] is set.
pub const FILTER_PORTS_MAP: &str = "FILTER_PORTS";
/// Name of the hash set of network namespace inodes (`--netns`) whose connections are
/// reported, when [`filter::NETNS`] is set.
pub const FILTER_NETNS_MAP: &str = "FILTER_NETNS";
/// Entries of each filter map: the most values a filter flag takes.
pub const FILTER_ENTRIES: u32 = 64;

/// Bits of [`ProbeConfig::filters`]: which filter maps a record must match to be sent. A
/// record that does not is discarded and counted ([`counter::FILTERED`]).
pub mod filter {
    /// The remote address is in [`FILTER_REMOTE_V4_MAP`](super::FILTER_REMOTE_V4_MAP) or
    /// [`FILTER_REMOTE_V6_MAP`](super::FILTER_REMOTE_V6_MAP).
    pub const REMOTE: u32 = 1 << 0;
    /// The local or the remote port is in [`FILTER_PORTS_MAP`](super::FILTER_PORTS_MAP).
    pub const PORT: u32 = 1 << 1;
    /// The network namespace is in [`FILTER_NETNS_MAP`](super::FILTER_NETNS_MAP).
    pub const NETNS: u32 = 1 << 2;
}

/// Version of the record layout ([`Event`] with its [`ConnContext`]); recordings carry it.
pub const RECORD_VERSION: u32 = 2;

/// Slots of [`COUNTERS_MAP`].
pub mod counter {
    /// Records the ring buffer had no room for.
    pub const LOST: u32 = 0;
    /// RSTs this host sent answering a SYN (a closed port, a port scan, a SYN flood) or a
    /// SYN-ACK it has no connecting socket for (a flood's backscatter): no connection died,
    /// so they are counted rather than sent.
    pub const SYN_REFUSALS: u32 = 1;
    /// Connections whose context could not be created (socket storage or the fallback map
    /// refused an entry): their records carry no context.
    pub const CONTEXT_FAILURES: u32 = 2;
    /// Records the filters (`--remote`, `--port`, `--netns`) kept from being sent.
    pub const FILTERED: u32 = 3;
    /// Number of slots.
    pub const SLOTS: u32 = 4;
}
/// Name of the global holding the [`ProbeConfig`].
pub const CONFIG_GLOBAL: &str = "CONFIG";
/// Size of the ring buffer in bytes (a power of two, a multiple of the page size).
///
/// 8 MiB: about 38 000 records, half a second of the heaviest reset storm this project's
/// 2-CPU machines make. Healthy connections send nothing, so it is empty in normal operation
/// and only absorbs bursts of deaths. The daemon maps it twice over (the kernel's wrap-around
/// mapping), and that mapping counts in its RSS: 16 MiB measured 39 MiB of RSS, 4 MiB 15 MiB
/// (`docs/benchmarks.md`).
pub const EVENTS_RING_BYTES: u32 = 1 << 23;

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
    /// The first receive after a send that followed an idle gap of at least the idle floor: the
    /// path survived the gap ([`ConnContext::idle_send_ns`] and
    /// [`ConnContext::idle_send_gap`] say which).
    ReplyAfterIdle = 7,
}

impl EventKind {
    /// Decodes the raw kind byte; `None` for a value this build does not know.
    pub const fn from_raw(raw: u8) -> Option<Self> {
        Some(match raw {
            1 => Self::ResetSent,
            2 => Self::ResetReceived,
            3 => Self::KeepaliveTimer,
            4 => Self::SocketError,
            7 => Self::ReplyAfterIdle,
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
    /// [`Event::context`](super::Event::context) holds the connection's context.
    pub const HAS_CONTEXT: u8 = 1 << 7;
}

/// Bits of [`ConnContext::flags`].
pub mod context_flags {
    /// Accepted from a listener (the remote is a client).
    pub const ACCEPTED: u8 = 1 << 0;
    /// Connected by this host (`connect()`).
    pub const CONNECTED: u8 = 1 << 1;
    /// The peer's FIN arrived while the connection was ESTABLISHED (it closed first).
    pub const PEER_FIN_FIRST: u8 = 1 << 2;
    /// The context was created at the handshake, not on first sight of a connection that
    /// existed before the observer started.
    pub const FROM_HANDSHAKE: u8 = 1 << 3;
    /// A record that decides the connection's death (an RST received, or this host's RST
    /// ending it) was sent: a later error report of the same death is not.
    pub const DEATH_SENT: u8 = 1 << 4;
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
    /// `net.net_cookie` of the network namespace: its identity, never reused (0 when unknown).
    pub netns_cookie: u64,
    /// `jiffies` when the event was taken (low 32 bits, as the kernel's own tcp timestamps).
    pub jiffies: u32,
    /// Inode number of the network namespace (what `/proc/PID/ns/net` shows; the kernel hands
    /// it to the next namespace at once), 0 when unknown.
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
    /// TCP flags of the segment an RST answers ([`EventKind::ResetSent`] with
    /// [`flags::FROM_SEGMENT`]).
    pub tcp_flags: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 3],
    /// Thread-group id of the task that was current (only meaningful in process context).
    pub pid: u32,
    /// Thread id of the task that was current.
    pub tid: u32,
    /// `comm` of the task that was current, NUL-padded.
    pub comm: [u8; 16],
    /// [`EventKind::ResetSent`] on a full TCP socket: bytes received but not read by the
    /// application (`rcv_nxt - copied_seq`, a received FIN counts as one). Zero in other
    /// events.
    pub unread: u32,
    /// What the kernel side kept about the connection, valid with [`flags::HAS_CONTEXT`].
    pub context: ConnContext,
}

/// Per-connection context, kept in socket-local storage (freed with the socket) and filled by
/// the hooks that know each fact, so that the one record deciding a verdict carries it all.
/// Times are `bpf_ktime_get_ns()`, 0 when unknown.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnContext {
    /// When the context was created: at connect() or the accepted socket's creation, or when
    /// a connection open before the observer started was first seen. A socket that connects
    /// again gets a new one, which tells its new connection from the old.
    pub born_ns: u64,
    /// When the connection reached ESTABLISHED.
    pub established_ns: u64,
    /// When this host sent after an idle gap of at least the idle floor and has had no
    /// answer yet; 0 when no such send is pending.
    pub idle_send_ns: u64,
    /// When the peer's FIN arrived ([`context_flags::PEER_FIN_FIRST`]).
    pub peer_fin_ns: u64,
    /// When the last RST segment arrived on the socket (its TTL is [`Self::rst_ttl`]).
    pub rst_ns: u64,
    /// cgroup v2 id of the owning process.
    pub owner_cgroup: u64,
    /// The idle gap before the pending idle send, jiffies (the shorter of the receive and
    /// send gaps: any packet refreshes a middlebox's timer).
    pub idle_send_gap: u32,
    /// Thread-group id of the process that last used the socket in process context.
    pub owner_pid: u32,
    /// Thread id of that process's thread.
    pub owner_tid: u32,
    /// `comm` of that thread, NUL-padded.
    pub owner_comm: [u8; 16],
    /// TTL / hop limit of the peer's SYN or SYN-ACK; 0 when not seen.
    pub peer_ttl: u8,
    /// TTL / hop limit of the last RST segment that arrived; 0 when none.
    pub rst_ttl: u8,
    /// TCP flags of that RST segment (RST alone, or RST|ACK).
    pub rst_flags: u8,
    /// [`context_flags`] bits.
    pub flags: u8,
    /// The TCP state the socket left when it became CLOSE; 0 while open.
    pub state_before_close: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 3],
    /// How long the connection had been idle when the peer's FIN came, jiffies since this
    /// host last sent data ([`context_flags::PEER_FIN_FIRST`]): the peer's idle timeout in a
    /// keep-alive race. The FIN's own ACK has already refreshed the receive time by then.
    pub peer_fin_gap: u32,
}

impl ConnContext {
    /// An empty context.
    pub const fn zeroed() -> Self {
        Self {
            born_ns: 0,
            established_ns: 0,
            idle_send_ns: 0,
            peer_fin_ns: 0,
            rst_ns: 0,
            owner_cgroup: 0,
            idle_send_gap: 0,
            owner_pid: 0,
            owner_tid: 0,
            owner_comm: [0; 16],
            peer_ttl: 0,
            rst_ttl: 0,
            rst_flags: 0,
            flags: 0,
            state_before_close: 0,
            _pad: [0; 3],
            peer_fin_gap: 0,
        }
    }
}

/// Key of the map that holds a listener's SYN TTL until the accepted socket takes it over: the
/// connection's addresses as seen from this host, in its network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandshakeKey {
    /// `net.net_cookie` of the namespace.
    pub netns_cookie: u64,
    /// Local address (IPv4 in the first four bytes).
    pub local_addr: [u8; 16],
    /// Remote address (IPv4 in the first four bytes).
    pub remote_addr: [u8; 16],
    /// Local port, host byte order.
    pub local_port: u16,
    /// Remote port, host byte order.
    pub remote_port: u16,
    /// Explicit padding, always zero.
    pub _pad: u32,
}

impl Event {
    /// An all-zero event of the given kind.
    pub const fn zeroed(kind: EventKind) -> Self {
        Self {
            ts_ns: 0,
            cookie: 0,
            netns_cookie: 0,
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
            tcp_flags: 0,
            _pad: [0; 3],
            pid: 0,
            tid: 0,
            comm: [0; 16],
            unread: 0,
            context: ConnContext::zeroed(),
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
    /// `net.net_cookie` (u64).
    pub net_cookie: u32,
    /// `sk_buff.dev` (pointer to `struct net_device`).
    pub skb_dev: u32,
    /// `net_device.nd_net` (`possible_net_t`: a pointer to `struct net`).
    pub dev_nd_net: u32,
    /// `sock.sk_max_ack_backlog` (u32): a listener's backlog, which an accepted socket
    /// inherits when it is cloned and a connected socket never has.
    pub sk_max_ack_backlog: u32,
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
    /// A send after at least this many jiffies without receiving is kept in the context as a
    /// pending idle send (reported by the reply to it, or by the death that follows).
    pub idle_floor_jiffies: u32,
    /// Bit number of `SOCK_LINGER` in `enum sock_flags`.
    pub sock_linger_bit: u32,
    /// Position of the `enum sk_rst_reason` argument of `tcp_send_active_reset`, or
    /// [`NO_ARG`]: it moved from kernel to kernel (none before 6.10).
    pub active_reset_reason_arg: u32,
    /// Position of the `enum sk_rst_reason` argument of `tcp_v4_send_reset` and
    /// `tcp_v6_send_reset`, or [`NO_ARG`].
    pub reply_reset_reason_arg: u32,
    /// Nonzero: keep connection context in [`CONTEXT_HASH_MAP`] rather than socket storage
    /// (kprobe hooks, or kernels whose tracing programs cannot use socket storage).
    pub context_in_map: u32,
    /// [`filter`] bits: which filter maps a record must match to be sent.
    pub filters: u32,
    /// Nonzero: tracing programs may call `bpf_get_socket_cookie` (kernel 5.12 on). Zero: a
    /// socket without a cookie yet is known by a keyed hash of its address
    /// ([`ProbeConfig::socket_hash_key`]) instead.
    pub cookie_helper: u32,
    /// Per-run random key of the hash that names a socket without a cookie, so that the
    /// identity never exposes the socket's kernel address.
    pub socket_hash_key: u64,
}

/// Name of the `iter/tcp` program that writes one [`SocketAudit`] per full TCP socket of the
/// network namespace its iterator is created in.
pub const SOCKET_AUDIT_PROGRAM: &str = "socket_audit";

/// Bits of [`SocketAudit::flags`].
pub mod audit_flags {
    /// `SO_KEEPALIVE` is on (`SOCK_KEEPOPEN`).
    pub const KEEPALIVE_ON: u8 = 1 << 0;
}

/// What the socket iterator reads of one TCP socket that inet_diag does not carry: its own
/// keepalive settings. Matched to inet_diag's record by the socket cookie, which inet_diag
/// assigns to every socket it reports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketAudit {
    /// The socket cookie as stored in the socket (0 when none was ever assigned).
    pub cookie: u64,
    /// `tcp_sock.keepalive_time` in jiffies (0: the namespace's `tcp_keepalive_time`).
    pub keepalive_time: u32,
    /// `tcp_sock.keepalive_intvl` in jiffies (0: the namespace's `tcp_keepalive_intvl`).
    pub keepalive_intvl: u32,
    /// `tcp_sock.keepalive_probes` (0: the namespace's `tcp_keepalive_probes`).
    pub keepalive_probes: u8,
    /// [`audit_flags`] bits.
    pub flags: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 6],
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
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnContext {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HandshakeKey {}
    // SAFETY: as above, `u32`/`u64` fields only, no implicit padding.
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: as above, with explicit padding.
    unsafe impl aya::Pod for super::SocketAudit {}
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
        assert_eq!(size_of::<ConnContext>(), 6 * 8 + 3 * 4 + 16 + 5 + 3 + 4);
        assert_eq!(size_of::<Event>(), 136 + size_of::<ConnContext>());
        assert_eq!(align_of::<Event>(), 8);
        assert_eq!(core::mem::offset_of!(Event, context), 136);
        assert_eq!(size_of::<SocketAudit>(), 8 + 4 + 4 + 1 + 1 + 6);
        assert_eq!(size_of::<HandshakeKey>(), 8 + 32 + 8);
        // An even number of u32 offsets keeps the u64 after them aligned without padding.
        assert_eq!(size_of::<KernelOffsets>(), 36 * 4);
        assert_eq!(size_of::<ProbeConfig>(), 36 * 4 + 8 + 8 * 4 + 8);
    }

    #[test]
    fn every_kind_round_trips() {
        for raw in 0..=u8::MAX {
            if let Some(kind) = EventKind::from_raw(raw) {
                assert_eq!(kind as u8, raw);
            }
        }
        assert_eq!(EventKind::from_raw(0), None);
        assert_eq!(EventKind::from_raw(7), Some(EventKind::ReplyAfterIdle));
        assert_eq!(
            EventKind::from_raw(5),
            None,
            "state changes no longer cross"
        );
    }
}
