//! The windows the daemon learned, from its state file. A window learned in a namespace
//! applies to that namespace's connections only: the daemon's own namespace (the host's) by
//! name, the others by their cookie, which holds only within the boot that wrote the file.

use std::{fs, net::SocketAddr, os::unix::fs::MetadataExt as _, path::Path, time::Duration};

use keepalive_schema::state::{self, FILE_NAME, Netns, State, StateError};

use super::model::{Window, WindowSource};

/// The kernel's identity of this boot.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
/// The host's namespace: init's, where the daemon runs.
const HOST_NETNS: &str = "/proc/1/ns/net";

/// What the daemon learned, ready to be looked up per namespace.
#[derive(Debug, Default)]
pub struct Learned {
    state: Option<State>,
    same_boot: bool,
    host_inode: Option<u64>,
}

impl Learned {
    /// Reads `state_dir`'s state file; nothing is learned when there is none.
    pub fn load(state_dir: &Path) -> Result<Self, StateError> {
        let state = state::load(&state_dir.join(FILE_NAME))?;
        let boot_id = fs::read_to_string(BOOT_ID).unwrap_or_default();
        Ok(Self::new(
            state,
            boot_id.trim(),
            fs::metadata(HOST_NETNS).ok().map(|m| m.ino()),
        ))
    }

    fn new(state: Option<State>, boot_id: &str, host_inode: Option<u64>) -> Self {
        let same_boot = state
            .as_ref()
            .is_some_and(|s| !boot_id.is_empty() && s.boot_id.trim() == boot_id);
        Self {
            state,
            same_boot,
            host_inode,
        }
    }

    /// The learned windows of the namespace with this inode and cookie: destinations with
    /// both a survived and a fatal idle gap (a survival alone says nothing about a timeout).
    pub fn windows(&self, inode: u64, cookie: Option<u64>) -> Vec<(SocketAddr, Window)> {
        let Some(state) = &self.state else {
            return Vec::new();
        };
        let is_host = self.host_inode == Some(inode);
        state
            .destinations
            .iter()
            .filter(|d| match d.netns {
                Netns::Host => is_host,
                Netns::Cookie(c) => self.same_boot && cookie == Some(c),
            })
            .filter_map(|d| {
                let (lo, hi) = d.window_ms()?;
                let window = Window {
                    bound: Duration::from_millis(lo),
                    upper: Some(Duration::from_millis(hi)),
                    source: WindowSource::Learned,
                };
                Some((d.remote, window))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use keepalive_schema::state::Destination;

    use super::*;

    fn destination(
        netns: Netns,
        remote: &str,
        survived: Option<u64>,
        died: Option<u64>,
    ) -> Destination {
        Destination {
            netns,
            remote: remote.parse().unwrap(),
            survived_ms: survived,
            died_ms: died,
            survivals: 1,
            deaths: 1,
            last_seen_unix_ms: 0,
        }
    }

    fn learned(boot: &str) -> Learned {
        let mut state = State::new("boot-a".to_owned(), 0);
        state.destinations = vec![
            destination(
                Netns::Host,
                "192.168.105.67:8080",
                Some(1_790_000),
                Some(1_805_000),
            ),
            destination(
                Netns::Cookie(7),
                "198.51.100.100:80",
                Some(4000),
                Some(5500),
            ),
            destination(Netns::Host, "192.168.105.68:8080", Some(3_600_000), None),
        ];
        Learned::new(Some(state), boot, Some(100))
    }

    #[test]
    fn host_windows_apply_to_the_host_and_cookies_within_their_boot() {
        let host = learned("boot-a").windows(100, Some(1));
        assert_eq!(host.len(), 1, "a survival alone is no window: {host:?}");
        assert_eq!(host[0].1.bound, Duration::from_millis(1_790_000));
        assert_eq!(host[0].1.upper, Some(Duration::from_millis(1_805_000)));
        assert_eq!(host[0].1.source, WindowSource::Learned);
        let lab = learned("boot-a").windows(200, Some(7));
        assert_eq!(lab.len(), 1);
        assert_eq!(lab[0].0, "198.51.100.100:80".parse::<SocketAddr>().unwrap());
        assert!(
            learned("boot-b").windows(200, Some(7)).is_empty(),
            "another boot's cookie"
        );
        assert!(learned("boot-a").windows(200, Some(8)).is_empty());
        assert!(Learned::default().windows(100, None).is_empty());
    }
}
