//! The fields of prometheus-operator's `ServiceMonitor` this module renders. Every field it does not know is kept
//! in an `unsupported` map, so that a monitor using one is refused with the field's name rather than scraped
//! without it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// `monitoring.coreos.com/v1` `ServiceMonitor`: which Services' endpoints to scrape, and how.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(group = "monitoring.coreos.com", version = "v1", kind = "ServiceMonitor", namespaced, schema = "disabled")]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    /// Label of the Service whose value becomes the `job` label (else the Service's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_label: Option<String>,
    /// Service labels copied onto the targets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_labels: Vec<String>,
    /// Pod labels copied onto the targets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_target_labels: Vec<String>,
    /// One scrape job per endpoint.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// The Services to scrape.
    #[serde(default)]
    pub selector: LabelSelector,
    /// The namespaces of those Services (the monitor's own by default).
    #[serde(default)]
    pub namespace_selector: NamespaceSelector,
    /// Limits and options of every job (`sampleLimit`, ..., `attachMetadata`).
    #[serde(flatten)]
    pub options: JobOptions,
    /// Fields this version does not render; a monitor with any of them is refused.
    #[serde(flatten)]
    pub unsupported: BTreeMap<String, serde_json::Value>,
}

/// `monitoring.coreos.com/v1` `PodMonitor`: which pods to scrape directly, and how. Its endpoints take the same
/// fields as a ServiceMonitor's (prometheus-operator's CRD prunes those a PodMonitor does not have).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(group = "monitoring.coreos.com", version = "v1", kind = "PodMonitor", namespaced, schema = "disabled")]
#[serde(rename_all = "camelCase")]
pub struct PodMonitorSpec {
    /// Label of the pod whose value becomes the `job` label (else `<namespace>/<name>` of the monitor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_label: Option<String>,
    /// Pod labels copied onto the targets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_target_labels: Vec<String>,
    /// One scrape job per endpoint.
    #[serde(default)]
    pub pod_metrics_endpoints: Vec<Endpoint>,
    /// The pods to scrape.
    #[serde(default)]
    pub selector: LabelSelector,
    /// The namespaces of those pods (the monitor's own by default).
    #[serde(default)]
    pub namespace_selector: NamespaceSelector,
    /// Limits and options of every job (`sampleLimit`, ..., `attachMetadata`).
    #[serde(flatten)]
    pub options: JobOptions,
    /// Fields this version does not render; a monitor with any of them is refused.
    #[serde(flatten)]
    pub unsupported: BTreeMap<String, serde_json::Value>,
}

/// The limits and options a monitor gives each of its jobs (flattened into its spec). Declared before the spec's
/// `unsupported` map, which receives only what no field took.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobOptions {
    /// `sample_limit` of each job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_limit: Option<u64>,
    /// `target_limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_limit: Option<u64>,
    /// `label_limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_limit: Option<u64>,
    /// `label_name_length_limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_name_length_limit: Option<u64>,
    /// `label_value_length_limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_value_length_limit: Option<u64>,
    /// `keep_dropped_targets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_dropped_targets: Option<u64>,
    /// `body_size_limit` (e.g. `10MB`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_size_limit: Option<String>,
    /// `scrape_protocols`, in order of preference.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scrape_protocols: Vec<String>,
    /// Node metadata on the targets (`attach_metadata.node`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach_metadata: Option<AttachMetadata>,
}

/// Where the selected Services live.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceSelector {
    /// Every namespace.
    #[serde(default)]
    pub any: bool,
    /// These namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_names: Vec<String>,
}

/// Metadata attached to the targets.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AttachMetadata {
    /// The node's labels (`__meta_kubernetes_node_*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<bool>,
}

/// One scraped port of the selected Services.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Name of the Service port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// Name or number of the pod's container port (when `port` is not set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    /// `metrics_path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `scheme`: `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// URL parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<BTreeMap<String, Vec<String>>>,
    /// `scrape_interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// `scrape_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrape_timeout: Option<String>,
    /// `honor_labels`.
    #[serde(default)]
    pub honor_labels: bool,
    /// `honor_timestamps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub honor_timestamps: Option<bool>,
    /// `track_timestamps_staleness`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_timestamps_staleness: Option<bool>,
    /// Relabelings of the targets, after the generated ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relabelings: Vec<RelabelConfig>,
    /// `metric_relabel_configs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metric_relabelings: Vec<RelabelConfig>,
    /// `follow_redirects`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_redirects: Option<bool>,
    /// `enable_http2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_http2: Option<bool>,
    /// Drop targets whose pod has finished (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_running: Option<bool>,
    /// `proxy_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<String>,
    /// A token file inside the Prometheus pod (deprecated by prometheus-operator, still honoured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<String>,
    /// TLS towards the target: files inside the Prometheus pod, or keys of Secrets of the monitor's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_config: Option<TlsConfig>,
    /// Basic auth with a username and a password from Secrets of the monitor's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    /// A bearer token from a Secret of the monitor's namespace (deprecated by prometheus-operator for
    /// `authorization`, still honoured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_secret: Option<SecretKeyRef>,
    /// The `Authorization` header: a type (default `Bearer`) and credentials from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<SafeAuthorization>,
    /// Fields this version does not render; an endpoint with any of them is refused.
    #[serde(flatten)]
    pub unsupported: BTreeMap<String, serde_json::Value>,
}

/// A key of a Secret in the monitor's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[serde(default)]
    pub name: String,
    /// The key.
    #[serde(default)]
    pub key: String,
    /// Whether the Secret or key may be missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// `basicAuth` of an endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuth {
    /// The username's Secret key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<SecretKeyRef>,
    /// The password's Secret key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretKeyRef>,
}

/// `authorization` of an endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SafeAuthorization {
    /// The scheme (default `Bearer`; `Basic` is refused, as Prometheus refuses it: use `basicAuth`).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// The credentials' Secret key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<SecretKeyRef>,
}

/// A Secret or ConfigMap key holding a certificate (`tlsConfig.ca`, `tlsConfig.cert`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretOrConfigMap {
    /// The Secret key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretKeyRef>,
    /// A ConfigMap key: not supported yet (refused with the field's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<serde_json::Value>,
}

/// TLS settings of an endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsConfig {
    /// `ca_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// `cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    /// `key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// `server_name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// `insecure_skip_verify`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    /// The authority's certificate from a Secret (instead of `caFile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<SecretOrConfigMap>,
    /// The client certificate from a Secret (instead of `certFile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<SecretOrConfigMap>,
    /// The client key from a Secret (instead of `keyFile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret: Option<SecretKeyRef>,
    /// Fields this version does not render (TLS versions, ...).
    #[serde(flatten)]
    pub unsupported: BTreeMap<String, serde_json::Value>,
}

/// A Prometheus relabel rule as prometheus-operator spells it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RelabelConfig {
    /// `source_labels`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_labels: Vec<String>,
    /// `separator`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub separator: Option<String>,
    /// `target_label`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_label: Option<String>,
    /// `regex`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// `modulus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modulus: Option<u64>,
    /// `replacement`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
    /// `action`, in any case (`Replace` or `replace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}
