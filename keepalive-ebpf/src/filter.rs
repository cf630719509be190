//! The filters of `--remote`, `--port` and `--netns`: a record is sent only when it matches
//! every filter the daemon set. The filter bits are read-only data, so with none set the
//! verifier sees the lookups as dead code and a program pays nothing for them.

use core::ptr::read_volatile;

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LpmTrie, lpm_trie::Key},
};
use keepalive_common::{Event, FILTER_ENTRIES, filter};

use crate::emit::config;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

#[map(name = "FILTER_REMOTE_V4")]
static FILTER_REMOTE_V4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(FILTER_ENTRIES, 0);

#[map(name = "FILTER_REMOTE_V6")]
static FILTER_REMOTE_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(FILTER_ENTRIES, 0);

#[map(name = "FILTER_PORTS")]
static FILTER_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(FILTER_ENTRIES, 0);

#[map(name = "FILTER_NETNS")]
static FILTER_NETNS: HashMap<u32, u8> = HashMap::with_max_entries(FILTER_ENTRIES, 0);

/// Whether `event` matches every filter that is set.
///
/// Map keys are copied to the stack first (volatile loads, so that the compiler cannot pass
/// the event's own address): older kernels take no ring-buffer memory as a lookup key.
#[inline(always)]
pub fn admits(event: &Event) -> bool {
    let filters = config().filters;
    if filters & filter::NETNS != 0 {
        // SAFETY: a valid reference, read once.
        let netns: u32 = unsafe { read_volatile(&event.netns) };
        if FILTER_NETNS.get_ptr(&netns).is_none() {
            return false;
        }
    }
    if filters & filter::PORT != 0 {
        // SAFETY: as above.
        let (local, remote): (u16, u16) = unsafe {
            (
                read_volatile(&event.local_port),
                read_volatile(&event.remote_port),
            )
        };
        if FILTER_PORTS.get_ptr(&local).is_none() && FILTER_PORTS.get_ptr(&remote).is_none() {
            return false;
        }
    }
    filters & filter::REMOTE == 0 || remote_admitted(event)
}

#[inline(always)]
fn remote_admitted(event: &Event) -> bool {
    let remote = event.remote_addr;
    match event.family {
        AF_INET => {
            let key = Key::new(32, [remote[0], remote[1], remote[2], remote[3]]);
            FILTER_REMOTE_V4.get(&key).is_some()
        }
        AF_INET6 => FILTER_REMOTE_V6.get(&Key::new(128, remote)).is_some(),
        _ => false,
    }
}
