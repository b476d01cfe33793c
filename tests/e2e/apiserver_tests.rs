//! Tests of the test API server itself: with kube-rs clients (typed APIs over the written
//! kubeconfig, TLS and token) and, when it is on PATH, the real `kubectl`. Where kubectl and the
//! server disagree, the server is wrong.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Pod, Secret};
use kube::api::{
    Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use serde_json::{json, Value};

use crate::apiserver::{pod_ready, Insufficient, TestCluster};

const WAIT: Duration = Duration::from_secs(60);

/// The objects of release `r` in `ns` as DESIGN.md names and labels them; `image` lets fault
/// tests use a non-PostgreSQL image so no server starts.
fn release(ns: &str, r: &str, image: &str) -> Vec<Value> {
    let labels = json!({
        "app.kubernetes.io/name": "postgresql",
        "app.kubernetes.io/instance": r,
        "app.kubernetes.io/component": "primary",
        "app.kubernetes.io/managed-by": "kubectl-pg",
        "app.kubernetes.io/version": "17.2",
    });
    let selector = json!({"app.kubernetes.io/name": "postgresql", "app.kubernetes.io/instance": r});
    let env_from_secret = |name: &str, key: &str| json!({"name": name, "valueFrom": {"secretKeyRef": {"name": format!("{r}-credentials"), "key": key}}});
    vec![
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": format!("{r}-credentials"), "namespace": ns, "labels": labels},
               "type": "kubernetes.io/basic-auth",
               "stringData": {"username": "app", "password": "app-password-0123456789", "database": "appdb"}}),
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": r, "namespace": ns, "labels": labels},
               "spec": {"selector": selector, "ports": [{"name": "postgresql", "port": 5432, "targetPort": "postgresql"}]}}),
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": format!("{r}-hl"), "namespace": ns, "labels": labels},
               "spec": {"clusterIP": "None", "publishNotReadyAddresses": true, "selector": selector,
                        "ports": [{"name": "postgresql", "port": 5432, "targetPort": "postgresql"}]}}),
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": r, "namespace": ns, "labels": labels},
        "spec": {
            "serviceName": format!("{r}-hl"),
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{
                    "name": "postgresql",
                    "image": image,
                    "ports": [{"name": "postgresql", "containerPort": 5432}],
                    "env": [
                        env_from_secret("POSTGRES_USER", "username"),
                        env_from_secret("POSTGRES_PASSWORD", "password"),
                        env_from_secret("POSTGRES_DB", "database"),
                        {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
                    ],
                    "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
                    "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}],
                }]},
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data", "labels": selector},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
            }],
        }}),
    ]
}

fn apply_all(cluster: &TestCluster, objects: &[Value]) {
    for o in objects {
        cluster.apply_json(o);
    }
}

fn pod_path(ns: &str, pod: &str) -> String {
    format!("/api/v1/namespaces/{ns}/pods/{pod}")
}

fn api_error(result: Result<impl std::fmt::Debug, kube::Error>) -> kube::core::Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn container_status(pod: &Value) -> &Value {
    &pod["status"]["containerStatuses"][0]
}

#[tokio::test]
async fn requests_need_the_token_and_get_the_real_401() {
    let cluster = TestCluster::start();
    let mut config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&cluster.kubeconfig).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    config.auth_info.token = Some("not-the-token".to_string().into());
    let client = kube::Client::try_from(config).unwrap();
    let request = hyper::Request::get("/api/v1/namespaces")
        .body(kube::client::Body::empty())
        .unwrap();
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), 401);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401})
    );
    // The right token works, through the kubeconfig's CA and TLS.
    let namespaces: Api<Namespace> = Api::all(cluster.client().await);
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.contains(&"default".to_string()), "{names:?}");
}

#[tokio::test]
async fn discovery_legacy_and_aggregated() {
    let cluster = TestCluster::start();
    let client = cluster.client().await;
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    let (sts, caps) = discovery
        .resolve_gvk(&kube::api::GroupVersionKind::gvk(
            "apps",
            "v1",
            "StatefulSet",
        ))
        .expect("statefulsets discovered");
    assert_eq!(sts.plural, "statefulsets");
    assert!(caps.supports_operation(kube::discovery::verbs::WATCH));
    let request = hyper::Request::get("/apis")
        .header(
            "Accept",
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
        )
        .body(kube::client::Body::empty())
        .unwrap();
    let response = client.send(request).await.unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    );
    let version = client.apiserver_version().await.unwrap();
    assert!(version.git_version.starts_with("v1.33."), "{version:?}");
}

#[tokio::test]
async fn status_codes_and_messages_match_kube_apiserver() {
    let cluster = TestCluster::start();
    cluster.ensure_namespace("codes");
    let client = cluster.client().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "codes");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "s", "labels": {"a": "1"}},
        "stringData": {"k": "v"},
    }))
    .unwrap();
    let created = secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    assert_eq!(created.type_.as_deref(), Some("Opaque"));
    assert!(
        created.data.as_ref().unwrap().contains_key("k"),
        "stringData becomes data"
    );

    let status = api_error(secrets.create(&PostParams::default(), &secret).await);
    assert_eq!(
        (status.code, status.reason.as_str()),
        (409, "AlreadyExists")
    );
    assert_eq!(status.message, "secrets \"s\" already exists");

    let status = api_error(secrets.get("nope").await);
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    assert_eq!(status.message, "secrets \"nope\" not found");
    let details = status.details.unwrap();
    assert_eq!(
        (details.name.as_str(), details.kind.as_str()),
        ("nope", "secrets")
    );

    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "codes");
    let status = api_error(sets.get("pg").await);
    assert_eq!(status.message, "statefulsets.apps \"pg\" not found");

    let mut bad = secret.clone();
    bad.metadata.name = Some("Bad_Name".into());
    let status = api_error(secrets.create(&PostParams::default(), &bad).await);
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert!(
        status.message.starts_with("Secret \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"),
        "{}",
        status.message
    );
    let causes = status.details.unwrap().causes;
    assert_eq!(causes[0].field, "metadata.name");

    let elsewhere: Api<Secret> = Api::namespaced(client.clone(), "missing");
    let status = api_error(elsewhere.create(&PostParams::default(), &secret).await);
    assert_eq!(
        (status.code, status.message.as_str()),
        (404, "namespaces \"missing\" not found")
    );

    // Optimistic concurrency: a stale resourceVersion conflicts.
    let mut stale = created.clone();
    stale.metadata.resource_version = Some("1".into());
    let status = api_error(secrets.replace("s", &PostParams::default(), &stale).await);
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));

    // Dry run validates but stores nothing.
    let mut dry = secret.clone();
    dry.metadata.name = Some("dry".into());
    let dry_params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    secrets.create(&dry_params, &dry).await.unwrap();
    assert!(secrets.get_opt("dry").await.unwrap().is_none());

    // generateName.
    let mut generated = secret.clone();
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let made = secrets
        .create(&PostParams::default(), &generated)
        .await
        .unwrap();
    assert!(made.metadata.name.unwrap().starts_with("gen-"));

    // Delete answers a Status for secrets, and the object is gone.
    let deleted = secrets.delete("s", &DeleteParams::default()).await.unwrap();
    assert!(deleted.is_right(), "secrets answer a Status");
    assert!(secrets.get_opt("s").await.unwrap().is_none());
}

#[tokio::test]
async fn selectors_filter_lists() {
    let cluster = TestCluster::start();
    cluster.ensure_namespace("sel");
    let maps: Api<ConfigMap> = Api::namespaced(cluster.client().await, "sel");
    for (name, labels) in [
        ("a", json!({"app": "pg", "tier": "db"})),
        ("b", json!({"app": "web"})),
        ("c", json!({"tier": "cache"})),
    ] {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
        maps.create(&PostParams::default(), &cm).await.unwrap();
    }
    let names = |selector: &str, field: &str| {
        let maps = maps.clone();
        let mut lp = ListParams::default();
        if !selector.is_empty() {
            lp = lp.labels(selector);
        }
        if !field.is_empty() {
            lp = lp.fields(field);
        }
        async move {
            let list = maps.list(&lp).await.unwrap();
            assert!(list.metadata.resource_version.is_some());
            list.items
                .into_iter()
                .filter_map(|m| m.metadata.name)
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    assert_eq!(names("app=pg", "").await, "a");
    assert_eq!(names("app==web", "").await, "b");
    assert_eq!(names("app!=pg", "").await, "b,c");
    assert_eq!(names("app in (pg,web)", "").await, "a,b");
    assert_eq!(names("app notin (pg)", "").await, "b,c");
    assert_eq!(names("tier", "").await, "a,c");
    assert_eq!(names("!app", "").await, "c");
    assert_eq!(names("", "metadata.name=b").await, "b");
    assert_eq!(names("tier", "metadata.name!=a").await, "c");
    assert_eq!(names("", "metadata.namespace=other").await, "");
}

#[tokio::test]
async fn server_side_apply_merges_owns_and_conflicts() {
    let cluster = TestCluster::start();
    cluster.ensure_namespace("ssa");
    let sets: Api<StatefulSet> = Api::namespaced(cluster.client().await, "ssa");
    // A busybox image: no PostgreSQL starts in this test.
    let mut sts = release("ssa", "r", "busybox:1.36")[3].clone();
    let pp = PatchParams::apply("kubectl-pg");
    let created = sets.patch("r", &pp, &Patch::Apply(&sts)).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    let managers: Vec<String> = created
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, vec!["kubectl-pg"]);

    // Another manager changing an owned field conflicts, unless forced.
    let other = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                       "metadata": {"name": "r"}, "spec": {"replicas": 2}});
    let status = api_error(
        sets.patch(
            "r",
            &PatchParams::apply("someone-else"),
            &Patch::Apply(&other),
        )
        .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        status.message,
        "Apply failed with 1 conflict: conflict with \"kubectl-pg\" using apps/v1: .spec.replicas"
    );
    let forced = sets
        .patch(
            "r",
            &PatchParams::apply("someone-else").force(),
            &Patch::Apply(&other),
        )
        .await
        .unwrap();
    assert_eq!(forced.spec.as_ref().unwrap().replicas, Some(2));
    assert_eq!(
        forced.metadata.generation,
        Some(2),
        "spec change bumps generation"
    );

    // Re-applying merges containers by name and keeps what others own.
    sts["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "EXTRA", "value": "1"}));
    sts["spec"].as_object_mut().unwrap().remove("replicas");
    let merged = sets.patch("r", &pp, &Patch::Apply(&sts)).await.unwrap();
    let spec = merged.spec.unwrap();
    assert_eq!(spec.replicas, Some(2), "owned by someone-else now");
    let env = spec.template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    assert!(env.iter().any(|e| e.name == "EXTRA"));

    // fieldManager is required for apply; merge patches need none.
    let request = hyper::Request::patch("/apis/apps/v1/namespaces/ssa/statefulsets/r")
        .header("Content-Type", "application/apply-patch+yaml")
        .body(serde_json::to_vec(&other).unwrap())
        .unwrap();
    let err = cluster.client().await.request_text(request).await;
    let status = api_error(err);
    assert_eq!(status.code, 422);
    assert!(
        status.message.contains("fieldManager: Required value"),
        "{}",
        status.message
    );
    let patched = sets
        .patch(
            "r",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"extra": "yes"}}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.metadata.labels.unwrap()["extra"], "yes");

    // Dry-run apply changes nothing.
    let dry = sets
        .patch(
            "r",
            &PatchParams::apply("someone-else").force().dry_run(),
            &Patch::Apply(json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                                  "metadata": {"name": "r"}, "spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(dry.spec.unwrap().replicas, Some(3));
    assert_eq!(sets.get("r").await.unwrap().spec.unwrap().replicas, Some(2));

    // Fields other than template/replicas/... may not change.
    let mut immutable = release("ssa", "r", "busybox:1.36")[3].clone();
    immutable["spec"]["serviceName"] = json!("other");
    let status = api_error(
        sets.patch("r", &pp.clone().force(), &Patch::Apply(&immutable))
            .await,
    );
    assert_eq!(status.code, 422);
    assert!(
        status
            .message
            .contains("spec: Forbidden: updates to statefulset spec"),
        "{}",
        status.message
    );
}

#[tokio::test]
async fn watch_resumes_from_resource_version_and_expires() {
    let cluster = TestCluster::start();
    cluster.ensure_namespace("w");
    let maps: Api<ConfigMap> = Api::namespaced(cluster.client().await, "w");
    let list = maps.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "one"}})).unwrap();
    maps.create(&PostParams::default(), &cm).await.unwrap();
    maps.delete("one", &DeleteParams::default()).await.unwrap();
    let mut stream = maps
        .watch(&WatchParams::default().timeout(10), &rv)
        .await
        .unwrap()
        .boxed();
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        match stream.try_next().await.unwrap().expect("events") {
            WatchEvent::Added(_) => kinds.push("ADDED"),
            WatchEvent::Deleted(_) => kinds.push("DELETED"),
            WatchEvent::Modified(_) => kinds.push("MODIFIED"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(kinds, ["ADDED", "DELETED"]);

    // A dropped watch ends the stream.
    cluster.faults.drop_watches();
    assert!(stream.try_next().await.unwrap().is_none());

    // History before a compaction is gone: 410 as an ERROR event.
    cluster.compact();
    let mut stream = maps
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test]
async fn rbac_denials_and_injected_errors() {
    let cluster = TestCluster::start();
    cluster.ensure_namespace("rbac");
    let client = cluster.client().await;
    cluster.faults.deny("create", "statefulsets");
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "rbac");
    let sts: StatefulSet =
        serde_json::from_value(release("rbac", "r", "busybox:1.36")[3].clone()).unwrap();
    let status = api_error(sets.create(&PostParams::default(), &sts).await);
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        status.message,
        "statefulsets.apps is forbidden: User \"e2e\" cannot create resource \"statefulsets\" in API group \"apps\" in the namespace \"rbac\""
    );
    let reviews: Api<k8s_openapi::api::authorization::v1::SelfSubjectAccessReview> =
        Api::all(client.clone());
    let ask = |verb: &str| {
        serde_json::from_value(json!({"spec": {"resourceAttributes": {
            "namespace": "rbac", "verb": verb, "group": "apps", "resource": "statefulsets"}}}))
        .unwrap()
    };
    let denied = reviews
        .create(&PostParams::default(), &ask("create"))
        .await
        .unwrap();
    assert!(!denied.status.unwrap().allowed);
    let allowed = reviews
        .create(&PostParams::default(), &ask("get"))
        .await
        .unwrap();
    assert!(allowed.status.unwrap().allowed);

    cluster.faults.fail("list", "pods");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "rbac");
    let status = api_error(pods.list(&ListParams::default()).await);
    assert_eq!(
        (status.code, status.reason.as_str()),
        (500, "InternalError")
    );
    cluster.faults.clear_rules();
    pods.list(&ListParams::default()).await.unwrap();
}

#[tokio::test]
async fn quota_admission_rejects_pods_and_claims() {
    let cluster = TestCluster::start();
    cluster.apply_json(&json!({"apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": {"name": "tight", "namespace": "q"},
        "spec": {"hard": {"pods": "0", "requests.storage": "500Mi"}}}));
    let client = cluster.client().await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "q");
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "data-r-0"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }))
    .unwrap();
    let status = api_error(claims.create(&PostParams::default(), &claim).await);
    assert_eq!(status.code, 403);
    assert_eq!(
        status.message,
        "persistentvolumeclaims \"data-r-0\" is forbidden: exceeded quota: tight, requested: requests.storage=1Gi, used: requests.storage=0, limited: requests.storage=500Mi"
    );
    // The StatefulSet controller reports the rejected pod as FailedCreate.
    cluster.apply_json(&json!({"apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": {"name": "tight", "namespace": "q"},
        "spec": {"hard": {"pods": "0"}}}));
    apply_all(&cluster, &release("q", "r", "busybox:1.36"));
    let failed = cluster.wait_event("q", "r", "FailedCreate", WAIT);
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("exceeded quota: tight, requested: pods=1, used: pods=0, limited: pods=0"),
        "{failed}"
    );
    let quotas: Api<k8s_openapi::api::core::v1::ResourceQuota> = Api::namespaced(client, "q");
    let listed = quotas.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
}

/// One PostgreSQL-backed release through its whole life: Ready with events and status, a real
/// connection over a port-forward with the Secret's credentials, logs, a killed server
/// restarted, a template change rolled, and the data kept across deleting the StatefulSet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_pod_runs_postgres_through_its_life() {
    let cluster = TestCluster::start();
    apply_all(&cluster, &release("life", "db", "postgres:17.2"));
    let pod = cluster.wait_ready("life", "db-0", WAIT);
    assert_eq!(
        pod["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"],
        "db-0"
    );
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "StatefulSet");
    let status = container_status(&pod);
    assert_eq!(status["ready"], true);
    assert!(status["state"]["running"]["startedAt"].is_string());
    assert!(status["imageID"]
        .as_str()
        .unwrap()
        .contains("postgres@sha256:"));
    let claim = cluster
        .get_json("/api/v1/namespaces/life/persistentvolumeclaims/data-db-0")
        .expect("claim from the template");
    assert_eq!(claim["status"]["phase"], "Bound");
    assert_eq!(claim["status"]["capacity"]["storage"], "1Gi");
    let reasons: Vec<String> = cluster
        .events_for("life", "db-0")
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .collect();
    for reason in ["Scheduled", "Pulled", "Created", "Started"] {
        assert!(reasons.iter().any(|r| r == reason), "{reasons:?}");
    }
    let sts = cluster.wait_for("/apis/apps/v1/namespaces/life/statefulsets/db", WAIT, |s| {
        s.is_some_and(|s| s["status"]["readyReplicas"] == 1)
    });
    let sts = sts.unwrap();
    assert_eq!(sts["status"]["observedGeneration"], 1);
    assert_eq!(
        sts["status"]["currentRevision"],
        sts["status"]["updateRevision"]
    );
    let svc = cluster
        .get_json("/api/v1/namespaces/life/services/db")
        .unwrap();
    assert!(svc["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .starts_with("10.96."));

    // A connection through the API server's port-forward, as the plugin makes it.
    let client = cluster.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "life");
    let query = |sql: &'static str| {
        let pods = pods.clone();
        async move {
            let mut forward = pods.portforward("db-0", &[5432]).await.unwrap();
            let stream = forward.take_stream(5432).unwrap();
            let mut config = tokio_postgres::Config::new();
            config
                .user("app")
                .password("app-password-0123456789")
                .dbname("appdb");
            let (pg, connection) = config
                .connect_raw(stream, tokio_postgres::NoTls)
                .await
                .expect("connects with the Secret's credentials");
            tokio::spawn(connection);
            let rows = pg
                .simple_query(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            rows.into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                    _ => None,
                })
                .collect::<Vec<_>>()
        }
    };
    query("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('survives')").await;
    assert_eq!(query("SELECT v FROM kept").await, ["survives"]);
    let logs = pods.logs("db-0", &LogParams::default()).await.unwrap();
    assert!(
        logs.contains("database system is ready to accept connections"),
        "{logs}"
    );
    assert!(logs.contains("PostgreSQL init process complete"), "{logs}");

    // A killed server: not Ready, restarted, Ready again with restartCount 1.
    cluster.faults.kill_postgres("life", "db-0");
    cluster.wait_for(&pod_path("life", "db-0"), WAIT, |p| {
        p.is_some_and(|p| container_status(p)["restartCount"] == 1 && pod_ready(p))
    });
    assert_eq!(query("SELECT v FROM kept").await, ["survives"]);

    // A template change rolls the pod (new controller-revision-hash).
    let old_hash = pod["metadata"]["labels"]["controller-revision-hash"].clone();
    let mut sts = release("life", "db", "postgres:17.2")[3].clone();
    sts["spec"]["template"]["spec"]["containers"][0]["resources"] =
        json!({"requests": {"cpu": "200m", "memory": "256Mi"}});
    cluster.apply_json(&sts);
    let rolled = cluster
        .wait_for(&pod_path("life", "db-0"), WAIT, |p| {
            p.is_some_and(|p| {
                p["metadata"]["labels"]["controller-revision-hash"] != old_hash && pod_ready(p)
            })
        })
        .unwrap();
    assert_ne!(rolled["metadata"]["uid"], pod["metadata"]["uid"]);

    // Deleting the StatefulSet removes its pod (and stops its server) but keeps the claim;
    // a new StatefulSet finds the data, and the password already in it.
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "life");
    sets.delete("db", &DeleteParams::default()).await.unwrap();
    cluster.wait_for(&pod_path("life", "db-0"), WAIT, |p| p.is_none());
    assert!(cluster.postgres_addr("life", "db-0").is_none());
    assert!(cluster
        .get_json("/api/v1/namespaces/life/persistentvolumeclaims/data-db-0")
        .is_some());
    let mut changed = release("life", "db", "postgres:17.2");
    changed[0]["stringData"]["password"] = json!("a-different-password-456");
    apply_all(&cluster, &changed);
    cluster.wait_ready("life", "db-0", WAIT);
    assert_eq!(query("SELECT v FROM kept").await, ["survives"]);
    let logs = pods.logs("db-0", &LogParams::default()).await.unwrap();
    assert!(logs.contains("Skipping initialization"), "{logs}");
}

#[test]
fn missing_storage_class_leaves_claim_pending_until_fixed() {
    let cluster = TestCluster::start();
    cluster.faults.set_no_storage_class(true);
    apply_all(&cluster, &release("nosc", "r", "busybox:1.36"));
    let event = cluster.wait_event("nosc", "data-r-0", "FailedBinding", WAIT);
    assert_eq!(
        event["message"],
        "no persistent volumes available for this claim and no storage class is set"
    );
    let pod = cluster
        .wait_for(&pod_path("nosc", "r-0"), WAIT, |p| {
            p.is_some_and(|p| p["status"]["conditions"][0]["reason"] == "Unschedulable")
        })
        .unwrap();
    assert_eq!(pod["status"]["phase"], "Pending");
    assert!(pod["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap()
        .contains("pod has unbound immediate PersistentVolumeClaims"));
    assert!(cluster
        .list_json("/apis/storage.k8s.io/v1/storageclasses")
        .is_empty());

    // A claim naming a missing class says so.
    cluster.faults.set_no_storage_class(false);
    cluster.apply_json(&json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "fast-claim", "namespace": "nosc"},
        "spec": {"storageClassName": "fast", "accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "1Gi"}}}}));
    let event = cluster.wait_event("nosc", "fast-claim", "ProvisioningFailed", WAIT);
    assert_eq!(
        event["message"],
        "storageclass.storage.k8s.io \"fast\" not found"
    );
    // The class-less claim stays Pending (a class is defaulted only at creation): remove the
    // release and its claim, and a new install binds with the default class back.
    cluster.delete("/apis/apps/v1/namespaces/nosc/statefulsets/r");
    cluster.wait_for(&pod_path("nosc", "r-0"), WAIT, |p| p.is_none());
    cluster.delete("/api/v1/namespaces/nosc/persistentvolumeclaims/data-r-0");
    cluster.wait_for(
        "/api/v1/namespaces/nosc/persistentvolumeclaims/data-r-0",
        WAIT,
        |c| c.is_none(),
    );
    apply_all(&cluster, &release("nosc", "r", "busybox:1.36"));
    cluster.wait_ready("nosc", "r-0", WAIT);
}

#[test]
fn unschedulable_image_pull_and_config_errors_look_like_kubelet() {
    let cluster = TestCluster::start();
    cluster.faults.set_unschedulable(Some(Insufficient::Cpu));
    apply_all(&cluster, &release("sched", "r", "busybox:1.36"));
    let event = cluster.wait_event("sched", "r-0", "FailedScheduling", WAIT);
    assert!(event["message"]
        .as_str()
        .unwrap()
        .starts_with("0/1 nodes are available: 1 Insufficient cpu."));
    assert_eq!(event["type"], "Warning");

    cluster.faults.set_image_pull_failure(true);
    cluster.faults.set_unschedulable(None);
    let pod = cluster
        .wait_for(&pod_path("sched", "r-0"), WAIT, |p| {
            p.is_some_and(|p| {
                container_status(p)["state"]["waiting"]["reason"] == "ImagePullBackOff"
            })
        })
        .unwrap();
    assert_eq!(pod["status"]["phase"], "Pending");
    let failed: Vec<String> = cluster
        .events_for("sched", "r-0")
        .iter()
        .filter(|e| e["reason"] == "Failed")
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect();
    assert!(
        failed
            .iter()
            .any(|m| m.starts_with("Failed to pull image \"busybox:1.36\"")),
        "{failed:?}"
    );
    assert!(
        failed.iter().any(|m| m == "Error: ErrImagePull"),
        "{failed:?}"
    );

    // A Secret that does not exist: CreateContainerConfigError until it does.
    cluster.faults.set_image_pull_failure(false);
    let mut objects = release("cfg", "r", "busybox:1.36");
    objects[3]["spec"]["template"]["spec"]["containers"][0]["env"][1]["valueFrom"]
        ["secretKeyRef"]["name"] = json!("absent");
    apply_all(&cluster, &objects);
    let pod = cluster
        .wait_for(&pod_path("cfg", "r-0"), WAIT, |p| {
            p.is_some_and(|p| {
                container_status(p)["state"]["waiting"]["reason"] == "CreateContainerConfigError"
            })
        })
        .unwrap();
    assert_eq!(
        container_status(&pod)["state"]["waiting"]["message"],
        "secret \"absent\" not found"
    );
}

#[test]
fn crash_loop_restarts_with_back_off_and_logs() {
    let cluster = TestCluster::start();
    cluster.faults.set_crash_loop(true);
    apply_all(&cluster, &release("crash", "r", "postgres:17.2"));
    let pod = cluster
        .wait_for(&pod_path("crash", "r-0"), WAIT, |p| {
            p.is_some_and(|p| {
                let s = container_status(p);
                s["state"]["waiting"]["reason"] == "CrashLoopBackOff"
                    && s["restartCount"].as_u64() >= Some(2)
            })
        })
        .unwrap();
    assert_eq!(
        container_status(&pod)["lastState"]["terminated"]["exitCode"],
        1
    );
    assert!(!pod_ready(&pod));
    cluster.wait_event("crash", "r-0", "BackOff", WAIT);
}

// ---- the real kubectl ----------------------------------------------------------------------

fn kubectl_available() -> bool {
    let found = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("note: kubectl is not on PATH; skipping the kubectl fidelity test");
    }
    found
}

fn kubectl(cluster: &TestCluster, args: &[&str]) -> Output {
    let mut command = Command::new("kubectl");
    command.args(args).stdin(Stdio::null());
    for (k, v) in cluster.kubeconfig_env() {
        command.env(k, v);
    }
    command.output().expect("kubectl runs")
}

#[track_caller]
fn kubectl_ok(cluster: &TestCluster, args: &[&str]) -> String {
    let out = kubectl(cluster, args);
    assert!(
        out.status.success(),
        "kubectl {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[track_caller]
fn kubectl_err(cluster: &TestCluster, args: &[&str]) -> String {
    let out = kubectl(cluster, args);
    assert!(
        !out.status.success(),
        "kubectl {} should fail",
        args.join(" ")
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn manifest_yaml(objects: &[Value]) -> String {
    objects
        .iter()
        .map(|o| serde_json::to_string(o).unwrap())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// Reads, errors and watches with kubectl: tables, JSON, describe, 401, 403, 404, 409, 422.
#[test]
fn kubectl_reads_errors_and_watches() {
    if !kubectl_available() {
        return;
    }
    let cluster = TestCluster::start();
    let out = kubectl_ok(&cluster, &["get", "ns"]);
    assert!(
        out.starts_with("NAME") && out.contains("default") && out.contains("Active"),
        "{out}"
    );

    apply_all(&cluster, &release("ro", "r", "busybox:1.36"));
    cluster.wait_ready("ro", "r-0", WAIT);
    let out = kubectl_ok(&cluster, &["get", "pods", "-n", "ro"]);
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
    assert!(
        out.contains("r-0") && out.contains("1/1") && out.contains("Running"),
        "{out}"
    );
    let json: Value = serde_json::from_str(&kubectl_ok(
        &cluster,
        &["get", "pods", "-n", "ro", "-o", "json"],
    ))
    .unwrap();
    assert_eq!(json["kind"], "List");
    assert_eq!(json["items"][0]["kind"], "Pod");
    assert_eq!(json["items"][0]["metadata"]["name"], "r-0");
    let out = kubectl_ok(&cluster, &["get", "sts", "-n", "ro"]);
    assert!(out.contains("r") && out.contains("1/1"), "{out}");
    let out = kubectl_ok(&cluster, &["get", "pvc,svc,secrets", "-n", "ro"]);
    assert!(
        out.contains("data-r-0")
            && out.contains("Bound")
            && out.contains("r-hl")
            && out.contains("kubernetes.io/basic-auth"),
        "{out}"
    );
    let out = kubectl_ok(&cluster, &["describe", "pod", "r-0", "-n", "ro"]);
    let out = out.split_whitespace().collect::<Vec<_>>().join(" ");
    for needle in [
        "Name: r-0",
        "Status: Running",
        "Controlled By: StatefulSet/r",
        "Successfully assigned ro/r-0 to e2e-node",
    ] {
        assert!(out.contains(needle), "{needle:?} in\n{out}");
    }
    kubectl_ok(&cluster, &["describe", "sts", "r", "-n", "ro"]);

    // 404, 409, 422 as kubectl prints them.
    let err = kubectl_err(&cluster, &["get", "sts", "nope", "-n", "ro"]);
    assert!(
        err.contains("Error from server (NotFound): statefulsets.apps \"nope\" not found"),
        "{err}"
    );
    // `kubectl create namespace` sends protobuf, which this server does not decode: create
    // from a file (JSON), as `kubectl create -f` and `apply` do.
    let ns_file = cluster.dir().join("ns.json");
    std::fs::write(
        &ns_file,
        r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"ro"}}"#,
    )
    .unwrap();
    let err = kubectl_err(&cluster, &["create", "-f", ns_file.to_str().unwrap()]);
    assert!(
        err.contains("Error from server (AlreadyExists): error when creating"),
        "{err}"
    );
    assert!(err.contains("namespaces \"ro\" already exists"), "{err}");
    std::fs::write(
        &ns_file,
        r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"Bad_Name"}}"#,
    )
    .unwrap();
    let err = kubectl_err(&cluster, &["create", "-f", ns_file.to_str().unwrap()]);
    assert!(
        err.contains(
            "The Namespace \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\""
        ),
        "{err}"
    );

    // 403 from an RBAC fault; 401 with a wrong token.
    cluster.faults.deny("list", "secrets");
    let err = kubectl_err(&cluster, &["get", "secrets", "-n", "ro"]);
    assert!(err.contains("Error from server (Forbidden): secrets is forbidden: User \"e2e\" cannot list resource \"secrets\" in API group \"\" in the namespace \"ro\""), "{err}");
    cluster.faults.clear_rules();
    let err = kubectl_err(&cluster, &["get", "ns", "--token", "wrong"]);
    assert!(err.contains("Unauthorized"), "{err}");

    // A watch: `kubectl get -w` prints the new object as it appears.
    let mut command = Command::new("kubectl");
    command
        .args([
            "get",
            "configmaps",
            "-n",
            "ro",
            "-w",
            "--output-watch-events",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in cluster.kubeconfig_env() {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    // Whether kubectl lists it or sees it arrive, the object shows up as ADDED.
    cluster.apply_json(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "watched", "namespace": "ro"}}));
    let child = std::sync::Arc::new(std::sync::Mutex::new(child));
    let guard = child.clone();
    // Safety net only: a broken server must fail the test, not hang it.
    std::thread::spawn(move || {
        std::thread::sleep(WAIT);
        let _ = guard.lock().unwrap().kill();
    });
    let seen = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("watched"))
        .expect("kubectl get -w shows the new ConfigMap");
    assert!(seen.starts_with("ADDED"), "{seen}");
    let mut child = child.lock().unwrap();
    let _ = child.kill();
    let _ = child.wait();

    let out = kubectl_ok(&cluster, &["delete", "sts", "r", "-n", "ro"]);
    assert!(out.contains("statefulset.apps \"r\" deleted"), "{out}");
    kubectl_ok(
        &cluster,
        &[
            "wait",
            "--for=delete",
            "pod/r-0",
            "-n",
            "ro",
            "--timeout=60s",
        ],
    );
    kubectl_ok(&cluster, &["get", "pvc", "data-r-0", "-n", "ro"]);
}

/// The install path with kubectl: server-side apply of the manifests, wait for Ready, exec
/// psql in the pod (needs the streams module), delete the namespace.
#[test]
fn kubectl_apply_wait_exec_delete() {
    if !kubectl_available() {
        return;
    }
    let cluster = TestCluster::start();
    let manifests = cluster.dir().join("release.yaml");
    let mut objects =
        vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})];
    objects.extend(release("shop", "pg", "postgres:17.2"));
    std::fs::write(&manifests, manifest_yaml(&objects)).unwrap();
    let out = kubectl_ok(
        &cluster,
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "kubectl-pg",
            "-f",
            manifests.to_str().unwrap(),
        ],
    );
    assert!(
        out.contains("statefulset.apps/pg serverside-applied"),
        "{out}"
    );
    kubectl_ok(
        &cluster,
        &[
            "wait",
            "--for=condition=Ready",
            "pod/pg-0",
            "-n",
            "shop",
            "--timeout=60s",
        ],
    );
    // Re-applying the same manifests is a no-op, not a conflict.
    kubectl_ok(
        &cluster,
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "kubectl-pg",
            "-f",
            manifests.to_str().unwrap(),
        ],
    );

    // exec (streams): psql inside the "container" reaches this pod's server.
    let out = kubectl_ok(
        &cluster,
        &[
            "exec", "-n", "shop", "pg-0", "--", "psql", "-U", "app", "-d", "appdb", "-tAc",
            "select 1",
        ],
    );
    assert_eq!(out.trim(), "1");
    let out = kubectl(
        &cluster,
        &["exec", "-n", "shop", "pg-0", "--", "sh", "-c", "exit 3"],
    );
    assert_eq!(out.status.code(), Some(3));
    let out = kubectl_ok(&cluster, &["logs", "-n", "shop", "pg-0", "--tail=50"]);
    assert!(
        out.contains("database system is ready to accept connections"),
        "{out}"
    );

    let out = kubectl_ok(&cluster, &["delete", "namespace", "shop", "--timeout=60s"]);
    assert!(out.contains("namespace \"shop\" deleted"), "{out}");
    assert!(cluster.postgres_addr("shop", "pg-0").is_none());
}
