//! keepalive-observer: the daemon's entry point.

mod cli;
mod daemon;
mod drops;
mod pipeline;
mod replay;
mod saver;
mod windows;

use std::process::ExitCode;

use clap::Parser as _;

use keepalive_observer::{
    sockets::{AuditOptions, Filter, Output},
    stderr::QueuedStderr,
};

use crate::cli::{Cli, Command, Format, SocketsArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stderr = match QueuedStderr::spawn() {
        Ok(stderr) => stderr,
        Err(error) => {
            eprintln!("error: cannot start the thread writing to standard error: {error}");
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_writer(stderr.clone())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        None => runtime.block_on(daemon::run(cli.run, stderr.dropped())),
        Some(Command::Replay {
            file,
            format,
            events,
        }) => replay::run(&file, format, events),
        Some(Command::Windows { state_dir, format }) => windows::run(&state_dir, format),
        Some(Command::Sockets(args)) => sockets(args),
    };
    stderr.drain();
    // A loader stopped by a signal that did not return in time is not waited for.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", describe(&error));
            match error.downcast_ref::<daemon::Interrupted>() {
                Some(interrupted) => ExitCode::from(interrupted.exit_status),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// The error and its causes, `: `-separated, leaving out a cause that the message before it
/// already quotes (many say what their source said).
fn describe(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn sockets(args: SocketsArgs) -> anyhow::Result<()> {
    let options = AuditOptions {
        netns: args.netns,
        windows: args.windows,
        state_dir: args.state_dir,
        filter: Filter {
            remote: args.remote,
            port: args.port,
            process: args.process,
            risks: args.risk.into_iter().map(Into::into).collect(),
        },
    };
    let output = match args.format {
        Format::Text => Output::Table,
        Format::Json => Output::Json,
    };
    keepalive_observer::sockets::run(&options, output, &mut std::io::stdout().lock())?;
    Ok(())
}
