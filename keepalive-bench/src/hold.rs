//! The hidden `hold` helper of workload 4: one process holding its share of the idle
//! connections.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use crate::{load, parse_seconds};

/// Options of the hidden `hold` helper.
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

/// `keepalive-bench hold`: opens the connections, says `ready N`, and holds them until killed.
pub fn hold(args: &HoldArgs) -> Result<()> {
    let held = load::IdleConnections::open(args.connections, args.source, args.time_limit)?;
    println!("ready {}", held.len());
    std::io::Write::flush(&mut std::io::stdout()).context("cannot write to stdout")?;
    std::thread::sleep(HOLD_LIMIT);
    Ok(())
}
