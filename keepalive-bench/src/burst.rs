//! Workload 5: a burst of resets from one loop, as a script would make them (20 000 linger-0
//! closes and 20 000 connects to a closed port): every RST the kernel counts in `TcpOutRsts`
//! must be reported, as a record or, for a refused SYN, in the kernel side's counter.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use keepalive_lab::daemon::Stats;
use keepalive_lab::interrupt;

use crate::daemon::Daemon;
use crate::load::{self, Outcome};
use crate::{Tools, host};

/// Linger-0 closes, and as many refused connects.
pub const PAIRS: u64 = 20_000;
/// Bound on the burst.
const LIMIT: Duration = Duration::from_secs(120);

/// Workload 5 results.
#[derive(Debug, Clone, Copy, Default)]
pub struct Burst {
    pub aborts: Outcome,
    pub refusals: Outcome,
    /// The kernel's `Tcp: OutRsts` over the burst (every namespace's RSTs counted in the root
    /// namespace's MIB only when sent there: the burst runs on the root namespace's loopback).
    pub out_rsts: u64,
    pub daemon: Stats,
}

impl Burst {
    /// RSTs the daemon accounted for: records of RSTs sent, plus refusals counted.
    pub fn reported(&self) -> u64 {
        self.daemon.events_by_kind.reset_sent + self.daemon.syn_refusals
    }
}

pub fn run(tools: &Tools) -> Result<Burst> {
    interrupt::check()?;
    println!("==> workload 5: {PAIRS} linger-0 closes and {PAIRS} refused connects, one loop");
    let daemon = Daemon::start(&tools.daemon)?;
    let pid = daemon.pid();
    let before = out_rsts()?;
    let (aborts, refusals) = load::reset_burst(PAIRS, LIMIT)?;
    host::wait_until_idle(pid, Duration::from_millis(300), Duration::from_secs(15))?;
    let out_rsts = out_rsts()?.saturating_sub(before);
    let daemon = daemon.stop()?;
    let burst = Burst {
        aborts,
        refusals,
        out_rsts,
        daemon,
    };
    println!(
        "  {} closes, {} refusals in {:.1} s: {} RSTs reported ({} records, {} refusals \
         counted) of {out_rsts} sent, {} lost, {} dropped by the outputs",
        aborts.done,
        refusals.done,
        aborts.elapsed.as_secs_f64(),
        burst.reported(),
        daemon.events_by_kind.reset_sent,
        daemon.syn_refusals,
        daemon.kernel_lost,
        daemon.output_dropped
    );
    Ok(burst)
}

/// `OutRsts` of the `Tcp:` lines of /proc/net/snmp.
fn out_rsts() -> Result<u64> {
    let snmp = host::read_trimmed("/proc/net/snmp")?;
    parse_out_rsts(&snmp)
}

fn parse_out_rsts(snmp: &str) -> Result<u64> {
    let mut tcp = snmp.lines().filter(|line| line.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        bail!("/proc/net/snmp has no Tcp: lines");
    };
    let column = names
        .split_whitespace()
        .position(|name| name == "OutRsts")
        .context("/proc/net/snmp has no Tcp OutRsts")?;
    values
        .split_whitespace()
        .nth(column)
        .and_then(|value| value.parse().ok())
        .context("/proc/net/snmp: Tcp OutRsts is not a number")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_out_rsts() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Tcp: RtoAlgorithm ActiveOpens OutRsts InCsumErrors\n\
                    Tcp: 1 20 40123 0\nUdp: InDatagrams\nUdp: 5\n";
        assert_eq!(parse_out_rsts(snmp).unwrap(), 40_123);
        assert!(parse_out_rsts("Ip: x\nIp: 1\n").is_err());
        assert!(parse_out_rsts("Tcp: A B\nTcp: 1 x\n").is_err());
    }
}
