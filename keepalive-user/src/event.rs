//! Typed events: what the kernel programs saw, decoded from the raw ring-buffer records.
//!
//! Decoding is pure: it needs the kernel's `HZ` and the names of `enum sk_rst_reason`, both
//! passed in through [`DecodeContext`], so recorded streams decode the same way anywhere.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use keepalive_common::{
    ConnContext, Event as RawEvent, EventKind, context_flags, flags, tcp_state,
};
use serde::{Deserialize, Serialize};

/// Why a raw record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The record is shorter than [`RawEvent`].
    #[error("event record has {got} bytes, expected at least {expected}")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes in a [`RawEvent`].
        expected: usize,
    },
    /// The kind byte is not one this build knows.
    #[error("unknown event kind {0}")]
    UnknownKind(u8),
    /// The address family is neither AF_INET nor AF_INET6.
    #[error("unknown address family {0}")]
    UnknownFamily(u8),
}

/// What decoding needs to know about the kernel that produced the records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecodeContext {
    /// The kernel's `CONFIG_HZ`: jiffies per second.
    pub hz: u32,
    /// Names of `enum sk_rst_reason` by value, without the `SK_RST_REASON_` prefix.
    pub reset_reasons: BTreeMap<u32, String>,
}

/// Kind of a decoded event, as it appears in the output (`"event": "reset_sent"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TcpEventKind {
    /// This host sent an RST.
    ResetSent,
    /// This host received an RST.
    ResetReceived,
    /// A socket's keepalive timer fired.
    KeepaliveTimer,
    /// An error was reported on a socket.
    SocketError,
    /// The first receive after a send that followed an idle gap: the path survived the gap.
    ReplyAfterIdle,
}

impl TcpEventKind {
    /// The name used in JSON and journald.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ResetSent => "reset_sent",
            Self::ResetReceived => "reset_received",
            Self::KeepaliveTimer => "keepalive_timer",
            Self::SocketError => "socket_error",
            Self::ReplyAfterIdle => "reply_after_idle",
        }
    }
}

impl From<EventKind> for TcpEventKind {
    fn from(kind: EventKind) -> Self {
        match kind {
            EventKind::ResetSent => Self::ResetSent,
            EventKind::ResetReceived => Self::ResetReceived,
            EventKind::KeepaliveTimer => Self::KeepaliveTimer,
            EventKind::SocketError => Self::SocketError,
            EventKind::ReplyAfterIdle => Self::ReplyAfterIdle,
        }
    }
}

/// A TCP state, named as the kernel names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TcpState {
    /// TCP_ESTABLISHED.
    Established,
    /// TCP_SYN_SENT.
    SynSent,
    /// TCP_SYN_RECV.
    SynRecv,
    /// TCP_FIN_WAIT1.
    FinWait1,
    /// TCP_FIN_WAIT2.
    FinWait2,
    /// TCP_TIME_WAIT.
    TimeWait,
    /// TCP_CLOSE.
    Close,
    /// TCP_CLOSE_WAIT.
    CloseWait,
    /// TCP_LAST_ACK.
    LastAck,
    /// TCP_LISTEN.
    Listen,
    /// TCP_CLOSING.
    Closing,
    /// TCP_NEW_SYN_RECV.
    NewSynRecv,
    /// A value this build does not know (or no socket).
    Unknown,
}

impl TcpState {
    /// Maps the kernel's numbering (`include/net/tcp_states.h`).
    pub fn from_raw(raw: u8) -> Self {
        match raw {
            tcp_state::ESTABLISHED => Self::Established,
            tcp_state::SYN_SENT => Self::SynSent,
            tcp_state::SYN_RECV => Self::SynRecv,
            tcp_state::FIN_WAIT1 => Self::FinWait1,
            tcp_state::FIN_WAIT2 => Self::FinWait2,
            tcp_state::TIME_WAIT => Self::TimeWait,
            tcp_state::CLOSE => Self::Close,
            tcp_state::CLOSE_WAIT => Self::CloseWait,
            tcp_state::LAST_ACK => Self::LastAck,
            tcp_state::LISTEN => Self::Listen,
            tcp_state::CLOSING => Self::Closing,
            tcp_state::NEW_SYN_RECV => Self::NewSynRecv,
            _ => Self::Unknown,
        }
    }

    /// The kernel's name without the `TCP_` prefix.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Established => "ESTABLISHED",
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::FinWait1 => "FIN_WAIT1",
            Self::FinWait2 => "FIN_WAIT2",
            Self::TimeWait => "TIME_WAIT",
            Self::Close => "CLOSE",
            Self::CloseWait => "CLOSE_WAIT",
            Self::LastAck => "LAST_ACK",
            Self::Listen => "LISTEN",
            Self::Closing => "CLOSING",
            Self::NewSynRecv => "NEW_SYN_RECV",
            Self::Unknown => "UNKNOWN",
        }
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A kernel reset reason: its raw value and, when the kernel's BTF names it, its name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetReason {
    /// Raw `enum sk_rst_reason` value.
    pub raw: u32,
    /// Name without the `SK_RST_REASON_` prefix, e.g. `TCP_ABORT_ON_CLOSE`.
    pub name: Option<String>,
}

impl ResetReason {
    /// The name, or `reason_<n>` when the kernel did not name it.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("reason_{}", self.raw))
    }
}

/// Keepalive configuration and progress of a socket at the time of an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepaliveState {
    /// `SO_KEEPALIVE` is on.
    pub enabled: bool,
    /// `TCP_KEEPIDLE` in ms; `None` when the socket uses the namespace's sysctl.
    pub idle_ms: Option<u64>,
    /// `TCP_KEEPINTVL` in ms; `None` when the socket uses the namespace's sysctl.
    pub interval_ms: Option<u64>,
    /// `TCP_KEEPCNT`; `None` when the socket uses the namespace's sysctl.
    pub count: Option<u8>,
    /// Probes sent without an answer (`icsk_probes_out`).
    pub probes_out: u8,
}

/// What the socket showed when this host sent an RST ([`TcpEventKind::ResetSent`]): on
/// kernels that give no reset reason (before 6.10) these tell the kind of close.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetFacts {
    /// The RST answers a segment rather than ending the socket's own connection.
    pub answers_segment: bool,
    /// `SO_LINGER` was on with a zero linger time.
    pub linger_zero: bool,
    /// Bytes received but not read by the application (a received FIN counts as one).
    pub unread_bytes: u32,
    /// Keepalive was on and its probes were used up.
    pub probes_exhausted: bool,
}

/// The task that was running when the event was taken, when that task is the socket's user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Process id (kernel tgid).
    pub pid: u32,
    /// Thread id (kernel pid).
    pub tid: u32,
    /// Command name.
    pub comm: Comm,
}

/// A task's command name as the kernel keeps it: up to 15 bytes, NUL-padded. Kept as bytes so
/// that decoding a record allocates nothing for it; shown as text (invalid UTF-8 replaced).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Comm([u8; 16]);

impl Comm {
    /// The bytes before the first NUL.
    pub fn as_bytes(&self) -> &[u8] {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        &self.0[..end]
    }
}

impl From<[u8; 16]> for Comm {
    fn from(raw: [u8; 16]) -> Self {
        Self(raw)
    }
}

impl From<&str> for Comm {
    /// The first 15 bytes of `text`, as the kernel truncates a command name.
    fn from(text: &str) -> Self {
        let mut raw = [0u8; 16];
        let len = text.len().min(15);
        raw[..len].copy_from_slice(&text.as_bytes()[..len]);
        Self(raw)
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

impl Serialize for Comm {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Comm {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(Self::from(text.as_str()))
    }
}

/// How the connection came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Accepted from a listener on this host: the remote is a client.
    Accepted,
    /// Connected from this host.
    Connected,
}

/// A send after an idle gap that had not been answered when the record was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdleSend {
    /// CLOCK_MONOTONIC nanoseconds of the send.
    pub at_ns: u64,
    /// How long the flow had been idle before it, milliseconds.
    pub gap_ms: u64,
}

/// The last RST segment that arrived on the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RstSegment {
    /// CLOCK_MONOTONIC nanoseconds of its arrival.
    pub at_ns: u64,
    /// Its TTL / hop limit.
    pub ttl: u8,
    /// Its TCP flags (RST alone, or RST|ACK).
    pub flags: u8,
}

/// What the kernel side kept about the connection until this record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionContext {
    /// Accepted or connected, when known.
    pub origin: Option<Origin>,
    /// The context was created at the handshake; `false` for a connection first seen after
    /// the observer started (then the handshake TTL and the establishment are unknown).
    pub from_handshake: bool,
    /// CLOCK_MONOTONIC nanoseconds when the context was created (connect(), accept, or first
    /// sight): a socket that connects again gets a new one.
    pub born_ns: Option<u64>,
    /// CLOCK_MONOTONIC nanoseconds when it reached ESTABLISHED.
    pub established_ns: Option<u64>,
    /// The process that last used the socket in process context.
    pub owner: Option<Task>,
    /// cgroup v2 id of that process.
    pub owner_cgroup: Option<u64>,
    /// TTL / hop limit of the peer's SYN or SYN-ACK.
    pub peer_ttl: Option<u8>,
    /// The last RST segment that arrived.
    pub rst: Option<RstSegment>,
    /// CLOCK_MONOTONIC nanoseconds when the peer's FIN arrived on the ESTABLISHED connection.
    pub peer_fin_ns: Option<u64>,
    /// A send after an idle gap, not yet answered.
    pub idle_send: Option<IdleSend>,
    /// The state the socket left when it became CLOSE.
    pub state_before_close: Option<TcpState>,
}

/// One decoded event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpEvent {
    /// CLOCK_MONOTONIC nanoseconds when the event was taken.
    pub mono_ns: u64,
    /// What happened.
    pub kind: TcpEventKind,
    /// Socket cookie; 0 when there was no socket (an RST answering a segment nobody owns).
    pub cookie: u64,
    /// Network namespace inode (as `/proc/PID/ns/net` shows it); 0 when unknown.
    pub netns: u32,
    /// Network namespace cookie: its identity, never reused; 0 when unknown.
    pub netns_cookie: u64,
    /// This host's end.
    pub local: SocketAddr,
    /// The peer's end.
    pub remote: SocketAddr,
    /// State before a transition, or the current state.
    pub old_state: TcpState,
    /// State after a transition, or the current state.
    pub new_state: TcpState,
    /// Kernel reset reason ([`TcpEventKind::ResetSent`] only, when the kernel gives one).
    pub reason: Option<ResetReason>,
    /// The socket's state at an RST this host sent ([`TcpEventKind::ResetSent`] only).
    pub reset_facts: Option<ResetFacts>,
    /// `sk_err`, when set.
    pub sk_err: Option<i32>,
    /// Milliseconds since the last segment was received, for full TCP sockets.
    pub idle_rx_ms: Option<u64>,
    /// Milliseconds since data was last sent, for full TCP sockets.
    pub idle_tx_ms: Option<u64>,
    /// Keepalive settings, for full TCP sockets.
    pub keepalive: Option<KeepaliveState>,
    /// `icsk_retransmits`, for full TCP sockets.
    pub retransmits: Option<u8>,
    /// TCP flags of the segment an RST answers ([`TcpEventKind::ResetSent`] in reply).
    pub tcp_flags: Option<u8>,
    /// Bytes received ([`TcpEventKind::ReplyAfterIdle`]).
    pub bytes: Option<i32>,
    /// The task current at the event, when that task is the socket's user.
    pub task: Option<Task>,
    /// The connection's kernel-side context, when it had one.
    pub context: Option<ConnectionContext>,
}

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Reset reasons the kernel only uses from a system call on the socket (close, shutdown,
/// disconnect), so the current task is the socket's user.
const PROCESS_CONTEXT_REASONS: &[&str] = &[
    "TCP_ABORT_ON_CLOSE",
    "TCP_ABORT_ON_LINGER",
    "TCP_ABORT_ON_DATA",
    "TCP_DISCONNECT_WITH_DATA",
    "TCP_STATE",
];

impl DecodeContext {
    /// Decodes one ring-buffer record.
    pub fn decode(&self, bytes: &[u8]) -> Result<TcpEvent, DecodeError> {
        let raw = raw_event(bytes)?;
        let kind: TcpEventKind = EventKind::from_raw(raw.kind)
            .ok_or(DecodeError::UnknownKind(raw.kind))?
            .into();
        let (local, remote) = endpoints(&raw)?;
        let has_tcp = raw.flags & flags::HAS_TCP != 0;
        let reset_sent = kind == TcpEventKind::ResetSent;
        let reason = (reset_sent && raw.flags & flags::NO_REASON == 0).then(|| ResetReason {
            raw: raw.reason,
            name: self.reset_reasons.get(&raw.reason).cloned(),
        });
        let reset_facts = reset_sent.then_some(ResetFacts {
            answers_segment: raw.flags & flags::FROM_SEGMENT != 0,
            linger_zero: raw.flags & flags::LINGER_ZERO != 0,
            unread_bytes: if has_tcp { raw.unread } else { 0 },
            probes_exhausted: raw.flags & flags::PROBES_EXHAUSTED != 0,
        });
        let keepalive = has_tcp.then(|| KeepaliveState {
            enabled: raw.flags & flags::KEEPALIVE_ON != 0,
            idle_ms: self.nonzero_jiffies_ms(raw.keepalive_time),
            interval_ms: self.nonzero_jiffies_ms(raw.keepalive_intvl),
            count: (raw.keepalive_probes != 0).then_some(raw.keepalive_probes),
            probes_out: raw.probes_out,
        });
        let mut event = TcpEvent {
            mono_ns: raw.ts_ns,
            kind,
            cookie: raw.cookie,
            netns: raw.netns,
            netns_cookie: raw.netns_cookie,
            local,
            remote,
            old_state: TcpState::from_raw(raw.old_state),
            new_state: TcpState::from_raw(raw.new_state),
            reason,
            reset_facts,
            sk_err: (raw.sk_err != 0).then_some(raw.sk_err),
            idle_rx_ms: has_tcp.then(|| self.jiffies_ms(raw.jiffies.wrapping_sub(raw.rcv_tstamp))),
            idle_tx_ms: has_tcp.then(|| self.jiffies_ms(raw.jiffies.wrapping_sub(raw.lsndtime))),
            keepalive,
            retransmits: has_tcp.then_some(raw.retransmits),
            tcp_flags: (reset_sent && raw.flags & flags::FROM_SEGMENT != 0)
                .then_some(raw.tcp_flags),
            bytes: (kind == TcpEventKind::ReplyAfterIdle).then_some(raw.bytes),
            task: None,
            context: (raw.flags & flags::HAS_CONTEXT != 0).then(|| self.context(&raw.context)),
        };
        if runs_in_process_context(&event) && raw.pid != 0 {
            event.task = Some(Task {
                pid: raw.pid,
                tid: raw.tid,
                comm: raw.comm.into(),
            });
        }
        Ok(event)
    }

    fn context(&self, raw: &ConnContext) -> ConnectionContext {
        let time = |ns: u64| (ns != 0).then_some(ns);
        let origin = if raw.flags & context_flags::ACCEPTED != 0 {
            Some(Origin::Accepted)
        } else if raw.flags & context_flags::CONNECTED != 0 {
            Some(Origin::Connected)
        } else {
            None
        };
        ConnectionContext {
            origin,
            from_handshake: raw.flags & context_flags::FROM_HANDSHAKE != 0,
            born_ns: time(raw.born_ns),
            established_ns: time(raw.established_ns),
            owner: (raw.owner_pid != 0).then(|| Task {
                pid: raw.owner_pid,
                tid: raw.owner_tid,
                comm: raw.owner_comm.into(),
            }),
            owner_cgroup: (raw.owner_pid != 0 && raw.owner_cgroup != 0).then_some(raw.owner_cgroup),
            peer_ttl: (raw.peer_ttl != 0).then_some(raw.peer_ttl),
            rst: (raw.rst_ns != 0).then_some(RstSegment {
                at_ns: raw.rst_ns,
                ttl: raw.rst_ttl,
                flags: raw.rst_flags,
            }),
            peer_fin_ns: time(raw.peer_fin_ns)
                .filter(|_| raw.flags & context_flags::PEER_FIN_FIRST != 0),
            idle_send: time(raw.idle_send_ns).map(|at_ns| IdleSend {
                at_ns,
                gap_ms: self.jiffies_ms(raw.idle_send_gap),
            }),
            state_before_close: (raw.state_before_close != 0)
                .then(|| TcpState::from_raw(raw.state_before_close)),
        }
    }

    /// Converts a jiffies count to milliseconds with the kernel's HZ.
    pub fn jiffies_ms(&self, jiffies: u32) -> u64 {
        u64::from(jiffies) * 1000 / u64::from(self.hz.max(1))
    }

    fn nonzero_jiffies_ms(&self, jiffies: u32) -> Option<u64> {
        (jiffies != 0).then(|| self.jiffies_ms(jiffies))
    }
}

/// Copies the record out of the ring buffer's bytes.
pub fn raw_event(bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    let expected = size_of::<RawEvent>();
    if bytes.len() < expected {
        return Err(DecodeError::Truncated {
            got: bytes.len(),
            expected,
        });
    }
    // SAFETY: the length was checked above, `RawEvent` is plain old data for which every bit
    // pattern is valid, and `read_unaligned` makes no alignment assumption.
    Ok(unsafe { bytes.as_ptr().cast::<RawEvent>().read_unaligned() })
}

/// The raw record as bytes, the inverse of [`raw_event`] (used by recordings and tests).
pub fn raw_bytes(raw: &RawEvent) -> Vec<u8> {
    // SAFETY: `RawEvent` is `#[repr(C)]` with explicit padding fields, so all of its bytes are
    // initialised.
    unsafe {
        std::slice::from_raw_parts((raw as *const RawEvent).cast::<u8>(), size_of::<RawEvent>())
    }
    .to_vec()
}

fn endpoints(raw: &RawEvent) -> Result<(SocketAddr, SocketAddr), DecodeError> {
    let ip = |bytes: &[u8; 16]| -> Result<IpAddr, DecodeError> {
        match raw.family {
            AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(
                bytes[0], bytes[1], bytes[2], bytes[3],
            ))),
            AF_INET6 => Ok(IpAddr::V6(Ipv6Addr::from(*bytes)).to_canonical()),
            other => Err(DecodeError::UnknownFamily(other)),
        }
    };
    Ok((
        SocketAddr::new(ip(&raw.local_addr)?, raw.local_port),
        SocketAddr::new(ip(&raw.remote_addr)?, raw.remote_port),
    ))
}

/// Whether the task current at the event is the one using the socket. Timer and softirq
/// events run in whatever task the CPU happened to be running, so their pid/comm mean nothing.
fn runs_in_process_context(event: &TcpEvent) -> bool {
    match event.kind {
        TcpEventKind::ReplyAfterIdle => true,
        TcpEventKind::ResetSent if event.cookie == 0 => false,
        TcpEventKind::ResetSent => match &event.reason {
            Some(reason) => reason
                .name
                .as_deref()
                .is_some_and(|name| PROCESS_CONTEXT_REASONS.contains(&name)),
            // No reason (kernels before 6.10): a zero-linger close or a close with unread
            // data comes from the process; a used-up keepalive from the timer.
            None => event.reset_facts.is_some_and(|f| {
                !f.answers_segment && !f.probes_exhausted && (f.linger_zero || f.unread_bytes > 0)
            }),
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use keepalive_common::tcp_state::{CLOSE, ESTABLISHED};

    use super::*;
    use crate::correlate::{Confidence, Correlator, CorrelatorConfig, FindingKind};

    /// A kernel before 6.10: no reason names at all.
    fn old_kernel() -> DecodeContext {
        DecodeContext {
            hz: 250,
            reset_reasons: BTreeMap::new(),
        }
    }

    /// A raw RST sent on socket `cookie` by a hook without a reason, from pid 42.
    fn reasonless_reset(cookie: u64, extra_flags: u8, unread: u32) -> RawEvent {
        let mut raw = RawEvent::zeroed(EventKind::ResetSent);
        raw.cookie = cookie;
        raw.family = AF_INET;
        raw.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        raw.remote_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        raw.local_port = 40000;
        raw.remote_port = 8080;
        raw.old_state = CLOSE;
        raw.new_state = CLOSE;
        raw.flags = flags::HAS_SOCK | flags::HAS_TCP | flags::NO_REASON | extra_flags;
        raw.unread = unread;
        raw.pid = 42;
        raw.tid = 42;
        raw.comm[..6].copy_from_slice(b"client");
        raw
    }

    /// The finding kind the correlator gives a reasonless RST sent after ESTABLISHED → CLOSE.
    fn kind_of(raw: &RawEvent) -> FindingKind {
        let ctx = old_kernel();
        let mut raw = *raw;
        raw.flags |= flags::HAS_CONTEXT;
        raw.context.state_before_close = ESTABLISHED;
        let mut correlator = Correlator::new(CorrelatorConfig::default());
        let reset = ctx.decode(&raw_bytes(&raw)).unwrap();
        let findings = correlator.on_event(&reset);
        assert_eq!(findings.len(), 1, "{findings:?}");
        findings[0].kind
    }

    #[test]
    fn comm_is_bytes_shown_as_text() {
        let comm = Comm::from(*b"python3\0\0\0\0\0\0\0\0\0");
        assert_eq!(comm.as_bytes(), b"python3");
        assert_eq!(comm.to_string(), "python3");
        assert_eq!(serde_json::to_string(&comm).unwrap(), "\"python3\"");
        let long = Comm::from("a-very-long-command-name");
        assert_eq!(
            long.to_string(),
            "a-very-long-com",
            "15 bytes, as the kernel keeps it"
        );
        assert_eq!(
            serde_json::from_str::<Comm>("\"java\"").unwrap(),
            Comm::from("java")
        );
        let full = Comm::from([b'x'; 16]);
        assert_eq!(full.as_bytes().len(), 16);
        assert_eq!(
            Comm::from([0xff; 16]).to_string().chars().next(),
            Some('\u{fffd}')
        );
    }

    #[test]
    fn the_context_decodes_with_the_kernels_hz() {
        let mut raw = reasonless_reset(11, 0, 0);
        raw.flags |= flags::HAS_CONTEXT;
        raw.context = ConnContext {
            established_ns: 5,
            idle_send_ns: 9,
            idle_send_gap: 500,
            owner_pid: 77,
            owner_tid: 78,
            peer_ttl: 63,
            rst_ttl: 64,
            rst_flags: keepalive_common::tcp_flags::RST,
            rst_ns: 10,
            flags: context_flags::ACCEPTED | context_flags::FROM_HANDSHAKE,
            state_before_close: ESTABLISHED,
            ..ConnContext::zeroed()
        };
        raw.context.owner_comm[..4].copy_from_slice(b"java");
        let context = old_kernel()
            .decode(&raw_bytes(&raw))
            .unwrap()
            .context
            .expect("context");
        assert_eq!(context.origin, Some(Origin::Accepted));
        assert!(context.from_handshake);
        assert_eq!(context.established_ns, Some(5));
        assert_eq!(
            context.idle_send,
            Some(IdleSend {
                at_ns: 9,
                gap_ms: 2000
            })
        );
        assert_eq!(
            context.owner.map(|o| (o.pid, o.comm.to_string())),
            Some((77, "java".into()))
        );
        assert_eq!(context.peer_ttl, Some(63));
        assert_eq!(context.rst.map(|r| (r.ttl, r.at_ns)), Some((64, 10)));
        assert_eq!(context.peer_fin_ns, None);
        assert_eq!(context.state_before_close, Some(TcpState::Established));
        let without = old_kernel()
            .decode(&raw_bytes(&reasonless_reset(12, 0, 0)))
            .unwrap();
        assert_eq!(without.context, None, "no HAS_CONTEXT flag, no context");
    }

    #[test]
    fn a_reset_without_reason_carries_the_socket_state() {
        let raw = reasonless_reset(7, flags::LINGER_ZERO, 0);
        let event = old_kernel().decode(&raw_bytes(&raw)).unwrap();
        assert_eq!(event.reason, None);
        let facts = event.reset_facts.unwrap();
        assert!(facts.linger_zero && !facts.answers_segment && !facts.probes_exhausted);
        assert_eq!(event.task.as_ref().map(|t| t.pid), Some(42));
        // With a reason flag unset the reason is decoded as before, named or not.
        let mut named = raw;
        named.flags &= !flags::NO_REASON;
        let event = old_kernel().decode(&raw_bytes(&named)).unwrap();
        assert_eq!(event.reason.map(|r| r.label()), Some("reason_0".to_owned()));
    }

    #[test]
    fn socket_state_gives_the_kinds_the_reasons_give() {
        assert_eq!(
            kind_of(&reasonless_reset(1, flags::LINGER_ZERO, 0)),
            FindingKind::LingerZero
        );
        assert_eq!(
            kind_of(&reasonless_reset(2, flags::LINGER_ZERO, 1)),
            FindingKind::LingerZero,
            "a lone unread FIN does not make a linger-0 close an abort on close"
        );
        assert_eq!(
            kind_of(&reasonless_reset(3, 0, 14)),
            FindingKind::AbortOnClose
        );
        assert_eq!(
            kind_of(&reasonless_reset(4, flags::LINGER_ZERO, 14)),
            FindingKind::AbortOnClose
        );
        let exhausted = flags::KEEPALIVE_ON | flags::PROBES_EXHAUSTED;
        let mut keepalive = reasonless_reset(5, exhausted, 0);
        keepalive.probes_out = 2;
        keepalive.keepalive_probes = 2;
        assert_eq!(kind_of(&keepalive), FindingKind::SilentTimeout);
        let event = old_kernel().decode(&raw_bytes(&keepalive)).unwrap();
        assert_eq!(event.task, None, "the keepalive timer runs in no process");
        assert_eq!(kind_of(&reasonless_reset(6, 0, 0)), FindingKind::LocalAbort);
    }

    #[test]
    fn a_reasonless_reset_answering_a_segment_ends_nothing() {
        let mut raw = reasonless_reset(9, flags::FROM_SEGMENT, 0);
        raw.old_state = ESTABLISHED;
        raw.new_state = ESTABLISHED;
        let event = old_kernel().decode(&raw_bytes(&raw)).unwrap();
        assert_eq!(event.task, None);
        let findings = Correlator::new(CorrelatorConfig::default()).on_event(&event);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].kind, FindingKind::BadState);
    }

    #[test]
    fn a_reasonless_reset_seen_without_a_socket_is_a_confirmed_no_socket() {
        let mut raw = reasonless_reset(0, flags::FROM_SEGMENT, 0);
        raw.flags = flags::FROM_SEGMENT | flags::NO_REASON;
        let event = old_kernel().decode(&raw_bytes(&raw)).unwrap();
        let findings = Correlator::new(CorrelatorConfig::default()).on_event(&event);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].kind, FindingKind::NoSocket);
        assert_eq!(findings[0].confidence, Confidence::Confirmed);
    }
}
