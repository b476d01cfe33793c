//! Migration files: where they come from (the embedded LearnFlow set or `--dir`), their names,
//! their canonical text and checksums, and the checks that reject a broken set before anything runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::lexer::{self, Statement};
use crate::error::Error;

/// The first line that switches a file to statement-by-statement execution.
pub const NO_TRANSACTION_DIRECTIVE: &str = "-- kubectl-pg:no-transaction";

/// The LearnFlow migrations, embedded at build time (see build.rs).
const EMBEDDED: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/embedded_migrations.rs"));

/// One direction (up or down) of a migration.
#[derive(Debug, Clone)]
pub struct Script {
    /// Where the file came from, for messages: a path, or `embedded:NAME`.
    pub origin: String,
    /// The canonical text: BOM removed, line endings turned into LF.
    pub sql: String,
    /// SHA-256 hex of `sql`.
    pub checksum: String,
    /// Whether the file asks to run outside a transaction.
    pub no_transaction: bool,
    pub statements: Vec<Statement>,
    /// SHA-256 hex of each statement's text, in order: what protects the applied statements of
    /// a partly applied no-transaction migration (see [`super::plan::check_partial`]).
    pub statement_checksums: Vec<String>,
}

/// A versioned migration with its up script and, when present, its down script.
#[derive(Debug, Clone)]
pub struct Migration {
    pub version: i64,
    /// The version as written in the file name (`001`), for display.
    pub label: String,
    pub name: String,
    pub up: Script,
    pub down: Option<Script>,
}

impl Migration {
    /// `001_initial_schema`
    pub fn id(&self) -> String {
        format!("{}_{}", self.label, self.name)
    }
}

/// A validated, version-ordered set of migrations.
#[derive(Debug, Clone, Default)]
pub struct MigrationSet {
    pub migrations: Vec<Migration>,
    /// The directory the set was read from; `None` for the embedded set.
    pub dir: Option<PathBuf>,
    /// The files left out because they cannot be used ([`MigrationSet::load_lenient`] only:
    /// the other loaders refuse the set).
    pub problems: Vec<FileProblem>,
}

/// A migration file that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
    /// The version of a down file whose up file does not exist: an applied migration whose up
    /// file was removed, when the history records that version.
    pub up_missing: Option<i64>,
}

impl FileProblem {
    pub fn error(&self) -> Error {
        Error::MigrationFile {
            path: self.path.clone(),
            message: self.message.clone(),
            hint: self.hint.clone(),
        }
    }

    fn from_error(error: Error) -> Result<Self, Error> {
        match error {
            Error::MigrationFile {
                path,
                message,
                hint,
            } => Ok(Self {
                path,
                message,
                hint,
                up_missing: None,
            }),
            other => Err(other),
        }
    }
}

impl MigrationSet {
    /// The set embedded in the binary.
    pub fn embedded() -> Result<Self, Error> {
        let files = EMBEDDED
            .iter()
            .map(|(name, bytes)| RawFile {
                file_name: (*name).to_string(),
                origin: format!("embedded:{name}"),
                bytes: bytes.to_vec(),
            })
            .collect();
        Self::from_files(files, None)?.strict()
    }

    /// Reads every `*.sql` file of `dir`; other files are ignored. A file that cannot be used
    /// refuses the whole set.
    pub fn from_dir(dir: &Path) -> Result<Self, Error> {
        Self::from_files(Self::read_dir(dir)?, Some(dir.to_path_buf()))?.strict()
    }

    /// Like [`MigrationSet::load`], but a file that cannot be used is left out and listed in
    /// `problems` (what `migrate status` shows beside the valid ones).
    pub fn load_lenient(dir: Option<&Path>) -> Result<Self, Error> {
        match dir {
            Some(dir) => Self::from_files(Self::read_dir(dir)?, Some(dir.to_path_buf())),
            None => Self::embedded(),
        }
    }

    /// The set, or the error of its first unusable file.
    fn strict(self) -> Result<Self, Error> {
        match self.problems.first() {
            Some(problem) => Err(problem.error()),
            None => Ok(self),
        }
    }

    fn read_dir(dir: &Path) -> Result<Vec<RawFile>, Error> {
        let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
            context: format!("cannot read migrations directory {}", dir.display()),
            source,
        })?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| Error::Io {
                context: format!("cannot read migrations directory {}", dir.display()),
                source,
            })?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if file_name.starts_with('.') || !file_name.to_ascii_lowercase().ends_with(".sql") {
                continue;
            }
            let path = entry.path();
            let bytes = std::fs::read(&path).map_err(|source| Error::Io {
                context: format!("cannot read {}", path.display()),
                source,
            })?;
            files.push(RawFile {
                file_name,
                origin: path.display().to_string(),
                bytes,
            });
        }
        Ok(files)
    }

    /// Loads `--dir` when given, else the embedded set.
    pub fn load(dir: Option<&Path>) -> Result<Self, Error> {
        match dir {
            Some(dir) => Self::from_dir(dir),
            None => Self::embedded(),
        }
    }

    fn from_files(mut files: Vec<RawFile>, dir: Option<PathBuf>) -> Result<Self, Error> {
        files.sort_by(|a, b| a.file_name.cmp(&b.file_name));
        let mut ups: BTreeMap<i64, (FileName, Script)> = BTreeMap::new();
        let mut downs: BTreeMap<i64, (FileName, Script)> = BTreeMap::new();
        let mut problems = Vec::new();
        // Versions whose up file exists, usable or not: a down file beside an unusable up
        // file is not one without its up file.
        let mut up_files = std::collections::BTreeSet::new();
        let problem = |path: &str, message: String, hint: Option<String>| FileProblem {
            path: path.to_string(),
            message,
            hint,
            up_missing: None,
        };
        for file in files {
            let Some(parsed) = FileName::parse(&file.file_name) else {
                problems.push(problem(
                    &file.origin,
                    "malformed migration file name".into(),
                    Some("name migration files NNN_name.up.sql and NNN_name.down.sql (e.g. 007_add_tags.up.sql)".into()),
                ));
                continue;
            };
            if parsed.up {
                up_files.insert(parsed.version);
            }
            let script = match Script::from_bytes(file.origin, &file.bytes) {
                Ok(script) => script,
                Err(e) => {
                    problems.push(FileProblem::from_error(e)?);
                    continue;
                }
            };
            let map = if parsed.up { &mut ups } else { &mut downs };
            if let Some((_, existing)) = map.get(&parsed.version) {
                problems.push(problem(
                    &script.origin,
                    format!(
                        "version {} is also used by {}",
                        parsed.label, existing.origin
                    ),
                    Some("every migration needs a version of its own".into()),
                ));
                continue;
            }
            map.insert(parsed.version, (parsed, script));
        }
        let mut migrations = Vec::new();
        downs.retain(|version, (name, down)| match ups.get(version) {
            None if up_files.contains(version) => false,
            None => {
                problems.push(FileProblem {
                    up_missing: Some(*version),
                    ..problem(
                        &down.origin,
                        "down migration without its up migration".into(),
                        None,
                    )
                });
                false
            }
            Some((up_name, up)) if up_name.name != name.name => {
                problems.push(problem(
                    &down.origin,
                    format!("name does not match its up migration {}", up.origin),
                    None,
                ));
                false
            }
            Some(_) => true,
        });
        for (version, (name, up)) in ups {
            let down = downs.remove(&version).map(|(_, script)| script);
            migrations.push(Migration {
                version,
                label: name.label,
                name: name.name,
                up,
                down,
            });
        }
        Ok(Self {
            migrations,
            dir,
            problems,
        })
    }

    pub fn get(&self, version: i64) -> Option<&Migration> {
        self.migrations
            .binary_search_by_key(&version, |m| m.version)
            .ok()
            .map(|i| &self.migrations[i])
    }

    /// A version as the files write it, or zero-padded to three digits when no file has it.
    pub fn label(&self, version: i64) -> String {
        self.get(version)
            .map(|m| m.label.clone())
            .unwrap_or_else(|| format!("{version:03}"))
    }

    /// Rejects statements that cannot run where the file would run them.
    pub fn check_transaction_modes(&self) -> Result<(), Error> {
        for m in &self.migrations {
            for script in std::iter::once(&m.up).chain(m.down.as_ref()) {
                script.check_transaction_mode()?;
            }
        }
        Ok(())
    }
}

struct RawFile {
    file_name: String,
    origin: String,
    bytes: Vec<u8>,
}

struct FileName {
    version: i64,
    label: String,
    name: String,
    up: bool,
}

impl FileName {
    /// `NNN_name.up.sql` / `NNN_name.down.sql`; the name holds letters, digits, `_` and `-`.
    fn parse(file_name: &str) -> Option<Self> {
        let (stem, up) = if let Some(stem) = file_name.strip_suffix(".up.sql") {
            (stem, true)
        } else {
            (file_name.strip_suffix(".down.sql")?, false)
        };
        let (label, name) = stem.split_once('_')?;
        if label.is_empty()
            || label.len() > 18
            || !label.bytes().all(|b| b.is_ascii_digit())
            || name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return None;
        }
        Some(Self {
            version: label.parse().ok()?,
            label: label.to_string(),
            name: name.to_string(),
            up,
        })
    }
}

impl Script {
    /// Canonicalises, checksums and splits a file.
    pub fn from_bytes(origin: String, bytes: &[u8]) -> Result<Self, Error> {
        let text = std::str::from_utf8(bytes).map_err(|e| Error::MigrationFile {
            path: origin.clone(),
            message: format!(
                "not valid UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ),
            hint: Some("save the file as UTF-8".into()),
        })?;
        let sql = canonicalize(text);
        let checksum = checksum(&sql);
        let no_transaction = sql
            .lines()
            .next()
            .is_some_and(|first| first.trim_end() == NO_TRANSACTION_DIRECTIVE);
        let statements = lexer::split(&sql).map_err(|e| Error::MigrationFile {
            path: origin.clone(),
            message: e.to_string(),
            hint: None,
        })?;
        let statement_checksums = statements.iter().map(|s| self::checksum(&s.sql)).collect();
        Ok(Self {
            origin,
            sql,
            checksum,
            no_transaction,
            statements,
            statement_checksums,
        })
    }

    /// Statements that cannot run inside a transaction, with the reason.
    pub fn non_transactional(&self) -> Vec<(&Statement, &'static str)> {
        self.statements
            .iter()
            .filter_map(|s| lexer::non_transactional_reason(s).map(|r| (s, r)))
            .collect()
    }

    fn check_transaction_mode(&self) -> Result<(), Error> {
        if self.no_transaction {
            return Ok(());
        }
        if let Some((statement, reason)) = self.non_transactional().first() {
            return Err(Error::MigrationFile {
                path: self.origin.clone(),
                message: format!("line {}: {reason} cannot run inside a transaction", statement.line),
                hint: Some(format!(
                    "make `{NO_TRANSACTION_DIRECTIVE}` the file's first line to run it statement by statement"
                )),
            });
        }
        if let Some((statement, what)) = self
            .statements
            .iter()
            .find_map(|s| lexer::transaction_control(s).map(|w| (s, w)))
        {
            return Err(Error::MigrationFile {
                path: self.origin.clone(),
                message: format!(
                    "line {}: {what} is not allowed: each migration already runs in its own transaction",
                    statement.line
                ),
                hint: Some("remove the transaction control statements from the file".into()),
            });
        }
        Ok(())
    }
}

/// Removes a UTF-8 BOM and turns CRLF and CR into LF; nothing else is normalised.
pub fn canonicalize(text: &str) -> String {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if !text.contains('\r') {
        return text.to_string();
    }
    text.replace("\r\n", "\n").replace('\r', "\n")
}

/// SHA-256 hex digest.
pub fn checksum(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Writes the next-numbered pair of files for `name` into `dir`; returns their paths.
pub fn create_pair(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), Error> {
    let valid = !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        return Err(Error::InvalidInput {
            message: format!("invalid migration name {name:?}: use letters, digits, '_' and '-'"),
            hint: Some(
                "for example: kubectl pg migrate create add_user_tags --dir migrations".into(),
            ),
        });
    }
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        context: format!("cannot create {}", dir.display()),
        source,
    })?;
    let set = MigrationSet::from_dir(dir)?;
    let (next, width) = match set.migrations.last() {
        Some(last) => (last.version + 1, last.label.len().max(3)),
        None => (1, 3),
    };
    let label = format!("{next:0width$}");
    let mut paths = Vec::new();
    for (direction, body) in [
        ("up", format!("-- {label} {name}: write the change here. It runs in one transaction with its history row.\n")),
        ("down", format!("-- {label} {name}: undo exactly what the up migration created.\n")),
    ] {
        let path = dir.join(format!("{label}_{name}.{direction}.sql"));
        write_new(&path, &body)?;
        paths.push(path);
    }
    let down = paths.pop().unwrap_or_default();
    let up = paths.pop().unwrap_or_default();
    Ok((up, down))
}

fn write_new(path: &Path, body: &str) -> Result<(), Error> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| Error::Io {
            context: format!("cannot create {}", path.display()),
            source,
        })?;
    file.write_all(body.as_bytes()).map_err(|source| Error::Io {
        context: format!("cannot write {}", path.display()),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(name: &str, body: &str) -> RawFile {
        RawFile {
            file_name: name.into(),
            origin: name.into(),
            bytes: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn canonical_form_ignores_bom_and_line_endings_only() {
        let lf = "select 1;\nselect 2;\n";
        assert_eq!(
            checksum(&canonicalize("\u{feff}select 1;\r\nselect 2;\r\n")),
            checksum(lf)
        );
        assert_eq!(canonicalize("a\rb"), "a\nb");
        assert_ne!(
            checksum(&canonicalize("select 1; \nselect 2;\n")),
            checksum(lf)
        );
    }

    #[test]
    fn embedded_set_is_valid() {
        let set = MigrationSet::embedded().unwrap();
        assert!(set.migrations.len() >= 6);
        assert!(set.migrations.iter().all(|m| m.down.is_some()));
        set.check_transaction_modes().unwrap();
    }

    #[test]
    fn parses_names() {
        let f = FileName::parse("007_add-tags_2.down.sql").unwrap();
        assert_eq!(
            (f.version, f.label.as_str(), f.name.as_str(), f.up),
            (7, "007", "add-tags_2", false)
        );
        for bad in [
            "1.up.sql",
            "_x.up.sql",
            "01_x.sql",
            "a1_x.up.sql",
            "01_.up.sql",
            "01_x y.up.sql",
        ] {
            assert!(FileName::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn rejects_broken_sets() {
        let strict = |files| MigrationSet::from_files(files, None).and_then(MigrationSet::strict);
        let dup = strict(vec![raw("1_a.up.sql", ""), raw("001_b.up.sql", "")]);
        assert!(dup.unwrap_err().to_string().contains("also used by"));
        let orphan = strict(vec![raw("002_a.down.sql", "")]);
        assert!(orphan.unwrap_err().to_string().contains("without its up"));
        let mismatch = strict(vec![raw("002_a.up.sql", ""), raw("002_b.down.sql", "")]);
        assert!(mismatch.is_err());
        let bad = RawFile {
            file_name: "003_x.up.sql".into(),
            origin: "003_x.up.sql".into(),
            bytes: vec![b's', 0xff, 0xfe],
        };
        assert!(strict(vec![bad]).unwrap_err().to_string().contains("UTF-8"));
    }

    #[test]
    fn a_lenient_set_keeps_the_valid_files_and_lists_the_others() {
        let set = MigrationSet::from_files(
            vec![
                raw("001_a.up.sql", "select 1;"),
                raw("002_b.down.sql", "select 1;"),
                raw("003_c.up.sql", "select 'open;"),
                raw("003_c.down.sql", "select 1;"),
                raw("4-bad.up.sql", "select 1;"),
            ],
            None,
        )
        .unwrap();
        assert_eq!(set.migrations.len(), 1);
        let listed: Vec<(&str, Option<i64>)> = set
            .problems
            .iter()
            .map(|p| (p.path.as_str(), p.up_missing))
            .collect();
        // 003's down file is not one without its up file: that up file is only unusable.
        assert_eq!(
            listed,
            [
                ("003_c.up.sql", None),
                ("4-bad.up.sql", None),
                ("002_b.down.sql", Some(2))
            ]
        );
    }

    #[test]
    fn transaction_modes_are_checked() {
        let set = MigrationSet::from_files(
            vec![raw("1_i.up.sql", "create index concurrently i on t (a);")],
            None,
        )
        .unwrap();
        assert!(set
            .check_transaction_modes()
            .unwrap_err()
            .to_string()
            .contains("CONCURRENTLY"));
        let ok = format!("{NO_TRANSACTION_DIRECTIVE}\ncreate index concurrently i on t (a);");
        let set = MigrationSet::from_files(vec![raw("1_i.up.sql", &ok)], None).unwrap();
        assert!(set.migrations[0].up.no_transaction);
        set.check_transaction_modes().unwrap();
        let commit =
            MigrationSet::from_files(vec![raw("1_c.up.sql", "select 1; commit;")], None).unwrap();
        assert!(commit.check_transaction_modes().is_err());
    }
}
