//! A single instance moved to a CloudNativePG Cluster of the same name, with every row: a new
//! Cluster that takes the release's own credentials Secret is made and waited for while the
//! single instance still serves; then writes are blocked there (pg_hba.conf, which no client
//! can override), a pg_dumpall of it goes into a local backup file, the backup is restored
//! into the Cluster's primary, and the two servers' snapshots are compared (row counts per
//! table, migration history, extensions, roles) before the release's Service is pointed at the
//! Cluster's primary.
//!
//! Why a dump through the API, not CloudNativePG's `bootstrap.initdb.import`: the import
//! connects from the new pods to the old server over the pod network, which a single instance's
//! pod need not be reachable on (a NetworkPolicy, or a node without one), and it copies
//! databases, not roles. The dump goes through the same exec streams as every other command,
//! and the backup file stays behind as one more way back.
//!
//! Every step is recorded on the StatefulSet ([`Phase`]) before it acts, so a signal, `kill
//! -9`, a lost connection or a refused permission leaves a state that a rerun, `--rollback` or
//! `--finalize` goes on from. Nothing of the single instance is deleted before `--finalize`,
//! and then only once the Cluster answers with the release's credentials.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{json, Value};

use crate::cluster::rbac::Permission;
use crate::cluster::release::{self, Target};
use crate::cluster::Cluster;
use crate::deployment::apply::Live;
use crate::deployment::cnpg::{self, CnpgCluster};
use crate::deployment::kind::Release;
use crate::deployment::writes;
use crate::error::Error;
use crate::manifests::render::{self, FIELD_MANAGER};
use crate::manifests::InstallSpec;
use crate::transfer::{snapshot, whole, PendingFile};

/// On the StatefulSet: the step the move is at.
pub const ANNOTATION_PHASE: &str = "kubectl-pg.io/to-cluster-phase";
/// On the StatefulSet: the Cluster's instance count.
pub const ANNOTATION_INSTANCES: &str = "kubectl-pg.io/to-cluster-instances";
/// On the StatefulSet: the backup file the move wrote (absolute).
pub const ANNOTATION_BACKUP: &str = "kubectl-pg.io/to-cluster-backup";
/// On the Cluster: the uid of the StatefulSet it was made from. Only a Cluster carrying its
/// StatefulSet's uid is deleted by a rollback.
pub const ANNOTATION_FROM: &str = cnpg::ANNOTATION_MOVED_FROM;

/// How long a new Cluster may go without any status before the operator is said missing.
const OPERATOR_SILENCE: Duration = Duration::from_secs(60);

/// What the move, its automatic undo and its rollback use: checked before the first write.
pub const PERMISSIONS: [Permission; 20] = [
    ("coordination.k8s.io", "leases", "get"),
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "update"),
    ("coordination.k8s.io", "leases", "delete"),
    ("apps", "statefulsets", "get"),
    ("apps", "statefulsets", "patch"),
    ("", "services", "get"),
    ("", "services", "patch"),
    ("", "secrets", "get"),
    ("", "pods", "get"),
    ("", "pods", "list"),
    ("", "pods", "watch"),
    ("", "pods/exec", "get"),
    ("", "pods/exec", "create"),
    ("postgresql.cnpg.io", "clusters", "get"),
    ("postgresql.cnpg.io", "clusters", "list"),
    ("postgresql.cnpg.io", "clusters", "watch"),
    ("postgresql.cnpg.io", "clusters", "create"),
    ("postgresql.cnpg.io", "clusters", "patch"),
    ("postgresql.cnpg.io", "clusters", "delete"),
];

/// What `--finalize` deletes, besides what the move uses.
pub const FINALIZE_PERMISSIONS: [Permission; 4] = [
    ("apps", "statefulsets", "delete"),
    ("", "services", "delete"),
    ("", "persistentvolumeclaims", "delete"),
    ("", "secrets", "patch"),
];

/// The steps of a move, each recorded on the StatefulSet before it acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The Cluster is being made; the single instance takes writes as before. Undone by
    /// deleting the Cluster.
    Preparing,
    /// Writes are being blocked and the backup written. Undone by allowing writes again and
    /// deleting the Cluster.
    Blocking,
    /// The backup is being restored into the Cluster; writes stay blocked on the single
    /// instance, whose data nothing touches. Undone as `Blocking`.
    Copying,
    /// The Cluster holds the verified data; the Service still points at the blocked instance.
    Verified,
    /// The release is the Cluster; the single instance stays, blocked, until `--finalize`.
    Moved,
    /// `--rollback` is returning to the single instance.
    RollingBack,
    /// `--finalize` is deleting the single instance.
    Finalizing,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Preparing => "preparing",
            Phase::Blocking => "blocking-writes",
            Phase::Copying => "copying",
            Phase::Verified => "verified",
            Phase::Moved => "moved",
            Phase::RollingBack => "rolling-back",
            Phase::Finalizing => "finalizing",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [
            Phase::Preparing,
            Phase::Blocking,
            Phase::Copying,
            Phase::Verified,
            Phase::Moved,
            Phase::RollingBack,
            Phase::Finalizing,
        ]
        .into_iter()
        .find(|p| p.name() == name)
    }
}

/// A move in progress, as recorded on the StatefulSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub phase: Phase,
    pub instances: u32,
    pub backup: String,
}

impl Record {
    /// The record on a StatefulSet, if a move is pending.
    pub fn read(meta: &ObjectMeta) -> Result<Option<Self>, Error> {
        let annotations = meta.annotations.clone().unwrap_or_default();
        let Some(phase) = annotations.get(ANNOTATION_PHASE) else {
            return Ok(None);
        };
        let broken = |what: &str| {
            Error::invalid(format!(
                "the move record on StatefulSet {} lacks {what}: inspect its {}* annotations",
                meta.name.as_deref().unwrap_or_default(),
                "kubectl-pg.io/to-cluster-"
            ))
        };
        Ok(Some(Self {
            phase: Phase::from_name(phase).ok_or_else(|| broken("a known phase"))?,
            instances: annotations
                .get(ANNOTATION_INSTANCES)
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| broken("the instance count"))?,
            backup: annotations
                .get(ANNOTATION_BACKUP)
                .cloned()
                .unwrap_or_default(),
        }))
    }

    /// The merge patch that writes this record (`None`: removes it).
    fn patch(record: Option<&Self>, resource_version: Option<&str>) -> Value {
        let mut patch = json!({ "metadata": { "annotations": {
            ANNOTATION_PHASE: record.map(|r| r.phase.name()),
            ANNOTATION_INSTANCES: record.map(|r| r.instances.to_string()),
            ANNOTATION_BACKUP: record.map(|r| r.backup.clone()),
        } } });
        if let Some(version) = resource_version {
            patch["metadata"]["resourceVersion"] = json!(version);
        }
        patch
    }
}

/// Whether a StatefulSet's release is now served by the Cluster it moved to.
pub fn moved(meta: &ObjectMeta) -> bool {
    matches!(
        Record::read(meta).ok().flatten().map(|r| r.phase),
        Some(Phase::Moved | Phase::Finalizing)
    )
}

/// Writes `record` on StatefulSet `name` (`None` removes it); with `resource_version`, only
/// if the StatefulSet still has it, so that of two runs at once one goes on.
pub async fn record(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    record: Option<&Record>,
    resource_version: Option<&str>,
) -> Result<(), Error> {
    let sets: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let patch = Record::patch(record, resource_version);
    match sets.patch(name, &params, &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Err(Error::InvalidInput {
            message: format!(
                "StatefulSet {name} changed while this move started (another move, upgrade or install at the same time): nothing was changed"
            ),
            hint: Some(format!("see where it stands: kubectl pg status {name} -n {namespace}")),
        }),
        Err(e) => Err(cluster.error("patch", "statefulsets", e)),
    }
}

/// The roles a Cluster's bootstrap makes: they exist before the restore (its `CREATE ROLE`
/// of them is left out) and may be new after it. `owner` is the Cluster's database owner.
fn bootstrap_roles(owner: &str) -> Vec<String> {
    let mut roles: Vec<String> = [
        "postgres",
        "streaming_replica",
        "cnpg_metrics_exporter",
        "cnpg_pooler_pgbouncer",
    ]
    .map(String::from)
    .to_vec();
    if !roles.iter().any(|r| r == owner) {
        roles.push(owner.to_string());
    }
    roles
}

/// The Cluster a move makes of `spec`'s release: its storage, resources, database and major.
/// The clients' user keeps its Secret and password: the database owner's Secret when the user
/// is not `postgres`; else the superuser's (with superuser access on), the owner being `app`.
pub fn render(spec: &InstallSpec, instances: u32, from_uid: &str) -> Value {
    let secret = spec.secret_name();
    let superuser = spec.username == "postgres";
    let mut cluster_spec = spec.clone();
    if superuser {
        cluster_spec.username = "app".into();
        cluster_spec.existing_secret = None;
    } else {
        cluster_spec.existing_secret = Some(secret.clone());
    }
    let mut object = cnpg::render_cluster(&cluster_spec, instances, &cnpg::image_for(spec.major));
    if superuser {
        object["spec"]["enableSuperuserAccess"] = json!(true);
        object["spec"]["superuserSecret"] = json!({ "name": secret });
    }
    object["metadata"]["annotations"] = json!({
        ANNOTATION_FROM: from_uid,
        cnpg::ANNOTATION_CREDENTIALS: secret,
    });
    object
}

/// The Cluster's owner for `spec`'s user (see [`render`]).
fn owner(spec: &InstallSpec) -> String {
    if spec.username == "postgres" {
        "app".into()
    } else {
        spec.username.clone()
    }
}

/// The objects the operator makes for Cluster `name` of `instances`: none may exist already
/// (another release's, or a team's), or the operator would take or trip over them.
fn operator_names(name: &str, instances: u32) -> Vec<(&'static str, String)> {
    let mut out = vec![
        ("services", format!("{name}-rw")),
        ("services", format!("{name}-ro")),
        ("services", format!("{name}-r")),
        ("secrets", format!("{name}-app")),
        ("secrets", format!("{name}-ca")),
        ("secrets", format!("{name}-server")),
        ("secrets", format!("{name}-replication")),
        ("secrets", format!("{name}-superuser")),
    ];
    out.extend((1..=instances).map(|i| ("persistentvolumeclaims", format!("{name}-{i}"))));
    out
}

/// Refuses, before any write, a move whose Cluster would collide with objects already there.
/// What an earlier Cluster `name` left behind (owned by it, so the garbage collector removes
/// it after a rollback deleted the Cluster) is waited for instead.
pub async fn check_names(cluster: &Cluster, name: &str, instances: u32) -> Result<(), Error> {
    for (resource, object) in operator_names(name, instances) {
        let found = match resource {
            "services" => absent::<Service>(cluster, name, &object).await,
            "secrets" => absent::<Secret>(cluster, name, &object).await,
            _ => absent::<PersistentVolumeClaim>(cluster, name, &object).await,
        }
        .map_err(|e| cluster.error("get", resource, e))?;
        if !found {
            let ns = &cluster.namespace;
            return Err(Error::InvalidInput {
                message: format!(
                    "{resource} {object} already exists in namespace {ns}: the operator would make one of that name for Cluster {name}; nothing was changed"
                ),
                hint: Some(format!(
                    "see whose it is: kubectl get {resource} {object} -n {ns} -o yaml"
                )),
            });
        }
    }
    Ok(())
}

/// Whether `object` is absent, or goes within 60 s when it belongs to a Cluster `owner` (none
/// exists while a move starts: it is a deleted one's, being collected).
async fn absent<K>(cluster: &Cluster, owner: &str, object: &str) -> Result<bool, kube::Error>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let Some(meta) = api.get_metadata_opt(object).await? else {
        return Ok(true);
    };
    let collected = meta.metadata.owner_references.iter().flatten().any(|o| {
        o.kind == "Cluster" && o.name == owner && o.api_version.starts_with("postgresql.cnpg.io/")
    });
    if !collected {
        return Ok(false);
    }
    crate::note!("waiting for {object}, left by a deleted Cluster {owner}, to be collected");
    let uid = meta.metadata.uid.unwrap_or_default();
    let gone = kube::runtime::wait::await_condition(
        api,
        object,
        kube::runtime::wait::conditions::is_deleted(&uid),
    );
    Ok(matches!(
        tokio::time::timeout(Duration::from_secs(60), gone).await,
        Ok(Ok(_))
    ))
}

/// What a move did.
#[derive(Debug, Clone)]
pub struct Copied {
    /// The record as the copy left it (`verified`).
    pub record: Record,
    pub tables: usize,
    pub backup_bytes: u64,
    /// When writes were blocked: the downtime runs until the Service points at the Cluster.
    pub blocked_at: Instant,
}

/// The Cluster `name` as it is now (exit 3 when gone).
async fn read_cluster(cluster: &Cluster, name: &str) -> Result<CnpgCluster, Error> {
    cnpg::get(cluster, &cluster.namespace, name)
        .await?
        .ok_or_else(|| Error::NotFound {
            message: format!(
                "Cluster {name:?} is gone from namespace {:?}",
                cluster.namespace
            ),
            hint: None,
        })
}

/// The Cluster's primary, for tools run there over the socket as `postgres` (the only role its
/// peer authentication admits).
async fn primary_target(cluster: &Cluster, name: &str) -> Result<Target, Error> {
    super::cnpg_upgrade::primary(cluster, &read_cluster(cluster, name).await?).await
}

/// Steps 1 to 3: the Cluster made and waited for while the single instance still takes writes
/// (its bootstrap is most of the time a move takes, and none of it is downtime); then writes
/// blocked and the backup written into `backup`; then the backup restored into the Cluster's
/// primary and verified. Leaves the record at `verified`, writes still blocked.
pub async fn copy(
    cluster: &Cluster,
    live: &Live,
    instances: u32,
    backup: &Path,
    timeout: Duration,
) -> Result<Copied, Error> {
    let spec = &live.spec;
    let name = spec.release.as_str();
    let ns = spec.namespace.as_str();
    let pending = PendingFile::create_regular(backup)?;
    let mut record_now = Record {
        phase: Phase::Preparing,
        instances,
        backup: whole::absolute(backup),
    };
    record(
        cluster,
        ns,
        name,
        Some(&record_now),
        live.sts.metadata.resource_version.as_deref(),
    )
    .await?;
    let uid = live.sts.metadata.uid.clone().unwrap_or_default();
    cnpg::apply(cluster, &render(spec, instances, &uid)).await?;
    crate::note!(
        "applied Cluster {name} ({instances} instances); the single instance takes writes until the Cluster is healthy"
    );
    cnpg::wait_healthy(cluster, ns, name, timeout, OPERATOR_SILENCE).await?;
    let target = primary_target(cluster, name).await?;

    record_now.phase = Phase::Blocking;
    record(cluster, ns, name, Some(&record_now), None).await?;
    crate::note!("blocking writes on release {name} (pg_hba.conf refuses every client)");
    let blocked_at = Instant::now();
    let source = crate::deployment::apply::socket_target(spec);
    writes::block(cluster, &source).await?;
    let (before, backup_bytes) =
        whole::snapshot_and_backup(cluster, &source, pending, backup).await?;
    crate::note!(
        "backup complete: {} ({})",
        backup.display(),
        crate::transfer::human_bytes(backup_bytes)
    );

    record_now.phase = Phase::Copying;
    record(cluster, ns, name, Some(&record_now), None).await?;
    crate::note!("restoring the backup into the primary {}", target.pod);
    let roles = bootstrap_roles(&owner(spec));
    let existing: Vec<&str> = roles
        .iter()
        .map(String::as_str)
        .chain([spec.username.as_str()])
        .collect();
    whole::restore_all(cluster, &target, backup, &existing, &spec.database).await?;
    crate::note!("verifying: row counts per table, migration history, extensions, roles");
    let after = snapshot::take(cluster, &target).await?;
    let diff = differences(&before, &after, &roles);
    if !diff.is_empty() {
        return Err(Error::Deployment {
            message: format!(
                "verification found {} difference(s) between the single instance and the Cluster: {}",
                diff.len(),
                diff.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
            ),
            hints: Vec::new(),
            code: 5,
        });
    }
    record_now.phase = Phase::Verified;
    record(cluster, ns, name, Some(&record_now), None).await?;
    Ok(Copied {
        record: record_now,
        tables: snapshot::tables(&after),
        backup_bytes,
        blocked_at,
    })
}

/// The differences between the single instance's snapshot and the Cluster's, but for the
/// roles the Cluster's bootstrap made that the single instance lacked.
fn differences(
    before: &snapshot::Snapshot,
    after: &snapshot::Snapshot,
    made: &[String],
) -> Vec<String> {
    let mut after = after.clone();
    for role in made {
        let key = format!("role/{role}");
        if !before.contains_key(&key) {
            after.remove(&key);
        }
    }
    snapshot::differences(&before.clone(), &after)
}

/// Step 3, on a verified Cluster: the release's Service points at its primary, the Cluster
/// answers the release's credentials through a tunnel, and the record says `moved`. Returns
/// the primary.
pub async fn complete(
    cluster: &Cluster,
    live: &Live,
    record_now: &Record,
) -> Result<String, Error> {
    let spec = &live.spec;
    point_service(cluster, spec, true).await?;
    let found = Release::Cnpg(Box::new(read_cluster(cluster, &spec.release).await?));
    let (target, _) = found.writer(cluster, "SELECT pg_current_xact_id()").await?;
    let moved = Record {
        phase: Phase::Moved,
        ..record_now.clone()
    };
    record(cluster, &spec.namespace, &spec.release, Some(&moved), None).await?;
    Ok(target.pod)
}

/// Points the release's own Service `R` at the Cluster's primary (`to_cluster`), or back at its
/// pod: old DSNs keep working. Server-side apply of the whole Service, by the manager that
/// made it, so the selector it no longer names is removed.
async fn point_service(
    cluster: &Cluster,
    spec: &InstallSpec,
    to_cluster: bool,
) -> Result<(), Error> {
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), &spec.namespace);
    let live = services
        .get_metadata_opt(&spec.release)
        .await
        .map_err(|e| cluster.error("get", "services", e))?;
    if !live.is_some_and(|s| release::made_for(&s.metadata, &spec.release)) {
        crate::note!(
            "Service {} is not kubectl-pg's: left alone (its clients move to {}-rw)",
            spec.release,
            spec.release
        );
        return Ok(());
    }
    let mut service = render::service(spec);
    if to_cluster {
        service["spec"]["selector"] = json!({
            cnpg::LABEL_CLUSTER: spec.release,
            cnpg::LABEL_ROLE: "primary",
        });
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    services
        .patch(&spec.release, &params, &Patch::Apply(&service))
        .await
        .map_err(|e| cluster.error("patch", "services", e))?;
    Ok(())
}

/// Back to the single instance from any step but `finalizing`: the Service points at its pod,
/// its writes are allowed, and only then is the Cluster this move made (its StatefulSet's uid
/// on it) deleted, with its volumes. The record goes last.
pub async fn undo(cluster: &Cluster, live: &Live, timeout: Duration) -> Result<(), Error> {
    let spec = &live.spec;
    let name = spec.release.as_str();
    let recorded = Record::read(&live.sts.metadata)?;
    if let Some(r) = &recorded {
        if !matches!(r.phase, Phase::Preparing | Phase::Blocking) {
            let rolling = Record {
                phase: Phase::RollingBack,
                ..r.clone()
            };
            record(cluster, &spec.namespace, name, Some(&rolling), None).await?;
            point_service(cluster, spec, false).await?;
        }
    }
    writes::unblock(
        cluster,
        &crate::deployment::apply::socket_target(spec),
        None,
    )
    .await?;
    crate::note!("release {name}'s single instance allows writes again");
    if let Some(c) = cnpg::get(cluster, &spec.namespace, name).await? {
        let uid = live.sts.metadata.uid.as_deref().unwrap_or_default();
        if c.annotation(ANNOTATION_FROM).as_deref() == Some(uid) && !uid.is_empty() {
            crate::note!("deleting Cluster {name}, which this move made, with its volumes");
            cnpg::delete(cluster, &c, timeout).await?;
        } else {
            crate::note!("Cluster {name} was not made by this move: left alone");
        }
    }
    record(cluster, &spec.namespace, name, None, None).await
}

/// `--finalize`: once the Cluster answers the release's credentials, the single instance is
/// deleted (its StatefulSet, headless Service, NetworkPolicy, certificate Secret and volume).
/// The Service `R` and the credentials Secret stay, now the Cluster's: they go with it.
pub async fn finalize(
    cluster: &Cluster,
    live: &Live,
    record_now: &Record,
    timeout: Duration,
) -> Result<(), Error> {
    let spec = &live.spec;
    let name = spec.release.as_str();
    let ns = spec.namespace.as_str();
    let c = read_cluster(cluster, name).await?;
    let found = Release::Cnpg(Box::new(c.clone()));
    found.writer(cluster, "SELECT pg_current_xact_id()").await?;
    let finalizing = Record {
        phase: Phase::Finalizing,
        ..record_now.clone()
    };
    record(cluster, ns, name, Some(&finalizing), None).await?;
    let owner = json!({ "metadata": { "ownerReferences": [{
        "apiVersion": "postgresql.cnpg.io/v1",
        "kind": "Cluster",
        "name": name,
        "uid": c.object.metadata.uid.clone().unwrap_or_default(),
    }] } });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), ns);
    let ours = |meta: &ObjectMeta| release::made_for(meta, name);
    if services
        .get_metadata_opt(name)
        .await
        .map_err(|e| cluster.error("get", "services", e))?
        .is_some_and(|s| ours(&s.metadata))
    {
        services
            .patch(name, &params, &Patch::Merge(&owner))
            .await
            .map_err(|e| cluster.error("patch", "services", e))?;
    }
    let credentials = spec.secret_name();
    if secrets
        .get_metadata_opt(&credentials)
        .await
        .map_err(|e| cluster.error("get", "secrets", e))?
        .is_some_and(|s| ours(&s.metadata))
    {
        secrets
            .patch(&credentials, &params, &Patch::Merge(&owner))
            .await
            .map_err(|e| cluster.error("patch", "secrets", e))?;
    }
    // Deleted last, and only what the single instance alone used.
    delete_ours(cluster, &services, &format!("{name}-hl"), name, "services").await?;
    let policies: Api<NetworkPolicy> = Api::namespaced(cluster.client.clone(), ns);
    if let Ok(Some(meta)) = policies
        .get_metadata_opt(name)
        .await
        .map(|p| p.map(|p| p.metadata))
    {
        if ours(&meta) {
            gone(
                cluster,
                policies.delete(name, &release::delete_only(meta.uid)).await,
                "networkpolicies",
            )?;
        }
    }
    let tls = crate::manifests::certs::secret_name(name);
    delete_ours(cluster, &secrets, &tls, name, "secrets").await?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), ns);
    let claim = crate::deployment::observe::pvc_name(name);
    let claim_uid = claims
        .get_metadata_opt(&claim)
        .await
        .map_err(|e| cluster.error("get", "persistentvolumeclaims", e))?
        .and_then(|c| c.metadata.uid);
    if let Some(uid) = &claim_uid {
        gone(
            cluster,
            claims
                .delete(&claim, &release::delete_only(Some(uid.clone())))
                .await,
            "persistentvolumeclaims",
        )?;
    }
    // The StatefulSet holds the record: it goes last.
    let sets: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), ns);
    gone(
        cluster,
        sets.delete(name, &release::delete_only(live.sts.metadata.uid.clone()))
            .await,
        "statefulsets",
    )?;
    if let Some(uid) = claim_uid {
        let wait = kube::runtime::wait::await_condition(
            claims.clone(),
            &claim,
            kube::runtime::wait::conditions::is_deleted(&uid),
        );
        if tokio::time::timeout(timeout, wait).await.is_err() {
            crate::note!("PVC {claim} is still being deleted (its pod stops first)");
        }
    }
    Ok(())
}

/// Deletes `object` if kubectl-pg made it for `release` (its uid the precondition); absent or
/// another's, it is left alone.
async fn delete_ours<K>(
    cluster: &Cluster,
    api: &Api<K>,
    object: &str,
    release: &str,
    resource: &str,
) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let found = api
        .get_metadata_opt(object)
        .await
        .map_err(|e| cluster.error("get", resource, e))?;
    match found.map(|o| o.metadata) {
        Some(meta) if release::made_for(&meta, release) => gone(
            cluster,
            api.delete(object, &release::delete_only(meta.uid)).await,
            resource,
        ),
        _ => Ok(()),
    }
}

/// A delete's outcome: gone already is fine.
fn gone<T>(cluster: &Cluster, result: Result<T, kube::Error>, resource: &str) -> Result<(), Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(cluster.error("delete", resource, e)),
    }
}

/// Where the move's backup goes when no path is given: `./R-NS-pgM-UNIXTIME.sql`.
pub fn default_backup(spec: &InstallSpec) -> PathBuf {
    whole::default_backup(&spec.release, &spec.namespace, spec.major)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(user: &str) -> InstallSpec {
        let mut spec = InstallSpec::from_request(&Default::default(), "db", "team").unwrap();
        spec.username = user.into();
        spec
    }

    #[test]
    fn every_phase_reads_back_from_its_name_and_a_record_from_its_patch() {
        for phase in [
            Phase::Preparing,
            Phase::Blocking,
            Phase::Copying,
            Phase::Verified,
            Phase::Moved,
            Phase::RollingBack,
            Phase::Finalizing,
        ] {
            assert_eq!(Phase::from_name(phase.name()), Some(phase));
            let record = Record {
                phase,
                instances: 3,
                backup: "/tmp/db.sql".into(),
            };
            let patch = Record::patch(Some(&record), Some("7"));
            assert_eq!(patch["metadata"]["resourceVersion"], "7");
            let meta: ObjectMeta = serde_json::from_value(patch["metadata"].clone()).unwrap();
            assert_eq!(Record::read(&meta).unwrap(), Some(record));
            assert_eq!(
                moved(&meta),
                matches!(phase, Phase::Moved | Phase::Finalizing)
            );
        }
        let cleared = Record::patch(None, None);
        assert!(cleared["metadata"]["annotations"][ANNOTATION_PHASE].is_null());
        assert!(Record::read(&ObjectMeta::default()).unwrap().is_none());
    }

    #[test]
    fn the_cluster_takes_the_release_secret_for_its_user() {
        let owner = render(&spec("learnflow"), 3, "uid-1");
        assert_eq!(owner["spec"]["bootstrap"]["initdb"]["owner"], "learnflow");
        assert_eq!(
            owner["spec"]["bootstrap"]["initdb"]["secret"]["name"],
            "db-credentials"
        );
        assert!(owner["spec"]["superuserSecret"].is_null());
        assert_eq!(owner["metadata"]["annotations"][ANNOTATION_FROM], "uid-1");
        let superuser = render(&spec("postgres"), 2, "uid-2");
        assert_eq!(superuser["spec"]["bootstrap"]["initdb"]["owner"], "app");
        assert!(superuser["spec"]["bootstrap"]["initdb"]["secret"].is_null());
        assert_eq!(superuser["spec"]["enableSuperuserAccess"], true);
        assert_eq!(
            superuser["spec"]["superuserSecret"]["name"],
            "db-credentials"
        );
        assert_eq!(
            superuser["metadata"]["annotations"][cnpg::ANNOTATION_CREDENTIALS],
            "db-credentials"
        );
        assert_eq!(superuser["spec"]["instances"], 2);
    }

    #[test]
    fn the_bootstraps_roles_may_be_new_and_nothing_else() {
        let before: snapshot::Snapshot = [
            ("role/learnflow", "true,true"),
            ("db/app/table/public.t", "5"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut after = before.clone();
        after.insert("role/postgres".into(), "true,true".into());
        after.insert("role/streaming_replica".into(), "false,true".into());
        let roles = bootstrap_roles("learnflow");
        assert!(differences(&before, &after, &roles).is_empty());
        after.insert("role/intruder".into(), "true,true".into());
        after.insert("db/app/table/public.t".into(), "4".into());
        assert_eq!(differences(&before, &after, &roles).len(), 2);
        assert_eq!(bootstrap_roles("postgres").len(), 4);
        assert_eq!(bootstrap_roles("app").len(), 5);
    }

    #[test]
    fn the_operators_names_for_a_cluster_are_all_checked() {
        let names: Vec<String> = operator_names("db", 3)
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        for n in [
            "db-rw",
            "db-ro",
            "db-r",
            "db-app",
            "db-ca",
            "db-server",
            "db-replication",
            "db-1",
            "db-3",
        ] {
            assert!(names.iter().any(|x| x == n), "{n}");
        }
    }
}
