//! The exposition, from constructed streams of events and findings.

use super::*;
use crate::{
    correlate::{Confidence, FindingKind, Verdict, Window},
    event::TcpEventKind,
    sink::testdata::{addr, event, finding, report},
};

fn exposition(metrics: &Metrics) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &metrics.registry()).expect("encodes");
    text
}

/// The value of the sample whose line starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.parse().expect("a number"))
}

fn window(lo_s: u64, hi_s: u64) -> Option<Window> {
    Some(Window {
        lo_ms: lo_s * 1000,
        hi_ms: hi_s * 1000,
    })
}

fn local_close() -> Finding {
    Finding {
        verdict: Verdict::LocalClose,
        kind: FindingKind::LingerZero,
        confidence: Confidence::Confirmed,
        idle_ms: Some(1_500),
        timeout_window_ms: None,
        ..finding()
    }
}

fn silent() -> Finding {
    Finding {
        kind: FindingKind::SilentTimeout,
        confidence: Confidence::Possible,
        idle_ms: Some(400_000),
        ..finding()
    }
}

#[test]
fn a_stream_shows_up_in_the_exposition() {
    let mut metrics = Metrics::new(DEFAULT_DESTINATIONS);
    metrics.startup(&report());
    let remote = addr("[fd6b:a1::1]:80");
    let survived = TcpEvent {
        kind: TcpEventKind::ReplyAfterIdle,
        remote,
        ..event()
    };
    metrics.event(&event(), None);
    metrics.event(&event(), None);
    metrics.event(&survived, window(1790, 1805));
    // finding(): middlebox_drop/idle_expiry_rst, likely, 1805 s idle, to [fd6b:a1::1]:80.
    metrics.finding(&finding(), window(1790, 1805));
    metrics.finding(&local_close(), None);
    metrics.finding(&silent(), window(1790, 1805));
    let loss = LossReport {
        kernel_lost: 5,
        decode_errors: 1,
        syn_refusals: 7,
        filtered: 40,
        output_dropped: [("journald", 12)].into(),
        ..LossReport::default()
    };
    metrics.totals(&loss);
    metrics.totals(&loss);
    metrics.ring_fill(RingFill {
        used_bytes: 4096,
        peak_bytes: 65_536,
        size_bytes: 1 << 23,
    });
    let text = exposition(&metrics);

    let value = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series}\n{text}"));
    assert_eq!(
        value(
            "keepalive_observer_resets_total{verdict=\"middlebox_drop\",kind=\"idle_expiry_rst\",direction=\"received\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            "keepalive_observer_resets_total{verdict=\"local_close\",kind=\"linger_zero\",direction=\"sent\"}"
        ),
        1.0
    );
    // A silent death is a finding, not a reset.
    assert!(!text.contains("resets_total{verdict=\"middlebox_drop\",kind=\"silent_timeout\""));
    assert_eq!(
        value(
            "keepalive_observer_findings_total{verdict=\"middlebox_drop\",kind=\"silent_timeout\",confidence=\"possible\"}"
        ),
        1.0
    );
    // 1805 s idle: above the 1800 s bucket, within 3600 s.
    let bucket = |le: &str| {
        value(&format!(
            "keepalive_observer_reset_idle_seconds_bucket{{le=\"{le}\",verdict=\"middlebox_drop\"}}"
        ))
    };
    assert_eq!(bucket("1800.0"), 0.0);
    assert_eq!(bucket("3600.0"), 1.0);
    assert_eq!(
        value("keepalive_observer_reset_idle_seconds_sum{verdict=\"middlebox_drop\"}"),
        1805.0
    );
    let le: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("reset_idle_seconds_bucket{") && l.contains("local_close"))
        .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(
        le,
        [
            "60.0", "240.0", "300.0", "350.0", "600.0", "900.0", "1200.0", "1800.0", "3600.0",
            "7200.0", "+Inf"
        ]
    );
    assert_eq!(
        value(
            "keepalive_observer_learned_idle_timeout_seconds{destination=\"[fd6b:a1::1]:80\",bound=\"lower\"}"
        ),
        1790.0
    );
    assert_eq!(
        value(
            "keepalive_observer_learned_idle_timeout_seconds{destination=\"[fd6b:a1::1]:80\",bound=\"upper\"}"
        ),
        1805.0
    );
    assert_eq!(
        value("keepalive_observer_events_total{kind=\"reset_sent\"}"),
        2.0
    );
    assert_eq!(
        value("keepalive_observer_events_total{kind=\"reply_after_idle\"}"),
        1.0
    );
    assert_eq!(value("keepalive_observer_events_lost_total"), 5.0);
    assert_eq!(value("keepalive_observer_events_undecodable_total"), 1.0);
    assert_eq!(value("keepalive_observer_syn_refusals_total"), 7.0);
    assert_eq!(value("keepalive_observer_context_failures_total"), 0.0);
    assert_eq!(value("keepalive_observer_events_filtered_total"), 40.0);
    assert_eq!(
        value("keepalive_observer_output_dropped_total{output=\"journald\"}"),
        12.0
    );
    assert_eq!(value("keepalive_observer_ring_buffer_used_bytes"), 4096.0);
    assert_eq!(
        value("keepalive_observer_ring_buffer_peak_used_bytes"),
        65_536.0
    );
    assert_eq!(
        value("keepalive_observer_ring_buffer_size_bytes"),
        8_388_608.0
    );
    assert_eq!(value("keepalive_observer_hooks_attached"), 1.0);
    assert_eq!(
        value("keepalive_observer_signal_missing{signal=\"keepalive timer\"}"),
        1.0
    );
    assert_eq!(
        value("keepalive_observer_signal_missing{signal=\"RST sent\"}"),
        0.0
    );
    assert_eq!(
        value(&format!(
            "keepalive_observer_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn names_have_one_prefix_and_labels_no_connection_identity() {
    let mut metrics = Metrics::new(DEFAULT_DESTINATIONS);
    metrics.startup(&report());
    metrics.event(&event(), None);
    metrics.finding(&finding(), window(1790, 1805));
    let text = exposition(&metrics);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("keepalive_observer_"), "{line}");
    }
    for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
        let mut words = line.split(' ').skip(2);
        let (name, kind) = (words.next().unwrap(), words.next().unwrap());
        if kind == "counter" {
            assert!(
                text.contains(&format!("\n{name}_total")),
                "{name}: no _total"
            );
        }
    }
    // The pid, the command, this host's port and address and the socket cookie are in the
    // finding and the event, and must not reach a label.
    for identity in [
        "4321",
        "java",
        "1234",
        "python3",
        "41234",
        "fd6b:a1::2",
        "8193",
    ] {
        assert!(!text.contains(identity), "{identity} leaked:\n{text}");
    }
}

#[test]
fn windows_beyond_the_cap_fold_into_one_series() {
    let mut metrics = Metrics::new(2);
    let at = |n: u8| addr(&format!("198.51.100.{n}:443"));
    let finding_to = |n: u8| Finding {
        remote: at(n),
        ..finding()
    };
    metrics.finding(&finding_to(1), window(300, 360));
    metrics.finding(&finding_to(2), window(100, 900));
    // 1 is used again, so 2 is the least recently used when 3 arrives.
    metrics.finding(&finding_to(1), window(310, 360));
    metrics.finding(&finding_to(3), window(3000, 3700));
    let text = exposition(&metrics);
    let window_of = |destination: &str, bound: &str| {
        sample(
            &text,
            &format!(
                "keepalive_observer_learned_idle_timeout_seconds{{destination=\"{destination}\",bound=\"{bound}\"}}"
            ),
        )
    };
    assert_eq!(window_of("198.51.100.1:443", "lower"), Some(310.0));
    assert_eq!(window_of("198.51.100.3:443", "upper"), Some(3700.0));
    assert_eq!(window_of("198.51.100.2:443", "lower"), None);
    assert_eq!(window_of(OTHER, "lower"), Some(100.0));
    assert_eq!(window_of(OTHER, "upper"), Some(900.0));
    assert_eq!(
        sample(
            &text,
            "keepalive_observer_learned_idle_timeout_folded_destinations"
        ),
        Some(1.0)
    );
    let series = text
        .lines()
        .filter(|l| l.starts_with("keepalive_observer_learned_idle_timeout_seconds{"))
        .count();
    assert_eq!(series, 6, "two destinations and other, two bounds each");

    // Folding keeps the tightest bounds: 4 pushes out 1, whose (310 s, 360 s] lowers the
    // upper bound only.
    metrics.finding(&finding_to(4), window(50, 2000));
    let text = exposition(&metrics);
    let other = |bound: &str| {
        sample(
            &text,
            &format!(
                "keepalive_observer_learned_idle_timeout_seconds{{destination=\"other\",bound=\"{bound}\"}}"
            ),
        )
    };
    assert_eq!(other("lower"), Some(100.0));
    assert_eq!(other("upper"), Some(360.0));
}

#[test]
fn a_window_reset_by_contradiction_disappears() {
    let mut metrics = Metrics::new(DEFAULT_DESTINATIONS);
    let remote = finding().remote;
    metrics.finding(&finding(), window(1790, 1805));
    assert!(exposition(&metrics).contains("bound=\"lower\"} 1790.0"));
    let survived_longer = TcpEvent {
        kind: TcpEventKind::ReplyAfterIdle,
        remote,
        ..event()
    };
    metrics.event(&survived_longer, None);
    assert!(!exposition(&metrics).contains("learned_idle_timeout_seconds{"));
}

#[test]
fn the_series_alerts_watch_exist_at_zero_from_the_start() {
    let text = exposition(&Metrics::new(DEFAULT_DESTINATIONS));
    for series in [
        "keepalive_observer_resets_total{verdict=\"middlebox_drop\",kind=\"forged_rst\",direction=\"received\"}",
        "keepalive_observer_resets_total{verdict=\"middlebox_drop\",kind=\"idle_expiry_rst\",direction=\"received\"}",
        "keepalive_observer_findings_total{verdict=\"middlebox_drop\",kind=\"silent_timeout\",confidence=\"possible\"}",
        "keepalive_observer_events_lost_total",
    ] {
        assert_eq!(sample(&text, series), Some(0.0), "{series}\n{text}");
    }
}
