//! The plugin's cluster commands against the test API server (and its real PostgreSQL pods):
//! access and its errors, install/uninstall, status, dsn, psql, migrate through the cluster.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::apiserver::{Insufficient, TestCluster};
use crate::{expect_code, kpg_command, OutputExt};

/// Runs kubectl-pg against `cluster`'s kubeconfig.
fn run(cluster: &TestCluster, args: &[&str]) -> Output {
    run_with(cluster, args, "")
}

fn run_with(cluster: &TestCluster, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut command = kpg_command(args);
    command
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("HOME", cluster.dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("kubectl-pg runs");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", output.describe()))
}

/// Installs release `release` in `ns` and checks it became Healthy.
fn install(cluster: &TestCluster, ns: &str, release: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "install",
        release,
        "-n",
        ns,
        "-o",
        "json",
        "--timeout",
        "60s",
    ];
    args.extend_from_slice(extra);
    let out = run(cluster, &args);
    expect_code(&out, 0);
    let doc = json(&out);
    assert_eq!(doc["phase"], "Healthy", "{}", out.describe());
    doc
}

fn kubectl() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
}

#[test]
fn kubeconfig_context_and_namespace_resolution() {
    let cluster = TestCluster::start();
    // No kubeconfig at all.
    let none = kpg_command(&["dsn"])
        .env("HOME", cluster.dir())
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    expect_code(&none, 2);
    assert!(
        none.stderr_text().contains("no kubeconfig found"),
        "{}",
        none.describe()
    );
    // Unknown context, named with the known ones.
    let unknown = run(&cluster, &["status", "--context", "nope"]);
    expect_code(&unknown, 2);
    assert!(
        unknown.stderr_text().contains("\"nope\"") && unknown.stderr_text().contains("e2e"),
        "{}",
        unknown.describe()
    );
    // The context's namespace is used, -n wins over it; the default is "postgres".
    let text = std::fs::read_to_string(&cluster.kubeconfig).unwrap();
    let with_ns = text.replace(
        "    cluster: e2e\n",
        "    cluster: e2e\n    namespace: ctxns\n",
    );
    assert_ne!(text, with_ns, "the kubeconfig layout changed:\n{text}");
    let path = cluster.dir().join("ctx-ns.kubeconfig");
    std::fs::write(&path, with_ns).unwrap();
    let p = path.display().to_string();
    let ctx = run(&cluster, &["dsn", "--kubeconfig", &p]);
    expect_code(&ctx, 1);
    assert!(
        ctx.stderr_text().contains("\"ctxns\""),
        "{}",
        ctx.describe()
    );
    let flag = run(&cluster, &["dsn", "--kubeconfig", &p, "-n", "other"]);
    assert!(
        flag.stderr_text().contains("\"other\""),
        "{}",
        flag.describe()
    );
    let default = run(&cluster, &["dsn"]);
    assert!(
        default.stderr_text().contains("\"postgres\""),
        "{}",
        default.describe()
    );
    // Several kubeconfig files merged through KUBECONFIG: the first sets the context.
    let merged = format!("{}:{}", cluster.kubeconfig.display(), path.display());
    let out = kpg_command(&["status", "-o", "json"])
        .env("KUBECONFIG", merged)
        .output()
        .unwrap();
    expect_code(&out, 0);
    assert_eq!(json(&out)["phase"], "NotDeployed");
}

#[test]
fn unreachable_unauthorised_and_forbidden_clusters() {
    let cluster = TestCluster::start();
    let text = std::fs::read_to_string(&cluster.kubeconfig).unwrap();
    let write = |name: &str, body: String| {
        let path = cluster.dir().join(name);
        std::fs::write(&path, body).unwrap();
        path.display().to_string()
    };
    let bad_token = write("bad-token", text.replace(&cluster.token, "wrong-token"));
    let out = run(&cluster, &["status", "--kubeconfig", &bad_token]);
    expect_code(&out, 2);
    assert!(
        out.stderr_text().contains("Unauthorized") && out.stderr_text().contains(&cluster.url),
        "{}",
        out.describe()
    );

    let port = crate::pg::free_port();
    let refused = write(
        "refused",
        text.replace(&cluster.url, &format!("https://127.0.0.1:{port}")),
    );
    let out = run(&cluster, &["status", "--kubeconfig", &refused]);
    expect_code(&out, 2);
    assert!(
        out.stderr_text().contains("context \"e2e\""),
        "{}",
        out.describe()
    );

    // A CA that did not sign the server's certificate.
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    use base64::Engine;
    let other_ca = base64::engine::general_purpose::STANDARD.encode(other.cert.pem());
    let ours = base64::engine::general_purpose::STANDARD.encode(&cluster.ca_pem);
    assert!(text.contains(&ours), "the kubeconfig embeds the CA");
    let tls = write("tls", text.replace(&ours, &other_ca));
    let out = run(&cluster, &["status", "--kubeconfig", &tls]);
    expect_code(&out, 2);
    assert!(
        out.stderr_text().to_lowercase().contains("certificate"),
        "{}",
        out.describe()
    );

    cluster.faults.deny("get", "secrets");
    let out = run(&cluster, &["dsn", "-n", "default"]);
    expect_code(&out, 2);
    assert!(
        out.stderr_text().contains("cannot get secrets"),
        "{}",
        out.describe()
    );
    cluster.faults.deny("patch", "statefulsets");
    let out = run(&cluster, &["install", "-n", "default"]);
    expect_code(&out, 6);
    assert!(
        out.stderr_text().contains("patch statefulsets"),
        "{}",
        out.describe()
    );
}

#[test]
fn install_is_healthy_migrated_and_idempotent() {
    let cluster = TestCluster::start();
    let doc = install(&cluster, "learn", "postgres", &["--migrate"]);
    assert_eq!(doc["apiVersion"], "kubectl-pg/v1");
    assert_eq!(doc["kind"], "DeploymentStatus");
    assert_eq!(doc["pods_ready"], 1);
    assert_eq!(doc["pvc_bound"], true);
    assert_eq!(doc["database_accessible"], true);
    assert_eq!(doc["migrations_applied"], 6);
    assert_eq!(doc["migrations_pending"], 0);
    assert_eq!(doc["pvc"]["size"], "8Gi");
    assert!(doc["connection_string"]
        .as_str()
        .unwrap()
        .contains("********"));
    let sts = cluster
        .get_json("/apis/apps/v1/namespaces/learn/statefulsets/postgres")
        .unwrap();
    assert_eq!(
        sts["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "kubectl-pg"
    );
    assert_eq!(sts["metadata"]["managedFields"][0]["manager"], "kubectl-pg");
    let secret = cluster
        .get_json("/api/v1/namespaces/learn/secrets/postgres-credentials")
        .unwrap();
    assert_eq!(secret["type"], "kubernetes.io/basic-auth");

    // A second install changes nothing.
    let version = sts["metadata"]["resourceVersion"].clone();
    let secret_version = secret["metadata"]["resourceVersion"].clone();
    let again = run(&cluster, &["install", "-n", "learn"]);
    expect_code(&again, 0);
    assert!(
        again.stderr_text().contains("already deployed"),
        "{}",
        again.describe()
    );
    let sts = cluster
        .get_json("/apis/apps/v1/namespaces/learn/statefulsets/postgres")
        .unwrap();
    assert_eq!(sts["metadata"]["resourceVersion"], version);
    let secret = cluster
        .get_json("/api/v1/namespaces/learn/secrets/postgres-credentials")
        .unwrap();
    assert_eq!(secret["metadata"]["resourceVersion"], secret_version);

    // --show-password puts the real password in the summary's connection string.
    let shown = run(
        &cluster,
        &["install", "-n", "learn", "--show-password", "-o", "json"],
    );
    expect_code(&shown, 0);
    let dsn = run(&cluster, &["dsn", "-n", "learn"]);
    assert_eq!(json(&shown)["connection_string"], dsn.stdout_text().trim());

    // --upgrade applies new resources and waits for the rollout.
    let up = run(
        &cluster,
        &[
            "install",
            "-n",
            "learn",
            "--upgrade",
            "--cpu-request",
            "250m",
            "--memory-limit",
            "1Gi",
            "-o",
            "json",
        ],
    );
    expect_code(&up, 0);
    assert_eq!(json(&up)["phase"], "Healthy");
    let sts = cluster
        .get_json("/apis/apps/v1/namespaces/learn/statefulsets/postgres")
        .unwrap();
    let resources = &sts["spec"]["template"]["spec"]["containers"][0]["resources"];
    assert_eq!(resources["requests"]["cpu"], "250m");
    assert_eq!(resources["limits"]["memory"], "1Gi");
    let pod = cluster
        .get_json("/api/v1/namespaces/learn/pods/postgres-0")
        .unwrap();
    assert_eq!(
        pod["spec"]["containers"][0]["resources"]["requests"]["cpu"], "250m",
        "the pod was rolled"
    );
}

#[test]
fn uninstall_keeps_the_data_and_the_secret_can_be_recreated() {
    let cluster = TestCluster::start();
    install(&cluster, "keep", "db", &[]);
    let psql = |args: &[&str]| {
        let mut all = vec!["psql", "db", "-n", "keep", "--local", "--"];
        all.extend_from_slice(args);
        run(&cluster, &all)
    };
    expect_code(
        &psql(&[
            "-c",
            "CREATE TABLE notes (t text); INSERT INTO notes VALUES ('kept')",
        ]),
        0,
    );
    let password = run(&cluster, &["dsn", "db", "-n", "keep", "-o", "json"]);
    let password = json(&password)["password"].as_str().unwrap().to_string();

    let gone = run(&cluster, &["uninstall", "db", "-n", "keep"]);
    expect_code(&gone, 0);
    assert!(
        gone.stdout_text().contains("PVC data-db-0 kept"),
        "{}",
        gone.describe()
    );
    assert!(cluster
        .get_json("/apis/apps/v1/namespaces/keep/statefulsets/db")
        .is_none());
    assert!(
        cluster
            .get_json("/api/v1/namespaces/keep/pods/db-0")
            .is_none(),
        "uninstall waits for the pod"
    );
    assert!(cluster
        .get_json("/api/v1/namespaces/keep/persistentvolumeclaims/data-db-0")
        .is_some());
    // Our Secret went with the release; install again: the data is there, under a new password
    // set inside the existing database.
    install(&cluster, "keep", "db", &[]);
    let out = psql(&["-At", "-c", "SELECT t FROM notes"]);
    expect_code(&out, 0);
    assert_eq!(out.stdout_text().trim(), "kept");
    let new_password = json(&run(&cluster, &["dsn", "db", "-n", "keep", "-o", "json"]))["password"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new_password, password);

    // The Secret deleted under a running release: install restores access.
    assert!(cluster.delete("/api/v1/namespaces/keep/secrets/db-credentials"));
    let status = json(&run(
        &cluster,
        &["status", "db", "-n", "keep", "-o", "json"],
    ));
    assert!(
        status["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["reason"] == "SecretMissing"),
        "{status}"
    );
    let again = run(
        &cluster,
        &["install", "db", "-n", "keep", "--upgrade", "-o", "json"],
    );
    expect_code(&again, 0);
    let out = psql(&["-At", "-c", "SELECT t FROM notes"]);
    expect_code(&out, 0);
    assert_eq!(out.stdout_text().trim(), "kept");

    // --delete-data needs --yes off a terminal, then removes the PVC.
    expect_code(
        &run(
            &cluster,
            &["uninstall", "db", "-n", "keep", "--delete-data"],
        ),
        1,
    );
    expect_code(
        &run(
            &cluster,
            &["uninstall", "db", "-n", "keep", "--delete-data", "--yes"],
        ),
        0,
    );
    assert!(cluster
        .get_json("/api/v1/namespaces/keep/persistentvolumeclaims/data-db-0")
        .is_none());
    let absent = run(&cluster, &["uninstall", "db", "-n", "keep"]);
    expect_code(&absent, 0);
    assert!(absent.stdout_text().contains("nothing to uninstall"));
}

#[test]
fn install_failures_are_diagnosed_with_their_exit_codes() {
    let cluster = TestCluster::start();
    // Invalid input: exit 1 before any API call.
    for (args, needle) in [
        (&["install", "Bad_Name"][..], "release name"),
        (&["install", "--storage-size", "8GB"], "--storage-size"),
        (&["install", "--profile", "prod"], "--existing-secret"),
        (
            &["install", "--postgres-version", "9"],
            "--postgres-version",
        ),
        (
            &["install", "--cpu-request", "2", "--cpu-limit", "1"],
            "above",
        ),
    ] {
        let before = cluster.requests().len();
        let out = run(&cluster, args);
        expect_code(&out, 1);
        assert!(
            out.stderr_text().contains(needle),
            "{needle}: {}",
            out.describe()
        );
        assert_eq!(
            cluster.requests().len(),
            before,
            "no API call before validation"
        );
    }
    let short = run_with(&cluster, &["install", "--password-stdin"], "too-short\n");
    expect_code(&short, 1);

    cluster.faults.set_no_default_storage_class(true);
    let out = run(&cluster, &["install", "-n", "f1"]);
    expect_code(&out, 6);
    assert!(
        out.stderr_text().contains("StorageClass"),
        "{}",
        out.describe()
    );
    let out = run(
        &cluster,
        &["install", "-n", "f1", "--storage-class", "fast"],
    );
    expect_code(&out, 6);
    assert!(out.stderr_text().contains("\"fast\""), "{}", out.describe());
    cluster.faults.set_no_default_storage_class(false);

    cluster.faults.set_unschedulable(Some(Insufficient::Cpu));
    let out = run(&cluster, &["install", "-n", "f2"]);
    expect_code(&out, 6);
    assert!(
        out.stderr_text().contains("Insufficient cpu"),
        "{}",
        out.describe()
    );
    let status = json(&run(&cluster, &["status", "-n", "f2", "-o", "json"]));
    assert_eq!(status["phase"], "Failed");
    cluster.faults.set_unschedulable(None);

    cluster.faults.set_image_pull_failure(true);
    let out = run(
        &cluster,
        &["install", "-n", "f3", "--image", "postgres:99.9"],
    );
    expect_code(&out, 1);
    assert!(
        out.stderr_text().contains("postgres:99.9"),
        "{}",
        out.describe()
    );
    cluster.faults.set_image_pull_failure(false);

    cluster.faults.set_crash_loop(true);
    let out = run(&cluster, &["install", "-n", "f4"]);
    expect_code(&out, 5);
    assert!(
        out.stderr_text().contains("CrashLoopBackOff") || out.stderr_text().contains("crashing"),
        "{}",
        out.describe()
    );
    assert!(
        out.stderr_text().contains("log: "),
        "the last log lines are shown: {}",
        out.describe()
    );
    let wait = run(
        &cluster,
        &["status", "-n", "f4", "--wait", "--timeout", "30s"],
    );
    expect_code(&wait, 5);
    cluster.faults.set_crash_loop(false);

    // Deadline before the pod can be ready.
    let out = run(&cluster, &["install", "-n", "f5", "--timeout", "1ms"]);
    expect_code(&out, 4);
    assert!(
        out.stderr_text().contains("timed out"),
        "{}",
        out.describe()
    );

    // A quota without room for the storage.
    cluster.ensure_namespace("f6");
    cluster.apply_json(&serde_json::json!({
        "apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": {"name": "small", "namespace": "f6"},
        "spec": {"hard": {"requests.storage": "5Gi"}},
    }));
    let out = run(&cluster, &["install", "-n", "f6"]);
    expect_code(&out, 6);
    assert!(
        out.stderr_text().contains("small") && out.stderr_text().contains("requests.storage"),
        "{}",
        out.describe()
    );
}

#[test]
fn dry_run_manifests_are_accepted_by_the_api_server() {
    let cluster = TestCluster::start();
    let out = run(
        &cluster,
        &["install", "web", "-n", "dry", "--dry-run", "-o", "json"],
    );
    expect_code(&out, 0);
    assert!(
        cluster.requests().is_empty(),
        "--dry-run touches no cluster"
    );
    let list = json(&out);
    assert_eq!(list["kind"], "List");
    let kinds: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["Namespace", "Secret", "Service", "Service", "StatefulSet"]
    );
    for object in list["items"].as_array().unwrap() {
        cluster.apply_json(object);
    }
    cluster.wait_ready("dry", "web-0", Duration::from_secs(60));
    let yaml = run(&cluster, &["install", "web", "-n", "dry", "--dry-run"]);
    expect_code(&yaml, 0);
    assert!(
        yaml.stdout_text()
            .starts_with("---\napiVersion: v1\nkind: Namespace"),
        "{}",
        yaml.describe()
    );
    if let Some(kubectl) = kubectl() {
        let manifest = cluster.dir().join("manifest.yaml");
        std::fs::write(&manifest, yaml.stdout_text()).unwrap();
        let out = std::process::Command::new(kubectl)
            .args([
                "apply",
                "--server-side",
                "--force-conflicts",
                "--dry-run=server",
                "--field-manager=kubectl-pg",
                "--validate=false",
                "-f",
            ])
            .arg(&manifest)
            .env("KUBECONFIG", &cluster.kubeconfig)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl apply --dry-run=server: {}",
            out.describe()
        );
    } else {
        eprintln!("kubectl not on PATH: skipping the kubectl apply --dry-run=server check");
    }
}

#[test]
fn status_in_table_json_and_across_namespaces() {
    let cluster = TestCluster::start();
    let none = run(&cluster, &["status", "-n", "empty", "-o", "json"]);
    expect_code(&none, 0);
    assert_eq!(json(&none)["phase"], "NotDeployed");
    let table = run(&cluster, &["status", "-n", "empty"]);
    expect_code(&table, 0);
    assert!(
        table.stdout_text().contains("NotDeployed")
            && table.stdout_text().contains("kubectl pg install")
    );

    install(&cluster, "a", "one", &["--migrate"]);
    install(&cluster, "a", "two", &[]);
    install(&cluster, "b", "three", &["--service-type", "LoadBalancer"]);
    let detail = run(&cluster, &["status", "one", "-n", "a"]);
    expect_code(&detail, 0);
    let text = detail.stdout_text();
    for needle in [
        "Phase:",
        "Healthy",
        "1/1 ready",
        "data-one-0 Bound 8Gi",
        "round trip",
        "6 applied (latest 006), 0 pending",
        "postgres:18.1",
        "********",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    // Several releases: a table; -A adds the namespace column.
    let listed = run(&cluster, &["status", "-n", "a"]);
    expect_code(&listed, 0);
    assert!(
        listed.stdout_text().starts_with("NAME"),
        "{}",
        listed.describe()
    );
    let all = run(&cluster, &["status", "-A"]);
    expect_code(&all, 0);
    let all_text = all.stdout_text();
    let lines: Vec<&str> = all_text.lines().collect();
    assert!(lines[0].starts_with("NAMESPACE"), "{lines:?}");
    assert_eq!(lines.len(), 4, "{lines:?}");
    let docs = json(&run(&cluster, &["status", "-A", "-o", "json"]));
    assert_eq!(docs["kind"], "DeploymentStatusList");
    assert_eq!(docs["items"].as_array().unwrap().len(), 3);
    let wide = run(&cluster, &["status", "-A", "-o", "wide"]);
    assert!(
        wide.stdout_text().contains("LoadBalancer"),
        "{}",
        wide.describe()
    );
    let yaml = run(&cluster, &["status", "two", "-n", "a", "-o", "yaml"]);
    assert!(yaml.stdout_text().contains("kind: DeploymentStatus"));

    // --wait: met at once when healthy; a timeout on a release that never comes.
    expect_code(&run(&cluster, &["status", "one", "-n", "a", "--wait"]), 0);
    expect_code(
        &run(&cluster, &["status", "one", "-n", "a", "--wait=ready"]),
        0,
    );
    let never = run(
        &cluster,
        &["status", "ghost", "-n", "a", "--wait", "--timeout", "300ms"],
    );
    expect_code(&never, 4);

    // The database killed: Ready, not Healthy, and the problem is listed.
    cluster.faults.kill_postgres("a", "two-0");
    let recovered = run(
        &cluster,
        &[
            "status",
            "two",
            "-n",
            "a",
            "--wait",
            "--timeout",
            "60s",
            "-o",
            "json",
        ],
    );
    expect_code(&recovered, 0);
    assert_eq!(json(&recovered)["restarts"], 1);
}

#[test]
fn dsn_in_every_format_connects() {
    let cluster = TestCluster::start();
    let password = "p@ss:w/rd 'quoted' & more%";
    let out = run_with(
        &cluster,
        &[
            "install",
            "app",
            "-n",
            "d",
            "--password-stdin",
            "--username",
            "app_user",
            "--database",
            "app_db",
        ],
        &format!("{password}\n"),
    );
    expect_code(&out, 0);
    let uri = run(&cluster, &["dsn", "-n", "d"]);
    expect_code(&uri, 0);
    let uri = uri.stdout_text().trim().to_string();
    assert_eq!(
        uri,
        "postgresql://app_user:p%40ss%3Aw%2Frd%20%27quoted%27%20%26%20more%25@app.d.svc.cluster.local:5432/app_db"
    );
    // The connection string works: same credentials, pointed at the pod's server.
    let addr = cluster.postgres_addr("d", "app-0").unwrap();
    let local = uri.replace("app.d.svc.cluster.local:5432", &addr.to_string()) + "?sslmode=disable";
    let rows = crate::pg::query(&local, "SELECT current_user, current_database()");
    assert_eq!(
        rows[0],
        [Some("app_user".to_string()), Some("app_db".to_string())]
    );

    let env = run(&cluster, &["dsn", "-n", "d", "--format", "env"]).stdout_text();
    assert!(
        env.contains("PGUSER=app_user\n")
            && env.contains("PGPASSWORD='p@ss:w/rd '\\''quoted'\\'' & more%'\n"),
        "{env}"
    );
    let sh = std::process::Command::new("sh")
        .args(["-c", &format!("{env}\nprintf %s \"$PGPASSWORD\"")])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&sh.stdout),
        password,
        "eval gives back the password"
    );
    let doc = json(&run(&cluster, &["dsn", "-n", "d", "-o", "json"]));
    assert_eq!(doc["kind"], "DatabaseConnection");
    assert_eq!(doc["password"], password);
    assert_eq!(doc["port"], 5432);
    let masked = json(&run(
        &cluster,
        &["dsn", "-n", "d", "--format", "json", "--mask"],
    ));
    assert_eq!(masked["password"], "********");
    let jdbc = run(&cluster, &["dsn", "-n", "d", "--format", "jdbc"]).stdout_text();
    assert!(
        jdbc.starts_with(
            "jdbc:postgresql://app.d.svc.cluster.local:5432/app_db?user=app_user&password=p%40ss"
        ),
        "{jdbc}"
    );
    let kv = run(&cluster, &["dsn", "-n", "d", "--format", "keyvalue"]).stdout_text();
    assert!(
        kv.contains("password='p@ss:w/rd \\'quoted\\' & more%'"),
        "{kv}"
    );
    let pgpass = run(&cluster, &["dsn", "-n", "d", "--format", "pgpass"]).stdout_text();
    assert_eq!(
        pgpass.trim(),
        "app.d.svc.cluster.local:5432:app_db:app_user:p@ss\\:w/rd 'quoted' & more%"
    );
    let yaml = run(&cluster, &["dsn", "-n", "d", "-o", "yaml"]).stdout_text();
    assert!(yaml.contains("kind: DatabaseConnection"), "{yaml}");

    // --external: none for ClusterIP, the ingress for a LoadBalancer.
    let external = run(&cluster, &["dsn", "-n", "d", "--external"]);
    expect_code(&external, 1);
    assert!(
        external.stderr_text().contains("kubectl pg psql"),
        "{}",
        external.describe()
    );
    install(&cluster, "lb", "pub", &["--service-type", "LoadBalancer"]);
    let lb = run(&cluster, &["dsn", "pub", "-n", "lb", "--external"]);
    expect_code(&lb, 0);
    assert!(
        lb.stdout_text().contains("@127.0.0.1:5432/learnflow"),
        "{}",
        lb.describe()
    );

    install(&cluster, "np", "node", &["--service-type", "NodePort"]);
    let np = run(&cluster, &["dsn", "node", "-n", "np", "--external"]);
    expect_code(&np, 0);
    let service = cluster
        .get_json("/api/v1/namespaces/np/services/node")
        .unwrap();
    let node_port = service["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
    assert!(
        np.stdout_text()
            .contains(&format!("@127.0.0.1:{node_port}/learnflow")),
        "{}",
        np.describe()
    );

    // A Secret without the expected keys.
    cluster.apply_json(&serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "broken-credentials", "namespace": "d"},
        "stringData": {"username": "x"},
    }));
    let broken = run(&cluster, &["dsn", "broken", "-n", "d"]);
    expect_code(&broken, 1);
    assert!(
        broken.stderr_text().contains("password, database"),
        "{}",
        broken.describe()
    );
}

#[test]
fn psql_in_the_pod_and_local() {
    let cluster = TestCluster::start();
    install(&cluster, "p", "postgres", &[]);
    if kubectl().is_some() {
        let out = run(
            &cluster,
            &["psql", "-n", "p", "--", "-At", "-c", "select 40 + 2"],
        );
        expect_code(&out, 0);
        assert_eq!(out.stdout_text().trim(), "42");
        let piped = run_with(
            &cluster,
            &["psql", "-n", "p", "--", "-At"],
            "select current_database();\n",
        );
        expect_code(&piped, 0);
        assert_eq!(piped.stdout_text().trim(), "learnflow");
        let failed = run(
            &cluster,
            &[
                "psql",
                "-n",
                "p",
                "--",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                "select nope",
            ],
        );
        assert_ne!(
            failed.code(),
            0,
            "psql's exit code is ours: {}",
            failed.describe()
        );
    }
    let local = run(
        &cluster,
        &[
            "psql",
            "-n",
            "p",
            "--local",
            "--",
            "-At",
            "-c",
            "select current_user",
        ],
    );
    expect_code(&local, 0);
    assert_eq!(local.stdout_text().trim(), "postgres");

    // Every connection flag reaches kubectl.
    let fake = cluster.dir().join("fake-kubectl");
    let record = cluster.dir().join("argv");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\nexit 7\n",
            record.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let kubeconfig = cluster.kubeconfig.display().to_string();
    let out = kpg_command(&[
        "psql",
        "-n",
        "p",
        "--kubeconfig",
        &kubeconfig,
        "--context",
        "e2e",
        "--user",
        "e2e",
        "--as",
        "alice",
        "--as-group",
        "dev",
        "--as-group",
        "ops",
        "--",
        "-c",
        "select 1",
    ])
    .env("KUBECTL_PATH", &fake)
    .output()
    .unwrap();
    assert_eq!(
        out.code(),
        7,
        "the kubectl exit code is passed through: {}",
        out.describe()
    );
    let argv = std::fs::read_to_string(&record).unwrap();
    for needle in [
        format!("--kubeconfig={kubeconfig}"),
        "--context=e2e".into(),
        "--user=e2e".into(),
        "--as=alice".into(),
        "--as-group=dev".into(),
        "--as-group=ops".into(),
        "--namespace\np\nexec\n-i\npostgres-0\n-c\npostgres\n--\npsql\n-U\npostgres\n-d\nlearnflow\n-c\nselect 1".into(),
    ] {
        assert!(argv.contains(&needle), "{needle:?} missing from:\n{argv}");
    }
    assert!(
        !argv.contains("\n-t\n"),
        "no TTY when stdin is not a terminal"
    );
    let missing = kpg_command(&["psql", "-n", "p"])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("KUBECTL_PATH", "")
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    expect_code(&missing, 1);
    assert!(
        missing.stderr_text().contains("kubectl not found"),
        "{}",
        missing.describe()
    );
    let no_release = run(&cluster, &["psql", "-n", "nothing-here"]);
    expect_code(&no_release, 1);
    assert!(
        no_release.stderr_text().contains("not found"),
        "{}",
        no_release.describe()
    );
}

#[test]
fn migrate_through_the_cluster_survives_a_dropped_stream() {
    let cluster = TestCluster::start();
    install(&cluster, "m", "postgres", &[]);
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "001_log.up.sql",
        "CREATE TABLE run_log (version int NOT NULL);",
    );
    for v in 2..=30 {
        write(
            dir.path(),
            &format!("{v:03}_m.up.sql"),
            &format!("CREATE TABLE t{v} (id int, payload text);\nINSERT INTO t{v} SELECT g, repeat('x', 200) FROM generate_series(1, 50) g;\nINSERT INTO run_log VALUES ({v});\n"),
        );
    }
    let d = dir.path().display().to_string();
    let plan = run(
        &cluster,
        &["migrate", "up", "-n", "m", "--dir", &d, "--dry-run"],
    );
    expect_code(&plan, 0);
    assert!(
        plan.stdout_text().contains("via port-forward"),
        "{}",
        plan.describe()
    );
    // The stream is cut after some traffic; the engine reconnects through a new port-forward.
    cluster.faults.drop_portforward_after(6000);
    let out = run(&cluster, &["migrate", "up", "-n", "m", "--dir", &d]);
    expect_code(&out, 0);
    assert!(
        out.stderr_text().contains("reconnected"),
        "{}",
        out.describe()
    );
    assert_eq!(
        out.stdout_text().matches("applied 0").count(),
        30,
        "{}",
        out.describe()
    );
    let status = json(&run(
        &cluster,
        &["migrate", "status", "-n", "m", "--dir", &d, "-o", "json"],
    ));
    assert_eq!(status["applied"], 30);
    assert_eq!(status["pending"], 0);
    let addr = cluster.postgres_addr("m", "postgres-0").unwrap();
    let secret = json(&run(&cluster, &["dsn", "-n", "m", "-o", "json"]));
    let dsn = format!(
        "postgresql://postgres:{}@{addr}/learnflow?sslmode=disable",
        secret["password"].as_str().unwrap()
    );
    let counts = crate::pg::query(
        &dsn,
        "SELECT count(*), count(DISTINCT version) FROM run_log",
    );
    assert_eq!(counts[0], [Some("29".to_string()), Some("29".to_string())]);
    // No release: exit 1 naming it.
    let none = run(&cluster, &["migrate", "status", "-n", "nowhere"]);
    expect_code(&none, 1);
    assert!(
        none.stderr_text()
            .contains("not found in namespace \"nowhere\""),
        "{}",
        none.describe()
    );
}

fn write(dir: &Path, name: &str, body: &str) {
    std::fs::write(dir.join(name), body).unwrap();
}
