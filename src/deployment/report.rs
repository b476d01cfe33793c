//! The `DeploymentStatus` document (DESIGN.md field names), for tables and `-o json|yaml`.

use serde::Serialize;

use super::assess::{Assessment, Problem};
use super::observe::Observed;
use super::probe::{DatabaseSize, DbCheck, VolumeUsage};
use crate::cluster::release::{self, DATABASE_PORT};
use crate::database::connection::DatabaseConnection;
use crate::migration::status::MigrationStatus;
use crate::migration::MigrationSet;
use crate::output::API_VERSION;

#[derive(Debug, Clone, Serialize)]
pub struct PvcInfo {
    pub name: String,
    pub phase: String,
    /// The capacity, else the request while unbound.
    pub size: Option<String>,
    /// `spec.resources.requests.storage`: what was asked for (grown by install --upgrade).
    pub requested: Option<String>,
    /// `status.capacity.storage`: what the volume has.
    pub capacity: Option<String>,
    /// A resize in progress: `Resizing` or `FileSystemResizePending`.
    pub resizing: Option<String>,
    pub storage_class: Option<String>,
    /// The volume's usage from `df` in the pod, when it could be read.
    pub usage: Option<VolumeUsage>,
}

/// An application user of the release (`kubectl pg user create`), as its Secret records it:
/// never its password.
#[derive(Debug, Clone, Serialize)]
pub struct UserSummary {
    pub name: String,
    pub readonly: bool,
    pub secret: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeploymentStatus {
    #[serde(rename = "apiVersion")]
    pub api_version: &'static str,
    pub kind: &'static str,
    pub release: String,
    pub namespace: String,
    pub phase: String,
    pub pods_ready: usize,
    pub pods_total: usize,
    pub restarts: i32,
    pub pvc_bound: bool,
    pub pvc: Option<PvcInfo>,
    pub database_accessible: bool,
    pub round_trip_ms: Option<f64>,
    pub server_version: Option<String>,
    /// The applied versions, as the seed defines the field (`["001", …]`).
    pub migrations_applied: Vec<String>,
    pub migrations_applied_count: usize,
    pub latest_migration: Option<String>,
    pub migrations_pending: Option<usize>,
    /// `pg_database_size` of each database, largest first (when the database answered).
    pub database_sizes: Vec<DatabaseSize>,
    pub image: Option<String>,
    pub service_type: Option<String>,
    pub endpoint: Option<String>,
    /// The connection string, password masked.
    pub connection_string: Option<String>,
    pub last_updated: Option<String>,
    /// Whether the server serves TLS (Secret `R-tls`; non-local clients need it).
    pub tls: bool,
    /// The application users (`kubectl pg user`), from their Secrets; filled by `status`.
    pub users: Vec<UserSummary>,
    pub problems: Vec<Problem>,
    /// The instances and their roles: the one pod `R-0` of a StatefulSet release, each
    /// instance of a CloudNativePG Cluster with its replication state and lag.
    pub instances: Vec<crate::deployment::cnpg::Instance>,
    /// The instance that takes writes.
    pub primary: Option<String>,
}

/// `kind: DeploymentStatusList`, for several releases.
#[derive(Debug, Clone, Serialize)]
pub struct DeploymentStatusList {
    #[serde(rename = "apiVersion")]
    pub api_version: &'static str,
    pub kind: &'static str,
    pub items: Vec<DeploymentStatus>,
}

impl DeploymentStatusList {
    pub fn new(items: Vec<DeploymentStatus>) -> Self {
        Self {
            api_version: API_VERSION,
            kind: "DeploymentStatusList",
            items,
        }
    }
}

impl DeploymentStatus {
    pub fn build(
        observed: &Observed,
        assessment: &Assessment,
        db: &DbCheck,
        set: Option<&MigrationSet>,
    ) -> Self {
        let pods_ready = observed
            .pods
            .iter()
            .filter(|p| release::is_ready(p))
            .count();
        let restarts = release::restarts(&observed.pods);
        let pvc = observed.pvc.as_ref().map(|p| PvcInfo {
            name: p.metadata.name.clone().unwrap_or_default(),
            phase: p
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_else(|| "Pending".into()),
            size: p
                .status
                .as_ref()
                .and_then(|s| s.capacity.as_ref())
                .and_then(|c| c.get("storage"))
                .or_else(|| {
                    p.spec
                        .as_ref()
                        .and_then(|s| s.resources.as_ref())
                        .and_then(|r| r.requests.as_ref())
                        .and_then(|r| r.get("storage"))
                })
                .map(|q| q.0.clone()),
            requested: crate::cluster::volume::requested(p),
            capacity: crate::cluster::volume::capacity(p),
            resizing: p
                .status
                .iter()
                .flat_map(|s| s.conditions.iter().flatten())
                .find(|c| {
                    c.status == "True"
                        && (c.type_ == "Resizing" || c.type_ == "FileSystemResizePending")
                })
                .map(|c| c.type_.clone()),
            storage_class: p.spec.as_ref().and_then(|s| s.storage_class_name.clone()),
            usage: None,
        });
        let image = observed
            .statefulset
            .as_ref()
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone());
        let service_type = observed
            .service
            .as_ref()
            .and_then(|s| s.spec.as_ref())
            .map(|s| s.type_.clone().unwrap_or_else(|| "ClusterIP".into()));
        let host = release::service_host(
            &observed.release,
            &observed.namespace,
            &release::cluster_domain(observed.statefulset.as_ref()),
        );
        let credentials = observed.credentials().and_then(Result::ok);
        let tls = observed
            .statefulset
            .as_ref()
            .is_some_and(crate::manifests::live::serves_tls);
        let connection_string = credentials.map(|c| {
            DatabaseConnection::new(
                host.clone(),
                c.port.unwrap_or(DATABASE_PORT),
                c.database,
                c.username,
                c.password,
            )
            .with_plain_or_tls(tls)
            .masked()
            .connection_string
        });
        let history = db.history.as_ref();
        let migration = match (history, set) {
            (Some(h), Some(set)) => Some(MigrationStatus::build(set, h, String::new())),
            _ => None,
        };
        Self {
            api_version: API_VERSION,
            kind: "DeploymentStatus",
            release: observed.release.clone(),
            namespace: observed.namespace.clone(),
            phase: assessment.phase.as_str().into(),
            pods_ready,
            pods_total: observed.pods.len(),
            restarts,
            pvc_bound: pvc.as_ref().is_some_and(|p| p.phase == "Bound"),
            pvc,
            database_accessible: db.accessible,
            round_trip_ms: db.round_trip_ms,
            server_version: db.server_version.clone(),
            migrations_applied: history.map_or_else(Vec::new, |h| {
                h.applied
                    .keys()
                    .map(|&v| set.map_or_else(|| format!("{v:03}"), |s| s.label(v)))
                    .collect()
            }),
            migrations_applied_count: history.map_or(0, |h| h.applied.len()),
            latest_migration: migration.as_ref().and_then(|m| m.latest_version.clone()),
            migrations_pending: migration.as_ref().map(|m| m.pending),
            database_sizes: db.database_sizes.clone(),
            image,
            service_type,
            endpoint: observed
                .service
                .as_ref()
                .map(|_| format!("{host}:{DATABASE_PORT}")),
            connection_string,
            last_updated: last_updated(observed),
            tls: observed
                .statefulset
                .as_ref()
                .and_then(|s| s.spec.as_ref()?.template.spec.as_ref()?.volumes.as_ref())
                .is_some_and(|v| {
                    v.iter()
                        .any(|v| v.name == crate::manifests::render::TLS_VOLUME)
                }),
            users: Vec::new(),
            problems: assessment.problems.clone(),
            instances: observed
                .pods
                .iter()
                .map(|p| crate::deployment::cnpg::Instance {
                    name: p.metadata.name.clone().unwrap_or_default(),
                    role: "primary".into(),
                    ready: release::is_ready(p),
                    replication: None,
                    lag_bytes: None,
                })
                .collect(),
            primary: observed.pods.first().and_then(|p| p.metadata.name.clone()),
        }
    }
}

/// The latest change we can see: a pod condition transition, else the objects' creation.
fn last_updated(observed: &Observed) -> Option<String> {
    let conditions = observed
        .pods
        .iter()
        .flat_map(|p| p.status.iter().flat_map(|s| s.conditions.iter().flatten()))
        .filter_map(|c| c.last_transition_time.as_ref().map(|t| t.0));
    let created = observed
        .statefulset
        .iter()
        .filter_map(|s| s.metadata.creation_timestamp.as_ref().map(|t| t.0));
    conditions.chain(created).max().map(|t| t.to_string())
}
