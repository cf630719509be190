//! What `contrib/` ships, checked by the tools that consume it: the Prometheus alerts with
//! `promtool` (Debian's `prometheus`, installed by `cargo xtask setup`), and that every metric
//! they name is one the daemon serves.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use keepalive_observer::{
    correlate::Window,
    metrics::Metrics,
    sink::{HookLine, HookStatus, StartupReport},
};

fn contrib() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib")
}

/// Runs `tool args` in `dir` and fails with its output unless it succeeds.
fn run(tool: &str, args: &[&str], dir: &Path) -> String {
    let output = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|error| {
            panic!("cannot run {tool} ({error}): `cargo xtask setup` installs it")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{tool} {args:?}: {}\n{text}",
        output.status
    );
    text
}

#[test]
fn promtool_checks_the_alerts_and_runs_their_tests() {
    let dir = contrib().join("prometheus");
    let checked = run("promtool", &["check", "rules", "alerts.yml"], &dir);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = run("promtool", &["test", "rules", "alerts.test.yml"], &dir);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn the_alerts_name_only_metrics_the_daemon_serves() {
    let alerts =
        std::fs::read_to_string(contrib().join("prometheus/alerts.yml")).expect("read alerts.yml");
    let mut metrics = Metrics::new(4);
    let window = Window {
        lo_ms: 300_000,
        hi_ms: 360_000,
    };
    let destination = "198.51.100.10:80".parse().expect("an address");
    metrics.window(destination, Some(window));
    metrics.startup(&StartupReport {
        version: "0.1.0".to_owned(),
        kernel: "6.1.0".to_owned(),
        hooks: vec![HookLine {
            signal: "reply after idle".to_owned(),
            hook: "tp_btf/sock_recv_length".to_owned(),
            status: HookStatus::Unavailable {
                why: "no such tracepoint".to_owned(),
            },
        }],
        missing_signals: vec!["reply after idle".to_owned()],
        context: "socket storage".to_owned(),
        learned_state: "nothing learned yet".to_owned(),
    });
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &metrics.registry()).expect("encode");
    let named: Vec<&str> = alerts
        .match_indices("keepalive_observer_")
        .map(|(at, _)| {
            let rest = &alerts[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    assert!(named.len() >= 5, "{named:?}");
    for name in named {
        let served = text
            .lines()
            .any(|line| line.starts_with(name) && line[name.len()..].starts_with([' ', '{']));
        assert!(
            served,
            "alerts.yml names {name}, which the daemon does not serve:\n{text}"
        );
    }
}
