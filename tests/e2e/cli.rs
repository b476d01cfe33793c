//! The command line itself: help, version, usage errors and their exit codes.

use crate::{expect_code, kpg, OutputExt};

#[test]
fn version_and_help() {
    let out = kpg(&["--version"]);
    expect_code(&out, 0);
    assert_eq!(
        out.stdout_text().trim(),
        format!("kubectl-pg {}", env!("CARGO_PKG_VERSION"))
    );
    let help = kpg(&["migrate", "--help"]);
    expect_code(&help, 0);
    let text = help.stdout_text();
    for needle in [
        "Examples:",
        "--dsn",
        "--dry-run",
        "--lock-timeout",
        "--namespace",
        "--kubeconfig",
        "up",
        "baseline",
        // The formats it reads, and the command that takes over another tool's database.
        "adopt",
        "--format",
        "golang-migrate",
        "dbmate",
        "flyway",
        "sqlx",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}

#[test]
fn usage_errors_exit_1_not_2() {
    // Exit 2 means "Kubernetes not accessible"; clap's own usage errors must not use it.
    for args in [
        &["nope"][..],
        &["migrate", "up", "--to", "v3"],
        &["migrate", "down", "--steps", "1", "--to", "0"],
        &["migrate", "up", "--lock-timeout", "soon"],
    ] {
        let out = kpg(args);
        expect_code(&out, 1);
        assert!(out.stderr_text().contains("error"), "{}", out.describe());
    }
}

#[test]
fn migrate_without_a_database_says_how_to_give_one() {
    // No --dsn and no kubeconfig: Kubernetes is not accessible (2), and the hint names --dsn.
    let home = tempfile::tempdir().unwrap();
    let out = crate::kpg_command(&["migrate", "up"])
        .env("HOME", home.path())
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    expect_code(&out, 2);
    let err = out.stderr_text();
    assert!(
        err.starts_with("error: no kubeconfig found") && err.contains("hint: give --dsn"),
        "{err}"
    );
}

/// A closed or full stream never aborts a command: diagnostics are best effort, and a result
/// that could not be written whole is a non-zero exit.
#[test]
fn full_or_closed_streams_never_abort() {
    let dev = tempfile::tempdir().unwrap();
    let Some(device) = crate::sinks::full_device(dev.path()) else {
        return;
    };
    let full = || crate::sinks::open(&device);
    let run = |args: &[&str], stdout_full: bool, stderr_full: bool| {
        let mut command = crate::kpg_command(args);
        command.env("KUBECONFIG", "/nonexistent/kubeconfig");
        if stdout_full {
            command.stdout(full());
        }
        if stderr_full {
            command.stderr(full());
        }
        command.output().unwrap()
    };
    // Results that cannot be written: exit 1, never a signal.
    for args in [
        &["install", "--dry-run"][..],
        &["--version"],
        &["--help"],
        &["completion", "bash"],
    ] {
        let out = run(args, true, false);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", out.describe());
    }
    // Progress and errors on a full stderr: the exit code is still the documented one.
    let out = run(&["install", "--dry-run"], false, true);
    expect_code(&out, 0);
    let out = run(&["status"], false, true);
    expect_code(&out, 2);
    // stderr closed altogether.
    let mut command = crate::kpg_command(&["status"]);
    command
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .stderr(std::process::Stdio::null());
    let closed = exit_with_stderr_closed(command);
    assert_eq!(closed, Some(2));
}

/// A closed stdout (`>&-`, which Rust's runtime reopens on the null device) loses every
/// result: exit 1 with the reason on stderr, never 0. A stdout on a file, write-only or
/// read-write, is written: exit 0.
#[test]
fn closed_stdout_and_output_taken_away_are_failures() {
    let shell = |redirect: &str, args: &[&str]| {
        let mut command = std::process::Command::new("sh");
        command
            .arg("-c")
            .arg(format!("exec \"$0\" \"$@\" {redirect}"))
            .arg(env!("CARGO_BIN_EXE_kubectl-pg"))
            .args(args)
            .env("NO_COLOR", "1")
            .env("KUBECONFIG", "/nonexistent/kubeconfig");
        command.output().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let file = format!(">{}", dir.path().join("out").display());
    for args in [
        &["install", "--dry-run"][..],
        &["completion", "bash"],
        &["--version"],
    ] {
        let out = shell(">&-", args);
        expect_code(&out, 1);
        assert!(
            out.stderr_text().contains("stdout is closed"),
            "{args:?}: {}",
            out.describe()
        );
        let out = shell(&file, args);
        expect_code(&out, 0);
        // Opened read-write, as Python's DEVNULL and daemons open the null device.
        let out = shell(&format!("1<>{}", dir.path().join("rw").display()), args);
        expect_code(&out, 0);
    }
    // pg_dump arguments that would take the output away: refused before any connection.
    let local = dir.path().join("x.dump");
    let local = local.to_str().unwrap();
    for (args, says) in [
        (
            &["dump", "-f", local, "--", "-f", "x"][..],
            "inside the pod",
        ),
        (&["dump", "-f", local, "--", "--format=plain"], "--format"),
    ] {
        let out = shell("", args);
        expect_code(&out, 1);
        assert!(
            out.stderr_text().contains(says),
            "{args:?}: {}",
            out.describe()
        );
    }
    assert!(!dir.path().join("x.dump").exists());
    let out = shell(">&-", &["report", "-f", "-"]);
    expect_code(&out, 1);
    assert!(
        out.stderr_text().contains("stdout is closed"),
        "{}",
        out.describe()
    );
}

/// Runs `command` with its stderr descriptor closed (not /dev/null).
fn exit_with_stderr_closed(mut command: std::process::Command) -> Option<i32> {
    use std::os::unix::process::CommandExt;
    // SAFETY: close(2) is async-signal-safe, which is all pre_exec may call.
    unsafe {
        command.pre_exec(|| {
            extern "C" {
                fn close(fd: i32) -> i32;
            }
            close(2);
            Ok(())
        });
    }
    command.status().unwrap().code()
}

/// Values no run could honour are refused before any connection, naming the flag.
#[test]
fn impossible_durations_counts_and_versions_are_refused() {
    for (args, needle) in [
        (&["status", "--timeout", "99999999999999s"][..], "--timeout"),
        (
            &["status", "--request-timeout", "100000h"],
            "--request-timeout",
        ),
        (
            &["migrate", "up", "--lock-timeout", "700h"],
            "--lock-timeout",
        ),
        (
            &["migrate", "up", "--statement-timeout", "600h"],
            "--statement-timeout",
        ),
        (&["migrate", "down", "--steps", "0"], "--steps"),
        (&["migrate", "up", "--to", "0"], "--to"),
        (
            &[
                "migrate",
                "up",
                "--to",
                "999",
                "--dsn",
                "postgresql://127.0.0.1:1/x",
            ],
            "--to 999",
        ),
    ] {
        let out = crate::kpg(args);
        expect_code(&out, 1);
        assert!(
            out.stderr_text().contains(needle),
            "{args:?}: {}",
            out.describe()
        );
    }
}

#[test]
fn errors_are_one_line_and_empty_connection_strings_are_no_connection_strings() {
    let dir = tempfile::tempdir().unwrap();
    // A kubeconfig the YAML parser refuses: one error line, no source diagram.
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "apiVersion: v1\nclusters: [\n  - name: x\n").unwrap();
    let out = kpg(&["status", "--kubeconfig", broken.to_str().unwrap()]);
    expect_code(&out, 2);
    let text = out.stderr_text();
    assert_eq!(
        text.lines().filter(|l| !l.starts_with("hint:")).count(),
        1,
        "{text}"
    );
    assert!(!text.contains("-->") && !text.contains(" | "), "{text}");
    // A server that refuses connections: no Debug-style wrapper names.
    let refused = dir.path().join("refused.yaml");
    std::fs::write(
        &refused,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\n\
         contexts:\n- name: c\n  context: {cluster: c, user: u}\nusers:\n- name: u\n  user: {token: abc}\n\
         current-context: c\n",
    )
    .unwrap();
    let out = kpg(&["status", "--kubeconfig", refused.to_str().unwrap()]);
    expect_code(&out, 2);
    assert!(
        !out.stderr_text().contains("ServiceError"),
        "{}",
        out.describe()
    );

    // `--dsn ""` is refused at once; an empty DATABASE_URL is as good as unset.
    let started = std::time::Instant::now();
    let out = kpg(&["migrate", "status", "--dsn", ""]);
    expect_code(&out, 1);
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    let out = crate::kpg_command(&["migrate", "up", "--dry-run"])
        .env("DATABASE_URL", "")
        .env("KUBECONFIG", dir.path().join("none"))
        .output()
        .unwrap();
    expect_code(&out, 0);
    assert!(out.stdout_text().contains("Plan"), "{}", out.describe());
}

/// What `-f` cannot write safely, and a script that cannot be restored truthfully, are refused
/// before any connection: exit 1 (not 2, though no kubeconfig exists), nothing created.
#[test]
fn unsafe_files_and_untruthful_scripts_are_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        crate::kpg_command(args)
            .env("HOME", dir.path())
            .env_remove("KUBECONFIG")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let dangling = dir.path().join("dangling.dump");
    std::os::unix::fs::symlink("missing/target.dump", &dangling).unwrap();
    let socket = dir.path().join("s.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    for (target, why) in [
        (dangling.to_str().unwrap(), "dangling symlink"),
        (dir.path().to_str().unwrap(), "directory"),
        (socket.to_str().unwrap(), "socket"),
    ] {
        for command in ["dump", "report"] {
            let out = run(&[command, "-f", target]);
            expect_code(&out, 1);
            assert!(out.stderr_text().contains(why), "{}", out.describe());
        }
    }
    assert!(
        !dir.path().join("missing").exists(),
        "no dangling target created"
    );

    let marker = "\n--\n-- PostgreSQL database dump complete\n--\n";
    for (script, why) in [
        (
            format!("insert into t values (1);\nCOMMIT;\ninsert into t values (2);{marker}"),
            "COMMIT",
        ),
        (format!("insert into t values (1);\n\\q{marker}"), "\\q"),
        (
            format!("\\set ON_ERROR_STOP off\ninsert into t values (1);{marker}"),
            "ON_ERROR_STOP",
        ),
        (
            "create table t (a int);\ninsert into t values (1);\n".to_string(),
            "end marker",
        ),
    ] {
        let file = dir.path().join("script.sql");
        std::fs::write(&file, &script).unwrap();
        let out = run(&["restore", "-f", file.to_str().unwrap()]);
        expect_code(&out, 1);
        let err = out.stderr_text();
        assert!(
            err.contains(why) && err.contains("nothing was run"),
            "{}",
            out.describe()
        );
    }
}
