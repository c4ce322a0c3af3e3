//! The controllers: `prometheuscluster` and `prometheusclusterset`, on kube-runtime. Each reconcile runs the
//! pipeline `validate -> observe -> build -> plan -> apply -> status`; the core decides, this module executes.
//! I/O: the Kubernetes API.

pub mod backoff;
pub mod backup;
pub mod cluster;
pub mod clusterset;
pub mod heal;

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

/// The current time, truncated to seconds as Kubernetes stores it, so that statuses compare equal after a round
/// trip through the API server.
pub(crate) fn now() -> jiff::Timestamp {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second()).unwrap_or(now)
}
