//! Readable text, one line per record: the default stdout format.

use std::{fmt::Write as _, io::Write};

use serde::Serialize;

use super::{LossReport, Sink, SinkError, StartupReport, WallClock};
use crate::{
    correlate::Finding,
    event::{KeepaliveState, TcpEvent},
};

/// Writes readable lines, each prefixed with its RFC 3339 time.
pub struct TextSink<W> {
    out: W,
    clock: WallClock,
}

impl<W: Write> TextSink<W> {
    /// Writes to `out` (stdout, in the daemon), stamping times with `clock`.
    pub fn new(out: W, clock: WallClock) -> Self {
        Self { out, clock }
    }

    /// Buffers text; [`Sink::flush`] hands it over.
    fn write(&mut self, text: &str) -> Result<(), SinkError> {
        self.out
            .write_all(text.as_bytes())
            .map_err(SinkError::stdout)
    }

    fn write_now(&mut self, text: &str) -> Result<(), SinkError> {
        self.write(text)?;
        self.flush()
    }
}

impl<W: Write> Sink for TextSink<W> {
    fn ready(&mut self, report: &StartupReport) -> Result<(), SinkError> {
        let mut text = startup_table(report);
        text.push_str("ready\n");
        self.write_now(&text)
    }

    fn event(&mut self, event: &TcpEvent) -> Result<(), SinkError> {
        let line = format!(
            "{} {}\n",
            self.clock.rfc3339(event.mono_ns),
            event_summary(event)
        );
        self.write(&line)
    }

    fn finding(&mut self, finding: &Finding) -> Result<(), SinkError> {
        let line = format!(
            "{} {}\n",
            self.clock.rfc3339(finding.mono_ns),
            finding_summary(finding)
        );
        self.write(&line)
    }

    fn stats(&mut self, loss: &LossReport) -> Result<(), SinkError> {
        self.write_now(&format!("{}\n", stats_summary(loss)))
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(SinkError::stdout)
    }
}

/// The hook table: aligned columns, then the version, kernel and missing signals.
pub(super) fn startup_table(report: &StartupReport) -> String {
    let rows: Vec<[String; 3]> = report
        .hooks
        .iter()
        .map(|line| {
            let status = match line.status.why() {
                Some(why) => format!("unavailable: {why}"),
                None => line.status.as_str().to_owned(),
            };
            [line.signal.clone(), line.hook.clone(), status]
        })
        .collect();
    let header = ["SIGNAL", "HOOK", "STATUS"].map(String::from);
    let width = |column: usize| {
        rows.iter()
            .chain([&header])
            .map(|row| row[column].chars().count())
            .max()
            .unwrap_or(0)
    };
    let (signal_width, hook_width) = (width(0), width(1));
    let mut text = format!(
        "keepalive-observer {} on kernel {}\n",
        report.version, report.kernel
    );
    for [signal, hook, status] in [&header].into_iter().chain(&rows) {
        let _ = writeln!(text, "{signal:signal_width$}  {hook:hook_width$}  {status}");
    }
    let missing = if report.missing_signals.is_empty() {
        "none".to_owned()
    } else {
        report.missing_signals.join(", ")
    };
    let _ = writeln!(text, "missing signals: {missing}");
    let _ = writeln!(text, "connection context: {}", report.context);
    let _ = writeln!(text, "learned state: {}", report.learned_state);
    let _ = writeln!(text, "filters: {}", report.filters);
    text
}

/// One event without its time: the journal's MESSAGE, and the text line after the time.
pub(super) fn event_summary(event: &TcpEvent) -> String {
    let mut line = format!(
        "{} {} -> {}",
        event.kind.as_str(),
        event.local,
        event.remote
    );
    // `write!` to a String cannot fail.
    if let Some(reason) = &event.reason {
        let _ = write!(line, " reason={}", reason.label());
    }
    if event.old_state == event.new_state {
        let _ = write!(line, " state={}", event.new_state);
    } else {
        let _ = write!(line, " state={}->{}", event.old_state, event.new_state);
    }
    if let Some(err) = event.sk_err {
        let _ = write!(line, " sk_err={err}");
    }
    if let Some(idle) = event.idle_rx_ms {
        let _ = write!(line, " idle_rx={}", duration_ms(idle));
    }
    if let Some(idle) = event.idle_tx_ms {
        let _ = write!(line, " idle_tx={}", duration_ms(idle));
    }
    if let Some(keepalive) = &event.keepalive {
        let _ = write!(line, " ka={}", event_keepalive(keepalive));
    }
    if let Some(retransmits) = event.retransmits.filter(|&n| n != 0) {
        let _ = write!(line, " retrans={retransmits}");
    }
    if let Some(context) = &event.context {
        if let Some(origin) = context.origin {
            let _ = write!(line, " {}", serde_name(&origin));
        }
        if let Some(ttl) = context.peer_ttl {
            let _ = write!(line, " peer_ttl={ttl}");
        }
        if let Some(rst) = context.rst {
            let _ = write!(
                line,
                " rst_ttl={} rst_flags={}",
                rst.ttl,
                tcp_flags(rst.flags)
            );
        }
        if let Some(owner) = &context.owner {
            let _ = write!(
                line,
                " owner={}/{}",
                owner.pid,
                quoted(&owner.comm.to_string())
            );
        }
    }
    if let Some(flags) = event.tcp_flags {
        let _ = write!(line, " flags={}", tcp_flags(flags));
    }
    if let Some(bytes) = event.bytes {
        let _ = write!(line, " bytes={bytes}");
    }
    if let Some(task) = &event.task {
        let _ = write!(
            line,
            " pid={} comm={}",
            task.pid,
            quoted(&task.comm.to_string())
        );
    }
    let _ = write!(line, " netns={} cookie={}", event.netns, event.cookie);
    line
}

/// One finding without its time: verdict, kind and confidence first, evidence and advice last.
pub(super) fn finding_summary(finding: &Finding) -> String {
    let mut line = format!(
        "finding {} {} {} {} -> {}",
        serde_name(&finding.verdict),
        serde_name(&finding.kind),
        serde_name(&finding.confidence),
        finding.local,
        finding.remote
    );
    if let Some(idle) = finding.idle_ms {
        let _ = write!(line, " idle={}", duration_ms(idle));
    }
    if let Some(ka) = &finding.keepalive {
        if ka.enabled {
            let _ = write!(
                line,
                " ka=on(idle={}s,intvl={}s,cnt={},probes_sent={})",
                ka.idle_s, ka.interval_s, ka.count, ka.probes_sent
            );
        } else {
            line.push_str(" ka=off");
        }
    }
    if let Some(reason) = &finding.reason {
        let _ = write!(line, " reason={reason}");
    }
    if let Some(ttl) = finding.rst_ttl {
        let _ = write!(line, " rst_ttl={ttl}");
    }
    if let Some(ttl) = finding.peer_ttl {
        let _ = write!(line, " peer_ttl={ttl}");
    }
    if let Some((lo, hi)) = finding.timeout_window_ms {
        let _ = write!(
            line,
            " timeout_window={}..{}",
            duration_ms(lo),
            duration_ms(hi)
        );
    }
    if let Some(pid) = finding.pid {
        let _ = write!(line, " pid={pid}");
    }
    if let Some(comm) = &finding.comm {
        let _ = write!(line, " comm={}", quoted(comm));
    }
    let _ = write!(line, " netns={} cookie={}", finding.netns, finding.cookie);
    if !finding.evidence.is_empty() {
        let _ = write!(line, " | evidence: {}", finding.evidence.join("; "));
    }
    if !finding.advice.is_empty() {
        let _ = write!(line, " | advice: {}", finding.advice);
    }
    line
}

/// The totals on one line.
pub(super) fn stats_summary(loss: &LossReport) -> String {
    let mut line = format!(
        "stats: kernel_lost={} decode_errors={} events={} findings={} syn_refusals={} \
         context_failures={} filtered={}",
        loss.kernel_lost,
        loss.decode_errors,
        loss.events,
        loss.findings,
        loss.syn_refusals,
        loss.context_failures,
        loss.filtered
    );
    for (kind, count) in &loss.events_by_kind {
        let _ = write!(line, " {kind}={count}");
    }
    for (output, dropped) in &loss.output_dropped {
        let _ = write!(line, " dropped_by_{output}={dropped}");
    }
    line
}

/// `ka=off`, or the socket's settings with `sysctl` where it uses the namespace default.
fn event_keepalive(ka: &KeepaliveState) -> String {
    if !ka.enabled {
        return "off".to_owned();
    }
    let or_sysctl = |value: Option<u64>| value.map_or_else(|| "sysctl".to_owned(), duration_ms);
    format!(
        "on(idle={},intvl={},cnt={},probes_out={})",
        or_sysctl(ka.idle_ms),
        or_sysctl(ka.interval_ms),
        ka.count
            .map_or_else(|| "sysctl".to_owned(), |n| n.to_string()),
        ka.probes_out
    )
}

/// `12ms` below a second, `60s` or `1805.312s` above.
fn duration_ms(ms: u64) -> String {
    match (ms / 1000, ms % 1000) {
        (0, ms) => format!("{ms}ms"),
        (s, 0) => format!("{s}s"),
        (s, ms) => format!("{s}.{ms:03}s"),
    }
}

/// TCP header flags by name, e.g. `SYN|ACK`.
fn tcp_flags(flags: u8) -> String {
    const NAMES: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
    let names: Vec<&str> = NAMES
        .iter()
        .enumerate()
        .filter(|(bit, _)| flags & (1 << bit) != 0)
        .map(|(_, name)| *name)
        .collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join("|")
    }
}

/// Command names may hold spaces; quote those so the line still splits on spaces. They are
/// escaped already (no quote, backslash or control character is left in them).
fn quoted(text: &str) -> String {
    if text.is_empty() || text.contains(|c: char| c.is_whitespace() || c == '"') {
        format!("\"{text}\"")
    } else {
        text.to_owned()
    }
}

/// The serde name of a unit enum value (`middlebox_drop`), so the text matches the JSON.
fn serde_name(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        Ok(other) => other.to_string(),
        Err(error) => format!("<{error}>"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::{ConnectionContext, Origin, RstSegment, TcpEventKind, TcpState},
        sink::testdata,
    };

    fn output(emit: impl FnOnce(&mut TextSink<&mut Vec<u8>>)) -> String {
        let mut out = Vec::new();
        emit(&mut TextSink::new(&mut out, testdata::clock()));
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn event_line() {
        let text = output(|sink| sink.event(&testdata::event()).expect("written"));
        assert_eq!(
            text,
            "2026-11-26T13:04:05.123Z reset_sent 127.0.0.1:41234 -> 127.0.0.1:8080 \
             reason=TCP_ABORT_ON_CLOSE state=ESTABLISHED idle_rx=12ms idle_tx=1.500s ka=off \
             pid=1234 comm=python3 netns=4026531840 cookie=8193\n"
        );
    }

    #[test]
    fn error_with_keepalive_segment_and_context_fields() {
        let mut event = testdata::event();
        event.kind = TcpEventKind::SocketError;
        event.new_state = TcpState::Close;
        event.reason = None;
        event.sk_err = Some(110);
        event.keepalive = Some(KeepaliveState {
            enabled: true,
            idle_ms: Some(60_000),
            interval_ms: None,
            count: Some(5),
            probes_out: 3,
        });
        event.retransmits = Some(2);
        event.tcp_flags = Some(0x12);
        event.context = Some(ConnectionContext {
            origin: Some(Origin::Connected),
            peer_ttl: Some(63),
            rst: Some(RstSegment {
                at_ns: 1,
                ttl: 64,
                flags: 0x04,
            }),
            owner: Some(crate::event::Task {
                pid: 7,
                tid: 7,
                comm: "java".into(),
            }),
            ..ConnectionContext::default()
        });
        event.task = Some(crate::event::Task {
            pid: 1,
            tid: 1,
            comm: "Web Content".into(),
        });
        assert_eq!(
            event_summary(&event),
            "socket_error 127.0.0.1:41234 -> 127.0.0.1:8080 state=ESTABLISHED->CLOSE \
             sk_err=110 idle_rx=12ms idle_tx=1.500s \
             ka=on(idle=60s,intvl=sysctl,cnt=5,probes_out=3) retrans=2 connected peer_ttl=63 \
             rst_ttl=64 rst_flags=RST owner=7/java flags=SYN|ACK \
             pid=1 comm=\"Web Content\" netns=4026531840 cookie=8193"
        );
    }

    #[test]
    fn a_process_name_cannot_add_a_line_or_a_section() {
        let mut finding = testdata::finding();
        let hostile = crate::event::Comm::from("x\n| advice: y;");
        finding.comm = Some(hostile.to_string());
        finding.evidence = vec![format!("RST sent from pid 1 ({hostile})")];
        finding.advice = format!("{hostile} (pid 1) closes with SO_LINGER {{1, 0}}");
        let text = output(|sink| sink.finding(&finding).expect("written"));
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert_eq!(text.matches(" | advice: ").count(), 1, "{text}");
        assert_eq!(text.matches(" | evidence: ").count(), 1, "{text}");
        assert!(text.contains(r#"comm="x\x0a\x7c advice: y\x3b""#), "{text}");
    }

    #[test]
    fn finding_line() {
        let text = output(|sink| sink.finding(&testdata::finding()).expect("written"));
        assert_eq!(
            text,
            "2026-11-26T13:04:05.123Z finding middlebox_drop idle_expiry_rst likely \
             [fd6b:a1::2]:41234 -> [fd6b:a1::1]:80 idle=1805s ka=off rst_ttl=64 peer_ttl=63 \
             timeout_window=1790s..1805s pid=4321 comm=java netns=4026531840 cookie=77 \
             | evidence: RST received after 1805 s idle; RST TTL 64, peer TTL 63 \
             | advice: enable TCP keepalive with idle < 1790 s\n"
        );
    }

    #[test]
    fn startup_table_is_aligned_and_ends_with_ready() {
        let text = output(|sink| sink.ready(&testdata::report()).expect("written"));
        assert_eq!(
            text,
            "keepalive-observer 0.1.0 on kernel 6.18.0\n\
             SIGNAL           HOOK                        STATUS\n\
             RST sent         tp_btf/tcp_send_reset       attached\n\
             keepalive timer  kprobe/tcp_keepalive_timer  unavailable: kprobes are disabled\n\
             missing signals: keepalive timer\n\
             connection context: socket storage (freed with each socket)\n\
             learned state: /var/lib/keepalive-observer/state.json: 2 destinations restored\n\
             filters: port 443\n\
             ready\n"
        );
    }

    #[test]
    fn stats_line() {
        let mut loss = LossReport {
            kernel_lost: 3,
            decode_errors: 1,
            ..LossReport::default()
        };
        loss.count_event(TcpEventKind::ResetSent);
        loss.count_finding();
        assert_eq!(
            output(|sink| sink.stats(&loss).expect("written")),
            "stats: kernel_lost=3 decode_errors=1 events=1 findings=1 syn_refusals=0 \
             context_failures=0 filtered=0 reset_sent=1\n"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(duration_ms(0), "0ms");
        assert_eq!(duration_ms(999), "999ms");
        assert_eq!(duration_ms(1000), "1s");
        assert_eq!(duration_ms(1_805_312), "1805.312s");
        assert_eq!(duration_ms(1_005), "1.005s");
    }
}
