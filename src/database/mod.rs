//! Database connections: from a connection string (`--dsn`), with libpq's TLS modes, and the
//! retry policy every command shares.

pub mod connection;
pub mod dotenv;
pub mod dsn;
pub mod password;
pub mod roles;
pub mod tls;

use std::future::Future;
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

pub use dsn::{Dsn, TlsMode};

use crate::error::Error;

/// The `application_name` of every session we open, so DBAs can tell us apart.
pub const APPLICATION_NAME: &str = "kubectl-pg";

/// Something that can open a fresh database session: directly, or later through the cluster.
/// The migration engine calls it again after a connection loss.
pub trait Connector {
    /// Where we connect, for messages (never a password).
    fn target(&self) -> String;
    /// Opens one session; its connection task runs on the current runtime.
    fn connect(&self) -> impl Future<Output = Result<Client, Error>>;
    /// How many times [`connect_with_retry`] tries: a connector that follows a moving primary
    /// waits out a failover (tens of seconds), a fixed one a restart.
    fn attempts(&self) -> u32 {
        7
    }
}

/// Connects straight to the address of a connection string.
#[derive(Debug, Clone)]
pub struct DsnConnector {
    dsn: Dsn,
}

impl DsnConnector {
    pub fn new(dsn: &str) -> Result<Self, Error> {
        let mut dsn = Dsn::parse(dsn)?;
        dsn.config.application_name(APPLICATION_NAME);
        if dsn.config.get_connect_timeout().is_none() {
            dsn.config.connect_timeout(Duration::from_secs(10));
        }
        Ok(Self { dsn })
    }
}

impl Connector for DsnConnector {
    fn target(&self) -> String {
        self.dsn.target()
    }

    async fn connect(&self) -> Result<Client, Error> {
        let fail = |e: tokio_postgres::Error| connection_error(&self.target(), &e);
        if self.dsn.tls == TlsMode::Disable {
            let (client, connection) = self.dsn.config.connect(NoTls).await.map_err(fail)?;
            tokio::spawn(connection);
            return Ok(client);
        }
        let config = tls::client_config(self.dsn.tls, self.dsn.root_cert.as_deref())?;
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(config);
        let (client, connection) = self.dsn.config.connect(tls).await.map_err(fail)?;
        tokio::spawn(connection);
        Ok(client)
    }
}

/// The error for a session that could not be opened. Authentication and missing-database
/// failures are connection failures too (exit 8), with the server's own words.
pub fn connection_error(target: &str, e: &tokio_postgres::Error) -> Error {
    let reason = match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            text
        }
    };
    Error::Connection {
        target: target.to_string(),
        reason,
    }
}

/// Whether the server refused the password of a login.
pub fn is_password_refused(e: &Error) -> bool {
    matches!(e, Error::Connection { reason, .. } if reason.contains("password authentication failed"))
}

/// Whether the server rejected the login itself (no point retrying).
fn is_permanent(e: &Error) -> bool {
    matches!(e, Error::InvalidInput { .. })
        || is_password_refused(e)
        || matches!(e, Error::Connection { reason, .. }
            if reason.contains("does not exist")
                || reason.contains("certificate")
                || reason.contains("pg_hba.conf"))
}

/// Opens a session, retrying with bounded exponential backoff (about 6 s in all for 7
/// attempts, 2 s more for each further one), so a server restart, a failover or a dropped
/// tunnel does not fail a run.
pub async fn connect_with_retry<C: Connector>(connector: &C) -> Result<Client, Error> {
    let mut delay = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match connector.connect().await {
            Ok(client) => return Ok(client),
            Err(e) if attempt >= connector.attempts() || is_permanent(&e) => return Err(e),
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
                attempt += 1;
            }
        }
    }
}

/// Whether `e` means the session is gone (network failure, server shutdown, backend
/// terminated) rather than a statement failing: such errors are retried on a new session.
pub fn is_connection_loss(e: &tokio_postgres::Error, client: &Client) -> bool {
    if client.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || code.code().starts_with("08")
        }
        None => true,
    }
}
