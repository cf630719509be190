//! A tiny TCP echo server on its own thread: accepts connections and writes every read back,
//! never closing an idle connection by itself.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::net::UnixStream},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use crate::LabError;

/// A write to a peer that does not read gives up after this long and drops the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// An echo server; stops, closing its connections with FIN, when stopped or dropped.
///
/// The listening socket is created in the calling thread's network namespace: call
/// [`EchoServer::bind`] inside [`in_netns`](crate::in_netns) to serve from a namespace.
#[derive(Debug)]
pub struct EchoServer {
    local_addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Option<UnixStream>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl EchoServer {
    /// Binds `addr` (port 0 picks a free port) and starts serving. Connections to it succeed as
    /// soon as this returns.
    pub fn bind(addr: SocketAddr) -> Result<EchoServer, LabError> {
        let io_error = |context: String| move |source| LabError::Io { context, source };
        let listener =
            TcpListener::bind(addr).map_err(io_error(format!("echo server: bind {addr}")))?;
        let local_addr = listener
            .local_addr()
            .map_err(io_error("echo server: local address".to_owned()))?;
        listener
            .set_nonblocking(true)
            .map_err(io_error("echo server: non-blocking listener".to_owned()))?;
        let (stop, stopped) =
            UnixStream::pair().map_err(io_error("echo server: stop channel".to_owned()))?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let thread = thread::Builder::new()
            .name(format!("echo-{local_addr}"))
            .spawn(move || serve(&listener, &stopped, &counter))
            .map_err(io_error("echo server: start thread".to_owned()))?;
        Ok(EchoServer {
            local_addr,
            accepted,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How many connections it has accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Stops serving, closes every connection and reports whether the server failed.
    pub fn stop(mut self) -> Result<(), LabError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), LabError> {
        drop(self.stop.take());
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let context = format!("echo server on {}", self.local_addr);
        match thread.join() {
            Ok(result) => result.map_err(|source| LabError::Io { context, source }),
            Err(_) => Err(LabError::Io {
                context,
                source: io::Error::other("server thread panicked"),
            }),
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown() {
            eprintln!("keepalive-lab: {error}");
        }
    }
}

/// The server loop: one `poll` over the stop channel, the listener and every connection.
fn serve(listener: &TcpListener, stopped: &UnixStream, accepted: &AtomicUsize) -> io::Result<()> {
    let mut connections: Vec<TcpStream> = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let mut fds: Vec<libc::pollfd> = [stopped.as_raw_fd(), listener.as_raw_fd()]
            .into_iter()
            .chain(connections.iter().map(AsRawFd::as_raw_fd))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let count = libc::nfds_t::try_from(fds.len()).map_err(io::Error::other)?;
        // SAFETY: `fds` holds `count` initialised pollfd entries for open descriptors.
        if unsafe { libc::poll(fds.as_mut_ptr(), count, -1) } < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if fds[0].revents != 0 {
            return Ok(());
        }
        let mut index = connections.len();
        while index > 0 {
            index -= 1;
            if fds[index + 2].revents != 0 && !echo_once(&mut connections[index], &mut buffer) {
                connections.swap_remove(index);
            }
        }
        if fds[1].revents != 0 {
            accept_all(listener, &mut connections, accepted)?;
        }
    }
}

/// Echoes one read; `false` when the connection is finished (EOF or error).
fn echo_once(connection: &mut TcpStream, buffer: &mut [u8]) -> bool {
    match connection.read(buffer) {
        Ok(0) => false,
        Ok(read) => connection.write_all(&buffer[..read]).is_ok(),
        Err(error) => matches!(
            error.kind(),
            io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
        ),
    }
}

fn accept_all(
    listener: &TcpListener,
    connections: &mut Vec<TcpStream>,
    accepted: &AtomicUsize,
) -> io::Result<()> {
    loop {
        match listener.accept() {
            Ok((connection, _)) => {
                connection.set_write_timeout(Some(WRITE_TIMEOUT))?;
                connections.push(connection);
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => match error.kind() {
                io::ErrorKind::WouldBlock => return Ok(()),
                io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => {}
                _ => return Err(error),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn echoes_and_counts_connections() {
        let server = EchoServer::bind((Ipv4Addr::LOCALHOST, 0).into()).expect("bind");
        for round in 0..3u8 {
            let mut stream = TcpStream::connect(server.local_addr()).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            stream.write_all(&[round, 1, 2]).expect("write");
            let mut echoed = [0u8; 3];
            stream.read_exact(&mut echoed).expect("echo");
            assert_eq!(echoed, [round, 1, 2]);
        }
        assert_eq!(server.accepted(), 3);
        server.stop().expect("clean stop");
    }

    #[test]
    fn stopping_closes_connections_with_fin() {
        let server = EchoServer::bind((Ipv4Addr::LOCALHOST, 0).into()).expect("bind");
        let mut stream = TcpStream::connect(server.local_addr()).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        stream.write_all(b"x").expect("write");
        stream.read_exact(&mut [0u8; 1]).expect("echo");
        server.stop().expect("clean stop");
        assert_eq!(stream.read(&mut [0u8; 1]).expect("EOF, not an error"), 0);
    }
}
