//! `kubectl pg migrate` against a real PostgreSQL.

use std::path::Path;

use crate::pg::TestDb;
use crate::{expect_code, kpg, kpg_command, OutputExt};

fn migrate(db: &TestDb, args: &[&str]) -> std::process::Output {
    let dsn = db.dsn();
    let mut all = vec!["migrate"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--dsn", &dsn]);
    kpg(&all)
}

fn write(dir: &Path, name: &str, body: &str) {
    std::fs::write(dir.join(name), body).unwrap();
}

fn dir_arg(dir: &tempfile::TempDir) -> String {
    dir.path().display().to_string()
}

fn applied_versions(db: &TestDb) -> Vec<i64> {
    db.query("SELECT version FROM kubectl_pg_migrations ORDER BY version")
        .into_iter()
        .map(|r| r[0].as_deref().unwrap().parse().unwrap())
        .collect()
}

fn table_exists(db: &TestDb, table: &str) -> bool {
    db.scalar(&format!("SELECT to_regclass('{table}') IS NOT NULL"))
        .as_deref()
        == Some("t")
}

/// Columns, constraints, indexes and triggers of the public schema, as comparable text.
fn schema_snapshot(db: &TestDb) -> Vec<String> {
    let sql = "SELECT 'col ' || table_name || '.' || column_name || ' ' || data_type || coalesce('(' || character_maximum_length || ')', '') \
                 || ' null=' || is_nullable || ' default=' || coalesce(column_default, '-') \
               FROM information_schema.columns WHERE table_schema = 'public' AND table_name NOT LIKE 'kubectl_pg_%' \
               UNION ALL SELECT 'con ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid) \
               FROM pg_constraint WHERE connamespace = 'public'::regnamespace AND conrelid::regclass::text NOT LIKE 'kubectl_pg_%' \
               UNION ALL SELECT 'idx ' || indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename NOT LIKE 'kubectl_pg_%' \
               UNION ALL SELECT 'trg ' || tgname || ' ' || pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal \
               UNION ALL SELECT 'fn ' || proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace \
               ORDER BY 1";
    db.query(sql)
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect()
}

#[test]
fn learnflow_schema_matches_the_seed() {
    let db = TestDb::new();
    let out = migrate(&db, &["up"]);
    expect_code(&out, 0);
    assert!(
        out.stdout_text().contains("applied 001_users"),
        "{}",
        out.describe()
    );
    let snapshot = schema_snapshot(&db).join("\n");
    let expected = [
        // users
        "col users.id integer null=NO default=nextval('users_id_seq'::regclass)",
        "col users.username character varying(255) null=NO default=-",
        "col users.email character varying(255) null=NO default=-",
        "col users.role character varying(50) null=YES default='student'::character varying",
        "col users.created_at timestamp without time zone null=YES default=now()",
        "col users.updated_at timestamp without time zone null=YES default=now()",
        "con users users_username_key UNIQUE (username)",
        "con users users_email_key UNIQUE (email)",
        "con users users_pkey PRIMARY KEY (id)",
        "idx CREATE INDEX idx_users_username ON public.users USING btree (username)",
        "idx CREATE INDEX idx_users_email ON public.users USING btree (email)",
        "idx CREATE INDEX idx_users_role ON public.users USING btree (role)",
        // progress
        "col progress.user_id integer null=NO default=-",
        "col progress.topic character varying(255) null=NO default=-",
        "col progress.mastery_score integer null=YES default=0",
        "col progress.last_practiced timestamp without time zone null=YES default=-",
        "col progress.streak_days integer null=YES default=0",
        "con progress progress_user_id_fkey FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE",
        "con progress progress_user_id_topic_key UNIQUE (user_id, topic)",
        "idx CREATE INDEX idx_progress_user_id ON public.progress USING btree (user_id)",
        "idx CREATE INDEX idx_progress_topic ON public.progress USING btree (topic)",
        "idx CREATE INDEX idx_progress_mastery ON public.progress USING btree (mastery_score)",
        // submissions
        "col submissions.exercise_id integer null=NO default=-",
        "col submissions.code text null=NO default=-",
        "col submissions.feedback text null=YES default=-",
        "col submissions.score integer null=YES default=-",
        "col submissions.submitted_at timestamp without time zone null=YES default=now()",
        "con submissions submissions_user_id_fkey FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE",
        "con submissions submissions_exercise_id_fkey FOREIGN KEY (exercise_id) REFERENCES exercises(id) ON DELETE CASCADE",
        "idx CREATE INDEX idx_submissions_user_id ON public.submissions USING btree (user_id)",
        "idx CREATE INDEX idx_submissions_exercise_id ON public.submissions USING btree (exercise_id)",
        "idx CREATE INDEX idx_submissions_submitted_at ON public.submissions USING btree (submitted_at DESC)",
        // exercises
        "col exercises.title character varying(255) null=NO default=-",
        "col exercises.description text null=YES default=-",
        "col exercises.difficulty character varying(20) null=YES default=-",
        "col exercises.test_cases jsonb null=YES default=-",
        "col exercises.solution text null=YES default=-",
        "col exercises.topic character varying(100) null=YES default=-",
        "idx CREATE INDEX idx_exercises_topic ON public.exercises USING btree (topic)",
        "idx CREATE INDEX idx_exercises_difficulty ON public.exercises USING btree (difficulty)",
        // struggle_alerts
        "col struggle_alerts.topic character varying(255) null=NO default=-",
        "col struggle_alerts.error_pattern text null=YES default=-",
        "col struggle_alerts.first_detected timestamp without time zone null=YES default=now()",
        "col struggle_alerts.resolved_at timestamp without time zone null=YES default=-",
        "col struggle_alerts.notified boolean null=YES default=false",
        "con struggle_alerts struggle_alerts_user_id_fkey FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE",
        "idx CREATE INDEX idx_struggle_user_id ON public.struggle_alerts USING btree (user_id)",
        "idx CREATE INDEX idx_struggle_topic ON public.struggle_alerts USING btree (topic)",
        "idx CREATE INDEX idx_struggle_resolved ON public.struggle_alerts USING btree (resolved_at)",
        "idx CREATE INDEX idx_struggle_notified ON public.struggle_alerts USING btree (notified) WHERE (notified = false)",
        // curriculum
        "col curriculum.module_name character varying(255) null=NO default=-",
        "col curriculum.topic_name character varying(255) null=NO default=-",
        "col curriculum.order_index integer null=YES default=-",
        "col curriculum.dependencies jsonb null=YES default=-",
        "col curriculum.estimated_minutes integer null=YES default=-",
        "idx CREATE INDEX idx_curriculum_module ON public.curriculum USING btree (module_name)",
        "idx CREATE INDEX idx_curriculum_order ON public.curriculum USING btree (order_index)",
        "trg users_set_updated_at CREATE TRIGGER users_set_updated_at BEFORE UPDATE ON public.users FOR EACH ROW EXECUTE FUNCTION learnflow_set_updated_at()",
    ];
    for line in expected {
        assert!(
            snapshot.lines().any(|l| l == line),
            "missing `{line}` in:\n{snapshot}"
        );
    }
    let tables = db.scalar(
        "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_name NOT LIKE 'kubectl_pg_%'",
    );
    assert_eq!(
        tables.as_deref(),
        Some("curriculum,exercises,progress,struggle_alerts,submissions,users")
    );

    // The constraints a DBA adds, and the trigger, do their job.
    db.query("INSERT INTO users (username, email) VALUES ('ada', 'ada@example.org')");
    for bad in [
        "INSERT INTO users (username, email, role) VALUES ('bob', 'bob@x', 'hacker')",
        "INSERT INTO exercises (title, difficulty) VALUES ('t', 'impossible')",
        "INSERT INTO progress (user_id, topic, mastery_score) VALUES (1, 'loops', 101)",
        "INSERT INTO users (username, email) VALUES ('ada', 'other@example.org')",
    ] {
        let err = std::panic::catch_unwind(|| db.query(bad));
        assert!(err.is_err(), "accepted: {bad}");
    }
    db.query(
        "UPDATE users SET updated_at = '2000-01-01', email = 'ada@new.org' WHERE username = 'ada'",
    );
    assert_eq!(
        db.scalar("SELECT updated_at > now() - interval '1 minute' FROM users")
            .as_deref(),
        Some("t")
    );
    // Cascade from users.
    db.query("INSERT INTO progress (user_id, topic) VALUES (1, 'loops'); DELETE FROM users;");
    assert_eq!(
        db.scalar("SELECT count(*) FROM progress").as_deref(),
        Some("0")
    );
}

#[test]
fn up_down_to_zero_and_up_again_leave_the_same_schema() {
    let db = TestDb::new();
    expect_code(&migrate(&db, &["up"]), 0);
    let first = schema_snapshot(&db);
    let down = migrate(&db, &["down", "--to", "0"]);
    expect_code(&down, 0);
    assert!(
        down.stdout_text().contains("reverted 001_users"),
        "{}",
        down.describe()
    );
    assert!(
        schema_snapshot(&db).is_empty(),
        "{:?}",
        schema_snapshot(&db)
    );
    assert!(applied_versions(&db).is_empty());
    expect_code(&migrate(&db, &["up"]), 0);
    assert_eq!(schema_snapshot(&db), first);
    // A second up is a no-op.
    let again = migrate(&db, &["up"]);
    expect_code(&again, 0);
    assert!(
        again.stdout_text().contains("Nothing to do"),
        "{}",
        again.describe()
    );
}

#[test]
fn up_to_down_steps_and_status() {
    let db = TestDb::new();
    expect_code(&migrate(&db, &["up", "--to", "003"]), 0);
    assert_eq!(applied_versions(&db), [1, 2, 3]);
    expect_code(&migrate(&db, &["down"]), 0);
    assert_eq!(applied_versions(&db), [1, 2]);
    assert!(!table_exists(&db, "progress"));
    expect_code(&migrate(&db, &["down", "--steps", "2"]), 0);
    assert!(applied_versions(&db).is_empty());
    expect_code(&migrate(&db, &["up", "--to", "2"]), 0);

    let json = migrate(&db, &["status", "-o", "json"]);
    expect_code(&json, 0);
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(doc["apiVersion"], "kubectl-pg/v1");
    assert_eq!(doc["kind"], "MigrationStatus");
    assert_eq!(doc["applied"], 2);
    assert_eq!(doc["pending"], 4);
    assert_eq!(doc["latest_version"], "002");
    assert_eq!(doc["migrations"][0]["state"], "applied");
    assert_eq!(doc["migrations"][0]["checksum"].as_str().unwrap().len(), 64);
    // With --dsn the database role says who applied it (no kubeconfig user to add).
    assert_eq!(doc["migrations"][0]["applied_by"], "postgres");
    assert_eq!(doc["migrations"][5]["state"], "pending");

    let yaml = migrate(&db, &["status", "-o", "yaml"]);
    expect_code(&yaml, 0);
    assert!(
        yaml.stdout_text().contains("kind: MigrationStatus"),
        "{}",
        yaml.describe()
    );
    let table = migrate(&db, &["status"]);
    expect_code(&table, 0);
    let text = table.stdout_text();
    assert!(
        text.contains("VERSION") && text.contains("CHECKSUM"),
        "{text}"
    );
    let row = text
        .lines()
        .find(|l| l.starts_with("003 "))
        .unwrap_or_default();
    assert!(
        row.contains("progress") && row.contains("pending"),
        "{text}"
    );
    assert!(
        !text.contains('\x1b'),
        "no colour when NO_COLOR is set and stdout is no terminal"
    );
    let coloured = migrate(&db, &["status", "--color", "always"]);
    assert!(
        coloured.stdout_text().contains("\x1b["),
        "{}",
        coloured.describe()
    );
    let never = kpg_command(&["migrate", "status", "--color", "never", "--dsn", &db.dsn()])
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    assert!(!never.stdout_text().contains('\x1b'));
    let wide = migrate(&db, &["status", "-o", "wide"]);
    assert!(
        wide.stdout_text().contains("APPLIED BY"),
        "{}",
        wide.describe()
    );
}

#[test]
fn status_of_an_untouched_database_changes_nothing() {
    let db = TestDb::new();
    let out = migrate(&db, &["status", "-o", "json"]);
    expect_code(&out, 0);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["applied"], 0);
    assert!(!table_exists(&db, "kubectl_pg_migrations"));
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let db = TestDb::new();
    let out = migrate(&db, &["up", "--dry-run"]);
    expect_code(&out, 0);
    let text = out.stdout_text();
    let checksum = kubectl_pg::migration::MigrationSet::embedded()
        .unwrap()
        .migrations[0]
        .up
        .checksum
        .clone();
    assert!(
        text.contains("001")
            && text.contains("users")
            && text.contains("transaction")
            && text.contains(&checksum),
        "{text}"
    );
    assert!(!table_exists(&db, "kubectl_pg_migrations"));
    assert!(!table_exists(&db, "users"));

    // -o is honoured: the plan as a document, then the run's result as MigrationStatus on
    // stdout with the progress on stderr; commands without a document refuse it.
    let plan = migrate(&db, &["up", "--dry-run", "-o", "json"]);
    expect_code(&plan, 0);
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).expect("a JSON plan");
    assert_eq!(plan["kind"], "MigrationPlan");
    assert_eq!(plan["steps"][0]["version"], "001");
    assert_eq!(plan["steps"][0]["checksum"], checksum.as_str());
    assert!(!table_exists(&db, "users"));
    let run = migrate(&db, &["up", "--to", "002", "-o", "json"]);
    expect_code(&run, 0);
    let doc: serde_json::Value =
        serde_json::from_slice(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.describe()));
    assert_eq!(doc["kind"], "MigrationStatus", "{}", run.describe());
    assert!(
        run.stderr_text().contains("applied 001"),
        "{}",
        run.describe()
    );
    let refused = migrate(&db, &["baseline", "--version", "003", "-o", "json"]);
    expect_code(&refused, 1);
    let down = migrate(&db, &["down", "--to", "0", "-o", "yaml"]);
    expect_code(&down, 0);
    assert!(
        down.stdout_text().contains("kind: MigrationStatus"),
        "{}",
        down.describe()
    );
    assert!(!table_exists(&db, "users"));

    // Without a database the plan is made against an empty history.
    let offline = kpg(&["migrate", "up", "--dry-run"]);
    expect_code(&offline, 0);
    assert!(
        offline.stdout_text().contains("006"),
        "{}",
        offline.describe()
    );
}

#[test]
fn checksum_drift_is_refused_but_crlf_and_bom_copies_are_not_drift() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "001_a.up.sql",
        "CREATE TABLE a (id int);\n-- note\n",
    );
    write(dir.path(), "001_a.down.sql", "DROP TABLE a;\n");
    let d = dir_arg(&dir);
    expect_code(&migrate(&db, &["up", "--dir", &d]), 0);
    let recorded = db
        .scalar("SELECT checksum FROM kubectl_pg_migrations")
        .unwrap();

    // The same file as a Windows checkout would write it.
    write(
        dir.path(),
        "001_a.up.sql",
        "\u{feff}CREATE TABLE a (id int);\r\n-- note\r\n",
    );
    let same = migrate(&db, &["up", "--dir", &d]);
    expect_code(&same, 0);
    assert!(
        same.stdout_text().contains("Nothing to do"),
        "{}",
        same.describe()
    );

    // A real change.
    write(
        dir.path(),
        "001_a.up.sql",
        "CREATE TABLE a (id bigint);\n-- note\n",
    );
    write(dir.path(), "002_b.up.sql", "CREATE TABLE b (id int);\n");
    let drift = migrate(&db, &["up", "--dir", &d]);
    expect_code(&drift, 7);
    let err = drift.stderr_text();
    let current = kubectl_pg::migration::source::checksum("CREATE TABLE a (id bigint);\n-- note\n");
    assert!(
        err.contains("checksum drift") && err.contains(&recorded) && err.contains(&current),
        "{err}"
    );
    assert!(
        !table_exists(&db, "b"),
        "nothing may run after a failed check"
    );
    let status = migrate(&db, &["status", "--dir", &d, "-o", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(doc["migrations"][0]["state"], "drifted");
    assert_eq!(doc["migrations"][0]["recorded_checksum"], recorded.as_str());

    // repair needs --yes, then records the new checksum with an audit line.
    expect_code(&migrate(&db, &["repair", "--version", "1", "--dir", &d]), 1);
    let repaired = migrate(&db, &["repair", "--version", "001", "--yes", "--dir", &d]);
    expect_code(&repaired, 0);
    let line = repaired.stdout_text();
    assert!(
        line.contains("repaired 001_a") && line.contains(&recorded) && line.contains(&current),
        "{line}"
    );
    expect_code(&migrate(&db, &["up", "--dir", &d]), 0);
    assert!(table_exists(&db, "b"));
}

#[test]
fn applied_version_missing_from_files_is_refused() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "001_a.up.sql", "CREATE TABLE a (id int);");
    write(dir.path(), "002_b.up.sql", "CREATE TABLE b (id int);");
    let d = dir_arg(&dir);
    expect_code(&migrate(&db, &["up", "--dir", &d]), 0);
    std::fs::remove_file(dir.path().join("002_b.up.sql")).unwrap();
    write(dir.path(), "003_c.up.sql", "CREATE TABLE c (id int);");
    let out = migrate(&db, &["up", "--dir", &d]);
    expect_code(&out, 7);
    assert!(out.stderr_text().contains("002_b"), "{}", out.describe());
    assert!(!table_exists(&db, "c"));
}

/// A directory of `files`, every one applied: the directory and its `--dir` argument.
fn applied(db: &TestDb, files: &[(&str, &str)]) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    for (name, body) in files {
        write(dir.path(), name, body);
    }
    let d = dir_arg(&dir);
    expect_code(&migrate(db, &["up", "--dir", &d]), 0);
    (dir, d)
}

/// An applied migration whose up file is gone while its down file stays is a missing
/// migration (7, as without any file), for `up`, `down` and `status` alike; a down file
/// without an up file that was never applied stays an unusable file (1).
#[test]
fn an_applied_up_file_missing_beside_its_down_file_is_exit_7() {
    let db = TestDb::new();
    let (dir, d) = applied(
        &db,
        &[
            ("001_a.up.sql", "CREATE TABLE a (id int);"),
            ("001_a.down.sql", "DROP TABLE a;"),
            ("002_b.up.sql", "CREATE TABLE b (id int);"),
            ("002_b.down.sql", "DROP TABLE b;"),
        ],
    );
    std::fs::remove_file(dir.path().join("002_b.up.sql")).unwrap();
    write(dir.path(), "003_c.up.sql", "CREATE TABLE c (id int);");
    for args in [&["up"][..], &["down"], &["up", "--dry-run"]] {
        let mut all = args.to_vec();
        all.extend(["--dir", &d]);
        let out = migrate(&db, &all);
        expect_code(&out, 7);
        assert!(
            out.stderr_text().contains("002_b") && out.stderr_text().contains("missing"),
            "{args:?}: {}",
            out.describe()
        );
    }
    let status = migrate(&db, &["status", "--dir", &d]);
    expect_code(&status, 7);
    assert!(
        status.stdout_text().contains("missing") && status.stdout_text().contains("003"),
        "{}",
        status.describe()
    );
    assert!(!table_exists(&db, "c") && table_exists(&db, "b"));
    // Never applied: the orphan down file is unusable, exit 1.
    write(dir.path(), "004_d.down.sql", "select 1;");
    std::fs::write(dir.path().join("002_b.up.sql"), "CREATE TABLE b (id int);").unwrap();
    let out = migrate(&db, &["up", "--dir", &d]);
    expect_code(&out, 1);
    assert!(
        out.stderr_text().contains("004_d.down.sql"),
        "{}",
        out.describe()
    );
}

/// One invalid file does not hide the others: status lists every valid migration, then names
/// the invalid file and exits 7.
#[test]
fn status_shows_the_valid_migrations_beside_an_invalid_file() {
    let db = TestDb::new();
    let (dir, d) = applied(
        &db,
        &[
            ("001_a.up.sql", "CREATE TABLE a (id int);"),
            ("002_b.up.sql", "CREATE TABLE b (id int);"),
        ],
    );
    write(dir.path(), "003_c.up.sql", "select 'open;");
    write(dir.path(), "004-bad.up.sql", "select 1;");
    let out = migrate(&db, &["status", "--dir", &d]);
    expect_code(&out, 7);
    let table = out.stdout_text();
    assert!(
        table.contains("001") && table.contains("002") && table.contains("applied"),
        "{}",
        out.describe()
    );
    let err = out.stderr_text();
    assert!(
        err.contains("2 migration file(s) cannot be used")
            && err.contains("003_c.up.sql")
            && err.contains("unterminated")
            && err.contains("004-bad.up.sql"),
        "{}",
        out.describe()
    );
    let doc = migrate(&db, &["status", "--dir", &d, "-o", "json"]);
    expect_code(&doc, 7);
    let doc: serde_json::Value = serde_json::from_slice(&doc.stdout).unwrap();
    let states: Vec<(&str, &str)> = doc["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m["state"].as_str().unwrap()))
        .collect();
    // The invalid files are marked, after the valid ones.
    assert_eq!(
        states,
        [
            ("a", "applied"),
            ("b", "applied"),
            ("003_c.up.sql", "invalid"),
            ("004-bad.up.sql", "invalid")
        ],
        "{doc}"
    );
    // up still refuses the set, as before: exit 1 naming the file.
    let up = migrate(&db, &["up", "--dir", &d]);
    expect_code(&up, 1);
    assert!(
        up.stderr_text().contains("003_c.up.sql"),
        "{}",
        up.describe()
    );
}

/// The history is taken from app users, never from its owner: an app user that runs its own
/// migrations (`--dsn`, on a server where it may create tables) keeps its history run after
/// run, and another app user gets nothing on it, default privileges notwithstanding.
#[test]
fn an_app_user_owning_its_history_keeps_it_and_no_other_app_user_gets_it() {
    let db = TestDb::new();
    let (owner, other) = (format!("{}_own", db.name), format!("{}_other", db.name));
    db.query(&format!(
        "CREATE ROLE {owner} LOGIN PASSWORD 'owner-password-0123'; \
         COMMENT ON ROLE {owner} IS 'kubectl-pg application user (readwrite) of database {db}'; \
         CREATE ROLE {other} LOGIN; \
         COMMENT ON ROLE {other} IS 'kubectl-pg application user (readonly) of database {db}'; \
         GRANT CREATE, USAGE ON SCHEMA public TO {owner}, {other}; \
         ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT SELECT ON TABLES TO {other}",
        db = db.name
    ));
    let dsn = db.dsn();
    let (_, at) = dsn.split_once('@').unwrap();
    let as_owner = format!("postgresql://{owner}:owner-password-0123@{at}");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "001_a.up.sql", "CREATE TABLE a (id int);");
    let d = dir_arg(&dir);
    for _ in 0..2 {
        let out = kpg(&["migrate", "up", "--dir", &d, "--dsn", &as_owner]);
        expect_code(&out, 0);
    }
    let privileges = |role: &str| {
        db.scalar(&format!(
            "SELECT string_agg(p, ',' ORDER BY p) FROM unnest(ARRAY['SELECT','INSERT','UPDATE','DELETE']) p \
             WHERE has_table_privilege('{role}', 'kubectl_pg_migrations', p)"
        ))
    };
    assert_eq!(
        privileges(&owner).as_deref(),
        Some("DELETE,INSERT,SELECT,UPDATE")
    );
    assert_eq!(privileges(&other), None);
    // The default privileges still reach the migrations' own tables.
    assert_eq!(
        db.scalar(&format!(
            "SELECT has_table_privilege('{other}', 'a', 'SELECT')::text"
        ))
        .as_deref(),
        Some("true")
    );
}

#[test]
fn out_of_order_needs_the_flag() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "001_a.up.sql", "CREATE TABLE a (id int);");
    write(dir.path(), "003_c.up.sql", "CREATE TABLE c (id int);");
    let d = dir_arg(&dir);
    expect_code(&migrate(&db, &["up", "--dir", &d]), 0);
    write(dir.path(), "002_b.up.sql", "CREATE TABLE b (id int);");
    let refused = migrate(&db, &["up", "--dir", &d]);
    expect_code(&refused, 7);
    assert!(
        refused.stderr_text().contains("002_b")
            && refused.stderr_text().contains("--allow-out-of-order")
    );
    expect_code(
        &migrate(&db, &["up", "--dir", &d, "--allow-out-of-order"]),
        0,
    );
    assert_eq!(applied_versions(&db), [1, 2, 3]);
}

#[test]
fn bad_files_exit_1_naming_the_file_and_apply_nothing() {
    let db = TestDb::new();
    // (files, text the error must contain, arguments)
    type Case<'a> = (&'a [(&'a str, &'a [u8])], &'a str, &'a [&'a str]);
    let cases: &[Case] = &[
        (
            &[("001_a.up.sql", b"select 1;"), ("1_b.up.sql", b"select 1;")],
            "also used by",
            &["up"],
        ),
        (
            &[
                ("001_a.up.sql", b"select 1;"),
                ("001-bad.up.sql", b"select 1;"),
            ],
            "001-bad.up.sql",
            &["up"],
        ),
        (
            &[
                ("001_a.up.sql", b"select 1;"),
                ("002_b.up.sql", b"select '\xff';"),
            ],
            "UTF-8",
            &["up"],
        ),
        (
            &[("001_a.up.sql", b"select 'open;")],
            "unterminated",
            &["up"],
        ),
        // kubectl-pg's own format asks for the directive (detected, such a file is
        // golang-migrate's, which runs it without a transaction: tests/e2e/formats.rs).
        (
            &[("001_a.up.sql", b"create index concurrently i on t (a);")],
            "CONCURRENTLY",
            &["up", "--format", "kubectl-pg"],
        ),
        (
            &[("001_a.up.sql", b"create index concurrently i on t (a);")],
            "no-transaction",
            &["up", "--dry-run", "--format", "kubectl-pg"],
        ),
        (
            &[("001_a.up.sql", b"create table a (i int); commit;")],
            "COMMIT",
            &["up"],
        ),
        (
            &[("001_a.down.sql", b"select 1;")],
            "without its up",
            &["up"],
        ),
    ];
    for (files, needle, args) in cases {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in *files {
            std::fs::write(dir.path().join(name), body).unwrap();
        }
        let d = dir_arg(&dir);
        let mut all = args.to_vec();
        all.extend(["--dir", &d]);
        let out = migrate(&db, &all);
        expect_code(&out, 1);
        assert!(
            out.stderr_text().contains(needle),
            "expected {needle:?}:\n{}",
            out.describe()
        );
        assert!(
            out.stderr_text().contains(&d),
            "the file is named:\n{}",
            out.describe()
        );
    }
    assert!(!table_exists(&db, "kubectl_pg_migrations"));

    // An up without its down is fine until down is asked for.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "001_a.up.sql", "CREATE TABLE a (id int);");
    let d = dir_arg(&dir);
    expect_code(&migrate(&db, &["up", "--dir", &d]), 0);
    let down = migrate(&db, &["down", "--dir", &d]);
    expect_code(&down, 1);
    assert!(
        down.stderr_text().contains("001_a.up.sql")
            && down.stderr_text().contains("no down migration")
    );
    assert!(table_exists(&db, "a"));
}

#[test]
fn a_failing_migration_is_not_applied_at_all() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "001_a.up.sql", "CREATE TABLE a (id int);");
    write(
        dir.path(),
        "002_b.up.sql",
        "CREATE TABLE b (id int);\nINSERT INTO b VALUES (1);\n\nSELECT * FROM no_such_table;\n",
    );
    write(dir.path(), "003_c.up.sql", "CREATE TABLE c (id int);");
    let out = migrate(&db, &["up", "--dir", &dir_arg(&dir)]);
    expect_code(&out, 7);
    let err = out.stderr_text();
    assert!(
        err.contains("002_b") && err.contains("line 4") && err.contains("no_such_table"),
        "{err}"
    );
    assert!(err.contains("rolled back"), "{err}");
    assert_eq!(applied_versions(&db), [1]);
    assert!(!table_exists(&db, "b") && !table_exists(&db, "c"));
}

#[test]
fn statement_timeout_applies_inside_migrations() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "001_slow.up.sql",
        "CREATE TABLE s (id int);\nSELECT pg_sleep(5);\n",
    );
    let out = migrate(
        &db,
        &[
            "up",
            "--dir",
            &dir_arg(&dir),
            "--statement-timeout",
            "200ms",
        ],
    );
    expect_code(&out, 7);
    assert!(
        out.stderr_text().contains("statement timeout"),
        "{}",
        out.describe()
    );
    assert!(!table_exists(&db, "s"));
}

#[test]
fn lock_timeout_names_the_holder() {
    let db = TestDb::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let holder = runtime.block_on(async {
        let mut config: tokio_postgres::Config = db.dsn().parse().unwrap();
        config.application_name("lock-holder-test");
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let sql = format!(
            "SELECT pg_advisory_lock({})",
            kubectl_pg::migration::history::LOCK_KEY_SQL
        );
        client.simple_query(&sql).await.unwrap();
        let pid = client
            .simple_query("SELECT pg_backend_pid()")
            .await
            .unwrap();
        let pid = match &pid[1] {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).unwrap().to_string(),
            _ => panic!(),
        };
        (client, pid)
    });
    let out = migrate(&db, &["up", "--lock-timeout", "300ms"]);
    expect_code(&out, 7);
    let err = out.stderr_text();
    assert!(
        err.contains("migration lock") && err.contains(&format!("pid {}", holder.1)),
        "{err}"
    );
    assert!(
        err.contains("lock-holder-test")
            && err.contains("127.0.0.1")
            && err.contains("connected since"),
        "{err}"
    );
    assert!(!table_exists(&db, "users"));
    drop(holder);
}

#[test]
fn baseline_records_an_existing_schema() {
    let db = TestDb::new();
    expect_code(&migrate(&db, &["up", "--to", "3"]), 0);
    db.query("DROP TABLE kubectl_pg_migrations");
    let out = migrate(&db, &["baseline", "--version", "3"]);
    expect_code(&out, 0);
    assert!(
        out.stdout_text().contains("baselined 003_progress"),
        "{}",
        out.describe()
    );
    assert_eq!(applied_versions(&db), [1, 2, 3]);
    let status: serde_json::Value =
        serde_json::from_slice(&migrate(&db, &["status", "-o", "json"]).stdout).unwrap();
    assert_eq!(status["migrations"][0]["state"], "baseline");
    // The rest applies on top; a second baseline is refused.
    expect_code(&migrate(&db, &["up"]), 0);
    assert_eq!(applied_versions(&db), [1, 2, 3, 4, 5, 6]);
    expect_code(&migrate(&db, &["baseline", "--version", "6"]), 7);
}

#[test]
fn create_writes_the_next_numbered_pair() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir_arg(&dir);
    let first = kpg(&["migrate", "create", "add_tags", "--dir", &d]);
    expect_code(&first, 0);
    assert!(
        dir.path().join("001_add_tags.up.sql").exists()
            && dir.path().join("001_add_tags.down.sql").exists()
    );
    write(dir.path(), "0041_x.up.sql", "select 1;");
    expect_code(&kpg(&["migrate", "create", "more", "--dir", &d]), 0);
    assert!(
        dir.path().join("0042_more.up.sql").exists(),
        "keeps the widest numbering"
    );
    expect_code(&kpg(&["migrate", "create", "bad name", "--dir", &d]), 1);
    expect_code(&kpg(&["migrate", "create", "x"]), 1);
}

#[test]
fn concurrent_runners_apply_each_migration_exactly_once() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "001_log.up.sql",
        "CREATE TABLE run_log (version int NOT NULL);",
    );
    for v in 2..=20 {
        // No IF NOT EXISTS: a second application would fail the run.
        write(
            dir.path(),
            &format!("{v:03}_m.up.sql"),
            &format!("CREATE TABLE t{v} (id int);\nINSERT INTO run_log VALUES ({v});\n"),
        );
    }
    let d = dir_arg(&dir);
    let dsn = db.dsn();
    let children: Vec<_> = (0..8)
        .map(|_| {
            kpg_command(&["migrate", "up", "--dir", &d, "--dsn", &dsn])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut applied_total = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        expect_code(&out, 0);
        applied_total += out.stdout_text().matches("applied 0").count();
    }
    assert_eq!(
        applied_total, 20,
        "every migration applied by exactly one runner"
    );
    assert_eq!(applied_versions(&db), (1..=20).collect::<Vec<_>>());
    assert_eq!(
        db.scalar("SELECT count(*) = count(DISTINCT version) AND count(*) = 19 FROM run_log")
            .as_deref(),
        Some("t")
    );
}

#[test]
fn killed_backends_mid_run_are_survived_without_double_or_half_application() {
    use rand::{Rng, SeedableRng};
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "001_log.up.sql",
        "CREATE TABLE run_log (version int NOT NULL);",
    );
    for v in 2..=50 {
        write(
            dir.path(),
            &format!("{v:03}_m.up.sql"),
            &format!("CREATE TABLE t{v} (id int);\nSELECT pg_sleep(0.01);\nINSERT INTO run_log VALUES ({v});\n"),
        );
    }
    let seed: u64 = rand::rng().random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut child = kpg_command(&["migrate", "up", "--dir", &dir_arg(&dir), "--dsn", &db.dsn()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let kill_sql = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = 'kubectl-pg' AND datname = '{}'",
        db.name
    );
    let mut kills = 0;
    while kills < 12 && child.try_wait().unwrap().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(rng.random_range(20..90)));
        if db.scalar(&kill_sql).as_deref() != Some("0") {
            kills += 1;
        }
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.code(),
        0,
        "seed {seed}, {kills} kills\n{}",
        out.describe()
    );
    assert!(
        kills >= 3,
        "the run ended before enough kills (seed {seed}, {kills})"
    );
    assert!(
        out.stderr_text().contains("reconnected"),
        "seed {seed}\n{}",
        out.describe()
    );
    assert_eq!(
        applied_versions(&db),
        (1..=50).collect::<Vec<_>>(),
        "seed {seed}"
    );
    assert_eq!(
        db.scalar("SELECT count(*) = 49 AND count(DISTINCT version) = 49 FROM run_log")
            .as_deref(),
        Some("t"),
        "seed {seed}"
    );
    let tables = db.scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename ~ '^t[0-9]+$'",
    );
    assert_eq!(tables.as_deref(), Some("49"), "seed {seed}");
}

#[test]
fn a_no_transaction_migration_resumes_at_the_failed_statement() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "001_idx.up.sql",
        "-- kubectl-pg:no-transaction\n\
         CREATE TABLE items (code text);\n\
         INSERT INTO items VALUES ('a'), ('a');\n\
         CREATE UNIQUE INDEX CONCURRENTLY items_code ON items (code);\n\
         CREATE INDEX CONCURRENTLY items_code_len ON items (length(code));\n",
    );
    write(dir.path(), "001_idx.down.sql", "DROP TABLE items;");
    let d = dir_arg(&dir);
    let plan = migrate(&db, &["up", "--dir", &d, "--dry-run"]);
    expect_code(&plan, 0);
    assert!(
        plan.stdout_text().contains("no-transaction")
            && plan
                .stdout_text()
                .contains("line 4: CREATE INDEX CONCURRENTLY"),
        "{}",
        plan.describe()
    );

    let failed = migrate(&db, &["up", "--dir", &d]);
    expect_code(&failed, 7);
    let err = failed.stderr_text();
    assert!(
        err.contains("line 4") && err.contains("statement #3"),
        "{err}"
    );
    assert!(
        err.contains("public.items_code") && err.contains("INVALID"),
        "{err}"
    );
    assert!(applied_versions(&db).is_empty());
    let status: serde_json::Value =
        serde_json::from_slice(&migrate(&db, &["status", "--dir", &d, "-o", "json"]).stdout)
            .unwrap();
    assert_eq!(status["migrations"][0]["state"], "partial");
    assert_eq!(status["migrations"][0]["statements_done"], 2);

    // Fix the data and the invalid index, run again: statements 1 and 2 must not run twice.
    db.query("DELETE FROM items; INSERT INTO items VALUES ('a'), ('b'); DROP INDEX items_code;");
    let resumed = migrate(&db, &["up", "--dir", &d]);
    expect_code(&resumed, 0);
    assert!(
        resumed
            .stderr_text()
            .contains("resuming 001_idx at statement 3"),
        "{}",
        resumed.describe()
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM items").as_deref(),
        Some("2")
    );
    assert_eq!(applied_versions(&db), [1]);
    assert_eq!(
        db.scalar("SELECT count(*) FROM pg_index WHERE NOT indisvalid")
            .as_deref(),
        Some("0")
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM kubectl_pg_migration_progress")
            .as_deref(),
        Some("0")
    );
}

#[test]
fn a_concurrent_index_left_invalid_is_never_recorded_as_applied() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let file = |index: &str| {
        format!(
            "-- kubectl-pg:no-transaction\n\
             CREATE TABLE items (code text);\n\
             INSERT INTO items VALUES ('a'), ('a');\n\
             {index};\n"
        )
    };
    write(
        dir.path(),
        "001_idx.up.sql",
        &file("CREATE UNIQUE INDEX CONCURRENTLY items_code ON items (code)"),
    );
    let d = dir_arg(&dir);
    expect_code(&migrate(&db, &["up", "--dir", &d]), 7);
    // The statement "fixed" with IF NOT EXISTS, the invalid index still there: the build is
    // skipped, the statement succeeds, and the index stays INVALID. Not applied.
    write(
        dir.path(),
        "001_idx.up.sql",
        &file("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS items_code ON items (code)"),
    );
    let out = migrate(&db, &["up", "--dir", &d]);
    expect_code(&out, 7);
    let err = out.stderr_text();
    assert!(
        err.contains("public.items_code is INVALID") && err.contains("DROP INDEX CONCURRENTLY"),
        "{err}"
    );
    assert!(applied_versions(&db).is_empty());
    // Fixed for real: the next run resumes at the index and records it.
    db.query(
        "DELETE FROM items WHERE ctid <> (SELECT min(ctid) FROM items); DROP INDEX items_code;",
    );
    expect_code(&migrate(&db, &["up", "--dir", &d]), 0);
    assert_eq!(applied_versions(&db), [1]);
    assert_eq!(
        db.scalar("SELECT count(*) FROM pg_index WHERE NOT indisvalid")
            .as_deref(),
        Some("0")
    );
}

#[test]
fn connection_failures_exit_8() {
    let port = crate::pg::free_port();
    let out = kpg(&[
        "migrate",
        "up",
        "--dsn",
        &format!("postgresql://u:p@127.0.0.1:{port}/db?connect_timeout=1"),
    ]);
    expect_code(&out, 8);
    assert!(
        out.stderr_text()
            .contains(&format!("u@127.0.0.1:{port}/db")),
        "{}",
        out.describe()
    );
    assert!(
        !out.stderr_text().contains(":p@"),
        "never print the password"
    );

    let server = crate::pg::server();
    let wrong = format!(
        "postgresql://postgres:wrong@127.0.0.1:{}/postgres?sslmode=disable",
        server.port
    );
    let out = kpg(&["migrate", "status", "--dsn", &wrong]);
    expect_code(&out, 8);
    assert!(
        out.stderr_text().contains("password authentication failed"),
        "{}",
        out.describe()
    );
}

#[test]
fn tls_modes_follow_libpq() {
    let db = TestDb::new();
    let server = crate::pg::server();
    let base = format!(
        "postgresql://postgres:{}@127.0.0.1:{}/{}",
        crate::pg::PASSWORD,
        server.port,
        db.name
    );
    let cert = server.cert.display().to_string();
    server.require_tls(&db.name);
    // Without TLS the server now refuses; sslmode=require encrypts without checking the certificate.
    let plain = kpg(&[
        "migrate",
        "status",
        "--dsn",
        &format!("{base}?sslmode=disable"),
    ]);
    expect_code(&plain, 8);
    assert!(
        plain.stderr_text().contains("pg_hba.conf"),
        "{}",
        plain.describe()
    );
    expect_code(
        &kpg(&[
            "migrate",
            "up",
            "--to",
            "1",
            "--dsn",
            &format!("{base}?sslmode=require"),
        ]),
        0,
    );
    // libpq's default (prefer) takes TLS when offered.
    expect_code(&kpg(&["migrate", "status", "--dsn", &base]), 0);
    let full = kpg(&[
        "migrate",
        "status",
        "--dsn",
        &format!("{base}?sslmode=verify-full&sslrootcert={cert}"),
    ]);
    expect_code(&full, 0);
    // The certificate is not trusted without sslrootcert (system roots only).
    let untrusted = kpg(&[
        "migrate",
        "status",
        "--dsn",
        &format!("{base}?sslmode=verify-full"),
    ]);
    expect_code(&untrusted, 8);
    // verify-ca skips the host name check; verify-full does not. The certificate names
    // 127.0.0.1 and localhost; hostaddr connects while host names another server.
    let named = |mode: &str| {
        format!(
            "host=db.example.invalid hostaddr=127.0.0.1 port={} user=postgres password={} dbname={} sslmode={mode} sslrootcert={cert}",
            server.port,
            crate::pg::PASSWORD,
            db.name
        )
    };
    expect_code(
        &kpg(&["migrate", "status", "--dsn", &named("verify-ca")]),
        0,
    );
    let mismatch = kpg(&["migrate", "status", "--dsn", &named("verify-full")]);
    expect_code(&mismatch, 8);
    assert!(
        mismatch
            .stderr_text()
            .to_lowercase()
            .contains("certificate"),
        "{}",
        mismatch.describe()
    );
}

/// SIGINT or SIGTERM during a migration cancels its statement through PostgreSQL's cancel
/// request: the migration rolls back, nothing commits after the command exits, and the exit
/// code is the shell's (130, 143).
#[test]
fn a_signal_cancels_the_migration_in_flight() {
    for (signal, code) in [("-INT", 130), ("-TERM", 143)] {
        let db = TestDb::new();
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "001_a.up.sql", "CREATE TABLE a (id int);\n");
        write(
            dir.path(),
            "002_b.up.sql",
            "CREATE TABLE b (id int);\nSELECT pg_sleep(60);\n",
        );
        let dsn = db.dsn();
        let child = crate::kpg_command(&["migrate", "up", "--dir", &dir_arg(&dir), "--dsn", &dsn])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait on the condition: the sleep is running in the migration's transaction.
        let started = std::time::Instant::now();
        while db
            .scalar("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()")
            .as_deref()
            != Some("1")
        {
            assert!(started.elapsed() < std::time::Duration::from_secs(30), "the migration never started");
            std::thread::yield_now();
        }
        let kill = std::process::Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let out = child.wait_with_output().unwrap();
        expect_code(&out, code);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "cancelled, not waited out"
        );
        assert!(
            out.stderr_text().contains("interrupted"),
            "{}",
            out.describe()
        );
        assert_eq!(applied_versions(&db), [1]);
        assert!(!table_exists(&db, "b"), "nothing of 002 committed");
        let busy = db.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()",
        );
        assert_eq!(busy.as_deref(), Some("0"), "no statement left running");
    }
}

/// What one migration does to its session (search_path, role, prepared statements, temporary
/// tables, LISTEN) is reset before the next, in both modes, and the reset keeps the advisory
/// lock that serialises runners.
#[test]
fn session_state_never_leaks_from_one_migration_into_the_next() {
    let db = TestDb::new();
    let role = format!("{}_owner", db.name);
    db.query(&format!(
        "CREATE SCHEMA other_schema; CREATE ROLE {role}; \
         GRANT ALL ON SCHEMA public, other_schema TO {role}"
    ));
    let dir = tempfile::tempdir().unwrap();
    let leaks = format!(
        "SET search_path TO other_schema;\nSET ROLE {role};\nCREATE TABLE in_other (id int);\n\
         PREPARE leak AS SELECT 1;\nCREATE TEMP TABLE scratch (id int);\nLISTEN leak_channel;\n"
    );
    // The migration's own session, not the engine's: the lock holder must be this backend.
    let clean = "DO $$BEGIN\n\
          IF current_user <> session_user THEN RAISE EXCEPTION 'role leaked: %', current_user; END IF;\n\
          IF current_schema() <> 'public' THEN RAISE EXCEPTION 'search_path leaked: %', current_schema(); END IF;\n\
          IF NOT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()) \
             THEN RAISE EXCEPTION 'the migration lock was released'; END IF;\n\
        END$$;\n\
        PREPARE leak AS SELECT 2;\nCREATE TEMP TABLE scratch (id int);\n";
    write(dir.path(), "001_leaks.up.sql", &leaks);
    write(
        dir.path(),
        "002_plain.up.sql",
        &format!("{clean}CREATE TABLE plain (id int);\n"),
    );
    write(
        dir.path(),
        "003_leaks_nt.up.sql",
        &format!(
            "-- kubectl-pg:no-transaction\n{}",
            leaks.replace("in_other", "in_other_nt")
        ),
    );
    write(
        dir.path(),
        "004_plain_nt.up.sql",
        &format!("-- kubectl-pg:no-transaction\n{clean}CREATE TABLE plain_nt (id int);\n"),
    );
    let out = migrate(&db, &["up", "--dir", &dir_arg(&dir)]);
    expect_code(&out, 0);
    assert_eq!(applied_versions(&db), [1, 2, 3, 4]);
    let placed = db.query(
        "SELECT c.relname, n.nspname, pg_get_userbyid(c.relowner) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relname IN ('in_other', 'in_other_nt', 'plain', 'plain_nt') ORDER BY 1",
    );
    let placed: Vec<String> = placed
        .into_iter()
        .map(|r| {
            r.into_iter()
                .map(Option::unwrap)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    assert_eq!(
        placed,
        [
            format!("in_other other_schema {role}"),
            format!("in_other_nt other_schema {role}"),
            "plain public postgres".to_string(),
            "plain_nt public postgres".to_string(),
        ]
    );
    // The history is written by the user who connected, not by the role a migration took.
    let by = db.query("SELECT DISTINCT split_part(applied_by, ' ', 1) FROM kubectl_pg_migrations");
    assert_eq!(by, [[Some("postgres".to_string())]]);
    db.query(&format!("DROP OWNED BY {role}; DROP ROLE {role}"));
}

/// pg_dump's files empty `search_path`; the history is still found (schema-qualified), and the
/// next migration runs with the session's own search_path again.
#[test]
fn a_pg_dump_style_file_finds_the_history_in_public_and_in_another_schema() {
    for schema in ["public", "App Schema"] {
        let db = TestDb::new();
        if schema != "public" {
            db.query(&format!(
                "CREATE SCHEMA \"{schema}\"; ALTER DATABASE {} SET search_path TO \"{schema}\"",
                db.name
            ));
        }
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "001_dump.up.sql",
            "--\n-- PostgreSQL database dump\n--\nSET statement_timeout = 0;\nSET client_encoding = 'UTF8';\n\
             SELECT pg_catalog.set_config('search_path', '', false);\n\
             CREATE TABLE public.dumped (id integer NOT NULL);\n\
             ALTER TABLE ONLY public.dumped ADD CONSTRAINT dumped_pkey PRIMARY KEY (id);\n",
        );
        write(
            dir.path(),
            "002_after.up.sql",
            "CREATE TABLE after_dump (id int);\n",
        );
        let d = dir_arg(&dir);
        let out = migrate(&db, &["up", "--dir", &d]);
        expect_code(&out, 0);
        let where_ = db.query(
            "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relname IN ('after_dump', 'kubectl_pg_migrations', 'kubectl_pg_migration_progress') \
             ORDER BY c.relname",
        );
        assert_eq!(
            where_,
            vec![vec![Some(schema.to_string())]; 3],
            "{schema}: {}",
            out.describe()
        );
        assert_eq!(applied_versions(&db), [1, 2], "{schema}");
        let status: serde_json::Value =
            serde_json::from_slice(&migrate(&db, &["status", "--dir", &d, "-o", "json"]).stdout)
                .unwrap();
        assert_eq!(status["applied"], 2, "{schema}: {status}");
        // repair and baseline name the same tables.
        write(
            dir.path(),
            "002_after.up.sql",
            "CREATE TABLE after_dump (id int); -- reviewed\n",
        );
        expect_code(&migrate(&db, &["up", "--dir", &d]), 7);
        expect_code(
            &migrate(&db, &["repair", "--version", "2", "--yes", "--dir", &d]),
            0,
        );
        expect_code(&migrate(&db, &["up", "--dir", &d]), 0);
        db.query("DELETE FROM kubectl_pg_migrations");
        expect_code(
            &migrate(&db, &["baseline", "--version", "2", "--dir", &d]),
            0,
        );
        assert_eq!(applied_versions(&db), [1, 2], "{schema}");
    }
}

fn progress_row(db: &TestDb) -> Vec<Vec<Option<String>>> {
    db.query(
        "SELECT statements_done::text, array_length(statement_checksums, 1)::text \
         FROM kubectl_pg_migration_progress",
    )
}

const NT_BROKEN: &str = "-- kubectl-pg:no-transaction\n\
    CREATE TABLE n1 (id int);\n\
    CREATE TABLE n2 (id no_such_type);\n\
    CREATE TABLE n3 (id int);\n";
const NT_FIXED: &str = "-- kubectl-pg:no-transaction\n\
    CREATE TABLE n1 (id int);\n\
    CREATE TABLE n2 (id int);\n\
    CREATE TABLE n3 (id int);\n";

/// A failed no-transaction migration: its applied statements are what the checksum protects.
/// Fixing the failed statement resumes there; changing an applied one is refused, naming it,
/// and `repair` (after undoing by hand) lets the file run again from the start.
#[test]
fn a_fixed_no_transaction_migration_resumes_and_a_changed_applied_statement_is_refused() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir_arg(&dir);
    write(dir.path(), "001_nt.up.sql", NT_BROKEN);
    let failed = migrate(&db, &["up", "--dir", &d]);
    expect_code(&failed, 7);
    assert!(
        failed.stderr_text().contains("line 3") && failed.stderr_text().contains("statement #2"),
        "{}",
        failed.describe()
    );
    assert_eq!(
        progress_row(&db),
        [[Some("1".to_string()), Some("1".to_string())]]
    );
    // repair explains instead of saying "not applied".
    let repair = migrate(&db, &["repair", "--version", "1", "--yes", "--dir", &d]);
    expect_code(&repair, 0);
    assert!(
        repair.stdout_text().contains("nothing to repair")
            && repair.stdout_text().contains("resumes at statement #2"),
        "{}",
        repair.describe()
    );

    // The usual fix: statement 2 changes; statement 1 must not run again (it has no IF NOT EXISTS).
    write(dir.path(), "001_nt.up.sql", NT_FIXED);
    let resumed = migrate(&db, &["up", "--dir", &d]);
    expect_code(&resumed, 0);
    assert!(
        resumed
            .stderr_text()
            .contains("resuming 001_nt at statement 2"),
        "{}",
        resumed.describe()
    );
    assert!(table_exists(&db, "n2") && table_exists(&db, "n3"));
    let status: serde_json::Value =
        serde_json::from_slice(&migrate(&db, &["status", "--dir", &d, "-o", "json"]).stdout)
            .unwrap();
    let entry = &status["migrations"][0];
    assert_eq!(entry["state"], "applied", "{status}");
    let fixed_checksum = kubectl_pg::migration::source::checksum(NT_FIXED);
    assert_eq!(entry["checksum"], fixed_checksum.as_str());
    assert_eq!(
        db.scalar("SELECT checksum FROM kubectl_pg_migrations WHERE version = 1"),
        Some(fixed_checksum)
    );
    assert!(progress_row(&db).is_empty());

    // Changing an applied statement instead is refused, naming it.
    let db = TestDb::new();
    write(dir.path(), "001_nt.up.sql", NT_BROKEN);
    expect_code(&migrate(&db, &["up", "--dir", &d]), 7);
    let changed_first = NT_FIXED.replace("n1 (id int)", "n1 (id bigint)");
    write(dir.path(), "001_nt.up.sql", &changed_first);
    let refused = migrate(&db, &["up", "--dir", &d]);
    expect_code(&refused, 7);
    let err = refused.stderr_text();
    assert!(
        err.contains("001_nt")
            && err.contains("statement #1 (line 2) changed")
            && err.contains("repair --version 001"),
        "{err}"
    );
    assert!(!table_exists(&db, "n2"));
    // Undo by hand, repair: the progress is forgotten and the file runs from its first statement.
    db.query("DROP TABLE n1");
    let repair = migrate(&db, &["repair", "--version", "1", "--yes", "--dir", &d]);
    expect_code(&repair, 0);
    assert!(
        repair.stdout_text().contains("forgot the progress"),
        "{}",
        repair.describe()
    );
    expect_code(&migrate(&db, &["up", "--dir", &d]), 0);
    assert_eq!(
        db.scalar("SELECT data_type FROM information_schema.columns WHERE table_name = 'n1'")
            .as_deref(),
        Some("bigint")
    );
    assert_eq!(applied_versions(&db), [1]);
}

/// A progress row written before statement checksums existed (no column): the whole file is
/// compared, as before; the next run adds the column and records them.
#[test]
fn an_old_progress_table_without_statement_checksums_still_works() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir_arg(&dir);
    write(dir.path(), "001_nt.up.sql", NT_BROKEN);
    expect_code(&migrate(&db, &["up", "--dir", &d]), 7);
    db.query("ALTER TABLE kubectl_pg_migration_progress DROP COLUMN statement_checksums");
    let status: serde_json::Value =
        serde_json::from_slice(&migrate(&db, &["status", "--dir", &d, "-o", "json"]).stdout)
            .unwrap();
    assert_eq!(status["migrations"][0]["state"], "partial", "{status}");
    write(dir.path(), "001_nt.up.sql", NT_FIXED);
    let refused = migrate(&db, &["up", "--dir", &d]);
    expect_code(&refused, 7);
    assert!(
        refused
            .stderr_text()
            .contains("without per-statement checksums"),
        "{}",
        refused.describe()
    );
    // The column is back; the unchanged file's run records the applied statement's checksum.
    write(dir.path(), "001_nt.up.sql", NT_BROKEN);
    expect_code(&migrate(&db, &["up", "--dir", &d]), 7);
    assert_eq!(
        progress_row(&db),
        [[Some("1".to_string()), Some("1".to_string())]]
    );
    write(dir.path(), "001_nt.up.sql", NT_FIXED);
    expect_code(&migrate(&db, &["up", "--dir", &d]), 0);
    assert_eq!(applied_versions(&db), [1]);
}

/// A reconnect keeps the tables of the run's first session: here 001 creates the `"$user"`
/// schema (so a new session's current schema changes), and 002 loses its session once, after
/// its first statement. The run resumes 002 at statement 2 in public's history; nothing reruns.
#[test]
fn a_reconnect_keeps_the_history_schema_of_the_run() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "001_user_schema.up.sql",
        "CREATE SCHEMA postgres;\nCREATE TABLE public.kill_marker (id int);\n",
    );
    write(
        dir.path(),
        "002_killed.up.sql",
        "-- kubectl-pg:no-transaction\n\
         CREATE TABLE public.nt_one (id int);\n\
         DO $$BEGIN\n\
           IF NOT EXISTS (SELECT FROM public.kill_marker) THEN\n\
             INSERT INTO public.kill_marker VALUES (1);\n\
             COMMIT;\n\
             PERFORM pg_terminate_backend(pg_backend_pid());\n\
           END IF;\n\
         END$$;\n\
         CREATE TABLE public.nt_two (id int);\n",
    );
    let out = migrate(&db, &["up", "--dir", &dir_arg(&dir)]);
    expect_code(&out, 0);
    let err = out.stderr_text();
    assert!(
        err.contains("reconnected") && err.contains("resuming 002_killed at statement 2"),
        "{}",
        out.describe()
    );
    let versions = db.query("SELECT version::text FROM public.kubectl_pg_migrations ORDER BY 1");
    assert_eq!(
        versions,
        [[Some("1".to_string())], [Some("2".to_string())]],
        "{}",
        out.describe()
    );
    assert_eq!(
        db.scalar("SELECT to_regclass('postgres.kubectl_pg_migrations') IS NULL AND to_regclass('public.nt_two') IS NOT NULL")
            .as_deref(),
        Some("t")
    );
}
