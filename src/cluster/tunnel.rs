//! A database session through the Kubernetes API: a port-forward stream to the pod
//! (no local port is bound) handed to tokio-postgres. Each `connect` opens a new stream, so
//! a dropped tunnel is re-established by reconnecting.

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};

use super::access::{chain, Cluster};
use super::release::Target;
use crate::database::{connection_error, Connector, APPLICATION_NAME};
use crate::error::Error;

/// Connects to a release's database through a port-forward to its pod.
pub struct TunnelConnector {
    pods: Api<Pod>,
    pod: String,
    port: u16,
    config: tokio_postgres::Config,
    target: String,
    /// The label selector of the pod to reach, looked up at each connect (a Cluster's primary
    /// moves); none for a fixed pod.
    follow: Option<String>,
}

impl TunnelConnector {
    pub fn new(cluster: &Cluster, target: &Target) -> Self {
        Self::for_database(cluster, target, &target.credentials.database)
    }

    /// Connects with the target's credentials to another database of the same server (an
    /// application user's, for its grants).
    pub fn for_database(cluster: &Cluster, target: &Target, database: &str) -> Self {
        let mut config = tokio_postgres::Config::new();
        config
            .user(&target.credentials.username)
            .password(&target.credentials.password)
            .dbname(database)
            .application_name(APPLICATION_NAME)
            // The tunnel is the API server's TLS connection already.
            .ssl_mode(SslMode::Disable);
        Self {
            pods: Api::namespaced(cluster.client.clone(), &target.namespace),
            pod: target.pod.clone(),
            port: target.port,
            config,
            target: format!(
                "{}@{}/{} (pod {}/{}, context {:?}, via port-forward)",
                target.credentials.username,
                target.release,
                database,
                target.namespace,
                target.pod,
                cluster.context
            ),
            follow: None,
        }
    }

    /// Reaches, at each connect, the ready pod that `selector` matches (else the pod given),
    /// and refuses a server in recovery: after a failover or switchover the next session is
    /// the new primary's, never a demoted one's.
    pub fn following(mut self, selector: String) -> Self {
        // Messages name the primary, not the pod it was when the command began.
        self.target = self
            .target
            .replacen(" (pod ", " (the primary, first pod ", 1);
        self.follow = Some(selector);
        self
    }

    async fn pod(&self) -> String {
        let Some(selector) = &self.follow else {
            return self.pod.clone();
        };
        let params = kube::api::ListParams::default().labels(selector);
        let found = match self.pods.list(&params).await {
            Ok(list) => list.items,
            Err(_) => Vec::new(),
        };
        found
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && super::release::is_ready(p))
            .filter_map(|p| p.metadata.name.clone())
            .min()
            .unwrap_or_else(|| self.pod.clone())
    }
}

impl Connector for TunnelConnector {
    fn target(&self) -> String {
        self.target.clone()
    }

    /// Following a Cluster's primary: a switchover or failover takes up to half a minute
    /// before a new primary is labelled and ready (about 36 s of attempts).
    fn attempts(&self) -> u32 {
        if self.follow.is_some() {
            22
        } else {
            7
        }
    }

    async fn connect(&self) -> Result<Client, Error> {
        let fail = |reason: String| Error::Connection {
            target: self.target.clone(),
            reason,
        };
        let pod = self.pod().await;
        let mut forwarder = self
            .pods
            .portforward(&pod, &[self.port])
            .await
            .map_err(|e| fail(format!("port-forward to pod {pod} failed: {}", chain(&e))))?;
        let stream = forwarder
            .take_stream(self.port)
            .ok_or_else(|| fail("the port-forward opened no stream".into()))?;
        let (client, connection) = self
            .config
            .connect_raw(stream, NoTls)
            .await
            .map_err(|e| connection_error(&self.target, &e))?;
        // The forwarder must live as long as the session it carries.
        tokio::spawn(async move {
            let _ = connection.await;
            let _ = forwarder.join().await;
        });
        if self.follow.is_some() {
            let standby = client
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await
                .map_err(|e| connection_error(&self.target, &e))?
                .get::<_, bool>(0);
            if standby {
                return Err(fail(format!(
                    "pod {pod} is a standby now: the primary is moving (a switchover or failover)"
                )));
            }
        }
        Ok(client)
    }
}
