//! Developer tasks for keepalive-observer. Built with the machine's default stable toolchain;
//! installs and then calls the pinned toolchains by name.

mod bench;
mod build;
mod cmd;
mod install;
mod lab;
mod lint;
mod run;
mod setup;
mod test;
mod vm_test;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Developer tasks for keepalive-observer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing: apt packages, pinned toolchains, bpf-linker; check the kernel.
    Setup,
    /// Set up, then build the daemon (and with it the eBPF programs).
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Set up, build and run the daemon as root (through sudo when not root).
    Run {
        /// Build and run the debug profile instead of release.
        #[arg(long)]
        debug: bool,
        /// Arguments for keepalive-observer, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, build the release daemon and install it with its systemd unit (root for the
    /// default prefix).
    Install {
        /// Installs PREFIX/bin/keepalive-observer and
        /// PREFIX/lib/systemd/system/keepalive-observer.service.
        #[arg(long, default_value = "/usr/local")]
        prefix: std::path::PathBuf,
    },
    /// Check formatting and run clippy on the host crates and the eBPF crate.
    Lint,
    /// Set up, lint, then run every test, privileged ones included when root.
    Test,
    /// Boot Debian's cloud kernels under qemu and run the daemon there with every hook variant
    /// (fentry and kprobes included), checking real resets.
    VmTest {
        /// Which kernel series to boot.
        #[arg(long, value_enum, default_value = "all")]
        kernel: vm_test::Kernels,
        /// Hook choices to run the daemon with, comma-separated.
        #[arg(long, default_value = vm_test::ALL_HOOKS)]
        hooks: String,
        /// Keep each run's recording as a golden stream in keepalive-schema/golden/
        /// (`vm-<kernel>-<hooks>.recording.jsonl`), with the findings the host's daemon replays
        /// from it beside it.
        #[arg(long)]
        golden: bool,
    },
    /// Measure overhead and throughput on loopback, with and without observers (root).
    #[command(disable_help_flag = true)]
    Bench {
        /// Options of the bench (`cargo xtask bench --help` lists them).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Reproduce the "Connection reset behind a VIP" incident in network namespaces, watch the
    /// observer explain it, apply its advice and watch the resets go away (root).
    #[command(disable_help_flag = true)]
    Lab {
        /// Options of the lab (`cargo xtask lab --help` lists them).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    // Printed here rather than returned: anyhow would add a backtrace when RUST_BACKTRACE is set.
    task(Cli::parse().command).unwrap_or_else(|err| {
        eprintln!("error: {err:#}");
        ExitCode::FAILURE
    })
}

fn task(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Setup => setup::run(setup::Report::Verbose)?,
        Command::Build { release } => {
            setup::run(setup::Report::Quiet)?;
            build::run(build::Profile::from_release(release))?;
        }
        Command::Run { debug, args } => {
            return run::run(build::Profile::from_release(!debug), &args);
        }
        Command::Install { prefix } => install::run(&prefix)?,
        Command::Lint => {
            setup::run(setup::Report::Quiet)?;
            lint::run()?;
        }
        Command::Test => test::run()?,
        Command::VmTest {
            kernel,
            hooks,
            golden,
        } => vm_test::run(kernel, &hooks, golden)?,
        Command::Bench { args } => return bench::run(&args),
        Command::Lab { args } => return lab::run(&args),
    }
    Ok(ExitCode::SUCCESS)
}
