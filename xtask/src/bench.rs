//! `cargo xtask bench`: builds the release daemon and the `keepalive-bench` binary, then runs
//! the bench, which lives in `keepalive-bench`.

use std::ffi::OsString;
use std::iter;
use std::process::{Command, ExitCode};

use anyhow::Result;
use clap::Parser;
use keepalive_bench::{Cli, preflight};

use crate::build::{self, Profile};
use crate::{run, setup};

const PACKAGE: &str = "keepalive-bench";

/// Checks `args` as the bench does (`--help` prints the bench's help), sets up, builds, then
/// runs the bench with them and exits with its status.
pub fn run(args: &[OsString]) -> Result<ExitCode> {
    Cli::parse_from(iter::once(OsString::from("cargo xtask bench")).chain(args.iter().cloned()));
    preflight()?;
    setup::run(setup::Report::Quiet)?;
    build::run(Profile::Release)?;
    // Debug, as xtask was when the bench lived there: the committed figures come from
    // debug-built load generators.
    let bench = build::package(Profile::Debug, PACKAGE)?;
    run::foreground(Command::new(bench).args(args))
}
