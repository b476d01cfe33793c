//! `cargo bench --bench cluster`: the cluster commands against the real control plane of the
//! e2e tests (`tests/e2e/k8s.rs`), whole processes, medians.
//!
//! - install: from the moment the pod turns Ready (seen by a watch in this process) until
//!   `kubectl pg install` returns (target < 300 ms), and a no-op install of a healthy release
//!   (target < 1 s);
//! - `kubectl pg status -o json` (database check included) against the real
//!   `kubectl get statefulset R -n N -o json` of the built kubectl (target ≤ 1.2×);
//! - `kubectl pg dsn` (target < 50 ms);
//! - `kubectl-pg --help` start-up (target < 10 ms) and the binary's size (target < 15 MiB).

#[allow(dead_code)]
#[path = "../tests/e2e/pg.rs"]
mod pg;

#[allow(dead_code)]
#[path = "../tests/e2e/k8s.rs"]
mod k8s;

use std::process::Command;
use std::time::{Duration, Instant};

const ROUNDS: usize = 15;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn timed(command: &mut Command) -> Duration {
    let started = Instant::now();
    let out = command.output().expect("command runs");
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let binary = env!("CARGO_BIN_EXE_kubectl-pg");
    let plane = k8s::control_plane();
    let kpg = |args: &[&str]| {
        let mut c = Command::new(binary);
        c.args(args)
            .env("KUBECONFIG", &plane.kubeconfig)
            .env("NO_COLOR", "1")
            .env_remove("DATABASE_URL");
        c
    };
    let kubectl = |args: &[&str]| {
        let out = plane.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let namespaces: Vec<String> = (0..5)
        .map(|round| format!("kpg-bench-{}-{round}", std::process::id()))
        .collect();
    for ns in &namespaces {
        kubectl(&["create", "namespace", ns]);
    }

    // Ready → install returns.
    let mut after_ready = Vec::new();
    for ns in &namespaces {
        let mut child = kpg(&["install", "-n", ns, "--timeout", "120s"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // kubectl's own watches: until the pod exists, then until it is Ready.
        for condition in ["--for=create", "--for=condition=Ready"] {
            kubectl(&[
                "wait",
                "pod/postgres-0",
                "-n",
                ns,
                condition,
                "--timeout=120s",
            ]);
        }
        let ready_at = Instant::now();
        assert!(child.wait().unwrap().success());
        after_ready.push(ready_at.elapsed());
    }
    let ns = namespaces[0].as_str();
    // No-op install of a healthy release.
    let noop: Vec<Duration> = (0..ROUNDS)
        .map(|_| timed(&mut kpg(&["install", "-n", ns])))
        .collect();
    let status: Vec<Duration> = (0..ROUNDS)
        .map(|_| timed(&mut kpg(&["status", "-n", ns, "-o", "json"])))
        .collect();
    let dsn: Vec<Duration> = (0..ROUNDS)
        .map(|_| timed(&mut kpg(&["dsn", "-n", ns])))
        .collect();
    let help: Vec<Duration> = (0..50)
        .map(|_| timed(Command::new(binary).arg("--help")))
        .collect();

    println!(
        "cluster commands against the real control plane, Kubernetes {} (median of {ROUNDS} unless noted):",
        plane.version
    );
    println!(
        "  install: pod Ready -> command returns   {:>7.1} ms  (median of 5, target < 300)",
        ms(median(after_ready))
    );
    println!(
        "  install of a healthy release (no-op)    {:>7.1} ms  (target < 1000)",
        ms(median(noop))
    );
    let status = median(status);
    println!(
        "  status -o json, database check included {:>7.1} ms",
        ms(status)
    );
    let get: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            timed(
                Command::new(&plane.kubectl)
                    .args(["get", "statefulset", "postgres", "-n", ns, "-o", "json"])
                    .env("KUBECONFIG", &plane.kubeconfig),
            )
        })
        .collect();
    let get = median(get);
    println!(
        "  kubectl get statefulset -o json         {:>7.1} ms",
        ms(get)
    );
    println!(
        "  ratio status/kubectl                    {:>7.2}     (target <= 1.20)",
        status.as_secs_f64() / get.as_secs_f64()
    );
    println!(
        "  dsn                                     {:>7.1} ms  (target < 50)",
        ms(median(dsn))
    );
    println!(
        "  --help (median of 50)                   {:>7.2} ms  (target < 10)",
        ms(median(help))
    );
    let size = std::fs::metadata(binary)
        .map(|m| m.len())
        .unwrap_or_default();
    println!(
        "  binary size                             {:>7.2} MiB (target < 15)",
        size as f64 / 1048576.0
    );
    let mut delete = vec!["delete", "namespace", "--wait=false"];
    delete.extend(namespaces.iter().map(String::as_str));
    kubectl(&delete);
}
