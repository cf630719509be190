//! One path from kernel records to every output, shared by the live daemon and `replay`:
//! decode → event sinks → correlator → finding sinks, with the recording written alongside.

use keepalive_observer::{
    event::{DecodeContext, TcpEvent},
    sink::{LossReport, Sink, SinkError, StartupReport},
};

/// The records' way through the daemon.
pub struct Pipeline {
    sinks: Box<dyn Sink + Send>,
    decode: DecodeContext,
    print_events: bool,
    /// Totals for the stats lines.
    pub loss: LossReport,
    failed: Option<SinkError>,
}

impl Pipeline {
    /// A pipeline decoding with `decode` and writing to `sinks`.
    pub fn new(sinks: Box<dyn Sink + Send>, decode: DecodeContext, print_events: bool) -> Self {
        Self {
            sinks,
            decode,
            print_events,
            loss: LossReport::default(),
            failed: None,
        }
    }

    /// Announces the hooks and readiness.
    pub fn ready(&mut self, report: &StartupReport) -> Result<(), SinkError> {
        self.sinks.ready(report)
    }

    /// One raw ring-buffer record. Errors are kept for [`Pipeline::take_error`]: this runs
    /// inside the ring buffer's drain loop, which cannot stop half-way. Records keep flowing
    /// after a journal error (stdout still gets them) and stop only when stdout is closed.
    pub fn on_record(&mut self, bytes: &[u8]) {
        match self.decode.decode(bytes) {
            Ok(event) => self.on_event(&event),
            Err(error) => {
                self.loss.decode_errors += 1;
                tracing::warn!("undecodable event record: {error}");
            }
        }
    }

    /// One decoded event.
    pub fn on_event(&mut self, event: &TcpEvent) {
        if matches!(self.failed, Some(SinkError::StdoutClosed)) {
            return;
        }
        if self.print_events {
            self.loss.count_event(event.kind);
            let written = self.sinks.event(event);
            self.keep_error(written);
        }
    }

    /// Writes the totals.
    pub fn stats(&mut self) -> Result<(), SinkError> {
        self.sinks.stats(&self.loss)
    }

    /// Keeps the first error; a closed stdout outranks any other, since it stops the daemon.
    fn keep_error(&mut self, result: Result<(), SinkError>) {
        if let Err(error) = result
            && (self.failed.is_none() || matches!(error, SinkError::StdoutClosed))
        {
            self.failed = Some(error);
        }
    }

    /// The first output error since the last call.
    pub fn take_error(&mut self) -> Option<SinkError> {
        self.failed.take()
    }
}
