//! `cargo xtask build`: builds the daemon; its build script compiles the eBPF programs. Also
//! builds the lab's and the bench's binaries for `cargo xtask lab` and `cargo xtask bench`.

use std::env;
use std::path::PathBuf;

use anyhow::Result;

use crate::cmd;
use keepalive_lab::workspace::host_toolchain;

const PACKAGE: &str = "keepalive-user";
const BINARY: &str = "keepalive-observer";

#[derive(Clone, Copy)]
pub enum Profile {
    Debug,
    Release,
}

impl Profile {
    pub fn from_release(release: bool) -> Self {
        if release {
            Profile::Release
        } else {
            Profile::Debug
        }
    }

    fn dir_name(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Release => "release",
        }
    }
}

pub fn run(profile: Profile) -> Result<()> {
    build(profile, PACKAGE)
}

/// Builds `package`, whose binary has the package's name, and returns that binary's path.
pub fn package(profile: Profile, package: &str) -> Result<PathBuf> {
    build(profile, package)?;
    Ok(target_dir().join(profile.dir_name()).join(package))
}

fn build(profile: Profile, package: &str) -> Result<()> {
    let mut build = cmd::cargo(host_toolchain())?;
    build.args(["build", "-p", package]);
    if let Profile::Release = profile {
        build.arg("--release");
    }
    cmd::run(&mut build)
}

/// Path of the daemon binary that `run(profile)` builds.
pub fn binary(profile: Profile) -> PathBuf {
    target_dir().join(profile.dir_name()).join(BINARY)
}

/// cargo's target directory: `CARGO_TARGET_DIR` (or `CARGO_BUILD_TARGET_DIR`) when set, relative
/// paths taken from the workspace root where cargo runs, else `target/` in the workspace root.
pub fn target_dir() -> PathBuf {
    let root = keepalive_lab::workspace::root();
    env::var_os("CARGO_TARGET_DIR")
        .or_else(|| env::var_os("CARGO_BUILD_TARGET_DIR"))
        .map_or_else(|| root.join("target"), |dir| root.join(dir))
}
