//! The ring buffer, the counters and the configuration global.

use core::{
    intrinsics::{AtomicOrdering, atomic_xadd},
    ops::{Deref, DerefMut},
};

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_jiffies64, bpf_ktime_get_ns},
    macros::map,
    maps::{PerCpuArray, RingBuf, ring_buf::RingBufEntry},
};
use keepalive_common::{EVENTS_RING_BYTES, Event, EventKind, ProbeConfig, counter};

use crate::filter;

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::SLOTS, 0);

/// Set by the daemon before load (read-only data); zero means "not configured".
#[unsafe(no_mangle)]
static CONFIG: ProbeConfig = ProbeConfig {
    offsets: keepalive_common::KernelOffsets {
        skc_family: 0,
        skc_state: 0,
        skc_daddr: 0,
        skc_rcv_saddr: 0,
        skc_dport: 0,
        skc_num: 0,
        inet_sport: 0,
        skc_v6_daddr: 0,
        skc_v6_rcv_saddr: 0,
        skc_net: 0,
        skc_flags: 0,
        skc_cookie: 0,
        timer_function: 0,
        net_ns_inum: 0,
        sk_protocol: 0,
        sk_type: 0,
        sk_err: 0,
        sk_timer: 0,
        rcv_tstamp: 0,
        lsndtime: 0,
        keepalive_time: 0,
        keepalive_intvl: 0,
        keepalive_probes: 0,
        icsk_probes_out: 0,
        icsk_retransmits: 0,
        skb_head: 0,
        skb_network_header: 0,
        skb_transport_header: 0,
        sk_lingertime: 0,
        rcv_nxt: 0,
        copied_seq: 0,
        net_keepalive_probes: 0,
        net_cookie: 0,
        skb_dev: 0,
        dev_nd_net: 0,
        sk_max_ack_backlog: 0,
    },
    keepalive_timer_fn: 0,
    sock_keepopen_bit: 0,
    idle_floor_jiffies: 0,
    sock_linger_bit: 0,
    active_reset_reason_arg: keepalive_common::NO_ARG,
    reply_reset_reason_arg: keepalive_common::NO_ARG,
    context_in_map: 0,
    filters: 0,
    cookie_helper: 0,
    socket_hash_key: 0,
};

/// The configuration, read through a volatile load so the compiler cannot fold the zeroes
/// above into the code: the real values are patched in at load time.
#[inline(always)]
pub fn config() -> &'static ProbeConfig {
    // SAFETY: CONFIG is a valid static; the volatile read only defeats constant folding.
    unsafe { &*core::ptr::read_volatile(&&raw const CONFIG) }
}

/// An event being written straight into its slot of the ring buffer, until [`submit`].
///
/// Events are built in ring-buffer memory rather than on the stack: the verifier tracks
/// every stack byte per path (zero or not), and with events on the stack the states of the
/// reset programs, which fill many fields on some paths only, grew past its limit.
pub struct Pending(RingBufEntry<Event>);

impl Deref for Pending {
    type Target = Event;

    fn deref(&self) -> &Event {
        // SAFETY: `new_event` initialised the whole entry before wrapping it.
        unsafe { self.0.assume_init_ref() }
    }
}

impl DerefMut for Pending {
    fn deref_mut(&mut self) -> &mut Event {
        // SAFETY: as above.
        unsafe { self.0.assume_init_mut() }
    }
}

/// Adds one to counter `slot` of this CPU. An atomic add: a softirq program can interrupt a
/// process-context one on the same CPU in the middle of a plain read-modify-write. (The BPF
/// target has no compare-and-swap, so `AtomicU64` offers no `fetch_add`; the intrinsic
/// compiles to the instruction set's atomic add.)
#[inline(always)]
pub fn count(slot: u32) {
    if let Some(value) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: the pointer is this CPU's slot of the map, valid while the program runs and
        // aligned for a u64.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(value, 1) };
    }
}

/// A new event in the ring buffer with the clock, jiffies and the current task filled in;
/// `None`, counted as lost, when the ring buffer is full.
#[inline(always)]
pub fn new_event(kind: EventKind) -> Option<Pending> {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(counter::LOST);
        return None;
    };
    let event = entry.write(Event::zeroed(kind));
    event.ts_ns = now_ns();
    // SAFETY: helper without arguments.
    event.jiffies = unsafe { bpf_jiffies64() } as u32;
    let pid_tgid = bpf_get_current_pid_tgid();
    event.pid = (pid_tgid >> 32) as u32;
    event.tid = pid_tgid as u32;
    event.comm = bpf_get_current_comm().unwrap_or_default();
    Some(Pending(entry))
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of [`Event::ts_ns`].
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// `bpf_ringbuf_query`: bytes not yet consumed.
const BPF_RB_AVAIL_DATA: u64 = 0;
/// `bpf_ringbuf_submit` flags.
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
/// The reader drains the ring buffer on a short timer and is woken early only when the data
/// waiting crosses this mark. Every wake-up raises an irq_work (a self-IPI, which in a VM is
/// an exit): waking the reader for each event, as the default does whenever it has caught
/// up, nearly doubled the run time of `inet_sock_set_state` under connection churn (1.9 µs
/// against 1.1 µs, `cargo xtask bench`).
const WAKEUP_BYTES: u64 = EVENTS_RING_BYTES as u64 / 4;
/// Submits that see the waiting data within this much above the mark wake the reader: one
/// would do, but producers on other CPUs may step over a narrower window.
const WAKEUP_WINDOW: u64 = 8192;

/// Hands the event to userspace, unless the filters keep it out (then it is counted).
#[inline(always)]
pub fn submit(event: Pending) {
    if !filter::admits(&event) {
        count(counter::FILTERED);
        event.0.discard(BPF_RB_NO_WAKEUP);
        return;
    }
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA);
    let flags = if waiting.wrapping_sub(WAKEUP_BYTES) < WAKEUP_WINDOW {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    event.0.submit(flags);
}
