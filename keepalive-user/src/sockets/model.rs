//! What the audit knows about one connection, joined from inet_diag, the socket iterator,
//! the namespace's sysctls, the owning process and the destination's learned window.

use std::{net::SocketAddr, time::Duration};

/// One TCP socket as inet_diag reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    /// The socket cookie (what `bpf_get_socket_cookie` returns, and the daemon's key).
    pub cookie: u64,
    /// This host's end.
    pub local: SocketAddr,
    /// The peer's end.
    pub remote: SocketAddr,
    /// TCP state, numbered as the kernel does.
    pub state: u8,
    /// The socket's inode (0 once it has no file, e.g. an orphan after close).
    pub inode: u32,
    /// The socket's pending timer.
    pub timer: Option<Timer>,
    /// Since the last segment received (`tcp_info`; `None` without it).
    pub idle_rx: Option<Duration>,
    /// Since the last data sent.
    pub idle_tx: Option<Duration>,
    /// Retransmissions of the current unacknowledged segment.
    pub retransmits: u8,
    /// Keepalive or zero-window probes sent without an answer.
    pub probes: u8,
}

/// A socket's pending timer and when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// Retransmission, in this long.
    Retransmit(Duration),
    /// Keepalive, in this long.
    Keepalive(Duration),
    /// Zero-window probe, in this long.
    ZeroWindowProbe(Duration),
    /// Time-wait.
    TimeWait,
}

impl Timer {
    /// The timer's name in output.
    pub fn name(self) -> &'static str {
        match self {
            Self::Retransmit(_) => "retransmit",
            Self::Keepalive(_) => "keepalive",
            Self::ZeroWindowProbe(_) => "probe",
            Self::TimeWait => "timewait",
        }
    }

    /// When it fires, where the kernel says.
    pub fn fires_in(self) -> Option<Duration> {
        match self {
            Self::Retransmit(d) | Self::Keepalive(d) | Self::ZeroWindowProbe(d) => Some(d),
            Self::TimeWait => None,
        }
    }
}

/// A network namespace's `net.ipv4.tcp_keepalive_*` sysctls: what a socket uses where it
/// set nothing itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeepaliveSysctls {
    /// `tcp_keepalive_time`.
    pub idle: Duration,
    /// `tcp_keepalive_intvl`.
    pub interval: Duration,
    /// `tcp_keepalive_probes`.
    pub count: u8,
}

/// A socket's effective keepalive settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// `SO_KEEPALIVE` is on.
    pub on: bool,
    /// Idle time before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped.
    pub count: u8,
    /// The idle time is the socket's own (`TCP_KEEPIDLE`), not the namespace's sysctl.
    pub idle_from_socket: bool,
}

/// The process holding a socket open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Its process id.
    pub pid: u32,
    /// Its command name.
    pub comm: String,
}

/// Where a destination's window came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowSource {
    /// Learned by the daemon (its state file).
    Learned,
    /// Given on the command line (`--window`).
    Given,
}

/// The idle time after which the path to a destination is known, or assumed, to forget a
/// flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// The bound judged against: the longest idle gap seen to survive (learned), or the
    /// given timeout. An idle gap beyond it is not known to survive.
    pub bound: Duration,
    /// The shortest idle gap seen to end in a reset or a silent death (learned only).
    pub upper: Option<Duration>,
    /// Where it came from.
    pub source: WindowSource,
}

/// One connection, everything joined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// Inode of the network namespace it lives in.
    pub netns: u64,
    /// What inet_diag reported.
    pub diag: DiagSocket,
    /// Accepted from a listener of this host (the peer is a client), else connected.
    pub accepted: bool,
    /// The owning process, when one holds it open.
    pub owner: Option<Owner>,
    /// Its keepalive settings; `None` when the socket iterator did not see it (it opened
    /// after the iteration).
    pub keepalive: Option<Keepalive>,
    /// The destination's window: for a connected socket the remote's, for an accepted one
    /// the longest of the windows towards the peer's address.
    pub window: Option<Window>,
}

impl Connection {
    /// How long nothing crossed the connection: a middlebox refreshes its flow on a segment
    /// in either direction.
    pub fn idle(&self) -> Option<Duration> {
        match (self.diag.idle_rx, self.diag.idle_tx) {
            (Some(rx), Some(tx)) => Some(rx.min(tx)),
            (rx, tx) => rx.or(tx),
        }
    }
}

/// TCP state names as `ss` prints them.
pub fn state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTAB",
        2 => "SYN-SENT",
        3 => "SYN-RECV",
        4 => "FIN-WAIT-1",
        5 => "FIN-WAIT-2",
        6 => "TIME-WAIT",
        7 => "CLOSE",
        8 => "CLOSE-WAIT",
        9 => "LAST-ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "UNKNOWN",
    }
}
