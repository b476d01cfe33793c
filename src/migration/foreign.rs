//! Other tools' history tables: finding them beside ours, reading what they applied, and the
//! plan that adopts it (every version the tool applied recorded as applied, with today's
//! files' checksums, compared with the tool's own where it kept them).

use tokio_postgres::Client;

use super::format::{flyway_key, Format};
use super::history::{literal, literal_opt, rows, Tables};
use super::source::{Migration, MigrationSet};
use crate::error::Error;

/// A tool's history table found in the session's current schema, with at least one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub tool: Format,
    /// The table, schema-qualified.
    pub table: String,
}

/// The tools' tables, in the current schema: which exist, with rows. golang-migrate's and
/// dbmate's are both `schema_migrations`; golang-migrate's has a `dirty` column.
pub async fn find(client: &Client) -> Result<Vec<Found>, tokio_postgres::Error> {
    let sql = "SELECT current_schema(), \
        (SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass(format('%I.%I', current_schema(), 'schema_migrations')) \
          AND attname = 'dirty' AND NOT attisdropped), \
        to_regclass(format('%I.%I', current_schema(), 'schema_migrations')) IS NOT NULL, \
        to_regclass(format('%I.%I', current_schema(), 'flyway_schema_history')) IS NOT NULL, \
        to_regclass(format('%I.%I', current_schema(), '_sqlx_migrations')) IS NOT NULL";
    let row = rows(&client.simple_query(sql).await?)
        .into_iter()
        .next()
        .unwrap_or_default();
    let Some(schema) = row.first().cloned().flatten() else {
        return Ok(Vec::new());
    };
    let flag = |i: usize| row.get(i).cloned().flatten().as_deref() == Some("t");
    let mut candidates = Vec::new();
    if flag(2) {
        let dirty = row.get(1).cloned().flatten().as_deref() == Some("1");
        let tool = if dirty {
            Format::GolangMigrate
        } else {
            Format::Dbmate
        };
        candidates.push((tool, "schema_migrations"));
    }
    if flag(3) {
        candidates.push((Format::Flyway, "flyway_schema_history"));
    }
    if flag(4) {
        candidates.push((Format::Sqlx, "_sqlx_migrations"));
    }
    let mut found = Vec::new();
    for (tool, table) in candidates {
        let table = format!("{}.{}", super::history::quote_ident(&schema), table);
        let any = rows(
            &client
                .simple_query(&format!("SELECT EXISTS (SELECT FROM {table})"))
                .await?,
        );
        if any
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .as_deref()
            == Some("t")
        {
            found.push(Found { tool, table });
        }
    }
    Ok(found)
}

/// The refusal of `status` and `up` on a database that another tool migrated and we did not:
/// running the files again would fail on what the tool created (or worse, not fail).
pub fn not_adopted(found: &Found, dir: Option<&std::path::Path>) -> Error {
    let dir = dir.map_or_else(
        || " --dir DIR".into(),
        |d| format!(" --dir {}", d.display()),
    );
    Error::Migration {
        message: format!(
            "the database holds {}'s migration history (table {}) and none of kubectl-pg's: running the files would run again what {} applied",
            found.tool, found.table, found.tool
        ),
        hints: vec![
            format!(
                "adopt it: kubectl pg migrate adopt --from {}{dir} (add --dry-run to see what it records)",
                found.tool
            ),
            format!("adopting leaves {} in place, so {} keeps working on the database", found.table, found.tool),
        ],
    }
}

/// The refusal of [`not_adopted`] when the session's database holds another tool's history and
/// none of ours (`ours`, already read), else `None`.
pub async fn refusal(
    client: &Client,
    ours: &super::history::History,
    dir: Option<&std::path::Path>,
) -> Result<Option<Error>, tokio_postgres::Error> {
    if !ours.applied.is_empty() || !ours.partial.is_empty() {
        return Ok(None);
    }
    Ok(find(client).await?.first().map(|f| not_adopted(f, dir)))
}

/// One row of the tool's history, as far as adoption cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Flyway's `installed_rank`, else the order read.
    pub rank: i64,
    /// The version as the tool wrote it; `None` for a Flyway repeatable.
    pub version: Option<String>,
    /// Flyway's description (a repeatable's identity), sqlx's description.
    pub description: String,
    /// Flyway's `type` (SQL, UNDO_SQL, BASELINE, DELETE, SCHEMA, …); empty for the others.
    pub kind: String,
    pub success: bool,
    /// golang-migrate's `dirty`.
    pub dirty: bool,
    /// Flyway's CRC32 (signed, as it stores it), or sqlx's SHA-384 in hex.
    pub checksum: Option<String>,
    pub execution_ms: Option<i64>,
    pub installed_by: Option<String>,
    /// When the tool applied it (Flyway, sqlx), UTC.
    pub installed_on: Option<String>,
}

/// Reads the tool's table.
pub async fn read(client: &Client, found: &Found) -> Result<Vec<Row>, tokio_postgres::Error> {
    let t = &found.table;
    let sql = match found.tool {
        Format::GolangMigrate => format!(
            "SELECT 0, version::text, '', '', 't', dirty::text, NULL, NULL, NULL, NULL FROM {t}"
        ),
        Format::Dbmate => format!(
            "SELECT row_number() OVER (ORDER BY version), version::text, '', '', 't', 'false', NULL, NULL, NULL, NULL FROM {t}"
        ),
        Format::Flyway => format!(
            "SELECT installed_rank, version, description, type, success::text, 'false', checksum::text, \
             execution_time, installed_by, (installed_on::timestamptz AT TIME ZONE 'UTC')::text FROM {t} ORDER BY installed_rank"
        ),
        Format::Sqlx => format!(
            "SELECT version, version::text, description, '', success::text, 'false', encode(checksum, 'hex'), \
             execution_time / 1000000, NULL, (installed_on AT TIME ZONE 'UTC')::text FROM {t} ORDER BY 1"
        ),
        Format::KubectlPg => return Ok(Vec::new()),
    };
    Ok(rows(&client.simple_query(&sql).await?)
        .into_iter()
        .map(|r| {
            let text = |i: usize| r.get(i).cloned().flatten();
            Row {
                rank: text(0).and_then(|v| v.parse().ok()).unwrap_or_default(),
                version: text(1),
                description: text(2).unwrap_or_default(),
                kind: text(3).unwrap_or_default(),
                success: text(4).as_deref() != Some("false") && text(4).as_deref() != Some("f"),
                dirty: matches!(text(5).as_deref(), Some("true" | "t")),
                checksum: text(6),
                execution_ms: text(7).and_then(|v| v.parse().ok()),
                installed_by: text(8),
                installed_on: text(9),
            }
        })
        .collect())
}

/// One version adoption records.
#[derive(Debug, Clone)]
pub struct Adopted<'a> {
    pub migration: &'a Migration,
    /// The checksum recorded: today's file's, except for a Flyway repeatable changed since it
    /// ran, which keeps a marker so that `up` runs it again, as Flyway would.
    pub checksum: String,
    pub execution_ms: Option<i64>,
    pub installed_by: Option<String>,
    pub installed_on: Option<String>,
}

/// What `adopt` records, and what it found changed.
#[derive(Debug, Clone, Default)]
pub struct Plan<'a> {
    pub adopted: Vec<Adopted<'a>>,
    /// Files whose checksum differs from the one the tool recorded when it ran them.
    pub changed: Vec<String>,
}

/// Decides what adoption records from the tool's rows and the files.
pub fn plan<'a>(set: &'a MigrationSet, tool: Format, rows: &[Row]) -> Result<Plan<'a>, Error> {
    // Per version: the row that applied it (its time, duration, user and checksum).
    let mut applied: std::collections::BTreeMap<i64, Option<Row>> = Default::default();
    let mut repeatables: std::collections::BTreeMap<String, Row> = Default::default();
    let mut unknown = Vec::new();
    let key_of = |version: &str| -> Result<i64, Error> {
        match tool {
            Format::Flyway => flyway_key(version).map_err(Error::migration),
            _ => version.parse::<i64>().map_err(|_| {
                Error::migration(format!(
                    "{tool} recorded version {version:?}, which is not a number"
                ))
            }),
        }
    };
    for row in rows {
        let version = row.version.clone().unwrap_or_default();
        if row.dirty {
            return Err(Error::Migration {
                message: format!(
                    "golang-migrate's schema_migrations says version {version} is dirty: its migration failed part-way, and the schema is between two versions"
                ),
                hints: vec![
                    "finish or undo by hand what the failed migration did".into(),
                    format!("then tell golang-migrate where the schema is: `migrate -path DIR -database URL force {version}` if the migration is now fully applied, or `force` with the version before it if it is undone"),
                    "then run `kubectl pg migrate adopt --from golang-migrate` again".into(),
                ],
            });
        }
        if !row.success {
            let what = match (tool, &row.version) {
                (Format::Flyway, None) => format!("repeatable migration {:?}", row.description),
                _ => format!("version {version}"),
            };
            let fix = match tool {
                Format::Flyway => "undo by hand what it did, then `flyway repair` (it removes the failed row) and, if you want it applied, `flyway migrate`".to_string(),
                _ => format!("undo by hand what it did, then `sqlx migrate run` again (or delete its row: DELETE FROM _sqlx_migrations WHERE version = {version})"),
            };
            return Err(Error::Migration {
                message: format!("{tool}'s history records a failed migration: {what}"),
                hints: vec![
                    fix,
                    format!("then run `kubectl pg migrate adopt --from {tool}` again"),
                ],
            });
        }
        match (tool, row.kind.as_str(), &row.version) {
            (Format::Flyway, "SQL" | "JDBC" | "SCRIPT" | "", None) => {
                repeatables.insert(row.description.clone(), row.clone());
            }
            (Format::Flyway, "UNDO_SQL" | "UNDO_JDBC" | "DELETE", Some(v)) => {
                applied.remove(&key_of(v)?);
            }
            (Format::Flyway, "BASELINE", Some(v)) => {
                let upto = key_of(v)?;
                for m in set
                    .migrations
                    .iter()
                    .filter(|m| !m.repeatable && m.version <= upto)
                {
                    let baseline = Row {
                        checksum: None,
                        execution_ms: None,
                        ..row.clone()
                    };
                    applied.insert(m.version, Some(baseline));
                }
            }
            (Format::Flyway, "SQL" | "JDBC" | "SCRIPT", Some(v)) => {
                applied.insert(key_of(v)?, Some(row.clone()));
            }
            (Format::Flyway, _, _) => {}
            (Format::GolangMigrate, _, Some(v)) => {
                // golang-migrate keeps the latest version only: every file up to it is applied.
                let upto = key_of(v)?;
                if set.get(upto).is_none() && upto != 0 {
                    unknown.push(v.clone());
                }
                for m in set.migrations.iter().filter(|m| m.version <= upto) {
                    applied.insert(m.version, None);
                }
            }
            (_, _, Some(v)) => {
                applied.insert(key_of(v)?, Some(row.clone()));
            }
            (_, _, None) => {}
        }
    }
    let mut result = Plan::default();
    for (key, row) in &applied {
        let Some(m) = set.get(*key) else {
            unknown.push(set.label(*key));
            continue;
        };
        let row = row.as_ref();
        let recorded = row.and_then(|r| r.checksum.as_deref());
        if recorded.is_some_and(|r| !same_checksum(tool, m, r)) {
            result.changed.push(m.id());
        }
        result.adopted.push(Adopted {
            migration: m,
            checksum: m.up.checksum.clone(),
            execution_ms: row.and_then(|r| r.execution_ms),
            installed_by: row.and_then(|r| r.installed_by.clone()),
            installed_on: row.and_then(|r| r.installed_on.clone()),
        });
    }
    if !unknown.is_empty() {
        return Err(Error::Migration {
            message: format!(
                "{tool} applied version(s) that no file has: {}",
                unknown.join(", ")
            ),
            hints: vec!["run with the --dir that holds every migration the tool applied".into()],
        });
    }
    for (description, row) in &repeatables {
        let Some(m) = set
            .migrations
            .iter()
            .find(|m| m.repeatable && flyway_description(&m.name) == *description)
        else {
            continue;
        };
        let unchanged = row
            .checksum
            .as_deref()
            .is_none_or(|c| same_checksum(tool, m, c));
        if !unchanged {
            result.changed.push(m.id());
        }
        result.adopted.push(Adopted {
            migration: m,
            checksum: if unchanged {
                m.up.checksum.clone()
            } else {
                format!("flyway-crc32:{}", row.checksum.clone().unwrap_or_default())
            },
            execution_ms: row.execution_ms,
            installed_by: row.installed_by.clone(),
            installed_on: row.installed_on.clone(),
        });
    }
    Ok(result)
}

/// Flyway's description of a file: its name's underscores as spaces.
pub fn flyway_description(name: &str) -> String {
    name.replace('_', " ")
}

fn same_checksum(tool: Format, m: &Migration, recorded: &str) -> bool {
    match tool {
        Format::Flyway => recorded.parse::<i32>().ok() == Some(flyway_crc32(&m.up.sql)),
        Format::Sqlx => recorded.eq_ignore_ascii_case(&m.up.raw_sha384),
        _ => true,
    }
}

/// Flyway's checksum of a file: the CRC32 of its lines without their line breaks (a BOM
/// dropped), as a signed 32-bit integer.
pub fn flyway_crc32(text: &str) -> i32 {
    let mut crc = !0u32;
    for line in text.trim_start_matches('\u{feff}').lines() {
        for byte in line.trim_end_matches('\r').bytes() {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
    }
    (!crc) as i32
}

/// The table a tool keeps its history in.
pub fn table_name(tool: Format) -> &'static str {
    match tool {
        Format::GolangMigrate | Format::Dbmate => "schema_migrations",
        Format::Flyway => "flyway_schema_history",
        Format::Sqlx => "_sqlx_migrations",
        Format::KubectlPg => super::history::TABLE,
    }
}

/// The statements that record an adoption in our history, for the caller's transaction.
pub fn record_sql(tables: &Tables, tool: Format, plan: &Plan<'_>, via: &str) -> String {
    let mut sql = String::new();
    for a in &plan.adopted {
        let m = a.migration;
        let by = match &a.installed_by {
            Some(user) => literal(&format!("{user} (adopted from {tool}{via})")),
            None => format!(
                "current_user || {}",
                literal(&format!(" (adopted from {tool}{via})"))
            ),
        };
        let at = a.installed_on.as_deref().map_or_else(
            || "now()".into(),
            |t| format!("{}::timestamp AT TIME ZONE 'UTC'", literal(t)),
        );
        sql.push_str(&format!(
            "INSERT INTO {} (version, name, checksum, down_checksum, execution_ms, applied_by, applied_at) VALUES ({}, {}, {}, {}, {}, {by}, {at});\n",
            tables.history,
            m.version,
            literal(&m.name),
            literal(&a.checksum),
            literal_opt(m.down.as_ref().map(|d| d.checksum.as_str())),
            a.execution_ms.map_or_else(|| "NULL".into(), |ms| ms.to_string()),
        ));
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flyway_checksums_are_crc32_of_the_lines() {
        // CRC32 of "select 1;" (the line without its break), as Java's CRC32 gives it.
        assert_eq!(flyway_crc32("select 1;\n"), flyway_crc32("select 1;"));
        assert_eq!(flyway_crc32("select 1;\r\n"), flyway_crc32("select 1;"));
        assert_eq!(flyway_crc32("123456789"), 0xCBF4_3926_u32 as i32);
        assert_ne!(flyway_crc32("a\nb"), flyway_crc32("a b"));
    }

    fn set(format: Format, files: &[(&str, &str)]) -> MigrationSet {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in files {
            std::fs::write(dir.path().join(name), body).unwrap();
        }
        MigrationSet::load_lenient(Some(dir.path()), Some(format)).unwrap()
    }

    fn row(version: Option<&str>, kind: &str) -> Row {
        Row {
            rank: 0,
            version: version.map(str::to_string),
            description: String::new(),
            kind: kind.into(),
            success: true,
            dirty: false,
            checksum: None,
            execution_ms: None,
            installed_by: None,
            installed_on: None,
        }
    }

    #[test]
    fn golang_migrate_applied_everything_up_to_its_version_unless_dirty() {
        let s = set(
            Format::GolangMigrate,
            &[
                ("1_a.up.sql", "select 1;"),
                ("2_b.up.sql", "select 2;"),
                ("3_c.up.sql", "select 3;"),
            ],
        );
        let p = plan(&s, Format::GolangMigrate, &[row(Some("2"), "")]).unwrap();
        let versions: Vec<i64> = p.adopted.iter().map(|a| a.migration.version).collect();
        assert_eq!(versions, [1, 2]);
        let mut dirty = row(Some("2"), "");
        dirty.dirty = true;
        let err = plan(&s, Format::GolangMigrate, &[dirty]).unwrap_err();
        assert!(err.to_string().contains("dirty"), "{err}");
        assert!(err.hints().iter().any(|h| h.contains("force 2")));
        assert!(plan(&s, Format::GolangMigrate, &[row(Some("9"), "")]).is_err());
    }

    #[test]
    fn flyway_rows_are_replayed_in_order() {
        let s = set(
            Format::Flyway,
            &[
                ("V1__a.sql", "select 1;"),
                ("V1.1__b.sql", "select 2;"),
                ("V2__c.sql", "select 3;"),
                ("R__views.sql", "select 4;"),
            ],
        );
        let crc = |sql: &str| Some(flyway_crc32(sql).to_string());
        let mut r1 = row(Some("1"), "SQL");
        r1.checksum = crc("select 1;");
        let mut r2 = row(Some("1.1"), "SQL");
        r2.checksum = crc("select 2; -- before");
        let mut rep = row(None, "SQL");
        rep.description = "views".into();
        rep.checksum = crc("select 4; -- old");
        let p = plan(&s, Format::Flyway, &[r1.clone(), r2.clone(), rep]).unwrap();
        assert_eq!(p.changed, ["1.1_b", "R__views"]);
        assert_eq!(p.adopted.len(), 3);
        assert!(p.adopted[2].checksum.starts_with("flyway-crc32:"));
        // An undo takes its version back; a failed row is refused.
        let undo = row(Some("1.1"), "UNDO_SQL");
        let p = plan(&s, Format::Flyway, &[r1.clone(), r2.clone(), undo]).unwrap();
        assert_eq!(p.adopted.len(), 1);
        let mut failed = row(Some("2"), "SQL");
        failed.success = false;
        let err = plan(&s, Format::Flyway, &[r1, failed]).unwrap_err();
        assert!(err.hints().iter().any(|h| h.contains("flyway repair")));
        // A baseline row stands for every version up to it.
        let p = plan(&s, Format::Flyway, &[row(Some("1.1"), "BASELINE")]).unwrap();
        assert_eq!(p.adopted.len(), 2);
    }

    fn sqlx_checksum(text: &str) -> String {
        use sha2::{Digest, Sha384};
        hex::encode(Sha384::digest(text.as_bytes()))
    }

    #[test]
    fn sqlx_checksums_are_compared() {
        let s = set(Format::Sqlx, &[("1_a.sql", "select 1;")]);
        let mut r = row(Some("1"), "");
        r.checksum = Some(sqlx_checksum("select 1;"));
        assert!(plan(&s, Format::Sqlx, &[r.clone()])
            .unwrap()
            .changed
            .is_empty());
        r.checksum = Some(sqlx_checksum("select 2;"));
        assert_eq!(plan(&s, Format::Sqlx, &[r]).unwrap().changed, ["1_a"]);
        // sqlx hashes the file's bytes as they are: a CRLF file is compared as such.
        let crlf = set(Format::Sqlx, &[("1_a.sql", "select 1;\r\n")]);
        let mut r = row(Some("1"), "");
        r.checksum = Some(sqlx_checksum("select 1;\r\n"));
        assert!(plan(&crlf, Format::Sqlx, &[r]).unwrap().changed.is_empty());
    }
}
