//! The agent's front of Prometheus' web port. I/O: HTTP, served on the pod's port and sent to Prometheus on the
//! loopback address.
//!
//! Prometheus listens on `127.0.0.1` only; this proxy serves the pod's Prometheus port and forwards each request
//! unless [`tsdb_operator_core::web::decide_forward`] refuses it (admin API, lifecycle API, non-canonical paths:
//! 403 with the reason). Requests and answers are streamed, not buffered, so large federation or query answers
//! cost the agent no memory beyond its buffers. A request body is limited to [`MAX_REQUEST_BODY`] (413 above).
//! Prometheus not answering is a 502, so probes through the proxy fail as they would on Prometheus itself.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::uri::{Authority, PathAndQuery, Scheme};
use axum::http::{HeaderMap, HeaderName, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tsdb_operator_core::web::decide_forward;

/// Largest request body forwarded (POSTed queries are form-encoded PromQL; 8 MiB is far above any real one).
pub const MAX_REQUEST_BODY: usize = 8 << 20;

/// Refused requests by reason (`tsdb_operator_agent_proxy_refused_total`).
pub type RefusedCounter = Family<Vec<(String, String)>, Counter>;

/// Errors of [`router`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The upstream URL is not `http://HOST:PORT`.
    #[error("failed to use {url:?} as the Prometheus URL: give http://127.0.0.1:PORT")]
    Upstream {
        /// The URL given.
        url: String,
    },
}

#[derive(Clone)]
struct Proxy {
    upstream: Authority,
    client: Client<HttpConnector, Body>,
    refused: RefusedCounter,
}

/// The proxy's router: every path and method, forwarded to `upstream` (`http://127.0.0.1:PORT`) or refused.
pub fn router(upstream: &str, refused: RefusedCounter) -> Result<Router, Error> {
    let invalid = || Error::Upstream { url: upstream.to_owned() };
    let uri: Uri = upstream.parse().map_err(|_| invalid())?;
    if uri.scheme() != Some(&Scheme::HTTP) || !uri.path().trim_end_matches('/').is_empty() {
        return Err(invalid());
    }
    let upstream = uri.authority().cloned().ok_or_else(invalid)?;
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
    Ok(Router::new().fallback(forward).with_state(Proxy { upstream, client, refused }))
}

async fn forward(State(proxy): State<Proxy>, req: Request) -> Response {
    if let Err(refusal) = decide_forward(req.uri().path()) {
        proxy.refused.get_or_create(&vec![("reason".to_owned(), refusal.category().to_owned())]).inc();
        tracing::debug!(path = %req.uri().path(), method = %req.method(), %refusal, "refused");
        return (StatusCode::FORBIDDEN, format!("{refusal}\n")).into_response();
    }
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REQUEST_BODY as u64) {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n").into_response();
    }
    let (mut parts, body) = req.into_parts();
    let path_and_query = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    let Ok(uri) =
        Uri::builder().scheme(Scheme::HTTP).authority(proxy.upstream.clone()).path_and_query(path_and_query).build()
    else {
        return (StatusCode::BAD_REQUEST, "invalid request URI\n").into_response();
    };
    parts.uri = uri;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    let body = Body::new(http_body_util::Limited::new(body, MAX_REQUEST_BODY));
    match proxy.client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Body::new(body))
        }
        Err(e) => {
            tracing::debug!(error = %e, "Prometheus did not answer");
            (StatusCode::BAD_GATEWAY, "Prometheus is not answering on its loopback address\n").into_response()
        }
    }
}

/// Removes the hop-by-hop headers (RFC 9110 7.6.1), including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::routing::any;

    use super::*;

    /// A stand-in for Prometheus on a loopback port that answers every request with its method and path, and
    /// counts them.
    async fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let app = Router::new().fallback(any(move |req: Request| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                let body = axum::body::to_bytes(req.into_body(), usize::MAX).await.unwrap_or_default();
                format!("{} {}", String::from_utf8_lossy(&body).len(), "ok")
            }
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (addr, hits)
    }

    async fn call(app: &Router, method: &str, uri: &str, body: Vec<u8>) -> (StatusCode, String) {
        use tower::ServiceExt as _;
        let req = Request::builder().method(method).uri(uri).body(Body::from(body)).unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap_or_default();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn admin_and_lifecycle_requests_never_reach_prometheus_while_queries_do() {
        let (addr, hits) = upstream().await;
        let refused = RefusedCounter::default();
        let app = router(&format!("http://{addr}"), refused.clone()).unwrap();
        for (method, uri) in [
            ("POST", "/api/v1/admin/tsdb/snapshot"),
            ("PUT", "/api/v1/admin/tsdb/delete_series?match[]=up"),
            ("POST", "/-/quit"),
            ("POST", "/-/reload"),
            ("POST", "//api/v1/admin/tsdb/snapshot"),
            ("POST", "/api/v1/%61dmin/tsdb/snapshot"),
        ] {
            let (status, body) = call(&app, method, uri, Vec::new()).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {uri}: {body}");
        }
        assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing refused reached Prometheus");
        let admin = refused.get_or_create(&vec![("reason".to_owned(), "admin_api".to_owned())]).get();
        assert_eq!(admin, 3);
        for (method, uri) in [("GET", "/api/v1/query?query=up"), ("POST", "/api/v1/query"), ("GET", "/-/ready")] {
            let (status, body) = call(&app, method, uri, b"query=up".to_vec()).await;
            assert_eq!((status, body.as_str()), (StatusCode::OK, "8 ok"), "{method} {uri}");
        }
        assert_eq!(hits.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_unreachable_prometheus_is_a_bad_gateway_and_large_bodies_are_refused() {
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let app = router(&format!("http://{closed}"), RefusedCounter::default()).unwrap();
        assert_eq!(call(&app, "GET", "/-/ready", Vec::new()).await.0, StatusCode::BAD_GATEWAY);
        let (addr, _) = upstream().await;
        let app = router(&format!("http://{addr}"), RefusedCounter::default()).unwrap();
        let big = vec![b'a'; MAX_REQUEST_BODY + 1];
        assert_ne!(call(&app, "POST", "/api/v1/query", big).await.0, StatusCode::OK);
        assert!(router("https://127.0.0.1:1", RefusedCounter::default()).is_err());
        assert!(router("http://127.0.0.1:1/prefix", RefusedCounter::default()).is_err());
    }
}
