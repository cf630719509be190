//! Loopback sockets with the options the load generators need, which `std::net` cannot set
//! before `connect` (send timeout, source address without a port) or at all (zero linger).

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Every load generator talks to this address.
pub const SERVER: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// A blocking listening socket on `127.0.0.1` with an ephemeral port and the given backlog;
/// `accept` gives up after [`ACCEPT_TIMEOUT`] (`SO_RCVTIMEO`), so that acceptors can stop.
/// A blocking accept wakes one waiter per connection, where polling would wake them all.
pub fn listener(backlog: i32) -> io::Result<TcpListener> {
    let fd = socket()?;
    set_option(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1i32)?;
    set_option(
        &fd,
        libc::SOL_SOCKET,
        libc::SO_RCVTIMEO,
        timeval(ACCEPT_TIMEOUT),
    )?;
    bind(&fd, SocketAddrV4::new(SERVER, 0))?;
    // SAFETY: `fd` is an open socket.
    check(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(TcpListener::from(fd))
}

/// How long a blocking accept waits before it returns `WouldBlock`.
pub const ACCEPT_TIMEOUT: Duration = Duration::from_millis(100);

/// A socket bound to a free port on `127.0.0.1` that does not listen: connecting to the port
/// is answered with a reset. Keep it open as long as the port must stay closed.
pub fn closed_port() -> io::Result<(OwnedFd, u16)> {
    let fd = socket()?;
    bind(&fd, SocketAddrV4::new(SERVER, 0))?;
    let port = local_port(fd.as_raw_fd())?;
    Ok((fd, port))
}

/// A blocking connection to `to`, from `from` when given (the port is chosen at connect time,
/// per 4-tuple, so each source address has the whole ephemeral range). `timeout` bounds the
/// connect and every later read and write.
pub fn connect(
    to: SocketAddrV4,
    from: Option<Ipv4Addr>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let fd = socket()?;
    // The send timeout also bounds a blocking connect.
    set_option(&fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, timeval(timeout))?;
    set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, timeval(timeout))?;
    if let Some(source) = from {
        set_option(&fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1i32)?;
        bind(&fd, SocketAddrV4::new(source, 0))?;
    }
    let addr = sockaddr(to);
    // SAFETY: `addr` is a valid sockaddr_in of the given length.
    check(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            socklen::<libc::sockaddr_in>(),
        )
    })?;
    Ok(TcpStream::from(fd))
}

/// `SO_LINGER {1, 0}`: closing the socket sends a reset instead of a FIN.
pub fn set_linger_zero(stream: &TcpStream) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    set_option_raw(
        stream.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_LINGER,
        linger,
    )
}

fn timeval(duration: Duration) -> libc::timeval {
    libc::timeval {
        tv_sec: libc::time_t::try_from(duration.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(duration.subsec_micros()),
    }
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the descriptor is owned from here on.
    let fd = check(unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            libc::IPPROTO_TCP,
        )
    })?;
    // SAFETY: `fd` was just returned by socket() and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn bind(fd: &OwnedFd, addr: SocketAddrV4) -> io::Result<()> {
    let addr = sockaddr(addr);
    // SAFETY: `addr` is a valid sockaddr_in of the given length.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            socklen::<libc::sockaddr_in>(),
        )
    })?;
    Ok(())
}

fn local_port(fd: RawFd) -> io::Result<u16> {
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut addr: libc::sockaddr_in = unsafe { mem::zeroed() };
    let mut len = socklen::<libc::sockaddr_in>();
    // SAFETY: `addr` has room for `len` bytes.
    check(unsafe { libc::getsockname(fd, (&raw mut addr).cast(), &raw mut len) })?;
    Ok(u16::from_be(addr.sin_port))
}

fn set_option<T>(fd: &OwnedFd, level: i32, name: i32, value: T) -> io::Result<()> {
    set_option_raw(fd.as_raw_fd(), level, name, value)
}

fn set_option_raw<T>(fd: RawFd, level: i32, name: i32, value: T) -> io::Result<()> {
    // SAFETY: `value` is a plain value of the size passed.
    check(unsafe { libc::setsockopt(fd, level, name, (&raw const value).cast(), socklen::<T>()) })?;
    Ok(())
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(mem::size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
}

fn check(result: i32) -> io::Result<i32> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}
