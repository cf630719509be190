//! The daemon's state file (`state.json` in its `--state-dir`): what it learned per
//! destination and per peer host, kept across restarts. The daemon writes it; `windows` and
//! `sockets` read it with [`load`].
//!
//! Network namespaces are named by their cookie, which the kernel never reuses while it runs
//! but which means nothing after a reboot. So an entry is keyed on the destination and
//! [`Netns::Host`] when it was learned in the daemon's own namespace (the host's: its
//! destinations and paths outlast reboots), else on the namespace's cookie, which holds only
//! while [`State::boot_id`] is the running kernel's.

use std::{
    fs, io,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// The file's name in the state directory.
pub const FILE_NAME: &str = "state.json";
/// What [`State::format`] holds: a JSON file without it is someone else's.
pub const FORMAT: &str = "keepalive-observer state";
/// The version this build writes and reads.
pub const VERSION: u32 = 1;

/// The whole file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`] for a file this build reads.
    pub version: u32,
    /// `/proc/sys/kernel/random/boot_id` when it was written: namespace cookies hold only
    /// within that boot.
    pub boot_id: String,
    /// When it was written, milliseconds since the Unix epoch.
    pub saved_at_unix_ms: u64,
    /// What was learned per destination, least recently seen first.
    pub destinations: Vec<Destination>,
    /// The TTL of the last handshake seen per peer host, for connections opened before the
    /// daemon started.
    pub peer_ttls: Vec<PeerTtl>,
}

/// The network namespace an entry was learned in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Netns {
    /// The daemon's own namespace: the host's, the same after a reboot.
    Host,
    /// Another namespace, by its cookie (valid within [`State::boot_id`] only).
    Cookie(u64),
}

/// The idle timeout learned for the path to one destination `ip:port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// Where it was learned.
    pub netns: Netns,
    /// The destination.
    pub remote: SocketAddr,
    /// Longest idle gap after which a connection was used successfully, milliseconds.
    pub survived_ms: Option<u64>,
    /// Shortest idle gap that ended in a reset or a silent death, milliseconds.
    pub died_ms: Option<u64>,
    /// Survivals that the lower bound rests on.
    pub survivals: u64,
    /// Deaths that the upper bound rests on.
    pub deaths: u64,
    /// When either bound last got evidence, milliseconds since the Unix epoch.
    pub last_seen_unix_ms: u64,
}

impl Destination {
    /// The learned window `(lo_ms, hi_ms]`, while both bounds exist and agree.
    pub fn window_ms(&self) -> Option<(u64, u64)> {
        match (self.survived_ms, self.died_ms) {
            (Some(lo), Some(hi)) if lo < hi => Some((lo, hi)),
            _ => None,
        }
    }
}

/// A peer host's handshake TTL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerTtl {
    /// Where it was seen.
    pub netns: Netns,
    /// The peer host.
    pub host: IpAddr,
    /// The TTL (hop limit) of its last handshake segment.
    pub ttl: u8,
}

impl State {
    /// An empty state of this build's format and version.
    pub fn new(boot_id: String, saved_at_unix_ms: u64) -> State {
        State {
            format: FORMAT.to_owned(),
            version: VERSION,
            boot_id,
            saved_at_unix_ms,
            destinations: Vec::new(),
            peer_ttls: Vec::new(),
        }
    }
}

/// Why a state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file exists but could not be read.
    #[error("cannot read the state file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file is not JSON of the state's shape: corrupt or truncated.
    #[error("the state file {} is corrupt: {source}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser found.
        #[source]
        source: serde_json::Error,
    },
    /// The file is JSON but not a keepalive-observer state file.
    #[error("{} is not a keepalive-observer state file (format {found:?})", path.display())]
    Foreign {
        /// The file.
        path: PathBuf,
        /// Its `format` field, if any.
        found: Option<String>,
    },
    /// The file was written by a version of keepalive-observer this build cannot read.
    #[error(
        "the state file {} has version {found}, this build reads version {VERSION}",
        path.display()
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u64,
    },
}

/// Reads the state file at `path`; `Ok(None)` when there is none.
pub fn load(path: &Path) -> Result<Option<State>, StateError> {
    match fs::read(path) {
        Ok(bytes) => parse(path, &bytes).map(Some),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Parses the bytes of the state file at `path` (named in errors). The format and version are
/// checked before the shape, so that a foreign or newer file is told apart from a corrupt one.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<State, StateError> {
    #[derive(Deserialize)]
    struct Header {
        format: Option<String>,
        version: Option<u64>,
    }
    let corrupt = |source| StateError::Corrupt {
        path: path.to_owned(),
        source,
    };
    let header: Header = serde_json::from_slice(bytes).map_err(corrupt)?;
    if header.format.as_deref() != Some(FORMAT) {
        return Err(StateError::Foreign {
            path: path.to_owned(),
            found: header.format,
        });
    }
    match header.version {
        Some(version) if version == u64::from(VERSION) => {}
        found => {
            return Err(StateError::Version {
                path: path.to_owned(),
                found: found.unwrap_or(0),
            });
        }
    }
    serde_json::from_slice(bytes).map_err(corrupt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State {
        let mut state = State::new("1b9e8ad2-1e54-4709-bb97-2d7a8285fc53".to_owned(), 1_700_000);
        state.destinations.push(Destination {
            netns: Netns::Host,
            remote: "198.51.100.100:80".parse().unwrap(),
            survived_ms: Some(4000),
            died_ms: Some(5500),
            survivals: 3,
            deaths: 2,
            last_seen_unix_ms: 1_690_000,
        });
        state.destinations.push(Destination {
            netns: Netns::Cookie(4099),
            remote: "[fd6b:a1::2]:443".parse().unwrap(),
            survived_ms: Some(9000),
            died_ms: None,
            survivals: 1,
            deaths: 0,
            last_seen_unix_ms: 1_695_000,
        });
        state.peer_ttls.push(PeerTtl {
            netns: Netns::Host,
            host: "198.51.100.100".parse().unwrap(),
            ttl: 63,
        });
        state
    }

    #[test]
    fn round_trips_and_names_the_namespace() {
        let state = sample();
        let text = serde_json::to_string(&state).unwrap();
        assert!(text.contains(r#""netns":"host""#), "{text}");
        assert!(text.contains(r#""netns":{"cookie":4099}"#), "{text}");
        let path = Path::new("/state/state.json");
        assert_eq!(parse(path, text.as_bytes()).unwrap(), state);
        assert_eq!(state.destinations[0].window_ms(), Some((4000, 5500)));
        assert_eq!(state.destinations[1].window_ms(), None);
    }

    #[test]
    fn corrupt_foreign_and_newer_files_are_told_apart() {
        let path = Path::new("/state/state.json");
        let text = serde_json::to_string(&sample()).unwrap();
        let truncated = parse(path, &text.as_bytes()[..text.len() / 2]).unwrap_err();
        assert!(
            matches!(truncated, StateError::Corrupt { .. }),
            "{truncated}"
        );
        assert!(truncated.to_string().contains("/state/state.json"));
        let foreign = parse(path, br#"{"format":"something else","version":1}"#).unwrap_err();
        assert!(
            matches!(foreign, StateError::Foreign { found: Some(ref f), .. } if f == "something else")
        );
        let newer = text.replace(r#""version":1"#, r#""version":2"#);
        let newer = parse(path, newer.as_bytes()).unwrap_err();
        assert!(
            matches!(newer, StateError::Version { found: 2, .. }),
            "{newer}"
        );
        let shape = text.replace(r#""survivals":3"#, r#""survivals":"three""#);
        assert!(matches!(
            parse(path, shape.as_bytes()),
            Err(StateError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_missing_file_is_no_state() {
        let path = Path::new("/nonexistent/keepalive-observer/state.json");
        assert!(load(path).unwrap().is_none());
    }
}
