//! Advice: what to change, in one sentence with numbers and as actions for machines, and the
//! well-known middlebox idle timeouts a learned window can be matched against.

use std::net::SocketAddr;

use super::{
    finding::{Action, Confidence, Fact, FindingKind, Verdict},
    learn::Window,
};
use crate::event::Task;

/// A middlebox's default idle timeout for established TCP flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownTimeout {
    /// The middlebox, e.g. "AWS NLB / NAT gateway".
    pub name: &'static str,
    /// Its default, seconds.
    pub secs: u64,
}

/// Defaults as their vendors document them.
pub(super) const KNOWN_TIMEOUTS: &[KnownTimeout] = &[
    // Azure Load Balancer: "the default idle timeout is 4 minutes"
    // (learn.microsoft.com/azure/load-balancer/load-balancer-tcp-idle-timeout).
    KnownTimeout {
        name: "Azure Load Balancer",
        secs: 240,
    },
    // AWS Network Load Balancer TCP idle timeout 350 s
    // (docs.aws.amazon.com/elasticloadbalancing/latest/network/network-load-balancers.html);
    // AWS NAT gateway: "idle for 350 seconds or more, the connection times out"
    // (docs.aws.amazon.com/vpc/latest/userguide/nat-gateway-troubleshooting.html).
    KnownTimeout {
        name: "AWS NLB / NAT gateway",
        secs: 350,
    },
    // IPVS: tcp_timeouts[IP_VS_TCP_S_ESTABLISHED] = 15*60*HZ (net/netfilter/ipvs/ip_vs_proto_tcp.c).
    KnownTimeout {
        name: "IPVS",
        secs: 900,
    },
    // GCP Cloud NAT: TCP established connection idle timeout 1200 s
    // (cloud.google.com/nat/docs/tune-nat-configuration).
    KnownTimeout {
        name: "GCP Cloud NAT",
        secs: 1200,
    },
    // Juniper SRX: TCP session inactivity timeout 1800 s (junos-tcp application default).
    KnownTimeout {
        name: "Juniper SRX",
        secs: 1800,
    },
    // Cisco ASA: `timeout conn 1:00:00` by default.
    KnownTimeout {
        name: "Cisco ASA",
        secs: 3600,
    },
    // nf_conntrack_tcp_timeout_established = 432000 (Documentation/networking/nf_conntrack-sysctl.rst).
    KnownTimeout {
        name: "Linux conntrack",
        secs: 432_000,
    },
];

/// The known defaults inside `(lo, hi]`.
pub fn known_in(window: Window) -> Vec<KnownTimeout> {
    KNOWN_TIMEOUTS
        .iter()
        .copied()
        .filter(|k| {
            let ms = k.secs.saturating_mul(1000);
            window.lo_ms < ms && ms <= window.hi_ms
        })
        .collect()
}

fn known_list(known: &[KnownTimeout]) -> String {
    known
        .iter()
        .map(|k| format!("{} ({} s)", k.name, k.secs))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Evidence sentences and facts for a remote's learned window.
pub(super) fn window_evidence(remote: SocketAddr, window: Window) -> (Vec<String>, Vec<Fact>) {
    let mut evidence = vec![format!(
        "connections to {remote} survived {} ms idle and died after {} ms",
        window.lo_ms, window.hi_ms
    )];
    let mut facts = vec![Fact::LearnedWindow {
        lo_ms: window.lo_ms,
        hi_ms: window.hi_ms,
    }];
    let known = known_in(window);
    if !known.is_empty() {
        evidence.push(format!(
            "that window contains the default idle timeout of {}",
            known_list(&known)
        ));
        facts.extend(known.iter().map(|k| Fact::KnownTimeout {
            name: k.name.to_owned(),
            secs: k.secs,
        }));
    }
    (evidence, facts)
}

/// A keepalive idle time well clear of a bound: half of it, rounded down to whole minutes
/// above two minutes and to tens of seconds above twenty, at least 1 s.
fn suggest_keepidle(bound_s: u64) -> u64 {
    let half = bound_s / 2;
    let rounded = match half {
        120.. => half / 60 * 60,
        20.. => half / 10 * 10,
        _ => half,
    };
    rounded.max(1)
}

/// An eviction age clear of a peer's close after `ms` idle: nine tenths of it, in whole
/// milliseconds, shown in seconds with one decimal.
fn evict_before_close_ms(ms: u64) -> u64 {
    (ms / 10 * 9).max(100)
}

/// What the advice needs to know.
pub(super) struct AdviceInput<'a> {
    pub verdict: Verdict,
    pub kind: FindingKind,
    pub confidence: Confidence,
    pub remote: SocketAddr,
    pub owner: Option<&'a Task>,
    /// Kernel reason label, for the kinds named after one.
    pub reason: Option<&'a str>,
    /// The remote's learned window, after this death.
    pub window: Option<Window>,
    /// The idle gap that ended this death, when it bounds the path's idle timeout.
    pub learned_gap_ms: Option<u64>,
    pub peer_closed_first: bool,
    /// The shortest idle time after which the remote closed a reused connection.
    pub learned_close_ms: Option<u64>,
}

/// What to change: one sentence for people, actions with their numbers for machines.
pub(super) struct Advice {
    pub text: String,
    pub actions: Vec<Action>,
}

impl Advice {
    fn new(text: String, actions: impl IntoIterator<Item = Action>) -> Self {
        Self {
            text,
            actions: actions.into_iter().collect(),
        }
    }
}

/// What to change.
pub(super) fn advice(input: &AdviceInput) -> Advice {
    let remote = input.remote;
    let who = input.owner.map_or_else(
        || "the application".to_owned(),
        |o| format!("{} (pid {})", o.comm, o.pid),
    );
    let (pid, comm) = (input.owner.map(|o| o.pid), input.owner.map(|o| o.comm));
    if input.verdict == Verdict::MiddleboxDrop
        && let Some(advice) = idle_advice(input)
    {
        return advice;
    }
    match input.kind {
        FindingKind::LingerZero => Advice::new(
            format!(
                "{who} closes with SO_LINGER {{1, 0}}, which resets the connection: remove the \
                 zero linger (or shutdown(SHUT_WR) and read to EOF before close()) unless an \
                 abortive close is intended"
            ),
            [Action::RemoveZeroLinger { pid, comm }],
        ),
        FindingKind::AbortOnClose => Advice::new(
            format!(
                "{who} closed the socket with unread data, which makes the kernel reset it: \
                 read the peer's data to EOF (or shutdown(SHUT_WR) and drain) before close()"
            ),
            [Action::DrainBeforeClose { pid, comm }],
        ),
        FindingKind::AbortOnLinger => Advice::new(
            format!(
                "{remote} kept the connection half-open after {who} closed it: find out why the \
                 peer never sends its FIN, or raise TCP_LINGER2 / net.ipv4.tcp_fin_timeout"
            ),
            [Action::RaiseFinTimeout],
        ),
        FindingKind::AbortOnData => Advice::new(
            format!(
                "{who} closed the socket while {remote} was still sending: agree on the end of \
                 the exchange in the protocol, or shutdown(SHUT_WR) and drain before close()"
            ),
            [Action::DrainBeforeClose { pid, comm }],
        ),
        FindingKind::AbortOnMemory => Advice::new(
            "the kernel reset orphaned connections for lack of memory: raise \
             net.ipv4.tcp_max_orphans or net.ipv4.tcp_mem, or leave fewer connections to close \
             in the background"
                .to_owned(),
            [Action::RaiseOrphanLimits],
        ),
        FindingKind::DisconnectWithData => Advice::new(
            format!(
                "{who} disconnected the socket with data still queued: let the send queue drain \
                 before shutdown or disconnect"
            ),
            [Action::DrainSendQueue],
        ),
        FindingKind::BadState => Advice::new(
            format!(
                "this host rejected a segment from {remote} that did not fit the connection \
                 ({}): look for stale or duplicated flows (NAT port reuse, TCP \
                 timestamps/PAWS)",
                input.reason.unwrap_or("no kernel reason")
            ),
            [Action::CheckStaleFlows],
        ),
        FindingKind::NoSocket => Advice::new(
            format!(
                "{remote} still uses a connection this host no longer has (restart, stale \
                 pooled connection, re-routed flow): make that client retry on reset and evict \
                 pooled connections it has not used recently"
            ),
            [Action::ClientRetryAndEvict { remote }],
        ),
        FindingKind::Destroyed => Advice::new(
            "a tool destroyed the socket (ss -K or SOCK_DESTROY): find out who runs it and why"
                .to_owned(),
            [Action::FindSocketKiller],
        ),
        FindingKind::LocalAbort => Advice::new(
            format!(
                "{who} aborted the connection and this kernel names no reason: check its close \
                 and error paths"
            ),
            [Action::CheckClosePaths],
        ),
        FindingKind::Refused => Advice::new(
            format!(
                "nothing accepted connections on {remote} (or a firewall rejected them): check \
                 that the service listens there and the path allows it"
            ),
            [Action::CheckListener { remote }],
        ),
        FindingKind::KeepaliveRace => race_advice(input),
        FindingKind::PeerAbort if input.peer_closed_first => race_advice(input),
        FindingKind::PeerAbort => Advice::new(
            format!(
                "{remote} aborted the connection: check the peer application's logs for an \
                 abortive close, a crash or a restart"
            ),
            [Action::CheckPeerApplication { remote }],
        ),
        FindingKind::PeerLostState => Advice::new(
            format!(
                "{remote} no longer had this connection (it restarted, its socket was \
                 destroyed, or a load balancer sent the flow to a backend that never saw it): \
                 retry on a new connection, and check the peer's and the load balancer's \
                 restarts and rehashing"
            ),
            [Action::RetryOnNewConnection { remote }],
        ),
        FindingKind::ForgedRst => Advice::new(
            format!(
                "a device on the path to {remote} reset the flow: check the idle and session \
                 timeouts and the logs of the load balancers and firewalls in between"
            ),
            [Action::CheckMiddlebox { remote }],
        ),
        FindingKind::SilentTimeout if input.confidence == Confidence::Possible => Advice::new(
            format!(
                "{remote} stopped answering and no other connection to it was answered \
                 meanwhile: check whether the peer host is up; if it is, the path dropped the \
                 flow, so enable TCP keepalive (SO_KEEPALIVE with TCP_KEEPIDLE below the \
                 middlebox's idle timeout)"
            ),
            [Action::CheckPeerHost { remote }, Action::EnableKeepalive],
        ),
        FindingKind::IdleExpiryRst | FindingKind::SilentTimeout => Advice::new(
            format!(
                "the path to {remote} dropped the flow: enable TCP keepalive (SO_KEEPALIVE with \
                 TCP_KEEPIDLE below the middlebox's idle timeout) and check for firewalls that \
                 drop state"
            ),
            [Action::EnableKeepalive, Action::CheckMiddlebox { remote }],
        ),
    }
}

/// A pooled connection the server had closed: evict before the server's keep-alive timeout,
/// with the number when one was measured.
fn race_advice(input: &AdviceInput) -> Advice {
    let remote = input.remote;
    let Some(close_ms) = input.learned_close_ms else {
        return Advice::new(
            format!(
                "{remote} had closed the connection before it was used again: evict pooled \
                 connections before the server's keep-alive timeout (honour its `Keep-Alive: \
                 timeout`) and drop connections the peer has closed before reusing them"
            ),
            [Action::DropPeerClosed],
        );
    };
    let evict_ms = evict_before_close_ms(close_ms);
    Advice::new(
        format!(
            "{remote} closes connections idle for about {:.1} s: evict pooled connections idle \
             longer than {:.1} s, or honour its `Keep-Alive: timeout`, and drop connections the \
             peer has closed before reusing them",
            close_ms as f64 / 1000.0,
            evict_ms as f64 / 1000.0
        ),
        [
            Action::EvictIdleAfter {
                seconds: evict_ms / 1000,
                ms: Some(evict_ms),
            },
            Action::DropPeerClosed,
        ],
    )
}

/// Keepalive and pool eviction below the learned window, or below the gap that killed this
/// connection while the window is not known yet.
fn idle_advice(input: &AdviceInput) -> Option<Advice> {
    if let Some(window) = input.window {
        let lo_s = window.lo_ms / 1000;
        let suggest = suggest_keepidle(lo_s);
        let known = known_in(window);
        let known = if known.is_empty() {
            String::new()
        } else {
            format!(
                "; the window contains the default idle timeout of {}",
                known_list(&known)
            )
        };
        return Some(Advice::new(
            format!(
                "set TCP_KEEPIDLE below {lo_s} s (e.g. {suggest} s) or evict pooled connections \
                 idle longer than {lo_s} s{known}"
            ),
            [
                Action::KeepaliveIdleBelow {
                    seconds: lo_s,
                    suggested: suggest,
                },
                Action::EvictIdleAfter {
                    seconds: lo_s,
                    ms: None,
                },
            ],
        ));
    }
    let gap_s = input.learned_gap_ms? / 1000;
    let suggest = suggest_keepidle(gap_s);
    Some(Advice::new(
        format!(
            "set TCP_KEEPIDLE below {gap_s} s (e.g. {suggest} s) or evict pooled connections \
             idle longer than {suggest} s: the path to {} forgot this flow within {gap_s} s idle",
            input.remote
        ),
        [
            Action::KeepaliveIdleBelow {
                seconds: gap_s,
                suggested: suggest,
            },
            Action::EvictIdleAfter {
                seconds: suggest,
                ms: None,
            },
        ],
    ))
}

#[cfg(test)]
mod tests {
    use super::{Window, known_in, suggest_keepidle};

    #[test]
    fn suggestions_are_round_and_below_the_bound() {
        assert_eq!(suggest_keepidle(4), 2);
        assert_eq!(suggest_keepidle(1), 1);
        assert_eq!(suggest_keepidle(60), 30);
        assert_eq!(suggest_keepidle(1790), 840);
        assert_eq!(suggest_keepidle(340), 120);
    }

    #[test]
    fn known_defaults_match_the_half_open_window() {
        let names = |lo_ms, hi_ms| {
            known_in(Window { lo_ms, hi_ms })
                .into_iter()
                .map(|k| k.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(1_790_000, 1_805_000), ["Juniper SRX"]);
        assert_eq!(names(1_800_000, 1_805_000), Vec::<&str>::new());
        assert_eq!(
            names(200_000, 400_000),
            ["Azure Load Balancer", "AWS NLB / NAT gateway"]
        );
    }
}
