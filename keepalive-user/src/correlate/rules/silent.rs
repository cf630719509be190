//! Deaths without an RST from the peer: unanswered keepalive probes, retransmission
//! timeouts, and the error reports that decide a death no RST did.

use super::{
    Decision, ECONNABORTED, ECONNREFUSED, ECONNRESET, EPIPE, ETIMEDOUT, Facts, Gap, GapSource,
    evidence::keepalive_fact,
    sent::{process_fact, process_sentence},
};
use crate::{
    correlate::finding::{Confidence, Fact, FindingKind, MissingFact, Verdict},
    event::TcpState,
};

/// Why a connection died silently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Silence {
    KeepaliveTimeout,
    TimedOut,
}

/// No RST, no answer: keepalive probes unanswered until the keepalive-timeout reset, or
/// ETIMEDOUT after retransmissions (or unanswered SYNs): the path or the peer is gone.
/// `middlebox_drop` / `silent_timeout`: `likely` when another connection to the same remote
/// heard from the peer while this one got no answer (the peer host was up, so the path
/// dropped the flow), and then the gap before the unanswered transmission teaches the
/// remote's learner. `possible` otherwise: the peer host may simply be down, the evidence and
/// the advice say so, and such a death teaches the learner nothing.
pub(super) fn silent_timeout(f: &Facts, how: Silence) -> Decision {
    let probes = f.keepalive.map_or(0, |k| k.probes_out);
    let mut facts = vec![Fact::Unanswered {
        probes,
        retransmits: f.ev.retransmits.filter(|_| how == Silence::TimedOut),
    }];
    let mut evidence = vec![match how {
        Silence::KeepaliveTimeout => format!(
            "{probes} keepalive probes went unanswered and the kernel gave up with an RST \
             (TCP_KEEPALIVE_TIMEOUT)"
        ),
        Silence::TimedOut if f.state == TcpState::SynSent => format!(
            "ETIMEDOUT with no RST: connect() to {} got no answer to its SYNs",
            f.remote
        ),
        Silence::TimedOut if probes > 0 => {
            format!("ETIMEDOUT with no RST: {probes} keepalive probes went unanswered")
        }
        Silence::TimedOut => match f.ev.retransmits.filter(|&r| r > 0) {
            Some(r) => format!("ETIMEDOUT with no RST: {r} retransmissions went unanswered"),
            None => "ETIMEDOUT with no RST: retransmissions went unanswered".to_owned(),
        },
    }];
    if let Some(k) = f.keepalive.filter(|k| k.enabled) {
        evidence.push(format!("keepalive on: {}", k.settings()));
        facts.push(keepalive_fact(k));
    }
    let gap = f.gap.filter(Gap::is_explicit);
    if let Some(gap) = gap {
        facts.push(gap.fact());
        evidence.push(match gap.source {
            GapSource::IdleSend => format!(
                "this host sent after {} ms idle and never got an answer",
                gap.ms
            ),
            _ => gap.sentence(),
        });
    }
    let confidence = match f.alive {
        Some(alive) => {
            evidence.push(format!(
                "another connection to {} received a segment {} ms before this death, while \
                 this one got no answer: the peer host was up",
                f.remote, alive.ago_ms
            ));
            facts.push(Fact::OtherConnectionAnswered {
                ago_ms: alive.ago_ms,
            });
            Confidence::Likely
        }
        None => {
            evidence.push(format!(
                "no other connection to {} was heard from while this one got no answer: the \
                 peer may be down, so this death does not teach the learned idle timeout",
                f.remote
            ));
            facts.push(Fact::NoOtherConnectionAnswered);
            facts.push(Fact::Missing {
                missing: MissingFact::OtherConnectionAnswered,
            });
            Confidence::Possible
        }
    };
    if f.remote.ip().is_loopback() {
        evidence.push(
            "the path is this host's loopback, with no middlebox on it: a local filter \
             (nftables, a socket filter) dropped the segments"
                .to_owned(),
        );
    }
    let mut decision = Decision::new(
        Verdict::MiddleboxDrop,
        FindingKind::SilentTimeout,
        confidence,
    )
    .with(evidence)
    .fact(facts);
    if f.alive.is_some() {
        decision.learn_gap_ms = gap.map(|g| g.ms);
    }
    decision
}

/// An error report on a connection whose death no RST decided.
///
/// - ETIMEDOUT: [`silent_timeout`].
/// - ECONNREFUSED without an RST: an ICMP port unreachable (a firewall's REJECT) or an RST
///   that was not seen; `peer_reset` / `refused`, `possible`.
/// - ECONNABORTED: `tcp_abort` destroyed it (`ss -K`, SOCK_DESTROY); `local_close` /
///   `destroyed`, `confirmed`.
/// - ECONNRESET or EPIPE in SYN_SENT: `tcp_disconnect` abandoned a pending connect; nothing
///   went on the wire, so no finding. Elsewhere the RST event was lost or came before this
///   observer started: `peer_reset` / `peer_abort`, `possible`.
/// - Other errors (ICMP unreachables) end no connection this product attributes: no finding.
pub(in crate::correlate) fn socket_error(f: &Facts) -> Option<Decision> {
    let errno = f.ev.sk_err?;
    let decision = match errno {
        ETIMEDOUT => silent_timeout(f, Silence::TimedOut),
        ECONNREFUSED => Decision::new(
            Verdict::PeerReset,
            FindingKind::Refused,
            Confidence::Possible,
        )
        .with([format!(
            "ECONNREFUSED on the connection to {} but no RST was seen: an ICMP port \
                 unreachable (a firewall's REJECT) or an RST this observer missed",
            f.remote
        )]),
        ECONNABORTED => Decision::new(
            Verdict::LocalClose,
            FindingKind::Destroyed,
            Confidence::Confirmed,
        )
        .with([
            "ECONNABORTED: the socket was destroyed from outside its process (ss -K or \
             SOCK_DESTROY)"
                .to_owned(),
            format!("socket was {}", f.state),
            process_sentence(None, f.owner),
        ])
        .fact([Fact::SocketState { state: f.state }])
        .fact(process_fact(None, f.owner)),
        ECONNRESET | EPIPE if f.state == TcpState::SynSent => return None,
        err @ (ECONNRESET | EPIPE) => Decision::new(
            Verdict::PeerReset,
            FindingKind::PeerAbort,
            Confidence::Possible,
        )
        .with([format!(
            "error {err} (connection reset) but no RST event was seen: events were \
                     lost or the observer started late"
        )]),
        _ => return None,
    };
    Some(decision.fact([Fact::SocketError { errno }]))
}
