//! End-to-end tests: the real binary against a real PostgreSQL server.
//!
//! Unix only: the control plane and its node are Linux programs, and the tests use Unix
//! processes, signals and modes. The Windows build is tested from here, under Wine
//! (`windows.rs`).
#![cfg(unix)]

mod adversity;
mod cli;
mod clients;
mod cluster;
mod cnpg;
mod data;
mod dotenv;
mod formats;
mod k8s;
mod krew;
mod kubectl;
mod lifecycle;
mod migrate;
mod ops;
mod pg;
mod plane;
// Until the tests against the real apiserver use all of it.
#[allow(dead_code)]
mod proxy;
mod real_cluster;
mod scope;
mod sinks;
mod streams;
mod terminal;
mod tools;
mod upgrade;
mod users;
mod windows;

use std::process::{Command, Output};

/// Runs `kubectl-pg` with `args`, colour off, no DATABASE_URL and no kubeconfig from the
/// environment.
pub fn kpg(args: &[&str]) -> Output {
    kpg_command(args).output().expect("kubectl-pg runs")
}

pub fn kpg_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kubectl-pg"));
    command
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("DATABASE_URL");
    command
}

/// The exit code, stdout and stderr of a run, for assertion messages.
pub trait OutputExt {
    fn code(&self) -> i32;
    fn stdout_text(&self) -> String;
    fn stderr_text(&self) -> String;
    fn describe(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code(),
            self.stdout_text(),
            self.stderr_text()
        )
    }
}

impl OutputExt for Output {
    fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Waits for `child` to exit and collects its output; a child still running after `limit` is
/// killed and the test fails, so a command that hangs fails its test instead of stalling the
/// suite.
#[track_caller]
pub fn output_within(child: std::process::Child, limit: std::time::Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.expect("the child's output is read"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("process {pid} was still running after {limit:?}");
        }
    }
}

/// Where the cross builds (`.ci/cross`), their target directory and the Wine prefix are
/// cached: `$KUBECTL_PG_CROSS_DIR`, default `/var/cache/kubectl-pg-cross`.
pub fn cross_dir() -> std::path::PathBuf {
    std::env::var_os("KUBECTL_PG_CROSS_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(
            || std::path::PathBuf::from("/var/cache/kubectl-pg-cross"),
            std::path::PathBuf::from,
        )
}

pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// A test that needs a cross tool it cannot find: fails in CI (`CI=true`), where `.ci/run`
/// installs them; elsewhere a loud SKIPPED line says what did not run.
pub fn skip_or_fail(test: &str, why: &str) {
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "{test}: {why} (.ci/cross install provides it)"
    );
    eprintln!("\n*** SKIPPED {test}: {why} (run .ci/cross install) ***\n");
}

/// Asserts the exit code, showing the whole run when it differs.
#[track_caller]
pub fn expect_code(output: &Output, code: i32) {
    assert_eq!(output.code(), code, "{}", output.describe());
}

/// Checks until `check` passes, failing the test with its last error after `limit`: a wait on a
/// condition, never a fixed sleep.
pub fn until(
    limit: std::time::Duration,
    what: &str,
    mut check: impl FnMut() -> Result<(), String>,
) {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("{what} within {limit:?}: {e}")
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(250)),
        }
    }
}
