//! A test Kubernetes API server: HTTPS on a free loopback port, bearer-token auth, a generated
//! kubeconfig, the REST conventions of kube-apiserver over a generic object store, and a
//! simulated control plane whose pods run real PostgreSQL servers. See `tests/e2e/README.md`
//! for what it emulates and what it does not.
//!
//! Each test starts its own [`TestCluster`]; it is cheap until a pod starts PostgreSQL.

// A toolkit for scenario tests and the hand-run example: not every helper is used by each.
#![allow(dead_code)]

mod auth;
mod defaults;
mod discovery;
pub mod faults;
mod fields;
mod http;
mod merge;
mod meta;
mod openapi;
mod quota;
mod registry;
mod resources;
mod selectors;
mod simulator;
mod status;
mod store;
pub mod streams;
mod table;
mod upgrade;
mod validation;
mod watch;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::oneshot;

// Re-exported for scenario tests (the hand-run example uses neither).
#[allow(unused_imports)]
pub use faults::{Faults, Insufficient};
pub use http::RequestRecord;

use registry::{Ctx, DeleteOptions, PatchType, Registry};
use resources::ResourceType;
use store::Store;

/// A running test cluster. Dropping it stops the server and every PostgreSQL it started.
pub struct TestCluster {
    /// The kubeconfig written for this cluster (context `e2e`, no namespace set).
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    pub faults: Arc<Faults>,
    /// The bearer token the kubeconfig carries.
    pub token: String,
    /// The CA that signed the server certificate (PEM).
    pub ca_pem: String,
    store: Arc<Store>,
    registry: Arc<Registry>,
    server: Arc<http::Server>,
    runtime: Arc<simulator::Runtime>,
    handle: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    cache_dir: PathBuf,
    dir: tempfile::TempDir,
}

/// Objects every fresh cluster has, like a new kind cluster.
fn seed(registry: &Registry) {
    let ctx = Ctx::system("kube-apiserver");
    let store = &registry.store;
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let _ = registry.create(
            &store.by_plural("namespaces"),
            "",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            &ctx,
        );
    }
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": simulator::NODE,
            "labels": {
                "kubernetes.io/hostname": simulator::NODE,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node-role.kubernetes.io/control-plane": "",
            },
        },
        "spec": {"podCIDR": "10.244.0.0/24"},
    });
    if let Ok(n) = registry.create(&store.by_plural("nodes"), "", node, &ctx) {
        let _ = store.update(&store.by_plural("nodes"), "", meta::name(&n), |n| {
            n["status"] = json!({
                "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110", "ephemeral-storage": "100Gi"},
                "allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110", "ephemeral-storage": "100Gi"},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "message": "kubelet is posting ready status",
                                "lastHeartbeatTime": meta::now(), "lastTransitionTime": meta::now()}],
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                              {"type": "Hostname", "address": simulator::NODE}],
                "nodeInfo": {"kubeletVersion": discovery::GIT_VERSION, "containerRuntimeVersion": "containerd://2.1.1",
                             "operatingSystem": "linux", "architecture": "amd64",
                             "osImage": "Debian GNU/Linux 12 (bookworm)", "kernelVersion": "6.1.0",
                             "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
            });
            Ok(())
        });
    }
    let _ = registry.create(
        &store.by_plural("services"),
        "default",
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443, "targetPort": 6443}]},
        }),
        &ctx,
    );
    let _ = registry.create(
        &store.by_plural("serviceaccounts"),
        "default",
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}),
        &ctx,
    );
}

impl TestCluster {
    /// Starts a cluster on its own runtime thread; returns once it accepts connections.
    pub fn start() -> TestCluster {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("kpg-")
            .tempdir()
            .expect("temporary directory");
        // PostgreSQL runs as another user and must reach its directories below this one.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let credentials = auth::Credentials::generate();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        listener.set_nonblocking(true).expect("non-blocking");
        let address = listener.local_addr().expect("address");
        let url = format!("https://{address}");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, credentials.kubeconfig(&url)).expect("write kubeconfig");
        let cache_dir = dir.path().join("kube-cache");

        let faults = Arc::new(Faults::default());
        let store = Arc::new(Store::new(resources::builtin()));
        let registry = Arc::new(Registry::new(store.clone(), faults.clone()));
        let runtime = Arc::new(simulator::Runtime::default());
        let server = Arc::new(http::Server {
            registry: registry.clone(),
            store: store.clone(),
            faults: faults.clone(),
            runtime: runtime.clone(),
            token: credentials.token.clone(),
            address: address.to_string(),
            requests: Mutex::new(Vec::new()),
        });
        seed(&registry);
        let sim = simulator::Sim::new(
            registry.clone(),
            faults.clone(),
            runtime.clone(),
            dir.path().to_path_buf(),
        );

        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let server_for_thread = server.clone();
        let thread = std::thread::Builder::new()
            .name("test-apiserver".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                let _ = handle_tx.send(rt.handle().clone());
                rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    let serving = tokio::spawn(async move {
                        http::serve(listener, &credentials, server_for_thread).await
                    });
                    let controllers = tokio::spawn(sim.clone().run());
                    let _ = stop_rx.await;
                    serving.abort();
                    sim.stop().await;
                    let _ = controllers.await;
                });
                rt.shutdown_timeout(Duration::from_secs(5));
            })
            .expect("server thread");
        let handle = handle_rx.recv().expect("runtime handle");
        TestCluster {
            kubeconfig,
            url,
            faults,
            token: server.token.clone(),
            ca_pem: String::new(),
            store,
            registry,
            server,
            runtime,
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
            cache_dir,
            dir,
        }
        .with_ca()
    }

    fn with_ca(mut self) -> Self {
        let text = std::fs::read_to_string(&self.kubeconfig).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .find(|l| l.trim_start().starts_with("certificate-authority-data:"))
        {
            use base64::Engine;
            let b64 = line.split(':').nth(1).unwrap_or_default().trim();
            self.ca_pem = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .ok()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
        }
        self
    }

    /// Environment for child processes (kubectl, kubectl-pg): KUBECONFIG, and a private
    /// discovery cache so runs never see another cluster's cached discovery.
    pub fn kubeconfig_env(&self) -> Vec<(String, String)> {
        vec![
            ("KUBECONFIG".into(), self.kubeconfig.display().to_string()),
            ("KUBECACHEDIR".into(), self.cache_dir.display().to_string()),
        ]
    }

    /// A directory that lives as long as the cluster, for test files.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// A kube-rs client built from the written kubeconfig (real TLS and token auth).
    pub async fn client(&self) -> kube::Client {
        let kubeconfig =
            kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .expect("kubeconfig is valid");
        kube::Client::try_from(config).expect("client")
    }

    /// Every request the server has received so far.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.server
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Resolves an API path (`/api/v1/namespaces/x/pods/y`, `/apis/apps/v1/...`) to its kind,
    /// namespace and name.
    fn resolve(&self, path: &str) -> (Arc<ResourceType>, String, Option<String>) {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (group, version, rest) = match segments.as_slice() {
            ["api", v, rest @ ..] => ("", *v, rest),
            ["apis", g, v, rest @ ..] => (*g, *v, rest),
            _ => panic!("not an API path: {path}"),
        };
        let lookup = |plural: &str| {
            self.store
                .lookup(group, version, plural)
                .unwrap_or_else(|| panic!("unknown resource in {path}"))
        };
        match rest {
            ["namespaces", ns, plural, name @ ..] => (
                lookup(plural),
                ns.to_string(),
                name.first().map(|s| s.to_string()),
            ),
            [plural, name @ ..] => (
                lookup(plural),
                String::new(),
                name.first().map(|s| s.to_string()),
            ),
            [] => panic!("not an object path: {path}"),
        }
    }

    /// The object at `path`, if it exists.
    pub fn get_json(&self, path: &str) -> Option<Value> {
        let (rt, ns, name) = self.resolve(path);
        self.store.get(&rt, &ns, &name.expect("object path"))
    }

    /// Objects of a collection path (`/api/v1/namespaces/x/pods`).
    pub fn list_json(&self, path: &str) -> Vec<Value> {
        let (rt, ns, _) = self.resolve(path);
        let ns = (!ns.is_empty()).then_some(ns);
        self.store.list(&rt, ns.as_deref()).0
    }

    /// Server-side applies `object` (JSON) as field manager `e2e-test`, with force; creates
    /// the namespace first if it is missing. Returns the stored object.
    pub fn apply_json(&self, object: &Value) -> Value {
        let rt = self
            .store
            .by_kind(
                object["apiVersion"].as_str().unwrap_or_default(),
                object["kind"].as_str().unwrap_or_default(),
            )
            .unwrap_or_else(|| panic!("unknown kind in {object}"));
        let ns = if rt.namespaced {
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        };
        if rt.namespaced {
            self.ensure_namespace(&ns);
        }
        let ctx = Ctx {
            user: auth::USER.into(),
            manager: "e2e-test".into(),
            dry_run: false,
        };
        self.registry
            .patch(
                &rt,
                &ns,
                meta::name(object),
                PatchType::Apply,
                object,
                fields::Part::Main,
                true,
                &ctx,
            )
            .unwrap_or_else(|e| panic!("apply failed: {}", e.message))
            .object
    }

    /// Creates a namespace if it does not exist.
    pub fn ensure_namespace(&self, ns: &str) {
        let rt = self.store.by_plural("namespaces");
        if self.store.get(&rt, "", ns).is_none() {
            let _ = self.registry.create(
                &rt,
                "",
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                &Ctx::system("e2e-test"),
            );
        }
    }

    /// Deletes the object at `path` (background propagation, default grace).
    pub fn delete(&self, path: &str) -> bool {
        let (rt, ns, name) = self.resolve(path);
        self.registry
            .delete(
                &rt,
                &ns,
                &name.expect("object path"),
                &DeleteOptions::default(),
                &Ctx::system("e2e-test"),
            )
            .is_ok()
    }

    /// Waits until `check` returns something, re-checking after every change in the store
    /// (no sleeping). Panics after `timeout`, naming `what`.
    pub fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        check: impl FnMut(&Self) -> Option<T>,
    ) -> T {
        self.wait_until_or(timeout, check, |_| format!("waiting for {what}"))
    }

    fn wait_until_or<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&Self) -> Option<T>,
        explain: impl FnOnce(&Self) -> String,
    ) -> T {
        let deadline = std::time::Instant::now() + timeout;
        // Subscribed before each check, so no change between check and wait is missed.
        let mut feed = self.store.subscribe();
        loop {
            if let Some(found) = check(self) {
                return found;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                panic!("timed out after {timeout:?} {}", explain(self));
            }
            let (tx, rx) = std::sync::mpsc::channel();
            self.handle.spawn(async move {
                let _ = tokio::time::timeout(left, feed.recv()).await;
                let _ = tx.send(feed);
            });
            feed = rx.recv().expect("waiter answers");
        }
    }

    /// Waits until the object at `path` satisfies `predicate` (called with `None` while it
    /// does not exist). Returns the object state that satisfied it.
    pub fn wait_for(
        &self,
        path: &str,
        timeout: Duration,
        predicate: impl Fn(Option<&Value>) -> bool,
    ) -> Option<Value> {
        self.wait_until_or(
            timeout,
            |c| {
                let current = c.get_json(path);
                predicate(current.as_ref()).then_some(current)
            },
            |c| {
                format!(
                    "waiting for {path}; last state:\n{}",
                    c.get_json(path)
                        .map(|v| serde_json::to_string_pretty(&v).unwrap_or_default())
                        .unwrap_or_else(|| "(absent)".into())
                )
            },
        )
    }

    /// Waits for an event with `reason` about the object `name` in `ns`.
    pub fn wait_event(&self, ns: &str, name: &str, reason: &str, timeout: Duration) -> Value {
        self.wait_until(&format!("a {reason} event about {name}"), timeout, |c| {
            c.events_for(ns, name)
                .into_iter()
                .find(|e| e["reason"] == reason)
        })
    }

    /// Waits until the pod is Ready.
    pub fn wait_ready(&self, ns: &str, pod: &str, timeout: Duration) -> Value {
        self.wait_for(
            &format!("/api/v1/namespaces/{ns}/pods/{pod}"),
            timeout,
            |p| p.is_some_and(pod_ready),
        )
        .expect("ready pod")
    }

    /// Events about an object, oldest first.
    pub fn events_for(&self, ns: &str, name: &str) -> Vec<Value> {
        let mut events: Vec<Value> = self
            .list_json(&format!("/api/v1/namespaces/{ns}/events"))
            .into_iter()
            .filter(|e| e["involvedObject"]["name"] == name)
            .collect();
        events.sort_by(|a, b| {
            a["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|r| r.parse::<u64>().ok())
                .cmp(
                    &b["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|r| r.parse::<u64>().ok()),
                )
        });
        events
    }

    /// Where the pod's PostgreSQL listens on this machine, while it runs.
    pub fn postgres_addr(&self, ns: &str, pod: &str) -> Option<std::net::SocketAddr> {
        self.runtime.endpoint(ns, pod)
    }

    /// PGDATA of the pod's PostgreSQL on this machine.
    pub fn postgres_data_dir(&self, ns: &str, pod: &str) -> Option<PathBuf> {
        self.runtime.get(ns, pod)?.data_dir
    }

    /// Drops all watch history, so a watch from an older resourceVersion gets 410 Gone.
    pub fn compact(&self) {
        self.store.compact();
    }

    /// The current resourceVersion of the store.
    pub fn resource_version(&self) -> u64 {
        self.store.current_rv()
    }
}

/// Whether a pod object has condition Ready=True.
pub fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
