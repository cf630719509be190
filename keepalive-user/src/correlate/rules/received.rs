//! RSTs this host received: refused connections, forged RSTs, idle expiries and peer aborts.

use keepalive_common::tcp_flags;

use super::{
    Decision, Facts, Threshold,
    evidence::{TtlCompare, compare_ttl, idle_check},
};
use crate::{
    correlate::finding::{Confidence, FindingKind, Verdict},
    event::TcpState,
};

/// An RST arrived on the socket. In order:
///
/// 1. In SYN_SENT it answers our SYN: `peer_reset` / `refused`, `confirmed` when its TTL is
///    the peer's, `likely` when unknown, `possible` when it differs (a firewall on the path
///    may have refused it).
/// 2. Its TTL differs from the peer's handshake TTL: `middlebox_drop` / `forged_rst`. If the
///    idle-expiry test holds as well, the two independent signals agree: `confirmed`, with the
///    idle evidence; otherwise `likely` (a route change can also shift a TTL).
/// 3. Its TTL equals the peer's: the peer host (or its own firewall) sent it, even after a long
///    idle gap. Without an ACK it is the peer's kernel answering a segment for a connection it
///    does not have (restarted, socket destroyed, or a balancer rehashed the flow to a backend
///    that never saw it): `peer_reset` / `peer_lost_state`; with one, the peer's application
///    aborted a live connection: `peer_reset` / `peer_abort`. Both `confirmed`: the TTL and the
///    flags are independent facts.
/// 4. TTL unknown and the idle-expiry test holds: `middlebox_drop` / `idle_expiry_rst`,
///    `likely` against a learned bound, `possible` against the configured floor.
/// 5. Otherwise `peer_reset` / `peer_abort`, `likely`.
///
/// In CLOSE_WAIT the peer had sent its FIN first: the RST answers this host's use of a
/// connection the peer had closed (a stale pooled connection), said in the evidence.
pub(in crate::correlate) fn reset_received(f: &Facts) -> Decision {
    if f.state == TcpState::SynSent {
        return refused(f);
    }
    let idle = idle_check(f);
    let peer_closed_first = f.state == TcpState::CloseWait;
    let mut decision = match compare_ttl(f) {
        TtlCompare::Differ(ttl_evidence) => {
            let confidence = if idle.applies {
                Confidence::Confirmed
            } else {
                Confidence::Likely
            };
            let mut d = Decision::new(Verdict::MiddleboxDrop, FindingKind::ForgedRst, confidence)
                .with(ttl_evidence)
                .with(idle.evidence);
            // A forged RST after a flagged idle gap that keepalive did not cover also bounds
            // the path's timeout; one in the middle of traffic (a firewall's policy) does not.
            let explicit = f.gap.is_some_and(|g| g.is_explicit());
            if idle.applies || (explicit && !idle.keepalive_protects) {
                d.learn_gap_ms = f.gap.map(|g| g.ms);
            }
            d
        }
        TtlCompare::Same(ttl_evidence) => {
            // In CLOSE_WAIT the peer closed first: a stale reuse, whatever its stack answered.
            let lost = f.state != TcpState::CloseWait
                && f.rst_flags.is_some_and(|flags| flags & tcp_flags::ACK == 0);
            let (kind, flags) = if lost {
                (
                    FindingKind::PeerLostState,
                    "the RST carries no ACK: the peer's kernel answered this host's segment for \
                     a connection it does not have",
                )
            } else {
                (
                    FindingKind::PeerAbort,
                    "the RST carries an ACK: a live socket on the peer aborted the connection",
                )
            };
            let mut d = Decision::new(Verdict::PeerReset, kind, Confidence::Confirmed)
                .with(ttl_evidence)
                .with(idle.evidence);
            if f.rst_flags.is_some() {
                d.evidence.push(flags.to_owned());
            }
            d
        }
        TtlCompare::Unknown(sentence) if idle.applies => {
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
            .with([sentence]);
            d.learn_gap_ms = f.gap.map(|g| g.ms);
            d
        }
        TtlCompare::Unknown(sentence) => Decision::new(
            Verdict::PeerReset,
            FindingKind::PeerAbort,
            Confidence::Likely,
        )
        .with([sentence])
        .with(idle.evidence),
    };
    if peer_closed_first {
        decision.evidence.push(
            "the peer had closed its end first (FIN received, socket in CLOSE_WAIT) and \
             answered this host's later segment with an RST"
                .to_owned(),
        );
        decision.peer_closed_first = true;
    } else if f.state != TcpState::Established {
        decision
            .evidence
            .push(format!("socket was {} when the RST arrived", f.state));
    }
    decision
}

fn refused(f: &Facts) -> Decision {
    let first = format!(
        "the RST answered this host's SYN: nothing accepted the connection to {}",
        f.remote
    );
    let (confidence, ttl) = match compare_ttl(f) {
        TtlCompare::Same(e) => (Confidence::Confirmed, e),
        TtlCompare::Unknown(s) => (Confidence::Likely, vec![s]),
        TtlCompare::Differ(mut e) => {
            e.push("a firewall on the path may have refused it".to_owned());
            (Confidence::Possible, e)
        }
    };
    Decision::new(Verdict::PeerReset, FindingKind::Refused, confidence)
        .with([first])
        .with(ttl)
}
