//! `keepalive-observer sockets` against real connections in the lab (keepalive-lab's
//! `Topology`: client ⇄ middlebox ⇄ server, each in its own network namespace). The
//! middlebox forgets flows idle for more than 3 s and answers their next segment with an RST;
//! the audit is given that timeout as the destination's window, judges each connection after
//! an idle gap that outlasts it, and the connection's next use shows whether it was right.
//!
//! The audits read only the lab's own namespaces (`--netns`), and every connection is found
//! by its own ports. Every wait is bounded; the only fixed sleeps are the idle gaps the tests
//! are about.

mod common;

use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::Duration,
};

use common::{Daemon, lab_topology, require_root};
use keepalive_lab::{
    EchoServer, Keepalive, MiddleboxMode, Netns, Topology, in_netns, read_retrying, set_keepalive,
};
use keepalive_schema::socket::{Risk, Side, SocketLine, SocketsLine};

const PORT: u16 = 7000;
/// Bound on every blocking socket call.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The middlebox's established timeout, the window the audits are given, and an idle gap
/// that outlasts it.
const CT_TIMEOUT_SECS: u32 = 3;
const IDLE_GAP: Duration = Duration::from_millis(4500);
/// An idle gap the middlebox lets through.
const SURVIVED_GAP: Duration = Duration::from_millis(1500);

struct Lab {
    topology: Topology,
    /// An empty state directory: only the given windows count, whatever the host learned.
    nothing_learned: StateDir,
}

impl Lab {
    fn new() -> Lab {
        let topology = lab_topology(MiddleboxMode::Reject, CT_TIMEOUT_SECS);
        Lab {
            topology,
            nothing_learned: StateDir::new("none"),
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

    fn connect(&self, keepalive: Option<Keepalive>) -> TcpStream {
        let to = self.server_addr();
        let stream = in_netns(self.topology.client().netns(), || {
            TcpStream::connect_timeout(&to, IO_TIMEOUT)
        })
        .expect("enter the client namespace")
        .unwrap_or_else(|error| panic!("connect to {to}: {error}"));
        with_timeouts(&stream);
        set_keepalive(&stream, keepalive).expect("set keepalive");
        stream
    }

    /// `sockets --netns NS --window DEST=3 --format json`, parsed; the connections only.
    fn audit(&self, netns: &Netns, window: &str) -> Vec<SocketLine> {
        let window = format!("{window}={CT_TIMEOUT_SECS}");
        let state_dir = self.nothing_learned.arg();
        self.audit_with(netns, &["--window", &window, "--state-dir", state_dir])
    }

    /// `sockets --netns NS --format json ARGS`, parsed; the connections only.
    fn audit_with(&self, netns: &Netns, args: &[&str]) -> Vec<SocketLine> {
        let output = Command::new(env!("CARGO_BIN_EXE_keepalive-observer"))
            .args(["sockets", "--format", "json", "--netns", netns.name()])
            .args(args)
            .output()
            .expect("run keepalive-observer sockets");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "sockets failed: {}\n{stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
        let lines: Vec<SocketsLine> = stdout
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect();
        assert!(
            matches!(lines.last(), Some(SocketsLine::Audit(audit)) if audit.namespaces == 1),
            "the audit line comes last and counts the one namespace: {stdout}"
        );
        lines
            .into_iter()
            .filter_map(|line| match line {
                SocketsLine::Socket(socket) => Some(*socket),
                _ => None,
            })
            .collect()
    }

    fn client_audit(&self) -> Vec<SocketLine> {
        self.audit(
            self.topology.client().netns(),
            &self.server_addr().to_string(),
        )
    }
}

/// The audit's line for the connection whose local end is `local`.
fn line_of(lines: &[SocketLine], local: SocketAddr) -> &SocketLine {
    let mine: Vec<_> = lines.iter().filter(|l| l.local == local).collect();
    assert_eq!(mine.len(), 1, "one line for {local}: {lines:#?}");
    mine[0]
}

/// The metrics page, over HTTP/1.0 (the server closes).
fn scrape(addr: SocketAddr) -> String {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, IO_TIMEOUT) else {
        return String::new();
    };
    with_timeouts(&stream);
    let mut response = String::new();
    let sent = write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if sent
        .and_then(|()| stream.read_to_string(&mut response))
        .is_err()
    {
        return String::new();
    }
    response
}

fn with_timeouts(stream: &TcpStream) {
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .expect("write timeout");
}

fn round_trip(stream: &mut TcpStream, payload: &[u8]) -> io::Result<()> {
    stream.write_all(payload)?;
    let mut echoed = vec![0u8; payload.len()];
    stream.read_exact(&mut echoed)?;
    assert_eq!(echoed, payload);
    Ok(())
}

fn assert_judged(line: &SocketLine, risk: Risk, code: &str) {
    assert_eq!((line.risk, line.code.as_str()), (risk, code), "{line:#?}");
    let window = line
        .window
        .as_ref()
        .expect("judged against the given window");
    assert_eq!(
        window.bound_ms,
        u64::from(CT_TIMEOUT_SECS) * 1000,
        "{line:#?}"
    );
    assert_eq!(window.source, "given", "{line:#?}");
}

#[test]
#[ignore = "needs root (eBPF socket iterator, network namespaces): `cargo xtask test` runs it as root"]
fn a_pooled_connection_idle_past_the_bound_with_keepalive_off_will_reset_and_does() {
    require_root("a_pooled_connection_idle_past_the_bound_with_keepalive_off_will_reset_and_does");
    let lab = Lab::new();
    let _echo = lab.echo();
    let mut client = lab.connect(None);
    round_trip(&mut client, b"before idle").expect("first request");
    thread::sleep(IDLE_GAP);

    let lines = lab.client_audit();
    let line = line_of(&lines, client.local_addr().expect("local address"));
    assert_judged(line, Risk::WillReset, "idle_past_bound");
    assert_eq!(line.side, Side::Connected, "{line:#?}");
    assert_eq!(line.remote, lab.server_addr());
    assert_eq!(line.state, "ESTAB");
    assert_eq!(line.pid, Some(std::process::id()), "{line:#?}");
    let keepalive = line.keepalive.as_ref().expect("keepalive settings read");
    assert!(!keepalive.on, "{line:#?}");
    let idle = line.idle_rx_ms.expect("tcp_info read");
    assert!(idle >= 4000, "idle {idle} ms after a 4.5 s gap: {line:#?}");
    assert!(line.reason.contains("keepalive off"), "{line:#?}");

    let error = round_trip(&mut client, b"after idle").expect_err("the audit said will_reset");
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
}

#[test]
#[ignore = "needs root (eBPF socket iterator, network namespaces): `cargo xtask test` runs it as root"]
fn a_connection_with_keepalive_below_the_bound_is_ok_and_survives() {
    require_root("a_connection_with_keepalive_below_the_bound_is_ok_and_survives");
    let lab = Lab::new();
    let _echo = lab.echo();
    let keepalive = Keepalive {
        idle_secs: 1,
        interval_secs: 1,
        count: 3,
    };
    let mut client = lab.connect(Some(keepalive));
    round_trip(&mut client, b"before idle").expect("first request");
    thread::sleep(IDLE_GAP);

    let lines = lab.client_audit();
    let line = line_of(&lines, client.local_addr().expect("local address"));
    assert_judged(line, Risk::Ok, "keepalive_below_bound");
    let settings = line.keepalive.as_ref().expect("keepalive settings read");
    assert!(settings.on, "{line:#?}");
    assert_eq!(
        (settings.idle_ms, settings.interval_ms, settings.count),
        (1000, 1000, 3),
        "the socket's own values, read by the socket iterator: {line:#?}"
    );
    assert_eq!(settings.idle_from, "socket");
    let timer = line.timer.as_ref().expect("the keepalive timer is armed");
    assert_eq!(timer.kind, "keepalive", "{line:#?}");
    assert!(timer.fires_in_ms.is_some_and(|ms| ms <= 1000), "{line:#?}");
    // Probes answered: data-idle past the bound, yet the last segment received is recent.
    assert!(line.idle_rx_ms.is_some_and(|ms| ms < 2000), "{line:#?}");

    round_trip(&mut client, b"after idle").expect("the audit said ok: it survives");
}

#[test]
#[ignore = "needs root (eBPF socket iterator, network namespaces): `cargo xtask test` runs it as root"]
fn a_connection_with_keepalive_idle_above_the_bound_will_reset_and_does() {
    require_root("a_connection_with_keepalive_idle_above_the_bound_will_reset_and_does");
    let lab = Lab::new();
    let _echo = lab.echo();
    let keepalive = Keepalive {
        idle_secs: 10,
        interval_secs: 1,
        count: 3,
    };
    let mut client = lab.connect(Some(keepalive));
    round_trip(&mut client, b"before idle").expect("first request");
    thread::sleep(IDLE_GAP);

    let lines = lab.client_audit();
    let line = line_of(&lines, client.local_addr().expect("local address"));
    assert_judged(line, Risk::WillReset, "keepalive_above_bound");
    let settings = line.keepalive.as_ref().expect("keepalive settings read");
    assert_eq!((settings.on, settings.idle_ms), (true, 10_000), "{line:#?}");
    assert!(line.reason.contains("keepalive idle 10 s"), "{line:#?}");

    let error = round_trip(&mut client, b"after idle").expect_err("the audit said will_reset");
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
}

#[test]
#[ignore = "needs root (eBPF socket iterator, network namespaces): `cargo xtask test` runs it as root"]
fn an_accepted_connection_whose_client_vanished_is_an_orphan_suspect() {
    require_root("an_accepted_connection_whose_client_vanished_is_an_orphan_suspect");
    let lab = Lab::new();
    let listener = in_netns(lab.topology.server().netns(), || {
        TcpListener::bind(lab.server_addr())
    })
    .expect("enter the server namespace")
    .expect("bind the listener");
    let mut client = lab.connect(None);
    let (mut server, _) = listener.accept().expect("accept");
    with_timeouts(&server);
    client.write_all(b"request").expect("send the request");
    read_retrying(&mut server, &mut [0u8; 7]).expect("read the request");
    let client_addr = client.local_addr().expect("local address");
    thread::sleep(IDLE_GAP);
    // The client goes away after the middlebox forgot the flow: its FIN is answered by the
    // middlebox's RST and never reaches the server, which keeps the connection ESTABLISHED.
    drop(client);

    let lines = lab.audit(
        lab.topology.server().netns(),
        &lab.topology.client().ipv4().to_string(),
    );
    let line = lines
        .into_iter()
        .find(|l| l.remote == client_addr)
        .expect("the server's end is still there");
    assert_judged(&line, Risk::OrphanSuspect, "idle_past_peer_windows");
    assert_eq!(line.side, Side::Accepted, "{line:#?}");
    assert_eq!(line.local, lab.server_addr());
    assert_eq!(
        line.state, "ESTAB",
        "the server never heard of the client's close"
    );
    assert!(
        line.reason.contains("client side is probably long gone"),
        "{line:#?}"
    );
    drop(server);
}

/// A state directory for one test alone, removed at the end.
struct StateDir(PathBuf);

impl StateDir {
    fn new(what: &str) -> StateDir {
        static SEQUENCE: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "keepalive-observer-sockets-{what}-{}-{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the state directory");
        StateDir(dir)
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary directory")
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn the_window_the_daemon_learned_judges_the_pool_in_sockets_and_in_the_metrics() {
    require_root("the_window_the_daemon_learned_judges_the_pool_in_sockets_and_in_the_metrics");
    let lab = Lab::new();
    let _echo = lab.echo();
    let state = StateDir::new("learned");
    let metrics = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port");
    let metrics_arg = metrics.to_string();
    let mut daemon = Daemon::start_with_state(
        &[
            "--idle-expiry-floor",
            "2",
            "--state-interval",
            "1",
            "--metrics",
            &metrics_arg,
            "--sockets-interval",
            "1",
        ],
        &state.0,
    );
    let mut teacher = lab.connect(None);
    let mut pooled = lab.connect(None);
    round_trip(&mut pooled, b"pooled").expect("the pooled connection's request");
    round_trip(&mut teacher, b"first").expect("the first request");
    thread::sleep(SURVIVED_GAP);
    round_trip(&mut teacher, b"survives").expect("an idle gap below the timeout survives");
    thread::sleep(IDLE_GAP);
    let error = round_trip(&mut teacher, b"dies").expect_err("the middlebox forgot the flow");
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
    let local = teacher.local_addr().expect("local address").to_string();
    daemon.wait_for("the finding that teaches the window", IO_TIMEOUT, |v| {
        v["type"] == "finding" && v["local"] == local.as_str()
    });
    // While it runs, the daemon audits the sockets every second against what it saved: the
    // pooled connection shows in the gauges.
    let series = format!(
        "keepalive_observer_connections{{destination=\"{}\",risk=\"will_reset\"}}",
        lab.server_addr()
    );
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    let mut last = String::new();
    while !last.lines().any(|line| line == format!("{series} 1")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {series} 1 in the metrics:\n{last}"
        );
        thread::sleep(Duration::from_millis(200));
        last = scrape(metrics);
    }
    let (status, _) = daemon.stop();
    assert!(
        status.success(),
        "the daemon saves its state at exit: {status}"
    );

    let client = lab.topology.client().netns();
    let pooled_addr = pooled.local_addr().expect("local address");
    let lines = lab.audit_with(client, &["--state-dir", state.arg()]);
    let line = line_of(&lines, pooled_addr);
    assert_eq!(
        (line.risk, line.code.as_str()),
        (Risk::WillReset, "idle_past_bound"),
        "{line:#?}"
    );
    let window = line.window.as_ref().expect("the learned window");
    assert_eq!(window.source, "learned", "{line:#?}");
    let survived = u64::try_from(SURVIVED_GAP.as_millis()).expect("fits");
    assert!(window.bound_ms.abs_diff(survived) <= 300, "{line:#?}");
    assert!(
        window.upper_ms.is_some_and(|hi| hi > window.bound_ms),
        "{line:#?}"
    );

    let nothing = StateDir::new("empty");
    let lines = lab.audit_with(client, &["--state-dir", nothing.arg()]);
    let line = line_of(&lines, pooled_addr);
    assert_eq!(
        (line.risk, line.code.as_str()),
        (Risk::Ok, "no_window"),
        "{line:#?}"
    );
}

#[test]
#[ignore = "needs root (eBPF socket iterator, network namespaces): `cargo xtask test` runs it as root"]
fn without_cap_sys_admin_the_namespaces_it_cannot_enter_are_said_missing() {
    require_root("without_cap_sys_admin_the_namespaces_it_cannot_enter_are_said_missing");
    let lab = Lab::new();
    // setpriv (util-linux) drops CAP_SYS_ADMIN from the bounding set: the audit keeps the
    // capabilities of the daemon's unit, which cannot setns.
    let output = Command::new("setpriv")
        .args(["--bounding-set", "-sys_admin"])
        .arg(env!("CARGO_BIN_EXE_keepalive-observer"))
        .args(["sockets", "--format", "json", "--state-dir"])
        .arg(lab.nothing_learned.arg())
        .output()
        .expect("run keepalive-observer sockets under setpriv");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let audit = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<SocketsLine>(line).ok())
        .find_map(|line| match line {
            SocketsLine::Audit(audit) => Some(audit),
            _ => None,
        })
        .unwrap_or_else(|| panic!("an audit line: {stdout}"));
    assert!(
        audit.namespaces >= 1,
        "its own namespace is read: {audit:?}"
    );
    assert!(
        audit
            .incomplete
            .iter()
            .any(|note| note.contains("could not be entered (setns needs CAP_SYS_ADMIN)")),
        "the lab's three namespaces at least are said missing: {audit:?}"
    );
}

#[test]
fn an_unknown_namespace_is_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_keepalive-observer"))
        .args(["sockets", "--netns", "kao-no-such-namespace"])
        .output()
        .expect("run keepalive-observer sockets");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown network namespace `kao-no-such-namespace`"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_corrupt_state_file_is_a_clear_error() {
    let state = StateDir::new("corrupt");
    std::fs::write(state.0.join("state.json"), "{ not json").expect("write the state file");
    let output = Command::new(env!("CARGO_BIN_EXE_keepalive-observer"))
        .args(["sockets", "--state-dir", state.arg()])
        .output()
        .expect("run keepalive-observer sockets");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("state.json is corrupt"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_malformed_window_is_a_clear_error() {
    for (window, says) in [
        ("198.51.100.2:80", "is not DEST=SECONDS"),
        ("198.51.100.2:80=soon", "`soon` is not a number of seconds"),
        (
            "nowhere=5",
            "`nowhere` in `nowhere=5` is neither an address nor address:port",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_keepalive-observer"))
            .args(["sockets", "--window", window])
            .output()
            .expect("run keepalive-observer sockets");
        assert_eq!(output.status.code(), Some(2), "usage error for {window}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{window}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
