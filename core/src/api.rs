//! The REST API's decisions. Pure: no I/O. The adapter authenticates the caller, asks here which Kubernetes
//! permission the route needs, reads the request with [`read_create`], and maps the API server's answers with
//! [`status_for`].
//!
//! # Routes
//! The seed's routes act in one namespace (`--api-namespace`); the same routes under
//! `/api/namespaces/{namespace}/...` act in any namespace. Each route needs what a `kubectl` user would need for the
//! same thing ([`Route::access`]), so the cluster's RBAC decides who may call it:
//!
//! | Route | Permission |
//! |---|---|
//! | `GET /api/clusters` | `list prometheusclusters` in the namespace |
//! | `POST /api/clusters` | `create prometheusclusters` |
//! | `GET /api/clusters/{name}` | `get prometheusclusters` |
//! | `DELETE /api/clusters/{name}` | `delete prometheusclusters` |
//! | `POST /api/clusters/{name}/backup` | `create prometheusclusters/backup` (a subresource only RBAC knows) |
//! | `GET /api/clusters/{name}/backups/{id}` | `get prometheusclusters` |
//! | `GET /api/clusters/{name}/audit` | `get prometheusclusters/audit` (the trail names other users) |
//! | `GET /api/clustersets` | `list prometheusclustersets` (cluster-scoped) |
//! | `GET /api/clustersets/{name}` | `get prometheusclustersets` |
//!
//! # Guarantees
//! - Every error is `{"error": "..."}` with the seed's codes: 400 for a body that cannot be read or a spec the
//!   operator would refuse (naming every field), 404, 409 for a name taken, 500 only for what the caller cannot fix.
//! - A spec is refused here with the same checks as the admission webhook, so an API user learns at `POST` time what
//!   a `kubectl` user learns at `apply` time, whether or not the webhook is installed.
//! - A backup request is the `backup-now` annotation: the same path as a `kubectl annotate`, carried out by the
//!   backup scheduler on whichever replica leads. [`request_state`] reads its progress back from status.

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Value, json};

use crate::admission::{ClusterReview, Operation, review_cluster};
use crate::backup::status::requested_states;
use crate::constants::GROUP;
use crate::crd::BackupStatus;

/// Resource name of PrometheusClusters.
pub const CLUSTERS: &str = "prometheusclusters";
/// Resource name of PrometheusClusterSets.
pub const CLUSTER_SETS: &str = "prometheusclustersets";
/// The RBAC subresource that allows requesting a backup.
pub const BACKUP_SUBRESOURCE: &str = "backup";
/// The RBAC subresource that allows reading a cluster's audit trail.
pub const AUDIT_SUBRESOURCE: &str = "audit";
/// Largest request body the API reads (a PrometheusCluster is far smaller; the API server's own limit is 3 MiB).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Records `GET .../audit` returns (the seed's limit).
pub const AUDIT_LIMIT: u32 = 100;

/// One call of the API, with its namespace resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /api/clusters`.
    ListClusters {
        /// Namespace.
        namespace: String,
    },
    /// `POST /api/clusters` (authorised before the body is read, as the API server does: without a name).
    CreateCluster {
        /// Namespace.
        namespace: String,
    },
    /// `GET /api/clusters/{name}`.
    GetCluster {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// `DELETE /api/clusters/{name}`.
    DeleteCluster {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// `POST /api/clusters/{name}/backup`.
    RequestBackup {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// `GET /api/clusters/{name}/backups/{id}`.
    BackupState {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// `GET /api/clusters/{name}/audit`.
    Audit {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// `GET /api/clustersets`.
    ListClusterSets,
    /// `GET /api/clustersets/{name}`.
    GetClusterSet {
        /// Name.
        name: String,
    },
}

/// A Kubernetes permission, as a `SubjectAccessReview`'s resource attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// `get`, `list`, `create`, `delete`.
    pub verb: &'static str,
    /// API group.
    pub group: &'static str,
    /// Resource.
    pub resource: &'static str,
    /// Subresource, if any.
    pub subresource: Option<&'static str>,
    /// Namespace; `None` for cluster-scoped resources.
    pub namespace: Option<String>,
    /// Object name; `None` for lists and creates without one.
    pub name: Option<String>,
}

impl Route {
    /// The permission the caller needs.
    pub fn access(&self) -> Access {
        let on = |verb, resource, subresource, namespace: &str, name: Option<&str>| Access {
            verb,
            group: GROUP,
            resource,
            subresource,
            namespace: Some(namespace.to_owned()),
            name: name.map(str::to_owned),
        };
        match self {
            Route::ListClusters { namespace } => on("list", CLUSTERS, None, namespace, None),
            Route::CreateCluster { namespace } => on("create", CLUSTERS, None, namespace, None),
            Route::GetCluster { namespace, name } | Route::BackupState { namespace, name } => {
                on("get", CLUSTERS, None, namespace, Some(name))
            }
            Route::DeleteCluster { namespace, name } => on("delete", CLUSTERS, None, namespace, Some(name)),
            Route::RequestBackup { namespace, name } => {
                on("create", CLUSTERS, Some(BACKUP_SUBRESOURCE), namespace, Some(name))
            }
            Route::Audit { namespace, name } => on("get", CLUSTERS, Some(AUDIT_SUBRESOURCE), namespace, Some(name)),
            Route::ListClusterSets => Access { namespace: None, ..on("list", CLUSTER_SETS, None, "", None) },
            Route::GetClusterSet { name } => {
                Access { namespace: None, ..on("get", CLUSTER_SETS, None, "", Some(name)) }
            }
        }
    }

    /// The audit operation of a route that changes something (the seed's `create`, `delete`, `backup`); `None`
    /// for reads.
    pub fn audited_operation(&self) -> Option<&'static str> {
        match self {
            Route::CreateCluster { .. } => Some("create"),
            Route::DeleteCluster { .. } => Some("delete"),
            Route::RequestBackup { .. } => Some("backup"),
            _ => None,
        }
    }
}

/// An answer other than success: the status code and the `{"error": ...}` body.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub status: u16,
    /// What went wrong and what to do.
    pub message: String,
}

impl ApiError {
    /// An error with `status`.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    /// The response body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody { error: self.message.clone() }
    }
}

/// The body of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ErrorBody {
    /// What went wrong and what to do.
    pub error: String,
}

/// The answer to `POST /api/clusters/{name}/backup` (202).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
pub struct BackupAccepted {
    /// `ok`, as the seed answers.
    pub status: String,
    /// The request id, to follow with `GET` of [`BackupAccepted::location`].
    pub id: String,
    /// `Pending`: the backup scheduler starts it on its next pass.
    pub state: String,
    /// Where the request's state is read (also the `Location` header).
    pub location: String,
}

impl BackupAccepted {
    /// The answer for request `id` of cluster `name` in `namespace`.
    pub fn new(namespace: &str, name: &str, id: &str) -> Self {
        Self {
            status: "ok".to_owned(),
            id: id.to_owned(),
            state: "Pending".to_owned(),
            location: format!("/api/namespaces/{namespace}/clusters/{name}/backups/{id}"),
        }
    }
}

/// The seed's `statusFor`: the status code for an API server error with `reason` (`NotFound`, `AlreadyExists`,
/// `Invalid`, ...) and `code`. Conflicts are 409 as well; a request the API server refused as too large is 413;
/// anything else, including the operator's own missing permissions, is 500.
pub fn status_for(reason: &str, code: u16) -> u16 {
    match (reason, code) {
        ("NotFound", _) | (_, 404) => 404,
        ("AlreadyExists" | "Conflict", _) | (_, 409) => 409,
        ("Invalid" | "BadRequest", _) | (_, 400 | 422) => 400,
        ("RequestEntityTooLarge", _) | (_, 413) => 413,
        _ => 500,
    }
}

/// A create request, read and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct CreateRequest {
    /// The cluster's name.
    pub name: String,
    /// The spec as sent (defaults are the API server's and the operator's to fill in).
    pub spec: Value,
}

impl CreateRequest {
    /// The PrometheusCluster to create in `namespace`.
    pub fn object(&self, namespace: &str) -> Value {
        json!({
            "apiVersion": format!("{GROUP}/v1"),
            "kind": "PrometheusCluster",
            "metadata": { "name": self.name, "namespace": namespace },
            "spec": self.spec,
        })
    }
}

/// Reads the body of `POST /api/clusters` (the seed's `{"name": "...", "spec": {...}}`) and checks the spec as the
/// admission webhook would.
///
/// # Errors
/// 400 naming the problem: a body that is not a JSON object, a missing or empty `name`, a `spec` that is not an
/// object, and every field the operator would refuse.
pub fn read_create(body: &[u8]) -> Result<CreateRequest, ApiError> {
    let bad = |message: String| ApiError::new(400, message);
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        bad(format!("the request body is not JSON ({e}); send {{\"name\": \"<name>\", \"spec\": {{...}}}}"))
    })?;
    let Value::Object(mut fields) = value else {
        return Err(bad("the request body must be a JSON object: {\"name\": \"<name>\", \"spec\": {...}}".to_owned()));
    };
    let name = match fields.remove("name") {
        Some(Value::String(name)) if !name.is_empty() => name,
        None | Some(Value::Null) => return Err(bad("name: Required value: the cluster's name is required".to_owned())),
        Some(Value::String(_)) => return Err(bad("name: Required value: the cluster's name is empty".to_owned())),
        Some(other) => return Err(bad(format!("name: Invalid value: {other}: the name must be a string"))),
    };
    let spec = match fields.remove("spec") {
        None | Some(Value::Null) => json!({}),
        Some(spec @ Value::Object(_)) => spec,
        Some(other) => {
            return Err(bad(format!("spec: Invalid value: {}: the spec must be an object", kind_of(&other))));
        }
    };
    if let Some(unknown) = fields.keys().next() {
        return Err(bad(format!("{unknown}: Forbidden: unknown field; the body has only \"name\" and \"spec\"")));
    }
    let review = ClusterReview {
        operation: Operation::Create,
        name: Some(&name),
        spec: Some(&spec),
        old_spec: None,
        storage: None,
    };
    review_cluster(&review).map_err(|errors| bad(format!("PrometheusCluster {name:?} is invalid: {errors}")))?;
    Ok(CreateRequest { name, spec })
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// 400 unless the path's `namespace` (a DNS-1123 label) and object `name` (a DNS-1123 subdomain), when given, can
/// be Kubernetes names: nothing else reaches the API server's URLs.
///
/// # Errors
/// 400 naming the part and the rule.
pub fn check_target(namespace: &str, name: Option<&str>) -> Result<(), ApiError> {
    let label = namespace.len() <= crate::validate::names::LABEL_VALUE_MAX && !namespace.contains('.');
    if let Err(rule) = crate::validate::names::check_dns1123_subdomain(namespace).and_then(|()| {
        if label { Ok(()) } else { Err("must be a lowercase RFC 1123 label of at most 63 characters".to_owned()) }
    }) {
        let shown: String = namespace.chars().take(64).collect();
        return Err(ApiError::new(400, format!("namespace {shown:?} in the path: {rule}")));
    }
    if let Some(name) = name
        && let Err(rule) = crate::validate::names::check_dns1123_subdomain(name)
    {
        let shown: String = name.chars().take(64).collect();
        return Err(ApiError::new(400, format!("name {shown:?} in the path: {rule}")));
    }
    Ok(())
}

/// 409 when the cluster `name` with `spec` cannot take a backup: the operator backs up only clusters with
/// `spec.backup.enabled` and a bucket.
///
/// # Errors
/// 409 naming the field to set.
pub fn check_backup_possible(name: &str, spec: &Value) -> Result<(), ApiError> {
    let backup = &spec["backup"];
    if backup["enabled"] != Value::Bool(true) {
        return Err(ApiError::new(
            409,
            format!(
                "spec.backup.enabled: PrometheusCluster {name:?} has backups off; set spec.backup.enabled=true and \
                 spec.backup.bucket (and its credentials) first"
            ),
        ));
    }
    if backup["bucket"].as_str().is_none_or(str::is_empty) {
        return Err(ApiError::new(
            409,
            format!("spec.backup.bucket: Required value: PrometheusCluster {name:?} names no bucket to back up to"),
        ));
    }
    Ok(())
}

/// The id of a backup request made at `stamp` (a backup id, `YYYYMMDDTHHMMSSZ`) with a random `nonce`: a valid
/// annotation value that sorts by time.
pub fn request_id(stamp: &str, nonce: &str) -> String {
    format!("api-{stamp}-{nonce}")
}

/// Where a backup request stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestState {
    /// The request id.
    pub id: String,
    /// `Pending` (not started yet), `Running`, `Succeeded` or `Failed`.
    pub state: String,
    /// The backup taken for it, once started (for `tsdb-ctl restore --backup`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Where the request `id` stands, from the cluster's `backup-now` annotation (`annotation`) and its backup status;
/// `None` when the cluster neither holds nor followed it (an unknown id, or one replaced by a later request: only
/// the latest request of a cluster is kept).
pub fn request_state(id: &str, annotation: Option<&str>, status: Option<&BackupStatus>) -> Option<RequestState> {
    if let Some(requested) = status.and_then(|s| s.last_requested_backup.as_ref())
        && requested.request == id
    {
        return Some(RequestState {
            id: id.to_owned(),
            state: requested.state.clone(),
            backup_id: Some(requested.id.clone()),
            message: requested.message.clone(),
        });
    }
    let acted_on = status.and_then(|s| s.last_request.as_deref()) == Some(id);
    (annotation == Some(id) && !acted_on).then(|| RequestState {
        id: id.to_owned(),
        state: "Pending".to_owned(),
        backup_id: None,
        message: None,
    })
}

/// Whether [`RequestState::state`] is final.
pub fn is_finished(state: &str) -> bool {
    state == requested_states::SUCCEEDED || state == requested_states::FAILED
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::RequestedBackup;

    #[test]
    fn each_route_needs_what_kubectl_would() {
        let ns = || "team-a".to_owned();
        let list = Route::ListClusters { namespace: ns() }.access();
        assert_eq!((list.verb, list.resource, list.subresource, list.name), ("list", CLUSTERS, None, None));
        let backup = Route::RequestBackup { namespace: ns(), name: "demo".into() }.access();
        assert_eq!((backup.verb, backup.subresource), ("create", Some(BACKUP_SUBRESOURCE)));
        assert_eq!(backup.namespace.as_deref(), Some("team-a"));
        let audit = Route::Audit { namespace: ns(), name: "demo".into() }.access();
        assert_eq!((audit.verb, audit.subresource), ("get", Some(AUDIT_SUBRESOURCE)));
        let set = Route::GetClusterSet { name: "fleet".into() }.access();
        assert_eq!((set.verb, set.resource, set.namespace), ("get", CLUSTER_SETS, None));
        assert_eq!(Route::DeleteCluster { namespace: ns(), name: "x".into() }.access().verb, "delete");
        assert_eq!(Route::GetCluster { namespace: ns(), name: "x".into() }.audited_operation(), None);
    }

    #[test]
    fn api_server_errors_map_to_the_seed_codes() {
        assert_eq!(status_for("NotFound", 404), 404);
        assert_eq!(status_for("AlreadyExists", 409), 409);
        assert_eq!(status_for("Invalid", 422), 400);
        assert_eq!(status_for("Forbidden", 403), 500, "the operator's own missing permission is not the caller's");
        assert_eq!(status_for("InternalError", 500), 500);
    }

    #[test]
    fn a_create_body_is_read_and_checked_like_an_apply() {
        let ok = read_create(br#"{"name":"demo","spec":{"replicas":2}}"#).unwrap();
        assert_eq!(ok.name, "demo");
        let object = ok.object("team-a");
        assert_eq!(object["metadata"]["namespace"], "team-a");
        assert_eq!(object["spec"]["replicas"], 2);
        assert_eq!(read_create(br#"{"name":"demo"}"#).unwrap().spec, json!({}));

        let refused = |body: &[u8]| read_create(body).unwrap_err();
        for (body, needle) in [
            (&b"{"[..], "not JSON"),
            (b"[]", "must be a JSON object"),
            (b"{\"spec\":{}}", "name: Required value"),
            (b"{\"name\":\"\"}", "name: Required value"),
            (b"{\"name\":7}", "name: Invalid value"),
            (b"{\"name\":\"a\",\"spec\":[]}", "spec: Invalid value: an array"),
            (b"{\"name\":\"a\",\"extra\":1}", "extra: Forbidden"),
            (b"{\"name\":\"a\",\"spec\":{\"replicas\":3000000000}}", "spec.replicas"),
            (b"{\"name\":\"a\",\"spec\":{\"replicas\":-1}}", "spec.replicas"),
            (&[0xff, 0xfe][..], "not JSON"),
        ] {
            let e = refused(body);
            assert_eq!(e.status, 400, "{e}");
            assert!(e.message.contains(needle), "{needle:?} in {e}");
        }
    }

    #[test]
    fn a_request_is_pending_then_follows_its_backup() {
        let id = request_id("20261204T120000Z", "ab12");
        assert_eq!(id, "api-20261204T120000Z-ab12");
        assert_eq!(request_state(&id, Some(&id), None).unwrap().state, "Pending");
        assert_eq!(request_state(&id, Some("other"), None), None, "an unknown or replaced request");

        let mut status = BackupStatus { last_request: Some(id.clone()), ..BackupStatus::default() };
        status.last_requested_backup = Some(RequestedBackup {
            request: id.clone(),
            id: "20261204T120001Z".into(),
            state: requested_states::RUNNING.into(),
            message: None,
        });
        let running = request_state(&id, Some(&id), Some(&status)).unwrap();
        assert_eq!((running.state.as_str(), running.backup_id.as_deref()), ("Running", Some("20261204T120001Z")));
        assert!(!is_finished(&running.state));

        // Acted on without a record of the backup (an operator of an earlier version): not pending any more.
        let acted = BackupStatus { last_request: Some(id.clone()), ..BackupStatus::default() };
        assert_eq!(request_state(&id, Some(&id), Some(&acted)), None);
    }

    #[test]
    fn only_kubernetes_names_reach_the_api_server() {
        assert!(check_target("obs", Some("web.a-1")).is_ok());
        assert!(check_target("obs", None).is_ok());
        for (ns, name, needle) in [
            ("obs", Some("../../etc"), "name \"../../etc\""),
            ("obs", Some("Web"), "RFC 1123"),
            ("a.b", None, "RFC 1123 label"),
            ("..", Some("web"), "namespace"),
            ("obs", Some(""), "name"),
        ] {
            let e = check_target(ns, name).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.message.contains(needle), "{needle:?} in {}", e.message);
        }
        assert!(check_target(&"n".repeat(64), None).is_err());
        assert!(check_target("obs", Some(&"n".repeat(254))).is_err());
    }

    #[test]
    fn a_backup_needs_backups_on_and_a_bucket() {
        let e = check_backup_possible("web", &json!({"backup": {"enabled": false}})).unwrap_err();
        assert_eq!(e.status, 409);
        assert!(e.message.starts_with("spec.backup.enabled"), "{e}");
        assert!(check_backup_possible("web", &json!({})).is_err());
        let e = check_backup_possible("web", &json!({"backup": {"enabled": true}})).unwrap_err();
        assert!(e.message.starts_with("spec.backup.bucket"), "{e}");
        check_backup_possible("web", &json!({"backup": {"enabled": true, "bucket": "b"}})).unwrap();
    }
}
