//! The output schema of keepalive-observer: the decoded records (`event`) and the findings
//! (`finding`) the daemon prints as JSON lines, records and replays, and the state file it
//! keeps learned windows in (`state`). Everything that reads the daemon's output (the lab, the
//! bench, the vm-test guest driver, the tests) uses these types, without the eBPF build the
//! daemon's crate carries. The golden recordings in `golden/` were
//! made by the real daemon and replay to the findings beside them.

pub mod action;
pub mod event;
pub mod fact;
pub mod finding;
pub mod seconds;
pub mod socket;
pub mod state;
