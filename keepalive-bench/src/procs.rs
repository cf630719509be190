//! The observers under test, as child processes: keepalive-observer (through the daemon
//! harness) and a counting bpftrace script, and the helpers that hold idle connections. Each
//! child gets its own process group (Ctrl-C reaches only the bench, which stops them in order)
//! and dies with the bench (`PR_SET_PDEATHSIG`); dropping a handle kills it.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use keepalive_lab::interrupt;

use crate::host::Tracefs;
use crate::load;

/// Lines of a child's stderr kept for error messages.
const STDERR_TAIL: usize = 20;
/// How long a child may take to get ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a child may take to exit after SIGINT.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running child process whose stdout lines a thread reads.
struct Process {
    name: &'static str,
    child: Child,
    stdout: Receiver<String>,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Process {
    fn spawn(name: &'static str, command: &mut Command) -> Result<Self> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = keepalive_lab::isolate(command)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let pipe = child.stdout.take().context("child stdout")?;
        let (send, stdout) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = child.stderr.take().context("child stderr")?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let tail_by_reader = Arc::clone(&tail);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut tail) = tail_by_reader.lock() {
                    if tail.len() == STDERR_TAIL {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            }
        });
        Ok(Self {
            name,
            child,
            stdout,
            stderr: tail,
        })
    }

    fn stderr_tail(&self) -> String {
        self.stderr
            .lock()
            .map(|tail| tail.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }

    /// The first stdout line that `wanted` accepts, within `timeout`.
    fn wait_for(&mut self, wanted: impl Fn(&str) -> bool, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if interrupt::requested() {
                bail!("interrupted while waiting for {}", self.name);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{} did not get ready within {timeout:?}; its stderr:\n{}",
                    self.name,
                    self.stderr_tail()
                );
            }
            match self
                .stdout
                .recv_timeout(left.min(Duration::from_millis(50)))
            {
                Ok(line) if wanted(&line) => return Ok(line),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self
                        .child
                        .wait()
                        .with_context(|| format!("cannot wait for {}", self.name))?;
                    // The stderr reader may still be catching up with the last lines.
                    thread::sleep(Duration::from_millis(100));
                    bail!(
                        "{} exited before it was ready ({status}); its stderr:\n{}",
                        self.name,
                        self.stderr_tail()
                    );
                }
            }
        }
    }

    /// SIGINT, then waits for the exit (SIGKILL if it takes too long); returns the exit
    /// status and the lines printed since the last read.
    fn interrupt(mut self) -> Result<(ExitStatus, Vec<String>)> {
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: kill() on our own child, which has not been waited for yet.
        if unsafe { libc::kill(pid, libc::SIGINT) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot interrupt {}", self.name));
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = self
                .child
                .try_wait()
                .with_context(|| format!("cannot wait for {}", self.name))?
            {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "{} did not exit within {STOP_TIMEOUT:?} of SIGINT",
                    self.name
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        // The reader ends at the pipe's end, which the exit closed.
        Ok((status, self.stdout.iter().collect()))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The classic tracepoints that match the daemon's tp_btf programs (cgroup_skb has no
/// bpftrace equivalent).
pub const TRACEPOINTS: &[(&str, &str)] = &[
    ("tcp", "tcp_send_reset"),
    ("tcp", "tcp_receive_reset"),
    ("sock", "inet_sock_set_state"),
    ("sock", "inet_sk_error_report"),
    ("timer", "timer_expire_entry"),
    ("tcp", "tcp_sendmsg_locked"),
    ("sock", "sock_recv_length"),
];

/// bpftrace counting every hit of [`TRACEPOINTS`], one count map per tracepoint.
pub struct Bpftrace {
    process: Process,
}

impl Bpftrace {
    /// The script for the tracepoints this kernel has.
    pub fn script(tracefs: &Tracefs) -> String {
        let mut script = String::from("BEGIN { printf(\"ready\\n\"); }\n");
        for (category, name) in TRACEPOINTS {
            if tracefs.has_event(category, name) {
                script.push_str(&format!(
                    "tracepoint:{category}:{name} {{ @{name} = count(); }}\n"
                ));
            }
        }
        script
    }

    /// Starts bpftrace and waits until every probe is attached (BEGIN runs after that).
    pub fn start(binary: &Path, script: &str) -> Result<Self> {
        let mut command = Command::new(binary);
        command.arg("-e").arg(script);
        let mut process = Process::spawn("bpftrace", &mut command)?;
        process.wait_for(|line| line == "ready", START_TIMEOUT)?;
        Ok(Self { process })
    }

    /// Stops it and returns the hits it counted, summed over its tracepoints.
    pub fn stop(self) -> Result<u64> {
        let (status, lines) = self.process.interrupt()?;
        if !status.success() {
            bail!("bpftrace exited with {status}");
        }
        Ok(lines.iter().filter_map(|line| count_line(line)).sum())
    }
}

/// `@name: 123` → 123.
fn count_line(line: &str) -> Option<u64> {
    let (name, count) = line.split_once(": ")?;
    if !name.starts_with('@') {
        return None;
    }
    count.trim().parse().ok()
}

/// Workload 4 spread over helper processes (`keepalive-bench hold`), each holding both ends of its
/// share from its own source address: one process may hold only RLIMIT_NOFILE descriptors.
/// Dropping it kills the helpers, which closes every connection.
pub struct IdleHolders {
    _holders: Vec<Process>,
    pub connections: usize,
    pub processes: usize,
    pub elapsed: Duration,
}

impl IdleHolders {
    pub fn open(total: usize, time_limit: Duration) -> Result<Self> {
        let per_process = load::connections_per_process(total)?;
        let exe = std::env::current_exe().context("cannot find the keepalive-bench binary")?;
        let start = Instant::now();
        let mut holders = Vec::new();
        let mut left = total;
        while left > 0 {
            let count = left.min(per_process);
            let source = load::source_address(holders.len())?;
            let mut command = Command::new(&exe);
            command
                .arg("hold")
                .args(["--connections", &count.to_string()])
                .args(["--source", &source.to_string()])
                .args(["--time-limit", &time_limit.as_secs().to_string()]);
            holders.push(Process::spawn("keepalive-bench hold", &mut command)?);
            left -= count;
        }
        let mut connections = 0;
        for holder in &mut holders {
            let left = time_limit.saturating_sub(start.elapsed());
            let line = holder.wait_for(|line| line.starts_with("ready "), left)?;
            connections += line["ready ".len()..]
                .parse::<usize>()
                .with_context(|| format!("keepalive-bench hold said {line:?}"))?;
        }
        Ok(Self {
            processes: holders.len(),
            _holders: holders,
            connections,
            elapsed: start.elapsed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bpftrace_counts() {
        assert_eq!(count_line("@tcp_send_reset: 42"), Some(42));
        assert_eq!(count_line("Attaching 8 probes..."), None);
        assert_eq!(count_line("@x: many"), None);
        assert_eq!(count_line("note: 12"), None);
    }
}
