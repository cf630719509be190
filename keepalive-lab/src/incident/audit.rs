//! The socket audit before each ladder step: `keepalive-observer sockets` on the client's
//! namespace, for the pool's connections to the VIP, while the client waits at the end of its
//! pause before using its pooled connection again (it announces the step and waits for a go), against the window the observer learned so far (its state file) or,
//! while nothing is learned, the configured timeout. It says which connection will be reset
//! before the request shows it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use keepalive_schema::socket::{SocketLine, SocketsLine};

/// How long before a step the audit starts, at least: it loads BTF and an iterator program.
const MIN_LEAD: Duration = Duration::from_millis(800);
/// Margin over the slowest audit so far: half of it again, and this.
const MARGIN: Duration = Duration::from_millis(300);

/// Runs the audit and learns how long it takes.
pub struct Audit {
    binary: PathBuf,
    slowest: Duration,
}

impl Audit {
    pub fn new(binary: &Path) -> Audit {
        Audit {
            binary: binary.to_owned(),
            slowest: Duration::ZERO,
        }
    }

    /// How long before a step to start the audit so that it ends before the step: a
    /// slower audit delays the step (the client waits for it), a step whose pause is shorter
    /// goes without.
    pub fn lead(&self) -> Duration {
        (self.slowest + self.slowest / 2 + MARGIN).max(MIN_LEAD)
    }

    /// The pool's connections to `vip` in namespace `netns`, judged against the window the
    /// observer learned (its state in `state_dir`), else the configured `timeout_s`.
    pub fn run(
        &mut self,
        netns: &str,
        vip: SocketAddr,
        state_dir: &Path,
        timeout_s: u32,
    ) -> Result<Vec<SocketLine>> {
        let started = Instant::now();
        let window = format!("{vip}={timeout_s}");
        let output = Command::new(&self.binary)
            .args(["sockets", "--format", "json", "--netns", netns])
            .args(["--remote", &vip.to_string(), "--window", &window])
            .arg("--state-dir")
            .arg(state_dir)
            .output()
            .with_context(|| format!("cannot run {} sockets", self.binary.display()))?;
        self.slowest = self.slowest.max(started.elapsed());
        if !output.status.success() {
            bail!(
                "keepalive-observer sockets failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let mut sockets = Vec::new();
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let parsed: SocketsLine = serde_json::from_str(line)
                .with_context(|| format!("keepalive-observer sockets printed {line}"))?;
            if let SocketsLine::Socket(socket) = parsed {
                sockets.push(*socket);
            }
        }
        Ok(sockets)
    }
}

/// One connection's verdict as the lab prints it.
pub fn describe(socket: &SocketLine) -> String {
    let idle = socket
        .idle_rx_ms
        .zip(socket.idle_tx_ms)
        .map(|(rx, tx)| rx.min(tx))
        .or(socket.idle_rx_ms)
        .map_or_else(
            || "idle ?".to_owned(),
            |ms| format!("idle {:.1} s", ms as f64 / 1000.0),
        );
    let keepalive = match &socket.keepalive {
        Some(k) if k.on => format!("keepalive idle {:.0} s", k.idle_ms as f64 / 1000.0),
        Some(_) => "keepalive off".to_owned(),
        None => "keepalive unknown".to_owned(),
    };
    let window = match &socket.window {
        Some(w) if w.source == "learned" => {
            format!(", window {:.2} s learned", w.bound_ms as f64 / 1000.0)
        }
        Some(w) => format!(", window {:.0} s configured", w.bound_ms as f64 / 1000.0),
        None => String::new(),
    };
    format!(
        "{} {}, {idle}, {keepalive}{window}: {} ({})",
        socket.local, socket.state, socket.risk, socket.code
    )
}
