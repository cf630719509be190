//! Fuzzing on stable with proptest, each target for a bounded time: what strangers choose
//! reaches the record decoder, the correlator and the outputs (a process picks its own name,
//! anyone on the network picks the segments), a recording handed to `replay` may be anything,
//! and the state file may be corrupt. None of them may panic, and what they print must stay
//! one line per record.
//!
//! Each target runs for `KAO_FUZZ_SECONDS` (default 5; `cargo xtask test` gives 30) in
//! batches of cases from fresh random seeds. A failure is shrunk to its smallest input and
//! printed; each one found became a test of its own in the module it broke.

use std::{
    collections::HashSet,
    env,
    fmt::Debug,
    fs,
    io::{self, Write},
    mem::offset_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use keepalive_common::Event as RawEvent;
use keepalive_observer::{
    correlate::{Correlator, CorrelatorConfig, Finding},
    event::{DecodeContext, DecodeError},
    record::{RecordHeader, Replay, ReplayItem},
    sink::{JsonSink, Sink, TextSink, WallClock},
    state::StateDir,
};
use keepalive_schema::state::{self, Destination, Netns, PeerTtl, State};
use proptest::{
    collection::vec,
    prelude::*,
    sample::Index,
    test_runner::{Config, TestCaseResult, TestRunner},
};
use serde_json::Value;

/// Bytes in one raw record.
const RECORD_BYTES: usize = size_of::<RawEvent>();
/// Cases per batch: the deadline is checked between batches.
const BATCH: u32 = 64;

/// How long each target runs.
fn budget() -> Duration {
    let seconds = env::var("KAO_FUZZ_SECONDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(5);
    Duration::from_secs(seconds)
}

/// Runs `test` on values of `strategy` until the budget is spent; a failure panics with the
/// smallest failing input proptest found.
fn fuzz<S>(target: &str, strategy: S, test: impl Fn(S::Value) -> TestCaseResult)
where
    S: Strategy,
    S::Value: Debug,
{
    let started = Instant::now();
    let deadline = started + budget();
    let mut cases = 0u64;
    loop {
        // A runner counts its successes for good: a fresh one (and seed) per batch.
        let mut runner = TestRunner::new(Config {
            cases: BATCH,
            failure_persistence: None,
            ..Config::default()
        });
        if let Err(failure) = runner.run(&strategy, &test) {
            panic!("{target}: {failure}");
        }
        cases += u64::from(BATCH);
        if Instant::now() >= deadline {
            break;
        }
    }
    eprintln!(
        "{target}: {cases} cases in {:.1} s, no failure",
        started.elapsed().as_secs_f64()
    );
}

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../keepalive-schema/golden")
        .join(name)
}

/// The golden recording made by the real daemon: its header and its lines.
fn golden_recording() -> (RecordHeader, Vec<String>) {
    let path = golden("loopback.recording.jsonl");
    let text = fs::read_to_string(&path).expect("golden recording");
    let header = Replay::new(text.as_bytes())
        .expect("golden header")
        .header()
        .clone();
    (header, text.lines().map(str::to_owned).collect())
}

/// The raw records of the golden recording, as the kernel wrote them.
fn golden_records(lines: &[String]) -> Vec<Vec<u8>> {
    lines
        .iter()
        .filter_map(|line| {
            let value: Value = serde_json::from_str(line).expect("golden JSON");
            let data = value.get("data")?.as_str()?.to_owned();
            Some(
                (0..data.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&data[i..i + 2], 16).expect("golden hex"))
                    .collect(),
            )
        })
        .collect()
}

/// Overwrites bytes of `bytes`, then perhaps cuts it short.
fn mutate(mut bytes: Vec<u8>, edits: &[(Index, u8)], cut: Option<Index>) -> Vec<u8> {
    if !bytes.is_empty() {
        for (at, value) in edits {
            let at = at.index(bytes.len());
            bytes[at] = *value;
        }
    }
    if let Some(cut) = cut {
        bytes.truncate(cut.index(bytes.len() + 1));
    }
    bytes
}

/// A record as the kernel might send it: a real one with some bytes changed (now and then
/// cut short), or random bytes with a valid kind and address family.
fn record(golden: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let mutated = (
        prop::sample::select(golden),
        vec((any::<Index>(), any::<u8>()), 0..12),
        prop::option::weighted(0.05, any::<Index>()),
    )
        .prop_map(|(base, edits, cut)| mutate(base, &edits, cut));
    let random = (
        vec(any::<u8>(), RECORD_BYTES),
        prop::sample::select(vec![1u8, 2, 3, 4, 7]),
        prop::sample::select(vec![2u8, 10]),
    )
        .prop_map(|(mut bytes, kind, family)| {
            bytes[offset_of!(RawEvent, kind)] = kind;
            bytes[offset_of!(RawEvent, family)] = family;
            bytes
        });
    prop_oneof![3 => mutated, 1 => random]
}

#[derive(Clone, Debug)]
enum Input {
    Record(Vec<u8>),
    Tick(u64),
}

/// A writer the test can read back while a sink owns it.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .expect("not poisoned")
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().expect("not poisoned").clone()).expect("UTF-8 output")
    }
}

fn emit(sinks: &mut [Box<dyn Sink>], findings: &[Finding], lines: &mut usize) -> TestCaseResult {
    for finding in findings {
        for sink in sinks.iter_mut() {
            sink.finding(finding)
                .map_err(|error| TestCaseError::fail(error.to_string()))?;
        }
        *lines += 1;
    }
    Ok(())
}

#[test]
fn records_through_the_decoder_correlator_and_outputs() {
    let (header, lines) = golden_recording();
    let golden = golden_records(&lines);
    let first_ns = golden
        .iter()
        .map(|r| r[..8].to_vec())
        .next()
        .expect("a record");
    let first_ns = u64::from_ne_bytes(first_ns.try_into().expect("8 bytes"));
    let input = prop_oneof![
        8 => record(golden).prop_map(Input::Record),
        1 => (0..60_000_000_000u64).prop_map(move |after| Input::Tick(first_ns + after)),
        1 => any::<u64>().prop_map(Input::Tick),
    ];
    let hz = prop_oneof![Just(header.decode.hz), Just(0u32), any::<u32>()];
    let offset = prop_oneof![Just(header.wall_offset_ns), any::<i64>()];
    // Small tables as well as the daemon's: forgetting the least recently used is exercised.
    let table = prop_oneof![Just(CorrelatorConfig::default().max_recent), 1..8usize];
    let strategy = (vec(input, 1..48), hz, offset, table);
    let findings_seen = AtomicUsize::new(0);
    fuzz(
        "records_through_the_decoder_correlator_and_outputs",
        strategy,
        |(inputs, hz, offset_ns, table)| {
            let decode = DecodeContext {
                hz,
                ..header.decode.clone()
            };
            let clock = WallClock::from_offset_ns(offset_ns);
            let mut correlator = Correlator::new(CorrelatorConfig {
                sysctls: header.keepalive_sysctls,
                idle_expiry_floor_ms: header.idle_expiry_floor_ms,
                max_recent: table,
                max_remotes: table,
                ..CorrelatorConfig::default()
            });
            let (text, json) = (Shared::default(), Shared::default());
            let mut sinks: Vec<Box<dyn Sink>> = vec![
                Box::new(TextSink::new(text.clone(), clock)),
                Box::new(JsonSink::new(json.clone(), clock)),
            ];
            let mut lines = 0;
            for input in inputs {
                let findings = match input {
                    Input::Record(bytes) => match decode.decode(&bytes) {
                        Ok(event) => {
                            prop_assert!(bytes.len() >= RECORD_BYTES);
                            for sink in &mut sinks {
                                sink.event(&event)
                                    .map_err(|error| TestCaseError::fail(error.to_string()))?;
                            }
                            lines += 1;
                            correlator.on_event(&event)
                        }
                        Err(DecodeError::Truncated { got, expected }) => {
                            prop_assert_eq!(got, bytes.len());
                            prop_assert_eq!(expected, RECORD_BYTES);
                            continue;
                        }
                        Err(DecodeError::UnknownKind(_) | DecodeError::UnknownFamily(_)) => {
                            continue;
                        }
                    },
                    Input::Tick(mono_ns) => correlator.on_tick(mono_ns),
                };
                emit(&mut sinks, &findings, &mut lines)?;
            }
            emit(&mut sinks, &correlator.finish(), &mut lines)?;
            for sink in &mut sinks {
                sink.flush()
                    .map_err(|error| TestCaseError::fail(error.to_string()))?;
            }
            // A command name or any other field chosen outside can never start a line.
            let text = text.text();
            prop_assert_eq!(text.lines().count(), lines, "text lines:\n{}", text);
            let json = json.text();
            prop_assert_eq!(json.lines().count(), lines, "JSON lines:\n{}", json);
            for line in json.lines() {
                let value: Value = serde_json::from_str(line)
                    .map_err(|error| TestCaseError::fail(format!("{error}: {line}")))?;
                prop_assert!(
                    matches!(value["type"].as_str(), Some("event" | "finding")),
                    "{}",
                    line
                );
                if value["type"] == "finding" {
                    findings_seen.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        },
    );
    // Inputs that never reach a rule would fuzz nothing but the decoder.
    assert!(findings_seen.into_inner() > 0, "no input made a finding");
}

/// One line of a recording: a real one, a real one with some bytes changed or cut short,
/// or random bytes.
fn recording_line(lines: Vec<String>) -> impl Strategy<Value = Vec<u8>> {
    let real = prop::sample::select(lines).prop_map(String::into_bytes);
    let tick = any::<u64>().prop_map(|mono_ns| format!(r#"{{"type":"tick","mono_ns":{mono_ns}}}"#));
    prop_oneof![
        4 => real.clone(),
        2 => (
            real,
            vec((any::<Index>(), any::<u8>()), 1..6),
            prop::option::weighted(0.2, any::<Index>()),
        )
            .prop_map(|(base, edits, cut)| mutate(base, &edits, cut)),
        1 => tick.prop_map(String::into_bytes),
        1 => vec(any::<u8>(), 0..300),
    ]
}

#[test]
fn recordings_through_the_replay_parser() {
    let (_, lines) = golden_recording();
    let header = lines[0].clone().into_bytes();
    let first = prop_oneof![4 => Just(header), 1 => recording_line(lines.clone())];
    let ending = prop::sample::select(vec![&b"\n"[..], b"\r\n", b"\n\n"]);
    let strategy = (first, vec(recording_line(lines), 0..24), ending);
    fuzz(
        "recordings_through_the_replay_parser",
        strategy,
        |(first, rest, ending)| {
            let mut input = first;
            for line in &rest {
                input.extend_from_slice(ending);
                input.extend_from_slice(line);
            }
            // Lines as the parser counts them: every blank line included.
            let most = input.split(|&b| b == b'\n').count();
            let replay = match Replay::new(&input[..]) {
                Ok(replay) => replay,
                Err(error) => {
                    prop_assert!(error.to_string().starts_with("line "), "{}", error);
                    return Ok(());
                }
            };
            let mut seen = HashSet::new();
            for item in replay {
                match item {
                    Ok(ReplayItem::Event(_) | ReplayItem::Tick(_)) => {}
                    Err(error) => {
                        let message = error.to_string();
                        let line: usize = message
                            .strip_prefix("line ")
                            .and_then(|rest| rest.split(':').next())
                            .and_then(|n| n.parse().ok())
                            .ok_or_else(|| TestCaseError::fail(format!("no line: {message}")))?;
                        prop_assert!((2..=most).contains(&line), "{} of {}", message, most);
                        prop_assert!(seen.insert(line), "line {} reported twice", line);
                    }
                }
            }
            Ok(())
        },
    );
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    let ip = prop_oneof![
        any::<u32>().prop_map(|ip| IpAddr::V4(Ipv4Addr::from(ip))),
        any::<u128>().prop_map(|ip| IpAddr::V6(Ipv6Addr::from(ip))),
    ];
    (ip, any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn netns() -> impl Strategy<Value = Netns> {
    prop_oneof![Just(Netns::Host), any::<u64>().prop_map(Netns::Cookie)]
}

/// Any state a file could hold: every number at any value, bounds in any order.
fn any_state(boot_id: String) -> impl Strategy<Value = State> {
    let destination = (
        netns(),
        socket_addr(),
        any::<Option<u64>>(),
        any::<Option<u64>>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(netns, remote, survived_ms, died_ms, survivals, deaths, last_seen_unix_ms)| {
                Destination {
                    netns,
                    remote,
                    survived_ms,
                    died_ms,
                    survivals,
                    deaths,
                    last_seen_unix_ms,
                }
            },
        );
    let peer = (netns(), socket_addr(), any::<u8>()).prop_map(|(netns, addr, ttl)| PeerTtl {
        netns,
        host: addr.ip(),
        ttl,
    });
    let boot_id = prop_oneof![Just(boot_id), ".*"];
    (
        boot_id,
        any::<u64>(),
        vec(destination, 0..16),
        vec(peer, 0..8),
    )
        .prop_map(|(boot_id, saved_at, destinations, peer_ttls)| {
            let mut state = State::new(boot_id, saved_at);
            state.destinations = destinations;
            state.peer_ttls = peer_ttls;
            state
        })
}

#[test]
fn state_files_through_the_parser() {
    let path = Path::new("/var/lib/keepalive-observer/state.json");
    let valid = (
        any_state(String::new()),
        vec((any::<Index>(), any::<u8>()), 0..6),
        prop::option::weighted(0.2, any::<Index>()),
    )
        .prop_map(|(state, edits, cut)| {
            mutate(serde_json::to_vec(&state).expect("serializes"), &edits, cut)
        });
    let strategy = prop_oneof![4 => valid, 1 => vec(any::<u8>(), 0..200)];
    fuzz("state_files_through_the_parser", strategy, |bytes| {
        match state::parse(path, &bytes) {
            Ok(parsed) => {
                let again = serde_json::to_vec(&parsed).expect("serializes");
                prop_assert_eq!(state::parse(path, &again).ok(), Some(parsed));
            }
            Err(error) => {
                prop_assert!(error.to_string().contains(path.to_str().expect("UTF-8")));
            }
        }
        Ok(())
    });
}

#[test]
fn state_files_restored_into_the_correlator() {
    let dir = env::temp_dir().join(format!("kao-fuzz-state-{}", std::process::id()));
    let state_dir = StateDir::open(&dir).expect("state directory");
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().to_owned())
        .unwrap_or_default();
    let (header, lines) = golden_recording();
    let golden = golden_records(&lines);
    let strategy = (any_state(boot_id), any::<i64>(), vec(record(golden), 0..8));
    fuzz(
        "state_files_restored_into_the_correlator",
        strategy,
        |(saved, offset_ns, records)| {
            fs::write(
                state_dir.file(),
                serde_json::to_vec(&saved).expect("serializes"),
            )
            .expect("write the state file");
            let clock = WallClock::from_offset_ns(offset_ns);
            let mut correlator = Correlator::new(CorrelatorConfig::default());
            let restored = state_dir
                .restore(&mut correlator, clock)
                .map_err(|error| TestCaseError::fail(error.to_string()))?;
            prop_assert!(restored.kept_aside.is_none(), "{:?}", restored.kept_aside);
            for bytes in &records {
                if let Ok(event) = header.decode.decode(bytes) {
                    correlator.on_event(&event);
                }
            }
            correlator.finish();
            let snapshot = state_dir.snapshot(&correlator, clock);
            let text = serde_json::to_vec(&snapshot).expect("serializes");
            prop_assert_eq!(state::parse(state_dir.file(), &text).ok(), Some(snapshot));
            Ok(())
        },
    );
    drop(state_dir);
    fs::remove_dir_all(&dir).expect("remove the state directory");
}
