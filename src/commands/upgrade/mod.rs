//! `kubectl pg upgrade`: a major upgrade by dump and restore into a new data directory on the
//! same volume, verified against a snapshot of the old server, rolled back on any difference;
//! `--rollback` returns to the old major and data, `--finalize` deletes the old data.
//!
//! Logical, not pg_upgrade: the official images carry one major each, and a dump restored into
//! a fresh initdb of the new major needs nothing but the two images the release already uses.
//!
//! A state machine that survives any interruption: each step is recorded on the StatefulSet
//! ([`Phase`]) before it acts, and a rerun, `--rollback` or `--finalize` goes on from whatever
//! was recorded, after a signal, `kill -9`, a lost connection or a refused permission.

use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use serde::Serialize;

use crate::cli::{GlobalArgs, UpgradeArgs};
use crate::cluster::lease;
use crate::cluster::rbac::{self, Permission};
use crate::cluster::release;
use crate::cluster::{exec, Cluster};
use crate::deployment::apply::{self, Live};
use crate::deployment::writes;
use crate::error::Error;
use crate::manifests::render::{self, CONTAINER};
use crate::manifests::spec::{pinned_image, DataLayout, IMAGES};
use crate::manifests::{self, InstallSpec};
use crate::output::{self, API_VERSION};
use crate::transfer::{self, snapshot, whole, PendingFile};

mod cluster;

/// `kind: UpgradeResult`.
#[derive(Debug, Clone, Serialize)]
pub struct UpgradeResult {
    #[serde(rename = "apiVersion")]
    pub api_version: &'static str,
    pub kind: &'static str,
    pub release: String,
    pub namespace: String,
    /// `Upgraded`, `RolledBack`, `Finalized`, or `Accepted` (a Cluster's unverified upgrade
    /// taken as it is).
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

/// The upgrade lease's permissions: one upgrade (or move) of a release at a time.
const PERMISSION_LEASES: [Permission; 6] = [
    ("coordination.k8s.io", "leases", "get"),
    ("coordination.k8s.io", "leases", "list"),
    ("coordination.k8s.io", "leases", "watch"),
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "update"),
    ("coordination.k8s.io", "leases", "delete"),
];

/// Every permission an upgrade, its automatic rollback and `--finalize` use: checked before
/// writes are blocked, so a missing one changes nothing.
const PERMISSIONS: [Permission; 9] = [
    ("apps", "statefulsets", "get"),
    ("apps", "statefulsets", "patch"),
    ("", "services", "patch"),
    ("", "pods", "get"),
    ("", "pods", "list"),
    ("", "pods", "watch"),
    ("", "pods", "delete"),
    ("", "pods/exec", "get"),
    ("", "pods/exec", "create"),
];

pub async fn run(args: UpgradeArgs, global: &GlobalArgs) -> Result<(), Error> {
    if let Some(image) = &args.image {
        crate::manifests::spec::check_image("--image", image)?;
    }
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
    // The handlers are in place before the first change: a signal at any step is caught.
    let signal = super::interrupted();
    tokio::pin!(signal);
    // Polled once now, so that its handlers are installed before anything else happens.
    let first = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::future::Future::poll(signal.as_mut(), cx))
    })
    .await;
    if let std::task::Poll::Ready(code) = first {
        return Err(Error::Exit(code));
    }
    let cluster = Cluster::connect(&global.connect_options()).await?;
    let found = crate::deployment::kind::resolve(&cluster, args.release.as_deref()).await?;
    if let Some(c) = found.upgraded_by_operator()? {
        return cluster::run(&args, &cluster, c, signal.as_mut()).await;
    }
    let name = found.single_instance("upgrade")?;
    let live = read(&cluster, &name).await?;
    if !release::made_for(&live.sts.metadata, &name) {
        return Err(Error::InvalidInput {
            message: format!("StatefulSet {name} was not made by kubectl-pg: not upgrading it"),
            hint: None,
        });
    }
    rbac::require(
        &cluster,
        &cluster.namespace,
        &[&PERMISSION_LEASES[..], &PERMISSIONS[..]].concat(),
    )
    .await?;
    // One run at a time: a record found under the lease is one no live run is working on.
    let held = lease::acquire(
        &cluster,
        &cluster.namespace,
        &format!("kubectl-pg-upgrade-{name}"),
        &format!("upgrade of release {name}"),
    )
    .await?;
    let done = locked(&args, &cluster, &name, signal.as_mut()).await;
    held.release().await;
    done
}

/// The upgrade, `--rollback` or `--finalize`, under the release's lease.
async fn locked(
    args: &UpgradeArgs,
    cluster: &Cluster,
    name: &str,
    mut signal: std::pin::Pin<&mut impl std::future::Future<Output = u8>>,
) -> Result<(), Error> {
    let name = name.to_string();
    let live = read(cluster, &name).await?;
    let record = Record::read(&live)?;
    if args.finalize {
        let record = record.ok_or_else(|| nothing_pending(&live))?;
        let result = guarded(
            cluster,
            &name,
            signal.as_mut(),
            finalize(cluster, &live, &record, args),
        )
        .await?;
        return print(args, &result);
    }
    if args.rollback {
        let record = record.ok_or_else(|| nothing_pending(&live))?;
        if record.phase == Phase::Finalizing {
            return Err(Error::InvalidInput {
                message: format!(
                    "release {name} was being finalized: the PostgreSQL {} data may be partly deleted, so it cannot be rolled back",
                    record.from_major
                ),
                hint: Some(format!(
                    "finish it: kubectl pg upgrade {name} -n {} --finalize",
                    cluster.namespace
                )),
            });
        }
        // Only after writes were allowed on the new major can a rollback lose anything.
        if record.phase == Phase::Upgraded && !args.yes {
            super::confirm(&format!(
                "Return release {name} to PostgreSQL {} and its data from before the upgrade? Changes made since are lost.",
                record.from_major
            ), "upgrade")?;
        }
        guarded(
            cluster,
            &name,
            signal.as_mut(),
            rollback(cluster, &live, &record, args),
        )
        .await?;
        let result = UpgradeResult {
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
        };
        return print(args, &result);
    }
    let to = args.postgres_version.unwrap_or_default();
    let live = match record {
        None => live,
        Some(record) => match record.phase {
            // Writes are allowed on the new major: a second upgrade waits for the decision.
            Phase::Upgraded => {
                return Err(Error::InvalidInput {
                    message: format!(
                        "release {name} is already in an upgrade from PostgreSQL {} to {}",
                        record.from_major, live.spec.major
                    ),
                    hint: Some(format!(
                    "finish it first: kubectl pg upgrade {name} -n {} --finalize (or --rollback)",
                    cluster.namespace
                )),
                })
            }
            Phase::Finalizing | Phase::RollingBack => {
                let flag = if record.phase == Phase::Finalizing {
                    "--finalize"
                } else {
                    "--rollback"
                };
                return Err(Error::InvalidInput {
                    message: format!(
                        "release {name} has an unfinished upgrade {} (step: {})",
                        flag.trim_start_matches('-'),
                        record.phase.name()
                    ),
                    hint: Some(format!(
                        "finish it: kubectl pg upgrade {name} -n {} {flag}",
                        cluster.namespace
                    )),
                });
            }
            // Verified and still blocked: only the last steps remain.
            Phase::Verified if record.to_major == Some(live.spec.major) => {
                step(&format!(
                    "resuming the upgrade to PostgreSQL {}: it was verified; allowing writes",
                    live.spec.major
                ));
                let result = guarded(
                    cluster,
                    &name,
                    signal.as_mut(),
                    complete(cluster, &live, &record),
                )
                .await?;
                return print(args, &result);
            }
            // Before verification, the old data is the truth: back to it, then start again.
            _ => {
                step(&format!(
                    "an earlier upgrade stopped at step {:?}: returning to PostgreSQL {} before starting again",
                    record.phase.name(),
                    record.from_major
                ));
                guarded(
                    cluster,
                    &name,
                    signal.as_mut(),
                    rollback(cluster, &live, &record, args),
                )
                .await?;
                read(cluster, &name).await?
            }
        },
    };
    let result = upgrade(cluster, &live, args, to, signal.as_mut()).await?;
    print(args, &result)
}

fn print(args: &UpgradeArgs, result: &UpgradeResult) -> Result<(), Error> {
    output::emit_result(args.output, result, summary)
}

async fn read(cluster: &Cluster, name: &str) -> Result<Live, Error> {
    apply::read_live(cluster, name)
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
        })
}

fn nothing_pending(live: &Live) -> Error {
    Error::InvalidInput {
        message: format!(
            "release {} has no major upgrade to finish or undo (it runs PostgreSQL {})",
            live.spec.release, live.spec.major
        ),
        hint: Some(format!(
            "start one with: kubectl pg upgrade {} -n {} --postgres-version N",
            live.spec.release, live.spec.namespace
        )),
    }
}

/// Runs one recorded step sequence (a rollback, a finalize) against the first signal: the
/// step is stopped where it stands, which its record makes resumable, and the command exits
/// 130/143 naming how to go on.
async fn guarded<T>(
    cluster: &Cluster,
    name: &str,
    signal: std::pin::Pin<&mut impl std::future::Future<Output = u8>>,
    work: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let how = format!(
        "the step in progress is recorded on StatefulSet {name}; run the same command again to finish it (kubectl pg status {name} -n {} shows where it stands)",
        cluster.namespace
    );
    super::until_signal(signal, work, &how).await
}

fn summary(r: &UpgradeResult) -> String {
    match r.result {
        "Upgraded" => {
            let mut text = format!(
                "release {} upgraded from PostgreSQL {} to {} ({}): {} tables verified{}\nbackup: {}\n",
                r.release,
                r.from_major,
                r.to_major,
                r.image,
                r.tables_verified.unwrap_or_default(),
                r.downtime_ms.map_or(String::new(), |ms| format!(
                    ", downtime {:.1}s",
                    ms as f64 / 1000.0
                )),
                r.backup_file.as_deref().unwrap_or("-"),
            );
            if let Some(dir) = &r.old_data_dir {
                text.push_str(&format!(
                    "old data kept in {dir} until: kubectl pg upgrade {} -n {} --finalize (or --rollback)\n",
                    r.release, r.namespace
                ));
            }
            text
        }
        "RolledBack" => format!(
            "release {} is back on PostgreSQL {} ({}) with its data from before the upgrade\n",
            r.release, r.to_major, r.image
        ),
        "Accepted" => format!(
            "release {} takes writes on PostgreSQL {} as it is; the data from before the upgrade is in {}\n",
            r.release,
            r.to_major,
            r.backup_file.as_deref().unwrap_or("-")
        ),
        _ => format!(
            "release {} stays on PostgreSQL {}: the old data directory was deleted\n",
            r.release, r.to_major
        ),
    }
}

/// The steps of an upgrade, each recorded on the StatefulSet before it acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Writes are being blocked on the old server and the backup written; the old template
    /// runs. Undone by allowing writes again.
    Blocking,
    /// The new major's template is applied and the backup is being restored into it; writes
    /// stay blocked. Undone by a rollback to the old data, which nothing has touched.
    Switching,
    /// The new server holds the verified data; writes still blocked.
    Verified,
    /// Writes are allowed on the new major; the old data is kept until --finalize.
    Upgraded,
    /// --rollback is returning to the old major.
    RollingBack,
    /// --finalize is deleting the old data.
    Finalizing,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Blocking => "blocking-writes",
            Phase::Switching => "switching",
            Phase::Verified => "verified",
            Phase::Upgraded => "upgraded",
            Phase::RollingBack => "rolling-back",
            Phase::Finalizing => "finalizing",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [
            Phase::Blocking,
            Phase::Switching,
            Phase::Verified,
            Phase::Upgraded,
            Phase::RollingBack,
            Phase::Finalizing,
        ]
        .into_iter()
        .find(|p| p.name() == name)
    }
}

/// What a pending upgrade recorded on the StatefulSet, to go on from or back to.
#[derive(Debug, Clone)]
struct Record {
    phase: Phase,
    from_major: u32,
    from_image: String,
    from_layout: DataLayout,
    /// The old data directory, relative to the volume's root.
    old_data: String,
    /// The old cluster's system identifier: a rollback proves it finds that data, not a
    /// directory initdb made anew.
    old_system: Option<String>,
    to_major: Option<u32>,
    to_image: Option<String>,
    backup: Option<String>,
}

impl Record {
    /// The record on the live StatefulSet, if an upgrade is pending. A record written before
    /// phases were recorded is one whose writes were allowed again: `Upgraded`.
    fn read(live: &Live) -> Result<Option<Self>, Error> {
        let Some(from_major) = release::pending_upgrade(&live.sts) else {
            return Ok(None);
        };
        let annotations = live.sts.metadata.annotations.clone().unwrap_or_default();
        let get = |k: &str| annotations.get(k).cloned();
        let broken = |what: &str| {
            Error::invalid(format!(
                "the upgrade record on StatefulSet {} lacks {what}: inspect its kubectl-pg.io/upgrade-* annotations",
                live.spec.release
            ))
        };
        Ok(Some(Self {
            phase: get(release::ANNOTATION_UPGRADE_PHASE)
                .map(|p| Phase::from_name(&p).ok_or_else(|| broken("a known phase")))
                .transpose()?
                .unwrap_or(Phase::Upgraded),
            from_major,
            from_image: get(release::ANNOTATION_UPGRADE_FROM_IMAGE)
                .or_else(|| pinned_image(from_major).map(str::to_string))
                .ok_or_else(|| broken("the old image"))?,
            from_layout: get(release::ANNOTATION_UPGRADE_FROM_LAYOUT)
                .and_then(|l| DataLayout::from_name(&l))
                .unwrap_or(DataLayout::default_for(from_major)),
            old_data: get(release::ANNOTATION_UPGRADE_OLD_DATA)
                .ok_or_else(|| broken("the old data directory"))?,
            old_system: get(release::ANNOTATION_UPGRADE_OLD_SYSTEM),
            to_major: get(release::ANNOTATION_UPGRADE_TO_MAJOR).and_then(|m| m.parse().ok()),
            to_image: get(release::ANNOTATION_UPGRADE_TO_IMAGE),
            backup: get(release::ANNOTATION_UPGRADE_BACKUP),
        }))
    }

    fn annotations(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            (release::ANNOTATION_UPGRADE_PHASE, self.phase.name().into()),
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
        let optional = [
            (
                release::ANNOTATION_UPGRADE_OLD_SYSTEM,
                self.old_system.clone(),
            ),
            (
                release::ANNOTATION_UPGRADE_TO_MAJOR,
                self.to_major.map(|m| m.to_string()),
            ),
            (release::ANNOTATION_UPGRADE_TO_IMAGE, self.to_image.clone()),
            (release::ANNOTATION_UPGRADE_BACKUP, self.backup.clone()),
        ];
        out.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
        out
    }

    /// The old major's spec, from the release's current one.
    fn old_spec(&self, current: &InstallSpec) -> InstallSpec {
        InstallSpec {
            major: self.from_major,
            image: self.from_image.clone(),
            layout: self.from_layout,
            ..current.clone()
        }
    }

    /// The new major's spec: its image, and a data directory of its own on the volume.
    fn new_spec(&self, current: &InstallSpec) -> Option<InstallSpec> {
        let major = self.to_major?;
        Some(InstallSpec {
            major,
            image: self
                .to_image
                .clone()
                .or_else(|| pinned_image(major).map(str::to_string))?,
            layout: DataLayout::Versioned,
            ..current.clone()
        })
    }
}

/// Records `record` (its phase included) with `spec`'s template: server-side apply of the
/// whole release, so the record and the template it describes change in one write.
async fn record_step(
    cluster: &Cluster,
    spec: &InstallSpec,
    live: &Live,
    record: &Record,
) -> Result<(), Error> {
    let templates = manifests::live::claim_templates(&live.sts);
    apply::apply_release(cluster, spec, templates.as_ref(), &record.annotations()).await
}

/// Removes the record: the release is `spec`, with no upgrade pending.
async fn clear_record(cluster: &Cluster, spec: &InstallSpec, live: &Live) -> Result<(), Error> {
    let templates = manifests::live::claim_templates(&live.sts);
    apply::apply_release(cluster, spec, templates.as_ref(), &[]).await
}

async fn upgrade(
    cluster: &Cluster,
    live: &Live,
    args: &UpgradeArgs,
    to: u32,
    mut signal: std::pin::Pin<&mut impl std::future::Future<Output = u8>>,
) -> Result<UpgradeResult, Error> {
    let old = &live.spec;
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
        .unwrap_or_else(|| whole::default_backup(&old.release, &old.namespace, old.major));
    if !args.yes {
        super::confirm(&format!(
            "Upgrade release {} in namespace {} from PostgreSQL {} to {to}? Writes stop until it is done.",
            old.release, old.namespace, old.major
        ), "upgrade")?;
    }
    let image = args
        .image
        .clone()
        .unwrap_or_else(|| pinned_image(to).unwrap_or_default().to_string());
    let mut record = Record {
        phase: Phase::Blocking,
        from_major: old.major,
        from_image: old.image.clone(),
        from_layout: old.layout,
        old_data: old.layout.data_dir(old.major),
        old_system: None,
        to_major: Some(to),
        to_image: Some(image),
        backup: Some(whole::absolute(&backup_path)),
    };
    let new = record
        .new_spec(old)
        .ok_or_else(|| Error::invalid("no image for the new major"))?;
    if record.old_data == new.layout.data_dir(to) {
        return Err(Error::invalid(
            "the new data directory would be the old one: refusing",
        ));
    }
    // Nothing is changed before the backup file can be written.
    let pending = PendingFile::create_regular(&backup_path)?;
    record.old_system = Some(writes::system_identifier(cluster, &target).await?);

    // Step 1: writes blocked, the backup written. Undone by allowing writes again. Recorded
    // only on the StatefulSet this run read: of two runs at once, one goes on.
    let templates = manifests::live::claim_templates(&live.sts);
    apply::apply_release_at(
        cluster,
        old,
        templates.as_ref(),
        &record.annotations(),
        live.sts.metadata.resource_version.as_deref(),
    )
    .await
    .map_err(|e| match e {
        Error::Api { message, .. } | Error::InvalidInput { message, .. }
            if message.contains("the object has been modified") =>
        {
            Error::InvalidInput {
                message: format!(
                    "StatefulSet {} changed while this upgrade started (another upgrade or install at the same time): nothing was changed",
                    old.release
                ),
                hint: Some(format!(
                    "see where it stands: kubectl pg status {} -n {}",
                    old.release, old.namespace
                )),
            }
        }
        other => other,
    })?;
    step(&format!("blocking writes on PostgreSQL {}", old.major));
    let downtime = Instant::now();
    let prepared = async {
        writes::block(cluster, &target).await?;
        whole::snapshot_and_backup(cluster, &target, pending, &backup_path).await
    };
    let prepared = tokio::select! {
        done = prepared => done,
        code = signal.as_mut() => Err(Error::Exit(code)),
    };
    let (before, backup_bytes) = match prepared {
        Ok(done) => done,
        Err(e) => {
            step("allowing writes again: nothing else was changed");
            let undo = async {
                writes::unblock(cluster, &target, None).await?;
                clear_record(cluster, old, live).await
            };
            return Err(after_cleanup(e, undo, &old.release, &old.namespace).await);
        }
    };
    step(&format!(
        "backup complete: {} ({})",
        backup_path.display(),
        transfer::human_bytes(backup_bytes)
    ));

    // Step 2: the switch. From here on, any failure returns to the old major and data.
    let new_dir = format!("{}/{}", old.layout.mount(), new.layout.data_dir(to));
    let switched = async {
        // A leftover of an earlier attempt, never the live data (that is the old directory).
        let leftover = remove_in_pod(cluster, &target, &new_dir).await?;
        if !leftover.success {
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
        record.phase = Phase::Switching;
        record_step(cluster, &new, live, &record).await?;
        crate::deployment::rollout::wait_ready(
            cluster,
            &new.namespace,
            &new.release,
            args.timeout,
            true,
        )
        .await?;
        let target = release::find_target(cluster, &new.release).await?;
        // The new server is blocked before any data reaches it, until it is verified.
        writes::block(cluster, &target).await?;
        step(&format!("restoring the backup into PostgreSQL {to}"));
        whole::restore_all(
            cluster,
            &target,
            &backup_path,
            &[target.credentials.username.as_str()],
            &old.database,
        )
        .await?;
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
        record.phase = Phase::Verified;
        record_step(cluster, &new, live, &record).await?;
        Ok::<_, Error>(snapshot::tables(&after))
    };
    let switched = tokio::select! {
        done = switched => done,
        code = signal.as_mut() => Err(Error::Exit(code)),
    };
    let tables = match switched {
        Ok(tables) => tables,
        Err(e) => {
            if !matches!(e, Error::Exit(_)) {
                crate::note!("the new major failed: {e}");
                for hint in e.hints() {
                    crate::note!("hint: {hint}");
                }
            }
            step(&format!("rolling back to PostgreSQL {}", old.major));
            let undo = async {
                let current = read(cluster, &old.release).await?;
                let record = Record::read(&current)?.unwrap_or(record.clone());
                rollback(cluster, &current, &record, args).await
            };
            let e = match e {
                Error::Exit(code) => Error::Exit(code),
                _ => Error::Deployment {
                    message: format!(
                        "the upgrade to PostgreSQL {to} failed and was rolled back: release {} runs PostgreSQL {} with its data as before",
                        old.release, old.major
                    ),
                    hints: vec![format!("the backup stays at {}", backup_path.display())],
                    code: 5,
                },
            };
            return Err(after_cleanup(e, undo, &old.release, &old.namespace).await);
        }
    };

    // Step 3: writes allowed on the verified new major.
    let current = read(cluster, &old.release).await?;
    let mut result = complete(cluster, &current, &record).await?;
    let downtime_ms = downtime.elapsed().as_millis() as u64;
    step(&format!(
        "done: downtime {:.1}s",
        downtime_ms as f64 / 1000.0
    ));
    result.backup_bytes = Some(backup_bytes);
    result.downtime_ms = Some(downtime_ms);
    result.tables_verified = Some(tables);
    Ok(result)
}

/// Runs `undo` after `e` stopped a step, bounded by a second signal: the error is `e` when
/// the undo worked, else one that says what is left and how to finish it.
async fn after_cleanup(
    e: Error,
    undo: impl std::future::Future<Output = Result<(), Error>>,
    release: &str,
    namespace: &str,
) -> Error {
    let finish = format!("kubectl pg upgrade {release} -n {namespace} --rollback");
    let undone = tokio::select! {
        done = undo => done,
        code = super::interrupted() => {
            crate::note!("interrupted again: the upgrade stays recorded; finish it with: {finish}");
            return Error::Exit(code);
        }
    };
    match undone {
        Ok(()) => e,
        Err(undo_error) => {
            crate::note!("{e}");
            Error::Deployment {
                message: format!("the upgrade stopped and could not be undone: {undo_error}"),
                hints: vec![
                    format!(
                        "every step is recorded on StatefulSet {release}: finish with {finish}"
                    ),
                    format!("kubectl pg status {release} -n {namespace} shows where it stands"),
                ],
                code: 5,
            }
        }
    }
}

/// The last steps on a verified new major: writes allowed (with the old major's pg_hba rules),
/// a health check with the apps' credentials, and the record marked `Upgraded`.
async fn complete(cluster: &Cluster, live: &Live, record: &Record) -> Result<UpgradeResult, Error> {
    let spec = &live.spec;
    let target = release::find_target(cluster, &spec.release).await?;
    let old_hba = format!("{}/{}/pg_hba.conf", spec.layout.mount(), record.old_data);
    writes::unblock(cluster, &target, Some(&old_hba)).await?;
    let mut record = record.clone();
    record.phase = Phase::Upgraded;
    record_step(cluster, spec, live, &record).await?;
    apply::health_check(cluster, spec, &target.credentials).await?;
    release::record_claim_major(
        cluster,
        &spec.namespace,
        &render::data_pvc_name(spec),
        spec.major,
    )
    .await;
    Ok(UpgradeResult {
        api_version: API_VERSION,
        kind: "UpgradeResult",
        release: spec.release.clone(),
        namespace: spec.namespace.clone(),
        result: "Upgraded",
        from_major: record.from_major,
        to_major: spec.major,
        image: spec.image.clone(),
        backup_file: record.backup.clone(),
        backup_bytes: None,
        downtime_ms: None,
        tables_verified: None,
        old_data_dir: Some(record.old_data.clone()),
    })
}

/// Back to the recorded major, image and layout, whose data directory the upgrade never
/// touched; writes allowed there again. The new major's directory is deleted last, and only
/// once the old server runs with its own data (the recorded system identifier).
async fn rollback(
    cluster: &Cluster,
    live: &Live,
    record: &Record,
    args: &UpgradeArgs,
) -> Result<(), Error> {
    let current = &live.spec;
    let old = record.old_spec(current);
    if record.phase == Phase::Blocking {
        // Never switched: the old server runs; only the block is undone.
        let target = apply::socket_target(current);
        writes::unblock(cluster, &target, None).await?;
        clear_record(cluster, current, live).await?;
        step(&format!(
            "release {} runs PostgreSQL {} and allows writes again",
            current.release, current.major
        ));
        return Ok(());
    }
    // The old data must be there before anything switches: an empty directory would be
    // initialised anew by the image's entrypoint. A pod that cannot be reached (crash-looping)
    // is checked after the switch, by the system identifier.
    let old_dir = format!("{}/{}", current.layout.mount(), record.old_data);
    if current.major != record.from_major {
        let probe = exec::run(
            cluster,
            &current.namespace,
            &release::pod_name(&current.release),
            CONTAINER,
            &["cat", &format!("{old_dir}/PG_VERSION")],
            "",
        )
        .await;
        let missing = |found: String| {
            Error::Deployment {
            message: format!(
                "the PostgreSQL {} data directory {old_dir} is missing or not that major's ({found}): rolling back would start an empty server; release {} stays on PostgreSQL {}",
                record.from_major, current.release, current.major
            ),
            hints: vec![format!(
                "the backup taken before the upgrade: {}",
                record.backup.as_deref().unwrap_or("-")
            )],
            code: 5,
        }
        };
        match probe {
            Ok(out) if out.success && out.stdout.trim() == record.from_major.to_string() => {}
            Ok(out) if out.success => {
                return Err(missing(format!("PG_VERSION {}", out.stdout.trim())))
            }
            Ok(out) if out.stderr.contains("No such file") => return Err(missing(out.reason())),
            // No exec into the pod (not running): the identifier decides after the switch.
            _ => {}
        }
    }
    let mut rolling = record.clone();
    rolling.phase = Phase::RollingBack;
    record_step(cluster, &old, live, &rolling).await?;
    step(&format!(
        "switched back to PostgreSQL {} ({}), whose data in {} the upgrade never touched; waiting for it",
        record.from_major, record.from_image, record.old_data
    ));
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
            let switched = read(cluster, &old.release).await?;
            crate::deployment::rollout::template_observed(
                cluster,
                &old.namespace,
                &old.release,
                switched.sts.metadata.generation,
                args.timeout,
            )
            .await;
            let _ = pods
                .delete(&pod_name, &release::delete_only(pod.metadata.uid.clone()))
                .await;
        }
    }
    crate::deployment::rollout::wait_ready(
        cluster,
        &old.namespace,
        &old.release,
        args.timeout,
        true,
    )
    .await?;
    let target = release::find_target(cluster, &old.release).await?;
    step(&format!(
        "PostgreSQL {} is ready: checking that it runs on the data from before the upgrade",
        record.from_major
    ));
    // Proven before anything is deleted: the server runs on the data from before.
    let system = writes::system_identifier(cluster, &target).await?;
    if let Some(recorded) = record.old_system.as_deref() {
        if system != recorded {
            let new = record.new_spec(current);
            let back = match &new {
                Some(new) => {
                    let mut keep = record.clone();
                    keep.phase = match record.phase {
                        Phase::Upgraded | Phase::Verified => record.phase,
                        _ => Phase::Switching,
                    };
                    let now = read(cluster, &old.release).await?;
                    record_step(cluster, new, &now, &keep).await.is_ok()
                }
                None => false,
            };
            return Err(Error::Deployment {
                message: format!(
                    "the PostgreSQL {} server found no data from before the upgrade (system identifier {system}, recorded {recorded}): nothing was deleted{}",
                    record.from_major,
                    if back { "; the release is switched back to the new major's data" } else { "" }
                ),
                hints: vec![format!(
                    "the backup taken before the upgrade: {}",
                    record.backup.as_deref().unwrap_or("-")
                )],
                code: 5,
            });
        }
    }
    writes::unblock(cluster, &target, None).await?;
    // The new major's directory, seen from the old layout's mount: deleted last.
    if let Some(to) = record
        .to_major
        .or((current.major != record.from_major).then_some(current.major))
    {
        let dir = format!("{}/{}", record.from_layout.mount(), to);
        if to != record.from_major && DataLayout::Versioned.data_dir(to) != record.old_data {
            step(&format!(
                "writes allowed; deleting the PostgreSQL {to} data directory"
            ));
            let _ = remove_in_pod(cluster, &target, &dir).await;
        }
    }
    release::record_claim_major(
        cluster,
        &old.namespace,
        &render::data_pvc_name(&old),
        record.from_major,
    )
    .await;
    let now = read(cluster, &old.release).await?;
    clear_record(cluster, &old, &now).await?;
    step(&format!(
        "release {} runs PostgreSQL {} again",
        old.release, record.from_major
    ));
    Ok(())
}

/// Deletes the old data directory, then the rollback record: the new major stays. Every
/// permission is checked first, and the record says `finalizing` before anything is deleted,
/// so a rollback can never switch to a directory that is partly gone.
async fn finalize(
    cluster: &Cluster,
    live: &Live,
    record: &Record,
    args: &UpgradeArgs,
) -> Result<UpgradeResult, Error> {
    let spec = &live.spec;
    match record.phase {
        Phase::Upgraded | Phase::Finalizing | Phase::Verified => {}
        phase => {
            return Err(Error::InvalidInput {
                message: if phase == Phase::RollingBack {
                    format!(
                        "release {} is being rolled back to PostgreSQL {}: there is nothing to finalize",
                        spec.release, record.from_major
                    )
                } else {
                    format!(
                        "release {}'s upgrade stopped before its verification (step: {}): there is nothing to finalize",
                        spec.release,
                        phase.name()
                    )
                },
                hint: Some(format!(
                    "return to PostgreSQL {} with --rollback, or run the upgrade again",
                    record.from_major
                )),
            })
        }
    }
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
    if record.phase == Phase::Verified {
        step("the upgrade was verified but writes were still blocked: allowing them");
        complete(cluster, live, record).await?;
    }
    let live = read(cluster, &spec.release).await?;
    let mut finalizing = record.clone();
    finalizing.phase = Phase::Finalizing;
    record_step(cluster, spec, &live, &finalizing).await?;
    let target = release::find_target(cluster, &spec.release).await?;
    let dir = format!("{}/{top}", spec.layout.mount());
    step(&format!(
        "finalizing: deleting {dir}, the PostgreSQL {} data",
        record.from_major
    ));
    let out = remove_in_pod(cluster, &target, &dir).await?;
    if !out.success {
        return Err(Error::Tool {
            tool: "rm".into(),
            message: format!("cannot delete {dir}: {}", out.reason()),
            hints: vec![format!(
                "run the same command again to finish: kubectl pg upgrade {} -n {} --finalize",
                spec.release, spec.namespace
            )],
        });
    }
    let live = read(cluster, &spec.release).await?;
    clear_record(cluster, spec, &live).await?;
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
        backup_file: record.backup.clone(),
        backup_bytes: None,
        downtime_ms: None,
        tables_verified: None,
        old_data_dir: None,
    })
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
    fn every_phase_reads_back_from_its_name() {
        for phase in [
            Phase::Blocking,
            Phase::Switching,
            Phase::Verified,
            Phase::Upgraded,
            Phase::RollingBack,
            Phase::Finalizing,
        ] {
            assert_eq!(Phase::from_name(phase.name()), Some(phase));
        }
        assert_eq!(Phase::from_name("done"), None);
    }
}
