//! eBPF bookkeeping: `kernel.bpf_stats_enabled`, per-program run time and per-map memory of a
//! process (from /proc/<pid>/fdinfo, names from bpftool), and the empty cgroup_skb program the
//! segment program is compared with.

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use keepalive_lab::output;

const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled=1` while alive; the previous value is written back on drop.
pub struct StatsEnabled {
    previous: String,
}

impl StatsEnabled {
    pub fn enable() -> Result<Self> {
        let previous = fs::read_to_string(BPF_STATS_SYSCTL)
            .with_context(|| format!("cannot read {BPF_STATS_SYSCTL}"))?
            .trim()
            .to_owned();
        fs::write(BPF_STATS_SYSCTL, "1")
            .with_context(|| format!("cannot enable {BPF_STATS_SYSCTL}"))?;
        Ok(Self { previous })
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        if let Err(err) = fs::write(BPF_STATS_SYSCTL, &self.previous) {
            eprintln!(
                "warning: cannot restore {BPF_STATS_SYSCTL} to {}: {err}",
                self.previous
            );
        }
    }
}

/// Cumulative run time of one program (counted while bpf_stats is enabled).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunTime {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

impl RunTime {
    /// The runs between `earlier` and `self`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            run_time_ns: self.run_time_ns.saturating_sub(earlier.run_time_ns),
            run_cnt: self.run_cnt.saturating_sub(earlier.run_cnt),
        }
    }

    pub fn ns_per_run(self) -> Option<f64> {
        (self.run_cnt > 0).then(|| self.run_time_ns as f64 / self.run_cnt as f64)
    }
}

/// One eBPF object (program or map) a process holds a descriptor for, from its fdinfo.
#[derive(Debug, Clone, Default)]
struct FdInfo {
    fields: BTreeMap<String, String>,
}

impl FdInfo {
    fn parse(text: &str) -> Self {
        let fields = text
            .lines()
            .filter_map(|line| line.split_once(':'))
            .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
            .collect();
        Self { fields }
    }

    fn number(&self, key: &str) -> Option<u64> {
        self.fields.get(key)?.parse().ok()
    }
}

/// The fdinfo of every descriptor of `pid` that is an eBPF object of `kind` (`bpf-prog`,
/// `bpf-map`), one per object id.
fn objects(pid: u32, kind: &str, id_key: &str) -> Result<BTreeMap<u32, FdInfo>> {
    let dir = format!("/proc/{pid}/fd");
    let target = format!("anon_inode:{kind}");
    let mut found = BTreeMap::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))? {
        let entry = entry.with_context(|| format!("cannot list {dir}"))?;
        // Descriptors come and go while the process runs: skip what vanished.
        let Ok(link) = fs::read_link(entry.path()) else {
            continue;
        };
        if link.as_os_str() != target.as_str() {
            continue;
        }
        let fdinfo = format!("/proc/{pid}/fdinfo/{}", entry.file_name().display());
        let Ok(text) = fs::read_to_string(&fdinfo) else {
            continue;
        };
        let info = FdInfo::parse(&text);
        if let Some(id) = info.number(id_key).and_then(|id| u32::try_from(id).ok()) {
            found.insert(id, info);
        }
    }
    Ok(found)
}

/// Run time of every program `pid` holds, by program id.
pub fn program_run_times(pid: u32) -> Result<BTreeMap<u32, RunTime>> {
    Ok(objects(pid, "bpf-prog", "prog_id")?
        .into_iter()
        .map(|(id, info)| {
            let run = RunTime {
                run_time_ns: info.number("run_time_ns").unwrap_or(0),
                run_cnt: info.number("run_cnt").unwrap_or(0),
            };
            (id, run)
        })
        .collect())
}

/// Locked memory of every map `pid` holds, by map id.
pub fn map_memory(pid: u32) -> Result<BTreeMap<u32, u64>> {
    Ok(objects(pid, "bpf-map", "map_id")?
        .into_iter()
        .map(|(id, info)| (id, info.number("memlock").unwrap_or(0)))
        .collect())
}

/// Names of loaded programs (`what` = "prog") or maps ("map") by id, from `bpftool -j`.
pub fn names(bpftool: &Path, what: &str) -> Result<BTreeMap<u32, String>> {
    let json = output(Command::new(bpftool).args([what, "show", "-j"]))?;
    parse_names(&json).with_context(|| format!("cannot parse `bpftool {what} show -j`"))
}

fn parse_names(json: &str) -> Result<BTreeMap<u32, String>> {
    let value: Value = serde_json::from_str(json)?;
    let items = value.as_array().context("not a JSON array")?;
    Ok(items
        .iter()
        .filter_map(|item| {
            let id = u32::try_from(item.get("id")?.as_u64()?).ok()?;
            let name = item.get("name")?.as_str()?.to_owned();
            Some((id, name))
        })
        .collect())
}

// The few bpf(2) definitions the empty program needs (include/uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_CGROUP_SKB: u32 = 8;
const BPF_CGROUP_INET_INGRESS: u32 = 0;
/// `r0 = 1` (BPF_ALU64 | BPF_MOV | BPF_K, imm 1): let the packet pass.
const INSN_MOV_R0_1: u64 = 0xb7 | (1 << 32);
/// `exit` (BPF_JMP | BPF_EXIT).
const INSN_EXIT: u64 = 0x95;
pub const EMPTY_PROGRAM: &str = "bench_empty_skb";

#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

/// A cgroup_skb ingress program that only returns 1, attached (through a link, next to the
/// daemon's program) to the same cgroup: the floor for any per-packet program, measured the
/// same way. Detached and unloaded on drop (or when the bench dies).
pub struct EmptySkb {
    program: OwnedFd,
    _link: OwnedFd,
}

impl EmptySkb {
    pub fn attach(cgroup: &Path) -> Result<Self> {
        let insns = [INSN_MOV_R0_1, INSN_EXIT];
        let license = c"GPL";
        let mut name = [0u8; 16];
        name[..EMPTY_PROGRAM.len()].copy_from_slice(EMPTY_PROGRAM.as_bytes());
        let load = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_SKB,
            insn_cnt: 2,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 0,
            log_size: 0,
            log_buf: 0,
            kern_version: 0,
            prog_flags: 0,
            prog_name: name,
            prog_ifindex: 0,
            expected_attach_type: BPF_CGROUP_INET_INGRESS,
        };
        let program =
            bpf(BPF_PROG_LOAD, &load).context("cannot load the empty cgroup_skb program")?;
        let dir = fs::File::open(cgroup)
            .with_context(|| format!("cannot open cgroup {}", cgroup.display()))?;
        let link = LinkCreateAttr {
            prog_fd: u32::try_from(program.as_raw_fd()).context("fd out of range")?,
            target_fd: u32::try_from(dir.as_raw_fd()).context("fd out of range")?,
            attach_type: BPF_CGROUP_INET_INGRESS,
            flags: 0,
        };
        let link = bpf(BPF_LINK_CREATE, &link).with_context(|| {
            format!(
                "cannot attach the empty cgroup_skb program to {}",
                cgroup.display()
            )
        })?;
        Ok(Self {
            program,
            _link: link,
        })
    }

    pub fn run_time(&self) -> Result<RunTime> {
        let path = format!("/proc/self/fdinfo/{}", self.program.as_raw_fd());
        let text = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let info = FdInfo::parse(&text);
        Ok(RunTime {
            run_time_ns: info.number("run_time_ns").unwrap_or(0),
            run_cnt: info.number("run_cnt").unwrap_or(0),
        })
    }
}

/// bpf(2) for a command that returns a new descriptor.
fn bpf<T>(command: libc::c_long, attr: &T) -> Result<OwnedFd> {
    let size = u32::try_from(size_of::<T>()).context("attr too large")?;
    // SAFETY: `attr` is a valid, fully initialised bpf_attr prefix of `size` bytes; pointers
    // inside it point to live buffers for the duration of the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, command, attr as *const T, size) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let fd = i32::try_from(fd).context("bpf(2) returned an invalid descriptor")?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Fails unless `path` is a cgroup v2 directory.
pub fn check_cgroup(path: &Path) -> Result<()> {
    if !path.join("cgroup.procs").exists() {
        bail!("{} is not a cgroup v2 directory", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fdinfo() {
        let info = FdInfo::parse(
            "pos:\t0\nflags:\t02000002\nprog_type:\t8\nprog_id:\t1167\nrun_time_ns:\t4100\n\
             run_cnt:\t100\n",
        );
        assert_eq!(info.number("prog_id"), Some(1167));
        let run = RunTime {
            run_time_ns: info.number("run_time_ns").unwrap(),
            run_cnt: info.number("run_cnt").unwrap(),
        };
        assert_eq!(run.ns_per_run(), Some(41.0));
        assert_eq!(info.number("memlock"), None);
    }

    #[test]
    fn run_time_deltas() {
        let before = RunTime {
            run_time_ns: 1000,
            run_cnt: 10,
        };
        let after = RunTime {
            run_time_ns: 5000,
            run_cnt: 110,
        };
        assert_eq!(after.since(before).ns_per_run(), Some(40.0));
        assert_eq!(before.since(before).ns_per_run(), None);
    }

    #[test]
    fn parses_bpftool_names() {
        let json = r#"[{"id":1160,"type":"tracing","name":"tcp_send_reset"},{"id":7}]"#;
        let names = parse_names(json).unwrap();
        assert_eq!(names.get(&1160).map(String::as_str), Some("tcp_send_reset"));
        assert_eq!(names.len(), 1);
        assert!(parse_names("{}").is_err());
    }
}
