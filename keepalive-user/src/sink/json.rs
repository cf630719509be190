//! JSON lines (`--format json`): one object per line, tagged with `"type"`.
//!
//! The record shapes here are also what the journald sink flattens into its fields.

use std::{io::Write, net::SocketAddr};

use serde::Serialize;

use super::{HookLine, LossReport, Sink, SinkError, StartupReport, WallClock};
use crate::{
    correlate::{Finding, SCHEMA_VERSION},
    event::{Comm, ConnectionContext, KeepaliveState, TcpEvent},
};

/// Writes one JSON object per line and flushes it.
pub struct JsonSink<W> {
    out: W,
    clock: WallClock,
}

impl<W: Write> JsonSink<W> {
    /// Writes to `out` (stdout, in the daemon), stamping times with `clock`.
    pub fn new(out: W, clock: WallClock) -> Self {
        Self { out, clock }
    }

    /// Buffers one line; [`Sink::flush`] hands it over.
    fn write(&mut self, record: &impl Serialize) -> Result<(), SinkError> {
        serde_json::to_writer(&mut self.out, record)?;
        self.out.write_all(b"\n").map_err(SinkError::stdout)
    }

    fn write_now(&mut self, record: &impl Serialize) -> Result<(), SinkError> {
        self.write(record)?;
        self.flush()
    }
}

impl<W: Write> Sink for JsonSink<W> {
    fn ready(&mut self, report: &StartupReport) -> Result<(), SinkError> {
        self.write_now(&ReadyRecord::new(report))
    }

    fn event(&mut self, event: &TcpEvent) -> Result<(), SinkError> {
        self.write(&EventRecord::new(event, &self.clock))
    }

    fn finding(&mut self, finding: &Finding) -> Result<(), SinkError> {
        self.write(&FindingRecord::new(finding, &self.clock))
    }

    fn stats(&mut self, loss: &LossReport) -> Result<(), SinkError> {
        self.write_now(&StatsRecord::new(loss))
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(SinkError::stdout)
    }
}

/// `{"type":"ready",...}`.
#[derive(Serialize)]
pub(super) struct ReadyRecord<'a> {
    #[serde(rename = "type")]
    record: &'static str,
    version: &'a str,
    schema_version: u32,
    kernel: &'a str,
    hooks: Vec<HookRecord<'a>>,
    missing_signals: &'a [String],
    context: &'a str,
    learned_state: &'a str,
    filters: &'a str,
}

impl<'a> ReadyRecord<'a> {
    pub(super) fn new(report: &'a StartupReport) -> Self {
        Self {
            record: "ready",
            version: &report.version,
            schema_version: SCHEMA_VERSION,
            kernel: &report.kernel,
            hooks: report.hooks.iter().map(HookRecord::new).collect(),
            missing_signals: &report.missing_signals,
            context: &report.context,
            learned_state: &report.learned_state,
            filters: &report.filters,
        }
    }
}

/// A hook line with `why` always present (null when attached).
#[derive(Serialize)]
struct HookRecord<'a> {
    signal: &'a str,
    hook: &'a str,
    status: &'static str,
    why: Option<&'a str>,
}

impl<'a> HookRecord<'a> {
    fn new(line: &'a HookLine) -> Self {
        Self {
            signal: &line.signal,
            hook: &line.hook,
            status: line.status.as_str(),
            why: line.status.why(),
        }
    }
}

/// `{"type":"event",...}`: the event with self-explaining names, the task flattened.
#[derive(Serialize)]
pub(super) struct EventRecord<'a> {
    #[serde(rename = "type")]
    record: &'static str,
    event: &'static str,
    ts: String,
    mono_ns: u64,
    cookie: u64,
    netns: u32,
    /// `ip:port`, `[v6]:port`: serde writes socket addresses with their `Display` form.
    local: SocketAddr,
    remote: SocketAddr,
    old_state: &'static str,
    state: &'static str,
    reason: Option<&'a str>,
    reason_code: Option<u32>,
    sk_err: Option<i32>,
    idle_rx_ms: Option<u64>,
    idle_tx_ms: Option<u64>,
    keepalive: Option<&'a KeepaliveState>,
    retransmits: Option<u8>,
    tcp_flags: Option<u8>,
    bytes: Option<i32>,
    pid: Option<u32>,
    tid: Option<u32>,
    comm: Option<Comm>,
    netns_cookie: u64,
    context: Option<&'a ConnectionContext>,
}

impl<'a> EventRecord<'a> {
    pub(super) fn new(event: &'a TcpEvent, clock: &WallClock) -> Self {
        let reason = event.reason.as_ref();
        let task = event.task.as_ref();
        Self {
            record: "event",
            event: event.kind.as_str(),
            ts: clock.rfc3339(event.mono_ns),
            mono_ns: event.mono_ns,
            cookie: event.cookie,
            netns: event.netns,
            local: event.local,
            remote: event.remote,
            old_state: event.old_state.as_str(),
            state: event.new_state.as_str(),
            reason: reason.and_then(|r| r.name.as_deref()),
            reason_code: reason.map(|r| r.raw),
            sk_err: event.sk_err,
            idle_rx_ms: event.idle_rx_ms,
            idle_tx_ms: event.idle_tx_ms,
            keepalive: event.keepalive.as_ref(),
            retransmits: event.retransmits,
            tcp_flags: event.tcp_flags,
            bytes: event.bytes,
            pid: task.map(|t| t.pid),
            tid: task.map(|t| t.tid),
            comm: task.map(|t| t.comm),
            netns_cookie: event.netns_cookie,
            context: event.context.as_ref(),
        }
    }
}

/// `{"type":"finding","ts":...}` followed by every field of [`Finding`] as serde writes it.
#[derive(Serialize)]
pub(super) struct FindingRecord<'a> {
    #[serde(rename = "type")]
    record: &'static str,
    schema_version: u32,
    ts: String,
    #[serde(flatten)]
    finding: &'a Finding,
}

impl<'a> FindingRecord<'a> {
    pub(super) fn new(finding: &'a Finding, clock: &WallClock) -> Self {
        Self {
            record: "finding",
            schema_version: SCHEMA_VERSION,
            ts: clock.rfc3339(finding.mono_ns),
            finding,
        }
    }
}

/// `{"type":"stats",...}` followed by the fields of [`LossReport`].
#[derive(Serialize)]
pub(super) struct StatsRecord<'a> {
    #[serde(rename = "type")]
    record: &'static str,
    #[serde(flatten)]
    loss: &'a LossReport,
}

impl<'a> StatsRecord<'a> {
    pub(super) fn new(loss: &'a LossReport) -> Self {
        Self {
            record: "stats",
            loss,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::{event::TcpEventKind, sink::testdata};

    fn lines(emit: impl FnOnce(&mut JsonSink<&mut Vec<u8>>)) -> Vec<Value> {
        let mut out = Vec::new();
        emit(&mut JsonSink::new(&mut out, testdata::clock()));
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.ends_with('\n'), "every record ends its line");
        text.lines()
            .map(|line| serde_json::from_str(line).expect("valid JSON"))
            .collect()
    }

    #[test]
    fn event_shape() {
        let mut event = testdata::event();
        event.local = testdata::addr("[fd6b:a1::2]:41234");
        event.remote = testdata::addr("[fd6b:a1::1]:80");
        event.sk_err = Some(104);
        let records = lines(|sink| sink.event(&event).expect("written"));
        assert_eq!(records.len(), 1);
        let record = &records[0];
        assert_eq!(
            record,
            &json!({
                "type": "event",
                "event": "reset_sent",
                "ts": "2026-11-26T13:04:05.123Z",
                "mono_ns": 245_123_456_789_u64,
                "cookie": 8193,
                "netns": 4_026_531_840_u32,
                "local": "[fd6b:a1::2]:41234",
                "remote": "[fd6b:a1::1]:80",
                "old_state": "ESTABLISHED",
                "state": "ESTABLISHED",
                "reason": "TCP_ABORT_ON_CLOSE",
                "reason_code": 11,
                "sk_err": 104,
                "idle_rx_ms": 12,
                "idle_tx_ms": 1500,
                "keepalive": {
                    "enabled": false,
                    "idle_ms": null,
                    "interval_ms": null,
                    "count": null,
                    "probes_out": 0
                },
                "retransmits": 0,
                "netns_cookie": 3,
                "context": null,
                "tcp_flags": null,
                "bytes": null,
                "pid": 1234,
                "tid": 1235,
                "comm": "python3"
            })
        );
    }

    #[test]
    fn absent_fields_are_null_not_missing() {
        let mut event = testdata::event();
        event.kind = TcpEventKind::ResetReceived;
        event.reason = None;
        event.keepalive = None;
        event.task = None;
        event.local = testdata::addr("10.1.2.3:5000");
        let record = lines(|sink| sink.event(&event).expect("written")).remove(0);
        assert_eq!(record["event"], "reset_received");
        assert_eq!(record["local"], "10.1.2.3:5000");
        for key in ["reason", "reason_code", "keepalive", "pid", "tid", "comm"] {
            assert_eq!(record.get(key), Some(&Value::Null), "{key}");
        }
    }

    #[test]
    fn finding_shape() {
        let record = lines(|sink| sink.finding(&testdata::finding()).expect("written")).remove(0);
        assert_eq!(record["type"], "finding");
        assert_eq!(record["ts"], "2026-11-26T13:04:05.123Z");
        assert_eq!(record["verdict"], "middlebox_drop");
        assert_eq!(record["kind"], "idle_expiry_rst");
        assert_eq!(record["confidence"], "likely");
        assert_eq!(record["local"], "[fd6b:a1::2]:41234");
        assert_eq!(record["remote"], "[fd6b:a1::1]:80");
        assert_eq!(record["idle_ms"], 1_805_000);
        assert_eq!(record["rst_ttl"], 64);
        assert_eq!(record["peer_ttl"], 63);
        assert_eq!(record["reason"], Value::Null);
        assert_eq!(record["timeout_window_ms"], json!([1_790_000, 1_805_000]));
        assert_eq!(record["keepalive"]["enabled"], false);
        assert_eq!(record["keepalive"]["idle_s"], 7200);
        assert_eq!(record["evidence"][1], "RST TTL 64, peer TTL 63");
        assert_eq!(record["advice"], "enable TCP keepalive with idle < 1790 s");

        let mut finding = testdata::finding();
        finding.timeout_window_ms = None;
        let record = lines(|sink| sink.finding(&finding).expect("written")).remove(0);
        assert_eq!(record["timeout_window_ms"], Value::Null);
    }

    #[test]
    fn ready_and_stats_shape() {
        let mut loss = LossReport {
            kernel_lost: 2,
            ..LossReport::default()
        };
        loss.count_event(TcpEventKind::KeepaliveTimer);
        loss.output_dropped.insert("stdout", 3);
        let records = lines(|sink| {
            sink.ready(&testdata::report()).expect("written");
            sink.stats(&loss).expect("written");
        });
        assert_eq!(
            records[0],
            json!({
                "type": "ready",
                "version": "0.1.0",
                "schema_version": 2,
                "kernel": "6.18.0",
                "hooks": [
                    {"signal": "RST sent", "hook": "tp_btf/tcp_send_reset",
                     "status": "attached", "why": null},
                    {"signal": "keepalive timer", "hook": "kprobe/tcp_keepalive_timer",
                     "status": "unavailable", "why": "kprobes are disabled"}
                ],
                "missing_signals": ["keepalive timer"],
                "context": "socket storage (freed with each socket)",
                "learned_state": "/var/lib/keepalive-observer/state.json: 2 destinations restored",
                "filters": "port 443"
            })
        );
        assert_eq!(
            records[1],
            json!({
                "type": "stats",
                "kernel_lost": 2,
                "syn_refusals": 0,
                "context_failures": 0,
                "filtered": 0,
                "decode_errors": 0,
                "events": 1,
                "findings": 0,
                "events_by_kind": {"keepalive_timer": 1},
                "output_dropped": {"stdout": 3}
            })
        );
    }
}
