//! The daemon under test: started with JSON output, its lines read on a thread, waited for
//! with deadlines, stopped with SIGINT.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// A running keepalive-observer.
pub struct Daemon {
    child: Child,
    lines: Receiver<Result<Value, String>>,
    seen: Vec<Value>,
}

impl Daemon {
    /// Starts `DAEMON --format json --journald off --hooks HOOKS` and waits for `ready`.
    pub fn start(daemon: &Path, hooks: &str, ready_within: Duration) -> Result<(Daemon, Value)> {
        let mut child = Command::new(daemon)
            .args(["--format", "json", "--journald", "off", "--hooks", hooks])
            .args(["--stats-interval", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", daemon.display()))?;
        let stdout = child
            .stdout
            .take()
            .context("the daemon's stdout is not piped")?;
        let (send, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let parsed = serde_json::from_str(&line)
                    .map_err(|e| format!("the daemon printed a non-JSON line ({e}): {line}"));
                if send.send(parsed).is_err() {
                    break;
                }
            }
        });
        let mut daemon = Daemon {
            child,
            lines,
            seen: Vec::new(),
        };
        let ready = daemon.wait_for("the ready line", ready_within, |v| v["type"] == "ready")?;
        Ok((daemon, ready))
    }

    /// The first line, already seen or still to come, that matches.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        if let Some(found) = self.seen.iter().find(|v| matches(v)) {
            return Ok(found.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(Ok(value)) => {
                    self.seen.push(value.clone());
                    if matches(&value) {
                        return Ok(value);
                    }
                }
                Ok(Err(line)) => bail!("waiting for {what}: {line}"),
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "waiting for {what}: timed out after {timeout:?}{}",
                        self.tail()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("waiting for {what}: the daemon exited{}", self.tail())
                }
            }
        }
    }

    /// Every line seen so far that matches, after reading whatever is already waiting.
    pub fn all(&mut self, matches: impl Fn(&Value) -> bool) -> Vec<Value> {
        while let Ok(Ok(value)) = self.lines.try_recv() {
            self.seen.push(value);
        }
        self.seen.iter().filter(|v| matches(v)).cloned().collect()
    }

    /// Stops the daemon with SIGINT, waiting at most `grace` before killing it.
    pub fn stop(mut self, grace: Duration) -> Result<ExitStatus> {
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for the daemon")? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("the daemon did not exit within {grace:?} of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines seen, newest first, for an error message.
    fn tail(&self) -> String {
        let lines: Vec<String> = self
            .seen
            .iter()
            .rev()
            .take(12)
            .map(Value::to_string)
            .collect();
        if lines.is_empty() {
            "; the daemon printed nothing".to_owned()
        } else {
            format!("; last lines, newest first:\n  {}", lines.join("\n  "))
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
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

/// Whether a JSON line is a finding of `verdict`/`kind` for the connection seen from `local`.
pub fn is_finding(value: &Value, verdict: &str, kind: &str, local: &str) -> bool {
    value["type"] == "finding"
        && value["verdict"] == verdict
        && value["kind"] == kind
        && value["local"] == local
}
