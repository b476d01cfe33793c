//! The data claim grows in place: a patch of its `spec.resources.requests.storage` (the
//! StatefulSet's `volumeClaimTemplates` are immutable and never touched), when its StorageClass
//! allows expansion; then the resize is followed until the claim's capacity reaches the request.

use std::time::Instant;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::access::Cluster;
use crate::error::Error;
use crate::manifests::spec::quantity_value;

/// A growth the claim can take: checked (class, size, dry run) before anything is written.
#[derive(Debug, Clone)]
pub struct Growth {
    pub namespace: String,
    pub claim: String,
    pub from: String,
    pub to: String,
    pub class: String,
}

/// The claim's requested size (`spec.resources.requests.storage`).
pub fn requested(pvc: &PersistentVolumeClaim) -> Option<String> {
    pvc.spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
        .map(|q| q.0.clone())
}

/// The claim's actual size (`status.capacity.storage`).
pub fn capacity(pvc: &PersistentVolumeClaim) -> Option<String> {
    pvc.status
        .as_ref()?
        .capacity
        .as_ref()?
        .get("storage")
        .map(|q| q.0.clone())
}

/// What growing `claim` to `size` takes: None when it already has that size; refused (exit 1)
/// when it would shrink, refused (exit 6) when its StorageClass does not allow expansion. The
/// patch is tried as a server-side dry run, so quota and admission speak before any write.
pub async fn plan(
    cluster: &Cluster,
    namespace: &str,
    claim: &str,
    size: &str,
) -> Result<Option<Growth>, Error> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), namespace);
    let pvc = pvcs
        .get_opt(claim)
        .await
        .map_err(|e| cluster.error("get", "persistentvolumeclaims", e))?
        .ok_or_else(|| Error::NotFound {
            message: format!("PVC {claim} not found in namespace {namespace:?}: nothing to grow"),
            hint: Some(
                "the claim is created with the release's pod: wait for it (kubectl pg status)"
                    .into(),
            ),
        })?;
    let from = requested(&pvc).unwrap_or_default();
    let (want, have) = (quantity_value(size), quantity_value(&from));
    if let (Some(want), Some(have)) = (want, have) {
        if want < have {
            return Err(Error::InvalidInput {
                message: format!(
                    "PVC {claim} requests {from}: a volume cannot shrink to {size}; nothing was changed"
                ),
                hint: Some(
                    "to use less space, move the data into a new release: kubectl pg dump | kubectl pg restore".into(),
                ),
            });
        }
        if want == have {
            return Ok(None);
        }
    }
    let class = pvc
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .filter(|c| !c.is_empty());
    let Some(class) = class else {
        return Err(not_expandable(claim, "has no StorageClass", None));
    };
    // A list, as preflight reads them: the documented ClusterRole grants list, not get.
    let classes: Api<StorageClass> = Api::all(cluster.client.clone());
    let sc = classes
        .list(&Default::default())
        .await
        .map_err(|e| cluster.error("list", "storageclasses", e))?
        .items
        .into_iter()
        .find(|c| c.metadata.name.as_deref() == Some(class.as_str()));
    match sc {
        None => {
            return Err(not_expandable(
                claim,
                &format!("uses StorageClass {class}, which does not exist"),
                Some(&class),
            ))
        }
        Some(sc) if sc.allow_volume_expansion != Some(true) => {
            return Err(not_expandable(
                claim,
                &format!("uses StorageClass {class}, which does not allow volume expansion (allowVolumeExpansion is not true)"),
                Some(&class),
            ))
        }
        Some(_) => {}
    }
    let growth = Growth {
        namespace: namespace.to_string(),
        claim: claim.to_string(),
        from,
        to: size.to_string(),
        class,
    };
    patch(cluster, &growth, true).await?;
    Ok(Some(growth))
}

fn not_expandable(claim: &str, why: &str, class: Option<&str>) -> Error {
    let mut hints = vec![
        "move the data into a release on an expandable class: kubectl pg dump | kubectl pg restore"
            .to_string(),
    ];
    if let Some(class) = class {
        hints.insert(
            0,
            format!("a cluster admin can allow it, if the driver supports it: kubectl patch storageclass {class} -p '{{\"allowVolumeExpansion\":true}}'"),
        );
    }
    Error::Deployment {
        message: format!("PVC {claim} cannot grow: it {why}; nothing was changed"),
        hints,
        code: 6,
    }
}

/// Writes the new request on the claim (or tries it, `dry_run`), and gives the claim's
/// resourceVersion after the write, from which [`wait_grown`] follows the resize.
pub async fn patch(cluster: &Cluster, growth: &Growth, dry_run: bool) -> Result<String, Error> {
    let pvcs: Api<PersistentVolumeClaim> =
        Api::namespaced(cluster.client.clone(), &growth.namespace);
    let body = json!({ "spec": { "resources": { "requests": { "storage": growth.to } } } });
    let params = PatchParams {
        dry_run,
        ..PatchParams::default()
    };
    match pvcs
        .patch(&growth.claim, &params, &Patch::Merge(&body))
        .await
    {
        Ok(pvc) => Ok(pvc.metadata.resource_version.unwrap_or_default()),
        Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains("exceeded quota") => {
            Err(Error::Deployment {
                message: format!("insufficient resources: {}", s.message),
                hints: vec!["raise the namespace's ResourceQuota for requests.storage".into()],
                code: 6,
            })
        }
        Err(kube::Error::Api(s)) if s.code == 422 => Err(Error::InvalidInput {
            message: format!(
                "the server refused to grow PVC {}: {}",
                growth.claim, s.message
            ),
            hint: None,
        }),
        Err(e) => Err(cluster.error("patch", "persistentvolumeclaims", e)),
    }
}

/// Follows the resize until `status.capacity` reaches the request, telling each condition
/// (`Resizing`, `FileSystemResizePending`) as it appears; exit 4 at `deadline`. It watches
/// from `since`, the claim's resourceVersion after the request was written, so every state
/// the resize went through is seen in order, however quick it was or late the wait began.
pub async fn wait_grown(
    cluster: &Cluster,
    growth: &Growth,
    since: &str,
    deadline: Instant,
) -> Result<String, Error> {
    use futures_util::TryStreamExt;
    use kube::api::{WatchEvent, WatchParams};
    let pvcs: Api<PersistentVolumeClaim> =
        Api::namespaced(cluster.client.clone(), &growth.namespace);
    let want = quantity_value(&growth.to).unwrap_or(f64::MAX);
    let mut told: Vec<String> = Vec::new();
    let mut now: Option<String> = None;
    let mut version = since.to_string();
    let params = WatchParams::default().fields(&format!("metadata.name={}", growth.claim));
    let failed = |e| cluster.error("watch", "persistentvolumeclaims", e);
    loop {
        // A watch whose start is too old to replay (410 Gone) starts again from a fresh read.
        let resumed = if version.is_empty() {
            let pvc = pvcs
                .get(&growth.claim)
                .await
                .map_err(|e| cluster.error("get", "persistentvolumeclaims", e))?;
            version = pvc.metadata.resource_version.clone().unwrap_or_default();
            Some(pvc)
        } else {
            None
        };
        let events = pvcs.watch(&params, &version).await.map_err(failed)?;
        let mut events = std::pin::pin!(events);
        let mut seen = resumed;
        loop {
            if let Some(pvc) = seen.take() {
                now = capacity(&pvc);
                if now
                    .as_deref()
                    .and_then(quantity_value)
                    .is_some_and(|have| have >= want)
                {
                    return Ok(now.unwrap_or_default());
                }
                tell_conditions(&pvc, &growth.claim, &mut told);
            }
            let next = match tokio::time::timeout_at(deadline.into(), events.try_next()).await {
                Ok(next) => next.map_err(failed)?,
                Err(_) => return Err(not_grown(growth, now, &told)),
            };
            match next {
                Some(WatchEvent::Added(pvc) | WatchEvent::Modified(pvc)) => {
                    version = pvc.metadata.resource_version.clone().unwrap_or_default();
                    seen = Some(pvc);
                }
                Some(WatchEvent::Deleted(_)) => {
                    return Err(Error::Deployment {
                        message: format!("PVC {} was deleted while it was growing", growth.claim),
                        hints: vec![],
                        code: 5,
                    })
                }
                Some(WatchEvent::Bookmark(b)) => version = b.metadata.resource_version,
                Some(WatchEvent::Error(status)) if status.code == 410 => {
                    version.clear();
                    break;
                }
                Some(WatchEvent::Error(status)) => {
                    return Err(failed(kube::Error::Api(status)));
                }
                // The server ended the watch (its timeout): go on from the last version seen.
                None => break,
            }
        }
    }
}

/// Prints each condition of the claim that is true and was not told yet.
fn tell_conditions(pvc: &PersistentVolumeClaim, claim: &str, told: &mut Vec<String>) {
    for c in pvc
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .filter(|c| c.status == "True")
    {
        if !told.contains(&c.type_) {
            told.push(c.type_.clone());
            let why = c
                .message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            crate::note!("PVC {claim}: {}{why}", c.type_);
        }
    }
}

fn not_grown(growth: &Growth, now: Option<String>, told: &[String]) -> Error {
    Error::Deployment {
        message: format!(
            "timed out waiting for PVC {} to grow to {} (capacity {}{})",
            growth.claim,
            growth.to,
            now.unwrap_or_else(|| "unknown".into()),
            told.last().map(|c| format!(", {c}")).unwrap_or_default()
        ),
        hints: vec![
            format!(
                "the request is recorded and the resize goes on: kubectl describe pvc {} -n {}",
                growth.claim, growth.namespace
            ),
            "a FileSystemResizePending claim finishes when its pod (re)starts".into(),
        ],
        code: 4,
    }
}
