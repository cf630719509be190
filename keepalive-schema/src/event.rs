//! Decoded records: what the kernel programs saw, in the form the daemon prints, records and
//! replays (`"type":"event"` lines carry these fields).

use std::{
    fmt::{self, Write as _},
    net::SocketAddr,
};

use keepalive_common::{EventKind, tcp_state};
use serde::{Deserialize, Serialize};

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

impl Comm {
    /// Whether a byte of a command name is shown as itself: printable ASCII and the space,
    /// except what quotes or separates the outputs (`\`, `"`, `;`, `|`).
    fn shown_as_is(byte: u8) -> bool {
        (byte == b' ' || byte.is_ascii_graphic()) && !matches!(byte, b'\\' | b'"' | b';' | b'|')
    }
}

/// A command name is chosen by the process itself (`prctl(PR_SET_NAME)`, or its file name):
/// it is shown escaped everywhere, every other byte as `\xNN`, so that no process can start a
/// line, a field or a sentence of its own in the text, the journal or the evidence. The same
/// text is what JSON carries, and it parses back to the same bytes.
impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &byte in self.as_bytes() {
            if Self::shown_as_is(byte) {
                f.write_char(char::from(byte))?;
            } else {
                write!(f, "\\x{byte:02x}")?;
            }
        }
        Ok(())
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
    /// The escaped text back to the kernel's bytes (text written before names were escaped
    /// is taken as it is).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let mut raw = [0u8; 16];
        let mut len = 0;
        let mut rest = text.as_bytes();
        while len < 15 {
            let (byte, tail) = match rest {
                [b'\\', b'x', hi, lo, tail @ ..] => {
                    match (char::from(*hi).to_digit(16), char::from(*lo).to_digit(16)) {
                        (Some(hi), Some(lo)) => ((hi * 16 + lo) as u8, tail),
                        _ => (b'\\', &rest[1..]),
                    }
                }
                [byte, tail @ ..] => (*byte, tail),
                [] => break,
            };
            raw[len] = byte;
            len += 1;
            rest = tail;
        }
        Ok(Self(raw))
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
    /// How long the connection had been idle (since this host last sent data) when the peer's
    /// FIN came, milliseconds.
    #[serde(default)]
    pub peer_fin_idle_ms: Option<u64>,
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
