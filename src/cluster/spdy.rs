//! Port-forward over SPDY/3.1, the protocol `kubectl port-forward` speaks to the API server:
//! one upgraded connection carries many forwarded connections, one after another, each as a
//! pair of streams (error and data). A new connection then costs two frames on a connection
//! that is already open, where a WebSocket costs a TLS session, the API server's checks and
//! the node's own handshake.
//!
//! A session carries one forwarded connection at a time. Sharing it between connections at
//! once would let one slow reader stall the others: the node's SPDY server has no flow
//! control, so the only back-pressure is the connection's own.
//!
//! Only what port-forward needs is here (RFC-style draft "SPDY Protocol - Draft 3.1"): frames
//! are written and read, header blocks are written (zlib, without the optional preset
//! dictionary, which readers apply only when the block's zlib header asks for it) and the
//! server's are skipped, for nothing in them is needed.

use std::time::Instant;

use flate2::{Compress, Compression, FlushCompress};
use http::Request;
use hyper_util::rt::TokioIo;
use kube::client::Body;
use kube::Client;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const FLAG_FIN: u8 = 0x01;
/// RST_STREAM's status for a stream its sender gives up. None is sent: a session dropped
/// mid-connection is closed, which ends its streams at the node.
#[cfg(test)]
const CANCEL: u32 = 5;
/// The largest frame payload SPDY allows (24-bit lengths).
const MAX_FRAME: usize = (1 << 24) - 1;
/// How long a session may be silent before it is pinged, and then how long the answer may take.
pub(crate) const QUIET: std::time::Duration = std::time::Duration::from_secs(5);
/// What one read of the local connection may put into a single DATA frame.
const CHUNK: usize = 64 * 1024;

type Io = TokioIo<hyper::upgrade::Upgraded>;

/// An open SPDY port-forward connection to one pod, idle between forwarded connections.
pub struct Session {
    io: Io,
    /// Bytes read from `io` past the last whole frame.
    pending: Vec<u8>,
    headers: Compress,
    next_stream: u32,
    next_request: u64,
    /// Our pings have odd IDs: the node answers those and sends its own even.
    next_ping: u32,
    /// When it last finished a forwarded connection (or opened).
    pub idle_since: Instant,
}

/// How a forwarded connection ended.
pub enum Carried {
    /// Both sides finished cleanly: the session can carry the next connection.
    Reusable(Session),
    /// The connection is over and so is the session.
    Done,
}

impl Session {
    /// Upgrades a port-forward request for `pod` to SPDY/3.1. Fails when the API server (or a
    /// proxy before it) does not switch protocols; the caller may then use WebSocket.
    pub async fn open(client: &Client, namespace: &str, pod: &str) -> Result<Session, String> {
        let request = Request::post(format!(
            "/api/v1/namespaces/{namespace}/pods/{pod}/portforward"
        ))
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "SPDY/3.1")
        .header("X-Stream-Protocol-Version", "portforward.k8s.io")
        .body(Body::empty())
        .map_err(|e| e.to_string())?;
        let response = client.send(request).await.map_err(|e| e.to_string())?;
        if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            return Err(format!(
                "the API server answered the SPDY upgrade with HTTP {}",
                response.status()
            ));
        }
        let upgraded = hyper::upgrade::on(response)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Session {
            io: TokioIo::new(upgraded),
            pending: Vec::new(),
            headers: Compress::new(Compression::default(), true),
            next_stream: 1,
            next_request: 0,
            next_ping: 1,
            idle_since: Instant::now(),
        })
    }

    /// False once the server has closed the connection (or sent what an idle session never
    /// gets): checked before a session is reused, without waiting.
    pub fn alive(&mut self) -> bool {
        use futures_util::FutureExt;
        let mut byte = [0u8; 4096];
        match self.io.read(&mut byte).now_or_never() {
            None => true,
            Some(Ok(n)) if n > 0 => {
                // A frame that came late for a finished stream: kept, and skipped later.
                self.pending.extend_from_slice(&byte[..n]);
                true
            }
            Some(_) => false,
        }
    }

    /// Carries `local` to `port` of the pod until both sides have finished.
    pub async fn carry<L>(mut self, local: &mut L, port: u16) -> Result<Carried, String>
    where
        L: AsyncRead + AsyncWrite + Unpin,
    {
        let request = self.next_request.to_string();
        self.next_request += 1;
        let (error_id, data_id) = (self.next_stream, self.next_stream + 2);
        self.next_stream += 4;
        let port = port.to_string();
        // Both streams at once, without waiting for their replies (kubectl waits for each):
        // the node pairs them by request ID and buffers what comes before the pod answers.
        let mut opening = self.syn_stream(
            error_id,
            &[
                ("streamtype", "error"),
                ("port", &port),
                ("requestid", &request),
            ],
        );
        opening.extend(data_frame(error_id, FLAG_FIN, &[]));
        opening.extend(self.syn_stream(
            data_id,
            &[
                ("streamtype", "data"),
                ("port", &port),
                ("requestid", &request),
            ],
        ));
        let Session {
            io,
            pending,
            headers,
            next_stream,
            next_request,
            mut next_ping,
            ..
        } = self;
        let (mut from_pod, to_pod) = tokio::io::split(io);
        let to_pod = tokio::sync::Mutex::new(to_pod);
        to_pod
            .lock()
            .await
            .write_all(&opening)
            .await
            .map_err(broke)?;
        let (mut from_local, mut to_local) = tokio::io::split(local);

        let up = async {
            let mut buffer = vec![0u8; CHUNK];
            loop {
                let n = match from_local.read(&mut buffer).await {
                    Ok(n) => n,
                    Err(e) => return Err(format!("the local connection broke: {e}")),
                };
                let frame = data_frame(data_id, if n == 0 { FLAG_FIN } else { 0 }, &buffer[..n]);
                to_pod.lock().await.write_all(&frame).await.map_err(broke)?;
                if n == 0 {
                    return Ok(());
                }
            }
        };
        let down = async {
            let mut frames = Frames::new(pending);
            let (mut data_done, mut error_done) = (false, false);
            let mut error_text = Vec::new();
            let mut reusable = true;
            let mut quiet = Quiet::new();
            while !(data_done && error_done) {
                let frame = tokio::select! {
                    frame = frames.next(&mut from_pod) => frame?,
                    silence = quiet.tick() => {
                        if silence == Silence::Ping {
                            let id = next_ping;
                            next_ping = next_ping.wrapping_add(2);
                            let mut ping = control_header(PING, 0, 4);
                            ping.extend(id.to_be_bytes());
                            // Behind a write that a silent server no longer takes, the ping
                            // would wait for ever: not being able to send it is the answer.
                            let sent = tokio::time::timeout(QUIET, async {
                                to_pod.lock().await.write_all(&ping).await
                            });
                            match sent.await {
                                Ok(Ok(())) => {}
                                Ok(Err(e)) => return Err(broke(e)),
                                Err(_) => return Err(silent()),
                            }
                        } else if silence == Silence::Dead {
                            return Err(silent());
                        }
                        continue;
                    }
                };
                // Any frame, a ping's answer included, shows the path is alive.
                quiet.heard();
                match frame {
                    Frame::Ping { id } if id % 2 == 1 => {}
                    Frame::Data { stream, fin, body } if stream == data_id => {
                        if !body.is_empty() {
                            to_local
                                .write_all(&body)
                                .await
                                .map_err(|e| format!("the local connection broke: {e}"))?;
                        }
                        if fin {
                            let _ = to_local.shutdown().await;
                            data_done = true;
                        }
                    }
                    Frame::Data { stream, fin, body } if stream == error_id => {
                        error_text.extend_from_slice(&body);
                        error_done |= fin;
                    }
                    Frame::Reset { stream } if stream == data_id || stream == error_id => {
                        let said = String::from_utf8_lossy(&error_text).into_owned();
                        return Err(if said.is_empty() {
                            "the node reset the port-forward stream".to_string()
                        } else {
                            said
                        });
                    }
                    Frame::Ping { id } => {
                        let mut pong = control_header(PING, 0, 4);
                        pong.extend(id.to_be_bytes());
                        let _ = to_pod.lock().await.write_all(&pong).await;
                    }
                    // The server stops taking streams: this connection goes on, no other will.
                    Frame::GoAway => reusable = false,
                    Frame::Eof => return Err("the port-forward session ended".to_string()),
                    Frame::Other => {}
                    Frame::Data { .. } | Frame::Reset { .. } => {}
                }
            }
            if !error_text.is_empty() {
                return Err(String::from_utf8_lossy(&error_text).into_owned());
            }
            Ok((frames.rest(), reusable))
        };
        // Whatever broke, the session's streams are in an unknown state: it is dropped (closing
        // it ends them at the node), never reused.
        let ((), (pending, reusable)) = tokio::try_join!(up, down)?;
        if !reusable {
            return Ok(Carried::Done);
        }
        let io = from_pod.unsplit(to_pod.into_inner());
        Ok(Carried::Reusable(Session {
            io,
            pending,
            headers,
            next_stream,
            next_request,
            next_ping,
            idle_since: Instant::now(),
        }))
    }

    /// A SYN_STREAM frame opening `stream` with `headers` (names in lower case, as SPDY/3
    /// requires), compressed in the session's one zlib context.
    fn syn_stream(&mut self, stream: u32, headers: &[(&str, &str)]) -> Vec<u8> {
        let block = compress(&mut self.headers, &header_block(headers));
        let mut frame = control_header(SYN_STREAM, 0, 10 + block.len());
        frame.extend(stream.to_be_bytes());
        frame.extend(0u32.to_be_bytes()); // associated stream
        frame.extend([0, 0]); // priority, slot
        frame.extend(block);
        frame
    }
}

fn broke(e: std::io::Error) -> String {
    format!("the port-forward session broke: {e}")
}

/// What a tick of [`Quiet`] found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Silence {
    /// Something came since the last tick.
    Heard,
    /// Nothing came for a whole period: ask the other side.
    Ping,
    /// Not even the answer to the ping came.
    Dead,
}

/// Tells a quiet path from a dead one without a timer per message (a stream carries thousands
/// a second): a tick every [`QUIET`], and whether anything came in between. A ping goes out
/// after 5-10 s of silence; the connection ends after 10-15 s.
pub(crate) struct Quiet {
    tick: tokio::time::Interval,
    heard: bool,
    pinged: bool,
}

impl Quiet {
    pub(crate) fn new() -> Quiet {
        let start = tokio::time::Instant::now() + QUIET;
        let mut tick = tokio::time::interval_at(start, QUIET);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Quiet {
            tick,
            heard: false,
            pinged: false,
        }
    }

    pub(crate) fn heard(&mut self) {
        self.heard = true;
    }

    /// Waits for the next tick and says what the silence since the last one means.
    pub(crate) async fn tick(&mut self) -> Silence {
        self.tick.tick().await;
        Self::judge(&mut self.heard, &mut self.pinged)
    }

    fn judge(heard: &mut bool, pinged: &mut bool) -> Silence {
        if std::mem::take(heard) {
            *pinged = false;
            Silence::Heard
        } else if !*pinged {
            *pinged = true;
            Silence::Ping
        } else {
            Silence::Dead
        }
    }
}

pub(crate) fn silent() -> String {
    format!(
        "the API server stopped answering (nothing, not even the answer to a ping, for {} s)",
        2 * QUIET.as_secs()
    )
}

fn control_header(kind: u16, flags: u8, length: usize) -> Vec<u8> {
    let mut frame = Vec::with_capacity(8 + length);
    frame.extend((0x8000 | VERSION).to_be_bytes());
    frame.extend(kind.to_be_bytes());
    frame.push(flags);
    frame.extend(&(length as u32).to_be_bytes()[1..]);
    frame
}

fn data_frame(stream: u32, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(8 + body.len());
    frame.extend((stream & 0x7fff_ffff).to_be_bytes());
    frame.push(flags);
    frame.extend(&(body.len() as u32).to_be_bytes()[1..]);
    frame.extend_from_slice(body);
    frame
}

/// An uncompressed SPDY/3 name/value block: a count, then each name and value with its
/// 32-bit length.
fn header_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut block = (headers.len() as u32).to_be_bytes().to_vec();
    for (name, value) in headers {
        for part in [name, value] {
            block.extend((part.len() as u32).to_be_bytes());
            block.extend(part.as_bytes());
        }
    }
    block
}

/// `input` through the session's zlib stream, flushed to a byte boundary so the reader can
/// decode this block before the next frame comes.
fn compress(context: &mut Compress, input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + 64);
    let before = context.total_in();
    loop {
        let consumed = (context.total_in() - before) as usize;
        if out.capacity() - out.len() < 64 {
            out.reserve(256);
        }
        // Infallible for in-memory buffers with room to spare.
        let _ = context.compress_vec(&input[consumed..], &mut out, FlushCompress::Sync);
        if (context.total_in() - before) as usize == input.len() && out.capacity() > out.len() {
            return out;
        }
    }
}

/// A frame as the forwarder needs it.
#[derive(Debug, PartialEq)]
enum Frame {
    Data {
        stream: u32,
        fin: bool,
        body: Vec<u8>,
    },
    Reset {
        stream: u32,
    },
    Ping {
        id: u32,
    },
    GoAway,
    /// SYN_REPLY, SETTINGS, HEADERS, WINDOW_UPDATE, or a frame type SPDY added later.
    Other,
    /// The connection ended between frames.
    Eof,
}

/// Frames cut from the bytes of the connection.
struct Frames {
    pending: Vec<u8>,
    start: usize,
    scratch: Vec<u8>,
}

impl Frames {
    fn new(pending: Vec<u8>) -> Frames {
        Frames {
            pending,
            start: 0,
            scratch: vec![0; CHUNK],
        }
    }
}

impl Frames {
    async fn next<R: AsyncRead + Unpin>(&mut self, from: &mut R) -> Result<Frame, String> {
        loop {
            if let Some((frame, used)) = parse(&self.pending[self.start..])? {
                self.start += used;
                return Ok(frame);
            }
            self.pending.drain(..self.start);
            self.start = 0;
            let had = self.pending.len();
            // Read aside and then appended, so that a read cancelled by the silence timer
            // leaves `pending` whole.
            let n = from.read(&mut self.scratch).await.map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    // rustls' words for a TCP connection cut without TLS's goodbye.
                    "the connection to the API server was cut".to_string()
                } else {
                    format!("the port-forward session broke: {e}")
                }
            })?;
            self.pending.extend_from_slice(&self.scratch[..n]);
            if n == 0 {
                return if had == 0 {
                    Ok(Frame::Eof)
                } else {
                    Err("the port-forward session ended inside a frame".into())
                };
            }
        }
    }

    fn rest(mut self) -> Vec<u8> {
        self.pending.drain(..self.start);
        self.pending
    }
}

/// The first frame of `bytes` and its length, or `None` when it is not all there yet.
fn parse(bytes: &[u8]) -> Result<Option<(Frame, usize)>, String> {
    if bytes.len() < 8 {
        return Ok(None);
    }
    let length = u32::from_be_bytes([0, bytes[5], bytes[6], bytes[7]]) as usize;
    if length > MAX_FRAME {
        return Err("a SPDY frame longer than SPDY allows".into());
    }
    if bytes.len() < 8 + length {
        return Ok(None);
    }
    let flags = bytes[4];
    let body = &bytes[8..8 + length];
    let word = |at: usize| -> Option<u32> {
        body.get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff)
    };
    let frame = if bytes[0] & 0x80 == 0 {
        Frame::Data {
            stream: u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            fin: flags & FLAG_FIN != 0,
            body: body.to_vec(),
        }
    } else {
        let kind = u16::from_be_bytes([bytes[2], bytes[3]]);
        match kind {
            RST_STREAM => Frame::Reset {
                stream: word(0).ok_or("a short RST_STREAM frame")?,
            },
            PING => Frame::Ping {
                id: u32::from_be_bytes(
                    body.get(..4)
                        .and_then(|b| b.try_into().ok())
                        .ok_or("a short PING frame")?,
                ),
            },
            GOAWAY => Frame::GoAway,
            _ => Frame::Other,
        }
    };
    Ok(Some((frame, 8 + length)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syn_stream_carries_a_zlib_header_block_a_reader_decodes() {
        let mut context = Compress::new(Compression::default(), true);
        let mut decoder = flate2::Decompress::new(true);
        let mut decoded = Vec::with_capacity(4096);
        for id in [1u32, 3] {
            let pairs = [("streamtype", "data"), ("port", "5432"), ("requestid", "0")];
            let block = compress(&mut context, &header_block(&pairs));
            // Readers keep one decompression context across the frames, as this one does.
            let start = decoded.len();
            decoder
                .decompress_vec(&block, &mut decoded, flate2::FlushDecompress::Sync)
                .unwrap();
            assert_eq!(&decoded[start..], header_block(&pairs), "stream {id}");
        }
        // No preset dictionary asked for: FDICT clear in the zlib header.
        let mut fresh = Compress::new(Compression::default(), true);
        let first = compress(&mut fresh, &header_block(&[("a", "b")]));
        assert_eq!(first[1] & 0x20, 0);
        assert_eq!(u16::from_be_bytes([first[0], first[1]]) % 31, 0);
    }

    fn reset_frame(stream: u32) -> Vec<u8> {
        let mut frame = control_header(RST_STREAM, 0, 8);
        frame.extend(stream.to_be_bytes());
        frame.extend(CANCEL.to_be_bytes());
        frame
    }

    #[test]
    fn frames_are_cut_where_they_end() {
        let mut bytes = data_frame(3, FLAG_FIN, b"hello");
        bytes.extend(reset_frame(1));
        let mut ping = control_header(PING, 0, 4);
        ping.extend(7u32.to_be_bytes());
        bytes.extend(&ping);
        let (first, used) = parse(&bytes).unwrap().unwrap();
        assert_eq!(
            first,
            Frame::Data {
                stream: 3,
                fin: true,
                body: b"hello".to_vec()
            }
        );
        let (second, used2) = parse(&bytes[used..]).unwrap().unwrap();
        assert_eq!(second, Frame::Reset { stream: 1 });
        let (third, _) = parse(&bytes[used + used2..]).unwrap().unwrap();
        assert_eq!(third, Frame::Ping { id: 7 });
        // Any prefix of a frame is "not yet".
        for cut in 0..used {
            assert!(parse(&bytes[..cut]).unwrap().is_none(), "{cut}");
        }
    }

    #[test]
    fn silence_is_pinged_then_dead_and_anything_heard_resets_it() {
        let (mut heard, mut pinged) = (false, false);
        assert_eq!(Quiet::judge(&mut heard, &mut pinged), Silence::Ping);
        assert_eq!(Quiet::judge(&mut heard, &mut pinged), Silence::Dead);
        heard = true;
        assert_eq!(Quiet::judge(&mut heard, &mut pinged), Silence::Heard);
        assert_eq!(Quiet::judge(&mut heard, &mut pinged), Silence::Ping);
        heard = true; // the answer
        assert_eq!(Quiet::judge(&mut heard, &mut pinged), Silence::Heard);
        assert!(!pinged);
    }

    #[test]
    fn a_control_header_is_version_3_with_a_24_bit_length() {
        let header = control_header(SYN_STREAM, 0, 0x01_0203);
        assert_eq!(header, [0x80, 0x03, 0x00, 0x01, 0x00, 0x01, 0x02, 0x03]);
        assert_eq!(&data_frame(5, FLAG_FIN, &[])[..], [0, 0, 0, 5, 1, 0, 0, 0]);
    }

    #[tokio::test]
    async fn a_connection_that_ends_inside_a_frame_is_an_error() {
        let whole = data_frame(1, 0, b"abcdef");
        let mut frames = Frames::new(Vec::new());
        let mut cut = &whole[..10];
        assert!(frames.next(&mut cut).await.is_err());
        let mut empty: &[u8] = &[];
        let mut frames = Frames::new(Vec::new());
        assert_eq!(frames.next(&mut empty).await.unwrap(), Frame::Eof);
    }
}
