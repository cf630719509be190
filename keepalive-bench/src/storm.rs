//! Workload 2: a reset storm, with the daemon at its default priority and then reniced.

use std::time::Duration;

use anyhow::Result;
use keepalive_lab::daemon::Stats;
use keepalive_lab::interrupt;

use crate::daemon::Daemon;
use crate::load::{self, Outcome};
use crate::{Settings, Tools, host};

/// Workload 2 results: the daemon at its default priority, then at [`STORM_NICE`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Storm {
    pub default: StormRun,
    pub reniced: StormRun,
}

/// One reset storm with the daemon running.
#[derive(Debug, Clone, Copy, Default)]
pub struct StormRun {
    pub resets: Outcome,
    pub daemon: Stats,
    pub daemon_cpu: Duration,
    pub peak_rss_kib: u64,
}

/// The daemon's nice value in the second storm: it shows whether events are lost because
/// the daemon is slow or because the storm's threads leave it too little of the CPUs.
pub const STORM_NICE: i32 = -10;

pub fn run(settings: &Settings, tools: &Tools) -> Result<Storm> {
    println!(
        "==> workload 2: reset storm for {:?}, {} workers, daemon at nice 0 then {STORM_NICE}",
        settings.storm_duration, settings.workers
    );
    Ok(Storm {
        default: storm_run(settings, tools, None)?,
        reniced: storm_run(settings, tools, Some(STORM_NICE))?,
    })
}

fn storm_run(settings: &Settings, tools: &Tools, nice: Option<i32>) -> Result<StormRun> {
    interrupt::check()?;
    let daemon = Daemon::start(&tools.daemon)?;
    let pid = daemon.pid();
    if let Some(nice) = nice {
        host::renice(pid, nice)?;
    }
    let cpu_before = host::cpu_time(pid)?;
    let resets = load::reset_storm(settings.workers as usize, settings.storm_duration)?;
    // Let it drain the ring buffer before its CPU time is read.
    host::wait_until_idle(pid, Duration::from_millis(300), Duration::from_secs(15))?;
    let daemon_cpu = host::cpu_time(pid)?.saturating_sub(cpu_before);
    let peak_rss_kib = host::status_kib(pid, "VmHWM")?;
    let stats = daemon.stop()?;
    println!(
        "  nice {}: {:.0} resets/s, {} events, {} lost, {} dropped by the outputs, daemon CPU \
         {:.2} s",
        nice.unwrap_or(0),
        resets.per_second(),
        stats.events,
        stats.kernel_lost,
        stats.output_dropped,
        daemon_cpu.as_secs_f64()
    );
    Ok(StormRun {
        resets,
        daemon: stats,
        daemon_cpu,
        peak_rss_kib,
    })
}
