//! A major upgrade under fire, on the real control plane: a client committing `BEGIN READ
//! WRITE` transactions all along, SIGINT, SIGTERM and `kill -9` at its steps, each followed by
//! the documented recovery, and a `--finalize` by a user who may exec but not patch.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::data::{in_pod, installed, json, spawn_install, wait_until};
use crate::scope::Scope;
use crate::{expect_code, OutputExt};

const TIMEOUT: &str = "120s";

/// A client committing one row per transaction, `BEGIN READ WRITE` each time, through `kubectl
/// pg port-forward` (which finds the ready pod for each connection), reconnecting after any
/// error. It remembers which commits were acknowledged and what the server refused.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<i64>>>,
    errors: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(dsn: &str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (s, a, e) = (stop.clone(), acked.clone(), errors.clone());
        let mut config: tokio_postgres::Config = dsn.parse().expect("the port-forward's DSN");
        config.connect_timeout(Duration::from_secs(3));
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut next = 0i64;
                while !s.load(Ordering::Relaxed) {
                    let connected = config.connect(tokio_postgres::NoTls).await;
                    let client = match connected {
                        Ok((client, connection)) => {
                            tokio::spawn(connection);
                            client
                        }
                        Err(err) => {
                            e.lock().unwrap().push(describe(&err));
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    while !s.load(Ordering::Relaxed) {
                        next += 1;
                        let sql =
                            format!("BEGIN READ WRITE; INSERT INTO acks VALUES ({next}); COMMIT");
                        let done = tokio::time::timeout(
                            Duration::from_secs(5),
                            client.batch_execute(&sql),
                        )
                        .await;
                        match done {
                            Ok(Ok(())) => a.lock().unwrap().push(next),
                            Ok(Err(err)) => {
                                e.lock().unwrap().push(describe(&err));
                                break;
                            }
                            Err(_) => {
                                e.lock().unwrap().push("statement timed out".into());
                                break;
                            }
                        }
                        // Pacing, not synchronisation: about 50 commits a second.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            });
        });
        Writer {
            stop,
            acked,
            errors,
            thread: Some(thread),
        }
    }

    fn acked(&self) -> Vec<i64> {
        self.acked.lock().unwrap().clone()
    }

    /// Waits until `more` further commits are acknowledged: writes are allowed.
    fn writes_again(&self, more: usize) {
        let from = self.acked.lock().unwrap().len();
        wait_until(Duration::from_secs(60), "the writer commits again", || {
            self.acked.lock().unwrap().len() >= from + more
        });
    }

    fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    fn finish(mut self) -> (Vec<i64>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        (self.acked(), self.errors())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => db.message().to_string(),
        None => format!("{err}"),
    }
}

/// Runs an upgrade command and sends `signal` once its progress on stderr shows `point`:
/// the exit code (None when killed by the signal) and everything it printed on stderr.
pub(crate) fn interrupted_at(
    scope: &Scope,
    args: &[&str],
    point: &str,
    signal: &str,
) -> (Option<i32>, String) {
    run_until(scope, args, point, |pid| {
        let sent = std::process::Command::new("kill")
            .args(["-s", signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    })
}

/// Runs a command and calls `act` with its pid once its progress on stderr shows `point`:
/// the exit code (None when killed by a signal) and everything it printed on stderr.
pub(crate) fn run_until(
    scope: &Scope,
    args: &[&str],
    point: &str,
    act: impl FnOnce(u32),
) -> (Option<i32>, String) {
    let mut child = scope
        .kpg_command(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(point) => break,
            Ok(_) => continue,
            Err(_) => {
                let _ = child.kill();
                panic!("{point:?} never came: {}", reader.join().unwrap());
            }
        }
    }
    act(child.id());
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running 180 s after {point:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (status.code(), reader.join().unwrap())
}

fn query(scope: &Scope, ns: &str, sql: &str) -> String {
    crate::data::release_query(scope, ns, "u", sql)
}

fn annotation(scope: &Scope, key: &str) -> String {
    let out = scope.kubectl_ns(&[
        "get",
        "sts",
        "u",
        "-o",
        &format!("jsonpath={{.metadata.annotations.kubectl-pg\\.io/{key}}}"),
    ]);
    assert!(out.status.success(), "{}", out.describe());
    out.stdout_text()
}

fn major(scope: &Scope, ns: &str) -> String {
    query(scope, ns, "show server_version_num")[..2].to_string()
}

#[test]
fn upgrade_blocks_every_writer_and_resumes_after_any_interruption() {
    let scope = Scope::new("kpg-upg");
    let ns = scope.ns.clone();
    installed(spawn_install(
        &scope,
        &ns,
        "u",
        &["--postgres-version", "16"],
    ));
    // Enough data that the backup and the restore take a moment, and a setting of the owner's.
    query(
        &scope,
        &ns,
        "create table acks (n bigint primary key); \
         create table bulk as select i, md5(i::text) t from generate_series(1, 300000) i; \
         alter database learnflow set work_mem = '7MB'",
    );
    let bulk = "select count(*) || ':' || sum(i) from bulk";
    let rows = query(&scope, &ns, bulk);
    let dir = scope.dir.path().join("backups");
    std::fs::create_dir(&dir).unwrap();
    let backup = dir.join("u.sql");
    let upgrade_args = [
        "upgrade",
        "u",
        "-n",
        &ns,
        "--postgres-version",
        "17",
        "--yes",
        "--backup-file",
        backup.to_str().unwrap(),
        "--timeout",
        TIMEOUT,
    ];
    let forward = crate::cluster::PluginForward::start(&scope, &ns, "u", "127.0.0.1:0");
    let writer = Writer::start(&forward.dsn);
    writer.writes_again(5);
    let no_record = |scope: &Scope| {
        assert_eq!(
            annotation(scope, "upgrade-from-major"),
            "",
            "the record is gone"
        );
    };
    // --rollback (no --yes: writes were never allowed on 17) back to 16 with its data, writes
    // allowed again, the record gone.
    let rollback_finishes = || {
        let out = scope.kpg(&[
            "upgrade",
            "u",
            "-n",
            &ns,
            "--rollback",
            "--timeout",
            TIMEOUT,
        ]);
        expect_code(&out, 0);
        writer.writes_again(3);
        no_record(&scope);
        assert_eq!(major(&scope, &ns), "16");
        assert_eq!(query(&scope, &ns, bulk), rows);
    };

    // A user who may exec but not patch: refused before anything changes.
    let kubeconfig = scope.service_account_kubeconfig(
        "exec-only",
        &format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: exec-only\n  namespace: {ns}\n\
             rules:\n- apiGroups: [apps]\n  resources: [statefulsets]\n  verbs: [get, list, watch]\n\
             - apiGroups: ['']\n  resources: [pods, services, secrets, events, persistentvolumeclaims]\n  verbs: [get, list, watch, delete]\n\
             - apiGroups: ['']\n  resources: [pods/exec]\n  verbs: [get, create]\n\
             - apiGroups: [coordination.k8s.io]\n  resources: [leases]\n  verbs: [get, list, watch, create, update, delete]"
        ),
    );
    let out = scope.kpg(&[
        "upgrade",
        "u",
        "-n",
        &ns,
        "--postgres-version",
        "17",
        "--yes",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ]);
    expect_code(&out, 6);
    assert!(out.stderr_text().contains("patch"), "{}", out.describe());
    no_record(&scope);
    writer.writes_again(3);

    // SIGINT while the backup is written: writes allowed again, no record, no file.
    let (code, err) = interrupted_at(&scope, &upgrade_args, "writing the backup", "INT");
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("allowing writes again"), "{err}");
    writer.writes_again(3);
    no_record(&scope);
    assert_eq!(major(&scope, &ns), "16");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "no backup, partial or whole"
    );

    // SIGTERM while the backup is restored into 17: back on 16, writes allowed, no record.
    let (code, err) = interrupted_at(
        &scope,
        &upgrade_args,
        "restoring the backup into PostgreSQL 17",
        "TERM",
    );
    assert_eq!(code, Some(143), "{err}");
    assert!(err.contains("rolling back to PostgreSQL 16"), "{err}");
    writer.writes_again(3);
    no_record(&scope);
    assert_eq!(major(&scope, &ns), "16");
    assert_eq!(query(&scope, &ns, bulk), rows);

    // The API connection lost during the restore: the automatic rollback cannot reach the
    // cluster either, so the record stays and says what to run; --rollback then finishes.
    let (proxy, proxied) = crate::proxy::in_front_of(&scope);
    let mut through_proxy = upgrade_args.to_vec();
    through_proxy.extend(["--kubeconfig", &proxied]);
    let (code, err) = run_until(
        &scope,
        &through_proxy,
        "restoring the backup into PostgreSQL 17",
        |_| {
            proxy.fail_next(100_000, 503, crate::proxy::Matcher::any());
            proxy.drop_upgraded_after(0);
        },
    );
    assert_eq!(code, Some(5), "{err}");
    assert!(
        err.contains("could not be undone") && err.contains("--rollback"),
        "{err}"
    );
    drop(proxy);
    assert_eq!(annotation(&scope, "upgrade-phase"), "switching");
    rollback_finishes();

    // kill -9 during the restore: the record stays, status names it, clients stay blocked,
    // and --rollback finishes the job.
    let (code, err) = interrupted_at(
        &scope,
        &upgrade_args,
        "restoring the backup into PostgreSQL 17",
        "KILL",
    );
    assert_eq!(code, None, "{err}");
    let stuck = writer.acked().len();
    assert_eq!(annotation(&scope, "upgrade-phase"), "switching");
    let status = json(&scope.kpg(&["status", "u", "-n", &ns, "-o", "json"]));
    let problem = status["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["reason"] == "UpgradeUnfinished")
        .unwrap_or_else(|| panic!("{status}"))
        .clone();
    assert!(
        problem["hint"].as_str().unwrap().contains("--rollback"),
        "{problem}"
    );
    assert_ne!(status["phase"], "Healthy", "{status}");
    // Still blocked, with the plugin dead: no commit since, and a new session is refused.
    assert_eq!(
        writer.acked().len(),
        stuck,
        "a commit while writes were blocked"
    );
    let refused = crate::cluster::try_connect(&forward.dsn).unwrap_err();
    assert!(
        refused.contains("pg_hba.conf rejects connection"),
        "{refused}"
    );
    rollback_finishes();

    // kill -9 as writes are being blocked, then a rerun: it goes back, then upgrades, with the
    // writer committing all along.
    let (code, err) = interrupted_at(&scope, &upgrade_args, "blocking writes", "KILL");
    assert_eq!(code, None, "{err}");
    assert_eq!(annotation(&scope, "upgrade-phase"), "blocking-writes");
    let out = scope.kpg(&upgrade_args);
    expect_code(&out, 0);
    assert!(
        out.stderr_text().contains("an earlier upgrade stopped"),
        "{}",
        out.describe()
    );
    writer.writes_again(5);
    let (acked, errors) = writer.finish();
    assert_eq!(major(&scope, &ns), "17");
    assert_eq!(annotation(&scope, "upgrade-phase"), "upgraded");
    assert_eq!(query(&scope, &ns, bulk), rows);
    // Every acknowledged commit is on the new major; at most one more, whose
    // acknowledgement the block's termination cut off.
    let stored: Vec<i64> = query(&scope, &ns, "select n from acks order by n")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let missing: Vec<&i64> = acked
        .iter()
        .filter(|n| stored.binary_search(n).is_err())
        .collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    assert!(
        stored.len() <= acked.len() + 4,
        "{} stored, {} acknowledged",
        stored.len(),
        acked.len()
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("pg_hba.conf rejects connection")),
        "a client saw the block: {errors:?}"
    );
    assert_eq!(
        query(&scope, &ns, "select setconfig::text from pg_db_role_setting s join pg_database d on d.oid = s.setdatabase where d.datname = 'learnflow' and setrole = 0"),
        "{work_mem=7MB}",
        "the owner's own database setting survives"
    );
    drop(forward);

    // --finalize by a user who may exec but not patch: refused before anything is deleted;
    // the rollback that follows finds the old data.
    let out = scope.kpg(&[
        "upgrade",
        "u",
        "-n",
        &ns,
        "--finalize",
        "--yes",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ]);
    expect_code(&out, 6);
    assert!(out.stderr_text().contains("patch"), "{}", out.describe());
    assert!(
        in_pod(
            &scope,
            "u-0",
            &["test", "-f", "/var/lib/postgresql/pgdata/PG_VERSION"]
        ),
        "the old data is still there"
    );
    assert_eq!(annotation(&scope, "upgrade-phase"), "upgraded");
    // An old data directory that is gone (a finalize that deleted it and died): --rollback
    // refuses before switching, and the new major keeps running with its data.
    let mv = |from: &str, to: &str| assert!(in_pod(&scope, "u-0", &["mv", from, to]));
    mv(
        "/var/lib/postgresql/pgdata",
        "/var/lib/postgresql/pgdata.away",
    );
    let rollback = [
        "upgrade",
        "u",
        "-n",
        &ns,
        "--rollback",
        "--yes",
        "--timeout",
        TIMEOUT,
    ];
    let out = scope.kpg(&rollback);
    expect_code(&out, 5);
    assert!(out.stderr_text().contains("missing"), "{}", out.describe());
    assert_eq!(major(&scope, &ns), "17");
    assert_eq!(query(&scope, &ns, bulk), rows);
    assert_eq!(annotation(&scope, "upgrade-phase"), "upgraded");
    mv(
        "/var/lib/postgresql/pgdata.away",
        "/var/lib/postgresql/pgdata",
    );
    // SIGINT during --rollback: the step is recorded; --finalize refuses it, and --rollback
    // run again finishes it.
    let (code, err) = interrupted_at(&scope, &rollback, "switched back to PostgreSQL 16", "INT");
    assert_eq!(code, Some(130), "{err}");
    assert_eq!(annotation(&scope, "upgrade-phase"), "rolling-back");
    let out = scope.kpg(&["upgrade", "u", "-n", &ns, "--finalize", "--yes"]);
    expect_code(&out, 1);
    assert!(
        out.stderr_text().contains("--rollback"),
        "{}",
        out.describe()
    );
    let out = scope.kpg(&rollback);
    expect_code(&out, 0);
    assert_eq!(major(&scope, &ns), "16");
    assert_eq!(query(&scope, &ns, bulk), rows);
    no_record(&scope);

    // Two upgrades at once: one runs, the other is turned away by the lease, and the one
    // that ran is whole.
    let spawn = || {
        scope
            .kpg_command(&upgrade_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (
        crate::output_within(a, Duration::from_secs(300)),
        crate::output_within(b, Duration::from_secs(300)),
    );
    let mut codes = [a.code(), b.code()];
    codes.sort();
    assert_eq!(codes, [0, 1], "{}\n{}", a.describe(), b.describe());
    let loser = if a.code() == 1 { &a } else { &b };
    assert!(
        loser
            .stderr_text()
            .contains("another upgrade of release u is running"),
        "{}",
        loser.describe()
    );
    assert_eq!(major(&scope, &ns), "17");
    assert_eq!(query(&scope, &ns, bulk), rows);
    // SIGINT as --finalize deletes: either it finished first, or the record says
    // `finalizing`, which --rollback refuses and --finalize finishes.
    let finalize = ["upgrade", "u", "-n", &ns, "--finalize", "--yes"];
    let (code, err) = interrupted_at(&scope, &finalize, "finalizing: deleting", "INT");
    if annotation(&scope, "upgrade-phase") == "finalizing" {
        assert_eq!(code, Some(130), "{err}");
        let out = scope.kpg(&["upgrade", "u", "-n", &ns, "--rollback", "--yes"]);
        expect_code(&out, 1);
        assert!(
            out.stderr_text().contains("--finalize"),
            "{}",
            out.describe()
        );
        expect_code(&scope.kpg(&finalize), 0);
    } else {
        assert_eq!(code, Some(0), "{err}");
    }
    no_record(&scope);
    assert_eq!(major(&scope, &ns), "17");
    assert_eq!(query(&scope, &ns, bulk), rows);
    assert!(
        !in_pod(&scope, "u-0", &["test", "-e", "/var/lib/postgresql/pgdata"]),
        "the old data directory is deleted"
    );
}
