//! Migrations written for golang-migrate, dbmate, Flyway and sqlx, and databases those tools
//! migrated, against the local PostgreSQL of `pg.rs`. The tools themselves (golang-migrate
//! v4.20.1, dbmate 2.36.0, Flyway 13.12.2's engine) come from `tests/k8s/migration-tools.sh`,
//! cached outside the work tree; a tool that is not there fails its test in CI (`CI=true`)
//! and prints a SKIPPED line elsewhere. sqlx's CLI is not installed (a cargo build of several
//! minutes): its `_sqlx_migrations` is written as sqlx 0.8 writes it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::pg::{TestDb, PASSWORD};
use crate::{expect_code, kpg, OutputExt};

/// The tools' paths, from `migration-tools.sh` (run once per test process).
fn tools() -> &'static HashMap<String, String> {
    static TOOLS: OnceLock<HashMap<String, String>> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/k8s/migration-tools.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    })
}

/// The tool's path; without it, fails in CI and says SKIPPED elsewhere.
fn tool(key: &str, test: &str) -> Option<PathBuf> {
    if let Some(path) = tools().get(key) {
        return Some(PathBuf::from(path));
    }
    let why = format!("{key} did not install (tests/k8s/migration-tools.sh says why)");
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "{test}: {why}"
    );
    eprintln!("\n*** SKIPPED {test}: {why} ***\n");
    None
}

fn migrate(db: &TestDb, dir: &Path, args: &[&str]) -> Output {
    let dsn = db.dsn();
    let dir = dir.display().to_string();
    let mut all = vec!["migrate"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--dir", &dir, "--dsn", &dsn]);
    kpg(&all)
}

fn write(dir: &Path, name: &str, body: &str) {
    std::fs::write(dir.join(name), body).unwrap();
}

fn run(command: &mut Command) -> Output {
    let out = command.output().expect("the tool runs");
    assert!(out.status.success(), "{command:?}\n{}", out.describe());
    out
}

/// Versions in our history, with their state as `migrate status -o json` shows them.
fn plugin_status(db: &TestDb, dir: &Path) -> Vec<(String, String)> {
    let out = migrate(db, dir, &["status", "-o", "json"]);
    expect_code(&out, 0);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["version"].as_str().unwrap().to_string(),
                m["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn applied_by_plugin(db: &TestDb, dir: &Path) -> Vec<String> {
    plugin_status(db, dir)
        .into_iter()
        .filter(|(_, state)| state != "pending")
        .map(|(v, _)| v)
        .collect()
}

/// `status` and `up` on a database another tool migrated, before adoption: exit 7 naming the
/// tool, its table and the command; nothing is created.
fn assert_refused_until_adopted(db: &TestDb, dir: &Path, tool: &str, table: &str) {
    for action in ["status", "up"] {
        let out = migrate(db, dir, &[action]);
        expect_code(&out, 7);
        let err = out.stderr_text();
        assert!(
            err.contains(&format!("holds {tool}'s migration history"))
                && err.contains(table)
                && err.contains(&format!("kubectl pg migrate adopt --from {tool} --dir")),
            "{}",
            out.describe()
        );
    }
    assert_eq!(
        db.scalar("SELECT to_regclass('kubectl_pg_migrations') IS NULL")
            .as_deref(),
        Some("t")
    );
}

/// Adopts (a dry run first, which records nothing), and checks the tool's table is kept.
fn adopt(db: &TestDb, dir: &Path, tool: &str, table: &str) -> Output {
    let dry = migrate(db, dir, &["adopt", "--from", tool, "--dry-run"]);
    expect_code(&dry, 0);
    assert!(
        dry.stdout_text().contains("Would record"),
        "{}",
        dry.describe()
    );
    assert_eq!(
        db.scalar("SELECT to_regclass('kubectl_pg_migrations') IS NULL")
            .as_deref(),
        Some("t"),
        "a dry run creates nothing"
    );
    let out = migrate(db, dir, &["adopt", "--from", tool]);
    expect_code(&out, 0);
    assert_eq!(
        db.scalar(&format!("SELECT to_regclass('{table}') IS NOT NULL"))
            .as_deref(),
        Some("t"),
        "the tool's table stays"
    );
    // A second adoption finds our history and refuses.
    expect_code(&migrate(db, dir, &["adopt", "--from", tool]), 7);
    out
}

/// The next file applies once, and only it.
fn next_applies_once(db: &TestDb, dir: &Path, id: &str) {
    let up = migrate(db, dir, &["up"]);
    expect_code(&up, 0);
    assert!(
        up.stdout_text().contains(&format!("applied {id}"))
            && up.stdout_text().contains("1 migration(s) applied"),
        "{}",
        up.describe()
    );
    let again = migrate(db, dir, &["up"]);
    expect_code(&again, 0);
    assert!(
        again.stdout_text().contains("Nothing to do"),
        "{}",
        again.describe()
    );
}

fn golang_migrate_files(dir: &Path) {
    // As golang-migrate's own documentation writes them: a transaction of its own, a
    // concurrent index, an up without a down.
    write(
        dir,
        "000001_create_users_table.up.sql",
        "BEGIN;\n\nCREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');\nCREATE TABLE IF NOT EXISTS users(\n   user_id serial PRIMARY KEY,\n   username VARCHAR (50) UNIQUE NOT NULL,\n   email VARCHAR (300) UNIQUE NOT NULL,\n   mood mood\n);\n\nCOMMIT;\n",
    );
    write(
        dir,
        "000001_create_users_table.down.sql",
        "BEGIN;\n\nDROP TABLE IF EXISTS users;\nDROP TYPE mood;\n\nCOMMIT;\n",
    );
    write(
        dir,
        "000002_users_email_index.up.sql",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_idx ON users (email);\n",
    );
    write(
        dir,
        "000002_users_email_index.down.sql",
        "DROP INDEX CONCURRENTLY IF EXISTS users_email_idx;\n",
    );
    write(
        dir,
        "000003_add_nickname.up.sql",
        "ALTER TABLE users ADD COLUMN nickname text;\n",
    );
}

#[test]
fn golang_migrate_files_apply_unchanged_on_a_fresh_database() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    golang_migrate_files(dir.path());
    let plan = migrate(&db, dir.path(), &["up", "--dry-run"]);
    expect_code(&plan, 0);
    let text = plan.stdout_text();
    assert!(
        text.contains("000001_create_users_table.up.sql wraps itself in BEGIN … COMMIT")
            && text.contains("000002_users_email_index.up.sql runs outside a transaction, statement by statement, because")
            && text.contains("line 1: CREATE INDEX CONCURRENTLY: CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_idx"),
        "{}",
        plan.describe()
    );
    let doc = migrate(&db, dir.path(), &["up", "--dry-run", "-o", "json"]);
    expect_code(&doc, 0);
    let doc: serde_json::Value = serde_json::from_slice(&doc.stdout).unwrap();
    assert_eq!(doc["steps"][0]["transaction"], true, "{doc}");
    assert_eq!(doc["steps"][1]["transaction"], false, "{doc}");
    assert_eq!(
        doc["steps"][1]["no_transaction_reason"], "line 1: CREATE INDEX CONCURRENTLY",
        "{doc}"
    );
    let up = migrate(&db, dir.path(), &["up"]);
    expect_code(&up, 0);
    assert!(
        up.stdout_text().contains("3 migration(s) applied"),
        "{}",
        up.describe()
    );
    assert_eq!(
        db.scalar("SELECT indisvalid FROM pg_index WHERE indexrelid = 'users_email_idx'::regclass")
            .as_deref(),
        Some("t")
    );
    assert_eq!(
        plugin_status(&db, dir.path()),
        [
            ("000001".to_string(), "applied".to_string()),
            ("000002".into(), "applied".into()),
            ("000003".into(), "applied".into())
        ]
    );
    // down stops where there is no down file, naming it, before reverting anything.
    let down = migrate(&db, dir.path(), &["down", "--to", "0"]);
    expect_code(&down, 1);
    assert!(
        down.stderr_text().contains("000003_add_nickname"),
        "{}",
        down.describe()
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM kubectl_pg_migrations")
            .as_deref(),
        Some("3")
    );

    // A wrapped file that fails leaves nothing, its history row included: the file's
    // transaction is the migration's.
    write(
        dir.path(),
        "000004_broken.up.sql",
        "BEGIN;\nCREATE TABLE half (id int);\nSELECT nosuch FROM half;\nCOMMIT;\n",
    );
    let failed = migrate(&db, dir.path(), &["up"]);
    expect_code(&failed, 7);
    assert!(
        failed.stderr_text().contains("at line 3"),
        "{}",
        failed.describe()
    );
    assert_eq!(
        db.scalar("SELECT to_regclass('half') IS NULL").as_deref(),
        Some("t")
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM kubectl_pg_migrations")
            .as_deref(),
        Some("3")
    );
}

#[test]
fn golang_migrate_database_is_adopted() {
    const TEST: &str = "golang_migrate_database_is_adopted";
    let Some(cli) = tool("KPG_GOLANG_MIGRATE", TEST) else {
        return;
    };
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    golang_migrate_files(dir.path());
    let path = dir.path().display().to_string();
    let gm = |args: &[&str]| {
        let mut c = Command::new(&cli);
        c.args(["-path", &path, "-database", &db.dsn()]).args(args);
        c
    };
    run(&mut gm(&["up", "2"]));
    assert_refused_until_adopted(&db, dir.path(), "golang-migrate", "schema_migrations");
    adopt(&db, dir.path(), "golang-migrate", "schema_migrations");
    // Both say version 2.
    let version = run(&mut gm(&["version"]));
    let said = format!("{}{}", version.stdout_text(), version.stderr_text());
    assert_eq!(said.trim(), "2", "{}", version.describe());
    assert_eq!(applied_by_plugin(&db, dir.path()), ["000001", "000002"]);
    assert!(plugin_status(&db, dir.path())
        .iter()
        .all(|(v, s)| s == if v == "000003" { "pending" } else { "adopted" }));
    next_applies_once(&db, dir.path(), "000003_add_nickname");
    assert_eq!(
        db.scalar("SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'nickname'")
            .as_deref(),
        Some("1")
    );

    // A dirty version is refused, with golang-migrate's own fix.
    let dirty = TestDb::new();
    let mut c = Command::new(&cli);
    c.args(["-path", &path, "-database", &dirty.dsn(), "up", "1"]);
    run(&mut c);
    dirty.query("UPDATE schema_migrations SET dirty = true");
    let out = migrate(&dirty, dir.path(), &["adopt", "--from", "golang-migrate"]);
    expect_code(&out, 7);
    assert!(
        out.stderr_text().contains("version 1 is dirty")
            && out
                .stderr_text()
                .contains("migrate -path DIR -database URL force 1"),
        "{}",
        out.describe()
    );
    assert_eq!(
        dirty
            .scalar("SELECT count(*) FROM kubectl_pg_migrations")
            .as_deref(),
        Some("0"),
        "a refused adoption records nothing"
    );
}

#[test]
fn dbmate_files_run_and_its_database_is_adopted() {
    const TEST: &str = "dbmate_files_run_and_its_database_is_adopted";
    let Some(cli) = tool("KPG_DBMATE", TEST) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "20240101000000_create_users.sql",
        "-- migrate:up\ncreate table users (\n  id serial primary key,\n  email text not null\n);\n\n-- migrate:down\ndrop table users;\n",
    );
    write(
        d,
        "20240102000000_email_index.sql",
        "-- migrate:up transaction:false\ncreate index concurrently users_email on users (email);\n\n-- migrate:down transaction:false\ndrop index concurrently users_email;\n",
    );
    let db = TestDb::new();
    let dbmate = |db: &TestDb, args: &[&str]| {
        let mut c = Command::new(&cli);
        c.args([
            "--url",
            &db.dsn(),
            "--migrations-dir",
            &d.display().to_string(),
            "--no-dump-schema",
        ])
        .args(args);
        run(&mut c)
    };
    dbmate(&db, &["up"]);
    assert_refused_until_adopted(&db, d, "dbmate", "schema_migrations");
    adopt(&db, d, "dbmate", "schema_migrations");
    let status = dbmate(&db, &["status"]).stdout_text();
    assert!(status.contains("Applied: 2"), "{status}");
    assert_eq!(
        applied_by_plugin(&db, d),
        ["20240101000000", "20240102000000"]
    );
    write(
        d,
        "20240103000000_add_name.sql",
        "-- migrate:up\nalter table users add column name text;\n\n-- migrate:down\nalter table users drop column name;\n",
    );
    next_applies_once(&db, d, "20240103000000_add_name");

    // The plugin runs dbmate's files itself: sections, transaction:false, down.
    let fresh = TestDb::new();
    let plan = migrate(&fresh, d, &["up", "--dry-run"]);
    assert!(
        plan.stdout_text().contains("no-transaction"),
        "{}",
        plan.describe()
    );
    expect_code(&migrate(&fresh, d, &["up"]), 0);
    let down = migrate(&fresh, d, &["down", "--to", "20240101000000"]);
    expect_code(&down, 0);
    assert_eq!(
        fresh
            .scalar("SELECT to_regclass('users_email') IS NULL")
            .as_deref(),
        Some("t")
    );
    assert_eq!(
        fresh
            .scalar("SELECT to_regclass('users') IS NOT NULL")
            .as_deref(),
        Some("t")
    );
}

#[test]
fn flyway_database_is_adopted_and_repeatables_follow_their_checksum() {
    const TEST: &str = "flyway_database_is_adopted_and_repeatables_follow_their_checksum";
    let Some(cli) = tool("KPG_FLYWAY", TEST) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "V1__create_users.sql",
        "CREATE TABLE users (id serial PRIMARY KEY, email text);\n",
    );
    // Flyway's checksum ignores line breaks: a CRLF file is not a changed file.
    write(
        d,
        "V1.1__add_name.sql",
        "ALTER TABLE users ADD COLUMN name text;\r\n",
    );
    write(
        d,
        "V2_1__add_tags.sql",
        "CREATE TABLE tags (id int, label text);\n",
    );
    write(d, "U2_1__add_tags.sql", "DROP TABLE tags;\n");
    write(
        d,
        "R__user_view.sql",
        "CREATE OR REPLACE VIEW user_emails AS SELECT id, email FROM users;\n",
    );
    let db = TestDb::new();
    let port = crate::pg::server().port;
    let flyway = |db: &TestDb, action: &str| {
        let mut c = Command::new(&cli);
        c.arg(action)
            .env(
                "FLYWAY_URL",
                format!("jdbc:postgresql://127.0.0.1:{port}/{}", db.name),
            )
            .env("FLYWAY_USER", "postgres")
            .env("FLYWAY_PASSWORD", PASSWORD)
            .env("FLYWAY_LOCATIONS", d);
        run(&mut c).stdout_text()
    };
    flyway(&db, "migrate");
    assert_refused_until_adopted(&db, d, "flyway", "flyway_schema_history");
    let adopted = adopt(&db, d, "flyway", "flyway_schema_history");
    assert!(
        !adopted.stderr_text().contains("changed since"),
        "{}",
        adopted.describe()
    );
    // Both agree: Flyway's Success rows are the plugin's adopted versions.
    let info = flyway(&db, "info");
    let flyway_applied: Vec<String> = info
        .lines()
        .filter(|l| l.ends_with("|Success"))
        .map(|l| l.split('|').next().unwrap().replace("null", "R"))
        .collect();
    assert_eq!(flyway_applied, ["1", "1.1", "2.1", "R"], "{info}");
    assert_eq!(applied_by_plugin(&db, d), ["1", "1.1", "2.1", "R"]);

    // The undo file is 2.1's down; up applies it again.
    let down = migrate(&db, d, &["down"]);
    expect_code(&down, 0);
    assert!(
        down.stdout_text().contains("reverted 2.1_add_tags"),
        "{}",
        down.describe()
    );
    assert_eq!(
        db.scalar("SELECT to_regclass('tags') IS NULL").as_deref(),
        Some("t")
    );
    next_applies_once(&db, d, "2.1_add_tags");

    write(
        d,
        "V10__add_index.sql",
        "CREATE INDEX users_email ON users (email);\n",
    );
    next_applies_once(&db, d, "10_add_index");
    // A changed repeatable runs again, once, after the versioned ones.
    write(
        d,
        "R__user_view.sql",
        "CREATE OR REPLACE VIEW user_emails AS SELECT id, email, name FROM users;\n",
    );
    write(
        d,
        "V11__more.sql",
        "ALTER TABLE users ADD COLUMN bio text;\n",
    );
    let up = migrate(&db, d, &["up"]);
    expect_code(&up, 0);
    let text = up.stdout_text();
    let (v11, rep) = (
        text.find("applied 11_more"),
        text.find("applied R__user_view"),
    );
    assert!(
        v11.is_some() && rep.is_some() && v11 < rep,
        "{}",
        up.describe()
    );
    expect_code(&migrate(&db, d, &["up"]), 0);
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'user_emails'"
        )
        .as_deref(),
        Some("3")
    );

    // A file changed since Flyway ran it is reported; a failed row is refused.
    let changed = TestDb::new();
    flyway(&changed, "migrate");
    write(
        d,
        "V1__create_users.sql",
        "CREATE TABLE users (id serial PRIMARY KEY, email text); -- edited\n",
    );
    let out = migrate(&changed, d, &["adopt", "--from", "flyway", "--dry-run"]);
    expect_code(&out, 0);
    assert!(
        out.stderr_text()
            .contains("1_create_users changed since flyway applied it"),
        "{}",
        out.describe()
    );
    changed.query("UPDATE flyway_schema_history SET success = false WHERE version = '2.1'");
    let out = migrate(&changed, d, &["adopt", "--from", "flyway"]);
    expect_code(&out, 7);
    assert!(
        out.stderr_text().contains("failed migration: version 2.1")
            && out.stderr_text().contains("flyway repair"),
        "{}",
        out.describe()
    );
}

#[test]
fn sqlx_database_is_adopted_with_its_checksums() {
    use sha2::{Digest, Sha384};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let first = "CREATE TABLE users (id bigserial PRIMARY KEY, email text);\n";
    let second = "ALTER TABLE users ADD COLUMN name text;\n";
    write(d, "20240101000000_create_users.sql", first);
    write(d, "20240102000000_add_name.up.sql", second);
    write(
        d,
        "20240102000000_add_name.down.sql",
        "ALTER TABLE users DROP COLUMN name;\n",
    );
    let db = TestDb::new();
    // As sqlx 0.8 (sqlx-postgres migrate.rs) creates and fills its table.
    let row = |version: &str, description: &str, sql: &str, success: bool| {
        format!(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES ({version}, '{description}', {success}, '\\x{}', 1234567);",
            hex::encode(Sha384::digest(sql.as_bytes()))
        )
    };
    db.query(&format!(
        "CREATE TABLE IF NOT EXISTS _sqlx_migrations (\n    version BIGINT PRIMARY KEY,\n    description TEXT NOT NULL,\n    \
         installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),\n    success BOOLEAN NOT NULL,\n    checksum BYTEA NOT NULL,\n    \
         execution_time BIGINT NOT NULL\n);\n{first}{second}{}{}",
        row("20240101000000", "create users", first, true),
        row("20240102000000", "add name", "-- another text\n", true),
    ));
    assert_refused_until_adopted(&db, d, "sqlx", "_sqlx_migrations");
    let out = adopt(&db, d, "sqlx", "_sqlx_migrations");
    assert!(
        out.stderr_text()
            .contains("20240102000000_add_name changed since sqlx applied it")
            && !out.stderr_text().contains("create_users changed"),
        "{}",
        out.describe()
    );
    assert_eq!(
        applied_by_plugin(&db, d),
        ["20240101000000", "20240102000000"]
    );
    write(
        d,
        "20240103000000_add_bio.sql",
        "ALTER TABLE users ADD COLUMN bio text;\n",
    );
    next_applies_once(&db, d, "20240103000000_add_bio");

    let failed = TestDb::new();
    failed.query(&format!(
        "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
         installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT NULL, checksum BYTEA NOT NULL, \
         execution_time BIGINT NOT NULL); {}",
        row("20240101000000", "create users", first, false)
    ));
    let out = migrate(&failed, d, &["adopt", "--from", "sqlx"]);
    expect_code(&out, 7);
    assert!(
        out.stderr_text()
            .contains("DELETE FROM _sqlx_migrations WHERE version = 20240101000000"),
        "{}",
        out.describe()
    );
}

#[test]
fn the_format_can_be_forced_and_a_kubectl_pg_directive_is_not_the_excerpt() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "001_t.up.sql", "CREATE TABLE t (a int);\n");
    write(
        d,
        "002_i.up.sql",
        "-- kubectl-pg:no-transaction\nCREATE INDEX CONCURRENTLY t_a ON t (a);\n",
    );
    let plan = migrate(&db, d, &["up", "--dry-run"]);
    expect_code(&plan, 0);
    let text = plan.stdout_text();
    assert!(
        text.contains("line 2: CREATE INDEX CONCURRENTLY: CREATE INDEX CONCURRENTLY t_a ON t (a)")
            && !text.contains(": -- kubectl-pg:no-transaction"),
        "{}",
        plan.describe()
    );
    // Forced as Flyway, the pairs are badly named: status marks each, up refuses.
    let status = migrate(&db, d, &["status", "--format", "flyway"]);
    expect_code(&status, 7);
    assert!(
        status.stdout_text().contains("invalid")
            && status
                .stderr_text()
                .contains("malformed migration file name for the flyway format"),
        "{}",
        status.describe()
    );
    expect_code(&migrate(&db, d, &["up", "--format", "flyway"]), 1);
    expect_code(&migrate(&db, d, &["up", "--format", "kubectl-pg"]), 0);
}

#[test]
fn repair_records_the_database_role_that_repaired() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "001_t.up.sql", "CREATE TABLE t (a int);\n");
    expect_code(&migrate(&db, d, &["up"]), 0);
    write(d, "001_t.up.sql", "CREATE TABLE t (a int); -- reviewed\n");
    let out = migrate(&db, d, &["repair", "--version", "001", "--yes"]);
    expect_code(&out, 0);
    assert!(
        out.stdout_text().contains("repaired by postgres)"),
        "{}",
        out.describe()
    );
    let by = db
        .scalar("SELECT applied_by FROM kubectl_pg_migrations")
        .unwrap();
    assert!(
        by.starts_with("postgres (repaired by postgres on ") && !by.contains("unknown"),
        "{by}"
    );
}
