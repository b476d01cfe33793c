//! `kubectl pg upgrade` of a CloudNativePG Cluster kubectl-pg made: the operator's in-place
//! upgrade, with writes blocked, a backup taken and the result verified before clients come
//! back ([`cnpg_upgrade`]). The record on the Cluster lets a rerun, `--rollback` or
//! `--finalize` go on after any interruption.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::{UpgradeResult, PERMISSION_LEASES};
use crate::cli::UpgradeArgs;
use crate::cluster::lease;
use crate::cluster::rbac::{self, Permission};
use crate::cluster::Cluster;
use crate::deployment::cnpg::{self, CnpgCluster};
use crate::deployment::cnpg_upgrade::{self as upgrade, Phase, Record};
use crate::error::Error;
use crate::manifests::spec::image_major;
use crate::output::API_VERSION;
use crate::transfer::whole;

/// What an upgrade of a Cluster, its rollback and `--finalize` use, checked before any change.
const PERMISSIONS: [Permission; 9] = [
    ("postgresql.cnpg.io", "clusters", "get"),
    ("postgresql.cnpg.io", "clusters", "list"),
    ("postgresql.cnpg.io", "clusters", "watch"),
    ("postgresql.cnpg.io", "clusters", "patch"),
    ("", "pods", "get"),
    ("", "pods", "list"),
    ("", "pods", "watch"),
    ("", "pods/exec", "get"),
    ("", "pods/exec", "create"),
];

pub(super) async fn run(
    args: &UpgradeArgs,
    cluster: &Cluster,
    c: &CnpgCluster,
    mut signal: Pin<&mut impl Future<Output = u8>>,
) -> Result<(), Error> {
    rbac::require(
        cluster,
        &c.namespace,
        &[&PERMISSION_LEASES[..], &PERMISSIONS[..]].concat(),
    )
    .await?;
    let held = lease::acquire(
        cluster,
        &c.namespace,
        &format!("kubectl-pg-upgrade-{}", c.name),
        &format!("upgrade of release {}", c.name),
    )
    .await?;
    let done = locked(args, cluster, c, signal.as_mut()).await;
    held.release().await;
    let result = done?;
    super::print(args, &result)
}

async fn locked(
    args: &UpgradeArgs,
    cluster: &Cluster,
    c: &CnpgCluster,
    mut signal: Pin<&mut impl Future<Output = u8>>,
) -> Result<UpgradeResult, Error> {
    // Read under the lease: what an earlier run left is what no live run is working on.
    let mut live = cnpg::get(cluster, &c.namespace, &c.name)
        .await?
        .ok_or_else(|| Error::invalid(format!("Cluster {} is gone", c.name)))?;
    let c = &live.clone();
    let record = Record::read(c)?;
    let name = &c.name;
    let ns = &c.namespace;
    let pending = |what: &str| Error::InvalidInput {
        message: format!("Cluster {name} has no major upgrade to {what}"),
        hint: None,
    };
    if args.finalize {
        // A Cluster keeps no old data (pg_upgrade --link): what is left to decide is an
        // upgrade whose verification failed.
        let record = record
            .filter(|r| r.phase == Phase::Unverified)
            .ok_or_else(|| {
                pending("finalize (only one whose verification failed is left to finish)")
            })?;
        if !args.yes {
            crate::commands::confirm(
                &format!("Allow writes on Cluster {name}'s upgraded data, which differs from before the upgrade?"),
                "upgrade",
            )?;
        }
        guarded(name, ns, signal.as_mut(), upgrade::allow_writes(cluster, c)).await?;
        return Ok(result(c, &record, "Accepted", None, None, None));
    }
    if args.rollback {
        let record = record.ok_or_else(|| pending("roll back"))?;
        if upgrade::job_running(cluster, c).await? {
            return Err(running(name, ns));
        }
        guarded(
            name,
            ns,
            signal.as_mut(),
            upgrade::rollback(cluster, c, &record, args.timeout),
        )
        .await?;
        let mut back = result(c, &record, "RolledBack", None, None, None);
        back.to_major = image_major(&record.from_image).unwrap_or_default();
        back.image = record.from_image.clone();
        return Ok(back);
    }
    let to = args.postgres_version.unwrap_or_default();
    if let Some(record) = record {
        match record.phase {
            Phase::Upgrading if image_major(&record.to_image) == Some(to) => {
                crate::note!(
                    "resuming the upgrade of Cluster {name} to PostgreSQL {to}: waiting for the operator, then verifying"
                );
                return finish(args, cluster, c, &record, None, signal).await;
            }
            Phase::Blocking => {
                crate::note!(
                    "an earlier upgrade stopped while taking the backup: allowing writes before starting again"
                );
                guarded(
                    name,
                    ns,
                    signal.as_mut(),
                    upgrade::rollback(cluster, c, &record, args.timeout),
                )
                .await?;
                // Writes are allowed again: the upgrade starts from the Cluster as it is now.
                live = cnpg::get(cluster, ns, name)
                    .await?
                    .ok_or_else(|| Error::invalid(format!("Cluster {name} is gone")))?;
            }
            phase => {
                let flag = match phase {
                    Phase::Unverified => "--finalize (or restore the backup into a new release)",
                    Phase::RollingBack => "--rollback",
                    _ => "its own --postgres-version, or --rollback",
                };
                return Err(Error::InvalidInput {
                    message: format!(
                        "Cluster {name} has an unfinished upgrade to {} (step: {})",
                        record.to_image,
                        phase.name()
                    ),
                    hint: Some(format!(
                        "finish it: kubectl pg upgrade {name} -n {ns} {flag}"
                    )),
                });
            }
        }
    }
    let c = &live;
    let from = upgrade::data_major(c)
        .or_else(|| c.image().as_deref().and_then(image_major))
        .ok_or_else(|| Error::invalid(format!("Cluster {name} reports no major")))?;
    if to <= from {
        return Err(Error::InvalidInput {
            message: format!(
                "Cluster {name} runs PostgreSQL {from}: an upgrade goes to a higher major (asked for {to})"
            ),
            hint: None,
        });
    }
    if cnpg::hibernating(c) || c.operator_phase().as_deref() != Some(cnpg::HEALTHY) {
        return Err(Error::InvalidInput {
            message: format!(
                "Cluster {name} is not healthy ({}): it is upgraded only from a healthy state",
                c.operator_phase().unwrap_or_else(|| "no status".into())
            ),
            hint: Some(format!("see why: kubectl pg status {name} -n {ns}")),
        });
    }
    let image = args.image.clone().unwrap_or_else(|| cnpg::image_for(to));
    let backup = args
        .backup_file
        .clone()
        .unwrap_or_else(|| whole::default_backup(name, ns, from));
    if !args.yes {
        crate::commands::confirm(
            &format!(
                "Upgrade Cluster {name} in namespace {ns} from PostgreSQL {from} to {to}? Every instance stops; writes stop until it is verified."
            ),
            "upgrade",
        )?;
    }
    // Until the new image is asked for, a failure or a signal allows writes again.
    let started = tokio::select! {
        done = upgrade::start(cluster, c, &image, &backup) => done,
        code = signal.as_mut() => Err(Error::Exit(code)),
    };
    let (record, bytes) = match started {
        Ok(started) => started,
        Err(e) => {
            let now = cnpg::get(cluster, ns, name).await.ok().flatten();
            if let Some(r) = now.as_ref().and_then(|n| Record::read(n).ok().flatten()) {
                crate::note!("the upgrade did not start ({e}): allowing writes again");
                let undo = tokio::select! {
                    undone = upgrade::rollback(cluster, now.as_ref().unwrap_or(c), &r, args.timeout) => undone,
                    code = signal.as_mut() => Err(Error::Exit(code)),
                };
                if let Err(undo) = undo {
                    crate::note!(
                        "writes are still blocked ({undo}): kubectl pg upgrade {name} -n {ns} --rollback allows them"
                    );
                }
            }
            return Err(e);
        }
    };
    finish(args, cluster, c, &record, Some(bytes), signal).await
}

/// Steps 3 and 4: the operator's upgrade waited for, then verified. A signal stops the wait
/// only: pg_upgrade is the operator's to finish, and a rerun verifies it.
async fn finish(
    args: &UpgradeArgs,
    cluster: &Cluster,
    c: &CnpgCluster,
    record: &Record,
    bytes: Option<u64>,
    signal: Pin<&mut impl Future<Output = u8>>,
) -> Result<UpgradeResult, Error> {
    let to = image_major(&record.to_image).unwrap_or_default();
    let work = async {
        let upgraded = upgrade::wait_upgraded(cluster, c, record, to, args.timeout).await?;
        let tables = upgrade::verify(cluster, &upgraded, record).await?;
        Ok::<_, Error>((upgraded, tables))
    };
    let (upgraded, tables) = guarded(&c.name, &c.namespace, signal, work).await?;
    let mut done = result(
        &upgraded,
        record,
        "Upgraded",
        Some(tables),
        bytes,
        record.downtime(),
    );
    done.from_major = image_major(&record.from_image).unwrap_or_default();
    Ok(done)
}

fn result(
    c: &CnpgCluster,
    record: &Record,
    outcome: &'static str,
    tables: Option<usize>,
    bytes: Option<u64>,
    downtime: Option<Duration>,
) -> UpgradeResult {
    UpgradeResult {
        api_version: API_VERSION,
        kind: "UpgradeResult",
        release: c.name.clone(),
        namespace: c.namespace.clone(),
        result: outcome,
        from_major: image_major(&record.from_image).unwrap_or_default(),
        to_major: image_major(&record.to_image).unwrap_or_default(),
        image: record.to_image.clone(),
        backup_file: Some(record.backup.clone()),
        backup_bytes: bytes,
        downtime_ms: downtime.map(|d| d.as_millis() as u64),
        tables_verified: tables,
        old_data_dir: None,
    }
}

fn running(name: &str, ns: &str) -> Error {
    Error::InvalidInput {
        message: format!(
            "the operator is running pg_upgrade on Cluster {name}'s primary: stopping it half-way could leave no usable data"
        ),
        hint: Some(format!(
            "wait for it: kubectl pg upgrade {name} -n {ns} --postgres-version N (the same major) waits and verifies"
        )),
    }
}

/// Runs `work` until a signal, which leaves the record for a rerun.
async fn guarded<T>(
    name: &str,
    ns: &str,
    signal: Pin<&mut impl Future<Output = u8>>,
    work: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let how = format!(
        "the step in progress is recorded on Cluster {name}; run the same command again to finish it (writes stay blocked until then; kubectl pg status {name} -n {ns} shows where it stands)"
    );
    crate::commands::until_signal(signal, work, &how).await
}
