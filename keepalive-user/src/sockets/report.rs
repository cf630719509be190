//! The audit's output: a table (fits 120 columns) or JSON lines, each connection with its
//! risk, then summaries per destination and per process, then the totals.

use std::{
    collections::BTreeMap,
    io::{self, Write},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use keepalive_schema::socket::{
    AuditLine, KeepaliveLine, Risk, Scope, Side, SocketLine, SocketsLine, SummaryLine, TimerLine,
    WindowLine,
};

use super::{
    model::{Connection, Owner, Timer, WindowSource, state_name},
    risk::{Verdict, secs},
};

/// A connection with its verdict.
pub type Judged = (Connection, Verdict);

/// The audit's output in JSON lines.
pub fn json(
    out: &mut impl Write,
    judged: &[Judged],
    summaries: &[SummaryLine],
    audit: AuditLine,
) -> io::Result<()> {
    let lines = judged
        .iter()
        .map(|(c, v)| SocketsLine::Socket(Box::new(socket_line(c, v))))
        .chain(summaries.iter().cloned().map(SocketsLine::Summary))
        .chain([SocketsLine::Audit(audit)]);
    for line in lines {
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// The audit's output as a table, each row at risk followed by its reason, then the
/// summaries and the totals.
pub fn table(
    out: &mut impl Write,
    judged: &[Judged],
    summaries: &[SummaryLine],
    audit: &AuditLine,
) -> io::Result<()> {
    writeln!(out, "{}", row(&HEADER.map(str::to_owned)))?;
    for (connection, verdict) in judged {
        writeln!(out, "{}", row(&cells(connection, verdict)))?;
        if verdict.risk != Risk::Ok {
            writeln!(out, "    {}: {}", verdict.code, verdict.reason)?;
        }
    }
    if !summaries.is_empty() {
        writeln!(out)?;
    }
    for summary in summaries {
        writeln!(out, "{}", summary.text)?;
    }
    writeln!(
        out,
        "\n{} connection{} in {} network namespace{}: {} will_reset, {} at_risk, {} orphan_suspect, {} ok",
        audit.connections,
        plural(audit.connections),
        audit.namespaces,
        plural(audit.namespaces),
        audit.will_reset,
        audit.at_risk,
        audit.orphan_suspect,
        audit.ok
    )?;
    for note in &audit.incomplete {
        writeln!(out, "incomplete: {note}")?;
    }
    out.flush()
}

const HEADER: [&str; 11] = [
    "RISK",
    "LOCAL",
    "REMOTE",
    "STATE",
    "PROCESS",
    "RCV",
    "SND",
    "KEEPALIVE",
    "TIMER",
    "R/P",
    "WINDOW",
];
/// Column widths; the last column is not padded. With IPv4 addresses a row fits 120 columns.
const WIDTHS: [usize; 11] = [14, 21, 21, 5, 11, 6, 6, 10, 7, 3, 6];
/// Room for `comm/pid` in the process column.
const PROCESS_WIDTH: usize = WIDTHS[4];

fn row(cells: &[String; 11]) -> String {
    let mut line = String::new();
    for (i, (cell, width)) in cells.iter().zip(WIDTHS).enumerate() {
        if i + 1 == cells.len() {
            line.push_str(cell);
        } else {
            line.push_str(&format!("{cell:<width$} "));
        }
    }
    line.trim_end().to_owned()
}

fn cells(c: &Connection, v: &Verdict) -> [String; 11] {
    let idle = |d: Option<Duration>| d.map_or_else(|| "-".to_owned(), short_secs);
    let process = c.owner.as_ref().map_or_else(
        || "-".to_owned(),
        |o| {
            let pid = o.pid.to_string();
            let room = PROCESS_WIDTH.saturating_sub(pid.len() + 1).max(1);
            format!("{}/{pid}", o.comm.chars().take(room).collect::<String>())
        },
    );
    let keepalive = match c.keepalive {
        None => "?".to_owned(),
        Some(k) if !k.on => "off".to_owned(),
        Some(k) => format!(
            "{}/{}/{}",
            short_secs(k.idle),
            short_secs(k.interval),
            k.count
        ),
    };
    let timer = match c.diag.timer {
        None => "-".to_owned(),
        Some(t) => match t.fires_in() {
            Some(after) => format!("{} {}", timer_tag(t), short_secs(after)),
            None => timer_tag(t).to_owned(),
        },
    };
    let window = c.window.map_or_else(
        || "-".to_owned(),
        |w| {
            let mark = if w.source == WindowSource::Given {
                "="
            } else {
                ">"
            };
            format!("{mark}{}", short_secs(w.bound))
        },
    );
    [
        v.risk.to_string(),
        c.diag.local.to_string(),
        c.diag.remote.to_string(),
        state_name(c.diag.state).to_owned(),
        process,
        idle(c.diag.idle_rx),
        idle(c.diag.idle_tx),
        keepalive,
        timer,
        format!("{}/{}", c.diag.retransmits, c.diag.probes),
        window,
    ]
}

fn timer_tag(timer: Timer) -> &'static str {
    match timer {
        Timer::Keepalive(_) => "ka",
        Timer::Retransmit(_) => "rto",
        Timer::ZeroWindowProbe(_) => "zwp",
        Timer::TimeWait => "tw",
    }
}

/// Seconds, short: whole seconds without decimals, else one decimal below 100 s.
fn short_secs(duration: Duration) -> String {
    let s = duration.as_secs_f64();
    if s < 100.0 && duration.subsec_millis() != 0 {
        format!("{s:.1}")
    } else {
        duration.as_secs().to_string()
    }
}

fn socket_line(c: &Connection, v: &Verdict) -> SocketLine {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    SocketLine {
        netns: c.netns,
        cookie: c.diag.cookie,
        local: c.diag.local,
        remote: c.diag.remote,
        state: state_name(c.diag.state).to_owned(),
        side: if c.accepted {
            Side::Accepted
        } else {
            Side::Connected
        },
        pid: c.owner.as_ref().map(|o| o.pid),
        comm: c.owner.as_ref().map(|o| o.comm.clone()),
        idle_rx_ms: c.diag.idle_rx.map(ms),
        idle_tx_ms: c.diag.idle_tx.map(ms),
        keepalive: c.keepalive.map(|k| KeepaliveLine {
            on: k.on,
            idle_ms: ms(k.idle),
            interval_ms: ms(k.interval),
            count: k.count,
            idle_from: if k.idle_from_socket {
                "socket"
            } else {
                "sysctl"
            }
            .to_owned(),
        }),
        timer: c.diag.timer.map(|t| TimerLine {
            kind: t.name().to_owned(),
            fires_in_ms: t.fires_in().map(ms),
        }),
        retransmits: c.diag.retransmits,
        probes: c.diag.probes,
        window: c.window.map(|w| WindowLine {
            bound_ms: ms(w.bound),
            upper_ms: w.upper.map(ms),
            source: match w.source {
                WindowSource::Learned => "learned",
                WindowSource::Given => "given",
            }
            .to_owned(),
        }),
        risk: v.risk,
        code: v.code.to_owned(),
        reason: v.reason.clone(),
    }
}

/// The totals.
pub fn audit_line(namespaces: usize, judged: &[Judged], incomplete: Vec<String>) -> AuditLine {
    let count = |risk| judged.iter().filter(|(_, v)| v.risk == risk).count();
    AuditLine {
        namespaces,
        connections: judged.len(),
        will_reset: count(Risk::WillReset),
        at_risk: count(Risk::AtRisk),
        orphan_suspect: count(Risk::OrphanSuspect),
        ok: count(Risk::Ok),
        incomplete,
    }
}

/// What the summaries group by: connections to one remote, or accepted ones from one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Remote(SocketAddr),
    Peer(IpAddr),
}

/// A process by pid and command name.
type ProcessKey = (u32, String);

/// One line per destination with a window, then one per process and destination (or peer)
/// with a window: how many connections, their keepalive, how many at which risk, and what to
/// change.
pub fn summaries(judged: &[Judged]) -> Vec<SummaryLine> {
    let mut destinations: BTreeMap<SocketAddr, Vec<&Judged>> = BTreeMap::new();
    let mut processes: BTreeMap<(Option<ProcessKey>, Target), Vec<&Judged>> = BTreeMap::new();
    for j @ (c, _) in judged.iter().filter(|(c, _)| c.window.is_some()) {
        let target = if c.accepted {
            Target::Peer(c.diag.remote.ip())
        } else {
            destinations.entry(c.diag.remote).or_default().push(j);
            Target::Remote(c.diag.remote)
        };
        let owner = c
            .owner
            .as_ref()
            .map(|Owner { pid, comm }| (*pid, comm.clone()));
        processes.entry((owner, target)).or_default().push(j);
    }
    let mut lines: Vec<_> = destinations
        .iter()
        .map(|(remote, group)| destination_summary(*remote, group))
        .collect();
    lines.extend(
        processes
            .iter()
            .map(|((owner, target), group)| process_summary(owner.as_ref(), *target, group)),
    );
    lines
}

fn worst(group: &[&Judged]) -> Risk {
    group.iter().map(|(_, v)| v.risk).min().unwrap_or(Risk::Ok)
}

fn risk_counts(group: &[&Judged]) -> String {
    Risk::ALL
        .iter()
        .filter_map(|&risk| {
            let n = group.iter().filter(|(_, v)| v.risk == risk).count();
            (n > 0).then(|| format!("{n} {risk}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn destination_summary(remote: SocketAddr, group: &[&Judged]) -> SummaryLine {
    let window = group[0].0.window.map(|w| super::risk::describe(&w));
    SummaryLine {
        scope: Scope::Destination,
        risk: worst(group),
        connections: group.len(),
        text: format!(
            "{remote} ({}): {} connection{}: {}",
            window.unwrap_or_default(),
            group.len(),
            plural(group.len()),
            risk_counts(group)
        ),
    }
}

fn process_summary(
    owner: Option<&(u32, String)>,
    target: Target,
    group: &[&Judged],
) -> SummaryLine {
    let who = owner.map_or_else(
        || "no process".to_owned(),
        |(pid, comm)| format!("{comm} (pid {pid})"),
    );
    let n = group.len();
    let bound = group
        .iter()
        .filter_map(|(c, _)| c.window.map(|w| w.bound))
        .min()
        .unwrap_or_default();
    let count = |code: &str| group.iter().filter(|(_, v)| v.code == code).count();
    let mut parts = vec![keepalive_summary(group)];
    let mut advice = None;
    let text = match target {
        Target::Remote(remote) => {
            let past = count("idle_past_bound");
            let slow = count("keepalive_above_bound");
            let near = count("idle_approaching_bound");
            if past > 0 {
                parts.push(format!(
                    "{past} idle longer than {}: will reset on next use",
                    secs(bound)
                ));
            }
            if slow > 0 {
                parts.push(format!(
                    "{slow} with a keepalive idle not below {}: will reset after any pause that long",
                    secs(bound)
                ));
            }
            if near > 0 {
                parts.push(format!("{near} idle approaching {}: at risk", secs(bound)));
            }
            if past + slow + near > 0 {
                advice = Some(format!(
                    "set SO_KEEPALIVE with TCP_KEEPIDLE below {} or evict pooled connections idle longer than {}",
                    secs(bound),
                    secs(bound)
                ));
            } else {
                parts.push("ok".to_owned());
            }
            format!(
                "{who}: {n} connection{} to {remote}, {}",
                plural(n),
                parts.join(", ")
            )
        }
        Target::Peer(peer) => {
            let orphans = count("idle_past_peer_windows");
            if orphans > 0 {
                parts.push(format!(
                    "{orphans} idle longer than any window towards it ({}): the clients are probably gone",
                    secs(bound)
                ));
                advice = Some(format!(
                    "enable keepalive on the server with TCP_KEEPIDLE below {}, or close connections idle longer than {}",
                    secs(bound),
                    secs(bound)
                ));
            } else {
                parts.push("ok".to_owned());
            }
            format!(
                "{who}: {n} accepted connection{} from {peer}, {}",
                plural(n),
                parts.join(", ")
            )
        }
    };
    SummaryLine {
        scope: Scope::Process,
        risk: worst(group),
        connections: n,
        text: match advice {
            Some(advice) => format!("{text}; {advice}"),
            None => text,
        },
    }
}

fn keepalive_summary(group: &[&Judged]) -> String {
    let settings: Vec<_> = group
        .iter()
        .map(|(c, _)| match c.keepalive {
            None => "keepalive unknown".to_owned(),
            Some(k) if !k.on => "keepalive off".to_owned(),
            Some(k) => format!("keepalive idle {}", secs(k.idle)),
        })
        .collect();
    if settings.iter().all(|s| *s == settings[0]) {
        settings[0].clone()
    } else {
        let off = settings.iter().filter(|s| *s == "keepalive off").count();
        format!("keepalive off on {off} of {}", settings.len())
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sockets::{
        model::{DiagSocket, Keepalive, Window},
        risk::judge,
    };

    fn pooled(port: u16, idle_s: u64, keepalive: Option<u64>) -> Connection {
        Connection {
            netns: 4026531833,
            diag: DiagSocket {
                cookie: u64::from(port),
                local: SocketAddr::from(([192, 168, 105, 10], port)),
                remote: "192.168.105.67:8080".parse().unwrap(),
                state: 1,
                inode: u32::from(port),
                timer: keepalive.map(|k| Timer::Keepalive(Duration::from_secs(k))),
                idle_rx: Some(Duration::from_secs(idle_s)),
                idle_tx: Some(Duration::from_secs(idle_s)),
                retransmits: 0,
                probes: 0,
            },
            accepted: false,
            owner: Some(Owner {
                pid: 5765,
                comm: "java".to_owned(),
            }),
            keepalive: Some(Keepalive {
                on: keepalive.is_some(),
                idle: Duration::from_secs(keepalive.unwrap_or(7200)),
                interval: Duration::from_secs(75),
                count: 9,
                idle_from_socket: false,
            }),
            window: Some(Window {
                bound: Duration::from_secs(1790),
                upper: Some(Duration::from_secs(1805)),
                source: WindowSource::Learned,
            }),
        }
    }

    fn judged(connections: Vec<Connection>) -> Vec<Judged> {
        connections
            .into_iter()
            .map(|c| {
                let v = judge(&c);
                (c, v)
            })
            .collect()
    }

    #[test]
    fn the_seed_pool_is_summarised_with_its_advice() {
        let pool = judged(
            (0..83)
                .map(|i| pooled(40000 + i, if i < 12 { 1900 } else { 300 }, None))
                .collect(),
        );
        let lines = summaries(&pool);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0].scope, Scope::Destination);
        assert_eq!(lines[0].risk, Risk::WillReset);
        assert_eq!(
            lines[0].text,
            "192.168.105.67:8080 (learned window (1790 s, 1805 s]): 83 connections: 12 will_reset, 71 ok"
        );
        assert_eq!(
            lines[1].text,
            "java (pid 5765): 83 connections to 192.168.105.67:8080, keepalive off, 12 idle longer \
             than 1790 s: will reset on next use; set SO_KEEPALIVE with TCP_KEEPIDLE below 1790 s \
             or evict pooled connections idle longer than 1790 s"
        );
    }

    #[test]
    fn a_fixed_pool_says_ok_and_orphans_are_summarised_per_peer() {
        let fixed = judged(vec![
            pooled(40000, 5000, Some(60)),
            pooled(40001, 10, Some(60)),
        ]);
        let lines = summaries(&fixed);
        assert_eq!(
            lines[1].text,
            "java (pid 5765): 2 connections to 192.168.105.67:8080, keepalive idle 60 s, ok"
        );
        let mut orphan = pooled(8080, 4000, None);
        orphan.accepted = true;
        let lines = summaries(&judged(vec![orphan]));
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].risk, Risk::OrphanSuspect);
        assert!(lines[0].text.starts_with("java (pid 5765): 1 accepted connection from 192.168.105.67, keepalive off, 1 idle longer"), "{}", lines[0].text);
    }

    #[test]
    fn table_rows_fit_120_columns_and_json_lines_parse_back() {
        let mut c = pooled(40000, 1900, None);
        c.diag.local = "198.51.100.200:65535".parse().unwrap();
        c.diag.remote = "198.51.100.100:65535".parse().unwrap();
        c.owner = Some(Owner {
            pid: 4_194_304,
            comm: "a-long-command-name".to_owned(),
        });
        let mut ka = pooled(40001, 10, Some(7200));
        ka.diag.timer = Some(Timer::Keepalive(Duration::from_millis(7_199_900)));
        let all = judged(vec![c, ka]);
        let lines = summaries(&all);
        let audit = audit_line(1, &all, vec![]);
        let mut text = Vec::new();
        table(&mut text, &all, &lines, &audit).unwrap();
        let text = String::from_utf8(text).unwrap();
        let rows: Vec<_> = text.lines().take_while(|l| !l.is_empty()).collect();
        assert!(rows[0].starts_with("RISK"), "{text}");
        for row in rows.iter().filter(|r| !r.starts_with("    ")) {
            assert!(row.len() <= 120, "{} columns: {row}", row.len());
        }
        assert!(
            text.contains("will_reset     198.51.100.200:65535"),
            "{text}"
        );
        assert!(text.contains("7200/75/9"), "{text}");
        assert!(
            text.contains("    idle_past_bound: idle 1900 s past the bound"),
            "{text}"
        );
        let mut json_out = Vec::new();
        json(&mut json_out, &all, &lines, audit.clone()).unwrap();
        let parsed: Vec<SocketsLine> = String::from_utf8(json_out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(
            matches!(&parsed[0], SocketsLine::Socket(s) if s.risk == Risk::WillReset && s.code == "idle_past_bound")
        );
        assert_eq!(parsed.last(), Some(&SocketsLine::Audit(audit)));
    }
}
