//! One channel for everything the lab waits on: the lines of the observer (forwarded by the
//! daemon harness) and of the client, read by one thread per stream.

use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::client;
use super::observer::Finding;
use crate::interrupt;

/// How often a wait looks at the interrupt flag.
const POLL: Duration = Duration::from_millis(100);

/// Who printed a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Observer,
    Client,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Observer => "keepalive-observer",
            Source::Client => "the client",
        }
    }
}

/// A line read from a child, or the end of its output.
#[derive(Debug)]
pub enum Msg {
    /// The observer attributed a connection death.
    Finding(Box<Finding>),
    /// The observer's totals: events lost in the kernel since it started.
    Stats { kernel_lost: u64 },
    /// The client reported something.
    Client(client::Line),
    /// A line that could not be read as what `Source` prints.
    Unreadable(Source, String),
    /// The child's standard output closed: it exited.
    Closed(Source),
}

/// The receiving end; hand out senders with [`Events::sender`].
pub struct Events {
    receiver: Receiver<Msg>,
    sender: Sender<Msg>,
}

impl Events {
    pub fn new() -> Events {
        let (sender, receiver) = mpsc::channel();
        Events { receiver, sender }
    }

    /// A sender for another reader of lines.
    pub fn sender(&self) -> Sender<Msg> {
        self.sender.clone()
    }

    /// The next message, or `None` once `until` has passed; fails when interrupted.
    pub fn next(&self, until: Instant) -> Result<Option<Msg>> {
        loop {
            interrupt::check()?;
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            match self.receiver.recv_timeout(left.min(POLL)) {
                Ok(msg) => return Ok(Some(msg)),
                // `self` holds a sender, so the channel never disconnects.
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
            }
        }
    }

    /// Starts a thread that sends every non-empty line of `stream` parsed by `parse` (`None`:
    /// a line to ignore), then [`Msg::Closed`].
    pub fn read_lines(
        &self,
        source: Source,
        stream: impl Read + Send + 'static,
        parse: fn(&str) -> Result<Option<Msg>, String>,
    ) -> Result<()> {
        let sender = self.sender.clone();
        thread::Builder::new()
            .name(format!("lines of {}", source.name()))
            .spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if line.trim().is_empty() {
                        continue;
                    }
                    let msg = match parse(&line) {
                        Ok(Some(msg)) => msg,
                        Ok(None) => continue,
                        Err(why) => Msg::Unreadable(source, format!("{why}: {line}")),
                    };
                    if sender.send(msg).is_err() {
                        return;
                    }
                }
                // The receiver may be gone when the lab is over; nothing is left to tell then.
                let _ = sender.send(Msg::Closed(source));
            })
            .with_context(|| format!("cannot start a thread reading {}", source.name()))?;
        Ok(())
    }
}
