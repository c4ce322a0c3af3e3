//! The healer: probes the replicas of every PrometheusCluster with self-healing enabled, lets the core decide
//! ([`tsdb_operator_core::heal::Healer`]) and carries out its decisions. Runs on the leader only. I/O: the
//! Kubernetes API (watches, eviction, status) and HTTP probes.
//!
//! # Flow (every tick, one second)
//! 1. PrometheusClusters and their pods come from watches (reflector stores; the clusters from the cluster
//!    controller's store): no periodic LIST. Pods are those
//!    labelled `app.kubernetes.io/name=prometheus`, `app.kubernetes.io/managed-by=tsdb-operator`, with the
//!    cluster's `app.kubernetes.io/instance` and owned by the cluster's StatefulSet.
//! 2. Each cluster whose `probeInterval` has passed has its running pods probed at their pod IP, at most
//!    [`HealerConfig::concurrency`] probes at once across all clusters, each request bounded by
//!    [`HealerConfig::probe_timeout`] (and by the interval).
//! 3. The core decides for all clusters at once (the circuit breaker looks across clusters).
//! 4. A replacement is an eviction (`pods/eviction`, honouring PodDisruptionBudgets) with the pod's UID as a
//!    precondition. A budget refusal (429) means wait; the API lacking eviction, or refusing it for another
//!    reason, falls back to a delete with the same precondition.
//! 5. Records: a Warning event `FailoverTriggered`, `tsdb_operator_failover_total`, `status.lastFailoverTime`,
//!    the `Healing` and `HealingSuspended` conditions, and a typed event on the [`crate::events::EventBus`].
//!    Status is written with server-side apply under its own field manager ([`FIELD_MANAGER`]), only the fields
//!    the healer owns, and only when they change. The cluster controller carries those fields over, so the two
//!    writers never undo each other.
//!
//! # Errors
//! A failed API call or probe is logged and retried on the next tick; it never stops the loop.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::json;
use tsdb_operator_core::build::PdbApi;
use tsdb_operator_core::constants::{conditions, containers, labels, ports};
use tsdb_operator_core::crd::PrometheusCluster;
use tsdb_operator_core::events::Action;
use tsdb_operator_core::heal::{
    ClusterDecision, ClusterKey, ClusterView, HealSettings, Healer, Hold, Outcome, ProbeResult, Replacement,
    ReplicaFacts, build_heal_conditions,
};

use super::{Context, strip_managed_fields};
use crate::metrics::ClusterLabels;
use crate::prober::Prober;

/// Field manager of the healer's status writes (`lastFailoverTime`, `Healing`, `HealingSuspended`).
pub const FIELD_MANAGER: &str = "tsdb-operator-healer";

/// Operator-wide settings of the healer (per-cluster settings are in `spec.selfHealing`).
#[derive(Debug, Clone)]
pub struct HealerConfig {
    /// How often the loop wakes up; probe intervals are rounded up to it.
    pub tick: Duration,
    /// Longest time one probe request may take (the probe interval caps it too).
    pub probe_timeout: Duration,
    /// Most probes in flight at once.
    pub concurrency: usize,
}

impl Default for HealerConfig {
    fn default() -> Self {
        Self { tick: Duration::from_secs(1), probe_timeout: Duration::from_secs(3), concurrency: 16 }
    }
}

/// Labels of the probe counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// The `reason` of `tsdb_operator_heal_held_total` when the eviction API refused a replacement (the PodDisruptionBudget).
const DISRUPTION_BUDGET: &str = "disruption_budget";

/// Labels of the held-replacement counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct HeldLabels {
    namespace: String,
    cluster: String,
    reason: String,
}

/// The healer's own metrics (the failover counter is the seed's, in [`crate::metrics::Metrics`]).
#[derive(Clone)]
struct HealMetrics {
    probes: Family<ResultLabels, Counter>,
    suspended: Family<ClusterLabels, Gauge>,
    held: Family<HeldLabels, Counter>,
}

impl HealMetrics {
    /// Removes the series of a cluster that is gone.
    fn forget(&self, key: &ClusterKey) {
        self.suspended.remove(&ClusterLabels { namespace: key.namespace.clone(), cluster: key.name.clone() });
        for reason in Hold::LABELS.iter().chain([&DISRUPTION_BUDGET]) {
            self.held.remove(&HeldLabels {
                namespace: key.namespace.clone(),
                cluster: key.name.clone(),
                reason: (*reason).to_owned(),
            });
        }
    }

    fn register(metrics: &crate::metrics::Metrics) -> Self {
        let m = Self { probes: Family::default(), suspended: Family::default(), held: Family::default() };
        // Every series starts at zero, so that the first failure is an increase alerts can see.
        for result in tsdb_operator_core::heal::ProbeResult::LABELS {
            drop(m.probes.get_or_create(&ResultLabels { result: result.to_owned() }));
        }
        metrics.with_registry(|r| {
            r.register("tsdb_operator_heal_probes", "Probes of Prometheus replicas by result", m.probes.clone());
            r.register(
                "tsdb_operator_healing_suspended",
                "1 while self-healing of a cluster is suspended by the circuit breaker",
                m.suspended.clone(),
            );
            r.register(
                "tsdb_operator_heal_held",
                "Passes in which a stuck replica was not replaced, by reason",
                m.held.clone(),
            );
        });
        m
    }
}

/// What became of a replacement.
#[derive(Debug, PartialEq, Eq)]
enum Removal {
    /// Evicted or deleted.
    Done { via: &'static str },
    /// A PodDisruptionBudget does not allow it now.
    Refused(String),
    /// The pod is gone or is not the one that was judged (UID precondition).
    Gone,
}

/// Runs the healer until `shutdown` resolves. `clusters` is the cluster controller's store (filled by its watch).
pub async fn run(
    ctx: Arc<Context>,
    config: HealerConfig,
    clusters: Store<PrometheusCluster>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (pods, pod_writer) = reflector::store::<Pod>();
    let selector =
        format!("{}={},{}={}", labels::NAME, labels::NAME_VALUE, labels::MANAGED_BY, labels::MANAGED_BY_VALUE);
    let pod_watch = reflector::reflector(
        pod_writer,
        watcher(ctx.api::<Pod>(), super::watch_config().labels(&selector)).modify(|pod: &mut Pod| {
            // The healer reads the pods' metadata and status only.
            strip_managed_fields(pod);
            pod.spec = None;
        }),
    )
    .backoff(super::watch_backoff())
    .for_each(|_| std::future::ready(()));
    let metrics = HealMetrics::register(&ctx.metrics);
    let mut state = LoopState { healer: Healer::new(), ..LoopState::default() };
    let prober = Prober::new();
    let main = async {
        if clusters.wait_until_ready().await.is_err() || pods.wait_until_ready().await.is_err() {
            return;
        }
        tracing::info!("healer started");
        let mut ticker = tokio::time::interval(config.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            pass(&ctx, &config, &prober, &metrics, &clusters, &pods, &mut state).await;
        }
    };
    tokio::select! {
        () = pod_watch => tracing::warn!("pod watch ended"),
        () = main => {}
        () = shutdown => {}
    }
}

#[derive(Default)]
struct LoopState {
    healer: Healer,
    next_probe: BTreeMap<ClusterKey, Instant>,
    /// The newest `lastFailoverTime` written per cluster (the store may lag behind the write).
    last_failover: BTreeMap<ClusterKey, jiff::Timestamp>,
    /// Whether the circuit breaker was open at the previous pass (for the suspended/resumed events).
    breaker_open: BTreeMap<ClusterKey, bool>,
}

/// One pass over all clusters.
async fn pass(
    ctx: &Context,
    config: &HealerConfig,
    prober: &Prober,
    metrics: &HealMetrics,
    clusters: &Store<PrometheusCluster>,
    pods: &Store<Pod>,
    state: &mut LoopState,
) {
    let started = Instant::now();
    let mut pods_by_cluster: BTreeMap<(String, String), Vec<Arc<Pod>>> = BTreeMap::new();
    for pod in pods.state() {
        let (Some(ns), Some(instance)) = (pod.namespace(), pod.labels().get(labels::INSTANCE).cloned()) else {
            continue;
        };
        let owned_by_sts = pod
            .owner_references()
            .iter()
            .any(|o| o.kind == "StatefulSet" && o.name == instance && o.controller == Some(true));
        if owned_by_sts {
            pods_by_cluster.entry((ns, instance)).or_default().push(pod);
        }
    }

    // Observe, and probe the clusters that are due.
    let mut views = Vec::new();
    let mut objects: BTreeMap<ClusterKey, Arc<PrometheusCluster>> = BTreeMap::new();
    let mut due: Vec<(ClusterKey, ReplicaFacts, IpAddr, Duration)> = Vec::new();
    for pc in clusters.state() {
        let Some(ns) = pc.namespace() else { continue };
        if pc.meta().deletion_timestamp.is_some() {
            continue;
        }
        let Ok(settings) = HealSettings::from_spec(&pc.spec) else { continue };
        let key = ClusterKey { namespace: ns.clone(), name: pc.name_any() };
        let cluster_pods = pods_by_cluster.remove(&(ns, key.name.clone())).unwrap_or_default();
        let facts: Vec<(ReplicaFacts, Option<IpAddr>)> =
            cluster_pods.iter().map(|p| (observe_replica(p), pod_ip(p))).collect();
        if settings.enabled && state.next_probe.get(&key).is_none_or(|t| *t <= started) {
            state.next_probe.insert(key.clone(), started + settings.probe_interval);
            let timeout = config.probe_timeout.min(settings.probe_interval).max(Duration::from_millis(200));
            for (f, ip) in &facts {
                if let Some(ip) = ip
                    && f.running
                    && !f.terminating
                {
                    due.push((key.clone(), f.clone(), *ip, timeout));
                }
            }
        }
        let last_failover = pc
            .status
            .as_ref()
            .and_then(|s| s.last_failover_time.as_ref())
            .map(|t| t.0)
            .max(state.last_failover.get(&key).copied());
        views.push(ClusterView {
            key: key.clone(),
            settings,
            replicas: pc.spec.replicas,
            last_failover_time: last_failover,
            pods: facts.into_iter().map(|(f, _)| f).collect(),
        });
        objects.insert(key, pc);
    }
    // Clusters gone (deleted, or their spec no longer readable): their series and loop state go too.
    let present: std::collections::BTreeSet<&ClusterKey> = views.iter().map(|v| &v.key).collect();
    let gone: Vec<ClusterKey> = state.breaker_open.keys().filter(|k| !present.contains(k)).cloned().collect();
    for key in gone {
        metrics.forget(&key);
        state.breaker_open.remove(&key);
        state.next_probe.remove(&key);
        state.last_failover.remove(&key);
    }
    let results: Vec<(ClusterKey, ReplicaFacts, ProbeResult)> = futures::stream::iter(due)
        .map(|(key, facts, ip, timeout)| async move {
            let port = u16::try_from(ports::PROMETHEUS).unwrap_or(9090);
            let result = prober.probe(ip, port, timeout).await;
            (key, facts, result)
        })
        .buffer_unordered(config.concurrency.max(1))
        .collect()
        .await;
    let now = jiff::Timestamp::now();
    for (key, facts, result) in results {
        metrics.probes.get_or_create(&ResultLabels { result: result.label().to_owned() }).inc();
        if result.is_failure() {
            tracing::debug!(cluster = %key, pod = %facts.name, result = ?result, "probe failed");
        }
        state.healer.record_probe(&key, &facts, result, now);
    }
    state.next_probe.retain(|k, _| objects.contains_key(k));
    state.last_failover.retain(|k, _| objects.contains_key(k));
    state.breaker_open.retain(|k, _| objects.contains_key(k));

    // Decide, then act.
    let decisions = state.healer.decide(&views, now);
    for decision in decisions {
        let Some(pc) = objects.get(&decision.key) else { continue };
        act(ctx, metrics, pc, &decision, state).await;
    }
}

/// Carries out one cluster's decision and records it.
async fn act(
    ctx: &Context,
    metrics: &HealMetrics,
    pc: &PrometheusCluster,
    decision: &ClusterDecision,
    state: &mut LoopState,
) {
    let key = &decision.key;
    let labels = ClusterLabels { namespace: key.namespace.clone(), cluster: key.name.clone() };
    let reference = pc.object_ref(&());
    let actor = ctx.events.operator_actor();

    let breaker = decision.suspended.as_ref().filter(|s| s.is_breaker());
    metrics.suspended.get_or_create(&labels).set(i64::from(breaker.is_some()));
    drop(ctx.metrics.failover_total.get_or_create(&labels));
    for reason in Hold::LABELS.iter().chain([&DISRUPTION_BUDGET]) {
        let held =
            HeldLabels { namespace: key.namespace.clone(), cluster: key.name.clone(), reason: (*reason).to_owned() };
        drop(metrics.held.get_or_create(&held));
    }
    let was_open = *state.breaker_open.entry(key.clone()).or_insert_with(|| condition_is_breaker(pc));
    match (was_open, breaker) {
        (false, Some(s)) => {
            tracing::warn!(cluster = %key, "{}", s.message());
            ctx.events.publish(&reference, actor.clone(), Action::HealingSuspended { reason: s.message() });
        }
        (true, None) => ctx.events.publish(&reference, actor.clone(), Action::HealingResumed),
        _ => {}
    }
    state.breaker_open.insert(key.clone(), breaker.is_some());

    let mut replaced = None;
    match &decision.outcome {
        Outcome::Nothing => {}
        Outcome::Held { pod, hold } => {
            metrics
                .held
                .get_or_create(&HeldLabels {
                    namespace: key.namespace.clone(),
                    cluster: key.name.clone(),
                    reason: hold.label().to_owned(),
                })
                .inc();
            if !matches!(hold, Hold::CircuitOpen | Hold::ReplacementInProgress { .. }) {
                tracing::info!(cluster = %key, %pod, hold = ?hold, "stuck replica not replaced now");
            }
        }
        Outcome::Replace(r) => match remove_pod(ctx, &key.namespace, r).await {
            Ok(Removal::Done { via }) => {
                let now = super::now();
                state.healer.record_replacement(key, r, now);
                state.last_failover.insert(key.clone(), now);
                ctx.metrics.failover_total.get_or_create(&labels).inc();
                let did =
                    Action::FailoverTriggered { pod: r.pod.clone(), reason: r.reason.clone(), via: via.to_owned() };
                ctx.events.publish(&reference, actor.clone(), did);
                replaced = Some(r.clone());
            }
            Ok(Removal::Refused(why)) => {
                metrics
                    .held
                    .get_or_create(&HeldLabels {
                        namespace: key.namespace.clone(),
                        cluster: key.name.clone(),
                        reason: DISRUPTION_BUDGET.to_owned(),
                    })
                    .inc();
                tracing::info!(cluster = %key, pod = %r.pod, %why, "eviction refused by a PodDisruptionBudget; waiting");
            }
            Ok(Removal::Gone) => tracing::info!(cluster = %key, pod = %r.pod, "pod already gone or replaced"),
            Err(e) => tracing::warn!(cluster = %key, pod = %r.pod, error = %crate::error_chain(&e),
                "failed to replace a stuck replica"),
        },
    }

    if let Err(e) = write_status(ctx, pc, decision, replaced.as_ref(), state.last_failover.get(key).copied()).await {
        tracing::warn!(cluster = %key, error = %crate::error_chain(&e), "failed to write healing status");
    }
}

/// Whether the cluster's status says the circuit breaker is open (the state before this process started).
fn condition_is_breaker(pc: &PrometheusCluster) -> bool {
    pc.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == conditions::HEALING_SUSPENDED
                && c.status == "True"
                && c.reason != tsdb_operator_core::constants::reasons::HEALING_DISABLED
                && c.reason != tsdb_operator_core::constants::reasons::PAUSED
        })
    })
}

/// Writes `lastFailoverTime` and the healer's conditions when they differ from the cluster's status.
async fn write_status(
    ctx: &Context,
    pc: &PrometheusCluster,
    decision: &ClusterDecision,
    replaced: Option<&Replacement>,
    last_failover: Option<jiff::Timestamp>,
) -> Result<(), kube::Error> {
    let status = pc.status.clone().unwrap_or_default();
    let ours = build_heal_conditions(decision, replaced, &status.conditions, pc.meta().generation, super::now());
    let current: Vec<&Condition> = status
        .conditions
        .iter()
        .filter(|c| c.type_ == conditions::HEALING || c.type_ == conditions::HEALING_SUSPENDED)
        .collect();
    let last_failover = last_failover.max(status.last_failover_time.as_ref().map(|t| t.0));
    let conditions_same = current.len() == ours.len() && ours.iter().all(|c| current.contains(&c));
    if conditions_same && last_failover == status.last_failover_time.as_ref().map(|t| t.0) {
        return Ok(());
    }
    let mut fields = Vec::new();
    if let Some(t) = last_failover {
        fields.push(("lastFailoverTime", serde_json::to_value(Time(t)).unwrap_or_default()));
    }
    super::patch_owned_status(
        ctx,
        pc,
        FIELD_MANAGER,
        fields,
        &[conditions::HEALING, conditions::HEALING_SUSPENDED],
        Some(ours),
    )
    .await
}

/// Evicts the pod (UID precondition, grace period from the decision); falls back to a delete when the API has
/// no eviction or refuses it for a reason other than a disruption budget.
async fn remove_pod(ctx: &Context, namespace: &str, r: &Replacement) -> Result<Removal, kube::Error> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let version = match ctx.settings.pdb_api {
        PdbApi::V1 => "policy/v1",
        PdbApi::V1beta1 => "policy/v1beta1",
    };
    let mut delete_options = json!({ "preconditions": { "uid": r.uid } });
    if let Some(grace) = r.grace_period_seconds {
        delete_options["gracePeriodSeconds"] = json!(grace);
    }
    // The body is built here rather than with `Api::evict`, which sends `delete_options` (snake case) that the
    // API server ignores, so the UID precondition and grace period would be lost.
    let eviction = json!({
        "apiVersion": version,
        "kind": "Eviction",
        "metadata": { "name": r.pod, "namespace": namespace },
        "deleteOptions": delete_options,
    });
    let result: Result<serde_json::Value, kube::Error> =
        api.create_subresource("eviction", &r.pod, &PostParams::default(), &eviction).await;
    match result {
        Ok(_) => return Ok(Removal::Done { via: "evicting" }),
        Err(kube::Error::Api(s)) => match classify_eviction_error(&s) {
            EvictionError::Budget => return Ok(Removal::Refused(s.message.clone())),
            EvictionError::Gone => return Ok(Removal::Gone),
            EvictionError::Unsupported => {
                tracing::info!(pod = %r.pod, code = s.code, message = %s.message, "eviction not possible; deleting");
            }
        },
        Err(e) => return Err(e),
    }
    let dp = DeleteParams {
        grace_period_seconds: r.grace_period_seconds,
        preconditions: Some(Preconditions { uid: Some(r.uid.clone()), resource_version: None }),
        ..DeleteParams::default()
    };
    match api.delete(&r.pod, &dp).await {
        Ok(_) => Ok(Removal::Done { via: "deleting" }),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(Removal::Gone),
        Err(e) => Err(e),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum EvictionError {
    /// A PodDisruptionBudget refuses it (429, or 500 when several budgets match): wait.
    Budget,
    /// The pod does not exist or is not the judged one (UID precondition).
    Gone,
    /// No eviction API, not allowed, or refused for another reason: delete instead.
    Unsupported,
}

fn classify_eviction_error(s: &kube::core::Status) -> EvictionError {
    let about_pod = s.details.as_ref().is_some_and(|d| d.kind == "pods" && !d.name.is_empty());
    match s.code {
        429 => EvictionError::Budget,
        500 if s.message.contains("DisruptionBudget") => EvictionError::Budget,
        404 if about_pod => EvictionError::Gone,
        409 => EvictionError::Gone,
        _ => EvictionError::Unsupported,
    }
}

/// The replica's facts from its Pod object.
fn observe_replica(pod: &Pod) -> ReplicaFacts {
    let status = pod.status.as_ref();
    let container = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == containers::PROMETHEUS));
    let running_since = container.and_then(|c| c.state.as_ref()).and_then(|s| s.running.as_ref());
    let started_at = running_since
        .and_then(|r| r.started_at.as_ref())
        .or_else(|| status.and_then(|s| s.start_time.as_ref()))
        .map(|t| t.0);
    let kubelet_ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    ReplicaFacts {
        name: pod.name_any(),
        uid: pod.uid().unwrap_or_default(),
        running: running_since.is_some(),
        started_at,
        restart_count: container.map_or(0, |c| c.restart_count),
        started: container.and_then(|c| c.started).unwrap_or(false),
        kubelet_ready,
        terminating: pod.meta().deletion_timestamp.is_some(),
    }
}

fn pod_ip(pod: &Pod) -> Option<IpAddr> {
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, message: &str, kind: Option<(&str, &str)>) -> kube::core::Status {
        let mut v = json!({"status": "Failure", "code": code, "message": message, "reason": ""});
        if let Some((kind, name)) = kind {
            v["details"] = json!({"kind": kind, "name": name});
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn budget_refusals_wait_and_other_refusals_fall_back_to_delete() {
        let budget = status(429, "Cannot evict pod as it would violate the pod's disruption budget.", None);
        assert_eq!(classify_eviction_error(&budget), EvictionError::Budget);
        let several = status(
            500,
            "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            None,
        );
        assert_eq!(classify_eviction_error(&several), EvictionError::Budget);
        assert_eq!(
            classify_eviction_error(&status(404, "pods \"x\" not found", Some(("pods", "x")))),
            EvictionError::Gone
        );
        assert_eq!(classify_eviction_error(&status(409, "Precondition failed: UID", None)), EvictionError::Gone);
        assert_eq!(
            classify_eviction_error(&status(404, "the server could not find the requested resource", None)),
            EvictionError::Unsupported
        );
        assert_eq!(classify_eviction_error(&status(403, "forbidden", None)), EvictionError::Unsupported);
    }
}
