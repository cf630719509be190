//! Booting a kernel and initramfs under qemu's software emulation (TCG), reading the guest's
//! serial console until the driver's marker, with a hard deadline.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The line the guest's /init prints when the driver passed.
const PASS: &str = "KEEPALIVE-VMTEST: PASS";
/// The start of the line it prints when the driver failed.
const FAIL: &str = "KEEPALIVE-VMTEST: FAIL";

/// What the console showed.
pub struct Console {
    /// Every line, in order.
    pub lines: Vec<String>,
    /// Time from start to the marker.
    pub elapsed: Duration,
    /// Whether the guest test passed.
    pub passed: bool,
}

/// Kills qemu if it is still running when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Boots `vmlinux` with `initrd`, echoes the console prefixed with `tag`, and returns it when
/// the pass or fail marker appears within `timeout`.
pub fn boot(vmlinux: &Path, initrd: &Path, tag: &str, timeout: Duration) -> Result<Console> {
    let mut command = Command::new("qemu-system-x86_64");
    command
        .args(["-accel", "tcg", "-cpu", "max", "-m", "1G", "-smp", "2"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(vmlinux)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 loglevel=4"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    println!("$ {}", crate::cmd::describe(&command));
    let started = Instant::now();
    let mut guard = Guard(
        command
            .spawn()
            .context("cannot start qemu-system-x86_64 (run `cargo xtask setup`)")?,
    );
    let stdout = guard.0.stdout.take().context("qemu's stdout is piped")?;
    let stderr = guard.0.stderr.take().context("qemu's stderr is piped")?;
    let (send, lines) = channel();
    let err_send = send.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if send.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if err_send.send(format!("qemu: {line}")).is_err() {
                break;
            }
        }
    });
    let deadline = started + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                // The serial console ends lines with CR LF; the kernel's own may carry other
                // control characters.
                let line = line.trim_end_matches(['\r', '\n']).to_owned();
                // Printed recordings are kept, not echoed.
                if !line.contains(super::RECORDING_PREFIX) {
                    println!("[{tag}] {line}");
                }
                let passed = line.contains(PASS);
                let done = passed || line.contains(FAIL);
                seen.push(line);
                if done {
                    let elapsed = started.elapsed();
                    wait_for_poweroff(&mut guard.0);
                    return Ok(Console {
                        lines: seen,
                        elapsed,
                        passed,
                    });
                }
            }
            Err(RecvTimeoutError::Timeout) => bail!(
                "kernel {tag}: no result within {} s: the guest hung or is too slow",
                timeout.as_secs()
            ),
            Err(RecvTimeoutError::Disconnected) => {
                let status = guard.0.wait().context("waiting for qemu")?;
                bail!("kernel {tag}: qemu exited ({status}) before the guest reported a result");
            }
        }
    }
}

/// The guest powers off after its marker; give it a moment, then let the guard kill it.
fn wait_for_poweroff(qemu: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if matches!(qemu.try_wait(), Ok(Some(_)) | Err(_)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
