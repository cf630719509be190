//! `keepalive-observer windows`: the idle timeouts learned per destination, from the state
//! file the daemon last saved, most recently seen first.

use std::{
    fmt::Write as _,
    fs,
    io::{self, Write as _},
    path::Path,
};

use anyhow::Context as _;
use keepalive_observer::{
    correlate::{KnownTimeout, Window, known_defaults_in},
    sink::format_rfc3339,
};
use keepalive_schema::state::{self, Destination, FILE_NAME, Netns, State};
use serde::Serialize;

use crate::cli::Format;

/// Prints what `state_dir`'s state file holds.
pub fn run(state_dir: &Path, format: Format) -> anyhow::Result<()> {
    let path = state_dir.join(FILE_NAME);
    let state = state::load(&path)?;
    // Namespace cookies of an earlier boot name nothing now: the daemon does not restore them.
    let this_boot = fs::read_to_string(BOOT_ID).unwrap_or_default();
    let earlier_boot = |state: &State| state.boot_id != this_boot.trim();
    let text = match (&state, format) {
        (Some(state), Format::Text) => text(state, earlier_boot(state)),
        (Some(state), Format::Json) => json_lines(state, earlier_boot(state))?,
        (None, Format::Text) => format!("nothing learned yet (no {})\n", path.display()),
        (None, Format::Json) => String::new(),
    };
    io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("writing to standard output")
}

/// Where the running kernel's boot id is.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// One destination as `--format json` prints it.
#[derive(Serialize)]
struct WindowLine {
    destination: String,
    netns: Netns,
    /// A namespace's cookie from an earlier boot: not restored at start.
    earlier_boot: bool,
    /// `[lo, hi]`: the timeout is above `lo` and at most `hi`.
    window_ms: Option<[u64; 2]>,
    survived_ms: Option<u64>,
    died_ms: Option<u64>,
    survivals: u64,
    deaths: u64,
    last_seen: String,
    known_defaults: Vec<KnownDefault>,
}

#[derive(Serialize)]
struct KnownDefault {
    name: &'static str,
    secs: u64,
}

fn newest_first(state: &State) -> impl Iterator<Item = &Destination> {
    state.destinations.iter().rev()
}

fn known(destination: &Destination) -> Vec<KnownTimeout> {
    destination
        .window_ms()
        .map(|(lo_ms, hi_ms)| known_defaults_in(Window { lo_ms, hi_ms }))
        .unwrap_or_default()
}

fn last_seen(destination: &Destination) -> String {
    format_rfc3339(i128::from(destination.last_seen_unix_ms) * 1_000_000)
}

fn json_lines(state: &State, earlier_boot: bool) -> anyhow::Result<String> {
    let mut out = String::new();
    for destination in newest_first(state) {
        let line = WindowLine {
            destination: destination.remote.to_string(),
            netns: destination.netns,
            earlier_boot: earlier_boot && destination.netns != Netns::Host,
            window_ms: destination.window_ms().map(|(lo, hi)| [lo, hi]),
            survived_ms: destination.survived_ms,
            died_ms: destination.died_ms,
            survivals: destination.survivals,
            deaths: destination.deaths,
            last_seen: last_seen(destination),
            known_defaults: known(destination)
                .into_iter()
                .map(|k| KnownDefault {
                    name: k.name,
                    secs: k.secs,
                })
                .collect(),
        };
        out.push_str(&serde_json::to_string(&line)?);
        out.push('\n');
    }
    Ok(out)
}

fn seconds(ms: u64) -> String {
    format!("{:.2} s", ms as f64 / 1000.0)
}

fn text(state: &State, earlier_boot: bool) -> String {
    let header = [
        "DESTINATION",
        "NETNS",
        "IDLE TIMEOUT",
        "SURVIVALS",
        "DEATHS",
        "LAST SEEN",
        "KNOWN DEFAULT",
    ]
    .map(str::to_owned);
    let rows: Vec<[String; 7]> = newest_first(state)
        .map(|destination| {
            let window = match (destination.window_ms(), destination) {
                (Some((lo, hi)), _) => format!("({}, {}]", seconds(lo), seconds(hi)),
                (
                    None,
                    Destination {
                        died_ms: Some(hi), ..
                    },
                ) => format!("at most {}", seconds(*hi)),
                (
                    None,
                    Destination {
                        survived_ms: Some(lo),
                        ..
                    },
                ) => format!("above {}", seconds(*lo)),
                (None, _) => "-".to_owned(),
            };
            let known = known(destination)
                .iter()
                .map(|k| format!("{} ({} s)", k.name, k.secs))
                .collect::<Vec<_>>();
            [
                destination.remote.to_string(),
                match destination.netns {
                    Netns::Host => "host".to_owned(),
                    Netns::Cookie(cookie) if earlier_boot => {
                        format!("cookie {cookie} (earlier boot)")
                    }
                    Netns::Cookie(cookie) => format!("cookie {cookie}"),
                },
                window,
                destination.survivals.to_string(),
                destination.deaths.to_string(),
                last_seen(destination),
                if known.is_empty() {
                    "-".to_owned()
                } else {
                    known.join(", ")
                },
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|column| {
            std::iter::once(&header)
                .chain(&rows)
                .map(|row| row[column].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            // `write!` to a String cannot fail.
            let _ = write!(line, "{cell:width$}  ");
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    if rows.is_empty() {
        text.push_str("nothing learned yet\n");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        let mut state = State::new("boot".to_owned(), 0);
        state.destinations = vec![
            Destination {
                netns: Netns::Cookie(4099),
                remote: "[fd6b:a1::2]:443".parse().unwrap(),
                survived_ms: Some(9000),
                died_ms: None,
                survivals: 1,
                deaths: 0,
                last_seen_unix_ms: 1_764_000_000_000,
            },
            Destination {
                netns: Netns::Host,
                remote: "198.51.100.100:80".parse().unwrap(),
                survived_ms: Some(1_790_000),
                died_ms: Some(1_805_000),
                survivals: 3,
                deaths: 2,
                last_seen_unix_ms: 1_764_000_100_000,
            },
        ];
        state
    }

    #[test]
    fn text_lists_the_newest_first_with_the_known_default() {
        assert_eq!(
            text(&state(), false),
            "DESTINATION        NETNS        IDLE TIMEOUT            SURVIVALS  DEATHS  \
             LAST SEEN                 KNOWN DEFAULT\n\
             198.51.100.100:80  host         (1790.00 s, 1805.00 s]  3          2       \
             2025-11-24T16:01:40.000Z  Juniper SRX (1800 s)\n\
             [fd6b:a1::2]:443   cookie 4099  above 9.00 s            1          0       \
             2025-11-24T16:00:00.000Z  -\n"
        );
        assert!(text(&State::new("boot".to_owned(), 0), false).ends_with("nothing learned yet\n"));
        assert!(text(&state(), true).contains(" cookie 4099 (earlier boot) "));
        assert!(text(&state(), true).contains(" host "));
    }

    #[test]
    fn json_has_one_line_per_destination() {
        let lines = json_lines(&state(), true).unwrap();
        let lines: Vec<serde_json::Value> = lines
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            serde_json::json!({
                "destination": "198.51.100.100:80",
                "netns": "host",
                "earlier_boot": false,
                "window_ms": [1_790_000, 1_805_000],
                "survived_ms": 1_790_000,
                "died_ms": 1_805_000,
                "survivals": 3,
                "deaths": 2,
                "last_seen": "2025-11-24T16:01:40.000Z",
                "known_defaults": [{"name": "Juniper SRX", "secs": 1800}],
            })
        );
        assert_eq!(lines[1]["netns"], serde_json::json!({"cookie": 4099}));
        assert_eq!(lines[1]["earlier_boot"], true);
        assert_eq!(lines[1]["window_ms"], serde_json::Value::Null);
    }
}
