//! Sinks: where decoded events, findings, the start-up report and the loss totals go.
//!
//! Three sinks implement [`Sink`]:
//! - [`TextSink`]: one readable line per record, for a person at a terminal (the default);
//! - [`JsonSink`]: JSON lines (`--format json`) for scripts and tests;
//! - [`JournaldSink`]: native journald entries with structured, uppercase fields.
//!
//! [`Fanout`] sends every record to several sinks (stdout and the journal, typically).
//!
//! Schema choices:
//! - JSON keeps every key of a record type present and writes `null` for what is absent, so a
//!   consumer sees a fixed schema per `"type"` and can tell "not known" from "not emitted".
//! - journald has no null: absent values are left out of the entry, which is how journal
//!   fields are usually read (`journalctl FIELD=value` matches only entries that have it).
//! - Findings are serialized through their serde derive (JSON and journald alike), so fields
//!   added to [`Finding`] appear in both outputs without touching this module.
//!
//! Every record is written and flushed whole, one line at a time: readers of a pipe see each
//! line as soon as it happens.

mod clock;
mod journald;
mod json;
mod queued;
mod text;

use std::{collections::BTreeMap, io};

use serde::Serialize;

pub use clock::{WallClock, format_rfc3339};
pub use journald::{JOURNAL_SOCKET, JournaldSink};
pub use json::JsonSink;
pub use queued::QueuedSink;
pub use text::TextSink;

use crate::{
    correlate::Finding,
    event::{TcpEvent, TcpEventKind},
};

/// Why a record could not be emitted.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The reader of stdout went away (broken pipe): the daemon should stop cleanly, exit 0.
    #[error("stdout was closed by its reader")]
    StdoutClosed,
    /// Writing to stdout failed for another reason.
    #[error("cannot write to stdout: {0}")]
    Stdout(#[source] io::Error),
    /// The journal socket exists but cannot be used (no listener, no permission).
    #[error("journal socket {path} exists but cannot be used: {source}")]
    JournalUnavailable {
        /// The socket's path.
        path: String,
        /// What connecting to it said.
        #[source]
        source: io::Error,
    },
    /// The journal did not take an entry.
    #[error("cannot send to the journal: {0}")]
    JournalSend(#[source] io::Error),
    /// A record could not be serialized.
    #[error("cannot encode a record: {0}")]
    Encode(#[from] serde_json::Error),
}

impl SinkError {
    /// Maps a write error on the output stream, keeping a closed pipe apart.
    fn stdout(error: io::Error) -> Self {
        if error.kind() == io::ErrorKind::BrokenPipe {
            Self::StdoutClosed
        } else {
            Self::Stdout(error)
        }
    }
}

/// A destination for the daemon's output.
pub trait Sink {
    /// Everything is attached: the hook table, then the `ready` marker scripts wait on.
    fn ready(&mut self, report: &StartupReport) -> Result<(), SinkError>;
    /// One decoded event.
    fn event(&mut self, event: &TcpEvent) -> Result<(), SinkError>;
    /// One attributed reset or connection death.
    fn finding(&mut self, finding: &Finding) -> Result<(), SinkError>;
    /// Lost-event and output totals so far (periodically, and once at exit).
    fn stats(&mut self, loss: &LossReport) -> Result<(), SinkError>;
    /// The totals once more, at exit: the one record that may wait a little for a slow
    /// output.
    fn last_stats(&mut self, loss: &LossReport) -> Result<(), SinkError> {
        self.stats(loss)
    }
    /// Hands over what events and findings left buffered: called once per ring-buffer batch,
    /// so that a storm costs a write per batch, not per line. `ready` and `stats` are written
    /// at once.
    fn flush(&mut self) -> Result<(), SinkError>;
}

/// What was attached at start, and what the user therefore cannot see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartupReport {
    /// The daemon's version.
    pub version: String,
    /// The running kernel's release (`uname -r`).
    pub kernel: String,
    /// One line per hook tried.
    pub hooks: Vec<HookLine>,
    /// Signals no attached hook provides, in words (e.g. "RST received").
    pub missing_signals: Vec<String>,
    /// Where the kernel side keeps connection context, in words.
    pub context: String,
    /// The state file and what was restored from it, in words.
    pub learned_state: String,
    /// Which connections are reported (`--remote`, `--port`, `--netns`, `--process`), in
    /// words.
    pub filters: String,
}

/// One hook tried at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookLine {
    /// What the hook shows, e.g. "RST sent".
    pub signal: String,
    /// Program type and attach point, e.g. "tp_btf/tcp_send_reset".
    pub hook: String,
    /// Whether it is attached.
    pub status: HookStatus,
}

/// Whether a hook is attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookStatus {
    /// Attached and running.
    Attached,
    /// Not attached on this kernel.
    Unavailable {
        /// Why, e.g. "kprobes are disabled (CONFIG_KPROBES=n)".
        why: String,
    },
}

impl HookStatus {
    /// `attached` or `unavailable`, as written in the outputs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Attached => "attached",
            Self::Unavailable { .. } => "unavailable",
        }
    }

    /// Why the hook is unavailable, if it is.
    pub fn why(&self) -> Option<&str> {
        match self {
            Self::Attached => None,
            Self::Unavailable { why } => Some(why),
        }
    }
}

/// Totals of what was seen, emitted and lost.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LossReport {
    /// Events the kernel programs could not reserve in the ring buffer (it was full).
    pub kernel_lost: u64,
    /// RSTs answering a SYN (a closed port, a scan, a SYN flood) or a SYN-ACK without a
    /// connecting socket (backscatter), counted in the kernel
    /// instead of sent: no connection died.
    pub syn_refusals: u64,
    /// Connections the kernel side could not keep a context for (their records say less).
    pub context_failures: u64,
    /// Records the kernel programs did not send because the filters (`--remote`, `--port`,
    /// `--netns`) left them out.
    pub filtered: u64,
    /// Ring-buffer records that failed to decode.
    pub decode_errors: u64,
    /// Events emitted.
    pub events: u64,
    /// Findings emitted.
    pub findings: u64,
    /// Events emitted, by kind (`reset_sent`, …).
    pub events_by_kind: BTreeMap<&'static str, u64>,
    /// Records an output (`stdout`, `journald`, `recording`) could not take in time and
    /// that were dropped: its queue was full.
    pub output_dropped: BTreeMap<&'static str, u64>,
}

impl LossReport {
    /// Counts one emitted event.
    pub fn count_event(&mut self, kind: TcpEventKind) {
        self.events += 1;
        *self.events_by_kind.entry(kind.as_str()).or_default() += 1;
    }

    /// Counts one emitted finding.
    pub fn count_finding(&mut self) {
        self.findings += 1;
    }

    /// Whether anything was lost or undecodable.
    pub fn has_losses(&self) -> bool {
        self.kernel_lost != 0
            || self.decode_errors != 0
            || self.output_dropped.values().any(|&dropped| dropped != 0)
    }
}

/// Sends every record to each of several sinks.
///
/// Every sink gets every record even when an earlier one fails, so a journal hiccup does not
/// cost the stdout line. The error returned is [`SinkError::StdoutClosed`] if any sink saw it
/// (the daemon must stop), otherwise the first error.
pub struct Fanout {
    sinks: Vec<Box<dyn Sink + Send>>,
}

impl Fanout {
    /// Sends to these sinks, in this order.
    pub fn new(sinks: Vec<Box<dyn Sink + Send>>) -> Self {
        Self { sinks }
    }

    fn each(
        &mut self,
        mut emit: impl FnMut(&mut dyn Sink) -> Result<(), SinkError>,
    ) -> Result<(), SinkError> {
        let mut first: Option<SinkError> = None;
        for sink in &mut self.sinks {
            if let Err(error) = emit(sink.as_mut()) {
                match first {
                    Some(SinkError::StdoutClosed) => {}
                    Some(_) if !matches!(error, SinkError::StdoutClosed) => {}
                    _ => first = Some(error),
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Sink for Fanout {
    fn ready(&mut self, report: &StartupReport) -> Result<(), SinkError> {
        self.each(|sink| sink.ready(report))
    }

    fn event(&mut self, event: &TcpEvent) -> Result<(), SinkError> {
        self.each(|sink| sink.event(event))
    }

    fn finding(&mut self, finding: &Finding) -> Result<(), SinkError> {
        self.each(|sink| sink.finding(finding))
    }

    fn stats(&mut self, loss: &LossReport) -> Result<(), SinkError> {
        self.each(|sink| sink.stats(loss))
    }

    fn last_stats(&mut self, loss: &LossReport) -> Result<(), SinkError> {
        self.each(|sink| sink.last_stats(loss))
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.each(|sink| sink.flush())
    }
}

#[cfg(test)]
pub(crate) mod testdata {
    //! Records shared by the sinks' tests.

    use std::net::SocketAddr;

    use crate::{
        correlate::Finding,
        event::{KeepaliveState, ResetReason, Task, TcpEvent, TcpEventKind, TcpState},
    };

    use super::{HookLine, HookStatus, StartupReport, WallClock};

    /// Monotonic 245.123456789 s is 2026-11-26T13:04:05.123Z with this clock.
    pub fn clock() -> WallClock {
        WallClock::from_offset_ns(1_795_698_000_000_000_000)
    }

    pub const MONO_NS: u64 = 245_123_456_789;

    pub fn addr(text: &str) -> SocketAddr {
        text.parse().expect("test address")
    }

    pub fn event() -> TcpEvent {
        TcpEvent {
            mono_ns: MONO_NS,
            kind: TcpEventKind::ResetSent,
            cookie: 8193,
            netns: 4_026_531_840,
            local: addr("127.0.0.1:41234"),
            remote: addr("127.0.0.1:8080"),
            old_state: TcpState::Established,
            new_state: TcpState::Established,
            reason: Some(ResetReason {
                raw: 11,
                name: Some("TCP_ABORT_ON_CLOSE".into()),
            }),
            reset_facts: None,
            sk_err: None,
            idle_rx_ms: Some(12),
            idle_tx_ms: Some(1_500),
            keepalive: Some(KeepaliveState {
                enabled: false,
                idle_ms: None,
                interval_ms: None,
                count: None,
                probes_out: 0,
            }),
            retransmits: Some(0),
            tcp_flags: None,
            bytes: None,
            task: Some(Task {
                pid: 1234,
                tid: 1235,
                comm: "python3".into(),
            }),
            netns_cookie: 3,
            context: None,
        }
    }

    /// Built through serde so optional fields added to [`Finding`] need no change here.
    pub fn finding() -> Finding {
        serde_json::from_value(serde_json::json!({
            "mono_ns": MONO_NS,
            "verdict": "middlebox_drop",
            "kind": "idle_expiry_rst",
            "confidence": "likely",
            "cookie": 77,
            "netns": 4_026_531_840_u32,
            "netns_cookie": 3,
            "local": "[fd6b:a1::2]:41234",
            "remote": "[fd6b:a1::1]:80",
            "pid": 4321,
            "comm": "java",
            "idle_ms": 1_805_000,
            "keepalive": {
                "enabled": false,
                "idle_s": 7200,
                "interval_s": 75,
                "count": 9,
                "probes_sent": 0
            },
            "rst_ttl": 64,
            "peer_ttl": 63,
            "reason": null,
            "timeout_window_ms": [1_790_000, 1_805_000],
            "evidence": ["RST received after 1805 s idle", "RST TTL 64, peer TTL 63"],
            "facts": [
                {"fact": "idle_gap", "idle_ms": 1_805_000, "ended_by": "send"},
                {"fact": "rst_ttl_closer", "rst_ttl": 64, "peer_ttl": 63, "hops": 1}
            ],
            "advice": "enable TCP keepalive with idle < 1790 s",
            "actions": [
                {"action": "keepalive_idle_below", "seconds": 1790, "suggested": 840},
                {"action": "evict_idle_after", "seconds": 1790, "ms": null}
            ]
        }))
        .expect("test finding")
    }

    pub fn report() -> StartupReport {
        StartupReport {
            version: "0.1.0".into(),
            kernel: "6.18.0".into(),
            hooks: vec![
                HookLine {
                    signal: "RST sent".into(),
                    hook: "tp_btf/tcp_send_reset".into(),
                    status: HookStatus::Attached,
                },
                HookLine {
                    signal: "keepalive timer".into(),
                    hook: "kprobe/tcp_keepalive_timer".into(),
                    status: HookStatus::Unavailable {
                        why: "kprobes are disabled".into(),
                    },
                },
            ],
            missing_signals: vec!["keepalive timer".into()],
            context: "socket storage (freed with each socket)".into(),
            learned_state: "/var/lib/keepalive-observer/state.json: 2 destinations restored".into(),
            filters: "port 443".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Failing(fn() -> SinkError);

    impl Sink for Failing {
        fn ready(&mut self, _: &StartupReport) -> Result<(), SinkError> {
            Err((self.0)())
        }
        fn event(&mut self, _: &TcpEvent) -> Result<(), SinkError> {
            Err((self.0)())
        }
        fn finding(&mut self, _: &Finding) -> Result<(), SinkError> {
            Err((self.0)())
        }
        fn stats(&mut self, _: &LossReport) -> Result<(), SinkError> {
            Err((self.0)())
        }
        fn flush(&mut self) -> Result<(), SinkError> {
            Err((self.0)())
        }
    }

    fn journal_error() -> SinkError {
        SinkError::JournalSend(io::Error::from(io::ErrorKind::ConnectionRefused))
    }

    #[test]
    fn broken_pipe_is_distinguishable() {
        let error = SinkError::stdout(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(matches!(error, SinkError::StdoutClosed));
        let error = SinkError::stdout(io::Error::from(io::ErrorKind::StorageFull));
        assert!(matches!(error, SinkError::Stdout(_)));
    }

    #[test]
    fn fanout_reaches_every_sink_and_prefers_stdout_closed() {
        let shared = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl io::Write for Shared {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().expect("not poisoned").write(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut fanout = Fanout::new(vec![
            Box::new(Failing(journal_error)),
            Box::new(Failing(|| SinkError::StdoutClosed)),
            Box::new(JsonSink::new(Shared(shared.clone()), testdata::clock())),
        ]);
        let result = fanout.event(&testdata::event());
        assert!(matches!(result, Err(SinkError::StdoutClosed)));
        assert_eq!(
            shared
                .lock()
                .expect("not poisoned")
                .iter()
                .filter(|&&b| b == b'\n')
                .count(),
            1
        );

        let mut fanout = Fanout::new(vec![Box::new(Failing(journal_error))]);
        assert!(matches!(
            fanout.stats(&LossReport::default()),
            Err(SinkError::JournalSend(_))
        ));
    }

    #[test]
    fn loss_report_counts_by_kind() {
        let mut loss = LossReport::default();
        loss.count_event(TcpEventKind::ResetSent);
        loss.count_event(TcpEventKind::ResetSent);
        loss.count_event(TcpEventKind::SocketError);
        loss.count_finding();
        assert_eq!(loss.events, 3);
        assert_eq!(loss.findings, 1);
        assert_eq!(loss.events_by_kind["reset_sent"], 2);
        assert_eq!(loss.events_by_kind["socket_error"], 1);
        assert!(!loss.has_losses());
        loss.kernel_lost = 1;
        assert!(loss.has_losses());
    }
}
