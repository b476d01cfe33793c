//! `kubectl pg install`: validate, preflight, apply with server-side apply, wait (watches),
//! diagnose, health-check, migrate, summarise.

use std::io::IsTerminal;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, PostParams};
use serde_json::{json, Value};

use crate::cli::{GlobalArgs, InstallArgs, OutputFormat, Profile};
use crate::cluster::release::{self, Credentials};
use crate::cluster::tunnel::TunnelConnector;
use crate::cluster::{volume, Cluster};
use crate::database::Connector;
use crate::deployment::apply::{self, health_check, read_live, target, Checked, Live};
use crate::deployment::cnpg;
use crate::error::Error;
use crate::manifests::policy::{self as netpol, Plan};
use crate::manifests::render::{self, FIELD_MANAGER};
use crate::manifests::{self, InstallSpec, Requested};
use crate::migration::{Goal, MigrationSet, Runner, Settings};
use crate::output::{self, emit};

mod credentials;
mod ha;
mod policy;
mod preflight;
mod tls;
mod to_cluster;

use crate::database::password::{generate_password, prompt_password};
use credentials::{ensure_secret, read_password, reset_or_take_back, take_back};
use preflight::preflight;

/// The watched wait of `deployment::rollout` for this spec's release.
pub(crate) async fn wait_ready(
    cluster: &Cluster,
    spec: &InstallSpec,
    timeout: Duration,
    upgrade: bool,
) -> Result<(), Error> {
    crate::deployment::rollout::wait_ready(
        cluster,
        &spec.namespace,
        &spec.release,
        timeout,
        upgrade,
    )
    .await
}

pub async fn run(args: InstallArgs, global: &GlobalArgs) -> Result<(), Error> {
    // The end of a move to a Cluster: the release is read, not rendered from flags.
    if args.finalize || args.rollback {
        return to_cluster::settle(&args, global).await;
    }
    let deadline = std::time::Instant::now() + args.timeout;
    let password = if args.password_stdin {
        // On a terminal nothing is piped: ask, without echo, as psql's \password does.
        Some(if std::io::stdin().is_terminal() {
            prompt_password("the release's superuser", "install")?
        } else {
            read_password()?
        })
    } else {
        None
    };
    // --allow-from is checked before anything else: a bad peer is exit 1 with nothing read.
    let policy_req = policy_request(&args);
    netpol::check(&policy_req)?;
    // --instances above 1: a CloudNativePG Cluster; its flags are checked before any request.
    let instances = ha::wanted(&args)?;
    if let Some(n) = instances.filter(|_| args.dry_run) {
        let namespace = global
            .namespace
            .clone()
            .unwrap_or_else(|| crate::cluster::access::DEFAULT_NAMESPACE.into());
        let release = args.release.as_deref().unwrap_or(release::DEFAULT_RELEASE);
        let mut spec = InstallSpec::from_request(&requested(&args), release, &namespace)?;
        ha::owner(&args, &mut spec)?;
        return ha::dry_run(&args, &spec, n);
    }
    if args.dry_run {
        return dry_run(&args, global, password);
    }
    if let Some(n) = instances {
        let migrations = if args.migrate {
            let set = MigrationSet::load(args.dir.as_deref())?;
            set.check_transaction_modes()?;
            Some(set)
        } else {
            None
        };
        let cluster = Cluster::connect(&global.connect_options()).await?;
        let release = args.release.as_deref().unwrap_or(release::DEFAULT_RELEASE);
        let mut spec = InstallSpec::from_request(&requested(&args), release, &cluster.namespace)?;
        ha::owner(&args, &mut spec)?;
        let ns: Api<Namespace> = Api::all(cluster.client.clone());
        if ns
            .get_metadata_opt(&spec.namespace)
            .await
            .map_err(|e| cluster.error("get", "namespaces", e))?
            .is_none()
        {
            create_namespace(&cluster, &spec.namespace).await?;
            crate::note!("created namespace {}", spec.namespace);
        }
        return ha::run(&args, &cluster, &spec, n, migrations.as_ref()).await;
    }
    let cluster = Cluster::connect(&global.connect_options()).await?;
    let release = match &args.release {
        Some(r) => r.clone(),
        None => release::DEFAULT_RELEASE.to_string(),
    };
    let req = requested(&args);
    // An upgrade starts from what is deployed; everything else from the profile and flags.
    let live = if args.upgrade {
        read_live(&cluster, &release).await?
    } else {
        None
    };
    if let Some(from) = live
        .as_ref()
        .and_then(|l| crate::cluster::release::pending_upgrade(&l.sts))
    {
        return Err(Error::InvalidInput {
            message: format!(
                "release {release} is in a major upgrade from PostgreSQL {from}: finish it before changing its spec"
            ),
            hint: Some(format!(
                "kubectl pg upgrade {release} -n {ns} --finalize (keep the new major) or --rollback (return to {from})",
                ns = cluster.namespace
            )),
        });
    }
    let spec = match &live {
        Some(live) => InstallSpec::for_upgrade(&req, &live.spec)?,
        None => InstallSpec::from_request(&req, &release, &cluster.namespace)?,
    };
    // A Cluster of that name is not turned into a StatefulSet beside it: it is rerun (woken,
    // when uninstalled) with its instance count.
    if let Some(n) = cnpg::instances_of(&cluster, &spec.namespace, &spec.release).await? {
        return Err(Error::InvalidInput {
            message: format!(
                "release {} in namespace {} is a CloudNativePG Cluster of {} instances",
                spec.release, cluster.namespace, n
            ),
            hint: Some(format!(
                "rerun it as one: kubectl pg install {} -n {} --instances {}",
                spec.release, cluster.namespace, n
            )),
        });
    }
    let migrations = if args.migrate {
        Some(MigrationSet::load(args.dir.as_deref())?)
    } else {
        None
    };
    if let Some(set) = &migrations {
        set.check_transaction_modes()?;
    }
    // An upgrade starts from the live NetworkPolicy; a new release only from the flags.
    let mut found_policy = match &live {
        Some(_) => Some(policy::read(&cluster, &spec.namespace, &spec.release).await?),
        None => None,
    };
    let policy_plan = netpol::decide(
        &policy_req,
        req.prod,
        found_policy.as_ref().map(|f| &f.live),
    )?;
    let policy_permissions: Vec<crate::cluster::rbac::Permission> = netpol::verbs(&policy_plan)
        .iter()
        .map(|verb| ("networking.k8s.io", "networkpolicies", *verb))
        .collect();

    let existing = preflight(&cluster, &spec, &policy_permissions).await?;
    // --upgrade --storage-size grows the claim: shrinking (1) and a class that cannot expand
    // (6) are refused here, before anything is written.
    let growth = match (&live, &req.storage_size) {
        (Some(_), Some(size)) => {
            volume::plan(
                &cluster,
                &spec.namespace,
                &render::data_pvc_name(&spec),
                size,
            )
            .await?
        }
        _ => None,
    };
    if existing.statefulset && !args.upgrade {
        // The spec stays; only a lost Secret is repaired, so the data is not locked out.
        let secret = ensure_secret(&cluster, &spec, password).await?;
        let checked = if secret.created {
            crate::note!(
                "Secret {} was missing: created it with a new password",
                spec.secret_name()
            );
            if let Err(e) = wait_ready(&cluster, &spec, args.timeout, false).await {
                take_back(&cluster, &spec, &secret).await;
                return Err(e);
            }
            reset_or_take_back(&cluster, &spec, &secret).await?;
            let checked = health_check(&cluster, &spec, &secret.credentials).await?;
            crate::note!("the database's password was set to the new Secret's");
            checked
        } else {
            crate::note!(
                "release {} is already deployed in namespace {}: its spec is kept (use --upgrade to apply a new one)",
                spec.release, spec.namespace
            );
            // A rerun of an interrupted or failed install finishes what is missing: the wait
            // (a Failed release exits non-zero), the health check, pending migrations.
            wait_ready(&cluster, &spec, args.timeout, false).await?;
            health_check(&cluster, &spec, &secret.credentials).await?
        };
        if let Some(set) = &migrations {
            migrate(&cluster, &spec, &secret.credentials, set).await?;
        }
        return summary(&cluster, &spec, &args, checked).await;
    }
    if let Some(major) = existing
        .pvc_major
        .filter(|m| *m != spec.major && live.is_none())
    {
        // The server of another major would not read these files: 17 over 16 crash-loops, 18
        // over 17 starts a new, empty database beside them and reports Healthy.
        return Err(Error::InvalidInput {
            message: format!(
                "PVC {} holds PostgreSQL {major} data: installing {} over it would not use that data",
                render::data_pvc_name(&spec),
                spec.major
            ),
            hint: Some(format!(
                "install it as it was: kubectl pg install {} -n {} --postgres-version {major}; then move majors with kubectl pg upgrade",
                spec.release, spec.namespace
            )),
        });
    }
    if let Plan::Apply(_) = &policy_plan {
        if found_policy
            .as_ref()
            .is_none_or(|f| f.live == netpol::Live::Unknown)
        {
            found_policy = Some(policy::read(&cluster, &spec.namespace, &spec.release).await?);
        }
        if let Some(found) = &found_policy {
            policy::refuse_unusable(&cluster, &spec, found)?;
        }
    }
    if !existing.namespace {
        // A user's Secret cannot live in a namespace that does not exist yet: say so before
        // anything is created, rather than leave an empty namespace behind.
        if let Some(name) = &spec.existing_secret {
            return Err(Error::NotFound {
                message: format!(
                    "--existing-secret {name:?} not found: namespace {:?} does not exist",
                    spec.namespace
                ),
                hint: Some(format!(
                    "kubectl create namespace {ns} && kubectl create secret generic {name} -n {ns} --type kubernetes.io/basic-auth --from-literal=password=…",
                    ns = spec.namespace
                )),
            });
        }
        create_namespace(&cluster, &spec.namespace).await?;
        crate::note!("created namespace {}", spec.namespace);
    }
    // Read and decided before the first write; written after the credentials.
    let tls_plan = if spec.serves_tls() {
        Some(tls::plan(&cluster, &spec).await?)
    } else {
        None
    };
    let secret = ensure_secret(&cluster, &spec, password).await?;
    credentials::refresh_uri(&cluster, &spec).await?;
    if spec.existing_secret.is_some() && !existing.statefulset {
        credentials::refuse_reserved_user(&spec, &secret.credentials.username)?;
    }
    // A user's Secret may name the user; the pod then starts with that one.
    let mut spec = spec;
    if let Some(plan) = tls_plan {
        spec.tls_checksum = Some(tls::write(&cluster, &spec, plan).await?.checksum());
    }
    if spec.existing_secret.is_some() {
        spec.username = secret.credentials.username.clone();
    }
    // A new password for a volume that already holds a database: it must be set inside.
    let reset_password = secret.created && existing.pvc;

    let started = std::time::Instant::now();
    let templates = live
        .as_ref()
        .and_then(|l| manifests::live::claim_templates(&l.sts));
    let rendered_policy = match &policy_plan {
        Plan::Apply(peers) => Some(render::network_policy(&spec, peers)),
        _ => None,
    };
    apply(
        &cluster,
        &spec,
        templates.as_ref(),
        rendered_policy.as_ref(),
    )
    .await?;
    if let (Plan::Remove, Some(found)) = (&policy_plan, found_policy) {
        policy::remove(&cluster, &spec, found).await?;
    }
    if let Some(live) = &live {
        forced_rollback(&cluster, &spec, live).await?;
    }
    let mut grown_since = String::new();
    if let Some(g) = &growth {
        grown_since = volume::patch(&cluster, g, false).await?;
        crate::note!(
            "PVC {}: growing from {} to {} (StorageClass {})",
            g.claim,
            g.from,
            g.to,
            g.class
        );
    }
    crate::note!(
        "applied StatefulSet, Services{}{} (field manager {FIELD_MANAGER})",
        if secret.created { ", Secret" } else { "" },
        if rendered_policy.is_some() {
            ", NetworkPolicy"
        } else {
            ""
        }
    );
    if rendered_policy.is_some()
        && matches!(spec.service_type.as_str(), "LoadBalancer" | "NodePort")
    {
        crate::note!(
            "NetworkPolicy {}: the {} Service's clients arrive from addresses no selector matches, so port 5432 takes any address too (TLS, the password{} guard it)",
            spec.release,
            spec.service_type,
            if spec.source_ranges.is_empty() { "" } else { " and the source ranges" }
        );
    }
    if spec.service_type == "LoadBalancer" && spec.source_ranges.is_empty() {
        crate::note!(
            "warning: Service {} is a LoadBalancer without --load-balancer-source-ranges: the database is reachable from anywhere the load balancer is (it needs TLS and the password)",
            spec.release
        );
    }
    wait_ready(&cluster, &spec, args.timeout, existing.statefulset).await?;
    if let Some(g) = &growth {
        let capacity = volume::wait_grown(&cluster, g, &grown_since, deadline).await?;
        crate::note!("PVC {}: capacity {capacity}", g.claim);
    }
    crate::note!(
        "pod {} ready after {:.1}s",
        release::pod_name(&spec.release),
        started.elapsed().as_secs_f32()
    );
    // Recording the claim's major needs nothing from the database: it goes alongside.
    let record = async {
        if existing.pvc_major.is_none() {
            release::record_claim_major(
                &cluster,
                &spec.namespace,
                &render::data_pvc_name(&spec),
                spec.major,
            )
            .await;
        }
    };
    let prove = async {
        if reset_password {
            reset_or_take_back(&cluster, &spec, &secret).await?;
            crate::note!("the existing database's password was set to the new Secret's");
        }
        if live.is_some() {
            credentials::require_password_on_loopback(&cluster, &spec).await?;
        }
        if spec.serves_tls() {
            tls::require_tls_off_loopback(&cluster, &spec).await?;
        }
        health_check(&cluster, &spec, &secret.credentials).await
    };
    let ((), checked) = tokio::join!(record, prove);
    let checked = checked?;
    if live.is_some() {
        protect_history(&cluster, &spec, &secret.credentials).await?;
    }
    if let Some(set) = migrations {
        migrate(&cluster, &spec, &secret.credentials, &set).await?;
    }
    summary(&cluster, &spec, &args, checked).await
}

/// Prints the manifests; reads no cluster (the namespace comes from -n, else the default).
fn dry_run(args: &InstallArgs, global: &GlobalArgs, password: Option<String>) -> Result<(), Error> {
    let namespace = global
        .namespace
        .clone()
        .unwrap_or_else(|| crate::cluster::access::DEFAULT_NAMESPACE.into());
    let release = args
        .release
        .clone()
        .unwrap_or_else(|| release::DEFAULT_RELEASE.into());
    let mut spec = InstallSpec::from_request(&requested(args), &release, &namespace)?;
    let tls = if spec.serves_tls() {
        let names = crate::manifests::certs::sans(
            &spec.release,
            &spec.namespace,
            &spec.cluster_domain,
            &[],
        );
        let tls = crate::manifests::certs::issue(
            &spec.release,
            &spec.namespace,
            &names,
            None,
            crate::manifests::certs::today(),
        )?;
        spec.tls_checksum = Some(tls.checksum());
        Some(tls)
    } else {
        None
    };
    if spec.existing_secret.is_none() && password.is_none() {
        crate::note!("note: the Secret carries a freshly generated password; `kubectl pg install` never overwrites an existing one, `kubectl apply` would");
    }
    let password = password.unwrap_or_else(generate_password);
    let mut objects = render::all(&spec, Some(&password));
    if let Plan::Apply(peers) = netpol::decide(&policy_request(args), requested(args).prod, None)? {
        // Before the StatefulSet, so `kubectl apply -f -` starts the pod guarded.
        let at = objects.len() - 1;
        objects.insert(at, render::network_policy(&spec, &peers));
    }
    if let Some(tls) = &tls {
        objects.insert(
            0,
            crate::manifests::certs::secret(
                render::labels(&spec),
                &spec.release,
                &spec.namespace,
                tls,
            ),
        );
    }
    objects.insert(
        0,
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": spec.namespace } }),
    );
    let text = match args.output {
        Some(OutputFormat::Json) => {
            serde_json::to_string_pretty(
                &json!({ "apiVersion": "v1", "kind": "List", "items": objects }),
            )
            .map_err(|e| Error::invalid(e.to_string()))?
                + "\n"
        }
        _ => {
            let mut text = String::new();
            for object in &objects {
                text.push_str("---\n");
                text.push_str(
                    &serde_saphyr::to_string(object).map_err(|e| Error::invalid(e.to_string()))?,
                );
            }
            text
        }
    };
    emit(&text);
    Ok(())
}

async fn create_namespace(cluster: &Cluster, name: &str) -> Result<(), Error> {
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    let ns: Namespace = serde_json::from_value(json!({ "metadata": { "name": name } }))
        .map_err(|e| Error::invalid(e.to_string()))?;
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        // Created meanwhile by someone else: just as good.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(cluster.error("create", "namespaces", e)),
    }
}

/// `--network-policy` and `--allow-from` as given.
fn policy_request(args: &InstallArgs) -> netpol::Request {
    netpol::Request {
        enabled: args.network_policy,
        allow_from: args.allow_from.clone(),
    }
}

/// The flags as given: an unset flag is `None`, so an upgrade keeps the live value.
fn requested(args: &InstallArgs) -> Requested {
    Requested {
        prod: args.profile.map(|p| p == Profile::Prod),
        major: args.postgres_version,
        image: args.image.clone(),
        database: args.database.clone(),
        username: args.username.clone(),
        storage_size: args.storage_size.clone(),
        storage_class: args.storage_class.clone(),
        cpu_request: args.cpu_request.clone(),
        memory_request: args.memory_request.clone(),
        cpu_limit: args.cpu_limit.clone(),
        memory_limit: args.memory_limit.clone(),
        service_type: args.service_type.clone(),
        existing_secret: args.existing_secret.clone(),
        cluster_domain: args.cluster_domain.clone(),
        tls: args.tls.then_some(true),
        source_ranges: args.load_balancer_source_ranges.clone(),
    }
}

/// The StatefulSet docs' forced rollback: an OrderedReady StatefulSet never replaces a pod
/// that is not Running and Ready, so a pod stuck under the old template (a bad image, a
/// missing key, a crash loop) is deleted once the fixed template is applied.
async fn forced_rollback(cluster: &Cluster, spec: &InstallSpec, live: &Live) -> Result<(), Error> {
    let Some(pod) = &live.pod else { return Ok(()) };
    if release::is_ready(pod) {
        return Ok(());
    }
    let sets: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), &spec.namespace);
    let now = sets
        .get(&spec.release)
        .await
        .map_err(|e| cluster.error("get", "statefulsets", e))?;
    if now.metadata.generation == live.sts.metadata.generation {
        return Ok(()); // the template did not change: deleting the pod would fix nothing
    }
    crate::deployment::rollout::template_observed(
        cluster,
        &spec.namespace,
        &spec.release,
        now.metadata.generation,
        Duration::from_secs(30),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &spec.namespace);
    let name = release::pod_name(&spec.release);
    let params = release::delete_only(pod.metadata.uid.clone());
    match pods.delete(&name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return Ok(()),
        Err(e) => return Err(cluster.error("delete", "pods", e)),
    }
    crate::note!(
        "deleted pod {name}, which was not Ready under the old template: a StatefulSet never replaces such a pod itself (forced rollback)"
    );
    Ok(())
}

/// Server-side apply of the Services and the StatefulSet, with the release's NetworkPolicy:
/// first as a dry run of them all, so a change the server refuses changes nothing, then for
/// real, the policy first, so no pod of a new release runs unguarded. `claim_templates`, on an
/// upgrade, are the live ones, applied unchanged.
async fn apply(
    cluster: &Cluster,
    spec: &InstallSpec,
    claim_templates: Option<&Value>,
    network_policy: Option<&Value>,
) -> Result<(), Error> {
    let (headless, service, sts) = apply::rendered(spec, claim_templates, &[], None);
    for dry_run in [true, false] {
        if let Some(policy) = network_policy {
            policy::apply(cluster, spec, policy, dry_run).await?;
        }
        apply::apply_objects(cluster, spec, &headless, &service, &sts, dry_run).await?;
    }
    Ok(())
}

/// Older versions granted app users the migration history: an upgrade takes it back.
async fn protect_history(
    cluster: &Cluster,
    spec: &InstallSpec,
    credentials: &Credentials,
) -> Result<(), Error> {
    let client = TunnelConnector::new(cluster, &target(spec, credentials))
        .connect()
        .await?;
    crate::database::roles::run(
        &client,
        "cannot revoke app users' privileges on the migration history",
        &crate::database::roles::protect_history_sql(),
    )
    .await
}

async fn migrate(
    cluster: &Cluster,
    spec: &InstallSpec,
    credentials: &Credentials,
    set: &MigrationSet,
) -> Result<(), Error> {
    let connector = TunnelConnector::new(cluster, &target(spec, credentials));
    let count = apply_migrations(&connector, set).await?;
    crate::note!("{count} migration(s) applied");
    Ok(())
}

/// Applies every pending migration through `connector`, saying each one on stderr.
pub(crate) async fn apply_migrations(
    connector: &TunnelConnector,
    set: &MigrationSet,
) -> Result<usize, Error> {
    let settings = Settings {
        lock_timeout: Duration::from_secs(60),
        statement_timeout: None,
        allow_out_of_order: false,
        applied_by: " via kubectl pg install".into(),
    };
    let mut runner = Runner::new(connector, set, &settings);
    runner
        .run(Goal::Up { to: None }, &mut |event| {
            if let crate::migration::Event::Applied { id, millis } = event {
                crate::note!("applied {id} ({millis} ms)");
            }
        })
        .await
}

/// Prints the release's status: from the health check's observation when nothing changed
/// since (install after Ready does its work once), else read again (migrations ran).
async fn summary(
    cluster: &Cluster,
    spec: &InstallSpec,
    args: &InstallArgs,
    checked: Checked,
) -> Result<(), Error> {
    let set = MigrationSet::load(args.dir.as_deref())?;
    let (mut status, _) = if args.migrate {
        crate::deployment::status::read(cluster, &spec.namespace, &spec.release, &set).await?
    } else {
        crate::deployment::status::assemble(
            &checked.observed,
            &checked.check,
            &crate::deployment::probe::VolumeFacts::default(),
            &set,
        )
    };
    if args.show_password {
        let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &spec.namespace);
        if let Ok(secret) = secrets.get(&spec.secret_name()).await {
            if let Ok(c) = Credentials::from_secret(&secret) {
                let host =
                    release::service_host(&spec.release, &spec.namespace, &spec.cluster_domain);
                status.connection_string = Some(render::credentials_uri(
                    &host,
                    &c.database,
                    &c.username,
                    &c.password,
                    spec.serves_tls(),
                ));
            }
        }
    }
    let format = args.output.unwrap_or(OutputFormat::Table);
    if output::document(format, &status)?.is_none() && std::io::stderr().is_terminal() {
        crate::note!();
    }
    crate::commands::view::render_one(&status, format)
}
