//! Named network namespaces that delete themselves, running code and commands inside them, and
//! clean-up of namespaces left behind by crashed runs.

use std::{
    ffi::OsStr,
    fs::{self, File},
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    process::{self, Command},
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use crate::{
    LabError,
    cmd::{self, Tool},
};

/// Where `ip netns` keeps the namespaces' names (bind mounts of their nsfs files).
pub const NETNS_DIR: &str = "/var/run/netns";

/// Every namespace this crate creates is named `kao-<pid>-<sequence>-<role>`, where `<pid>` is
/// the creating process: [`cleanup_stale`] only touches names of this shape whose process is gone.
pub const NAME_PREFIX: &str = "kao-";

/// Longest role accepted by [`Netns::create`]; keeps names short and parseable.
const MAX_ROLE_LEN: usize = 12;

/// Distinguishes the namespaces of one process, so parallel tests never collide.
static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// A named network namespace created by this crate; deleted on drop.
///
/// Deleting a namespace removes its name; the kernel frees it, with its interfaces and nftables
/// rules, once no process or socket uses it any more.
#[derive(Debug)]
pub struct Netns {
    name: String,
    deleted: bool,
}

impl Netns {
    /// Creates a namespace named `kao-<pid>-<sequence>-<role>` with only its loopback interface,
    /// up. `role` is 1 to 12 lowercase ASCII letters or digits.
    pub fn create(role: &str) -> Result<Netns, LabError> {
        validate_role(role)?;
        let name = format!(
            "{NAME_PREFIX}{}-{}-{role}",
            process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        cmd::run(Tool::Ip, ["netns", "add", name.as_str()], None)?;
        let netns = Netns {
            name,
            deleted: false,
        };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// The namespace's name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's file, `/var/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// The namespace's inode number: what the observer's events carry in their `netns` field.
    pub fn inode(&self) -> Result<u32, LabError> {
        inode_of(&self.path()).map_err(|source| self.error("stat", source))
    }

    /// Runs `ip -n <name> <args>` and returns its standard output.
    pub fn ip(&self, args: &[&str]) -> Result<String, LabError> {
        let all = ["-n", self.name.as_str()]
            .into_iter()
            .chain(args.iter().copied());
        cmd::run(Tool::Ip, all, None)
    }

    /// Runs the `ip` commands in `commands` (one per item, without the leading `ip`) inside the
    /// namespace in one `ip -batch` process; stops at the first that fails.
    pub fn ip_batch<S: AsRef<str>>(&self, commands: &[S]) -> Result<(), LabError> {
        let mut input = String::new();
        for command in commands {
            input.push_str(command.as_ref());
            input.push('\n');
        }
        cmd::run(
            Tool::Ip,
            ["-n", self.name.as_str(), "-batch", "-"],
            Some(&input),
        )
        .map(drop)
    }

    /// Loads an nftables script (`nft -f -`) inside the namespace; a script is one transaction.
    pub fn nft(&self, script: &str) -> Result<(), LabError> {
        let nft = cmd::locate(Tool::Nft)?;
        let mut command = self.command(nft);
        command.args(["-f", "-"]);
        cmd::run_command(&mut command, Some(script)).map(drop)
    }

    /// Runs `program` with `args` inside the namespace (`ip netns exec`), waits for it and
    /// returns its standard output.
    pub fn run<S: AsRef<OsStr>>(
        &self,
        program: impl AsRef<OsStr>,
        args: &[S],
    ) -> Result<String, LabError> {
        let mut command = self.command(program);
        command.args(args);
        cmd::run_command(&mut command, None)
    }

    /// A command that runs `program` inside the namespace: `ip netns exec <name> <program>`.
    /// Add arguments, environment and standard streams as usual; start it with
    /// [`ChildGuard::spawn`](crate::ChildGuard::spawn) to have it killed on drop. `ip` is
    /// looked up like [`Tool::locate`] does, falling back to plain `ip` on `PATH`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let ip = Tool::Ip
            .locate()
            .unwrap_or_else(|| PathBuf::from(Tool::Ip.program()));
        let mut command = Command::new(ip);
        command
            .args(["netns", "exec", self.name.as_str()])
            .arg(program);
        command
    }

    /// Reads a sysctl (dotted, e.g. `net.ipv4.ip_forward`) of this namespace.
    pub fn sysctl(&self, key: &str) -> Result<String, LabError> {
        let path = sysctl_path(key)?;
        in_netns(self, || fs::read_to_string(&path))?
            .map(|value| value.trim().to_owned())
            .map_err(|source| self.sysctl_error(key, source))
    }

    /// Writes sysctls of this namespace, in order, from one thread that entered it.
    pub fn set_sysctls(&self, settings: &[(&str, &str)]) -> Result<(), LabError> {
        let writes = settings
            .iter()
            .map(|(key, value)| Ok((*key, sysctl_path(key)?, *value)))
            .collect::<Result<Vec<_>, LabError>>()?;
        in_netns(self, || {
            writes.iter().try_for_each(|(key, path, value)| {
                fs::write(path, value).map_err(|source| (*key, source))
            })
        })?
        .map_err(|(key, source)| self.sysctl_error(key, source))
    }

    /// Deletes the namespace now and reports failure; dropping it does the same and prints
    /// failures to standard error.
    pub fn delete(mut self) -> Result<(), LabError> {
        self.deleted = true;
        remove(&self.name)
    }

    fn error(&self, operation: &'static str, source: io::Error) -> LabError {
        LabError::Netns {
            netns: self.name.clone(),
            operation,
            source,
        }
    }

    fn sysctl_error(&self, key: &str, source: io::Error) -> LabError {
        LabError::Sysctl {
            netns: self.name.clone(),
            key: key.to_owned(),
            source,
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.deleted
            && let Err(error) = remove(&self.name)
        {
            eprintln!("keepalive-lab: {error}");
        }
    }
}

/// Runs `f` on a new thread that first enters `ns` (`setns(CLONE_NEWNET)`), and returns its
/// result. Sockets created by `f` belong to `ns` for their whole life, so they can be returned
/// and used from any thread. A panic in `f` is resumed on the calling thread.
pub fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> Result<T, LabError> {
    let file = File::open(ns.path()).map_err(|source| ns.error("open", source))?;
    thread::scope(|scope| {
        let entered = thread::Builder::new()
            .name(format!("in-{}", ns.name))
            .spawn_scoped(scope, move || {
                // SAFETY: `file` is an open nsfs file for the whole call; setns only changes
                // this thread's network namespace, and the thread ends after `f`.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(f())
            })
            .map_err(|source| ns.error("start a thread", source))?;
        match entered.join() {
            Ok(result) => result.map_err(|source| ns.error("setns", source)),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// The inode of the calling thread's network namespace (`/proc/thread-self/ns/net`).
pub fn current_netns_inode() -> Result<u32, LabError> {
    inode_of(Path::new("/proc/thread-self/ns/net")).map_err(|source| LabError::Io {
        context: "stat /proc/thread-self/ns/net".to_owned(),
        source,
    })
}

/// Deletes namespaces left behind by runs that crashed: only names `kao-<pid>-<seq>-<role>`
/// whose `<pid>` no longer exists. Processes still inside such a namespace (children the dead
/// run started) are killed by the PIDs `ip netns pids` reports. Returns the deleted names.
pub fn cleanup_stale() -> Result<Vec<String>, LabError> {
    let entries = match fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(LabError::Io {
                context: format!("listing {NETNS_DIR}"),
                source,
            });
        }
    };
    let mut deleted = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| LabError::Io {
            context: format!("listing {NETNS_DIR}"),
            source,
        })?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Some(owner) = owner_pid(&name) else {
            continue;
        };
        if process_exists(owner) {
            continue;
        }
        kill_processes_in(&name)?;
        remove(&name)?;
        deleted.push(name);
    }
    Ok(deleted)
}

/// The creating process of a namespace named by this crate, `None` for any other name.
pub(crate) fn owner_pid(name: &str) -> Option<libc::pid_t> {
    let mut parts = name.strip_prefix(NAME_PREFIX)?.splitn(3, '-');
    let pid = parts.next()?;
    let sequence = parts.next()?;
    let role = parts.next()?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(pid) || !all_digits(sequence) || validate_role(role).is_err() {
        return None;
    }
    pid.parse().ok().filter(|pid| *pid > 0)
}

fn process_exists(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks that the process exists; `pid` > 0 names one process.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    alive || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

fn kill_processes_in(name: &str) -> Result<(), LabError> {
    let pids = cmd::run(Tool::Ip, ["netns", "pids", name], None)?;
    for pid in pids
        .lines()
        .filter_map(|line| line.trim().parse::<libc::pid_t>().ok())
    {
        if pid > 0 {
            // SAFETY: sends SIGKILL to one process that ip reported inside our stale namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    Ok(())
}

fn remove(name: &str) -> Result<(), LabError> {
    if !Path::new(NETNS_DIR).join(name).exists() {
        return Ok(());
    }
    cmd::run(Tool::Ip, ["netns", "delete", name], None).map(drop)
}

fn validate_role(role: &str) -> Result<(), LabError> {
    let valid = !role.is_empty()
        && role.len() <= MAX_ROLE_LEN
        && role
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if valid {
        Ok(())
    } else {
        Err(LabError::InvalidConfig(format!(
            "namespace role {role:?}: use 1 to {MAX_ROLE_LEN} lowercase letters or digits"
        )))
    }
}

fn sysctl_path(key: &str) -> Result<PathBuf, LabError> {
    let valid = !key.is_empty()
        && key.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    if valid {
        Ok(Path::new("/proc/sys").join(key.replace('.', "/")))
    } else {
        Err(LabError::InvalidConfig(format!("sysctl name {key:?}")))
    }
}

fn inode_of(path: &Path) -> io::Result<u32> {
    let inode = fs::metadata(path)?.ino();
    u32::try_from(inode).map_err(|_| io::Error::other(format!("inode {inode} exceeds 32 bits")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_only_for_our_names() {
        assert_eq!(owner_pid("kao-1234-0-client"), Some(1234));
        assert_eq!(owner_pid("kao-1234-17-srv3"), Some(1234));
        assert_eq!(owner_pid("kao-0-1-x"), None);
        assert_eq!(owner_pid("kao-1234-client"), None);
        assert_eq!(owner_pid("kao-12a4-0-client"), None);
        assert_eq!(owner_pid("kao-1234-0-Client"), None);
        assert_eq!(owner_pid("kao-1234-0-"), None);
        assert_eq!(owner_pid("kao-99999999999-0-x"), None);
        assert_eq!(owner_pid("blue"), None);
        assert_eq!(owner_pid("kaox-1-0-x"), None);
    }

    #[test]
    fn roles_are_short_lowercase_words() {
        assert!(validate_role("mb").is_ok());
        assert!(validate_role("srv15").is_ok());
        assert!(validate_role("").is_err());
        assert!(validate_role("a-b").is_err());
        assert!(validate_role("averyverylongrole").is_err());
    }

    #[test]
    fn sysctl_keys_map_to_proc_sys() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").expect("valid"),
            Path::new("/proc/sys/net/ipv4/ip_forward")
        );
        assert!(sysctl_path("net..x").is_err());
        assert!(sysctl_path("net/../../etc").is_err());
        assert!(sysctl_path("").is_err());
    }

    #[test]
    fn current_namespace_has_an_inode() {
        assert!(current_netns_inode().expect("procfs is mounted") > 0);
    }
}
