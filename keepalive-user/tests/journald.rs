//! journald really receives the sink's structured fields.
//!
//! Privileged: when no journal is running it starts `/lib/systemd/systemd-journald` (root
//! only), then reads the entries back with `journalctl -o json`. `#[ignore]`d: a plain
//! `cargo test` reports it as ignored; `cargo xtask test` runs it as root.

use std::{
    os::unix::net::UnixDatagram,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use keepalive_observer::{
    correlate::Finding,
    event::TcpEvent,
    sink::{JOURNAL_SOCKET, JournaldSink, Sink, WallClock},
};
use serde_json::{Value, json};

const JOURNALD: &str = "/lib/systemd/systemd-journald";
/// journald's runtime directory: sockets, and the varlink socket `journalctl --sync` uses.
const JOURNAL_RUNTIME_DIR: &str = "/run/systemd/journal";
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// Whether a journal listens on the socket (a stopped journald leaves a stale socket file).
fn journal_listening() -> bool {
    UnixDatagram::unbound()
        .and_then(|socket| socket.connect(JOURNAL_SOCKET))
        .is_ok()
}

/// Polls `ready` until it holds or the timeout passes.
fn wait_for(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL);
    }
}

/// A systemd-journald this test started: stopped by its PID when dropped, and its runtime
/// directory removed when the test created it, so no stale socket outlives the test.
struct StartedJournald {
    child: Child,
    created_runtime_dir: bool,
}

impl StartedJournald {
    fn start() -> Self {
        let created_runtime_dir = !Path::new(JOURNAL_RUNTIME_DIR).exists();
        let child = Command::new(JOURNALD)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {JOURNALD}: {e}"));
        let mut journald = Self {
            child,
            created_runtime_dir,
        };
        let listening = wait_for(READY_TIMEOUT, || {
            journald.child.try_wait().ok().flatten().is_none() && journal_listening()
        });
        assert!(
            listening,
            "{JOURNALD} (pid {}) did not listen on {JOURNAL_SOCKET} within {READY_TIMEOUT:?}",
            journald.child.id()
        );
        journald
    }
}

impl Drop for StartedJournald {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: plain kill(2) on the PID of the child this test spawned and has not reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let exited = wait_for(READY_TIMEOUT, || {
            self.child.try_wait().ok().flatten().is_some()
        });
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if self.created_runtime_dir {
            let _ = std::fs::remove_dir_all(JOURNAL_RUNTIME_DIR);
        }
    }
}

/// Runs a command to completion within the timeout, killing it (by its PID) if it hangs.
fn run_bounded(command: &mut Command) -> Option<Vec<u8>> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let finished = wait_for(READY_TIMEOUT, || child.try_wait().ok().flatten().is_some());
    if !finished {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    }
    child
        .wait_with_output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| out.stdout)
}

/// The journal's entries carrying `COOKIE=cookie`, once there are `count` of them.
fn read_back(cookie: u64, count: usize) -> Vec<Value> {
    // `--sync` asks journald (over its varlink socket, no systemd needed) to write out what it
    // has received; the poll covers the datagram still being in flight.
    let _ = run_bounded(Command::new("journalctl").arg("--sync"));
    let mut entries = Vec::new();
    let found = wait_for(READY_TIMEOUT, || {
        let output = run_bounded(Command::new("journalctl").args([
            "-o",
            "json",
            "--no-pager",
            &format!("COOKIE={cookie}"),
        ]));
        entries = output
            .map(|out| {
                String::from_utf8_lossy(&out)
                    .lines()
                    .filter_map(|line| serde_json::from_str(line).ok())
                    .collect()
            })
            .unwrap_or_default();
        entries.len() >= count
    });
    assert!(
        found,
        "journalctl showed {} of {count} entries with COOKIE={cookie}: {entries:?}",
        entries.len()
    );
    entries
}

fn unique_cookie() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (u64::from(std::process::id()) << 32) | u64::from(nanos)
}

fn event(cookie: u64, mono_ns: u64) -> TcpEvent {
    serde_json::from_value(json!({
        "mono_ns": mono_ns,
        "kind": "reset_sent",
        "cookie": cookie,
        "netns": 4_026_531_840_u32,
        "netns_cookie": 1,
        "local": "127.0.0.1:41234",
        "remote": "127.0.0.1:8080",
        "old_state": "ESTABLISHED",
        "new_state": "ESTABLISHED",
        "reason": {"raw": 11, "name": "TCP_ABORT_ON_CLOSE"},
        "sk_err": null,
        "idle_rx_ms": 12,
        "idle_tx_ms": 34,
        "keepalive": {
            "enabled": true,
            "idle_ms": 60_000,
            "interval_ms": null,
            "count": 5,
            "probes_out": 0
        },
        "retransmits": 0,
        "tcp_flags": null,
        "bytes": null,
        "task": {"pid": 1234, "tid": 1234, "comm": "python3"},
        "context": null
    }))
    .expect("test event")
}

fn finding(cookie: u64, mono_ns: u64) -> Finding {
    serde_json::from_value(json!({
        "mono_ns": mono_ns,
        "verdict": "middlebox_drop",
        "kind": "idle_expiry_rst",
        "confidence": "likely",
        "cookie": cookie,
        "netns": 4_026_531_840_u32,
        "netns_cookie": 1,
        "local": "[fd6b:a1::2]:41234",
        "remote": "[fd6b:a1::1]:80",
        "pid": 4321,
        "comm": "java",
        "idle_ms": 1_805_000,
        "keepalive": null,
        "rst_ttl": 64,
        "peer_ttl": 63,
        "reason": null,
        "timeout_window_ms": [1_790_000, 1_805_000],
        "evidence": ["RST received after 1805 s idle", "RST TTL 64,\npeer TTL 63"],
        "advice": "enable TCP keepalive with idle < 1790 s"
    }))
    .expect("test finding")
}

#[test]
#[ignore = "needs root to start systemd-journald: `cargo xtask test` runs it as root"]
fn journald_receives_structured_fields() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(root, "needs root to start systemd-journald");
    let _journald = if journal_listening() {
        None
    } else {
        assert!(
            Path::new(JOURNALD).exists(),
            "no journal is running and {JOURNALD} is missing (`cargo xtask setup` installs systemd)"
        );
        Some(StartedJournald::start())
    };

    let clock = WallClock::now().expect("clocks readable");
    let mut sink = JournaldSink::open(clock)
        .map(|sink| sink.map(|sink| sink.with_events(true)))
        .expect("journal socket usable")
        .expect("journal socket exists");
    let cookie = unique_cookie();
    let mono_ns = 245_123_456_789;
    sink.event(&event(cookie, mono_ns)).expect("event sent");
    sink.finding(&finding(cookie, mono_ns))
        .expect("finding sent");

    let entries = read_back(cookie, 2);
    let by_type = |record: &str| {
        entries
            .iter()
            .find(|entry| entry["RECORD_TYPE"] == record)
            .unwrap_or_else(|| panic!("no {record} entry in {entries:?}"))
    };

    let event = by_type("event");
    let event_time = clock.rfc3339(mono_ns);
    let expected = [
        ("PRIORITY", "6"),
        ("SYSLOG_IDENTIFIER", "keepalive-observer"),
        ("TCP_EVENT", "reset_sent"),
        ("LOCAL_ADDR", "127.0.0.1:41234"),
        ("REMOTE_ADDR", "127.0.0.1:8080"),
        ("RESET_REASON", "TCP_ABORT_ON_CLOSE"),
        ("STATE", "ESTABLISHED"),
        ("IDLE_RX_MS", "12"),
        ("IDLE_TX_MS", "34"),
        ("KEEPALIVE", "true"),
        ("KEEPALIVE_IDLE_MS", "60000"),
        ("NETNS", "4026531840"),
        ("OBSERVED_PID", "1234"),
        ("OBSERVED_COMM", "python3"),
        ("EVENT_TIME", event_time.as_str()),
    ];
    for (field, value) in expected {
        assert_eq!(event[field], value, "event field {field} in {event}");
    }
    let message = event["MESSAGE"].as_str().expect("MESSAGE is text");
    assert!(
        message.starts_with("reset_sent 127.0.0.1:41234 -> 127.0.0.1:8080"),
        "{message}"
    );
    // The sender's own PID stays journald's trusted field, apart from the observed one.
    assert_eq!(event["_PID"], std::process::id().to_string());

    let finding = by_type("finding");
    let expected = [
        ("PRIORITY", "4"),
        ("VERDICT", "middlebox_drop"),
        ("KIND", "idle_expiry_rst"),
        ("CONFIDENCE", "likely"),
        ("LOCAL_ADDR", "[fd6b:a1::2]:41234"),
        ("REMOTE_ADDR", "[fd6b:a1::1]:80"),
        ("IDLE_MS", "1805000"),
        ("RST_TTL", "64"),
        ("PEER_TTL", "63"),
        ("TIMEOUT_WINDOW_MS", "1790000,1805000"),
        ("ADVICE", "enable TCP keepalive with idle < 1790 s"),
        // Sent in the binary-safe form: the value holds a newline.
        (
            "EVIDENCE",
            "RST received after 1805 s idle; RST TTL 64,\npeer TTL 63",
        ),
    ];
    for (field, value) in expected {
        assert_eq!(finding[field], value, "finding field {field} in {finding}");
    }
    assert!(
        finding["MESSAGE"]
            .as_str()
            .is_some_and(|m| m.starts_with("finding middlebox_drop idle_expiry_rst likely")),
        "{finding}"
    );
}
