//! `cargo xtask lab`: builds the observer and the `keepalive-lab` binary, then runs the lab;
//! the scenario itself lives in `keepalive-lab` (module `incident`).

use std::ffi::OsString;
use std::fs;
use std::iter;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::Parser;
use keepalive_lab::incident::{LabArgs, preflight, summary};

use crate::build::{self, Profile};
use crate::{cmd, run, setup};

const PACKAGE: &str = "keepalive-lab";

/// Checks `args` as the lab does (`--help` prints the lab's help), sets up, builds, then runs
/// the lab with them and exits with its status.
pub fn run(args: &[OsString]) -> Result<ExitCode> {
    let parsed = LabArgs::parse_from(
        iter::once(OsString::from("cargo xtask lab")).chain(args.iter().cloned()),
    );
    preflight(&parsed)?;
    setup::run(setup::Report::Quiet)?;
    let profile = Profile::from_release(!parsed.debug);
    build::run(profile)?;
    let lab = build::package(profile, PACKAGE)?;
    run::foreground(Command::new(lab).args(args))
}

/// The privileged CI step of `cargo xtask test`: runs the lab with the debug observer (already
/// built by the tests) and checks its summary.
pub fn ci_check() -> Result<()> {
    let path = build::binary(Profile::Debug).with_file_name("lab-summary.json");
    if path.exists() {
        fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    let xtask = std::env::current_exe().context("cannot find the xtask binary")?;
    cmd::run(
        Command::new(xtask)
            .args(["lab", "--debug", "--summary-json"])
            .arg(&path),
    )?;
    let summary = summary::read(&path)?;
    let mut failed = summary::failed_checks(&summary);
    failed.extend(summary::missing_phases(&summary));
    if !failed.is_empty() {
        bail!("lab summary {}: {}", path.display(), failed.join("; "));
    }
    println!(
        "lab: incident reproduced, attributed and fixed ({})",
        path.display()
    );
    Ok(())
}
