//! Observing and changing the child objects of a PrometheusCluster. I/O: the Kubernetes API.
//!
//! Children are read by name (`<name>-config`, `<name>`), never by listing a whole kind, so memory and API cost do
//! not grow with unrelated objects. Only children whose controller ownerReference points at this cluster count as
//! observed: an object with the same name that belongs to someone else is reported, never taken over.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::Value;
use tsdb_operator_core::constants::{FIELD_MANAGER, labels};
use tsdb_operator_core::plan::{ChildKey, Step};

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
    /// An object with a child's name exists but is not owned by this cluster.
    #[error("{kind} {name} exists but is not owned by this PrometheusCluster; rename the cluster or remove the object")]
    NotOwned {
        /// Kind of the object.
        kind: String,
        /// Its name.
        name: String,
    },
    /// Listing pods failed.
    #[error("failed to list pods")]
    ListPods(#[source] kube::Error),
}

impl Error {
    /// Short category for metrics and event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Read { .. } => "ReadChild",
            Error::Apply { .. } => "ApplyChild",
            Error::Delete { .. } => "DeleteChild",
            Error::NotOwned { .. } => "NameConflict",
            Error::ListPods(_) => "ListPods",
        }
    }
}

/// The kinds of children a cluster may own, with their resource names.
fn child_kinds(cluster: &str, pdb_api_version: &str) -> Vec<(ApiResource, String)> {
    let ar = |group: &str, version: &str, kind: &str, plural: &str| {
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
    };
    let (pdb_group, pdb_version) = pdb_api_version.split_once('/').unwrap_or(("policy", "v1"));
    vec![
        (ar("", "v1", "ConfigMap", "configmaps"), format!("{cluster}-config")),
        (ar("", "v1", "Service", "services"), cluster.to_owned()),
        (ar("apps", "v1", "StatefulSet", "statefulsets"), cluster.to_owned()),
        (ar(pdb_group, pdb_version, "PodDisruptionBudget", "poddisruptionbudgets"), cluster.to_owned()),
    ]
}

fn resource_for(key: &ChildKey) -> ApiResource {
    let (group, version) = key.api_version.split_once('/').unwrap_or(("", key.api_version.as_str()));
    let plural = format!("{}s", key.kind.to_ascii_lowercase());
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, &key.kind), &plural)
}

/// Reads the children of cluster `name` (uid `uid`) in `namespace`. Objects owned by the cluster are returned as
/// JSON keyed by kind and name; an object with a child's name that the cluster does not own is an error.
pub async fn observe_children(
    client: &Client,
    namespace: &str,
    name: &str,
    uid: &str,
    pdb_api_version: &str,
) -> Result<BTreeMap<ChildKey, Value>, Error> {
    // The reads are independent: send them at once.
    let reads = child_kinds(name, pdb_api_version).into_iter().map(|(ar, child_name)| async move {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
        let obj = api.get_opt(&child_name).await.map_err(|source| Error::Read {
            kind: ar.kind.clone(),
            name: child_name.clone(),
            source,
        })?;
        let Some(obj) = obj else { return Ok(None) };
        let owned = obj.owner_references().iter().any(|o| o.uid == uid && o.controller == Some(true));
        if !owned {
            return Err(Error::NotOwned { kind: ar.kind.clone(), name: child_name });
        }
        let key = ChildKey { api_version: ar.api_version.clone(), kind: ar.kind.clone(), name: child_name };
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

/// Executes one step: server-side apply (forced, one field manager) or a background delete. A delete of an object
/// that is already gone succeeds.
pub async fn execute_step(client: &Client, namespace: &str, step: &Step) -> Result<(), Error> {
    match step {
        Step::Apply { key, manifest, .. } => {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource_for(key));
            api.patch(&key.name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(manifest))
                .await
                .map_err(|source| Error::Apply { key: key.clone(), source })?;
        }
        Step::Delete { key } => {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource_for(key));
            match api.delete(&key.name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => return Err(Error::Delete { key: key.clone(), source }),
            }
        }
    }
    Ok(())
}
