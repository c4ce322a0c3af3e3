//! The operator's own HTTP endpoint: `/metrics` (Prometheus text format), `/healthz` and `/readyz`.
//! I/O: a TCP listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// Readiness shared with the HTTP server: ready once the operator has started its controllers or is a standby,
/// and, with the admission webhook, once it has a certificate to serve it with (so that a Service sends admission
/// requests only to replicas that can answer them).
#[derive(Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
    waiting: Arc<std::sync::Mutex<Vec<ReadyCheck>>>,
}

/// Something else readiness waits for.
type ReadyCheck = Arc<dyn Fn() -> bool + Send + Sync>;

impl Health {
    /// Marks the process ready (or not).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Makes readiness also wait for `check` (checked at each probe).
    pub fn also_wait_for(&self, check: impl Fn() -> bool + Send + Sync + 'static) {
        self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Arc::new(check));
    }

    /// Whether the process is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().all(|check| check())
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Health,
}

/// The bearer token of a request's `Authorization` header, if it has a non-empty one.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The router with `/metrics`, `/healthz` and `/readyz`.
pub fn router(metrics: Metrics, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health })
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.health.is_ready() { (StatusCode::OK, "ok") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready") }
}

/// Bounds of a server started with [`serve_bounded`].
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; further connections wait in the listen backlog.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (slow clients are cut off).
    pub header_read_timeout: Duration,
}

/// Serves `router` on `listener` (HTTP/1.1) within `limits` until `shutdown` resolves, then lets open requests
/// finish for up to 10 s. Unlike `axum::serve`, it bounds connections and header read time, and an answer given
/// without reading the request's whole body says `Connection: close` (a body it did not read), so that a
/// client that keeps connections alive never sends its next request on a connection the server is closing.
pub async fn serve_bounded(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_connections(listener, router, limits, None, shutdown).await
}

/// [`serve_bounded`] over TLS: the handshake must finish within `limits.header_read_timeout`.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_connections(listener, router, limits, Some(tokio_rustls::TlsAcceptor::from(tls)), shutdown).await
}

/// A plain or TLS connection, so that one `serve_connection` serves both.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

async fn serve_connections(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let router = router.layer(axum::middleware::from_fn(close_if_body_unread));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot.map_err(std::io::Error::other)?,
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "failed to accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            // The slot is held until the connection ends, on every path.
            let _slot = slot;
            let io: Box<dyn Stream> = match tls {
                None => Box::new(stream),
                Some(acceptor) => match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await
                {
                    Ok(Ok(stream)) => Box::new(stream),
                    Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::debug!("TLS handshake timed out"),
                },
            };
            let _ = watcher.watch(builder.serve_connection(TokioIo::new(io), service)).await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
    Ok(())
}

/// Serves `router` on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving metrics and health");
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

/// Middleware: a response to a request whose body was not read to its end (answered 401 before the body, 413 over
/// the limit, 400 for the path) says `Connection: close`. The server then closes that connection, as it must (the
/// rest of the body would be read as the next request), and the client knows not to send its next request on it.
/// Every server of [`serve_bounded`] and [`serve_tls`] has it.
pub(crate) async fn close_if_body_unread(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let headers = request.headers();
    let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let has_body = length.is_some_and(|n| n > 0) || headers.contains_key(header::TRANSFER_ENCODING);
    if !has_body {
        return next.run(request).await;
    }
    let done = Arc::new(AtomicBool::new(false));
    let request = request.map(|inner| axum::body::Body::new(Tracked { inner, done: done.clone() }));
    let mut response = next.run(request).await;
    if !done.load(Ordering::Acquire) {
        response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    }
    response
}

/// A request body that notes when it has been read to its end.
struct Tracked {
    inner: axum::body::Body,
    done: Arc<AtomicBool>,
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None)) {
            self.done.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.done.store(true, Ordering::Release);
        }
        end
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_waits_for_every_check() {
        let health = Health::default();
        assert!(!health.is_ready());
        health.set_ready(true);
        assert!(health.is_ready());
        let loaded = Arc::new(AtomicBool::new(false));
        let seen = loaded.clone();
        health.also_wait_for(move || seen.load(Ordering::Acquire));
        assert!(!health.is_ready(), "the webhook has no certificate yet");
        loaded.store(true, Ordering::Release);
        assert!(health.is_ready());
    }
}
