//! The history table `kubectl_pg_migrations` (the source of truth for what is applied), the
//! progress table of statement-by-statement migrations, and the advisory lock that serialises
//! runners. Everything goes through the simple query protocol: one round trip per batch.
//!
//! Every statement names the tables schema-qualified ([`Tables`]): a migration may empty or
//! change `search_path` (pg_dump's files do), and the history must still be found.

use std::collections::BTreeMap;

use tokio_postgres::{Client, SimpleQueryMessage};

/// The history table, created in the session's current schema.
pub const TABLE: &str = "kubectl_pg_migrations";
/// Per-statement progress of no-transaction migrations that have not finished.
pub const PROGRESS_TABLE: &str = "kubectl_pg_migration_progress";

/// The advisory lock key of the current schema's history: a hash of the history table's
/// qualified name, so two projects with their histories in different schemas do not block
/// each other. [`Tables::lock_key_sql`] computes the same key for a resolved schema.
pub const LOCK_KEY_SQL: &str =
    "('x' || left(md5(current_schema() || '.kubectl_pg_migrations'), 16))::bit(64)::bigint";

/// The history and progress tables of one schema, as SQL names.
///
/// The schema is resolved once (`current_schema()` of a fresh session, before any migration
/// can change `search_path`) and kept: a reconnect uses the same tables even if the new
/// session's current schema differs (a migration created the `"$user"` schema, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    /// The schema's name, unquoted.
    pub schema: String,
    /// `"schema".kubectl_pg_migrations`
    pub history: String,
    /// `"schema".kubectl_pg_migration_progress`
    pub progress: String,
}

impl Tables {
    /// The tables of `schema` (its name as stored, unquoted).
    pub fn in_schema(schema: &str) -> Self {
        let quoted = quote_ident(schema);
        Self {
            schema: schema.to_string(),
            history: format!("{quoted}.{TABLE}"),
            progress: format!("{quoted}.{PROGRESS_TABLE}"),
        }
    }

    /// The advisory lock key, equal to [`LOCK_KEY_SQL`] in a session whose current schema is
    /// this one (so runners of older versions and of this one exclude each other).
    pub fn lock_key_sql(&self) -> String {
        format!(
            "('x' || left(md5({} || '.{TABLE}'), 16))::bit(64)::bigint",
            literal(&self.schema)
        )
    }

    /// Creates both tables when absent and adds the progress table's newer column to a table
    /// made by an older version (only when it is missing, so a runner that does not own the
    /// table is not refused; without the column a partial run is compared as a whole file).
    /// Every run also takes the history away from app users: the owner's default privileges
    /// grant them a table it creates, and this batch is one implicit transaction, so no app
    /// session ever sees the new tables granted (and a grant made by hand since is undone).
    pub fn create_sql(&self) -> String {
        let add_column = format!(
            "BEGIN IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = {regclass}::regclass \
             AND attname = 'statement_checksums' AND NOT attisdropped) THEN \
             ALTER TABLE {progress} ADD COLUMN IF NOT EXISTS statement_checksums text[]; END IF; \
             EXCEPTION WHEN insufficient_privilege THEN NULL; END",
            regclass = literal(&self.progress),
            progress = self.progress,
        );
        format!(
            "CREATE TABLE IF NOT EXISTS {history} (
    version       bigint PRIMARY KEY,
    name          text NOT NULL,
    checksum      text NOT NULL,
    down_checksum text,
    applied_at    timestamptz NOT NULL DEFAULT now(),
    execution_ms  integer,
    applied_by    text NOT NULL DEFAULT current_user
);
CREATE TABLE IF NOT EXISTS {progress} (
    version         bigint NOT NULL,
    direction       text NOT NULL CHECK (direction IN ('up', 'down')),
    checksum        text NOT NULL,
    statements_done integer NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    statement_checksums text[],
    PRIMARY KEY (version, direction)
);
DO {add_column};
{protect}",
            history = self.history,
            progress = self.progress,
            add_column = literal(&add_column),
            protect = crate::database::roles::protect_history_sql(),
        )
    }

    /// Whether the progress table has the `statement_checksums` column.
    fn has_statement_checksums_sql(&self) -> String {
        format!(
            "SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = {}::regclass \
             AND attname = 'statement_checksums' AND NOT attisdropped) AS {HAS_CHECKSUMS_COLUMN}",
            literal(&self.progress)
        )
    }

    fn select_applied_sql(&self) -> String {
        format!(
            "SELECT version, name, checksum, down_checksum, \
             to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), execution_ms, applied_by \
             FROM {} ORDER BY version",
            self.history
        )
    }

    /// The progress rows; `statement_checksums` is read through `to_jsonb` so that a table
    /// made by an older version (without the column) reads as unknown (NULL), as a NULL does.
    fn select_progress_sql(&self) -> String {
        format!(
            "SELECT version, direction, checksum, statements_done, \
             CASE jsonb_typeof(to_jsonb(p) -> 'statement_checksums') WHEN 'array' THEN \
             (SELECT coalesce(string_agg(c, ',' ORDER BY n), '') \
              FROM jsonb_array_elements_text(to_jsonb(p) -> 'statement_checksums') WITH ORDINALITY AS e(c, n)) END \
             FROM {} p ORDER BY version",
            self.progress
        )
    }
}

/// An SQL identifier, always double-quoted (quote_ident's rules: `"` doubled), so that any
/// schema name, mixed case included, names itself.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The current schema of the session, where the history lives; `None` when `search_path`
/// names no existing schema.
pub async fn current_schema(client: &Client) -> Result<Option<String>, tokio_postgres::Error> {
    let messages = client.simple_query("SELECT current_schema()").await?;
    Ok(first_row(&messages).into_iter().next().flatten())
}

/// The error for a session without a current schema.
pub fn no_schema() -> crate::error::Error {
    crate::error::Error::Migration {
        message: "the session has no current schema to keep the migration history in: search_path names no existing schema".into(),
        hints: vec!["create the schema, or set the role's search_path (ALTER ROLE … SET search_path TO public)".into()],
    }
}

/// The name of the column that says whether the progress table has `statement_checksums`.
const HAS_CHECKSUMS_COLUMN: &str = "has_statement_checksums";

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
    /// The checksum of the whole file as it was when the last statement was applied.
    pub checksum: String,
    pub statements_done: usize,
    /// The checksum of each applied statement, in order: what a resume compares, so that a
    /// fix of the failed statement is accepted and a change of an applied one is not.
    /// `None` when unknown (recorded by an older version): then the whole file is compared.
    pub statement_checksums: Option<Vec<String>>,
}

/// The recorded state of a database.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub applied: BTreeMap<i64, Applied>,
    pub partial: Vec<Partial>,
    /// Whether the progress table can record per-statement checksums (an older table whose
    /// owner is another role may lack the column).
    pub statement_checksums_column: bool,
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
    tables: &Tables,
    lock_timeout_ms: u128,
) -> Result<History, tokio_postgres::Error> {
    let batch = format!(
        "SET lock_timeout = {lock_timeout_ms}; SELECT pg_advisory_lock({key}); \
         {create}; {flag}; {applied}; {progress}",
        key = tables.lock_key_sql(),
        create = tables.create_sql(),
        flag = tables.has_statement_checksums_sql(),
        applied = tables.select_applied_sql(),
        progress = tables.select_progress_sql(),
    );
    let messages = client.simple_query(&batch).await?;
    Ok(parse(&messages))
}

/// The query that finds the history without locking or creating anything: the session's
/// current schema and whether it holds each of the two tables. A caller may send it along with
/// its own statements, in one round trip, and read its row with [`Location::of`].
pub fn locate_sql() -> String {
    format!(
        "SELECT current_schema(), \
         to_regclass(format('%I.%I', current_schema(), '{TABLE}')) IS NOT NULL, \
         to_regclass(format('%I.%I', current_schema(), '{PROGRESS_TABLE}')) IS NOT NULL"
    )
}

/// Where [`locate_sql`] found the history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    /// The current schema, when it holds the history table.
    schema: Option<String>,
    progress: bool,
}

impl Location {
    /// Reads the row of [`locate_sql`].
    pub fn of(row: &[Option<String>]) -> Self {
        let (history, progress) = (flag(row, 1), flag(row, 2));
        Self {
            schema: row.first().cloned().flatten().filter(|_| history),
            progress,
        }
    }
}

/// Reads the history of the session's current schema without locking or creating anything;
/// an absent table (or no current schema) is an empty history.
pub async fn read(client: &Client) -> Result<History, tokio_postgres::Error> {
    let located = client.simple_query(&locate_sql()).await?;
    read_at(client, &Location::of(&first_row(&located))).await
}

/// Reads the history where [`locate_sql`] found it: without a table, nothing more is asked.
pub async fn read_at(
    client: &Client,
    location: &Location,
) -> Result<History, tokio_postgres::Error> {
    let Some(schema) = &location.schema else {
        return Ok(History::default());
    };
    let tables = Tables::in_schema(schema);
    let batch = if location.progress {
        format!(
            "{}; {}; {}",
            tables.has_statement_checksums_sql(),
            tables.select_applied_sql(),
            tables.select_progress_sql()
        )
    } else {
        tables.select_applied_sql()
    };
    Ok(parse(&client.simple_query(&batch).await?))
}

/// The rows of a simple query's answer, each as its columns' text, statement after statement.
pub fn rows(messages: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn first_row(messages: &[SimpleQueryMessage]) -> Vec<Option<String>> {
    rows(messages).into_iter().next().unwrap_or_default()
}

fn flag(row: &[Option<String>], i: usize) -> bool {
    row.get(i).and_then(|v| v.as_deref()) == Some("t")
}

/// Rows of 7 columns are history rows, rows of 5 are progress rows, and the row whose column
/// is named [`HAS_CHECKSUMS_COLUMN`] says whether per-statement checksums can be recorded.
fn parse(messages: &[SimpleQueryMessage]) -> History {
    let mut history = History::default();
    for message in messages {
        let SimpleQueryMessage::Row(row) = message else {
            continue;
        };
        let text = |i: usize| row.get(i).unwrap_or_default().to_string();
        let int = |i: usize| row.get(i).and_then(|v| v.parse::<i64>().ok());
        match row.len() {
            1 if row.columns().first().map(|c| c.name()) == Some(HAS_CHECKSUMS_COLUMN) => {
                history.statement_checksums_column = row.get(0) == Some("t");
            }
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
            5 => history.partial.push(Partial {
                version: int(0).unwrap_or_default(),
                up: row.get(1) == Some("up"),
                checksum: text(2),
                statements_done: int(3).unwrap_or_default().max(0) as usize,
                statement_checksums: row.get(4).map(|list| {
                    list.split(',')
                        .filter(|c| !c.is_empty())
                        .map(str::to_string)
                        .collect()
                }),
            }),
            _ => {}
        }
    }
    history
}

/// Who holds the migration lock of `tables`, when someone does.
pub async fn lock_holder(client: &Client, tables: &Tables) -> Option<crate::error::LockHolder> {
    let key = tables.lock_key_sql();
    let sql = format!(
        "SELECT a.pid, coalesce(a.application_name, ''), host(a.client_addr), \
         to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND l.classid::bigint = (({key}) >> 32) & 4294967295 \
         AND l.objid::bigint = ({key}) & 4294967295 LIMIT 1"
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
    fn the_history_is_where_its_table_is() {
        let row = |schema: Option<&str>, history: &str, progress: &str| {
            vec![
                schema.map(str::to_string),
                Some(history.to_string()),
                Some(progress.to_string()),
            ]
        };
        let found = Location::of(&row(Some("app"), "t", "f"));
        assert_eq!(found.schema.as_deref(), Some("app"));
        assert!(!found.progress);
        // No table, or no current schema: nothing to read.
        assert_eq!(Location::of(&row(Some("app"), "f", "t")).schema, None);
        assert_eq!(Location::of(&row(None, "t", "t")).schema, None);
        assert_eq!(Location::of(&[]), Location::default());
    }

    #[test]
    fn literals_are_quoted() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal_opt(None), "NULL");
    }

    #[test]
    fn tables_are_schema_qualified_with_quote_ident_rules() {
        let public = Tables::in_schema("public");
        assert_eq!(public.history, "\"public\".kubectl_pg_migrations");
        assert_eq!(public.progress, "\"public\".kubectl_pg_migration_progress");
        let odd = Tables::in_schema("My \"App\"");
        assert_eq!(odd.history, "\"My \"\"App\"\"\".kubectl_pg_migrations");
        // The lock key hashes the unquoted name, as LOCK_KEY_SQL does with current_schema().
        assert!(odd
            .lock_key_sql()
            .contains("md5('My \"App\"' || '.kubectl_pg_migrations')"));
    }
}
