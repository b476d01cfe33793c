//! `cargo bench --bench cluster`: the cluster commands against the real control plane of the
//! e2e tests (`tests/e2e/k8s.rs`), whole processes, medians.
//!
//! - install: from the moment the pod turns Ready (seen by a watch in this process) until
//!   `kubectl pg install` returns (target < 300 ms), and a no-op install of a healthy release
//!   (target < 1 s);
//! - `kubectl pg status -o json` (database check included) against the real
//!   `kubectl get statefulset R -n N -o json` of the built kubectl (target ≤ 1.2×);
//! - `kubectl pg dsn` (target < 50 ms);
//! - `kubectl-pg --help` start-up (target < 10 ms) and the binary's size (target < 15 MiB);
//! - 100 migrations through the cluster against the same with `--dsn` (target ≤ 1.3×);
//! - `status -A -o json` at 5 and 30 releases against `kubectl get sts -A -o json` (target
//!   ≤ 1.0×), with the CPU each run costs the command and the whole machine, and the growth
//!   per release of both.

#[allow(dead_code)]
#[path = "../tests/e2e/pg.rs"]
mod pg;

#[allow(dead_code)]
#[path = "../tests/e2e/k8s.rs"]
mod k8s;

#[allow(dead_code)]
mod common;
use common::{median, ms, timed};
use std::process::Command;
use std::time::{Duration, Instant};

const MIGRATIONS: usize = 100;
const ROUNDS: usize = 15;

/// What a command costs, per run: the median wall time, and the mean CPU time of the command
/// itself and of the whole machine while it runs.
struct Cost {
    wall: Duration,
    own_cpu: Duration,
    machine_cpu: Duration,
}

/// Runs `run` `rounds` times and measures it. The command's CPU comes from this process's
/// reaped children (`/proc/self/stat`), the machine's from `/proc/stat`, both in clock ticks.
fn measured(rounds: usize, mut run: impl FnMut()) -> Cost {
    fn ticks(path: &str, fields: &[usize]) -> u64 {
        let text = std::fs::read_to_string(path).unwrap();
        // /proc/self/stat's second field is "(comm)"; what follows splits on spaces.
        let rest = text.rsplit_once(')').map_or(text.as_str(), |(_, r)| r);
        let values: Vec<u64> = rest
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        fields.iter().map(|&i| values[i]).sum()
    }
    // Children's cutime and cstime (fields 16 and 17, counted from 1, after the comm).
    let children = || ticks("/proc/self/stat", &[13, 14]);
    // user nice system irq softirq steal of the first "cpu" line (idle and iowait left out).
    let machine = || {
        let stat = std::fs::read_to_string("/proc/stat").unwrap();
        let line = stat.lines().next().unwrap().trim_start_matches("cpu");
        let v: Vec<u64> = line
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
    };
    let tick = |n: u64| Duration::from_millis(n * 10) / rounds as u32;
    let (own, all) = (children(), machine());
    let mut walls = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        run();
        walls.push(started.elapsed());
    }
    Cost {
        wall: median(walls),
        own_cpu: tick(children() - own),
        machine_cpu: tick(machine() - all),
    }
}

fn decode_base64(text: &str) -> String {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap();
    String::from_utf8(bytes).unwrap()
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

    // 100 migrations through the cluster (the in-process port-forward) against the same with
    // --dsn through `kubectl port-forward`: each round a fresh release's database, then a fresh
    // database on the same server.
    let dir = tempfile::tempdir().unwrap();
    for v in 1..=MIGRATIONS {
        let up = format!(
            "CREATE TABLE bench_{v} (id serial PRIMARY KEY, payload text NOT NULL);\n\
             INSERT INTO bench_{v} (payload) SELECT md5(g::text) FROM generate_series(1, 20) g;\n"
        );
        std::fs::write(dir.path().join(format!("{v:03}_t{v}.up.sql")), up).unwrap();
        let down = format!("DROP TABLE bench_{v};\n");
        std::fs::write(dir.path().join(format!("{v:03}_t{v}.down.sql")), down).unwrap();
    }
    let dir_arg = dir.path().to_str().unwrap();
    let clients = std::env::var("KPG_POSTGRES")
        .unwrap_or_else(|_| "/var/cache/kubectl-pg-tests/postgres".into());
    let mut through_cluster = Vec::new();
    let mut through_dsn = Vec::new();
    for ns in &namespaces[1..4] {
        let out = plane.kubectl(&[
            "get",
            "secret",
            "postgres-credentials",
            "-n",
            ns,
            "-o",
            "jsonpath={.data.password}",
        ]);
        let password = decode_base64(String::from_utf8_lossy(&out.stdout).trim());
        let mut forward = Command::new(&plane.kubectl)
            .args(["port-forward", "pod/postgres-0", ":5432", "-n", ns])
            .env("KUBECONFIG", &plane.kubeconfig)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // "Forwarding from 127.0.0.1:PORT -> 5432"
        let mut reader = std::io::BufReader::new(forward.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
        // kubectl writes a line per connection: a closed pipe would end it.
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        let port = line
            .split(':')
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap()
            .to_string();
        let created = Command::new(format!("{clients}/clients/bin/psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-c", "CREATE DATABASE bench_dsn"])
            .env("PGPASSWORD", &password)
            .output()
            .unwrap();
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stderr)
        );
        through_cluster.push(timed(&mut kpg(&[
            "migrate", "up", "-n", ns, "--dir", dir_arg,
        ])));
        let dsn = format!("postgresql://postgres@127.0.0.1:{port}/bench_dsn");
        through_dsn.push(timed(
            kpg(&["migrate", "up", "--dir", dir_arg])
                .env("DATABASE_URL", &dsn)
                .env("PGPASSWORD", &password),
        ));
        let _ = forward.kill();
        let _ = forward.wait();
    }
    let (cluster_ms, dsn_ms) = (median(through_cluster), median(through_dsn));
    println!(
        "  migrate up, {MIGRATIONS} migrations, through the cluster {:>7.1} ms",
        ms(cluster_ms)
    );
    println!(
        "  the same with --dsn via kubectl port-forward {:>7.1} ms",
        ms(dsn_ms)
    );
    println!(
        "  ratio cluster/--dsn                     {:>7.2}     (target <= 1.30)",
        cluster_ms.as_secs_f64() / dsn_ms.as_secs_f64()
    );

    // status -A against kubectl get sts -A -o json, at 5 releases and at 30, with the CPU
    // time each run costs the whole machine (client, API server, node and PostgreSQL servers
    // share its cores here): a wall-clock floor that no client-side change can lower.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let status_all = |label: &str| {
        let ours = measured(ROUNDS, || {
            timed(&mut kpg(&["status", "-A", "-o", "json"]));
        });
        let theirs = measured(ROUNDS, || {
            timed(
                Command::new(&plane.kubectl)
                    .args(["get", "statefulsets", "-A", "-o", "json"])
                    .env("KUBECONFIG", &plane.kubeconfig),
            );
        });
        println!(
            "  status -A -o json at {label:>2} releases       {:>7.1} ms, kubectl get sts -A -o json {:>6.1} ms, ratio {:.2} (target <= 1.00)",
            ms(ours.wall), ms(theirs.wall), ours.wall.as_secs_f64() / theirs.wall.as_secs_f64()
        );
        println!(
            "    CPU per run: the command itself {:>6.1} ms (kubectl {:>6.1} ms); the whole machine {:>6.1} ms (kubectl {:>6.1} ms)",
            ms(ours.own_cpu), ms(theirs.own_cpu), ms(ours.machine_cpu), ms(theirs.machine_cpu),
        );
        println!(
            "    floor on this machine's {cores} cores: the machine's CPU per run / {cores} = {:>6.1} ms",
            ms(ours.machine_cpu) / cores as f64
        );
        ours
    };
    let at_5 = status_all("5");
    let more: Vec<String> = (5..30)
        .map(|round| format!("kpg-bench-{}-{round}", std::process::id()))
        .collect();
    let mut installs = Vec::new();
    for ns in &more {
        kubectl(&["create", "namespace", ns]);
        installs.push(
            kpg(&["install", "-n", ns, "--timeout", "300s"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    for mut child in installs {
        assert!(child.wait().unwrap().success());
    }
    let at_30 = status_all("30");
    println!(
        "  status -A growth per release            {:>7.2} ms wall, {:.2} ms of the machine's CPU ({:.2} ms of the command's)",
        (ms(at_30.wall) - ms(at_5.wall)) / 25.0,
        (ms(at_30.machine_cpu) - ms(at_5.machine_cpu)) / 25.0,
        (ms(at_30.own_cpu) - ms(at_5.own_cpu)) / 25.0
    );

    let mut delete = vec!["delete", "namespace", "--wait=false"];
    delete.extend(namespaces.iter().chain(&more).map(String::as_str));
    kubectl(&delete);
}
