//! Running a command in a release's pod (kubectl exec through the API), for the few jobs
//! that must happen inside it, like setting a password over the local socket.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams};
use std::time::Duration;

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
    let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
    let mut stdout = Vec::new();
    let outcome = stream(
        cluster,
        namespace,
        pod,
        container,
        &command,
        Some(stdin.as_bytes()),
        |chunk: &[u8]| {
            stdout.extend_from_slice(chunk);
            Ok(())
        },
    )
    .await?;
    let message = if outcome.success {
        None
    } else if outcome.completed {
        outcome.message.clone()
    } else {
        Some(outcome.reason())
    };
    Ok(ExecOutput {
        success: outcome.success,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: outcome.stderr,
        message,
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
    /// There was input, and the command stopped before all of it was sent.
    pub input_cut: bool,
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
        if !self.completed && self.input_cut {
            // The API server closes the stream when the command exits; input still on its way
            // then resets the connection, and the command's last words are lost with it.
            return "the command stopped reading its input before the end, and the stream closed before its exit status and message arrived (the command failed early)".into();
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

/// How long the pieces of a stream still buffered may take to be read once the stream's task
/// has ended: they are in memory, so this only bounds a task that ended without closing them.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Runs `command` in the pod with `input` (if any) on its stdin and every chunk of its stdout
/// handed to `sink` as it arrives: nothing is collected, so memory stays bounded whatever the
/// size. Success needs the status channel's Success: a stream cut before it is a failure.
///
/// Nothing here waits on a side that has gone: a sink or input error ends the call at once
/// (dropping the stream closes the WebSocket, which kills the remote command), and a command
/// that exits without reading all its input ends the feeding. kube's pipes are simplex
/// buffers that only a shutdown closes, and its task does not shut them when it fails or is
/// aborted, so every wait below is tied to the task's end rather than to an end of file.
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
    let has_input = input.is_some();
    let mut params = AttachParams::default()
        .container(container)
        .stdin(has_input)
        .stdout(true)
        .stderr(true);
    // Larger pipes than kube's 1 KiB default: fewer wake-ups per megabyte.
    params.max_stdin_buf_size = Some(CHUNK);
    params.max_stdout_buf_size = Some(CHUNK);
    params.max_stderr_buf_size = Some(STDERR_KEPT);
    let mut process = start(cluster, namespace, pod, command.to_vec(), &params).await?;
    let status = process.take_status();
    let stdin = process.stdin();
    let out = process.stdout();
    let err = process.stderr();
    // The process lives in this future from here on: dropping it (any early return) aborts
    // the stream's task, which closes the WebSocket and so ends the remote command.
    let task = process.join();
    let write = feed(input, stdin);
    let read_out = async {
        let mut total = 0u64;
        if let Some(mut r) = out {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        sink(&buf[..n])?;
                        total += n as u64;
                    }
                }
            }
        }
        Ok::<u64, std::io::Error>(total)
    };
    let read_err = tail(err);
    tokio::pin!(task, write, read_out, read_err);
    let mut sent = None;
    let mut received = None;
    let mut stderr = None;
    let mut ended = false;
    let grace = tokio::time::sleep(Duration::MAX);
    tokio::pin!(grace);
    loop {
        // Done when both outputs ended and the input is fed, or no longer wanted (the command
        // ended, whether or not it read everything).
        if received.is_some() && stderr.is_some() && (sent.is_some() || ended) {
            break;
        }
        tokio::select! {
            r = &mut write, if sent.is_none() && !ended => {
                sent = Some(r.map_err(|source| Error::Io {
                    context: "cannot read the input".into(),
                    source,
                })?);
            }
            r = &mut read_out, if received.is_none() => {
                received = Some(r.map_err(|source| Error::Io {
                    context: "cannot write the output".into(),
                    source,
                })?);
            }
            s = &mut read_err, if stderr.is_none() => stderr = Some(s),
            _ = &mut task, if !ended => {
                ended = true;
                grace.as_mut().reset(tokio::time::Instant::now() + DRAIN_GRACE);
            }
            _ = &mut grace => break,
        }
    }
    // The task has sent the status, or dropped its sender, by the time its pipes are closed;
    // a task still running after the grace has neither, so its absence is not waited for.
    let status = match status {
        Some(s) => tokio::time::timeout(DRAIN_GRACE, s).await.ok().flatten(),
        None => None,
    };
    let success = status
        .as_ref()
        .is_some_and(|s| s.status.as_deref() == Some("Success"));
    Ok(StreamOutcome {
        success,
        completed: status.is_some(),
        stderr: stderr.unwrap_or_default(),
        message: status.filter(|_| !success).and_then(|s| s.message),
        bytes_out: received.unwrap_or_default(),
        bytes_in: sent.unwrap_or_default(),
        input_cut: has_input && sent.is_none(),
    })
}

/// Copies `input` to the command's stdin, then closes it. A command that stops reading (it
/// failed) leaves the copy blocked: the caller stops waiting for it when the stream ends.
async fn feed<I, W>(input: Option<I>, stdin: Option<W>) -> std::io::Result<u64>
where
    I: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut sent = 0u64;
    if let (Some(mut reader), Some(mut w)) = (input, stdin) {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            if w.write_all(&buf[..n]).await.is_err() {
                break;
            }
            sent += n as u64;
        }
        // The end of the input, told to the command as an end of file. A cut input never
        // reaches here: its error returned above, and the stream is dropped with it.
        let _ = w.shutdown().await;
    }
    Ok(sent)
}

/// The last [`STDERR_KEPT`] bytes of a stream.
async fn tail<R: tokio::io::AsyncRead + Unpin>(err: Option<R>) -> String {
    let mut kept: Vec<u8> = Vec::new();
    if let Some(mut r) = err {
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
}
