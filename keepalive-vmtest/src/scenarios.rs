//! The resets of the privileged event tests (keepalive-user/tests/events.rs), on loopback in
//! one network namespace: each makes the kernel send or receive RSTs, then checks the
//! daemon's events and the finding the correlator draws from them.

use std::{
    io::{Read as _, Write as _},
    mem,
    net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use keepalive_lab::daemon::{Daemon, is_event, is_finding};
use keepalive_lab::{
    Keepalive,
    flood::{ACK, send_segments},
    set_keepalive, set_linger_abort,
};
use keepalive_schema::finding::{FindingKind, Verdict};
use serde_json::Value;

/// How long an event or finding may take to show up (software emulation is slow).
const WAIT: Duration = Duration::from_secs(30);
/// Source port of the stray ACK: no socket uses it, so the RST answering it is dropped.
const STRAY_ACK_PORT: u16 = 40_999;
/// How far an idle time measured in jiffies may stray from the sleep that made it, under
/// emulation.
const IDLE_TOLERANCE_MS: u64 = 400;

/// What the kernel and the attached hooks let the checks expect.
#[derive(Debug)]
pub struct Expect {
    /// The kernel names reset reasons (6.10 and later).
    pub reasons: bool,
    /// Some hook sees RSTs answering segments (`RST in reply` attached).
    pub replies: bool,
    /// Hooks see a send after an idle gap and the reply to it.
    pub idle: bool,
}

/// Connecting to a port nobody listens on: the kernel answers the SYN with an RST for no
/// socket (NO_SOCKET), the client gets ECONNREFUSED.
pub fn no_socket(daemon: &mut Daemon, expect: &Expect) -> Result<String> {
    let closed = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port")?;
    match TcpStream::connect(closed) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => bail!("connect to the closed port {closed}: expected ECONNREFUSED, got {other:?}"),
    }
    let closed_s = closed.to_string();
    let received = daemon.wait_for("the client's RST in SYN_SENT", WAIT, |v| {
        v["event"] == "reset_received" && v["remote"] == closed_s && v["old_state"] == "SYN_SENT"
    })?;
    let client = str_field(&received, "local")?;
    daemon.wait_for("the refused finding", WAIT, |v| {
        is_finding(v, Verdict::PeerReset, FindingKind::Refused, &client)
    })?;
    if !expect.replies {
        return Ok("ECONNREFUSED and the client's RST seen; no hook for RSTs in reply".into());
    }
    // Refusing a SYN kills no connection: the kernel side counts it instead of sending it.
    let stats = daemon.wait_for("the refusal counted", WAIT, |v| {
        v["type"] == "stats" && v["syn_refusals"].as_u64() >= Some(1)
    })?;
    let stray = daemon.all(|v| v["event"] == "reset_sent" && v["local"] == closed_s);
    ensure!(
        stray.is_empty(),
        "a refused SYN crossed the ring buffer: {stray:?}"
    );
    // A bare ACK to the closed port is a segment of a connection this host does not have:
    // that RST crosses, with no socket and the answered segment's flags.
    let source = SocketAddrV4::new(Ipv4Addr::LOCALHOST, STRAY_ACK_PORT);
    let target = SocketAddrV4::new(Ipv4Addr::LOCALHOST, closed.port());
    send_segments(source, target, ACK, 1, WAIT).context("sending a stray ACK")?;
    let reset = daemon.wait_for("the NO_SOCKET reset", WAIT, |v| {
        v["event"] == "reset_sent" && v["local"] == closed_s && v["remote"] == source.to_string()
    })?;
    ensure!(reset["cookie"] == 0, "no socket owns the segment: {reset}");
    check_reason(&reset, expect, "NO_SOCKET")?;
    ensure!(
        reset["tcp_flags"] == u64::from(ACK),
        "the RST answers a bare ACK: {reset}"
    );
    daemon.wait_for("the no_socket finding", WAIT, |v| {
        is_finding(v, Verdict::LocalClose, FindingKind::NoSocket, &closed_s)
    })?;
    Ok(format!(
        "refused SYN counted (syn_refusals={}); reset_sent reason={} cookie=0 answering an ACK, \
         finding no_socket",
        stats["syn_refusals"], reset["reason"]
    ))
}

/// The first RST record of a death decides it: the error report that follows (ECONNRESET,
/// ETIMEDOUT) for the socket at `local` is not sent.
fn no_error_after_the_rst(daemon: &mut Daemon, local: &str) -> Result<()> {
    let errors = daemon.all(|v| v["event"] == "socket_error" && v["local"] == local);
    ensure!(
        errors.is_empty(),
        "the error report of a death an RST record decided crossed too: {errors:?}"
    );
    Ok(())
}

/// A client closes with `SO_LINGER {1, 0}` after an idle gap: an RST from the closing
/// process, ECONNRESET on the server.
pub fn linger_zero(daemon: &mut Daemon, expect: &Expect) -> Result<String> {
    let (client, mut server, client_addr, server_addr) = loopback_pair()?;
    let keepalive = Keepalive {
        idle_secs: 7,
        interval_secs: 3,
        count: 4,
    };
    set_keepalive(&client, Some(keepalive))?;
    let slept = Duration::from_millis(1200);
    std::thread::sleep(slept);
    set_linger_abort(&client)?;
    drop(client);
    let mut buf = [0u8; 1];
    match server.read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => bail!("the server should see ECONNRESET, got {other:?}"),
    }
    let (local, remote) = (client_addr.to_string(), server_addr.to_string());
    let sent = daemon.wait_for("the linger-0 RST", WAIT, |v| {
        is_event(v, "reset_sent", &local, &remote)
    })?;
    if expect.reasons {
        let reason = sent["reason"].as_str().unwrap_or_default();
        ensure!(
            ["TCP_STATE", "TCP_ABORT_ON_LINGER"].contains(&reason),
            "linger-0 reason: {sent}"
        );
    } else {
        ensure!(
            sent["reason"].is_null(),
            "this kernel has no reasons: {sent}"
        );
    }
    check_own_process(&sent)?;
    check_idle(&sent, "idle_rx_ms", slept)?;
    ensure!(
        sent["keepalive"]["enabled"] == true
            && sent["keepalive"]["idle_ms"] == 7000
            && sent["keepalive"]["interval_ms"] == 3000
            && sent["keepalive"]["count"] == 4,
        "keepalive settings of the client: {sent}"
    );
    let received = daemon.wait_for("the server's RST", WAIT, |v| {
        is_event(v, "reset_received", &remote, &local)
    })?;
    check_idle(&received, "idle_rx_ms", slept)?;
    daemon.wait_for("the server's peer_abort finding", WAIT, |v| {
        is_finding(v, Verdict::PeerReset, FindingKind::PeerAbort, &remote)
    })?;
    no_error_after_the_rst(daemon, &remote)?;
    let finding = daemon.wait_for("the linger_zero finding", WAIT, |v| {
        is_finding(v, Verdict::LocalClose, FindingKind::LingerZero, &local)
    })?;
    check_confirmed(&finding)?;
    Ok(format!(
        "reset_sent reason={} pid={}; finding linger_zero {}",
        sent["reason"], sent["pid"], finding["confidence"]
    ))
}

/// The server closes with unread data in its receive queue: the kernel aborts with an RST.
pub fn unread_data(daemon: &mut Daemon, expect: &Expect) -> Result<String> {
    let (mut client, server, client_addr, server_addr) = loopback_pair()?;
    client
        .write_all(b"unread request")
        .context("client write")?;
    let deadline = Instant::now() + WAIT;
    let mut peek = [0u8; 1];
    while server.peek(&mut peek).context("peek")? == 0 {
        ensure!(Instant::now() < deadline, "the data never arrived");
    }
    drop(server);
    let (local, remote) = (server_addr.to_string(), client_addr.to_string());
    let sent = daemon.wait_for("the abort-on-close RST", WAIT, |v| {
        is_event(v, "reset_sent", &local, &remote)
    })?;
    check_reason(&sent, expect, "TCP_ABORT_ON_CLOSE")?;
    check_own_process(&sent)?;
    let finding = daemon.wait_for("the abort_on_close finding", WAIT, |v| {
        is_finding(v, Verdict::LocalClose, FindingKind::AbortOnClose, &local)
    })?;
    check_confirmed(&finding)?;
    client.shutdown(Shutdown::Both).ok();
    Ok(format!(
        "reset_sent reason={} pid={}; finding abort_on_close {}",
        sent["reason"], sent["pid"], finding["confidence"]
    ))
}

/// Keepalive 1 s / 1 s / 2 probes on a client whose incoming segments a socket filter drops:
/// the probes go unanswered, the kernel gives up with an RST and ETIMEDOUT.
pub fn keepalive_timeout(daemon: &mut Daemon, expect: &Expect) -> Result<String> {
    let (client, _server, client_addr, server_addr) = loopback_pair()?;
    set_keepalive(
        &client,
        Some(Keepalive {
            idle_secs: 1,
            interval_secs: 1,
            count: 2,
        }),
    )?;
    drop_everything_received(&client)?;
    let (local, remote) = (client_addr.to_string(), server_addr.to_string());
    let reset = daemon.wait_for("the keepalive-timeout RST", WAIT, |v| {
        is_event(v, "reset_sent", &local, &remote)
    })?;
    check_reason(&reset, expect, "TCP_KEEPALIVE_TIMEOUT")?;
    ensure!(reset["keepalive"]["count"] == 2, "keepalive count: {reset}");
    let probes: Vec<u64> = daemon
        .all(|v| is_event(v, "keepalive_timer", &local, &remote))
        .iter()
        .filter_map(|t| t["keepalive"]["probes_out"].as_u64())
        .collect();
    // A firing with no probe outstanding is the healthy case and sends nothing.
    if probes.first() != Some(&1) || probes.contains(&0) {
        let timers = daemon.all(|v| v["event"] == "keepalive_timer");
        let shown: Vec<String> = timers.iter().take(3).map(Value::to_string).collect();
        bail!(
            "probes before each keepalive timer firing of {local}: {probes:?}; {} \
             keepalive_timer events in all, the first: {}",
            timers.len(),
            shown.join(" ")
        );
    }
    let finding = daemon.wait_for("the silent_timeout finding", WAIT, |v| {
        is_finding(
            v,
            Verdict::MiddleboxDrop,
            FindingKind::SilentTimeout,
            &local,
        )
    })?;
    no_error_after_the_rst(daemon, &local)?;
    Ok(format!(
        "keepalive timer probes {probes:?}; reset_sent reason={}; finding silent_timeout {}",
        reset["reason"], finding["confidence"]
    ))
}

/// The keep-alive race: the server closes a connection idle for a second (its keep-alive
/// timeout), the client reuses it and gets the server's RST. The client's finding is the race
/// with the idle time at the server's FIN; the server's is its abort on data (a kernel without
/// reasons answers the data through `tcp_v4_send_reset`, with no reason).
pub fn keepalive_race(daemon: &mut Daemon, expect: &Expect) -> Result<String> {
    let (mut client, mut server, client_addr, server_addr) = loopback_pair()?;
    client.write_all(b"request").context("client write")?;
    server.read_exact(&mut [0u8; 7]).context("server read")?;
    server.write_all(b"reply").context("server write")?;
    client.read_exact(&mut [0u8; 5]).context("client read")?;
    let idle = Duration::from_secs(1);
    std::thread::sleep(idle);
    drop(server);
    let deadline = Instant::now() + WAIT;
    while client
        .peek(&mut [0u8; 1])
        .context("waiting for the server's FIN")?
        != 0
    {
        ensure!(Instant::now() < deadline, "no FIN from the server");
    }
    client.write_all(b"reused").context("client reuse")?;
    let (local, remote) = (client_addr.to_string(), server_addr.to_string());
    let race = daemon.wait_for("the keepalive_race finding", WAIT, |v| {
        is_finding(v, Verdict::PeerReset, FindingKind::KeepaliveRace, &local)
    })?;
    let idle_at_fin = race["facts"]
        .as_array()
        .and_then(|facts| facts.iter().find(|f| f["fact"] == "peer_closed_first"))
        .and_then(|f| f["idle_at_fin_ms"].as_u64())
        .with_context(|| format!("no idle time at the FIN: {race}"))?;
    let slept = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    ensure!(
        idle_at_fin.abs_diff(slept) <= IDLE_TOLERANCE_MS,
        "idle at the FIN {idle_at_fin} ms, slept {slept} ms: {race}"
    );
    if !expect.replies {
        // Before 6.10 the tracepoints show no RST in reply, and when the client's data carries
        // the ACK of the server's FIN the kernel closes without `tcp_reset`: the server's end
        // may send nothing.
        return Ok(format!(
            "keepalive_race {}, idle at the FIN {idle_at_fin} ms; no hook for the server's \
             RST in reply",
            race["confidence"]
        ));
    }
    let server_side = daemon.wait_for("the server's finding", WAIT, |v| {
        v["type"] == "finding" && v["local"] == remote
    })?;
    let kind = server_side["kind"].as_str().unwrap_or_default();
    ensure!(
        kind == "abort_on_data",
        "the server's end: expected abort_on_data, got {server_side}"
    );
    Ok(format!(
        "keepalive_race {}, idle at the FIN {idle_at_fin} ms; server abort_on_data {} \
         (reasons: {})",
        race["confidence"], server_side["confidence"], expect.reasons
    ))
}

/// A client sends after an idle gap longer than the daemon's idle floor (1 s) and the server
/// answers: the reply after idle carries the gap, the evidence a learned idle timeout is
/// built from.
pub fn idle_reply(daemon: &mut Daemon, expect: &Expect) -> Result<String> {
    if !expect.idle {
        return Ok("skipped: no hook for the send or the reply after idle".into());
    }
    let (mut client, mut server, client_addr, server_addr) = loopback_pair()?;
    let mut buf = [0u8; 5];
    let exchange = |client: &mut TcpStream, server: &mut TcpStream, buf: &mut [u8; 5]| {
        client.write_all(b"hello")?;
        server.read_exact(buf)?;
        server.write_all(b"hello")?;
        client.read_exact(buf)
    };
    exchange(&mut client, &mut server, &mut buf).context("the first exchange")?;
    let slept = Duration::from_millis(2500);
    std::thread::sleep(slept);
    exchange(&mut client, &mut server, &mut buf).context("the exchange after idle")?;
    let (local, remote) = (client_addr.to_string(), server_addr.to_string());
    let reply = daemon.wait_for("the client's reply after idle", WAIT, |v| {
        is_event(v, "reply_after_idle", &local, &remote)
    })?;
    let gap = reply["context"]["idle_send"]["gap_ms"]
        .as_u64()
        .with_context(|| format!("no idle send in the context: {reply}"))?;
    let slept_ms = u64::try_from(slept.as_millis())?;
    ensure!(
        gap.abs_diff(slept_ms) <= IDLE_TOLERANCE_MS,
        "idle send gap {gap} ms, slept {slept_ms} ms (±{IDLE_TOLERANCE_MS} ms): {reply}"
    );
    ensure!(
        reply["context"]["owner"]["pid"] == std::process::id(),
        "the idle send should be this process's ({}): {reply}",
        std::process::id()
    );
    Ok(format!(
        "reply_after_idle gap {gap} ms after {slept_ms} ms idle"
    ))
}

fn loopback_pair() -> Result<(TcpStream, TcpStream, SocketAddr, SocketAddr)> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind")?;
    let client = TcpStream::connect(listener.local_addr()?).context("connect")?;
    let (server, _) = listener.accept().context("accept")?;
    let client_addr = client.local_addr()?;
    let server_addr = server.local_addr()?;
    Ok((client, server, client_addr, server_addr))
}

/// Attaches a classic BPF socket filter that drops every segment arriving for `socket`
/// before TCP sees it: the peer's answers vanish as behind a silent middlebox.
fn drop_everything_received(socket: &TcpStream) -> Result<()> {
    // BPF_RET | BPF_K with k = 0: keep no bytes of the packet.
    let mut drop_all = [libc::sock_filter {
        code: 0x06,
        jt: 0,
        jf: 0,
        k: 0,
    }];
    let program = libc::sock_fprog {
        len: 1,
        filter: drop_all.as_mut_ptr(),
    };
    // SAFETY: `program` and the filter it points to outlive the call; the kernel copies them.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const program).cast(),
            libc::socklen_t::try_from(mem::size_of::<libc::sock_fprog>())?,
        )
    };
    if result != 0 {
        return Err(std::io::Error::last_os_error()).context("SO_ATTACH_FILTER");
    }
    Ok(())
}

fn check_reason(event: &Value, expect: &Expect, reason: &str) -> Result<()> {
    if expect.reasons {
        ensure!(
            event["reason"] == reason,
            "expected reason {reason}: {event}"
        );
    } else {
        ensure!(
            event["reason"].is_null(),
            "this kernel has no reasons: {event}"
        );
    }
    Ok(())
}

/// A local close is as sure on a kernel without reset reasons as on one with them.
fn check_confirmed(finding: &Value) -> Result<()> {
    ensure!(
        finding["confidence"] == "confirmed",
        "expected a confirmed finding: {finding}"
    );
    Ok(())
}

fn check_own_process(event: &Value) -> Result<()> {
    ensure!(
        event["pid"] == std::process::id(),
        "the RST should come from this process ({}): {event}",
        std::process::id()
    );
    Ok(())
}

fn check_idle(event: &Value, field: &str, slept: Duration) -> Result<()> {
    let idle = event[field]
        .as_u64()
        .with_context(|| format!("{field} missing: {event}"))?;
    let slept = u64::try_from(slept.as_millis())?;
    ensure!(
        idle + IDLE_TOLERANCE_MS >= slept && idle <= slept + IDLE_TOLERANCE_MS,
        "{field} {idle} ms, slept {slept} ms (±{IDLE_TOLERANCE_MS} ms): {event}"
    );
    Ok(())
}

fn str_field(value: &Value, field: &str) -> Result<String> {
    value[field]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("{field} missing: {value}"))
}
