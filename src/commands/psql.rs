//! `kubectl pg psql`: an interactive psql in the release's pod through `kubectl exec`, or a
//! local psql through an in-process port-forward (`--local`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::Stdio;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

use crate::cli::{GlobalArgs, PsqlArgs};
use crate::cluster::release::{self, Target};
use crate::cluster::Cluster;
use crate::database::roles;
use crate::deployment::kind;
use crate::error::Error;
use crate::manifests::render::CONTAINER;

pub async fn run(args: PsqlArgs, global: &GlobalArgs) -> Result<(), Error> {
    let cluster = Cluster::connect(&global.connect_options()).await?;
    let release = kind::resolve(&cluster, args.release.as_deref()).await?;
    let mut target = if args.replica {
        release.reader(&cluster).await?
    } else {
        release.target(&cluster).await?
    };
    let code = if args.local {
        run_local(&cluster, &target, &args.psql_args).await?
    } else {
        target.credentials.username = release.socket_roles(&target).0;
        let kubectl = kubectl_path()?;
        let argv = exec_argv(
            global,
            &cluster.namespace,
            &target,
            &args.psql_args,
            std::io::stdin().is_terminal(),
        );
        let status = tokio::process::Command::new(&kubectl)
            .args(&argv)
            .status()
            .await
            .map_err(|source| Error::Io {
                context: format!("cannot run {}", kubectl.display()),
                source,
            })?;
        status.code().unwrap_or(1)
    };
    match code {
        0 => Ok(()),
        code => Err(Error::Exit(u8::try_from(code).unwrap_or(1))),
    }
}

/// kubectl from `KUBECTL_PATH` (set by kubectl 1.37+ for its plugins), else from `PATH`.
fn kubectl_path() -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os("KUBECTL_PATH").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    crate::platform::find_program("kubectl").ok_or_else(|| Error::InvalidInput {
        message: "kubectl not found on PATH".into(),
        hint: Some(
            "install kubectl, set KUBECTL_PATH, or use `kubectl pg psql --local` with a local psql"
                .into(),
        ),
    })
}

/// Whether the user's psql arguments already choose the user or database.
fn has_flag(args: &[String], short: &str, long: &str) -> bool {
    args.iter().take_while(|a| *a != "--").any(|a| {
        a == short
            || a.starts_with(&format!("{long}="))
            || a == long
            || (a.starts_with(short) && a.len() > 2)
    })
}

/// The role psql's own arguments name (`-U NAME`, `-UNAME`, `--username[=]NAME`), if any.
fn named_user(args: &[String]) -> Option<String> {
    let mut args = args.iter().take_while(|a| *a != "--");
    let mut named = None;
    while let Some(arg) = args.next() {
        if arg == "-U" || arg == "--username" {
            named = args.next().cloned();
        } else if let Some(user) = arg.strip_prefix("--username=") {
            named = Some(user.to_string());
        } else if let Some(user) = arg.strip_prefix("-U").filter(|u| !u.is_empty()) {
            named = Some(user.to_string());
        }
    }
    named
}

/// `kubectl <connection flags> -n N exec -i [-t] POD -c postgres -- psql -U user -d db ARGS`.
pub fn exec_argv(
    global: &GlobalArgs,
    namespace: &str,
    target: &Target,
    psql_args: &[String],
    tty: bool,
) -> Vec<String> {
    let mut argv = Vec::new();
    let mut flag = |name: &str, value: &Option<String>| {
        if let Some(v) = value {
            argv.push(format!("--{name}={v}"));
        }
    };
    flag(
        "kubeconfig",
        &global.kubeconfig.as_ref().map(|p| p.display().to_string()),
    );
    flag("context", &global.context);
    flag("cluster", &global.cluster);
    flag("user", &global.user);
    flag("as", &global.as_user);
    for group in &global.as_group {
        argv.push(format!("--as-group={group}"));
    }
    if let Some(t) = global.request_timeout {
        // Whole milliseconds, so 500ms stays 500ms (as whole seconds it became 0s: no timeout).
        argv.push(format!("--request-timeout={}ms", t.as_millis()));
    }
    argv.extend([
        "--namespace".into(),
        namespace.into(),
        "exec".into(),
        "-i".into(),
    ]);
    if tty {
        argv.push("-t".into());
    }
    argv.extend([
        target.pod.clone(),
        "-c".into(),
        CONTAINER.into(),
        "--".into(),
        "psql".into(),
    ]);
    if !has_flag(psql_args, "-U", "--username") {
        argv.extend(["-U".into(), target.credentials.username.clone()]);
    }
    if !has_flag(psql_args, "-d", "--dbname") {
        argv.extend([
            "-d".into(),
            crate::database::connection::dbname_argument(&target.credentials.database),
        ]);
    }
    argv.extend(psql_args.iter().cloned());
    argv
}

/// Runs the local psql against a loopback port that tunnels each connection to the pod.
async fn run_local(cluster: &Cluster, target: &Target, psql_args: &[String]) -> Result<i32, Error> {
    let psql = crate::platform::find_program("psql").ok_or_else(|| Error::InvalidInput {
        message: "psql not found on PATH (needed by --local)".into(),
        hint: Some(
            "install the PostgreSQL client (apt-get install postgresql-client), or drop --local"
                .into(),
        ),
    })?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|source| Error::Io {
            context: "cannot listen on a loopback port".into(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| Error::Io {
        context: "cannot read the loopback port".into(),
        source,
    })?;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &target.namespace);
    let (pod, port) = (target.pod.clone(), target.port);
    let forwarding = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let pods = pods.clone();
            let pod = pod.clone();
            tokio::spawn(async move {
                let Ok(mut forwarder) = pods.portforward(&pod, &[port]).await else {
                    return;
                };
                if let Some(mut stream) = forwarder.take_stream(port) {
                    let _ = tokio::io::copy_bidirectional(&mut socket, &mut stream).await;
                }
                let _ = forwarder.join().await;
            });
        }
    });
    // Ctrl-C reaches psql and us alike (one process group). psql answers it with a cancel
    // request, which comes through this tunnel, and keeps its session: so we must outlive it,
    // as kubectl exec does.
    let _outlive = super::outlive_ctrl_c().ok();
    let c = &target.credentials;
    // `-U NAME` of another role: that user's own password from its Secret, or none (psql
    // asks): the superuser's password is never sent for another role.
    let own = match named_user(psql_args).filter(|u| *u != c.username) {
        None => Some(c.clone()),
        Some(user) => {
            let found = match roles::validate_user_name_syntax(&user) {
                Ok(()) => release::app_user_credentials(cluster, &target.release, &user)
                    .await
                    .map(Some)
                    .or_else(|e| match e {
                        Error::NotFound { .. } => Ok(None),
                        e => Err(e),
                    })?,
                Err(_) => None,
            };
            if found.is_none() {
                crate::note!("no kubectl-pg Secret for user {user}: psql asks for its password");
            }
            found
        }
    };
    let mut command = tokio::process::Command::new(psql);
    command
        .args(psql_args)
        .env("PGHOST", local.ip().to_string())
        .env("PGPORT", local.port().to_string())
        .env("PGUSER", &c.username)
        .env(
            "PGDATABASE",
            own.as_ref().map_or(&c.database, |own| &own.database),
        )
        .env("PGSSLMODE", "disable")
        .stdin(Stdio::inherit());
    if let Some(own) = &own {
        // In the environment, never on a command line where `ps` would show it.
        command.env("PGPASSWORD", &own.password);
    }
    let status = command.status().await.map_err(|source| Error::Io {
        context: "cannot run psql".into(),
        source,
    })?;
    forwarding.abort();
    Ok(status.code().unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::release::Credentials;

    fn target() -> Target {
        Target {
            release: "pg".into(),
            namespace: "db".into(),
            pod: "pg-0".into(),
            port: 5432,
            credentials: Credentials {
                username: "app".into(),
                password: "secret".into(),
                database: "learnflow".into(),
                host: None,
                port: None,
            },
        }
    }

    #[test]
    fn forwards_every_connection_flag() {
        use clap::Parser;
        let cli = crate::cli::Cli::parse_from([
            "kubectl-pg",
            "psql",
            "--kubeconfig",
            "/k",
            "--context",
            "c",
            "--cluster",
            "cl",
            "--user",
            "u",
            "--as",
            "a",
            "--as-group",
            "g1",
            "--as-group",
            "g2",
            "-n",
            "db",
        ]);
        let argv = exec_argv(&cli.global, "db", &target(), &[], false).join(" ");
        assert_eq!(
            argv,
            "--kubeconfig=/k --context=c --cluster=cl --user=u --as=a --as-group=g1 --as-group=g2 \
             --namespace db exec -i pg-0 -c postgres -- psql -U app -d learnflow"
        );
        assert!(!argv.contains("secret"));
    }

    #[test]
    fn user_psql_flags_win() {
        use clap::Parser;
        let cli = crate::cli::Cli::parse_from(["kubectl-pg", "psql"]);
        let args: Vec<String> = ["-Uother", "--dbname=x", "-c", "select 1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let argv = exec_argv(&cli.global, "db", &target(), &args, true).join(" ");
        assert!(
            argv.ends_with("exec -i -t pg-0 -c postgres -- psql -Uother --dbname=x -c select 1"),
            "{argv}"
        );
    }

    #[test]
    fn the_user_psql_is_asked_for() {
        let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for (given, named) in [
            (&["-U", "app_ro"][..], Some("app_ro")),
            (&["-c", "select 1", "-Uapp_ro"][..], Some("app_ro")),
            (&["--username", "app_ro"][..], Some("app_ro")),
            (&["--username=app_ro", "-d", "x"][..], Some("app_ro")),
            (&["-d", "x", "-c", "select 1"][..], None),
            (&["-c", "-- -U x"][..], None),
        ] {
            assert_eq!(named_user(&args(given)).as_deref(), named, "{given:?}");
        }
    }

    #[test]
    fn request_timeout_reaches_kubectl_exactly() {
        use clap::Parser;
        let cli = crate::cli::Cli::parse_from(["kubectl-pg", "psql", "--request-timeout", "500ms"]);
        let argv = exec_argv(&cli.global, "db", &target(), &[], false);
        assert!(
            argv.contains(&"--request-timeout=500ms".to_string()),
            "{argv:?}"
        );
    }
}
