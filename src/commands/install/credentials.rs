//! Credentials: the password (generated or from stdin), the Secret that holds it, and
//! setting it inside an existing database.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::cluster::release::{self, Credentials};
use crate::cluster::{exec, Cluster};
use crate::error::Error;
use crate::manifests::render::{self};
use crate::manifests::InstallSpec;

use crate::database::password::generate_password;

pub(super) fn read_password() -> Result<String, Error> {
    crate::database::password::read_password_for("install")
}

/// The credentials in a user's `kubernetes.io/basic-auth` Secret: `password` required,
/// `username` optional (else `--username`); the database is `--database`.
pub(super) fn user_secret_credentials(
    secret: &Secret,
    spec: &InstallSpec,
) -> Result<Credentials, Error> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let values = release::secret_values(secret);
    let value = |key: &str| values.get(key).filter(|v| !v.is_empty()).cloned();
    let password = value("password").ok_or_else(|| release::missing_key(&name, "password"))?;
    Ok(Credentials {
        username: value("username").unwrap_or_else(|| spec.username.clone()),
        password,
        database: spec.database.clone(),
        host: None,
        port: None,
    })
}

/// A new server is initialised with the user a user's Secret names: a reserved one would
/// crash-loop it, so it is refused before the release is written, as `--username` is. A release
/// that runs already keeps the user it has.
pub(super) fn refuse_reserved_user(spec: &InstallSpec, username: &str) -> Result<(), Error> {
    let Some(reason) = crate::database::roles::reserved_role(username) else {
        return Ok(());
    };
    let name = spec.secret_name();
    Err(Error::InvalidInput {
        message: format!("Secret {name:?} names the user {username:?}: {reason}"),
        hint: Some(format!(
            "set another username in Secret {name} (kubectl edit secret {name} -n {})",
            spec.namespace
        )),
    })
}

pub(super) struct SecretOutcome {
    pub(super) credentials: Credentials,
    pub(super) created: bool,
    /// The UID of the Secret this run created, so a failed reset can take it back.
    pub(super) created_uid: Option<String>,
}

/// Our Secret: created when absent, never overwritten. A user's Secret: checked, never touched.
pub(super) async fn ensure_secret(
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
        if spec.existing_secret.is_none() {
            release::check_release_secret(&existing.metadata, &spec.release, &spec.namespace)?;
        }
        if password.is_some() {
            crate::note!("note: Secret {name} exists; its password is kept and the one from stdin is ignored");
        }
        let credentials = if spec.existing_secret.is_some() {
            user_secret_credentials(&existing, spec)?
        } else {
            Credentials::from_secret(&existing)?
        };
        return Ok(SecretOutcome {
            credentials,
            created: false,
            created_uid: None,
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
    let created_uid = match secrets.create(&PostParams::default(), &object).await {
        Ok(created) => created.metadata.uid,
        // Someone else created it meanwhile: theirs wins, as it would have on a rerun.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let theirs = secrets
                .get(&name)
                .await
                .map_err(|e| cluster.error("get", "secrets", e))?;
            release::check_release_secret(&theirs.metadata, &spec.release, &spec.namespace)?;
            return Ok(SecretOutcome {
                credentials: Credentials::from_secret(&theirs)?,
                created: false,
                created_uid: None,
            });
        }
        Err(e) => return Err(cluster.error("create", "secrets", e)),
    };
    Ok(SecretOutcome {
        credentials: Credentials {
            username: spec.username.clone(),
            password,
            database: spec.database.clone(),
            host: None,
            port: None,
        },
        created: true,
        created_uid,
    })
}

/// Our Secrets' `uri` is derived data: the credentials (never overwritten) put together with
/// the release's TLS, which `--upgrade` may turn on. When it no longer says what the release
/// serves (an older install wrote it without sslmode, or TLS came with this upgrade), the `uri`
/// key alone is patched, with the read's resourceVersion as precondition; username, password
/// and every other key stay as they are. That is `R-credentials` and the application users'
/// `R-user-NAME`; a user's `--existing-secret` is never written.
pub(super) async fn refresh_uri(cluster: &Cluster, spec: &InstallSpec) -> Result<(), Error> {
    use crate::cluster::release::{LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY};
    use crate::database::roles::LABEL_USER;
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &spec.namespace);
    let users = kube::api::ListParams::default().labels(&format!(
        "{LABEL_INSTANCE}={},{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_USER}",
        spec.release
    ));
    let name = spec.secret_name();
    let (ours, users) = tokio::join!(secrets.get_opt(&name), secrets.list(&users));
    let ours = ours
        .map_err(|e| cluster.error("get", "secrets", e))?
        .filter(|_| spec.existing_secret.is_none());
    // The users' Secrets are a courtesy to their apps: one that cannot be listed is said, and
    // a later `--upgrade` with the right fixes it.
    let users = match users {
        Ok(list) => list.items,
        Err(e) => {
            crate::note!(
                "note: the application users' Secrets were not checked: {}",
                cluster.error("list", "secrets", e)
            );
            Vec::new()
        }
    };
    let tls = spec.serves_tls();
    for secret in ours.into_iter().chain(users) {
        let name = secret.metadata.name.clone().unwrap_or_default();
        let values = release::secret_values(&secret);
        let Ok(credentials) = Credentials::from_secret(&secret) else {
            continue;
        };
        let host = credentials.host.clone().unwrap_or_else(|| {
            release::service_host(&spec.release, &spec.namespace, &spec.cluster_domain)
        });
        let uri = render::credentials_uri(
            &host,
            &credentials.database,
            &credentials.username,
            &credentials.password,
            tls,
        );
        if values.get("uri") == Some(&uri) {
            continue;
        }
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": secret.metadata.resource_version },
            "stringData": { "uri": uri },
        });
        secrets
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| cluster.error("patch", "secrets", e))?;
        crate::note!(
            "Secret {name}: its uri now says sslmode={} (the release {} TLS); the credentials are unchanged",
            if tls { "require" } else { "disable" },
            if tls { "serves" } else { "does not serve" }
        );
    }
    Ok(())
}

/// Sets a new Secret's password in the database that already exists on the volume. If that
/// fails, the new Secret is deleted again: a Secret that does not open the database would lock
/// the apps out, and without it the next install retries the reset.
pub(super) async fn reset_or_take_back(
    cluster: &Cluster,
    spec: &InstallSpec,
    outcome: &SecretOutcome,
) -> Result<(), Error> {
    let Err(error) = set_password_in_database(cluster, spec, &outcome.credentials).await else {
        return Ok(());
    };
    take_back(cluster, spec, outcome).await;
    Err(error)
}

/// Deletes the Secret this run created (and only that one: the UID is the precondition).
pub(super) async fn take_back(cluster: &Cluster, spec: &InstallSpec, outcome: &SecretOutcome) {
    if outcome.created_uid.is_none() {
        return;
    }
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &spec.namespace);
    let params = release::delete_only(outcome.created_uid.clone());
    if secrets.delete(&spec.secret_name(), &params).await.is_ok() {
        crate::note!(
            "deleted the new Secret {} again: the database still has its old password; rerun install to retry",
            spec.secret_name()
        );
    }
}

/// Sets the Secret's password on the role, through exec in the pod over the local socket
/// (trusted there), the statement on stdin so it never shows on a command line.
pub(super) async fn set_password_in_database(
    cluster: &Cluster,
    spec: &InstallSpec,
    credentials: &Credentials,
) -> Result<(), Error> {
    let quote_ident = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    // A SCRAM verifier, not the password: a statement log can then hold nothing usable.
    let verifier = postgres_protocol::password::scram_sha_256(credentials.password.as_bytes());
    let sql = format!(
        "ALTER ROLE {} PASSWORD {};\n",
        quote_ident(&credentials.username),
        crate::migration::history::literal(&verifier)
    );
    let output = exec::run(
        cluster,
        &spec.namespace,
        &release::pod_name(&spec.release),
        crate::manifests::render::CONTAINER,
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
                output.reason()
            ),
            hints: vec!["set it by hand: kubectl pg psql, then ALTER ROLE … PASSWORD …".into()],
            code: 5,
        });
    }
    Ok(())
}

/// Brings a release initialised before the manifests set `--auth-host=scram-sha-256` to the
/// same rule: initdb's `trust` for 127.0.0.1 and ::1 (where a port-forward arrives) becomes
/// scram-sha-256 in pg_hba.conf, and the server reloads it. The local socket stays trusted,
/// as the image has it.
pub(super) async fn require_password_on_loopback(
    cluster: &Cluster,
    spec: &InstallSpec,
) -> Result<(), Error> {
    rewrite_pg_hba(
        cluster,
        spec,
        HbaEdit {
            rule: r"^(host[[:space:]]+(all|replication)[[:space:]]+all[[:space:]]+(127\.0\.0\.1/32|::1/128)[[:space:]]+)trust",
            replacement: r"\1scram-sha-256",
            what: "require the password on loopback connections",
            by_hand: "host lines for 127.0.0.1/32 and ::1/128 should say scram-sha-256",
            done: "loopback TCP connections now need the password too (scram-sha-256), as new releases do",
        },
    )
    .await
}

/// One change to the pod's pg_hba.conf: lines matching `rule` (an extended regular
/// expression) become `replacement`.
pub(super) struct HbaEdit {
    pub rule: &'static str,
    pub replacement: &'static str,
    /// For the error: "could not {what}".
    pub what: &'static str,
    /// For the hint: what the lines should say.
    pub by_hand: &'static str,
    /// For the note when a line changed.
    pub done: &'static str,
}

/// Applies `edit` in the pod (through exec, as the image's user) and reloads the server when
/// a line changed; a file already right is left alone.
pub(super) async fn rewrite_pg_hba(
    cluster: &Cluster,
    spec: &InstallSpec,
    edit: HbaEdit,
) -> Result<(), Error> {
    let script = format!(
        r#"f="$PGDATA/pg_hba.conf"
rule='{rule}'
grep -Eq "$rule" "$f" || exit 0
sed -E "s#$rule#{replacement}#" "$f" > "$f.kubectl-pg" && cat "$f.kubectl-pg" > "$f" && rm -f "$f.kubectl-pg"
psql -X -q -At -U "$POSTGRES_USER" -d postgres -c 'select pg_reload_conf()' >/dev/null && echo changed
"#,
        rule = edit.rule,
        replacement = edit.replacement
    );
    let output = exec::run(
        cluster,
        &spec.namespace,
        &release::pod_name(&spec.release),
        crate::manifests::render::CONTAINER,
        &["sh", "-s"],
        &script,
    )
    .await?;
    if !output.success {
        return Err(Error::Deployment {
            message: format!("could not {}: {}", edit.what, output.reason()),
            hints: vec![format!("edit pg_hba.conf by hand: {}", edit.by_hand)],
            code: 5,
        });
    }
    if output.stdout.contains("changed") {
        crate::note!("pg_hba.conf: {}", edit.done);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_secret_names_no_reserved_user() {
        let spec = InstallSpec {
            existing_secret: Some("mine".into()),
            ..InstallSpec::example(18)
        };
        assert!(refuse_reserved_user(&spec, "app").is_ok());
        for reserved in ["public", "pg_monitor", "select"] {
            let err = refuse_reserved_user(&spec, reserved).unwrap_err();
            assert!(
                err.to_string().contains("Secret \"mine\" names the user"),
                "{err}"
            );
        }
    }
}
