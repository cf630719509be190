//! `cargo xtask bench`: what keepalive-observer costs the host, measured side by side in one
//! run (issue 6). Four workloads on loopback:
//! 1. connection churn, interleaved rounds with no observer, with the daemon, and with a
//!    bpftrace script counting on the same tracepoints;
//! 2. a reset storm: events per second delivered, events lost, daemon CPU per event, peak RSS;
//! 3. per-program run time with `kernel.bpf_stats_enabled=1`, next to an empty cgroup_skb
//!    program measured the same way;
//! 4. many idle connections: daemon RSS and kernel map memory.
//!
//! Prints a table at the end and writes it, with the machine's description, into
//! `docs/benchmarks.md` between markers, keeping the hand-written analysis around them.

mod bpf;
mod host;
mod load;
mod net;
mod procs;
mod report;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use self::bpf::{EmptySkb, RunTime, StatsEnabled};
use self::host::{Machine, Tracefs};
use self::load::Outcome;
use self::procs::{Bpftrace, Daemon, DaemonStats, IdleHolders};
use crate::build::{self, Profile};
use crate::{cmd, setup};
use keepalive_lab::interrupt;

/// Settings of one bench run; the defaults finish in under 5 minutes on 2 cores.
#[derive(Args, Debug, Clone)]
pub struct Settings {
    /// Seconds of churn per round and observer mode.
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = parse_seconds)]
    pub duration: Duration,
    /// Rounds of churn; each runs every observer mode once, in rotating order.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Client threads of the churn, stream and storm workloads (the churn server gets as many).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub workers: u32,
    /// Seconds of the reset storm.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub storm_duration: Duration,
    /// Seconds of each workload while per-program run time is measured.
    #[arg(long, value_name = "SECONDS", default_value = "4", value_parser = parse_seconds)]
    pub program_duration: Duration,
    /// Established idle connections held open for the memory figures.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..=400_000))]
    pub idle_connections: u32,
    /// Run only these phases (repeatable); the results file is written only when all run.
    #[arg(long = "phase", value_enum, value_name = "PHASE")]
    pub phases: Vec<Phase>,
    /// Results file, relative to the workspace root.
    #[arg(long, value_name = "FILE", default_value = "docs/benchmarks.md")]
    pub output: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    /// Workload 1: connection churn, no observer / keepalive-observer / bpftrace.
    Churn,
    /// Workload 2: reset storm.
    Storm,
    /// Workload 3: per-program run time.
    Programs,
    /// Workload 4: many idle connections.
    Idle,
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(0.1..=3600.0).contains(&seconds) {
        return Err(format!("`{text}`: expected 0.1 to 3600 seconds"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Everything the bench needs from the machine, found once.
struct Tools {
    daemon: PathBuf,
    bpftrace: PathBuf,
    bpftool: PathBuf,
    cgroup: PathBuf,
    tracefs: Tracefs,
}

pub fn run(settings: &Settings) -> Result<()> {
    if !cmd::is_root() {
        bail!(
            "cargo xtask bench needs root: it loads eBPF programs, enables kernel.bpf_stats_enabled \
             and may mount tracefs; run it as root (e.g. `sudo -E cargo xtask bench`)"
        );
    }
    setup::run(setup::Report::Quiet)?;
    build::run(Profile::Release)?;
    interrupt::install()?;
    let tools = Tools {
        daemon: build::binary(Profile::Release),
        bpftrace: tool("bpftrace")?,
        bpftool: tool("bpftool")?,
        cgroup: cgroup_root()?,
        tracefs: Tracefs::ensure()?,
    };
    let mut machine = Machine::describe(&tools.daemon, &tools.bpftrace, &tools.bpftool)?;
    println!(
        "==> bench on {} CPU(s) ({}), load average {}",
        machine.cpus, machine.cpu_model, machine.loadavg
    );
    if !machine.other_observers.is_empty() {
        eprintln!(
            "warning: other observers are running and will skew every figure: {}",
            machine.other_observers.join(", ")
        );
    }
    // A first start shows which hooks this kernel gives the daemon.
    let hooks = Daemon::start(&tools.daemon)?;
    let missing: Vec<&String> = hooks
        .hooks
        .iter()
        .filter(|hook| !hook.ends_with("(attached)"))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "warning: the daemon runs without some hooks, so it costs less than it would with \
             all of them: {missing:?}"
        );
    }
    machine.daemon_hooks.clone_from(&hooks.hooks);
    hooks.stop()?;
    let all = settings.phases.is_empty();
    let wants = |phase| all || settings.phases.contains(&phase);
    let mut results = report::Results::new(machine, settings.clone());
    if wants(Phase::Churn) {
        results.churn = Some(churn(settings, &tools)?);
    }
    if wants(Phase::Storm) {
        results.storm = Some(storm(settings, &tools)?);
    }
    if wants(Phase::Programs) {
        results.programs = Some(programs(settings, &tools)?);
    }
    if wants(Phase::Idle) {
        results.idle = Some(idle(settings, &tools)?);
    }
    println!("\n{}", results.table());
    if all {
        let path = cmd::workspace_root().join(&settings.output);
        write_results(&path, &results.markdown())?;
        println!("results written to {}", path.display());
    } else {
        println!(
            "not all phases ran: {} left unchanged",
            settings.output.display()
        );
    }
    Ok(())
}

fn tool(name: &str) -> Result<PathBuf> {
    which::which(name)
        .or_else(|_| {
            let sbin = Path::new("/usr/sbin").join(name);
            if sbin.exists() { Ok(sbin) } else { Err(()) }
        })
        .map_err(|()| anyhow::anyhow!("{name} not found: `cargo xtask setup` installs it"))
}

fn cgroup_root() -> Result<PathBuf> {
    let mounts =
        fs::read_to_string("/proc/self/mounts").context("cannot read /proc/self/mounts")?;
    let root = setup::cgroup2_mount(&mounts).map(PathBuf::from).context(
        "no cgroup v2 mount: the daemon's segment program and the empty baseline need one",
    )?;
    bpf::check_cgroup(&root)?;
    Ok(root)
}

/// Observer modes of the churn workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    None,
    Daemon,
    Bpftrace,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::None, Mode::Daemon, Mode::Bpftrace];

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

fn churn(settings: &Settings, tools: &Tools) -> Result<Churn> {
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
    pub daemon: DaemonStats,
    pub daemon_cpu: Duration,
    pub peak_rss_kib: u64,
}

/// The daemon's nice value in the second storm: it shows whether events are lost because
/// the daemon is slow or because the storm's threads leave it too little of the CPUs.
pub const STORM_NICE: i32 = -10;

fn storm(settings: &Settings, tools: &Tools) -> Result<Storm> {
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
        "  nice {}: {:.0} resets/s, {} events, {} lost, daemon CPU {:.2} s",
        nice.unwrap_or(0),
        resets.per_second(),
        stats.events,
        stats.kernel_lost,
        daemon_cpu.as_secs_f64()
    );
    Ok(StormRun {
        resets,
        daemon: stats,
        daemon_cpu,
        peak_rss_kib,
    })
}

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

fn programs(settings: &Settings, tools: &Tools) -> Result<Programs> {
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

/// Workload 4 results.
#[derive(Debug, Clone, Default)]
pub struct Idle {
    pub connections: usize,
    pub processes: usize,
    pub open_time: Duration,
    pub rss_before_kib: u64,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    /// (map name, bytes of locked memory).
    pub maps: Vec<(String, u64)>,
    pub daemon: DaemonStats,
}

/// How long the idle connections may take to open.
const IDLE_OPEN_LIMIT: Duration = Duration::from_secs(180);

fn idle(settings: &Settings, tools: &Tools) -> Result<Idle> {
    interrupt::check()?;
    let count = settings.idle_connections as usize;
    println!("==> workload 4: {count} established idle connections");
    let daemon = Daemon::start(&tools.daemon)?;
    let pid = daemon.pid();
    host::wait_until_idle(pid, Duration::from_millis(300), Duration::from_secs(5))?;
    let rss_before_kib = host::status_kib(pid, "VmRSS")?;
    let holders = IdleHolders::open(count, IDLE_OPEN_LIMIT)?;
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
        processes: holders.processes,
        open_time: holders.elapsed,
        rss_before_kib,
        rss_kib,
        peak_rss_kib,
        maps,
        daemon: DaemonStats::default(),
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

/// Options of the hidden `bench-hold` helper.
#[derive(Args, Debug)]
pub struct HoldArgs {
    /// Connections to open and hold.
    #[arg(long)]
    connections: usize,
    /// Source address of the client ends.
    #[arg(long)]
    source: std::net::Ipv4Addr,
    /// Seconds the connections may take to open.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    time_limit: Duration,
}

/// How long a helper holds its connections if the bench never stops it.
const HOLD_LIMIT: Duration = Duration::from_secs(900);

/// `xtask bench-hold`: opens the connections, says `ready N`, and holds them until killed.
pub fn hold(args: &HoldArgs) -> Result<()> {
    let held = load::IdleConnections::open(args.connections, args.source, args.time_limit)?;
    println!("ready {}", held.len());
    std::io::Write::flush(&mut std::io::stdout()).context("cannot write to stdout")?;
    std::thread::sleep(HOLD_LIMIT);
    Ok(())
}

const BEGIN: &str =
    "<!-- bench:begin (written by `cargo xtask bench`; edit outside the markers) -->";
const END: &str = "<!-- bench:end -->";

/// Replaces the generated part of the results file, keeping what is written around it.
fn write_results(path: &Path, generated: &str) -> Result<()> {
    let existing = match fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    let text = splice(existing.as_deref(), generated)?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn splice(existing: Option<&str>, generated: &str) -> Result<String> {
    let block = format!("{BEGIN}\n{generated}{END}\n");
    let Some(existing) = existing else {
        return Ok(format!("# Benchmarks\n\n{block}"));
    };
    let (Some(start), Some(end)) = (existing.find(BEGIN), existing.find(END)) else {
        bail!(
            "the results file has no bench markers; add `{BEGIN}` and `{END}` where the figures go"
        );
    };
    if end < start {
        bail!("the results file's bench markers are out of order");
    }
    let after = &existing[end + END.len()..];
    let after = after.strip_prefix('\n').unwrap_or(after);
    Ok(format!("{}{block}{after}", &existing[..start]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_bounded() {
        assert_eq!(parse_seconds("2.5"), Ok(Duration::from_millis(2500)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-3").is_err());
        assert!(parse_seconds("long").is_err());
        assert!(parse_seconds("NaN").is_err());
    }

    #[test]
    fn splices_the_generated_block() {
        let fresh = splice(None, "figures\n").unwrap();
        assert!(fresh.starts_with("# Benchmarks\n"));
        assert!(fresh.contains("figures\n<!-- bench:end -->"));
        let edited = fresh.replace("# Benchmarks\n", "# Benchmarks\n\nintro\n") + "\nanalysis\n";
        let again = splice(Some(&edited), "new\n").unwrap();
        assert!(again.contains("intro\n"));
        assert!(again.ends_with("new\n<!-- bench:end -->\n\nanalysis\n"));
        assert_eq!(splice(Some(&again), "new\n").unwrap(), again);
        assert!(!again.contains("figures"));
        assert!(splice(Some("no markers"), "x").is_err());
    }
}
