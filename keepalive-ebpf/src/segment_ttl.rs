//! TTL / hop limit of incoming SYN, SYN-ACK and RST segments, from a cgroup_skb ingress
//! program on the cgroup v2 root. It runs for every packet delivered to a local socket, so
//! everything else leaves after a few direct packet reads (no helper calls).

use aya_ebpf::{
    EbpfContext, helpers::bpf_get_socket_cookie, macros::cgroup_skb, programs::SkBuffContext,
};
use keepalive_common::{EventKind, flags, tcp_flags};

use crate::emit::{new_task_less_event, submit};

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
    let Some(mut event) = new_task_less_event(EventKind::SegmentTtl) else {
        return 1;
    };
    event.family = family;
    event.ttl = ttl;
    event.tcp_flags = segment_flags;
    event.flags |= flags::FROM_SEGMENT;
    if family == 2 {
        // SAFETY (all reads below): bounds were checked against data_end above.
        let src = unsafe { *((data + 12) as *const [u8; 4]) };
        let dst = unsafe { *((data + 16) as *const [u8; 4]) };
        event.remote_addr[..4].copy_from_slice(&src);
        event.local_addr[..4].copy_from_slice(&dst);
    } else {
        event.remote_addr = unsafe { *((data + 8) as *const [u8; 16]) };
        event.local_addr = unsafe { *((data + 24) as *const [u8; 16]) };
    }
    event.remote_port = u16::from_be(unsafe { *(tcp as *const u16) });
    event.local_port = u16::from_be(unsafe { *((tcp + 2) as *const u16) });
    // SAFETY: the context pointer is the program's own skb.
    event.cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    submit(event);
    1
}
