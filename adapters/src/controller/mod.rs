//! The controllers: `prometheuscluster` and `prometheusclusterset`, on kube-runtime. Each reconcile runs the
//! pipeline `validate -> observe -> build -> plan -> apply -> status`; the core decides, this module executes.
//! I/O: the Kubernetes API.

pub mod backoff;
pub mod backup;
pub mod cluster;
pub mod clusterset;
pub mod heal;
pub mod monitors;

use kube::Client;
use tsdb_operator_core::build::BuildSettings;

use crate::events::EventBus;
use crate::metrics::Metrics;

/// Shared state of the controllers.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Operator-wide render settings (agent image, PodDisruptionBudget API).
    pub settings: BuildSettings,
    /// Metrics.
    pub metrics: Metrics,
    /// Where actions are published.
    pub events: EventBus,
    /// Per-object retry backoff.
    pub backoff: backoff::Backoff,
    /// Maximum reconciles running at once per controller.
    pub concurrency: u16,
    /// Only this namespace is watched when set; all namespaces otherwise.
    pub namespace: Option<String>,
    /// HTTP client for the agents in the Prometheus pods (short timeouts).
    pub http: reqwest::Client,
    /// prometheus-operator's monitors and the namespaces' labels, kept current by the cluster controller.
    pub monitors: std::sync::Arc<monitors::MonitorCache>,
}

impl Context {
    /// A context with default backoff and concurrency, watching all namespaces.
    pub fn new(client: Client, settings: BuildSettings, metrics: Metrics, events: EventBus) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(2))
            .timeout(std::time::Duration::from_secs(3))
            .build()
            .unwrap_or_default();
        Self {
            http,
            client,
            settings,
            metrics,
            events,
            backoff: backoff::Backoff::default(),
            concurrency: 8,
            namespace: None,
            monitors: std::sync::Arc::default(),
        }
    }
}

impl Context {
    /// An API for `K` in the watched namespace, or in all namespaces.
    pub fn api<K>(&self) -> kube::Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        match &self.namespace {
            Some(ns) => kube::Api::namespaced(self.client.clone(), ns),
            None => kube::Api::all(self.client.clone()),
        }
    }
}

/// Writes status fields owned by a controller other than the cluster controller (self-healing, backups): a JSON
/// patch that first tests the object's `resourceVersion`, then sets `fields` (`/status/<key>`) and, when
/// `conditions` is given, replaces the conditions of the types in `owned_types` with it, keeping all others.
/// A read-modify-write of the whole conditions list that fails instead of overwriting a newer status: API
/// servers that treat the list as atomic for server-side apply (the 1.20 test server does) would otherwise let two
/// writers drop each other's conditions. The caller retries a failed test on its next pass.
pub async fn patch_owned_status(
    ctx: &Context,
    pc: &tsdb_operator_core::crd::PrometheusCluster,
    field_manager: &str,
    fields: Vec<(&str, serde_json::Value)>,
    owned_types: &[&str],
    conditions: Option<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>,
) -> Result<(), kube::Error> {
    use kube::ResourceExt;
    let current = pc.status.as_ref();
    let mut ops =
        vec![serde_json::json!({"op": "test", "path": "/metadata/resourceVersion", "value": pc.resource_version()})];
    if current.is_none() {
        ops.push(serde_json::json!({"op": "add", "path": "/status", "value": {}}));
    }
    for (key, value) in fields {
        ops.push(serde_json::json!({"op": "add", "path": format!("/status/{key}"), "value": value}));
    }
    if let Some(ours) = conditions {
        let mut list = current.map(|s| s.conditions.clone()).unwrap_or_default();
        list.retain(|c| !owned_types.contains(&c.type_.as_str()));
        list.extend(ours);
        list.sort_by(|a, b| a.type_.cmp(&b.type_));
        ops.push(serde_json::json!({"op": "add", "path": "/status/conditions", "value": list}));
    }
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(ops)).map_err(kube::Error::SerdeError)?;
    let api: kube::Api<tsdb_operator_core::crd::PrometheusCluster> =
        kube::Api::namespaced(ctx.client.clone(), &pc.namespace().unwrap_or_default());
    let pp = kube::api::PatchParams { field_manager: Some(field_manager.to_owned()), ..Default::default() };
    api.patch_status(&pc.name_any(), &pp, &kube::api::Patch::<()>::Json(patch)).await?;
    Ok(())
}

/// Objects per page when a watch lists (at start and after it lost its place). kube's default is 500; a page of
/// 500 pods is several MiB of JSON parsed at once, which set the operator's peak memory when it restarted next to
/// 1,000 clusters (docs/benchmarks.md). Smaller pages cost a few more requests, once per relist.
pub const LIST_PAGE_SIZE: u32 = 100;

/// The watch configuration every watch of the operator starts from: [`LIST_PAGE_SIZE`] objects per page.
pub fn watch_config() -> kube::runtime::watcher::Config {
    kube::runtime::watcher::Config::default().page_size(LIST_PAGE_SIZE)
}

/// Backoff of every watch after an error: the first retry after 200 ms, then doubling to at most 2 s (with
/// jitter), reset after a minute without errors. After an API-server outage the watches resume (and relist, when
/// their resourceVersion expired) within about 2 s; kube's default waits up to 30 s, so a change made right after
/// the recovery could wait that long. While the server is down this is one connection attempt per watch every 2 s.
pub fn watch_backoff() -> kube::runtime::utils::ResetTimerBackoff<kube::runtime::watcher::ExponentialBackoff> {
    let exponential = backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(200))
        .with_max_delay(std::time::Duration::from_secs(2))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    kube::runtime::utils::ResetTimerBackoff::new(exponential.into(), std::time::Duration::from_mins(1))
}

/// Drops `managedFields` from a cached object: often the largest part of it, and no controller reads it.
pub fn strip_managed_fields<K: kube::Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// The current time, truncated to seconds as Kubernetes stores it, so that statuses compare equal after a round
/// trip through the API server.
pub(crate) fn now() -> jiff::Timestamp {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second()).unwrap_or(now)
}
