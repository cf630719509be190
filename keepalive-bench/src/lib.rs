//! `cargo xtask bench` (binary `keepalive-bench`): what keepalive-observer costs the host,
//! measured side by side in one run (issue 6). Four workloads on loopback, one module each:
//! 1. `churn`: connection churn, interleaved rounds with no observer, with the daemon, and
//!    with a bpftrace script counting on the same tracepoints;
//! 2. `storm`: a reset storm: events per second delivered, events lost, daemon CPU per event,
//!    peak RSS;
//! 3. `programs`: per-program run time with `kernel.bpf_stats_enabled=1`, next to an empty
//!    cgroup_skb program measured the same way;
//! 4. `idle`: many idle connections: daemon RSS, kernel map memory, and the kernel memory the
//!    observer adds per connection (with `--million`, again with 1 000 000 connections);
//! 5. `burst`: 20 000 linger-0 closes and 20 000 refused connects from one loop: every RST
//!    the kernel counts must be reported.
//!
//! Prints a table at the end (`report`) and writes it, with the machine's description, into
//! `docs/benchmarks.md` between markers, keeping the hand-written analysis around them.

mod bpf;
mod burst;
mod churn;
mod daemon;
mod flood;
mod hold;
mod host;
mod idle;
mod load;
mod net;
mod procs;
mod programs;
mod report;
mod results;
mod soak;
mod storm;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use keepalive_lab::{interrupt, is_root, workspace};

use self::daemon::Daemon;
pub use self::hold::{HoldArgs, hold};
use self::host::{Machine, Tracefs};

/// Measure overhead and throughput on loopback, with and without observers (root).
#[derive(Parser, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub helper: Option<Helper>,
    #[command(flatten)]
    pub settings: Settings,
}

/// The bench's own helper processes.
#[derive(Subcommand, Debug)]
pub enum Helper {
    /// Internal to the bench: holds idle loopback connections in a helper process.
    #[command(hide = true)]
    Hold(HoldArgs),
}

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
    /// Also hold 1 000 000 idle connections (2 000 000 sockets on loopback: several minutes and
    /// about 8 GiB of kernel memory).
    #[arg(long)]
    pub million: bool,
    /// Seconds of each flood (SYNs to an open port, to a closed port, spoofed RSTs).
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = parse_seconds)]
    pub flood: Duration,
    /// Seconds of the soak: connection churn and resets while the daemon's RSS and open
    /// descriptors are sampled (longer runs find slower leaks).
    #[arg(long, value_name = "SECONDS", default_value = "20", value_parser = parse_seconds)]
    pub soak: Duration,
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
    /// Workload 5: a burst of resets from one loop.
    Burst,
    /// Floods from the lab's namespaces: records per packet, daemon CPU and memory (printed,
    /// not written to the results file).
    Flood,
    /// The soak: churn and resets for `--soak` seconds, the daemon's RSS and descriptors over
    /// time (printed, not written to the results file).
    Soak,
}

/// Idle connections of `--million`.
const MILLION: usize = 1_000_000;

/// Seconds as every tool of the project takes them, bounded to what a bench run can use.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    let duration = keepalive_schema::seconds::parse_seconds(text)?;
    if !(0.1..=3600.0).contains(&duration.as_secs_f64()) {
        return Err(format!("`{text}`: expected 0.1 to 3600 seconds"));
    }
    Ok(duration)
}

/// Everything the bench needs from the machine, found once.
struct Tools {
    daemon: PathBuf,
    bpftrace: PathBuf,
    bpftool: PathBuf,
    cgroup: PathBuf,
    tracefs: Tracefs,
}

/// Refuses to start without root, before anything is built.
pub fn preflight() -> Result<()> {
    if !is_root() {
        bail!(
            "cargo xtask bench needs root: it loads eBPF programs, enables kernel.bpf_stats_enabled \
             and may mount tracefs; run it as root (e.g. `sudo -E cargo xtask bench`)"
        );
    }
    Ok(())
}

/// Runs the phases `settings` select against the release build of the daemon.
pub fn run(settings: &Settings) -> Result<()> {
    preflight()?;
    interrupt::install()?;
    let tools = Tools {
        daemon: keepalive_lab::daemon::built(false)?,
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
        results.churn = Some(churn::run(settings, &tools)?);
    }
    if wants(Phase::Storm) {
        results.storm = Some(storm::run(settings, &tools)?);
    }
    if wants(Phase::Programs) {
        results.programs = Some(programs::run(settings, &tools)?);
    }
    if wants(Phase::Idle) {
        results.idle = Some(idle::run(settings.idle_connections as usize, &tools)?);
        if settings.million {
            results.million = Some(idle::run(MILLION, &tools)?);
        }
    }
    if wants(Phase::Burst) {
        results.burst = Some(burst::run(&tools)?);
    }
    if wants(Phase::Flood) {
        flood::run(settings.flood, &tools)?;
    }
    if wants(Phase::Soak) {
        soak::run(settings.soak, settings.workers as usize, &tools)?;
    }
    println!("\n{}", results.table());
    if all {
        let path = workspace::root().join(&settings.output);
        results::write(&path, &results.markdown())?;
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
    let root = keepalive_lab::cgroup2_mount(&mounts)
        .map(PathBuf::from)
        .context(
            "no cgroup v2 mount: the daemon's segment program and the empty baseline need one",
        )?;
    bpf::check_cgroup(&root)?;
    Ok(root)
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
}
