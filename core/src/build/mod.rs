//! The **build** step of the pipeline: renders the Kubernetes objects a `PrometheusCluster` should own.
//!
//! ```text
//!   validate ──► build ──► (ConfigMap, Service, StatefulSet, PodDisruptionBudget?) ──► plan ──► adapters apply
//! ```
//!
//! Pure: no I/O, no clock, no environment, no client. Builders borrow the cluster and never mutate it; every map
//! they render is a `BTreeMap`, so the same input always gives byte-identical output (snapshots never flap).
//! One builder per rendered object: [`config`], [`service`], [`statefulset`], [`pdb`]; [`version`] reads the
//! Prometheus version from the image tag to pick the right flags.
//!
//! # Errors
//! The builders take a [`ValidCluster`], which only validation makes ([`crate::validate::cluster`]), so a spec
//! problem is found there, once, with the field and the fix; rendering fails only if serializing does. It never
//! panics, whatever the spec.

pub mod backup;
pub mod config;
pub mod discovery;
pub mod pdb;
pub mod service;
pub mod statefulset;
pub mod version;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

use crate::constants::labels;
use crate::crd::PrometheusCluster;
use crate::validate::{ScrapeConfigsSource, ValidCluster};

pub use version::PrometheusVersion;

/// `type Result<T> = Result<T, build::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Agent image used when the operator is not told otherwise: this project's image at the same version (the chart
/// sets the operator's own image through `$TSDB_AGENT_IMAGE`). Never the Go tsdb-operator's image, which has no
/// `agent` command.
pub const DEFAULT_AGENT_IMAGE: &str = concat!("ghcr.io/merlionos/tsdb-operator-rs:", env!("CARGO_PKG_VERSION"));

/// Longest cluster name: pods carry the label `controller-revision-hash: <name>-<10 characters>`, and label values
/// are at most 63 characters.
pub const MAX_NAME_LEN: usize = 52;

/// Which PodDisruptionBudget API the server serves. The operator picks it from discovery: `policy/v1` exists
/// since Kubernetes 1.21, older servers (the 1.20 test server) only have `policy/v1beta1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PdbApi {
    /// `policy/v1`.
    #[default]
    V1,
    /// `policy/v1beta1` (same spec fields as rendered here).
    V1beta1,
}

impl PdbApi {
    /// The `apiVersion` of a PodDisruptionBudget in this API.
    pub fn api_version(self) -> &'static str {
        match self {
            PdbApi::V1 => "policy/v1",
            PdbApi::V1beta1 => "policy/v1beta1",
        }
    }
}

/// Operator-wide settings that shape the rendered objects (not part of any cluster's spec).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSettings {
    /// Image of the `agent` sidecar (the operator binary run as `tsdb-operator agent`).
    pub agent_image: String,
    /// The PodDisruptionBudget API to render for.
    pub pdb_api: PdbApi,
    /// Operator-wide backup defaults (used by the restore init container).
    pub backup: crate::backup::protocol::BackupDefaults,
}

impl Default for BuildSettings {
    fn default() -> Self {
        Self {
            agent_image: DEFAULT_AGENT_IMAGE.to_owned(),
            pdb_api: PdbApi::V1,
            backup: crate::backup::protocol::BackupDefaults::default(),
        }
    }
}

/// Everything one `PrometheusCluster` should own, as typed objects.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredObjects {
    /// `<name>-config`: `prometheus.yml` and, with inline scrape configs, `additional-scrape-configs.yml`.
    pub config_map: ConfigMap,
    /// `<name>`: the headless governing Service.
    pub service: Service,
    /// `<name>`: the Prometheus pods.
    pub stateful_set: StatefulSet,
    /// `<name>`: only when there is more than one replica.
    pub pod_disruption_budget: Option<PodDisruptionBudget>,
    /// `<name>-discovery`: only when the cluster selects prometheus-operator's monitors.
    pub discovery: Option<discovery::DiscoveryObjects>,
}

impl DesiredObjects {
    /// The objects in apply order: ConfigMap, the discovery ServiceAccount and Role, Service, the discovery
    /// RoleBinding (after its Role), PodDisruptionBudget, StatefulSet (pods need their ServiceAccount to exist).
    pub fn objects(&self, settings: &BuildSettings) -> Vec<DesiredObject<'_>> {
        let mut out = vec![DesiredObject::ConfigMap(&self.config_map)];
        if let Some(d) = &self.discovery {
            if let Some(sa) = &d.service_account {
                out.push(DesiredObject::ServiceAccount(sa));
            }
            out.push(DesiredObject::Role(&d.role));
            out.extend(d.elsewhere.iter().map(|(role, _)| DesiredObject::Role(role)));
        }
        out.push(DesiredObject::Service(&self.service));
        if let Some(d) = &self.discovery {
            out.push(DesiredObject::RoleBinding(&d.role_binding));
            out.extend(d.elsewhere.iter().map(|(_, binding)| DesiredObject::RoleBinding(binding)));
        }
        if let Some(pdb) = &self.pod_disruption_budget {
            out.push(DesiredObject::PodDisruptionBudget(pdb, settings.pdb_api));
        }
        out.push(DesiredObject::StatefulSet(&self.stateful_set));
        out
    }

    /// The objects as the JSON manifests the adapter applies, in apply order (see [`objects`](Self::objects)),
    /// each with `apiVersion` and `kind`. The PodDisruptionBudget gets the `apiVersion` of `settings.pdb_api`;
    /// its spec is the same in both versions.
    pub fn manifests(&self, settings: &BuildSettings) -> Result<Vec<serde_json::Value>> {
        self.objects(settings).iter().map(DesiredObject::to_manifest).collect()
    }
}

/// One object of [`DesiredObjects`], borrowed. Serializes as the typed object (a PodDisruptionBudget with the
/// `policy/v1` `apiVersion` of its type; [`to_manifest`](Self::to_manifest) and
/// [`api_version`](Self::api_version) give the one it is applied under).
#[derive(Debug, Clone, Copy)]
pub enum DesiredObject<'a> {
    /// The ConfigMap.
    ConfigMap(&'a ConfigMap),
    /// The Service.
    Service(&'a Service),
    /// The StatefulSet.
    StatefulSet(&'a StatefulSet),
    /// The PodDisruptionBudget and the API it is applied under.
    PodDisruptionBudget(&'a PodDisruptionBudget, PdbApi),
    /// The discovery ServiceAccount.
    ServiceAccount(&'a ServiceAccount),
    /// The discovery Role.
    Role(&'a Role),
    /// The discovery RoleBinding.
    RoleBinding(&'a RoleBinding),
}

impl DesiredObject<'_> {
    /// The `apiVersion` the object is applied under.
    pub fn api_version(&self) -> &'static str {
        match self {
            DesiredObject::ConfigMap(_) => <ConfigMap as k8s_openapi::Resource>::API_VERSION,
            DesiredObject::Service(_) => <Service as k8s_openapi::Resource>::API_VERSION,
            DesiredObject::StatefulSet(_) => <StatefulSet as k8s_openapi::Resource>::API_VERSION,
            DesiredObject::PodDisruptionBudget(_, api) => api.api_version(),
            DesiredObject::ServiceAccount(_) => <ServiceAccount as k8s_openapi::Resource>::API_VERSION,
            DesiredObject::Role(_) => <Role as k8s_openapi::Resource>::API_VERSION,
            DesiredObject::RoleBinding(_) => <RoleBinding as k8s_openapi::Resource>::API_VERSION,
        }
    }

    /// The `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            DesiredObject::ConfigMap(_) => <ConfigMap as k8s_openapi::Resource>::KIND,
            DesiredObject::Service(_) => <Service as k8s_openapi::Resource>::KIND,
            DesiredObject::StatefulSet(_) => <StatefulSet as k8s_openapi::Resource>::KIND,
            DesiredObject::PodDisruptionBudget(..) => <PodDisruptionBudget as k8s_openapi::Resource>::KIND,
            DesiredObject::ServiceAccount(_) => <ServiceAccount as k8s_openapi::Resource>::KIND,
            DesiredObject::Role(_) => <Role as k8s_openapi::Resource>::KIND,
            DesiredObject::RoleBinding(_) => <RoleBinding as k8s_openapi::Resource>::KIND,
        }
    }

    /// `metadata.name`.
    pub fn name(&self) -> Option<&str> {
        self.metadata().name.as_deref()
    }

    /// `metadata.namespace`: the cluster's, except for the discovery Role and RoleBinding in other namespaces.
    pub fn namespace(&self) -> Option<&str> {
        self.metadata().namespace.as_deref()
    }

    fn metadata(&self) -> &ObjectMeta {
        match self {
            DesiredObject::ConfigMap(o) => &o.metadata,
            DesiredObject::Service(o) => &o.metadata,
            DesiredObject::StatefulSet(o) => &o.metadata,
            DesiredObject::PodDisruptionBudget(o, _) => &o.metadata,
            DesiredObject::ServiceAccount(o) => &o.metadata,
            DesiredObject::Role(o) => &o.metadata,
            DesiredObject::RoleBinding(o) => &o.metadata,
        }
    }

    /// The JSON manifest the adapter applies, with `apiVersion` and `kind`.
    pub fn to_manifest(&self) -> Result<serde_json::Value> {
        let mut value =
            serde_json::to_value(self).map_err(|e| Error::Serialize { kind: self.kind(), reason: e.to_string() })?;
        if let (DesiredObject::PodDisruptionBudget(..), Some(obj)) = (self, value.as_object_mut()) {
            obj.insert("apiVersion".to_owned(), serde_json::Value::from(self.api_version()));
        }
        Ok(value)
    }
}

impl serde::Serialize for DesiredObject<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            DesiredObject::ConfigMap(o) => o.serialize(serializer),
            DesiredObject::Service(o) => o.serialize(serializer),
            DesiredObject::StatefulSet(o) => o.serialize(serializer),
            DesiredObject::PodDisruptionBudget(o, _) => o.serialize(serializer),
            DesiredObject::ServiceAccount(o) => o.serialize(serializer),
            DesiredObject::Role(o) => o.serialize(serializer),
            DesiredObject::RoleBinding(o) => o.serialize(serializer),
        }
    }
}

/// Why rendering failed: only serializing a rendered object can, which the property tests have never seen. Every
/// problem of a spec is found by validation ([`crate::validate::cluster`]), whose [`ValidCluster`] is what the
/// builders take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Serializing a rendered object failed.
    #[error("failed to build: serializing the {kind}: {reason}")]
    Serialize {
        /// What was being serialized.
        kind: &'static str,
        /// The serializer's message.
        reason: String,
    },
}

/// A validated cluster with its defaults applied ([`ValidCluster`]) and the operator's settings: what every builder
/// reads.
#[derive(Debug, Clone)]
pub struct BuildContext<'a> {
    /// The cluster being rendered (borrowed, never changed).
    pub cluster: &'a PrometheusCluster,
    /// Operator-wide settings.
    pub settings: &'a BuildSettings,
    /// `metadata.name`.
    pub name: &'a str,
    /// `metadata.namespace`, if the input has one (dry-run input may not).
    pub namespace: Option<&'a str>,
    /// Prometheus image.
    pub image: &'a str,
    /// Version read from the image tag; `None` when the tag says nothing (`latest`, a digest).
    pub version: Option<PrometheusVersion>,
    /// `--storage.tsdb.retention.time`.
    pub retention: &'a str,
    /// Size of each data volume.
    pub storage_size: &'a str,
    /// Thanos image.
    pub thanos_image: &'a str,
    /// `spec.additionalScrapeConfigs`, as validated.
    pub scrape_configs: Option<&'a ScrapeConfigsSource<'a>>,
    /// `spec.selfHealing.startupBudget`.
    pub startup_budget: std::time::Duration,
    /// The scrape jobs of the prometheus-operator monitors the cluster selects
    /// ([`crate::monitors::choose_for_cluster`]); empty unless given with [`BuildContext::with_chosen`].
    pub monitor_jobs: &'a [crate::monitors::ScrapeJob],
    /// The rule files of the PrometheusRules the cluster selects; empty unless given with
    /// [`BuildContext::with_chosen`].
    pub rule_files: &'a [crate::monitors::RuleFile],
    /// The Secrets of the cluster's namespace the selected monitors' credentials read; empty unless given with
    /// [`BuildContext::with_chosen`].
    pub monitor_secrets: Option<&'a std::collections::BTreeSet<String>>,
    /// Namespaces other than the cluster's own that the selected monitors discover targets in: each gets the
    /// discovery Role and RoleBinding ([`discovery`]); empty unless given with [`BuildContext::with_chosen`].
    pub discovery_namespaces: Option<&'a std::collections::BTreeSet<String>>,
}

impl<'a> BuildContext<'a> {
    /// The context of a validated cluster.
    pub fn new(valid: &'a ValidCluster<'a>, settings: &'a BuildSettings) -> Self {
        Self {
            cluster: valid.cluster(),
            settings,
            name: valid.name(),
            namespace: valid.namespace(),
            image: valid.image(),
            version: valid.version(),
            retention: valid.retention(),
            storage_size: valid.storage_size(),
            thanos_image: valid.thanos_image(),
            scrape_configs: valid.scrape_configs(),
            startup_budget: valid.startup_budget(),
            monitor_jobs: &[],
            rule_files: &[],
            monitor_secrets: None,
            discovery_namespaces: None,
        }
    }

    /// The context with the scrape jobs and rule files of the monitors and PrometheusRules the cluster selects.
    #[must_use]
    pub fn with_chosen(mut self, chosen: &'a crate::monitors::ClusterMonitors) -> Self {
        self.monitor_jobs = &chosen.jobs;
        self.rule_files = &chosen.rule_files;
        self.monitor_secrets = Some(&chosen.secrets);
        self.discovery_namespaces = Some(&chosen.other_namespaces);
        self
    }

    /// Whether the Thanos sidecar runs.
    pub fn thanos_enabled(&self) -> bool {
        self.cluster.spec.thanos.enabled
    }

    /// Whether each pod's external labels carry its own name (more than one replica, or Thanos on).
    pub fn needs_replica_label(&self) -> bool {
        self.cluster.spec.replicas > 1 || self.thanos_enabled()
    }

    /// Labels of every child object: the seed's selector labels plus `app.kubernetes.io/managed-by`.
    pub fn common_labels(&self) -> BTreeMap<String, String> {
        map([
            (labels::NAME.to_owned(), labels::NAME_VALUE.to_owned()),
            (labels::INSTANCE.to_owned(), self.name.to_owned()),
            (labels::MANAGED_BY.to_owned(), labels::MANAGED_BY_VALUE.to_owned()),
        ])
    }

    /// The seed's pod selector: `app.kubernetes.io/name: prometheus`, `app.kubernetes.io/instance: <name>`.
    pub fn selector_labels(&self) -> BTreeMap<String, String> {
        map([
            (labels::NAME.to_owned(), labels::NAME_VALUE.to_owned()),
            (labels::INSTANCE.to_owned(), self.name.to_owned()),
        ])
    }

    /// Metadata of a child object called `name`: namespace, common labels and the owner reference.
    pub fn object_meta(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: self.namespace.map(str::to_owned),
            labels: Some(self.common_labels()),
            owner_references: self.owner_reference().map(|o| vec![o]),
            ..ObjectMeta::default()
        }
    }

    /// A controller owner reference to the cluster; `None` when the input has no `uid` (dry-run input).
    pub fn owner_reference(&self) -> Option<OwnerReference> {
        let uid = self.cluster.metadata.uid.as_deref().filter(|u| !u.is_empty())?;
        Some(OwnerReference {
            api_version: PrometheusCluster::api_version(&()).into_owned(),
            kind: PrometheusCluster::kind(&()).into_owned(),
            name: self.name.to_owned(),
            uid: uid.to_owned(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        })
    }

    /// Name of the ConfigMap: `<name>-config`.
    pub fn config_map_name(&self) -> String {
        concat(&[self.name, "-config"])
    }
}

/// Renders every object the cluster should own.
///
/// # Errors
/// See [`Error`]: only serializing can fail.
pub fn build(cluster: &ValidCluster<'_>, settings: &BuildSettings) -> Result<DesiredObjects> {
    build_with_monitors(cluster, settings, &crate::monitors::ClusterMonitors::default())
}

/// [`build`] with what the cluster's selectors chose of prometheus-operator's objects
/// ([`crate::monitors::choose_for_cluster`]): the monitors' scrape jobs, written to the ConfigMap's
/// `monitor-scrape-configs.yml`, and the PrometheusRules' rule files (`rules_<namespace>_<name>.yml`).
///
/// # Errors
/// As [`build`].
pub fn build_with_monitors(
    cluster: &ValidCluster<'_>,
    settings: &BuildSettings,
    chosen: &crate::monitors::ClusterMonitors,
) -> Result<DesiredObjects> {
    let ctx = BuildContext::new(cluster, settings).with_chosen(chosen);
    Ok(DesiredObjects {
        config_map: config::build_config_map(&ctx)?,
        service: service::build_service(&ctx),
        stateful_set: statefulset::build_statefulset(&ctx),
        pod_disruption_budget: pdb::build_pdb(&ctx),
        discovery: discovery::build_discovery(&ctx),
    })
}

/// The strings joined, allocated once at their exact length (`format!` guesses the capacity and may grow).
pub(crate) fn concat(parts: &[&str]) -> String {
    let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        out.push_str(part);
    }
    out
}

/// `prefix` followed by `port` in decimal.
pub(crate) fn with_port(prefix: &str, port: i32) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(prefix.len() + 11);
    out.push_str(prefix);
    let _ = write!(out, "{port}");
    out
}

/// A map of a few entries, inserted one by one: cheaper than `BTreeMap::from`, which sorts and bulk-builds.
pub(crate) fn map<K: Ord, V, const N: usize>(entries: [(K, V); N]) -> BTreeMap<K, V> {
    let mut out = BTreeMap::new();
    for (key, value) in entries {
        out.insert(key, value);
    }
    out
}

fn non_empty(s: &str) -> Option<&str> {
    let s = s.trim();
    (!s.is_empty()).then_some(s)
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub(crate) fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A Prometheus label name that both 2.x and 3.x accept without UTF-8 escaping.
pub(crate) fn is_label_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_like_the_api_server_does() {
        assert!(is_dns1123_label("demo-1"));
        assert!(!is_dns1123_label("Demo"));
        assert!(!is_dns1123_label("demo-"));
        assert!(!is_dns1123_label(""));
    }

    #[test]
    fn label_names_follow_the_legacy_prometheus_charset() {
        assert!(is_label_name("replica"));
        assert!(is_label_name("_x9"));
        assert!(!is_label_name("9x"));
        assert!(!is_label_name("a-b"));
        assert!(!is_label_name(""));
    }
}
