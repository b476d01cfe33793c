//! `pods/exec` and `pods/portforward`: the WebSocket upgrade (sub-protocol negotiation, 101 with
//! `Sec-WebSocket-Accept`), then the session handed to [`super::streams`] with what it needs to
//! reach the pod's PostgreSQL as if from inside the container.

use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::faults::Faults;
use super::http::{switching_protocols, Body, Query};
use super::meta;
use super::simulator::Runtime;
use super::status::ApiError;
use super::streams::{self, ExecSpec};

/// The `Sec-WebSocket-Protocol` offers, joined (clients send one CSV header or several).
fn offered(req: &Request<Incoming>) -> Option<String> {
    let values: Vec<&str> = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

fn websocket_key(req: &Request<Incoming>) -> Result<String, ApiError> {
    req.headers()
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| ApiError::bad_request("missing Sec-WebSocket-Key"))
}

fn forbidden_protocol(offered: Option<&str>) -> ApiError {
    ApiError {
        code: 403,
        reason: "Forbidden",
        message: format!(
            "unable to upgrade connection: requested protocols {:?} not supported",
            offered.unwrap_or_default()
        ),
        details: None,
    }
}

/// The container a request targets (`container=`, else the only or first one).
fn container<'a>(pod: &'a Value, query: &Query) -> Result<&'a Value, ApiError> {
    let containers = pod["spec"]["containers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    match query.get("container") {
        Some(name) => containers
            .iter()
            .find(|c| c["name"] == name)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "container {name} is not valid for pod {}",
                    meta::name(pod)
                ))
            }),
        None => containers
            .first()
            .ok_or_else(|| ApiError::bad_request("pod has no containers")),
    }
}

fn not_running(pod: &Value) -> ApiError {
    ApiError::bad_request(format!(
        "pod {} does not have a host assigned or its container is not running",
        meta::name(pod)
    ))
}

pub fn exec(
    req: &mut Request<Incoming>,
    pod: &Value,
    query: &Query,
    runtime: &Runtime,
) -> Result<hyper::Response<Body>, ApiError> {
    let offers = offered(req);
    let protocol = streams::negotiate_exec_protocol(offers.as_deref())
        .ok_or_else(|| forbidden_protocol(offers.as_deref()))?;
    let container = container(pod, query)?;
    let container_name = container["name"].as_str().unwrap_or_default();
    let command = query.all("command");
    if command.is_empty() {
        return Err(ApiError::bad_request("you must specify at least 1 command"));
    }
    let env = runtime
        .exec_env(meta::namespace(pod), meta::name(pod), container_name)
        .ok_or_else(|| not_running(pod))?;
    let spec = ExecSpec {
        command,
        stdin: query.flag("stdin") && query.get("stdin").is_some(),
        // Absent means false, as PodExecOptions decodes them.
        stdout: query.flag("stdout") && query.get("stdout").is_some(),
        stderr: query.flag("stderr") && query.get("stderr").is_some(),
        tty: query.flag("tty") && query.get("tty").is_some(),
        env,
        run_as_service: true,
    };
    if !(spec.stdin || spec.stdout || spec.stderr) {
        return Err(ApiError::bad_request(
            "you must specify at least 1 of stdin, stdout, stderr",
        ));
    }
    let key = websocket_key(req)?;
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        streams::serve_exec(ws, protocol, spec).await;
    });
    Ok(switching_protocols(&key, protocol))
}

pub fn portforward(
    req: &mut Request<Incoming>,
    pod: &Value,
    query: &Query,
    runtime: &Runtime,
    faults: &Faults,
) -> Result<hyper::Response<Body>, ApiError> {
    let offers = offered(req);
    let protocol = streams::negotiate_portforward_protocol(offers.as_deref())
        .ok_or_else(|| forbidden_protocol(offers.as_deref()))?;
    let mut ports = Vec::new();
    for value in query.all("ports") {
        for p in value.split(',').filter(|p| !p.is_empty()) {
            let port: u16 = p
                .trim()
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid port: {p}")))?;
            ports.push(port);
        }
    }
    if ports.is_empty() {
        return Err(ApiError::bad_request(
            "query parameter \"port\" is required",
        ));
    }
    let target = runtime
        .endpoint(meta::namespace(pod), meta::name(pod))
        .ok_or_else(|| not_running(pod))?;
    let key = websocket_key(req)?;
    let upgrade = hyper::upgrade::on(req);
    let budget = faults.portforward_budget.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        streams::serve_portforward(ws, protocol, ports, target, Some(budget)).await;
    });
    Ok(switching_protocols(&key, protocol))
}
