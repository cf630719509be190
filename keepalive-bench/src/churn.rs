//! Workload 1: connection churn in interleaved rounds with no observer, with keepalive-observer
//! and with a bpftrace script counting on the same tracepoints.

use std::time::Duration;

use anyhow::{Context, Result};
use keepalive_lab::interrupt;

use crate::daemon::Daemon;
use crate::load::{self, Outcome};
use crate::procs::Bpftrace;
use crate::{Settings, Tools, host};

/// Observer modes of the churn workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    None,
    Daemon,
    Bpftrace,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::None, Mode::Daemon, Mode::Bpftrace];

    pub fn label(self) -> &'static str {
        match self {
            Mode::None => "a: no observer",
            Mode::Daemon => "b: keepalive-observer",
            Mode::Bpftrace => "c: bpftrace counting",
        }
    }
}

/// Workload 1 results: connections per second of every round and mode.
#[derive(Debug, Clone, Default)]
pub struct Churn {
    /// (round, mode, outcome), in the order they ran.
    pub runs: Vec<(u32, Mode, Outcome)>,
    pub daemon_lost: u64,
    pub daemon_events: u64,
    /// The daemon's CPU time during its rounds' churn.
    pub daemon_cpu: Duration,
    pub bpftrace_hits: u64,
    pub bpftrace_probes: usize,
}

pub fn run(settings: &Settings, tools: &Tools) -> Result<Churn> {
    let workers = settings.workers as usize;
    let script = Bpftrace::script(&tools.tracefs);
    let mut result = Churn {
        bpftrace_probes: script.matches("tracepoint:").count(),
        ..Churn::default()
    };
    println!(
        "==> workload 1: connection churn, {} rounds × 3 modes × {:?}, {workers} workers",
        settings.rounds, settings.duration
    );
    load::churn(workers, Duration::from_secs(1)).context("warm-up churn")?;
    for round in 0..settings.rounds {
        for offset in 0..Mode::ALL.len() {
            interrupt::check()?;
            let mode = Mode::ALL[(offset + round as usize) % Mode::ALL.len()];
            let outcome = match mode {
                Mode::None => load::churn(workers, settings.duration)?,
                Mode::Daemon => {
                    let daemon = Daemon::start(&tools.daemon)?;
                    let cpu_before = host::cpu_time(daemon.pid())?;
                    let outcome = load::churn(workers, settings.duration);
                    result.daemon_cpu += host::cpu_time(daemon.pid())?.saturating_sub(cpu_before);
                    let stats = daemon.stop()?;
                    result.daemon_lost += stats.kernel_lost;
                    result.daemon_events += stats.events;
                    outcome?
                }
                Mode::Bpftrace => {
                    let bpftrace = Bpftrace::start(&tools.bpftrace, &script)?;
                    let outcome = load::churn(workers, settings.duration);
                    result.bpftrace_hits += bpftrace.stop()?;
                    outcome?
                }
            };
            println!(
                "  round {} {:<24} {:>9.0} conn/s ({} errors)",
                round + 1,
                mode.label(),
                outcome.per_second(),
                outcome.errors
            );
            result.runs.push((round + 1, mode, outcome));
        }
    }
    Ok(result)
}
