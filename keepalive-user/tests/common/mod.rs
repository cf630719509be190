//! Shared harness for the privileged tests: run the real daemon, read its JSON lines, wait for
//! what a test expects.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::{process::ExitStatus, time::Duration};

use keepalive_lab::daemon::{self, Launch};
use serde_json::Value;

/// Fails a privileged test that runs without root. They are `#[ignore]`d, so a plain
/// `cargo test` reports them as ignored (skipped, with the reason); `cargo xtask test` runs them
/// as root with `--include-ignored`.
pub fn require_root(test: &str) {
    assert!(
        keepalive_lab::is_root(),
        "{test} needs root to load eBPF programs and create network namespaces"
    );
}

/// The daemon under test, through the daemon harness of keepalive-lab; a failure panics with
/// the harness's message, which quotes the daemon's last lines. Stopped with SIGINT on drop.
pub struct Daemon(daemon::Daemon);

impl Daemon {
    /// Starts `keepalive-observer --format json --journald off ARGS` and waits for `ready`.
    pub fn start(args: &[&str]) -> Daemon {
        Launch::new(env!("CARGO_BIN_EXE_keepalive-observer"))
            .args(args)
            .start()
            .map(Daemon)
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// Like [`Daemon::start`], keeping its learned state in `state_dir`, which outlives it.
    pub fn start_with_state(args: &[&str], state_dir: &std::path::Path) -> Daemon {
        Launch::new(env!("CARGO_BIN_EXE_keepalive-observer"))
            .args(args)
            .state_dir(state_dir)
            .start()
            .map(Daemon)
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// The `ready` line.
    pub fn ready(&self) -> &Value {
        self.0.ready()
    }

    /// The first line (already seen or still to come) that matches, or a panic listing what
    /// was seen when `timeout` passes.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        self.0
            .wait_for(what, timeout, matches)
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// Every line seen so far that matches, after reading whatever is already waiting.
    pub fn all(&mut self, matches: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.0.all(matches)
    }

    /// Stops the daemon with SIGINT and returns its exit status and the lines it printed
    /// while shutting down.
    pub fn stop(self) -> (ExitStatus, Vec<Value>) {
        let stopped = self.0.stop().unwrap_or_else(|error| panic!("{error}"));
        (stopped.status, stopped.lines)
    }
}

/// A copy of the daemon that an unprivileged user may run, for tests that drop to `nobody`:
/// the build's own copy may sit below a directory only root can enter (e.g. a clone in
/// `/root`). Removed on drop.
pub struct BinaryForOthers(std::path::PathBuf);

impl BinaryForOthers {
    /// Copies the daemon into a fresh world-readable directory under the temporary directory.
    pub fn copy() -> BinaryForOthers {
        use std::os::unix::fs::PermissionsExt as _;
        let dir =
            std::env::temp_dir().join(format!("kao-binary-{}-{}", std::process::id(), next_id()));
        std::fs::create_dir_all(&dir).expect("create a directory for the daemon's copy");
        let open = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(&dir, open.clone()).expect("open the directory to others");
        let binary = dir.join("keepalive-observer");
        std::fs::copy(env!("CARGO_BIN_EXE_keepalive-observer"), &binary).expect("copy the daemon");
        std::fs::set_permissions(&binary, open).expect("let others run the copy");
        BinaryForOthers(dir)
    }

    /// The copy's path.
    pub fn path(&self) -> std::path::PathBuf {
        self.0.join("keepalive-observer")
    }
}

impl Drop for BinaryForOthers {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Distinguishes the copies of one test process.
fn next_id() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The lab of the privileged tests: a client, a middlebox in `mode` whose conntrack forgets
/// flows idle `timeout_secs`, and one server.
pub fn lab_topology(
    mode: keepalive_lab::MiddleboxMode,
    timeout_secs: u32,
) -> keepalive_lab::Topology {
    keepalive_lab::Topology::builder()
        .servers(1)
        .middlebox(keepalive_lab::Middlebox {
            mode,
            established_timeout_secs: timeout_secs,
        })
        .build()
        .expect("build the lab")
}
