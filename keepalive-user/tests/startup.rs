//! Start-up under signals, and two daemons at once.
//!
//! SIGINT or SIGTERM at any moment of start-up (parsing BTF, loading, attaching) stops the
//! daemon promptly with a message, and every eBPF program it held is gone afterwards. Two
//! daemons with their own state directories observe independently; a second one on the same
//! state directory is refused with a message naming it.

mod common;

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead, BufReader, Read as _},
    net::{TcpListener, TcpStream},
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use common::{Daemon, require_root};
use keepalive_lab::set_linger_abort;

/// How long an interrupted start-up may take to exit.
const PROMPT: Duration = Duration::from_secs(3);
/// How long the kernel may take to free a program after its last reference went.
const FREED: Duration = Duration::from_secs(5);

/// A directory of this test's own, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("kao-startup-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("create the test directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A daemon started by hand, its standard output's lines on a channel.
struct Starting {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: thread::JoinHandle<String>,
}

fn start(state_dir: &Path) -> Starting {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keepalive-observer"))
        .args([
            "--format",
            "json",
            "--findings-only",
            "--journald",
            "off",
            "--state-dir",
        ])
        .arg(state_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start keepalive-observer");
    let (send, lines) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    let mut stderr = child.stderr.take().expect("stderr");
    let stderr = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    Starting {
        child,
        lines,
        stderr,
    }
}

impl Starting {
    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("a pid")
    }

    fn ready(&self) -> bool {
        self.lines
            .try_iter()
            .any(|line| line.contains(r#""type":"ready""#))
    }

    /// The ids of the eBPF programs the process holds now (from its descriptors' fdinfo:
    /// programs, and links, which name their program).
    fn program_ids(&self) -> BTreeSet<u32> {
        let dir = format!("/proc/{}/fdinfo", self.pid());
        let Ok(entries) = fs::read_dir(dir) else {
            return BTreeSet::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|entry| fs::read_to_string(entry.path()).ok())
            .flat_map(|info| {
                info.lines()
                    .filter_map(|line| line.strip_prefix("prog_id:"))
                    .filter_map(|id| id.trim().parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect()
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory effects; the pid is this test's child, not yet reaped.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0, "kill");
    }

    /// Waits for the exit (at most `within`): its status and standard error.
    fn exit(mut self, within: Duration) -> (ExitStatus, String, Duration) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if started.elapsed() > within {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the daemon did not exit within {within:?} of the signal");
            }
            thread::sleep(Duration::from_millis(5));
        };
        let took = started.elapsed();
        (status, self.stderr.join().expect("stderr reader"), took)
    }
}

/// The programs of `ids` still loaded in the kernel.
fn still_loaded(ids: &BTreeSet<u32>) -> BTreeSet<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|program| program.id())
        .filter(|id| ids.contains(id))
        .collect()
}

#[test]
#[ignore = "needs root (eBPF programs): `cargo xtask test` runs it as root"]
fn a_signal_at_any_moment_of_start_up_stops_it_promptly_and_leaves_nothing_attached() {
    require_root(
        "a_signal_at_any_moment_of_start_up_stops_it_promptly_and_leaves_nothing_attached",
    );
    let dir = TempDir::new("signals");
    // How long a start-up takes here, to spread the signals over it.
    let daemon = start(&dir.0);
    let began = Instant::now();
    while !daemon.ready() {
        assert!(began.elapsed() < Duration::from_secs(60), "no ready line");
        thread::sleep(Duration::from_millis(5));
    }
    let start_up = began.elapsed();
    daemon.signal(libc::SIGINT);
    let (status, stderr, _) = daemon.exit(Duration::from_secs(15));
    assert!(status.success(), "{status}: {stderr}");

    let mut interrupted_holding_programs = 0;
    // Across the whole start-up and past it; then as soon as the daemon holds a program
    // (attaching has begun).
    let moments = (0..12u32)
        .map(|step| Some(start_up.mul_f64(f64::from(step) / 10.0)))
        .chain([None; 4]);
    for (step, moment) in moments.enumerate() {
        let (signal, status) = if step % 2 == 0 {
            (libc::SIGTERM, 143)
        } else {
            (libc::SIGINT, 130)
        };
        let daemon = start(&dir.0);
        let began = Instant::now();
        let mut held = BTreeSet::new();
        loop {
            held.extend(daemon.program_ids());
            let due = match moment {
                Some(at) => began.elapsed() >= at,
                None => !held.is_empty(),
            };
            if due {
                break;
            }
            assert!(
                began.elapsed() < Duration::from_secs(60),
                "no program loaded"
            );
            thread::sleep(Duration::from_millis(1));
        }
        let at = began.elapsed();
        daemon.signal(signal);
        let (exit, stderr, took) = daemon.exit(Duration::from_secs(15));
        assert!(
            took < PROMPT,
            "signal at {at:?}: exit took {took:?}: {stderr}"
        );
        let code = exit.code();
        if code.is_none() {
            // Before the handlers are installed (the first milliseconds, before anything is
            // loaded) the signal's default action ends the process.
            assert_eq!(exit.signal(), Some(signal), "signal at {at:?}: {exit}");
            assert!(held.is_empty(), "signal at {at:?}: killed holding {held:?}");
        } else if code == Some(0) {
            // Ready before the signal: the ordinary stop.
            assert!(!stderr.contains("error:"), "signal at {at:?}: {stderr}");
        } else {
            assert_eq!(code, Some(status), "signal at {at:?}: {stderr}");
            let name = if signal == libc::SIGTERM {
                "SIGTERM"
            } else {
                "SIGINT"
            };
            assert!(
                stderr.starts_with(&format!("error: {name} while "))
                    && stderr.contains("stopped before observing"),
                "signal at {at:?}: {stderr}"
            );
            if !held.is_empty() {
                interrupted_holding_programs += 1;
            }
        }
        let freed = Instant::now();
        loop {
            let left = still_loaded(&held);
            if left.is_empty() {
                break;
            }
            assert!(
                freed.elapsed() < FREED,
                "signal at {at:?}: programs {left:?} outlived the daemon: {stderr}"
            );
            thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "signal at {:.0} ms of {:.0}: exit {code:?} after {:.0} ms, {} program(s) held, none left",
            at.as_secs_f64() * 1000.0,
            start_up.as_secs_f64() * 1000.0,
            took.as_secs_f64() * 1000.0,
            held.len()
        );
    }
    assert!(
        interrupted_holding_programs > 0,
        "no signal came while programs were held but the daemon not ready"
    );
}

/// A linger-0 close on loopback: returns the client's address, whose finding every daemon
/// must report.
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

#[test]
#[ignore = "needs root (eBPF programs): `cargo xtask test` runs it as root"]
fn two_daemons_observe_independently_and_one_state_directory_takes_one() {
    require_root("two_daemons_observe_independently_and_one_state_directory_takes_one");
    let dir = TempDir::new("two");
    let mut first = Daemon::start_with_state(&["--findings-only"], &dir.0);
    let mut second = Daemon::start(&["--findings-only"]);
    let client = linger_zero_reset();
    for (which, daemon) in [("first", &mut first), ("second", &mut second)] {
        daemon.wait_for(
            &format!("the {which} daemon's linger-0 finding"),
            Duration::from_secs(10),
            |v| v["type"] == "finding" && v["kind"] == "linger_zero" && v["local"] == client,
        );
    }
    let (status, _) = second.stop();
    assert!(status.success(), "{status}");

    let refused = Command::new(env!("CARGO_BIN_EXE_keepalive-observer"))
        .args(["--journald", "off", "--state-dir"])
        .arg(&dir.0)
        .output()
        .expect("run a second daemon");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: another keepalive-observer uses the state directory {}",
            dir.0.display()
        )) && stderr.contains("give this one its own --state-dir"),
        "{stderr}"
    );
    // The first goes on observing.
    let client = linger_zero_reset();
    first.wait_for(
        "the first daemon's next finding",
        Duration::from_secs(10),
        |v| v["type"] == "finding" && v["kind"] == "linger_zero" && v["local"] == client,
    );
    let (status, _) = first.stop();
    assert!(status.success(), "{status}");
}
