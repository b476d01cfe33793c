//! The plugin's cluster commands against the real control plane (and its real PostgreSQL pods):
//! access and its errors, install/uninstall, status, dsn, psql, migrate through the cluster.
//! Every test works in a namespace of its own (`Scope`); faults are real ones (RBAC, a bogus
//! token, a closed port, another CA, the scheduler, image pulls, a data directory of another
//! major), and the fault-injecting proxy where a real server cannot fail on demand.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

use crate::proxy;
use crate::scope::Scope;
use crate::{expect_code, kpg_command, OutputExt};

/// Generous for a first install on a loaded machine (a fresh one is Healthy in ~7 s).
const INSTALL_TIMEOUT: &str = "120s";

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", output.describe()))
}

/// Installs release `release` in `ns` and checks it became Healthy.
fn install(scope: &Scope, ns: &str, release: &str, extra: &[&str]) -> Value {
    install_stdin(scope, ns, release, extra, "")
}

fn install_stdin(scope: &Scope, ns: &str, release: &str, extra: &[&str], stdin: &str) -> Value {
    let mut args = vec![
        "install",
        release,
        "-n",
        ns,
        "-o",
        "json",
        "--timeout",
        INSTALL_TIMEOUT,
    ];
    args.extend_from_slice(extra);
    let out = scope.kpg_stdin(&args, stdin);
    expect_code(&out, 0);
    let doc = json(&out);
    assert_eq!(doc["phase"], "Healthy", "{}", out.describe());
    doc
}

/// `kubectl get WHAT -n NS -o json` as the admin; None when it does not exist.
fn get(scope: &Scope, ns: &str, what: &str) -> Option<Value> {
    let out = scope.kubectl(&[
        "get",
        what,
        "-n",
        ns,
        "-o",
        "json",
        "--ignore-not-found",
        "--show-managed-fields",
    ]);
    assert!(
        out.status.success(),
        "kubectl get {what}: {}",
        out.describe()
    );
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(json(&out))
    }
}

#[track_caller]
fn kubectl_ok(out: Output) -> Output {
    assert!(out.status.success(), "{}", out.describe());
    out
}

/// Waits (kubectl's own watch) until the StatefulSet's rollout is complete.
fn rollout_complete(scope: &Scope, ns: &str, release: &str) {
    kubectl_ok(scope.kubectl(&[
        "rollout",
        "status",
        &format!("statefulset/{release}"),
        "-n",
        ns,
        "--timeout",
        INSTALL_TIMEOUT,
    ]));
}

/// A real `kubectl port-forward` to a pod's 5432 on a free local port, stopped on drop.
pub(crate) struct PortForward {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub(crate) addr: String,
}

impl PortForward {
    pub(crate) fn start(scope: &Scope, ns: &str, pod: &str) -> PortForward {
        let log = scope
            .dir
            .path()
            .join(format!("port-forward-{ns}-{pod}.log"));
        let mut child = Command::new(&scope.plane.kubectl)
            .args([
                "port-forward",
                "-n",
                ns,
                &format!("pod/{pod}"),
                ":5432",
                "--address",
                "127.0.0.1",
            ])
            .env("KUBECONFIG", &scope.plane.kubeconfig)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("kubectl port-forward runs");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // "Forwarding from 127.0.0.1:PORT -> 5432"
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let Some(addr) = first
            .strip_prefix("Forwarding from ")
            .and_then(|rest| rest.split(" -> ").next())
            .map(str::to_string)
        else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "kubectl port-forward pod/{pod} -n {ns}: {first:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        // Keep reading: kubectl writes a line per connection and must not hit a closed pipe.
        std::thread::spawn(move || for _ in lines {});
        PortForward { child, addr }
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kubectl pg port-forward RELEASE LISTEN --show-password`, stopped on drop: the two lines it
/// printed, as printed.
pub(crate) struct PluginForward {
    child: Child,
    /// The local DSN, with the password.
    pub(crate) dsn: String,
    /// `export DATABASE_URL='…'`
    pub(crate) export: String,
}

impl PluginForward {
    pub(crate) fn start(scope: &Scope, ns: &str, release: &str, listen: &str) -> PluginForward {
        let mut child = scope
            .kpg_command(&["port-forward", release, "-n", ns, listen, "--show-password"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut line = || lines.next().and_then(Result::ok).unwrap_or_default();
        let (dsn, export) = (line(), line());
        if !dsn.starts_with("postgresql://") || !export.starts_with("export DATABASE_URL=") {
            let _ = child.kill();
            let _ = child.wait();
            panic!("port-forward {release} {listen} printed {dsn:?} and {export:?}");
        }
        PluginForward { child, dsn, export }
    }
}

impl Drop for PluginForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens a session with `dsn` and closes it: Err with the server's answer when it refuses.
pub(crate) fn try_connect(dsn: &str) -> Result<(), String> {
    query(dsn, "SELECT 1").map(|_| ())
}

/// Runs SQL as whoever the DSN names: the rows, or the server's refusal.
pub(crate) fn query(dsn: &str, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config: tokio_postgres::Config = dsn.parse().map_err(|e| format!("{e}"))?;
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("{e:?}"))?;
        tokio::spawn(connection);
        let messages = client
            .simple_query(sql)
            .await
            .map_err(|e| format!("{e:?}"))?;
        Ok(kubectl_pg::migration::history::rows(&messages))
    })
}

fn write_file(scope: &Scope, name: &str, body: &str) -> String {
    let path = scope.dir.path().join(name);
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

/// The admin kubeconfig with `namespace` set on its context.
fn with_context_namespace(scope: &Scope, name: &str, namespace: &str) -> String {
    let text = std::fs::read_to_string(&scope.plane.kubeconfig).unwrap();
    let marker = "  context:\n    cluster: kpg-test\n";
    let edited = text.replace(marker, &format!("{marker}    namespace: {namespace}\n"));
    assert_ne!(text, edited, "the kubeconfig layout changed:\n{text}");
    write_file(scope, name, &edited)
}

#[test]
fn kubeconfig_context_and_namespace_resolution() {
    let scope = Scope::new("kpg-resolve");
    // No kubeconfig at all.
    let none = kpg_command(&["dsn"])
        .env("HOME", scope.dir.path())
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    expect_code(&none, 2);
    assert!(
        none.stderr_text().contains("no kubeconfig found"),
        "{}",
        none.describe()
    );
    // Unknown context, named with the known ones.
    let unknown = scope.kpg(&["status", "--context", "nope"]);
    expect_code(&unknown, 2);
    assert!(
        unknown.stderr_text().contains("\"nope\"") && unknown.stderr_text().contains("kpg-test"),
        "{}",
        unknown.describe()
    );

    // The context's namespace is used, -n wins over it; the default is "postgres".
    let absent = scope.another_namespace("kpg-ctxns");
    let ctx = with_context_namespace(&scope, "ctx-ns.kubeconfig", &absent);
    let dsn = scope.kpg(&["dsn", "--kubeconfig", &ctx]);
    expect_code(&dsn, 1);
    assert!(
        dsn.stderr_text().contains(&format!("\"{absent}\"")),
        "{}",
        dsn.describe()
    );
    let namespace_of = |args: &[&str]| {
        let mut all = vec!["status", "-o", "json"];
        all.extend_from_slice(args);
        let out = scope.kpg(&all);
        expect_code(&out, 0);
        let doc = json(&out);
        assert_eq!(doc["phase"], "NotDeployed", "{}", out.describe());
        doc["namespace"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(namespace_of(&["--kubeconfig", &ctx]), absent);
    assert_eq!(
        namespace_of(&["--kubeconfig", &ctx, "-n", &scope.ns]),
        scope.ns
    );
    assert_eq!(namespace_of(&[]), "postgres");

    // Several kubeconfig files merged through KUBECONFIG: the first one's context wins.
    let ours = with_context_namespace(&scope, "ours.kubeconfig", &scope.ns);
    let admin = scope.plane.kubeconfig.display().to_string();
    for (merged, expected) in [
        (format!("{ours}:{admin}"), scope.ns.as_str()),
        (format!("{admin}:{ours}"), "postgres"),
    ] {
        let out = scope
            .kpg_command(&["status", "-o", "json"])
            .env("KUBECONFIG", &merged)
            .output()
            .unwrap();
        expect_code(&out, 0);
        let doc = json(&out);
        assert_eq!(doc["phase"], "NotDeployed", "{merged}: {}", out.describe());
        assert_eq!(doc["namespace"], expected, "{merged}: {}", out.describe());
    }
}

#[test]
fn unreachable_unauthorised_and_forbidden_clusters() {
    let scope = Scope::new("kpg-access");
    let text = std::fs::read_to_string(&scope.plane.kubeconfig).unwrap();
    let ca = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data: "))
        .unwrap()
        .to_string();
    let server = scope.plane.server.clone();

    // A token the apiserver does not know.
    let bad_token = write_file(
        &scope,
        "bad-token",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kpg-test\n  cluster:\n    server: {server}\n    \
             certificate-authority-data: {ca}\nusers:\n- name: bogus\n  user:\n    token: not-a-real-token\n\
             contexts:\n- name: bogus\n  context:\n    cluster: kpg-test\n    user: bogus\n\
             current-context: bogus\n"
        ),
    );
    let out = scope.kpg(&["status", "-n", &scope.ns, "--kubeconfig", &bad_token]);
    expect_code(&out, 2);
    assert!(
        out.stderr_text().contains("Unauthorized") && out.stderr_text().contains(&server),
        "{}",
        out.describe()
    );

    // Nothing listens on the port.
    let port = crate::pg::free_port();
    let refused = write_file(
        &scope,
        "refused",
        &text.replace(&server, &format!("https://127.0.0.1:{port}")),
    );
    let out = scope.kpg(&["status", "-n", &scope.ns, "--kubeconfig", &refused]);
    expect_code(&out, 2);
    assert!(
        out.stderr_text().contains("context \"kpg-test\"")
            && out.stderr_text().contains(&port.to_string()),
        "{}",
        out.describe()
    );

    // A CA that did not sign the server's certificate.
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    use base64::Engine;
    let other_ca = base64::engine::general_purpose::STANDARD.encode(other.cert.pem());
    let tls = write_file(&scope, "tls", &text.replace(&ca, &other_ca));
    let out = scope.kpg(&["status", "-n", &scope.ns, "--kubeconfig", &tls]);
    expect_code(&out, 2);
    assert!(
        out.stderr_text().to_lowercase().contains("certificate"),
        "{}",
        out.describe()
    );

    // RBAC: a ServiceAccount that may read everything of a release but its Secrets.
    let reader = scope.service_account_kubeconfig(
        "no-secrets",
        &format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: no-secrets\n  \
             namespace: {ns}\nrules:\n- apiGroups: [\"\"]\n  resources: [pods, services, persistentvolumeclaims, events]\n  \
             verbs: [get, list, watch]\n- apiGroups: [apps]\n  resources: [statefulsets]\n  verbs: [get, list, watch]\n",
            ns = scope.ns
        ),
    );
    let reader = reader.display().to_string();
    let out = scope.kpg(&["dsn", "--kubeconfig", &reader]);
    expect_code(&out, 2);
    assert!(
        out.stderr_text().contains("cannot get secrets")
            && out.stderr_text().contains("no-secrets"),
        "{}",
        out.describe()
    );

    // A ServiceAccount that may do everything install needs in its namespace (the krew
    // caveats' Role, `get` on its own namespace included) but one verb: refused before
    // anything is created, naming the verb.
    let refused_without = |name: &str, more_rules: &str, args: &[&str], missing: &str| {
        let kubeconfig = scope.service_account_kubeconfig(
            name,
            &format!(
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: {name}\n  \
                 namespace: {ns}\nrules:\n- apiGroups: [\"\"]\n  resources: [pods, pods/exec, pods/portforward, pods/log, \
                 services, secrets, persistentvolumeclaims, events, resourcequotas, configmaps]\n  verbs: [\"*\"]\n\
                 - apiGroups: [\"\"]\n  resources: [namespaces]\n  verbs: [get]\n{more_rules}",
                ns = scope.ns
            ),
        );
        let kubeconfig = kubeconfig.display().to_string();
        let mut all = vec![
            "install",
            "--kubeconfig",
            &kubeconfig,
            "--timeout",
            INSTALL_TIMEOUT,
        ];
        all.extend_from_slice(args);
        let out = scope.kpg(&all);
        expect_code(&out, 6);
        assert!(out.stderr_text().contains(missing), "{}", out.describe());
        let left = kubectl_ok(scope.kubectl_ns(&[
            "get",
            "statefulsets,services,secrets,networkpolicies",
            "-o",
            "name",
        ]));
        assert!(
            !left.stdout_text().contains("postgres"),
            "nothing was created: {}",
            left.describe()
        );
    };
    refused_without(
        "no-sts-patch",
        "- apiGroups: [apps]\n  resources: [statefulsets]\n  verbs: [get, list, watch, create, update, delete]\n",
        &[],
        "patch statefulsets",
    );
    // NetworkPolicies: a release without one needs no verb on them (the caveats' Role, in
    // krew.rs, has none); one with it needs patch.
    refused_without(
        "no-netpol-patch",
        "- apiGroups: [apps]\n  resources: [statefulsets]\n  verbs: [\"*\"]\n\
         - apiGroups: [networking.k8s.io]\n  resources: [networkpolicies]\n  \
         verbs: [get, list, watch, create, update, delete]\n",
        &["--network-policy"],
        "patch networkpolicies",
    );
}

#[test]
fn install_is_healthy_migrated_and_idempotent() {
    let scope = Scope::new("kpg-install");
    let ns = scope.ns.as_str();
    let doc = install(&scope, ns, "postgres", &["--migrate"]);
    assert_eq!(doc["apiVersion"], "kubectl-pg/v1");
    assert_eq!(doc["kind"], "DeploymentStatus");
    assert_eq!(doc["pods_ready"], 1);
    assert_eq!(doc["pvc_bound"], true);
    assert_eq!(doc["database_accessible"], true);
    // DESIGN.md: `migrations_applied` is the list of applied versions.
    assert_eq!(
        doc["migrations_applied"],
        serde_json::json!(["001", "002", "003", "004", "005", "006"]),
        "{doc}"
    );
    assert_eq!(doc["migrations_pending"], 0);
    assert_eq!(doc["pvc"]["size"], "8Gi");
    assert!(doc["connection_string"]
        .as_str()
        .unwrap()
        .contains("********"));
    // The controller's last status update lands before we take the versions.
    rollout_complete(&scope, ns, "postgres");
    let sts = get(&scope, ns, "statefulset/postgres").unwrap();
    assert_eq!(
        sts["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "kubectl-pg"
    );
    assert!(
        sts["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["manager"] == "kubectl-pg" && f["operation"] == "Apply"),
        "server-side applied as kubectl-pg: {}",
        sts["metadata"]["managedFields"]
    );
    let secret = get(&scope, ns, "secret/postgres-credentials").unwrap();
    assert_eq!(secret["type"], "kubernetes.io/basic-auth");
    let pvc = get(&scope, ns, "pvc/data-postgres-0").unwrap();
    assert_eq!(pvc["status"]["phase"], "Bound");
    assert_eq!(pvc["spec"]["storageClassName"], "standard");

    // A second install changes nothing.
    let version = sts["metadata"]["resourceVersion"].clone();
    let secret_version = secret["metadata"]["resourceVersion"].clone();
    let again = scope.kpg(&["install", "-n", ns, "--timeout", INSTALL_TIMEOUT]);
    expect_code(&again, 0);
    assert!(
        again.stderr_text().contains("already deployed"),
        "{}",
        again.describe()
    );
    let sts = get(&scope, ns, "statefulset/postgres").unwrap();
    assert_eq!(sts["metadata"]["resourceVersion"], version);
    let secret = get(&scope, ns, "secret/postgres-credentials").unwrap();
    assert_eq!(secret["metadata"]["resourceVersion"], secret_version);

    // --show-password puts the real password in the summary's connection string.
    let shown = scope.kpg(&["install", "-n", ns, "--show-password", "-o", "json"]);
    expect_code(&shown, 0);
    let dsn = scope.kpg(&["dsn", "-n", ns]);
    expect_code(&dsn, 0);
    assert_eq!(json(&shown)["connection_string"], dsn.stdout_text().trim());

    // --upgrade applies new resources and waits for the rollout.
    let old_pod = get(&scope, ns, "pod/postgres-0").unwrap();
    let up = scope.kpg(&[
        "install",
        "-n",
        ns,
        "--upgrade",
        "--cpu-request",
        "250m",
        "--memory-limit",
        "1Gi",
        "-o",
        "json",
        "--timeout",
        INSTALL_TIMEOUT,
    ]);
    expect_code(&up, 0);
    assert_eq!(json(&up)["phase"], "Healthy", "{}", up.describe());
    let sts = get(&scope, ns, "statefulset/postgres").unwrap();
    let resources = &sts["spec"]["template"]["spec"]["containers"][0]["resources"];
    assert_eq!(resources["requests"]["cpu"], "250m");
    assert_eq!(resources["limits"]["memory"], "1Gi");
    let pod = get(&scope, ns, "pod/postgres-0").unwrap();
    assert_ne!(
        pod["metadata"]["uid"], old_pod["metadata"]["uid"],
        "the pod was replaced"
    );
    assert_eq!(
        pod["spec"]["containers"][0]["resources"]["requests"]["cpu"], "250m",
        "the pod was rolled"
    );
    assert_eq!(pod["status"]["phase"], "Running");
}

#[test]
fn uninstall_keeps_the_data_and_the_secret_can_be_recreated() {
    let scope = Scope::new("kpg-keep");
    let ns = scope.ns.as_str();
    install(&scope, ns, "db", &[]);
    let psql = |args: &[&str]| {
        let mut all = vec!["psql", "db", "-n", ns, "--local", "--"];
        all.extend_from_slice(args);
        scope.kpg(&all)
    };
    expect_code(
        &psql(&[
            "-c",
            "CREATE TABLE notes (t text); INSERT INTO notes VALUES ('kept')",
        ]),
        0,
    );
    let password = |scope: &Scope| {
        let out = scope.kpg(&["dsn", "db", "-n", ns, "-o", "json"]);
        expect_code(&out, 0);
        json(&out)["password"].as_str().unwrap().to_string()
    };
    let first_password = password(&scope);
    let pv = get(&scope, ns, "pvc/data-db-0").unwrap()["spec"]["volumeName"].clone();

    let gone = scope.kpg(&["uninstall", "db", "-n", ns]);
    expect_code(&gone, 0);
    assert!(
        gone.stdout_text().contains("PVC data-db-0") && gone.stdout_text().contains("kept"),
        "{}",
        gone.describe()
    );
    assert!(get(&scope, ns, "statefulset/db").is_none());
    assert!(get(&scope, ns, "service/db").is_none());
    assert!(get(&scope, ns, "service/db-hl").is_none());
    assert!(
        get(&scope, ns, "pod/db-0").is_none(),
        "uninstall waits for the pod"
    );
    assert_eq!(
        get(&scope, ns, "pvc/data-db-0").unwrap()["spec"]["volumeName"],
        pv,
        "the same claim and volume"
    );
    // DESIGN.md: our Secret is kept with the PVC (same data, same password).
    assert!(
        get(&scope, ns, "secret/db-credentials").is_some(),
        "the credentials Secret is kept with the data"
    );
    install(&scope, ns, "db", &[]);
    let out = psql(&["-At", "-c", "SELECT t FROM notes"]);
    expect_code(&out, 0);
    assert_eq!(out.stdout_text().trim(), "kept");
    assert_eq!(password(&scope), first_password, "same data, same password");

    // The Secret deleted under a running release: status says so, install restores access
    // with a new password set inside the existing database.
    kubectl_ok(scope.kubectl_ns(&["delete", "secret", "db-credentials"]));
    let status = scope.kpg(&["status", "db", "-n", ns, "-o", "json"]);
    let status = json(&status);
    assert!(
        status["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["reason"] == "SecretMissing"),
        "{status}"
    );
    let again = scope.kpg(&[
        "install",
        "db",
        "-n",
        ns,
        "--upgrade",
        "-o",
        "json",
        "--timeout",
        INSTALL_TIMEOUT,
    ]);
    expect_code(&again, 0);
    assert_eq!(json(&again)["phase"], "Healthy", "{}", again.describe());
    let new_password = password(&scope);
    assert_ne!(new_password, first_password, "a new Secret, a new password");
    let out = psql(&["-At", "-c", "SELECT t FROM notes"]);
    expect_code(&out, 0);
    assert_eq!(out.stdout_text().trim(), "kept");
    // The new password is the database's: it opens a session, the old one no longer does.
    {
        let forward = PortForward::start(&scope, ns, "db-0");
        let dsn = |password: &str| {
            format!(
                "postgresql://postgres:{}@{}/learnflow?sslmode=disable",
                urlencode(password),
                forward.addr
            )
        };
        try_connect(&dsn(&new_password)).unwrap();
        assert!(
            try_connect(&dsn(&first_password)).is_err(),
            "the old password still opens a session"
        );
    }

    // --delete-data needs --yes off a terminal, then removes the PVC and our Secret.
    let refused = scope.kpg(&["uninstall", "db", "-n", ns, "--delete-data"]);
    expect_code(&refused, 1);
    assert!(
        get(&scope, ns, "statefulset/db").is_some(),
        "nothing deleted"
    );
    expect_code(
        &scope.kpg(&["uninstall", "db", "-n", ns, "--delete-data", "--yes"]),
        0,
    );
    assert!(get(&scope, ns, "pvc/data-db-0").is_none());
    assert!(get(&scope, ns, "secret/db-credentials").is_none());
    let absent = scope.kpg(&["uninstall", "db", "-n", ns]);
    expect_code(&absent, 0);
    assert!(
        absent.stdout_text().contains("nothing to uninstall"),
        "{}",
        absent.describe()
    );
}

/// Percent-encodes everything but unreserved characters, for a password in a URI.
fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn invalid_input_is_refused_before_any_api_call() {
    let scope = Scope::new("kpg-invalid");
    let (proxy, kubeconfig) = proxy::in_front_of(&scope);
    // The proxy works: a real command goes through it.
    let status = scope.kpg(&["status", "-n", &scope.ns, "--kubeconfig", &kubeconfig]);
    expect_code(&status, 0);
    assert!(
        !proxy.requests().is_empty(),
        "status went through the proxy"
    );
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
        (&["install", "-n", "Not_A_Namespace"], "namespace"),
    ] {
        proxy.clear_requests();
        let mut all = args.to_vec();
        all.extend(["--kubeconfig", &kubeconfig]);
        if !args.contains(&"-n") {
            all.extend(["-n", &scope.ns]);
        }
        let out = scope.kpg(&all);
        expect_code(&out, 1);
        assert!(
            out.stderr_text().contains(needle),
            "{needle}: {}",
            out.describe()
        );
        assert_eq!(
            proxy.requests(),
            [],
            "no API call before validation: {args:?}"
        );
    }
    // The issue's half-applied installs (issue 18): each was refused only after the namespace,
    // the Secret and the StatefulSet were written. Now each is exit 1, names its flag with a
    // hint, and makes no API call; the fresh namespace they name is never created.
    let fresh = scope.another_namespace("kpg-fresh");
    for (args, needle) in [
        (&["--username", "public"][..], "--username"),
        (&["--username", "select"], "--username"),
        (&["--image", " postgres:18.1"], "--image"),
        (&["--image", "postgres:18.1 bookworm"], "--image"),
        (
            &[
                "--service-type",
                "LoadBalancer",
                "--load-balancer-source-ranges",
                "10.0.0.1/8",
            ],
            "--load-balancer-source-ranges",
        ),
        (&["--memory-limit", "1"], "--memory-limit"),
        (&["--memory-request", "1Ki"], "--memory-request"),
        (
            &["--storage-size", "99999999999999999999Gi"],
            "--storage-size",
        ),
        (&["--cpu-limit", "0"], "--cpu-limit"),
    ] {
        proxy.clear_requests();
        let mut all = vec!["install", "-n", &fresh, "--kubeconfig", &kubeconfig];
        // Bounded, so that a build without the checks fails this test quickly.
        all.extend(["--timeout", "30s"]);
        all.extend(args);
        let out = scope.kpg(&all);
        expect_code(&out, 1);
        let stderr = out.stderr_text();
        assert!(
            stderr.contains(needle) && stderr.contains("hint:"),
            "{args:?}: {}",
            out.describe()
        );
        assert_eq!(
            proxy.requests(),
            [],
            "no API call before validation: {args:?}"
        );
    }
    let namespace = scope.kubectl(&[
        "get",
        "namespace",
        &fresh,
        "--ignore-not-found",
        "-o",
        "name",
    ]);
    assert_eq!(
        namespace.stdout_text().trim(),
        "",
        "{}",
        namespace.describe()
    );
    proxy.clear_requests();
    let short = scope.kpg_stdin(
        &[
            "install",
            "-n",
            &scope.ns,
            "--kubeconfig",
            &kubeconfig,
            "--password-stdin",
        ],
        "too-short\n",
    );
    expect_code(&short, 1);
    assert!(
        short.stderr_text().contains("16"),
        "the rule is named: {}",
        short.describe()
    );
    assert_eq!(proxy.requests(), [], "no API call before validation");
    let left = kubectl_ok(scope.kubectl_ns(&["get", "statefulsets,secrets", "-o", "name"]));
    assert!(
        !left.stdout_text().contains("postgres"),
        "{}",
        left.describe()
    );
}

/// Restores the default-class annotation of StorageClass `standard`, even when the test fails.
struct DefaultClassRestored<'a>(&'a Scope);

impl Drop for DefaultClassRestored<'_> {
    fn drop(&mut self) {
        let out = self.0.kubectl(&[
            "annotate",
            "storageclass",
            "standard",
            "storageclass.kubernetes.io/is-default-class=true",
            "--overwrite",
        ]);
        if !out.status.success() {
            eprintln!(
                "could not restore the default StorageClass: {}",
                out.describe()
            );
        }
    }
}

#[test]
fn install_without_a_default_storage_class() {
    let scope = Scope::exclusive("kpg-nodefault");
    // Declared after the scope: dropped first, while no other test runs.
    let _restore = DefaultClassRestored(&scope);
    kubectl_ok(scope.kubectl(&[
        "annotate",
        "storageclass",
        "standard",
        "storageclass.kubernetes.io/is-default-class-",
    ]));
    let out = scope.kpg(&["install", "-n", &scope.ns, "--timeout", INSTALL_TIMEOUT]);
    expect_code(&out, 6);
    assert!(
        out.stderr_text().contains("StorageClass")
            && out.stderr_text().contains("standard")
            && out.stderr_text().contains("immediate"),
        "names the classes to pick from: {}",
        out.describe()
    );
    let out = scope.kpg(&[
        "install",
        "-n",
        &scope.ns,
        "--storage-class",
        "fast",
        "--timeout",
        INSTALL_TIMEOUT,
    ]);
    expect_code(&out, 6);
    assert!(out.stderr_text().contains("\"fast\""), "{}", out.describe());
    let left = kubectl_ok(scope.kubectl_ns(&["get", "statefulsets,pvc", "-o", "name"]));
    assert_eq!(left.stdout_text(), "", "nothing was created");
}

#[test]
fn install_failures_are_diagnosed_with_their_exit_codes() {
    let scope = Scope::new("kpg-fail");
    let run_install = |ns: &str, extra: &[&str]| {
        let mut args = vec!["install", "-n", ns];
        args.extend_from_slice(extra);
        if !extra.contains(&"--timeout") {
            args.extend(["--timeout", INSTALL_TIMEOUT]);
        }
        scope.kpg(&args)
    };
    let unschedulable = scope.another_namespace("kpg-cpu");
    let image = scope.another_namespace("kpg-image");
    let crash = scope.another_namespace("kpg-crash");
    let quota = scope.another_namespace("kpg-quota");
    // The cases wait on different parts of the cluster: run them side by side.
    std::thread::scope(|threads| {
        threads.spawn(|| {
            // More CPU than the node has: the real scheduler's verdict. Unschedulable is
            // transient (an autoscaler may act) until the grace period or, sooner here, the
            // deadline passes.
            let out = run_install(
                &unschedulable,
                &[
                    "--cpu-request",
                    "64",
                    "--cpu-limit",
                    "64",
                    "--timeout",
                    "20s",
                ],
            );
            expect_code(&out, 6);
            assert!(
                out.stderr_text().contains("Insufficient cpu"),
                "{}",
                out.describe()
            );
            let status = scope.kpg(&["status", "-n", &unschedulable, "-o", "json"]);
            expect_code(&status, 0);
            let status = json(&status);
            assert!(
                status["problems"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["reason"] == "Unschedulable"
                        && p["message"]
                            .as_str()
                            .unwrap_or_default()
                            .contains("Insufficient cpu")),
                "{status}"
            );
        });
        threads.spawn(|| {
            // A tag no registry has.
            let out = run_install(&image, &["--image", "postgres:99.9"]);
            expect_code(&out, 1);
            assert!(
                out.stderr_text().contains("postgres:99.9"),
                "{}",
                out.describe()
            );
        });
        threads.spawn(|| {
            // A data directory of PostgreSQL 17 started by a 16 server: it crash-loops.
            install(&scope, &crash, "postgres", &["--postgres-version", "17"]);
            expect_code(&scope.kpg(&["uninstall", "-n", &crash]), 0);
            assert!(get(&scope, &crash, "pvc/data-postgres-0").is_some());
            // The claim records its major: another one is refused before any change.
            let refused = run_install(&crash, &["--postgres-version", "16"]);
            expect_code(&refused, 1);
            assert!(
                refused.stderr_text().contains("holds PostgreSQL 17 data"),
                "{}",
                refused.describe()
            );
            // A claim that does not say (made by hand, or by an older kubectl-pg): the server
            // itself refuses the files, and the pod crash-loops.
            kubectl_ok(scope.kubectl(&[
                "annotate",
                "-n",
                &crash,
                "pvc/data-postgres-0",
                "kubectl-pg.io/postgres-major-",
            ]));
            let out = run_install(&crash, &["--postgres-version", "16"]);
            expect_code(&out, 5);
            let err = out.stderr_text();
            assert!(
                err.contains("CrashLoopBackOff") || err.contains("crashing"),
                "{}",
                out.describe()
            );
            assert!(
                err.contains("log: ") && err.contains("incompatible"),
                "the last log lines are shown: {}",
                out.describe()
            );
            let wait = scope.kpg(&["status", "-n", &crash, "--wait", "--timeout", "30s"]);
            expect_code(&wait, 5);
        });
        threads.spawn(|| {
            // A quota without room for the storage.
            kubectl_ok(scope.kubectl(&["create", "namespace", &quota]));
            kubectl_ok(scope.plane.kubectl_stdin(
                &["apply", "-n", &quota, "-f", "-"],
                "apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: small\nspec:\n  hard:\n    requests.storage: 5Gi\n",
            ));
            let out = run_install(&quota, &[]);
            expect_code(&out, 6);
            assert!(
                out.stderr_text().contains("small")
                    && out.stderr_text().contains("requests.storage"),
                "{}",
                out.describe()
            );
            let left = kubectl_ok(scope.kubectl(&["get", "statefulsets,pvc", "-n", &quota, "-o", "name"]));
            assert_eq!(left.stdout_text(), "", "nothing was created");
        });
        threads.spawn(|| {
            // A deadline before the pod can be ready.
            let out = run_install(&scope.ns, &["--timeout", "1ms"]);
            expect_code(&out, 4);
            assert!(
                out.stderr_text().contains("timed out"),
                "{}",
                out.describe()
            );
        });
    });
}

#[test]
fn dry_run_manifests_are_accepted_by_the_api_server() {
    let scope = Scope::new("kpg-dry");
    let ns = scope.ns.as_str();
    let (proxy, kubeconfig) = proxy::in_front_of(&scope);
    // A peer that is not one: exit 1 before any request, dry run or not.
    for dry in [true, false] {
        let mut args = vec![
            "install",
            "web",
            "-n",
            ns,
            "--allow-from",
            "pod=app=web",
            "--kubeconfig",
            &kubeconfig,
        ];
        if dry {
            args.push("--dry-run");
        }
        let out = scope.kpg(&args);
        expect_code(&out, 1);
        assert!(
            out.stderr_text().contains("--allow-from \"pod=app=web\""),
            "{}",
            out.describe()
        );
    }
    let out = scope.kpg(&[
        "install",
        "web",
        "-n",
        ns,
        "--dry-run",
        "-o",
        "json",
        "--network-policy",
        "--allow-from",
        "namespace=team-a,pod=app=web",
        "--allow-from",
        "namespace=*,pod=role=monitor",
        "--kubeconfig",
        &kubeconfig,
    ]);
    expect_code(&out, 0);
    assert_eq!(proxy.requests(), [], "--dry-run touches no cluster");
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
        [
            "Namespace",
            "Secret",
            "Service",
            "Service",
            "NetworkPolicy",
            "StatefulSet"
        ]
    );
    let from = &list["items"][4]["spec"]["ingress"][0]["from"];
    assert_eq!(from.as_array().unwrap().len(), 3, "{from}");
    // Applied as they are, with the server's strict field validation, they make a database
    // (the NetworkPolicy included: the real apiserver validates it).
    let manifest = write_file(&scope, "manifest.json", &out.stdout_text());
    kubectl_ok(scope.kubectl(&[
        "apply",
        "--server-side",
        "--field-manager=kubectl-pg",
        "--validate=strict",
        "-f",
        &manifest,
    ]));
    rollout_complete(&scope, ns, "web");
    let status = scope.kpg(&["status", "web", "-n", ns, "-o", "json"]);
    expect_code(&status, 0);
    assert_eq!(json(&status)["phase"], "Healthy", "{}", status.describe());
    let stored = get(&scope, ns, "networkpolicy/web").expect("the NetworkPolicy was stored");
    assert_eq!(
        stored["spec"]["ingress"][0]["from"], *from,
        "stored as rendered"
    );

    // The YAML form too, here of an exposed release, whose policy also admits any address.
    let yaml = scope.kpg(&[
        "install",
        "web",
        "-n",
        ns,
        "--dry-run",
        "--service-type",
        "LoadBalancer",
        "--network-policy",
    ]);
    expect_code(&yaml, 0);
    assert!(
        yaml.stdout_text().contains("cidr: 0.0.0.0/0"),
        "{}",
        yaml.describe()
    );
    assert!(
        yaml.stdout_text()
            .starts_with("---\napiVersion: v1\nkind: Namespace"),
        "{}",
        yaml.describe()
    );
    let manifest = write_file(&scope, "manifest.yaml", &yaml.stdout_text());
    kubectl_ok(scope.kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "--dry-run=server",
        "--field-manager=kubectl-pg",
        "--validate=strict",
        "-f",
        &manifest,
    ]));
}

#[test]
fn status_in_table_json_and_across_namespaces() {
    let scope = Scope::new("kpg-status");
    let a = scope.ns.as_str();
    let none = scope.kpg(&["status", "-n", a, "-o", "json"]);
    expect_code(&none, 0);
    assert_eq!(json(&none)["phase"], "NotDeployed");
    let table = scope.kpg(&["status", "-n", a]);
    expect_code(&table, 0);
    assert!(
        table.stdout_text().contains("NotDeployed")
            && table.stdout_text().contains("kubectl pg install"),
        "{}",
        table.describe()
    );

    let b = scope.another_namespace("kpg-status-b");
    std::thread::scope(|threads| {
        threads.spawn(|| install(&scope, a, "one", &["--migrate"]));
        threads.spawn(|| install(&scope, a, "two", &[]));
        threads.spawn(|| install(&scope, &b, "three", &["--service-type", "LoadBalancer"]));
    });
    let image = get(&scope, a, "statefulset/one").unwrap()["spec"]["template"]["spec"]
        ["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_string();
    let detail = scope.kpg(&["status", "one", "-n", a]);
    expect_code(&detail, 0);
    let text = detail.stdout_text();
    for needle in [
        "Phase:",
        "Healthy",
        "1/1 ready",
        "data-one-0 Bound 8Gi",
        "round trip",
        "6 applied (latest 006), 0 pending",
        &image,
        "********",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    // Several releases: a table; -A adds the namespace column.
    let listed = scope.kpg(&["status", "-n", a]);
    expect_code(&listed, 0);
    assert!(
        listed.stdout_text().starts_with("NAME"),
        "{}",
        listed.describe()
    );
    assert_eq!(
        listed.stdout_text().lines().count(),
        3,
        "{}",
        listed.describe()
    );
    // Other tests' releases are in the cluster too: look at ours.
    let all = scope.kpg(&["status", "-A"]);
    expect_code(&all, 0);
    let all_text = all.stdout_text();
    assert!(all_text.starts_with("NAMESPACE"), "{all_text}");
    let ours: Vec<&str> = all_text
        .lines()
        .filter(|l| l.starts_with(&format!("{a} ")) || l.starts_with(&format!("{b} ")))
        .collect();
    assert_eq!(ours.len(), 3, "{all_text}");
    assert!(ours.iter().all(|l| l.contains("Healthy")), "{all_text}");
    let docs = scope.kpg(&["status", "-A", "-o", "json"]);
    expect_code(&docs, 0);
    let docs = json(&docs);
    assert_eq!(docs["kind"], "DeploymentStatusList");
    let mut mine: Vec<(String, String)> = docs["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["namespace"] == a || d["namespace"] == b.as_str())
        .map(|d| {
            (
                d["namespace"].as_str().unwrap().to_string(),
                d["release"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    mine.sort();
    // A listing checks each database with one query: version and history, not the sizes.
    let one = docs["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["namespace"] == a && d["release"] == "one")
        .unwrap();
    assert_eq!(one["database_accessible"], true, "{one}");
    assert_eq!(one["migrations_applied_count"], 6, "{one}");
    assert_eq!(one["migrations_pending"], 0, "{one}");
    assert!(one["server_version"].as_str().is_some(), "{one}");
    assert_eq!(one["database_sizes"], serde_json::json!([]), "{one}");
    assert_eq!(
        mine,
        [
            (a.to_string(), "one".to_string()),
            (a.to_string(), "two".to_string()),
            (b.clone(), "three".to_string()),
        ]
    );
    let wide = scope.kpg(&["status", "-A", "-o", "wide"]);
    expect_code(&wide, 0);
    assert!(
        wide.stdout_text()
            .lines()
            .any(|l| l.starts_with(&format!("{b} ")) && l.contains("LoadBalancer")),
        "{}",
        wide.describe()
    );
    let yaml = scope.kpg(&["status", "two", "-n", a, "-o", "yaml"]);
    expect_code(&yaml, 0);
    assert!(
        yaml.stdout_text().contains("kind: DeploymentStatus"),
        "{}",
        yaml.describe()
    );

    // --wait: met at once when healthy; a timeout on a release that never comes.
    expect_code(&scope.kpg(&["status", "one", "-n", a, "--wait"]), 0);
    expect_code(&scope.kpg(&["status", "one", "-n", a, "--wait=ready"]), 0);
    let never = scope.kpg(&["status", "ghost", "-n", a, "--wait", "--timeout", "300ms"]);
    expect_code(&never, 4);

    // PostgreSQL killed in its pod: the container restarts, and the release is Healthy again.
    kubectl_ok(scope.kubectl_ns(&[
        "exec",
        "two-0",
        "-c",
        "postgres",
        "--",
        "sh",
        "-c",
        "kill -9 $(head -1 \"$PGDATA/postmaster.pid\")",
    ]));
    // Seen by kubectl's watches: the restart counted (the pod is not Ready then), then Ready.
    for condition in [
        "--for=jsonpath={.status.containerStatuses[0].restartCount}=1",
        "--for=condition=Ready",
    ] {
        kubectl_ok(scope.kubectl_ns(&[
            "wait",
            "pod/two-0",
            condition,
            "--timeout",
            INSTALL_TIMEOUT,
        ]));
    }
    let recovered = scope.kpg(&[
        "status",
        "two",
        "-n",
        a,
        "--wait",
        "--timeout",
        INSTALL_TIMEOUT,
        "-o",
        "json",
    ]);
    expect_code(&recovered, 0);
    let recovered = json(&recovered);
    assert_eq!(recovered["phase"], "Healthy", "{recovered}");
    assert_eq!(recovered["restarts"], 1, "{recovered}");
    assert!(
        recovered["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["reason"] == "Restarts"),
        "the restart is listed: {recovered}"
    );
}

#[test]
fn dsn_in_every_format_connects() {
    let scope = Scope::new("kpg-dsn");
    let ns = scope.ns.as_str();
    let password = "p@ss:w/rd 'quoted' & more%";
    std::thread::scope(|threads| {
        threads.spawn(|| {
            install_stdin(
                &scope,
                ns,
                "app",
                &[
                    "--password-stdin",
                    "--username",
                    "app_user",
                    "--database",
                    "app_db",
                ],
                &format!("{password}\n"),
            )
        });
        threads.spawn(|| install(&scope, ns, "pub", &["--service-type", "LoadBalancer"]));
        threads.spawn(|| install(&scope, ns, "node", &["--service-type", "NodePort"]));
    });
    // Several releases and none named: say so and list them.
    let which = scope.kpg(&["dsn", "-n", ns]);
    expect_code(&which, 1);
    for release in ["app", "pub", "node"] {
        assert!(
            which.stderr_text().contains(release),
            "{release}: {}",
            which.describe()
        );
    }
    let dsn = |args: &[&str]| {
        let mut all = vec!["dsn", "app", "-n", ns];
        all.extend_from_slice(args);
        let out = scope.kpg(&all);
        expect_code(&out, 0);
        out.stdout_text()
    };
    let host = format!("app.{ns}.svc.cluster.local");
    let uri = dsn(&[]).trim().to_string();
    assert_eq!(
        uri,
        format!("postgresql://app_user:p%40ss%3Aw%2Frd%20%27quoted%27%20%26%20more%25@{host}:5432/app_db?sslmode=disable")
    );
    let env = dsn(&["--format", "env"]);
    // The connection string works: same credentials, pointed at the pod through a real
    // kubectl port-forward. A wrong password does not.
    {
        let forward = PortForward::start(&scope, ns, "app-0");
        let local = uri.replace(&format!("{host}:5432"), &forward.addr);
        let rows = crate::pg::query(&local, "SELECT current_user, current_database()");
        assert_eq!(
            rows[0],
            [Some("app_user".to_string()), Some("app_db".to_string())]
        );
        let wrong = local.replace("more%25", "less");
        assert!(
            try_connect(&wrong).is_err(),
            "a wrong password opens a session through the port-forward"
        );
        // README's and --help's usage: eval (and `.`) in sh, dash and bash export PG*
        // variables, sslmode included, that psql started after uses as they are (only the
        // address is the port-forward's, not the in-cluster host).
        let (addr, port) = forward.addr.rsplit_once(':').unwrap();
        let psql = scope.plane.postgres.join("clients/bin/psql");
        let file = scope.dir.path().join("pg.env");
        std::fs::write(&file, &env).unwrap();
        for shell in ["sh", "dash", "bash"] {
            for load in [r#"eval "$(cat "$1")""#, r#". "$1""#] {
                let out = Command::new(shell)
                    .arg("-c")
                    .arg(format!(
                        "{load}\nPGHOST={addr} PGPORT={port} \"$2\" -X -At -c 'select 1, current_user, current_database(), current_setting($$ssl$$)'"
                    ))
                    .arg(shell)
                    .arg(&file)
                    .arg(&psql)
                    .env_clear()
                    .env("PATH", std::env::var_os("PATH").unwrap())
                    .output()
                    .unwrap();
                assert_eq!(
                    out.stdout_text().trim(),
                    "1|app_user|app_db|off",
                    "{shell} {load}: {}",
                    out.describe()
                );
            }
        }
    }

    assert!(
        env.contains("export PGUSER='app_user'\n")
            && env.contains("export PGPASSWORD='p@ss:w/rd '\\''quoted'\\'' & more%'\n")
            && env.contains("export PGSSLMODE='disable'\n"),
        "{env}"
    );
    // The .env form, read back by the real python-dotenv and node dotenv.
    if let Some(parsers) = crate::dotenv::parsers() {
        let file = scope.dir.path().join(".env");
        std::fs::write(&file, dsn(&["--format", "dotenv"])).unwrap();
        for reader in [
            kubectl_pg::database::dotenv::Reader::PythonDotenv,
            kubectl_pg::database::dotenv::Reader::NodeDotenv,
        ] {
            let read = parsers.read(reader, &file);
            assert_eq!(read["PGPASSWORD"], password, "{reader}: {read:?}");
            assert_eq!(read["PGUSER"], "app_user", "{reader}: {read:?}");
            assert_eq!(read["DATABASE_URL"], uri.as_str(), "{reader}: {read:?}");
            assert_eq!(read["PGSSLMODE"], "disable", "{reader}: {read:?}");
        }
    }
    // A plain release has no CA to write.
    let no_ca = scope.kpg(&["dsn", "app", "-n", ns, "--ca-file", "ca.crt"]);
    expect_code(&no_ca, 1);
    assert!(
        no_ca.stderr_text().contains("serves no TLS"),
        "{}",
        no_ca.describe()
    );
    let sh = Command::new("sh")
        .args(["-c", &format!("{env}\nprintf %s \"$PGPASSWORD\"")])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&sh.stdout),
        password,
        "eval gives back the password"
    );
    let doc: Value = serde_json::from_str(&dsn(&["-o", "json"])).unwrap();
    assert_eq!(doc["kind"], "DatabaseConnection");
    assert_eq!(doc["password"], password);
    assert_eq!(doc["port"], 5432);
    let masked: Value = serde_json::from_str(&dsn(&["--format", "json", "--mask"])).unwrap();
    assert_eq!(masked["password"], "********");
    let jdbc = dsn(&["--format", "jdbc"]);
    assert!(
        jdbc.starts_with(&format!(
            "jdbc:postgresql://{host}:5432/app_db?user=app_user&password=p%40ss"
        )),
        "{jdbc}"
    );
    let kv = dsn(&["--format", "keyvalue"]);
    assert!(
        kv.contains("password='p@ss:w/rd \\'quoted\\' & more%'"),
        "{kv}"
    );
    let pgpass = dsn(&["--format", "pgpass"]);
    assert_eq!(
        pgpass.trim(),
        format!("{host}:5432:app_db:app_user:p@ss\\:w/rd 'quoted' & more%")
    );
    let yaml = dsn(&["-o", "yaml"]);
    assert!(yaml.contains("kind: DatabaseConnection"), "{yaml}");

    // --external: none for ClusterIP.
    let external = scope.kpg(&["dsn", "app", "-n", ns, "--external"]);
    expect_code(&external, 1);
    assert!(
        external.stderr_text().contains("kubectl pg psql"),
        "{}",
        external.describe()
    );
    // A LoadBalancer: no address while no controller gave one (as on kind), then its ingress.
    let pending = scope.kpg(&["dsn", "pub", "-n", ns, "--external"]);
    expect_code(&pending, 1);
    assert!(
        pending.stderr_text().contains("no ingress address yet"),
        "{}",
        pending.describe()
    );
    kubectl_ok(scope.kubectl_ns(&[
        "patch",
        "service",
        "pub",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"loadBalancer":{"ingress":[{"ip":"127.0.0.1"}]}}}"#,
    ]));
    let lb = scope.kpg(&["dsn", "pub", "-n", ns, "--external"]);
    expect_code(&lb, 0);
    assert!(
        lb.stdout_text().contains("@127.0.0.1:5432/learnflow"),
        "{}",
        lb.describe()
    );
    // A NodePort: the node's address and the port the apiserver allocated.
    let np = scope.kpg(&["dsn", "node", "-n", ns, "--external"]);
    expect_code(&np, 0);
    let service = get(&scope, ns, "service/node").unwrap();
    let node_port = service["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
    assert!(
        np.stdout_text()
            .contains(&format!("@127.0.0.1:{node_port}/learnflow")),
        "{}",
        np.describe()
    );

    // A Secret without a password.
    kubectl_ok(scope.plane.kubectl_stdin(
        &["apply", "-n", ns, "-f", "-"],
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: broken-credentials\nstringData:\n  username: x\n",
    ));
    let broken = scope.kpg(&["dsn", "broken", "-n", ns]);
    expect_code(&broken, 1);
    assert!(
        broken.stderr_text().contains("broken-credentials")
            && broken.stderr_text().contains("\"password\""),
        "{}",
        broken.describe()
    );
}

#[test]
fn psql_in_the_pod_and_local() {
    let scope = Scope::new("kpg-psql");
    let ns = scope.ns.as_str();
    install(&scope, ns, "postgres", &[]);
    // Through the real kubectl exec (the built kubectl is first on PATH).
    let out = scope.kpg(&["psql", "-n", ns, "--", "-At", "-c", "select 40 + 2"]);
    expect_code(&out, 0);
    assert_eq!(out.stdout_text().trim(), "42");
    let piped = scope.kpg_stdin(
        &["psql", "-n", ns, "--", "-At"],
        "select current_database();\n",
    );
    expect_code(&piped, 0);
    assert_eq!(piped.stdout_text().trim(), "learnflow");
    let failed = scope.kpg(&[
        "psql",
        "-n",
        ns,
        "--",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        "select nope",
    ]);
    assert_ne!(
        failed.code(),
        0,
        "psql's exit code is ours: {}",
        failed.describe()
    );
    assert!(
        failed.stderr_text().contains("nope"),
        "psql's error reaches us: {}",
        failed.describe()
    );
    // A local psql through the in-process port-forward.
    let local = scope.kpg(&[
        "psql",
        "-n",
        ns,
        "--local",
        "--",
        "-At",
        "-c",
        "select current_user",
    ]);
    expect_code(&local, 0);
    assert_eq!(local.stdout_text().trim(), "postgres");
    // Ctrl-C (SIGINT to the whole process group) cancels the running query through the
    // tunnel, as psql does, instead of killing the tunnel under the session.
    let mut session = scope.kpg_command(&["psql", "-n", ns, "--local", "--", "-At", "-f", "-"]);
    std::os::unix::process::CommandExt::process_group(&mut session, 0);
    let mut session = session
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let script = "select 'pid ' || pg_backend_pid();\nselect pg_sleep(600);\n";
    std::io::Write::write_all(&mut session.stdin.take().unwrap(), script.as_bytes()).unwrap();
    let sleeping = || {
        let out = scope.kubectl_ns(&[
            "exec",
            "postgres-0",
            "-c",
            "postgres",
            "--",
            "psql",
            "-U",
            "postgres",
            "-Atc",
            "select count(*) from pg_stat_activity where query like 'select pg_sleep(600)%'",
        ]);
        out.stdout_text().trim() == "1"
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !sleeping() {
        assert!(
            std::time::Instant::now() < deadline,
            "pg_sleep never started"
        );
    }
    let group = format!("-{}", session.id());
    let kill = std::process::Command::new("kill")
        .args(["-INT", "--", &group])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = session.wait_with_output().unwrap();
    // psql stops a script that was interrupted (its exit 3); the plugin outlived the signal and
    // passed that on, and the server cancelled the statement rather than losing the session.
    expect_code(&out, 3);
    assert!(out.stdout_text().contains("pid "), "{}", out.describe());
    assert!(
        !out.stderr_text().contains("closed the connection"),
        "{}",
        out.describe()
    );
    assert!(
        out.stderr_text()
            .contains("canceling statement due to user request"),
        "{}",
        out.describe()
    );

    // Every connection flag reaches kubectl. The plugin itself finds the pod as the impersonated
    // user, whom RBAC lets in through this namespace's binding only.
    kubectl_ok(scope.kubectl_ns(&[
        "create",
        "rolebinding",
        "alice-admin",
        "--clusterrole=admin",
        "--user=alice",
    ]));
    let fake = scope.dir.path().join("fake-kubectl");
    let record = scope.dir.path().join("argv");
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
    let kubeconfig = scope.plane.kubeconfig.display().to_string();
    let out = scope
        .kpg_command(&[
            "psql",
            "-n",
            ns,
            "--kubeconfig",
            &kubeconfig,
            "--context",
            "kpg-test",
            "--user",
            "kubernetes-admin",
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
        "--context=kpg-test".into(),
        "--user=kubernetes-admin".into(),
        "--as=alice".into(),
        "--as-group=dev".into(),
        "--as-group=ops".into(),
        format!("--namespace\n{ns}\nexec\n-i\npostgres-0\n-c\npostgres\n--\npsql\n-U\npostgres\n-d\nlearnflow\n-c\nselect 1"),
    ] {
        assert!(argv.contains(&needle), "{needle:?} missing from:\n{argv}");
    }
    assert!(
        !argv.contains("\n-t\n"),
        "no TTY when stdin is not a terminal"
    );
    let missing = scope
        .kpg_command(&["psql", "-n", ns])
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
    let elsewhere = scope.another_namespace("kpg-nothing");
    let no_release = scope.kpg(&["psql", "-n", &elsewhere]);
    expect_code(&no_release, 1);
    assert!(
        no_release.stderr_text().contains("not found"),
        "{}",
        no_release.describe()
    );
}

#[test]
fn migrate_through_the_cluster_survives_a_dropped_stream() {
    let scope = Scope::new("kpg-migrate");
    let ns = scope.ns.as_str();
    install(&scope, ns, "postgres", &[]);
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
    let (proxy, kubeconfig) = proxy::in_front_of(&scope);
    let plan = scope.kpg(&[
        "migrate",
        "up",
        "-n",
        ns,
        "--dir",
        &d,
        "--dry-run",
        "--kubeconfig",
        &kubeconfig,
    ]);
    expect_code(&plan, 0);
    assert!(
        plan.stdout_text().contains("via port-forward"),
        "{}",
        plan.describe()
    );
    // The port-forward stream is cut after some traffic; the engine reconnects through a new one.
    proxy.clear_requests();
    proxy.drop_upgraded_after(6000);
    let out = scope.kpg(&[
        "migrate",
        "up",
        "-n",
        ns,
        "--dir",
        &d,
        "--kubeconfig",
        &kubeconfig,
    ]);
    expect_code(&out, 0);
    assert!(
        out.stderr_text().contains("reconnected"),
        "{}",
        out.describe()
    );
    let forwards = proxy
        .requests()
        .iter()
        .filter(|r| r.path_and_query.contains("/portforward"))
        .count();
    assert!(
        forwards >= 2,
        "a second port-forward: {:?}",
        proxy.requests()
    );
    let status = scope.kpg(&["migrate", "status", "-n", ns, "--dir", &d, "-o", "json"]);
    expect_code(&status, 0);
    let status = json(&status);
    assert_eq!(status["applied"], 30, "{status}");
    assert_eq!(status["pending"], 0, "{status}");
    // Through the cluster the history names the kubeconfig user after the database role.
    let by = status["migrations"][0]["applied_by"].as_str().unwrap();
    assert!(
        by.starts_with("postgres via kubeconfig user ") && !by.contains("unknown"),
        "{by}"
    );
    // Each migration ran exactly once, seen from outside the plugin.
    let secret = scope.kpg(&["dsn", "-n", ns, "-o", "json"]);
    expect_code(&secret, 0);
    let forward = PortForward::start(&scope, ns, "postgres-0");
    let dsn = format!(
        "postgresql://postgres:{}@{}/learnflow?sslmode=disable",
        urlencode(json(&secret)["password"].as_str().unwrap()),
        forward.addr
    );
    let counts = crate::pg::query(
        &dsn,
        "SELECT count(*), count(DISTINCT version) FROM run_log",
    );
    assert_eq!(counts[0], [Some("29".to_string()), Some("29".to_string())]);
    // Every migration this run applied is reported, also one whose commit was only confirmed
    // by the history read after the reconnection.
    for v in 1..=30 {
        assert!(
            out.stdout_text().contains(&format!("{v:03}_")),
            "{v:03} not reported: {}",
            out.describe()
        );
    }
    // No release: exit 1 naming it.
    let nowhere = scope.another_namespace("kpg-nowhere");
    let none = scope.kpg(&["migrate", "status", "-n", &nowhere]);
    expect_code(&none, 1);
    assert!(
        none.stderr_text()
            .contains(&format!("not found in namespace \"{nowhere}\"")),
        "{}",
        none.describe()
    );
}

fn write(dir: &Path, name: &str, body: &str) {
    std::fs::write(dir.join(name), body).unwrap();
}

/// API faults the real apiserver does not make on demand, through the proxy: a 500, a server
/// that never answers or trickles, a proxy's 502 page, an endless answer, a watch that drops in
/// the middle of an install.
#[test]
fn api_faults_give_their_exit_codes_and_watch_drops_are_survived() {
    let scope = Scope::new("kpg-faults");
    let ns = scope.ns.as_str();
    let (proxy, kubeconfig) = proxy::in_front_of(&scope);
    let via = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--kubeconfig", &kubeconfig, "-n", ns]);
        scope.kpg(&all)
    };
    // A 500 is an unexpected API error: exit 1 with the server's message, no retry loop.
    proxy.fail_next(1, 500, proxy::Matcher::path("/statefulsets"));
    let out = via(&["status"]);
    expect_code(&out, 1);
    assert!(out.stderr_text().contains("error"), "{}", out.describe());
    // A server that accepts and never answers is bounded by --request-timeout.
    proxy.hang(proxy::Matcher::path("/statefulsets"));
    let started = std::time::Instant::now();
    let out = via(&["status", "--request-timeout", "2s"]);
    assert_ne!(out.code(), 0, "{}", out.describe());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "bounded: {:?}",
        started.elapsed()
    );
    proxy.clear_hang();
    // A body trickled a byte at a time makes progress on every read; the request timeout
    // still bounds the whole response.
    proxy.trickle(
        std::time::Duration::from_millis(200),
        proxy::Matcher::path("/statefulsets"),
    );
    let started = std::time::Instant::now();
    let out = via(&["status", "--request-timeout", "2s"]);
    expect_code(&out, 2);
    assert!(
        out.stderr_text().contains("request timeout"),
        "{}",
        out.describe()
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "bounded: {:?}",
        started.elapsed()
    );
    proxy.clear_faults();
    // A proxy in front of the apiserver that cannot reach it answers 502 with its HTML page:
    // Kubernetes not accessible (exit 2), in one short line that names the page, no HTML.
    proxy.fail_next_html(1000, 502, proxy::Matcher::any());
    let out = via(&["status"]);
    expect_code(&out, 2);
    let err = out.stderr_text();
    assert!(
        err.contains("HTTP 502") && err.contains("\"502 Bad Gateway\"") && !err.contains('<'),
        "{}",
        out.describe()
    );
    assert!(err.len() < 600, "short: {}", out.describe());
    proxy.clear_faults();
    // An answer that never ends is cut at the cap: the command ends within seconds, exit 2
    // naming the cap, and its memory stays bounded (it runs under an address-space limit of
    // 1 GiB, which an unbounded read would hit and die of).
    proxy.endless(proxy::Matcher::path("/statefulsets"));
    let command = scope.kpg_command(&["status", "--kubeconfig", &kubeconfig, "-n", ns]);
    let mut limited = std::process::Command::new("sh");
    limited
        .arg("-c")
        .arg("ulimit -v 1048576 && exec \"$0\" \"$@\"")
        .arg(command.get_program())
        .args(command.get_args())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => limited.env(key, value),
            None => limited.env_remove(key),
        };
    }
    let started = std::time::Instant::now();
    let child = limited.spawn().unwrap();
    let out = crate::output_within(child, std::time::Duration::from_secs(60));
    expect_code(&out, 2);
    assert!(
        out.stderr_text().contains("larger than 256 MiB")
            && out
                .stderr_text()
                .contains("hint: a single answer is read whole into memory"),
        "{}",
        out.describe()
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "bounded: {:?}",
        started.elapsed()
    );
    eprintln!("an endless answer cut in {:?}", started.elapsed());
    proxy.clear_faults();
    // Watches cut while install waits: it watches again and finishes.
    let install = {
        let mut command = scope.kpg_command(&[
            "install",
            "--kubeconfig",
            &kubeconfig,
            "-n",
            ns,
            "--timeout",
            "120s",
            "-o",
            "json",
        ]);
        command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command.spawn().unwrap()
    };
    assert!(
        proxy.wait_for(std::time::Duration::from_secs(60), |r| r
            .iter()
            .any(|r| r.path_and_query.contains("watch=true"))),
        "install watches"
    );
    proxy.drop_watches();
    let out = install.wait_with_output().unwrap();
    expect_code(&out, 0);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["phase"], "Healthy", "{}", out.describe());
}

/// A KUBECONFIG list whose files are not all there: the missing ones are skipped, as kubectl
/// skips them.
#[test]
fn kubeconfig_lists_skip_missing_files() {
    let scope = Scope::new("kpg-kclist");
    let missing = scope.dir.path().join("not-there.kubeconfig");
    let list = std::env::join_paths([missing.as_path(), scope.plane.kubeconfig.as_path()]).unwrap();
    let out = scope
        .kpg_command(&["status", "-n", &scope.ns, "-o", "json"])
        .env("KUBECONFIG", &list)
        .output()
        .unwrap();
    expect_code(&out, 0);
    let none = scope
        .kpg_command(&["status", "-n", &scope.ns])
        .env("KUBECONFIG", missing.as_os_str())
        .output()
        .unwrap();
    expect_code(&none, 2);
    assert!(
        none.stderr_text().contains("does not exist"),
        "{}",
        none.describe()
    );
}

/// A CONNECT proxy on loopback that resolves `kubernetes.default.svc` (a name of the
/// apiserver's certificate that no resolver here knows) to 127.0.0.1: a request that arrives at
/// the apiserver by that name went through it.
struct ConnectProxy {
    port: u16,
    tunnels: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl ConnectProxy {
    fn start() -> ConnectProxy {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let tunnels = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = tunnels.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let count = count.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(client.try_clone().unwrap());
                    let mut line = String::new();
                    let _ = reader.read_line(&mut line);
                    let target = line
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or_default()
                        .to_string();
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                            break;
                        }
                    }
                    let target = target.replace("kubernetes.default.svc", "127.0.0.1");
                    let Ok(upstream) = std::net::TcpStream::connect(&target) else {
                        let _ = (&client).write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
                        return;
                    };
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = (&client).write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
                    let (mut up_read, mut up_write) = (upstream.try_clone().unwrap(), upstream);
                    let mut down_write = client;
                    let pending = reader.buffer().to_vec();
                    let _ = up_write.write_all(&pending);
                    let mut down_read = reader.into_inner();
                    let forward = std::thread::spawn(move || {
                        let _ = std::io::copy(&mut down_read, &mut up_write);
                        let _ = up_write.shutdown(std::net::Shutdown::Write);
                    });
                    let _ = std::io::copy(&mut up_read, &mut down_write);
                    let _ = down_write.shutdown(std::net::Shutdown::Write);
                    let _ = forward.join();
                });
            }
        });
        ConnectProxy { port, tunnels }
    }

    fn tunnels(&self) -> usize {
        self.tunnels.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// kubectl's proxy habits: HTTPS_PROXY (either case) and the kubeconfig's proxy-url reach the
/// apiserver through a real CONNECT proxy, port-forward streams included; NO_PROXY covering the
/// server goes direct.
#[test]
fn proxies_are_used_as_kubectl_uses_them() {
    let scope = Scope::new("kpg-proxy");
    let ns = scope.ns.as_str();
    let proxy = ConnectProxy::start();
    let admin = std::fs::read_to_string(&scope.plane.kubeconfig).unwrap();
    let port = scope.plane.server.rsplit(':').next().unwrap();
    let by_name = admin.replace(
        &scope.plane.server,
        &format!("https://kubernetes.default.svc:{port}"),
    );
    let plain = write_file(&scope, "by-name.kubeconfig", &by_name);
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port);
    let run = |kubeconfig: &str, env: &[(&str, &str)], args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--kubeconfig", kubeconfig, "-n", ns]);
        let mut command = scope.kpg_command(&all);
        for name in [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "NO_PROXY",
            "no_proxy",
        ] {
            command.env_remove(name);
        }
        command.envs(env.iter().copied());
        command.output().unwrap()
    };
    expect_code(&scope.kpg(&["install", "-n", ns, "--timeout", "120s"]), 0);

    let out = run(
        &plain,
        &[("HTTPS_PROXY", &proxy_url)],
        &["status", "-o", "json"],
    );
    expect_code(&out, 0);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        doc["phase"], "Healthy",
        "the port-forward went through it too: {doc}"
    );
    let used = proxy.tunnels();
    assert!(used > 0, "{}", out.describe());
    let out = run(
        &plain,
        &[("https_proxy", &proxy_url)],
        &["migrate", "status"],
    );
    expect_code(&out, 0);
    assert!(proxy.tunnels() > used);

    let direct = proxy.tunnels();
    let out = run(
        &plain,
        &[
            ("HTTPS_PROXY", &proxy_url),
            ("NO_PROXY", "example.org,.svc"),
        ],
        &["status"],
    );
    expect_code(&out, 2);
    assert_eq!(proxy.tunnels(), direct, "NO_PROXY: not through the proxy");

    let with_proxy_url = by_name.replace(
        &format!("    server: https://kubernetes.default.svc:{port}\n"),
        &format!("    server: https://kubernetes.default.svc:{port}\n    proxy-url: {proxy_url}\n"),
    );
    assert_ne!(with_proxy_url, by_name, "the kubeconfig layout changed");
    let configured = write_file(&scope, "proxy-url.kubeconfig", &with_proxy_url);
    let out = run(&configured, &[], &["status", "-o", "json"]);
    expect_code(&out, 0);
    assert!(proxy.tunnels() > direct);
}
