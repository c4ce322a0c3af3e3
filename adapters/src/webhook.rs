//! The validating admission webhook: `admission.k8s.io/v1` AdmissionReviews for PrometheusClusters and
//! PrometheusClusterSets, answered by [`tsdb_operator_core::admission`]. I/O: reads the cluster's storage through
//! [`StorageSource`] when an update changes `spec.storage`; the server itself is [`crate::http::serve_tls`].
//!
//! The webhook is UX, not the security boundary: the operator checks every object it reconciles again. It never
//! sees the operator's own status writes (it is registered for the main resources, not `/status`).

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{Api, DynamicObject};
use kube::core::admission::{self, AdmissionRequest, AdmissionResponse, AdmissionReview};
use serde_json::Value;
use tsdb_operator_core::admission::{ClusterReview, Operation, observes_storage, review_cluster, review_cluster_set};
use tsdb_operator_core::crd::StorageSpec;
use tsdb_operator_core::storage::{ObservedClaim, ObservedStorage, class_to_check};
use tsdb_operator_core::validate::FieldErrors;

use crate::audit::Audit;
use crate::kube::children;

pub use tsdb_operator_core::admission::{CLUSTER_PATH, CLUSTER_SET_PATH};

/// What exists of a cluster's storage, owned.
#[derive(Clone, Debug, Default)]
pub struct Storage {
    /// The StatefulSet, as JSON.
    pub stateful_set: Option<Value>,
    /// Its data volume claims.
    pub claims: Vec<ObservedClaim>,
    /// `allowVolumeExpansion` of the class of the claims that would grow; `None` when that class does not exist
    /// or nothing grows.
    pub class_allows_expansion: Option<bool>,
}

impl Storage {
    fn view(&self) -> ObservedStorage<'_> {
        ObservedStorage {
            stateful_set: self.stateful_set.as_ref(),
            claims: &self.claims,
            class_allows_expansion: self.class_allows_expansion,
        }
    }
}

/// The port to the cluster's storage as it exists. [`KubeStorage`] is the real one.
pub trait StorageSource: Send + Sync + 'static {
    /// Observes the storage of cluster `name` in `namespace`, for a spec that asks for `wanted`.
    fn observe(
        &self,
        namespace: &str,
        name: &str,
        wanted: &StorageSpec,
    ) -> impl Future<Output = Result<Storage, children::Error>> + Send;
}

/// Reads the StatefulSet, the claims and their StorageClass from the API server.
#[derive(Clone)]
pub struct KubeStorage {
    client: kube::Client,
}

impl KubeStorage {
    /// Reads through `client`.
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

impl StorageSource for KubeStorage {
    async fn observe(&self, namespace: &str, name: &str, wanted: &StorageSpec) -> Result<Storage, children::Error> {
        let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), namespace);
        let sts = api.get_opt(name).await.map_err(|source| children::Error::Read {
            kind: "StatefulSet".to_owned(),
            name: name.to_owned(),
            source,
        })?;
        let claims = children::observe_claims(&self.client, namespace, name).await?;
        let class_allows_expansion = match class_to_check(wanted, &claims) {
            Some(class) => children::observe_class_expansion(&self.client, &class).await?,
            None => None,
        };
        Ok(Storage { stateful_set: sts.and_then(|s| serde_json::to_value(s).ok()), claims, class_allows_expansion })
    }
}

/// What the handlers share: the storage port and, when the audit trail is on, its recorder.
struct Shared<S> {
    storage: Arc<S>,
    audit: Option<Audit>,
}

impl<S> Clone for Shared<S> {
    fn clone(&self) -> Self {
        Self { storage: self.storage.clone(), audit: self.audit.clone() }
    }
}

/// The largest review read: the API server sends the object and the stored one, each at most its 3 MiB request
/// limit, with the review around them. Larger bodies get 413.
pub const MAX_BODY_BYTES: usize = 8 << 20;
/// Time a caller has to send each part of a review's body (then 400); the API server sends it at once.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Time a review takes at most (then 503); the API server gives up after the configuration's `timeoutSeconds`
/// (10 s) anyway.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The webhook's routes: [`CLUSTER_PATH`] and [`CLUSTER_SET_PATH`]. With `audit`, every request that is not a dry
/// run is recorded (with the user, the spec diff and the verdict) and on disk before the answer is sent. Bounded by
/// [`MAX_BODY_BYTES`], [`BODY_TIMEOUT`] and [`REQUEST_TIMEOUT`], so that a caller inside the cluster that is not the
/// API server cannot hold the webhook's connections (and with them every create) with slow or huge bodies.
pub fn router<S: StorageSource>(storage: Arc<S>, audit: Option<Audit>) -> Router {
    Router::new()
        .route(CLUSTER_PATH, post(cluster::<S>))
        .route(CLUSTER_SET_PATH, post(cluster_set::<S>))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(BODY_TIMEOUT))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, REQUEST_TIMEOUT))
        .with_state(Shared { storage, audit })
}

fn operation(op: &admission::Operation) -> Operation {
    match op {
        admission::Operation::Create => Operation::Create,
        admission::Operation::Update => Operation::Update,
        admission::Operation::Delete => Operation::Delete,
        admission::Operation::Connect => Operation::Connect,
    }
}

fn spec(object: Option<&DynamicObject>) -> Option<&Value> {
    object.map(|o| o.data.get("spec").unwrap_or(&Value::Null))
}

/// The name the refusal names: the object's, or its `generateName` prefix on create.
fn shown_name(request: &AdmissionRequest<DynamicObject>) -> String {
    if !request.name.is_empty() {
        return request.name.clone();
    }
    let meta = request.object.as_ref().map(|o| &o.metadata);
    meta.and_then(|m| m.name.clone().or_else(|| m.generate_name.clone())).unwrap_or_default()
}

/// Reads the review, or answers 400 with the reason.
fn request(review: AdmissionReview<DynamicObject>) -> Result<AdmissionRequest<DynamicObject>, Box<Response>> {
    review.try_into().map_err(|e: admission::ConvertAdmissionReviewError| {
        let answer = AdmissionResponse::invalid(format!("not an admission.k8s.io/v1 AdmissionReview request: {e}"));
        Box::new((StatusCode::BAD_REQUEST, Json(answer.into_review())).into_response())
    })
}

async fn answer(
    audit: Option<&Audit>,
    request: &AdmissionRequest<DynamicObject>,
    kind: &str,
    verdict: Result<(), FieldErrors>,
    mut warnings: Vec<String>,
) -> Response {
    let mut response = AdmissionResponse::from(request);
    if let Some(audit) = audit
        && !request.dry_run
    {
        let old = request.old_object.as_ref().map(|o| &o.metadata);
        let record = tsdb_operator_core::audit::from_admission(&tsdb_operator_core::audit::Admission {
            uid: &request.uid,
            old_generation: old.and_then(|m| m.generation),
            old_resource_version: old.and_then(|m| m.resource_version.as_deref()),
            timestamp: k8s_openapi::jiff::Timestamp::now().to_string(),
            kind,
            namespace: request.namespace.as_deref().unwrap_or_default(),
            name: &shown_name(request),
            object_uid: request
                .old_object
                .as_ref()
                .or(request.object.as_ref())
                .and_then(|o| o.metadata.uid.as_deref())
                .unwrap_or_default(),
            operation: operation(&request.operation),
            username: request.user_info.username.as_deref().unwrap_or_default(),
            groups: request.user_info.groups.as_deref().unwrap_or_default(),
            spec: spec(request.object.as_ref()),
            old_spec: spec(request.old_object.as_ref()),
            refused: verdict.as_ref().err().map(ToString::to_string),
        });
        if let Err(e) = audit.record_durably(record).await {
            // Refusing every change while the spool cannot be written would stop all work; the loss is counted
            // (tsdb_operator_audit_dropped_total) and the user is told.
            tracing::error!(error = %e, "an admission request could not be recorded in the audit trail");
            warnings.push(format!("this change is not in the audit trail: {e}"));
        }
    }
    if let Err(errors) = verdict {
        let status = errors.to_status(kind, &shown_name(request));
        response.allowed = false;
        response.result = serde_json::to_value(&status)
            .and_then(serde_json::from_value)
            .unwrap_or_else(|_| kube::core::Status::failure(&errors.to_string(), "Invalid").with_code(422));
        tracing::info!(kind, name = %shown_name(request), namespace = ?request.namespace, user = ?request.user_info.username,
            %errors, "admission refused");
    }
    if !warnings.is_empty() {
        response.warnings = Some(warnings);
    }
    Json(response.into_review()).into_response()
}

async fn cluster<S: StorageSource>(
    State(shared): State<Shared<S>>,
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Response {
    let request = match request(review) {
        Ok(r) => r,
        Err(bad) => return *bad,
    };
    let op = operation(&request.operation);
    let (new, old) = (spec(request.object.as_ref()), spec(request.old_object.as_ref()));
    let mut warnings = Vec::new();
    let mut observed = None;
    if observes_storage(op, new, old) {
        let wanted: StorageSpec =
            new.and_then(|s| s.get("storage")).and_then(|s| serde_json::from_value(s.clone()).ok()).unwrap_or_default();
        let namespace = request.namespace.clone().unwrap_or_default();
        match shared.storage.observe(&namespace, &request.name, &wanted).await {
            Ok(found) => observed = Some(found),
            Err(e) => {
                // The operator checks the change again and reports it in status; the user is told it was not checked.
                tracing::warn!(error = %crate::error_chain(&e), "could not read a cluster's storage for admission");
                warnings.push(format!(
                    "the storage change was not checked ({}); the operator reports it in status if it cannot be \
                     carried out",
                    crate::error_chain(&e)
                ));
            }
        }
    }
    let generated;
    let name = if request.name.is_empty() {
        let prefix = request.object.as_ref().and_then(|o| o.metadata.generate_name.as_deref());
        generated = prefix.map(tsdb_operator_core::admission::generated_name);
        generated.as_deref()
    } else {
        Some(request.name.as_str())
    };
    let review =
        ClusterReview { operation: op, name, spec: new, old_spec: old, storage: observed.as_ref().map(Storage::view) };
    let verdict = review_cluster(&review);
    answer(shared.audit.as_ref(), &request, "PrometheusCluster", verdict, warnings).await
}

async fn cluster_set<S: StorageSource>(
    State(shared): State<Shared<S>>,
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Response {
    let request = match request(review) {
        Ok(r) => r,
        Err(bad) => return *bad,
    };
    let verdict = review_cluster_set(
        operation(&request.operation),
        spec(request.object.as_ref()),
        spec(request.old_object.as_ref()),
    );
    answer(shared.audit.as_ref(), &request, "PrometheusClusterSet", verdict, Vec::new()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::ServiceExt as _;

    /// Storage as a test says it is; counts the reads.
    #[derive(Default)]
    struct FakeStorage {
        storage: Storage,
        failing: bool,
        reads: AtomicUsize,
    }

    impl StorageSource for FakeStorage {
        async fn observe(&self, _: &str, _: &str, _: &StorageSpec) -> Result<Storage, children::Error> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            if self.failing {
                return Err(children::Error::ListClaims(kube::Error::Service("connection refused".into())));
            }
            Ok(self.storage.clone())
        }
    }

    fn review(kind: &str, operation: &str, spec: Option<Value>, old: Option<Value>) -> Value {
        let object = |spec: Value| {
            serde_json::json!({"apiVersion": "observability.merlionos.org/v1", "kind": kind,
                "metadata": {"name": "demo", "namespace": "team"}, "spec": spec})
        };
        let plural = format!("{}s", kind.to_ascii_lowercase());
        serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "0f2c", "kind": {"group": "observability.merlionos.org", "version": "v1", "kind": kind},
                "resource": {"group": "observability.merlionos.org", "version": "v1", "resource": plural},
                "name": "demo", "namespace": "team", "operation": operation,
                "userInfo": {"username": "alice", "groups": ["team"]},
                "object": spec.map(object), "oldObject": old.map(object), "dryRun": false
            }
        })
    }

    async fn send(router: &Router, path: &str, body: &Value) -> (StatusCode, Value) {
        let request = axum::http::Request::post(path)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.to_string()))
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn a_bad_cluster_is_refused_with_the_seed_message_and_its_field() {
        let router = router(Arc::new(FakeStorage::default()), None);
        let body = review("PrometheusCluster", "CREATE", Some(serde_json::json!({"replicas": 0})), None);
        let (status, answer) = send(&router, CLUSTER_PATH, &body).await;
        assert_eq!(status, StatusCode::OK);
        let response = &answer["response"];
        assert_eq!(response["uid"], "0f2c");
        assert_eq!(response["allowed"], false);
        assert_eq!(response["status"]["code"], 422);
        assert_eq!(response["status"]["reason"], "Invalid");
        assert_eq!(response["status"]["details"]["causes"][0]["field"], "spec.replicas");
        let message = response["status"]["message"].as_str().unwrap();
        assert_eq!(
            message,
            "PrometheusCluster.observability.merlionos.org \"demo\" is invalid: spec.replicas: Invalid value: 0: must \
             be >= 1"
        );

        let good = review("PrometheusCluster", "CREATE", Some(serde_json::json!({"replicas": 2})), None);
        let (_, answer) = send(&router, CLUSTER_PATH, &good).await;
        assert_eq!(answer["response"]["allowed"], true);
        let delete = review("PrometheusCluster", "DELETE", None, Some(serde_json::json!({"replicas": 0})));
        let (_, answer) = send(&router, CLUSTER_PATH, &delete).await;
        assert_eq!(answer["response"]["allowed"], true);
    }

    #[tokio::test]
    async fn storage_is_read_only_for_storage_changes_and_a_failed_read_admits_with_a_warning() {
        let sts = serde_json::json!({"spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"},
            "spec": {"resources": {"requests": {"storage": "30Gi"}}}}]}});
        let fake = Arc::new(FakeStorage {
            storage: Storage { stateful_set: Some(sts), ..Storage::default() },
            ..FakeStorage::default()
        });
        let router = router(fake.clone(), None);
        let old = serde_json::json!({"storage": {"size": "30Gi"}});
        let scale = review(
            "PrometheusCluster",
            "UPDATE",
            Some(serde_json::json!({"replicas": 3, "storage": {"size": "30Gi"}})),
            Some(old.clone()),
        );
        assert_eq!(send(&router, CLUSTER_PATH, &scale).await.1["response"]["allowed"], true);
        assert_eq!(fake.reads.load(Ordering::SeqCst), 0, "no storage change, no read");

        let shrink = review(
            "PrometheusCluster",
            "UPDATE",
            Some(serde_json::json!({"storage": {"size": "20Gi"}})),
            Some(old.clone()),
        );
        let (_, answer) = send(&router, CLUSTER_PATH, &shrink).await;
        assert_eq!(answer["response"]["allowed"], false);
        assert_eq!(answer["response"]["status"]["details"]["causes"][0]["field"], "spec.storage.size");
        assert!(answer["response"]["status"]["message"].as_str().unwrap().contains("cannot shrink"), "{answer}");

        let failing = Arc::new(FakeStorage { failing: true, ..FakeStorage::default() });
        let (_, answer) = send(&super::router(failing, None), CLUSTER_PATH, &shrink).await;
        assert_eq!(answer["response"]["allowed"], true);
        assert!(answer["response"]["warnings"][0].as_str().unwrap().contains("not checked"), "{answer}");
    }

    #[tokio::test]
    async fn cluster_sets_are_reviewed_and_garbage_is_a_bad_request() {
        let router = router(Arc::new(FakeStorage::default()), None);
        let body = review("PrometheusClusterSet", "CREATE", Some(serde_json::json!({"clusterSelector": 5})), None);
        let (_, answer) = send(&router, CLUSTER_SET_PATH, &body).await;
        assert_eq!(answer["response"]["allowed"], false);
        assert_eq!(answer["response"]["status"]["details"]["causes"][0]["field"], "spec.clusterSelector");
        let (status, _) = send(&router, CLUSTER_PATH, &serde_json::json!({"kind": "AdmissionReview"})).await;
        assert!(status.is_client_error(), "{status}");
    }
}
