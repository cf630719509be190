//! `cargo xtask install [--prefix DIR]`: builds the release daemon and installs it as
//! `PREFIX/bin/keepalive-observer`, with the systemd unit (its `ExecStart=` pointing there) as
//! `PREFIX/lib/systemd/system/keepalive-observer.service`.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::{build, setup};

/// Where the shipped unit starts the daemon from.
const SHIPPED_BINARY: &str = "/usr/local/bin/keepalive-observer";
const UNIT: &str = "keepalive-observer.service";

pub fn run(prefix: &Path) -> Result<()> {
    if !prefix.is_absolute() {
        bail!(
            "--prefix {}: must be an absolute path (the unit's ExecStart= names the binary)",
            prefix.display()
        );
    }
    setup::run(setup::Report::Quiet)?;
    build::run(build::Profile::Release)?;
    let shipped = keepalive_lab::workspace::root()
        .join("contrib/systemd")
        .join(UNIT);
    let unit =
        fs::read_to_string(&shipped).with_context(|| format!("reading {}", shipped.display()))?;
    let binary = prefix.join("bin/keepalive-observer");
    let unit = unit_for(&unit, &binary)?;
    install(&build::binary(build::Profile::Release), &binary, 0o755)?;
    let unit_path = prefix.join("lib/systemd/system").join(UNIT);
    write(&unit_path, unit.as_bytes(), 0o644)?;
    println!("installed {}", binary.display());
    println!("installed {}", unit_path.display());
    if !["/usr", "/usr/local"]
        .iter()
        .any(|dir| prefix == Path::new(dir))
    {
        println!(
            "systemd does not look for units under {}: `systemctl link {}` first",
            prefix.display(),
            unit_path.display()
        );
    }
    println!("start it: systemctl daemon-reload && systemctl enable --now keepalive-observer");
    println!("then: journalctl -u keepalive-observer; curl -s 127.0.0.1:9977/metrics");
    Ok(())
}

/// The shipped unit with `ExecStart=` starting `binary`.
fn unit_for(shipped: &str, binary: &Path) -> Result<String> {
    let exec_start = format!("ExecStart={SHIPPED_BINARY} ");
    if shipped.matches(&exec_start).count() != 1 {
        bail!("the shipped unit has no single `{exec_start}…` line to point at the binary");
    }
    let binary = binary
        .to_str()
        .with_context(|| format!("{} is not UTF-8", binary.display()))?;
    if binary.contains(char::is_whitespace) {
        bail!("{binary}: a path with white space cannot be an ExecStart= command");
    }
    Ok(shipped.replace(&exec_start, &format!("ExecStart={binary} ")))
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let bytes = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write(to, &bytes, mode)
}

/// Writes `to` whole or not at all: a temporary file beside it, renamed over it (which also
/// replaces a binary that is running).
fn write(to: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = to.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let temporary = temporary_beside(to);
    let written = fs::write(&temporary, bytes)
        .and_then(|()| fs::set_permissions(&temporary, fs::Permissions::from_mode(mode)))
        .and_then(|()| fs::rename(&temporary, to));
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written.with_context(|| format!("installing {}", to.display()))
}

fn temporary_beside(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".install-{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> String {
        fs::read_to_string(
            keepalive_lab::workspace::root()
                .join("contrib/systemd")
                .join(UNIT),
        )
        .expect("the shipped unit")
    }

    #[test]
    fn the_unit_starts_the_installed_binary() {
        let unit =
            unit_for(&shipped(), Path::new("/opt/kao/bin/keepalive-observer")).expect("rewritten");
        assert!(
            unit.lines()
                .any(|line| line.starts_with("ExecStart=/opt/kao/bin/keepalive-observer --")),
            "{unit}"
        );
        assert!(!unit.contains(SHIPPED_BINARY));
        assert!(unit_for("[Service]\nExecStart=/bin/true\n", Path::new("/x")).is_err());
        assert!(unit_for(&shipped(), Path::new("/my dir/keepalive-observer")).is_err());
    }

    #[test]
    fn files_are_replaced_whole_with_their_mode() {
        let dir = std::env::temp_dir().join(format!("kao-{}-install", std::process::id()));
        let to = dir.join("bin/tool");
        write(&to, b"one", 0o755).expect("first install");
        write(&to, b"two", 0o755).expect("second install");
        assert_eq!(fs::read(&to).expect("read"), b"two");
        let mode = fs::metadata(&to).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        let left: Vec<_> = fs::read_dir(dir.join("bin"))
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(left, ["tool"], "no temporary file left");
        fs::remove_dir_all(&dir).expect("clean up");
    }
}
