//! One stream that yields whenever something about a release may have changed: its pods,
//! PVCs, events and StatefulSet, or a Cluster and its pods, watched (not polled).

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod};
use kube::api::{Api, DynamicObject};
use kube::runtime::{watcher, WatchStreamExt};

use crate::cluster::release;
use crate::cluster::Cluster;
use crate::deployment::cnpg;

/// Yields `()` on every watch event about the release in `namespace`.
pub fn changes(cluster: &Cluster, namespace: &str, release: &str) -> BoxStream<'static, ()> {
    let client = &cluster.client;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let by_labels = watcher::Config::default().labels(&release::selector(release));
    let by_name = watcher::Config::default().fields(&format!("metadata.name={release}"));
    futures_util::stream::select_all(vec![
        quiet(watcher(pods, by_labels)),
        quiet(watcher(pvcs, watcher::Config::default())),
        quiet(watcher(events, watcher::Config::default())),
        quiet(watcher(sets, by_name)),
    ])
    .boxed()
}

/// Yields `()` on every watch event about CloudNativePG Cluster `name` in `namespace`: the
/// Cluster itself (the operator's phase) and its pods.
pub fn cluster_changes(cluster: &Cluster, namespace: &str, name: &str) -> BoxStream<'static, ()> {
    let client = &cluster.client;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let clusters: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &cnpg::resource());
    let by_labels = watcher::Config::default().labels(&format!("{}={name}", cnpg::LABEL_CLUSTER));
    let by_name = watcher::Config::default().fields(&format!("metadata.name={name}"));
    futures_util::stream::select_all(vec![
        quiet(watcher(pods, by_labels)),
        quiet(watcher(clusters, by_name)),
    ])
    .boxed()
}

/// Errors (a watch refused by RBAC, a dropped connection) are no change: they are retried with
/// back-off instead of waking the caller, which would re-read everything in a loop.
fn quiet<K>(
    stream: impl futures_util::Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
) -> BoxStream<'static, ()>
where
    K: Send + 'static,
{
    stream
        .default_backoff()
        .filter_map(|event| async move { event.ok().map(|_| ()) })
        .boxed()
}
