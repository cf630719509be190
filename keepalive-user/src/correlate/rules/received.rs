//! RSTs this host received: refused connections, forged RSTs, idle expiries and peer aborts.

use keepalive_common::tcp_flags;

use super::{
    Decision, Facts, Threshold,
    evidence::{TtlSays, compare_ttl, idle_check},
};
use crate::{
    correlate::finding::{Confidence, Fact, FindingKind, MissingFact, Verdict},
    event::TcpState,
};

/// An RST arrived on the socket. In order:
///
/// 1. In SYN_SENT it answers our SYN: `peer_reset` / `refused`, `confirmed` when its TTL is
///    the peer's, `likely` when unknown, `possible` when it differs (a firewall on the path
///    may have refused it).
/// 2. In FIN_WAIT1/2 with no RST segment seen: data after this host's close, see
///    [`data_after_close`].
/// 3. In CLOSE_WAIT the peer had sent its FIN first and this host used the connection again
///    (a pooled connection the server closed for idleness): `peer_reset` / `keepalive_race`,
///    with how long the connection had been idle when the FIN came. `confirmed` when the
///    RST's TTL is the peer's, `likely` otherwise.
/// 4. Its TTL differs from the peer's handshake TTL: `middlebox_drop` / `forged_rst`. If the
///    idle-expiry test holds as well and the TTL is from this connection's own handshake, the
///    two independent signals agree: `confirmed`, with the idle evidence; otherwise `likely`
///    (a route change can also shift a TTL, another connection may reach another backend).
/// 5. Its TTL equals the peer's: the peer host sent it, or something at its distance (a
///    balancer's backend, a middlebox copying the TTL). Without an ACK it is a stack
///    answering a segment for a connection it does not have (restarted, socket destroyed, a
///    balancer rehashed the flow): `peer_reset` / `peer_lost_state`; with one, the peer's
///    application aborted a live connection: `peer_abort`. `confirmed` only when the
///    independent facts agree: the TTL, the flags, and an idle gap below what connections
///    survived (or the floor); otherwise `likely`, naming what is missing.
/// 6. TTL unknown and the idle-expiry test holds: `middlebox_drop` / `idle_expiry_rst`,
///    `likely` against a learned bound, `possible` against the configured floor; never on
///    loopback, which has no middlebox.
/// 7. Otherwise (a TTL unknown: the RST was not seen, or the connection is older than the
///    observer and its peer's distance is unknown) `peer_reset` / `peer_lost_state` without an
///    ACK, else `peer_abort`: `likely` only when the peer's distance is known and the idle gap
///    is below the threshold, else `possible`, naming what is missing. Never a confident
///    verdict the facts do not support.
pub(in crate::correlate) fn reset_received(f: &Facts) -> Decision {
    if f.state == TcpState::SynSent {
        return refused(f);
    }
    if f.state == TcpState::CloseWait {
        return keepalive_race(f);
    }
    if matches!(f.state, TcpState::FinWait1 | TcpState::FinWait2) && f.rst_ttl.is_none() {
        return data_after_close(f);
    }
    let idle = idle_check(f);
    let ttl = compare_ttl(f);
    let mut decision = match ttl.says {
        TtlSays::Differ => {
            // A distance taken from another connection to the host may be another backend's.
            let own_distance = f.peer_ttl.is_some_and(|p| p.own_handshake);
            let confidence = if idle.applies && own_distance {
                Confidence::Confirmed
            } else {
                Confidence::Likely
            };
            let mut d = Decision::new(Verdict::MiddleboxDrop, FindingKind::ForgedRst, confidence)
                .with(ttl.evidence)
                .fact(ttl.facts)
                .with(idle.evidence)
                .fact(idle.facts);
            if !idle.applies {
                d.facts.push(Fact::Missing {
                    missing: MissingFact::IdleExpiry,
                });
            }
            // A forged RST after a flagged idle gap that keepalive did not cover also bounds
            // the path's timeout; one in the middle of traffic (a firewall's policy) does not.
            let explicit = f.gap.is_some_and(|g| g.is_explicit());
            if idle.applies || (explicit && !idle.keepalive_protects) {
                d.learn_gap_ms = f.gap.map(|g| g.ms);
            }
            d
        }
        TtlSays::Same => {
            let mut missing = Vec::new();
            if f.rst_flags.is_none() {
                missing.push(MissingFact::RstFlags);
            }
            if !idle.below_threshold {
                missing.push(MissingFact::IdleExpiry);
            }
            let confidence = if missing.is_empty() {
                Confidence::Confirmed
            } else {
                Confidence::Likely
            };
            let mut d = Decision::new(Verdict::PeerReset, peer_kind(f), confidence)
                .with(ttl.evidence)
                .fact(ttl.facts)
                .with(idle.evidence)
                .fact(idle.facts);
            flags_evidence(f, &mut d);
            if idle.applies {
                d.evidence.push(
                    "the idle gap is long enough for a middlebox's idle timeout, and a \
                     middlebox can copy the peer's TTL: the TTL alone does not prove the peer"
                        .to_owned(),
                );
            }
            d.facts
                .extend(missing.into_iter().map(|missing| Fact::Missing { missing }));
            d
        }
        // Loopback has no middlebox to expire the flow.
        TtlSays::Unknown if idle.applies && !f.remote.ip().is_loopback() => {
            let confidence = match f.threshold {
                Threshold::Learned { .. } => Confidence::Likely,
                Threshold::Floor { .. } => Confidence::Possible,
            };
            let mut d = Decision::new(
                Verdict::MiddleboxDrop,
                FindingKind::IdleExpiryRst,
                confidence,
            )
            .with(idle.evidence)
            .fact(idle.facts)
            .with(ttl.evidence)
            .fact(ttl.facts);
            d.learn_gap_ms = f.gap.map(|g| g.ms);
            d
        }
        TtlSays::Unknown => {
            let peer_distance_known = f.peer_ttl.is_some();
            let confidence = if peer_distance_known && idle.below_threshold {
                Confidence::Likely
            } else {
                Confidence::Possible
            };
            let mut d = Decision::new(Verdict::PeerReset, peer_kind(f), confidence)
                .with(ttl.evidence)
                .fact(ttl.facts)
                .with(idle.evidence)
                .fact(idle.facts);
            flags_evidence(f, &mut d);
            if confidence == Confidence::Possible {
                d.evidence.push(
                    "without the peer's distance the RST may as well come from a device on \
                     the path: the facts do not decide it"
                        .to_owned(),
                );
            }
            d
        }
    };
    if f.state != TcpState::Established {
        decision
            .evidence
            .push(format!("socket was {} when the RST arrived", f.state));
        decision.facts.push(Fact::SocketState { state: f.state });
    }
    decision
}

/// `tcp_reset` ran on a socket this host had closed, and no RST segment arrived (the ingress
/// program sees every one): the kernel resets a closed socket that receives data (RFC 1122,
/// `tcp_rcv_state_process`), then answers the data with its own RST. `local_close` /
/// `abort_on_data`, `likely`; that RST confirms it when it is seen.
fn data_after_close(f: &Facts) -> Decision {
    Decision::new(
        Verdict::LocalClose,
        FindingKind::AbortOnData,
        Confidence::Likely,
    )
    .with([format!(
        "the kernel reset the connection in {} with no RST segment from the peer: the peer \
         sent data after this host had closed the socket",
        f.state
    )])
    .fact([
        Fact::SocketState { state: f.state },
        Fact::Missing {
            missing: MissingFact::RstTtl,
        },
    ])
}

/// Without an ACK the RST is a stack's answer for a connection it does not have.
fn peer_kind(f: &Facts) -> FindingKind {
    if f.rst_flags.is_some_and(|flags| flags & tcp_flags::ACK == 0) {
        FindingKind::PeerLostState
    } else {
        FindingKind::PeerAbort
    }
}

fn flags_evidence(f: &Facts, d: &mut Decision) {
    let Some(flags) = f.rst_flags else {
        return;
    };
    if flags & tcp_flags::ACK == 0 {
        d.evidence.push(
            "the RST carries no ACK: the peer's kernel answered this host's segment for a \
             connection it does not have"
                .to_owned(),
        );
        d.facts.push(Fact::RstWithoutAck);
    } else {
        d.evidence.push(
            "the RST carries an ACK: a live socket on the peer aborted the connection".to_owned(),
        );
        d.facts.push(Fact::RstWithAck);
    }
}

/// The peer closed its end first (FIN, socket in CLOSE_WAIT), and the RST answered this
/// host's later use of the connection: a pooled keep-alive connection the server had closed.
fn keepalive_race(f: &Facts) -> Decision {
    let ttl = compare_ttl(f);
    let confidence = if ttl.says == TtlSays::Same {
        Confidence::Confirmed
    } else {
        Confidence::Likely
    };
    let mut d = Decision::new(Verdict::PeerReset, FindingKind::KeepaliveRace, confidence);
    d.evidence.push(match f.idle_at_fin_ms {
        Some(ms) => format!(
            "the peer closed its end (FIN) after the connection had been idle {ms} ms, and \
             answered this host's later segment with an RST"
        ),
        None => "the peer had closed its end first (FIN received, socket in CLOSE_WAIT) and \
                 answered this host's later segment with an RST"
            .to_owned(),
    });
    d.facts.push(Fact::PeerClosedFirst {
        idle_at_fin_ms: f.idle_at_fin_ms,
        learned_close_ms: f.learned_close_ms,
    });
    if let Some(ms) = f.learned_close_ms {
        d.evidence.push(format!(
            "{} closes connections idle for about {ms} ms (the shortest idle before its FIN \
             seen so far)",
            f.remote
        ));
    }
    d = d.with(ttl.evidence).fact(ttl.facts);
    flags_evidence(f, &mut d);
    d.peer_closed_first = true;
    d
}

fn refused(f: &Facts) -> Decision {
    let first = format!(
        "the RST answered this host's SYN: nothing accepted the connection to {}",
        f.remote
    );
    let mut ttl = compare_ttl(f);
    let confidence = match ttl.says {
        TtlSays::Same => Confidence::Confirmed,
        TtlSays::Unknown => Confidence::Likely,
        TtlSays::Differ => {
            ttl.evidence
                .push("a firewall on the path may have refused it".to_owned());
            Confidence::Possible
        }
    };
    Decision::new(Verdict::PeerReset, FindingKind::Refused, confidence)
        .with([first])
        .with(ttl.evidence)
        .fact(ttl.facts)
}
