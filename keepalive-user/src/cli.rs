//! Command-line interface.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, Parser, Subcommand, ValueEnum, builder::TypedValueParser as _};
use keepalive_observer::{
    event::Comm,
    filter::{Cidr, Filter, parse_netns, parse_process},
    kernel::{btf::VMLINUX_BTF, kallsyms::KALLSYMS, observer::cgroup2_dir},
    sockets::{RemoteFilter, windows::GivenWindow},
};
use keepalive_schema::{seconds::parse_seconds, socket::Risk};

/// Attributes every TCP reset on this host to a local close, a peer RST or a silent middlebox
/// drop, with the idle time, keepalive settings and what to change.
#[derive(Debug, Parser)]
#[command(name = "keepalive-observer", version, about, long_about = None)]
pub struct Cli {
    /// What to do; without a subcommand the daemon observes this host.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of the live daemon.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a recording (from `--record`) through the correlator again and print its findings.
    Replay {
        /// The recording.
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Print the recorded events too, not only the findings.
        #[arg(long)]
        events: bool,
    },
    /// Print the idle timeouts learned per destination, as the daemon last saved them.
    Windows {
        /// The daemon's state directory.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// List the host's TCP connections (every network namespace) with the risk that each is
    /// reset on its next use: idle times, keepalive settings and timer, owning process and the
    /// destination's window.
    Sockets(SocketsArgs),
}

/// Options of `sockets`.
#[derive(Debug, Args)]
pub struct SocketsArgs {
    /// Only this network namespace: a name under /run/netns, a path such as
    /// /proc/PID/ns/net, or an inode number.
    #[arg(long, value_name = "NETNS")]
    pub netns: Option<String>,
    /// The idle timeout of the path to DEST (`ip:port` or `ip`), in seconds, where nothing
    /// is learned yet; repeatable.
    #[arg(long = "window", value_name = "DEST=SECONDS")]
    pub windows: Vec<GivenWindow>,
    /// The daemon's state directory, for the windows it learned.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Only connections to this remote (`ip` or `ip:port`).
    #[arg(long, value_name = "ADDR")]
    pub remote: Option<RemoteFilter>,
    /// Only connections with this local or remote port.
    #[arg(long)]
    pub port: Option<u16>,
    /// Only connections of this process (command name or pid).
    #[arg(long, value_name = "NAME|PID")]
    pub process: Option<String>,
    /// Only connections at this risk; repeatable.
    #[arg(long, value_enum)]
    pub risk: Vec<RiskArg>,
    /// Output format: a table, or JSON lines.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// `--risk` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum RiskArg {
    /// See `Risk::WillReset`.
    WillReset,
    /// See `Risk::AtRisk`.
    AtRisk,
    /// See `Risk::OrphanSuspect`.
    OrphanSuspect,
    /// See `Risk::Ok`.
    Ok,
}

impl From<RiskArg> for Risk {
    fn from(risk: RiskArg) -> Self {
        match risk {
            RiskArg::WillReset => Self::WillReset,
            RiskArg::AtRisk => Self::AtRisk,
            RiskArg::OrphanSuspect => Self::OrphanSuspect,
            RiskArg::Ok => Self::Ok,
        }
    }
}

/// Where the daemon keeps what it learned, by default (the unit's `StateDirectory=`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/keepalive-observer";

/// Options of the live daemon.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Send findings, the start-up report and totals to journald (`auto`: when its socket
    /// exists).
    #[arg(long, value_enum, default_value_t = Journald::Auto)]
    pub journald: Journald,
    /// Also send every kernel record to journald, not only findings.
    #[arg(long)]
    pub journald_events: bool,
    /// Report a send after at least this many seconds without traffic (feeds the learned idle
    /// timeout); 0 turns the signal off.
    #[arg(long, value_name = "SECONDS", default_value = "1", value_parser = parse_seconds,
          allow_negative_numbers = true)]
    pub idle_floor: Duration,
    /// Without a learned timeout, an RST after at least this many seconds idle is blamed on
    /// an idle-expiring middlebox.
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = parse_seconds,
          allow_negative_numbers = true)]
    pub idle_expiry_floor: Duration,
    /// Print findings only, not every kernel event.
    #[arg(long)]
    pub findings_only: bool,
    /// Also write every raw event to this file, for `replay`.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Rotate the recording at this size (bytes, or with K, M or G): FILE becomes FILE.1,
    /// replacing the one before, so the two take at most twice this.
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    pub record_limit: u64,
    /// Attach the TTL program to this cgroup v2 directory instead of the hierarchy's root.
    #[arg(long, value_name = "DIR", value_parser = parse_cgroup)]
    pub cgroup: Option<PathBuf>,
    /// Read the kernel's BTF from this file (tests simulate a kernel without BTF with it).
    #[arg(long, value_name = "FILE", default_value = VMLINUX_BTF, hide = true)]
    pub btf: PathBuf,
    /// Read the kernel's symbols from this file (tests simulate an unreadable one with it).
    #[arg(long, value_name = "FILE", default_value = KALLSYMS, hide = true)]
    pub kallsyms: PathBuf,
    /// Which kernel hooks to use: `auto` takes the best the kernel offers for each signal;
    /// `tracepoint`, `fentry` or `kprobe` use only that kind wherever a signal has one.
    #[arg(long, value_enum, default_value_t = Hooks::Auto)]
    pub hooks: Hooks,
    /// Keep learned windows and peer TTLs in `state.json` here, across restarts (one daemon
    /// per directory).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Save the learned state this often when it changed (seconds), and at exit.
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = parse_positive_seconds,
          allow_negative_numbers = true)]
    pub state_interval: Duration,
    /// Serve Prometheus metrics (OpenMetrics text) at http://ADDR/metrics, e.g.
    /// 127.0.0.1:9977; off unless given.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// With --metrics: audit the host's sockets this often (seconds) for the gauges of
    /// connections by risk (as `sockets` does; the first audit loads BTF and an iterator).
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = parse_positive_seconds)]
    pub sockets_interval: Duration,
    /// Destinations whose learned idle-timeout window gets a metric series of its own (the
    /// most recently used); the others are folded into destination="other".
    #[arg(long, value_name = "N", default_value_t = keepalive_observer::metrics::DEFAULT_DESTINATIONS,
          value_parser = clap::value_parser!(u16).range(1..).map(usize::from))]
    pub metrics_destinations: usize,
    /// Report only connections to a remote address in this network (`198.51.100.0/24`,
    /// `fd6b:a1::/64`, or an address); repeat for more. Applied in the kernel.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub remote: Vec<Cidr>,
    /// Report only connections with this local or remote port; repeat for more. Applied in
    /// the kernel.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Vec<u16>,
    /// Report only connections in this network namespace: its inode number (as `netns=`
    /// shows it) or a file that is one (`/run/netns/NAME`, `/proc/PID/ns/net`); repeat for
    /// more. Applied in the kernel.
    #[arg(long, value_name = "NETNS", value_parser = parse_netns)]
    pub netns: Vec<u32>,
    /// Report only connections owned by a process with this command name (as `comm=` shows
    /// it, at most 15 bytes); repeat for more.
    #[arg(long, value_name = "NAME", value_parser = parse_process)]
    pub process: Vec<String>,
    /// Print lost-event totals this often (seconds; 0: only at exit).
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = parse_seconds,
          allow_negative_numbers = true)]
    pub stats_interval: Duration,
}

/// A size in bytes, with an optional binary suffix: `4096`, `64K`, `256M`, `1G`.
fn parse_size(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.char_indices().last() {
        Some((at, 'K' | 'k')) => (&text[..at], 1 << 10),
        Some((at, 'M' | 'm')) => (&text[..at], 1 << 20),
        Some((at, 'G' | 'g')) => (&text[..at], 1 << 30),
        _ => (text, 1),
    };
    let size = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("`{text}` is not a size (bytes, or a number with K, M or G)"))?;
    if size < MIN_RECORD_LIMIT {
        return Err(format!(
            "`{text}` is too small: a recording's header alone takes a few KiB; at least \
             {}K",
            MIN_RECORD_LIMIT >> 10
        ));
    }
    Ok(size)
}

/// The smallest `--record-limit`.
const MIN_RECORD_LIMIT: u64 = 64 << 10;

fn parse_cidr(text: &str) -> Result<Cidr, String> {
    text.parse()
}

fn parse_cgroup(text: &str) -> Result<PathBuf, String> {
    cgroup2_dir(Path::new(text)).map_err(|error| error.to_string())
}

impl RunArgs {
    /// The filters of `--remote`, `--port`, `--netns` and `--process`.
    pub fn filter(&self) -> Filter {
        Filter {
            remotes: self.remote.clone(),
            ports: self.port.clone(),
            netns: self.netns.clone(),
            processes: self
                .process
                .iter()
                .map(|name| Comm::from(name.as_str()))
                .collect(),
        }
    }
}

fn parse_positive_seconds(text: &str) -> Result<Duration, String> {
    let seconds = parse_seconds(text)?;
    if seconds.is_zero() {
        return Err("must be more than 0".to_owned());
    }
    Ok(seconds)
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One readable line per record.
    Text,
    /// One JSON object per line.
    Json,
}

/// Which kernel hooks to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Hooks {
    /// The best hook the kernel offers for each signal (tracepoints where they carry
    /// everything, then fentry, then kprobes).
    Auto,
    /// BTF tracepoints only, where a signal has one.
    Tracepoint,
    /// fentry only, where a signal has one.
    Fentry,
    /// kprobes only, where a signal has one.
    Kprobe,
}

/// Whether to log to journald.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Journald {
    /// When /run/systemd/journal/socket exists.
    Auto,
    /// Always; fail when the journal is not running.
    On,
    /// Never.
    Off,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_subcommands_parse() {
        let cli = Cli::try_parse_from(["keepalive-observer", "--format", "json"]).unwrap();
        assert_eq!(cli.run.format, Format::Json);
        assert_eq!(cli.run.journald, Journald::Auto);
        assert!(cli.command.is_none());
        let cli = Cli::try_parse_from(["keepalive-observer", "replay", "x.jsonl"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Replay { .. })));
        assert!(Cli::try_parse_from(["keepalive-observer", "--format", "xml"]).is_err());
        assert_eq!(cli_hooks(&[]), Hooks::Auto);
        let cli = Cli::try_parse_from([
            "keepalive-observer",
            "sockets",
            "--window",
            "198.51.100.100:80=5",
            "--risk",
            "will_reset",
        ])
        .unwrap();
        let Some(Command::Sockets(args)) = cli.command else {
            panic!("not sockets")
        };
        assert_eq!(args.windows.len(), 1);
        assert_eq!(args.risk, [RiskArg::WillReset]);
        let error = Cli::try_parse_from(["keepalive-observer", "sockets", "--window", "x=5"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("`x` in `x=5` is neither"), "{error}");
        assert_eq!(cli_hooks(&["--hooks", "kprobe"]), Hooks::Kprobe);
        assert!(Cli::try_parse_from(["keepalive-observer", "--hooks", "uprobe"]).is_err());
        assert!(Cli::try_parse_from(["keepalive-observer", "--state-interval", "0"]).is_err());
        assert_eq!(cli_run(&[]).record_limit, 256 << 20);
        let filtered = cli_run(&[
            "--remote",
            "198.51.100.0/24",
            "--remote",
            "fd6b:a1::/64",
            "--port",
            "443",
            "--netns",
            "4026531840",
            "--process",
            "java",
        ])
        .filter();
        assert_eq!(filtered.remotes.len(), 2);
        assert_eq!(
            (filtered.ports, filtered.netns, filtered.processes),
            (vec![443], vec![4_026_531_840], vec![Comm::from("java")])
        );
        for (flag, bad) in [
            ("--remote", "198.51.100.0/40"),
            ("--port", "0"),
            ("--port", "70000"),
            ("--netns", "/nonexistent"),
            ("--process", "a-name-longer-than-comm"),
        ] {
            let error = Cli::try_parse_from(["keepalive-observer", flag, bad])
                .expect_err(bad)
                .to_string();
            assert!(error.contains(flag), "{flag} {bad}: {error}");
        }
        assert_eq!(cli_run(&["--record-limit", "64K"]).record_limit, 64 << 10);
        assert_eq!(cli_run(&["--record-limit", "2g"]).record_limit, 2 << 30);
        for bad in ["1K", "12Q", "M", "99999999999999G"] {
            let error = Cli::try_parse_from(["keepalive-observer", "--record-limit", bad])
                .expect_err(bad)
                .to_string();
            assert!(error.contains("--record-limit"), "{bad}: {error}");
        }
        let cli = Cli::try_parse_from(["keepalive-observer", "windows", "--format", "json"]);
        assert!(matches!(
            cli.unwrap().command,
            Some(Command::Windows { format: Format::Json, ref state_dir }) if state_dir.as_os_str() == DEFAULT_STATE_DIR
        ));
    }

    fn cli_hooks(args: &[&str]) -> Hooks {
        cli_run(args).hooks
    }

    fn cli_run(args: &[&str]) -> RunArgs {
        let argv = std::iter::once("keepalive-observer").chain(args.iter().copied());
        Cli::try_parse_from(argv).unwrap().run
    }
}
