//! One run at a time on a release's multi-step operation, through a coordination.k8s.io Lease
//! as Kubernetes' own leader election holds one: renewed while the run lives, taken over only
//! once it has gone unrenewed for its whole duration, as this process observed it (no clock
//! is compared with another machine's).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::wait::await_condition;

use super::access::Cluster;
use crate::error::Error;

/// How long a holder that stopped renewing keeps the lease.
const DURATION: Duration = Duration::from_secs(15);
/// How often a holder renews.
const RENEW_EVERY: Duration = Duration::from_secs(5);

/// A lease this process holds, renewed in the background until [`Held::release`].
pub struct Held {
    api: Api<Lease>,
    name: String,
    renewer: tokio::task::JoinHandle<()>,
    uid: Option<String>,
}

/// Takes the lease `name` for `holder`'s `what`: at once when free, after the old holder's
/// silence when it was left by a run that died (`kill -9`), never from a run that renews it.
pub async fn acquire(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    what: &str,
) -> Result<Held, Error> {
    let api: Api<Lease> = Api::namespaced(cluster.client.clone(), namespace);
    let holder = format!(
        "kubectl-pg-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let busy = |other: &str| Error::InvalidInput {
        message: format!(
            "another {what} is running (Lease {name}, held by {other}): not starting a second one"
        ),
        hint: Some(format!(
            "wait for it, or see where it stands: kubectl pg status -n {namespace}"
        )),
    };
    let mut waited = false;
    loop {
        let current = api
            .get_opt(name)
            .await
            .map_err(|e| cluster.error("get", "leases", e))?;
        let Some(current) = current else {
            let lease = lease(name, &holder, None);
            match api.create(&PostParams::default(), &lease).await {
                Ok(created) => return Ok(start(api, name, created, holder)),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(cluster.error("create", "leases", e)),
            }
        };
        let other = current
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone())
            .unwrap_or_default();
        let version = current.metadata.resource_version.clone();
        if !other.is_empty() && !waited {
            // Left by a run that may be alive: it must stay silent for a whole duration.
            crate::note!(
                "waiting up to {}s for the Lease {name} of {other} to lapse",
                DURATION.as_secs()
            );
            // A watch sees the first renewal or the deletion; silence for the whole
            // duration means the holder is gone.
            let seen = version.clone();
            let changed =
                move |l: Option<&Lease>| l.is_none_or(|l| l.metadata.resource_version != seen);
            let wait = await_condition(api.clone(), name, changed);
            match tokio::time::timeout(DURATION + RENEW_EVERY, wait).await {
                Ok(Ok(Some(_))) => return Err(busy(&other)),
                // Deleted (released): free to take.
                Ok(Ok(None)) => continue,
                Ok(Err(e)) => {
                    return Err(Error::Api {
                        action: format!("watch Lease {name}"),
                        message: e.to_string(),
                    })
                }
                Err(_) => {}
            }
            waited = true;
            continue;
        }
        let lease = lease(name, &holder, version);
        match api.replace(name, &PostParams::default(), &lease).await {
            Ok(taken) => return Ok(start(api, name, taken, holder)),
            Err(kube::Error::Api(s)) if s.code == 409 => return Err(busy(&other)),
            Err(kube::Error::Api(s)) if s.code == 404 => continue,
            Err(e) => return Err(cluster.error("update", "leases", e)),
        }
    }
}

fn lease(name: &str, holder: &str, resource_version: Option<String>) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            resource_version,
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_string(),
                    "kubectl-pg".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.to_string()),
            lease_duration_seconds: Some(DURATION.as_secs() as i32),
            renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            ..Default::default()
        }),
    }
}

fn start(api: Api<Lease>, name: &str, taken: Lease, holder: String) -> Held {
    let uid = taken.metadata.uid.clone();
    let (renew_api, renew_name) = (api.clone(), name.to_string());
    let renewer = tokio::spawn(async move {
        let mut version = taken.metadata.resource_version.clone();
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            let lease = lease(&renew_name, &holder, version.clone());
            match renew_api
                .replace(&renew_name, &PostParams::default(), &lease)
                .await
            {
                Ok(renewed) => version = renewed.metadata.resource_version,
                // A lost connection is retried on the next beat; a lease taken by someone
                // else means this run was silent too long, which its steps' records survive.
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => return,
                Err(_) => {}
            }
        }
    });
    Held {
        api,
        name: name.to_string(),
        renewer,
        uid,
    }
}

impl Held {
    /// Stops renewing and deletes the lease (only this one: its UID is the precondition).
    pub async fn release(self) {
        self.renewer.abort();
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: self.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        let _ = self.api.delete(&self.name, &params).await;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}
