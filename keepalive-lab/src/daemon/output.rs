//! Reading the daemon's standard output: from a pipe by a thread, or from a file it writes.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread;
use std::time::Instant;

use serde_json::Value;

use super::{DaemonError, POLL};

/// Bytes at the end of a stdout file searched for the last lines.
const FILE_TAIL: u64 = 1 << 16;

/// A line of the daemon's standard output, or its end.
#[derive(Debug)]
pub enum Output {
    /// A JSON record.
    Json(Value),
    /// A line that is not JSON, with why.
    Unreadable(String),
    /// The daemon closed its standard output: it exited.
    Closed,
}

impl Output {
    fn parse(line: &str) -> Output {
        serde_json::from_str(line).map_or_else(
            |error| Output::Unreadable(format!("{error}: {line}")),
            Output::Json,
        )
    }
}

/// Where lines go after `ready` when the caller has a channel of its own; false once that
/// channel is gone.
pub(super) type Sink = Box<dyn FnMut(Output) -> bool + Send>;

/// The reading thread: every line to `own` up to and with `ready`, then to `forward` when
/// given; [`Output::Closed`] last. Lines nobody takes any more are read all the same, so that
/// the daemon never blocks on a full pipe while it stops.
pub(super) fn read_pipe(stdout: ChildStdout, own: Sender<Output>, mut forward: Option<Sink>) {
    let mut ready = false;
    let mut deliver = |output: Output, ready: bool| match &mut forward {
        Some(sink) if ready => {
            if !sink(output) {
                forward = None;
            }
        }
        // A receiver that is gone only means nobody waits for the line.
        _ => drop(own.send(output)),
    };
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let output = Output::parse(&line);
        let was_ready = ready;
        ready |= matches!(&output, Output::Json(value) if value["type"] == "ready");
        deliver(output, was_ready);
    }
    deliver(Output::Closed, ready);
}

/// The daemon's lines as [`super::Daemon`] reads them.
pub(super) enum Lines {
    Pipe {
        receiver: Receiver<Output>,
        closed: bool,
    },
    File {
        path: PathBuf,
        offset: u64,
        /// The start of a line not yet written out in full.
        partial: String,
        pending: VecDeque<Output>,
    },
}

impl Lines {
    pub(super) fn pipe(receiver: Receiver<Output>) -> Lines {
        Lines::Pipe {
            receiver,
            closed: false,
        }
    }

    pub(super) fn file(path: PathBuf) -> Lines {
        Lines::File {
            path,
            offset: 0,
            partial: String::new(),
            pending: VecDeque::new(),
        }
    }

    /// The next line, waiting until `until`; `None` when none came by then. After the end,
    /// every call returns [`Output::Closed`].
    pub(super) fn next(
        &mut self,
        until: Instant,
        child: &mut Child,
    ) -> Result<Option<Output>, DaemonError> {
        match self {
            Lines::Pipe { closed: true, .. } => Ok(Some(Output::Closed)),
            Lines::Pipe { receiver, closed } => {
                let left = until.saturating_duration_since(Instant::now());
                let received = if left.is_zero() {
                    receiver.try_recv().map_err(|error| match error {
                        TryRecvError::Empty => RecvTimeoutError::Timeout,
                        TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
                    })
                } else {
                    receiver.recv_timeout(left)
                };
                match received {
                    Ok(Output::Closed) | Err(RecvTimeoutError::Disconnected) => {
                        *closed = true;
                        Ok(Some(Output::Closed))
                    }
                    Ok(output) => Ok(Some(output)),
                    Err(RecvTimeoutError::Timeout) => Ok(None),
                }
            }
            Lines::File { .. } => loop {
                if let Some(output) = self.read_file()? {
                    return Ok(Some(output));
                }
                // Read once more after the exit: the last lines may have come just before it.
                if child.try_wait().ok().flatten().is_some() {
                    return Ok(Some(self.read_file()?.unwrap_or(Output::Closed)));
                }
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(None);
                }
                thread::sleep(left.min(POLL));
            },
        }
    }

    /// The lines the daemon printed last, once it exited: from a pipe, what was not read yet
    /// (waiting until `until` for the reader to reach the end); from a file, what its last
    /// 64 KiB hold. Lines that are not JSON are left out.
    pub(super) fn rest(&mut self, until: Instant) -> Result<Vec<Value>, DaemonError> {
        match self {
            Lines::Pipe { closed: true, .. } => Ok(Vec::new()),
            Lines::Pipe { receiver, .. } => {
                let mut lines = Vec::new();
                loop {
                    let left = until.saturating_duration_since(Instant::now());
                    match receiver.recv_timeout(left) {
                        Ok(Output::Json(line)) => lines.push(line),
                        Ok(Output::Unreadable(_)) => {}
                        Ok(Output::Closed) | Err(_) => return Ok(lines),
                    }
                }
            }
            Lines::File { path, .. } => Ok(last_lines(path)?
                .iter()
                .filter_map(|line| serde_json::from_str(line).ok())
                .collect()),
        }
    }

    /// The next complete line of the file, reading what was appended since the last call.
    fn read_file(&mut self) -> Result<Option<Output>, DaemonError> {
        let Lines::File {
            path,
            offset,
            partial,
            pending,
        } = self
        else {
            return Ok(None);
        };
        if pending.is_empty() {
            let mut file = open(path)?;
            let mut appended = Vec::new();
            file.seek(SeekFrom::Start(*offset))
                .and_then(|_| file.read_to_end(&mut appended))
                .map_err(|source| read_error(path, source))?;
            *offset += appended.len() as u64;
            partial.push_str(&String::from_utf8_lossy(&appended));
            if let Some(end) = partial.rfind('\n') {
                let complete: String = partial.drain(..=end).collect();
                pending.extend(
                    complete
                        .lines()
                        .filter(|line| !line.trim().is_empty())
                        .map(Output::parse),
                );
            }
        }
        Ok(pending.pop_front())
    }
}

/// The complete lines in the last [`FILE_TAIL`] bytes of a file.
fn last_lines(path: &Path) -> Result<Vec<String>, DaemonError> {
    let mut file = open(path)?;
    let len = file
        .metadata()
        .map_err(|source| read_error(path, source))?
        .len();
    let start = len.saturating_sub(FILE_TAIL);
    let mut tail = Vec::new();
    file.seek(SeekFrom::Start(start))
        .and_then(|_| file.read_to_end(&mut tail))
        .map_err(|source| read_error(path, source))?;
    let text = String::from_utf8_lossy(&tail);
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    if start > 0 && !lines.is_empty() {
        // Cut in the middle of a line.
        lines.remove(0);
    }
    Ok(lines)
}

/// The last `count` lines of a log file, for error messages.
pub fn tail(path: &Path, count: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            if lines.is_empty() {
                "(empty)".to_owned()
            } else {
                lines[lines.len().saturating_sub(count)..].join("\n")
            }
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}

fn open(path: &Path) -> Result<File, DaemonError> {
    File::open(path).map_err(|source| read_error(path, source))
}

fn read_error(path: &Path, source: std::io::Error) -> DaemonError {
    DaemonError::File {
        path: path.to_owned(),
        operation: "cannot read",
        source,
    }
}
