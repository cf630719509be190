//! Privileged: outputs that cannot keep up cost counted drops, never the ring-buffer reader.
//! A daemon whose standard output nobody reads goes on draining (its recording gets every
//! record) and exits promptly on SIGTERM; a recording on a full file system stops with a
//! warning while the daemon goes on explaining resets.
//!
//! Traffic is loopback only: connections closed with `SO_LINGER {1, 0}`, each an RST sent and
//! one received, judged by their ports.

mod common;

use std::{
    fs,
    io::{BufRead as _, BufReader},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use common::require_root;
use keepalive_lab::{daemon::Launch, set_linger_abort};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// A directory for this test alone, removed (after unmounting what the test mounted on it)
/// at the end.
struct Scratch {
    dir: PathBuf,
    mounted: Option<PathBuf>,
}

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("keepalive-outputs-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("create the scratch directory");
        Scratch { dir, mounted: None }
    }

    /// A tmpfs of `size` (as mount's `size=` option takes it) at `name` in the directory.
    fn tmpfs(&mut self, name: &str, size: &str) -> PathBuf {
        let at = self.dir.join(name);
        fs::create_dir_all(&at).expect("create the mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount a tmpfs at {}", at.display());
        self.mounted = Some(at.clone());
        at
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(at) = &self.mounted {
            let _ = Command::new("umount").arg(at).status();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The daemon as a plain child process, killed (by its pid) if the test fails.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Each test here makes a thousand or more aborts on loopback, and a daemon sees every
/// connection of the host: one at a time, so that neither test's daemon also takes the other's
/// burst.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Closes `count` loopback connections to `listener` with `SO_LINGER {1, 0}`; returns the
/// clients' ports.
fn abort_connections(listener: &TcpListener, count: usize) -> Vec<u16> {
    let to = listener.local_addr().expect("listener address");
    (0..count)
        .map(|_| {
            let client = TcpStream::connect(to).expect("connect on loopback");
            let (_server, _) = listener.accept().expect("accept");
            set_linger_abort(&client).expect("SO_LINGER {1, 0}");
            client.local_addr().expect("client address").port()
        })
        .collect()
}

/// Waits, up to [`WAIT`], for a line containing `needle` in the file at `path`.
fn wait_for_line(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = text.lines().find(|line| line.contains(needle)) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no line with {needle:?} in {} within {WAIT:?}:\n{text}",
            path.display()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs root (eBPF programs): `cargo xtask test` runs it as root"]
fn a_daemon_whose_stdout_nobody_reads_keeps_draining_and_exits_promptly_on_sigterm() {
    require_root("a_daemon_whose_stdout_nobody_reads_keeps_draining_and_exits_promptly_on_sigterm");
    let _alone = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let scratch = Scratch::new("stuck-stdout");
    let recording = scratch.dir.join("recording.jsonl");
    let stderr = scratch.dir.join("stderr");
    let mut daemon = Running(
        Command::new(env!("CARGO_BIN_EXE_keepalive-observer"))
            .args([
                "--format",
                "json",
                "--journald",
                "off",
                "--stats-interval",
                "1",
            ])
            .arg("--state-dir")
            .arg(scratch.dir.join("state"))
            .arg("--record")
            .arg(&recording)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start the daemon"),
    );
    // Read up to the `ready` line, then never again: the pipe stays open and fills.
    let stdout = daemon.0.stdout.take().expect("piped");
    let (ready_sender, ready) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut lines = BufReader::new(stdout);
        let mut line = String::new();
        while lines.read_line(&mut line).is_ok_and(|n| n > 0) {
            if serde_json::from_str::<Value>(&line).is_ok_and(|v| v["type"] == "ready") {
                let _ = ready_sender.send(());
                break;
            }
            line.clear();
        }
        lines
    });
    ready.recv_timeout(Duration::from_secs(60)).expect("ready");

    // Each connection is two records, a few hundred bytes of JSON each: far more than the
    // pipe, the stdout buffer and the stdout queue together hold.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let ports = abort_connections(&listener, 12_000);
    wait_for_line(&stderr, "stdout could not keep up");

    let started = Instant::now();
    let pid = libc::pid_t::try_from(daemon.0.id()).expect("pid");
    // SAFETY: kill() on our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = loop {
        if let Some(status) = daemon.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still running 10 s after SIGTERM with its stdout unread"
        );
        thread::sleep(Duration::from_millis(20));
    };
    let exit = started.elapsed();
    eprintln!("exited {exit:?} after SIGTERM with its stdout unread");
    assert!(status.success(), "{status}");
    assert!(exit < Duration::from_secs(5), "exit took {exit:?}");
    drop(reader.join().expect("reader"));

    // The reader went on while stdout was stuck: every RST this test caused is recorded
    // (were it blocked on stdout, the recording would stop after a few hundred records).
    let replay = Command::new(env!("CARGO_BIN_EXE_keepalive-observer"))
        .args(["replay", "--format", "json", "--events"])
        .arg(&recording)
        .output()
        .expect("replay the recording");
    let server = listener.local_addr().expect("address").to_string();
    let sent: std::collections::HashSet<u16> = String::from_utf8_lossy(&replay.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v["event"] == "reset_sent" && v["remote"] == server.as_str())
        .filter_map(|v| v["local"].as_str()?.parse::<SocketAddr>().ok())
        .map(|local| local.port())
        .collect();
    let missing = ports.iter().filter(|port| !sent.contains(port)).count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} aborts not recorded",
        ports.len()
    );
}

#[test]
#[ignore = "needs root (eBPF programs, mount): `cargo xtask test` runs it as root"]
fn a_full_disk_stops_the_recording_and_not_the_daemon() {
    require_root("a_full_disk_stops_the_recording_and_not_the_daemon");
    let _alone = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut scratch = Scratch::new("full-disk");
    let disk = scratch.tmpfs("disk", "256k");
    let stderr = scratch.dir.join("stderr");
    let recording = disk.join("recording.jsonl");
    let mut daemon = Launch::new(env!("CARGO_BIN_EXE_keepalive-observer"))
        .args(["--stats-interval", "1", "--record"])
        .args([&recording])
        .stderr_file(&stderr)
        .start()
        .unwrap_or_else(|error| panic!("{error}"));

    // A raw record is a line of a few hundred bytes: a thousand aborts fill 256 KiB.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    abort_connections(&listener, 1_000);
    let warning = wait_for_line(&stderr, "recording stopped");
    assert!(warning.contains("No space left on device"), "{warning}");
    wait_for_line(&stderr, "recording could not keep up");

    // The daemon goes on: a reset after the disk filled is still explained.
    let port = abort_connections(&listener, 1)[0];
    let local = format!("127.0.0.1:{port}");
    daemon
        .wait_for("the finding after the disk filled", WAIT, |v| {
            v["type"] == "finding" && v["local"] == local.as_str()
        })
        .unwrap_or_else(|error| panic!("{error}"));
    let stopped = daemon.stop().unwrap_or_else(|error| panic!("{error}"));
    assert!(stopped.status.success(), "{}", stopped.status);
    let stats = stopped
        .lines
        .iter()
        .rfind(|v| v["type"] == "stats")
        .unwrap_or_else(|| panic!("no stats line in {:#?}", stopped.lines));
    assert!(
        stats["output_dropped"]["recording"].as_u64() > Some(0),
        "{stats}"
    );
    assert!(fs::metadata(&recording).expect("recording").len() > 0);
}
