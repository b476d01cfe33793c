//! `cargo bench --bench dump`: `kubectl pg dump` against the floor it must match, on the real
//! control plane of the e2e tests: `kubectl exec POD -- pg_dump -Fc > file` on the same release,
//! a database whose custom-format dump is 60 MB or more. Throughput (target ≥ 0.9× the
//! floor) and the plugin's peak RSS (from /usr/bin/time; flat whatever the size).

#[allow(dead_code)]
#[path = "../tests/e2e/pg.rs"]
mod pg;

#[allow(dead_code)]
#[path = "../tests/e2e/k8s.rs"]
mod k8s;

#[allow(dead_code)]
mod common;
use common::median;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: usize = 5;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let binary = env!("CARGO_BIN_EXE_kubectl-pg");
    let plane = k8s::control_plane();
    let ns = format!("kpg-bench-dump-{}", std::process::id());
    let kpg = |args: &[&str]| {
        let mut c = Command::new(binary);
        c.args(args)
            .env("KUBECONFIG", &plane.kubeconfig)
            .env("NO_COLOR", "1")
            .env_remove("DATABASE_URL");
        c
    };
    let run = |c: &mut Command| {
        let out = c.output().expect("runs");
        assert!(
            out.status.success(),
            "{c:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    run(&mut kpg(&["install", "-n", &ns, "--timeout", "120s"]));
    // Random hex text: pg_dump's compression halves it, no more.
    let fill = "create table blob as select i, md5(random()::text) || md5(random()::text) || md5(random()::text) \
                || md5(random()::text) || md5(random()::text) || md5(random()::text) as t \
                from generate_series(1, 700000) i;";
    run(&mut kpg(&[
        "psql",
        "-n",
        &ns,
        "--",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        fill,
    ]));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bench.dump");
    let floor_file = dir.path().join("floor.dump");

    let mut ours = Vec::new();
    let mut floor = Vec::new();
    let mut rss_kib = Vec::new();
    let mut bytes = 0u64;
    for _ in 0..ROUNDS {
        // The plugin, under /usr/bin/time for its peak RSS.
        let started = Instant::now();
        let out = run(Command::new("/usr/bin/time")
            .args([
                "-f",
                "%M",
                binary,
                "dump",
                "-n",
                &ns,
                "-f",
                file.to_str().unwrap(),
            ])
            .env("KUBECONFIG", &plane.kubeconfig)
            .env("NO_COLOR", "1"));
        ours.push(started.elapsed());
        let stderr = String::from_utf8_lossy(&out.stderr);
        rss_kib.push(
            stderr
                .lines()
                .last()
                .and_then(|l| l.trim().parse::<u64>().ok())
                .unwrap_or(0),
        );
        bytes = std::fs::metadata(&file).unwrap().len();

        // The floor: kubectl exec with stdout redirected to a file.
        let target = std::fs::File::create(&floor_file).unwrap();
        let started = Instant::now();
        let status = Command::new(&plane.kubectl)
            .args([
                "--kubeconfig",
                plane.kubeconfig.to_str().unwrap(),
                "-n",
                &ns,
                "exec",
                "postgres-0",
                "-c",
                "postgres",
                "--",
                "pg_dump",
                "-U",
                "postgres",
                "-d",
                "learnflow",
                "-Fc",
            ])
            .stdout(Stdio::from(target))
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        floor.push(started.elapsed());
    }
    let floor_bytes = std::fs::metadata(&floor_file).unwrap().len();
    let (ours, floor) = (median(ours), median(floor));
    let mib = |b: u64| b as f64 / 1048576.0;
    let rate = |b: u64, d: Duration| mib(b) / d.as_secs_f64();
    rss_kib.sort();
    println!(
        "dump against the real control plane, Kubernetes {} (median of {ROUNDS}):",
        plane.version
    );
    println!(
        "  dump size                                {:>8.1} MiB (kubectl exec: {:.1} MiB)",
        mib(bytes),
        mib(floor_bytes)
    );
    println!(
        "  kubectl pg dump -f                       {:>8.2} s  {:>7.1} MiB/s",
        ours.as_secs_f64(),
        rate(bytes, ours)
    );
    println!(
        "  kubectl exec ... pg_dump -Fc > file      {:>8.2} s  {:>7.1} MiB/s",
        floor.as_secs_f64(),
        rate(floor_bytes, floor)
    );
    println!(
        "  throughput ratio                         {:>8.2}     (target >= 0.90)",
        rate(bytes, ours) / rate(floor_bytes, floor)
    );
    println!(
        "  peak RSS of kubectl pg dump (max)        {:>8.1} MiB",
        rss_kib.last().copied().unwrap_or(0) as f64 / 1024.0
    );
    let _ = plane.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}
