//! `keepalive-lab`: the lab of `cargo xtask lab`, which builds the observer and this binary,
//! then runs it with its own arguments.

use std::process::ExitCode;

use clap::Parser;
use keepalive_lab::incident::{self, LabArgs};

fn main() -> ExitCode {
    // Printed here rather than returned: anyhow would add a backtrace when RUST_BACKTRACE is set.
    incident::run(&LabArgs::parse()).unwrap_or_else(|err| {
        eprintln!("error: {err:#}");
        ExitCode::FAILURE
    })
}
