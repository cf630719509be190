//! The lab of `cargo xtask lab` (binary `keepalive-lab`): the README's incident in network
//! namespaces, watched by the real observer, then fixed with the observer's advice.
//!
//! A Python urllib3 client with a keep-alive connection pool sends periodic jobs through a VIP
//! (nftables DNAT to four nginx servers, conntrack forgetting idle flows) with a ladder of
//! growing pauses; keepalive-observer runs in the root namespace. The lab prints every request's
//! outcome with the findings beside it, a summary, applies the advice and runs the ladder again.

mod audit;
mod client;
mod events;
mod files;
mod observer;
mod scenario;
mod servers;
mod site;
pub mod summary;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Parser, ValueEnum};

use crate::{MiddleboxMode, interrupt, is_root};

/// Pauses of the default ladder, as fractions of the timeout: 1, 2, 4, 5.5, 7 and 12 s against
/// the default 5 s, like the incident's 33 … 3605 s against 1800 s.
const DEFAULT_LADDER: [f64; 6] = [0.2, 0.4, 0.8, 1.1, 1.4, 2.4];
/// The observer reports a survived idle gap from this many seconds on (its `--idle-floor`).
const SHORTEST_LEARNED_PAUSE_S: f64 = 1.0;
/// An idle time this close to the timeout races the middlebox's clock.
const TIMEOUT_MARGIN_S: f64 = 0.25;
const MAX_PAUSE_S: f64 = 3600.0;
const MAX_PAUSES: usize = 20;

/// Reproduce the "Connection reset behind a VIP" incident in network namespaces, watch the
/// observer explain it, apply its advice and watch the resets go away (root).
///
/// The options of `cargo xtask lab`, which passes them on to `keepalive-lab`.
#[derive(Debug, Parser)]
#[command(after_long_help = "\
What runs: a client namespace (198.51.100.2) with /usr/bin/python3 and urllib3's connection \
pool, a VIP 198.51.100.100:80 on a middlebox namespace (nftables DNAT, round-robin, to four \
server namespaces running nginx with a one-hour keep-alive), and keepalive-observer in the \
root namespace. The client opens a pooled connection, then for every pause of the ladder \
leaves it idle that long before the next job's request; urllib3's retries are off, so a \
forgotten flow fails with urllib3's own error, and the job is retried once on a new \
connection. Every client socket has TCP_USER_TIMEOUT 1.5 s, so that in drop mode a dead \
flow fails with ETIMEDOUT within seconds rather than after minutes of retransmissions.

Before each step whose pause is longer than an audit takes, the client waits while \
`keepalive-observer sockets` audits its pool against the window the observer learned so far \
(else the configured timeout), and the lab prints each pooled connection's risk.

Each middlebox mode runs the ladder, prints the summary and the observer's advice, applies \
the advice (--fix) and runs the ladder again. With --middlebox both (the default) the drop \
mode runs the ladder without the rerun, to stay within two minutes; --middlebox drop runs \
its rerun too.

Needs root (network namespaces, eBPF). Everything it creates (namespaces with their nftables \
rules, processes, a directory under the temp dir) is removed at the end, on failure and on \
Ctrl-C. Exits non-zero when the run does not show what it should (resets without the fix, \
every one attributed middlebox_drop, a learned window around the timeout, none with the fix).")]
pub struct LabArgs {
    /// The middlebox forgets a TCP flow idle this long (conntrack's established timeout,
    /// standing in for the load balancer's 1800 s); 2 to 600.
    #[arg(long, value_name = "SECONDS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(2..=600))]
    pub timeout: u32,
    /// What the middlebox does with a segment of a flow it forgot: `reject` answers with a
    /// forged RST, `drop` drops it silently, `both` runs reject then drop.
    #[arg(long, value_enum, default_value_t = Modes::Both)]
    pub middlebox: Modes,
    /// How the advice is applied before the rerun: `keepalive` sets SO_KEEPALIVE with
    /// TCP_KEEPIDLE below the learned window on every pooled socket, `evict` closes pooled
    /// connections idle longer than the window's lower bound.
    #[arg(long, value_enum, default_value_t = Fix::Keepalive)]
    pub fix: Fix,
    /// Idle pauses before each job, in seconds, comma-separated; at least one from 1 s up to
    /// below the timeout and one above it [default: 0.2,0.4,0.8,1.1,1.4,2.4 times the timeout:
    /// 1,2,4,5.5,7,12]
    #[arg(long, value_name = "SECONDS,...", value_delimiter = ',', value_parser = parse_pause)]
    pub ladder: Option<Vec<f64>>,
    /// Also write a machine-readable summary (JSON) of the run to FILE.
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
    /// Run the debug build of the observer instead of the release build.
    #[arg(long)]
    pub debug: bool,
}

/// Which middlebox modes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Modes {
    /// Forgotten flows get a forged RST (an L4 load balancer).
    Reject,
    /// Forgotten flows are dropped silently (a NAT gateway).
    Drop,
    /// Reject, then drop.
    Both,
}

/// How the advice is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Fix {
    /// TCP keepalive with an idle time below the learned window.
    Keepalive,
    /// Pool eviction of connections idle longer than the window's lower bound.
    Evict,
}

/// One run of the ladder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PhaseSpec {
    mode: MiddleboxMode,
    /// Whether this run applies the advice of the run before it.
    fixed: bool,
}

impl Modes {
    fn phases(self) -> Vec<PhaseSpec> {
        let run = |mode, fixed| PhaseSpec { mode, fixed };
        match self {
            Modes::Reject => vec![
                run(MiddleboxMode::Reject, false),
                run(MiddleboxMode::Reject, true),
            ],
            // A silent death while no other connection to the VIP answered may be the server
            // being down: the observer learns no window from it, so there is no advice with
            // a number to apply in a rerun.
            Modes::Drop => vec![run(MiddleboxMode::Drop, false)],
            Modes::Both => vec![
                run(MiddleboxMode::Reject, false),
                run(MiddleboxMode::Reject, true),
                run(MiddleboxMode::Drop, false),
            ],
        }
    }
}

/// What can be refused before anything is built or set up: not root, or a ladder that cannot
/// show the incident. Returns the ladder to run.
pub fn preflight(args: &LabArgs) -> Result<Vec<f64>> {
    if !is_root() {
        bail!(
            "cargo xtask lab needs root: it creates network namespaces and runs keepalive-observer \
             (eBPF); run it as root"
        );
    }
    ladder(args.timeout, args.ladder.as_deref())
}

/// Runs the lab; exits 130 when interrupted, after tearing everything down.
pub fn run(args: &LabArgs) -> Result<ExitCode> {
    let ladder = preflight(args)?;
    let observer = crate::daemon::built(args.debug)?;
    match scenario::run(args, &ladder, &observer) {
        Ok(summary) => {
            if let Some(path) = &args.summary_json {
                summary::write(&summary, path)?;
                println!("summary written to {}", path.display());
            }
            let failed = summary::failed_checks(&summary);
            if failed.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                bail!("the lab did not show what it should: {}", failed.join("; "))
            }
        }
        Err(error) if error.is::<interrupt::Interrupted>() => {
            eprintln!("interrupted: the lab was torn down");
            Ok(ExitCode::from(130))
        }
        Err(error) => Err(error),
    }
}

fn parse_pause(text: &str) -> Result<f64, String> {
    let pause: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(0.0..=MAX_PAUSE_S).contains(&pause) {
        return Err(format!("{pause} s: a pause is 0 to {MAX_PAUSE_S} s"));
    }
    Ok(pause)
}

/// The ladder to run: the given pauses, or the default scaled to `timeout`; checked so that the
/// run can learn a window around the timeout.
fn ladder(timeout: u32, given: Option<&[f64]>) -> Result<Vec<f64>> {
    let timeout = f64::from(timeout);
    let pauses = match given {
        Some(pauses) => pauses.to_vec(),
        None => DEFAULT_LADDER
            .iter()
            .map(|fraction| {
                let pause = (fraction * timeout * 10.0).round() / 10.0;
                // Short timeouts: keep the first pause above the timeout clear of the race.
                if pause > timeout {
                    pause.max(timeout + 2.0 * TIMEOUT_MARGIN_S)
                } else {
                    pause
                }
            })
            .collect(),
    };
    if pauses.is_empty() || pauses.len() > MAX_PAUSES {
        bail!("--ladder: give 1 to {MAX_PAUSES} pauses");
    }
    if let Some(close) = pauses
        .iter()
        .find(|pause| (**pause - timeout).abs() < TIMEOUT_MARGIN_S)
    {
        bail!(
            "--ladder: a pause of {close} s is within {TIMEOUT_MARGIN_S} s of the {timeout} s \
             timeout, so its outcome would be a race; move it"
        );
    }
    if !pauses
        .iter()
        .any(|pause| (SHORTEST_LEARNED_PAUSE_S..timeout).contains(pause))
    {
        bail!(
            "--ladder: needs a pause from {SHORTEST_LEARNED_PAUSE_S} s up to below the {timeout} s \
             timeout, so that the observer learns a survived idle time"
        );
    }
    if !pauses.iter().any(|pause| *pause > timeout) {
        bail!(
            "--ladder: needs a pause above the {timeout} s timeout, or the incident never happens"
        );
    }
    Ok(pauses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ladder_scales_with_the_timeout() {
        assert_eq!(ladder(5, None).unwrap(), [1.0, 2.0, 4.0, 5.5, 7.0, 12.0]);
        assert_eq!(ladder(10, None).unwrap(), [2.0, 4.0, 8.0, 11.0, 14.0, 24.0]);
        assert_eq!(ladder(2, None).unwrap(), [0.4, 0.8, 1.6, 2.5, 2.8, 4.8]);
        for timeout in 2..=600 {
            assert!(
                ladder(timeout, None).is_ok(),
                "default ladder for {timeout} s"
            );
        }
    }

    #[test]
    fn ladders_that_cannot_learn_a_window_are_refused() {
        assert!(ladder(5, Some(&[1.0, 6.0])).is_ok());
        assert!(ladder(5, Some(&[])).is_err());
        assert!(
            ladder(5, Some(&[0.0, 0.5, 6.0])).is_err(),
            "no learnable survival"
        );
        assert!(ladder(5, Some(&[1.0, 2.0, 4.0])).is_err(), "nothing above");
        assert!(ladder(5, Some(&[1.0, 5.1, 7.0])).is_err(), "too close");
        assert!(ladder(5, Some(&[1.0; 21])).is_err(), "too many");
    }

    #[test]
    fn pauses_parse_or_say_why_not() {
        assert_eq!(parse_pause(" 5.5"), Ok(5.5));
        assert!(parse_pause("soon").unwrap_err().contains("soon"));
        assert!(parse_pause("-1").is_err());
        assert!(parse_pause("NaN").is_err());
        assert!(parse_pause("inf").is_err());
    }

    #[test]
    fn both_modes_rerun_reject_only() {
        let phases = Modes::Both.phases();
        assert_eq!(phases.len(), 3);
        assert!(phases[1].fixed && phases[1].mode == MiddleboxMode::Reject);
        assert!(!phases[2].fixed && phases[2].mode == MiddleboxMode::Drop);
        assert!(
            Modes::Drop
                .phases()
                .iter()
                .all(|p| p.mode == MiddleboxMode::Drop)
        );
    }
}
