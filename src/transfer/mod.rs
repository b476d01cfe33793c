//! Logical dumps and restores of a release's databases: the server's own `pg_dump`,
//! `pg_dumpall`, `pg_restore` and `psql`, run in its pod through exec over the local socket
//! (trusted there, so no password travels anywhere), their streams carried chunk by chunk.

pub mod file;
pub mod filter;
pub mod locks;
pub mod progress;
pub mod script;
pub mod snapshot;
pub mod whole;

pub use file::PendingFile;
pub use progress::{human_bytes, Progress};

use crate::error::Error;

/// The first bytes of a custom-format archive (`pg_dump -Fc`).
pub const ARCHIVE_MAGIC: &[u8] = b"PGDMP";
/// How pg_dumpall begins its script: a whole cluster, roles and `CREATE DATABASE` included.
const CLUSTER_HEADER: &str = "-- PostgreSQL database cluster dump";

/// The format of a dump (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DumpFormat {
    /// pg_dump's custom archive: compressed, restored selectively by pg_restore.
    Custom,
    /// A SQL script, for psql.
    Plain,
}

impl DumpFormat {
    /// The name `--format` and the documents use.
    pub fn name(self) -> &'static str {
        match self {
            DumpFormat::Custom => "custom",
            DumpFormat::Plain => "plain",
        }
    }
}

/// What to dump: one database, or the whole cluster (roles and every database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DumpScope {
    Database(String),
    Cluster,
}

/// The command line of the dump in the pod: `pg_dump` for a database, `pg_dumpall` for the
/// cluster, as `user` over the local socket, then the user's own arguments.
pub fn dump_command(
    user: &str,
    scope: &DumpScope,
    format: DumpFormat,
    tag: &str,
    extra: &[String],
) -> Result<Vec<String>, Error> {
    refuse_output_args(extra)?;
    let mut argv: Vec<String> = match scope {
        DumpScope::Database(db) => {
            let flag = match format {
                DumpFormat::Custom => "--format=custom",
                DumpFormat::Plain => "--format=plain",
            };
            vec![
                "pg_dump".into(),
                "-U".into(),
                user.into(),
                "-d".into(),
                conninfo(db, tag),
                flag.into(),
            ]
        }
        DumpScope::Cluster if format == DumpFormat::Custom => {
            return Err(Error::InvalidInput {
                message: "--all dumps with pg_dumpall, which writes plain SQL only".into(),
                hint: Some(
                    "drop --format custom, or dump one database: kubectl pg dump -d DB".into(),
                ),
            })
        }
        DumpScope::Cluster => vec![
            "pg_dumpall".into(),
            "-U".into(),
            user.into(),
            "-d".into(),
            conninfo("postgres", tag),
        ],
    };
    argv.extend(extra.iter().cloned());
    Ok(argv)
}

/// pg_dump's and pg_dumpall's short options that take a value (`-n public`, `-npublic`).
const SHORT_WITH_VALUE: &str = "deEfFhjnNpStTUZl";

/// Refuses the pass-through arguments that would take the dump's output from us: `-f` /
/// `--file` writes it inside the pod (the local file stays empty while the command reports
/// success), and `-F` / `--format` makes a format other than the one `--format` states (a
/// directory cannot be streamed at all). Short options are read as getopt reads them,
/// clustered (`-vf x`) or with the value attached (`-Fp`), and a long one by any prefix
/// getopt would take for it.
pub fn refuse_output_args(extra: &[String]) -> Result<(), Error> {
    let mut args = extra.iter();
    while let Some(arg) = args.next() {
        if arg == "--" {
            break;
        }
        let refused = if let Some(long) = arg.strip_prefix("--") {
            let name = long.split('=').next().unwrap_or_default();
            if name == "file" {
                Some('f')
            } else if name.len() >= 2 && "format".starts_with(name) {
                Some('F')
            } else {
                None
            }
        } else if let Some(short) = arg.strip_prefix('-') {
            let mut refused = None;
            for (i, c) in short.char_indices() {
                if c == 'f' || c == 'F' {
                    refused = Some(c);
                    break;
                }
                if SHORT_WITH_VALUE.contains(c) {
                    if i + c.len_utf8() == short.len() {
                        // Its value is the next argument, not an option.
                        args.next();
                    }
                    break;
                }
            }
            refused
        } else {
            None
        };
        match refused {
            Some('f') => {
                return Err(Error::InvalidInput {
                    message: format!(
                        "pg_dump's {arg} would write the dump inside the pod, leaving nothing here"
                    ),
                    hint: Some(
                        "give the local file to kubectl pg dump itself, before the --: kubectl pg dump -f FILE"
                            .into(),
                    ),
                })
            }
            Some(_) => {
                return Err(Error::InvalidInput {
                    message: format!(
                        "pg_dump's {arg}: the format is kubectl pg dump's own --format (custom or plain), which the result reports"
                    ),
                    hint: Some("kubectl pg dump --format plain -f FILE (before the --)".into()),
                })
            }
            None => {}
        }
    }
    Ok(())
}

/// What an input to restore holds, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// A custom-format archive: for pg_restore.
    Archive,
    /// A SQL script of one database: for psql.
    Sql,
    /// pg_dumpall's script of a whole cluster.
    ClusterSql,
}

impl InputKind {
    /// The name the result documents use.
    pub fn name(self) -> &'static str {
        match self {
            InputKind::Archive => "custom",
            InputKind::Sql => "plain",
            InputKind::ClusterSql => "cluster",
        }
    }
}

/// Tells an archive (the `PGDMP` magic) from SQL, and a cluster script by its header, which
/// pg_dumpall writes within its first lines.
pub fn sniff(head: &[u8]) -> InputKind {
    if head.starts_with(ARCHIVE_MAGIC) {
        return InputKind::Archive;
    }
    let text = String::from_utf8_lossy(&head[..head.len().min(4096)]);
    if text
        .lines()
        .take(20)
        .any(|l| l.trim_end() == CLUSTER_HEADER)
    {
        InputKind::ClusterSql
    } else {
        InputKind::Sql
    }
}

/// The command line that restores `kind` from its stdin into `database`, in one transaction
/// and stopping at the first error, so a failure leaves the database as it was. A script runs
/// between the [`SCRIPT_BEGIN`] and [`SCRIPT_COMMIT`] its caller sends around it (not psql's
/// `--single-transaction`, which commits at the end of its input, wherever a cut stream ends it). `clean` drops
/// the archive's objects first (pg_restore only: a script's drops are decided when dumping).
pub fn restore_command(
    kind: InputKind,
    user: &str,
    role: Option<&str>,
    database: &str,
    clean: bool,
    tag: &str,
    extra: &[String],
) -> Result<Vec<String>, Error> {
    let db = conninfo(database, tag);
    let database = db.as_str();
    let mut argv: Vec<String> = match kind {
        InputKind::Archive => {
            let mut argv: Vec<String> = [
                "pg_restore",
                "-U",
                user,
                "-d",
                database,
                "--single-transaction",
                "--exit-on-error",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if clean {
                argv.extend(["--clean".into(), "--if-exists".into()]);
            }
            if let Some(role) = role {
                argv.push(format!("--role={role}"));
            }
            argv
        }
        InputKind::Sql if clean => {
            return Err(Error::InvalidInput {
                message: "--clean works with custom-format archives only: a SQL script drops what it was dumped to drop".into(),
                hint: Some(
                    "dump with --format custom, or make the script drop first: kubectl pg dump --format plain -- --clean --if-exists"
                        .into(),
                ),
            })
        }
        InputKind::Sql => {
            let mut argv: Vec<String> = [
                "psql",
                "-X",
                "-q",
                "-U",
                user,
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            // psql runs -c and -f in their order: the script's session is the owner's.
            if let Some(role) = role {
                argv.extend([
                    "-c".into(),
                    format!("SET ROLE {}", crate::migration::history::quote_ident(role)),
                ]);
            }
            argv.extend(["-f".into(), "-".into()]);
            argv
        }
        InputKind::ClusterSql => {
            return Err(Error::InvalidInput {
                message: "this is a pg_dumpall script of a whole cluster (roles, CREATE DATABASE): it cannot run in one transaction, so restore does not take it".into(),
                hint: Some(
                    "run it yourself, knowing it is not atomic: kubectl pg psql -- -d postgres -f - < FILE; or dump one database: kubectl pg dump -d DB"
                        .into(),
                ),
            })
        }
    };
    argv.extend(extra.iter().cloned());
    Ok(argv)
}

/// Sent before a SQL script: everything after it is one transaction.
pub const SCRIPT_BEGIN: &str = "BEGIN;\n";
/// Sent after the script's last byte arrived: only a whole script commits.
pub const SCRIPT_COMMIT: &str = "\nCOMMIT;\n";

/// A failed dump or restore as our error: exit 8 when the tool never reached the server,
/// else exit 1 with the tool's own message and `hints`.
pub fn failure(tool: String, reason: String, target: String, hints: Vec<String>) -> Error {
    if no_session(&reason) {
        Error::Connection { target, reason }
    } else {
        Error::Tool {
            tool,
            message: reason,
            hints,
        }
    }
}

/// Whether a tool's message says it never reached the server (exit 8 rather than 1); a
/// server that answered with a FATAL (a database that does not exist) is the input's fault.
pub fn no_session(stderr: &str) -> bool {
    stderr.contains("connection to server")
        && stderr.contains("failed")
        && !stderr.contains("FATAL")
}

/// The `application_name` a transfer's sessions carry, unique to this run, so an interrupted
/// one can be ended on the server: an exec whose client went away keeps its process running
/// (pg_dump waiting for a lock, pg_restore inside its transaction) until it next writes.
pub fn session_tag() -> String {
    use rand::Rng;
    format!(
        "kubectl-pg-{}-{:08x}",
        std::process::id(),
        rand::rng().random::<u32>()
    )
}

/// A libpq connection string naming `database` and the session's tag (values quoted, so any
/// database name is safe).
pub fn conninfo(database: &str, tag: &str) -> String {
    use crate::database::connection::libpq_quote;
    format!(
        "dbname={} application_name={}",
        libpq_quote(database),
        libpq_quote(tag)
    )
}

/// Ends the sessions of an interrupted transfer, through a psql of its own in the pod as
/// `user` (the transfer's socket role); best effort (the interrupt's exit code is what the user gets either way).
pub async fn terminate(
    cluster: &crate::cluster::Cluster,
    target: &crate::cluster::release::Target,
    user: &str,
    tag: &str,
) {
    let _ = crate::cluster::exec::run(
        cluster,
        &target.namespace,
        &target.pod,
        crate::manifests::render::CONTAINER,
        &["psql", "-X", "-q", "-At", "-U", user, "-d", "postgres"],
        &terminate_sql(tag),
    )
    .await;
}

/// The SQL that ends every session of a transfer (rolling back what it had begun).
pub fn terminate_sql(tag: &str) -> String {
    format!(
        "select pg_terminate_backend(pid) from pg_stat_activity where application_name = {} and pid <> pg_backend_pid();\n",
        crate::migration::history::literal(tag)
    )
}

/// `kind: DumpResult`: the file a dump wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DumpResult {
    #[serde(rename = "apiVersion")]
    pub api_version: &'static str,
    pub kind: &'static str,
    pub release: String,
    pub namespace: String,
    pub file: String,
    pub bytes: u64,
    /// None for a dump of the whole cluster (`--all`).
    pub database: Option<String>,
    pub all: bool,
    pub format: DumpFormat,
    pub duration_ms: u64,
}

/// `kind: RestoreResult`: what a restore read and where it went.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreResult {
    #[serde(rename = "apiVersion")]
    pub api_version: &'static str,
    pub kind: &'static str,
    pub release: String,
    pub namespace: String,
    pub database: String,
    /// The file, or `-` for stdin.
    pub input: String,
    /// `custom` (an archive, through pg_restore) or `plain` (SQL, through psql).
    pub format: &'static str,
    pub bytes: u64,
    pub clean: bool,
    pub duration_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_through_arguments_cannot_take_the_output() {
        let refused = |args: &[&str]| {
            let extra: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            dump_command(
                "app",
                &DumpScope::Database("db".into()),
                DumpFormat::Custom,
                "t",
                &extra,
            )
            .err()
            .map(|e| e.to_string())
        };
        for output in [
            &["-f", "x"][..],
            &["-fx"],
            &["-vf", "x"],
            &["--file", "x"],
            &["--file=x"],
        ] {
            let err = refused(output).unwrap_or_else(|| panic!("{output:?} accepted"));
            assert!(err.contains("inside the pod"), "{output:?}: {err}");
        }
        for format in [
            &["-F", "d"][..],
            &["-Fp"],
            &["--format=directory"],
            &["--format", "plain"],
            &["--form=d"],
            &["-vFc"],
        ] {
            let err = refused(format).unwrap_or_else(|| panic!("{format:?} accepted"));
            assert!(err.contains("--format"), "{format:?}: {err}");
        }
        for fine in [
            &["--schema", "public"][..],
            &["-n", "-f"],
            &["-nf"],
            &["-t", "format"],
            &["--filter=rules"],
            &["-v", "--", "-f"],
            &["-Z", "9"],
        ] {
            assert_eq!(refused(fine), None, "{fine:?}");
        }
    }

    #[test]
    fn dump_commands_carry_no_secret_and_the_users_arguments_last() {
        let extra = vec!["--schema".to_string(), "public".to_string()];
        let argv = dump_command(
            "app",
            &DumpScope::Database("learnflow".into()),
            DumpFormat::Custom,
            "t1",
            &extra,
        )
        .unwrap();
        assert_eq!(
            argv.join(" "),
            "pg_dump -U app -d dbname='learnflow' application_name='t1' --format=custom --schema public"
        );
        let all = dump_command("app", &DumpScope::Cluster, DumpFormat::Plain, "t1", &[]).unwrap();
        assert_eq!(
            all.join(" "),
            "pg_dumpall -U app -d dbname='postgres' application_name='t1'"
        );
        assert!(dump_command("app", &DumpScope::Cluster, DumpFormat::Custom, "t1", &[]).is_err());
        assert_eq!(
            conninfo("o'k\\", "t"),
            "dbname='o\\'k\\\\' application_name='t'"
        );
    }

    #[test]
    fn sniffs_archives_scripts_and_cluster_scripts() {
        assert_eq!(sniff(b"PGDMP\x01\x10"), InputKind::Archive);
        assert_eq!(
            sniff(b"--\n-- PostgreSQL database dump\n--\n"),
            InputKind::Sql
        );
        assert_eq!(
            sniff(b"--\n-- PostgreSQL database cluster dump\n--\n\nSET x;\n"),
            InputKind::ClusterSql
        );
        assert_eq!(sniff(b"PGDM"), InputKind::Sql);
    }

    #[test]
    fn restores_are_one_transaction_that_stops_at_the_first_error() {
        let archive =
            restore_command(InputKind::Archive, "app", None, "db", true, "t", &[]).unwrap();
        let text = archive.join(" ");
        assert!(
            text.starts_with("pg_restore -U app -d dbname='db' application_name='t'"),
            "{text}"
        );
        for flag in [
            "--single-transaction",
            "--exit-on-error",
            "--clean",
            "--if-exists",
        ] {
            assert!(archive.iter().any(|a| a == flag), "{flag}: {text}");
        }
        let sql = restore_command(InputKind::Sql, "app", None, "db", false, "t", &[]).unwrap();
        let text = sql.join(" ");
        assert!(text.contains("ON_ERROR_STOP=1"), "{text}");
        assert!(restore_command(InputKind::Sql, "app", None, "db", true, "t", &[]).is_err());
        assert!(
            restore_command(InputKind::ClusterSql, "app", None, "db", false, "t", &[]).is_err()
        );
    }

    #[test]
    fn a_restore_as_the_socket_role_creates_what_the_owner_owns() {
        let archive = restore_command(
            InputKind::Archive,
            "postgres",
            Some("app"),
            "db",
            false,
            "t",
            &[],
        )
        .unwrap();
        assert!(archive.iter().any(|a| a == "--role=app"), "{archive:?}");
        let sql = restore_command(
            InputKind::Sql,
            "postgres",
            Some("a\"b"),
            "db",
            false,
            "t",
            &[],
        )
        .unwrap();
        let at = sql.iter().position(|a| a == "-c").unwrap();
        assert_eq!(sql[at + 1], "SET ROLE \"a\"\"b\"");
        assert_eq!(&sql[at + 2..], ["-f", "-"]);
    }
}
