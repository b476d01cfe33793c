//! `kubectl pg restore`: a dump from a file or stdin into a release's database, in one
//! transaction (pg_restore for archives, psql for SQL), run in its pod.

use std::io::IsTerminal;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::cli::{GlobalArgs, RestoreArgs};
use crate::cluster::release;
use crate::cluster::{exec, Cluster};
use crate::error::Error;
use crate::manifests::render::CONTAINER;
use crate::output::{self, emit, API_VERSION};
use crate::transfer::{self, InputKind, RestoreResult};

/// How much of the input is read to tell its kind.
const HEAD: usize = 64 * 1024;

pub async fn run(args: RestoreArgs, global: &GlobalArgs) -> Result<(), Error> {
    let (name, mut input): (String, Box<dyn AsyncRead + Unpin>) = match &args.file {
        Some(path) => {
            let file = tokio::fs::File::open(path)
                .await
                .map_err(|source| Error::Io {
                    context: format!("cannot open {}", path.display()),
                    source,
                })?;
            (path.display().to_string(), Box::new(file))
        }
        None if std::io::stdin().is_terminal() => {
            return Err(Error::InvalidInput {
                message: "no dump to restore: stdin is a terminal".into(),
                hint: Some(
                    "give a file (-f learnflow.dump) or pipe one (kubectl pg dump -n a | kubectl pg restore -n b)"
                        .into(),
                ),
            })
        }
        None => ("-".into(), Box::new(tokio::io::stdin())),
    };
    let head = read_head(&mut input, &name).await?;
    if head.is_empty() {
        return Err(Error::invalid(format!(
            "the input ({}) is empty: nothing to restore",
            if name == "-" { "stdin" } else { &name }
        )));
    }
    let kind = transfer::sniff(&head);
    // The command is checked before any connection: a refused combination changes nothing.
    transfer::restore_command(kind, "", "", args.clean, "", &args.restore_args)?;
    let cluster = Cluster::connect(&global.connect_options()).await?;
    let release = release::resolve(&cluster, args.release.as_deref()).await?;
    let target = release::find_target(&cluster, &release).await?;
    let database = args
        .database
        .clone()
        .unwrap_or_else(|| target.credentials.database.clone());
    if args.clean && !args.yes {
        super::confirm(&format!(
            "Drop the objects of {name} in database {database} of release {release} (namespace {}) and restore them?",
            target.namespace
        ), "restore --clean")?;
    }
    let tag = transfer::session_tag();
    let command = transfer::restore_command(
        kind,
        &target.credentials.username,
        &database,
        args.clean,
        &tag,
        &args.restore_args,
    )?;
    let tool = command[0].clone();
    let started = std::time::Instant::now();
    // A script is one transaction that commits only once its last byte was sent.
    let (begin, commit) = match kind {
        InputKind::Archive => ("", ""),
        _ => (transfer::SCRIPT_BEGIN, transfer::SCRIPT_COMMIT),
    };
    let input = begin
        .as_bytes()
        .chain(std::io::Cursor::new(head))
        .chain(input)
        .chain(commit.as_bytes());
    // psql prints the results of the script's SELECTs (set_config): not ours to show.
    let transfer = exec::stream(
        &cluster,
        &target.namespace,
        &target.pod,
        CONTAINER,
        &command,
        Some(input),
        |_chunk: &[u8]| Ok(()),
    );
    let outcome = tokio::select! {
        outcome = transfer => outcome?,
        code = super::interrupted() => {
            // Its session ends, and the transaction with it: nothing was committed.
            transfer::terminate(&cluster, &target, &tag).await;
            crate::note!("interrupted: the restore was stopped and rolled back");
            return Err(Error::Exit(code));
        }
    };
    if !outcome.success {
        return Err(transfer::failure(
            tool,
            outcome.reason(),
            format!("release {release} in namespace {}", target.namespace),
            vec![format!(
                "the restore ran in one transaction and was rolled back: database {database} is as it was"
            )],
        ));
    }
    let result = RestoreResult {
        api_version: API_VERSION,
        kind: "RestoreResult",
        release,
        namespace: target.namespace,
        database,
        input: name,
        format: kind.name(),
        bytes: outcome.bytes_in - (begin.len() + commit.len()) as u64,
        clean: args.clean,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    match args
        .output
        .and_then(|f| output::document(f, &result).transpose())
    {
        Some(text) => emit(&text?),
        None => emit(&format!(
            "restored {} ({}, {}) into database {} in {:.1}s\n",
            if result.input == "-" {
                "stdin"
            } else {
                &result.input
            },
            if kind == InputKind::Archive {
                "custom archive"
            } else {
                "SQL"
            },
            transfer::human_bytes(result.bytes),
            result.database,
            result.duration_ms as f64 / 1000.0
        )),
    }
    Ok(())
}

/// The first bytes of the input (up to [`HEAD`], fewer at its end).
async fn read_head(input: &mut (dyn AsyncRead + Unpin), name: &str) -> Result<Vec<u8>, Error> {
    let mut head = vec![0u8; HEAD];
    let mut filled = 0;
    while filled < HEAD {
        let n = input
            .read(&mut head[filled..])
            .await
            .map_err(|source| Error::Io {
                context: format!("cannot read {name}"),
                source,
            })?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    head.truncate(filled);
    Ok(head)
}
