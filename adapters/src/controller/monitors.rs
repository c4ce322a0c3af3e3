//! prometheus-operator's ServiceMonitors, PodMonitors and PrometheusRules (`monitoring.coreos.com/v1`) and the
//! namespaces' labels,
//! kept current for the cluster controller. I/O: the Kubernetes API.
//!
//! # Guarantees
//! - The operator works without prometheus-operator's CRDs: a kind whose CRD is not installed is looked for again
//!   every [`CRD_RECHECK`] and reported as missing (the core says so in the cluster's `MonitorsAccepted`
//!   condition); a CRD installed or removed while the operator runs is noticed without a restart.
//! - One monitor the operator cannot decode is logged and skipped; it never stops the others (the watch reads
//!   objects untyped and decodes them one at a time).
//! - Every change of a monitor, a PrometheusRule or a namespace's labels reconciles the clusters that select any,
//!   so a new ServiceMonitor is scraped (or a PrometheusRule loaded) after one reconcile and a config reload,
//!   without a pod restart.
//!
//! Memory: the decoded monitors (without `managedFields`) and the namespaces' labels, once for all clusters.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::core::{GroupVersionKind, PartialObjectMeta};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::UnboundedSender;
use tsdb_operator_core::monitors::{ObservedMonitors, PodMonitor, PrometheusRule, ServiceMonitor};

use super::{Context, watch_backoff, watch_config};

/// How often a missing CRD is looked for again.
pub const CRD_RECHECK: Duration = Duration::from_secs(30);

type Objects<T> = BTreeMap<(String, String), T>;

/// The cached monitors and namespaces. `None` for a kind means its CRD is not installed (or not seen yet).
#[derive(Default)]
pub struct MonitorCache {
    service_monitors: RwLock<Option<Objects<ServiceMonitor>>>,
    pod_monitors: RwLock<Option<Objects<PodMonitor>>>,
    prometheus_rules: RwLock<Option<Objects<PrometheusRule>>>,
    namespaces: RwLock<BTreeMap<String, BTreeMap<String, String>>>,
}

/// A copy of the cache for one decision.
#[derive(Debug, Clone, Default)]
pub struct MonitorSnapshot {
    service_monitors: Option<Vec<ServiceMonitor>>,
    pod_monitors: Option<Vec<PodMonitor>>,
    prometheus_rules: Option<Vec<PrometheusRule>>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

impl MonitorSnapshot {
    /// The snapshot as the core's observation.
    pub fn observed(&self) -> ObservedMonitors<'_> {
        ObservedMonitors {
            service_monitors: self.service_monitors.as_deref(),
            pod_monitors: self.pod_monitors.as_deref(),
            prometheus_rules: self.prometheus_rules.as_deref(),
            namespaces: &self.namespaces,
            secrets: None,
        }
    }
}

fn values<T>(objects: Option<Objects<T>>) -> Option<Vec<T>> {
    objects.map(|m| m.into_values().collect())
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
}

fn write<T>(lock: &RwLock<T>, value: T) {
    *lock.write().unwrap_or_else(std::sync::PoisonError::into_inner) = value;
}

impl MonitorCache {
    /// What the cache holds now; `own_namespace` is always among the namespaces (with no labels when the
    /// operator cannot list namespaces, as with `--watch-namespace`).
    pub fn snapshot(&self, own_namespace: &str) -> MonitorSnapshot {
        let mut namespaces = read(&self.namespaces);
        namespaces.entry(own_namespace.to_owned()).or_default();
        MonitorSnapshot {
            service_monitors: values(read(&self.service_monitors)),
            pod_monitors: values(read(&self.pod_monitors)),
            prometheus_rules: values(read(&self.prometheus_rules)),
            namespaces,
        }
    }
}

/// Keeps `cache` current until dropped: a watch per monitor kind (while its CRD exists) and, when the operator
/// watches all namespaces, one of the namespaces' metadata. Sends `()` on `changed` after every change.
pub async fn run(ctx: Arc<Context>, cache: Arc<MonitorCache>, changed: UnboundedSender<()>) {
    let services = watch_kind::<ServiceMonitor>(&ctx, &cache.service_monitors, "servicemonitors", &changed);
    let pods = watch_kind::<PodMonitor>(&ctx, &cache.pod_monitors, "podmonitors", &changed);
    let rules = watch_kind::<PrometheusRule>(&ctx, &cache.prometheus_rules, "prometheusrules", &changed);
    let namespaces = async {
        if ctx.namespace.is_none() {
            watch_namespaces(&ctx, &cache.namespaces, &changed).await;
        }
    };
    tokio::join!(services, pods, rules, namespaces);
}

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("monitoring.coreos.com", "v1", kind), plural)
}

fn is_not_found(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) if s.code == 404)
}

/// One monitor kind: wait for its CRD, watch it, and start over when the CRD goes away.
async fn watch_kind<T>(ctx: &Context, slot: &RwLock<Option<Objects<T>>>, plural: &str, changed: &UnboundedSender<()>)
where
    T: kube::Resource<DynamicType = ()> + DeserializeOwned + Clone,
{
    let kind = T::kind(&()).into_owned();
    let ar = resource(&kind, plural);
    let api: Api<DynamicObject> = match &ctx.namespace {
        Some(ns) => Api::namespaced_with(ctx.client.clone(), ns, &ar),
        None => Api::all_with(ctx.client.clone(), &ar),
    };
    loop {
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {
                if read(slot).is_some() {
                    write(slot, None);
                    let _ = changed.send(());
                }
                tracing::debug!(kind, "the CRD is not installed; looking again later");
                tokio::time::sleep(CRD_RECHECK).await;
                continue;
            }
            Err(e) => {
                tracing::debug!(kind, error = %e, "cannot list; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        }
        tracing::info!(kind, "watching prometheus-operator's {kind}s");
        let mut events = watcher(api.clone(), watch_config()).backoff(watch_backoff()).boxed();
        let mut pending: Option<Objects<T>> = None;
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Init) => pending = Some(BTreeMap::new()),
                Ok(watcher::Event::InitApply(object)) => {
                    if let (Some(map), Some((key, value))) = (pending.as_mut(), decode::<T>(&kind, &object)) {
                        map.insert(key, value);
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    write(slot, Some(pending.take().unwrap_or_default()));
                    let _ = changed.send(());
                }
                Ok(watcher::Event::Apply(object)) => {
                    let mut guard = slot.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let map = guard.get_or_insert_with(BTreeMap::new);
                    match decode::<T>(&kind, &object) {
                        Some((key, value)) => map.insert(key, value),
                        None => map.remove(&key_of(&object)),
                    };
                    drop(guard);
                    let _ = changed.send(());
                }
                Ok(watcher::Event::Delete(object)) => {
                    if let Some(map) = slot.write().unwrap_or_else(std::sync::PoisonError::into_inner).as_mut() {
                        map.remove(&key_of(&object));
                    }
                    let _ = changed.send(());
                }
                Err(e) if is_not_found(&e) => break,
                Err(e) => tracing::debug!(kind, error = %e, "watch error; retrying"),
            }
        }
        // The CRD went away (or the stream ended): start over, which reports it missing.
    }
}

fn key_of(object: &DynamicObject) -> (String, String) {
    (object.metadata.namespace.clone().unwrap_or_default(), object.metadata.name.clone().unwrap_or_default())
}

/// The object decoded as `T` without `managedFields`; `None` (logged) when it does not decode.
fn decode<T: DeserializeOwned>(kind: &str, object: &DynamicObject) -> Option<((String, String), T)> {
    let mut value = serde_json::to_value(object).ok()?;
    if let Some(meta) = value.get_mut("metadata").and_then(serde_json::Value::as_object_mut) {
        meta.remove("managedFields");
    }
    let (namespace, name) = key_of(object);
    match serde_json::from_value::<T>(value) {
        Ok(decoded) => Some(((namespace, name), decoded)),
        Err(e) => {
            tracing::warn!(kind, namespace, name, error = %e, "cannot read this monitor; it is not scraped");
            None
        }
    }
}

/// The namespaces' labels, for the namespace selectors.
async fn watch_namespaces(
    ctx: &Context,
    slot: &RwLock<BTreeMap<String, BTreeMap<String, String>>>,
    changed: &UnboundedSender<()>,
) {
    let api: Api<PartialObjectMeta<Namespace>> = Api::all(ctx.client.clone());
    let mut events = watcher(api, watch_config()).backoff(watch_backoff()).boxed();
    let mut pending = BTreeMap::new();
    while let Some(event) = events.next().await {
        let labels = |o: &PartialObjectMeta<Namespace>| o.metadata.labels.clone().unwrap_or_default();
        let name = |o: &PartialObjectMeta<Namespace>| o.metadata.name.clone().unwrap_or_default();
        match event {
            Ok(watcher::Event::Init) => pending = BTreeMap::new(),
            Ok(watcher::Event::InitApply(o)) => {
                pending.insert(name(&o), labels(&o));
            }
            Ok(watcher::Event::InitDone) => {
                write(slot, std::mem::take(&mut pending));
                let _ = changed.send(());
            }
            Ok(watcher::Event::Apply(o)) => {
                let mut guard = slot.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                let before = guard.insert(name(&o), labels(&o));
                drop(guard);
                if before.as_ref() != Some(&labels(&o)) {
                    let _ = changed.send(());
                }
            }
            Ok(watcher::Event::Delete(o)) => {
                slot.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&name(&o));
                let _ = changed.send(());
            }
            Err(e) => tracing::debug!(error = %e, "namespace watch error; retrying"),
        }
    }
}
