//! `cargo bench --bench cluster`: the cluster commands against the test API server, whole
//! processes, medians.
//!
//! - install: from the moment the pod turns Ready (seen by a watch in this process) until
//!   `kubectl pg install` returns (target < 300 ms), and a no-op install of a healthy release
//!   (target < 1 s);
//! - `kubectl pg status -o json` (database check included) against the real
//!   `kubectl get statefulset R -n N -o json` (target ≤ 1.2×), when kubectl is on PATH;
//! - `kubectl pg dsn` (target < 50 ms);
//! - `kubectl-pg --help` start-up (target < 10 ms) and the binary's size (target < 15 MiB).

#[allow(dead_code)]
#[path = "../tests/e2e/pg.rs"]
mod pg;

// Its unit tests are compiled here too when clippy checks every target.
#[allow(unused_imports)]
#[path = "../tests/e2e/apiserver/mod.rs"]
mod apiserver;

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
    let cluster = apiserver::TestCluster::start();
    let kpg = |args: &[&str]| {
        let mut c = Command::new(binary);
        c.args(args)
            .env("KUBECONFIG", &cluster.kubeconfig)
            .env("NO_COLOR", "1");
        c
    };

    // Ready → install returns.
    let mut after_ready = Vec::new();
    for round in 0..5 {
        let ns = format!("bench{round}");
        let mut child = kpg(&["install", "-n", &ns, "--timeout", "60s"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        cluster.wait_ready(&ns, "postgres-0", Duration::from_secs(60));
        let ready_at = Instant::now();
        assert!(child.wait().unwrap().success());
        after_ready.push(ready_at.elapsed());
    }
    // No-op install of a healthy release.
    let noop: Vec<Duration> = (0..ROUNDS)
        .map(|_| timed(&mut kpg(&["install", "-n", "bench0"])))
        .collect();
    let status: Vec<Duration> = (0..ROUNDS)
        .map(|_| timed(&mut kpg(&["status", "-n", "bench0", "-o", "json"])))
        .collect();
    let dsn: Vec<Duration> = (0..ROUNDS)
        .map(|_| timed(&mut kpg(&["dsn", "-n", "bench0"])))
        .collect();
    let help: Vec<Duration> = (0..50)
        .map(|_| timed(Command::new(binary).arg("--help")))
        .collect();

    println!("cluster commands against the test API server (median of {ROUNDS} unless noted):");
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
    let kubectl = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("kubectl"))
            .find(|p| p.is_file())
    });
    if let Some(kubectl) = kubectl {
        let get: Vec<Duration> = (0..ROUNDS)
            .map(|_| {
                timed(
                    Command::new(&kubectl)
                        .args([
                            "get",
                            "statefulset",
                            "postgres",
                            "-n",
                            "bench0",
                            "-o",
                            "json",
                        ])
                        .envs(cluster.kubeconfig_env()),
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
    }
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
}
