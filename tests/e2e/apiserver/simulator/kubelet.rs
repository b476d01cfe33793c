//! One task per pod, standing in for the scheduler's binding and the kubelet: schedule (or
//! report why not), resolve the container's environment, "pull" the image, run PostgreSQL for
//! the container whose image is `postgres`, report status and events like a real kubelet,
//! restart a crashed server, and stop it when the pod is deleted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::super::fields::Part;
use super::super::meta;
use super::controllers;
use super::events::Source;
use super::postgres::{self, InitConfig, Log, Postgres};
use super::{Sim, NODE};

#[derive(Debug)]
pub enum Poke {
    Changed,
    Kill,
}

/// The PostgreSQL container's state, as containerStatuses reports it.
#[derive(Clone, Debug, PartialEq)]
enum State {
    Waiting {
        reason: String,
        message: String,
    },
    /// Running; ready once the server accepts connections.
    Running {
        started_at: String,
        ready: bool,
    },
}

struct Kubelet {
    sim: Arc<Sim>,
    ns: String,
    name: String,
    uid: String,
    pg: Option<Postgres>,
    state: State,
    restarts: u64,
    last_terminated: Option<Value>,
    container_id: String,
    /// Condition type → (status, lastTransitionTime).
    conditions: HashMap<String, (bool, String)>,
    start_time: Option<String>,
    /// Events already recorded, so a repeated sync does not inflate counts.
    said: Vec<String>,
    /// When a back-off (image pull, crash loop) ends.
    timer: Option<Instant>,
    backoff: Duration,
    log: Log,
    socket_dir: Option<PathBuf>,
}

/// The container this kubelet runs for real: the first whose image is a `postgres` image, else
/// the first container (the others are reported running as soon as the pod is).
fn main_container(pod: &Value) -> Option<&Value> {
    let containers = pod["spec"]["containers"].as_array()?;
    containers
        .iter()
        .find(|c| runs_postgres(c))
        .or(containers.first())
}

fn runs_postgres(container: &Value) -> bool {
    let image = container["image"].as_str().unwrap_or_default();
    let last = image.rsplit('/').next().unwrap_or_default();
    last.split([':', '@'])
        .next()
        .unwrap_or_default()
        .contains("postgres")
}

fn image_id(image: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in image.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let repo = image.split([':', '@']).next().unwrap_or(image);
    let repo = if repo.contains('/') {
        repo.to_string()
    } else {
        format!("docker.io/library/{repo}")
    };
    format!(
        "{repo}@sha256:{:016x}{:016x}{:016x}{:016x}",
        hash,
        hash.rotate_left(16),
        hash.rotate_left(32),
        hash.rotate_left(48)
    )
}

fn random_hex(n: usize) -> String {
    (0..n)
        .map(|_| format!("{:x}", rand::random_range(0..16u8)))
        .collect()
}

pub async fn run(
    sim: Arc<Sim>,
    ns: String,
    name: String,
    uid: String,
    mut pokes: mpsc::UnboundedReceiver<Poke>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut k = Kubelet {
        sim: sim.clone(),
        ns: ns.clone(),
        name: name.clone(),
        uid: uid.clone(),
        pg: None,
        state: State::Waiting {
            reason: "ContainerCreating".into(),
            message: String::new(),
        },
        restarts: 0,
        last_terminated: None,
        container_id: String::new(),
        conditions: HashMap::new(),
        start_time: None,
        said: Vec::new(),
        timer: None,
        backoff: Duration::from_millis(500),
        log: Arc::new(Mutex::new(Vec::new())),
        socket_dir: None,
    };
    loop {
        if *shutdown.borrow() {
            break;
        }
        if k.sync().await {
            break;
        }
        let mut exited = k.pg.as_ref().map(Postgres::exited);
        let timer = k.timer;
        tokio::select! {
            poke = pokes.recv() => match poke {
                Some(Poke::Kill) => {
                    if let Some(pg) = &k.pg {
                        pg.kill();
                    }
                }
                Some(Poke::Changed) => {}
                None => break,
            },
            code = async {
                match exited.as_mut() {
                    Some(rx) => rx.wait_for(Option::is_some).await.map(|c| c.unwrap_or(1)).unwrap_or(1),
                    None => std::future::pending().await,
                }
            } => k.crashed(code).await,
            _ = async {
                match timer {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => k.timer = None,
            _ = shutdown.changed() => break,
        }
    }
    if let Some(pg) = k.pg.take() {
        pg.stop().await;
    }
    sim.runtime.remove(&ns, &name);
    if let Some(dir) = &k.socket_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    sim.kubelet_done(&ns, &name, &uid);
}

impl Kubelet {
    fn pod(&self) -> Option<Value> {
        let pod = self
            .sim
            .store
            .get(&self.sim.store.by_plural("pods"), &self.ns, &self.name)?;
        (meta::uid(&pod) == self.uid).then_some(pod)
    }

    /// Records an event once per distinct (reason, message) for this pod's life.
    fn event(
        &mut self,
        pod: &Value,
        source: Source,
        warning: bool,
        reason: &str,
        message: &str,
        container: Option<&str>,
    ) {
        let key = format!("{reason}\u{0}{message}");
        if self.said.contains(&key) {
            return;
        }
        self.said.push(key);
        let field_path = container.map(|c| format!("spec.containers{{{c}}}"));
        self.sim.events.record(
            &self.sim.registry,
            pod,
            source,
            warning,
            reason,
            message,
            field_path.as_deref(),
        );
    }

    /// Repeated events (back-offs) are recorded each time, aggregated into `count`.
    fn event_again(&mut self, pod: &Value, reason: &str, message: &str, container: &str) {
        let key = format!("{reason}\u{0}{message}");
        self.said.retain(|k| k != &key);
        self.event(pod, Source::Kubelet, true, reason, message, Some(container));
    }

    fn condition(&mut self, kind: &str, status: bool) {
        let entry = self
            .conditions
            .entry(kind.to_string())
            .or_insert((status, meta::now()));
        if entry.0 != status {
            *entry = (status, meta::now());
        }
    }

    /// One pass: returns true when the pod is gone and the task should end.
    async fn sync(&mut self) -> bool {
        let Some(pod) = self.pod() else {
            return true;
        };
        if meta::is_terminating(&pod) {
            if let Some(container) = main_container(&pod) {
                let cname = container["name"].as_str().unwrap_or_default().to_string();
                if self.pg.is_some() {
                    self.event(
                        &pod,
                        Source::Kubelet,
                        false,
                        "Killing",
                        &format!("Stopping container {cname}"),
                        Some(&cname),
                    );
                }
            }
            if let Some(pg) = self.pg.take() {
                pg.stop().await;
            }
            self.sim
                .runtime
                .update(&self.ns, &self.name, |r| r.endpoint = None);
            let rt = self.sim.store.by_plural("pods");
            if self.pod().is_some() {
                self.sim.store.remove(&rt, &self.ns, &self.name);
            }
            return true;
        }
        if pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty) {
            return self.schedule(&pod);
        }
        if self.start_time.is_none() {
            self.start_time = Some(meta::now());
        }
        self.condition("PodScheduled", true);
        self.condition("PodReadyToStartContainers", true);
        self.condition("Initialized", true);
        self.run_containers(&pod).await;
        self.write_status();
        false
    }

    /// The scheduler: binds the pod to the node, or reports why it cannot.
    fn schedule(&mut self, pod: &Value) -> bool {
        let faults = self.sim.faults.state();
        let why = match faults.unschedulable {
            Some(r) => Some(format!(
                "0/1 nodes are available: 1 Insufficient {}. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.",
                r.word()
            )),
            None => controllers::claims_ready(&self.sim, pod).err().map(|m| {
                format!("0/1 nodes are available: {m}. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.")
            }),
        };
        let rt = self.sim.store.by_plural("pods");
        if let Some(message) = why {
            self.event(
                pod,
                Source::Scheduler,
                true,
                "FailedScheduling",
                &message,
                None,
            );
            let status = json!({
                "phase": "Pending",
                "conditions": [{
                    "type": "PodScheduled",
                    "status": "False",
                    "lastProbeTime": null,
                    "lastTransitionTime": self.conditions.entry("PodScheduled".into()).or_insert((false, meta::now())).1,
                    "reason": "Unschedulable",
                    "message": message,
                }],
                "qosClass": pod["status"]["qosClass"],
            });
            self.sim.registry.update_as(
                &rt,
                &self.ns,
                &self.name,
                "kube-scheduler",
                Part::Status,
                |p| {
                    p["status"] = status;
                },
            );
            return false;
        }
        self.conditions.remove("PodScheduled");
        self.sim.registry.update_as(
            &rt,
            &self.ns,
            &self.name,
            "kube-scheduler",
            Part::Main,
            |p| {
                p["spec"]["nodeName"] = json!(NODE);
            },
        );
        let message = format!("Successfully assigned {}/{} to {NODE}", self.ns, self.name);
        self.event(pod, Source::Scheduler, false, "Scheduled", &message, None);
        // The binding's own change event brings us back for the next step.
        false
    }

    async fn run_containers(&mut self, pod: &Value) {
        let Some(container) = main_container(pod).cloned() else {
            return;
        };
        let cname = container["name"].as_str().unwrap_or_default().to_string();
        let image = container["image"].as_str().unwrap_or_default().to_string();
        if self.pg.is_some() || self.timer.is_some() || matches!(self.state, State::Running { .. })
        {
            return;
        }
        let faults = self.sim.faults.state();
        if faults.image_pull_failure {
            self.fail_pull(pod, &cname, &image);
            return;
        }
        if let State::Waiting { reason, .. } = &self.state {
            if reason == "ErrImagePull" || reason == "ImagePullBackOff" {
                self.said.retain(|k| !k.starts_with("Pulled\u{0}"));
            }
        }
        let env = match resolve_env(&self.sim, pod, &container) {
            Ok(env) => env,
            Err(message) => {
                self.event(
                    pod,
                    Source::Kubelet,
                    true,
                    "Failed",
                    &format!("Error: {message}"),
                    Some(&cname),
                );
                self.state = State::Waiting {
                    reason: "CreateContainerConfigError".into(),
                    message,
                };
                return;
            }
        };
        let pulled = if container["imagePullPolicy"] == "Always" {
            format!("Successfully pulled image \"{image}\" in 812ms (812ms including waiting). Image size: 158203544 bytes.")
        } else {
            format!("Container image \"{image}\" already present on machine")
        };
        if container["imagePullPolicy"] == "Always" {
            self.event(
                pod,
                Source::Kubelet,
                false,
                "Pulling",
                &format!("Pulling image \"{image}\""),
                Some(&cname),
            );
        }
        self.event(pod, Source::Kubelet, false, "Pulled", &pulled, Some(&cname));
        self.event(
            pod,
            Source::Kubelet,
            false,
            "Created",
            &format!("Created container: {cname}"),
            Some(&cname),
        );
        self.event(
            pod,
            Source::Kubelet,
            false,
            "Started",
            &format!("Started container {cname}"),
            Some(&cname),
        );
        self.container_id = format!("containerd://{}", random_hex(64));
        let started_at = meta::now();
        self.state = State::Running {
            started_at: started_at.clone(),
            ready: false,
        };
        // A new run gets a fresh log; the last one becomes `previous`.
        let previous = {
            let lines = self.log.lock().unwrap_or_else(|e| e.into_inner()).clone();
            (!lines.is_empty()).then_some(lines)
        };
        self.log = Arc::new(Mutex::new(Vec::new()));
        let data_dir = pgdata_for(&self.sim, pod, &container, &env);
        let socket_dir = match &self.socket_dir {
            Some(d) => d.clone(),
            None => {
                let d = self.sim.short_dir();
                self.socket_dir = Some(d.clone());
                d
            }
        };
        let log = self.log.clone();
        let env_for_runtime = env.clone();
        let data_for_runtime = data_dir.clone();
        self.sim.runtime.update(&self.ns, &self.name, |r| {
            r.container = cname.clone();
            r.env = env_for_runtime;
            r.data_dir = Some(data_for_runtime);
            r.current = Some(log);
            if previous.is_some() {
                r.previous = previous;
            }
        });
        if !runs_postgres(&container) {
            // Nothing to run for real: the container is up at once.
            self.state = State::Running {
                started_at,
                ready: true,
            };
            self.timer = None;
            return;
        }
        self.write_status();
        if faults.crash_loop {
            crash_log(&self.log);
            self.crash_loop(pod, &cname, 1, &started_at);
            return;
        }
        let ready = match postgres::make_dir(&socket_dir, 0o755) {
            Ok(()) => Postgres::start(
                &data_dir,
                &socket_dir,
                &InitConfig::from_env(&env),
                &self.log,
            )
            .await
            .ok(),
            Err(_) => None,
        };
        match ready {
            Some(pg) => {
                let endpoint = (pg.port, pg.socket_dir.clone());
                self.pg = Some(pg);
                self.backoff = Duration::from_millis(500);
                self.sim
                    .runtime
                    .update(&self.ns, &self.name, |r| r.endpoint = Some(endpoint));
                self.state = State::Running {
                    started_at,
                    ready: true,
                };
            }
            None => self.crash_loop(pod, &cname, 1, &started_at),
        }
    }

    /// The container exited on its own: back off, then start again.
    fn crash_loop(&mut self, pod: &Value, cname: &str, exit_code: i32, started_at: &str) {
        self.last_terminated = Some(json!({
            "exitCode": exit_code,
            "reason": "Error",
            "startedAt": started_at,
            "finishedAt": meta::now(),
            "containerID": self.container_id,
        }));
        self.restarts += 1;
        let message = format!(
            "back-off {}s restarting failed container={cname} pod={}_{}({})",
            self.backoff.as_secs().max(10),
            self.name,
            self.ns,
            self.uid
        );
        self.state = State::Waiting {
            reason: "CrashLoopBackOff".into(),
            message,
        };
        let text = format!(
            "Back-off restarting failed container {cname} in pod {}_{}({})",
            self.name, self.ns, self.uid
        );
        self.event_again(pod, "BackOff", &text, cname);
        self.timer = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(Duration::from_secs(4));
    }

    fn fail_pull(&mut self, pod: &Value, cname: &str, image: &str) {
        let in_backoff = matches!(&self.state, State::Waiting { reason, .. } if reason == "ErrImagePull" || reason == "ImagePullBackOff");
        if !in_backoff {
            self.event(
                pod,
                Source::Kubelet,
                false,
                "Pulling",
                &format!("Pulling image \"{image}\""),
                Some(cname),
            );
            let failure = format!(
                "failed to pull and unpack image \"docker.io/library/{image}\": failed to resolve reference \"docker.io/library/{image}\": docker.io/library/{image}: not found"
            );
            self.event(
                pod,
                Source::Kubelet,
                true,
                "Failed",
                &format!(
                    "Failed to pull image \"{image}\": rpc error: code = NotFound desc = {failure}"
                ),
                Some(cname),
            );
            self.event(
                pod,
                Source::Kubelet,
                true,
                "Failed",
                "Error: ErrImagePull",
                Some(cname),
            );
            self.state = State::Waiting {
                reason: "ErrImagePull".into(),
                message: format!("rpc error: code = NotFound desc = {failure}"),
            };
            self.timer = Some(Instant::now() + Duration::from_millis(500));
        } else {
            self.event_again(
                pod,
                "BackOff",
                &format!("Back-off pulling image \"{image}\""),
                cname,
            );
            self.event(
                pod,
                Source::Kubelet,
                true,
                "Failed",
                "Error: ImagePullBackOff",
                Some(cname),
            );
            self.state = State::Waiting {
                reason: "ImagePullBackOff".into(),
                message: format!("Back-off pulling image \"{image}\""),
            };
        }
    }

    /// The server exited while the pod lives: the kubelet restarts it.
    async fn crashed(&mut self, code: i32) {
        let Some(pg) = self.pg.take() else {
            return;
        };
        pg.stop().await;
        self.sim
            .runtime
            .update(&self.ns, &self.name, |r| r.endpoint = None);
        let started_at = match &self.state {
            State::Running { started_at, .. } => started_at.clone(),
            _ => meta::now(),
        };
        // A killed server exits with 137 in container terms (128 + SIGKILL).
        let exit_code = if code == 0 { 0 } else { 137 };
        self.last_terminated = Some(json!({
            "exitCode": exit_code,
            "reason": "Error",
            "startedAt": started_at,
            "finishedAt": meta::now(),
            "containerID": self.container_id,
        }));
        self.restarts += 1;
        self.state = State::Waiting {
            reason: "ContainerCreating".into(),
            message: String::new(),
        };
        // Report not-ready before the restart, as kubelet does.
        self.said.retain(|k| {
            !k.starts_with("Started\u{0}")
                && !k.starts_with("Created\u{0}")
                && !k.starts_with("Pulled\u{0}")
        });
        self.write_status();
    }

    fn write_status(&mut self) {
        let Some(pod) = self.pod() else {
            return;
        };
        let main = main_container(&pod)
            .and_then(|c| c["name"].as_str())
            .map(str::to_string);
        let mut statuses = Vec::new();
        let mut all_ready = true;
        let mut any_running = false;
        for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
            let cname = c["name"].as_str().unwrap_or_default();
            let image = c["image"].as_str().unwrap_or_default();
            let is_main = main.as_deref() == Some(cname);
            let pull_failing = matches!(&self.state, State::Waiting { reason, .. }
                if reason == "ErrImagePull" || reason == "ImagePullBackOff");
            let state = if is_main || pull_failing {
                self.state.clone()
            } else {
                State::Running {
                    started_at: self.start_time.clone().unwrap_or_else(meta::now),
                    ready: true,
                }
            };
            let (state_json, ready, started) = match &state {
                State::Waiting { reason, message } => {
                    let mut w = json!({"reason": reason});
                    if !message.is_empty() {
                        w["message"] = json!(message);
                    }
                    (json!({"waiting": w}), false, false)
                }
                State::Running { started_at, ready } => {
                    (json!({"running": {"startedAt": started_at}}), *ready, true)
                }
            };
            all_ready &= ready;
            any_running |= started;
            let pulled = !matches!(&state, State::Waiting { reason, .. } if reason == "ErrImagePull" || reason == "ImagePullBackOff");
            let mut status = json!({
                "name": cname,
                "state": state_json,
                "lastState": {},
                "ready": ready,
                "restartCount": if is_main { self.restarts } else { 0 },
                "image": image,
                "imageID": if pulled { image_id(image) } else { String::new() },
                "started": started,
            });
            if started || (is_main && self.last_terminated.is_some()) {
                status["containerID"] = json!(if self.container_id.is_empty() {
                    format!("containerd://{}", random_hex(64))
                } else {
                    self.container_id.clone()
                });
            }
            if is_main {
                if let Some(t) = &self.last_terminated {
                    status["lastState"] = json!({"terminated": t});
                }
            }
            statuses.push(status);
        }
        let ever_started = any_running || self.restarts > 0;
        self.condition("ContainersReady", all_ready);
        self.condition("Ready", all_ready);
        let not_ready: Vec<String> = statuses
            .iter()
            .filter(|s| s["ready"] == false)
            .filter_map(|s| s["name"].as_str().map(str::to_string))
            .collect();
        let mut conditions = Vec::new();
        for kind in [
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled",
        ] {
            let Some((status, time)) = self.conditions.get(kind) else {
                continue;
            };
            let mut c = json!({
                "type": kind,
                "status": if *status { "True" } else { "False" },
                "lastProbeTime": null,
                "lastTransitionTime": time,
            });
            if !status && (kind == "Ready" || kind == "ContainersReady") {
                c["reason"] = json!("ContainersNotReady");
                c["message"] = json!(format!(
                    "containers with unready status: [{}]",
                    not_ready.join(" ")
                ));
            }
            conditions.push(c);
        }
        let status = json!({
            "phase": if ever_started { "Running" } else { "Pending" },
            "conditions": conditions,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time,
            "containerStatuses": statuses,
            "qosClass": pod["status"]["qosClass"],
        });
        let rt = self.sim.store.by_plural("pods");
        self.sim
            .registry
            .update_as(&rt, &self.ns, &self.name, "kubelet", Part::Status, |p| {
                p["status"] = status;
            });
    }
}

/// Log lines of a run that dies at once (the crash-loop fault).
fn crash_log(log: &Log) {
    let now = meta::now_micro().replace('T', " ").replace('Z', " UTC");
    for line in [
        format!("{now} [1] LOG:  starting PostgreSQL"),
        format!("{now} [1] FATAL:  could not map anonymous shared memory: Cannot allocate memory"),
        format!("{now} [1] HINT:  This error usually means that PostgreSQL's request for a shared memory segment exceeded available memory, swap space, or huge pages."),
        format!("{now} [1] LOG:  database system is shut down"),
    ] {
        postgres::push(log, line);
    }
}

/// The container's environment as kubelet builds it: `env` (literal, secretKeyRef,
/// configMapKeyRef, fieldRef) over `envFrom`. A missing Secret or key is the error kubelet
/// reports as CreateContainerConfigError.
fn resolve_env(sim: &Sim, pod: &Value, container: &Value) -> Result<Vec<(String, String)>, String> {
    let ns = meta::namespace(pod);
    let secrets = sim.store.by_plural("secrets");
    let configmaps = sim.store.by_plural("configmaps");
    let decode = |v: &Value| -> String {
        v.as_str()
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let mut env = Vec::new();
    for from in container["envFrom"].as_array().into_iter().flatten() {
        let prefix = from["prefix"].as_str().unwrap_or_default();
        let optional = |r: &Value| r["optional"] == true;
        if let Some(name) = from["secretRef"]["name"].as_str() {
            match sim.store.get(&secrets, ns, name) {
                Some(s) => {
                    for (k, v) in s["data"].as_object().into_iter().flatten() {
                        env.push((format!("{prefix}{k}"), decode(v)));
                    }
                }
                None if optional(&from["secretRef"]) => {}
                None => return Err(format!("secret \"{name}\" not found")),
            }
        }
        if let Some(name) = from["configMapRef"]["name"].as_str() {
            match sim.store.get(&configmaps, ns, name) {
                Some(c) => {
                    for (k, v) in c["data"].as_object().into_iter().flatten() {
                        env.push((
                            format!("{prefix}{k}"),
                            v.as_str().unwrap_or_default().into(),
                        ));
                    }
                }
                None if optional(&from["configMapRef"]) => {}
                None => return Err(format!("configmap \"{name}\" not found")),
            }
        }
    }
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().unwrap_or_default().to_string();
        if let Some(value) = var.get("value") {
            env.push((name, value.as_str().unwrap_or_default().into()));
            continue;
        }
        let from = &var["valueFrom"];
        if let Some(key_ref) = from.get("secretKeyRef") {
            let secret = key_ref["name"].as_str().unwrap_or_default();
            let key = key_ref["key"].as_str().unwrap_or_default();
            let optional = key_ref["optional"] == true;
            match sim.store.get(&secrets, ns, secret) {
                None if optional => {}
                None => return Err(format!("secret \"{secret}\" not found")),
                Some(s) => match s["data"].get(key) {
                    Some(v) => env.push((name, decode(v))),
                    None if optional => {}
                    None => return Err(format!("couldn't find key {key} in Secret {ns}/{secret}")),
                },
            }
        } else if let Some(key_ref) = from.get("configMapKeyRef") {
            let cm = key_ref["name"].as_str().unwrap_or_default();
            let key = key_ref["key"].as_str().unwrap_or_default();
            let optional = key_ref["optional"] == true;
            match sim.store.get(&configmaps, ns, cm) {
                None if optional => {}
                None => return Err(format!("configmap \"{cm}\" not found")),
                Some(c) => match c["data"].get(key) {
                    Some(v) => env.push((name, v.as_str().unwrap_or_default().into())),
                    None if optional => {}
                    None => return Err(format!("couldn't find key {key} in ConfigMap {ns}/{cm}")),
                },
            }
        } else if let Some(path) = from["fieldRef"]["fieldPath"].as_str() {
            let value = match path {
                "status.podIP" | "status.hostIP" => "127.0.0.1".to_string(),
                "spec.nodeName" => NODE.to_string(),
                other => meta::str_at(pod, other).unwrap_or_default().to_string(),
            };
            env.push((name, value));
        }
    }
    Ok(env)
}

/// PGDATA on this machine: the container's PGDATA (the image's default unless set), mapped
/// through the container's volume mounts to the claim's directory (kept with the claim), an
/// emptyDir of the pod, or the pod's own "root filesystem".
fn pgdata_for(sim: &Sim, pod: &Value, container: &Value, env: &[(String, String)]) -> PathBuf {
    let image = container["image"].as_str().unwrap_or_default();
    let major: u32 = image
        .rsplit_once(':')
        .and_then(|(_, tag)| tag.split(['.', '-']).next()?.parse().ok())
        .unwrap_or(17);
    let default = if major >= 18 {
        format!("/var/lib/postgresql/{major}/docker")
    } else {
        "/var/lib/postgresql/data".to_string()
    };
    let pgdata = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PGDATA")
        .map(|(_, v)| v.clone())
        .unwrap_or(default);
    let pod_dir = sim.root.join("pods").join(meta::uid(pod));
    let mount = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let path = m["mountPath"].as_str()?.trim_end_matches('/');
            let inside = pgdata == path || pgdata.starts_with(&format!("{path}/"));
            inside.then_some((path.len(), m))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, m)| m.clone());
    let Some(mount) = mount else {
        return pod_dir.join("rootfs").join(pgdata.trim_start_matches('/'));
    };
    let mount_path = mount["mountPath"]
        .as_str()
        .unwrap_or_default()
        .trim_end_matches('/');
    let rest = pgdata[mount_path.len()..].trim_start_matches('/');
    let sub = mount["subPath"].as_str().unwrap_or_default();
    let volume_name = mount["name"].as_str().unwrap_or_default();
    let volume = pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == volume_name);
    let base = match volume.and_then(|v| v["persistentVolumeClaim"]["claimName"].as_str()) {
        Some(claim) => sim
            .store
            .get(
                &sim.store.by_plural("persistentvolumeclaims"),
                meta::namespace(pod),
                claim,
            )
            .map(|c| controllers::volume_dir(sim, meta::uid(&c)))
            .unwrap_or_else(|| pod_dir.join("volumes").join(volume_name)),
        None => pod_dir.join("volumes").join(volume_name),
    };
    let mut dir = base;
    for part in [sub, rest] {
        if !part.is_empty() {
            dir = dir.join(part);
        }
    }
    dir
}
