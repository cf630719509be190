//! Ctrl-C and SIGTERM for the long-running tasks (lab, bench): the handler only raises a flag;
//! every wait checks it ([`check`], [`requested`]) and returns [`Interrupted`], so the task
//! unwinds and tears down or restores what it changed, in order.
//!
//! Their children run in process groups of their own, so a Ctrl-C from the terminal reaches
//! the task alone (and `cargo xtask`, which waits for it), and the task stops them.

use std::fmt;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// The error every wait returns once SIGINT or SIGTERM arrived.
#[derive(Debug)]
pub struct Interrupted;

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// Installs the handler for SIGINT and SIGTERM.
pub fn install() -> Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is valid; the handler only stores to an atomic, which is
        // async-signal-safe.
        let installed = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, ptr::null_mut())
        };
        if installed != 0 {
            return Err(std::io::Error::last_os_error())
                .context("cannot install a SIGINT/SIGTERM handler");
        }
    }
    Ok(())
}

extern "C" fn on_signal(_: libc::c_int) {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether SIGINT or SIGTERM arrived.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Fails with [`Interrupted`] once a signal arrived.
pub fn check() -> Result<()> {
    if requested() {
        Err(Interrupted.into())
    } else {
        Ok(())
    }
}
