//! What a run will do, decided from the files and the recorded history alone, and the
//! safety checks that must pass before anything runs.

use super::history::{History, Partial};
use super::source::{Migration, MigrationSet, Script};
use crate::error::{Drift, Error};

/// Which way a step goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

/// One migration to run in one direction.
#[derive(Debug, Clone)]
pub struct Step<'a> {
    pub migration: &'a Migration,
    pub direction: Direction,
    /// Statements already done by an interrupted no-transaction run.
    pub resume_from: usize,
}

impl<'a> Step<'a> {
    pub fn script(&self) -> &'a Script {
        match self.direction {
            Direction::Up => &self.migration.up,
            // plan_down only builds steps for migrations with a down script.
            Direction::Down => self.migration.down.as_ref().unwrap_or(&self.migration.up),
        }
    }
}

/// How far `down` goes.
#[derive(Debug, Clone, Copy)]
pub enum DownTarget {
    Steps(usize),
    /// Revert every applied version above this one (`0` reverts all).
    To(i64),
}

/// Fails when an applied file changed (drift), or an applied version has no file.
pub fn check_history(set: &MigrationSet, history: &History) -> Result<(), Error> {
    let mut drifts = Vec::new();
    let mut missing = Vec::new();
    for applied in history.applied.values() {
        match set.get(applied.version) {
            None => missing.push(format!("{}_{}", set.label(applied.version), applied.name)),
            // A changed repeatable migration is not drift: it runs again.
            Some(m) if m.repeatable => {}
            Some(m) if m.up.checksum != applied.checksum => drifts.push(Drift {
                migration: m.id(),
                recorded: applied.checksum.clone(),
                current: m.up.checksum.clone(),
            }),
            Some(_) => {}
        }
    }
    if !drifts.is_empty() {
        return Err(Error::Drift(drifts));
    }
    for partial in &history.partial {
        let Some(m) = set.get(partial.version) else {
            continue;
        };
        check_partial(m, partial)?;
    }
    if !missing.is_empty() {
        return Err(Error::Migration {
            message: format!(
                "applied migration(s) missing from the migration files: {}",
                missing.join(", ")
            ),
            hints: vec!["run with the --dir that applied them, or restore the files".into()],
        });
    }
    Ok(())
}

/// How the applied statements of a partly applied no-transaction migration compare with its
/// file now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartialCheck {
    /// The applied statements are unchanged (later ones may have changed: that is the fix of
    /// the failed statement), so a run resumes at `statements_done + 1` of the current file.
    Unchanged,
    /// Statement `index` (0-based) of the applied ones changed, or the file no longer has it.
    Changed { index: usize, line: Option<usize> },
    /// Recorded by a version without per-statement checksums, and the file changed since.
    UnknownChanged,
}

/// The rule for a partly applied no-transaction migration: the statements already applied are
/// what the checksum protects. Each applied statement's checksum is recorded; a file whose
/// first `statements_done` statements have those checksums resumes with its next statement.
/// Without recorded statement checksums (older progress rows) the whole file must be unchanged.
pub fn compare_partial(m: &Migration, partial: &Partial) -> PartialCheck {
    let script = if partial.up {
        &m.up
    } else {
        match &m.down {
            Some(down) => down,
            None => return PartialCheck::Unchanged,
        }
    };
    let recorded = partial
        .statement_checksums
        .as_ref()
        .filter(|c| c.len() >= partial.statements_done);
    let Some(recorded) = recorded else {
        return if script.checksum == partial.checksum {
            PartialCheck::Unchanged
        } else {
            PartialCheck::UnknownChanged
        };
    };
    for (index, applied) in recorded.iter().take(partial.statements_done).enumerate() {
        if script.statement_checksums.get(index) != Some(applied) {
            return PartialCheck::Changed {
                index,
                line: script.statements.get(index).map(|s| s.line),
            };
        }
    }
    PartialCheck::Unchanged
}

/// Refuses a partly applied migration whose applied statements changed (exit 7), naming the
/// first changed statement and the ways out.
pub fn check_partial(m: &Migration, partial: &Partial) -> Result<(), Error> {
    let direction = if partial.up { "up" } else { "down" };
    let done = partial.statements_done;
    let what = match compare_partial(m, partial) {
        PartialCheck::Unchanged => return Ok(()),
        PartialCheck::Changed { index, line: Some(line) } => format!(
            "its applied statement #{} (line {line}) changed since it ran",
            index + 1
        ),
        PartialCheck::Changed { index, line: None } => format!(
            "the file no longer has its applied statement #{}",
            index + 1
        ),
        PartialCheck::UnknownChanged => "the file changed, and the progress was recorded without per-statement checksums (by an older kubectl-pg), so any change counts".into(),
    };
    Err(Error::Migration {
        message: format!(
            "{} ({direction}) is partly applied (statements #1-#{done} ran) and {what}",
            m.id()
        ),
        hints: vec![
            format!("only the statements after #{done} may change before the run resumes: restore the applied ones as they ran, and run the command again"),
            format!(
                "or undo by hand what statements #1-#{done} did, then `kubectl pg migrate repair --version {} --yes` forgets the progress, and `up` runs the file from its first statement",
                m.label
            ),
        ],
    })
}

/// The pending migrations up to `to`, in version order, then the repeatable ones that are new
/// or changed since they ran, by name (Flyway's order).
pub fn plan_up<'a>(
    set: &'a MigrationSet,
    history: &History,
    to: Option<i64>,
    allow_out_of_order: bool,
) -> Result<Vec<Step<'a>>, Error> {
    check_history(set, history)?;
    let mut pending: Vec<&Migration> = set
        .migrations
        .iter()
        .filter(|m| !m.repeatable && !history.applied.contains_key(&m.version))
        .filter(|m| to.is_none_or(|to| m.version <= to))
        .collect();
    let mut repeatable: Vec<&Migration> = set
        .migrations
        .iter()
        .filter(|m| m.repeatable)
        .filter(|m| {
            history
                .applied
                .get(&m.version)
                .is_none_or(|a| a.checksum != m.up.checksum)
        })
        .collect();
    repeatable.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(max) = history.max_applied() {
        let late: Vec<String> = pending
            .iter()
            .filter(|m| m.version < max)
            .map(|m| m.id())
            .collect();
        if !late.is_empty() && !allow_out_of_order {
            return Err(Error::Migration {
                message: format!(
                    "pending migration(s) older than the latest applied version {}: {}",
                    set.label(max),
                    late.join(", ")
                ),
                hints: vec![
                    "renumber them above the latest applied version, or pass --allow-out-of-order"
                        .into(),
                ],
            });
        }
    }
    pending.extend(repeatable);
    Ok(pending
        .into_iter()
        .map(|migration| Step {
            migration,
            direction: Direction::Up,
            resume_from: history
                .partial(migration.version, true)
                .map_or(0, |p| p.statements_done),
        })
        .collect())
}

/// The applied migrations to revert, newest first.
pub fn plan_down<'a>(
    set: &'a MigrationSet,
    history: &History,
    target: DownTarget,
) -> Result<Vec<Step<'a>>, Error> {
    check_history(set, history)?;
    // Repeatable migrations (negative keys) are never reverted.
    let applied = history.applied.keys().rev().filter(|v| **v >= 0);
    let versions: Vec<i64> = match target {
        DownTarget::Steps(n) => applied.take(n).copied().collect(),
        DownTarget::To(to) => applied.filter(|v| **v > to).copied().collect(),
    };
    let mut steps = Vec::new();
    for version in versions {
        // check_history guarantees every applied version has its files.
        let Some(migration) = set.get(version) else {
            continue;
        };
        if migration.down.is_none() {
            return Err(Error::MigrationFile {
                path: migration.up.origin.clone(),
                message: format!(
                    "no down migration ({}) to revert it with",
                    set.format.down_of(migration)
                ),
                hint: Some("write it, then run the command again".into()),
            });
        }
        steps.push(Step {
            migration,
            direction: Direction::Down,
            resume_from: history
                .partial(version, false)
                .map_or(0, |p| p.statements_done),
        });
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::super::history::Applied;
    use super::*;

    fn set(files: &[(&str, &str)]) -> MigrationSet {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in files {
            std::fs::write(dir.path().join(name), body).unwrap();
        }
        MigrationSet::from_dir(dir.path()).unwrap()
    }

    fn applied(set: &MigrationSet, version: i64) -> Applied {
        let m = set.get(version).unwrap();
        Applied {
            version,
            name: m.name.clone(),
            checksum: m.up.checksum.clone(),
            down_checksum: None,
            applied_at: String::new(),
            execution_ms: Some(1),
            applied_by: String::new(),
        }
    }

    fn three() -> MigrationSet {
        set(&[
            ("001_a.up.sql", "select 1;"),
            ("001_a.down.sql", "select 1;"),
            ("002_b.up.sql", "select 2;"),
            ("002_b.down.sql", "select 2;"),
            ("003_c.up.sql", "select 3;"),
        ])
    }

    fn versions(steps: &[Step<'_>]) -> Vec<i64> {
        steps.iter().map(|s| s.migration.version).collect()
    }

    #[test]
    fn up_plans_pending_in_order_and_stops_at_target() {
        let set = three();
        let mut history = History::default();
        assert_eq!(
            versions(&plan_up(&set, &history, None, false).unwrap()),
            [1, 2, 3]
        );
        assert_eq!(
            versions(&plan_up(&set, &history, Some(2), false).unwrap()),
            [1, 2]
        );
        history.applied.insert(1, applied(&set, 1));
        assert_eq!(
            versions(&plan_up(&set, &history, None, false).unwrap()),
            [2, 3]
        );
    }

    #[test]
    fn out_of_order_needs_the_flag() {
        let set = three();
        let mut history = History::default();
        history.applied.insert(1, applied(&set, 1));
        history.applied.insert(3, applied(&set, 3));
        let err = plan_up(&set, &history, None, false).unwrap_err();
        assert_eq!(err.exit_code(), 7);
        assert!(err.to_string().contains("002_b"));
        assert_eq!(versions(&plan_up(&set, &history, None, true).unwrap()), [2]);
    }

    #[test]
    fn drift_and_missing_files_stop_everything() {
        let set = three();
        let mut history = History::default();
        let mut changed = applied(&set, 1);
        changed.checksum = "0".repeat(64);
        history.applied.insert(1, changed);
        assert!(
            matches!(plan_up(&set, &history, None, false), Err(Error::Drift(d)) if d.len() == 1)
        );
        let mut history = History::default();
        let mut gone = applied(&set, 1);
        gone.version = 9;
        history.applied.insert(9, gone);
        let err = plan_down(&set, &history, DownTarget::Steps(1)).unwrap_err();
        assert!(err.to_string().contains("009_a"), "{err}");
    }

    #[test]
    fn down_plans_newest_first_and_needs_down_files() {
        let set = three();
        let mut history = History::default();
        for v in [1, 2] {
            history.applied.insert(v, applied(&set, v));
        }
        assert_eq!(
            versions(&plan_down(&set, &history, DownTarget::Steps(1)).unwrap()),
            [2]
        );
        assert_eq!(
            versions(&plan_down(&set, &history, DownTarget::To(0)).unwrap()),
            [2, 1]
        );
        history.applied.insert(3, applied(&set, 3));
        let err = plan_down(&set, &history, DownTarget::To(1)).unwrap_err();
        assert_eq!(err.exit_code(), 1);
        assert!(err.to_string().contains("003_c"));
    }

    #[test]
    fn partial_runs_resume() {
        let set = three();
        let mut history = History::default();
        history.partial.push(Partial {
            version: 2,
            up: true,
            checksum: set.get(2).unwrap().up.checksum.clone(),
            statements_done: 4,
            statement_checksums: None,
        });
        let plan = plan_up(&set, &history, None, false).unwrap();
        assert_eq!(plan[1].resume_from, 4);
        // Recorded without statement checksums: any change of the file is refused.
        history.partial[0].checksum = "x".into();
        let err = plan_up(&set, &history, None, false).unwrap_err();
        assert_eq!(err.exit_code(), 7);
        assert!(
            err.to_string().contains("002_b (up) is partly applied"),
            "{err}"
        );
    }

    fn no_tx(body: &str) -> MigrationSet {
        set(&[(
            "001_n.up.sql",
            &format!("-- kubectl-pg:no-transaction\n{body}"),
        )])
    }

    #[test]
    fn a_fixed_failed_statement_resumes_and_a_changed_applied_one_is_refused() {
        let before =
            no_tx("create table a (id int);\ncreate table b (oops);\ncreate table c (id int);\n");
        let m = before.get(1).unwrap();
        let partial = Partial {
            version: 1,
            up: true,
            checksum: m.up.checksum.clone(),
            statements_done: 1,
            statement_checksums: Some(m.up.statement_checksums[..1].to_vec()),
        };
        let fixed =
            no_tx("create table a (id int);\ncreate table b (id int);\ncreate table c (id int);\n");
        let mut history = History::default();
        history.partial.push(partial.clone());
        let plan = plan_up(&fixed, &history, None, false).unwrap();
        assert_eq!(plan[0].resume_from, 1);

        let changed = no_tx("create table a (id bigint);\ncreate table b (id int);\n");
        assert_eq!(
            compare_partial(changed.get(1).unwrap(), &partial),
            PartialCheck::Changed {
                index: 0,
                line: Some(2)
            }
        );
        let err = plan_up(&changed, &history, None, false).unwrap_err();
        assert_eq!(err.exit_code(), 7);
        assert!(err.to_string().contains("statement #1 (line 2)"), "{err}");

        // Without recorded statement checksums (an older row), the whole file is compared.
        let mut old = partial.clone();
        old.statement_checksums = None;
        assert_eq!(compare_partial(m, &old), PartialCheck::Unchanged);
        assert_eq!(
            compare_partial(fixed.get(1).unwrap(), &old),
            PartialCheck::UnknownChanged
        );
        // A file that lost an applied statement.
        let mut two = partial;
        two.statements_done = 2;
        two.statement_checksums = Some(m.up.statement_checksums[..2].to_vec());
        let shorter = no_tx("create table a (id int);\n");
        assert_eq!(
            compare_partial(shorter.get(1).unwrap(), &two),
            PartialCheck::Changed {
                index: 1,
                line: None
            }
        );
    }
}
