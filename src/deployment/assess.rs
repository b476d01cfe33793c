//! The seed's state machine (NotDeployed → Deploying → Ready → Healthy, or Failed), decided
//! from observed objects alone, with every problem found and the exit code it calls for.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use super::observe::Observed;
use crate::cluster::release;

/// How long a PVC may stay unbound before the release counts as Failed.
pub const PVC_GRACE_SECONDS: i64 = 120;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Phase {
    NotDeployed,
    Deploying,
    Ready,
    Healthy,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::NotDeployed => "NotDeployed",
            Phase::Deploying => "Deploying",
            Phase::Ready => "Ready",
            Phase::Healthy => "Healthy",
            Phase::Failed => "Failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The release cannot become ready without a fix.
    Error,
    Warning,
}

/// Something wrong, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub severity: Severity,
    pub reason: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The exit code a failure of this kind calls for (DESIGN.md table).
    #[serde(skip)]
    pub exit_code: u8,
}

impl Problem {
    /// The image's major is not the data directory's: the server cannot use the data (exit 5).
    pub fn mismatch(message: String, hint: Option<String>) -> Self {
        Self::error("DataMajorMismatch", message, hint, 5)
    }

    fn error(reason: &str, message: String, hint: Option<String>, exit_code: u8) -> Self {
        Self {
            severity: Severity::Error,
            reason: reason.into(),
            message,
            hint,
            exit_code,
        }
    }

    fn warning(reason: &str, message: String, hint: Option<String>) -> Self {
        Self {
            severity: Severity::Warning,
            reason: reason.into(),
            message,
            hint,
            exit_code: 0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Assessment {
    pub phase: Phase,
    pub problems: Vec<Problem>,
}

impl Assessment {
    /// The first blocking problem, if the release failed.
    pub fn failure(&self) -> Option<&Problem> {
        self.problems.iter().find(|p| p.severity == Severity::Error)
    }
}

/// Decides the phase. `database_ok` is the result of a real query, when one was made.
pub fn assess(observed: &Observed, now: Timestamp, database_ok: Option<bool>) -> Assessment {
    let mut problems = Vec::new();
    if !observed.exists() {
        return Assessment {
            phase: Phase::NotDeployed,
            problems,
        };
    }
    let pod = observed.pod();
    if let Some(pod) = pod {
        pod_problems(pod, now, &mut problems);
    }
    let scaled_to_zero = observed
        .statefulset
        .as_ref()
        .and_then(|s| s.spec.as_ref()?.replicas)
        == Some(0);
    if scaled_to_zero && pod.is_none() {
        // Nothing will start by itself: a wait for Ready must end, saying what to do.
        problems.push(Problem::error(
            "Stopped",
            format!(
                "StatefulSet {} is scaled to 0 replicas: the database is stopped",
                observed.release
            ),
            Some(format!(
                "start it again: kubectl scale statefulset {} -n {} --replicas 1",
                observed.release, observed.namespace
            )),
            5,
        ));
    }
    pvc_problems(observed, now, &mut problems);
    image_drift(observed, &mut problems);
    upgrade_pending(observed, &mut problems);
    for event in &observed.events {
        let reason = event.reason.as_deref().unwrap_or_default();
        let message = event.message.clone().unwrap_or_default();
        let kind = event.involved_object.kind.as_deref().unwrap_or_default();
        // A pod that exists now was created after any FailedCreate older than it: history
        // (a quota since raised), not the state of the release.
        let after_pod = match (
            pod.and_then(|p| p.metadata.creation_timestamp.as_ref()),
            event_instant(event),
        ) {
            (Some(created), Some(at)) => at > created.0,
            (Some(_), None) => false,
            (None, _) => true,
        };
        if kind == "StatefulSet" && reason == "FailedCreate" && after_pod {
            let quota = message.contains("exceeded quota");
            problems.push(Problem::error(
                if quota { "QuotaExceeded" } else { "FailedCreate" },
                message,
                Some(if quota {
                    "raise the namespace's ResourceQuota or lower --cpu-request/--memory-request/--storage-size".into()
                } else {
                    "the StatefulSet controller cannot create the pod; see kubectl describe statefulset".into()
                }),
                6,
            ));
        }
    }
    warning_events(observed, &mut problems);
    if observed.statefulset.is_some() && observed.secret.is_none() {
        let source = observed.credential_source();
        // Only our own Secret may be recreated (with a new password set in the database); a
        // user's --existing-secret is theirs, and a new password there would lock the apps out.
        problems.push(if source.is_ours(&observed.release) {
            Problem::warning(
                "SecretMissing",
                format!("Secret {} is missing", source.secret),
                Some(format!(
                    "kubectl pg install {} -n {} recreates it and resets the password in the database",
                    observed.release, observed.namespace
                )),
            )
        } else {
            Problem::error(
                "ExistingSecretMissing",
                format!(
                    "Secret {} (the release's --existing-secret) is missing: the pod cannot start again without it",
                    source.secret
                ),
                Some("restore it from where your team keeps it; kubectl-pg never writes it".into()),
                1,
            )
        });
    }
    dedup(&mut problems);
    let ready = pod.is_some_and(release::is_ready);
    let phase = if problems.iter().any(|p| p.severity == Severity::Error) && !ready {
        Phase::Failed
    } else if ready && database_ok == Some(true) {
        Phase::Healthy
    } else if ready {
        if database_ok == Some(false) {
            problems.push(Problem::warning(
                "DatabaseUnreachable",
                "the pod is ready but the database did not answer a query".into(),
                Some("check the credentials in the Secret and the server log: kubectl logs <pod> -c postgres".into()),
            ));
        }
        Phase::Ready
    } else {
        Phase::Deploying
    };
    Assessment { phase, problems }
}

/// How long a pod may stay Unschedulable before it counts as a failure: an autoscaler adding a
/// node, or volumes binding, makes it transient.
pub const UNSCHEDULABLE_GRACE_SECONDS: i64 = 60;

/// When an event last happened: its series' newest occurrence, else its last timestamp.
fn event_instant(event: &k8s_openapi::api::core::v1::Event) -> Option<Timestamp> {
    event
        .series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
        .or_else(|| event.last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| event.event_time.as_ref().map(|t| t.0))
}

const CAPACITY_HINT: &str = "free capacity in the cluster, or lower --cpu-request/--memory-request";
const STORAGE_CLASS_HINT: &str =
    "name an existing StorageClass with --storage-class, or mark one as default";

/// Whether the scheduler's message blames the pod's volumes ("unbound immediate
/// PersistentVolumeClaims", "didn't find available persistent volumes to bind", "volume node
/// affinity conflict", a claim not found) rather than CPU or memory.
fn blames_volumes(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("persistentvolumeclaim") || message.contains("volume")
}

/// The fix of an unschedulable pod follows the scheduler's reason: storage for a volume,
/// capacity otherwise.
fn unschedulable_hint(message: &str) -> &'static str {
    if blames_volumes(message) {
        STORAGE_CLASS_HINT
    } else {
        CAPACITY_HINT
    }
}

/// Whether the pod cannot be scheduled for a reason other than its volumes: then a claim of
/// a WaitForFirstConsumer class stays unbound only because it waits for that pod.
fn unschedulable_for_capacity(pod: Option<&Pod>) -> bool {
    pod.and_then(|p| p.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
                && !blames_volumes(c.message.as_deref().unwrap_or_default())
        })
}

fn pod_problems(pod: &Pod, now: Timestamp, problems: &mut Vec<Problem>) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let Some(status) = &pod.status else { return };
    for condition in status.conditions.iter().flatten() {
        if condition.type_ == "PodScheduled"
            && condition.status == "False"
            && condition.reason.as_deref() == Some("Unschedulable")
        {
            let message = condition
                .message
                .clone()
                .unwrap_or_else(|| "no node can run the pod".into());
            let since = condition
                .last_transition_time
                .as_ref()
                .map_or(0, |t| now.duration_since(t.0).as_secs());
            let hint = Some(unschedulable_hint(&message).into());
            let text = format!("pod {name} cannot be scheduled: {message}");
            problems.push(if since > UNSCHEDULABLE_GRACE_SECONDS {
                Problem::error("Unschedulable", text, hint, 6)
            } else {
                Problem::warning("Unschedulable", text, hint)
            });
        }
    }
    let image_of = |container: &str| {
        pod.spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| c.name == container))
            .and_then(|c| c.image.clone())
            .unwrap_or_default()
    };
    for cs in status.container_statuses.iter().flatten() {
        if cs.restart_count > 0 {
            problems.push(Problem::warning(
                "Restarts",
                format!(
                    "container {} of pod {name} restarted {} time(s)",
                    cs.name, cs.restart_count
                ),
                Some(format!(
                    "see why: kubectl logs {name} -c {} --previous",
                    cs.name
                )),
            ));
        }
        let Some(waiting) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = waiting.reason.clone().unwrap_or_default();
        let detail = waiting
            .message
            .clone()
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        match reason.as_str() {
            "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" => problems.push(Problem::error(
                &reason,
                format!("cannot pull image {}{detail}", image_of(&cs.name)),
                Some("check the image name and tag (--image, --postgres-version) and the registry's reachability".into()),
                1,
            )),
            "CrashLoopBackOff" => problems.push(Problem::error(
                &reason,
                format!("container {} of pod {name} keeps crashing{detail}", cs.name),
                Some(format!("read its log: kubectl logs {name} -c {} --previous", cs.name)),
                5,
            )),
            "CreateContainerConfigError" | "CreateContainerError" => problems.push(Problem::error(
                &reason,
                format!("container {} of pod {name} cannot be created{detail}", cs.name),
                None,
                1,
            )),
            _ => {}
        }
    }
}

/// Reasons already turned into a problem of their own from conditions and container states.
const DIAGNOSED_REASONS: &[&str] = &[
    "FailedScheduling",
    "Failed",
    "BackOff",
    "ProvisioningFailed",
    "FailedBinding",
    "FailedCreate",
];

/// The latest Warning events not diagnosed otherwise (probe failures, mounts, …), three at most.
fn warning_events(observed: &Observed, problems: &mut Vec<Problem>) {
    let mut seen = Vec::new();
    for event in observed.events.iter().rev() {
        let reason = event.reason.clone().unwrap_or_default();
        if event.type_.as_deref() != Some("Warning")
            || DIAGNOSED_REASONS.contains(&reason.as_str())
            || seen.contains(&reason)
            || superseded(observed, event)
        {
            continue;
        }
        let object = event.involved_object.name.clone().unwrap_or_default();
        problems.push(Problem::warning(
            &reason,
            format!("{object}: {}", event.message.clone().unwrap_or_default()),
            Some(format!(
                "kubectl get events -n {} --field-selector involvedObject.name={object}",
                observed.namespace
            )),
        ));
        seen.push(reason);
        if seen.len() == 3 {
            break;
        }
    }
}

/// Whether a pod event no longer describes the pod: it was about an earlier pod of the same
/// name, or it happened before the pod last became Ready (a startup probe that failed while
/// the server was still starting, as the kubelet reports on every start).
fn superseded(observed: &Observed, event: &k8s_openapi::api::core::v1::Event) -> bool {
    let about = &event.involved_object;
    let Some(pod) = observed.pod() else {
        // The pod it was about is gone.
        return about.kind.as_deref() == Some("Pod");
    };
    if about.kind.as_deref() != Some("Pod") || about.name != pod.metadata.name {
        return false;
    }
    if about.uid.is_some() && about.uid != pod.metadata.uid {
        return true;
    }
    let ready_since = pod
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .and_then(|c| c.last_transition_time.as_ref().map(|t| t.0));
    let happened = event
        .last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| event.event_time.as_ref().map(|t| t.0));
    matches!((ready_since, happened), (Some(ready), Some(at)) if at <= ready)
}

/// A major upgrade's record on the StatefulSet: kept for a rollback (a warning until
/// --finalize), or stopped at a step, with writes blocked until it is finished.
fn upgrade_pending(observed: &Observed, problems: &mut Vec<Problem>) {
    let Some(sts) = &observed.statefulset else {
        return;
    };
    let Some(from) = release::pending_upgrade(sts) else {
        return;
    };
    let step = sts
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(release::ANNOTATION_UPGRADE_PHASE))
        .map_or("upgraded", String::as_str);
    let command = |flag: &str| {
        format!(
            "kubectl pg upgrade {} -n {} {flag}",
            observed.release, observed.namespace
        )
    };
    let (reason, message, hint) = match step {
        "upgraded" => (
            "UpgradePending",
            format!("upgraded from PostgreSQL {from}: the old data is kept for a rollback"),
            format!(
                "keep the new major: {}; or go back: {}",
                command("--finalize"),
                command("--rollback")
            ),
        ),
        "finalizing" => (
            "UpgradeUnfinished",
            format!("the deletion of the PostgreSQL {from} data after an upgrade did not finish"),
            format!("finish it: {}", command("--finalize")),
        ),
        "verified" => (
            "UpgradeUnfinished",
            format!("an upgrade from PostgreSQL {from} was verified, but writes are still blocked"),
            format!(
                "unless it is still running, finish it: {}",
                command("--finalize")
            ),
        ),
        other => (
            "UpgradeUnfinished",
            format!("an upgrade from PostgreSQL {from} stands at step {other}: writes are blocked"),
            format!(
                "unless it is still running, go back to PostgreSQL {from}: {}",
                command("--rollback")
            ),
        ),
    };
    problems.push(Problem::warning(reason, message, Some(hint)));
}

/// The running image against the StatefulSet's, and the StatefulSet's against the image
/// pinned for its PostgreSQL major.
fn image_drift(observed: &Observed, problems: &mut Vec<Problem>) {
    let Some(sts) = &observed.statefulset else {
        return;
    };
    let wanted = sts
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone());
    let Some(wanted) = wanted else { return };
    let running = observed
        .pod()
        .and_then(|p| p.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone());
    if let Some(running) = running.filter(|r| *r != wanted) {
        problems.push(Problem::warning(
            "ImageDrift",
            format!("the pod runs {running} but the StatefulSet asks for {wanted}"),
            Some("a rollout is pending or stuck: kubectl rollout status statefulset".into()),
        ));
    }
    let major = sts
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(release::LABEL_VERSION))
        .and_then(|v| v.parse::<u32>().ok());
    if let Some(pinned) = major.and_then(crate::manifests::spec::pinned_image) {
        if pinned != wanted {
            problems.push(Problem::warning(
                "UnpinnedImage",
                format!("image {wanted} is not the one pinned for PostgreSQL {} ({pinned})", major.unwrap_or_default()),
                Some(format!(
                    "intended with --image; else kubectl pg install {} -n {} --upgrade moves to the pinned image",
                    observed.release, observed.namespace
                )),
            ));
        }
    }
}

fn pvc_problems(observed: &Observed, now: Timestamp, problems: &mut Vec<Problem>) {
    let Some(pvc) = &observed.pvc else { return };
    let name = pvc.metadata.name.clone().unwrap_or_default();
    let phase = pvc
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    if phase == "Bound" {
        return;
    }
    let failed_event = observed.events.iter().rev().find(|e| {
        e.involved_object.name.as_deref() == Some(name.as_str())
            && matches!(
                e.reason.as_deref(),
                Some("ProvisioningFailed") | Some("FailedBinding")
            )
    });
    let age = pvc
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| now.as_second() - t.0.as_second())
        .unwrap_or_default();
    let hint = Some(STORAGE_CLASS_HINT.to_string());
    if let Some(event) = failed_event {
        problems.push(Problem::error(
            event.reason.as_deref().unwrap_or("ProvisioningFailed"),
            format!(
                "PVC {name} is not bound: {}",
                event.message.clone().unwrap_or_default()
            ),
            hint,
            6,
        ));
    } else if age > PVC_GRACE_SECONDS {
        let waits_for_pod = unschedulable_for_capacity(observed.pod());
        problems.push(Problem::error(
            "PVCUnbound",
            if waits_for_pod {
                format!("PVC {name} has been {phase} for {age}s: it waits for its pod, which cannot be scheduled")
            } else {
                format!("PVC {name} has been {phase} for {age}s")
            },
            if waits_for_pod {
                Some(CAPACITY_HINT.to_string())
            } else {
                hint
            },
            6,
        ));
    }
}

fn dedup(problems: &mut Vec<Problem>) {
    let mut seen = std::collections::HashSet::new();
    problems.retain(|p| seen.insert((p.reason.clone(), p.message.clone())));
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateWaiting, ContainerStatus, PodCondition, PodStatus,
    };

    fn observed_with(pod: Pod) -> Observed {
        Observed {
            release: "pg".into(),
            namespace: "db".into(),
            statefulset: Some(StatefulSet::default()),
            pods: vec![pod],
            secret: Some(Default::default()),
            ..Observed::default()
        }
    }

    fn pod(ready: bool, waiting: Option<&str>) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some("pg-0".into());
        pod.status = Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            container_statuses: Some(vec![ContainerStatus {
                name: "postgres".into(),
                state: waiting.map(|r| ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(r.into()),
                        message: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        });
        pod
    }

    #[test]
    fn phases() {
        let now = Timestamp::now();
        assert_eq!(
            assess(&Observed::default(), now, None).phase,
            Phase::NotDeployed
        );
        assert_eq!(
            assess(&observed_with(pod(false, None)), now, None).phase,
            Phase::Deploying
        );
        assert_eq!(
            assess(&observed_with(pod(true, None)), now, None).phase,
            Phase::Ready
        );
        assert_eq!(
            assess(&observed_with(pod(true, None)), now, Some(true)).phase,
            Phase::Healthy
        );
        let unreachable = assess(&observed_with(pod(true, None)), now, Some(false));
        assert_eq!(unreachable.phase, Phase::Ready);
        assert_eq!(unreachable.problems[0].reason, "DatabaseUnreachable");
    }

    #[test]
    fn undiagnosed_warning_events_are_listed() {
        let event = |reason: &str, kind: &str| -> k8s_openapi::api::core::v1::Event {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": reason}, "type": kind, "reason": reason,
                "message": "m", "involvedObject": {"name": "pg-0"}
            }))
            .unwrap()
        };
        let mut observed = observed_with(pod(true, None));
        observed.events = vec![
            event("Unhealthy", "Warning"),
            event("Pulled", "Normal"),
            event("BackOff", "Warning"),
        ];
        let reasons: Vec<String> = assess(&observed, Timestamp::now(), Some(true))
            .problems
            .into_iter()
            .map(|p| p.reason)
            .collect();
        assert_eq!(reasons, ["Unhealthy"]);
    }

    #[test]
    fn probe_failures_before_the_pod_became_ready_are_not_problems() {
        let at = |reason: &str, time: &str, uid: &str| -> k8s_openapi::api::core::v1::Event {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": reason}, "type": "Warning", "reason": reason,
                "message": "m", "lastTimestamp": time,
                "involvedObject": {"kind": "Pod", "name": "pg-0", "uid": uid}
            }))
            .unwrap()
        };
        let mut ready = pod(true, None);
        ready.metadata.uid = Some("u1".into());
        let status = ready.status.get_or_insert_with(Default::default);
        status.conditions = Some(vec![serde_json::from_value(serde_json::json!({
            "type": "Ready", "status": "True", "lastTransitionTime": "2026-12-01T10:00:10Z"
        }))
        .unwrap()]);
        let mut observed = observed_with(ready);
        observed.events = vec![
            at("Unhealthy", "2026-12-01T10:00:05Z", "u1"),
            at("FailedMount", "2026-12-01T09:00:00Z", "u0"),
        ];
        assert!(assess(&observed, Timestamp::now(), Some(true))
            .problems
            .is_empty());
        observed
            .events
            .push(at("Unhealthy", "2026-12-01T10:05:00Z", "u1"));
        let problems = assess(&observed, Timestamp::now(), Some(true)).problems;
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].reason, "Unhealthy");
    }

    #[test]
    fn image_drift_is_reported() {
        let sts: StatefulSet = serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"app.kubernetes.io/version": "18"}},
            "spec": {"selector": {}, "serviceName": "pg-hl", "template": {"spec": {"containers": [{"name": "postgres", "image": "postgres:18.0"}]}}}
        }))
        .unwrap();
        let mut running = pod(true, None);
        running.spec = serde_json::from_value(
            serde_json::json!({"containers": [{"name": "postgres", "image": "postgres:17.7"}]}),
        )
        .unwrap();
        let mut observed = observed_with(running);
        observed.statefulset = Some(sts);
        let reasons: Vec<String> = assess(&observed, Timestamp::now(), Some(true))
            .problems
            .into_iter()
            .map(|p| p.reason)
            .collect();
        assert_eq!(reasons, ["ImageDrift", "UnpinnedImage"]);
    }

    #[test]
    fn an_upgrade_record_is_a_problem_naming_the_command_that_finishes_it() {
        let problem = |annotations: serde_json::Value| {
            let sts: StatefulSet = serde_json::from_value(serde_json::json!({
                "metadata": {"annotations": annotations},
                "spec": {"selector": {}, "serviceName": "pg-hl", "template": {}}
            }))
            .unwrap();
            let mut observed = observed_with(pod(true, None));
            observed.statefulset = Some(sts);
            assess(&observed, Timestamp::now(), Some(true))
                .problems
                .into_iter()
                .find(|p| p.reason.starts_with("Upgrade"))
        };
        assert_eq!(problem(serde_json::json!({})), None);
        let kept = problem(serde_json::json!({"kubectl-pg.io/upgrade-from-major": "16"})).unwrap();
        assert_eq!(kept.reason, "UpgradePending");
        assert!(kept.hint.unwrap().contains("--finalize"));
        for (step, flag) in [
            ("blocking-writes", "--rollback"),
            ("switching", "--rollback"),
            ("rolling-back", "--rollback"),
            ("verified", "--finalize"),
            ("finalizing", "--finalize"),
        ] {
            let stopped = problem(serde_json::json!({
                "kubectl-pg.io/upgrade-from-major": "16",
                "kubectl-pg.io/upgrade-phase": step,
            }))
            .unwrap();
            assert_eq!(stopped.reason, "UpgradeUnfinished", "{step}");
            assert!(stopped.hint.unwrap().contains(flag), "{step}");
        }
    }

    /// A pod the scheduler has refused since `since`, saying `message`.
    fn unschedulable_since(
        message: &str,
        since: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    ) -> Pod {
        let mut p = pod(false, None);
        let conditions = p.status.as_mut().unwrap().conditions.as_mut().unwrap();
        conditions.push(PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some(message.into()),
            last_transition_time: Some(since),
            ..Default::default()
        });
        p
    }

    #[test]
    fn hints_follow_the_cause() {
        let now = Timestamp::now();
        let long_ago = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            now - std::time::Duration::from_secs(600),
        );
        let unschedulable = |message: &str| unschedulable_since(message, long_ago.clone());
        let with_pending_claim = |pod: Pod| {
            let mut observed = observed_with(pod);
            let mut pvc = k8s_openapi::api::core::v1::PersistentVolumeClaim::default();
            pvc.metadata.name = Some("data-pg-0".into());
            pvc.metadata.creation_timestamp = Some(long_ago.clone());
            observed.pvc = Some(pvc);
            observed
        };
        let hint_of = |observed: &Observed, reason: &str| {
            assess(observed, now, None)
                .problems
                .into_iter()
                .find(|p| p.reason == reason)
                .and_then(|p| p.hint)
                .unwrap_or_else(|| panic!("no {reason}"))
        };
        // A claim that does not bind: the pod waits for it, and the fix is storage.
        let unbound = with_pending_claim(unschedulable(
            "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims.",
        ));
        assert!(hint_of(&unbound, "Unschedulable").contains("StorageClass"));
        assert!(hint_of(&unbound, "PVCUnbound").contains("StorageClass"));
        // A pod too big for the node: its WaitForFirstConsumer claim waits for it, and the fix
        // is capacity for both.
        let too_big = with_pending_claim(unschedulable(
            "0/1 nodes are available: 1 Insufficient cpu.",
        ));
        assert!(hint_of(&too_big, "Unschedulable").contains("--cpu-request"));
        assert!(hint_of(&too_big, "PVCUnbound").contains("--cpu-request"));
    }

    #[test]
    fn failures_carry_their_exit_codes() {
        let now = Timestamp::now();
        for (reason, code) in [
            ("CrashLoopBackOff", 5),
            ("ImagePullBackOff", 1),
            ("ErrImagePull", 1),
        ] {
            let a = assess(&observed_with(pod(false, Some(reason))), now, None);
            assert_eq!(a.phase, Phase::Failed, "{reason}");
            assert_eq!(a.failure().unwrap().exit_code, code, "{reason}");
        }
        let unschedulable = unschedulable_since(
            "0/1 nodes are available: 1 Insufficient cpu.",
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                now - std::time::Duration::from_secs(5),
            ),
        );
        let transient = assess(&observed_with(unschedulable.clone()), now, None);
        assert!(transient.failure().is_none(), "an autoscaler may be acting");
        assert_eq!(transient.phase, Phase::Deploying);
        let later = now + std::time::Duration::from_secs(UNSCHEDULABLE_GRACE_SECONDS as u64 + 1);
        let a = assess(&observed_with(unschedulable), later, None);
        assert_eq!(a.failure().unwrap().exit_code, 6);
        assert!(a.failure().unwrap().message.contains("Insufficient cpu"));
    }
}
