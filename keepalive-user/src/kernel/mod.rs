//! Everything that talks to the kernel: BTF, hooks, loading and attaching, the ring buffer.

pub mod btf;
