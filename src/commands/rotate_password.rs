//! `kubectl pg rotate-password`: a new password for the release's superuser (Secret
//! `R-credentials`) or an application user (`R-user-NAME`). The order leaves no moment where
//! neither the old nor the new password is stored: (1) generate, (2) set it in the database as
//! a SCRAM verifier, (3) write the Secret (resourceVersion precondition), (4) retry that a few
//! times, and if it still fails give the database the old password back.
//!
//! Concurrent rotations of one role run one after the other: each holds the role's advisory
//! lock, in the session that sets the password, from before it reads the Secret until the
//! Secret holds its password; the next one then starts from that password. A run undoes only
//! its own change: the old password goes back only while the role still has the verifier this
//! run set.
//!
//! SIGINT or SIGTERM: a wait ends at once (nothing changed yet); a write in flight runs to its
//! end first. Interrupted after (2) and before (3), the role gets its old password back; after
//! (3) the rotation stands. Either way the Secret and the database agree, and the command exits
//! 130/143. A second signal ends even the write in flight, saying what may be left.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PodSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams};
use serde::Serialize;

use crate::cli::{GlobalArgs, RotatePasswordArgs};
use crate::cluster::release::{self, Credentials, DATABASE_PORT, LABEL_MANAGED_BY, MANAGED_BY};
use crate::cluster::Cluster;
use crate::database::connection::{sslmode_of, DatabaseConnection};
use crate::database::password::generate_password;
use crate::database::roles::{self, LABEL_USER};
use crate::database::{connect_with_retry, is_password_refused};
use crate::deployment::kind::{self, Release};
use crate::error::Error;
use crate::output::{self, emit, API_VERSION};

/// How many times the Secret write is tried before the database gets the old password back.
const SECRET_ATTEMPTS: u32 = 4;

/// How long a rotation waits for another rotation of the same role to finish.
const LOCK_WAIT: Duration = Duration::from_secs(120);

/// How many times the superuser's session is tried with the Secret read again, when the
/// password is refused (another rotation of it is between its two writes).
const ADMIN_ATTEMPTS: u32 = 5;

/// `kind: PasswordRotation`: what was rotated and who must reread it (never a password).
#[derive(Debug, Serialize)]
struct RotationDocument {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    release: String,
    namespace: String,
    role: String,
    secret: String,
    rotated_at: String,
    /// The Deployments and StatefulSets of the namespace that use the Secret.
    workloads: Vec<Workload>,
}

/// A workload that reads the Secret, and how (`env`, `envFrom`, `volume`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workload {
    pub kind: &'static str,
    pub name: String,
    pub uses: Vec<&'static str>,
}

pub async fn run(args: RotatePasswordArgs, global: &GlobalArgs) -> Result<(), Error> {
    if let Some(user) = &args.db_user {
        roles::validate_user_name_syntax(user)?;
    }
    let signals = crate::commands::Signals::install()?;
    let cluster = signals
        .race(Cluster::connect(&global.connect_options()))
        .await?;
    let located = signals
        .race(kind::resolve(&cluster, args.release.as_deref()))
        .await?;
    // A Cluster's owner is the operator's to set; its application users are ours.
    if located.operator_sets_passwords() && args.db_user.is_none() {
        return through_operator(&args, &cluster, &located, &signals).await;
    }
    let release = located.name().to_string();
    let ns = cluster.namespace.clone();
    let found = signals
        .race(located.admin(&cluster, "rotate-password --db-user"))
        .await?;
    let superuser = found.target.credentials.username.clone();
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &ns);
    // What to rotate: the Secret, its credentials, and the role they name.
    let (secret, old, role) = match &args.db_user {
        None => {
            if !found.source.is_ours(&release) {
                return Err(Error::InvalidInput {
                    message: format!(
                        "release {release} takes its credentials from --existing-secret {}: kubectl-pg never writes that Secret",
                        found.source.secret
                    ),
                    hint: Some(format!(
                        "rotate it yourself: set the new password in the database (kubectl pg psql {release} -n {ns}, then \\password {superuser}), then in Secret {}",
                        found.source.secret
                    )),
                });
            }
            // A Secret of that name that is another release's or a user's: rotating it would
            // lock its owner out.
            release::check_release_secret(&found.secret.metadata, &release, &ns)?;
            (
                found.secret.clone(),
                found.target.credentials.clone(),
                superuser.clone(),
            )
        }
        Some(user) => {
            roles::refuse_superuser(user, &superuser, &release)?;
            let name = roles::secret_name(&release, user);
            let secret = signals
                .race(async {
                    secrets
                        .get_opt(&name)
                        .await
                        .map_err(|e| cluster.error("get", "secrets", e))
                })
                .await?
                .ok_or_else(|| Error::NotFound {
                    message: format!("user {user} of release {release} not found: no Secret {name} in namespace {ns:?}"),
                    hint: Some(format!("kubectl pg user list --release {release} -n {ns}")),
                })?;
            let labelled = secret
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_USER))
                .is_some_and(|u| u == user);
            if !release::made_for(&secret.metadata, &release) || !labelled {
                return Err(Error::InvalidInput {
                    message: format!("Secret {name} is not the kubectl-pg Secret of user {user}: it is left alone"),
                    hint: None,
                });
            }
            let credentials = Credentials::from_secret(&secret)?;
            (secret, credentials, user.clone())
        }
    };
    let secret_name = secret.metadata.name.clone().unwrap_or_default();
    let admin = signals
        .race(admin_session(&cluster, &located, found.target))
        .await?;
    if signals
        .race(roles::find_role(&admin, &role))
        .await?
        .is_none()
    {
        return Err(Error::NotFound {
            message: format!(
                "role {role:?} does not exist in release {release}'s database: nothing was changed"
            ),
            hint: Some(format!(
                "kubectl pg user list --release {release} -n {ns} shows the drift"
            )),
        });
    }
    if !args.yes {
        confirm(
            &signals,
            format!("set a new password for role {role} and Secret {secret_name}? (apps must reread it)"),
        )
        .await?;
    }
    if !signals
        .race(roles::try_lock_password(&admin, &role))
        .await?
    {
        crate::note!(
            "another rotate-password of role {role} is running: waiting for it to finish (at most {}s)",
            LOCK_WAIT.as_secs()
        );
        signals
            .race(roles::lock_password(&admin, &role, LOCK_WAIT))
            .await?;
    }
    // Under the lock, the Secret as it is now: a rotation that finished meanwhile wrote it.
    let secret = signals
        .race(async {
            secrets
                .get(&secret_name)
                .await
                .map_err(|e| cluster.error("get", "secrets", e))
        })
        .await?;
    let current = match &args.db_user {
        None => found.source.resolve(&secret)?,
        Some(_) => Credentials::from_secret(&secret)?,
    };
    if current.password != old.password {
        crate::note!(
            "another rotate-password of role {role} finished meanwhile: this one rotates its password again"
        );
    }
    let old = current;
    // (1) and (2): the database holds the new password, the Secret still the old one.
    let new = generate_password();
    let verifier = roles::verifier(&new);
    let left = || {
        crate::note!(
            "interrupted again: role {role} may have a password that Secret {secret_name} does not hold; kubectl pg rotate-password again sets one in both (for the superuser: kubectl pg psql {release} -n {ns}, then \\password {role}, with the Secret's password)"
        )
    };
    signals
        .shielded(
            roles::run(
                &admin,
                &format!("cannot set the new password of role {role}"),
                &roles::set_verifier_sql(&role, &verifier),
            ),
            left,
        )
        .await?;
    // (3) and (4), unless a signal came: then the role gets its old password back.
    let written = match signals.received() {
        Some(code) => Err(Error::Exit(code)),
        None => {
            signals
                .shielded(
                    async { Ok(write_secret(&cluster, &secrets, secret, &old, &new).await) },
                    left,
                )
                .await?
        }
    };
    if let Err(error) = written {
        let (why, code) = match &error {
            Error::Exit(code) => ("interrupted before it was written".to_string(), *code),
            other => (other.to_string(), 1),
        };
        // Only this run's change is undone: a role whose password is no longer the verifier
        // set above was changed by someone else meanwhile (by hand: rotations hold the lock).
        if let Ok(Some(stored)) = roles::stored_verifier(&admin, &role).await {
            if stored != verifier {
                return Err(Error::Deployment {
                    message: format!(
                        "Secret {secret_name} could not be updated ({why}), and role {role}'s password was changed by someone else meanwhile: it is left as they set it"
                    ),
                    hints: vec![format!(
                        "put the password they set into Secret {secret_name}, or run kubectl pg rotate-password again"
                    )],
                    code,
                });
            }
        }
        return match roles::run(
            &admin,
            "cannot restore the old password",
            &roles::set_password_sql(&role, &old.password),
        )
        .await
        {
            Ok(()) if matches!(error, Error::Exit(_)) => {
                crate::note!("interrupted: role {role} has its old password again, nothing changed");
                Err(error)
            }
            Ok(()) => {
                crate::note!("Secret {secret_name} could not be updated: role {role} has its old password again, nothing changed");
                Err(error)
            }
            Err(restore) => Err(Error::Deployment {
                message: format!(
                    "Secret {secret_name} could not be updated ({why}) and the old password could not be restored ({restore}): role {role} has a password no Secret holds"
                ),
                hints: vec![format!(
                    "set the Secret's password again: kubectl pg psql {release} -n {ns}, then \\password {role}, entering the password of Secret {secret_name} (kubectl get secret {secret_name} -n {ns} -o jsonpath='{{.data.password}}' | base64 -d)"
                )],
                code,
            }),
        };
    }
    if let Some(code) = signals.received() {
        crate::note!(
            "interrupted once the rotation was written: role {role} and Secret {secret_name} hold the new password"
        );
        return Err(Error::Exit(code));
    }
    // The Secret holds the new password: the next rotation may start from it.
    let _ = roles::unlock_password(&admin, &role).await;
    // Older versions granted app users the migration history: a rotation corrects it.
    roles::run(
        &admin,
        "cannot revoke app users' privileges on the migration history",
        &roles::protect_history_sql(),
    )
    .await?;
    report(&args, &cluster, &release, &role, &secret_name).await
}

/// Prints the rotation, with the workloads that read the Secret: the document for -o, else
/// what was rotated and who must reread it.
async fn report(
    args: &RotatePasswordArgs,
    cluster: &Cluster,
    release: &str,
    role: &str,
    secret_name: &str,
) -> Result<(), Error> {
    let ns = &cluster.namespace;
    let workloads = match users_of(cluster, ns, release, secret_name).await {
        Ok(w) => w,
        Err(e) => {
            crate::note!("warning: cannot list the workloads that use Secret {secret_name}: {e}");
            Vec::new()
        }
    };
    let document = RotationDocument {
        api_version: API_VERSION,
        kind: "PasswordRotation",
        release: release.to_string(),
        namespace: ns.clone(),
        role: role.to_string(),
        secret: secret_name.to_string(),
        rotated_at: k8s_openapi::jiff::Timestamp::now().to_string(),
        workloads,
    };
    if let Some(format) = args.output {
        if let Some(text) = output::document(format, &document)? {
            emit(&text);
            return Ok(());
        }
    }
    let mut text = format!(
        "password of role {role} rotated in release {release}: the database and Secret {secret_name} hold the new one\n\
         Apps must reread Secret {secret_name}: a running process keeps the old password, which no longer works for new connections.\n"
    );
    if document.workloads.is_empty() {
        text.push_str(&format!(
            "No Deployment or StatefulSet in namespace {ns} references Secret {secret_name}.\n"
        ));
    } else {
        text.push_str(&format!(
            "Workloads in namespace {ns} that use it (restart them, e.g. kubectl rollout restart deployment/NAME -n {ns}):\n"
        ));
        for w in &document.workloads {
            text.push_str(&format!(
                "  {} {} ({})\n",
                w.kind,
                w.name,
                w.uses.join(", ")
            ));
        }
    }
    emit(&text);
    Ok(())
}

/// A Cluster's owner: the new password goes into the Secret its operator applies, and the
/// command waits until the primary takes it. A signal before the write changes nothing; after
/// it, the operator carries the rotation through, so the Secret and the database agree.
async fn through_operator(
    args: &RotatePasswordArgs,
    cluster: &Cluster,
    found: &kind::Release,
    signals: &crate::commands::Signals,
) -> Result<(), Error> {
    let (release, ns) = (found.name().to_string(), cluster.namespace.clone());
    found.check_operator_rotation()?;
    if !args.yes {
        confirm(
            signals,
            format!("set a new password for the owner of Cluster {release}? (apps must reread its Secret)"),
        )
        .await?;
    }
    let new = generate_password();
    let done = signals
        .race(found.rotate_through_operator(cluster, &new, args.timeout))
        .await;
    let rotated = match done {
        Ok(r) => r,
        Err(Error::Exit(code)) => {
            crate::note!(
                "interrupted: if the Secret was written, the operator sets its password in the database; kubectl pg rotate-password {release} -n {ns} rotates again"
            );
            return Err(Error::Exit(code));
        }
        Err(e) => return Err(e),
    };
    report(args, cluster, &release, &rotated.role, &rotated.secret).await
}

/// Asks `question` on the terminal, on a thread of its own so that Ctrl-C at the prompt ends
/// the command.
async fn confirm(signals: &crate::commands::Signals, question: String) -> Result<(), Error> {
    let answer =
        tokio::task::spawn_blocking(move || crate::commands::confirm(&question, "rotate-password"));
    signals
        .race(async {
            answer
                .await
                .map_err(|e| Error::invalid(format!("the prompt failed: {e}")))?
        })
        .await
}

/// The superuser's session. A refused password is read again from the Secret a few times: a
/// rotation of the superuser running meanwhile sets the new password in the database a moment
/// before it writes the Secret.
async fn admin_session(
    cluster: &Cluster,
    located: &Release,
    mut target: release::Target,
) -> Result<tokio_postgres::Client, Error> {
    let mut delay = Duration::from_millis(200);
    for attempt in 1.. {
        match connect_with_retry(&located.connector(cluster, &target)).await {
            Err(e) if is_password_refused(&e) && attempt < ADMIN_ATTEMPTS => {
                tokio::time::sleep(delay).await;
                delay *= 2;
                target = located.admin(cluster, "rotate-password").await?.target;
            }
            other => return other,
        }
    }
    unreachable!("the last attempt returns")
}

/// Writes the new password (and the `uri` built from it) into the Secret read before: a merge
/// patch (the `patch` verb install's RBAC already has) whose resourceVersion is the
/// precondition. A conflict re-reads the Secret and tries again only while it still holds the
/// old password; transient API errors are retried; others end at once.
async fn write_secret(
    cluster: &Cluster,
    secrets: &Api<Secret>,
    mut secret: Secret,
    old: &Credentials,
    new: &str,
) -> Result<(), Error> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=SECRET_ATTEMPTS {
        let patch = with_password(&secret, old, new);
        let params = PatchParams::default();
        let error = match secrets.patch(&name, &params, &Patch::Merge(&patch)).await {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let retry = match &error {
            kube::Error::Api(s) => s.code == 409 || s.code == 429 || s.code >= 500,
            _ => true,
        };
        if !retry || attempt == SECRET_ATTEMPTS {
            return Err(cluster.error("patch", "secrets", error));
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
        if matches!(&error, kube::Error::Api(s) if s.code == 409) {
            let fresh = secrets
                .get(&name)
                .await
                .map_err(|e| cluster.error("get", "secrets", e))?;
            if release::secret_values(&fresh).get("password") != Some(&old.password) {
                return Err(Error::InvalidInput {
                    message: format!("Secret {name} was changed by someone else meanwhile"),
                    hint: Some("run rotate-password again once the other change is done".into()),
                });
            }
            secret = fresh;
        }
    }
    unreachable!("the last attempt returns")
}

/// The patch: the Secret's resourceVersion, the new password and, when the Secret has a host
/// (ours do), the `uri` built from it; every other key stays as it is.
fn with_password(secret: &Secret, old: &Credentials, new: &str) -> Secret {
    let values = release::secret_values(secret);
    let mut data = BTreeMap::from([("password".to_string(), ByteString(new.as_bytes().to_vec()))]);
    if let Some(host) = values.get("host") {
        let mut connection = DatabaseConnection::new(
            host.clone(),
            old.port.unwrap_or(DATABASE_PORT),
            old.database.clone(),
            old.username.clone(),
            new.to_string(),
        );
        // The sslmode install derived from the release's TLS stays as it was.
        if let Some(mode) = values.get("uri").and_then(|u| sslmode_of(u)) {
            connection = connection.with_sslmode(&mode);
        }
        data.insert("uri".into(), ByteString(connection.uri().into_bytes()));
    }
    Secret {
        metadata: ObjectMeta {
            resource_version: secret.metadata.resource_version.clone(),
            ..ObjectMeta::default()
        },
        data: Some(data),
        ..Secret::default()
    }
}

/// The Deployments and StatefulSets of the namespace whose pods read the Secret, but the
/// release's own StatefulSet (its POSTGRES_PASSWORD only matters to the first start).
async fn users_of(
    cluster: &Cluster,
    ns: &str,
    release: &str,
    secret: &str,
) -> Result<Vec<Workload>, Error> {
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), ns);
    let sets: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), ns);
    let params = kube::api::ListParams::default();
    let (deployments, sets) = tokio::join!(deployments.list(&params), sets.list(&params));
    let deployments = deployments.map_err(|e| cluster.error("list", "deployments", e))?;
    let sets = sets.map_err(|e| cluster.error("list", "statefulsets", e))?;
    let mut found = Vec::new();
    for d in deployments.items {
        let spec = d.spec.as_ref().and_then(|s| s.template.spec.as_ref());
        let uses = spec.map(|s| references(s, secret)).unwrap_or_default();
        if !uses.is_empty() {
            found.push(Workload {
                kind: "Deployment",
                name: d.metadata.name.clone().unwrap_or_default(),
                uses,
            });
        }
    }
    for s in sets.items {
        let ours = s.metadata.name.as_deref() == Some(release)
            && s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_MANAGED_BY))
                .is_some_and(|m| m == MANAGED_BY);
        if ours {
            continue;
        }
        let spec = s.spec.as_ref().and_then(|s| s.template.spec.as_ref());
        let uses = spec.map(|p| references(p, secret)).unwrap_or_default();
        if !uses.is_empty() {
            found.push(Workload {
                kind: "StatefulSet",
                name: s.metadata.name.clone().unwrap_or_default(),
                uses,
            });
        }
    }
    Ok(found)
}

/// How a pod spec reads `secret`: `env` (valueFrom.secretKeyRef), `envFrom`, `volume`
/// (secret or projected), each once, in that order.
pub fn references(spec: &PodSpec, secret: &str) -> Vec<&'static str> {
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    let mut env = false;
    let mut env_from = false;
    for c in containers {
        env |= c.env.iter().flatten().any(|e| {
            e.value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
                .is_some_and(|r| r.name == secret)
        });
        env_from |= c
            .env_from
            .iter()
            .flatten()
            .any(|e| e.secret_ref.as_ref().is_some_and(|r| r.name == secret));
    }
    let volume = spec.volumes.iter().flatten().any(|v| {
        v.secret
            .as_ref()
            .is_some_and(|s| s.secret_name.as_deref() == Some(secret))
            || v.projected.as_ref().is_some_and(|p| {
                p.sources
                    .iter()
                    .flatten()
                    .any(|s| s.secret.as_ref().is_some_and(|s| s.name == secret))
            })
    });
    [(env, "env"), (env_from, "envFrom"), (volume, "volume")]
        .into_iter()
        .filter_map(|(on, what)| on.then_some(what))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> PodSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn finds_every_way_a_pod_reads_a_secret() {
        let s = spec(serde_json::json!({
            "containers": [{
                "name": "app",
                "env": [{ "name": "DB", "valueFrom": { "secretKeyRef": { "name": "pg-credentials", "key": "uri" } } }],
            }],
            "initContainers": [{ "name": "wait", "envFrom": [{ "secretRef": { "name": "pg-credentials" } }] }],
            "volumes": [{ "name": "v", "projected": { "sources": [{ "secret": { "name": "pg-credentials" } }] } }],
        }));
        assert_eq!(
            references(&s, "pg-credentials"),
            ["env", "envFrom", "volume"]
        );
        assert!(references(&s, "other").is_empty());
        let v = spec(serde_json::json!({
            "containers": [{ "name": "app" }],
            "volumes": [{ "name": "v", "secret": { "secretName": "pg-user-app" } }],
        }));
        assert_eq!(references(&v, "pg-user-app"), ["volume"]);
    }

    #[test]
    fn the_secret_gets_the_new_password_and_uri() {
        let secret = Secret {
            metadata: ObjectMeta {
                resource_version: Some("42".into()),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([
                ("username".to_string(), ByteString(b"app".to_vec())),
                (
                    "password".to_string(),
                    ByteString(b"old-password-0123".to_vec()),
                ),
                ("database".to_string(), ByteString(b"learnflow".to_vec())),
                (
                    "host".to_string(),
                    ByteString(b"pg.ns.svc.cluster.local".to_vec()),
                ),
                ("port".to_string(), ByteString(b"5432".to_vec())),
                (
                    "uri".to_string(),
                    ByteString(b"postgresql://old@h/db?sslmode=require".to_vec()),
                ),
            ])),
            ..Secret::default()
        };
        let old = Credentials::from_secret(&secret).unwrap();
        let updated = with_password(&secret, &old, "new-password-4567");
        assert_eq!(updated.metadata.resource_version.as_deref(), Some("42"));
        let values = release::secret_values(&updated);
        assert_eq!(values["password"], "new-password-4567");
        assert_eq!(
            values["uri"],
            "postgresql://app:new-password-4567@pg.ns.svc.cluster.local:5432/learnflow?sslmode=require",
            "the sslmode install wrote is kept"
        );
        assert!(!values.contains_key("username"), "only what changes");
    }
}
