//! Privileged: load the real programs, make real resets and keepalive expiries happen, and
//! check the daemon's JSON events (tuple, reason name, idle time, keepalive settings, process).

mod common;

use std::{
    io::Write as _,
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use common::{Daemon, require_root};
use keepalive_lab::daemon::is_event;
use keepalive_lab::{Keepalive, Netns, in_netns, read_retrying, set_keepalive, set_linger_abort};
use serde_json::Value;

/// How far an idle time measured by the kernel (in jiffies, HZ 100 to 1000) may stray from
/// the sleep that made it: one jiffy at HZ 100, plus scheduling slack.
const IDLE_TOLERANCE_MS: u64 = 150;
const WAIT: Duration = Duration::from_secs(10);

fn loopback_pair() -> (TcpStream, TcpStream, SocketAddr, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    let client_addr = client.local_addr().unwrap();
    let server_addr = server.local_addr().unwrap();
    (client, server, client_addr, server_addr)
}

fn comm() -> String {
    std::fs::read_to_string("/proc/thread-self/comm")
        .expect("read comm")
        .trim()
        .to_owned()
}

fn assert_idle_near(value: &serde_json::Value, field: &str, slept: Duration) {
    let idle = value[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing: {value}"));
    let slept = u64::try_from(slept.as_millis()).unwrap();
    assert!(
        idle + IDLE_TOLERANCE_MS >= slept && idle <= slept + IDLE_TOLERANCE_MS,
        "{field} {idle} ms, slept {slept} ms (±{IDLE_TOLERANCE_MS} ms): {value}"
    );
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn connect_to_a_closed_port_is_refused_and_the_refusal_counted_not_sent() {
    require_root("connect_to_a_closed_port_is_refused_and_the_refusal_counted_not_sent");
    let mut daemon = Daemon::start(&[]);
    // Bind and drop a listener to get a port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let error = TcpStream::connect(closed).expect_err("nobody listens there");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
    let closed_s = closed.to_string();
    let received = daemon.wait_for("the client's RST", WAIT, |v| {
        v["event"] == "reset_received" && v["remote"] == closed_s && v["old_state"] == "SYN_SENT"
    });
    assert_ne!(received["cookie"], 0);
    assert_eq!(received["context"]["origin"], "connected", "{received}");
    assert_eq!(received["context"]["owner"]["pid"], std::process::id());
    assert_eq!(received["context"]["rst"]["ttl"], 64, "{received}");
    let client = received["local"].as_str().unwrap().to_owned();
    daemon.wait_for("the client's refused finding", WAIT, |v| {
        v["type"] == "finding" && v["kind"] == "refused" && v["local"] == client
    });
    let seen = daemon.all(|_| true);
    let (status, rest) = daemon.stop();
    assert!(status.success());
    let lines: Vec<&Value> = seen.iter().chain(&rest).collect();
    // The RST refusing the SYN killed no connection: the kernel side counts it and sends
    // nothing, so a SYN flood costs no record per packet.
    let sent: Vec<_> = lines
        .iter()
        .filter(|v| v["event"] == "reset_sent" && v["local"] == closed_s)
        .collect();
    assert!(
        sent.is_empty(),
        "the refusal crossed the ring buffer: {sent:?}"
    );
    assert_no_error_after_the_rst(&lines, &client);
    let stats = rest
        .iter()
        .rfind(|v| v["type"] == "stats")
        .expect("final stats");
    assert!(stats["syn_refusals"].as_u64() >= Some(1), "{stats}");
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn linger_zero_close_sends_a_reset_from_the_closing_process() {
    require_root("linger_zero_close_sends_a_reset_from_the_closing_process");
    let mut daemon = Daemon::start(&[]);
    let (client, mut server, client_addr, server_addr) = loopback_pair();
    set_keepalive(
        &client,
        Some(Keepalive {
            idle_secs: 7,
            interval_secs: 3,
            count: 4,
        }),
    )
    .unwrap();
    let slept = Duration::from_millis(1200);
    std::thread::sleep(slept);
    set_linger_abort(&client).unwrap();
    drop(client);
    let mut buf = [0u8; 1];
    let error = read_retrying(&mut server, &mut buf).expect_err("the peer aborted");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);

    let (local, remote) = (client_addr.to_string(), server_addr.to_string());
    let sent = daemon.wait_for("the linger-0 RST", WAIT, |v| {
        is_event(v, "reset_sent", &local, &remote)
    });
    // 6.18 sends it from tcp_disconnect: the reason is TCP_STATE, not TCP_ABORT_ON_LINGER.
    assert!(
        ["TCP_STATE", "TCP_ABORT_ON_LINGER"].contains(&sent["reason"].as_str().unwrap()),
        "{sent}"
    );
    assert_eq!(sent["pid"], std::process::id());
    assert_eq!(sent["comm"], comm());
    assert_idle_near(&sent, "idle_rx_ms", slept);
    assert_eq!(sent["keepalive"]["enabled"], true);
    assert_eq!(sent["keepalive"]["idle_ms"], 7000);
    assert_eq!(sent["keepalive"]["interval_ms"], 3000);
    assert_eq!(sent["keepalive"]["count"], 4);

    let received = daemon.wait_for("the server's RST", WAIT, |v| {
        is_event(v, "reset_received", &remote, &local)
    });
    assert_idle_near(&received, "idle_rx_ms", slept);
    assert_eq!(received["keepalive"]["enabled"], false);
    let seen = daemon.all(|_| true);
    let (_, rest) = daemon.stop();
    let lines: Vec<&Value> = seen.iter().chain(&rest).collect();
    assert_no_error_after_the_rst(&lines, &remote);
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn closing_with_unread_data_aborts_the_connection() {
    require_root("closing_with_unread_data_aborts_the_connection");
    let mut daemon = Daemon::start(&[]);
    let (mut client, server, client_addr, server_addr) = loopback_pair();
    client.write_all(b"unread request").unwrap();
    // Wait until the data sits in the server's receive queue, without reading it.
    let deadline = Instant::now() + WAIT;
    let mut peek = [0u8; 1];
    while server.peek(&mut peek).unwrap() == 0 {
        assert!(Instant::now() < deadline, "data never arrived");
    }
    drop(server);
    let (local, remote) = (server_addr.to_string(), client_addr.to_string());
    let sent = daemon.wait_for("the abort-on-close RST", WAIT, |v| {
        is_event(v, "reset_sent", &local, &remote)
    });
    assert_eq!(sent["reason"], "TCP_ABORT_ON_CLOSE", "{sent}");
    assert_eq!(sent["pid"], std::process::id());
    client.shutdown(Shutdown::Both).ok();
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn unanswered_keepalive_probes_end_in_a_keepalive_timeout_reset() {
    require_root("unanswered_keepalive_probes_end_in_a_keepalive_timeout_reset");
    let mut daemon = Daemon::start(&[]);
    let netns = Netns::create("katimeout").expect("create netns");
    let inode = netns.inode().unwrap();
    let listener = in_netns(&netns, || TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .expect("bind in netns");
    let server_addr = listener.local_addr().unwrap();
    let client = in_netns(&netns, || TcpStream::connect(server_addr))
        .unwrap()
        .expect("connect in netns");
    let (_server, _) = listener.accept().unwrap();
    let client_addr = client.local_addr().unwrap();
    set_keepalive(
        &client,
        Some(Keepalive {
            idle_secs: 1,
            interval_secs: 1,
            count: 2,
        }),
    )
    .unwrap();
    // From now on the server's answers (probe ACKs) vanish.
    netns
        .nft(&format!(
            "table inet kao {{\n chain out {{\n  type filter hook output priority 0;\n  \
             tcp sport {} drop\n }}\n}}\n",
            server_addr.port()
        ))
        .expect("nft drop rule");
    let (local, remote) = (client_addr.to_string(), server_addr.to_string());
    let reset = daemon.wait_for("the keepalive-timeout RST", Duration::from_secs(20), |v| {
        is_event(v, "reset_sent", &local, &remote)
    });
    assert_eq!(reset["reason"], "TCP_KEEPALIVE_TIMEOUT", "{reset}");
    assert_eq!(reset["netns"], inode);
    assert_eq!(reset["keepalive"]["count"], 2);
    let timers = daemon.all(|v| is_event(v, "keepalive_timer", &local, &remote));
    let probes: Vec<u64> = timers
        .iter()
        .map(|t| t["keepalive"]["probes_out"].as_u64().unwrap())
        .collect();
    // A firing with no probe outstanding is the healthy case and sends nothing; the first
    // one sent already has a probe unanswered.
    assert!(
        probes.first() == Some(&1) && !probes.contains(&0),
        "probes before each firing sent: {probes:?}"
    );
    let seen = daemon.all(|_| true);
    let (_, rest) = daemon.stop();
    let lines: Vec<&Value> = seen.iter().chain(&rest).collect();
    assert_no_error_after_the_rst(&lines, &local);
}

/// The first RST record of a death decides it: the kernel side does not send the error report
/// that follows (ECONNREFUSED, ECONNRESET, ETIMEDOUT) for the socket at `local`.
fn assert_no_error_after_the_rst(lines: &[&Value], local: &str) {
    let errors: Vec<_> = lines
        .iter()
        .filter(|v| v["event"] == "socket_error" && v["local"] == local)
        .collect();
    assert!(
        errors.is_empty(),
        "the error report of a death an RST record decided crossed too: {errors:?}"
    );
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn sigint_detaches_and_prints_totals() {
    require_root("sigint_detaches_and_prints_totals");
    let daemon = Daemon::start(&[]);
    let (status, rest) = daemon.stop();
    assert!(status.success(), "exit status {status}");
    let stats = rest
        .iter()
        .find(|v| v["type"] == "stats")
        .unwrap_or_else(|| panic!("no stats line at exit: {rest:?}"));
    assert_eq!(stats["kernel_lost"], 0);
}
