//! The live daemon: load and attach, then stream events until SIGINT or SIGTERM.

use std::{fs::File, io::BufWriter, os::fd::AsFd};

use anyhow::Context as _;
use keepalive_observer::{
    correlate::{Correlator, CorrelatorConfig, KeepaliveSysctls},
    kernel::{
        hooks::{HookChoice, HookKind},
        observer::{LoadOptions, Observer},
    },
    metrics::{Metrics, server::MetricsServer},
    notify,
    record::{RecordHeader, Recorder},
    sink::{
        Fanout, HookLine, HookStatus, JournaldSink, JsonSink, Sink, SinkError, StartupReport,
        TextSink, WallClock,
    },
};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::{Format, Hooks, Journald, RunArgs},
    pipeline::{Pipeline, PipelineError},
    saver::Saver,
};

/// Runs until interrupted; returns after detaching everything and printing the totals.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let clock = WallClock::now().context("reading the clocks")?;
    let mut observer = Observer::load(&LoadOptions {
        idle_floor: args.idle_floor,
        cgroup: args.cgroup.clone(),
        hooks: match args.hooks {
            Hooks::Auto => HookChoice::Auto,
            Hooks::Tracepoint => HookChoice::Only(HookKind::Tracepoint),
            Hooks::Fentry => HookChoice::Only(HookKind::Fentry),
            Hooks::Kprobe => HookChoice::Only(HookKind::Kprobe),
        },
    })?;
    let sinks = open_sinks(args.format, args.journald, args.journald_events, clock)?;
    let sysctls = KeepaliveSysctls::read_host()?;
    let idle_expiry_floor_ms =
        u64::try_from(args.idle_expiry_floor.as_millis()).unwrap_or(u64::MAX);
    let recorder = match &args.record {
        Some(path) => {
            let file = File::create(path)
                .with_context(|| format!("creating the recording {}", path.display()))?;
            let header = RecordHeader::new(
                observer.decode.clone(),
                sysctls,
                idle_expiry_floor_ms,
                clock.offset_ns(),
            );
            Some(Recorder::new(BufWriter::new(file), &header)?)
        }
        None => None,
    };
    let mut correlator = Correlator::new(CorrelatorConfig {
        sysctls,
        idle_expiry_floor_ms,
        ..CorrelatorConfig::default()
    });
    let (mut saver, learned_state) = Saver::start(&args.state_dir, &mut correlator, clock)?;
    let metrics = match args.metrics {
        Some(addr) => Some(serve_metrics(addr, args.metrics_destinations).await?),
        None => None,
    };
    let mut pipeline = Pipeline::new(
        sinks,
        observer.decode.clone(),
        correlator,
        recorder,
        !args.findings_only,
    )
    .with_metrics(metrics);
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let report = startup_report(&observer, learned_state);
    if let Some(metrics) = pipeline.metrics() {
        metrics.startup(&report);
    }
    update_metrics(&mut pipeline, &observer);
    pipeline.ready(&report)?;
    if let Err(error) = notify::ready() {
        tracing::warn!("{error}");
    }
    // The correlator's clock: it releases held findings and forgets closed sockets on ticks.
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut stats = (!args.stats_interval.is_zero()).then(|| {
        tokio::time::interval_at(
            tokio::time::Instant::now() + args.stats_interval,
            args.stats_interval,
        )
    });
    let mut saves = tokio::time::interval_at(
        tokio::time::Instant::now() + args.state_interval,
        args.state_interval,
    );
    let mut journal_failures: u64 = 0;
    loop {
        let mut print_stats = false;
        tokio::select! {
            drained = observer.next_batch(|bytes| pipeline.on_record(bytes)) => {
                drained.context("reading the ring buffer")?;
            }
            _ = ticks.tick() => {
                pipeline.on_tick(monotonic_ns());
                update_metrics(&mut pipeline, &observer);
            }
            _ = tick(&mut stats) => print_stats = true,
            _ = saves.tick() => saver.save(pipeline.correlator()),
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
        pipeline.flush();
        match pipeline.take_error() {
            None => {}
            Some(PipelineError::Sink(SinkError::StdoutClosed)) => break,
            // The journal restarting must not stop the observer: stdout still has the record.
            Some(PipelineError::Sink(SinkError::JournalSend(error))) => {
                journal_failures += 1;
                if journal_failures.is_power_of_two() {
                    tracing::warn!("journald did not take {journal_failures} record(s): {error}");
                }
            }
            Some(error) => return Err(error.into()),
        }
        if print_stats {
            take_counters(&mut pipeline, &observer);
            pipeline.stats()?;
        }
    }
    if let Err(error) = notify::stopping() {
        tracing::warn!("{error}");
    }
    observer.drain_waiting(|bytes| pipeline.on_record(bytes));
    pipeline.finish();
    pipeline.flush();
    take_counters(&mut pipeline, &observer);
    drop(observer);
    saver.finish(pipeline.correlator());
    match pipeline.stats() {
        Ok(()) | Err(PipelineError::Sink(SinkError::StdoutClosed)) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Binds the metrics endpoint and serves it from a task of this runtime.
async fn serve_metrics(addr: std::net::SocketAddr, destinations: usize) -> anyhow::Result<Metrics> {
    let server = MetricsServer::bind(addr).await?;
    let metrics = Metrics::new(destinations);
    tokio::spawn(server.serve(metrics.registry()));
    Ok(metrics)
}

/// Brings the metrics that mirror totals kept elsewhere up to date (once a second).
fn update_metrics(pipeline: &mut Pipeline, observer: &Observer) {
    if pipeline.metrics().is_none() {
        return;
    }
    take_counters(pipeline, observer);
    if let Some(metrics) = pipeline.metrics() {
        metrics.totals(&pipeline.loss);
        metrics.ring_fill(observer.ring_fill());
    }
}

/// Copies what the kernel programs counted into the totals.
fn take_counters(pipeline: &mut Pipeline, observer: &Observer) {
    let counters = observer.counters();
    pipeline.loss.kernel_lost = counters.lost;
    pipeline.loss.syn_refusals = counters.syn_refusals;
    pipeline.loss.context_failures = counters.context_failures;
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`, so ticks and events agree.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write into; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// stdout in the chosen format, plus journald when asked for or (by default) when running:
/// findings only there, unless `journald_events`.
pub fn open_sinks(
    format: Format,
    journald: Journald,
    journald_events: bool,
    clock: WallClock,
) -> anyhow::Result<Box<dyn Sink + Send>> {
    let out = buffered_stdout().context("opening standard output")?;
    let stdout: Box<dyn Sink + Send> = match format {
        Format::Text => Box::new(TextSink::new(out, clock)),
        Format::Json => Box::new(JsonSink::new(out, clock)),
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
        Some(journal) => Box::new(Fanout::new(vec![
            stdout,
            Box::new(journal.with_events(journald_events)),
        ])),
        None => stdout,
    })
}

/// Standard output without the line buffering of `std::io::stdout()`, which writes at every
/// newline: the sinks flush once per ring-buffer batch.
pub fn buffered_stdout() -> std::io::Result<BufWriter<File>> {
    let fd = std::io::stdout().as_fd().try_clone_to_owned()?;
    Ok(BufWriter::with_capacity(STDOUT_BUFFER, File::from(fd)))
}

/// Output buffered between flushes, at most: a batch's worth of lines.
const STDOUT_BUFFER: usize = 1 << 16;

fn startup_report(observer: &Observer, learned_state: String) -> StartupReport {
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
        context: observer.context.describe(),
        learned_state,
    }
}
