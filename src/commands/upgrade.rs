//! `kubectl pg upgrade`: a major upgrade by dump and restore into a new data directory on the
//! same volume, verified against a snapshot of the old server, rolled back on any difference;
//! `--rollback` returns to the old major and data, `--finalize` deletes the old data.
//!
//! Logical, not pg_upgrade: the official images carry one major each, and a dump restored into
//! a fresh initdb of the new major needs nothing but the two images the release already uses.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use serde::Serialize;

use super::install::{self, Live};
use crate::cli::{GlobalArgs, UpgradeArgs};
use crate::cluster::release::{self, Target};
use crate::cluster::{exec, Cluster};
use crate::error::Error;
use crate::manifests::render::{self, CONTAINER};
use crate::manifests::spec::{pinned_image, DataLayout, IMAGES};
use crate::manifests::{self, InstallSpec};
use crate::output::{self, emit, API_VERSION};
use crate::transfer::filter::LineFilter;
use crate::transfer::{self, snapshot, PendingFile, Progress};

/// `kind: UpgradeResult`.
#[derive(Debug, Clone, Serialize)]
pub struct UpgradeResult {
    #[serde(rename = "apiVersion")]
    pub api_version: &'static str,
    pub kind: &'static str,
    pub release: String,
    pub namespace: String,
    /// `Upgraded`, `RolledBack` or `Finalized`.
    pub result: &'static str,
    pub from_major: u32,
    pub to_major: u32,
    pub image: String,
    pub backup_file: Option<String>,
    pub backup_bytes: Option<u64>,
    /// From the moment writes were blocked until the new server was verified and healthy.
    pub downtime_ms: Option<u64>,
    pub tables_verified: Option<usize>,
    /// The data directory kept for a rollback (volume-relative), until --finalize.
    pub old_data_dir: Option<String>,
}

pub async fn run(args: UpgradeArgs, global: &GlobalArgs) -> Result<(), Error> {
    if let Some(major) = args.postgres_version {
        if pinned_image(major).is_none() {
            return Err(Error::InvalidInput {
                message: format!("unsupported --postgres-version {major}"),
                hint: Some(format!(
                    "supported majors: {}",
                    IMAGES
                        .iter()
                        .map(|(m, _)| m.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            });
        }
    }
    let cluster = Cluster::connect(&global.connect_options()).await?;
    let name = release::resolve(&cluster, args.release.as_deref()).await?;
    let live = install::read_live(&cluster, &name)
        .await?
        .ok_or_else(|| Error::NotFound {
            message: format!(
                "release {name:?} not found in namespace {:?}",
                cluster.namespace
            ),
            hint: Some(format!(
                "install it with: kubectl pg install {name} -n {}",
                cluster.namespace
            )),
        })?;
    if !release::made_for(&live.sts.metadata, &name) {
        return Err(Error::InvalidInput {
            message: format!("StatefulSet {name} was not made by kubectl-pg: not upgrading it"),
            hint: None,
        });
    }
    let result = if args.finalize {
        finalize(&cluster, &live, &args).await?
    } else if args.rollback {
        let record = Record::read(&live)?;
        if !args.yes {
            super::confirm(&format!(
                "Return release {name} to PostgreSQL {} and its data from before the upgrade? Changes made since are lost.",
                record.from_major
            ), "upgrade")?;
        }
        rollback(&cluster, &live, &record, &args).await?;
        UpgradeResult {
            api_version: API_VERSION,
            kind: "UpgradeResult",
            release: name.clone(),
            namespace: cluster.namespace.clone(),
            result: "RolledBack",
            from_major: live.spec.major,
            to_major: record.from_major,
            image: record.from_image.clone(),
            backup_file: record.backup.clone(),
            backup_bytes: None,
            downtime_ms: None,
            tables_verified: None,
            old_data_dir: None,
        }
    } else {
        upgrade(
            &cluster,
            &live,
            &args,
            args.postgres_version.unwrap_or_default(),
        )
        .await?
    };
    match args
        .output
        .and_then(|f| output::document(f, &result).transpose())
    {
        Some(text) => emit(&text?),
        None => emit(&summary(&result)),
    }
    Ok(())
}

fn summary(r: &UpgradeResult) -> String {
    match r.result {
        "Upgraded" => format!(
            "release {} upgraded from PostgreSQL {} to {} ({}): {} tables verified, downtime {:.1}s\nbackup: {}\nold data kept in {} until: kubectl pg upgrade {} -n {} --finalize (or --rollback)\n",
            r.release,
            r.from_major,
            r.to_major,
            r.image,
            r.tables_verified.unwrap_or_default(),
            r.downtime_ms.unwrap_or_default() as f64 / 1000.0,
            r.backup_file.as_deref().unwrap_or("-"),
            r.old_data_dir.as_deref().unwrap_or("-"),
            r.release,
            r.namespace
        ),
        "RolledBack" => format!(
            "release {} is back on PostgreSQL {} ({}) with its data from before the upgrade\n",
            r.release, r.to_major, r.image
        ),
        _ => format!(
            "release {} stays on PostgreSQL {}: the old data directory was deleted\n",
            r.release, r.to_major
        ),
    }
}

/// What a pending upgrade recorded on the StatefulSet, to go back to.
#[derive(Debug, Clone)]
struct Record {
    from_major: u32,
    from_image: String,
    from_layout: DataLayout,
    /// The old data directory, relative to the volume's root.
    old_data: String,
    backup: Option<String>,
}

impl Record {
    fn read(live: &Live) -> Result<Self, Error> {
        let annotations = live.sts.metadata.annotations.clone().unwrap_or_default();
        let get = |k: &str| annotations.get(k).cloned();
        let none = || Error::InvalidInput {
            message: format!(
                "release {} has no major upgrade to finish or undo (it runs PostgreSQL {})",
                live.spec.release, live.spec.major
            ),
            hint: Some(format!(
                "start one with: kubectl pg upgrade {} -n {} --postgres-version N",
                live.spec.release, live.spec.namespace
            )),
        };
        let from_major = release::pending_upgrade(&live.sts).ok_or_else(none)?;
        Ok(Self {
            from_major,
            from_image: get(release::ANNOTATION_UPGRADE_FROM_IMAGE)
                .or_else(|| pinned_image(from_major).map(str::to_string))
                .ok_or_else(none)?,
            from_layout: get(release::ANNOTATION_UPGRADE_FROM_LAYOUT)
                .and_then(|l| DataLayout::from_name(&l))
                .unwrap_or(DataLayout::default_for(from_major)),
            old_data: get(release::ANNOTATION_UPGRADE_OLD_DATA).ok_or_else(none)?,
            backup: get(release::ANNOTATION_UPGRADE_BACKUP),
        })
    }

    fn annotations(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            (
                release::ANNOTATION_UPGRADE_FROM_MAJOR,
                self.from_major.to_string(),
            ),
            (
                release::ANNOTATION_UPGRADE_FROM_IMAGE,
                self.from_image.clone(),
            ),
            (
                release::ANNOTATION_UPGRADE_FROM_LAYOUT,
                self.from_layout.name().to_string(),
            ),
            (release::ANNOTATION_UPGRADE_OLD_DATA, self.old_data.clone()),
        ];
        if let Some(b) = &self.backup {
            out.push((release::ANNOTATION_UPGRADE_BACKUP, b.clone()));
        }
        out
    }
}

async fn upgrade(
    cluster: &Cluster,
    live: &Live,
    args: &UpgradeArgs,
    to: u32,
) -> Result<UpgradeResult, Error> {
    let old = &live.spec;
    if let Some(from) = release::pending_upgrade(&live.sts) {
        return Err(Error::InvalidInput {
            message: format!(
                "release {} is already in an upgrade from PostgreSQL {from} to {}",
                old.release, old.major
            ),
            hint: Some(format!(
                "finish it first: kubectl pg upgrade {} -n {} --finalize (or --rollback)",
                old.release, old.namespace
            )),
        });
    }
    if to <= old.major {
        return Err(Error::InvalidInput {
            message: format!(
                "release {} runs PostgreSQL {}: an upgrade goes to a higher major (asked for {to})",
                old.release, old.major
            ),
            hint: (to < old.major).then(|| {
                "to go back after an upgrade use --rollback; otherwise dump, install the older major, restore"
                    .to_string()
            }),
        });
    }
    let target = release::find_target(cluster, &old.release).await?;
    let backup_path = args
        .backup_file
        .clone()
        .unwrap_or_else(|| default_backup(old));
    if !args.yes {
        super::confirm(&format!(
            "Upgrade release {} in namespace {} from PostgreSQL {} to {to}? Writes stop until it is done.",
            old.release, old.namespace, old.major
        ), "upgrade")?;
    }
    // The new major's spec: its pinned image, and a data directory of its own on the volume.
    let new = InstallSpec {
        major: to,
        image: args
            .image
            .clone()
            .unwrap_or_else(|| pinned_image(to).unwrap_or_default().to_string()),
        layout: DataLayout::Versioned,
        ..old.clone()
    };
    let record = Record {
        from_major: old.major,
        from_image: old.image.clone(),
        from_layout: old.layout,
        old_data: old.layout.data_dir(old.major),
        backup: Some(absolute(&backup_path)),
    };
    if record.old_data == new.layout.data_dir(to) {
        return Err(Error::invalid(
            "the new data directory would be the old one: refusing",
        ));
    }
    // Nothing is changed before the backup is safe on the laptop.
    let mut pending = PendingFile::create(&backup_path)?;
    let user = target.credentials.username.clone();
    step(&format!("blocking writes on PostgreSQL {}", old.major));
    let downtime = Instant::now();
    let databases = snapshot::databases(cluster, &target).await?;
    set_read_only(cluster, &target, &databases, true).await?;
    let prepared = async {
        let before = snapshot::take(cluster, &target).await?;
        step(&format!(
            "snapshot: {} databases, {} tables; writing the backup {}",
            databases.len(),
            snapshot::tables(&before),
            backup_path.display()
        ));
        let bytes = dump_all(cluster, &target, &mut pending).await?;
        Ok::<_, Error>((before, bytes))
    }
    .await;
    let (before, backup_bytes) = match prepared {
        Ok(done) => done,
        Err(e) => {
            let _ = set_read_only(cluster, &target, &databases, false).await;
            return Err(e);
        }
    };
    pending.commit()?;
    step(&format!(
        "backup complete: {} ({})",
        backup_path.display(),
        transfer::human_bytes(backup_bytes)
    ));

    // The switch: from here on, any failure returns to the old major and data.
    let new_dir = format!("{}/{}", old.layout.mount(), new.layout.data_dir(to));
    let leftover = remove_in_pod(cluster, &target, &new_dir).await?;
    if !leftover.success {
        let _ = set_read_only(cluster, &target, &databases, false).await;
        return Err(Error::Tool {
            tool: "rm".into(),
            message: format!(
                "cannot clear {new_dir} for the new data: {}",
                leftover.reason()
            ),
            hints: Vec::new(),
        });
    }
    step(&format!(
        "switching to {} (data in {} on the same volume)",
        new.image,
        new.layout.data_dir(to)
    ));
    let templates = manifests::live::claim_templates(&live.sts);
    let switched = async {
        install::apply_release(cluster, &new, templates.as_ref(), &record.annotations()).await?;
        install::wait_ready(cluster, &new, args.timeout, true).await?;
        let target = release::find_target(cluster, &new.release).await?;
        step(&format!("restoring the backup into PostgreSQL {to}"));
        restore_all(cluster, &target, &backup_path, &user, &old.database).await?;
        set_read_only(cluster, &target, &databases, false).await?;
        step("verifying: row counts per table, migration history, extensions, roles");
        let after = snapshot::take(cluster, &target).await?;
        let diff = snapshot::differences(&before, &after);
        if !diff.is_empty() {
            return Err(Error::Deployment {
                message: format!(
                    "verification found {} difference(s): {}",
                    diff.len(),
                    diff.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
                ),
                hints: Vec::new(),
                code: 5,
            });
        }
        install::health_check(cluster, &new, &target.credentials).await?;
        Ok::<_, Error>(snapshot::tables(&after))
    }
    .await;
    let tables = match switched {
        Ok(tables) => tables,
        Err(e) => {
            crate::note!("the new major failed: {e}");
            for hint in e.hints() {
                crate::note!("hint: {hint}");
            }
            step(&format!("rolling back to PostgreSQL {}", old.major));
            let current = install::read_live(cluster, &old.release)
                .await?
                .ok_or_else(|| Error::invalid("the StatefulSet disappeared during the upgrade"))?;
            rollback(cluster, &current, &record, args).await?;
            return Err(Error::Deployment {
                message: format!(
                    "the upgrade to PostgreSQL {to} failed and was rolled back: release {} runs PostgreSQL {} with its data as before",
                    old.release, old.major
                ),
                hints: vec![format!("the backup stays at {}", backup_path.display())],
                code: 5,
            });
        }
    };
    release::record_claim_major(cluster, &new.namespace, &render::data_pvc_name(&new), to).await;
    let downtime_ms = downtime.elapsed().as_millis() as u64;
    step(&format!(
        "done: downtime {:.1}s",
        downtime_ms as f64 / 1000.0
    ));
    Ok(UpgradeResult {
        api_version: API_VERSION,
        kind: "UpgradeResult",
        release: old.release.clone(),
        namespace: old.namespace.clone(),
        result: "Upgraded",
        from_major: old.major,
        to_major: to,
        image: new.image.clone(),
        backup_file: record.backup.clone(),
        backup_bytes: Some(backup_bytes),
        downtime_ms: Some(downtime_ms),
        tables_verified: Some(tables),
        old_data_dir: Some(record.old_data.clone()),
    })
}

/// Back to the recorded major, image and layout; its data directory was never touched. The
/// new major's directory is deleted, and writes are allowed again.
async fn rollback(
    cluster: &Cluster,
    live: &Live,
    record: &Record,
    args: &UpgradeArgs,
) -> Result<(), Error> {
    let current = &live.spec;
    let old = InstallSpec {
        major: record.from_major,
        image: record.from_image.clone(),
        layout: record.from_layout,
        ..current.clone()
    };
    let templates = manifests::live::claim_templates(&live.sts);
    install::apply_release(cluster, &old, templates.as_ref(), &[]).await?;
    // An OrderedReady StatefulSet never replaces a pod that is not Ready (the new major's,
    // crash-looping): delete it so the old template's pod starts.
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &current.namespace);
    let pod_name = release::pod_name(&current.release);
    if let Some(pod) = pods
        .get_opt(&pod_name)
        .await
        .map_err(|e| cluster.error("get", "pods", e))?
    {
        if !release::is_ready(&pod) {
            let _ = pods
                .delete(&pod_name, &release::delete_only(pod.metadata.uid.clone()))
                .await;
        }
    }
    install::wait_ready(cluster, &old, args.timeout, true).await?;
    let target = release::find_target(cluster, &old.release).await?;
    let databases = snapshot::databases(cluster, &target).await?;
    set_read_only(cluster, &target, &databases, false).await?;
    // The new major's directory, seen from the old layout's mount.
    if current.major != record.from_major && current.layout == DataLayout::Versioned {
        let dir = format!("{}/{}", record.from_layout.mount(), current.major);
        let _ = remove_in_pod(cluster, &target, &dir).await;
    }
    release::record_claim_major(
        cluster,
        &old.namespace,
        &render::data_pvc_name(&old),
        record.from_major,
    )
    .await;
    step(&format!(
        "release {} runs PostgreSQL {} again",
        old.release, record.from_major
    ));
    Ok(())
}

/// Deletes the old data directory and the rollback record: the new major stays.
async fn finalize(
    cluster: &Cluster,
    live: &Live,
    args: &UpgradeArgs,
) -> Result<UpgradeResult, Error> {
    let record = Record::read(live)?;
    let spec = &live.spec;
    let target = release::find_target(cluster, &spec.release).await?;
    // Only the old major's own directory: `pgdata`, or `N` of `N/docker`.
    let top = record
        .old_data
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let current_top = spec
        .layout
        .data_dir(spec.major)
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    if top.is_empty() || top == current_top || top.contains("..") {
        return Err(Error::invalid(format!(
            "refusing to delete {:?}: it is not the old data directory",
            record.old_data
        )));
    }
    if !args.yes {
        super::confirm(&format!(
            "Delete the PostgreSQL {} data directory of release {}? The upgrade can no longer be rolled back.",
            record.from_major, spec.release
        ), "upgrade")?;
    }
    let dir = format!("{}/{top}", spec.layout.mount());
    let out = remove_in_pod(cluster, &target, &dir).await?;
    if !out.success {
        return Err(Error::Tool {
            tool: "rm".into(),
            message: format!("cannot delete {dir}: {}", out.reason()),
            hints: Vec::new(),
        });
    }
    let templates = manifests::live::claim_templates(&live.sts);
    install::apply_release(cluster, spec, templates.as_ref(), &[]).await?;
    step(&format!("deleted {dir}; the rollback record is removed"));
    Ok(UpgradeResult {
        api_version: API_VERSION,
        kind: "UpgradeResult",
        release: spec.release.clone(),
        namespace: spec.namespace.clone(),
        result: "Finalized",
        from_major: record.from_major,
        to_major: spec.major,
        image: spec.image.clone(),
        backup_file: record.backup,
        backup_bytes: None,
        downtime_ms: None,
        tables_verified: None,
        old_data_dir: None,
    })
}

/// `default_transaction_read_only` on every database (new sessions), and the other client
/// sessions ended so none writes on; `false` undoes it.
async fn set_read_only(
    cluster: &Cluster,
    target: &Target,
    databases: &[String],
    on: bool,
) -> Result<(), Error> {
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    // This session itself must write the catalog, whatever the databases' default says.
    let mut sql = String::from("SET default_transaction_read_only = off;\n");
    for db in databases {
        if on {
            sql.push_str(&format!(
                "ALTER DATABASE {} SET default_transaction_read_only = on;\n",
                quote(db)
            ));
        } else {
            sql.push_str(&format!(
                "ALTER DATABASE {} RESET default_transaction_read_only;\n",
                quote(db)
            ));
        }
    }
    if on {
        sql.push_str("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND backend_type = 'client backend';\n");
    }
    snapshot::psql(cluster, target, "postgres", &sql)
        .await
        .map(|_| ())
}

/// `ALTER DATABASE x SET default_transaction_read_only TO 'on';`, as pg_dumpall writes it.
fn is_read_only_setting(line: &str) -> bool {
    line.starts_with("ALTER DATABASE ")
        && line.ends_with(" SET default_transaction_read_only TO 'on';")
}

/// pg_dumpall of the old server into the pending backup file.
async fn dump_all(
    cluster: &Cluster,
    target: &Target,
    file: &mut PendingFile,
) -> Result<u64, Error> {
    let tag = transfer::session_tag();
    let command = transfer::dump_command(
        &target.credentials.username,
        &transfer::DumpScope::Cluster,
        transfer::DumpFormat::Plain,
        &tag,
        &[],
    )?;
    let mut progress = Progress::new(std::io::stderr().is_terminal(), "backed up");
    // The databases are read-only while the dump runs: that setting is the upgrade's, not
    // the data's, and stays out of the backup.
    let mut filter = LineFilter::new(is_read_only_setting);
    let outcome = exec::stream(
        cluster,
        &target.namespace,
        &target.pod,
        CONTAINER,
        &command,
        None::<tokio::io::Empty>,
        |chunk: &[u8]| {
            filter.feed(chunk, &mut |b| file.write(b))?;
            progress.add(chunk.len());
            Ok(())
        },
    )
    .await?;
    progress.finish();
    filter
        .finish(&mut |b| file.write(b))
        .map_err(|source| Error::Io {
            context: "cannot write the backup".into(),
            source,
        })?;
    if !outcome.success {
        return Err(Error::Tool {
            tool: "pg_dumpall".into(),
            message: outcome.reason(),
            hints: vec!["nothing was changed; writes are allowed again".into()],
        });
    }
    Ok(outcome.bytes_out)
}

/// Restores the backup into the new, freshly initialised server: the database its entrypoint
/// created is dropped (the dump creates it), and the dump's `CREATE ROLE` of the user that
/// runs the restore (initdb made it) is left out, so every other statement must succeed.
async fn restore_all(
    cluster: &Cluster,
    target: &Target,
    backup: &Path,
    user: &str,
    database: &str,
) -> Result<(), Error> {
    if database != "postgres" {
        let quote = format!("\"{}\"", database.replace('"', "\"\""));
        snapshot::psql(
            cluster,
            target,
            "postgres",
            &format!("DROP DATABASE IF EXISTS {quote};\n"),
        )
        .await?;
    }
    let file = tokio::fs::File::open(backup)
        .await
        .map_err(|source| Error::Io {
            context: format!("cannot open {}", backup.display()),
            source,
        })?;
    let skip = [
        format!("CREATE ROLE {user};"),
        format!("CREATE ROLE \"{}\";", user.replace('"', "\"\"")),
    ];
    let mut filter = LineFilter::new(move |line| skip.iter().any(|s| s == line));
    let (reader, mut writer) = tokio::io::simplex(256 * 1024);
    let feed = async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut file = file;
        let mut buf = vec![0u8; 256 * 1024];
        let mut passed = Vec::with_capacity(256 * 1024);
        loop {
            let n = file.read(&mut buf).await?;
            passed.clear();
            let mut keep = |b: &[u8]| {
                passed.extend_from_slice(b);
                Ok(())
            };
            if n == 0 {
                filter.finish(&mut keep)?;
            } else {
                filter.feed(&buf[..n], &mut keep)?;
            }
            if writer.write_all(&passed).await.is_err() || n == 0 {
                break;
            }
        }
        let _ = writer.shutdown().await;
        Ok::<(), std::io::Error>(())
    };
    let command: Vec<String> = [
        "psql",
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-U",
        user,
        "-d",
        "postgres",
        "-f",
        "-",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let run = exec::stream(
        cluster,
        &target.namespace,
        &target.pod,
        CONTAINER,
        &command,
        Some(reader),
        |_: &[u8]| Ok(()),
    );
    let (fed, outcome) = tokio::join!(feed, run);
    fed.map_err(|source| Error::Io {
        context: format!("cannot read {}", backup.display()),
        source,
    })?;
    let outcome = outcome?;
    if !outcome.success {
        return Err(Error::Tool {
            tool: "psql".into(),
            message: format!("restoring the backup: {}", outcome.reason()),
            hints: Vec::new(),
        });
    }
    Ok(())
}

/// `./R-N-pgM-UNIXTIME.sql`
fn default_backup(spec: &InstallSpec) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    PathBuf::from(format!(
        "{}-{}-pg{}-{secs}.sql",
        spec.release, spec.namespace, spec.major
    ))
}

fn absolute(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

fn step(text: &str) {
    crate::note!("{text}");
}

/// `rm -rf dir` in the release's pod (a data directory of one major or the other).
async fn remove_in_pod(
    cluster: &Cluster,
    target: &release::Target,
    dir: &str,
) -> Result<exec::ExecOutput, Error> {
    exec::run(
        cluster,
        &target.namespace,
        &target.pod,
        CONTAINER,
        &["rm", "-rf", dir],
        "",
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upgrades_read_only_setting_stays_out_of_the_backup() {
        assert!(is_read_only_setting(
            "ALTER DATABASE learnflow SET default_transaction_read_only TO 'on';"
        ));
        assert!(!is_read_only_setting(
            "ALTER DATABASE learnflow SET work_mem TO '64MB';"
        ));
    }
}
