//! How to start the daemon: a builder of its arguments, where its output goes, its deadlines.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Sender};
use std::thread;
use std::time::Duration;

use serde_json::Value;

use super::output::{self, Lines, Sink};
use super::{Daemon, DaemonError, JSON_ARGS, Output};

/// How to start the daemon. The defaults: standard output read through a pipe, standard error
/// inherited, 60 s to get ready, 10 s to exit after SIGINT, and a state directory of its own
/// (removed when it is dropped), so that no run learns from another's windows.
pub struct Launch {
    binary: PathBuf,
    pub(super) args: Vec<OsString>,
    stdout_file: Option<PathBuf>,
    stderr_file: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    ready_timeout: Duration,
    stop_timeout: Duration,
    cancelled: fn() -> bool,
    isolated: bool,
    forward: Option<Sink>,
}

impl Launch {
    /// Starts `binary` with [`JSON_ARGS`].
    pub fn new(binary: impl Into<PathBuf>) -> Launch {
        Launch {
            binary: binary.into(),
            args: JSON_ARGS.iter().map(OsString::from).collect(),
            stdout_file: None,
            stderr_file: None,
            state_dir: None,
            ready_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(10),
            cancelled: || false,
            isolated: false,
            forward: None,
        }
    }

    /// More arguments, after [`JSON_ARGS`].
    pub fn args<I, S>(mut self, args: I) -> Launch
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// How long loading and attaching may take.
    pub fn ready_timeout(mut self, timeout: Duration) -> Launch {
        self.ready_timeout = timeout;
        self
    }

    /// How long the daemon may take to exit after SIGINT before it is killed.
    pub fn stop_timeout(mut self, timeout: Duration) -> Launch {
        self.stop_timeout = timeout;
        self
    }

    /// Standard output goes to the file `path` and is read back from there: a daemon that
    /// prints a finding per reset in a storm must not block on a pipe whose reader is not
    /// scheduled in time. The caller removes the file.
    pub fn stdout_file(mut self, path: impl Into<PathBuf>) -> Launch {
        self.stdout_file = Some(path.into());
        self
    }

    /// Standard error goes to the file `path`; errors quote its last lines.
    pub fn stderr_file(mut self, path: impl Into<PathBuf>) -> Launch {
        self.stderr_file = Some(path.into());
        self
    }

    /// The daemon keeps its learned state in `dir` (`--state-dir`), which outlives it: for a
    /// daemon that restarts with what an earlier one learned. The caller removes it.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Launch {
        self.state_dir = Some(dir.into());
        self
    }

    /// Every wait gives up with [`DaemonError::Cancelled`] once `cancelled` returns true
    /// (checked every 20 ms), e.g. after Ctrl-C.
    pub fn cancel_when(mut self, cancelled: fn() -> bool) -> Launch {
        self.cancelled = cancelled;
        self
    }

    /// The daemon runs in a process group of its own, so that a Ctrl-C from the terminal
    /// reaches only the caller, which stops it in order; and it is killed if the caller dies.
    pub fn isolated(mut self) -> Launch {
        self.isolated = true;
        self
    }

    /// After the `ready` line, every line goes to `sender`, as `wrap` makes it (`None`: drop
    /// the line), [`Output::Closed`] last; [`Daemon::wait_for`] and [`Daemon::all`] then see
    /// none. For a caller that waits on the daemon and on other sources through one channel.
    pub fn forward_to<M: Send + 'static>(
        mut self,
        sender: Sender<M>,
        wrap: fn(Output) -> Option<M>,
    ) -> Launch {
        self.forward = Some(Box::new(move |output| match wrap(output) {
            Some(message) => sender.send(message).is_ok(),
            None => true,
        }));
        self
    }

    /// The command line, for printing.
    pub fn command_line(&self) -> String {
        let mut words = vec![self.binary.display().to_string()];
        words.extend(self.args.iter().map(|arg| arg.display().to_string()));
        words.join(" ")
    }

    /// Spawns the daemon and waits for its `ready` line.
    pub fn start(self) -> Result<Daemon, DaemonError> {
        if !self.binary.exists() {
            return Err(DaemonError::Spawn {
                binary: self.binary.clone(),
                source: io::Error::new(io::ErrorKind::NotFound, "no such file: is it built?"),
            });
        }
        let own_state_dir = self.state_dir.is_none().then(fresh_state_dir);
        let state_dir = self.state_dir.as_ref().or(own_state_dir.as_ref());
        let mut command = Command::new(&self.binary);
        command.args(&self.args).stdin(Stdio::null());
        command.arg("--state-dir").args(state_dir);
        command.stdout(match &self.stdout_file {
            Some(path) => Stdio::from(create(path)?),
            None => Stdio::piped(),
        });
        command.stderr(match &self.stderr_file {
            Some(path) => Stdio::from(create(path)?),
            None => Stdio::inherit(),
        });
        if self.isolated {
            crate::isolate(&mut command);
        }
        let mut child = command.spawn().map_err(|source| DaemonError::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        let lines = match self.stdout_file {
            Some(path) => Lines::file(path),
            None => match read_stdout(&mut child, self.forward) {
                Ok(lines) => lines,
                Err(error) => {
                    // Nothing would stop it otherwise; the error is what matters.
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(error);
                }
            },
        };
        let mut daemon = Daemon {
            child,
            lines,
            seen: Vec::new(),
            ready: Value::Null,
            stderr_file: self.stderr_file,
            own_state_dir,
            stop_timeout: self.stop_timeout,
            cancelled: self.cancelled,
            exited: None,
        };
        daemon.ready = daemon.wait_for("the ready line", self.ready_timeout, |line| {
            line["type"] == "ready"
        })?;
        Ok(daemon)
    }
}

/// Starts the thread that reads the child's piped standard output.
fn read_stdout(child: &mut Child, forward: Option<Sink>) -> Result<Lines, DaemonError> {
    let stdout = child.stdout.take().ok_or_else(|| DaemonError::Process {
        operation: "reading the standard output of",
        source: io::Error::other("not piped"),
    })?;
    let (sender, receiver) = mpsc::channel();
    thread::Builder::new()
        .name("keepalive-observer stdout".to_owned())
        .spawn(move || output::read_pipe(stdout, sender, forward))
        .map_err(|source| DaemonError::Process {
            operation: "starting a thread to read",
            source,
        })?;
    Ok(Lines::pipe(receiver))
}

/// A state directory no other daemon uses: the daemon creates it.
fn fresh_state_dir() -> PathBuf {
    static LAUNCHES: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "keepalive-observer-state-{}-{}",
        std::process::id(),
        LAUNCHES.fetch_add(1, Ordering::Relaxed)
    ))
}

fn create(path: &Path) -> Result<File, DaemonError> {
    File::create(path).map_err(|source| DaemonError::File {
        path: path.to_owned(),
        operation: "cannot create",
        source,
    })
}
