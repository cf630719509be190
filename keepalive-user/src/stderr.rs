//! The daemon's own messages (warnings, through `tracing`) on standard error, behind a bounded
//! queue like every other output: under systemd standard error is a stream to journald, and a
//! stalled journal must not stall the ring-buffer reader through a warning. What it cannot
//! take is dropped and counted (`stderr` in the stats line's `output_dropped`).

use std::{
    io::{self, Write},
    mem,
    sync::Arc,
    time::Duration,
};

use tracing_subscriber::fmt::MakeWriter;

use crate::queue::{DropCounter, Output, Queue};

/// Lines waiting, at most.
const CAPACITY: usize = 1024;
/// How long standard error may make no progress at exit before what is queued is given up.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// Standard error itself, on the queue's thread.
struct Stderr(io::Stderr);

impl Output for Stderr {
    type Message = Vec<u8>;
    type Error = io::Error;

    fn write(&mut self, line: Vec<u8>) -> io::Result<()> {
        self.0.write_all(&line)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }

    /// Nobody reads these errors: a failed write is a lost line, and the next may pass.
    fn is_final(_: &io::Error) -> bool {
        false
    }
}

/// A `tracing` writer that queues each formatted message as one line.
#[derive(Clone)]
pub struct QueuedStderr(Arc<Queue<Stderr>>);

impl QueuedStderr {
    /// Starts the thread that writes to standard error.
    pub fn spawn() -> io::Result<Self> {
        Queue::spawn("stderr", Stderr(io::stderr()), CAPACITY, EXIT_GRACE)
            .map(|queue| Self(Arc::new(queue)))
    }

    /// Lines dropped because the queue was full.
    pub fn dropped(&self) -> DropCounter {
        self.0.dropped()
    }

    /// Waits for what is queued to be written, while standard error makes progress.
    pub fn drain(&self) {
        self.0.drain();
    }
}

/// One message being formatted; queued whole when dropped.
pub struct Message<'a> {
    queue: &'a Queue<Stderr>,
    bytes: Vec<u8>,
}

impl Write for Message<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Message<'_> {
    fn drop(&mut self) {
        if !self.bytes.is_empty() {
            self.queue.push(mem::take(&mut self.bytes));
        }
    }
}

impl<'a> MakeWriter<'a> for QueuedStderr {
    type Writer = Message<'a>;

    fn make_writer(&'a self) -> Message<'a> {
        Message {
            queue: &self.0,
            bytes: Vec::new(),
        }
    }
}
