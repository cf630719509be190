//! The evidence the verdicts weigh: the idle gap against the learned or configured threshold,
//! keepalive against the gap, and the RST's TTL against the peer's.

use super::Facts;
use crate::correlate::{
    conn::{Keepalive, fmt_duration},
    finding::{Fact, MissingFact},
};
use crate::event::TcpState;

/// The idle-expiry test and its evidence.
pub(super) struct IdleCheck {
    /// RST after an idle gap at or above the threshold, keepalive off or slower than the gap,
    /// on an ESTABLISHED socket (in the closing states a FIN exchange, not idleness, is going
    /// on).
    pub(super) applies: bool,
    /// Keepalive was on with an idle time shorter than the gap and no probe outstanding: the
    /// probes would have kept the flow alive, so idleness does not explain the RST.
    pub(super) keepalive_protects: bool,
    /// The gap is known and below the threshold: idleness does not explain the RST, which
    /// agrees with a peer's own RST.
    pub(super) below_threshold: bool,
    pub(super) evidence: Vec<String>,
    pub(super) facts: Vec<Fact>,
}

pub(super) fn idle_check(f: &Facts) -> IdleCheck {
    let Some(gap) = f.gap else {
        return IdleCheck {
            applies: false,
            keepalive_protects: false,
            below_threshold: false,
            evidence: Vec::new(),
            facts: Vec::new(),
        };
    };
    let mut evidence = vec![gap.sentence()];
    let mut facts = vec![gap.fact()];
    let keepalive_protects = f
        .keepalive
        .is_some_and(|k| k.enabled && k.probes_out == 0 && k.idle_ms < gap.ms);
    if let Some(k) = f.keepalive {
        evidence.push(keepalive_vs_gap(k, gap.ms));
        facts.push(keepalive_fact(k));
    }
    let established = f.state == TcpState::Established;
    if established && !keepalive_protects {
        evidence.push(f.threshold.sentence(gap.ms, f.remote));
        facts.push(f.threshold.fact(gap.ms));
    }
    let reached = f.threshold.reached(gap.ms);
    IdleCheck {
        applies: established && !keepalive_protects && reached,
        keepalive_protects,
        below_threshold: keepalive_protects || !reached,
        evidence,
        facts,
    }
}

pub(super) fn keepalive_fact(k: Keepalive) -> Fact {
    if k.enabled {
        Fact::KeepaliveOn {
            idle_ms: k.idle_ms,
            interval_ms: k.interval_ms,
            count: k.count,
            probes_out: k.probes_out,
        }
    } else {
        Fact::KeepaliveOff
    }
}

fn keepalive_vs_gap(k: Keepalive, gap_ms: u64) -> String {
    if !k.enabled {
        "keepalive off".to_owned()
    } else if k.probes_out > 0 {
        format!(
            "keepalive on ({}): {} probe(s) sent without an answer",
            k.settings(),
            k.probes_out
        )
    } else if k.idle_ms < gap_ms {
        format!(
            "keepalive idle {} is shorter than the {gap_ms} ms gap, so its probes should have \
             kept the flow alive",
            fmt_duration(k.idle_ms)
        )
    } else {
        format!(
            "keepalive on but its idle {} is longer than the {gap_ms} ms gap, so no probe went \
             out",
            fmt_duration(k.idle_ms)
        )
    }
}

/// The RST's TTL against the peer's: what it says, its sentences and facts.
pub(super) struct TtlCheck {
    pub(super) says: TtlSays,
    pub(super) evidence: Vec<String>,
    pub(super) facts: Vec<Fact>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TtlSays {
    /// One of the two TTLs is not known.
    Unknown,
    /// The RST came from the peer's distance.
    Same,
    /// The RST came from another distance or sender.
    Differ,
}

pub(super) fn compare_ttl(f: &Facts) -> TtlCheck {
    match (f.rst_ttl, f.peer_ttl) {
        (Some(rst), Some(peer)) => {
            let mut evidence = vec![hop_sentence(rst, peer.ttl)];
            let mut facts = vec![hop_fact(rst, peer.ttl)];
            if !peer.own_handshake {
                evidence.push(format!(
                    "peer TTL from another connection's handshake with {}",
                    f.remote.ip()
                ));
                facts.push(Fact::PeerTtlFromOtherConnection { peer_ttl: peer.ttl });
            }
            let says = if rst == peer.ttl {
                TtlSays::Same
            } else {
                TtlSays::Differ
            };
            TtlCheck {
                says,
                evidence,
                facts,
            }
        }
        (None, _) => TtlCheck {
            says: TtlSays::Unknown,
            evidence: vec!["the RST's TTL was not seen".to_owned()],
            facts: vec![Fact::Missing {
                missing: MissingFact::RstTtl,
            }],
        },
        (Some(rst), None) if f.state == TcpState::SynSent => TtlCheck {
            says: TtlSays::Unknown,
            evidence: vec![format!(
                "RST TTL {rst}, but no TTL is known for {}",
                f.remote.ip()
            )],
            facts: vec![Fact::Missing {
                missing: MissingFact::PeerTtl,
            }],
        },
        (Some(rst), None) => {
            let mut evidence = vec![format!(
                "RST TTL {rst}, but no handshake TTL is known for {} (the connection is older \
                 than the observer and no other connection to that host was seen)",
                f.remote.ip()
            )];
            let mut facts = vec![
                Fact::HandshakeNotSeen,
                Fact::Missing {
                    missing: MissingFact::PeerTtl,
                },
            ];
            if is_initial_ttl(rst) && !f.remote.ip().is_loopback() {
                evidence.push(format!(
                    "RST TTL {rst} is an unchanged initial TTL: it was sent from this host's \
                     local link, so not by {} if the route reaches it through a gateway",
                    f.remote.ip()
                ));
                facts.push(Fact::RstTtlLocalLink { rst_ttl: rst });
            }
            TtlCheck {
                says: TtlSays::Unknown,
                evidence,
                facts,
            }
        }
    }
}

/// A TTL exactly as common stacks start it (64 Linux, 128 Windows, 255 network gear): its
/// sender is zero hops away.
fn is_initial_ttl(ttl: u8) -> bool {
    matches!(ttl, 64 | 128 | 255)
}

fn hop_fact(rst: u8, peer: u8) -> Fact {
    let (rst_initial, peer_initial) = (initial_ttl(rst), initial_ttl(peer));
    let hops = rst.abs_diff(peer);
    if rst == peer {
        Fact::RstTtlEqual {
            rst_ttl: rst,
            peer_ttl: peer,
        }
    } else if rst_initial != peer_initial {
        Fact::RstTtlOtherSender {
            rst_ttl: rst,
            peer_ttl: peer,
            rst_initial,
            peer_initial,
        }
    } else if rst > peer {
        Fact::RstTtlCloser {
            rst_ttl: rst,
            peer_ttl: peer,
            hops,
        }
    } else {
        Fact::RstTtlFarther {
            rst_ttl: rst,
            peer_ttl: peer,
            hops,
        }
    }
}

/// The initial TTL a sender most likely used: the smallest common default at or above it.
fn initial_ttl(ttl: u8) -> u8 {
    [32, 64, 128].into_iter().find(|&i| ttl <= i).unwrap_or(255)
}

fn hop_sentence(rst: u8, peer: u8) -> String {
    if rst == peer {
        return format!("RST TTL {rst} equals the peer's TTL: it came from the peer's distance");
    }
    let (rst_initial, peer_initial) = (initial_ttl(rst), initial_ttl(peer));
    if rst_initial != peer_initial {
        return format!(
            "RST TTL {rst}, peer TTL {peer}: different initial TTLs ({rst_initial} and \
             {peer_initial}), so a different sender"
        );
    }
    let diff = rst.abs_diff(peer);
    let hops = if diff == 1 {
        "1 hop".to_owned()
    } else {
        format!("{diff} hops")
    };
    let direction = if rst > peer { "closer" } else { "farther" };
    format!("RST TTL {rst}, peer TTL {peer}: {hops} {direction} than the peer")
}

#[cfg(test)]
mod tests {
    use super::{hop_sentence, initial_ttl};

    #[test]
    fn hops_assume_a_common_initial_ttl() {
        assert_eq!(initial_ttl(63), 64);
        assert_eq!(initial_ttl(64), 64);
        assert_eq!(initial_ttl(120), 128);
        assert_eq!(initial_ttl(250), 255);
        assert_eq!(
            hop_sentence(64, 63),
            "RST TTL 64, peer TTL 63: 1 hop closer than the peer"
        );
        assert_eq!(
            hop_sentence(60, 63),
            "RST TTL 60, peer TTL 63: 3 hops farther than the peer"
        );
        assert!(hop_sentence(255, 63).contains("different initial TTLs (255 and 64)"));
    }
}
