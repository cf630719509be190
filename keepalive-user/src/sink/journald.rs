//! journald: native-protocol entries with uppercase structured fields.
//!
//! Written straight to the journal's datagram socket rather than through tracing-journald:
//! that crate takes field names fixed at compile time, prefixes them unless told not to, adds
//! its own fields (TARGET, CODE_FILE …), maps tracing levels to priorities (INFO is 5, not 6),
//! sends every tracing event of the process the same way, and drops send errors. The protocol
//! itself is small: `KEY=value\n`, or for a value holding a newline `KEY\n`, its length as a
//! little-endian u64, the value, `\n`.
//!
//! Fields are the JSON records flattened (`keepalive.idle_ms` → `KEEPALIVE_IDLE_MS`), with a
//! few renamed to say more or to stay clear of journald's own names (`pid` → `OBSERVED_PID`,
//! since `_PID` is the sender). Null values are left out; arrays become one field, strings
//! joined with `; `, numbers with `,`.

use std::{
    io,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
};

use serde::Serialize;
use serde_json::Value;

use super::{
    LossReport, Sink, SinkError, StartupReport, WallClock,
    json::{EventRecord, FindingRecord, StatsRecord},
    text::{event_summary, finding_summary, stats_summary},
};
use crate::{correlate::Finding, event::TcpEvent};

/// Where journald listens for native-protocol entries.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

const SYSLOG_IDENTIFIER: &str = "keepalive-observer";
const PRIORITY_WARNING: &str = "4";
const PRIORITY_INFO: &str = "6";

/// JSON paths whose uppercase form would say too little or collide with a journald name.
const RENAMES: &[(&str, &str)] = &[
    ("type", "RECORD_TYPE"),
    ("ts", "EVENT_TIME"),
    ("event", "TCP_EVENT"),
    ("local", "LOCAL_ADDR"),
    ("remote", "REMOTE_ADDR"),
    ("reason", "RESET_REASON"),
    ("reason_code", "RESET_REASON_CODE"),
    ("pid", "OBSERVED_PID"),
    ("tid", "OBSERVED_TID"),
    ("comm", "OBSERVED_COMM"),
    ("keepalive_enabled", "KEEPALIVE"),
];

/// Names journald or its clients give a meaning; a record field that maps to one of them
/// (a future `message`, say) is prefixed with `OBSERVED_` instead of overriding it.
const RESERVED: &[&str] = &[
    "MESSAGE",
    "MESSAGE_ID",
    "PRIORITY",
    "SYSLOG_IDENTIFIER",
    "SYSLOG_FACILITY",
    "SYSLOG_PID",
    "SYSLOG_TIMESTAMP",
    "CODE_FILE",
    "CODE_LINE",
    "CODE_FUNC",
    "ERRNO",
    "TID",
    "INVOCATION_ID",
    "USER_INVOCATION_ID",
    "DOCUMENTATION",
];

/// Sends entries to journald.
pub struct JournaldSink {
    socket: UnixDatagram,
    path: PathBuf,
    clock: WallClock,
    /// Whether kernel records go to the journal too, not only findings, the start-up report
    /// and the totals.
    events: bool,
}

impl JournaldSink {
    /// Opens the system journal: `Ok(None)` when its socket does not exist (no journal on this
    /// host), an error when it exists but cannot be used.
    pub fn open(clock: WallClock) -> Result<Option<Self>, SinkError> {
        Self::open_at(Path::new(JOURNAL_SOCKET), clock)
    }

    /// Like [`JournaldSink::open`], for a journal socket at another path.
    pub fn open_at(path: &Path, clock: WallClock) -> Result<Option<Self>, SinkError> {
        let unavailable = |source: io::Error| SinkError::JournalUnavailable {
            path: path.display().to_string(),
            source,
        };
        if !path.try_exists().map_err(unavailable)? {
            return Ok(None);
        }
        // Connecting a throwaway socket proves a listener we may write to; entries then go out
        // with `send_to`, so a journald restarted at the same path is found again.
        UnixDatagram::unbound()
            .and_then(|probe| probe.connect(path))
            .map_err(unavailable)?;
        let socket = UnixDatagram::unbound().map_err(unavailable)?;
        Ok(Some(Self {
            socket,
            path: path.to_owned(),
            clock,
            events: false,
        }))
    }

    /// Also sends every kernel record. A journal is for findings: by default records go to
    /// stdout only, so that a host in trouble does not flood its journal.
    pub fn with_events(mut self, events: bool) -> Self {
        self.events = events;
        self
    }

    /// Sends one entry. Entries are a few hundred bytes, far below the datagram limit, so the
    /// protocol's memfd path for oversized entries is not needed.
    fn send(&self, fields: &[(String, String)]) -> Result<(), SinkError> {
        self.socket
            .send_to(&encode(fields), &self.path)
            .map(drop)
            .map_err(SinkError::JournalSend)
    }
}

impl Sink for JournaldSink {
    fn ready(&mut self, report: &StartupReport) -> Result<(), SinkError> {
        self.send(&ready_fields(report))
    }

    fn event(&mut self, event: &TcpEvent) -> Result<(), SinkError> {
        if !self.events {
            return Ok(());
        }
        let record = EventRecord::new(event, &self.clock);
        self.send(&entry(PRIORITY_INFO, event_summary(event), &record)?)
    }

    fn finding(&mut self, finding: &Finding) -> Result<(), SinkError> {
        let record = FindingRecord::new(finding, &self.clock);
        self.send(&entry(PRIORITY_WARNING, finding_summary(finding), &record)?)
    }

    fn stats(&mut self, loss: &LossReport) -> Result<(), SinkError> {
        let priority = if loss.has_losses() {
            PRIORITY_WARNING
        } else {
            PRIORITY_INFO
        };
        self.send(&entry(
            priority,
            stats_summary(loss),
            &StatsRecord::new(loss),
        )?)
    }

    /// Each entry is one datagram, sent as it comes: nothing is buffered.
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// The entry's common fields followed by the record's, flattened.
fn entry(
    priority: &str,
    message: String,
    record: &impl Serialize,
) -> Result<Vec<(String, String)>, SinkError> {
    let mut fields = common_fields(priority, message);
    flatten("", &serde_json::to_value(record)?, &mut fields);
    Ok(fields)
}

fn common_fields(priority: &str, message: String) -> Vec<(String, String)> {
    vec![
        ("MESSAGE".into(), message),
        ("PRIORITY".into(), priority.into()),
        ("SYSLOG_IDENTIFIER".into(), SYSLOG_IDENTIFIER.into()),
    ]
}

/// The start-up report: hooks as `hook (signal)` lists, since journald fields are flat.
fn ready_fields(report: &StartupReport) -> Vec<(String, String)> {
    let attached: Vec<String> = report
        .hooks
        .iter()
        .filter(|line| line.status.why().is_none())
        .map(|line| format!("{} ({})", line.hook, line.signal))
        .collect();
    let unavailable: Vec<String> = report
        .hooks
        .iter()
        .filter_map(|line| {
            let why = line.status.why()?;
            Some(format!("{} ({}): {why}", line.hook, line.signal))
        })
        .collect();
    let missing = if report.missing_signals.is_empty() {
        "none".to_owned()
    } else {
        report.missing_signals.join(", ")
    };
    let message = format!(
        "ready: {} hooks attached, {} unavailable; missing signals: {missing}",
        attached.len(),
        unavailable.len()
    );
    let mut fields = common_fields(PRIORITY_INFO, message);
    fields.push(("RECORD_TYPE".into(), "ready".into()));
    fields.push(("VERSION".into(), report.version.clone()));
    fields.push(("KERNEL".into(), report.kernel.clone()));
    fields.push(("LEARNED_STATE".into(), report.learned_state.clone()));
    fields.push(("FILTERS".into(), report.filters.clone()));
    for (name, list) in [
        ("HOOKS_ATTACHED", attached),
        ("HOOKS_UNAVAILABLE", unavailable),
        ("MISSING_SIGNALS", report.missing_signals.clone()),
    ] {
        if !list.is_empty() {
            fields.push((name.into(), list.join("; ")));
        }
    }
    fields
}

/// Appends the fields of a JSON value, nested keys joined with `_`.
fn flatten(path: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Null => {}
        Value::Object(map) => {
            for (key, value) in map {
                let nested = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}_{key}")
                };
                flatten(&nested, value, out);
            }
        }
        Value::Array(items) if items.is_empty() => {}
        Value::Array(items) if items.iter().all(Value::is_object) => {
            flatten_tagged(path, items, out);
        }
        Value::Array(items) => {
            let separator = if items.iter().any(Value::is_string) {
                "; "
            } else {
                ","
            };
            let parts: Vec<String> = items.iter().map(scalar).collect();
            out.push((field_name(path), parts.join(separator)));
        }
        scalar_value => out.push((field_name(path), scalar(scalar_value))),
    }
}

/// Tags of the structured lists: `facts` items are tagged `fact`, `actions` items `action`.
const TAGS: &[&str] = &["fact", "action"];

/// A list of tagged objects (facts, actions): the codes in one field (`FACTS=idle_gap;
/// keepalive_off`), and each value in a field named by the tag, the code and the key
/// (`FACT_IDLE_GAP_IDLE_MS=5500`); journald keeps a repeated name as several values.
fn flatten_tagged(path: &str, items: &[Value], out: &mut Vec<(String, String)>) {
    let mut codes = Vec::new();
    for item in items {
        let Value::Object(map) = item else {
            continue;
        };
        let Some((tag, code)) = TAGS
            .iter()
            .find_map(|&tag| map.get(tag).and_then(Value::as_str).map(|code| (tag, code)))
        else {
            out.push((field_name(path), item.to_string()));
            continue;
        };
        codes.push(code.to_owned());
        for (key, value) in map.iter().filter(|(key, _)| key.as_str() != tag) {
            flatten(&format!("{tag}_{code}_{key}"), value, out);
        }
    }
    if !codes.is_empty() {
        out.push((field_name(path), codes.join("; ")));
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A journald field name for a flattened JSON path: renamed or uppercased, only `A-Z0-9_`,
/// never a reserved name nor a leading `_` or digit (journald ignores or trusts those).
fn field_name(path: &str) -> String {
    let name = RENAMES
        .iter()
        .find(|(from, _)| *from == path)
        .map_or(path, |(_, to)| *to);
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if RESERVED.contains(&name.as_str())
        || name.starts_with(|c: char| c == '_' || c.is_ascii_digit())
    {
        format!("OBSERVED_{name}")
    } else {
        name
    }
}

/// Encodes an entry in the native protocol.
fn encode(fields: &[(String, String)]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(512);
    for (name, value) in fields {
        buf.extend_from_slice(name.as_bytes());
        if value.contains('\n') {
            buf.push(b'\n');
            buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
        } else {
            buf.push(b'=');
        }
        buf.extend_from_slice(value.as_bytes());
        buf.push(b'\n');
    }
    buf
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{event::TcpEventKind, sink::testdata};

    fn pair(name: &str, value: &str) -> (String, String) {
        (name.into(), value.into())
    }

    #[test]
    fn encodes_simple_record() {
        let bytes = encode(&[pair("MESSAGE", "hello"), pair("PRIORITY", "6")]);
        assert_eq!(bytes, b"MESSAGE=hello\nPRIORITY=6\n");
    }

    #[test]
    fn encodes_newline_value_binary_safe() {
        let bytes = encode(&[pair("EVIDENCE", "a\nb"), pair("COOKIE", "7")]);
        assert_eq!(
            bytes,
            b"EVIDENCE\n\x03\x00\x00\x00\x00\x00\x00\x00a\nb\nCOOKIE=7\n"
        );
    }

    #[test]
    fn field_names() {
        assert_eq!(field_name("idle_rx_ms"), "IDLE_RX_MS");
        assert_eq!(field_name("keepalive_idle_ms"), "KEEPALIVE_IDLE_MS");
        assert_eq!(field_name("keepalive_enabled"), "KEEPALIVE");
        assert_eq!(field_name("pid"), "OBSERVED_PID");
        assert_eq!(field_name("message"), "OBSERVED_MESSAGE");
        assert_eq!(field_name("priority"), "OBSERVED_PRIORITY");
        assert_eq!(field_name("_x"), "OBSERVED__X");
        assert_eq!(field_name("a-b"), "A_B");
    }

    /// Parses the native protocol back, so the tests read what journald would read.
    fn decode(mut bytes: &[u8]) -> BTreeMap<String, String> {
        let mut fields = BTreeMap::new();
        while !bytes.is_empty() {
            let end = bytes
                .iter()
                .position(|&b| b == b'\n' || b == b'=')
                .expect("field name ends");
            let name = String::from_utf8(bytes[..end].to_vec()).expect("utf-8 name");
            let value;
            if bytes[end] == b'=' {
                let len = bytes[end + 1..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .expect("value ends");
                value = bytes[end + 1..end + 1 + len].to_vec();
                bytes = &bytes[end + 2 + len..];
            } else {
                let len_bytes: [u8; 8] = bytes[end + 1..end + 9].try_into().expect("length");
                let len = u64::from_le_bytes(len_bytes) as usize;
                value = bytes[end + 9..end + 9 + len].to_vec();
                assert_eq!(bytes[end + 9 + len], b'\n');
                bytes = &bytes[end + 10 + len..];
            }
            let previous = fields.insert(name.clone(), String::from_utf8(value).expect("utf-8"));
            assert!(previous.is_none(), "{name} sent twice");
        }
        fields
    }

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("keepalive-sink-{}-{name}.sock", std::process::id()))
    }

    /// A datagram socket standing in for journald.
    struct FakeJournal {
        socket: UnixDatagram,
        path: PathBuf,
    }

    impl FakeJournal {
        fn bind(name: &str) -> Self {
            let path = temp_path(name);
            let _ = std::fs::remove_file(&path);
            let socket = UnixDatagram::bind(&path).expect("bind fake journal");
            Self { socket, path }
        }

        fn sink(&self) -> JournaldSink {
            JournaldSink::open_at(&self.path, testdata::clock())
                .expect("usable")
                .expect("exists")
        }

        fn receive(&self) -> BTreeMap<String, String> {
            let mut buf = vec![0; 65536];
            let len = self.socket.recv(&mut buf).expect("entry");
            decode(&buf[..len])
        }
    }

    impl Drop for FakeJournal {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    #[test]
    fn records_go_to_the_journal_only_when_asked_for() {
        let journal = FakeJournal::bind("findings-only");
        let mut sink = journal.sink();
        sink.event(&testdata::event()).expect("nothing to send");
        sink.finding(&testdata::finding()).expect("sent");
        let first = journal.receive();
        assert_eq!(first["RECORD_TYPE"], "finding", "{first:?}");
    }

    #[test]
    fn event_entry() {
        let journal = FakeJournal::bind("event");
        let mut event = testdata::event();
        event.sk_err = Some(104);
        journal
            .sink()
            .with_events(true)
            .event(&event)
            .expect("sent");
        let fields = journal.receive();
        let message = event_summary(&event);
        let expected = [
            ("MESSAGE", message.as_str()),
            ("PRIORITY", "6"),
            ("SYSLOG_IDENTIFIER", "keepalive-observer"),
            ("RECORD_TYPE", "event"),
            ("TCP_EVENT", "reset_sent"),
            ("EVENT_TIME", "2026-11-26T13:04:05.123Z"),
            ("MONO_NS", "245123456789"),
            ("COOKIE", "8193"),
            ("NETNS", "4026531840"),
            ("NETNS_COOKIE", "3"),
            ("LOCAL_ADDR", "127.0.0.1:41234"),
            ("REMOTE_ADDR", "127.0.0.1:8080"),
            ("OLD_STATE", "ESTABLISHED"),
            ("STATE", "ESTABLISHED"),
            ("RESET_REASON", "TCP_ABORT_ON_CLOSE"),
            ("RESET_REASON_CODE", "11"),
            ("SK_ERR", "104"),
            ("IDLE_RX_MS", "12"),
            ("IDLE_TX_MS", "1500"),
            ("KEEPALIVE", "false"),
            ("KEEPALIVE_PROBES_OUT", "0"),
            ("RETRANSMITS", "0"),
            ("OBSERVED_PID", "1234"),
            ("OBSERVED_TID", "1235"),
            ("OBSERVED_COMM", "python3"),
        ];
        let expected: BTreeMap<String, String> = expected
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        // Null fields (TTL, TCP_FLAGS, BYTES, KEEPALIVE_IDLE_MS …) are left out.
        assert_eq!(fields, expected);
    }

    #[test]
    fn finding_entry() {
        let journal = FakeJournal::bind("finding");
        let finding = testdata::finding();
        journal.sink().finding(&finding).expect("sent");
        let fields = journal.receive();
        let get = |name: &str| fields.get(name).map(String::as_str);
        assert_eq!(get("PRIORITY"), Some("4"));
        assert_eq!(get("RECORD_TYPE"), Some("finding"));
        assert_eq!(get("VERDICT"), Some("middlebox_drop"));
        assert_eq!(get("KIND"), Some("idle_expiry_rst"));
        assert_eq!(get("CONFIDENCE"), Some("likely"));
        assert_eq!(get("LOCAL_ADDR"), Some("[fd6b:a1::2]:41234"));
        assert_eq!(get("REMOTE_ADDR"), Some("[fd6b:a1::1]:80"));
        assert_eq!(get("IDLE_MS"), Some("1805000"));
        assert_eq!(get("RST_TTL"), Some("64"));
        assert_eq!(get("PEER_TTL"), Some("63"));
        assert_eq!(get("TIMEOUT_WINDOW_MS"), Some("1790000,1805000"));
        assert_eq!(
            get("EVIDENCE"),
            Some("RST received after 1805 s idle; RST TTL 64, peer TTL 63")
        );
        assert_eq!(
            get("ADVICE"),
            Some("enable TCP keepalive with idle < 1790 s")
        );
        assert_eq!(get("KEEPALIVE"), Some("false"));
        assert_eq!(get("KEEPALIVE_IDLE_S"), Some("7200"));
        assert_eq!(get("OBSERVED_PID"), Some("4321"));
        assert_eq!(get("OBSERVED_COMM"), Some("java"));
        assert_eq!(get("RESET_REASON"), None);
        assert_eq!(get("SCHEMA_VERSION"), Some("2"));
        assert_eq!(get("FACTS"), Some("idle_gap; rst_ttl_closer"));
        assert_eq!(get("FACT_IDLE_GAP_IDLE_MS"), Some("1805000"));
        assert_eq!(get("FACT_IDLE_GAP_ENDED_BY"), Some("send"));
        assert_eq!(get("FACT_RST_TTL_CLOSER_RST_TTL"), Some("64"));
        assert_eq!(get("FACT_RST_TTL_CLOSER_HOPS"), Some("1"));
        assert_eq!(
            get("ACTIONS"),
            Some("keepalive_idle_below; evict_idle_after")
        );
        assert_eq!(get("ACTION_KEEPALIVE_IDLE_BELOW_SECONDS"), Some("1790"));
        assert_eq!(get("ACTION_KEEPALIVE_IDLE_BELOW_SUGGESTED"), Some("840"));
        assert_eq!(get("ACTION_EVICT_IDLE_AFTER_SECONDS"), Some("1790"));
        assert_eq!(get("ACTION_EVICT_IDLE_AFTER_MS"), None);
        assert_eq!(get("MESSAGE"), Some(finding_summary(&finding).as_str()));
    }

    #[test]
    fn ready_and_stats_entries() {
        let journal = FakeJournal::bind("ready");
        let mut sink = journal.sink();
        sink.ready(&testdata::report()).expect("sent");
        let fields = journal.receive();
        assert_eq!(
            fields["MESSAGE"],
            "ready: 1 hooks attached, 1 unavailable; missing signals: keepalive timer"
        );
        assert_eq!(fields["HOOKS_ATTACHED"], "tp_btf/tcp_send_reset (RST sent)");
        assert_eq!(
            fields["HOOKS_UNAVAILABLE"],
            "kprobe/tcp_keepalive_timer (keepalive timer): kprobes are disabled"
        );
        assert_eq!(fields["KERNEL"], "6.18.0");

        let mut loss = LossReport {
            decode_errors: 1,
            ..LossReport::default()
        };
        loss.count_event(TcpEventKind::ResetReceived);
        sink.stats(&loss).expect("sent");
        let fields = journal.receive();
        assert_eq!(fields["PRIORITY"], "4");
        assert_eq!(fields["DECODE_ERRORS"], "1");
        assert_eq!(fields["EVENTS_BY_KIND_RESET_RECEIVED"], "1");
    }

    #[test]
    fn missing_socket_is_none_and_unusable_socket_is_an_error() {
        let missing = temp_path("missing");
        assert!(
            JournaldSink::open_at(&missing, testdata::clock())
                .expect("no error")
                .is_none()
        );

        // A socket file nobody listens on, as a stopped journald leaves behind.
        let stale = temp_path("stale");
        let _ = std::fs::remove_file(&stale);
        drop(UnixDatagram::bind(&stale).expect("bind"));
        let result = JournaldSink::open_at(&stale, testdata::clock());
        let _ = std::fs::remove_file(&stale);
        assert!(matches!(result, Err(SinkError::JournalUnavailable { .. })));
    }

    #[test]
    fn a_journal_restarted_at_the_same_path_is_found_again() {
        let journal = FakeJournal::bind("restarted");
        let mut sink = journal.sink();
        drop(journal);
        assert!(matches!(
            sink.finding(&testdata::finding()),
            Err(SinkError::JournalSend(_))
        ));
        let restarted = FakeJournal::bind("restarted");
        sink.finding(&testdata::finding())
            .expect("sent to the restarted journal");
        assert_eq!(restarted.receive()["RECORD_TYPE"], "finding");
    }

    #[test]
    fn send_failure_is_reported() {
        let journal = FakeJournal::bind("gone");
        let mut sink = journal.sink();
        drop(journal);
        assert!(matches!(
            sink.finding(&testdata::finding()),
            Err(SinkError::JournalSend(_))
        ));
    }
}
