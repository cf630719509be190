//! The socket iterator: loads the `iter/tcp` program once and runs it in each network
//! namespace for the sockets' own keepalive settings, which inet_diag does not report.

use std::{collections::HashMap, io::Read as _, time::Duration};

use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{Iter, iter::IterLink},
};
use keepalive_common::{
    CONFIG_GLOBAL, CONTEXT_HASH_MAP, EVENTS_MAP, NO_ARG, ProbeConfig, SOCKET_AUDIT_PROGRAM,
    SocketAudit, audit_flags,
};

use super::model::{Keepalive, KeepaliveSysctls};
use crate::kernel::{
    btf::{BtfError, KernelBtf, VMLINUX_BTF},
    hz::{HzError, kernel_hz},
    observer::{EBPF_OBJECT, privileged, release_freed_heap},
};

/// Errors loading or running the socket iterator.
#[derive(Debug, thiserror::Error)]
pub enum IterError {
    /// The process may not load eBPF programs.
    #[error(
        "`sockets` needs root (or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN) to read the sockets' \
         keepalive settings with its socket iterator"
    )]
    NotPrivileged,
    /// The kernel's BTF is missing or unusable.
    #[error(transparent)]
    Btf(#[from] BtfError),
    /// The kernel's HZ is unknown.
    #[error(transparent)]
    Hz(#[from] HzError),
    /// The kernel refused the object's maps.
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    /// aya could not read the kernel BTF.
    #[error("reading kernel BTF for the socket iterator: {0}")]
    AttachBtf(#[from] aya::BtfError),
    /// The object has no iterator program (a build mismatch).
    #[error("the eBPF object has no program {SOCKET_AUDIT_PROGRAM}")]
    MissingProgram,
    /// The kernel refused the program or its link.
    #[error("the socket iterator (iter/tcp): {0}")]
    Program(#[from] aya::programs::ProgramError),
    /// The iterator's output could not be opened or read.
    #[error("reading the socket iterator: {0}")]
    Read(String),
    /// The iterator wrote something that is not a whole number of records.
    #[error("the socket iterator wrote {bytes} bytes, not a multiple of its {record}-byte record")]
    Truncated {
        /// What it wrote.
        bytes: usize,
        /// The record's size.
        record: usize,
    },
}

/// The loaded iterator program.
pub struct SocketIterator {
    ebpf: Ebpf,
    hz: u32,
}

impl SocketIterator {
    /// Loads the program. Nothing else of the object is loaded or attached; its maps are
    /// created at their smallest.
    pub fn load() -> Result<Self, IterError> {
        if !privileged() {
            return Err(IterError::NotPrivileged);
        }
        let kernel = KernelBtf::from_file(VMLINUX_BTF)?;
        let config = ProbeConfig {
            offsets: kernel.kernel_offsets()?,
            sock_keepopen_bit: u32::try_from(kernel.enum_value("sock_flags", "SOCK_KEEPOPEN")?)
                .unwrap_or(u32::MAX),
            active_reset_reason_arg: NO_ARG,
            reply_reset_reason_arg: NO_ARG,
            ..ProbeConfig::default()
        };
        drop(kernel);
        let page = page_size();
        let mut loader = EbpfLoader::new();
        loader
            .override_global(CONFIG_GLOBAL, &config, true)
            .map_max_entries(CONTEXT_HASH_MAP, 1)
            .map_max_entries(EVENTS_MAP, page);
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        let btf = Btf::from_sys_fs()?;
        let program: &mut Iter = ebpf
            .program_mut(SOCKET_AUDIT_PROGRAM)
            .ok_or(IterError::MissingProgram)?
            .try_into()?;
        program.load("tcp", &btf)?;
        // The parsed BTF peaks at tens of MB of heap, which malloc would keep.
        drop(btf);
        release_freed_heap();
        Ok(Self {
            ebpf,
            hz: kernel_hz()?,
        })
    }

    /// A new iterator link; [`read`] turns it into the sockets of the namespace of the
    /// thread that calls it.
    pub fn link(&mut self) -> Result<IterLink, IterError> {
        let program: &mut Iter = self
            .ebpf
            .program_mut(SOCKET_AUDIT_PROGRAM)
            .ok_or(IterError::MissingProgram)?
            .try_into()?;
        let id = program.attach()?;
        Ok(program.take_link(id)?)
    }

    /// The kernel's HZ, for the records' jiffies.
    pub fn hz(&self) -> u32 {
        self.hz
    }
}

/// Runs the iterator in the calling thread's network namespace: every full TCP socket's
/// own keepalive settings, by socket cookie.
pub fn read(link: IterLink) -> Result<HashMap<u64, SocketAudit>, IterError> {
    let mut file = link
        .into_file()
        .map_err(|e| IterError::Read(e.to_string()))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| IterError::Read(e.to_string()))?;
    let record = size_of::<SocketAudit>();
    if bytes.len() % record != 0 {
        return Err(IterError::Truncated {
            bytes: bytes.len(),
            record,
        });
    }
    Ok(bytes
        .chunks_exact(record)
        .map(|chunk| {
            // SAFETY: the chunk is exactly one record long, and every bit pattern is a valid
            // SocketAudit (integers and padding only); read_unaligned needs no alignment.
            let audit = unsafe { chunk.as_ptr().cast::<SocketAudit>().read_unaligned() };
            (audit.cookie, audit)
        })
        .filter(|(cookie, _)| *cookie != 0)
        .collect())
}

/// A socket's effective keepalive: its own values where it set them, else the namespace's.
pub fn effective(audit: &SocketAudit, sysctls: &KeepaliveSysctls, hz: u32) -> Keepalive {
    let jiffies = |j: u32| Duration::from_millis(u64::from(j) * 1000 / u64::from(hz.max(1)));
    Keepalive {
        on: audit.flags & audit_flags::KEEPALIVE_ON != 0,
        idle: match audit.keepalive_time {
            0 => sysctls.idle,
            own => jiffies(own),
        },
        interval: match audit.keepalive_intvl {
            0 => sysctls.interval,
            own => jiffies(own),
        },
        count: match audit.keepalive_probes {
            0 => sysctls.count,
            own => own,
        },
        idle_from_socket: audit.keepalive_time != 0,
    }
}

fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(size).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_values_fall_back_to_the_namespace() {
        let sysctls = KeepaliveSysctls {
            idle: Duration::from_secs(7200),
            interval: Duration::from_secs(75),
            count: 9,
        };
        let own = SocketAudit {
            cookie: 1,
            keepalive_time: 500,
            keepalive_intvl: 0,
            keepalive_probes: 3,
            flags: audit_flags::KEEPALIVE_ON,
            _pad: [0; 6],
        };
        let keepalive = effective(&own, &sysctls, 250);
        assert!(keepalive.on);
        assert_eq!(keepalive.idle, Duration::from_secs(2));
        assert!(keepalive.idle_from_socket);
        assert_eq!(keepalive.interval, Duration::from_secs(75));
        assert_eq!(keepalive.count, 3);
        let unset = effective(&SocketAudit::default(), &sysctls, 250);
        assert!(!unset.on);
        assert_eq!(unset.idle, Duration::from_secs(7200));
        assert!(!unset.idle_from_socket);
    }
}
