//! The migration engine: files, SQL lexer, history, plans and the runner.

pub mod engine;
pub mod foreign;
pub mod format;
pub mod history;
pub mod lexer;
pub mod plan;
pub mod source;
pub mod status;

pub use engine::{Event, Goal, Interrupt, Runner, Settings};
pub use format::Format;
pub use plan::DownTarget;
pub use source::MigrationSet;
