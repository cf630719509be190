//! The socket audit before each ladder step: `keepalive-observer sockets` on the client's
//! namespace, for the pool's connections to the VIP, shortly before the client uses its pooled
//! connection again. It says which connection will be reset before the request shows it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use keepalive_schema::socket::{SocketLine, SocketsLine};

/// How long before a step the audit starts, at least: it loads BTF and an iterator program.
const MIN_LEAD: Duration = Duration::from_millis(800);
/// Margin over the slowest audit so far.
const MARGIN: Duration = Duration::from_millis(300);

/// Runs the audit and learns how long it takes.
pub struct Audit {
    binary: PathBuf,
    slowest: Duration,
}

/// The window the audit judges against.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AuditWindow {
    /// The lower bound of the window the observer learned, seconds.
    Learned(f64),
    /// Nothing learned yet: the middlebox's configured timeout, seconds.
    Configured(u32),
}

impl AuditWindow {
    fn seconds(self) -> f64 {
        match self {
            Self::Learned(s) => s,
            Self::Configured(s) => f64::from(s),
        }
    }

    /// How the lab names it.
    pub fn describe(self) -> String {
        match self {
            Self::Learned(s) => format!("{s:.2} s learned by the observer"),
            Self::Configured(s) => format!("{s} s configured (nothing learned yet)"),
        }
    }
}

impl Audit {
    pub fn new(binary: &Path) -> Audit {
        Audit {
            binary: binary.to_owned(),
            slowest: Duration::ZERO,
        }
    }

    /// How long before a step to start the audit so that it ends before the step.
    pub fn lead(&self) -> Duration {
        (self.slowest + MARGIN).max(MIN_LEAD)
    }

    /// The pool's connections to `vip` in namespace `netns`, judged against `window`.
    pub fn run(
        &mut self,
        netns: &str,
        vip: SocketAddr,
        window: AuditWindow,
    ) -> Result<Vec<SocketLine>> {
        let started = Instant::now();
        let window = format!("{vip}={:.3}", window.seconds());
        let output = Command::new(&self.binary)
            .args(["sockets", "--format", "json", "--netns", netns])
            .args(["--remote", &vip.to_string(), "--window", &window])
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
    format!(
        "{} {}, {idle}, {keepalive}: {} ({})",
        socket.local, socket.state, socket.risk, socket.code
    )
}
