//! What `contrib/` ships, checked by the tools that consume it: the Prometheus alerts with
//! `promtool` (Debian's `prometheus`, installed by `cargo xtask setup`), and that every metric
//! they name is one the daemon serves; the systemd unit with `systemd-analyze verify`, and
//! (privileged) its command line run as an unprivileged user with only the unit's
//! capabilities, notifying readiness the way `Type=notify` expects.

use std::{
    io::{self, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::unix::{fs::PermissionsExt as _, net::UnixDatagram},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

mod common;

use common::BinaryForOthers;
use keepalive_lab::ChildGuard;

use keepalive_observer::{
    correlate::Window,
    metrics::Metrics,
    sink::{HookLine, HookStatus, LossReport, StartupReport},
};

fn contrib() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib")
}

/// Runs `tool args` in `dir` and fails with its output unless it succeeds.
fn run(tool: &str, args: &[&str], dir: &Path) -> String {
    let output = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|error| {
            panic!("cannot run {tool} ({error}): `cargo xtask setup` installs it")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{tool} {args:?}: {}\n{text}",
        output.status
    );
    text
}

#[test]
fn promtool_checks_the_alerts_and_runs_their_tests() {
    let dir = contrib().join("prometheus");
    let checked = run("promtool", &["check", "rules", "alerts.yml"], &dir);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = run("promtool", &["test", "rules", "alerts.test.yml"], &dir);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn the_alerts_name_only_metrics_the_daemon_serves() {
    let alerts =
        std::fs::read_to_string(contrib().join("prometheus/alerts.yml")).expect("read alerts.yml");
    let mut metrics = Metrics::new(4);
    let window = Window {
        lo_ms: 300_000,
        hi_ms: 360_000,
    };
    let destination = "198.51.100.10:80".parse().expect("an address");
    metrics.window(destination, Some(window));
    metrics.startup(&StartupReport {
        version: "0.1.0".to_owned(),
        kernel: "6.1.0".to_owned(),
        hooks: vec![HookLine {
            signal: "reply after idle".to_owned(),
            hook: "tp_btf/sock_recv_length".to_owned(),
            status: HookStatus::Unavailable {
                why: "no such tracepoint".to_owned(),
            },
        }],
        missing_signals: vec!["reply after idle".to_owned()],
        context: "socket storage".to_owned(),
        learned_state: "nothing learned yet".to_owned(),
        filters: "none: every connection".to_owned(),
    });
    metrics.totals(&LossReport {
        output_dropped: [("stdout", 0)].into(),
        ..LossReport::default()
    });
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &metrics.registry()).expect("encode");
    let named: Vec<&str> = alerts
        .match_indices("keepalive_observer_")
        .map(|(at, _)| {
            let rest = &alerts[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    assert!(named.len() >= 5, "{named:?}");
    for name in named {
        let served = text
            .lines()
            .any(|line| line.starts_with(name) && line[name.len()..].starts_with([' ', '{']));
        assert!(
            served,
            "alerts.yml names {name}, which the daemon does not serve:\n{text}"
        );
    }
}

/// The shipped unit, with its `Key=` lines.
struct Unit {
    text: String,
}

impl Unit {
    fn shipped() -> Unit {
        let text = std::fs::read_to_string(contrib().join("systemd/keepalive-observer.service"))
            .expect("read the unit");
        Unit { text }
    }

    /// Every value of `key` (a key may be repeated).
    fn values(&self, key: &str) -> Vec<&str> {
        self.text
            .lines()
            .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .collect()
    }

    fn value(&self, key: &str) -> &str {
        match self.values(key).as_slice() {
            [one] => one,
            values => panic!("{key}= should be set once: {values:?}"),
        }
    }
}

/// The path the shipped unit starts the daemon from; `cargo xtask install` rewrites it.
const SHIPPED_BINARY: &str = "/usr/local/bin/keepalive-observer";

/// The capabilities the unit grants, as `setpriv` names them (`+bpf,+perfmon,…`).
fn setpriv_caps(unit: &Unit) -> String {
    let caps: Vec<String> = unit
        .value("AmbientCapabilities")
        .split_whitespace()
        .map(|cap| format!("+{}", cap.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    caps.join(",")
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let unit = Unit::shipped();
    assert_eq!(unit.value("Type"), "notify");
    assert_eq!(unit.value("ProtectSystem"), "strict");
    assert_eq!(unit.value("StateDirectory"), "keepalive-observer");
    assert_eq!(unit.value("Restart"), "on-failure");
    assert_eq!(
        unit.value("AmbientCapabilities"),
        unit.value("CapabilityBoundingSet"),
        "the unit grants exactly what it bounds"
    );
    assert_eq!(
        setpriv_caps(&unit),
        "+bpf,+perfmon,+net_admin,+syslog",
        "the measured set"
    );
    // What would hide from the daemon what it reads: /proc/kallsyms (ProtectKernelTunables=,
    // ProcSubset=pid), the host's network namespace (PrivateNetwork=: the metrics endpoint).
    for (key, hiding) in [
        ("ProtectKernelTunables", "yes"),
        ("ProcSubset", "pid"),
        ("PrivateNetwork", "yes"),
    ] {
        assert!(
            !unit.values(key).contains(&hiding),
            "{key}={hiding} hides what the daemon reads"
        );
    }
    let exec_start = unit.value("ExecStart");
    assert!(exec_start.starts_with(SHIPPED_BINARY), "{exec_start}");
    assert!(exec_start.contains("--metrics 127.0.0.1:"), "{exec_start}");

    // systemd-analyze checks that ExecStart= is executable: point it at the binary under test.
    let dir = std::env::temp_dir().join(format!("kao-{}-unit", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a directory for the unit");
    let path = dir.join("keepalive-observer.service");
    std::fs::write(
        &path,
        unit.text
            .replace(SHIPPED_BINARY, env!("CARGO_BIN_EXE_keepalive-observer")),
    )
    .expect("write the unit");
    let verified = run(
        "systemd-analyze",
        &["verify", &path.to_string_lossy()],
        &dir,
    );
    std::fs::remove_dir_all(&dir).expect("remove the unit's directory");
    // Unknown keys and bad values are warnings with exit status 0: any output is a failure.
    assert_eq!(verified, "", "systemd-analyze verify said something");
}

/// Receives one notification within `timeout`; an error says why none came (the daemon
/// exited, or time ran out).
fn notification(
    socket: &UnixDatagram,
    daemon: &mut ChildGuard,
    timeout: Duration,
) -> Result<String, String> {
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|error| error.to_string())?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 256];
    loop {
        match socket.recv(&mut buf) {
            Ok(len) => return Ok(String::from_utf8_lossy(&buf[..len]).into_owned()),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(format!("receiving a notification: {error}")),
        }
        if let Some(status) = daemon.try_wait().map_err(|error| error.to_string())? {
            return Err(format!("the daemon exited ({status}) without notifying"));
        }
        if Instant::now() >= deadline {
            return Err(format!("no notification within {timeout:?}"));
        }
    }
}

/// Files and sockets of one run, removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
#[ignore = "needs root (eBPF programs, switching to an unprivileged user): `cargo xtask test` runs it as root"]
fn the_units_command_starts_with_only_the_units_capabilities_and_notifies_readiness() {
    assert!(
        keepalive_lab::is_root(),
        "this test needs root to switch to an unprivileged user with capabilities"
    );
    let unit = Unit::shipped();
    let scratch = Scratch(std::env::temp_dir().join(format!("kao-{}-service", std::process::id())));
    let state = scratch.0.join("state");
    std::fs::create_dir_all(&state).expect("create the state directory");
    std::os::unix::fs::chown(&state, Some(NOBODY), Some(NOBODY))
        .expect("chown the state directory");
    let notify = UnixDatagram::bind(scratch.0.join("notify.sock")).expect("bind the notify socket");
    // systemd's notification socket takes datagrams from any user.
    std::fs::set_permissions(
        scratch.0.join("notify.sock"),
        std::fs::Permissions::from_mode(0o666),
    )
    .expect("open the notify socket to the user");

    // The unit's command line, from the binary under test, with a free metrics port and a
    // state directory (systemd's StateDirectory=) that the user may write.
    let mut args: Vec<String> = unit
        .value("ExecStart")
        .split_whitespace()
        .skip(1)
        .map(str::to_owned)
        .collect();
    let metrics = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    let at = args
        .iter()
        .position(|arg| arg == "--metrics")
        .expect("--metrics")
        + 1;
    args[at] = metrics.to_string();
    args.extend([
        "--state-dir".to_owned(),
        state.to_string_lossy().into_owned(),
    ]);
    let caps = setpriv_caps(&unit);
    let binary = BinaryForOthers::copy();
    let mut child = ChildGuard::spawn(
        Command::new("setpriv")
            .arg(format!("--reuid={NOBODY}"))
            .arg(format!("--regid={NOBODY}"))
            .arg("--clear-groups")
            .arg(format!("--inh-caps=-all,{caps}"))
            .arg(format!("--ambient-caps=-all,{caps}"))
            .arg(format!("--bounding-set=-all,{caps}"))
            .arg(binary.path())
            .args(&args)
            .env("NOTIFY_SOCKET", scratch.0.join("notify.sock"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(scratch.0.join("stderr")).expect("stderr file")),
    )
    .expect("start the daemon");
    let stderr = || std::fs::read_to_string(scratch.0.join("stderr")).unwrap_or_default();

    let ready = notification(&notify, &mut child, Duration::from_secs(60));
    assert_eq!(ready.as_deref(), Ok("READY=1\n"), "{}", stderr());
    let text = scrape(metrics);
    let missing: Vec<&str> = text
        .lines()
        .filter(|line| {
            line.starts_with("keepalive_observer_signal_missing{") && line.ends_with(" 1")
        })
        .collect();
    assert!(
        missing.is_empty(),
        "signals missing with the unit's capabilities: {missing:?}\n{}",
        stderr()
    );
    assert!(
        text.lines().any(
            |line| line.starts_with("keepalive_observer_hooks_attached ")
                && line != "keepalive_observer_hooks_attached 0"
        ),
        "{text}"
    );

    let pid = libc::pid_t::try_from(child.pid()).expect("a pid");
    // SAFETY: signals only the daemon this test started, by its PID.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let stopping = notification(&notify, &mut child, Duration::from_secs(10));
    assert_eq!(stopping.as_deref(), Ok("STOPPING=1\n"), "{}", stderr());
    let status = child
        .stop(Duration::from_secs(10))
        .expect("the daemon exits");
    assert!(status.success(), "{status}: {}", stderr());
}

/// The user the unprivileged daemon runs as (Debian's `nobody`).
const NOBODY: u32 = 65534;

/// `GET /metrics` over HTTP/1.0: the body of a 200 answer.
fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(stream, "GET /metrics HTTP/1.0\r\n\r\n").expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_owned()
}
