//! Both ends on this host (loopback, or two network namespaces of this host): the daemon sees
//! both sockets of the connection, and their findings are linked. The end that sent the reset
//! names the process that received it, and the end that received it names the process that
//! sent it, with that process's advice.
//!
//! The records of the two ends come in either order, microseconds apart. A finding whose other
//! end may be on this host (a loopback peer, or a peer zero hops away by its TTL) waits for it
//! briefly, at most [`PAIR_WAIT_NS`] and the next tick; the other findings go out at once, and
//! a later record of the other end still names them.

use std::net::SocketAddr;

use super::{
    Correlator,
    conn::Outcome,
    finding::{Action, Confidence, Fact, Finding, FindingKind, Verdict},
};
use crate::event::Comm;

/// How long a finding waits for its other end's record.
pub(super) const PAIR_WAIT_NS: u64 = 200_000_000;

/// A connection's end by (local, remote) address: the other end's key is the reverse.
pub(super) type EndKey = (SocketAddr, SocketAddr);

/// What the other end's finding needs from this end's.
#[derive(Clone, Debug)]
pub(super) struct End {
    cookie: u64,
    pid: Option<u32>,
    comm: Option<Comm>,
    verdict: Verdict,
    kind: &'static str,
    advice: String,
    actions: Vec<Action>,
    mono_ns: u64,
}

impl End {
    fn of(finding: &Finding) -> Self {
        Self {
            cookie: finding.cookie,
            pid: finding.pid,
            comm: finding.comm.as_deref().map(comm_of),
            verdict: finding.verdict,
            kind: finding.kind.as_str(),
            advice: finding.advice.clone(),
            actions: finding.actions.clone(),
            mono_ns: finding.mono_ns,
        }
    }

    fn who(&self) -> String {
        match (self.pid, self.comm) {
            (Some(pid), Some(comm)) => format!("{comm} (pid {pid})"),
            (Some(pid), None) => format!("pid {pid}"),
            _ => "a socket".to_owned(),
        }
    }
}

/// A finding's command name is shown escaped; it parses back to the kernel's bytes.
fn comm_of(shown: &str) -> Comm {
    serde_json::from_value(serde_json::Value::String(shown.to_owned()))
        .unwrap_or_else(|_| Comm::from(shown))
}

/// Whether the other end of a connection may be a socket of this host: a loopback peer, or
/// a TTL that no router decremented.
pub(super) fn may_be_local(remote: SocketAddr, ttl: Option<u8>) -> bool {
    remote.ip().is_loopback() || ttl.is_some_and(|ttl| matches!(ttl, 64 | 128 | 255))
}

impl Correlator {
    /// Reports a finding of a connection with a socket, linked to its other end's when that
    /// end is a socket of this host; `wait` holds it briefly for that end's record.
    pub(super) fn emit(&mut self, mut finding: Finding, wait: bool, out: &mut Vec<Finding>) {
        let grace_ns = self.config.close_grace_ms.saturating_mul(1_000_000);
        let other = self
            .ends
            .remove(&(finding.remote, finding.local))
            .filter(|e| e.cookie != finding.cookie)
            .filter(|e| e.mono_ns.saturating_add(grace_ns) > finding.mono_ns);
        let Some(other) = other else {
            self.ends
                .insert((finding.local, finding.remote), End::of(&finding));
            let (cookie, at) = (finding.cookie, finding.mono_ns);
            if wait && let Some(conn) = self.recent.peek_mut(&cookie) {
                conn.outcome = Outcome::Pairing(Box::new(finding));
                self.pairing.push_back((cookie, at));
                return;
            }
            out.push(finding);
            return;
        };
        let held = self.recent.peek_mut(&other.cookie).and_then(|conn| {
            match std::mem::replace(&mut conn.outcome, Outcome::Reported) {
                Outcome::Pairing(held) => Some(*held),
                outcome => {
                    conn.outcome = outcome;
                    None
                }
            }
        });
        let this = End::of(&finding);
        link(&mut finding, &other);
        match held {
            Some(mut held) => {
                link(&mut held, &this);
                // The end that reset first, then the one that saw it.
                if held.verdict == Verdict::LocalClose {
                    out.extend([held, finding]);
                } else {
                    out.extend([finding, held]);
                }
            }
            None => out.push(finding),
        }
    }

    /// Releases the findings that waited for their other end long enough.
    pub(super) fn release_pairing(&mut self, mono_ns: u64, out: &mut Vec<Finding>) {
        while let Some(&(cookie, at)) = self.pairing.front() {
            let overfull = self.pairing.len() > self.config.max_recent;
            if !overfull && at.saturating_add(PAIR_WAIT_NS) > mono_ns {
                break;
            }
            self.pairing.pop_front();
            if let Some(conn) = self.recent.peek_mut(&cookie)
                && matches!(conn.outcome, Outcome::Pairing(_))
                && let Outcome::Pairing(finding) =
                    std::mem::replace(&mut conn.outcome, Outcome::Reported)
            {
                out.push(*finding);
            }
        }
    }
}

/// Adds to `finding` what its other end, a socket of this host, tells.
fn link(finding: &mut Finding, other: &End) {
    let who = other.who();
    finding.facts.push(Fact::LocalPeer {
        pid: other.pid,
        comm: other.comm,
        addr: finding.remote,
    });
    match (finding.verdict, other.verdict) {
        (Verdict::PeerReset, Verdict::LocalClose) => {
            finding.evidence.push(format!(
                "the other end is {who} on this host, and it reset the connection \
                 ({}): the kernel saw both sockets",
                other.kind
            ));
            finding.confidence = Confidence::Confirmed;
            // A keep-alive race is the reusing side's to fix; any other reset is the
            // resetting process's.
            if finding.kind != FindingKind::KeepaliveRace {
                finding.advice = format!(
                    "the reset came from {who} on this host ({}): {}",
                    other.kind, other.advice
                );
                finding.actions.clone_from(&other.actions);
            }
        }
        (Verdict::LocalClose, Verdict::PeerReset) => finding.evidence.push(format!(
            "the peer, {who} at {} on this host, saw the reset",
            finding.remote
        )),
        _ => finding.evidence.push(format!(
            "the other end is {who} at {} on this host ({}/{})",
            finding.remote, other.verdict, other.kind
        )),
    }
}
