//! keepalive-observer under test, through the daemon harness: every hook, findings only, JSON
//! on stdout into a file, no journal.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};
use keepalive_lab::daemon::{self, JSON_ARGS, Launch, Stats};
use keepalive_lab::interrupt;
use serde_json::Value;

use crate::procs::{START_TIMEOUT, STOP_TIMEOUT};

/// The running daemon. Fields drop in order: it stops before its files go.
pub struct Daemon {
    daemon: daemon::Daemon,
    _files: [TempFile; 2],
    /// The hook table of its `ready` line, one `signal: hook (status)` per hook.
    pub hooks: Vec<String>,
}

impl Daemon {
    /// Its arguments after [`JSON_ARGS`].
    pub const ARGS: &[&str] = &["--findings-only", "--stats-interval", "0"];

    /// Every argument, as the results show them.
    pub fn flags() -> String {
        let flags: Vec<&str> = JSON_ARGS.iter().chain(Self::ARGS).copied().collect();
        flags.join(" ")
    }

    /// Starts the daemon and waits until it says `ready` (every hook attached).
    pub fn start(binary: &Path) -> Result<Self> {
        let stdout = TempFile(temp_path("daemon", "out"));
        let stderr = TempFile(temp_path("daemon", "err"));
        let daemon = Launch::new(binary)
            .args(Self::ARGS)
            .stdout_file(&stdout.0)
            .stderr_file(&stderr.0)
            .ready_timeout(START_TIMEOUT)
            .stop_timeout(STOP_TIMEOUT)
            .cancel_when(interrupt::requested)
            .isolated()
            .start()?;
        let hooks = parse_hooks(daemon.ready())?;
        Ok(Self {
            daemon,
            _files: [stdout, stderr],
            hooks,
        })
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// Stops it with SIGINT and returns its totals.
    pub fn stop(self) -> Result<Stats> {
        let stopped = self.daemon.stop()?;
        if !stopped.status.success() {
            bail!("keepalive-observer exited with {}", stopped.status);
        }
        stopped
            .stats()
            .context("keepalive-observer printed no stats line at exit")
    }
}

/// `signal: hook (status)` for each hook of the `ready` line.
fn parse_hooks(ready: &Value) -> Result<Vec<String>> {
    let hooks = ready
        .get("hooks")
        .and_then(Value::as_array)
        .with_context(|| format!("ready line without hooks: {ready}"))?;
    Ok(hooks
        .iter()
        .map(|hook| {
            let text = |key: &str| hook.get(key).and_then(Value::as_str).unwrap_or("?");
            let status = match hook.get("why").and_then(Value::as_str) {
                Some(why) => format!("{}: {why}", text("status")),
                None => text("status").to_owned(),
            };
            format!("{}: {} ({status})", text("signal"), text("hook"))
        })
        .collect())
}

/// A file removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// A file for a child's output: in /dev/shm (tmpfs: no writeback competing with the
/// workload) when it exists, else in the temporary directory.
fn temp_path(what: &str, extension: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    dir.join(format!(
        "keepalive-bench-{}-{what}-{}.{extension}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_hook_table() {
        let ready = serde_json::from_str(
            r#"{"type":"ready","hooks":[{"signal":"RST sent","hook":"tp_btf/tcp_send_reset","status":"attached","why":null},{"signal":"segment TTL","hook":"cgroup_skb/ingress","status":"unavailable","why":"no cgroup v2"}]}"#,
        )
        .unwrap();
        assert_eq!(
            parse_hooks(&ready).unwrap(),
            [
                "RST sent: tp_btf/tcp_send_reset (attached)",
                "segment TTL: cgroup_skb/ingress (unavailable: no cgroup v2)"
            ]
        );
        assert!(parse_hooks(&serde_json::json!({"type": "ready"})).is_err());
    }

    #[test]
    fn shows_every_flag() {
        assert_eq!(
            Daemon::flags(),
            "--format json --journald off --findings-only --stats-interval 0"
        );
    }
}
