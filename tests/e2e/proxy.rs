//! A fault-injecting TLS reverse proxy in front of a real kube-apiserver, for the faults a real
//! server cannot be made to produce on demand: failed, delayed or unanswered requests, watches
//! cut mid-stream and upgraded (exec / port-forward) streams cut after some bytes.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::{danger::ClientCertVerifier, WebPkiClientVerifier};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// The apiserver to forward to, and the client certificate the proxy authenticates with there.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// `https://IP:PORT`.
    pub url: String,
    pub ca_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

/// A proxy in front of the test cluster's apiserver, with the admin's client certificate, and
/// the path of a kubeconfig in the scope's directory that points at it.
pub fn in_front_of(scope: &crate::scope::Scope) -> (Proxy, String) {
    let pem = |name: &str| std::fs::read_to_string(scope.plane.pki(name)).unwrap();
    let proxy = Proxy::start(Upstream {
        url: scope.plane.server.clone(),
        ca_pem: pem("ca.crt"),
        client_cert_pem: pem("admin.crt"),
        client_key_pem: pem("admin.key"),
    });
    let path = scope.dir.path().join("proxy.kubeconfig");
    proxy.kubeconfig(&path);
    (proxy, path.display().to_string())
}

/// A request as the proxy received it, whether it was forwarded or faulted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub method: String,
    pub path_and_query: String,
}

/// Which requests a fault applies to: an optional method and a substring of the path and query.
#[derive(Clone, Debug, Default)]
pub struct Matcher {
    method: Option<String>,
    path: String,
}

impl Matcher {
    /// Every request.
    pub fn any() -> Matcher {
        Matcher::default()
    }

    /// Requests of any method whose path and query contain `path`.
    pub fn path(path: &str) -> Matcher {
        let path = path.to_string();
        Matcher { method: None, path }
    }

    /// Requests with `method` whose path and query contain `path`.
    pub fn new(method: &str, path: &str) -> Matcher {
        let method = Some(method.to_string());
        Matcher {
            method,
            ..Matcher::path(path)
        }
    }

    fn matches(&self, request: &Recorded) -> bool {
        let method = self.method.as_deref();
        method.is_none_or(|m| m.eq_ignore_ascii_case(&request.method))
            && request.path_and_query.contains(&self.path)
    }
}

/// What a faulted request is answered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// A Kubernetes Status with this code.
    Status(u16),
    /// An HTML error page with this code, as a proxy in front of the apiserver sends it.
    Html(u16),
}

#[derive(Default)]
struct Faults {
    failures: Vec<(usize, Answer, Matcher)>,
    endless: Vec<Matcher>,
    delays: Vec<(Duration, Matcher)>,
    hangs: Vec<Matcher>,
    trickles: Vec<(Duration, Matcher)>,
    upgraded_budget: Option<usize>,
    upgraded_frozen: bool,
}

impl Faults {
    /// The failure answer, whether to hang and the delay for `request`, spending a failure.
    fn apply(&mut self, request: &Recorded) -> (Option<Answer>, bool, Option<Duration>) {
        let failure = (self.failures.iter_mut()).find(|(_, _, m)| m.matches(request));
        let failure = failure.map(|(left, status, _)| {
            *left -= 1;
            *status
        });
        self.failures.retain(|(left, _, _)| *left > 0);
        let hang = self.hangs.iter().any(|m| m.matches(request));
        let delay = self.delays.iter().find(|(_, m)| m.matches(request));
        (failure, hang, delay.map(|(d, _)| *d))
    }

    /// Whether `request` gets an endless body.
    fn endless(&self, request: &Recorded) -> bool {
        self.endless.iter().any(|m| m.matches(request))
    }

    /// The pause between bytes of the response to `request`, when it is to trickle.
    fn trickle(&self, request: &Recorded) -> Option<Duration> {
        let found = self.trickles.iter().find(|(_, m)| m.matches(request));
        found.map(|(every, _)| *every)
    }

    /// How many of `n` upgraded bytes may pass before the stream is cut, if it is to be cut now.
    fn take_upgraded(&mut self, n: usize) -> Option<usize> {
        let left = self.upgraded_budget?;
        self.upgraded_budget = left.checked_sub(n).filter(|&rest| rest > 0);
        (n >= left).then_some(left)
    }
}

struct State {
    upstream: SocketAddr,
    tls: TlsConnector,
    faults: Mutex<Faults>,
    requests: Mutex<Vec<Recorded>>,
    recorded: Condvar,
    // Bumping these wakes every request that subscribed before: the hung ones, the watches.
    hangs_cleared: watch::Sender<u64>,
    watches_cut: watch::Sender<u64>,
}

impl State {
    fn faults(&self) -> MutexGuard<'_, Faults> {
        lock(&self.faults)
    }

    fn requests(&self) -> MutexGuard<'_, Vec<Recorded>> {
        lock(&self.requests)
    }
}

/// A panicking test thread must not take the proxy down with it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The running proxy; dropping it stops it and closes every connection.
pub struct Proxy {
    state: Arc<State>,
    url: String,
    ca_pem: String,
    stop: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Proxy {
    /// Starts the proxy on a free port of 127.0.0.1, on its own thread and runtime; it accepts
    /// connections as soon as this returns.
    pub fn start(upstream: Upstream) -> Proxy {
        let ca = ca();
        let (cert, key) = leaf(&ca, &["127.0.0.1", "localhost"]);
        let acceptor = acceptor(&cert, &key, WebPkiClientVerifier::no_client_auth());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).expect("non-blocking");
        let url = format!("https://{}", listener.local_addr().expect("proxy address"));
        let state = Arc::new(State {
            upstream: (upstream.url.strip_prefix("https://"))
                .and_then(|address| address.trim_end_matches('/').parse().ok())
                .expect("the upstream URL is https://IP:PORT"),
            tls: connector(
                &upstream.ca_pem,
                Some((&upstream.client_cert_pem, &upstream.client_key_pem)),
            ),
            faults: Mutex::default(),
            requests: Mutex::default(),
            recorded: Condvar::new(),
            hangs_cleared: watch::Sender::new(0),
            watches_cut: watch::Sender::new(0),
        });
        let (shutdown, stopped) = oneshot::channel();
        let serving = state.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("proxy listener");
                let handler = move |req| handle(serving.clone(), req);
                tokio::select! {
                    () = serve(listener, acceptor, handler) => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime drops every connection task, closing its sockets.
        });
        let stop = Some((shutdown, thread));
        let ca_pem = ca.pem();
        Proxy {
            state,
            url,
            ca_pem,
            stop,
        }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The CA that signed the proxy's server certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes a kubeconfig (JSON, which is YAML too) whose only context, `proxy`, points at the
    /// proxy. Its token is a placeholder the proxy strips: without any credential kubectl stops
    /// to prompt for a username.
    pub fn kubeconfig(&self, path: &Path) {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "proxy", "cluster": {"server": self.url, "certificate-authority-data": ca}}],
            "users": [{"name": "proxy", "user": {"token": "unused"}}],
            "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "proxy"}}],
            "current-context": "proxy",
        });
        let text = serde_json::to_string_pretty(&config).expect("kubeconfig JSON");
        std::fs::write(path, text).expect("write the proxy kubeconfig");
    }

    /// Every request received so far, in order of arrival.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests().clone()
    }

    pub fn clear_requests(&self) {
        self.state.requests().clear();
    }

    /// Waits up to `timeout` for the recorded requests to satisfy `condition`; false on timeout.
    pub fn wait_for(&self, timeout: Duration, mut done: impl FnMut(&[Recorded]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut requests = self.state.requests();
        while !done(&requests) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let waited = self.state.recorded.wait_timeout(requests, left);
            requests = waited.unwrap_or_else(PoisonError::into_inner).0;
        }
        true
    }

    /// The next `n` matching requests get `status` with a Kubernetes Status body, without
    /// reaching the upstream.
    pub fn fail_next(&self, n: usize, status: u16, matcher: Matcher) {
        assert!(StatusCode::from_u16(status).is_ok(), "bad status {status}");
        if n > 0 {
            let answer = Answer::Status(status);
            self.state.faults().failures.push((n, answer, matcher));
        }
    }

    /// The next `n` matching requests get `status` with an HTML page, as nginx in front of an
    /// apiserver it cannot reach answers, without reaching the upstream.
    pub fn fail_next_html(&self, n: usize, status: u16, matcher: Matcher) {
        assert!(StatusCode::from_u16(status).is_ok(), "bad status {status}");
        if n > 0 {
            let answer = Answer::Html(status);
            self.state.faults().failures.push((n, answer, matcher));
        }
    }

    /// Matching requests get a 200 whose JSON body never ends, without reaching the upstream,
    /// until [`Proxy::clear_faults`].
    pub fn endless(&self, matcher: Matcher) {
        self.state.faults().endless.push(matcher);
    }

    /// Matching requests wait `delay` before they are forwarded, until [`Proxy::clear_delay`].
    pub fn delay(&self, delay: Duration, matcher: Matcher) {
        self.state.faults().delays.push((delay, matcher));
    }

    pub fn clear_delay(&self) {
        self.state.faults().delays.clear();
    }

    /// Matching requests get no answer until [`Proxy::clear_hang`], which forwards them.
    pub fn hang(&self, matcher: Matcher) {
        self.state.faults().hangs.push(matcher);
    }

    /// Answers requests matching `matcher` one byte of body every `every`: each read makes
    /// progress, so only a deadline on the whole response ends the wait.
    pub fn trickle(&self, every: Duration, matcher: Matcher) {
        self.state.faults().trickles.push((every, matcher));
    }

    pub fn clear_hang(&self) {
        self.state.faults().hangs.clear();
        self.state.hangs_cleared.send_modify(|n| *n += 1);
    }

    /// The upgraded stream that carries the `bytes`-th byte from now on, counted over every
    /// upgraded stream in both directions, is cut right after it; later streams are left alone.
    pub fn drop_upgraded_after(&self, bytes: usize) {
        self.state.faults().upgraded_budget = Some(bytes);
    }

    /// Upgraded streams stop passing bytes, in both directions, without closing: a path gone
    /// silent. [`Proxy::clear_faults`] cuts the frozen streams.
    pub fn freeze_upgraded(&self) {
        self.state.faults().upgraded_frozen = true;
    }

    /// Cuts the connection of every watch (`watch=true` or `watch=1`) received so far, mid-stream
    /// or before its response starts.
    pub fn drop_watches(&self) {
        self.state.watches_cut.send_modify(|n| *n += 1);
    }

    /// Removes every fault, releasing hung requests; recorded requests are kept.
    pub fn clear_faults(&self) {
        *self.state.faults() = Faults::default();
        self.state.hangs_cleared.send_modify(|n| *n += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some((shutdown, thread)) = self.stop.take() {
            let _ = shutdown.send(());
            let _ = thread.join();
        }
    }
}

/// A TLS client for HTTP/1.1 that trusts `ca_pem` and presents `identity` (certificate, key).
fn connector(ca_pem: &str, identity: Option<(&str, &str)>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        None => config.with_no_client_auth(),
        Some((cert, key)) => {
            let certs: Result<Vec<_>, _> =
                CertificateDer::pem_slice_iter(cert.as_bytes()).collect();
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("client key PEM");
            let certs = certs.expect("client certificate PEM");
            config
                .with_client_auth_cert(certs, key)
                .expect("client certificate and key")
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA")
}

fn leaf(ca: &CertifiedIssuer<'static, KeyPair>, name: &[&str]) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().expect("key");
    let names: Vec<String> = name.iter().map(|n| n.to_string()).collect();
    let params = CertificateParams::new(names).expect("certificate params");
    (params.signed_by(&key, ca).expect("certificate"), key)
}

/// An HTTP/1.1 TLS acceptor for `cert`.
fn acceptor(
    cert: &rcgen::Certificate,
    key: &KeyPair,
    clients: Arc<dyn ClientCertVerifier>,
) -> TlsAcceptor {
    let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_client_cert_verifier(clients)
        .with_single_cert(vec![cert.der().clone()], key)
        .expect("server certificate and key");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

/// Serves HTTP/1.1 with upgrades over TLS until dropped.
async fn serve<H, F>(listener: TcpListener, acceptor: TlsAcceptor, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
{
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let (acceptor, handler) = (acceptor.clone(), handler.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), hyper::service::service_fn(handler))
                .with_upgrades()
                .await;
        });
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let uri = req.uri();
    let pq = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
    let seen = Recorded {
        method: req.method().to_string(),
        path_and_query: pq.to_string(),
    };
    // Subscribed on arrival, so a fault set once the test has seen the request applies to it.
    let mut hang_cleared = state.hangs_cleared.subscribe();
    let watch_cut = is_watch(pq).then(|| state.watches_cut.subscribe());
    state.requests().push(seen.clone());
    state.recorded.notify_all();

    let (failure, hang, delay) = state.faults().apply(&seen);
    let trickle = state.faults().trickle(&seen);
    match failure {
        Some(Answer::Status(status)) => {
            let (method, pq) = (&seen.method, &seen.path_and_query);
            let message = format!("{method} {pq}: fault injected by the e2e proxy");
            return Ok(status_response(status, &message));
        }
        Some(Answer::Html(status)) => return Ok(html_response(status)),
        None => {}
    }
    if state.faults().endless(&seen) {
        return Ok(endless_response());
    }
    if hang {
        let _ = hang_cleared.changed().await;
    }
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    Ok(match forward(&state, req, watch_cut).await {
        Ok(response) => match trickle {
            Some(every) => response.map(|body| trickled(body, every).boxed_unsync()),
            None => response,
        },
        Err(e) => status_response(502, &format!("e2e proxy: upstream: {e}")),
    })
}

fn is_watch(path_and_query: &str) -> bool {
    let query = path_and_query.split_once('?').map_or("", |(_, q)| q);
    query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1")
}

async fn forward(
    state: &Arc<State>,
    mut req: Request<Incoming>,
    watch_cut: Option<watch::Receiver<u64>>,
) -> Result<Response<ProxyBody>, BoxError> {
    let tcp = TcpStream::connect(state.upstream).await?;
    let name = ServerName::IpAddress(state.upstream.ip().into());
    let tls = state.tls.connect(name, tcp).await?;
    // A connection per request, so that an upgrade or a cut never touches another request.
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn.with_upgrades());
    let client_upgrade =
        (req.headers().contains_key(UPGRADE)).then(|| hyper::upgrade::on(&mut req));
    req.headers_mut().remove(AUTHORIZATION);
    let host = HeaderValue::from_str(&state.upstream.to_string())?;
    req.headers_mut().insert(HOST, host);

    let mut response = sender.send_request(req).await?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let state = state.clone();
            tokio::spawn(async move {
                if let (Ok(client), Ok(upstream)) = tokio::join!(client_upgrade, upstream_upgrade) {
                    splice(TokioIo::new(client), TokioIo::new(upstream), &state).await;
                }
            });
        }
        return Ok(response.map(|_| full(Bytes::new())));
    }
    Ok(match watch_cut {
        Some(cut) => response.map(|body| cuttable(body, cut).boxed_unsync()),
        None => response.map(|body| body.map_err(Into::into).boxed_unsync()),
    })
}

/// Copies both ways until both ends close, or until the upgraded-bytes budget runs out.
async fn splice(
    client: impl AsyncRead + AsyncWrite,
    upstream: impl AsyncRead + AsyncWrite,
    state: &State,
) {
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    // The first error, a cut included, drops the other direction and then both streams.
    let _ = tokio::try_join!(
        pump(&mut client_read, &mut upstream_write, state),
        pump(&mut upstream_read, &mut client_write, state),
    );
}

async fn pump(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    state: &State,
) -> io::Result<()> {
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        if state.faults().upgraded_frozen {
            let mut cleared = state.hangs_cleared.subscribe();
            let _ = cleared.changed().await;
            let frozen = "frozen upgraded stream cut by the e2e proxy";
            return Err(io::Error::new(io::ErrorKind::ConnectionAborted, frozen));
        }
        let cut_after = state.faults().take_upgraded(n);
        to.write_all(&buf[..cut_after.unwrap_or(n)]).await?;
        to.flush().await?;
        if cut_after.is_some() {
            let cut = "upgraded stream cut by the e2e proxy";
            return Err(io::Error::new(io::ErrorKind::ConnectionAborted, cut));
        }
    }
}

/// A body fed by a task through a channel, so the task can fail it at any moment.
struct Chunks(mpsc::Receiver<Result<Frame<Bytes>, BoxError>>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.get_mut().0.poll_recv(cx)
    }
}

/// `body`, failing (which makes hyper close the client connection mid-stream) on a cut.
fn cuttable(mut body: Incoming, mut cut: watch::Receiver<u64>) -> Chunks {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            let frame = tokio::select! {
                frame = body.frame() => match frame {
                    Some(frame) => frame.map_err(Into::into),
                    None => return,
                },
                _ = cut.changed() => Err("watch cut by the e2e proxy".into()),
                () = tx.closed() => return,
            };
            let cut = frame.is_err();
            if tx.send(frame).await.is_err() || cut {
                return;
            }
        }
    });
    Chunks(rx)
}

/// `body`, one byte every `every`.
fn trickled(body: ProxyBody, every: Duration) -> Chunks {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let Ok(whole) = body.collect().await else {
            return;
        };
        for byte in whole.to_bytes() {
            if tx
                .send(Ok(Frame::data(Bytes::from(vec![byte]))))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(every).await;
        }
    });
    Chunks(rx)
}

fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An error page as nginx sends it.
fn html_response(code: u16) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(code).expect("status");
    let title = format!("{code} {}", status.canonical_reason().unwrap_or("Error"));
    let body = format!(
        "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n\
         <hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    );
    Response::builder()
        .status(code)
        .header(CONTENT_TYPE, "text/html")
        .body(full(body))
        .expect("html response")
}

/// A 200 list that never ends: one item after another, 64 KiB at a time.
fn endless_response() -> Response<ProxyBody> {
    let item = r#"{"metadata":{"name":"endless","namespace":"endless"}},"#;
    let chunk = Bytes::from(item.repeat(64 * 1024 / item.len()));
    let head = Bytes::from_static(br#"{"kind":"List","apiVersion":"v1","metadata":{},"items":["#);
    let frames = futures_util::stream::once(async move { head })
        .chain(futures_util::stream::repeat(chunk))
        .map(|data| Ok::<_, BoxError>(Frame::data(data)));
    Response::builder()
        .status(200)
        .header(CONTENT_TYPE, "application/json")
        .body(http_body_util::StreamBody::new(frames).boxed_unsync())
        .expect("endless response")
}

fn status_response(code: u16, message: &str) -> Response<ProxyBody> {
    let reason = match code {
        404 => "NotFound",
        409 => "Conflict",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    };
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    Response::builder()
        .status(code)
        .header(CONTENT_TYPE, "application/json")
        .body(full(body.to_string()))
        .expect("status response")
}

/// A minimal OpenID Connect issuer on 127.0.0.1: its discovery document, and a token endpoint
/// that answers every refresh with `id_token`. It counts the refreshes.
pub struct Issuer {
    pub url: String,
    pub ca_pem: String,
    refreshes: Arc<std::sync::atomic::AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

impl Issuer {
    pub fn start(id_token: &str) -> Issuer {
        let ca = ca();
        let (cert, key) = leaf(&ca, &["127.0.0.1", "localhost"]);
        let acceptor = acceptor(&cert, &key, WebPkiClientVerifier::no_client_auth());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the issuer");
        listener.set_nonblocking(true).expect("non-blocking");
        let url = format!("https://{}", listener.local_addr().expect("issuer address"));
        let refreshes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (stop, stopped) = oneshot::channel::<()>();
        let (issuer, counted, token) = (url.clone(), refreshes.clone(), id_token.to_string());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("issuer runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("issuer listener");
                let handler = move |req: Request<Incoming>| {
                    let (issuer, counted, token) = (issuer.clone(), counted.clone(), token.clone());
                    async move {
                        let body = if req.uri().path().ends_with("/openid-configuration") {
                            serde_json::json!({ "issuer": issuer, "token_endpoint": format!("{issuer}/token") })
                        } else {
                            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            serde_json::json!({ "id_token": token, "refresh_token": "next", "token_type": "Bearer" })
                        };
                        let mut response = Response::new(full(body.to_string()));
                        response
                            .headers_mut()
                            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                        Ok::<_, Infallible>(response)
                    }
                };
                tokio::select! {
                    () = serve(listener, acceptor, handler) => {}
                    _ = stopped => {}
                }
            });
        });
        Issuer {
            url,
            ca_pem: ca.pem(),
            refreshes,
            _stop: stop,
        }
    }

    /// How many token refreshes were asked for.
    pub fn refreshes(&self) -> usize {
        self.refreshes.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hyper::header::CONNECTION;
    use hyper::upgrade::Upgraded;
    use serde_json::Value;
    use tokio::sync::Notify;

    use super::*;

    const PATIENCE: Duration = Duration::from_secs(10);

    /// An HTTPS server that only lets in clients with a certificate from its CA.
    struct TestUpstream {
        upstream: Upstream,
        hits: Arc<AtomicUsize>,
        /// Lets `/stream` send its second chunk.
        release: Arc<Notify>,
    }

    async fn upstream() -> TestUpstream {
        let ca = ca();
        let (cert, key) = leaf(&ca, &["127.0.0.1"]);
        let (client_cert, client_key) = leaf(&ca, &["proxy-client"]);
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).expect("test CA");
        let clients = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
        let acceptor = acceptor(&cert, &key, clients.build().expect("client verifier"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("https://{}", listener.local_addr().expect("address"));
        let (hits, release) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
        let (counter, notify) = (hits.clone(), release.clone());
        let handler = move |req| {
            counter.fetch_add(1, Ordering::SeqCst);
            answer(req, notify.clone())
        };
        tokio::spawn(serve(listener, acceptor, handler));
        let (client_cert_pem, client_key_pem) = (client_cert.pem(), client_key.serialize_pem());
        let upstream = Upstream {
            url,
            ca_pem: ca.pem(),
            client_cert_pem,
            client_key_pem,
        };
        TestUpstream {
            upstream,
            hits,
            release,
        }
    }

    async fn answer(
        mut req: Request<Incoming>,
        release: Arc<Notify>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let response = Response::builder();
        Ok(match req.uri().path() {
            "/hello" => {
                let body = serde_json::json!({
                    "path": req.uri().to_string(),
                    "authorization": req.headers().contains_key(AUTHORIZATION),
                });
                response.body(full(body.to_string()))
            }
            "/stream" => {
                let (tx, rx) = mpsc::channel(1);
                tokio::spawn(async move {
                    let _ = tx.send(Ok(Frame::data(Bytes::from("first\n")))).await;
                    release.notified().await;
                    let _ = tx.send(Ok(Frame::data(Bytes::from("second\n")))).await;
                });
                response.body(Chunks(rx).boxed_unsync())
            }
            "/upgrade" => {
                let upgrade = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    let (mut read, mut write) = tokio::io::split(TokioIo::new(upgrade.await?));
                    tokio::io::copy(&mut read, &mut write).await?;
                    Ok::<_, BoxError>(())
                });
                let response = response.status(101).header(CONNECTION, "Upgrade");
                response.header(UPGRADE, "echo").body(full(""))
            }
            _ => response.status(404).body(full("")),
        }
        .expect("test response"))
    }

    /// Sends one request to the proxy on a new connection that trusts only the proxy's CA.
    async fn send(proxy: &Proxy, req: hyper::http::request::Builder) -> Response<Incoming> {
        let tcp = TcpStream::connect(&proxy.url()["https://".len()..]).await;
        let name = ServerName::try_from("localhost").expect("name");
        let tls = connector(proxy.ca_pem(), None).connect(name, tcp.expect("connect"));
        let tls = tls.await.expect("TLS handshake");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("HTTP handshake");
        tokio::spawn(conn.with_upgrades());
        let req = req
            .header(HOST, "localhost")
            .body(full(""))
            .expect("request");
        within(sender.send_request(req)).await.expect("response")
    }

    async fn get(proxy: &Proxy, path: &str) -> (u16, String) {
        let response = send(proxy, Request::get(path)).await;
        let status = response.status().as_u16();
        let body = within(response.into_body().collect()).await.expect("body");
        let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
        (status, text)
    }

    async fn within<F: Future>(future: F) -> F::Output {
        tokio::time::timeout(PATIENCE, future)
            .await
            .expect("in time")
    }

    async fn chunk(body: &mut Incoming) -> Option<String> {
        let frame = within(body.frame()).await?.expect("a chunk");
        let data = frame.into_data().expect("data frame");
        Some(String::from_utf8_lossy(&data).into_owned())
    }

    async fn upgrade(proxy: &Proxy) -> TokioIo<Upgraded> {
        let req = Request::get("/upgrade").header(CONNECTION, "Upgrade");
        let response = send(proxy, req.header(UPGRADE, "echo")).await;
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        let upgraded = within(hyper::upgrade::on(response)).await;
        TokioIo::new(upgraded.expect("upgraded"))
    }

    async fn echo(stream: &mut TokioIo<Upgraded>, text: &[u8]) -> Vec<u8> {
        stream.write_all(text).await.expect("write");
        let mut echoed = vec![0; text.len()];
        within(stream.read_exact(&mut echoed)).await.expect("echo");
        echoed
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forwards_with_the_client_certificate_and_records() {
        let upstream = upstream().await;
        let proxy = Proxy::start(upstream.upstream.clone());
        let req = Request::get("/hello?x=1").header(AUTHORIZATION, "Bearer stripped");
        let response = send(&proxy, req).await;
        // The upstream refuses TLS clients without its certificate, so a 200 proves it was sent.
        assert_eq!(response.status(), StatusCode::OK);
        let body = within(response.into_body().collect()).await.expect("body");
        let seen: Value = serde_json::from_slice(&body.to_bytes()).expect("json");
        assert_eq!(
            seen,
            serde_json::json!({"path": "/hello?x=1", "authorization": false})
        );
        let expected = Recorded {
            method: "GET".into(),
            path_and_query: "/hello?x=1".into(),
        };
        assert_eq!(proxy.requests(), vec![expected]);
        proxy.clear_requests();
        assert!(proxy.requests().is_empty());

        let dir = tempfile::tempdir().expect("temp dir");
        proxy.kubeconfig(&dir.path().join("kubeconfig"));
        let text = std::fs::read_to_string(dir.path().join("kubeconfig")).expect("kubeconfig");
        let config: Value = serde_json::from_str(&text).expect("kubeconfig JSON");
        let cluster = &config["clusters"][0]["cluster"];
        assert_eq!(cluster["server"], proxy.url());
        let ca = base64::engine::general_purpose::STANDARD.encode(proxy.ca_pem());
        assert_eq!(cluster["certificate-authority-data"], ca);
        assert_eq!(config["current-context"], "proxy");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fail_next_answers_without_the_upstream() {
        let upstream = upstream().await;
        let proxy = Proxy::start(upstream.upstream.clone());
        proxy.fail_next(2, 503, Matcher::new("GET", "/hello"));
        for _ in 0..2 {
            let (status, body) = get(&proxy, "/hello").await;
            assert_eq!(status, 503);
            let body: Value = serde_json::from_str(&body).expect("Status");
            assert_eq!(body["kind"], "Status");
            assert_eq!(body["code"], 503);
            assert_eq!(body["reason"], "ServiceUnavailable");
        }
        assert_eq!(upstream.hits.load(Ordering::SeqCst), 0);
        assert_eq!(get(&proxy, "/hello").await.0, 200);
        assert_eq!(upstream.hits.load(Ordering::SeqCst), 1);
        assert_eq!(proxy.requests().len(), 3);

        let address = proxy.url()["https://".len()..].to_string();
        drop(proxy);
        assert!(
            TcpStream::connect(address).await.is_err(),
            "still listening"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn html_pages_and_endless_bodies_are_served_without_the_upstream() {
        let upstream = upstream().await;
        let proxy = Proxy::start(upstream.upstream.clone());
        proxy.fail_next_html(1, 502, Matcher::path("/hello"));
        let (status, body) = get(&proxy, "/hello").await;
        assert_eq!(status, 502);
        assert!(body.contains("<title>502 Bad Gateway</title>"), "{body}");
        proxy.endless(Matcher::path("/hello"));
        let response = send(&proxy, Request::get("/hello")).await;
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let mut read = 0;
        while read < 1024 * 1024 {
            read += chunk(&mut body).await.expect("more").len();
        }
        assert_eq!(upstream.hits.load(Ordering::SeqCst), 0);
        proxy.clear_faults();
        assert_eq!(get(&proxy, "/hello").await.0, 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delay_and_hang_hold_matching_requests() {
        let upstream = upstream().await;
        let proxy = Arc::new(Proxy::start(upstream.upstream.clone()));
        let delay = Duration::from_millis(300);
        proxy.delay(delay, Matcher::path("/hello"));
        let started = Instant::now();
        assert_eq!(get(&proxy, "/hello").await.0, 200);
        assert!(started.elapsed() >= delay);
        proxy.clear_delay();

        proxy.hang(Matcher::path("/hello"));
        let client = proxy.clone();
        let mut hung = tokio::spawn(async move { get(&client, "/hello?hung").await });
        let arrived = |r: &[Recorded]| r.iter().any(|r| r.path_and_query == "/hello?hung");
        assert!(proxy.wait_for(PATIENCE, arrived));
        let unanswered = tokio::time::timeout(Duration::from_millis(200), &mut hung).await;
        assert!(unanswered.is_err(), "a hung request got an answer");
        proxy.clear_hang();
        assert_eq!(within(hung).await.expect("client").0, 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watches_stream_and_can_be_cut() {
        let upstream = upstream().await;
        let proxy = Proxy::start(upstream.upstream.clone());
        let response = send(&proxy, Request::get("/stream?watch=true")).await;
        let mut body = response.into_body();
        // The upstream holds its second chunk back until released, so the first came alone.
        assert_eq!(chunk(&mut body).await.as_deref(), Some("first\n"));
        upstream.release.notify_one();
        assert_eq!(chunk(&mut body).await.as_deref(), Some("second\n"));
        assert_eq!(chunk(&mut body).await, None);

        let response = send(&proxy, Request::get("/stream?watch=1")).await;
        let mut body = response.into_body();
        assert_eq!(chunk(&mut body).await.as_deref(), Some("first\n"));
        proxy.drop_watches();
        let cut = within(body.frame()).await;
        assert!(matches!(cut, Some(Err(_))), "the watch went on: {cut:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn upgraded_streams_are_spliced_and_cut_once() {
        let upstream = upstream().await;
        let proxy = Proxy::start(upstream.upstream.clone());
        let mut stream = upgrade(&proxy).await;
        assert_eq!(echo(&mut stream, b"ping").await, b"ping");

        proxy.drop_upgraded_after(10);
        assert_eq!(echo(&mut stream, b"abcd").await, b"abcd");
        // Two of these bytes reach the upstream, then both connections are cut.
        stream.write_all(b"efgh").await.expect("write");
        let mut rest = Vec::new();
        let _ = within(stream.read_to_end(&mut rest)).await;
        assert!(rest.is_empty(), "got {rest:?} after the cut");

        let mut stream = upgrade(&proxy).await;
        assert_eq!(echo(&mut stream, &[7; 100]).await, [7; 100]);
    }
}
