//! The simulated control plane and node: controllers (StatefulSet, volume binding, Services,
//! namespace deletion, garbage collection, quota status) and one kubelet task per pod that runs
//! the pod's PostgreSQL for real.
//!
//! Everything reacts to the store's change feed and to fault switches; nothing polls.

mod controllers;
mod events;
mod kubelet;
pub mod postgres;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use super::faults::{Action, Faults};
use super::meta;
use super::registry::Registry;
use super::store::{EventType, Store, StoreEvent};

/// The one node pods are scheduled to.
pub const NODE: &str = "e2e-node";

/// What the HTTP layer needs of running pods: where their PostgreSQL listens, the environment
/// an exec session sees, and their logs.
#[derive(Default)]
pub struct Runtime {
    pods: Mutex<HashMap<(String, String), PodRuntime>>,
}

#[derive(Clone, Default)]
pub struct PodRuntime {
    /// The container running PostgreSQL.
    pub container: String,
    /// Port and unix socket directory while the server is up.
    pub endpoint: Option<(u16, PathBuf)>,
    /// The container's resolved environment.
    pub env: Vec<(String, String)>,
    /// PGDATA on this machine.
    pub data_dir: Option<PathBuf>,
    /// Output of the current (or last) run.
    pub current: Option<postgres::Log>,
    /// Output of the run before, for `previous=true`.
    pub previous: Option<Vec<String>>,
}

impl Runtime {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), PodRuntime>> {
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, ns: &str, pod: &str, change: impl FnOnce(&mut PodRuntime)) {
        change(self.lock().entry((ns.into(), pod.into())).or_default());
    }

    fn remove(&self, ns: &str, pod: &str) {
        self.lock().remove(&(ns.to_string(), pod.to_string()));
    }

    pub fn get(&self, ns: &str, pod: &str) -> Option<PodRuntime> {
        self.lock().get(&(ns.to_string(), pod.to_string())).cloned()
    }

    /// Where the pod's PostgreSQL listens (port-forward target), while it runs.
    pub fn endpoint(&self, ns: &str, pod: &str) -> Option<SocketAddr> {
        let (port, _) = self.get(ns, pod)?.endpoint?;
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// The environment of an exec session in the pod: the container's own, plus what makes
    /// `psql`/`pg_isready` reach this pod's server as they would inside the container.
    pub fn exec_env(&self, ns: &str, pod: &str, _container: &str) -> Option<Vec<(String, String)>> {
        let info = self.get(ns, pod)?;
        let (port, socket_dir) = info.endpoint?;
        let mut env = info.env.clone();
        env.retain(|(k, _)| !matches!(k.as_str(), "PGHOST" | "PGPORT" | "PATH" | "PGDATA"));
        env.push(("PGHOST".into(), socket_dir.display().to_string()));
        env.push(("PGPORT".into(), port.to_string()));
        if let Some(data) = &info.data_dir {
            env.push(("PGDATA".into(), data.display().to_string()));
        }
        env.push((
            "PATH".into(),
            format!(
                "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                postgres::bin_path().display()
            ),
        ));
        env.push(("HOME".into(), socket_dir.display().to_string()));
        env.push(("HOSTNAME".into(), pod.into()));
        Some(env)
    }

    /// Log lines of the container's current or previous run.
    pub fn logs(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        previous: bool,
    ) -> Option<Vec<String>> {
        let info = self.get(ns, pod)?;
        if container != info.container {
            return info.endpoint.map(|_| Vec::new());
        }
        if previous {
            return info.previous;
        }
        let log = info.current?;
        let lines = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Some(lines)
    }
}

struct KubeletHandle {
    uid: String,
    poke: mpsc::UnboundedSender<kubelet::Poke>,
}

pub struct Sim {
    pub registry: Arc<Registry>,
    pub store: Arc<Store>,
    pub faults: Arc<Faults>,
    pub runtime: Arc<Runtime>,
    /// Volumes, per-pod directories and socket directories live below this.
    pub root: PathBuf,
    events: events::Recorder,
    kubelets: Mutex<HashMap<(String, String), KubeletHandle>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    next_dir: AtomicU64,
    shutdown: watch::Sender<bool>,
}

impl Sim {
    pub fn new(
        registry: Arc<Registry>,
        faults: Arc<Faults>,
        runtime: Arc<Runtime>,
        root: PathBuf,
    ) -> Arc<Sim> {
        Arc::new(Sim {
            store: registry.store.clone(),
            registry,
            faults,
            runtime,
            root,
            events: events::Recorder::default(),
            kubelets: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            next_dir: AtomicU64::new(0),
            shutdown: watch::channel(false).0,
        })
    }

    /// A fresh short directory (unix socket paths must stay under 108 bytes).
    fn short_dir(&self) -> PathBuf {
        self.root
            .join("s")
            .join(self.next_dir.fetch_add(1, Ordering::SeqCst).to_string())
    }

    /// Runs the controllers until [`Sim::stop`].
    pub async fn run(self: Arc<Self>) {
        let mut feed = self.store.subscribe();
        let mut fault_changes = self.faults.changes();
        let mut actions = self.faults.take_actions();
        let mut shutdown = self.shutdown.subscribe();
        self.resync();
        loop {
            tokio::select! {
                received = feed.recv() => match received {
                    Ok(event) => self.dispatch(&event),
                    Err(broadcast::error::RecvError::Lagged(_)) => self.resync(),
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = fault_changes.changed() => {
                    self.resync();
                }
                Some(action) = async {
                    match actions.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => self.act(action),
                _ = shutdown.changed() => break,
            }
        }
    }

    /// Stops every pod's PostgreSQL and waits for them.
    pub async fn stop(&self) {
        let _ = self.shutdown.send(true);
        let tasks: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }

    fn act(&self, action: Action) {
        match action {
            Action::KillPostgres { namespace, pod } => {
                self.poke(&namespace, &pod, kubelet::Poke::Kill);
            }
        }
    }

    /// Reconciles everything (start-up, fault changes, a lagged feed).
    fn resync(self: &Arc<Self>) {
        controllers::storage_classes(self);
        for plural in [
            "namespaces",
            "persistentvolumeclaims",
            "statefulsets",
            "services",
            "resourcequotas",
        ] {
            let rt = self.store.by_plural(plural);
            let (items, _) = self.store.list(&rt, None);
            for item in items {
                self.reconcile(plural, meta::namespace(&item), meta::name(&item));
            }
        }
        let (pods, _) = self.store.list(&self.store.by_plural("pods"), None);
        for pod in pods {
            self.ensure_kubelet(&pod);
        }
        self.poke_all(None);
    }

    fn reconcile(self: &Arc<Self>, plural: &str, ns: &str, name: &str) {
        match plural {
            "statefulsets" => controllers::statefulset(self, ns, name),
            "persistentvolumeclaims" => controllers::claim(self, ns, name),
            "services" => controllers::service(self, ns, name),
            "namespaces" => controllers::namespace(self, name),
            "resourcequotas" => controllers::quota_status(self, ns),
            _ => {}
        }
    }

    fn dispatch(self: &Arc<Self>, event: &StoreEvent) {
        let plural = event.rt.plural.as_str();
        let ns = event.namespace.as_str();
        let name = event.name.as_str();
        if event.kind == EventType::Deleted {
            controllers::collect_garbage(self, ns, meta::uid(&event.object));
        }
        match plural {
            "statefulsets" => controllers::statefulset(self, ns, name),
            "pods" => {
                if event.kind != EventType::Deleted {
                    self.ensure_kubelet(&event.object);
                }
                self.poke(ns, name, kubelet::Poke::Changed);
                if let Some(owner) = controllers::owner_statefulset(&event.object) {
                    controllers::statefulset(self, ns, &owner);
                }
                if event.kind == EventType::Deleted {
                    // Claims held back by pvc-protection may go now.
                    let (claims, _) = self
                        .store
                        .list(&self.store.by_plural("persistentvolumeclaims"), Some(ns));
                    for c in claims.iter().filter(|c| meta::is_terminating(c)) {
                        controllers::claim(self, ns, meta::name(c));
                    }
                }
                controllers::quota_status(self, ns);
            }
            "persistentvolumeclaims" => {
                if event.kind == EventType::Deleted {
                    controllers::release_volume(self, &event.object);
                } else {
                    controllers::claim(self, ns, name);
                }
                self.poke_all(Some(ns));
                controllers::quota_status(self, ns);
            }
            "storageclasses" => {
                let (claims, _) = self
                    .store
                    .list(&self.store.by_plural("persistentvolumeclaims"), None);
                for c in claims {
                    controllers::claim(self, meta::namespace(&c), meta::name(&c));
                }
            }
            "secrets" | "configmaps" => {
                self.poke_all(Some(ns));
                controllers::quota_status(self, ns);
            }
            "services" => {
                if event.kind != EventType::Deleted {
                    controllers::service(self, ns, name);
                }
                controllers::quota_status(self, ns);
            }
            "resourcequotas" if event.kind != EventType::Deleted => {
                controllers::quota_status(self, ns);
                // A raised quota lets stuck StatefulSets create their pods.
                let (sets, _) = self
                    .store
                    .list(&self.store.by_plural("statefulsets"), Some(ns));
                for s in sets {
                    controllers::statefulset(self, ns, meta::name(&s));
                }
            }
            "namespaces" => controllers::namespace(self, name),
            _ => {}
        }
        // Namespace deletion finishes once its last object is gone.
        if event.kind == EventType::Deleted && !ns.is_empty() {
            controllers::namespace(self, ns);
        }
    }

    /// Starts the kubelet task of a pod if it has none.
    fn ensure_kubelet(self: &Arc<Self>, pod: &serde_json::Value) {
        let key = (
            meta::namespace(pod).to_string(),
            meta::name(pod).to_string(),
        );
        let uid = meta::uid(pod).to_string();
        let mut kubelets = self.kubelets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = kubelets.get(&key) {
            if existing.uid == uid && !existing.poke.is_closed() {
                return;
            }
            if existing.uid != uid && !existing.poke.is_closed() {
                // The old pod's kubelet is still stopping; it hands over when done.
                let _ = existing.poke.send(kubelet::Poke::Changed);
                return;
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        kubelets.insert(
            key.clone(),
            KubeletHandle {
                uid: uid.clone(),
                poke: tx,
            },
        );
        drop(kubelets);
        let task = tokio::spawn(kubelet::run(
            self.clone(),
            key.0,
            key.1,
            uid,
            rx,
            self.shutdown.subscribe(),
        ));
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Called by a kubelet task when it ends: a newer pod of the same name may need one.
    fn kubelet_done(self: &Arc<Self>, ns: &str, name: &str, uid: &str) {
        let mut kubelets = self.kubelets.lock().unwrap_or_else(|e| e.into_inner());
        let key = (ns.to_string(), name.to_string());
        if kubelets.get(&key).is_some_and(|k| k.uid == uid) {
            kubelets.remove(&key);
        }
        drop(kubelets);
        if *self.shutdown.borrow() {
            return;
        }
        if let Some(pod) = self.store.get(&self.store.by_plural("pods"), ns, name) {
            self.ensure_kubelet(&pod);
        }
    }

    fn poke(&self, ns: &str, name: &str, poke: kubelet::Poke) {
        let kubelets = self.kubelets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = kubelets.get(&(ns.to_string(), name.to_string())) {
            let _ = k.poke.send(poke);
        }
    }

    fn poke_all(&self, ns: Option<&str>) {
        let kubelets = self.kubelets.lock().unwrap_or_else(|e| e.into_inner());
        for ((pod_ns, _), k) in kubelets.iter() {
            if ns.is_none_or(|n| n == pod_ns) {
                let _ = k.poke.send(kubelet::Poke::Changed);
            }
        }
    }
}
