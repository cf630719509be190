//! Privileged: the filters. For each of `--port`, `--remote`, `--netns` and `--process` a
//! daemon watches one connection's kind and two connections are closed with `SO_LINGER {1, 0}`
//! (an RST sent, one received): the one the filter admits gets its finding, the other
//! nothing at all, not even a kernel record. Loopback only, and a namespace the test creates.

mod common;

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::fs::MetadataExt as _,
    thread,
    time::Duration,
};

use common::{Daemon, require_root};
use keepalive_lab::{Netns, in_netns, set_linger_abort};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

/// Closes one connection to `listener` with `SO_LINGER {1, 0}` from the calling thread, and
/// returns the client's address.
fn abort_to(listener: &TcpListener) -> SocketAddr {
    let client = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
    let (_server, _) = listener.accept().expect("accept");
    set_linger_abort(&client).expect("SO_LINGER {1, 0}");
    client.local_addr().expect("client address")
}

/// Closes one such connection from a thread named `name` (its command name).
fn abort_from_thread(listener: &TcpListener, name: &str) -> SocketAddr {
    thread::scope(|scope| {
        thread::Builder::new()
            .name(name.to_owned())
            .spawn_scoped(scope, || abort_to(listener))
            .expect("spawn")
            .join()
            .expect("the thread")
    })
}

/// Whether a line is about the connection whose client end is `client` (in the namespace
/// with inode `netns`, when given), from either end.
fn about(line: &Value, client: SocketAddr, netns: Option<u32>) -> bool {
    let client = client.to_string();
    (line["local"] == client.as_str() || line["remote"] == client.as_str())
        && netns.is_none_or(|inode| line["netns"] == inode)
}

/// Waits for the admitted connection's finding, then stops the daemon: nothing about the
/// left-out connection may have been printed, and, for a filter the kernel applies, the
/// kernel counted what it left out.
fn check(
    mut daemon: Daemon,
    admitted: (SocketAddr, Option<u32>),
    left_out: (SocketAddr, Option<u32>),
    in_kernel: bool,
) {
    let finding = daemon.wait_for("the admitted connection's finding", WAIT, |v| {
        v["type"] == "finding" && about(v, admitted.0, admitted.1)
    });
    assert_eq!(finding["kind"], "linger_zero", "{finding:#}");
    // Records are read in order and printed as read, and the left-out connection died first:
    // anything about it would be here by now, or among the findings released at exit.
    let mut lines = daemon.all(|v| about(v, left_out.0, left_out.1));
    let (status, rest) = daemon.stop();
    assert!(status.success(), "{status}");
    lines.extend(
        rest.iter()
            .filter(|v| about(v, left_out.0, left_out.1))
            .cloned(),
    );
    assert!(lines.is_empty(), "the left-out connection: {lines:#?}");
    let stats = rest
        .iter()
        .rfind(|v| v["type"] == "stats")
        .expect("the stats line at exit");
    if in_kernel {
        assert!(
            stats["filtered"].as_u64() >= Some(2),
            "its two RSTs: {stats}"
        );
    }
}

fn loopback() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind on loopback")
}

fn port(listener: &TcpListener) -> String {
    listener.local_addr().expect("address").port().to_string()
}

#[test]
#[ignore = "needs root (eBPF programs): `cargo xtask test` runs it as root"]
fn port_filter() {
    require_root("port_filter");
    let (watched, other) = (loopback(), loopback());
    let daemon = Daemon::start(&["--port", &port(&watched)]);
    let left_out = abort_to(&other);
    let admitted = abort_to(&watched);
    check(daemon, (admitted, None), (left_out, None), true);
}

#[test]
#[ignore = "needs root (eBPF programs): `cargo xtask test` runs it as root"]
fn remote_filter() {
    require_root("remote_filter");
    // All of 127.0.0.0/8 is loopback; a connection to 127.0.0.2 leaves from it too.
    let watched = TcpListener::bind("127.0.0.2:0").expect("bind on 127.0.0.2");
    let other = loopback();
    let daemon = Daemon::start(&["--remote", "127.0.0.2/32", "--remote", "fd6b:a1::/64"]);
    let left_out = abort_to(&other);
    let admitted = abort_to(&watched);
    check(daemon, (admitted, None), (left_out, None), true);
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn netns_filter() {
    require_root("netns_filter");
    let netns = Netns::create("filter").expect("a namespace");
    let inode = netns.inode().expect("its inode");
    let path = netns.path();
    let daemon = Daemon::start(&["--netns", path.to_str().expect("a UTF-8 path")]);
    let own = std::fs::metadata("/proc/self/ns/net")
        .expect("this namespace")
        .ino();
    let own = u32::try_from(own).expect("a namespace inode");
    let other = loopback();
    let left_out = abort_to(&other);
    let admitted = in_netns(&netns, || abort_to(&loopback())).expect("enter the namespace");
    check(daemon, (admitted, Some(inode)), (left_out, Some(own)), true);
}

#[test]
#[ignore = "needs root (eBPF programs): `cargo xtask test` runs it as root"]
fn process_filter() {
    require_root("process_filter");
    let listener = loopback();
    let daemon = Daemon::start(&["--process", "kao-watched"]);
    let left_out = abort_from_thread(&listener, "kao-other");
    let admitted = abort_from_thread(&listener, "kao-watched");
    check(daemon, (admitted, None), (left_out, None), false);
}
