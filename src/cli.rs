//! The command line, in clap. Global connection flags are parsed by us, because kubectl
//! forwards none of its own to a plugin.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::migration::Format;

pub use crate::output::{ColorChoice, OutputFormat};

const ABOUT: &str =
    "PostgreSQL on Kubernetes from one command line: install, status, migrate, psql, dsn, dump, restore, upgrade, users, logs, report";

const EXAMPLES: &str = "\
Examples:
  # Deploy PostgreSQL into namespace postgres, wait until healthy, apply the LearnFlow schema
  kubectl pg install -n postgres --migrate

  # How is it doing?
  kubectl pg status -n postgres

  # A psql session in the pod, and the connection string for an app
  kubectl pg psql -n postgres
  kubectl pg dsn -n postgres

  # Migrations against any database you can reach (the password from PGPASSWORD, never argv)
  DATABASE_URL=postgresql://postgres@localhost:5432/learnflow kubectl pg migrate up

  # Take the data elsewhere, or to the next major
  kubectl pg dump -n postgres -f learnflow.dump
  kubectl pg upgrade -n postgres --postgres-version 18";

/// `kubectl pg`: PostgreSQL on Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "kubectl-pg", version, about = ABOUT, after_help = EXAMPLES)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags valid after any subcommand, as kubectl's own global flags are.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Path to the kubeconfig file to use (default: $KUBECONFIG, else ~/.kube/config;
    /// %USERPROFILE%\.kube\config on Windows)
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The name of the kubeconfig context to use
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// The name of the kubeconfig cluster to use
    #[arg(long, global = true, value_name = "NAME")]
    pub cluster: Option<String>,
    /// The name of the kubeconfig user to use
    #[arg(long, global = true, value_name = "NAME")]
    pub user: Option<String>,
    /// Namespace (default: the context's namespace, else "postgres")
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Username to impersonate for the operation
    #[arg(long = "as", global = true, value_name = "USER")]
    pub as_user: Option<String>,
    /// Group to impersonate for the operation; repeat for several groups
    #[arg(long = "as-group", global = true, value_name = "GROUP")]
    pub as_group: Vec<String>,
    /// How long to wait for a single API request (e.g. 30s, 1m; 0 waits forever)
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    pub request_timeout: Option<Duration>,
    /// When to colour the output (NO_COLOR in the environment means never, unless "always")
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,
}

impl GlobalArgs {
    /// The connection flags in the cluster layer's own terms.
    pub fn connect_options(&self) -> crate::cluster::access::ConnectOptions {
        crate::cluster::access::ConnectOptions {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            cluster: self.cluster.clone(),
            user: self.user.clone(),
            namespace: self.namespace.clone(),
            as_user: self.as_user.clone(),
            as_group: self.as_group.clone(),
            request_timeout: self.request_timeout,
        }
    }

    /// Empty flags, filled in by [`GlobalArgs::set`] while completing a partial command line.
    pub fn default_for_completion() -> Self {
        Self {
            kubeconfig: None,
            context: None,
            cluster: None,
            user: None,
            namespace: None,
            as_user: None,
            as_group: Vec::new(),
            request_timeout: None,
            color: ColorChoice::Never,
        }
    }

    /// Records a connection flag seen on a partial command line.
    pub fn set(&mut self, flag: &str, value: &str) {
        let value = value.to_string();
        match flag {
            "kubeconfig" => self.kubeconfig = Some(value.into()),
            "context" => self.context = Some(value),
            "cluster" => self.cluster = Some(value),
            "user" => self.user = Some(value),
            "n" | "namespace" => self.namespace = Some(value),
            "as" => self.as_user = Some(value),
            "as-group" => self.as_group.push(value),
            _ => {}
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Deploy PostgreSQL (StatefulSet, Services, Secret, PVC) and wait until it is healthy
    #[command(after_help = INSTALL_EXAMPLES)]
    Install(Box<InstallArgs>),
    /// Delete a release (the PVC and its data are kept unless --delete-data)
    #[command(after_help = UNINSTALL_EXAMPLES)]
    Uninstall(UninstallArgs),
    /// Show a release's phase, pods, storage, database and migrations, or list every release
    #[command(after_help = STATUS_EXAMPLES)]
    Status(StatusArgs),
    /// Apply, revert and inspect versioned SQL migrations
    #[command(after_help = MIGRATE_EXAMPLES)]
    Migrate(MigrateArgs),
    /// Open psql in the release's pod (kubectl exec), or a local psql with --local
    #[command(after_help = PSQL_EXAMPLES)]
    Psql(PsqlArgs),
    /// Dump a database (pg_dump) or the whole cluster (pg_dumpall, --all) to a file or stdout
    #[command(after_help = DUMP_EXAMPLES)]
    Dump(DumpArgs),
    /// Restore a dump (custom archive or SQL, from a file or stdin) in one transaction
    #[command(after_help = RESTORE_EXAMPLES)]
    Restore(RestoreArgs),
    /// Move a release to a higher PostgreSQL major, keeping the old data until --finalize
    #[command(after_help = UPGRADE_EXAMPLES)]
    Upgrade(UpgradeArgs),
    /// Print the connection string of a release's database, read from its Secret
    #[command(after_help = DSN_EXAMPLES)]
    Dsn(DsnArgs),
    /// Print the server container's log (current or previous), or follow it across restarts
    #[command(after_help = LOGS_EXAMPLES)]
    Logs(LogsArgs),
    /// Restart the release's pod as `kubectl rollout restart` does, and wait until healthy
    #[command(after_help = RESTART_EXAMPLES)]
    Restart(RestartArgs),
    /// Serve the release's database on a local port (one port-forward stream per connection)
    #[command(name = "port-forward", after_help = PORT_FORWARD_EXAMPLES)]
    PortForward(PortForwardArgs),
    /// Write a diagnostics bundle (.tar.gz): objects, events, logs, status, settings, versions
    #[command(after_help = REPORT_EXAMPLES)]
    Report(ReportArgs),
    /// Create, list and delete application users: roles that are not the superuser, each with its own Secret
    #[command(after_help = USER_EXAMPLES)]
    User(UserArgs),
    /// Set a new password in the database, then in its Secret (the superuser's, or a user's with --db-user)
    #[command(after_help = ROTATE_EXAMPLES)]
    RotatePassword(RotatePasswordArgs),
    /// Promote a replica of a highly available release to primary, and wait until it takes writes
    #[command(after_help = SWITCHOVER_EXAMPLES)]
    Switchover(SwitchoverArgs),
    /// Print the plugin's version, build, supported PostgreSQL majors and the cluster's version
    #[command(after_help = VERSION_EXAMPLES)]
    Version(VersionArgs),
    /// Print a shell completion script (bash, zsh, fish, powershell)
    #[command(after_help = COMPLETION_EXAMPLES)]
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

const LOGS_EXAMPLES: &str = "\
The log of the release's pod, container postgres. With -f it keeps following when the
container restarts or the pod is replaced, without repeating lines; it ends on Ctrl-C, or when
the release's StatefulSet is gone.

Examples:
  # The whole log of release postgres in namespace postgres
  kubectl pg logs -n postgres

  # The last 50 lines, then follow (across restarts), with timestamps
  kubectl pg logs -f --tail 50 --timestamps

  # The last ten minutes
  kubectl pg logs --since 10m

  # The log of the container that ran before the last restart (why did it crash?)
  kubectl pg logs --previous";

/// `kubectl pg logs`
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The release (default: the only one in the namespace, else "postgres")
    pub release: Option<String>,
    /// Keep printing new lines, following the server across restarts
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines
    #[arg(long, value_name = "N")]
    pub tail: Option<u32>,
    /// Only lines newer than this (e.g. 30s, 10m, 2h)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// The log of the previous container of the pod (before its last restart)
    #[arg(short = 'p', long, conflicts_with = "follow")]
    pub previous: bool,
    /// Start each line with its RFC3339 timestamp
    #[arg(long)]
    pub timestamps: bool,
}

const RESTART_EXAMPLES: &str = "\
A rollout restart: the StatefulSet's pod template gets the annotation
kubectl.kubernetes.io/restartedAt (as `kubectl rollout restart` sets it), the controller
replaces the pod, and the command waits, as install does, until the release is Healthy. The
data volume is kept. Exit 4 on timeout, 5 when the new pod fails.

A highly available release (a CloudNativePG Cluster kubectl-pg made) gets the same annotation
on its Cluster, as `kubectl cnpg restart` sets it: the operator restarts the replicas one by one,
switches over to one of them, then restarts the old primary. Writes pause only for the
switchover. A Cluster kubectl-pg did not make is not changed (exit 1).

Examples:
  # Restart release postgres in namespace postgres
  kubectl pg restart -n postgres

  # Restart, wait at most two minutes, print the DeploymentStatus document
  kubectl pg restart orders -n prod --timeout 2m -o json";

/// `kubectl pg restart`
#[derive(Debug, Args)]
pub struct RestartArgs {
    /// The release (default: the only one in the namespace, else "postgres")
    pub release: Option<String>,
    /// How long to wait for the restarted release to be healthy
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
    /// Output: the resulting status as table, json or yaml
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

const SWITCHOVER_EXAMPLES: &str = "\
A planned switchover of a release made with --instances N (a CloudNativePG Cluster): the
operator shuts the primary down cleanly, promotes the replica, and the other instances follow
it; the read-write Service moves with the primary. Without --to, the ready streaming replica
least behind is promoted. The command waits until the operator reports the new primary and a
healthy Cluster, then checks that the new primary takes writes through a tunnel. A Cluster
kubectl-pg did not make is never changed (exit 1). Exit 4 on timeout.

Examples:
  # Promote the best replica of release orders
  kubectl pg switchover orders -n prod

  # Promote a given instance, print the resulting status as JSON
  kubectl pg switchover orders -n prod --to orders-2 -o json";

/// `kubectl pg switchover`
#[derive(Debug, Args)]
pub struct SwitchoverArgs {
    /// The release (default: the only one in the namespace, else "postgres")
    pub release: Option<String>,
    /// The instance (pod) to promote (default: the ready streaming replica least behind)
    #[arg(long, value_name = "INSTANCE")]
    pub to: Option<String>,
    /// How long to wait for the new primary
    #[arg(long, default_value = "3m", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
    /// Output: the resulting status as table, json or yaml
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

const PORT_FORWARD_EXAMPLES: &str = "\
Listens on 127.0.0.1:5432 (or a free port when 5432 is taken) and opens one port-forward
stream to the release's ready pod for every connection: a dropped stream costs that
connection only, and each new connection finds the pod again, so the listener survives
restarts. The connection string and an `export DATABASE_URL=...` line go to stdout (password
masked unless --show-password); it serves until Ctrl-C (exit 0). Exit 8 when the release has
no ready pod, 1 when the port asked for is taken.

Examples:
  # Serve release postgres of namespace postgres on localhost
  kubectl pg port-forward -n postgres

  # A given port, the password shown, ready for eval in another shell
  kubectl pg port-forward orders 15432 --show-password

  # Listen on every interface (others on your network can connect)
  kubectl pg port-forward --address 0.0.0.0 6543

  # The DSN of application user app (made by kubectl pg user create app)
  kubectl pg port-forward --db-user app

  # The DatabaseConnection document of the local address, for a script
  kubectl pg port-forward -o json";

/// `kubectl pg port-forward`
#[derive(Debug, Args)]
pub struct PortForwardArgs {
    /// The release (default: the only one in the namespace, else "postgres")
    pub release: Option<String>,
    /// The local port, or ADDRESS:PORT (default: 5432 when free, else a free port)
    #[arg(value_name = "[ADDRESS:]PORT")]
    pub listen: Option<String>,
    /// The local address to listen on
    #[arg(long, value_name = "ADDRESS")]
    pub address: Option<String>,
    /// Print the password in the connection string
    #[arg(long)]
    pub show_password: bool,
    /// Print the local DatabaseConnection document as json or yaml instead of the two lines
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<OutputFormat>,
    /// Print this application user's DSN (`kubectl pg user create`), from its Secret
    /// R-user-NAME (`--user` is kubectl's: the kubeconfig user)
    #[arg(long, value_name = "NAME")]
    pub db_user: Option<String>,
}

const REPORT_EXAMPLES: &str = "\
The bundle holds the release's objects as YAML (Secret values redacted), the events about
them, the pod's logs (current and previous), the status document, pg_settings, a summary of
pg_stat_activity (no query texts), the migration status, and the plugin's, Kubernetes' and
PostgreSQL's versions. No password is written into it. The file is created with mode 0600.

Examples:
  # report-postgres-<UTC time>.tar.gz in the current directory
  kubectl pg report -n postgres

  # A file of your choice, then look inside
  kubectl pg report orders -n prod -f /tmp/orders.tar.gz
  tar -tzf /tmp/orders.tar.gz";

/// `kubectl pg report`
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The release (default: the only one in the namespace, else "postgres")
    pub release: Option<String>,
    /// Where to write the bundle (default: report-<release>-<UTC timestamp>.tar.gz)
    #[arg(short = 'f', long, value_name = "FILE")]
    pub file: Option<PathBuf>,
}

const VERSION_EXAMPLES: &str = "\
Examples:
  kubectl pg version
  kubectl pg version -o json";

const COMPLETION_EXAMPLES: &str = "\
`kubectl pg <TAB>` completion is provided by the kubectl_complete-pg executable installed
beside kubectl-pg (kubectl 1.26+ calls it). These scripts complete the kubectl-pg binary itself.

Examples:
  # bash
  source <(kubectl pg completion bash)
  # zsh
  kubectl pg completion zsh > \"${fpath[1]}/_kubectl-pg\"
  # fish
  kubectl pg completion fish > ~/.config/fish/completions/kubectl-pg.fish
  # PowerShell (add the line to $PROFILE to keep it)
  kubectl pg completion powershell | Out-String | Invoke-Expression";

/// `kubectl pg version`
#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Output format: table (text), json or yaml
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Do not contact the cluster
    #[arg(long)]
    pub client: bool,
}

const INSTALL_EXAMPLES: &str = "\
Profiles (each value overridable by its flag):
  dev   8Gi, default StorageClass, no requests/limits, ClusterIP service, generated password
  prod  20Gi, requests 500m/512Mi, limits 2000m/2Gi, LoadBalancer service, NetworkPolicy,
        --existing-secret required

Examples:
  # A development database in namespace postgres, LearnFlow schema applied
  kubectl pg install -n postgres --migrate

  # Print the manifests only (no cluster needed), ready for kubectl apply -f -
  kubectl pg install --dry-run -o yaml

  # Production values with credentials you manage (a LoadBalancer: TLS, CA in Secret orders-tls)
  kubectl pg install orders -n prod --profile prod --existing-secret orders-db --storage-class gp3

  # TLS inside the cluster too
  kubectl pg install -n postgres --tls

  # A NetworkPolicy: 5432 only from pods of namespace postgres and team-a, and app=web pods of apps
  kubectl pg install -n postgres --allow-from namespace=team-a --allow-from namespace=apps,pod=app=web

  # Remove the prod profile's NetworkPolicy from a running release
  kubectl pg install orders -n prod --upgrade --network-policy=false

  # A LoadBalancer only the office and the VPN may reach
  kubectl pg install orders -n prod --upgrade --load-balancer-source-ranges 203.0.113.0/24,10.8.0.0/16

  # Change resources of a running release and wait for the rollout
  kubectl pg install orders -n prod --upgrade --memory-limit 4Gi

  # Move a single instance, every row, to a 3-instance CloudNativePG Cluster; later keep it
  kubectl pg install orders -n prod --upgrade --instances 3
  kubectl pg install orders -n prod --finalize   # or --rollback: back to the single instance";

const UNINSTALL_EXAMPLES: &str = "\
Examples:
  # Remove release postgres; its PVC (the data) is kept for a later install
  kubectl pg uninstall -n postgres

  # Remove everything, data included, without a prompt
  kubectl pg uninstall -n postgres --delete-data --yes";

/// `kubectl pg install`
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The release name (default: postgres)
    pub release: Option<String>,
    /// Instances: 1 (default) is kubectl-pg's single instance; 2 to 10 make a highly available
    /// CloudNativePG Cluster (one primary, streaming replicas), which needs its operator
    #[arg(long, value_name = "N")]
    pub instances: Option<u32>,
    /// Values to start from (default: dev; with --upgrade, the deployed values)
    #[arg(long, value_enum)]
    pub profile: Option<Profile>,
    /// PostgreSQL major version (14-18, default 18), each pinned to an exact image tag
    #[arg(long, value_name = "MAJOR")]
    pub postgres_version: Option<u32>,
    /// Use this image instead of the pinned one
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// The database created at first start (default: learnflow)
    #[arg(long, value_name = "NAME")]
    pub database: Option<String>,
    /// The database superuser (default: postgres)
    #[arg(long, value_name = "NAME")]
    pub username: Option<String>,
    /// Size of the data volume (default: 8Gi for dev, 20Gi for prod)
    #[arg(long, value_name = "QUANTITY")]
    pub storage_size: Option<String>,
    /// StorageClass of the data volume (default: the cluster's default class)
    #[arg(long, value_name = "NAME")]
    pub storage_class: Option<String>,
    #[arg(long, value_name = "QUANTITY")]
    pub cpu_request: Option<String>,
    #[arg(long, value_name = "QUANTITY")]
    pub memory_request: Option<String>,
    #[arg(long, value_name = "QUANTITY")]
    pub cpu_limit: Option<String>,
    #[arg(long, value_name = "QUANTITY")]
    pub memory_limit: Option<String>,
    /// ClusterIP, NodePort or LoadBalancer (default: ClusterIP for dev, LoadBalancer for prod)
    #[arg(long, value_name = "TYPE")]
    pub service_type: Option<String>,
    /// Take the credentials from this Secret (keys username, password, database); never modified
    #[arg(long, value_name = "NAME")]
    pub existing_secret: Option<String>,
    /// The cluster's DNS domain, for the hosts in the Secret, dsn and status (default:
    /// cluster.local; remembered by the release)
    #[arg(long, value_name = "DOMAIN")]
    pub cluster_domain: Option<String>,
    /// The client CIDRs a LoadBalancer lets in (comma-separated; remembered); without them it
    /// is reachable from anywhere the load balancer is
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',')]
    pub load_balancer_source_ranges: Option<Vec<String>>,
    /// Guard the database with NetworkPolicy R: TCP 5432 only from pods of the release's
    /// namespace and the --allow-from peers (default: on for prod, off for dev; with --upgrade,
    /// as deployed); --network-policy=false removes it
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub network_policy: Option<bool>,
    /// Also admit this peer through the NetworkPolicy (turns it on): namespace=NAME,
    /// namespace=* (every namespace), narrowed by pod=KEY=VALUE (namespace=x,pod=app=web);
    /// repeat for more peers; with --upgrade, replaces the deployed ones (`none`: no peer)
    #[arg(long, value_name = "PEER")]
    pub allow_from: Option<Vec<String>>,
    /// Serve TLS (Secret R-tls; non-local connections need it) even on a ClusterIP Service;
    /// LoadBalancer and NodePort releases always do; remembered by the release
    #[arg(long)]
    pub tls: bool,
    /// Read the password from stdin (16 characters at least) instead of generating one
    #[arg(long)]
    pub password_stdin: bool,
    /// Apply the new spec to an existing release and wait for the rollout; with --instances N
    /// on a single instance, move it with every row to a CloudNativePG Cluster (writes blocked
    /// meanwhile; the single instance is kept until --finalize)
    #[arg(long)]
    pub upgrade: bool,
    /// After a move to a Cluster: delete the single instance (its StatefulSet and volume)
    #[arg(long, conflicts_with_all = ["rollback", "dry_run"])]
    pub finalize: bool,
    /// After a move to a Cluster, or one that stopped: return to the single instance and
    /// delete the Cluster the move made (writes made on it since are lost)
    #[arg(long, conflicts_with = "dry_run")]
    pub rollback: bool,
    /// Where a move to a Cluster writes its full dump (default:
    /// ./RELEASE-NAMESPACE-pgMAJOR-TIME.sql)
    #[arg(long, value_name = "FILE", requires = "upgrade")]
    pub backup_file: Option<PathBuf>,
    /// Do not ask for confirmation (a move, --finalize and --rollback need it off a terminal)
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Apply migrations once healthy (the built-in LearnFlow set, or --dir)
    #[arg(long)]
    pub migrate: bool,
    /// Migrations to apply with --migrate
    #[arg(long, value_name = "PATH", requires = "migrate")]
    pub dir: Option<PathBuf>,
    /// How long to wait for the release to become healthy
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
    /// Print the manifests and change nothing (no cluster needed)
    #[arg(long)]
    pub dry_run: bool,
    /// Show the password in the summary's connection string
    #[arg(long)]
    pub show_password: bool,
    /// Output: the summary as table, json or yaml; with --dry-run the manifests as yaml (default) or json
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<OutputFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Profile {
    Dev,
    Prod,
}

/// `kubectl pg uninstall`
#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// The release (default: the only one in the namespace, else "postgres")
    pub release: Option<String>,
    /// Also delete the PVC and the data in it
    #[arg(long)]
    pub delete_data: bool,
    /// Do not ask for confirmation
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// How long to wait for the objects to be gone
    #[arg(long, default_value = "2m", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
}

const STATUS_EXAMPLES: &str = "\
Phases: NotDeployed, Deploying, Ready (pod ready), Healthy (ready and a query answered), Failed.
Exit code 0 whenever the status could be read, whatever the phase.

Examples:
  # The release of namespace postgres in detail (every release as a table when there are several)
  kubectl pg status -n postgres

  # Every release in every namespace, with more columns
  kubectl pg status -A -o wide

  # The DeploymentStatus document for scripts
  kubectl pg status postgres -o json

  # Wait until the database answers (exit 4 on timeout, 5 when the release failed)
  kubectl pg status --wait --timeout 2m";

/// `kubectl pg status`
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The release (default: the only one in the namespace; a table when there are several)
    pub release: Option<String>,
    /// List the releases of every namespace
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Output format: table, wide, json or yaml
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Wait until the release is healthy (or ready)
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "healthy", value_name = "PHASE")]
    pub wait: Option<WaitFor>,
    /// How long --wait waits
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
    /// Count pending migrations against this directory instead of the built-in set
    #[arg(long, value_name = "PATH")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WaitFor {
    Ready,
    Healthy,
}

const PSQL_EXAMPLES: &str = "\
Examples:
  # An interactive psql as the release's user, in its database
  kubectl pg psql -n postgres

  # One query, or a script on stdin (no TTY is asked for when stdin is not a terminal)
  kubectl pg psql -- -c 'select version()'
  echo 'select 1' | kubectl pg psql

  # Your local psql through an in-process port-forward (password passed in the environment)
  kubectl pg psql --local";

/// `kubectl pg psql`
#[derive(Debug, Args)]
pub struct PsqlArgs {
    /// The release (default: the only one in the namespace, else "postgres")
    pub release: Option<String>,
    /// Run the local psql through a port-forward instead of psql in the pod
    #[arg(long)]
    pub local: bool,
    /// Connect to a ready replica of a highly available release instead of its primary
    #[arg(long)]
    pub replica: bool,
    /// Arguments for psql, after `--` (-U and -d given here win over the release's)
    #[arg(last = true, value_name = "PSQL_ARGS")]
    pub psql_args: Vec<String>,
}

const DUMP_EXAMPLES: &str = "\
pg_dump runs in the release's pod (the server's own version) as the release's user over the
local socket; its output streams to the file or to stdout, never held in memory. A file is
written under a temporary name (mode 0600) and renamed only once pg_dump exited 0: it is
complete or absent. Progress (bytes, rate) is shown on stderr when it is a terminal.

Examples:
  # The release's database as a custom-format archive
  kubectl pg dump -n postgres -f learnflow.dump

  # Plain SQL of another database, to stdout
  kubectl pg dump -d analytics --format plain > analytics.sql

  # Roles and every database (pg_dumpall, plain SQL)
  kubectl pg dump --all -f cluster.sql

  # A highly available release, read from a replica
  kubectl pg dump orders -n prod --replica -f orders.dump

  # Arguments after -- go to pg_dump; -o json describes the file written
  kubectl pg dump -f users.dump -o json -- --table users

  # Copy a database from one namespace (or context) to another
  kubectl pg dump -n a | kubectl pg restore -n b --clean --yes";

/// `kubectl pg dump`
#[derive(Debug, Args)]
pub struct DumpArgs {
    /// The release (default: the only one in the namespace, else "postgres")
    pub release: Option<String>,
    /// The database to dump (default: the release's database)
    #[arg(short = 'd', long, value_name = "DB", conflicts_with = "all")]
    pub database: Option<String>,
    /// Dump roles and every database with pg_dumpall (plain SQL)
    #[arg(long)]
    pub all: bool,
    /// Dump from a ready replica of a highly available release, sparing its primary
    #[arg(long)]
    pub replica: bool,
    /// Write the dump to this file (default: stdout, which must not be a terminal)
    #[arg(short = 'f', long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// custom (pg_restore archive, the default) or plain (SQL; the only one with --all)
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<crate::transfer::DumpFormat>,
    /// With -f: print the result as json or yaml (a DumpResult document)
    #[arg(short = 'o', long, value_enum, requires = "file")]
    pub output: Option<OutputFormat>,
    /// Arguments for pg_dump (or pg_dumpall), after `--`
    #[arg(last = true, value_name = "PG_DUMP_ARGS")]
    pub dump_args: Vec<String>,
}

const RESTORE_EXAMPLES: &str = "\
The input's first bytes decide: a custom-format archive (PGDMP) goes to
`pg_restore --single-transaction --exit-on-error`, SQL to `psql -v ON_ERROR_STOP=1
--single-transaction`, both in the release's pod over the local socket. A failure rolls the
whole restore back: the database is as it was. --clean (archives only) drops the archive's
objects first; it asks on a terminal and needs --yes off one.

Examples:
  # Restore an archive into the release's database
  kubectl pg restore -n postgres -f learnflow.dump

  # Replace what the archive holds, without a prompt
  kubectl pg restore -f learnflow.dump --clean --yes

  # SQL from stdin into another database
  kubectl pg restore -d analytics < analytics.sql

  # Copy between namespaces or clusters
  kubectl pg dump -n a | kubectl pg restore -n b --clean --yes
  kubectl pg dump --context prod | kubectl pg restore --context staging --clean --yes

  # Arguments after -- go to pg_restore (or psql)
  kubectl pg restore -f app.dump -- --no-owner

  # A script not written by pg_dump (no end marker), waiting at most 30s for a lock
  kubectl pg restore -f fixtures.sql --allow-partial --lock-timeout 30s";

/// `kubectl pg restore`
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The release (default: the only one in the namespace, else "postgres")
    pub release: Option<String>,
    /// The database to restore into (default: the release's database)
    #[arg(short = 'd', long, value_name = "DB")]
    pub database: Option<String>,
    /// Read the dump from this file (default: stdin, which must not be a terminal)
    #[arg(short = 'f', long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Drop the archive's objects before restoring them (pg_restore --clean --if-exists)
    #[arg(long)]
    pub clean: bool,
    /// Do not ask for confirmation (needed with --clean when not on a terminal)
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Commit a SQL script that does not end with pg_dump's end marker ("-- PostgreSQL
    /// database dump complete"); without it such a script is taken as cut short and rolled back
    #[arg(long)]
    pub allow_partial: bool,
    /// Give up (exit 1, rolled back) once the restore has waited this long for a lock another
    /// session holds (default: wait, naming the blocking session every few seconds)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub lock_timeout: Option<Duration>,
    /// Print the result as json or yaml (a RestoreResult document)
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<OutputFormat>,
    /// Arguments for pg_restore (or psql), after `--`
    #[arg(last = true, value_name = "PG_RESTORE_ARGS")]
    pub restore_args: Vec<String>,
}

const UPGRADE_EXAMPLES: &str = "\
A logical upgrade (official images carry one major each): writes are blocked, a full
pg_dumpall is saved locally, the StatefulSet switches to the new major's pinned image with its
data in a new directory on the same volume (the old one stays), the dump is restored, and row
counts per table, the migration history, extensions and roles are compared. Any difference rolls
back to the old major and data (exit 5). Until --finalize removes the old data directory,
--rollback returns to it.

On a CloudNativePG Cluster kubectl-pg made: the operator's in-place pg_upgrade, with writes
blocked by a reject rule in the Cluster's pg_hba, the same backup and the same comparison
before writes come back. --rollback returns to the old image until pg_upgrade has run;
--finalize allows writes on an upgrade whose verification failed.

Examples:
  # 16 -> 17, the backup in the current directory (its path is printed)
  kubectl pg upgrade -n postgres --postgres-version 17

  # Without a prompt, the backup where you want it, the result as JSON
  kubectl pg upgrade orders --postgres-version 18 --yes --backup-file /backups/orders.sql -o json

  # Keep the new major: delete the old data directory
  kubectl pg upgrade orders --finalize

  # Go back to the old major and its data (changes made since the upgrade are lost)
  kubectl pg upgrade orders --rollback --yes";

/// `kubectl pg upgrade`
#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// The release (default: the only one in the namespace, else "postgres")
    pub release: Option<String>,
    /// The major to move to (higher than the release's)
    #[arg(long, value_name = "MAJOR", required_unless_present_any = ["finalize", "rollback"], conflicts_with_all = ["finalize", "rollback"])]
    pub postgres_version: Option<u32>,
    /// Use this image of the new major instead of the pinned one (a mirror)
    #[arg(long, value_name = "IMAGE", requires = "postgres_version")]
    pub image: Option<String>,
    /// Where to write the full dump taken before any change (default: ./RELEASE-NAMESPACE-pgMAJOR-TIME.sql)
    #[arg(long, value_name = "FILE", requires = "postgres_version")]
    pub backup_file: Option<PathBuf>,
    /// Delete the old data directory: the upgrade can no longer be rolled back
    #[arg(long, conflicts_with = "rollback")]
    pub finalize: bool,
    /// Return to the old major and its data directory
    #[arg(long)]
    pub rollback: bool,
    /// Do not ask for confirmation (needed when not on a terminal)
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// How long each wait for the server may take
    #[arg(long, default_value = "10m", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
    /// Print the result as json or yaml (an UpgradeResult document)
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<OutputFormat>,
}

const DSN_EXAMPLES: &str = "\
Examples:
  # The in-cluster connection string of release postgres in namespace postgres
  kubectl pg dsn -n postgres

  # Export it for a script, or as PG* variables (sslmode included), or write a .env file
  export DATABASE_URL=$(kubectl pg dsn)
  eval \"$(kubectl pg dsn --format env)\"
  kubectl pg dsn --format dotenv > .env

  # A release that serves TLS, verified: the CA written to a file, sslmode=verify-full
  kubectl pg dsn --ca-file ./orders-ca.crt

  # The address a laptop can use (LoadBalancer or NodePort service); with TLS verified
  # against the release's CA (written to ~/.kube/kubectl-pg/, or --ca-file)
  kubectl pg dsn --external
  kubectl pg dsn --external --format jdbc --ca-file ./orders-ca.crt

  # An application user's connection string (kubectl pg user create app_rw)
  kubectl pg dsn --db-user app_rw --format jdbc

  # The DatabaseConnection document, password hidden
  kubectl pg dsn -o json --mask";

/// `kubectl pg dsn`
#[derive(Debug, Args)]
pub struct DsnArgs {
    /// The release (default: the only one in the namespace, else "postgres")
    pub release: Option<String>,
    /// How to write the connection
    #[arg(long, value_enum, default_value_t = DsnFormat::Uri)]
    pub format: DsnFormat,
    /// Give the address reachable from outside the cluster (LoadBalancer ingress or NodePort);
    /// for a release that serves TLS with sslmode=verify-full and its CA, written to a file
    #[arg(long)]
    pub external: bool,
    /// Write the CA of a release that serves TLS here, and give sslmode=verify-full with it
    /// (--external writes it to ~/.kube/kubectl-pg/NAMESPACE-RELEASE-ca.crt when not given)
    #[arg(long, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// The DSN of this application user (`kubectl pg user create`), from its Secret R-user-NAME
    /// (`--user` is kubectl's: the kubeconfig user)
    #[arg(long, value_name = "NAME")]
    pub db_user: Option<String>,
    /// For a CloudNativePG cluster: the read-write endpoint (rw, the primary), the read-only one
    /// (ro, the replicas) or any instance (r). A single instance has only rw.
    #[arg(long, value_enum, default_value_t = DsnEndpoint::Rw)]
    pub endpoint: DsnEndpoint,
    /// Hide the password
    #[arg(long)]
    pub mask: bool,
    /// Print the DatabaseConnection document as json or yaml
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<OutputFormat>,
}

/// `dsn --endpoint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DsnEndpoint {
    Rw,
    Ro,
    R,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DsnFormat {
    Uri,
    /// `export NAME='…'` lines for eval or `.`/source in any POSIX shell
    Env,
    /// A .env file that python-dotenv, node's dotenv and docker compose read back
    Dotenv,
    Json,
    Jdbc,
    Keyvalue,
    Pgpass,
}

const USER_EXAMPLES: &str = "\
An application user is a PostgreSQL role with LOGIN and no superuser, CREATEDB or CREATEROLE. It
may connect to its database and read and write the tables of schema public, including tables that
migrations create later (default privileges of the release's superuser); --readonly: SELECT only.
Never the migration history tables (kubectl_pg_migrations, kubectl_pg_migration_progress).
Its credentials are in Secret RELEASE-user-NAME (kubernetes.io/basic-auth: username, password,
database, host, port, uri); the password is sent to the server as a SCRAM verifier.

Examples:
  # A read-write user for the app, password generated, in the release's database
  kubectl pg user create app_rw -n postgres

  # A read-only user of release orders, with your own password
  printf '%s\\n' \"$PASSWORD\" | kubectl pg user create reporting --readonly --password-stdin --release orders

  # The users, their Secrets and roles (drift between the two is flagged)
  kubectl pg user list -n postgres

  # Its connection string, for the app
  kubectl pg dsn --db-user app_rw -n postgres

  # Remove the role (its objects go to the superuser) and its Secret
  kubectl pg user delete app_rw --yes";

/// `kubectl pg user`
#[derive(Debug, Args)]
pub struct UserArgs {
    #[command(flatten)]
    pub options: UserOptions,
    #[command(subcommand)]
    pub action: UserAction,
}

/// Options of every `user` subcommand.
#[derive(Debug, Clone, Args)]
pub struct UserOptions {
    /// The release (default: the only one in the namespace, else "postgres"); a flag here, as
    /// NAME is the user
    #[arg(long, global = true, value_name = "RELEASE")]
    pub release: Option<String>,
    /// Output format: table, json or yaml
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Subcommand)]
pub enum UserAction {
    /// Create a role and its Secret RELEASE-user-NAME
    #[command(
        after_help = "Examples:\n  kubectl pg user create app_rw\n  kubectl pg user create reporting --readonly --database analytics\n  printf '%s\\n' \"$PASSWORD\" | kubectl pg user create app_rw --password-stdin"
    )]
    Create {
        /// The role name: lower-case letters, digits and '_' (not pg_..., not the superuser)
        name: String,
        /// The database it may use (default: the release's)
        #[arg(long, value_name = "DB")]
        database: Option<String>,
        /// SELECT only
        #[arg(long)]
        readonly: bool,
        /// Read the password from stdin (16 characters at least; asked without echo on a terminal)
        #[arg(long)]
        password_stdin: bool,
    },
    /// List the users: their Secrets and roles
    #[command(
        after_help = "Examples:\n  kubectl pg user list\n  kubectl pg user list --release orders -o json"
    )]
    List,
    /// Drop a user's role (what it owns goes to the superuser) and delete its Secret
    #[command(
        after_help = "Examples:\n  kubectl pg user delete app_rw\n  kubectl pg user delete app_rw --release orders --yes"
    )]
    Delete {
        /// The user to delete
        name: String,
        /// Do not ask for confirmation (needed when not on a terminal)
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

const ROTATE_EXAMPLES: &str = "\
The new password is set in the database first (as a SCRAM verifier), then written to the Secret
(R-credentials, or R-user-NAME with --db-user); if the Secret cannot be written, the database
gets the old password back. Apps must reread the Secret: the Deployments and StatefulSets of
the namespace that use it are listed. A release installed with --existing-secret is refused:
that Secret is yours to rotate.

Examples:
  # The superuser's password of release postgres
  kubectl pg rotate-password -n postgres --yes

  # An application user's
  kubectl pg rotate-password --db-user app_rw --yes

  # The result as a document (never the password)
  kubectl pg rotate-password orders --db-user reporting --yes -o json";

/// `kubectl pg rotate-password`
#[derive(Debug, Args)]
pub struct RotatePasswordArgs {
    /// The release (default: the only one in the namespace, else "postgres")
    pub release: Option<String>,
    /// Rotate this application user's password instead of the superuser's (`--user` is
    /// kubectl's: the kubeconfig user)
    #[arg(long, value_name = "NAME")]
    pub db_user: Option<String>,
    /// Do not ask for confirmation (needed when not on a terminal)
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// How long a highly available release's operator may take to set the new password
    #[arg(long, default_value = "2m", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
    /// Print the result as json or yaml
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<OutputFormat>,
}

const MIGRATE_EXAMPLES: &str = "\
Without --dsn, migrate reaches the release's database through the cluster: a port-forward to its
pod (no local port), with the credentials of its Secret.

Migration files are NNN_name.up.sql / NNN_name.down.sql, or those of another tool, detected per
directory (or named by --format): golang-migrate ({version}_{title}.up.sql/.down.sql; an outer
BEGIN … COMMIT becomes the migration's transaction), dbmate (one file with -- migrate:up and
-- migrate:down sections, transaction:false), flyway (V1.1__desc.sql, U… undo files as down, R__…
repeatables re-applied when they change, after the versioned ones) and sqlx ({version}_{desc}.sql,
or .up.sql/.down.sql; -- no-transaction). In those formats a file with a statement that cannot run
in a transaction (CREATE INDEX CONCURRENTLY, VACUUM, ALTER SYSTEM, …) runs without one, statement
by statement. A database migrated by one of those tools is taken over with `migrate adopt --from TOOL`.

Each migration runs in one transaction
together with its history row (table kubectl_pg_migrations in the session's current schema, named
schema-qualified, so a file may change search_path). Each migration starts from a reset session:
what one sets (search_path, SET ROLE, temporary tables, prepared statements) never reaches the next.

A file whose first line is `-- kubectl-pg:no-transaction` runs statement by statement (CREATE INDEX
CONCURRENTLY). When statement k+1 fails, statements 1..k stay applied and recorded, and the
statements already applied are what the checksum protects: fix statement k+1 (or any later one) and
run `up` again: it resumes at statement k+1 of the fixed file, and the history records the file as
it is then. A change to an applied statement is refused (exit 7, naming it): restore it, or undo by
hand what statements 1..k did and run `migrate repair --version V --yes`, after which `up` runs the
file from its first statement.

Examples:
  # Apply every pending migration of the built-in LearnFlow set to release postgres in namespace postgres
  kubectl pg migrate up -n postgres

  # ... or to any database you can reach: DATABASE_URL (or --dsn) names it, and a password
  # it does not hold comes from PGPASSWORD, so it never appears in argv
  DATABASE_URL=postgresql://postgres@localhost:5432/learnflow kubectl pg migrate up

  # Show the plan only
  kubectl pg migrate up --dry-run --dir ./migrations

  # Revert the last two migrations, or everything
  kubectl pg migrate down --steps 2 --dsn \"$DATABASE_URL\"
  kubectl pg migrate down --to 0 --dsn \"$DATABASE_URL\"

  # Start a new migration in ./migrations
  kubectl pg migrate create add_user_tags --dir ./migrations

  # Take over a database that golang-migrate migrated, then apply what it had not
  kubectl pg migrate adopt --from golang-migrate --dir ./migrations --dsn \"$DATABASE_URL\"
  kubectl pg migrate up --dir ./migrations --dsn \"$DATABASE_URL\"";

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub options: MigrateOptions,
    #[command(subcommand)]
    pub action: MigrateAction,
}

/// Options shared by every `migrate` subcommand.
#[derive(Debug, Clone, Args)]
pub struct MigrateOptions {
    /// Directory of migration files (default: the LearnFlow set built into the binary)
    #[arg(long, global = true, value_name = "PATH")]
    pub dir: Option<PathBuf>,
    /// Connect to this database directly (postgresql://user:password@host:port/db?sslmode=...)
    #[arg(
        long,
        global = true,
        env = "DATABASE_URL",
        hide_env_values = true,
        value_name = "URL",
        value_parser = clap::builder::NonEmptyStringValueParser::new()
    )]
    pub dsn: Option<String>,
    /// Print the plan (versions, checksums, transaction mode) and change nothing
    #[arg(long, global = true)]
    pub dry_run: bool,
    /// How long to wait for the migration lock and for table locks inside a migration (0: forever)
    #[arg(long, global = true, value_name = "DURATION", default_value = "60s", value_parser = parse_pg_timeout)]
    pub lock_timeout: Duration,
    /// Abort any statement of a migration that runs longer than this
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_pg_timeout)]
    pub statement_timeout: Option<Duration>,
    /// Apply pending migrations older than the latest applied one instead of refusing
    #[arg(long, global = true)]
    pub allow_out_of_order: bool,
    /// Output format of status: table, json or yaml
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// The files' format, instead of detecting it: golang-migrate, dbmate, flyway, sqlx or kubectl-pg
    #[arg(long, global = true, value_name = "FORMAT", value_parser = parse_format)]
    pub format: Option<Format>,
}

#[derive(Debug, Subcommand)]
pub enum MigrateAction {
    /// Apply pending migrations (all, or up to --to)
    #[command(
        after_help = "Examples:\n  kubectl pg migrate up -n postgres\n  kubectl pg migrate up --to 003 --dsn \"$DATABASE_URL\"\n  kubectl pg migrate up --dir ./migrations --dry-run"
    )]
    Up {
        /// The release whose database to migrate when no --dsn is given (default: the only one in the namespace, else "postgres")
        #[arg(value_name = "RELEASE")]
        release: Option<String>,
        /// Stop after this version
        #[arg(long, value_name = "VERSION", value_parser = parse_up_version)]
        to: Option<String>,
    },
    /// Revert applied migrations (one by default)
    #[command(
        after_help = "Examples:\n  kubectl pg migrate down -n postgres\n  kubectl pg migrate down --steps 2\n  kubectl pg migrate down --to 0 --dry-run"
    )]
    Down {
        /// The release whose database to migrate when no --dsn is given (default: the only one in the namespace, else "postgres")
        #[arg(value_name = "RELEASE")]
        release: Option<String>,
        /// How many migrations to revert
        #[arg(long, value_name = "N", conflicts_with = "to", value_parser = clap::value_parser!(u64).range(1..))]
        steps: Option<u64>,
        /// Revert every migration above this version (0 reverts all)
        #[arg(long, value_name = "VERSION", value_parser = parse_version)]
        to: Option<String>,
    },
    /// Show applied, pending, changed and missing migrations
    #[command(
        after_help = "Examples:\n  kubectl pg migrate status -n postgres\n  kubectl pg migrate status --dsn \"$DATABASE_URL\" -o json"
    )]
    Status {
        /// The release whose database to migrate when no --dsn is given (default: the only one in the namespace, else "postgres")
        #[arg(value_name = "RELEASE")]
        release: Option<String>,
    },
    /// Write the next-numbered pair of empty migration files into --dir
    #[command(
        after_help = "Examples:\n  kubectl pg migrate create add_user_tags --dir ./migrations"
    )]
    Create {
        /// Name of the migration (letters, digits, '_' and '-')
        name: String,
    },
    /// Record an existing schema as applied up to VERSION, without running anything
    #[command(after_help = "Examples:\n  kubectl pg migrate baseline --version 006 -n postgres")]
    Baseline {
        /// The release whose database to migrate when no --dsn is given (default: the only one in the namespace, else "postgres")
        #[arg(value_name = "RELEASE")]
        release: Option<String>,
        #[arg(long, value_name = "VERSION", value_parser = parse_version)]
        version: String,
    },
    /// Accept the current file of an applied migration (re-record its checksum), or forget the progress of a partly applied no-transaction one whose applied statements changed
    #[command(
        after_help = "Examples:\n  kubectl pg migrate repair --version 003 --yes --dir ./migrations"
    )]
    Repair {
        /// The release whose database to migrate when no --dsn is given (default: the only one in the namespace, else "postgres")
        #[arg(value_name = "RELEASE")]
        release: Option<String>,
        #[arg(long, value_name = "VERSION", value_parser = parse_version)]
        version: String,
        /// Confirm the repair
        #[arg(long)]
        yes: bool,
    },
    /// Take over a database migrated by golang-migrate, dbmate, Flyway or sqlx: record every version it applied, in one transaction, leaving its table in place
    #[command(after_help = ADOPT_EXAMPLES)]
    Adopt {
        /// The release whose database to migrate when no --dsn is given (default: the only one in the namespace, else "postgres")
        #[arg(value_name = "RELEASE")]
        release: Option<String>,
        /// The tool that migrated the database: golang-migrate, dbmate, flyway or sqlx
        #[arg(long, value_name = "TOOL", value_parser = parse_tool)]
        from: Format,
    },
}

const ADOPT_EXAMPLES: &str = "\
adopt reads the tool's history table (golang-migrate's and dbmate's schema_migrations, Flyway's
flyway_schema_history, sqlx's _sqlx_migrations) and records each version it applied in
kubectl_pg_migrations with the checksum of today's file, without running anything. Flyway's CRC32
and sqlx's SHA-384 are compared with the files: a file changed since is reported. A dirty
golang-migrate version, a failed Flyway migration or a failed sqlx one is refused with its fix.
The tool's table is left in place, so the tool still works on the database.

Examples:
  kubectl pg migrate adopt --from golang-migrate --dir ./migrations --dsn \"$DATABASE_URL\"
  kubectl pg migrate adopt --from flyway --dir ./sql --dry-run -n postgres";

impl MigrateAction {
    /// The RELEASE argument, for the subcommands that take one.
    pub fn release(&self) -> Option<&str> {
        match self {
            MigrateAction::Up { release, .. }
            | MigrateAction::Down { release, .. }
            | MigrateAction::Status { release }
            | MigrateAction::Baseline { release, .. }
            | MigrateAction::Repair { release, .. }
            | MigrateAction::Adopt { release, .. } => release.as_deref(),
            MigrateAction::Create { .. } => None,
        }
    }
}

/// A migration version: digits, leading zeros allowed (`003`).
/// A migration version as the files write it: digits (`003`), or Flyway's parts (`1.1`, `2_1`);
/// the set's format turns it into its history key.
pub fn parse_version(s: &str) -> Result<String, String> {
    let valid = s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'_');
    if !valid {
        return Err(format!(
            "{s:?} is not a migration version (digits, like 003, or Flyway's 1.1)"
        ));
    }
    if !s.contains(['.', '_']) && s.parse::<i64>().is_err() {
        return Err(format!("{s:?} is too large for a migration version"));
    }
    Ok(s.to_string())
}

/// `--to` of `migrate up`: a version, which starts at 1 (`down --to 0` reverts everything).
pub fn parse_up_version(s: &str) -> Result<String, String> {
    let v = parse_version(s)?;
    if v.bytes().all(|b| b == b'0' || b == b'.' || b == b'_') {
        return Err("0 is no migration version: versions start at 1".into());
    }
    Ok(v)
}

/// `--format`: a migration file format.
pub fn parse_format(s: &str) -> Result<Format, String> {
    Format::from_name(s).ok_or_else(|| {
        format!(
            "{s:?} is not a migration format: {}",
            Format::ALL.map(Format::name).join(", ")
        )
    })
}

/// `adopt --from`: another tool's format.
pub fn parse_tool(s: &str) -> Result<Format, String> {
    match parse_format(s)? {
        Format::KubectlPg => Err("kubectl-pg's own history needs no adoption".into()),
        tool => Ok(tool),
    }
}

/// The longest duration any flag takes: longer ones overflow a deadline, and mean "forever"
/// anyway (0 says so where it is allowed).
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// Durations as kubectl writes them: `500ms`, `30s`, `5m`, `1h`, `1m30s`; a bare number is
/// seconds; at most a year.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = parse_any_duration(s)?;
    if d > MAX_DURATION {
        return Err(format!(
            "{s:?} is too long: at most 8784h (a year); 0 waits forever where a flag allows it"
        ));
    }
    Ok(d)
}

/// A duration PostgreSQL takes as a timeout setting: whole milliseconds up to 2147483647
/// (about 24.8 days), its int limit.
pub fn parse_pg_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_any_duration(s)?;
    if d.as_millis() > i32::MAX as u128 {
        return Err(format!(
            "{s:?} is more than PostgreSQL accepts: at most 2147483647ms (about 596h)"
        ));
    }
    Ok(d)
}

fn parse_any_duration(s: &str) -> Result<Duration, String> {
    let invalid =
        || format!("invalid duration {s:?}: use a number with a unit, like 500ms, 30s, 5m or 1h");
    let s = s.trim();
    if s.is_empty() {
        return Err(invalid());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(invalid());
        }
        let value: f64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(invalid()),
        };
        rest = &rest[unit_len..];
        total += Duration::try_from_secs_f64(value * factor).map_err(|_| invalid())?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_has_examples() {
        fn check(command: &clap::Command, path: &str) {
            for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
                let path = format!("{path} {}", sub.get_name());
                let help = sub
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                assert!(
                    help.contains("Examples:"),
                    "`{path} --help` has no Examples section"
                );
                check(sub, &path);
            }
        }
        check(&Cli::command(), "kubectl pg");
    }

    #[test]
    fn network_policy_flag_takes_an_optional_bool_and_allow_from_repeats() {
        use clap::Parser;
        let install =
            |args: &[&str]| match Cli::try_parse_from(["kubectl-pg", "install"].iter().chain(args))
                .map(|c| c.command)
            {
                Ok(Command::Install(a)) => Ok((a.network_policy, a.allow_from, a.release)),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e.kind()),
            };
        assert_eq!(install(&[]).unwrap(), (None, None, None));
        assert_eq!(install(&["--network-policy"]).unwrap().0, Some(true));
        assert_eq!(install(&["--network-policy=false"]).unwrap().0, Some(false));
        assert_eq!(
            install(&["--network-policy", "false"]).unwrap().0,
            Some(false)
        );
        let (_, allow, release) = install(&[
            "orders",
            "--allow-from",
            "namespace=a,pod=app=web",
            "--allow-from=namespace=*",
        ])
        .unwrap();
        assert_eq!(
            allow.unwrap(),
            ["namespace=a,pod=app=web", "namespace=*"],
            "a comma belongs to the peer"
        );
        assert_eq!(release.as_deref(), Some("orders"));
        // A release name after the flag is not taken for a value silently.
        assert!(install(&["--network-policy", "orders"]).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "s", "10x", "-1s", "1.5.2s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("003").as_deref(), Ok("003"));
        assert_eq!(parse_version("2_1").as_deref(), Ok("2_1"));
        assert!(parse_up_version("0.0").is_err());
        assert_eq!(parse_tool("flyway"), Ok(Format::Flyway));
        assert!(parse_tool("kubectl-pg").is_err());
        assert!(parse_version("v3").is_err());
        assert!(parse_version("99999999999999999999999").is_err());
    }

    #[test]
    fn global_flags_go_after_subcommands() {
        let cli = Cli::try_parse_from([
            "kubectl-pg",
            "migrate",
            "up",
            "-n",
            "db",
            "--context",
            "kind",
            "--to",
            "2",
        ])
        .unwrap();
        assert_eq!(cli.global.namespace.as_deref(), Some("db"));
        assert_eq!(cli.global.context.as_deref(), Some("kind"));
    }
}

/// Fuzzing: any argv must parse or be refused with clap's message, never panic; durations too.
#[cfg(test)]
mod fuzz {
    use clap::{CommandFactory, Parser};
    use proptest::prelude::*;

    use super::*;

    /// Every subcommand name and flag spelling the CLI knows, to reach deep parser states.
    fn vocabulary() -> Vec<String> {
        fn walk(command: &clap::Command, words: &mut Vec<String>) {
            words.push(command.get_name().to_string());
            for arg in command.get_arguments() {
                if let Some(long) = arg.get_long() {
                    words.push(format!("--{long}"));
                    words.push(format!("--{long}="));
                }
                if let Some(short) = arg.get_short() {
                    words.push(format!("-{short}"));
                }
                for value in arg.get_possible_values() {
                    words.push(value.get_name().to_string());
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, words);
            }
        }
        let mut words = Vec::new();
        walk(&Cli::command(), &mut words);
        words.extend(
            [
                "--",
                "-",
                "0",
                "1s",
                "99999999999h",
                "-1",
                "1e9",
                "postgres",
                "",
            ]
            .map(String::from),
        );
        words
    }

    fn word() -> impl Strategy<Value = String> {
        let known = vocabulary();
        prop_oneof![
            3 => prop::sample::select(known),
            1 => any::<String>(),
            1 => "[0-9]{1,20}(ms|s|m|h|d)?",
        ]
    }

    proptest! {
        #![proptest_config(crate::fuzz_config(3000))]

        #[test]
        fn any_argv_parses_or_is_refused(words in prop::collection::vec(word(), 0..8)) {
            let argv = std::iter::once("kubectl-pg".to_string()).chain(words);
            if let Err(e) = Cli::try_parse_from(argv) {
                let _ = e.render().to_string();
            }
        }

        #[test]
        fn durations_parse_or_are_refused(text in any::<String>()) {
            if let Ok(d) = parse_duration(&text) {
                prop_assert!(std::time::Instant::now().checked_add(d).is_some());
            }
            let _ = parse_pg_timeout(&text);
        }
    }
}
