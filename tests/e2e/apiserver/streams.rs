//! The streaming subresources of a pod, spoken over WebSockets exactly as a 1.30–1.34 API server
//! in front of a containerd kubelet speaks them: `pods/exec` (and attach-style sessions) with the
//! `channel.k8s.io` sub-protocols v1–v5, and `pods/portforward` with `v4.channel.k8s.io`.
//!
//! The caller completes the HTTP upgrade (see [`negotiate_exec_protocol`] and
//! [`negotiate_portforward_protocol`] for the `Sec-WebSocket-Protocol` answer) and hands the
//! WebSocket over.
//!
//! Wire format (`k8s.io/apimachinery/pkg/util/httpstream/wsstream`): every message is a binary
//! frame whose first byte is the channel; the `base64.` variants use text frames whose first
//! character is `'0' + channel` followed by the base64 of the payload.
//!
//! Exec channels: 0 stdin, 1 stdout, 2 stderr, 3 error/status, 4 resize (JSON
//! `{"Width":w,"Height":h}`). The server first sends an empty frame on the lowest writable channel
//! (stdout, else stderr, else error) to tell the client the streams are up. v5 adds the client's
//! half-close signal `[255, channel]`. At the end, v4/v5 write a JSON `metav1.Status` on channel 3
//! (v1–v3: the failure message as text, nothing on success), then close with code 1000.
//!
//! Port-forward channels: port i uses data channel 2i and error channel 2i+1; the server first
//! writes the port as two little-endian bytes on both. One WebSocket carries one TCP connection
//! per port; an error (say, connection refused) is written as text on the error channel.

use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// What to run for one `pods/exec` session, and which streams the request asked for.
#[derive(Clone, Debug)]
pub struct ExecSpec {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
    /// The environment the command sees, as inside the container (PGHOST, PGPORT, POSTGRES_*,
    /// PATH with the PostgreSQL bindir first).
    pub env: Vec<(String, String)>,
    /// Run the command as the unprivileged `postgres` user (only possible when the test runs as
    /// root; otherwise the command runs as the current user).
    pub run_as_service: bool,
}

pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";
pub const V4_BASE64: &str = "v4.base64.channel.k8s.io";
pub const V1: &str = "channel.k8s.io";
pub const V1_BASE64: &str = "base64.channel.k8s.io";

/// The sub-protocol to answer an exec/attach upgrade with, from the request's
/// `Sec-WebSocket-Protocol` header (a comma-separated list, in the client's order).
///
/// A request offering `v5.channel.k8s.io` is served by the API server itself, which only speaks
/// v5; anything else is proxied to the kubelet, which picks the first offered protocol it knows
/// (`channel.k8s.io`, `base64.channel.k8s.io`, `v4.channel.k8s.io`, `v4.base64.channel.k8s.io`).
/// `Some("")`: no header was sent; upgrade without a `Sec-WebSocket-Protocol` header (v1 rules).
/// `None`: nothing acceptable; the real server answers `403 Forbidden` without upgrading.
#[allow(dead_code)]
pub fn negotiate_exec_protocol(requested: Option<&str>) -> Option<&'static str> {
    let offered = offered_protocols(requested);
    if offered.is_empty() {
        return Some("");
    }
    if offered.contains(&V5) {
        return Some(V5);
    }
    let kubelet = [V1, V1_BASE64, V4, V4_BASE64];
    offered
        .iter()
        .find_map(|p| kubelet.iter().find(|k| *k == p).copied())
}

/// The sub-protocol to answer a port-forward upgrade with: the kubelet's WebSocket port-forward
/// knows `v4.channel.k8s.io` and `v4.base64.channel.k8s.io` (kube-rs offers v5 then v4 and gets
/// v4). `Some("")`: no header (binary). `None`: answer `403 Forbidden`; that includes kubectl's
/// `SPDY/3.1+portforward.k8s.io` tunnelling, which is not implemented here (kubectl then falls
/// back to a plain SPDY upgrade, which the test server should refuse as well).
#[allow(dead_code)]
pub fn negotiate_portforward_protocol(requested: Option<&str>) -> Option<&'static str> {
    let offered = offered_protocols(requested);
    if offered.is_empty() {
        return Some("");
    }
    let kubelet = [V4, V4_BASE64];
    offered
        .iter()
        .find_map(|p| kubelet.iter().find(|k| *k == p).copied())
}

fn offered_protocols(requested: Option<&str>) -> Vec<&str> {
    requested
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const EXEC_CHANNELS: u8 = 5;
const STREAM_CLOSE: u8 = 255;

/// After the command exited, how long output may pause before the session ends anyway (a
/// background child that inherited stdout would otherwise hold it open forever).
const DRAIN_IDLE: Duration = Duration::from_secs(2);
/// After the client went away, how long the command may run on before it is killed.
const ORPHAN_GRACE: Duration = Duration::from_secs(10);
/// How long to wait for the client's answer to our close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Frame codec of the negotiated sub-protocol.
#[derive(Clone, Copy)]
struct Wire {
    base64: bool,
}

enum Inbound {
    Data(u8, Vec<u8>),
    /// v5 half-close of a channel.
    CloseChannel(u8),
    /// A malformed close signal: the real server stops serving the connection.
    Broken,
    Ignore,
}

impl Wire {
    fn for_protocol(protocol: &str) -> Self {
        Wire {
            base64: protocol.contains("base64"),
        }
    }

    fn frame(self, channel: u8, data: &[u8]) -> Message {
        if self.base64 {
            let mut text = String::with_capacity(1 + data.len().div_ceil(3) * 4);
            text.push(char::from(b'0' + channel));
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
            Message::text(text)
        } else {
            let mut bytes = Vec::with_capacity(data.len() + 1);
            bytes.push(channel);
            bytes.extend_from_slice(data);
            Message::binary(bytes)
        }
    }

    fn decode(self, message: &Message, stream_close: bool) -> Inbound {
        let raw: &[u8] = match message {
            Message::Binary(b) => b,
            Message::Text(t) => t.as_bytes(),
            _ => return Inbound::Ignore,
        };
        let Some((&first, rest)) = raw.split_first() else {
            return Inbound::Ignore;
        };
        if stream_close && first == STREAM_CLOSE {
            return match rest {
                [channel] => Inbound::CloseChannel(*channel),
                _ => Inbound::Broken,
            };
        }
        if self.base64 {
            match base64::engine::general_purpose::STANDARD.decode(rest) {
                Ok(data) => Inbound::Data(first.wrapping_sub(b'0'), data),
                Err(_) => Inbound::Ignore,
            }
        } else {
            Inbound::Data(first, rest.to_vec())
        }
    }
}

/// Sends a normal (1000) close and waits, bounded, for the client's answer or EOF.
async fn close_normally<S>(ws: &mut WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    if ws.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// exec

/// How a JSON status is worded: by the kubelet (v4, proxied), or by the API server's v5
/// WebSocket-to-SPDY translator, which re-wraps what the kubelet said. v1–v3 send the kubelet's
/// message as plain text, and nothing on success.
#[derive(Clone, Copy, PartialEq, Eq)]
enum StatusStyle {
    Text,
    Kubelet,
    Translated,
}

impl StatusStyle {
    fn for_protocol(protocol: &str) -> Self {
        if protocol == V5 {
            StatusStyle::Translated
        } else if protocol.starts_with("v4.") {
            StatusStyle::Kubelet
        } else {
            StatusStyle::Text
        }
    }
}

enum ExecEnd {
    Exited(ExitStatus),
    /// The runtime could not start the process; the runc-style reason.
    NotStarted(String),
    /// The client went away: nothing more can be sent.
    ClientGone,
}

/// Serves one exec session on an upgraded WebSocket. `protocol` is the negotiated sub-protocol
/// (`""` when the client offered none).
pub async fn serve_exec<S>(mut ws: WebSocketStream<S>, protocol: &str, spec: ExecSpec)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let wire = Wire::for_protocol(protocol);
    let style = StatusStyle::for_protocol(protocol);
    let stream_close = protocol == V5;

    // The streams are up: an empty frame on the lowest writable channel.
    let first = if spec.stdout {
        STDOUT
    } else if spec.stderr {
        STDERR
    } else {
        ERROR
    };
    if ws.send(wire.frame(first, &[])).await.is_err() {
        return;
    }

    let end = run_exec(&mut ws, wire, stream_close, &spec).await;
    let status = match end {
        ExecEnd::ClientGone => return,
        ExecEnd::Exited(status) => exit_status_message(style, &spec.command, exit_code(status)),
        ExecEnd::NotStarted(reason) => not_started_message(style, &reason),
    };
    if let Some(status) = status {
        if ws.send(wire.frame(ERROR, status.as_bytes())).await.is_err() {
            return;
        }
    }
    close_normally(&mut ws).await;
}

enum Output {
    Data(u8, Vec<u8>),
    Eof,
}

enum StdinSink {
    Pipe(tokio::process::ChildStdin),
    Pty(Arc<pty::Master>),
}

enum OutputSource {
    Pipe(Box<dyn AsyncRead + Send + Unpin>),
    Pty(Arc<pty::Master>),
}

struct Launched {
    child: tokio::process::Child,
    stdin: Option<StdinSink>,
    outputs: Vec<(u8, OutputSource)>,
    pty: Option<Arc<pty::Master>>,
}

async fn run_exec<S>(
    ws: &mut WebSocketStream<S>,
    wire: Wire,
    stream_close: bool,
    spec: &ExecSpec,
) -> ExecEnd
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Launched {
        mut child,
        stdin,
        outputs,
        pty,
    } = match launch(spec) {
        Ok(launched) => launched,
        Err(reason) => return ExecEnd::NotStarted(reason),
    };

    let mut tasks = JoinSet::new();
    let (stdin_tx, stdin_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let mut stdin_tx = match stdin {
        Some(sink) => {
            tasks.spawn(feed_stdin(sink, stdin_rx));
            Some(stdin_tx)
        }
        None => None,
    };
    let (out_tx, mut out_rx) = mpsc::channel::<Output>(16);
    let mut open_outputs = outputs.len();
    for (channel, source) in outputs {
        tasks.spawn(pump_output(channel, source, out_tx.clone()));
    }
    drop(out_tx);

    let mut resize = ResizeDecoder::default();
    let mut exited: Option<ExitStatus> = None;
    let mut drain_deadline = Instant::now();
    let mut orphaned_deadline: Option<Instant> = None;
    let wait = child.wait();
    tokio::pin!(wait);

    loop {
        if exited.is_some() && open_outputs == 0 {
            break;
        }
        let client_here = orphaned_deadline.is_none();
        tokio::select! {
            message = ws.next(), if client_here => {
                let gone = match message {
                    Some(Ok(Message::Close(_))) => {
                        // tungstenite queued the close answer; send it.
                        let _ = ws.flush().await;
                        true
                    }
                    Some(Ok(message)) => match wire.decode(&message, stream_close) {
                        Inbound::Data(STDIN, data) => {
                            if let Some(tx) = &stdin_tx {
                                let _ = tx.send(data);
                            }
                            false
                        }
                        Inbound::Data(RESIZE, data) => {
                            for (width, height) in resize.feed(&data) {
                                if let Some(master) = &pty {
                                    master.resize(width, height);
                                }
                            }
                            false
                        }
                        Inbound::Data(_, _) | Inbound::Ignore => false,
                        Inbound::CloseChannel(channel) if channel < EXEC_CHANNELS => {
                            match channel {
                                STDIN => stdin_tx = None,
                                RESIZE => resize.stop(),
                                _ => {}
                            }
                            false
                        }
                        Inbound::CloseChannel(_) | Inbound::Broken => true,
                    },
                    Some(Err(_)) | None => true,
                };
                if gone {
                    stdin_tx = None;
                    orphaned_deadline = Some(Instant::now() + ORPHAN_GRACE);
                }
            }
            output = out_rx.recv(), if open_outputs > 0 => match output {
                Some(Output::Data(channel, data)) => {
                    drain_deadline = Instant::now() + DRAIN_IDLE;
                    let wanted = if channel == STDOUT { spec.stdout } else { spec.stderr };
                    if client_here && wanted && ws.send(wire.frame(channel, &data)).await.is_err() {
                        stdin_tx = None;
                        orphaned_deadline = Some(Instant::now() + ORPHAN_GRACE);
                    }
                }
                Some(Output::Eof) => open_outputs -= 1,
                None => open_outputs = 0,
            },
            status = &mut wait, if exited.is_none() => {
                // An error from wait() cannot happen for a child we spawned; call it a kill.
                exited = Some(status.unwrap_or_else(|_| killed_status()));
                drain_deadline = Instant::now() + DRAIN_IDLE;
            }
            _ = tokio::time::sleep_until(drain_deadline), if exited.is_some() && open_outputs > 0 => break,
            _ = tokio::time::sleep_until(orphaned_deadline.unwrap_or(drain_deadline)), if orphaned_deadline.is_some() => break,
        }
    }
    drop(stdin_tx);
    match (orphaned_deadline, exited) {
        (None, Some(status)) => ExecEnd::Exited(status),
        // Dropping the child kills it (kill_on_drop); dropping the tasks stops the pumps.
        _ => ExecEnd::ClientGone,
    }
}

fn killed_status() -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    ExitStatus::from_raw(9)
}

/// The exit code a container runtime reports: the code, or 128 + the signal that killed it.
fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(9))
}

/// Starts the command with the requested streams: a pseudo-terminal for `tty` (stdout and stderr
/// merged, as a terminal does), pipes otherwise; unrequested streams are /dev/null.
fn launch(spec: &ExecSpec) -> Result<Launched, String> {
    let Some(program) = spec.command.first() else {
        return Err("exec: \"\": executable file not found in $PATH".into());
    };
    let path = spec
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or(DEFAULT_PATH);
    let Some(executable) = look_path(program, path) else {
        return Err(format!(
            "exec: {}: executable file not found in $PATH",
            go_quote(program)
        ));
    };
    let mut command = tokio::process::Command::new(executable);
    command
        .arg0(program)
        .args(&spec.command[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .kill_on_drop(true);
    if std::path::Path::new("/").is_dir() {
        command.current_dir("/");
    }
    let account = if spec.run_as_service && running_as_root() {
        service_account()
    } else {
        None
    };
    if !spec.env.iter().any(|(k, _)| k == "PATH") {
        command.env("PATH", DEFAULT_PATH);
    }
    if !spec.env.iter().any(|(k, _)| k == "HOME") {
        let home = match &account {
            Some(account) => account.home.clone(),
            None => std::env::var("HOME").unwrap_or_else(|_| "/root".into()),
        };
        command.env("HOME", home);
    }
    if let Some(account) = &account {
        command.uid(account.uid).gid(account.gid);
    }

    let pty_master;
    let mut outputs = Vec::new();
    let mut stdin = None;
    if spec.tty {
        match pty::open() {
            Ok((master, slave)) => {
                let master = Arc::new(master);
                let terminal = || {
                    slave
                        .try_clone()
                        .map(Stdio::from)
                        .map_err(|e| e.to_string())
                };
                // The terminal is the command's stdin, stdout and stderr (also when stdin was
                // not asked for, as with a container runtime's terminal).
                command
                    .stdin(terminal()?)
                    .stdout(terminal()?)
                    .stderr(terminal()?);
                pty::make_controlling_terminal(&mut command);
                drop(slave);
                if spec.stdin {
                    stdin = Some(StdinSink::Pty(master.clone()));
                }
                // Read the terminal even when stdout was not asked for (the output is then
                // dropped), or the command would block once the terminal's buffer fills.
                outputs.push((STDOUT, OutputSource::Pty(master.clone())));
                pty_master = Some(master);
            }
            Err(_) => {
                // No pseudo-terminals here: pipes, with stderr on the stdout channel.
                return launch_with_pipes(command, program, spec, STDOUT);
            }
        }
        let child = command.spawn().map_err(|e| spawn_failure(program, &e))?;
        // The parent's copies of the terminal's slave side are gone with `command`.
        drop(command);
        return Ok(Launched {
            child,
            stdin,
            outputs,
            pty: pty_master,
        });
    }
    launch_with_pipes(command, program, spec, STDERR)
}

/// containerd's PATH for a container whose image sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Resolves a bare command name along `path` as runc does (Go's `exec.LookPath`): the first
/// executable regular file; directories that cannot be read are skipped. Names with a slash are
/// taken as they are.
fn look_path(program: &str, path: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if program.contains('/') {
        return Some(program.into());
    }
    path.split(':').find_map(|dir| {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = std::path::Path::new(dir).join(program);
        let meta = std::fs::metadata(&candidate).ok()?;
        (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then_some(candidate)
    })
}

fn launch_with_pipes(
    mut command: tokio::process::Command,
    program: &str,
    spec: &ExecSpec,
    stderr_channel: u8,
) -> Result<Launched, String> {
    let piped = |wanted: bool| {
        if wanted {
            Stdio::piped()
        } else {
            Stdio::null()
        }
    };
    let stderr_wanted = if stderr_channel == STDOUT {
        spec.stdout
    } else {
        spec.stderr
    };
    command
        .stdin(piped(spec.stdin))
        .stdout(piped(spec.stdout))
        .stderr(piped(stderr_wanted));
    let mut child = command.spawn().map_err(|e| spawn_failure(program, &e))?;
    let mut outputs: Vec<(u8, OutputSource)> = Vec::new();
    if let Some(out) = child.stdout.take() {
        outputs.push((STDOUT, OutputSource::Pipe(Box::new(out))));
    }
    if let Some(err) = child.stderr.take() {
        outputs.push((stderr_channel, OutputSource::Pipe(Box::new(err))));
    }
    let stdin = child.stdin.take().map(StdinSink::Pipe);
    Ok(Launched {
        child,
        stdin,
        outputs,
        pty: None,
    })
}

/// runc's words for a process it could not start.
fn spawn_failure(program: &str, error: &io::Error) -> String {
    let quoted = go_quote(program);
    match error.kind() {
        io::ErrorKind::NotFound if program.contains('/') => {
            format!("exec: {quoted}: stat {program}: no such file or directory")
        }
        io::ErrorKind::NotFound => format!("exec: {quoted}: executable file not found in $PATH"),
        io::ErrorKind::PermissionDenied => format!("exec: {quoted}: permission denied"),
        _ => format!("exec: {quoted}: {}", go_error_text(error)),
    }
}

/// An io::Error as Go's syscall errors print: lower case, no "(os error N)".
fn go_error_text(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset by peer".into(),
        io::ErrorKind::TimedOut => "i/o timeout".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        io::ErrorKind::NotFound => "no such file or directory".into(),
        _ => {
            let text = error.to_string();
            let text = match text.find(" (os error") {
                Some(at) => text[..at].to_string(),
                None => text,
            };
            let mut chars = text.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => text,
            }
        }
    }
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

struct Account {
    uid: u32,
    gid: u32,
    home: String,
}

/// The `postgres` account from /etc/passwd.
fn service_account() -> Option<Account> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 7 || fields[0] != "postgres" {
            return None;
        }
        Some(Account {
            uid: fields[2].parse().ok()?,
            gid: fields[3].parse().ok()?,
            home: fields[5].to_string(),
        })
    })
}

async fn feed_stdin(sink: StdinSink, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    match sink {
        StdinSink::Pipe(mut pipe) => {
            while let Some(data) = rx.recv().await {
                if pipe.write_all(&data).await.is_err() {
                    return;
                }
            }
            // Dropping the pipe closes the command's stdin.
        }
        StdinSink::Pty(master) => {
            while let Some(data) = rx.recv().await {
                if master.write_all(&data).await.is_err() {
                    return;
                }
            }
            // A terminal cannot be half-closed: end-of-file is ^D at the start of a line.
            let _ = master.write_all(&[4]).await;
        }
    }
}

async fn pump_output(channel: u8, mut source: OutputSource, tx: mpsc::Sender<Output>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let read = match &mut source {
            OutputSource::Pipe(pipe) => pipe.read(&mut buf).await,
            OutputSource::Pty(master) => master.read(&mut buf).await,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send(Output::Data(channel, buf[..n].to_vec()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
    let _ = tx.send(Output::Eof).await;
}

/// Terminal sizes from the resize channel: a stream of JSON objects `{"Width":w,"Height":h}`
/// (field names matched case-insensitively, as Go's decoder does). A malformed one ends resizing.
#[derive(Default)]
struct ResizeDecoder {
    pending: Vec<u8>,
    stopped: bool,
}

impl ResizeDecoder {
    fn feed(&mut self, data: &[u8]) -> Vec<(u16, u16)> {
        let mut sizes = Vec::new();
        if self.stopped {
            return sizes;
        }
        self.pending.extend_from_slice(data);
        let mut consumed = 0;
        {
            let mut values = serde_json::Deserializer::from_slice(&self.pending)
                .into_iter::<serde_json::Value>();
            loop {
                match values.next() {
                    Some(Ok(value)) => {
                        consumed = values.byte_offset();
                        let field = |name: &str| {
                            value.as_object().and_then(|o| {
                                o.iter()
                                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                                    .and_then(|(_, v)| v.as_u64())
                            })
                        };
                        match (field("width"), field("height")) {
                            (Some(w), Some(h)) if value.is_object() => {
                                sizes.push((w.min(65535) as u16, h.min(65535) as u16))
                            }
                            _ if value.is_object() => sizes.push((0, 0)),
                            _ => {
                                self.stopped = true;
                                break;
                            }
                        }
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(_)) => {
                        self.stopped = true;
                        break;
                    }
                    None => {
                        consumed = self.pending.len();
                        break;
                    }
                }
            }
        }
        if self.stopped {
            self.pending.clear();
        } else {
            self.pending.drain(..consumed);
        }
        sizes
    }

    fn stop(&mut self) {
        self.stopped = true;
        self.pending.clear();
    }
}

// ---------------------------------------------------------------------------------------------
// statuses, worded as the kubelet (containerd) and the API server word them

const SUCCESS: &str = r#"{"metadata":{},"status":"Success"}"#;

fn exit_status_message(style: StatusStyle, command: &[String], code: i32) -> Option<String> {
    // containerd's error for a non-zero exit, which the kubelet wraps.
    let kubelet_message = format!(
        "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
        command.join(" ")
    );
    match style {
        StatusStyle::Text if code == 0 => None,
        StatusStyle::Text => Some(kubelet_message),
        _ if code == 0 => Some(SUCCESS.to_string()),
        StatusStyle::Kubelet => Some(non_zero_exit_json(&kubelet_message, code)),
        // The translator decodes the kubelet's status into client-go's CodeExitError, whose text
        // is "command terminated with exit code N", and wraps that.
        StatusStyle::Translated => Some(non_zero_exit_json(
            &format!(
                "command terminated with non-zero exit code: command terminated with exit code {code}"
            ),
            code,
        )),
    }
}

fn non_zero_exit_json(message: &str, code: i32) -> String {
    format!(
        r#"{{"metadata":{{}},"status":"Failure","message":{},"reason":"NonZeroExitCode","details":{{"causes":[{{"reason":"ExitCode","message":"{code}"}}]}}}}"#,
        go_json_string(message)
    )
}

fn not_started_message(style: StatusStyle, reason: &str) -> Option<String> {
    let error = format!(
        "error executing command in container: failed to exec in container: failed to start exec {}: OCI runtime exec failed: exec failed: unable to start container process: {reason}: unknown",
        go_quote(&exec_id())
    );
    match style {
        StatusStyle::Text => Some(format!("Internal error occurred: {error}")),
        StatusStyle::Kubelet => Some(internal_error_json(&error)),
        // The translator gets the kubelet's status as a plain error carrying its message, and
        // reports that as an internal error of its own.
        StatusStyle::Translated => Some(internal_error_json(&format!(
            "Internal error occurred: {error}"
        ))),
    }
}

/// `apierrors.NewInternalError(err)`, marshalled.
fn internal_error_json(error: &str) -> String {
    format!(
        r#"{{"metadata":{{}},"status":"Failure","message":{},"reason":"InternalError","details":{{"causes":[{{"message":{}}}]}},"code":500}}"#,
        go_json_string(&format!("Internal error occurred: {error}")),
        go_json_string(error)
    )
}

/// A containerd exec id: 64 hex digits.
fn exec_id() -> String {
    let mut id = String::with_capacity(64);
    for i in 0..4u64 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(i);
        id.push_str(&format!("{:016x}", hasher.finish()));
    }
    id
}

/// A string as Go's `encoding/json` writes it (HTML-safe: <, >, & escaped).
fn go_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A string as Go's `%q` writes it (for the ASCII-ish texts used here).
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------------------------
// pseudo-terminals (Linux), through the C library std already links

mod pty {
    use std::fs::{File, OpenOptions};
    use std::io::{self, Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::raw::{c_char, c_int, c_ulong, c_ushort};
    use std::os::unix::fs::OpenOptionsExt;

    use tokio::io::unix::AsyncFd;

    extern "C" {
        fn grantpt(fd: c_int) -> c_int;
        fn unlockpt(fd: c_int) -> c_int;
        fn ptsname_r(fd: c_int, buf: *mut c_char, len: usize) -> c_int;
        fn ioctl(fd: c_int, request: c_ulong, ...) -> c_int;
        fn setsid() -> c_int;
    }

    const O_NOCTTY: i32 = 0o400;
    const O_NONBLOCK: i32 = 0o4000;
    const TIOCSCTTY: c_ulong = 0x540E;
    const TIOCSWINSZ: c_ulong = 0x5414;
    const EIO: i32 = 5;

    #[repr(C)]
    struct Winsize {
        rows: c_ushort,
        cols: c_ushort,
        xpixel: c_ushort,
        ypixel: c_ushort,
    }

    /// The controlling side of a pseudo-terminal, non-blocking, driven by tokio.
    pub struct Master {
        fd: AsyncFd<File>,
    }

    /// Opens a pseudo-terminal: the master, and the slave for the command.
    pub fn open() -> io::Result<(Master, File)> {
        if !cfg!(target_os = "linux") {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "no ptys"));
        }
        let master = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(O_NOCTTY | O_NONBLOCK)
            .open("/dev/ptmx")?;
        let fd = master.as_raw_fd();
        let mut name = [0 as c_char; 128];
        // SAFETY: plain libc calls on a descriptor we own, with a buffer of the stated size.
        let path = unsafe {
            if grantpt(fd) != 0 || unlockpt(fd) != 0 {
                return Err(io::Error::last_os_error());
            }
            let err = ptsname_r(fd, name.as_mut_ptr(), name.len());
            if err != 0 {
                return Err(io::Error::from_raw_os_error(err));
            }
            std::ffi::CStr::from_ptr(name.as_ptr())
                .to_string_lossy()
                .into_owned()
        };
        let slave = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(O_NOCTTY)
            .open(path)?;
        Ok((
            Master {
                // SAFETY: the File owns its descriptor for as long as the AsyncFd holds it.
                fd: unsafe { AsyncFd::register(master) }?,
            },
            slave,
        ))
    }

    /// Makes the command a session leader whose controlling terminal is its stdin.
    pub fn make_controlling_terminal(command: &mut tokio::process::Command) {
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                if ioctl(0, TIOCSCTTY, 0 as c_int) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    impl Master {
        /// Reads output; end of file once every slave descriptor is closed (EIO on Linux).
        pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
            loop {
                let mut guard = self.fd.readable().await?;
                match guard.try_io(|fd| fd.get_ref().read(buf)) {
                    Ok(Err(e)) if e.raw_os_error() == Some(EIO) => return Ok(0),
                    Ok(result) => return result,
                    Err(_would_block) => continue,
                }
            }
        }

        pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
            while !data.is_empty() {
                let mut guard = self.fd.writable().await?;
                match guard.try_io(|fd| fd.get_ref().write(data)) {
                    Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(Ok(n)) => data = &data[n..],
                    Ok(Err(e)) => return Err(e),
                    Err(_would_block) => continue,
                }
            }
            Ok(())
        }

        pub fn resize(&self, width: u16, height: u16) {
            let size = Winsize {
                rows: height,
                cols: width,
                xpixel: 0,
                ypixel: 0,
            };
            // SAFETY: TIOCSWINSZ reads one winsize from the pointer.
            unsafe {
                ioctl(self.fd.as_raw_fd(), TIOCSWINSZ, &size as *const Winsize);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// port-forward

enum PortEvent {
    Data(usize, Vec<u8>),
    Failed(usize, String),
    Done(usize),
}

/// Serves one port-forward WebSocket: one TCP connection to `target` per entry of `ports`
/// (`ports` as the request's `ports` query parameters list them, comma-separated values split).
///
/// `drop_after_bytes`: a byte budget shared with the test. While it is non-zero, every byte
/// forwarded (either direction) counts it down; the stream whose bytes bring it to zero forwards
/// what fits and then drops the connection without a close frame (the TCP connections to the
/// target too). At zero it is disarmed, so it fires once per arming.
pub async fn serve_portforward<S>(
    mut ws: WebSocketStream<S>,
    protocol: &str,
    ports: Vec<u16>,
    target: SocketAddr,
    drop_after_bytes: Option<Arc<AtomicU64>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let wire = Wire::for_protocol(protocol);
    let budget = drop_after_bytes.as_deref();
    for (i, port) in ports.iter().enumerate() {
        let port = port.to_le_bytes();
        if ws.send(wire.frame(data_channel(i), &port)).await.is_err()
            || ws.send(wire.frame(error_channel(i), &port)).await.is_err()
        {
            return;
        }
    }

    let mut tasks = JoinSet::new();
    let (events_tx, mut events) = mpsc::channel::<PortEvent>(64);
    let mut to_target = Vec::with_capacity(ports.len());
    for (i, &port) in ports.iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel();
        to_target.push(Some(tx));
        tasks.spawn(forward_port(i, port, target, rx, events_tx.clone()));
    }
    drop(events_tx);

    let mut open = ports.len();
    while open > 0 {
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Close(_))) => {
                    // The client is done: answer the close and drop the connections.
                    let _ = ws.flush().await;
                    return;
                }
                Some(Ok(message)) => {
                    if let Inbound::Data(channel, data) = wire.decode(&message, false) {
                        let i = usize::from(channel / 2);
                        if channel % 2 == 0 && i < ports.len() && !data.is_empty() {
                            let (allowed, tripped) = take_budget(budget, data.len());
                            if let Some(tx) = &to_target[i] {
                                let _ = tx.send(data[..allowed].to_vec());
                            }
                            if tripped {
                                return;
                            }
                        }
                    }
                }
                Some(Err(_)) | None => return,
            },
            event = events.recv() => match event {
                Some(PortEvent::Data(i, data)) => {
                    let (allowed, tripped) = take_budget(budget, data.len());
                    if allowed > 0 && ws.send(wire.frame(data_channel(i), &data[..allowed])).await.is_err() {
                        return;
                    }
                    if tripped {
                        return;
                    }
                }
                Some(PortEvent::Failed(i, message)) => {
                    if ws.send(wire.frame(error_channel(i), message.as_bytes())).await.is_err() {
                        return;
                    }
                    to_target[i] = None;
                    open -= 1;
                }
                Some(PortEvent::Done(i)) => {
                    to_target[i] = None;
                    open -= 1;
                }
                None => open = 0,
            },
        }
    }
    close_normally(&mut ws).await;
}

fn data_channel(i: usize) -> u8 {
    (2 * i) as u8
}

fn error_channel(i: usize) -> u8 {
    (2 * i + 1) as u8
}

/// Takes up to `n` bytes from the budget: how many may pass, and whether this emptied it.
fn take_budget(budget: Option<&AtomicU64>, n: usize) -> (usize, bool) {
    let Some(budget) = budget else {
        return (n, false);
    };
    let mut left = budget.load(Ordering::SeqCst);
    loop {
        if left == 0 {
            return (n, false);
        }
        let take = left.min(n as u64);
        match budget.compare_exchange(left, left - take, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return (take as usize, left == take),
            Err(now) => left = now,
        }
    }
}

/// One port's TCP connection, as containerd's port-forward runs it: copy both ways until either
/// direction ends, give the other a second to finish, then report the port done.
async fn forward_port(
    i: usize,
    port: u16,
    target: SocketAddr,
    mut from_client: mpsc::UnboundedReceiver<Vec<u8>>,
    events: mpsc::Sender<PortEvent>,
) {
    let stream = match tokio::net::TcpStream::connect(target).await {
        Ok(stream) => stream,
        Err(e) => {
            let family = if target.is_ipv4() { "tcp4" } else { "tcp6" };
            let message = format!(
                "error forwarding port {port} to pod: failed to connect to localhost:{port} inside namespace: dial {family} {target}: connect: {}",
                go_error_text(&e)
            );
            let _ = events.send(PortEvent::Failed(i, message)).await;
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let to_target = async move {
        while let Some(data) = from_client.recv().await {
            if writer.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    };
    let data_events = events.clone();
    let from_target = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if data_events
                        .send(PortEvent::Data(i, buf[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    };
    tokio::pin!(to_target, from_target);
    tokio::select! {
        _ = &mut from_target => {}
        _ = &mut to_target => {
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut from_target).await;
        }
    }
    let _ = events.send(PortEvent::Done(i)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures_util::Stream;
    use http_body_util::Empty;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper::{Request, Response, StatusCode};
    use hyper_util::rt::TokioIo;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, AttachParams};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;

    /// A minimal API server: upgrades `.../exec` and `.../portforward` requests and hands them
    /// to the code under test.
    #[derive(Clone)]
    struct Server {
        addr: SocketAddr,
    }

    #[derive(Clone)]
    struct Setup {
        target: SocketAddr,
        budget: Option<Arc<AtomicU64>>,
    }

    impl Server {
        async fn start(setup: Setup) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let setup = setup.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| upgrade(req, setup.clone()));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), service)
                            .with_upgrades()
                            .await;
                    });
                }
            });
            Server { addr }
        }

        fn client(&self) -> kube::Client {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let url = format!("http://{}", self.addr).parse().unwrap();
            kube::Client::try_from(kube::Config::new(url)).unwrap()
        }
    }

    async fn upgrade(
        mut req: Request<Incoming>,
        setup: Setup,
    ) -> Result<Response<Empty<Bytes>>, std::convert::Infallible> {
        let path = req.uri().path().to_string();
        let query = super::super::http::Query::parse(req.uri().query());
        let offered = req
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let key = req
            .headers()
            .get("sec-websocket-key")
            .map(|k| derive_accept_key(k.as_bytes()));
        let exec = path.ends_with("/exec");
        let protocol = if exec {
            negotiate_exec_protocol(offered.as_deref())
        } else {
            negotiate_portforward_protocol(offered.as_deref())
        };
        let (Some(key), Some(protocol)) = (key, protocol) else {
            let mut refused = Response::new(Empty::new());
            *refused.status_mut() = StatusCode::FORBIDDEN;
            return Ok(refused);
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            let flag = |name: &str| query.get(name) == Some("true");
            if exec {
                let spec = ExecSpec {
                    command: query.all("command"),
                    stdin: flag("stdin"),
                    stdout: flag("stdout"),
                    stderr: flag("stderr"),
                    tty: flag("tty"),
                    env: vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())],
                    run_as_service: false,
                };
                serve_exec(ws, protocol, spec).await;
            } else {
                let ports = query
                    .all("ports")
                    .iter()
                    .flat_map(|v| v.split(',').map(|p| p.parse::<u16>().unwrap()))
                    .collect();
                serve_portforward(ws, protocol, ports, setup.target, setup.budget).await;
            }
        });
        let mut response = Response::new(Empty::new());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert("connection", "Upgrade".parse().unwrap());
        headers.insert("upgrade", "websocket".parse().unwrap());
        headers.insert("sec-websocket-accept", key.parse().unwrap());
        if !protocol.is_empty() {
            headers.insert("sec-websocket-protocol", protocol.parse().unwrap());
        }
        Ok(response)
    }

    /// A TCP server that echoes everything until the client closes; with `once`, it echoes
    /// the first read and then closes the connection itself.
    async fn echo_server(once: bool) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if tcp.write_all(&buf[..n]).await.is_err() || once {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    async fn unused_port() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    fn no_target() -> Setup {
        Setup {
            target: "127.0.0.1:9".parse().unwrap(),
            budget: None,
        }
    }

    type Raw = WebSocketStream<TcpStream>;

    /// Connects a raw WebSocket client offering `protocols`.
    async fn raw(server: &Server, path_and_query: &str, protocols: &str) -> (Raw, Option<String>) {
        let mut request = format!("ws://{}{}", server.addr, path_and_query)
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("sec-websocket-protocol", protocols.parse().unwrap());
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let (ws, response) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
        let negotiated = response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap().to_string());
        (ws, negotiated)
    }

    /// Everything the server sends until it closes: (channel, payload) frames and the close code.
    async fn collect<S>(ws: &mut S) -> (Vec<(u8, Vec<u8>)>, Option<CloseCode>)
    where
        S: Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
    {
        let mut frames = Vec::new();
        while let Some(message) = ws.next().await {
            match message.unwrap() {
                Message::Binary(b) => frames.push((b[0], b[1..].to_vec())),
                Message::Text(t) => {
                    let t = t.as_bytes();
                    let data = base64::engine::general_purpose::STANDARD
                        .decode(&t[1..])
                        .unwrap();
                    frames.push((t[0] - b'0', data));
                }
                Message::Close(frame) => return (frames, frame.map(|f| f.code)),
                _ => {}
            }
        }
        (frames, None)
    }

    fn channel(frames: &[(u8, Vec<u8>)], ch: u8) -> String {
        let bytes: Vec<u8> = frames
            .iter()
            .filter(|(c, _)| *c == ch)
            .flat_map(|(_, d)| d.clone())
            .collect();
        String::from_utf8(bytes).unwrap()
    }

    fn exec_path(command: &[&str], streams: &str) -> String {
        let mut path = String::from("/api/v1/namespaces/default/pods/p/exec?");
        path.push_str(streams);
        for part in command {
            path.push_str("&command=");
            for b in part.bytes() {
                if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                    path.push(char::from(b));
                } else {
                    path.push_str(&format!("%{b:02X}"));
                }
            }
        }
        path
    }

    const FAILING: [&str; 3] = ["sh", "-c", "echo out; echo err >&2; exit 3"];

    #[tokio::test]
    async fn v5_exec_sends_streams_then_the_exit_status_then_a_normal_close() {
        let server = Server::start(no_target()).await;
        let path = exec_path(&FAILING, "stdout=true&stderr=true");
        let (mut ws, negotiated) =
            raw(&server, &path, "v5.channel.k8s.io, v4.channel.k8s.io").await;
        assert_eq!(negotiated.as_deref(), Some(V5));
        let (frames, close) = collect(&mut ws).await;
        assert_eq!(frames[0], (STDOUT, vec![]), "streams-up signal first");
        assert_eq!(channel(&frames, STDOUT), "out\n");
        assert_eq!(channel(&frames, STDERR), "err\n");
        assert_eq!(
            channel(&frames, ERROR),
            r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: command terminated with exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
        );
        assert_eq!(frames.last().unwrap().0, ERROR, "the status comes last");
        assert_eq!(close, Some(CloseCode::Normal));
    }

    #[tokio::test]
    async fn v4_exec_status_is_worded_by_the_kubelet() {
        let server = Server::start(no_target()).await;
        let path = exec_path(&FAILING, "stdout=true&stderr=true");
        let (mut ws, negotiated) = raw(&server, &path, "v4.channel.k8s.io").await;
        assert_eq!(negotiated.as_deref(), Some(V4));
        let (frames, close) = collect(&mut ws).await;
        assert_eq!(
            channel(&frames, ERROR),
            r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c echo out; echo err \u003e\u00262; exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
        );
        assert_eq!(close, Some(CloseCode::Normal));
    }

    #[tokio::test]
    async fn v4_base64_exec_uses_text_frames() {
        let server = Server::start(no_target()).await;
        let path = exec_path(&["echo", "hi"], "stdout=true");
        let (mut ws, negotiated) = raw(&server, &path, "v4.base64.channel.k8s.io").await;
        assert_eq!(negotiated.as_deref(), Some(V4_BASE64));
        let first = ws.next().await.unwrap().unwrap();
        assert_eq!(first, Message::text("1"));
        let (frames, _) = collect(&mut ws).await;
        assert_eq!(channel(&frames, STDOUT), "hi\n");
        assert_eq!(channel(&frames, ERROR), SUCCESS);
    }

    #[tokio::test]
    async fn v5_close_signal_ends_the_commands_stdin() {
        let server = Server::start(no_target()).await;
        let path = exec_path(&["cat"], "stdin=true&stdout=true&stderr=true");
        let (mut ws, _) = raw(&server, &path, V5).await;
        ws.send(Message::binary(b"\0hel".to_vec())).await.unwrap();
        ws.send(Message::binary(b"\0lo\n".to_vec())).await.unwrap();
        ws.send(Message::binary(vec![STREAM_CLOSE, STDIN]))
            .await
            .unwrap();
        let (frames, close) = collect(&mut ws).await;
        assert_eq!(channel(&frames, STDOUT), "hello\n");
        assert_eq!(channel(&frames, ERROR), SUCCESS);
        assert_eq!(close, Some(CloseCode::Normal));
    }

    #[tokio::test]
    async fn a_missing_command_is_the_runtimes_internal_error() {
        let server = Server::start(no_target()).await;
        let path = exec_path(&["no-such-command-kpg"], "stdout=true&stderr=true");
        let (mut ws, _) = raw(&server, &path, V5).await;
        let (frames, close) = collect(&mut ws).await;
        let status: serde_json::Value = serde_json::from_str(&channel(&frames, ERROR)).unwrap();
        assert_eq!(status["status"], "Failure");
        assert_eq!(status["reason"], "InternalError");
        assert_eq!(status["code"], 500);
        let message = status["message"].as_str().unwrap();
        assert!(
            message.starts_with("Internal error occurred: Internal error occurred: error executing command in container: failed to exec in container: failed to start exec \""),
            "{message}"
        );
        assert!(
            message.ends_with(": OCI runtime exec failed: exec failed: unable to start container process: exec: \"no-such-command-kpg\": executable file not found in $PATH: unknown"),
            "{message}"
        );
        assert_eq!(close, Some(CloseCode::Normal));
    }

    #[tokio::test]
    async fn tty_exec_runs_on_a_terminal_and_honours_resizes() {
        if pty::open().is_err() {
            eprintln!("no pseudo-terminals on this machine; skipped");
            return;
        }
        let server = Server::start(no_target()).await;
        let script = "read x; stty size; test -t 1 && echo on-a-tty; echo to-stderr >&2";
        let path = exec_path(&["sh", "-c", script], "stdin=true&stdout=true&tty=true");
        let (mut ws, _) = raw(&server, &path, V5).await;
        let mut resize = vec![RESIZE];
        resize.extend_from_slice(br#"{"Width":100,"Height":40}"#);
        ws.send(Message::binary(resize)).await.unwrap();
        ws.send(Message::binary(b"\0go\n".to_vec())).await.unwrap();
        let (frames, close) = collect(&mut ws).await;
        let out = channel(&frames, STDOUT);
        // The terminal echoes the input and turns \n into \r\n; stderr goes to the terminal.
        assert!(out.contains("go\r\n"), "{out:?}");
        assert!(out.contains("40 100\r\n"), "{out:?}");
        assert!(out.contains("on-a-tty\r\n"), "{out:?}");
        assert!(out.contains("to-stderr\r\n"), "{out:?}");
        assert_eq!(channel(&frames, STDERR), "");
        assert_eq!(channel(&frames, ERROR), SUCCESS);
        assert_eq!(close, Some(CloseCode::Normal));
    }

    #[tokio::test]
    async fn kube_rs_exec_gets_output_and_status() {
        let server = Server::start(no_target()).await;
        let pods: Api<Pod> = Api::namespaced(server.client(), "default");

        let mut attached = pods
            .exec("p", FAILING, &AttachParams::default().stderr(true))
            .await
            .unwrap();
        let mut stdout = attached.stdout().unwrap();
        let mut stderr = attached.stderr().unwrap();
        let status = attached.take_status().unwrap();
        let (mut out, mut err) = (String::new(), String::new());
        let (a, b) = tokio::join!(
            stdout.read_to_string(&mut out),
            stderr.read_to_string(&mut err)
        );
        a.unwrap();
        b.unwrap();
        let status = status.await.unwrap();
        assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"));
        assert_eq!(status.status.as_deref(), Some("Failure"));
        assert_eq!(status.reason.as_deref(), Some("NonZeroExitCode"));
        let causes = status.details.unwrap().causes.unwrap();
        assert_eq!(causes[0].reason.as_deref(), Some("ExitCode"));
        assert_eq!(causes[0].message.as_deref(), Some("3"));
        attached.join().await.unwrap();

        let mut attached = pods
            .exec("p", ["cat"], &AttachParams::default().stdin(true))
            .await
            .unwrap();
        let mut stdin = attached.stdin().unwrap();
        let mut stdout = attached.stdout().unwrap();
        let status = attached.take_status().unwrap();
        stdin.write_all(b"ping\n").await.unwrap();
        // kube-rs sends the v5 close signal once its stdin pipe is shut down.
        stdin.shutdown().await.unwrap();
        let mut out = String::new();
        stdout.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "ping\n");
        assert_eq!(status.await.unwrap().status.as_deref(), Some("Success"));
        attached.join().await.unwrap();
    }

    #[tokio::test]
    async fn kube_rs_portforward_reaches_the_target_and_sees_it_close() {
        let target = echo_server(true).await;
        let server = Server::start(Setup {
            target,
            budget: None,
        })
        .await;
        let pods: Api<Pod> = Api::namespaced(server.client(), "default");
        let mut forwarder = pods.portforward("p", &[5432]).await.unwrap();
        let mut stream = forwarder.take_stream(5432).unwrap();
        stream.write_all(b"hello").await.unwrap();
        let mut echoed = Vec::new();
        // The target answers once and closes: the forwarder's stream reaches end of file.
        stream.read_to_end(&mut echoed).await.unwrap();
        assert_eq!(echoed, b"hello");
        // (kube-rs then answers our close with one of its own and reports SendAfterClosing from
        // join(), as it does against a real kubelet; the product ignores join's result.)
        drop(stream);
        let _ = forwarder.join().await;
    }

    #[tokio::test]
    async fn v4_portforward_announces_ports_and_forwards_both_ways() {
        let target = echo_server(false).await;
        let server = Server::start(Setup {
            target,
            budget: None,
        })
        .await;
        let path = "/api/v1/namespaces/default/pods/p/portforward?ports=5432,8080";
        let (mut ws, negotiated) = raw(&server, path, "v5.channel.k8s.io, v4.channel.k8s.io").await;
        assert_eq!(negotiated.as_deref(), Some(V4));
        let mut announced = Vec::new();
        for _ in 0..4 {
            announced.push(ws.next().await.unwrap().unwrap());
        }
        assert_eq!(
            announced,
            vec![
                Message::binary(vec![0, 0x38, 0x15]),
                Message::binary(vec![1, 0x38, 0x15]),
                Message::binary(vec![2, 0x90, 0x1f]),
                Message::binary(vec![3, 0x90, 0x1f]),
            ]
        );
        ws.send(Message::binary(b"\x02second".to_vec()))
            .await
            .unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::binary(b"\x02second".to_vec())
        );
        ws.send(Message::binary(b"\x00first".to_vec()))
            .await
            .unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::binary(b"\x00first".to_vec())
        );
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    }

    #[tokio::test]
    async fn a_refused_port_is_reported_on_its_error_channel() {
        let server = Server::start(Setup {
            target: unused_port().await,
            budget: None,
        })
        .await;
        let pods: Api<Pod> = Api::namespaced(server.client(), "default");
        let mut forwarder = pods.portforward("p", &[5432]).await.unwrap();
        let error = forwarder.take_error(5432).unwrap().await.unwrap();
        assert!(
            error.starts_with("error forwarding port 5432 to pod")
                && error.ends_with("connect: connection refused"),
            "{error}"
        );
        let mut stream = forwarder.take_stream(5432).unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn the_byte_budget_drops_the_stream_without_a_close() {
        let target = echo_server(false).await;
        let budget = Arc::new(AtomicU64::new(12));
        let server = Server::start(Setup {
            target,
            budget: Some(budget.clone()),
        })
        .await;
        let path = "/api/v1/namespaces/default/pods/p/portforward?ports=5432";
        let (mut ws, _) = raw(&server, path, V4).await;
        ws.next().await.unwrap().unwrap();
        ws.next().await.unwrap().unwrap();
        // 8 bytes out and 8 back exceed the 12-byte budget: 4 of the echo come through.
        ws.send(Message::binary(b"\x0012345678".to_vec()))
            .await
            .unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::binary(b"\x001234".to_vec())
        );
        match ws.next().await {
            None | Some(Err(_)) => {}
            Some(Ok(message)) => panic!("expected a dropped connection, got {message:?}"),
        }
        assert_eq!(budget.load(Ordering::SeqCst), 0);

        // Disarmed at zero: the next stream works.
        let (mut ws, _) = raw(&server, path, V4).await;
        ws.next().await.unwrap().unwrap();
        ws.next().await.unwrap().unwrap();
        ws.send(Message::binary(b"\x00again".to_vec()))
            .await
            .unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::binary(b"\x00again".to_vec())
        );
    }

    #[test]
    fn protocols_are_negotiated_like_the_api_server_and_kubelet() {
        assert_eq!(negotiate_exec_protocol(Some("v5.channel.k8s.io")), Some(V5));
        assert_eq!(
            negotiate_exec_protocol(Some("v4.channel.k8s.io, v5.channel.k8s.io")),
            Some(V5)
        );
        assert_eq!(
            negotiate_exec_protocol(Some("v3.channel.k8s.io,v4.channel.k8s.io")),
            Some(V4)
        );
        assert_eq!(negotiate_exec_protocol(None), Some(""));
        assert_eq!(negotiate_exec_protocol(Some("v3.channel.k8s.io")), None);
        assert_eq!(
            negotiate_portforward_protocol(Some("v5.channel.k8s.io, v4.channel.k8s.io")),
            Some(V4)
        );
        assert_eq!(
            negotiate_portforward_protocol(Some("SPDY/3.1+portforward.k8s.io")),
            None
        );
    }

    #[test]
    fn resize_messages_may_be_split_and_joined() {
        let mut decoder = ResizeDecoder::default();
        assert_eq!(decoder.feed(br#"{"Width":80,"#), vec![]);
        assert_eq!(
            decoder.feed(b"\"Height\":24}\n{\"width\":1,\"height\":2}"),
            vec![(80, 24), (1, 2)]
        );
        assert_eq!(decoder.feed(b"nonsense"), vec![]);
        assert_eq!(decoder.feed(br#"{"Width":3,"Height":4}"#), vec![]);
    }
}
