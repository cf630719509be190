//! The learned idle-timeout window per destination, as gauges whose label set stays bounded:
//! the `cap` most recently used destinations get a series each, the ones pushed out are
//! folded into one `destination="other"` series.

use std::{net::SocketAddr, num::NonZeroUsize, sync::atomic::AtomicU64};

use foldhash::fast::RandomState;
use lru::LruCache;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
};

use crate::correlate::Window;

/// The `destination` label of the folded series.
pub const OTHER: &str = "other";

/// One bound of one destination's window.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WindowLabels {
    /// `ip:port` (`[ip]:port` for IPv6), or [`OTHER`].
    pub destination: String,
    /// `lower` (longest idle gap survived) or `upper` (shortest idle gap that died).
    pub bound: &'static str,
}

/// Seconds, as a float gauge.
pub type SecondsGauge = Gauge<f64, AtomicU64>;

/// The windows shown, and the family that shows them.
///
/// Destinations are keyed by address alone: the same `ip:port` seen in two network
/// namespaces is one series, holding the window learned last.
#[derive(Debug)]
pub struct WindowTable {
    recent: LruCache<SocketAddr, Window, RandomState>,
    /// The tightest window among the destinations pushed out: the smallest lower and the
    /// smallest upper bound, so that a keepalive below its lower bound is below every one of
    /// theirs.
    folded: Option<Window>,
    /// How many times a destination was pushed out into the folded series.
    folded_count: u64,
    gauges: Family<WindowLabels, SecondsGauge>,
}

impl WindowTable {
    /// An empty table showing at most `cap` destinations (at least one) in `gauges`.
    pub fn new(cap: usize, gauges: Family<WindowLabels, SecondsGauge>) -> Self {
        Self {
            recent: LruCache::with_hasher(
                NonZeroUsize::new(cap).unwrap_or(NonZeroUsize::MIN),
                RandomState::default(),
            ),
            folded: None,
            folded_count: 0,
            gauges,
        }
    }

    /// The correlator's current window for `destination`: shown (as the most recently used
    /// destination) when there is one, removed when there is none any more (contradicting
    /// evidence reset it).
    pub fn update(&mut self, destination: SocketAddr, window: Option<Window>) {
        let Some(window) = window else {
            if self.recent.pop(&destination).is_some() {
                for bound in BOUNDS {
                    self.gauges.remove(&labels(destination.to_string(), bound));
                }
            }
            return;
        };
        if self.recent.get(&destination) == Some(&window) {
            return;
        }
        if let Some((evicted, old)) = self.recent.push(destination, window)
            && evicted != destination
        {
            for bound in BOUNDS {
                self.gauges.remove(&labels(evicted.to_string(), bound));
            }
            self.fold(old);
        }
        show(&self.gauges, destination.to_string(), window);
    }

    /// How many times a destination was folded into the `other` series.
    pub fn folded_count(&self) -> u64 {
        self.folded_count
    }

    fn fold(&mut self, window: Window) {
        let folded = self.folded.map_or(window, |f| Window {
            lo_ms: f.lo_ms.min(window.lo_ms),
            hi_ms: f.hi_ms.min(window.hi_ms),
        });
        self.folded = Some(folded);
        self.folded_count += 1;
        show(&self.gauges, OTHER.to_owned(), folded);
    }
}

const BOUNDS: [&str; 2] = ["lower", "upper"];

fn labels(destination: String, bound: &'static str) -> WindowLabels {
    WindowLabels { destination, bound }
}

fn show(gauges: &Family<WindowLabels, SecondsGauge>, destination: String, window: Window) {
    for (bound, ms) in BOUNDS.into_iter().zip([window.lo_ms, window.hi_ms]) {
        gauges
            .get_or_create(&labels(destination.clone(), bound))
            .set(ms as f64 / 1000.0);
    }
}
