//! The headline on the kernel under test: a ladder of idle gaps through a middlebox inside the
//! guest (network namespaces, nftables conntrack that forgets established flows after a short
//! timeout and forges an RST for their next segment, as in the lab). Connections idle for
//! less than the timeout survive, those idle longer die, and the finding of the last death
//! carries a learned window that brackets the timeout; over IPv4 and IPv6 at once, each
//! address learned on its own.

use std::{
    io::{self, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use keepalive_lab::{EchoServer, Middlebox, MiddleboxMode, Topology, daemon::Daemon, in_netns};
use serde_json::Value;

use crate::scenarios::Expect;

/// The middlebox's conntrack timeout for established flows.
const TIMEOUT_SECS: u64 = 5;
/// Idle gaps, all run at once, one connection each: three survive, two die.
const GAPS_SECS: [u64; 5] = [2, 3, 4, 6, 8];
const PORT: u16 = 7000;
/// Bounds each read and write: a death is an RST, never a hang.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a finding may take to show up (software emulation is slow).
const WAIT: Duration = Duration::from_secs(30);

/// Runs the ladder and checks the learned windows.
pub fn middlebox_ladder(daemon: &mut Daemon, expect: &Expect) -> Result<String> {
    if !expect.idle {
        return Ok("skipped: no hook for the send or the reply after idle".into());
    }
    let topology = Topology::builder()
        .servers(1)
        .ipv6(true)
        .middlebox(Middlebox {
            mode: MiddleboxMode::Reject,
            established_timeout_secs: u32::try_from(TIMEOUT_SECS)?,
        })
        .build()
        .context("building the middlebox topology (ip, nft, modules)")?;
    let result = ladders(&topology, daemon);
    topology.teardown().context("removing the topology")?;
    result
}

fn ladders(topology: &Topology, daemon: &mut Daemon) -> Result<String> {
    let server = topology.server();
    let v6 = server.ipv6().context("the topology has no IPv6")?;
    let servers = [
        SocketAddr::from((server.ipv4(), PORT)),
        SocketAddr::from((v6, PORT)),
    ];
    let echoes = servers
        .iter()
        .map(|addr| {
            in_netns(server.netns(), || EchoServer::bind(*addr))?
                .with_context(|| format!("binding the echo server on {addr}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut streams = Vec::new();
    for to in servers {
        for gap in GAPS_SECS {
            let mut stream = in_netns(topology.client().netns(), || {
                TcpStream::connect_timeout(&to, IO_TIMEOUT)
            })?
            .with_context(|| format!("connecting to {to}"))?;
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            stream.set_write_timeout(Some(IO_TIMEOUT))?;
            round_trip(&mut stream).with_context(|| format!("first exchange with {to}"))?;
            // Asked now: a reset socket has no peer address any more.
            let local = stream.local_addr()?;
            streams.push((stream, gap, to, local));
        }
    }
    let outcomes: Vec<io::Result<()>> = thread::scope(|scope| {
        let steps: Vec<_> = streams
            .iter_mut()
            .map(|(stream, gap, _, _)| {
                let gap = Duration::from_secs(*gap);
                scope.spawn(move || {
                    thread::sleep(gap);
                    round_trip(stream)
                })
            })
            .collect();
        steps
            .into_iter()
            .map(|step| {
                step.join()
                    .unwrap_or_else(|_| Err(io::Error::other("panicked")))
            })
            .collect()
    });
    let mut windows = Vec::new();
    for to in servers {
        let mut last_death: Option<Value> = None;
        for ((_, gap, peer, local), outcome) in streams.iter().zip(&outcomes) {
            if *peer != to {
                continue;
            }
            let died = *gap > TIMEOUT_SECS;
            match outcome {
                Ok(()) if !died => {}
                Err(e) if died && e.kind() == io::ErrorKind::ConnectionReset => {}
                other => bail!("{gap} s idle to {to}: expected to die: {died}, got {other:?}"),
            }
            if !died {
                continue;
            }
            let local = local.to_string();
            let finding = daemon.wait_for("a ladder step's death", WAIT, |v| {
                v["type"] == "finding" && v["local"] == local.as_str()
            })?;
            if last_death.as_ref().is_none_or(|l| mono(l) < mono(&finding)) {
                last_death = Some(finding);
            }
        }
        let finding = last_death.context("no death")?;
        let window = finding["timeout_window_ms"]
            .as_array()
            .and_then(|w| Some((w.first()?.as_u64()?, w.get(1)?.as_u64()?)))
            .with_context(|| format!("no learned window for {to}: {finding}"))?;
        let timeout_ms = TIMEOUT_SECS * 1000;
        ensure!(
            window.0 < timeout_ms && timeout_ms <= window.1,
            "the window {window:?} for {to} should bracket the {TIMEOUT_SECS} s timeout: \
             {finding}"
        );
        let family = match to.ip() {
            IpAddr::V4(_) => "IPv4",
            IpAddr::V6(_) => "IPv6",
        };
        windows.push(format!(
            "{family} window ({:.1} s, {:.1} s] ({} {})",
            window.0 as f64 / 1000.0,
            window.1 as f64 / 1000.0,
            finding["verdict"].as_str().unwrap_or_default(),
            finding["kind"].as_str().unwrap_or_default()
        ));
    }
    for echo in echoes {
        echo.stop().context("stopping the echo server")?;
    }
    Ok(format!(
        "{TIMEOUT_SECS} s conntrack timeout, gaps {GAPS_SECS:?} s: {}",
        windows.join("; ")
    ))
}

/// Sends and reads back the echo: the verdict on a reused connection comes on the read.
fn round_trip(stream: &mut TcpStream) -> io::Result<()> {
    stream.write_all(b"ladder")?;
    stream.read_exact(&mut [0u8; 6])
}

fn mono(line: &Value) -> u64 {
    line["mono_ns"].as_u64().unwrap_or(0)
}
