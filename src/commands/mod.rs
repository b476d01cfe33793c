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
pub mod status;
pub mod uninstall;
pub mod version;
