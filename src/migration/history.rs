//! The history table `kubectl_pg_migrations` (the source of truth for what is applied), the
//! progress table of statement-by-statement migrations, and the advisory lock that serialises
//! runners. Everything goes through the simple query protocol: one round trip per batch.

use std::collections::BTreeMap;

use tokio_postgres::{Client, SimpleQueryMessage};

/// The history table, created in the session's current schema.
pub const TABLE: &str = "kubectl_pg_migrations";
/// Per-statement progress of no-transaction migrations that have not finished.
pub const PROGRESS_TABLE: &str = "kubectl_pg_migration_progress";

/// The advisory lock key: a hash of the history table's qualified name, so two projects
/// with their histories in different schemas do not block each other.
pub const LOCK_KEY_SQL: &str =
    "('x' || left(md5(current_schema() || '.kubectl_pg_migrations'), 16))::bit(64)::bigint";

pub const CREATE_TABLES_SQL: &str = "CREATE TABLE IF NOT EXISTS kubectl_pg_migrations (
    version       bigint PRIMARY KEY,
    name          text NOT NULL,
    checksum      text NOT NULL,
    down_checksum text,
    applied_at    timestamptz NOT NULL DEFAULT now(),
    execution_ms  integer,
    applied_by    text NOT NULL DEFAULT current_user
);
CREATE TABLE IF NOT EXISTS kubectl_pg_migration_progress (
    version         bigint NOT NULL,
    direction       text NOT NULL CHECK (direction IN ('up', 'down')),
    checksum        text NOT NULL,
    statements_done integer NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (version, direction)
)";

const SELECT_APPLIED_SQL: &str = "SELECT version, name, checksum, down_checksum, \
    to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), execution_ms, applied_by \
    FROM kubectl_pg_migrations ORDER BY version";
const SELECT_PROGRESS_SQL: &str =
    "SELECT version, direction, checksum, statements_done FROM kubectl_pg_migration_progress ORDER BY version";

/// One applied migration as recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Applied {
    pub version: i64,
    pub name: String,
    pub checksum: String,
    pub down_checksum: Option<String>,
    pub applied_at: String,
    /// `None` for versions recorded by `baseline`.
    pub execution_ms: Option<i64>,
    pub applied_by: String,
}

/// A no-transaction migration stopped part-way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partial {
    pub version: i64,
    pub up: bool,
    pub checksum: String,
    pub statements_done: usize,
}

/// The recorded state of a database.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub applied: BTreeMap<i64, Applied>,
    pub partial: Vec<Partial>,
}

impl History {
    pub fn partial(&self, version: i64, up: bool) -> Option<&Partial> {
        self.partial
            .iter()
            .find(|p| p.version == version && p.up == up)
    }

    pub fn max_applied(&self) -> Option<i64> {
        self.applied.keys().next_back().copied()
    }
}

/// Takes the advisory lock (waiting at most `lock_timeout_ms`; 0 waits forever), creates the
/// tables when absent and reads the history, all in one round trip.
pub async fn lock_and_read(
    client: &Client,
    lock_timeout_ms: u128,
) -> Result<History, tokio_postgres::Error> {
    let batch = format!(
        "SET lock_timeout = {lock_timeout_ms}; SELECT pg_advisory_lock({LOCK_KEY_SQL}); \
         {CREATE_TABLES_SQL}; {SELECT_APPLIED_SQL}; {SELECT_PROGRESS_SQL}"
    );
    let messages = client.simple_query(&batch).await?;
    Ok(parse(&messages))
}

/// Reads the history without locking or creating anything; an absent table is an empty history.
pub async fn read(client: &Client) -> Result<History, tokio_postgres::Error> {
    let exists = client
        .simple_query(&format!("SELECT to_regclass('{TABLE}') IS NOT NULL, to_regclass('{PROGRESS_TABLE}') IS NOT NULL"))
        .await?;
    let flags = first_row(&exists);
    let (history, progress) = (flag(&flags, 0), flag(&flags, 1));
    if !history {
        return Ok(History::default());
    }
    let batch = if progress {
        format!("{SELECT_APPLIED_SQL}; {SELECT_PROGRESS_SQL}")
    } else {
        SELECT_APPLIED_SQL.to_string()
    };
    Ok(parse(&client.simple_query(&batch).await?))
}

fn first_row(messages: &[SimpleQueryMessage]) -> Vec<Option<String>> {
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_default()
}

fn flag(row: &[Option<String>], i: usize) -> bool {
    row.get(i).and_then(|v| v.as_deref()) == Some("t")
}

/// Rows of 7 columns are history rows, rows of 4 are progress rows.
fn parse(messages: &[SimpleQueryMessage]) -> History {
    let mut history = History::default();
    for message in messages {
        let SimpleQueryMessage::Row(row) = message else {
            continue;
        };
        let text = |i: usize| row.get(i).unwrap_or_default().to_string();
        let int = |i: usize| row.get(i).and_then(|v| v.parse::<i64>().ok());
        match row.len() {
            7 => {
                let applied = Applied {
                    version: int(0).unwrap_or_default(),
                    name: text(1),
                    checksum: text(2),
                    down_checksum: row.get(3).map(str::to_string),
                    applied_at: text(4),
                    execution_ms: int(5),
                    applied_by: text(6),
                };
                history.applied.insert(applied.version, applied);
            }
            4 => history.partial.push(Partial {
                version: int(0).unwrap_or_default(),
                up: row.get(1) == Some("up"),
                checksum: text(2),
                statements_done: int(3).unwrap_or_default().max(0) as usize,
            }),
            _ => {}
        }
    }
    history
}

/// Who holds the migration lock, when someone does.
pub async fn lock_holder(client: &Client) -> Option<crate::error::LockHolder> {
    let sql = format!(
        "SELECT a.pid, coalesce(a.application_name, ''), host(a.client_addr), \
         to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND l.classid::bigint = (({LOCK_KEY_SQL}) >> 32) & 4294967295 \
         AND l.objid::bigint = ({LOCK_KEY_SQL}) & 4294967295 LIMIT 1"
    );
    let messages = client.simple_query(&sql).await.ok()?;
    let row = first_row(&messages);
    let pid = row.first()?.as_deref()?.parse().ok()?;
    Some(crate::error::LockHolder {
        pid,
        application_name: row.get(1).cloned().flatten().unwrap_or_default(),
        client_addr: row.get(2).cloned().flatten(),
        since: row.get(3).cloned().flatten().unwrap_or_default(),
    })
}

/// A SQL string literal; `standard_conforming_strings` is on in every supported server.
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A literal or `NULL`.
pub fn literal_opt(value: Option<&str>) -> String {
    value.map(literal).unwrap_or_else(|| "NULL".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_quoted() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal_opt(None), "NULL");
    }
}
