//! The evidence the verdicts weigh: the idle gap against the learned or configured threshold,
//! keepalive against the gap, and the RST's TTL against the peer's.

use super::Facts;
use crate::correlate::conn::{Keepalive, fmt_duration};
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
    pub(super) evidence: Vec<String>,
}

pub(super) fn idle_check(f: &Facts) -> IdleCheck {
    let Some(gap) = f.gap else {
        return IdleCheck {
            applies: false,
            keepalive_protects: false,
            evidence: Vec::new(),
        };
    };
    let mut evidence = vec![gap.sentence()];
    let keepalive_protects = f
        .keepalive
        .is_some_and(|k| k.enabled && k.probes_out == 0 && k.idle_ms < gap.ms);
    if let Some(k) = f.keepalive {
        evidence.push(keepalive_vs_gap(k, gap.ms));
    }
    let established = f.state == TcpState::Established;
    if established && !keepalive_protects {
        evidence.push(f.threshold.sentence(gap.ms, f.remote));
    }
    IdleCheck {
        applies: established && !keepalive_protects && f.threshold.reached(gap.ms),
        keepalive_protects,
        evidence,
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

/// The RST's TTL against the peer's.
pub(super) enum TtlCompare {
    Unknown(String),
    Same(Vec<String>),
    Differ(Vec<String>),
}

pub(super) fn compare_ttl(f: &Facts) -> TtlCompare {
    match (f.rst_ttl, f.peer_ttl) {
        (Some(rst), Some(peer)) => {
            let mut evidence = vec![hop_sentence(rst, peer.ttl)];
            if !peer.own_handshake {
                evidence.push(format!(
                    "peer TTL from another connection's handshake with {}",
                    f.remote.ip()
                ));
            }
            if rst == peer.ttl {
                TtlCompare::Same(evidence)
            } else {
                TtlCompare::Differ(evidence)
            }
        }
        (None, _) => TtlCompare::Unknown("the RST's TTL was not seen".to_owned()),
        (Some(rst), None) => TtlCompare::Unknown(format!(
            "RST TTL {rst}, but no handshake TTL is known for {}",
            f.remote.ip()
        )),
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
