//! `kubectl pg report`: a diagnostics bundle to attach to a ticket. Everything is collected
//! best effort: what cannot be read (a previous log that does not exist, a database that does
//! not answer) becomes a note in the bundle, not the end of the report. No password is
//! written: Secret values are redacted, and every known secret value is cut out of every file.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, LogParams};
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::cli::{GlobalArgs, ReportArgs};
use crate::cluster::{logs, Cluster};
use crate::database::Connector;
use crate::deployment::kind::{self, Release};
use crate::error::Error;
use crate::migration::status::MigrationStatus;
use crate::migration::{history, MigrationSet};
use crate::output::archive::Bundle;
use crate::output::{emit, API_VERSION};

/// How long the database part may take before the report goes on without it.
const DATABASE_TIMEOUT: Duration = Duration::from_secs(20);

/// The most of each log the bundle keeps (its end): a log is read as a stream, never whole.
const MAX_LOG_BYTES: usize = 32 << 20;

/// What a Secret's values are replaced by in the bundle.
const REDACTED_VALUE: &str = "REDACTED";

/// `-f -` is stdout, as for kubectl and tar: written through `/dev/stdout` (never to a
/// terminal, which cannot take an archive), not a file named `-`.
fn destination(file: Option<PathBuf>, stdout_terminal: bool) -> Result<Option<PathBuf>, Error> {
    match file {
        Some(file) if file.as_os_str() == "-" => {
            if crate::output::stdout_closed() {
                return Err(Error::InvalidInput {
                    message: "stdout is closed: the report's archive would be lost".into(),
                    hint: Some("give a file name to -f".into()),
                });
            }
            if stdout_terminal {
                return Err(Error::InvalidInput {
                    message: "refusing to write the report's archive to a terminal".into(),
                    hint: Some(
                        "redirect stdout (-f - > report.tar.gz), or give a file name".into(),
                    ),
                });
            }
            crate::platform::stdout_path()
                .map(Some)
                .ok_or_else(|| Error::InvalidInput {
                    message: "-f - (stdout) is not available on Windows".into(),
                    hint: Some("give a file name: -f report.tar.gz".into()),
                })
        }
        file => Ok(file),
    }
}

pub async fn run(mut args: ReportArgs, global: &GlobalArgs) -> Result<(), Error> {
    args.file = destination(args.file.take(), std::io::stdout().is_terminal())?;
    // Refused before any connection: a dangling symlink, a directory, a socket.
    let written_through = match &args.file {
        Some(file) => matches!(
            crate::transfer::file::resolve(file)?,
            crate::transfer::file::Destination::Through { .. }
        ),
        None => false,
    };
    let cluster = Cluster::connect(&global.connect_options()).await?;
    let found = kind::resolve(&cluster, args.release.as_deref()).await?;
    let release = found.name().to_string();
    let ns = cluster.namespace.clone();
    let evidence = found.evidence(&cluster).await?;
    let now = Timestamp::now();
    let stamp = now.strftime("%Y%m%dT%H%M%SZ").to_string();
    let root = format!("report-{release}-{stamp}");
    let path = args
        .file
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{root}.tar.gz")));
    crate::note!("collecting the report of release {release} in namespace {ns}");

    let mut bundle = Bundle::new(&root);
    let mut notes: Vec<String> = evidence.notes.clone();
    let client = &cluster.client;
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let all = ListParams::default();
    let (event_list, server) = tokio::join!(events.list(&all), client.apiserver_version(),);

    // Objects; Secrets with their values replaced.
    for (file, items) in &evidence.objects {
        add_yaml(&mut bundle, &mut notes, file, items.iter());
    }
    let redacted: Vec<Secret> = evidence.secrets.iter().map(redact).collect();
    add_yaml(
        &mut bundle,
        &mut notes,
        "objects/secrets.yaml",
        redacted.iter(),
    );

    // Events about those objects.
    match event_list {
        Ok(list) => {
            let mut items: Vec<Event> = list
                .items
                .into_iter()
                .filter(|e| {
                    e.involved_object
                        .name
                        .as_ref()
                        .is_some_and(|n| evidence.names.contains(n))
                })
                .collect();
            items.sort_by_key(|e| {
                e.last_timestamp
                    .as_ref()
                    .map(|t| t.0)
                    .or(e.event_time.as_ref().map(|t| t.0))
                    .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
            });
            bundle.add("events.txt", events_table(&items));
            add_yaml(&mut bundle, &mut notes, "events.yaml", items.iter());
        }
        Err(e) => notes.push(format!("events: {}", cluster.error("list", "events", e))),
    }

    // Logs, current and previous, of every pod of the release.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for pod in &evidence.pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        for previous in [false, true] {
            let file = format!(
                "logs/{name}{}",
                if previous { ".previous.log" } else { ".log" }
            );
            let params = LogParams {
                container: Some(evidence.container.into()),
                previous,
                timestamps: true,
                ..LogParams::default()
            };
            match logs::tail_of(&pods, &name, &params, MAX_LOG_BYTES).await {
                Ok(text) => bundle.add(&file, text),
                Err(e) => {
                    let why = logs::log_error(&cluster, &release, &name, previous, e);
                    bundle.add(&format!("{file}.missing.txt"), format!("{why}\n"));
                }
            }
        }
    }

    // The status document, as `kubectl pg status -o json` prints it.
    let set = MigrationSet::load(None)?;
    let status = found.status(&cluster, &set).await;
    match &status {
        Ok(status) => bundle.add("status.json", to_json(status)),
        Err(e) => notes.push(format!("status: {e}")),
    }

    // The database: settings, activity, migrations, version.
    let database = match tokio::time::timeout(
        DATABASE_TIMEOUT,
        database_part(&cluster, &found, &set, &mut bundle),
    )
    .await
    {
        Ok(Ok(version)) => Some(version),
        Ok(Err(e)) => {
            notes.push(format!("database: not reached, so no pg_settings, pg_stat_activity or migration status: {e}"));
            None
        }
        Err(_) => {
            notes.push(format!(
                "database: no answer within {}s, so no pg_settings, pg_stat_activity or migration status",
                DATABASE_TIMEOUT.as_secs()
            ));
            None
        }
    };

    let server_version = match server {
        Ok(info) => Some(info.git_version),
        Err(e) => {
            notes.push(format!(
                "kubernetes version: {}",
                cluster.error("get", "version", e)
            ));
            None
        }
    };
    let versions = Versions {
        api_version: API_VERSION,
        kind: "Versions",
        plugin: env!("CARGO_PKG_VERSION"),
        plugin_commit: env!("KUBECTL_PG_GIT_COMMIT"),
        kubernetes_server: server_version,
        postgresql: database,
        image: status.as_ref().ok().and_then(|s| s.image.clone()),
    };
    bundle.add("versions.json", to_json(&versions));

    let mut readme = format!(
        "kubectl-pg report of release {release} in namespace {ns} (context {:?}), {now}\n\n\
         Secret values are redacted, and every secret value of the release is replaced by [REDACTED] in every file.\n\nFiles:\n",
        cluster.context
    );
    for p in bundle.paths() {
        readme.push_str(&format!("  {p}\n"));
    }
    if !notes.is_empty() {
        readme.push_str("\nNot collected:\n");
        for n in &notes {
            readme.push_str(&format!("  {n}\n"));
        }
    }
    bundle.add("README.txt", readme);
    for n in &notes {
        crate::note!("not collected: {n}");
    }
    let size = bundle.write(&path, &crate::output::redact::current())?;
    crate::note!("wrote {} ({:.1} KiB)", path.display(), size as f64 / 1024.0);
    // The path on stdout names a file to open; a device or `-f /dev/stdout` has none (and
    // stdout may be the archive itself).
    if !written_through {
        emit(&format!("{}\n", path.display()));
    }
    Ok(())
}

/// `versions.json`
#[derive(Debug, Serialize)]
struct Versions {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    plugin: &'static str,
    plugin_commit: &'static str,
    kubernetes_server: Option<String>,
    postgresql: Option<String>,
    image: Option<String>,
}

/// Connects through the ready pod and adds pg_settings, the pg_stat_activity summary and the
/// migration status; returns the server's `version()`.
async fn database_part(
    cluster: &Cluster,
    found: &Release,
    set: &MigrationSet,
    bundle: &mut Bundle,
) -> Result<String, Error> {
    let target = found.target(cluster).await?;
    let db = found.connector(cluster, &target).connect().await?;
    let version = query(&db, "SELECT version()").await?;
    let version = version
        .get(1)
        .and_then(|row| row.first().cloned())
        .unwrap_or_default();
    let settings = query(
        &db,
        "SELECT name, setting, unit, source, context, pending_restart FROM pg_settings ORDER BY name",
    )
    .await?;
    bundle.add("database/pg_settings.tsv", tsv(&settings));
    // No query texts: they can hold literals (a password in an ALTER ROLE, an app's data).
    let activity = query(
        &db,
        "SELECT pid, datname, usename, application_name, client_addr, backend_type, state, \
         wait_event_type, wait_event, backend_start, xact_start, query_start, state_change \
         FROM pg_stat_activity ORDER BY pid",
    )
    .await?;
    let counts = query(
        &db,
        "SELECT coalesce(state, '(' || backend_type || ')') AS state, count(*) \
         FROM pg_stat_activity GROUP BY 1 ORDER BY 1",
    )
    .await?;
    bundle.add(
        "database/pg_stat_activity.tsv",
        format!(
            "# sessions by state\n{}\n# sessions (query texts left out)\n{}",
            tsv(&counts),
            tsv(&activity)
        ),
    );
    // A Cluster's replicas as its primary sees them (none on a single instance).
    let replication = query(
        &db,
        "SELECT application_name, client_addr, state, sync_state, sent_lsn, write_lsn, flush_lsn, \
         replay_lsn, write_lag, flush_lag, replay_lag FROM pg_stat_replication ORDER BY 1",
    )
    .await?;
    bundle.add("database/pg_stat_replication.tsv", tsv(&replication));
    match history::read(&db).await {
        Ok(history) => {
            let status = MigrationStatus::build(set, &history, target.credentials.database.clone());
            bundle.add("database/migrations.json", to_json(&status));
        }
        Err(e) => bundle.add(
            "database/migrations.missing.txt",
            format!(
                "the migration history could not be read: {}\n",
                crate::migration::engine::describe(&e)
            ),
        ),
    }
    Ok(version)
}

/// The rows of a simple query as text, the column names first.
async fn query(db: &Client, sql: &str) -> Result<Vec<Vec<String>>, Error> {
    let messages = db.simple_query(sql).await.map_err(|e| Error::Database {
        context: format!("running {sql:?}"),
        message: crate::migration::engine::describe(&e),
    })?;
    let mut rows = Vec::new();
    for message in messages {
        match message {
            SimpleQueryMessage::RowDescription(columns) => {
                rows.insert(0, columns.iter().map(|c| c.name().to_string()).collect());
            }
            SimpleQueryMessage::Row(row) => rows.push(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("").to_string())
                    .collect(),
            ),
            _ => {}
        }
    }
    Ok(rows)
}

/// Tab-separated lines; tabs and newlines inside values become spaces.
fn tsv(rows: &[Vec<String>]) -> String {
    rows.iter()
        .map(|row| {
            row.iter()
                .map(|v| v.replace(['\t', '\n', '\r'], " "))
                .collect::<Vec<_>>()
                .join("\t")
                + "\n"
        })
        .collect()
}

/// A Secret as the bundle shows it: its keys, each value replaced, and neither the
/// last-applied annotation (it holds the values) nor managed fields.
fn redact(secret: &Secret) -> Secret {
    let mut s = secret.clone();
    s.metadata.managed_fields = None;
    if let Some(a) = s.metadata.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    if let Some(data) = s.data.as_mut() {
        for value in data.values_mut() {
            *value = k8s_openapi::ByteString(REDACTED_VALUE.as_bytes().to_vec());
        }
    }
    if let Some(data) = s.string_data.as_mut() {
        for value in data.values_mut() {
            *value = REDACTED_VALUE.into();
        }
    }
    s
}

/// Objects as one multi-document YAML file, without managed fields (noise for a reader).
fn add_yaml<'a, T: Serialize + 'a>(
    bundle: &mut Bundle,
    notes: &mut Vec<String>,
    path: &str,
    items: impl Iterator<Item = &'a T>,
) {
    let mut docs = Vec::new();
    for item in items {
        let mut value = match serde_json::to_value(item) {
            Ok(v) => v,
            Err(e) => {
                notes.push(format!("{path}: {e}"));
                continue;
            }
        };
        if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
        }
        match serde_saphyr::to_string(&value) {
            Ok(text) => docs.push(text),
            Err(e) => notes.push(format!("{path}: {e}")),
        }
    }
    if docs.is_empty() {
        bundle.add(path, "# none found\n");
    } else {
        bundle.add(path, docs.join("---\n"));
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default() + "\n"
}

/// `LAST SEEN  TYPE  REASON  OBJECT  COUNT  MESSAGE`, as `kubectl get events` shows them.
fn events_table(events: &[Event]) -> String {
    let rows = events
        .iter()
        .map(|e| {
            let when = e
                .last_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .or(e.event_time.as_ref().map(|t| t.0.to_string()))
                .unwrap_or_default();
            vec![
                when,
                e.type_.clone().unwrap_or_default(),
                e.reason.clone().unwrap_or_default(),
                format!(
                    "{}/{}",
                    e.involved_object
                        .kind
                        .clone()
                        .unwrap_or_default()
                        .to_lowercase(),
                    e.involved_object.name.clone().unwrap_or_default()
                ),
                e.count.unwrap_or(1).to_string(),
                e.message.clone().unwrap_or_default().replace('\n', " "),
            ]
        })
        .collect();
    crate::output::table(
        &["LAST SEEN", "TYPE", "REASON", "OBJECT", "COUNT", "MESSAGE"],
        rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dash_is_stdout() {
        let path = |p: &str| Some(PathBuf::from(p));
        assert_eq!(destination(path("-"), false).unwrap(), path("/dev/stdout"));
        assert!(destination(path("-"), true).is_err());
        assert_eq!(destination(path("./-x"), false).unwrap(), path("./-x"));
        assert_eq!(destination(None, true).unwrap(), None);
    }
    use std::collections::BTreeMap;

    #[test]
    fn secrets_keep_their_keys_not_their_values() {
        let mut secret = Secret::default();
        secret.metadata.name = Some("pg-credentials".into());
        secret.metadata.annotations = Some(BTreeMap::from([(
            "kubectl.kubernetes.io/last-applied-configuration".to_string(),
            "{\"data\":{\"password\":\"cGFzcw==\"}}".to_string(),
        )]));
        secret.data = Some(BTreeMap::from([(
            "password".to_string(),
            k8s_openapi::ByteString(b"very-secret-password".to_vec()),
        )]));
        secret.string_data = Some(BTreeMap::from([(
            "uri".to_string(),
            "postgresql://x".to_string(),
        )]));
        let text = serde_json::to_string(&redact(&secret)).unwrap();
        assert!(
            !text.contains("cGFzcw") && !text.contains("postgresql://x"),
            "{text}"
        );
        assert!(!text.contains("dmVyeS1zZWNyZXQ"), "{text}");
        assert!(
            text.contains("\"password\"") && text.contains("\"uri\":\"REDACTED\""),
            "{text}"
        );
    }

    #[test]
    fn tsv_keeps_one_row_per_line() {
        let rows = vec![
            vec!["name".to_string(), "setting".to_string()],
            vec![
                "search_path".to_string(),
                "\"$user\",\tpublic\n".to_string(),
            ],
        ];
        assert_eq!(
            tsv(&rows),
            "name\tsetting\nsearch_path\t\"$user\", public \n"
        );
    }
}
