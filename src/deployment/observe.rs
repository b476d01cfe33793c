//! Reading everything that makes up a release, every read at once.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::{Api, ListParams};

use crate::cluster::release::{self, LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY};
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

    /// The server's container as the StatefulSet's template defines it.
    pub fn server_container(&self) -> Option<&k8s_openapi::api::core::v1::Container> {
        self.statefulset
            .as_ref()?
            .spec
            .as_ref()?
            .template
            .spec
            .as_ref()?
            .containers
            .iter()
            .find(|c| c.name == crate::manifests::render::CONTAINER)
    }

    /// Whether the StatefulSet has every replica it wants ready (and wants at least one).
    pub fn fully_ready(&self) -> bool {
        let Some(set) = &self.statefulset else {
            return false;
        };
        let wanted = set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let ready = set
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        wanted > 0 && ready >= wanted && self.pods.iter().all(release::is_ready)
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
    let pod_params = ListParams::default().labels(&release::selector(release));
    let pvc = pvc_name(release);
    let secret = release::secret_name(release);
    let (sts, pod_list, pvc, service, secret, events) = tokio::join!(
        sets.get_opt(release),
        pods.list(&pod_params),
        pvcs.get_opt(&pvc),
        services.get_opt(release),
        secrets.get_opt(&secret),
        events_of(cluster, namespace, release),
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

/// Every release in the namespace (or in all of them), observed with one LIST per kind by the
/// `managed-by` label instead of six requests per release, so `status -A` costs the same at 1
/// release as at 100. Events are read only for releases that are not fully ready (they explain
/// problems), and a user's `--existing-secret` with one GET each.
pub async fn observe_all(cluster: &Cluster, all_namespaces: bool) -> Result<Vec<Observed>, Error> {
    fn api<K>(cluster: &Cluster, all: bool) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        if all {
            Api::all(cluster.client.clone())
        } else {
            Api::namespaced(cluster.client.clone(), &cluster.namespace)
        }
    }
    let ours = ListParams::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    let all = all_namespaces;
    let (sets, pods, pvcs) = (
        api::<StatefulSet>(cluster, all),
        api::<Pod>(cluster, all),
        api::<PersistentVolumeClaim>(cluster, all),
    );
    let (services, secrets) = (api::<Service>(cluster, all), api::<Secret>(cluster, all));
    let (sets, pods, pvcs, services, secrets) = tokio::join!(
        sets.list(&ours),
        pods.list(&ours),
        pvcs.list(&ours),
        services.list(&ours),
        secrets.list(&ours),
    );
    let sets = sets
        .map_err(|e| cluster.error("list", "statefulsets", e))?
        .items;
    let pods = pods.map_err(|e| cluster.error("list", "pods", e))?.items;
    let pvcs = pvcs
        .map_err(|e| cluster.error("list", "persistentvolumeclaims", e))?
        .items;
    let services = services
        .map_err(|e| cluster.error("list", "services", e))?
        .items;
    // Who may get a release's Secret but not list Secrets still gets a status: one GET each.
    let secrets = secrets.ok().map(|l| l.items);
    let key = |m: &kube::api::ObjectMeta| {
        (
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        )
    };
    let mut found = Vec::new();
    for statefulset in sets {
        let (namespace, release) = key(&statefulset.metadata);
        let instance = |m: &kube::api::ObjectMeta| {
            m.namespace.as_deref() == Some(namespace.as_str())
                && m.labels.as_ref().and_then(|l| l.get(LABEL_INSTANCE)) == Some(&release)
        };
        let named = |m: &kube::api::ObjectMeta, name: &str| {
            m.namespace.as_deref() == Some(namespace.as_str()) && m.name.as_deref() == Some(name)
        };
        let mut own_pods: Vec<Pod> = pods
            .iter()
            .filter(|p| instance(&p.metadata))
            .cloned()
            .collect();
        own_pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let source = release::CredentialSource::of(&release, Some(&statefulset));
        let listed = secrets.as_ref().map(|all| {
            all.iter()
                .find(|s| named(&s.metadata, &release::secret_name(&release)))
                .cloned()
        });
        let secret = match listed {
            Some(ours) if source.is_ours(&release) => ours,
            _ => {
                let get = async {
                    let api: Api<Secret> = Api::namespaced(cluster.client.clone(), &namespace);
                    api.get_opt(&release::secret_name(&release)).await
                };
                let ours = if source.is_ours(&release) {
                    get.await
                } else {
                    Ok(None)
                };
                source
                    .secret_from(cluster, &namespace, &release, ours)
                    .await?
            }
        };
        found.push(Observed {
            pvc: pvcs
                .iter()
                .find(|c| named(&c.metadata, &pvc_name(&release)))
                .cloned(),
            service: services
                .iter()
                .find(|v| named(&v.metadata, &release))
                .cloned(),
            pods: own_pods,
            secret,
            events: Vec::new(),
            statefulset: Some(statefulset),
            release,
            namespace,
        });
    }
    found.sort_by(|a, b| (&a.namespace, &a.release).cmp(&(&b.namespace, &b.release)));
    let troubled = found.iter_mut().filter(|o| !o.fully_ready());
    futures_util::future::join_all(troubled.map(|o| async move {
        o.events = events_of(cluster, &o.namespace, &o.release).await;
    }))
    .await;
    Ok(found)
}

/// Events about the release's StatefulSet, pod and claim, oldest first. They are a diagnosis
/// aid: who may not list them still gets a status.
async fn events_of(cluster: &Cluster, namespace: &str, release: &str) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), namespace);
    let names = [
        release.to_string(),
        release::pod_name(release),
        pvc_name(release),
    ];
    let lists = futures_util::future::join_all(names.iter().map(|name| {
        let params = ListParams::default().fields(&format!("involvedObject.name={name}"));
        let events = events.clone();
        async move { events.list(&params).await }
    }))
    .await;
    let mut events: Vec<Event> = lists
        .into_iter()
        .flat_map(|list| list.map(|l| l.items).unwrap_or_default())
        .collect();
    events.sort_by_key(event_time);
    events
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
