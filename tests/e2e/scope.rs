//! One test's share of the real control plane: a namespace of its own and a scratch HOME.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::k8s::{control_plane, run_with_stdin, ControlPlane};
use crate::{kpg_command, OutputExt};

/// Tests that change cluster-wide objects (the default StorageClass) hold this exclusively;
/// every other test holds it shared for its lifetime.
static CLUSTER_WIDE: RwLock<()> = RwLock::new(());
static NEXT: AtomicUsize = AtomicUsize::new(0);

enum Guard {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Exclusive(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

/// One test's share of the cluster: its own namespace (deleted afterwards) and a scratch
/// directory used as HOME.
pub struct Scope {
    pub plane: &'static ControlPlane,
    /// The namespace, created empty.
    pub ns: String,
    pub dir: tempfile::TempDir,
    extra: Mutex<Vec<String>>,
    started: std::time::Instant,
    _guard: Guard,
}

impl Scope {
    /// A fresh namespace named after `prefix`.
    pub fn new(prefix: &str) -> Scope {
        let guard = Guard::Shared(CLUSTER_WIDE.read().unwrap_or_else(|e| e.into_inner()));
        Scope::with_guard(prefix, guard)
    }

    /// Like `new`, for a test that changes cluster-wide objects: no other test runs meanwhile.
    pub fn exclusive(prefix: &str) -> Scope {
        let guard = Guard::Exclusive(CLUSTER_WIDE.write().unwrap_or_else(|e| e.into_inner()));
        Scope::with_guard(prefix, guard)
    }

    fn with_guard(prefix: &str, guard: Guard) -> Scope {
        let plane = control_plane();
        let ns = Scope::name(prefix);
        let out = plane.kubectl(&["create", "namespace", &ns]);
        assert!(out.status.success(), "{}", out.describe());
        Scope {
            plane,
            ns,
            dir: tempfile::tempdir().unwrap(),
            extra: Mutex::new(Vec::new()),
            started: std::time::Instant::now(),
            _guard: guard,
        }
    }

    /// A unique namespace name that this scope deletes when it ends, not created yet.
    pub fn another_namespace(&self, prefix: &str) -> String {
        let ns = Scope::name(prefix);
        self.extra.lock().unwrap().push(ns.clone());
        ns
    }

    fn name(prefix: &str) -> String {
        format!(
            "{prefix}-{}-{}",
            std::process::id() % 10000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// kubectl-pg against the cluster as the admin, HOME in the scratch directory.
    pub fn kpg(&self, args: &[&str]) -> Output {
        self.kpg_stdin(args, "")
    }

    pub fn kpg_stdin(&self, args: &[&str], stdin: &str) -> Output {
        run_with_stdin(&mut self.kpg_command(args), stdin)
    }

    pub fn kpg_command(&self, args: &[&str]) -> Command {
        let mut command = kpg_command(args);
        command
            .env("KUBECONFIG", &self.plane.kubeconfig)
            .env("HOME", self.dir.path())
            .env("PATH", self.path_with_kubectl());
        command
    }

    /// PATH with the built kubectl first, so `kubectl pg psql` execs the real one.
    pub fn path_with_kubectl(&self) -> std::ffi::OsString {
        let mut dirs = vec![self.plane.kubectl.parent().unwrap().to_path_buf()];
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
        std::env::join_paths(dirs).unwrap()
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.plane.kubectl(args)
    }

    /// kubectl in this scope's namespace.
    pub fn kubectl_ns(&self, args: &[&str]) -> Output {
        let mut all = vec!["-n", &self.ns];
        all.extend_from_slice(args);
        self.plane.kubectl(&all)
    }

    /// Writes a kubeconfig for a ServiceAccount of this namespace bound to `rules` (a Role's
    /// rule list in YAML flow style); the token comes from the TokenRequest API.
    pub fn service_account_kubeconfig(&self, name: &str, role_yaml: &str) -> PathBuf {
        let manifest = format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {name}\n  namespace: {ns}\n---\n\
             {role_yaml}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  \
             name: {name}\n  namespace: {ns}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  \
             name: {name}\nsubjects:\n- kind: ServiceAccount\n  name: {name}\n  namespace: {ns}\n",
            ns = self.ns
        );
        let out = self.plane.kubectl_stdin(&["apply", "-f", "-"], &manifest);
        assert!(out.status.success(), "{}", out.describe());
        let token = self.kubectl_ns(&["create", "token", name, "--duration", "1h"]);
        assert!(token.status.success(), "{}", token.describe());
        let token = token.stdout_text().trim().to_string();
        let admin = std::fs::read_to_string(&self.plane.kubeconfig).unwrap();
        let ca = admin
            .lines()
            .find_map(|l| l.trim().strip_prefix("certificate-authority-data: "))
            .unwrap();
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kpg-test\n  cluster:\n    server: {}\n    \
             certificate-authority-data: {ca}\nusers:\n- name: {name}\n  user:\n    token: {token}\n\
             contexts:\n- name: {name}\n  context:\n    cluster: kpg-test\n    user: {name}\n    \
             namespace: {ns}\ncurrent-context: {name}\n",
            self.plane.server,
            ns = self.ns
        );
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let mut all = vec![self.ns.clone()];
        all.extend(self.extra.lock().unwrap().drain(..));
        let mut args = vec!["delete", "namespace", "--wait=false", "--ignore-not-found"];
        args.extend(all.iter().map(String::as_str));
        let _ = self.plane.kubectl(&args);
        // Each test's time, for ordering and trimming the suite (the harness prints none).
        let line = format!(
            "{:.1}\t{}\n",
            self.started.elapsed().as_secs_f64(),
            std::thread::current().name().unwrap_or(&self.ns)
        );
        let times = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-times.tsv");
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(times)
        {
            let _ = std::io::Write::write_all(&mut file, line.as_bytes());
        }
    }
}
