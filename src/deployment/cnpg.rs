//! CloudNativePG Clusters (`postgresql.cnpg.io/v1`) as releases: the operator runs the
//! instances; the plugin reads the Cluster and its pods, asks the primary about replication,
//! and reaches the database through the Services and Secrets the operator makes (`R-rw`,
//! `R-ro`, `R-r`; `R-app`, `R-ca`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::core::GroupVersionKind;
use serde::Serialize;
use serde_json::Value;

use crate::cluster::release::{self, Credentials, ReleaseTls, DATABASE_PORT};
use crate::cluster::{exec, Cluster};
use crate::error::Error;

/// The label CloudNativePG puts on every pod of a Cluster.
pub const LABEL_CLUSTER: &str = "cnpg.io/cluster";
/// The instance's role, on its pod: `primary` or `replica`.
pub const LABEL_ROLE: &str = "cnpg.io/instanceRole";
/// The operator's phase of a Cluster that needs nothing.
pub const HEALTHY: &str = "Cluster in healthy state";
/// On a Cluster kubectl-pg made from a single instance: the Secret its clients' credentials
/// are in (the release's own, which the Cluster takes for the owner or the superuser).
pub const ANNOTATION_CREDENTIALS: &str = "kubectl-pg.io/credentials-secret";
/// On a Cluster kubectl-pg made from a single instance: the uid of that StatefulSet.
pub const ANNOTATION_MOVED_FROM: &str = "kubectl-pg.io/moved-from";
/// The container that runs PostgreSQL (and psql, as the operator's image ships it).
pub const CONTAINER: &str = "postgres";

/// The Cluster resource, for dynamic reads (its CRD may be absent).
pub fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("postgresql.cnpg.io", "v1", "Cluster"),
        "clusters",
    )
}

/// One CloudNativePG Cluster as read now: the object and its instances' pods.
#[derive(Debug, Clone)]
pub struct CnpgCluster {
    pub name: String,
    pub namespace: String,
    pub object: DynamicObject,
    pub pods: Vec<Pod>,
}

/// One instance of a Cluster, for `status`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Instance {
    pub name: String,
    /// `primary` or `replica`.
    pub role: String,
    pub ready: bool,
    /// For a replica, its `pg_stat_replication` state on the primary (`streaming`, `catchup`);
    /// none when the primary does not list it.
    pub replication: Option<String>,
    /// How far its replay is behind the primary's current WAL position, in bytes.
    pub lag_bytes: Option<i64>,
}

/// The instance count of Cluster `name`, when there is one (one metadata read; none without
/// the CRD or the right to read Clusters, as for [`get`]).
pub async fn instances_of(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
) -> Result<Option<usize>, Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(cluster.client.clone(), namespace, &resource());
    match api.get_opt(name).await {
        Ok(found) => Ok(found.map(|o| {
            o.data
                .pointer("/spec/instances")
                .and_then(Value::as_u64)
                .unwrap_or(1) as usize
        })),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 403 => Ok(None),
        Err(e) => Err(cluster.error("get", "clusters.postgresql.cnpg.io", e)),
    }
}

/// Reads the Cluster named `name` and its pods; none when there is no such Cluster, or no
/// CloudNativePG CRD at all (both are a 404).
pub async fn get(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
) -> Result<Option<CnpgCluster>, Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(cluster.client.clone(), namespace, &resource());
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
    let params = ListParams::default().labels(&format!("{LABEL_CLUSTER}={name}"));
    let (object, pods) = tokio::join!(api.get_opt(name), pods.list(&params));
    let object = match object {
        Ok(object) => object,
        // Without the CRD the API answers a plain 404 page (not a NotFound Status); a user who
        // may not read Clusters has no CNPG releases to see.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 403 => None,
        Err(e) => return Err(cluster.error("get", "clusters.postgresql.cnpg.io", e)),
    };
    let Some(object) = object else {
        return Ok(None);
    };
    let mut pods = pods.map_err(|e| cluster.error("list", "pods", e))?.items;
    // Only the instances: the Jobs' pods (initdb, join) carry the label too.
    pods.retain(|p| {
        p.metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(LABEL_ROLE) || l.contains_key("role"))
    });
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok(Some(CnpgCluster {
        name: name.to_string(),
        namespace: namespace.to_string(),
        object,
        pods,
    }))
}

/// Every Cluster of the namespace, or of every namespace, with its instances' pods: two list
/// requests whatever their number (none without the CRD or the right to list Clusters).
pub async fn list(cluster: &Cluster, all_namespaces: bool) -> Result<Vec<CnpgCluster>, Error> {
    let (api, pods): (Api<DynamicObject>, Api<Pod>) = if all_namespaces {
        (
            Api::all_with(cluster.client.clone(), &resource()),
            Api::all(cluster.client.clone()),
        )
    } else {
        (
            Api::namespaced_with(cluster.client.clone(), &cluster.namespace, &resource()),
            Api::namespaced(cluster.client.clone(), &cluster.namespace),
        )
    };
    let objects = match api.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 403 => return Ok(Vec::new()),
        Err(e) => return Err(cluster.error("list", "clusters.postgresql.cnpg.io", e)),
    };
    if objects.is_empty() {
        return Ok(Vec::new());
    }
    let params = ListParams::default().labels(&format!("{LABEL_CLUSTER},{LABEL_ROLE}"));
    let mut pods = pods
        .list(&params)
        .await
        .map_err(|e| cluster.error("list", "pods", e))?
        .items;
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok(objects
        .into_iter()
        .map(|object| {
            let name = object.metadata.name.clone().unwrap_or_default();
            let namespace = object.metadata.namespace.clone().unwrap_or_default();
            let mine = pods
                .iter()
                .filter(|p| {
                    p.metadata.namespace.as_deref() == Some(&namespace)
                        && p.metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get(LABEL_CLUSTER))
                            == Some(&name)
                })
                .cloned()
                .collect();
            CnpgCluster {
                name,
                namespace,
                object,
                pods: mine,
            }
        })
        .collect())
}

/// The names of the Clusters in a namespace (none without the CRD, or without the right to
/// list them).
pub async fn names(cluster: &Cluster, namespace: &str) -> Result<Vec<String>, Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(cluster.client.clone(), namespace, &resource());
    match api.list_metadata(&ListParams::default()).await {
        Ok(list) => Ok(list
            .items
            .into_iter()
            .filter_map(|o| o.metadata.name)
            .collect()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 403 => Ok(Vec::new()),
        Err(e) => Err(cluster.error("list", "clusters.postgresql.cnpg.io", e)),
    }
}

impl CnpgCluster {
    /// One of the Cluster's annotations.
    pub fn annotation(&self, key: &str) -> Option<String> {
        self.object.metadata.annotations.as_ref()?.get(key).cloned()
    }

    /// The value at `path` in the Cluster's object.
    pub(crate) fn field(&self, path: &[&str]) -> Option<&Value> {
        path.iter().try_fold(&self.object.data, |v, k| v.get(k))
    }

    fn text(&self, path: &[&str]) -> Option<String> {
        self.field(path)?.as_str().map(str::to_string)
    }

    /// The Clusters of its namespace, to read, patch or watch this one.
    pub fn api(&self, cluster: &Cluster) -> Api<DynamicObject> {
        Api::namespaced_with(cluster.client.clone(), &self.namespace, &resource())
    }

    /// The current primary, as the operator records it.
    pub fn primary(&self) -> Option<String> {
        self.text(&["status", "currentPrimary"])
            .filter(|p| !p.is_empty())
    }

    /// `spec.instances`.
    pub fn wanted(&self) -> usize {
        self.field(&["spec", "instances"])
            .and_then(Value::as_u64)
            .unwrap_or(1) as usize
    }

    /// The operator's phase sentence (`Cluster in healthy state`, `Failing over`, …).
    pub fn operator_phase(&self) -> Option<String> {
        self.text(&["status", "phase"])
    }

    /// The phase in the plugin's words: Healthy when the operator says so and every wanted
    /// instance is ready; Hibernated; else Progressing (the operator is at work).
    pub fn phase(&self) -> &'static str {
        let hibernated = self
            .object
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("cnpg.io/hibernation"))
            .is_some_and(|v| v == "on");
        if hibernated {
            return "Hibernated";
        }
        let ready = self.pods.iter().filter(|p| release::is_ready(p)).count();
        match self.operator_phase().as_deref() {
            Some(HEALTHY) if ready >= self.wanted() => "Healthy",
            _ => "Progressing",
        }
    }

    /// The image the instances run.
    pub fn image(&self) -> Option<String> {
        self.text(&["status", "image"])
            .or_else(|| self.text(&["spec", "imageName"]))
    }

    /// The Secret holding the application owner's credentials.
    pub fn app_secret(&self) -> String {
        self.annotation(ANNOTATION_CREDENTIALS)
            .or_else(|| self.text(&["spec", "bootstrap", "initdb", "secret", "name"]))
            .unwrap_or_else(|| format!("{}-app", self.name))
    }

    /// The Secret of the `postgres` superuser's password, while superuser access is on.
    pub fn superuser_secret(&self) -> Option<String> {
        (self.field(&["spec", "enableSuperuserAccess"]) == Some(&Value::Bool(true))).then(|| {
            self.text(&["spec", "superuserSecret", "name"])
                .unwrap_or_else(|| format!("{}-superuser", self.name))
        })
    }

    /// The application database's owner.
    pub fn owner(&self) -> String {
        self.text(&["spec", "bootstrap", "initdb", "owner"])
            .unwrap_or_else(|| "app".into())
    }

    /// The application database.
    pub fn database(&self) -> String {
        self.text(&["spec", "bootstrap", "initdb", "database"])
            .unwrap_or_else(|| "app".into())
    }

    /// The owner's Secret the Cluster was given (`--existing-secret`), when it was.
    pub fn existing_secret(&self) -> Option<String> {
        self.text(&["spec", "bootstrap", "initdb", "secret", "name"])
    }

    /// The Secret holding the CA that signs the server certificates.
    pub fn ca_secret(&self) -> String {
        self.text(&["spec", "certificates", "serverCASecret"])
            .unwrap_or_else(|| format!("{}-ca", self.name))
    }

    /// The Service of an endpoint: `R-rw`, `R-ro` or `R-r`.
    pub fn service(&self, which: Which) -> String {
        format!("{}-{}", self.name, which.suffix())
    }

    /// Each instance with its role and readiness; replication and lag from `replication`.
    pub fn instances(&self, replication: &BTreeMap<String, (String, i64)>) -> Vec<Instance> {
        let primary = self.primary();
        self.pods
            .iter()
            .map(|p| {
                let name = p.metadata.name.clone().unwrap_or_default();
                let labels = p.metadata.labels.clone().unwrap_or_default();
                let role = labels
                    .get(LABEL_ROLE)
                    .or_else(|| labels.get("role"))
                    .cloned()
                    .unwrap_or_else(|| {
                        if primary.as_deref() == Some(&name) {
                            "primary".into()
                        } else {
                            "replica".into()
                        }
                    });
                let (replication, lag_bytes) = match replication.get(&name) {
                    Some((state, lag)) => (Some(state.clone()), Some(*lag)),
                    None => (None, None),
                };
                Instance {
                    ready: release::is_ready(p),
                    name,
                    role,
                    replication,
                    lag_bytes,
                }
            })
            .collect()
    }

    /// Asks the primary, in its pod, for its replicas' states and lags, and its version.
    pub async fn replication(&self, cluster: &Cluster) -> Result<Replication, Error> {
        let Some(primary) = self.primary() else {
            return Ok(Replication::default());
        };
        let started = std::time::Instant::now();
        let out = exec::run(
            cluster,
            &self.namespace,
            &primary,
            CONTAINER,
            &[
                "psql",
                "-XtAq",
                "-F",
                "|",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                "select 'version', current_setting('server_version'), 0 union all \
                 select application_name, state, \
                 coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::bigint \
                 from pg_stat_replication",
            ],
            "",
        )
        .await?;
        let round_trip = started.elapsed().as_secs_f64() * 1000.0;
        if !out.success {
            return Ok(Replication::default());
        }
        Ok(parse_replication(&out.stdout, round_trip))
    }

    /// The application owner's credentials, from the Secret the operator made (or the one the
    /// Cluster names).
    pub async fn credentials(&self, cluster: &Cluster) -> Result<Credentials, Error> {
        let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &self.namespace);
        let name = self.app_secret();
        let secret = secrets
            .get_opt(&name)
            .await
            .map_err(|e| cluster.error("get", "secrets", e))?
            .ok_or_else(|| Error::NotFound {
                message: format!(
                    "Secret {name:?} of Cluster {:?} not found in namespace {:?}",
                    self.name, self.namespace
                ),
                hint: Some(format!(
                    "the operator makes it when it bootstraps the Cluster: kubectl get cluster {} -n {}",
                    self.name, self.namespace
                )),
            })?;
        let values = release::secret_values(&secret);
        let take = |k: &str| values.get(k).cloned().unwrap_or_default();
        let database = values
            .get("dbname")
            .or_else(|| values.get("database"))
            .cloned()
            .or_else(|| self.text(&["spec", "bootstrap", "initdb", "database"]))
            .unwrap_or_else(|| "app".into());
        if take("username").is_empty() || take("password").is_empty() {
            return Err(Error::InvalidInput {
                message: format!("Secret {name:?} lacks the key(s) username and password"),
                hint: None,
            });
        }
        Ok(Credentials {
            username: take("username"),
            password: take("password"),
            database,
            host: None,
            port: None,
        })
    }

    /// The CA the instances' server certificates chain to (the operator always serves TLS).
    pub async fn tls(&self, cluster: &Cluster, host: &str) -> Result<ReleaseTls, Error> {
        let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &self.namespace);
        let name = self.ca_secret();
        let secret = secrets
            .get_opt(&name)
            .await
            .map_err(|e| cluster.error("get", "secrets", e))?
            .ok_or_else(|| Error::NotFound {
                message: format!("CA Secret {name:?} of Cluster {:?} not found", self.name),
                hint: None,
            })?;
        let ca = release::secret_values(&secret)
            .get("ca.crt")
            .cloned()
            .unwrap_or_default();
        Ok(ReleaseTls {
            ca,
            sans: vec![host.to_string()],
        })
    }

    /// `R-rw.NS.svc.DOMAIN`, the read-write endpoint's host (or another endpoint's).
    pub fn host(&self, which: Which, domain: &str) -> String {
        release::service_host(&self.service(which), &self.namespace, domain)
    }

    /// The port the Services listen on.
    pub fn port(&self) -> u16 {
        DATABASE_PORT
    }
}

/// What the primary says of its replicas, and of itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replication {
    /// application_name (the instance's name) → (state, lag in bytes).
    pub replicas: BTreeMap<String, (String, i64)>,
    pub server_version: Option<String>,
    pub round_trip_ms: Option<f64>,
    pub answered: bool,
}

fn parse_replication(text: &str, round_trip: f64) -> Replication {
    let mut out = Replication {
        answered: true,
        round_trip_ms: Some((round_trip * 10.0).round() / 10.0),
        ..Default::default()
    };
    for line in text.lines() {
        let mut parts = line.splitn(3, '|');
        let (Some(name), Some(state), Some(lag)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if name == "version" {
            out.server_version = Some(state.to_string());
        } else {
            out.replicas.insert(
                name.to_string(),
                (state.to_string(), lag.parse().unwrap_or(0)),
            );
        }
    }
    out
}

/// Which of a Cluster's Services a client connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Which {
    /// The primary (`R-rw`).
    #[default]
    ReadWrite,
    /// The replicas (`R-ro`).
    ReadOnly,
    /// Any instance (`R-r`).
    Any,
}

impl Which {
    pub fn suffix(self) -> &'static str {
        match self {
            Which::ReadWrite => "rw",
            Which::ReadOnly => "ro",
            Which::Any => "r",
        }
    }
}

/// The most instances `install --instances` makes: one primary and up to nine replicas.
pub const MAX_INSTANCES: u32 = 10;

/// The image of a major for CloudNativePG's instances: its own PostgreSQL images (the
/// official `postgres` image lacks what the instance manager expects), by major tag.
pub fn image_for(major: u32) -> String {
    format!("ghcr.io/cloudnative-pg/postgresql:{major}")
}

/// The Cluster `install --instances N` applies: the profile's storage and resources, the
/// database and its owner (from `--existing-secret` when given; else the operator makes
/// `R-app`), the major's image. CloudNativePG always serves TLS.
pub fn render_cluster(spec: &crate::manifests::InstallSpec, instances: u32, image: &str) -> Value {
    use crate::cluster::release::{LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NAME, MANAGED_BY};
    let mut storage = serde_json::json!({ "size": spec.storage_size });
    if let Some(class) = &spec.storage_class {
        storage["storageClass"] = class.clone().into();
    }
    let mut resources = serde_json::json!({});
    let mut set = |kind: &str, name: &str, value: &Option<String>| {
        if let Some(v) = value {
            resources[kind][name] = v.clone().into();
        }
    };
    set("requests", "cpu", &spec.cpu_request);
    set("requests", "memory", &spec.memory_request);
    set("limits", "cpu", &spec.cpu_limit);
    set("limits", "memory", &spec.memory_limit);
    let mut initdb = serde_json::json!({ "database": spec.database, "owner": spec.username });
    if let Some(secret) = &spec.existing_secret {
        initdb["secret"] = serde_json::json!({ "name": secret });
    }
    serde_json::json!({
        "apiVersion": "postgresql.cnpg.io/v1",
        "kind": "Cluster",
        "metadata": {
            "name": spec.release,
            "namespace": spec.namespace,
            "labels": {
                LABEL_NAME: "postgresql",
                LABEL_INSTANCE: spec.release,
                LABEL_MANAGED_BY: MANAGED_BY,
            },
        },
        "spec": {
            "instances": instances,
            "imageName": image,
            // The primary restarts last, after a switchover, so writes pause for seconds only
            // (the operator's default restarts it in place).
            "primaryUpdateMethod": "switchover",
            // `user` and `rotate-password --db-user` manage roles as the superuser, whose
            // password the operator then keeps in Secret R-superuser (a single instance's is in
            // R-credentials).
            "enableSuperuserAccess": true,
            "storage": storage,
            "resources": resources,
            "bootstrap": { "initdb": initdb },
        },
    })
}

/// A rerun of `install --instances` starts from the live Cluster: what no flag names keeps its
/// live value (size, class, resources, image, database, owner, Secret). What cannot change on
/// a Cluster is exit 1 before any write: a smaller volume, another StorageClass, another
/// major, another database, owner or owner's Secret (the operator bootstraps them once).
/// Returns the live image, which no flag replaced.
pub fn keep_live(
    spec: &mut crate::manifests::InstallSpec,
    req: &crate::manifests::spec::Requested,
    live: &CnpgCluster,
) -> Result<Option<String>, Error> {
    use crate::manifests::spec::{image_major, quantity_value};
    let text = |path: &[&str]| live.text(path);
    let refuse = |what: String, hint: &str| {
        Err(Error::InvalidInput {
            message: format!("Cluster {}: {what}", live.name),
            hint: Some(hint.to_string()),
        })
    };
    let fixed = "the operator sets it once, when it bootstraps the Cluster; leave the flag out";
    for (given, path, flag) in [
        (
            &req.database,
            ["spec", "bootstrap", "initdb", "database"],
            "--database",
        ),
        (
            &req.username,
            ["spec", "bootstrap", "initdb", "owner"],
            "--username",
        ),
    ] {
        if let (Some(given), Some(now)) = (given, text(&path)) {
            if *given != now {
                return refuse(format!("{flag} is {now}, not {given}"), fixed);
            }
        }
    }
    if req.existing_secret.is_some() && req.existing_secret != live.existing_secret() {
        return refuse(
            format!(
                "its owner's Secret is {}, not {}",
                live.app_secret(),
                req.existing_secret.as_deref().unwrap_or_default()
            ),
            fixed,
        );
    }
    spec.database =
        text(&["spec", "bootstrap", "initdb", "database"]).unwrap_or(spec.database.clone());
    spec.username =
        text(&["spec", "bootstrap", "initdb", "owner"]).unwrap_or(spec.username.clone());
    spec.existing_secret = live.existing_secret();
    let mut kept = None;
    if let Some(image) = text(&["spec", "imageName"]) {
        let live_major = image_major(&image);
        let asked = req
            .major
            .or_else(|| req.image.as_deref().and_then(image_major));
        if let (Some(asked), Some(now)) = (asked, live_major) {
            if asked != now {
                return refuse(
                    format!("it runs PostgreSQL {now}: install never changes the major (asked for {asked})"),
                    "to upgrade its major: kubectl pg upgrade RELEASE --postgres-version N",
                );
            }
        }
        if let Some(major) = live_major {
            spec.major = major;
        }
        if req.image.is_none() && req.major.is_none() {
            kept = Some(image);
        }
    }
    if let Some(size) = text(&["spec", "storage", "size"]) {
        match &req.storage_size {
            Some(asked) if quantity_value(asked) < quantity_value(&size) => {
                return refuse(
                    format!("its volumes are {size}: --storage-size {asked} would shrink them"),
                    "a volume only grows; give a size at least as large",
                )
            }
            Some(_) => {}
            None => spec.storage_size = size,
        }
    }
    let class = text(&["spec", "storage", "storageClass"]);
    match &req.storage_class {
        Some(asked) if class.as_ref() != Some(asked) => {
            return refuse(
                format!(
                    "its volumes' StorageClass is {}: it cannot become {asked}",
                    class.as_deref().unwrap_or("the cluster default")
                ),
                "move the data with kubectl pg dump and kubectl pg restore into a new release",
            )
        }
        _ => spec.storage_class = class,
    }
    for (given, slot, path) in [
        (&req.cpu_request, &mut spec.cpu_request, ["requests", "cpu"]),
        (
            &req.memory_request,
            &mut spec.memory_request,
            ["requests", "memory"],
        ),
        (&req.cpu_limit, &mut spec.cpu_limit, ["limits", "cpu"]),
        (
            &req.memory_limit,
            &mut spec.memory_limit,
            ["limits", "memory"],
        ),
    ] {
        if given.is_none() && req.prod.is_none() {
            *slot = text(&["spec", "resources", path[0], path[1]]);
        }
    }
    Ok(kept)
}

/// What a rerun must keep of a Cluster made from a single instance, which no flag renders: its
/// annotations and its superuser access with the release's Secret (server-side apply would
/// otherwise remove them, and the clients' password with them).
pub fn carry_moved(live: &CnpgCluster, object: &mut Value) {
    for key in [ANNOTATION_MOVED_FROM, ANNOTATION_CREDENTIALS] {
        if let Some(v) = live.annotation(key) {
            object["metadata"]["annotations"][key] = v.into();
        }
    }
    for key in ["enableSuperuserAccess", "superuserSecret"] {
        if let Some(v) = live.field(&["spec", key]) {
            object["spec"][key] = v.clone();
        }
    }
}

/// Whether the API serves `postgresql.cnpg.io/v1` (its CRDs are installed): discovery, which
/// every authenticated user may read.
pub async fn served(cluster: &Cluster) -> Result<bool, Error> {
    let request = http::Request::get("/apis/postgresql.cnpg.io/v1")
        .body(Vec::new())
        .map_err(|e| Error::invalid(e.to_string()))?;
    match cluster.client.request::<Value>(request).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(cluster.error("get", "apis/postgresql.cnpg.io/v1", e)),
    }
}

/// The error for a cluster without CloudNativePG (exit 6): what is missing and how to install
/// it. kubectl-pg never installs an operator itself.
pub fn operator_missing(what: &str) -> Error {
    Error::Deployment {
        message: format!("CloudNativePG is needed for --instances above 1: {what}"),
        hints: vec![
            "install the operator (a cluster admin's task): kubectl apply --server-side -f https://raw.githubusercontent.com/cloudnative-pg/cloudnative-pg/release-1.30/releases/cnpg-1.30.0.yaml".into(),
            "or with Helm: helm repo add cnpg https://cloudnative-pg.github.io/charts && helm upgrade --install cnpg --namespace cnpg-system --create-namespace cnpg/cloudnative-pg".into(),
        ],
        code: 6,
    }
}

/// Applies the Cluster server-side (field manager kubectl-pg).
pub async fn apply(cluster: &Cluster, object: &Value) -> Result<(), Error> {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
    let api: Api<DynamicObject> =
        Api::namespaced_with(cluster.client.clone(), namespace, &resource());
    let params = kube::api::PatchParams::apply(crate::manifests::render::FIELD_MANAGER).force();
    api.patch(name, &params, &kube::api::Patch::Apply(object))
        .await
        .map(|_| ())
        .map_err(|e| cluster.error("patch", "clusters.postgresql.cnpg.io", e))
}

/// Waits, on a watch of the Cluster, until the operator reports it healthy with every instance
/// ready, saying each change of phase and readiness on stderr. No status at all after
/// `silence` means no operator runs (exit 6); the deadline passing is exit 4.
pub async fn wait_healthy(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    timeout: std::time::Duration,
    silence: std::time::Duration,
) -> Result<(), Error> {
    use futures_util::StreamExt;
    let api: Api<DynamicObject> =
        Api::namespaced_with(cluster.client.clone(), namespace, &resource());
    let started = tokio::time::Instant::now();
    let stream = kube::runtime::watcher::watch_object(api, name);
    futures_util::pin_mut!(stream);
    let mut said = String::new();
    let mut seen_status = false;
    loop {
        let limit = if seen_status {
            timeout
        } else {
            silence.min(timeout)
        };
        let next = tokio::time::timeout_at(started + limit, stream.next()).await;
        let object = match next {
            Err(_) if !seen_status && silence < timeout => {
                return Err(operator_missing(&format!(
                    "no operator reconciled Cluster {name} within {}s (it has no status)",
                    silence.as_secs()
                )))
            }
            Err(_) => {
                return Err(Error::Deployment {
                    message: format!(
                        "Cluster {name} is not healthy after {}s: {}",
                        timeout.as_secs(),
                        if said.is_empty() { "no status".into() } else { said }
                    ),
                    hints: vec![format!(
                        "see why: kubectl pg status {name} -n {namespace}; kubectl describe cluster {name} -n {namespace}"
                    )],
                    code: 4,
                })
            }
            Ok(None) => {
                return Err(Error::invalid(format!("the watch of Cluster {name} ended")))
            }
            Ok(Some(Err(e))) => {
                crate::note!("watching Cluster {name}: {e}; watching again");
                continue;
            }
            Ok(Some(Ok(None))) => continue,
            Ok(Some(Ok(Some(object)))) => object,
        };
        let status = object.data.get("status");
        let phase = status
            .and_then(|s| s.get("phase"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let ready = status
            .and_then(|s| s.get("readyInstances"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let wanted = object
            .data
            .get("spec")
            .and_then(|s| s.get("instances"))
            .and_then(Value::as_u64)
            .unwrap_or(1);
        if !phase.is_empty() {
            seen_status = true;
        }
        let now = format!("{phase} ({ready}/{wanted} instances ready)");
        if now != said && !phase.is_empty() {
            crate::note!("Cluster {name}: {now}");
            said = now;
        }
        if phase == HEALTHY && ready >= wanted {
            return Ok(());
        }
    }
}

/// The annotation that hibernates a Cluster: the operator deletes its pods and keeps its
/// volumes; removing it brings the instances back on the same data.
pub const HIBERNATION: &str = "cnpg.io/hibernation";

/// Whether the Cluster is hibernated, or asked to be.
pub fn hibernating(c: &CnpgCluster) -> bool {
    c.object
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(HIBERNATION))
        .is_some_and(|v| v == "on")
}

/// Sets (`on`) or removes the hibernation annotation, as kubectl-pg's field manager.
pub async fn set_hibernation(cluster: &Cluster, c: &CnpgCluster, on: bool) -> Result<(), Error> {
    let api = c.api(cluster);
    let value = if on { Value::from("on") } else { Value::Null };
    let patch = serde_json::json!({ "metadata": { "annotations": { HIBERNATION: value } } });
    let params = kube::api::PatchParams {
        field_manager: Some(crate::manifests::render::FIELD_MANAGER.into()),
        ..Default::default()
    };
    api.patch(&c.name, &params, &kube::api::Patch::Merge(&patch))
        .await
        .map(|_| ())
        .map_err(|e| cluster.error("patch", "clusters.postgresql.cnpg.io", e))
}

/// Waits, on a watch, until the operator reports the Cluster hibernated (its condition
/// `cnpg.io/hibernation` True: every pod deleted, the volumes kept).
pub async fn wait_hibernated(
    cluster: &Cluster,
    c: &CnpgCluster,
    timeout: std::time::Duration,
) -> Result<(), Error> {
    let done = |o: Option<&DynamicObject>| {
        o.and_then(|o| o.data.pointer("/status/conditions"))
            .and_then(Value::as_array)
            .is_some_and(|conditions| {
                conditions.iter().any(|k| {
                    k.get("type").and_then(Value::as_str) == Some(HIBERNATION)
                        && k.get("status").and_then(Value::as_str) == Some("True")
                })
            })
    };
    let what = format!("Cluster {} to hibernate", c.name);
    watch_until(cluster, c, done, timeout, &what).await
}

/// Deletes the Cluster in the foreground (its pods, volumes, Services and Secrets are the
/// operator's, owned by it) and waits until it is gone.
pub async fn delete(
    cluster: &Cluster,
    c: &CnpgCluster,
    timeout: std::time::Duration,
) -> Result<(), Error> {
    let api = c.api(cluster);
    let uid = c.object.metadata.uid.clone().unwrap_or_default();
    let params = kube::api::DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some(uid.clone()),
            resource_version: None,
        }),
        ..kube::api::DeleteParams::foreground()
    };
    match api.delete(&c.name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(cluster.error("delete", "clusters.postgresql.cnpg.io", e)),
    }
    let what = format!("Cluster {} to be deleted", c.name);
    let gone = kube::runtime::wait::conditions::is_deleted(&uid);
    watch_until(cluster, c, gone, timeout, &what).await
}

/// A watch of the Cluster until `done`; past `timeout` exit 4.
async fn watch_until(
    cluster: &Cluster,
    c: &CnpgCluster,
    done: impl kube::runtime::wait::Condition<DynamicObject>,
    timeout: std::time::Duration,
    what: &str,
) -> Result<(), Error> {
    let wait = kube::runtime::wait::await_condition(c.api(cluster), &c.name, done);
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(Error::invalid(format!("watching Cluster {}: {e}", c.name))),
        Err(_) => Err(Error::Deployment {
            message: format!("timed out after {}s waiting for {what}", timeout.as_secs()),
            hints: vec![format!(
                "see why: kubectl pg status {} -n {}; kubectl describe cluster {0} -n {1}",
                c.name, c.namespace
            )],
            code: 4,
        }),
    }
}

/// Whether kubectl-pg made this Cluster (its managed-by and instance labels): only those does
/// it change.
pub fn made_by_us(c: &CnpgCluster) -> bool {
    release::made_for(&c.object.metadata, &c.name)
}

/// The replica to promote when none is named: a ready one that streams, least behind.
pub fn best_replica(instances: &[Instance]) -> Option<String> {
    instances
        .iter()
        .filter(|i| i.role != "primary" && i.ready && i.replication.as_deref() == Some("streaming"))
        .min_by_key(|i| i.lag_bytes.unwrap_or(i64::MAX))
        .map(|i| i.name.clone())
}

/// Asks the operator to promote `to`, as CloudNativePG's own plugin does: the Cluster's status
/// names the target primary, and the operator switches over (a fast shutdown of the old
/// primary, its replicas following the new one).
pub async fn request_switchover(cluster: &Cluster, c: &CnpgCluster, to: &str) -> Result<(), Error> {
    let api = c.api(cluster);
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({
        "status": {
            "targetPrimary": to,
            "targetPrimaryTimestamp": now,
            "phase": "Switchover in progress",
            "phaseReason": format!("Switching over to {to} (kubectl pg switchover)"),
        }
    });
    api.patch_status(
        &c.name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
    .map_err(|e| cluster.error("patch", "clusters.postgresql.cnpg.io/status", e))
}

/// Waits, on a watch, until the operator reports `to` as the current primary and the Cluster
/// healthy again.
pub async fn wait_primary(
    cluster: &Cluster,
    c: &CnpgCluster,
    to: &str,
    timeout: std::time::Duration,
) -> Result<(), Error> {
    let done = |o: Option<&DynamicObject>| {
        o.and_then(|o| o.data.get("status")).is_some_and(|s| {
            s.get("currentPrimary").and_then(Value::as_str) == Some(to)
                && s.get("phase").and_then(Value::as_str) == Some(HEALTHY)
        })
    };
    let what = format!("Cluster {} to make {to} its primary", c.name);
    watch_until(cluster, c, done, timeout, &what).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(
        name: &str,
        role: &str,
        ready: bool,
        state: Option<&str>,
        lag: Option<i64>,
    ) -> Instance {
        Instance {
            name: name.into(),
            role: role.into(),
            ready,
            replication: state.map(Into::into),
            lag_bytes: lag,
        }
    }

    #[test]
    fn the_best_replica_is_ready_streaming_and_least_behind() {
        let all = [
            instance("r-1", "primary", true, None, None),
            instance("r-2", "replica", true, Some("streaming"), Some(900)),
            instance("r-3", "replica", true, Some("streaming"), Some(10)),
            instance("r-4", "replica", false, Some("streaming"), Some(0)),
            instance("r-5", "replica", true, Some("catchup"), Some(0)),
        ];
        assert_eq!(best_replica(&all).as_deref(), Some("r-3"));
        assert_eq!(best_replica(&all[..1]), None);
        assert_eq!(
            best_replica(&[all[0].clone(), all[3].clone(), all[4].clone()]),
            None
        );
    }

    #[test]
    fn replication_lines_give_states_lags_and_version() {
        let r = parse_replication(
            "version|18.6|0\npg-2|streaming|0\npg-3|catchup|16384\n",
            12.34,
        );
        assert!(r.answered);
        assert_eq!(r.server_version.as_deref(), Some("18.6"));
        assert_eq!(r.replicas["pg-2"], ("streaming".to_string(), 0));
        assert_eq!(r.replicas["pg-3"], ("catchup".to_string(), 16384));
        assert_eq!(r.round_trip_ms, Some(12.3));
    }

    #[test]
    fn a_rerun_keeps_what_no_flag_names_and_refuses_what_cannot_change() {
        use crate::manifests::spec::Requested;
        use crate::manifests::InstallSpec;
        let mut object = DynamicObject::new("pg", &resource()).within("ns");
        object.data = serde_json::json!({"spec": {
            "instances": 3,
            "imageName": "ghcr.io/cloudnative-pg/postgresql:17",
            "storage": {"size": "5Gi", "storageClass": "fast"},
            "resources": {"requests": {"memory": "1Gi"}},
            "bootstrap": {"initdb": {"database": "shop", "owner": "shopper"}},
        }});
        let live = CnpgCluster {
            name: "pg".into(),
            namespace: "ns".into(),
            object,
            pods: Vec::new(),
        };
        let fresh = || InstallSpec::from_request(&Requested::default(), "pg", "ns").unwrap();
        let mut spec = fresh();
        let kept = keep_live(&mut spec, &Requested::default(), &live).unwrap();
        assert_eq!(
            kept.as_deref(),
            Some("ghcr.io/cloudnative-pg/postgresql:17")
        );
        assert_eq!(
            (spec.storage_size.as_str(), spec.storage_class.as_deref()),
            ("5Gi", Some("fast"))
        );
        assert_eq!(spec.memory_request.as_deref(), Some("1Gi"));
        assert_eq!(
            (spec.database.as_str(), spec.username.as_str()),
            ("shop", "shopper")
        );
        assert_eq!(spec.major, 17);
        let grow = Requested {
            storage_size: Some("10Gi".into()),
            ..Default::default()
        };
        let mut spec = InstallSpec::from_request(&grow, "pg", "ns").unwrap();
        keep_live(&mut spec, &grow, &live).unwrap();
        assert_eq!(spec.storage_size, "10Gi");
        for (req, needle) in [
            (
                Requested {
                    storage_size: Some("1Gi".into()),
                    ..Default::default()
                },
                "shrink",
            ),
            (
                Requested {
                    storage_class: Some("slow".into()),
                    ..Default::default()
                },
                "StorageClass",
            ),
            (
                Requested {
                    major: Some(18),
                    ..Default::default()
                },
                "PostgreSQL 17",
            ),
            (
                Requested {
                    database: Some("other".into()),
                    ..Default::default()
                },
                "--database",
            ),
        ] {
            let error = keep_live(&mut fresh(), &req, &live)
                .unwrap_err()
                .to_string();
            assert!(error.contains(needle), "{error}");
        }
    }

    #[test]
    fn a_cluster_knows_its_services_and_secrets() {
        let mut object = DynamicObject::new("pg", &resource()).within("ns");
        object.data = serde_json::json!({
            "spec": {"instances": 3},
            "status": {"currentPrimary": "pg-2", "phase": "Cluster in healthy state"}
        });
        let c = CnpgCluster {
            name: "pg".into(),
            namespace: "ns".into(),
            object,
            pods: Vec::new(),
        };
        assert_eq!(c.primary().as_deref(), Some("pg-2"));
        assert_eq!(c.service(Which::ReadOnly), "pg-ro");
        assert_eq!(
            c.host(Which::ReadWrite, "cluster.local"),
            "pg-rw.ns.svc.cluster.local"
        );
        assert_eq!(c.app_secret(), "pg-app");
        assert_eq!(c.ca_secret(), "pg-ca");
        // No ready pods yet: not Healthy whatever the operator's sentence.
        assert_eq!(c.phase(), "Progressing");
    }
}
