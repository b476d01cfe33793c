//! A release's objects (DESIGN.md): their names and labels, name validation, choosing the
//! release when none is named, and finding its pod and credentials.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Secret, VolumeMount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams};

use super::access::Cluster;
use crate::error::Error;

/// The release name used when none is given and the namespace holds none to choose from.
pub const DEFAULT_RELEASE: &str = "postgres";
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_VERSION: &str = "app.kubernetes.io/version";
pub const MANAGED_BY: &str = "kubectl-pg";
pub const DATABASE_PORT: u16 = 5432;

/// `R-credentials`
pub fn secret_name(release: &str) -> String {
    format!("{release}-credentials")
}

/// `R-0`: the single pod of the StatefulSet.
pub fn pod_name(release: &str) -> String {
    format!("{release}-0")
}

/// `app.kubernetes.io/name=postgresql,app.kubernetes.io/instance=R`
pub fn selector(release: &str) -> String {
    format!("{LABEL_NAME}=postgresql,{LABEL_INSTANCE}={release}")
}

/// Whether kubectl-pg made the object for this release (its managed-by and instance labels):
/// only those does it change or delete.
pub fn made_for(meta: &ObjectMeta, release: &str) -> bool {
    let label = |k: &str| {
        meta.labels
            .as_ref()
            .and_then(|l| l.get(k))
            .map(String::as_str)
    };
    label(LABEL_MANAGED_BY) == Some(MANAGED_BY) && label(LABEL_INSTANCE) == Some(release)
}

/// Whose Secret this is, as its labels say: `user NAME of release R`, `release R`, or `not
/// made by kubectl-pg`, for messages that refuse to take it.
pub fn secret_owner(meta: &ObjectMeta) -> String {
    let label = |k: &str| meta.labels.as_ref().and_then(|l| l.get(k)).cloned();
    match (
        label(LABEL_MANAGED_BY).filter(|m| m == MANAGED_BY),
        label(LABEL_INSTANCE),
        label(crate::database::roles::LABEL_USER),
    ) {
        (Some(_), Some(release), Some(user)) => format!("user {user} of release {release}"),
        (Some(_), Some(release), None) => format!("release {release}"),
        _ => "not made by kubectl-pg".into(),
    }
}

/// Refuses a Secret named `R-credentials` that is not release R's own: a release never takes
/// another release's Secret, an application user's (user `credentials` of release `pg` has
/// Secret `pg-user-credentials`, the name release `pg-user` would use), or one kubectl-pg did
/// not make (that is what `--existing-secret` is for).
pub fn check_release_secret(
    meta: &ObjectMeta,
    release: &str,
    namespace: &str,
) -> Result<(), Error> {
    let user_secret = meta
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(crate::database::roles::LABEL_USER));
    if made_for(meta, release) && !user_secret {
        return Ok(());
    }
    let name = meta.name.clone().unwrap_or_else(|| secret_name(release));
    Err(Error::InvalidInput {
        message: format!(
            "Secret {name} in namespace {namespace:?} is not release {release}'s own ({}): release {release} will not take it as its credentials; nothing was changed",
            secret_owner(meta)
        ),
        hint: Some(format!(
            "choose another release name, or name a Secret of yours with --existing-secret (kubectl pg install {release} -n {namespace} --existing-secret NAME)"
        )),
    })
}

/// Delete parameters that delete only the object with this UID: never one re-created
/// meanwhile under the same name by someone else. Dependents go in the background.
pub fn delete_only(uid: Option<String>) -> kube::api::DeleteParams {
    kube::api::DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid,
            resource_version: None,
        }),
        ..kube::api::DeleteParams::background()
    }
}

/// The cluster DNS domain most clusters use; `install --cluster-domain` records another.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
/// The StatefulSet annotation that remembers the cluster domain install was given.
pub const ANNOTATION_CLUSTER_DOMAIN: &str = "kubectl-pg.io/cluster-domain";

/// The annotation on the data claim that records the major of the data in it.
pub const ANNOTATION_DATA_MAJOR: &str = "kubectl-pg.io/postgres-major";

/// The major a claim's data was initialised with: our annotation, else the version label that
/// claims made by older versions of kubectl-pg carry from the StatefulSet's template.
pub fn claim_data_major(pvc: &k8s_openapi::api::core::v1::PersistentVolumeClaim) -> Option<u32> {
    let meta = &pvc.metadata;
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_DATA_MAJOR))
        .or_else(|| meta.labels.as_ref().and_then(|l| l.get(LABEL_VERSION)))
        .and_then(|v| v.split('.').next()?.parse().ok())
}

/// Records on the data claim `claim` which major its data now is, so a later install of another
/// major over the kept claim is refused. Best effort: a user without `patch` on claims keeps
/// going.
pub async fn record_claim_major(cluster: &Cluster, namespace: &str, claim: &str, major: u32) {
    let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(cluster.client.clone(), namespace);
    let patch = serde_json::json!({ "metadata": { "annotations": { ANNOTATION_DATA_MAJOR: major.to_string() } } });
    let params = kube::api::PatchParams::default();
    let _ = pvcs
        .patch(claim, &params, &kube::api::Patch::Merge(&patch))
        .await;
}

/// A major upgrade in progress records, on the StatefulSet, what to return to.
pub const ANNOTATION_UPGRADE_FROM_MAJOR: &str = "kubectl-pg.io/upgrade-from-major";
pub const ANNOTATION_UPGRADE_FROM_IMAGE: &str = "kubectl-pg.io/upgrade-from-image";
pub const ANNOTATION_UPGRADE_FROM_LAYOUT: &str = "kubectl-pg.io/upgrade-from-layout";
/// The old data directory, relative to the volume's root (`pgdata`, `17/docker`).
pub const ANNOTATION_UPGRADE_OLD_DATA: &str = "kubectl-pg.io/upgrade-old-data";
pub const ANNOTATION_UPGRADE_BACKUP: &str = "kubectl-pg.io/upgrade-backup";
/// The step the upgrade has reached (`blocking-writes`, `switching`, `verified`, `upgraded`,
/// `rolling-back`, `finalizing`), written before the step acts.
pub const ANNOTATION_UPGRADE_PHASE: &str = "kubectl-pg.io/upgrade-phase";
/// The old cluster's system identifier, which a rollback must find again.
pub const ANNOTATION_UPGRADE_OLD_SYSTEM: &str = "kubectl-pg.io/upgrade-old-system-identifier";
pub const ANNOTATION_UPGRADE_TO_MAJOR: &str = "kubectl-pg.io/upgrade-to-major";
pub const ANNOTATION_UPGRADE_TO_IMAGE: &str = "kubectl-pg.io/upgrade-to-image";

/// The major a release is being upgraded from, while its upgrade is neither finalized nor
/// rolled back.
pub fn pending_upgrade(sts: &StatefulSet) -> Option<u32> {
    sts.metadata
        .annotations
        .as_ref()?
        .get(ANNOTATION_UPGRADE_FROM_MAJOR)?
        .parse()
        .ok()
}

/// `R.N.svc.DOMAIN`
pub fn service_host(release: &str, namespace: &str, domain: &str) -> String {
    format!("{release}.{namespace}.svc.{domain}")
}

/// The cluster domain a release was installed with (its StatefulSet's annotation).
pub fn cluster_domain(sts: Option<&StatefulSet>) -> String {
    sts.and_then(|s| {
        s.metadata
            .annotations
            .as_ref()?
            .get(ANNOTATION_CLUSTER_DOMAIN)
            .cloned()
    })
    .unwrap_or_else(|| DEFAULT_CLUSTER_DOMAIN.to_string())
}

/// Checks a DNS-1123 label of at most `max` characters.
pub fn validate_label(field: &str, value: &str, max: usize) -> Result<(), Error> {
    let bytes = value.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= max
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric();
    if valid {
        return Ok(());
    }
    Err(Error::InvalidInput {
        message: format!(
            "invalid {field} {value:?}: must be a DNS-1123 label of at most {max} characters \
             (lower-case letters, digits and '-', starting and ending with a letter or digit)"
        ),
        hint: None,
    })
}

/// Release names become StatefulSet names (52 characters at most, or pod creation fails) and
/// Service names, which are DNS-1035 labels: they start with a letter.
pub fn validate_release(release: &str) -> Result<(), Error> {
    validate_label("release name", release, 52)?;
    if release.as_bytes()[0].is_ascii_lowercase() {
        return Ok(());
    }
    Err(Error::InvalidInput {
        message: format!(
            "invalid release name {release:?}: it names Services, which must start with a letter (DNS-1035)"
        ),
        hint: Some(format!("for example: pg-{release}")),
    })
}

pub fn validate_namespace(namespace: &str) -> Result<(), Error> {
    validate_label("namespace", namespace, 63)
}

/// The release to act on: the one named, else the only one in the namespace, else `postgres`.
pub async fn resolve(cluster: &Cluster, named: Option<&str>) -> Result<String, Error> {
    validate_namespace(&cluster.namespace)?;
    if let Some(release) = named {
        validate_release(release)?;
        return Ok(release.to_string());
    }
    let sets: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let params = ListParams::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    let list = sets
        .list_metadata(&params)
        .await
        .map_err(|e| cluster.error("list", "statefulsets", e))?;
    let mut names: Vec<String> = list
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    names.sort();
    match names.len() {
        0 => Ok(DEFAULT_RELEASE.to_string()),
        1 => Ok(names.remove(0)),
        _ => Err(Error::InvalidInput {
            message: format!(
                "namespace {:?} holds {} releases ({}): name one",
                cluster.namespace,
                names.len(),
                names.join(", ")
            ),
            hint: Some(format!(
                "for example: kubectl pg status {} -n {}",
                names[0], cluster.namespace
            )),
        }),
    }
}

/// The database credentials of a release, from its Secret.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    pub database: String,
    pub host: Option<String>,
    pub port: Option<u16>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"***")
            .field("database", &self.database)
            .finish()
    }
}

impl Credentials {
    /// Reads `username`, `password` and `database` (required) and `host`, `port` (optional).
    pub fn from_secret(secret: &Secret) -> Result<Self, Error> {
        let name = secret.metadata.name.clone().unwrap_or_default();
        let values = secret_values(secret);
        let missing: Vec<&str> = ["username", "password", "database"]
            .into_iter()
            .filter(|k| values.get(*k).is_none_or(|v| v.is_empty()))
            .collect();
        if !missing.is_empty() {
            return Err(Error::InvalidInput {
                message: format!("Secret {name:?} lacks the key(s) {}", missing.join(", ")),
                hint: Some("the Secret needs the keys username, password and database".into()),
            });
        }
        let take = |k: &str| values.get(k).cloned().unwrap_or_default();
        Ok(Self {
            username: take("username"),
            password: take("password"),
            database: take("database"),
            host: values.get("host").cloned().filter(|h| !h.is_empty()),
            port: values.get("port").and_then(|p| p.parse().ok()),
        })
    }
}

/// A value of the container's environment: a key of a Secret, or a literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    Key(String),
    Literal(String),
}

/// Where a release's credentials come from, read off its StatefulSet: the Secret its pods read
/// the password from (ours, `R-credentials`, or the user's `--existing-secret`), and the user
/// and database, as keys of that Secret or literal values. The release remembers them in the
/// one place that decides what the server was initialised with: the pod's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialSource {
    pub secret: String,
    /// The cluster DNS domain of the release's hosts.
    pub cluster_domain: String,
    pub username: EnvValue,
    pub database: EnvValue,
}

impl CredentialSource {
    /// The source of a release: from its StatefulSet when it exists, else ours.
    pub fn of(release: &str, sts: Option<&StatefulSet>) -> Self {
        let pod = sts.and_then(|s| s.spec.as_ref()?.template.spec.as_ref());
        let container = pod.and_then(|p| p.containers.iter().find(|c| c.name == "postgres"));
        let env = container.and_then(|c| c.env.clone()).unwrap_or_default();
        let find = |name: &str| env.iter().find(|e| e.name == name);
        let value = |name: &str, key: &str| match find(name) {
            Some(e) if e.value_from.is_none() => {
                EnvValue::Literal(e.value.clone().unwrap_or_default())
            }
            Some(e) => EnvValue::Key(
                e.value_from
                    .as_ref()
                    .and_then(|v| v.secret_key_ref.as_ref())
                    .map_or_else(|| key.to_string(), |r| r.key.clone()),
            ),
            None => EnvValue::Key(key.to_string()),
        };
        // Older releases read the password from a key of the Secret (POSTGRES_PASSWORD), newer
        // ones from a file in a volume of it (POSTGRES_PASSWORD_FILE): both name the Secret.
        let secret = find("POSTGRES_PASSWORD")
            .and_then(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
            .map(|r| r.name.clone())
            .or_else(|| {
                let path = find("POSTGRES_PASSWORD_FILE")?.value.as_deref()?;
                file_secret(pod?, container?, path)
            })
            .unwrap_or_else(|| secret_name(release));
        Self {
            secret,
            cluster_domain: cluster_domain(sts),
            username: value("POSTGRES_USER", "username"),
            database: value("POSTGRES_DB", "database"),
        }
    }

    /// The release's Secret, given the read of ours made alongside the StatefulSet's: that one
    /// when it is the release's, else a read of the user's Secret the StatefulSet names.
    pub async fn secret_from(
        &self,
        cluster: &Cluster,
        namespace: &str,
        release: &str,
        ours: Result<Option<Secret>, kube::Error>,
    ) -> Result<Option<Secret>, Error> {
        let result = if self.is_ours(release) {
            ours
        } else {
            let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), namespace);
            secrets.get_opt(&self.secret).await
        };
        result.map_err(|e| cluster.error("get", "secrets", e))
    }

    /// Whether the Secret is the one kubectl-pg made (and may recreate): never a user's.
    pub fn is_ours(&self, release: &str) -> bool {
        self.secret == secret_name(release)
    }

    /// The credentials in `secret`, as the pod reads them.
    pub fn resolve(&self, secret: &Secret) -> Result<Credentials, Error> {
        let values = secret_values(secret);
        let get = |v: &EnvValue| -> Result<String, Error> {
            match v {
                EnvValue::Literal(text) => Ok(text.clone()),
                EnvValue::Key(key) => values
                    .get(key)
                    .filter(|v| !v.is_empty())
                    .cloned()
                    .ok_or_else(|| missing_key(&self.secret, key)),
            }
        };
        Ok(Credentials {
            username: get(&self.username)?,
            password: get(&EnvValue::Key("password".into()))?,
            database: get(&self.database)?,
            host: values.get("host").cloned().filter(|h| !h.is_empty()),
            port: values.get("port").and_then(|p| p.parse().ok()),
        })
    }
}

/// The Secret whose volume holds `path` in the container: the volume mounted at the longest
/// mount path above it, when that volume is a Secret's.
fn file_secret(pod: &PodSpec, container: &Container, path: &str) -> Option<String> {
    let under = |m: &&VolumeMount| {
        let dir = m.mount_path.trim_end_matches('/');
        path.strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
    };
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .filter(under)
        .max_by_key(|m| m.mount_path.trim_end_matches('/').len())?;
    pod.volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)?
        .secret
        .as_ref()?
        .secret_name
        .clone()
}

/// A Secret's keys and values as text (`data`, then `stringData`, which the server merges).
/// Every secret value read here is registered with the process's redactor: whatever the
/// command prints next (a hint, an error, a log line) cannot show it.
pub fn secret_values(secret: &Secret) -> BTreeMap<String, String> {
    let mut values = BTreeMap::new();
    for (key, value) in secret.data.iter().flatten() {
        values.insert(key.clone(), String::from_utf8_lossy(&value.0).into_owned());
    }
    for (key, value) in secret.string_data.iter().flatten() {
        values.insert(key.clone(), value.clone());
    }
    crate::output::redact::register_values(&values);
    values
}

/// A key the release needs is not in its Secret (exit 1).
pub fn missing_key(secret: &str, key: &str) -> Error {
    Error::InvalidInput {
        message: format!("Secret {secret:?} has no key {key:?}"),
        hint: Some(format!(
            "a kubernetes.io/basic-auth Secret holds password (required) and username: kubectl create secret generic {secret} --type kubernetes.io/basic-auth --from-literal=password=…"
        )),
    }
}

/// The running database of a release: its ready pod and its credentials.
pub struct Target {
    pub release: String,
    pub namespace: String,
    pub pod: String,
    pub port: u16,
    pub credentials: Credentials,
}

/// The release's credential source and its Secret (None when missing). Ours is read together
/// with the StatefulSet; a user's Secret, which the StatefulSet names, costs a second read.
pub async fn secret_of(
    cluster: &Cluster,
    release: &str,
) -> Result<(CredentialSource, Option<Secret>), Error> {
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let sets: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let ours = secret_name(release);
    let (sts, secret) = tokio::join!(sets.get_opt(release), secrets.get_opt(&ours));
    let sts = sts.map_err(|e| cluster.error("get", "statefulsets", e))?;
    let source = CredentialSource::of(release, sts.as_ref());
    let secret = source
        .secret_from(cluster, &cluster.namespace, release, secret)
        .await?;
    Ok((source, secret))
}

/// Reads every Secret of the release: its credentials (an `--existing-secret` too) and those
/// labelled as its own (its users'). Reading them registers their values with the redactor,
/// so what the command shows next (the server's log, a hint quoting it) cannot hold one.
/// Returns the labelled Secrets.
pub async fn learn_secrets(cluster: &Cluster, release: &str) -> Result<Vec<Secret>, Error> {
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let ours = ListParams::default().labels(&format!(
        "{LABEL_INSTANCE}={release},{LABEL_MANAGED_BY}={MANAGED_BY}"
    ));
    let (listed, source) = tokio::join!(secrets.list(&ours), secret_of(cluster, release));
    if let Ok((_, Some(secret))) = &source {
        secret_values(secret);
    }
    let listed = listed
        .map_err(|e| cluster.error("list", "secrets", e))?
        .items;
    for secret in &listed {
        secret_values(secret);
    }
    source.map(|_| listed)
}

/// Finds the release's ready pod and reads its Secret, both at once.
pub async fn find_target(cluster: &Cluster, release: &str) -> Result<Target, Error> {
    Ok(find_release(cluster, release).await?.target)
}

/// A running release with where its credentials come from and the Secret read (for the
/// commands that change that Secret: its resourceVersion is the precondition).
pub struct FoundRelease {
    pub target: Target,
    pub source: CredentialSource,
    pub secret: Secret,
}

/// [`find_target`], keeping the credential source and the Secret.
pub async fn find_release(cluster: &Cluster, release: &str) -> Result<FoundRelease, Error> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let pod_params = ListParams::default().labels(&selector(release));
    let (pods, found) = tokio::join!(pods.list(&pod_params), secret_of(cluster, release));
    let pods = pods.map_err(|e| cluster.error("list", "pods", e))?;
    let (source, secret) = found?;
    let secret_name = source.secret.clone();
    let namespace = cluster.namespace.clone();
    if pods.items.is_empty() && secret.is_none() {
        return Err(Error::NotFound {
            message: format!(
                "release {release:?} not found in namespace {namespace:?} (context {:?})",
                cluster.context
            ),
            hint: Some(format!(
                "install it with: kubectl pg install {release} -n {namespace}"
            )),
        });
    }
    let secret = secret.ok_or_else(|| Error::NotFound {
        message: format!(
            "Secret {secret_name:?} of release {release:?} not found in namespace {namespace:?}"
        ),
        hint: Some(if source.is_ours(release) {
            format!("kubectl pg install {release} -n {namespace} recreates it")
        } else {
            "it is the release's --existing-secret: restore it (kubectl-pg never writes it)".into()
        }),
    })?;
    let credentials = source.resolve(&secret)?;
    let ready = pods.items.iter().find(|p| is_ready(p));
    let Some(pod) = ready else {
        let state = pods
            .items
            .first()
            .map(describe_pod)
            .unwrap_or_else(|| "no pod exists".into());
        return Err(Error::Connection {
            target: format!("release {release} in namespace {namespace}"),
            reason: format!("no ready pod ({state})"),
        });
    };
    let port = database_port(pod);
    let target = Target {
        release: release.to_string(),
        namespace,
        pod: pod
            .metadata
            .name
            .clone()
            .unwrap_or_else(|| pod_name(release)),
        port,
        credentials,
    };
    Ok(FoundRelease {
        target,
        source,
        secret,
    })
}

/// Whether the pod's Ready condition is True.
/// The restarts of every container of these pods.
pub fn restarts(pods: &[Pod]) -> i32 {
    pods.iter()
        .flat_map(|p| {
            p.status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
        })
        .map(|c| c.restart_count)
        .sum()
}

pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `pod R-0 is Pending (ContainerCreating)`, for messages.
pub fn describe_pod(pod: &Pod) -> String {
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Unknown");
    let waiting = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| {
            cs.iter()
                .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
        });
    match waiting {
        Some(reason) => format!("pod {name} is {phase} ({reason})"),
        None => format!("pod {name} is {phase}, not ready"),
    }
}

/// The container port named `postgresql`, else 5432.
pub fn database_port(pod: &Pod) -> u16 {
    pod.spec
        .as_ref()
        .into_iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some("postgresql"))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .unwrap_or(DATABASE_PORT)
}

/// An application user's credentials, from its Secret `R-user-NAME`.
pub async fn app_user_credentials(
    cluster: &Cluster,
    release: &str,
    user: &str,
) -> Result<Credentials, Error> {
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let name = crate::database::roles::secret_name(release, user);
    let secret = secrets
        .get_opt(&name)
        .await
        .map_err(|e| cluster.error("get", "secrets", e))?
        .ok_or_else(|| Error::NotFound {
            message: format!(
                "user {user} of release {release} not found: no Secret {name} in namespace {:?}",
                cluster.namespace
            ),
            hint: Some(format!(
                "kubectl pg user list --release {release} -n {ns} shows the users; kubectl pg user create {user} --release {release} -n {ns} makes one",
                ns = cluster.namespace
            )),
        })?;
    Credentials::from_secret(&secret)
}

/// What a client needs to verify a release that serves TLS (its Secret `R-tls`).
#[derive(Debug, Clone)]
pub struct ReleaseTls {
    /// The release's CA certificate, PEM.
    pub ca: String,
    /// The names and addresses the server certificate holds, as recorded beside it.
    pub sans: Vec<String>,
}

impl ReleaseTls {
    /// Whether a client connecting to `host` can check the certificate names it.
    pub fn names(&self, host: &str) -> bool {
        self.sans.iter().any(|s| s == host)
    }
}

/// The TLS of a release that serves it, else None (a plain release).
pub async fn tls_of(cluster: &Cluster, release: &str) -> Result<Option<ReleaseTls>, Error> {
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let secret = secrets
        .get_opt(&crate::manifests::certs::secret_name(release))
        .await
        .map_err(|e| cluster.error("get", "secrets", e))?;
    let Some(secret) = secret.filter(|s| made_for(&s.metadata, release)) else {
        return Ok(None);
    };
    let sans = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::manifests::certs::ANNOTATION_SANS))
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    Ok(secret_values(&secret)
        .get("ca.crt")
        .filter(|ca| !ca.is_empty())
        .map(|ca| ReleaseTls {
            ca: ca.clone(),
            sans,
        }))
}

/// Writes a release's CA where `given` says, else to `~/.kube/kubectl-pg/NS-R-ca.crt`;
/// returns the absolute path, as `sslrootcert` needs it.
pub fn write_ca(
    namespace: &str,
    release: &str,
    given: Option<&std::path::Path>,
    ca: &str,
) -> Result<String, Error> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => {
            let home = crate::platform::home_dir().ok_or_else(|| Error::InvalidInput {
                message: "no home directory (HOME, or USERPROFILE on Windows): no place for the release's CA certificate".into(),
                hint: Some("give one with --ca-file PATH".into()),
            })?;
            home.join(".kube")
                .join("kubectl-pg")
                .join(format!("{namespace}-{release}-ca.crt"))
        }
    };
    let io = |source| Error::Io {
        context: format!("cannot write the CA certificate to {}", path.display()),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // As `-f` writes: a full disk or a signal never leaves a half certificate under the name,
    // nor takes away one written before.
    let mut file = crate::transfer::file::PendingFile::create(&path)?;
    file.write(ca.as_bytes()).map_err(io)?;
    file.commit()?;
    let absolute = std::path::absolute(&path).unwrap_or(path);
    Ok(absolute.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    #[test]
    fn validates_names() {
        assert!(validate_release("postgres").is_ok());
        assert!(validate_release(&"a".repeat(52)).is_ok());
        assert!(validate_release(&"a".repeat(53)).is_err());
        for bad in ["", "Pg", "-pg", "pg-", "p_g", "p.g", "1abc", "9"] {
            assert!(validate_release(bad).is_err(), "{bad}");
        }
        assert!(validate_namespace(&"n".repeat(63)).is_ok());
    }

    #[test]
    fn a_release_takes_only_its_own_secret() {
        let meta = |labels: &[(&str, &str)]| ObjectMeta {
            name: Some("pg-user-credentials".into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        };
        let ours = [(LABEL_MANAGED_BY, MANAGED_BY), (LABEL_INSTANCE, "pg-user")];
        assert!(check_release_secret(&meta(&ours), "pg-user", "db").is_ok());
        // The Secret of user `credentials` of release `pg`: the collision.
        let user = meta(&[
            (LABEL_MANAGED_BY, MANAGED_BY),
            (LABEL_INSTANCE, "pg"),
            (crate::database::roles::LABEL_USER, "credentials"),
        ]);
        let err = check_release_secret(&user, "pg-user", "db").unwrap_err();
        assert!(
            err.to_string().contains("user credentials of release pg"),
            "{err}"
        );
        assert!(err.hints().join(" ").contains("--existing-secret"));
        let other = meta(&[(LABEL_MANAGED_BY, MANAGED_BY), (LABEL_INSTANCE, "pg")]);
        assert!(check_release_secret(&other, "pg-user", "db")
            .unwrap_err()
            .to_string()
            .contains("(release pg)"));
        let foreign = meta(&[(LABEL_INSTANCE, "pg-user")]);
        assert!(check_release_secret(&foreign, "pg-user", "db")
            .unwrap_err()
            .to_string()
            .contains("not made by kubectl-pg"));
        // Labelled for this release, but as a user's Secret: still not the release's own.
        let mislabelled = meta(&[
            (LABEL_MANAGED_BY, MANAGED_BY),
            (LABEL_INSTANCE, "pg-user"),
            (crate::database::roles::LABEL_USER, "x"),
        ]);
        assert!(check_release_secret(&mislabelled, "pg-user", "db").is_err());
    }

    #[test]
    fn credentials_name_missing_keys() {
        let mut secret = Secret::default();
        secret.metadata.name = Some("pg-credentials".into());
        secret.data = Some(BTreeMap::from([(
            "username".to_string(),
            ByteString(b"app".to_vec()),
        )]));
        let err = Credentials::from_secret(&secret).unwrap_err().to_string();
        assert!(
            err.contains("password, database") && err.contains("pg-credentials"),
            "{err}"
        );
        secret
            .data
            .as_mut()
            .unwrap()
            .insert("password".into(), ByteString(b"p@ss word".to_vec()));
        secret
            .data
            .as_mut()
            .unwrap()
            .insert("database".into(), ByteString(b"learnflow".to_vec()));
        let c = Credentials::from_secret(&secret).unwrap();
        assert_eq!(
            (c.username.as_str(), c.database.as_str()),
            ("app", "learnflow")
        );
        assert!(!format!("{c:?}").contains("p@ss"));
    }

    #[test]
    fn both_password_forms_name_the_release_secret() {
        let sts = |container: serde_json::Value, volumes: serde_json::Value| -> StatefulSet {
            serde_json::from_value(serde_json::json!({
                "metadata": { "name": "pg" },
                "spec": {
                    "selector": {},
                    "serviceName": "pg-hl",
                    "template": { "spec": { "containers": [container], "volumes": volumes } },
                },
            }))
            .unwrap()
        };
        // As releases were made before POSTGRES_PASSWORD_FILE.
        let key = sts(
            serde_json::json!({ "name": "postgres", "env": [{ "name": "POSTGRES_PASSWORD",
                "valueFrom": { "secretKeyRef": { "name": "orders-db", "key": "password" } } }] }),
            serde_json::json!([]),
        );
        assert_eq!(CredentialSource::of("pg", Some(&key)).secret, "orders-db");
        let file = |path: &str| {
            sts(
                serde_json::json!({
                    "name": "postgres",
                    "env": [{ "name": "POSTGRES_PASSWORD_FILE", "value": path }],
                    "volumeMounts": [
                        { "name": "etc", "mountPath": "/etc/postgresql" },
                        { "name": "creds", "mountPath": "/etc/postgresql/credentials/" },
                    ],
                }),
                serde_json::json!([
                    { "name": "etc", "emptyDir": {} },
                    { "name": "creds", "secret": { "secretName": "orders-db" } },
                ]),
            )
        };
        let secret = |path: &str| CredentialSource::of("pg", Some(&file(path))).secret;
        assert_eq!(secret("/etc/postgresql/credentials/password"), "orders-db");
        // A file in no Secret's volume: the release's own Secret, as with no variable at all.
        assert_eq!(secret("/etc/postgresql/password"), "pg-credentials");
        assert_eq!(
            secret("/etc/postgresql/credentials-x/password"),
            "pg-credentials"
        );
        assert_eq!(CredentialSource::of("pg", None).secret, "pg-credentials");
    }
}
