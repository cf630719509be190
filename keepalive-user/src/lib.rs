//! keepalive-observer: attributes every TCP reset on this host to a local close, a peer RST or
//! a silent middlebox drop, from eBPF events.

pub mod correlate;
pub mod event;
pub mod filter;
pub mod kernel;
pub mod metrics;
pub mod notify;
pub mod queue;
pub mod record;
pub mod recording;
pub mod sink;
pub mod sockets;
pub mod state;
pub mod stderr;
