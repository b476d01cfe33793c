//! Running a command in a release's pod (kubectl exec through the API), for the few jobs
//! that must happen inside it, like setting a password over the local socket.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::access::{chain, Cluster};
use crate::error::Error;

/// What a command printed and how it ended.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
    /// The kubelet's status message on failure.
    pub message: Option<String>,
}

impl ExecOutput {
    /// Why it failed: the command's own words (stderr), else the kubelet's status.
    pub fn reason(&self) -> String {
        Some(self.stderr.trim().to_string())
            .filter(|e| !e.is_empty())
            .or_else(|| self.message.clone())
            .unwrap_or_else(|| "the command failed".into())
    }
}

/// Runs `command` in `container` of `pod`, feeding `stdin`; the command line never carries
/// secrets, stdin does.
pub async fn run(
    cluster: &Cluster,
    namespace: &str,
    pod: &str,
    container: &str,
    command: &[&str],
    stdin: &str,
) -> Result<ExecOutput, Error> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
    let params = AttachParams::default()
        .container(container)
        .stdin(true)
        .stdout(true)
        .stderr(true);
    let mut process = pods
        .exec(
            pod,
            command.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            &params,
        )
        .await
        .map_err(|e| match e {
            kube::Error::Api(_) => cluster.error("create", "pods/exec", e),
            other => Error::Api {
                action: format!("exec in pod {namespace}/{pod}"),
                message: chain(&other),
            },
        })?;
    let status = process.take_status();
    let mut input = process.stdin();
    let mut out = process.stdout();
    let mut err = process.stderr();
    let write = async {
        if let Some(w) = input.as_mut() {
            let _ = w.write_all(stdin.as_bytes()).await;
            let _ = w.shutdown().await;
        }
        drop(input.take());
    };
    let read_out = async {
        let mut text = String::new();
        if let Some(r) = out.as_mut() {
            let _ = r.read_to_string(&mut text).await;
        }
        text
    };
    let read_err = async {
        let mut text = String::new();
        if let Some(r) = err.as_mut() {
            let _ = r.read_to_string(&mut text).await;
        }
        text
    };
    let ((), stdout, stderr) = tokio::join!(write, read_out, read_err);
    let status = match status {
        Some(s) => s.await,
        None => None,
    };
    let _ = process.join().await;
    let success = status
        .as_ref()
        .is_some_and(|s| s.status.as_deref() == Some("Success"));
    Ok(ExecOutput {
        success,
        stdout,
        stderr,
        message: status.filter(|_| !success).and_then(|s| s.message),
    })
}
