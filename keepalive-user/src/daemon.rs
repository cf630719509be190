//! The live daemon: load and attach, then stream events until SIGINT or SIGTERM.

use anyhow::Context as _;
use keepalive_observer::{
    kernel::observer::{LoadOptions, Observer},
    sink::{
        Fanout, HookLine, HookStatus, JournaldSink, JsonSink, Sink, SinkError, StartupReport,
        TextSink, WallClock,
    },
};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::{Format, Journald, RunArgs},
    pipeline::Pipeline,
};

/// Runs until interrupted; returns after detaching everything and printing the totals.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let clock = WallClock::now().context("reading the clocks")?;
    let mut observer = Observer::load(&LoadOptions {
        idle_floor: args.idle_floor,
        cgroup: args.cgroup.clone(),
    })?;
    let sinks = open_sinks(args.format, args.journald, clock)?;
    let mut pipeline = Pipeline::new(sinks, observer.decode.clone(), !args.findings_only);
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    pipeline.ready(&startup_report(&observer))?;
    let mut stats = (!args.stats_interval.is_zero()).then(|| {
        tokio::time::interval_at(
            tokio::time::Instant::now() + args.stats_interval,
            args.stats_interval,
        )
    });
    let mut journal_failures: u64 = 0;
    loop {
        let mut print_stats = false;
        tokio::select! {
            drained = observer.next_batch(|bytes| pipeline.on_record(bytes)) => {
                drained.context("reading the ring buffer")?;
            }
            _ = tick(&mut stats) => print_stats = true,
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
        match pipeline.take_error() {
            None => {}
            Some(SinkError::StdoutClosed) => break,
            // The journal restarting must not stop the observer: stdout still has the record.
            Some(SinkError::JournalSend(error)) => {
                journal_failures += 1;
                if journal_failures.is_power_of_two() {
                    tracing::warn!("journald did not take {journal_failures} record(s): {error}");
                }
            }
            Some(error) => return Err(error.into()),
        }
        if print_stats {
            pipeline.loss.kernel_lost = observer.lost_events();
            pipeline.stats()?;
        }
    }
    pipeline.loss.kernel_lost = observer.lost_events();
    drop(observer);
    match pipeline.stats() {
        Ok(()) | Err(SinkError::StdoutClosed) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// stdout in the chosen format, plus journald when asked for or (by default) when running.
pub fn open_sinks(
    format: Format,
    journald: Journald,
    clock: WallClock,
) -> anyhow::Result<Box<dyn Sink + Send>> {
    let stdout: Box<dyn Sink + Send> = match format {
        Format::Text => Box::new(TextSink::new(std::io::stdout(), clock)),
        Format::Json => Box::new(JsonSink::new(std::io::stdout(), clock)),
    };
    let journal = match journald {
        Journald::Off => None,
        Journald::Auto => JournaldSink::open(clock).unwrap_or_else(|error| {
            tracing::warn!("not logging to journald: {error}");
            None
        }),
        Journald::On => Some(JournaldSink::open(clock)?.context(
            "--journald on, but the journal is not running (no /run/systemd/journal/socket)",
        )?),
    };
    Ok(match journal {
        Some(journal) => Box::new(Fanout::new(vec![stdout, Box::new(journal)])),
        None => stdout,
    })
}

fn startup_report(observer: &Observer) -> StartupReport {
    let hooks = observer
        .hooks
        .iter()
        .map(|outcome| HookLine {
            signal: outcome.signal.to_owned(),
            hook: outcome.hook.clone(),
            status: match &outcome.attached {
                Ok(()) => HookStatus::Attached,
                Err(why) => HookStatus::Unavailable { why: why.clone() },
            },
        })
        .collect();
    let missing_signals = observer
        .hooks
        .iter()
        .filter(|outcome| outcome.attached.is_err())
        .map(|outcome| format!("{}: {}", outcome.signal, outcome.without_it))
        .collect();
    StartupReport {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|release| release.trim().to_owned())
            .unwrap_or_default(),
        hooks,
        missing_signals,
    }
}
