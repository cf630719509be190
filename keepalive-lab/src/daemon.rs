//! keepalive-observer as a child process, for everything that runs the real daemon: the
//! privileged tests, the vm-test driver, the lab and the bench.
//!
//! [`Launch`] says how to start it; [`Launch::start`] spawns it with JSON output and waits, up to
//! a deadline, for its `ready` line (every hook attached). [`Daemon`] then hands out its JSON
//! lines ([`Daemon::wait_for`], [`Daemon::all`], or [`Launch::forward_to`] a channel of the
//! caller's), and [`Daemon::stop`] ends it with SIGINT and returns what it printed last, its
//! final `stats` line among them. A daemon that is dropped gets the same SIGINT.
//!
//! ```no_run
//! use std::time::Duration;
//! use keepalive_lab::daemon::Launch;
//!
//! # fn main() -> Result<(), keepalive_lab::daemon::DaemonError> {
//! let mut daemon = Launch::new("target/release/keepalive-observer")
//!     .args(["--findings-only"])
//!     .start()?;
//! let finding = daemon.wait_for("a finding", Duration::from_secs(30), |line| {
//!     line["type"] == "finding"
//! })?;
//! let stopped = daemon.stop()?;
//! println!("{finding}; {:?} events in all", stopped.stats().map(|stats| stats.events));
//! # Ok(())
//! # }
//! ```

mod error;
mod launch;
mod output;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};
use std::{env, io};

use keepalive_schema::finding::{Finding, FindingKind, Verdict};
use serde::Deserialize;
use serde_json::Value;

pub use self::error::DaemonError;
pub use self::launch::Launch;
use self::output::Lines;
pub use self::output::{Output, tail};

/// The daemon's binary name.
pub const BINARY: &str = "keepalive-observer";

/// The arguments every launch starts with: JSON lines on standard output, no journal.
pub const JSON_ARGS: [&str; 4] = ["--format", "json", "--journald", "off"];

/// How often a wait looks at the process and at the caller's cancel check.
const POLL: Duration = Duration::from_millis(20);
/// Lines of history or of standard error that an error message quotes.
const TAIL_LINES: usize = 12;

/// The daemon that cargo built into the target directory this binary runs from (`debug` or
/// `release`), where `cargo xtask lab` and `cargo xtask bench` build it.
pub fn built(debug: bool) -> Result<PathBuf, DaemonError> {
    let locating = |source| DaemonError::Process {
        operation: "locating",
        source,
    };
    let exe = env::current_exe().map_err(locating)?;
    let target = exe.parent().and_then(Path::parent).ok_or_else(|| {
        locating(io::Error::other(format!(
            "{} is not in a target directory",
            exe.display()
        )))
    })?;
    let profile = if debug { "debug" } else { "release" };
    Ok(target.join(profile).join(BINARY))
}

/// The running daemon; stopped with SIGINT when dropped.
pub struct Daemon {
    child: Child,
    lines: Lines,
    /// Every line read so far, the `ready` line first.
    seen: Vec<Value>,
    ready: Value,
    stderr_file: Option<PathBuf>,
    /// The state directory made for this daemon alone, removed with it.
    own_state_dir: Option<PathBuf>,
    stop_timeout: Duration,
    cancelled: fn() -> bool,
    exited: Option<ExitStatus>,
}

/// The daemon's totals, from a `stats` line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Stats {
    /// Events the kernel side could not hand over (ring buffer full).
    pub kernel_lost: u64,
    /// Events received.
    pub events: u64,
    /// Findings made.
    pub findings: u64,
    /// RSTs answering a SYN or a SYN-ACK, counted by the kernel side instead of sent.
    #[serde(default)]
    pub syn_refusals: u64,
    /// Records received, by kind.
    #[serde(default)]
    pub events_by_kind: EventsByKind,
    /// Records the outputs (`stdout`, `journald`, `recording`, `stderr`) dropped because they
    /// could not keep up, all together.
    #[serde(default, deserialize_with = "sum_of_values")]
    pub output_dropped: u64,
}

/// The sum of a JSON object's counts.
fn sum_of_values<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let counts = BTreeMap::<String, u64>::deserialize(deserializer)?;
    Ok(counts.values().sum())
}

/// The record kinds a `stats` line counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct EventsByKind {
    /// RSTs this host sent.
    #[serde(default)]
    pub reset_sent: u64,
    /// RSTs this host received.
    #[serde(default)]
    pub reset_received: u64,
    /// Socket errors.
    #[serde(default)]
    pub socket_error: u64,
}

impl Stats {
    /// The totals of a `stats` line; `None` for any other line.
    pub fn from_line(line: &Value) -> Option<Stats> {
        if line["type"] != "stats" {
            return None;
        }
        Stats::deserialize(line).ok()
    }
}

/// What [`Daemon::stop`] found.
#[derive(Debug)]
pub struct Stopped {
    /// How the daemon exited.
    pub status: ExitStatus,
    /// The lines printed since the last read; with the output in a file, the lines in its last
    /// 64 KiB (where the final `stats` line is); none when forwarded.
    pub lines: Vec<Value>,
}

impl Stopped {
    /// The totals of the last `stats` line, printed at exit.
    pub fn stats(&self) -> Option<Stats> {
        self.lines.iter().rev().find_map(Stats::from_line)
    }
}

impl Daemon {
    /// The `ready` line: version, kernel, hooks and missing signals.
    pub fn ready(&self) -> &Value {
        &self.ready
    }

    /// The daemon's process id, for reading its counters in /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first line, already read or still to come, that `matches`; fails when `timeout`
    /// passes, the daemon exits or prints a line that is not JSON.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Result<Value, DaemonError> {
        if let Some(found) = self.seen.iter().find(|line| matches(line)) {
            return Ok(found.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            if (self.cancelled)() {
                return Err(DaemonError::Cancelled);
            }
            let until = deadline.min(Instant::now() + POLL);
            match self.lines.next(until, &mut self.child)? {
                Some(Output::Json(line)) => {
                    let found = matches(&line).then(|| line.clone());
                    self.seen.push(line);
                    if let Some(found) = found {
                        return Ok(found);
                    }
                }
                Some(Output::Unreadable(line)) => return Err(DaemonError::Unreadable(line)),
                Some(Output::Closed) => {
                    // Its output closes as it exits: give the exit a moment to be reaped.
                    let status = self.wait_exit(POLL * 50);
                    return Err(DaemonError::Exited {
                        what: what.to_owned(),
                        status: status.map_or_else(
                            || "still running".to_owned(),
                            |status| status.to_string(),
                        ),
                        context: self.context(),
                    });
                }
                None if Instant::now() >= deadline => {
                    return Err(DaemonError::Timeout {
                        what: what.to_owned(),
                        timeout,
                        context: self.context(),
                    });
                }
                None => {}
            }
        }
    }

    /// Every line read so far that matches, after reading what is already waiting.
    pub fn all(&mut self, matches: impl Fn(&Value) -> bool) -> Vec<Value> {
        while let Ok(Some(Output::Json(line))) = self.lines.next(Instant::now(), &mut self.child) {
            self.seen.push(line);
        }
        self.seen
            .iter()
            .filter(|line| matches(line))
            .cloned()
            .collect()
    }

    /// Stops the daemon with SIGINT (SIGKILL after the stop timeout, which fails) and returns
    /// its exit status and last lines.
    pub fn stop(mut self) -> Result<Stopped, DaemonError> {
        let status = self.interrupt()?;
        let lines = self.lines.rest(Instant::now() + self.stop_timeout)?;
        Ok(Stopped { status, lines })
    }

    fn interrupt(&mut self) -> Result<ExitStatus, DaemonError> {
        if let Some(status) = self.wait_exit(Duration::ZERO) {
            return Ok(status);
        }
        let pid = libc::pid_t::try_from(self.child.id()).map_err(|_| DaemonError::Process {
            operation: "signalling",
            source: io::Error::other("pid out of range"),
        })?;
        // SAFETY: kill() on our own child, which has not been reaped, so its pid is still ours.
        if unsafe { libc::kill(pid, libc::SIGINT) } != 0 {
            return Err(DaemonError::Process {
                operation: "interrupting",
                source: io::Error::last_os_error(),
            });
        }
        if let Some(status) = self.wait_exit(self.stop_timeout) {
            return Ok(status);
        }
        // The error is the timeout; killing and reaping are only the clean-up.
        let _ = self.child.kill();
        self.exited = self.child.wait().ok();
        Err(DaemonError::StopTimeout {
            grace: self.stop_timeout,
        })
    }

    /// The exit status, waiting at most `limit` for it.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if self.exited.is_none() {
                self.exited = self.child.try_wait().ok().flatten();
            }
            if self.exited.is_some() || Instant::now() >= deadline {
                return self.exited;
            }
            thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
        }
    }

    /// The last lines read and of standard error, for an error message.
    fn context(&self) -> String {
        let mut context = String::new();
        if self.seen.is_empty() {
            context.push_str("; it printed nothing");
        } else {
            let lines: Vec<String> = self
                .seen
                .iter()
                .rev()
                .take(TAIL_LINES)
                .map(Value::to_string)
                .collect();
            context.push_str(&format!(
                "; last lines, newest first:\n  {}",
                lines.join("\n  ")
            ));
        }
        if let Some(path) = &self.stderr_file {
            context.push_str(&format!(
                "\nits standard error ({}):\n{}",
                path.display(),
                output::tail(path, TAIL_LINES)
            ));
        }
        context
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Nothing to report to: a daemon that will not stop is killed, which is the clean-up.
        let _ = self.interrupt();
        if let Some(dir) = &self.own_state_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Whether a JSON line is an event of `kind` between these two endpoints (`ip:port`).
pub fn is_event(line: &Value, kind: &str, local: &str, remote: &str) -> bool {
    line["type"] == "event"
        && line["event"] == kind
        && line["local"] == local
        && line["remote"] == remote
}

/// Whether a JSON line is a finding of `verdict`/`kind` for the connection seen from `local`,
/// in the shape of the output schema.
pub fn is_finding(line: &Value, verdict: Verdict, kind: FindingKind, local: &str) -> bool {
    line["type"] == "finding"
        && Finding::deserialize(line).is_ok_and(|finding| {
            finding.verdict == verdict && finding.kind == kind && finding.local.to_string() == local
        })
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn reads_stats_lines_only() {
        let stats: Value = serde_json::from_str(
            r#"{"type":"stats","kernel_lost":3,"decode_errors":0,"events":10,"findings":2,"syn_refusals":4,"events_by_kind":{"reset_sent":7},"output_dropped":{"stdout":5,"stderr":1}}"#,
        )
        .unwrap();
        assert_eq!(
            Stats::from_line(&stats),
            Some(Stats {
                kernel_lost: 3,
                events: 10,
                findings: 2,
                syn_refusals: 4,
                events_by_kind: EventsByKind {
                    reset_sent: 7,
                    ..EventsByKind::default()
                },
                output_dropped: 6,
            })
        );
        assert_eq!(
            Stats::from_line(&serde_json::json!({"type": "stats"})),
            None
        );
        assert_eq!(
            Stats::from_line(&serde_json::json!({"type": "ready"})),
            None
        );
    }

    #[test]
    fn a_missing_binary_fails_before_anything_runs() {
        let error = Launch::new("/nonexistent/keepalive-observer")
            .start()
            .err()
            .expect("cannot start");
        assert!(matches!(error, DaemonError::Spawn { .. }), "{error}");
    }

    #[test]
    fn waits_for_ready_and_reads_lines_then_stops() {
        // The trap first: a SIGINT may follow the finding at once.
        let script = r#"trap 'echo "{\"type\":\"stats\",\"kernel_lost\":0,\"events\":1,\"findings\":1}"; exit 0' INT; echo '{"type":"ready"}'; echo '{"type":"finding","local":"a"}'; while :; do sleep 0.01; done"#;
        let mut daemon = fake(script).start().expect("ready");
        assert_eq!(daemon.ready()["type"], "ready");
        let finding = daemon
            .wait_for("the finding", Duration::from_secs(5), |line| {
                line["type"] == "finding"
            })
            .expect("finding");
        assert_eq!(finding["local"], "a");
        assert_eq!(daemon.all(|line| line["type"] == "finding").len(), 1);
        let stopped = daemon.stop().expect("stops on SIGINT");
        assert!(stopped.status.success());
        assert_eq!(stopped.stats().map(|stats| stats.events), Some(1));
    }

    #[test]
    fn exit_before_ready_and_unreadable_lines_are_errors() {
        let exited = fake("exit 3").start().err().expect("exits");
        assert!(
            matches!(&exited, DaemonError::Exited { status, .. } if status.contains('3')),
            "{exited}"
        );
        let garbage = fake("echo hooks; exec sleep 5")
            .start()
            .err()
            .expect("not JSON");
        assert!(matches!(garbage, DaemonError::Unreadable(ref line) if line.contains("hooks")));
        let slow = fake("exec sleep 5")
            .ready_timeout(Duration::from_millis(100))
            .start()
            .err()
            .expect("never ready");
        assert!(matches!(slow, DaemonError::Timeout { .. }), "{slow}");
    }

    #[test]
    fn reads_a_stdout_file_and_forwards_after_ready() {
        let path =
            std::env::temp_dir().join(format!("keepalive-lab-daemon-{}.out", std::process::id()));
        let daemon = fake(r#"echo '{"type":"ready"}'; trap 'echo "{\"type\":\"stats\",\"kernel_lost\":2,\"events\":0,\"findings\":0}"; exit 0' INT; while :; do sleep 0.01; done"#)
            .stdout_file(&path)
            .start()
            .expect("ready from the file");
        let stopped = daemon.stop().expect("stops");
        assert_eq!(stopped.stats().map(|stats| stats.kernel_lost), Some(2));
        std::fs::remove_file(&path).unwrap();

        let (sender, receiver) = mpsc::channel();
        let daemon = fake(r#"echo '{"type":"ready"}'; echo '{"type":"finding"}'; echo oops"#)
            .forward_to(sender, |output| match output {
                Output::Json(line) => Some(line["type"].to_string()),
                Output::Unreadable(line) => Some(line),
                Output::Closed => Some("closed".to_owned()),
            })
            .start()
            .expect("ready");
        let forwarded: Vec<String> = receiver.iter().take(3).collect();
        assert_eq!(forwarded[0], "\"finding\"");
        assert!(forwarded[1].contains("oops"));
        assert_eq!(forwarded[2], "closed");
        drop(daemon);
    }

    /// A shell script standing in for the daemon (it ignores the JSON arguments).
    fn fake(script: &str) -> Launch {
        let mut launch = Launch::new("/bin/sh");
        launch.args = vec!["-c".into(), script.into()];
        launch.stop_timeout(Duration::from_secs(5))
    }
}
