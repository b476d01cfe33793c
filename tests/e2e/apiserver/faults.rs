//! Fault switches a test flips at runtime to make the cluster misbehave the way real ones do.
//!
//! One `Faults` is shared by the HTTP layer (RBAC denials, injected 500s, dropped watches), the
//! simulator (scheduling, image pulls, crash loops, storage classes, killed PostgreSQL) and the
//! port-forward streams (dropped tunnels). Every change bumps a version that the simulator
//! watches, so flipping a switch off lets stuck pods proceed without any polling.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, watch};

/// Which resource the scheduler reports as insufficient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insufficient {
    Cpu,
    Memory,
}

impl Insufficient {
    pub fn word(self) -> &'static str {
        match self {
            Insufficient::Cpu => "cpu",
            Insufficient::Memory => "memory",
        }
    }
}

/// A (verb, resource) pair a rule applies to. `resource` may name a subresource
/// (`pods/exec`); `namespace` narrows the rule to one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub verb: String,
    pub resource: String,
    pub namespace: Option<String>,
}

impl Rule {
    fn matches(&self, verb: &str, resource: &str, namespace: Option<&str>) -> bool {
        (self.verb == "*" || self.verb == verb)
            && (self.resource == "*" || self.resource == resource)
            && match (&self.namespace, namespace) {
                (None, _) => true,
                (Some(want), Some(got)) => want == got,
                (Some(_), None) => false,
            }
    }
}

#[derive(Default, Debug, Clone)]
pub struct FaultState {
    /// Delete every StorageClass (restored when switched off).
    pub no_storage_class: bool,
    /// Keep the StorageClasses but none marked default.
    pub no_default_storage_class: bool,
    /// Pods cannot be scheduled: FailedScheduling `Insufficient cpu|memory`.
    pub unschedulable: Option<Insufficient>,
    /// Image pulls fail: ErrImagePull, then ImagePullBackOff.
    pub image_pull_failure: bool,
    /// The PostgreSQL container exits at once and is restarted with back-off.
    pub crash_loop: bool,
    /// LoadBalancer Services never get an ingress address.
    pub load_balancer_pending: bool,
    /// Requests answered 403 Forbidden (and `allowed: false` in access reviews).
    pub rbac_deny: Vec<Rule>,
    /// Requests answered 500 InternalError.
    pub api_errors: Vec<Rule>,
}

/// Actions the simulator carries out once (not switches).
#[derive(Debug)]
pub enum Action {
    /// Kill the pod's PostgreSQL (immediate shutdown, as if the container's process died).
    KillPostgres { namespace: String, pod: String },
}

pub struct Faults {
    state: Mutex<FaultState>,
    changed: watch::Sender<u64>,
    dropped_watches: watch::Sender<u64>,
    actions: mpsc::UnboundedSender<Action>,
    actions_rx: Mutex<Option<mpsc::UnboundedReceiver<Action>>>,
    /// When armed (non-zero), the byte budget left before port-forward streams are cut.
    /// Handed to the streams as is; they count it down.
    pub portforward_budget: Arc<AtomicU64>,
}

impl Default for Faults {
    fn default() -> Self {
        let (actions, actions_rx) = mpsc::unbounded_channel();
        Faults {
            state: Mutex::new(FaultState::default()),
            changed: watch::channel(0).0,
            dropped_watches: watch::channel(0).0,
            actions,
            actions_rx: Mutex::new(Some(actions_rx)),
            portforward_budget: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Faults {
    /// A copy of the current switches.
    pub fn state(&self) -> FaultState {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, FaultState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes switches, then wakes the simulator.
    pub fn update(&self, change: impl FnOnce(&mut FaultState)) {
        change(&mut self.lock());
        self.changed.send_modify(|v| *v += 1);
    }

    pub fn set_no_storage_class(&self, on: bool) {
        self.update(|s| s.no_storage_class = on);
    }
    pub fn set_no_default_storage_class(&self, on: bool) {
        self.update(|s| s.no_default_storage_class = on);
    }
    pub fn set_unschedulable(&self, what: Option<Insufficient>) {
        self.update(|s| s.unschedulable = what);
    }
    pub fn set_image_pull_failure(&self, on: bool) {
        self.update(|s| s.image_pull_failure = on);
    }
    pub fn set_crash_loop(&self, on: bool) {
        self.update(|s| s.crash_loop = on);
    }
    pub fn set_load_balancer_pending(&self, on: bool) {
        self.update(|s| s.load_balancer_pending = on);
    }

    /// Denies `verb` on `resource` (e.g. `create`, `statefulsets`; `create`, `pods/exec`;
    /// `*` matches any) in every namespace.
    pub fn deny(&self, verb: &str, resource: &str) {
        self.deny_in(verb, resource, None);
    }
    pub fn deny_in(&self, verb: &str, resource: &str, namespace: Option<&str>) {
        let rule = Rule {
            verb: verb.into(),
            resource: resource.into(),
            namespace: namespace.map(str::to_string),
        };
        self.update(|s| s.rbac_deny.push(rule));
    }
    /// Answers `verb` on `resource` with 500 InternalError.
    pub fn fail(&self, verb: &str, resource: &str) {
        let rule = Rule {
            verb: verb.into(),
            resource: resource.into(),
            namespace: None,
        };
        self.update(|s| s.api_errors.push(rule));
    }
    /// Removes every RBAC denial and injected error.
    pub fn clear_rules(&self) {
        self.update(|s| {
            s.rbac_deny.clear();
            s.api_errors.clear();
        });
    }

    pub fn is_denied(&self, verb: &str, resource: &str, namespace: Option<&str>) -> bool {
        self.lock()
            .rbac_deny
            .iter()
            .any(|r| r.matches(verb, resource, namespace))
    }
    pub fn is_failing(&self, verb: &str, resource: &str, namespace: Option<&str>) -> bool {
        self.lock()
            .api_errors
            .iter()
            .any(|r| r.matches(verb, resource, namespace))
    }

    /// Ends every open watch stream now (clients see the connection's chunked body end).
    pub fn drop_watches(&self) {
        self.dropped_watches.send_modify(|v| *v += 1);
    }
    pub fn watch_drops(&self) -> watch::Receiver<u64> {
        self.dropped_watches.subscribe()
    }

    /// Cuts port-forward streams once `bytes` more bytes have passed through them
    /// (0 disarms). The streams count the budget down, so this fires once.
    pub fn drop_portforward_after(&self, bytes: u64) {
        self.portforward_budget.store(bytes, Ordering::SeqCst);
    }

    /// Kills the pod's PostgreSQL; the simulator then restarts it like kubelet.
    pub fn kill_postgres(&self, namespace: &str, pod: &str) {
        let _ = self.actions.send(Action::KillPostgres {
            namespace: namespace.into(),
            pod: pod.into(),
        });
    }

    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The simulator's end of the action queue (taken once).
    pub fn take_actions(&self) -> Option<mpsc::UnboundedReceiver<Action>> {
        self.actions_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}
