//! What a diagnostics report collects of a release, whichever its kind: its objects (a
//! StatefulSet and what goes with it, or a Cluster with the operator's status and what the
//! operator made), its pods, its Secrets, and the names its events are about. Collected best
//! effort: what cannot be read becomes a note.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::{Api, ListParams};
use serde::Serialize;
use serde_json::Value;

use crate::cluster::release::{self, secret_values};
use crate::cluster::Cluster;
use crate::deployment::cnpg::{self, CnpgCluster, Which};
use crate::deployment::observe;
use crate::error::Error;

/// One release's objects, for a report.
#[derive(Debug, Default)]
pub struct Evidence {
    /// `objects/NAME.yaml` → its objects, as the API returned them.
    pub objects: Vec<(String, Vec<Value>)>,
    pub pods: Vec<Pod>,
    /// Read in full (their values known to the redactor); the report writes them redacted.
    pub secrets: Vec<Secret>,
    /// The objects whose events matter.
    pub names: BTreeSet<String>,
    /// The container whose log is the server's.
    pub container: &'static str,
    /// What could not be read.
    pub notes: Vec<String>,
}

fn values<T: Serialize>(items: impl IntoIterator<Item = T>) -> Vec<Value> {
    items
        .into_iter()
        .filter_map(|i| serde_json::to_value(i).ok())
        .collect()
}

impl Evidence {
    fn push<T: Serialize>(&mut self, file: &str, items: impl IntoIterator<Item = T>) {
        self.objects
            .push((format!("objects/{file}"), values(items)));
    }
}

/// A StatefulSet release: the StatefulSet, its Services, PVC, pods and Secrets. Not found
/// when it does not exist.
pub async fn statefulset(cluster: &Cluster, name: &str) -> Result<Evidence, Error> {
    let ns = cluster.namespace.clone();
    let observed = observe::observe(cluster, &ns, name).await?;
    if !observed.exists() {
        return Err(not_found(cluster, name));
    }
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), &ns);
    let headless_name = format!("{name}-hl");
    let (headless, secrets) = tokio::join!(
        services.get_opt(&headless_name),
        release::learn_secrets(cluster, name)
    );
    let mut evidence = Evidence {
        container: crate::manifests::render::CONTAINER,
        ..Default::default()
    };
    // Every secret value the release has, ours and a user's --existing-secret, is now known
    // to the redactor, which every file goes through (a log, a setting may quote one).
    let mut secrets = secrets.unwrap_or_else(|e| {
        evidence.notes.push(format!("secrets: not listed: {e}"));
        observed.secret.iter().cloned().collect()
    });
    for secret in &secrets {
        secret_values(secret);
    }
    let headless = headless.unwrap_or_else(|e| {
        evidence.notes.push(format!(
            "headless service: {}",
            cluster.error("get", "services", e)
        ));
        None
    });
    evidence.push("statefulset.yaml", observed.statefulset.iter());
    evidence.push(
        "services.yaml",
        observed.service.iter().chain(headless.iter()),
    );
    evidence.push("pvc.yaml", observed.pvc.iter());
    evidence.push("pods.yaml", observed.pods.iter());
    secrets.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    evidence.names = [
        name.to_string(),
        headless_name,
        observe::pvc_name(name),
        release::pod_name(name),
    ]
    .into_iter()
    .collect();
    evidence.pods = observed.pods;
    evidence.secrets = secrets;
    evidence.fill_names();
    Ok(evidence)
}

/// A Cluster: the Cluster with the operator's status and conditions, its instances' pods and
/// volumes, the operator's Services and Secrets (redacted in the report).
pub async fn cloudnative_pg(cluster: &Cluster, c: &CnpgCluster) -> Result<Evidence, Error> {
    let client = &cluster.client;
    let ns = &c.namespace;
    let selector = ListParams::default().labels(&format!("{}={}", cnpg::LABEL_CLUSTER, c.name));
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let service_names = [Which::ReadWrite, Which::ReadOnly, Which::Any].map(|w| c.service(w));
    let secret_names: BTreeSet<String> = [
        c.app_secret(),
        c.ca_secret(),
        format!("{}-server", c.name),
        format!("{}-replication", c.name),
        format!("{}-superuser", c.name),
    ]
    .into_iter()
    .collect();
    let (found_services, found_pvcs, found_secrets) = tokio::join!(
        futures_util::future::join_all(service_names.iter().map(|n| services.get_opt(n))),
        pvcs.list(&selector),
        futures_util::future::join_all(secret_names.iter().map(|n| secrets.get_opt(n))),
    );
    let mut evidence = Evidence {
        container: cnpg::CONTAINER,
        ..Default::default()
    };
    let mut found = Vec::new();
    for result in found_services {
        match result {
            Ok(s) => found.extend(s),
            Err(e) => evidence
                .notes
                .push(format!("services: {}", cluster.error("get", "services", e))),
        }
    }
    evidence.push("cluster.yaml", [&c.object]);
    evidence.push("services.yaml", found.iter());
    let mut claims = Vec::new();
    match found_pvcs {
        Ok(list) => {
            claims.extend(list.items.iter().filter_map(|p| p.metadata.name.clone()));
            evidence.push("pvc.yaml", list.items.iter());
        }
        Err(e) => evidence.notes.push(format!(
            "volumes: {}",
            cluster.error("list", "persistentvolumeclaims", e)
        )),
    }
    evidence.push("pods.yaml", c.pods.iter());
    for result in found_secrets {
        match result {
            Ok(Some(secret)) => {
                secret_values(&secret);
                evidence.secrets.push(secret);
            }
            Ok(None) => {}
            Err(e) => evidence
                .notes
                .push(format!("secrets: {}", cluster.error("get", "secrets", e))),
        }
    }
    evidence.names = [c.name.clone()]
        .into_iter()
        .chain(service_names)
        .chain(secret_names)
        .chain(claims)
        .collect();
    evidence.pods = c.pods.clone();
    evidence.fill_names();
    Ok(evidence)
}

impl Evidence {
    /// The pods' and Secrets' names join the names events are kept for.
    fn fill_names(&mut self) {
        let pods = self.pods.iter().filter_map(|p| p.metadata.name.clone());
        let secrets = self.secrets.iter().filter_map(|s| s.metadata.name.clone());
        self.names.extend(pods.chain(secrets));
    }
}

fn not_found(cluster: &Cluster, name: &str) -> Error {
    let ns = &cluster.namespace;
    Error::NotFound {
        message: format!(
            "release {name:?} not found in namespace {ns:?} (context {:?}): nothing to report",
            cluster.context
        ),
        hint: Some(format!("the releases here: kubectl pg status -n {ns}")),
    }
}
