//! What a major upgrade must carry over, read from a server through psql in its pod: each
//! table's exact row count in every database, the migration history (versions and
//! checksums), the extensions, and the roles. Two snapshots compare as equal or name each
//! difference, so an upgrade is verified, not assumed.

use std::collections::BTreeMap;

use crate::cluster::release::Target;
use crate::cluster::{exec, Cluster};
use crate::error::Error;
use crate::manifests::render::CONTAINER;

/// `db/<name>/table/<schema.table>` → count, `db/<name>/migration/<version>` → checksum,
/// `db/<name>/extension/<name>`, `role/<name>` → attributes.
pub type Snapshot = BTreeMap<String, String>;

const DATABASES: &str =
    "select datname from pg_database where datallowconn and not datistemplate order by 1;\n";

const ROLES: &str = "select 'role|' || rolname || '|' || rolsuper || ',' || rolcanlogin from pg_roles where rolname !~ '^pg_' order by 1;\n";

const PER_DATABASE: &str = r#"select 'table|' || n.nspname || '.' || c.relname || '|' ||
  (xpath('/row/c/text()', query_to_xml(format('select count(*) as c from %I.%I', n.nspname, c.relname), false, true, '')))[1]::text
  from pg_class c join pg_namespace n on n.oid = c.relnamespace
  where c.relkind in ('r', 'p') and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname !~ '^pg_toast'
  order by 1;
select 'extension|' || extname || '|' from pg_extension order by 1;
select to_regclass('kubectl_pg_migrations') is not null as has_history \gset
\if :has_history
select 'migration|' || version || '|' || checksum from kubectl_pg_migrations order by version;
\endif
"#;

/// The databases a client can connect to (not the templates).
pub async fn databases(cluster: &Cluster, target: &Target) -> Result<Vec<String>, Error> {
    let out = psql(cluster, target, "postgres", DATABASES).await?;
    Ok(out
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect())
}

/// Reads the snapshot of every database and the roles.
pub async fn take(cluster: &Cluster, target: &Target) -> Result<Snapshot, Error> {
    let mut snapshot = Snapshot::new();
    for line in psql(cluster, target, "postgres", ROLES).await?.lines() {
        if let Some((key, value)) = entry(line) {
            snapshot.insert(key, value);
        }
    }
    for db in databases(cluster, target).await? {
        snapshot.insert(format!("db/{db}"), String::new());
        for line in psql(cluster, target, &db, PER_DATABASE).await?.lines() {
            if let Some((key, value)) = entry(line) {
                snapshot.insert(format!("db/{db}/{key}"), value);
            }
        }
    }
    Ok(snapshot)
}

/// `kind|name|value` → (`kind/name`, value).
fn entry(line: &str) -> Option<(String, String)> {
    let mut parts = line.splitn(3, '|');
    let (kind, name, value) = (parts.next()?, parts.next()?, parts.next()?);
    Some((format!("{kind}/{name}"), value.to_string()))
}

/// Every difference between `before` and `after`, one line each; empty when they agree.
pub fn differences(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for (key, old) in before {
        match after.get(key) {
            None => out.push(format!("{key}: missing after the copy")),
            Some(new) if new != old => out.push(format!("{key}: {old} before, {new} after")),
            Some(_) => {}
        }
    }
    for key in after.keys().filter(|k| !before.contains_key(*k)) {
        out.push(format!("{key}: new after the copy"));
    }
    out
}

/// How many tables a snapshot counted.
pub fn tables(snapshot: &Snapshot) -> usize {
    snapshot.keys().filter(|k| k.contains("/table/")).count()
}

/// Runs `sql` with psql in the pod, as the release's user over the local socket.
pub async fn psql(
    cluster: &Cluster,
    target: &Target,
    db: &str,
    sql: &str,
) -> Result<String, Error> {
    let user = target.credentials.username.as_str();
    // A conninfo string: psql takes a database named `a=b` given bare as one.
    let dbname = super::conninfo(db, "kubectl-pg");
    let out = exec::run(
        cluster,
        &target.namespace,
        &target.pod,
        CONTAINER,
        &[
            "psql",
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            user,
            "-d",
            &dbname,
            "-f",
            "-",
        ],
        sql,
    )
    .await?;
    if !out.success {
        return Err(Error::Tool {
            tool: "psql".into(),
            message: format!("in database {db}: {}", out.reason()),
            hints: Vec::new(),
        });
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_each_change() {
        let before: Snapshot = [
            ("db/app/table/public.users", "120"),
            ("db/app/migration/6", "abc"),
            ("role/postgres", "true,true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert!(differences(&before, &before).is_empty());
        let mut after = before.clone();
        after.insert("db/app/table/public.users".into(), "119".into());
        after.remove("db/app/migration/6");
        after.insert("role/extra".into(), "false,true".into());
        let diff = differences(&before, &after);
        assert_eq!(
            diff,
            vec![
                "db/app/migration/6: missing after the copy",
                "db/app/table/public.users: 120 before, 119 after",
                "role/extra: new after the copy",
            ]
        );
        assert_eq!(tables(&before), 1);
        assert_eq!(
            entry("table|public.users|3"),
            Some(("table/public.users".into(), "3".into()))
        );
    }
}
