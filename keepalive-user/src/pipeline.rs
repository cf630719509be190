//! One path from kernel records to every output, shared by the live daemon and `replay`:
//! decode → event sinks → correlator → finding sinks, with the recording written alongside.

use keepalive_observer::{
    correlate::{Correlator, Finding},
    event::{DecodeContext, TcpEvent},
    filter::Filter,
    metrics::Metrics,
    recording::{Recording, RecordingError},
    sink::{LossReport, Sink, SinkError, StartupReport},
};

/// Why the pipeline stopped taking records.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// An output failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The recording could not be written; unless only one record was bad, recording
    /// stopped (the records after it are counted as dropped) and the daemon goes on.
    #[error(transparent)]
    Record(#[from] RecordingError),
}

/// The records' way through the daemon.
pub struct Pipeline {
    sinks: Box<dyn Sink + Send>,
    decode: DecodeContext,
    correlator: Correlator,
    recording: Option<Recording>,
    print_events: bool,
    /// What is printed and counted in the metrics: the process names (the kernel applied
    /// the rest).
    filter: Filter,
    metrics: Option<Metrics>,
    /// Totals for the stats lines.
    pub loss: LossReport,
    failed: Option<PipelineError>,
}

impl Pipeline {
    /// A pipeline decoding with `decode`, judging with `correlator` and writing to `sinks`
    /// (events too when `print_events`) and to `recording`.
    pub fn new(
        sinks: Box<dyn Sink + Send>,
        decode: DecodeContext,
        correlator: Correlator,
        recording: Option<Recording>,
        print_events: bool,
    ) -> Self {
        Self {
            sinks,
            decode,
            correlator,
            recording,
            print_events,
            filter: Filter::default(),
            metrics: None,
            loss: LossReport::default(),
            failed: None,
        }
    }

    /// The correlator, for what it learned.
    pub fn correlator(&self) -> &Correlator {
        &self.correlator
    }

    /// Also counts what passes in `metrics`, which show the windows learned so far (restored
    /// from the state file) at once.
    pub fn with_metrics(mut self, mut metrics: Option<Metrics>) -> Self {
        if let Some(metrics) = &mut metrics {
            for (netns_cookie, remote, _) in self.correlator.learned() {
                metrics.window(remote, self.correlator.timeout_window(netns_cookie, remote));
            }
        }
        self.metrics = metrics;
        self
    }

    /// Prints (and counts in the metrics) only the events and findings `filter` admits.
    pub fn with_filter(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }

    /// The metrics, when kept.
    pub fn metrics(&self) -> Option<&Metrics> {
        self.metrics.as_ref()
    }

    /// Announces the hooks and readiness.
    pub fn ready(&mut self, report: &StartupReport) -> Result<(), SinkError> {
        self.sinks.ready(report)
    }

    /// One raw ring-buffer record. Errors are kept for [`Pipeline::take_error`]: this runs
    /// inside the ring buffer's drain loop, which cannot stop half-way. Records keep flowing
    /// after any output's error, stdout closed included (the other outputs and the
    /// correlator still get them; whether to stop is the caller's decision).
    pub fn on_record(&mut self, bytes: &[u8]) {
        if let Some(recording) = &self.recording {
            recording.raw(bytes);
        }
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
        // Counted whether printed or not: the stats line compares received with lost.
        self.loss.count_event(event.kind);
        let admitted = self.filter.admits_event(event);
        if self.print_events && admitted {
            let written = self.sinks.event(event);
            self.keep_error(written.map_err(PipelineError::from));
        }
        let findings = self.correlator.on_event(event);
        if let Some(metrics) = self.metrics.as_mut().filter(|_| admitted) {
            let window = self
                .correlator
                .timeout_window(event.netns_cookie, event.remote);
            metrics.event(event, window);
        }
        self.emit(&findings);
    }

    /// Time passed (CLOCK_MONOTONIC ns): the correlator releases what it was holding.
    pub fn on_tick(&mut self, mono_ns: u64) {
        if self.stopped() {
            return;
        }
        if let Some(recording) = &self.recording {
            recording.tick(mono_ns);
        }
        let findings = self.correlator.on_tick(mono_ns);
        self.emit(&findings);
    }

    /// The end (exit, or the end of a replay): the correlator releases everything it held.
    pub fn finish(&mut self) {
        if self.stopped() {
            return;
        }
        let findings = self.correlator.finish();
        self.emit(&findings);
    }

    fn emit(&mut self, findings: &[Finding]) {
        for finding in findings {
            if !self.filter.admits_finding(finding) {
                continue;
            }
            self.loss.count_finding();
            if let Some(metrics) = &mut self.metrics {
                let window = self
                    .correlator
                    .timeout_window(finding.netns_cookie, finding.remote);
                metrics.finding(finding, window);
            }
            let written = self.sinks.finding(finding);
            self.keep_error(written.map_err(PipelineError::from));
        }
    }

    /// Hands over the output buffered since the last batch, and collects the outputs' errors.
    pub fn flush(&mut self) {
        let flushed = self.sinks.flush();
        self.keep_error(flushed.map_err(PipelineError::from));
        if let Some(error) = self.recording.as_ref().and_then(Recording::take_error) {
            self.keep_error(Err(error.into()));
        }
    }

    /// Writes the totals.
    pub fn stats(&mut self) -> Result<(), PipelineError> {
        Ok(self.sinks.stats(&self.loss)?)
    }

    /// Writes the totals at exit.
    pub fn last_stats(&mut self) -> Result<(), PipelineError> {
        Ok(self.sinks.last_stats(&self.loss)?)
    }

    fn stopped(&self) -> bool {
        matches!(
            self.failed,
            Some(PipelineError::Sink(SinkError::StdoutClosed))
        )
    }

    /// Keeps the first error; one that stops the pipeline outranks any other.
    fn keep_error(&mut self, result: Result<(), PipelineError>) {
        if let Err(error) = result
            && (self.failed.is_none() || !self.stopped())
        {
            self.failed = Some(error);
        }
    }

    /// The kept error, if any, since the last call.
    pub fn take_error(&mut self) -> Option<PipelineError> {
        self.failed.take()
    }
}
