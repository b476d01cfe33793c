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
    /// Each database's `pg_database_size`, largest first.
    pub database_sizes: Vec<DatabaseSize>,
    pub error: Option<String>,
}

/// One database's size on disk.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DatabaseSize {
    pub name: String,
    pub bytes: u64,
}

/// The data volume's usage as `df` sees it inside the pod.
#[derive(Debug, Clone, Copy, serde::Serialize, PartialEq, Eq)]
pub struct VolumeUsage {
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub available_bytes: u64,
}

/// Parses `df -P -k` output: the line after the header, 1024-byte blocks.
pub fn parse_df(text: &str) -> Option<VolumeUsage> {
    let line = text.lines().nth(1)?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    // Filesystem, blocks, used, available, capacity, mount (the name may hold no spaces).
    let number = |i: usize| fields.get(i)?.parse::<u64>().ok().map(|k| k * 1024);
    Some(VolumeUsage {
        total_bytes: number(1)?,
        used_bytes: number(2)?,
        available_bytes: number(3)?,
    })
}

/// Where the data volume is mounted in the release's container.
pub fn data_mount(observed: &Observed) -> Option<String> {
    observed
        .server_container()?
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "data")
        .map(|m| m.mount_path.clone())
}

/// What the pod's data volume says: its usage (`df`) and the major its data directory was
/// initialised by (`PG_VERSION`).
#[derive(Debug, Clone, Copy, Default)]
pub struct VolumeFacts {
    pub usage: Option<VolumeUsage>,
    pub data_major: Option<u32>,
}

/// `df -P -k` on the data volume and `$PGDATA/PG_VERSION`, in one exec in the ready pod;
/// nothing when it cannot tell within a few seconds.
pub async fn volume_facts(cluster: &Cluster, observed: &Observed) -> VolumeFacts {
    const SCRIPT: &str =
        "df -P -k \"$1\" 2>/dev/null; printf 'PG_VERSION='; cat \"$PGDATA/PG_VERSION\" 2>/dev/null || echo; exit 0";
    let (Some(pod), Some(mount)) = (
        observed.pod().filter(|p| release::is_ready(p)),
        data_mount(observed),
    ) else {
        return VolumeFacts::default();
    };
    let name = pod.metadata.name.clone().unwrap_or_default();
    let argv = ["sh", "-c", SCRIPT, "sh", mount.as_str()];
    let run = crate::cluster::exec::run(
        cluster,
        &observed.namespace,
        &name,
        crate::manifests::render::CONTAINER,
        &argv,
        "",
    );
    match tokio::time::timeout(Duration::from_secs(3), run).await {
        Ok(Ok(out)) if out.success => parse_facts(&out.stdout),
        _ => VolumeFacts::default(),
    }
}

/// Reads the output of [`volume_facts`]'s script.
pub fn parse_facts(text: &str) -> VolumeFacts {
    let (df, version) = match text.rfind("PG_VERSION=") {
        Some(i) => (&text[..i], &text[i + "PG_VERSION=".len()..]),
        None => (text, ""),
    };
    VolumeFacts {
        usage: parse_df(df),
        data_major: version
            .trim()
            .split('.')
            .next()
            .and_then(|v| v.parse().ok()),
    }
}

/// How much a database check asks beyond its one timed round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// The server's version and the migration history: what a listing shows.
    Brief,
    /// Also each database's size, which walks every database's files on the server: what one
    /// release's status shows.
    Full,
}

/// Connects through the pod, times the query that reads the server's version and finds the
/// migration history, and reads the history (and, at `Depth::Full`, the sizes).
pub async fn check(
    cluster: &Cluster,
    observed: &Observed,
    timeout: Duration,
    depth: Depth,
) -> DbCheck {
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
    match tokio::time::timeout(timeout, query(&connector, depth)).await {
        Ok(result) => result,
        Err(_) => failed(format!("no answer within {}s", timeout.as_secs_f32())),
    }
}

async fn query(connector: &TunnelConnector, depth: Depth) -> DbCheck {
    let client = match connector.connect().await {
        Ok(client) => client,
        Err(e) => return failed(e.to_string()),
    };
    // Each round trip crosses the API server and the node: the version and the history's
    // place go together, and what follows is pipelined.
    let sql = format!(
        "SELECT current_setting('server_version'); {}",
        history::locate_sql()
    );
    let started = Instant::now();
    let rows = match client.simple_query(&sql).await {
        Ok(messages) => history::rows(&messages),
        Err(e) => return failed(crate::migration::engine::describe(&e)),
    };
    let round_trip = started.elapsed().as_secs_f64() * 1e3;
    let version = rows.first().and_then(|row| row.first().cloned().flatten());
    let location = rows
        .get(1)
        .map(|row| history::Location::of(row))
        .unwrap_or_default();
    let (history, database_sizes) = tokio::join!(history::read_at(&client, &location), async {
        match depth {
            Depth::Full => sizes(&client).await,
            Depth::Brief => Vec::new(),
        }
    });
    DbCheck {
        accessible: true,
        round_trip_ms: Some((round_trip * 10.0).round() / 10.0),
        server_version: version,
        history: history.ok(),
        database_sizes,
        error: None,
    }
}

async fn sizes(client: &tokio_postgres::Client) -> Vec<DatabaseSize> {
    let sql = "SELECT datname, pg_database_size(datname)::text FROM pg_database \
               WHERE datallowconn AND has_database_privilege(datname, 'CONNECT') \
               ORDER BY pg_database_size(datname) DESC, datname";
    match client.simple_query(sql).await {
        Ok(messages) => messages
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(DatabaseSize {
                    name: row.get(0)?.to_string(),
                    bytes: row.get(1)?.parse().ok()?,
                }),
                _ => None,
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn failed(error: String) -> DbCheck {
    DbCheck {
        error: Some(error),
        ..DbCheck::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_df_in_posix_format() {
        let text = "Filesystem     1024-blocks    Used Available Capacity Mounted on\n/dev/sdb1          8191416   48812   8126220       1% /var/lib/postgresql/data\n";
        assert_eq!(
            parse_df(text),
            Some(VolumeUsage {
                total_bytes: 8191416 * 1024,
                used_bytes: 48812 * 1024,
                available_bytes: 8126220 * 1024,
            })
        );
        assert_eq!(parse_df("Filesystem\n"), None);
        let facts = parse_facts(&format!("{text}PG_VERSION=16\n"));
        assert_eq!(facts.data_major, Some(16));
        assert!(facts.usage.is_some());
        assert_eq!(parse_facts("PG_VERSION=\n").data_major, None);
    }
}
