//! `kubectl pg dsn`: the connection string of a release, read from its Secret.

use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, ListParams};

use crate::cli::{DsnArgs, DsnFormat, GlobalArgs};
use crate::cluster::release::{self, DATABASE_PORT};
use crate::cluster::Cluster;
use crate::database::connection::DatabaseConnection;
use crate::database::roles;
use crate::error::Error;
use crate::output::{self, emit};

pub async fn run(args: DsnArgs, global: &GlobalArgs) -> Result<(), Error> {
    if let Some(user) = &args.db_user {
        roles::validate_user_name_syntax(user)?;
    }
    let cluster = Cluster::connect(&global.connect_options()).await?;
    let release = release::resolve(&cluster, args.release.as_deref()).await?;
    let (found, external) = tokio::join!(release::secret_of(&cluster, &release), async {
        if args.external {
            Some(external_address(&cluster, &release).await)
        } else {
            None
        }
    });
    let (source, secret) = found?;
    let credentials = match &args.db_user {
        Some(user) => release::app_user_credentials(&cluster, &release, user).await?,
        None => {
            let secret_name = &source.secret;
            let secret = secret.ok_or_else(|| Error::NotFound {
                message: format!(
                    "Secret {secret_name:?} of release {release:?} not found in namespace {:?}",
                    cluster.namespace
                ),
                hint: Some(format!(
                    "is the release installed? kubectl pg status -n {}",
                    cluster.namespace
                )),
            })?;
            source.resolve(&secret)?
        }
    };
    let (host, port) = match external {
        Some(address) => address?,
        None => (
            credentials.host.clone().unwrap_or_else(|| {
                release::service_host(&release, &cluster.namespace, &source.cluster_domain)
            }),
            credentials.port.unwrap_or(DATABASE_PORT),
        ),
    };
    let mut connection = DatabaseConnection::new(
        host,
        port,
        credentials.database,
        credentials.username,
        credentials.password,
    );
    // Every DSN says how to treat TLS: none for a plain release; for one that serves it,
    // verified against its CA when the CA is written for the client (--external, --ca-file),
    // else required (an app inside the cluster, without the CA).
    match release::tls_of(&cluster, &release).await? {
        None => {
            if let Some(path) = &args.ca_file {
                return Err(Error::InvalidInput {
                    message: format!(
                        "release {release:?} serves no TLS: there is no CA to write to {}",
                        path.display()
                    ),
                    hint: Some(format!(
                        "leave out --ca-file, or serve TLS: kubectl pg install {release} -n {} --upgrade --tls",
                        cluster.namespace
                    )),
                });
            }
            connection = connection.with_plain_or_tls(false);
        }
        Some(tls) if args.external || args.ca_file.is_some() => {
            let path = release::write_ca(
                &cluster.namespace,
                &release,
                args.ca_file.as_deref(),
                &tls.ca,
            )?;
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

/// The address a laptop can use: a LoadBalancer's ingress, or a node address and NodePort.
async fn external_address(cluster: &Cluster, release: &str) -> Result<(String, u16), Error> {
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let service = services
        .get_opt(release)
        .await
        .map_err(|e| cluster.error("get", "services", e))?
        .ok_or_else(|| Error::NotFound {
            message: format!(
                "Service {release:?} not found in namespace {:?}",
                cluster.namespace
            ),
            hint: None,
        })?;
    let spec = service.spec.clone().unwrap_or_default();
    let port = spec
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("postgresql"))
        .or_else(|| spec.ports.iter().flatten().next());
    let none = |why: String| {
        Error::NotFound {
        message: format!("no address outside the cluster for release {release:?}: {why}"),
        hint: Some(format!(
            "use `kubectl pg psql {release} -n {ns}`, or `kubectl port-forward svc/{release} 5432:5432 -n {ns}` and connect to 127.0.0.1:5432",
            ns = cluster.namespace
        )),
    }
    };
    match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "LoadBalancer" => {
            let ingress = service
                .status
                .and_then(|s| s.load_balancer)
                .and_then(|lb| lb.ingress)
                .and_then(|i| i.into_iter().next());
            let host = ingress.and_then(|i| i.ip.or(i.hostname));
            let port = port.map_or(DATABASE_PORT as i32, |p| p.port);
            match host {
                Some(host) => Ok((host, port as u16)),
                None => Err(none("its LoadBalancer has no ingress address yet".into())),
            }
        }
        "NodePort" => {
            let node_port = port
                .and_then(|p| p.node_port)
                .ok_or_else(|| none("no nodePort assigned".into()))?;
            let nodes: Api<Node> = Api::all(cluster.client.clone());
            let list = nodes
                .list(&ListParams::default().limit(1))
                .await
                .map_err(|e| cluster.error("list", "nodes", e))?;
            let addresses = list
                .items
                .into_iter()
                .flat_map(|n| n.status.and_then(|s| s.addresses).unwrap_or_default());
            let mut best = None;
            for a in addresses {
                if a.type_ == "ExternalIP" {
                    best = Some(a.address);
                    break;
                }
                if a.type_ == "InternalIP" && best.is_none() {
                    best = Some(a.address);
                }
            }
            best.map(|host| (host, node_port as u16))
                .ok_or_else(|| none("no node reports an address".into()))
        }
        other => Err(none(format!("its Service is of type {other}"))),
    }
}
