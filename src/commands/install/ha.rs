//! `install --instances N` (N ≥ 2): a CloudNativePG Cluster from the same profiles and flags,
//! applied server-side, waited for on a watch, checked through a tunnel with the application
//! owner's credentials, and migrated on its primary.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::Api;
use serde_json::Value;

use crate::cli::{InstallArgs, OutputFormat};
use crate::cluster::Cluster;
use crate::deployment::cnpg;
use crate::deployment::kind::Release;
use crate::deployment::to_cluster::moved as to_cluster_moved;
use crate::error::Error;
use crate::manifests::InstallSpec;
use crate::migration::MigrationSet;
use crate::output::emit;

/// How long a new Cluster may go without any status before the operator is said missing.
const OPERATOR_SILENCE: Duration = Duration::from_secs(60);

/// Whether these flags ask for a CloudNativePG Cluster, after checking the count (exit 1
/// before any request) and the flags it does not take yet.
pub fn wanted(args: &InstallArgs) -> Result<Option<u32>, Error> {
    let n = match args.instances {
        None | Some(1) => return Ok(None),
        Some(n) if (2..=cnpg::MAX_INSTANCES).contains(&n) => n,
        Some(n) => {
            return Err(Error::InvalidInput {
                message: format!(
                "--instances {n}: give 1 (a single instance) or 2 to {} (a CloudNativePG Cluster)",
                cnpg::MAX_INSTANCES
            ),
                hint: Some("for example: --instances 3 (a primary and two replicas)".into()),
            })
        }
    };
    let refuse = |flag: &str, why: &str| {
        Err(Error::InvalidInput {
            message: format!("--instances {n} does not take {flag} yet: {why}"),
            hint: Some("leave it out; the Cluster's Services are ClusterIP, reached with kubectl pg port-forward".into()),
        })
    };
    owner_name(args)?;
    if args.password_stdin {
        return refuse(
            "--password-stdin",
            "the operator makes the owner's password (or name yours with --existing-secret)",
        );
    }
    if args.network_policy == Some(true) || args.allow_from.as_ref().is_some_and(|a| !a.is_empty())
    {
        return refuse(
            "--network-policy",
            "the Cluster's NetworkPolicy is not built yet",
        );
    }
    if args
        .service_type
        .as_deref()
        .is_some_and(|t| t != "ClusterIP")
    {
        return refuse(
            "--service-type",
            "only the operator's ClusterIP Services for now",
        );
    }
    Ok(Some(n))
}

/// The database owner of a Cluster: `--username`, else `app` (CloudNativePG's convention).
/// `postgres` is the Cluster's superuser, which the operator keeps to itself.
pub fn owner(args: &InstallArgs, spec: &mut InstallSpec) -> Result<(), Error> {
    spec.username = owner_name(args)?;
    Ok(())
}

fn owner_name(args: &InstallArgs) -> Result<String, Error> {
    match args.username.as_deref() {
        Some("postgres") => Err(Error::InvalidInput {
            message: "--username postgres: in a CloudNativePG Cluster postgres is the superuser, which the operator keeps; the database needs an owner of its own".into(),
            hint: Some("leave --username out (the owner is then app), or name another".into()),
        }),
        Some(name) => Ok(name.to_string()),
        None => Ok("app".into()),
    }
}

fn image(args: &InstallArgs, spec: &InstallSpec) -> String {
    args.image
        .clone()
        .unwrap_or_else(|| cnpg::image_for(spec.major))
}

/// `--dry-run`: the Cluster as it would be applied.
pub fn dry_run(args: &InstallArgs, spec: &InstallSpec, instances: u32) -> Result<(), Error> {
    let object = cnpg::render_cluster(spec, instances, &image(args, spec));
    let text = match args.output {
        Some(OutputFormat::Json) => {
            serde_json::to_string_pretty(&object).map_err(|e| Error::invalid(e.to_string()))? + "\n"
        }
        _ => {
            "---\n".to_string()
                + &serde_saphyr::to_string(&object).map_err(|e| Error::invalid(e.to_string()))?
        }
    };
    emit(&text);
    Ok(())
}

pub async fn run(
    args: &InstallArgs,
    cluster: &Cluster,
    spec: &InstallSpec,
    instances: u32,
    migrations: Option<&MigrationSet>,
) -> Result<(), Error> {
    // A single instance of this name becomes a Cluster only by a move (--upgrade); once moved,
    // the Cluster is the release and a rerun is the Cluster's.
    let sets: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), &spec.namespace);
    let (sts, served) = tokio::join!(sets.get_metadata_opt(&spec.release), cnpg::served(cluster));
    if let Some(sts) = sts.map_err(|e| cluster.error("get", "statefulsets", e))? {
        if !to_cluster_moved(&sts.metadata) {
            if args.upgrade {
                return super::to_cluster::run(args, cluster, &spec.release, instances, migrations)
                    .await;
            }
            return Err(Error::InvalidInput {
                message: format!(
                    "release {} in namespace {} is a single instance (StatefulSet {0}): install without --upgrade does not change it into a Cluster",
                    spec.release, spec.namespace
                ),
                hint: Some(format!(
                    "move it, with every row: kubectl pg install {} -n {} --upgrade --instances {instances}",
                    spec.release, spec.namespace
                )),
            });
        }
        crate::note!(
            "release {} was moved to this Cluster; its single instance stays until: kubectl pg install {0} -n {} --finalize",
            spec.release,
            spec.namespace
        );
    }
    if !served? {
        return Err(cnpg::operator_missing(
            "the API does not serve postgresql.cnpg.io/v1 (its CRDs are not installed)",
        ));
    }
    let mut spec = spec.clone();
    let mut kept = None;
    let mut moved = None;
    if let Release::Cnpg(live) = Release::locate(cluster, &spec.release).await? {
        if !cnpg::made_by_us(&live) {
            return Err(Error::InvalidInput {
                message: format!(
                    "Cluster {} in namespace {} was not made by kubectl-pg: install will not change it",
                    spec.release, spec.namespace
                ),
                hint: Some(format!(
                    "its commands that only connect work on it: kubectl pg status {} -n {}",
                    spec.release, spec.namespace
                )),
            });
        }
        if let Some(record) = crate::deployment::cnpg_upgrade::Record::read(&live)? {
            return Err(Error::InvalidInput {
                message: format!(
                    "Cluster {} has an unfinished major upgrade to {} (step: {}): install will not change it",
                    spec.release,
                    record.to_image,
                    record.phase.name()
                ),
                hint: Some(format!(
                    "finish it first: kubectl pg upgrade {} -n {} (see its --help)",
                    spec.release, spec.namespace
                )),
            });
        }
        kept = cnpg::keep_live(&mut spec, &super::requested(args), &live)?;
        moved = Some(live.clone());
        // An uninstalled Cluster is hibernated with its volumes: the same data comes back.
        if cnpg::hibernating(&live) {
            cnpg::set_hibernation(cluster, &live, false).await?;
            crate::note!(
                "waking Cluster {}: it was uninstalled with its data kept (hibernated)",
                spec.release
            );
        }
    }
    // keep_live keeps the live image only when neither --image nor --postgres-version is given.
    let image = kept.unwrap_or_else(|| image(args, &spec));
    let mut object: Value = cnpg::render_cluster(&spec, instances, &image);
    if let Some(live) = &moved {
        cnpg::carry_moved(live, &mut object);
    }
    let started = std::time::Instant::now();
    cnpg::apply(cluster, &object).await?;
    crate::note!(
        "applied Cluster {} ({instances} instances, field manager {})",
        spec.release,
        crate::manifests::render::FIELD_MANAGER
    );
    cnpg::wait_healthy(
        cluster,
        &spec.namespace,
        &spec.release,
        args.timeout,
        OPERATOR_SILENCE,
    )
    .await?;
    crate::note!(
        "Cluster {} healthy after {:.1}s",
        spec.release,
        started.elapsed().as_secs_f32()
    );
    // The database answers the owner through a tunnel to the primary.
    let found = Release::locate(cluster, &spec.release).await?;
    let (target, connector) = found.writer(cluster, "SELECT 1").await?;
    if let Some(set) = migrations {
        let count = super::apply_migrations(&connector, set).await?;
        crate::note!("{count} migration(s) applied on the primary {}", target.pod);
    }
    let status = found
        .status(cluster, &MigrationSet::load(args.dir.as_deref())?)
        .await?;
    crate::commands::view::render_one(&status, args.output.unwrap_or(OutputFormat::Table))
}
