//! The REST API (the seed's routes, plus the same routes per namespace), for callers the API server vouches for.
//!
//! Each request's bearer token is checked with a `TokenReview`; the route's permission ([`Route::access`]) with a
//! `SubjectAccessReview` for that user, so the cluster's RBAC decides who may do what. No token or one the API
//! server refuses: 401. A permission RBAC does not grant: 403. Writes go through the API server with the operator's
//! credentials, so every replica serves the API (no leader needed); each write is recorded in the audit trail with
//! the authenticated user as the actor (an `X-Operator` header is kept as a note only).
//!
//! Bounds: bodies above [`MAX_BODY_BYTES`] get 413 (unauthenticated requests are answered before their body is
//! read), a body must arrive within [`BODY_TIMEOUT`] and a request is answered within [`REQUEST_TIMEOUT`];
//! connections and header read time are bounded by [`crate::http::serve_tls`].
//!
//! I/O: the ports of [`ports`]; the audit trail's [`crate::audit::store::AuditStore`] and [`crate::audit::Audit`].

pub mod openapi;
pub mod ports;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::Value;
use tsdb_operator_core::api::{
    AUDIT_LIMIT, ApiError, BackupAccepted, MAX_BODY_BYTES, Route, check_backup_possible, check_target, read_create,
    request_id, request_state, status_for,
};
use tsdb_operator_core::audit::{ApiCall, Filter, from_api_call};
use tsdb_operator_core::constants::annotations;
use tsdb_operator_core::crd::BackupStatus;

use crate::audit::Audit;
use crate::audit::store::AuditStore;
use ports::{Authorizer, Caller, Clusters, Failure};

/// Time a client has to send a request's body once its headers are in (a slow body is cut off with 400).
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Time a request may take in all; a longer one (an API server that does not answer) gets 503.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How the API serves.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespace of the seed's routes (`--api-namespace`).
    pub namespace: String,
    /// Whether the operator runs the backup scheduler (`--enable-backup`); without it a backup request is answered
    /// 503, as the seed does.
    pub backups_enabled: bool,
}

/// What the API is built from.
pub struct Parts<A, C, S> {
    /// Authentication and authorisation.
    pub authorizer: A,
    /// The objects.
    pub clusters: C,
    /// The audit trail to read, when there is one.
    pub audit_store: Option<S>,
    /// The audit trail to record to, when there is one.
    pub audit: Option<Audit>,
    /// Settings.
    pub settings: Settings,
}

struct Shared<A, C, S> {
    authorizer: A,
    clusters: C,
    audit_store: Option<S>,
    audit: Option<Audit>,
    settings: Settings,
}

type State_<A, C, S> = State<Arc<Shared<A, C, S>>>;

/// The path parameters of every route (absent ones are `None`).
#[derive(Deserialize, Default)]
struct Params {
    namespace: Option<String>,
    name: Option<String>,
    id: Option<String>,
}

impl Params {
    fn name(&self) -> String {
        self.name.clone().unwrap_or_default()
    }
}

/// The API's routes, under `/api`.
pub fn router<A: Authorizer, C: Clusters, S: AuditStore>(parts: Parts<A, C, S>) -> Router {
    let Parts { authorizer, clusters, audit_store, audit, settings } = parts;
    let shared = Arc::new(Shared { authorizer, clusters, audit_store, audit, settings });
    let document = (
        [(header::CONTENT_TYPE, "application/json")],
        Bytes::from(serde_json::to_vec(&openapi::document()).unwrap_or_default()),
    );
    let cluster_routes = Router::new()
        .route("/clusters", get(list_clusters::<A, C, S>).post(create_cluster::<A, C, S>))
        .route("/clusters/{name}", get(get_cluster::<A, C, S>).delete(delete_cluster::<A, C, S>))
        .route("/clusters/{name}/backup", post(request_backup::<A, C, S>))
        .route("/clusters/{name}/backups/{id}", get(backup_state::<A, C, S>))
        .route("/clusters/{name}/audit", get(audit_trail::<A, C, S>));
    Router::new()
        .nest("/api", cluster_routes.clone())
        .nest("/api/namespaces/{namespace}", cluster_routes)
        .route("/api/clustersets", get(list_sets::<A, C, S>))
        .route("/api/clustersets/{name}", get(get_set::<A, C, S>))
        .route_layer(axum::middleware::from_fn_with_state(shared.clone(), authenticate::<A, C, S>))
        .route(openapi::PATH, get(move || std::future::ready(document.clone())))
        .fallback(|| async { error(&ApiError::new(404, "no such route; see docs/api.md")) })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(BODY_TIMEOUT))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, REQUEST_TIMEOUT))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(shared)
}

/// Errors axum answers itself (a body over the limit, a method no route has, a path that does not decode) as
/// `{"error": ...}` like every other error, keeping their headers (`Allow`).
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let json =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!("the request body is larger than {MAX_BODY_BYTES} bytes")
    } else {
        let text = axum::body::to_bytes(body, 64 << 10).await.unwrap_or_default();
        let text = String::from_utf8_lossy(&text).trim().to_owned();
        if text.is_empty() { status.canonical_reason().unwrap_or("error").to_owned() } else { text }
    };
    let mut out = error(&ApiError::new(status.as_u16(), message));
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

fn error(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Json(e.body())).into_response();
    if e.status == 401 {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    response
}

fn answer(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(|e| error(&e))
}

/// An API server answer as the seed maps it; failures the caller cannot fix are logged.
fn failed(f: &Failure) -> ApiError {
    let status = status_for(&f.reason, f.code);
    if status >= 500 {
        tracing::warn!(reason = %f.reason, code = f.code, error = %f.message, "an API request failed");
    }
    ApiError::new(status, f.message.clone())
}

async fn authenticate<A: Authorizer, C, S>(
    State(shared): State_<A, C, S>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = crate::http::bearer_token(request.headers());
    let Some(token) = token else {
        return error(&ApiError::new(401, "a bearer token is required: Authorization: Bearer <token>"));
    };
    match shared.authorizer.authenticate(token).await {
        Ok(Some(caller)) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Ok(None) => error(&ApiError::new(401, "the API server did not accept the bearer token")),
        Err(e) => {
            tracing::warn!(error = %crate::error_chain(&e), "could not authenticate an API request");
            error(&ApiError::new(503, "the API server could not review the token; try again"))
        }
    }
}

impl<A: Authorizer, C: Clusters, S: AuditStore> Shared<A, C, S> {
    fn namespace(&self, p: &Params) -> String {
        p.namespace.clone().unwrap_or_else(|| self.settings.namespace.clone())
    }

    /// 403 unless RBAC grants `caller` what `route` needs.
    async fn allow(&self, caller: &Caller, route: &Route) -> Result<(), ApiError> {
        let access = route.access();
        match self.authorizer.authorize(caller, &access).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                let what = match access.subresource {
                    Some(sub) => format!("{}/{sub}", access.resource),
                    None => access.resource.to_owned(),
                };
                let scope = access.namespace.map_or_else(String::new, |ns| format!(" in namespace {ns:?}"));
                Err(ApiError::new(
                    403,
                    format!(
                        "user {:?} may not {} {what}.{}{scope}; ask for a Role that grants it",
                        caller.username, access.verb, access.group
                    ),
                ))
            }
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "could not authorise an API request");
                Err(ApiError::new(503, "the API server could not review the request; try again"))
            }
        }
    }

    /// Records a write in the audit trail (on disk before the answer is sent); a record that cannot be kept is
    /// counted and logged by the trail, never silently lost.
    async fn record(&self, call: ApiCall<'_>) {
        if let Some(audit) = &self.audit
            && let Err(e) = audit.record_durably(from_api_call(&call)).await
        {
            tracing::error!(error = %e, cluster = call.name, operation = call.operation, "an API call could not be recorded in the audit trail");
        }
    }
}

fn note(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-operator").and_then(|v| v.to_str().ok())
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn call_id() -> String {
    format!("api-{:032x}", rand::random::<u128>())
}

#[allow(clippy::too_many_arguments)]
fn call<'a>(
    id: &'a str,
    namespace: &'a str,
    name: &'a str,
    uid: &'a str,
    operation: &'a str,
    caller: &'a Caller,
    headers: &'a HeaderMap,
    outcome: Result<String, String>,
    spec: Option<&'a Value>,
) -> ApiCall<'a> {
    ApiCall {
        id,
        timestamp: now(),
        namespace,
        name,
        object_uid: uid,
        operation,
        username: &caller.username,
        groups: &caller.groups,
        note: note(headers),
        outcome,
        spec,
    }
}

async fn list_clusters<A: Authorizer, C: Clusters, S: AuditStore>(
    State(s): State_<A, C, S>,
    Extension(caller): Extension<Caller>,
    p: Option<Path<Params>>,
) -> Response {
    let p = p.map(|Path(p)| p).unwrap_or_default();
    let namespace = s.namespace(&p);
    answer(
        async {
            check_target(&namespace, None)?;
            s.allow(&caller, &Route::ListClusters { namespace: namespace.clone() }).await?;
            let items = s.clusters.list(&namespace).await.map_err(|f| failed(&f))?;
            Ok(Json(items).into_response())
        }
        .await,
    )
}

fn json_content(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(kind) = headers.get(header::CONTENT_TYPE) else { return Ok(()) };
    let kind = kind.to_str().unwrap_or_default().split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    // curl -d sends the form type; the seed reads the body as JSON whatever it is labelled.
    if kind == "application/json" || kind == "application/x-www-form-urlencoded" || kind.is_empty() {
        Ok(())
    } else {
        Err(ApiError::new(415, format!("Content-Type {kind:?} is not supported; send application/json")))
    }
}

async fn create_cluster<A: Authorizer, C: Clusters, S: AuditStore>(
    State(s): State_<A, C, S>,
    Extension(caller): Extension<Caller>,
    p: Option<Path<Params>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = p.map(|Path(p)| p).unwrap_or_default();
    let namespace = s.namespace(&p);
    answer(
        async {
            check_target(&namespace, None)?;
            s.allow(&caller, &Route::CreateCluster { namespace: namespace.clone() }).await?;
            json_content(&headers)?;
            let request = read_create(&body)?;
            let created = s.clusters.create(&namespace, request.object(&namespace)).await;
            let id = call_id();
            let uid = created.as_ref().ok().and_then(|o| o["metadata"]["uid"].as_str()).unwrap_or_default();
            let outcome = created.as_ref().map(|_| String::new()).map_err(|f| f.message.clone());
            let record =
                call(&id, &namespace, &request.name, uid, "create", &caller, &headers, outcome, Some(&request.spec));
            s.record(record).await;
            let created = created.map_err(|f| failed(&f))?;
            Ok((StatusCode::CREATED, Json(created)).into_response())
        }
        .await,
    )
}

async fn get_cluster<A: Authorizer, C: Clusters, S: AuditStore>(
    State(s): State_<A, C, S>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<Params>,
) -> Response {
    let (namespace, name) = (s.namespace(&p), p.name());
    answer(
        async {
            check_target(&namespace, Some(&name))?;
            s.allow(&caller, &Route::GetCluster { namespace: namespace.clone(), name: name.clone() }).await?;
            let object = s.clusters.get(&namespace, &name).await.map_err(|f| failed(&f))?;
            Ok(Json(object).into_response())
        }
        .await,
    )
}

async fn delete_cluster<A: Authorizer, C: Clusters, S: AuditStore>(
    State(s): State_<A, C, S>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<Params>,
    headers: HeaderMap,
) -> Response {
    let (namespace, name) = (s.namespace(&p), p.name());
    answer(
        async {
            check_target(&namespace, Some(&name))?;
            s.allow(&caller, &Route::DeleteCluster { namespace: namespace.clone(), name: name.clone() }).await?;
            let deleted = s.clusters.delete(&namespace, &name).await;
            let id = call_id();
            let outcome = deleted.as_ref().map(|()| String::new()).map_err(|f| f.message.clone());
            s.record(call(&id, &namespace, &name, "", "delete", &caller, &headers, outcome, None)).await;
            deleted.map_err(|f| failed(&f))?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        .await,
    )
}

async fn request_backup<A: Authorizer, C: Clusters, S: AuditStore>(
    State(s): State_<A, C, S>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<Params>,
    headers: HeaderMap,
) -> Response {
    let (namespace, name) = (s.namespace(&p), p.name());
    answer(
        async {
            check_target(&namespace, Some(&name))?;
            s.allow(&caller, &Route::RequestBackup { namespace: namespace.clone(), name: name.clone() }).await?;
            if !s.settings.backups_enabled {
                return Err(ApiError::new(
                    503,
                    "backup scheduler not configured: the operator runs with --enable-backup=false",
                ));
            }
            let request = request_id(
                &tsdb_operator_core::backup::backup_id(jiff::Timestamp::now()),
                &format!("{:08x}", rand::random::<u32>()),
            );
            let mut outcome = Err(ApiError::new(409, "the cluster kept changing; try again"));
            let mut uid = String::new();
            // A concurrent change of the object makes the annotation's precondition fail: read it again, at most 3
            // times.
            for _ in 0..3 {
                let object = match s.clusters.get(&namespace, &name).await {
                    Ok(object) => object,
                    Err(f) => {
                        // A request for a cluster that is not there is recorded too.
                        outcome = Err(failed(&f));
                        break;
                    }
                };
                uid = object["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
                if let Err(refused) = check_backup_possible(&name, &object["spec"]) {
                    outcome = Err(refused);
                    break;
                }
                let version = object["metadata"]["resourceVersion"].as_str().unwrap_or_default();
                match s.clusters.annotate(&namespace, &name, version, annotations::BACKUP_NOW, &request).await {
                    Ok(()) => {
                        outcome = Ok(());
                        break;
                    }
                    Err(f) if f.code == 409 => {}
                    Err(f) => {
                        outcome = Err(failed(&f));
                        break;
                    }
                }
            }
            let id = call_id();
            let recorded =
                outcome.as_ref().map(|()| format!("requested backup {request}")).map_err(|e| e.message.clone());
            s.record(call(&id, &namespace, &name, &uid, "backup", &caller, &headers, recorded, None)).await;
            outcome?;
            let accepted = BackupAccepted::new(&namespace, &name, &request);
            Ok((StatusCode::ACCEPTED, [(header::LOCATION, accepted.location.clone())], Json(accepted)).into_response())
        }
        .await,
    )
}

async fn backup_state<A: Authorizer, C: Clusters, S: AuditStore>(
    State(s): State_<A, C, S>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<Params>,
) -> Response {
    let (namespace, name) = (s.namespace(&p), p.name());
    let id = p.id.clone().unwrap_or_default();
    answer(
        async {
            check_target(&namespace, Some(&name))?;
            s.allow(&caller, &Route::BackupState { namespace: namespace.clone(), name: name.clone() }).await?;
            let object = s.clusters.get(&namespace, &name).await.map_err(|f| failed(&f))?;
            let annotation = object["metadata"]["annotations"][annotations::BACKUP_NOW].as_str();
            let status: Option<BackupStatus> = serde_json::from_value(object["status"]["backup"].clone()).ok();
            let state = request_state(&id, annotation, status.as_ref()).ok_or_else(|| {
                ApiError::new(
                    404,
                    format!(
                        "backup request {id:?} is not known for PrometheusCluster {name:?}: only its latest request \
                         is kept"
                    ),
                )
            })?;
            Ok(Json(state).into_response())
        }
        .await,
    )
}

async fn audit_trail<A: Authorizer, C: Clusters, S: AuditStore>(
    State(s): State_<A, C, S>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<Params>,
) -> Response {
    let (namespace, name) = (s.namespace(&p), p.name());
    answer(
        async {
            check_target(&namespace, Some(&name))?;
            s.allow(&caller, &Route::Audit { namespace: namespace.clone(), name: name.clone() }).await?;
            let Some(store) = &s.audit_store else {
                return Err(ApiError::new(503, "audit log not configured: start the operator with --audit-dsn"));
            };
            let filter =
                Filter { namespace: Some(namespace), cluster: Some(name), limit: AUDIT_LIMIT, ..Filter::default() };
            let records = store.query(&filter).await.map_err(|e| {
                tracing::warn!(error = %crate::error_chain(&e), "could not read the audit trail");
                ApiError::new(503, "the audit database cannot be read now; try again")
            })?;
            let rows: Vec<Value> = records
                .into_iter()
                .map(|r| {
                    let mut row = serde_json::to_value(&r).unwrap_or_default();
                    row["id"] = Value::String(r.event_id);
                    row
                })
                .collect();
            Ok(Json(rows).into_response())
        }
        .await,
    )
}

async fn list_sets<A: Authorizer, C: Clusters, S: AuditStore>(
    State(s): State_<A, C, S>,
    Extension(caller): Extension<Caller>,
) -> Response {
    answer(
        async {
            s.allow(&caller, &Route::ListClusterSets).await?;
            Ok(Json(s.clusters.list_sets().await.map_err(|f| failed(&f))?).into_response())
        }
        .await,
    )
}

async fn get_set<A: Authorizer, C: Clusters, S: AuditStore>(
    State(s): State_<A, C, S>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<Params>,
) -> Response {
    let name = p.name();
    answer(
        async {
            check_target("default", Some(&name))?;
            s.allow(&caller, &Route::GetClusterSet { name: name.clone() }).await?;
            Ok(Json(s.clusters.get_set(&name).await.map_err(|f| failed(&f))?).into_response())
        }
        .await,
    )
}

#[cfg(test)]
mod tests;
