//! Rendering: colour rules, machine-readable documents and tables.

pub mod archive;
pub mod redact;

use owo_colors::{OwoColorize, Stream};
use serde::Serialize;

use crate::error::Error;

/// When to colour (`--color`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// How a result is printed (`-o`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Wide,
    Json,
    Yaml,
}

/// The `apiVersion` of every document we print.
pub const API_VERSION: &str = "kubectl-pg/v1";

/// Applies `--color` and `NO_COLOR` once for the whole process; with `auto`, colour is used
/// only on a terminal.
pub fn init_color(choice: ColorChoice) {
    match choice {
        ColorChoice::Always => owo_colors::set_override(true),
        ColorChoice::Never => owo_colors::set_override(false),
        ColorChoice::Auto if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) => {
            owo_colors::set_override(false)
        }
        ColorChoice::Auto => {}
    }
}

/// The semantic colours of our output.
#[derive(Debug, Clone, Copy)]
pub enum Tone {
    Good,
    Warn,
    Bad,
    Dim,
}

/// `text` in `tone` when colour is on for `stream`.
pub fn paint(text: &str, tone: Tone, stream: Stream) -> String {
    match tone {
        Tone::Good => text.if_supports_color(stream, |t| t.green()).to_string(),
        Tone::Warn => text.if_supports_color(stream, |t| t.yellow()).to_string(),
        Tone::Bad => text.if_supports_color(stream, |t| t.red()).to_string(),
        Tone::Dim => text.if_supports_color(stream, |t| t.dimmed()).to_string(),
    }
}

/// Why a result could not be written whole, once one could not.
static STDOUT_FAILED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Records whether stdout (descriptor 1) is closed (`>&-`). It must run before Rust's runtime
/// starts: the runtime reopens a closed standard descriptor on the null device (so no file or
/// socket can take its number), after which every write to it succeeds and a result would be
/// lost with exit 0. The binary calls it from a constructor (`.init_array`, which the C runtime
/// runs before `main`); a stdout on the null device by the user's choice (`>/dev/null`, a
/// parent's DEVNULL) is open, and not taken for closed. What [`emit`] writes to a closed stdout
/// fails the command.
pub fn detect_closed_stdout() {
    #[cfg(unix)]
    {
        use std::os::fd::BorrowedFd;
        // SAFETY: descriptor 1 is only duplicated (and the copy closed), never read or written;
        // when it is closed the duplication fails with EBADF, which is the answer sought.
        let stdout = unsafe { BorrowedFd::borrow_raw(1) };
        let closed = stdout.try_clone_to_owned().is_err();
        STDOUT_CLOSED.store(closed, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Whether the process started with its stdout closed.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Writes results to stdout. A closed or full stdout never panics; it is remembered, and the
/// command then exits non-zero (`stdout_failed`): a script must not take a cut result for a
/// whole one.
pub fn emit(text: &str) {
    use std::io::Write;
    if stdout_closed() {
        let _ = STDOUT_FAILED.set("stdout is closed".into());
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        let _ = STDOUT_FAILED.set(e.to_string());
    }
}

/// Why a result could not be written whole, if it could not.
pub fn stdout_failed() -> Option<&'static str> {
    STDOUT_FAILED.get().map(String::as_str)
}

/// `eprintln!` that never panics: progress and diagnostics are best effort, and a closed or
/// full stderr (`2>&1 | head -c 10`, `2>/dev/full`) must not kill a command mid-way. Every
/// secret the command holds is cut out first ([`redact`]).
#[macro_export]
macro_rules! note {
    () => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr());
    }};
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let text = $crate::output::redact::redact(&format!($($arg)*));
        let _ = writeln!(std::io::stderr(), "{text}");
    }};
}

/// `eprint!` that never panics (a prompt without its newline), secrets cut out.
#[macro_export]
macro_rules! note_inline {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut err = std::io::stderr();
        let text = $crate::output::redact::redact(&format!($($arg)*));
        let _ = write!(err, "{text}");
        let _ = err.flush();
    }};
}

/// Prints a command's result: the document in `format` (`-o json|yaml`), else its summary
/// line(s) for people.
pub fn emit_result<T: Serialize>(
    format: Option<OutputFormat>,
    value: &T,
    summary: impl FnOnce(&T) -> String,
) -> Result<(), Error> {
    match format.and_then(|f| document(f, value).transpose()) {
        Some(text) => emit(&text?),
        None => emit(&summary(value)),
    }
    Ok(())
}

/// Serialises a document as JSON or YAML; `None` for the human formats.
pub fn document<T: Serialize>(format: OutputFormat, value: &T) -> Result<Option<String>, Error> {
    let text = match format {
        OutputFormat::Json => {
            serde_json::to_string_pretty(value).map_err(|e| Error::invalid(e.to_string()))? + "\n"
        }
        OutputFormat::Yaml => {
            serde_saphyr::to_string(value).map_err(|e| Error::invalid(e.to_string()))?
        }
        OutputFormat::Table | OutputFormat::Wide => return Ok(None),
    };
    Ok(Some(text))
}

/// A plain, aligned table in kubectl's style: upper-case headers, no borders.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    use tabled::builder::Builder;
    use tabled::settings::{Padding, Style};
    let mut builder = Builder::default();
    builder.push_record(headers.iter().map(|h| h.to_string()));
    for row in rows {
        builder.push_record(row);
    }
    let mut table = builder.build();
    table.with(Style::blank()).with(Padding::new(0, 2, 0, 0));
    let mut out: String = table
        .to_string()
        .lines()
        .map(|l| l.trim_end().to_string() + "\n")
        .collect();
    if out.is_empty() {
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_aligned_without_borders() {
        let t = table(
            &["VERSION", "NAME"],
            vec![
                vec!["001".into(), "users".into()],
                vec!["10".into(), "x".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "VERSION   NAME");
        assert_eq!(lines[1], "001       users");
        assert_eq!(lines[2], "10        x");
    }
}
