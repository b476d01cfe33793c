//! dump and restore on the real control plane: pg_dump, pg_restore and psql in the pods
//! through exec, files that are complete or absent, restores that are all or nothing, and a
//! pipe between two namespaces with the LearnFlow schema and data.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::scope::Scope;
use crate::{expect_code, OutputExt};

const TIMEOUT: &str = "120s";

/// LearnFlow rows: users, exercises, progress and submissions that reference them.
pub const SEED: &str = "
insert into users (username, email, role)
  select 'user' || i, 'user' || i || '@example.com', (array['student','teacher','admin'])[1 + i % 3]
  from generate_series(1, 120) i;
insert into exercises (title, difficulty, test_cases, topic)
  select 'exercise ' || i, (array['beginner','intermediate','advanced'])[1 + i % 3],
         jsonb_build_object('cases', i), 'topic' || (i % 7)
  from generate_series(1, 40) i;
insert into progress (user_id, topic)
  select u.id, 'topic' || (u.id % 7) from users u;
insert into submissions (user_id, exercise_id, code)
  select u.id, e.id, 'print(' || u.id || ')' from users u join exercises e on e.id % 10 = u.id % 10;
";

/// Row counts of the LearnFlow tables and the migration history, one line.
pub const COUNTS: &str =
    "select (select count(*) from users) || ',' || (select count(*) from exercises) || ',' \
    || (select count(*) from progress) || ',' || (select count(*) from submissions) || ',' \
    || (select count(*) from kubectl_pg_migrations)";

pub fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.describe()))
}

/// Installs `release` in `ns` with the LearnFlow migrations, in the background.
pub fn spawn_install(
    scope: &Scope,
    ns: &str,
    release: &str,
    extra: &[&str],
) -> std::process::Child {
    let mut args = vec![
        "install",
        release,
        "-n",
        ns,
        "--migrate",
        "--timeout",
        TIMEOUT,
        "-o",
        "json",
    ];
    args.extend_from_slice(extra);
    scope
        .kpg_command(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

pub fn installed(child: std::process::Child) {
    let out = child.wait_with_output().unwrap();
    expect_code(&out, 0);
    assert_eq!(json(&out)["phase"], "Healthy", "{}", out.describe());
}

/// One query's result through `kubectl pg psql`.
pub fn query(scope: &Scope, ns: &str, sql: &str) -> String {
    query_db(scope, ns, "learnflow", sql)
}

pub fn query_db(scope: &Scope, ns: &str, db: &str, sql: &str) -> String {
    let out = scope.kpg(&[
        "psql",
        "-n",
        ns,
        "--",
        "-d",
        db,
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        sql,
    ]);
    expect_code(&out, 0);
    out.stdout_text().trim().to_string()
}

fn partial_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("dump") || n.contains("partial"))
        .collect()
}

/// Waits until `check` holds, polling, or panics after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One field of an object in `ns`, by kubectl's jsonpath.
fn field(scope: &Scope, kind: &str, ns: &str, name: &str, path: &str) -> String {
    let out = scope.kubectl(&[
        "get",
        kind,
        name,
        "-n",
        ns,
        "-o",
        &format!("jsonpath={path}"),
    ]);
    assert!(out.status.success(), "{}", out.describe());
    out.stdout_text()
}

#[test]
fn dump_and_restore_between_namespaces() {
    let scope = Scope::new("kpg-dump-a");
    let a = scope.ns.clone();
    let b = scope.another_namespace("kpg-dump-b");
    let (ia, ib) = (
        spawn_install(&scope, &a, "postgres", &[]),
        spawn_install(&scope, &b, "postgres", &[]),
    );
    installed(ia);
    installed(ib);
    let seeded = scope.kpg_stdin(
        &["psql", "-n", &a, "--", "-v", "ON_ERROR_STOP=1", "-q"],
        SEED,
    );
    expect_code(&seeded, 0);
    let counts = query(&scope, &a, COUNTS);
    assert_eq!(counts, "120,40,120,480,6");
    assert_eq!(query(&scope, &b, COUNTS), "0,0,0,0,6");

    // A custom archive in a file: mode 0600, the PGDMP magic, a DumpResult document.
    let dir = scope.dir.path().join("dumps");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("learnflow.dump");
    let file_s = file.to_str().unwrap();
    let dump = scope.kpg(&["dump", "-n", &a, "-f", file_s, "-o", "json"]);
    expect_code(&dump, 0);
    let doc = json(&dump);
    assert_eq!(doc["apiVersion"], "kubectl-pg/v1");
    assert_eq!(doc["kind"], "DumpResult");
    assert_eq!(doc["database"], "learnflow");
    assert_eq!(doc["format"], "custom");
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(doc["bytes"].as_u64().unwrap() as usize, bytes.len());
    assert!(bytes.starts_with(b"PGDMP"));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // The pipe: dump in a, restore into b, replacing what b's migrations created.
    let mut dump = scope
        .kpg_command(&["dump", "-n", &a])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let restore = scope
        .kpg_command(&["restore", "-n", &b, "--clean", "--yes", "-o", "json"])
        .stdin(dump.stdout.take().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let dumped = dump.wait_with_output().unwrap();
    expect_code(&dumped, 0);
    expect_code(&restore, 0);
    let doc = json(&restore);
    assert_eq!(doc["kind"], "RestoreResult");
    assert_eq!(doc["format"], "custom");
    assert_eq!(doc["input"], "-");
    assert_eq!(query(&scope, &b, COUNTS), counts);
    let migrations = scope.kpg(&["migrate", "status", "-n", &b, "-o", "json"]);
    expect_code(&migrations, 0);
    assert_eq!(json(&migrations)["migrations"].as_array().unwrap().len(), 6);

    // --clean off a terminal needs --yes, and changes nothing without it.
    let refused = scope.kpg(&["restore", "-n", &b, "-f", file_s, "--clean"]);
    expect_code(&refused, 1);
    assert!(
        refused.stderr_text().contains("--yes"),
        "{}",
        refused.describe()
    );

    // A restore that fails midway leaves the database as it was: a cut archive, after --clean
    // dropped everything, rolls back whole.
    let cut = dir.join("cut.dump");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    query(&scope, &b, "delete from submissions where id % 2 = 0");
    let before = query(&scope, &b, COUNTS);
    let failed = scope.kpg(&[
        "restore",
        "-n",
        &b,
        "-f",
        cut.to_str().unwrap(),
        "--clean",
        "--yes",
    ]);
    expect_code(&failed, 1);
    assert!(
        failed.stderr_text().contains("pg_restore failed"),
        "{}",
        failed.describe()
    );
    assert_eq!(
        query(&scope, &b, COUNTS),
        before,
        "a failed restore changes nothing"
    );
    // ... and so does a whole SQL script (pg_dump's end marker) whose last statement fails.
    let script = "insert into users (username, email) values ('late', 'late@example.com');\nselect no_such_column from users;\n\n-- PostgreSQL database dump complete\n";
    let failed = scope.kpg_stdin(&["restore", "-n", &b], script);
    expect_code(&failed, 1);
    assert!(
        failed.stderr_text().contains("no_such_column"),
        "psql's own message: {}",
        failed.describe()
    );
    assert_eq!(query(&scope, &b, COUNTS), before);

    // Plain SQL into another database; --clean is refused for a script.
    let plain = scope.kpg(&["dump", "-n", &a, "--format", "plain"]);
    expect_code(&plain, 0);
    assert!(plain.stdout_text().contains("CREATE TABLE public.users"));
    query(&scope, &b, "create database copy");
    let sql = dir.join("learnflow.sql");
    std::fs::write(&sql, &plain.stdout).unwrap();
    let sql_s = sql.to_str().unwrap();
    let clean_sql = scope.kpg(&[
        "restore", "-n", &b, "-d", "copy", "-f", sql_s, "--clean", "--yes",
    ]);
    expect_code(&clean_sql, 1);
    assert!(
        clean_sql.stderr_text().contains("custom-format"),
        "{}",
        clean_sql.describe()
    );
    let restored = scope.kpg(&["restore", "-n", &b, "-d", "copy", "-f", sql_s]);
    expect_code(&restored, 0);
    assert!(
        restored.stdout_text().contains("into database copy"),
        "{}",
        restored.describe()
    );
    assert_eq!(query_db(&scope, &b, "copy", COUNTS), counts);

    // Roles and every database.
    let all = scope.kpg(&["dump", "-n", &b, "--all"]);
    expect_code(&all, 0);
    let text = all.stdout_text();
    assert!(
        text.contains("CREATE ROLE postgres") && text.contains("CREATE DATABASE copy"),
        "{}",
        &text[..text.len().min(2000)]
    );
    let custom_all = scope.kpg(&["dump", "-n", &b, "--all", "--format", "custom"]);
    expect_code(&custom_all, 1);
    // pg_dump's own message, exit 1, and no file at all.
    let missing = dir.join("missing.dump");
    let failed = scope.kpg(&[
        "dump",
        "-n",
        &a,
        "-d",
        "nosuchdb",
        "-f",
        missing.to_str().unwrap(),
    ]);
    expect_code(&failed, 1);
    assert!(
        failed.stderr_text().contains("\"nosuchdb\" does not exist"),
        "{}",
        failed.describe()
    );
    assert!(!missing.exists());
    let left: Vec<String> = partial_files(&dir)
        .into_iter()
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // Ctrl-C while a script is still arriving: exit 130, its session ended, nothing committed.
    let before = query(&scope, &b, COUNTS);
    let mut restore = scope
        .kpg_command(&["restore", "-n", &b])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut script = restore.stdin.take().unwrap();
    {
        use std::io::Write;
        script
            .write_all(b"insert into users (username, email) values ('cut', 'cut@example.com');\n")
            .unwrap();
        // More than the head the kind is sniffed from, so the restore starts.
        script
            .write_all("-- more to come\n".repeat(5000).as_bytes())
            .unwrap();
        script.flush().unwrap();
    }
    // Wait on the condition: the insert ran, and the transaction waits for more of the script.
    let waiting =
        "select count(*) from pg_stat_activity where application_name like 'kubectl-pg-%' \
                   and state = 'idle in transaction' and query like '%cut@example.com%'";
    let started = Instant::now();
    while query(&scope, &b, waiting) != "1" {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the restore never ran its first statement"
        );
    }
    let kill = Command::new("kill")
        .args(["-INT", &restore.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    // The script's writer is still there: the restore must exit without waiting for its end.
    let out = crate::output_within(restore, Duration::from_secs(60));
    drop(script);
    expect_code(&out, 130);
    assert!(
        out.stderr_text().contains("rolled back"),
        "{}",
        out.describe()
    );
    assert_eq!(query(&scope, &b, COUNTS), before, "nothing committed");
    assert_eq!(
        query(
            &scope,
            &b,
            "select count(*) from users where username = 'cut'"
        ),
        "0"
    );
    let left = "select count(*) from pg_stat_activity where application_name like 'kubectl-pg-%'";
    assert_eq!(
        query(&scope, &b, left),
        "0",
        "the restore's session was ended"
    );
}

/// Holds an ACCESS EXCLUSIVE lock on users in a psql session in the pod until dropped, so a
/// pg_dump started meanwhile waits.
struct Lock<'a> {
    child: std::process::Child,
    scope: &'a Scope,
    ns: String,
}

impl<'a> Lock<'a> {
    fn hold(scope: &'a Scope, ns: &str) -> Lock<'a> {
        let child = scope
            .kpg_command(&["psql", "-n", ns, "--", "-q", "-v", "ON_ERROR_STOP=1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lock = Lock {
            child,
            scope,
            ns: ns.to_string(),
        };
        use std::io::Write;
        let stdin = lock.child.stdin.as_mut().unwrap();
        stdin
            .write_all(b"set application_name = 'test-lock';\nbegin;\nlock table users in access exclusive mode;\nselect pg_sleep(120);\n")
            .unwrap();
        stdin.flush().unwrap();
        lock
    }
}

impl Drop for Lock<'_> {
    fn drop(&mut self) {
        // The exec's process outlives its client: end the session on the server.
        query(
            self.scope,
            &self.ns,
            "select count(pg_terminate_backend(pid)) from pg_stat_activity where application_name = 'test-lock'",
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn waiting_dumps(scope: &Scope, ns: &str) -> usize {
    query(
        scope,
        ns,
        "select count(*) from pg_stat_activity where application_name like 'kubectl-pg-%' and wait_event_type = 'Lock'",
    )
    .parse()
    .unwrap_or(0)
}

#[test]
fn an_interrupted_or_broken_dump_leaves_no_file() {
    let scope = Scope::new("kpg-dump-int");
    let ns = scope.ns.clone();
    installed(spawn_install(&scope, &ns, "postgres", &[]));
    let dir = scope.dir.path().join("dumps");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("learnflow.dump");
    let start = |scope: &Scope| -> std::process::Child {
        scope
            .kpg_command(&["dump", "-n", &ns, "-f", file.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    // Ctrl-C while pg_dump waits for the lock: exit 130, no file under any name.
    let lock = Lock::hold(&scope, &ns);
    wait_until(Duration::from_secs(30), "the lock is held", || {
        query(&scope, &ns, "select count(*) from pg_locks where mode = 'AccessExclusiveLock' and relation = 'users'::regclass") == "1"
    });
    let dump = start(&scope);
    wait_until(Duration::from_secs(30), "pg_dump waits", || {
        waiting_dumps(&scope, &ns) == 1
    });
    assert!(
        !partial_files(&dir).is_empty(),
        "the temporary file exists meanwhile"
    );
    let pid = dump.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let out = dump.wait_with_output().unwrap();
    expect_code(&out, 130);
    assert_eq!(
        partial_files(&dir),
        Vec::<String>::new(),
        "{}",
        out.describe()
    );

    // pg_dump dies midway (its session is terminated): exit 1 with its message, no file.
    wait_until(
        Duration::from_secs(30),
        "the interrupted pg_dump is gone",
        || waiting_dumps(&scope, &ns) == 0,
    );
    let dump = start(&scope);
    wait_until(Duration::from_secs(30), "pg_dump waits", || {
        waiting_dumps(&scope, &ns) == 1
    });
    query(
        &scope,
        &ns,
        "select pg_terminate_backend(pid) from pg_stat_activity where application_name like 'kubectl-pg-%'",
    );
    let out = dump.wait_with_output().unwrap();
    expect_code(&out, 1);
    assert!(
        out.stderr_text().contains("pg_dump failed"),
        "{}",
        out.describe()
    );
    assert_eq!(partial_files(&dir), Vec::<String>::new());
    drop(lock);

    // Once the lock is gone the same dump succeeds.
    let out = start(&scope).wait_with_output().unwrap();
    expect_code(&out, 0);
    assert!(file.exists());

    restores_tell_the_truth(&scope, &ns, &dir, &file);
    files_written_through(&scope, &ns, &dir);
}

/// Runs the plugin without stdin; one that has not ended after a minute fails the test.
fn run_within(scope: &Scope, args: &[&str]) -> Output {
    let child = scope
        .kpg_command(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    crate::output_within(child, Duration::from_secs(60))
}

/// `-f` into a FIFO (its reader gets the dump, the FIFO stays), a device node made here
/// (written through, never replaced), and a symlink to an open descriptor (report's archive
/// on stdout, nothing appended).
fn files_written_through(scope: &Scope, ns: &str, dir: &std::path::Path) {
    let fifo = dir.join("pipe");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let copy = dir.join("from-pipe.bin");
    let reader = Command::new("sh")
        .args(["-c", "cat \"$0\" > \"$1\""])
        .arg(&fifo)
        .arg(&copy)
        .spawn()
        .unwrap();
    let out = run_within(
        scope,
        &["dump", "-n", ns, "-f", fifo.to_str().unwrap(), "-o", "json"],
    );
    expect_code(&out, 0);
    let reader = crate::output_within(reader, Duration::from_secs(10));
    assert!(reader.status.success());
    let bytes = std::fs::read(&copy).unwrap();
    assert!(bytes.starts_with(b"PGDMP"), "the reader got the dump");
    assert_eq!(json(&out)["bytes"].as_u64().unwrap() as usize, bytes.len());
    {
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo());
    }

    // report -f LINK, LINK -> /proc/self/fd/1: the archive on the pipe that is stdout.
    let link = dir.join("stdout");
    std::os::unix::fs::symlink("/proc/self/fd/1", &link).unwrap();
    let report = scope.kpg(&["report", "-n", ns, "-f", link.to_str().unwrap()]);
    expect_code(&report, 0);
    assert!(report.stdout.starts_with(&[0x1f, 0x8b]), "a gzip on stdout");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let listed = Command::new("tar")
        .args(["-tzf", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut tar| {
            use std::io::Write;
            tar.stdin.take().unwrap().write_all(&report.stdout)?;
            tar.wait_with_output()
        })
        .unwrap();
    assert!(
        listed.status.success(),
        "the archive is whole, nothing appended"
    );

    // A /dev/full of our own (root only): exit 1 within seconds, the device still a device.
    let Some(full) = crate::sinks::full_device(dir) else {
        return;
    };
    let started = Instant::now();
    let out = run_within(scope, &["dump", "-n", ns, "-f", full.to_str().unwrap()]);
    expect_code(&out, 1);
    assert!(
        out.stderr_text().contains("cannot be taken back"),
        "{}",
        out.describe()
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    {
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata(&full)
            .unwrap()
            .file_type()
            .is_char_device());
    }
    let left: Vec<String> = partial_files(dir)
        .into_iter()
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A restored script commits only whole, never runs its own transaction control, accepts a
/// BOM; a restore waiting on a lock names the session that holds it, and --lock-timeout
/// bounds the wait.
fn restores_tell_the_truth(
    scope: &Scope,
    ns: &str,
    dir: &std::path::Path,
    archive: &std::path::Path,
) {
    let plain = scope.kpg(&["dump", "-n", ns, "--format", "plain"]);
    expect_code(&plain, 0);
    let text = plain.stdout_text();
    assert!(text.contains("-- PostgreSQL database dump complete"));
    query(scope, ns, "create database cut");
    let tables = "select count(*) from pg_tables where schemaname = 'public'";
    let keys = "select count(*) from pg_constraint where contype = 'p' and connamespace = 'public'::regnamespace";

    // Cut where the keys begin: valid SQL to its last byte, refused as incomplete.
    let cut = dir.join("cut.sql");
    let at = text
        .find("ALTER TABLE ONLY")
        .expect("the script adds its keys last");
    std::fs::write(&cut, &text[..at]).unwrap();
    let cut_s = cut.to_str().unwrap();
    let refused = scope.kpg_stdin(&["restore", "-n", ns, "-d", "cut"], &text[..at]);
    expect_code(&refused, 1);
    let err = refused.stderr_text();
    assert!(
        err.contains("end marker") && err.contains("--allow-partial"),
        "{}",
        refused.describe()
    );
    assert_eq!(query_db(scope, ns, "cut", tables), "0", "nothing restored");
    let partial = scope.kpg(&[
        "restore",
        "-n",
        ns,
        "-d",
        "cut",
        "-f",
        cut_s,
        "--allow-partial",
    ]);
    expect_code(&partial, 0);
    assert_ne!(query_db(scope, ns, "cut", tables), "0");
    assert_eq!(
        query_db(scope, ns, "cut", keys),
        "0",
        "rows and tables, but no keys"
    );

    let users = |name: &str| {
        query(
            scope,
            ns,
            &format!("select count(*) from users where username = '{name}'"),
        )
    };
    let insert = |name: &str| {
        format!("insert into users (username, email) values ('{name}', '{name}@example.com');\n")
    };
    let marker = "\n--\n-- PostgreSQL database dump complete\n--\n";

    // A COMMIT past the head, so the first insert has run when the guard meets it: the
    // COMMIT never reaches psql, the session ends, nothing is committed.
    let script = format!(
        "{}{}COMMIT;\n{}{marker}",
        insert("early"),
        "-- padding past the head the restore reads first\n".repeat(2000),
        insert("late")
    );
    let out = scope.kpg_stdin(&["restore", "-n", ns], &script);
    expect_code(&out, 1);
    let err = out.stderr_text();
    assert!(
        err.contains("COMMIT") && err.contains("rolled back"),
        "{}",
        out.describe()
    );
    assert_eq!((users("early"), users("late")), ("0".into(), "0".into()));
    let left = "select count(*) from pg_stat_activity where application_name like 'kubectl-pg-%'";
    wait_until(
        Duration::from_secs(30),
        "the restore's session is gone",
        || query(scope, ns, left) == "0",
    );

    // \q, and ON_ERROR_STOP off: refused before anything runs.
    for (script, why) in [
        (format!("{}\\q\n{marker}", insert("quit")), "\\q"),
        (
            format!("\\set ON_ERROR_STOP off\n{}{marker}", insert("quit")),
            "ON_ERROR_STOP",
        ),
    ] {
        let out = scope.kpg_stdin(&["restore", "-n", ns], &script);
        expect_code(&out, 1);
        assert!(out.stderr_text().contains(why), "{}", out.describe());
    }
    assert_eq!(users("quit"), "0");

    // A UTF-8 BOM, as psql -f takes it.
    let bom = dir.join("bom.sql");
    std::fs::write(&bom, format!("\u{feff}{}{marker}", insert("bom"))).unwrap();
    let out = scope.kpg(&["restore", "-n", ns, "-f", bom.to_str().unwrap()]);
    expect_code(&out, 0);
    assert_eq!(users("bom"), "1");

    // --clean waits on a lock another session holds: it names that session, then gives up
    // after --lock-timeout, rolled back.
    let before = query(scope, ns, COUNTS);
    let lock = Lock::hold(scope, ns);
    wait_until(Duration::from_secs(30), "the lock is held", || {
        query(scope, ns, "select count(*) from pg_locks where mode = 'AccessExclusiveLock' and relation = 'users'::regclass") == "1"
    });
    let started = Instant::now();
    let out = run_within(
        scope,
        &[
            "restore",
            "-n",
            ns,
            "-f",
            archive.to_str().unwrap(),
            "--clean",
            "--yes",
            "--lock-timeout",
            "3s",
        ],
    );
    expect_code(&out, 1);
    let err = out.stderr_text();
    assert!(
        err.contains("waiting for a lock held by pid")
            && err.contains("test-lock")
            && err.contains("gave up after waiting 3s"),
        "{}",
        out.describe()
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    drop(lock);
    assert_eq!(query(scope, ns, COUNTS), before, "rolled back");
}

#[test]
fn storage_grows_in_place_and_never_shrinks() {
    let scope = Scope::new("kpg-grow");
    let ns = scope.ns.clone();
    let (grow, fixed, edited) = (
        spawn_install(&scope, &ns, "grow", &[]),
        spawn_install(&scope, &ns, "fixed", &["--storage-class", "immediate"]),
        spawn_install(&scope, &ns, "edited", &["--postgres-version", "16"]),
    );
    installed(grow);
    installed(fixed);
    installed(edited);

    // The claims' size is raised by an install --upgrade, and read back from the claim.
    let grow = |release: &str, size: &str| {
        scope.kpg(&[
            "install",
            release,
            "-n",
            &ns,
            "--upgrade",
            "--storage-size",
            size,
            "--timeout",
            TIMEOUT,
        ])
    };
    let claim = |name: &str, path: &str| field(&scope, "pvc", &ns, name, path);

    // Growth: the claim's request, then its capacity; the template keeps its size.
    let out = grow("grow", "10Gi");
    expect_code(&out, 0);
    let err = out.stderr_text();
    assert!(
        err.contains("growing from 8Gi to 10Gi") && err.contains("capacity 10Gi"),
        "{}",
        out.describe()
    );
    assert!(
        err.contains("Resizing"),
        "the resize's progress is shown: {}",
        out.describe()
    );
    assert_eq!(
        claim("data-grow-0", "{.spec.resources.requests.storage}"),
        "10Gi"
    );
    assert_eq!(claim("data-grow-0", "{.status.capacity.storage}"), "10Gi");
    let template = scope.kubectl_ns(&[
        "get",
        "sts",
        "grow",
        "-o",
        "jsonpath={.spec.volumeClaimTemplates[0].spec.resources.requests.storage}",
    ]);
    assert_eq!(template.stdout_text(), "8Gi");

    // Status: requested and actual capacity, df's usage, each database's size.
    let status = json(&scope.kpg(&["status", "grow", "-n", &ns, "-o", "json"]));
    let pvc = &status["pvc"];
    assert_eq!(pvc["requested"], "10Gi", "{status}");
    assert_eq!(pvc["capacity"], "10Gi", "{status}");
    assert!(pvc["usage"]["used_bytes"].as_u64().unwrap() > 0, "{status}");
    assert!(
        pvc["usage"]["total_bytes"].as_u64().unwrap() > 0,
        "{status}"
    );
    let sizes = status["database_sizes"].as_array().unwrap();
    assert!(
        sizes
            .iter()
            .any(|d| d["name"] == "learnflow" && d["bytes"].as_u64().unwrap() > 1_000_000),
        "{status}"
    );
    let table = scope.kpg(&["status", "grow", "-n", &ns]);
    let text = table.stdout_text();
    assert!(
        text.contains("requested 10Gi, capacity 10Gi, used "),
        "{text}"
    );
    assert!(text.contains("learnflow "), "{text}");

    // Shrinking is refused before any change (exit 1); the same size changes nothing.
    let out = grow("grow", "9Gi");
    expect_code(&out, 1);
    assert!(
        out.stderr_text().contains("cannot shrink"),
        "{}",
        out.describe()
    );
    assert_eq!(
        claim("data-grow-0", "{.spec.resources.requests.storage}"),
        "10Gi"
    );
    let out = grow("grow", "10Gi");
    expect_code(&out, 0);

    // A class without expansion: exit 6, saying so, and the claim is untouched.
    let out = grow("fixed", "10Gi");
    expect_code(&out, 6);
    assert!(
        out.stderr_text()
            .contains("StorageClass immediate, which does not allow volume expansion"),
        "{}",
        out.describe()
    );
    assert_eq!(
        claim("data-fixed-0", "{.spec.resources.requests.storage}"),
        "8Gi"
    );

    // An image edited by hand to another major than the data's: status says which is which.
    let patch = r#"[{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"postgres:18.1"}]"#;
    let out = scope.kubectl_ns(&["patch", "sts", "edited", "--type", "json", "-p", patch]);
    assert!(out.status.success(), "{}", out.describe());
    let mut last = String::new();
    wait_until(
        Duration::from_secs(60),
        "status diagnoses the mismatch",
        || {
            last = scope
                .kpg(&["status", "edited", "-n", &ns, "-o", "json"])
                .stdout_text();
            last.contains("data directory is PostgreSQL 16, image is 18")
        },
    );
    assert!(last.contains("DataMajorMismatch"), "{last}");
}

fn server_major(scope: &Scope, ns: &str, release: &str) -> String {
    let status = json(&scope.kpg(&["status", release, "-n", ns, "-o", "json"]));
    // An upgrade kept for --rollback is the only thing status may point out.
    assert!(
        status["problems"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["reason"] == "UpgradePending"),
        "{status}"
    );
    status["server_version"]
        .as_str()
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_string()
}

/// Runs `argv` in the server container of `pod` (each path argument is mapped to the volume by
/// the test node, so no shell line): whether it exited 0.
pub(crate) fn in_pod(scope: &Scope, pod: &str, argv: &[&str]) -> bool {
    let mut args = vec!["exec", pod, "-c", "postgres", "--"];
    args.extend_from_slice(argv);
    scope.kubectl_ns(&args).status.success()
}

/// One query's result through `kubectl pg psql RELEASE`, stopping at the first error.
pub(crate) fn release_query(scope: &Scope, ns: &str, release: &str, sql: &str) -> String {
    let out = scope.kpg(&[
        "psql",
        release,
        "-n",
        ns,
        "--",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        sql,
    ]);
    expect_code(&out, 0);
    out.stdout_text().trim().to_string()
}

#[test]
fn major_upgrade_is_verified_reversible_and_rolls_back_a_crash() {
    let scope = Scope::new("kpg-major");
    let ns = scope.ns.clone();
    let (up, crash) = (
        spawn_install(&scope, &ns, "up", &["--postgres-version", "16"]),
        spawn_install(&scope, &ns, "crash", &["--postgres-version", "16"]),
    );
    installed(up);
    installed(crash);
    for release in ["up", "crash"] {
        let seeded = scope.kpg_stdin(
            &[
                "psql",
                release,
                "-n",
                &ns,
                "--",
                "-v",
                "ON_ERROR_STOP=1",
                "-q",
            ],
            SEED,
        );
        expect_code(&seeded, 0);
    }
    let counts = release_query(&scope, &ns, "up", COUNTS);
    assert_eq!(counts, "120,40,120,480,6");
    // A database whose name libpq would read as a connection string as psql's -d (issue 18):
    // the upgrade reads it by name too.
    release_query(&scope, &ns, "up", "create database \"a=b\"");
    let dir = scope.dir.path().join("backups");
    std::fs::create_dir(&dir).unwrap();

    // install --upgrade never changes the major: it points here.
    let refused = scope.kpg(&[
        "install",
        "up",
        "-n",
        &ns,
        "--upgrade",
        "--postgres-version",
        "17",
    ]);
    expect_code(&refused, 1);
    assert!(
        refused.stderr_text().contains("kubectl pg upgrade up"),
        "{}",
        refused.describe()
    );

    // 16 -> 17: backup first, then the switch, verified.
    let backup = dir.join("up-16.sql");
    let upgrade = |to: &str, backup: &std::path::Path| {
        scope.kpg(&[
            "upgrade",
            "up",
            "-n",
            &ns,
            "--postgres-version",
            to,
            "--yes",
            "--backup-file",
            backup.to_str().unwrap(),
            "--timeout",
            TIMEOUT,
            "-o",
            "json",
        ])
    };
    let out = upgrade("17", &backup);
    expect_code(&out, 0);
    let doc = json(&out);
    assert_eq!(doc["kind"], "UpgradeResult");
    assert_eq!(doc["result"], "Upgraded");
    assert_eq!(
        (doc["from_major"].as_u64(), doc["to_major"].as_u64()),
        (Some(16), Some(17))
    );
    assert!(doc["tables_verified"].as_u64().unwrap() >= 7, "{doc}");
    assert_eq!(doc["old_data_dir"], "pgdata");
    eprintln!("16 -> 17 downtime: {} ms", doc["downtime_ms"]);
    let err = out.stderr_text();
    assert!(
        err.contains("blocking writes") && err.contains("verifying"),
        "{}",
        out.describe()
    );
    assert_eq!(release_query(&scope, &ns, "up", COUNTS), counts);
    assert_eq!(server_major(&scope, &ns, "up"), "17");
    assert_eq!(
        release_query(
            &scope,
            &ns,
            "up",
            "select count(*) from pg_database where datname = 'a=b'"
        ),
        "1"
    );
    assert_eq!(
        field(
            &scope,
            "sts",
            &ns,
            "up",
            "{.spec.template.spec.containers[0].image}"
        ),
        "postgres:17.7"
    );
    let text = std::fs::read_to_string(&backup).unwrap();
    assert!(text.contains("CREATE DATABASE learnflow"), "a full dump");
    assert!(
        !text.contains("default_transaction_read_only TO 'on'"),
        "the upgrade's write block stays out of it"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // Writes work again on the new major; the migration history is the same set.
    release_query(
        &scope,
        &ns,
        "up",
        "insert into users (username, email) values ('after', 'after@example.com')",
    );
    let migrations = scope.kpg(&["migrate", "status", "up", "-n", &ns, "-o", "json"]);
    expect_code(&migrations, 0);
    assert_eq!(json(&migrations)["migrations"].as_array().unwrap().len(), 6);
    // A pending upgrade blocks spec changes and a second upgrade.
    let blocked = scope.kpg(&[
        "install",
        "up",
        "-n",
        &ns,
        "--upgrade",
        "--memory-limit",
        "1Gi",
    ]);
    expect_code(&blocked, 1);
    assert!(
        blocked.stderr_text().contains("--finalize"),
        "{}",
        blocked.describe()
    );

    // --rollback: 16 and its data as they were before the upgrade.
    let out = scope.kpg(&[
        "upgrade",
        "up",
        "-n",
        &ns,
        "--rollback",
        "--yes",
        "--timeout",
        TIMEOUT,
    ]);
    expect_code(&out, 0);
    assert_eq!(server_major(&scope, &ns, "up"), "16");
    assert_eq!(release_query(&scope, &ns, "up", COUNTS), counts);
    release_query(
        &scope,
        &ns,
        "up",
        "insert into users (username, email) values ('back', 'back@example.com')",
    );
    let counts = release_query(&scope, &ns, "up", COUNTS);

    // Again, then --finalize deletes the old data directory.
    let out = upgrade("17", &dir.join("up-16-again.sql"));
    expect_code(&out, 0);
    assert_eq!(release_query(&scope, &ns, "up", COUNTS), counts);
    let out = scope.kpg(&["upgrade", "up", "-n", &ns, "--finalize", "--yes"]);
    expect_code(&out, 0);
    assert!(
        !in_pod(
            &scope,
            "up-0",
            &["test", "-e", "/var/lib/postgresql/pgdata"]
        ),
        "the old data directory is deleted"
    );
    assert_eq!(
        field(
            &scope,
            "sts",
            &ns,
            "up",
            "{.metadata.annotations.kubectl-pg\\.io/upgrade-from-major}"
        ),
        ""
    );
    let refused = scope.kpg(&["upgrade", "up", "-n", &ns, "--rollback", "--yes"]);
    expect_code(&refused, 1);

    // 17 -> 18, into 18's own directory beside 17's.
    let out = upgrade("18", &dir.join("up-17.sql"));
    expect_code(&out, 0);
    eprintln!("17 -> 18 downtime: {} ms", json(&out)["downtime_ms"]);
    assert_eq!(server_major(&scope, &ns, "up"), "18");
    assert_eq!(release_query(&scope, &ns, "up", COUNTS), counts);

    // The new server crashes as soon as it starts: rolled back, exit 5, data intact.
    let fault =
        r#"{"spec":{"template":{"metadata":{"annotations":{"kpg-cluster/crash-major":"17"}}}}}"#;
    let out = scope.kubectl_ns(&["patch", "sts", "crash", "--type", "merge", "-p", fault]);
    assert!(out.status.success(), "{}", out.describe());
    let ready = scope.kpg(&["status", "crash", "-n", &ns, "--wait", "--timeout", TIMEOUT]);
    expect_code(&ready, 0);
    let before = release_query(&scope, &ns, "crash", COUNTS);
    let out = scope.kpg(&[
        "upgrade",
        "crash",
        "-n",
        &ns,
        "--postgres-version",
        "17",
        "--yes",
        "--backup-file",
        dir.join("crash.sql").to_str().unwrap(),
        "--timeout",
        TIMEOUT,
    ]);
    expect_code(&out, 5);
    assert!(
        out.stderr_text().contains("rolled back"),
        "{}",
        out.describe()
    );
    assert_eq!(server_major(&scope, &ns, "crash"), "16");
    assert_eq!(release_query(&scope, &ns, "crash", COUNTS), before);
    release_query(
        &scope,
        &ns,
        "crash",
        "insert into users (username, email) values ('w', 'w@example.com')",
    );
    assert_eq!(
        field(
            &scope,
            "sts",
            &ns,
            "crash",
            "{.spec.template.spec.containers[0].image}"
        ),
        "postgres:16.11"
    );
}
