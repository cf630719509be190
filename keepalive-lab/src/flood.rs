//! Bounded floods of crafted TCP segments, for tests and benches that show the observer stays
//! silent (no record per packet) under traffic strangers choose. Sent through a raw socket from
//! whichever network namespace the calling thread is in (see [`in_netns`](crate::in_netns)):
//! callers aim them only at addresses inside namespaces they created.

use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

/// TCP flag bits of a crafted segment.
pub const SYN: u8 = 0x02;
/// ACK: a bare ACK to a closed port looks like a segment of a connection its host forgot.
pub const ACK: u8 = 0x10;
/// RST: a reset, spoofed by whoever knows a connection's addresses and ports.
pub const RST: u8 = 0x04;
const TCP_HEADER: usize = 20;

/// What a flood sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FloodReport {
    /// Segments handed to the kernel.
    pub sent: u64,
    /// How long it took.
    pub elapsed: Duration,
}

/// Sends up to `count` bare SYNs from `source` (ports from its port upward, at least 1024) to
/// `target`, stopping early after `limit`. No socket on this host owns the source ports, so
/// the target's answers (an RST from a closed port, a SYN-ACK from an open one) are dropped
/// here without a reply of their own.
pub fn syn_flood(
    source: SocketAddrV4,
    target: SocketAddrV4,
    count: u64,
    limit: Duration,
) -> io::Result<FloodReport> {
    send_segments(source, target, SYN, count, limit)
}

/// Sends up to `count` segments with TCP `flags` from `source` (ports from its port upward,
/// at least 1024, wrapping below 65536) to `target`, stopping early after `limit`.
pub fn send_segments(
    source: SocketAddrV4,
    target: SocketAddrV4,
    flags: u8,
    count: u64,
    limit: Duration,
) -> io::Result<FloodReport> {
    let first = u64::from(source.port().max(1024)) - 1024;
    flood(target, count, limit, false, |sent| {
        // From the source's port upward, wrapping within 1024..=65535.
        let port = 1024 + ((first + sent) % 64_512) as u16;
        tcp_segment(*source.ip(), port, target, flags, sent as u32)
    })
}

/// Sends up to `count` RSTs from `source` to `target`, each at a pseudo-random sequence
/// number drawn from `seed`, stopping early after `limit`: what an off-path attacker who
/// knows a connection's addresses and ports but not its sequence numbers can send. Almost
/// all fall outside the receive window and are dropped; the few inside it draw a challenge
/// ACK (RFC 5961), and only one at exactly the next expected sequence number resets.
pub fn spoofed_rsts(
    source: SocketAddrV4,
    target: SocketAddrV4,
    count: u64,
    limit: Duration,
    seed: u64,
) -> io::Result<FloodReport> {
    let mut state = seed | 1;
    flood(target, count, limit, true, |_| {
        // xorshift64: uniform enough to spread over the sequence space.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        spoofed_segment(source, target, RST, (state >> 16) as u32)
    })
}

/// Sends one RST from `source` to `target` at sequence number `seq`, with TTL 64.
pub fn spoofed_rst(source: SocketAddrV4, target: SocketAddrV4, seq: u32) -> io::Result<()> {
    flood(target, 1, Duration::from_secs(1), true, |_| {
        spoofed_segment(source, target, RST, seq)
    })
    .map(|_| ())
}

/// Sends up to `count` segments made by `make` (given how many were sent before) to
/// `target`, stopping early after `limit`; with `own_ip_header` each segment starts with its
/// IPv4 header (so its source may be any address).
fn flood<S: AsRef<[u8]>>(
    target: SocketAddrV4,
    count: u64,
    limit: Duration,
    own_ip_header: bool,
    mut make: impl FnMut(u64) -> S,
) -> io::Result<FloodReport> {
    let socket = raw_tcp_socket()?;
    if own_ip_header {
        let on: libc::c_int = 1;
        // SAFETY: setsockopt reads `on` for the length given.
        if unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_HDRINCL,
                (&raw const on).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        } != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    let start = Instant::now();
    let destination = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(*target.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut sent = 0;
    let mut next = make(0);
    while sent < count && start.elapsed() < limit {
        let segment = next.as_ref();
        // SAFETY: `segment` and `destination` are valid for the lengths given.
        let written = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                segment.as_ptr().cast(),
                segment.len(),
                0,
                (&raw const destination).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if written < 0 {
            let error = io::Error::last_os_error();
            // A full queue is back-pressure, not failure: try the same segment again.
            if error.raw_os_error() == Some(libc::ENOBUFS) {
                continue;
            }
            return Err(error);
        }
        sent += 1;
        next = make(sent);
    }
    Ok(FloodReport {
        sent,
        elapsed: start.elapsed(),
    })
}

fn raw_tcp_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A TCP header without options (the kernel adds the IP header), checksummed over the IPv4
/// pseudo-header.
fn tcp_segment(
    source: Ipv4Addr,
    source_port: u16,
    target: SocketAddrV4,
    flags: u8,
    seq: u32,
) -> [u8; TCP_HEADER] {
    let mut tcp = [0u8; TCP_HEADER];
    tcp[0..2].copy_from_slice(&source_port.to_be_bytes());
    tcp[2..4].copy_from_slice(&target.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    // Data offset: five 32-bit words.
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&64_240u16.to_be_bytes());
    let mut pseudo = Vec::with_capacity(12 + TCP_HEADER);
    pseudo.extend_from_slice(&source.octets());
    pseudo.extend_from_slice(&target.ip().octets());
    pseudo.extend_from_slice(&[0, libc::IPPROTO_TCP as u8]);
    pseudo.extend_from_slice(&(TCP_HEADER as u16).to_be_bytes());
    pseudo.extend_from_slice(&tcp);
    tcp[16..18].copy_from_slice(&internet_checksum(&pseudo).to_be_bytes());
    tcp
}

/// An IPv4 header (TTL 64, from `source`, the kernel fills in the checksum and id) and the
/// TCP header of [`tcp_segment`].
fn spoofed_segment(source: SocketAddrV4, target: SocketAddrV4, flags: u8, seq: u32) -> [u8; 40] {
    let mut packet = [0u8; 40];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&40u16.to_be_bytes());
    packet[8] = 64;
    packet[9] = libc::IPPROTO_TCP as u8;
    packet[12..16].copy_from_slice(&source.ip().octets());
    packet[16..20].copy_from_slice(&target.ip().octets());
    packet[20..].copy_from_slice(&tcp_segment(
        *source.ip(),
        source.port(),
        target,
        flags,
        seq,
    ));
    packet
}

/// RFC 1071's ones' complement sum.
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_segment_with_its_checksum_is_zero() {
        let target = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 130), 7001);
        let segment = tcp_segment(Ipv4Addr::new(198, 51, 100, 10), 40_000, target, SYN, 7);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&[198, 51, 100, 10, 198, 51, 100, 130, 0, 6, 0, 20]);
        pseudo.extend_from_slice(&segment);
        assert_eq!(internet_checksum(&pseudo), 0);
        assert_eq!(segment[13], SYN);
        assert_eq!(u16::from_be_bytes([segment[2], segment[3]]), 7001);
    }

    #[test]
    fn the_rfc_1071_example_sums_as_published() {
        // RFC 1071 §3: 0001 f203 f4f5 f6f7 sums to ddf2, so the checksum is 220d.
        assert_eq!(
            internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
    }
}
