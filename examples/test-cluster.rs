//! Starts the e2e test API server by hand and leaves it running, so a real `kubectl` (and
//! `kubectl pg`) can be pointed at it:
//!
//! ```text
//! cargo run --example test-cluster -- --kubeconfig /tmp/e2e.kubeconfig
//! ```

#[allow(dead_code)]
#[path = "../tests/e2e/pg.rs"]
mod pg;

#[path = "../tests/e2e/apiserver/mod.rs"]
mod apiserver;

use std::path::PathBuf;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut target: Option<PathBuf> = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--kubeconfig" => target = args.next().map(PathBuf::from),
            other if other.starts_with("--kubeconfig=") => {
                target = Some(PathBuf::from(&other["--kubeconfig=".len()..]))
            }
            "-h" | "--help" => {
                println!("usage: test-cluster [--kubeconfig PATH]");
                return;
            }
            other => {
                eprintln!(
                    "error: unexpected argument {other:?}\nusage: test-cluster [--kubeconfig PATH]"
                );
                std::process::exit(1);
            }
        }
    }
    let cluster = apiserver::TestCluster::start();
    let path =
        target.unwrap_or_else(|| std::env::temp_dir().join("kubectl-pg-test-cluster.kubeconfig"));
    let text = std::fs::read_to_string(&cluster.kubeconfig).expect("kubeconfig written");
    std::fs::write(&path, &text).expect("write the kubeconfig");
    println!("Test API server listening on {}", cluster.url);
    println!("Kubeconfig written to {}:\n", path.display());
    println!("{text}");
    println!("Try it:");
    println!("  export KUBECONFIG={}", path.display());
    println!("  kubectl get ns");
    println!("  kubectl apply --server-side -f your-manifests.yaml");
    println!("\nPods run real PostgreSQL servers on this machine. Press Ctrl-C to stop.");
    let (tx, rx) = std::sync::mpsc::channel();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    std::thread::spawn(move || {
        rt.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
        let _ = tx.send(());
    });
    let _ = rx.recv();
    println!("\nStopping…");
    drop(cluster);
}
