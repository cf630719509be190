//! Timeout learning: whatever sits between this host and a remote forgets flows after some
//! idle time. It lies above the longest idle gap after which a connection to that remote was
//! used successfully, and at or below the shortest idle gap that ended in a reset or a silent
//! death.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The learned idle timeout of the path to one remote, in `(lo_ms, hi_ms]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Longest idle gap after which a connection was used successfully, milliseconds.
    pub lo_ms: u64,
    /// Shortest idle gap that ended in a reset or a silent death, milliseconds.
    pub hi_ms: u64,
}

/// What was learned about the path to one remote: both bounds (kept apart because either can
/// exist alone; a window exists only while `lo < hi`), how much evidence each rests on and
/// when the last arrived. What the daemon keeps across restarts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Learned {
    /// Longest idle gap after which a connection was used successfully, milliseconds.
    pub survived_ms: Option<u64>,
    /// Shortest idle gap that ended in a reset or a silent death, milliseconds.
    pub died_ms: Option<u64>,
    /// Survivals since the lower bound was last dropped.
    pub survivals: u64,
    /// Deaths since the upper bound was last dropped.
    pub deaths: u64,
    /// CLOCK_MONOTONIC ns of the last survival or death.
    pub last_seen_ns: u64,
}

/// A remote's [`Learned`] bounds as they grow.
#[derive(Clone, Debug, Default)]
pub(super) struct Learner {
    learned: Learned,
    /// Why a bound was dropped, told once in the next finding for this remote.
    note: Option<String>,
}

impl Learner {
    /// A connection was used successfully after `gap_ms` of idle.
    ///
    /// A survival at or above the known death gap contradicts it: that death was not this
    /// timeout (another path behind the same address, a peer that died, a changed timeout).
    /// The newer evidence wins and the death bound is dropped.
    pub(super) fn survived(&mut self, gap_ms: u64, at_ns: u64, remote: SocketAddr) {
        let learned = &mut self.learned;
        if let Some(hi) = learned.died_ms.filter(|&hi| gap_ms >= hi) {
            self.note = Some(format!(
                "a connection to {remote} survived {gap_ms} ms idle although one died after \
                 {hi} ms: that death was not this idle timeout (another path or a changed \
                 timeout), so the learned window was reset"
            ));
            learned.died_ms = None;
            learned.deaths = 0;
        }
        learned.survived_ms = Some(learned.survived_ms.map_or(gap_ms, |lo| lo.max(gap_ms)));
        learned.survivals += 1;
        learned.last_seen_ns = learned.last_seen_ns.max(at_ns);
    }

    /// A connection died after `gap_ms` of idle. A death at or below the survival bound
    /// contradicts it in the same way, and the survival bound is dropped.
    pub(super) fn died(&mut self, gap_ms: u64, at_ns: u64, remote: SocketAddr) {
        let learned = &mut self.learned;
        if let Some(lo) = learned.survived_ms.filter(|&lo| gap_ms <= lo) {
            self.note = Some(format!(
                "a connection to {remote} died after {gap_ms} ms idle although one survived \
                 {lo} ms: another path or a changed timeout, so the learned window was reset"
            ));
            learned.survived_ms = None;
            learned.survivals = 0;
        }
        learned.died_ms = Some(learned.died_ms.map_or(gap_ms, |hi| hi.min(gap_ms)));
        learned.deaths += 1;
        learned.last_seen_ns = learned.last_seen_ns.max(at_ns);
    }

    /// A learner that goes on from what an earlier run learned.
    pub(super) fn resume(learned: Learned) -> Self {
        Self {
            learned,
            note: None,
        }
    }

    /// What was learned; `None` while nothing is.
    pub(super) fn learned(&self) -> Option<Learned> {
        let learned = self.learned;
        (learned.survived_ms.is_some() || learned.died_ms.is_some()).then_some(learned)
    }

    /// The longest idle gap survived.
    pub(super) fn lo_ms(&self) -> Option<u64> {
        self.learned.survived_ms
    }

    pub(super) fn window(&self) -> Option<Window> {
        match (self.learned.survived_ms, self.learned.died_ms) {
            (Some(lo_ms), Some(hi_ms)) if lo_ms < hi_ms => Some(Window { lo_ms, hi_ms }),
            _ => None,
        }
    }

    pub(super) fn take_note(&mut self) -> Option<String> {
        self.note.take()
    }
}

#[cfg(test)]
mod tests {
    use super::{Learned, Learner, Window};

    const REMOTE: &str = "198.51.100.130:8080";

    #[test]
    fn window_needs_both_bounds() {
        let remote = REMOTE.parse().expect("test address");
        let mut learner = Learner::default();
        for gap in [1000, 2000, 3000, 4000] {
            learner.survived(gap, gap * 1_000_000, remote);
        }
        assert_eq!(learner.window(), None);
        assert_eq!(learner.lo_ms(), Some(4000));
        learner.died(8000, 20_000_000_000, remote);
        learner.died(6000, 10_000_000_000, remote);
        assert_eq!(
            learner.window(),
            Some(Window {
                lo_ms: 4000,
                hi_ms: 6000
            })
        );
        assert_eq!(learner.take_note(), None);
        assert_eq!(
            learner.learned(),
            Some(Learned {
                survived_ms: Some(4000),
                died_ms: Some(6000),
                survivals: 4,
                deaths: 2,
                last_seen_ns: 20_000_000_000,
            })
        );
    }

    #[test]
    fn a_resumed_learner_goes_on_from_what_was_learned() {
        let remote = REMOTE.parse().expect("test address");
        let mut learner = Learner::default();
        assert_eq!(learner.learned(), None);
        learner.died(6000, 1, remote);
        let mut resumed = Learner::resume(learner.learned().expect("a death"));
        resumed.survived(4000, 2, remote);
        assert_eq!(
            resumed.window(),
            Some(Window {
                lo_ms: 4000,
                hi_ms: 6000
            })
        );
    }

    #[test]
    fn contradictions_reset_the_older_bound() {
        let remote = REMOTE.parse().expect("test address");
        let mut learner = Learner::default();
        learner.survived(4000, 1, remote);
        learner.died(6000, 2, remote);
        learner.survived(7000, 3, remote);
        assert_eq!(learner.window(), None);
        assert_eq!(learner.lo_ms(), Some(7000));
        assert!(
            learner
                .take_note()
                .is_some_and(|n| n.contains("died after 6000 ms"))
        );
        assert_eq!(learner.take_note(), None);
        assert_eq!(
            learner.learned().map(|l| (l.survivals, l.deaths)),
            Some((2, 0))
        );
        learner.died(5000, 4, remote);
        assert_eq!(learner.lo_ms(), None);
        assert_eq!(
            learner.learned().map(|l| (l.survivals, l.deaths)),
            Some((0, 1))
        );
        assert!(
            learner
                .take_note()
                .is_some_and(|n| n.contains("survived 7000 ms"))
        );
    }
}
