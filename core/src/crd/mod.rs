//! Custom resource types (API group `observability.merlionos.org/v1`) and CRD generation. Pure data: no I/O.

pub mod cluster;
pub mod clusterset;

pub use cluster::{
    AdditionalScrapeConfigs, BackupRetentionSpec, BackupSpec, BackupStatus, MetadataConfig, MissedRunPolicy, Mode,
    Phase, PrometheusCluster, PrometheusClusterSpec, PrometheusClusterStatus, QueueConfig, RemoteWriteSpec,
    RequestedBackup, RestoreSource, RestoreSpec, RunningBackup, SelfHealingSpec, StorageSpec, ThanosSpec,
};
pub use clusterset::{ClusterSetMember, PrometheusClusterSet, PrometheusClusterSetSpec, PrometheusClusterSetStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Both CRDs, in the order they are installed.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![PrometheusCluster::crd(), PrometheusClusterSet::crd()]
}

/// Both CRDs as one multi-document YAML stream, as `tsdb-operator crd` prints it and `deploy/crds/` holds it.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

/// A spec field the operator's types cannot hold (an integer out of range, a value of the wrong shape).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct UnreadableField {
    /// Path of the field, such as `spec.replicas`.
    pub field: String,
    /// The decoder's reason, such as ``invalid value: integer `3000000000`, expected i32``.
    pub reason: String,
}

impl UnreadableField {
    /// The error as the API server words a field error (`spec.replicas: Invalid value: <reason>: <fix>`), for an
    /// object of `kind` (lowercase, as `kubectl explain` takes it).
    pub fn message(&self, kind: &str) -> String {
        format!("{}: Invalid value: {}", self.field, self.body(kind))
    }

    /// What is wrong and what to do, without the field path.
    pub fn body(&self, kind: &str) -> String {
        format!(
            "{}: the operator cannot read this field; set it to a value within the bounds that `kubectl explain \
             {kind}.{}` documents",
            self.reason, self.field
        )
    }
}

/// Decodes a custom resource's `spec` (JSON as the API server stores it), naming the first field that does not fit.
pub fn read_spec<T: serde::de::DeserializeOwned>(spec: serde_json::Value) -> Result<T, UnreadableField> {
    serde_path_to_error::deserialize::<_, T>(spec).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() { "spec".to_owned() } else { format!("spec.{path}") };
        UnreadableField { field, reason: e.into_inner().to_string() }
    })
}
