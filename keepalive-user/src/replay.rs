//! `keepalive-observer replay FILE`: a recording through the same correlator, deterministically
//! (the clock comes from the recorded events and ticks, never the wall).

use std::{fs::File, io::BufReader, path::Path};

use anyhow::{Context as _, bail};
use keepalive_observer::{
    correlate::{Correlator, CorrelatorConfig},
    record::{Replay, ReplayItem},
    sink::{JsonSink, Sink, TextSink, WallClock},
};

use crate::{
    cli::Format,
    daemon::buffered_stdout,
    pipeline::{Pipeline, PipelineError},
};

/// Replays `file`; fails (after replaying what it could) when any line was bad.
pub fn run(file: &Path, format: Format, events: bool) -> anyhow::Result<()> {
    let input = File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut replay = Replay::new(BufReader::new(input))
        .with_context(|| format!("reading {}", file.display()))?;
    let header = replay.header().clone();
    let clock = WallClock::from_offset_ns(header.wall_offset_ns);
    let out = buffered_stdout().context("opening standard output")?;
    let sinks: Box<dyn Sink + Send> = match format {
        Format::Text => Box::new(TextSink::new(out, clock)),
        Format::Json => Box::new(JsonSink::new(out, clock)),
    };
    let correlator = Correlator::new(CorrelatorConfig {
        sysctls: header.keepalive_sysctls,
        idle_expiry_floor_ms: header.idle_expiry_floor_ms,
        ..CorrelatorConfig::default()
    });
    let mut pipeline = Pipeline::new(sinks, header.decode.clone(), correlator, None, events);
    let mut bad_lines = 0u64;
    for item in &mut replay {
        match item {
            Ok(ReplayItem::Event(event)) => pipeline.on_event(&event),
            Ok(ReplayItem::Tick(mono_ns)) => pipeline.on_tick(mono_ns),
            Err(error) => {
                bad_lines += 1;
                eprintln!("{}: {error}", file.display());
            }
        }
        match pipeline.take_error() {
            None => {}
            Some(PipelineError::Sink(keepalive_observer::sink::SinkError::StdoutClosed)) => {
                return Ok(());
            }
            Some(error) => return Err(error.into()),
        }
    }
    pipeline.finish();
    pipeline.flush();
    match pipeline.take_error() {
        None | Some(PipelineError::Sink(keepalive_observer::sink::SinkError::StdoutClosed)) => {}
        Some(error) => return Err(error.into()),
    }
    if bad_lines > 0 {
        bail!(
            "{bad_lines} line(s) of {} could not be replayed",
            file.display()
        );
    }
    Ok(())
}
