//! Install, upgrade and uninstall keep what a team relies on, on the real control plane:
//! `--upgrade` starts from the live release, a stuck pod is repaired by a fixed template,
//! nothing that is not the release's is written or deleted.

use std::process::Output;

use serde_json::Value;

use crate::scope::Scope;
use crate::{expect_code, OutputExt};

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.describe()))
}

fn jsonpath(scope: &Scope, what: &str, path: &str) -> String {
    let out = scope.kubectl_ns(&["get", what, "-o", &format!("jsonpath={path}")]);
    assert!(out.status.success(), "{}", out.describe());
    out.stdout_text()
}

#[test]
fn upgrade_starts_from_the_live_release_and_repairs_a_stuck_pod() {
    let scope = Scope::new("kpg-upgrade");
    let ns = scope.ns.as_str();
    let install = scope.kpg(&[
        "install",
        "orders",
        "-n",
        ns,
        "--postgres-version",
        "16",
        "--service-type",
        "NodePort",
        "--memory-limit",
        "1Gi",
        "--cluster-domain",
        "corp.example",
        "--timeout",
        "120s",
        "-o",
        "json",
    ]);
    expect_code(&install, 0);
    assert_eq!(json(&install)["phase"], "Healthy");
    let password = jsonpath(&scope, "secret/orders-credentials", "{.data.password}");

    // A flag given changes its value; every other value is the live one.
    let upgrade = scope.kpg(&[
        "install",
        "orders",
        "-n",
        ns,
        "--upgrade",
        "--memory-limit",
        "2Gi",
        "--timeout",
        "120s",
    ]);
    expect_code(&upgrade, 0);
    assert_eq!(jsonpath(&scope, "svc/orders", "{.spec.type}"), "NodePort");
    let container = "{.spec.template.spec.containers[0]";
    assert_eq!(
        jsonpath(&scope, "sts/orders", &format!("{container}.image}}")),
        "postgres:16.11"
    );
    assert_eq!(
        jsonpath(
            &scope,
            "sts/orders",
            &format!("{container}.resources.limits.memory}}")
        ),
        "2Gi"
    );
    assert_eq!(
        jsonpath(&scope, "secret/orders-credentials", "{.data.password}"),
        password,
        "the Secret is never rewritten"
    );
    let secrets = scope.kubectl_ns(&["get", "secrets", "-o", "name"]);
    // A NodePort release serves TLS: its CA and certificate are in orders-tls.
    assert_eq!(
        secrets.stdout_text().trim(),
        "secret/orders-credentials\nsecret/orders-tls"
    );
    // The cluster domain is remembered: status and dsn use it after the upgrade too.
    let status = json(&scope.kpg(&["status", "orders", "-n", ns, "-o", "json"]));
    assert!(
        status["connection_string"]
            .as_str()
            .unwrap()
            .contains(&format!("@orders.{ns}.svc.corp.example:5432/")),
        "{status}"
    );
    let dsn = scope.kpg(&["dsn", "orders", "-n", ns, "--format", "env"]);
    assert!(
        dsn.stdout_text()
            .contains(&format!("export PGHOST='orders.{ns}.svc.corp.example'\n")),
        "{}",
        dsn.describe()
    );

    // The major and the volume never change through --upgrade: refused before any write.
    let generation = jsonpath(&scope, "sts/orders", "{.metadata.generation}");
    for (flag, value, needle) in [
        ("--postgres-version", "18", "kubectl pg upgrade orders"),
        ("--image", "postgres:17.7", "kubectl pg upgrade orders"),
        ("--storage-class", "immediate", "StorageClass"),
    ] {
        let out = scope.kpg(&["install", "orders", "-n", ns, "--upgrade", flag, value]);
        expect_code(&out, 1);
        assert!(
            out.stderr_text().contains(needle),
            "{flag}: {}",
            out.describe()
        );
    }
    assert_eq!(
        jsonpath(&scope, "sts/orders", "{.metadata.generation}"),
        generation
    );

    // A bad image sticks under OrderedReady; the fixed template deletes the stuck pod.
    let bad = scope.kpg(&[
        "install",
        "orders",
        "-n",
        ns,
        "--upgrade",
        "--image",
        "registry.invalid/postgres:16.11",
        "--timeout",
        "60s",
    ]);
    expect_code(&bad, 1);
    assert!(
        bad.stderr_text().contains("cannot pull image"),
        "{}",
        bad.describe()
    );
    let fixed = scope.kpg(&[
        "install",
        "orders",
        "-n",
        ns,
        "--upgrade",
        "--image",
        "postgres:16.11",
        "--timeout",
        "120s",
        "-o",
        "json",
    ]);
    expect_code(&fixed, 0);
    assert!(
        fixed.stderr_text().contains("forced rollback"),
        "{}",
        fixed.describe()
    );
    assert_eq!(json(&fixed)["phase"], "Healthy");
    assert_eq!(
        json(&fixed)["server_version"].as_str().unwrap()[..3],
        *"16."
    );
}

#[test]
fn nothing_that_is_not_the_release_is_written_or_deleted() {
    let scope = Scope::new("kpg-owned");
    let ns = scope.ns.as_str();
    let theirs = scope.kubectl_ns(&[
        "create",
        "service",
        "externalname",
        "postgres",
        "--external-name",
        "db.example.com",
    ]);
    assert!(theirs.status.success(), "{}", theirs.describe());
    let refused = scope.kpg(&["install", "-n", ns]);
    expect_code(&refused, 1);
    assert!(
        refused
            .stderr_text()
            .contains("Service \"postgres\" already exists"),
        "{}",
        refused.describe()
    );
    let statefulsets = scope.kubectl_ns(&["get", "sts,secrets", "-o", "name"]);
    assert_eq!(statefulsets.stdout_text().trim(), "", "nothing was created");
    // A Secret of the release's credentials name that kubectl-pg did not make: not taken as
    // the release's (that is --existing-secret), refused before anything is written.
    let hand_made = scope.kubectl_ns(&[
        "create",
        "secret",
        "generic",
        "other-credentials",
        "--from-literal=username=someone",
        "--from-literal=password=someone-elses-password",
        "--from-literal=database=theirs",
    ]);
    assert!(hand_made.status.success(), "{}", hand_made.describe());
    let refused = scope.kpg(&["install", "other", "-n", ns, "--timeout", "60s"]);
    expect_code(&refused, 1);
    assert!(
        refused.stderr_text().contains("Secret other-credentials")
            && refused.stderr_text().contains("not made by kubectl-pg")
            && refused.stderr_text().contains("--existing-secret"),
        "{}",
        refused.describe()
    );
    let written = scope.kubectl_ns(&["get", "sts,svc", "-o", "name"]);
    assert_eq!(
        written.stdout_text().trim(),
        "service/postgres",
        "{}",
        written.describe()
    );
    let removed = scope.kubectl_ns(&["delete", "secret", "other-credentials"]);
    assert!(removed.status.success(), "{}", removed.describe());
    // NetworkPolicies of the releases' names that are someone else's: install refuses to take
    // one over (before any write), and uninstall leaves one alone.
    let theirs_policy = |name: &str| {
        let yaml = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  \
             namespace: {ns}\nspec:\n  podSelector: {{}}\n  policyTypes: [Ingress]\n"
        );
        let out = scope.plane.kubectl_stdin(&["apply", "-f", "-"], &yaml);
        assert!(out.status.success(), "{}", out.describe());
    };
    theirs_policy("np");
    let refused = scope.kpg(&["install", "np", "-n", ns, "--network-policy"]);
    expect_code(&refused, 1);
    assert!(
        refused
            .stderr_text()
            .contains("NetworkPolicy \"np\" already exists"),
        "{}",
        refused.describe()
    );
    let written = scope.kubectl_ns(&["get", "sts,secrets", "-o", "name"]);
    assert_eq!(written.stdout_text().trim(), "", "{}", written.describe());
    theirs_policy("app");

    // Another release in the same namespace; uninstall leaves the user's Service alone.
    expect_code(
        &scope.kpg(&["install", "app", "-n", ns, "--timeout", "120s"]),
        0,
    );
    let password = jsonpath(&scope, "secret/app-credentials", "{.data.password}");
    let uninstall = scope.kpg(&["uninstall", "app", "-n", ns]);
    expect_code(&uninstall, 0);
    assert_eq!(
        jsonpath(&scope, "svc/postgres", "{.spec.type}"),
        "ExternalName"
    );
    assert!(
        uninstall
            .stdout_text()
            .contains("left NetworkPolicy app alone"),
        "{}",
        uninstall.describe()
    );
    assert_eq!(
        jsonpath(&scope, "networkpolicy/app", "{.metadata.name}"),
        "app"
    );
    // The password stays with the data; a reinstall finds both.
    assert!(
        uninstall
            .stdout_text()
            .contains("Secret app-credentials kept"),
        "{}",
        uninstall.describe()
    );
    let again = scope.kpg(&[
        "install",
        "app",
        "-n",
        ns,
        "--timeout",
        "120s",
        "-o",
        "json",
    ]);
    expect_code(&again, 0);
    assert_eq!(json(&again)["phase"], "Healthy");
    assert_eq!(
        jsonpath(&scope, "secret/app-credentials", "{.data.password}"),
        password
    );
    // A rerun over the deployed release finishes what is missing: here, the migrations.
    let rerun = scope.kpg(&["install", "app", "-n", ns, "--migrate", "-o", "json"]);
    expect_code(&rerun, 0);
    assert_eq!(
        json(&rerun)["migrations_applied_count"],
        6,
        "{}",
        rerun.describe()
    );
    let all = scope.kpg(&["uninstall", "app", "-n", ns, "--delete-data", "--yes"]);
    expect_code(&all, 0);
    let left = scope.kubectl_ns(&["get", "secrets,pvc", "-o", "name"]);
    assert_eq!(left.stdout_text().trim(), "", "{}", left.describe());
}

#[test]
fn impossible_values_are_refused_before_any_change() {
    let scope = Scope::new("kpg-refuse");
    let ns = scope.ns.as_str();
    let fresh = scope.another_namespace("kpg-refuse-new");
    for (args, needle) in [
        (
            vec!["install", "1abc", "-n", ns],
            "must start with a letter",
        ),
        (
            vec!["install", "-n", ns, "--username", "pg_app"],
            "--username",
        ),
        (
            vec!["install", "-n", ns, "--database", "template1"],
            "--database",
        ),
        (
            vec!["install", "-n", ns, "--cluster-domain", "not a domain"],
            "--cluster-domain",
        ),
        (
            vec!["install", "-n", &fresh, "--existing-secret", "nope"],
            "--existing-secret \"nope\"",
        ),
    ] {
        let out = scope.kpg(&args);
        assert_ne!(out.code(), 0, "{}", out.describe());
        assert!(
            out.stderr_text().contains(needle),
            "{needle}: {}",
            out.describe()
        );
    }
    let out = scope.kpg_stdin(
        &["install", "-n", ns, "--password-stdin"],
        "a-long-enough\npassword-on-two-lines\n",
    );
    expect_code(&out, 1);
    assert!(
        out.stderr_text().contains("control character"),
        "{}",
        out.describe()
    );
    let created = scope.kubectl(&["get", "namespace", &fresh]);
    assert!(!created.status.success(), "no namespace is left behind");
    let objects = scope.kubectl_ns(&["get", "sts,svc,secrets", "-o", "name"]);
    assert_eq!(objects.stdout_text().trim(), "");
}

#[test]
fn an_existing_secret_is_used_by_every_command_and_never_touched() {
    let scope = Scope::new("kpg-secret");
    let ns = scope.ns.as_str();
    let create = |args: &[&str]| {
        let mut all = vec![
            "create",
            "secret",
            "generic",
            "orders-db",
            "--type",
            "kubernetes.io/basic-auth",
        ];
        all.extend_from_slice(args);
        let out = scope.kubectl_ns(&all);
        assert!(out.status.success(), "{}", out.describe());
    };
    // A Secret install cannot use: exit 1 naming it and what is wrong, before anything changes.
    let refused = |secret: &[&str], says: &str| {
        create(secret);
        let out = scope.kpg(&[
            "install",
            "orders",
            "-n",
            ns,
            "--existing-secret",
            "orders-db",
            "--timeout",
            "30s",
        ]);
        expect_code(&out, 1);
        assert!(out.stderr_text().contains(says), "{}", out.describe());
        let nothing = scope.kubectl_ns(&["get", "sts,svc", "-o", "name"]);
        assert_eq!(nothing.stdout_text().trim(), "");
        scope.kubectl_ns(&["delete", "secret", "orders-db"]);
        out.stderr_text()
    };
    // No password key.
    refused(
        &["--from-literal=username=orders"],
        "\"orders-db\" has no key \"password\"",
    );
    // A user the server cannot be initialised with (issue 18: it crash-looped, exit 5, and
    // the hint printed the password).
    let stderr = refused(
        &[
            "--from-literal=username=public",
            "--from-literal=password=an-orders-password-42",
        ],
        "\"orders-db\" names the user \"public\"",
    );
    assert!(!stderr.contains("an-orders-password-42"), "{stderr}");
    create(&[
        "--from-literal=username=orders",
        "--from-literal=password=an-orders-password-42",
    ]);
    let before = jsonpath(&scope, "secret/orders-db", "{.metadata.resourceVersion}");

    let install = scope.kpg(&[
        "install",
        "orders",
        "-n",
        ns,
        "--profile",
        "prod",
        "--existing-secret",
        "orders-db",
        "--service-type",
        "ClusterIP",
        "--cpu-request",
        "100m",
        "--memory-request",
        "64Mi",
        "--timeout",
        "120s",
        "-o",
        "json",
    ]);
    expect_code(&install, 0);
    let doc = json(&install);
    assert_eq!(doc["phase"], "Healthy", "{doc}");
    assert!(doc["connection_string"]
        .as_str()
        .unwrap()
        .starts_with("postgresql://orders:"));

    let policy = network_policy(&scope, ns);
    // The prod profile's NetworkPolicy guards exactly the release's pods: its selector, asked
    // of the API, finds them and not the pod of another release in the same namespace.
    let decoy = scope.kubectl_ns(&[
        "run",
        "other-0",
        "--image=pause",
        "--restart=Never",
        "--labels=app.kubernetes.io/name=postgresql,app.kubernetes.io/instance=other",
    ]);
    assert!(decoy.status.success(), "{}", decoy.describe());
    let selector = |labels: &Value| {
        labels
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
            .collect::<Vec<_>>()
            .join(",")
    };
    let pods = scope.kubectl_ns(&[
        "get",
        "pods",
        "-l",
        &selector(&policy["spec"]["podSelector"]["matchLabels"]),
        "-o",
        "name",
    ]);
    assert_eq!(
        pods.stdout_text().trim(),
        "pod/orders-0",
        "{}",
        pods.describe()
    );
    let everyone = scope.kubectl_ns(&["get", "pods", "-o", "name"]);
    assert!(everyone.stdout_text().contains("pod/other-0"));
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress"])
    );
    let rules = policy["spec"]["ingress"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "a ClusterIP release: {policy}");
    assert_eq!(
        rules[0]["ports"],
        serde_json::json!([{ "protocol": "TCP", "port": 5432 }])
    );
    let from = rules[0]["from"].as_array().unwrap();
    assert_eq!(from.len(), 1, "{policy}");
    let own = &from[0]["namespaceSelector"]["matchLabels"];
    assert_eq!(own["kubernetes.io/metadata.name"], ns);
    let namespaces = scope.kubectl(&["get", "namespaces", "-l", &selector(own), "-o", "name"]);
    assert_eq!(namespaces.stdout_text().trim(), format!("namespace/{ns}"));

    // The plugin reaches the database through the API server (exec, port-forward), never the
    // pod network: every command works with the policy applied.
    let status = json(&scope.kpg(&["status", "orders", "-n", ns, "-o", "json"]));
    assert_eq!(status["phase"], "Healthy", "{status}");
    assert!(
        !status.to_string().contains("SecretMissing"),
        "the user's Secret is the release's: {status}"
    );
    let dsn = scope.kpg(&["dsn", "orders", "-n", ns]);
    expect_code(&dsn, 0);
    assert!(dsn
        .stdout_text()
        .starts_with("postgresql://orders:an-orders-password-42@"));
    let psql = scope.kpg(&[
        "psql",
        "orders",
        "-n",
        ns,
        "--",
        "-Atc",
        "select current_user",
    ]);
    expect_code(&psql, 0);
    assert_eq!(psql.stdout_text().trim(), "orders");
    expect_code(&scope.kpg(&["migrate", "up", "-n", ns]), 0);
    let dump = scope.dir.path().join("orders.dump");
    expect_code(
        &scope.kpg(&["dump", "orders", "-n", ns, "-f", dump.to_str().unwrap()]),
        0,
    );
    assert!(std::fs::metadata(&dump).unwrap().len() > 0);
    let mut forward = crate::ops::Background::start(
        &scope,
        &[
            "port-forward",
            "orders",
            "-n",
            ns,
            "127.0.0.1:0",
            "--show-password",
        ],
    );
    forward.until(std::time::Duration::from_secs(30), "the DSN", |s| {
        !s.is_empty()
    });
    let dsn = forward.seen[0].clone();
    let user: String = crate::ops::sessions(&dsn, 1, async |clients| {
        clients[0]
            .query_one("select current_user", &[])
            .await
            .unwrap()
            .get(0)
    });
    assert_eq!(user, "orders");
    assert_eq!(forward.terminate(), 0);

    // An upgrade keeps the Secret without being told again; --allow-from changes the
    // policy in place (same object), --network-policy=false removes it, --network-policy
    // brings it back, and uninstall deletes it.
    let uid = policy["metadata"]["uid"].clone();
    expect_code(
        &scope.kpg(&[
            "install",
            "orders",
            "-n",
            ns,
            "--upgrade",
            "--memory-limit",
            "1Gi",
            "--allow-from",
            "namespace=team-a,pod=app=web",
            "--timeout",
            "120s",
        ]),
        0,
    );
    let policy = network_policy(&scope, ns);
    assert_eq!(policy["metadata"]["uid"], uid, "updated, not replaced");
    let from = &policy["spec"]["ingress"][0]["from"];
    assert_eq!(
        from[1],
        serde_json::json!({
            "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "team-a" } },
            "podSelector": { "matchLabels": { "app": "web" } },
        }),
        "{policy}"
    );
    let upgrade = |flag: &str| {
        let out = scope.kpg(&[
            "install",
            "orders",
            "-n",
            ns,
            "--upgrade",
            flag,
            "--timeout",
            "120s",
        ]);
        expect_code(&out, 0);
    };
    upgrade("--network-policy=false");
    let gone = scope.kubectl_ns(&["get", "networkpolicies", "-o", "name"]);
    assert_eq!(gone.stdout_text().trim(), "", "{}", gone.describe());
    upgrade("--network-policy");
    assert_eq!(
        network_policy(&scope, ns)["spec"]["ingress"][0]["from"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "a new policy admits the namespace alone"
    );
    expect_code(
        &scope.kpg(&["uninstall", "orders", "-n", ns, "--delete-data", "--yes"]),
        0,
    );
    let gone = scope.kubectl_ns(&["get", "networkpolicies", "-o", "name"]);
    assert_eq!(gone.stdout_text().trim(), "", "{}", gone.describe());
    assert_eq!(
        jsonpath(&scope, "secret/orders-db", "{.metadata.resourceVersion}"),
        before,
        "never written, never deleted"
    );
    let secrets = scope.kubectl_ns(&["get", "secrets", "-o", "name"]);
    assert_eq!(secrets.stdout_text().trim(), "secret/orders-db");
}

/// The release's NetworkPolicy as the apiserver stores it.
fn network_policy(scope: &Scope, ns: &str) -> Value {
    let out = scope.kubectl_ns(&["get", "networkpolicy", "orders", "-o", "json"]);
    assert!(out.status.success(), "{}", out.describe());
    let policy: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(policy["metadata"]["namespace"], ns);
    assert_eq!(
        policy["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "kubectl-pg"
    );
    policy
}

#[test]
fn a_lost_secret_is_replaced_only_when_the_database_takes_its_password() {
    let scope = Scope::new("kpg-lost");
    let ns = scope.ns.as_str();
    let install = |extra: &[&str]| {
        let mut args = vec!["install", "-n", ns, "--timeout", "120s"];
        args.extend_from_slice(extra);
        scope.kpg(&args)
    };
    expect_code(&install(&["--username", "app"]), 0);
    let gone = scope.kubectl_ns(&["delete", "secret", "postgres-credentials"]);
    assert!(gone.status.success(), "{}", gone.describe());
    // A new Secret for user "postgres", which this database does not have: the reset fails
    // with psql's own message, and the new Secret is taken back.
    let wrong = install(&[]);
    assert_ne!(wrong.code(), 0, "{}", wrong.describe());
    assert!(
        wrong
            .stderr_text()
            .contains("role \"postgres\" does not exist"),
        "{}",
        wrong.describe()
    );
    let secrets = scope.kubectl_ns(&["get", "secrets", "-o", "name"]);
    assert_eq!(secrets.stdout_text().trim(), "", "{}", wrong.describe());
    // The rerun retries, and the database takes the password, sent as a SCRAM verifier.
    let right = install(&["--username", "app", "-o", "json"]);
    expect_code(&right, 0);
    assert_eq!(json(&right)["phase"], "Healthy");
    let stored = scope.kubectl_ns(&[
        "exec",
        "postgres-0",
        "-c",
        "postgres",
        "--",
        "psql",
        "-U",
        "app",
        "-d",
        "postgres",
        "-Atc",
        "select rolpassword like 'SCRAM-SHA-256$%' from pg_authid where rolname = 'app'",
    ]);
    assert_eq!(stored.stdout_text().trim(), "t", "{}", stored.describe());
}

/// The pod template of the release's StatefulSet, as the apiserver holds it.
fn pod_template(scope: &Scope) -> Value {
    let out = scope.kubectl_ns(&["get", "statefulset", "postgres", "-o", "json"]);
    assert!(out.status.success(), "{}", out.describe());
    json(&out)["spec"]["template"]["spec"].clone()
}

/// Names of a list's entries (env, volumes, volumeMounts).
fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str().map(str::to_string))
        .collect()
}

/// One query's result through `kubectl pg psql --local`: the Secret's password over TCP.
fn local_query(scope: &Scope, sql: &str) -> String {
    let out = scope.kpg(&["psql", "-n", &scope.ns, "--local", "--", "-Atc", sql]);
    expect_code(&out, 0);
    out.stdout_text().trim().to_string()
}

/// `status` reaches the database with the password of the Secret the release names.
fn assert_accessible(scope: &Scope) {
    let status = scope.kpg(&["status", "-n", &scope.ns, "-o", "json"]);
    expect_code(&status, 0);
    let accessible = &json(&status)["database_accessible"];
    assert_eq!(accessible, true, "{}", status.describe());
}

#[test]
fn upgrade_makes_an_older_release_require_the_password_on_loopback() {
    let scope = Scope::new("kpg-hba");
    let ns = scope.ns.as_str();
    // A release as the manifests made it before they set --auth-host=scram-sha-256 (the
    // image's initdb then trusts 127.0.0.1, where a port-forward arrives), read the password
    // from an environment variable, and set no ephemeral storage.
    let manifests = scope.kpg(&["install", "-n", ns, "--dry-run", "-o", "json"]);
    expect_code(&manifests, 0);
    let mut doc = json(&manifests);
    for item in doc["items"].as_array_mut().unwrap() {
        if item["kind"] == "StatefulSet" {
            let pod = &mut item["spec"]["template"]["spec"];
            let container = &mut pod["containers"][0];
            let env = container["env"].as_array_mut().unwrap();
            env.retain(|e| e["name"] != "POSTGRES_INITDB_ARGS");
            for e in env.iter_mut() {
                if e["name"] == "POSTGRES_PASSWORD_FILE" {
                    *e = serde_json::json!({ "name": "POSTGRES_PASSWORD", "valueFrom":
                        { "secretKeyRef": { "name": "postgres-credentials", "key": "password" } } });
                }
            }
            container["volumeMounts"]
                .as_array_mut()
                .unwrap()
                .retain(|m| m["name"] != "credentials");
            container.as_object_mut().unwrap().remove("resources");
            let volumes = pod["volumes"].as_array_mut().unwrap();
            volumes.retain(|v| v["name"] != "credentials");
            for v in volumes.iter_mut().filter(|v| v["name"] != "shm") {
                v["emptyDir"] = serde_json::json!({});
            }
        }
    }
    let applied = scope.plane.kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "kubectl-pg",
            "-f",
            "-",
        ],
        &doc.to_string(),
    );
    assert!(applied.status.success(), "{}", applied.describe());
    let ready = scope.kubectl_ns(&["rollout", "status", "sts/postgres", "--timeout", "120s"]);
    assert!(ready.status.success(), "{}", ready.describe());
    let no_password = [
        "exec",
        "postgres-0",
        "-c",
        "postgres",
        "--",
        "psql",
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-d",
        "postgres",
        "-w",
        "-Atc",
        "select 1",
    ];
    let before = scope.kubectl_ns(&no_password);
    assert_eq!(
        before.stdout_text().trim(),
        "1",
        "trusted: {}",
        before.describe()
    );
    // The older form's Secret is found by the commands that read the password.
    assert_accessible(&scope);
    let table = scope.kpg(&[
        "psql",
        "-n",
        ns,
        "--",
        "-c",
        "create table kept as select 42 as answer",
    ]);
    expect_code(&table, 0);

    let upgrade = scope.kpg(&[
        "install",
        "-n",
        ns,
        "--upgrade",
        "--timeout",
        "120s",
        "-o",
        "json",
    ]);
    expect_code(&upgrade, 0);
    assert!(
        upgrade.stderr_text().contains("pg_hba.conf"),
        "{}",
        upgrade.describe()
    );
    assert_eq!(
        json(&upgrade)["phase"],
        "Healthy",
        "the Secret's password works"
    );
    let after = scope.kubectl_ns(&no_password);
    assert!(!after.status.success(), "{}", after.describe());
    assert!(
        after.stderr_text().contains("no password supplied"),
        "{}",
        after.describe()
    );
    // The upgrade moved the password to a file of the Secret's volume and set the ephemeral
    // storage (the dev profile's: the release had no CPU or memory values).
    let pod = pod_template(&scope);
    let container = &pod["containers"][0];
    let env = names(&container["env"]);
    assert!(
        env.contains(&"POSTGRES_PASSWORD_FILE".to_string())
            && !env.contains(&"POSTGRES_PASSWORD".to_string()),
        "{env:?}"
    );
    assert!(names(&pod["volumes"]).contains(&"credentials".to_string()));
    assert_eq!(
        container["resources"]["requests"]["ephemeral-storage"],
        "128Mi"
    );
    let tmp = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "tmp");
    assert_eq!(tmp.unwrap()["emptyDir"]["sizeLimit"], "1Gi");
    // The data and the Secret's password are kept, and the commands find the Secret.
    assert_eq!(local_query(&scope, "select answer from kept"), "42");
    let rotate = scope.kpg(&["rotate-password", "-n", ns, "--yes"]);
    expect_code(&rotate, 0);
    assert_accessible(&scope);

    // Scaled to zero, the release is reported stopped, and a wait for it ends at once.
    let scaled = scope.kubectl_ns(&["scale", "sts/postgres", "--replicas", "0"]);
    assert!(scaled.status.success(), "{}", scaled.describe());
    let deleted = scope.kubectl_ns(&[
        "wait",
        "--for=delete",
        "pod/postgres-0",
        "--timeout",
        "120s",
    ]);
    assert!(deleted.status.success(), "{}", deleted.describe());
    let wait = scope.kpg(&["status", "-n", ns, "--wait", "--timeout", "60s"]);
    expect_code(&wait, 5);
    assert!(
        wait.stderr_text().contains("scaled to 0") && wait.stderr_text().contains("--replicas 1"),
        "{}",
        wait.describe()
    );
}

#[test]
fn an_interrupted_install_is_completed_by_a_rerun() {
    let scope = Scope::new("kpg-interrupted");
    let ns = scope.ns.as_str();
    let mut first = scope.kpg_command(&["install", "-n", ns, "--migrate", "--timeout", "120s"]);
    let mut first = first
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupted while it waits for the pod: the objects exist, nothing is healthy yet.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !scope
        .kubectl_ns(&["get", "statefulset", "postgres"])
        .status
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "install applied nothing"
        );
    }
    let pid = first.id().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = first.wait().unwrap();
    assert!(!status.success(), "interrupted: {status:?}");

    // The rerun waits, proves the password and applies the migrations the first one did not.
    let rerun = scope.kpg(&[
        "install",
        "-n",
        ns,
        "--migrate",
        "--timeout",
        "120s",
        "-o",
        "json",
    ]);
    expect_code(&rerun, 0);
    let status = json(&rerun);
    assert_eq!(status["phase"], "Healthy", "{}", rerun.describe());
    assert!(
        status["migrations_applied_count"].as_u64().unwrap_or(0) >= 1,
        "{}",
        rerun.describe()
    );
    assert_eq!(status["migrations_pending"], 0, "{}", rerun.describe());
}

/// `sh -c SCRIPT` in the release's pod (its environment: PGDATA, POSTGRES_USER, the socket).
fn pod_shell(scope: &Scope, script: &str) -> Output {
    scope.kubectl_ns(&[
        "exec",
        "postgres-0",
        "-c",
        "postgres",
        "--",
        "sh",
        "-c",
        script,
    ])
}

#[test]
fn a_new_release_reads_its_password_from_a_file_and_survives_a_long_recovery() {
    let scope = Scope::new("kpg-alive");
    let ns = scope.ns.as_str();
    let install = scope.kpg(&["install", "-n", ns, "--timeout", "120s", "-o", "json"]);
    expect_code(&install, 0);
    assert_eq!(
        json(&install)["phase"],
        "Healthy",
        "the Secret's password works"
    );

    // No password in the pod's environment: neither in its spec nor in what a process sees.
    let pod = pod_template(&scope);
    let env = names(&pod["containers"][0]["env"]);
    assert!(!env.contains(&"POSTGRES_PASSWORD".to_string()), "{env:?}");
    let password = scope.kubectl_ns(&[
        "get",
        "secret",
        "postgres-credentials",
        "-o",
        "go-template={{.data.password | base64decode}}",
    ]);
    assert!(password.status.success(), "{}", password.describe());
    let password = password.stdout_text();
    assert!(password.len() >= 16);
    let seen = pod_shell(&scope, "env");
    assert!(seen.status.success(), "{}", seen.describe());
    assert!(
        !seen.stdout_text().contains(&password),
        "the password is in the environment"
    );
    assert_eq!(local_query(&scope, "select 1"), "1");

    // Hold the server in recovery: after a crash of one of its processes the postmaster
    // replays WAL without restarting the container (so no startup probe covers it), and with
    // recovery.signal the replay asks restore_command first, which waits on a FIFO the test
    // opens. Meanwhile the server rejects connections (pg_isready exits 1).
    let hold = pod_shell(
        &scope,
        r#"set -e
cd "$PGDATA"
mkfifo recovery.gate
touch recovery.signal
psql -X -q -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres \
  -c "alter system set restore_command = 'test -e recovery.release || cat recovery.gate >/dev/null; exit 1'" \
  -c 'select pg_reload_conf()'
case $(psql -XAt -U "$POSTGRES_USER" -d postgres -c 'show restore_command') in
  *recovery.gate*) ;;
  *) echo 'restore_command not reloaded' >&2; exit 1 ;;
esac
kill -9 $(psql -XAt -U "$POSTGRES_USER" -d postgres -c "select pid from pg_stat_activity where backend_type = 'checkpointer'")"#,
    );
    assert!(hold.status.success(), "{}", hold.describe());
    let unready = scope.kubectl_ns(&[
        "wait",
        "--for=condition=Ready=false",
        "pod/postgres-0",
        "--timeout",
        "60s",
    ]);
    assert!(unready.status.success(), "{}", unready.describe());
    let rejecting = pod_shell(&scope, "pg_isready -h 127.0.0.1 -p 5432");
    assert_eq!(rejecting.code(), 1, "{}", rejecting.describe());
    assert!(rejecting.stdout_text().contains("rejecting connections"));

    // The liveness window is 60 s (period 10 s x 6 failures) from the crash: a restart within
    // 80 s more ends this wait early, and is the failure it guards against.
    let restarted = scope.kubectl_ns(&[
        "wait",
        "--for=jsonpath={.status.containerStatuses[0].restartCount}=1",
        "pod/postgres-0",
        "--timeout",
        "80s",
    ]);
    assert!(
        !restarted.status.success() && restarted.stderr_text().contains("timed out"),
        "the container was restarted while it recovered: {}",
        restarted.describe()
    );
    let still = pod_shell(&scope, "pg_isready -h 127.0.0.1 -p 5432");
    assert_eq!(still.code(), 1, "still recovering: {}", still.describe());

    // Released, recovery ends and the same container becomes Ready.
    let release = pod_shell(
        &scope,
        r#"cd "$PGDATA" && touch recovery.release && : <> recovery.gate"#,
    );
    assert!(release.status.success(), "{}", release.describe());
    let ready = scope.kubectl_ns(&[
        "wait",
        "--for=condition=Ready",
        "pod/postgres-0",
        "--timeout",
        "120s",
    ]);
    assert!(ready.status.success(), "{}", ready.describe());
    assert_eq!(
        jsonpath(
            &scope,
            "pod/postgres-0",
            "{.status.containerStatuses[0].restartCount}"
        ),
        "0"
    );
    // With hot standby the server takes connections (and so is Ready) once it is consistent,
    // a moment before the end of recovery promotes it.
    crate::until(
        std::time::Duration::from_secs(30),
        "the end of recovery",
        || match local_query(&scope, "select pg_is_in_recovery()").as_str() {
            "f" => Ok(()),
            other => Err(format!("pg_is_in_recovery() = {other}")),
        },
    );
}
