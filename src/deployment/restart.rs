//! Restarts, as `kubectl rollout restart` and CloudNativePG's `restart` make them: the
//! annotation `kubectl.kubernetes.io/restartedAt` on a StatefulSet's pod template, or on a
//! Cluster, whose operator then restarts the replicas one by one and the primary last (after a
//! switchover, for the Clusters kubectl-pg makes).

use std::cell::Cell;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use serde_json::{json, Value};

use crate::cluster::{release, Cluster};
use crate::deployment::cnpg::{self, CnpgCluster};
use crate::deployment::rollout;
use crate::error::Error;
use crate::manifests::render::FIELD_MANAGER;

/// The annotation `kubectl rollout restart` sets; any change of it restarts the pods.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// How far a restart got, for what an interruption leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sent {
    /// Nothing was written.
    #[default]
    Nothing,
    /// The annotation was on its way: the restart may have begun.
    InFlight,
    /// The API took the annotation: the restart goes on in the cluster.
    Confirmed,
}

fn stamp() -> String {
    Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .unwrap_or_else(|_| Timestamp::now())
        .to_string()
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

/// Restarts StatefulSet release `name` and waits until its pod is replaced and ready.
pub async fn statefulset(
    cluster: &Cluster,
    name: &str,
    timeout: Duration,
    sent: &Cell<Sent>,
) -> Result<(), Error> {
    let ns = cluster.namespace.clone();
    let sets: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns);
    let pod_name = release::pod_name(name);
    let (sts, pod) = tokio::join!(sets.get_opt(name), pods.get_opt(&pod_name));
    let sts = sts.map_err(|e| cluster.error("get", "statefulsets", e))?;
    let pod = pod.map_err(|e| cluster.error("get", "pods", e))?;
    let Some(sts) = sts else {
        return Err(Error::NotFound {
            message: format!(
                "release {name:?} not found in namespace {ns:?} (context {:?})",
                cluster.context
            ),
            hint: Some(format!(
                "install it with: kubectl pg install {name} -n {ns}"
            )),
        });
    };
    if !release::made_for(&sts.metadata, name) {
        return Err(Error::InvalidInput {
            message: format!(
                "StatefulSet {name:?} in namespace {ns:?} was not made by kubectl-pg: not restarting it"
            ),
            hint: Some(format!("kubectl rollout restart statefulset/{name} -n {ns}")),
        });
    }
    let now = stamp();
    let patch = json!({
        "spec": { "template": { "metadata": { "annotations": { RESTARTED_AT: now } } } }
    });
    sent.set(Sent::InFlight);
    let patched = sets
        .patch(name, &params(), &Patch::Merge(&patch))
        .await
        .map_err(|e| cluster.error("patch", "statefulsets", e))?;
    sent.set(Sent::Confirmed);
    crate::note!("restarting release {name}: annotated its pod template {RESTARTED_AT}={now}");
    // A StatefulSet never replaces a pod that is not Ready (OrderedReady): a restart of a
    // stuck release deletes that pod itself, only that one (its UID).
    if let Some(pod) = pod.filter(|p| !release::is_ready(p)) {
        rollout::template_observed(cluster, &ns, name, patched.metadata.generation, timeout).await;
        match pods
            .delete(&pod_name, &release::delete_only(pod.metadata.uid.clone()))
            .await
        {
            Ok(_) => crate::note!(
                "deleted pod {pod_name}, which was not Ready: a StatefulSet never replaces such a pod itself"
            ),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(cluster.error("delete", "pods", e)),
        }
    }
    rollout::wait_ready(cluster, &ns, name, timeout, true).await
}

/// Restarts Cluster `c` the CloudNativePG way and waits, on watches of the Cluster and its
/// pods, until every instance runs with this restart's stamp, is ready, and the operator calls
/// the Cluster healthy. Only a Cluster kubectl-pg made, and not a hibernated one.
pub async fn cloudnative_pg(
    cluster: &Cluster,
    c: &CnpgCluster,
    timeout: Duration,
    sent: &Cell<Sent>,
) -> Result<(), Error> {
    if !cnpg::made_by_us(c) {
        return Err(Error::InvalidInput {
            message: format!(
                "Cluster {:?} was not made by kubectl-pg: restart will not change it",
                c.name
            ),
            hint: Some(format!(
                "its owners can: kubectl cnpg restart {} -n {}",
                c.name, c.namespace
            )),
        });
    }
    if cnpg::hibernating(c) {
        return Err(Error::InvalidInput {
            message: format!(
                "Cluster {:?} is hibernated (uninstalled, its data kept): no instance runs",
                c.name
            ),
            hint: Some(format!(
                "bring it back: kubectl pg install {} -n {} --instances {}",
                c.name,
                c.namespace,
                c.wanted()
            )),
        });
    }
    let now = stamp();
    let patch = json!({ "metadata": { "annotations": { RESTARTED_AT: now } } });
    sent.set(Sent::InFlight);
    c.api(cluster)
        .patch(&c.name, &params(), &Patch::Merge(&patch))
        .await
        .map_err(|e| cluster.error("patch", "clusters.postgresql.cnpg.io", e))?;
    sent.set(Sent::Confirmed);
    crate::note!(
        "restarting Cluster {}: annotated it {RESTARTED_AT}={now}; the operator restarts the replicas, then the primary",
        c.name
    );
    wait_restarted(cluster, c, &now, timeout).await
}

/// How many of the instances run with `stamp` and are ready, and whether that is all of them.
fn restarted(pods: &[&Pod], wanted: usize, stamp: &str) -> (usize, bool) {
    let live: Vec<&&Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(cnpg::LABEL_ROLE))
        })
        .collect();
    let done = live
        .iter()
        .filter(|p| {
            release::is_ready(p)
                && p.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(RESTARTED_AT))
                    .is_some_and(|v| v == stamp)
        })
        .count();
    (done, done == live.len() && done >= wanted)
}

async fn wait_restarted(
    cluster: &Cluster,
    c: &CnpgCluster,
    stamp: &str,
    timeout: Duration,
) -> Result<(), Error> {
    let mut stamp = stamp.to_string();
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &c.namespace);
    let selector = format!("{}={}", cnpg::LABEL_CLUSTER, c.name);
    let (store, writer) = reflector::store();
    let pod_events = reflector(
        writer,
        watcher(pods, watcher::Config::default().labels(&selector)),
    )
    .default_backoff()
    .map(|_| ())
    .boxed();
    let cluster_events = kube::runtime::watcher::watch_object(c.api(cluster), &c.name)
        .map(|o| o.ok().flatten())
        .filter_map(|o| async move { o })
        .boxed();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut phase = c.operator_phase().unwrap_or_default();
    let mut wanted = c.wanted();
    let mut said = String::new();
    futures_util::pin_mut!(pod_events, cluster_events);
    loop {
        tokio::select! {
            Some(()) = pod_events.next() => {}
            Some(object) = cluster_events.next() => {
                let text = |p: &str| object.data.pointer(p).and_then(Value::as_str).map(str::to_string);
                phase = text("/status/phase").unwrap_or_default();
                // A later restart (another run's) supersedes this one: its end is this one's.
                let now = object.metadata.annotations.as_ref().and_then(|a| a.get(RESTARTED_AT));
                if let Some(now) = now.filter(|now| now.as_str() > stamp.as_str()) {
                    crate::note!("Cluster {} was restarted again meanwhile ({now}): waiting for that restart", c.name);
                    stamp = now.clone();
                }
                wanted = object.data.pointer("/spec/instances").and_then(Value::as_u64).unwrap_or(1) as usize;
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Err(Error::Deployment {
                    message: format!(
                        "Cluster {} is not restarted after {}s: {said}",
                        c.name,
                        timeout.as_secs()
                    ),
                    hints: vec![format!(
                        "the operator goes on with it; see where it is: kubectl pg status {} -n {} --wait healthy",
                        c.name, c.namespace
                    )],
                    code: 4,
                });
            }
        }
        let state = store.state();
        let pods: Vec<&Pod> = state.iter().map(|p| p.as_ref()).collect();
        let (done, all) = restarted(&pods, wanted, &stamp);
        let now = format!("{phase} ({done}/{wanted} instances restarted)");
        if now != said {
            crate::note!("Cluster {}: {now}", c.name);
            said = now;
        }
        if all && phase == cnpg::HEALTHY {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn pod(name: &str, stamp: Option<&str>, ready: bool, deleting: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([(cnpg::LABEL_ROLE.to_string(), "replica".to_string())].into()),
                annotations: stamp.map(|s| [(RESTARTED_AT.to_string(), s.to_string())].into()),
                deletion_timestamp: deleting.then(|| Time(Timestamp::now())),
                ..Default::default()
            },
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_restart_ends_when_every_instance_runs_with_its_stamp() {
        let new = "2026-12-05T08:00:00Z";
        let a = pod("r-1", Some(new), true, false);
        let b = pod("r-2", Some("2026-12-01T00:00:00Z"), true, false);
        let c = pod("r-3", Some(new), false, false);
        let gone = pod("r-2", Some("old"), true, true);
        let d = pod("r-2", Some(new), true, false);
        assert_eq!(restarted(&[&a, &b, &c], 3, new), (1, false));
        assert_eq!(restarted(&[&a, &gone], 2, new), (1, false));
        assert_eq!(restarted(&[&a, &d], 3, new), (2, false));
        assert_eq!(restarted(&[&a, &d], 2, new), (2, true));
        // A pod without the stamp (an old one, or the Jobs' pods have no role label).
        assert_eq!(
            restarted(&[&a, &pod("r-2", None, true, false)], 2, new),
            (1, false)
        );
    }
}
