//! Writing a release: what runs now (the live objects and the values they hold), the rendered
//! objects applied server-side (all of them as a dry run first, so a change the server refuses
//! changes nothing), and the check that its database answers. `install` and `upgrade` share it.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{json, Value};

use crate::cluster::release::{self, Credentials};
use crate::cluster::Cluster;
use crate::deployment::{observe, probe};
use crate::error::Error;
use crate::manifests::render::{self, FIELD_MANAGER};
use crate::manifests::{self, InstallSpec};

/// How long the health check's query may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(15);

/// A deployed release as it runs: its StatefulSet, its values, and whether its pod is Ready.
pub struct Live {
    pub sts: StatefulSet,
    pub spec: InstallSpec,
    pub pod: Option<Pod>,
}

/// The release as it runs, or `None` when it has no StatefulSet.
pub async fn read_live(cluster: &Cluster, release: &str) -> Result<Option<Live>, Error> {
    release::validate_release(release)?;
    let ns = &cluster.namespace;
    let sets: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), ns);
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    let pod_name = release::pod_name(release);
    let ours = release::secret_name(release);
    let (sts, svc, pod, secret) = tokio::join!(
        sets.get_opt(release),
        services.get_opt(release),
        pods.get_opt(&pod_name),
        secrets.get_opt(&ours),
    );
    let Some(sts) = sts.map_err(|e| cluster.error("get", "statefulsets", e))? else {
        return Ok(None);
    };
    let svc = svc.map_err(|e| cluster.error("get", "services", e))?;
    let pod = pod.map_err(|e| cluster.error("get", "pods", e))?;
    // The credentials as the pod reads them: a user's basic-auth Secret may lack username.
    let source = release::CredentialSource::of(release, Some(&sts));
    let credentials = source
        .secret_from(cluster, ns, release, secret)
        .await?
        .and_then(|s| source.resolve(&s).ok());
    let spec = manifests::live::read(&sts, svc.as_ref(), credentials.as_ref());
    Ok(Some(Live { sts, spec, pod }))
}

/// The release's Services and StatefulSet, with extra annotations on the StatefulSet (a major upgrade's rollback record):
/// annotations applied once and left out of a later apply are removed by server-side apply.
pub async fn apply_release(
    cluster: &Cluster,
    spec: &InstallSpec,
    claim_templates: Option<&Value>,
    annotations: &[(&str, String)],
) -> Result<(), Error> {
    apply_release_at(cluster, spec, claim_templates, annotations, None).await
}

/// [`apply_release`], only if the StatefulSet still has `resource_version` (409 Conflict
/// otherwise): the first write of a multi-step command, which a concurrent run must not pass.
pub async fn apply_release_at(
    cluster: &Cluster,
    spec: &InstallSpec,
    claim_templates: Option<&Value>,
    annotations: &[(&str, String)],
    resource_version: Option<&str>,
) -> Result<(), Error> {
    let (headless, service, sts) = rendered(spec, claim_templates, annotations, resource_version);
    apply_objects(cluster, spec, &headless, &service, &sts, true).await?;
    apply_objects(cluster, spec, &headless, &service, &sts, false).await
}

/// The release's Services and StatefulSet as rendered from `spec`: the live claim templates
/// (they cannot change), extra annotations, and a resource version to apply at.
pub fn rendered(
    spec: &InstallSpec,
    claim_templates: Option<&Value>,
    annotations: &[(&str, String)],
    resource_version: Option<&str>,
) -> (Value, Value, Value) {
    let headless = render::headless_service(spec);
    let service = render::service(spec);
    let mut sts = render::statefulset(spec);
    if let Some(templates) = claim_templates {
        sts["spec"]["volumeClaimTemplates"] = templates.clone();
    }
    for (key, value) in annotations {
        sts["metadata"]["annotations"][*key] = json!(value);
    }
    if let Some(version) = resource_version {
        sts["metadata"]["resourceVersion"] = json!(version);
    }
    (headless, service, sts)
}

/// Server-side apply of the three objects at once (`dry_run`: checked only).
pub async fn apply_objects(
    cluster: &Cluster,
    spec: &InstallSpec,
    headless: &Value,
    service: &Value,
    sts: &Value,
    dry_run: bool,
) -> Result<(), Error> {
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), &spec.namespace);
    let sets: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), &spec.namespace);
    let mut params = PatchParams::apply(FIELD_MANAGER).force();
    params.dry_run = dry_run;
    let name = |v: &Value| {
        v["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let (headless_name, service_name) = (name(headless), name(service));
    let (headless, service, sts) = (
        Patch::Apply(headless),
        Patch::Apply(service),
        Patch::Apply(sts),
    );
    let (a, b, c) = tokio::join!(
        services.patch(&headless_name, &params, &headless),
        services.patch(&service_name, &params, &service),
        sets.patch(&spec.release, &params, &sts),
    );
    a.map_err(|e| apply_error(cluster, "services", e))?;
    b.map_err(|e| apply_error(cluster, "services", e))?;
    c.map_err(|e| apply_error(cluster, "statefulsets", e))?;
    Ok(())
}

/// A refused apply as the user can act on it.
pub fn apply_error(cluster: &Cluster, resource: &str, e: kube::Error) -> Error {
    match &e {
        kube::Error::Api(s) if s.code == 422 && s.message.contains("Forbidden: updates to statefulset spec") => {
            Error::InvalidInput {
                message: "the server refused the change to the StatefulSet: only its pod template, replicas, update strategy and retention policy can change (its volumeClaimTemplates, selector and serviceName are fixed at creation); nothing was changed".into(),
                hint: Some("to change the data volume, grow the claim (kubectl patch pvc), or move the data with kubectl pg dump and restore".into()),
            }
        }
        kube::Error::Api(s) if s.code == 422 => Error::InvalidInput {
            message: format!("the server refused the change ({}); nothing was changed", s.message),
            hint: None,
        },
        kube::Error::Api(s) if s.code == 403 && s.message.contains("exceeded quota") => {
            Error::Deployment {
                message: format!("insufficient resources: {}", s.message),
                hints: vec![
                    "raise the namespace's ResourceQuota or lower the release's requests".into(),
                ],
                code: 6,
            }
        }
        _ => cluster.error("patch", resource, e),
    }
}

/// What the health check saw: the summary is made of it, without reading the release again.
pub struct Checked {
    pub observed: observe::Observed,
    pub check: probe::DbCheck,
}

/// A real query through a port-forward: exit 8 when no session opens, 5 when it cannot answer.
pub async fn health_check(
    cluster: &Cluster,
    spec: &InstallSpec,
    credentials: &Credentials,
) -> Result<Checked, Error> {
    let observed = observe::observe(cluster, &spec.namespace, &spec.release).await?;
    let mut observed = observed;
    if observed.secret.is_none() || spec.existing_secret.is_some() {
        // The probe reads credentials from the observed Secret; give it the ones in use.
        let object = render::secret(spec, &credentials.password);
        observed.secret = serde_json::from_value(object).ok();
    }
    let check = probe::check(cluster, &observed, HEALTH_TIMEOUT, probe::Depth::Full).await;
    match (check.accessible, check.error.clone()) {
        (true, _) => Ok(Checked { observed, check }),
        (false, Some(error))
            if error.contains("cannot connect") || error.contains("port-forward") =>
        {
            Err(Error::Connection {
                target: format!("release {} in namespace {}", spec.release, spec.namespace),
                reason: error,
            })
        }
        (false, error) => Err(Error::Deployment {
            message: format!(
                "health check failed: {}",
                error.unwrap_or_else(|| "no answer".into())
            ),
            hints: vec![format!(
                "kubectl logs {} -n {} -c postgres",
                release::pod_name(&spec.release),
                spec.namespace
            )],
            code: 5,
        }),
    }
}

/// The single instance's pod, Ready or not, as a target for tools run there over its socket
/// as the release's user (no password needed there).
pub fn socket_target(spec: &InstallSpec) -> release::Target {
    release::Target {
        release: spec.release.clone(),
        namespace: spec.namespace.clone(),
        pod: release::pod_name(&spec.release),
        port: release::DATABASE_PORT,
        credentials: release::Credentials {
            username: spec.username.clone(),
            password: String::new(),
            database: spec.database.clone(),
            host: None,
            port: None,
        },
    }
}

/// Where the release's database is, for a tunnel.
pub fn target(spec: &InstallSpec, credentials: &Credentials) -> release::Target {
    release::Target {
        release: spec.release.clone(),
        namespace: spec.namespace.clone(),
        pod: release::pod_name(&spec.release),
        port: release::DATABASE_PORT,
        credentials: credentials.clone(),
    }
}
