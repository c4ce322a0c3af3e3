//! Custom resource types (API group `observability.merlionos.org/v1`) and CRD generation. Pure data: no I/O.

pub mod cluster;
pub mod clusterset;

pub use cluster::{
    AdditionalScrapeConfigs, BackupRetentionSpec, BackupSpec, BackupStatus, MissedRunPolicy, Phase, PrometheusCluster,
    PrometheusClusterSpec, PrometheusClusterStatus, RemoteWriteSpec, RestoreSource, RestoreSpec, RunningBackup,
    SelfHealingSpec, StorageSpec, ThanosSpec,
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
