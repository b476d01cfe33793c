//! The database check behind `Healthy`: a real query through a port-forward, bounded by its
//! own short timeout so a dead database cannot stall the caller.

use std::time::{Duration, Instant};

use tokio_postgres::SimpleQueryMessage;

use super::observe::Observed;
use crate::cluster::release::{self, Target, DATABASE_PORT};
use crate::cluster::tunnel::TunnelConnector;
use crate::cluster::Cluster;
use crate::database::Connector;
use crate::migration::history::{self, History};

/// What a query against the release's database found.
#[derive(Debug, Clone, Default)]
pub struct DbCheck {
    pub accessible: bool,
    pub round_trip_ms: Option<f64>,
    pub server_version: Option<String>,
    pub history: Option<History>,
    pub error: Option<String>,
}

/// Connects through the pod, times `SELECT version`, reads the migration history.
pub async fn check(cluster: &Cluster, observed: &Observed, timeout: Duration) -> DbCheck {
    let Some(pod) = observed.pod().filter(|p| release::is_ready(p)) else {
        return DbCheck::default();
    };
    let credentials = match observed.credentials() {
        Some(Ok(c)) => c,
        Some(Err(e)) => return failed(e.to_string()),
        None => return failed("the release's Secret is missing".into()),
    };
    let target = Target {
        release: observed.release.clone(),
        namespace: observed.namespace.clone(),
        pod: pod
            .metadata
            .name
            .clone()
            .unwrap_or_else(|| release::pod_name(&observed.release)),
        port: DATABASE_PORT,
        credentials,
    };
    let connector = TunnelConnector::new(cluster, &target);
    match tokio::time::timeout(timeout, query(&connector)).await {
        Ok(result) => result,
        Err(_) => failed(format!("no answer within {}s", timeout.as_secs_f32())),
    }
}

async fn query(connector: &TunnelConnector) -> DbCheck {
    let client = match connector.connect().await {
        Ok(client) => client,
        Err(e) => return failed(e.to_string()),
    };
    let started = Instant::now();
    let version = match client
        .simple_query("SELECT current_setting('server_version')")
        .await
    {
        Ok(messages) => messages.into_iter().find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        }),
        Err(e) => return failed(crate::migration::engine::describe(&e)),
    };
    let round_trip = started.elapsed().as_secs_f64() * 1e3;
    DbCheck {
        accessible: true,
        round_trip_ms: Some((round_trip * 10.0).round() / 10.0),
        server_version: version,
        history: history::read(&client).await.ok(),
        error: None,
    }
}

fn failed(error: String) -> DbCheck {
    DbCheck {
        error: Some(error),
        ..DbCheck::default()
    }
}
