//! `cargo xtask build`: builds the daemon; its build script compiles the eBPF programs.

use std::env;
use std::path::PathBuf;

use anyhow::Result;

use crate::cmd;
use crate::setup::HOST_TOOLCHAIN;

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
    let mut build = cmd::cargo(HOST_TOOLCHAIN)?;
    build.args(["build", "-p", PACKAGE]);
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
    let root = cmd::workspace_root();
    env::var_os("CARGO_TARGET_DIR")
        .or_else(|| env::var_os("CARGO_BUILD_TARGET_DIR"))
        .map_or_else(|| root.join("target"), |dir| root.join(dir))
}
