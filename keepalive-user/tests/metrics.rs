//! Privileged: the real daemon's `/metrics` during a real reset in the lab (client ⇄
//! middlebox ⇄ server), read over HTTP by the test and by a real Prometheus server.
//!
//! The middlebox forgets flows idle for 3 s and rejects them: one connection sends after
//! 1.5 s idle and survives, another after 4.5 s and is reset, so the daemon learns the window
//! (1.5 s, 4.5 s] of the server's address and reports a forged reset. Other daemons and tests
//! may run on the host at the same time: each test uses a server port of its own, so the
//! learned window it checks is its own; a counter is checked to have risen. While the reset
//! happens, idle clients hold every slot of the endpoint: the finding must come all the same.

mod common;

use std::{
    io::{self, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{Daemon, lab_topology, require_root};
use keepalive_lab::{ChildGuard, EchoServer, MiddleboxMode, Topology, in_netns, read_retrying};
use serde_json::Value;

/// Bound on every blocking socket call.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on a finding's arrival, and on Prometheus showing what it scraped.
const WAIT: Duration = Duration::from_secs(20);
const CT_TIMEOUT_SECS: u32 = 3;
const SURVIVED: Duration = Duration::from_millis(1500);
const DIED: Duration = Duration::from_millis(4500);
/// How far below the sleep that made it an idle gap measured in jiffies may be, and how far
/// above (scheduling on a loaded machine), seconds.
const BELOW_S: f64 = 0.3;
const ABOVE_S: f64 = 1.0;
const RESETS: &str = "keepalive_observer_resets_total{verdict=\"middlebox_drop\",kind=\"forged_rst\",direction=\"received\"}";

/// The lab, with a daemon serving metrics started after it (see findings_lab.rs for why in
/// this order).
struct Lab {
    topology: Topology,
    client_netns: u32,
    port: u16,
    metrics: SocketAddr,
    daemon: Daemon,
    state: StateDir,
}

/// The daemons' state directory, removed on drop.
struct StateDir(PathBuf);

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Lab {
    fn start(port: u16) -> Lab {
        let topology = lab_topology(MiddleboxMode::Reject, CT_TIMEOUT_SECS);
        let client_netns = topology.client().netns().inode().expect("client inode");
        let state = StateDir(
            std::env::temp_dir().join(format!("kao-{}-metrics-{port}-state", std::process::id())),
        );
        let (metrics, daemon) = start_daemon(&state);
        Lab {
            topology,
            client_netns,
            port,
            metrics,
            daemon,
            state,
        }
    }

    /// Stops the daemon, then starts another with the same state directory (which takes one
    /// daemon at a time).
    fn restart(self) -> Lab {
        let Lab {
            topology,
            client_netns,
            port,
            daemon,
            state,
            ..
        } = self;
        let (status, _) = daemon.stop();
        assert!(status.success(), "{status}");
        let (metrics, daemon) = start_daemon(&state);
        Lab {
            topology,
            client_netns,
            port,
            metrics,
            daemon,
            state,
        }
    }

    fn server(&self) -> SocketAddr {
        SocketAddr::from((self.topology.server().ipv4(), self.port))
    }

    /// One connection survives [`SURVIVED`] idle, another dies after [`DIED`]; returns the
    /// dead one's finding.
    fn survive_and_reset(&mut self) -> Value {
        let server = self.server();
        let _echo = in_netns(self.topology.server().netns(), || EchoServer::bind(server))
            .expect("enter the server namespace")
            .expect("bind the echo server");
        let mut streams = [self.connect(), self.connect()];
        let dying = streams[1].local_addr().expect("local address");
        let outcomes: Vec<io::Result<()>> = thread::scope(|scope| {
            let steps: Vec<_> = streams
                .iter_mut()
                .zip([SURVIVED, DIED])
                .map(|(stream, gap)| scope.spawn(move || send_after_idle(stream, gap)))
                .collect();
            steps
                .into_iter()
                .map(|step| step.join().expect("step"))
                .collect()
        });
        assert!(outcomes[0].is_ok(), "{SURVIVED:?} idle: {:?}", outcomes[0]);
        let error = outcomes[1]
            .as_ref()
            .expect_err("the middlebox forgot the flow");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
        let netns = self.client_netns;
        self.daemon
            .wait_for("the forged reset's finding", WAIT, |v| {
                v["type"] == "finding" && v["netns"] == netns && v["local"] == dying.to_string()
            })
    }

    fn connect(&self) -> TcpStream {
        let to = self.server();
        let mut stream = in_netns(self.topology.client().netns(), || {
            TcpStream::connect_timeout(&to, IO_TIMEOUT)
        })
        .expect("enter the client namespace")
        .unwrap_or_else(|error| panic!("connect to {to}: {error}"));
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        stream.write_all(b"before idle").expect("send");
        read_full(&mut stream, 11).expect("echo");
        stream
    }

    /// The window's series for this lab's server.
    fn window_series(&self, bound: &str) -> String {
        format!(
            "keepalive_observer_learned_idle_timeout_seconds{{destination=\"{}\",bound=\"{bound}\"}}",
            self.server()
        )
    }
}

/// A daemon serving metrics on a free loopback port, with its state in `state`.
fn start_daemon(state: &StateDir) -> (SocketAddr, Daemon) {
    let metrics = free_loopback_port();
    let args = [
        "--idle-expiry-floor",
        "2",
        "--metrics",
        &metrics.to_string(),
    ];
    (metrics, Daemon::start_with_state(&args, &state.0))
}

fn send_after_idle(stream: &mut TcpStream, gap: Duration) -> io::Result<()> {
    thread::sleep(gap);
    stream.write_all(b"after idle")?;
    read_full(stream, 10)
}

fn read_full(stream: &mut TcpStream, len: usize) -> io::Result<()> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match read_retrying(stream, &mut buf[got..])? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    Ok(())
}

fn free_loopback_port() -> SocketAddr {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
}

/// `GET path` over HTTP/1.0 (no chunked encoding, the server closes): status and body.
fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other(format!("no end of headers: {response:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no status: {head:?}")))?;
    Ok((status, body.to_owned()))
}

/// Connections held open without a request while a reset happens: more than the endpoint
/// serves at once (8).
const HOGS: usize = 12;

/// [`scrape`], retried while the endpoint still closes new connections at once (its slots
/// are freed as it notices the hogs' closes).
fn scrape_when_served(addr: SocketAddr) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        match http_get(addr, "/metrics") {
            Ok((200, body)) => return body,
            outcome if Instant::now() >= deadline => panic!("GET /metrics: {outcome:?}"),
            _ => thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the sample whose line starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.parse().expect("a number"))
}

/// The learned window: each bound near the idle gap that set it, and the middlebox's timeout
/// between them.
fn assert_window(lower: Option<f64>, upper: Option<f64>) {
    let (Some(lower), Some(upper)) = (lower, upper) else {
        panic!("no window: lower {lower:?}, upper {upper:?}");
    };
    let near = |value: f64, gap: Duration| {
        let gap = gap.as_secs_f64();
        gap - BELOW_S <= value && value <= gap + ABOVE_S
    };
    let timeout = f64::from(CT_TIMEOUT_SECS);
    assert!(
        near(lower, SURVIVED) && near(upper, DIED) && lower < timeout && timeout <= upper,
        "window ({lower} s, {upper} s]: expected about ({SURVIVED:?}, {DIED:?}] around the \
         {timeout} s timeout"
    );
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn metrics_show_a_real_reset_and_the_learned_window() {
    require_root("metrics_show_a_real_reset_and_the_learned_window");
    let mut lab = Lab::start(7100);
    let before = scrape(lab.metrics);
    assert_eq!(
        sample(&before, "keepalive_observer_ring_buffer_size_bytes"),
        Some(f64::from(1u32 << 23)),
        "{before}"
    );
    assert!(
        sample(&before, "keepalive_observer_hooks_attached").is_some_and(|n| n >= 1.0),
        "{before}"
    );
    assert!(
        before.contains("keepalive_observer_build_info{version="),
        "{before}"
    );

    // Clients that connect and never send a request take every slot of the endpoint: the
    // reader must go on reading the ring buffer all the same.
    let hogs: Vec<TcpStream> = (0..HOGS)
        .map(|_| TcpStream::connect_timeout(&lab.metrics, IO_TIMEOUT).expect("connect"))
        .collect();
    let finding = lab.survive_and_reset();
    assert_eq!(finding["kind"], "forged_rst", "{finding:#}");
    drop(hogs);
    let after = scrape_when_served(lab.metrics);
    let resets = |text: &str| sample(text, RESETS).unwrap_or(0.0);
    assert!(resets(&after) > resets(&before), "{after}");
    let reset_received = "keepalive_observer_events_total{kind=\"reset_received\"}";
    assert!(
        sample(&after, reset_received) > sample(&before, reset_received),
        "{after}"
    );
    // 4.5 s idle: within the first bucket (60 s).
    let first_bucket =
        "keepalive_observer_reset_idle_seconds_bucket{le=\"60.0\",verdict=\"middlebox_drop\"}";
    assert!(
        sample(&after, first_bucket).is_some_and(|n| n >= 1.0),
        "{after}"
    );
    assert_window(
        sample(&after, &lab.window_series("lower")),
        sample(&after, &lab.window_series("upper")),
    );
    for identity in [finding["local"].as_str(), finding["comm"].as_str()]
        .into_iter()
        .flatten()
    {
        assert!(!after.contains(identity), "{identity} in a label:\n{after}");
    }
    let (status, _) = http_get(lab.metrics, "/").expect("GET /");
    assert_eq!(status, 404);

    // A restarted daemon shows the window it restored from the state file at once.
    let upper = sample(&after, &lab.window_series("upper"));
    let lab = lab.restart();
    let restarted = scrape(lab.metrics);
    assert_eq!(
        sample(&restarted, &lab.window_series("upper")),
        upper,
        "{restarted}"
    );
}

/// A Prometheus server (Debian's `prometheus`) on loopback with its own configuration and
/// data directory, killed by PID and removed on drop.
struct Prometheus {
    child: Option<ChildGuard>,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts it scraping `target` every second and waits until it is ready and has scraped
    /// the target once.
    fn start(target: SocketAddr) -> Prometheus {
        let binary = Path::new("/usr/bin/prometheus");
        assert!(
            binary.exists(),
            "{} missing: `cargo xtask setup` installs Debian's prometheus",
            binary.display()
        );
        let dir = std::env::temp_dir().join(format!("kao-{}-prometheus", std::process::id()));
        std::fs::create_dir_all(dir.join("data")).expect("create the data directory");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: keepalive-observer\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .expect("write the configuration");
        let addr = free_loopback_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("create the log");
        let child = ChildGuard::spawn(
            Command::new(binary)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        )
        .expect("start prometheus");
        let prometheus = Prometheus {
            child: Some(child),
            addr,
            dir,
        };
        prometheus.wait("ready", || {
            http_get(prometheus.addr, "/-/ready").is_ok_and(|(status, _)| status == 200)
        });
        prometheus.wait("the first scrape of the daemon", || {
            prometheus.query("up{job=\"keepalive-observer\"}") == Some(1.0)
        });
        prometheus
    }

    /// The value of an instant query whose result is one sample, if it is.
    fn query(&self, promql: &str) -> Option<f64> {
        let (status, body) = http_get(
            self.addr,
            &format!("/api/v1/query?query={}", encode(promql)),
        )
        .ok()?;
        if status != 200 {
            return None;
        }
        let answer: Value = serde_json::from_str(&body).ok()?;
        match answer["data"]["result"].as_array()?.as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }

    /// Polls `done` until it holds, or panics with the server's log after [`WAIT`].
    fn wait(&self, what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done() {
            if Instant::now() >= deadline {
                let log =
                    std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(12).collect();
                panic!(
                    "prometheus (pid {}): no {what} within {WAIT:?}; its log ends:\n{}",
                    self.child.as_ref().map_or(0, ChildGuard::pid),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            // SIGTERM, then SIGKILL to its process group after the grace.
            let _ = child.stop(Duration::from_secs(5));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces) and Debian's prometheus: `cargo xtask test` runs it as root"]
fn prometheus_scrapes_the_reset_counter_and_the_learned_window() {
    require_root("prometheus_scrapes_the_reset_counter_and_the_learned_window");
    let mut lab = Lab::start(7101);
    let prometheus = Prometheus::start(lab.metrics);
    let resets = || prometheus.query(RESETS).unwrap_or(0.0);
    let before = resets();
    lab.survive_and_reset();
    prometheus.wait("rise of the reset counter", || resets() > before);
    let upper = lab.window_series("upper");
    prometheus.wait("learned window", || prometheus.query(&upper).is_some());
    assert_window(
        prometheus.query(&lab.window_series("lower")),
        prometheus.query(&upper),
    );
}
