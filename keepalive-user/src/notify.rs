//! Readiness for systemd (`Type=notify`): `READY=1` once every hook is attached, `STOPPING=1`
//! when shutting down, sent as one datagram to `$NOTIFY_SOCKET` (sd_notify(3)'s protocol). Not
//! under systemd, nothing is sent.

use std::{
    ffi::{OsStr, OsString},
    io,
    os::{
        linux::net::SocketAddrExt as _,
        unix::{
            ffi::OsStrExt as _,
            net::{SocketAddr, UnixDatagram},
        },
    },
};

/// The variable systemd sets to its notification socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Why a notification could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `$NOTIFY_SOCKET` names no usable socket address.
    #[error("${NOTIFY_SOCKET}={socket:?} is not a socket path or an abstract name (@name)")]
    Address {
        /// The variable's value.
        socket: OsString,
    },
    /// The datagram was not sent.
    #[error("notifying systemd through {socket:?}: {source}")]
    Send {
        /// The socket.
        socket: OsString,
        /// What sendto said.
        #[source]
        source: io::Error,
    },
}

/// Tells the service manager that start-up is complete; `false` when there is none to tell.
pub fn ready() -> Result<bool, NotifyError> {
    send_to_manager("READY=1\n")
}

/// Tells the service manager that the daemon is shutting down.
pub fn stopping() -> Result<bool, NotifyError> {
    send_to_manager("STOPPING=1\n")
}

fn send_to_manager(state: &str) -> Result<bool, NotifyError> {
    match std::env::var_os(NOTIFY_SOCKET) {
        Some(socket) => send(&socket, state).map(|()| true),
        None => Ok(false),
    }
}

/// Sends `state` to the socket `socket` names: a path, or an abstract name written `@name`.
pub fn send(socket: &OsStr, state: &str) -> Result<(), NotifyError> {
    let address = address(socket).ok_or_else(|| NotifyError::Address {
        socket: socket.to_owned(),
    })?;
    let sent = UnixDatagram::unbound().and_then(|sender| {
        sender.send_to_addr(state.as_bytes(), &address)?;
        Ok(())
    });
    sent.map_err(|source| NotifyError::Send {
        socket: socket.to_owned(),
        source,
    })
}

fn address(socket: &OsStr) -> Option<SocketAddr> {
    match socket.as_bytes() {
        [b'@', name @ ..] => SocketAddr::from_abstract_name(name).ok(),
        [b'/', ..] => SocketAddr::from_pathname(socket).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn received(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        let len = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..len]).into_owned()
    }

    #[test]
    fn a_path_and_an_abstract_name_receive_the_state() {
        let path = std::env::temp_dir().join(format!("kao-{}-notify.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).expect("bind the path");
        send(path.as_os_str(), "READY=1\n").expect("sent");
        assert_eq!(received(&listener), "READY=1\n");
        std::fs::remove_file(&path).expect("remove the socket");

        let name = format!("kao-{}-notify", std::process::id());
        let abstract_addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("a name");
        let listener = UnixDatagram::bind_addr(&abstract_addr).expect("bind the name");
        send(OsStr::new(&format!("@{name}")), "STOPPING=1\n").expect("sent");
        assert_eq!(received(&listener), "STOPPING=1\n");
    }

    #[test]
    fn bad_addresses_are_named() {
        let error = send(OsStr::new("relative.sock"), "READY=1\n").expect_err("not an address");
        assert!(error.to_string().contains("relative.sock"), "{error}");
        let missing = std::env::temp_dir().join(format!("kao-{}-absent.sock", std::process::id()));
        let error = send(missing.as_os_str(), "READY=1\n").expect_err("nobody listens");
        assert!(matches!(error, NotifyError::Send { .. }), "{error}");
    }
}
