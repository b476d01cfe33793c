use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use owo_colors::Stream;

use kubectl_pg::cli::Cli;
use kubectl_pg::output::{emit, paint, Tone};

/// Whether stdout was closed (`>&-`) must be asked before Rust's runtime reopens a closed
/// descriptor on the null device, that is before `main`: the C runtime (glibc, musl) runs the
/// functions of `.init_array` first. Elsewhere nothing is detected.
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static DETECT_CLOSED_STDOUT: extern "C" fn() = {
    extern "C" fn detect() {
        kubectl_pg::output::detect_closed_stdout();
    }
    detect
};

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // kubectl's plugin completion (through kubectl_complete-pg) speaks Cobra's protocol.
    if args.get(1).is_some_and(|a| a == "__complete") {
        let words: Vec<String> = args[2..]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        emit(&kubectl_pg::complete(&words));
        return ExitCode::SUCCESS;
    }
    // An empty DATABASE_URL is no DATABASE_URL (as `export DATABASE_URL=` means to a shell
    // user), not a connection string to retry; `--dsn ""` is refused by the parser. Nothing
    // else runs yet, so changing the environment races with no thread.
    if std::env::var_os("DATABASE_URL").is_some_and(|v| v.is_empty()) {
        std::env::remove_var("DATABASE_URL");
    }
    let mut command = Cli::command();
    let invoked_as_plugin = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|n| n.to_string_lossy().starts_with("kubectl-"));
    if invoked_as_plugin {
        command = command.bin_name("kubectl pg");
    }
    let parsed = command
        .try_get_matches_from(args)
        .and_then(|matches| Cli::from_arg_matches(&matches));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            let printed = e.print().is_ok();
            if !e.use_stderr() && kubectl_pg::output::stdout_closed() {
                kubectl_pg::note!(
                    "{} cannot write to stdout: stdout is closed",
                    paint("error:", Tone::Bad, Stream::Stderr)
                );
                return ExitCode::from(1);
            }
            // clap's usage errors exit 2, which is ours for "Kubernetes not accessible"; help
            // or version that could not be written whole is a failure too.
            return ExitCode::from(if e.use_stderr() || !printed { 1 } else { 0 });
        }
    };
    match kubectl_pg::run(cli) {
        // A result cut short (stdout closed or full) is not a success.
        Ok(()) => match kubectl_pg::output::stdout_failed() {
            Some(reason) => {
                kubectl_pg::note!(
                    "{} cannot write the result to stdout: {reason}",
                    paint("error:", Tone::Bad, Stream::Stderr)
                );
                ExitCode::from(1)
            }
            None => ExitCode::SUCCESS,
        },
        Err(kubectl_pg::Error::Exit(code)) => ExitCode::from(code),
        Err(e) => {
            kubectl_pg::note!("{} {e}", paint("error:", Tone::Bad, Stream::Stderr));
            for hint in e.hints() {
                kubectl_pg::note!("{} {hint}", paint("hint:", Tone::Dim, Stream::Stderr));
            }
            ExitCode::from(e.exit_code())
        }
    }
}
