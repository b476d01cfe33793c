//! Runs a plan against a database: one transaction per migration together with its history
//! row, statement-by-statement progress for no-transaction files, and recovery from a lost
//! connection (reconnect, retake the lock, re-read the history, continue).

use std::time::{Duration, Instant};

use tokio_postgres::error::{ErrorPosition, SqlState};
use tokio_postgres::Client;

use super::history::{self, literal, literal_opt, History, Tables};
use super::plan::{Direction, DownTarget, Step};
use super::source::MigrationSet;
use crate::database::{connect_with_retry, is_connection_loss, Connector};
use crate::error::Error;

/// How the runner behaves; from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Bound on waiting for the advisory lock and for table locks inside migrations (0: no bound).
    pub lock_timeout: Duration,
    /// Bound on each statement inside migrations; `None` leaves the server's setting.
    pub statement_timeout: Option<Duration>,
    pub allow_out_of_order: bool,
    /// Recorded in `applied_by` after the database user (` via kubectl pg install`, ` via
    /// kubeconfig user NAME`), or nothing.
    pub applied_by: String,
}

/// A request to stop, from a signal. The runner starts no further step and reports the exit
/// code; [`Interrupt::cancel_in_flight`] cancels the statement running in its session, so the
/// migration's transaction rolls back and nothing commits after the command exits.
#[derive(Debug, Default)]
pub struct Interrupt {
    code: std::sync::atomic::AtomicU8,
    backend: std::sync::Mutex<Option<i32>>,
}

impl Interrupt {
    /// Asks the runner to stop; `code` is the exit code (130 for SIGINT, 143 for SIGTERM).
    pub fn request(&self, code: u8) {
        self.code.store(code, std::sync::atomic::Ordering::SeqCst);
    }

    fn requested(&self) -> Option<u8> {
        Some(self.code.load(std::sync::atomic::Ordering::SeqCst)).filter(|c| *c != 0)
    }

    /// PostgreSQL's cancel of the runner's backend, from a session of its own (the runner's is
    /// busy): the statement in flight ends with query_canceled and its transaction rolls back.
    pub async fn cancel_in_flight<C: Connector>(&self, connector: &C) -> Result<bool, Error> {
        let Some(pid) = *self.backend.lock().unwrap_or_else(|e| e.into_inner()) else {
            return Ok(false);
        };
        let client = connector.connect().await?;
        let row = client
            .query_one("SELECT pg_cancel_backend($1)", &[&pid])
            .await
            .map_err(|e| Error::Connection {
                target: connector.target(),
                reason: describe(&e),
            })?;
        Ok(row.get(0))
    }
}

/// Something the runner did, reported as it happens.
#[derive(Debug, Clone)]
pub enum Event {
    Applied {
        id: String,
        millis: u128,
    },
    Reverted {
        id: String,
        millis: u128,
    },
    /// A no-transaction migration picked up where an earlier run stopped.
    Resumed {
        id: String,
        statement: usize,
    },
    /// The session was lost and a new one was opened.
    Reconnected {
        reason: String,
    },
}

/// What `up`/`down` should do.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    Up { to: Option<i64> },
    Down(DownTarget),
}

/// Returns the session to the state a new connection has, after each migration's COMMIT (in
/// the batch that commits it, so it costs no round trip), so that what one migration set (`search_path`, `SET ROLE`, session
/// authorization, prepared statements, cursors, temporary tables, LISTEN) never reaches the
/// next. It is `DISCARD ALL` without its `pg_advisory_unlock_all()`: the runner's session
/// holds the advisory lock that serialises runners, and must keep it. (PostgreSQL documents
/// `DISCARD ALL` as exactly this list plus the unlock; `DISCARD ALL` itself would also refuse
/// to run inside the implicit transaction of a multi-statement batch, where these do not.)
pub const SESSION_RESET_SQL: &str =
    "SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DEALLOCATE ALL; \
     CLOSE ALL; UNLISTEN *; DISCARD PLANS; DISCARD SEQUENCES; DISCARD TEMP";

/// Puts the engine's own statements inside a migration's session under the connecting user,
/// whatever role the migration switched to (`SET ROLE`, `SET SESSION AUTHORIZATION`), for the
/// rest of the transaction only: the history row is written, and `applied_by` names, the
/// user who connected.
const AS_SESSION_USER_SQL: &str = "SET LOCAL SESSION AUTHORIZATION DEFAULT; SET LOCAL ROLE NONE;";

/// How many times in a row a session may be lost without a migration completing.
const MAX_LOSSES_WITHOUT_PROGRESS: u32 = 10;

/// Drives one `up` or `down` run.
pub struct Runner<'a, C: Connector> {
    connector: &'a C,
    set: &'a MigrationSet,
    settings: &'a Settings,
    client: Option<Client>,
    interrupt: Option<&'a Interrupt>,
    /// The history's tables, resolved in the first session and kept for the whole run.
    tables: Option<Tables>,
    /// Whether the progress table records per-statement checksums (see [`History`]).
    statement_checksums: bool,
    /// Whether the first session refuses a database that another tool migrated and we did not.
    refuse_foreign: bool,
}

enum StepError {
    /// The session is gone; reconnect and re-read the history.
    Lost(String),
    Failed(Error),
}

impl<'a, C: Connector> Runner<'a, C> {
    pub fn new(connector: &'a C, set: &'a MigrationSet, settings: &'a Settings) -> Self {
        Self {
            connector,
            set,
            settings,
            client: None,
            interrupt: None,
            tables: None,
            statement_checksums: false,
            refuse_foreign: false,
        }
    }

    /// Refuses, in the first session and before creating anything, a database that holds
    /// another tool's history and none of ours (see [`super::foreign::refusal`]).
    pub fn refusing_foreign_history(mut self) -> Self {
        self.refuse_foreign = true;
        self
    }

    /// Lets a signal stop the run: see [`Interrupt`].
    pub fn with_interrupt(mut self, interrupt: &'a Interrupt) -> Self {
        self.interrupt = Some(interrupt);
        self
    }

    fn interrupted(&self) -> Option<Error> {
        self.interrupt?.requested().map(Error::Exit)
    }

    /// Runs until the goal is reached; returns the number of migrations run.
    pub async fn run(
        &mut self,
        mut goal: Goal,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<usize, Error> {
        let mut done = 0;
        let mut losses = 0;
        // The step whose session was lost: its COMMIT may have landed without its reply.
        let mut in_flight: Option<(i64, Direction, String, Instant)> = None;
        'session: loop {
            let history = match self.open_session().await {
                Ok(history) => history,
                Err(StepError::Lost(reason)) => {
                    losses += 1;
                    if losses > MAX_LOSSES_WITHOUT_PROGRESS {
                        return Err(self.gave_up(reason));
                    }
                    continue;
                }
                Err(StepError::Failed(e)) => return Err(e),
            };
            // The re-read history settles it: a migration recorded (or gone, going down) was
            // run by us, and counts as such.
            if let Some((version, direction, id, started)) = in_flight.take() {
                // A repeatable migration is recorded before it runs again: it ran when its row
                // has the file's checksum.
                let applied = match (history.applied.get(&version), self.set.get(version)) {
                    (Some(row), Some(m)) if m.repeatable => row.checksum == m.up.checksum,
                    (row, _) => row.is_some(),
                };
                let millis = started.elapsed().as_millis();
                match direction {
                    Direction::Up if applied => {
                        done += 1;
                        on_event(Event::Applied { id, millis });
                    }
                    Direction::Down if !applied => {
                        done += 1;
                        on_event(Event::Reverted { id, millis });
                    }
                    _ => {}
                }
            }
            let steps = match goal {
                Goal::Up { to } => {
                    super::plan::plan_up(self.set, &history, to, self.settings.allow_out_of_order)?
                }
                Goal::Down(target) => super::plan::plan_down(self.set, &history, target)?,
            };
            if let (Goal::Down(DownTarget::Steps(_)), Some(last)) = (goal, steps.last()) {
                // Pin the target, so that after an unacknowledged COMMIT the re-planned run
                // does not revert one migration more than asked.
                goal = Goal::Down(DownTarget::To(last.migration.version - 1));
            }
            for step in steps {
                if let Some(stop) = self.interrupted() {
                    return Err(stop);
                }
                if step.resume_from > 0 {
                    on_event(Event::Resumed {
                        id: step.migration.id(),
                        statement: step.resume_from + 1,
                    });
                }
                let started = Instant::now();
                match self.run_step(&step).await {
                    Ok(()) => {
                        done += 1;
                        losses = 0;
                        let id = step.migration.id();
                        let millis = started.elapsed().as_millis();
                        on_event(match step.direction {
                            Direction::Up => Event::Applied { id, millis },
                            Direction::Down => Event::Reverted { id, millis },
                        });
                    }
                    Err(_) if self.interrupt.is_some_and(|i| i.requested().is_some()) => {
                        return Err(self.interrupted().unwrap_or(Error::Exit(130)));
                    }
                    Err(StepError::Lost(reason)) => {
                        losses += 1;
                        if losses > MAX_LOSSES_WITHOUT_PROGRESS {
                            return Err(self.gave_up(reason));
                        }
                        self.client = None;
                        in_flight = Some((
                            step.migration.version,
                            step.direction,
                            step.migration.id(),
                            started,
                        ));
                        on_event(Event::Reconnected { reason });
                        continue 'session;
                    }
                    Err(StepError::Failed(e)) => return Err(e),
                }
            }
            return Ok(done);
        }
    }

    fn gave_up(&self, reason: String) -> Error {
        Error::Connection {
            target: self.connector.target(),
            reason: format!("connection lost {MAX_LOSSES_WITHOUT_PROGRESS} times without progress; last: {reason}"),
        }
    }

    /// Connects, takes the lock and reads the history.
    async fn open_session(&mut self) -> Result<History, StepError> {
        self.client = None;
        let client = connect_with_retry(self.connector)
            .await
            .map_err(StepError::Failed)?;
        if self.tables.is_none() && self.refuse_foreign {
            let checked = match history::read(&client).await {
                Ok(ours) => super::foreign::refusal(&client, &ours, self.set.dir.as_deref()).await,
                Err(e) => Err(e),
            };
            match checked {
                Ok(None) => {}
                Ok(Some(refusal)) => return Err(StepError::Failed(refusal)),
                Err(e) if is_connection_loss(&e, &client) => {
                    return Err(StepError::Lost(describe(&e)))
                }
                Err(e) => {
                    return Err(StepError::Failed(Error::Database {
                        context: "cannot read the migration history".into(),
                        message: describe(&e),
                    }))
                }
            }
        }
        let tables = match &self.tables {
            Some(tables) => tables.clone(),
            // A fresh session: no migration has changed its search_path yet.
            None => match history::current_schema(&client).await {
                Ok(Some(schema)) => Tables::in_schema(&schema),
                Ok(None) => return Err(StepError::Failed(history::no_schema())),
                Err(e) if is_connection_loss(&e, &client) => {
                    return Err(StepError::Lost(describe(&e)))
                }
                Err(e) => {
                    return Err(StepError::Failed(Error::Database {
                        context: "cannot read the current schema".into(),
                        message: describe(&e),
                    }))
                }
            },
        };
        let result =
            history::lock_and_read(&client, &tables, self.settings.lock_timeout.as_millis()).await;
        self.tables = Some(tables.clone());
        match result {
            Ok(history) => {
                self.statement_checksums = history.statement_checksums_column;
                if let Some(interrupt) = self.interrupt {
                    // The backend a signal's cancel must reach.
                    let pid: Option<i32> = client
                        .query_one("SELECT pg_backend_pid()", &[])
                        .await
                        .ok()
                        .map(|row| row.get(0));
                    *interrupt.backend.lock().unwrap_or_else(|e| e.into_inner()) = pid;
                }
                self.client = Some(client);
                Ok(history)
            }
            Err(e)
                if e.code() != Some(&SqlState::LOCK_NOT_AVAILABLE)
                    && is_connection_loss(&e, &client) =>
            {
                Err(StepError::Lost(describe(&e)))
            }
            Err(e) => Err(StepError::Failed(
                lock_failure(&client, &tables, &e, self.settings.lock_timeout).await,
            )),
        }
    }

    /// Runs one migration; the batch that commits it also resets the session for the next
    /// one (after its COMMIT, so outside its transaction, and in the same round trip).
    async fn run_step(&self, step: &Step<'_>) -> Result<(), StepError> {
        if step.script().no_transaction {
            self.run_statements(step).await
        } else {
            self.run_transaction(step).await
        }
    }

    fn tables(&self) -> Result<&Tables, StepError> {
        self.tables
            .as_ref()
            .ok_or_else(|| StepError::Lost("no session".into()))
    }

    fn client(&self) -> Result<&Client, StepError> {
        self.client
            .as_ref()
            .ok_or_else(|| StepError::Lost("no session".into()))
    }

    /// `SET LOCAL` lines for the migration's transaction.
    fn local_settings(&self) -> String {
        let mut sql = format!(
            "SET LOCAL lock_timeout = {};\n",
            self.settings.lock_timeout.as_millis()
        );
        if let Some(t) = self.settings.statement_timeout {
            sql.push_str(&format!(
                "SET LOCAL statement_timeout = {};\n",
                t.as_millis()
            ));
        }
        sql
    }

    /// The statement that records the step in the history, inside the step's transaction.
    fn record_sql(&self, tables: &Tables, step: &Step<'_>) -> String {
        let m = step.migration;
        let record = match step.direction {
            Direction::Up => format!(
                "INSERT INTO {table} (version, name, checksum, down_checksum, execution_ms, applied_by) \
                 VALUES ({version}, {name}, {checksum}, {down}, \
                 (extract(epoch FROM clock_timestamp() - now()) * 1000)::integer, current_user || {by})",
                table = tables.history,
                version = m.version,
                name = literal(&m.name),
                checksum = literal(&m.up.checksum),
                down = literal_opt(m.down.as_ref().map(|d| d.checksum.as_str())),
                by = literal(&self.settings.applied_by),
            ) + if m.repeatable {
                // A repeatable migration runs again when it changes: its row follows.
                " ON CONFLICT (version) DO UPDATE SET name = EXCLUDED.name, checksum = EXCLUDED.checksum, \
                 applied_at = now(), execution_ms = EXCLUDED.execution_ms, applied_by = EXCLUDED.applied_by"
            } else {
                ""
            },
            Direction::Down => format!("DELETE FROM {} WHERE version = {}", tables.history, m.version),
        };
        format!("{AS_SESSION_USER_SQL} {record}")
    }

    /// Body and history row in one transaction, sent as one simple-query batch (one round trip).
    async fn run_transaction(&self, step: &Step<'_>) -> Result<(), StepError> {
        let client = self.client()?;
        let tables = self.tables()?;
        let script = step.script();
        let prefix = format!("BEGIN;\n{}", self.local_settings());
        // The newline guards against a body ending in a line comment; the lexer has already
        // rejected bodies ending inside a quote or block comment.
        let batch = format!(
            "{prefix}{}\n;\n{};\nCOMMIT;\n{SESSION_RESET_SQL};",
            script.body,
            self.record_sql(tables, step)
        );
        match client.simple_query(&batch).await {
            Ok(_) => Ok(()),
            Err(e) if is_connection_loss(&e, client) => Err(StepError::Lost(describe(&e))),
            Err(e) => {
                // The explicit transaction is aborted: end it so the session stays usable.
                let _ = client.simple_query("ROLLBACK").await;
                let line = error_line(&e, prefix.chars().count(), &script.body);
                Err(StepError::Failed(self.step_failed(step, line, &e, None)))
            }
        }
    }

    /// A no-transaction script, one statement at a time, progress recorded after each: the
    /// count, the file's checksum and the checksum of every statement applied so far (what a
    /// later resume compares, see [`super::plan::check_partial`]).
    async fn run_statements(&self, step: &Step<'_>) -> Result<(), StepError> {
        let client = self.client()?;
        let tables = self.tables()?;
        let script = step.script();
        let m = step.migration;
        let direction = step.direction.as_str();
        let lost = |e: &tokio_postgres::Error| StepError::Lost(describe(e));
        // The plan checked that the applied statements are those of the current file: the
        // row now describes the current file (a fixed failed statement is accepted).
        let mut setup = if self.statement_checksums {
            format!(
                "INSERT INTO {table} (version, direction, checksum, statements_done, statement_checksums) \
                 VALUES ({v}, '{direction}', {c}, {done}, {applied}) \
                 ON CONFLICT (version, direction) DO UPDATE SET checksum = EXCLUDED.checksum, \
                 statement_checksums = EXCLUDED.statement_checksums;",
                table = tables.progress,
                v = m.version,
                c = literal(&script.checksum),
                done = step.resume_from,
                applied = text_array(&script.statement_checksums[..step.resume_from.min(script.statement_checksums.len())]),
            )
        } else {
            format!(
                "INSERT INTO {table} (version, direction, checksum, statements_done) VALUES ({v}, '{direction}', {c}, {done}) \
                 ON CONFLICT (version, direction) DO NOTHING;",
                table = tables.progress,
                v = m.version,
                c = literal(&script.checksum),
                done = step.resume_from,
            )
        };
        // Each migration starts from a reset session: set the bounds it runs under.
        setup.push_str(&format!(
            "SET lock_timeout = {};",
            self.settings.lock_timeout.as_millis()
        ));
        if let Some(t) = self.settings.statement_timeout {
            setup.push_str(&format!("SET statement_timeout = {};", t.as_millis()));
        }
        self.simple(client, &setup).await?;
        for (index, statement) in script.statements.iter().enumerate().skip(step.resume_from) {
            if let Err(e) = client.simple_query(&statement.sql).await {
                if is_connection_loss(&e, client) {
                    return Err(lost(&e));
                }
                let offset = statement_line_offset(&e, &statement.sql);
                let invalid = if lexer_is_concurrent_index(statement) {
                    invalid_indexes(client).await
                } else {
                    Vec::new()
                };
                let line = Some(statement.line + offset);
                return Err(StepError::Failed(self.step_failed(
                    step,
                    line,
                    &e,
                    Some((index + 1, invalid)),
                )));
            }
            // A concurrent build that "succeeds" can still leave its index INVALID: `IF NOT
            // EXISTS` skips the invalid leftover of an earlier failed build. Not applied.
            if lexer_is_concurrent_index(statement) {
                let left: Vec<String> = invalid_indexes(client)
                    .await
                    .into_iter()
                    .filter(|name| names_index(&statement.sql, name))
                    .collect();
                if !left.is_empty() {
                    return Err(StepError::Failed(Error::Migration {
                        message: format!(
                            "migration {} ({}) failed at line {}: index {} is INVALID after the statement (an earlier failed concurrent build, kept by IF NOT EXISTS) [{}]",
                            m.id(),
                            direction,
                            statement.line,
                            left.join(", "),
                            script.origin
                        ),
                        hints: left
                            .iter()
                            .map(|i| format!("DROP INDEX CONCURRENTLY {i}; then run the command again"))
                            .chain([format!(
                                "statements before #{} are applied and recorded; the next run resumes at statement #{}",
                                index + 1,
                                index + 1
                            )])
                            .collect(),
                    }));
                }
            }
            let checksums = if self.statement_checksums {
                format!(
                    ", checksum = {}, statement_checksums = coalesce(statement_checksums[1:{index}], '{{}}') || ARRAY[{}]",
                    literal(&script.checksum),
                    literal(&script.statement_checksums[index]),
                )
            } else {
                String::new()
            };
            // Written as the connecting user, whatever role the statement switched to; the
            // migration's own session state is back after COMMIT.
            let progress = format!(
                "BEGIN; {AS_SESSION_USER_SQL} UPDATE {} SET statements_done = {}, updated_at = now(){checksums} \
                 WHERE version = {} AND direction = '{direction}'; COMMIT;",
                tables.progress,
                index + 1,
                m.version
            );
            self.simple(client, &progress).await?;
        }
        let finish = format!(
            "BEGIN; {record}; DELETE FROM {progress} WHERE version = {v} AND direction = '{direction}'; COMMIT; {SESSION_RESET_SQL};",
            record = self.record_sql(tables, step),
            progress = tables.progress,
            v = m.version,
        );
        self.simple(client, &finish).await
    }

    /// Bookkeeping statements: any failure is treated as a lost session and retried.
    async fn simple(&self, client: &Client, sql: &str) -> Result<(), StepError> {
        match client.simple_query(sql).await {
            Ok(_) => Ok(()),
            Err(e) if is_connection_loss(&e, client) => Err(StepError::Lost(describe(&e))),
            Err(e) => {
                let _ = client.simple_query("ROLLBACK").await;
                Err(StepError::Failed(Error::Database {
                    context: "cannot record migration progress".into(),
                    message: describe(&e),
                }))
            }
        }
    }

    fn step_failed(
        &self,
        step: &Step<'_>,
        line: Option<usize>,
        e: &tokio_postgres::Error,
        statement: Option<(usize, Vec<String>)>,
    ) -> Error {
        let script = step.script();
        let at = line.map(|l| format!(" at line {l}")).unwrap_or_default();
        let mut hints = Vec::new();
        if let Some(db) = e.as_db_error() {
            if let Some(detail) = db.detail() {
                hints.push(format!("detail: {detail}"));
            }
            if let Some(hint) = db.hint() {
                hints.push(hint.to_string());
            }
            if *db.code() == SqlState::LOCK_NOT_AVAILABLE {
                hints.push("a table it needs is locked by another session; retry later or raise --lock-timeout".into());
            }
            if *db.code() == SqlState::QUERY_CANCELED {
                hints.push("the statement ran past --statement-timeout".into());
            }
        }
        let rolled_back = match &statement {
            None => "nothing was applied: the migration and its history row were rolled back"
                .to_string(),
            Some((n, invalid)) => {
                for index in invalid {
                    hints.push(format!(
                        "index {index} was left INVALID by the failed concurrent build: DROP INDEX CONCURRENTLY {index}; then run the command again"
                    ));
                }
                format!(
                    "statements before #{n} are applied and recorded; the next run resumes at statement #{n}"
                )
            }
        };
        hints.push(rolled_back);
        Error::Migration {
            message: format!(
                "migration {} ({}) failed{at}: {} [{}]",
                step.migration.id(),
                step.direction.as_str(),
                describe(e),
                script.origin
            ),
            hints,
        }
    }
}

fn lexer_is_concurrent_index(statement: &super::lexer::Statement) -> bool {
    matches!(
        super::lexer::non_transactional_reason(statement),
        Some("CREATE INDEX CONCURRENTLY") | Some("REINDEX CONCURRENTLY")
    )
}

/// Whether `sql` names the index `qualified` (`schema.name`, as quote_ident writes it): its
/// bare name as a whole word, case-insensitively.
fn names_index(sql: &str, qualified: &str) -> bool {
    let bare = qualified
        .rsplit('.')
        .next()
        .unwrap_or(qualified)
        .trim_matches('"')
        .to_lowercase();
    let text = sql.to_lowercase();
    let word = |c: char| c.is_alphanumeric() || c == '_' || c == '$';
    text.match_indices(&bare).any(|(at, _)| {
        let before = text[..at].chars().next_back().is_none_or(|c| !word(c));
        let after = text[at + bare.len()..]
            .chars()
            .next()
            .is_none_or(|c| !word(c));
        before && after
    })
}

/// Indexes left invalid by a failed concurrent build, schema-qualified.
async fn invalid_indexes(client: &Client) -> Vec<String> {
    let sql = "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_index i \
               JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
               WHERE NOT i.indisvalid AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1";
    match client.simple_query(sql).await {
        Ok(messages) => messages
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
                _ => None,
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The error for a failed [`history::lock_and_read`]: a lock timeout names the holder.
pub async fn lock_failure(
    client: &Client,
    tables: &Tables,
    e: &tokio_postgres::Error,
    lock_timeout: Duration,
) -> Error {
    if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
        return Error::LockTimeout {
            waited: format_duration(lock_timeout),
            holder: history::lock_holder(client, tables).await,
        };
    }
    Error::Database {
        context: "cannot read the migration history".into(),
        message: describe(e),
    }
}

/// An SQL `text[]` of literals.
fn text_array(values: &[String]) -> String {
    if values.is_empty() {
        return "'{}'::text[]".into();
    }
    let items: Vec<String> = values.iter().map(|v| literal(v)).collect();
    format!("ARRAY[{}]", items.join(", "))
}

/// The server's message, or the client error with its causes.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    }
}

/// Maps the server's error position (characters into the batch) to a line of the file.
fn error_line(e: &tokio_postgres::Error, prefix_chars: usize, body: &str) -> Option<usize> {
    let ErrorPosition::Original(pos) = e.as_db_error()?.position()? else {
        return None;
    };
    let offset = (*pos as usize).checked_sub(prefix_chars + 1)?;
    let before: String = body.chars().take(offset).collect();
    if before.chars().count() < offset {
        return None;
    }
    Some(before.matches('\n').count() + 1)
}

/// Lines into a single statement where the server says the error is.
fn statement_line_offset(e: &tokio_postgres::Error, sql: &str) -> usize {
    error_line(e, 0, sql).map_or(0, |l| l - 1)
}

/// `60s`, `1500ms`.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_is_named_as_a_whole_word() {
        let sql = "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS items_code ON items (code)";
        assert!(names_index(sql, "public.items_code"));
        assert!(names_index(sql, "public.\"Items_Code\""));
        assert!(!names_index(sql, "public.items_co"));
        assert!(!names_index(sql, "public.code_idx"));
    }
}
