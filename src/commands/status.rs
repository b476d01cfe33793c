//! `kubectl pg status`: one release in detail, or every release as a table; `--wait` for a phase.

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::jiff::Timestamp;
use owo_colors::Stream;

use crate::cli::{GlobalArgs, OutputFormat, StatusArgs, WaitFor};
use crate::cluster::release;
use crate::cluster::Cluster;
use crate::deployment::assess::{Assessment, Severity};
use crate::deployment::probe::{self, DbCheck};
use crate::deployment::report::{DeploymentStatus, DeploymentStatusList};
use crate::deployment::{assess, observe, Phase};
use crate::error::Error;
use crate::migration::MigrationSet;
use crate::output::{self, emit, paint, Tone};

/// How long the database check may take before the view is shown without it.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn run(args: StatusArgs, global: &GlobalArgs) -> Result<(), Error> {
    let cluster = Cluster::connect(&global.connect_options()).await?;
    let set = MigrationSet::load(args.dir.as_deref())?;
    if let Some(release) = &args.release {
        release::validate_release(release)?;
    }
    release::validate_namespace(&cluster.namespace)?;
    let single = match (&args.release, args.all_namespaces) {
        (Some(r), _) => Some(r.clone()),
        (None, true) => None,
        (None, false) => {
            let releases = observe::list_releases(&cluster, false).await?;
            match releases.len() {
                0 => Some(release::DEFAULT_RELEASE.to_string()),
                1 => Some(releases[0].1.clone()),
                _ => None,
            }
        }
    };
    let Some(release) = single else {
        if args.wait.is_some() {
            return Err(Error::invalid("--wait needs one release: name it"));
        }
        return list(&cluster, &set, args.all_namespaces, args.output).await;
    };
    let namespace = cluster.namespace.clone();
    match args.wait {
        None => {
            let status = read(&cluster, &namespace, &release, &set).await?.0;
            render_one(&status, args.output)
        }
        Some(want) => {
            wait(
                &cluster,
                &namespace,
                &release,
                &set,
                want,
                args.timeout,
                args.output,
            )
            .await
        }
    }
}

/// Observes, probes the database when the pod is ready, and assesses one release.
pub async fn read(
    cluster: &Cluster,
    namespace: &str,
    release: &str,
    set: &MigrationSet,
) -> Result<(DeploymentStatus, Assessment), Error> {
    let (observed, users) = tokio::join!(
        observe::observe(cluster, namespace, release),
        crate::commands::user::summaries(cluster, namespace, release)
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
async fn assess_observed(
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

/// Database probes at once in a listing: enough to hide their round trips (measured at 30
/// releases: 406 ms with 8 at once, 373 with 16, 348 with 30), few enough not to open a
/// port-forward per release of a large fleet together.
const PROBES_AT_ONCE: usize = 32;

async fn list(
    cluster: &Cluster,
    set: &MigrationSet,
    all: bool,
    format: OutputFormat,
) -> Result<(), Error> {
    use futures_util::StreamExt;
    let observed = observe::observe_all(cluster, all).await?;
    // `buffered` keeps the listing's order.
    let items: Vec<DeploymentStatus> = futures_util::stream::iter(observed)
        .map(|o| assess_observed(cluster, o, set, probe::Depth::Brief))
        .buffered(PROBES_AT_ONCE)
        .map(|(status, _)| status)
        .collect()
        .await;
    if let Some(text) = output::document(format, &DeploymentStatusList::new(items.clone()))? {
        emit(&text);
        return Ok(());
    }
    if items.is_empty() {
        let scope = if all {
            "any namespace".to_string()
        } else {
            format!("namespace {:?}", cluster.namespace)
        };
        crate::note!("No releases found in {scope}.");
        return Ok(());
    }
    let wide = format == OutputFormat::Wide;
    let mut headers = Vec::new();
    if all {
        headers.push("NAMESPACE");
    }
    headers.extend([
        "NAME",
        "PHASE",
        "READY",
        "PVC",
        "DATABASE",
        "MIGRATIONS",
        "LAST UPDATED",
    ]);
    if wide {
        headers.extend(["IMAGE", "SERVICE", "ENDPOINT", "PROBLEMS"]);
    }
    let rows = items
        .iter()
        .map(|s| {
            let mut row = Vec::new();
            if all {
                row.push(s.namespace.clone());
            }
            row.extend([
                s.release.clone(),
                paint(&s.phase, phase_tone(&s.phase), Stream::Stdout),
                format!("{}/{}", s.pods_ready, s.pods_total),
                s.pvc
                    .as_ref()
                    .map_or_else(|| "-".into(), |p| p.phase.clone()),
                if s.database_accessible {
                    s.round_trip_ms
                        .map_or_else(|| "ok".into(), |ms| format!("ok ({ms} ms)"))
                } else {
                    "-".into()
                },
                match (s.migrations_applied_count, &s.migrations_pending) {
                    (0, None) => "-".into(),
                    (n, Some(p)) => format!("{n} ({p} pending)"),
                    (n, None) => n.to_string(),
                },
                s.last_updated.clone().unwrap_or_else(|| "-".into()),
            ]);
            if wide {
                row.extend([
                    s.image.clone().unwrap_or_else(|| "-".into()),
                    s.service_type.clone().unwrap_or_else(|| "-".into()),
                    s.endpoint.clone().unwrap_or_else(|| "-".into()),
                    s.problems.len().to_string(),
                ]);
            }
            row
        })
        .collect();
    emit(&output::table(&headers, rows));
    Ok(())
}

fn phase_tone(phase: &str) -> Tone {
    match phase {
        "Healthy" => Tone::Good,
        "Ready" | "Deploying" => Tone::Warn,
        "Failed" => Tone::Bad,
        _ => Tone::Dim,
    }
}

/// Prints one release: the document for json/yaml, else an aligned view.
pub fn render_one(status: &DeploymentStatus, format: OutputFormat) -> Result<(), Error> {
    if let Some(text) = output::document(format, status)? {
        emit(&text);
        return Ok(());
    }
    emit(&detail_view(status, format == OutputFormat::Wide));
    Ok(())
}

/// `requested 10Gi, capacity 8Gi (Resizing), used 48.0 MiB of 7.8 GiB (1%)`
fn storage_line(p: &crate::deployment::report::PvcInfo) -> String {
    let mut parts = vec![format!(
        "requested {}, capacity {}",
        p.requested.as_deref().unwrap_or("-"),
        p.capacity.as_deref().unwrap_or("-")
    )];
    if let Some(r) = &p.resizing {
        parts[0].push_str(&format!(" ({r})"));
    }
    if let Some(u) = &p.usage {
        let percent = (u.used_bytes as f64 * 100.0 / (u.total_bytes.max(1)) as f64).round();
        parts.push(format!(
            "used {} of {} ({percent}%)",
            crate::transfer::human_bytes(u.used_bytes),
            crate::transfer::human_bytes(u.total_bytes)
        ));
    }
    parts.join(", ")
}

fn detail_view(s: &DeploymentStatus, wide: bool) -> String {
    let dash = || "-".to_string();
    let mut rows: Vec<(&str, String)> = vec![
        ("Release", s.release.clone()),
        ("Namespace", s.namespace.clone()),
        (
            "Phase",
            paint(&s.phase, phase_tone(&s.phase), Stream::Stdout),
        ),
        (
            "Pods",
            format!(
                "{}/{} ready ({} restarts)",
                s.pods_ready, s.pods_total, s.restarts
            ),
        ),
        (
            "PVC",
            s.pvc.as_ref().map_or_else(dash, |p| {
                format!(
                    "{} {} {} ({})",
                    p.name,
                    p.phase,
                    p.size.clone().unwrap_or_default(),
                    p.storage_class
                        .clone()
                        .unwrap_or_else(|| "default class".into())
                )
            }),
        ),
        ("Storage", s.pvc.as_ref().map_or_else(dash, storage_line)),
        (
            "Database",
            if s.database_accessible {
                format!(
                    "accessible, {} ms round trip, PostgreSQL {}",
                    s.round_trip_ms.unwrap_or_default(),
                    s.server_version.clone().unwrap_or_default()
                )
            } else {
                "not accessible".into()
            },
        ),
        (
            "Migrations",
            match &s.migrations_pending {
                Some(pending) => format!(
                    "{} applied (latest {}), {pending} pending",
                    s.migrations_applied_count,
                    s.latest_migration.clone().unwrap_or_else(|| "none".into())
                ),
                None => dash(),
            },
        ),
        (
            "Databases",
            if s.database_sizes.is_empty() {
                dash()
            } else {
                s.database_sizes
                    .iter()
                    .map(|d| format!("{} {}", d.name, crate::transfer::human_bytes(d.bytes)))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        ("Image", s.image.clone().unwrap_or_else(dash)),
        (
            "Service",
            match (&s.service_type, &s.endpoint) {
                (Some(t), Some(e)) => format!("{t} {e}"),
                _ => dash(),
            },
        ),
        (
            "Connection",
            s.connection_string.clone().unwrap_or_else(dash),
        ),
        (
            "TLS",
            if s.tls {
                format!(
                    "on (Secret {}-tls; clients outside the pod need it)",
                    s.release
                )
            } else {
                "off".into()
            },
        ),
        (
            "Users",
            if s.users.is_empty() {
                dash()
            } else {
                s.users
                    .iter()
                    .map(|u| {
                        if u.readonly {
                            format!("{} (readonly)", u.name)
                        } else {
                            u.name.clone()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        ("Last updated", s.last_updated.clone().unwrap_or_else(dash)),
    ];
    if !wide {
        rows.retain(|(k, _)| *k != "Last updated" || s.phase != "NotDeployed");
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 2;
    let mut out: String = rows
        .iter()
        .map(|(k, v)| format!("{:<width$}{v}\n", format!("{k}:")))
        .collect();
    if s.phase == "NotDeployed" {
        out.push_str(&format!(
            "\nNothing deployed. Install it with: kubectl pg install {} -n {}\n",
            s.release, s.namespace
        ));
    }
    if !s.problems.is_empty() {
        out.push_str("\nProblems:\n");
        for p in &s.problems {
            let (mark, tone) = match p.severity {
                Severity::Error => ("error", Tone::Bad),
                Severity::Warning => ("warning", Tone::Warn),
            };
            out.push_str(&format!(
                "  {} {}: {}\n",
                paint(mark, tone, Stream::Stdout),
                p.reason,
                p.message
            ));
            if let Some(hint) = &p.hint {
                out.push_str(&format!("    hint: {hint}\n"));
            }
        }
    }
    out
}

/// Waits, driven by watches on the release's pods, PVCs and events, until the release reaches
/// `want` (exit 0), fails (exit 5), or the timeout passes (exit 4).
pub async fn wait(
    cluster: &Cluster,
    namespace: &str,
    release: &str,
    set: &MigrationSet,
    want: WaitFor,
    timeout: Duration,
    format: OutputFormat,
) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    let selector = release::selector(release);
    let mut changes = crate::deployment::changes::changes(cluster, namespace, release);
    let mut last_line = String::new();
    loop {
        let (status, assessment) = read(cluster, namespace, release, set).await?;
        let reached = match want {
            WaitFor::Ready => matches!(assessment.phase, Phase::Ready | Phase::Healthy),
            WaitFor::Healthy => assessment.phase == Phase::Healthy,
        };
        if reached {
            return render_one(&status, format);
        }
        if assessment.phase == Phase::Failed {
            render_one(&status, format)?;
            let failure = assessment
                .failure()
                .map(|p| p.message.clone())
                .unwrap_or_default();
            return Err(Error::Deployment {
                message: format!("release {release} failed: {failure}"),
                hints: assessment
                    .failure()
                    .and_then(|p| p.hint.clone())
                    .into_iter()
                    .collect(),
                code: 5,
            });
        }
        let line = format!(
            "waiting for {release} to be {want:?}: phase {}",
            status.phase
        );
        if line != last_line {
            crate::note!("{line}");
            last_line = line;
        }
        // A ready pod whose database does not answer yet changes no object: look again soon.
        let recheck = tokio::time::sleep(Duration::from_millis(500));
        tokio::select! {
            _ = changes.next() => {}
            _ = recheck, if assessment.phase == Phase::Ready => {}
            _ = tokio::time::sleep_until(deadline) => {
                render_one(&status, format)?;
                return Err(Error::Deployment {
                    message: format!(
                        "timed out after {}s waiting for release {release} to be {want:?} (phase {})",
                        timeout.as_secs(),
                        status.phase
                    ),
                    hints: vec![format!("see what it is waiting for: kubectl describe pod -l {selector} -n {namespace}")],
                    code: 4,
                });
            }
        }
    }
}
