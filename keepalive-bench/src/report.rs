//! The figures, judged against the goals of issue 6 (`goals`), as a terminal table and as
//! Markdown.

use std::fmt::Write as _;

mod goals;

use self::goals::{Row, burst_rows, churn_rows, idle_rows, program_rows, storm_rows};
use crate::Settings;
use crate::bpf::RunTime;
use crate::burst::Burst;
use crate::churn::{Churn, Mode};
use crate::daemon::Daemon;
use crate::host::Machine;
use crate::idle::Idle;
use crate::procs::TRACEPOINTS;
use crate::programs::{Programs, STREAM_EMPTY_FIRST, STREAM_EMPTY_SECOND};
use crate::storm::Storm;

pub struct Results {
    machine: Machine,
    settings: Settings,
    pub churn: Option<Churn>,
    pub storm: Option<Storm>,
    pub programs: Option<Programs>,
    pub idle: Option<Idle>,
    pub million: Option<Idle>,
    pub burst: Option<Burst>,
}

impl Results {
    pub fn new(machine: Machine, settings: Settings) -> Self {
        Self {
            machine,
            settings,
            churn: None,
            storm: None,
            programs: None,
            idle: None,
            million: None,
            burst: None,
        }
    }

    fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        if let Some(churn) = &self.churn {
            churn_rows(churn, &mut rows);
        }
        if let Some(storm) = &self.storm {
            storm_rows(storm, &mut rows);
        }
        if let Some(programs) = &self.programs {
            program_rows(programs, &mut rows);
        }
        for idle in self.idle.iter().chain(&self.million) {
            idle_rows(idle, &mut rows);
        }
        if let Some(burst) = &self.burst {
            burst_rows(burst, &mut rows);
        }
        rows
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let rows = self.rows();
        let width = |f: fn(&Row) -> &str, title: &str| {
            rows.iter()
                .map(|row| f(row).chars().count())
                .chain([title.len()])
                .max()
                .unwrap_or(0)
        };
        let figure_width = width(|row| &row.figure, "figure");
        let value_width = width(|row| &row.value, "value");
        let goal_width = width(|row| &row.goal, "goal");
        let mut out = format!(
            "{:<figure_width$}  {:>value_width$}  {:<goal_width$}  status\n",
            "figure", "value", "goal"
        );
        for row in &rows {
            let _ = writeln!(
                out,
                "{:<figure_width$}  {:>value_width$}  {:<goal_width$}  {}",
                row.figure,
                row.value,
                row.goal,
                row.status.word()
            );
        }
        out
    }

    /// The generated part of docs/benchmarks.md.
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let s = &self.settings;
        let mut out = String::new();
        let _ = writeln!(out, "## Run\n");
        let _ = writeln!(out, "| | |\n|---|---|");
        let _ = writeln!(out, "| date | {} |", m.date);
        let _ = writeln!(
            out,
            "| machine | {} CPUs ({}), {:.1} GiB memory |",
            m.cpus,
            m.cpu_model,
            m.memory_mib as f64 / 1024.0
        );
        let _ = writeln!(out, "| kernel | {} |", m.kernel);
        let _ = writeln!(out, "| load average at start | {} |", m.loadavg);
        let others = if m.other_observers.is_empty() {
            "none".to_owned()
        } else {
            m.other_observers.join(", ")
        };
        let _ = writeln!(out, "| other observers running at start | {others} |");
        for (name, version) in &m.versions {
            let _ = writeln!(out, "| {name} | {version} |");
        }
        let _ = writeln!(
            out,
            "| settings | `--duration {} --rounds {} --workers {} --storm-duration {} \
             --program-duration {} --idle-connections {}{}` |",
            s.duration.as_secs_f64(),
            s.rounds,
            s.workers,
            s.storm_duration.as_secs_f64(),
            s.program_duration.as_secs_f64(),
            s.idle_connections,
            if s.million { " --million" } else { "" }
        );
        let _ = writeln!(out, "| daemon flags | `{}` |", Daemon::flags());
        let _ = writeln!(out, "| daemon hooks | {} |", m.daemon_hooks.join("<br>"));
        let tracepoints: Vec<String> = TRACEPOINTS
            .iter()
            .map(|(category, name)| format!("{category}:{name}"))
            .collect();
        let _ = writeln!(
            out,
            "| bpftrace script | `count()` on tracepoint {} |",
            tracepoints.join(", ")
        );

        let _ = writeln!(out, "\n## Figures and goals\n");
        let _ = writeln!(
            out,
            "| figure | value | goal | status |\n|---|---:|---|---|"
        );
        for row in self.rows() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                row.figure,
                row.value,
                row.goal,
                row.status.word()
            );
        }
        if let Some(churn) = &self.churn {
            churn_rounds(churn, &mut out);
        }
        if let Some(programs) = &self.programs {
            program_table(programs, &mut out);
        }
        for idle in self.idle.iter().chain(&self.million) {
            map_table(idle, &mut out);
        }
        out
    }
}

fn churn_rounds(churn: &Churn, out: &mut String) {
    let _ = writeln!(out, "\n## Churn rounds (connections per second)\n");
    let _ = write!(out, "| round |");
    for mode in Mode::ALL {
        let _ = write!(out, " {} |", mode.label());
    }
    let _ = writeln!(out, "\n|---|---:|---:|---:|");
    let rounds = churn
        .runs
        .iter()
        .map(|(round, _, _)| *round)
        .max()
        .unwrap_or(0);
    for round in 1..=rounds {
        let _ = write!(out, "| {round} |");
        for mode in Mode::ALL {
            let cell = churn
                .runs
                .iter()
                .find(|(r, m, _)| *r == round && *m == mode)
                .map_or_else(
                    || "-".to_owned(),
                    |(_, _, o)| format!("{:.0}", o.per_second()),
                );
            let _ = write!(out, " {cell} |");
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "\nModes run in rotating order (round 1: a b c, round 2: b c a, …)."
    );
}

fn program_table(programs: &Programs, out: &mut String) {
    let _ = writeln!(
        out,
        "\n## Per-program run time (ns per run, with runs in brackets; bpf_stats on)\n"
    );
    let _ = write!(out, "| program |");
    for workload in &programs.workloads {
        let unit = match workload.name {
            STREAM_EMPTY_FIRST | STREAM_EMPTY_SECOND => "round trips/s",
            "churn" => "conn/s",
            _ => "resets/s",
        };
        let _ = write!(
            out,
            " {} ({:.0} {unit}) |",
            workload.name,
            workload.outcome.per_second()
        );
    }
    let _ = write!(out, "\n|---|");
    for _ in &programs.workloads {
        let _ = write!(out, "---:|");
    }
    let _ = writeln!(out);
    let mut names: Vec<&str> = programs
        .workloads
        .iter()
        .flat_map(|w| w.runs.iter().map(|(name, _)| name.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let _ = write!(out, "| {name} |");
        for workload in &programs.workloads {
            let run = workload
                .runs
                .iter()
                .find(|(other, _)| other == name)
                .map_or_else(RunTime::default, |(_, run)| *run);
            let cell = run
                .ns_per_run()
                .map_or_else(|| "-".to_owned(), |ns| format!("{ns:.1} ({})", run.run_cnt));
            let _ = write!(out, " {cell} |");
        }
        let _ = writeln!(out);
    }
}

fn map_table(idle: &Idle, out: &mut String) {
    let _ = writeln!(
        out,
        "\n## Kernel maps with {} idle connections (memlock from fdinfo)\n",
        idle.connections
    );
    let _ = writeln!(out, "| map | bytes |\n|---|---:|");
    for (name, bytes) in &idle.maps {
        let _ = writeln!(out, "| {name} | {bytes} |");
    }
}
