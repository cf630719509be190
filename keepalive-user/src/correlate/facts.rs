//! What the rules need to know about a connection at the record that decides its death,
//! gathered from the record, the connection's context and the destination's knowledge.

use super::{
    Correlator,
    conn::{self, Conn, Keepalive},
    rules::{Alive, Facts, Gap, GapSource, PeerTtl, Threshold},
};
use crate::event::{RstSegment, TcpEvent, TcpState};

/// When it is unknown since when a dying connection went unanswered, another connection's
/// receive within this time counts as the peer being up.
const ALIVE_FALLBACK_NS: u64 = 60_000_000_000;

impl Correlator {
    /// Gathers what the rules need about a connection at its deciding event.
    pub(super) fn facts<'a>(
        &self,
        ev: &'a TcpEvent,
        conn: &'a Conn,
        state: TcpState,
        rst: Option<RstSegment>,
    ) -> Facts<'a> {
        let keepalive = ev
            .keepalive
            .as_ref()
            .or(conn.keepalive.as_ref())
            .map(|k| Keepalive::effective(k, &self.config.sysctls));
        let peer_ttl = conn
            .peer_ttl
            .map(|ttl| PeerTtl {
                ttl,
                own_handshake: true,
            })
            .or_else(|| {
                let ip = conn.remote.ip();
                self.host_ttls
                    .get(&(conn.netns_cookie, ip))
                    .map(|&ttl| PeerTtl {
                        ttl,
                        own_handshake: false,
                    })
            });
        let remote = self
            .remotes
            .get(&(conn.netns_cookie, conn.remote))
            .filter(|_| conn.client);
        let threshold = match remote.and_then(|r| r.learner.lo_ms()) {
            Some(lo_ms) => Threshold::Learned { lo_ms },
            None => Threshold::Floor {
                ms: self.config.idle_expiry_floor_ms,
            },
        };
        let gap = death_gap(ev, conn, state, keepalive);
        let silent_since = silent_since(ev, conn, keepalive);
        let alive = remote
            .and_then(|r| r.last_heard_by_other(ev.cookie))
            .filter(|&at| at > silent_since)
            .map(|at| Alive {
                ago_ms: ev.mono_ns.saturating_sub(at) / 1_000_000,
            });
        let idle_at_fin_ms = ev
            .context
            .as_ref()
            .and_then(|c| c.peer_fin_idle_ms)
            .filter(|_| state == TcpState::CloseWait);
        let learned_close_ms = remote
            .and_then(|r| r.peer_close_ms)
            .into_iter()
            .chain(idle_at_fin_ms)
            .min();
        Facts {
            ev,
            remote: conn.remote,
            state,
            owner: conn.owner.as_ref(),
            keepalive,
            rst_ttl: rst.map(|r| r.ttl),
            rst_flags: rst.map(|r| r.flags),
            peer_ttl,
            gap,
            threshold,
            alive,
            idle_at_fin_ms,
            learned_close_ms,
        }
    }
}

/// The idle gap that ended in this death: the first keepalive probe's when probes were
/// outstanding, else the unanswered idle send's, else (on an open connection) the time since
/// the peer was last heard from.
fn death_gap(
    ev: &TcpEvent,
    conn: &Conn,
    state: TcpState,
    keepalive: Option<Keepalive>,
) -> Option<Gap> {
    if state == TcpState::SynSent {
        return None;
    }
    if let Some(k) = keepalive.filter(|k| k.enabled && k.probes_out > 0) {
        return Some(Gap {
            ms: k.idle_ms,
            source: GapSource::KeepaliveProbe,
        });
    }
    if let Some(pending) = conn.pending_idle {
        return Some(Gap {
            ms: pending.gap_ms,
            source: GapSource::IdleSend,
        });
    }
    conn::last_rx_ns(ev).map(|_| Gap {
        ms: ev.idle_rx_ms.unwrap_or(0),
        source: GapSource::ReceiveIdle,
    })
}

/// Since when a dying connection got no answer: its unanswered idle send, or its first
/// unanswered keepalive probe, or the last time it heard from the peer.
fn silent_since(ev: &TcpEvent, conn: &Conn, keepalive: Option<Keepalive>) -> u64 {
    if let Some(pending) = conn.pending_idle {
        return pending.at_ns;
    }
    let fallback = ev.mono_ns.saturating_sub(ALIVE_FALLBACK_NS);
    let Some(last_rx) = conn.last_rx_ns else {
        return fallback;
    };
    match keepalive.filter(|k| k.enabled && k.probes_out > 0) {
        Some(k) => last_rx.saturating_add(k.idle_ms.saturating_mul(1_000_000)),
        None => last_rx,
    }
}
