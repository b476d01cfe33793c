//! `cargo bench --bench ha`: highly available releases on the real CloudNativePG operator of the
//! e2e control plane (`tests/e2e/k8s.rs`), whole processes, medians, side by side:
//!
//! - `kubectl pg status R -o json` of a 3-instance Cluster (replication asked of the primary
//!   included) against `kubectl cnpg status R` of the reference client built from the same
//!   module (target ≤ 1.0×);
//! - `kubectl pg status -A -o json` with Clusters and StatefulSet releases mixed, at 1 + 2 and
//!   2 + 2 releases, against `kubectl get clusters,statefulsets -A -o json`;
//! - install of a 3-instance Cluster, switchover, and a failover: from the primary's deletion
//!   to the first write that succeeds through `kubectl pg port-forward`.

#[allow(dead_code)]
#[path = "../tests/e2e/pg.rs"]
mod pg;

#[allow(dead_code)]
#[path = "../tests/e2e/k8s.rs"]
mod k8s;

#[allow(dead_code)]
mod common;
use common::{median, ms, timed};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: usize = 15;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let binary = env!("CARGO_BIN_EXE_kubectl-pg");
    let plane = k8s::control_plane();
    plane.cnpg().expect("CloudNativePG's operator starts");
    let kpg = |args: &[&str]| {
        let mut c = Command::new(binary);
        c.args(args)
            .env("KUBECONFIG", &plane.kubeconfig)
            .env("NO_COLOR", "1")
            .env("PATH", path_with(&plane.kubectl))
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
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let id = std::process::id();
    let (ha, single) = (format!("kpg-bench-ha-{id}"), format!("kpg-bench-one-{id}"));
    for ns in [&ha, &single] {
        kubectl(&["create", "namespace", ns]);
    }
    let install = timed(&mut kpg(&[
        "install",
        "pg",
        "-n",
        &ha,
        "--instances",
        "3",
        "--timeout",
        "5m",
    ]));
    for release in ["a", "b"] {
        timed(&mut kpg(&[
            "install",
            release,
            "-n",
            &single,
            "--timeout",
            "3m",
        ]));
    }

    let ours: Vec<Duration> = (0..ROUNDS)
        .map(|_| timed(&mut kpg(&["status", "pg", "-n", &ha, "-o", "json"])))
        .collect();
    let cnpg = plane.kubectl_cnpg();
    let theirs: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            timed(
                Command::new(&cnpg)
                    .args(["status", "pg", "-n", &ha])
                    .env("KUBECONFIG", &plane.kubeconfig),
            )
        })
        .collect();
    let listing = |rounds: usize| -> (Duration, Duration) {
        let ours: Vec<Duration> = (0..rounds)
            .map(|_| timed(&mut kpg(&["status", "-A", "-o", "json"])))
            .collect();
        let theirs: Vec<Duration> = (0..rounds)
            .map(|_| {
                timed(
                    Command::new(&plane.kubectl)
                        .args(["get", "clusters,statefulsets", "-A", "-o", "json"])
                        .env("KUBECONFIG", &plane.kubeconfig),
                )
            })
            .collect();
        (median(ours), median(theirs))
    };
    let (list3, kubectl3) = listing(ROUNDS);

    let switchover = timed(&mut kpg(&["switchover", "pg", "-n", &ha]));

    // Failover: the primary deleted, then writes through kubectl-pg's port-forward until one
    // succeeds.
    let mut forward = kpg(&[
        "port-forward",
        "pg",
        "-n",
        &ha,
        "127.0.0.1:0",
        "--show-password",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(forward.stdout.take().unwrap()).lines();
    let dsn = lines.next().unwrap().unwrap();
    let psql = pg::bindir().join("psql");
    let write = || {
        Command::new(&psql)
            .args([
                &dsn,
                "-XtAqc",
                "create table if not exists f (v int); insert into f values (1)",
            ])
            .env("PGCONNECT_TIMEOUT", "2")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(
        write(),
        "a write through the port-forward before the failover"
    );
    let primary = kubectl(&[
        "get",
        "cluster",
        "pg",
        "-n",
        &ha,
        "-o",
        "jsonpath={.status.currentPrimary}",
    ]);
    let deleted = Instant::now();
    kubectl(&["delete", "pod", &primary, "-n", &ha, "--wait=false"]);
    while !write() {
        assert!(
            deleted.elapsed() < Duration::from_secs(120),
            "no write after the failover"
        );
        // Each attempt is a whole psql connection; a short pause keeps them from crowding.
        std::thread::sleep(Duration::from_millis(100));
    }
    let failover = deleted.elapsed();
    let _ = forward.kill();
    let _ = forward.wait();

    // A second Cluster in the listing.
    let more = format!("kpg-bench-ha2-{id}");
    kubectl(&["create", "namespace", &more]);
    timed(&mut kpg(&[
        "install",
        "pg",
        "-n",
        &more,
        "--instances",
        "2",
        "--timeout",
        "5m",
    ]));
    let (list4, kubectl4) = listing(ROUNDS);

    println!(
        "highly available releases on CloudNativePG, Kubernetes {} (median of {ROUNDS}):",
        plane.version
    );
    let (a, b) = (median(ours), median(theirs));
    println!(
        "  status of 3 instances: kubectl pg {:>7.1} ms, kubectl cnpg {:>7.1} ms, ratio {:.2} (target <= 1.0)",
        ms(a),
        ms(b),
        a.as_secs_f64() / b.as_secs_f64()
    );
    for (n, ours, theirs) in [("1+2", list3, kubectl3), ("2+2", list4, kubectl4)] {
        println!(
            "  status -A, {n} Clusters+StatefulSets: kubectl pg {:>7.1} ms, kubectl get {:>7.1} ms, ratio {:.2}",
            ms(ours),
            ms(theirs),
            ours.as_secs_f64() / theirs.as_secs_f64()
        );
    }
    println!(
        "  install --instances 3: {:.1} s; switchover: {:.1} s; failover, deletion to a write through port-forward: {:.1} s",
        install.as_secs_f64(),
        switchover.as_secs_f64(),
        failover.as_secs_f64()
    );
    for ns in [&ha, &single, &more] {
        let _ = plane.kubectl(&["delete", "namespace", ns, "--wait=false"]);
    }
}

/// PATH with the built kubectl's directory first (psql in the pod goes through it).
fn path_with(kubectl: &std::path::Path) -> std::ffi::OsString {
    let mut dirs = vec![kubectl.parent().unwrap().to_path_buf()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap()
}
