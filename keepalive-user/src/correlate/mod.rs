//! Correlation: a pure state machine from decoded events to findings.

mod finding;

pub use finding::{Confidence, Finding, FindingKind, KeepaliveSummary, Verdict};
