//! A kubeconfig's exec credential plugin (`aws eks get-token`, `gke-gcloud-auth-plugin`,
//! kubelogin), run once per command and within a deadline. kube runs it each time it needs the
//! credential (three times while building a client), which costs seconds with cloud CLIs, and
//! waits for it forever.

use std::process::Stdio;
use std::time::Duration;

use kube::config::{AuthInfo, ExecConfig, ExecInteractiveMode};
use serde::{Deserialize, Serialize};

/// How long the plugin may take when `--request-timeout` is not given.
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Serialize)]
struct ExecInfo<'a> {
    #[serde(rename = "apiVersion", skip_serializing_if = "Option::is_none")]
    api_version: Option<&'a str>,
    kind: &'static str,
    spec: ExecSpec<'a>,
}

#[derive(Serialize)]
struct ExecSpec<'a> {
    interactive: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<&'a kube::config::ExecAuthCluster>,
}

/// The plugin's answer (client.authentication.k8s.io ExecCredential).
#[derive(Deserialize)]
struct Credential {
    status: Option<Status>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    token: Option<String>,
    client_certificate_data: Option<String>,
    client_key_data: Option<String>,
}

/// Runs the plugin of `auth` once, if it has one, and puts what it returned in place of it, so
/// the client built from `auth` never runs it again. A plugin that fails, answers nonsense or
/// outlives `timeout` is an error naming the command, with its own stderr.
pub async fn resolve(auth: &mut AuthInfo, timeout: Option<Duration>) -> Result<(), String> {
    let Some(exec) = auth.exec.take() else {
        return Ok(());
    };
    let command = exec
        .command
        .clone()
        .ok_or("the kubeconfig user's exec plugin names no command")?;
    let stdout = run(&exec, &command, timeout).await?;
    let credential: Credential = serde_saphyr::from_slice(&stdout).map_err(|e| {
        format!(
            "credential plugin {command:?} printed no ExecCredential: {}",
            first_line(&e.to_string())
        )
    })?;
    let status = credential
        .status
        .ok_or_else(|| format!("credential plugin {command:?} returned no status"))?;
    match (
        status.client_certificate_data,
        status.client_key_data,
        status.token,
    ) {
        (Some(cert), Some(key), _) => {
            // The kubeconfig fields hold base64 of the PEM; the plugin returns the PEM itself.
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD;
            auth.client_certificate_data = Some(b64.encode(cert));
            auth.client_key_data = Some(b64.encode(key).into());
            auth.client_certificate = None;
            auth.client_key = None;
        }
        (_, _, Some(token)) => auth.token = Some(token.into()),
        _ => {
            return Err(format!(
                "credential plugin {command:?} returned neither a token nor a client certificate"
            ))
        }
    }
    Ok(())
}

async fn run(
    exec: &ExecConfig,
    command: &str,
    timeout: Option<Duration>,
) -> Result<Vec<u8>, String> {
    // Found as kubectl finds it: on Windows `aws` is also `aws.cmd` (PATHEXT), which the
    // standard library's own lookup (`.exe` only) would miss.
    let program = crate::platform::find_program(command).unwrap_or_else(|| command.into());
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(exec.args.iter().flatten());
    for pair in exec.env.iter().flatten() {
        if let (Some(name), Some(value)) = (pair.get("name"), pair.get("value")) {
            cmd.env(name, value);
        }
    }
    for name in exec.drop_env.iter().flatten() {
        cmd.env_remove(name);
    }
    let interactive = exec.interactive_mode != Some(ExecInteractiveMode::Never);
    let info = ExecInfo {
        api_version: exec.api_version.as_deref(),
        kind: "ExecCredential",
        spec: ExecSpec {
            interactive,
            cluster: exec.cluster.as_ref().filter(|_| exec.provide_cluster_info),
        },
    };
    cmd.env(
        "KUBERNETES_EXEC_INFO",
        serde_json::to_string(&info).unwrap_or_default(),
    );
    // An interactive plugin may prompt on the terminal; a non-interactive one gets no stdin,
    // and its stderr is kept for the error message.
    cmd.stdin(if interactive {
        Stdio::inherit()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(if interactive {
        Stdio::inherit()
    } else {
        Stdio::piped()
    })
    .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| {
        let hint = exec
            .install_hint
            .as_deref()
            .map(|h| format!(" ({})", first_line(h)))
            .unwrap_or_default();
        format!("cannot run credential plugin {command:?}: {e}{hint}")
    })?;
    let output = match timeout {
        Some(limit) => tokio::time::timeout(limit, child.wait_with_output())
            .await
            .map_err(|_| {
                format!("credential plugin {command:?} did not answer within {limit:?}")
            })?,
        None => child.wait_with_output().await,
    }
    .map_err(|e| format!("credential plugin {command:?} failed: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let said = stderr.trim();
        return Err(if said.is_empty() {
            format!("credential plugin {command:?} failed ({})", output.status)
        } else {
            format!("credential plugin {command:?} failed: {}", first_line(said))
        });
    }
    Ok(output.stdout)
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("").trim()
}
