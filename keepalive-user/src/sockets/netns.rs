//! Network namespaces: which ones to audit, and running code inside one (a thread that
//! `setns`es into it, since inet_diag and the socket iterator see the namespace of the thread
//! that asks).

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

/// Where named namespaces are bound (`ip netns add`).
const NAMED: &str = "/run/netns";

/// Errors finding or entering a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// `--netns` names nothing that exists.
    #[error(
        "unknown network namespace `{given}`: give a name under {NAMED} (`ip netns list`), a \
         path such as /proc/PID/ns/net, or the inode number of one in use"
    )]
    Unknown {
        /// What was given.
        given: String,
    },
    /// The path exists but is not a network namespace.
    #[error("{path} is not a network namespace: {why}")]
    NotNetns {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// The namespace could not be entered.
    #[error("cannot enter the network namespace {path}: {source}")]
    Enter {
        /// The path.
        path: PathBuf,
        /// What setns said.
        source: io::Error,
    },
    /// Every path to the namespace vanished (its processes exited, its name was removed).
    #[error("the network namespace {inode} vanished before it was read")]
    Vanished {
        /// Its inode.
        inode: u64,
    },
    /// The thread running in the namespace panicked.
    #[error("the thread reading the network namespace {inode} failed")]
    Thread {
        /// Its inode.
        inode: u64,
    },
}

/// A network namespace to audit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    /// Its inode number (what `ls -l /proc/PID/ns/net` shows).
    pub inode: u64,
    /// Paths that refer to it (a process's, a name's): any may vanish with its process or
    /// name while the audit runs, so each is tried in turn.
    pub paths: Vec<PathBuf>,
}

/// This process's namespace first, then every other one in use: those of every process and
/// the named ones, each once.
pub fn all() -> Vec<Namespace> {
    let mut found = BTreeMap::new();
    let own = of_path(Path::new("/proc/self/ns/net"));
    let mut candidates: Vec<PathBuf> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .map(|e| e.path().join("ns/net"))
        .collect();
    candidates.extend(
        fs::read_dir(NAMED)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path()),
    );
    for path in candidates {
        if let Some(ns) = of_path(&path) {
            found
                .entry(ns.inode)
                .and_modify(|known: &mut Namespace| known.paths.extend(ns.paths.clone()))
                .or_insert(ns);
        }
    }
    let own = own.and_then(|own| found.remove(&own.inode));
    own.into_iter().chain(found.into_values()).collect()
}

/// The namespace `--netns` names: a name under `/run/netns`, a path, or an inode number of
/// a namespace in use.
pub fn named(given: &str) -> Result<Namespace, NetnsError> {
    let unknown = || NetnsError::Unknown {
        given: given.to_owned(),
    };
    if let Ok(inode) = given.parse::<u64>() {
        return all()
            .into_iter()
            .find(|ns| ns.inode == inode)
            .ok_or_else(unknown);
    }
    if given.is_empty() {
        return Err(unknown());
    }
    let path = if given.contains('/') {
        PathBuf::from(given)
    } else {
        Path::new(NAMED).join(given)
    };
    if !path.exists() {
        return Err(unknown());
    }
    let file = File::open(&path).map_err(|e| NetnsError::NotNetns {
        path: path.clone(),
        why: e.to_string(),
    })?;
    // NS_GET_NSTYPE (_IO(0xb7, 0x3)): the kind of namespace a file refers to.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: the descriptor is open for the call; the ioctl takes no argument.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    if kind != libc::CLONE_NEWNET {
        return Err(NetnsError::NotNetns {
            path,
            why: "not a namespace file, or a namespace of another kind".to_owned(),
        });
    }
    let inode = file
        .metadata()
        .map_err(|e| NetnsError::NotNetns {
            path: path.clone(),
            why: e.to_string(),
        })?
        .ino();
    Ok(Namespace {
        inode,
        paths: vec![path],
    })
}

fn of_path(path: &Path) -> Option<Namespace> {
    let metadata = fs::metadata(path).ok()?;
    Some(Namespace {
        inode: metadata.ino(),
        paths: vec![path.to_owned()],
    })
}

/// Runs `work` on a thread inside `namespace`.
pub fn run_in<T: Send>(
    namespace: &Namespace,
    work: impl FnOnce() -> T + Send,
) -> Result<T, NetnsError> {
    let inode = namespace.inode;
    // The first path that still opens, and is still this namespace (a process's pid may have
    // been reused).
    let file = namespace
        .paths
        .iter()
        .filter_map(|path| Some((path, File::open(path).ok()?)))
        .find(|(_, file)| file.metadata().is_ok_and(|m| m.ino() == inode))
        .ok_or(NetnsError::Vanished { inode })?;
    // Entering one's own namespace needs CAP_SYS_ADMIN like any other: a process that lacks
    // it (the daemon's unit) still reads its own.
    let own = fs::metadata("/proc/thread-self/ns/net").is_ok_and(|m| m.ino() == inode);
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let (path, file) = file;
                // SAFETY: the descriptor is open; setns only changes this thread's namespace,
                // and the thread ends with the scope.
                if !own && unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(NetnsError::Enter {
                        path: path.clone(),
                        source: io::Error::last_os_error(),
                    });
                }
                Ok(work())
            })
            .join()
            .map_err(|_| NetnsError::Thread { inode })?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_namespaces_are_named_in_the_error() {
        assert!(matches!(named(""), Err(NetnsError::Unknown { .. })));
        let error = named("kao-no-such-namespace").unwrap_err();
        assert!(matches!(error, NetnsError::Unknown { .. }));
        assert!(
            error.to_string().contains("`kao-no-such-namespace`"),
            "{error}"
        );
        assert!(matches!(
            named("/proc/self/status"),
            Err(NetnsError::NotNetns { .. })
        ));
        assert!(matches!(
            named("18446744073709551615"),
            Err(NetnsError::Unknown { .. })
        ));
    }

    #[test]
    fn the_own_namespace_comes_first() {
        let own = fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_eq!(all().first().map(|ns| ns.inode), Some(own));
    }
}
