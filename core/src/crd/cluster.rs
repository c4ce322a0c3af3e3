//! The `PrometheusCluster` custom resource (namespaced), API-compatible with the Go tsdb-operator v1.0.0.
//!
//! Pure data: no I/O. Every seed field keeps its name, type and default; the fields added here are all
//! optional and default to the seed's behaviour or to a safe choice.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, PodSecurityContext, ResourceRequirements, SecretKeySelector, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Image used when `spec.image` is empty (seed default).
pub const DEFAULT_IMAGE: &str = "prom/prometheus:v2.55.1";
/// Retention used when `spec.retention` is empty (seed default).
pub const DEFAULT_RETENTION: &str = "15d";
/// Volume size used when `spec.storage.size` is empty or zero (seed default).
pub const DEFAULT_STORAGE_SIZE: &str = "20Gi";
/// Thanos sidecar image used when `spec.thanos.image` is empty (seed default).
pub const DEFAULT_THANOS_IMAGE: &str = "quay.io/thanos/thanos:v0.37.2";
/// Scrape and evaluation interval the seed hard-codes.
pub const DEFAULT_INTERVAL: &str = "30s";
/// Name of the external label that tells replicas apart.
pub const DEFAULT_REPLICA_LABEL: &str = "replica";

/// Upper bounds of the spec, in the CRD schema (the API server rejects what exceeds them) and in validation.
/// Each is far above any sane value; they exist so that nothing the API server accepts overflows the types the
/// operator reads the spec into, or makes it render objects the API server would refuse.
pub mod limits {
    /// `spec.replicas`: Prometheus replicas of one cluster (each holds all the data; shard across clusters).
    pub const MAX_REPLICAS: i32 = 100;
    /// `spec.backup.retention.keepLast`.
    pub const MAX_KEEP_LAST: i32 = 10_000;
    /// `spec.selfHealing.failureThreshold`.
    pub const MAX_FAILURE_THRESHOLD: i32 = 1_000;
    /// Durations, sizes and other short scalars written as strings (`15d`, `50GB`, `0 */6 * * *`).
    pub const MAX_SHORT: u32 = 64;
    /// Kubernetes object names (DNS-1123 subdomains).
    pub const MAX_NAME: u32 = 253;
    /// Image references.
    pub const MAX_IMAGE: u32 = 1_024;
    /// URLs and object-storage key prefixes.
    pub const MAX_URL: u32 = 2_048;
    /// Inline scrape configurations (the whole object must stay under etcd's 1.5 MiB request limit).
    pub const MAX_INLINE_CONFIG: u32 = 262_144;
    /// Label maps (`externalLabels`, `nodeSelector`).
    pub const MAX_LABELS: u32 = 64;
    /// Label values.
    pub const MAX_LABEL_VALUE: u32 = 1_024;
    /// Lists (`remoteWrite`, `tolerations`).
    pub const MAX_ITEMS: u32 = 64;
}

/// Desired state of a Prometheus cluster.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "observability.merlionos.org",
    version = "v1",
    kind = "PrometheusCluster",
    doc = "A Prometheus cluster: StatefulSet, headless Service, generated configuration and volumes, kept as specified.",
    plural = "prometheusclusters",
    singular = "prometheuscluster",
    namespaced,
    status = "PrometheusClusterStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusClusterSpec {
    /// `Server` (the default): a full Prometheus that stores, queries and evaluates rules. `Agent`: Prometheus in
    /// agent mode (`--agent`), which scrapes and forwards everything through `remoteWrite` (required) and keeps only
    /// a write-ahead log on its volume (size it small); it answers no queries, so backups, Thanos, restore and
    /// retention do not apply (validation refuses them).
    #[serde(default, skip_serializing_if = "Mode::is_server")]
    pub mode: Mode,

    /// Number of Prometheus replicas. With more than one, replicas are spread across nodes, protected by a
    /// PodDisruptionBudget and told apart by the replica external label.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = limits::MAX_REPLICAS))]
    pub replicas: i32,

    /// Prometheus container image. Prometheus 2.x (2.53 and later) and 3.x are supported.
    #[serde(default = "default_image")]
    #[schemars(length(max = limits::MAX_IMAGE))]
    pub image: String,

    /// How long to keep samples (`--storage.tsdb.retention.time`), for example `15d`.
    #[serde(default = "default_retention")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h|d|w|y)$"), length(max = limits::MAX_SHORT))]
    pub retention: String,

    /// Maximum bytes of storage blocks to keep (`--storage.tsdb.retention.size`), for example `50GB`.
    /// The oldest blocks go first. Empty means no size limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::MAX_SHORT))]
    pub retention_size: Option<String>,

    /// Persistent storage of each replica.
    #[serde(default)]
    pub storage: StorageSpec,

    /// Compute resources of the `prometheus` container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Scheduled snapshots to S3-compatible object storage.
    #[serde(default)]
    pub backup: BackupSpec,

    /// Remote write endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = limits::MAX_ITEMS))]
    pub remote_write: Vec<RemoteWriteSpec>,

    /// Thanos sidecar that uploads blocks and serves the Store API.
    #[serde(default)]
    pub thanos: ThanosSpec,

    /// Extra scrape configurations, inline or from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_scrape_configs: Option<AdditionalScrapeConfigs>,

    /// prometheus-operator's `ServiceMonitor`s (`monitoring.coreos.com/v1`) to scrape, by their labels, as in
    /// prometheus-operator: unset selects none, `{}` selects every one in the namespaces of
    /// `serviceMonitorNamespaceSelector`. Their endpoints become scrape jobs, hot-reloaded without a restart; what
    /// cannot be rendered is named in the `MonitorsAccepted` condition. Needs the ServiceMonitor CRD installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_monitor_selector: Option<LabelSelector>,

    /// Namespaces whose ServiceMonitors `serviceMonitorSelector` may choose, by their labels: unset means the
    /// cluster's own namespace, `{}` every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_monitor_namespace_selector: Option<LabelSelector>,

    /// prometheus-operator's `PodMonitor`s to scrape, by their labels; as `serviceMonitorSelector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_monitor_selector: Option<LabelSelector>,

    /// Namespaces whose PodMonitors `podMonitorSelector` may choose; as `serviceMonitorNamespaceSelector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_monitor_namespace_selector: Option<LabelSelector>,

    /// prometheus-operator's `PrometheusRule`s to load as rule files, by their labels; as `serviceMonitorSelector`.
    /// Each rule is checked as Prometheus checks it: one it would refuse is left out and named in the
    /// `RulesAccepted` condition, and the others still load. Needs the PrometheusRule CRD installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_selector: Option<LabelSelector>,

    /// Namespaces whose PrometheusRules `ruleSelector` may choose; as `serviceMonitorNamespaceSelector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_namespace_selector: Option<LabelSelector>,

    /// Recording and alerting rule groups written in the spec, in prometheus-operator's (and Prometheus')
    /// format: `name`, `interval`, `limit`, `query_offset` and `rules` of `record`/`alert`, `expr`, `for`,
    /// `keep_firing_for`, `labels`, `annotations`. Checked when the spec is admitted: a rule Prometheus would refuse
    /// refuses the spec, naming the rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = limits::MAX_ITEMS))]
    pub rule_groups: Vec<crate::monitors::RuleGroup>,

    /// Where the alerts go: Alertmanagers found through the endpoints of their Services, as prometheus-operator's
    /// `alerting.alertmanagers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerting: Option<AlertingSpec>,

    /// Stop all changes to this cluster's objects. The operator keeps reporting status and says that it is paused
    /// in the `Paused` condition.
    #[serde(default, skip_serializing_if = "is_false")]
    pub paused: bool,

    /// Interval between scrapes (`global.scrape_interval`).
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = r"^(([0-9]+)(ms|s|m|h|d|w|y))+$"), length(max = limits::MAX_SHORT))]
    pub scrape_interval: String,

    /// Interval between rule evaluations (`global.evaluation_interval`).
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = r"^(([0-9]+)(ms|s|m|h|d|w|y))+$"), length(max = limits::MAX_SHORT))]
    pub evaluation_interval: String,

    /// Labels added to every series and alert this cluster sends out (`global.external_labels`).
    /// The operator adds `cluster` and the replica label itself when replicas > 1 or Thanos is on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = limits::MAX_LABELS), inner(length(max = limits::MAX_LABEL_VALUE)))]
    pub external_labels: BTreeMap<String, String>,

    /// Name of the external label that holds the pod name, so that replicas can be told apart
    /// (by Thanos or a remote-write receiver deduplicating them). Default `replica`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::MAX_NAME))]
    pub replica_external_label_name: Option<String>,

    /// Node labels the pods must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = limits::MAX_LABELS), inner(length(max = limits::MAX_LABEL_VALUE)))]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = limits::MAX_ITEMS))]
    pub tolerations: Vec<Toleration>,

    /// Affinity of the pods. When unset and replicas > 1, the operator adds a soft anti-affinity that spreads
    /// replicas across nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// Pod security context, merged field by field over the defaults: pods run as the non-root `nobody` user
    /// (runAsUser and runAsGroup 65534, runAsNonRoot true) with `fsGroup` 65534 and the RuntimeDefault seccomp
    /// profile. Each field set here replaces its default; fields left unset keep theirs (set runAsNonRoot or
    /// seccompProfile explicitly to change them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,

    /// Priority class of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::MAX_NAME))]
    pub priority_class_name: Option<String>,

    /// ServiceAccount of the Prometheus pods (an existing one in the cluster's namespace), for workload identity
    /// such as EKS IRSA or GKE Workload Identity: without `backup.credentialsSecretRef`, the agent then uploads with
    /// the credentials the environment provides. Default: with `serviceMonitorSelector` or `podMonitorSelector`,
    /// `<name>-discovery`, which the operator creates; otherwise the namespace's `default` ServiceAccount. With a
    /// monitor selector the operator binds this ServiceAccount (its own or yours) to a Role that may list and watch
    /// Services, Endpoints and Pods in the cluster's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::MAX_NAME))]
    pub service_account_name: Option<String>,

    /// Self-healing of stuck replicas. The defaults never touch a replica that is starting or replaying its WAL.
    #[serde(default)]
    pub self_healing: SelfHealingSpec,

    /// Create this cluster from a backup. Only empty data directories are restored into; see `RestoreSpec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreSpec>,
}

/// `spec.alerting`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertingSpec {
    /// The Alertmanagers to send alerts to.
    #[schemars(length(max = limits::MAX_ITEMS))]
    pub alertmanagers: Vec<AlertmanagerEndpoints>,
}

/// The Alertmanagers behind one Service: Prometheus discovers the Service's endpoints (the cluster's discovery
/// ServiceAccount lists them) and sends alerts to each.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertmanagerEndpoints {
    /// Namespace of the Service (default: the cluster's). Another namespace needs the cluster's ServiceAccount
    /// bound to list endpoints there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::MAX_NAME))]
    pub namespace: Option<String>,
    /// Name of the Service.
    #[schemars(length(max = limits::MAX_NAME))]
    pub name: String,
    /// The Service port, by name or number.
    pub port: IntOrString,
    /// `http` (default) or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Path prefix of Alertmanager's API (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::MAX_SHORT))]
    pub path_prefix: Option<String>,
    /// Alertmanager API version, `v2` (default; Alertmanager 0.16 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Timeout of a push to Alertmanager (default `10s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(([0-9]+)(ms|s|m|h|d|w|y))+$"), length(max = limits::MAX_SHORT))]
    pub timeout: Option<String>,
}

impl PrometheusClusterSpec {
    /// Whether the cluster selects any of prometheus-operator's objects (monitors or PrometheusRules): its
    /// decisions then need them observed ([`crate::monitors::ObservedMonitors`]).
    pub fn selects_prometheus_operator_objects(&self) -> bool {
        self.selects_monitors() || self.rule_selector.is_some()
    }

    /// Whether the cluster loads rule files (`ruleSelector` or `spec.ruleGroups` set).
    pub fn has_rules(&self) -> bool {
        self.rule_selector.is_some() || !self.rule_groups.is_empty()
    }

    /// Whether the cluster's Prometheus uses Kubernetes service discovery (monitor selectors or Alertmanagers),
    /// and so needs a ServiceAccount that may list and watch endpoints.
    pub fn uses_kubernetes_sd(&self) -> bool {
        self.selects_monitors() || self.alerting.as_ref().is_some_and(|a| !a.alertmanagers.is_empty())
    }

    /// Whether the cluster scrapes prometheus-operator's monitors (`serviceMonitorSelector` or
    /// `podMonitorSelector` set): its Prometheus then needs the Kubernetes API (a ServiceAccount with discovery
    /// rights) and `scrape_config_files` (Prometheus 2.43 or later).
    pub fn selects_monitors(&self) -> bool {
        self.service_monitor_selector.is_some() || self.pod_monitor_selector.is_some()
    }
}

impl Default for PrometheusClusterSpec {
    /// The spec of an object that sets nothing: every field at its documented default.
    fn default() -> Self {
        Self {
            mode: Mode::Server,
            replicas: default_replicas(),
            image: default_image(),
            retention: default_retention(),
            retention_size: None,
            storage: StorageSpec::default(),
            resources: None,
            backup: BackupSpec::default(),
            remote_write: Vec::new(),
            thanos: ThanosSpec::default(),
            additional_scrape_configs: None,
            service_monitor_selector: None,
            service_monitor_namespace_selector: None,
            pod_monitor_selector: None,
            pod_monitor_namespace_selector: None,
            rule_selector: None,
            rule_namespace_selector: None,
            rule_groups: Vec::new(),
            alerting: None,
            paused: false,
            scrape_interval: default_interval(),
            evaluation_interval: default_interval(),
            external_labels: BTreeMap::new(),
            replica_external_label_name: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            affinity: None,
            security_context: None,
            priority_class_name: None,
            service_account_name: None,
            self_healing: SelfHealingSpec::default(),
            restore: None,
        }
    }
}

/// Persistent storage of each replica.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// StorageClass of the data volume claims; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::MAX_NAME))]
    pub storage_class_name: Option<String>,

    /// Size of each replica's data volume.
    #[serde(default = "default_storage_size")]
    pub size: Quantity,

    /// Agents only (`mode: Agent`): keep the write-ahead log on an emptyDir instead of a volume claim. Whatever is
    /// not yet sent is lost when a pod is deleted or moved (a restart of the container keeps it). Chosen when the
    /// cluster is created: switching between a claim and an emptyDir later is refused (recreate the cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirStorage>,
}

/// `spec.storage.emptyDir`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDirStorage {
    /// `Memory` for a tmpfs (counted against the pod's memory limit); the node's disk when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<String>,
    /// Most the emptyDir may hold before the pod is evicted (default `size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<Quantity>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self { storage_class_name: None, size: default_storage_size(), empty_dir: None }
    }
}

/// Scheduled snapshots to object storage (the seed's `S3BackupSpec`). Every field here takes effect per cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// Take scheduled backups.
    #[serde(default)]
    pub enabled: bool,

    /// Bucket the backups go to. Required when backups are enabled.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = limits::MAX_NAME))]
    pub bucket: String,

    /// Region of the bucket; the operator-wide `--s3-region` when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = limits::MAX_SHORT))]
    pub region: String,

    /// S3-compatible endpoint URL (MinIO, Ceph, ...); path-style addressing is used when set.
    /// The operator-wide `--s3-endpoint` when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = limits::MAX_URL))]
    pub endpoint: String,

    /// Key prefix of this cluster's backups inside the bucket.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = limits::MAX_URL))]
    pub prefix: String,

    /// When to take a backup: a 5-field cron expression (`0 */6 * * *`) or a descriptor (`@daily`, `@every 6h`),
    /// evaluated in UTC.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = limits::MAX_SHORT))]
    pub schedule: String,

    /// Secret with the keys `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` used for this cluster's bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<LocalObjectReference>,

    /// Which backups to keep. The newest complete backup is never removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<BackupRetentionSpec>,

    /// Pause scheduled backups without disabling them; on-demand backups still run.
    #[serde(default, skip_serializing_if = "is_false")]
    pub suspend: bool,

    /// Start scheduled backups up to this long after their slot (for example `10m`), by an amount derived from
    /// the cluster's UID, so that many clusters on one schedule do not start at once. Capped at half the time
    /// between two slots. No jitter when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::MAX_SHORT))]
    pub jitter: Option<String>,

    /// What to do when the operator was down at one or more scheduled times: `CatchUpOnce` (default) runs one
    /// backup as soon as it can, `Skip` waits for the next slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed_runs: Option<MissedRunPolicy>,
}

/// What to do about scheduled backups that were missed (the operator was down or no replica was ready).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum MissedRunPolicy {
    /// Run one backup for all missed slots together, as soon as possible.
    #[default]
    CatchUpOnce,
    /// Do not make up for missed slots; wait for the next one.
    Skip,
}

/// Restore of a new cluster from a backup. Read only when a replica's data directory is empty: an init
/// container (`tsdb-operator agent restore`) downloads and verifies the backup before Prometheus starts, and does
/// nothing when the directory already holds data, so a running cluster is never restored over.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSpec {
    /// The backup to restore (its id, such as `20260413T001900Z`); the newest complete backup when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::MAX_SHORT))]
    pub backup_id: Option<String>,

    /// Where the backup is.
    pub source: RestoreSource,
}

/// Where a backup to restore is: the backup settings of the cluster that made it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSource {
    /// Namespace of the cluster that made the backup; this cluster's namespace when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = limits::MAX_NAME))]
    pub namespace: String,

    /// Name of the cluster that made the backup.
    #[schemars(length(min = 1, max = limits::MAX_NAME))]
    pub cluster: String,

    /// Bucket of the backup.
    #[schemars(length(min = 1, max = limits::MAX_NAME))]
    pub bucket: String,

    /// Key prefix the source cluster used (`spec.backup.prefix`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = limits::MAX_URL))]
    pub prefix: String,

    /// S3-compatible endpoint URL; the operator-wide `--s3-endpoint` when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = limits::MAX_URL))]
    pub endpoint: String,

    /// Region of the bucket; the operator-wide `--s3-region` when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = limits::MAX_SHORT))]
    pub region: String,

    /// Secret with the keys `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` for the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<LocalObjectReference>,
}

/// Which backups to keep; both limits apply when both are set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRetentionSpec {
    /// Keep at most this many complete backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = limits::MAX_KEEP_LAST))]
    pub keep_last: Option<i32>,

    /// Remove complete backups older than this duration (for example `30d`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::MAX_SHORT))]
    pub max_age: Option<String>,
}

/// One remote write endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoteWriteSpec {
    /// URL of the endpoint to send samples to.
    #[schemars(length(min = 1, max = limits::MAX_URL))]
    pub url: String,

    /// Name of the queue, unique within the cluster.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = limits::MAX_NAME))]
    pub name: String,

    /// Secret with the keys `username` and `password` for HTTP basic auth. It is mounted into the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth_secret_ref: Option<LocalObjectReference>,

    /// Secret with the key `token` sent as a bearer token. It is mounted into the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_secret_ref: Option<LocalObjectReference>,

    /// HTTP headers sent with every request, such as a tenant header (`X-Scope-OrgID`). Query parameters the
    /// receiver needs (GreptimeDB's `?db=public`) go in `url`. Headers Prometheus sets itself (`Authorization`,
    /// `Content-Type`, `User-Agent`, ...) are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = limits::MAX_LABELS), inner(length(max = limits::MAX_URL)))]
    pub headers: BTreeMap<String, String>,

    /// Relabel rules applied to series before they are sent (`write_relabel_configs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = limits::MAX_ITEMS))]
    pub write_relabel_configs: Vec<crate::monitors::RelabelConfig>,

    /// Tuning of the sending queue (`queue_config`); Prometheus' defaults where unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_config: Option<QueueConfig>,

    /// Whether and how often metric metadata is sent (`metadata_config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_config: Option<MetadataConfig>,

    /// TLS towards the endpoint: a private authority and a client certificate from Secrets (mounted into the pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_config: Option<RemoteWriteTls>,

    /// OAuth 2.0 client credentials: Prometheus fetches a token from `tokenUrl` with the client ID and the client
    /// secret from a Secret key (mounted into the pods). Not together with basic auth or a bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<RemoteWriteOAuth2>,
}

/// `oauth2` of a remote write endpoint (the client credentials grant).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoteWriteOAuth2 {
    /// The client ID (written into the configuration: it is not a secret).
    #[schemars(length(min = 1, max = limits::MAX_NAME))]
    pub client_id: String,
    /// The Secret key holding the client secret (key default `clientSecret`).
    pub client_secret: TlsSecretKey,
    /// The token endpoint, an http or https URL.
    #[schemars(length(min = 1, max = limits::MAX_URL))]
    pub token_url: String,
    /// Scopes asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = limits::MAX_ITEMS), inner(length(max = limits::MAX_NAME)))]
    pub scopes: Vec<String>,
    /// Extra parameters of the token request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = limits::MAX_LABELS), inner(length(max = limits::MAX_URL)))]
    pub endpoint_params: BTreeMap<String, String>,
}

impl RemoteWriteOAuth2 {
    /// The Secret and key of the client secret.
    pub fn secret_key(&self) -> (&str, &str) {
        (
            &self.client_secret.name,
            self.client_secret.key.as_deref().filter(|k| !k.is_empty()).unwrap_or("clientSecret"),
        )
    }
}

/// `tls_config` of a remote write endpoint. Each certificate is a key of a Secret in the cluster's namespace,
/// laid out as cert-manager writes them by default (`ca.crt`, `tls.crt`, `tls.key`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoteWriteTls {
    /// The authority that signed the endpoint's certificate (key default `ca.crt`); the system's otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<TlsSecretKey>,
    /// A client certificate (key default `tls.crt`), for endpoints that ask for one; needs `keySecret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<TlsSecretKey>,
    /// The client certificate's key (key default `tls.key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret: Option<TlsSecretKey>,
    /// The name the endpoint's certificate must carry, when it differs from the URL's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::MAX_URL))]
    pub server_name: Option<String>,
    /// Skip verifying the endpoint's certificate. Only for tests: anyone on the path can then read the samples and
    /// the credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

/// A key of a Secret in the cluster's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSecretKey {
    /// The Secret's name.
    #[schemars(length(max = limits::MAX_NAME))]
    pub name: String,
    /// The key (default `ca.crt`, `tls.crt` or `tls.key` for TLS, `clientSecret` for OAuth 2.0, by field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::MAX_NAME))]
    pub key: Option<String>,
}

impl RemoteWriteTls {
    /// The Secret keys this TLS configuration reads, as (field, Secret, key), in `ca`, `cert`, `keySecret` order.
    pub fn secret_keys(&self) -> Vec<(&'static str, &str, &str)> {
        [("ca", &self.ca, "ca.crt"), ("cert", &self.cert, "tls.crt"), ("keySecret", &self.key_secret, "tls.key")]
            .into_iter()
            .filter_map(|(field, r, default)| {
                r.as_ref()
                    .map(|r| (field, r.name.as_str(), r.key.as_deref().filter(|k| !k.is_empty()).unwrap_or(default)))
            })
            .collect()
    }
}

/// `queue_config` of a remote write endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueConfig {
    /// Samples buffered per shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    /// Lowest number of shards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_shards: Option<u32>,
    /// Highest number of shards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_shards: Option<u32>,
    /// Samples per request at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_samples_per_send: Option<u32>,
    /// Longest wait before a partial batch is sent (`5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::MAX_SHORT))]
    pub batch_send_deadline: Option<String>,
    /// First retry delay (`30ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::MAX_SHORT))]
    pub min_backoff: Option<String>,
    /// Longest retry delay (`5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::MAX_SHORT))]
    pub max_backoff: Option<String>,
    /// Retry on HTTP 429 too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on_rate_limit: Option<bool>,
    /// Samples older than this are dropped instead of sent (`1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::MAX_SHORT))]
    pub sample_age_limit: Option<String>,
}

/// `metadata_config` of a remote write endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetadataConfig {
    /// Send metric metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<bool>,
    /// How often (`1m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::MAX_SHORT))]
    pub send_interval: Option<String>,
    /// Metadata entries per request at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_samples_per_send: Option<u32>,
}

/// What the cluster's Prometheus is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Mode {
    /// A full Prometheus: storage, queries, rules.
    #[default]
    Server,
    /// Prometheus in agent mode: scrape and remote write only.
    Agent,
}

impl Mode {
    /// Whether this is the default `Server`.
    pub fn is_server(&self) -> bool {
        *self == Mode::Server
    }
}

/// Thanos sidecar.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThanosSpec {
    /// Run the Thanos sidecar next to Prometheus.
    #[serde(default)]
    pub enabled: bool,

    /// Thanos image.
    #[serde(default = "default_thanos_image")]
    #[schemars(length(max = limits::MAX_IMAGE))]
    pub image: String,

    /// Secret with the key `objstore.yml` that configures block upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_storage_config_secret_ref: Option<LocalObjectReference>,
}

impl Default for ThanosSpec {
    fn default() -> Self {
        Self { enabled: false, image: default_thanos_image(), object_storage_config_secret_ref: None }
    }
}

/// Extra scrape configurations. Set exactly one of `inline` and `secretRef`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdditionalScrapeConfigs {
    /// A YAML list of `scrape_config` entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::MAX_INLINE_CONFIG))]
    pub inline: Option<String>,

    /// A key of a Secret holding a file with a top-level `scrape_configs:` list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeySelector>,
}

/// Self-healing of stuck replicas. A replica is replaced only after `failureThreshold` consecutive failed probes,
/// never while it is within its startup budget, at most once per `cooldown` per cluster, and never when that
/// would leave fewer than `replicas - 1` ready.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SelfHealingSpec {
    /// Replace replicas that stay unhealthy.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Time between probes of each replica.
    #[serde(default = "default_probe_interval")]
    #[schemars(length(max = limits::MAX_SHORT))]
    pub probe_interval: String,

    /// Consecutive failed probes before a replica counts as stuck.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1, max = limits::MAX_FAILURE_THRESHOLD))]
    pub failure_threshold: i32,

    /// How long a starting replica may take to become ready (WAL replay). Also the length of the
    /// pod's startup probe.
    #[serde(default = "default_startup_budget")]
    #[schemars(length(max = limits::MAX_SHORT))]
    pub startup_budget: String,

    /// Minimum time between two replacements in this cluster.
    #[serde(default = "default_cooldown")]
    #[schemars(length(max = limits::MAX_SHORT))]
    pub cooldown: String,
}

impl Default for SelfHealingSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            probe_interval: default_probe_interval(),
            failure_threshold: default_failure_threshold(),
            startup_budget: default_startup_budget(),
            cooldown: default_cooldown(),
        }
    }
}

/// Phase of a cluster, as the seed reports it, plus `Degraded`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub enum Phase {
    /// Objects are being created or replicas are not ready yet.
    Provisioning,
    /// All replicas are ready and match the spec.
    Active,
    /// The replica count is changing.
    Scaling,
    /// The cluster cannot run as specified (for example an invalid spec); see the conditions.
    Failed,
    /// The cluster runs, but something it needs is missing or broken; see the conditions.
    Degraded,
}

impl Phase {
    /// Every phase, in the order metrics list them.
    pub const ALL: [Phase; 5] = [Phase::Provisioning, Phase::Active, Phase::Scaling, Phase::Failed, Phase::Degraded];

    /// The phase as written in status and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Provisioning => "Provisioning",
            Phase::Active => "Active",
            Phase::Scaling => "Scaling",
            Phase::Failed => "Failed",
            Phase::Degraded => "Degraded",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Observed state of a Prometheus cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusClusterStatus {
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// Replicas that are ready.
    #[serde(default)]
    pub ready_replicas: i32,

    /// When the last backup attempt finished (seed field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_time: Option<Time>,

    /// When a replica was last replaced by self-healing (seed field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover_time: Option<Time>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Current conditions: Available, Progressing, Degraded, Paused, and BackupHealthy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Backups of this cluster, written by the operator's backup scheduler (field manager
    /// `tsdb-operator-backup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupStatus>,

    /// Namespaces other than the cluster's own where the operator put the discovery Role and RoleBinding
    /// `<namespace>.<name>-discovery` for the selected monitors; the operator removes them from a namespace no
    /// monitor needs any more, and from all of these when the cluster is deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub discovery_namespaces: Vec<String>,
}

/// What the backup scheduler knows about this cluster's backups.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// When the last scheduled backup was started (or a missed one skipped); the next slot is computed from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,

    /// When the last backup completed successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_backup_time: Option<Time>,

    /// Id of the last successful backup (for `tsdb-ctl restore --backup` and `spec.restore.backupId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_id: Option<String>,

    /// Size of the last successful backup in bytes (all the blocks it references).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_bytes: Option<i64>,

    /// Bytes the last successful backup uploaded; blocks already in the bucket are referenced, not uploaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_uploaded_bytes: Option<i64>,

    /// When the last backup failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed_backup_time: Option<Time>,

    /// Why the last failed backup failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_error: Option<String>,

    /// The last value of the `observability.merlionos.org/backup-now` annotation that was acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_request: Option<String>,

    /// The backup running now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<RunningBackup>,

    /// The backup started for the last on-demand request (the `backup-now` annotation or the REST API's
    /// `POST /api/clusters/:name/backup`), and how it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_requested_backup: Option<RequestedBackup>,
}

/// The backup started for an on-demand request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestedBackup {
    /// The request: the value of the `backup-now` annotation.
    #[schemars(length(max = 253))]
    pub request: String,
    /// Id of the backup started for it.
    #[schemars(length(max = 253))]
    pub id: String,
    /// `Running`, `Succeeded` or `Failed`.
    #[schemars(length(max = 16))]
    pub state: String,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub message: Option<String>,
}

/// A backup in progress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunningBackup {
    /// Id of the backup.
    pub id: String,
    /// The pod whose agent takes it.
    pub pod: String,
    /// When it started.
    pub start_time: Time,
}

fn default_replicas() -> i32 {
    1
}
fn default_image() -> String {
    DEFAULT_IMAGE.to_owned()
}
fn default_retention() -> String {
    DEFAULT_RETENTION.to_owned()
}
fn default_storage_size() -> Quantity {
    Quantity(DEFAULT_STORAGE_SIZE.to_owned())
}
fn default_thanos_image() -> String {
    DEFAULT_THANOS_IMAGE.to_owned()
}
fn default_interval() -> String {
    DEFAULT_INTERVAL.to_owned()
}
fn default_true() -> bool {
    true
}
fn default_probe_interval() -> String {
    "30s".to_owned()
}
fn default_failure_threshold() -> i32 {
    3
}
fn default_startup_budget() -> String {
    "15m".to_owned()
}
fn default_cooldown() -> String {
    "5m".to_owned()
}
#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_spec_is_what_an_empty_spec_decodes_to() {
        let decoded: PrometheusClusterSpec = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(decoded, PrometheusClusterSpec::default());
    }
}
