//! Connection strings as libpq accepts them (URI or `key=value`), reduced to what
//! tokio-postgres parses, with the TLS settings it does not know (`verify-ca`, `verify-full`,
//! `sslrootcert`) taken out and kept.

use std::str::FromStr;

use tokio_postgres::config::SslMode;

use crate::error::Error;

/// libpq's sslmode values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Disable,
    /// Encrypt when the server offers TLS; no certificate check (libpq's default).
    Prefer,
    /// Encrypt; no certificate check.
    Require,
    /// Encrypt and check the chain against the trusted roots.
    VerifyCa,
    /// Encrypt, check the chain and that the certificate names the host.
    VerifyFull,
}

/// A parsed connection string.
#[derive(Debug, Clone)]
pub struct Dsn {
    pub config: tokio_postgres::Config,
    pub tls: TlsMode,
    pub root_cert: Option<String>,
}

impl Dsn {
    pub fn parse(dsn: &str) -> Result<Self, Error> {
        let (rest, sslmode, root_cert) =
            if dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") {
                split_uri(dsn)
            } else {
                split_keyvalue(dsn)
            };
        let tls = match sslmode.as_deref() {
            None | Some("prefer") | Some("allow") => TlsMode::Prefer,
            Some("disable") => TlsMode::Disable,
            Some("require") => TlsMode::Require,
            Some("verify-ca") => TlsMode::VerifyCa,
            Some("verify-full") => TlsMode::VerifyFull,
            Some(other) => {
                return Err(Error::InvalidInput {
                    message: format!("invalid sslmode {other:?} in the connection string"),
                    hint: Some(
                        "use disable, allow, prefer, require, verify-ca or verify-full".into(),
                    ),
                })
            }
        };
        let mut config =
            tokio_postgres::Config::from_str(&rest).map_err(|e| Error::InvalidInput {
                message: format!("invalid connection string: {e}"),
                hint: Some(
                    "expected postgresql://user:password@host:port/database?sslmode=require".into(),
                ),
            })?;
        // As libpq does: a connection string without a password takes PGPASSWORD, so the
        // password need not appear in argv or in DATABASE_URL.
        if config.get_password().is_none() {
            if let Some(password) = std::env::var_os("PGPASSWORD").filter(|p| !p.is_empty()) {
                config.password(password.as_encoded_bytes());
            }
        }
        if let Some(password) = config.get_password() {
            crate::output::redact::register(&String::from_utf8_lossy(password));
        }
        config.ssl_mode(match tls {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        });
        Ok(Self {
            config,
            tls,
            root_cert,
        })
    }

    /// `user@host:port/db`, for messages: never the password.
    pub fn target(&self) -> String {
        describe(&self.config)
    }
}

/// `user@host:port/db` of a config, never its password.
pub fn describe(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("");
    let db = config.get_dbname().unwrap_or(user);
    format!("{user}@{host}:{port}/{db}")
}

fn split_uri(dsn: &str) -> (String, Option<String>, Option<String>) {
    let Some((base, query)) = dsn.split_once('?') else {
        return (dsn.to_string(), None, None);
    };
    let mut sslmode = None;
    let mut root = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => sslmode = Some(percent_decode(value)),
            "sslrootcert" => root = Some(percent_decode(value)),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, sslmode, root)
}

fn split_keyvalue(dsn: &str) -> (String, Option<String>, Option<String>) {
    let mut sslmode = None;
    let mut root = None;
    let mut kept = Vec::new();
    for (key, raw, value) in keyvalue_pairs(dsn) {
        match key.as_str() {
            "sslmode" => sslmode = Some(value),
            "sslrootcert" => root = Some(value),
            _ => kept.push(raw),
        }
    }
    (kept.join(" "), sslmode, root)
}

/// `(key, original text, unquoted value)` for each `key=value` of a libpq keyword string.
fn keyvalue_pairs(s: &str) -> Vec<(String, String, String)> {
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < chars.len() {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let start = i;
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            i += 1;
        }
        let key: String = chars[start..i].iter().collect();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i >= chars.len() || chars[i] != '=' {
            if !key.is_empty() {
                out.push((key.clone(), key, String::new()));
            }
            continue;
        }
        i += 1;
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if chars.get(i) == Some(&'\'') {
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                value.push(chars[i]);
                i += 1;
            }
            i += 1;
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                value.push(chars[i]);
                i += 1;
            }
        }
        let raw: String = chars[start..i.min(chars.len())].iter().collect();
        out.push((key, raw, value));
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_with_verify_full() {
        let d = Dsn::parse("postgresql://u:p%40ss@db.example:6543/app?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&connect_timeout=3")
            .unwrap();
        assert_eq!(d.tls, TlsMode::VerifyFull);
        assert_eq!(d.root_cert.as_deref(), Some("/tmp/ca.pem"));
        assert_eq!(d.config.get_password(), Some(&b"p@ss"[..]));
        assert_eq!(d.target(), "u@db.example:6543/app");
        assert_eq!(
            d.config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(3))
        );
    }

    #[test]
    fn keyvalue_with_quotes() {
        let d = Dsn::parse(
            "host=127.0.0.1 port = 5433 user=me password='a b\\'c' dbname=x sslmode=verify-ca",
        )
        .unwrap();
        assert_eq!(d.tls, TlsMode::VerifyCa);
        assert_eq!(d.config.get_password(), Some(&b"a b'c"[..]));
        assert_eq!(d.target(), "me@127.0.0.1:5433/x");
    }

    #[test]
    fn defaults_and_errors() {
        assert_eq!(Dsn::parse("postgres://h/db").unwrap().tls, TlsMode::Prefer);
        assert_eq!(
            Dsn::parse("postgres://h/db?sslmode=disable").unwrap().tls,
            TlsMode::Disable
        );
        assert!(Dsn::parse("postgres://h/db?sslmode=bogus").is_err());
        assert!(Dsn::parse("host=h port=notanumber").is_err());
        assert_eq!(percent_decode("a%2"), "a%2");
    }
}

/// Fuzzing: `--dsn` and `DATABASE_URL` are user input; no string may panic the parser, and a
/// parsed one's description for messages does not depend on its password.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("postgresql://".to_string()),
            Just("postgres://".to_string()),
            Just("@".to_string()),
            Just(":".to_string()),
            Just("/".to_string()),
            Just("?".to_string()),
            Just("&".to_string()),
            Just("=".to_string()),
            Just("%".to_string()),
            Just("%4".to_string()),
            Just("[::1]".to_string()),
            Just("sslmode=".to_string()),
            Just("sslrootcert=".to_string()),
            Just("host=".to_string()),
            Just("password='".to_string()),
            Just("\\".to_string()),
            Just(" ".to_string()),
            "[a-z0-9.-]{0,6}",
            any::<char>().prop_map(|c| c.to_string()),
        ]
    }

    proptest! {
        #![proptest_config(crate::fuzz_config(5000))]

        #[test]
        fn parse_never_panics(parts in prop::collection::vec(piece(), 0..16)) {
            let text = parts.concat();
            if let Ok(dsn) = super::Dsn::parse(&text) {
                // The message cannot show the password if it does not depend on it (a text
                // match would flag a database named like the password).
                let mut other = dsn.config.clone();
                other.password("another-password-entirely");
                prop_assert_eq!(dsn.target(), super::describe(&other));
            }
        }

        #[test]
        fn parse_never_panics_on_any_text(text in any::<String>()) {
            let _ = super::Dsn::parse(&text);
        }
    }
}
