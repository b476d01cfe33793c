//! The server container's log through the pod log API: once, or followed across restarts of
//! the container and replacements of the pod, without printing a line twice.
//!
//! A followed log stream ends when its container exits. Following then finds the release's
//! pod again (the same one restarted, or a new one) and asks for the lines since the last one
//! printed: the API's `sinceTime` has whole seconds, so the lines of that last second come
//! again and are dropped by their timestamps here.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, LogParams};
use kube::runtime::{watcher, WatchStreamExt};

use super::access::Cluster;
use super::release;
use crate::error::Error;
use crate::manifests::render::CONTAINER;

/// What to read, in the terms of `kubectl logs`.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub follow: bool,
    pub tail: Option<u32>,
    pub since: Option<Duration>,
    pub previous: bool,
    pub timestamps: bool,
}

/// Where a release's server log is: the pods that may hold it, the one preferred among them,
/// and the object whose deletion ends a followed log. The release says (`Release::log_source`):
/// `R-0` among its StatefulSet's pods; a Cluster's primary, whichever instance that is now.
#[derive(Debug, Clone)]
pub struct LogSource {
    pub release: String,
    /// The label selector of the pods to look at and watch.
    pub selector: String,
    /// The pod to read when it is among them; else the first.
    pub preferred: Option<String>,
    /// The object that owns the pods, and what to call it when it is gone.
    pub owner: ApiResource,
    pub owner_kind: &'static str,
}

impl LogSource {
    /// A StatefulSet release's: its pods, `R-0` first.
    pub fn stateful_set(release: &str) -> Self {
        LogSource {
            release: release.to_string(),
            selector: release::selector(release),
            preferred: Some(release::pod_name(release)),
            owner: ApiResource::erase::<StatefulSet>(&()),
            owner_kind: "StatefulSet",
        }
    }
}

/// How soon following looks again after a stream ended with nothing changed in the pods: the
/// stream was cut while its container runs (an API server restart, a proxy's idle cut).
const RETRY: Duration = Duration::from_millis(500);

/// When following looks for the server container next.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Next {
    Now,
    /// A container that is not running yet: when the release's pods change.
    OnChange,
    /// After a stream ended: when the pods change (the container stopped), or after [`RETRY`]
    /// (the stream was cut while it runs, and nothing will change).
    Soon,
}

/// Writes the release's server log, line by line, to `out`. Without `follow` it returns at the
/// end of the log; with it, only when the release's StatefulSet is gone, on an error, or when
/// `out` says false (stdout closed: nobody reads any more).
pub async fn read(
    cluster: &Cluster,
    source: &LogSource,
    options: &LogOptions,
    mut out: impl FnMut(&str) -> bool,
) -> Result<(), Error> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let mut params = LogParams {
        container: Some(CONTAINER.into()),
        follow: options.follow,
        previous: options.previous,
        tail_lines: options.tail.map(i64::from),
        since_seconds: options.since.map(|d| d.as_secs().max(1) as i64),
        // Following keeps track by the timestamps; they are cut off again unless asked for.
        timestamps: options.timestamps || options.follow,
        ..LogParams::default()
    };
    let release = source.release.as_str();
    if !options.follow {
        let pod = find_pod(cluster, source)
            .await?
            .ok_or_else(|| no_pod(cluster, release))?;
        let name = pod.metadata.name.clone().unwrap_or_default();
        let stream = pods
            .log_stream(&name, &params)
            .await
            .map_err(|e| log_error(cluster, release, &name, options.previous, e))?;
        let mut lines = stream.lines();
        while let Some(line) = lines.next().await {
            let line = line.map_err(|source| Error::Io {
                context: format!("reading the log of pod {name}"),
                source,
            })?;
            if !out(&line) {
                return Ok(());
            }
        }
        return Ok(());
    }

    // Following: each stream ends when its container exits (or the stream is cut); the
    // server is then found again, and the log goes on from the last line printed.
    let owners: Api<DynamicObject> =
        Api::namespaced_with(cluster.client.clone(), &cluster.namespace, &source.owner);
    // The release's pods, watched: a watch error (retried with back-off) counts as a change,
    // so a watch that is refused degrades to looking at the back-off's pace.
    let config = watcher::Config::default().labels(&source.selector);
    let mut changes = std::pin::pin!(watcher(pods.clone(), config).default_backoff());
    let mut cursor = Cursor::default();
    let mut first = true;
    let mut said_waiting = false;
    let mut next = Next::Now;
    loop {
        match next {
            Next::Now => {}
            Next::OnChange => {
                let _ = changes.next().await;
            }
            Next::Soon => {
                tokio::select! {
                    _ = changes.next() => {}
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        }
        next = Next::OnChange;
        let pod = match find_pod(cluster, source).await {
            Ok(pod) => pod,
            // The API server restarting, a network blip: look again soon.
            Err(Error::ClusterUnreachable { .. }) if !first => {
                next = Next::Soon;
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some(pod) = pod else {
            if first {
                return Err(no_pod(cluster, release));
            }
            match owners.get_opt(release).await {
                Ok(None) => {
                    crate::note!(
                        "release {release}'s {} is gone: no more log to follow",
                        source.owner_kind
                    );
                    return Ok(());
                }
                Ok(Some(_)) | Err(_) => continue,
            }
        };
        let running = container_running(&pod);
        if !first && !running {
            continue;
        }
        let name = pod.metadata.name.clone().unwrap_or_default();
        if cursor.last.is_some() {
            // What --tail and --since chose was printed: from now on, the lines after it.
            params.tail_lines = None;
            params.since_seconds = None;
            params.since_time = cursor.since();
        }
        let stream = match pods.log_stream(&name, &params).await {
            Ok(stream) => stream,
            // Not started yet (ContainerCreating, PodInitializing): wait for it.
            Err(kube::Error::Api(status)) if first && status.code == 400 && !running => {
                if !said_waiting {
                    crate::note!("waiting for the server container of pod {name} to start");
                    said_waiting = true;
                }
                first = false;
                continue;
            }
            Err(e) if first => return Err(log_error(cluster, release, &name, false, e)),
            // A container that stopped again in between refuses, or the API failed: look
            // again soon.
            Err(_) => {
                next = Next::Soon;
                continue;
            }
        };
        first = false;
        let mut lines = stream.lines();
        next = Next::Soon;
        loop {
            tokio::select! {
                line = lines.next() => {
                    let Some(Ok(line)) = line else { break };
                    if cursor
                        .take(&line, options.timestamps)
                        .is_some_and(|t| !out(t))
                    {
                        return Ok(());
                    }
                }
                // The log to read may move while this one goes on: a Cluster's primary is
                // another instance after a switchover, whose old primary keeps running.
                _ = changes.next() => {
                    let moved = find_pod(cluster, source).await.ok().flatten().filter(|p| {
                        p.metadata.name.as_deref() != Some(name.as_str()) && container_running(p)
                    });
                    if moved.is_some() {
                        next = Next::Now;
                        break;
                    }
                }
            }
        }
    }
}

/// The end of a pod's log, at most `max` bytes of whole lines, read as a stream: a log of any
/// size costs no more memory than that. A log cut short starts with a line that says so.
pub async fn tail_of(
    pods: &Api<Pod>,
    pod: &str,
    params: &LogParams,
    max: usize,
) -> Result<String, kube::Error> {
    let stream = pods.log_stream(pod, params).await?;
    let mut lines = stream.lines();
    let mut tail = Tail::new(max);
    while let Some(line) = lines.next().await {
        tail.push(line.map_err(kube::Error::ReadEvents)?);
    }
    Ok(tail.text())
}

/// The last lines seen, at most `max` bytes of them.
struct Tail {
    max: usize,
    kept: std::collections::VecDeque<String>,
    size: usize,
    dropped: usize,
}

impl Tail {
    fn new(max: usize) -> Self {
        Self {
            max,
            kept: Default::default(),
            size: 0,
            dropped: 0,
        }
    }

    fn push(&mut self, line: String) {
        self.size += line.len() + 1;
        self.kept.push_back(line);
        while self.size > self.max {
            let Some(first) = self.kept.pop_front() else {
                break;
            };
            self.size -= first.len() + 1;
            self.dropped += first.len() + 1;
        }
    }

    fn text(self) -> String {
        let mut text = String::with_capacity(self.size + 100);
        if self.dropped > 0 {
            text.push_str(&format!(
                "[the first {} bytes of the log are left out: only its last {} bytes are kept]\n",
                self.dropped, self.max
            ));
        }
        for line in self.kept {
            text.push_str(&line);
            text.push('\n');
        }
        text
    }
}

/// The release's pod: the preferred one among those the source selects, else the first.
pub async fn find_pod(cluster: &Cluster, source: &LogSource) -> Result<Option<Pod>, Error> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let list = pods
        .list(&ListParams::default().labels(&source.selector))
        .await
        .map_err(|e| cluster.error("list", "pods", e))?;
    let mut items = list.items;
    let index = items
        .iter()
        .position(|p| p.metadata.name.is_some() && p.metadata.name == source.preferred)
        .unwrap_or(0);
    Ok((!items.is_empty()).then(|| items.swap_remove(index)))
}

/// Whether the server container is running now (a new log to follow).
fn container_running(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.name == CONTAINER && c.state.as_ref().is_some_and(|s| s.running.is_some())
                })
            })
}

fn no_pod(cluster: &Cluster, release: &str) -> Error {
    Error::NotFound {
        message: format!(
            "release {release:?} has no pod in namespace {:?} (context {:?})",
            cluster.namespace, cluster.context
        ),
        hint: Some(format!(
            "see what it is waiting for: kubectl pg status {release} -n {}",
            cluster.namespace
        )),
    }
}

/// The API's refusals in the user's terms: above all, no previous container to read.
pub fn log_error(
    cluster: &Cluster,
    release: &str,
    pod: &str,
    previous: bool,
    e: kube::Error,
) -> Error {
    if let kube::Error::Api(status) = &e {
        let message = status.message.to_lowercase();
        if previous && status.code == 400 && message.contains("previous terminated container") {
            return Error::NotFound {
                message: format!(
                    "pod {pod} has no previous container: the server has not restarted since the pod started"
                ),
                hint: Some(format!(
                    "the current log: kubectl pg logs {release} -n {} (a replaced pod keeps no previous log)",
                    cluster.namespace
                )),
            };
        }
        if status.code == 400 {
            return Error::NotFound {
                message: format!("no log of pod {pod}: {}", status.message),
                hint: Some(format!(
                    "see what the pod is waiting for: kubectl pg status {release} -n {}",
                    cluster.namespace
                )),
            };
        }
    }
    cluster.error("get", "pods/log", e)
}

/// Where following stands: the timestamp of the last line printed, and the lines printed with
/// that very timestamp (a resumed stream repeats them).
#[derive(Debug, Default)]
struct Cursor {
    last: Option<Timestamp>,
    at_last: HashSet<String>,
}

impl Cursor {
    /// The text to print for a line read with timestamps, or None when it was printed before.
    fn take<'a>(&mut self, line: &'a str, keep_timestamp: bool) -> Option<&'a str> {
        let Some((stamp, rest)) = line
            .split_once(' ')
            .and_then(|(t, rest)| Some((t.parse::<Timestamp>().ok()?, rest)))
        else {
            return Some(line);
        };
        match self.last {
            Some(last) if stamp < last => return None,
            Some(last) if stamp == last => {
                if !self.at_last.insert(line.to_string()) {
                    return None;
                }
            }
            _ => {
                self.last = Some(stamp);
                self.at_last.clear();
                self.at_last.insert(line.to_string());
            }
        }
        Some(if keep_timestamp { line } else { rest })
    }

    /// The `sinceTime` to resume from: the last line's second, rounded down (the API takes
    /// whole seconds and would round up past lines not printed yet).
    fn since(&self) -> Option<Timestamp> {
        self.last
            .and_then(|t| Timestamp::from_second(t.as_second()).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_stream_prints_no_line_twice() {
        let mut cursor = Cursor::default();
        let first = [
            "2026-12-01T10:00:00.100Z a",
            "2026-12-01T10:00:00.700Z b",
            "2026-12-01T10:00:00.700Z c",
        ];
        let printed: Vec<&str> = first.iter().filter_map(|l| cursor.take(l, false)).collect();
        assert_eq!(printed, ["a", "b", "c"]);
        assert_eq!(
            cursor.since().unwrap().to_string(),
            "2026-12-01T10:00:00Z",
            "rounded down, never up"
        );
        // The resumed stream starts at the second: what was printed comes again.
        let again = [
            "2026-12-01T10:00:00.100Z a",
            "2026-12-01T10:00:00.700Z b",
            "2026-12-01T10:00:00.700Z c",
            "2026-12-01T10:00:00.700Z d",
            "2026-12-01T10:00:03Z e",
        ];
        let printed: Vec<&str> = again.iter().filter_map(|l| cursor.take(l, true)).collect();
        assert_eq!(
            printed,
            ["2026-12-01T10:00:00.700Z d", "2026-12-01T10:00:03Z e"]
        );
    }

    #[test]
    fn a_tail_keeps_the_last_lines_within_its_size() {
        let mut tail = Tail::new(10);
        for line in ["first", "second", "abc", "de"] {
            tail.push(line.to_string());
        }
        assert_eq!(
            tail.text(),
            "[the first 13 bytes of the log are left out: only its last 10 bytes are kept]\nabc\nde\n"
        );
        let mut whole = Tail::new(100);
        whole.push("only".into());
        assert_eq!(whole.text(), "only\n");
    }

    #[test]
    fn lines_without_a_timestamp_pass() {
        let mut cursor = Cursor::default();
        assert_eq!(cursor.take("no stamp here", false), Some("no stamp here"));
        assert_eq!(cursor.since(), None);
    }
}
