//! The migration file formats the plugin reads: its own and those of golang-migrate, dbmate,
//! Flyway and sqlx. How a directory's format is detected, how each format names its files,
//! and how a file maps to one migration:
//!
//! | format | files | one migration |
//! |---|---|---|
//! | kubectl-pg | `NNN_name.up.sql` / `.down.sql` | the pair |
//! | golang-migrate | `{version}_{title}.up.sql` / `.down.sql` | the pair; the down may be absent |
//! | dbmate | `{version}_{name}.sql` | the file: its `-- migrate:up` and `-- migrate:down` sections |
//! | Flyway | `V{version}__{desc}.sql`, `U{version}__{desc}.sql`, `R__{desc}.sql` | V and its U; each R on its own |
//! | sqlx | `{version}_{desc}.sql`, or `.up.sql` / `.down.sql` | the file, or the pair |
//!
//! Every format's checksum is the SHA-256 of the canonical text that runs (for dbmate, the up
//! section, with the lines before it kept as empty lines so that errors name the file's line).

use std::fmt;

/// A migration file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    KubectlPg,
    GolangMigrate,
    Dbmate,
    Flyway,
    Sqlx,
}

impl Format {
    /// Every format, as `--format` names them.
    pub const ALL: [Format; 5] = [
        Format::GolangMigrate,
        Format::Dbmate,
        Format::Flyway,
        Format::Sqlx,
        Format::KubectlPg,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Format::KubectlPg => "kubectl-pg",
            Format::GolangMigrate => "golang-migrate",
            Format::Dbmate => "dbmate",
            Format::Flyway => "flyway",
            Format::Sqlx => "sqlx",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Another tool's format: its files may wrap themselves in `BEGIN … COMMIT`, and a file
    /// with statements that cannot run in a transaction runs without one (the other tools
    /// have no directive for it, or detect it themselves).
    pub fn is_foreign(self) -> bool {
        self != Format::KubectlPg
    }

    /// The history key of a version as the user writes it (`--to`, `--version`).
    pub fn key_of(self, version: &str) -> Option<i64> {
        match self {
            Format::Flyway => flyway_key(version).ok(),
            _ if !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()) => {
                version.parse().ok()
            }
            _ => None,
        }
    }

    /// Where a migration's down would be, for the error of one without it.
    pub fn down_of(self, m: &super::source::Migration) -> String {
        match self {
            Format::Flyway => format!("U{}__{}.sql", m.label, m.name),
            Format::Dbmate => "a `-- migrate:down` section with a statement".into(),
            _ => format!("{}.down.sql", m.id()),
        }
    }

    /// A history key written as the files write versions, when no file has it.
    pub fn label_of(self, key: i64) -> String {
        match self {
            Format::Flyway if key < 0 => "R".into(),
            Format::Flyway => {
                let (major, minor, patch) = (key / 10_000, key / 100 % 100, key % 100);
                match (minor, patch) {
                    (0, 0) => major.to_string(),
                    (_, 0) => format!("{major}.{minor}"),
                    _ => format!("{major}.{minor}.{patch}"),
                }
            }
            _ => format!("{key:03}"),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a file is, from its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Up,
    Down,
    /// A dbmate file, or a sqlx simple file: the whole migration (dbmate's holds both directions).
    Whole,
    /// A Flyway `R__` file.
    Repeatable,
}

/// A file name read by a format's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    /// The history key: the version as a number (see [`flyway_key`] for Flyway's).
    pub key: i64,
    /// The version as the file writes it (Flyway's `_` shown as `.`).
    pub label: String,
    pub name: String,
    pub role: Role,
}

/// The name rules of `format`, or why the name does not follow them.
pub fn parse_name(format: Format, file_name: &str) -> Result<Named, String> {
    let bad = || Err(name_hint(format).to_string());
    match format {
        Format::KubectlPg | Format::GolangMigrate => {
            let (stem, role) = match split_direction(file_name) {
                Some(found) => found,
                None => return bad(),
            };
            let Some((label, name)) = stem.split_once('_') else {
                return bad();
            };
            let strict = format == Format::KubectlPg;
            let name_ok = !name.is_empty()
                && (!strict
                    || name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
            if !name_ok {
                return bad();
            }
            numbered(label, name, role)
        }
        Format::Dbmate => {
            let Some(stem) = file_name.strip_suffix(".sql") else {
                return bad();
            };
            let digits = stem.bytes().take_while(u8::is_ascii_digit).count();
            let (label, rest) = stem.split_at(digits);
            numbered(label, rest.trim_start_matches('_'), Role::Whole)
        }
        Format::Sqlx => {
            let (stem, role) = split_direction(file_name).unwrap_or_else(|| {
                (
                    file_name.strip_suffix(".sql").unwrap_or(file_name),
                    Role::Whole,
                )
            });
            if !file_name.ends_with(".sql") {
                return bad();
            }
            let Some((label, name)) = stem.split_once('_') else {
                return bad();
            };
            numbered(label, name, role)
        }
        Format::Flyway => {
            let Some(stem) = file_name.strip_suffix(".sql") else {
                return bad();
            };
            if let Some(desc) = stem.strip_prefix("R__") {
                if desc.is_empty() {
                    return bad();
                }
                return Ok(Named {
                    key: repeatable_key(desc),
                    label: "R".into(),
                    name: desc.to_string(),
                    role: Role::Repeatable,
                });
            }
            let (role, rest) = match stem.split_at_checked(1) {
                Some(("V", rest)) => (Role::Up, rest),
                Some(("U", rest)) => (Role::Down, rest),
                _ => return bad(),
            };
            let Some((version, desc)) = rest.split_once("__") else {
                return bad();
            };
            let key = flyway_key(version)?;
            Ok(Named {
                key,
                label: version.replace('_', "."),
                name: desc.to_string(),
                role,
            })
        }
    }
}

fn split_direction(file_name: &str) -> Option<(&str, Role)> {
    if let Some(stem) = file_name.strip_suffix(".up.sql") {
        Some((stem, Role::Up))
    } else {
        file_name
            .strip_suffix(".down.sql")
            .map(|stem| (stem, Role::Down))
    }
}

fn numbered(label: &str, name: &str, role: Role) -> Result<Named, String> {
    if label.is_empty() || label.len() > 18 || !label.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the version must be digits (at most 18)".into());
    }
    Ok(Named {
        key: label.parse().map_err(|_| "version too large".to_string())?,
        label: label.to_string(),
        name: name.to_string(),
        role,
    })
}

/// How a format wants its files named, for the error of a file that is not.
pub fn name_hint(format: Format) -> &'static str {
    match format {
        Format::KubectlPg => "name migration files NNN_name.up.sql and NNN_name.down.sql (e.g. 007_add_tags.up.sql)",
        Format::GolangMigrate => "golang-migrate files are {version}_{title}.up.sql and {version}_{title}.down.sql",
        Format::Dbmate => "dbmate files are {version}_{name}.sql, with -- migrate:up and -- migrate:down sections",
        Format::Flyway => "Flyway files are V{version}__{description}.sql (version like 1, 1.1 or 2_1), U{version}__{description}.sql and R__{description}.sql",
        Format::Sqlx => "sqlx files are {version}_{description}.sql, or {version}_{description}.up.sql and .down.sql",
    }
}

/// The largest major version a Flyway key holds.
const FLYWAY_MAX_MAJOR: i64 = i64::MAX / 10_000;

/// The history key of a Flyway version (`1`, `1.1`, `2_1`, `1.2.3`): its parts compared as
/// numbers, trailing zero parts ignored (Flyway's own order: 1 < 1.1 < 2_1 < 10, and 1.0 is 1),
/// packed as `major * 10^4 + minor * 10^2 + patch`. So the key keeps Flyway's order in the
/// history's bigint, within these bounds: three parts, the second and third below 100, the
/// first up to 15 digits (a `yyyyMMddHHmmss` timestamp fits).
pub fn flyway_key(version: &str) -> Result<i64, String> {
    let parts: Vec<&str> = version.split(['.', '_']).collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "{version:?} is not a Flyway version (digits separated by . or _)"
        ));
    }
    let mut numbers: Vec<u128> = parts
        .iter()
        .map(|p| p.parse().unwrap_or(u128::MAX))
        .collect();
    while numbers.len() > 1 && numbers.last() == Some(&0) {
        numbers.pop();
    }
    let too_large = || {
        format!("Flyway version {version} is beyond what kubectl-pg can record: at most three parts, the second and third below 100, the first at most {FLYWAY_MAX_MAJOR}")
    };
    if numbers.len() > 3 || numbers.iter().skip(1).any(|n| *n >= 100) {
        return Err(too_large());
    }
    let major = i64::try_from(numbers[0])
        .ok()
        .filter(|m| *m <= FLYWAY_MAX_MAJOR)
        .ok_or_else(too_large)?;
    let part = |i: usize| numbers.get(i).copied().unwrap_or(0) as i64;
    Ok(major * 10_000 + part(1) * 100 + part(2))
}

/// The history key of a Flyway repeatable: negative (below every version, so `down` and the
/// version order never meet it), stable for its description.
pub fn repeatable_key(description: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(description.as_bytes());
    let mut bytes = [0u8; 8];
    bytes[1..].copy_from_slice(&digest[..7]);
    -(i64::from_be_bytes(bytes)) - 1
}

/// A dbmate file's sections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbmateSections {
    /// The up section, the lines before it kept as empty lines.
    pub up: String,
    pub up_transaction: bool,
    /// The down section likewise, when the file has one with a statement.
    pub down: Option<String>,
    pub down_transaction: bool,
}

/// Splits a dbmate file at its `-- migrate:up` and `-- migrate:down` lines, with their
/// `transaction:false` option.
pub fn dbmate_sections(text: &str) -> Result<DbmateSections, String> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let marker = |line: &str, what: &str| -> Option<bool> {
        let rest = line.trim_end().strip_prefix("--")?.trim_start();
        let options = rest.strip_prefix(what)?;
        if !options.is_empty() && !options.starts_with(char::is_whitespace) {
            return None;
        }
        Some(!options.split_whitespace().any(|o| o == "transaction:false"))
    };
    let up_at = lines.iter().position(|l| marker(l, "migrate:up").is_some());
    let down_at = lines
        .iter()
        .position(|l| marker(l, "migrate:down").is_some());
    let Some(up_at) = up_at else {
        return Err("a dbmate file needs a `-- migrate:up` line".into());
    };
    let section = |from: usize, to: usize| -> String {
        let mut out = "\n".repeat(from + 1);
        for line in &lines[from + 1..to] {
            out.push_str(line);
        }
        out
    };
    let end_of = |at: usize, other: Option<usize>| match other {
        Some(o) if o > at => o,
        _ => lines.len(),
    };
    let up = section(up_at, end_of(up_at, down_at));
    let down = down_at.map(|d| section(d, end_of(d, Some(up_at))));
    Ok(DbmateSections {
        up,
        up_transaction: marker(lines[up_at], "migrate:up").unwrap_or(true),
        down_transaction: down_at
            .and_then(|d| marker(lines[d], "migrate:down"))
            .unwrap_or(true),
        down: down.filter(|d| has_sql(d)),
    })
}

/// Whether a text holds anything but comments and whitespace.
fn has_sql(text: &str) -> bool {
    super::lexer::split(text).is_ok_and(|s| !s.is_empty())
}

/// Detects a directory's format from its files' names and texts: Flyway by its `V…__`,
/// `U…__` and `R__` names; dbmate by a `-- migrate:up` line; sqlx by a `{version}_{desc}.sql`
/// file or a `-- no-transaction` first line; golang-migrate by a pair that wraps itself in
/// `BEGIN … COMMIT`, holds a statement that cannot run in a transaction or has a title
/// kubectl-pg's names do not allow (`1_add.users.up.sql`); else kubectl-pg
/// (whose pairs are named as golang-migrate's, and run the same way when they are plain).
pub fn detect<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> Format {
    let files: Vec<(&str, &str)> = files.into_iter().collect();
    let is_flyway = |name: &str| {
        name.ends_with(".sql")
            && (name.starts_with("R__")
                || ((name.starts_with('V') || name.starts_with('U'))
                    && name[1..].starts_with(|c: char| c.is_ascii_digit())
                    && name.contains("__")))
    };
    if files.iter().any(|(name, _)| is_flyway(name)) {
        return Format::Flyway;
    }
    if files.iter().any(|(_, text)| dbmate_sections(text).is_ok()) {
        return Format::Dbmate;
    }
    let first_line = |text: &str| {
        text.trim_start_matches('\u{feff}')
            .lines()
            .next()
            .unwrap_or("")
            .trim_end()
            .to_string()
    };
    if files
        .iter()
        .any(|(_, text)| first_line(text) == super::source::NO_TRANSACTION_DIRECTIVE)
    {
        return Format::KubectlPg;
    }
    let simple_sqlx = |name: &str| {
        split_direction(name).is_none()
            && name
                .strip_suffix(".sql")
                .and_then(|s| s.split_once('_'))
                .is_some_and(|(v, _)| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
    };
    if files
        .iter()
        .any(|(name, text)| simple_sqlx(name) || first_line(text) == SQLX_NO_TRANSACTION)
    {
        return Format::Sqlx;
    }
    let golang = files.iter().any(|(name, text)| {
        let title_only_golang = parse_name(Format::KubectlPg, name).is_err()
            && parse_name(Format::GolangMigrate, name).is_ok();
        title_only_golang
            || split_direction(name).is_some()
                && super::lexer::split(text).is_ok_and(|statements| {
                    statements.iter().any(|s| {
                        super::lexer::transaction_control(s).is_some()
                            || super::lexer::non_transactional_reason(s).is_some()
                    })
                })
    });
    if golang {
        Format::GolangMigrate
    } else {
        Format::KubectlPg
    }
}

/// sqlx's first line that runs a file outside a transaction.
pub const SQLX_NO_TRANSACTION: &str = "-- no-transaction";

/// How a file of another tool's format runs: the outer `BEGIN … COMMIT` it wraps itself in is
/// dropped (the migration's own transaction takes its place, with the history row inside);
/// a file with a statement that cannot run in a transaction runs without one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wrapping {
    /// No transaction control: runs in the migration's transaction.
    Plain,
    /// The first and last statements are `BEGIN` and `COMMIT`, and no other controls the
    /// transaction: the indexes of the two.
    Wrapped(usize, usize),
}

/// The outer `BEGIN … COMMIT` of a file's statements, when that is its only transaction control.
pub fn wrapping(statements: &[super::lexer::Statement]) -> Wrapping {
    use super::lexer::transaction_control;
    let controls: Vec<usize> = statements
        .iter()
        .enumerate()
        .filter(|(_, s)| transaction_control(s).is_some())
        .map(|(i, _)| i)
        .collect();
    let last = statements.len().wrapping_sub(1);
    let begins = |i: usize| {
        matches!(
            statements[i].keywords.first().map(String::as_str),
            Some("BEGIN" | "START")
        )
    };
    let commits = |i: usize| {
        matches!(
            statements[i].keywords.first().map(String::as_str),
            Some("COMMIT" | "END")
        )
    };
    match controls.as_slice() {
        [0, l] if *l == last && begins(0) && commits(*l) => Wrapping::Wrapped(0, *l),
        _ => Wrapping::Plain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flyway_versions_keep_flyways_order() {
        let keys: Vec<i64> = ["1", "1.1", "2_1", "10"]
            .iter()
            .map(|v| flyway_key(v).unwrap())
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
        assert_eq!(flyway_key("1.0").unwrap(), flyway_key("1").unwrap());
        assert_eq!(flyway_key("2.1").unwrap(), flyway_key("2_1").unwrap());
        assert!(flyway_key("1.2.3").unwrap() < flyway_key("1.10").unwrap());
        assert!(flyway_key("1.100").is_err());
        assert!(flyway_key("20230101120000").is_ok());
        assert_eq!(
            Format::Flyway.label_of(flyway_key("1.2.3").unwrap()),
            "1.2.3"
        );
        assert!(flyway_key("1.2.3.4").is_err());
        assert!(flyway_key("1..2").is_err());
        assert_eq!(Format::Flyway.label_of(flyway_key("2_1").unwrap()), "2.1");
        assert_eq!(Format::Flyway.label_of(flyway_key("10").unwrap()), "10");
    }

    #[test]
    fn names_by_format() {
        let n = parse_name(Format::Flyway, "V2_1__add_tags.sql").unwrap();
        assert_eq!(
            (n.label.as_str(), n.name.as_str(), n.role),
            ("2.1", "add_tags", Role::Up)
        );
        let u = parse_name(Format::Flyway, "U2.1__add_tags.sql").unwrap();
        assert_eq!((u.key, u.role), (n.key, Role::Down));
        let r = parse_name(Format::Flyway, "R__views.sql").unwrap();
        assert!(r.key < 0 && r.role == Role::Repeatable);
        assert!(parse_name(Format::Flyway, "V1_add.sql").is_err());
        let d = parse_name(Format::Dbmate, "20151129054053_create_users.sql").unwrap();
        assert_eq!((d.key, d.name.as_str()), (20151129054053, "create_users"));
        let s = parse_name(Format::Sqlx, "20240101000000_users.sql").unwrap();
        assert_eq!(s.role, Role::Whole);
        let s = parse_name(Format::Sqlx, "1_users.down.sql").unwrap();
        assert_eq!(s.role, Role::Down);
        // golang-migrate's titles may hold any character; kubectl-pg's may not.
        assert!(parse_name(Format::GolangMigrate, "1_add users.up.sql").is_ok());
        assert!(parse_name(Format::KubectlPg, "1_add users.up.sql").is_err());
    }

    #[test]
    fn dbmate_sections_and_options() {
        let text = "-- migrate:up transaction:false\ncreate index concurrently i on t (a);\n\n-- migrate:down\ndrop index i;\n";
        let s = dbmate_sections(text).unwrap();
        assert_eq!(s.up, "\ncreate index concurrently i on t (a);\n\n");
        assert!(!s.up_transaction && s.down_transaction);
        assert_eq!(s.down.as_deref(), Some("\n\n\n\ndrop index i;\n"));
        let up_only = dbmate_sections("--migrate:up\nselect 1;\n-- migrate:down\n").unwrap();
        assert_eq!(up_only.down, None);
        assert!(dbmate_sections("select 1;").is_err());
        assert!(dbmate_sections("-- migrate:upper\nselect 1;").is_err());
    }

    #[test]
    fn formats_are_detected_per_directory() {
        assert_eq!(detect([("V1__a.sql", "select 1;")]), Format::Flyway);
        assert_eq!(detect([("R__v.sql", "select 1;")]), Format::Flyway);
        assert_eq!(
            detect([("1_a.sql", "-- migrate:up\nselect 1;\n-- migrate:down\n")]),
            Format::Dbmate
        );
        assert_eq!(detect([("1_a.sql", "select 1;")]), Format::Sqlx);
        assert_eq!(
            detect([("1_a.up.sql", "-- no-transaction\nvacuum;")]),
            Format::Sqlx
        );
        assert_eq!(
            detect([("1_a.up.sql", "BEGIN;\nselect 1;\nCOMMIT;")]),
            Format::GolangMigrate
        );
        assert_eq!(
            detect([("1_a.up.sql", "create index concurrently i on t (a);")]),
            Format::GolangMigrate
        );
        assert_eq!(detect([("1_a.up.sql", "select 1;")]), Format::KubectlPg);
        assert_eq!(
            detect([("1_add.users.up.sql", "select 1;")]),
            Format::GolangMigrate
        );
        assert_eq!(
            detect([(
                "1_a.up.sql",
                "-- kubectl-pg:no-transaction\ncreate index concurrently i on t (a);"
            )]),
            Format::KubectlPg
        );
    }

    #[test]
    fn only_an_outer_begin_commit_is_a_wrapper() {
        let w = |sql: &str| wrapping(&super::super::lexer::split(sql).unwrap());
        assert_eq!(w("BEGIN;\nselect 1;\nCOMMIT;\n"), Wrapping::Wrapped(0, 2));
        assert_eq!(
            w("-- c\nSTART TRANSACTION;\nselect 1;\nEND;"),
            Wrapping::Wrapped(0, 2)
        );
        assert_eq!(w("select 1;"), Wrapping::Plain);
        assert_eq!(
            w("BEGIN;\nselect 1;\nCOMMIT;\nBEGIN;\nselect 2;\nCOMMIT;"),
            Wrapping::Plain
        );
        assert_eq!(w("BEGIN;\nselect 1;"), Wrapping::Plain);
        assert_eq!(w("select 1;\nCOMMIT;"), Wrapping::Plain);
        // A DO block's BEGIN is inside its dollar quote, not a statement.
        assert_eq!(w("DO $$BEGIN PERFORM 1; END$$;"), Wrapping::Plain);
    }
}
