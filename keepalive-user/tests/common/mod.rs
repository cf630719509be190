//! Shared harness for the privileged tests: run the real daemon, read its JSON lines, wait for
//! what a test expects.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    time::{Duration, Instant},
};

use serde_json::Value;

/// Whether privileged tests can run. Without root they are skipped, saying why, unless
/// `KEEPALIVE_REQUIRE_PRIVILEGED=1` (set by `cargo xtask test` as root and in CI), which
/// turns a skip into a failure.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("KEEPALIVE_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
        "{test}: privileged tests are required here but this process is not root"
    );
    eprintln!("skipped {test}: needs root to load eBPF programs");
    false
}

/// The daemon under test, stopped with SIGINT on drop.
pub struct Daemon {
    child: Child,
    lines: Receiver<Value>,
    seen: Vec<Value>,
}

impl Daemon {
    /// Starts `keepalive-observer --format json --journald off ARGS` and waits for `ready`.
    pub fn start(args: &[&str]) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keepalive-observer"))
            .args(["--format", "json", "--journald", "off"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn keepalive-observer");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (send, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("daemon printed a non-JSON line ({e}): {line}"));
                if send.send(value).is_err() {
                    break;
                }
            }
        });
        let mut daemon = Daemon {
            child,
            lines,
            seen: Vec::new(),
        };
        daemon.wait_for("the ready line", Duration::from_secs(60), |v| {
            v["type"] == "ready"
        });
        daemon
    }

    /// The first line (already seen or still to come) that matches, or a panic listing what
    /// was seen when `timeout` passes.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        if let Some(found) = self.seen.iter().find(|v| matches(v)) {
            return found.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(value) => {
                    self.seen.push(value.clone());
                    if matches(&value) {
                        return value;
                    }
                }
                Err(RecvTimeoutError::Timeout) => self.fail(what, "timed out"),
                Err(RecvTimeoutError::Disconnected) => self.fail(what, "the daemon exited"),
            }
        }
    }

    /// Every line seen so far that matches, after reading whatever is already waiting.
    pub fn all(&mut self, matches: impl Fn(&Value) -> bool) -> Vec<Value> {
        while let Ok(value) = self.lines.try_recv() {
            self.seen.push(value);
        }
        self.seen.iter().filter(|v| matches(v)).cloned().collect()
    }

    /// Stops the daemon with SIGINT and returns its exit status and the lines it printed
    /// while shutting down.
    pub fn stop(mut self) -> (std::process::ExitStatus, Vec<Value>) {
        let status = self.interrupt();
        let rest = self.lines.try_iter().collect();
        (status, rest)
    }

    fn interrupt(&mut self) -> std::process::ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the daemon") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the daemon did not exit within 10 s of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn fail(&self, what: &str, why: &str) -> ! {
        let tail: Vec<String> = self
            .seen
            .iter()
            .rev()
            .take(30)
            .map(Value::to_string)
            .collect();
        panic!(
            "waiting for {what}: {why}; last lines (newest first):\n{}",
            tail.join("\n")
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
            // SAFETY: signalling our own child by its PID.
            unsafe { libc::kill(pid, libc::SIGINT) };
            let _ = self.child.wait();
        }
    }
}

/// Whether a JSON line is an event of `kind` between these two endpoints (`ip:port`).
pub fn is_event(value: &Value, kind: &str, local: &str, remote: &str) -> bool {
    value["type"] == "event"
        && value["event"] == kind
        && value["local"] == local
        && value["remote"] == remote
}
