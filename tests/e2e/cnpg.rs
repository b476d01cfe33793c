//! The test plane runs the real CloudNativePG operator: a 3-instance Cluster applied with plain
//! kubectl becomes Ready with two streaming replicas, replicates a row, fails over when its
//! primary is deleted (the old primary rejoining as a replica), serves `kubectl port-forward
//! svc/R-rw`, and answers `kubectl-cnpg status`, the reference client.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::scope::Scope;
use crate::{until, OutputExt};

#[track_caller]
fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", out.describe());
    out.stdout_text()
}

fn get(scope: &Scope, what: &str, jsonpath: &str) -> String {
    ok(scope.kubectl_ns(&["get", what, "-o", &format!("jsonpath={jsonpath}")]))
}

/// `psql` inside an instance, through its socket, as the postgres superuser.
fn sql(scope: &Scope, pod: &str, query: &str) -> Output {
    scope.kubectl_ns(&[
        "exec",
        pod,
        "-c",
        "postgres",
        "--",
        "psql",
        "-XtAq",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        query,
    ])
}

/// `kubectl pg psql RELEASE -- -XtAc QUERY` run by `kpg`: its output.
#[track_caller]
fn kpg_psql(kpg: &dyn Fn(&[&str]) -> Output, ns: &str, release: &str, query: &str) -> String {
    ok(kpg(&["psql", release, "-n", ns, "--", "-XtAc", query]))
}

/// Waits for `check` to hold, up to `limit`: replication and failover are the operator's and
/// the servers' work, which nothing here can be told about by a watch.
#[track_caller]
fn streaming(scope: &Scope, primary: &str) -> Result<(), String> {
    let out = sql(
        scope,
        primary,
        "select count(*) from pg_stat_replication where state = 'streaming'",
    );
    match out.stdout_text().trim() {
        "2" => Ok(()),
        _ => Err(out.describe()),
    }
}

#[test]
fn cnpg_cluster_replicates_fails_over_and_serves_clients() {
    let scope = Scope::new("kpg-cnpg");
    if let Err(e) = scope.plane.cnpg() {
        panic!("CloudNativePG's operator did not start: {e}");
    }
    let started = Instant::now();
    ok(scope.plane.kubectl_stdin(
        &["apply", "-n", &scope.ns, "-f", "-"],
        "apiVersion: postgresql.cnpg.io/v1\nkind: Cluster\nmetadata: {name: pg}\nspec:\n  \
         instances: 3\n  storage: {size: 1Gi}\n",
    ));
    ok(scope.kubectl_ns(&[
        "wait",
        "--for=condition=Ready",
        "cluster/pg",
        "--timeout=300s",
    ]));
    eprintln!(
        "cnpg: 3 instances Ready {:?} after apply",
        started.elapsed()
    );
    let primary = get(&scope, "cluster/pg", "{.status.currentPrimary}");
    until(Duration::from_secs(60), "2 streaming replicas", || {
        streaming(&scope, &primary)
    });

    // A row written on the primary is read on both replicas.
    ok(sql(
        &scope,
        &primary,
        "create table t (v text); insert into t values ('replicated')",
    ));
    let replicas: Vec<String> = ["pg-1", "pg-2", "pg-3"]
        .iter()
        .filter(|p| **p != primary)
        .map(|p| p.to_string())
        .collect();
    for replica in &replicas {
        until(Duration::from_secs(30), "the row on a replica", || {
            let out = sql(&scope, replica, "select v from t");
            (out.stdout_text() == "replicated\n")
                .then_some(())
                .ok_or_else(|| out.describe())
        });
    }

    // kubectl port-forward to the read-write Service reaches the primary, with the app
    // credentials CNPG made.
    let password = ok(scope.kubectl_ns(&[
        "get",
        "secret/pg-app",
        "-o",
        "go-template={{.data.password | base64decode}}",
    ]));
    let (mut forward, port) = scope.plane.port_forward(&scope.ns, "svc/pg-rw", 5432);
    let port = port.to_string();
    let psql = scope.plane.postgres.join("clients/bin/psql");
    let through = Command::new(&psql)
        .env("PGPASSWORD", &password)
        .args([
            "-XtAq",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "app",
            "-d",
            "app",
            "-c",
            "select pg_is_in_recovery()",
        ])
        .output()
        .unwrap();
    let _ = forward.kill();
    let _ = forward.wait();
    assert_eq!(ok(through), "f\n");

    // kubectl-pg on a Cluster the team made with plain kubectl: `status` (the namespace's only
    // release, found without its name) names the primary and each replica's replication, and
    // `dsn` prints the app credentials' DSN for the read-write (and read-only) Service, with
    // sslmode=require: it works as printed from inside the cluster, through DNS and TLS.
    let status = ok(scope.kpg(&["status", "-n", &scope.ns, "-o", "json"]));
    let doc: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(doc["release"], "pg", "{doc}");
    assert_eq!(doc["phase"], "Healthy", "{doc}");
    assert_eq!(doc["primary"], primary.as_str(), "{doc}");
    let instances = doc["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 3, "{doc}");
    for i in instances {
        if i["name"] == primary.as_str() {
            assert_eq!(i["role"], "primary", "{doc}");
        } else {
            assert_eq!(i["role"], "replica", "{doc}");
            assert_eq!(i["replication"], "streaming", "{doc}");
            assert!(i["lag_bytes"].as_i64().is_some(), "{doc}");
        }
        assert_eq!(i["ready"], true, "{doc}");
    }
    let text = ok(scope.kpg(&["status", "pg", "-n", &scope.ns]));
    assert!(
        text.contains("Instances:") && text.contains("streaming"),
        "{text}"
    );
    for (endpoint, in_recovery) in [("rw", "f"), ("ro", "t")] {
        let dsn = ok(scope.kpg(&["dsn", "pg", "-n", &scope.ns, "--endpoint", endpoint]));
        let dsn = dsn.trim();
        assert!(
            dsn.contains(&format!(
                "@pg-{endpoint}.{}.svc.cluster.local:5432/app",
                scope.ns
            )) && dsn.contains("sslmode=require"),
            "{dsn}"
        );
        let client = replicas[0].as_str();
        let answer = ok(scope.kubectl_ns(&[
            "exec",
            client,
            "-c",
            "postgres",
            "--",
            "psql",
            "-XtAq",
            dsn,
            "-c",
            "select pg_is_in_recovery(), current_user, (select ssl from pg_stat_ssl where pid = pg_backend_pid())",
        ]));
        assert_eq!(answer, format!("{in_recovery}|app|t\n"), "{endpoint}");
    }

    // The reference client.
    let status = Command::new(scope.plane.kubectl_cnpg())
        .env("KUBECONFIG", &scope.plane.kubeconfig)
        .args(["status", "pg", "-n", &scope.ns])
        .output()
        .unwrap();
    let text = ok(status);
    assert!(
        text.contains(&primary) && text.contains("Streaming Replication status"),
        "{text}"
    );

    // kubectl-pg's psql (in the primary's pod) and port-forward (each connection to the pod
    // that holds the primary label) reach the primary.
    let psql_out = kpg_psql(
        &|a| scope.kpg(a),
        &scope.ns,
        "pg",
        "select pg_is_in_recovery()",
    );
    assert_eq!(psql_out, "f\n");
    let forward = crate::cluster::PluginForward::start(&scope, &scope.ns, "pg", "127.0.0.1:0");
    let through_forward = |statement: &str| {
        Command::new(&psql)
            .args(["-XtAq", &forward.dsn, "-c", statement])
            .output()
            .unwrap()
    };
    assert_eq!(ok(through_forward("select pg_is_in_recovery()")), "f\n");
    ok(through_forward("create table f (v text)"));
    // migrate applies the built-in LearnFlow schema on the primary, as the application owner.
    ok(scope.kpg(&["migrate", "up", "pg", "-n", &scope.ns]));
    assert_eq!(
        ok(through_forward(
            "select count(*) > 0, bool_and(checksum <> '') from kubectl_pg_migrations"
        )),
        "t|t\n"
    );

    // Deleting the primary promotes a replica: the port-forward's next connection writes to
    // it, and kubectl-pg's status and psql name and reach it. The old primary comes back as a
    // replica.
    let deleted = Instant::now();
    ok(scope.kubectl_ns(&["delete", "pod", &primary, "--wait=false"]));
    until(
        Duration::from_secs(120),
        "a write through port-forward",
        || {
            let out = through_forward("insert into f values ('after failover')");
            out.status
                .success()
                .then_some(())
                .ok_or_else(|| out.describe())
        },
    );
    eprintln!(
        "cnpg: a write through kubectl-pg port-forward succeeded {:?} after the primary {primary} was deleted",
        deleted.elapsed()
    );
    drop(forward);
    let promoted = get(&scope, "cluster/pg", "{.status.currentPrimary}");
    assert_ne!(promoted, primary);
    let status = ok(scope.kpg(&["status", "pg", "-n", &scope.ns, "-o", "json"]));
    let doc: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(doc["primary"], promoted.as_str(), "{doc}");
    let psql_out = kpg_psql(
        &|a| scope.kpg(a),
        &scope.ns,
        "pg",
        "select pg_is_in_recovery(), count(*) from f",
    );
    assert_eq!(psql_out, "f|1\n");
    until(
        Duration::from_secs(180),
        "the old primary back as a replica",
        || {
            let out = sql(
                &scope,
                &primary,
                "select pg_is_in_recovery(), count(*) from t",
            );
            (out.stdout_text() == "t|1\n")
                .then_some(())
                .ok_or_else(|| out.describe())
        },
    );
    until(
        Duration::from_secs(60),
        "2 streaming replicas again",
        || streaming(&scope, &promoted),
    );
    // A Cluster the team made is never changed by switchover: exit 1, its primary unchanged.
    let refused = scope.kpg(&["switchover", "pg", "-n", &scope.ns]);
    crate::expect_code(&refused, 1);
    assert!(
        refused.stderr_text().contains("not made by kubectl-pg"),
        "{}",
        refused.describe()
    );
    // Nor uninstalled, restarted, given a new password, or turned into a single instance.
    for (args, needle) in [
        (
            &["uninstall", "pg", "--delete-data", "--yes"][..],
            "not made by kubectl-pg",
        ),
        (&["restart", "pg"], "kubectl cnpg restart pg"),
        (
            &["rotate-password", "pg", "--yes"],
            "not made by kubectl-pg",
        ),
        (&["install", "pg"], "--instances 3"),
        (
            &[
                "user",
                "create",
                "intruder",
                "--release",
                "pg",
                "--password-stdin",
            ],
            "not made by kubectl-pg",
        ),
        (
            &["rotate-password", "pg", "--db-user", "app", "--yes"],
            "not made by kubectl-pg",
        ),
        (
            &["upgrade", "pg", "--postgres-version", "18", "--yes"],
            "not made by kubectl-pg",
        ),
    ] {
        let mut all = args.to_vec();
        all.extend(["-n", &scope.ns]);
        let out = scope.kpg_stdin(&all, "a-long-enough-password\n");
        crate::expect_code(&out, 1);
        assert!(out.stderr_text().contains(needle), "{}", out.describe());
    }
    assert_eq!(
        get(&scope, "cluster/pg", "{.status.currentPrimary}"),
        promoted
    );
}

/// `install --instances 3 --migrate`: a CloudNativePG Cluster from the plugin's flags, waited
/// for until healthy, with one primary, two streaming replicas and the LearnFlow schema applied
/// on the primary. Bad counts and flags it does not take yet are exit 1 before any request.
/// Then: `psql --replica` reads what the primary wrote, `dump --replica` restores row for row
/// into a single instance, a script restored into the Cluster is its owner's, and `switchover
/// --to` moves the primary to the named replica, the old primary following it.
#[test]
fn install_instances_makes_a_healthy_migrated_cluster() {
    let scope = Scope::new("kpg-ha");
    for (args, needle) in [
        (&["--instances", "11"][..], "--instances 11"),
        (&["--instances", "0"], "--instances 0"),
        (
            &["--instances", "3", "--service-type", "LoadBalancer"],
            "--service-type",
        ),
        (&["--instances", "3", "--username", "postgres"], "superuser"),
    ] {
        let mut all = vec![
            "install",
            "ha",
            "-n",
            &scope.ns,
            "--kubeconfig",
            "/nonexistent",
        ];
        all.extend_from_slice(args);
        let out = scope.kpg(&all);
        crate::expect_code(&out, 1);
        assert!(out.stderr_text().contains(needle), "{}", out.describe());
    }
    // Everything from here runs as a ServiceAccount holding exactly the caveats' permissions
    // for a highly available release.
    let (account, _grant) = crate::krew::caveats_account(&scope, true, None);
    let account = account.to_str().unwrap().to_string();
    let kpg = |args: &[&str]| {
        let mut all = args.to_vec();
        let at = all.iter().position(|a| *a == "--").unwrap_or(all.len());
        all.splice(at..at, ["--kubeconfig", account.as_str()]);
        scope.kpg(&all)
    };
    let install = |extra: &[&str]| {
        let mut all = vec![
            "install",
            "ha",
            "-n",
            &scope.ns,
            "--instances",
            "3",
            "-o",
            "json",
        ];
        all.extend_from_slice(extra);
        ok(kpg(&all))
    };
    let dry = install(&["--dry-run"]);
    let rendered: serde_json::Value = serde_json::from_str(&dry).unwrap();
    assert_eq!(rendered["kind"], "Cluster");
    assert_eq!(rendered["spec"]["instances"], 3);
    assert_eq!(rendered["spec"]["bootstrap"]["initdb"]["owner"], "app");

    if let Err(e) = scope.plane.cnpg() {
        panic!("CloudNativePG's operator did not start: {e}");
    }
    let started = Instant::now();
    let text = install(&["--migrate", "--timeout", "5m"]);
    eprintln!(
        "cnpg: install --instances 3 --migrate took {:?}",
        started.elapsed()
    );
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["phase"], "Healthy", "{doc}");
    let instances = doc["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 3, "{doc}");
    let replicas: Vec<_> = instances
        .iter()
        .filter(|i| i["role"] == "replica")
        .collect();
    assert_eq!(replicas.len(), 2, "{doc}");
    assert!(
        replicas.iter().all(|r| r["replication"] == "streaming"),
        "{doc}"
    );
    let primary = doc["primary"].as_str().unwrap().to_string();
    let applied = ok(scope.kubectl_ns(&[
        "exec", &primary, "-c", "postgres", "--", "psql", "-XtAq", "-d", "learnflow", "-c",
        "select count(*) > 0, (select count(*) from pg_tables where tableowner = 'app' and tablename = 'users') from kubectl_pg_migrations",
    ]));
    assert_eq!(applied, "t|1\n");
    // A rerun finds it healthy and changes nothing.
    let again = install(&[]);
    let doc: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(doc["primary"], primary.as_str(), "{doc}");

    // Rows written on the primary are read on a replica; a dump taken there restores, row
    // for row, into a single-instance release; a script restored into the Cluster runs as its
    // owner.
    ok(kpg(&[
        "psql", "ha", "-n", &scope.ns, "--", "-v", "ON_ERROR_STOP=1", "-XtAqc",
        "set role app; create table notes (v int); insert into notes select generate_series(1, 1000)",
    ]));
    until(Duration::from_secs(30), "the rows on a replica", || {
        let out = kpg(&[
            "psql",
            "ha",
            "-n",
            &scope.ns,
            "--replica",
            "--",
            "-XtAc",
            "select pg_is_in_recovery(), count(*) from notes",
        ]);
        (out.stdout_text() == "t|1000\n")
            .then_some(())
            .ok_or_else(|| out.describe())
    });
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("ha.dump");
    let archive = archive.to_str().unwrap();
    ok(kpg(&[
        "dump",
        "ha",
        "-n",
        &scope.ns,
        "--replica",
        "-f",
        archive,
    ]));
    ok(kpg(&["install", "one", "-n", &scope.ns, "--timeout", "3m"]));
    // Both kinds in one listing.
    let listed = ok(kpg(&["status", "-n", &scope.ns, "-o", "json"]));
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let names: Vec<_> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["release"].as_str().unwrap(),
                i["pods_total"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(names, [("ha", 3), ("one", 1)], "{listed}");
    ok(kpg(&[
        "restore",
        "one",
        "-n",
        &scope.ns,
        "-f",
        archive,
        "--",
        "--no-owner",
        "--no-acl",
    ]));
    let copied = kpg_psql(&kpg, &scope.ns, "one", "select count(*), sum(v) from notes");
    assert_eq!(copied, "1000|500500\n");
    let script = dir.path().join("more.sql");
    std::fs::write(
        &script,
        "create table restored (v int);\ninsert into restored values (1);\n",
    )
    .unwrap();
    ok(kpg(&[
        "restore",
        "ha",
        "-n",
        &scope.ns,
        "--allow-partial",
        "-f",
        script.to_str().unwrap(),
    ]));
    let owner = kpg_psql(
        &kpg,
        &scope.ns,
        "ha",
        "select tableowner from pg_tables where tablename = 'restored'",
    );
    assert_eq!(owner, "app\n");

    // switchover: the primary itself and an unknown instance are refused before any change;
    // without --to the best replica is promoted, takes writes, and the old primary follows it.
    for (to, needle) in [
        (primary.as_str(), "already the primary"),
        ("ha-9", "not a ready replica"),
    ] {
        let out = kpg(&["switchover", "ha", "-n", &scope.ns, "--to", to]);
        crate::expect_code(&out, 1);
        assert!(out.stderr_text().contains(needle), "{}", out.describe());
    }
    // logs reads the primary's server log, its passwords cut out, and -f follows the primary
    // to the instance a switchover promotes.
    let password =
        ok(scope.kubectl_ns(&["get", "secret", "ha-app", "-o", "jsonpath={.data.password}"]));
    let password =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, password.trim())
            .unwrap();
    let password = String::from_utf8(password).unwrap();
    ok(kpg(&[
        "psql",
        "ha",
        "-n",
        &scope.ns,
        "--",
        "-XtAqc",
        &format!("do $$ begin raise log 'logged %', '{password}'; end $$"),
    ]));
    let tail = ok(kpg(&["logs", "ha", "-n", &scope.ns, "--tail", "200"]));
    assert!(
        tail.contains(&format!("\"logging_pod\":\"{primary}\"")),
        "{tail}"
    );
    assert!(tail.contains("logged "), "{tail}");
    assert!(
        !tail.contains(&password),
        "the password is in the log: {tail}"
    );
    let mut follow = crate::ops::Background::start(
        &scope,
        &[
            "logs",
            "ha",
            "-n",
            &scope.ns,
            "-f",
            "--tail",
            "1",
            "--kubeconfig",
            &account,
        ],
    );
    follow.until(Duration::from_secs(30), "a first log line", |seen| {
        !seen.is_empty()
    });

    // Without the one verb switchover writes with, it is exit 6 naming it, and nothing moves.
    let (less, _less_grant) =
        crate::krew::caveats_account(&scope, true, Some(("clusters/status", "patch")));
    let out = scope.kpg(&[
        "switchover",
        "ha",
        "-n",
        &scope.ns,
        "--kubeconfig",
        less.to_str().unwrap(),
    ]);
    crate::expect_code(&out, 6);
    assert!(
        out.stderr_text()
            .contains("clusters.postgresql.cnpg.io/status"),
        "{}",
        out.describe()
    );
    assert_eq!(
        get(&scope, "cluster/ha", "{.status.currentPrimary}"),
        primary
    );

    // By name (`switchover life` in the life test lets kubectl-pg pick the replica).
    let to = if primary == "ha-1" { "ha-2" } else { "ha-1" };
    let started = Instant::now();
    let out = kpg(&[
        "switchover",
        "ha",
        "-n",
        &scope.ns,
        "--to",
        to,
        "-o",
        "json",
    ]);
    eprintln!("cnpg: switchover took {:?}", started.elapsed());
    let text = ok(out);
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let promoted = doc["primary"].as_str().unwrap().to_string();
    let theirs = format!("\"logging_pod\":\"{promoted}\"");
    follow.until(
        Duration::from_secs(60),
        "a line of the new primary's log",
        |seen| seen.iter().any(|l| l.contains(&theirs)),
    );
    assert_eq!(follow.terminate(), 143);
    assert_eq!(promoted, to, "{doc}");
    assert_eq!(
        get(&scope, "cluster/ha", "{.status.currentPrimary}"),
        promoted
    );
    let written = ok(scope.kubectl_ns(&[
        "exec",
        &promoted,
        "-c",
        "postgres",
        "--",
        "psql",
        "-XtAq",
        "-d",
        "learnflow",
        "-c",
        "select pg_is_in_recovery(), (select count(*) > 0 from kubectl_pg_migrations)",
    ]));
    assert_eq!(written, "f|t\n");
    until(
        Duration::from_secs(120),
        "the old primary streaming from the new one",
        || {
            let out = sql(&scope, &primary, "select pg_is_in_recovery()");
            (out.stdout_text() == "t\n")
                .then_some(())
                .ok_or_else(|| out.describe())
        },
    );

    // uninstall hibernates the Cluster: its pods go, its volumes stay, and install brings the
    // same rows back; --delete-data deletes the Cluster with its volumes.
    let started = Instant::now();
    let out = ok(kpg(&["uninstall", "ha", "-n", &scope.ns]));
    eprintln!("cnpg: uninstall (hibernation) took {:?}", started.elapsed());
    assert!(out.contains("hibernated"), "{out}");
    let instances = "cnpg.io/cluster=ha,cnpg.io/podRole=instance";
    assert_eq!(
        ok(scope.kubectl_ns(&["get", "pods", "-l", instances, "-o", "name"])),
        ""
    );
    assert_eq!(
        ok(scope.kubectl_ns(&["get", "pvc", "-l", "cnpg.io/cluster=ha", "-o", "name"]))
            .lines()
            .count(),
        3
    );
    let status = ok(kpg(&["status", "ha", "-n", &scope.ns, "-o", "json"]));
    let doc: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(doc["phase"], "Hibernated", "{doc}");
    let started = Instant::now();
    let doc: serde_json::Value = serde_json::from_str(&install(&[])).unwrap();
    eprintln!("cnpg: install woke the Cluster in {:?}", started.elapsed());
    assert_eq!(doc["phase"], "Healthy", "{doc}");
    let kept = kpg_psql(&kpg, &scope.ns, "ha", "select count(*), sum(v) from notes");
    assert_eq!(kept, "1000|500500\n");
    ok(kpg(&[
        "uninstall",
        "ha",
        "-n",
        &scope.ns,
        "--delete-data",
        "--yes",
    ]));
    assert_eq!(
        ok(scope.kubectl_ns(&[
            "get",
            "clusters,pvc",
            "-l",
            "cnpg.io/cluster=ha",
            "-o",
            "name"
        ])),
        ""
    );
    assert!(ok(scope.kubectl_ns(&["get", "clusters", "-o", "name"])).is_empty());
}

/// The Cluster's restart stamp, once each of its `n` instances carries it.
#[track_caller]
fn restarted_with_the_clusters_stamp(scope: &Scope, cluster: &str, n: usize) -> String {
    let stamp = get(
        scope,
        &format!("cluster/{cluster}"),
        "{.metadata.annotations.kubectl\\.kubernetes\\.io/restartedAt}",
    );
    let instances = format!("cnpg.io/cluster={cluster},cnpg.io/podRole=instance");
    let stamps = ok(scope.kubectl_ns(&[
        "get",
        "pods",
        "-l",
        &instances,
        "-o",
        "jsonpath={range .items[*]}{.metadata.annotations.kubectl\\.kubernetes\\.io/restartedAt}{' '}{end}",
    ]));
    assert_eq!(
        stamps.split_whitespace().collect::<Vec<_>>(),
        vec![stamp.as_str(); n]
    );
    stamp
}

/// The life of a highly available release after install, as the Krew caveats' ServiceAccount:
/// a rolling restart (every instance restarted, the primary after a switchover, no row lost),
/// refused without patch on clusters, killed with -9 and run again; a password rotation through
/// the operator's Secret (the old password refused, the new one in every key), refused without
/// patch on Secrets, and two at once; scaling from 2 to 3 instances; a rerun that would shrink
/// the volumes refused, one that grows them; the report; and a migration cut by a switchover,
/// applied once, never half.
#[test]
fn ha_restart_rotation_scaling_and_a_migration_across_a_switchover() {
    let scope = Scope::new("kpg-ha-life");
    let ns = scope.ns.clone();
    if let Err(e) = scope.plane.cnpg() {
        panic!("CloudNativePG's operator did not start: {e}");
    }
    let (account, _grant) = crate::krew::caveats_account(&scope, true, None);
    let account = account.to_str().unwrap().to_string();
    let kpg = |args: &[&str]| {
        let mut all = args.to_vec();
        let at = all.iter().position(|a| *a == "--").unwrap_or(all.len());
        all.splice(at..at, ["--kubeconfig", account.as_str()]);
        scope.kpg(&all)
    };
    let json = |out: Output| -> serde_json::Value { serde_json::from_str(&ok(out)).unwrap() };
    let doc = json(kpg(&[
        "install",
        "life",
        "-n",
        &ns,
        "--instances",
        "2",
        "--timeout",
        "5m",
        "-o",
        "json",
    ]));
    assert_eq!(doc["phase"], "Healthy", "{doc}");
    let primary = doc["primary"].as_str().unwrap().to_string();
    ok(kpg(&[
        "psql",
        "life",
        "-n",
        &ns,
        "--",
        "-v",
        "ON_ERROR_STOP=1",
        "-XtAqc",
        "set role app; create table kept (v int); insert into kept select generate_series(1, 500)",
    ]));

    // status asks the API the same requests whatever the instance count (counted through a
    // recording proxy here, at 2 instances, and again at 3 below).
    let (proxy, proxied) = crate::proxy::in_front_of(&scope);
    let status_requests = || {
        proxy.clear_requests();
        ok(scope.kpg(&["status", "life", "-n", &ns, "--kubeconfig", &proxied]));
        let mut paths: Vec<String> = proxy
            .requests()
            .into_iter()
            .map(|r| {
                format!(
                    "{} {}",
                    r.method,
                    r.path_and_query.split('?').next().unwrap_or_default()
                )
            })
            .collect();
        paths.sort();
        paths
    };
    let at_two = status_requests();

    // An upgrade goes to a higher major, refused before any write.
    let out = scope.kpg(&[
        "upgrade",
        "life",
        "--postgres-version",
        "18",
        "--yes",
        "-n",
        &ns,
    ]);
    crate::expect_code(&out, 1);
    assert!(
        out.stderr_text().contains("higher major"),
        "{}",
        out.describe()
    );
    // An application user: made as the Cluster's superuser, it reads the owner's tables (and
    // only reads), over TCP on the primary, with the password of its Secret.
    let made = scope.kpg_stdin(
        &[
            "user",
            "create",
            "reader",
            "--release",
            "life",
            "--readonly",
            "--password-stdin",
            "-n",
            &ns,
            "--kubeconfig",
            &account,
        ],
        "a-long-enough-password\n",
    );
    ok(made);
    let as_reader = |password: &str, query: &str| {
        let primary = get(&scope, "cluster/life", "{.status.currentPrimary}");
        scope.kubectl_ns(&[
            "exec",
            &primary,
            "-c",
            "postgres",
            "--",
            "env",
            &format!("PGPASSWORD={password}"),
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "reader",
            "-d",
            "learnflow",
            "-v",
            "ON_ERROR_STOP=1",
            "-XtAc",
            query,
        ])
    };
    assert_eq!(
        ok(as_reader(
            "a-long-enough-password",
            "select count(*) from kept"
        )),
        "500\n"
    );
    let denied = as_reader("a-long-enough-password", "insert into kept values (0)");
    assert!(
        denied.stderr_text().contains("permission denied"),
        "{}",
        denied.describe()
    );
    let dsn = ok(kpg(&["dsn", "life", "-n", &ns, "--db-user", "reader"]));
    assert!(
        dsn.contains("reader:") && dsn.contains(&format!("@life-rw.{ns}.svc")),
        "{dsn}"
    );

    // restart: a rolling restart the operator carries out; every instance runs again with the
    // stamp it was given, the primary moved by a switchover, and the rows are all there.
    let uids = |scope: &Scope| {
        get(
            scope,
            "pods",
            "{range .items[?(@.metadata.labels.cnpg\\.io/podRole=='instance')]}{.metadata.uid}{' '}{end}",
        )
    };
    let before = uids(&scope);
    let started = Instant::now();
    let doc = json(kpg(&["restart", "life", "-n", &ns, "-o", "json"]));
    eprintln!("cnpg: restart of 2 instances took {:?}", started.elapsed());
    assert_eq!(doc["phase"], "Healthy", "{doc}");
    let after = uids(&scope);
    for uid in before.split_whitespace() {
        assert!(!after.contains(uid), "pod {uid} was not restarted: {after}");
    }
    let stamp = restarted_with_the_clusters_stamp(&scope, "life", 2);
    assert_ne!(
        doc["primary"],
        primary.as_str(),
        "the primary restarts after a switchover: {doc}"
    );
    assert_eq!(
        kpg_psql(&kpg, &ns, "life", "select count(*) from kept"),
        "500\n"
    );

    // Without patch on clusters, restart is exit 6 naming it, and the Cluster keeps its stamp.
    let (less, _less_grant) =
        crate::krew::caveats_account(&scope, true, Some(("clusters", "patch")));
    let out = scope.kpg(&[
        "restart",
        "life",
        "-n",
        &ns,
        "--kubeconfig",
        less.to_str().unwrap(),
    ]);
    crate::expect_code(&out, 6);
    assert!(
        out.stderr_text().contains("clusters.postgresql.cnpg.io"),
        "{}",
        out.describe()
    );
    let annotation = "{.metadata.annotations.kubectl\\.kubernetes\\.io/restartedAt}";
    assert_eq!(get(&scope, "cluster/life", annotation), stamp);
    // kill -9 once the Cluster is annotated: the operator carries the restart on, and a
    // rerun restarts again and sees its own restart through.
    let mut killed = scope
        .kpg_command(&["restart", "life", "-n", &ns, "--kubeconfig", &account])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    until(
        Duration::from_secs(60),
        "the Cluster annotated again",
        || {
            let now = get(&scope, "cluster/life", annotation);
            (now != stamp).then_some(()).ok_or(now)
        },
    );
    killed.kill().unwrap();
    killed.wait().unwrap();
    let doc = json(kpg(&["restart", "life", "-n", &ns, "-o", "json"]));
    assert_eq!(doc["phase"], "Healthy", "{doc}");
    let last = restarted_with_the_clusters_stamp(&scope, "life", 2);
    assert_ne!(last, stamp);

    // rotate-password: the operator's Secret gets the new password in every key, the primary
    // takes it, and the old one is refused.
    let secret = |key: &str| {
        let value = get(&scope, "secret/life-app", &format!("{{.data.{key}}}"));
        let bytes =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, value.trim())
                .unwrap();
        String::from_utf8(bytes).unwrap()
    };
    let old = secret("password");
    let started = Instant::now();
    let rotated = json(kpg(&[
        "rotate-password",
        "life",
        "-n",
        &ns,
        "--yes",
        "-o",
        "json",
    ]));
    eprintln!("cnpg: rotate-password took {:?}", started.elapsed());
    assert_eq!(rotated["role"], "app", "{rotated}");
    assert_eq!(rotated["secret"], "life-app", "{rotated}");
    let new = secret("password");
    assert_ne!(new, old);
    for key in ["uri", "jdbc-uri", "pgpass", "fqdn-uri", "fqdn-jdbc-uri"] {
        let value = secret(key);
        assert!(value.contains(&new) && !value.contains(&old), "{key}");
    }
    let dbname = secret("dbname");
    let login = |password: &str| {
        scope.kubectl_ns(&[
            "exec",
            doc["primary"].as_str().unwrap(),
            "-c",
            "postgres",
            "--",
            "env",
            &format!("PGPASSWORD={password}"),
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "app",
            "-d",
            &dbname,
            "-XtAc",
            "select 1",
        ])
    };
    assert_eq!(ok(login(&new)), "1\n");
    let refused = login(&old);
    assert!(!refused.status.success(), "{}", refused.describe());
    assert!(
        refused
            .stderr_text()
            .contains("password authentication failed"),
        "{}",
        refused.describe()
    );
    // The plugin's own clients read the new password: migrate logs in with it.
    ok(kpg(&["migrate", "status", "life", "-n", &ns]));
    // Without patch on Secrets, rotation is exit 6 and the password stays.
    let (less, _less_grant) =
        crate::krew::caveats_account(&scope, true, Some(("secrets", "patch")));
    let out = scope.kpg(&[
        "rotate-password",
        "life",
        "-n",
        &ns,
        "--yes",
        "--kubeconfig",
        less.to_str().unwrap(),
    ]);
    crate::expect_code(&out, 6);
    assert_eq!(secret("password"), new);
    // Two rotations at once: both end, and the database takes what the Secret holds.
    let both: Vec<_> = (0..2)
        .map(|_| {
            scope
                .kpg_command(&[
                    "rotate-password",
                    "life",
                    "-n",
                    &ns,
                    "--yes",
                    "--kubeconfig",
                    &account,
                ])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in both {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", out.describe());
    }
    let new = secret("password");
    assert_eq!(ok(login(&new)), "1\n");

    // Scaling: a rerun with --instances 3 adds a streaming replica to the same data.
    let started = Instant::now();
    let doc = json(kpg(&[
        "install",
        "life",
        "-n",
        &ns,
        "--instances",
        "3",
        "--timeout",
        "5m",
        "-o",
        "json",
    ]));
    eprintln!("cnpg: scaling 2 -> 3 took {:?}", started.elapsed());
    assert_eq!(doc["instances"].as_array().unwrap().len(), 3, "{doc}");
    assert_eq!(
        doc["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["replication"] == "streaming")
            .count(),
        2,
        "{doc}"
    );

    let at_three = status_requests();
    eprintln!(
        "cnpg: status of a Cluster: {} API requests at 2 and 3 instances",
        at_three.len()
    );
    let shape = |paths: &[String]| -> Vec<String> {
        // The exec names the primary, which moves: compare the kind of request, not the pod.
        paths
            .iter()
            .map(|p| p.replace(|c: char| c.is_ascii_digit(), "#"))
            .collect()
    };
    assert_eq!(
        shape(&at_two),
        shape(&at_three),
        "{at_two:#?}\n{at_three:#?}"
    );

    // A rerun starts from the live Cluster: a smaller volume is refused before any write; a
    // larger one grows every instance's claim (the operator resizes them).
    let out = kpg(&[
        "install",
        "life",
        "-n",
        &ns,
        "--instances",
        "3",
        "--storage-size",
        "256Mi",
    ]);
    crate::expect_code(&out, 1);
    assert!(out.stderr_text().contains("shrink"), "{}", out.describe());
    let started = Instant::now();
    ok(kpg(&[
        "install",
        "life",
        "-n",
        &ns,
        "--instances",
        "3",
        "--storage-size",
        "20Gi",
        "--timeout",
        "5m",
    ]));
    assert_eq!(get(&scope, "cluster/life", "{.spec.storage.size}"), "20Gi");
    until(
        Duration::from_secs(120),
        "every claim grown to 20Gi",
        || {
            let sizes = get(
            &scope,
            "pvc",
            "{range .items[?(@.metadata.labels.cnpg\\.io/cluster=='life')]}{.status.capacity.storage}{' '}{end}",
        );
            (sizes.split_whitespace().collect::<Vec<_>>() == ["20Gi"; 3])
                .then_some(())
                .ok_or(sizes)
        },
    );
    eprintln!("cnpg: growing 3 volumes took {:?}", started.elapsed());

    // report: the Cluster with the operator's view, every instance's pod and log, the
    // replication the primary sees, and no password in any file.
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("life.tar.gz");
    let out = kpg(&["report", "life", "-n", &ns, "-f", archive.to_str().unwrap()]);
    assert!(
        out.status.success() && !out.stderr_text().contains("not collected"),
        "{}",
        out.describe()
    );
    let tar = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(work.path())
        .output()
        .unwrap();
    assert!(tar.status.success(), "{}", tar.describe());
    let root = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let text = |path: &str| {
        std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let object = text("objects/cluster.yaml");
    assert!(
        object.contains("kind: Cluster") && object.contains("currentPrimary:"),
        "{object}"
    );
    for instance in doc["instances"].as_array().unwrap() {
        let name = instance["name"].as_str().unwrap();
        assert!(text("objects/pods.yaml").contains(&format!("name: {name}\n")));
        assert!(
            text(&format!("logs/{name}.log")).contains("logging_pod"),
            "{name}"
        );
    }
    assert_eq!(text("database/pg_stat_replication.tsv").lines().count(), 3);
    assert!(text("objects/secrets.yaml").contains("name: life-app"));
    assert!(text("objects/services.yaml").contains("name: life-rw"));
    let status: serde_json::Value = serde_json::from_str(&text("status.json")).unwrap();
    assert_eq!(status["instances"].as_array().unwrap().len(), 3, "{status}");
    let unpacked = std::process::Command::new("grep")
        .args(["-rlF", &new])
        .arg(&root)
        .output()
        .unwrap();
    assert_eq!(unpacked.stdout_text(), "", "the password is in the report");

    // A migration cut by a switchover: it is applied once, never half.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("001_slow.up.sql"),
        "CREATE TABLE slow (v int);\nINSERT INTO slow VALUES (1);\nSELECT pg_sleep(30);\nINSERT INTO slow VALUES (2);\n",
    )
    .unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let migrate = scope
        .kpg_command(&[
            "migrate",
            "up",
            "life",
            "-n",
            &ns,
            "--dir",
            &d,
            "--kubeconfig",
            &account,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let before = doc["primary"].as_str().unwrap().to_string();
    until(
        Duration::from_secs(60),
        "the migration sleeping on the primary",
        || {
            let out = sql(&scope, &before, "select count(*) from pg_stat_activity where query like '%pg_sleep(30)%' and pid <> pg_backend_pid()");
            (out.stdout_text() == "1\n")
                .then_some(())
                .ok_or_else(|| out.describe())
        },
    );
    ok(kpg(&["switchover", "life", "-n", &ns]));
    let out = migrate.wait_with_output().unwrap();
    eprintln!(
        "cnpg: the migration across the switchover: {}",
        out.describe()
    );
    // Either the session lost to the switchover is taken up on the new primary (the migration
    // runs again there, whole), or the run fails cleanly (7 or 8) and a rerun applies it.
    match out.status.code() {
        Some(0) => assert!(
            out.stderr_text().contains("reconnected"),
            "the switchover did not cut the migration: {}",
            out.describe()
        ),
        Some(7) | Some(8) => {
            let check = "select count(*) from pg_tables where tablename = 'slow'";
            assert_eq!(kpg_psql(&kpg, &ns, "life", check), "0\n");
            ok(kpg(&["migrate", "up", "life", "-n", &ns, "--dir", &d]));
        }
        _ => panic!("{}", out.describe()),
    }
    let status = json(kpg(&[
        "migrate", "status", "life", "-n", &ns, "--dir", &d, "-o", "json",
    ]));
    assert_eq!(status["applied"], 1, "{status}");
    assert_eq!(status["pending"], 0, "{status}");
    assert_eq!(
        kpg_psql(&kpg, &ns, "life", "select count(*), sum(v) from slow"),
        "2|3\n"
    );

    // The user survived the switchover (the roles live in the replicated data); its password
    // rotates through kubectl-pg (the operator does not know it), and it is deleted.
    assert_eq!(
        ok(as_reader(
            "a-long-enough-password",
            "select count(*) from kept"
        )),
        "500\n"
    );
    ok(kpg(&[
        "rotate-password",
        "life",
        "-n",
        &ns,
        "--db-user",
        "reader",
        "--yes",
    ]));
    let rotated = get(&scope, "secret/life-user-reader", "{.data.password}");
    let rotated = String::from_utf8(
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, rotated.trim()).unwrap(),
    )
    .unwrap();
    assert_eq!(ok(as_reader(&rotated, "select 1")), "1\n");
    assert!(!as_reader("a-long-enough-password", "select 1")
        .status
        .success());
    ok(kpg(&[
        "user",
        "delete",
        "reader",
        "--release",
        "life",
        "-n",
        &ns,
        "--yes",
    ]));
    assert!(!as_reader(&rotated, "select 1").status.success());

    ok(kpg(&[
        "uninstall",
        "life",
        "-n",
        &ns,
        "--delete-data",
        "--yes",
    ]));
}

/// A single instance with the LearnFlow schema and 500 rows of its own moves to a Cluster:
/// refused before any write without --upgrade, off a terminal without --yes, beside another
/// object of an operator's name, and without one RBAC verb; killed with -9 while the Cluster
/// is being made (writes stay blocked), then rolled back; moved for real to 3 instances with
/// every row, the old Service name and password reaching the new primary; finalized.
#[test]
fn a_single_instance_moves_to_a_cluster_with_every_row() {
    let scope = Scope::new("kpg-move");
    let ns = scope.ns.clone();
    if let Err(e) = scope.plane.cnpg() {
        panic!("CloudNativePG's operator did not start: {e}");
    }
    let (account, _grant) = crate::krew::caveats_account(&scope, true, None);
    let account = account.to_str().unwrap().to_string();
    let kpg = |args: &[&str]| {
        let mut all = args.to_vec();
        let at = all.iter().position(|a| *a == "--").unwrap_or(all.len());
        all.splice(at..at, ["--kubeconfig", account.as_str()]);
        scope.kpg(&all)
    };
    let json = |out: Output| -> serde_json::Value { serde_json::from_str(&ok(out)).unwrap() };
    ok(kpg(&[
        "install",
        "mv",
        "-n",
        &ns,
        "--postgres-version",
        "17",
        "--migrate",
        "--timeout",
        "3m",
    ]));
    let write = |query: &str| {
        kpg(&[
            "psql",
            "mv",
            "-n",
            &ns,
            "--",
            "-v",
            "ON_ERROR_STOP=1",
            "-XtAqc",
            query,
        ])
    };
    ok(write(
        "create table moved (id int primary key, note text); \
         insert into moved select g, md5(g::text) from generate_series(1, 500) g",
    ));
    let phase = || {
        get(
            &scope,
            "statefulset/mv",
            "{.metadata.annotations.kubectl-pg\\.io/to-cluster-phase}",
        )
    };
    let password = ok(scope.kubectl_ns(&[
        "get",
        "secret/mv-credentials",
        "-o",
        "go-template={{.data.password | base64decode}}",
    ]));
    // A client nobody here wrote, through the release's own Service, with its password.
    let through_service = |query: &str| {
        let (mut forward, port) = scope.plane.port_forward(&ns, "svc/mv", 5432);
        let out = Command::new(scope.plane.postgres.join("clients/bin/psql"))
            .env("PGPASSWORD", &password)
            .args([
                "-XtAq",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-d",
                "learnflow",
                "-c",
                query,
            ])
            .output()
            .unwrap();
        let _ = forward.kill();
        let _ = forward.wait();
        out
    };
    let move_args = [
        "install",
        "mv",
        "-n",
        ns.as_str(),
        "--upgrade",
        "--instances",
        "3",
    ];
    let moving = |extra: &[&str]| {
        let mut all = move_args.to_vec();
        all.extend_from_slice(extra);
        kpg(&all)
    };

    // Refused before any write.
    let out = kpg(&["install", "mv", "-n", &ns, "--instances", "3"]);
    crate::expect_code(&out, 1);
    assert!(
        out.stderr_text().contains("--upgrade --instances 3"),
        "{}",
        out.describe()
    );
    let out = moving(&[]);
    crate::expect_code(&out, 1);
    assert!(out.stderr_text().contains("--yes"), "{}", out.describe());
    ok(scope.kubectl_ns(&[
        "create",
        "secret",
        "generic",
        "mv-app",
        "--from-literal=k=v",
    ]));
    let out = moving(&["--yes"]);
    crate::expect_code(&out, 1);
    assert!(out.stderr_text().contains("mv-app"), "{}", out.describe());
    ok(scope.kubectl_ns(&["delete", "secret", "mv-app"]));
    let (less, _less_grant) =
        crate::krew::caveats_account(&scope, true, Some(("clusters", "create")));
    let out = scope.kpg(&[
        "install",
        "mv",
        "-n",
        &ns,
        "--upgrade",
        "--instances",
        "3",
        "--yes",
        "--kubeconfig",
        less.to_str().unwrap(),
    ]);
    crate::expect_code(&out, 6);
    assert!(out.stderr_text().contains("clusters"), "{}", out.describe());
    assert_eq!(phase(), "");
    ok(write(
        "insert into moved values (501, 'after the refusals')",
    ));

    // While the Cluster is made the single instance takes writes; kill -9 once they are
    // blocked: the record says so, no client can write to the single instance, and
    // --rollback returns to it and deletes the Cluster.
    let backup = scope.dir.path().join("killed.sql");
    let mut killed = scope
        .kpg_command(&[
            "install",
            "mv",
            "-n",
            &ns,
            "--upgrade",
            "--instances",
            "2",
            "--yes",
            "--backup-file",
            backup.to_str().unwrap(),
            "--kubeconfig",
            &account,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    until(
        Duration::from_secs(120),
        "the move making its Cluster",
        || {
            let now = phase();
            (now == "preparing").then_some(()).ok_or(now)
        },
    );
    ok(through_service(
        "insert into moved values (502, 'while the Cluster is made')",
    ));
    let blocked = ["blocking-writes", "copying", "verified"];
    until(Duration::from_secs(180), "the move blocking writes", || {
        let now = phase();
        blocked.contains(&now.as_str()).then_some(()).ok_or(now)
    });
    killed.kill().unwrap();
    killed.wait().unwrap();
    let stopped = phase();
    assert!(blocked.contains(&stopped.as_str()), "{stopped}");
    let out = through_service("insert into moved values (999, 'while blocked')");
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stderr_text().contains("pg_hba.conf rejects"),
        "{}",
        out.describe()
    );
    let doc = json(kpg(&[
        "install",
        "mv",
        "-n",
        &ns,
        "--rollback",
        "--yes",
        "-o",
        "json",
    ]));
    assert_eq!(doc["result"], "RolledBack", "{doc}");
    assert_eq!(phase(), "");
    let out = scope.kubectl_ns(&["get", "cluster", "mv", "-o", "name", "--ignore-not-found"]);
    assert_eq!(ok(out), "");
    ok(write(
        "insert into moved values (503, 'after the rollback')",
    ));

    // The move: every row, verified, and the release is the Cluster.
    let started = Instant::now();
    let backup = scope.dir.path().join("moved.sql");
    let doc = json(moving(&[
        "--yes",
        "--backup-file",
        backup.to_str().unwrap(),
        "-o",
        "json",
    ]));
    eprintln!(
        "cnpg: the move to 3 instances took {:?}: {doc}",
        started.elapsed()
    );
    assert_eq!(doc["result"], "Moved", "{doc}");
    assert!(doc["tables_verified"].as_u64().unwrap() >= 2, "{doc}");
    assert!(doc["downtime_ms"].as_u64().is_some(), "{doc}");
    let dsn = doc["dsn"].as_str().unwrap();
    assert!(dsn.contains(&format!("@mv-rw.{ns}.svc")), "{doc}");

    assert!(!dsn.contains(&password), "{doc}");
    assert_eq!(phase(), "moved");
    let status = json(kpg(&["status", "mv", "-n", &ns, "-o", "json"]));
    assert_eq!(status["phase"], "Healthy", "{status}");
    assert_eq!(status["instances"].as_array().unwrap().len(), 3, "{status}");
    let primary = status["primary"].as_str().unwrap().to_string();
    assert_eq!(
        ok(write("select count(*), sum(id) from moved")),
        "503|126756\n"
    );
    ok(write("insert into moved values (504, 'on the Cluster')"));
    let migrations = ok(sql_db(
        &scope,
        &primary,
        "learnflow",
        "select count(*) > 0 from kubectl_pg_migrations",
    ));
    assert_eq!(migrations, "t\n");
    // The old Service name and the old password reach the new primary.
    assert_eq!(
        ok(through_service("insert into moved values (505, 'through Service mv'); select pg_is_in_recovery(), count(*) from moved")),
        "f|505\n"
    );
    // A rerun is the Cluster's, and keeps the superuser access the clients' password needs.
    ok(kpg(&["install", "mv", "-n", &ns, "--instances", "3"]));
    assert_eq!(
        get(&scope, "cluster/mv", "{.spec.superuserSecret.name}"),
        "mv-credentials"
    );

    // --finalize: the single instance goes; the Cluster keeps every row.
    let doc = json(kpg(&[
        "install",
        "mv",
        "-n",
        &ns,
        "--finalize",
        "--yes",
        "-o",
        "json",
    ]));
    assert_eq!(doc["result"], "Finalized", "{doc}");
    let left = ok(scope.kubectl_ns(&[
        "get",
        "statefulset/mv",
        "pvc/data-mv-0",
        "service/mv-hl",
        "--ignore-not-found",
        "-o",
        "name",
    ]));
    assert_eq!(left, "");
    assert_eq!(
        get(&scope, "service/mv", "{.metadata.ownerReferences[0].kind}"),
        "Cluster"
    );
    assert_eq!(ok(write("select count(*) from moved")), "505\n");

    // The major upgrade, the operator's way (pg_upgrade in its Job): refused before any change
    // without the one verb it writes with; killed once the operator has the new image, a
    // rerun waits for it and verifies every row before any client may write.
    let upgrade_phase = || {
        get(
            &scope,
            "cluster/mv",
            "{.metadata.annotations.kubectl-pg\\.io/upgrade-phase}",
        )
    };
    let upgrade_args = [
        "upgrade",
        "mv",
        "-n",
        ns.as_str(),
        "--postgres-version",
        "18",
        "--yes",
    ];
    let (unpatched, _unpatched_grant) =
        crate::krew::caveats_account(&scope, true, Some(("clusters", "patch")));
    let mut all = upgrade_args.to_vec();
    all.extend(["--kubeconfig", unpatched.to_str().unwrap()]);
    let out = scope.kpg(&all);
    crate::expect_code(&out, 6);
    assert!(out.stderr_text().contains("clusters"), "{}", out.describe());
    assert_eq!(upgrade_phase(), "");
    // An image that cannot be pulled: the operator's upgrade pod never starts pg_upgrade, and
    // the command goes back to the old image and allows writes (exit 5).
    let bad = scope.dir.path().join("bad.sql");
    let mut all = upgrade_args.to_vec();
    all.extend([
        "--image",
        "registry.invalid/postgresql:18",
        "--backup-file",
        bad.to_str().unwrap(),
        "--kubeconfig",
        &account,
    ]);
    let out = scope.kpg(&all);
    crate::expect_code(&out, 5);
    assert!(
        out.stderr_text().contains("cannot pull"),
        "{}",
        out.describe()
    );
    assert_eq!(upgrade_phase(), "");
    assert_eq!(
        ok(write(
            "select current_setting('server_version_num')::int / 10000, count(*) from moved"
        )),
        "17|505\n"
    );
    let backup = scope.dir.path().join("pg17.sql");
    let mut all = upgrade_args.to_vec();
    all.extend([
        "--backup-file",
        backup.to_str().unwrap(),
        "--kubeconfig",
        &account,
    ]);
    let started = Instant::now();
    let mut killed = scope
        .kpg_command(&all)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    until(
        Duration::from_secs(120),
        "the upgrade asking for PostgreSQL 18",
        || {
            let now = upgrade_phase();
            (now == "upgrading").then_some(()).ok_or(now)
        },
    );
    // A second run meanwhile is refused by the release's lease, before any write.
    let twin = kpg(&upgrade_args);
    crate::expect_code(&twin, 1);
    assert!(
        twin.stderr_text()
            .contains("another upgrade of release mv is running"),
        "{}",
        twin.describe()
    );
    killed.kill().unwrap();
    killed.wait().unwrap();
    assert!(std::fs::metadata(&backup).unwrap().len() > 0);
    let doc = json(kpg(&[
        "upgrade",
        "mv",
        "-n",
        &ns,
        "--postgres-version",
        "18",
        "--yes",
        "-o",
        "json",
    ]));
    eprintln!(
        "cnpg: the upgrade 17 -> 18 of 3 instances took {:?}: {doc}",
        started.elapsed()
    );
    assert_eq!(doc["result"], "Upgraded", "{doc}");
    assert_eq!(
        (doc["from_major"].as_u64(), doc["to_major"].as_u64()),
        (Some(17), Some(18)),
        "{doc}"
    );
    assert!(doc["tables_verified"].as_u64().unwrap() >= 2, "{doc}");
    // The downtime counts from the killed run's block, which the record kept.
    assert!(doc["downtime_ms"].as_u64().is_some(), "{doc}");
    assert_eq!(upgrade_phase(), "");
    let status = json(kpg(&["status", "mv", "-n", &ns, "-o", "json"]));
    assert_eq!(status["phase"], "Healthy", "{status}");
    assert_eq!(status["instances"].as_array().unwrap().len(), 3, "{status}");
    assert_eq!(
        ok(write("insert into moved values (506, 'on 18'); select current_setting('server_version_num')::int / 10000, count(*) from moved")),
        "18|506\n"
    );
}

/// Without the operator's API (no `postgresql.cnpg.io` CRDs: discovery and every request under
/// it answer a plain 404 page, as the API server does), `install --instances` is exit 6 naming
/// what is missing and how to install it, and writes nothing.
#[test]
fn install_instances_without_the_operators_api_is_exit_6() {
    let scope = Scope::new("kpg-nocrd");
    let (proxy, kubeconfig) = crate::proxy::in_front_of(&scope);
    proxy.fail_next_html(
        1000,
        404,
        crate::proxy::Matcher::path("/apis/postgresql.cnpg.io/"),
    );
    let out = scope.kpg(&[
        "install",
        "nocrd",
        "-n",
        &scope.ns,
        "--instances",
        "3",
        "--kubeconfig",
        &kubeconfig,
    ]);
    crate::expect_code(&out, 6);
    let err = out.stderr_text();
    assert!(err.contains("postgresql.cnpg.io/v1"), "{}", out.describe());
    assert!(
        err.contains("kubectl apply --server-side -f https://"),
        "{}",
        out.describe()
    );
    let writes: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| !["GET", "HEAD"].contains(&r.method.as_str()))
        .filter(|r| !r.path_and_query.contains("selfsubjectaccessreviews"))
        .map(|r| format!("{} {}", r.method, r.path_and_query))
        .collect();
    assert!(writes.is_empty(), "{writes:?}");
    assert_eq!(
        ok(scope.kubectl_ns(&["get", "all,secrets,pvc", "-o", "name"])),
        ""
    );
}

/// `psql` inside an instance, in database `db`.
fn sql_db(scope: &Scope, pod: &str, db: &str, query: &str) -> Output {
    scope.kubectl_ns(&[
        "exec",
        pod,
        "-c",
        "postgres",
        "--",
        "psql",
        "-XtAq",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        db,
        "-c",
        query,
    ])
}
