//! `kubectl pg port-forward`: a localhost address for laptop apps and IDEs, carried to the
//! release's pod one port-forward stream per connection (see `cluster::forward`).

use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpListener;

use crate::cli::{GlobalArgs, PortForwardArgs};
use crate::cluster::release::{self, DATABASE_PORT};
use crate::cluster::{forward, Cluster};
use crate::database::connection::{shell_quote, DatabaseConnection};
use crate::deployment::kind;
use crate::error::Error;
use crate::output::{self, emit};

/// The address listened on unless one is given: this machine only.
const DEFAULT_ADDRESS: &str = "127.0.0.1";

pub async fn run(mut args: PortForwardArgs, global: &GlobalArgs) -> Result<(), Error> {
    // `port-forward 15432`: one argument that is a port, not a release (names start with a
    // letter; a port is digits, an address has a colon).
    if args.listen.is_none() && args.release.as_deref().is_some_and(looks_like_port) {
        args.listen = args.release.take();
    }
    let (address, port) = listen_on(args.listen.as_deref(), args.address.as_deref())?;
    if let Some(user) = &args.db_user {
        crate::database::roles::validate_user_name_syntax(user)?;
    }
    let app_user = args.db_user.clone();
    let cluster = Cluster::connect(&global.connect_options()).await?;
    let found = kind::resolve(&cluster, args.release.as_deref()).await?;
    let release = found.name().to_string();
    let target = found.target(&cluster).await?;
    let (username, password, database) = match &app_user {
        None => {
            let c = &target.credentials;
            (c.username.clone(), c.password.clone(), c.database.clone())
        }
        Some(name) => {
            let c = release::app_user_credentials(&cluster, &release, name).await?;
            (c.username, c.password, c.database)
        }
    };
    let listener = bind(address, port).await?;
    let local = listener.local_addr().map_err(|source| Error::Io {
        context: "cannot read the listening address".into(),
        source,
    })?;
    let tls = found.tls(&cluster).await?;
    let connection = sslmode(
        DatabaseConnection::new(
            local.ip().to_string(),
            local.port(),
            database,
            username,
            password,
        ),
        tls.as_ref(),
        &cluster.namespace,
        &release,
    );
    let shown = if args.show_password {
        connection
    } else {
        connection.masked()
    };
    // Installed before the DSN is printed: a script that reads it and stops us at once must
    // get the clean exit, not the default death by signal.
    let stop = super::Signals::install()?;
    match args
        .output
        .map(|f| output::document(f, &shown))
        .transpose()?
        .flatten()
    {
        Some(document) => emit(&document),
        // An export line with the mask in it would set a password of asterisks: it is
        // printed only with the password.
        None if args.show_password => emit(&format!(
            "{dsn}\nexport DATABASE_URL={quoted}\n",
            dsn = shown.connection_string,
            quoted = shell_quote(&shown.connection_string)
        )),
        None => {
            emit(&format!("{}\n", shown.connection_string));
            crate::note!(
                "hint: the password is masked; --show-password prints the DSN with it and an `export DATABASE_URL=…` line"
            );
        }
    }
    crate::note!(
        "forwarding {local} to release {release} in namespace {} (pod {}:{}; each connection finds the ready pod again); Ctrl-C to stop",
        cluster.namespace,
        target.pod,
        target.port
    );
    tokio::select! {
        () = forward::serve(listener, cluster, release, found.writer_selector()) => {}
        _ = stop.first() => {}
    }
    crate::note!("stopped forwarding {local}");
    Ok(())
}

/// The local DSN's TLS: none for a plain release (lib/pq refuses a DSN without sslmode against
/// a server without TLS); for one that serves it, verify-full with its CA when the certificate
/// names the address listened on (127.0.0.1 and ::1 are in every certificate since this
/// change, and an older one gets them on `install --upgrade`), else require.
fn sslmode(
    connection: DatabaseConnection,
    tls: Option<&release::ReleaseTls>,
    namespace: &str,
    release: &str,
) -> DatabaseConnection {
    let Some(tls) = tls else {
        return connection.with_plain_or_tls(false);
    };
    if tls.names(&connection.host) {
        match release::write_ca(namespace, release, None, &tls.ca) {
            Ok(path) => return connection.with_tls("verify-full", &path),
            Err(e) => crate::note!("note: {e}: sslmode=require"),
        }
    } else if connection.host == DEFAULT_ADDRESS || connection.host == "::1" {
        crate::note!(
            "note: the server certificate does not name {}: sslmode=require (kubectl pg install {release} -n {namespace} --upgrade renews it with the loopback addresses, for verify-full)",
            connection.host
        );
    }
    connection.with_plain_or_tls(true)
}

fn looks_like_port(text: &str) -> bool {
    text.contains(':') || (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
}

/// The address and port from `[[ADDRESS:]PORT]` and `--address`; port None means "5432 when
/// free, else any".
fn listen_on(listen: Option<&str>, flag: Option<&str>) -> Result<(IpAddr, Option<u16>), Error> {
    let (from_arg, port) = match listen {
        None => (None, None),
        Some(text) => {
            let (addr, port) = match text.rsplit_once(':') {
                Some((addr, port)) => (
                    Some(addr.trim_start_matches('[').trim_end_matches(']')),
                    port,
                ),
                None => (None, text),
            };
            let port: u16 = port.parse().map_err(|_| Error::InvalidInput {
                message: format!("invalid port {port:?} in {text:?}"),
                hint: Some("give PORT or ADDRESS:PORT, like 15432 or 127.0.0.1:15432".into()),
            })?;
            (addr.filter(|a| !a.is_empty()), Some(port))
        }
    };
    if let (Some(a), Some(b)) = (from_arg, flag) {
        if a != b {
            return Err(Error::invalid(format!(
                "two addresses to listen on: {a} (in {}) and --address {b}: give one",
                listen.unwrap_or_default()
            )));
        }
    }
    let text = from_arg.or(flag).unwrap_or(DEFAULT_ADDRESS);
    let address = match text {
        "localhost" => IpAddr::from([127, 0, 0, 1]),
        other => other.parse().map_err(|_| Error::InvalidInput {
            message: format!("invalid address to listen on: {other:?}"),
            hint: Some("an IP address of this machine, like 127.0.0.1, ::1 or 0.0.0.0".into()),
        })?,
    };
    Ok((address, port))
}

/// The port asked for (taken: exit 1), else 5432 when free, else one the system picks.
async fn bind(address: IpAddr, port: Option<u16>) -> Result<TcpListener, Error> {
    let bind_error = |port: u16, source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            Error::InvalidInput {
                message: format!("port {port} on {address} is already in use"),
                hint: Some(
                    "give another port, or none to take 5432 when free and any free port else"
                        .into(),
                ),
            }
        } else {
            Error::Io {
                context: format!("cannot listen on {}", SocketAddr::new(address, port)),
                source,
            }
        }
    };
    match port {
        Some(port) => TcpListener::bind((address, port))
            .await
            .map_err(|e| bind_error(port, e)),
        None => match TcpListener::bind((address, DATABASE_PORT)).await {
            Ok(listener) => Ok(listener),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                crate::note!("port {DATABASE_PORT} on {address} is in use: taking a free one");
                TcpListener::bind((address, 0))
                    .await
                    .map_err(|e| bind_error(0, e))
            }
            Err(e) => Err(bind_error(DATABASE_PORT, e)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_dsn_says_sslmode_for_plain_and_tls_releases() {
        let local = || {
            DatabaseConnection::new(
                "127.0.0.1".into(),
                15432,
                "db".into(),
                "u".into(),
                "p".into(),
            )
        };
        let plain = sslmode(local(), None, "ns", "pg");
        assert!(plain.connection_string.ends_with("/db?sslmode=disable"));
        // A certificate made before it named loopback: encrypted, not verified (verify-full
        // would fail on the name).
        let old = release::ReleaseTls {
            ca: "PEM".into(),
            sans: vec!["pg".into(), "pg.ns.svc.cluster.local".into()],
        };
        let required = sslmode(local(), Some(&old), "ns", "pg");
        assert!(required.connection_string.ends_with("/db?sslmode=require"));
        assert_eq!(required.sslrootcert, None);
    }

    #[test]
    fn listen_addresses() {
        let local = IpAddr::from([127, 0, 0, 1]);
        assert_eq!(listen_on(None, None).unwrap(), (local, None));
        assert_eq!(
            listen_on(Some("15432"), None).unwrap(),
            (local, Some(15432))
        );
        assert_eq!(
            listen_on(Some("0.0.0.0:6543"), None).unwrap(),
            (IpAddr::from([0, 0, 0, 0]), Some(6543))
        );
        assert_eq!(
            listen_on(Some("[::1]:6543"), None).unwrap(),
            ("::1".parse().unwrap(), Some(6543))
        );
        assert_eq!(
            listen_on(Some("7000"), Some("::1")).unwrap(),
            ("::1".parse().unwrap(), Some(7000))
        );
        assert_eq!(
            listen_on(Some("localhost:0"), None).unwrap(),
            (local, Some(0))
        );
        assert!(listen_on(Some("x"), None).is_err());
        assert!(listen_on(Some("70000"), None).is_err());
        assert!(listen_on(Some("10.0.0.1:5"), Some("127.0.0.1")).is_err());
        assert!(listen_on(None, Some("nohost")).is_err());
        assert!(looks_like_port("15432") && looks_like_port("[::1]:5432"));
        assert!(!looks_like_port("orders") && !looks_like_port("pg-2"));
    }
}
