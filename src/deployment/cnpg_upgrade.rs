//! A CloudNativePG Cluster's major upgrade, the operator's way (its declarative in-place
//! upgrade: `pg_upgrade --link` in a Job on the primary's volume, the replicas cloned again),
//! verified as a single instance's is.
//!
//! Writes are blocked by a `reject` rule in the Cluster's own `spec.postgresql.pg_hba`, which
//! the operator writes ahead of the rule that admits clients on every instance, the new
//! major's included: no client reaches a server until the new primary's snapshot matches the
//! old one. The snapshots and the backup go over the pods' local socket as `postgres` (peer
//! authentication, which the rule leaves open: a shell in the pod is administrator access).
//!
//! Each step is recorded on the Cluster's annotations before (or with) the change it makes, so
//! a rerun, `--rollback` or `--finalize` goes on from it after a signal or `kill -9`.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{json, Value};

use super::cnpg::{self, CnpgCluster};
use super::kind::Release;
use crate::cluster::exec;
use crate::cluster::release::Target;
use crate::cluster::Cluster;
use crate::error::Error;
use crate::manifests::render::FIELD_MANAGER;
use crate::transfer::{snapshot, whole, PendingFile};

const ANNOTATION_PHASE: &str = "kubectl-pg.io/upgrade-phase";
const ANNOTATION_FROM_IMAGE: &str = "kubectl-pg.io/upgrade-from-image";
const ANNOTATION_TO_IMAGE: &str = "kubectl-pg.io/upgrade-to-image";
const ANNOTATION_BACKUP: &str = "kubectl-pg.io/upgrade-backup";
/// When writes were blocked (ms since the epoch, this client's clock), so that a rerun that
/// finishes the upgrade still reports the downtime.
const ANNOTATION_BLOCKED_AT: &str = "kubectl-pg.io/upgrade-blocked-at";
/// The old primary's snapshot, for a rerun to verify the new one against after `kill -9`.
const ANNOTATION_SNAPSHOT: &str = "kubectl-pg.io/upgrade-snapshot";

/// The rule that blocks writes; its comment marks it as ours.
const BLOCK_RULE: &str =
    "host all all all reject # kubectl-pg: writes blocked during a major upgrade";

/// Ends every client session that came over TCP (the clients the rule now refuses), each
/// waited for (up to 5 s) so that a commit in flight either finished before the snapshot or
/// never happened. Socket sessions are the instance manager's and the tools': they stay.
const TERMINATE_CLIENTS: &str = "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity \
     WHERE pid <> pg_backend_pid() AND backend_type = 'client backend' AND client_addr IS NOT NULL;\n";

/// The pods of the operator's upgrade Job for Cluster `c`.
fn job_selector(c: &CnpgCluster) -> String {
    format!(
        "{}={},cnpg.io/jobRole=major-upgrade",
        cnpg::LABEL_CLUSTER,
        c.name
    )
}

/// Each step, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Writes blocked, the snapshot and backup being taken: undone by allowing writes.
    Blocking,
    /// The new image asked for: the operator runs pg_upgrade and clones the replicas.
    Upgrading,
    /// Upgraded, but the new primary's snapshot differs: writes stay blocked until
    /// `--finalize` accepts the data as it is.
    Unverified,
    /// Back to the old image after a failed pg_upgrade or `--rollback`.
    RollingBack,
}

impl Phase {
    /// The name recorded.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Blocking => "blocking-writes",
            Phase::Upgrading => "upgrading",
            Phase::Unverified => "unverified",
            Phase::RollingBack => "rolling-back",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [
            Phase::Blocking,
            Phase::Upgrading,
            Phase::Unverified,
            Phase::RollingBack,
        ]
        .into_iter()
        .find(|p| p.name() == name)
    }
}

/// An upgrade in progress, as recorded on the Cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub phase: Phase,
    pub from_image: String,
    pub to_image: String,
    pub backup: String,
    pub blocked_at_ms: Option<u64>,
    pub before: Option<snapshot::Snapshot>,
}

impl Record {
    /// The record on a Cluster, if an upgrade is pending.
    pub fn read(c: &CnpgCluster) -> Result<Option<Self>, Error> {
        let Some(phase) = c.annotation(ANNOTATION_PHASE) else {
            return Ok(None);
        };
        let broken = |what: &str| {
            Error::invalid(format!(
                "the upgrade record on Cluster {} lacks {what}: inspect its kubectl-pg.io/upgrade-* annotations",
                c.name
            ))
        };
        let before = match c.annotation(ANNOTATION_SNAPSHOT) {
            Some(text) => {
                Some(serde_json::from_str(&text).map_err(|_| broken("a readable snapshot"))?)
            }
            None => None,
        };
        Ok(Some(Self {
            phase: Phase::from_name(&phase).ok_or_else(|| broken("a known phase"))?,
            from_image: c
                .annotation(ANNOTATION_FROM_IMAGE)
                .ok_or_else(|| broken("the old image"))?,
            to_image: c
                .annotation(ANNOTATION_TO_IMAGE)
                .ok_or_else(|| broken("the new image"))?,
            backup: c.annotation(ANNOTATION_BACKUP).unwrap_or_default(),
            blocked_at_ms: c
                .annotation(ANNOTATION_BLOCKED_AT)
                .and_then(|t| t.parse().ok()),
            before,
        }))
    }

    /// The annotations that write this record (`None`: remove it).
    fn annotations(record: Option<&Self>) -> Value {
        json!({
            ANNOTATION_PHASE: record.map(|r| r.phase.name()),
            ANNOTATION_FROM_IMAGE: record.map(|r| r.from_image.clone()),
            ANNOTATION_TO_IMAGE: record.map(|r| r.to_image.clone()),
            ANNOTATION_BACKUP: record.map(|r| r.backup.clone()),
            ANNOTATION_BLOCKED_AT: record.and_then(|r| r.blocked_at_ms).map(|t| t.to_string()),
            ANNOTATION_SNAPSHOT: record
                .and_then(|r| r.before.as_ref())
                .map(|s| serde_json::to_string(s).unwrap_or_default()),
        })
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Record {
    /// From the block until now, as recorded (this run's or the one it finishes).
    pub fn downtime(&self) -> Option<Duration> {
        self.blocked_at_ms
            .map(|t| Duration::from_millis(now_ms().saturating_sub(t)))
    }
}

/// The major of the data directory, as the operator last ran it.
pub fn data_major(c: &CnpgCluster) -> Option<u32> {
    c.field(&["status", "pgDataImageInfo", "majorVersion"])
        .and_then(Value::as_u64)
        .and_then(|m| u32::try_from(m).ok())
}

/// The pg_hba rules with the block added (`true`) or removed.
fn rules(c: &CnpgCluster, blocked: bool) -> Vec<String> {
    let mut rules: Vec<String> = c
        .field(&["spec", "postgresql", "pg_hba"])
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .filter(|r| *r != BLOCK_RULE)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if blocked {
        rules.insert(0, BLOCK_RULE.to_string());
    }
    rules
}

/// One merge patch of the Cluster: the record, and with it the block and the image. Merge,
/// not apply: install's server-side apply owns the rest of the spec and keeps it.
async fn patch(
    cluster: &Cluster,
    c: &CnpgCluster,
    record: Option<&Record>,
    blocked: bool,
    image: Option<&str>,
) -> Result<(), Error> {
    let mut body = json!({
        "metadata": { "annotations": Record::annotations(record) },
        "spec": { "postgresql": { "pg_hba": rules(c, blocked) } },
    });
    if let Some(image) = image {
        body["spec"]["imageName"] = json!(image);
    }
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    c.api(cluster)
        .patch(&c.name, &params, &Patch::Merge(&body))
        .await
        .map(|_| ())
        .map_err(|e| cluster.error("patch", "clusters.postgresql.cnpg.io", e))
}

/// Waits until the primary applies the Cluster's rules with the block (`blocked`) or without.
async fn wait_rule(cluster: &Cluster, target: &Target, blocked: bool) -> Result<(), Error> {
    let how = if blocked { "block" } else { "unblock" };
    // The operator reloads the rules it writes; only the wait is ours.
    let script = format!("login=postgres\n{}", super::writes::WAIT_APPLIED);
    let out = exec::run(
        cluster,
        &target.namespace,
        &target.pod,
        cnpg::CONTAINER,
        &["sh", "-c", &script, "sh", how],
        "",
    )
    .await?;
    if out.success {
        Ok(())
    } else {
        Err(Error::Tool {
            tool: "psql".into(),
            message: format!("in pod {}: {}", target.pod, out.reason()),
            hints: Vec::new(),
        })
    }
}

/// The Cluster's primary, for tools run there over the socket as `postgres` (the only role
/// its peer authentication admits).
pub async fn primary(cluster: &Cluster, c: &CnpgCluster) -> Result<Target, Error> {
    let mut target = Release::Cnpg(Box::new(c.clone())).target(cluster).await?;
    target.credentials.username = "postgres".into();
    Ok(target)
}

async fn reread(cluster: &Cluster, c: &CnpgCluster) -> Result<CnpgCluster, Error> {
    cnpg::get(cluster, &c.namespace, &c.name)
        .await?
        .ok_or_else(|| Error::invalid(format!("Cluster {} is gone", c.name)))
}

/// Steps 1 and 2: writes blocked on every instance, the open sessions ended, the snapshot and
/// the backup taken, then the new image asked for with the snapshot recorded.
pub async fn start(
    cluster: &Cluster,
    c: &CnpgCluster,
    to_image: &str,
    backup: &Path,
) -> Result<(Record, u64), Error> {
    let from_image = c
        .image()
        .ok_or_else(|| Error::invalid(format!("Cluster {} names no image", c.name)))?;
    let pending = PendingFile::create_regular(backup)?;
    let mut record = Record {
        phase: Phase::Blocking,
        from_image,
        to_image: to_image.to_string(),
        backup: whole::absolute(backup),
        blocked_at_ms: Some(now_ms()),
        before: None,
    };
    crate::note!(
        "blocking writes on Cluster {} (a reject rule in its pg_hba, on every instance)",
        c.name
    );
    patch(cluster, c, Some(&record), true, None).await?;
    let target = primary(cluster, c).await?;
    wait_rule(cluster, &target, true).await?;
    snapshot::psql(cluster, &target, "postgres", TERMINATE_CLIENTS).await?;
    let (before, bytes) = whole::snapshot_and_backup(cluster, &target, pending, backup).await?;
    crate::note!(
        "backup complete: {} ({})",
        backup.display(),
        crate::transfer::human_bytes(bytes)
    );
    record.phase = Phase::Upgrading;
    record.before = Some(before);
    let c = reread(cluster, c).await?;
    patch(cluster, &c, Some(&record), true, Some(to_image)).await?;
    crate::note!(
        "Cluster {} asked for {to_image}: the operator stops every instance and runs pg_upgrade on the primary's volume",
        c.name
    );
    Ok((record, bytes))
}

/// Step 3: waits until the operator reports the data on the new major and every instance
/// ready. A failed pg_upgrade pod is exit 5, after going back to the old image.
pub async fn wait_upgraded(
    cluster: &Cluster,
    c: &CnpgCluster,
    record: &Record,
    to_major: u32,
    timeout: Duration,
) -> Result<CnpgCluster, Error> {
    let api = c.api(cluster);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &c.namespace);
    let selector = job_selector(c);
    let config = kube::runtime::watcher::Config::default().labels(&selector);
    let jobs = kube::runtime::WatchStreamExt::applied_objects(
        kube::runtime::WatchStreamExt::default_backoff(kube::runtime::watcher(pods, config)),
    );
    let cluster_changes = kube::runtime::WatchStreamExt::default_backoff(
        kube::runtime::watcher::watch_object(api, &c.name),
    );
    futures_util::pin_mut!(jobs, cluster_changes);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut said = String::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                return Err(Error::Deployment {
                    message: format!(
                        "Cluster {} is not upgraded after {}s: {}",
                        c.name,
                        timeout.as_secs(),
                        if said.is_empty() { "no status".into() } else { said }
                    ),
                    hints: vec![format!(
                        "writes stay blocked; run the same command again to go on waiting, or see why: kubectl describe cluster {} -n {}",
                        c.name, c.namespace
                    )],
                    code: 4,
                });
            }
            pod = jobs.next() => {
                let Some(Ok(pod)) = pod else { continue };
                if let Some(why) = job_failure(&pod) {
                    let name = pod.metadata.name.unwrap_or_default();
                    crate::note!("the operator's upgrade pod {name} {why}: going back to {}", record.from_image);
                    rollback(cluster, c, record, timeout).await?;
                    return Err(Error::Deployment {
                        message: format!(
                            "the upgrade of Cluster {} to PostgreSQL {to_major} failed ({why}): it is back on {} with its data, and takes writes",
                            c.name, record.from_image
                        ),
                        hints: vec![format!("see why: kubectl describe pod {name} -n {}; kubectl logs {name} -n {0} --all-containers", c.namespace)],
                        code: 5,
                    });
                }
            }
            object = cluster_changes.next() => {
                let object = match object {
                    Some(Ok(Some(object))) => object,
                    None => return Err(Error::invalid(format!("the watch of Cluster {} ended", c.name))),
                    _ => continue,
                };
                let now = CnpgCluster { object, ..c.clone() };
                let phase = now.operator_phase().unwrap_or_default();
                let ready = now.field(&["status", "readyInstances"]).and_then(Value::as_u64).unwrap_or(0);
                let line = format!("{phase} ({ready}/{} instances ready)", now.wanted());
                if line != said && !phase.is_empty() {
                    crate::note!("Cluster {}: {line}", c.name);
                    said = line;
                }
                if data_major(&now) == Some(to_major) && phase == cnpg::HEALTHY && ready as usize >= now.wanted() {
                    return reread(cluster, c).await;
                }
            }
        }
    }
}

/// Step 4: the new primary's snapshot against the old one's. A match allows writes and
/// clears the record; a difference keeps writes blocked (exit 5).
pub async fn verify(cluster: &Cluster, c: &CnpgCluster, record: &Record) -> Result<usize, Error> {
    let target = primary(cluster, c).await?;
    crate::note!(
        "verifying on {}: row counts per table, migration history, extensions, roles",
        target.pod
    );
    let after = snapshot::take(cluster, &target).await?;
    let diff = record
        .before
        .as_ref()
        .map(|before| snapshot::differences(before, &after))
        .unwrap_or_else(|| vec!["no snapshot was recorded before the upgrade".into()]);
    if !diff.is_empty() {
        let unverified = Record {
            phase: Phase::Unverified,
            ..record.clone()
        };
        patch(cluster, c, Some(&unverified), true, None).await?;
        return Err(Error::Deployment {
            message: format!(
                "verification found {} difference(s) between PostgreSQL before and after the upgrade: {}; writes stay blocked",
                diff.len(),
                diff.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
            ),
            hints: vec![
                format!("the data from before the upgrade is in the backup {}", record.backup),
                format!(
                    "to allow writes on the upgraded data as it is: kubectl pg upgrade {} -n {} --finalize",
                    c.name, c.namespace
                ),
            ],
            code: 5,
        });
    }
    allow_writes(cluster, c).await?;
    Ok(snapshot::tables(&after))
}

/// Removes the block and the record together, then waits until the primary admits clients.
pub async fn allow_writes(cluster: &Cluster, c: &CnpgCluster) -> Result<(), Error> {
    let c = reread(cluster, c).await?;
    patch(cluster, &c, None, false, None).await?;
    let target = primary(cluster, &c).await?;
    wait_rule(cluster, &target, false).await?;
    crate::note!("Cluster {} takes writes again", c.name);
    Ok(())
}

/// Back to the old image while the data is still the old major's (a failed pg_upgrade leaves
/// it so), then writes allowed. Refused once the data is the new major's: `pg_upgrade --link`
/// made the old one unusable, and only the backup holds it.
pub async fn rollback(
    cluster: &Cluster,
    c: &CnpgCluster,
    record: &Record,
    timeout: Duration,
) -> Result<(), Error> {
    let c = reread(cluster, c).await?;
    let from_major = crate::manifests::spec::image_major(&record.from_image);
    if record.phase != Phase::Blocking && data_major(&c) != from_major {
        return Err(Error::InvalidInput {
            message: format!(
                "Cluster {}'s data is already PostgreSQL {}'s: pg_upgrade --link leaves no old data to go back to",
                c.name,
                data_major(&c).map_or("?".into(), |m| m.to_string())
            ),
            hint: Some(format!(
                "the data from before the upgrade is in the backup {}: restore it into a new release",
                record.backup
            )),
        });
    }
    if record.phase != Phase::Blocking {
        let rolling = Record {
            phase: Phase::RollingBack,
            ..record.clone()
        };
        patch(cluster, &c, Some(&rolling), true, Some(&record.from_image)).await?;
        crate::note!("Cluster {} asked for {} again", c.name, record.from_image);
        cnpg::wait_healthy(
            cluster,
            &c.namespace,
            &c.name,
            timeout,
            Duration::from_secs(600),
        )
        .await?;
    }
    allow_writes(cluster, &c).await
}

/// Why the operator's upgrade pod cannot succeed, if it cannot: pg_upgrade failed (the Job
/// has no retries), or an image cannot be pulled, before pg_upgrade ever ran.
fn job_failure(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() == Some("Failed") {
        return Some("failed".into());
    }
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    containers
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
        .find(|w| {
            matches!(
                w.reason.as_deref(),
                Some("ErrImagePull" | "ImagePullBackOff" | "InvalidImageName")
            )
        })
        .map(|w| {
            format!(
                "cannot pull its image ({})",
                w.message
                    .as_deref()
                    .or(w.reason.as_deref())
                    .unwrap_or_default()
            )
        })
}

/// Whether the operator's pg_upgrade runs now (its pod's main container started): a rollback
/// must wait for it. A pod still pending has not touched the data.
pub async fn job_running(cluster: &Cluster, c: &CnpgCluster) -> Result<bool, Error> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &c.namespace);
    let selector = job_selector(c);
    let list = pods
        .list(&kube::api::ListParams::default().labels(&selector))
        .await
        .map_err(|e| cluster.error("list", "pods", e))?;
    Ok(list
        .items
        .iter()
        .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster_with(annotations: Value, pg_hba: Value) -> CnpgCluster {
        let object: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "postgresql.cnpg.io/v1",
            "kind": "Cluster",
            "metadata": { "name": "db", "namespace": "ns", "annotations": annotations },
            "spec": { "postgresql": { "pg_hba": pg_hba } },
        }))
        .unwrap();
        CnpgCluster {
            name: "db".into(),
            namespace: "ns".into(),
            object,
            pods: Vec::new(),
        }
    }

    #[test]
    fn a_record_reads_back_from_its_annotations() {
        let record = Record {
            phase: Phase::Upgrading,
            from_image: "ghcr.io/cloudnative-pg/postgresql:17".into(),
            to_image: "ghcr.io/cloudnative-pg/postgresql:18".into(),
            backup: "/tmp/b.sql".into(),
            blocked_at_ms: Some(1_700_000_000_000),
            before: Some([("db/app/table/public.t".to_string(), "3".to_string())].into()),
        };
        let c = cluster_with(Record::annotations(Some(&record)), json!([]));
        assert_eq!(Record::read(&c).unwrap(), Some(record));
        for phase in [Phase::Blocking, Phase::Unverified, Phase::RollingBack] {
            assert_eq!(Phase::from_name(phase.name()), Some(phase));
        }
        let cleared = Record::annotations(None);
        assert!(cleared.as_object().unwrap().values().all(Value::is_null));
        let broken = cluster_with(json!({ ANNOTATION_PHASE: "upgrading" }), json!([]));
        assert!(Record::read(&broken).is_err());
    }

    #[test]
    fn an_upgrade_pod_fails_on_its_exit_or_an_image_it_cannot_pull() {
        let pod = |status: Value| -> Pod {
            serde_json::from_value(
                json!({ "metadata": { "name": "db-1-major-upgrade" }, "status": status }),
            )
            .unwrap()
        };
        assert_eq!(job_failure(&pod(json!({ "phase": "Running" }))), None);
        assert_eq!(
            job_failure(&pod(json!({ "phase": "Failed" }))).as_deref(),
            Some("failed")
        );
        let pulling = pod(json!({
            "phase": "Pending",
            "containerStatuses": [{
                "name": "major-upgrade", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": { "waiting": { "reason": "ImagePullBackOff", "message": "Back-off pulling image" } },
            }],
        }));
        assert!(job_failure(&pulling)
            .unwrap()
            .contains("Back-off pulling image"));
        let starting = pod(json!({
            "phase": "Pending",
            "initContainerStatuses": [{
                "name": "prepare", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": { "waiting": { "reason": "PodInitializing" } },
            }],
        }));
        assert_eq!(job_failure(&starting), None);
    }

    #[test]
    fn the_block_comes_first_and_goes_without_touching_the_teams_rules() {
        let theirs = "hostssl all reporting 10.0.0.0/8 scram-sha-256";
        let c = cluster_with(json!({}), json!([theirs]));
        assert_eq!(rules(&c, true), [BLOCK_RULE, theirs]);
        let blocked = cluster_with(json!({}), json!([BLOCK_RULE, theirs]));
        assert_eq!(rules(&blocked, true), [BLOCK_RULE, theirs]);
        assert_eq!(rules(&blocked, false), [theirs]);
    }
}
