//! The admission step: what the validating webhook answers when a `PrometheusCluster` or `PrometheusClusterSet` is
//! created or updated. Pure: no I/O. The adapter reads the AdmissionReview, observes what this module asks for (the
//! cluster's StatefulSet, claims and StorageClass when an update changes `spec.storage`), and sends the answer.
//!
//! # Flow
//! 1. `DELETE` and `CONNECT` are always allowed (the webhook is registered for `CREATE` and `UPDATE` only; this is
//!    the safe answer should it be called for more).
//! 2. An update that leaves the spec as it was (labels, annotations, finalizers) is allowed: removing a finalizer
//!    or an annotation must never depend on the spec being valid.
//! 3. The spec is decoded; a field the operator's types cannot hold (`spec.replicas: 3000000000`) is refused with its
//!    path, where the operator itself would only be able to say so in status.
//! 4. The spec is validated with [`crate::validate`]: the seed's webhook messages word for word, and every other check.
//! 5. An update that changes `spec.storage` is checked with [`crate::storage::decide_storage`] against the storage
//!    that exists, so a change the operator would refuse (shrinking, another StorageClass, growing where the class
//!    does not allow expansion) is refused at `kubectl apply` time with the same reason.
//!
//! # Guarantees
//! - The webhook is UX, not the security boundary: the operator runs the same checks on every object it reconciles,
//!   so an object admitted while the webhook was down is still refused in its status.
//! - Every error is reported at once, as the API server reports schema errors: [`FieldErrors::to_status`] is the
//!   `Status` the webhook returns (code 422, reason `Invalid`, one cause per field).
//! - An update that does not touch `spec.storage` is never refused for storage, even when an earlier storage change
//!   is still refused in status: the user can always change everything else.

use k8s_openapi::api::admissionregistration::v1::{
    RuleWithOperations, ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::crd::{PrometheusClusterSetSpec, PrometheusClusterSpec, UnreadableField, read_spec};
use crate::storage::{ObservedStorage, decide_storage};
use crate::validate::{FieldError, FieldErrorKind, FieldErrors, validate_cluster, validate_cluster_set};

/// Where the webhook for PrometheusClusters is served (the seed's path).
pub const CLUSTER_PATH: &str = "/validate-observability-merlionos-org-v1-prometheuscluster";
/// Where the webhook for PrometheusClusterSets is served.
pub const CLUSTER_SET_PATH: &str = "/validate-observability-merlionos-org-v1-prometheusclusterset";
/// The names of the two webhooks (the seed's for PrometheusClusters).
pub const WEBHOOK_NAMES: [&str; 2] = ["vprometheuscluster.merlionos.org", "vprometheusclusterset.merlionos.org"];

/// The names of the two webhooks that record deletes in the audit trail.
pub const DELETE_WEBHOOK_NAMES: [&str; 2] = ["dprometheuscluster.merlionos.org", "dprometheusclusterset.merlionos.org"];

/// The ValidatingWebhookConfiguration `name` for the operator's webhook: one webhook per kind for `CREATE` and
/// `UPDATE` of the main resource (never `/status`), `failurePolicy: Fail`, a 10 s timeout; and one per kind for
/// `DELETE`, which only records who deleted what in the audit trail: `failurePolicy: Ignore` and a 5 s timeout, so
/// a delete never waits for, or fails with, the webhook. All with `sideEffects: None` (dry runs are not recorded).
/// `client` gives the client configuration for a path (a Service, or a URL); its `caBundle` is left to
/// cert-manager or to the operator. The chart renders the same configuration (the delete webhooks with the audit
/// trail on).
pub fn webhook_configuration(
    name: &str,
    client: impl Fn(&str) -> WebhookClientConfig,
) -> ValidatingWebhookConfiguration {
    let hook = |name: &str, path: &str, resource: &str, delete: bool| ValidatingWebhook {
        name: name.to_owned(),
        client_config: client(path),
        rules: Some(vec![RuleWithOperations {
            api_groups: Some(vec![crate::constants::GROUP.to_owned()]),
            api_versions: Some(vec!["v1".to_owned()]),
            operations: Some(if delete {
                vec!["DELETE".to_owned()]
            } else {
                vec!["CREATE".to_owned(), "UPDATE".to_owned()]
            }),
            resources: Some(vec![resource.to_owned()]),
            scope: Some("*".to_owned()),
        }]),
        failure_policy: Some(if delete { "Ignore" } else { "Fail" }.to_owned()),
        side_effects: "None".to_owned(),
        admission_review_versions: vec!["v1".to_owned()],
        timeout_seconds: Some(if delete { 5 } else { 10 }),
        ..ValidatingWebhook::default()
    };
    ValidatingWebhookConfiguration {
        metadata: ObjectMeta { name: Some(name.to_owned()), ..ObjectMeta::default() },
        webhooks: Some(vec![
            hook(WEBHOOK_NAMES[0], CLUSTER_PATH, "prometheusclusters", false),
            hook(WEBHOOK_NAMES[1], CLUSTER_SET_PATH, "prometheusclustersets", false),
            hook(DELETE_WEBHOOK_NAMES[0], CLUSTER_PATH, "prometheusclusters", true),
            hook(DELETE_WEBHOOK_NAMES[1], CLUSTER_SET_PATH, "prometheusclustersets", true),
        ]),
    }
}

/// The operation of an admission request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// The object is being created.
    Create,
    /// The object is being changed.
    Update,
    /// The object is being deleted.
    Delete,
    /// A connect request (never sent for these kinds).
    Connect,
}

/// One admission request for a `PrometheusCluster`.
#[derive(Clone, Debug)]
pub struct ClusterReview<'a> {
    /// What is being done.
    pub operation: Operation,
    /// The object's `metadata.name`, checked on create (it names every child, and cannot change afterwards); for a
    /// create with `generateName`, [`generated_name`] of the prefix. `None` skips the check.
    pub name: Option<&'a str>,
    /// The object's `spec` as sent (absent on delete).
    pub spec: Option<&'a Value>,
    /// The stored object's `spec` before an update.
    pub old_spec: Option<&'a Value>,
    /// The cluster's storage as it exists, observed when [`observes_storage`] says so; `None` when it was not
    /// observed (nothing is refused for storage then).
    pub storage: Option<ObservedStorage<'a>>,
}

/// A name as the API server completes `generate_name` (five more characters), for [`ClusterReview::name`]: a create
/// with `generateName` reaches admission before the name is generated.
pub fn generated_name(generate_name: &str) -> String {
    format!("{generate_name}x0000")
}

/// Whether the adapter must observe the cluster's storage (its StatefulSet, data claims and their StorageClass) to
/// answer: only for an update that changes `spec.storage`.
pub fn observes_storage(operation: Operation, spec: Option<&Value>, old_spec: Option<&Value>) -> bool {
    operation == Operation::Update && spec.and_then(|s| s.get("storage")) != old_spec.and_then(|s| s.get("storage"))
}

/// Decodes `spec`; a missing spec is the default one.
fn decode<T: DeserializeOwned + Default>(spec: Option<&Value>, kind: &str) -> Result<T, FieldErrors> {
    match spec {
        None => Ok(T::default()),
        Some(spec) => read_spec::<T>(spec.clone()).map_err(|e| FieldErrors::from(vec![unreadable(&e, kind)])),
    }
}

fn unreadable(e: &UnreadableField, kind: &str) -> FieldError {
    FieldError { field: e.field.clone(), kind: FieldErrorKind::Invalid, value: None, message: e.body(kind) }
}

/// Reviews a `PrometheusCluster` request; `Err` holds every reason to refuse it.
pub fn review_cluster(review: &ClusterReview<'_>) -> Result<(), FieldErrors> {
    if !reviews(review.operation, review.spec, review.old_spec) {
        return Ok(());
    }
    let spec: PrometheusClusterSpec = decode(review.spec, "prometheuscluster")?;
    let mut errors = Vec::new();
    if review.operation == Operation::Create
        && let Some(name) = review.name
        && let Err(e) = crate::validate::cluster_name(name)
    {
        errors.push(e);
    }
    errors.extend(validate_cluster(&spec).err().map(FieldErrors::into_vec).unwrap_or_default());
    if observes_storage(review.operation, review.spec, review.old_spec)
        && let Some(storage) = &review.storage
        && let Some(refused) = decide_storage(&spec.storage, storage).refused
    {
        errors.push(FieldError::forbidden(refused.field, refused.message));
    }
    if errors.is_empty() { Ok(()) } else { Err(errors.into()) }
}

/// Whether a request has a spec to review: a create, or an update that changes the spec.
fn reviews(operation: Operation, spec: Option<&Value>, old_spec: Option<&Value>) -> bool {
    match operation {
        Operation::Create => true,
        Operation::Update => spec != old_spec,
        Operation::Delete | Operation::Connect => false,
    }
}

/// Reviews a `PrometheusClusterSet` request (`spec` as sent, `old_spec` as stored before an update; `None` where
/// there is none); `Err` holds every reason to refuse it.
pub fn review_cluster_set(
    operation: Operation,
    spec: Option<&Value>,
    old_spec: Option<&Value>,
) -> Result<(), FieldErrors> {
    if !reviews(operation, spec, old_spec) {
        return Ok(());
    }
    let spec: PrometheusClusterSetSpec = decode(spec, "prometheusclusterset")?;
    validate_cluster_set(&spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ObservedClaim;
    use serde_json::json;

    fn review<'a>(operation: Operation, spec: &'a Value, old: Option<&'a Value>) -> ClusterReview<'a> {
        ClusterReview { operation, name: Some("demo"), spec: Some(spec), old_spec: old, storage: None }
    }

    #[test]
    fn a_name_the_children_cannot_carry_is_refused_at_create_with_the_spec_problems() {
        let spec = json!({"replicas": 0});
        let long = "a".repeat(crate::build::MAX_NAME_LEN + 1);
        let errors =
            review_cluster(&ClusterReview { name: Some(&long), ..review(Operation::Create, &spec, None) }).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["metadata.name", "spec.replicas"]);
        let good = json!({"replicas": 1});
        review_cluster(&ClusterReview { name: Some("1demo"), ..review(Operation::Create, &good, None) }).unwrap_err();
        // generateName: the prefix with the characters the API server adds.
        let prefix = "a".repeat(crate::build::MAX_NAME_LEN - 5);
        let generated = generated_name(&prefix);
        review_cluster(&ClusterReview { name: Some(&generated), ..review(Operation::Create, &good, None) }).unwrap();
        let generated = generated_name(&format!("{prefix}a"));
        review_cluster(&ClusterReview { name: Some(&generated), ..review(Operation::Create, &good, None) })
            .unwrap_err();
        // An update never changes the name, so an object admitted before the check is not blocked by it.
        let old = json!({"replicas": 2});
        review_cluster(&ClusterReview { name: Some(&long), ..review(Operation::Update, &good, Some(&old)) }).unwrap();
    }

    #[test]
    fn a_valid_spec_is_admitted_and_delete_is_never_refused() {
        let spec = json!({"replicas": 2});
        review_cluster(&review(Operation::Create, &spec, None)).unwrap();
        let bad = json!({"replicas": 0});
        review_cluster(&review(Operation::Delete, &bad, None)).unwrap();
        let delete =
            ClusterReview { operation: Operation::Delete, name: None, spec: None, old_spec: None, storage: None };
        review_cluster(&delete).unwrap();
        // A finalizer or label change on an object admitted while the webhook was down.
        review_cluster(&review(Operation::Update, &bad, Some(&bad))).unwrap();
        review_cluster(&review(Operation::Update, &bad, Some(&spec))).unwrap_err();
    }

    #[test]
    fn the_seed_messages_are_returned_with_their_fields_all_at_once() {
        let spec = json!({"replicas": 0, "remoteWrite": [{"url": ""}], "backup": {"enabled": true}});
        let errors = review_cluster(&review(Operation::Create, &spec, None)).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.replicas", "spec.backup.bucket", "spec.remoteWrite[0].url"]);
        let status = errors.to_status("PrometheusCluster", "demo");
        assert_eq!(status.code, Some(422));
        let message = status.message.unwrap();
        assert!(
            message.starts_with("PrometheusCluster.observability.merlionos.org \"demo\" is invalid: ["),
            "{message}"
        );
        assert!(message.contains("spec.replicas: Invalid value: 0: must be >= 1"), "{message}");
        assert!(message.contains("spec.backup.bucket: Required value: bucket is required when backup is enabled"));
        assert!(message.contains("spec.remoteWrite[0].url: Required value: url is required"), "{message}");
    }

    #[test]
    fn a_field_the_operator_cannot_read_is_refused_with_its_path() {
        let spec = json!({"replicas": 3_000_000_000_u64});
        let errors = review_cluster(&review(Operation::Create, &spec, None)).unwrap_err();
        let e = &errors.errors()[0];
        assert_eq!(e.field, "spec.replicas");
        assert!(
            e.to_string().contains("3000000000")
                && e.to_string().contains("kubectl explain prometheuscluster.spec.replicas"),
            "{e}"
        );
    }

    fn sts(size: &str) -> Value {
        json!({"spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"},
            "spec": {"storageClassName": "fast", "resources": {"requests": {"storage": size}}}}]}})
    }

    #[test]
    fn a_storage_change_the_operator_cannot_carry_out_is_refused() {
        let old = json!({"storage": {"size": "30Gi", "storageClassName": "fast"}});
        let new = json!({"storage": {"size": "20Gi", "storageClassName": "fast"}});
        let existing = sts("30Gi");
        let claims = [ObservedClaim {
            name: "data-demo-0".into(),
            storage_class_name: Some("fast".into()),
            requested: Some("30Gi".into()),
            capacity: Some("30Gi".into()),
        }];
        let storage = ObservedStorage { stateful_set: Some(&existing), claims: &claims, class_allows_expansion: None };
        assert!(observes_storage(Operation::Update, Some(&new), Some(&old)));
        let shrink = ClusterReview { storage: Some(storage.clone()), ..review(Operation::Update, &new, Some(&old)) };
        let errors = review_cluster(&shrink).unwrap_err();
        assert_eq!(errors.errors()[0].field, "spec.storage.size");
        assert!(errors.to_string().contains("Forbidden: cannot shrink the volumes from 30Gi to 20Gi"), "{errors}");

        let grow = json!({"storage": {"size": "40Gi", "storageClassName": "fast"}});
        let refused = review_cluster(&ClusterReview {
            storage: Some(storage.clone()),
            ..review(Operation::Update, &grow, Some(&old))
        })
        .unwrap_err();
        assert!(refused.to_string().contains("does not exist"), "the class is not there: {refused}");
        let allowed = ObservedStorage { class_allows_expansion: Some(true), ..storage.clone() };
        review_cluster(&ClusterReview { storage: Some(allowed), ..review(Operation::Update, &grow, Some(&old)) })
            .unwrap();

        // Other changes go through while the stored spec still asks for a refused size.
        let other = json!({"replicas": 3, "storage": {"size": "20Gi", "storageClassName": "fast"}});
        assert!(!observes_storage(Operation::Update, Some(&other), Some(&new)));
        review_cluster(&ClusterReview { storage: Some(storage), ..review(Operation::Update, &other, Some(&new)) })
            .unwrap();
    }

    #[test]
    fn cluster_sets_are_validated_and_decoded() {
        review_cluster_set(Operation::Create, Some(&json!({})), None).unwrap();
        let bad = json!({"clusterSelector": 5});
        let e = review_cluster_set(Operation::Create, Some(&bad), None).unwrap_err();
        assert_eq!(e.errors()[0].field, "spec.clusterSelector");
        review_cluster_set(Operation::Delete, Some(&bad), None).unwrap();
        review_cluster_set(Operation::Update, Some(&bad), Some(&bad)).unwrap();
    }
}
