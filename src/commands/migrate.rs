//! `kubectl pg migrate`: the command around the migration engine.

use owo_colors::Stream;

use crate::cli::{GlobalArgs, MigrateAction, MigrateArgs, MigrateOptions, OutputFormat};
use crate::cluster::Cluster;
use crate::database::{connect_with_retry, Connector, DsnConnector};
use crate::deployment::kind;
use crate::error::Error;
use crate::migration::engine::{describe, lock_failure};
use crate::migration::foreign;
use crate::migration::history::{self, literal, History, Tables};
use crate::migration::plan::{self, Step};
use crate::migration::status::MigrationStatus;
use crate::migration::{DownTarget, Event, Goal, Interrupt, MigrationSet, Runner, Settings};
use crate::output::{self, emit, paint, Tone};

/// Runs one `migrate` subcommand: against `--dsn` when given, else against the release's
/// database through the cluster.
pub async fn run(args: MigrateArgs, global: &GlobalArgs) -> Result<(), Error> {
    let options = &args.options;
    if let MigrateAction::Create { name } = &args.action {
        return create(options, name);
    }
    // The files of a database that `adopt --from TOOL` takes over are that tool's.
    let format = match (&args.action, options.format) {
        (MigrateAction::Adopt { from, .. }, None) => Some(*from),
        (_, format) => format,
    };
    let set = MigrationSet::load_lenient(options.dir.as_deref(), format)?;
    // Status shows the valid files beside the invalid ones; any other action refuses an
    // invalid file before any connection, except a down file without its up file: whether
    // that up file belonged to an applied migration (exit 7) is for the history to say.
    if !matches!(args.action, MigrateAction::Status { .. }) {
        if let Some(problem) = set.problems.iter().find(|p| p.up_missing.is_none()) {
            return Err(problem.error());
        }
    }
    set.check_transaction_modes()?;
    check_target(&args.action, &set)?;
    if let Some(dsn) = &options.dsn {
        return run_with(&args, &set, Some(DsnConnector::new(dsn)?), None).await;
    }
    let cluster = match Cluster::connect(&global.connect_options()).await {
        Ok(cluster) => cluster,
        // A plan needs no database: without one, plan against an empty history.
        Err(Error::Kubeconfig { .. }) if options.dry_run && global.kubeconfig.is_none() => {
            crate::note!("note: no --dsn and no kubeconfig: planning against an empty history");
            return run_with::<DsnConnector>(&args, &set, None, None).await;
        }
        Err(Error::Kubeconfig { message, .. }) => {
            return Err(Error::Kubeconfig {
                message,
                hint: Some("give --dsn URL (or DATABASE_URL) to migrate a database directly, or a kubeconfig to reach the release's".into()),
            })
        }
        Err(e) => return Err(e),
    };
    // The writer of either kind of release: R-0, or a CloudNativePG Cluster's primary.
    let found = kind::resolve(&cluster, args.action.release()).await?;
    let target = found.target(&cluster).await?;
    let via = Some(cluster.user.clone());
    run_with(&args, &set, Some(found.connector(&cluster, &target)), via).await
}

/// Runs the action; `kubeconfig_user` is who acts through the cluster (`None` with `--dsn`,
/// where the database role alone says who).
async fn run_with<C: Connector>(
    args: &MigrateArgs,
    set: &MigrationSet,
    connector: Option<C>,
    kubeconfig_user: Option<String>,
) -> Result<(), Error> {
    let options = &args.options;
    let by = Actor(kubeconfig_user);
    if !matches!(args.action, MigrateAction::Status { .. }) {
        refuse_missing_up_files(set, connector.as_ref()).await?;
    }
    if options.dry_run {
        let goal = match &args.action {
            MigrateAction::Up { to, .. } => Some(Goal::Up {
                to: version_key(set, to.as_deref())?,
            }),
            MigrateAction::Down { steps, to, .. } => Some(Goal::Down(down_target(
                *steps,
                version_key(set, to.as_deref())?,
            ))),
            _ => None,
        };
        if let Some(goal) = goal {
            let refuse_foreign = matches!(goal, Goal::Up { .. });
            let history = read_history_checked(connector.as_ref(), set, refuse_foreign).await?;
            let planned = match goal {
                Goal::Up { to } => plan::plan_up(set, &history, to, options.allow_out_of_order)?,
                Goal::Down(target) => plan::plan_down(set, &history, target)?,
            };
            let target = target_name(connector.as_ref());
            match output::document(options.output, &PlanDocument::new(&planned, &target))? {
                Some(text) => emit(&text),
                None => emit(&render_plan(&planned, &target)),
            }
            return Ok(());
        }
    }
    if is_document(options.output)
        && !matches!(
            args.action,
            MigrateAction::Up { .. } | MigrateAction::Down { .. } | MigrateAction::Status { .. }
        )
    {
        return Err(Error::InvalidInput {
            message: "-o json|yaml is available for migrate up, down and status only".into(),
            hint: Some("run `kubectl pg migrate status -o json` afterwards for the result".into()),
        });
    }
    let connector = connector.ok_or_else(no_database)?;
    match &args.action {
        MigrateAction::Up { to, .. } => {
            let to = version_key(set, to.as_deref())?;
            apply(&connector, set, options, &by, Goal::Up { to }).await
        }
        MigrateAction::Down { steps, to, .. } => {
            let target = down_target(*steps, version_key(set, to.as_deref())?);
            apply(&connector, set, options, &by, Goal::Down(target)).await
        }
        MigrateAction::Status { .. } => status(&connector, set, options.output).await,
        MigrateAction::Baseline { version, .. } => {
            let version = version_key(set, Some(version))?.unwrap_or_default();
            baseline(&connector, set, options, &by, version).await
        }
        MigrateAction::Repair { version, yes, .. } => {
            let version = version_key(set, Some(version))?.unwrap_or_default();
            repair(&connector, set, options, &by, version, *yes).await
        }
        MigrateAction::Adopt { from, .. } => adopt(&connector, set, options, &by, *from).await,
        MigrateAction::Create { name } => create(options, name),
    }
}

/// A down file without its up file: an applied migration whose up file is gone is a missing
/// migration (exit 7, as `check_history` says of an applied version with no file at all);
/// otherwise the file is unusable (exit 1). Reads the history without creating it.
async fn refuse_missing_up_files<C: Connector>(
    set: &MigrationSet,
    connector: Option<&C>,
) -> Result<(), Error> {
    let Some(first) = set.problems.first() else {
        return Ok(());
    };
    let history = read_history(connector).await?;
    let applied: Vec<String> = set
        .problems
        .iter()
        .filter_map(|p| p.up_missing)
        .filter_map(|v| history.applied.get(&v))
        .map(|a| format!("{}_{}", set.label(a.version), a.name))
        .collect();
    if applied.is_empty() {
        return Err(first.error());
    }
    Err(Error::Migration {
        message: format!(
            "applied migration(s) missing from the migration files: {} (only the down file is there)",
            applied.join(", ")
        ),
        hints: vec!["run with the --dir that applied them, or restore the up files".into()],
    })
}

/// Every unusable file of the set, as the error `migrate status` ends with (exit 7: the set
/// cannot be migrated as it is).
fn invalid_files(set: &MigrationSet) -> Result<(), Error> {
    if set.problems.is_empty() {
        return Ok(());
    }
    Err(Error::Migration {
        message: format!(
            "{} migration file(s) cannot be used: {}",
            set.problems.len(),
            set.problems
                .iter()
                .map(|p| format!("{}: {}", p.path, p.message))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        hints: set.problems.iter().filter_map(|p| p.hint.clone()).collect(),
    })
}

/// `--to` names a migration of the set (or 0, going down): checked before any connection.
fn check_target(action: &MigrateAction, set: &MigrationSet) -> Result<(), Error> {
    let to = match action {
        MigrateAction::Up { to: Some(v), .. } => v,
        MigrateAction::Down { to: Some(v), .. } => v,
        _ => return Ok(()),
    };
    let key = version_key(set, Some(to))?.unwrap_or_default();
    if set.get(key).is_some() || matches!(action, MigrateAction::Down { .. } if key == 0) {
        return Ok(());
    }
    let known: Vec<String> = set.migrations.iter().map(|m| m.label.clone()).collect();
    Err(Error::InvalidInput {
        message: format!("--to {to}: no migration has that version"),
        hint: Some(if known.is_empty() {
            "the set holds no migration".into()
        } else {
            format!("versions in the set: {}", known.join(", "))
        }),
    })
}

/// A version as the user wrote it, as the set's format keys it in the history.
fn version_key(set: &MigrationSet, version: Option<&str>) -> Result<Option<i64>, Error> {
    let Some(version) = version else {
        return Ok(None);
    };
    set.format
        .key_of(version)
        .map(Some)
        .ok_or_else(|| Error::InvalidInput {
            message: format!("{version:?} is not a version of the {} format", set.format),
            hint: Some(crate::migration::format::name_hint(set.format).into()),
        })
}

/// Who runs the command, for the history's `applied_by` (after the database role, which the
/// server records itself): the kubeconfig user through the cluster; with `--dsn`, the role
/// alone.
struct Actor(Option<String>);

impl Actor {
    /// ` via kubeconfig user NAME`, or nothing.
    fn via(&self) -> String {
        self.0
            .as_deref()
            .map_or_else(String::new, |user| format!(" via kubeconfig user {user}"))
    }
}

fn down_target(steps: Option<u64>, to: Option<i64>) -> DownTarget {
    match (steps, to) {
        (_, Some(to)) => DownTarget::To(to),
        (steps, None) => {
            DownTarget::Steps(usize::try_from(steps.unwrap_or(1)).unwrap_or(usize::MAX))
        }
    }
}

fn no_database() -> Error {
    Error::InvalidInput {
        message: "no database to migrate: give --dsn or set DATABASE_URL, or use a kubeconfig".into(),
        hint: Some("for example: DATABASE_URL=postgresql://postgres@localhost:5432/learnflow kubectl pg migrate up (the password from PGPASSWORD)".into()),
    }
}

fn target_name<C: Connector>(connector: Option<&C>) -> String {
    connector.map_or_else(
        || "an empty database (no --dsn given)".into(),
        |c| c.target(),
    )
}

fn settings(options: &MigrateOptions, by: &Actor) -> Settings {
    Settings {
        lock_timeout: options.lock_timeout,
        statement_timeout: options.statement_timeout,
        allow_out_of_order: options.allow_out_of_order,
        applied_by: by.via(),
    }
}

/// [`read_history`], refusing (`refuse_foreign`) a database that another tool migrated and we
/// did not: `status` and `up` would show or run again what the tool applied. In one session.
async fn read_history_checked<C: Connector>(
    connector: Option<&C>,
    set: &MigrationSet,
    refuse_foreign: bool,
) -> Result<History, Error> {
    let Some(connector) = connector else {
        return Ok(History::default());
    };
    let client = connect_with_retry(connector).await?;
    let read = |e: tokio_postgres::Error| Error::Database {
        context: "cannot read the migration history".into(),
        message: describe(&e),
    };
    let history = history::read(&client).await.map_err(read)?;
    if refuse_foreign {
        if let Some(refusal) = foreign::refusal(&client, &history, set.dir.as_deref())
            .await
            .map_err(read)?
        {
            return Err(refusal);
        }
    }
    Ok(history)
}

/// Reads the history without changing anything; no database means an empty history.
async fn read_history<C: Connector>(connector: Option<&C>) -> Result<History, Error> {
    let Some(connector) = connector else {
        return Ok(History::default());
    };
    let client = connect_with_retry(connector).await?;
    history::read(&client).await.map_err(|e| Error::Database {
        context: "cannot read the migration history".into(),
        message: describe(&e),
    })
}

/// `kind: MigrationPlan`: what `--dry-run` would run, in order.
#[derive(serde::Serialize)]
struct PlanDocument {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    target: String,
    steps: Vec<PlanStep>,
}

#[derive(serde::Serialize)]
struct PlanStep {
    version: String,
    name: String,
    direction: &'static str,
    transaction: bool,
    /// Why a step runs outside a transaction: its first statement that cannot run in one.
    #[serde(skip_serializing_if = "Option::is_none")]
    no_transaction_reason: Option<String>,
    resume_at_statement: Option<usize>,
    checksum: String,
}

impl PlanDocument {
    fn new(steps: &[Step<'_>], target: &str) -> Self {
        Self {
            api_version: output::API_VERSION,
            kind: "MigrationPlan",
            target: target.to_string(),
            steps: steps
                .iter()
                .map(|s| PlanStep {
                    version: s.migration.label.clone(),
                    name: s.migration.name.clone(),
                    direction: s.direction.as_str(),
                    transaction: !s.script().no_transaction,
                    no_transaction_reason: s
                        .script()
                        .non_transactional()
                        .first()
                        .map(|(st, reason)| format!("line {}: {reason}", st.line)),
                    resume_at_statement: (s.resume_from > 0).then_some(s.resume_from + 1),
                    checksum: s.script().checksum.clone(),
                })
                .collect(),
        }
    }
}

fn render_plan(steps: &[Step<'_>], target: &str) -> String {
    if steps.is_empty() {
        return format!("Nothing to do for {target}: no migration to run.\n");
    }
    let mut out = format!("Plan for {target} (dry run: nothing is changed)\n\n");
    let rows = steps
        .iter()
        .map(|s| {
            let script = s.script();
            let mode = if script.no_transaction {
                "no-transaction"
            } else {
                "transaction"
            };
            let mut mode = mode.to_string();
            if s.resume_from > 0 {
                mode.push_str(&format!(" (resumes at statement {})", s.resume_from + 1));
            }
            vec![
                s.migration.label.clone(),
                s.migration.name.clone(),
                s.direction.as_str().to_string(),
                mode,
                script.checksum.clone(),
            ]
        })
        .collect();
    out.push_str(&output::table(
        &["VERSION", "NAME", "DIRECTION", "MODE", "CHECKSUM (SHA-256)"],
        rows,
    ));
    for s in steps {
        let script = s.script();
        if script.wrapped {
            out.push_str(&format!(
                "\n{} wraps itself in BEGIN … COMMIT: that is the migration's transaction, with its history row inside\n",
                script.origin
            ));
        }
        let statements = script.non_transactional();
        if statements.is_empty() {
            continue;
        }
        let why = if script.auto_no_transaction.is_some() {
            " (a file of another tool's format needs no directive for it)"
        } else {
            ""
        };
        out.push_str(&format!(
            "\n{} runs outside a transaction, statement by statement, because these cannot run in one{why}:\n",
            script.origin
        ));
        for (statement, reason) in statements {
            out.push_str(&format!(
                "  line {}: {reason}: {}\n",
                statement.line,
                excerpt(&statement.sql)
            ));
        }
    }
    out
}

/// A statement's first line of SQL: the comment lines before it (a directive among them) skipped.
fn excerpt(sql: &str) -> &str {
    sql.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("--"))
        .unwrap_or_default()
}

async fn apply<C: Connector>(
    connector: &C,
    set: &MigrationSet,
    options: &MigrateOptions,
    by: &Actor,
    goal: Goal,
) -> Result<(), Error> {
    let settings = settings(options, by);
    let interrupt = Interrupt::default();
    let mut runner = Runner::new(connector, set, &settings).with_interrupt(&interrupt);
    if matches!(goal, Goal::Up { .. }) {
        runner = runner.refusing_foreign_history();
    }
    // With -o json|yaml stdout carries the document only; progress goes to stderr.
    let document = is_document(options.output);
    let say = |line: String| {
        if document {
            crate::note_inline!("{line}");
        } else {
            emit(&line);
        }
    };
    let stream = if document {
        Stream::Stderr
    } else {
        Stream::Stdout
    };
    let mut on_event = |event: Event| match event {
        Event::Applied { id, millis } => say(format!(
            "{} {id} ({millis} ms)\n",
            paint("applied", Tone::Good, stream)
        )),
        Event::Reverted { id, millis } => say(format!(
            "{} {id} ({millis} ms)\n",
            paint("reverted", Tone::Warn, stream)
        )),
        Event::Resumed { id, statement } => crate::note!("resuming {id} at statement {statement}"),
        Event::Reconnected { reason } => crate::note!(
            "{} connection lost ({reason}); reconnected, re-reading the history",
            paint("warning:", Tone::Warn, Stream::Stderr)
        ),
    };
    let run = runner.run(goal, &mut on_event);
    tokio::pin!(run);
    let count = tokio::select! {
        result = &mut run => result?,
        code = super::interrupted() => {
            interrupt.request(code);
            crate::note!("interrupted: cancelling the statement in flight; its migration rolls back");
            if let Err(e) = interrupt.cancel_in_flight(connector).await {
                crate::note!("could not send the cancel request: {e}");
            }
            // The runner ends on the cancelled statement: nothing commits after we exit.
            match run.await {
                Ok(_) => return Err(Error::Exit(code)),
                Err(e) => return Err(e),
            }
        }
    };
    let verb = match goal {
        Goal::Up { .. } => "applied",
        Goal::Down(_) => "reverted",
    };
    if count == 0 {
        say(format!(
            "Nothing to do: no migration to {}.\n",
            if verb == "applied" { "apply" } else { "revert" }
        ));
    } else {
        say(format!("{count} migration(s) {verb}.\n"));
    }
    if document {
        // The result is the history as it now stands: the document `migrate status` prints.
        return status(connector, set, options.output).await;
    }
    Ok(())
}

fn is_document(format: OutputFormat) -> bool {
    matches!(format, OutputFormat::Json | OutputFormat::Yaml)
}

async fn status<C: Connector>(
    connector: &C,
    set: &MigrationSet,
    format: OutputFormat,
) -> Result<(), Error> {
    let history = read_history_checked(Some(connector), set, true).await?;
    let doc = MigrationStatus::build(set, &history, connector.target());
    if let Some(text) = output::document(format, &doc)? {
        emit(&text);
        return invalid_files(set);
    }
    let wide = format == OutputFormat::Wide;
    let rows = doc
        .migrations
        .iter()
        .map(|m| {
            use crate::migration::status::State;
            let tone = match m.state {
                State::Applied | State::Baseline | State::Adopted => Tone::Good,
                State::Pending => Tone::Dim,
                State::Partial | State::Outdated => Tone::Warn,
                State::Drifted | State::Missing | State::Invalid => Tone::Bad,
            };
            let mut row = vec![
                m.version.clone(),
                m.name.clone(),
                paint(m.state.as_str(), tone, Stream::Stdout),
                m.applied_at.clone().unwrap_or_else(|| "-".into()),
                m.execution_ms
                    .map_or_else(|| "-".into(), |ms| format!("{ms}ms")),
            ];
            if wide {
                row.push(
                    if m.no_transaction {
                        "no-transaction"
                    } else {
                        "transaction"
                    }
                    .into(),
                );
                row.push(m.applied_by.clone().unwrap_or_else(|| "-".into()));
                row.push(m.checksum.clone());
            } else {
                row.push(m.checksum[..12.min(m.checksum.len())].to_string());
            }
            row
        })
        .collect();
    let headers: &[&str] = if wide {
        &[
            "VERSION",
            "NAME",
            "STATE",
            "APPLIED AT",
            "DURATION",
            "MODE",
            "APPLIED BY",
            "CHECKSUM",
        ]
    } else {
        &[
            "VERSION",
            "NAME",
            "STATE",
            "APPLIED AT",
            "DURATION",
            "CHECKSUM",
        ]
    };
    let mut out = format!(
        "Database: {}\nSource:   {}\nApplied:  {} (latest {})   Pending: {}\n\n",
        doc.database,
        doc.source,
        doc.applied,
        doc.latest_version.as_deref().unwrap_or("none"),
        doc.pending
    );
    out.push_str(&output::table(headers, rows));
    emit(&out);
    invalid_files(set)
}

/// Opens a session holding the migration lock, with the tables created; the tables are those
/// of the session's current schema, named schema-qualified in every statement after.
async fn locked_session<C: Connector>(
    connector: &C,
    options: &MigrateOptions,
) -> Result<(tokio_postgres::Client, Tables, History), Error> {
    let client = connect_with_retry(connector).await?;
    let tables = match history::current_schema(&client).await {
        Ok(Some(schema)) => Tables::in_schema(&schema),
        Ok(None) => return Err(history::no_schema()),
        Err(e) => {
            return Err(Error::Database {
                context: "cannot read the current schema".into(),
                message: describe(&e),
            })
        }
    };
    match history::lock_and_read(&client, &tables, options.lock_timeout.as_millis()).await {
        Ok(history) => Ok((client, tables, history)),
        Err(e) => Err(lock_failure(&client, &tables, &e, options.lock_timeout).await),
    }
}

async fn baseline<C: Connector>(
    connector: &C,
    set: &MigrationSet,
    options: &MigrateOptions,
    by: &Actor,
    version: i64,
) -> Result<(), Error> {
    let included: Vec<_> = set
        .migrations
        .iter()
        .filter(|m| m.version <= version)
        .collect();
    if included.is_empty() {
        return Err(Error::invalid(format!(
            "no migration file has a version at or below {version}"
        )));
    }
    let (client, tables, history) = locked_session(connector, options).await?;
    if !history.applied.is_empty() {
        return Err(Error::Migration {
            message: format!(
                "cannot baseline: the history already records {} migration(s) (latest {})",
                history.applied.len(),
                history
                    .max_applied()
                    .map(|v| set.label(v))
                    .unwrap_or_default()
            ),
            hints: vec![
                "baseline is for databases whose schema was created without kubectl-pg".into(),
            ],
        });
    }
    let by = by.via();
    let mut batch = String::from("BEGIN;\n");
    for m in &included {
        batch.push_str(&format!(
            "INSERT INTO {} (version, name, checksum, down_checksum, execution_ms, applied_by) VALUES ({}, {}, {}, {}, NULL, current_user || {});\n",
            tables.history,
            m.version,
            literal(&m.name),
            literal(&m.up.checksum),
            history::literal_opt(m.down.as_ref().map(|d| d.checksum.as_str())),
            literal(&format!("{by} (baseline)")),
        ));
    }
    batch.push_str("COMMIT;");
    if options.dry_run {
        emit(&format!(
            "Would record {} migration(s) as applied without running them: {}\n",
            included.len(),
            included
                .iter()
                .map(|m| m.id())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        return Ok(());
    }
    client
        .simple_query(&batch)
        .await
        .map_err(|e| Error::migration(format!("baseline failed: {}", describe(&e))))?;
    for m in &included {
        emit(&format!(
            "{} {} (not run)\n",
            paint("baselined", Tone::Good, Stream::Stdout),
            m.id()
        ));
    }
    emit(&format!(
        "Database recorded as migrated up to {}.\n",
        set.label(version)
    ));
    Ok(())
}

async fn repair<C: Connector>(
    connector: &C,
    set: &MigrationSet,
    options: &MigrateOptions,
    by: &Actor,
    version: i64,
    yes: bool,
) -> Result<(), Error> {
    let migration = set
        .get(version)
        .ok_or_else(|| Error::invalid(format!("no migration file has version {version}")))?;
    if !yes {
        return Err(Error::InvalidInput {
            message: format!(
                "repair rewrites the recorded checksum of {} (or forgets the progress of a partly applied no-transaction run): confirm with --yes",
                migration.id()
            ),
            hint: Some("check first that the applied schema matches the changed file (or, for a partly applied run, that you undid what its applied statements did)".into()),
        });
    }
    let (client, tables, history) = locked_session(connector, options).await?;
    let Some(recorded) = history.applied.get(&version) else {
        let partial = history
            .partial(version, true)
            .or_else(|| history.partial(version, false));
        return match partial {
            Some(partial) => {
                repair_partial(&client, &tables, migration, partial, options.dry_run).await
            }
            None => Err(Error::migration(format!(
                "{} is not applied: nothing to repair",
                migration.id()
            ))),
        };
    };
    let new_down = migration.down.as_ref().map(|d| d.checksum.as_str());
    if recorded.checksum == migration.up.checksum && recorded.down_checksum.as_deref() == new_down {
        emit(&format!(
            "{} already matches its file: nothing to repair.\n",
            migration.id()
        ));
        return Ok(());
    }
    // The database role that repairs, and the kubeconfig user through the cluster.
    let role = client
        .simple_query("SELECT current_user")
        .await
        .ok()
        .and_then(|m| history::rows(&m).into_iter().next())
        .and_then(|r| r.into_iter().next().flatten())
        .unwrap_or_else(|| "the database role".into());
    let by = format!("{role}{}", by.via());
    let audit = format!(
        "repaired {}: checksum {} -> {} (recorded by {} on {}; repaired by {by})",
        migration.id(),
        recorded.checksum,
        migration.up.checksum,
        recorded.applied_by,
        recorded.applied_at
    );
    if options.dry_run {
        emit(&format!("would have {audit}\n"));
        return Ok(());
    }
    let sql = format!(
        "UPDATE {} SET checksum = {}, down_checksum = {}, name = {}, \
         applied_by = applied_by || ' (repaired by ' || current_user || {} || ' on ' || \
         to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD') || ')' WHERE version = {}",
        tables.history,
        literal(&migration.up.checksum),
        history::literal_opt(new_down),
        literal(&migration.name),
        literal(by_via(&by, &role)),
        version
    );
    client
        .simple_query(&sql)
        .await
        .map_err(|e| Error::migration(format!("repair failed: {}", describe(&e))))?;
    emit(&format!("{audit}\n"));
    Ok(())
}

/// What follows the role in a repair's record: the kubeconfig user, when there is one.
fn by_via<'a>(by: &'a str, role: &str) -> &'a str {
    by.strip_prefix(role).unwrap_or(by)
}

/// `repair` of a partly applied no-transaction migration. Its applied statements are what
/// the checksum protects: when they are unchanged there is nothing to repair (say how the
/// run resumes); when one changed, the user has undone by hand what they did (the hint of
/// the refusal), so the progress is forgotten and `up` runs the file from its first statement.
async fn repair_partial(
    client: &tokio_postgres::Client,
    tables: &Tables,
    migration: &crate::migration::source::Migration,
    partial: &history::Partial,
    dry_run: bool,
) -> Result<(), Error> {
    use crate::migration::plan::{compare_partial, PartialCheck};
    let direction = if partial.up { "up" } else { "down" };
    let done = partial.statements_done;
    let script = if partial.up {
        Some(&migration.up)
    } else {
        migration.down.as_ref()
    };
    let next = script.and_then(|s| s.statements.get(done));
    if compare_partial(migration, partial) == PartialCheck::Unchanged {
        let at = next.map_or_else(String::new, |s| format!(" (line {})", s.line));
        emit(&format!(
            "{id} ({direction}) is partly applied: statements #1-#{done} ran and are unchanged in the file, so there is nothing to repair.\n\
             Fix statement #{n}{at} if it needs it, then run `kubectl pg migrate {direction}`: it resumes at statement #{n}.\n",
            id = migration.id(),
            n = done + 1,
        ));
        return Ok(());
    }
    let audit = format!(
        "forgot the progress of {} ({direction}): statements #1-#{done} were recorded as run; the next `migrate {direction}` runs the file from its first statement",
        migration.id()
    );
    if dry_run {
        emit(&format!("would have {audit}\n"));
        return Ok(());
    }
    let sql = format!(
        "DELETE FROM {} WHERE version = {} AND direction = '{direction}'",
        tables.progress, migration.version
    );
    client
        .simple_query(&sql)
        .await
        .map_err(|e| Error::migration(format!("repair failed: {}", describe(&e))))?;
    emit(&format!(
        "{audit}\n(it assumes you undid by hand what those statements did)\n"
    ));
    Ok(())
}

/// `adopt --from TOOL`: records as applied every version the tool applied, with today's
/// files' checksums, in one transaction under the migration lock (the tool's table locked
/// against its writes meanwhile); the tool's table stays.
async fn adopt<C: Connector>(
    connector: &C,
    set: &MigrationSet,
    options: &MigrateOptions,
    by: &Actor,
    tool: crate::migration::Format,
) -> Result<(), Error> {
    if set.dir.is_none() {
        return Err(Error::InvalidInput {
            message: format!(
                "adopt needs --dir: the {tool} migration files the database was migrated with"
            ),
            hint: Some(format!(
                "for example: kubectl pg migrate adopt --from {tool} --dir ./migrations"
            )),
        });
    }
    let database = |context: &str| {
        let context = context.to_string();
        move |e: tokio_postgres::Error| Error::Database {
            context,
            message: describe(&e),
        }
    };
    let (client, tables, ours) = if options.dry_run {
        let client = connect_with_retry(connector).await?;
        let ours = history::read(&client)
            .await
            .map_err(database("cannot read the migration history"))?;
        (client, None, ours)
    } else {
        let (client, tables, ours) = locked_session(connector, options).await?;
        (client, Some(tables), ours)
    };
    if !ours.applied.is_empty() {
        return Err(Error::Migration {
            message: format!(
                "the database already has kubectl-pg's history ({} migration(s), latest {}): there is nothing to adopt",
                ours.applied.len(),
                ours.max_applied().map(|v| set.label(v)).unwrap_or_default()
            ),
            hints: vec!["`kubectl pg migrate status` shows it".into()],
        });
    }
    let found = foreign::find(&client)
        .await
        .map_err(database("cannot look for the tool's history"))?;
    let Some(table) = found.iter().find(|f| f.tool == tool) else {
        let other = found
            .first()
            .map(|f| {
                format!(
                    " (it holds {}'s: table {}; adopt with --from {})",
                    f.tool, f.table, f.tool
                )
            })
            .unwrap_or_default();
        return Err(Error::Migration {
            message: format!("no {tool} history in the session's current schema{other}"),
            hints: vec![format!(
                "{tool} keeps it in {}; connect to the database (and search_path) it migrated",
                foreign::table_name(tool)
            )],
        });
    };
    if !options.dry_run {
        client
            .simple_query(&format!("BEGIN; LOCK TABLE {} IN SHARE MODE", table.table))
            .await
            .map_err(database("cannot lock the tool's history"))?;
    }
    let rows = foreign::read(&client, table)
        .await
        .map_err(database("cannot read the tool's history"))?;
    let plan = foreign::plan(set, tool, &rows)?;
    let ids: Vec<String> = plan.adopted.iter().map(|a| a.migration.id()).collect();
    for changed in &plan.changed {
        crate::note!(
            "{} {changed} changed since {tool} applied it (its checksum differs from the one {tool} recorded): recorded with today's file{}",
            paint("warning:", Tone::Warn, Stream::Stderr),
            if changed.starts_with("R__") { "'s name, to run again at the next up" } else { "" }
        );
    }
    if options.dry_run {
        emit(&format!(
            "Would record {} migration(s) of {tool}'s history ({}) as applied, without running them: {}
",
            ids.len(),
            table.table,
            ids.join(", ")
        ));
        return Ok(());
    }
    let Some(tables) = tables else {
        return Ok(());
    };
    let sql = format!(
        "{} COMMIT;",
        foreign::record_sql(&tables, tool, &plan, &by.via())
    );
    if let Err(e) = client.simple_query(&sql).await {
        let _ = client.simple_query("ROLLBACK").await;
        return Err(Error::migration(format!("adopt failed: {}", describe(&e))));
    }
    for id in &ids {
        emit(&format!(
            "{} {id} (not run)\n",
            paint("adopted", Tone::Good, Stream::Stdout)
        ));
    }
    emit(&format!(
        "{} migration(s) of {tool}'s history recorded; {} is left in place.\n",
        ids.len(),
        table.table
    ));
    Ok(())
}

fn create(options: &MigrateOptions, name: &str) -> Result<(), Error> {
    let dir = options.dir.as_deref().ok_or_else(|| Error::InvalidInput {
        message: "create needs --dir: the built-in LearnFlow set cannot be changed".into(),
        hint: Some(format!(
            "for example: kubectl pg migrate create {name} --dir ./migrations"
        )),
    })?;
    let (up, down) = crate::migration::source::create_pair(dir, name)?;
    emit(&format!(
        "created {}\ncreated {}\n",
        up.display(),
        down.display()
    ));
    Ok(())
}
