//! The run's files and the programs it needs: checked before anything starts, and what a run
//! that died left behind removed.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::{client, servers};

const WORKDIR_PREFIX: &str = "keepalive-lab-";

pub fn check_programs() -> Result<()> {
    let missing: Vec<String> = [
        (Path::new(servers::NGINX), "nginx"),
        (Path::new(client::PYTHON), "python3-urllib3"),
    ]
    .into_iter()
    .filter(|(path, _)| !path.exists())
    .map(|(path, package)| format!("{} (Debian package {package})", path.display()))
    .collect();
    if !missing.is_empty() {
        bail!(
            "missing {}: `cargo xtask setup` installs them as root",
            missing.join(", ")
        );
    }
    let script = client::script();
    if !script.exists() {
        bail!("the client script {} is missing", script.display());
    }
    Ok(())
}

/// The run's files (nginx configurations and logs, standard error of the children); removed
/// when dropped.
pub struct WorkDir {
    pub path: PathBuf,
}

impl WorkDir {
    pub fn create() -> Result<WorkDir> {
        let path = std::env::temp_dir().join(format!("{WORKDIR_PREFIX}{}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
        fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(error) = fs::remove_dir_all(&self.path) {
            eprintln!("warning: cannot remove {}: {error}", self.path.display());
        }
    }
}

/// Removes the work directories of runs whose process is gone (killed before their clean-up).
pub fn remove_stale_workdirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix(WORKDIR_PREFIX))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists()
            && fs::remove_dir_all(entry.path()).is_ok()
        {
            println!(
                "removed {}, left behind by a run that died",
                entry.path().display()
            );
        }
    }
}
