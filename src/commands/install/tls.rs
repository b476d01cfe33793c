//! TLS for a release that serves it: Secret `R-tls` (made once, renewed with the same CA
//! before it expires or when the release has a new name), and pg_hba rules that let non-local
//! clients in only over TLS.

use k8s_openapi::api::core::v1::{Node, Secret, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

use crate::cluster::release;
use crate::cluster::Cluster;
use crate::error::Error;
use crate::manifests::certs::{self, TlsMaterial};
use crate::manifests::render;
use crate::manifests::InstallSpec;

/// What install will do with `R-tls`, decided before the first write.
pub(super) enum Plan {
    /// The live certificate is good.
    Keep(TlsMaterial),
    /// No Secret yet: create it.
    Create(TlsMaterial),
    /// Renew it (same CA when it could be read), with the live resourceVersion as precondition.
    Replace {
        tls: TlsMaterial,
        resource_version: Option<String>,
        reason: String,
    },
}

/// The addresses outside the cluster that clients may name: a LoadBalancer's ingress once
/// known, a NodePort release's node addresses. Best effort: what cannot be read is left out,
/// and a later `install --upgrade` adds it.
async fn outside_names(cluster: &Cluster, spec: &InstallSpec) -> Vec<String> {
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), &spec.namespace);
    let mut names = Vec::new();
    if spec.service_type == "LoadBalancer" {
        if let Ok(Some(service)) = services.get_opt(&spec.release).await {
            let ingress = service
                .status
                .and_then(|s| s.load_balancer)
                .and_then(|lb| lb.ingress)
                .unwrap_or_default();
            for i in ingress {
                names.extend(i.ip.into_iter().chain(i.hostname));
            }
        }
    }
    if spec.service_type == "NodePort" {
        let nodes: Api<Node> = Api::all(cluster.client.clone());
        if let Ok(list) = nodes.list(&ListParams::default()).await {
            for node in list.items {
                for a in node.status.and_then(|s| s.addresses).unwrap_or_default() {
                    if matches!(
                        a.type_.as_str(),
                        "ExternalIP" | "InternalIP" | "ExternalDNS"
                    ) {
                        names.push(a.address);
                    }
                }
            }
        }
    }
    names
}

/// Reads `R-tls` and decides: keep, create, or renew. A Secret of that name that kubectl-pg
/// did not make for this release is refused (exit 1) before anything is written.
pub(super) async fn plan(cluster: &Cluster, spec: &InstallSpec) -> Result<Plan, Error> {
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &spec.namespace);
    let name = certs::secret_name(&spec.release);
    let (existing, outside) = tokio::join!(secrets.get_opt(&name), outside_names(cluster, spec));
    let existing = existing.map_err(|e| cluster.error("get", "secrets", e))?;
    let wanted = certs::sans(
        &spec.release,
        &spec.namespace,
        &spec.cluster_domain,
        &outside,
    );
    let today = certs::today();
    let Some(existing) = existing else {
        let tls = certs::issue(&spec.release, &spec.namespace, &wanted, None, today)?;
        return Ok(Plan::Create(tls));
    };
    if !release::made_for(&existing.metadata, &spec.release) {
        return Err(Error::InvalidInput {
            message: format!(
                "Secret {name} exists in namespace {:?} and was not made by kubectl-pg for release {}: nothing was changed",
                spec.namespace, spec.release
            ),
            hint: Some(format!(
                "a release that serves TLS keeps its certificates in {name}: delete or rename that Secret"
            )),
        });
    }
    let values = release::secret_values(&existing);
    let live = certs::from_secret(&values, existing.metadata.annotations.as_ref());
    let resource_version = existing.metadata.resource_version.clone();
    match live {
        Some(live) => match certs::renewal_reason(&live, &wanted, today) {
            None => Ok(Plan::Keep(live)),
            Some(reason) => {
                // Keep the names it had (an address seen before), add the new ones.
                let mut names = wanted.clone();
                for s in &live.sans {
                    if !names.contains(s) {
                        names.push(s.clone());
                    }
                }
                let tls = certs::issue(
                    &spec.release,
                    &spec.namespace,
                    &names,
                    Some((&live.ca_crt, &live.ca_key)),
                    today,
                )?;
                Ok(Plan::Replace {
                    tls,
                    resource_version,
                    reason,
                })
            }
        },
        None => Ok(Plan::Replace {
            tls: certs::issue(&spec.release, &spec.namespace, &wanted, None, today)?,
            resource_version,
            reason: "it lacks a key or annotation kubectl-pg keeps there (a new CA is made)".into(),
        }),
    }
}

/// Carries out the plan; returns the material the server will use.
pub(super) async fn write(
    cluster: &Cluster,
    spec: &InstallSpec,
    plan: Plan,
) -> Result<TlsMaterial, Error> {
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &spec.namespace);
    let name = certs::secret_name(&spec.release);
    let object = |tls: &TlsMaterial| {
        certs::secret(render::labels(spec), &spec.release, &spec.namespace, tls)
    };
    match plan {
        Plan::Keep(tls) => Ok(tls),
        Plan::Create(tls) => {
            let secret: Secret =
                serde_json::from_value(object(&tls)).map_err(|e| Error::invalid(e.to_string()))?;
            secrets
                .create(&PostParams::default(), &secret)
                .await
                .map_err(|e| cluster.error("create", "secrets", e))?;
            crate::note!(
                "created Secret {name}: a CA and a server certificate for {} (valid until {})",
                tls.sans.join(", "),
                tls.not_after
            );
            Ok(tls)
        }
        Plan::Replace {
            tls,
            resource_version,
            reason,
        } => {
            let mut patch = object(&tls);
            patch["metadata"]["resourceVersion"] = serde_json::json!(resource_version);
            secrets
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| cluster.error("patch", "secrets", e))?;
            crate::note!(
                "renewed the server certificate in Secret {name} ({reason}); valid until {}",
                tls.not_after
            );
            Ok(tls)
        }
    }
}

/// Non-local TCP clients only over TLS: the image's `host all all all <method>` line becomes
/// `hostssl`, and the server reloads. Loopback (where a port-forward arrives, inside the API
/// server's TLS tunnel) and the socket keep their rules.
pub(super) async fn require_tls_off_loopback(
    cluster: &Cluster,
    spec: &InstallSpec,
) -> Result<(), Error> {
    super::credentials::rewrite_pg_hba(
        cluster,
        spec,
        super::credentials::HbaEdit {
            rule: r"^host([[:space:]]+all[[:space:]]+all[[:space:]]+(all|0\.0\.0\.0/0|::/0)[[:space:]])",
            replacement: r"hostssl\1",
            what: "require TLS for non-local connections",
            by_hand: "the `host all all all` line should say hostssl",
            done: "connections from outside the pod now need TLS (hostssl) and the password (scram-sha-256)",
        },
    )
    .await
}
