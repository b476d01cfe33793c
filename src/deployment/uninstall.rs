//! Uninstall: delete what install created and wait until it is gone; the data stays unless
//! asked. A StatefulSet release's objects are deleted one by one, only those kubectl-pg made; a
//! CloudNativePG Cluster is hibernated (its pods go, its volumes stay) or deleted whole.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams};
use kube::runtime::wait::{await_condition, conditions};

use crate::cluster::release;
use crate::cluster::Cluster;
use crate::deployment::cnpg::{self, CnpgCluster};
use crate::deployment::observe::{self, pvc_name};
use crate::error::Error;
use crate::output::emit;

/// Uninstalls StatefulSet release `release`; `confirm` is asked before data is deleted.
pub async fn statefulset(
    cluster: &Cluster,
    release: &str,
    delete_data: bool,
    timeout: Duration,
    confirm: impl FnOnce(&str) -> Result<(), Error>,
) -> Result<(), Error> {
    let release = release.to_string();
    let ns = cluster.namespace.clone();
    let observed = observe::observe(cluster, &ns, &release).await?;
    if !observed.exists() && observed.pvc.is_none() {
        emit(&format!(
            "release {release} not found in namespace {ns}: nothing to uninstall\n"
        ));
        return Ok(());
    }
    if delete_data && observed.pvc.is_some() {
        confirm(&format!(
            "delete PVC {} and every row of release {release}'s database?",
            pvc_name(&release)
        ))?;
    }
    let client = cluster.client.clone();
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    let ours = |meta: &ObjectMeta| release::made_for(meta, &release);
    let headless = format!("{release}-hl");
    let secret_name = release::secret_name(&release);
    let pvc = pvc_name(&release);
    let (set, main, hl, secret, policy) = tokio::join!(
        sets.get_opt(&release),
        services.get_opt(&release),
        services.get_opt(&headless),
        secrets.get_opt(&secret_name),
        policies.get_metadata_opt(&release),
    );
    let read = |r: Result<Option<ObjectMeta>, kube::Error>, resource: &str| {
        r.map_err(|e| cluster.error("get", resource, e))
    };
    let set = read(set.map(|o| o.map(|o| o.metadata)), "statefulsets")?;
    let main = read(main.map(|o| o.map(|o| o.metadata)), "services")?;
    let hl = read(hl.map(|o| o.map(|o| o.metadata)), "services")?;
    let secret = read(secret.map(|o| o.map(|o| o.metadata)), "secrets")?;
    // Only a release installed with --network-policy has one: a user who may not read them
    // still uninstalls the rest, told what may be left.
    let policy = match policy {
        Err(kube::Error::Api(s)) if s.code == 403 => {
            crate::note!(
                "note: not allowed to get networkpolicies in namespace {ns}: NetworkPolicy {release}, if the release has one, is left in place"
            );
            None
        }
        other => read(other.map(|o| o.map(|o| o.metadata)), "networkpolicies")?,
    };
    // Only what install made for this release: a Service or Secret of the same name that is
    // someone else's is named and left alone. The credentials stay with the claim (same data,
    // same password) and go with --delete-data; a user's --existing-secret is never ours.
    let mut targets = vec![
        ("statefulsets", "StatefulSet", set),
        ("services", "Service", main),
        ("services", "Service", hl),
        ("networkpolicies", "NetworkPolicy", policy),
    ];
    let keeps_secret = !delete_data && secret.as_ref().is_some_and(&ours);
    if delete_data {
        targets.push(("secrets", "Secret", secret));
    }
    for (resource, kind, meta) in targets {
        let Some(meta) = meta else { continue };
        let name = meta.name.clone().unwrap_or_default();
        if !ours(&meta) {
            emit(&format!(
                "left {kind} {name} alone: it was not created by kubectl-pg for release {release}\n"
            ));
            continue;
        }
        let params = release::delete_only(meta.uid.clone());
        let result = match resource {
            "statefulsets" => sets.delete(&name, &params).await.map(|_| ()),
            "services" => services.delete(&name, &params).await.map(|_| ()),
            "networkpolicies" => policies.delete(&name, &params).await.map(|_| ()),
            _ => secrets.delete(&name, &params).await.map(|_| ()),
        };
        deleted(cluster, result, resource)?;
    }
    if delete_data {
        // The application users' roles live in the data: their Secrets go with it.
        let params = kube::api::ListParams::default()
            .labels(&crate::deployment::status::user_selector(&release));
        let users = secrets
            .list_metadata(&params)
            .await
            .map_err(|e| cluster.error("list", "secrets", e))?;
        for meta in users.items.into_iter().map(|s| s.metadata) {
            let name = meta.name.clone().unwrap_or_default();
            let params = release::delete_only(meta.uid.clone());
            deleted(cluster, secrets.delete(&name, &params).await, "secrets")?;
        }
        // The certificates go with the data too (kept otherwise: a reinstall keeps the CA
        // that clients trust).
        let tls = crate::manifests::certs::secret_name(&release);
        let found = secrets
            .get_metadata_opt(&tls)
            .await
            .map_err(|e| cluster.error("get", "secrets", e))?;
        if let Some(meta) = found.map(|s| s.metadata).filter(&ours) {
            let params = release::delete_only(meta.uid.clone());
            deleted(cluster, secrets.delete(&tls, &params).await, "secrets")?;
        }
    }
    let params = DeleteParams::background();
    // The pod holds the volume: it must be gone before the PVC can go.
    let pod_name = release::pod_name(&release);
    let pod_uid = observed.pod().and_then(|p| p.metadata.uid.clone());
    let wait = async {
        if let Some(uid) = &pod_uid {
            let _ = await_condition(pods.clone(), &pod_name, conditions::is_deleted(uid)).await;
        }
        if delete_data {
            if let Some(uid) = observed.pvc.as_ref().and_then(|p| p.metadata.uid.clone()) {
                deleted(
                    cluster,
                    pvcs.delete(&pvc, &params).await,
                    "persistentvolumeclaims",
                )?;
                let _ = await_condition(pvcs.clone(), &pvc, conditions::is_deleted(&uid)).await;
            }
        }
        Ok::<(), Error>(())
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(Error::Deployment {
                message: format!(
                    "timed out after {}s waiting for release {release} to be deleted",
                    timeout.as_secs()
                ),
                hints: vec![format!(
                    "kubectl get pods,pvc -n {ns} -l {}",
                    release::selector(&release)
                )],
                code: 4,
            })
        }
    }
    emit(&format!(
        "release {release} uninstalled from namespace {ns}\n"
    ));
    if !delete_data && observed.pvc.is_some() {
        let with = if keeps_secret {
            format!(" and Secret {secret_name}")
        } else {
            String::new()
        };
        emit(&format!(
            "PVC {pvc}{with} kept with the data: `kubectl pg install {release} -n {ns}` reuses it (same data, same password); --delete-data removes it\n"
        ));
    }
    Ok(())
}

/// Uninstalls Cluster `c`, which kubectl-pg must have made: hibernated, its data kept (the
/// operator deletes a Cluster's volumes with it), or with `delete_data` deleted whole after
/// `confirm`.
pub async fn cloudnative_pg(
    cluster: &Cluster,
    c: &CnpgCluster,
    delete_data: bool,
    timeout: Duration,
    confirm: impl FnOnce(&str) -> Result<(), Error>,
) -> Result<(), Error> {
    let (name, ns) = (&c.name, &c.namespace);
    if !cnpg::made_by_us(c) {
        return Err(Error::InvalidInput {
            message: format!(
                "Cluster {name:?} in namespace {ns:?} was not made by kubectl-pg: uninstall will not change it"
            ),
            hint: Some(format!(
                "its owners can hibernate it (kubectl annotate cluster {name} -n {ns} cnpg.io/hibernation=on) or delete it"
            )),
        });
    }
    if delete_data {
        confirm(&format!(
            "delete Cluster {name} with its volumes and every row of its database?"
        ))?;
        cnpg::delete(cluster, c, timeout).await?;
        emit(&format!(
            "release {name} uninstalled from namespace {ns}: Cluster {name} deleted with its volumes, Services and Secrets\n"
        ));
        return Ok(());
    }
    if !cnpg::hibernating(c) {
        cnpg::set_hibernation(cluster, c, true).await?;
        crate::note!("annotated Cluster {name} {}=on", cnpg::HIBERNATION);
    }
    cnpg::wait_hibernated(cluster, c, timeout).await?;
    emit(&format!(
        "release {name} uninstalled from namespace {ns}: Cluster {name} hibernated, its pods deleted\n"
    ));
    emit(&format!(
        "its volumes and Secrets kept with the data: `kubectl pg install {name} -n {ns} --instances {}` wakes it (same data, same password); --delete-data removes them\n",
        c.wanted()
    ));
    Ok(())
}

/// A delete that succeeded, or found nothing to delete.
fn deleted<T>(
    cluster: &Cluster,
    result: Result<T, kube::Error>,
    resource: &str,
) -> Result<(), Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(cluster.error("delete", resource, e)),
    }
}
