//! Workload 3: the run time of every program with `kernel.bpf_stats_enabled=1`, next to an empty
//! cgroup_skb program measured the same way.

use std::collections::BTreeMap;

use anyhow::Result;
use keepalive_lab::interrupt;

use crate::bpf::{self, EmptySkb, RunTime, StatsEnabled};
use crate::daemon::Daemon;
use crate::load::{self, Outcome};
use crate::{Settings, Tools};

/// Workload 3 results: run time per program and workload.
#[derive(Debug, Clone, Default)]
pub struct Programs {
    pub workloads: Vec<Workload>,
}

/// One workload of phase 3: what it did, and the runs of every program meanwhile.
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: &'static str,
    pub outcome: Outcome,
    /// (program name, its runs during the workload).
    pub runs: Vec<(String, RunTime)>,
}

/// Phase 3's request / response workload, with the empty program attached before the
/// daemon's and after it: the first program in a cgroup's list pays a few nanoseconds more per
/// packet than the second, so each is measured in both places.
pub const STREAM_EMPTY_FIRST: &str = "stream, empty program first";
pub const STREAM_EMPTY_SECOND: &str = "stream, empty program second";

pub fn run(settings: &Settings, tools: &Tools) -> Result<Programs> {
    interrupt::check()?;
    println!(
        "==> workload 3: per-program run time (bpf_stats on), {:?} per workload",
        settings.program_duration
    );
    let workers = settings.workers as usize;
    let duration = settings.program_duration;
    let _stats = StatsEnabled::enable()?;
    let empty = EmptySkb::attach(&tools.cgroup)?;
    let daemon = Daemon::start(&tools.daemon)?;
    let names = bpf::names(&tools.bpftool, "prog")?;
    let meter = Meter {
        daemon: daemon.pid(),
        names: &names,
    };
    let mut result = Programs::default();
    let stream = load::Stream::open(workers)?;
    result
        .workloads
        .push(meter.measure(STREAM_EMPTY_FIRST, &empty, || Ok(stream.run(duration)))?);
    // Attached again, the empty program now runs after the daemon's.
    drop(empty);
    let empty = EmptySkb::attach(&tools.cgroup)?;
    interrupt::check()?;
    let stream = load::Stream::open(workers)?;
    result
        .workloads
        .push(meter.measure(STREAM_EMPTY_SECOND, &empty, || Ok(stream.run(duration)))?);
    interrupt::check()?;
    result
        .workloads
        .push(meter.measure("churn", &empty, || load::churn(workers, duration))?);
    interrupt::check()?;
    result
        .workloads
        .push(meter.measure("storm", &empty, || load::reset_storm(workers, duration))?);
    drop(empty);
    daemon.stop()?;
    for workload in &result.workloads {
        println!(
            "  {}: {:.0}/s",
            workload.name,
            workload.outcome.per_second()
        );
        for (name, run) in &workload.runs {
            if let Some(ns) = run.ns_per_run() {
                println!("    {name:<22} {ns:>7.1} ns × {}", run.run_cnt);
            }
        }
    }
    Ok(result)
}

/// Reads the run time of the daemon's programs and of the empty program around a workload.
struct Meter<'a> {
    daemon: u32,
    names: &'a BTreeMap<u32, String>,
}

impl Meter<'_> {
    fn snapshot(&self, empty: &EmptySkb) -> Result<Vec<(String, RunTime)>> {
        let mut runs: Vec<(String, RunTime)> = bpf::program_run_times(self.daemon)?
            .into_iter()
            .map(|(id, run)| {
                let name = self
                    .names
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| format!("id {id}"));
                (name, run)
            })
            .collect();
        runs.push((bpf::EMPTY_PROGRAM.to_owned(), empty.run_time()?));
        Ok(runs)
    }

    fn measure(
        &self,
        name: &'static str,
        empty: &EmptySkb,
        work: impl FnOnce() -> Result<Outcome>,
    ) -> Result<Workload> {
        let before = self.snapshot(empty)?;
        let outcome = work()?;
        let runs = self
            .snapshot(empty)?
            .into_iter()
            .map(|(program, run)| {
                let earlier = before
                    .iter()
                    .find(|(other, _)| *other == program)
                    .map_or_else(RunTime::default, |(_, run)| *run);
                (program, run.since(earlier))
            })
            .collect();
        Ok(Workload {
            name,
            outcome,
            runs,
        })
    }
}
