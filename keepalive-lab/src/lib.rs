//! The keepalive-observer lab: network namespaces for privileged tests, and `cargo xtask lab`.
//!
//! - [`Topology`]: client ⇄ middlebox ⇄ server(s), addresses from
//!   198.51.100.0/24 (and fd6b:a1::/48) only, a middlebox that forgets idle flows and then
//!   rejects ([`MiddleboxMode::Reject`]) or drops ([`MiddleboxMode::Drop`]) them, and an
//!   optional VIP DNATed round-robin to the servers.
//! - [`Netns::create`]: one namespace with only loopback up, for tests that need e.g. an nft
//!   rule without touching the host.
//! - [`in_netns`] runs a closure inside a namespace (sockets it creates stay there);
//!   [`Netns::command`] with [`ChildGuard`] runs processes there, killed by PID on drop.
//! - Socket helpers ([`set_keepalive`], [`set_linger_abort`], [`set_user_timeout`],
//!   [`abortive_close`]) and an [`EchoServer`].
//! - [`incident`]: the scenario of `cargo xtask lab` (binary `keepalive-lab`), the README's
//!   "connection reset behind a VIP" reproduced, explained by the observer and fixed.
//! - [`interrupt`]: Ctrl-C and SIGTERM as a flag that long waits check, for the lab and the bench.
//! - [`workspace`]: the repository root and its pinned toolchains, for xtask and the bench.
//!
//! Everything needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and the tools `ip`, `nft` and
//! `conntrack` ([`check_tools`] says which Debian package provides a missing one). Namespaces
//! are named `kao-<pid>-<sequence>-<role>` and deleted on drop; [`cleanup_stale`] removes those
//! of processes that died without dropping them.
//!
//! ```no_run
//! use std::{io::{Read, Write}, net::{SocketAddr, TcpStream}, time::Duration};
//! use keepalive_lab::{EchoServer, Middlebox, MiddleboxMode, Topology, in_netns};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let lab = Topology::builder()
//!     .middlebox(Middlebox { mode: MiddleboxMode::Reject, established_timeout_secs: 2 })
//!     .build()?;
//! let addr = SocketAddr::from((lab.server().ipv4(), 8080));
//! let _server = in_netns(lab.server().netns(), || EchoServer::bind(addr))??;
//! let mut stream = in_netns(lab.client().netns(), || {
//!     TcpStream::connect_timeout(&addr, Duration::from_secs(5))
//! })??;
//! stream.write_all(b"ping")?;
//! stream.read_exact(&mut [0u8; 4])?;
//! # Ok(())
//! # }
//! ```

mod cmd;
pub mod daemon;
mod echo;
mod error;
pub mod flood;
pub mod incident;
pub mod interrupt;
mod middlebox;
mod netns;
mod process;
mod socket;
mod system;
mod topology;
pub mod workspace;

pub use cmd::{Tool, check_tools, output};
pub use echo::EchoServer;
pub use error::LabError;
pub use middlebox::{Middlebox, MiddleboxMode};
pub use netns::{NAME_PREFIX, NETNS_DIR, Netns, cleanup_stale, current_netns_inode, in_netns};
pub use process::{ChildGuard, isolate};
pub use socket::{
    Keepalive, abortive_close, read_retrying, set_keepalive, set_linger_abort, set_user_timeout,
};
pub use system::{cgroup2_mount, is_root};
pub use topology::{
    Host, LAB_NET_V4, LAB_NET_V6, MAX_SERVERS, Topology, TopologyBuilder, VIP_V4, VIP_V6,
};
