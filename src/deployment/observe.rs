//! Reading everything that makes up a release, every read at once.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::{Api, ListParams};

use crate::cluster::release::{self, LABEL_MANAGED_BY, MANAGED_BY};
use crate::cluster::Cluster;
use crate::error::Error;

/// The objects of one release as the API server has them now.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub release: String,
    pub namespace: String,
    pub statefulset: Option<StatefulSet>,
    pub pods: Vec<Pod>,
    pub pvc: Option<PersistentVolumeClaim>,
    pub service: Option<Service>,
    pub secret: Option<Secret>,
    /// Events about the StatefulSet, its pod and its PVC, oldest first.
    pub events: Vec<Event>,
}

/// `data-R-0`
pub fn pvc_name(release: &str) -> String {
    format!("data-{release}-0")
}

impl Observed {
    /// Where the release's credentials come from (its StatefulSet says).
    pub fn credential_source(&self) -> release::CredentialSource {
        release::CredentialSource::of(&self.release, self.statefulset.as_ref())
    }

    /// The credentials the pod uses, when its Secret was read.
    pub fn credentials(&self) -> Option<Result<release::Credentials, Error>> {
        let secret = self.secret.as_ref()?;
        Some(self.credential_source().resolve(secret))
    }

    /// Whether any object of the release exists.
    pub fn exists(&self) -> bool {
        self.statefulset.is_some()
            || !self.pods.is_empty()
            || self.secret.is_some()
            || self.service.is_some()
    }

    pub fn pod(&self) -> Option<&Pod> {
        self.pods.first()
    }
}

/// Reads the release's StatefulSet, pods, PVC, Service, Secret and events concurrently.
pub async fn observe(cluster: &Cluster, namespace: &str, release: &str) -> Result<Observed, Error> {
    let client = &cluster.client;
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let pod_params = ListParams::default().labels(&release::selector(release));
    let pvc = pvc_name(release);
    let secret = release::secret_name(release);
    // Only the events about the release's own objects, selected by the server.
    let event_params: Vec<ListParams> = [
        release.to_string(),
        release::pod_name(release),
        pvc_name(release),
    ]
    .iter()
    .map(|name| ListParams::default().fields(&format!("involvedObject.name={name}")))
    .collect();
    let (sts, pod_list, pvc, service, secret, event_lists) = tokio::join!(
        sets.get_opt(release),
        pods.list(&pod_params),
        pvcs.get_opt(&pvc),
        services.get_opt(release),
        secrets.get_opt(&secret),
        futures_util::future::join_all(event_params.iter().map(|p| events.list(p))),
    );
    let statefulset = sts.map_err(|e| cluster.error("get", "statefulsets", e))?;
    let mut pods = pod_list
        .map_err(|e| cluster.error("list", "pods", e))?
        .items;
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let pvc = pvc.map_err(|e| cluster.error("get", "persistentvolumeclaims", e))?;
    let service = service.map_err(|e| cluster.error("get", "services", e))?;
    // The release's own Secret is read at once; a user's, named by the StatefulSet, after.
    let source = release::CredentialSource::of(release, statefulset.as_ref());
    let secret = source
        .secret_from(cluster, namespace, release, secret)
        .await?;
    // Events are a diagnosis aid: a user who may not list them still gets a status.
    let mut events: Vec<Event> = event_lists
        .into_iter()
        .flat_map(|list| list.map(|l| l.items).unwrap_or_default())
        .collect();
    events.sort_by_key(event_time);
    Ok(Observed {
        release: release.to_string(),
        namespace: namespace.to_string(),
        statefulset,
        pods,
        pvc,
        service,
        secret,
        events,
    })
}

/// The releases in a namespace (or every namespace), as (namespace, name), sorted.
pub async fn list_releases(
    cluster: &Cluster,
    all_namespaces: bool,
) -> Result<Vec<(String, String)>, Error> {
    let sets: Api<StatefulSet> = if all_namespaces {
        Api::all(cluster.client.clone())
    } else {
        Api::namespaced(cluster.client.clone(), &cluster.namespace)
    };
    let params = ListParams::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    let list = sets
        .list_metadata(&params)
        .await
        .map_err(|e| cluster.error("list", "statefulsets", e))?;
    let mut releases: Vec<(String, String)> = list
        .items
        .into_iter()
        .filter_map(|s| Some((s.metadata.namespace.unwrap_or_default(), s.metadata.name?)))
        .collect();
    releases.sort();
    Ok(releases)
}

/// When an event last happened, as RFC 3339 text (sortable).
pub fn event_time(event: &Event) -> String {
    event
        .last_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .or_else(|| event.event_time.as_ref().map(|t| t.0.to_string()))
        .or_else(|| {
            event
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
        })
        .unwrap_or_default()
}
