//! `cargo xtask lint`: formatting and clippy, warnings denied, for host and eBPF crates.

use anyhow::Result;

use crate::cmd;
use crate::setup::{BPF_TOOLCHAIN, HOST_TOOLCHAIN};

pub fn run() -> Result<()> {
    cmd::run(cmd::cargo(HOST_TOOLCHAIN)?.args(["fmt", "--all", "--check"]))?;
    // The workspace's default members: every crate but the eBPF one.
    cmd::run(cmd::cargo(HOST_TOOLCHAIN)?.args([
        "clippy",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    cmd::run(cmd::cargo(BPF_TOOLCHAIN)?.args([
        "clippy",
        "-p",
        "keepalive-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]))
}
