//! keepalive-observer as a user runs it: in the root namespace, JSON lines on stdout, findings
//! only.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

use super::events::{Events, Msg, Source};
use crate::daemon::{self, Daemon, DaemonError, Launch, Output, Stats};
use crate::interrupt::{self, Interrupted};

/// Loading BTF and attaching every hook takes about a second; this bounds a slow machine.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the observer may take to exit after SIGINT.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Lines of a log file that an error message quotes.
const LOG_TAIL: usize = 20;
/// How often the observer reports its totals, among them the events the kernel side could
/// not hand over (ring buffer full). Writing every second also ends it within a second should
/// the lab die without stopping it: its standard output is then closed.
pub const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// The `ready` line: the kernel and what the observer cannot see on it.
#[derive(Debug, Deserialize)]
pub struct Ready {
    pub kernel: String,
    pub missing_signals: Vec<String>,
}

/// A finding as the observer prints it.
pub use keepalive_schema::finding::Finding;

/// The running observer; stopped with SIGINT when dropped.
pub struct Observer {
    daemon: Option<Daemon>,
    stderr: PathBuf,
    /// Events lost since it started, as of its last `stats` line.
    pub lost: u64,
}

impl Observer {
    /// Starts `binary` and waits for its `ready` line; it keeps what it learns in
    /// `state_dir`, `stderr` receives its standard error, `events` every line after `ready`.
    pub fn start(
        binary: &Path,
        idle_expiry_floor_s: u32,
        state_dir: &Path,
        stderr: &Path,
        events: &Events,
    ) -> Result<(Observer, Ready)> {
        let launch = Launch::new(binary)
            .args(["--findings-only", "--idle-expiry-floor"])
            .args([idle_expiry_floor_s.to_string()])
            .args([
                "--stats-interval".to_owned(),
                STATS_INTERVAL.as_secs().to_string(),
            ])
            // Saved every second, for the audit before each ladder step to read what was
            // learned.
            .args(["--state-interval", "1"])
            .state_dir(state_dir)
            .stderr_file(stderr)
            .ready_timeout(READY_TIMEOUT)
            .stop_timeout(STOP_GRACE)
            .cancel_when(interrupt::requested)
            .isolated()
            .forward_to(events.sender(), parse);
        println!("$ {}", launch.command_line());
        let daemon = launch.start().map_err(lab_error)?;
        let ready = serde_json::from_value(daemon.ready().clone())
            .context("cannot read keepalive-observer's ready line")?;
        let observer = Observer {
            daemon: Some(daemon),
            stderr: stderr.to_owned(),
            lost: 0,
        };
        Ok((observer, ready))
    }

    /// Why the observer is gone, with the end of its standard error.
    pub fn exited(&mut self) -> String {
        let status = match self.daemon.take().map(Daemon::stop) {
            Some(Ok(stopped)) => stopped.status.to_string(),
            Some(Err(error)) => error.to_string(),
            None => "stopped".to_owned(),
        };
        format!(
            "keepalive-observer exited ({status}); its standard error:\n{}",
            tail(&self.stderr)
        )
    }

    /// Stops the observer with SIGINT.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(daemon) = self.daemon.take() {
            daemon.stop().map_err(lab_error)?;
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

/// A daemon error as the lab's: Ctrl-C while waiting is the lab's interruption.
fn lab_error(error: DaemonError) -> anyhow::Error {
    match error {
        DaemonError::Cancelled => Interrupted.into(),
        error => error.into(),
    }
}

/// One line of the observer's output after `ready`: findings and the lost-event count matter,
/// other records are ignored.
fn parse(output: Output) -> Option<Msg> {
    let unreadable = |why: String, line: &serde_json::Value| {
        Some(Msg::Unreadable(Source::Observer, format!("{why}: {line}")))
    };
    match output {
        Output::Json(line) => match line["type"].as_str() {
            Some("stats") => match Stats::from_line(&line) {
                Some(stats) => Some(Msg::Stats {
                    kernel_lost: stats.kernel_lost,
                }),
                None => unreadable("a stats line without its totals".to_owned(), &line),
            },
            Some("finding") => match Finding::deserialize(&line) {
                Ok(finding) => Some(Msg::Finding(Box::new(finding))),
                Err(error) => unreadable(error.to_string(), &line),
            },
            _ => None,
        },
        Output::Unreadable(line) => Some(Msg::Unreadable(Source::Observer, line)),
        Output::Closed => Some(Msg::Closed(Source::Observer)),
    }
}

/// The last lines of a log file, for error messages.
pub fn tail(path: &Path) -> String {
    daemon::tail(path, LOG_TAIL)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(line: &str) -> Output {
        Output::Json(serde_json::from_str(&line.replace('\n', "")).unwrap())
    }

    #[test]
    fn reads_findings_and_stats_and_skips_other_records() {
        let ready: Ready = serde_json::from_str(
            r#"{"type":"ready","version":"0.1.0","kernel":"6.18","hooks":[],"missing_signals":[]}"#,
        )
        .unwrap();
        assert_eq!(ready.kernel, "6.18");
        // A finding as the real daemon printed it (the golden loopback recording's linger-0
        // close).
        let golden = include_str!("../../../keepalive-schema/golden/loopback.findings.jsonl");
        let finding = golden
            .lines()
            .find(|line| line.contains(r#""kind":"linger_zero""#))
            .expect("a golden linger_zero finding");
        match parse(json(finding)) {
            Some(Msg::Finding(f)) => {
                assert_eq!(f.kind.as_str(), "linger_zero");
                assert_eq!(f.remote.ip(), std::net::Ipv4Addr::LOCALHOST);
            }
            other => panic!("expected a finding, got {other:?}"),
        }
        assert!(matches!(
            parse(json(
                r#"{"type":"stats","kernel_lost":3,"decode_errors":0,"events":9,"findings":0}"#
            )),
            Some(Msg::Stats { kernel_lost: 3 })
        ));
        assert!(parse(json(r#"{"type":"hooks_changed"}"#)).is_none());
        assert!(parse(json(r#"{"type":"ready","kernel":"6.18"}"#)).is_none());
        assert!(matches!(
            parse(Output::Unreadable("not json".to_owned())),
            Some(Msg::Unreadable(Source::Observer, _))
        ));
        assert!(matches!(
            parse(json(r#"{"type":"finding","verdict":1}"#)),
            Some(Msg::Unreadable(Source::Observer, _))
        ));
        assert!(matches!(
            parse(Output::Closed),
            Some(Msg::Closed(Source::Observer))
        ));
    }
}
