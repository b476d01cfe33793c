//! `kubectl pg restart`: a rollout restart as `kubectl rollout restart` makes one (the pod
//! template's `kubectl.kubernetes.io/restartedAt` annotation), then install's watched wait for
//! the rollout and status's wait until the database answers.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::cli::{GlobalArgs, RestartArgs, WaitFor};
use crate::cluster::{release, Cluster};
use crate::deployment::rollout;
use crate::error::Error;
use crate::manifests::render::FIELD_MANAGER;
use crate::migration::MigrationSet;

/// The annotation `kubectl rollout restart` sets; any change of the template rolls the pod.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// SIGINT or SIGTERM ends the command at once (130/143): the one change it makes, the
/// annotation, is a single write, and the rollout it starts goes on in the cluster, so a
/// rerun or `status --wait` sees it through.
pub async fn run(args: RestartArgs, global: &GlobalArgs) -> Result<(), Error> {
    let signals = super::Signals::install()?;
    let annotated = std::cell::Cell::new(None);
    let done = signals.race(restart(args, global, &annotated)).await;
    if let Err(Error::Exit(_)) = &done {
        match annotated.take() {
            Some((release, ns, confirmed)) => crate::note!(
                "interrupted: release {release} {} in the cluster all the same; kubectl pg status {release} -n {ns} --wait shows when it is healthy",
                if confirmed { "is restarting" } else { "may be restarting (the annotation was on its way)" }
            ),
            None => crate::note!("interrupted: nothing was changed"),
        }
    }
    done
}

/// The restart; `annotated` names the release (namespace, whether the API confirmed it) from
/// the moment its pod template's annotation is sent.
async fn restart(
    args: RestartArgs,
    global: &GlobalArgs,
    annotated: &std::cell::Cell<Option<(String, String, bool)>>,
) -> Result<(), Error> {
    let cluster = Cluster::connect(&global.connect_options()).await?;
    let release = release::resolve(&cluster, args.release.as_deref()).await?;
    let set = MigrationSet::load(None)?;
    let ns = cluster.namespace.clone();
    let started = tokio::time::Instant::now();
    let sets: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns);
    let pod_name = release::pod_name(&release);
    let (sts, pod) = tokio::join!(sets.get_opt(&release), pods.get_opt(&pod_name));
    let sts = sts.map_err(|e| cluster.error("get", "statefulsets", e))?;
    let pod = pod.map_err(|e| cluster.error("get", "pods", e))?;
    let Some(sts) = sts else {
        return Err(Error::NotFound {
            message: format!(
                "release {release:?} not found in namespace {ns:?} (context {:?})",
                cluster.context
            ),
            hint: Some(format!(
                "install it with: kubectl pg install {release} -n {ns}"
            )),
        });
    };
    if !release::made_for(&sts.metadata, &release) {
        return Err(Error::InvalidInput {
            message: format!(
                "StatefulSet {release:?} in namespace {ns:?} was not made by kubectl-pg: not restarting it"
            ),
            hint: Some(format!("kubectl rollout restart statefulset/{release} -n {ns}")),
        });
    }
    let now = Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .unwrap_or_else(|_| Timestamp::now());
    let patch = json!({
        "spec": { "template": { "metadata": { "annotations": { RESTARTED_AT: now.to_string() } } } }
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    annotated.set(Some((release.clone(), ns.clone(), false)));
    let patched = sets
        .patch(&release, &params, &Patch::Merge(&patch))
        .await
        .map_err(|e| cluster.error("patch", "statefulsets", e))?;
    annotated.set(Some((release.clone(), ns.clone(), true)));
    crate::note!("restarting release {release}: annotated its pod template {RESTARTED_AT}={now}");
    // A StatefulSet never replaces a pod that is not Ready (OrderedReady): a restart of a
    // stuck release deletes that pod itself, only that one (its UID).
    if let Some(pod) = pod.filter(|p| !release::is_ready(p)) {
        rollout::template_observed(
            &cluster,
            &ns,
            &release,
            patched.metadata.generation,
            args.timeout,
        )
        .await;
        match pods.delete(&pod_name, &release::delete_only(pod.metadata.uid.clone())).await {
            Ok(_) => crate::note!(
                "deleted pod {pod_name}, which was not Ready: a StatefulSet never replaces such a pod itself"
            ),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(cluster.error("delete", "pods", e)),
        }
    }
    rollout::wait_ready(&cluster, &ns, &release, args.timeout, true).await?;
    crate::note!(
        "pod {pod_name} replaced and ready after {:.1}s",
        started.elapsed().as_secs_f32()
    );
    let left = args.timeout.saturating_sub(started.elapsed());
    super::view::wait(
        &cluster,
        &ns,
        &release,
        &set,
        WaitFor::Healthy,
        left,
        args.output,
    )
    .await
}
