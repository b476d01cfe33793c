//! `kubectl pg switchover`: a planned change of primary on a highly available release, asked of
//! its operator, then proven by a write on the new primary through a tunnel.

use crate::cli::{GlobalArgs, SwitchoverArgs};
use crate::cluster::{release, Cluster};
use crate::deployment::kind;
use crate::error::Error;
use crate::migration::MigrationSet;

/// SIGINT or SIGTERM ends the command at once (130/143). The one change it makes is a single
/// write of the Cluster's status; once sent, the operator carries the switchover through, and
/// `status --wait` sees it end.
pub async fn run(args: SwitchoverArgs, global: &GlobalArgs) -> Result<(), Error> {
    if let Some(r) = &args.release {
        release::validate_release(r)?;
    }
    if let Some(to) = &args.to {
        release::validate_release(to)?;
    }
    let signals = super::Signals::install()?;
    let cluster = Cluster::connect(&global.connect_options()).await?;
    let done = signals.race(switchover(&args, &cluster)).await;
    if let Err(Error::Exit(_)) = &done {
        crate::note!(
            "interrupted: if the operator was asked, it carries the switchover through; kubectl pg status -n {} shows the primary",
            cluster.namespace
        );
    }
    done
}

async fn switchover(args: &SwitchoverArgs, cluster: &Cluster) -> Result<(), Error> {
    let set = MigrationSet::load(None)?;
    let found = kind::resolve(cluster, args.release.as_deref()).await?;
    let started = std::time::Instant::now();
    let primary = found
        .switchover(cluster, args.to.as_deref(), args.timeout)
        .await?;
    crate::note!(
        "{primary} is the primary after {:.1}s",
        started.elapsed().as_secs_f32()
    );
    // The operator's word is not the last: the read-write endpoint must reach a primary that
    // assigns a transaction id, which a standby refuses.
    let found = kind::Release::locate(cluster, found.name()).await?;
    let (target, _) = found.writer(cluster, "SELECT pg_current_xact_id()").await?;
    crate::note!("{} takes writes", target.pod);
    let status = found.status(cluster, &set).await?;
    super::view::render_one(&status, args.output)
}
