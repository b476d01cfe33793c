//! The real kubectl against the real control plane, on the plugin's own objects: what a user
//! does by hand next to `kubectl pg` (get, describe, apply, exec, logs, port-forward, auth) must
//! work on a release, and the release must be admitted where the `restricted` Pod Security
//! Standard is enforced.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output, Stdio};

use base64::Engine;
use serde_json::Value;

use crate::k8s::run_with_stdin;
use crate::scope::Scope;
use crate::{expect_code, OutputExt};

/// The pod, container and Secret of the default release.
const POD: &str = "postgres-0";
const CONTAINER: &str = "postgres";
const SECRET: &str = "postgres-credentials";

/// Asserts success and returns stdout.
#[track_caller]
fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", out.describe());
    out.stdout_text()
}

#[track_caller]
fn json(out: Output) -> Value {
    let text = ok(out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

/// A key of a Secret, read with kubectl's jsonpath and decoded.
fn secret_value(scope: &Scope, name: &str, key: &str) -> String {
    let jsonpath = format!("jsonpath={{.data.{key}}}");
    let encoded = ok(scope.kubectl_ns(&["get", "secret", name, "-o", &jsonpath]));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .unwrap_or_else(|e| panic!("{name}.{key} is not base64 ({e}): {encoded:?}"));
    String::from_utf8(bytes).unwrap()
}

/// A running `kubectl port-forward` and the local port it announced.
struct PortForward {
    child: Child,
    port: u16,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl PortForward {
    /// Starts `kubectl port-forward pod/POD :5432` on 127.0.0.1 and waits for its
    /// "Forwarding from 127.0.0.1:PORT -> 5432" line: the listener exists from then on.
    fn start(scope: &Scope, websocket: bool) -> PortForward {
        let mut child = Command::new(&scope.plane.kubectl)
            .args(["-n", &scope.ns, "port-forward", &format!("pod/{POD}")])
            .args(["--address", "127.0.0.1", ":5432"])
            .env("KUBECONFIG", &scope.plane.kubeconfig)
            .env(
                "KUBECTL_PORT_FORWARD_WEBSOCKETS",
                if websocket { "true" } else { "false" },
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl port-forward starts");
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        let port = first
            .trim()
            .strip_prefix("Forwarding from 127.0.0.1:")
            .and_then(|rest| rest.strip_suffix(" -> 5432"))
            .and_then(|port| port.parse::<u16>().ok());
        let Some(port) = port else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "kubectl port-forward did not announce its port; stdout: {first:?}, stderr:\n{}",
                stderr.join().unwrap()
            );
        };
        // Drained so that "Handling connection" lines never fill the pipe.
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        PortForward {
            child,
            port,
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    /// Stops kubectl and returns what it printed after the first line, and its stderr.
    fn stop(mut self) -> (String, String) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        (
            self.stdout.take().unwrap().join().unwrap(),
            self.stderr.take().unwrap().join().unwrap(),
        )
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects over TCP to 127.0.0.1:`port` with a password and runs `select 40 + 2`.
fn query_through(port: u16, user: &str, password: &str, database: &str) -> Result<i32, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(port)
            .user(user)
            .password(password)
            .dbname(database)
            .connect_timeout(std::time::Duration::from_secs(20))
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let connection = tokio::spawn(connection);
        let row = client
            .query_one("select 40 + 2", &[])
            .await
            .map_err(|e| format!("{e:?}"))?;
        drop(client);
        let _ = connection.await;
        Ok(row.get::<_, i32>(0))
    })
}

/// The release made from the plugin's own manifests by `kubectl apply --server-side`, then
/// looked at and used with kubectl: tables, JSON, describe, a Secret, auth can-i, exec
/// (WebSocket and SPDY), logs and port-forward (WebSocket and SPDY) with the Secret's password.
#[test]
fn kubectl_works_on_a_release_applied_from_the_plugins_manifests() {
    let scope = Scope::new("kpg-kubectl");
    let ns = scope.ns.as_str();

    // `install --dry-run -o yaml` piped to `kubectl apply --server-side -f -`.
    let manifests = ok(scope.kpg(&["install", "--dry-run", "-o", "yaml", "-n", ns]));
    let apply = |manifests: &str| {
        ok(scope
            .plane
            .kubectl_stdin(&["apply", "--server-side", "-f", "-"], manifests))
    };
    let applied = apply(&manifests);
    for object in [
        format!("namespace/{ns}"),
        format!("secret/{SECRET}"),
        "service/postgres-hl".to_string(),
        "service/postgres".to_string(),
        "statefulset.apps/postgres".to_string(),
    ] {
        assert!(
            applied.contains(&format!("{object} serverside-applied")),
            "{object} not applied:\n{applied}"
        );
    }
    let rollout = ok(scope.kubectl_ns(&[
        "rollout",
        "status",
        "statefulset/postgres",
        "--timeout=120s",
    ]));
    assert!(rollout.contains("rolling update complete"), "{rollout}");
    // Applying the same manifests again is no conflict.
    let again = apply(&manifests);
    assert!(
        again.contains("statefulset.apps/postgres serverside-applied"),
        "{again}"
    );

    // The plugin recognises what kubectl applied: Healthy, and install changes nothing.
    let status = json(scope.kpg(&["status", "-n", ns, "-o", "json"]));
    assert_eq!(status["phase"], "Healthy", "{status:#}");
    assert_eq!(status["database_accessible"], true, "{status:#}");
    let install = scope.kpg(&["install", "-n", ns, "--timeout", "120s"]);
    expect_code(&install, 0);
    assert!(
        install.stderr_text().contains("already deployed"),
        "{}",
        install.describe()
    );

    // get: a table, and JSON.
    let table = ok(scope.kubectl_ns(&["get", "pods"]));
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row[..3], [POD, "1/1", "Running"], "{table}");
    let table = ok(scope.kubectl_ns(&["get", "statefulsets,services,pvc,secrets"]));
    for name in [
        "statefulset.apps/postgres",
        "service/postgres ",
        "service/postgres-hl",
        "persistentvolumeclaim/data-postgres-0",
        "secret/postgres-credentials",
    ] {
        assert!(table.contains(name), "{name} missing from:\n{table}");
    }
    assert!(table.contains("Bound"), "{table}");
    let pod = json(scope.kubectl_ns(&["get", "pod", POD, "-o", "json"]));
    assert_eq!(pod["status"]["phase"], "Running");
    assert_eq!(
        pod["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "kubectl-pg"
    );
    assert_eq!(pod["spec"]["containers"][0]["name"], CONTAINER);
    let image = pod["spec"]["containers"][0]["image"].as_str().unwrap();
    assert!(image.starts_with("postgres:"), "{image}");
    let sts = json(scope.kubectl_ns(&[
        "get",
        "statefulset",
        "postgres",
        "-o",
        "json",
        "--show-managed-fields",
    ]));
    assert_eq!(sts["status"]["readyReplicas"], 1, "{:#}", sts["status"]);
    let managers: Vec<&str> = sts["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert!(managers.contains(&"kubectl"), "{managers:?}");

    // describe (compared with runs of blanks folded: the column widths are kubectl's).
    let fold = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    let described = ok(scope.kubectl_ns(&["describe", "pod", POD]));
    for line in [
        format!("Name: {POD}"),
        format!("Namespace: {ns}"),
        "Status: Running".to_string(),
        "Controlled By: StatefulSet/postgres".to_string(),
        format!("Image: {image}"),
        "Ready: True".to_string(),
    ] {
        assert!(
            fold(&described).contains(&line),
            "{line:?} not in:\n{described}"
        );
    }
    let described = ok(scope.kubectl_ns(&["describe", "statefulset", "postgres"]));
    assert!(
        fold(&described).contains("Pods Status: 1 Running / 0 Waiting / 0 Succeeded / 0 Failed"),
        "{described}"
    );

    // create secret generic, read back through jsonpath.
    let created = ok(scope.kubectl_ns(&[
        "create",
        "secret",
        "generic",
        "extra",
        "--from-literal=token=s3cr3t value",
    ]));
    assert_eq!(created.trim(), "secret/extra created");
    assert_eq!(secret_value(&scope, "extra", "token"), "s3cr3t value");
    let again = scope.kubectl_ns(&["create", "secret", "generic", "extra", "--from-literal=a=b"]);
    assert!(!again.status.success());
    assert!(
        again
            .stderr_text()
            .contains("secrets \"extra\" already exists"),
        "{}",
        again.describe()
    );

    // auth can-i: the admin may do anything, a ServiceAccount only what its Role says.
    assert_eq!(
        ok(scope.kubectl_ns(&["auth", "can-i", "create", "pods/exec"])).trim(),
        "yes"
    );
    let role = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: reader\n  \
         namespace: {ns}\nrules:\n- apiGroups: [\"\"]\n  resources: [\"pods\"]\n  verbs: [\"get\", \"list\"]\n"
    );
    let reader = scope.service_account_kubeconfig("reader", &role);
    let as_reader = |args: &[&str]| scope.plane.kubectl_as(&reader, args);
    assert_eq!(
        ok(as_reader(&["auth", "can-i", "list", "pods"])).trim(),
        "yes"
    );
    let denied = as_reader(&["auth", "can-i", "get", "secrets"]);
    assert_eq!(denied.code(), 1, "{}", denied.describe());
    assert_eq!(denied.stdout_text().trim(), "no");
    assert!(ok(as_reader(&["get", "pods"])).contains(POD));
    let forbidden = as_reader(&["get", "secret", SECRET]);
    assert_eq!(forbidden.code(), 1, "{}", forbidden.describe());
    assert!(
        forbidden.stderr_text().contains(&format!(
            "User \"system:serviceaccount:{ns}:reader\" cannot get resource \"secrets\""
        )),
        "{}",
        forbidden.describe()
    );

    // exec, over WebSocket (kubectl's default) and SPDY: psql, pg_isready, stdin, exit codes.
    let user = secret_value(&scope, SECRET, "username");
    let database = secret_value(&scope, SECRET, "database");
    for websocket in ["true", "false"] {
        let exec = |args: &[&str], stdin: &str| {
            let mut command = Command::new(&scope.plane.kubectl);
            command
                .args(["-n", ns, "exec", "-i", POD, "-c", CONTAINER, "--"])
                .args(args)
                .env("KUBECONFIG", &scope.plane.kubeconfig)
                .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", websocket);
            run_with_stdin(&mut command, stdin)
        };
        let select = exec(
            &[
                "psql", "-U", &user, "-d", &database, "-At", "-c", "select 1",
            ],
            "",
        );
        assert_eq!(ok(select).trim(), "1", "websocket={websocket}");
        let ready = ok(exec(&["pg_isready", "-U", &user, "-d", &database], ""));
        assert!(
            ready.trim_end().ends_with("accepting connections"),
            "websocket={websocket}: {ready}"
        );
        let piped = exec(
            &["psql", "-U", &user, "-d", &database, "-At"],
            "select 6 * 7;\n",
        );
        assert_eq!(ok(piped).trim(), "42", "websocket={websocket}");
        let failed = exec(&["sh", "-c", "exit 3"], "");
        assert_eq!(failed.code(), 3, "{}", failed.describe());
    }

    // logs: the server's own lines.
    let logs = ok(scope.kubectl_ns(&["logs", POD, "-c", CONTAINER]));
    assert!(
        logs.contains("database system is ready to accept connections"),
        "{logs}"
    );
    let tail = ok(scope.kubectl_ns(&["logs", POD, "--tail=1"]));
    assert_eq!(tail.lines().count(), 1, "{tail}");

    // port-forward to a local port: the Secret's password works over TCP (scram-sha-256), a
    // wrong one does not.
    let password = secret_value(&scope, SECRET, "password");
    for websocket in [true, false] {
        let forward = PortForward::start(&scope, websocket);
        let port = forward.port;
        assert_eq!(
            query_through(port, &user, &password, &database),
            Ok(42),
            "websocket={websocket}"
        );
        let wrong = query_through(port, &user, "not-the-password-at-all", &database)
            .expect_err("a wrong password is refused");
        assert!(
            wrong.contains("28P01") || wrong.contains("password authentication failed"),
            "websocket={websocket}: {wrong}"
        );
        let (stdout, stderr) = forward.stop();
        assert!(
            stdout.contains(&format!("Handling connection for {port}")),
            "websocket={websocket}: stdout {stdout:?}, stderr {stderr:?}"
        );
    }
}

/// In a namespace enforcing the `restricted` Pod Security Standard, a pod without a security
/// context is refused, and the plugin's release is admitted and becomes Healthy.
#[test]
fn restricted_pod_security_admits_the_release() {
    let scope = Scope::new("kpg-restricted");
    let ns = scope.ns.as_str();
    ok(scope.kubectl(&[
        "label",
        "namespace",
        ns,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    ]));

    // Enforcement is real: a plain busybox pod is rejected at admission.
    let refused = scope.kubectl_ns(&[
        "run",
        "plain",
        "--image=busybox:1.36",
        "--restart=Never",
        "--",
        "sleep",
        "3600",
    ]);
    assert!(!refused.status.success(), "{}", refused.describe());
    let stderr = refused.stderr_text();
    assert!(
        stderr.contains("violates PodSecurity \"restricted:latest\""),
        "{}",
        refused.describe()
    );

    let install = scope.kpg(&["install", "-n", ns, "--timeout", "120s", "-o", "json"]);
    expect_code(&install, 0);
    let doc: Value = serde_json::from_slice(&install.stdout).unwrap();
    assert_eq!(doc["phase"], "Healthy", "{}", install.describe());
    assert_eq!(doc["database_accessible"], true, "{}", install.describe());

    let phase = ok(scope.kubectl_ns(&["get", "pod", POD, "-o", "jsonpath={.status.phase}"]));
    assert_eq!(phase, "Running");
    let events = json(scope.kubectl_ns(&["get", "events", "-o", "json"]));
    let events = events["items"].as_array().unwrap();
    // The pod running is the proof of admission; the controller records its events
    // asynchronously, so only the absence of a refusal is checked here.
    for event in events {
        let message = event["message"].as_str().unwrap_or_default();
        assert!(
            !message.contains("PodSecurity") && event["reason"] != "FailedCreate",
            "a Pod Security violation was recorded: {event:#}"
        );
    }
    let table = ok(scope.kubectl_ns(&["get", "events"]));
    assert!(!table.contains("violates PodSecurity"), "{table}");
}

/// Storage as a cloud cluster has it: the default class binds on the first consumer and grows
/// (the resizer sets the capacity), the `immediate` class binds at once and cannot grow.
#[test]
fn volumes_bind_and_grow_as_their_class_allows() {
    let scope = Scope::new("kpg-storage");
    let claim = |name: &str, class: &str| {
        format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}, namespace: {ns}}}\n\
             spec: {{accessModes: [ReadWriteOnce], storageClassName: {class}, resources: {{requests: {{storage: 1Gi}}}}}}\n",
            ns = scope.ns
        )
    };
    let applied = scope.plane.kubectl_stdin(
        &["apply", "-f", "-"],
        &format!(
            "{}---\n{}",
            claim("fixed", "immediate"),
            claim("grows", "standard")
        ),
    );
    assert!(applied.status.success(), "{}", applied.describe());
    ok(scope.kubectl_ns(&[
        "wait",
        "--for=jsonpath={.status.phase}=Bound",
        "pvc/fixed",
        "--timeout=60s",
    ]));
    let pending = ok(scope.kubectl_ns(&["get", "pvc", "grows", "-o", "jsonpath={.status.phase}"]));
    assert_eq!(pending, "Pending", "WaitForFirstConsumer: no consumer yet");
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: consumer, namespace: {ns}}}\nspec:\n  containers:\n  - \
         {{name: c, image: busybox, command: [sleep, '3600']}}\n  volumes:\n  - {{name: v, persistentVolumeClaim: {{claimName: grows}}}}\n",
        ns = scope.ns
    );
    let created = scope.plane.kubectl_stdin(&["apply", "-f", "-"], &pod);
    assert!(created.status.success(), "{}", created.describe());
    ok(scope.kubectl_ns(&[
        "wait",
        "--for=jsonpath={.status.phase}=Bound",
        "pvc/grows",
        "--timeout=60s",
    ]));

    let grow = |name: &str| {
        scope.kubectl_ns(&[
            "patch",
            "pvc",
            name,
            "-p",
            r#"{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}"#,
        ])
    };
    let refused = grow("fixed");
    assert!(!refused.status.success(), "{}", refused.describe());
    assert!(
        refused
            .stderr_text()
            .contains("storageclass that provisions the pvc must support resize"),
        "{}",
        refused.describe()
    );
    let grown = grow("grows");
    assert!(grown.status.success(), "{}", grown.describe());
    ok(scope.kubectl_ns(&[
        "wait",
        "--for=jsonpath={.status.capacity.storage}=2Gi",
        "pvc/grows",
        "--timeout=60s",
    ]));
    let events = ok(scope.kubectl_ns(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=grows",
    ]));
    assert!(events.contains("ProvisioningSucceeded"), "{events}");
}

/// A kubeconfig whose user is the exec credential plugin `script` (a shell script body).
fn exec_plugin_kubeconfig(scope: &Scope, name: &str, script: &str) -> std::path::PathBuf {
    let token_config = scope.service_account_kubeconfig(
        name,
        &format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: {name}\n  \
             namespace: {ns}\nrules:\n- apiGroups: [\"\", apps]\n  resources: [\"*\"]\n  verbs: [get, list, watch]\n",
            ns = scope.ns
        ),
    );
    let text = std::fs::read_to_string(&token_config).unwrap();
    let token = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .unwrap()
        .to_string();
    let plugin = scope.dir.path().join(format!("{name}-plugin"));
    std::fs::write(&plugin, script.replace("TOKEN", &token)).unwrap();
    let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&plugin, executable).unwrap();
    let user = format!(
        "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {}\n      \
         interactiveMode: Never\n",
        plugin.display()
    );
    let text = text.replace(&format!("    token: {token}\n"), &user);
    let path = scope.dir.path().join(format!("{name}.exec.kubeconfig"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn an_exec_credential_plugin_runs_once_per_command_and_within_the_timeout() {
    let scope = Scope::new("kpg-exec-plugin");
    let count = scope.dir.path().join("runs");
    let answer = format!(
        "#!/bin/sh\necho run >> {}\nprintf '%s' '{{\"apiVersion\":\"client.authentication.k8s.io/v1\",\
         \"kind\":\"ExecCredential\",\"status\":{{\"token\":\"TOKEN\"}}}}'\n",
        count.display()
    );
    let kubeconfig = exec_plugin_kubeconfig(&scope, "plugin", &answer);
    let kubeconfig = kubeconfig.display().to_string();
    let out = scope.kpg(&["status", "--kubeconfig", &kubeconfig, "-n", &scope.ns]);
    assert_ne!(out.code(), 2, "the token works: {}", out.describe());
    let runs = std::fs::read_to_string(&count).unwrap_or_default();
    assert_eq!(runs.lines().count(), 1, "{runs:?}: {}", out.describe());

    // A plugin that fails: its own message, on one line, exit 2.
    let failing = exec_plugin_kubeconfig(
        &scope,
        "failing",
        "#!/bin/sh\necho 'token expired: run aws sso login' >&2\nexit 3\n",
    );
    let out = scope.kpg(&["status", "--kubeconfig", failing.to_str().unwrap()]);
    expect_code(&out, 2);
    assert!(
        out.stderr_text()
            .contains("token expired: run aws sso login")
            && !out.stderr_text().contains("KUBERNETES_EXEC_INFO"),
        "{}",
        out.describe()
    );

    // A plugin that never answers is bounded by --request-timeout.
    let hanging = exec_plugin_kubeconfig(&scope, "hanging", "#!/bin/sh\nexec sleep 600\n");
    let started = std::time::Instant::now();
    let out = scope.kpg(&[
        "status",
        "--kubeconfig",
        hanging.to_str().unwrap(),
        "--request-timeout",
        "1s",
    ]);
    expect_code(&out, 2);
    assert!(
        out.stderr_text().contains("did not answer within"),
        "{}",
        out.describe()
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn an_expired_oidc_token_is_refreshed_through_the_issuer() {
    let scope = Scope::new("kpg-oidc");
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwt = |exp: u64| {
        format!(
            "{}.{}.c2ln",
            b64.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
            b64.encode(format!(r#"{{"iss":"kpg","sub":"dev","exp":{exp}}}"#))
        )
    };
    let fresh = jwt(4_102_444_800); // 2100-01-01
    let issuer = crate::proxy::Issuer::start(&fresh);
    let ca = scope.dir.path().join("issuer-ca.pem");
    std::fs::write(&ca, &issuer.ca_pem).unwrap();
    let admin = std::fs::read_to_string(&scope.plane.kubeconfig).unwrap();
    let authority = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data: "))
        .unwrap();
    let kubeconfig = scope.dir.path().join("oidc.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    \
             certificate-authority-data: {authority}\nusers:\n- name: dev\n  user:\n    auth-provider:\n      \
             name: oidc\n      config:\n        client-id: kubectl-pg\n        client-secret: s3cret\n        \
             id-token: {}\n        idp-issuer-url: {}\n        refresh-token: r1\ncontexts:\n- name: dev\n  \
             context:\n    cluster: c\n    user: dev\ncurrent-context: dev\n",
            scope.plane.server,
            jwt(1),
            issuer.url
        ),
    )
    .unwrap();
    let out = scope
        .kpg_command(&[
            "status",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "-n",
            &scope.ns,
        ])
        .env("SSL_CERT_FILE", &ca)
        .output()
        .unwrap();
    // The apiserver trusts no OIDC issuer here, so the refreshed token is refused (exit 2); what
    // matters is that the expired one was refreshed, once, before the request.
    assert_eq!(issuer.refreshes(), 1, "{}", out.describe());
    expect_code(&out, 2);
    assert!(
        out.stderr_text().contains("Unauthorized"),
        "{}",
        out.describe()
    );
}
