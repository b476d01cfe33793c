//! `kubectl pg install`: validate, preflight, apply with server-side apply, wait (watches),
//! diagnose, health-check, migrate, summarise.

use std::io::{IsTerminal, Read};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{
    Namespace, PersistentVolumeClaim, Pod, ResourceQuota, Secret, Service,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, LogParams, Patch, PatchParams, PostParams};
use owo_colors::Stream;
use rand::Rng;
use serde_json::{json, Value};

use crate::cli::{GlobalArgs, InstallArgs, OutputFormat};
use crate::cluster::release::{self, Credentials};
use crate::cluster::tunnel::TunnelConnector;
use crate::cluster::{exec, Cluster};
use crate::deployment::probe;
use crate::deployment::{assess, observe, Phase};
use crate::error::Error;
use crate::manifests::render::{self, FIELD_MANAGER};
use crate::manifests::spec::quantity_value;
use crate::manifests::InstallSpec;
use crate::migration::{Goal, MigrationSet, Runner, Settings};
use crate::output::{self, emit, paint, Tone};

/// Length of generated passwords.
pub const PASSWORD_LENGTH: usize = 32;
const HEALTH_TIMEOUT: Duration = Duration::from_secs(15);

pub async fn run(args: InstallArgs, global: &GlobalArgs) -> Result<(), Error> {
    let password = if args.password_stdin {
        Some(read_password()?)
    } else {
        None
    };
    if args.dry_run {
        return dry_run(&args, global, password);
    }
    let cluster = Cluster::connect(global).await?;
    let release = match &args.release {
        Some(r) => r.clone(),
        None => release::DEFAULT_RELEASE.to_string(),
    };
    let spec = InstallSpec::from_args(&args, &release, &cluster.namespace)?;
    let migrations = if args.migrate {
        Some(MigrationSet::load(args.dir.as_deref())?)
    } else {
        None
    };
    if let Some(set) = &migrations {
        set.check_transaction_modes()?;
    }

    let existing = preflight(&cluster, &spec).await?;
    if existing.statefulset && !args.upgrade {
        eprintln!(
            "release {} is already deployed in namespace {}: nothing changed (use --upgrade to apply a new spec)",
            spec.release, spec.namespace
        );
        return summary(&cluster, &spec, &args).await;
    }
    if !existing.namespace {
        create_namespace(&cluster, &spec.namespace).await?;
        eprintln!("created namespace {}", spec.namespace);
    }
    let secret = ensure_secret(&cluster, &spec, password).await?;
    // A new password for a volume that already holds a database: it must be set inside.
    let reset_password = secret.created && existing.pvc;

    let started = std::time::Instant::now();
    apply(&cluster, &spec).await?;
    eprintln!(
        "applied StatefulSet, Services{} (field manager {FIELD_MANAGER})",
        if secret.created { ", Secret" } else { "" }
    );
    wait_ready(&cluster, &spec, args.timeout, existing.statefulset).await?;
    eprintln!(
        "pod {} ready after {:.1}s",
        release::pod_name(&spec.release),
        started.elapsed().as_secs_f32()
    );
    if reset_password {
        set_password_in_database(&cluster, &spec, &secret.credentials).await?;
        eprintln!("the existing database's password was set to the new Secret's");
    }
    health_check(&cluster, &spec, &secret.credentials).await?;
    if let Some(set) = migrations {
        migrate(&cluster, &spec, &secret.credentials, &set).await?;
    }
    summary(&cluster, &spec, &args).await
}

fn read_password() -> Result<String, Error> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|source| Error::Io {
            context: "cannot read the password from stdin".into(),
            source,
        })?;
    let password = text.trim_end_matches(['\n', '\r']).to_string();
    if password.chars().count() < 16 {
        return Err(Error::InvalidInput {
            message: format!(
                "the password from stdin has {} characters: 16 at least",
                password.chars().count()
            ),
            hint: None,
        });
    }
    Ok(password)
}

/// 32 characters from the OS-seeded CSPRNG, letters and digits (safe in URIs and shells).
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..PASSWORD_LENGTH)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
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
    let spec = InstallSpec::from_args(args, &release, &namespace)?;
    if spec.existing_secret.is_none() && password.is_none() {
        eprintln!("note: the Secret carries a freshly generated password; `kubectl pg install` never overwrites an existing one, `kubectl apply` would");
    }
    let password = password.unwrap_or_else(generate_password);
    let mut objects = render::all(&spec, Some(&password));
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

/// What already exists.
struct Existing {
    namespace: bool,
    statefulset: bool,
    pvc: bool,
}

/// Checks, all at once, what exists, the StorageClass, quotas and permissions; exit 6 with
/// the missing piece named.
async fn preflight(cluster: &Cluster, spec: &InstallSpec) -> Result<Existing, Error> {
    let client = &cluster.client;
    let ns = &spec.namespace;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let classes: Api<StorageClass> = Api::all(client.clone());
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), ns);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let pvc_name = render::data_pvc_name(spec);
    let all = ListParams::default();
    let (namespace, class_list, quota_list, sts, pvc, access) = tokio::join!(
        namespaces.get_opt(ns),
        classes.list(&all),
        quotas.list(&all),
        sets.get_opt(&spec.release),
        pvcs.get_opt(&pvc_name),
        permissions(cluster, ns),
    );
    let namespace = namespace.map_err(|e| cluster.error("get", "namespaces", e))?;
    let sts = sts.map_err(|e| cluster.error("get", "statefulsets", e))?;
    let pvc = pvc.map_err(|e| cluster.error("get", "persistentvolumeclaims", e))?;
    access?;
    let classes = class_list
        .map_err(|e| cluster.error("list", "storageclasses", e))?
        .items;
    let pvc_bound = pvc
        .as_ref()
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.phase.as_deref())
        == Some("Bound");
    // An existing bound PVC is reused: it needs no class.
    if !pvc_bound {
        check_storage_class(&classes, spec)?;
    }
    // A namespace that does not exist yet has no quota.
    if namespace.is_some() {
        let quotas = quota_list
            .map_err(|e| cluster.error("list", "resourcequotas", e))?
            .items;
        check_quotas(&quotas, spec, pvc.is_some())?;
    }
    Ok(Existing {
        namespace: namespace.is_some(),
        statefulset: sts.is_some(),
        pvc: pvc.is_some(),
    })
}

fn check_storage_class(classes: &[StorageClass], spec: &InstallSpec) -> Result<(), Error> {
    let names: Vec<&str> = classes
        .iter()
        .filter_map(|c| c.metadata.name.as_deref())
        .collect();
    let resources = |message: String, hint: String| Error::Deployment {
        message,
        hints: vec![hint],
        code: 6,
    };
    match &spec.storage_class {
        Some(class) if !names.contains(&class.as_str()) => Err(resources(
            format!("StorageClass {class:?} does not exist"),
            if names.is_empty() {
                "the cluster has no StorageClass: install a provisioner (kind and k3d ship one)"
                    .into()
            } else {
                format!("existing classes: {}", names.join(", "))
            },
        )),
        Some(_) => Ok(()),
        None => {
            let default = classes.iter().any(|c| {
                c.metadata.annotations.as_ref().is_some_and(|a| {
                    a.get("storageclass.kubernetes.io/is-default-class")
                        .map(String::as_str)
                        == Some("true")
                })
            });
            if default {
                Ok(())
            } else if names.is_empty() {
                Err(resources(
                    "insufficient storage: the cluster has no StorageClass to provision the data volume".into(),
                    "install a storage provisioner, or create the PersistentVolume by hand".into(),
                ))
            } else {
                Err(resources(
                    "insufficient storage: no default StorageClass, and --storage-class was not given".into(),
                    format!("pick one with --storage-class ({})", names.join(", ")),
                ))
            }
        }
    }
}

/// Fails when a ResourceQuota leaves no room for what the release requests.
fn check_quotas(
    quotas: &[ResourceQuota],
    spec: &InstallSpec,
    pvc_exists: bool,
) -> Result<(), Error> {
    let mut wanted: Vec<(&str, f64, String)> = Vec::new();
    let mut want = |key: &'static str, value: &Option<String>| {
        if let Some(v) = value
            .as_ref()
            .and_then(|v| quantity_value(v).map(|q| (q, v.clone())))
        {
            wanted.push((key, v.0, v.1));
        }
    };
    want("requests.cpu", &spec.cpu_request);
    want("requests.memory", &spec.memory_request);
    want("limits.cpu", &spec.cpu_limit);
    want("limits.memory", &spec.memory_limit);
    if !pvc_exists {
        want("requests.storage", &Some(spec.storage_size.clone()));
        wanted.push(("persistentvolumeclaims", 1.0, "1".into()));
    }
    wanted.push(("pods", 1.0, "1".into()));
    for quota in quotas {
        let name = quota.metadata.name.clone().unwrap_or_default();
        let status = quota.status.clone().unwrap_or_default();
        let hard = status
            .hard
            .or_else(|| quota.spec.as_ref().and_then(|s| s.hard.clone()))
            .unwrap_or_default();
        let used = status.used.unwrap_or_default();
        for (key, amount, text) in &wanted {
            let Some(limit) = hard.get(*key).and_then(|q| quantity_value(&q.0)) else {
                continue;
            };
            let in_use = used
                .get(*key)
                .and_then(|q| quantity_value(&q.0))
                .unwrap_or(0.0);
            if in_use + amount > limit + 1e-9 {
                return Err(Error::Deployment {
                    message: format!(
                        "insufficient resources: ResourceQuota {name:?} allows {key} {}, {} in use, the release needs {text}",
                        hard[*key].0,
                        used.get(*key).map_or("0".to_string(), |q| q.0.clone()),
                    ),
                    hints: vec!["raise the quota, or lower the release's requests (--cpu-request, --memory-request, --storage-size)".into()],
                    code: 6,
                });
            }
        }
    }
    Ok(())
}

/// SelfSubjectAccessReviews for everything install creates, all at once.
async fn permissions(cluster: &Cluster, namespace: &str) -> Result<(), Error> {
    let reviews: Api<SelfSubjectAccessReview> = Api::all(cluster.client.clone());
    let checks = [
        ("apps", "statefulsets", "patch"),
        ("", "services", "patch"),
        ("", "secrets", "create"),
        ("", "pods", "list"),
        ("", "pods/portforward", "create"),
    ];
    let asks = checks.iter().map(|(group, resource, verb)| {
        let (resource, subresource) = resource
            .split_once('/')
            .map_or((*resource, None), |(r, s)| (r, Some(s)));
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(group.to_string()),
                    resource: Some(resource.to_string()),
                    subresource: subresource.map(str::to_string),
                    verb: Some(verb.to_string()),
                    namespace: Some(namespace.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviews = reviews.clone();
        async move { reviews.create(&PostParams::default(), &review).await }
    });
    let answers = futures_util::future::join_all(asks).await;
    for ((_, resource, verb), answer) in checks.iter().zip(answers) {
        let review = answer.map_err(|e| cluster.error("create", "selfsubjectaccessreviews", e))?;
        if !review.status.is_some_and(|s| s.allowed) {
            return Err(Error::Forbidden {
                verb: if *verb == "list" {
                    "create".into()
                } else {
                    verb.to_string()
                },
                resource: resource.to_string(),
                namespace: namespace.to_string(),
                user: cluster.user.clone(),
                context: cluster.context.clone(),
            });
        }
    }
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

struct SecretOutcome {
    credentials: Credentials,
    created: bool,
}

/// Our Secret: created when absent, never overwritten. A user's Secret: checked, never touched.
async fn ensure_secret(
    cluster: &Cluster,
    spec: &InstallSpec,
    password: Option<String>,
) -> Result<SecretOutcome, Error> {
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &spec.namespace);
    let name = spec.secret_name();
    if let Some(existing) = secrets
        .get_opt(&name)
        .await
        .map_err(|e| cluster.error("get", "secrets", e))?
    {
        if password.is_some() {
            eprintln!("note: Secret {name} exists; its password is kept and the one from stdin is ignored");
        }
        return Ok(SecretOutcome {
            credentials: Credentials::from_secret(&existing)?,
            created: false,
        });
    }
    if spec.existing_secret.is_some() {
        return Err(Error::NotFound {
            message: format!("--existing-secret {name:?} not found in namespace {:?}", spec.namespace),
            hint: Some(format!(
                "kubectl create secret generic {name} -n {} --from-literal=username={} --from-literal=password=… --from-literal=database={}",
                spec.namespace, spec.username, spec.database
            )),
        });
    }
    let password = password.unwrap_or_else(generate_password);
    let object: Secret = serde_json::from_value(render::secret(spec, &password))
        .map_err(|e| Error::invalid(e.to_string()))?;
    match secrets.create(&PostParams::default(), &object).await {
        Ok(_) => {}
        // Someone else created it meanwhile: theirs wins, as it would have on a rerun.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let theirs = secrets
                .get(&name)
                .await
                .map_err(|e| cluster.error("get", "secrets", e))?;
            return Ok(SecretOutcome {
                credentials: Credentials::from_secret(&theirs)?,
                created: false,
            });
        }
        Err(e) => return Err(cluster.error("create", "secrets", e)),
    }
    Ok(SecretOutcome {
        credentials: Credentials {
            username: spec.username.clone(),
            password,
            database: spec.database.clone(),
            host: None,
            port: None,
        },
        created: true,
    })
}

/// Server-side apply of the Services and the StatefulSet, at once.
async fn apply(cluster: &Cluster, spec: &InstallSpec) -> Result<(), Error> {
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), &spec.namespace);
    let sets: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), &spec.namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let headless = render::headless_service(spec);
    let service = render::service(spec);
    let sts = render::statefulset(spec);
    let name = |v: &Value| {
        v["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let (headless_name, service_name) = (name(&headless), name(&service));
    let (headless, service, sts) = (
        Patch::Apply(&headless),
        Patch::Apply(&service),
        Patch::Apply(&sts),
    );
    let (a, b, c) = tokio::join!(
        services.patch(&headless_name, &params, &headless),
        services.patch(&service_name, &params, &service),
        sets.patch(&spec.release, &params, &sts),
    );
    a.map_err(|e| apply_error(cluster, "services", e))?;
    b.map_err(|e| apply_error(cluster, "services", e))?;
    c.map_err(|e| apply_error(cluster, "statefulsets", e))?;
    Ok(())
}

fn apply_error(cluster: &Cluster, resource: &str, e: kube::Error) -> Error {
    match &e {
        kube::Error::Api(s) if s.code == 403 && s.message.contains("exceeded quota") => {
            Error::Deployment {
                message: format!("insufficient resources: {}", s.message),
                hints: vec![
                    "raise the namespace's ResourceQuota or lower the release's requests".into(),
                ],
                code: 6,
            }
        }
        _ => cluster.error("patch", resource, e),
    }
}

/// Waits, driven by watches, until the pod is ready with the current spec; diagnoses failures.
async fn wait_ready(
    cluster: &Cluster,
    spec: &InstallSpec,
    timeout: Duration,
    upgrade: bool,
) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    let ns = &spec.namespace;
    let selector = release::selector(&spec.release);
    let mut changes = crate::deployment::changes::changes(cluster, ns, &spec.release);
    let mut last = String::new();
    loop {
        let observed = observe::observe(cluster, ns, &spec.release).await?;
        let assessment = assess(&observed, Timestamp::now(), None);
        let rolled_out = !upgrade || rollout_done(observed.statefulset.as_ref());
        if matches!(assessment.phase, Phase::Ready | Phase::Healthy) && rolled_out {
            return Ok(());
        }
        if let Some(failure) = assessment.failure() {
            let mut hints: Vec<String> = failure.hint.iter().cloned().collect();
            if failure.reason == "CrashLoopBackOff" {
                hints.extend(last_log_lines(cluster, ns, &release::pod_name(&spec.release)).await);
            }
            return Err(Error::Deployment {
                message: failure.message.clone(),
                hints,
                code: failure.exit_code,
            });
        }
        let line = progress_line(&observed, &assessment);
        if line != last {
            eprintln!("{}", paint(&line, Tone::Dim, Stream::Stderr));
            last = line;
        }
        tokio::select! {
            _ = changes.next() => {}
            _ = tokio::time::sleep_until(deadline) => {
                return Err(Error::Deployment {
                    message: format!("timed out after {}s: {}", timeout.as_secs(), progress_line(&observed, &assessment)),
                    hints: vec![format!("see what it waits for: kubectl describe pod -n {ns} -l {selector}")],
                    code: 4,
                });
            }
        }
    }
}

fn rollout_done(sts: Option<&StatefulSet>) -> bool {
    let Some(sts) = sts else { return false };
    let generation = sts.metadata.generation.unwrap_or_default();
    sts.status.as_ref().is_some_and(|s| {
        s.observed_generation.unwrap_or_default() >= generation
            && s.ready_replicas.unwrap_or_default() >= 1
            && s.update_revision.is_some()
            && s.current_revision == s.update_revision
    })
}

/// `phase Deploying: pod pg-0 is Pending (ContainerCreating), PVC Bound, latest event: …`
fn progress_line(
    observed: &observe::Observed,
    assessment: &crate::deployment::assess::Assessment,
) -> String {
    let pod = observed
        .pod()
        .map_or_else(|| "no pod yet".into(), release::describe_pod);
    let pvc = observed
        .pvc
        .as_ref()
        .and_then(|p| p.status.as_ref()?.phase.clone())
        .unwrap_or_else(|| "not created".into());
    let event = observed
        .events
        .last()
        .map(|e| {
            format!(
                ", latest event: {} {}",
                e.reason.clone().unwrap_or_default(),
                e.message.clone().unwrap_or_default()
            )
        })
        .unwrap_or_default();
    format!(
        "phase {}: {pod}, PVC {pvc}{event}",
        assessment.phase.as_str()
    )
}

async fn last_log_lines(cluster: &Cluster, namespace: &str, pod: &str) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
    let params = LogParams {
        container: Some(crate::psql::CONTAINER.into()),
        tail_lines: Some(10),
        previous: true,
        ..LogParams::default()
    };
    match pods.logs(pod, &params).await {
        Ok(text) => text.lines().map(|l| format!("log: {l}")).collect(),
        Err(_) => Vec::new(),
    }
}

/// Sets the Secret's password on the role, through exec in the pod over the local socket
/// (trusted there), the statement on stdin so it never shows on a command line.
async fn set_password_in_database(
    cluster: &Cluster,
    spec: &InstallSpec,
    credentials: &Credentials,
) -> Result<(), Error> {
    let quote_ident = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let sql = format!(
        "ALTER ROLE {} PASSWORD {};\n",
        quote_ident(&credentials.username),
        crate::migration::history::literal(&credentials.password)
    );
    let output = exec::run(
        cluster,
        &spec.namespace,
        &release::pod_name(&spec.release),
        crate::psql::CONTAINER,
        &[
            "psql",
            "-v",
            "ON_ERROR_STOP=1",
            "-X",
            "-q",
            "-U",
            &credentials.username,
            "-d",
            "postgres",
        ],
        &sql,
    )
    .await?;
    if !output.success {
        return Err(Error::Deployment {
            message: format!(
                "could not set the new password in the existing database: {}",
                output
                    .message
                    .unwrap_or_else(|| output.stderr.trim().to_string())
            ),
            hints: vec!["set it by hand: kubectl pg psql, then ALTER ROLE … PASSWORD …".into()],
            code: 5,
        });
    }
    Ok(())
}

/// A real query through a port-forward: exit 8 when no session opens, 5 when it cannot answer.
async fn health_check(
    cluster: &Cluster,
    spec: &InstallSpec,
    credentials: &Credentials,
) -> Result<(), Error> {
    let observed = observe::observe(cluster, &spec.namespace, &spec.release).await?;
    let mut observed = observed;
    if observed.secret.is_none() || spec.existing_secret.is_some() {
        // The probe reads credentials from the observed Secret; give it the ones in use.
        let object = render::secret(spec, &credentials.password);
        observed.secret = serde_json::from_value(object).ok();
    }
    let check = probe::check(cluster, &observed, HEALTH_TIMEOUT).await;
    match (check.accessible, check.error) {
        (true, _) => Ok(()),
        (false, Some(error))
            if error.contains("cannot connect") || error.contains("port-forward") =>
        {
            Err(Error::Connection {
                target: format!("release {} in namespace {}", spec.release, spec.namespace),
                reason: error,
            })
        }
        (false, error) => Err(Error::Deployment {
            message: format!(
                "health check failed: {}",
                error.unwrap_or_else(|| "no answer".into())
            ),
            hints: vec![format!(
                "kubectl logs {} -n {} -c postgres",
                release::pod_name(&spec.release),
                spec.namespace
            )],
            code: 5,
        }),
    }
}

async fn migrate(
    cluster: &Cluster,
    spec: &InstallSpec,
    credentials: &Credentials,
    set: &MigrationSet,
) -> Result<(), Error> {
    let target = release::Target {
        release: spec.release.clone(),
        namespace: spec.namespace.clone(),
        pod: release::pod_name(&spec.release),
        port: release::DATABASE_PORT,
        credentials: credentials.clone(),
    };
    let connector = TunnelConnector::new(cluster, &target);
    let settings = Settings {
        lock_timeout: Duration::from_secs(60),
        statement_timeout: None,
        allow_out_of_order: false,
        applied_by: "kubectl pg install".into(),
    };
    let mut runner = Runner::new(&connector, set, &settings);
    let count = runner
        .run(Goal::Up { to: None }, &mut |event| {
            if let crate::migration::Event::Applied { id, millis } = event {
                eprintln!("applied {id} ({millis} ms)");
            }
        })
        .await?;
    eprintln!("{count} migration(s) applied");
    Ok(())
}

async fn summary(cluster: &Cluster, spec: &InstallSpec, args: &InstallArgs) -> Result<(), Error> {
    let set = MigrationSet::load(args.dir.as_deref())?;
    let (mut status, _) =
        crate::status::read(cluster, &spec.namespace, &spec.release, &set).await?;
    if args.show_password {
        let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &spec.namespace);
        if let Ok(secret) = secrets.get(&spec.secret_name()).await {
            if let Ok(c) = Credentials::from_secret(&secret) {
                let host = release::service_host(&spec.release, &spec.namespace);
                status.connection_string = Some(
                    crate::connection::DatabaseConnection::new(
                        host,
                        release::DATABASE_PORT,
                        c.database,
                        c.username,
                        c.password,
                    )
                    .connection_string,
                );
            }
        }
    }
    let format = args.output.unwrap_or(OutputFormat::Table);
    if output::document(format, &status)?.is_none() && std::io::stderr().is_terminal() {
        eprintln!();
    }
    crate::status::render_one(&status, format)
}
