//! The seed's DatabaseConnection and the formats `kubectl pg dsn` writes it in.

use serde::Serialize;

use super::dotenv;
use crate::error::Error;
use crate::output::API_VERSION;

/// What a client needs to reach a release's database.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseConnection {
    #[serde(rename = "apiVersion")]
    pub api_version: &'static str,
    pub kind: &'static str,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub username: String,
    pub password: String,
    pub connection_string: String,
    /// libpq's sslmode: `disable` for a release without TLS, `require` inside the cluster for
    /// one with it, `verify-full` where the CA is at hand (`sslrootcert`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sslmode: Option<String>,
    /// The file holding the CA that signed the server's certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sslrootcert: Option<String>,
}

/// The text shown instead of a password.
pub const MASK: &str = "********";

impl DatabaseConnection {
    pub fn new(
        host: String,
        port: u16,
        database: String,
        username: String,
        password: String,
    ) -> Self {
        let mut connection = Self {
            api_version: API_VERSION,
            kind: "DatabaseConnection",
            host,
            port,
            database,
            username,
            password,
            connection_string: String::new(),
            sslmode: None,
            sslrootcert: None,
        };
        connection.connection_string = connection.uri();
        connection
    }

    /// The same connection verifying the server: `sslmode` and the CA file, in every format.
    pub fn with_tls(mut self, sslmode: &str, rootcert: &str) -> Self {
        self.sslmode = Some(sslmode.to_string());
        self.sslrootcert = Some(rootcert.to_string());
        self.connection_string = self.uri();
        self
    }

    /// The same connection with `sslmode` and no CA: `disable` or `require`.
    pub fn with_sslmode(mut self, sslmode: &str) -> Self {
        self.sslmode = Some(sslmode.to_string());
        self.sslrootcert = None;
        self.connection_string = self.uri();
        self
    }

    /// `disable` for a server without TLS, `require` for one with it: what a client that has
    /// no CA at hand (an app inside the cluster) can say.
    pub fn with_plain_or_tls(self, tls: bool) -> Self {
        self.with_sslmode(if tls { "require" } else { "disable" })
    }

    /// `?sslmode=…&sslrootcert=…`, or nothing.
    fn tls_query(&self, first: char) -> String {
        let mut parts = Vec::new();
        if let Some(mode) = &self.sslmode {
            parts.push(format!("sslmode={}", encode(mode)));
        }
        if let Some(root) = &self.sslrootcert {
            parts.push(format!("sslrootcert={}", encode(root)));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("{first}{}", parts.join("&"))
        }
    }

    /// The same connection with the password replaced by [`MASK`].
    pub fn masked(&self) -> Self {
        let mut masked = self.clone();
        masked.password = MASK.into();
        masked.connection_string = masked.uri_with_password(MASK);
        masked
    }

    /// `postgresql://user:password@host:port/db`, user, password and database percent-encoded.
    pub fn uri(&self) -> String {
        self.uri_with_password(&encode(&self.password))
    }

    fn uri_with_password(&self, password: &str) -> String {
        format!(
            "postgresql://{}:{}@{}:{}/{}{}",
            encode(&self.username),
            password,
            self.host_for_uri(),
            self.port,
            encode(&self.database),
            self.tls_query('?')
        )
    }

    fn host_for_uri(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }

    /// `jdbc:postgresql://host:port/db?user=…&password=…`
    pub fn jdbc(&self) -> String {
        let ssl = match self.sslmode.as_deref() {
            None | Some("disable") => "",
            Some(_) => "&ssl=true",
        };
        format!(
            "jdbc:postgresql://{}:{}/{}?user={}&password={}{ssl}{}",
            self.host_for_uri(),
            self.port,
            encode(&self.database),
            encode(&self.username),
            encode(&self.password),
            self.tls_query('&')
        )
    }

    /// libpq's `key=value` form, values quoted where needed.
    pub fn keyvalue(&self) -> String {
        let mut text = format!(
            "host={} port={} dbname={} user={} password={}",
            libpq_value(&self.host),
            self.port,
            libpq_value(&self.database),
            libpq_value(&self.username),
            libpq_value(&self.password)
        );
        if let Some(mode) = &self.sslmode {
            text.push_str(&format!(" sslmode={}", libpq_value(mode)));
        }
        if let Some(root) = &self.sslrootcert {
            text.push_str(&format!(" sslrootcert={}", libpq_value(root)));
        }
        text
    }

    /// A `~/.pgpass` line (`:` and `\` escaped).
    pub fn pgpass(&self) -> String {
        let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
        format!(
            "{}:{}:{}:{}:{}",
            esc(&self.host),
            self.port,
            esc(&self.database),
            esc(&self.username),
            esc(&self.password)
        )
    }

    /// The variables of `env` and `dotenv`, in order.
    fn variables(&self) -> Vec<(&'static str, String)> {
        [
            ("PGHOST", self.host.clone()),
            ("PGPORT", self.port.to_string()),
            ("PGDATABASE", self.database.clone()),
            ("PGUSER", self.username.clone()),
            ("PGPASSWORD", self.password.clone()),
            ("DATABASE_URL", self.connection_string.clone()),
        ]
        .into_iter()
        .chain(self.sslmode.clone().map(|m| ("PGSSLMODE", m)))
        .chain(self.sslrootcert.clone().map(|r| ("PGSSLROOTCERT", r)))
        .collect()
    }

    /// `export PGHOST='…'` lines and `DATABASE_URL`, for `eval` and `.`/`source` in any POSIX
    /// shell: every value single-quoted, a quote in it written `'\''`.
    pub fn env(&self) -> String {
        self.variables()
            .iter()
            .map(|(k, v)| format!("export {k}={}\n", shell_quote(v)))
            .collect()
    }

    /// A `.env` file: `NAME=value` lines each value written so that python-dotenv, node's
    /// dotenv and docker compose read it back (see [`dotenv`]); the variables no form carries
    /// through all three come back with the readers that read them exactly. A value no form
    /// can carry safely (see [`dotenv::write`]) is an error naming the variable.
    #[allow(clippy::type_complexity)]
    pub fn dotenv(&self) -> Result<(String, Vec<(&'static str, Vec<dotenv::Reader>)>), Error> {
        let mut text = String::new();
        let mut inexact = Vec::new();
        for (k, v) in self.variables() {
            let written = dotenv::write(&v).ok_or_else(|| Error::InvalidInput {
                message: format!(
                    "{k} cannot be written to a .env file: it ends in a backslash and starts with a quote or a blank, which .env readers take for an unclosed quote"
                ),
                hint: Some("use --format env (for a shell) or --format json".into()),
            })?;
            text.push_str(&format!("{k}={}\n", written.text));
            if written.exact_for.len() < dotenv::READERS.len() {
                inexact.push((k, written.exact_for));
            }
        }
        Ok((text, inexact))
    }
}

/// The `sslmode` a URI states, if any.
pub fn sslmode_of(uri: &str) -> Option<String> {
    uri.split_once('?')?
        .1
        .split('&')
        .find_map(|pair| pair.strip_prefix("sslmode="))
        .filter(|mode| !mode.is_empty())
        .map(str::to_string)
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn libpq_value(s: &str) -> String {
    if !s.is_empty() && !s.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        return s.to_string();
    }
    libpq_quote(s)
}

/// A value of a libpq connection string, single-quoted (any text is safe in it).
pub fn libpq_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A database name as the `-d` of psql, pg_dump or pg_restore. libpq reads a `-d` holding `=`,
/// or starting `postgres://` or `postgresql://`, as a connection string (a database `a=b`
/// would be the option `a`): such a name travels as `dbname='…'`, any other as it is.
pub fn dbname_argument(database: &str) -> String {
    if database.contains('=')
        || database.starts_with("postgresql://")
        || database.starts_with("postgres://")
    {
        format!("dbname={}", libpq_quote(database))
    } else {
        database.to_string()
    }
}

/// Single-quotes a value for POSIX shells (sh, dash, bash): nothing is special inside single
/// quotes but the quote itself, which closes, is escaped and reopens (`'\''`).
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> DatabaseConnection {
        DatabaseConnection::new(
            "pg.db.svc.cluster.local".into(),
            5432,
            "learnflow".into(),
            "app user".into(),
            "p@ss:w/rd's\\".into(),
        )
    }

    #[test]
    fn database_names_libpq_would_read_as_a_connection_string_are_quoted() {
        assert_eq!(dbname_argument("learnflow"), "learnflow");
        assert_eq!(dbname_argument("my db"), "my db");
        assert_eq!(dbname_argument("a=b"), "dbname='a=b'");
        assert_eq!(dbname_argument("x='y' z"), "dbname='x=\\'y\\' z'");
        assert_eq!(
            dbname_argument("postgresql://h/db"),
            "dbname='postgresql://h/db'"
        );
        assert_eq!(dbname_argument("postgres://h"), "dbname='postgres://h'");
    }

    #[test]
    fn uri_percent_encodes_user_and_password() {
        assert_eq!(
            conn().uri(),
            "postgresql://app%20user:p%40ss%3Aw%2Frd%27s%5C@pg.db.svc.cluster.local:5432/learnflow"
        );
        assert_eq!(conn().connection_string, conn().uri());
        let masked = conn().masked();
        assert!(
            masked.connection_string.contains(MASK) && !masked.connection_string.contains("p%40")
        );
    }

    #[test]
    fn other_formats_escape_their_own_way() {
        let c = conn();
        assert_eq!(
            c.keyvalue(),
            "host=pg.db.svc.cluster.local port=5432 dbname=learnflow user='app user' password='p@ss:w/rd\\'s\\\\'"
        );
        assert_eq!(
            c.pgpass(),
            "pg.db.svc.cluster.local:5432:learnflow:app user:p@ss\\:w/rd's\\\\"
        );
        assert!(c.jdbc().starts_with("jdbc:postgresql://pg.db.svc.cluster.local:5432/learnflow?user=app%20user&password=p%40ss"));
        let env = c.env();
        assert!(env.contains("export PGUSER='app user'\n"), "{env}");
        assert!(
            env.contains("export PGPASSWORD='p@ss:w/rd'\\''s\\'\n"),
            "{env}"
        );
        assert!(env.contains("export PGPORT='5432'\n"));
        assert!(!env.contains("PGSSLMODE"));
        assert!(env.lines().all(|l| l.starts_with("export ")), "{env}");
    }

    #[test]
    fn tls_goes_into_every_format() {
        let c = conn().with_tls("verify-full", "/home/me/ca dir/pg.crt");
        assert!(c.uri().ends_with(
            "/learnflow?sslmode=verify-full&sslrootcert=%2Fhome%2Fme%2Fca%20dir%2Fpg.crt"
        ));
        assert_eq!(c.connection_string, c.uri());
        assert!(c
            .masked()
            .connection_string
            .contains("?sslmode=verify-full"));
        assert!(c
            .jdbc()
            .contains("&ssl=true&sslmode=verify-full&sslrootcert="));
        assert!(c
            .keyvalue()
            .ends_with(" sslmode=verify-full sslrootcert='/home/me/ca dir/pg.crt'"));
        let env = c.env();
        assert!(
            env.contains("export PGSSLMODE='verify-full'\n")
                && env.contains("export PGSSLROOTCERT='/home/me/ca dir/pg.crt'\n"),
            "{env}"
        );
    }

    #[test]
    fn sslmode_disable_and_require_go_into_every_format() {
        let plain = conn().with_plain_or_tls(false);
        assert!(plain
            .connection_string
            .ends_with("/learnflow?sslmode=disable"));
        assert!(plain.keyvalue().ends_with(" sslmode=disable"));
        assert!(
            plain.jdbc().ends_with("&sslmode=disable"),
            "{}",
            plain.jdbc()
        );
        assert!(!plain.jdbc().contains("ssl=true"));
        assert!(plain.env().contains("export PGSSLMODE='disable'\n"));
        assert!(plain
            .masked()
            .connection_string
            .ends_with("?sslmode=disable"));
        let tls = conn().with_plain_or_tls(true);
        assert!(tls
            .connection_string
            .ends_with("/learnflow?sslmode=require"));
        assert!(tls.jdbc().ends_with("&ssl=true&sslmode=require"));
        assert!(tls.dotenv().unwrap().0.contains("PGSSLMODE='require'\n"));
        assert_eq!(tls.sslrootcert, None);
    }

    #[test]
    fn dotenv_writes_each_value_its_own_way_and_names_the_compromises() {
        let (text, inexact) = conn().dotenv().unwrap();
        assert!(text.contains("PGUSER='app user'\n"), "{text}");
        // A quote and a backslash: bare is the form all three read.
        assert!(text.contains("PGPASSWORD=p@ss:w/rd's\\\n"), "{text}");
        assert!(inexact.is_empty(), "{inexact:?}");
        let mut hard = conn();
        hard.password = "it's \"#1\"".into();
        let (text, inexact) = hard.dotenv().unwrap();
        assert!(text.contains("PGPASSWORD=\"it's \\\"#1\\\"\"\n"), "{text}");
        assert_eq!(
            inexact,
            [(
                "PGPASSWORD",
                vec![dotenv::Reader::PythonDotenv, dotenv::Reader::ComposeEnvFile]
            )]
        );
    }

    /// The real shells: `eval` and `.` give back every value, quotes, `$`, backquotes,
    /// backslashes and UTF-8 included.
    #[test]
    fn env_lines_eval_and_source_in_sh_dash_and_bash() {
        let values = [
            "plain",
            "it's",
            "''",
            "a'\\''b",
            "$HOME `id` $(id) \\$x \\",
            "sp ace\ttab #hash ! & ; | < > * ? [a] ~",
            "ünïcødé ✓ \"dq\"",
        ];
        let dir = std::env::temp_dir().join(format!("kpg-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for value in values {
            let mut c = conn();
            c.password = value.to_string();
            let file = dir.join("env.sh");
            std::fs::write(&file, c.env()).unwrap();
            for shell in ["sh", "dash", "bash"] {
                let Ok(path) = which(shell) else { continue };
                for how in [r#"eval "$(cat "$1")""#, r#". "$1""#] {
                    let out = std::process::Command::new(&path)
                        .arg("-c")
                        .arg(format!(
                            "{how}; env | grep -c '^PG' >&2; printf %s \"$PGPASSWORD\""
                        ))
                        .arg(shell)
                        .arg(&file)
                        .env_clear()
                        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                        .output()
                        .unwrap();
                    assert!(out.status.success(), "{shell} {how}: {out:?}");
                    assert_eq!(String::from_utf8_lossy(&out.stdout), value, "{shell} {how}");
                    // Exported: the variables reach the processes started after.
                    assert_eq!(
                        String::from_utf8_lossy(&out.stderr).trim(),
                        "5",
                        "{shell} {how}"
                    );
                }
            }
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    fn which(name: &str) -> Result<std::path::PathBuf, ()> {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|d| d.join(name))
            .find(|p| p.is_file())
            .ok_or(())
    }
}

/// Random passwords: a shell reading the `export` line gives each back (modelled here as the
/// shell reads single quotes and `\'`; the real shells are in the tests above).
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    /// What a POSIX shell makes of a word made of '…' pieces and \' escapes.
    fn unquote(word: &str) -> Option<String> {
        let mut out = String::new();
        let mut chars = word.chars();
        while let Some(c) = chars.next() {
            match c {
                '\'' => loop {
                    match chars.next()? {
                        '\'' => break,
                        c => out.push(c),
                    }
                },
                '\\' => out.push(chars.next()?),
                _ => return None,
            }
        }
        Some(out)
    }

    proptest! {
        #![proptest_config(crate::fuzz_config(5000))]

        #[test]
        fn export_lines_give_back_any_password(
            password in any::<String>().prop_map(|s| s.chars().filter(|c| !c.is_control()).collect::<String>())
        ) {
            let mut c = super::tests_conn();
            c.password = password.clone();
            let env = c.env();
            let line = env.lines().find(|l| l.starts_with("export PGPASSWORD=")).unwrap();
            let word = &line["export PGPASSWORD=".len()..];
            prop_assert_eq!(unquote(word), Some(password));
        }
    }
}

#[cfg(test)]
fn tests_conn() -> DatabaseConnection {
    DatabaseConnection::new("h".into(), 5432, "d".into(), "u".into(), String::new())
}
