//! The HTTP stack under our kube `Client`, built here rather than by kube's `ClientBuilder` for
//! what it cannot be told: `TCP_NODELAY` on every connection (kube's port-forward writes in
//! 4 KiB pieces, and with Nagle on each split message waits ~40 ms for a delayed ACK), a
//! deadline on the whole response of a single request (kube's read timeout restarts with every
//! byte, so a server that trickles a body is never cut off), and a cap on the size of a single
//! answer (kube reads it whole into memory before parsing it: an endless or huge body would
//! take all the memory there is).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::{Body, ConfigExt};
use kube::{Client, Config};
use tower::{BoxError, Layer, Service, ServiceBuilder};

/// How long a single request may take, start to last byte, when `--request-timeout` is not
/// given. Watches, log follows and upgraded streams (exec, port-forward) are not single requests.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The most a single answer may hold. kubectl's clients cap nothing; kube holds the body, then
/// the objects parsed from it (a few times more). A list of this size is some 15 000 pods,
/// far beyond what a release's namespace holds. Logs are read as streams and are not capped.
pub const MAX_RESPONSE_BYTES: u64 = 256 * 1024 * 1024;

/// The most an error answer may hold, whatever was asked: a Kubernetes Status is a few hundred
/// bytes, and kube reads an error's body whole even for a watch.
pub const MAX_ERROR_BYTES: u64 = 1024 * 1024;

/// Builds the client for `config`, through its proxy if it names one. `deadline` bounds each
/// single request's whole response; `None` waits forever (`--request-timeout 0`).
pub fn client(config: Config, deadline: Option<Duration>) -> Result<Client, kube::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(config.connect_timeout);
    use hyper_util::client::legacy::connect::proxy::{SocksV5, Tunnel};
    match config.proxy_url.clone() {
        None => finish(config, http, deadline),
        Some(url) if url.scheme_str() == Some("socks5") => {
            finish(config, SocksV5::new(url, http), deadline)
        }
        Some(url) if url.scheme_str() == Some("http") => {
            let tunnel = with_basic_auth(&url, Tunnel::new(url.clone(), http));
            finish(config, tunnel, deadline)
        }
        Some(url) if url.scheme_str() == Some("https") => {
            let to_proxy = config.rustls_https_connector_with_connector(http)?;
            let tunnel = with_basic_auth(&url, Tunnel::new(url.clone(), to_proxy));
            finish(config, tunnel, deadline)
        }
        Some(url) => Err(kube::Error::ProxyProtocolUnsupported {
            proxy_url: Box::new(url),
        }),
    }
}

/// `user:password@` in a proxy URL becomes the CONNECT request's Proxy-Authorization.
fn with_basic_auth<C>(
    url: &http::Uri,
    tunnel: hyper_util::client::legacy::connect::proxy::Tunnel<C>,
) -> hyper_util::client::legacy::connect::proxy::Tunnel<C> {
    use base64::Engine;
    let Some((userinfo, _)) = url.authority().and_then(|a| a.as_str().split_once('@')) else {
        return tunnel;
    };
    // The URL keeps `@` and `:` in credentials percent-escaped; the header wants them plain.
    let plain: Vec<u8> = percent_encoding::percent_decode_str(userinfo).collect();
    let token = base64::engine::general_purpose::STANDARD.encode(plain);
    match HeaderValue::from_str(&format!("Basic {token}")) {
        Ok(value) => tunnel.with_auth(value),
        Err(_) => tunnel,
    }
}

fn finish<H>(
    config: Config,
    connector: H,
    deadline: Option<Duration>,
) -> Result<Client, kube::Error>
where
    H: Service<http::Uri> + Clone + Send + Sync + 'static,
    H::Response: hyper_util::client::legacy::connect::Connection
        + hyper::rt::Read
        + hyper::rt::Write
        + Send
        + Unpin
        + 'static,
    H::Future: Send + 'static,
    H::Error: Into<BoxError>,
{
    let https = config.rustls_https_connector_with_connector(connector)?;
    let mut timed = hyper_timeout::TimeoutConnector::new(https);
    timed.set_connect_timeout(config.connect_timeout);
    timed.set_read_timeout(config.read_timeout);
    timed.set_write_timeout(config.write_timeout);
    let http: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Builder::new(TokioExecutor::new()).build(timed);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .layer(BoundsLayer(deadline))
        .map_err(BoxError::from)
        .service(http);
    Ok(Client::new(service, config.default_namespace))
}

/// Bounds a single request, from sending it to its body's last byte, and the size of its
/// answer; bounds the size of every error answer.
#[derive(Clone, Copy)]
struct BoundsLayer(Option<Duration>);

impl<S> Layer<S> for BoundsLayer {
    type Service = Bounds<S>;
    fn layer(&self, inner: S) -> Bounds<S> {
        Bounds {
            inner,
            limit: self.0,
        }
    }
}

#[derive(Clone)]
struct Bounds<S> {
    inner: S,
    limit: Option<Duration>,
}

/// Watches and log follows are meant to stay open; upgraded streams end their response at 101.
fn is_single<B>(request: &Request<B>) -> bool {
    let query = request.uri().query().unwrap_or("");
    let streams = query
        .split('&')
        .any(|pair| pair == "watch=true" || pair == "watch=1" || pair == "follow=true");
    !streams && !request.headers().contains_key(http::header::UPGRADE)
}

/// A log, read as a stream (`logs`) or with its own limits (`report`), never held whole here.
fn is_log<B>(request: &Request<B>) -> bool {
    request.uri().path().ends_with("/log")
}

/// The deadline passed before the response ended.
#[derive(Debug, thiserror::Error)]
#[error("the API server did not finish answering within the request timeout ({0:?})")]
pub struct RequestTimedOut(Duration);

/// The answer grew past its cap.
#[derive(Debug, thiserror::Error)]
pub enum ResponseTooLarge {
    #[error("the API server's answer is larger than {cap} MiB, the most kubectl-pg reads at once", cap = MAX_RESPONSE_BYTES >> 20)]
    Answer,
    #[error("the API server's error answer (HTTP {0}) is larger than {cap} MiB: not a Kubernetes Status", cap = MAX_ERROR_BYTES >> 20)]
    Error(u16),
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Bounds<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ResBody: http_body::Body + Send + 'static,
{
    type Response = Response<BoundedBody<ResBody>>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let single = is_single(&request);
        let limit = self.limit.filter(|_| single);
        let capped = single && !is_log(&request);
        let response = self.inner.call(request);
        Box::pin(async move {
            let (response, sleep) = match limit {
                None => (response.await.map_err(Into::into)?, None),
                Some(limit) => {
                    let sleep = Box::pin(tokio::time::sleep(limit));
                    let response = tokio::time::timeout(limit, response)
                        .await
                        .map_err(|_| BoxError::from(RequestTimedOut(limit)))?
                        .map_err(Into::into)?;
                    (response, Some(sleep))
                }
            };
            let status = response.status();
            let cap = if status.is_client_error() || status.is_server_error() {
                Some((MAX_ERROR_BYTES, ResponseTooLarge::Error(status.as_u16())))
            } else {
                capped.then_some((MAX_RESPONSE_BYTES, ResponseTooLarge::Answer))
            };
            Ok(response.map(|inner| BoundedBody {
                inner,
                sleep,
                limit,
                cap,
                read: 0,
            }))
        })
    }
}

/// A response body that fails once its request's deadline has passed, or once it has grown
/// past its cap.
pub struct BoundedBody<B> {
    inner: B,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    limit: Option<Duration>,
    cap: Option<(u64, ResponseTooLarge)>,
    read: u64,
}

impl<B> http_body::Body for BoundedBody<B>
where
    B: http_body::Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use hyper::body::Buf;
        let this = &mut *self;
        if let Some(sleep) = this.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_ready() {
                let limit = this.limit.unwrap_or_default();
                return Poll::Ready(Some(Err(RequestTimedOut(limit).into())));
            }
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx).map_err(Into::into);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let (Some((cap, _)), Some(data)) = (&this.cap, frame.data_ref()) {
                this.read += data.remaining() as u64;
                if this.read > *cap {
                    let (_, too_large) = this.cap.take().expect("checked above");
                    return Poll::Ready(Some(Err(too_large.into())));
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str) -> Request<()> {
        Request::builder().uri(uri).body(()).unwrap()
    }

    #[test]
    fn streams_are_not_single_requests() {
        assert!(is_single(&request(
            "/api/v1/namespaces/a/pods?labelSelector=x"
        )));
        assert!(!is_single(&request(
            "/api/v1/namespaces/a/pods?watch=true&resourceVersion=1"
        )));
        assert!(!is_single(&request(
            "/api/v1/namespaces/a/pods/p/log?follow=true"
        )));
        let upgrade = Request::builder()
            .uri("/api/v1/namespaces/a/pods/p/exec?command=sh")
            .header(http::header::UPGRADE, "websocket")
            .body(())
            .unwrap();
        assert!(!is_single(&upgrade));
    }

    fn bounded(
        chunks: usize,
        cap: u64,
    ) -> BoundedBody<
        http_body_util::StreamBody<
            impl futures_util::Stream<
                    Item = Result<http_body::Frame<hyper::body::Bytes>, std::convert::Infallible>,
                > + Unpin,
        >,
    > {
        let frames = (0..chunks).map(|_| {
            Ok(http_body::Frame::data(hyper::body::Bytes::from_static(
                b"0123456789",
            )))
        });
        BoundedBody {
            inner: http_body_util::StreamBody::new(futures_util::stream::iter(frames)),
            sleep: None,
            limit: None,
            cap: Some((cap, ResponseTooLarge::Answer)),
            read: 0,
        }
    }

    #[tokio::test]
    async fn an_answer_past_its_cap_fails_with_the_cap_named() {
        use http_body_util::BodyExt;
        let whole = bounded(3, 30)
            .collect()
            .await
            .expect("30 bytes pass a cap of 30");
        assert_eq!(whole.to_bytes().len(), 30);
        let error = bounded(1000, 30)
            .collect()
            .await
            .expect_err("cut at the cap");
        assert!(error.is::<ResponseTooLarge>(), "{error}");
        assert!(error.to_string().contains("larger than 256 MiB"), "{error}");
    }

    #[test]
    fn logs_are_not_capped() {
        assert!(is_log(&request(
            "/api/v1/namespaces/a/pods/p/log?container=postgres"
        )));
        assert!(!is_log(&request("/api/v1/namespaces/a/pods/p")));
    }
}
