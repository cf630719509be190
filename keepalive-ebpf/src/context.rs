//! Per-connection context: what the kernel knows about a connection at different moments
//! (handshake TTL, owner, establishment, the peer's FIN, an unanswered idle send, the last
//! RST's TTL), kept beside the socket so that a healthy connection sends nothing and the one
//! record that decides a verdict carries it all.
//!
//! It lives in socket-local storage, freed with the socket. Where the hooks cannot use socket
//! storage (kprobes, kernels before 5.11) the daemon sets `context_in_map` and it lives in a
//! bounded LRU map keyed by socket cookie instead, deleted when the socket is destroyed.

use core::ptr;

use aya_ebpf::{
    btf_maps::SkStorage,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::bpf_sk_storage_get,
    },
    macros::{btf_map, map},
    maps::LruHashMap,
};
use keepalive_common::{
    CONTEXT_HASH_ENTRIES, ConnContext, Event, HANDSHAKE_TTL_ENTRIES, HandshakeKey, counter, flags,
};

use crate::{
    emit::{config, count, now_ns},
    kernel::{Memory, mark_origin},
};

#[btf_map(name = "CONN_CONTEXT")]
static CONN_CONTEXT: SkStorage<ConnContext> = SkStorage::new();

#[map(name = "CONN_CONTEXT_BY_COOKIE")]
static CONN_CONTEXT_BY_COOKIE: LruHashMap<u64, ConnContext> =
    LruHashMap::with_max_entries(CONTEXT_HASH_ENTRIES, 0);

/// TTL of a SYN a listener received, until the accepted socket is created and takes it.
#[map(name = "HANDSHAKE_TTLS")]
static HANDSHAKE_TTLS: LruHashMap<HandshakeKey, u8> =
    LruHashMap::with_max_entries(HANDSHAKE_TTL_ENTRIES, 0);

const BPF_SK_STORAGE_GET_F_CREATE: u64 = 1;
const BPF_NOEXIST: u64 = 1;

/// Whether to create the context when the socket has none.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Create it: this hook knows something worth keeping (or the socket existed before the
    /// observer started and is seen now for the first time).
    Yes,
    /// Only look: sockets without context have nothing pending here.
    No,
}

/// The context of socket `sk`, a pointer the verifier knows as a `struct sock` (tp_btf and
/// fentry arguments, cgroup_skb's `skb->sk`), found through socket storage, or through the
/// fallback map by the socket's cookie (asked for only then).
#[inline(always)]
pub fn of_sock(
    sk: *const u8,
    cookie: impl FnOnce() -> u64,
    create: Create,
) -> Option<&'static mut ConnContext> {
    if config().context_in_map != 0 {
        return by_cookie(cookie(), create);
    }
    if sk.is_null() {
        return None;
    }
    let flags = match create {
        Create::Yes => BPF_SK_STORAGE_GET_F_CREATE,
        Create::No => 0,
    };
    // SAFETY: `sk` is a socket pointer the verifier checks against the helper's argument
    // type; a NULL value argument makes the kernel zero a created entry.
    let value = unsafe {
        bpf_sk_storage_get(
            ptr::from_ref(&CONN_CONTEXT).cast_mut().cast(),
            sk as *mut _,
            ptr::null_mut(),
            flags,
        )
    }
    .cast::<ConnContext>();
    if value.is_null() {
        if create == Create::Yes {
            count(counter::CONTEXT_FAILURES);
        }
        return None;
    }
    // SAFETY: the helper returned a pointer to this socket's storage value.
    Some(born(unsafe { &mut *value }))
}

/// Stamps a context just created (all zero) with its birth.
#[inline(always)]
fn born(context: &mut ConnContext) -> &mut ConnContext {
    if context.born_ns == 0 {
        context.born_ns = now_ns();
    }
    context
}

/// [`of_sock`] for a full TCP socket read through `M`: a context created on first sight of a
/// connection open before the observer started also learns whether it was accepted or
/// connected.
#[inline(always)]
pub fn of_tcp_sock<M: Memory>(
    sk: *const u8,
    cookie: impl FnOnce() -> u64,
    create: Create,
) -> Option<&'static mut ConnContext> {
    let context = of_sock(sk, cookie, create)?;
    mark_origin::<M>(context, sk);
    Some(context)
}

/// The context of the socket with `cookie` in the fallback map, for pointers socket storage
/// does not accept (kprobe arguments, `container_of` results). `None` in storage mode.
#[inline(always)]
pub fn by_cookie(cookie: u64, create: Create) -> Option<&'static mut ConnContext> {
    if config().context_in_map == 0 || cookie == 0 {
        return None;
    }
    if let Some(value) = CONN_CONTEXT_BY_COOKIE.get_ptr_mut(&cookie) {
        // SAFETY: a pointer into the map's value, valid while the program runs.
        return Some(unsafe { &mut *value });
    }
    if create == Create::No {
        return None;
    }
    let empty = ConnContext::zeroed();
    if CONN_CONTEXT_BY_COOKIE
        .insert(&cookie, &empty, BPF_NOEXIST)
        .is_err()
    {
        // Another CPU may have created it in between.
        if CONN_CONTEXT_BY_COOKIE.get_ptr_mut(&cookie).is_none() {
            count(counter::CONTEXT_FAILURES);
            return None;
        }
    }
    // SAFETY: as above.
    CONN_CONTEXT_BY_COOKIE
        .get_ptr_mut(&cookie)
        .map(|value| born(unsafe { &mut *value }))
}

/// Forgets the fallback map's entry of a destroyed socket (socket storage frees itself).
#[inline(always)]
pub fn forget(cookie: u64) {
    if config().context_in_map != 0 && cookie != 0 {
        let _ = CONN_CONTEXT_BY_COOKIE.remove(&cookie);
    }
}

/// Records the current task as the socket's owner; call only in process context. Cheap when
/// the same process used it last: the comm and cgroup are read only on a change.
#[inline(always)]
pub fn set_owner(context: &mut ConnContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (pid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if pid == 0 || (context.owner_pid == pid && context.owner_tid == tid) {
        return;
    }
    context.owner_pid = pid;
    context.owner_tid = tid;
    context.owner_comm = bpf_get_current_comm().unwrap_or_default();
    // SAFETY: helper without arguments.
    context.owner_cgroup = unsafe { bpf_get_current_cgroup_id() };
}

/// Copies the context into the record about to be sent.
#[inline(always)]
pub fn attach_to(event: &mut Event, context: Option<&ConnContext>) {
    if let Some(context) = context {
        event.context = *context;
        event.flags |= flags::HAS_CONTEXT;
    }
}

/// Keeps the TTL of a SYN that arrived at a listener until the accepted socket takes it.
#[inline(always)]
pub fn remember_handshake_ttl(key: &HandshakeKey, ttl: u8) {
    let _ = HANDSHAKE_TTLS.insert(key, &ttl, 0);
}

/// Takes the TTL of the SYN that created the accepted socket with `key`, if one was seen.
#[inline(always)]
pub fn take_handshake_ttl(key: &HandshakeKey) -> Option<u8> {
    // SAFETY: the value is copied out before the entry is removed.
    let ttl = unsafe { HANDSHAKE_TTLS.get(key) }.copied()?;
    let _ = HANDSHAKE_TTLS.remove(key);
    Some(ttl)
}
