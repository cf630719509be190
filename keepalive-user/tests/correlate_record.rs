//! Record and replay: round trips, deterministic findings, and every kind of bad input.

use std::collections::BTreeMap;

use keepalive_common::{
    ConnContext, Event as RawEvent, EventKind, context_flags, flags, tcp_state,
};
use keepalive_observer::{
    correlate::{Correlator, CorrelatorConfig, Finding, FindingKind, KeepaliveSysctls},
    event::{DecodeContext, DecodeError, raw_bytes},
    record::{
        FORMAT_VERSION, MAX_LINE_BYTES, RecordError, RecordHeader, Recorder, Replay, ReplayError,
        ReplayItem,
    },
};

const MS: u64 = 1_000_000;
const NETNS: u32 = 4_026_531_840;
const HZ: u32 = 250;

fn context() -> DecodeContext {
    DecodeContext {
        hz: HZ,
        reset_reasons: BTreeMap::from([
            (1, "NO_SOCKET".to_owned()),
            (11, "TCP_ABORT_ON_CLOSE".to_owned()),
            (14, "TCP_STATE".to_owned()),
            (15, "TCP_KEEPALIVE_TIMEOUT".to_owned()),
        ]),
    }
}

fn header() -> RecordHeader {
    RecordHeader::new(
        context(),
        KeepaliveSysctls {
            tcp_keepalive_time: 600,
            tcp_keepalive_intvl: 30,
            tcp_keepalive_probes: 5,
        },
        30_000,
        1_767_225_600_000_000_000,
    )
}

/// Builds one raw record: an IPv4 TCP socket 198.51.100.10:40000 -> 198.51.100.130:8080 in
/// ESTABLISHED, last receive and send `idle_ms` before the event.
struct R(RawEvent);

fn raw(kind: EventKind, cookie: u64, at_ms: u64) -> R {
    let mut e = RawEvent::zeroed(kind);
    e.ts_ns = at_ms * MS;
    e.cookie = cookie;
    e.netns = NETNS;
    e.family = 2;
    e.flags = flags::HAS_SOCK | flags::HAS_TCP;
    e.local_addr[..4].copy_from_slice(&[198, 51, 100, 10]);
    e.remote_addr[..4].copy_from_slice(&[198, 51, 100, 130]);
    e.local_port = 40000;
    e.remote_port = 8080;
    e.old_state = tcp_state::ESTABLISHED;
    e.new_state = tcp_state::ESTABLISHED;
    e.jiffies = 1_000_000 + u32::try_from(at_ms * u64::from(HZ) / 1000).expect("small");
    e.rcv_tstamp = e.jiffies;
    e.lsndtime = e.jiffies;
    R(e)
}

impl R {
    fn states(mut self, old: u8, new: u8) -> Self {
        self.0.old_state = old;
        self.0.new_state = new;
        self
    }

    fn idle(mut self, ms: u64) -> Self {
        let jiffies = u32::try_from(ms * u64::from(HZ) / 1000).expect("small");
        self.0.rcv_tstamp = self.0.jiffies - jiffies;
        self.0.lsndtime = self.0.jiffies - jiffies;
        self
    }

    /// The context of a connection from 198.51.100.10 whose SYN-ACK had TTL 63, used by
    /// `app`, with `edit` applied.
    fn context(mut self, edit: impl FnOnce(&mut ConnContext)) -> Self {
        let mut context = ConnContext {
            born_ns: 1,
            established_ns: MS,
            owner_pid: 4242,
            owner_tid: 4242,
            peer_ttl: 63,
            flags: context_flags::CONNECTED | context_flags::FROM_HANDSHAKE,
            ..ConnContext::zeroed()
        };
        context.owner_comm[..3].copy_from_slice(b"app");
        edit(&mut context);
        self.0.context = context;
        self.0.flags |= flags::HAS_CONTEXT;
        self
    }

    fn task(mut self) -> Self {
        self.0.pid = 4242;
        self.0.tid = 4242;
        self.0.comm[..3].copy_from_slice(b"app");
        self
    }

    fn err(mut self, errno: i32) -> Self {
        self.0.sk_err = errno;
        self
    }

    fn bytes(&self) -> Vec<u8> {
        raw_bytes(&self.0)
    }
}

/// The records of a connection that survives a 4 s gap and is reset by a forged RST after
/// 6 s (its context has the idle send and the RST's TTL), then ticks.
fn forged_rst_stream() -> Vec<Result<Vec<u8>, u64>> {
    use tcp_state::{CLOSE, ESTABLISHED};
    let idle_send = |at_ms: u64, gap_ms: u64| {
        move |c: &mut ConnContext| {
            c.idle_send_ns = at_ms * MS;
            c.idle_send_gap = u32::try_from(gap_ms * u64::from(HZ) / 1000).expect("small");
        }
    };
    let mut stream = vec![
        raw(EventKind::ReplyAfterIdle, 1, 4001)
            .task()
            .context(idle_send(4000, 4000)),
    ]
    .into_iter()
    .map(|r| Ok(r.bytes()))
    .collect::<Vec<_>>();
    stream.push(Err(5000 * MS));
    let rst = |c: &mut ConnContext| {
        idle_send(10_000, 6000)(c);
        c.rst_ttl = 64;
        c.rst_flags = keepalive_common::tcp_flags::RST;
        c.rst_ns = 10_001 * MS;
    };
    stream.extend(
        [
            raw(EventKind::ResetReceived, 1, 10_001)
                .idle(6000)
                .context(rst),
            raw(EventKind::SocketError, 1, 10_001)
                .states(CLOSE, CLOSE)
                .idle(6000)
                .err(104)
                .context(|c| {
                    rst(c);
                    c.state_before_close = ESTABLISHED;
                }),
        ]
        .into_iter()
        .map(|r| Ok(r.bytes())),
    );
    stream.push(Err(11_000 * MS));
    stream.push(Err(20_000 * MS));
    stream
}

/// Records the stream (raw records as `Ok`, ticks as `Err`).
fn record(stream: &[Result<Vec<u8>, u64>]) -> Vec<u8> {
    let mut recorder = Recorder::new(Vec::new(), &header()).expect("header");
    for item in stream {
        match item {
            Ok(bytes) => recorder.raw(bytes).expect("record"),
            Err(mono_ns) => recorder.tick(*mono_ns).expect("tick"),
        }
    }
    recorder.flush().expect("flush");
    recorder.into_inner()
}

fn correlate(
    items: impl IntoIterator<Item = ReplayItem>,
    sysctls: KeepaliveSysctls,
) -> Vec<Finding> {
    let mut correlator = Correlator::new(CorrelatorConfig {
        sysctls,
        ..CorrelatorConfig::default()
    });
    let mut findings = Vec::new();
    for item in items {
        findings.extend(match item {
            ReplayItem::Event(ev) => correlator.on_event(&ev),
            ReplayItem::Tick(mono_ns) => correlator.on_tick(mono_ns),
        });
    }
    findings
}

fn replay_all(bytes: &[u8]) -> (RecordHeader, Vec<ReplayItem>) {
    let replay = Replay::new(bytes).expect("header");
    let header = replay.header().clone();
    let items = replay.collect::<Result<Vec<_>, _>>().expect("valid lines");
    (header, items)
}

#[test]
fn a_recording_replays_to_the_same_items() {
    let stream = forged_rst_stream();
    let recording = record(&stream);
    let text = String::from_utf8(recording.clone()).expect("utf-8");
    let first = text.lines().next().expect("a header line");
    assert!(
        first.starts_with(r#"{"type":"header","version":2,"decode":{"hz":250,"#),
        "{first}"
    );
    assert!(first.contains(r#""keepalive_sysctls":{"tcp_keepalive_time":600,"#));
    assert!(first.contains(r#""wall_offset_ns":1767225600000000000"#));
    assert!(text.contains(r#"{"type":"tick","mono_ns":5000000000}"#));

    let (read_header, items) = replay_all(&recording);
    assert_eq!(read_header, header());
    assert_eq!(read_header.version, FORMAT_VERSION);
    let ctx = context();
    let expected: Vec<ReplayItem> = stream
        .iter()
        .map(|item| match item {
            Ok(bytes) => ReplayItem::Event(ctx.decode(bytes).expect("decodes")),
            Err(mono_ns) => ReplayItem::Tick(*mono_ns),
        })
        .collect();
    assert_eq!(items, expected);
}

#[test]
fn replay_reproduces_the_findings_byte_for_byte() {
    let stream = forged_rst_stream();
    let ctx = context();
    let live = correlate(
        stream.iter().map(|item| match item {
            Ok(bytes) => ReplayItem::Event(ctx.decode(bytes).expect("decodes")),
            Err(mono_ns) => ReplayItem::Tick(*mono_ns),
        }),
        header().keepalive_sysctls,
    );
    let recording = record(&stream);
    let runs: Vec<String> = (0..2)
        .map(|_| {
            let (header, items) = replay_all(&recording);
            let findings = correlate(items, header.keepalive_sysctls);
            findings
                .iter()
                .map(|f| serde_json::to_string(f).expect("serializes"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    let live_json = live
        .iter()
        .map(|f| serde_json::to_string(f).expect("serializes"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(runs[0], runs[1]);
    assert_eq!(runs[0], live_json);
    assert_eq!(live.len(), 1, "{live:#?}");
    let f = &live[0];
    assert_eq!(f.kind, FindingKind::ForgedRst);
    assert_eq!(f.timeout_window_ms, Some((4000, 6000)));
    assert_eq!(f.comm.as_deref(), Some("app"));
    assert_eq!(f.keepalive.as_ref().map(|k| k.idle_s), Some(600));
}

#[test]
fn longer_records_are_cut_to_the_event_and_short_ones_refused() {
    let mut long = raw(EventKind::KeepaliveTimer, 9, 5).bytes();
    let exact = long.clone();
    long.extend_from_slice(&[0xff; 8]);
    let mut recorder = Recorder::new(Vec::new(), &header()).expect("header");
    recorder.raw(&long).expect("record");
    let err = recorder.raw(&exact[..100]).expect_err("too short");
    assert!(matches!(
        err,
        RecordError::Record(DecodeError::Truncated {
            got: 100,
            expected: 224
        })
    ));
    let (_, items) = replay_all(&recorder.into_inner());
    assert_eq!(
        items,
        [ReplayItem::Event(
            context().decode(&exact).expect("decodes")
        )]
    );
}

fn header_line() -> String {
    serde_json::to_string(&serde_json::json!({
        "type": "header",
        "version": FORMAT_VERSION,
        "decode": context(),
        "keepalive_sysctls": KeepaliveSysctls::default(),
        "idle_expiry_floor_ms": 30_000,
        "wall_offset_ns": -5,
    }))
    .expect("serializes")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn raw_line(bytes: &[u8]) -> String {
    format!(r#"{{"type":"raw","data":"{}"}}"#, hex(bytes))
}

/// Replays `text` line by line, returning each item or error.
fn lines(text: &str) -> Vec<Result<ReplayItem, ReplayError>> {
    Replay::new(text.as_bytes()).expect("header").collect()
}

#[test]
fn blank_lines_crlf_and_uppercase_hex_are_accepted() {
    let good = raw(EventKind::KeepaliveTimer, 9, 5).bytes();
    let text = format!(
        "\n{}\r\n\r\n{}\r\n{{\"type\":\"tick\",\"mono_ns\":7}}\n",
        header_line(),
        raw_line(&good)
    );
    let replay = Replay::new(text.as_bytes()).expect("header");
    assert_eq!(replay.header().wall_offset_ns, -5);
    let items: Vec<_> = replay.collect::<Result<_, _>>().expect("valid");
    assert_eq!(
        items,
        [
            ReplayItem::Event(context().decode(&good).expect("decodes")),
            ReplayItem::Tick(7)
        ]
    );
}

#[test]
fn header_errors_name_the_line() {
    let err = Replay::new(&b""[..]).expect_err("empty");
    assert!(matches!(err, ReplayError::Empty));
    assert_eq!(
        err.to_string(),
        "line 1: empty recording, expected a header"
    );

    let err = Replay::new(&b"\n{\"type\":\"tick\",\"mono_ns\":1}\n"[..]).expect_err("no header");
    assert!(
        matches!(err, ReplayError::MissingHeader { line: 2, ref found } if found == "\"tick\"")
    );
    assert!(
        err.to_string()
            .starts_with("line 2: expected the header first")
    );

    let future = header_line().replace(r#""version":2"#, r#""version":3"#);
    let err = Replay::new(future.as_bytes()).expect_err("future version");
    assert!(matches!(err, ReplayError::UnknownVersion { line: 1, ref found } if found == "3"));
    assert!(err.to_string().contains("unknown recording version 3"));

    let older = header_line().replace(r#""version":2"#, r#""version":1"#);
    let err = Replay::new(older.as_bytes()).expect_err("older version");
    assert!(matches!(
        err,
        ReplayError::OlderVersion { line: 1, found: 1 }
    ));
    assert!(
        err.to_string()
            .contains("format version 1, made by an older keepalive-observer"),
        "{err}"
    );

    let unversioned = header_line().replace(r#""version":2,"#, "");
    let err = Replay::new(unversioned.as_bytes()).expect_err("no version");
    assert!(matches!(err, ReplayError::UnknownVersion { ref found, .. } if found == "(missing)"));

    let err = Replay::new(&b"not json\n"[..]).expect_err("bad json");
    assert!(matches!(err, ReplayError::Json { line: 1, .. }));

    let incomplete = header_line().replace(r#""hz":250,"#, "");
    let err = Replay::new(incomplete.as_bytes()).expect_err("missing hz");
    assert!(matches!(err, ReplayError::Json { line: 1, .. }));
    assert!(err.to_string().contains("hz"), "{err}");
}

#[test]
fn bad_lines_are_reported_and_skipped() {
    let good = raw(EventKind::KeepaliveTimer, 9, 5).bytes();
    let mut unknown_kind = good.clone();
    unknown_kind[std::mem::offset_of!(RawEvent, kind)] = 99;
    let text = [
        header_line(),
        "{\"type\":\"raw\"".to_owned(),
        r#"{"type":"raw","data":"0g"}"#.to_owned(),
        r#"{"type":"raw","data":"abc"}"#.to_owned(),
        raw_line(&good[..64]),
        raw_line(&unknown_kind),
        header_line(),
        r#"{"type":"nope"}"#.to_owned(),
        raw_line(&good),
    ]
    .join("\n");
    let results = lines(&text);
    assert_eq!(results.len(), 8);
    let errors: Vec<String> = results[..7]
        .iter()
        .map(|r| match r {
            Err(err) => err.to_string(),
            Ok(item) => panic!("expected an error, got {item:?}"),
        })
        .collect();
    assert!(errors[0].starts_with("line 2: bad JSON"), "{}", errors[0]);
    assert_eq!(errors[1], "line 3: bad hex in data at byte 1");
    assert_eq!(errors[2], "line 4: bad hex in data at byte 3");
    assert_eq!(errors[3], "line 5: record has 64 bytes, expected 224");
    assert_eq!(errors[4], "line 6: unknown event kind 99");
    assert_eq!(errors[5], "line 7: a header after the first line");
    assert!(errors[6].starts_with("line 8: bad JSON"), "{}", errors[6]);
    assert!(matches!(
        results[4],
        Err(ReplayError::Decode {
            line: 6,
            source: DecodeError::UnknownKind(99)
        })
    ));
    assert!(matches!(results[7], Ok(ReplayItem::Event(_))));
}

#[test]
fn a_line_that_is_not_utf8_is_reported_and_skipped() {
    let mut text = header_line().into_bytes();
    text.extend_from_slice(b"\n{\"type\":\xff\xfe\n{\"type\":\"tick\",\"mono_ns\":1}\n");
    let results: Vec<_> = Replay::new(&text[..]).expect("header").collect();
    assert_eq!(results.len(), 2);
    assert!(
        matches!(results[0], Err(ReplayError::NotUtf8 { line: 2, offset: 8 })),
        "{:?}",
        results[0]
    );
    assert!(matches!(results[1], Ok(ReplayItem::Tick(1))));
}

#[test]
fn a_line_longer_than_the_limit_is_an_error_not_an_allocation() {
    // 256 MiB without a newline, produced as it is read: only a bounded buffer may hold it.
    const LONG: u64 = 1 << 28;
    let mut head = header_line().into_bytes();
    head.push(b'\n');
    let tail = b"\n{\"type\":\"tick\",\"mono_ns\":7}\n";
    let input = std::io::BufReader::new(std::io::Read::chain(
        std::io::Read::chain(&head[..], std::io::Read::take(std::io::repeat(b'a'), LONG)),
        &tail[..],
    ));
    let results: Vec<_> = Replay::new(input).expect("header").collect();
    assert_eq!(results.len(), 2);
    match &results[0] {
        Err(err @ ReplayError::LineTooLong { line: 2, limit }) => {
            assert_eq!(*limit, MAX_LINE_BYTES);
            assert_eq!(
                err.to_string(),
                format!("line 2: longer than {MAX_LINE_BYTES} bytes, not a line of a recording")
            );
        }
        other => panic!("expected LineTooLong on line 2, got {other:?}"),
    }
    assert!(matches!(results[1], Ok(ReplayItem::Tick(7))));
    let long_header = "x".repeat(MAX_LINE_BYTES + 1);
    assert!(matches!(
        Replay::new(long_header.as_bytes()),
        Err(ReplayError::LineTooLong { line: 1, .. })
    ));
}

#[test]
fn unreadable_input_ends_the_replay() {
    struct Failing;
    impl std::io::Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk on fire"))
        }
    }
    let mut head = header_line().into_bytes();
    head.push(b'\n');
    let input = std::io::BufReader::new(std::io::Read::chain(&head[..], Failing));
    let results: Vec<_> = Replay::new(input).expect("header").collect();
    assert_eq!(results.len(), 1);
    assert!(matches!(results[0], Err(ReplayError::Io { line: 2, .. })));
    assert!(
        results[0]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("disk on fire")
    );
}
