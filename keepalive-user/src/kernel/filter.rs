//! The filters the kernel programs apply (`--remote`, `--port`, `--netns`): which bits of the
//! configuration to set, and the maps' contents, written before any program is attached.

use std::net::IpAddr;

use aya::{
    Ebpf,
    maps::{HashMap, LpmTrie, MapError, lpm_trie::Key},
};
use keepalive_common::{
    FILTER_ENTRIES, FILTER_NETNS_MAP, FILTER_PORTS_MAP, FILTER_REMOTE_V4_MAP, FILTER_REMOTE_V6_MAP,
    filter,
};

use super::observer::LoadError;
use crate::filter::Filter;

/// The [`filter`] bits for `filter`.
pub fn bits(filter: &Filter) -> u32 {
    let mut bits = 0;
    if !filter.remotes.is_empty() {
        bits |= filter::REMOTE;
    }
    if !filter.ports.is_empty() {
        bits |= filter::PORT;
    }
    if !filter.netns.is_empty() {
        bits |= filter::NETNS;
    }
    bits
}

/// Fills the filter maps of a loaded object.
pub fn install(ebpf: &mut Ebpf, filter: &Filter) -> Result<(), LoadError> {
    let too_many = |flag, count| LoadError::TooManyFilterValues { flag, count };
    for (flag, count) in [
        ("--remote", filter.remotes.len()),
        ("--port", filter.ports.len()),
        ("--netns", filter.netns.len()),
    ] {
        if count > FILTER_ENTRIES as usize {
            return Err(too_many(flag, count));
        }
    }
    let mut v4: LpmTrie<_, [u8; 4], u8> = map(ebpf, FILTER_REMOTE_V4_MAP)?;
    for cidr in &filter.remotes {
        if let IpAddr::V4(addr) = cidr.addr {
            v4.insert(&Key::new(u32::from(cidr.prefix_len), addr.octets()), &1, 0)
                .map_err(|source| map_error(FILTER_REMOTE_V4_MAP, source))?;
        }
    }
    let mut v6: LpmTrie<_, [u8; 16], u8> = map(ebpf, FILTER_REMOTE_V6_MAP)?;
    for cidr in &filter.remotes {
        if let IpAddr::V6(addr) = cidr.addr {
            v6.insert(&Key::new(u32::from(cidr.prefix_len), addr.octets()), &1, 0)
                .map_err(|source| map_error(FILTER_REMOTE_V6_MAP, source))?;
        }
    }
    let mut ports: HashMap<_, u16, u8> = map(ebpf, FILTER_PORTS_MAP)?;
    for port in &filter.ports {
        ports
            .insert(port, &1, 0)
            .map_err(|source| map_error(FILTER_PORTS_MAP, source))?;
    }
    let mut netns: HashMap<_, u32, u8> = map(ebpf, FILTER_NETNS_MAP)?;
    for inode in &filter.netns {
        netns
            .insert(inode, &1, 0)
            .map_err(|source| map_error(FILTER_NETNS_MAP, source))?;
    }
    Ok(())
}

fn map<'a, M>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<M, LoadError>
where
    M: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
{
    let map = ebpf.map_mut(name).ok_or(LoadError::MissingMap(name))?;
    M::try_from(map).map_err(|source| map_error(name, source))
}

fn map_error(name: &'static str, source: MapError) -> LoadError {
    LoadError::Map { name, source }
}
