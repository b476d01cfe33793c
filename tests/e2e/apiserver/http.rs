//! The HTTPS front end: TLS, bearer-token authentication, impersonation, the RBAC and error
//! faults, and routing of discovery and resource URLs to the registry, watch, table printing,
//! logs and the streaming subresources.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::auth::{self, Credentials};
use super::discovery;
use super::faults::Faults;
use super::fields::Part;
use super::meta;
use super::openapi;
use super::registry::{Ctx, DeleteOptions, PatchType, Registry};
use super::resources::ResourceType;
use super::selectors::{FieldSelector, LabelSelector};
use super::simulator::Runtime;
use super::status::ApiError;
use super::store::Store;
use super::table::{self, Include};
use super::upgrade;
use super::watch;

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// One request as the server saw it, for tests that assert on client behaviour.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub user: Option<String>,
    pub user_agent: String,
    pub impersonate_groups: Vec<String>,
}

pub struct Server {
    pub registry: Arc<Registry>,
    pub store: Arc<Store>,
    pub faults: Arc<Faults>,
    pub runtime: Arc<Runtime>,
    pub token: String,
    pub address: String,
    pub requests: Mutex<Vec<RequestRecord>>,
}

/// Accepts connections until the task is dropped.
pub async fn serve(listener: TcpListener, credentials: &Credentials, server: Arc<Server>) {
    let acceptor = TlsAcceptor::from(credentials.server_config());
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let server = server.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(server.handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades()
                .await;
        });
    }
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

fn respond(code: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("Content-Type", content_type)
        .header("Cache-Control", "no-cache, private")
        .header("Audit-Id", meta::new_uid())
        .body(full(body))
        .expect("response")
}

pub fn json_response(code: u16, value: &Value) -> Response<Body> {
    respond(
        code,
        "application/json",
        serde_json::to_vec(value).expect("json"),
    )
}

pub fn error_response(error: &ApiError) -> Response<Body> {
    json_response(error.code, &error.to_status())
}

/// Query parameters, decoded.
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(query: Option<&str>) -> Query {
        Query(
            query
                .unwrap_or_default()
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    pub fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("1" | "true" | "True" | ""))
    }
}

/// Percent-decoding with `+` as space (form encoding, as clients send query strings).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A parsed resource URL.
pub struct Target {
    pub rt: Arc<ResourceType>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

impl Server {
    fn header<'a>(req: &'a Request<Incoming>, name: &str) -> &'a str {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The authenticated user (impersonated user if asked), or `None` for anonymous.
    fn authenticate(&self, req: &Request<Incoming>) -> Result<Option<String>, ApiError> {
        let header = Self::header(req, "authorization");
        if header.is_empty() {
            return Ok(None);
        }
        match header.strip_prefix("Bearer ") {
            Some(token) if token.trim() == self.token => {}
            _ => return Err(ApiError::unauthorized()),
        }
        let impersonated = Self::header(req, "impersonate-user");
        Ok(Some(if impersonated.is_empty() {
            auth::USER.to_string()
        } else {
            impersonated.to_string()
        }))
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let user = self.authenticate(&req);
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(RequestRecord {
                method: req.method().to_string(),
                uri: req.uri().to_string(),
                user: user.clone().ok().flatten(),
                user_agent: Self::header(&req, "user-agent").to_string(),
                impersonate_groups: req
                    .headers()
                    .get_all("impersonate-group")
                    .iter()
                    .filter_map(|v| v.to_str().ok().map(str::to_string))
                    .collect(),
            });
        let path = req.uri().path().trim_end_matches('/').to_string();
        let public = matches!(
            path.as_str(),
            "/version" | "/healthz" | "/livez" | "/readyz"
        );
        let user = match user {
            Ok(Some(u)) => u,
            Ok(None) if public => "system:anonymous".into(),
            Ok(None) | Err(_) => return error_response(&ApiError::unauthorized()),
        };
        match self.route(req, &path, &user).await {
            Ok(response) => response,
            Err(error) => error_response(&error),
        }
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        path: &str,
        user: &str,
    ) -> Result<Response<Body>, ApiError> {
        let accept = Self::header(&req, "accept").to_string();
        match path {
            "/version" => return Ok(json_response(200, &discovery::version())),
            "/healthz" | "/livez" | "/readyz" => return Ok(respond(200, "text/plain", "ok")),
            _ => {}
        }
        if path == "/openapi/v3" {
            return Ok(json_response(200, &openapi::root(&self.store.types())));
        }
        if let Some(gv) = path.strip_prefix("/openapi/v3/") {
            let doc =
                openapi::group_version(&self.store.types(), gv).ok_or_else(ApiError::no_route)?;
            return Ok(json_response(200, &doc));
        }
        if path.starts_with("/openapi/") {
            return Err(ApiError::no_route());
        }
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (group, version, rest) = match segments.as_slice() {
            ["api"] | ["apis"] => {
                if req.method() != Method::GET {
                    return Err(ApiError::method_not_allowed());
                }
                if discovery::wants_aggregated(&accept) {
                    let doc = discovery::aggregated(path).ok_or_else(ApiError::no_route)?;
                    return Ok(respond(
                        200,
                        discovery::AGGREGATED,
                        serde_json::to_vec(&doc).expect("json"),
                    ));
                }
                let doc = discovery::legacy_document(path, &self.address)
                    .ok_or_else(ApiError::no_route)?;
                return Ok(json_response(200, &doc));
            }
            ["api", "v1"] | ["apis", _] | ["apis", _, _] => {
                let doc = discovery::legacy_document(path, &self.address)
                    .ok_or_else(ApiError::no_route)?;
                return Ok(json_response(200, &doc));
            }
            ["api", "v1", rest @ ..] => ("", "v1", rest),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => return Err(ApiError::no_route()),
        };
        let target = self.parse_target(group, version, rest)?;
        self.resource(req, target, user, &accept).await
    }

    fn parse_target(&self, group: &str, version: &str, rest: &[&str]) -> Result<Target, ApiError> {
        let lookup = |plural: &str| {
            self.store
                .lookup(group, version, plural)
                .ok_or_else(ApiError::no_route)
        };
        let target = match rest {
            ["namespaces", ns, plural, tail @ ..]
                if self.store.lookup(group, version, plural).is_some() =>
            {
                let rt = lookup(plural)?;
                if !rt.namespaced {
                    return Err(ApiError::no_route());
                }
                Target {
                    rt,
                    namespace: Some(ns.to_string()),
                    name: tail.first().map(|s| s.to_string()),
                    subresource: tail.get(1).map(|s| s.to_string()),
                }
            }
            [plural, tail @ ..] => {
                let rt = lookup(plural)?;
                if rt.namespaced && !tail.is_empty() {
                    return Err(ApiError::no_route());
                }
                Target {
                    rt,
                    namespace: None,
                    name: tail.first().map(|s| s.to_string()),
                    subresource: tail.get(1).map(|s| s.to_string()),
                }
            }
            [] => return Err(ApiError::no_route()),
        };
        if let Some(sub) = &target.subresource {
            if !target.rt.has_subresource(sub) {
                return Err(ApiError::no_route());
            }
        }
        Ok(target)
    }

    async fn resource(
        &self,
        mut req: Request<Incoming>,
        target: Target,
        user: &str,
        accept: &str,
    ) -> Result<Response<Body>, ApiError> {
        let query = Query::parse(req.uri().query());
        let rt = target.rt.clone();
        let ns = target.namespace.clone().unwrap_or_default();
        let sub = target.subresource.as_deref();
        let is_upgrade = Self::header(&req, "upgrade").eq_ignore_ascii_case("websocket");
        let verb = match (req.method().clone(), &target.name) {
            (Method::GET, None) if query.flag("watch") && query.get("watch").is_some() => "watch",
            (Method::GET, None) => "list",
            (Method::GET, Some(_)) if matches!(sub, Some("exec" | "portforward")) => "create",
            (Method::GET, Some(_)) if query.flag("watch") && query.get("watch").is_some() => {
                "watch"
            }
            (Method::GET, Some(_)) => "get",
            (Method::POST, _) => "create",
            (Method::PUT, _) => "update",
            (Method::PATCH, _) => "patch",
            (Method::DELETE, None) => "deletecollection",
            (Method::DELETE, Some(_)) => "delete",
            _ => return Err(ApiError::method_not_allowed()),
        };
        let resource_name = match sub {
            Some(s) => format!("{}/{s}", rt.plural),
            None => rt.plural.clone(),
        };
        let ns_opt = target.namespace.as_deref();
        if self.faults.is_denied(verb, &resource_name, ns_opt) {
            return Err(ApiError::forbidden(
                user,
                verb,
                &rt.group,
                &rt.plural,
                sub,
                ns_opt,
                target.name.as_deref(),
            ));
        }
        if self.faults.is_failing(verb, &resource_name, ns_opt) {
            return Err(ApiError::internal("injected fault"));
        }
        if rt.create_only && verb != "create" {
            return Err(ApiError::method_not_allowed());
        }
        let dry_run = query.all("dryRun").iter().any(|d| d == "All");
        let manager = query
            .get("fieldManager")
            .map(str::to_string)
            .unwrap_or_else(|| {
                let ua = Self::header(&req, "user-agent");
                ua.split('/').next().unwrap_or_default().to_string()
            });
        let ctx = Ctx {
            user: user.to_string(),
            manager,
            dry_run,
        };
        let part = if sub == Some("status") {
            Part::Status
        } else {
            Part::Main
        };
        let wants_table = table::wants_table(accept);
        let include = Include::parse(query.get("includeObject"));

        match (verb, target.name.as_deref(), sub) {
            ("list", None, None) => {
                let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))?;
                let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))?;
                let (items, rv) = self.store.list(&rt, target.namespace.as_deref());
                let items: Vec<Value> = items
                    .into_iter()
                    .filter(|o| labels.matches(o) && fields.matches(o))
                    .collect();
                if wants_table {
                    return Ok(json_response(
                        200,
                        &table::table(&rt.kind, &items, &rv.to_string(), include),
                    ));
                }
                let items: Vec<Value> = items.into_iter().map(strip_type).collect();
                Ok(json_response(
                    200,
                    &json!({
                        "kind": format!("{}List", rt.kind),
                        "apiVersion": rt.api_version(),
                        "metadata": {"resourceVersion": rv.to_string()},
                        "items": items,
                    }),
                ))
            }
            ("watch", name, None) => {
                let mut labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))?;
                let mut fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))?;
                if let Some(n) = name {
                    fields = FieldSelector::parse(&format!("metadata.name={n}"))?;
                    labels = LabelSelector::default();
                }
                watch::respond(
                    &self.store,
                    &self.faults,
                    watch::Request {
                        rt,
                        namespace: target.namespace.clone(),
                        labels,
                        fields,
                        resource_version: query.get("resourceVersion").map(str::to_string),
                        bookmarks: query.flag("allowWatchBookmarks")
                            && query.get("allowWatchBookmarks").is_some(),
                        send_initial_events: query.get("sendInitialEvents") == Some("true"),
                        timeout_seconds: query.get("timeoutSeconds").and_then(|t| t.parse().ok()),
                        table: wants_table.then_some(include),
                    },
                )
            }
            ("get", Some(name), None | Some("status")) => {
                let object = self
                    .store
                    .get(&rt, &ns, name)
                    .ok_or_else(|| ApiError::not_found(&rt, name))?;
                if wants_table {
                    let rv = object["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    return Ok(json_response(
                        200,
                        &table::table(&rt.kind, &[object], &rv, include),
                    ));
                }
                Ok(json_response(200, &object))
            }
            ("get", Some(name), Some("log")) => self.logs(&rt, &ns, name, &query),
            ("create", Some(name), Some(kind @ ("exec" | "portforward"))) => {
                if !is_upgrade {
                    return Err(ApiError::bad_request("Upgrade request required"));
                }
                let pod = self
                    .store
                    .get(&rt, &ns, name)
                    .ok_or_else(|| ApiError::not_found(&rt, name))?;
                if kind == "exec" {
                    upgrade::exec(&mut req, &pod, &query, &self.runtime)
                } else {
                    upgrade::portforward(&mut req, &pod, &query, &self.runtime, &self.faults)
                }
            }
            ("create", None, None) => {
                let body = read_json(req).await?;
                if rt.create_only {
                    let review = self.registry.access_review(body);
                    return Ok(json_response(201, &review));
                }
                let object = self.registry.create(&rt, &ns, body, &ctx)?;
                Ok(json_response(201, &object))
            }
            ("update", Some(name), None | Some("status")) => {
                let body = read_json(req).await?;
                let object = self.registry.replace(&rt, &ns, name, body, part, &ctx)?;
                Ok(json_response(200, &object))
            }
            ("patch", Some(name), None | Some("status")) => {
                let content_type = Self::header(&req, "content-type").to_string();
                let patch_type = PatchType::from_content_type(&content_type)
                    .ok_or_else(|| ApiError::unsupported_media_type(&content_type))?;
                let bytes = read_body(req).await?;
                let body = if patch_type == PatchType::Apply {
                    parse_yaml(&bytes)?
                } else {
                    serde_json::from_slice(&bytes)
                        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?
                };
                let force = query.flag("force") && query.get("force").is_some();
                let written = self
                    .registry
                    .patch(&rt, &ns, name, patch_type, &body, part, force, &ctx)?;
                Ok(json_response(
                    if written.created { 201 } else { 200 },
                    &written.object,
                ))
            }
            ("delete", Some(name), None) => {
                let body = read_body(req).await?;
                let opts = delete_options(&query, &body)?;
                let ctx = Ctx {
                    dry_run: ctx.dry_run || opts.1,
                    ..ctx
                };
                let out = self.registry.delete(&rt, &ns, name, &opts.0, &ctx)?;
                Ok(json_response(200, &out))
            }
            ("deletecollection", None, None) => {
                let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))?;
                let body = read_body(req).await?;
                let opts = delete_options(&query, &body)?;
                let out = self.registry.delete_collection(
                    &rt,
                    target.namespace.as_deref(),
                    &labels,
                    &opts.0,
                    &ctx,
                )?;
                Ok(json_response(200, &out))
            }
            _ => Err(ApiError::method_not_allowed()),
        }
    }

    /// `GET pods/{name}/log`: the container's output (PostgreSQL's server log).
    fn logs(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        query: &Query,
    ) -> Result<Response<Body>, ApiError> {
        let pod = self
            .store
            .get(rt, ns, name)
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        let containers: Vec<String> = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect();
        let container = match query.get("container") {
            Some(c) => {
                if !containers.iter().any(|x| x == c) {
                    return Err(ApiError::bad_request(format!(
                        "container {c} is not valid for pod {name}"
                    )));
                }
                c.to_string()
            }
            None if containers.len() == 1 => containers[0].clone(),
            None => {
                return Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    containers.join(" ")
                )))
            }
        };
        let previous = query.flag("previous") && query.get("previous").is_some();
        let lines = self
            .runtime
            .logs(ns, name, &container, previous)
            .ok_or_else(|| {
                if previous {
                    return ApiError::bad_request(format!(
                        "previous terminated container \"{container}\" in pod \"{name}\" not found"
                    ));
                }
                let waiting = pod["status"]["containerStatuses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["name"] == container.as_str())
                    .and_then(|c| c["state"]["waiting"]["reason"].as_str())
                    .unwrap_or("ContainerCreating")
                    .to_string();
                ApiError::bad_request(format!(
                    "container \"{container}\" in pod \"{name}\" is waiting to start: {waiting}"
                ))
            })?;
        let tail = query
            .get("tailLines")
            .and_then(|t| t.parse::<usize>().ok())
            .unwrap_or(usize::MAX);
        let start = lines.len().saturating_sub(tail);
        let mut text = lines[start..].join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        Ok(respond(200, "text/plain", text))
    }
}

/// List items carry no kind/apiVersion on the wire (the list says what they are).
fn strip_type(mut object: Value) -> Value {
    if let Some(map) = object.as_object_mut() {
        map.remove("kind");
        map.remove("apiVersion");
    }
    object
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    req.into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))
}

async fn read_json(req: Request<Incoming>) -> Result<Value, ApiError> {
    let content_type = Server::header(&req, "content-type").to_string();
    if content_type.contains("protobuf") {
        return Err(ApiError::unsupported_media_type(&content_type));
    }
    let bytes = read_body(req).await?;
    if content_type.contains("yaml") {
        return parse_yaml(&bytes);
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "the body of the request was in an unknown format: {e}"
        ))
    })
}

/// Apply bodies: YAML (or JSON, which is YAML).
fn parse_yaml(bytes: &[u8]) -> Result<Value, ApiError> {
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        return Ok(v);
    }
    let text = String::from_utf8_lossy(bytes);
    serde_saphyr::from_str::<Value>(&text)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
}

/// DeleteOptions from the body and query; the bool is dry run.
fn delete_options(query: &Query, body: &Bytes) -> Result<(DeleteOptions, bool), ApiError> {
    let parsed: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    let grace = parsed["gracePeriodSeconds"]
        .as_i64()
        .or_else(|| query.get("gracePeriodSeconds").and_then(|g| g.parse().ok()));
    let propagation = parsed["propagationPolicy"]
        .as_str()
        .map(str::to_string)
        .or_else(|| query.get("propagationPolicy").map(str::to_string))
        .or_else(|| match parsed["orphanDependents"].as_bool() {
            Some(true) => Some("Orphan".into()),
            _ => None,
        });
    let dry_run = parsed["dryRun"]
        .as_array()
        .is_some_and(|d| d.iter().any(|x| x == "All"));
    Ok((
        DeleteOptions {
            grace_period: grace,
            propagation,
            precondition_uid: parsed["preconditions"]["uid"].as_str().map(str::to_string),
            precondition_rv: parsed["preconditions"]["resourceVersion"]
                .as_str()
                .map(str::to_string),
        },
        dry_run,
    ))
}

/// A 101 Switching Protocols answer for a WebSocket upgrade.
pub fn switching_protocols(key: &str, protocol: &str) -> Response<Body> {
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut builder = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("Upgrade", "websocket")
        .header("Connection", "Upgrade")
        .header("Sec-WebSocket-Accept", accept);
    if !protocol.is_empty() {
        builder = builder.header("Sec-WebSocket-Protocol", protocol);
    }
    builder.body(full(Bytes::new())).expect("response")
}
