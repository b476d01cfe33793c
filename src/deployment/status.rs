//! A release's status: what is observed, what the database and the volume say, and what it
//! all means (phase, problems), for `status`, `install`, `report` and the waits.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};

use crate::cluster::release::{self, LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY};
use crate::cluster::Cluster;
use crate::database::roles::{LABEL_READONLY, LABEL_USER};
use crate::deployment::assess::{self, Assessment};
use crate::deployment::probe::{self, DbCheck};
use crate::deployment::report::DeploymentStatus;
use crate::deployment::{observe, Phase};
use crate::error::Error;
use crate::migration::MigrationSet;

/// How long the database check may take before the view is shown without it.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Observes, probes the database when the pod is ready, and assesses one release.
pub async fn read(
    cluster: &Cluster,
    namespace: &str,
    release: &str,
    set: &MigrationSet,
) -> Result<(DeploymentStatus, Assessment), Error> {
    let (observed, users) = tokio::join!(
        observe::observe(cluster, namespace, release),
        summaries(cluster, namespace, release)
    );
    let (mut status, assessment) =
        assess_observed(cluster, observed?, set, probe::Depth::Full).await;
    // Like events, the users are an addition: one who may not list Secrets still gets a status.
    status.users = users.unwrap_or_default();
    Ok((status, assessment))
}

/// Probes the database when the pod is ready and assesses what was observed. For one release
/// (`Depth::Full`) it also reads the database sizes and the volume through exec; a listing
/// leaves both out, so it stays a constant number of requests and a light check per release.
pub async fn assess_observed(
    cluster: &Cluster,
    observed: observe::Observed,
    set: &MigrationSet,
    depth: probe::Depth,
) -> (DeploymentStatus, Assessment) {
    let (db, facts) = if observed.pod().is_some_and(release::is_ready) {
        tokio::join!(
            probe::check(cluster, &observed, PROBE_TIMEOUT, depth),
            async {
                match depth {
                    probe::Depth::Full => probe::volume_facts(cluster, &observed).await,
                    probe::Depth::Brief => probe::VolumeFacts::default(),
                }
            }
        )
    } else {
        (DbCheck::default(), probe::VolumeFacts::default())
    };
    assemble(&observed, &db, &facts, set)
}

/// The status of what was observed and found in the database and on the volume, without
/// another request.
pub fn assemble(
    observed: &observe::Observed,
    db: &DbCheck,
    facts: &probe::VolumeFacts,
    set: &MigrationSet,
) -> (DeploymentStatus, Assessment) {
    let mut assessment = assess::assess(
        observed,
        Timestamp::now(),
        observed.pod().map(|_| db.accessible),
    );
    if let (Some(error), Phase::Ready) = (&db.error, assessment.phase) {
        if let Some(p) = assessment
            .problems
            .iter_mut()
            .find(|p| p.reason == "DatabaseUnreachable")
        {
            p.message = format!("{}: {error}", p.message);
        }
    }
    if let Some(problem) = major_mismatch(observed, facts.data_major) {
        assessment.problems.push(problem);
    }
    let mut status = DeploymentStatus::build(observed, &assessment, db, Some(set));
    if let Some(pvc) = status.pvc.as_mut() {
        pvc.usage = facts.usage;
    }
    (status, assessment)
}

/// The image runs one major, the data directory holds another (a manual image edit, an
/// interrupted upgrade): the data directory's `PG_VERSION` when the pod runs, else the major
/// the claim records.
fn major_mismatch(
    observed: &observe::Observed,
    data_major: Option<u32>,
) -> Option<assess::Problem> {
    let image = observed.server_container()?.image.clone()?;
    let image_major = crate::manifests::spec::image_major(&image)?;
    let data_major =
        data_major.or_else(|| observed.pvc.as_ref().and_then(release::claim_data_major))?;
    if data_major == image_major {
        return None;
    }
    let verb = if image_major > data_major {
        "upgrade"
    } else {
        "go back"
    };
    Some(assess::Problem::mismatch(
        format!("data directory is PostgreSQL {data_major}, image is {image_major} ({image})"),
        Some(format!(
            "put the image back (kubectl pg install {r} -n {n} --upgrade --postgres-version {data_major}); to {verb} keeping the data: kubectl pg upgrade {r} -n {n} --postgres-version {image_major}",
            r = observed.release,
            n = observed.namespace
        )),
    ))
}

/// The labels that select a release's user Secrets.
pub fn user_selector(release: &str) -> String {
    format!("{LABEL_INSTANCE}={release},{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_USER}")
}

/// The application users of a release as its Secrets record them (name, readonly), for
/// `status`. Never a password.
pub async fn summaries(
    cluster: &Cluster,
    namespace: &str,
    release: &str,
) -> Result<Vec<crate::deployment::report::UserSummary>, Error> {
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), namespace);
    let list = secrets
        .list_metadata(&ListParams::default().labels(&user_selector(release)))
        .await
        .map_err(|e| cluster.error("list", "secrets", e))?;
    let mut users: Vec<_> = list
        .items
        .iter()
        .filter_map(|s| {
            let labels = s.metadata.labels.as_ref()?;
            Some(crate::deployment::report::UserSummary {
                name: labels.get(LABEL_USER)?.clone(),
                readonly: labels.get(LABEL_READONLY).is_some_and(|v| v == "true"),
                secret: s.metadata.name.clone().unwrap_or_default(),
            })
        })
        .collect();
    users.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(users)
}
