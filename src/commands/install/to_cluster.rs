//! `install R --upgrade --instances N` on a single instance: its move, with every row, to a
//! CloudNativePG Cluster (`deployment::to_cluster`); `--finalize` and `--rollback` after it.
//! One run at a time (the release's upgrade lease), every permission checked before the first
//! write, and a signal at any step answered by undoing what was done, or by leaving the step
//! recorded for a rerun.

use std::future::Future;
use std::pin::Pin;

use serde::Serialize;

use crate::cli::{GlobalArgs, InstallArgs};
use crate::cluster::rbac;
use crate::cluster::release;
use crate::cluster::{lease, Cluster};
use crate::database::connection::DatabaseConnection;
use crate::deployment::apply::{self, Live};
use crate::deployment::cnpg::{self, Which};
use crate::deployment::to_cluster::{self, Phase, Record};
use crate::error::Error;
use crate::migration::MigrationSet;
use crate::output::{self, API_VERSION};

/// `kind: MoveResult`.
#[derive(Debug, Clone, Serialize)]
pub struct MoveResult {
    #[serde(rename = "apiVersion")]
    pub api_version: &'static str,
    pub kind: &'static str,
    pub release: String,
    pub namespace: String,
    /// `Moved`, `RolledBack` or `Finalized`.
    pub result: &'static str,
    pub instances: u32,
    pub primary: Option<String>,
    pub backup_file: Option<String>,
    pub backup_bytes: Option<u64>,
    /// From the moment writes were blocked until the release's Service reached the Cluster.
    pub downtime_ms: Option<u64>,
    pub tables_verified: Option<usize>,
    /// The new connection string, password masked (`kubectl pg dsn` prints it whole).
    pub dsn: Option<String>,
}

/// The move of single instance `name` to a Cluster of `instances`.
pub async fn run(
    args: &InstallArgs,
    cluster: &Cluster,
    name: &str,
    instances: u32,
    migrations: Option<&MigrationSet>,
) -> Result<(), Error> {
    let signal = crate::commands::interrupted();
    tokio::pin!(signal);
    installed(signal.as_mut()).await?;
    let live = read(cluster, name).await?;
    mine(&live)?;
    if !cnpg::served(cluster).await? {
        return Err(cnpg::operator_missing(
            "the API does not serve postgresql.cnpg.io/v1 (its CRDs are not installed)",
        ));
    }
    rbac::require(cluster, &cluster.namespace, &to_cluster::PERMISSIONS).await?;
    let held = lease(cluster, name).await?;
    let done = moving(args, cluster, name, instances, migrations, signal.as_mut()).await;
    held.release().await;
    done
}

/// `--finalize` or `--rollback` of a move.
pub async fn settle(args: &InstallArgs, global: &GlobalArgs) -> Result<(), Error> {
    let signal = crate::commands::interrupted();
    tokio::pin!(signal);
    installed(signal.as_mut()).await?;
    let cluster = Cluster::connect(&global.connect_options()).await?;
    let name = release::resolve(&cluster, args.release.as_deref()).await?;
    let live = read(&cluster, &name).await?;
    mine(&live)?;
    let mut permissions = to_cluster::PERMISSIONS.to_vec();
    if args.finalize {
        permissions.extend(to_cluster::FINALIZE_PERMISSIONS);
    }
    rbac::require(&cluster, &cluster.namespace, &permissions).await?;
    let held = lease(&cluster, &name).await?;
    let done = settled(args, &cluster, &name, signal.as_mut()).await;
    held.release().await;
    done
}

/// Polls the signal future once, so its handlers are installed before anything happens.
async fn installed(signal: Pin<&mut impl Future<Output = u8>>) -> Result<(), Error> {
    let mut signal = signal;
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(signal.as_mut().poll(cx))).await;
    match first {
        std::task::Poll::Ready(code) => Err(Error::Exit(code)),
        std::task::Poll::Pending => Ok(()),
    }
}

async fn lease(cluster: &Cluster, name: &str) -> Result<lease::Held, Error> {
    // The upgrade's lease: a move and a major upgrade never run at once.
    lease::acquire(
        cluster,
        &cluster.namespace,
        &format!("kubectl-pg-upgrade-{name}"),
        &format!("move of release {name} to a CloudNativePG Cluster"),
    )
    .await
}

async fn read(cluster: &Cluster, name: &str) -> Result<Live, Error> {
    apply::read_live(cluster, name)
        .await?
        .ok_or_else(|| Error::NotFound {
            message: format!(
                "release {name:?} not found in namespace {:?}",
                cluster.namespace
            ),
            hint: None,
        })
}

/// Only a release kubectl-pg made, with no major upgrade pending.
fn mine(live: &Live) -> Result<(), Error> {
    let name = &live.spec.release;
    if !release::made_for(&live.sts.metadata, name) {
        return Err(Error::InvalidInput {
            message: format!("StatefulSet {name} was not made by kubectl-pg: not moving it"),
            hint: None,
        });
    }
    if let Some(from) = release::pending_upgrade(&live.sts) {
        return Err(Error::InvalidInput {
            message: format!(
                "release {name} is in a major upgrade from PostgreSQL {from}: finish it first"
            ),
            hint: Some(format!(
                "kubectl pg upgrade {name} -n {} --finalize (or --rollback)",
                live.spec.namespace
            )),
        });
    }
    Ok(())
}

/// Runs `work` against the signal: on one, the step stands recorded and the command exits
/// 130/143 saying how to go on.
async fn guarded<T>(
    name: &str,
    namespace: &str,
    signal: Pin<&mut impl Future<Output = u8>>,
    work: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let how = format!(
        "the step in progress is recorded on StatefulSet {name}; run the same command again to finish it, or: kubectl pg install {name} -n {namespace} --rollback"
    );
    crate::commands::until_signal(signal, work, &how).await
}

async fn moving(
    args: &InstallArgs,
    cluster: &Cluster,
    name: &str,
    instances: u32,
    migrations: Option<&MigrationSet>,
    mut signal: Pin<&mut impl Future<Output = u8>>,
) -> Result<(), Error> {
    let ns = cluster.namespace.clone();
    let mut live = read(cluster, name).await?;
    if let Some(r) = Record::read(&live.sts.metadata)? {
        match r.phase {
            Phase::Verified => {
                crate::note!("resuming the move of release {name}: the Cluster was verified");
                let primary = guarded(
                    name,
                    &ns,
                    signal.as_mut(),
                    to_cluster::complete(cluster, &live, &r),
                )
                .await?;
                return finish(args, cluster, &live, &r, primary, None, migrations).await;
            }
            Phase::Preparing | Phase::Blocking | Phase::Copying => {
                crate::note!(
                    "an earlier move stopped at step {:?}: returning to the single instance before starting again",
                    r.phase.name()
                );
                guarded(
                    name,
                    &ns,
                    signal.as_mut(),
                    to_cluster::undo(cluster, &live, args.timeout),
                )
                .await?;
                live = read(cluster, name).await?;
            }
            phase => {
                let flag = if phase == Phase::Finalizing {
                    "--finalize"
                } else {
                    "--rollback"
                };
                return Err(Error::InvalidInput {
                    message: format!(
                        "release {name} has an unfinished move to a Cluster (step: {})",
                        phase.name()
                    ),
                    hint: Some(format!(
                        "finish it: kubectl pg install {name} -n {ns} {flag}"
                    )),
                });
            }
        }
    }
    if cnpg::get(cluster, &ns, name).await?.is_some() {
        return Err(Error::InvalidInput {
            message: format!(
                "a Cluster named {name} already exists in namespace {ns}: the move would make one of that name; nothing was changed"
            ),
            hint: Some(format!("see whose it is: kubectl get cluster {name} -n {ns} -o yaml")),
        });
    }
    to_cluster::check_names(cluster, name, instances).await?;
    let backup = args
        .backup_file
        .clone()
        .unwrap_or_else(|| to_cluster::default_backup(&live.spec));
    if !args.yes {
        crate::commands::confirm(
            &format!(
                "Move release {name} in namespace {ns} to a CloudNativePG Cluster of {instances} instances? Writes stop until it is done, and its clients' host becomes {name}-rw."
            ),
            "install",
        )?;
    }
    let copied = tokio::select! {
        done = to_cluster::copy(cluster, &live, instances, &backup, args.timeout) => done,
        code = signal.as_mut() => Err(Error::Exit(code)),
    };
    let copied = match copied {
        Ok(copied) => copied,
        Err(e) => {
            if !matches!(e, Error::Exit(_)) {
                crate::note!("the move failed: {e}");
                for hint in e.hints() {
                    crate::note!("hint: {hint}");
                }
            }
            crate::note!(
                "returning to the single instance: writes allowed again, the Cluster deleted"
            );
            let undo = async {
                let now = read(cluster, name).await?;
                to_cluster::undo(cluster, &now, args.timeout).await
            };
            let undone = tokio::select! {
                done = undo => done,
                code = crate::commands::interrupted() => {
                    crate::note!("interrupted again: the move stays recorded; undo it with: kubectl pg install {name} -n {ns} --rollback");
                    return Err(Error::Exit(code));
                }
            };
            return Err(match (undone, e) {
                (Ok(()), Error::Exit(code)) => Error::Exit(code),
                (Ok(()), e) => Error::Deployment {
                    message: format!(
                        "the move of release {name} to a Cluster failed and was undone: the single instance serves as before ({e})"
                    ),
                    hints: vec![format!("the backup stays at {}", backup.display())],
                    code: 5,
                },
                (Err(undo), e) => {
                    crate::note!("{e}");
                    Error::Deployment {
                        message: format!("the move stopped and could not be undone: {undo}"),
                        hints: vec![format!(
                            "every step is recorded on StatefulSet {name}: kubectl pg install {name} -n {ns} --rollback"
                        )],
                        code: 5,
                    }
                }
            });
        }
    };
    let record = copied.record;
    let primary = guarded(
        name,
        &ns,
        signal.as_mut(),
        to_cluster::complete(cluster, &live, &record),
    )
    .await?;
    let downtime_ms = copied.blocked_at.elapsed().as_millis() as u64;
    crate::note!("moved: downtime {:.1}s", downtime_ms as f64 / 1000.0);
    let done = Done {
        backup_bytes: copied.backup_bytes,
        downtime_ms,
        tables: copied.tables,
    };
    finish(
        args,
        cluster,
        &live,
        &record,
        primary,
        Some(done),
        migrations,
    )
    .await
}

/// What a move measured, for its result.
struct Done {
    backup_bytes: u64,
    downtime_ms: u64,
    tables: usize,
}

async fn finish(
    args: &InstallArgs,
    cluster: &Cluster,
    live: &Live,
    record: &Record,
    primary: String,
    done: Option<Done>,
    migrations: Option<&MigrationSet>,
) -> Result<(), Error> {
    let spec = &live.spec;
    if let Some(set) = migrations {
        let found = crate::deployment::kind::Release::locate(cluster, &spec.release).await?;
        let (_, connector) = found.writer(cluster, "SELECT 1").await?;
        let count = super::apply_migrations(&connector, set).await?;
        crate::note!("{count} migration(s) applied on the primary {primary}");
    }
    if spec.serves_tls() {
        crate::note!(
            "the Cluster serves its own certificates: clients that verify the server need its CA (kubectl pg dsn {} -n {} --ca-file FILE)",
            spec.release,
            spec.namespace
        );
    }
    let host = release::service_host(
        &format!("{}-{}", spec.release, Which::ReadWrite.suffix()),
        &spec.namespace,
        &spec.cluster_domain,
    );
    let dsn = DatabaseConnection::new(
        host,
        release::DATABASE_PORT,
        spec.database.clone(),
        spec.username.clone(),
        String::new(),
    )
    .with_plain_or_tls(true)
    .masked()
    .connection_string;
    let result = MoveResult {
        api_version: API_VERSION,
        kind: "MoveResult",
        release: spec.release.clone(),
        namespace: spec.namespace.clone(),
        result: "Moved",
        instances: record.instances,
        primary: Some(primary),
        backup_file: Some(record.backup.clone()),
        backup_bytes: done.as_ref().map(|d| d.backup_bytes),
        downtime_ms: done.as_ref().map(|d| d.downtime_ms),
        tables_verified: done.as_ref().map(|d| d.tables),
        dsn: Some(dsn),
    };
    print(args, &result)
}

async fn settled(
    args: &InstallArgs,
    cluster: &Cluster,
    name: &str,
    mut signal: Pin<&mut impl Future<Output = u8>>,
) -> Result<(), Error> {
    let ns = cluster.namespace.clone();
    let live = read(cluster, name).await?;
    let record = Record::read(&live.sts.metadata)?.ok_or_else(|| Error::InvalidInput {
        message: format!("release {name} has no move to a Cluster to finish or undo"),
        hint: Some(format!(
            "start one with: kubectl pg install {name} -n {ns} --upgrade --instances 3"
        )),
    })?;
    let mut result = MoveResult {
        api_version: API_VERSION,
        kind: "MoveResult",
        release: name.to_string(),
        namespace: ns.clone(),
        result: "RolledBack",
        instances: record.instances,
        primary: None,
        backup_file: Some(record.backup.clone()),
        backup_bytes: None,
        downtime_ms: None,
        tables_verified: None,
        dsn: None,
    };
    if args.rollback {
        if record.phase == Phase::Finalizing {
            return Err(Error::InvalidInput {
                message: format!(
                    "release {name} was being finalized: its single instance may be partly deleted, so it cannot be rolled back"
                ),
                hint: Some(format!("finish it: kubectl pg install {name} -n {ns} --finalize")),
            });
        }
        if record.phase == Phase::Moved && !args.yes {
            crate::commands::confirm(
                &format!("Return release {name} to its single instance and delete its Cluster? Writes made on the Cluster since the move are lost."),
                "install",
            )?;
        }
        guarded(
            name,
            &ns,
            signal.as_mut(),
            to_cluster::undo(cluster, &live, args.timeout),
        )
        .await?;
        return print(args, &result);
    }
    if !matches!(record.phase, Phase::Moved | Phase::Finalizing) {
        return Err(Error::InvalidInput {
            message: format!(
                "release {name}'s move stopped before the Cluster took over (step: {}): there is nothing to finalize",
                record.phase.name()
            ),
            hint: Some(format!(
                "run the move again (kubectl pg install {name} -n {ns} --upgrade --instances {}) or --rollback",
                record.instances
            )),
        });
    }
    if !args.yes {
        crate::commands::confirm(
            &format!("Delete release {name}'s single instance (StatefulSet and volume)? The move can no longer be rolled back."),
            "install",
        )?;
    }
    guarded(
        name,
        &ns,
        signal.as_mut(),
        to_cluster::finalize(cluster, &live, &record, args.timeout),
    )
    .await?;
    result.result = "Finalized";
    print(args, &result)
}

fn print(args: &InstallArgs, result: &MoveResult) -> Result<(), Error> {
    output::emit_result(args.output, result, summary)
}

fn summary(r: &MoveResult) -> String {
    match r.result {
        "Moved" => format!(
            "release {} moved to CloudNativePG Cluster {0} ({} instances, primary {}){}\n\
             the clients' host is now {0}-rw (Service {0} points at the primary too):\n  {}\n\
             the single instance is kept, writes blocked, until: kubectl pg install {0} -n {} --finalize (or --rollback)\n",
            r.release,
            r.instances,
            r.primary.as_deref().unwrap_or("-"),
            match (r.tables_verified, r.downtime_ms) {
                (Some(t), Some(ms)) => format!(
                    ": {t} tables verified, downtime {:.1}s, backup {}",
                    ms as f64 / 1000.0,
                    r.backup_file.as_deref().unwrap_or("-")
                ),
                _ => String::new(),
            },
            r.dsn.as_deref().unwrap_or("-"),
            r.namespace
        ),
        "RolledBack" => format!(
            "release {} is back on its single instance, writes allowed; the Cluster the move made is deleted\n",
            r.release
        ),
        _ => format!(
            "release {} is its CloudNativePG Cluster alone: the single instance and its volume are deleted\n",
            r.release
        ),
    }
}
