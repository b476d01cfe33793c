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
pub mod transfer;

pub use error::Error;

use cli::{Cli, Command};
use commands::{
    completion, dsn, dump, install, migrate, psql, restore, status, uninstall, upgrade, version,
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
    runtime.block_on(async move {
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
        }
    })
}
