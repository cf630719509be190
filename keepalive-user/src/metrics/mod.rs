//! Prometheus metrics (`--metrics ADDR`): what the daemon saw and judged, in OpenMetrics text
//! at `/metrics` ([`server`]).
//!
//! Every name starts with `keepalive_observer_`, values are in base units (seconds, bytes),
//! counters end in `_total`. Labels take few values each: verdict, kind, confidence,
//! direction, event kind, signal, and the destination of a learned window, capped to the
//! `--metrics-destinations` most recently used ones. Never a pid, a command name, a port of
//! this host or a 4-tuple: those are in the findings (logs), where they belong. With 17 kinds,
//! 3 verdicts and 3 confidences that is at most about 450 series with 64 destinations, 2 more
//! per destination.
//!
//! The metrics are fed on the reader's thread from the pipeline (one call per event, one per
//! finding) and from the daemon's ticks (kernel counters, ring-buffer fill); encoding a scrape
//! reads atomics and the bounded families.

mod connections;
pub mod server;
mod windows;

use std::{net::SocketAddr, sync::Arc};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram, info::Info},
    registry::{Registry, Unit},
};

pub use self::connections::ConnectionGauges;
pub use self::windows::OTHER;
use self::windows::WindowTable;
use crate::{
    correlate::{Confidence, Finding, FindingKind, Verdict, Window},
    event::{TcpEvent, TcpEventKind},
    kernel::ring_fill::RingFill,
    sink::{HookStatus, LossReport, StartupReport},
};

/// The prefix of every metric name.
pub const PREFIX: &str = "keepalive_observer";

/// Bucket bounds of the idle time at reset, seconds: the common middlebox idle timeouts
/// (Azure LB 4 min, AWS NLB 350 s, IPVS 900 s, GCP Cloud NAT 1200 s, Juniper SRX 1800 s,
/// Cisco ASA 1 h, …).
pub const IDLE_BUCKETS_S: [f64; 10] = [
    60.0, 240.0, 300.0, 350.0, 600.0, 900.0, 1200.0, 1800.0, 3600.0, 7200.0,
];

/// Destinations with a learned window shown by default before the rest are folded.
pub const DEFAULT_DESTINATIONS: usize = 64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResetLabels {
    verdict: &'static str,
    kind: &'static str,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FindingLabels {
    verdict: &'static str,
    kind: &'static str,
    confidence: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutputLabels {
    output: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignalLabels {
    signal: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// The daemon's metrics and the registry that serves them.
#[derive(Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    resets: Family<ResetLabels, Counter>,
    findings: Family<FindingLabels, Counter>,
    reset_idle: Family<VerdictLabels, Histogram>,
    windows: WindowTable,
    folded: Gauge,
    events: Family<EventLabels, Counter>,
    events_lost: Counter,
    undecodable: Counter,
    syn_refusals: Counter,
    context_failures: Counter,
    filtered: Counter,
    output_dropped: Family<OutputLabels, Counter>,
    ring_used: Gauge,
    ring_peak: Gauge,
    ring_size: Gauge,
    hooks_attached: Gauge,
    signal_missing: Family<SignalLabels, Gauge>,
    connections: ConnectionGauges,
}

impl Metrics {
    /// Every metric registered, none observed yet; at most `destinations` learned windows
    /// get a series of their own.
    pub fn new(destinations: usize) -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let resets = Family::<ResetLabels, Counter>::default();
        registry.register(
            "resets",
            "Connections ended by an RST this host sent or received, by verdict, kind and \
             direction (sent, received)",
            resets.clone(),
        );
        let findings = Family::<FindingLabels, Counter>::default();
        registry.register(
            "findings",
            "Findings (resets and silent deaths), by verdict, kind and confidence",
            findings.clone(),
        );
        let reset_idle = Family::<VerdictLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(IDLE_BUCKETS_S)) as fn() -> Histogram,
        );
        registry.register_with_unit(
            "reset_idle",
            "Idle time of the connection when it was reset, by verdict",
            Unit::Seconds,
            reset_idle.clone(),
        );
        let window_gauges = Family::default();
        registry.register_with_unit(
            "learned_idle_timeout",
            "Learned idle timeout of the path to a destination: above the lower bound (longest \
             idle gap survived), at most the upper bound (shortest idle gap that died); \
             destination=\"other\" is the tightest window of the destinations folded away",
            Unit::Seconds,
            window_gauges.clone(),
        );
        let folded = Gauge::default();
        registry.register(
            "learned_idle_timeout_folded_destinations",
            "Times a destination's window was folded into destination=\"other\" to keep the \
             series bounded",
            folded.clone(),
        );
        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "events",
            "Records received from the kernel programs, by kind",
            events.clone(),
        );
        let events_lost = counter(
            &mut registry,
            "events_lost",
            "Records the kernel programs could not send (ring buffer full)",
        );
        let undecodable = counter(
            &mut registry,
            "events_undecodable",
            "Records received that could not be decoded",
        );
        let syn_refusals = counter(
            &mut registry,
            "syn_refusals",
            "RSTs answering a SYN (closed port, scan) or a SYN-ACK without a connecting socket (backscatter), counted in the kernel instead of sent",
        );
        let context_failures = counter(
            &mut registry,
            "context_failures",
            "Connections the kernel programs could not keep a context for",
        );
        let filtered = counter(
            &mut registry,
            "events_filtered",
            "Records the kernel programs left out because of --remote, --port or --netns",
        );
        let output_dropped = Family::<OutputLabels, Counter>::default();
        registry.register(
            "output_dropped",
            "Records an output (stdout, journald, recording) could not take in time: its queue \
             was full",
            output_dropped.clone(),
        );
        let ring_used = bytes_gauge(
            &mut registry,
            "ring_buffer_used",
            "Bytes waiting in the ring buffer when the reader last began a drain",
        );
        let ring_peak = bytes_gauge(
            &mut registry,
            "ring_buffer_peak_used",
            "Most bytes waiting in the ring buffer when a drain began, since start",
        );
        let ring_size = bytes_gauge(&mut registry, "ring_buffer_size", "Ring buffer size");
        let hooks_attached = Gauge::default();
        registry.register(
            "hooks_attached",
            "Signals with an attached kernel hook",
            hooks_attached.clone(),
        );
        let signal_missing = Family::<SignalLabels, Gauge>::default();
        registry.register(
            "signal_missing",
            "1 for a signal no hook provides on this kernel, 0 for one that is attached",
            signal_missing.clone(),
        );
        let connections = Family::default();
        registry.register(
            "connections",
            "Open connections with a known window by destination and risk of being reset on \
             their next use, from the socket audit every --sockets-interval; destinations past \
             --metrics-destinations are summed into destination=\"other\"",
            connections.clone(),
        );
        watched_from_the_start(&resets, &findings);
        registry.register(
            "build",
            "The daemon's version",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        Self {
            registry: Arc::new(registry),
            resets,
            findings,
            reset_idle,
            windows: WindowTable::new(destinations, window_gauges),
            folded,
            events,
            events_lost,
            undecodable,
            syn_refusals,
            context_failures,
            filtered,
            output_dropped,
            ring_used,
            ring_peak,
            ring_size,
            hooks_attached,
            signal_missing,
            connections: ConnectionGauges::new(connections, destinations),
        }
    }

    /// The connection gauges, for the thread that runs the socket audits.
    pub fn connection_gauges(&self) -> ConnectionGauges {
        self.connections.clone()
    }

    /// The registry, for the server to encode.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.registry)
    }

    /// The hooks attached at start.
    pub fn startup(&self, report: &StartupReport) {
        let attached = report
            .hooks
            .iter()
            .filter(|hook| hook.status == HookStatus::Attached)
            .count();
        self.hooks_attached
            .set(i64::try_from(attached).unwrap_or(i64::MAX));
        for hook in &report.hooks {
            let missing = i64::from(hook.status != HookStatus::Attached);
            self.signal_missing
                .get_or_create(&SignalLabels {
                    signal: hook.signal.clone(),
                })
                .set(missing);
        }
    }

    /// One decoded record, and the window the correlator now has for its remote.
    pub fn event(&mut self, event: &TcpEvent, window: Option<Window>) {
        self.events
            .get_or_create(&EventLabels {
                kind: event.kind.as_str(),
            })
            .inc();
        // Survivals move a window's lower bound without a finding.
        if event.kind == TcpEventKind::ReplyAfterIdle {
            self.window(event.remote, window);
        }
    }

    /// One finding, and the window the correlator now has for its remote.
    pub fn finding(&mut self, finding: &Finding, window: Option<Window>) {
        let verdict = finding.verdict.as_str();
        let kind = finding.kind.as_str();
        self.findings
            .get_or_create(&FindingLabels {
                verdict,
                kind,
                confidence: finding.confidence.as_str(),
            })
            .inc();
        if let Some(direction) = reset_direction(finding) {
            self.resets
                .get_or_create(&ResetLabels {
                    verdict,
                    kind,
                    direction,
                })
                .inc();
            if let Some(idle_ms) = finding.idle_ms {
                self.reset_idle
                    .get_or_create(&VerdictLabels { verdict })
                    .observe(idle_ms as f64 / 1000.0);
            }
        }
        self.window(finding.remote, window);
    }

    /// The totals so far: what the kernel programs counted (filtered out included), what failed
    /// to decode, and what the outputs dropped.
    pub fn totals(&self, loss: &LossReport) {
        raise(&self.events_lost, loss.kernel_lost);
        raise(&self.undecodable, loss.decode_errors);
        raise(&self.syn_refusals, loss.syn_refusals);
        raise(&self.context_failures, loss.context_failures);
        raise(&self.filtered, loss.filtered);
        for (&output, &dropped) in &loss.output_dropped {
            raise(
                &self
                    .output_dropped
                    .get_or_create_owned(&OutputLabels { output }),
                dropped,
            );
        }
    }

    /// How full the ring buffer is.
    pub fn ring_fill(&self, fill: RingFill) {
        let bytes = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.ring_used.set(bytes(fill.used_bytes));
        self.ring_peak.set(bytes(fill.peak_bytes));
        self.ring_size.set(bytes(fill.size_bytes));
    }

    /// The window the correlator now has for `destination` (none: not, or no longer, known).
    pub fn window(&mut self, destination: SocketAddr, window: Option<Window>) {
        self.windows.update(destination, window);
        self.folded
            .set(i64::try_from(self.windows.folded_count()).unwrap_or(i64::MAX));
    }
}

/// Creates, at 0, the series the shipped alerts (contrib/prometheus/alerts.yml) watch: the
/// middlebox's resets and silent drops. `increase()` takes a series' first sample as its
/// start, so a counter whose series appeared with the first reset, at 1, would never alert.
fn watched_from_the_start(
    resets: &Family<ResetLabels, Counter>,
    findings: &Family<FindingLabels, Counter>,
) {
    let verdict = Verdict::MiddleboxDrop.as_str();
    for kind in [FindingKind::ForgedRst, FindingKind::IdleExpiryRst] {
        resets.get_or_create_owned(&ResetLabels {
            verdict,
            kind: kind.as_str(),
            direction: "received",
        });
    }
    let kinds = [
        FindingKind::ForgedRst,
        FindingKind::IdleExpiryRst,
        FindingKind::SilentTimeout,
    ];
    for kind in kinds {
        for confidence in [
            Confidence::Possible,
            Confidence::Likely,
            Confidence::Confirmed,
        ] {
            findings.get_or_create_owned(&FindingLabels {
                verdict,
                kind: kind.as_str(),
                confidence: confidence.as_str(),
            });
        }
    }
}

/// Whether a finding is about an RST, and which way it went: `sent` for the ones this host
/// sent (every `local_close`), `received` for the peer's or a middlebox's; none for a silent
/// death (`silent_timeout`: the flow vanished, no RST came).
fn reset_direction(finding: &Finding) -> Option<&'static str> {
    match (finding.verdict, finding.kind) {
        (_, FindingKind::SilentTimeout) => None,
        (Verdict::LocalClose, _) => Some("sent"),
        (Verdict::PeerReset | Verdict::MiddleboxDrop, _) => Some("received"),
    }
}

/// Raises a counter that mirrors a total kept elsewhere to that total.
fn raise(counter: &Counter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

fn counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    let counter = Counter::default();
    registry.register(name, help, counter.clone());
    counter
}

fn bytes_gauge(registry: &mut Registry, name: &str, help: &str) -> Gauge {
    let gauge = Gauge::default();
    registry.register_with_unit(name, help, Unit::Bytes, gauge.clone());
    gauge
}

#[cfg(test)]
mod tests;
