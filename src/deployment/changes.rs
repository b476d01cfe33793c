//! One stream that yields whenever something about a release may have changed: its pods,
//! PVCs, events and StatefulSet, watched (not polled).

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod};
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};

use crate::cluster::release;
use crate::cluster::Cluster;

/// Yields `()` on every watch event about the release in `namespace`.
pub fn changes(cluster: &Cluster, namespace: &str, release: &str) -> BoxStream<'static, ()> {
    let client = &cluster.client;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let by_labels = watcher::Config::default().labels(&release::selector(release));
    let by_name = watcher::Config::default().fields(&format!("metadata.name={release}"));
    // Errors (a watch refused by RBAC, a dropped connection) are no change: they are retried
    // with back-off instead of waking the caller, which would re-read everything in a loop.
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
    futures_util::stream::select_all(vec![
        quiet(watcher(pods, by_labels)),
        quiet(watcher(pvcs, watcher::Config::default())),
        quiet(watcher(events, watcher::Config::default())),
        quiet(watcher(sets, by_name)),
    ])
    .boxed()
}
