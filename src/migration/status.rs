//! The `MigrationStatus` document: every known version with its state, from the files and
//! the recorded history.

use serde::Serialize;

use super::history::History;
use super::source::MigrationSet;
use crate::output::API_VERSION;

/// The state of one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Applied,
    /// Recorded by `baseline`, never run by us.
    Baseline,
    /// Recorded by `adopt`: applied by another tool.
    Adopted,
    Pending,
    /// Applied, but the file changed since.
    Drifted,
    /// Applied, but no file has the version.
    Missing,
    /// A no-transaction migration stopped part-way.
    Partial,
    /// A repeatable migration changed since it ran: it runs again.
    Outdated,
    /// A file that cannot be used (named in `name`): the error after the table says why.
    Invalid,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Applied => "applied",
            State::Baseline => "baseline",
            State::Adopted => "adopted",
            State::Pending => "pending",
            State::Drifted => "drifted",
            State::Missing => "missing",
            State::Partial => "partial",
            State::Outdated => "outdated",
            State::Invalid => "invalid",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MigrationEntry {
    pub version: String,
    /// Where the entry sorts: the history key (invalid files last).
    #[serde(skip)]
    pub key: (u8, i64),
    pub name: String,
    pub state: State,
    pub no_transaction: bool,
    /// The checksum of the file, or the recorded one when the file is missing.
    pub checksum: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded_checksum: Option<String>,
    pub applied_at: Option<String>,
    pub execution_ms: Option<i64>,
    pub applied_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statements_done: Option<usize>,
}

/// `kind: MigrationStatus`.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationStatus {
    #[serde(rename = "apiVersion")]
    pub api_version: &'static str,
    pub kind: &'static str,
    pub database: String,
    pub source: String,
    pub applied: usize,
    pub pending: usize,
    pub latest_version: Option<String>,
    pub migrations: Vec<MigrationEntry>,
}

impl MigrationStatus {
    pub fn build(set: &MigrationSet, history: &History, database: String) -> Self {
        let mut entries = Vec::new();
        for m in &set.migrations {
            let recorded = history.applied.get(&m.version);
            let partial = history.partial(m.version, true);
            let state = match (recorded, partial) {
                (Some(r), _) if m.repeatable && r.checksum != m.up.checksum => State::Outdated,
                (Some(r), _) if r.checksum != m.up.checksum => State::Drifted,
                (Some(r), _) if r.applied_by.contains(" (adopted from ") => State::Adopted,
                (Some(r), _) if r.execution_ms.is_none() => State::Baseline,
                (Some(_), _) => State::Applied,
                (None, Some(_)) => State::Partial,
                (None, None) => State::Pending,
            };
            entries.push(MigrationEntry {
                key: (u8::from(m.repeatable), m.version),
                version: m.label.clone(),
                name: m.name.clone(),
                state,
                no_transaction: m.up.no_transaction,
                checksum: m.up.checksum.clone(),
                recorded_checksum: recorded
                    .filter(|r| r.checksum != m.up.checksum && !m.repeatable)
                    .map(|r| r.checksum.clone()),
                applied_at: recorded.map(|r| r.applied_at.clone()),
                execution_ms: recorded.and_then(|r| r.execution_ms),
                applied_by: recorded.map(|r| r.applied_by.clone()),
                statements_done: partial.map(|p| p.statements_done),
            });
        }
        for r in history
            .applied
            .values()
            .filter(|r| set.get(r.version).is_none())
        {
            entries.push(MigrationEntry {
                key: (u8::from(r.version < 0), r.version),
                version: set.label(r.version),
                name: r.name.clone(),
                state: State::Missing,
                no_transaction: false,
                checksum: r.checksum.clone(),
                recorded_checksum: None,
                applied_at: Some(r.applied_at.clone()),
                execution_ms: r.execution_ms,
                applied_by: Some(r.applied_by.clone()),
                statements_done: None,
            });
        }
        for problem in &set.problems {
            let file = std::path::Path::new(&problem.path).file_name().map_or_else(
                || problem.path.clone(),
                |f| f.to_string_lossy().into_owned(),
            );
            entries.push(MigrationEntry {
                key: (2, 0),
                version: "-".into(),
                name: file,
                state: State::Invalid,
                no_transaction: false,
                checksum: "-".into(),
                recorded_checksum: None,
                applied_at: None,
                execution_ms: None,
                applied_by: None,
                statements_done: None,
            });
        }
        entries.sort_by_key(|e| e.key);
        let applied = history.applied.len();
        let pending = entries
            .iter()
            .filter(|e| matches!(e.state, State::Pending | State::Partial | State::Outdated))
            .count();
        Self {
            api_version: API_VERSION,
            kind: "MigrationStatus",
            database,
            source: match &set.dir {
                Some(dir) => dir.display().to_string(),
                None => "embedded (LearnFlow)".into(),
            },
            applied,
            pending,
            latest_version: history.max_applied().map(|v| set.label(v)),
            migrations: entries,
        }
    }
}
