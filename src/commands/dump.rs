//! `kubectl pg dump`: pg_dump (or pg_dumpall) in the release's pod, streamed to a file that is
//! complete or absent, or to stdout.

use std::io::{IsTerminal, Write};

use crate::cli::{DumpArgs, GlobalArgs};
use crate::cluster::{exec, Cluster};
use crate::deployment::kind;
use crate::error::Error;
use crate::manifests::render::CONTAINER;
use crate::output::{self, API_VERSION};
use crate::transfer::{self, DumpFormat, DumpResult, DumpScope, PendingFile, Progress};

pub async fn run(args: DumpArgs, global: &GlobalArgs) -> Result<(), Error> {
    let format = args.format.unwrap_or(if args.all {
        DumpFormat::Plain
    } else {
        DumpFormat::Custom
    });
    // Refused before any connection, as everything the arguments alone decide.
    transfer::refuse_output_args(&args.dump_args)?;
    if args.all && format == DumpFormat::Custom {
        // Refused before any connection.
        transfer::dump_command("", &DumpScope::Cluster, format, "", &[])?;
    }
    if args.file.is_none() && std::io::stdout().is_terminal() {
        return Err(Error::InvalidInput {
            message: "refusing to write a dump to a terminal".into(),
            hint: Some("give a file (-f learnflow.dump) or redirect stdout (> learnflow.dump, | kubectl pg restore …)".into()),
        });
    }
    if args.file.is_none() && output::stdout_closed() {
        return Err(Error::InvalidInput {
            message: "stdout is closed: the dump would be lost".into(),
            hint: Some("give a file (-f learnflow.dump) or redirect stdout".into()),
        });
    }
    // Opened before any connection: what -f cannot take safely (a dangling symlink, a
    // directory, a socket) is refused first, and a FIFO's reader is waited for first.
    let mut pending = args.file.as_deref().map(PendingFile::create).transpose()?;
    let cluster = Cluster::connect(&global.connect_options()).await?;
    let found = kind::resolve(&cluster, args.release.as_deref()).await?;
    let release = found.name().to_string();
    let target = if args.replica {
        found.reader(&cluster).await?
    } else {
        found.target(&cluster).await?
    };
    let (user, _) = found.socket_roles(&target);
    let scope = if args.all {
        DumpScope::Cluster
    } else {
        DumpScope::Database(
            args.database
                .clone()
                .unwrap_or_else(|| target.credentials.database.clone()),
        )
    };
    let tag = transfer::session_tag();
    let command = transfer::dump_command(&user, &scope, format, &tag, &args.dump_args)?;
    let tool = command[0].clone();
    let mut progress = Progress::new(std::io::stderr().is_terminal(), "dumped");
    let mut stdout = std::io::stdout().lock();
    let sink = |chunk: &[u8]| {
        match pending.as_mut() {
            Some(file) => file.write(chunk)?,
            None => stdout.write_all(chunk)?,
        }
        progress.add(chunk.len());
        Ok(())
    };
    let transfer = exec::stream(
        &cluster,
        &target.namespace,
        &target.pod,
        CONTAINER,
        &command,
        None::<tokio::io::Empty>,
        sink,
    );
    let outcome = tokio::select! {
        outcome = transfer => Ok(outcome),
        code = super::interrupted() => Err(code),
    };
    progress.finish();
    let outcome = match outcome {
        Ok(outcome) => outcome?,
        Err(code) => {
            transfer::terminate(&cluster, &target, &user, &tag).await;
            match pending.take() {
                Some(file) if file.writes_through() => {
                    crate::note!("interrupted: {}", file.failure_note())
                }
                Some(file) => crate::note!(
                    "interrupted: removed the partial dump {}",
                    file.temp_path().display()
                ),
                None => {}
            }
            return Err(Error::Exit(code));
        }
    };
    let _ = stdout.flush();
    drop(stdout);
    if !outcome.success {
        // Dropping the pending file removes it: no half dump is left behind (a device or
        // FIFO keeps what reached it, and the hint says so).
        let hint = match pending.take() {
            Some(file) => file.failure_note(),
            None => "what reached stdout is incomplete: do not restore it".into(),
        };
        return Err(transfer::failure(
            tool,
            outcome.reason(),
            format!("release {release} in namespace {}", target.namespace),
            vec![hint],
        ));
    }
    let bytes = outcome.bytes_out;
    let millis = progress.elapsed().as_millis() as u64;
    let Some(file) = pending else {
        crate::note!(
            "dumped {} ({}) in {:.1}s",
            describe(&scope),
            transfer::human_bytes(bytes),
            millis as f64 / 1000.0
        );
        return Ok(());
    };
    let path = file.commit()?;
    let result = DumpResult {
        api_version: API_VERSION,
        kind: "DumpResult",
        release,
        namespace: target.namespace,
        file: path.display().to_string(),
        bytes,
        database: match &scope {
            DumpScope::Database(db) => Some(db.clone()),
            DumpScope::Cluster => None,
        },
        all: args.all,
        format,
        duration_ms: millis,
    };
    output::emit_result(args.output, &result, |result| {
        format!(
            "dumped {} to {} ({}, {} format) in {:.1}s\n",
            describe(&scope),
            result.file,
            transfer::human_bytes(bytes),
            format.name(),
            millis as f64 / 1000.0
        )
    })
}

fn describe(scope: &DumpScope) -> String {
    match scope {
        DumpScope::Database(db) => format!("database {db}"),
        DumpScope::Cluster => "every database and role".into(),
    }
}
