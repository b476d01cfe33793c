//! `kubectl pg uninstall`: the release removes itself (deployment::uninstall); the data stays
//! unless `--delete-data`, which asks first on a terminal and needs `--yes` off one.

use crate::cli::{GlobalArgs, UninstallArgs};
use crate::cluster::Cluster;
use crate::deployment::kind;
use crate::error::Error;

pub async fn run(args: UninstallArgs, global: &GlobalArgs) -> Result<(), Error> {
    let cluster = Cluster::connect(&global.connect_options()).await?;
    let found = kind::resolve(&cluster, args.release.as_deref()).await?;
    let confirm = |question: &str| {
        if args.yes {
            Ok(())
        } else {
            super::confirm(question, "uninstall --delete-data")
        }
    };
    found
        .uninstall(&cluster, args.delete_data, args.timeout, confirm)
        .await
}
