//! Learned windows and peer TTLs across restarts: the correlator's per-destination knowledge
//! to and from the state file of `keepalive_schema::state`, written atomically.
//!
//! The correlator keys on network-namespace cookies, which hold only within one boot. The
//! file keys the daemon's own namespace (the host's) as [`Netns::Host`], restored after any
//! restart or reboot, and other namespaces by cookie, restored only within the same boot.
//!
//! A state directory belongs to one daemon at a time: [`StateDir::open`] takes an exclusive
//! lock on `state.lock` in it. A file that cannot be used (corrupt, foreign, of another
//! version) is renamed aside with a warning, never overwritten.

use std::{
    fs::{self, File},
    io::{self, Write as _},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use keepalive_schema::state::{self, Destination, FILE_NAME, Netns, PeerTtl, State, StateError};

use crate::{correlate::Correlator, correlate::Learned, kernel::netns, sink::WallClock};

/// The lock file's name in the state directory.
const LOCK_NAME: &str = "state.lock";
/// Where the running kernel's boot id is.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// Why the state directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The directory could not be created.
    #[error("cannot create the state directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Another daemon holds the directory's lock.
    #[error(
        "another keepalive-observer uses the state directory {} (it holds {LOCK_NAME}); give \
         this one its own --state-dir",
        path.display()
    )]
    Locked {
        /// The directory.
        path: PathBuf,
    },
    /// The lock file could not be opened or locked.
    #[error("cannot lock {}: {source}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file exists but could not be read.
    #[error(transparent)]
    Load(StateError),
    /// Writing the file (or its temporary twin, or renaming it into place) failed.
    #[error("cannot write the state file {}: {source}", path.display())]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An unusable file could not be renamed aside.
    #[error("cannot move the unusable state file {} aside to {}: {source}", path.display(), to.display())]
    KeepAside {
        /// The unusable file.
        path: PathBuf,
        /// Where it was to go.
        to: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// What [`StateDir::restore`] restored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Destinations with learned bounds.
    pub destinations: usize,
    /// Peer hosts with a handshake TTL.
    pub peer_ttls: usize,
    /// Entries of other namespaces from an earlier boot, whose cookies mean nothing now.
    pub other_boot: usize,
    /// Where an unusable file was moved, with why it was unusable.
    pub kept_aside: Option<(PathBuf, String)>,
}

/// The state directory, locked for this daemon.
#[derive(Debug)]
pub struct StateDir {
    file: PathBuf,
    /// The cookie of the daemon's own network namespace, `None` when the kernel cannot tell
    /// (before 5.14): then every entry is keyed by cookie.
    host_netns: Option<u64>,
    boot_id: String,
    /// Held open for the lock's sake.
    _lock: File,
}

impl StateDir {
    /// Creates `dir` when missing and locks it.
    pub fn open(dir: &Path) -> Result<Self, PersistError> {
        fs::create_dir_all(dir).map_err(|source| PersistError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let lock_path = dir.join(LOCK_NAME);
        let lock_error = |source| PersistError::Lock {
            path: lock_path.clone(),
            source,
        };
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(lock_error)?;
        // SAFETY: flock on a descriptor this function owns; it changes no memory.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = io::Error::last_os_error();
            return Err(if error.kind() == io::ErrorKind::WouldBlock {
                PersistError::Locked {
                    path: dir.to_owned(),
                }
            } else {
                lock_error(error)
            });
        }
        Ok(Self {
            file: dir.join(FILE_NAME),
            host_netns: netns::current_cookie().ok(),
            boot_id: fs::read_to_string(BOOT_ID)
                .map(|id| id.trim().to_owned())
                .unwrap_or_default(),
            _lock: lock,
        })
    }

    /// The state file's path.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Loads the file into `correlator`. A file that cannot be used is moved aside (reported
    /// in [`Restored::kept_aside`]) and nothing is restored; only failing to move it aside is
    /// an error, so that it is never overwritten.
    pub fn restore(
        &self,
        correlator: &mut Correlator,
        clock: WallClock,
    ) -> Result<Restored, PersistError> {
        let saved = match state::load(&self.file) {
            Ok(Some(saved)) => saved,
            Ok(None) => return Ok(Restored::default()),
            Err(error @ StateError::Read { .. }) => return Err(PersistError::Load(error)),
            Err(error) => {
                let aside = self.keep_aside()?;
                return Ok(Restored {
                    kept_aside: Some((aside, error.to_string())),
                    ..Restored::default()
                });
            }
        };
        let same_boot = !self.boot_id.is_empty() && saved.boot_id == self.boot_id;
        let mut restored = Restored::default();
        let mut cookie = |netns: Netns| match netns {
            Netns::Host => self.host_netns,
            Netns::Cookie(cookie) if same_boot => Some(cookie),
            Netns::Cookie(_) => {
                restored.other_boot += 1;
                None
            }
        };
        let mut destinations = Vec::new();
        let mut peer_ttls = Vec::new();
        for destination in &saved.destinations {
            if let Some(netns_cookie) = cookie(destination.netns) {
                destinations.push((netns_cookie, destination));
            }
        }
        for peer in &saved.peer_ttls {
            if let Some(netns_cookie) = cookie(peer.netns) {
                peer_ttls.push((netns_cookie, peer));
            }
        }
        for (netns_cookie, destination) in destinations {
            let learned = Learned {
                survived_ms: destination.survived_ms,
                died_ms: destination.died_ms,
                survivals: destination.survivals,
                deaths: destination.deaths,
                last_seen_ns: mono_ns(clock, destination.last_seen_unix_ms),
            };
            correlator.restore_learned(netns_cookie, destination.remote, learned);
            restored.destinations += 1;
        }
        for (netns_cookie, peer) in peer_ttls {
            correlator.restore_peer_ttl(netns_cookie, peer.host, peer.ttl);
            restored.peer_ttls += 1;
        }
        Ok(restored)
    }

    /// What `correlator` knows, as the file holds it.
    pub fn snapshot(&self, correlator: &Correlator, clock: WallClock) -> State {
        let netns = |cookie| match self.host_netns {
            Some(host) if host == cookie => Netns::Host,
            _ => Netns::Cookie(cookie),
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let saved_at_ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
        let mut state = State::new(self.boot_id.clone(), saved_at_ms);
        state.destinations = correlator
            .learned()
            .map(|(cookie, remote, learned)| Destination {
                netns: netns(cookie),
                remote,
                survived_ms: learned.survived_ms,
                died_ms: learned.died_ms,
                survivals: learned.survivals,
                deaths: learned.deaths,
                last_seen_unix_ms: unix_ms(clock, learned.last_seen_ns),
            })
            .collect();
        state.peer_ttls = correlator
            .peer_ttls()
            .map(|(cookie, host, ttl)| PeerTtl {
                netns: netns(cookie),
                host,
                ttl,
            })
            .collect();
        state
    }

    /// A writer of this directory's file, for another thread.
    pub fn writer(&self) -> StateWriter {
        StateWriter {
            file: self.file.clone(),
        }
    }

    /// Renames the file to `state.json.unusable-<unix seconds>-<pid>` beside it.
    fn keep_aside(&self) -> Result<PathBuf, PersistError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let to = self.file.with_extension(format!(
            "json.unusable-{}-{}",
            now.as_secs(),
            std::process::id()
        ));
        fs::rename(&self.file, &to).map_err(|source| PersistError::KeepAside {
            path: self.file.clone(),
            to: to.clone(),
            source,
        })?;
        Ok(to)
    }
}

/// Writes the state file: a temporary file beside it, synced, then renamed over it, so that a
/// reader or a crash sees the old file or the new one, never half of one.
#[derive(Clone, Debug)]
pub struct StateWriter {
    file: PathBuf,
}

impl StateWriter {
    /// Writes `state` atomically.
    pub fn write(&self, state: &State) -> Result<(), PersistError> {
        let temporary = self.file.with_extension("json.tmp");
        let failed = |path: &Path| {
            let path = path.to_owned();
            move |source| PersistError::Write { path, source }
        };
        let bytes = serde_json::to_vec(state).map_err(|error| PersistError::Write {
            path: self.file.clone(),
            source: io::Error::other(error),
        })?;
        let mut file = File::create(&temporary).map_err(failed(&temporary))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(failed(&temporary))?;
        drop(file);
        fs::rename(&temporary, &self.file).map_err(failed(&self.file))?;
        // The rename itself is durable once the directory is synced.
        if let Some(dir) = self.file.parent() {
            File::open(dir)
                .and_then(|dir| dir.sync_all())
                .map_err(failed(dir))?;
        }
        Ok(())
    }
}

fn unix_ms(clock: WallClock, mono_ns: u64) -> u64 {
    u64::try_from(clock.unix_ns(mono_ns).max(0) / 1_000_000).unwrap_or(u64::MAX)
}

/// CLOCK_MONOTONIC ns of a wall time; 0 for a time before this boot.
fn mono_ns(clock: WallClock, unix_ms: u64) -> u64 {
    let unix_ns = i128::from(unix_ms) * 1_000_000;
    u64::try_from(unix_ns - i128::from(clock.offset_ns())).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::correlate::CorrelatorConfig;

    /// A fresh directory under the system's temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "keepalive-observer-state-{name}-{}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&dir);
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const CLOCK: WallClock = WallClock::from_offset_ns(1_700_000_000_000_000_000);
    const OTHER_NETNS: u64 = 0xfeed_0000_0001;

    fn remote() -> SocketAddr {
        "198.51.100.100:80".parse().unwrap()
    }

    fn learned() -> Learned {
        Learned {
            survived_ms: Some(4000),
            died_ms: Some(5500),
            survivals: 3,
            deaths: 1,
            last_seen_ns: 9_000_000_000,
        }
    }

    /// A correlator that learned the same window in the host's namespace and in another.
    fn taught(dir: &StateDir) -> Correlator {
        let mut correlator = Correlator::new(CorrelatorConfig::default());
        let host = dir.host_netns.expect("SO_NETNS_COOKIE");
        correlator.restore_learned(host, remote(), learned());
        correlator.restore_learned(OTHER_NETNS, remote(), learned());
        correlator.restore_peer_ttl(host, remote().ip(), 63);
        correlator
    }

    #[test]
    fn saved_state_comes_back_after_a_restart() {
        let temp = TempDir::new("restart");
        let dir = StateDir::open(&temp.0).unwrap();
        let state = dir.snapshot(&taught(&dir), CLOCK);
        assert_eq!(state.destinations.len(), 2);
        assert_eq!(state.destinations[0].netns, Netns::Host);
        assert_eq!(state.destinations[1].netns, Netns::Cookie(OTHER_NETNS));
        assert_eq!(state.destinations[0].last_seen_unix_ms, 1_700_000_009_000);
        dir.writer().write(&state).unwrap();
        drop(dir);

        let dir = StateDir::open(&temp.0).unwrap();
        let mut correlator = Correlator::new(CorrelatorConfig::default());
        let restored = dir.restore(&mut correlator, CLOCK).unwrap();
        assert_eq!(
            restored,
            Restored {
                destinations: 2,
                peer_ttls: 1,
                ..Restored::default()
            }
        );
        let host = dir.host_netns.unwrap();
        let window = correlator.timeout_window(host, remote()).expect("window");
        assert_eq!((window.lo_ms, window.hi_ms), (4000, 5500));
        let all: Vec<_> = correlator.learned().collect();
        assert_eq!(all[0], (host, remote(), learned()));
        assert_eq!(
            dir.snapshot(&correlator, CLOCK).destinations,
            state.destinations
        );
    }

    #[test]
    fn namespaces_of_an_earlier_boot_are_not_restored() {
        let temp = TempDir::new("reboot");
        let dir = StateDir::open(&temp.0).unwrap();
        let mut state = dir.snapshot(&taught(&dir), CLOCK);
        state.boot_id = "an earlier boot".to_owned();
        dir.writer().write(&state).unwrap();
        let mut correlator = Correlator::new(CorrelatorConfig::default());
        let restored = dir.restore(&mut correlator, CLOCK).unwrap();
        assert_eq!((restored.destinations, restored.other_boot), (1, 1));
        assert!(correlator.timeout_window(OTHER_NETNS, remote()).is_none());
        assert!(
            correlator
                .timeout_window(dir.host_netns.unwrap(), remote())
                .is_some()
        );
    }

    #[test]
    fn an_unusable_file_is_kept_aside_and_nothing_is_restored() {
        for (name, content) in [
            (
                "truncated",
                &br#"{"format":"keepalive-observer state","version":1,"#[..],
            ),
            ("foreign", br#"{"some":"other program's file"}"#),
            (
                "newer",
                br#"{"format":"keepalive-observer state","version":99}"#,
            ),
        ] {
            let temp = TempDir::new(name);
            let dir = StateDir::open(&temp.0).unwrap();
            fs::write(dir.file(), content).unwrap();
            let mut correlator = Correlator::new(CorrelatorConfig::default());
            let restored = dir.restore(&mut correlator, CLOCK).unwrap();
            let (aside, why) = restored.kept_aside.expect("kept aside");
            assert!(why.contains("state.json"), "{name}: {why}");
            assert_eq!(fs::read(&aside).unwrap(), content, "{name}");
            assert!(!dir.file().exists(), "{name}: moved, not copied");
            assert_eq!(correlator.learned().count(), 0);
            assert_eq!(restored.destinations, 0);
        }
    }

    #[test]
    fn one_daemon_per_state_directory() {
        let temp = TempDir::new("lock");
        let first = StateDir::open(&temp.0).unwrap();
        let second = StateDir::open(&temp.0).unwrap_err();
        assert!(matches!(second, PersistError::Locked { .. }), "{second}");
        assert!(second.to_string().contains("--state-dir"), "{second}");
        drop(first);
        StateDir::open(&temp.0).expect("free again");
    }

    #[test]
    fn the_write_replaces_the_file_whole() {
        let temp = TempDir::new("atomic");
        let dir = StateDir::open(&temp.0).unwrap();
        let state = dir.snapshot(&taught(&dir), CLOCK);
        dir.writer().write(&state).unwrap();
        dir.writer()
            .write(&State::new("boot".to_owned(), 1))
            .unwrap();
        let names: Vec<_> = fs::read_dir(&temp.0)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
        let loaded = state::load(dir.file()).unwrap().unwrap();
        assert!(loaded.destinations.is_empty());
    }
}
