//! Load generators, all on loopback and all bounded in time: connection churn, a request /
//! response stream on open connections, a reset storm, and idle connections (one process's
//! share of workload 4; [`crate::procs::IdleHolders`] spreads them over processes).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use keepalive_lab::interrupt;

use crate::host;
use crate::net::{self, SERVER};

/// Bytes of a request and of its reply.
const MESSAGE: usize = 64;
/// Listen backlog (the kernel caps it at net.core.somaxconn).
const BACKLOG: i32 = 4096;
/// Bound on every connect, read and write: nothing on loopback takes this long.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed operation, so that a persistent error does not spin a core.
const ERROR_PAUSE: Duration = Duration::from_millis(1);

/// What a timed workload did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    /// Completed operations (connections, round trips or resets).
    pub done: u64,
    /// Failed operations.
    pub errors: u64,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn per_second(&self) -> f64 {
        per_second(self.done, self.elapsed)
    }
}

pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// Counters shared by the threads of one workload.
#[derive(Default)]
struct Counters {
    done: AtomicU64,
    errors: AtomicU64,
}

impl Counters {
    fn outcome(&self, elapsed: Duration) -> Outcome {
        Outcome {
            done: self.done.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            elapsed,
        }
    }

    fn count(&self, result: io::Result<()>) {
        match result {
            Ok(()) => {
                self.done.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                thread::sleep(ERROR_PAUSE);
            }
        }
    }
}

/// Accepts on `listener` until `stop`, handing each connection to `serve`; `serve` returns
/// whether to go on.
fn accept_loop(
    listener: &TcpListener,
    stop: &AtomicBool,
    mut serve: impl FnMut(TcpStream) -> bool,
) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                if !serve(stream) {
                    return;
                }
            }
            // The accept timeout passed: look at the stop flag again.
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => thread::sleep(ERROR_PAUSE),
        }
    }
}

fn server_addr(listener: &TcpListener) -> Result<SocketAddrV4> {
    Ok(SocketAddrV4::new(
        SERVER,
        listener.local_addr().context("listener address")?.port(),
    ))
}

/// Workload 1: `workers` clients each connect, send a request, read the reply and the
/// server's FIN, and close, for `duration`; as many server threads accept, answer and close
/// first (so TIME_WAIT stays on the server side and client ports are reused at once).
pub fn churn(workers: usize, duration: Duration) -> Result<Outcome> {
    let listener = net::listener(BACKLOG).context("cannot listen on 127.0.0.1")?;
    let addr = server_addr(&listener)?;
    let stop = AtomicBool::new(false);
    let counters = Counters::default();
    let start = Instant::now();
    let deadline = start + duration;
    thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                accept_loop(&listener, &stop, |mut stream| {
                    let mut request = [0u8; MESSAGE];
                    // The accepted socket inherits the listener's short receive timeout.
                    let _ = stream
                        .set_read_timeout(Some(IO_TIMEOUT))
                        .and_then(|()| stream.read_exact(&mut request))
                        .and_then(|()| stream.write_all(&request));
                    true
                });
            });
        }
        let clients: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    while Instant::now() < deadline && !interrupt::requested() {
                        counters.count(churn_once(addr));
                    }
                })
            })
            .collect();
        for client in clients {
            let _ = client.join();
        }
        stop.store(true, Ordering::Relaxed);
    });
    Ok(counters.outcome(start.elapsed()))
}

fn churn_once(addr: SocketAddrV4) -> io::Result<()> {
    let mut stream = net::connect(addr, None, IO_TIMEOUT)?;
    stream.write_all(&[b'q'; MESSAGE])?;
    let mut reply = [0u8; MESSAGE];
    stream.read_exact(&mut reply)?;
    // The server closes after replying: wait for its FIN so that it closes first.
    let mut rest = [0u8; 1];
    match stream.read(&mut rest)? {
        0 => Ok(()),
        _ => Err(io::Error::other("server sent more than the reply")),
    }
}

/// Workload for the per-packet path: `pairs` open connections doing request / response
/// round trips, so that nearly every segment is a plain data or ACK segment.
pub struct Stream {
    clients: Vec<TcpStream>,
    servers: Vec<TcpStream>,
}

impl Stream {
    pub fn open(pairs: usize) -> Result<Self> {
        let listener = net::listener(BACKLOG).context("cannot listen on 127.0.0.1")?;
        let addr = server_addr(&listener)?;
        let mut clients = Vec::with_capacity(pairs);
        let mut servers = Vec::with_capacity(pairs);
        for _ in 0..pairs {
            clients.push(net::connect(addr, None, IO_TIMEOUT).context("stream: connect")?);
            // On loopback the connection is in the accept queue once connect returns.
            let (server, _) = listener.accept().context("stream: accept")?;
            server.set_read_timeout(Some(IO_TIMEOUT))?;
            server.set_write_timeout(Some(IO_TIMEOUT))?;
            servers.push(server);
        }
        Ok(Self { clients, servers })
    }

    /// Round trips for `duration` on every connection at once; then the connections close.
    pub fn run(mut self, duration: Duration) -> Outcome {
        let counters = Counters::default();
        let stop = AtomicBool::new(false);
        let start = Instant::now();
        let deadline = start + duration;
        thread::scope(|scope| {
            for server in &mut self.servers {
                let stop = &stop;
                scope.spawn(move || {
                    let mut buffer = [0u8; MESSAGE];
                    while !stop.load(Ordering::Relaxed) {
                        let echoed = server
                            .read_exact(&mut buffer)
                            .and_then(|()| server.write_all(&buffer));
                        if echoed.is_err() {
                            break;
                        }
                    }
                });
            }
            let clients: Vec<_> = self
                .clients
                .iter_mut()
                .map(|client| {
                    let counters = &counters;
                    scope.spawn(move || {
                        let mut buffer = [b'p'; MESSAGE];
                        while Instant::now() < deadline && !interrupt::requested() {
                            let round_trip = client
                                .write_all(&buffer)
                                .and_then(|()| client.read_exact(&mut buffer));
                            let failed = round_trip.is_err();
                            counters.count(round_trip);
                            if failed {
                                break;
                            }
                        }
                        // Wakes the echo thread blocked in read.
                        let _ = client.shutdown(std::net::Shutdown::Write);
                    })
                })
                .collect();
            for client in clients {
                let _ = client.join();
            }
            stop.store(true, Ordering::Relaxed);
        });
        counters.outcome(start.elapsed())
    }
}

/// Workload 2: resets as fast as the machine makes them, from `workers` threads: half connect
/// and close with `SO_LINGER {1, 0}` (an RST on an established connection, which the
/// accepted end receives), the other half connect to a closed port (an RST answering a SYN).
/// `done` counts resets.
pub fn reset_storm(workers: usize, duration: Duration) -> Result<Outcome> {
    let listener = net::listener(BACKLOG).context("cannot listen on 127.0.0.1")?;
    let open = server_addr(&listener)?;
    let (_reserved, closed_port) = net::closed_port().context("cannot reserve a closed port")?;
    let closed = SocketAddrV4::new(SERVER, closed_port);
    let aborters = (workers / 2).max(1);
    let refusers = workers.saturating_sub(aborters).max(1);
    let stop = AtomicBool::new(false);
    let counters = Counters::default();
    let start = Instant::now();
    let deadline = start + duration;
    thread::scope(|scope| {
        // Drains the accept queue of connections that were reset already.
        scope.spawn(|| accept_loop(&listener, &stop, |_| true));
        let mut clients = Vec::new();
        for _ in 0..aborters {
            clients.push(scope.spawn(|| {
                while Instant::now() < deadline && !interrupt::requested() {
                    counters.count(abort_once(open));
                }
            }));
        }
        for _ in 0..refusers {
            clients.push(scope.spawn(|| {
                while Instant::now() < deadline && !interrupt::requested() {
                    counters.count(refused_once(closed));
                }
            }));
        }
        for client in clients {
            let _ = client.join();
        }
        stop.store(true, Ordering::Relaxed);
    });
    Ok(counters.outcome(start.elapsed()))
}

/// One thread, in turn: a linger-0 close of a fresh connection (an RST on a live socket)
/// and a connect to a closed port (an RST refusing a SYN), `pairs` times or until `limit`.
/// Returns the closes and refusals that happened.
pub fn reset_burst(pairs: u64, limit: Duration) -> Result<(Outcome, Outcome)> {
    let listener = net::listener(BACKLOG).context("cannot listen on 127.0.0.1")?;
    let open = server_addr(&listener)?;
    let (_reserved, closed_port) = net::closed_port().context("cannot reserve a closed port")?;
    let closed = SocketAddrV4::new(SERVER, closed_port);
    let stop = AtomicBool::new(false);
    let (aborts, refusals) = (Counters::default(), Counters::default());
    let start = Instant::now();
    thread::scope(|scope| {
        scope.spawn(|| accept_loop(&listener, &stop, |_| true));
        for _ in 0..pairs {
            if start.elapsed() >= limit || interrupt::requested() {
                break;
            }
            aborts.count(abort_once(open));
            refusals.count(refused_once(closed));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let elapsed = start.elapsed();
    Ok((aborts.outcome(elapsed), refusals.outcome(elapsed)))
}

fn abort_once(addr: SocketAddrV4) -> io::Result<()> {
    let stream = net::connect(addr, None, IO_TIMEOUT)?;
    net::set_linger_zero(&stream)
}

fn refused_once(addr: SocketAddrV4) -> io::Result<()> {
    match net::connect(addr, None, IO_TIMEOUT) {
        Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => Ok(()),
        Err(error) => Err(error),
        Ok(_) => Err(io::Error::other("a closed port accepted a connection")),
    }
}

/// Established idle connections held by one process, both ends, from one source address.
pub struct IdleConnections {
    clients: Vec<TcpStream>,
    servers: Vec<TcpStream>,
}

impl IdleConnections {
    pub fn open(count: usize, source: Ipv4Addr, time_limit: Duration) -> Result<Self> {
        let listener = net::listener(BACKLOG).context("cannot listen on 127.0.0.1")?;
        let addr = server_addr(&listener)?;
        let deadline = Instant::now() + time_limit;
        let stop = AtomicBool::new(false);
        let (clients, servers) = thread::scope(|scope| {
            let acceptor = scope.spawn(|| {
                let mut servers = Vec::with_capacity(count);
                accept_loop(&listener, &stop, |stream| {
                    servers.push(stream);
                    servers.len() < count
                });
                servers
            });
            let clients = connect_all(addr, source, count, deadline);
            if clients.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
            // Otherwise the acceptor stops by itself at `count`, or at the deadline.
            while !acceptor.is_finished() && Instant::now() < deadline && !interrupt::requested() {
                thread::sleep(net::ACCEPT_TIMEOUT);
            }
            stop.store(true, Ordering::Relaxed);
            let servers = acceptor.join().unwrap_or_default();
            (clients, servers)
        });
        let clients = clients?;
        if servers.len() != clients.len() {
            bail!(
                "{} connections made, but {} accepted",
                clients.len(),
                servers.len()
            );
        }
        Ok(Self { clients, servers })
    }

    pub fn len(&self) -> usize {
        self.clients.len().min(self.servers.len())
    }
}

fn connect_all(
    addr: SocketAddrV4,
    source: Ipv4Addr,
    count: usize,
    deadline: Instant,
) -> Result<Vec<TcpStream>> {
    let mut clients = Vec::with_capacity(count);
    for i in 0..count {
        if interrupt::requested() {
            bail!("interrupted");
        }
        if Instant::now() > deadline {
            bail!("only {i} of {count} idle connections were made in time");
        }
        let stream = net::connect(addr, Some(source), IO_TIMEOUT)
            .with_context(|| format!("idle connection {i} from {source}"))?;
        clients.push(stream);
    }
    Ok(clients)
}

/// How many idle connections one process can hold when `total` are wanted: both ends need a
/// descriptor, and one source address must not use more than half the ephemeral port range.
pub fn connections_per_process(total: usize) -> Result<usize> {
    let want = u64::try_from(total.saturating_mul(2).saturating_add(64)).unwrap_or(u64::MAX);
    let descriptors = usize::try_from(host::raise_open_file_limit(want)?).unwrap_or(usize::MAX);
    let by_descriptors = descriptors.saturating_sub(64) / 2;
    let by_ports = ephemeral_ports()? / 2;
    let per_process = by_descriptors.min(by_ports);
    if per_process == 0 {
        bail!("RLIMIT_NOFILE ({descriptors}) leaves no room for idle connections");
    }
    Ok(per_process)
}

/// 127.0.0.2, 127.0.0.3, … (127.0.0.1 is the server).
pub fn source_address(index: usize) -> Result<Ipv4Addr> {
    match u8::try_from(index + 2) {
        Ok(last) if last < u8::MAX => Ok(Ipv4Addr::new(127, 0, 0, last)),
        _ => bail!("more than 253 source addresses needed"),
    }
}

/// Size of net.ipv4.ip_local_port_range.
fn ephemeral_ports() -> Result<usize> {
    let range = host::read_trimmed("/proc/sys/net/ipv4/ip_local_port_range")?;
    let mut bounds = range.split_whitespace().map(str::parse::<usize>);
    match (bounds.next(), bounds.next()) {
        (Some(Ok(low)), Some(Ok(high))) if high >= low => Ok(high - low + 1),
        _ => bail!("cannot parse net.ipv4.ip_local_port_range {range:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_skip_the_server() {
        assert_eq!(source_address(0).unwrap(), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_address(5).unwrap(), Ipv4Addr::new(127, 0, 0, 7));
        assert!(source_address(253).is_err());
    }

    #[test]
    fn rates_survive_zero_time() {
        assert_eq!(per_second(10, Duration::ZERO), 0.0);
        assert_eq!(per_second(10, Duration::from_secs(2)), 5.0);
    }
}
