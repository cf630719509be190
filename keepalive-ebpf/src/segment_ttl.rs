//! TTL / hop limit of incoming SYN, SYN-ACK and RST segments, from a cgroup_skb ingress
//! program on the cgroup v2 root, kept in the connection's context: it sends nothing. It runs
//! for every packet delivered to a local socket, so everything else leaves after a few direct
//! packet reads (no helper calls).

use aya_ebpf::{
    EbpfContext,
    bindings::__sk_buff,
    helpers::{bpf_get_socket_cookie, bpf_skc_to_tcp_sock},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use keepalive_common::{HandshakeKey, tcp_flags};

use crate::{
    context::{self, Create},
    emit::now_ns,
    kernel::{Btf, netns_cookie},
};

const IPPROTO_TCP: u8 = 6;
/// Offset of the flags byte in the TCP header.
const TCP_FLAGS_BYTE: usize = 13;
/// Bytes of the TCP header this program reads (ports and flags).
const TCP_READ: usize = 14;
const IPV4_MIN_HEADER: usize = 20;
/// Version 4, header length 5 words.
const IPV4_NO_OPTIONS: u8 = 0x45;
const IPV6_HEADER: usize = 40;

#[cgroup_skb(ingress)]
pub fn segment_ttl(ctx: SkBuffContext) -> i32 {
    // cgroup_skb programs see the packet from the IP header on.
    let data = ctx.data();
    let end = ctx.data_end();
    // Nearly every packet is IPv4 without options (first byte 0x45), where the TCP flags sit
    // at a fixed offset: three loads decide, without the general parse below.
    if data + IPV4_MIN_HEADER + TCP_READ <= end
        && unsafe { *(data as *const u8) } == IPV4_NO_OPTIONS
        && (unsafe { *((data + 9) as *const u8) } != IPPROTO_TCP
            || unsafe { *((data + IPV4_MIN_HEADER + TCP_FLAGS_BYTE) as *const u8) }
                & (tcp_flags::SYN | tcp_flags::RST)
                == 0)
    {
        return 1;
    }
    if data + IPV4_MIN_HEADER > end {
        return 1;
    }
    let first = unsafe { *(data as *const u8) };
    let (tcp, ttl, family) = match first >> 4 {
        4 => {
            if unsafe { *((data + 9) as *const u8) } != IPPROTO_TCP {
                return 1;
            }
            let ihl = ((first & 0x0f) as usize) * 4;
            (data + ihl, unsafe { *((data + 8) as *const u8) }, 2u8)
        }
        6 => {
            if data + IPV6_HEADER > end || unsafe { *((data + 6) as *const u8) } != IPPROTO_TCP {
                return 1;
            }
            (
                data + IPV6_HEADER,
                unsafe { *((data + 7) as *const u8) },
                10u8,
            )
        }
        _ => return 1,
    };
    if tcp + TCP_READ > end {
        return 1;
    }
    let segment_flags = unsafe { *((tcp + TCP_FLAGS_BYTE) as *const u8) };
    if segment_flags & (tcp_flags::SYN | tcp_flags::RST) == 0 {
        return 1;
    }
    // SAFETY: the context pointer is the program's own skb; `sk` is a field the verifier
    // types as a nullable socket pointer.
    let sk = unsafe { (*(ctx.as_ptr() as *const __sk_buff)).__bindgen_anon_2.sk } as *const u8;
    if sk.is_null() {
        return 1;
    }
    // SAFETY: the context pointer is the program's own skb.
    let cookie = || unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if segment_flags & tcp_flags::RST != 0 {
        // Kept for the `tcp_receive_reset` that follows if the RST is accepted; a spoofed
        // one outside the window costs this write and nothing else.
        if let Some(context) = context::of_sock(sk, cookie, Create::Yes) {
            context.rst_ttl = ttl;
            context.rst_flags = segment_flags;
            context.rst_ns = now_ns();
        }
        return 1;
    }
    if segment_flags & tcp_flags::ACK != 0 {
        // A SYN-ACK arrives on the connecting socket itself.
        if let Some(context) = context::of_sock(sk, cookie, Create::Yes) {
            context.peer_ttl = ttl;
        }
        return 1;
    }
    // A SYN arrives at the listener; the accepted socket does not exist yet.
    // SAFETY: `sk` is the socket the verifier typed; the helper returns NULL for anything but
    // a full TCP socket.
    let listener = unsafe { bpf_skc_to_tcp_sock(sk as *mut _) } as *const u8;
    if listener.is_null() {
        return 1;
    }
    let mut key = HandshakeKey {
        netns_cookie: netns_cookie::<Btf>(listener),
        ..HandshakeKey::default()
    };
    if family == 2 {
        // SAFETY (all reads below): bounds were checked against data_end above.
        let src = unsafe { *((data + 12) as *const [u8; 4]) };
        let dst = unsafe { *((data + 16) as *const [u8; 4]) };
        key.remote_addr[..4].copy_from_slice(&src);
        key.local_addr[..4].copy_from_slice(&dst);
    } else {
        key.remote_addr = unsafe { *((data + 8) as *const [u8; 16]) };
        key.local_addr = unsafe { *((data + 24) as *const [u8; 16]) };
    }
    key.remote_port = u16::from_be(unsafe { *(tcp as *const u16) });
    key.local_port = u16::from_be(unsafe { *((tcp + 2) as *const u16) });
    context::remember_handshake_ttl(&key, ttl);
    1
}
