//! The real control plane the cluster scenarios run on: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler built from the pinned Go module in `tests/k8s/`,
//! and one node (`kpg-cluster`) whose pods run real PostgreSQL servers of the major their image
//! names. `tests/k8s/setup.sh` builds what is missing (once, cached outside the work tree);
//! the control plane starts once per test run and each test works in a namespace of its own.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

/// The running control plane, shared by every test of the run.
pub struct ControlPlane {
    /// Admin kubeconfig (client certificate in group system:masters; context `kpg-test`).
    pub kubeconfig: PathBuf,
    /// The kubectl built with the control plane.
    pub kubectl: PathBuf,
    /// krew, built from the pinned module.
    pub krew: PathBuf,
    /// The apiserver's URL, `https://127.0.0.1:PORT`.
    pub server: String,
    /// The cluster's state directory (PKI, component logs, pod volumes).
    pub state: PathBuf,
    /// Kubernetes version the binaries were built at.
    pub version: String,
    /// The PostgreSQL builds the node runs (`clients/bin` holds psql and the other clients).
    pub postgres: PathBuf,
    /// CloudNativePG's build: `manager`, `kubectl-cnpg` and `crd/`.
    pub cnpg_dir: PathBuf,
    // Closing it (when the test process exits) stops the control plane and every pod; a line
    // on it is a request (`cnpg`), answered on stdout.
    stdin: Mutex<ChildStdin>,
    answers: Mutex<std::sync::mpsc::Receiver<String>>,
    cnpg: OnceLock<Result<(), String>>,
    #[allow(dead_code)] // read by wait(), which only the hand-run example calls
    child: Mutex<Child>,
}

static PLANE: OnceLock<ControlPlane> = OnceLock::new();

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The control plane, built and started on first use.
pub fn control_plane() -> &'static ControlPlane {
    PLANE.get_or_init(start)
}

fn start() -> ControlPlane {
    let setup = repo().join("tests/k8s/setup.sh");
    let out = Command::new("bash")
        .arg(&setup)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", setup.display()));
    assert!(
        out.status.success(),
        "{} failed (exit {:?}): the control plane needs Go, npm and python3 and the package registries; \
         run it by hand to see why",
        setup.display(),
        out.status.code()
    );
    let vars: std::collections::HashMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let var = |k: &str| {
        vars.get(k)
            .cloned()
            .unwrap_or_else(|| panic!("setup.sh printed no {k}"))
    };
    let state = tempfile::Builder::new()
        .prefix("kpg-cluster-")
        .tempdir()
        .expect("state dir")
        .keep();
    let mut child = Command::new(var("KPG_CLUSTER"))
        .args([
            "-bin",
            &var("KPG_K8S_BIN"),
            "-postgres",
            &var("KPG_POSTGRES"),
            "-coredns",
            &var("KPG_COREDNS"),
            "-cnpg",
            &var("KPG_CNPG"),
        ])
        .arg("-dir")
        .arg(&state)
        .arg("-stdin")
        // The volumes of every test's PostgreSQL: gone with the run, unless asked to keep them.
        .args(
            std::env::var_os("KPG_KEEP_STATE")
                .is_none()
                .then_some("-remove-dir"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("kpg-cluster starts");
    let stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut fields = std::collections::HashMap::new();
    for line in lines.by_ref() {
        let line = line.expect("kpg-cluster output");
        if let Some((k, v)) = line.split_once(": ") {
            fields.insert(k.to_string(), v.to_string());
        }
        if line.starts_with("state: ") {
            break;
        }
    }
    let kubeconfig = PathBuf::from(fields.get("kubeconfig").unwrap_or_else(|| {
        panic!(
            "kpg-cluster stopped before the control plane answered; its logs are in {}/logs",
            state.display()
        )
    }));
    // Keep draining stdout so the process never blocks on a full pipe; answers to requests
    // go to whoever asked.
    let (send, answers) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if line.starts_with("cnpg: ") {
                let _ = send.send(line);
            }
        }
    });
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("server in kubeconfig")
        .to_string();
    let bin = PathBuf::from(var("KPG_K8S_BIN"));
    let version = bin
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("k8s-v")
        .to_string();
    ControlPlane {
        kubeconfig,
        kubectl: bin.join("kubectl"),
        krew: PathBuf::from(var("KPG_KREW")),
        server,
        state,
        version,
        postgres: PathBuf::from(var("KPG_POSTGRES")),
        cnpg_dir: PathBuf::from(var("KPG_CNPG")),
        stdin: Mutex::new(stdin),
        answers: Mutex::new(answers),
        cnpg: OnceLock::new(),
        child: Mutex::new(child),
    }
}

impl ControlPlane {
    /// Runs the built kubectl as the admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_as(&self.kubeconfig, args)
    }

    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        Command::new(&self.kubectl)
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .output()
            .expect("kubectl runs")
    }

    /// Runs kubectl with `stdin` as its input.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        run_with_stdin(
            Command::new(&self.kubectl)
                .args(args)
                .env("KUBECONFIG", &self.kubeconfig),
            stdin,
        )
    }

    /// Starts CloudNativePG's operator in the node (its CRDs first), once per run, and waits
    /// until it answers. Tests that never call this pay nothing for it.
    pub fn cnpg(&self) -> Result<(), String> {
        self.cnpg
            .get_or_init(|| {
                use std::io::Write;
                let answers = self.answers.lock().unwrap();
                writeln!(self.stdin.lock().unwrap(), "cnpg")
                    .map_err(|e| format!("kpg-cluster: {e}"))?;
                match answers.recv_timeout(std::time::Duration::from_secs(240)) {
                    Ok(line) if line == "cnpg: ready" => Ok(()),
                    Ok(line) => Err(line),
                    Err(e) => Err(format!("no answer from kpg-cluster: {e}")),
                }
            })
            .clone()
    }

    /// Starts `kubectl port-forward -n NS TARGET :PORT` and returns it with the local port it
    /// printed; kill the child to stop it.
    pub fn port_forward(&self, ns: &str, target: &str, port: u16) -> (Child, u16) {
        let mut child = Command::new(&self.kubectl)
            .env("KUBECONFIG", &self.kubeconfig)
            .args(["port-forward", "-n", ns, target, &format!(":{port}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl port-forward runs");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .expect("kubectl port-forward's first line");
        // "Forwarding from 127.0.0.1:PORT -> 5432"
        let local = line
            .trim()
            .rsplit_once(" -> ")
            .and_then(|(l, _)| l.rsplit_once(':'))
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| panic!("kubectl port-forward said {line:?}"));
        (child, local)
    }

    /// The reference client built from CloudNativePG's module.
    pub fn kubectl_cnpg(&self) -> PathBuf {
        self.cnpg_dir.join("kubectl-cnpg")
    }

    /// The PEM files of the cluster CA and the admin client certificate.
    pub fn pki(&self, name: &str) -> PathBuf {
        self.state.join("pki").join(name)
    }
}

/// Waits until the control plane's process ends: Ctrl-C reaches it through the terminal's
/// process group and it stops its components and pods itself.
#[allow(dead_code)] // the hand-run example's; the tests never wait for the end
pub fn wait() {
    if let Some(plane) = PLANE.get() {
        let _ = plane.child.lock().unwrap().wait();
    }
}

/// Runs `command` with `stdin` as its input and collects its output.
pub fn run_with_stdin(command: &mut Command, stdin: &str) -> Output {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("command runs");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.as_bytes().to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    out
}
