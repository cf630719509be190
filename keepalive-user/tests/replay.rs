//! `replay` reproduces the live findings byte for byte: from a fresh recording made by the
//! real daemon (privileged), and from golden recordings committed with their findings.

mod common;

use std::{
    io::Read as _,
    net::{TcpListener, TcpStream},
    path::Path,
    process::Command,
    time::Duration,
};

use common::{Daemon, require_root};
use keepalive_lab::set_linger_abort;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

fn replay(file: &Path) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_keepalive-observer"))
        .args(["replay", "--format", "json"])
        .arg(file)
        .output()
        .expect("run replay");
    (
        output.status.success(),
        String::from_utf8(output.stdout).expect("UTF-8 output"),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn finding_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|line| line.contains(r#""type":"finding""#))
        .map(str::to_owned)
        .collect()
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn replay_of_a_live_recording_gives_the_same_findings() {
    require_root("replay_of_a_live_recording_gives_the_same_findings");
    let dir = std::env::temp_dir().join(format!("kao-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let recording = dir.join("live.jsonl");
    let mut daemon = Daemon::start(&["--findings-only", "--record", recording.to_str().unwrap()]);

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    let client_addr = client.local_addr().unwrap().to_string();
    set_linger_abort(&client).unwrap();
    drop(client);
    let _ = server.read(&mut [0u8; 1]);
    daemon.wait_for("the linger-0 finding", WAIT, |v| {
        v["type"] == "finding" && v["kind"] == "linger_zero" && v["local"] == client_addr
    });
    daemon.wait_for("the peer-reset finding", WAIT, |v| {
        v["type"] == "finding" && v["verdict"] == "peer_reset" && v["remote"] == client_addr
    });
    let mut printed = daemon.all(|v| v["type"] == "finding");
    let (status, rest) = daemon.stop();
    assert!(status.success());
    printed.extend(rest.into_iter().filter(|v| v["type"] == "finding"));

    let text = std::fs::read_to_string(&recording).unwrap();
    assert!(
        text.starts_with(r#"{"type":"header""#),
        "recording starts with its header"
    );
    let (ok, out, err) = replay(&recording);
    assert!(ok, "replay failed: {err}");
    let live = finding_lines(&out);
    let replayed: Vec<Value> = live
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        replayed, printed,
        "replay gives the findings the daemon printed"
    );
    let (ok, again, err) = replay(&recording);
    assert!(ok, "{err}");
    assert_eq!(
        finding_lines(&again),
        live,
        "replay is deterministic, byte for byte"
    );
    let linger: Value = live
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["kind"] == "linger_zero" && v["local"] == client_addr)
        .expect("the linger-0 finding is replayed");
    assert_eq!(linger["pid"], std::process::id());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn golden_recordings_replay_to_their_golden_findings() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../keepalive-schema/golden");
    let mut checked = 0;
    for entry in std::fs::read_dir(&golden).expect("keepalive-schema/golden exists") {
        let path = entry.unwrap().path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".recording.jsonl") else {
            continue;
        };
        let expected = std::fs::read_to_string(golden.join(format!("{stem}.findings.jsonl")))
            .unwrap_or_else(|e| panic!("{stem}.findings.jsonl: {e}"));
        let (ok, out, err) = replay(&path);
        assert!(ok, "{name}: {err}");
        assert_eq!(
            finding_lines(&out),
            finding_lines(&expected),
            "{name} no longer replays to {stem}.findings.jsonl"
        );
        assert!(!finding_lines(&expected).is_empty(), "{stem} has findings");
        checked += 1;
    }
    assert!(checked > 0, "no golden recordings in {}", golden.display());
}

/// The streams `cargo xtask vm-test --golden` recorded from the real daemon on Debian's 6.1
/// and 6.12 kernels, once per hook choice: what each kernel really emits for the loopback
/// scenarios of the vm-test, judged by today's rules.
#[test]
fn kernel_streams_replay_to_the_verdicts_of_their_scenarios() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../keepalive-schema/golden");
    let mut streams = Vec::new();
    for entry in std::fs::read_dir(&golden).expect("keepalive-schema/golden exists") {
        let path = entry.unwrap().path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with("vm-") && name.ends_with(".recording.jsonl") {
            streams.push((name.to_owned(), path));
        }
    }
    streams.sort();
    for series in ["vm-6.1-", "vm-6.12-"] {
        for choice in ["auto", "tracepoint", "fentry", "kprobe"] {
            let name = format!("{series}{choice}.recording.jsonl");
            assert!(
                streams.iter().any(|(n, _)| *n == name),
                "no golden stream {name}: run `cargo xtask vm-test --golden`"
            );
        }
    }
    for (name, path) in &streams {
        let (ok, out, err) = replay(path);
        assert!(ok, "{name}: {err}");
        let findings: Vec<Value> = finding_lines(&out)
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let kinds: Vec<&str> = findings.iter().filter_map(|f| f["kind"].as_str()).collect();
        for expected in [
            "refused",
            "no_socket",
            "linger_zero",
            "abort_on_close",
            "silent_timeout",
            "keepalive_race",
        ] {
            // 6.1's tracepoints show no RST in reply (no_socket).
            if expected == "no_socket" && name.starts_with("vm-6.1-tracepoint") {
                continue;
            }
            assert!(
                kinds.contains(&expected),
                "{name}: no {expected} in {kinds:?}"
            );
        }
        // Each RST sent once: the RST answering the stray ACK is not answered again (fentry
        // and kprobe hooks see the kernel decline to).
        assert!(
            kinds.iter().filter(|&&k| k == "no_socket").count() <= 1,
            "{name}: {kinds:?}"
        );
        // The server side of the keep-alive race is its abort on data, also where the kernel
        // gives no reason: never a bad state nor a late peer abort. With 6.1's tracepoints
        // the server's end may send nothing (no RST in reply, and no tcp_reset in FIN_WAIT1).
        assert!(!kinds.contains(&"bad_state"), "{name}: {kinds:?}");
        let race = findings
            .iter()
            .find(|f| f["kind"] == "keepalive_race")
            .expect("the race");
        assert_eq!(race["confidence"], "confirmed", "{name}: {race:#}");
        match findings.iter().find(|f| f["local"] == race["remote"]) {
            Some(server) => assert_eq!(server["kind"], "abort_on_data", "{name}: {server:#}"),
            None => assert!(
                name.starts_with("vm-6.1-tracepoint"),
                "{name}: no server end"
            ),
        }
        let linger = findings
            .iter()
            .find(|f| f["kind"] == "linger_zero")
            .expect("the linger-0 close");
        assert_eq!(linger["confidence"], "confirmed", "{name}: {linger:#}");
    }
}

#[test]
fn replay_of_a_broken_file_fails_with_the_line_number() {
    let dir = std::env::temp_dir().join(format!("kao-broken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../keepalive-schema/golden");
    let source = std::fs::read_dir(&golden)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".recording.jsonl"))
        .expect("a golden recording");
    let mut lines: Vec<String> = std::fs::read_to_string(source)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.insert(2, r#"{"type":"raw","data":"zz"}"#.to_owned());
    let broken = dir.join("broken.jsonl");
    std::fs::write(&broken, lines.join("\n")).unwrap();
    let (ok, _, err) = replay(&broken);
    assert!(!ok, "a bad line must fail the replay");
    assert!(err.contains("line 3"), "the error names the line: {err}");
    let (ok, _, err) = replay(&dir.join("missing.jsonl"));
    assert!(!ok);
    assert!(err.contains("missing.jsonl"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
