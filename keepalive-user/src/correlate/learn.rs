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

/// Both bounds for one remote. They are kept apart because either can exist alone; a window
/// exists only while `lo < hi`.
#[derive(Clone, Debug, Default)]
pub(super) struct Learner {
    lo_ms: Option<u64>,
    hi_ms: Option<u64>,
    /// Why a bound was dropped, told once in the next finding for this remote.
    note: Option<String>,
}

impl Learner {
    /// A connection was used successfully after `gap_ms` of idle.
    ///
    /// A survival at or above the known death gap contradicts it: that death was not this
    /// timeout (another path behind the same address, a peer that died, a changed timeout).
    /// The newer evidence wins and the death bound is dropped.
    pub(super) fn survived(&mut self, gap_ms: u64, remote: SocketAddr) {
        if let Some(hi) = self.hi_ms.filter(|&hi| gap_ms >= hi) {
            self.note = Some(format!(
                "a connection to {remote} survived {gap_ms} ms idle although one died after \
                 {hi} ms: that death was not this idle timeout (another path or a changed \
                 timeout), so the learned window was reset"
            ));
            self.hi_ms = None;
        }
        self.lo_ms = Some(self.lo_ms.map_or(gap_ms, |lo| lo.max(gap_ms)));
    }

    /// A connection died after `gap_ms` of idle. A death at or below the survival bound
    /// contradicts it in the same way, and the survival bound is dropped.
    pub(super) fn died(&mut self, gap_ms: u64, remote: SocketAddr) {
        if let Some(lo) = self.lo_ms.filter(|&lo| gap_ms <= lo) {
            self.note = Some(format!(
                "a connection to {remote} died after {gap_ms} ms idle although one survived \
                 {lo} ms: another path or a changed timeout, so the learned window was reset"
            ));
            self.lo_ms = None;
        }
        self.hi_ms = Some(self.hi_ms.map_or(gap_ms, |hi| hi.min(gap_ms)));
    }

    /// The longest idle gap survived.
    pub(super) fn lo_ms(&self) -> Option<u64> {
        self.lo_ms
    }

    pub(super) fn window(&self) -> Option<Window> {
        match (self.lo_ms, self.hi_ms) {
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
    use super::{Learner, Window};

    const REMOTE: &str = "198.51.100.130:8080";

    #[test]
    fn window_needs_both_bounds() {
        let remote = REMOTE.parse().expect("test address");
        let mut learner = Learner::default();
        for gap in [1000, 2000, 3000, 4000] {
            learner.survived(gap, remote);
        }
        assert_eq!(learner.window(), None);
        assert_eq!(learner.lo_ms(), Some(4000));
        learner.died(8000, remote);
        learner.died(6000, remote);
        assert_eq!(
            learner.window(),
            Some(Window {
                lo_ms: 4000,
                hi_ms: 6000
            })
        );
        assert_eq!(learner.take_note(), None);
    }

    #[test]
    fn contradictions_reset_the_older_bound() {
        let remote = REMOTE.parse().expect("test address");
        let mut learner = Learner::default();
        learner.survived(4000, remote);
        learner.died(6000, remote);
        learner.survived(7000, remote);
        assert_eq!(learner.window(), None);
        assert_eq!(learner.lo_ms(), Some(7000));
        assert!(
            learner
                .take_note()
                .is_some_and(|n| n.contains("died after 6000 ms"))
        );
        assert_eq!(learner.take_note(), None);
        learner.died(5000, remote);
        assert_eq!(learner.lo_ms(), None);
        assert!(
            learner
                .take_note()
                .is_some_and(|n| n.contains("survived 7000 ms"))
        );
    }
}
