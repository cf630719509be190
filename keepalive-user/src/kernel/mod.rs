//! Everything that talks to the kernel: BTF, hook selection, loading and attaching, the ring
//! buffer.

pub mod btf;
pub mod context_store;
pub mod filter;
pub mod hooks;
pub mod hz;
pub mod kallsyms;
pub mod netns;
pub mod observer;
pub mod ring_fill;
