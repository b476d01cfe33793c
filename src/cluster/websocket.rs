//! One forwarded connection over a WebSocket port-forward of its own (`v4.channel.k8s.io`):
//! data on channel 0, the node's error on channel 1, each channel's first message being the
//! port. Driven here rather than through kube's `Portforwarder`, for two reasons: its bytes
//! pass through a duplex pipe, two channels and three tasks on their way, where here they go
//! from one socket to the other; and a silent path must end the connection (a ping after
//! quiet, as for SPDY), which kube's forwarder cannot send.

use futures_util::{SinkExt, StreamExt};
use http::Request;
use kube::Client;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use super::spdy::{silent, Quiet, Silence, QUIET};

const DATA: u8 = 0;
const ERROR: u8 = 1;
const CHUNK: usize = 64 * 1024;

/// Carries `local` to `port` of `pod` until either side ends.
pub async fn carry<L>(
    client: &Client,
    namespace: &str,
    pod: &str,
    port: u16,
    local: &mut L,
) -> Result<(), String>
where
    L: AsyncRead + AsyncWrite + Unpin,
{
    let request = Request::get(format!(
        "/api/v1/namespaces/{namespace}/pods/{pod}/portforward?ports={port}"
    ))
    .body(Vec::new())
    .map_err(|e| e.to_string())?;
    let socket = client
        .connect(request)
        .await
        .map_err(|e| {
            format!(
                "port-forward to pod {pod} failed: {}",
                super::access::chain(&e)
            )
        })?
        .into_stream();
    let (to_pod, mut from_pod) = socket.split();
    let to_pod = tokio::sync::Mutex::new(to_pod);
    let (mut from_local, mut to_local) = tokio::io::split(local);

    let up = async {
        let mut buffer = vec![0u8; CHUNK + 1];
        buffer[0] = DATA;
        loop {
            let n = from_local
                .read(&mut buffer[1..])
                .await
                .map_err(|e| format!("the local connection broke: {e}"))?;
            if n == 0 {
                // v4 has no half-close: the local side's end is the connection's end.
                let _ = to_pod.lock().await.send(Message::Close(None)).await;
                return Ok::<_, String>(());
            }
            let message = Message::Binary(buffer[..=n].to_vec().into());
            to_pod
                .lock()
                .await
                .send(message)
                .await
                .map_err(|e| format!("the port-forward stream broke: {e}"))?;
        }
    };
    let down = async {
        // The first message of each channel names the port, and carries nothing else.
        let mut named = [false, false];
        let mut error = Vec::new();
        let mut quiet = Quiet::new();
        loop {
            let message = tokio::select! {
                message = from_pod.next() => match message {
                    Some(Ok(message)) => message,
                    Some(Err(e)) => return Err(format!("the port-forward stream broke: {e}")),
                    None => break,
                },
                // Quiet: an idle session or a dead path; the node answers a ping at once.
                silence = quiet.tick() => {
                    if silence == Silence::Ping {
                        // Behind a send a silent server no longer takes, the ping would wait
                        // for ever: not being able to send it is the answer.
                        let ping = async {
                            let mut sink = to_pod.lock().await;
                            sink.send(Message::Ping(Vec::new().into())).await
                        };
                        match tokio::time::timeout(QUIET, ping).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => return Err(format!("the port-forward stream broke: {e}")),
                            Err(_) => return Err(silent()),
                        }
                    } else if silence == Silence::Dead {
                        return Err(silent());
                    }
                    continue;
                }
            };
            quiet.heard();
            let bytes = match message {
                Message::Binary(bytes) => bytes,
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, mut body)) = bytes.split_first() else {
                continue;
            };
            if let Some(first) = named.get_mut(channel as usize) {
                if !*first {
                    *first = true;
                    body = body.get(2..).unwrap_or_default();
                }
            }
            match channel {
                DATA if !body.is_empty() => to_local
                    .write_all(body)
                    .await
                    .map_err(|e| format!("the local connection broke: {e}"))?,
                ERROR => error.extend_from_slice(body),
                _ => {}
            }
        }
        let _ = to_local.shutdown().await;
        if error.is_empty() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&error).into_owned())
        }
    };
    // The stream's end, from the pod's side, ends the connection: nothing could be sent on.
    tokio::select! {
        ended = down => ended,
        failed = async { up.await?; std::future::pending().await } => failed,
    }
}
