//! `/metrics` over HTTPS for callers the API server vouches for, as controller-runtime's secure metrics server does
//! it: the caller's bearer token is checked with a `TokenReview`, and the user it names must be allowed `get` on the
//! non-resource URL of the request path (`/metrics`) by a `SubjectAccessReview`. No token or a token the API server
//! does not accept: 401. A valid token without the permission: 403. Decisions are cached briefly, keyed by a hash of
//! the token, so a scrape every few seconds costs the API server two requests a minute.
//!
//! The certificate is either generated at start (self-signed, for scrapers that skip verification or pin it) or
//! read from files, which are re-read when they change (a rotated cert-manager Secret needs no restart).
//!
//! I/O: [`KubeAccessReview`] calls the API server; [`crate::tls::CertificateFiles`] reads files; [`crate::http::serve_tls`]
//! listens.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::PostParams;

use crate::answer_cache::{AnswerCache, key};
use crate::metrics::Metrics;

/// What the API server says about a request's caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The token is valid and its user may `get` the path.
    Allowed,
    /// The token is not valid (expired, revoked, unknown).
    Unauthenticated,
    /// The token is valid; its user may not `get` the path.
    Forbidden,
}

/// Errors of the secure metrics server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A review request to the API server failed (its decision is unknown, so nothing is cached).
    #[error("the {what} request to the API server failed: {source}")]
    Review {
        /// `TokenReview` or `SubjectAccessReview`.
        what: &'static str,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// The certificate or key could not be read or used.
    #[error(transparent)]
    Certificate(#[from] crate::tls::Error),
}

/// The port to the API server's authentication and authorisation. [`KubeAccessReview`] is the real one.
pub trait AccessReview: Send + Sync + 'static {
    /// Decides whether the bearer `token` may `get` the non-resource URL `path`.
    fn review(&self, token: &str, path: &str) -> impl Future<Output = Result<Decision, Error>> + Send;
}

/// Reviews with `TokenReview` and `SubjectAccessReview` (the operator needs `create` on both:
/// deploy/rbac.yaml).
#[derive(Clone)]
pub struct KubeAccessReview {
    client: kube::Client,
}

impl KubeAccessReview {
    /// Reviews through `client`.
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

impl AccessReview for KubeAccessReview {
    async fn review(&self, token: &str, path: &str) -> Result<Decision, Error> {
        let tokens: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_owned()), ..TokenReviewSpec::default() },
            ..TokenReview::default()
        };
        let reviewed = tokens
            .create(&PostParams::default(), &review)
            .await
            .map_err(|source| Error::Review { what: "TokenReview", source })?;
        let status = reviewed.status.unwrap_or_default();
        let Some(user) = status.user.filter(|_| status.authenticated == Some(true)) else {
            return Ok(Decision::Unauthenticated);
        };
        let access: kube::Api<SubjectAccessReview> = kube::Api::all(self.client.clone());
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                uid: user.uid,
                groups: user.groups,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(path.to_owned()),
                    verb: Some("get".to_owned()),
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let reviewed = access
            .create(&PostParams::default(), &review)
            .await
            .map_err(|source| Error::Review { what: "SubjectAccessReview", source })?;
        let allowed = reviewed.status.is_some_and(|s| s.allowed);
        Ok(if allowed { Decision::Allowed } else { Decision::Forbidden })
    }
}

/// How long decisions are kept: a granted or refused permission for a minute (a revoked RoleBinding takes effect
/// within it), a rejected token for 10 s.
#[derive(Clone, Copy, Debug)]
pub struct CacheTtl {
    /// For [`Decision::Allowed`] and [`Decision::Forbidden`].
    pub authenticated: Duration,
    /// For [`Decision::Unauthenticated`].
    pub unauthenticated: Duration,
}

impl Default for CacheTtl {
    fn default() -> Self {
        Self { authenticated: Duration::from_mins(1), unauthenticated: Duration::from_secs(10) }
    }
}

/// Most decisions kept at once; a flood of made-up tokens cannot grow the cache beyond it.
const CACHE_ENTRIES: usize = 1024;

/// An [`AccessReview`] that remembers decisions for [`CacheTtl`]. Errors are not remembered.
pub struct CachedReview<R> {
    inner: R,
    ttl: CacheTtl,
    entries: AnswerCache<Decision>,
}

impl<R: AccessReview> CachedReview<R> {
    /// Caches `inner`'s decisions.
    pub fn new(inner: R, ttl: CacheTtl) -> Self {
        Self { inner, ttl, entries: AnswerCache::new(CACHE_ENTRIES) }
    }
}

impl<R: AccessReview> AccessReview for CachedReview<R> {
    async fn review(&self, token: &str, path: &str) -> Result<Decision, Error> {
        let key = key(&[path, token]);
        if let Some(decision) = self.entries.get(&key) {
            return Ok(decision);
        }
        let decision = self.inner.review(token, path).await?;
        let ttl = if decision == Decision::Unauthenticated { self.ttl.unauthenticated } else { self.ttl.authenticated };
        self.entries.put(key, decision, ttl);
        Ok(decision)
    }
}

/// The secure metrics router: `/metrics` only, behind `review`. Health endpoints stay on their own plain listener.
pub fn router<R: AccessReview>(metrics: Metrics, review: Arc<R>) -> Router {
    Router::new()
        .route(
            "/metrics",
            axum::routing::get(|State(metrics): State<Metrics>| async move {
                (
                    [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                    metrics.encode(),
                )
            }),
        )
        .with_state(metrics)
        .layer(axum::middleware::from_fn_with_state(review, authorize::<R>))
}

async fn authorize<R: AccessReview>(State(review): State<Arc<R>>, request: Request, next: Next) -> Response {
    let token = crate::http::bearer_token(request.headers());
    let Some(token) = token else {
        return unauthorized("a bearer token is required (Authorization: Bearer <ServiceAccount token>)");
    };
    match review.review(token, request.uri().path()).await {
        Ok(Decision::Allowed) => next.run(request).await,
        Ok(Decision::Unauthenticated) => unauthorized("the API server did not accept the bearer token"),
        Ok(Decision::Forbidden) => (
            StatusCode::FORBIDDEN,
            format!(
                "the token's user may not get {}: bind it to the ClusterRole tsdb-operator-metrics-reader\n",
                request.uri().path()
            ),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %crate::error_chain(&e), "could not review a metrics request");
            (StatusCode::INTERNAL_SERVER_ERROR, "the request could not be reviewed by the API server\n").into_response()
        }
    }
}

fn unauthorized(why: &str) -> Response {
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], format!("{why}\n")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::ServiceExt as _;

    /// An in-memory API server: tokens and the paths their users may get.
    #[derive(Default)]
    struct FakeApiServer {
        allowed: HashMap<String, Vec<String>>,
        failing: bool,
        calls: AtomicUsize,
    }

    impl AccessReview for FakeApiServer {
        async fn review(&self, token: &str, path: &str) -> Result<Decision, Error> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.failing {
                return Err(Error::Review {
                    what: "TokenReview",
                    source: kube::Error::Service("connection refused".into()),
                });
            }
            Ok(match self.allowed.get(token) {
                None => Decision::Unauthenticated,
                Some(paths) if paths.iter().any(|p| p == path) => Decision::Allowed,
                Some(_) => Decision::Forbidden,
            })
        }
    }

    fn fake() -> FakeApiServer {
        let mut allowed = HashMap::new();
        allowed.insert("reader".to_owned(), vec!["/metrics".to_owned()]);
        allowed.insert("stranger".to_owned(), vec![]);
        FakeApiServer { allowed, ..FakeApiServer::default() }
    }

    async fn get(router: &Router, authorization: Option<&str>) -> (StatusCode, String) {
        let mut request = Request::builder().uri("/metrics");
        if let Some(a) = authorization {
            request = request.header(header::AUTHORIZATION, a);
        }
        let response = router.clone().oneshot(request.body(axum::body::Body::empty()).unwrap()).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn only_a_token_allowed_to_get_metrics_reads_them() {
        let router = router(Metrics::new(), Arc::new(fake()));
        let (status, body) = get(&router, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(body.contains("bearer token is required"), "{body}");
        assert_eq!(get(&router, Some("Basic dXNlcjpwYXNz")).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(get(&router, Some("Bearer ")).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(get(&router, Some("Bearer made-up")).await.0, StatusCode::UNAUTHORIZED);
        let (status, body) = get(&router, Some("Bearer stranger")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(body.contains("tsdb-operator-metrics-reader"), "the fix is named: {body}");
        let (status, body) = get(&router, Some("Bearer reader")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("# EOF"), "{body}");
    }

    #[tokio::test]
    async fn an_api_server_that_cannot_answer_denies_and_nothing_is_cached() {
        let failing = Arc::new(CachedReview::new(FakeApiServer { failing: true, ..fake() }, CacheTtl::default()));
        let router = router(Metrics::new(), failing.clone());
        assert_eq!(get(&router, Some("Bearer reader")).await.0, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(get(&router, Some("Bearer reader")).await.0, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(failing.inner.calls.load(Ordering::SeqCst), 2, "an error is asked again, not remembered");
    }

    #[tokio::test]
    async fn decisions_are_remembered_per_token_and_path_for_their_ttl() {
        let ttl = CacheTtl { authenticated: Duration::from_mins(1), unauthenticated: Duration::ZERO };
        let cached = CachedReview::new(fake(), ttl);
        for _ in 0..3 {
            assert_eq!(cached.review("reader", "/metrics").await.unwrap(), Decision::Allowed);
            assert_eq!(cached.review("stranger", "/metrics").await.unwrap(), Decision::Forbidden);
        }
        assert_eq!(cached.inner.calls.load(Ordering::SeqCst), 2, "one review per token");
        assert_eq!(cached.review("reader", "/other").await.unwrap(), Decision::Forbidden, "keyed by path too");
        for _ in 0..2 {
            assert_eq!(cached.review("made-up", "/metrics").await.unwrap(), Decision::Unauthenticated);
        }
        assert_eq!(cached.inner.calls.load(Ordering::SeqCst), 5, "a zero TTL is asked every time");
    }

    #[tokio::test]
    async fn the_cache_stays_bounded_under_made_up_tokens() {
        let cached = CachedReview::new(fake(), CacheTtl::default());
        for i in 0..(CACHE_ENTRIES * 2 + 7) {
            cached.review(&format!("made-up-{i}"), "/metrics").await.unwrap();
        }
        assert!(cached.entries.len() <= CACHE_ENTRIES);
    }
}
