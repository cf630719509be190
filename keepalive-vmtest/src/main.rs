//! Guest test driver for `cargo xtask vm-test`. Inside a virtual machine booted with another
//! kernel, it runs keepalive-observer once per hook choice (`--hooks auto`, `tracepoint`,
//! `fentry`, `kprobe`), checks which hook each signal got, makes the resets of the privileged
//! event tests and a reply after an idle gap happen on loopback, runs a ladder of idle gaps
//! through a conntrack middlebox in network namespaces, and checks the daemon's events and
//! findings. It prints one
//! line per check and exits 0 only when all passed. Every run is recorded (`--record`); with
//! `--print-recordings` the recordings go to the console, one line each prefixed with
//! [`RECORDING_PREFIX`] and the hook choice, for `cargo xtask vm-test --golden` to keep.

mod ladder;
mod scenarios;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use keepalive_lab::daemon::{Daemon, Launch};
use serde_json::Value;

use crate::ladder::middlebox_ladder;
use crate::scenarios::{
    Expect, idle_reply, keepalive_race, keepalive_timeout, linger_zero, no_socket, unread_data,
};

/// Loading and verifying every program under software emulation takes a while.
const READY_WITHIN: Duration = Duration::from_secs(180);
const STOP_GRACE: Duration = Duration::from_secs(30);
const ALL_CHOICES: &[&str] = &["auto", "tracepoint", "fentry", "kprobe"];
/// The signals whose variants this test is about.
const RESET_SIGNALS: &[&str] = &[
    "RST sent",
    "RST in reply",
    "RST received",
    "keepalive timer",
];
/// The signals of a survived idle gap, which the learned idle timeout rests on.
const IDLE_SIGNALS: &[&str] = &["send after idle", "reply after idle"];
/// Signals every kernel this test boots must have, whatever the choice.
const ALWAYS: &[&str] = &["connection lifecycle", "socket errors", "segment TTL"];

type Scenario = fn(&mut Daemon, &Expect) -> Result<String>;
const SCENARIOS: &[(&str, Scenario)] = &[
    ("no_socket", no_socket),
    ("linger_zero", linger_zero),
    ("unread_data", unread_data),
    ("keepalive_timeout", keepalive_timeout),
    ("keepalive_race", keepalive_race),
    ("idle_reply", idle_reply),
    ("middlebox_ladder", middlebox_ladder),
];

/// Starts each console line of a printed recording, followed by the hook choice.
const RECORDING_PREFIX: &str = "VMTEST-RECORDING ";

struct Args {
    daemon: PathBuf,
    choices: Vec<String>,
    print_recordings: bool,
}

fn parse_args() -> Result<Args> {
    let mut daemon = None;
    let mut print_recordings = false;
    let mut choices: Vec<String> = ALL_CHOICES.iter().map(|c| (*c).to_owned()).collect();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--daemon" => daemon = Some(PathBuf::from(args.next().context("--daemon PATH")?)),
            "--print-recordings" => print_recordings = true,
            "--hooks" => {
                let list = args
                    .next()
                    .context("--hooks auto,tracepoint,fentry,kprobe")?;
                choices = list.split(',').map(str::to_owned).collect();
                if let Some(bad) = choices.iter().find(|c| !ALL_CHOICES.contains(&c.as_str())) {
                    bail!("unknown hook choice {bad:?}: use {}", ALL_CHOICES.join(","));
                }
            }
            other => bail!(
                "unknown argument {other:?}; usage: keepalive-vmtest --daemon PATH \
                 [--hooks auto,tracepoint,fentry,kprobe] [--print-recordings]"
            ),
        }
    }
    Ok(Args {
        daemon: daemon.context("--daemon PATH is required")?,
        choices,
        print_recordings,
    })
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            println!("vmtest: error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<bool> {
    let args = parse_args()?;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading the kernel release")?;
    let release = release.trim();
    let kernel = Kernel::of(release);
    let reasons = kernel.reasons;
    println!(
        "vmtest: kernel {release}, reset reasons expected: {reasons}, socket storage: {}, \
         socket error tracepoint: {}",
        kernel.storage, kernel.error_report
    );
    let (mut passed, mut failed) = (0, 0);
    for choice in &args.choices {
        let started = Instant::now();
        let recording = std::env::temp_dir().join(format!("recording-{choice}.jsonl"));
        let launch = Launch::new(&args.daemon)
            .args(["--hooks", choice.as_str(), "--stats-interval", "1"])
            .args([std::ffi::OsStr::new("--record"), recording.as_os_str()])
            .ready_timeout(READY_WITHIN)
            .stop_timeout(STOP_GRACE);
        let mut daemon = match launch.start() {
            Ok(daemon) => daemon,
            Err(error) => {
                println!("vmtest[{choice}] start: FAIL: {error:#}");
                failed += 1;
                continue;
            }
        };
        println!(
            "vmtest[{choice}] ready after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let expect = match check_hooks(choice, daemon.ready(), &kernel) {
            Ok(expect) => {
                passed += 1;
                expect
            }
            Err(error) => {
                println!("vmtest[{choice}] hooks: FAIL: {error:#}");
                failed += 1;
                continue;
            }
        };
        for (name, scenario) in SCENARIOS {
            let started = Instant::now();
            match scenario(&mut daemon, &expect) {
                Ok(detail) => {
                    passed += 1;
                    println!(
                        "vmtest[{choice}] {name}: ok in {:.1} s: {detail}",
                        started.elapsed().as_secs_f64()
                    );
                }
                Err(error) => {
                    failed += 1;
                    println!("vmtest[{choice}] {name}: FAIL: {error:#}");
                }
            }
        }
        match daemon.stop() {
            Ok(stopped) if stopped.status.success() => passed += 1,
            Ok(stopped) => {
                failed += 1;
                println!(
                    "vmtest[{choice}] stop: FAIL: exit status {}",
                    stopped.status
                );
            }
            Err(error) => {
                failed += 1;
                println!("vmtest[{choice}] stop: FAIL: {error:#}");
            }
        }
        if args.print_recordings {
            let text = std::fs::read_to_string(&recording)
                .with_context(|| format!("reading {}", recording.display()))?;
            for line in text.lines() {
                println!("{RECORDING_PREFIX}{choice} {line}");
            }
        }
    }
    println!("vmtest: {passed} passed, {failed} failed");
    Ok(failed == 0)
}

/// What the kernel under test offers, by its version.
struct Kernel {
    /// It names reset reasons (6.10).
    reasons: bool,
    /// Tracing programs may use socket storage (5.11); before, every context is in the map.
    storage: bool,
    /// It has the `inet_sk_error_report` tracepoint (5.14), the only hook of socket errors.
    error_report: bool,
}

impl Kernel {
    fn of(release: &str) -> Self {
        let at_least = |v| kernel_version(release).is_some_and(|r| r >= v);
        Self {
            reasons: at_least((6, 10)),
            storage: at_least((5, 11)),
            error_report: at_least((5, 14)),
        }
    }
}

/// Prints the start-up table and checks that each reset and idle signal got the hook `choice`
/// asks for on this kernel, and where contexts live. Returns what the scenarios may expect of
/// the hooks attached.
fn check_hooks(choice: &str, ready: &Value, kernel: &Kernel) -> Result<Expect> {
    let reasons = kernel.reasons;
    let mut table = BTreeMap::new();
    for hook in ready["hooks"]
        .as_array()
        .context("no hooks in the ready line")?
    {
        let signal = hook["signal"].as_str().context("hook without a signal")?;
        let label = hook["hook"].as_str().unwrap_or_default();
        let attached = hook["status"] == "attached";
        let status = if attached {
            "attached".to_owned()
        } else {
            format!("unavailable: {}", hook["why"].as_str().unwrap_or_default())
        };
        println!("vmtest[{choice}] hook {signal}: {label} ({status})");
        table.insert(signal.to_owned(), (label.to_owned(), attached));
    }
    let hook = |signal: &str| -> Result<&(String, bool)> {
        table
            .get(signal)
            .with_context(|| format!("no signal {signal:?} in the start-up table"))
    };
    for signal in ALWAYS.iter().chain(RESET_SIGNALS) {
        let (label, attached) = hook(signal)?;
        let optional = (*signal == "RST in reply" && choice == "tracepoint" && !reasons)
            || (*signal == "socket errors" && !kernel.error_report);
        ensure!(*attached || optional, "{signal} ({label}) is not attached");
    }
    // Every kernel this test boots has fentry or kprobes for the idle signals; only
    // tracepoints may lack them (before `tcp_sendmsg_locked` and `sock_recv_length`).
    if choice != "tracepoint" {
        for signal in IDLE_SIGNALS {
            let (label, attached) = hook(signal)?;
            ensure!(*attached, "{signal} ({label}) is not attached");
        }
    }
    let expected: Vec<(&str, String)> = match choice {
        "fentry" | "kprobe" => RESET_SIGNALS
            .iter()
            .chain(IDLE_SIGNALS)
            .map(|s| (*s, format!("{choice}/")))
            .collect(),
        "tracepoint" => vec![
            (
                "RST sent",
                if reasons {
                    "tp_btf/tcp_send_reset".to_owned()
                } else {
                    "tp_btf/tcp_send_reset (no reason)".to_owned()
                },
            ),
            ("RST received", "tp_btf/".to_owned()),
            ("keepalive timer", "tp_btf/".to_owned()),
        ],
        _ if reasons => vec![
            ("RST sent", "tp_btf/tcp_send_reset".to_owned()),
            ("RST in reply", "tp_btf/tcp_send_reset".to_owned()),
            ("RST received", "tp_btf/".to_owned()),
            ("keepalive timer", "tp_btf/".to_owned()),
        ],
        _ => vec![
            ("RST sent", "fentry/tcp_send_active_reset".to_owned()),
            ("RST in reply", "fentry/tcp_v4_send_reset".to_owned()),
            ("RST received", "tp_btf/".to_owned()),
            ("keepalive timer", "tp_btf/".to_owned()),
        ],
    };
    for (signal, prefix) in expected {
        let (label, _) = hook(signal)?;
        ensure!(
            label.starts_with(&prefix),
            "{signal}: expected a {prefix}… hook with --hooks {choice}, got {label}"
        );
    }
    // kprobes cannot reach socket storage: their context lives in the bounded map, which the
    // destroy hook cleans up; so does every context on a kernel without socket storage for
    // tracing programs.
    let context = ready["context"].as_str().unwrap_or_default();
    println!("vmtest[{choice}] connection context: {context}");
    if choice == "kprobe" || !kernel.storage {
        ensure!(context.starts_with("bounded map"), "context: {context}");
        ensure!(
            hook("context clean-up")?.1,
            "the fallback map's clean-up is not attached"
        );
    } else {
        ensure!(context.starts_with("socket storage"), "context: {context}");
    }
    Ok(Expect {
        reasons,
        replies: hook("RST in reply")?.1,
        idle: IDLE_SIGNALS.iter().all(|s| hook(s).is_ok_and(|h| h.1)),
    })
}

/// `6.1.0-56-cloud-amd64` → `(6, 1)`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ready(hooks: &[(&str, &str, bool)]) -> Value {
        let hooks: Vec<Value> = hooks
            .iter()
            .map(|(signal, hook, attached)| {
                json!({"signal": signal, "hook": hook,
                       "status": if *attached { "attached" } else { "unavailable" },
                       "why": if *attached { None } else { Some("no") }})
            })
            .collect();
        json!({"type": "ready", "hooks": hooks, "context": "socket storage (freed with each socket)"})
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(kernel_version("6.1.0-56-cloud-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("6.12.117+deb12-cloud-amd64"), Some((6, 12)));
        assert_eq!(kernel_version("linux"), None);
    }

    /// 6.1.
    const OLD: Kernel = Kernel {
        reasons: false,
        storage: true,
        error_report: true,
    };

    #[test]
    fn forced_variants_must_be_the_ones_attached() {
        let fentry = ready(&[
            ("connection lifecycle", "tp_btf/inet_sock_set_state", true),
            ("socket errors", "tp_btf/inet_sk_error_report", true),
            ("segment TTL", "cgroup_skb/ingress", true),
            ("RST sent", "fentry/tcp_send_active_reset", true),
            (
                "RST in reply",
                "fentry/tcp_v4_send_reset+tcp_v6_send_reset",
                true,
            ),
            ("RST received", "fentry/tcp_reset", true),
            ("keepalive timer", "fentry/tcp_keepalive_timer", true),
            ("send after idle", "fentry/tcp_sendmsg", true),
            ("reply after idle", "fentry/tcp_rcv_established", true),
        ]);
        let expect = check_hooks("fentry", &fentry, &OLD).unwrap();
        assert!(expect.replies && expect.idle);
        let error = check_hooks("kprobe", &fentry, &OLD).unwrap_err();
        assert!(error.to_string().contains("expected a kprobe/"), "{error}");
        let old_tracepoints = ready(&[
            ("connection lifecycle", "tp_btf/inet_sock_set_state", true),
            ("socket errors", "tp_btf/inet_sk_error_report", true),
            ("segment TTL", "cgroup_skb/ingress", true),
            ("RST sent", "tp_btf/tcp_send_reset (no reason)", true),
            ("RST in reply", "tp_btf/tcp_send_reset", false),
            ("RST received", "tp_btf/tcp_receive_reset", true),
            ("keepalive timer", "tp_btf/timer_expire_entry", true),
            ("send after idle", "tp_btf/tcp_sendmsg_locked", false),
            ("reply after idle", "tp_btf/sock_recv_length", true),
        ]);
        let expect = check_hooks("tracepoint", &old_tracepoints, &OLD).unwrap();
        assert!(!expect.replies && !expect.idle);
        assert!(check_hooks("auto", &old_tracepoints, &OLD).is_err());
    }
}
