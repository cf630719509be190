//! Which process holds each socket open: the socket inodes behind `/proc/PID/fd`.

use std::{collections::HashMap, fs};

use super::model::Owner;

/// Every socket inode held open by a process, with the first process found holding it
/// (threads share their process's table; a socket passed to a child is shown with either).
/// Processes that exit while this runs, or whose descriptors may not be read, are skipped.
pub fn socket_owners() -> HashMap<u32, Owner> {
    let mut owners = HashMap::new();
    let Ok(processes) = fs::read_dir("/proc") else {
        return owners;
    };
    for process in processes.flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        let mut comm = None;
        for fd in fds.flatten() {
            let Some(inode) = fs::read_link(fd.path()).ok().and_then(|target| {
                let target = target.to_str()?;
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse()
                    .ok()
            }) else {
                continue;
            };
            let comm = comm.get_or_insert_with(|| {
                fs::read_to_string(process.path().join("comm"))
                    .map(|c| c.trim_end().to_owned())
                    .unwrap_or_default()
            });
            owners.entry(inode).or_insert_with(|| Owner {
                pid,
                comm: comm.clone(),
            });
        }
    }
    owners
}
