//! Waiting for the pod (and, on upgrade or restart, the rollout), driven by watches, with live
//! progress and a diagnosis when it fails.

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, LogParams};
use owo_colors::Stream;

use crate::cluster::release;
use crate::cluster::Cluster;
use crate::deployment::{assess, observe, Phase};
use crate::error::Error;
use crate::output::{paint, Tone};

/// Waits, driven by watches, until the pod is ready with the current spec; diagnoses failures.
/// With `upgrade` (a new template was applied: install --upgrade, restart) it also waits for
/// the rollout to finish, and only the new revision's pod can fail the wait.
pub async fn wait_ready(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    timeout: Duration,
    upgrade: bool,
) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    let selector = release::selector(name);
    let mut changes = crate::deployment::changes::changes(cluster, ns, name);
    let mut last = String::new();
    loop {
        let observed = observe::observe(cluster, ns, name).await?;
        let assessment = assess(&observed, Timestamp::now(), None);
        let rolled_out = !upgrade || rollout_done(observed.statefulset.as_ref());
        if matches!(assessment.phase, Phase::Ready | Phase::Healthy) && rolled_out {
            return Ok(());
        }
        // During an upgrade the pod of the old revision may be failing: that is what the new
        // template is meant to fix, so only the new revision's pod can fail the wait.
        let old_pod = upgrade && !pod_has_update_revision(&observed);
        if let Some(failure) = assessment.failure().filter(|_| !old_pod) {
            let mut hints: Vec<String> = failure.hint.iter().cloned().collect();
            if failure.reason == "CrashLoopBackOff" {
                hints.extend(last_log_lines(cluster, ns, name).await);
            }
            return Err(Error::Deployment {
                message: failure.message.clone(),
                hints,
                code: failure.exit_code,
            });
        }
        let line = progress_line(&observed, &assessment);
        if line != last {
            crate::note!("{}", paint(&line, Tone::Dim, Stream::Stderr));
            last = line;
        }
        tokio::select! {
            _ = changes.next() => {}
            _ = tokio::time::sleep_until(deadline) => {
                // Still unschedulable at the deadline: no longer transient, whatever the grace.
                if let Some(p) = assessment.problems.iter().find(|p| p.reason == "Unschedulable") {
                    return Err(Error::Deployment {
                        message: p.message.clone(),
                        hints: p.hint.iter().cloned().collect(),
                        code: 6,
                    });
                }
                return Err(Error::Deployment {
                    message: format!("timed out after {}s: {}", timeout.as_secs(), progress_line(&observed, &assessment)),
                    hints: vec![format!("see what it waits for: kubectl describe pod -n {ns} -l {selector}")],
                    code: 4,
                });
            }
        }
    }
}

/// Waits (a watch, bounded by `timeout`) until the StatefulSet controller has observed
/// `generation` of `name`'s template. A pod deleted before that is recreated from the revision
/// the controller still knows, and an OrderedReady StatefulSet never replaces it if it is not
/// Ready: so a stuck pod is deleted only once the fixed template is the one it will get.
pub async fn template_observed(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    generation: Option<i64>,
    timeout: Duration,
) {
    let Some(generation) = generation else { return };
    let sets: kube::Api<StatefulSet> = kube::Api::namespaced(cluster.client.clone(), ns);
    let seen = move |sts: Option<&StatefulSet>| {
        sts.and_then(|s| s.status.as_ref()?.observed_generation)
            .is_some_and(|g| g >= generation)
    };
    let wait = kube::runtime::wait::await_condition(sets, name, seen);
    let _ = tokio::time::timeout(timeout, wait).await;
}

/// Whether the pod runs the StatefulSet's newest template, as far as the controller has seen
/// it (until it observes the new generation, it cannot tell).
fn pod_has_update_revision(observed: &observe::Observed) -> bool {
    let Some(sts) = observed.statefulset.as_ref() else {
        return false;
    };
    let status = sts.status.as_ref();
    if status.and_then(|s| s.observed_generation) < sts.metadata.generation {
        return false;
    }
    let update = status.and_then(|s| s.update_revision.clone());
    let pod = observed.pod().and_then(|p| {
        p.metadata
            .labels
            .as_ref()?
            .get("controller-revision-hash")
            .cloned()
    });
    matches!((update, pod), (Some(u), Some(p)) if u == p)
}

fn rollout_done(sts: Option<&StatefulSet>) -> bool {
    let Some(sts) = sts else { return false };
    let generation = sts.metadata.generation.unwrap_or_default();
    sts.status.as_ref().is_some_and(|s| {
        s.observed_generation.unwrap_or_default() >= generation
            && s.ready_replicas.unwrap_or_default() >= 1
            && s.update_revision.is_some()
            && s.current_revision == s.update_revision
    })
}

/// `phase Deploying: pod pg-0 is Pending (ContainerCreating), PVC Bound, latest event: …`
fn progress_line(
    observed: &observe::Observed,
    assessment: &crate::deployment::assess::Assessment,
) -> String {
    let pod = observed
        .pod()
        .map_or_else(|| "no pod yet".into(), release::describe_pod);
    let pvc = observed
        .pvc
        .as_ref()
        .and_then(|p| p.status.as_ref()?.phase.clone())
        .unwrap_or_else(|| "not created".into());
    let event = observed
        .events
        .last()
        .map(|e| {
            format!(
                ", latest event: {} {}",
                e.reason.clone().unwrap_or_default(),
                e.message.clone().unwrap_or_default()
            )
        })
        .unwrap_or_default();
    format!(
        "phase {}: {pod}, PVC {pvc}{event}",
        assessment.phase.as_str()
    )
}

/// The server's last words, for a hint; the release's secrets are made known to the redactor
/// first (the hint is printed through it: a failed statement in the log may quote a password).
async fn last_log_lines(cluster: &Cluster, namespace: &str, release: &str) -> Vec<String> {
    let _ = release::learn_secrets(cluster, release).await;
    let pod = &release::pod_name(release);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
    let params = LogParams {
        container: Some(crate::manifests::render::CONTAINER.into()),
        tail_lines: Some(10),
        previous: true,
        ..LogParams::default()
    };
    match pods.logs(pod, &params).await {
        Ok(text) => text
            .lines()
            .map(|l| format!("log: {}", crate::output::redact::redact(l)))
            .collect(),
        Err(_) => Vec::new(),
    }
}
