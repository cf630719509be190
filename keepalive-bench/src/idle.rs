//! Workload 4: many idle connections, held by helper processes: daemon RSS, kernel map
//! memory, and the kernel memory the observer adds per connection.

use std::time::Duration;

use anyhow::Result;
use keepalive_lab::daemon::Stats;
use keepalive_lab::interrupt;

use crate::daemon::Daemon;
use crate::procs::IdleHolders;
use crate::{Tools, bpf, host};

/// Workload 4 results.
#[derive(Debug, Clone, Default)]
pub struct Idle {
    pub connections: usize,
    /// Unreclaimable slab memory the connections took without the observer, and with it:
    /// the difference is what the observer's per-connection context costs the kernel.
    pub slab_without_kib: u64,
    pub slab_with_kib: u64,
    pub processes: usize,
    pub open_time: Duration,
    pub rss_before_kib: u64,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    /// (map name, bytes of locked memory).
    pub maps: Vec<(String, u64)>,
    pub daemon: Stats,
}

/// How long the idle connections may take to open.
const IDLE_OPEN_LIMIT: Duration = Duration::from_secs(180);

pub fn run(count: usize, tools: &Tools) -> Result<Idle> {
    interrupt::check()?;
    println!("==> workload 4: {count} established idle connections, without and with the daemon");
    let slab_without_kib = {
        let before = host::system_kib("SUnreclaim")?;
        let holders = IdleHolders::open(count, IDLE_OPEN_LIMIT)?;
        let taken = host::system_kib("SUnreclaim")?.saturating_sub(before);
        drop(holders);
        taken
    };
    interrupt::check()?;
    let daemon = Daemon::start(&tools.daemon)?;
    let pid = daemon.pid();
    host::wait_until_idle(pid, Duration::from_millis(300), Duration::from_secs(5))?;
    let rss_before_kib = host::status_kib(pid, "VmRSS")?;
    let slab_before = host::system_kib("SUnreclaim")?;
    let holders = IdleHolders::open(count, IDLE_OPEN_LIMIT)?;
    let slab_with_kib = host::system_kib("SUnreclaim")?.saturating_sub(slab_before);
    host::wait_until_idle(pid, Duration::from_millis(500), Duration::from_secs(30))?;
    let rss_kib = host::status_kib(pid, "VmRSS")?;
    let peak_rss_kib = host::status_kib(pid, "VmHWM")?;
    let names = bpf::names(&tools.bpftool, "map")?;
    let maps = bpf::map_memory(pid)?
        .into_iter()
        .map(|(id, bytes)| {
            let name = names
                .get(&id)
                .cloned()
                .unwrap_or_else(|| format!("id {id}"));
            (name, bytes)
        })
        .collect();
    let result = Idle {
        connections: holders.connections,
        slab_without_kib,
        slab_with_kib,
        processes: holders.processes,
        open_time: holders.elapsed,
        rss_before_kib,
        rss_kib,
        peak_rss_kib,
        maps,
        daemon: Stats::default(),
    };
    drop(holders);
    host::wait_until_idle(pid, Duration::from_millis(300), Duration::from_secs(30))?;
    let daemon = daemon.stop()?;
    println!(
        "  {} connections in {:.1} s: daemon RSS {} KiB (before {} KiB)",
        result.connections,
        result.open_time.as_secs_f64(),
        result.rss_kib,
        result.rss_before_kib
    );
    Ok(Idle { daemon, ..result })
}
