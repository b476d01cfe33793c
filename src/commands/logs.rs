//! `kubectl pg logs`: the server container's log, printed as it arrives, with the release's
//! secrets cut out (a statement the server logs may quote a password).

use crate::cli::{GlobalArgs, LogsArgs};
use crate::cluster::logs::{self, LogOptions};
use crate::cluster::Cluster;
use crate::deployment::kind;
use crate::error::Error;
use crate::output::{self, emit, redact};

pub async fn run(args: LogsArgs, global: &GlobalArgs) -> Result<(), Error> {
    let cluster = Cluster::connect(&global.connect_options()).await?;
    let found = kind::resolve(&cluster, args.release.as_deref()).await?;
    let options = LogOptions {
        follow: args.follow,
        tail: args.tail,
        since: args.since,
        previous: args.previous,
        timestamps: args.timestamps,
    };
    if let Err(e) = found.learn_secrets(&cluster).await {
        crate::note!("warning: the release's Secrets could not be read, so the log cannot be cleared of their passwords: {e}");
    }
    let redactor = redact::current();
    let source = found.log_source();
    let reading = logs::read(&cluster, &source, &options, |line| {
        emit(&format!("{}\n", redactor.redact(line)));
        output::stdout_failed().is_none()
    });
    // `-f` ends with Ctrl-C: exit 130 on Windows too, where an unhandled Ctrl-C ends a process
    // with STATUS_CONTROL_C_EXIT instead.
    tokio::select! {
        read = reading => read,
        code = super::interrupted() => Err(Error::Exit(code)),
    }
}
