//! Migration files: where they come from (the embedded LearnFlow set or `--dir`), their names,
//! their canonical text and checksums, and the checks that reject a broken set before anything runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::format::{self, Format, Role, Wrapping};
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
    /// SHA-384 hex of the file's bytes as they are (BOM and CRLF kept): sqlx's checksum, which
    /// `adopt --from sqlx` compares. Empty for a dbmate section.
    pub raw_sha384: String,
    /// Whether the file runs outside a transaction, statement by statement.
    pub no_transaction: bool,
    /// Why a file of another tool's format runs outside a transaction without asking: the
    /// first statement that cannot run in one.
    pub auto_no_transaction: Option<(usize, &'static str)>,
    /// What runs in the migration's transaction: `sql`, less an outer `BEGIN … COMMIT` of
    /// another tool's format (blanked in place, so lines keep their numbers).
    pub body: String,
    /// Whether the file wrapped itself in `BEGIN … COMMIT` (dropped: see `body`).
    pub wrapped: bool,
    /// The statements that run (an outer `BEGIN … COMMIT` left out).
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
    /// A Flyway `R__` file: applied after the versioned ones, again whenever it changes, never
    /// reverted.
    pub repeatable: bool,
}

impl Migration {
    /// `001_initial_schema`; `R__views` for a repeatable one.
    pub fn id(&self) -> String {
        if self.repeatable {
            format!("R__{}", self.name)
        } else {
            format!("{}_{}", self.label, self.name)
        }
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
    /// The files' format, detected or forced.
    pub format: Format,
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
        Self::from_files(files, None, Some(Format::KubectlPg))?.strict()
    }

    /// Reads every `*.sql` file of `dir`; other files are ignored. A file that cannot be used
    /// refuses the whole set.
    pub fn from_dir(dir: &Path) -> Result<Self, Error> {
        Self::from_files(Self::read_dir(dir)?, Some(dir.to_path_buf()), None)?.strict()
    }

    /// Like [`MigrationSet::load`], but a file that cannot be used is left out and listed in
    /// `problems` (what `migrate status` shows beside the valid ones); `format` forces the
    /// files' format instead of detecting it.
    pub fn load_lenient(dir: Option<&Path>, format: Option<Format>) -> Result<Self, Error> {
        match dir {
            Some(dir) => Self::from_files(Self::read_dir(dir)?, Some(dir.to_path_buf()), format),
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

    fn from_files(
        mut files: Vec<RawFile>,
        dir: Option<PathBuf>,
        format: Option<Format>,
    ) -> Result<Self, Error> {
        files.sort_by(|a, b| a.file_name.cmp(&b.file_name));
        let format = format.unwrap_or_else(|| {
            let texts: Vec<(String, String)> = files
                .iter()
                .map(|f| {
                    (
                        f.file_name.clone(),
                        String::from_utf8_lossy(&f.bytes).into_owned(),
                    )
                })
                .collect();
            format::detect(texts.iter().map(|(n, t)| (n.as_str(), t.as_str())))
        });
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
            let parsed = match format::parse_name(format, &file.file_name) {
                Ok(parsed) => parsed,
                Err(why) => {
                    let hint = format::name_hint(format);
                    let message = if why == hint {
                        format!("malformed migration file name for the {format} format")
                    } else {
                        format!("malformed migration file name: {why}")
                    };
                    problems.push(problem(&file.origin, message, Some(hint.into())));
                    continue;
                }
            };
            let up = parsed.role != Role::Down;
            let name = FileName {
                version: parsed.key,
                label: parsed.label,
                name: parsed.name,
                repeatable: parsed.role == Role::Repeatable,
            };
            if up {
                up_files.insert(name.version);
            }
            let scripts = match Script::of_file(format, &parsed.role, file.origin, &file.bytes) {
                Ok(scripts) => scripts,
                Err(e) => {
                    problems.push(FileProblem::from_error(e)?);
                    continue;
                }
            };
            let (script, down) = scripts;
            let map = if up { &mut ups } else { &mut downs };
            if let Some((existing_name, existing)) = map.get(&name.version) {
                let message = if name.repeatable && existing_name.repeatable {
                    format!("its key collides with that of {}", existing.origin)
                } else {
                    format!("version {} is also used by {}", name.label, existing.origin)
                };
                problems.push(problem(
                    &script.origin,
                    message,
                    Some("every migration needs a version of its own".into()),
                ));
                continue;
            }
            let version = name.version;
            map.insert(version, (name.clone(), script));
            if let Some(down) = down {
                downs.insert(version, (name, down));
            }
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
            // Flyway's undo files may describe their migration otherwise.
            Some((up_name, up)) if up_name.name != name.name && format != Format::Flyway => {
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
                repeatable: name.repeatable,
            });
        }
        Ok(Self {
            migrations,
            dir,
            problems,
            format,
        })
    }

    pub fn get(&self, version: i64) -> Option<&Migration> {
        self.migrations
            .binary_search_by_key(&version, |m| m.version)
            .ok()
            .map(|i| &self.migrations[i])
    }

    /// A version as the files write it, or as the format writes versions when no file has it.
    pub fn label(&self, version: i64) -> String {
        self.get(version)
            .map(|m| m.label.clone())
            .unwrap_or_else(|| self.format.label_of(version))
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

#[derive(Clone)]
struct FileName {
    version: i64,
    label: String,
    name: String,
    repeatable: bool,
}

impl Script {
    /// Canonicalises, checksums and splits a file of the kubectl-pg format.
    pub fn from_bytes(origin: String, bytes: &[u8]) -> Result<Self, Error> {
        let sql = canonicalize(decode(&origin, bytes)?);
        let no_transaction = first_line_is(&sql, NO_TRANSACTION_DIRECTIVE);
        Self::from_text(origin, sql, Format::KubectlPg, no_transaction)
            .map(|script| script.with_raw(bytes))
    }

    fn with_raw(mut self, bytes: &[u8]) -> Self {
        use sha2::Sha384;
        self.raw_sha384 = hex::encode(Sha384::digest(bytes));
        self
    }

    /// The up script of a file, and the down script a dbmate file also holds.
    fn of_file(
        format: Format,
        role: &Role,
        origin: String,
        bytes: &[u8],
    ) -> Result<(Self, Option<Self>), Error> {
        let sql = canonicalize(decode(&origin, bytes)?);
        match format {
            Format::KubectlPg => Ok((Self::from_bytes(origin, bytes)?, None)),
            Format::Dbmate if *role == Role::Whole => {
                let sections =
                    format::dbmate_sections(&sql).map_err(|message| Error::MigrationFile {
                        path: origin.clone(),
                        message,
                        hint: Some(format::name_hint(format).into()),
                    })?;
                let down = match sections.down {
                    Some(down) => Some(Self::from_text(
                        origin.clone(),
                        down,
                        format,
                        !sections.down_transaction,
                    )?),
                    None => None,
                };
                let up = Self::from_text(origin, sections.up, format, !sections.up_transaction)?;
                Ok((up, down))
            }
            Format::Sqlx => {
                let no_transaction = first_line_is(&sql, format::SQLX_NO_TRANSACTION);
                let script = Self::from_text(origin, sql, format, no_transaction)?;
                Ok((script.with_raw(bytes), None))
            }
            _ => Ok((
                Self::from_text(origin, sql, format, false)?.with_raw(bytes),
                None,
            )),
        }
    }

    /// Checksums and splits canonical text. Another tool's format drops an outer `BEGIN …
    /// COMMIT` and runs a file with a statement that cannot run in a transaction without one.
    fn from_text(
        origin: String,
        sql: String,
        format: Format,
        mut no_transaction: bool,
    ) -> Result<Self, Error> {
        let checksum = checksum(&sql);
        let mut statements = lexer::split(&sql).map_err(|e| Error::MigrationFile {
            path: origin.clone(),
            message: e.to_string(),
            hint: None,
        })?;
        let mut body = sql.clone();
        let mut wrapped = false;
        let mut auto_no_transaction = None;
        if format.is_foreign() && !no_transaction {
            if let Wrapping::Wrapped(first, last) = format::wrapping(&statements) {
                for index in [first, last] {
                    blank(&mut body, statements[index].span.clone());
                }
                statements.remove(last);
                statements.remove(first);
                wrapped = true;
            }
            let found = statements
                .iter()
                .find_map(|s| lexer::non_transactional_reason(s).map(|r| (s.line, r)));
            if let Some((line, reason)) = found {
                if wrapped {
                    return Err(Error::MigrationFile {
                        path: origin,
                        message: format!(
                            "line {line}: {reason} cannot run inside the BEGIN … COMMIT the file wraps itself in"
                        ),
                        hint: Some("remove the BEGIN and COMMIT lines: the file then runs statement by statement, outside a transaction".into()),
                    });
                }
                no_transaction = true;
                auto_no_transaction = Some((line, reason));
            }
        }
        let statement_checksums = statements.iter().map(|s| self::checksum(&s.sql)).collect();
        Ok(Self {
            origin,
            sql,
            checksum,
            no_transaction,
            auto_no_transaction,
            body,
            wrapped,
            statements,
            statement_checksums,
            raw_sha384: String::new(),
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

fn decode<'a>(origin: &str, bytes: &'a [u8]) -> Result<&'a str, Error> {
    std::str::from_utf8(bytes).map_err(|e| Error::MigrationFile {
        path: origin.to_string(),
        message: format!(
            "not valid UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        ),
        hint: Some("save the file as UTF-8".into()),
    })
}

fn first_line_is(sql: &str, directive: &str) -> bool {
    sql.lines()
        .next()
        .is_some_and(|first| first.trim_end() == directive)
}

/// Blanks a range of text in place, keeping its line breaks (and so every line's number).
fn blank(text: &mut String, range: std::ops::Range<usize>) {
    let replaced: String = text[range.clone()]
        .chars()
        .map(|c| if c == '\n' { '\n' } else { ' ' })
        .collect();
    text.replace_range(range, &replaced);
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
    if !matches!(set.format, Format::KubectlPg | Format::GolangMigrate) {
        return Err(Error::InvalidInput {
            message: format!(
                "create writes NNN_name.up.sql/.down.sql pairs, and {} holds {} files",
                dir.display(),
                set.format
            ),
            hint: Some(format!(
                "name the new file as {} does: {}",
                set.format,
                format::name_hint(set.format)
            )),
        });
    }
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
        let parse = |name| format::parse_name(Format::KubectlPg, name);
        let f = parse("007_add-tags_2.down.sql").unwrap();
        assert_eq!(
            (f.key, f.label.as_str(), f.name.as_str(), f.role),
            (7, "007", "add-tags_2", Role::Down)
        );
        for bad in [
            "1.up.sql",
            "_x.up.sql",
            "01_x.sql",
            "a1_x.up.sql",
            "01_.up.sql",
            "01_x y.up.sql",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_broken_sets() {
        let strict = |files| {
            MigrationSet::from_files(files, None, Some(Format::KubectlPg))
                .and_then(MigrationSet::strict)
        };
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
            Some(Format::KubectlPg),
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
    fn each_format_maps_its_files_to_migrations() {
        let load = |format, files: Vec<RawFile>| {
            MigrationSet::from_files(files, None, Some(format))
                .and_then(MigrationSet::strict)
                .unwrap()
        };
        // dbmate: one file, both directions, each with its own transaction mode.
        let set = load(
            Format::Dbmate,
            vec![raw(
                "20240101000000_idx.sql",
                "-- migrate:up transaction:false\ncreate index concurrently i on t (a);\n-- migrate:down\ndrop index i;\n",
            )],
        );
        let m = &set.migrations[0];
        assert!(m.up.no_transaction && m.up.auto_no_transaction.is_none());
        assert_eq!(m.up.statements[0].line, 2);
        assert!(!m.down.as_ref().unwrap().no_transaction);
        // Flyway: V with its U, R on its own, in Flyway's version order.
        let set = load(
            Format::Flyway,
            vec![
                raw("V10__c.sql", "select 10;"),
                raw("V2_1__b.sql", "select 2;"),
                raw("U2_1__b.sql", "select -2;"),
                raw("V1__a.sql", "select 1;"),
                raw("R__views.sql", "select 0;"),
            ],
        );
        let ids: Vec<String> = set.migrations.iter().map(Migration::id).collect();
        assert_eq!(ids, ["R__views", "1_a", "2.1_b", "10_c"]);
        assert!(set.migrations[2].down.is_some() && set.migrations[0].repeatable);
        // sqlx: a simple file, and a pair.
        let set = load(
            Format::Sqlx,
            vec![
                raw("1_a.sql", "-- no-transaction\nvacuum;"),
                raw("2_b.up.sql", "select 1;"),
                raw("2_b.down.sql", "select 1;"),
            ],
        );
        assert!(set.migrations[0].up.no_transaction && set.migrations[1].down.is_some());
        // golang-migrate: the outer BEGIN/COMMIT is blanked in place, lines kept.
        let set = load(
            Format::GolangMigrate,
            vec![raw(
                "1_a.up.sql",
                "BEGIN;\ncreate table t (a int);\nCOMMIT;\n",
            )],
        );
        let up = &set.migrations[0].up;
        assert!(up.wrapped && !up.no_transaction);
        assert_eq!(up.body, "      \ncreate table t (a int);\n       \n");
        assert_eq!(up.statements.len(), 1);
        assert_eq!(up.checksum, checksum(&up.sql));
        // A concurrent index inside the wrapper cannot run at all: refused with the fix.
        let bad = MigrationSet::from_files(
            vec![raw(
                "1_a.up.sql",
                "BEGIN;\ncreate index concurrently i on t (a);\nCOMMIT;\n",
            )],
            None,
            Some(Format::GolangMigrate),
        )
        .unwrap();
        assert!(bad.problems[0].message.contains("wraps itself in"));
    }

    #[test]
    fn transaction_modes_are_checked() {
        let set = MigrationSet::from_files(
            vec![raw("1_i.up.sql", "create index concurrently i on t (a);")],
            None,
            Some(Format::KubectlPg),
        )
        .unwrap();
        assert!(set
            .check_transaction_modes()
            .unwrap_err()
            .to_string()
            .contains("CONCURRENTLY"));
        let ok = format!("{NO_TRANSACTION_DIRECTIVE}\ncreate index concurrently i on t (a);");
        let set =
            MigrationSet::from_files(vec![raw("1_i.up.sql", &ok)], None, Some(Format::KubectlPg))
                .unwrap();
        assert!(set.migrations[0].up.no_transaction);
        set.check_transaction_modes().unwrap();
        let commit = MigrationSet::from_files(
            vec![raw("1_c.up.sql", "select 1; commit;")],
            None,
            Some(Format::KubectlPg),
        )
        .unwrap();
        assert!(commit.check_transaction_modes().is_err());
    }
}
