//! `cargo xtask run`: builds the daemon and runs it as root, through sudo when needed; and
//! running a child in the foreground for `run`, `lab` and `bench`.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode, ExitStatus};
use std::ptr;
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{Context, Result, bail};

use crate::build::{self, Profile};
use crate::{cmd, setup};

pub fn run(profile: Profile, args: &[String]) -> Result<ExitCode> {
    setup::run(setup::Report::Quiet)?;
    build::run(profile)?;

    let binary = build::binary(profile);
    let mut daemon = if keepalive_lab::is_root() {
        Command::new(&binary)
    } else if let Ok(sudo) = which::which("sudo") {
        println!("not root: running keepalive-observer through sudo");
        let mut sudo = Command::new(sudo);
        sudo.arg("-E").arg(&binary);
        sudo
    } else {
        bail!(
            "keepalive-observer needs root (or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN), and sudo \
             is not installed: run `cargo xtask run` as root, or run {} as a user with those \
             capabilities",
            binary.display()
        );
    };
    daemon.args(args);
    foreground(&mut daemon)
}

/// Prints and runs `command` in xtask's process group, waits for it and exits with its status;
/// SIGINT and SIGTERM wait for it too.
pub fn foreground(command: &mut Command) -> Result<ExitCode> {
    let line = cmd::describe(command);
    println!("$ {line}");
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    forward_signals(child.id())?;
    let status = child
        .wait()
        .with_context(|| format!("cannot wait for `{line}`"))?;
    Ok(exit_code(status))
}

/// The child's pid, for the signal handler.
static CHILD: AtomicI32 = AtomicI32::new(0);

/// Keeps xtask alive on SIGINT/SIGTERM so that it waits for the child and returns its status.
/// A Ctrl-C from the terminal already reaches the child (same process group); a signal that a
/// process sent to xtask alone is passed on to it.
fn forward_signals(child: u32) -> Result<()> {
    let pid = i32::try_from(child).context("child pid out of range")?;
    CHILD.store(pid, Ordering::SeqCst);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is valid; the handler only calls async-signal-safe kill().
        let installed = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = forward as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, ptr::null_mut())
        };
        if installed != 0 {
            return Err(std::io::Error::last_os_error()).context("cannot install a signal handler");
        }
    }
    Ok(())
}

extern "C" fn forward(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // si_code > 0 means the kernel sent it (the terminal's Ctrl-C), which the child got too;
    // SI_USER, SI_QUEUE and SI_TKILL (<= 0) mean kill() aimed at xtask.
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let sent_by_process = unsafe { (*info).si_code } <= 0;
    let pid = CHILD.load(Ordering::SeqCst);
    if sent_by_process && pid > 0 {
        // SAFETY: kill() is async-signal-safe.
        unsafe { libc::kill(pid, signal) };
    }
}

/// The child's exit status as xtask's: its code, or 128 + signal like a shell.
fn exit_code(status: ExitStatus) -> ExitCode {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        (None, Some(signal)) => ExitCode::from(u8::try_from(128 + signal).unwrap_or(1)),
        (None, None) => ExitCode::FAILURE,
    }
}
