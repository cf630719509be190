//! The live daemon: load and attach, then stream events until SIGINT or SIGTERM.

use std::{
    fs::File,
    io::BufWriter,
    os::fd::AsFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use keepalive_observer::{
    correlate::{Correlator, CorrelatorConfig, KeepaliveSysctls},
    kernel::{
        hooks::{HookChoice, HookKind},
        observer::{LoadError, LoadOptions, Observer, privileged},
    },
    metrics::{ConnectionGauges, Metrics, server::MetricsServer},
    notify,
    queue::DropCounter,
    record::RecordHeader,
    recording::Recording,
    sink::{
        Fanout, HookLine, HookStatus, JournaldSink, JsonSink, QueuedSink, Sink, SinkError,
        StartupReport, TextSink, WallClock,
    },
    sockets::{AuditOptions, Auditor, Filter},
    state::StateDir,
};
use tokio::{
    signal::unix::{SignalKind, signal},
    task::JoinHandle,
};

use crate::{
    cli::{Format, Hooks, Journald, RunArgs},
    drops::Drops,
    pipeline::{Pipeline, PipelineError},
    saver::Saver,
};

/// How long a start-up interrupted by a signal waits for the loader to stop at its next step
/// (the rest of a BTF parse, or one attach) and detach what it attached. Past it the process
/// exits anyway, which closes every descriptor and so detaches the rest as well.
const LOAD_STOP_WAIT: Duration = Duration::from_secs(5);

/// SIGINT or SIGTERM before the daemon was ready.
#[derive(Debug, thiserror::Error)]
#[error("{signal} while {phase}: stopped before observing; nothing it attached stays attached")]
pub struct Interrupted {
    /// `SIGINT` or `SIGTERM`.
    pub signal: &'static str,
    /// What start-up was doing.
    pub phase: String,
    /// The exit status to end with: 128 plus the signal's number, as a shell reports it.
    pub exit_status: u8,
}

/// How loading ended.
enum Start {
    /// Every hook the kernel offers is attached.
    Loaded(Box<Observer>),
    /// A signal came first: its name and number.
    Signal(&'static str, i32),
}

/// Runs until interrupted; returns after detaching everything and printing the totals.
pub async fn run(args: RunArgs, stderr_dropped: DropCounter) -> anyhow::Result<()> {
    // Before anything else: a signal during start-up then stops it with a message instead
    // of killing the process halfway through attaching.
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let clock = WallClock::now().context("reading the clocks")?;
    if !privileged() {
        return Err(LoadError::NotPrivileged.into());
    }
    // Locked before loading: a second daemon on the same directory is told at once.
    let state_dir = StateDir::open(&args.state_dir)?;
    let options = LoadOptions {
        idle_floor: args.idle_floor,
        cgroup: args.cgroup.clone(),
        hooks: match args.hooks {
            Hooks::Auto => HookChoice::Auto,
            Hooks::Tracepoint => HookChoice::Only(HookKind::Tracepoint),
            Hooks::Fentry => HookChoice::Only(HookKind::Fentry),
            Hooks::Kprobe => HookChoice::Only(HookKind::Kprobe),
        },
        filter: args.filter(),
        btf: args.btf.clone(),
        kallsyms: args.kallsyms.clone(),
        cancel: Arc::default(),
    };
    let cancel = Arc::clone(&options.cancel);
    // Parsing BTF and attaching take seconds: on a thread, so that signals are heard.
    let mut loading = tokio::task::spawn_blocking(move || Observer::load(&options));
    let start = tokio::select! {
        loaded = &mut loading => Start::Loaded(Box::new(
            loaded.context("the loading thread failed")??,
        )),
        _ = interrupt.recv() => Start::Signal("SIGINT", libc::SIGINT),
        _ = terminate.recv() => Start::Signal("SIGTERM", libc::SIGTERM),
    };
    let mut observer = match start {
        Start::Loaded(observer) => *observer,
        Start::Signal(signal, number) => {
            return Err(stop_loading(loading, &cancel, signal, number).await.into());
        }
    };
    let (sinks, mut drops) = open_sinks(args.format, args.journald, args.journald_events, clock)?;
    drops.watch("stderr", stderr_dropped);
    let sysctls = KeepaliveSysctls::read_host()?;
    let idle_expiry_floor_ms =
        u64::try_from(args.idle_expiry_floor.as_millis()).unwrap_or(u64::MAX);
    let recording = match &args.record {
        Some(path) => {
            let header = RecordHeader::new(
                observer.decode.clone(),
                sysctls,
                idle_expiry_floor_ms,
                clock.offset_ns(),
            );
            let recording = Recording::start(path, &header, args.record_limit)?;
            drops.watch("recording", recording.dropped());
            Some(recording)
        }
        None => None,
    };
    let mut correlator = Correlator::new(CorrelatorConfig {
        sysctls,
        idle_expiry_floor_ms,
        ..CorrelatorConfig::default()
    });
    let (mut saver, learned_state) = Saver::start(state_dir, &mut correlator, clock)?;
    let metrics = match args.metrics {
        Some(addr) => Some(serve_metrics(addr, args.metrics_destinations).await?),
        None => None,
    };
    let mut pipeline = Pipeline::new(
        sinks,
        observer.decode.clone(),
        correlator,
        recording,
        !args.findings_only,
    )
    .with_metrics(metrics)
    .with_filter(args.filter());
    let report = startup_report(&observer, learned_state, args.filter().describe());
    if let Some(metrics) = pipeline.metrics() {
        metrics.startup(&report);
        audit_sockets(
            metrics.connection_gauges(),
            args.state_dir.clone(),
            args.sockets_interval,
        )?;
    }
    update_metrics(&mut pipeline, &observer, &mut drops);
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
    // With another output taking the records, standard output closed by its reader is one
    // output lost (what it misses is counted as dropped), not a reason to stop observing.
    let other_outputs =
        args.record.is_some() || args.metrics.is_some() || drops.watches("journald");
    let mut stdout_closed = false;
    loop {
        let mut print_stats = false;
        tokio::select! {
            drained = observer.next_batch(|bytes| pipeline.on_record(bytes)) => {
                drained.context("reading the ring buffer")?;
            }
            _ = ticks.tick() => {
                pipeline.on_tick(monotonic_ns());
                update_metrics(&mut pipeline, &observer, &mut drops);
            }
            _ = tick(&mut stats) => print_stats = true,
            _ = saves.tick() => saver.save(pipeline.correlator()),
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
        pipeline.flush();
        match pipeline.take_error() {
            None => {}
            Some(PipelineError::Sink(SinkError::StdoutClosed)) if other_outputs => {
                if !stdout_closed {
                    stdout_closed = true;
                    tracing::warn!(
                        "standard output was closed by its reader; observing goes on for the \
                         other outputs, and what standard output misses is counted as dropped"
                    );
                }
            }
            Some(PipelineError::Sink(SinkError::StdoutClosed)) => break,
            // The journal restarting must not stop the observer: stdout still has the record.
            Some(PipelineError::Sink(SinkError::JournalSend(error))) => {
                journal_failures += 1;
                if journal_failures.is_power_of_two() {
                    tracing::warn!("journald did not take {journal_failures} record(s): {error}");
                }
            }
            // Nor a full disk: the recording stops, and what it misses is counted.
            Some(PipelineError::Record(error)) => {
                tracing::warn!("{error}; recording stopped, the observer goes on");
            }
            Some(error) => return Err(error.into()),
        }
        if print_stats {
            take_counters(&mut pipeline, &observer, &mut drops);
            pipeline.stats()?;
        }
    }
    if let Err(error) = notify::stopping() {
        tracing::warn!("{error}");
    }
    observer.drain_waiting(|bytes| pipeline.on_record(bytes));
    pipeline.finish();
    pipeline.flush();
    take_counters(&mut pipeline, &observer, &mut drops);
    drop(observer);
    saver.finish(pipeline.correlator());
    match pipeline.last_stats() {
        Ok(()) | Err(PipelineError::Sink(SinkError::StdoutClosed)) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Audits the host's sockets every `interval` on a thread of its own (it blocks on netlink,
/// the iterator and /proc, never the ring-buffer reader) and publishes the connections by
/// risk. Each audit holds the host's connections in memory (a few hundred bytes each) until
/// it is published.
fn audit_sockets(
    gauges: ConnectionGauges,
    state_dir: std::path::PathBuf,
    interval: std::time::Duration,
) -> anyhow::Result<()> {
    let options = AuditOptions {
        netns: None,
        windows: Vec::new(),
        state_dir,
        filter: Filter::default(),
    };
    std::thread::Builder::new()
        .name("socket-audit".to_owned())
        .spawn(move || {
            let mut auditor = Auditor::default();
            let mut failures: u64 = 0;
            loop {
                // The first audit loads BTF and the iterator: not while the daemon starts up.
                std::thread::sleep(interval);
                match auditor.audit(&options) {
                    Ok(audited) => gauges.publish(&audited.judged),
                    Err(error) => {
                        failures += 1;
                        if failures.is_power_of_two() {
                            tracing::warn!("socket audit failed ({failures} time(s)): {error}");
                        }
                    }
                }
            }
        })
        .context("starting the socket audit thread")?;
    Ok(())
}

/// Stops an interrupted start-up: the loader stops at its next step and drops (detaches)
/// what it attached; says what it was doing.
async fn stop_loading(
    loading: JoinHandle<Result<Observer, LoadError>>,
    cancel: &AtomicBool,
    signal: &'static str,
    number: i32,
) -> Interrupted {
    cancel.store(true, Ordering::Relaxed);
    let phase = match tokio::time::timeout(LOAD_STOP_WAIT, loading).await {
        Ok(Ok(Err(LoadError::Cancelled { phase }))) => phase,
        // It finished before it looked: dropping it here detaches everything.
        Ok(Ok(Ok(_observer))) => "finishing the start-up".to_owned(),
        Ok(Ok(Err(error))) => format!("loading, which failed: {error}"),
        Ok(Err(error)) => format!("loading, whose thread failed: {error}"),
        Err(_) => format!(
            "loading, which did not stop within {} s",
            LOAD_STOP_WAIT.as_secs()
        ),
    };
    Interrupted {
        signal,
        phase,
        exit_status: u8::try_from(128 + number).unwrap_or(u8::MAX),
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
fn update_metrics(pipeline: &mut Pipeline, observer: &Observer, drops: &mut Drops) {
    if pipeline.metrics().is_none() {
        return;
    }
    take_counters(pipeline, observer, drops);
    if let Some(metrics) = pipeline.metrics() {
        metrics.totals(&pipeline.loss);
        metrics.ring_fill(observer.ring_fill());
    }
}

/// Copies what the kernel programs counted and what the outputs dropped into the totals.
fn take_counters(pipeline: &mut Pipeline, observer: &Observer, drops: &mut Drops) {
    let counters = observer.counters();
    pipeline.loss.kernel_lost = counters.lost;
    pipeline.loss.syn_refusals = counters.syn_refusals;
    pipeline.loss.context_failures = counters.context_failures;
    pipeline.loss.filtered = counters.filtered;
    drops.update(&mut pipeline.loss);
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
/// findings only there, unless `journald_events`. Each behind a queue of its own, whose drops
/// are watched.
pub fn open_sinks(
    format: Format,
    journald: Journald,
    journald_events: bool,
    clock: WallClock,
) -> anyhow::Result<(Box<dyn Sink + Send>, Drops)> {
    let out = buffered_stdout().context("opening standard output")?;
    let stdout: Box<dyn Sink + Send> = match format {
        Format::Text => Box::new(TextSink::new(out, clock)),
        Format::Json => Box::new(JsonSink::new(out, clock)),
    };
    let mut drops = Drops::default();
    let queued = |name, sink, drops: &mut Drops| -> anyhow::Result<Box<dyn Sink + Send>> {
        let queued = QueuedSink::spawn(name, sink)
            .with_context(|| format!("starting the thread that writes to {name}"))?;
        drops.watch(name, queued.dropped());
        Ok(Box::new(queued))
    };
    let stdout = queued("stdout", stdout, &mut drops)?;
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
    let sinks: Box<dyn Sink + Send> = match journal {
        Some(journal) => {
            let journal = queued(
                "journald",
                Box::new(journal.with_events(journald_events)),
                &mut drops,
            )?;
            Box::new(Fanout::new(vec![stdout, journal]))
        }
        None => stdout,
    };
    Ok((sinks, drops))
}

/// Standard output without the line buffering of `std::io::stdout()`, which writes at every
/// newline: the sinks flush once per ring-buffer batch.
pub fn buffered_stdout() -> std::io::Result<BufWriter<File>> {
    let fd = std::io::stdout().as_fd().try_clone_to_owned()?;
    Ok(BufWriter::with_capacity(STDOUT_BUFFER, File::from(fd)))
}

/// Output buffered between flushes, at most: a batch's worth of lines.
const STDOUT_BUFFER: usize = 1 << 16;

fn startup_report(observer: &Observer, learned_state: String, filters: String) -> StartupReport {
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
        context: match observer.identity.caveat() {
            Some(caveat) => format!("{}; {caveat}", observer.context.describe()),
            None => observer.context.describe(),
        },
        learned_state,
        filters,
    }
}
