//! Kernel programs of keepalive-observer. They only collect: each hook keeps what the kernel
//! knows about a connection in its context (`context`), and only the records that decide a
//! verdict (RSTs, socket errors, unanswered keepalive probes, replies after idle) cross the
//! ring buffer as an [`Event`](keepalive_common::Event) carrying that context. All judgement
//! happens in userspace.
#![no_std]
#![no_main]
// For `atomic_xadd`: the BPF target's atomics have no `fetch_add` (see `emit::count`).
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "core_intrinsics, for the counters' atomic add"
)]

mod context;
mod emit;
mod filter;
mod idle_reuse;
mod idle_reuse_fentry;
mod idle_reuse_kprobe;
mod keepalive_timer;
mod keepalive_timer_fentry;
mod keepalive_timer_kprobe;
mod kernel;
mod resets;
mod resets_fentry;
mod resets_kprobe;
mod segment_ttl;
mod socket_audit;
mod socket_state;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL-compatible: bpf_probe_read_kernel and the ring buffer helpers require it.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
