//! Bad input: every flag with an invalid value, paths that do not exist, a kernel without
//! BTF, an unreadable symbol list, missing privileges. Each is a clear error naming what is
//! wrong, with a non-zero exit and no panic. docs/reliability.md lists the messages.

mod common;

use std::{
    fs,
    net::TcpListener,
    path::PathBuf,
    process::{Command, Output},
};

use common::{BinaryForOthers, require_root};

/// Exit status of a command line clap refused.
const USAGE: i32 = 2;
/// Exit status of an error found while starting.
const FAILURE: i32 = 1;

/// A directory of this test's own, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("kao-bad-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("create the test directory");
        TempDir(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().expect("UTF-8 path").to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn run(program: &mut Command) -> (i32, String) {
    let Output { status, stderr, .. } = program.output().expect("run keepalive-observer");
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    assert!(!stderr.contains("panicked"), "a panic: {stderr}");
    (status.code().expect("exited, not killed"), stderr)
}

/// Runs the daemon with `args` (its state in `dir`, no journal unless `args` say) and checks that it exits with
/// `code` and says `says` on its first line of standard error.
fn refused(dir: &TempDir, args: &[&str], code: i32, says: &str) {
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_keepalive-observer"));
    if !args.contains(&"--journald") {
        daemon.args(["--journald", "off"]);
    }
    daemon.arg("--state-dir").arg(dir.path("state")).args(args);
    let (status, stderr) = run(&mut daemon);
    let first = stderr.lines().next().unwrap_or_default();
    assert_eq!(status, code, "{args:?}: {stderr}");
    assert!(first.starts_with("error: "), "{args:?}: {stderr}");
    assert!(
        first.contains(says),
        "{args:?} should say {says:?}: {stderr}"
    );
}

/// Every flag of the daemon and the subcommands with a value clap or its parser refuses: the
/// message names the flag and the value.
#[test]
fn every_flag_with_an_invalid_value_is_refused_by_name() {
    let dir = TempDir::new("flags");
    let table: &[(&[&str], &str)] = &[
        (
            &["--format", "xml"],
            "invalid value 'xml' for '--format <FORMAT>'",
        ),
        (
            &["--journald", "maybe"],
            "invalid value 'maybe' for '--journald <JOURNALD>'",
        ),
        (
            &["--idle-floor", "abc"],
            "for '--idle-floor <SECONDS>': `abc` is not a number of seconds",
        ),
        (
            &["--idle-floor", "-1"],
            "for '--idle-floor <SECONDS>': `-1`",
        ),
        (
            &["--idle-expiry-floor", "1e99"],
            "for '--idle-expiry-floor <SECONDS>': `1e99`",
        ),
        (
            &["--record-limit", "1K"],
            "for '--record-limit <SIZE>': `1K` is too small",
        ),
        (
            &["--record-limit", "12Q"],
            "for '--record-limit <SIZE>': `12Q` is not a size",
        ),
        (
            &["--cgroup", "/nonexistent"],
            "for '--cgroup <DIR>': /nonexistent: No such file or directory",
        ),
        (
            &["--cgroup", "/tmp"],
            "for '--cgroup <DIR>': /tmp is not a cgroup v2 directory",
        ),
        (
            &["--hooks", "uprobe"],
            "invalid value 'uprobe' for '--hooks <HOOKS>'",
        ),
        (
            &["--state-interval", "0"],
            "for '--state-interval <SECONDS>': must be more than 0",
        ),
        (
            &["--metrics", "nope"],
            "invalid value 'nope' for '--metrics <ADDR>'",
        ),
        (
            &["--metrics-destinations", "0"],
            "for '--metrics-destinations <N>': 0 is not in 1..=65535",
        ),
        (
            &["--remote", "198.51.100.0/40"],
            "for '--remote <CIDR>': `/40` is not a prefix length",
        ),
        (
            &["--port", "0"],
            "for '--port <PORT>': 0 is not in 1..=65535",
        ),
        (
            &["--port", "70000"],
            "for '--port <PORT>': 70000 is not in 1..=65535",
        ),
        (
            &["--netns", "/nonexistent"],
            "for '--netns <NETNS>': `/nonexistent` is neither",
        ),
        (
            &["--process", "a-name-longer-than-comm"],
            "for '--process <NAME>': `a-name-longer-than-comm` is longer than",
        ),
        (
            &["--stats-interval", "x"],
            "for '--stats-interval <SECONDS>': `x` is not a number of seconds",
        ),
        (&["--no-such-flag"], "unexpected argument '--no-such-flag'"),
        (
            &["replay", "--format", "xml", "x.jsonl"],
            "invalid value 'xml' for '--format <FORMAT>'",
        ),
        (
            &["windows", "--format", "yaml"],
            "invalid value 'yaml' for '--format <FORMAT>'",
        ),
        (
            &["sockets", "--window", "x=5"],
            "for '--window <DEST=SECONDS>': `x` in `x=5` is neither",
        ),
        (
            &["sockets", "--risk", "nope"],
            "invalid value 'nope' for '--risk <RISK>'",
        ),
        (
            &["sockets", "--port", "0x10"],
            "invalid value '0x10' for '--port <PORT>'",
        ),
        (
            &["sockets", "--remote", "198.51.100.1:x"],
            "for '--remote <ADDR>'",
        ),
    ];
    for (args, says) in table {
        refused(&dir, args, USAGE, says);
    }
}

#[test]
fn a_recording_that_is_missing_or_not_one_is_an_error() {
    let dir = TempDir::new("replay");
    let missing = dir.path("missing.jsonl");
    refused(
        &dir,
        &["replay", &missing],
        FAILURE,
        &format!("opening {missing}: No such file"),
    );
    let garbage = dir.path("garbage.jsonl");
    fs::write(&garbage, "garbage\n").unwrap();
    refused(&dir, &["replay", &garbage], FAILURE, "line 1: bad JSON");
}

#[test]
fn without_privileges_the_daemon_says_what_it_needs() {
    let dir = TempDir::new("unprivileged");
    let copy = BinaryForOthers::copy();
    let binary = copy.path();
    let mut daemon = if keepalive_lab::is_root() {
        // As nobody, with no capabilities: what an ordinary user gets.
        let mut setpriv = Command::new("setpriv");
        setpriv.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ]);
        setpriv.arg(binary);
        setpriv
    } else {
        Command::new(binary)
    };
    daemon
        .args(["--journald", "off", "--state-dir"])
        .arg(dir.path("state"));
    let (status, stderr) = run(&mut daemon);
    assert_eq!(status, FAILURE, "{stderr}");
    assert!(
        stderr.starts_with(
            "error: keepalive-observer needs root (or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN)"
        ),
        "{stderr}"
    );
}

#[test]
#[ignore = "needs root (gets past the privilege check to load eBPF programs): `cargo xtask test` runs it as root"]
fn a_kernel_without_btf_is_an_error_naming_the_file() {
    require_root("a_kernel_without_btf_is_an_error_naming_the_file");
    let dir = TempDir::new("btf");
    // No BTF at all, as on a kernel built without CONFIG_DEBUG_INFO_BTF.
    let missing = dir.path("vmlinux");
    refused(
        &dir,
        &["--btf", &missing],
        FAILURE,
        &format!(
            "cannot read kernel BTF from {missing} (the kernel needs CONFIG_DEBUG_INFO_BTF=y): error processing input: No such file"
        ),
    );
    // Something else where the BTF should be.
    let garbage = dir.path("garbage");
    fs::write(&garbage, b"not BTF at all").unwrap();
    refused(
        &dir,
        &["--btf", &garbage],
        FAILURE,
        &format!("cannot read kernel BTF from {garbage}"),
    );
}

#[test]
#[ignore = "needs root (gets past the privilege check to load eBPF programs): `cargo xtask test` runs it as root"]
fn an_unreadable_symbol_list_is_an_error_naming_it() {
    require_root("an_unreadable_symbol_list_is_an_error_naming_it");
    let dir = TempDir::new("kallsyms");
    // A directory cannot be read as a file, whatever the privileges.
    let unreadable = dir.path("kallsyms");
    fs::create_dir_all(&unreadable).unwrap();
    refused(
        &dir,
        &["--kallsyms", &unreadable],
        FAILURE,
        &format!(
            "the keepalive timer signal needs tcp_keepalive_timer's address: cannot read {unreadable}: Is a directory"
        ),
    );
}

#[test]
#[ignore = "needs root (gets past the privilege check to load eBPF programs): `cargo xtask test` runs it as root"]
fn paths_and_addresses_that_cannot_be_used_are_errors_naming_them() {
    require_root("paths_and_addresses_that_cannot_be_used_are_errors_naming_them");
    let dir = TempDir::new("paths");
    refused(
        &dir,
        &["--record", "/nonexistent/recording.jsonl"],
        FAILURE,
        "cannot create the recording /nonexistent/recording.jsonl: No such file or directory",
    );
    let file = dir.path("a-file");
    fs::write(&file, "").unwrap();
    let under_a_file = format!("{file}/state");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_keepalive-observer"));
    daemon.args(["--journald", "off", "--state-dir", &under_a_file]);
    let (status, stderr) = run(&mut daemon);
    assert_eq!(status, FAILURE, "{stderr}");
    assert!(
        stderr.contains(&under_a_file) && stderr.contains("Not a directory"),
        "{stderr}"
    );
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    refused(&dir, &["--metrics", &addr], FAILURE, "--metrics");
    refused(&dir, &["--metrics", &addr], FAILURE, &addr);
}
