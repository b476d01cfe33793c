//! A local listener for a release's database: every accepted connection gets its own
//! port-forward stream through the API server, to the pod that is ready at that moment.
//!
//! One stream per connection means a dropped stream (an API server restart, a proxy's idle
//! cut) costs that one connection. The ready pod is known from a watch of the release's pods,
//! so a connection opens its stream at once, without a lookup, and the listener follows the
//! release across restarts and pod replacements; until the watch has its first answer, or
//! when it knows no ready pod, a LIST decides (and says why there is none).

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use tokio::net::{TcpListener, TcpStream};

use super::access::{chain, Cluster};
use super::release;

/// Accepts connections on `listener` forever, each carried to the release's ready pod; the
/// caller ends it (drops the future) on Ctrl-C. Failures of one connection are noted on
/// stderr and end that connection only.
pub async fn serve(listener: TcpListener, cluster: Cluster, release: String) {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let (store, writer) = reflector::store::<Pod>();
    let config = watcher::Config::default().labels(&release::selector(&release));
    let watch = reflector::reflector(writer, watcher(pods, config))
        .default_backoff()
        .touched_objects()
        .for_each(|_| std::future::ready(()));
    // Ended with the listener (the caller drops this future on Ctrl-C).
    let _watching = AbortOnDrop(tokio::spawn(watch));
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: transient, keep the listener.
                crate::note!("accepting a connection failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (cluster, release, store) = (cluster.clone(), release.clone(), store.clone());
        tokio::spawn(async move {
            if let Err(reason) = carry(socket, &cluster, &release, &store).await {
                crate::note!("connection from {peer} closed: {reason}");
            }
        });
    }
}

/// One connection: the ready pod now, a stream to it, bytes both ways until either side ends.
async fn carry(
    mut socket: TcpStream,
    cluster: &Cluster,
    release: &str,
    known: &Store<Pod>,
) -> Result<(), String> {
    // PostgreSQL's small messages must not wait for a delayed ACK (kube's reads are 4 KiB).
    let _ = socket.set_nodelay(true);
    let (pod, port) = match known_ready(known) {
        Some(found) => found,
        None => ready_pod(cluster, release).await?,
    };
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let mut forwarder = pods
        .portforward(&pod, &[port])
        .await
        .map_err(|e| format!("port-forward to pod {pod} failed: {}", chain(&e)))?;
    let mut stream = forwarder
        .take_stream(port)
        .ok_or_else(|| format!("the port-forward to pod {pod} opened no stream"))?;
    let copied = tokio::io::copy_bidirectional(&mut socket, &mut stream).await;
    drop(stream);
    let _ = forwarder.join().await;
    copied
        .map(|_| ())
        .map_err(|e| format!("the stream to pod {pod} broke: {e}"))
}

/// The ready pod as the watch last saw it, if it has seen one.
fn known_ready(store: &Store<Pod>) -> Option<(String, u16)> {
    store
        .state()
        .iter()
        .find(|p| release::is_ready(p) && p.metadata.deletion_timestamp.is_none())
        .map(|pod| {
            (
                pod.metadata.name.clone().unwrap_or_default(),
                release::database_port(pod),
            )
        })
}

/// Aborts a background task when the future that owns it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The name and database port of the release's ready pod.
pub async fn ready_pod(cluster: &Cluster, release: &str) -> Result<(String, u16), String> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let list = pods
        .list(&ListParams::default().labels(&release::selector(release)))
        .await
        .map_err(|e| cluster.error("list", "pods", e).to_string())?;
    let pod = list
        .items
        .iter()
        .find(|p| release::is_ready(p) && p.metadata.deletion_timestamp.is_none())
        .ok_or_else(|| {
            let state = list
                .items
                .first()
                .map(release::describe_pod)
                .unwrap_or_else(|| "no pod exists".into());
            format!("release {release} has no ready pod ({state})")
        })?;
    Ok((
        pod.metadata.name.clone().unwrap_or_default(),
        release::database_port(pod),
    ))
}
