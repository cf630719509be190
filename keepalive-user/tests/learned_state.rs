//! Privileged: what the daemon learned survives its restart. In the lab (client ⇄ middlebox
//! that forgets flows idle for 3 s ⇄ server), one daemon learns the path's idle timeout from a
//! connection that survives 1.5 s idle and one that dies after 4.5 s; a second daemon, started
//! on the same state directory, puts that window in its very first finding, although it never
//! saw the survival. And a corrupt state file is kept aside, never overwritten.

mod common;

use std::{
    io::{self, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    thread,
    time::Duration,
};

use common::{Daemon, lab_topology, require_root};
use keepalive_lab::{EchoServer, MiddleboxMode, in_netns, read_retrying};
use keepalive_schema::state::{self, FILE_NAME};
use serde_json::Value;

const PORT: u16 = 7001;
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const WAIT: Duration = Duration::from_secs(15);
const CT_TIMEOUT_SECS: u32 = 3;
const SURVIVED_GAP: Duration = Duration::from_millis(1500);
const FATAL_GAP: Duration = Duration::from_millis(4500);
/// How far an idle time measured in jiffies may stray from the sleep that made it.
const IDLE_TOLERANCE_MS: u64 = 300;
/// With a 3 s middlebox the default 30 s floor would call no gap an expiry.
const DAEMON_ARGS: &[&str] = &["--idle-expiry-floor", "2"];

/// A state directory for this test alone, removed at the end.
struct StateDir(PathBuf);

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn a_restarted_daemon_puts_the_learned_window_in_its_first_finding() {
    require_root("a_restarted_daemon_puts_the_learned_window_in_its_first_finding");
    let state_dir = StateDir(std::env::temp_dir().join(format!(
        "keepalive-observer-learned-state-{}",
        std::process::id()
    )));
    let topology = lab_topology(MiddleboxMode::Reject, CT_TIMEOUT_SECS);
    let server = SocketAddr::from((topology.server().ipv4(), PORT));
    let _echo = in_netns(topology.server().netns(), || EchoServer::bind(server))
        .expect("enter the server namespace")
        .expect("bind the echo server");
    let connect = || {
        let stream = in_netns(topology.client().netns(), || {
            TcpStream::connect_timeout(&server, IO_TIMEOUT)
        })
        .expect("enter the client namespace")
        .expect("connect through the middlebox");
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        stream
    };

    let mut first = Daemon::start_with_state(DAEMON_ARGS, &state_dir.0);
    let mut client = connect();
    round_trip(&mut client).expect("the first request");
    thread::sleep(SURVIVED_GAP);
    round_trip(&mut client).expect("a connection idle for less than the timeout survives");
    let learned = reset_after_idle(&mut first, &mut client, "the first daemon's finding");
    let [lo, hi] = window(&learned).expect("the survival and the death make a window");
    assert_near(lo, SURVIVED_GAP, &learned);
    assert_near(hi, FATAL_GAP, &learned);
    let (status, _) = first.stop();
    assert!(status.success(), "{status}");

    let saved = state::load(&state_dir.0.join(FILE_NAME))
        .expect("a readable state file")
        .expect("written at exit");
    let destination = saved
        .destinations
        .iter()
        .find(|d| d.remote == server)
        .unwrap_or_else(|| panic!("{server} in {saved:#?}"));
    assert_eq!(destination.window_ms(), Some((lo, hi)), "{destination:?}");
    assert_eq!((destination.survivals, destination.deaths), (1, 1));

    let mut second = Daemon::start_with_state(DAEMON_ARGS, &state_dir.0);
    let restored = second.ready()["learned_state"].as_str().unwrap_or_default();
    assert!(
        restored.contains("destination(s)") && !restored.contains(" 0 destination(s)"),
        "{restored}"
    );
    let mut client = connect();
    round_trip(&mut client).expect("the first request");
    let finding = reset_after_idle(&mut second, &mut client, "the second daemon's finding");
    // The new death's gap is above the learned survival, so the window keeps its lower
    // bound, which only the first daemon saw.
    let [lo_after, hi_after] = window(&finding).expect("the window from the state file");
    assert_eq!(lo_after, lo, "{finding:#}");
    assert!(hi_after <= hi, "{finding:#}");
    let (status, _) = second.stop();
    assert!(status.success(), "{status}");
}

/// Lets `client` sit idle past the middlebox's timeout, checks that the next request is
/// reset, and returns the daemon's finding about it.
fn reset_after_idle(daemon: &mut Daemon, client: &mut TcpStream, what: &str) -> Value {
    thread::sleep(FATAL_GAP);
    let error = round_trip(client).expect_err("the middlebox forgot the flow");
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
    let local = client.local_addr().expect("local address").to_string();
    let finding = daemon.wait_for(what, WAIT, |v| {
        v["type"] == "finding" && v["local"] == local.as_str()
    });
    assert_eq!(finding["verdict"], "middlebox_drop", "{finding:#}");
    finding
}

fn round_trip(stream: &mut TcpStream) -> io::Result<()> {
    stream.write_all(b"ping")?;
    let mut echoed = [0u8; 4];
    match read_retrying(stream, &mut echoed)? {
        4 => Ok(()),
        n => Err(io::Error::other(format!("{n} bytes echoed of 4"))),
    }
}

fn window(finding: &Value) -> Option<[u64; 2]> {
    let bounds = finding["timeout_window_ms"].as_array()?;
    Some([bounds.first()?.as_u64()?, bounds.get(1)?.as_u64()?])
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).expect("milliseconds fit")
}

fn assert_near(ms: u64, slept: Duration, finding: &Value) {
    let slept = millis(slept);
    assert!(
        ms + IDLE_TOLERANCE_MS >= slept && ms <= slept + IDLE_TOLERANCE_MS,
        "{ms} ms, slept {slept} ms: {finding:#}"
    );
}

#[test]
#[ignore = "needs root (eBPF programs): `cargo xtask test` runs it as root"]
fn a_corrupt_state_file_is_kept_aside_and_the_daemon_starts_with_nothing_learned() {
    require_root("a_corrupt_state_file_is_kept_aside_and_the_daemon_starts_with_nothing_learned");
    let state_dir = StateDir(std::env::temp_dir().join(format!(
        "keepalive-observer-corrupt-state-{}",
        std::process::id()
    )));
    std::fs::create_dir_all(&state_dir.0).expect("the state directory");
    let garbage = br#"{"format":"keepalive-observer state","version":1,"destinations":[{"#;
    std::fs::write(state_dir.0.join(FILE_NAME), garbage).expect("a corrupt state file");

    let daemon = Daemon::start_with_state(DAEMON_ARGS, &state_dir.0);
    let said = daemon.ready()["learned_state"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (status, _) = daemon.stop();
    assert!(status.success(), "{status}");
    assert!(said.contains(" 0 destination(s)"), "{said}");
    let aside: Vec<PathBuf> = std::fs::read_dir(&state_dir.0)
        .expect("list the state directory")
        .map(|entry| entry.expect("an entry").path())
        .filter(|path| path.to_string_lossy().contains("state.json.unusable-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(said.contains(&aside[0].display().to_string()), "{said}");
    assert_eq!(std::fs::read(&aside[0]).expect("the kept file"), garbage);
    // The daemon wrote a good file of its own at exit, beside the kept one.
    let fresh = state::load(&state_dir.0.join(FILE_NAME)).expect("a good file");
    assert!(fresh.is_some());
}
