//! `cargo xtask test`: lint, then every test of the default workspace members.

use std::env;

use anyhow::{Result, bail};

use crate::setup::{self, HOST_TOOLCHAIN};
use crate::{cmd, lint};

/// Set for the tests when root: a privileged test that would skip itself fails instead.
const REQUIRE_PRIVILEGED: &str = "KEEPALIVE_REQUIRE_PRIVILEGED";

pub fn run() -> Result<()> {
    setup::run(setup::Report::Quiet)?;
    lint::run()?;

    let root = cmd::is_root();
    let mut tests = cmd::cargo(HOST_TOOLCHAIN)?;
    tests.args(["test", "--all-targets"]);
    if root {
        tests.env(REQUIRE_PRIVILEGED, "1");
    }
    let result = cmd::run(&mut tests)
        .and_then(|()| cmd::run(cmd::cargo(HOST_TOOLCHAIN)?.args(["test", "--doc"])));

    if root {
        result?;
        println!("all tests passed, privileged tests included (running as root)");
        return Ok(());
    }
    println!("privileged tests were NOT run: not root");
    result?;
    if in_ci() {
        bail!("privileged tests were NOT run: not root, and CI requires them: run as root");
    }
    Ok(())
}

fn in_ci() -> bool {
    env::var("CI").is_ok_and(|value| !matches!(value.as_str(), "" | "0" | "false"))
}
