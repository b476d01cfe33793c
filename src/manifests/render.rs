//! The objects of a release (DESIGN.md), hardened as the best charts do, as JSON ready for
//! server-side apply or `kubectl apply -f -`.

use serde_json::{json, Value};

use super::spec::InstallSpec;
use crate::cluster::release::{
    self, DATABASE_PORT, LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NAME,
    LABEL_VERSION, MANAGED_BY,
};
use crate::deployment::observe::pvc_name;

/// The field manager of every apply.
pub const FIELD_MANAGER: &str = "kubectl-pg";
/// The official image runs PostgreSQL as this uid/gid (Debian variants).
const POSTGRES_UID: i64 = 999;
/// The server's container in the pod: exec, logs and probes name it.
pub const CONTAINER: &str = "postgres";

/// The labels on every object of a release.
pub fn labels(spec: &InstallSpec) -> Value {
    json!({
        LABEL_NAME: "postgresql",
        LABEL_INSTANCE: spec.release,
        LABEL_COMPONENT: "primary",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_VERSION: spec.major.to_string(),
    })
}

/// The labels of the data claim: those of the release but the version.
fn claim_labels(spec: &InstallSpec) -> Value {
    let mut labels = labels(spec);
    if let Some(map) = labels.as_object_mut() {
        map.remove(LABEL_VERSION);
    }
    labels
}

fn selector(spec: &InstallSpec) -> Value {
    json!({ LABEL_NAME: "postgresql", LABEL_INSTANCE: spec.release })
}

fn metadata(spec: &InstallSpec, name: &str) -> Value {
    json!({ "name": name, "namespace": spec.namespace, "labels": labels(spec) })
}

/// The `uri` key of a credentials Secret: for apps inside the cluster, so its sslmode is
/// `require` for a release that serves TLS (pg_hba takes nothing else from outside the pod)
/// and `disable` for one that does not (lib/pq and golang-migrate refuse a DSN without
/// sslmode against a server without TLS). Derived from the other keys and the release's TLS,
/// so install and `--upgrade` keep it in step (see `install::credentials::refresh_uri`).
pub fn credentials_uri(
    host: &str,
    database: &str,
    username: &str,
    password: &str,
    tls: bool,
) -> String {
    crate::database::connection::DatabaseConnection::new(
        host.to_string(),
        DATABASE_PORT,
        database.to_string(),
        username.to_string(),
        password.to_string(),
    )
    .with_plain_or_tls(tls)
    .uri()
}

/// `Secret R-credentials` with the given password.
pub fn secret(spec: &InstallSpec, password: &str) -> Value {
    let host = release::service_host(&spec.release, &spec.namespace, &spec.cluster_domain);
    let uri = credentials_uri(
        &host,
        &spec.database,
        &spec.username,
        password,
        spec.serves_tls(),
    );
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(spec, &release::secret_name(&spec.release)),
        "type": "kubernetes.io/basic-auth",
        "stringData": {
            "username": spec.username,
            "password": password,
            "database": spec.database,
            "host": host,
            "port": DATABASE_PORT.to_string(),
            "uri": uri,
        }
    })
}

/// An application user's credentials and where they apply.
#[derive(Debug, Clone)]
pub struct UserSecret<'a> {
    pub release: &'a str,
    pub namespace: &'a str,
    /// The in-cluster host of the release (`R.N.svc.DOMAIN`).
    pub host: &'a str,
    pub user: &'a str,
    pub password: &'a str,
    pub database: &'a str,
    pub readonly: bool,
    /// Whether the release serves TLS (the `uri`'s sslmode).
    pub tls: bool,
}

/// `Secret R-user-NAME`: an application user's credentials, shaped as `R-credentials`
/// (basic-auth; username, password, database, host, port, uri), labelled as the release's
/// objects plus the user's name and access.
pub fn user_secret(user: &UserSecret) -> Value {
    use crate::database::roles::{self, LABEL_READONLY, LABEL_USER};
    let uri = credentials_uri(user.host, user.database, user.user, user.password, user.tls);
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": roles::secret_name(user.release, user.user),
            "namespace": user.namespace,
            "labels": {
                LABEL_NAME: "postgresql",
                LABEL_INSTANCE: user.release,
                LABEL_COMPONENT: "primary",
                LABEL_MANAGED_BY: MANAGED_BY,
                LABEL_USER: user.user,
                LABEL_READONLY: user.readonly.to_string(),
            },
        },
        "type": "kubernetes.io/basic-auth",
        "stringData": {
            "username": user.user,
            "password": user.password,
            "database": user.database,
            "host": user.host,
            "port": DATABASE_PORT.to_string(),
            "uri": uri,
        }
    })
}

/// `Service R` (ClusterIP, NodePort or LoadBalancer, restricted to the source ranges given).
pub fn service(spec: &InstallSpec) -> Value {
    let mut service = service_plain(spec);
    if !spec.source_ranges.is_empty() {
        service["spec"]["loadBalancerSourceRanges"] = json!(spec.source_ranges);
    }
    service
}

fn service_plain(spec: &InstallSpec) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(spec, &spec.release),
        "spec": {
            "type": spec.service_type,
            "selector": selector(spec),
            "ports": [{ "name": "postgresql", "port": DATABASE_PORT, "targetPort": "postgresql", "protocol": "TCP" }],
        }
    })
}

/// `Service R-hl`: headless, publishing not-ready addresses for the StatefulSet's DNS.
pub fn headless_service(spec: &InstallSpec) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(spec, &format!("{}-hl", spec.release)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": selector(spec),
            "ports": [{ "name": "postgresql", "port": DATABASE_PORT, "targetPort": "postgresql", "protocol": "TCP" }],
        }
    })
}

fn resources(spec: &InstallSpec) -> Value {
    let pairs = |cpu: &Option<String>, memory: &Option<String>| -> serde_json::Map<String, Value> {
        [("cpu", cpu), ("memory", memory)]
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), json!(v))))
            .collect()
    };
    let mut requests = pairs(&spec.cpu_request, &spec.memory_request);
    let mut limits = pairs(&spec.cpu_limit, &spec.memory_limit);
    requests.insert("ephemeral-storage".into(), json!(spec.ephemeral.request));
    limits.insert("ephemeral-storage".into(), json!(spec.ephemeral.limit));
    json!({ "requests": requests, "limits": limits })
}

fn secret_env(spec: &InstallSpec, name: &str, key: &str) -> Value {
    json!({ "name": name, "valueFrom": { "secretKeyRef": { "name": spec.secret_name(), "key": key } } })
}

/// The pod volume holding the server certificate and key (from Secret `R-tls`).
pub const TLS_VOLUME: &str = "tls";
/// The pod volume holding the superuser's password (the credentials Secret's `password` key).
pub const CREDENTIALS_VOLUME: &str = "credentials";
/// Where the credentials volume is mounted: `POSTGRES_PASSWORD_FILE` names a file in it.
pub const CREDENTIALS_MOUNT: &str = "/etc/postgresql/credentials";
const PASSWORD_KEY: &str = "password";
/// The emptyDirs of `/tmp` and `/var/run/postgresql`.
pub const TMP_VOLUME: &str = "tmp";
pub const RUN_VOLUME: &str = "run";

/// pg_isready over TCP, not the socket: during first start-up the image runs a temporary
/// server on the socket only, which must not count as ready. Through `sh` because the user and
/// database come from the Secret, and the kubelet expands `$(VAR)` in a probe's argv only for
/// literal variables.
macro_rules! pg_isready {
    () => {
        "pg_isready -U \"$POSTGRES_USER\" -d \"$POSTGRES_DB\" -h 127.0.0.1 -p 5432"
    };
}

/// Startup and readiness: the server accepts connections (pg_isready exits 0).
const READY_COMMAND: &str = concat!("exec ", pg_isready!());

/// Liveness: the server answers at all. pg_isready exits 1 when the server is up but rejecting
/// connections (starting up, or replaying WAL after a backend crashed: the postmaster then
/// recovers without restarting the container, so no startup probe covers it), 2 when nothing
/// answers, 3 when it could not try. Killing a server that recovers only starts the recovery
/// over, so 0 and 1 are alive; pg_isready cannot map its own status, hence the shell's test.
const ALIVE_COMMAND: &str = concat!(pg_isready!(), "; [ $? -le 1 ]");

/// Adds TLS to the StatefulSet of a release that serves it: the certificate and key of
/// `R-tls` (only those two keys: the CA key stays out of the pod) mounted read-only with mode
/// 0600 (the server refuses a key others may read; fsGroup lets the postgres user read it), the
/// server started with `ssl = on`, and the certificate's checksum on the pod template.
fn add_tls(spec: &InstallSpec, sts: &mut Value) {
    use super::certs::{secret_name, ANNOTATION_CHECKSUM, TLS_MOUNT};
    let pod = &mut sts["spec"]["template"];
    if let Some(checksum) = &spec.tls_checksum {
        pod["metadata"]["annotations"] = json!({ ANNOTATION_CHECKSUM: checksum });
    }
    let pod = &mut pod["spec"];
    if let Some(volumes) = pod["volumes"].as_array_mut() {
        volumes.push(json!({
            "name": TLS_VOLUME,
            "secret": {
                "secretName": secret_name(&spec.release),
                "defaultMode": 0o600,
                "items": [
                    { "key": "tls.crt", "path": "tls.crt" },
                    { "key": "tls.key", "path": "tls.key" },
                ],
            },
        }));
    }
    let container = &mut pod["containers"][0];
    if let Some(mounts) = container["volumeMounts"].as_array_mut() {
        mounts.push(json!({ "name": TLS_VOLUME, "mountPath": TLS_MOUNT, "readOnly": true }));
    }
    container["args"] = json!([
        "-c",
        "ssl=on",
        "-c",
        format!("ssl_cert_file={TLS_MOUNT}/tls.crt"),
        "-c",
        format!("ssl_key_file={TLS_MOUNT}/tls.key"),
        "-c",
        "ssl_min_protocol_version=TLSv1.2",
    ]);
}

/// `StatefulSet R`: one replica of the pinned official image.
pub fn statefulset(spec: &InstallSpec) -> Value {
    let mut sts = statefulset_plain(spec);
    if spec.serves_tls() {
        add_tls(spec, &mut sts);
    }
    sts
}

fn statefulset_plain(spec: &InstallSpec) -> Value {
    let (mount, pgdata) = (spec.layout.mount(), spec.layout.pgdata_env(spec.major));
    // A user's Secret is basic-auth shaped (password, perhaps username): the user and the
    // database are then literals, decided at install from the Secret and the flags.
    let (user, database) = if spec.existing_secret.is_some() {
        (
            json!({ "name": "POSTGRES_USER", "value": spec.username }),
            json!({ "name": "POSTGRES_DB", "value": spec.database }),
        )
    } else {
        (
            secret_env(spec, "POSTGRES_USER", "username"),
            secret_env(spec, "POSTGRES_DB", "database"),
        )
    };
    let mut env = vec![
        user,
        // The image reads the password from this file (its `file_env`), so no process's
        // environment, `kubectl describe` or `exec env` shows it.
        json!({ "name": "POSTGRES_PASSWORD_FILE", "value": format!("{CREDENTIALS_MOUNT}/{PASSWORD_KEY}") }),
        database,
        // The image's initdb trusts 127.0.0.1 and ::1, which is where a port-forward arrives:
        // require the password on every TCP connection, so a health check proves it.
        json!({ "name": "POSTGRES_INITDB_ARGS", "value": "--auth-host=scram-sha-256" }),
    ];
    if let Some(pgdata) = pgdata {
        env.push(json!({ "name": "PGDATA", "value": pgdata }));
    }
    let probe = |command: &str, period: u32, failures: u32| {
        json!({
            "exec": { "command": ["sh", "-c", command] },
            "periodSeconds": period,
            "timeoutSeconds": 5,
            "failureThreshold": failures,
        })
    };
    let mut storage = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": { "requests": { "storage": spec.storage_size } },
    });
    if let Some(class) = &spec.storage_class {
        storage["storageClassName"] = json!(class);
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": spec.release,
            "namespace": spec.namespace,
            "labels": labels(spec),
            // What no field holds: the domain of the hosts in the Secret, dsn and status.
            "annotations": { release::ANNOTATION_CLUSTER_DOMAIN: spec.cluster_domain },
        },
        "spec": {
            "replicas": 1,
            "serviceName": format!("{}-hl", spec.release),
            "podManagementPolicy": "OrderedReady",
            "updateStrategy": { "type": "RollingUpdate" },
            "selector": { "matchLabels": selector(spec) },
            "template": {
                "metadata": { "labels": labels(spec) },
                "spec": {
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    // Long enough for a fast shutdown (checkpoint) before SIGKILL.
                    "terminationGracePeriodSeconds": 60,
                    "securityContext": {
                        "runAsUser": POSTGRES_UID,
                        "runAsGroup": POSTGRES_UID,
                        "fsGroup": POSTGRES_UID,
                        "fsGroupChangePolicy": "OnRootMismatch",
                        "runAsNonRoot": true,
                        "seccompProfile": { "type": "RuntimeDefault" },
                    },
                    "containers": [{
                        "name": CONTAINER,
                        "image": spec.image,
                        "imagePullPolicy": "IfNotPresent",
                        "ports": [{ "name": "postgresql", "containerPort": DATABASE_PORT, "protocol": "TCP" }],
                        "env": env,
                        "resources": resources(spec),
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "runAsNonRoot": true,
                            "capabilities": { "drop": ["ALL"] },
                        },
                        "startupProbe": probe(READY_COMMAND, 5, 60),
                        "readinessProbe": probe(READY_COMMAND, 5, 3),
                        "livenessProbe": probe(ALIVE_COMMAND, 10, 6),
                        "volumeMounts": [
                            { "name": "data", "mountPath": mount },
                            { "name": RUN_VOLUME, "mountPath": "/var/run/postgresql" },
                            { "name": TMP_VOLUME, "mountPath": "/tmp" },
                            { "name": "shm", "mountPath": "/dev/shm" },
                            { "name": CREDENTIALS_VOLUME, "mountPath": CREDENTIALS_MOUNT, "readOnly": true },
                        ],
                    }],
                    "volumes": [
                        { "name": RUN_VOLUME, "emptyDir": { "sizeLimit": spec.ephemeral.run } },
                        { "name": TMP_VOLUME, "emptyDir": { "sizeLimit": spec.ephemeral.tmp } },
                        { "name": "shm", "emptyDir": { "medium": "Memory", "sizeLimit": "256Mi" } },
                        {
                            "name": CREDENTIALS_VOLUME,
                            "secret": {
                                "secretName": spec.secret_name(),
                                // Only the password: the pod needs nothing else of the Secret.
                                "items": [{ "key": PASSWORD_KEY, "path": PASSWORD_KEY }],
                                // Read-only to owner and group: the kubelet makes the files
                                // root's with the pod's fsGroup (999), so the server reads it.
                                "defaultMode": 0o440,
                            },
                        },
                    ],
                },
            },
            "volumeClaimTemplates": [{
                // No version label: the templates never change, and the version does.
                "metadata": { "name": "data", "labels": claim_labels(spec) },
                "spec": storage,
            }],
            "persistentVolumeClaimRetentionPolicy": { "whenDeleted": "Retain", "whenScaled": "Retain" },
        }
    })
}

/// Every object, in apply order (Secret first: the pod reads it).
pub fn all(spec: &InstallSpec, password: Option<&str>) -> Vec<Value> {
    let mut objects = Vec::new();
    if let (None, Some(password)) = (&spec.existing_secret, password) {
        objects.push(secret(spec, password));
    }
    objects.extend([headless_service(spec), service(spec), statefulset(spec)]);
    objects
}

/// The PVC the StatefulSet's template creates.
pub fn data_pvc_name(spec: &InstallSpec) -> String {
    pvc_name(&spec.release)
}

/// `NetworkPolicy R`: ingress to the release's pods only on TCP 5432, from every pod of the
/// release's namespace and from `peers` (`--allow-from`). An exposed release (LoadBalancer,
/// NodePort) also takes any address in a second rule: its clients reach the pod from client or
/// node addresses (SNAT), which no pod or namespace selector matches, so the Service's source
/// ranges, TLS and the password guard that path. Egress is not restricted. No version label:
/// `kubectl pg upgrade` never re-applies the policy, and it does not change with the major.
pub fn network_policy(spec: &InstallSpec, peers: &[Value]) -> Value {
    let port = json!([{ "protocol": "TCP", "port": DATABASE_PORT }]);
    let mut from = vec![super::policy::own_namespace_peer(&spec.namespace)];
    from.extend(peers.iter().cloned());
    let mut ingress = vec![json!({ "from": from, "ports": port })];
    if matches!(spec.service_type.as_str(), "LoadBalancer" | "NodePort") {
        ingress.push(json!({
            "from": [{ "ipBlock": { "cidr": "0.0.0.0/0" } }, { "ipBlock": { "cidr": "::/0" } }],
            "ports": port,
        }));
    }
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": { "name": spec.release, "namespace": spec.namespace, "labels": claim_labels(spec) },
        "spec": {
            "podSelector": { "matchLabels": selector(spec) },
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(major: u32) -> InstallSpec {
        InstallSpec::example(major)
    }

    #[test]
    fn the_secrets_uri_states_sslmode_for_apps_in_the_cluster() {
        let plain = secret(&spec(17), "pw");
        let uri = plain["stringData"]["uri"].as_str().unwrap();
        assert!(uri.ends_with("/learnflow?sslmode=disable"), "{uri}");
        let tls = secret(
            &InstallSpec {
                tls: true,
                ..spec(17)
            },
            "pw",
        );
        let uri = tls["stringData"]["uri"].as_str().unwrap();
        assert!(uri.ends_with("/learnflow?sslmode=require"), "{uri}");
        let user = user_secret(&UserSecret {
            release: "pg",
            namespace: "db",
            host: "pg.db.svc.cluster.local",
            user: "app",
            password: "pw",
            database: "learnflow",
            readonly: false,
            tls: true,
        });
        assert_eq!(
            user["stringData"]["uri"],
            "postgresql://app:pw@pg.db.svc.cluster.local:5432/learnflow?sslmode=require"
        );
    }

    #[test]
    fn exposed_or_tls_releases_serve_tls() {
        let plain = statefulset(&spec(17));
        assert!(plain["spec"]["template"]["spec"]["containers"][0]["args"].is_null());
        for exposed in [
            InstallSpec {
                service_type: "LoadBalancer".into(),
                ..spec(17)
            },
            InstallSpec {
                service_type: "NodePort".into(),
                ..spec(17)
            },
            InstallSpec {
                tls: true,
                tls_checksum: Some("abc".into()),
                ..spec(17)
            },
        ] {
            assert!(exposed.serves_tls());
            let sts = statefulset(&exposed);
            let pod = &sts["spec"]["template"]["spec"];
            let volume = volume(&sts, TLS_VOLUME);
            assert_eq!(volume["secret"]["secretName"], "pg-tls");
            assert_eq!(volume["secret"]["defaultMode"], 0o600);
            // The CA key never reaches the pod.
            assert_eq!(volume["secret"]["items"].as_array().unwrap().len(), 2);
            let args = pod["containers"][0]["args"].to_string();
            assert!(
                args.contains("ssl=on")
                    && args.contains("ssl_key_file=/etc/postgresql/tls/tls.key"),
                "{args}"
            );
            let live: k8s_openapi::api::apps::v1::StatefulSet =
                serde_json::from_value(sts.clone()).unwrap();
            assert!(super::super::live::read(&live, None, None).tls);
            if exposed.tls {
                assert_eq!(
                    sts["spec"]["template"]["metadata"]["annotations"]
                        ["kubectl-pg.io/tls-checksum"],
                    "abc"
                );
            }
        }
    }

    #[test]
    fn statefulset_is_hardened_and_reads_credentials_from_the_secret() {
        let sts = statefulset(&spec(17));
        let pod = &sts["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["securityContext"]["runAsUser"], 999);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
        let text = sts.to_string();
        assert!(
            !text.contains("\"value\":\"secret"),
            "no inline credentials"
        );
        assert_eq!(
            c["env"][0]["valueFrom"]["secretKeyRef"]["name"],
            "pg-credentials"
        );
        assert_eq!(c["env"][3]["name"], "POSTGRES_INITDB_ARGS");
        assert_eq!(c["env"][3]["value"], "--auth-host=scram-sha-256");
        assert_eq!(c["env"][4]["value"], "/var/lib/postgresql/data/pgdata");
        assert_eq!(
            c["volumeMounts"][0]["mountPath"],
            "/var/lib/postgresql/data"
        );
        assert_eq!(
            c["resources"],
            json!({
                "requests": { "ephemeral-storage": "128Mi" },
                "limits": { "ephemeral-storage": "2Gi" },
            }),
            "dev profile sets no CPU or memory"
        );
        let v18 = statefulset(&spec(18));
        assert_eq!(
            v18["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]["mountPath"],
            "/var/lib/postgresql"
        );
        assert_eq!(
            v18["spec"]["template"]["spec"]["containers"][0]["env"]
                .as_array()
                .unwrap()
                .len(),
            4,
            "18 keeps PGDATA at the image's default"
        );
    }

    #[test]
    fn every_object_is_labelled() {
        for object in all(&spec(18), Some("x".repeat(32).as_str())) {
            let labels = &object["metadata"]["labels"];
            assert_eq!(labels[LABEL_MANAGED_BY], "kubectl-pg", "{object}");
            assert_eq!(labels[LABEL_INSTANCE], "pg");
            assert_eq!(labels[LABEL_VERSION], "18");
        }
    }

    /// The entry of a list (env, volumes, volumeMounts) named `name`.
    fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
        list.as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {list}"))
    }

    /// The volume of `name` in a rendered StatefulSet.
    fn volume<'a>(sts: &'a Value, name: &str) -> &'a Value {
        named(&sts["spec"]["template"]["spec"]["volumes"], name)
    }

    #[test]
    fn the_password_is_a_file_from_the_secret_never_an_environment_value() {
        for (existing, secret) in [(None, "pg-credentials"), (Some("orders-db"), "orders-db")] {
            let sts = statefulset(&InstallSpec {
                existing_secret: existing.map(str::to_string),
                ..spec(17)
            });
            let c = &sts["spec"]["template"]["spec"]["containers"][0];
            let env = c["env"].as_array().unwrap();
            assert!(
                !env.iter().any(|e| e["name"] == "POSTGRES_PASSWORD"),
                "{env:?}"
            );
            let file = named(&c["env"], "POSTGRES_PASSWORD_FILE");
            assert_eq!(file["value"], "/etc/postgresql/credentials/password");
            let mount = named(&c["volumeMounts"], CREDENTIALS_VOLUME);
            assert_eq!(mount["mountPath"], CREDENTIALS_MOUNT);
            assert_eq!(mount["readOnly"], true);
            let volume = &volume(&sts, CREDENTIALS_VOLUME)["secret"];
            assert_eq!(volume["secretName"], secret);
            assert_eq!(
                volume["items"],
                json!([{ "key": "password", "path": "password" }]),
                "only the password reaches the pod"
            );
            assert_eq!(volume["defaultMode"], 0o440);
            // uid 999 reads it through the group the kubelet gives the files.
            assert_eq!(
                sts["spec"]["template"]["spec"]["securityContext"]["fsGroup"],
                999
            );
            let live: k8s_openapi::api::apps::v1::StatefulSet =
                serde_json::from_value(sts.clone()).unwrap();
            let source = crate::cluster::release::CredentialSource::of("pg", Some(&live));
            assert_eq!(source.secret, secret);
        }
    }

    #[test]
    fn node_local_disk_is_requested_limited_and_read_back_per_profile() {
        use super::super::spec::Ephemeral;
        for (prod, ephemeral) in [(false, Ephemeral::dev()), (true, Ephemeral::prod())] {
            let mut req = crate::manifests::Requested {
                prod: Some(prod),
                ..Default::default()
            };
            if prod {
                req.existing_secret = Some("orders-db".into());
            }
            let spec = InstallSpec::from_request(&req, "pg", "db").unwrap();
            assert_eq!(spec.ephemeral, ephemeral);
            let sts = statefulset(&spec);
            let resources = &sts["spec"]["template"]["spec"]["containers"][0]["resources"];
            assert_eq!(
                resources["requests"]["ephemeral-storage"],
                ephemeral.request
            );
            assert_eq!(resources["limits"]["ephemeral-storage"], ephemeral.limit);
            assert_eq!(
                volume(&sts, TMP_VOLUME)["emptyDir"]["sizeLimit"],
                ephemeral.tmp
            );
            assert_eq!(
                volume(&sts, RUN_VOLUME)["emptyDir"]["sizeLimit"],
                ephemeral.run
            );
            assert_eq!(volume(&sts, "shm")["emptyDir"]["sizeLimit"], "256Mi");
            // The limit holds both emptyDirs and the kubelet's default log rotation (5 x 10Mi).
            let bytes = |q: &str| super::super::spec::quantity_value(q).unwrap();
            assert!(
                bytes(&ephemeral.limit)
                    >= bytes(&ephemeral.tmp) + bytes(&ephemeral.run) + 50.0 * 1048576.0
            );
            assert!(bytes(&ephemeral.request) <= bytes(&ephemeral.limit));
            let live: k8s_openapi::api::apps::v1::StatefulSet =
                serde_json::from_value(sts).unwrap();
            assert_eq!(
                super::super::live::read(&live, None, None).ephemeral,
                ephemeral
            );
        }
    }

    /// Runs a probe's `sh -c` command with a pg_isready that exits `code` (the probes run in
    /// the Linux image: a Unix shell is needed).
    #[cfg(unix)]
    fn probe_passes(probe: &Value, code: i32) -> bool {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("pg_isready");
        std::fs::write(&fake, format!("#!/bin/sh\nexit {code}\n")).unwrap();
        let mut perms = std::fs::metadata(&fake).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&fake, perms).unwrap();
        let argv: Vec<&str> = probe["exec"]["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let mut command = std::process::Command::new(argv[0]);
        command
            .args(&argv[1..])
            .env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
            .env("POSTGRES_USER", "postgres")
            .env("POSTGRES_DB", "learnflow");
        // A test forking meanwhile may hold the fresh file open for writing until its child
        // execs: sh then cannot run it (126, "Text file busy").
        for _ in 0..100 {
            let status = command.status().unwrap();
            if status.code() != Some(126) {
                return status.success();
            }
        }
        panic!("{} stayed busy", fake.display());
    }

    #[test]
    #[cfg(unix)]
    fn liveness_counts_a_server_that_rejects_connections_as_alive() {
        let sts = statefulset(&spec(18));
        let c = &sts["spec"]["template"]["spec"]["containers"][0];
        // pg_isready: 0 accepting, 1 rejecting (starting up, recovering), 2 no response,
        // 3 no attempt.
        let passes = |probe: &str| -> Vec<bool> {
            (0..4).map(|code| probe_passes(&c[probe], code)).collect()
        };
        assert_eq!(passes("livenessProbe"), [true, true, false, false]);
        assert_eq!(passes("readinessProbe"), [true, false, false, false]);
        assert_eq!(passes("startupProbe"), [true, false, false, false]);
        let command = c["livenessProbe"]["exec"]["command"].to_string();
        assert!(
            command.contains("pg_isready") && command.contains("-h 127.0.0.1 -p 5432"),
            "{command}"
        );
        // The window a recovery gets before the first restart stays as it was: 60 s.
        assert_eq!(c["livenessProbe"]["periodSeconds"], 10);
        assert_eq!(c["livenessProbe"]["failureThreshold"], 6);
    }

    #[test]
    fn the_network_policy_admits_the_namespace_and_the_peers_on_5432_only() {
        let peer = crate::manifests::policy::parse_peer("namespace=team-a,pod=app=web").unwrap();
        let policy = network_policy(&spec(17), std::slice::from_ref(&peer));
        assert_eq!(policy["apiVersion"], "networking.k8s.io/v1");
        assert_eq!(policy["metadata"]["name"], "pg");
        assert_eq!(policy["metadata"]["namespace"], "db");
        let labels = &policy["metadata"]["labels"];
        assert_eq!(labels[LABEL_MANAGED_BY], "kubectl-pg");
        assert_eq!(labels[LABEL_INSTANCE], "pg");
        // The pods it guards are exactly those the StatefulSet selects.
        assert_eq!(
            policy["spec"]["podSelector"]["matchLabels"],
            statefulset(&spec(17))["spec"]["selector"]["matchLabels"]
        );
        assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]));
        let rules = policy["spec"]["ingress"].as_array().unwrap();
        assert_eq!(
            rules.len(),
            1,
            "a ClusterIP release takes nothing from outside"
        );
        assert_eq!(
            rules[0]["ports"],
            json!([{ "protocol": "TCP", "port": 5432 }])
        );
        assert_eq!(
            rules[0]["from"],
            json!([
                { "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "db" } } },
                peer,
            ])
        );
        // Read back from the object as the apiserver returns it, the extra peers are the same.
        let live: k8s_openapi::api::networking::v1::NetworkPolicy =
            serde_json::from_value(policy.clone()).unwrap();
        assert_eq!(
            crate::manifests::policy::read_peers(&live, "db"),
            vec![peer]
        );
        let exposed = network_policy(
            &InstallSpec {
                service_type: "LoadBalancer".into(),
                ..spec(17)
            },
            &[],
        );
        let rules = exposed["spec"]["ingress"].as_array().unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[1]["from"][0]["ipBlock"]["cidr"], "0.0.0.0/0");
        assert_eq!(rules[1]["ports"][0]["port"], 5432);
        let live: k8s_openapi::api::networking::v1::NetworkPolicy =
            serde_json::from_value(exposed).unwrap();
        assert!(crate::manifests::policy::read_peers(&live, "db").is_empty());
    }
}
