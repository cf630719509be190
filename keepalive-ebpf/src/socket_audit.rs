//! The socket audit: an `iter/tcp` program that writes, for every full TCP socket of the
//! network namespace its iterator is created in, the socket's own keepalive settings (what
//! inet_diag does not report) as a [`SocketAudit`] into the iterator's output.
//!
//! aya-ebpf has no iterator macro: the program is a plain function in the `iter/tcp` section,
//! whose context is the kernel's `struct bpf_iter__tcp`.

use core::ffi::c_void;

use aya_ebpf::{bindings::seq_file, helpers::bpf_seq_write};
use keepalive_common::{SocketAudit, audit_flags};

use crate::{
    emit::config,
    kernel::{Btf, Memory},
};

/// `struct bpf_iter_meta`: the head of every iterator context.
#[repr(C)]
struct IterMeta {
    seq: *mut seq_file,
}

/// `struct bpf_iter__tcp`: the context of an `iter/tcp` program. `sk_common` is NULL once
/// after the last socket.
#[repr(C)]
struct TcpIterContext {
    meta: *const IterMeta,
    sk_common: *const u8,
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
fn socket_audit(ctx: *const c_void) -> i32 {
    // SAFETY: the kernel passes a `bpf_iter__tcp`; its fields are plain context loads.
    let (meta, sk) = unsafe {
        let ctx = &*ctx.cast::<TcpIterContext>();
        (ctx.meta, ctx.sk_common)
    };
    if sk.is_null() {
        return 0;
    }
    // Listeners are full sockets too, and are reported like the rest; time-wait and request
    // sockets have no keepalive and are left out.
    let Some(tcp) = Btf::full_tcp(sk) else {
        return 0;
    };
    let cfg = config();
    let o = &cfg.offsets;
    let sk_flags: u64 = Btf::read(tcp, o.skc_flags);
    let mut record = SocketAudit {
        cookie: Btf::read(tcp, o.skc_cookie),
        keepalive_time: Btf::read(tcp, o.keepalive_time),
        keepalive_intvl: Btf::read(tcp, o.keepalive_intvl),
        keepalive_probes: Btf::read(tcp, o.keepalive_probes),
        ..SocketAudit::default()
    };
    if sk_flags & (1 << (cfg.sock_keepopen_bit & 63)) != 0 {
        record.flags |= audit_flags::KEEPALIVE_ON;
    }
    // SAFETY: `meta` is the iterator's meta data (never NULL); `seq` its seq_file, and the
    // record lives on this program's stack for the call.
    unsafe {
        bpf_seq_write(
            (*meta).seq,
            (&raw const record).cast::<c_void>(),
            size_of::<SocketAudit>() as u32,
        );
    }
    0
}
