//! The identity of a network namespace.

use std::{io, net::UdpSocket, os::fd::AsRawFd as _};

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`, Linux 5.14 and
/// later), read from a socket made in it: unlike the inode number, never reused within a boot.
pub fn current_cookie() -> io::Result<u64> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let mut cookie: u64 = 0;
    let mut len = libc::socklen_t::try_from(size_of::<u64>()).map_err(io::Error::other)?;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, which has that size.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}
