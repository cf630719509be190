//! Standard output closed by its reader while another output (here the recording) takes the
//! records: the daemon goes on observing, says so, and counts what standard output misses.

mod common;

use std::{
    fs,
    io::{BufRead, BufReader, Read as _},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use common::require_root;
use keepalive_lab::set_linger_abort;

const WAIT: Duration = Duration::from_secs(15);

/// A linger-0 close on loopback; returns the client's address.
fn linger_zero_reset() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    let client_addr = client.local_addr().unwrap().to_string();
    set_linger_abort(&client).unwrap();
    drop(client);
    let _ = server.read(&mut [0u8; 1]);
    client_addr
}

fn wait_until(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < WAIT, "waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "needs root (eBPF programs): `cargo xtask test` runs it as root"]
fn a_closed_stdout_with_a_recording_keeps_the_daemon_observing_and_counts_what_it_misses() {
    require_root(
        "a_closed_stdout_with_a_recording_keeps_the_daemon_observing_and_counts_what_it_misses",
    );
    let dir = std::env::temp_dir().join(format!("kao-stdout-closed-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let recording = dir.join("recording.jsonl");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_keepalive-observer"))
        .args([
            "--format",
            "json",
            "--journald",
            "off",
            "--stats-interval",
            "1",
        ])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--record")
        .arg(&recording)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the daemon");
    let mut stdout = BufReader::new(daemon.stdout.take().unwrap());
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut pipe = daemon.stderr.take().unwrap();
    let collected = Arc::clone(&stderr);
    let reader = thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut buf) {
            collected
                .lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let mut line = String::new();
    while !line.contains(r#""type":"ready""#) {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "no ready line");
    }
    // The reader goes away.
    drop(stdout);

    let before = linger_zero_reset();
    wait_until("the warning that stdout was closed", || {
        stderr
            .lock()
            .unwrap()
            .contains("standard output was closed by its reader; observing goes on")
    });
    // Records after the close still reach the recording, and what stdout misses is counted.
    let after = linger_zero_reset();
    wait_until("the drops warning", || {
        stderr.lock().unwrap().contains("stdout could not keep up:")
    });
    // SAFETY: kill has no memory effects; the pid is this test's child, not yet reaped.
    let pid = i32::try_from(daemon.id()).unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let status = daemon.wait().unwrap();
    reader.join().unwrap();
    let stderr = stderr.lock().unwrap().clone();
    assert!(status.success(), "{status}: {stderr}");

    let replayed = Command::new(env!("CARGO_BIN_EXE_keepalive-observer"))
        .args(["replay", "--format", "json", "--events"])
        .arg(&recording)
        .output()
        .unwrap();
    let findings = String::from_utf8(replayed.stdout).unwrap();
    for client in [&before, &after] {
        assert!(
            findings
                .lines()
                .any(|line| line.contains(r#""kind":"linger_zero""#)
                    && line.contains(&format!(r#""local":"{client}""#))),
            "the recording misses the reset of {client}: {findings}"
        );
    }
    fs::remove_dir_all(&dir).unwrap();
}
