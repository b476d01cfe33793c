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
    fn field(&self, path: &[&str]) -> Option<&Value> {
        path.iter().try_fold(&self.object.data, |v, k| v.get(k))
    }

    fn text(&self, path: &[&str]) -> Option<String> {
        self.field(path)?.as_str().map(str::to_string)
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
            Some("Cluster in healthy state") if ready >= self.wanted() => "Healthy",
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
        self.text(&["spec", "bootstrap", "initdb", "secret", "name"])
            .unwrap_or_else(|| format!("{}-app", self.name))
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

#[cfg(test)]
mod tests {
    use super::*;

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
