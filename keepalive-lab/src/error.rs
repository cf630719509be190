//! The one error type of the lab: every variant says what was being done and why it failed.

use std::{io, process::ExitStatus};

use crate::cmd::Tool;

/// Why a lab operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Command-line tools the lab needs are not installed.
    #[error("missing {}: install with `apt-get install {}`", tool_list(.0), package_list(.0))]
    MissingTools(Vec<Tool>),
    /// A command could not be started at all.
    #[error("could not start `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why it could not be started.
        source: io::Error,
    },
    /// A command ran and exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line, with its standard input when it had one.
        command: String,
        /// How it exited.
        status: ExitStatus,
        /// What it wrote to standard error, trimmed.
        stderr: String,
    },
    /// Opening, entering or inspecting a network namespace failed.
    #[error("network namespace `{netns}`: {operation}: {source}")]
    Netns {
        /// The namespace's name.
        netns: String,
        /// What was being done.
        operation: &'static str,
        /// The system error.
        source: io::Error,
    },
    /// Reading or writing a sysctl inside a network namespace failed.
    #[error("sysctl {key} in network namespace `{netns}`: {source}")]
    Sysctl {
        /// The namespace's name.
        netns: String,
        /// The sysctl, dotted (`net.ipv4.ip_forward`).
        key: String,
        /// The system error.
        source: io::Error,
    },
    /// Setting a socket option failed.
    #[error("setsockopt {option}: {source}")]
    SocketOption {
        /// The option, e.g. `TCP_KEEPIDLE`.
        option: &'static str,
        /// The system error.
        source: io::Error,
    },
    /// A value given to the lab is out of range or malformed.
    #[error("invalid lab configuration: {0}")]
    InvalidConfig(String),
    /// Other I/O failed: binding a socket, starting a thread, listing a directory.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The system error.
        source: io::Error,
    },
}

fn tool_list(tools: &[Tool]) -> String {
    let names: Vec<&str> = tools.iter().map(|tool| tool.program()).collect();
    names.join(", ")
}

fn package_list(tools: &[Tool]) -> String {
    let mut packages: Vec<&str> = tools.iter().map(|tool| tool.package()).collect();
    packages.dedup();
    packages.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tools_name_their_packages() {
        let error = LabError::MissingTools(vec![Tool::Nft, Tool::Conntrack]);
        assert_eq!(
            error.to_string(),
            "missing nft, conntrack: install with `apt-get install nftables conntrack`"
        );
    }
}
