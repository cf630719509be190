//! Privileged lab tests: they create network namespaces, so they need root. They are
//! `#[ignore]`d: a plain `cargo test` reports them as ignored, with the reason; `cargo xtask
//! test` runs them as root (`--include-ignored`).
//!
//! Every wait is bounded: sockets have read and write timeouts, polls have deadlines, and the
//! only fixed sleeps are the idle gaps the tests are about.

use std::{
    io::{self, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use keepalive_lab::{
    ChildGuard, EchoServer, Host, Keepalive, LabError, Middlebox, MiddleboxMode, Netns, Topology,
    VIP_V4, VIP_V6, cleanup_stale, current_netns_inode, in_netns, read_retrying, set_keepalive,
    set_user_timeout,
};

const PORT: u16 = 7000;
/// Bound on every blocking socket call.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The middlebox's established timeout in the idle tests, and the idle gap that outlasts it.
const CT_TIMEOUT_SECS: u32 = 2;
const IDLE_GAP: Duration = Duration::from_secs(4);

/// Fails a privileged test that runs without root. They are `#[ignore]`d, so a plain
/// `cargo test` reports them as ignored; `cargo xtask test` runs them as root with
/// `--include-ignored`.
fn require_root(test: &str) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(root, "{test} needs root to create network namespaces");
}

/// One server, IPv4 and IPv6, and the given middlebox.
fn lab(middlebox: Middlebox) -> Topology {
    Topology::builder()
        .ipv6(true)
        .middlebox(middlebox)
        .build()
        .expect("build the lab")
}

fn middlebox(mode: MiddleboxMode, established_timeout_secs: u32) -> Middlebox {
    Middlebox {
        mode,
        established_timeout_secs,
    }
}

/// An echo server on `[::]:PORT` (IPv4 and IPv6) inside `host`'s namespace.
fn serve(host: &Host) -> EchoServer {
    in_netns(host.netns(), || {
        EchoServer::bind((Ipv6Addr::UNSPECIFIED, PORT).into())
    })
    .expect("enter the server namespace")
    .expect("bind the echo server")
}

/// A connection from `host`'s namespace to `to`, with bounded reads and writes.
fn connect(host: &Host, to: impl Into<IpAddr>) -> TcpStream {
    let to = SocketAddr::new(to.into(), PORT);
    let stream = in_netns(host.netns(), || TcpStream::connect_timeout(&to, IO_TIMEOUT))
        .expect("enter the client namespace")
        .unwrap_or_else(|error| panic!("connect to {to}: {error}"));
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .expect("write timeout");
    stream
}

fn round_trip(stream: &mut TcpStream, payload: &[u8]) {
    stream.write_all(payload).expect("send");
    let mut echoed = vec![0u8; payload.len()];
    stream.read_exact(&mut echoed).expect("receive the echo");
    assert_eq!(echoed, payload);
}

/// Waits out the idle gap, sends on every stream, and returns the error each connection then
/// dies with, and how long after the sends each error came.
fn send_after_idle(streams: &mut [TcpStream]) -> Vec<(io::Error, Duration)> {
    thread::sleep(IDLE_GAP);
    // The writes only queue data: the verdict comes back on the reads.
    for stream in streams.iter_mut() {
        stream.write_all(b"after idle").expect("queue data");
    }
    let sent = Instant::now();
    streams
        .iter_mut()
        .map(|stream| {
            let error = read_retrying(stream, &mut [0u8; 16]).expect_err("the connection must die");
            (error, sent.elapsed())
        })
        .collect()
}

/// An IPv4 and an IPv6 connection from the client to the first server, each past one echo.
fn dual_stack_pair(lab: &Topology) -> [TcpStream; 2] {
    let server = lab.server();
    let mut pair = [
        connect(lab.client(), server.ipv4()),
        connect(lab.client(), server.ipv6().expect("IPv6 lab")),
    ];
    for stream in &mut pair {
        round_trip(stream, b"before idle");
    }
    pair
}

fn sysctl(netns: &Netns, key: &str) -> String {
    netns
        .run("sysctl", &["-n", key])
        .unwrap_or_else(|error| panic!("{error}"))
        .trim()
        .to_owned()
}

fn netns_exists(name: &str) -> bool {
    Path::new("/var/run/netns").join(name).exists()
}

/// Polls `condition` every 10 ms until it holds or `limit` passes.
fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn triangle_carries_ipv4_and_ipv6_through_the_middlebox() {
    require_root("triangle_carries_ipv4_and_ipv6_through_the_middlebox");
    let lab = lab(middlebox(MiddleboxMode::Reject, 30));
    let _server = serve(lab.server());
    let client = lab.client();
    let server = lab.server();
    assert_eq!(server.ipv4(), Ipv4Addr::new(198, 51, 100, 130));

    let mut v4 = connect(client, server.ipv4());
    round_trip(&mut v4, b"hello over IPv4");
    assert_eq!(
        v4.local_addr().expect("local").ip(),
        IpAddr::from(client.ipv4())
    );
    let mut v6 = connect(client, server.ipv6().expect("IPv6 lab"));
    round_trip(&mut v6, b"hello over IPv6");

    let flows = lab.conntrack_tcp_flows().expect("conntrack -L");
    let client_v4 = format!("src={}", client.ipv4());
    assert!(
        flows
            .iter()
            .any(|flow| flow.contains("ESTABLISHED") && flow.contains(&client_v4)),
        "the middlebox tracks the flow: {flows:?}"
    );

    let middlebox = lab.middlebox();
    assert_eq!(sysctl(middlebox, "net.ipv4.ip_forward"), "1");
    assert_eq!(sysctl(middlebox, "net.ipv6.conf.all.forwarding"), "1");
    assert_eq!(
        sysctl(
            middlebox,
            "net.netfilter.nf_conntrack_tcp_timeout_established"
        ),
        "30"
    );
    assert_eq!(
        sysctl(middlebox, "net.netfilter.nf_conntrack_tcp_loose"),
        "0"
    );
    assert_eq!(sysctl(client.netns(), "net.ipv4.ip_forward"), "0");

    let root_inode = current_netns_inode().expect("own namespace");
    for name in lab.netns_names() {
        for family in ["-4", "-6"] {
            let defaults = Command::new("ip")
                .args(["-n", name, family, "route", "show", "default"])
                .output()
                .expect("ip route");
            assert!(defaults.status.success());
            assert!(defaults.stdout.is_empty(), "{name} has a default route");
        }
    }
    for host in [client, server] {
        let inode = host.netns().inode().expect("inode");
        assert_ne!(inode, root_inode);
        assert_eq!(
            in_netns(host.netns(), current_netns_inode)
                .expect("enter")
                .expect("inode"),
            inode
        );
    }
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn reject_mode_resets_a_flow_idle_longer_than_the_timeout() {
    require_root("reject_mode_resets_a_flow_idle_longer_than_the_timeout");
    let lab = lab(middlebox(MiddleboxMode::Reject, CT_TIMEOUT_SECS));
    let _server = serve(lab.server());
    let mut streams = dual_stack_pair(&lab);
    let ports: Vec<String> = streams
        .iter()
        .map(|stream| format!("sport={} ", stream.local_addr().expect("local").port()))
        .collect();

    for (error, _) in send_after_idle(&mut streams) {
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
    }
    let flows = lab.conntrack_tcp_flows().expect("conntrack -L");
    assert!(
        !flows
            .iter()
            .any(|flow| flow.contains("ESTABLISHED") && ports.iter().any(|p| flow.contains(p))),
        "the middlebox forgot the flows: {flows:?}"
    );
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn drop_mode_times_out_a_flow_idle_longer_than_the_timeout() {
    require_root("drop_mode_times_out_a_flow_idle_longer_than_the_timeout");
    let lab = lab(middlebox(MiddleboxMode::Drop, CT_TIMEOUT_SECS));
    let _server = serve(lab.server());
    let mut streams = dual_stack_pair(&lab);
    for stream in &streams {
        set_user_timeout(stream, Duration::from_millis(1500)).expect("TCP_USER_TIMEOUT");
    }

    for (error, waited) in send_after_idle(&mut streams) {
        assert_eq!(error.raw_os_error(), Some(libc::ETIMEDOUT), "{error}");
        assert!(
            waited >= Duration::from_millis(1400) && waited < Duration::from_secs(6),
            "died {waited:?} after the send"
        );
    }
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn keepalive_keeps_an_idle_flow_alive() {
    require_root("keepalive_keeps_an_idle_flow_alive");
    let lab = lab(middlebox(MiddleboxMode::Reject, CT_TIMEOUT_SECS));
    let _server = serve(lab.server());
    let mut streams = dual_stack_pair(&lab);
    let keepalive = Keepalive {
        idle_secs: 1,
        interval_secs: 1,
        count: 3,
    };
    for stream in &streams {
        set_keepalive(stream, Some(keepalive)).expect("keepalive");
    }
    thread::sleep(IDLE_GAP);
    for stream in &mut streams {
        round_trip(stream, b"after idle");
    }
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn vip_spreads_new_flows_round_robin_and_rejects_forgotten_ones() {
    require_root("vip_spreads_new_flows_round_robin_and_rejects_forgotten_ones");
    let lab = Topology::builder()
        .servers(4)
        .ipv6(true)
        .vip(true)
        .middlebox(middlebox(MiddleboxMode::Reject, CT_TIMEOUT_SECS))
        .build()
        .expect("build the lab");
    let servers: Vec<EchoServer> = lab.servers().iter().map(serve).collect();
    assert_eq!(lab.vip_v4(), Some(VIP_V4));
    assert_eq!(lab.vip_v6(), Some(VIP_V6));

    let mut streams: Vec<TcpStream> = (0..8).map(|_| connect(lab.client(), VIP_V4)).collect();
    streams.extend((0..4).map(|_| connect(lab.client(), VIP_V6)));
    for (index, stream) in streams.iter_mut().enumerate() {
        round_trip(stream, format!("request {index}").as_bytes());
        let peer = stream.peer_addr().expect("peer").ip();
        assert!(
            peer == IpAddr::from(VIP_V4) || peer == IpAddr::from(VIP_V6),
            "{peer}"
        );
    }
    let accepted: Vec<usize> = servers.iter().map(EchoServer::accepted).collect();
    assert_eq!(accepted, [3, 3, 3, 3], "round-robin over the four servers");

    // One IPv4 and one IPv6 flow go idle; the others are closed first.
    streams.swap(1, 8);
    streams.truncate(2);
    for (error, _) in send_after_idle(&mut streams) {
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
    }
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn single_namespace_has_only_loopback_and_its_own_rules() {
    require_root("single_namespace_has_only_loopback_and_its_own_rules");
    let netns = Netns::create("solo").expect("create");
    let links = netns.ip(&["-o", "link", "show"]).expect("ip link");
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains("lo:") && links.contains("UP"), "{links}");

    netns
        .nft("table inet t { chain out { type filter hook output priority filter; tcp dport 7001 drop; }; }")
        .expect("nft");
    let (echo, blackholed) = in_netns(&netns, || {
        let echo = EchoServer::bind((Ipv4Addr::LOCALHOST, PORT).into()).map(|server| {
            let mut stream = TcpStream::connect_timeout(&server.local_addr(), IO_TIMEOUT)?;
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            round_trip(&mut stream, b"loopback");
            Ok::<_, io::Error>(server.accepted())
        });
        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, 7001));
        let blackholed = TcpStream::connect_timeout(&target, Duration::from_millis(500));
        (echo, blackholed)
    })
    .expect("enter");
    assert_eq!(echo.expect("echo server").expect("round trip"), 1);
    let error = blackholed.expect_err("the drop rule blackholes port 7001");
    assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn children_run_inside_and_die_with_their_guard() {
    require_root("children_run_inside_and_die_with_their_guard");
    let netns = Netns::create("proc").expect("create");
    let inode = netns.inode().expect("inode");
    let child_inode = |pid: u32| {
        std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .ok()
            .map(|meta| std::os::unix::fs::MetadataExt::ino(&meta))
    };

    let guard = ChildGuard::spawn(netns.command("sleep").arg("30")).expect("spawn");
    let pid = guard.pid();
    assert!(
        wait_until(Duration::from_secs(5), || child_inode(pid)
            == Some(u64::from(inode))),
        "the child entered the namespace"
    );
    drop(guard);
    // SAFETY: signal 0 only checks whether the (reaped) child still exists.
    let alive = unsafe { libc::kill(libc::pid_t::try_from(pid).expect("pid"), 0) } == 0;
    assert!(!alive, "the child was killed and reaped");

    let guard = ChildGuard::spawn(netns.command("sleep").arg("30")).expect("spawn");
    let status = guard.stop(Duration::from_secs(5)).expect("stop");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGTERM)
    );
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn teardown_deletes_every_namespace_and_is_fast() {
    require_root("teardown_deletes_every_namespace_and_is_fast");
    for (label, builder) in [
        ("1 server, IPv4", Topology::builder()),
        (
            "4 servers, IPv4+IPv6, VIP",
            Topology::builder().servers(4).ipv6(true).vip(true),
        ),
    ] {
        let started = Instant::now();
        let lab = builder.build().expect("build the lab");
        let built = started.elapsed();
        let names: Vec<String> = lab.netns_names().into_iter().map(str::to_owned).collect();
        assert!(
            names
                .iter()
                .all(|name| name.starts_with("kao-") && netns_exists(name))
        );

        let started = Instant::now();
        lab.teardown().expect("teardown");
        let torn_down = started.elapsed();
        println!("{label}: setup {built:?}, teardown {torn_down:?}");
        let listed = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns list");
        let listed = String::from_utf8_lossy(&listed.stdout);
        for name in &names {
            assert!(!netns_exists(name), "{name} is gone");
            assert!(!listed.contains(name.as_str()), "{name} is not listed");
        }
    }

    let lab = Topology::builder().build().expect("build the lab");
    let names: Vec<String> = lab.netns_names().into_iter().map(str::to_owned).collect();
    drop(lab);
    assert!(
        names.iter().all(|name| !netns_exists(name)),
        "drop deletes too"
    );
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn cleanup_removes_only_namespaces_of_dead_runs() {
    require_root("cleanup_removes_only_namespaces_of_dead_runs");
    let mut finished = Command::new("true").spawn().expect("spawn true");
    let dead_pid = finished.id();
    finished.wait().expect("reap true");
    let stale = format!("kao-{dead_pid}-0-stale");
    let foreign = format!("kaox-{dead_pid}-0-stale");
    for name in [&stale, &foreign] {
        let status = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .expect("ip");
        assert!(status.success(), "create {name}");
    }
    let mut orphan =
        ChildGuard::spawn(Command::new("ip").args(["netns", "exec", &stale, "sleep", "30"]))
            .expect("spawn a process inside the stale namespace");
    let live = Netns::create("live").expect("create");

    let deleted = cleanup_stale();
    let foreign_deleted = Command::new("ip")
        .args(["netns", "delete", &foreign])
        .status();
    let deleted = deleted.expect("cleanup");
    assert!(deleted.contains(&stale), "{deleted:?}");
    assert!(
        !deleted.iter().any(|name| name == live.name()),
        "{deleted:?}"
    );
    assert!(!netns_exists(&stale));
    assert!(netns_exists(live.name()));
    assert!(
        foreign_deleted.expect("ip").success(),
        "a foreign name was left alone"
    );
    assert!(
        wait_until(Duration::from_secs(5), || matches!(
            orphan.try_wait(),
            Ok(Some(_))
        )),
        "the process inside the stale namespace was killed"
    );
}

#[test]
#[ignore = "needs root (eBPF programs, network namespaces): `cargo xtask test` runs it as root"]
fn errors_name_the_failing_command() {
    require_root("errors_name_the_failing_command");
    let netns = Netns::create("err").expect("create");
    match netns.ip(&["link", "set", "nosuchdev", "up"]) {
        Err(LabError::CommandFailed {
            command, stderr, ..
        }) => {
            assert!(command.contains("link set nosuchdev up"), "{command}");
            assert!(!stderr.is_empty());
        }
        other => panic!("expected CommandFailed, got {other:?}"),
    }
    assert!(matches!(
        netns.set_sysctls(&[("net.ipv4.no_such_sysctl", "1")]),
        Err(LabError::Sysctl { .. })
    ));
}
