//! Watch: newline-delimited JSON events over a chunked response, from a resourceVersion, with
//! selectors, bookmarks, `sendInitialEvents`, timeouts, 410 Gone for compacted versions, and
//! the dropped-stream fault.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::Response;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::faults::Faults;
use super::http::Body;
use super::resources::ResourceType;
use super::selectors::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::store::{EventType, Store, StoreEvent};
use super::table::{self, Include};

/// The real server's default when the client gives no timeout (minRequestTimeout, 30 min).
const DEFAULT_TIMEOUT: u64 = 1800;
/// How often idle watches that allow bookmarks get one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(5);

pub struct Request {
    pub rt: Arc<ResourceType>,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub resource_version: Option<String>,
    pub bookmarks: bool,
    pub send_initial_events: bool,
    pub timeout_seconds: Option<u64>,
    /// Objects rendered as one-row Tables (`kubectl get -w`).
    pub table: Option<Include>,
}

impl Request {
    fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }

    fn render(&self, object: &Value) -> Value {
        match self.table {
            Some(include) => {
                let rv = object["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                table::table(&self.rt.kind, std::slice::from_ref(object), &rv, include)
            }
            None => object.clone(),
        }
    }

    /// The event a store change becomes for this watcher (selector transitions become
    /// ADDED/DELETED, as the real watch cache sends them).
    fn translate(&self, event: &StoreEvent) -> Option<Value> {
        if event.rt.group != self.rt.group || event.rt.plural != self.rt.plural {
            return None;
        }
        if let Some(ns) = &self.namespace {
            if &event.namespace != ns {
                return None;
            }
        }
        let now = self.matches(&event.object);
        let before = event.old.as_ref().is_some_and(|o| self.matches(o));
        let kind = match event.kind {
            EventType::Added if now => "ADDED",
            EventType::Modified if now && before => "MODIFIED",
            EventType::Modified if now => "ADDED",
            EventType::Modified if before => "DELETED",
            EventType::Deleted if before || now => "DELETED",
            _ => return None,
        };
        Some(json!({"type": kind, "object": self.render(&event.object)}))
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Value {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        json!({
            "type": "BOOKMARK",
            "object": {"kind": self.rt.kind, "apiVersion": self.rt.api_version(), "metadata": metadata},
        })
    }
}

fn line(value: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(value).expect("json");
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// Starts a watch and answers with its streaming response.
pub fn respond(
    store: &Arc<Store>,
    faults: &Faults,
    req: Request,
) -> Result<Response<Body>, ApiError> {
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let rv = req.resource_version.clone().unwrap_or_default();
    let mut initial = Vec::new();
    let (live, start_rv) = if rv.is_empty() || rv == "0" || req.send_initial_events {
        // "Get state and start at most recent": synthetic ADDED for what exists now.
        let (items, current, live) = store.snapshot_and_feed(&req.rt, req.namespace.as_deref());
        for item in items.iter().filter(|o| req.matches(o)) {
            initial.push(json!({"type": "ADDED", "object": req.render(item)}));
        }
        if req.send_initial_events && req.bookmarks {
            initial.push(req.bookmark(current, true));
        }
        (live, current)
    } else {
        let wanted: u64 = rv
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?;
        match store.feed_since(wanted) {
            Ok(feed) => {
                for event in &feed.backlog {
                    if let Some(e) = req.translate(event) {
                        initial.push(e);
                    }
                }
                (feed.live, wanted)
            }
            Err(gone) => {
                // The real server answers 200 and sends the 410 as an ERROR event.
                let event = json!({"type": "ERROR", "object": {
                    "kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure", "message": gone.message,
                    "reason": "Expired", "code": 410,
                }});
                let body = http_body_util::Full::new(line(&event)).boxed_unsync();
                return Ok(watch_response(body));
            }
        }
    };
    let timeout = Duration::from_secs(req.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT));
    let drops = faults.watch_drops();
    let store = store.clone();
    tokio::spawn(pump(
        req, initial, live, start_rv, tx, timeout, drops, store,
    ));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(Frame::data(bytes)), rx))
    });
    Ok(watch_response(StreamBody::new(stream).boxed_unsync()))
}

fn watch_response(body: Body) -> Response<Body> {
    Response::builder()
        .status(200)
        .header("Content-Type", "application/json")
        .header("Cache-Control", "no-cache, private")
        .body(body)
        .expect("response")
}

#[allow(clippy::too_many_arguments)]
async fn pump(
    req: Request,
    initial: Vec<Value>,
    mut live: broadcast::Receiver<Arc<StoreEvent>>,
    start_rv: u64,
    tx: mpsc::Sender<Bytes>,
    timeout: Duration,
    mut drops: tokio::sync::watch::Receiver<u64>,
    store: Arc<Store>,
) {
    drops.borrow_and_update();
    for event in initial {
        if tx.send(line(&event)).await.is_err() {
            return;
        }
    }
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut bookmark = tokio::time::interval(BOOKMARK_EVERY);
    bookmark.tick().await;
    loop {
        tokio::select! {
            _ = &mut deadline => return,
            _ = drops.changed() => return,
            _ = tx.closed() => return,
            _ = bookmark.tick(), if req.bookmarks => {
                if tx.send(line(&req.bookmark(store.current_rv(), false))).await.is_err() {
                    return;
                }
            }
            received = live.recv() => match received {
                Ok(event) => {
                    if event.rv <= start_rv {
                        continue;
                    }
                    if let Some(e) = req.translate(&event) {
                        if tx.send(line(&e)).await.is_err() {
                            return;
                        }
                    }
                }
                // Fell behind the feed: end the stream; the client re-lists, as after a
                // real server's watch cache overflow.
                Err(_) => return,
            }
        }
    }
}
