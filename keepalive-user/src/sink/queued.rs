//! A sink behind a bounded queue: the records are formatted and written on the queue's thread,
//! so a stdout nobody reads or a stalled journal costs dropped (and counted) lines, never a
//! stalled ring-buffer reader.

use std::time::Duration;

use super::{LossReport, Sink, SinkError, StartupReport};
use crate::{
    correlate::Finding,
    event::TcpEvent,
    queue::{DropCounter, Output, Queue},
};

/// Records waiting per output, at most: about as many as the ring buffer holds, so that a
/// burst a slow reader used to leave in the ring buffer now waits here. An event is boxed
/// (424 bytes, and its reason's name), so a full queue holds about 8 MiB.
pub const CAPACITY: usize = 16_384;
/// How long an output may make no progress at exit before what it still has queued is given
/// up (see [`crate::queue`]).
pub const EXIT_GRACE: Duration = Duration::from_secs(1);

/// One record for the sink's thread.
pub enum Record {
    /// [`Sink::ready`].
    Ready(Box<StartupReport>),
    /// [`Sink::event`].
    Event(Box<TcpEvent>),
    /// [`Sink::finding`].
    Finding(Box<Finding>),
    /// [`Sink::stats`].
    Stats(Box<LossReport>),
}

/// A sink on its own thread.
struct Threaded(Box<dyn Sink + Send>);

impl Output for Threaded {
    type Message = Record;
    type Error = SinkError;

    fn write(&mut self, record: Record) -> Result<(), SinkError> {
        match record {
            Record::Ready(report) => self.0.ready(&report),
            Record::Event(event) => self.0.event(&event),
            Record::Finding(finding) => self.0.finding(&finding),
            Record::Stats(loss) => self.0.stats(&loss),
        }
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.0.flush()
    }

    fn is_final(error: &SinkError) -> bool {
        matches!(error, SinkError::StdoutClosed)
    }
}

/// Queues every record for a sink on its own thread. Errors the sink meets come back from
/// the next call.
pub struct QueuedSink {
    queue: Queue<Threaded>,
}

impl QueuedSink {
    /// Starts the thread `<name> writer` for `sink`.
    pub fn spawn(name: &'static str, sink: Box<dyn Sink + Send>) -> std::io::Result<Self> {
        Ok(Self {
            queue: Queue::spawn(name, Threaded(sink), CAPACITY, EXIT_GRACE)?,
        })
    }

    /// How many records this output dropped because its queue was full.
    pub fn dropped(&self) -> DropCounter {
        self.queue.dropped()
    }

    fn push(&mut self, record: Record) -> Result<(), SinkError> {
        self.queue.push(record);
        self.queue.take_error().map_or(Ok(()), Err)
    }
}

impl Sink for QueuedSink {
    fn ready(&mut self, report: &StartupReport) -> Result<(), SinkError> {
        self.push(Record::Ready(Box::new(report.clone())))
    }

    fn event(&mut self, event: &TcpEvent) -> Result<(), SinkError> {
        self.push(Record::Event(Box::new(event.clone())))
    }

    fn finding(&mut self, finding: &Finding) -> Result<(), SinkError> {
        self.push(Record::Finding(Box::new(finding.clone())))
    }

    fn stats(&mut self, loss: &LossReport) -> Result<(), SinkError> {
        self.push(Record::Stats(Box::new(loss.clone())))
    }

    /// Waits for room while the output makes progress: the totals at exit are worth it.
    fn last_stats(&mut self, loss: &LossReport) -> Result<(), SinkError> {
        self.queue
            .push_waiting(Record::Stats(Box::new(loss.clone())));
        self.queue.take_error().map_or(Ok(()), Err)
    }

    /// The thread flushes whenever its queue runs empty; this only reports its errors.
    fn flush(&mut self) -> Result<(), SinkError> {
        self.queue.take_error().map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{self, Write},
        sync::{Arc, Mutex},
    };

    use super::*;
    use crate::sink::{JsonSink, testdata};

    /// A writer whose bytes the test can read.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writes_everything_in_order_on_its_thread() {
        let out = Shared::default();
        let mut sink = QueuedSink::spawn(
            "json",
            Box::new(JsonSink::new(out.clone(), testdata::clock())),
        )
        .unwrap();
        sink.ready(&testdata::report()).unwrap();
        sink.event(&testdata::event()).unwrap();
        sink.finding(&testdata::finding()).unwrap();
        sink.stats(&LossReport::default()).unwrap();
        sink.flush().unwrap();
        let dropped = sink.dropped();
        drop(sink);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let types: Vec<String> = text
            .lines()
            .map(|line| {
                serde_json::from_str::<serde_json::Value>(line).unwrap()["type"].to_string()
            })
            .collect();
        assert_eq!(
            types,
            [r#""ready""#, r#""event""#, r#""finding""#, r#""stats""#]
        );
        assert_eq!(dropped.get(), 0);
    }
}
