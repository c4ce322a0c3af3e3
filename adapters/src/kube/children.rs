//! Observing and changing the child objects of a PrometheusCluster. I/O: the Kubernetes API.
//!
//! Children are read by name (`<name>-config`, `<name>`), never by listing a whole kind, so memory and API cost do
//! not grow with unrelated objects. Only children whose controller ownerReference points at this cluster count as
//! observed: an object with the same name that belongs to someone else is reported, never taken over.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PropagationPolicy};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::Value;
use tsdb_operator_core::build::BuildSettings;
use tsdb_operator_core::constants::{FIELD_MANAGER, labels};
use tsdb_operator_core::plan::{ChildKey, Step};
use tsdb_operator_core::storage::{ObservedClaim, is_data_claim_of};

/// Why talking to the API server about children failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A read failed.
    #[error("failed to read {kind} {name}")]
    Read {
        /// Kind of the child.
        kind: String,
        /// Name of the child.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// An apply failed.
    #[error("failed to apply {key}")]
    Apply {
        /// The child.
        key: ChildKey,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A delete failed.
    #[error("failed to delete {key}")]
    Delete {
        /// The child.
        key: ChildKey,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Listing pods failed.
    #[error("failed to list pods")]
    ListPods(#[source] kube::Error),
    /// Listing the data volume claims failed.
    #[error("failed to list the data volume claims")]
    ListClaims(#[source] kube::Error),
    /// Reading the claims' StorageClass failed.
    #[error("failed to read StorageClass {name}")]
    ReadStorageClass {
        /// The class.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// Short category for metrics and event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Read { .. } => "ReadChild",
            Error::Apply { .. } => "ApplyChild",
            Error::Delete { .. } => "DeleteChild",
            Error::ListPods(_) => "ListPods",
            Error::ListClaims(_) => "ListClaims",
            Error::ReadStorageClass { .. } => "ReadStorageClass",
        }
    }
}

fn resource_for(key: &ChildKey) -> ApiResource {
    let (group, version) = key.api_version.split_once('/').unwrap_or(("", key.api_version.as_str()));
    let plural = format!("{}s", key.kind.to_ascii_lowercase());
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, &key.kind), &plural)
}

/// Reads the objects that carry the names of cluster `name`'s children in `namespace`
/// ([`decide::children_to_read`](tsdb_operator_core::decide::children_to_read)) and the objects of `elsewhere`
/// (keys in other namespaces, [`decide::reads_with_monitors`](tsdb_operator_core::decide::reads_with_monitors)),
/// as JSON keyed by kind and name, owned by the cluster or not (the core judges ownership).
pub async fn observe_children(
    client: &Client,
    namespace: &str,
    name: &str,
    settings: &BuildSettings,
    elsewhere: &[ChildKey],
) -> Result<BTreeMap<ChildKey, Value>, Error> {
    // The reads are independent: send them at once.
    let keys =
        tsdb_operator_core::decide::children_to_read(name, settings).into_iter().chain(elsewhere.iter().cloned());
    let reads = keys.map(|key| async move {
        let ar = resource_for(&key);
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), key.namespace.as_deref().unwrap_or(namespace), &ar);
        let obj = api.get_opt(&key.name).await.map_err(|source| Error::Read {
            kind: ar.kind.clone(),
            name: key.name.clone(),
            source,
        })?;
        let Some(obj) = obj else { return Ok(None) };
        let mut value = serde_json::to_value(&obj).unwrap_or(Value::Null);
        if let Some(map) = value.as_object_mut() {
            map.insert("apiVersion".into(), Value::String(ar.api_version.clone()));
            map.insert("kind".into(), Value::String(ar.kind.clone()));
        }
        Ok(Some((key, value)))
    });
    let found = futures::future::try_join_all(reads).await?;
    Ok(found.into_iter().flatten().collect::<BTreeMap<_, _>>())
}

/// Lists the pods of cluster `name` by its instance label.
pub async fn observe_pods(client: &Client, namespace: &str, name: &str) -> Result<Vec<Pod>, Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let lp =
        ListParams::default().labels(&format!("{}={name},{}={}", labels::INSTANCE, labels::NAME, labels::NAME_VALUE));
    let list = api.list(&lp).await.map_err(Error::ListPods)?;
    Ok(list.items)
}

/// Lists the data volume claims of cluster `name` (`data-<name>-<ordinal>`, labelled like its pods).
pub async fn observe_claims(client: &Client, namespace: &str, name: &str) -> Result<Vec<ObservedClaim>, Error> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let lp =
        ListParams::default().labels(&format!("{}={name},{}={}", labels::INSTANCE, labels::NAME, labels::NAME_VALUE));
    let list = api.list(&lp).await.map_err(Error::ListClaims)?;
    let storage = |m: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>| {
        m.and_then(|m| m.get("storage")).map(|q| q.0.clone())
    };
    Ok(list
        .items
        .into_iter()
        .filter(|c| is_data_claim_of(name, &c.name_any()))
        .map(|c| {
            let spec = c.spec.as_ref();
            ObservedClaim {
                name: c.name_any(),
                storage_class_name: spec.and_then(|s| s.storage_class_name.clone()),
                requested: storage(spec.and_then(|s| s.resources.as_ref()).and_then(|r| r.requests.as_ref())),
                capacity: storage(c.status.as_ref().and_then(|s| s.capacity.as_ref())),
            }
        })
        .collect())
}

/// `allowVolumeExpansion` of StorageClass `name`; `None` when the class does not exist.
pub async fn observe_class_expansion(client: &Client, name: &str) -> Result<Option<bool>, Error> {
    let api: Api<StorageClass> = Api::all(client.clone());
    let class = api.get_opt(name).await.map_err(|source| Error::ReadStorageClass { name: name.to_owned(), source })?;
    Ok(class.map(|c| c.allow_volume_expansion == Some(true)))
}

/// Executes one step in `namespace` (or the namespace its key names): server-side apply (forced, one field
/// manager) or a background delete. A delete of an object that is already gone succeeds.
pub async fn execute_step(client: &Client, namespace: &str, step: &Step) -> Result<(), Error> {
    let namespace = step.key().namespace.as_deref().unwrap_or(namespace);
    match step {
        Step::Apply { key, manifest, .. } => {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource_for(key));
            api.patch(&key.name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(manifest))
                .await
                .map_err(|source| Error::Apply { key: key.clone(), source })?;
        }
        Step::Delete { key } | Step::Orphan { key } => {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource_for(key));
            let params = if matches!(step, Step::Orphan { .. }) {
                DeleteParams { propagation_policy: Some(PropagationPolicy::Orphan), ..DeleteParams::default() }
            } else {
                DeleteParams::background()
            };
            match api.delete(&key.name, &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => return Err(Error::Delete { key: key.clone(), source }),
            }
        }
        Step::Resize { key, size } => {
            // A merge patch of the request only: the claim stays the StatefulSet controller's object.
            let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
            let patch = serde_json::json!({"spec": {"resources": {"requests": {"storage": size}}}});
            api.patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|source| Error::Apply { key: key.clone(), source })?;
        }
    }
    Ok(())
}
