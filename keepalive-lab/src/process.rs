//! Child processes that are killed, by the PID we started, when their guard is dropped.

use std::{
    io,
    os::unix::process::CommandExt,
    process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use crate::{LabError, cmd};

/// Puts `command`'s process in a group of its own, so that a Ctrl-C from the terminal reaches
/// only its parent, which stops it in order; and has it killed if the parent dies.
pub fn isolate(command: &mut Command) -> &mut Command {
    command.process_group(0);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// How often [`ChildGuard::stop`] checks whether the child has exited.
const STOP_POLL: Duration = Duration::from_millis(10);

/// A running child process in its own process group, whose id is the child's PID. Dropping the
/// guard sends SIGKILL to that group and reaps the child, unless it was already reaped.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    description: String,
    exited: Option<ExitStatus>,
}

impl ChildGuard {
    /// Starts `command` in a new process group. Combine with
    /// [`Netns::command`](crate::Netns::command) to start it inside a namespace.
    pub fn spawn(command: &mut Command) -> Result<ChildGuard, LabError> {
        let description = cmd::describe(command, None);
        let child = command
            .process_group(0)
            .spawn()
            .map_err(|source| LabError::Spawn {
                command: description.clone(),
                source,
            })?;
        Ok(ChildGuard {
            child,
            description,
            exited: None,
        })
    }

    /// The child's PID, also its process group id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Takes the child's standard input, if it was piped and not taken before.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    /// Takes the child's standard output, if it was piped and not taken before.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// Takes the child's standard error, if it was piped and not taken before.
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// The child's exit status if it has exited, without waiting.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, LabError> {
        if self.exited.is_none() {
            self.exited = self
                .child
                .try_wait()
                .map_err(|source| self.wait_error(source))?;
        }
        Ok(self.exited)
    }

    /// Asks the child's process group to stop with SIGTERM, waits up to `grace` for the child
    /// to exit, then sends SIGKILL; returns the child's exit status.
    pub fn stop(mut self, grace: Duration) -> Result<ExitStatus, LabError> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.signal_group(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            thread::sleep(STOP_POLL);
        }
        self.kill_and_reap()
    }

    /// Sends `signal` to the process group the child leads. Only called while the child is not
    /// reaped, so its PID, and with it the group id, cannot have been reused.
    fn signal_group(&self, signal: libc::c_int) {
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: kill with a negative PID signals only the process group our child leads.
        if unsafe { libc::kill(-pid, signal) } != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::ESRCH) {
                eprintln!(
                    "keepalive-lab: signal {signal} to `{}`: {error}",
                    self.description
                );
            }
        }
    }

    fn kill_and_reap(&mut self) -> Result<ExitStatus, LabError> {
        self.signal_group(libc::SIGKILL);
        let status = self
            .child
            .wait()
            .map_err(|source| self.wait_error(source))?;
        self.exited = Some(status);
        Ok(status)
    }

    fn wait_error(&self, source: io::Error) -> LabError {
        LabError::Io {
            context: format!("waiting for `{}`", self.description),
            source,
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.exited.is_none()
            && let Err(error) = self.kill_and_reap()
        {
            eprintln!("keepalive-lab: {error}");
        }
    }
}
