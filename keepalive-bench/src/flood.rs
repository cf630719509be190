//! The floods: from the lab's client and middlebox namespaces, a SYN flood to an open port
//! (answered with SYN cookies), one to a closed port, and RSTs spoofed at random sequence
//! numbers against a live connection, each for `--flood` seconds at the highest rate this
//! process reaches. For each: the daemon's records per packet (the goal is none: no packet
//! of a flood ends a connection), its CPU time and its memory before and after. Whether a
//! reset during a flood is still explained is a privileged test's matter
//! (`keepalive-user/tests/floods.rs`).

use std::io::Write;
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use keepalive_lab::flood::{FloodReport, spoofed_rsts, syn_flood};
use keepalive_lab::{EchoServer, Middlebox, MiddleboxMode, Topology, in_netns, interrupt};

use crate::daemon::Daemon;
use crate::{Tools, host};

const PORT: u16 = 7000;
const CLOSED_PORT: u16 = 7001;
/// SYNs per round, from source ports 1024 upward: below the ephemeral ports, so that no flood
/// segment carries a real connection's tuple.
const ROUND: u64 = 31_000;
/// The spoofed RSTs leave the middlebox untracked: conntrack would end the live connection's
/// flow on one that falls in its window, and the middlebox would then reset it itself.
const UNTRACKED: &[u8] = b"table ip kao_flood {
  chain out {
    type filter hook output priority raw; policy accept;
    meta l4proto tcp notrack
  }
}
";

/// One flood with a daemon of its own.
#[derive(Debug, Clone)]
pub struct FloodRun {
    pub flood: FloodReport,
    pub events: u64,
    pub syn_refusals: u64,
    pub kernel_lost: u64,
    pub daemon_cpu: Duration,
    pub rss_kib: (u64, u64),
}

pub fn run(duration: Duration, tools: &Tools) -> Result<Vec<FloodRun>> {
    println!("==> floods: {duration:?} each, from the lab's namespaces, a fresh daemon for each");
    let topology = Topology::builder()
        .servers(1)
        .middlebox(Middlebox {
            mode: MiddleboxMode::Reject,
            established_timeout_secs: 600,
        })
        .build()?;
    let server = SocketAddrV4::new(topology.server().ipv4(), PORT);
    in_netns(topology.server().netns(), || {
        std::fs::write("/proc/sys/net/ipv4/tcp_syncookies", "2")
    })?
    .context("tcp_syncookies in the server namespace")?;
    let _echo = in_netns(topology.server().netns(), || {
        EchoServer::bind(SocketAddr::V4(server))
    })??;
    untrack_middlebox(&topology)?;
    let live = in_netns(topology.client().netns(), || {
        TcpStream::connect_timeout(&SocketAddr::V4(server), Duration::from_secs(5))
    })?
    .context("connect to the echo server")?;
    let SocketAddr::V4(live_addr) = live.local_addr()? else {
        bail!("the live connection is not IPv4");
    };
    let source = SocketAddrV4::new(topology.client().ipv4(), 1024);
    let runs = vec![
        flood_run("SYN flood, open port", tools, || {
            syn_rounds(&topology, source, server, duration)
        })?,
        flood_run("SYN flood, closed port", tools, || {
            syn_rounds(
                &topology,
                source,
                SocketAddrV4::new(topology.server().ipv4(), CLOSED_PORT),
                duration,
            )
        })?,
        flood_run("spoofed RSTs, random seq", tools, || {
            Ok(in_netns(topology.middlebox(), || {
                spoofed_rsts(server, live_addr, u64::MAX, duration, 0x5eed)
            })??)
        })?,
    ];
    drop(live);
    topology.teardown()?;
    Ok(runs)
}

fn flood_run(
    name: &'static str,
    tools: &Tools,
    flood: impl FnOnce() -> Result<FloodReport>,
) -> Result<FloodRun> {
    interrupt::check()?;
    let daemon = Daemon::start(&tools.daemon)?;
    let pid = daemon.pid();
    let rss_before = host::status_kib(pid, "VmRSS")?;
    let cpu_before = host::cpu_time(pid)?;
    let report = flood()?;
    host::wait_until_idle(pid, Duration::from_millis(300), Duration::from_secs(15))?;
    let daemon_cpu = host::cpu_time(pid)?.saturating_sub(cpu_before);
    let rss_after = host::status_kib(pid, "VmRSS")?;
    let stats = daemon.stop()?;
    let run = FloodRun {
        flood: report,
        events: stats.events,
        syn_refusals: stats.syn_refusals,
        kernel_lost: stats.kernel_lost,
        daemon_cpu,
        rss_kib: (rss_before, rss_after),
    };
    let seconds = run.flood.elapsed.as_secs_f64();
    println!(
        "  {name}: {} packets in {seconds:.1} s ({:.0}/s), {} records ({:.6} per packet), {} \
         counted as SYN refusals, {} lost, daemon CPU {:.2} s, RSS {} -> {} KiB",
        run.flood.sent,
        run.flood.sent as f64 / seconds.max(f64::MIN_POSITIVE),
        run.events,
        run.events as f64 / run.flood.sent.max(1) as f64,
        run.syn_refusals,
        run.kernel_lost,
        run.daemon_cpu.as_secs_f64(),
        run.rss_kib.0,
        run.rss_kib.1,
    );
    Ok(run)
}

/// SYNs from `source` to `target` for `time`, in rounds of [`ROUND`].
fn syn_rounds(
    topology: &Topology,
    source: SocketAddrV4,
    target: SocketAddrV4,
    time: Duration,
) -> Result<FloodReport> {
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < time {
        let left = time.saturating_sub(started.elapsed());
        sent += in_netns(topology.client().netns(), || {
            syn_flood(source, target, ROUND, left)
        })??
        .sent;
    }
    Ok(FloodReport {
        sent,
        elapsed: started.elapsed(),
    })
}

fn untrack_middlebox(topology: &Topology) -> Result<()> {
    let mut nft = Command::new("ip")
        .args([
            "netns",
            "exec",
            topology.middlebox().name(),
            "nft",
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .context("run nft in the middlebox namespace")?;
    nft.stdin
        .take()
        .context("nft's standard input")?
        .write_all(UNTRACKED)?;
    let status = nft.wait()?;
    if !status.success() {
        bail!("nft in the middlebox namespace: {status}");
    }
    Ok(())
}
