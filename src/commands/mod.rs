//! One module per command: each turns its arguments into the domain's options, runs it, and
//! prints the result. Nothing below this folder imports it or `cli`.

pub mod completion;
pub mod dsn;
pub mod dump;
pub mod install;
pub mod migrate;
pub mod psql;
pub mod restore;
pub mod status;
pub mod uninstall;
pub mod upgrade;
pub mod version;

/// The first SIGINT or SIGTERM, as the exit code a shell gives it (130, 143): long commands
/// race their work against it and clean up before they exit.
pub(crate) async fn interrupted() -> u8 {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => 130,
        _ = term.recv() => 143,
    }
}
