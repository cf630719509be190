//! The scenario: for each middlebox mode a topology with its four nginx servers, the ladder
//! without a fix, its summary and advice, then the ladder with the advice applied; at the end
//! the before/after table and the checks.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use keepalive_schema::finding::FindingKind;

use super::audit::{self, Audit};
use super::client::{Applied, Client, Line, Request};
use super::events::{Events, Msg, Source};
use super::files::{WorkDir, check_programs, remove_stale_workdirs};
use super::observer::{Finding, Observer, STATS_INTERVAL, tail};
use super::servers;
use super::site::{PORT, Site};
use super::summary::{self, AuditedStep, Phase, Summary};
use super::{Fix, LabArgs, PhaseSpec};
use crate::{VIP_V4, cleanup_stale, in_netns, interrupt};

/// Bounds of one request in the client (connect and read timeouts), and slack for Python.
const REQUEST_BOUND: Duration = Duration::from_secs(10);
const PHASE_SLACK: Duration = Duration::from_secs(20);
/// A finding that arrives before the client's line about its request waits this long for it.
const HOLD: Duration = Duration::from_secs(1);
/// Bound on the fence's finding, and how long one fence connection is waited for.
const FENCE_TIMEOUT: Duration = Duration::from_secs(10);
const FENCE_RETRY: Duration = Duration::from_secs(2);

/// Runs every phase of `args` with `ladder` against the observer at `observer_binary`.
pub fn run(args: &LabArgs, ladder: &[f64], observer_binary: &Path) -> Result<Summary> {
    interrupt::install()?;
    check_programs()?;
    for name in cleanup_stale()? {
        println!("removed namespace {name}, left behind by a run that died");
    }
    remove_stale_workdirs();
    let started = Instant::now();
    let workdir = WorkDir::create()?;
    let events = Events::new();

    println!(
        "keepalive-observer lab: \"Connection reset\" behind a VIP, with a {} s middlebox \
         timeout instead of 1800 s",
        args.timeout
    );
    let floor = args.timeout - 1;
    let state_dir = workdir.path.join("observer-state");
    let (mut observer, ready) = Observer::start(
        observer_binary,
        floor,
        &state_dir,
        &workdir.path.join("observer.stderr"),
        &events,
    )?;
    println!(
        "observer ready after {:.1} s on kernel {} in the root namespace{}",
        started.elapsed().as_secs_f64(),
        ready.kernel,
        if ready.missing_signals.is_empty() {
            String::new()
        } else {
            format!(" (missing: {})", ready.missing_signals.join("; "))
        }
    );
    let nginx = servers::version()?;
    let mut audit = Audit::new(observer_binary);

    let specs = args.middlebox.phases();
    let mut phases: Vec<Phase> = Vec::new();
    let mut site: Option<Site> = None;
    for (index, spec) in specs.iter().enumerate() {
        if !spec.fixed {
            drop(site.take());
            site = Some(Site::build(spec.mode, args.timeout, &workdir.path, &nginx)?);
        }
        let site = site.as_ref().context("no lab for the rerun")?;
        let applied = if spec.fixed {
            let before = phases.last().context("a rerun needs a run before it")?;
            Some(apply(args.fix, before.window_ms)?)
        } else {
            None
        };
        let title = match applied {
            None => format!("middlebox {}, no fix", spec.mode),
            Some(applied) => format!(
                "middlebox {}, advice applied: {}",
                spec.mode,
                applied.describe()
            ),
        };
        println!("\n== {}/{}  {title}", index + 1, specs.len());
        let phase = PhaseRun::new(site, *spec, applied, observer.lost).run(
            &events,
            &mut observer,
            ladder,
            Auditing {
                audit: &mut audit,
                state_dir: &state_dir,
                timeout_s: args.timeout,
            },
            &workdir.path.join(format!("client-{index}.stderr")),
        )?;
        print_phase_summary(&phase, args.timeout);
        phases.push(phase);
    }
    drop(site);
    observer.stop()?;
    drop(workdir);

    let summary = Summary {
        timeout_s: args.timeout,
        ladder_s: ladder.to_vec(),
        wall_time_s: started.elapsed().as_secs_f64(),
        phases,
    };
    println!("\n== before / after\n{}", summary::table(&summary));
    println!("\nchecks:");
    for check in summary::checks(&summary) {
        println!(
            "  {}  {}",
            if check.passed { "ok  " } else { "FAIL" },
            check.what
        );
    }
    println!(
        "\nlab finished in {:.1} s (setup and build not included); everything it created is gone",
        summary.wall_time_s
    );
    Ok(summary)
}

/// The fix from the advice: the observer advises TCP_KEEPIDLE below the window's lower bound
/// (half of it as an example) or evicting pooled connections idle longer than that bound.
fn apply(fix: Fix, window_ms: Option<(u64, u64)>) -> Result<Applied> {
    let Some((lo_ms, _)) = window_ms else {
        bail!(
            "the observer learned no idle-timeout window in the run without the fix, so there \
             is no advice to apply"
        );
    };
    let lo_s = lo_ms / 1000;
    if lo_s == 0 {
        bail!("the learned window starts below 1 s ({lo_ms} ms): nothing to set");
    }
    Ok(match fix {
        Fix::Keepalive => Applied::Keepalive {
            idle_s: (lo_s / 2).max(1),
        },
        Fix::Evict => Applied::Evict { idle_s: lo_s },
    })
}

/// The audit of the pool before each step of one run of the ladder.
struct Auditing<'a> {
    audit: &'a mut Audit,
    /// The observer's state directory, with what it learned.
    state_dir: &'a Path,
    /// The configured timeout, the window while nothing is learned.
    timeout_s: u32,
}

/// One run of the ladder: prints outcomes and findings as they come and gathers them.
struct PhaseRun<'a> {
    site: &'a Site,
    spec: PhaseSpec,
    applied: Option<Applied>,
    started: Instant,
    /// CLOCK_MONOTONIC at the start: findings about earlier events belong to no run of ours.
    since_ns: u64,
    /// The observer's lost-event count at the start.
    lost_before: u64,
    requests: Vec<Request>,
    /// What the audit said before each step it ran before.
    audits: Vec<AuditedStep>,
    findings: Vec<Finding>,
    /// Findings waiting for the line of their request, since when.
    held: Vec<(Instant, Finding)>,
    done: bool,
    closed: bool,
}

impl<'a> PhaseRun<'a> {
    fn new(site: &'a Site, spec: PhaseSpec, applied: Option<Applied>, lost_before: u64) -> Self {
        PhaseRun {
            lost_before,
            site,
            spec,
            applied,
            started: Instant::now(),
            since_ns: monotonic_ns(),
            requests: Vec::new(),
            audits: Vec::new(),
            findings: Vec::new(),
            held: Vec::new(),
            done: false,
            closed: false,
        }
    }

    fn run(
        mut self,
        events: &Events,
        observer: &mut Observer,
        ladder: &[f64],
        mut auditing: Auditing,
        stderr: &Path,
    ) -> Result<Phase> {
        let pauses: f64 = ladder.iter().sum();
        let attempts = u32::try_from(2 * (ladder.len() + 1)).unwrap_or(u32::MAX);
        let budget = Duration::from_secs_f64(pauses) + REQUEST_BOUND * attempts + PHASE_SLACK;
        // Before the pool opens: there is nothing to judge yet, but the audit learns how long
        // it takes, hence how early before each step the client announces it.
        self.audit(&mut auditing, 0);
        let mut client = Client::start(
            self.site.topology.client().netns(),
            self.site.vip(),
            ladder,
            self.applied,
            Some(auditing.audit.lead()),
            stderr,
            events,
        )?;
        self.started = Instant::now();
        let deadline = self.started + budget;
        while !self.closed {
            let tick = (Instant::now() + HOLD / 4).min(deadline);
            match events.next(tick)? {
                Some(Msg::Client(Line::Step {
                    job, audit: true, ..
                })) => {
                    self.audit(&mut auditing, job);
                    client.go()?;
                }
                Some(Msg::Client(Line::Step { job, pause_s, .. })) => println!(
                    "  {}  no audit before job {job}: its {pause_s:.1} s pause is shorter than \
                     an audit takes ({:.1} s)",
                    self.clock(),
                    auditing.audit.lead().as_secs_f64()
                ),
                Some(msg) => self.handle(msg, observer)?,
                None if Instant::now() >= deadline => bail!(
                    "the client did not finish its ladder within {} s; its standard error:\n{}",
                    budget.as_secs(),
                    tail(client.stderr())
                ),
                None => {}
            }
            self.release_held(false);
        }
        let status = client.finish()?;
        if !status.success() || !self.done {
            bail!(
                "the client failed ({status}); its standard error:\n{}",
                tail(client.stderr())
            );
        }
        self.fence(events, observer)?;
        self.release_held(true);
        self.next_stats(events, observer)?;
        let (window_ms, advice) = self
            .findings
            .iter()
            .rev()
            .filter(|finding| finding.remote == self.site.vip())
            .find_map(|finding| {
                finding
                    .timeout_window_ms
                    .map(|window| (Some(window), Some(finding.advice.clone())))
            })
            .unwrap_or_default();
        Ok(Phase {
            middlebox: self.spec.mode.to_string(),
            fix: self.applied.map(Applied::short),
            duration_s: self.started.elapsed().as_secs_f64(),
            requests: self.requests,
            findings: self.findings,
            window_ms,
            advice,
            lost_events: observer.lost.saturating_sub(self.lost_before),
            audits: self.audits,
        })
    }

    /// Prints the audit's verdict for each of the pool's connections before `job`.
    fn audit(&mut self, auditing: &mut Auditing, job: u32) {
        let netns = self.site.topology.client().netns().name();
        let before = format!("  {}  audit before job {job}", self.clock());
        let sockets = auditing.audit.run(
            netns,
            self.site.vip(),
            auditing.state_dir,
            auditing.timeout_s,
        );
        match sockets {
            Ok(sockets) if sockets.is_empty() => println!("{before}: no pooled connection"),
            Ok(sockets) => {
                for socket in &sockets {
                    println!("{before}: {}", audit::describe(socket));
                    self.audits.push(AuditedStep {
                        job,
                        local: socket.local,
                        risk: socket.risk,
                    });
                }
            }
            Err(error) => println!("  warning: the audit before job {job} failed: {error:#}"),
        }
    }

    /// Waits for the observer's next `stats` line, so that its lost-event count covers the
    /// whole run; keeps the last count if none comes.
    fn next_stats(&mut self, events: &Events, observer: &mut Observer) -> Result<()> {
        let deadline = Instant::now() + 3 * STATS_INTERVAL;
        loop {
            match events.next(deadline)? {
                Some(Msg::Stats { kernel_lost }) => {
                    observer.lost = kernel_lost;
                    return Ok(());
                }
                Some(msg) => self.handle(msg, observer)?,
                None => return Ok(()),
            }
        }
    }

    fn handle(&mut self, msg: Msg, observer: &mut Observer) -> Result<()> {
        match msg {
            Msg::Finding(finding) if self.site.owns(&finding, self.since_ns) => {
                let printed = self
                    .requests
                    .iter()
                    .any(|request| !request.ok && request.local == Some(finding.local));
                if printed {
                    println!("{}", self.finding_line(&finding));
                } else {
                    self.held.push((Instant::now(), (*finding).clone()));
                }
                self.findings.push(*finding);
            }
            Msg::Finding(_) => {}
            Msg::Stats { kernel_lost } => observer.lost = kernel_lost,
            Msg::Client(Line::Config(config)) => println!(
                "  client: Python {}, urllib3 {}, HTTPConnectionPool of {}, HTTP/1.1 keep-alive, \
                 retries off, TCP_USER_TIMEOUT {} ms",
                config.python, config.urllib3, config.pool_size, config.user_timeout_ms
            ),
            Msg::Client(Line::Request(request)) => {
                println!("{}", self.request_line(&request));
                let (mine, others): (Vec<_>, Vec<_>) = self
                    .held
                    .drain(..)
                    .partition(|(_, finding)| !request.ok && request.local == Some(finding.local));
                self.held = others;
                for (_, finding) in mine {
                    println!("{}", self.finding_line(&finding));
                }
                self.requests.push(request);
            }
            Msg::Client(Line::Evicted { local, idle_s }) => println!(
                "  {}  the pool evicts {} after {idle_s:.2} s idle",
                self.clock(),
                local.as_deref().unwrap_or("a connection")
            ),
            // The run loop audits and lets the client go on; nothing else waits for a step.
            Msg::Client(Line::Step { .. }) => {}
            Msg::Client(Line::Done) => self.done = true,
            Msg::Closed(Source::Client) => self.closed = true,
            Msg::Closed(Source::Observer) => bail!("{}", observer.exited()),
            Msg::Unreadable(source, line) => {
                println!("  warning: {} printed {line}", source.name());
            }
        }
        Ok(())
    }

    /// Waits until the observer has handled every event of the run: a connection refused on
    /// the client's loopback makes a NO_SOCKET reset, whose event comes after all earlier ones
    /// through the observer's single ring buffer, and whose finding marks the point.
    fn fence(&mut self, events: &Events, observer: &mut Observer) -> Result<()> {
        let deadline = Instant::now() + FENCE_TIMEOUT;
        let mut markers = Vec::new();
        // A marker whose event the kernel side had to drop never shows up: send another.
        while Instant::now() < deadline {
            markers.push(self.fence_marker()?);
            let retry = (Instant::now() + FENCE_RETRY).min(deadline);
            while let Some(msg) = events.next(retry)? {
                match msg {
                    Msg::Finding(finding)
                        if markers.iter().any(|marker| {
                            finding.local == *marker
                                || (finding.remote == *marker
                                    && finding.netns == self.site.client_inode)
                        }) =>
                    {
                        return Ok(());
                    }
                    msg => self.handle(msg, observer)?,
                }
            }
        }
        let lost = observer.lost.saturating_sub(self.lost_before);
        bail!(
            "keepalive-observer reported nothing about {} fence connection(s) within {} s{}",
            markers.len(),
            FENCE_TIMEOUT.as_secs(),
            if lost > 0 {
                format!("; {}", summary::lost_warning(lost))
            } else {
                String::new()
            }
        )
    }

    /// A connection refused on the client's loopback; returns the refused address.
    fn fence_marker(&self) -> Result<SocketAddr> {
        let netns = self.site.topology.client().netns();
        in_netns(netns, || -> io::Result<SocketAddr> {
            let closed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?;
            match TcpStream::connect_timeout(&closed, Duration::from_secs(2)) {
                Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => Ok(closed),
                Err(error) => Err(error),
                Ok(_) => Err(io::Error::other(
                    "a just released port accepted a connection",
                )),
            }
        })?
        .context("the fence connection")
    }

    /// Prints held findings whose request line did not come in time (all of them at the end).
    fn release_held(&mut self, all: bool) {
        let now = Instant::now();
        let (due, waiting): (Vec<_>, Vec<_>) = self
            .held
            .drain(..)
            .partition(|(since, _)| all || now.duration_since(*since) >= HOLD);
        self.held = waiting;
        for (_, finding) in due {
            println!("{}", self.finding_line(&finding));
        }
    }

    fn clock(&self) -> String {
        format!("+{:5.1}s", self.started.elapsed().as_secs_f64())
    }

    fn request_line(&self, request: &Request) -> String {
        let step = match (request.attempt, request.idle_s, request.pause_s) {
            (1, Some(idle), _) => format!("job {:<2} after {idle:>4.1} s idle", request.job),
            (1, None, Some(pause)) => format!("job {:<2} after {pause:>4.1} s pause", request.job),
            (1, None, None) => format!("job {:<2} {:<17}", request.job, "opens the pool"),
            _ => format!("job {:<2} {:<17}", request.job, "retried"),
        };
        let conn = request
            .local
            .map_or_else(|| "no connection".to_owned(), |local| local.to_string());
        let new = if request.new_connection { " (new)" } else { "" };
        if request.ok {
            format!(
                "  {}  {step}  ok      {} from {:<4}  via {conn}{new}",
                self.clock(),
                request.status.unwrap_or_default(),
                request.body.as_deref().unwrap_or("?"),
            )
        } else {
            let errno = request
                .errno_name
                .as_deref()
                .map_or_else(String::new, |name| format!("{name} "));
            format!(
                "  {}  {step}  FAILED  {}  [{errno}after {:.1} s, via {conn}]",
                self.clock(),
                request.error.as_deref().unwrap_or("unknown error"),
                request.elapsed_ms / 1000.0
            )
        }
    }

    fn finding_line(&self, finding: &Finding) -> String {
        let mut facts = Vec::new();
        if let Some(idle) = finding.idle_ms {
            facts.push(format!("idle {}", seconds(idle)));
        }
        match (finding.rst_ttl, finding.peer_ttl) {
            (Some(rst), Some(peer)) => facts.push(format!("RST TTL {rst}, server's TTL {peer}")),
            (Some(rst), None) => facts.push(format!("RST TTL {rst}")),
            (None, _) if finding.kind == FindingKind::SilentTimeout => {
                facts.push("no RST".to_owned())
            }
            (None, _) => {}
        }
        if let Some(reason) = &finding.reason {
            facts.push(format!("reason {reason}"));
        }
        if let Some((lo, hi)) = finding.timeout_window_ms {
            facts.push(format!("window ({}, {}]", seconds(lo), seconds(hi)));
        }
        format!(
            "  {}    observer: {}/{} ({}) {} -> {}: {}",
            self.clock(),
            finding.verdict,
            finding.kind,
            finding.confidence,
            finding.local,
            finding.remote,
            facts.join(", ")
        )
    }
}

fn print_phase_summary(phase: &Phase, timeout: u32) {
    println!(
        "  summary: {} in {:.1} s",
        phase.requests_line(),
        phase.duration_s
    );
    if phase.findings.is_empty() {
        println!("  findings: none");
    } else {
        println!(
            "  findings: {} ({})",
            phase.findings.len(),
            phase.findings_by_kind()
        );
    }
    if let Some((lo, hi)) = phase.window_ms {
        println!(
            "  learned idle timeout of {VIP_V4}:{PORT}: above {} and at most {} (configured: \
             {timeout} s)",
            seconds(lo),
            seconds(hi)
        );
    }
    if let Some(advice) = &phase.advice {
        println!("  advice: {advice}");
    }
    if phase.lost_events > 0 {
        println!("  warning: {}", summary::lost_warning(phase.lost_events));
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of the observer's `mono_ns`.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write into; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let secs = u64::try_from(now.tv_sec).unwrap_or_default();
    let nanos = u64::try_from(now.tv_nsec).unwrap_or_default();
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

fn seconds(ms: u64) -> String {
    format!("{:.2} s", Duration::from_millis(ms).as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fix_comes_from_the_window() {
        assert_eq!(
            apply(Fix::Keepalive, Some((4003, 5502))).unwrap(),
            Applied::Keepalive { idle_s: 2 }
        );
        assert_eq!(
            apply(Fix::Evict, Some((4003, 5502))).unwrap(),
            Applied::Evict { idle_s: 4 }
        );
        assert_eq!(
            apply(Fix::Keepalive, Some((1500, 2500))).unwrap(),
            Applied::Keepalive { idle_s: 1 }
        );
        assert!(apply(Fix::Keepalive, None).is_err());
        assert!(apply(Fix::Evict, Some((800, 2500))).is_err());
    }
}
