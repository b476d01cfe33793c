//! `kubectl pg user create|list|delete`: application users, each a role in the release's
//! server and a Secret `R-user-NAME` with its credentials. Every change goes through a session
//! of the release's superuser, tunnelled through a port-forward to its pod.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};
use serde::Serialize;
use tokio_postgres::Client;

use crate::cli::{GlobalArgs, UserAction, UserArgs, UserOptions};
use crate::cluster::release::{self, FoundRelease};
use crate::cluster::Cluster;
use crate::database::connect_with_retry;
use crate::database::connection::DatabaseConnection;
use crate::database::password::{generate_password, prompt_password, read_password_for};
use crate::database::roles::{self, UserGrants, LABEL_READONLY, LABEL_USER};
use crate::deployment::kind::{self, Release};
use crate::deployment::status::user_selector;
use crate::error::Error;
use crate::manifests::render::{self, UserSecret};
use crate::output::{self, emit, API_VERSION};

pub async fn run(args: UserArgs, global: &GlobalArgs) -> Result<(), Error> {
    if let Some(release) = &args.options.release {
        release::validate_release(release)?;
    }
    match args.action {
        UserAction::Create {
            name,
            database,
            readonly,
            password_stdin,
        } => {
            roles::validate_user_name(&name)?;
            if let Some(db) = &database {
                validate_database(db)?;
            }
            let password = if !password_stdin {
                generate_password()
            } else if std::io::stdin().is_terminal() {
                prompt_password(&format!("user {name}"), "user create")?
            } else {
                read_password_for("user create")?
            };
            let request = CreateRequest {
                name,
                database,
                readonly,
                password,
            };
            create(&args.options, request, global).await
        }
        UserAction::List => list(&args.options, global).await,
        UserAction::Delete { name, yes } => {
            roles::validate_user_name_syntax(&name)?;
            delete(&args.options, &name, yes, global).await
        }
    }
}

/// `--database`: a name the server can have, not a template.
fn validate_database(database: &str) -> Result<(), Error> {
    if database.is_empty() || database.len() > 63 || database.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "invalid --database {database:?}: 1 to 63 characters, no control characters"
        )));
    }
    if matches!(database, "template0" | "template1") {
        return Err(Error::invalid(format!(
            "--database {database}: templates are not for applications"
        )));
    }
    Ok(())
}

/// A session of the release's superuser in `database` (a Cluster's follows its primary).
async fn session(
    cluster: &Cluster,
    located: &Release,
    found: &FoundRelease,
    database: &str,
) -> Result<Client, Error> {
    connect_with_retry(&located.database_connector(cluster, &found.target, database)).await
}

struct CreateRequest {
    name: String,
    database: Option<String>,
    readonly: bool,
    password: String,
}

/// `kind: ApplicationUser`: what `user create` made (the password masked).
#[derive(Debug, Serialize)]
struct UserDocument {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    name: String,
    release: String,
    namespace: String,
    database: String,
    readonly: bool,
    secret: String,
    connection_string: String,
}

/// What `user create` and `user delete` both start from: the release, its superuser, and the
/// user's Secret as it is now. The owner of the release's objects (a single instance's
/// superuser, a Cluster's database owner) is refused as a user name here.
struct UserScope {
    cluster: Cluster,
    located: Release,
    release: String,
    ns: String,
    secret_name: String,
    found: release::FoundRelease,
    secret: Option<Secret>,
    superuser: String,
}

impl UserScope {
    async fn read(options: &UserOptions, name: &str, global: &GlobalArgs) -> Result<Self, Error> {
        let cluster = Cluster::connect(&global.connect_options()).await?;
        let located = kind::resolve(&cluster, options.release.as_deref()).await?;
        let release = located.name().to_string();
        let ns = cluster.namespace.clone();
        let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &ns);
        let secret_name = roles::secret_name(&release, name);
        let (found, secret) = tokio::join!(
            located.admin(&cluster, "user"),
            secrets.get_opt(&secret_name)
        );
        let found = found?;
        let secret = secret.map_err(|e| cluster.error("get", "secrets", e))?;
        let superuser = located.objects_owner(&found);
        roles::refuse_superuser(name, &superuser, &release)?;
        Ok(Self {
            cluster,
            located,
            release,
            ns,
            secret_name,
            found,
            secret,
            superuser,
        })
    }
}

/// SIGINT or SIGTERM: before the role is made, the command ends at once; from then on the
/// write in flight (the role, its Secret) runs to its end, then both are taken back, so an
/// interrupted create leaves nothing and a rerun makes the user. A second signal ends even
/// that, saying what is left.
async fn create(
    options: &UserOptions,
    request: CreateRequest,
    global: &GlobalArgs,
) -> Result<(), Error> {
    let signals = super::Signals::install()?;
    let name = request.name.as_str();
    let UserScope {
        cluster,
        located,
        release,
        ns,
        secret_name,
        found,
        secret: existing,
        superuser,
    } = signals.race(UserScope::read(options, name, global)).await?;
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &ns);
    if let Some(existing) = &existing {
        return Err(Error::InvalidInput {
            message: format!(
                "Secret {secret_name} exists in namespace {ns:?} ({}): user {name} was not created",
                release::secret_owner(&existing.metadata)
            ),
            hint: Some(
                if release::secret_owner(&existing.metadata)
                    == format!("user {name} of release {release}")
                {
                    format!(
                        "kubectl pg user list --release {release} shows it; kubectl pg user delete {name} --release {release} removes it"
                    )
                } else {
                    "that Secret is not this user's: pick another user name".into()
                },
            ),
        });
    }
    let release_db = found.target.credentials.database.clone();
    let database = request
        .database
        .clone()
        .unwrap_or_else(|| release_db.clone());
    let admin = signals
        .race(session(&cluster, &located, &found, &release_db))
        .await?;
    if let Some(role) = signals.race(roles::find_role(&admin, name)).await? {
        let secret_now = signals
            .race(async {
                secrets
                    .get_opt(&secret_name)
                    .await
                    .map_err(|e| cluster.error("get", "secrets", e))
            })
            .await?;
        if role.ours && secret_now.is_some() {
            return Err(roles::made_meanwhile(name));
        }
        let hint = if role.ours {
            format!("it was made by kubectl-pg and its Secret is gone (unless another `user create {name}` is writing it now): kubectl pg user delete {name} --release {release}, then create it again")
        } else {
            "someone made that role by hand: pick another name".into()
        };
        return Err(Error::InvalidInput {
            message: format!(
                "role {name:?} exists in release {release}'s database: nothing was created"
            ),
            hint: Some(hint),
        });
    }
    if !signals
        .race(roles::database_exists(&admin, &database))
        .await?
    {
        return Err(Error::NotFound {
            message: format!("database {database:?} does not exist in release {release}"),
            hint: Some(format!(
                "create it first (kubectl pg psql {release} -- -c 'CREATE DATABASE …'), or leave out --database for {release_db:?}"
            )),
        });
    }
    let session = if database == release_db {
        admin
    } else {
        signals
            .race(session(&cluster, &located, &found, &database))
            .await?
    };
    // Read before the role is made: the Secret's uri says sslmode for the release's TLS.
    let tls = signals.race(located.tls(&cluster)).await?.is_some();
    let grants = UserGrants {
        name,
        database: &database,
        owner: &superuser,
        readonly: request.readonly,
    };
    // A SCRAM verifier, not the password: a statement log can then hold nothing usable.
    let verifier = postgres_protocol::password::scram_sha_256(request.password.as_bytes());
    let left = |what: &str| {
        crate::note!(
            "interrupted again: {what}; `kubectl pg user delete {name} --release {release} -n {ns} --yes` removes what is left"
        )
    };
    // What a signal during the writes leaves: nothing, once the writes done are taken back.
    let take_back = |secret_uid: Option<String>, code: u8| {
        let (secrets, session, secret_name) = (&secrets, &session, &secret_name);
        let (cluster, superuser, signals) = (&cluster, &superuser, &signals);
        let work = async move {
            if secret_uid.is_some() {
                match secrets
                    .delete(secret_name, &release::delete_only(secret_uid))
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(cluster.error("delete", "secrets", e)),
                }
            }
            roles::run(
                session,
                "cannot drop the new role again",
                &roles::drop_user_sql(name, superuser),
            )
            .await
        };
        async move {
            signals
                .shielded(work, || left("the new role and its Secret may remain"))
                .await?;
            crate::note!("interrupted: user {name} was taken back, nothing was created");
            Err::<(), Error>(Error::Exit(code))
        }
    };
    signals
        .shielded(roles::create_user(&session, &grants, &verifier), || {
            left(&format!(
                "role {name} may have been made without its Secret"
            ))
        })
        .await?;
    if let Some(code) = signals.received() {
        return take_back(None, code).await;
    }
    let host = found
        .target
        .credentials
        .host
        .clone()
        .unwrap_or_else(|| release::service_host(&release, &ns, &found.source.cluster_domain));
    let object: Secret = serde_json::from_value(render::user_secret(&UserSecret {
        release: &release,
        namespace: &ns,
        host: &host,
        user: name,
        password: &request.password,
        database: &database,
        readonly: request.readonly,
        tls,
    }))
    .map_err(|e| Error::invalid(e.to_string()))?;
    let created = signals
        .shielded(
            async { Ok(secrets.create(&PostParams::default(), &object).await) },
            || left(&format!("role {name} was made, its Secret perhaps")),
        )
        .await?;
    let created = match created {
        Ok(secret) => secret,
        Err(e) => {
            let error = cluster.error("create", "secrets", e);
            // Without its Secret nobody knows the password: take the role back.
            let dropped = roles::run(
                &session,
                "cannot drop the new role again",
                &roles::drop_user_sql(name, &superuser),
            )
            .await;
            match dropped {
            Ok(()) => crate::note!(
                "dropped role {name} again: Secret {secret_name} could not be created, so nothing was made"
            ),
            Err(drop_error) => crate::note!(
                "role {name} exists in database {database} without a Secret ({drop_error}); `kubectl pg user delete {name} --release {release} --yes` removes it"
            ),
        }
            return Err(error);
        }
    };
    if let Some(code) = signals.received() {
        return take_back(created.metadata.uid.clone(), code).await;
    }
    let connection = DatabaseConnection::new(
        host,
        release::DATABASE_PORT,
        database.clone(),
        name.to_string(),
        request.password.clone(),
    )
    .with_plain_or_tls(tls)
    .masked();
    let document = UserDocument {
        api_version: API_VERSION,
        kind: "ApplicationUser",
        name: name.to_string(),
        release: release.clone(),
        namespace: ns.clone(),
        database: database.clone(),
        readonly: request.readonly,
        secret: secret_name.clone(),
        connection_string: connection.connection_string,
    };
    if let Some(text) = output::document(options.output, &document)? {
        emit(&text);
        return Ok(());
    }
    emit(&format!(
        "user {name} created in database {database} of release {release} ({}); its credentials are in Secret {secret_name}\n\
         connection string: kubectl pg dsn {release} -n {ns} --db-user {name}\n",
        access(request.readonly)
    ));
    Ok(())
}

fn access(readonly: bool) -> &'static str {
    if readonly {
        "readonly"
    } else {
        "readwrite"
    }
}

/// One application user as its Secret and the server know it.
#[derive(Debug, Clone, Serialize)]
struct UserItem {
    name: String,
    database: Option<String>,
    readonly: Option<bool>,
    /// The Secret's name, when it exists.
    secret: Option<String>,
    role_exists: bool,
    /// `ok`, `role missing` (a Secret whose role is gone) or `secret missing` (a role of ours
    /// without its Secret).
    state: &'static str,
}

/// `kind: UserList`
#[derive(Debug, Serialize)]
struct UserList {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    release: String,
    namespace: String,
    items: Vec<UserItem>,
}

async fn list(options: &UserOptions, global: &GlobalArgs) -> Result<(), Error> {
    let cluster = Cluster::connect(&global.connect_options()).await?;
    let located = kind::resolve(&cluster, options.release.as_deref()).await?;
    let release = located.name().to_string();
    let ns = cluster.namespace.clone();
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &ns);
    let params = ListParams::default().labels(&user_selector(&release));
    let (found, listed) = tokio::join!(located.admin(&cluster, "user"), secrets.list(&params));
    let found = found?;
    let listed = listed.map_err(|e| cluster.error("list", "secrets", e))?;
    let admin = session(
        &cluster,
        &located,
        &found,
        &found.target.credentials.database,
    )
    .await?;
    let server_roles = roles::our_roles(&admin).await?;
    let mut items: BTreeMap<String, UserItem> = BTreeMap::new();
    for secret in &listed.items {
        let labels = secret.metadata.labels.clone().unwrap_or_default();
        let Some(name) = labels.get(LABEL_USER) else {
            continue;
        };
        let values = release::secret_values(secret);
        items.insert(
            name.clone(),
            UserItem {
                name: name.clone(),
                database: values.get("database").cloned(),
                readonly: labels.get(LABEL_READONLY).map(|v| v == "true"),
                secret: secret.metadata.name.clone(),
                role_exists: false,
                state: "role missing",
            },
        );
    }
    for role in server_roles {
        let item = items.entry(role.name.clone()).or_insert_with(|| UserItem {
            name: role.name.clone(),
            database: role.database.clone(),
            readonly: role.readonly,
            secret: None,
            role_exists: false,
            state: "secret missing",
        });
        item.role_exists = true;
        if item.secret.is_some() {
            item.state = "ok";
        }
    }
    let items: Vec<UserItem> = items.into_values().collect();
    let document = UserList {
        api_version: API_VERSION,
        kind: "UserList",
        release: release.clone(),
        namespace: ns.clone(),
        items,
    };
    if let Some(text) = output::document(options.output, &document)? {
        emit(&text);
        return Ok(());
    }
    if document.items.is_empty() {
        crate::note!("No application users in release {release} (namespace {ns}): kubectl pg user create NAME --release {release}");
        return Ok(());
    }
    let dash = || "-".to_string();
    let rows = document
        .items
        .iter()
        .map(|u| {
            vec![
                u.name.clone(),
                u.database.clone().unwrap_or_else(dash),
                u.readonly.map_or_else(dash, |r| access(r).into()),
                u.secret.clone().unwrap_or_else(dash),
                if u.role_exists { "yes" } else { "no" }.into(),
                u.state.into(),
            ]
        })
        .collect();
    emit(&output::table(
        &["NAME", "DATABASE", "ACCESS", "SECRET", "ROLE", "STATE"],
        rows,
    ));
    for u in document.items.iter().filter(|u| u.state != "ok") {
        crate::note!(
            "warning: user {}: {} (kubectl pg user delete {} --release {release} removes what is left)",
            u.name,
            u.state,
            u.name
        );
    }
    Ok(())
}

/// `kind: UserDeletion`
#[derive(Debug, Serialize)]
struct DeletionDocument {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    name: String,
    release: String,
    namespace: String,
    role_dropped: bool,
    secret_deleted: Option<String>,
}

async fn delete(
    options: &UserOptions,
    name: &str,
    yes: bool,
    global: &GlobalArgs,
) -> Result<(), Error> {
    let UserScope {
        cluster,
        located,
        release,
        ns,
        secret_name,
        found,
        secret,
        superuser,
    } = UserScope::read(options, name, global).await?;
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &ns);
    if let Some(s) = &secret {
        let labelled = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_USER))
            .is_some_and(|u| u == name);
        if !release::made_for(&s.metadata, &release) || !labelled {
            return Err(Error::InvalidInput {
                message: format!(
                    "Secret {secret_name} is not the kubectl-pg Secret of user {name} in release {release}: nothing was deleted"
                ),
                hint: Some("it lacks the labels app.kubernetes.io/managed-by=kubectl-pg and kubectl-pg.io/user; delete it yourself if it is not needed".into()),
            });
        }
    }
    let release_db = found.target.credentials.database.clone();
    let admin = session(&cluster, &located, &found, &release_db).await?;
    let role = roles::find_role(&admin, name).await?;
    let drop_role = match &role {
        Some(r) => r.ours || secret.is_some(),
        None => false,
    };
    if role.is_some() && !drop_role {
        return Err(Error::InvalidInput {
            message: format!(
                "role {name:?} was not made by kubectl pg user create: nothing was deleted"
            ),
            hint: Some(
                "drop it yourself (kubectl pg psql, then DROP ROLE) if it is not needed".into(),
            ),
        });
    }
    if role.is_none() && secret.is_none() {
        return Err(Error::NotFound {
            message: format!("user {name} not found in release {release} (namespace {ns:?})"),
            hint: Some(format!("kubectl pg user list --release {release} -n {ns}")),
        });
    }
    // Every database the role owns objects or holds grants in is visited: one that accepts no
    // connections cannot be, and the role could not be dropped. Refused before any change.
    let mut databases = vec![release_db.clone()];
    if drop_role {
        let recorded = [
            secret
                .as_ref()
                .and_then(|s| release::secret_values(s).get("database").cloned()),
            role.as_ref().and_then(|r| r.database.clone()),
        ];
        for db in recorded.into_iter().flatten() {
            if !databases.contains(&db) && roles::database_exists(&admin, &db).await? {
                databases.push(db);
            }
        }
        let mut closed = Vec::new();
        for (db, open) in roles::dependent_databases(&admin, name).await? {
            if !open {
                closed.push(db);
            } else if !databases.contains(&db) {
                databases.push(db);
            }
        }
        if !closed.is_empty() {
            return Err(Error::InvalidInput {
                message: format!(
                    "role {name} owns objects or holds privileges in database(s) {} that accept no connections: nothing was changed",
                    closed.join(", ")
                ),
                hint: Some(format!(
                    "allow connections there for a while (ALTER DATABASE … ALLOW_CONNECTIONS true), or there run REASSIGN OWNED BY {name} TO {superuser}; DROP OWNED BY {name}; then run user delete again"
                )),
            });
        }
    }
    if !yes {
        let mut parts = Vec::new();
        if drop_role {
            parts.push(format!(
                "drop role {name} (what it owns in {} goes to {superuser})",
                databases.join(", ")
            ));
        }
        if secret.is_some() {
            parts.push(format!("delete Secret {secret_name}"));
        }
        crate::commands::confirm(&format!("{}?", parts.join(" and ")), "user delete")?;
    }
    if drop_role {
        // REASSIGN / DROP OWNED act in the session's database: each other one first, then the
        // release's, in one transaction with DROP ROLE, so a role that cannot be dropped keeps
        // its objects and grants there, and the failure is the command's.
        for db in &databases[1..] {
            let other = session(&cluster, &located, &found, db).await?;
            roles::run(
                &other,
                &format!("cannot take role {name}'s objects and grants away in database {db}"),
                &roles::release_objects_sql(name, &superuser),
            )
            .await?;
        }
        roles::run(
            &admin,
            &format!("cannot drop role {name}"),
            &roles::drop_user_sql(name, &superuser),
        )
        .await
        .map_err(|e| match e {
            Error::Database { context, message } => Error::Database {
                context,
                message: format!("{message}; role {name} and Secret {secret_name} are kept"),
            },
            other => other,
        })?;
    }
    let mut secret_deleted = None;
    if let Some(s) = &secret {
        match secrets
            .delete(&secret_name, &release::delete_only(s.metadata.uid.clone()))
            .await
        {
            Ok(_) => secret_deleted = Some(secret_name.clone()),
            Err(kube::Error::Api(s)) if s.code == 404 => secret_deleted = Some(secret_name.clone()),
            Err(e) => {
                if drop_role {
                    crate::note!("role {name} was dropped, but its Secret {secret_name} is left");
                }
                return Err(cluster.error("delete", "secrets", e));
            }
        }
    }
    let document = DeletionDocument {
        api_version: API_VERSION,
        kind: "UserDeletion",
        name: name.to_string(),
        release: release.clone(),
        namespace: ns.clone(),
        role_dropped: drop_role,
        secret_deleted: secret_deleted.clone(),
    };
    if let Some(text) = output::document(options.output, &document)? {
        emit(&text);
        return Ok(());
    }
    let mut done = Vec::new();
    if drop_role {
        done.push(format!("role {name} dropped"));
    }
    if let Some(s) = secret_deleted {
        done.push(format!("Secret {s} deleted"));
    }
    emit(&format!(
        "user {name} deleted from release {release}: {}\n",
        done.join(", ")
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn databases_for_users() {
        assert!(validate_database("learnflow").is_ok());
        assert!(validate_database("template1").is_err());
        assert!(validate_database("").is_err());
        assert!(validate_database("a\nb").is_err());
        assert_eq!(
            user_selector("pg"),
            "app.kubernetes.io/instance=pg,app.kubernetes.io/managed-by=kubectl-pg,kubectl-pg.io/user"
        );
    }
}
