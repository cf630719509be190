//! The correlator's rules, from constructed streams in the order the kernel runs its hooks.
//!
//! The kernel side sends only deciding records, each with the connection's context; the
//! hooks in between (state changes, segments, idle sends) only fill that context. The streams
//! here say what happened hook by hook, as before, and [`Kernel`] plays the kernel side's
//! part: it keeps each socket's context as `keepalive-ebpf` does and attaches it to the
//! records that cross, which are all the correlator sees.

use std::{collections::HashMap, net::SocketAddr};

use keepalive_common::tcp_flags::{ACK, RST, SYN};
use keepalive_observer::{
    correlate::{
        Action, Confidence, Correlator, CorrelatorConfig, Fact, Finding, FindingKind,
        KeepaliveSummary, KeepaliveSysctls, MissingFact, SysctlError, Verdict, Window,
    },
    event::{
        ConnectionContext, IdleSend, KeepaliveState, Origin, ResetFacts, ResetReason, RstSegment,
        Task, TcpEvent, TcpEventKind, TcpState,
    },
};

const NETNS: u32 = 4_026_531_840;
const NETNS_COOKIE: u64 = 1;
const MS: u64 = 1_000_000;
const LOCAL: &str = "198.51.100.10:40000";
const REMOTE: &str = "198.51.100.130:8080";
const APP_PID: u32 = 4242;

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test address")
}

/// What a hook saw: a record that crosses the ring buffer, or a hook that only fills the
/// connection's context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum K {
    ResetSent,
    ResetReceived,
    KeepaliveTimer,
    SocketError,
    ReplyAfterIdle,
    /// `inet_sock_set_state`.
    StateChange,
    /// The cgroup_skb program seeing a SYN, SYN-ACK or RST.
    SegmentTtl,
    /// `tcp_sendmsg_locked` after an idle gap.
    IdleSend,
    /// A hook's first sight of a connection open before the observer started: the context
    /// is created with the origin read from the socket.
    FirstSight,
}

impl K {
    fn record(self) -> Option<TcpEventKind> {
        Some(match self {
            Self::ResetSent => TcpEventKind::ResetSent,
            Self::ResetReceived => TcpEventKind::ResetReceived,
            Self::KeepaliveTimer => TcpEventKind::KeepaliveTimer,
            Self::SocketError => TcpEventKind::SocketError,
            Self::ReplyAfterIdle => TcpEventKind::ReplyAfterIdle,
            Self::StateChange | Self::SegmentTtl | Self::IdleSend | Self::FirstSight => {
                return None;
            }
        })
    }
}

/// Builds one hook firing: a full TCP socket in ESTABLISHED with keepalive off, unless told
/// otherwise.
#[derive(Clone)]
struct B(TcpEvent, K, Option<u8>);

fn ev(kind: K, cookie: u64, at_ms: u64) -> B {
    let record = kind.record().unwrap_or(TcpEventKind::KeepaliveTimer);
    B(
        TcpEvent {
            mono_ns: at_ms * MS,
            kind: record,
            cookie,
            netns: NETNS,
            netns_cookie: NETNS_COOKIE,
            local: addr(LOCAL),
            remote: addr(REMOTE),
            old_state: TcpState::Established,
            new_state: TcpState::Established,
            reason: None,
            reset_facts: None,
            sk_err: None,
            idle_rx_ms: Some(0),
            idle_tx_ms: Some(0),
            keepalive: Some(KeepaliveState {
                enabled: false,
                idle_ms: None,
                interval_ms: None,
                count: None,
                probes_out: 0,
            }),
            retransmits: Some(0),
            tcp_flags: None,
            bytes: None,
            task: None,
            context: None,
        },
        kind,
        None,
    )
}

impl B {
    fn states(mut self, old: TcpState, new: TcpState) -> Self {
        self.0.old_state = old;
        self.0.new_state = new;
        self
    }

    fn state(self, state: TcpState) -> Self {
        self.states(state, state)
    }

    fn reason(mut self, name: &str) -> Self {
        self.0.reason = Some(ResetReason {
            raw: 99,
            name: Some(name.to_owned()),
        });
        self
    }

    fn task(mut self, pid: u32, comm: &str) -> Self {
        self.0.task = Some(Task {
            pid,
            tid: pid,
            comm: comm.into(),
        });
        self
    }

    fn app(self) -> Self {
        self.task(APP_PID, "app")
    }

    fn idle(mut self, ms: u64) -> Self {
        self.0.idle_rx_ms = Some(ms);
        self.0.idle_tx_ms = Some(ms);
        self
    }

    fn err(mut self, errno: i32) -> Self {
        self.0.sk_err = Some(errno);
        self
    }

    fn keepalive(mut self, idle_s: u64, intvl_s: u64, count: u8, probes_out: u8) -> Self {
        self.0.keepalive = Some(KeepaliveState {
            enabled: true,
            idle_ms: Some(idle_s * 1000),
            interval_ms: Some(intvl_s * 1000),
            count: Some(count),
            probes_out,
        });
        self
    }

    fn ttl(mut self, ttl: u8, flags: u8) -> Self {
        self.2 = Some(ttl);
        self.0.tcp_flags = Some(flags);
        self
    }

    fn retransmits(mut self, n: u8) -> Self {
        self.0.retransmits = Some(n);
        self
    }

    fn remote(mut self, text: &str) -> Self {
        self.0.remote = addr(text);
        self
    }

    fn local(mut self, text: &str) -> Self {
        self.0.local = addr(text);
        self
    }

    /// No socket, or a mini socket: no TCP fields.
    /// The flags of the segment a reply RST answers.
    fn answered(mut self, flags: u8) -> Self {
        self.0.tcp_flags = Some(flags);
        self
    }

    fn no_tcp(mut self) -> Self {
        self.0.idle_rx_ms = None;
        self.0.idle_tx_ms = None;
        self.0.keepalive = None;
        self.0.retransmits = None;
        self
    }

    /// A segment seen by the ingress program.
    fn segment(self, ttl: u8, flags: u8) -> Self {
        self.no_tcp().ttl(ttl, flags)
    }

    /// Accepted or connected, as the socket tells ([`FirstSight`]).
    fn origin(mut self, origin: Origin) -> Self {
        self.0.context = Some(ConnectionContext {
            origin: Some(origin),
            ..ConnectionContext::default()
        });
        self
    }
}

use K::*;
use TcpState::*;

/// The kernel side's part: each socket's context as `keepalive-ebpf` keeps it.
#[derive(Default)]
struct Kernel {
    contexts: HashMap<u64, ConnectionContext>,
    /// SYN TTLs by (local, remote) until the accepted socket appears.
    handshake_ttls: HashMap<(SocketAddr, SocketAddr), u8>,
}

impl Kernel {
    /// Runs one hook: a record that crosses is returned with the context attached.
    fn hook(&mut self, b: B) -> Option<TcpEvent> {
        let B(mut ev, kind, ttl) = b;
        let at = ev.mono_ns;
        match kind {
            StateChange => self.state_change(&ev),
            FirstSight => {
                let origin = ev.context.and_then(|c| c.origin);
                self.context(ev.cookie, at).origin = origin;
            }
            SegmentTtl => {
                let (ttl, flags) = (ttl?, ev.tcp_flags?);
                if flags & RST != 0 {
                    self.context(ev.cookie, at).rst = Some(RstSegment {
                        at_ns: at,
                        ttl,
                        flags,
                    });
                } else if flags & ACK != 0 {
                    self.context(ev.cookie, at).peer_ttl = Some(ttl);
                } else {
                    self.handshake_ttls.insert((ev.local, ev.remote), ttl);
                }
            }
            IdleSend => {
                let gap_ms = ev.idle_rx_ms?.min(ev.idle_tx_ms?);
                let context = self.context(ev.cookie, at);
                if let Some(task) = ev.task.clone() {
                    context.owner = Some(task);
                }
                context
                    .idle_send
                    .get_or_insert(IdleSend { at_ns: at, gap_ms });
            }
            _ => {
                ev.context = self.contexts.get(&ev.cookie).cloned();
                if kind == ReplyAfterIdle
                    && let Some(context) = self.contexts.get_mut(&ev.cookie)
                {
                    context.idle_send = None;
                }
                return Some(ev);
            }
        }
        None
    }

    fn context(&mut self, cookie: u64, at_ns: u64) -> &mut ConnectionContext {
        self.contexts
            .entry(cookie)
            .or_insert_with(|| ConnectionContext {
                born_ns: Some(at_ns),
                ..ConnectionContext::default()
            })
    }

    fn state_change(&mut self, ev: &TcpEvent) {
        let (old, new, at) = (ev.old_state, ev.new_state, ev.mono_ns);
        if new == Listen || (old == Listen && new == Close) {
            return;
        }
        let ttl = self.handshake_ttls.remove(&(ev.local, ev.remote));
        let context = self.context(ev.cookie, at);
        match (old, new) {
            (Close, SynSent) => {
                *context = ConnectionContext {
                    origin: Some(Origin::Connected),
                    from_handshake: true,
                    born_ns: Some(at),
                    owner: ev.task.clone(),
                    ..ConnectionContext::default()
                };
            }
            (Listen, SynRecv) => {
                context.origin = Some(Origin::Accepted);
                context.from_handshake = true;
                context.peer_ttl = ttl;
            }
            (_, Established) => context.established_ns = Some(at),
            (Established, CloseWait) => {
                context.peer_fin_ns = Some(at);
                context.peer_fin_idle_ms = ev.idle_tx_ms;
            }
            (LastAck | TimeWait | Closing, Close) => {}
            (_, Close) => context.state_before_close = Some(old),
            _ => {}
        }
    }
}

/// A correlator, the kernel side in front of it, and everything it reported.
struct Run {
    c: Correlator,
    kernel: Kernel,
    findings: Vec<Finding>,
}

impl Run {
    fn new() -> Self {
        Self::with(CorrelatorConfig::default())
    }

    fn with(config: CorrelatorConfig) -> Self {
        Self {
            c: Correlator::new(config),
            kernel: Kernel::default(),
            findings: Vec::new(),
        }
    }

    fn feed(&mut self, b: B) -> &mut Self {
        if let Some(record) = self.kernel.hook(b) {
            let found = self.c.on_event(&record);
            self.findings.extend(found);
        }
        self
    }

    fn tick(&mut self, at_ms: u64) -> &mut Self {
        let found = self.c.on_tick(at_ms * MS);
        self.findings.extend(found);
        self
    }

    /// connect() from `app`, the SYN-ACK with the peer's TTL, ESTABLISHED.
    fn connect(&mut self, cookie: u64, at_ms: u64, peer_ttl: u8) -> &mut Self {
        self.feed(
            ev(StateChange, cookie, at_ms)
                .states(Close, SynSent)
                .app()
                .local("198.51.100.10:0"),
        )
        .feed(ev(SegmentTtl, cookie, at_ms).segment(peer_ttl, SYN | ACK))
        .feed(ev(StateChange, cookie, at_ms).states(SynSent, Established))
    }

    /// A send after `gap_ms` of idle, answered.
    fn survive(&mut self, cookie: u64, at_ms: u64, gap_ms: u64) -> &mut Self {
        self.feed(ev(IdleSend, cookie, at_ms).idle(gap_ms).app())
            .feed(ev(ReplyAfterIdle, cookie, at_ms + 1).app())
    }

    /// An RST arriving `idle_ms` after the peer was last heard from, with its TTL if seen,
    /// and the kernel's CLOSE and ECONNRESET after it.
    fn rst(&mut self, cookie: u64, at_ms: u64, idle_ms: u64, rst_ttl: Option<u8>) -> &mut Self {
        if let Some(ttl) = rst_ttl {
            self.feed(ev(SegmentTtl, cookie, at_ms).segment(ttl, RST | ACK));
        }
        self.feed(ev(ResetReceived, cookie, at_ms).idle(idle_ms))
            .feed(
                ev(StateChange, cookie, at_ms)
                    .states(Established, Close)
                    .idle(idle_ms),
            )
            .feed(ev(SocketError, cookie, at_ms).state(Close).err(104))
    }

    fn only(&self) -> &Finding {
        assert_eq!(self.findings.len(), 1, "{:#?}", self.findings);
        &self.findings[0]
    }
}

fn has(finding: &Finding, needle: &str) -> bool {
    finding.evidence.iter().any(|e| e.contains(needle))
}

#[test]
fn linger_zero_close_is_a_local_close_by_the_owner() {
    let mut run = Run::new();
    run.connect(1, 0, 63)
        .feed(ev(StateChange, 1, 5000).states(Established, Close))
        .feed(
            ev(ResetSent, 1, 5000)
                .state(Close)
                .reason("TCP_STATE")
                .app(),
        )
        .feed(ev(SocketError, 1, 5000).state(Close).err(104))
        .tick(10_000);
    let f = run.only();
    assert_eq!(
        (f.verdict, f.kind, f.confidence),
        (
            Verdict::LocalClose,
            FindingKind::LingerZero,
            Confidence::Confirmed
        )
    );
    assert_eq!((f.pid, f.comm.as_deref()), (Some(APP_PID), Some("app")));
    assert_eq!(f.reason.as_deref(), Some("TCP_STATE"));
    assert!(has(f, "socket was ESTABLISHED"), "{:?}", f.evidence);
    assert!(f.advice.contains("SO_LINGER"), "{}", f.advice);
}

#[test]
fn local_reasons_map_to_their_kinds() {
    let cases = [
        ("TCP_ABORT_ON_CLOSE", FindingKind::AbortOnClose),
        ("TCP_ABORT_ON_LINGER", FindingKind::AbortOnLinger),
        ("TCP_ABORT_ON_MEMORY", FindingKind::AbortOnMemory),
        ("TCP_DISCONNECT_WITH_DATA", FindingKind::DisconnectWithData),
    ];
    for (reason, kind) in cases {
        let mut run = Run::new();
        run.connect(1, 0, 63)
            .feed(ev(StateChange, 1, 100).states(Established, Close))
            .feed(ev(ResetSent, 1, 100).state(Close).reason(reason));
        let f = run.only();
        assert_eq!(
            (f.verdict, f.kind, f.confidence),
            (Verdict::LocalClose, kind, Confidence::Confirmed),
            "{reason}"
        );
        // The owner comes from connect() even though the RST ran without a process.
        assert_eq!(f.comm.as_deref(), Some("app"), "{reason}");
    }
}

#[test]
fn a_rejected_segment_on_an_open_connection_does_not_end_it() {
    let mut run = Run::new();
    run.connect(1, 0, 63)
        .feed(
            ev(ResetSent, 1, 100)
                .state(SynSent)
                .reason("TCP_INVALID_ACK_SEQUENCE"),
        )
        .rst(1, 2000, 1500, Some(63));
    assert_eq!(run.findings.len(), 2, "{:#?}", run.findings);
    let first = &run.findings[0];
    assert_eq!(
        (first.kind, first.comm.as_deref()),
        (FindingKind::BadState, Some("app"))
    );
    assert!(has(first, "did not fit the connection (SYN_SENT)"));
    assert_eq!(run.findings[1].kind, FindingKind::PeerAbort);
}

#[test]
fn tcp_state_reset_without_a_process_is_bad_state() {
    let mut run = Run::new();
    run.connect(1, 0, 63)
        .feed(ev(ResetSent, 1, 100).reason("TCP_STATE"));
    assert_eq!(run.only().kind, FindingKind::BadState);
}

#[test]
fn kernel_without_reasons_gives_local_abort() {
    let mut run = Run::new();
    let mut rst = ev(ResetSent, 1, 100);
    rst.0.reason = Some(ResetReason { raw: 0, name: None });
    run.connect(1, 0, 63).feed(rst);
    let f = run.only();
    assert_eq!(
        (f.kind, f.confidence),
        (FindingKind::LocalAbort, Confidence::Likely)
    );
    assert_eq!(f.reason.as_deref(), Some("reason_0"));
}

#[test]
fn ss_kill_is_destroyed_once() {
    let mut run = Run::new();
    run.connect(1, 0, 63)
        .feed(ev(SocketError, 1, 100).err(103))
        .feed(
            ev(ResetSent, 1, 100)
                .reason("TCP_STATE")
                .task(99, "ss")
                .err(103),
        )
        .feed(ev(StateChange, 1, 100).states(Established, Close).err(103));
    let f = run.only();
    assert_eq!(
        (f.verdict, f.kind),
        (Verdict::LocalClose, FindingKind::Destroyed)
    );
    assert_eq!(f.comm.as_deref(), Some("app"));
}

#[test]
fn rst_from_another_process_names_both() {
    let mut run = Run::new();
    run.connect(1, 0, 63).feed(
        ev(ResetSent, 1, 100)
            .reason("TCP_STATE")
            .task(99, "ss")
            .err(103),
    );
    let f = run.only();
    assert_eq!(f.kind, FindingKind::Destroyed);
    assert!(has(
        f,
        "RST sent from pid 99 (ss), not from the owner pid 4242 (app)"
    ));
}

#[test]
fn no_socket_reply_is_reported_per_rst() {
    let mut run = Run::new();
    let reply = ev(ResetSent, 0, 100)
        .state(Unknown)
        .no_tcp()
        .reason("NO_SOCKET");
    run.feed(reply.clone()).feed(reply);
    assert_eq!(run.findings.len(), 2);
    let f = &run.findings[0];
    assert_eq!(
        (f.verdict, f.kind, f.confidence, f.cookie),
        (
            Verdict::LocalClose,
            FindingKind::NoSocket,
            Confidence::Confirmed,
            0
        )
    );
    assert_eq!((f.pid, f.keepalive.as_ref()), (None, None));
    assert!(f.advice.contains(REMOTE), "{}", f.advice);
    assert_eq!(run.c.stats().recent, 0);
}

#[test]
fn rst_refusing_a_bare_syn_is_no_finding_but_one_for_a_stray_ack_is() {
    let mut run = Run::new();
    let refused = ev(ResetSent, 0, 100)
        .state(Unknown)
        .no_tcp()
        .reason("NO_SOCKET")
        .answered(SYN);
    run.feed(refused);
    assert!(run.findings.is_empty(), "{:?}", run.findings);
    let stray = ev(ResetSent, 0, 200)
        .state(Unknown)
        .no_tcp()
        .reason("NO_SOCKET")
        .answered(ACK);
    run.feed(stray);
    assert_eq!(run.findings.len(), 1);
    assert_eq!(run.findings[0].kind, FindingKind::NoSocket);
    // The RST answering the stray ACK arrives where no socket is: fentry and kprobe hooks on
    // tcp_v4_send_reset fire before it returns without answering an RST (seen in the 6.1 and
    // 6.12 golden streams). Nothing was sent.
    let echo = ev(ResetSent, 0, 201).state(Unknown).no_tcp().answered(RST);
    run.feed(echo);
    assert_eq!(run.findings.len(), 1, "{:#?}", run.findings);
}

#[test]
fn listener_and_time_wait_replies_are_no_socket() {
    let mut run = Run::new();
    run.feed(
        ev(ResetSent, 500, 100)
            .state(Listen)
            .no_tcp()
            .reason("TCP_FLAGS"),
    )
    .feed(
        ev(ResetSent, 501, 100)
            .state(TimeWait)
            .no_tcp()
            .reason("TCP_TIMEWAIT_SOCKET"),
    )
    .feed(
        ev(ResetSent, 502, 100)
            .state(NewSynRecv)
            .no_tcp()
            .reason("TCP_INVALID_ACK_SEQUENCE"),
    );
    let kinds: Vec<_> = run.findings.iter().map(|f| f.kind).collect();
    assert_eq!(
        kinds,
        [
            FindingKind::NoSocket,
            FindingKind::NoSocket,
            FindingKind::BadState
        ]
    );
    assert!(has(&run.findings[0], "only a listener matched"));
    assert_eq!(run.c.stats().recent, 0);
    assert_eq!(run.c.stats().remotes, 0);
}

#[test]
fn forged_rst_reports_both_ttls_once() {
    let mut run = Run::new();
    run.connect(1, 0, 63)
        .feed(ev(IdleSend, 1, 7012).idle(7012).app())
        .rst(1, 7013, 7013, Some(64))
        .tick(20_000);
    let f = run.only();
    assert_eq!(
        (f.verdict, f.kind, f.confidence),
        (
            Verdict::MiddleboxDrop,
            FindingKind::ForgedRst,
            Confidence::Likely
        )
    );
    assert_eq!((f.rst_ttl, f.peer_ttl), (Some(64), Some(63)));
    assert_eq!(f.idle_ms, Some(7012));
    assert!(has(
        f,
        "RST TTL 64, peer TTL 63: 1 hop closer than the peer"
    ));
    assert!(has(f, "idle 7012 ms before the RST"));
    assert!(has(f, "keepalive off"));
    assert!(f.advice.contains("below 7 s"), "{}", f.advice);
}

#[test]
fn forged_rst_that_is_also_an_idle_expiry_is_confirmed() {
    let mut run = Run::new();
    run.connect(1, 0, 63)
        .survive(1, 5000, 4000)
        .feed(ev(IdleSend, 1, 12_000).idle(7000).app())
        .rst(1, 12_001, 7001, Some(64));
    let f = run.only();
    assert_eq!(
        (f.kind, f.confidence),
        (FindingKind::ForgedRst, Confidence::Confirmed)
    );
    assert_eq!(f.timeout_window_ms, Some((4000, 7000)));
    assert!(has(
        f,
        "longer than the 4000 ms idle that connections to 198.51.100.130:8080 survived"
    ));
}

#[test]
fn server_side_peer_ttl_comes_from_the_listeners_syn() {
    let server = "198.51.100.130:8080";
    let client = "198.51.100.10:40000";
    let mut run = Run::new();
    run.feed(
        ev(SegmentTtl, 500, 0)
            .local(server)
            .remote(client)
            .segment(63, SYN),
    )
    .feed(
        ev(StateChange, 7, 0)
            .local(server)
            .remote(client)
            .states(Listen, SynRecv),
    )
    .feed(
        ev(StateChange, 7, 1)
            .local(server)
            .remote(client)
            .states(SynRecv, Established),
    )
    .feed(
        ev(SegmentTtl, 7, 900)
            .local(server)
            .remote(client)
            .segment(64, RST),
    )
    .feed(
        ev(ResetReceived, 7, 900)
            .local(server)
            .remote(client)
            .idle(800),
    );
    let f = run.only();
    assert_eq!(
        (f.kind, f.rst_ttl, f.peer_ttl),
        (FindingKind::ForgedRst, Some(64), Some(63))
    );
    assert!(run.kernel.handshake_ttls.is_empty());
}

#[test]
fn accepted_connections_do_not_fill_the_remote_table() {
    let mut run = Run::new();
    for cookie in 1..=20 {
        let client = format!("198.51.100.10:{}", 40_000 + cookie);
        let at = cookie * 10;
        run.feed(
            ev(StateChange, cookie, at)
                .local(REMOTE)
                .remote(&client)
                .states(Listen, SynRecv),
        )
        .feed(
            ev(StateChange, cookie, at)
                .local(REMOTE)
                .remote(&client)
                .states(SynRecv, Established),
        )
        .feed(
            ev(IdleSend, cookie, at + 5000)
                .local(REMOTE)
                .remote(&client)
                .idle(5000)
                .app(),
        )
        .feed(
            ev(ReplyAfterIdle, cookie, at + 5001)
                .local(REMOTE)
                .remote(&client)
                .app(),
        );
    }
    assert_eq!(run.c.stats().recent, 0);
    assert_eq!(run.c.stats().remotes, 0);
    assert!(run.findings.is_empty());
}

#[test]
fn an_answered_idle_send_is_not_blamed_for_a_later_death() {
    let mut run = Run::new();
    run.connect(1, 0, 63)
        .feed(ev(IdleSend, 1, 50_000).idle(40_000).app())
        .feed(ev(KeepaliveTimer, 1, 60_000).idle(5000))
        .feed(ev(ResetReceived, 1, 62_000).idle(7000));
    let f = run.only();
    assert_eq!((f.kind, f.idle_ms), (FindingKind::PeerAbort, Some(7000)));
}

#[test]
fn peer_ttl_falls_back_to_another_connections_handshake() {
    let mut run = Run::new();
    // Connection 1's reply after idle carries its handshake TTL to the correlator.
    run.connect(1, 0, 63)
        .survive(1, 300, 200)
        .feed(ev(KeepaliveTimer, 2, 500).local("198.51.100.10:40001"))
        .rst(2, 1000, 900, Some(64));
    let f = run.only();
    assert_eq!(
        (f.cookie, f.kind, f.peer_ttl),
        (2, FindingKind::ForgedRst, Some(63))
    );
    assert!(has(
        f,
        "peer TTL from another connection's handshake with 198.51.100.130"
    ));
}

#[test]
fn an_old_rst_ttl_is_not_matched() {
    let mut run = Run::new();
    run.connect(1, 0, 63)
        .feed(ev(SegmentTtl, 1, 100).segment(64, RST))
        .rst(1, 5000, 900, None);
    let f = run.only();
    assert_eq!(
        (f.kind, f.confidence, f.rst_ttl),
        (FindingKind::PeerAbort, Confidence::Likely, None)
    );
}

#[test]
fn idle_expiry_against_the_floor_is_possible() {
    let mut run = Run::new();
    run.connect(1, 0, 63)
        .feed(ev(IdleSend, 1, 40_000).idle(40_000).app())
        .rst(1, 40_001, 40_001, None);
    let f = run.only();
    assert_eq!(
        (f.verdict, f.kind, f.confidence),
        (
            Verdict::MiddleboxDrop,
            FindingKind::IdleExpiryRst,
            Confidence::Possible
        )
    );
    assert_eq!(f.idle_ms, Some(40_000));
    assert!(has(
        f,
        "at least the 30000 ms idle floor (nothing learned for 198.51.100.130:8080 yet)"
    ));
    assert!(f.advice.contains("below 40 s (e.g. 20 s)"), "{}", f.advice);
}

#[test]
fn the_floor_is_configurable() {
    let mut run = Run::with(CorrelatorConfig {
        idle_expiry_floor_ms: 5000,
        ..CorrelatorConfig::default()
    });
    run.connect(1, 0, 63).rst(1, 7000, 7000, None);
    assert_eq!(run.only().kind, FindingKind::IdleExpiryRst);
}

#[test]
fn keepalive_shorter_than_the_gap_is_no_middlebox_finding() {
    let mut run = Run::new();
    run.connect(1, 0, 63).feed(
        ev(ResetReceived, 1, 40_000)
            .idle(40_000)
            .keepalive(10, 5, 3, 0),
    );
    let f = run.only();
    assert_eq!(
        (f.verdict, f.kind, f.confidence),
        (
            Verdict::PeerReset,
            FindingKind::PeerAbort,
            Confidence::Likely
        )
    );
    assert!(has(
        f,
        "keepalive idle 10 s is shorter than the 40000 ms gap"
    ));
    assert_eq!(run.c.timeout_window(NETNS_COOKIE, addr(REMOTE)), None);
}

#[test]
fn keepalive_slower_than_the_gap_does_not_prevent_idle_expiry() {
    let mut run = Run::new();
    run.connect(1, 0, 63).feed(
        ev(ResetReceived, 1, 40_000)
            .idle(40_000)
            .keepalive(60, 5, 3, 0),
    );
    let f = run.only();
    assert_eq!(f.kind, FindingKind::IdleExpiryRst);
    assert!(has(
        f,
        "keepalive on but its idle 60 s is longer than the 40000 ms gap"
    ));
}

#[test]
fn rst_answering_a_keepalive_probe_is_an_idle_expiry() {
    let mut run = Run::new();
    run.connect(1, 0, 63).feed(
        ev(ResetReceived, 1, 60_050)
            .idle(60_050)
            .keepalive(60, 5, 3, 1),
    );
    let f = run.only();
    assert_eq!(f.kind, FindingKind::IdleExpiryRst);
    assert_eq!(f.idle_ms, Some(60_000));
    assert!(has(
        f,
        "idle 60000 ms when the first keepalive probe went out"
    ));
    assert_eq!(
        f.keepalive,
        Some(KeepaliveSummary {
            enabled: true,
            idle_s: 60,
            interval_s: 5,
            count: 3,
            probes_sent: 1,
        })
    );
}

#[test]
fn matching_ttl_after_a_long_idle_is_only_a_likely_peer_abort() {
    let mut run = Run::new();
    run.connect(1, 0, 63)
        .feed(ev(IdleSend, 1, 40_000).idle(40_000).app())
        .rst(1, 40_001, 40_001, Some(63));
    let f = run.only();
    assert_eq!(
        (f.verdict, f.kind, f.confidence),
        (
            Verdict::PeerReset,
            FindingKind::PeerAbort,
            Confidence::Likely
        )
    );
    assert!(has(f, "RST TTL 63 equals the peer's TTL"));
    assert!(has(f, "the RST carries an ACK"));
    assert!(has(f, "a middlebox can copy the peer's TTL"));
    assert!(f.facts.contains(&Fact::Missing {
        missing: MissingFact::IdleExpiry
    }));
    assert!(f.facts.contains(&Fact::RstTtlEqual {
        rst_ttl: 63,
        peer_ttl: 63
    }));
    assert_eq!(f.timeout_window_ms, None);
}

#[test]
fn ttl_flags_and_a_short_idle_agree_on_a_confirmed_peer_abort() {
    let mut run = Run::new();
    run.connect(1, 0, 63).rst(1, 2000, 1500, Some(63));
    let f = run.only();
    assert_eq!(
        (f.kind, f.confidence),
        (FindingKind::PeerAbort, Confidence::Confirmed)
    );
    assert!(f.facts.contains(&Fact::RstWithAck));
    assert!(!f.facts.iter().any(|x| matches!(x, Fact::Missing { .. })));
    assert_eq!(
        f.actions,
        [Action::CheckPeerApplication {
            remote: addr(REMOTE)
        }]
    );
    // Without the RST's flags the same TTL is not enough.
    let mut flagless = Run::new();
    flagless
        .connect(1, 0, 63)
        .feed(ev(SegmentTtl, 1, 2000).no_tcp().ttl(63, RST | ACK))
        .feed(ev(ResetReceived, 1, 2000).idle(1500));
    assert_eq!(flagless.only().confidence, Confidence::Confirmed);
}

#[test]
fn an_rst_without_ack_at_the_peers_ttl_is_the_peer_having_lost_the_connection() {
    let mut run = Run::new();
    run.connect(1, 0, 63)
        .feed(ev(SegmentTtl, 1, 900).segment(63, RST))
        .feed(ev(ResetReceived, 1, 900).idle(800));
    let f = run.only();
    assert_eq!(
        (f.verdict, f.kind, f.confidence),
        (
            Verdict::PeerReset,
            FindingKind::PeerLostState,
            Confidence::Confirmed
        )
    );
    assert!(has(f, "the RST carries no ACK"));
    assert!(
        f.advice.contains("no longer had this connection"),
        "{}",
        f.advice
    );
    // The same RST in CLOSE_WAIT is a stale reuse of a connection the peer had closed.
    let mut stale = Run::new();
    stale
        .connect(1, 0, 63)
        .feed(ev(StateChange, 1, 100).states(Established, CloseWait))
        .feed(ev(SegmentTtl, 1, 900).segment(63, RST))
        .feed(ev(ResetReceived, 1, 900).state(CloseWait).idle(800));
    assert_eq!(stale.only().kind, FindingKind::KeepaliveRace);
    // A middlebox's RST without ACK at another distance stays forged.
    let mut forged = Run::new();
    forged
        .connect(1, 0, 63)
        .feed(ev(SegmentTtl, 1, 900).segment(64, RST))
        .feed(ev(ResetReceived, 1, 900).idle(800));
    assert_eq!(forged.only().kind, FindingKind::ForgedRst);
}

#[test]
fn unknown_ttl_and_short_gap_is_a_likely_peer_abort() {
    let mut run = Run::new();
    run.connect(1, 0, 63).rst(1, 2000, 1500, None);
    let f = run.only();
    assert_eq!(
        (f.kind, f.confidence),
        (FindingKind::PeerAbort, Confidence::Likely)
    );
    assert!(has(f, "the RST's TTL was not seen"));
}

#[test]
fn rst_in_close_wait_is_a_stale_reuse() {
    let mut run = Run::new();
    run.connect(1, 0, 63)
        .feed(ev(StateChange, 1, 1000).states(Established, CloseWait))
        .feed(ev(IdleSend, 1, 50_000).state(CloseWait).idle(49_000).app())
        .feed(ev(SegmentTtl, 1, 50_001).segment(63, RST))
        .feed(ev(ResetReceived, 1, 50_001).state(CloseWait).idle(49_001))
        .feed(ev(StateChange, 1, 50_001).states(CloseWait, Close))
        .feed(ev(SocketError, 1, 50_001).state(Close).err(32));
    let f = run.only();
    assert_eq!(
        (f.verdict, f.kind, f.confidence),
        (
            Verdict::PeerReset,
            FindingKind::KeepaliveRace,
            Confidence::Confirmed
        )
    );
    assert!(has(f, "the peer closed its end (FIN)"));
    assert!(f.advice.contains("Keep-Alive: timeout"), "{}", f.advice);
}

/// Connection `cookie` talks until `last_ms`, the server closes it (FIN) `idle_ms` later, the
/// pool reuses it at `reuse_ms` and gets the server's RST (no ACK: its socket is gone).
fn race(run: &mut Run, cookie: u64, last_ms: u64, idle_ms: u64, reuse_ms: u64) {
    let local = format!("198.51.100.10:{}", 40_000 + cookie);
    let fin_ms = last_ms + idle_ms;
    run.connect(cookie, last_ms, 63)
        .feed(
            ev(StateChange, cookie, fin_ms)
                .local(&local)
                .states(Established, CloseWait)
                .idle(idle_ms),
        )
        .feed(ev(SegmentTtl, cookie, reuse_ms).segment(63, RST))
        .feed(
            ev(ResetReceived, cookie, reuse_ms)
                .local(&local)
                .state(CloseWait)
                .idle(reuse_ms - fin_ms),
        )
        .feed(
            ev(SocketError, cookie, reuse_ms)
                .local(&local)
                .state(Close)
                .err(104),
        );
}

#[test]
fn the_keepalive_race_learns_when_the_server_closes_and_says_when_to_evict() {
    let mut run = Run::new();
    race(&mut run, 1, 0, 1040, 3000);
    race(&mut run, 2, 5000, 1008, 9000);
    assert_eq!(run.findings.len(), 2, "{:#?}", run.findings);
    let first = &run.findings[0];
    assert!(has(first, "after the connection had been idle 1040 ms"));
    let f = &run.findings[1];
    assert_eq!(
        (f.verdict, f.kind, f.confidence),
        (
            Verdict::PeerReset,
            FindingKind::KeepaliveRace,
            Confidence::Confirmed
        )
    );
    assert!(f.facts.contains(&Fact::PeerClosedFirst {
        idle_at_fin_ms: Some(1008),
        learned_close_ms: Some(1008),
    }));
    assert!(
        f.advice.contains(
            "closes connections idle for about 1.0 s: evict pooled connections idle longer \
             than 0.9 s, or honour its `Keep-Alive: timeout`"
        ),
        "{}",
        f.advice
    );
    assert_eq!(
        f.actions[0],
        Action::EvictIdleAfter {
            seconds: 0,
            ms: Some(900)
        }
    );
    assert_eq!(
        run.c.timeout_window(NETNS_COOKIE, addr(REMOTE)),
        None,
        "a server's close teaches nothing about the path's idle timeout"
    );
}

#[test]
fn rst_answering_our_syn_is_refused_once() {
    let mut run = Run::new();
    run.feed(ev(StateChange, 1, 0).states(Close, SynSent).app())
        .feed(ev(SegmentTtl, 1, 1).segment(64, RST | ACK))
        .feed(ev(ResetReceived, 1, 1).state(SynSent))
        .feed(ev(StateChange, 1, 1).states(SynSent, Close))
        .feed(ev(SocketError, 1, 1).state(Close).err(111));
    let f = run.only();
    assert_eq!(
        (f.verdict, f.kind, f.confidence),
        (Verdict::PeerReset, FindingKind::Refused, Confidence::Likely)
    );
    assert_eq!(f.idle_ms, None);
    assert!(f.advice.contains("listens"), "{}", f.advice);
}

#[test]
fn refused_with_a_known_peer_ttl_is_confirmed() {
    let mut run = Run::new();
    run.connect(1, 0, 63)
        .survive(1, 5, 4)
        .feed(ev(StateChange, 2, 10).states(Close, SynSent).app())
        .feed(ev(SegmentTtl, 2, 11).segment(63, RST | ACK))
        .feed(ev(ResetReceived, 2, 11).state(SynSent));
    assert_eq!(run.only().confidence, Confidence::Confirmed);
}

#[test]
fn econnrefused_without_an_rst_is_a_possible_refusal() {
    let mut run = Run::new();
    run.feed(ev(StateChange, 1, 0).states(Close, SynSent).app())
        .feed(ev(StateChange, 1, 1).states(SynSent, Close))
        .feed(ev(SocketError, 1, 1).state(Close).err(111));
    let f = run.only();
    assert_eq!(
        (f.kind, f.confidence),
        (FindingKind::Refused, Confidence::Possible)
    );
    assert!(has(f, "ICMP port unreachable"));
}

#[test]
fn a_reconnected_socket_is_a_new_connection() {
    let mut run = Run::new();
    for at in [0, 1000] {
        run.feed(ev(StateChange, 1, at).states(Close, SynSent).app())
            .feed(ev(ResetReceived, 1, at + 1).state(SynSent))
            .feed(ev(StateChange, 1, at + 1).states(SynSent, Close))
            .feed(ev(SocketError, 1, at + 1).state(Close).err(111));
    }
    assert_eq!(run.findings.len(), 2);
    assert!(run.findings.iter().all(|f| f.kind == FindingKind::Refused));
}

/// Connection 1 goes quiet at 10 s with keepalive 2/2/3 and dies by keepalive timeout at
/// 18 s; optionally connection 2 to the same remote hears from the peer at 15 s.
fn keepalive_timeout(other_alive: bool) -> Run {
    let mut run = Run::new();
    run.connect(1, 0, 63).connect(2, 0, 63);
    if other_alive {
        run.survive(2, 15_000, 3000);
    }
    for (at, probes) in [(12_000, 0), (14_000, 1), (16_000, 2)] {
        run.feed(
            ev(KeepaliveTimer, 1, at)
                .idle(at - 10_000)
                .keepalive(2, 2, 3, probes),
        );
    }
    run.feed(
        ev(ResetSent, 1, 18_000)
            .reason("TCP_KEEPALIVE_TIMEOUT")
            .idle(8000)
            .keepalive(2, 2, 3, 3),
    )
    .feed(ev(StateChange, 1, 18_000).states(Established, Close))
    .feed(
        ev(SocketError, 1, 18_000)
            .state(Close)
            .err(110)
            .keepalive(2, 2, 3, 3),
    )
    .tick(30_000);
    run
}

#[test]
fn keepalive_timeout_is_a_likely_silent_timeout_when_the_peer_is_up() {
    let run = keepalive_timeout(true);
    let f = run.only();
    assert_eq!(
        (f.verdict, f.kind, f.confidence),
        (
            Verdict::MiddleboxDrop,
            FindingKind::SilentTimeout,
            Confidence::Likely
        )
    );
    assert_eq!(f.reason.as_deref(), Some("TCP_KEEPALIVE_TIMEOUT"));
    assert_eq!(
        f.keepalive,
        Some(KeepaliveSummary {
            enabled: true,
            idle_s: 2,
            interval_s: 2,
            count: 3,
            probes_sent: 3,
        })
    );
    assert!(has(f, "3 keepalive probes went unanswered"));
    assert!(has(f, "received a segment 2999 ms before this death"));
    assert_eq!(f.idle_ms, Some(2000));
}

#[test]
fn keepalive_timeout_is_a_possible_silent_timeout_when_nothing_else_answers() {
    let run = keepalive_timeout(false);
    let f = run.only();
    assert_eq!(
        (f.kind, f.confidence),
        (FindingKind::SilentTimeout, Confidence::Possible)
    );
    assert!(has(f, "the peer may be down"));
    assert!(f.facts.contains(&Fact::NoOtherConnectionAnswered));
    assert_eq!(
        f.actions[0],
        Action::CheckPeerHost {
            remote: addr(REMOTE)
        }
    );
}

/// Connection 1 survives 4 s idle, then sends after 6 s idle and gets no answer until
/// ETIMEDOUT at 27 s; optionally connection 2 to the same remote is answered meanwhile.
fn retransmission_timeout(other_alive: bool) -> Run {
    let mut run = Run::new();
    run.connect(1, 0, 63)
        .connect(2, 0, 63)
        .survive(1, 5000, 4000);
    if other_alive {
        run.survive(2, 20_000, 1000);
    }
    run.feed(ev(IdleSend, 1, 12_000).idle(6000).app())
        .feed(
            ev(StateChange, 1, 27_000)
                .states(Established, Close)
                .idle(21_000),
        )
        .feed(
            ev(SocketError, 1, 27_000)
                .state(Close)
                .idle(21_000)
                .err(110)
                .retransmits(6),
        );
    run
}

#[test]
fn a_silent_death_while_nothing_else_answers_may_be_the_peer_down_and_teaches_nothing() {
    let run = retransmission_timeout(false);
    let f = run.only();
    assert_eq!(
        (f.kind, f.confidence, f.idle_ms),
        (FindingKind::SilentTimeout, Confidence::Possible, Some(6000))
    );
    assert!(has(f, "the peer may be down"));
    assert_eq!(f.timeout_window_ms, None);
    assert_eq!(run.c.timeout_window(NETNS_COOKIE, addr(REMOTE)), None);
}

#[test]
fn etimedout_after_an_idle_send_is_a_silent_timeout_that_teaches_the_window() {
    let run = retransmission_timeout(true);
    let f = run.only();
    assert_eq!(
        (f.kind, f.confidence, f.idle_ms),
        (FindingKind::SilentTimeout, Confidence::Likely, Some(6000))
    );
    assert!(has(
        f,
        "ETIMEDOUT with no RST: 6 retransmissions went unanswered"
    ));
    assert!(has(
        f,
        "this host sent after 6000 ms idle and never got an answer"
    ));
    assert_eq!(f.timeout_window_ms, Some((4000, 6000)));
    assert!(f.facts.contains(&Fact::LearnedWindow {
        lo_ms: 4000,
        hi_ms: 6000
    }));
    assert_eq!(
        f.actions[..2],
        [
            Action::KeepaliveIdleBelow {
                seconds: 4,
                suggested: 2
            },
            Action::EvictIdleAfter {
                seconds: 4,
                ms: None
            }
        ]
    );
}

#[test]
fn an_old_connection_with_no_known_peer_distance_gets_no_confident_verdict() {
    // Open before the observer started: no handshake, nothing learned, the RST after 10 s
    // idle arrives with TTL 64 and an ACK.
    let mut run = Run::new();
    run.feed(ev(FirstSight, 1, 0).origin(Origin::Connected))
        .feed(ev(IdleSend, 1, 10_000).idle(10_000).app())
        .rst(1, 10_001, 10_001, Some(64));
    assert!(
        run.findings.is_empty(),
        "a zero-hop RST waits for a local other end"
    );
    run.tick(11_001);
    let f = run.only();
    assert_eq!(
        (f.verdict, f.kind, f.confidence),
        (
            Verdict::PeerReset,
            FindingKind::PeerAbort,
            Confidence::Possible
        )
    );
    assert!(f.facts.contains(&Fact::HandshakeNotSeen));
    assert!(f.facts.contains(&Fact::Missing {
        missing: MissingFact::PeerTtl
    }));
    assert!(f.facts.contains(&Fact::RstTtlLocalLink { rst_ttl: 64 }));
    assert!(has(f, "the facts do not decide it"));
    // Another connection's handshake with the same host gives the distance: 63, so the RST
    // came from one hop closer.
    let mut run = Run::new();
    run.connect(2, 0, 63)
        .survive(2, 300, 200)
        .feed(ev(FirstSight, 1, 0).origin(Origin::Connected))
        .feed(ev(IdleSend, 1, 10_000).idle(10_000).app())
        .rst(1, 10_001, 10_001, Some(64));
    let f = run.only();
    assert_eq!(
        (f.verdict, f.kind, f.confidence),
        (
            Verdict::MiddleboxDrop,
            FindingKind::ForgedRst,
            Confidence::Likely
        )
    );
    assert!(
        f.facts
            .contains(&Fact::PeerTtlFromOtherConnection { peer_ttl: 63 })
    );
}

#[test]
fn an_old_accepted_connection_never_enters_the_destination_table() {
    let client = "198.51.100.10:40001";
    let mut run = Run::new();
    run.feed(
        ev(FirstSight, 1, 0)
            .local(REMOTE)
            .remote(client)
            .origin(Origin::Accepted),
    )
    .feed(
        ev(IdleSend, 1, 5000)
            .local(REMOTE)
            .remote(client)
            .idle(5000)
            .app(),
    )
    .feed(
        ev(ReplyAfterIdle, 1, 5001)
            .local(REMOTE)
            .remote(client)
            .app(),
    )
    .feed(
        ev(IdleSend, 1, 20_000)
            .local(REMOTE)
            .remote(client)
            .idle(9000),
    )
    .rst(1, 20_001, 9001, Some(64))
    .tick(21_001);
    assert_eq!(run.findings.len(), 1);
    assert_eq!(run.c.stats().remotes, 0);
    assert_eq!(run.c.timeout_window(NETNS_COOKIE, addr(client)), None);
    // Nor one whose origin is unknown (the kernel side kept no context for it).
    run.feed(
        ev(KeepaliveTimer, 2, 30_000)
            .local(REMOTE)
            .remote("198.51.100.10:40002")
            .idle(100),
    )
    .feed(
        ev(ReplyAfterIdle, 2, 30_001)
            .local(REMOTE)
            .remote("198.51.100.10:40002"),
    );
    assert_eq!(run.c.stats().remotes, 0);
}

#[test]
fn connect_timeout_is_a_silent_timeout_without_learning() {
    let mut run = Run::new();
    run.feed(ev(StateChange, 1, 0).states(Close, SynSent).app())
        .feed(ev(StateChange, 1, 63_000).states(SynSent, Close))
        .feed(ev(SocketError, 1, 63_000).state(Close).err(110));
    let f = run.only();
    assert_eq!(
        (f.kind, f.idle_ms, f.timeout_window_ms),
        (FindingKind::SilentTimeout, None, None)
    );
    assert!(has(f, "got no answer to its SYNs"));
}

#[test]
fn a_normal_fin_close_is_no_finding() {
    let mut run = Run::new();
    run.connect(1, 0, 63)
        .survive(1, 3000, 2000)
        .feed(ev(StateChange, 1, 4000).states(Established, FinWait1).app())
        .feed(ev(StateChange, 1, 4001).states(FinWait1, FinWait2))
        .feed(ev(StateChange, 1, 4002).states(FinWait2, Close));
    assert_eq!(run.c.stats().recent, 0, "a clean close sends nothing");
    run.tick(10_000);
    assert!(run.findings.is_empty(), "{:#?}", run.findings);
}

#[test]
fn econnreset_without_an_rst_event_is_a_possible_peer_abort() {
    let mut run = Run::new();
    run.connect(1, 0, 63)
        .feed(ev(StateChange, 1, 100).states(Established, Close))
        .feed(ev(SocketError, 1, 100).state(Close).err(104));
    let f = run.only();
    assert_eq!(
        (f.kind, f.confidence),
        (FindingKind::PeerAbort, Confidence::Possible)
    );
}

#[test]
fn an_abandoned_connect_is_no_finding() {
    let mut run = Run::new();
    run.feed(ev(StateChange, 1, 0).states(Close, SynSent).app())
        .feed(ev(StateChange, 1, 10).states(SynSent, Close))
        .feed(ev(SocketError, 1, 10).state(Close).err(104))
        .tick(10_000);
    assert!(run.findings.is_empty(), "{:#?}", run.findings);
}

#[test]
fn abort_on_data_replaces_the_held_peer_verdict() {
    let mut run = Run::new();
    run.connect(1, 0, 63)
        .feed(ev(StateChange, 1, 100).states(Established, FinWait1).app())
        .feed(ev(ResetReceived, 1, 200).state(FinWait1))
        .feed(ev(StateChange, 1, 200).states(FinWait1, Close));
    assert!(run.findings.is_empty());
    run.feed(
        ev(ResetSent, 1, 200)
            .state(Close)
            .reason("TCP_ABORT_ON_DATA")
            .err(104),
    )
    .tick(10_000);
    let f = run.only();
    assert_eq!(
        (f.verdict, f.kind),
        (Verdict::LocalClose, FindingKind::AbortOnData)
    );
}

#[test]
fn without_reset_reasons_the_reply_to_data_after_close_is_an_abort_on_data() {
    // Kernels before 6.10: `tcp_reset` on the closed server socket, then the RST from
    // `tcp_v4_send_reset` answering the client's data, with no reason and no context.
    let (server, client) = ("198.51.100.130:8080", "198.51.100.10:40000");
    let mut run = Run::new();
    run.feed(
        ev(StateChange, 7, 0)
            .local(server)
            .remote(client)
            .states(Listen, SynRecv),
    )
    .feed(
        ev(StateChange, 7, 0)
            .local(server)
            .remote(client)
            .states(SynRecv, Established),
    )
    .feed(
        ev(StateChange, 7, 1000)
            .local(server)
            .remote(client)
            .states(Established, FinWait1),
    )
    .feed(
        ev(ResetReceived, 7, 3000)
            .local(server)
            .remote(client)
            .state(FinWait2),
    )
    .feed(
        ev(StateChange, 7, 3000)
            .local(server)
            .remote(client)
            .states(FinWait2, Close),
    );
    assert!(run.findings.is_empty(), "held for the RST that follows");
    let mut reply = ev(ResetSent, 7, 3000)
        .local(server)
        .remote(client)
        .state(Close)
        .no_tcp()
        .answered(ACK);
    reply.0.reset_facts = Some(ResetFacts {
        answers_segment: true,
        ..ResetFacts::default()
    });
    run.feed(reply.clone()).tick(10_000);
    let f = run.only();
    assert_eq!(
        (f.verdict, f.kind, f.confidence),
        (
            Verdict::LocalClose,
            FindingKind::AbortOnData,
            Confidence::Confirmed
        )
    );
    assert!(f.facts.contains(&Fact::NoKernelReason));
    // In FIN_WAIT1 (the data carries the ACK of this host's FIN) the kernel closes without
    // `tcp_reset`: the reply from the socket in CLOSE is the only record, as on 6.1.
    let mut fin_wait1 = Run::new();
    fin_wait1.feed(reply.clone()).tick(10_000);
    assert_eq!(fin_wait1.only().kind, FindingKind::AbortOnData);
    // A reply from a socket that is not closed is a segment that did not fit.
    let mut open = Run::new();
    open.feed(reply.state(Established)).tick(10_000);
    assert_eq!(open.only().kind, FindingKind::BadState);
}

#[test]
fn a_held_peer_reset_is_reported_when_the_grace_ends() {
    let mut run = Run::new();
    run.connect(1, 0, 63)
        .feed(ev(StateChange, 1, 100).states(Established, FinWait1).app())
        .feed(ev(StateChange, 1, 150).states(FinWait1, FinWait2))
        .feed(ev(ResetReceived, 1, 200).state(FinWait2))
        .feed(ev(StateChange, 1, 200).states(FinWait2, Close))
        .tick(1000);
    assert!(run.findings.is_empty());
    run.tick(2200);
    let f = run.only();
    assert_eq!(
        (f.kind, f.confidence, f.mono_ns),
        (FindingKind::AbortOnData, Confidence::Likely, 200 * MS)
    );
    assert!(has(
        f,
        "the peer sent data after this host had closed the socket"
    ));
}

#[test]
fn a_held_peer_reset_is_reported_when_its_connection_is_evicted() {
    let mut run = Run::with(CorrelatorConfig {
        max_recent: 1,
        ..CorrelatorConfig::default()
    });
    run.connect(1, 0, 63)
        .feed(ev(StateChange, 1, 100).states(Established, FinWait1).app())
        .feed(ev(ResetReceived, 1, 200).state(FinWait1));
    assert!(run.findings.is_empty());
    // Another death pushes the held one out of the table: it is reported then.
    run.connect(2, 300, 63).feed(
        ev(ResetSent, 2, 400)
            .state(Close)
            .reason("TCP_ABORT_ON_CLOSE"),
    );
    assert_eq!(run.findings.len(), 2);
    assert_eq!(
        (run.findings[0].cookie, run.findings[0].kind),
        (1, FindingKind::AbortOnData)
    );
}

#[test]
fn a_fin_wait_rst_with_its_segment_seen_is_reported_at_once() {
    let mut run = Run::new();
    run.connect(1, 0, 63)
        .feed(ev(StateChange, 1, 100).states(Established, FinWait1).app())
        .feed(ev(SegmentTtl, 1, 200).segment(63, RST))
        .feed(ev(ResetReceived, 1, 200).state(FinWait1));
    assert_eq!(run.only().confidence, Confidence::Confirmed);
}

#[test]
fn sleep_ladder_learns_the_window() {
    let mut run = Run::new();
    run.connect(1, 0, 63);
    let mut at = 0;
    for gap in [1000, 2000, 3000, 4000] {
        at += gap;
        run.survive(1, at, gap);
    }
    at += 6000;
    run.feed(ev(IdleSend, 1, at).idle(6000).app())
        .rst(1, at + 1, 6001, None);
    let f = run.only();
    assert_eq!(
        (f.verdict, f.kind, f.confidence),
        (
            Verdict::MiddleboxDrop,
            FindingKind::IdleExpiryRst,
            Confidence::Likely
        )
    );
    assert_eq!(f.timeout_window_ms, Some((4000, 6000)));
    assert!(has(
        f,
        "connections to 198.51.100.130:8080 survived 4000 ms idle and died after 6000 ms"
    ));
    assert!(
        f.advice.starts_with(
            "set TCP_KEEPIDLE below 4 s (e.g. 2 s) or evict pooled connections idle longer than 4 s"
        ),
        "{}",
        f.advice
    );
    assert_eq!(
        run.c.timeout_window(NETNS_COOKIE, addr(REMOTE)),
        Some(Window {
            lo_ms: 4000,
            hi_ms: 6000
        })
    );
    assert_eq!(run.c.timeout_window(NETNS_COOKIE + 1, addr(REMOTE)), None);
    let json = serde_json::to_value(f).expect("finding serializes");
    assert_eq!(json["timeout_window_ms"], serde_json::json!([4000, 6000]));
    assert_eq!(json["verdict"], "middlebox_drop");
    assert_eq!(json["kind"], "idle_expiry_rst");
}

#[test]
fn a_gap_equal_to_a_survived_one_is_not_an_idle_expiry() {
    let mut run = Run::new();
    run.connect(1, 0, 63)
        .survive(1, 5000, 4000)
        .feed(ev(IdleSend, 1, 10_000).idle(4000).app())
        .rst(1, 10_001, 4001, None);
    let f = run.only();
    assert_eq!(f.kind, FindingKind::PeerAbort);
    assert!(has(
        f,
        "not longer than the 4000 ms idle that connections to 198.51.100.130:8080 survived"
    ));
}

#[test]
fn a_contradicting_survival_resets_the_window() {
    let mut run = Run::new();
    run.connect(1, 0, 63)
        .connect(2, 0, 63)
        .connect(3, 0, 63)
        .survive(1, 4000, 4000)
        .feed(ev(IdleSend, 1, 10_000).idle(6000).app())
        .rst(1, 10_001, 6001, None);
    assert_eq!(
        run.c.timeout_window(NETNS_COOKIE, addr(REMOTE)),
        Some(Window {
            lo_ms: 4000,
            hi_ms: 6000
        })
    );
    run.survive(2, 20_000, 8000);
    assert_eq!(run.c.timeout_window(NETNS_COOKIE, addr(REMOTE)), None);
    run.feed(ev(IdleSend, 3, 40_000).idle(9000).app())
        .rst(3, 40_001, 9001, None);
    assert_eq!(run.findings.len(), 2);
    let f = &run.findings[1];
    assert_eq!(f.timeout_window_ms, Some((8000, 9000)));
    assert!(has(
        f,
        "survived 8000 ms idle although one died after 6000 ms"
    ));
    assert!(has(f, "the learned window was reset"));
}

#[test]
fn a_known_middlebox_default_inside_the_window_is_named() {
    let mut run = Run::new();
    run.connect(1, 0, 63)
        .survive(1, 1_790_000, 1_790_000)
        .feed(ev(IdleSend, 1, 3_600_000).idle(1_805_000).app())
        .rst(1, 3_600_001, 1_805_001, None);
    let f = run.only();
    assert_eq!(f.timeout_window_ms, Some((1_790_000, 1_805_000)));
    assert!(
        f.advice.contains("below 1790 s (e.g. 840 s)"),
        "{}",
        f.advice
    );
    assert!(f.advice.contains("Juniper SRX (1800 s)"), "{}", f.advice);
    assert!(has(f, "default idle timeout of Juniper SRX (1800 s)"));
}

#[test]
fn keepalive_summary_fills_in_the_sysctls() {
    let mut run = Run::with(CorrelatorConfig {
        sysctls: KeepaliveSysctls {
            tcp_keepalive_time: 600,
            tcp_keepalive_intvl: 30,
            tcp_keepalive_probes: 5,
        },
        ..CorrelatorConfig::default()
    });
    let mut rst = ev(ResetReceived, 1, 1000).idle(500);
    rst.0.keepalive = Some(KeepaliveState {
        enabled: true,
        idle_ms: None,
        interval_ms: Some(10_000),
        count: None,
        probes_out: 0,
    });
    run.connect(1, 0, 63).feed(rst);
    assert_eq!(
        run.only().keepalive,
        Some(KeepaliveSummary {
            enabled: true,
            idle_s: 600,
            interval_s: 10,
            count: 5,
            probes_sent: 0,
        })
    );
}

#[test]
fn healthy_connections_leave_nothing_in_the_correlator() {
    let mut run = Run::new();
    for cookie in 1..=100 {
        run.connect(cookie, cookie, 63)
            .feed(
                ev(StateChange, cookie, cookie + 1)
                    .states(Established, FinWait1)
                    .app(),
            )
            .feed(ev(StateChange, cookie, cookie + 2).states(FinWait2, Close));
    }
    let stats = run.c.stats();
    assert_eq!((stats.recent, stats.remotes, stats.hosts), (0, 0, 0));
    assert!(run.findings.is_empty());
}

#[test]
fn the_recent_table_stays_within_its_cap_and_each_death_is_reported_once() {
    let mut run = Run::with(CorrelatorConfig {
        max_recent: 2,
        ..CorrelatorConfig::default()
    });
    for cookie in 1..=10 {
        run.connect(cookie, 0, 63).rst(cookie, 1000, 900, Some(63));
    }
    let stats = run.c.stats();
    assert_eq!((stats.recent, stats.evicted_recent), (2, 8));
    assert_eq!(run.findings.len(), 10);
    // A trailing error report of a forgotten death is a duplicate the rules recognise.
    run.tick(10_000);
    assert_eq!(run.c.stats().recent, 0);
}

#[test]
fn a_connection_opened_before_the_observer_gets_the_hosts_handshake_ttl() {
    let mut run = Run::new();
    run.connect(1, 0, 63).rst(1, 1000, 900, Some(63));
    // Connection 2 was open before the observer started: no handshake of its own.
    run.feed(ev(SegmentTtl, 2, 2000).segment(63, RST))
        .feed(ev(ResetReceived, 2, 2000).idle(900));
    assert_eq!(run.findings.len(), 2);
    let f = &run.findings[1];
    assert_eq!(f.cookie, 2);
    assert_eq!(f.peer_ttl, Some(63));
    assert!(has(f, "peer TTL from another connection's handshake"));
}

#[test]
fn sysctls_are_read_from_a_directory() {
    let dir = std::env::temp_dir().join(format!("ka-sysctl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let write = |name: &str, value: &str| std::fs::write(dir.join(name), value).expect("write");
    write("tcp_keepalive_time", "600\n");
    write("tcp_keepalive_intvl", "30\n");
    write("tcp_keepalive_probes", "4\n");
    assert_eq!(
        KeepaliveSysctls::read_from(&dir).expect("valid sysctls"),
        KeepaliveSysctls {
            tcp_keepalive_time: 600,
            tcp_keepalive_intvl: 30,
            tcp_keepalive_probes: 4,
        }
    );
    write("tcp_keepalive_probes", "many\n");
    let err = KeepaliveSysctls::read_from(&dir).expect_err("bad value");
    assert!(matches!(err, SysctlError::Parse { ref value, .. } if value == "many"));
    assert!(
        err.to_string()
            .contains("tcp_keepalive_probes holds \"many\"")
    );
    std::fs::remove_file(dir.join("tcp_keepalive_intvl")).expect("remove");
    let err = KeepaliveSysctls::read_from(&dir).expect_err("missing file");
    assert!(matches!(err, SysctlError::Read { .. }));
    assert!(err.to_string().contains("tcp_keepalive_intvl"));
    std::fs::remove_dir_all(&dir).expect("cleanup");
    assert_eq!(
        KeepaliveSysctls::default(),
        KeepaliveSysctls {
            tcp_keepalive_time: 7200,
            tcp_keepalive_intvl: 75,
            tcp_keepalive_probes: 9,
        }
    );
}

/// A connection between two sockets of this host on loopback: the client (`python3`, pid 9835)
/// and the server (`nginx`, pid 812).
fn loopback_pair(run: &mut Run) {
    let (client, server) = ("127.0.0.1:40000", "127.0.0.1:8080");
    run.feed(
        ev(StateChange, 1, 0)
            .local("127.0.0.1:0")
            .remote(server)
            .states(Close, SynSent)
            .task(9835, "python3"),
    )
    .feed(
        ev(SegmentTtl, 1, 0)
            .local(client)
            .remote(server)
            .segment(64, SYN | ACK),
    )
    .feed(
        ev(StateChange, 1, 0)
            .local(client)
            .remote(server)
            .states(SynSent, Established),
    )
    .feed(
        ev(SegmentTtl, 500, 0)
            .local(server)
            .remote(client)
            .segment(64, SYN),
    )
    .feed(
        ev(StateChange, 2, 0)
            .local(server)
            .remote(client)
            .states(Listen, SynRecv),
    )
    .feed(
        ev(StateChange, 2, 0)
            .local(server)
            .remote(client)
            .states(SynRecv, Established),
    )
    .feed(
        ev(IdleSend, 2, 1)
            .local(server)
            .remote(client)
            .idle(0)
            .task(812, "nginx"),
    );
}

/// The client closes with `SO_LINGER {1, 0}`.
fn linger_zero_close(run: &mut Run, at_ms: u64) -> &mut Run {
    let (client, server) = ("127.0.0.1:40000", "127.0.0.1:8080");
    run.feed(
        ev(StateChange, 1, at_ms)
            .local(client)
            .remote(server)
            .states(Established, Close),
    )
    .feed(
        ev(ResetSent, 1, at_ms)
            .local(client)
            .remote(server)
            .state(Close)
            .reason("TCP_STATE")
            .task(9835, "python3"),
    )
}

fn reset_seen_by_the_server(run: &mut Run, at_ms: u64) {
    let (client, server) = ("127.0.0.1:40000", "127.0.0.1:8080");
    run.feed(
        ev(SegmentTtl, 2, at_ms)
            .local(server)
            .remote(client)
            .segment(64, RST | ACK),
    )
    .feed(
        ev(ResetReceived, 2, at_ms)
            .local(server)
            .remote(client)
            .idle(1500),
    );
}

fn assert_linked(run: &Run) {
    assert_eq!(run.findings.len(), 2, "{:#?}", run.findings);
    let (closer, receiver) = (&run.findings[0], &run.findings[1]);
    assert_eq!(
        (closer.verdict, closer.kind, closer.cookie),
        (Verdict::LocalClose, FindingKind::LingerZero, 1)
    );
    assert!(
        has(
            closer,
            "the peer, nginx (pid 812) at 127.0.0.1:8080 on this host, saw the reset"
        ),
        "{:#?}",
        closer.evidence
    );
    assert!(closer.facts.contains(&Fact::LocalPeer {
        pid: Some(812),
        comm: Some("nginx".into()),
        addr: addr("127.0.0.1:8080"),
    }));
    assert_eq!(
        (receiver.verdict, receiver.confidence, receiver.cookie),
        (Verdict::PeerReset, Confidence::Confirmed, 2)
    );
    assert!(has(
        receiver,
        "the other end is python3 (pid 9835) on this host, and it reset the connection \
         (linger_zero)"
    ));
    assert!(
        receiver
            .advice
            .starts_with("the reset came from python3 (pid 9835) on this host (linger_zero)"),
        "{}",
        receiver.advice
    );
    assert_eq!(receiver.actions, closer.actions);
    for f in &run.findings {
        assert_ne!(f.verdict, Verdict::MiddleboxDrop);
    }
}

#[test]
fn both_ends_on_this_host_are_linked_when_the_closer_comes_first() {
    let mut run = Run::new();
    loopback_pair(&mut run);
    linger_zero_close(&mut run, 1500);
    assert!(run.findings.is_empty(), "the close waits for its other end");
    reset_seen_by_the_server(&mut run, 1500);
    assert_linked(&run);
}

#[test]
fn both_ends_on_this_host_are_linked_when_the_reset_is_seen_first() {
    let mut run = Run::new();
    loopback_pair(&mut run);
    reset_seen_by_the_server(&mut run, 1500);
    assert!(run.findings.is_empty(), "the RST waits for its other end");
    linger_zero_close(&mut run, 1500);
    assert_linked(&run);
}

#[test]
fn a_finding_waiting_for_its_other_end_is_not_lost() {
    let mut run = Run::new();
    loopback_pair(&mut run);
    linger_zero_close(&mut run, 1500).tick(1600);
    assert!(run.findings.is_empty(), "still within the wait");
    run.tick(1800);
    assert_eq!(run.only().kind, FindingKind::LingerZero);
    let mut at_exit = Run::new();
    loopback_pair(&mut at_exit);
    linger_zero_close(&mut at_exit, 1500);
    let released = at_exit.c.finish();
    assert_eq!(released.len(), 1, "released at the end");
}

#[test]
fn loopback_is_never_a_middlebox_idle_expiry() {
    let mut run = Run::new();
    run.feed(
        ev(FirstSight, 1, 0)
            .local("127.0.0.1:40000")
            .remote("127.0.0.1:8080")
            .origin(Origin::Connected),
    )
    .feed(
        ev(ResetReceived, 1, 60_000)
            .local("127.0.0.1:40000")
            .remote("127.0.0.1:8080")
            .idle(60_000),
    )
    .tick(62_000);
    let f = run.only();
    assert_eq!(
        (f.verdict, f.kind, f.confidence),
        (
            Verdict::PeerReset,
            FindingKind::PeerAbort,
            Confidence::Possible
        )
    );
}
