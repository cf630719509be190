//! Floods from a network namespace the test creates: a SYN flood to an open port (answered
//! with SYN cookies), a SYN flood to a closed port, and RSTs spoofed at random sequence numbers
//! against a live connection. None of their packets may give a record; a middlebox's reset
//! during a flood is still explained; and a spoofed RST at the exact sequence number, which
//! does kill the connection, is reported with the TTL evidence that it did not come from the
//! peer. Each flood is bounded in time; what it reached is printed (the figures are in
//! docs/reliability.md).

mod common;

use std::{
    collections::BTreeSet,
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, SocketAddrV4, TcpStream},
    os::fd::AsRawFd,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{Daemon, lab_topology, require_root};
use keepalive_lab::{
    EchoServer, MiddleboxMode, Topology,
    flood::{FloodReport, spoofed_rst, spoofed_rsts, syn_flood},
    in_netns,
};
use serde_json::Value;

const PORT: u16 = 7000;
const CLOSED_PORT: u16 = 7001;
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const WAIT: Duration = Duration::from_secs(15);
/// The middlebox forgets flows idle this long; the client's idle gap outlasts it.
const CT_TIMEOUT_SECS: u32 = 3;
const IDLE_GAP: Duration = Duration::from_millis(4500);
/// nftables rules for the middlebox: its own TCP segments (the spoofed RSTs) untracked.
const UNTRACKED: &[u8] = b"table ip kao_flood {
  chain out {
    type filter hook output priority raw; policy accept;
    meta l4proto tcp notrack
  }
}
";
/// How long each flood lasts at most.
const FLOOD_TIME: Duration = Duration::from_secs(6);
/// SYNs per flood at most, from source ports 1024 upward: below the ephemeral ports, so that
/// no flood segment carries the tuple of a real connection (which would refresh the
/// middlebox's flow and change what the test observes).
const SYN_FLOOD_PACKETS: u64 = 31_000;

fn with_timeouts(stream: &TcpStream) {
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .expect("write timeout");
}

fn round_trip(stream: &mut TcpStream, payload: &[u8]) {
    stream.write_all(payload).expect("send");
    let mut echoed = vec![0u8; payload.len()];
    stream.read_exact(&mut echoed).expect("receive the echo");
    assert_eq!(echoed, payload);
}

/// The next sequence number `stream` expects, read in TCP repair mode (root only).
fn receive_next(stream: &TcpStream) -> u32 {
    const TCP_RECV_QUEUE: libc::c_int = 1;
    const TCP_REPAIR_OFF_NO_WP: libc::c_int = -1;
    let fd = stream.as_raw_fd();
    let set = |option: libc::c_int, value: libc::c_int| {
        // SAFETY: setsockopt reads `value` for the length given.
        let done = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                option,
                (&raw const value).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(
            done,
            0,
            "setsockopt {option}: {}",
            std::io::Error::last_os_error()
        );
    };
    set(libc::TCP_REPAIR, 1);
    set(libc::TCP_REPAIR_QUEUE, TCP_RECV_QUEUE);
    let mut seq: u32 = 0;
    let mut len = size_of::<u32>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `seq`.
    let done = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_QUEUE_SEQ,
            (&raw mut seq).cast(),
            &mut len,
        )
    };
    assert_eq!(
        done,
        0,
        "TCP_QUEUE_SEQ: {}",
        std::io::Error::last_os_error()
    );
    set(libc::TCP_REPAIR, TCP_REPAIR_OFF_NO_WP);
    seq
}

/// CPU time (user + system, in clock ticks) and resident memory (KiB) of `pid`.
fn usage(pid: u32) -> (u64, u64) {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("comm")
        .1
        .split_whitespace()
        .collect();
    let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let rss = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    (ticks, rss)
}

/// One flood's figures.
struct Figures {
    name: &'static str,
    report: FloodReport,
    records: usize,
    cpu_ms: u64,
    rss_kib: (u64, u64),
}

impl Figures {
    fn print(&self) {
        let seconds = self.report.elapsed.as_secs_f64();
        eprintln!(
            "{:<28} {:>9} packets in {:.1} s ({:>7.0}/s)  records {} ({:.6}/packet)  daemon CPU {} ms ({:.1} %)  RSS {} -> {} KiB",
            self.name,
            self.report.sent,
            seconds,
            self.report.sent as f64 / seconds,
            self.records,
            self.records as f64 / self.report.sent.max(1) as f64,
            self.cpu_ms,
            self.cpu_ms as f64 / (seconds * 10.0),
            self.rss_kib.0,
            self.rss_kib.1,
        );
    }
}

struct Lab {
    topology: Topology,
    netns: BTreeSet<u32>,
}

impl Lab {
    fn server(&self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.topology.server().ipv4(), port)
    }

    fn connect(&self) -> TcpStream {
        let to = SocketAddr::V4(self.server(PORT));
        let stream = in_netns(self.topology.client().netns(), || {
            TcpStream::connect_timeout(&to, IO_TIMEOUT)
        })
        .expect("enter the client namespace")
        .expect("connect");
        with_timeouts(&stream);
        stream
    }

    /// Records from the lab's namespaces, other than those of the connections in `known`.
    fn stray_records(&self, daemon: &mut Daemon, known: &[String]) -> Vec<Value> {
        daemon.all(|v| {
            v["type"] == "event"
                && v["netns"]
                    .as_u64()
                    .is_some_and(|n| self.netns.contains(&u32::try_from(n).unwrap_or(0)))
                && !known
                    .iter()
                    .any(|addr| v["local"] == *addr || v["remote"] == *addr)
        })
    }
}

/// SYNs from the client to `target` for `time`, in rounds of [`SYN_FLOOD_PACKETS`].
fn syn_rounds(lab: &Lab, target: SocketAddrV4, time: Duration) -> FloodReport {
    let source = SocketAddrV4::new(lab.topology.client().ipv4(), 1024);
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < time {
        let round = in_netns(lab.topology.client().netns(), || {
            syn_flood(source, target, SYN_FLOOD_PACKETS, time - started.elapsed())
        })
        .expect("enter the client namespace")
        .expect("flood");
        sent += round.sent;
    }
    FloodReport {
        sent,
        elapsed: started.elapsed(),
    }
}

/// Runs `flood` on a thread while `during` runs here; returns the flood's report, the
/// records it caused and what the daemon spent.
fn measure(
    name: &'static str,
    lab: &Lab,
    daemon: &mut Daemon,
    known: &[String],
    flood: impl FnOnce() -> FloodReport + Send,
    during: impl FnOnce(),
) -> Figures {
    let before_records = lab.stray_records(daemon, known).len();
    let (cpu_before, rss_before) = usage(daemon.pid());
    let report = thread::scope(|scope| {
        let flooding = scope.spawn(flood);
        during();
        flooding.join().expect("the flood thread")
    });
    // Records are read a moment after the kernel wrote them.
    thread::sleep(Duration::from_millis(500));
    let (cpu_after, rss_after) = usage(daemon.pid());
    let records = lab.stray_records(daemon, known).len() - before_records;
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap();
    let figures = Figures {
        name,
        report,
        records,
        cpu_ms: (cpu_after - cpu_before) * 1000 / ticks_per_second,
        rss_kib: (rss_before, rss_after),
    };
    figures.print();
    figures
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces, raw sockets): `cargo xtask test` runs it as root"]
fn floods_give_no_record_and_resets_during_them_are_explained() {
    require_root("floods_give_no_record_and_resets_during_them_are_explained");
    let topology = lab_topology(MiddleboxMode::Reject, CT_TIMEOUT_SECS);
    let netns = [
        topology.client().netns(),
        topology.server().netns(),
        topology.middlebox(),
    ]
    .iter()
    .map(|ns| ns.inode().expect("inode"))
    .collect();
    let lab = Lab { topology, netns };
    // The server answers every SYN with a cookie, as under a real flood.
    in_netns(lab.topology.server().netns(), || {
        fs::write("/proc/sys/net/ipv4/tcp_syncookies", "2")
    })
    .expect("enter the server namespace")
    .expect("tcp_syncookies");
    let _echo = in_netns(lab.topology.server().netns(), || {
        EchoServer::bind(SocketAddr::V4(lab.server(PORT)))
    })
    .expect("enter the server namespace")
    .expect("echo server");
    let mut daemon = Daemon::start(&["--idle-expiry-floor", "2"]);

    // 1. A SYN flood to the open port; meanwhile an idle pooled connection is reset by the
    //    middlebox and must still be explained.
    let mut pooled = lab.connect();
    round_trip(&mut pooled, b"before the flood");
    let pooled_addr = pooled.local_addr().unwrap().to_string();
    let mut known = vec![pooled_addr.clone()];
    let open = measure(
        "SYN flood, open port",
        &lab,
        &mut daemon,
        &known,
        || syn_rounds(&lab, lab.server(PORT), FLOOD_TIME),
        || {
            thread::sleep(IDLE_GAP);
            pooled.write_all(b"after idle").expect("queue the request");
            let error = pooled
                .read(&mut [0u8; 16])
                .expect_err("the middlebox forgot the flow");
            assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
        },
    );
    let finding = daemon.wait_for("the forged reset during the flood", WAIT, |v| {
        v["type"] == "finding" && v["local"] == pooled_addr
    });
    assert_eq!(
        (finding["verdict"].as_str(), finding["kind"].as_str()),
        (Some("middlebox_drop"), Some("forged_rst")),
        "{finding}"
    );

    // 2. A SYN flood to a closed port.
    let closed = measure(
        "SYN flood, closed port",
        &lab,
        &mut daemon,
        &known,
        || syn_rounds(&lab, lab.server(CLOSED_PORT), FLOOD_TIME / 2),
        || {},
    );

    // 3. RSTs at random sequence numbers against a live connection, spoofed from the
    //    middlebox as if from the server; the connection is used all along and survives.
    let mut live = lab.connect();
    round_trip(&mut live, b"live");
    let live_addr = live.local_addr().unwrap();
    known.push(live_addr.to_string());
    let SocketAddr::V4(live_v4) = live_addr else {
        panic!("IPv4")
    };
    // The spoofed RSTs leave the middlebox untracked: this test is about the endpoint and the
    // observer, and conntrack takes an RST anywhere in its wider window as the flow's end
    // (after which the middlebox rejects the connection's next segment itself).
    let untracked = Command::new("ip")
        .args([
            "netns",
            "exec",
            lab.topology.middlebox().name(),
            "nft",
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut nft| {
            nft.stdin.take().expect("stdin").write_all(UNTRACKED)?;
            nft.wait()
        })
        .expect("run nft");
    assert!(untracked.success(), "nft: {untracked}");
    let spoofed = measure(
        "spoofed RSTs, random seq",
        &lab,
        &mut daemon,
        &known,
        || {
            in_netns(lab.topology.middlebox(), || {
                spoofed_rsts(lab.server(PORT), live_v4, u64::MAX, FLOOD_TIME / 2, 0x5eed)
            })
            .expect("enter the middlebox namespace")
            .expect("flood")
        },
        || {
            let until = Instant::now() + FLOOD_TIME / 2;
            while Instant::now() < until {
                round_trip(&mut live, b"still alive");
                thread::sleep(Duration::from_millis(200));
            }
        },
    );
    round_trip(&mut live, b"survived");

    // 4. One spoofed RST at exactly the next sequence number kills it: reported, with the
    //    RST's TTL (64, sent from the middlebox) against the server's (63).
    let seq = receive_next(&live);
    in_netns(lab.topology.middlebox(), || {
        spoofed_rst(lab.server(PORT), live_v4, seq)
    })
    .expect("enter the middlebox namespace")
    .expect("spoofed RST");
    let error = live.read(&mut [0u8; 16]).expect_err("reset");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
    let live_addr = live_addr.to_string();
    let finding = daemon.wait_for("the spoofed in-window RST", WAIT, |v| {
        v["type"] == "finding" && v["local"] == live_addr
    });
    let facts = finding["facts"].as_array().expect("facts");
    assert!(
        facts.iter().any(|fact| fact["fact"] == "rst_ttl_closer"
            && fact["rst_ttl"] == 64
            && fact["peer_ttl"] == 63),
        "the finding must show that the RST did not come from the peer's distance: {finding}"
    );
    assert_ne!(finding["verdict"], "peer_reset", "{finding}");
    eprintln!(
        "spoofed in-window RST: {} {} {}",
        finding["verdict"], finding["kind"], finding["confidence"]
    );

    let (status, rest) = daemon.stop();
    assert!(status.success(), "{status}");
    let stats = rest.iter().rfind(|v| v["type"] == "stats").expect("stats");
    assert_eq!(stats["kernel_lost"], 0, "{stats}");
    // Every SYN the closed port refused, and the open port's backscatter, counted instead.
    assert!(
        stats["syn_refusals"].as_u64() >= Some(closed.report.sent),
        "{stats}"
    );
    for figures in [&open, &closed, &spoofed] {
        assert_eq!(figures.records, 0, "{} gave records", figures.name);
        assert!(
            figures.report.sent > 1000,
            "{} sent too little",
            figures.name
        );
    }
    lab.topology.teardown().expect("teardown");
}
