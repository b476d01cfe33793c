//! The release's NetworkPolicy on the cluster: read back for an upgrade, applied with the other
//! objects (checked by the same server-side dry run), removed when `--network-policy=false`.

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, Patch, PatchParams};
use serde_json::Value;

use crate::cluster::{release, Cluster};
use crate::error::Error;
use crate::manifests::policy::{read_peers, Live};
use crate::manifests::render::FIELD_MANAGER;
use crate::manifests::InstallSpec;

/// The live policy named after the release, and what it is to the release. A user who may not
/// read NetworkPolicies gets [`Live::Unknown`]: only a flag that touches the policy needs them,
/// and the preflight asks for those permissions then.
pub(super) struct Found {
    pub(super) live: Live,
    pub(super) object: Option<NetworkPolicy>,
}

pub(super) async fn read(cluster: &Cluster, namespace: &str, name: &str) -> Result<Found, Error> {
    let api: Api<NetworkPolicy> = Api::namespaced(cluster.client.clone(), namespace);
    let object = match api.get_opt(name).await {
        Ok(object) => object,
        Err(kube::Error::Api(s)) if s.code == 403 => {
            return Ok(Found {
                live: Live::Unknown,
                object: None,
            })
        }
        Err(e) => return Err(cluster.error("get", "networkpolicies", e)),
    };
    let live = match &object {
        None => Live::Absent,
        Some(p) if release::made_for(&p.metadata, name) => Live::Ours(read_peers(p, namespace)),
        Some(_) => Live::Foreign,
    };
    Ok(Found { live, object })
}

/// Server-side apply of the rendered policy (`dry_run`: checked only).
pub(super) async fn apply(
    cluster: &Cluster,
    spec: &InstallSpec,
    policy: &Value,
    dry_run: bool,
) -> Result<(), Error> {
    let api: Api<NetworkPolicy> = Api::namespaced(cluster.client.clone(), &spec.namespace);
    let mut params = PatchParams::apply(FIELD_MANAGER).force();
    params.dry_run = dry_run;
    api.patch(&spec.release, &params, &Patch::Apply(policy))
        .await
        .map(|_| ())
        .map_err(|e| crate::deployment::apply::apply_error(cluster, "networkpolicies", e))
}

/// Deletes the release's policy (`--network-policy=false`); one that is not the release's is
/// named and left alone.
pub(super) async fn remove(
    cluster: &Cluster,
    spec: &InstallSpec,
    found: Found,
) -> Result<(), Error> {
    let found = match found.live {
        // The preflight granted get since: read what is there.
        Live::Unknown => read(cluster, &spec.namespace, &spec.release).await?,
        _ => found,
    };
    let Some(object) = found.object else {
        return Ok(());
    };
    if found.live == Live::Foreign {
        crate::note!(
            "left NetworkPolicy {} alone: it was not created by kubectl-pg for release {}",
            spec.release,
            spec.release
        );
        return Ok(());
    }
    let api: Api<NetworkPolicy> = Api::namespaced(cluster.client.clone(), &spec.namespace);
    let params = release::delete_only(object.metadata.uid.clone());
    match api.delete(&spec.release, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(cluster.error("delete", "networkpolicies", e)),
    }
    crate::note!("deleted NetworkPolicy {}", spec.release);
    Ok(())
}

/// Refuses to apply over a policy of that name that is not the release's (exit 1), or one the
/// user could not read although the preflight granted `get` (exit 6).
pub(super) fn refuse_unusable(
    cluster: &Cluster,
    spec: &InstallSpec,
    found: &Found,
) -> Result<(), Error> {
    match (&found.live, &found.object) {
        (Live::Foreign, Some(object)) => {
            super::preflight::check_owned("NetworkPolicy", &object.metadata, spec)
        }
        (Live::Unknown, _) => Err(Error::Forbidden {
            verb: "get".into(),
            resource: "networkpolicies".into(),
            namespace: spec.namespace.clone(),
            user: cluster.user.clone(),
            context: cluster.context.clone(),
        }),
        _ => Ok(()),
    }
}
