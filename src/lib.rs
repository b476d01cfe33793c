//! kubectl-pg: PostgreSQL on Kubernetes from one command line.
//!
//! The binary is a thin shell around [`run`]; every failure is an [`Error`] whose
//! [`Error::exit_code`] is the process's exit code.
// Output goes through output::emit and note!: print macros panic on a closed stream.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod cli;
pub mod cluster;
pub mod commands;
pub mod database;
pub mod deployment;
pub mod error;
pub mod manifests;
pub mod migration;
pub mod output;
pub mod platform;
pub mod transfer;

pub use error::Error;

/// The fuzz tests' case count: `default`, or `KPG_FUZZ_CASES` for a deeper run.
#[cfg(test)]
pub(crate) fn fuzz_config(default: u32) -> proptest::test_runner::Config {
    let cases = std::env::var("KPG_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    proptest::test_runner::Config {
        cases,
        // Regressions are kept as tests here, not in files beside the sources.
        failure_persistence: None,
        ..Default::default()
    }
}

use cli::{Cli, Command};
use commands::{
    completion, dsn, dump, install, logs, migrate, port_forward, psql, report, restart, restore,
    rotate_password, status, switchover, uninstall, upgrade, user, version,
};

/// Answers kubectl's `__complete` request (see [`completion::complete`]).
pub fn complete(args: &[String]) -> String {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(completion::complete(args)),
        Err(_) => ":4\n".into(),
    }
}

/// Runs a parsed command line to completion.
pub fn run(cli: Cli) -> Result<(), Error> {
    output::init_color(cli.global.color);
    // One thread is plenty for a CLI and starts fastest.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            context: "cannot start the async runtime".into(),
            source,
        })?;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Migrate(args) => migrate::run(args, &cli.global).await,
            Command::Version(args) => version::run(args, &cli.global).await,
            Command::Completion { shell } => {
                output::emit(&completion::script(shell));
                Ok(())
            }
            Command::Dsn(args) => dsn::run(args, &cli.global).await,
            Command::Install(args) => install::run(*args, &cli.global).await,
            Command::Uninstall(args) => uninstall::run(args, &cli.global).await,
            Command::Psql(args) => psql::run(args, &cli.global).await,
            Command::Dump(args) => dump::run(args, &cli.global).await,
            Command::Restore(args) => restore::run(args, &cli.global).await,
            Command::Upgrade(args) => upgrade::run(args, &cli.global).await,
            Command::Status(args) => status::run(args, &cli.global).await,
            Command::Logs(args) => logs::run(args, &cli.global).await,
            Command::Restart(args) => restart::run(args, &cli.global).await,
            Command::PortForward(args) => port_forward::run(args, &cli.global).await,
            Command::Report(args) => report::run(args, &cli.global).await,
            Command::User(args) => user::run(args, &cli.global).await,
            Command::RotatePassword(args) => rotate_password::run(args, &cli.global).await,
            Command::Switchover(args) => switchover::run(args, &cli.global).await,
        }
    });
    // Dropping the runtime would wait for its blocking threads, and a read of stdin stays
    // blocked while the pipe's writer lives: a restore stopped by a signal would never exit.
    // Once the command has returned, nothing else is owed.
    runtime.shutdown_background();
    result
}
