//! A bounded queue in front of an output that may block (a pipe nobody reads, a stalled
//! journal, a slow disk), with a thread of its own that writes to it. The ring-buffer reader
//! only ever queues: when the queue is full the message is dropped and counted, never waited
//! for, so no output can stall it.
//!
//! Memory is bounded by the capacity: at most that many messages wait at once.
//!
//! At exit the output gets a grace period to write what is queued: it may take longer while
//! it makes progress (a slow reader), up to [`MAX_GRACES`] graces, and none longer once it
//! stalls for a whole grace (a reader that went away without closing), so a stuck output
//! cannot hold up SIGTERM.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    thread,
    time::{Duration, Instant},
};

/// [`Queue::stalled_at`] while no wait gave up.
const NOT_STALLED: u64 = u64::MAX;

/// How many graces an output that goes on making progress gets at exit, at most.
pub const MAX_GRACES: u32 = 10;

/// What the queue's thread writes to.
pub trait Output: Send + 'static {
    /// One thing to write.
    type Message: Send + 'static;
    /// Why writing failed.
    type Error: Send + 'static;

    /// Writes one message.
    fn write(&mut self, message: Self::Message) -> Result<(), Self::Error>;
    /// Hands over what is buffered: called whenever the queue runs empty.
    fn flush(&mut self) -> Result<(), Self::Error>;
    /// Whether after `error` the output can take nothing more (its reader went away).
    fn is_final(error: &Self::Error) -> bool;
}

/// How many messages a queue dropped because it was full, or that its output failed to take
/// (a journal being restarted): a handle for the stats line and the metrics.
#[derive(Clone, Debug, Default)]
pub struct DropCounter(Arc<AtomicU64>);

impl DropCounter {
    /// Messages dropped so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// The state both sides see.
struct Shared<E> {
    /// Messages queued and not yet written.
    waiting: AtomicU64,
    /// Messages written (or failed) so far: progress.
    written: AtomicU64,
    /// The first error the thread met since the producer last looked.
    error: Mutex<Option<E>>,
}

/// The producer's end of the queue; closing it (on drop) lets the thread write what is
/// queued, for at most the grace given at [`Queue::spawn`].
pub struct Queue<O: Output> {
    name: &'static str,
    sender: Option<SyncSender<O::Message>>,
    shared: Arc<Shared<O::Error>>,
    dropped: DropCounter,
    /// Behind a lock only so that a queue can be shared between threads (standard error).
    done: Mutex<Receiver<()>>,
    grace: Duration,
    /// Messages written when [`Queue::push_waiting`] last gave up on a stalled output: at
    /// close, no second grace is spent on it unless it moved since.
    stalled_at: AtomicU64,
}

impl<O: Output> Queue<O> {
    /// Starts the thread `keepalive-observer <name>` writing to `output`, with room for
    /// `capacity` waiting messages; on close it gets `grace` to write what is left.
    pub fn spawn(
        name: &'static str,
        output: O,
        capacity: usize,
        grace: Duration,
    ) -> std::io::Result<Self> {
        let (sender, receiver) = mpsc::sync_channel(capacity);
        let (done_sender, done) = mpsc::sync_channel(1);
        let shared = Arc::new(Shared {
            waiting: AtomicU64::new(0),
            written: AtomicU64::new(0),
            error: Mutex::new(None),
        });
        let writer_shared = Arc::clone(&shared);
        let dropped = DropCounter::default();
        let writer_dropped = dropped.clone();
        thread::Builder::new()
            .name(format!("{name} writer"))
            .spawn(move || {
                write_all(output, &receiver, &writer_shared, &writer_dropped);
                // Later pushes fail at once rather than fill a queue nobody reads.
                drop(receiver);
                // The producer may have stopped waiting: nobody to tell then.
                let _ = done_sender.send(());
            })?;
        Ok(Self {
            name,
            sender: Some(sender),
            shared,
            dropped,
            done: Mutex::new(done),
            grace,
            stalled_at: AtomicU64::new(NOT_STALLED),
        })
    }

    /// Queues `message`; drops and counts it when the queue is full or the output can take
    /// nothing more.
    pub fn push(&self, message: O::Message) {
        let Some(sender) = &self.sender else {
            self.dropped.add();
            return;
        };
        self.shared.waiting.fetch_add(1, Ordering::Relaxed);
        match sender.try_send(message) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.waiting.fetch_sub(1, Ordering::Relaxed);
                self.dropped.add();
            }
        }
    }

    /// Queues `message`, waiting for room while the output makes progress (see the module's
    /// notes on the grace): for the last message at exit, never for the ring-buffer reader.
    pub fn push_waiting(&self, message: O::Message) {
        let Some(sender) = &self.sender else {
            self.dropped.add();
            return;
        };
        let mut progress = Progress::new(&self.shared, self.grace);
        self.shared.waiting.fetch_add(1, Ordering::Relaxed);
        let mut message = message;
        loop {
            match sender.try_send(message) {
                Ok(()) => return,
                Err(TrySendError::Full(back)) if progress.goes_on() => {
                    message = back;
                    // The writer is busy: a std channel offers no timed send, so look again
                    // shortly, within the deadline.
                    thread::sleep(Duration::from_millis(1));
                }
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    self.shared.waiting.fetch_sub(1, Ordering::Relaxed);
                    self.dropped.add();
                    self.stalled_at.store(
                        self.shared.written.load(Ordering::Relaxed),
                        Ordering::Relaxed,
                    );
                    return;
                }
            }
        }
    }

    /// Waits until everything queued is written, while the output makes progress: for a
    /// queue that is never closed (standard error's, owned by the global logger).
    pub fn drain(&self) {
        let mut progress = Progress::new(&self.shared, self.grace);
        while self.shared.waiting.load(Ordering::Relaxed) > 0 && progress.goes_on() {
            // No signal for "caught up" short of closing: look again shortly.
            thread::sleep(self.grace / 10);
        }
    }

    /// The first error the output met since the last call.
    pub fn take_error(&self) -> Option<O::Error> {
        self.shared
            .error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// The drop counter, for the stats line and the metrics.
    pub fn dropped(&self) -> DropCounter {
        self.dropped.clone()
    }
}

impl<O: Output> Drop for Queue<O> {
    fn drop(&mut self) {
        self.sender = None;
        let mut progress = Progress::new(&self.shared, self.grace);
        let stalled = self.stalled_at.load(Ordering::Relaxed) == progress.last_written;
        let done = self.done.get_mut().unwrap_or_else(PoisonError::into_inner);
        loop {
            match done.recv_timeout(self.grace / 10) {
                Err(RecvTimeoutError::Timeout) if !stalled && progress.goes_on() => {}
                Err(RecvTimeoutError::Timeout) => {
                    tracing::warn!(
                        "{} did not take its last {} queued record(s) at exit (no progress \
                         for {:?}, or {MAX_GRACES} times that in all): dropped",
                        self.name,
                        self.shared.waiting.load(Ordering::Relaxed),
                        self.grace
                    );
                    return;
                }
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

/// Whether an output is still getting somewhere: it wrote something within the last grace,
/// and [`MAX_GRACES`] graces have not passed.
struct Progress<'a, E> {
    shared: &'a Shared<E>,
    grace: Duration,
    until: Instant,
    last_written: u64,
    last_change: Instant,
}

impl<'a, E> Progress<'a, E> {
    fn new(shared: &'a Shared<E>, grace: Duration) -> Self {
        let now = Instant::now();
        Self {
            shared,
            grace,
            until: now + grace * MAX_GRACES,
            last_written: shared.written.load(Ordering::Relaxed),
            last_change: now,
        }
    }

    fn goes_on(&mut self) -> bool {
        let now = Instant::now();
        let written = self.shared.written.load(Ordering::Relaxed);
        if written != self.last_written {
            self.last_written = written;
            self.last_change = now;
        }
        now < self.until && now < self.last_change + self.grace
    }
}

/// The thread: writes every message as it comes and flushes whenever the queue runs empty,
/// until the producer closes the queue or the output can take nothing more. A message the
/// output failed to take is counted in `dropped`.
fn write_all<O: Output>(
    mut output: O,
    receiver: &Receiver<O::Message>,
    shared: &Shared<O::Error>,
    dropped: &DropCounter,
) {
    let keep = |result: Result<(), O::Error>| match result {
        Ok(()) => true,
        Err(error) => {
            let last = O::is_final(&error);
            if !last {
                dropped.add();
            }
            let mut slot = shared.error.lock().unwrap_or_else(PoisonError::into_inner);
            if slot.is_none() || last {
                *slot = Some(error);
            }
            !last
        }
    };
    while let Ok(message) = receiver.recv() {
        let mut next = Some(message);
        while let Some(message) = next {
            let written = output.write(message);
            shared.waiting.fetch_sub(1, Ordering::Relaxed);
            shared.written.fetch_add(1, Ordering::Relaxed);
            if !keep(written) {
                return;
            }
            next = receiver.try_recv().ok();
        }
        if !keep(output.flush()) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::Sender;

    use super::*;

    /// Writes into a channel; blocks on each message until `gate` lets it through.
    struct Gated {
        gate: Receiver<()>,
        written: Sender<u32>,
    }

    impl Output for Gated {
        type Message = u32;
        type Error = String;

        fn write(&mut self, message: u32) -> Result<(), String> {
            self.gate.recv().map_err(|_| "gate closed".to_owned())?;
            if message == u32::MAX {
                return Err("reader went away".to_owned());
            }
            if message >= 1000 {
                return Err(format!("{message} not taken, the journal is restarting"));
            }
            self.written.send(message).map_err(|e| e.to_string())
        }

        fn flush(&mut self) -> Result<(), String> {
            Ok(())
        }

        fn is_final(error: &String) -> bool {
            error.contains("went away")
        }
    }

    fn gated(capacity: usize) -> (Queue<Gated>, SyncSender<()>, Receiver<u32>) {
        let (gate_sender, gate) = mpsc::sync_channel(64);
        let (written, output) = mpsc::channel();
        let queue = Queue::spawn(
            "test",
            Gated { gate, written },
            capacity,
            Duration::from_secs(5),
        )
        .unwrap();
        (queue, gate_sender, output)
    }

    #[test]
    fn a_stuck_output_costs_drops_not_waiting() {
        let (queue, gate, written) = gated(2);
        // The thread takes the first message and blocks on it; two more fill the queue.
        queue.push(1);
        for message in 2..10 {
            queue.push(message);
        }
        // Whether the thread took message 1 before 2..9 arrived decides whether 6 or 7 of
        // them found the queue full; none of them waited.
        let dropped = queue.dropped().get();
        assert!((6..=7).contains(&dropped), "{dropped}");
        for _ in 0..10 {
            gate.send(()).unwrap();
        }
        drop(queue);
        let got: Vec<u32> = written.try_iter().collect();
        assert_eq!(got.len() as u64 + dropped, 9, "{got:?}");
        assert_eq!(got[0], 1);
    }

    #[test]
    fn a_final_error_is_reported_and_stops_the_thread() {
        let (queue, gate, _written) = gated(4);
        queue.push(u32::MAX);
        gate.send(()).unwrap();
        // The thread stops after a final error and says so.
        let done = queue
            .done
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(5));
        assert_eq!(done, Ok(()));
        let error = queue.take_error().expect("the error is kept");
        assert!(error.contains("went away"));
        queue.push(7);
        assert_eq!(queue.dropped().get(), 1, "nobody takes it any more");
    }

    #[test]
    fn messages_the_output_fails_to_take_are_counted_and_it_goes_on() {
        let (queue, gate, written) = gated(8);
        for message in [1, 1000, 1001, 2] {
            queue.push(message);
        }
        for _ in 0..4 {
            gate.send(()).unwrap();
        }
        let got: Vec<u32> = (0..2)
            .map(|_| written.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        assert_eq!(got, [1, 2], "the output recovered after the failures");
        assert_eq!(
            queue.dropped().get(),
            2,
            "each message not taken is counted"
        );
        assert!(queue.take_error().is_some_and(|e| e.contains("restarting")));
    }

    #[test]
    fn closing_waits_at_most_the_grace() {
        let (gate_sender, gate) = mpsc::sync_channel(1);
        let (written, _output) = mpsc::channel();
        let queue = Queue::spawn(
            "stuck",
            Gated { gate, written },
            4,
            Duration::from_millis(50),
        )
        .unwrap();
        queue.push(1);
        let started = std::time::Instant::now();
        drop(queue);
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(gate_sender);
    }

    #[test]
    fn a_slow_output_that_makes_progress_gets_to_finish() {
        let (gate_sender, gate) = mpsc::sync_channel(64);
        let (written, output) = mpsc::channel();
        let queue = Queue::spawn(
            "slow",
            Gated { gate, written },
            16,
            Duration::from_millis(200),
        )
        .unwrap();
        for message in 0..10 {
            queue.push(message);
        }
        // One message every 20 ms: 200 ms in all, one grace, but never a grace without one.
        let opener = thread::spawn(move || {
            for _ in 0..10 {
                thread::sleep(Duration::from_millis(20));
                if gate_sender.send(()).is_err() {
                    return;
                }
            }
        });
        queue.push_waiting(10);
        drop(queue);
        opener.join().unwrap();
        assert_eq!(
            output.try_iter().count(),
            10,
            "all but the one never let through"
        );
    }
}
