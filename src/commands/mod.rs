//! One module per command: each turns its arguments into the domain's options, runs it, and
//! prints the result. Nothing below this folder imports it or `cli`.

pub mod completion;
pub mod dsn;
pub mod install;
pub mod logs;
pub mod migrate;
pub mod port_forward;
pub mod psql;
pub mod report;
pub mod restart;
pub mod rotate_password;
pub mod status;
pub mod uninstall;
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
