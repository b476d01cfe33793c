//! The HTTP stack under our kube `Client`, built here rather than by kube's `ClientBuilder` for
//! two things it cannot be told: `TCP_NODELAY` on every connection (kube's port-forward writes in
//! 4 KiB pieces, and with Nagle on each split message waits ~40 ms for a delayed ACK), and a
//! deadline on the whole response of a single request (kube's read timeout restarts with every
//! byte, so a server that trickles a body is never cut off).

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
        .layer(DeadlineLayer(deadline))
        .map_err(BoxError::from)
        .service(http);
    Ok(Client::new(service, config.default_namespace))
}

/// Bounds a single request, from sending it to its body's last byte.
#[derive(Clone, Copy)]
struct DeadlineLayer(Option<Duration>);

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            limit: self.0,
        }
    }
}

#[derive(Clone)]
struct Deadline<S> {
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

/// The deadline passed before the response ended.
#[derive(Debug, thiserror::Error)]
#[error("the API server did not finish answering within the request timeout ({0:?})")]
pub struct RequestTimedOut(Duration);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Deadline<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ResBody: http_body::Body + Send + 'static,
{
    type Response = Response<DeadlineBody<ResBody>>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let limit = self.limit.filter(|_| is_single(&request));
        let response = self.inner.call(request);
        Box::pin(async move {
            let Some(limit) = limit else {
                let response = response.await.map_err(Into::into)?;
                return Ok(response.map(|inner| DeadlineBody {
                    inner,
                    sleep: None,
                    limit: None,
                }));
            };
            let sleep = Box::pin(tokio::time::sleep(limit));
            let response = tokio::time::timeout(limit, response)
                .await
                .map_err(|_| BoxError::from(RequestTimedOut(limit)))?
                .map_err(Into::into)?;
            Ok(response.map(|inner| DeadlineBody {
                inner,
                sleep: Some(sleep),
                limit: Some(limit),
            }))
        })
    }
}

/// A response body that fails once its request's deadline has passed.
pub struct DeadlineBody<B> {
    inner: B,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    limit: Option<Duration>,
}

impl<B> http_body::Body for DeadlineBody<B>
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
        let this = &mut *self;
        if let Some(sleep) = this.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_ready() {
                let limit = this.limit.unwrap_or_default();
                return Poll::Ready(Some(Err(RequestTimedOut(limit).into())));
            }
        }
        Pin::new(&mut this.inner).poll_frame(cx).map_err(Into::into)
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
}
