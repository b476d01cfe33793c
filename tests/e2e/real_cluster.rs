//! The main scenarios against a real cluster, opt-in:
//! `KUBECTL_PG_E2E_CONTEXT=kind-kind cargo test --test e2e real_cluster`.
//! It uses the user's kubeconfig, works in a namespace of its own and removes it afterwards.

use crate::{expect_code, kpg_command, OutputExt};

#[test]
fn real_cluster_scenarios() {
    let Ok(context) = std::env::var("KUBECTL_PG_E2E_CONTEXT") else {
        eprintln!("KUBECTL_PG_E2E_CONTEXT is not set: skipping the real-cluster scenarios");
        return;
    };
    let ns = format!("kubectl-pg-e2e-{}", std::process::id());
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--context", &context, "-n", &ns]);
        let mut command = kpg_command(&all);
        // The user's own kubeconfig, which kpg_command hides from every other test.
        match std::env::var_os("KUBECONFIG") {
            Some(path) => command.env("KUBECONFIG", path),
            None => command.env_remove("KUBECONFIG"),
        };
        command.output().unwrap()
    };
    let install = run(&["install", "--migrate", "--timeout", "10m", "-o", "json"]);
    expect_code(&install, 0);
    let doc: serde_json::Value = serde_json::from_slice(&install.stdout).unwrap();
    assert_eq!(doc["phase"], "Healthy", "{}", install.describe());
    assert_eq!(doc["migrations_applied_count"], 6);
    assert_eq!(doc["migrations_applied"][5], "006");
    expect_code(&run(&["install"]), 0);
    let status = run(&["status", "-o", "json"]);
    expect_code(&status, 0);
    assert!(run(&["dsn"])
        .stdout_text()
        .starts_with("postgresql://postgres:"));
    let psql = run(&["psql", "--", "-At", "-c", "select count(*) from users"]);
    expect_code(&psql, 0);
    assert_eq!(psql.stdout_text().trim(), "0");
    let migrations = run(&["migrate", "status", "-o", "json"]);
    expect_code(&migrations, 0);
    expect_code(&run(&["uninstall", "--delete-data", "--yes"]), 0);
    let _ = std::process::Command::new("kubectl")
        .args([
            "--context",
            &context,
            "delete",
            "namespace",
            &ns,
            "--wait=false",
        ])
        .output();
}
