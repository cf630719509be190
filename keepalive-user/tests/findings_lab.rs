//! Privileged: the daemon's findings in the lab (keepalive-lab's `Topology`), client ⇄
//! middlebox ⇄ server, each in its own network namespace. Every test makes one kind of
//! connection death happen and checks that the findings in its namespaces are exactly the
//! expected ones.
//!
//! Every daemon sees every event on the host, and parallel tests use the same lab addresses,
//! so findings are matched by network namespace inode and tuple. Every wait is bounded; the
//! only fixed sleeps are the idle gaps the tests are about.

mod common;

use std::{
    io::{self, Read as _, Write as _},
    net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use common::{Daemon, lab_topology, require_root};
use keepalive_lab::{
    EchoServer, Keepalive, MiddleboxMode, Topology, flood::syn_flood, in_netns, read_retrying,
    set_keepalive, set_linger_abort, set_user_timeout,
};
use serde_json::Value;

const PORT: u16 = 7000;
/// Bound on every blocking socket call.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on a finding's arrival once its connection has died.
const WAIT: Duration = Duration::from_secs(15);
/// The middlebox's established timeout in the single-gap tests, and a gap that outlasts it.
const CT_TIMEOUT_SECS: u32 = 3;
const IDLE_GAP: Duration = Duration::from_millis(4500);
/// Daemon options for every test: with a 3 s middlebox timeout the default 30 s floor would
/// never call an unlearned idle gap an expiry.
const DAEMON_ARGS: &[&str] = &["--idle-expiry-floor", "2"];
/// How far an idle time measured in jiffies may stray from the sleep that made it.
const IDLE_TOLERANCE_MS: u64 = 300;
/// TTLs through the middlebox: segments the server sends arrive one hop lower than the RSTs
/// the middlebox forges itself.
const PEER_TTL: u64 = 63;
const FORGED_TTL: u64 = 64;

/// A lab and the inodes its hosts' namespaces have in the daemon's records.
struct Lab {
    topology: Topology,
    client_netns: u32,
    server_netns: u32,
}

impl Lab {
    /// Builds a lab, then starts a daemon. In this order every event the daemon sees from the
    /// lab's namespace inodes is the lab's own: the kernel hands a freed namespace's inode to
    /// the next new namespace at once, and a daemon started before the lab would also have
    /// seen (and learned from) the connections of the test whose namespace had it before.
    fn start(mode: MiddleboxMode, established_timeout_secs: u32) -> (Lab, Daemon) {
        let lab = Lab::new(mode, established_timeout_secs);
        (lab, Daemon::start(DAEMON_ARGS))
    }

    fn new(mode: MiddleboxMode, established_timeout_secs: u32) -> Lab {
        let topology = lab_topology(mode, established_timeout_secs);
        let client_netns = topology.client().netns().inode().expect("client inode");
        let server_netns = topology.server().netns().inode().expect("server inode");
        Lab {
            topology,
            client_netns,
            server_netns,
        }
    }

    fn server_addr(&self) -> SocketAddr {
        SocketAddr::from((self.topology.server().ipv4(), PORT))
    }

    fn echo(&self) -> EchoServer {
        in_netns(self.topology.server().netns(), || {
            EchoServer::bind(self.server_addr())
        })
        .expect("enter the server namespace")
        .expect("bind the echo server")
    }

    fn listen(&self) -> TcpListener {
        let listener = in_netns(self.topology.server().netns(), || {
            TcpListener::bind(self.server_addr())
        })
        .expect("enter the server namespace")
        .expect("bind the listener");
        listener.set_nonblocking(true).expect("non-blocking");
        listener
    }

    fn connect(&self) -> TcpStream {
        let to = self.server_addr();
        let stream = in_netns(self.topology.client().netns(), || {
            TcpStream::connect_timeout(&to, IO_TIMEOUT)
        })
        .expect("enter the client namespace")
        .unwrap_or_else(|error| panic!("connect to {to}: {error}"));
        with_timeouts(&stream);
        stream
    }

    /// The client's end of a connection from [`Lab::connect`].
    fn client_end(&self, stream: &TcpStream) -> End {
        End {
            netns: self.client_netns,
            local: stream.local_addr().expect("local address"),
            remote: self.server_addr(),
        }
    }

    /// The server's end of the same connection.
    fn server_end(&self, client_stream: &TcpStream) -> End {
        End {
            netns: self.server_netns,
            local: self.server_addr(),
            remote: client_stream.local_addr().expect("local address"),
        }
    }

    /// Waits until the daemon has correlated every event emitted before this call: the kernel
    /// side writes all events to one ring buffer, read in order, and the daemon correlates each
    /// event before it reads the next. The marker is a connection refused on the client's
    /// loopback: the RST it receives (the NO_SOCKET reply itself carries no namespace).
    fn fence(&self, daemon: &mut Daemon) {
        let refused = in_netns(self.topology.client().netns(), || {
            let closed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?;
            let error = TcpStream::connect_timeout(&closed, IO_TIMEOUT)
                .expect_err("nobody listens on a port just released");
            assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused, "{error}");
            Ok::<_, io::Error>(closed)
        })
        .expect("enter the client namespace")
        .expect("free loopback port");
        let netns = self.client_netns;
        daemon.wait_for("the fence's refused connect", WAIT, |v| {
            v["type"] == "event"
                && v["event"] == "reset_received"
                && v["netns"] == netns
                && v["remote"] == refused.to_string()
        });
    }

    /// Every finding so far about a lab connection (not the fences' loopback resets).
    fn findings(&self, daemon: &mut Daemon) -> Vec<Value> {
        let hosts = [self.topology.client().ipv4(), self.topology.server().ipv4()];
        daemon.all(|v| {
            v["type"] == "finding"
                && (v["netns"] == self.client_netns || v["netns"] == self.server_netns)
                && v["local"]
                    .as_str()
                    .and_then(|local| local.parse::<SocketAddr>().ok())
                    .is_some_and(|local| hosts.iter().any(|&host| local.ip() == host))
        })
    }

    /// After a fence: the lab's findings are exactly one for each of `ends`, in that order.
    fn only_findings<const N: usize>(&self, daemon: &mut Daemon, ends: [&End; N]) -> [Value; N] {
        self.fence(daemon);
        let findings = self.findings(daemon);
        assert_eq!(
            findings.len(),
            N,
            "one finding for each of {ends:?} and none for other lab connections: \
             {findings:#?}"
        );
        ends.map(|end| {
            let mine: Vec<&Value> = findings.iter().filter(|v| end.matches(v)).collect();
            assert_eq!(mine.len(), 1, "one finding for {end:?}: {findings:#?}");
            mine[0].clone()
        })
    }
}

/// One end of a lab connection as the daemon names it.
#[derive(Debug)]
struct End {
    netns: u32,
    local: SocketAddr,
    remote: SocketAddr,
}

impl End {
    fn matches(&self, value: &Value) -> bool {
        value["netns"] == self.netns
            && value["local"] == self.local.to_string()
            && value["remote"] == self.remote.to_string()
    }

    /// The first finding about this end, within `timeout`. On time-out, lists every line about
    /// this end: the harness's own listing shows the newest lines of all the parallel tests.
    fn wait_finding(&self, daemon: &mut Daemon, what: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let found = daemon.all(|v| v["type"] == "finding" && self.matches(v));
            if let Some(finding) = found.into_iter().next() {
                return finding;
            }
            if Instant::now() >= deadline {
                let lines: Vec<String> = daemon
                    .all(|v| self.matches(v))
                    .iter()
                    .map(Value::to_string)
                    .collect();
                panic!(
                    "waiting for {what} on {self:?}: timed out after {timeout:?}; its lines:\n{}",
                    lines.join("\n")
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

fn with_timeouts(stream: &TcpStream) {
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .expect("write timeout");
}

/// Accepts one connection from a non-blocking listener, within [`IO_TIMEOUT`].
fn accept(listener: &TcpListener) -> TcpStream {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).expect("blocking");
                with_timeouts(&stream);
                return stream;
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no connection to accept");
                thread::sleep(Duration::from_millis(10));
            }
            Err(error) => panic!("accept: {error}"),
        }
    }
}

fn round_trip(stream: &mut TcpStream, payload: &[u8]) {
    stream.write_all(payload).expect("send");
    let mut echoed = vec![0u8; payload.len()];
    stream.read_exact(&mut echoed).expect("receive the echo");
    assert_eq!(echoed, payload);
}

/// One request from the client answered by the server, both read in full.
fn round_trip_between(client: &mut TcpStream, server: &mut TcpStream) {
    client.write_all(b"request").expect("send the request");
    server.read_exact(&mut [0u8; 7]).expect("read the request");
    server.write_all(b"reply").expect("send the reply");
    client.read_exact(&mut [0u8; 5]).expect("read the reply");
}

/// Sends after the connection sat idle for `gap`, and returns the reply or the error the
/// connection died with.
fn send_after_idle(stream: &mut TcpStream, gap: Duration) -> io::Result<()> {
    thread::sleep(gap);
    // The write only queues data: the verdict comes back on the read.
    stream.write_all(b"after idle")?;
    let mut reply = [0u8; 10];
    stream.read_exact(&mut reply)
}

fn comm() -> String {
    std::fs::read_to_string("/proc/thread-self/comm")
        .expect("read comm")
        .trim()
        .to_owned()
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).expect("milliseconds fit")
}

fn assert_idle_near(finding: &Value, slept: Duration) {
    let idle = finding["idle_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("idle_ms missing: {finding:#}"));
    let slept = millis(slept);
    assert!(
        idle + IDLE_TOLERANCE_MS >= slept && idle <= slept + IDLE_TOLERANCE_MS,
        "idle_ms {idle}, slept {slept} ms (±{IDLE_TOLERANCE_MS} ms): {finding:#}"
    );
}

fn assert_verdict(finding: &Value, verdict: &str, kind: &str, confidence: &str) {
    assert_eq!(
        (
            finding["verdict"].as_str(),
            finding["kind"].as_str(),
            finding["confidence"].as_str()
        ),
        (Some(verdict), Some(kind), Some(confidence)),
        "{finding:#}"
    );
}

fn has_evidence(finding: &Value, needle: &str) -> bool {
    finding["evidence"].as_array().is_some_and(|lines| {
        lines
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.contains(needle)))
    })
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn server_linger_zero_close_is_a_confirmed_peer_reset_and_the_servers_local_close() {
    require_root("server_linger_zero_close_is_a_confirmed_peer_reset_and_the_servers_local_close");
    let (lab, mut daemon) = Lab::start(MiddleboxMode::Reject, CT_TIMEOUT_SECS);
    let listener = lab.listen();
    let mut client = lab.connect();
    let mut server = accept(&listener);
    round_trip_between(&mut client, &mut server);

    let closer = comm();
    set_linger_abort(&server).expect("SO_LINGER {1, 0}");
    drop(server);
    let error = read_retrying(&mut client, &mut [0u8; 1]).expect_err("the server aborted");
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");

    let (client_end, server_end) = (lab.client_end(&client), lab.server_end(&client));
    client_end.wait_finding(&mut daemon, "the client's finding", WAIT);
    server_end.wait_finding(&mut daemon, "the server's finding", WAIT);
    let [at_client, at_server] = lab.only_findings(&mut daemon, [&client_end, &server_end]);

    assert_verdict(&at_client, "peer_reset", "peer_abort", "confirmed");
    assert_eq!(at_client["rst_ttl"], PEER_TTL, "{at_client:#}");
    assert_eq!(at_client["peer_ttl"], PEER_TTL, "{at_client:#}");
    assert!(
        has_evidence(&at_client, "equals the peer's TTL"),
        "{at_client:#}"
    );
    assert!(
        has_evidence(&at_client, "the RST carries an ACK"),
        "{at_client:#}"
    );

    assert_verdict(&at_server, "local_close", "linger_zero", "confirmed");
    assert_eq!(at_server["pid"], std::process::id(), "{at_server:#}");
    assert_eq!(at_server["comm"], closer, "{at_server:#}");
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn a_server_that_lost_the_connection_answers_with_an_rst_without_ack() {
    require_root("a_server_that_lost_the_connection_answers_with_an_rst_without_ack");
    let (lab, mut daemon) = Lab::start(MiddleboxMode::Reject, CT_TIMEOUT_SECS);
    let listener = lab.listen();
    let mut client = lab.connect();
    let mut server = accept(&listener);
    round_trip_between(&mut client, &mut server);
    let (client_end, server_end) = (lab.client_end(&client), lab.server_end(&client));

    // The server forgets the connection without telling the client (a crash or a restart):
    // the RST of its abortive close is dropped on its way out.
    let server_netns = lab.topology.server().netns();
    server_netns
        .nft(
            "table inet kao_lost {\n chain out {\n  type filter hook output priority 0;\n  \
             tcp flags & rst == rst drop\n }\n}\n",
        )
        .expect("nft rule dropping the server's RSTs");
    set_linger_abort(&server).expect("SO_LINGER {1, 0}");
    drop(server);
    server_netns
        .nft("delete table inet kao_lost\n")
        .expect("remove the rule");
    // The client's next segment meets a stack without a socket for it.
    client.write_all(b"after the restart").expect("send");
    let error =
        read_retrying(&mut client, &mut [0u8; 1]).expect_err("the server has no connection");
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");

    let at_client = client_end.wait_finding(&mut daemon, "the client's finding", WAIT);
    // The server's own distance, and no ACK: its kernel, not its application, answered.
    assert_verdict(&at_client, "peer_reset", "peer_lost_state", "confirmed");
    assert_eq!(at_client["rst_ttl"], PEER_TTL, "{at_client:#}");
    assert_eq!(at_client["peer_ttl"], PEER_TTL, "{at_client:#}");
    assert!(
        has_evidence(&at_client, "the RST carries no ACK"),
        "{at_client:#}"
    );
    // On the server: its abortive close, and its stack's answer to the client's segment.
    lab.fence(&mut daemon);
    let findings = lab.findings(&mut daemon);
    let kinds: Vec<&str> = findings
        .iter()
        .filter(|v| server_end.matches(v))
        .filter_map(|v| v["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["linger_zero", "no_socket"], "{findings:#?}");
    assert_eq!(findings.len(), 3, "{findings:#?}");
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn reject_mode_idle_expiry_is_a_forged_reset_with_ttl_evidence() {
    require_root("reject_mode_idle_expiry_is_a_forged_reset_with_ttl_evidence");
    let (lab, mut daemon) = Lab::start(MiddleboxMode::Reject, CT_TIMEOUT_SECS);
    let _echo = lab.echo();
    let mut client = lab.connect();
    round_trip(&mut client, b"before idle");

    let error = send_after_idle(&mut client, IDLE_GAP).expect_err("the middlebox forgot the flow");
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");

    let end = lab.client_end(&client);
    end.wait_finding(&mut daemon, "the forged reset", WAIT);
    let [finding] = lab.only_findings(&mut daemon, [&end]);
    // Both signals hold: the RST comes from a different distance than the server, after a gap
    // above the floor with keepalive off, so the rules say forged and confirmed.
    assert_verdict(&finding, "middlebox_drop", "forged_rst", "confirmed");
    assert_eq!(finding["rst_ttl"], FORGED_TTL, "{finding:#}");
    assert_eq!(finding["peer_ttl"], PEER_TTL, "{finding:#}");
    assert!(
        has_evidence(
            &finding,
            &format!("RST TTL {FORGED_TTL}, peer TTL {PEER_TTL}")
        ),
        "{finding:#}"
    );
    assert!(has_evidence(&finding, "keepalive off"), "{finding:#}");
    assert_idle_near(&finding, IDLE_GAP);
    assert_eq!(finding["keepalive"]["enabled"], false, "{finding:#}");
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn a_connection_open_before_the_daemon_started_is_judged_when_the_middlebox_resets_it() {
    require_root(
        "a_connection_open_before_the_daemon_started_is_judged_when_the_middlebox_resets_it",
    );
    let lab = Lab::new(MiddleboxMode::Reject, CT_TIMEOUT_SECS);
    let _echo = lab.echo();
    let mut client = lab.connect();
    round_trip(&mut client, b"before the daemon");
    let quiet_since = Instant::now();
    // Its handshake, owner and establishment happened before any program was attached.
    let mut daemon = Daemon::start(DAEMON_ARGS);

    let error = send_after_idle(&mut client, IDLE_GAP).expect_err("the middlebox forgot the flow");
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
    let quiet = millis(quiet_since.elapsed());

    let end = lab.client_end(&client);
    end.wait_finding(&mut daemon, "the middlebox reset", WAIT);
    let [finding] = lab.only_findings(&mut daemon, [&end]);
    // No handshake TTL to compare with: the idle gap against the floor decides.
    assert_verdict(&finding, "middlebox_drop", "idle_expiry_rst", "possible");
    assert_eq!(finding["rst_ttl"], FORGED_TTL, "{finding:#}");
    // What is missing is said, and what is still knowable: an unchanged initial TTL came
    // from this host's local link.
    let facts = finding["facts"].as_array().expect("facts");
    for fact in [
        serde_json::json!({"fact": "handshake_not_seen"}),
        serde_json::json!({"fact": "missing", "missing": "peer_ttl"}),
        serde_json::json!({"fact": "rst_ttl_local_link", "rst_ttl": FORGED_TTL}),
    ] {
        assert!(facts.contains(&fact), "{fact} in {finding:#}");
    }
    assert_eq!(
        finding["comm"],
        comm(),
        "the send after idle named the owner: {finding:#}"
    );
    // The gap began at the round trip, before the daemon's start-up.
    let idle = finding["idle_ms"].as_u64().expect("idle_ms");
    assert!(
        idle + IDLE_TOLERANCE_MS >= millis(IDLE_GAP) && idle <= quiet + IDLE_TOLERANCE_MS,
        "idle {idle} ms, quiet for {quiet} ms: {finding:#}"
    );
    let received = daemon.all(|v| v["event"] == "reset_received" && end.matches(v));
    let context = &received.first().expect("the RST received")["context"];
    assert_eq!(context["from_handshake"], false, "{context:#}");
    assert_eq!(
        context["origin"], "connected",
        "told from the socket itself: {context:#}"
    );
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn a_syn_flood_to_a_closed_port_sends_no_record_and_a_real_reset_is_still_explained() {
    require_root(
        "a_syn_flood_to_a_closed_port_sends_no_record_and_a_real_reset_is_still_explained",
    );
    const FLOOD: u64 = 5_000;
    let (lab, mut daemon) = Lab::start(MiddleboxMode::Reject, CT_TIMEOUT_SECS);
    let _echo = lab.echo();
    let mut client = lab.connect();
    round_trip(&mut client, b"before the flood");
    let (source, target) = (
        SocketAddrV4::new(lab.topology.client().ipv4(), 20_000),
        SocketAddrV4::new(lab.topology.server().ipv4(), PORT + 1),
    );
    let report = in_netns(lab.topology.client().netns(), || {
        syn_flood(source, target, FLOOD, Duration::from_secs(10))
    })
    .expect("enter the client namespace")
    .expect("raw socket flood");
    assert_eq!(report.sent, FLOOD, "{report:?}");

    let error = send_after_idle(&mut client, IDLE_GAP).expect_err("the middlebox forgot the flow");
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
    let end = lab.client_end(&client);
    end.wait_finding(&mut daemon, "the forged reset after the flood", WAIT);
    let [finding] = lab.only_findings(&mut daemon, [&end]);
    assert_verdict(&finding, "middlebox_drop", "forged_rst", "confirmed");

    let server_netns = lab.server_netns;
    let flood_records = daemon.all(|v| v["type"] == "event" && v["netns"] == server_netns);
    let (status, rest) = daemon.stop();
    assert!(status.success());
    assert!(
        flood_records.is_empty(),
        "{} records from the server namespace for {FLOOD} SYNs: {:#?}",
        flood_records.len(),
        &flood_records[..flood_records.len().min(3)]
    );
    let stats = rest.iter().rfind(|v| v["type"] == "stats").expect("stats");
    assert!(
        stats["syn_refusals"].as_u64() >= Some(FLOOD),
        "every refusal counted: {stats}"
    );
    assert_eq!(stats["kernel_lost"], 0, "{stats}");
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn drop_mode_idle_expiry_with_a_user_timeout_is_a_silent_timeout() {
    require_root("drop_mode_idle_expiry_with_a_user_timeout_is_a_silent_timeout");
    let (lab, mut daemon) = Lab::start(MiddleboxMode::Drop, CT_TIMEOUT_SECS);
    let _echo = lab.echo();
    let mut client = lab.connect();
    set_user_timeout(&client, Duration::from_millis(1500)).expect("TCP_USER_TIMEOUT");
    round_trip(&mut client, b"before idle");

    let error = send_after_idle(&mut client, IDLE_GAP).expect_err("the middlebox forgot the flow");
    assert_eq!(error.raw_os_error(), Some(libc::ETIMEDOUT), "{error}");

    let end = lab.client_end(&client);
    end.wait_finding(&mut daemon, "the silent timeout", WAIT);
    let [finding] = lab.only_findings(&mut daemon, [&end]);
    // No other connection to the server was heard from meanwhile, so the server host may
    // have been down: the rules allow only `possible`.
    assert_verdict(&finding, "middlebox_drop", "silent_timeout", "possible");
    assert!(
        has_evidence(&finding, "ETIMEDOUT with no RST"),
        "{finding:#}"
    );
    assert_eq!(finding["rst_ttl"], Value::Null, "{finding:#}");
    assert_idle_near(&finding, IDLE_GAP);
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn unanswered_keepalive_probes_are_a_silent_timeout() {
    require_root("unanswered_keepalive_probes_are_a_silent_timeout");
    let (lab, mut daemon) = Lab::start(MiddleboxMode::Drop, CT_TIMEOUT_SECS);
    let _echo = lab.echo();
    let mut client = lab.connect();
    // Keepalive slower than the middlebox's timeout: the first probe finds the flow forgotten.
    let keepalive = Keepalive {
        idle_secs: CT_TIMEOUT_SECS + 1,
        interval_secs: 1,
        count: 2,
    };
    set_keepalive(&client, Some(keepalive)).expect("keepalive");
    round_trip(&mut client, b"before idle");

    let end = lab.client_end(&client);
    // Idle 4 s, two probes a second apart, then the reset: about 6 s.
    end.wait_finding(&mut daemon, "the keepalive timeout", WAIT);
    let error = read_retrying(&mut client, &mut [0u8; 1]).expect_err("keepalive gave up");
    assert_eq!(error.raw_os_error(), Some(libc::ETIMEDOUT), "{error}");
    let [finding] = lab.only_findings(&mut daemon, [&end]);
    assert_verdict(&finding, "middlebox_drop", "silent_timeout", "possible");
    assert_eq!(finding["reason"], "TCP_KEEPALIVE_TIMEOUT", "{finding:#}");
    assert!(
        has_evidence(&finding, "2 keepalive probes went unanswered"),
        "{finding:#}"
    );
    let summary = &finding["keepalive"];
    assert_eq!(summary["enabled"], true, "{finding:#}");
    assert_eq!(summary["idle_s"], keepalive.idle_secs, "{finding:#}");
    assert_eq!(
        summary["interval_s"], keepalive.interval_secs,
        "{finding:#}"
    );
    assert_eq!(summary["count"], keepalive.count, "{finding:#}");
    assert_eq!(summary["probes_sent"], keepalive.count, "{finding:#}");
    assert_eq!(
        finding["idle_ms"],
        u64::from(keepalive.idle_secs) * 1000,
        "the gap is the first probe's: {finding:#}"
    );
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn client_abortive_close_is_a_local_close_by_the_closing_thread() {
    require_root("client_abortive_close_is_a_local_close_by_the_closing_thread");
    let (lab, mut daemon) = Lab::start(MiddleboxMode::Reject, CT_TIMEOUT_SECS);
    let listener = lab.listen();
    let mut client = lab.connect();
    let mut server = accept(&listener);
    round_trip_between(&mut client, &mut server);
    let (client_end, server_end) = (lab.client_end(&client), lab.server_end(&client));

    // The socket was connected from another thread (the one that entered the client's
    // namespace): the finding must name the thread that closed it.
    let closer = comm();
    set_linger_abort(&client).expect("SO_LINGER {1, 0}");
    drop(client);
    let error = read_retrying(&mut server, &mut [0u8; 1]).expect_err("the client aborted");
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");

    client_end.wait_finding(&mut daemon, "the client's local close", WAIT);
    server_end.wait_finding(&mut daemon, "the server's peer reset", WAIT);
    let [at_client, at_server] = lab.only_findings(&mut daemon, [&client_end, &server_end]);
    assert_verdict(&at_client, "local_close", "linger_zero", "confirmed");
    assert_eq!(at_client["pid"], std::process::id(), "{at_client:#}");
    assert_eq!(at_client["comm"], closer, "{at_client:#}");
    assert_verdict(&at_server, "peer_reset", "peer_abort", "confirmed");
    assert_eq!(at_server["rst_ttl"], PEER_TTL, "{at_server:#}");
    assert_eq!(at_server["peer_ttl"], PEER_TTL, "{at_server:#}");
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn keepalive_below_the_middlebox_timeout_yields_no_finding() {
    require_root("keepalive_below_the_middlebox_timeout_yields_no_finding");
    let (lab, mut daemon) = Lab::start(MiddleboxMode::Reject, 4);
    let echo = lab.echo();
    let mut client = lab.connect();
    set_keepalive(
        &client,
        Some(Keepalive {
            idle_secs: 1,
            interval_secs: 1,
            count: 3,
        }),
    )
    .expect("keepalive");
    round_trip(&mut client, b"before idle");

    send_after_idle(&mut client, Duration::from_secs(6)).expect("keepalive kept the flow alive");
    // An orderly close must not be a finding either: FIN, the echo server's FIN in answer.
    let (client_end, server_end) = (lab.client_end(&client), lab.server_end(&client));
    client.shutdown(Shutdown::Write).expect("FIN");
    assert_eq!(
        read_retrying(&mut client, &mut [0u8; 1]).expect("the server's FIN"),
        0
    );
    drop(client);
    lab.fence(&mut daemon);
    // The flow outlived the 4 s middlebox timeout by 6 s idle: keepalive probed and the
    // probes were answered. Answered probes are the healthy case and send no record.
    let probes = daemon.all(|v| v["event"] == "keepalive_timer" && client_end.matches(v));
    assert!(
        probes.is_empty(),
        "answered keepalive probes crossed the ring buffer: {probes:#?}"
    );
    let findings = lab.findings(&mut daemon);
    assert!(
        findings.is_empty(),
        "no finding for {client_end:?} or {server_end:?}: {findings:#?}"
    );
    echo.stop().expect("the echo server ran cleanly");
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn sleep_ladder_learns_the_middlebox_timeout_window() {
    require_root("sleep_ladder_learns_the_middlebox_timeout_window");
    const TIMEOUT_SECS: u32 = 5;
    const GAPS_SECS: [u64; 6] = [1, 2, 3, 4, 6, 8];
    let (lab, mut daemon) = Lab::start(MiddleboxMode::Reject, TIMEOUT_SECS);
    let _echo = lab.echo();
    let mut streams: Vec<TcpStream> = GAPS_SECS
        .iter()
        .map(|_| {
            let mut stream = lab.connect();
            round_trip(&mut stream, b"before idle");
            stream
        })
        .collect();
    let ends: Vec<End> = streams.iter().map(|s| lab.client_end(s)).collect();

    // Learning is per remote, not per connection: every step runs at once, one connection
    // and one thread per gap, so the ladder takes as long as its longest gap.
    let outcomes: Vec<io::Result<()>> = thread::scope(|scope| {
        let steps: Vec<_> = streams
            .iter_mut()
            .zip(GAPS_SECS)
            .map(|(stream, gap)| {
                scope.spawn(move || send_after_idle(stream, Duration::from_secs(gap)))
            })
            .collect();
        steps
            .into_iter()
            .map(|step| step.join().expect("ladder step"))
            .collect()
    });
    for ((gap, outcome), end) in GAPS_SECS.iter().zip(&outcomes).zip(&ends) {
        if *gap < u64::from(TIMEOUT_SECS) {
            assert!(outcome.is_ok(), "{gap} s gap on {end:?}: {outcome:?}");
        } else {
            let error = outcome.as_ref().expect_err("the middlebox forgot the flow");
            assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{gap} s gap");
        }
    }

    let died: Vec<&End> = GAPS_SECS
        .iter()
        .zip(&ends)
        .filter(|(gap, _)| **gap > u64::from(TIMEOUT_SECS))
        .map(|(_, end)| end)
        .collect();
    let died = <[&End; 2]>::try_from(died).expect("two gaps outlast the timeout");
    for end in died {
        end.wait_finding(&mut daemon, "a ladder step's reset", WAIT);
    }
    let findings = lab.only_findings(&mut daemon, died);
    for finding in &findings {
        assert_verdict(finding, "middlebox_drop", "forged_rst", "confirmed");
    }
    let latest = findings
        .iter()
        .max_by_key(|f| f["mono_ns"].as_u64())
        .expect("findings");
    let window = latest["timeout_window_ms"]
        .as_array()
        .and_then(|w| Some((w.first()?.as_u64()?, w.get(1)?.as_u64()?)))
        .unwrap_or_else(|| panic!("no learned window: {latest:#}"));
    assert!(
        (3800..=4300).contains(&window.0) && (5800..=6500).contains(&window.1),
        "window {window:?} should be (4 s, 6 s]: {latest:#}"
    );
    let timeout_ms = u64::from(TIMEOUT_SECS) * 1000;
    assert!(
        window.0 < timeout_ms && timeout_ms <= window.1,
        "the window brackets the {TIMEOUT_SECS} s timeout: {window:?}"
    );
}

/// The server's keep-alive timeout in the race test: it closes a connection idle this long.
const SERVER_IDLE_CLOSE: Duration = Duration::from_millis(1000);

/// Waits, bounded, until the peer's FIN has arrived: a read would return end of file.
fn wait_for_fin(stream: &TcpStream) {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        match stream.peek(&mut [0u8; 1]) {
            Ok(0) => return,
            Ok(_) => panic!("the server sent data instead of closing"),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => panic!("waiting for the server's FIN: {error}"),
        }
        assert!(Instant::now() < deadline, "no FIN from the server");
    }
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn a_pooled_connection_the_server_closed_is_a_keepalive_race_with_the_servers_close_time() {
    require_root(
        "a_pooled_connection_the_server_closed_is_a_keepalive_race_with_the_servers_close_time",
    );
    // The middlebox keeps flows for 30 s: only the server closes them here.
    let (lab, mut daemon) = Lab::start(MiddleboxMode::Reject, 30);
    let listener = lab.listen();
    let mut races = Vec::new();
    for round in 0..2 {
        let mut client = lab.connect();
        let mut server = accept(&listener);
        round_trip_between(&mut client, &mut server);
        // The server's keep-alive timeout: it closes the idle connection with a FIN.
        thread::sleep(SERVER_IDLE_CLOSE);
        drop(server);
        wait_for_fin(&client);
        // The pool reuses the connection; the server's stack answers with an RST.
        client.write_all(b"reused").expect("the request is queued");
        let end = lab.client_end(&client);
        let finding = end.wait_finding(&mut daemon, &format!("race {round}"), WAIT);
        races.push(finding);
    }
    for race in &races {
        assert_verdict(race, "peer_reset", "keepalive_race", "confirmed");
        let close = race["facts"]
            .as_array()
            .and_then(|facts| facts.iter().find(|f| f["fact"] == "peer_closed_first"))
            .unwrap_or_else(|| panic!("no peer_closed_first fact: {race:#}"));
        let idle = close["idle_at_fin_ms"].as_u64().expect("idle at the FIN");
        let slept = millis(SERVER_IDLE_CLOSE);
        assert!(
            idle + IDLE_TOLERANCE_MS >= slept && idle <= slept + IDLE_TOLERANCE_MS,
            "idle at the FIN {idle} ms, the server closed after {slept} ms: {race:#}"
        );
    }
    // The second race knows the server's close time from both: the advice has the number.
    let second = &races[1];
    let learned = second["facts"]
        .as_array()
        .and_then(|facts| facts.iter().find(|f| f["fact"] == "peer_closed_first"))
        .and_then(|f| f["learned_close_ms"].as_u64())
        .expect("a learned close time");
    assert!(
        learned.abs_diff(millis(SERVER_IDLE_CLOSE)) <= IDLE_TOLERANCE_MS,
        "{second:#}"
    );
    let advice = second["advice"].as_str().expect("advice");
    assert!(
        advice.contains("closes connections idle for about 1.") && advice.contains("evict"),
        "{advice}"
    );
    let evict = &second["actions"][0];
    assert_eq!(evict["action"], "evict_idle_after", "{second:#}");
    assert_eq!(evict["ms"], learned / 10 * 9, "{second:#}");
}

/// Runs `work` in a thread named `name`: its command name is what the daemon shows.
fn named<T: Send + 'static>(name: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(work)
        .expect("spawn a named thread")
        .join()
        .expect("the named thread ran")
}

#[test]
#[ignore = "needs root (eBPF programs): `cargo xtask test` runs it as root"]
fn both_ends_on_this_host_name_each_other() {
    require_root("both_ends_on_this_host_name_each_other");
    let mut daemon = Daemon::start(DAEMON_ARGS);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind on loopback");
    let server_addr = listener.local_addr().expect("listener address");
    // Each end is used by its own thread, which the daemon names as its owner.
    let client = named("kao-client", move || {
        TcpStream::connect_timeout(&server_addr, IO_TIMEOUT).expect("connect on loopback")
    });
    with_timeouts(&client);
    let client_addr = client.local_addr().expect("client address");
    let (server, _) = listener.accept().expect("accept");
    with_timeouts(&server);
    let mut server = named("kao-server", move || {
        let mut server = server;
        server.write_all(b"hello").expect("server sends");
        server
    });
    named("kao-client", move || {
        let mut client = client;
        client.read_exact(&mut [0u8; 5]).expect("client reads");
        set_linger_abort(&client).expect("SO_LINGER {1, 0}");
    });
    let error = read_retrying(&mut server, &mut [0u8; 8]).expect_err("the client aborted");
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");

    let is = |v: &Value, local: SocketAddr, remote: SocketAddr| {
        v["type"] == "finding"
            && v["local"] == local.to_string()
            && v["remote"] == remote.to_string()
    };
    let closer = daemon.wait_for("the client's linger-0 finding", WAIT, |v| {
        is(v, client_addr, server_addr)
    });
    let receiver = daemon.wait_for("the server's finding", WAIT, |v| {
        is(v, server_addr, client_addr)
    });
    let pid = std::process::id();
    assert_verdict(&closer, "local_close", "linger_zero", "confirmed");
    assert!(
        has_evidence(
            &closer,
            &format!(
                "the peer, kao-server (pid {pid}) at {server_addr} on this host, saw the reset"
            )
        ),
        "{closer:#}"
    );
    assert_eq!(receiver["verdict"], "peer_reset", "{receiver:#}");
    assert_eq!(receiver["confidence"], "confirmed", "{receiver:#}");
    assert!(
        has_evidence(
            &receiver,
            &format!(
                "the other end is kao-client (pid {pid}) on this host, and it reset the connection (linger_zero)"
            )
        ),
        "{receiver:#}"
    );
    assert_eq!(receiver["actions"], closer["actions"], "{receiver:#}");
    assert_eq!(
        receiver["actions"][0]["action"], "remove_zero_linger",
        "{receiver:#}"
    );
}
