//! A release is a value that knows its kind: kubectl-pg's own single instance (a StatefulSet)
//! or a CloudNativePG Cluster, made by kubectl-pg or by the team. Commands ask it for its
//! status and its endpoints and never look at the kind themselves.

use futures_util::stream::BoxStream;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Node, Secret, Service};
use kube::api::{Api, ListParams};

use crate::cluster::logs::LogSource;
use crate::cluster::release::{self, Credentials, FoundRelease, ReleaseTls, Target, DATABASE_PORT};
use crate::cluster::tunnel::TunnelConnector;
use crate::cluster::Cluster;
use crate::database::Connector;
use crate::deployment::changes;
use crate::deployment::cnpg::{self, CnpgCluster, Which};
use crate::deployment::evidence;
use crate::deployment::report::DeploymentStatus;
use crate::deployment::restart;
use crate::deployment::rotation;
use crate::deployment::status;
use crate::deployment::uninstall;
use crate::error::Error;
use crate::migration::MigrationSet;

/// One release, as found now.
#[derive(Debug, Clone)]
pub enum Release {
    /// kubectl-pg's single instance: StatefulSet `R`, pod `R-0`, Service `R` (also a release
    /// not installed yet, whose status says so).
    StatefulSet { name: String, namespace: String },
    /// A CloudNativePG Cluster `R` and its instances.
    Cnpg(Box<CnpgCluster>),
}

/// How a client reaches a release.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub credentials: Credentials,
    /// The TLS the server serves, with the CA to verify it; none for a plain release.
    pub tls: Option<ReleaseTls>,
}

/// The release to act on: the one named; else the only one in the namespace, of either kind;
/// else `postgres`.
pub async fn resolve(cluster: &Cluster, named: Option<&str>) -> Result<Release, Error> {
    if named.is_some() {
        let name = release::resolve(cluster, named).await?;
        return Release::locate(cluster, &name).await;
    }
    let (ours, theirs) = tokio::join!(
        release::resolve(cluster, None),
        cnpg::names(cluster, &cluster.namespace)
    );
    let ours = ours?;
    let theirs = theirs?;
    // No StatefulSet release (the default name came back) and one Cluster: that Cluster.
    if ours == release::DEFAULT_RELEASE && theirs.len() == 1 {
        return Release::locate(cluster, &theirs[0]).await;
    }
    Release::locate(cluster, &ours).await
}

/// Every CloudNativePG Cluster of the namespace, or of all, as releases (two list requests).
pub async fn clusters(cluster: &Cluster, all_namespaces: bool) -> Result<Vec<Release>, Error> {
    Ok(cnpg::list(cluster, all_namespaces)
        .await?
        .into_iter()
        .map(|c| Release::Cnpg(Box::new(c)))
        .collect())
}

impl Release {
    /// Finds release `name` in the cluster's namespace: kubectl-pg's StatefulSet when there is
    /// one, else a CloudNativePG Cluster of that name, else a StatefulSet release not (yet)
    /// installed. Two reads at once.
    pub async fn locate(cluster: &Cluster, name: &str) -> Result<Self, Error> {
        let namespace = cluster.namespace.clone();
        let sets: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), &namespace);
        let (sts, found) = tokio::join!(
            sets.get_metadata_opt(name),
            cnpg::get(cluster, &namespace, name)
        );
        let sts = sts.map_err(|e| cluster.error("get", "statefulsets", e))?;
        let ours = sts
            .as_ref()
            .is_some_and(|s| release::made_for(&s.metadata, name));
        // A single instance moved to a Cluster: the Cluster is the release now.
        let moved = sts
            .as_ref()
            .is_some_and(|s| crate::deployment::to_cluster::moved(&s.metadata));
        match found? {
            Some(c) if !ours || moved => Ok(Release::Cnpg(Box::new(c))),
            _ => Ok(Release::StatefulSet {
                name: name.to_string(),
                namespace,
            }),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Release::StatefulSet { name, .. } => name,
            Release::Cnpg(c) => &c.name,
        }
    }

    pub fn namespace(&self) -> &str {
        match self {
            Release::StatefulSet { namespace, .. } => namespace,
            Release::Cnpg(c) => &c.namespace,
        }
    }

    /// The label selector of every pod of the release (`kubectl describe pod -l …`).
    pub fn pod_selector(&self) -> String {
        match self {
            Release::StatefulSet { name, .. } => release::selector(name),
            Release::Cnpg(c) => format!("{}={}", cnpg::LABEL_CLUSTER, c.name),
        }
    }

    /// The release as it is now: a Cluster and its pods read again (a StatefulSet release is
    /// only its name: its status reads the rest).
    pub async fn current(&self, cluster: &Cluster) -> Result<Self, Error> {
        match self {
            Release::StatefulSet { .. } => Ok(self.clone()),
            Release::Cnpg(c) => cnpg::get(cluster, &c.namespace, &c.name)
                .await?
                .map(|c| Release::Cnpg(Box::new(c)))
                .ok_or_else(|| Error::NotFound {
                    message: format!(
                        "Cluster {:?} is gone from namespace {:?}",
                        c.name, c.namespace
                    ),
                    hint: None,
                }),
        }
    }

    /// Yields whenever something about the release may have changed (watches, not polling).
    pub fn changes(&self, cluster: &Cluster) -> BoxStream<'static, ()> {
        match self {
            Release::StatefulSet { name, namespace } => changes::changes(cluster, namespace, name),
            Release::Cnpg(c) => changes::cluster_changes(cluster, &c.namespace, &c.name),
        }
    }

    /// The pod that takes writes now, its database port, and the credentials a client logs in
    /// with: `R-0` and the release's Secret; a Cluster's primary and its application owner.
    pub async fn target(&self, cluster: &Cluster) -> Result<Target, Error> {
        match self {
            Release::StatefulSet { name, .. } => release::find_target(cluster, name).await,
            Release::Cnpg(c) => {
                let credentials = c.credentials(cluster).await?;
                let pod = c.primary().ok_or_else(|| Error::NotFound {
                    message: format!(
                        "Cluster {:?} has no primary yet ({})",
                        c.name,
                        c.operator_phase().unwrap_or_else(|| "no phase".into())
                    ),
                    hint: Some(format!(
                        "wait for it: kubectl pg status {} -n {}",
                        c.name, c.namespace
                    )),
                })?;
                Ok(Target {
                    release: c.name.clone(),
                    namespace: c.namespace.clone(),
                    pod,
                    port: c.port(),
                    credentials,
                })
            }
        }
    }

    /// The label selector of the pod that takes writes: a port-forward follows it across
    /// restarts, replacements and failovers (CloudNativePG moves the primary label).
    pub fn writer_selector(&self) -> String {
        match self {
            Release::StatefulSet { name, .. } => release::selector(name),
            Release::Cnpg(c) => format!(
                "{}={},{}=primary",
                cnpg::LABEL_CLUSTER,
                c.name,
                cnpg::LABEL_ROLE
            ),
        }
    }

    /// The database role psql runs as inside the pod, when not the target's user: a Cluster's
    /// instances let only `postgres` in over their socket (peer authentication).
    pub fn socket_user(&self) -> Option<&'static str> {
        match self {
            Release::StatefulSet { .. } => None,
            Release::Cnpg(_) => Some("postgres"),
        }
    }

    /// The TLS the server serves: a StatefulSet release's `R-tls` when it has one; a
    /// Cluster's CA (its certificates name only the Services, not a local address).
    pub async fn tls(&self, cluster: &Cluster) -> Result<Option<ReleaseTls>, Error> {
        match self {
            Release::StatefulSet { name, .. } => release::tls_of(cluster, name).await,
            Release::Cnpg(c) => {
                let mut tls = c.tls(cluster, "").await?;
                tls.sans.clear();
                Ok(Some(tls))
            }
        }
    }

    /// Moves the primary to `to` (else the most caught-up streaming replica), the way the
    /// operator does it, and waits until the new primary takes writes. Only a Cluster that
    /// kubectl-pg made: never one the team owns. Returns the new primary.
    pub async fn switchover(
        &self,
        cluster: &Cluster,
        to: Option<&str>,
        timeout: std::time::Duration,
    ) -> Result<String, Error> {
        let c = match self {
            Release::StatefulSet { name, .. } => {
                return Err(Error::InvalidInput {
                    message: format!(
                        "release {name:?} is a single instance: there is no replica to switch over to"
                    ),
                    hint: Some(format!(
                        "a highly available release has replicas: kubectl pg install NAME -n {} --instances 3",
                        cluster.namespace
                    )),
                })
            }
            Release::Cnpg(c) => c,
        };
        if !cnpg::made_by_us(c) {
            return Err(Error::InvalidInput {
                message: format!(
                    "Cluster {:?} was not made by kubectl-pg: switchover will not change it",
                    c.name
                ),
                hint: Some(format!(
                    "its owners can: kubectl cnpg promote {} INSTANCE -n {}",
                    c.name, c.namespace
                )),
            });
        }
        let replication = c.replication(cluster).await?;
        let instances = c.instances(&replication.replicas);
        let target = match to {
            Some(name) => {
                let found = instances.iter().find(|i| i.name == name);
                match found {
                    Some(i) if i.role != "primary" && i.ready => name.to_string(),
                    Some(i) if i.role == "primary" => {
                        return Err(Error::InvalidInput {
                            message: format!("{name} is already the primary of Cluster {}", c.name),
                            hint: None,
                        })
                    }
                    _ => {
                        return Err(Error::InvalidInput {
                            message: format!(
                                "{name} is not a ready replica of Cluster {} (its instances: {})",
                                c.name,
                                instances
                                    .iter()
                                    .map(|i| format!(
                                        "{} {}{}",
                                        i.name,
                                        i.role,
                                        if i.ready { "" } else { ", not ready" }
                                    ))
                                    .collect::<Vec<_>>()
                                    .join("; ")
                            ),
                            hint: Some(format!("kubectl pg status {} -n {}", c.name, c.namespace)),
                        })
                    }
                }
            }
            None => cnpg::best_replica(&instances).ok_or_else(|| Error::Deployment {
                message: format!(
                    "Cluster {} has no ready, streaming replica to promote",
                    c.name
                ),
                hints: vec![format!("kubectl pg status {} -n {}", c.name, c.namespace)],
                code: 4,
            })?,
        };
        cnpg::request_switchover(cluster, c, &target).await?;
        crate::note!(
            "asked the operator to promote {target} (primary was {})",
            c.primary().unwrap_or_default()
        );
        cnpg::wait_primary(cluster, c, &target, timeout).await?;
        Ok(target)
    }

    /// The target with a ready replica as its pod, for reads that should spare the primary
    /// (`psql --replica`, `dump --replica`). A single instance has none: exit 1.
    pub async fn reader(&self, cluster: &Cluster) -> Result<Target, Error> {
        let c = match self {
            Release::StatefulSet { name, .. } => {
                return Err(Error::InvalidInput {
                    message: format!("release {name:?} is a single instance: it has no replica"),
                    hint: Some("drop --replica: its one pod serves reads and writes".into()),
                })
            }
            Release::Cnpg(c) => c,
        };
        let mut target = self.target(cluster).await?;
        let replica = c
            .instances(&Default::default())
            .into_iter()
            .find(|i| i.ready && i.role != "primary" && Some(&i.name) != Some(&target.pod))
            .ok_or_else(|| Error::Deployment {
                message: format!("Cluster {} has no ready replica now", c.name),
                hints: vec![
                    format!(
                        "see its instances: kubectl pg status {} -n {}",
                        c.name, c.namespace
                    ),
                    "drop --replica to read from the primary".into(),
                ],
                code: 8,
            })?;
        target.pod = replica.name;
        Ok(target)
    }

    /// The role a tool run in the pod over its socket logs in as (psql, pg_dump, pg_restore),
    /// and, when it is not the owner, the owner it should `SET ROLE` to so that what it creates
    /// is the owner's: a Cluster's socket admits only `postgres` (peer authentication).
    pub fn socket_roles(&self, target: &Target) -> (String, Option<String>) {
        match self.socket_user() {
            Some(user) if user != target.credentials.username => {
                (user.to_string(), Some(target.credentials.username.clone()))
            }
            _ => (target.credentials.username.clone(), None),
        }
    }

    /// Where its server log is: a StatefulSet's `R-0`; a Cluster's primary, followed to the
    /// next primary after a failover or switchover, until the Cluster is deleted.
    pub fn log_source(&self) -> LogSource {
        match self {
            Release::StatefulSet { name, .. } => LogSource::stateful_set(name),
            Release::Cnpg(c) => LogSource {
                release: c.name.clone(),
                selector: self.writer_selector(),
                preferred: c.primary(),
                owner: cnpg::resource(),
                owner_kind: "Cluster",
            },
        }
    }

    /// Reads the release's Secrets, so their passwords are cut out of what is printed (a log
    /// line may quote one).
    pub async fn learn_secrets(&self, cluster: &Cluster) -> Result<(), Error> {
        match self {
            Release::StatefulSet { name, .. } => {
                release::learn_secrets(cluster, name).await.map(|_| ())
            }
            Release::Cnpg(c) => {
                if let Some(name) = c.superuser_secret() {
                    let secrets: Api<Secret> =
                        Api::namespaced(cluster.client.clone(), &c.namespace);
                    if let Ok(Some(secret)) = secrets.get_opt(&name).await {
                        release::secret_values(&secret);
                    }
                }
                c.credentials(cluster).await.map(|_| ())
            }
        }
    }

    /// A connector to `target` that follows the writer: a Cluster's next session goes to its
    /// primary of the moment.
    pub fn connector(&self, cluster: &Cluster, target: &Target) -> TunnelConnector {
        self.database_connector(cluster, target, &target.credentials.database)
    }

    /// [`Release::connector`] to another database of the same server.
    pub fn database_connector(
        &self,
        cluster: &Cluster,
        target: &Target,
        database: &str,
    ) -> TunnelConnector {
        let connector = TunnelConnector::for_database(cluster, target, database);
        match self {
            Release::StatefulSet { .. } => connector,
            Release::Cnpg(_) => connector.following(self.writer_selector()),
        }
    }

    /// The role that owns the release's objects, for grants and for what a dropped user owned:
    /// a single instance's superuser (`found`'s user), a Cluster's database owner.
    pub fn objects_owner(&self, found: &FoundRelease) -> String {
        match self {
            Release::StatefulSet { .. } => found.target.credentials.username.clone(),
            Release::Cnpg(c) => c.owner(),
        }
    }

    /// The superuser's credentials and where they log in, for the commands that manage roles
    /// (`user`, `rotate-password --db-user`): a single instance's own user and Secret; a
    /// Cluster's `postgres`, from the Secret the operator keeps while superuser access is on
    /// (new Clusters have it). A Cluster the team made is refused: its roles are theirs.
    pub async fn admin(&self, cluster: &Cluster, command: &str) -> Result<FoundRelease, Error> {
        let c = match self {
            Release::StatefulSet { name, .. } => return release::find_release(cluster, name).await,
            Release::Cnpg(c) => c,
        };
        let (name, ns) = (&c.name, &c.namespace);
        if !cnpg::made_by_us(c) {
            return Err(Error::InvalidInput {
                message: format!(
                    "Cluster {name:?} was not made by kubectl-pg: {command} will not change its roles"
                ),
                hint: Some(format!(
                    "its owners manage roles declaratively: kubectl explain cluster.spec.managed.roles; kubectl pg psql {name} -n {ns} connects"
                )),
            });
        }
        let Some(secret_name) = c.superuser_secret() else {
            return Err(Error::InvalidInput {
                message: format!(
                    "Cluster {name:?} has no superuser access, which {command} needs to manage roles"
                ),
                hint: Some(format!(
                    "turn it on with a rerun (the operator then keeps the postgres password in Secret {name}-superuser): kubectl pg install {name} -n {ns} --instances {}",
                    c.wanted()
                )),
            });
        };
        let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), ns);
        let secret = secrets
            .get_opt(&secret_name)
            .await
            .map_err(|e| cluster.error("get", "secrets", e))?
            .ok_or_else(|| Error::NotFound {
                message: format!("Secret {secret_name:?} of Cluster {name:?} not found"),
                hint: Some(format!(
                    "the operator makes it while superuser access is on: kubectl get cluster {name} -n {ns}"
                )),
            })?;
        let values = release::secret_values(&secret);
        let password = values.get("password").cloned().unwrap_or_default();
        if password.is_empty() {
            return Err(release::missing_key(&secret_name, "password"));
        }
        // The owner's target, read once: its pod is the primary, its database the one to use.
        let mut target = self.target(cluster).await?;
        target.credentials = Credentials {
            username: values
                .get("username")
                .cloned()
                .unwrap_or_else(|| "postgres".into()),
            password,
            database: std::mem::take(&mut target.credentials.database),
            host: Some(c.host(Which::ReadWrite, release::DEFAULT_CLUSTER_DOMAIN)),
            port: None,
        };
        Ok(FoundRelease {
            target,
            source: release::CredentialSource {
                secret: secret_name,
                cluster_domain: release::DEFAULT_CLUSTER_DOMAIN.into(),
                username: release::EnvValue::Key("username".into()),
                database: release::EnvValue::Literal(c.database()),
            },
            secret,
        })
    }

    /// A connector to the writer, once `query` has run there in one session through a tunnel
    /// (`SELECT 1` proves it answers; `SELECT pg_current_xact_id()` that it takes writes,
    /// which a standby refuses).
    pub async fn writer(
        &self,
        cluster: &Cluster,
        query: &str,
    ) -> Result<(Target, TunnelConnector), Error> {
        let target = self.target(cluster).await?;
        let connector = self.connector(cluster, &target);
        let client = connector.connect().await?;
        client
            .simple_query(query)
            .await
            .map_err(|e| Error::Connection {
                target: connector.target(),
                reason: e.to_string(),
            })?;
        Ok((target, connector))
    }

    /// Restarts the release and waits until every pod runs again: a StatefulSet's pod
    /// replaced; a Cluster's instances restarted by the operator, replicas first. `sent` says
    /// whether the one write was made, for what an interruption leaves.
    pub async fn restart(
        &self,
        cluster: &Cluster,
        timeout: std::time::Duration,
        sent: &std::cell::Cell<restart::Sent>,
    ) -> Result<(), Error> {
        match self {
            Release::StatefulSet { name, .. } => {
                restart::statefulset(cluster, name, timeout, sent).await
            }
            Release::Cnpg(c) => restart::cloudnative_pg(cluster, c, timeout, sent).await,
        }
    }

    /// Refuses, with exit 1 and before any write, a command that only knows the single-instance
    /// kind: its name when this release is one.
    pub fn single_instance(self, command: &str) -> Result<String, Error> {
        match self {
            Release::StatefulSet { name, .. } => Ok(name),
            Release::Cnpg(c) => Err(Error::InvalidInput {
                message: format!(
                    "release {} is a CloudNativePG Cluster: kubectl pg {command} on a Cluster is not built yet",
                    c.name
                ),
                hint: Some(format!(
                    "kubectl pg psql {} -n {} reaches its primary as postgres",
                    c.name, c.namespace
                )),
            }),
        }
    }

    /// The Cluster whose operator upgrades the major in place (`upgrade`), or none for a single
    /// instance, which the command upgrades itself. A Cluster kubectl-pg did not make is
    /// refused, with exit 1 and before any write: its spec is the team's.
    pub fn upgraded_by_operator(&self) -> Result<Option<&CnpgCluster>, Error> {
        match self {
            Release::StatefulSet { .. } => Ok(None),
            Release::Cnpg(c) if cnpg::made_by_us(c) => Ok(Some(c)),
            Release::Cnpg(c) => Err(Error::InvalidInput {
                message: format!(
                    "Cluster {} in namespace {} was not made by kubectl-pg: upgrade will not change it",
                    c.name, c.namespace
                ),
                hint: Some(
                    "CloudNativePG upgrades a major when its spec.imageName names the new one".into(),
                ),
            }),
        }
    }

    /// Whether an operator keeps the owner's password in step with its Secret (a Cluster's
    /// instance manager does): a rotation then writes only the Secret.
    pub fn operator_sets_passwords(&self) -> bool {
        matches!(self, Release::Cnpg(_))
    }

    /// Checks, before any write or prompt, that the owner's password may be rotated through
    /// the operator (see [`rotation::check`]).
    pub fn check_operator_rotation(&self) -> Result<(), Error> {
        match self {
            Release::StatefulSet { name, .. } => Err(no_operator(name)),
            Release::Cnpg(c) => rotation::check(c),
        }
    }

    /// Rotates the owner's password to `new` through the Secret the operator applies, and
    /// waits until the primary takes it.
    pub async fn rotate_through_operator(
        &self,
        cluster: &Cluster,
        new: &str,
        timeout: std::time::Duration,
    ) -> Result<rotation::Rotated, Error> {
        match self {
            Release::StatefulSet { name, .. } => Err(no_operator(name)),
            Release::Cnpg(c) => rotation::through_operator(cluster, self, c, new, timeout).await,
        }
    }

    /// What a diagnostics report collects of it (not found when it is not installed).
    pub async fn evidence(&self, cluster: &Cluster) -> Result<evidence::Evidence, Error> {
        match self {
            Release::StatefulSet { name, .. } => evidence::statefulset(cluster, name).await,
            Release::Cnpg(c) => evidence::cloudnative_pg(cluster, c).await,
        }
    }

    /// Uninstalls the release, keeping its data unless `delete_data` (asked of `confirm`
    /// first): a StatefulSet's objects one by one, a Cluster hibernated or deleted whole.
    pub async fn uninstall(
        &self,
        cluster: &Cluster,
        delete_data: bool,
        timeout: std::time::Duration,
        confirm: impl FnOnce(&str) -> Result<(), Error>,
    ) -> Result<(), Error> {
        match self {
            Release::StatefulSet { name, .. } => {
                uninstall::statefulset(cluster, name, delete_data, timeout, confirm).await
            }
            Release::Cnpg(c) => {
                uninstall::cloudnative_pg(cluster, c, delete_data, timeout, confirm).await
            }
        }
    }

    /// The release's status document, with its database checked.
    pub async fn status(
        &self,
        cluster: &Cluster,
        set: &MigrationSet,
    ) -> Result<DeploymentStatus, Error> {
        match self {
            Release::StatefulSet { name, namespace } => {
                Ok(status::read(cluster, namespace, name, set).await?.0)
            }
            Release::Cnpg(c) => cnpg_status(cluster, c).await,
        }
    }

    /// Where a client connects, as whom, and with what TLS: `which` endpoint (a single instance
    /// has only its read-write one), from outside the cluster when `external`, as application
    /// user `db_user` when named.
    pub async fn endpoint(
        &self,
        cluster: &Cluster,
        which: Which,
        external: bool,
        db_user: Option<&str>,
    ) -> Result<Endpoint, Error> {
        match self {
            Release::StatefulSet { name, .. } => {
                if which != Which::ReadWrite {
                    return Err(Error::InvalidInput {
                        message: format!(
                            "release {name:?} is a single instance: it has only the read-write endpoint"
                        ),
                        hint: Some("leave out --endpoint, or give --endpoint rw".into()),
                    });
                }
                statefulset_endpoint(cluster, name, external, db_user).await
            }
            Release::Cnpg(c) => {
                let (credentials, address) = tokio::join!(
                    async {
                        match db_user {
                            Some(user) => {
                                release::app_user_credentials(cluster, &c.name, user).await
                            }
                            None => c.credentials(cluster).await,
                        }
                    },
                    async {
                        if external {
                            Some(external_address(cluster, &c.service(which), &c.name).await)
                        } else {
                            None
                        }
                    }
                );
                let (host, port) = match address {
                    Some(a) => a?,
                    None => (c.host(which, release::DEFAULT_CLUSTER_DOMAIN), c.port()),
                };
                let tls = c.tls(cluster, &host).await?;
                Ok(Endpoint {
                    host,
                    port,
                    credentials: credentials?,
                    tls: Some(tls),
                })
            }
        }
    }
}

fn no_operator(name: &str) -> Error {
    Error::invalid(format!(
        "release {name:?} has no operator to set its passwords"
    ))
}

async fn statefulset_endpoint(
    cluster: &Cluster,
    release: &str,
    external: bool,
    db_user: Option<&str>,
) -> Result<Endpoint, Error> {
    let (found, address, tls) = tokio::join!(
        release::secret_of(cluster, release),
        async {
            if external {
                Some(external_address(cluster, release, release).await)
            } else {
                None
            }
        },
        release::tls_of(cluster, release)
    );
    let (source, secret) = found?;
    let credentials = match db_user {
        Some(user) => release::app_user_credentials(cluster, release, user).await?,
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
    let (host, port) = match address {
        Some(address) => address?,
        None => (
            credentials.host.clone().unwrap_or_else(|| {
                release::service_host(release, &cluster.namespace, &source.cluster_domain)
            }),
            credentials.port.unwrap_or(DATABASE_PORT),
        ),
    };
    Ok(Endpoint {
        host,
        port,
        credentials,
        tls: tls?,
    })
}

/// The address a laptop can use for Service `service` of `release`: a LoadBalancer's
/// ingress, or a node address and NodePort.
async fn external_address(
    cluster: &Cluster,
    service: &str,
    release: &str,
) -> Result<(String, u16), Error> {
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let found = services
        .get_opt(service)
        .await
        .map_err(|e| cluster.error("get", "services", e))?
        .ok_or_else(|| Error::NotFound {
            message: format!(
                "Service {service:?} not found in namespace {:?}",
                cluster.namespace
            ),
            hint: None,
        })?;
    let spec = found.spec.clone().unwrap_or_default();
    let port = spec
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("postgresql") || p.name.as_deref() == Some("postgres"))
        .or_else(|| spec.ports.iter().flatten().next());
    let none = |why: String| {
        Error::NotFound {
        message: format!("no address outside the cluster for release {release:?}: {why}"),
        hint: Some(format!(
            "use `kubectl pg psql {release} -n {ns}`, or `kubectl pg port-forward {release} -n {ns}` and connect to 127.0.0.1",
            ns = cluster.namespace
        )),
    }
    };
    match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "LoadBalancer" => {
            let ingress = found
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

/// A CloudNativePG Cluster's status: the operator's phase, each instance's role, readiness,
/// replication state and lag (asked of the primary, in its pod), and the read-write endpoint.
async fn cnpg_status(cluster: &Cluster, c: &CnpgCluster) -> Result<DeploymentStatus, Error> {
    use crate::deployment::assess::{Problem, Severity};
    let replication = c.replication(cluster).await.unwrap_or_default();
    let instances = c.instances(&replication.replicas);
    let phase = c.phase();
    let mut problems = Vec::new();
    if phase != "Healthy" && phase != "Hibernated" {
        problems.push(Problem {
            severity: Severity::Warning,
            reason: "OperatorPhase".into(),
            message: format!(
                "the operator reports: {}",
                c.operator_phase().unwrap_or_else(|| {
                    "no phase yet (is the CloudNativePG operator running?)".into()
                })
            ),
            hint: None,
            exit_code: 4,
        });
    }
    for i in instances.iter().filter(|i| i.role != "primary") {
        if i.replication.as_deref() != Some("streaming") {
            problems.push(Problem {
                severity: Severity::Warning,
                reason: "ReplicaNotStreaming".into(),
                message: format!(
                    "replica {} is {} on the primary",
                    i.name,
                    i.replication.as_deref().unwrap_or("not connected")
                ),
                hint: None,
                exit_code: 4,
            });
        }
    }
    let restarts = release::restarts(&c.pods);
    let host = c.host(Which::ReadWrite, release::DEFAULT_CLUSTER_DOMAIN);
    Ok(DeploymentStatus {
        api_version: crate::output::API_VERSION,
        kind: "DeploymentStatus",
        release: c.name.clone(),
        namespace: c.namespace.clone(),
        phase: phase.into(),
        pods_ready: instances.iter().filter(|i| i.ready).count(),
        pods_total: c.wanted().max(c.pods.len()),
        restarts,
        pvc_bound: true,
        pvc: None,
        database_accessible: replication.answered,
        round_trip_ms: replication.round_trip_ms,
        server_version: replication.server_version.clone(),
        migrations_applied: Vec::new(),
        migrations_applied_count: 0,
        latest_migration: None,
        migrations_pending: None,
        database_sizes: Vec::new(),
        image: c.image(),
        service_type: None,
        endpoint: Some(format!("{host}:{}", c.port())),
        connection_string: None,
        last_updated: c
            .object
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string()),
        tls: true,
        users: Vec::new(),
        problems,
        instances,
        primary: c.primary(),
    })
}
