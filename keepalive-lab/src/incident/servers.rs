//! The four servers: Debian's nginx, one instance per server namespace, keep-alive for an
//! hour, each with its own configuration, pid file and logs.

use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::{ChildGuard, Host};
use anyhow::{Context, Result, bail};

use super::observer::tail;
use crate::interrupt;

pub const NGINX: &str = "/usr/sbin/nginx";
const TEMPLATE: &str = include_str!("../../assets/nginx.conf");
/// nginx starts in milliseconds; this bounds a slow machine.
const START_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);
/// nginx shuts down fast on SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// One nginx per server; stopped when dropped.
pub struct Servers {
    running: Vec<ChildGuard>,
}

impl Servers {
    /// Starts nginx on `port` of every host, each under `dir/srv<i>`, and waits until every
    /// one listens.
    pub fn start(hosts: &[Host], port: u16, dir: &Path) -> Result<Servers> {
        let mut servers = Servers {
            running: Vec::new(),
        };
        let mut starting = Vec::new();
        for (index, host) in hosts.iter().enumerate() {
            let name = format!("srv{index}");
            let home = dir.join(&name);
            let listen = SocketAddr::from((host.ipv4(), port));
            let config = write_config(&home, &name, listen)?;
            let stderr = home.join("stderr.log");
            let log = File::create(&stderr)
                .with_context(|| format!("cannot create {}", stderr.display()))?;
            let mut command = host.netns().command(NGINX);
            command
                .arg("-p")
                .arg(&home)
                .arg("-c")
                .arg(&config)
                .arg("-e")
                .arg(home.join("error.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log);
            servers.running.push(ChildGuard::spawn(&mut command)?);
            starting.push((listen, home));
        }
        for (index, (listen, home)) in starting.into_iter().enumerate() {
            servers.wait_ready(index, listen, &home)?;
        }
        Ok(servers)
    }

    /// Waits for nginx's pid file, which it writes once its listening socket is open. (A
    /// probe connection would be refused until then, and the observer would report that.)
    fn wait_ready(&mut self, index: usize, listen: SocketAddr, home: &Path) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let pid_file = home.join("nginx.pid");
        loop {
            interrupt::check()?;
            if fs::read_to_string(&pid_file).is_ok_and(|pid| !pid.trim().is_empty()) {
                return Ok(());
            }
            if let Some(status) = self.running[index].try_wait()? {
                bail!(
                    "nginx for {listen} exited ({status}):\n{}\n{}",
                    tail(&home.join("stderr.log")),
                    tail(&home.join("error.log"))
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "nginx for {listen} did not start within {} s:\n{}",
                    START_TIMEOUT.as_secs(),
                    tail(&home.join("error.log"))
                );
            }
            thread::sleep(POLL);
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for guard in self.running.drain(..) {
            if let Err(error) = guard.stop(STOP_GRACE) {
                eprintln!("warning: stopping nginx: {error}");
            }
        }
    }
}

/// nginx's version line (`nginx version: nginx/1.22.1` on standard error), for the header.
pub fn version() -> Result<String> {
    let output = Command::new(NGINX)
        .arg("-v")
        .output()
        .with_context(|| format!("cannot run {NGINX} -v"))?;
    let text = String::from_utf8_lossy(&output.stderr);
    Ok(text
        .trim()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned())
}

fn write_config(home: &Path, name: &str, listen: SocketAddr) -> Result<PathBuf> {
    fs::create_dir_all(home).with_context(|| format!("cannot create {}", home.display()))?;
    let dir = home
        .to_str()
        .with_context(|| format!("{} is not UTF-8", home.display()))?;
    let config = render(dir, name, listen);
    let path = home.join("nginx.conf");
    fs::write(&path, config).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

fn render(dir: &str, name: &str, listen: SocketAddr) -> String {
    TEMPLATE
        .replace("@DIR@", dir)
        .replace("@LISTEN@", &listen.to_string())
        .replace("@NAME@", name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_connections_and_leaves_no_placeholder() {
        let config = render(
            "/tmp/lab/srv2",
            "srv2",
            "198.51.100.138:80".parse().unwrap(),
        );
        assert!(!config.contains('@'), "{config}");
        assert!(config.contains("listen 198.51.100.138:80;"));
        assert!(config.contains("pid /tmp/lab/srv2/nginx.pid;"));
        assert!(config.contains("return 200 \"srv2\\n\";"));
        assert!(config.contains("keepalive_timeout 3600s;"));
    }
}
