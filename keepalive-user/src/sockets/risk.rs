//! The risk rules: whether a connection will be reset on its next use, judged from its idle
//! time, its keepalive and the destination's window. Pure: connections in, verdicts out.

use std::time::Duration;

use keepalive_schema::socket::Risk;

use super::model::{Connection, Window};

/// Keepalive off and idle at least this fraction of the bound: at risk.
const APPROACHING: f64 = 0.5;

/// A connection's risk with the rule that decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The risk.
    pub risk: Risk,
    /// The rule, as a code.
    pub code: &'static str,
    /// The rule in words, with the numbers.
    pub reason: String,
}

impl Verdict {
    fn new(risk: Risk, code: &'static str, reason: String) -> Self {
        Self { risk, code, reason }
    }
}

/// Judges one connection.
pub fn judge(connection: &Connection) -> Verdict {
    const ESTABLISHED: u8 = 1;
    if connection.diag.state != ESTABLISHED {
        return Verdict::new(
            Risk::Ok,
            "not_established",
            "not established: nothing is sent on it any more".to_owned(),
        );
    }
    let Some(window) = connection.window else {
        let whose = if connection.accepted {
            format!("towards {}", connection.diag.remote.ip())
        } else {
            format!("for {}", connection.diag.remote)
        };
        return Verdict::new(
            Risk::Ok,
            "no_window",
            format!("no learned or given window {whose}: nothing to judge against"),
        );
    };
    let Some(keepalive) = connection.keepalive else {
        return Verdict::new(
            Risk::Ok,
            "keepalive_unknown",
            "its keepalive settings could not be read (it opened after the socket iterator ran)"
                .to_owned(),
        );
    };
    let bound = window.bound;
    let idle = connection.idle().unwrap_or_default();
    let kept_alive = keepalive.on && keepalive.idle < bound;
    if connection.accepted {
        return if !kept_alive && idle > bound {
            Verdict::new(
                Risk::OrphanSuspect,
                "idle_past_peer_windows",
                format!(
                    "accepted, idle {} beyond the longest window towards {} ({}), {}: the \
                     client side is probably long gone",
                    secs(idle),
                    connection.diag.remote.ip(),
                    describe(&window),
                    keepalive_words(connection),
                ),
            )
        } else {
            Verdict::new(
                Risk::Ok,
                "accepted_within_windows",
                format!(
                    "accepted, idle {} within the windows towards {} ({}), {}",
                    secs(idle),
                    connection.diag.remote.ip(),
                    describe(&window),
                    keepalive_words(connection),
                ),
            )
        };
    }
    if kept_alive {
        return Verdict::new(
            Risk::Ok,
            "keepalive_below_bound",
            format!(
                "keepalive idle {} below the bound {} ({}): its probes keep the flow alive",
                secs(keepalive.idle),
                secs(bound),
                describe(&window),
            ),
        );
    }
    if keepalive.on {
        return Verdict::new(
            Risk::WillReset,
            "keepalive_above_bound",
            format!(
                "keepalive idle {} is not below the bound {} ({}): the path forgets the flow \
                 before the first probe; idle now {}",
                secs(keepalive.idle),
                secs(bound),
                describe(&window),
                secs(idle),
            ),
        );
    }
    if idle > bound {
        return Verdict::new(
            Risk::WillReset,
            "idle_past_bound",
            format!(
                "idle {} past the bound {} ({}) with keepalive off: the path has probably \
                 forgotten the flow",
                secs(idle),
                secs(bound),
                describe(&window),
            ),
        );
    }
    if idle.as_secs_f64() >= bound.as_secs_f64() * APPROACHING {
        return Verdict::new(
            Risk::AtRisk,
            "idle_approaching_bound",
            format!(
                "idle {} approaching the bound {} ({}) with keepalive off",
                secs(idle),
                secs(bound),
                describe(&window),
            ),
        );
    }
    Verdict::new(
        Risk::Ok,
        "idle_below_bound",
        format!(
            "idle {} well below the bound {} ({}), but keepalive off: a longer pause will \
             be reset",
            secs(idle),
            secs(bound),
            describe(&window),
        ),
    )
}

/// A duration as the output writes it: seconds, with decimals only below a minute.
pub fn secs(duration: Duration) -> String {
    let s = duration.as_secs_f64();
    if s < 60.0 && s.fract() != 0.0 {
        format!("{s:.1} s")
    } else {
        format!("{} s", duration.as_secs())
    }
}

/// The window in words.
pub fn describe(window: &Window) -> String {
    use super::model::WindowSource;
    match (window.source, window.upper) {
        (WindowSource::Given, _) => format!("given timeout {}", secs(window.bound)),
        (WindowSource::Learned, Some(upper)) => {
            format!("learned window ({}, {}]", secs(window.bound), secs(upper))
        }
        (WindowSource::Learned, None) => {
            format!("learned: survived {} idle", secs(window.bound))
        }
    }
}

fn keepalive_words(connection: &Connection) -> String {
    match connection.keepalive {
        Some(k) if k.on => format!("keepalive idle {}", secs(k.idle)),
        Some(_) => "keepalive off".to_owned(),
        None => "keepalive unknown".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::sockets::model::{DiagSocket, Keepalive, WindowSource};

    fn connection(idle_s: u64, keepalive: Option<u64>, bound_s: Option<u64>) -> Connection {
        Connection {
            netns: 1,
            diag: DiagSocket {
                cookie: 7,
                local: "198.51.100.2:40000".parse::<SocketAddr>().unwrap(),
                remote: "198.51.100.100:80".parse::<SocketAddr>().unwrap(),
                state: 1,
                inode: 9,
                timer: None,
                idle_rx: Some(Duration::from_secs(idle_s)),
                idle_tx: Some(Duration::from_secs(idle_s + 1)),
                retransmits: 0,
                probes: 0,
            },
            accepted: false,
            owner: None,
            keepalive: Some(Keepalive {
                on: keepalive.is_some(),
                idle: Duration::from_secs(keepalive.unwrap_or(7200)),
                interval: Duration::from_secs(75),
                count: 9,
                idle_from_socket: keepalive.is_some(),
            }),
            window: bound_s.map(|b| Window {
                bound: Duration::from_secs(b),
                upper: None,
                source: WindowSource::Given,
            }),
        }
    }

    fn risk(c: &Connection) -> (Risk, &'static str) {
        let verdict = judge(c);
        (verdict.risk, verdict.code)
    }

    #[test]
    fn keepalive_off_is_judged_by_idle_against_the_bound() {
        assert_eq!(
            risk(&connection(1900, None, Some(1790))),
            (Risk::WillReset, "idle_past_bound")
        );
        assert_eq!(
            risk(&connection(1000, None, Some(1790))),
            (Risk::AtRisk, "idle_approaching_bound")
        );
        assert_eq!(
            risk(&connection(10, None, Some(1790))),
            (Risk::Ok, "idle_below_bound")
        );
    }

    #[test]
    fn the_shorter_of_the_two_idle_times_counts() {
        let mut c = connection(1900, None, Some(1790));
        c.diag.idle_tx = Some(Duration::from_secs(5));
        assert_eq!(risk(&c).0, Risk::Ok);
    }

    #[test]
    fn keepalive_is_judged_by_its_idle_against_the_bound() {
        // Below the bound: safe however long it has been idle (probes refresh the flow).
        assert_eq!(
            risk(&connection(5000, Some(60), Some(1790))),
            (Risk::Ok, "keepalive_below_bound")
        );
        // The sysctl default (2 h) above an 1800 s middlebox: reset although it is on.
        let verdict = judge(&connection(10, Some(7200), Some(1790)));
        assert_eq!(verdict.risk, Risk::WillReset);
        assert_eq!(verdict.code, "keepalive_above_bound");
        assert!(verdict.reason.contains("7200 s"), "{}", verdict.reason);
        assert_eq!(
            risk(&connection(10, Some(1790), Some(1790))).0,
            Risk::WillReset
        );
    }

    #[test]
    fn accepted_connections_idle_past_every_window_are_orphan_suspects() {
        let mut c = connection(4000, None, Some(1790));
        c.accepted = true;
        let verdict = judge(&c);
        assert_eq!(verdict.risk, Risk::OrphanSuspect);
        assert!(
            verdict.reason.contains("198.51.100.100"),
            "{}",
            verdict.reason
        );
        c.diag.idle_rx = Some(Duration::from_secs(100));
        c.diag.idle_tx = Some(Duration::from_secs(100));
        assert_eq!(risk(&c), (Risk::Ok, "accepted_within_windows"));
        // A server socket with keepalive below the window notices a vanished client itself.
        let mut kept = connection(4000, Some(60), Some(1790));
        kept.accepted = true;
        assert_eq!(risk(&kept).0, Risk::Ok);
    }

    #[test]
    fn nothing_to_judge_against_is_ok_and_says_why() {
        let verdict = judge(&connection(99_999, None, None));
        assert_eq!((verdict.risk, verdict.code), (Risk::Ok, "no_window"));
        assert!(verdict.reason.contains("198.51.100.100:80"));
        let mut unknown = connection(99_999, None, Some(10));
        unknown.keepalive = None;
        assert_eq!(risk(&unknown), (Risk::Ok, "keepalive_unknown"));
        let mut closing = connection(99_999, None, Some(10));
        closing.diag.state = 8;
        assert_eq!(risk(&closing), (Risk::Ok, "not_established"));
    }

    #[test]
    fn learned_windows_are_described_with_both_bounds() {
        let window = Window {
            bound: Duration::from_secs(4),
            upper: Some(Duration::from_millis(5500)),
            source: WindowSource::Learned,
        };
        assert_eq!(describe(&window), "learned window (4 s, 5.5 s]");
        assert_eq!(secs(Duration::from_secs(1790)), "1790 s");
    }
}
