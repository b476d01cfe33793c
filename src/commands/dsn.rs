//! `kubectl pg dsn`: the connection string of a release, read from its Secret.

use crate::cli::{DsnArgs, DsnEndpoint, DsnFormat, GlobalArgs};
use crate::cluster::release;
use crate::cluster::Cluster;
use crate::database::connection::DatabaseConnection;
use crate::database::roles;
use crate::deployment::cnpg::Which;
use crate::deployment::kind;
use crate::error::Error;
use crate::output::{self, emit};

pub async fn run(args: DsnArgs, global: &GlobalArgs) -> Result<(), Error> {
    if let Some(user) = &args.db_user {
        roles::validate_user_name_syntax(user)?;
    }
    let cluster = Cluster::connect(&global.connect_options()).await?;
    let release = kind::resolve(&cluster, args.release.as_deref()).await?;
    let which = match args.endpoint {
        DsnEndpoint::Rw => Which::ReadWrite,
        DsnEndpoint::Ro => Which::ReadOnly,
        DsnEndpoint::R => Which::Any,
    };
    let endpoint = release
        .endpoint(&cluster, which, args.external, args.db_user.as_deref())
        .await?;
    let name = release.name().to_string();
    let credentials = endpoint.credentials;
    let mut connection = DatabaseConnection::new(
        endpoint.host,
        endpoint.port,
        credentials.database,
        credentials.username,
        credentials.password,
    );
    // Every DSN says how to treat TLS: none for a plain release; for one that serves it,
    // verified against its CA when the CA is written for the client (--external, --ca-file),
    // else required (an app inside the cluster, without the CA).
    match endpoint.tls {
        None => {
            if let Some(path) = &args.ca_file {
                return Err(Error::InvalidInput {
                    message: format!(
                        "release {name:?} serves no TLS: there is no CA to write to {}",
                        path.display()
                    ),
                    hint: Some(format!(
                        "leave out --ca-file, or serve TLS: kubectl pg install {name} -n {} --upgrade --tls",
                        cluster.namespace
                    )),
                });
            }
            connection = connection.with_plain_or_tls(false);
        }
        Some(tls) if args.external || args.ca_file.is_some() => {
            let path =
                release::write_ca(&cluster.namespace, &name, args.ca_file.as_deref(), &tls.ca)?;
            connection = connection.with_tls("verify-full", &path);
            if args.format == DsnFormat::Pgpass {
                crate::note!("note: the server needs TLS: connect with sslmode=verify-full sslrootcert={path} (a .pgpass line cannot say so)");
            }
        }
        Some(_) => {
            connection = connection.with_plain_or_tls(true);
            if args.format == DsnFormat::Pgpass {
                crate::note!("note: the server needs TLS: connect with sslmode=require, or verify-full with --ca-file (a .pgpass line cannot say so)");
            }
        }
    }
    if args.mask {
        connection = connection.masked();
    }
    if let Some(format) = args.output {
        if let Some(text) = output::document(format, &connection)? {
            emit(&text);
            return Ok(());
        }
    }
    let text = match args.format {
        DsnFormat::Uri => connection.connection_string.clone() + "\n",
        DsnFormat::Env => connection.env(),
        DsnFormat::Dotenv => {
            let (text, inexact) = connection.dotenv()?;
            for (name, readers) in inexact {
                let readers: Vec<String> = readers.iter().map(ToString::to_string).collect();
                crate::note!(
                    "warning: no .env form carries {name} through python-dotenv, node's dotenv and docker compose alike: it is written so that {} read it back (--format env or json carry any value)",
                    if readers.is_empty() { "none of them".to_string() } else { readers.join(" and ") }
                );
            }
            text
        }
        DsnFormat::Json => {
            output::document(crate::cli::OutputFormat::Json, &connection)?.unwrap_or_default()
        }
        DsnFormat::Jdbc => connection.jdbc() + "\n",
        DsnFormat::Keyvalue => connection.keyvalue() + "\n",
        DsnFormat::Pgpass => connection.pgpass() + "\n",
    };
    emit(&text);
    Ok(())
}
