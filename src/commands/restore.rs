//! `kubectl pg restore`: a dump from a file or stdin into a release's database, in one
//! transaction (pg_restore for archives, psql for SQL), run in its pod.

use std::io::IsTerminal;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::cli::{GlobalArgs, RestoreArgs};
use crate::cluster::{exec, Cluster};
use crate::deployment::kind;
use crate::error::Error;
use crate::manifests::render::CONTAINER;
use crate::output::{self, API_VERSION};
use crate::transfer::{self, script, InputKind, RestoreResult};

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
    let (head, ended) = read_head(&mut input, &name).await?;
    // psql -f skips a byte order mark; so does the restore, before telling the kind.
    let head = script::strip_bom(&head).to_vec();
    if head.is_empty() {
        return Err(Error::invalid(format!(
            "the input ({}) is empty: nothing to restore",
            if name == "-" { "stdin" } else { &name }
        )));
    }
    let kind = transfer::sniff(&head);
    // The command is checked before any connection: a refused combination changes nothing.
    transfer::restore_command(kind, "", None, "", args.clean, "", &args.restore_args)?;
    // A script is judged as far as it can be before anything runs: a file whole, stdin as
    // far as its head; the rest as it streams.
    let mut guard = script::ScriptGuard::new();
    let mut passed = Vec::new();
    if kind == InputKind::Sql {
        if let Some(path) = args.file.as_deref().filter(|p| p.is_file()) {
            let file = std::fs::File::open(path).map_err(|source| Error::Io {
                context: format!("cannot open {}", path.display()),
                source,
            })?;
            script::check_whole(std::io::BufReader::new(file), args.allow_partial)
                .map_err(|source| Error::Io {
                    context: format!("cannot read {}", path.display()),
                    source,
                })?
                .map_err(|why| rejected(why, None))?;
        }
        let judged = guard.feed(&head, &mut passed).and_then(|()| {
            if ended {
                guard.finish(&mut passed)
            } else {
                Ok(())
            }
        });
        judged.map_err(|r| rejected(script::Rejected::Refused(r), None))?;
        if ended && !guard.complete() && !args.allow_partial {
            return Err(rejected(script::Rejected::Incomplete, None));
        }
    }
    let cluster = Cluster::connect(&global.connect_options()).await?;
    let found = kind::resolve(&cluster, args.release.as_deref()).await?;
    let release = found.name().to_string();
    let target = found.target(&cluster).await?;
    let (user, role) = found.socket_roles(&target);
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
        &user,
        role.as_deref(),
        &database,
        args.clean,
        &tag,
        &args.restore_args,
    )?;
    let tool = command[0].clone();
    let started = std::time::Instant::now();
    // A script is one transaction that commits only once the whole of it passed the guard.
    let (input, verdict, framing): (Box<dyn AsyncRead + Unpin>, _, usize) = match kind {
        InputKind::Archive => (Box::new(std::io::Cursor::new(head).chain(input)), None, 0),
        _ => {
            let guarded =
                script::GuardedScript::new(input, guard, passed, ended, args.allow_partial);
            let verdict = guarded.verdict();
            (
                Box::new(guarded),
                Some(verdict),
                transfer::SCRIPT_BEGIN.len() + transfer::SCRIPT_COMMIT.len(),
            )
        }
    };
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
    let waits = transfer::locks::Waits::default();
    let watched = async {
        tokio::select! {
            outcome = transfer => outcome,
            never = transfer::locks::watch(&cluster, &target, &tag, args.lock_timeout, &waits) => match never {},
        }
    };
    let outcome = tokio::select! {
        outcome = watched => outcome,
        code = super::interrupted() => {
            // Its session ends, and the transaction with it: nothing was committed.
            transfer::terminate(&cluster, &target, &user, &tag).await;
            crate::note!("interrupted: the restore was stopped and rolled back");
            return Err(Error::Exit(code));
        }
    };
    let why = verdict.and_then(|v| v.lock().ok().and_then(|mut v| v.take()));
    // psql's own failure, when it failed first, is the truer account of a script that was
    // also cut short.
    let tool_failed_first = matches!(&outcome, Ok(o) if !o.success);
    let why = why.filter(|w| !(tool_failed_first && *w == script::Rejected::Incomplete));
    if let Some(why) = why {
        // psql never received what was refused, nor a COMMIT: its session ends, and with it
        // the transaction and whatever the script had done.
        transfer::terminate(&cluster, &target, &user, &tag).await;
        return Err(rejected(why, Some(&database)));
    }
    let outcome = outcome?;
    if !outcome.success {
        let mut hints = vec![format!(
            "the restore ran in one transaction and was rolled back: database {database} is as it was"
        )];
        if let Some(gave_up) = waits.gave_up() {
            return Err(Error::Tool {
                tool,
                message: gave_up,
                hints: {
                    hints.push("end that session, or give --lock-timeout more time".into());
                    hints
                },
            });
        }
        return Err(transfer::failure(
            tool,
            outcome.reason(),
            format!("release {release} in namespace {}", target.namespace),
            hints,
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
        bytes: outcome.bytes_in.saturating_sub(framing as u64),
        clean: args.clean,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    output::emit_result(args.output, &result, |result| {
        format!(
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
        )
    })?;
    Ok(())
}

/// Why a script was not committed, as the error the user reads; `database` once it ran.
fn rejected(why: script::Rejected, database: Option<&str>) -> Error {
    let outcome = match database {
        None => "nothing was run".to_string(),
        Some(db) => format!(
            "nothing was committed: the restore's transaction was rolled back, and database {db} is as it was"
        ),
    };
    match why {
        script::Rejected::Refused(refusal) => Error::InvalidInput {
            message: format!("refusing the script at {refusal}; {outcome}"),
            hint: Some(
                "the restore runs a script as one transaction of its own, stopping at the first error: remove that line, or run the script yourself without these guarantees (kubectl pg psql -- -f - < FILE)"
                    .into(),
            ),
        },
        script::Rejected::Incomplete => Error::InvalidInput {
            message: format!(
                "the script ends before pg_dump's end marker ({:?}): it was cut short, or pg_dump did not write it; {outcome}",
                script::END_MARKERS[0]
            ),
            hint: Some(
                "if the script is whole but was not written by pg_dump, restore it with --allow-partial"
                    .into(),
            ),
        },
    }
}

/// The first bytes of the input (up to [`HEAD`], fewer at its end), and whether the input
/// ended within them.
async fn read_head(
    input: &mut (dyn AsyncRead + Unpin),
    name: &str,
) -> Result<(Vec<u8>, bool), Error> {
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
    Ok((head, filled < HEAD))
}
