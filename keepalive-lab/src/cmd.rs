//! Running the lab's command-line tools, with errors that name the command, its exit status and
//! its standard error.

use std::{
    env,
    ffi::{OsStr, OsString},
    fs,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::LabError;

/// Directories searched after `PATH`: the tools live in `sbin`, which a non-login root shell
/// may not have on its `PATH`.
const FALLBACK_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// A command-line tool the lab runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tool {
    /// `ip`, for namespaces, links, addresses and routes.
    Ip,
    /// `nft`, for the middlebox's rules.
    Nft,
    /// `conntrack`, to list the middlebox's tracked flows.
    Conntrack,
}

impl Tool {
    /// Every tool the lab may run.
    pub const ALL: [Tool; 3] = [Tool::Ip, Tool::Nft, Tool::Conntrack];

    /// The program's file name.
    pub fn program(self) -> &'static str {
        match self {
            Tool::Ip => "ip",
            Tool::Nft => "nft",
            Tool::Conntrack => "conntrack",
        }
    }

    /// The Debian package that provides it.
    pub fn package(self) -> &'static str {
        match self {
            Tool::Ip => "iproute2",
            Tool::Nft => "nftables",
            Tool::Conntrack => "conntrack",
        }
    }

    /// Where the program is: the first executable file of that name on `PATH`, then in the
    /// `sbin` and `bin` directories.
    pub fn locate(self) -> Option<PathBuf> {
        let path = env::var_os("PATH").unwrap_or_default();
        env::split_paths(&path)
            .chain(FALLBACK_DIRS.iter().map(PathBuf::from))
            .map(|dir| dir.join(self.program()))
            .find(|candidate| is_executable(candidate))
    }
}

/// Checks that every tool in `tools` is installed; the error lists all missing ones and the
/// packages that provide them.
pub fn check_tools(tools: &[Tool]) -> Result<(), LabError> {
    let missing: Vec<Tool> = tools
        .iter()
        .copied()
        .filter(|tool| tool.locate().is_none())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LabError::MissingTools(missing))
    }
}

/// The absolute path of `tool`, or [`LabError::MissingTools`].
pub(crate) fn locate(tool: Tool) -> Result<PathBuf, LabError> {
    tool.locate()
        .ok_or_else(|| LabError::MissingTools(vec![tool]))
}

/// Runs `tool` with `args`, feeding it `stdin` when given, and returns its standard output.
pub(crate) fn run<I, S>(tool: Tool, args: I, stdin: Option<&str>) -> Result<String, LabError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(locate(tool)?);
    command.args(args);
    run_command(&mut command, stdin)
}

/// Runs `command` quietly and returns its standard output; fails with its exit status and
/// standard error.
pub fn output(command: &mut Command) -> Result<String, LabError> {
    run_command(command, None)
}

/// Runs `command` to completion with piped standard streams, feeding it `stdin` when given,
/// and returns its standard output.
pub(crate) fn run_command(command: &mut Command, stdin: Option<&str>) -> Result<String, LabError> {
    let line = describe(command, stdin);
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| LabError::Spawn {
        command: line.clone(),
        source,
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|source| LabError::Io {
                context: format!("writing the standard input of `{line}`"),
                source,
            })?;
    }
    let output = child.wait_with_output().map_err(|source| LabError::Io {
        context: format!("waiting for `{line}`"),
        source,
    })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(LabError::CommandFailed {
            command: line,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// The command line as a shell user would type it, with the input lines after `<<<`.
pub(crate) fn describe(command: &Command, stdin: Option<&str>) -> String {
    let mut words: Vec<OsString> = vec![command.get_program().to_owned()];
    words.extend(command.get_args().map(OsStr::to_owned));
    let mut line = words
        .iter()
        .map(|word| word.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    if let Some(input) = stdin {
        let lines: Vec<&str> = input.lines().filter(|l| !l.trim().is_empty()).collect();
        line.push_str(" <<< ");
        line.push_str(&lines.join("; "));
    }
    line
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_arguments_and_input() {
        let mut command = Command::new("ip");
        command.args(["-n", "kao-1-0-x", "-batch", "-"]);
        assert_eq!(
            describe(
                &command,
                Some("link set lo up\n\naddr add 198.51.100.1/30 dev c\n")
            ),
            "ip -n kao-1-0-x -batch - <<< link set lo up; addr add 198.51.100.1/30 dev c"
        );
    }

    #[test]
    fn failing_command_reports_status_and_stderr() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo boom >&2; exit 3"]);
        match run_command(&mut command, None) {
            Err(LabError::CommandFailed {
                command,
                status,
                stderr,
            }) => {
                assert_eq!(command, "sh -c echo boom >&2; exit 3");
                assert_eq!(status.code(), Some(3));
                assert_eq!(stderr, "boom");
            }
            other => panic!("expected CommandFailed, got {other:?}"),
        }
    }

    #[test]
    fn input_reaches_the_command() {
        let mut command = Command::new("cat");
        assert_eq!(
            run_command(&mut command, Some("hello\n")).expect("cat runs"),
            "hello\n"
        );
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let mut command = Command::new("/nonexistent/kao-tool");
        assert!(matches!(
            run_command(&mut command, None),
            Err(LabError::Spawn { .. })
        ));
    }
}
