//! A local listener for a release's database: every accepted connection gets its own
//! port-forward stream through the API server, to the pod that is ready at that moment.
//!
//! One stream per connection means a dropped stream (an API server restart, a proxy's idle
//! cut) costs that one connection, and looking the pod up again per connection means the
//! listener follows the release across restarts and pod replacements.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use tokio::net::{TcpListener, TcpStream};

use super::access::{chain, Cluster};
use super::release;

/// Accepts connections on `listener` forever, each carried to the release's ready pod; the
/// caller ends it (drops the future) on Ctrl-C. Failures of one connection are noted on
/// stderr and end that connection only.
pub async fn serve(listener: TcpListener, cluster: Cluster, release: String) {
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
        let (cluster, release) = (cluster.clone(), release.clone());
        tokio::spawn(async move {
            if let Err(reason) = carry(socket, &cluster, &release).await {
                crate::note!("connection from {peer} closed: {reason}");
            }
        });
    }
}

/// One connection: the ready pod now, a stream to it, bytes both ways until either side ends.
async fn carry(mut socket: TcpStream, cluster: &Cluster, release: &str) -> Result<(), String> {
    // PostgreSQL's small messages must not wait for a delayed ACK (kube's reads are 4 KiB).
    let _ = socket.set_nodelay(true);
    let (pod, port) = ready_pod(cluster, release).await?;
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
