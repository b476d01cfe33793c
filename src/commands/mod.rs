//! One module per command: each turns its arguments into the domain's options, runs it, and
//! prints the result. Nothing below this folder imports it or `cli`.

pub mod completion;
pub mod dsn;
pub mod dump;
pub mod install;
pub mod logs;
pub mod migrate;
pub mod port_forward;
pub mod psql;
pub mod report;
pub mod restart;
pub mod restore;
pub mod rotate_password;
pub mod status;
pub mod uninstall;
pub mod upgrade;
pub mod user;
pub mod version;

use std::io::{BufRead, IsTerminal};

use crate::error::Error;

/// Asks `question` on a terminal (y/N on stderr). Off a terminal nothing can answer: the
/// command needs `--yes` (exit 1), so a script never changes something by accident.
pub fn confirm(question: &str, command: &str) -> Result<(), Error> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::InvalidInput {
            message: format!("{command} needs --yes when not run on a terminal"),
            hint: Some(format!("add --yes to confirm: {question}")),
        });
    }
    crate::note_inline!("{question} [y/N] ");
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{command} cancelled: nothing was changed"
        )))
    }
}

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
