//! Preflight: what exists, the StorageClass, ResourceQuotas and RBAC, checked at once
//! before anything is created (exit 6 naming the missing piece).

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, ResourceQuota, Service};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams};

use crate::cluster::Cluster;
use crate::cluster::{rbac, release};
use crate::error::Error;
use crate::manifests::render::{self};
use crate::manifests::spec::quantity_value;
use crate::manifests::InstallSpec;

/// What already exists.
pub(super) struct Existing {
    pub(super) namespace: bool,
    pub(super) statefulset: bool,
    pub(super) pvc: bool,
    /// The PostgreSQL major the kept data volume holds, when recorded.
    pub(super) pvc_major: Option<u32>,
}

/// Checks, all at once, what exists, the StorageClass, quotas and permissions (those install
/// always needs, and `extra`); exit 6 with the missing piece named.
pub(super) async fn preflight(
    cluster: &Cluster,
    spec: &InstallSpec,
    extra: &[rbac::Permission],
) -> Result<Existing, Error> {
    let client = &cluster.client;
    let ns = &spec.namespace;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let classes: Api<StorageClass> = Api::all(client.clone());
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), ns);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let pvc_name = render::data_pvc_name(spec);
    let all = ListParams::default();
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let headless = format!("{}-hl", spec.release);
    let (namespace, class_list, quota_list, sts, pvc, access, (main, hl)) = tokio::join!(
        namespaces.get_opt(ns),
        classes.list(&all),
        quotas.list(&all),
        sets.get_opt(&spec.release),
        pvcs.get_opt(&pvc_name),
        permissions(cluster, ns, extra),
        async { tokio::join!(services.get_opt(&spec.release), services.get_opt(&headless)) },
    );
    let namespace = namespace.map_err(|e| cluster.error("get", "namespaces", e))?;
    let sts = sts.map_err(|e| cluster.error("get", "statefulsets", e))?;
    let main = main.map_err(|e| cluster.error("get", "services", e))?;
    let hl = hl.map_err(|e| cluster.error("get", "services", e))?;
    for (kind, meta) in [
        ("StatefulSet", sts.as_ref().map(|o| &o.metadata)),
        ("Service", main.as_ref().map(|o| &o.metadata)),
        ("Service", hl.as_ref().map(|o| &o.metadata)),
    ] {
        if let Some(meta) = meta {
            check_owned(kind, meta, spec)?;
        }
    }
    let pvc = pvc.map_err(|e| cluster.error("get", "persistentvolumeclaims", e))?;
    access?;
    let classes = class_list
        .map_err(|e| cluster.error("list", "storageclasses", e))?
        .items;
    let pvc_bound = pvc
        .as_ref()
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.phase.as_deref())
        == Some("Bound");
    // An existing bound PVC is reused: it needs no class.
    if !pvc_bound {
        check_storage_class(&classes, spec)?;
    }
    // A namespace that does not exist yet has no quota.
    if namespace.is_some() {
        let quotas = quota_list
            .map_err(|e| cluster.error("list", "resourcequotas", e))?
            .items;
        check_quotas(&quotas, spec, pvc.is_some())?;
    }
    let pvc_major = pvc.as_ref().and_then(data_major);
    Ok(Existing {
        namespace: namespace.is_some(),
        statefulset: sts.is_some(),
        pvc: pvc.is_some(),
        pvc_major,
    })
}

fn data_major(pvc: &PersistentVolumeClaim) -> Option<u32> {
    release::claim_data_major(pvc)
}

/// An object of the release's names that kubectl-pg did not make for this release is someone
/// else's: install must not take it over (server-side apply would, with `force`).
pub(super) fn check_owned(kind: &str, meta: &ObjectMeta, spec: &InstallSpec) -> Result<(), Error> {
    if release::made_for(meta, &spec.release) {
        return Ok(());
    }
    let name = meta.name.as_deref().unwrap_or_default();
    Err(Error::InvalidInput {
        message: format!(
            "{kind} {name:?} already exists in namespace {:?} and was not created by kubectl-pg for release {:?}: refusing to change it",
            spec.namespace, spec.release
        ),
        hint: Some(format!(
            "choose another release name (kubectl pg install NAME -n {}), or remove the {kind} yourself if it is no longer used",
            spec.namespace
        )),
    })
}

fn check_storage_class(classes: &[StorageClass], spec: &InstallSpec) -> Result<(), Error> {
    let names: Vec<&str> = classes
        .iter()
        .filter_map(|c| c.metadata.name.as_deref())
        .collect();
    let resources = |message: String, hint: String| Error::Deployment {
        message,
        hints: vec![hint],
        code: 6,
    };
    match &spec.storage_class {
        Some(class) if !names.contains(&class.as_str()) => Err(resources(
            format!("StorageClass {class:?} does not exist"),
            if names.is_empty() {
                "the cluster has no StorageClass: install a provisioner (kind and k3d ship one)"
                    .into()
            } else {
                format!("existing classes: {}", names.join(", "))
            },
        )),
        Some(_) => Ok(()),
        None => {
            let default = classes.iter().any(|c| {
                c.metadata.annotations.as_ref().is_some_and(|a| {
                    a.get("storageclass.kubernetes.io/is-default-class")
                        .map(String::as_str)
                        == Some("true")
                })
            });
            if default {
                Ok(())
            } else if names.is_empty() {
                Err(resources(
                    "insufficient storage: the cluster has no StorageClass to provision the data volume".into(),
                    "install a storage provisioner, or create the PersistentVolume by hand".into(),
                ))
            } else {
                Err(resources(
                    "insufficient storage: no default StorageClass, and --storage-class was not given".into(),
                    format!("pick one with --storage-class ({})", names.join(", ")),
                ))
            }
        }
    }
}

/// Fails when a ResourceQuota leaves no room for what the release requests.
fn check_quotas(
    quotas: &[ResourceQuota],
    spec: &InstallSpec,
    pvc_exists: bool,
) -> Result<(), Error> {
    let mut wanted: Vec<(&str, f64, String)> = Vec::new();
    let mut want = |key: &'static str, value: &Option<String>| {
        if let Some(v) = value
            .as_ref()
            .and_then(|v| quantity_value(v).map(|q| (q, v.clone())))
        {
            wanted.push((key, v.0, v.1));
        }
    };
    want("requests.cpu", &spec.cpu_request);
    want("requests.memory", &spec.memory_request);
    want("limits.cpu", &spec.cpu_limit);
    want("limits.memory", &spec.memory_limit);
    if !pvc_exists {
        want("requests.storage", &Some(spec.storage_size.clone()));
        wanted.push(("persistentvolumeclaims", 1.0, "1".into()));
    }
    wanted.push(("pods", 1.0, "1".into()));
    for quota in quotas {
        let name = quota.metadata.name.clone().unwrap_or_default();
        let status = quota.status.clone().unwrap_or_default();
        let hard = status
            .hard
            .or_else(|| quota.spec.as_ref().and_then(|s| s.hard.clone()))
            .unwrap_or_default();
        let used = status.used.unwrap_or_default();
        for (key, amount, text) in &wanted {
            let Some(limit) = hard.get(*key).and_then(|q| quantity_value(&q.0)) else {
                continue;
            };
            let in_use = used
                .get(*key)
                .and_then(|q| quantity_value(&q.0))
                .unwrap_or(0.0);
            if in_use + amount > limit + 1e-9 {
                return Err(Error::Deployment {
                    message: format!(
                        "insufficient resources: ResourceQuota {name:?} allows {key} {}, {} in use, the release needs {text}",
                        hard[*key].0,
                        used.get(*key).map_or("0".to_string(), |q| q.0.clone()),
                    ),
                    hints: vec!["raise the quota, or lower the release's requests (--cpu-request, --memory-request, --storage-size)".into()],
                    code: 6,
                });
            }
        }
    }
    Ok(())
}

/// SelfSubjectAccessReviews for everything install creates, all at once.
async fn permissions(
    cluster: &Cluster,
    namespace: &str,
    extra: &[rbac::Permission],
) -> Result<(), Error> {
    let mut checks = vec![
        ("apps", "statefulsets", "patch"),
        ("", "services", "patch"),
        ("", "secrets", "create"),
        ("", "pods", "list"),
        ("", "events", "watch"),
    ];
    checks.extend(rbac::PORT_FORWARD);
    checks.extend(rbac::EXEC);
    checks.extend(extra);
    rbac::require(cluster, namespace, &checks)
        .await
        .map_err(|e| match e {
            // Listing pods is how install follows what it creates: reported as the creation
            // it stands for (exit 6).
            Error::Forbidden {
                verb,
                resource,
                namespace,
                user,
                context,
            } if verb == "list" => Error::Forbidden {
                verb: "create".into(),
                resource,
                namespace,
                user,
                context,
            },
            other => other,
        })
}
