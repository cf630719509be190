//! `cargo xtask lint`: formatting and clippy, warnings denied, for host and eBPF crates.

use anyhow::Result;

use crate::cmd;
use keepalive_lab::workspace::{ebpf_toolchain, host_toolchain};

pub fn run() -> Result<()> {
    cmd::run(cmd::cargo(host_toolchain())?.args(["fmt", "--all", "--check"]))?;
    // The workspace's default members: every crate but the eBPF one.
    cmd::run(cmd::cargo(host_toolchain())?.args([
        "clippy",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    cmd::run(cmd::cargo(ebpf_toolchain())?.args([
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
