//! Running commands: each one is printed before it runs and fails with its exit status.

use std::env;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Where `cargo install` puts binaries: `$CARGO_HOME/bin`, by default `~/.cargo/bin`.
pub fn cargo_bin_dir() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home).join("bin"));
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo").join("bin"))
}

/// `PATH` with `dirs` in front.
pub fn path_with(dirs: &[PathBuf]) -> Result<OsString> {
    let current = env::var_os("PATH").unwrap_or_default();
    let paths = dirs.iter().cloned().chain(env::split_paths(&current));
    env::join_paths(paths).context("cannot build PATH")
}

/// `cargo +toolchain`, run from the workspace root with `~/.cargo/bin` (bpf-linker) first on
/// `PATH`. The variables that rustup and `cargo run` set for xtask itself are removed, so that
/// nothing below falls back to the toolchain xtask was built with.
pub fn cargo(toolchain: &str) -> Result<Command> {
    let mut command = Command::new("cargo");
    command
        .arg(format!("+{toolchain}"))
        .current_dir(keepalive_lab::workspace::root())
        .env("PATH", path_with(&[cargo_bin_dir()?])?)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTUP_TOOLCHAIN_SOURCE")
        .env_remove("CARGO");
    Ok(command)
}

/// Prints the command, runs it with inherited stdio and fails unless it exits with status 0.
pub fn run(command: &mut Command) -> Result<()> {
    let line = describe(command);
    println!("$ {line}");
    let status = command
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// The command as a shell line: variables it sets (except PATH), program, arguments.
pub fn describe(command: &Command) -> String {
    let vars = command.get_envs().filter_map(|(key, value)| {
        let value = value?;
        (key != "PATH").then(|| format!("{}={}", key.display(), value.display()))
    });
    let words = std::iter::once(command.get_program().display().to_string())
        .chain(command.get_args().map(|arg| arg.display().to_string()));
    vars.chain(words).collect::<Vec<_>>().join(" ")
}
