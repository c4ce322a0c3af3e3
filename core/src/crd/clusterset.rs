//! The cluster-scoped `PrometheusClusterSet`: groups PrometheusClusters across namespaces by label and can overlay
//! a backup template on its members. Pure data: no I/O.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cluster::{BackupSpec, Phase};

/// A group of PrometheusClusters selected by labels, across namespaces.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "observability.merlionos.org",
    version = "v1",
    kind = "PrometheusClusterSet",
    doc = "A group of PrometheusClusters across namespaces, selected by labels, with an optional backup template.",
    plural = "prometheusclustersets",
    singular = "prometheusclusterset",
    status = "PrometheusClusterSetStatus",
    printcolumn = r#"{"name":"Members","type":"integer","jsonPath":".status.memberCount"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusClusterSetSpec {
    /// Labels of the member PrometheusClusters. Unset or empty selects every PrometheusCluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_selector: Option<LabelSelector>,

    /// Labels of the namespaces members may live in. Unset or empty selects every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// Backup settings given to members that have backups disabled and have not opted out with the annotation
    /// `observability.merlionos.org/clusterset-opt-out: "true"`. A member's own enabled backup always wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_template: Option<BackupSpec>,
}

/// One member of a set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSetMember {
    /// Namespace of the member.
    pub namespace: String,
    /// Name of the member.
    pub name: String,
    /// Phase of the member; empty when it has none yet.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
}

/// Observed state of a set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusClusterSetStatus {
    /// Number of members.
    #[serde(default)]
    pub member_count: i32,

    /// Members per phase; members without a phase are not counted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub phase_count: BTreeMap<String, i32>,

    /// Members that are Active.
    #[serde(default)]
    pub active_count: i32,

    /// Members that are not Active, as `namespace/name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_active: Vec<String>,

    /// Members sorted by namespace, then name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<ClusterSetMember>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Current conditions (Ready).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

impl ClusterSetMember {
    /// Whether the member reports the Active phase.
    pub fn is_active(&self) -> bool {
        self.phase == Phase::Active.as_str()
    }
}
