//! Starts the e2e tests' real control plane by hand (building it first when missing) and
//! leaves it running, so `kubectl` and `kubectl pg` can be pointed at it:
//!
//! ```text
//! cargo run --example test-cluster -- --kubeconfig /tmp/e2e.kubeconfig [--cnpg]
//! ```
//!
//! `--cnpg` also starts CloudNativePG's operator (CRDs first) and prints `cnpg: ready` once it
//! answers.
//!
//! Ctrl-C stops every process it started.

#[path = "../tests/e2e/k8s.rs"]
#[allow(dead_code)]
mod k8s;

use std::path::PathBuf;

const USAGE: &str = "usage: test-cluster [--kubeconfig PATH] [--cnpg]";

fn main() {
    let mut args = std::env::args().skip(1);
    let mut target: Option<PathBuf> = None;
    let mut cnpg = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--kubeconfig" => target = args.next().map(PathBuf::from),
            other if other.starts_with("--kubeconfig=") => {
                target = Some(PathBuf::from(&other["--kubeconfig=".len()..]))
            }
            "--cnpg" => cnpg = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => {
                eprintln!("error: unexpected argument {other:?}\n{USAGE}");
                std::process::exit(1);
            }
        }
    }
    let plane = k8s::control_plane();
    let path = target.unwrap_or_else(|| plane.kubeconfig.clone());
    if path != plane.kubeconfig {
        std::fs::copy(&plane.kubeconfig, &path).expect("write the kubeconfig");
    }
    println!("kubeconfig: {}", path.display());
    println!("kubectl: {}", plane.kubectl.display());
    println!(
        "Kubernetes v{} at {}; state and logs in {}",
        plane.version,
        plane.server,
        plane.state.display()
    );
    println!(
        "\nTry it:\n  export KUBECONFIG={}\n  {} get nodes",
        path.display(),
        plane.kubectl.display()
    );
    if cnpg {
        match plane.cnpg() {
            Ok(()) => println!(
                "cnpg: ready\n  kubectl-cnpg: {}",
                plane.kubectl_cnpg().display()
            ),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
    }
    println!("\nPods run real PostgreSQL servers on this machine. Press Ctrl-C to stop.");
    // Ctrl-C reaches the whole process group: kpg-cluster stops its components and pods
    // itself; this process only waits for it to finish.
    k8s::wait();
}
