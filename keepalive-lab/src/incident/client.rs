//! The client: `assets/client.py`, urllib3's connection pool run by Debian's Python inside
//! the client's namespace, one JSON object per line on stdout.

use std::fs::File;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::{ChildGuard, Netns};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::events::{Events, Msg, Source};

/// Debian's Python, which has python3-urllib3; a `python3` earlier on `PATH` may not.
pub const PYTHON: &str = "/usr/bin/python3";
/// A dead flow fails with ETIMEDOUT after this long without an acknowledgement
/// (TCP_USER_TIMEOUT), instead of after minutes of retransmissions.
const USER_TIMEOUT_MS: u32 = 1500;
/// How long the client may take to exit after closing its output, and after SIGTERM.
const EXIT_GRACE: Duration = Duration::from_secs(5);
const STOP_GRACE: Duration = Duration::from_secs(2);
const EXIT_POLL: Duration = Duration::from_millis(10);

/// The script, in the repository, so that a reader can open what runs.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/client.py")
}

/// What the client prints.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    /// Its versions and settings, first.
    Config(Config),
    /// One HTTP request and its outcome.
    Request(Request),
    /// The pool closed a connection that had been idle too long (the eviction fix).
    Evicted { local: Option<String>, idle_s: f64 },
    /// Job `job` comes at the end of its pause; with `audit`, the client waits for
    /// [`Client::go`] first.
    Step { job: u32, pause_s: f64, audit: bool },
    /// The ladder is over.
    Done,
}

#[derive(Debug, Deserialize)]
pub struct Config {
    pub python: String,
    pub urllib3: String,
    pub pool_size: u32,
    pub user_timeout_ms: u32,
}

/// How a request failed, as the client classifies the error's errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// ECONNRESET or EPIPE.
    Reset,
    /// ETIMEDOUT or a urllib3 timeout.
    Timeout,
    /// Anything else.
    Error,
}

impl Failure {
    pub fn name(self) -> &'static str {
        match self {
            Failure::Reset => "reset",
            Failure::Timeout => "timeout",
            Failure::Error => "other error",
        }
    }
}

/// One request: job 0 opens the pool's connection, job N follows the N-th pause; attempt 2
/// is the retry of a failed job on a new connection.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Request {
    pub job: u32,
    pub attempt: u32,
    pub pause_s: Option<f64>,
    /// How long the pooled connection had been idle when the request went out; `None` on a
    /// new connection.
    pub idle_s: Option<f64>,
    pub ok: bool,
    pub status: Option<u16>,
    pub body: Option<String>,
    pub error: Option<String>,
    pub errno: Option<i32>,
    /// `ECONNRESET`, `ETIMEDOUT` …
    pub errno_name: Option<String>,
    pub category: Option<Failure>,
    pub local: Option<SocketAddr>,
    pub new_connection: bool,
    pub elapsed_ms: f64,
}

/// How the client applies the observer's advice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// SO_KEEPALIVE with this TCP_KEEPIDLE on every pooled socket.
    Keepalive { idle_s: u64 },
    /// Close pooled connections idle longer than this.
    Evict { idle_s: u64 },
}

impl Applied {
    pub fn describe(self) -> String {
        match self {
            Applied::Keepalive { idle_s } => format!(
                "SO_KEEPALIVE with TCP_KEEPIDLE {idle_s} s (TCP_KEEPINTVL 1 s, TCP_KEEPCNT 3) on \
                 every pooled socket"
            ),
            Applied::Evict { idle_s } => {
                format!("the pool evicts connections idle longer than {idle_s} s")
            }
        }
    }

    pub fn short(self) -> String {
        match self {
            Applied::Keepalive { idle_s } => format!("keepalive {idle_s} s"),
            Applied::Evict { idle_s } => format!("evict > {idle_s} s"),
        }
    }
}

/// A running client; killed when dropped.
pub struct Client {
    guard: Option<ChildGuard>,
    stdin: Option<ChildStdin>,
    stderr: PathBuf,
}

impl Client {
    /// Starts the client in `netns` against `target` with `ladder`, and starts reading its
    /// lines. With `audit_lead` it announces each step that long before it and waits for
    /// [`Client::go`].
    pub fn start(
        netns: &Netns,
        target: SocketAddr,
        ladder: &[f64],
        applied: Option<Applied>,
        audit_lead: Option<Duration>,
        stderr: &Path,
        events: &Events,
    ) -> Result<Client> {
        let log =
            File::create(stderr).with_context(|| format!("cannot create {}", stderr.display()))?;
        let mut command = netns.command(PYTHON);
        command
            .arg("-I")
            .arg(script())
            .args(["--host", &target.ip().to_string()])
            .args(["--port", &target.port().to_string()])
            .args(["--ladder", &join(ladder)])
            .args(["--user-timeout-ms", &USER_TIMEOUT_MS.to_string()]);
        match applied {
            Some(Applied::Keepalive { idle_s }) => {
                command.args(["--keepalive-idle", &idle_s.to_string()]);
            }
            Some(Applied::Evict { idle_s }) => {
                command.args(["--evict-idle", &idle_s.to_string()]);
            }
            None => {}
        }
        if let Some(lead) = audit_lead {
            command.args(["--audit-lead", &format!("{:.3}", lead.as_secs_f64())]);
        }
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log);
        println!("  $ {}", crate::cmd::describe(&command, None));
        let mut guard = ChildGuard::spawn(&mut command)?;
        let stdout = guard
            .take_stdout()
            .context("the client's standard output is not piped")?;
        let stdin = guard.take_stdin();
        events.read_lines(Source::Client, stdout, parse)?;
        Ok(Client {
            guard: Some(guard),
            stdin,
            stderr: stderr.to_owned(),
        })
    }

    /// Lets a step the client announced with `audit` go ahead.
    pub fn go(&mut self) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .context("the client's standard input is not piped")?;
        stdin
            .write_all(b"go\n")
            .and_then(|()| stdin.flush())
            .context("cannot tell the client to go on")
    }

    /// Waits for the client to exit, once its output has closed, and returns its status; stops
    /// it if it lingers.
    pub fn finish(&mut self) -> Result<ExitStatus> {
        let mut guard = self
            .guard
            .take()
            .context("the client was already stopped")?;
        let deadline = Instant::now() + EXIT_GRACE;
        while Instant::now() < deadline {
            if let Some(status) = guard.try_wait()? {
                return Ok(status);
            }
            thread::sleep(EXIT_POLL);
        }
        let status = guard.stop(STOP_GRACE)?;
        bail!("the client closed its output but did not exit; stopped it ({status})")
    }

    pub fn stderr(&self) -> &Path {
        &self.stderr
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        drop(self.guard.take());
    }
}

fn parse(line: &str) -> Result<Option<Msg>, String> {
    serde_json::from_str(line)
        .map(|line| Some(Msg::Client(line)))
        .map_err(|error| error.to_string())
}

/// `1,2,5.5`: the ladder as the script takes it.
fn join(ladder: &[f64]) -> String {
    ladder
        .iter()
        .map(f64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_script_prints() {
        let failed = r#"{"type": "request", "job": 4, "attempt": 1, "pause_s": 5.5, "ok": false,
            "error": "ProtocolError: ('Connection aborted.', ConnectionResetError(104, 'Connection reset by peer'))",
            "errno": 104, "category": "reset", "local": "198.51.100.2:41000",
            "new_connection": false, "elapsed_ms": 1.2}"#;
        match parse(&failed.replace('\n', "")) {
            Ok(Some(Msg::Client(Line::Request(request)))) => {
                assert!(!request.ok);
                assert_eq!(request.category, Some(Failure::Reset));
                assert_eq!(request.status, None);
            }
            other => panic!("expected a request, got {other:?}"),
        }
        assert!(matches!(
            parse(r#"{"type": "evicted", "local": "198.51.100.2:41000", "idle_s": 4.05}"#),
            Ok(Some(Msg::Client(Line::Evicted { .. })))
        ));
        assert!(matches!(
            parse(r#"{"type": "done"}"#),
            Ok(Some(Msg::Client(Line::Done)))
        ));
        assert!(matches!(
            parse(r#"{"type": "step", "job": 4, "pause_s": 5.5, "audit": true}"#),
            Ok(Some(Msg::Client(Line::Step {
                job: 4,
                audit: true,
                ..
            })))
        ));
        assert!(parse(r#"{"type": "surprise"}"#).is_err());
    }

    #[test]
    fn ladders_pass_as_plain_numbers() {
        assert_eq!(join(&[1.0, 5.5, 12.0]), "1,5.5,12");
    }
}
