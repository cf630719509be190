//! Why running the daemon failed.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Why starting, reading or stopping the daemon failed; the waits' errors carry its last lines
/// (and of its standard error, when that goes to a file).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The binary could not be started (or does not exist).
    #[error("cannot start {}: {source}", binary.display())]
    Spawn {
        /// The daemon binary.
        binary: PathBuf,
        /// Why it could not be started.
        source: io::Error,
    },
    /// A file for its output could not be created or read.
    #[error("{operation} {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// `cannot create` or `cannot read`.
        operation: &'static str,
        /// The system error.
        source: io::Error,
    },
    /// It exited (closed its standard output) while a line was awaited.
    #[error("waiting for {what}: keepalive-observer exited ({status}){context}")]
    Exited {
        /// What was awaited, e.g. `the ready line`.
        what: String,
        /// Its exit status.
        status: String,
        /// Its last lines.
        context: String,
    },
    /// No matching line came in time.
    #[error("waiting for {what}: timed out after {timeout:?}{context}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long it was awaited.
        timeout: Duration,
        /// Its last lines.
        context: String,
    },
    /// It printed a line that is not JSON.
    #[error("keepalive-observer printed a line that is not JSON ({0})")]
    Unreadable(String),
    /// The caller's cancel check asked to stop waiting (Ctrl-C).
    #[error("interrupted")]
    Cancelled,
    /// It did not exit within the stop timeout after SIGINT, and was killed.
    #[error("keepalive-observer did not exit within {grace:?} of SIGINT; killed it")]
    StopTimeout {
        /// The stop timeout.
        grace: Duration,
    },
    /// Signalling the process, or something around it, failed.
    #[error("{operation} keepalive-observer: {source}")]
    Process {
        /// What was being done.
        operation: &'static str,
        /// The system error.
        source: io::Error,
    },
}
