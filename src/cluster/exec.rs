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

/// Opens the exec stream; RBAC refusals name the verb and resource, as every API error does.
async fn start(
    cluster: &Cluster,
    namespace: &str,
    pod: &str,
    command: Vec<String>,
    params: &AttachParams,
) -> Result<kube::api::AttachedProcess, Error> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
    pods.exec(pod, command, params).await.map_err(|e| match e {
        kube::Error::Api(_) => cluster.error("create", "pods/exec", e),
        other => Error::Api {
            action: format!("exec in pod {namespace}/{pod}"),
            message: chain(&other),
        },
    })
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
    let params = AttachParams::default()
        .container(container)
        .stdin(true)
        .stdout(true)
        .stderr(true);
    let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
    let mut process = start(cluster, namespace, pod, command, &params).await?;
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

/// How a streamed command ended: the status channel's verdict and the tail of its stderr.
#[derive(Debug, Clone)]
pub struct StreamOutcome {
    /// The status channel said Success: the command exited 0.
    pub success: bool,
    /// The stream ended with the status channel's message (not cut off before it).
    pub completed: bool,
    /// The last [`STDERR_KEPT`] bytes of the command's stderr.
    pub stderr: String,
    /// The kubelet's status message on failure (`command terminated with exit code 1`).
    pub message: Option<String>,
    /// The bytes that reached the sink.
    pub bytes_out: u64,
    /// The bytes sent to the command's stdin.
    pub bytes_in: u64,
}

impl StreamOutcome {
    /// Why it failed: the command's own words, else the kubelet's, else a dropped stream.
    pub fn reason(&self) -> String {
        let stderr = self.stderr.trim();
        if !stderr.is_empty() {
            return stderr.to_string();
        }
        if let Some(m) = &self.message {
            return m.clone();
        }
        if !self.completed {
            return "the stream from the pod ended before the command reported its exit status (connection lost)".into();
        }
        "the command failed".into()
    }
}

/// How much of a streamed command's stderr is kept: its last words are what explain a failure,
/// and memory stays bounded however much it writes.
pub const STDERR_KEPT: usize = 64 * 1024;
/// The read size of streamed output.
const CHUNK: usize = 256 * 1024;

/// Runs `command` in the pod with `input` (if any) on its stdin and every chunk of its stdout
/// handed to `sink` as it arrives: nothing is collected, so memory stays bounded whatever the
/// size. A sink error stops the transfer (the remote command is killed when the stream
/// closes). Success needs the status channel's Success: a stream cut before it is a failure.
pub async fn stream<I, S>(
    cluster: &Cluster,
    namespace: &str,
    pod: &str,
    container: &str,
    command: &[String],
    input: Option<I>,
    mut sink: S,
) -> Result<StreamOutcome, Error>
where
    I: tokio::io::AsyncRead + Unpin,
    S: FnMut(&[u8]) -> std::io::Result<()>,
{
    let mut params = AttachParams::default()
        .container(container)
        .stdin(input.is_some())
        .stdout(true)
        .stderr(true);
    // Larger pipes than kube's 1 KiB default: fewer wake-ups per megabyte.
    params.max_stdin_buf_size = Some(CHUNK);
    params.max_stdout_buf_size = Some(CHUNK);
    params.max_stderr_buf_size = Some(STDERR_KEPT);
    let mut process = start(cluster, namespace, pod, command.to_vec(), &params).await?;
    let status = process.take_status();
    let mut stdin = process.stdin();
    let mut out = process.stdout();
    let mut err = process.stderr();
    // Stopping the message loop closes the stream: the remote command is killed, and the
    // readers see the end. A cut input must never reach the command as a clean end of file.
    let process = &process;
    let write = async {
        let mut sent = 0u64;
        if let (Some(mut reader), Some(w)) = (input, stdin.as_mut()) {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = match reader.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        process.abort();
                        return Err(e);
                    }
                };
                if w.write_all(&buf[..n]).await.is_err() {
                    // The command stopped reading (it failed): its status says why.
                    break;
                }
                sent += n as u64;
            }
            let _ = w.shutdown().await;
        }
        drop(stdin.take());
        Ok(sent)
    };
    let read_out = async {
        let mut total = 0u64;
        if let Some(r) = out.as_mut() {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if let Err(e) = sink(&buf[..n]) {
                            process.abort();
                            return Err(e);
                        }
                        total += n as u64;
                    }
                }
            }
        }
        Ok::<u64, std::io::Error>(total)
    };
    let read_err = async {
        let mut kept: Vec<u8> = Vec::new();
        if let Some(r) = err.as_mut() {
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = r.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > STDERR_KEPT {
                    kept.drain(..kept.len() - STDERR_KEPT);
                }
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    };
    let (sent, received, stderr) = tokio::join!(write, read_out, read_err);
    let sent = sent.map_err(|source| Error::Io {
        context: "cannot read the input".into(),
        source,
    })?;
    let received = received.map_err(|source| Error::Io {
        context: "cannot write the output".into(),
        source,
    })?;
    let status = match status {
        Some(s) => s.await,
        None => None,
    };
    let success = status
        .as_ref()
        .is_some_and(|s| s.status.as_deref() == Some("Success"));
    Ok(StreamOutcome {
        success,
        completed: status.is_some(),
        stderr,
        message: status.filter(|_| !success).and_then(|s| s.message),
        bytes_out: received,
        bytes_in: sent,
    })
}
