//! Application users and password rotation on the real control plane: the roles are real
//! PostgreSQL roles, proven by logging in with the password from their Secret through a real
//! `kubectl port-forward`.

use std::process::Output;

use serde_json::Value;

use crate::cluster::{query, try_connect, PortForward};
use crate::scope::Scope;
use crate::{expect_code, OutputExt};

const TIMEOUT: &str = "120s";

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", output.describe()))
}

fn ok(output: Output) -> Output {
    expect_code(&output, 0);
    output
}

/// A Secret's value, decoded.
fn secret_value(scope: &Scope, name: &str, key: &str) -> String {
    let out = ok(scope.kubectl_ns(&["get", "secret", name, "-o", "json"]));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let encoded = doc["data"][key].as_str().unwrap_or_default();
    String::from_utf8(base64_decode(encoded)).unwrap()
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut buffer = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|c| *c != b'=') {
        let value = ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
        buffer = (buffer << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    out
}

fn secret_exists(scope: &Scope, name: &str) -> bool {
    scope
        .kubectl_ns(&["get", "secret", name, "--ignore-not-found", "-o", "name"])
        .stdout_text()
        .contains(name)
}

/// `postgresql://USER:PASSWORD@127.0.0.1:PORT/DB?sslmode=disable` through the forward.
fn local(forward: &PortForward, user: &str, password: &str, db: &str) -> String {
    format!(
        "postgresql://{user}:{password}@{}/{db}?sslmode=disable",
        forward.addr
    )
}

fn denied(result: Result<Vec<Vec<Option<String>>>, String>, what: &str) {
    let error = result.expect_err(what);
    assert!(
        error.contains("permission denied") || error.contains("42501"),
        "{what}: {error}"
    );
}

/// Every write on both migration history tables is refused to `url`'s user, and so is a read:
/// the history belongs to the migration runner alone.
fn history_refused(url: &str, who: &str) {
    for (table, insert) in [
        (
            "kubectl_pg_migrations",
            "(version, name, checksum) VALUES (999, 'ghost', 'x')",
        ),
        (
            "kubectl_pg_migration_progress",
            "(version, direction, checksum, statements_done) VALUES (999, 'up', 'x', 0)",
        ),
    ] {
        for sql in [
            format!("INSERT INTO {table} {insert}"),
            format!("UPDATE {table} SET checksum = 'forged'"),
            format!("DELETE FROM {table}"),
            format!("TRUNCATE {table}"),
            format!("SELECT count(*) FROM {table}"),
        ] {
            denied(query(url, &sql), &format!("{sql} as {who}"));
        }
    }
}

/// create (generated and stdin passwords, read-write and readonly), the grants as the roles
/// really have them (LearnFlow tables, a table of a later migration, no INSERT when readonly,
/// no CREATE ROLE), dsn --db-user, list with drift, status, and delete.
#[test]
fn application_users() {
    let scope = Scope::new("kpg-users");
    let ns = scope.ns.as_str();
    let installed = scope.kpg(&[
        "install",
        "pg",
        "-n",
        ns,
        "--migrate",
        "--timeout",
        TIMEOUT,
        "-o",
        "json",
    ]);
    expect_code(&installed, 0);
    assert_eq!(json(&installed)["phase"], "Healthy");
    let kpg = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["-n", ns]);
        scope.kpg(&all)
    };
    // SQL as the release's superuser, in database `db`.
    let superuser_psql = |db: &str, sql: &str| {
        ok(scope.kpg(&["psql", "pg", "-n", ns, "--", "-d", db, "-c", sql]));
    };

    // Refused before any write: bad names, the superuser, a missing database.
    for (name, says) in [
        ("pg_app", "reserved"),
        ("App-RW", "invalid user name"),
        ("public", "reserves"),
        ("select", "key word"),
        ("credentials", "release's own Secret"),
        ("app_tls", "release's own Secret"),
        ("postgres", "superuser"),
    ] {
        let out = kpg(&["user", "create", name]);
        expect_code(&out, 1);
        assert!(
            out.stderr_text().contains(says),
            "{name}: {}",
            out.describe()
        );
    }
    let out = kpg(&["user", "create", "app_x", "--database", "nowhere"]);
    expect_code(&out, 1);
    assert!(
        out.stderr_text().contains("does not exist"),
        "{}",
        out.describe()
    );
    let out = scope.kpg_stdin(
        &["user", "create", "app_x", "--password-stdin", "-n", ns],
        "short\n",
    );
    expect_code(&out, 1);
    assert!(!secret_exists(&scope, "pg-user-app-x"));

    // A read-write user with a generated password; a readonly one with a password from stdin.
    let created = ok(kpg(&["user", "create", "app_rw", "-o", "json"]));
    let doc = json(&created);
    assert_eq!(doc["kind"], "ApplicationUser");
    assert_eq!(doc["secret"], "pg-user-app-rw");
    assert_eq!(doc["database"], "learnflow");
    assert!(doc["connection_string"]
        .as_str()
        .unwrap()
        .contains("********"));
    let ro_password = "a-readonly-password-0123";
    ok(scope.kpg_stdin(
        &[
            "user",
            "create",
            "app_ro",
            "--readonly",
            "--password-stdin",
            "--release",
            "pg",
            "-n",
            ns,
        ],
        &format!("{ro_password}\n"),
    ));
    // The Secret: basic-auth, the release's labels and the user's.
    let secret: Value = serde_json::from_slice(
        &ok(scope.kubectl_ns(&["get", "secret", "pg-user-app-rw", "-o", "json"])).stdout,
    )
    .unwrap();
    assert_eq!(secret["type"], "kubernetes.io/basic-auth");
    let labels = &secret["metadata"]["labels"];
    assert_eq!(labels["app.kubernetes.io/instance"], "pg");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "kubectl-pg");
    assert_eq!(labels["app.kubernetes.io/component"], "primary");
    assert_eq!(labels["kubectl-pg.io/user"], "app_rw");
    for key in ["username", "password", "database", "host", "port", "uri"] {
        assert!(secret["data"][key].is_string(), "{key}: {secret}");
    }
    assert_eq!(
        secret_value(&scope, "pg-user-app-ro", "password"),
        ro_password
    );
    // Twice is refused.
    let again = kpg(&["user", "create", "app_rw"]);
    expect_code(&again, 1);
    assert!(
        again.stderr_text().contains("exists"),
        "{}",
        again.describe()
    );

    // dsn --db-user: the user's credentials in every format.
    let uri = ok(kpg(&["dsn", "--db-user", "app_rw"])).stdout_text();
    let rw_password = secret_value(&scope, "pg-user-app-rw", "password");
    assert_eq!(
        uri.trim(),
        format!("postgresql://app_rw:{rw_password}@pg.{ns}.svc.cluster.local:5432/learnflow?sslmode=disable")
    );
    let jdbc = ok(kpg(&["dsn", "--db-user", "app_rw", "--format", "jdbc"])).stdout_text();
    assert!(jdbc.contains("user=app_rw"), "{jdbc}");
    let env = ok(kpg(&["dsn", "--db-user", "app_ro", "--format", "env"])).stdout_text();
    assert!(env.contains("export PGUSER='app_ro'\n"), "{env}");
    let missing = kpg(&["dsn", "--db-user", "nobody"]);
    expect_code(&missing, 1);

    let forward = PortForward::start(&scope, ns, "pg-0");
    // The superuser's URL for database `db`, through the forward.
    let admin_url = |db: &str| {
        local(
            &forward,
            "postgres",
            &secret_value(&scope, "pg-credentials", "password"),
            db,
        )
    };
    let rw = local(&forward, "app_rw", &rw_password, "learnflow");
    let ro = local(&forward, "app_ro", ro_password, "learnflow");
    // Read-write on the LearnFlow tables (the serial's sequence included).
    query(
        &rw,
        "INSERT INTO users (username, email) VALUES ('ada', 'ada@example.com')",
    )
    .unwrap();
    query(
        &rw,
        "UPDATE users SET role = 'teacher' WHERE username = 'ada'",
    )
    .unwrap();
    let rows = query(&rw, "SELECT role FROM users WHERE username = 'ada'").unwrap();
    assert_eq!(rows, [[Some("teacher".to_string())]]);
    denied(query(&rw, "CREATE ROLE intruder"), "CREATE ROLE as app_rw");
    // Readonly: reads, never writes.
    let rows = query(&ro, "SELECT count(*) FROM users").unwrap();
    assert_eq!(rows, [[Some("1".to_string())]]);
    denied(
        query(
            &ro,
            "INSERT INTO users (username, email) VALUES ('bob', 'b@x')",
        ),
        "INSERT as app_ro",
    );
    denied(query(&ro, "DELETE FROM users"), "DELETE as app_ro");
    history_refused(&rw, "app_rw");
    history_refused(&ro, "app_ro");
    // A release of an older version: its users were granted the history like any table. The
    // next user create takes it back from every app user.
    superuser_psql(
        "learnflow",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON kubectl_pg_migrations, kubectl_pg_migration_progress TO app_rw; \
         GRANT SELECT ON kubectl_pg_migrations, kubectl_pg_migration_progress TO app_ro",
    );
    query(&rw, "UPDATE kubectl_pg_migrations SET name = name").expect("the old grant");
    ok(kpg(&["user", "create", "app_late"]));
    let admin = admin_url("learnflow");
    assert_eq!(
        query(
            &admin,
            "SELECT count(*) FROM information_schema.role_table_grants \
             WHERE table_name LIKE 'kubectl_pg_migration%' AND grantee IN ('app_rw', 'app_ro', 'app_late')"
        )
        .unwrap(),
        [[Some("0".to_string())]]
    );
    history_refused(&rw, "app_rw after user create");
    history_refused(&ro, "app_ro after user create");
    ok(kpg(&["user", "delete", "app_late", "--yes"]));

    // A local psql as another role gets that role's password from its Secret, never the
    // superuser's; a role without one gets none (psql asks, and off a terminal gives up).
    let local_psql = |args: &[&str]| {
        let mut all = vec!["psql", "pg", "-n", ns, "--local", "--"];
        all.extend_from_slice(args);
        scope.kpg(&all)
    };
    let as_ro = ok(local_psql(&[
        "-U",
        "app_ro",
        "-At",
        "-c",
        "select current_user",
    ]));
    assert_eq!(as_ro.stdout_text().trim(), "app_ro", "{}", as_ro.describe());
    let stranger = local_psql(&["--username=stranger", "-w", "-c", "select 1"]);
    assert_ne!(stranger.code(), 0, "{}", stranger.describe());
    assert!(
        stranger
            .stderr_text()
            .contains("psql asks for its password")
            && stranger.stderr_text().contains("no password supplied"),
        "{}",
        stranger.describe()
    );

    // A result written to a closed stdout (`status >&-`) is a failure, not a silent exit 0.
    let status = scope.kpg_command(&["status", "pg", "-n", ns]);
    let closed = std::process::Command::new("sh")
        .args(["-c", "exec \"$0\" \"$@\" >&-"])
        .arg(status.get_program())
        .args(status.get_args())
        .envs(
            status
                .get_envs()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))),
        )
        .output()
        .unwrap();
    expect_code(&closed, 1);
    assert!(
        closed.stderr_text().contains("stdout is closed"),
        "{}",
        closed.describe()
    );

    // The issue's name collision: user `credentials` of release pg, as an older kubectl-pg made
    // it (role and labelled Secret pg-user-credentials), is what release `pg-user` would take
    // as its own superuser Secret. Install refuses it before any write, and the user still
    // logs in with its password.
    let legacy_password = "a-legacy-user-password-42";
    superuser_psql(
        "learnflow",
        &format!("CREATE ROLE credentials LOGIN PASSWORD '{legacy_password}'"),
    );
    ok(scope.kubectl_ns(&[
        "create",
        "secret",
        "generic",
        "pg-user-credentials",
        "--type",
        "kubernetes.io/basic-auth",
        "--from-literal=username=credentials",
        &format!("--from-literal=password={legacy_password}"),
        "--from-literal=database=learnflow",
    ]));
    ok(scope.kubectl_ns(&[
        "label",
        "secret",
        "pg-user-credentials",
        "app.kubernetes.io/name=postgresql",
        "app.kubernetes.io/instance=pg",
        "app.kubernetes.io/managed-by=kubectl-pg",
        "kubectl-pg.io/user=credentials",
    ]));
    let collided = kpg(&["install", "pg-user", "--timeout", "60s"]);
    expect_code(&collided, 1);
    assert!(
        collided
            .stderr_text()
            .contains("Secret pg-user-credentials")
            && collided
                .stderr_text()
                .contains("user credentials of release pg")
            && collided.stderr_text().contains("hint:"),
        "{}",
        collided.describe()
    );
    let written = ok(scope.kubectl_ns(&[
        "get",
        "statefulsets,services,secrets",
        "-l",
        "app.kubernetes.io/instance=pg-user",
        "-o",
        "name",
    ]));
    assert_eq!(written.stdout_text().trim(), "", "{}", written.describe());
    assert_eq!(
        secret_value(&scope, "pg-user-credentials", "password"),
        legacy_password
    );
    let legacy = local(&forward, "credentials", legacy_password, "learnflow");
    assert_eq!(
        query(&legacy, "SELECT current_user").unwrap(),
        [[Some("credentials".to_string())]]
    );
    // A user an older version made under a name now refused is still deleted by name.
    ok(kpg(&["user", "delete", "credentials", "--yes"]));
    assert!(!secret_exists(&scope, "pg-user-credentials"));
    assert!(try_connect(&legacy).is_err());
    // Superuser? No.
    let rows = query(
        &rw,
        "SELECT rolsuper::text, rolcreatedb::text, rolcreaterole::text FROM pg_roles WHERE rolname = current_user",
    )
    .unwrap();
    assert_eq!(
        rows,
        [[
            Some("false".into()),
            Some("false".into()),
            Some("false".into())
        ]]
    );

    // A table a later migration creates: writable for app_rw, readable for app_ro.
    let dir = scope.dir.path().join("migrations");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    std::fs::write(
        dir.join("007_notes.up.sql"),
        "CREATE TABLE notes (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL);\n",
    )
    .unwrap();
    std::fs::write(dir.join("007_notes.down.sql"), "DROP TABLE notes;\n").unwrap();
    ok(kpg(&[
        "migrate",
        "up",
        "pg",
        "--dir",
        dir.to_str().unwrap(),
    ]));
    query(&rw, "INSERT INTO notes (body) VALUES ('written later')").unwrap();
    let rows = query(&ro, "SELECT body FROM notes").unwrap();
    assert_eq!(rows, [[Some("written later".to_string())]]);
    denied(
        query(&ro, "INSERT INTO notes (body) VALUES ('no')"),
        "INSERT into a later table as app_ro",
    );

    // A user of another database: grants and default privileges there, and deleted from there.
    superuser_psql("learnflow", "CREATE DATABASE analytics");
    ok(kpg(&["user", "create", "etl", "--database", "analytics"]));
    let etl = local(
        &forward,
        "etl",
        &secret_value(&scope, "pg-user-etl", "password"),
        "analytics",
    );
    // Migrations run there after the user exists: the owner's default privileges grant etl
    // the new tables, the history's too, which the runner takes back as it creates them.
    let admin_analytics = admin_url("analytics");
    let analytics_dir = scope.dir.path().join("analytics");
    std::fs::create_dir_all(&analytics_dir).unwrap();
    std::fs::write(
        analytics_dir.join("001_facts.up.sql"),
        "CREATE TABLE facts (n INT);\n",
    )
    .unwrap();
    std::fs::write(
        analytics_dir.join("001_facts.down.sql"),
        "DROP TABLE facts;\n",
    )
    .unwrap();
    ok(kpg(&[
        "migrate",
        "up",
        "--dsn",
        &admin_analytics,
        "--dir",
        analytics_dir.to_str().unwrap(),
    ]));
    query(&etl, "INSERT INTO facts VALUES (1)").unwrap();
    history_refused(&etl, "etl");
    // Its Secret gone, the role's comment still says where its grants are.
    ok(scope.kubectl_ns(&["delete", "secret", "pg-user-etl"]));
    let listed = json(&ok(kpg(&["user", "list", "-o", "json"])));
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["name"] == "etl"
                && u["database"] == "analytics"
                && u["state"] == "secret missing"),
        "{listed}"
    );
    ok(kpg(&["user", "delete", "etl", "--yes"]));
    assert!(try_connect(&etl).is_err());
    assert!(!secret_exists(&scope, "pg-user-etl"));

    // list: both, no password; status names them.
    let listed = ok(kpg(&["user", "list", "-o", "json"]));
    let doc = json(&listed);
    assert_eq!(doc["kind"], "UserList");
    let items = doc["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{doc}");
    assert_eq!(items[0]["name"], "app_ro");
    assert_eq!(items[0]["readonly"], true);
    assert_eq!(items[1]["state"], "ok");
    assert!(!listed.stdout_text().contains(&rw_password));
    let table = ok(kpg(&["user", "list"])).stdout_text();
    assert!(
        table.starts_with("NAME") && table.contains("app_rw") && table.contains("readonly"),
        "{table}"
    );
    let status = json(&ok(kpg(&["status", "pg", "-o", "json"])));
    assert_eq!(status["tls"], false);
    assert_eq!(status["users"][0]["name"], "app_ro");
    assert_eq!(status["users"][0]["readonly"], true);
    assert_eq!(status["users"][1]["name"], "app_rw");
    let view = ok(kpg(&["status", "pg"])).stdout_text();
    assert!(view.contains("app_ro (readonly), app_rw"), "{view}");
    assert!(!view.contains(&rw_password) && !view.contains(ro_password));

    // Drift: a Secret deleted by hand leaves a role of ours without it.
    ok(scope.kubectl_ns(&["delete", "secret", "pg-user-app-ro"]));
    let doc = json(&ok(kpg(&["user", "list", "-o", "json"])));
    assert_eq!(doc["items"][0]["state"], "secret missing", "{doc}");

    // A role owning a table in a third database: user delete visits every database the role
    // has objects or grants in (pg_shdepend), not only its own and the release's. One that
    // accepts no connections cannot be visited: refused before any change, the user still
    // works, and it says what to do.
    superuser_psql("learnflow", "CREATE DATABASE scratch");
    superuser_psql("scratch", "GRANT CREATE ON SCHEMA public TO app_rw");
    let rw_scratch = local(&forward, "app_rw", &rw_password, "scratch");
    query(&rw_scratch, "CREATE TABLE mine (n INT)").unwrap();
    query(&rw_scratch, "INSERT INTO mine VALUES (1)").unwrap();
    superuser_psql(
        "learnflow",
        "ALTER DATABASE scratch ALLOW_CONNECTIONS false",
    );
    let closed = kpg(&["user", "delete", "app_rw", "--yes"]);
    expect_code(&closed, 1);
    assert!(
        closed.stderr_text().contains("scratch")
            && closed.stderr_text().contains("nothing was changed")
            && closed.stderr_text().contains("REASSIGN OWNED"),
        "{}",
        closed.describe()
    );
    assert!(secret_exists(&scope, "pg-user-app-rw"));
    query(
        &rw,
        "INSERT INTO users (username, email) VALUES ('still', 'still@example.com')",
    )
    .expect("app_rw keeps its grants after a refused delete");
    superuser_psql("learnflow", "ALTER DATABASE scratch ALLOW_CONNECTIONS true");

    // delete: needs --yes off a terminal; then the role and the Secret are gone.
    let refused = kpg(&["user", "delete", "app_rw"]);
    expect_code(&refused, 1);
    assert!(
        refused.stderr_text().contains("--yes"),
        "{}",
        refused.describe()
    );
    assert!(secret_exists(&scope, "pg-user-app-rw"));
    let deleted = ok(kpg(&["user", "delete", "app_rw", "--yes"]));
    assert!(
        deleted.stdout_text().contains("role app_rw dropped")
            && deleted
                .stdout_text()
                .contains("Secret pg-user-app-rw deleted"),
        "{}",
        deleted.describe()
    );
    assert!(!secret_exists(&scope, "pg-user-app-rw"));
    let gone = try_connect(&rw).expect_err("a deleted user logs in");
    assert!(
        gone.contains("28P01") || gone.contains("password"),
        "{gone}"
    );
    // Its table in the third database is the superuser's now, rows and all.
    let admin_scratch = admin_url("scratch");
    assert_eq!(
        query(
            &admin_scratch,
            "SELECT tableowner::text, (SELECT count(*) FROM mine)::text FROM pg_tables WHERE tablename = 'mine'"
        )
        .unwrap(),
        [[Some("postgres".to_string()), Some("1".to_string())]]
    );
    ok(kpg(&["user", "delete", "app_ro", "--yes"]));
    assert!(try_connect(&ro).is_err());
    let doc = json(&ok(kpg(&["user", "list", "-o", "json"])));
    assert_eq!(doc["items"], Value::Array(vec![]), "{doc}");
    expect_code(&kpg(&["user", "delete", "app_ro", "--yes"]), 1);
    // The rows app_rw wrote stay, owned by the superuser.
    let admin = admin_url("learnflow");
    assert_eq!(
        query(&admin, "SELECT count(*) FROM notes").unwrap(),
        [[Some("1".to_string())]]
    );
}

/// rotate-password: old password refused and new one accepted afterwards, Secret updated
/// (password and uri), the Deployment that reads it listed; an application user's too; a
/// Secret that cannot be written gives the database its old password back; refused for an
/// --existing-secret release.
#[test]
fn rotate_password() {
    let scope = Scope::new("kpg-rotate");
    let ns = scope.ns.as_str();
    ok(scope.kpg(&["install", "pg", "-n", ns, "--timeout", TIMEOUT]));
    let kpg = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["-n", ns]);
        scope.kpg(&all)
    };
    ok(kpg(&["user", "create", "app", "--release", "pg"]));
    // An app reading the superuser's Secret (no replicas: it only has to exist).
    let deployment = format!(
        r#"{{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"web","namespace":"{ns}"}},
"spec":{{"replicas":0,"selector":{{"matchLabels":{{"app":"web"}}}},"template":{{"metadata":{{"labels":{{"app":"web"}}}},
"spec":{{"containers":[{{"name":"web","image":"busybox:1.36","env":[{{"name":"DATABASE_URL","valueFrom":{{"secretKeyRef":{{"name":"pg-credentials","key":"uri"}}}}}}]}}],
"volumes":[{{"name":"creds","secret":{{"secretName":"pg-user-app"}}}}]}}}}}}}}"#
    );
    ok(scope
        .plane
        .kubectl_stdin(&["apply", "-f", "-"], &deployment));

    let forward = PortForward::start(&scope, ns, "pg-0");
    let old = secret_value(&scope, "pg-credentials", "password");
    try_connect(&local(&forward, "postgres", &old, "learnflow")).unwrap();

    // Off a terminal, --yes is needed.
    let refused = kpg(&["rotate-password", "pg"]);
    expect_code(&refused, 1);
    assert_eq!(secret_value(&scope, "pg-credentials", "password"), old);

    let out = ok(kpg(&["rotate-password", "pg", "--yes", "-o", "json"]));
    let doc = json(&out);
    assert_eq!(doc["kind"], "PasswordRotation");
    assert_eq!(doc["role"], "postgres");
    assert_eq!(doc["secret"], "pg-credentials");
    assert_eq!(doc["workloads"][0]["kind"], "Deployment");
    assert_eq!(doc["workloads"][0]["name"], "web");
    assert_eq!(doc["workloads"][0]["uses"][0], "env");
    assert_eq!(doc["workloads"].as_array().unwrap().len(), 1, "{doc}");
    let new = secret_value(&scope, "pg-credentials", "password");
    assert_ne!(new, old);
    assert!(!out.stdout_text().contains(&new) && !out.stderr_text().contains(&new));
    assert!(
        secret_value(&scope, "pg-credentials", "uri").contains(&format!(":{new}@")),
        "uri keeps up"
    );
    let refused = try_connect(&local(&forward, "postgres", &old, "learnflow"))
        .expect_err("the old password still works");
    assert!(
        refused.contains("28P01") || refused.contains("password"),
        "{refused}"
    );
    try_connect(&local(&forward, "postgres", &new, "learnflow")).unwrap();
    // The release itself keeps working with the Secret it now has.
    let status = json(&ok(kpg(&["status", "pg", "-o", "json"])));
    assert_eq!(status["phase"], "Healthy", "{status}");

    // A history an older version granted to its users: the next rotation, and the next
    // install --upgrade, take it back.
    let admin = local(&forward, "postgres", &new, "learnflow");
    let grant_history = || {
        query(
            &admin,
            "CREATE TABLE IF NOT EXISTS kubectl_pg_migrations (version bigint PRIMARY KEY); \
             GRANT SELECT, INSERT, UPDATE, DELETE ON kubectl_pg_migrations TO app",
        )
        .unwrap();
    };
    let history_grants = || {
        query(
            &admin,
            "SELECT count(*) FROM information_schema.role_table_grants \
             WHERE table_name = 'kubectl_pg_migrations' AND grantee = 'app'",
        )
        .unwrap()[0][0]
            .clone()
    };
    grant_history();
    assert_eq!(history_grants().as_deref(), Some("4"));

    // An application user's password; the Deployment mounting its Secret is listed.
    let app_old = secret_value(&scope, "pg-user-app", "password");
    let text = ok(kpg(&["rotate-password", "--db-user", "app", "--yes"])).stdout_text();
    assert!(
        text.contains("Apps must reread Secret pg-user-app")
            && text.contains("Deployment web (volume)"),
        "{text}"
    );
    let app_new = secret_value(&scope, "pg-user-app", "password");
    assert_ne!(app_new, app_old);
    assert!(try_connect(&local(&forward, "app", &app_old, "learnflow")).is_err());
    try_connect(&local(&forward, "app", &app_new, "learnflow")).unwrap();
    assert_eq!(
        history_grants().as_deref(),
        Some("0"),
        "after rotate-password"
    );
    grant_history();
    ok(kpg(&["install", "pg", "--upgrade", "--timeout", TIMEOUT]));
    assert_eq!(
        history_grants().as_deref(),
        Some("0"),
        "after install --upgrade"
    );
    expect_code(
        &kpg(&["rotate-password", "--db-user", "nobody", "--yes"]),
        1,
    );

    // A Secret we may not write: the database gets the old password back.
    let kubeconfig = scope.service_account_kubeconfig(
        "no-update",
        &format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: no-update\n  namespace: {ns}\nrules:\n\
             - {{apiGroups: [\"\"], resources: [secrets, pods], verbs: [get, list]}}\n\
             - {{apiGroups: [\"\"], resources: [pods/portforward], verbs: [get, create]}}\n\
             - {{apiGroups: [apps], resources: [statefulsets, deployments], verbs: [get, list]}}"
        ),
    );
    let denied = kpg(&[
        "rotate-password",
        "pg",
        "--yes",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ]);
    assert_ne!(denied.code(), 0, "{}", denied.describe());
    assert!(
        denied.stderr_text().contains("old password again"),
        "{}",
        denied.describe()
    );
    assert_eq!(secret_value(&scope, "pg-credentials", "password"), new);
    try_connect(&local(&forward, "postgres", &new, "learnflow")).unwrap();

    // The Secret changes between our read and our write (held at a proxy meanwhile), so the
    // write's resourceVersion precondition meets a real 409. An unrelated change: read again,
    // written. Someone else's password: refused, and the role has its old password again.
    let (proxy, proxied) = crate::proxy::in_front_of(&scope);
    let writes = |requests: &[crate::proxy::Recorded]| {
        requests
            .iter()
            .filter(|r| r.method == "PATCH" && r.path_and_query.contains("/secrets/pg-credentials"))
            .count()
    };
    let patch_credentials = |patch: &str| {
        let args = [
            "patch",
            "secret",
            "pg-credentials",
            "--type",
            "merge",
            "-p",
            patch,
        ];
        ok(scope.kubectl_ns(&args))
    };
    let rotate_meanwhile = |change: &str, patch: &str, sql: Option<&str>| {
        proxy.clear_requests();
        proxy.hang(crate::proxy::Matcher::new(
            "PATCH",
            "/secrets/pg-credentials",
        ));
        let child = scope
            .kpg_command(&[
                "rotate-password",
                "pg",
                "-n",
                ns,
                "--yes",
                "--kubeconfig",
                &proxied,
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        assert!(
            proxy.wait_for(std::time::Duration::from_secs(60), |r| writes(r) == 1),
            "rotate-password never wrote the Secret ({change})"
        );
        patch_credentials(patch);
        if let Some(sql) = sql {
            let args = [
                "exec", "pg-0", "-c", "postgres", "--", "psql", "-U", "postgres", "-c", sql,
            ];
            ok(scope.kubectl_ns(&args));
        }
        proxy.clear_hang();
        let out = crate::output_within(child, std::time::Duration::from_secs(60));
        (out, writes(&proxy.requests()))
    };
    let (out, tries) = rotate_meanwhile(
        "an annotation",
        r#"{"metadata":{"annotations":{"example.com/touched":"yes"}}}"#,
        None,
    );
    expect_code(&out, 0);
    assert_eq!(tries, 2, "the write was tried again: {}", out.describe());
    let rotated = secret_value(&scope, "pg-credentials", "password");
    assert_ne!(rotated, new);
    try_connect(&local(&forward, "postgres", &rotated, "learnflow")).unwrap();
    let (out, tries) = rotate_meanwhile(
        "another password",
        r#"{"stringData":{"password":"set-by-someone-else-0123"}}"#,
        None,
    );
    expect_code(&out, 1);
    assert_eq!(tries, 1, "{}", out.describe());
    let err = out.stderr_text();
    assert!(
        err.contains("changed by someone else") && err.contains("old password again"),
        "{}",
        out.describe()
    );
    assert_eq!(
        secret_value(&scope, "pg-credentials", "password"),
        "set-by-someone-else-0123",
        "the other change is kept"
    );
    try_connect(&local(&forward, "postgres", &rotated, "learnflow")).unwrap();
    // Someone sets another password in the Secret and in the database while the write is
    // held: the run undoes only its own change, so theirs stays in both, and they agree. (The
    // Secret first gets the database's password back, so that the run can connect.)
    patch_credentials(&serde_json::json!({ "stringData": { "password": rotated } }).to_string());
    let (out, tries) = rotate_meanwhile(
        "another password in both",
        r#"{"stringData":{"password":"set-by-someone-else-4567"}}"#,
        Some("ALTER ROLE postgres PASSWORD 'set-by-someone-else-4567'"),
    );
    expect_code(&out, 1);
    assert_eq!(tries, 1, "{}", out.describe());
    assert!(
        out.stderr_text()
            .contains("changed by someone else meanwhile: it is left as they set it"),
        "{}",
        out.describe()
    );
    let theirs = secret_value(&scope, "pg-credentials", "password");
    assert_eq!(theirs, "set-by-someone-else-4567");
    try_connect(&local(&forward, "postgres", &theirs, "learnflow")).unwrap();
    drop(proxy);

    // Two rotations of one role at once, eight times (the superuser's, then an application
    // user's): they run one after the other, each says it rotated (the one that waited says
    // so), and the Secret opens the database every time.
    let mut serialised = 0;
    for round in 0..8 {
        let (user, secret, args): (&str, &str, &[&str]) = if round < 4 {
            ("postgres", "pg-credentials", &["rotate-password", "pg"])
        } else {
            (
                "app",
                "pg-user-app",
                &["rotate-password", "--db-user", "app"],
            )
        };
        let before = secret_value(&scope, secret, "password");
        let spawn = || {
            let mut all = args.to_vec();
            all.extend(["-n", ns, "--yes"]);
            scope
                .kpg_command(&all)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (first, second) = (spawn(), spawn());
        let limit = std::time::Duration::from_secs(120);
        let outs = [
            crate::output_within(first, limit),
            crate::output_within(second, limit),
        ];
        for out in &outs {
            expect_code(out, 0);
            assert!(
                out.stdout_text()
                    .contains(&format!("password of role {user} rotated")),
                "{}",
                out.describe()
            );
        }
        let said = |what: &str| {
            outs.iter()
                .filter(|o| o.stderr_text().contains(what))
                .count()
        };
        assert!(said("waiting for it to finish") <= 1, "{outs:?}");
        serialised += said("waiting for it to finish").max(said("finished meanwhile"));
        let after = secret_value(&scope, secret, "password");
        assert_ne!(after, before, "round {round}");
        try_connect(&local(&forward, user, &after, "learnflow")).unwrap_or_else(|e| {
            panic!("round {round}: the Secret's password is refused: {e}\n{outs:?}")
        });
    }
    eprintln!("concurrent rotations: {serialised} of 8 rounds met the other run");
    drop(forward);

    // uninstall --delete-data: the users' roles were in the data, so their Secrets go too.
    ok(kpg(&["uninstall", "pg", "--delete-data", "--yes"]));
    assert!(!secret_exists(&scope, "pg-user-app"));
    assert!(!secret_exists(&scope, "pg-credentials"));

    // --existing-secret: the user's Secret, never rotated by us.
    ok(scope.kubectl_ns(&[
        "create",
        "secret",
        "generic",
        "ext-db",
        "--type",
        "kubernetes.io/basic-auth",
        "--from-literal=password=an-existing-password-42",
    ]));
    ok(kpg(&[
        "install",
        "ext",
        "--existing-secret",
        "ext-db",
        "--timeout",
        TIMEOUT,
    ]));
    let out = kpg(&["rotate-password", "ext", "--yes"]);
    expect_code(&out, 1);
    assert!(
        out.stderr_text().contains("--existing-secret ext-db")
            && out.stderr_text().contains("hint:"),
        "{}",
        out.describe()
    );
    assert_eq!(
        secret_value(&scope, "ext-db", "password"),
        "an-existing-password-42"
    );
}

/// A NodePort release serves TLS: Secret R-tls (CA and server certificate), `ssl = on`, and
/// connections from outside the pod only over TLS; `dsn --external` gives sslmode=verify-full
/// and writes the CA, and libpq verifies the server's certificate with it for the name the DSN
/// gives (through a real port-forward: the node routes no NodePort traffic); install --upgrade
/// keeps a certificate that is not due.
#[test]
fn tls_when_exposed() {
    let scope = Scope::new("kpg-tls");
    let ns = scope.ns.as_str();
    let kpg = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["-n", ns]);
        scope.kpg(&all)
    };
    let installed = ok(kpg(&[
        "install",
        "np",
        "--service-type",
        "NodePort",
        "--timeout",
        TIMEOUT,
        "-o",
        "json",
    ]));
    assert_eq!(
        json(&installed)["phase"],
        "Healthy",
        "{}",
        installed.describe()
    );
    let secret: Value = serde_json::from_slice(
        &ok(scope.kubectl_ns(&["get", "secret", "np-tls", "-o", "json"])).stdout,
    )
    .unwrap();
    assert_eq!(secret["type"], "kubernetes.io/tls");
    for key in ["ca.crt", "ca.key", "tls.crt", "tls.key"] {
        assert!(secret["data"][key].is_string(), "{key}");
    }
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "kubectl-pg"
    );
    let ca = secret_value(&scope, "np-tls", "ca.crt");
    let tls_crt = secret_value(&scope, "np-tls", "tls.crt");

    // dsn --external: verify-full and the CA, in the file it names.
    let ca_file = scope.dir.path().join("np-ca.crt");
    let uri = ok(kpg(&[
        "dsn",
        "np",
        "--external",
        "--ca-file",
        ca_file.to_str().unwrap(),
    ]))
    .stdout_text();
    assert!(
        uri.contains("?sslmode=verify-full&sslrootcert=%2F"),
        "{uri}"
    );
    assert_eq!(std::fs::read_to_string(&ca_file).unwrap(), ca);
    let env = ok(kpg(&[
        "dsn",
        "np",
        "--external",
        "--format",
        "env",
        "--ca-file",
        ca_file.to_str().unwrap(),
    ]))
    .stdout_text();
    assert!(env.contains("export PGSSLMODE='verify-full'\n"), "{env}");
    let host = uri
        .split('@')
        .nth(1)
        .and_then(|rest| rest.rsplit_once(':'))
        .map(|(host, _)| host.to_string())
        .unwrap();
    let password = secret_value(&scope, "np-credentials", "password");

    // libpq checks the server's certificate against the CA for the DSN's host.
    let forward = PortForward::start(&scope, ns, "np-0");
    let port = forward.addr.rsplit_once(':').unwrap().1.to_string();
    let psql = scope.plane.postgres.join("clients/bin/psql");
    let connect = |name: &str| {
        std::process::Command::new(&psql)
            .arg(format!(
                "host={name} hostaddr=127.0.0.1 port={port} user=postgres dbname=learnflow sslmode=verify-full sslrootcert={}",
                ca_file.display()
            ))
            .args(["-X", "-At", "-c", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"])
            .env("PGPASSWORD", &password)
            .env_remove("PGSSLMODE")
            .output()
            .unwrap()
    };
    for name in [host.as_str(), &format!("np.{ns}.svc.cluster.local")] {
        let out = ok(connect(name));
        assert_eq!(out.stdout_text().trim(), "t", "{name}: {}", out.describe());
    }
    let wrong = connect("elsewhere.example");
    assert_ne!(wrong.code(), 0);
    assert!(
        wrong.stderr_text().contains("does not match"),
        "{}",
        wrong.describe()
    );
    drop(forward);

    // In-cluster apps get sslmode=require (the Secret's uri, dsn without a CA); --ca-file
    // alone, without --external, writes the CA and gives verify-full for the in-cluster name.
    let secret_uri = secret_value(&scope, "np-credentials", "uri");
    assert!(
        secret_uri.ends_with("/learnflow?sslmode=require"),
        "{secret_uri}"
    );
    let inside_uri = ok(kpg(&["dsn", "np"])).stdout_text();
    assert_eq!(inside_uri.trim(), secret_uri);
    let own_ca = scope.dir.path().join("np-own-ca.crt");
    let verified = ok(kpg(&["dsn", "np", "--ca-file", own_ca.to_str().unwrap()])).stdout_text();
    assert!(
        verified.contains(&format!(
            "@np.{ns}.svc.cluster.local:5432/learnflow?sslmode=verify-full&sslrootcert=%2F"
        )),
        "{verified}"
    );
    assert_eq!(std::fs::read_to_string(&own_ca).unwrap(), ca);

    // kubectl pg port-forward's DSN verifies the server as printed: the certificate names
    // 127.0.0.1, and the CA is written beside the scratch HOME's kubeconfig.
    {
        let forward = crate::cluster::PluginForward::start(&scope, ns, "np", "127.0.0.1:0");
        let local = forward.dsn.as_str();
        assert!(
            local.contains("@127.0.0.1:")
                && local.contains("/learnflow?sslmode=verify-full&sslrootcert=%2F"),
            "{local}"
        );
        let out = std::process::Command::new(&psql)
            .args([
                "-X",
                "-At",
                local,
                "-c",
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            ])
            .env_remove("PGSSLMODE")
            .env_remove("PGPASSWORD")
            .output()
            .unwrap();
        assert_eq!(out.stdout_text().trim(), "t", "{}", out.describe());
    }

    // From outside the pod's loopback (its own address), TLS or nothing.
    let ip = ok(scope.kubectl_ns(&["get", "pod", "np-0", "-o", "jsonpath={.status.podIP}"]))
        .stdout_text();
    let inside = |sslmode: &str| {
        scope.kubectl_ns(&[
            "exec",
            "np-0",
            "-c",
            "postgres",
            "--",
            "sh",
            "-c",
            &format!(
                "HOME=/tmp PGPASSWORD='{password}' psql -X -At \"host={ip} user=postgres dbname=learnflow sslmode={sslmode}\" -c 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()'"
            ),
        ])
    };
    let plain = inside("disable");
    assert_ne!(plain.code(), 0, "{}", plain.describe());
    assert!(
        plain.stderr_text().contains("no encryption"),
        "{}",
        plain.describe()
    );
    let encrypted = ok(inside("require"));
    assert_eq!(encrypted.stdout_text().trim(), "t");

    // --upgrade keeps a certificate that is not due (no restart for it), and TLS; it brings
    // the Secret's uri (derived data) in step with the TLS, as one an older install wrote
    // without sslmode, and leaves the credentials as they are.
    let old_uri = secret_uri.replace("?sslmode=require", "");
    ok(scope.kubectl_ns(&[
        "patch",
        "secret",
        "np-credentials",
        "--type=merge",
        "-p",
        &serde_json::json!({ "stringData": { "uri": old_uri } }).to_string(),
    ]));
    // An application user's Secret, as an older `user create` wrote it.
    ok(scope.plane.kubectl_stdin(
        &["apply", "-n", ns, "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: np-user-app\n  labels:\n    app.kubernetes.io/instance: np\n    app.kubernetes.io/managed-by: kubectl-pg\n    kubectl-pg.io/user: app\ntype: kubernetes.io/basic-auth\nstringData:\n  username: app\n  password: app-password-0123456789\n  database: learnflow\n  host: np.{ns}.svc.cluster.local\n  uri: postgresql://app:app-password-0123456789@np.{ns}.svc.cluster.local:5432/learnflow\n"
        ),
    ));
    let upgraded = ok(kpg(&["install", "np", "--upgrade", "--timeout", TIMEOUT]));
    assert_eq!(
        secret_value(&scope, "np-user-app", "uri"),
        format!("postgresql://app:app-password-0123456789@np.{ns}.svc.cluster.local:5432/learnflow?sslmode=require")
    );
    assert_eq!(
        secret_value(&scope, "np-user-app", "password"),
        "app-password-0123456789"
    );
    assert!(
        upgraded
            .stderr_text()
            .contains("its uri now says sslmode=require"),
        "{}",
        upgraded.describe()
    );
    assert_eq!(secret_value(&scope, "np-credentials", "uri"), secret_uri);
    assert_eq!(secret_value(&scope, "np-credentials", "password"), password);
    assert_eq!(secret_value(&scope, "np-tls", "tls.crt"), tls_crt);
    let status = json(&ok(kpg(&["status", "np", "-o", "json"])));
    assert_eq!(status["phase"], "Healthy");
    assert_eq!(status["restarts"], 0, "{status}");
    assert_eq!(status["tls"], true, "{status}");
    let view = ok(kpg(&["status", "np"])).stdout_text();
    assert!(
        view.contains("TLS:") && view.contains("on (Secret np-tls"),
        "{view}"
    );

    // A LoadBalancer without source ranges is warned about; once its address is known,
    // --upgrade renews the certificate for it with the same CA (and the pod restarts with it).
    let lb = ok(kpg(&[
        "install",
        "lb",
        "--service-type",
        "LoadBalancer",
        "--timeout",
        TIMEOUT,
    ]));
    assert!(
        lb.stderr_text()
            .contains("without --load-balancer-source-ranges"),
        "{}",
        lb.describe()
    );
    let lb_ca = secret_value(&scope, "lb-tls", "ca.crt");
    let lb_crt = secret_value(&scope, "lb-tls", "tls.crt");
    ok(scope.kubectl_ns(&[
        "patch",
        "service",
        "lb",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"loadBalancer":{"ingress":[{"ip":"198.51.100.7"}]}}}"#,
    ]));
    let upgrade = ok(kpg(&[
        "install",
        "lb",
        "--upgrade",
        "--load-balancer-source-ranges",
        "10.0.0.0/8,192.0.2.0/24",
        "--timeout",
        TIMEOUT,
    ]));
    assert!(
        upgrade
            .stderr_text()
            .contains("renewed the server certificate")
            && upgrade.stderr_text().contains("198.51.100.7")
            && !upgrade
                .stderr_text()
                .contains("without --load-balancer-source-ranges"),
        "{}",
        upgrade.describe()
    );
    assert_eq!(secret_value(&scope, "lb-tls", "ca.crt"), lb_ca);
    assert_ne!(secret_value(&scope, "lb-tls", "tls.crt"), lb_crt);
    let service: Value = serde_json::from_slice(
        &ok(scope.kubectl_ns(&["get", "service", "lb", "-o", "json"])).stdout,
    )
    .unwrap();
    assert_eq!(
        service["spec"]["loadBalancerSourceRanges"],
        serde_json::json!(["10.0.0.0/8", "192.0.2.0/24"])
    );
    let sans = ok(scope.kubectl_ns(&[
        "get",
        "secret",
        "lb-tls",
        "-o",
        "jsonpath={.metadata.annotations.kubectl-pg\\.io/tls-sans}",
    ]))
    .stdout_text();
    assert!(sans.contains("198.51.100.7"), "{sans}");
    let status = json(&ok(kpg(&["status", "lb", "-o", "json"])));
    assert_eq!(status["phase"], "Healthy", "{status}");
    let uri = ok(kpg(&["dsn", "lb", "--external"])).stdout_text();
    assert!(
        uri.contains("@198.51.100.7:5432/learnflow?sslmode=verify-full"),
        "{uri}"
    );

    // The certificates stay with the data, and go with it.
    ok(kpg(&["uninstall", "np", "--yes"]));
    assert!(secret_exists(&scope, "np-tls"));
    ok(kpg(&["uninstall", "lb", "--delete-data", "--yes"]));
    assert!(!secret_exists(&scope, "lb-tls"));
}
