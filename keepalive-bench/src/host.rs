//! The machine: its description for the results, tracefs, the fd limit, per-process counters
//! from /proc.

use std::ffi::CString;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::ptr;
use std::time::Duration;

use anyhow::{Context, Result};

use keepalive_lab::{interrupt, output, workspace};

/// Sleeps up to `duration`, in short steps, returning early when stopping.
pub fn sleep(duration: Duration) {
    let step = Duration::from_millis(50);
    let mut left = duration;
    while !left.is_zero() && !interrupt::requested() {
        let now = left.min(step);
        std::thread::sleep(now);
        left -= now;
    }
}

/// What the results say about the machine and the software measured.
#[derive(Debug, Clone)]
pub struct Machine {
    pub date: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_mib: u64,
    pub kernel: String,
    pub loadavg: String,
    /// Other observers running when the bench started: they load the same hooks and skew
    /// every figure.
    pub other_observers: Vec<String>,
    pub versions: Vec<(String, String)>,
    /// The daemon's hooks on this kernel, `signal: hook (status)`.
    pub daemon_hooks: Vec<String>,
}

impl Machine {
    pub fn describe(daemon: &Path, bpftrace: &Path, bpftool: &Path) -> Result<Self> {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").context("cannot read /proc/cpuinfo")?;
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map_or_else(
                || "unknown".to_owned(),
                |(_, model)| model.trim().to_owned(),
            );
        let meminfo = fs::read_to_string("/proc/meminfo").context("cannot read /proc/meminfo")?;
        let memory_kib = meminfo_kib(&meminfo, "MemTotal").unwrap_or(0);
        let first_line = |command: &mut Command| {
            output(command)
                .map(|out| out.lines().next().unwrap_or_default().trim().to_owned())
                .unwrap_or_else(|err| format!("unknown ({err:#})"))
        };
        let versions = vec![
            (
                "keepalive-observer".to_owned(),
                first_line(Command::new(daemon).arg("--version")),
            ),
            (
                "commit".to_owned(),
                first_line(
                    Command::new("git")
                        .args(["describe", "--always", "--dirty"])
                        .current_dir(workspace::root()),
                ),
            ),
            (
                "rustc (host crates)".to_owned(),
                first_line(
                    Command::new("rustc")
                        .arg(format!("+{}", workspace::host_toolchain()))
                        .arg("--version"),
                ),
            ),
            (
                "rustc (eBPF crate)".to_owned(),
                first_line(
                    Command::new("rustc")
                        .arg(format!("+{}", workspace::ebpf_toolchain()))
                        .arg("--version"),
                ),
            ),
            (
                "bpftrace".to_owned(),
                first_line(Command::new(bpftrace).arg("--version")),
            ),
            (
                "bpftool".to_owned(),
                first_line(Command::new(bpftool).arg("version")),
            ),
        ];
        Ok(Self {
            date: first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model,
            memory_mib: memory_kib / 1024,
            kernel: read_trimmed("/proc/sys/kernel/osrelease")?,
            loadavg: read_trimmed("/proc/loadavg")?
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            other_observers: other_observers(),
            versions,
            daemon_hooks: Vec::new(),
        })
    }
}

/// Processes named like an observer (`keepalive-observer`, `bpftrace`), as `pid comm`.
fn other_observers() -> Vec<String> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<(u32, String)> = entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = fs::read_to_string(entry.path().join("comm")).ok()?;
            let comm = comm.trim();
            // comm is cut at 15 characters.
            (comm.starts_with("keepalive-obse") || comm == "bpftrace")
                .then(|| (pid, comm.to_owned()))
        })
        .collect();
    found.sort_unstable();
    found
        .into_iter()
        .map(|(pid, comm)| format!("{pid} {comm}"))
        .collect()
}

fn meminfo_kib(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// A field of /proc/meminfo, in KiB.
pub fn system_kib(key: &str) -> Result<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").context("cannot read /proc/meminfo")?;
    meminfo_kib(&meminfo, key).with_context(|| format!("no {key} in /proc/meminfo"))
}

pub fn read_trimmed(path: &str) -> Result<String> {
    Ok(fs::read_to_string(path)
        .with_context(|| format!("cannot read {path}"))?
        .trim()
        .to_owned())
}

const TRACEFS: &str = "/sys/kernel/tracing";

/// tracefs at /sys/kernel/tracing for bpftrace's classic tracepoints; unmounted again on drop
/// only when this guard mounted it.
pub struct Tracefs {
    mounted_here: bool,
}

impl Tracefs {
    pub fn ensure() -> Result<Self> {
        if Path::new(TRACEFS).join("events").is_dir() {
            return Ok(Self {
                mounted_here: false,
            });
        }
        println!("mounting tracefs at {TRACEFS} (unmounted again at the end)");
        let target = CString::new(TRACEFS).context("tracefs path")?;
        let fstype = CString::new("tracefs").context("tracefs type")?;
        // SAFETY: valid NUL-terminated strings; no mount data.
        let mounted = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                ptr::null(),
            )
        };
        if mounted != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot mount tracefs at {TRACEFS}"));
        }
        Ok(Self { mounted_here: true })
    }

    /// Whether the classic tracepoint `category:name` exists.
    pub fn has_event(&self, category: &str, name: &str) -> bool {
        Path::new(TRACEFS)
            .join("events")
            .join(category)
            .join(name)
            .is_dir()
    }
}

impl Drop for Tracefs {
    fn drop(&mut self) {
        if !self.mounted_here {
            return;
        }
        let Ok(target) = CString::new(TRACEFS) else {
            return;
        };
        // SAFETY: a valid NUL-terminated path.
        if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
            eprintln!(
                "warning: cannot unmount {TRACEFS}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Raises RLIMIT_NOFILE towards `want` and returns the soft limit reached. Raising the hard
/// limit takes CAP_SYS_RESOURCE, which root may lack: then the soft limit goes up to the hard.
pub fn raise_open_file_limit(want: u64) -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit to write into.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if limit.rlim_cur >= want {
        return Ok(limit.rlim_cur);
    }
    for raised in [
        libc::rlimit {
            rlim_cur: want,
            rlim_max: limit.rlim_max.max(want),
        },
        libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        },
    ] {
        // SAFETY: a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
            return Ok(raised.rlim_cur);
        }
    }
    Ok(limit.rlim_cur)
}

/// Sets the nice value of every thread of a process.
pub fn renice(pid: u32, nice: i32) -> Result<()> {
    let dir = format!("/proc/{pid}/task");
    for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))? {
        let entry = entry.with_context(|| format!("cannot list {dir}"))?;
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        // SAFETY: plain syscall on a thread id.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot set nice {nice} on thread {tid} of {pid}"));
        }
    }
    Ok(())
}

/// CPU time (user + system) a process has used so far.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let ticks = stat_cpu_ticks(&stat).with_context(|| format!("cannot parse {path}"))?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = u64::try_from(per_second)
        .ok()
        .filter(|&hz| hz > 0)
        .context("sysconf(_SC_CLK_TCK) failed")?;
    Ok(Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000) / per_second,
    ))
}

/// utime + stime (fields 14 and 15) of a /proc/<pid>/stat line; the command name before them
/// may hold spaces and parentheses, so fields are counted after its last `)`.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A `Vm…` line of /proc/<pid>/status, in KiB (`VmHWM`: peak resident set; `VmRSS`: now).
pub fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    meminfo_kib(&status, key).with_context(|| format!("no {key} in {path}"))
}

/// Waits until the process goes quiet: its CPU time stops growing for `quiet` (it has drained
/// what the workload produced), or `limit` passes.
pub fn wait_until_idle(pid: u32, quiet: Duration, limit: Duration) -> Result<()> {
    let start = std::time::Instant::now();
    let mut last = cpu_time(pid)?;
    while start.elapsed() < limit && !interrupt::requested() {
        sleep(quiet);
        let now = cpu_time(pid)?;
        if now == last {
            return Ok(());
        }
        last = now;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_ticks_after_the_command_name() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0";
        assert_eq!(stat_cpu_ticks(stat), Some(12));
        assert_eq!(stat_cpu_ticks("4242 (x) S 1"), None);
        assert_eq!(stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn reads_kib_fields() {
        let status = "Name:\tkeepalive\nVmHWM:\t   12345 kB\nVmRSS:\t 2000 kB\n";
        assert_eq!(meminfo_kib(status, "VmHWM"), Some(12345));
        assert_eq!(meminfo_kib(status, "VmRSS"), Some(2000));
        assert_eq!(meminfo_kib(status, "VmSwap"), None);
        assert_eq!(
            meminfo_kib("MemTotal:  24684000 kB\n", "MemTotal"),
            Some(24_684_000)
        );
    }
}
