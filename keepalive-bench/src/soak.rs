//! The soak: connection churn and resets for a stated time, the daemon's resident memory and
//! open descriptors sampled along the way. Both must stay flat: a leak of memory or of
//! descriptors shows as growth from one sample to the next.

use std::fs;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use keepalive_lab::interrupt;

use crate::daemon::Daemon;
use crate::{Tools, host, load};

/// Samples over the soak (one after each slice of churn and resets).
const SAMPLES: u32 = 10;

/// One sample of the daemon.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Duration,
    pub rss_kib: u64,
    pub fds: usize,
    pub connections: u64,
    pub resets: u64,
}

/// The soak's samples and what the daemon counted.
#[derive(Debug, Clone)]
pub struct Soak {
    pub samples: Vec<Sample>,
    pub events: u64,
    pub kernel_lost: u64,
}

pub fn run(duration: Duration, workers: usize, tools: &Tools) -> Result<Soak> {
    println!(
        "==> soak: connection churn and resets for {duration:?}, {workers} workers, the daemon's \
         RSS and open descriptors sampled {SAMPLES} times"
    );
    let daemon = Daemon::start(&tools.daemon)?;
    let pid = daemon.pid();
    let slice = duration / SAMPLES;
    let start = Instant::now();
    let mut samples = vec![sample(pid, start.elapsed(), 0, 0)?];
    let (mut connections, mut resets) = (0, 0);
    for _ in 0..SAMPLES {
        interrupt::check()?;
        connections += load::churn(workers, slice / 2)?.done;
        resets += load::reset_storm(workers, slice / 2)?.done;
        samples.push(sample(pid, start.elapsed(), connections, resets)?);
    }
    let stats = daemon.stop()?;
    println!(
        "  {:>7} {:>11} {:>9} {:>11} {:>8}",
        "at", "connections", "resets", "RSS KiB", "fds"
    );
    for s in &samples {
        println!(
            "  {:>6.1}s {:>11} {:>9} {:>11} {:>8}",
            s.at.as_secs_f64(),
            s.connections,
            s.resets,
            s.rss_kib,
            s.fds
        );
    }
    let soak = Soak {
        samples,
        events: stats.events,
        kernel_lost: stats.kernel_lost,
    };
    println!(
        "  RSS from the first slice on: {} KiB, last {} KiB; fds {}..={}; {} events, {} lost",
        soak.samples[1].rss_kib,
        soak.samples[soak.samples.len() - 1].rss_kib,
        soak.samples.iter().map(|s| s.fds).min().unwrap_or(0),
        soak.samples.iter().map(|s| s.fds).max().unwrap_or(0),
        soak.events,
        soak.kernel_lost
    );
    Ok(soak)
}

fn sample(pid: u32, at: Duration, connections: u64, resets: u64) -> Result<Sample> {
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("cannot list /proc/{pid}/fd"))?
        .count();
    Ok(Sample {
        at,
        rss_kib: host::status_kib(pid, "VmRSS")?,
        fds,
        connections,
        resets,
    })
}
