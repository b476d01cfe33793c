//! `kubectl pg version`: what this build is, and what it talks to.

use std::time::Duration;

use serde::Serialize;

use crate::cli::{GlobalArgs, VersionArgs};
use crate::cluster::Cluster;
use crate::error::Error;
use crate::manifests::spec::IMAGES;
use crate::output::{self, emit, API_VERSION};

/// How long to wait for the cluster's version before leaving it out.
const SERVER_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Serialize)]
pub struct VersionInfo {
    #[serde(rename = "apiVersion")]
    pub api_version: &'static str,
    pub kind: &'static str,
    pub version: &'static str,
    pub git_commit: &'static str,
    pub build_date: &'static str,
    pub postgres_majors: Vec<u32>,
    pub postgres_images: Vec<&'static str>,
    /// The API server's gitVersion, when it could be reached.
    pub server_version: Option<String>,
}

pub async fn run(args: VersionArgs, global: &GlobalArgs) -> Result<(), Error> {
    let server_version = if args.client {
        None
    } else {
        server_version(global).await
    };
    let info = VersionInfo {
        api_version: API_VERSION,
        kind: "Version",
        version: env!("CARGO_PKG_VERSION"),
        git_commit: env!("KUBECTL_PG_GIT_COMMIT"),
        build_date: env!("KUBECTL_PG_BUILD_DATE"),
        postgres_majors: IMAGES.iter().map(|(m, _)| *m).collect(),
        postgres_images: IMAGES.iter().map(|(_, i)| *i).collect(),
        server_version,
    };
    if let Some(text) = output::document(args.output, &info)? {
        emit(&text);
        return Ok(());
    }
    let majors: Vec<String> = info.postgres_majors.iter().map(u32::to_string).collect();
    emit(&format!(
        "Plugin version:     v{} (commit {}, built {})\nPostgreSQL majors:  {} (images {})\nKubernetes server:  {}\n",
        info.version,
        info.git_commit,
        info.build_date,
        majors.join(", "),
        info.postgres_images.join(", "),
        info.server_version.as_deref().unwrap_or("not reachable")
    ));
    Ok(())
}

async fn server_version(global: &GlobalArgs) -> Option<String> {
    let lookup = async {
        let cluster = Cluster::connect(&global.connect_options()).await.ok()?;
        cluster
            .client
            .apiserver_version()
            .await
            .ok()
            .map(|v| v.git_version)
    };
    tokio::time::timeout(SERVER_TIMEOUT, lookup)
        .await
        .ok()
        .flatten()
}
