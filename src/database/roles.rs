//! Application users: the PostgreSQL roles `kubectl pg user` makes for apps (LOGIN, no
//! superuser, no CREATEDB, no CREATEROLE), their grants, and password changes, sent as SCRAM
//! verifiers so that no server log can hold a usable password.
//!
//! The statements are built here as text (role names and passwords cannot be bind parameters in
//! DDL) from validated names, quoted as identifiers, and run on a session the caller opened.

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::error::Error;
use crate::migration::history::literal;

/// The label that marks a Secret as an application user's, its value the role name.
pub const LABEL_USER: &str = "kubectl-pg.io/user";
/// The label saying whether the user may only read (`true`) or also write (`false`).
pub const LABEL_READONLY: &str = "kubectl-pg.io/readonly";
/// The start of the comment on every role `kubectl pg user create` makes: the database's own
/// record that the role is ours, so `user delete` never drops a role someone made by hand and
/// `user list` can tell a role whose Secret is gone.
pub const ROLE_COMMENT: &str = "kubectl-pg application user";

/// Role names PostgreSQL refuses (`CREATE ROLE public` fails: "role name \"public\" is
/// reserved") or that a role specification reads as something else (`GRANT … TO current_user`).
const RESERVED_ROLES: &[&str] = &[
    "public",
    "none",
    "current_user",
    "current_role",
    "session_user",
    "system_user",
];

/// PostgreSQL's fully reserved key words (`kwlist.h`, category `RESERVED_KEYWORD`, as of 18):
/// a role, or database, of one of these names works only when every statement and every client
/// quotes it, which the official image's entrypoint and many tools do not.
const RESERVED_KEYWORDS: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "column",
    "constraint",
    "create",
    "current_catalog",
    "current_date",
    "current_role",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "from",
    "grant",
    "group",
    "having",
    "in",
    "initially",
    "intersect",
    "into",
    "lateral",
    "leading",
    "limit",
    "localtime",
    "localtimestamp",
    "not",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "placing",
    "primary",
    "references",
    "returning",
    "select",
    "session_user",
    "some",
    "symmetric",
    "system_user",
    "table",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "when",
    "where",
    "window",
    "with",
];

/// Why PostgreSQL would refuse `name` as a role, or misread it: `pg_…` and the reserved role
/// names, and the reserved key words. Case does not matter: the image's entrypoint and psql's
/// `-U` meet the name in both its quoted and unquoted forms.
pub fn reserved_role(name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("pg_") {
        Some("names starting with pg_ are reserved by PostgreSQL".into())
    } else if RESERVED_ROLES.contains(&lower.as_str()) {
        Some(format!("PostgreSQL reserves the role name {lower}"))
    } else if is_reserved_keyword(&lower) {
        Some(format!(
            "{lower} is an SQL key word PostgreSQL reserves: every statement would have to quote it"
        ))
    } else {
        None
    }
}

/// Whether `word` (any case) is one of PostgreSQL's reserved key words.
pub fn is_reserved_keyword(word: &str) -> bool {
    let lower = word.to_ascii_lowercase();
    RESERVED_KEYWORDS.binary_search(&lower.as_str()).is_ok()
}

/// An application user's name: a PostgreSQL identifier that needs no quoting in any client
/// (lower-case letters, digits and `_`, starting with a letter, 63 characters at most), that
/// is not a reserved role (`pg_…`, `public`, …) or key word, nor the release's own superuser,
/// and whose Secret could never be taken for a release's own (see [`secret_name`]).
pub fn validate_user_name(name: &str) -> Result<(), Error> {
    validate_user_name_syntax(name)?;
    if let Some(reason) = reserved_role(name) {
        let stem = name
            .strip_prefix("pg_")
            .unwrap_or(name)
            .trim_start_matches('_');
        return Err(Error::InvalidInput {
            message: format!("invalid user name {name:?}: {reason}"),
            hint: Some(format!("for example: app_{stem}")),
        });
    }
    if let Some(suffix) = RELEASE_SECRET_SUFFIXES
        .iter()
        .find(|s| name == **s || name.ends_with(&format!("_{s}")))
    {
        return Err(Error::InvalidInput {
            message: format!(
                "invalid user name {name:?}: its Secret would be named like a release's own Secret (RELEASE-{suffix}), so another release could take it for its credentials"
            ),
            hint: Some(format!(
                "for example: {}",
                name.strip_suffix(suffix)
                    .map(|stem| format!("{stem}user"))
                    .unwrap_or_else(|| "app_rw".into())
            )),
        });
    }
    Ok(())
}

/// The shape every application user's name has (what `user delete` and `rotate-password`
/// need to find one): the rules [`validate_user_name`] adds only keep new users clear of
/// reserved names and of a release's Secrets, and a user an older version made may break them.
pub fn validate_user_name_syntax(name: &str) -> Result<(), Error> {
    let bytes = name.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_');
    if !valid {
        return Err(Error::InvalidInput {
            message: format!(
                "invalid user name {name:?}: use lower-case letters, digits and '_', starting with a letter, at most 63 characters"
            ),
            hint: Some(format!(
                "for example: {}",
                suggest(name).unwrap_or_else(|| "app_rw".into())
            )),
        });
    }
    Ok(())
}

/// The endings of the Secrets a release owns (`R-credentials`, `R-tls`). A user Secret
/// `R-user-NAME` ending in one of them would be exactly that Secret of release `R-user…`.
const RELEASE_SECRET_SUFFIXES: &[&str] = &["credentials", "tls"];

/// A valid name close to `name`, for the hint.
fn suggest(name: &str) -> Option<String> {
    let mut s: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        s.insert_str(0, "app_");
    }
    s.truncate(63);
    (!s.is_empty() && s != name).then_some(s)
}

/// Refuses the release's own superuser as an application user: its Secret is `R-credentials`.
pub fn refuse_superuser(name: &str, superuser: &str, release: &str) -> Result<(), Error> {
    if name == superuser {
        return Err(Error::InvalidInput {
            message: format!(
                "{name:?} is the superuser of release {release:?}, not an application user"
            ),
            hint: Some(format!(
                "its credentials are in Secret {}; pick another name for the app",
                crate::cluster::release::secret_name(release)
            )),
        });
    }
    Ok(())
}

/// `R-user-NAME`, with `_` written `-` (Secret names are DNS subdomains). Names hold no `-`,
/// so two users never share a Secret.
pub fn secret_name(release: &str, user: &str) -> String {
    format!("{release}-user-{}", user.replace('_', "-"))
}

/// `"name"`, an identifier quoted for SQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The comment that marks a role as ours, saying how much it may do and in which database
/// (so `user delete` finds its grants there even when its Secret is gone).
pub fn role_comment(readonly: bool, database: &str) -> String {
    format!(
        "{ROLE_COMMENT} ({}) of database {database}",
        if readonly { "readonly" } else { "readwrite" }
    )
}

/// Takes every privilege on the migration history tables (in any schema of the session's
/// database) away from PUBLIC and from every application user of ours: the history belongs to
/// the migration runner alone, and a row an app changed would stop the next `migrate up` as
/// drift. Idempotent, one statement.
///
/// Why this holds: an app user gets table privileges only from `user create`'s grants on the
/// tables in `public` (this runs after them, in the same transaction) and from the owner's
/// default privileges, which act when the owner creates a table: the runner creates the
/// history tables in the batch that also runs this (see `history::Tables::create_sql`), so
/// no session ever sees them granted. A table the session may not change (another owner) is
/// left as it is rather than failing the command, and the table's owner keeps its own
/// privileges (an app user that runs its own migrations with `--dsn` owns its history); `user create`, `rotate-password` and
/// `install --upgrade` run it too, which corrects the grants older versions made.
pub fn protect_history_sql() -> String {
    let tables = [
        crate::migration::history::TABLE,
        crate::migration::history::PROGRESS_TABLE,
    ]
    .map(literal)
    .join(", ");
    let body = format!(
        "DECLARE t regclass; o oid; r name; BEGIN \
         FOR t, o IN SELECT c.oid::regclass, c.relowner FROM pg_class c \
         WHERE c.relname IN ({tables}) AND c.relkind IN ('r', 'p') LOOP \
         BEGIN \
         EXECUTE format('REVOKE ALL ON TABLE %s FROM PUBLIC', t); \
         FOR r IN SELECT rolname FROM pg_roles WHERE oid <> o \
         AND starts_with(coalesce(shobj_description(oid, 'pg_authid'), ''), {comment}) LOOP \
         EXECUTE format('REVOKE ALL ON TABLE %s FROM %I', t, r); \
         END LOOP; \
         EXCEPTION WHEN insufficient_privilege THEN NULL; \
         END; \
         END LOOP; END",
        comment = literal(ROLE_COMMENT),
    );
    format!("DO {}", literal(&body))
}

/// What an application user may do in its database.
#[derive(Debug, Clone)]
pub struct UserGrants<'a> {
    pub name: &'a str,
    pub database: &'a str,
    /// The role that runs migrations (the release's superuser): tables and sequences it creates
    /// later get the same grants (default privileges).
    pub owner: &'a str,
    pub readonly: bool,
}

impl UserGrants<'_> {
    /// One transaction: the role with its password (a SCRAM verifier), its comment, CONNECT on
    /// the database, USAGE on schema public, read (and write) on its tables and sequences now
    /// and later, but nothing on the migration history ([`protect_history_sql`]). Run it in
    /// `database`.
    pub fn create_sql(&self, verifier: &str) -> String {
        let user = quote_ident(self.name);
        let owner = quote_ident(self.owner);
        let (tables, sequences) = if self.readonly {
            ("SELECT", "SELECT")
        } else {
            ("SELECT, INSERT, UPDATE, DELETE", "USAGE, SELECT")
        };
        [
            "BEGIN".to_string(),
            format!(
                "CREATE ROLE {user} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD {}",
                literal(verifier)
            ),
            format!(
                "COMMENT ON ROLE {user} IS {}",
                literal(&role_comment(self.readonly, self.database))
            ),
            format!(
                "GRANT CONNECT ON DATABASE {} TO {user}",
                quote_ident(self.database)
            ),
            format!("GRANT USAGE ON SCHEMA public TO {user}"),
            format!("GRANT {tables} ON ALL TABLES IN SCHEMA public TO {user}"),
            format!("GRANT {sequences} ON ALL SEQUENCES IN SCHEMA public TO {user}"),
            format!(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT {tables} ON TABLES TO {user}"
            ),
            format!(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT {sequences} ON SEQUENCES TO {user}"
            ),
            protect_history_sql(),
            "COMMIT".to_string(),
        ]
        .join(";\n")
            + ";"
    }
}

/// Makes the role as [`UserGrants::create_sql`] says. A role of that name made meanwhile by
/// another run (between its check and this CREATE) is said as such: the server answers
/// 42710, or 23505 when both CREATEs met on the catalog's unique index at once.
pub async fn create_user(
    client: &Client,
    grants: &UserGrants<'_>,
    verifier: &str,
) -> Result<(), Error> {
    use tokio_postgres::error::SqlState;
    let sql = grants.create_sql(verifier);
    match client.simple_query(&sql).await {
        Ok(_) => Ok(()),
        Err(e)
            if e.code() == Some(&SqlState::DUPLICATE_OBJECT)
                || e.code() == Some(&SqlState::UNIQUE_VIOLATION) =>
        {
            Err(made_meanwhile(grants.name))
        }
        Err(e) => Err(database_error(
            &format!("cannot create role {}", grants.name),
            &e,
        )),
    }
}

/// Another `user create` of `name` got there first: this one made nothing.
pub fn made_meanwhile(name: &str) -> Error {
    Error::InvalidInput {
        message: format!(
            "role {name:?} exists: another run made it meanwhile, and this one created nothing"
        ),
        hint: Some("kubectl pg user list shows it once its Secret is written".into()),
    }
}

/// Takes the role's objects and grants away in the session's database: what it owns goes to
/// `owner`, its privileges and default privileges are revoked (those on shared objects, like
/// CONNECT, too). Run it in every database the role was used in, then [`drop_role_sql`].
pub fn release_objects_sql(name: &str, owner: &str) -> String {
    format!(
        "REASSIGN OWNED BY {user} TO {owner}; DROP OWNED BY {user};",
        user = quote_ident(name),
        owner = quote_ident(owner)
    )
}

/// `DROP ROLE`, once nothing depends on it.
pub fn drop_role_sql(name: &str) -> String {
    format!("DROP ROLE {};", quote_ident(name))
}

/// [`release_objects_sql`] and [`drop_role_sql`] as one simple query, which the server runs as
/// one transaction: when the role cannot be dropped, it keeps its objects and grants here too.
pub fn drop_user_sql(name: &str, owner: &str) -> String {
    format!(
        "{} {}",
        release_objects_sql(name, owner),
        drop_role_sql(name)
    )
}

/// Sets the role's password as a SCRAM-SHA-256 verifier: the statement, and so any log of it,
/// never holds the password itself.
pub fn set_password_sql(name: &str, password: &str) -> String {
    set_verifier_sql(name, &verifier(password))
}

/// A SCRAM-SHA-256 verifier of `password` (a fresh salt each time: two verifiers of one
/// password differ, so the one a run set tells its change from anyone else's).
pub fn verifier(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}

/// Sets the role's password to `verifier`, as [`verifier`] made it.
pub fn set_verifier_sql(name: &str, verifier: &str) -> String {
    format!(
        "ALTER ROLE {} PASSWORD {};",
        quote_ident(name),
        literal(verifier)
    )
}

/// The verifier the role's password is stored as (`pg_authid`, which only superusers read).
pub async fn stored_verifier(client: &Client, name: &str) -> Result<Option<String>, Error> {
    let rows = client
        .query(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&name],
        )
        .await
        .map_err(|e| database_error("cannot read pg_authid", &e))?;
    Ok(rows.first().and_then(|row| row.get(0)))
}

/// The class of the advisory locks that serialise password changes, one lock per role. It is
/// the two-key form: a key space apart from the migration lock's single `bigint` keys.
const PASSWORD_LOCK_CLASS: i32 = 0x6b70_6770;

/// The two keys of `name`'s password lock, as SQL arguments.
fn password_lock_keys(name: &str) -> String {
    format!(
        "{PASSWORD_LOCK_CLASS}, ('x' || left(md5({}), 8))::bit(32)::int",
        literal(name)
    )
}

/// Takes the role's password lock in this session if no other session holds it.
pub async fn try_lock_password(client: &Client, name: &str) -> Result<bool, Error> {
    let sql = format!("SELECT pg_try_advisory_lock({})", password_lock_keys(name));
    let messages = client
        .simple_query(&sql)
        .await
        .map_err(|e| database_error("cannot take the password lock", &e))?;
    Ok(messages
        .iter()
        .any(|m| matches!(m, SimpleQueryMessage::Row(row) if row.get(0) == Some("t"))))
}

/// Waits for the role's password lock, at most `wait`; a lock still held then is an error.
pub async fn lock_password(
    client: &Client,
    name: &str,
    wait: std::time::Duration,
) -> Result<(), Error> {
    let sql = format!(
        "SET lock_timeout = {}; SELECT pg_advisory_lock({}); RESET lock_timeout;",
        wait.as_millis(),
        password_lock_keys(name)
    );
    match client.simple_query(&sql).await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
            Err(Error::Deployment {
                message: format!(
                    "another change of role {name}'s password still held its lock after {}s: nothing was changed",
                    wait.as_secs()
                ),
                hints: vec![
                    "run it again once the other kubectl pg rotate-password is done".into(),
                ],
                code: 1,
            })
        }
        Err(e) => Err(database_error("cannot take the password lock", &e)),
    }
}

/// Releases the role's password lock (ending the session releases it too).
pub async fn unlock_password(client: &Client, name: &str) -> Result<(), Error> {
    let sql = format!("SELECT pg_advisory_unlock({})", password_lock_keys(name));
    run(client, "cannot release the password lock", &sql).await
}

/// A role as `pg_roles` has it, with whether it is ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    /// Made by `kubectl pg user create` (its comment says so).
    pub ours: bool,
    /// From the comment: `Some(true)` for a readonly user of ours.
    pub readonly: Option<bool>,
    /// From the comment: the database it was made for.
    pub database: Option<String>,
}

fn role_from(name: String, comment: Option<&str>) -> Role {
    let ours = comment.is_some_and(|c| c.starts_with(ROLE_COMMENT));
    Role {
        name,
        ours,
        readonly: comment.filter(|_| ours).map(|c| c.contains("(readonly)")),
        database: comment
            .filter(|_| ours)
            .and_then(|c| c.split_once(") of database "))
            .map(|(_, db)| db.to_string()),
    }
}

/// The role named `name`, if it exists.
pub async fn find_role(client: &Client, name: &str) -> Result<Option<Role>, Error> {
    let rows = client
        .query(
            "SELECT rolname::text, shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
            &[&name],
        )
        .await
        .map_err(|e| database_error("cannot read pg_roles", &e))?;
    Ok(rows
        .first()
        .map(|row| role_from(row.get(0), row.get::<_, Option<&str>>(1))))
}

/// Every role `kubectl pg user create` made in this server, by name.
pub async fn our_roles(client: &Client) -> Result<Vec<Role>, Error> {
    let rows = client
        .query(
            "SELECT rolname::text, shobj_description(oid, 'pg_authid') FROM pg_roles \
             WHERE shobj_description(oid, 'pg_authid') LIKE $1 ORDER BY rolname",
            &[&format!("{ROLE_COMMENT}%")],
        )
        .await
        .map_err(|e| database_error("cannot read pg_roles", &e))?;
    Ok(rows
        .iter()
        .map(|row| role_from(row.get(0), row.get::<_, Option<&str>>(1)))
        .collect())
}

/// The databases where the role owns objects or holds privileges (its entries in
/// `pg_shdepend`; what it has on shared objects, such as CONNECT, is not tied to one), with
/// whether each accepts connections. REASSIGN and DROP OWNED act only in the session's
/// database, so a user is gone only once each of these was visited.
pub async fn dependent_databases(
    client: &Client,
    name: &str,
) -> Result<Vec<(String, bool)>, Error> {
    let rows = client
        .query(
            "SELECT DISTINCT d.datname::text, d.datallowconn FROM pg_shdepend s \
             JOIN pg_database d ON d.oid = s.dbid \
             WHERE s.refclassid = 'pg_authid'::regclass \
             AND s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = $1) ORDER BY 1",
            &[&name],
        )
        .await
        .map_err(|e| database_error("cannot read pg_shdepend", &e))?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Whether the database exists on the server.
pub async fn database_exists(client: &Client, database: &str) -> Result<bool, Error> {
    let rows = client
        .query("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
        .await
        .map_err(|e| database_error("cannot read pg_database", &e))?;
    Ok(!rows.is_empty())
}

/// Runs statements built by this module (several, one round trip).
pub async fn run(client: &Client, what: &str, sql: &str) -> Result<(), Error> {
    client
        .simple_query(sql)
        .await
        .map(|_: Vec<SimpleQueryMessage>| ())
        .map_err(|e| database_error(what, &e))
}

/// A statement's failure in the server's words (exit 1), or the session's loss (exit 8).
fn database_error(context: &str, e: &tokio_postgres::Error) -> Error {
    match e.as_db_error() {
        Some(db) => Error::Database {
            context: context.to_string(),
            message: format!("{} ({})", db.message(), db.code().code()),
        },
        None => Error::Connection {
            target: "the release's database".into(),
            reason: format!("{context}: {e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["app", "app_rw", "a1", &"a".repeat(63)] {
            assert!(validate_user_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "App",
            "1app",
            "_app",
            "app-rw",
            "app rw",
            "a\"b",
            &"a".repeat(64),
        ] {
            assert!(validate_user_name(bad).is_err(), "{bad}");
        }
        let err = validate_user_name("pg_app").unwrap_err();
        assert!(err.to_string().contains("reserved"), "{err}");
        assert!(validate_user_name("public").is_err());
        assert!(refuse_superuser("postgres", "postgres", "pg").is_err());
        assert!(refuse_superuser("app", "postgres", "pg").is_ok());
        let hint = validate_user_name("App-RW").unwrap_err().hints().join(" ");
        assert!(hint.contains("app_rw"), "{hint}");
    }

    #[test]
    fn reserved_roles_and_key_words() {
        assert!(RESERVED_KEYWORDS.windows(2).all(|w| w[0] < w[1]), "sorted");
        for reserved in [
            "public",
            "none",
            "current_user",
            "current_role",
            "session_user",
            "pg_x",
            "all",
            "select",
            "user",
            "table",
            "Select",
            "PUBLIC",
        ] {
            assert!(reserved_role(reserved).is_some(), "{reserved}");
        }
        for fine in [
            "postgres",
            "app",
            "owner",
            "role",
            "admin",
            "users",
            "public_app",
        ] {
            assert!(reserved_role(fine).is_none(), "{fine}");
        }
        for (name, says) in [
            ("select", "key word"),
            ("none", "reserves"),
            ("user", "key word"),
        ] {
            let err = validate_user_name(name).unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
            assert!(
                err.hints().join(" ").contains(&format!("app_{name}")),
                "{err:?}"
            );
        }
    }

    #[test]
    fn user_secrets_never_look_like_a_release_secret() {
        // User `credentials` of release `pg` would own `pg-user-credentials`: the Secret of
        // release `pg-user`.
        for bad in ["credentials", "app_credentials", "tls", "x_tls"] {
            let err = validate_user_name(bad).unwrap_err().to_string();
            assert!(err.contains("release's own Secret"), "{bad}: {err}");
        }
        for fine in ["credential", "app_tls_ro", "creds", "tlsx"] {
            assert!(validate_user_name(fine).is_ok(), "{fine}");
        }
    }

    #[test]
    fn secret_names_are_dns_subdomains() {
        assert_eq!(secret_name("pg", "app_ro"), "pg-user-app-ro");
    }

    #[test]
    fn grants_read_write_and_readonly() {
        let grants = UserGrants {
            name: "app",
            database: "learn\"flow",
            owner: "postgres",
            readonly: false,
        };
        let sql = grants.create_sql("SCRAM-SHA-256$4096:abc");
        assert!(
            sql.starts_with("BEGIN;") && sql.ends_with("COMMIT;"),
            "{sql}"
        );
        assert!(sql.contains("CREATE ROLE \"app\" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"));
        assert!(sql.contains("PASSWORD 'SCRAM-SHA-256$4096:abc'"));
        assert!(sql.contains("GRANT CONNECT ON DATABASE \"learn\"\"flow\" TO \"app\""));
        assert!(sql.contains(
            "ALTER DEFAULT PRIVILEGES FOR ROLE \"postgres\" IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO \"app\""
        ));
        assert!(sql.contains("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public"));
        let ro = UserGrants {
            readonly: true,
            ..grants
        }
        .create_sql("v");
        assert!(!ro.contains("INSERT"), "{ro}");
        assert!(ro.contains("GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"app\""));
        assert!(ro.contains("(readonly)"));
    }

    #[test]
    fn the_history_is_revoked_after_every_grant() {
        let sql = UserGrants {
            name: "app",
            database: "db",
            owner: "postgres",
            readonly: false,
        }
        .create_sql("v");
        let revoke = sql.find("REVOKE ALL ON TABLE").expect("revoked");
        assert!(sql.rfind("GRANT").unwrap() < revoke, "{sql}");
        assert!(revoke < sql.find("COMMIT").unwrap(), "{sql}");
        let protect = protect_history_sql();
        for needed in [
            "'kubectl_pg_migrations'",
            "'kubectl_pg_migration_progress'",
            "FROM PUBLIC",
            ROLE_COMMENT,
        ] {
            assert!(protect.contains(needed), "{needed}: {protect}");
        }
        let tables = crate::migration::history::Tables::in_schema("public").create_sql();
        assert!(tables.ends_with(&protect), "{tables}");
    }

    #[test]
    fn a_user_is_dropped_in_one_transaction_with_its_objects() {
        // One simple query: the server runs it as one implicit transaction, so a DROP ROLE
        // that fails leaves the REASSIGN and DROP OWNED before it undone.
        let sql = drop_user_sql("app", "postgres");
        assert_eq!(
            sql,
            "REASSIGN OWNED BY \"app\" TO \"postgres\"; DROP OWNED BY \"app\"; DROP ROLE \"app\";"
        );
        assert!(!sql.contains("BEGIN") && !sql.contains("COMMIT"));
    }

    #[test]
    fn passwords_travel_as_verifiers() {
        let sql = set_password_sql("app", "the-plain-password-123");
        assert!(sql.contains("SCRAM-SHA-256$4096:"), "{sql}");
        assert!(!sql.contains("the-plain-password-123"));
    }

    #[test]
    fn comments_mark_our_roles() {
        let r = role_from("a".into(), Some(&role_comment(true, "my db")));
        assert!(r.ours && r.readonly == Some(true));
        assert_eq!(r.database.as_deref(), Some("my db"));
        let r = role_from("b".into(), Some("someone's role"));
        assert!(!r.ours && r.readonly.is_none());
        assert!(!role_from("c".into(), None).ours);
    }
}
