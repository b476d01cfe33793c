use std::process::ExitCode;

use clap::Parser;
use owo_colors::Stream;

use kubectl_pg::cli::Cli;
use kubectl_pg::output::{paint, Tone};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // clap's usage errors exit 2, which is ours for "Kubernetes not accessible".
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    match kubectl_pg::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(kubectl_pg::Error::Exit(code)) => ExitCode::from(code),
        Err(e) => {
            eprintln!("{} {e}", paint("error:", Tone::Bad, Stream::Stderr));
            for hint in e.hints() {
                eprintln!("{} {hint}", paint("hint:", Tone::Dim, Stream::Stderr));
            }
            ExitCode::from(e.exit_code())
        }
    }
}
