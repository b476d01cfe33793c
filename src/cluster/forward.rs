//! A local listener for a release's database: every accepted connection gets its own
//! port-forward stream through the API server, to the pod that is ready at that moment.
//!
//! A connection has its stream to itself: a dropped stream (an API server restart, a proxy's
//! idle cut) costs that one connection. The ready pod is known from a watch of the release's pods,
//! so a connection opens its stream at once, without a lookup, and the listener follows the
//! release across restarts and pod replacements; until the watch has its first answer, or
//! when it knows no ready pod, a LIST decides (and says why there is none).
//!
//! Connections go over SPDY sessions, as kubectl's do, each session carrying one connection
//! at a time and kept open for the next (see [`super::spdy`]); where SPDY is refused, over a
//! WebSocket of their own.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::access::Cluster;
use super::release;
use super::spdy::{Carried, Session};
use super::websocket;

/// How long an idle session is kept for the next connection. It holds no connection to the
/// server, only the API server's and the node's resources for an open port-forward.
const IDLE_LIFE: Duration = Duration::from_secs(30);
/// At most this many idle sessions are kept, however many connections ran at once.
const MAX_IDLE: usize = 8;

/// Accepts connections on `listener` forever, each carried to the release's ready pod; the
/// caller ends it (drops the future) on Ctrl-C. Failures of one connection are noted on
/// stderr and end that connection only.
pub async fn serve(listener: TcpListener, cluster: Cluster, release: String, selector: String) {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let (store, writer) = reflector::store::<Pod>();
    let config = watcher::Config::default().labels(&selector);
    let watch = reflector::reflector(writer, watcher(pods, config))
        .default_backoff()
        .touched_objects()
        .for_each(|_| std::future::ready(()));
    // Ended with the listener (the caller drops this future on Ctrl-C).
    let _watching = AbortOnDrop(tokio::spawn(watch));
    let sessions = Arc::new(Sessions::default());
    let _sweeping = AbortOnDrop(tokio::spawn(Arc::clone(&sessions).sweep()));
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: transient, keep the listener.
                crate::note!("accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (cluster, release, selector, store, sessions) = (
            cluster.clone(),
            release.clone(),
            selector.clone(),
            store.clone(),
            Arc::clone(&sessions),
        );
        tokio::spawn(async move {
            let writer = (release.as_str(), selector.as_str());
            if let Err(reason) = carry(socket, &cluster, writer, &store, &sessions).await {
                crate::note!("connection from {peer} closed: {reason}");
            }
        });
    }
}

/// One connection: the ready pod now, a SPDY session to it (an idle one if there is one), or
/// a WebSocket where SPDY is refused; bytes both ways until either side ends.
async fn carry(
    mut socket: TcpStream,
    cluster: &Cluster,
    (release, selector): (&str, &str),
    known: &Store<Pod>,
    sessions: &Sessions,
) -> Result<(), String> {
    // PostgreSQL's small messages must not wait for a delayed ACK (kube's reads are 4 KiB).
    let _ = socket.set_nodelay(true);
    let target = match known_ready(known) {
        Some(found) => found,
        None => ready_pod(cluster, release, selector).await?,
    };
    let started = Instant::now();
    let spdy = match sessions.expects_short() {
        true => sessions.session(cluster, &target).await,
        false => None,
    };
    let mut socket = EndNoted {
        socket: &mut socket,
        sessions,
        started,
        noted: false,
    };
    let carried = match spdy {
        Some(session) => match session.carry(&mut socket, target.port).await {
            Ok(Carried::Reusable(session)) => {
                sessions.keep(target.clone(), session);
                Ok(())
            }
            Ok(Carried::Done) => Ok(()),
            Err(e) => Err(e),
        },
        None => {
            let (client, namespace) = (&cluster.client, &cluster.namespace);
            websocket::carry(client, namespace, &target.name, target.port, &mut socket).await
        }
    };
    sessions.ended(started);
    carried.map_err(|e| format!("the stream to pod {} broke: {e}", target.name))
}

/// The local socket, noting the connection's end in [`Sessions`] the moment its client ends
/// its side: the next connection may come at once (a client that reconnects), before the
/// stream's own end has gone round the pod, and must already know this one was short.
struct EndNoted<'a> {
    socket: &'a mut TcpStream,
    sessions: &'a Sessions,
    started: Instant,
    noted: bool,
}

impl AsyncRead for EndNoted<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let (room, before) = (buf.remaining(), buf.filled().len());
        let polled = Pin::new(&mut *this.socket).poll_read(cx, buf);
        let at_end = matches!(polled, Poll::Ready(Ok(()))) && room > 0;
        if at_end && buf.filled().len() == before && !this.noted {
            this.noted = true;
            this.sessions.ended(this.started);
        }
        polled
    }
}

impl AsyncWrite for EndNoted<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.get_mut().socket).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().socket).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().socket).poll_shutdown(cx)
    }
}

/// The pod a connection goes to. The UID tells a replaced pod from its predecessor of the
/// same name, whose sessions lead nowhere.
#[derive(Clone, PartialEq, Eq)]
struct Target {
    name: String,
    uid: String,
    port: u16,
}

impl Target {
    fn of(pod: &Pod) -> Target {
        Target {
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            port: release::database_port(pod),
        }
    }
}

/// SPDY sessions waiting for the next connection, newest last.
#[derive(Default)]
struct Sessions {
    idle: Mutex<Vec<(Target, Session)>>,
    pace: Mutex<Pace>,
    /// Set when the API server (or a proxy) refused a SPDY upgrade: WebSocket from then on.
    refused: AtomicBool,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Target, Session)>> {
        // A pool left by a panicking holder is still a valid list.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the next connection is expected to be short, and so to be better off on a
    /// SPDY session.
    fn expects_short(&self) -> bool {
        let pace = self.pace.lock().unwrap_or_else(|e| e.into_inner());
        pace.expects_short(Instant::now())
    }

    /// Notes a connection's end.
    fn ended(&self, started: Instant) {
        let mut pace = self.pace.lock().unwrap_or_else(|e| e.into_inner());
        pace.ended(started, Instant::now());
    }

    /// An idle session to `target` that is still open, or a new one; `None` when SPDY is
    /// refused.
    async fn session(&self, cluster: &Cluster, target: &Target) -> Option<Session> {
        if self.refused.load(Ordering::Relaxed) {
            return None;
        }
        loop {
            let mut found = {
                let mut idle = self.lock();
                // Sessions to a replaced pod are dropped with the others that expired.
                idle.retain(|(t, s)| t == target && s.idle_since.elapsed() < IDLE_LIFE);
                match idle.pop() {
                    Some((_, session)) => session,
                    None => break,
                }
            };
            if found.alive() {
                return Some(found);
            }
        }
        match Session::open(&cluster.client, &cluster.namespace, &target.name).await {
            Ok(session) => Some(session),
            Err(why) => {
                if !self.refused.swap(true, Ordering::Relaxed) {
                    crate::note!("port-forward over SPDY is not available ({why}); using WebSocket, one per connection");
                }
                None
            }
        }
    }

    /// Keeps `session` for the next connection to `target`, if there is room.
    fn keep(&self, target: Target, session: Session) {
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push((target, session));
        }
    }

    /// Closes sessions idle past their life, so that an idle listener holds nothing open.
    async fn sweep(self: Arc<Self>) {
        let mut every = tokio::time::interval(IDLE_LIFE / 3);
        loop {
            every.tick().await;
            self.lock()
                .retain(|(_, s)| s.idle_since.elapsed() < IDLE_LIFE);
        }
    }
}

/// A connection that ends within this of its start counts as short.
const SHORT: Duration = Duration::from_secs(1);
/// This many short connections ended within [`RECENT`] predict more of them.
const BURST: usize = 3;
const RECENT: Duration = Duration::from_secs(2);

/// Which transport suits the next connection. A short one costs mostly its set-up, which a
/// SPDY session kept open saves; a long one costs its messages, which a WebSocket of its own
/// carries with less work at the node (its SPDY server writes each frame in three pieces, a
/// packet each). Short connections ending in a burst predict more: connections per
/// transaction, a test suite, a script's loop. A lone one does not: an application's check
/// before it fills its pool, psql, an IDE.
#[derive(Default)]
struct Pace {
    short_ends: std::collections::VecDeque<Instant>,
}

impl Pace {
    fn expects_short(&self, now: Instant) -> bool {
        self.short_ends.len() == BURST
            && self
                .short_ends
                .front()
                .is_some_and(|first| now.saturating_duration_since(*first) < RECENT)
    }

    fn ended(&mut self, started: Instant, now: Instant) {
        if now.saturating_duration_since(started) < SHORT {
            if self.short_ends.len() == BURST {
                self.short_ends.pop_front();
            }
            self.short_ends.push_back(now);
        }
    }
}

/// The ready pod as the watch last saw it, if it has seen one.
fn known_ready(store: &Store<Pod>) -> Option<Target> {
    store
        .state()
        .iter()
        .find(|p| release::is_ready(p) && p.metadata.deletion_timestamp.is_none())
        .map(|pod| Target::of(pod))
}

/// Aborts a background task when the future that owns it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The name and database port of the release's ready pod.
async fn ready_pod(cluster: &Cluster, release: &str, selector: &str) -> Result<Target, String> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| cluster.error("list", "pods", e).to_string())?;
    let pod = list
        .items
        .iter()
        .find(|p| release::is_ready(p) && p.metadata.deletion_timestamp.is_none())
        .ok_or_else(|| {
            let state = list
                .items
                .first()
                .map(release::describe_pod)
                .unwrap_or_else(|| "no pod exists".into());
            format!("release {release} has no ready pod ({state})")
        })?;
    Ok(Target::of(pod))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_short_connections_predicts_more() {
        let mut pace = Pace::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Nothing seen yet: expected to stay (a WebSocket).
        assert!(!pace.expects_short(t0));
        // A long connection ends: still not short.
        pace.ended(t0, t0 + Duration::from_secs(30));
        // One short connection (a check before a pool fills up) is not a burst.
        let t1 = t0 + Duration::from_secs(40);
        pace.ended(t1, t1 + ms(20));
        assert!(!pace.expects_short(t1 + ms(30)));
        // Three within RECENT are: SPDY...
        pace.ended(t1 + ms(30), t1 + ms(50));
        pace.ended(t1 + ms(60), t1 + ms(80));
        assert!(pace.expects_short(t1 + ms(90)));
        // ...until the oldest of the last three is older than RECENT.
        assert!(!pace.expects_short(t1 + ms(20) + RECENT));
    }
}
