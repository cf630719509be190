//! Kernel programs of keepalive-observer. They only collect: each hook copies what the kernel
//! knows into an [`Event`](keepalive_common::Event) and pushes it into one ring buffer; all
//! judgement happens in userspace.
#![no_std]
#![no_main]

mod emit;
mod idle_reuse;
mod keepalive_timer;
mod keepalive_timer_fentry;
mod keepalive_timer_kprobe;
mod kernel;
mod resets;
mod resets_fentry;
mod resets_kprobe;
mod segment_ttl;
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
