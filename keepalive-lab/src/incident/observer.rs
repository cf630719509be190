//! keepalive-observer as a user runs it: in the root namespace, JSON lines on stdout, findings
//! only.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::ChildGuard;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::events::{Events, Msg, Source};

/// Loading BTF and attaching every hook takes about a second; this bounds a slow machine.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the observer may take to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often the observer reports its totals, among them the events the kernel side could
/// not hand over (ring buffer full). Writing every second also ends it within a second should
/// xtask die without stopping it: its standard output is then closed.
pub const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// The `ready` line: the kernel and what the observer cannot see on it.
#[derive(Debug, Deserialize)]
pub struct Ready {
    pub kernel: String,
    pub missing_signals: Vec<String>,
}

/// A finding as the observer prints it; the fields the lab shows or checks.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Finding {
    /// CLOCK_MONOTONIC nanoseconds of the event that decided it.
    pub mono_ns: u64,
    pub verdict: String,
    pub kind: String,
    pub confidence: String,
    pub netns: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub idle_ms: Option<u64>,
    pub rst_ttl: Option<u8>,
    pub peer_ttl: Option<u8>,
    pub reason: Option<String>,
    pub timeout_window_ms: Option<(u64, u64)>,
    pub advice: String,
}

/// The running observer; stopped with SIGTERM when dropped.
pub struct Observer {
    guard: Option<ChildGuard>,
    stderr: PathBuf,
    /// Events lost since it started, as of its last `stats` line.
    pub lost: u64,
}

impl Observer {
    /// Starts `binary` and waits for its `ready` line; `stderr` receives its standard error.
    pub fn start(
        binary: &Path,
        idle_expiry_floor_s: u32,
        stderr: &Path,
        events: &Events,
    ) -> Result<(Observer, Ready)> {
        if !binary.exists() {
            bail!(
                "{} does not exist: the build did not make it",
                binary.display()
            );
        }
        let log =
            File::create(stderr).with_context(|| format!("cannot create {}", stderr.display()))?;
        let mut command = Command::new(binary);
        command
            .args(["--format", "json", "--journald", "off", "--findings-only"])
            .arg("--idle-expiry-floor")
            .arg(idle_expiry_floor_s.to_string())
            .args(["--stats-interval", &STATS_INTERVAL.as_secs().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        println!("$ {}", crate::cmd::describe(&command, None));
        let mut guard = ChildGuard::spawn(&mut command)?;
        let stdout = guard
            .take_stdout()
            .context("the observer's standard output is not piped")?;
        let mut observer = Observer {
            guard: Some(guard),
            stderr: stderr.to_owned(),
            lost: 0,
        };
        events.read_lines(Source::Observer, stdout, parse)?;

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match events.next(deadline)? {
                Some(Msg::Ready(ready)) => return Ok((observer, ready)),
                Some(Msg::Stats { kernel_lost }) => observer.lost = kernel_lost,
                Some(Msg::Closed(_)) => bail!("{}", observer.exited()),
                Some(Msg::Unreadable(source, line)) => {
                    eprintln!("warning: {} printed {line}", source.name());
                }
                Some(_) => {}
                None => {
                    observer.stop()?;
                    bail!(
                        "keepalive-observer did not print `ready` within {} s; its standard \
                         error:\n{}",
                        READY_TIMEOUT.as_secs(),
                        tail(&observer.stderr)
                    );
                }
            }
        }
    }

    /// Why the observer is gone, with the end of its standard error.
    pub fn exited(&mut self) -> String {
        let status = match self.guard.take().map(|guard| guard.stop(STOP_GRACE)) {
            Some(Ok(status)) => status.to_string(),
            Some(Err(error)) => error.to_string(),
            None => "stopped".to_owned(),
        };
        format!(
            "keepalive-observer exited ({status}); its standard error:\n{}",
            tail(&self.stderr)
        )
    }

    /// Stops the observer with SIGTERM.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(guard) = self.guard.take() {
            guard.stop(STOP_GRACE)?;
        }
        Ok(())
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            eprintln!("warning: stopping keepalive-observer: {error:#}");
        }
    }
}

/// The `stats` line's count of events lost in the kernel.
#[derive(Debug, Deserialize)]
struct Stats {
    kernel_lost: u64,
}

/// One line of the observer's output: `ready`, findings and the lost-event count matter, other
/// records are ignored.
fn parse(line: &str) -> Result<Option<Msg>, String> {
    let value: Value = serde_json::from_str(line).map_err(|error| error.to_string())?;
    match value.get("type").and_then(Value::as_str) {
        Some("stats") => serde_json::from_value(value)
            .map(|stats: Stats| {
                Some(Msg::Stats {
                    kernel_lost: stats.kernel_lost,
                })
            })
            .map_err(|error| error.to_string()),
        Some("ready") => serde_json::from_value(value)
            .map(|ready| Some(Msg::Ready(ready)))
            .map_err(|error| error.to_string()),
        Some("finding") => serde_json::from_value(value)
            .map(|finding| Some(Msg::Finding(Box::new(finding))))
            .map_err(|error| error.to_string()),
        _ => Ok(None),
    }
}

/// The last lines of a log file, for error messages.
pub fn tail(path: &Path) -> String {
    const LINES: usize = 20;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(LINES);
            if lines.is_empty() {
                "(empty)".to_owned()
            } else {
                lines[start..].join("\n")
            }
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ready_and_findings_and_skips_other_records() {
        let ready =
            r#"{"type":"ready","version":"0.1.0","kernel":"6.18","hooks":[],"missing_signals":[]}"#;
        assert!(matches!(parse(ready), Ok(Some(Msg::Ready(r))) if r.kernel == "6.18"));
        let finding = r#"{"type":"finding","mono_ns":1,"verdict":"middlebox_drop","kind":"forged_rst",
            "confidence":"confirmed","netns":7,"local":"198.51.100.2:4000",
            "remote":"198.51.100.100:80","idle_ms":5500,"rst_ttl":64,"peer_ttl":63,
            "reason":null,"timeout_window_ms":[4000,5500],"advice":"set TCP_KEEPIDLE","pid":1}"#;
        match parse(&finding.replace('\n', "")) {
            Ok(Some(Msg::Finding(f))) => {
                assert_eq!(f.timeout_window_ms, Some((4000, 5500)));
                assert_eq!(f.remote, "198.51.100.100:80".parse().unwrap());
            }
            other => panic!("expected a finding, got {other:?}"),
        }
        assert!(matches!(
            parse(r#"{"type":"stats","kernel_lost":3,"decode_errors":0,"events":9}"#),
            Ok(Some(Msg::Stats { kernel_lost: 3 }))
        ));
        assert!(matches!(parse(r#"{"type":"hooks_changed"}"#), Ok(None)));
        assert!(parse("not json").is_err());
        assert!(parse(r#"{"type":"finding","verdict":1}"#).is_err());
    }
}
