//! Socket options the reset tests need, set with `setsockopt` on any socket.

use std::{
    io::{self, Read},
    mem,
    net::TcpStream,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    time::Duration,
};

use crate::LabError;

/// TCP keepalive timing, as `TCP_KEEPIDLE`, `TCP_KEEPINTVL` and `TCP_KEEPCNT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// Seconds of idleness before the first probe (Linux accepts 1 to 32767).
    pub idle_secs: u32,
    /// Seconds between unanswered probes (1 to 32767).
    pub interval_secs: u32,
    /// Unanswered probes before the connection is reset (1 to 127).
    pub count: u32,
}

/// Turns TCP keepalive on with the given timing, or off with `None`.
pub fn set_keepalive(socket: &impl AsFd, keepalive: Option<Keepalive>) -> Result<(), LabError> {
    let fd = socket.as_fd();
    let Some(timing) = keepalive else {
        return set_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 0, "SO_KEEPALIVE");
    };
    let options = [
        (libc::TCP_KEEPIDLE, timing.idle_secs, "TCP_KEEPIDLE"),
        (libc::TCP_KEEPINTVL, timing.interval_secs, "TCP_KEEPINTVL"),
        (libc::TCP_KEEPCNT, timing.count, "TCP_KEEPCNT"),
    ];
    for (name, value, option) in options {
        set_int(
            fd,
            libc::IPPROTO_TCP,
            name,
            to_c_int(value, option)?,
            option,
        )?;
    }
    set_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1, "SO_KEEPALIVE")
}

/// Sets `SO_LINGER {1, 0}`: closing the socket then sends an RST instead of a FIN.
pub fn set_linger_abort(socket: &impl AsFd) -> Result<(), LabError> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    set_option(
        socket.as_fd(),
        libc::SOL_SOCKET,
        libc::SO_LINGER,
        &linger,
        "SO_LINGER",
    )
}

/// Sets `TCP_USER_TIMEOUT`: the connection dies with ETIMEDOUT when sent data stays
/// unacknowledged this long (millisecond resolution; zero restores the default).
pub fn set_user_timeout(socket: &impl AsFd, timeout: Duration) -> Result<(), LabError> {
    let millis = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    let value = to_c_int(millis, "TCP_USER_TIMEOUT")?;
    set_int(
        socket.as_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_USER_TIMEOUT,
        value,
        "TCP_USER_TIMEOUT",
    )
}

/// Closes `stream` abortively: `SO_LINGER {1, 0}`, then close, so the peer receives an RST.
pub fn abortive_close(stream: TcpStream) -> Result<(), LabError> {
    set_linger_abort(&stream)?;
    drop(stream);
    Ok(())
}

fn to_c_int(value: u32, option: &'static str) -> Result<libc::c_int, LabError> {
    libc::c_int::try_from(value)
        .map_err(|_| LabError::InvalidConfig(format!("{option} {value} is out of range")))
}

fn set_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
    option: &'static str,
) -> Result<(), LabError> {
    set_option(fd, level, name, &value, option)
}

fn set_option<T>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
    option: &'static str,
) -> Result<(), LabError> {
    let len = libc::socklen_t::try_from(mem::size_of::<T>())
        .map_err(|_| LabError::InvalidConfig(format!("{option}: value too large")))?;
    // SAFETY: `fd` is open for the call; `value` points to `len` readable bytes.
    let rc =
        unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, (value as *const T).cast(), len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(LabError::SocketOption {
            option,
            source: io::Error::last_os_error(),
        })
    }
}

/// `read`, again after a signal interrupted it: the tests wait on reads for a connection to
/// die, and a signal meant for another thread of the process must not end the wait early.
pub fn read_retrying(stream: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, TcpListener};

    use super::*;

    fn get_int(socket: &impl AsFd, level: libc::c_int, name: libc::c_int) -> libc::c_int {
        let mut value: libc::c_int = 0;
        let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: value and len are valid for writing; the fd is open.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_fd().as_raw_fd(),
                level,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "getsockopt: {}", io::Error::last_os_error());
        value
    }

    fn loopback_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind loopback");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        (client, server)
    }

    #[test]
    fn keepalive_timing_is_applied_and_removed() {
        let (client, _server) = loopback_pair();
        let timing = Keepalive {
            idle_secs: 2,
            interval_secs: 3,
            count: 4,
        };
        set_keepalive(&client, Some(timing)).expect("set keepalive");
        assert_eq!(get_int(&client, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
        assert_eq!(get_int(&client, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), 2);
        assert_eq!(get_int(&client, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL), 3);
        assert_eq!(get_int(&client, libc::IPPROTO_TCP, libc::TCP_KEEPCNT), 4);
        set_keepalive(&client, None).expect("clear keepalive");
        assert_eq!(get_int(&client, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 0);
    }

    #[test]
    fn out_of_range_keepalive_is_an_error_not_a_panic() {
        let (client, _server) = loopback_pair();
        let too_long = Keepalive {
            idle_secs: u32::MAX,
            interval_secs: 1,
            count: 1,
        };
        assert!(matches!(
            set_keepalive(&client, Some(too_long)),
            Err(LabError::InvalidConfig(_))
        ));
        let kernel_rejects = Keepalive {
            idle_secs: 0,
            interval_secs: 1,
            count: 1,
        };
        assert!(matches!(
            set_keepalive(&client, Some(kernel_rejects)),
            Err(LabError::SocketOption {
                option: "TCP_KEEPIDLE",
                ..
            })
        ));
    }

    #[test]
    fn user_timeout_is_in_milliseconds() {
        let (client, _server) = loopback_pair();
        set_user_timeout(&client, Duration::from_millis(1500)).expect("set user timeout");
        assert_eq!(
            get_int(&client, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
            1500
        );
        assert!(set_user_timeout(&client, Duration::from_secs(u64::MAX)).is_err());
    }

    #[test]
    fn abortive_close_resets_the_peer() {
        use std::io::Read;

        let (client, mut server) = loopback_pair();
        abortive_close(client).expect("abortive close");
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        let error = server
            .read(&mut [0u8; 8])
            .expect_err("the peer sent an RST");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
    }
}
