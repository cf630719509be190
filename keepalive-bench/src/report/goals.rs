//! The figures judged against the goals of issue 6: one row per figure, with its goal and
//! whether it was met.

use std::time::Duration;

use crate::bpf::EMPTY_PROGRAM;
use crate::burst::Burst;
use crate::churn::{Churn, Mode};
use crate::idle::Idle;
use crate::load::per_second;
use crate::programs::{Programs, STREAM_EMPTY_FIRST, STREAM_EMPTY_SECOND};
use crate::storm::{STORM_NICE, Storm, StormRun};

/// Churn with the observer, as a share of churn without.
const CHURN_RATIO_GOAL: f64 = 0.97;
/// The segment program's per-packet time, as a multiple of the empty program's.
const EARLY_EXIT_GOAL: f64 = 1.10;
/// Every other program, per run.
const PROGRAM_NS_GOAL: f64 = 150.0;
/// Daemon CPU per event delivered.
const CPU_PER_EVENT_GOAL: Duration = Duration::from_micros(2);
/// Daemon RSS with the idle connections open.
const RSS_GOAL_KIB: u64 = 32 * 1024;
/// Records per healthy churned connection: a connection that opens, talks and closes
/// cleanly sends nothing.
const EVENTS_PER_CONNECTION_GOAL: f64 = 0.05;
/// Fewer runs than this in a workload are too few to judge a program's cost by.
const MIN_RUNS: u64 = 1000;
/// The per-packet program, compared with the empty one on the stream, whose segments almost
/// never carry SYN or RST.
const SEGMENT_PROGRAM: &str = "segment_ttl";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Status {
    Met,
    Missed,
    /// A figure without a goal of its own.
    Info,
}

impl Status {
    fn judge(met: bool) -> Self {
        if met { Status::Met } else { Status::Missed }
    }

    pub(super) fn word(self) -> &'static str {
        match self {
            Status::Met => "met",
            Status::Missed => "MISSED",
            Status::Info => "",
        }
    }
}

pub(super) struct Row {
    pub(super) figure: String,
    pub(super) value: String,
    pub(super) goal: String,
    pub(super) status: Status,
}

impl Row {
    fn info(figure: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            figure: figure.into(),
            value: value.into(),
            goal: String::new(),
            status: Status::Info,
        }
    }

    fn goal(
        figure: impl Into<String>,
        value: impl Into<String>,
        goal: impl Into<String>,
        met: bool,
    ) -> Self {
        Self {
            figure: figure.into(),
            value: value.into(),
            goal: goal.into(),
            status: Status::judge(met),
        }
    }
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

fn churn_median(churn: &Churn, mode: Mode) -> Option<f64> {
    median(
        churn
            .runs
            .iter()
            .filter(|(_, m, _)| *m == mode)
            .map(|(_, _, outcome)| outcome.per_second())
            .collect(),
    )
}

pub(super) fn churn_rows(churn: &Churn, rows: &mut Vec<Row>) {
    let a = churn_median(churn, Mode::None);
    let b = churn_median(churn, Mode::Daemon);
    let c = churn_median(churn, Mode::Bpftrace);
    for (mode, value) in [(Mode::None, a), (Mode::Daemon, b), (Mode::Bpftrace, c)] {
        rows.push(Row::info(
            format!("churn {} (median)", mode.label()),
            value.map_or_else(|| "-".to_owned(), |v| format!("{v:.0} conn/s")),
        ));
    }
    let errors: u64 = churn.runs.iter().map(|(_, _, o)| o.errors).sum();
    rows.push(Row::info("churn errors (all rounds)", errors.to_string()));
    if let (Some(a), Some(b), Some(c)) = (a, b, c)
        && a > 0.0
    {
        let (ba, ca) = (b / a, c / a);
        rows.push(Row::goal(
            "churn b/a",
            format!("{ba:.3}"),
            format!("≥ {CHURN_RATIO_GOAL}"),
            ba >= CHURN_RATIO_GOAL,
        ));
        rows.push(Row::goal(
            "churn c/a",
            format!("{ca:.3}"),
            "b/a > c/a",
            ba > ca,
        ));
    }
    rows.push(Row::info(
        "churn b: events received by the daemon / lost",
        format!("{} / {}", churn.daemon_events, churn.daemon_lost),
    ));
    let connections: u64 = churn
        .runs
        .iter()
        .filter(|(_, mode, _)| *mode == Mode::Daemon)
        .map(|(_, _, outcome)| outcome.done)
        .sum();
    if let (Ok(connections), Ok(events)) = (
        u32::try_from(connections),
        u32::try_from(churn.daemon_events),
    ) && connections > 0
        && events > 0
    {
        rows.push(Row::info(
            "churn b: daemon CPU per connection / per event",
            format!(
                "{:.2} µs / {:.2} µs",
                (churn.daemon_cpu / connections).as_secs_f64() * 1e6,
                (churn.daemon_cpu / events).as_secs_f64() * 1e6
            ),
        ));
    }
    if connections > 0 {
        let per_connection = churn.daemon_events as f64 / connections as f64;
        rows.push(Row::goal(
            "churn b: events per connection",
            format!("{per_connection:.4}"),
            format!("≤ {EVENTS_PER_CONNECTION_GOAL}"),
            per_connection <= EVENTS_PER_CONNECTION_GOAL,
        ));
    }
    rows.push(Row::info(
        format!(
            "churn c: tracepoint hits counted ({} probes)",
            churn.bpftrace_probes
        ),
        churn.bpftrace_hits.to_string(),
    ));
}

pub(super) fn storm_rows(storm: &Storm, rows: &mut Vec<Row>) {
    let run = &storm.default;
    rows.push(Row::info(
        "reset storm: resets/s (with the daemon)",
        format!("{:.0}", run.resets.per_second()),
    ));
    rows.push(Row::info(
        "reset storm: events delivered to userspace/s",
        format!("{:.0}", per_second(run.daemon.events, run.resets.elapsed)),
    ));
    rows.push(Row::goal(
        "reset storm: events lost (kernel counter)",
        format!(
            "{} of {}",
            run.daemon.kernel_lost,
            run.daemon.events + run.daemon.kernel_lost
        ),
        "0",
        run.daemon.kernel_lost == 0,
    ));
    match cpu_per_event(run) {
        Some(per_event) => rows.push(Row::goal(
            "reset storm: daemon CPU per event",
            format!("{:.2} µs", per_event.as_secs_f64() * 1e6),
            format!("≤ {} µs", CPU_PER_EVENT_GOAL.as_secs_f64() * 1e6),
            per_event <= CPU_PER_EVENT_GOAL,
        )),
        None => rows.push(Row::info("reset storm: daemon CPU per event", "no events")),
    }
    rows.push(Row::info(
        "reset storm: daemon CPU / findings printed",
        format!(
            "{:.2} s / {}",
            run.daemon_cpu.as_secs_f64(),
            run.daemon.findings
        ),
    ));
    rows.push(Row::info(
        "reset storm: daemon peak RSS (VmHWM)",
        mib(run.peak_rss_kib),
    ));
    let reniced = &storm.reniced;
    rows.push(Row::info(
        format!("reset storm, daemon at nice {STORM_NICE}: resets/s, events/s, lost"),
        format!(
            "{:.0}, {:.0}, {} of {}",
            reniced.resets.per_second(),
            per_second(reniced.daemon.events, reniced.resets.elapsed),
            reniced.daemon.kernel_lost,
            reniced.daemon.events + reniced.daemon.kernel_lost
        ),
    ));
    if let Some(per_event) = cpu_per_event(reniced) {
        rows.push(Row::info(
            format!("reset storm, daemon at nice {STORM_NICE}: CPU per event"),
            format!("{:.2} µs", per_event.as_secs_f64() * 1e6),
        ));
    }
}

fn cpu_per_event(run: &StormRun) -> Option<Duration> {
    let events = u32::try_from(run.daemon.events).ok().filter(|&n| n > 0)?;
    Some(run.daemon_cpu / events)
}

/// A program's average run time in a workload, when it ran at least [`MIN_RUNS`] times.
fn ns_per_run(programs: &Programs, workload: &str, program: &str) -> Option<f64> {
    let run = programs
        .workloads
        .iter()
        .find(|w| w.name == workload)?
        .runs
        .iter()
        .find(|(name, _)| name == program)?
        .1;
    if run.run_cnt < MIN_RUNS {
        return None;
    }
    run.ns_per_run()
}

pub(super) fn program_rows(programs: &Programs, rows: &mut Vec<Row>) {
    let ns = |workload, program| ns_per_run(programs, workload, program);
    if let (Some(empty_first), Some(segment_second), Some(empty_second), Some(segment_first)) = (
        ns(STREAM_EMPTY_FIRST, EMPTY_PROGRAM),
        ns(STREAM_EMPTY_FIRST, SEGMENT_PROGRAM),
        ns(STREAM_EMPTY_SECOND, EMPTY_PROGRAM),
        ns(STREAM_EMPTY_SECOND, SEGMENT_PROGRAM),
    ) {
        // Each program ran once first and once second in the cgroup's list.
        let (empty, segment) = (
            (empty_first + empty_second) / 2.0,
            (segment_first + segment_second) / 2.0,
        );
        rows.push(Row::info(
            format!("{EMPTY_PROGRAM} per packet (stream; run first / second)"),
            format!("{empty_first:.1} / {empty_second:.1} ns"),
        ));
        rows.push(Row::goal(
            format!("{SEGMENT_PROGRAM} per packet (stream, early exit; run first / second)"),
            format!(
                "{segment_first:.1} / {segment_second:.1} ns ({:+.0} %)",
                (segment / empty - 1.0) * 100.0
            ),
            format!("≤ empty + {:.0} %", (EARLY_EXIT_GOAL - 1.0) * 100.0),
            segment <= empty * EARLY_EXIT_GOAL,
        ));
    }
    // Every other program: its most expensive workload.
    let mut names: Vec<&str> = programs
        .workloads
        .iter()
        .flat_map(|w| w.runs.iter().map(|(name, _)| name.as_str()))
        .filter(|name| *name != SEGMENT_PROGRAM && *name != EMPTY_PROGRAM)
        .collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let worst = programs
            .workloads
            .iter()
            .filter_map(|w| ns_per_run(programs, w.name, name).map(|ns| (ns, w.name)))
            .max_by(|x, y| x.0.total_cmp(&y.0));
        match worst {
            Some((ns, workload)) => rows.push(Row::goal(
                format!("{name} per run (worst: {workload})"),
                format!("{ns:.1} ns"),
                format!("≤ {PROGRAM_NS_GOAL:.0} ns"),
                ns <= PROGRAM_NS_GOAL,
            )),
            None => rows.push(Row::info(
                format!("{name} per run"),
                format!("< {MIN_RUNS} runs in every workload"),
            )),
        }
    }
    if let Some(ns) = programs
        .workloads
        .iter()
        .filter_map(|w| ns_per_run(programs, w.name, SEGMENT_PROGRAM))
        .max_by(f64::total_cmp)
    {
        rows.push(Row::info(
            format!("{SEGMENT_PROGRAM} per packet (worst workload)"),
            format!("{ns:.1} ns"),
        ));
    }
}

pub(super) fn idle_rows(idle: &Idle, rows: &mut Vec<Row>) {
    rows.push(Row::info(
        "idle: connections established",
        format!(
            "{} in {:.1} s ({} processes)",
            idle.connections,
            idle.open_time.as_secs_f64(),
            idle.processes
        ),
    ));
    rows.push(Row::info(
        "idle: daemon RSS before the connections",
        mib(idle.rss_before_kib),
    ));
    rows.push(Row::goal(
        format!("idle: daemon RSS with {} connections", idle.connections),
        mib(idle.rss_kib),
        format!("≤ {}", mib(RSS_GOAL_KIB)),
        idle.rss_kib <= RSS_GOAL_KIB,
    ));
    rows.push(Row::info(
        "idle: daemon peak RSS (VmHWM)",
        mib(idle.peak_rss_kib),
    ));
    let maps: u64 = idle.maps.iter().map(|(_, bytes)| bytes).sum();
    rows.push(Row::info(
        format!("idle: kernel maps memory ({} maps)", idle.maps.len()),
        mib(maps / 1024),
    ));
    let observer_kib = idle.slab_with_kib.saturating_sub(idle.slab_without_kib);
    rows.push(Row::info(
        "idle: kernel slab per connection without / with the daemon (both ends on this host)",
        format!(
            "{:.0} B / {:.0} B: the observer adds {:.0} B",
            per_connection_bytes(idle.slab_without_kib, idle.connections),
            per_connection_bytes(idle.slab_with_kib, idle.connections),
            per_connection_bytes(observer_kib, idle.connections)
        ),
    ));
    rows.push(Row::goal(
        "idle: events received by the daemon / lost",
        format!("{} / {}", idle.daemon.events, idle.daemon.kernel_lost),
        "0 lost",
        idle.daemon.kernel_lost == 0,
    ));
}

fn per_connection_bytes(kib: u64, connections: usize) -> f64 {
    if connections == 0 {
        return 0.0;
    }
    kib as f64 * 1024.0 / connections as f64
}

pub(super) fn burst_rows(burst: &Burst, rows: &mut Vec<Row>) {
    rows.push(Row::info(
        "burst: linger-0 closes / refused connects (one loop)",
        format!(
            "{} / {} in {:.1} s",
            burst.aborts.done,
            burst.refusals.done,
            burst.aborts.elapsed.as_secs_f64()
        ),
    ));
    rows.push(Row::goal(
        "burst: RSTs reported (records + refusals counted) / kernel TcpOutRsts delta",
        format!(
            "{} ({} + {}) / {}",
            burst.reported(),
            burst.daemon.events_by_kind.reset_sent,
            burst.daemon.syn_refusals,
            burst.out_rsts
        ),
        "all",
        burst.reported() >= burst.out_rsts && burst.daemon.kernel_lost == 0,
    ));
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(Vec::new()), None);
    }

    #[test]
    fn cpu_per_event_needs_events() {
        let mut run = StormRun {
            daemon_cpu: Duration::from_millis(10),
            ..StormRun::default()
        };
        assert_eq!(cpu_per_event(&run), None);
        run.daemon.events = 10_000;
        assert_eq!(cpu_per_event(&run), Some(Duration::from_micros(1)));
    }
}
