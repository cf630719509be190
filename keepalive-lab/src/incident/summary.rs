//! What a lab run showed, as a before/after table, as checks, and as JSON (`--summary-json`)
//! for the CI step of `cargo xtask test`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use keepalive_schema::finding::{Confidence, Verdict};
use keepalive_schema::socket::Risk;
use serde::{Deserialize, Serialize};

use super::TIMEOUT_MARGIN_S;
use super::client::{Failure, Request};
use super::observer::Finding;

/// A whole run.
#[derive(Debug, Deserialize, Serialize)]
pub struct Summary {
    /// The middlebox's established timeout.
    pub timeout_s: u32,
    /// The pauses before jobs 1, 2, …
    pub ladder_s: Vec<f64>,
    /// From the first namespace to the last teardown (setup and build not included).
    pub wall_time_s: f64,
    pub phases: Vec<Phase>,
}

/// One run of the ladder.
#[derive(Debug, Deserialize, Serialize)]
pub struct Phase {
    /// `reject` or `drop`.
    pub middlebox: String,
    /// The advice applied, `None` for the run that shows the incident.
    pub fix: Option<String>,
    pub duration_s: f64,
    pub requests: Vec<Request>,
    /// The observer's findings about the lab's namespaces.
    pub findings: Vec<Finding>,
    /// The learned idle timeout of the VIP, from the last finding that carries one.
    pub window_ms: Option<(u64, u64)>,
    /// The advice of that finding.
    pub advice: Option<String>,
    /// Events the observer's kernel side could not hand over during the run.
    #[serde(default)]
    pub lost_events: u64,
    /// What the socket audit said of each pooled connection before each step it ran before.
    #[serde(default)]
    pub audits: Vec<AuditedStep>,
}

/// One pooled connection as the audit before a step judged it.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct AuditedStep {
    /// The job that came next.
    pub job: u32,
    /// The connection's local end.
    pub local: SocketAddr,
    /// The audit's verdict.
    pub risk: Risk,
}

impl Phase {
    fn failed(&self) -> impl Iterator<Item = &Request> {
        self.requests.iter().filter(|request| !request.ok)
    }

    fn count(&self, failure: Failure) -> usize {
        self.failed()
            .filter(|request| request.category == Some(failure))
            .count()
    }

    fn label(&self) -> String {
        match &self.fix {
            None => format!("{}, no fix", self.middlebox),
            Some(fix) => format!("{}, {fix}", self.middlebox),
        }
    }

    /// `middlebox_drop/forged_rst: 3` …
    pub fn findings_by_kind(&self) -> String {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for finding in &self.findings {
            *counts
                .entry(format!("{}/{}", finding.verdict, finding.kind))
                .or_default() += 1;
        }
        counts
            .iter()
            .map(|(kind, count)| format!("{kind}: {count}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `10 requests, 7 ok, 3 failed (3 resets)`.
    pub fn requests_line(&self) -> String {
        let failed = self.failed().count();
        let mut line = format!(
            "{} requests, {} ok, {failed} failed",
            self.requests.len(),
            self.requests.len() - failed
        );
        let parts: Vec<String> = [Failure::Reset, Failure::Timeout, Failure::Error]
            .into_iter()
            .map(|failure| (self.count(failure), failure))
            .filter(|(count, _)| *count > 0)
            .map(|(count, failure)| {
                let plural = if count == 1 { "" } else { "s" };
                format!("{count} {}{plural}", failure.name())
            })
            .collect();
        if !parts.is_empty() {
            line.push_str(&format!(" ({})", parts.join(", ")));
        }
        line
    }
}

/// The before/after table.
pub fn table(summary: &Summary) -> String {
    let header = [
        "run", "requests", "ok", "failed", "resets", "timeouts", "findings",
    ];
    let rows: Vec<[String; 7]> = summary
        .phases
        .iter()
        .map(|phase| {
            let failed = phase.failed().count();
            let findings = if phase.findings.is_empty() {
                "0".to_owned()
            } else {
                format!("{} ({})", phase.findings.len(), phase.findings_by_kind())
            };
            [
                phase.label(),
                phase.requests.len().to_string(),
                (phase.requests.len() - failed).to_string(),
                failed.to_string(),
                phase.count(Failure::Reset).to_string(),
                phase.count(Failure::Timeout).to_string(),
                findings,
            ]
        })
        .collect();
    let width = |column: usize| {
        rows.iter()
            .map(|row| row[column].len())
            .chain([header[column].len()])
            .max()
            .unwrap_or_default()
    };
    let widths: Vec<usize> = (0..header.len()).map(width).collect();
    let format_row = |cells: &[String]| {
        let mut line = format!("  {:<w$}", cells[0], w = widths[0]);
        for (column, cell) in cells.iter().enumerate().skip(1) {
            if column == cells.len() - 1 {
                line.push_str(&format!("  {cell}"));
            } else {
                line.push_str(&format!("  {cell:>w$}", w = widths[column]));
            }
        }
        line
    };
    let mut lines = vec![format_row(&header.map(str::to_owned))];
    lines.extend(rows.iter().map(|row| format_row(row)));
    lines.join("\n")
}

/// One expectation and whether the run met it.
#[derive(Debug)]
pub struct Check {
    pub passed: bool,
    pub what: String,
}

/// What every run must show.
pub fn checks(summary: &Summary) -> Vec<Check> {
    let timeout_ms = u64::from(summary.timeout_s) * 1000;
    let mut checks = Vec::new();
    for phase in &summary.phases {
        let label = phase.label();
        if let Some(check) = audit_check(phase, &label, summary.timeout_s) {
            checks.push(check);
        }
        if phase.fix.is_some() {
            let failed = phase.failed().count();
            checks.push(Check {
                passed: failed == 0 && phase.findings.is_empty() && !phase.requests.is_empty(),
                what: format!(
                    "{label}: no request failed and no finding ({failed} failed, {} findings)",
                    phase.findings.len()
                ),
            });
            continue;
        }
        let timeout = f64::from(summary.timeout_s);
        let failed_idle: Vec<f64> = phase
            .failed()
            .filter_map(|request| request.idle_s)
            .collect();
        let expected_idle: Vec<f64> = phase
            .requests
            .iter()
            .filter(|request| expected_ok(request, timeout) == Some(false))
            .filter_map(|request| request.idle_s)
            .collect();
        let as_expected = phase.requests.iter().all(|request| {
            expected_ok(request, timeout).is_none_or(|expected| expected == request.ok)
        });
        checks.push(Check {
            passed: as_expected && phase.failed().next().is_some(),
            what: format!(
                "{label}: requests failed exactly on connections idle longer than {} s (failed \
                 after {} s idle, expected after {} s)",
                summary.timeout_s,
                list(&failed_idle),
                list(&expected_idle)
            ),
        });
        let (expected, kinds): (Failure, &[&str]) = if phase.middlebox == "drop" {
            (Failure::Timeout, &["silent_timeout"])
        } else {
            (Failure::Reset, &["forged_rst", "idle_expiry_rst"])
        };
        checks.push(Check {
            passed: phase
                .failed()
                .all(|request| request.category == Some(expected)),
            what: format!("{label}: every failure was a {}", expected.name()),
        });
        let failed_locals: BTreeSet<Option<SocketAddr>> =
            phase.failed().map(|request| request.local).collect();
        let finding_locals: BTreeSet<Option<SocketAddr>> = phase
            .findings
            .iter()
            .map(|finding| Some(finding.local))
            .collect();
        let attributed = phase.findings.len() == phase.failed().count()
            && failed_locals == finding_locals
            && phase.findings.iter().all(|finding| {
                finding.verdict == Verdict::MiddleboxDrop && kinds.contains(&finding.kind.as_str())
            });
        checks.push(Check {
            passed: attributed,
            what: format!(
                "{label}: one finding per failed connection, each middlebox_drop/{} ({})",
                kinds.join(" or "),
                if phase.findings.is_empty() {
                    "no findings".to_owned()
                } else {
                    phase.findings_by_kind()
                }
            ),
        });
        let brackets = phase
            .window_ms
            .is_some_and(|(lo, hi)| lo < timeout_ms && timeout_ms <= hi);
        // Silent deaths while no other connection to the VIP answered may be the server being
        // down: the observer says so (`possible`) and learns no window from them.
        let peer_may_be_down = phase.middlebox == "drop"
            && phase.window_ms.is_none()
            && phase
                .findings
                .iter()
                .all(|finding| finding.confidence == Confidence::Possible);
        checks.push(Check {
            passed: brackets || peer_may_be_down,
            what: match phase.window_ms {
                Some((lo, hi)) => format!(
                    "{label}: the learned window ({lo} ms, {hi} ms] brackets the {timeout_ms} ms \
                     timeout"
                ),
                None if phase.middlebox == "drop" => format!(
                    "{label}: a learned window around the timeout, or none while every silent \
                     death says the server may be down"
                ),
                None => format!("{label}: the observer learned a window around the timeout"),
            },
        });
    }
    checks
}

/// Whether the socket audit saw it coming: without the fix, it flagged (`will_reset` or
/// `at_risk`) a connection before that connection failed, and called none of them `ok` just
/// before it failed after a pause longer than twice the timeout (the audit runs a little
/// before the step, so a shorter pause may still look safe then); with the fix, it called
/// every audited connection `ok`. `None` when no step was audited.
fn audit_check(phase: &Phase, label: &str, timeout_s: u32) -> Option<Check> {
    if phase.audits.is_empty() {
        return None;
    }
    if phase.fix.is_some() {
        let flagged = phase
            .audits
            .iter()
            .filter(|audit| audit.risk != Risk::Ok)
            .count();
        return Some(Check {
            passed: flagged == 0,
            what: format!(
                "{label}: the audit called every pooled connection ok ({} audited, {flagged} \
                 flagged)",
                phase.audits.len()
            ),
        });
    }
    let verdict = |request: &Request| {
        phase
            .audits
            .iter()
            .find(|audit| audit.job == request.job && Some(audit.local) == request.local)
            .map(|audit| audit.risk)
    };
    let failed: Vec<(&Request, Option<Risk>)> = phase
        .failed()
        .filter(|request| request.attempt == 1)
        .map(|request| (request, verdict(request)))
        .collect();
    let flagged = failed
        .iter()
        .filter(|(_, risk)| matches!(risk, Some(Risk::WillReset | Risk::AtRisk)))
        .count();
    let long = f64::from(timeout_s) * 2.0;
    let missed: Vec<u32> = failed
        .iter()
        .filter(|(request, risk)| {
            *risk == Some(Risk::Ok) && request.pause_s.is_some_and(|pause| pause > long)
        })
        .map(|(request, _)| request.job)
        .collect();
    Some(Check {
        passed: flagged > 0 && missed.is_empty(),
        what: format!(
            "{label}: the audit flagged connections before they failed ({flagged} of {} \
             failures{})",
            failed.len(),
            if missed.is_empty() {
                String::new()
            } else {
                format!("; called ok before jobs {missed:?}")
            }
        ),
    })
}

/// The descriptions of the checks that failed, with the likely cause when the observer lost
/// events.
pub fn failed_checks(summary: &Summary) -> Vec<String> {
    let mut failed: Vec<String> = checks(summary)
        .into_iter()
        .filter(|check| !check.passed)
        .map(|check| check.what)
        .collect();
    let lost: u64 = summary.phases.iter().map(|phase| phase.lost_events).sum();
    if !failed.is_empty() && lost > 0 {
        failed.push(lost_warning(lost));
    }
    failed
}

pub fn lost_warning(lost: u64) -> String {
    format!(
        "the observer lost {lost} kernel events (its ring buffer was full: something else on \
         this host makes connections at a high rate), so findings may be missing"
    )
}

/// What the CI step needs beyond the checks: the incident in reject mode and a fixed rerun.
pub fn missing_phases(summary: &Summary) -> Vec<String> {
    let has = |middlebox: &str, fixed: bool| {
        summary
            .phases
            .iter()
            .any(|phase| phase.middlebox == middlebox && phase.fix.is_some() == fixed)
    };
    let mut missing = Vec::new();
    if !has("reject", false) {
        missing.push("no reject run without the fix".to_owned());
    }
    if !has("reject", true) {
        missing.push("no reject run with the fix".to_owned());
    }
    missing
}

/// Without a fix, a request on a pooled connection fails exactly when the connection sat idle
/// longer than the timeout (`None`: too close to tell); requests on new connections succeed.
fn expected_ok(request: &Request, timeout_s: f64) -> Option<bool> {
    match request.idle_s {
        Some(idle) if (idle - timeout_s).abs() < TIMEOUT_MARGIN_S => None,
        Some(idle) => Some(idle < timeout_s),
        None => Some(true),
    }
}

fn list(seconds: &[f64]) -> String {
    if seconds.is_empty() {
        return "none".to_owned();
    }
    seconds
        .iter()
        .map(|value| format!("{value:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn write(summary: &Summary, path: &Path) -> Result<()> {
    let json = serde_json::to_string_pretty(summary).context("cannot serialise the summary")?;
    fs::write(path, json + "\n").with_context(|| format!("cannot write {}", path.display()))
}

pub fn read(path: &Path) -> Result<Summary> {
    let json =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&json).with_context(|| format!("{} is not a lab summary", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(job: u32, attempt: u32, pause_s: Option<f64>, failure: Option<Failure>) -> Request {
        Request {
            job,
            attempt,
            pause_s,
            idle_s: pause_s.filter(|_| attempt == 1),
            ok: failure.is_none(),
            status: failure.is_none().then_some(200),
            body: failure.is_none().then(|| "srv0".to_owned()),
            error: failure.map(|_| "ProtocolError".to_owned()),
            errno: failure.map(|_| 104),
            errno_name: failure.map(|_| "ECONNRESET".to_owned()),
            category: failure,
            local: Some(SocketAddr::from(([198, 51, 100, 2], 40_000 + job as u16))),
            new_connection: false,
            elapsed_ms: 1.0,
        }
    }

    fn finding(job: u16, kind: &str, window: (u64, u64)) -> Finding {
        serde_json::from_value(serde_json::json!({
            "mono_ns": 1,
            "verdict": "middlebox_drop",
            "kind": kind,
            "confidence": "confirmed",
            "cookie": job,
            "netns": 1,
            "netns_cookie": 1,
            "local": SocketAddr::from(([198, 51, 100, 2], 40_000 + job)),
            "remote": SocketAddr::from(([198, 51, 100, 100], 80)),
            "pid": null,
            "comm": null,
            "idle_ms": 5500,
            "keepalive": null,
            "rst_ttl": 64,
            "peer_ttl": 63,
            "reason": null,
            "timeout_window_ms": [window.0, window.1],
            "evidence": [],
            "advice": "set TCP_KEEPIDLE below 4 s",
        }))
        .expect("a finding as the daemon prints it")
    }

    /// Ladder 1, 4, 7 against 5 s: job 3 resets and is retried.
    fn incident(kind: &str, failure: Failure) -> Phase {
        Phase {
            middlebox: if failure == Failure::Reset {
                "reject"
            } else {
                "drop"
            }
            .to_owned(),
            fix: None,
            duration_s: 13.0,
            requests: vec![
                request(0, 1, None, None),
                request(1, 1, Some(1.0), None),
                request(2, 1, Some(4.0), None),
                request(3, 1, Some(7.0), Some(failure)),
                request(3, 2, Some(0.0), None),
            ],
            findings: vec![finding(3, kind, (4000, 7000))],
            window_ms: Some((4000, 7000)),
            advice: Some("set TCP_KEEPIDLE below 4 s".to_owned()),
            lost_events: 0,
            audits: Vec::new(),
        }
    }

    fn fixed(requests: Vec<Request>, findings: Vec<Finding>) -> Phase {
        Phase {
            middlebox: "reject".to_owned(),
            fix: Some("keepalive 2 s".to_owned()),
            duration_s: 12.0,
            requests,
            findings,
            window_ms: None,
            advice: None,
            lost_events: 0,
            audits: Vec::new(),
        }
    }

    fn summary(phases: Vec<Phase>) -> Summary {
        Summary {
            timeout_s: 5,
            ladder_s: vec![1.0, 4.0, 7.0],
            wall_time_s: 30.0,
            phases,
        }
    }

    fn all_ok() -> Vec<Request> {
        vec![
            request(0, 1, None, None),
            request(1, 1, Some(1.0), None),
            request(2, 1, Some(4.0), None),
            request(3, 1, Some(7.0), None),
        ]
    }

    #[test]
    fn a_good_run_passes_every_check() {
        let run = summary(vec![
            incident("forged_rst", Failure::Reset),
            fixed(all_ok(), Vec::new()),
            incident("silent_timeout", Failure::Timeout),
        ]);
        assert_eq!(failed_checks(&run), Vec::<String>::new());
        assert!(missing_phases(&run).is_empty());
        let table = table(&run);
        assert!(table.contains("reject, no fix"), "{table}");
        assert!(table.contains("middlebox_drop/forged_rst: 1"), "{table}");
    }

    #[test]
    fn a_drop_run_may_learn_no_window_when_it_says_the_server_may_be_down() {
        let mut possible = incident("silent_timeout", Failure::Timeout);
        possible.window_ms = None;
        possible.findings[0].confidence = Confidence::Possible;
        assert_eq!(
            failed_checks(&summary(vec![possible])),
            Vec::<String>::new()
        );
        let mut confident = incident("silent_timeout", Failure::Timeout);
        confident.window_ms = None;
        confident.findings[0].confidence = Confidence::Likely;
        assert_eq!(failed_checks(&summary(vec![confident])).len(), 1);
    }

    #[test]
    fn wrong_outcomes_fail_their_checks() {
        let mut wrong_kind = incident("peer_abort", Failure::Reset);
        wrong_kind.findings[0].verdict = Verdict::PeerReset;
        assert_eq!(failed_checks(&summary(vec![wrong_kind])).len(), 1);

        let mut no_finding = incident("forged_rst", Failure::Reset);
        no_finding.findings.clear();
        assert_eq!(failed_checks(&summary(vec![no_finding])).len(), 1);

        let mut lossy = incident("forged_rst", Failure::Reset);
        lossy.findings.clear();
        lossy.lost_events = 7;
        let failed = failed_checks(&summary(vec![lossy]));
        assert_eq!(failed.len(), 2);
        assert!(failed[1].contains("lost 7 kernel events"), "{failed:?}");

        let mut narrow = incident("forged_rst", Failure::Reset);
        narrow.window_ms = Some((5500, 7000));
        assert_eq!(failed_checks(&summary(vec![narrow])).len(), 1);

        let mut starved = incident("forged_rst", Failure::Reset);
        starved.requests[2].idle_s = Some(7.4);
        assert_eq!(
            failed_checks(&summary(vec![starved])).len(),
            1,
            "a 4 s pause that became 7.4 s idle should have failed"
        );
        let mut racing = incident("forged_rst", Failure::Reset);
        racing.requests[2].idle_s = Some(5.1);
        racing.requests[2].ok = false;
        racing.requests[2].category = Some(Failure::Reset);
        assert!(
            checks(&summary(vec![racing]))[0].passed,
            "5.1 s idle against 5 s may go either way"
        );

        let timeouts_in_reject = incident("forged_rst", Failure::Timeout);
        assert!(!failed_checks(&summary(vec![timeouts_in_reject])).is_empty());

        let mut broken_fix = all_ok();
        broken_fix[3] = request(3, 1, Some(7.0), Some(Failure::Reset));
        let run = summary(vec![fixed(broken_fix, Vec::new())]);
        assert_eq!(failed_checks(&run).len(), 1);
        assert_eq!(missing_phases(&run), ["no reject run without the fix"]);

        let run = summary(vec![fixed(
            all_ok(),
            vec![finding(3, "forged_rst", (1, 2))],
        )]);
        assert_eq!(failed_checks(&run).len(), 1);
    }

    #[test]
    fn the_audit_must_flag_what_fails_and_pass_what_the_fix_keeps() {
        let local = |job: u16| SocketAddr::from(([198, 51, 100, 2], 40_000 + job));
        let audited = |job: u32, risk: Risk| AuditedStep {
            job,
            local: local(job as u16),
            risk,
        };
        let mut seen = incident("forged_rst", Failure::Reset);
        seen.audits = vec![audited(2, Risk::AtRisk), audited(3, Risk::WillReset)];
        let mut fixed = fixed(all_ok(), Vec::new());
        fixed.audits = vec![audited(3, Risk::Ok)];
        let run = summary(vec![seen, fixed]);
        assert!(failed_checks(&run).is_empty(), "{:?}", failed_checks(&run));
        assert!(checks(&run).iter().any(|c| {
            c.what
                .contains("flagged connections before they failed (1 of 1")
        }));

        let mut missed = incident("forged_rst", Failure::Reset);
        missed.requests[3].pause_s = Some(12.0);
        missed.audits = vec![audited(3, Risk::Ok)];
        let mut false_alarm = fixed_run();
        false_alarm.audits = vec![audited(3, Risk::WillReset)];
        let failed = failed_checks(&summary(vec![missed, false_alarm]));
        assert!(
            failed
                .iter()
                .any(|f| f.contains("called ok before jobs [3]")),
            "{failed:?}"
        );
        assert!(failed.iter().any(|f| f.contains("1 flagged")), "{failed:?}");
    }

    fn fixed_run() -> Phase {
        fixed(all_ok(), Vec::new())
    }

    #[test]
    fn summaries_round_trip_through_json() {
        let dir = std::env::temp_dir().join(format!("xtask-summary-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("summary.json");
        write(
            &summary(vec![incident("forged_rst", Failure::Reset)]),
            &path,
        )
        .unwrap();
        let read_back = read(&path).unwrap();
        assert_eq!(read_back.phases[0].window_ms, Some((4000, 7000)));
        assert_eq!(read_back.phases[0].requests.len(), 5);
        fs::write(&path, "{}").unwrap();
        assert!(read(&path).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
