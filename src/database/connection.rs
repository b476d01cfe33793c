//! The seed's DatabaseConnection and the formats `kubectl pg dsn` writes it in.

use serde::Serialize;

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
    /// libpq's sslmode, for a release that serves TLS (`verify-full` from outside).
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
        let ssl = if self.sslmode.is_some() {
            "&ssl=true"
        } else {
            ""
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

    /// `PGHOST=…` lines and `DATABASE_URL=…`, shell-quoted for `eval` and usable as a `.env`.
    pub fn env(&self) -> String {
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
        .collect::<Vec<_>>()
        .iter()
        .map(|(k, v)| format!("{k}={}\n", shell_quote(v)))
        .collect()
    }
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

/// Single-quotes a value for POSIX shells when it holds anything but safe characters.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._/:@%+=,".contains(&b))
    {
        return s.to_string();
    }
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
        assert!(env.contains("PGUSER='app user'\n"), "{env}");
        assert!(env.contains("PGPASSWORD='p@ss:w/rd'\\''s\\'\n"), "{env}");
        assert!(env.contains("PGPORT=5432\n"));
        assert!(!env.contains("PGSSLMODE"));
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
            env.contains("PGSSLMODE=verify-full\n")
                && env.contains("PGSSLROOTCERT='/home/me/ca dir/pg.crt'\n"),
            "{env}"
        );
    }
}
