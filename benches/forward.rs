//! `cargo bench --bench forward`: `kubectl pg port-forward` against `kubectl port-forward` to
//! the same pod of the e2e control plane, side by side, with pgbench from the test cache:
//!
//! - a connection per transaction (`pgbench -C`), where each connection's set-up counts
//!   (target ≥ 1.0× kubectl's tps);
//! - steady sessions (target ≥ 1.5×).
//!
//! Rounds alternate the two forwarders, so a slow moment of the shared machine hits both.

#[allow(dead_code)]
#[path = "../tests/e2e/pg.rs"]
mod pg;

#[allow(dead_code)]
#[path = "../tests/e2e/k8s.rs"]
mod k8s;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};

const ROUNDS: usize = 3;
const SECONDS: &str = "8";

/// The port a forwarder announced on its first stdout line, and the forwarder.
fn started(mut child: Child, port_of: impl Fn(&str) -> Option<String>) -> (Child, String) {
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let port = port_of(&line).unwrap_or_else(|| panic!("no port in {line:?}"));
    // Both write more as they go: a closed pipe would end them.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    (child, port)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let binary = env!("CARGO_BIN_EXE_kubectl-pg");
    let plane = k8s::control_plane();
    let ns = format!("kpg-bench-forward-{}", std::process::id());
    let out = plane.kubectl(&["create", "namespace", &ns]);
    assert!(out.status.success());
    let installed = Command::new(binary)
        .args(["install", "-n", &ns, "--timeout", "120s"])
        .env("KUBECONFIG", &plane.kubeconfig)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(installed.success());
    let secret = plane.kubectl(&[
        "get",
        "secret",
        "postgres-credentials",
        "-n",
        &ns,
        "-o",
        "jsonpath={.data.password}",
    ]);
    let password = {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(String::from_utf8_lossy(&secret.stdout).trim())
            .unwrap();
        String::from_utf8(bytes).unwrap()
    };
    let (mut theirs, their_port) = started(
        Command::new(&plane.kubectl)
            .args(["port-forward", "pod/postgres-0", ":5432", "-n", &ns])
            .env("KUBECONFIG", &plane.kubeconfig)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        // "Forwarding from 127.0.0.1:PORT -> 5432"
        |line| {
            line.split(':')
                .nth(1)?
                .split_whitespace()
                .next()
                .map(str::to_string)
        },
    );
    let (mut ours, our_port) = started(
        Command::new(binary)
            .args(["port-forward", "-n", &ns, "127.0.0.1:0"])
            .env("KUBECONFIG", &plane.kubeconfig)
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        // "postgresql://postgres:********@127.0.0.1:PORT/learnflow?sslmode=disable"
        |line| {
            line.split("@127.0.0.1:")
                .nth(1)?
                .split('/')
                .next()
                .map(str::to_string)
        },
    );
    let clients = std::env::var("KPG_POSTGRES")
        .unwrap_or_else(|_| "/var/cache/kubectl-pg-tests/postgres".into());
    let pgbench = |port: &str, args: &[&str]| -> String {
        let out = Command::new(format!("{clients}/clients/bin/pgbench"))
            .args(["-h", "127.0.0.1", "-p", port, "-U", "postgres"])
            .args(args)
            .arg("learnflow")
            .env("PGPASSWORD", &password)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text.into_owned()
    };
    let tps = |text: String| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix("tps = "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no tps in {text}"))
    };
    pgbench(&their_port, &["-i", "-s", "1", "-q"]);
    for (label, extra) in [
        ("a connection per transaction (-C)", &["-C"][..]),
        ("steady sessions", &[][..]),
    ] {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let mut args = vec!["-n", "-S", "-c", "4", "-j", "2", "-T", SECONDS];
            args.extend_from_slice(extra);
            b.push(tps(pgbench(&their_port, &args)));
            a.push(tps(pgbench(&our_port, &args)));
        }
        let (ours_tps, theirs_tps) = (median(a), median(b));
        println!("pgbench -S, 4 clients, {label}:");
        println!("  kubectl pg port-forward {ours_tps:>9.1} tps");
        println!("  kubectl port-forward    {theirs_tps:>9.1} tps");
        println!(
            "  ratio                   {:>9.2}     (target >= {})",
            ours_tps / theirs_tps,
            if extra.is_empty() { "1.5" } else { "1.0" }
        );
    }
    let _ = ours.kill();
    let _ = theirs.kill();
    let _ = ours.wait();
    let _ = theirs.wait();
    let _ = plane.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}
