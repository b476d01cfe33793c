//! What several commands show and wait for alike: one release's status view (`status`,
//! `install`'s summary) and the watched wait for a phase (`status --wait`, `restart`). Not a
//! command: the commands share it, as they share the domain.

use std::time::Duration;

use futures_util::StreamExt;
use owo_colors::Stream;

use crate::cli::{OutputFormat, WaitFor};
use crate::cluster::Cluster;
use crate::deployment::assess::Severity;
use crate::deployment::kind::Release;
use crate::deployment::report::DeploymentStatus;
use crate::error::Error;
use crate::migration::MigrationSet;
use crate::output::{self, emit, paint, Tone};

/// The colour of a phase in a view or a table.
pub fn phase_tone(phase: &str) -> Tone {
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
            if s.tls && s.instances.len() > 1 {
                "on".to_string()
            } else if s.tls {
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
    // Several instances: each one's role, readiness and replication, as the primary sees it.
    if s.instances.len() > 1 {
        out.push_str("\nInstances:\n");
        let rows = s
            .instances
            .iter()
            .map(|i| {
                vec![
                    i.name.clone(),
                    i.role.clone(),
                    if i.ready { "yes" } else { "no" }.to_string(),
                    i.replication.clone().unwrap_or_else(|| "-".into()),
                    i.lag_bytes.map_or_else(|| "-".into(), |b| b.to_string()),
                ]
            })
            .collect();
        let table = output::table(
            &["NAME", "ROLE", "READY", "REPLICATION", "LAG (BYTES)"],
            rows,
        );
        for line in table.lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
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

/// Waits, driven by watches on the release's objects (a StatefulSet's pods, PVCs and events; a
/// Cluster and its pods), until the release reaches `want` (exit 0), fails (exit 5), or the
/// timeout passes (exit 4).
pub async fn wait(
    cluster: &Cluster,
    release: &Release,
    set: &MigrationSet,
    want: WaitFor,
    timeout: Duration,
    format: OutputFormat,
) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    let name = release.name().to_string();
    let mut changes = release.changes(cluster);
    let mut last_line = String::new();
    loop {
        let status = release.current(cluster).await?.status(cluster, set).await?;
        let reached = match want {
            WaitFor::Ready => matches!(status.phase.as_str(), "Ready" | "Healthy"),
            WaitFor::Healthy => status.phase == "Healthy",
        };
        if reached {
            return render_one(&status, format);
        }
        if status.phase == "Failed" {
            render_one(&status, format)?;
            let failure = status
                .problems
                .iter()
                .find(|p| p.severity == Severity::Error);
            return Err(Error::Deployment {
                message: format!(
                    "release {name} failed: {}",
                    failure.map(|p| p.message.clone()).unwrap_or_default()
                ),
                hints: failure.and_then(|p| p.hint.clone()).into_iter().collect(),
                code: 5,
            });
        }
        let line = format!("waiting for {name} to be {want:?}: phase {}", status.phase);
        if line != last_line {
            crate::note!("{line}");
            last_line = line;
        }
        // A ready pod whose database does not answer yet changes no object: look again soon.
        let recheck = tokio::time::sleep(Duration::from_millis(500));
        tokio::select! {
            _ = changes.next() => {}
            _ = recheck, if status.phase == "Ready" => {}
            _ = tokio::time::sleep_until(deadline) => {
                render_one(&status, format)?;
                return Err(Error::Deployment {
                    message: format!(
                        "timed out after {}s waiting for release {name} to be {want:?} (phase {})",
                        timeout.as_secs(),
                        status.phase
                    ),
                    hints: vec![format!(
                        "see what it is waiting for: kubectl describe pod -l {} -n {}",
                        release.pod_selector(),
                        release.namespace()
                    )],
                    code: 4,
                });
            }
        }
    }
}
