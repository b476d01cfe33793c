//! `kubectl pg restart`: a restart as `kubectl rollout restart` (a StatefulSet release) or
//! `kubectl cnpg restart` (a Cluster: replicas first, the primary after a switchover) makes
//! one, waited for on watches, then status's wait until the release is healthy.

use std::cell::Cell;

use crate::cli::{GlobalArgs, RestartArgs, WaitFor};
use crate::cluster::{release, Cluster};
use crate::deployment::kind;
use crate::deployment::restart::Sent;
use crate::error::Error;
use crate::migration::MigrationSet;

/// SIGINT or SIGTERM ends the command at once (130/143): the one change it makes, the
/// annotation, is a single write, and the restart it starts goes on in the cluster, so a
/// rerun or `status --wait` sees it through.
pub async fn run(args: RestartArgs, global: &GlobalArgs) -> Result<(), Error> {
    if let Some(r) = &args.release {
        release::validate_release(r)?;
    }
    let signals = super::Signals::install()?;
    let sent = Cell::new(Sent::Nothing);
    let named = Cell::new(None);
    let done = signals.race(restart(args, global, &sent, &named)).await;
    if let Err(Error::Exit(_)) = &done {
        match (sent.get(), named.take()) {
            (Sent::Nothing, _) | (_, None) => crate::note!("interrupted: nothing was changed"),
            (sent, Some((release, ns))) => crate::note!(
                "interrupted: release {release} {} in the cluster all the same; kubectl pg status {release} -n {ns} --wait healthy shows when it is done",
                if sent == Sent::Confirmed { "is restarting" } else { "may be restarting (the annotation was on its way)" }
            ),
        }
    }
    done
}

async fn restart(
    args: RestartArgs,
    global: &GlobalArgs,
    sent: &Cell<Sent>,
    named: &Cell<Option<(String, String)>>,
) -> Result<(), Error> {
    let cluster = Cluster::connect(&global.connect_options()).await?;
    let found = kind::resolve(&cluster, args.release.as_deref()).await?;
    let set = MigrationSet::load(None)?;
    named.set(Some((found.name().to_string(), cluster.namespace.clone())));
    let started = tokio::time::Instant::now();
    found.restart(&cluster, args.timeout, sent).await?;
    crate::note!(
        "release {} restarted after {:.1}s",
        found.name(),
        started.elapsed().as_secs_f32()
    );
    let left = args.timeout.saturating_sub(started.elapsed());
    super::view::wait(&cluster, &found, &set, WaitFor::Healthy, left, args.output).await
}
