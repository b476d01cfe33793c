//! `kubectl pg logs`: the server container's log, printed as it arrives.

use crate::cli::{GlobalArgs, LogsArgs};
use crate::cluster::logs::{self, LogOptions};
use crate::cluster::{release, Cluster};
use crate::error::Error;
use crate::output::{self, emit};

pub async fn run(args: LogsArgs, global: &GlobalArgs) -> Result<(), Error> {
    let cluster = Cluster::connect(&global.connect_options()).await?;
    let release = release::resolve(&cluster, args.release.as_deref()).await?;
    let options = LogOptions {
        follow: args.follow,
        tail: args.tail,
        since: args.since,
        previous: args.previous,
        timestamps: args.timestamps,
    };
    logs::read(&cluster, &release, &options, |line| {
        emit(&format!("{line}\n"));
        !output::stdout_failed()
    })
    .await
}
