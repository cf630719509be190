//! The observers under test, as child processes: keepalive-observer and a counting bpftrace
//! script. Each child gets its own process group (Ctrl-C reaches only the bench, which stops
//! them in order) and dies with the bench (`PR_SET_PDEATHSIG`); dropping a handle kills it.

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::host::Tracefs;
use crate::load;
use keepalive_lab::interrupt;

/// Lines of a child's stderr kept for error messages.
const STDERR_TAIL: usize = 20;
/// How long a child may take to attach its programs.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a child may take to exit after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Where a child's stdout goes.
enum Stdout {
    /// Read line by line by a thread.
    Lines(Receiver<String>),
    /// Written to a file, read only when needed: the daemon prints a finding per reset in a
    /// storm, and a pipe whose reader is not scheduled in time would block it.
    File(PathBuf),
}

/// A running child process.
struct Process {
    name: &'static str,
    child: Child,
    stdout: Stdout,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

/// Bytes at the end of a stdout file searched for the last lines.
const FILE_TAIL: u64 = 1 << 16;

impl Process {
    /// Starts `command`; its stdout goes to `file` when given, else to a line reader.
    fn spawn(name: &'static str, command: &mut Command, file: Option<PathBuf>) -> Result<Self> {
        let stdout_to = match &file {
            Some(path) => Stdio::from(
                fs::File::create(path)
                    .with_context(|| format!("cannot create {}", path.display()))?,
            ),
            None => Stdio::piped(),
        };
        command
            .stdin(Stdio::null())
            .stdout(stdout_to)
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let stdout = match file {
            Some(path) => Stdout::File(path),
            None => {
                let pipe = child.stdout.take().context("child stdout")?;
                let (send, lines) = mpsc::channel();
                thread::spawn(move || {
                    for line in BufReader::new(pipe).lines() {
                        let Ok(line) = line else { break };
                        if send.send(line).is_err() {
                            break;
                        }
                    }
                });
                Stdout::Lines(lines)
            }
        };
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

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr_tail(&self) -> String {
        self.stderr
            .lock()
            .map(|tail| tail.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }

    /// Fails, with the end of its stderr, once the child has exited.
    fn check_running(&mut self) -> Result<()> {
        let Some(status) = self
            .child
            .try_wait()
            .with_context(|| format!("cannot wait for {}", self.name))?
        else {
            return Ok(());
        };
        // The stderr reader may still be catching up with the last lines.
        thread::sleep(Duration::from_millis(100));
        bail!(
            "{} exited before it was ready ({status}); its stderr:\n{}",
            self.name,
            self.stderr_tail()
        );
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
            let pause = left.min(Duration::from_millis(50));
            match &self.stdout {
                Stdout::Lines(lines) => match lines.recv_timeout(pause) {
                    Ok(line) if wanted(&line) => return Ok(line),
                    Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        let _ = self.child.wait();
                        self.check_running()?;
                        bail!("{} closed its stdout", self.name);
                    }
                },
                Stdout::File(path) => {
                    let text = fs::read_to_string(path).unwrap_or_default();
                    if let Some(line) = text.lines().find(|line| wanted(line)) {
                        return Ok(line.to_owned());
                    }
                    self.check_running()?;
                    thread::sleep(pause);
                }
            }
        }
    }

    /// SIGINT, then waits for the exit (SIGKILL if it takes too long); returns the exit
    /// status and the lines printed since the last read (from a file: its last lines).
    fn interrupt(mut self) -> Result<(ExitStatus, Vec<String>)> {
        let pid = libc::pid_t::try_from(self.pid()).context("pid out of range")?;
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
        let lines = match &self.stdout {
            // The reader ends at the pipe's end, which the exit closed.
            Stdout::Lines(lines) => lines.iter().collect(),
            Stdout::File(path) => last_lines(path)?,
        };
        Ok((status, lines))
    }
}

/// The complete lines in the last [`FILE_TAIL`] bytes of a file.
fn last_lines(path: &Path) -> Result<Vec<String>> {
    let mut file =
        fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len();
    let start = len.saturating_sub(FILE_TAIL);
    file.seek(SeekFrom::Start(start))
        .with_context(|| format!("cannot seek in {}", path.display()))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let text = String::from_utf8_lossy(&tail);
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    if start > 0 && !lines.is_empty() {
        // Cut in the middle of a line.
        lines.remove(0);
    }
    Ok(lines)
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Stdout::File(path) = &self.stdout {
            let _ = fs::remove_file(path);
        }
    }
}

/// A file for a child's stdout: in /dev/shm (tmpfs: no writeback competing with the
/// workload) when it exists, else in the temporary directory.
fn stdout_file(what: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    dir.join(format!(
        "keepalive-bench-{}-{what}-{}.out",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// keepalive-observer with every hook, findings only, JSON on stdout, no journal.
pub struct Daemon {
    process: Process,
    /// The hook table of its `ready` line, one `signal: hook (status)` per hook.
    pub hooks: Vec<String>,
}

/// The daemon's totals from its exit `stats` line.
#[derive(Debug, Clone, Copy, Default)]
pub struct DaemonStats {
    pub kernel_lost: u64,
    pub events: u64,
    pub findings: u64,
}

impl Daemon {
    pub const ARGS: &[&str] = &[
        "--format",
        "json",
        "--journald",
        "off",
        "--findings-only",
        "--stats-interval",
        "0",
    ];

    /// Starts the daemon and waits until it says `ready` (every hook attached).
    pub fn start(binary: &Path) -> Result<Self> {
        let mut command = Command::new(binary);
        command.args(Self::ARGS);
        let mut process = Process::spawn(
            "keepalive-observer",
            &mut command,
            Some(stdout_file("daemon")),
        )?;
        let ready =
            process.wait_for(|line| line.starts_with(r#"{"type":"ready""#), START_TIMEOUT)?;
        Ok(Self {
            process,
            hooks: parse_hooks(&ready)?,
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Stops it with SIGINT and returns its totals.
    pub fn stop(self) -> Result<DaemonStats> {
        let (status, lines) = self.process.interrupt()?;
        if !status.success() {
            bail!("keepalive-observer exited with {status}");
        }
        let stats = lines
            .iter()
            .rev()
            .find(|line| line.starts_with(r#"{"type":"stats""#))
            .context("keepalive-observer printed no stats line at exit")?;
        parse_stats(stats)
    }
}

/// `signal: hook (status)` for each hook of the `ready` line.
fn parse_hooks(line: &str) -> Result<Vec<String>> {
    let value: Value = serde_json::from_str(line).context("cannot parse the ready line")?;
    let hooks = value
        .get("hooks")
        .and_then(Value::as_array)
        .with_context(|| format!("ready line without hooks: {line}"))?;
    Ok(hooks
        .iter()
        .map(|hook| {
            let text = |key: &str| hook.get(key).and_then(Value::as_str).unwrap_or("?");
            let status = match hook.get("why").and_then(Value::as_str) {
                Some(why) => format!("{}: {why}", text("status")),
                None => text("status").to_owned(),
            };
            format!("{}: {} ({status})", text("signal"), text("hook"))
        })
        .collect())
}

fn parse_stats(line: &str) -> Result<DaemonStats> {
    let value: Value = serde_json::from_str(line).context("cannot parse the stats line")?;
    let field = |name: &str| {
        value
            .get(name)
            .and_then(Value::as_u64)
            .with_context(|| format!("stats line without {name}: {line}"))
    };
    Ok(DaemonStats {
        kernel_lost: field("kernel_lost")?,
        events: field("events")?,
        findings: field("findings")?,
    })
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
        let mut process = Process::spawn("bpftrace", &mut command, None)?;
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
            holders.push(Process::spawn("keepalive-bench hold", &mut command, None)?);
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
    fn parses_the_stats_line() {
        let stats = parse_stats(
            r#"{"type":"stats","kernel_lost":3,"decode_errors":0,"events":10,"findings":2,"events_by_kind":{}}"#,
        )
        .unwrap();
        assert_eq!(
            (stats.kernel_lost, stats.events, stats.findings),
            (3, 10, 2)
        );
        assert!(parse_stats(r#"{"type":"stats"}"#).is_err());
        assert!(parse_stats("not json").is_err());
    }

    #[test]
    fn parses_the_hook_table() {
        let hooks = parse_hooks(
            r#"{"type":"ready","hooks":[{"signal":"RST sent","hook":"tp_btf/tcp_send_reset","status":"attached","why":null},{"signal":"segment TTL","hook":"cgroup_skb/ingress","status":"unavailable","why":"no cgroup v2"}]}"#,
        )
        .unwrap();
        assert_eq!(
            hooks,
            [
                "RST sent: tp_btf/tcp_send_reset (attached)",
                "segment TTL: cgroup_skb/ingress (unavailable: no cgroup v2)"
            ]
        );
        assert!(parse_hooks(r#"{"type":"ready"}"#).is_err());
    }

    #[test]
    fn parses_bpftrace_counts() {
        assert_eq!(count_line("@tcp_send_reset: 42"), Some(42));
        assert_eq!(count_line("Attaching 8 probes..."), None);
        assert_eq!(count_line("@x: many"), None);
        assert_eq!(count_line("note: 12"), None);
    }
}
