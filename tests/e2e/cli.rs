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
