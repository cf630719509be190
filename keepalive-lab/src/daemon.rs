//! keepalive-observer as a child process, for everything that runs the real daemon: the
//! privileged tests, the vm-test driver, the lab and the bench.

use std::env;
use std::path::{Path, PathBuf};

use crate::LabError;

/// The daemon's binary name.
pub const BINARY: &str = "keepalive-observer";

/// The daemon that cargo built into the target directory this binary runs from (`debug` or
/// `release`), where `cargo xtask lab` and `cargo xtask bench` build it.
pub fn built(debug: bool) -> Result<PathBuf, LabError> {
    let not_found = |source| LabError::Io {
        context: "cannot find the running binary's target directory".to_owned(),
        source,
    };
    let exe = env::current_exe().map_err(not_found)?;
    let target = exe.parent().and_then(Path::parent).ok_or_else(|| {
        not_found(std::io::Error::other(format!(
            "{} is not in a target directory",
            exe.display()
        )))
    })?;
    let profile = if debug { "debug" } else { "release" };
    Ok(target.join(profile).join(BINARY))
}
