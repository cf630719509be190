//! `keepalive-bench`: the bench of `cargo xtask bench`, which builds the daemon and this binary,
//! then runs it with its own arguments.

use std::process::ExitCode;

use clap::Parser;
use keepalive_bench::{Cli, Helper};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.helper {
        Some(Helper::Hold(args)) => keepalive_bench::hold(args),
        None => keepalive_bench::run(&cli.settings),
    };
    // Printed here rather than returned: anyhow would add a backtrace when RUST_BACKTRACE is set.
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
