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
