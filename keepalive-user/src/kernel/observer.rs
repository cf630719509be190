//! Loading the eBPF object, attaching its hooks, and reading the ring buffer.

use std::{
    collections::BTreeSet,
    fs::File,
    hash::{BuildHasher, RandomState},
    io,
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use aya::{
    Btf, Ebpf, EbpfLoader, Endianness,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, FEntry, KProbe},
};
use keepalive_common::{
    CONFIG_GLOBAL, CONTEXT_HASH_MAP, COUNTERS_MAP, EVENTS_MAP, EVENTS_RING_BYTES, FILTER_ENTRIES,
    NO_ARG, ProbeConfig, counter,
};
use tokio::io::{Interest, unix::AsyncFd};

pub use super::context_store::{ContextStore, SocketIdentity};
use super::{
    btf::{BtfError, KernelBtf, VMLINUX_BTF},
    context_store::{context_store, kernel_release, socket_identity, unusable},
    filter,
    hooks::{FunctionTarget, Hook, HookChoice, HookKind, HookOutcome, SIGNALS, TracepointReason},
    hz::{HzError, kernel_hz},
    kallsyms::{KallsymsError, symbol_address},
    ring_fill::{RingFill, RingPositions},
};
use crate::{event::DecodeContext, filter::Filter};

/// The compiled eBPF object, built by build.rs with aya-build.
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/keepalive"));

/// Errors bringing the observer up.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The process lacks the privileges to load eBPF programs.
    #[error(
        "keepalive-observer needs root (or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN) to load eBPF \
         programs; run it with sudo or `cargo xtask run`"
    )]
    NotPrivileged,
    /// The kernel's BTF is missing or unusable.
    #[error(transparent)]
    Btf(#[from] BtfError),
    /// The kernel's HZ is unknown.
    #[error(transparent)]
    Hz(#[from] HzError),
    /// The kernel's symbol list cannot be read at all (not merely addresses hidden, which
    /// leaves only the keepalive timer signal missing).
    #[error("the keepalive timer signal needs tcp_keepalive_timer's address")]
    Kallsyms(#[source] KallsymsError),
    /// SIGINT or SIGTERM came before every hook was attached: loading stopped there, and
    /// what was attached is detached as the object is dropped.
    #[error("interrupted while {phase}")]
    Cancelled {
        /// What loading was doing.
        phase: String,
    },
    /// The kernel refused the object (maps or programs).
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    /// aya could not read the kernel BTF for attaching tracepoints.
    #[error("reading kernel BTF for attaching: {0}")]
    AttachBtf(#[from] aya::BtfError),
    /// A required signal has no hook that attaches on this kernel.
    #[error("required signal \"{signal}\" unavailable: {hook}: {why}")]
    RequiredHook {
        /// The signal.
        signal: &'static str,
        /// The hook that was tried last.
        hook: String,
        /// Why it failed.
        why: String,
    },
    /// A map the object must contain is missing (a build mismatch).
    #[error("the eBPF object has no map {0}")]
    MissingMap(&'static str),
    /// A filter flag was given more values than its kernel map holds.
    #[error("{flag} was given {count} times; at most {FILTER_ENTRIES} values are supported")]
    TooManyFilterValues {
        /// The flag.
        flag: &'static str,
        /// How many values it was given.
        count: usize,
    },
    /// A map has the wrong type (a build mismatch).
    #[error("map {name}: {source}")]
    Map {
        /// The map.
        name: &'static str,
        /// What aya said.
        source: aya::maps::MapError,
    },
    /// The ring buffer's positions could not be mapped for reading its fill.
    #[error("mapping the ring buffer's positions (mmap)")]
    RingPositions(#[source] io::Error),
    /// The ring buffer could not be registered with the async runtime.
    #[error("registering the ring buffer with the runtime: {0}")]
    Runtime(io::Error),
}

/// Settings for loading.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// A send after this long without receiving is reported (0 disables the signal).
    pub idle_floor: Duration,
    /// The cgroup v2 directory the TTL program is attached to; `None` finds the root.
    pub cgroup: Option<PathBuf>,
    /// Which hooks may be used.
    pub hooks: HookChoice,
    /// Which connections to report; the kernel applies all but the process names.
    pub filter: Filter,
    /// The kernel's BTF, normally [`VMLINUX_BTF`].
    pub btf: PathBuf,
    /// The kernel's symbol list, normally [`KALLSYMS`].
    pub kallsyms: PathBuf,
    /// Set (from a signal handler's task) to stop loading at the next step.
    pub cancel: Arc<AtomicBool>,
}

impl LoadOptions {
    /// Stops loading when [`LoadOptions::cancel`] is set; `phase` says what just ran.
    fn check(&self, phase: impl FnOnce() -> String) -> Result<(), LoadError> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(LoadError::Cancelled { phase: phase() });
        }
        Ok(())
    }
}

/// What the kernel programs counted instead of sending.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Records the ring buffer had no room for.
    pub lost: u64,
    /// RSTs answering a SYN or a SYN-ACK (closed port, scan, flood, backscatter): no
    /// connection died.
    pub syn_refusals: u64,
    /// Connections whose context could not be created.
    pub context_failures: u64,
    /// Records the filters kept from being sent.
    pub filtered: u64,
}

/// The loaded, attached observer. Dropping it detaches every program.
pub struct Observer {
    _ebpf: Ebpf,
    events: AsyncFd<RingBuf<MapData>>,
    positions: RingPositions,
    fill: RingFill,
    counters: PerCpuArray<MapData, u64>,
    /// What each signal got.
    pub hooks: Vec<HookOutcome>,
    /// Where connection context is kept.
    pub context: ContextStore,
    /// How the kernel side names sockets.
    pub identity: SocketIdentity,
    /// What decoding needs to know about this kernel.
    pub decode: DecodeContext,
}

impl Observer {
    /// Loads the object, attaches every hook the kernel offers and fails when a required one
    /// is missing. Must run inside a tokio runtime (the ring buffer is registered with it).
    pub fn load(options: &LoadOptions) -> Result<Self, LoadError> {
        if !privileged() {
            return Err(LoadError::NotPrivileged);
        }
        let kernel = KernelBtf::from_file(&options.btf)?;
        options.check(|| "reading the kernel's BTF".to_owned())?;
        let hz = kernel_hz()?;
        let keepalive_timer = match symbol_address(&options.kallsyms, "tcp_keepalive_timer") {
            Err(error @ KallsymsError::Unreadable { .. }) => {
                return Err(LoadError::Kallsyms(error));
            }
            found => found,
        };
        let release = kernel_release();
        let context = context_store(options.hooks, release);
        let identity = socket_identity(release);
        let config = ProbeConfig {
            offsets: kernel.kernel_offsets()?,
            keepalive_timer_fn: *keepalive_timer.as_ref().unwrap_or(&0),
            sock_keepopen_bit: u32::try_from(kernel.enum_value("sock_flags", "SOCK_KEEPOPEN")?)
                .unwrap_or(u32::MAX),
            idle_floor_jiffies: duration_to_jiffies(options.idle_floor, hz),
            sock_linger_bit: u32::try_from(kernel.enum_value("sock_flags", "SOCK_LINGER")?)
                .unwrap_or(u32::MAX),
            active_reset_reason_arg: reason_arg(&kernel, "tcp_send_active_reset"),
            reply_reset_reason_arg: reason_arg(&kernel, "tcp_v4_send_reset"),
            context_in_map: u32::from(context != ContextStore::SocketStorage),
            filters: filter::bits(&options.filter),
            cookie_helper: u32::from(identity.helper()),
            socket_hash_key: RandomState::new().hash_one(0u8),
        };
        let mut loader = EbpfLoader::new();
        loader.override_global(CONFIG_GLOBAL, &config, true);
        if context == ContextStore::SocketStorage {
            // The fallback map is preallocated (10 MiB at full size) and unused then.
            loader.map_max_entries(CONTEXT_HASH_MAP, 1);
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        filter::install(&mut ebpf, &options.filter)?;
        let btf = if options.btf == Path::new(VMLINUX_BTF) {
            Btf::from_sys_fs()?
        } else {
            Btf::parse_file(&options.btf, Endianness::default())?
        };
        options.check(|| "loading the eBPF programs".to_owned())?;
        let cgroup = options.cgroup.clone().or_else(cgroup2_root);
        let mut hooks = Vec::new();
        let mut attached = BTreeSet::new();
        for signal in SIGNALS {
            if signal.fallback_context_only && context == ContextStore::SocketStorage {
                continue;
            }
            let mut outcome = Err("no hook for this kernel".to_owned());
            let mut label = String::new();
            for hook in options.hooks.candidates(signal) {
                label = hook.label();
                outcome = if hook.programs().iter().all(|p| attached.contains(p)) {
                    // Already attached for another signal (one program, two signals).
                    Ok(())
                } else if let Some(why) = unusable(signal, hook, context) {
                    Err(why.to_owned())
                } else if signal.name == "keepalive timer" && hook.kind() == HookKind::Tracepoint {
                    keepalive_timer
                        .as_ref()
                        .map_err(ToString::to_string)
                        .and_then(|_| attach(&mut ebpf, hook, &kernel, &btf, cgroup.as_deref()))
                } else {
                    attach(&mut ebpf, hook, &kernel, &btf, cgroup.as_deref())
                };
                if outcome.is_ok() {
                    attached.extend(hook.programs());
                    break;
                }
            }
            options.check(|| format!("attaching \"{}\" ({label})", signal.name))?;
            if let (true, Err(why)) = (signal.required, &outcome) {
                return Err(LoadError::RequiredHook {
                    signal: signal.name,
                    hook: label,
                    why: why.clone(),
                });
            }
            hooks.push(HookOutcome {
                signal: signal.name,
                hook: label,
                attached: outcome,
                without_it: signal.without_it,
            });
        }
        let events = ebpf
            .take_map(EVENTS_MAP)
            .ok_or(LoadError::MissingMap(EVENTS_MAP))?;
        let events = RingBuf::try_from(events).map_err(|source| LoadError::Map {
            name: EVENTS_MAP,
            source,
        })?;
        let counters = ebpf
            .take_map(COUNTERS_MAP)
            .ok_or(LoadError::MissingMap(COUNTERS_MAP))?;
        let counters = PerCpuArray::try_from(counters).map_err(|source| LoadError::Map {
            name: COUNTERS_MAP,
            source,
        })?;
        let positions = RingPositions::map(events.as_fd()).map_err(LoadError::RingPositions)?;
        // SAFETY: the ring buffer owns its map's file descriptor and keeps it open, unchanged,
        // for as long as it lives, which is as long as the AsyncFd that owns it.
        let events = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
            .map_err(|e| LoadError::Runtime(e.into()))?;
        let decode = DecodeContext {
            hz,
            reset_reasons: kernel.reset_reasons(),
        };
        // Parsing the kernel's BTF (twice: offsets, then aya's attach) peaks at ~90 MB of
        // heap, which malloc keeps after it is freed: without this the daemon's RSS stays
        // at that peak (~70 MB) for good instead of ~14 MB.
        drop(kernel);
        drop(btf);
        release_freed_heap();
        Ok(Self {
            _ebpf: ebpf,
            events,
            positions,
            fill: RingFill {
                size_bytes: u64::from(EVENTS_RING_BYTES),
                ..RingFill::default()
            },
            counters,
            hooks,
            context,
            identity,
            decode,
        })
    }

    /// Waits until the kernel wakes the reader (the ring buffer is filling up) or
    /// [`DRAIN_INTERVAL`] passes, then hands each waiting record's bytes to `each`.
    pub async fn next_batch(&mut self, mut each: impl FnMut(&[u8])) -> io::Result<()> {
        let woken = tokio::time::timeout(DRAIN_INTERVAL, self.events.readable_mut()).await;
        let waiting = self.positions.waiting();
        self.fill.used_bytes = waiting;
        self.fill.peak_bytes = self.fill.peak_bytes.max(waiting);
        match woken {
            Ok(guard) => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &mut each);
                guard.clear_ready();
            }
            Err(_) => self.drain_waiting(each),
        }
        Ok(())
    }

    /// Hands every record already waiting to `each`, without waiting for more: the last read
    /// before detaching, so that events from just before a SIGINT are not left unread.
    pub fn drain_waiting(&mut self, mut each: impl FnMut(&[u8])) {
        drain(self.events.get_mut(), &mut each);
    }

    /// How full the ring buffer was when the reader last began a drain, and at most.
    pub fn ring_fill(&self) -> RingFill {
        self.fill
    }

    /// What the kernel programs counted, summed over CPUs.
    pub fn counters(&self) -> KernelCounters {
        let sum = |slot: u32| {
            self.counters
                .get(&slot, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0)
        };
        KernelCounters {
            lost: sum(counter::LOST),
            syn_refusals: sum(counter::SYN_REFUSALS),
            context_failures: sum(counter::CONTEXT_FAILURES),
            filtered: sum(counter::FILTERED),
        }
    }
}

/// Returns the heap's free memory to the kernel.
pub(crate) fn release_freed_heap() {
    // SAFETY: malloc_trim only gives back pages that are free; it has no preconditions.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How often the reader drains the ring buffer without being woken: the programs wake it
/// only when a quarter of the buffer is waiting (keepalive-ebpf's `WAKEUP_BYTES`), so this
/// bounds how late an event is read, not how fast.
const DRAIN_INTERVAL: Duration = Duration::from_millis(10);

fn drain(ring: &mut RingBuf<MapData>, each: &mut impl FnMut(&[u8])) {
    while let Some(item) = ring.next() {
        each(&item);
    }
}

fn attach(
    ebpf: &mut Ebpf,
    hook: &Hook,
    kernel: &KernelBtf,
    btf: &Btf,
    cgroup: Option<&Path>,
) -> Result<(), String> {
    match hook {
        Hook::BtfTracepoint {
            program,
            tracepoint,
            reason,
        } => {
            let args = kernel
                .tracepoint_args(tracepoint)
                .ok_or_else(|| format!("this kernel has no tracepoint {tracepoint}"))?;
            if let TracepointReason::At(position) = reason
                && args.reason != Some(*position)
            {
                return Err(format!(
                    "tracepoint {tracepoint} has no reset reason here (kernels before 6.10)"
                ));
            }
            let program: &mut BtfTracePoint = program_mut(ebpf, program)?;
            program
                .load(tracepoint, btf)
                .map_err(|e| verifier_error(&e))?;
            program.attach().map_err(|e| format!("attach: {e}"))?;
        }
        Hook::Fentry { targets } => {
            for FunctionTarget { program, function } in *targets {
                if kernel.function_args(function).is_none() {
                    return Err(format!("kernel BTF has no function {function}"));
                }
                let program: &mut FEntry = program_mut(ebpf, program)?;
                program
                    .load(function, btf)
                    .map_err(|e| format!("{function}: {}", verifier_error(&e)))?;
                program
                    .attach()
                    .map_err(|e| format!("attach to {function}: {e}"))?;
            }
        }
        Hook::Kprobe { targets } => {
            for FunctionTarget { program, function } in *targets {
                let program: &mut KProbe = program_mut(ebpf, program)?;
                program.load().map_err(|e| verifier_error(&e))?;
                program
                    .attach(function, 0)
                    .map_err(|e| format!("attach to {function}: {e}"))?;
            }
        }
        Hook::CgroupSkbIngress { program } => {
            let path = cgroup.ok_or("no cgroup v2 hierarchy is mounted")?;
            let dir = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let program: &mut CgroupSkb = program_mut(ebpf, program)?;
            program.load().map_err(|e| verifier_error(&e))?;
            program
                .attach(&dir, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)
                .map_err(|e| format!("attach to {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// The program `name` of the object as type `P`.
fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, String>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the eBPF object"))?
        .try_into()
        .map_err(|e| format!("program {name}: {e}"))
}

/// Position of the `enum sk_rst_reason` argument of kernel function `function`.
fn reason_arg(kernel: &KernelBtf, function: &str) -> u32 {
    kernel
        .function_args(function)
        .and_then(|args| args.reason)
        .unwrap_or(NO_ARG)
}

/// The verifier's log is long; it ends with statistics, and the line before them says what
/// it rejected.
fn verifier_error(error: &aya::programs::ProgramError) -> String {
    let text = format!("{error:#}");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let statistics = |line: &str| {
        ["verification time", "processed ", "stack depth"]
            .iter()
            .any(|p| line.starts_with(p))
    };
    match lines.iter().rposition(|l| !statistics(l)) {
        Some(last) => lines[last.saturating_sub(1)..=last].join(" | "),
        None => text,
    }
}

/// `statfs`'s `f_type` of a cgroup v2 filesystem.
const CGROUP2_SUPER_MAGIC: libc::__fsword_t = 0x6367_7270;

/// Why a `--cgroup` directory cannot take the TTL program.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The path cannot be examined (missing, not accessible).
    #[error("{}: {source}", path.display())]
    Unusable {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The path exists but is not a directory of a cgroup v2 hierarchy.
    #[error(
        "{} is not a cgroup v2 directory (the TTL program attaches to one, e.g. {})",
        path.display(),
        cgroup2_root().map_or_else(|| "/sys/fs/cgroup".to_owned(), |root| root.display().to_string())
    )]
    NotCgroup2 {
        /// The path given.
        path: PathBuf,
    },
}

/// Checks that `path` is a directory of a cgroup v2 hierarchy.
pub fn cgroup2_dir(path: &Path) -> Result<PathBuf, CgroupError> {
    let unusable = |source| CgroupError::Unusable {
        path: path.to_owned(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(unusable)?;
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|error| unusable(io::Error::new(io::ErrorKind::InvalidInput, error)))?;
    // SAFETY: statfs writes into `stats`, a plain struct for which zero is a valid value, and
    // reads the NUL-terminated path that outlives the call.
    let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stats) } != 0 {
        return Err(unusable(io::Error::last_os_error()));
    }
    if !metadata.is_dir() || stats.f_type != CGROUP2_SUPER_MAGIC {
        return Err(CgroupError::NotCgroup2 {
            path: path.to_owned(),
        });
    }
    Ok(path.to_owned())
}

/// The mount point of the cgroup v2 hierarchy (`/sys/fs/cgroup` or, on hybrid setups,
/// `/sys/fs/cgroup/unified`).
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(target))
    })
}

fn duration_to_jiffies(duration: Duration, hz: u32) -> u32 {
    u32::try_from(duration.as_millis() * u128::from(hz) / 1000).unwrap_or(u32::MAX)
}

/// Root, or the capabilities loading and attaching need (CAP_BPF 39, CAP_PERFMON 38,
/// CAP_NET_ADMIN 12) in the effective set.
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    [39, 38, 12].iter().all(|bit| effective & (1 << bit) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jiffies_follow_hz() {
        assert_eq!(duration_to_jiffies(Duration::from_secs(1), 250), 250);
        assert_eq!(duration_to_jiffies(Duration::from_millis(1500), 1000), 1500);
        assert_eq!(duration_to_jiffies(Duration::ZERO, 250), 0);
    }
}
