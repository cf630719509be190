//! `cargo xtask test`: lint, then every test of the default workspace members, then (as root)
//! `cargo xtask lab` with its summary checked and `cargo xtask vm-test --kernel all`.

use std::env;

use anyhow::{Result, bail};

use crate::setup;
use crate::{cmd, lab, lint, vm_test};
use keepalive_lab::workspace::host_toolchain;

pub fn run() -> Result<()> {
    setup::run(setup::Report::Quiet)?;
    lint::run()?;

    let root = keepalive_lab::is_root();
    // Plain `cargo test`: libraries, binaries, integration tests, examples and doctests in one
    // build (benches are compiled by the lint step). A separate `--doc` run would resolve host
    // features differently and rebuild the eBPF programs.
    // --no-fail-fast: one failing test binary must not hide the results of the others.
    // The privileged tests are `#[ignore]`d (a plain `cargo test` reports them as ignored);
    // as root they run too.
    let mut tests = cmd::cargo(host_toolchain())?;
    tests.args(["test", "--no-fail-fast"]);
    // Each fuzz target (keepalive-user/tests/fuzz.rs) runs this long; a plain `cargo test`
    // gives it 5 s.
    tests.env("KAO_FUZZ_SECONDS", "30");
    if root {
        tests.args(["--", "--include-ignored"]);
    }
    let result = cmd::run(&mut tests);

    if root {
        result?;
        lab::ci_check()?;
        vm_test::run(vm_test::Kernels::All, vm_test::ALL_HOOKS, false)?;
        println!(
            "all tests passed, privileged tests and the kernel matrix included (running as root)"
        );
        return Ok(());
    }
    println!("privileged tests were NOT run (reported as ignored): not root");
    result?;
    if in_ci() {
        bail!("privileged tests were NOT run: not root, and CI requires them: run as root");
    }
    Ok(())
}

fn in_ci() -> bool {
    env::var("CI").is_ok_and(|value| !matches!(value.as_str(), "" | "0" | "false"))
}
