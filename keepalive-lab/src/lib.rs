//! The keepalive-observer lab: network namespaces for privileged tests and `cargo xtask lab`.
//!
//! - [`Netns::create`]: one namespace with only loopback up, deleted on drop.
//! - [`in_netns`] runs a closure inside a namespace (sockets it creates stay there);
//!   [`Netns::command`] with [`ChildGuard`] runs processes there, killed by PID on drop.
//! - Socket helpers ([`set_keepalive`], [`set_linger_abort`], [`set_user_timeout`],
//!   [`abortive_close`]) and an [`EchoServer`].
//!
//! Everything needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and the tools `ip`, `nft` and
//! `conntrack` ([`check_tools`] says which Debian package provides a missing one). Namespaces
//! are named `kao-<pid>-<sequence>-<role>` and deleted on drop; [`cleanup_stale`] removes those
//! of processes that died without dropping them.

mod cmd;
mod echo;
mod error;
mod netns;
mod process;
mod socket;

pub use cmd::{Tool, check_tools};
pub use echo::EchoServer;
pub use error::LabError;
pub use netns::{NAME_PREFIX, NETNS_DIR, Netns, cleanup_stale, current_netns_inode, in_netns};
pub use process::ChildGuard;
pub use socket::{Keepalive, abortive_close, set_keepalive, set_linger_abort, set_user_timeout};
