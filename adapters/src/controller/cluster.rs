//! The `prometheuscluster` controller. I/O: the Kubernetes API.
//!
//! # Flow (one reconcile)
//! 1. `observe`: the objects with the children's names (owned or not), the Secrets the spec refers to
//!    ([`decide::secrets_to_read`]), the pods and data volume claims by label, the claims' StorageClass, and the
//!    agents' reload reports, all at once.
//! 2. `decide`: one call of [`decide::decide_cluster`] in the core (validate, ownership, pause, build, plan,
//!    status, events, next check).
//! 3. `carry out`: the decision's stages with server-side apply (one field manager), a stage's steps at once; the
//!    legacy finalizer `observability.merlionos.org/finalizer` (v1.0.0 added it) removed where found; the status
//!    written through the status subresource only when it changed, as a JSON patch of this controller's fields
//!    and condition types guarded by the resourceVersion (a write that lost to another writer is retried at once,
//!    see [`Error::Stale`]); then the events.
//!
//! Deletion: no finalizer holds it up; children go by garbage collection, and the operator's own cleanup (metric
//! series, an event) runs on the watch's delete event.
//!
//! # Guarantees
//! - Idle clusters cost reads only: no write happens unless the plan or the status changed.
//! - A failing cluster is retried with per-object exponential backoff and never blocks the others.
//! - Cleanup needs no external system (object storage, database, webhook): deletion always completes;
//!   children go by garbage collection through their ownerReferences.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self as runtime, Controller};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tsdb_operator_core::constants::{FIELD_MANAGER, FINALIZER, conditions, labels, ports, reasons};
use tsdb_operator_core::crd::{Phase, PrometheusCluster, PrometheusClusterStatus};
use tsdb_operator_core::decide::{self, ClusterDecision, ClusterObservation, Next};
use tsdb_operator_core::events::Action;
use tsdb_operator_core::status::{self, Problem};
use tsdb_operator_core::storage;

use super::{Context, now, strip_managed_fields};
use crate::error_chain;
use crate::kube::{children, decode};

/// Name of the controller (seed).
pub const CONTROLLER: &str = "prometheuscluster";

/// Why a reconcile failed. Retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object has no namespace.
    #[error("failed to reconcile: the PrometheusCluster has no namespace")]
    MissingNamespace,
    /// Reading or changing children failed.
    #[error(transparent)]
    Children(#[from] children::Error),
    /// Reading a referenced Secret failed.
    #[error("failed to read Secret {name}")]
    ReadSecret {
        /// The Secret.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Writing the status failed.
    #[error("failed to write the status")]
    WriteStatus(#[source] kube::Error),
    /// Removing the finalizer failed.
    #[error("failed to remove the finalizer")]
    RemoveFinalizer(#[source] kube::Error),
    /// The object changed after it was read (another writer's status, a finalizer): not a failure; its watch
    /// event brings a fresh reconcile.
    #[error("the PrometheusCluster changed while it was reconciled")]
    Stale,
}

impl Error {
    /// Every category [`Error::category`] returns.
    pub const CATEGORIES: [&'static str; 11] = [
        "MissingNamespace",
        "ReadChild",
        "ApplyChild",
        "DeleteChild",
        "ListPods",
        "ListClaims",
        "ReadStorageClass",
        "ReadSecret",
        "WriteStatus",
        "RemoveFinalizer",
        "Conflict",
    ];

    /// A short, stable name of the error's kind, the `category` label of `tsdb_operator_reconcile_errors_total`.
    pub fn category(&self) -> &'static str {
        match self {
            Error::MissingNamespace => "MissingNamespace",
            Error::Children(e) => e.category(),
            Error::ReadSecret { .. } => "ReadSecret",
            Error::WriteStatus(_) => "WriteStatus",
            Error::RemoveFinalizer(_) => "RemoveFinalizer",
            Error::Stale => "Conflict",
        }
    }
}

/// Runs the controller until `shutdown` resolves.
///
/// Memory: the only cache is the store of PrometheusClusters behind `writer`, kept without `managedFields`; the
/// healer and the backup scheduler read the same store (`writer.as_reader()`), so the operator holds each cluster
/// once. Owned kinds are watched for their metadata only (the reconcile reads the children it needs by name) and
/// with the `managed-by` label, so memory does not grow with unrelated objects or with the size of the children.
pub async fn run(
    ctx: Arc<Context>,
    writer: reflector::store::Writer<PrometheusCluster>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    ctx.metrics.init_controller(CONTROLLER, &Error::CATEGORIES);
    let owned = super::watch_config().labels(&format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE));
    let store = writer.as_reader();
    // Decoded one object at a time: an object the operator cannot read is reported in its own status and never
    // stops the others (a typed watch fails whole LIST pages).
    let (unreadable_tx, unreadable_rx) = tokio::sync::mpsc::unbounded_channel();
    let on_delete = ctx.clone();
    let ctx_for_sweep = ctx.clone();
    let clusters = watcher(cluster_objects(&ctx), super::watch_config())
        .filter_map(move |event| {
            let tx = unreadable_tx.clone();
            std::future::ready(match event {
                Ok(event) => decode::decode_event(event, &mut |bad| {
                    let _ = tx.send(bad);
                })
                .map(Ok),
                Err(e) => Some(Err(e)),
            })
        })
        .inspect(move |event| {
            // The object is gone: the operator's own cleanup, with no finalizer holding the deletion up.
            if let Ok(watcher::Event::Delete(pc)) = event {
                cleanup(pc, &on_delete);
            }
        })
        .modify(strip_managed_fields);
    let clusters = reflector::reflector(writer, clusters).applied_objects();
    let reporter = report_unreadable(ctx.clone(), unreadable_rx);
    // prometheus-operator's monitors: every change reconciles the clusters that select monitors.
    let (monitors_tx, monitors_rx) = tokio::sync::mpsc::unbounded_channel();
    let monitor_cache = super::monitors::run(ctx.clone(), ctx.monitors.clone(), monitors_tx);
    let selecting = store.clone();
    let monitor_triggers = futures::stream::unfold(monitors_rx, |mut rx| async move {
        rx.recv().await?;
        while rx.try_recv().is_ok() {}
        Some(((), rx))
    })
    .flat_map(move |()| {
        let refs: Vec<reflector::ObjectRef<PrometheusCluster>> = selecting
            .state()
            .iter()
            .filter(|pc| pc.spec.selects_prometheus_operator_objects())
            .map(|pc| reflector::ObjectRef::from_obj(pc.as_ref()))
            .collect();
        futures::stream::iter(refs)
    });
    // Each watch backs off and recovers on its own; errors are logged here and never reach the controller, which
    // would pause all its watches together after an error of any of them (after an API-server restart every watch
    // must relist once, and those pauses added up to 10 s).
    let controller = Controller::for_stream(recovering(clusters), store)
        .owns_stream(recovering(owned_metadata::<StatefulSet>(&ctx, &owned)))
        .owns_stream(recovering(owned_metadata::<Service>(&ctx, &owned)))
        .owns_stream(recovering(owned_metadata::<ConfigMap>(&ctx, &owned)))
        .reconcile_on(monitor_triggers)
        .with_config(kube::runtime::controller::Config::default().concurrency(ctx.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "reconcile failed");
            }
        });
    // The reporter ends when the watch (and with it the sender) is dropped; the monitor cache and the sweep with
    // the controller.
    tokio::select! {
        () = async { tokio::join!(controller, reporter); } => {}
        () = monitor_cache => {}
        () = sweep_discovery_orphans(ctx_for_sweep) => {}
    }
}

/// How often the discovery objects of clusters deleted behind the operator's back are looked for.
const SWEEP_PERIOD: Duration = Duration::from_mins(30);

/// Deletes the discovery Roles and RoleBindings in other namespaces whose cluster no longer exists
/// ([`decide::orphaned_elsewhere`]): those of a cluster deleted while the operator was not running, or whose delete
/// event a relisting watch did not deliver. At start and every [`SWEEP_PERIOD`]; only when watching every namespace
/// (with `--watch-namespace` no such objects are made).
async fn sweep_discovery_orphans(ctx: Arc<Context>) {
    if ctx.namespace.is_some() {
        return std::future::pending().await;
    }
    let mut tick = tokio::time::interval(SWEEP_PERIOD);
    loop {
        tick.tick().await;
        match sweep_once(&ctx).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "deleted discovery objects of clusters that no longer exist"),
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "looking for discovery objects of deleted clusters failed");
            }
        }
    }
}

async fn sweep_once(ctx: &Context) -> Result<usize, children::Error> {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let labelled = kube::api::ListParams::default().labels(labels::DISCOVERY_FOR);
    let list_error = |kind: &str| {
        let kind = kind.to_owned();
        move |source| children::Error::Read { kind, name: format!("-l {}", labels::DISCOVERY_FOR), source }
    };
    // The objects first, then the clusters: an object whose cluster is missing from the later list was deleted.
    let roles = Api::<Role>::all(ctx.client.clone()).list_metadata(&labelled).await.map_err(list_error("Role"))?;
    let bindings = Api::<RoleBinding>::all(ctx.client.clone())
        .list_metadata(&labelled)
        .await
        .map_err(list_error("RoleBinding"))?;
    let clusters = cluster_objects(ctx)
        .list_metadata(&kube::api::ListParams::default())
        .await
        .map_err(list_error("PrometheusCluster"))?;
    let live: BTreeSet<String> = clusters.items.iter().filter_map(|c| c.metadata.uid.clone()).collect();
    let entry = |kind: &str, meta: &kube::core::ObjectMeta| {
        let uid = meta.labels.as_ref()?.get(labels::DISCOVERY_FOR)?.clone();
        let key = tsdb_operator_core::plan::ChildKey::elsewhere(
            "rbac.authorization.k8s.io/v1",
            kind,
            meta.name.as_deref()?,
            meta.namespace.as_deref()?,
        );
        Some((key, uid))
    };
    let found: Vec<_> = roles
        .items
        .iter()
        .filter_map(|r| entry("Role", &r.metadata))
        .chain(bindings.items.iter().filter_map(|b| entry("RoleBinding", &b.metadata)))
        .collect();
    let steps = decide::orphaned_elsewhere(&found, &live);
    for step in &steps {
        children::execute_step(&ctx.client, "", step).await?;
    }
    Ok(steps.len())
}

/// PrometheusClusters as dynamic objects, in the watched namespace or all namespaces.
fn cluster_objects(ctx: &Context) -> Api<DynamicObject> {
    let ar = ApiResource::erase::<PrometheusCluster>(&());
    match &ctx.namespace {
        Some(ns) => Api::namespaced_with(ctx.client.clone(), ns, &ar),
        None => Api::all_with(ctx.client.clone(), &ar),
    }
}

/// Says in the status of each object the operator cannot read why, once per change (the status write is skipped
/// when the status already says so), and lets such an object be deleted: its finalizer is removed as for any other.
async fn report_unreadable(
    ctx: Arc<Context>,
    mut unreadable: tokio::sync::mpsc::UnboundedReceiver<decode::Unreadable>,
) {
    while let Some(bad) = unreadable.recv().await {
        let pc = &bad.object;
        let (ns, name) = (pc.namespace().unwrap_or_default(), pc.name_any());
        let result = if pc.metadata.deletion_timestamp.is_some() {
            finalize(&Api::namespaced(ctx.client.clone(), &ns), pc).await.map(|_| ())
        } else {
            let decision = decide::decide_unreadable(pc, bad.message(), now());
            if decision.status_changed {
                tracing::warn!(
                    namespace = ns,
                    name,
                    field = bad.field,
                    reason = bad.reason,
                    "cannot read the PrometheusCluster; reported in its status"
                );
            }
            let api = Api::namespaced(ctx.client.clone(), &ns);
            carry_out(&ctx, &api, pc, &decision, &ClusterObservation::of(pc, &BTreeMap::new()))
                .await
                .map(|()| ctx.metrics.set_phase(&ns, &name, decision.phase()))
        };
        if let Err(e) = result {
            // The object's next watch event (or the relist after an outage) brings it back.
            tracing::warn!(namespace = ns, name, error = %error_chain(&e), "failed to report an unreadable PrometheusCluster");
        }
    }
}

/// Changes to the metadata of owned objects of kind `K` (metadata-only watch).
fn owned_metadata<K>(
    ctx: &Context,
    config: &watcher::Config,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    watcher(ctx.api::<PartialObjectMeta<K>>(), config.clone()).touched_objects()
}

/// `stream` with its own backoff after errors ([`super::watch_backoff`]), the errors logged and dropped.
fn recovering<T, S>(stream: S) -> impl futures::Stream<Item = Result<T, watcher::Error>> + Send + 'static
where
    S: futures::Stream<Item = Result<T, watcher::Error>> + Send + 'static,
    T: Send + 'static,
{
    stream.backoff(super::watch_backoff()).filter(|item| {
        if let Err(e) = item {
            tracing::debug!(error = %e, "watch error; retrying");
        }
        std::future::ready(item.is_ok())
    })
}

fn key_of(pc: &PrometheusCluster) -> String {
    format!("{}/{}", pc.namespace().unwrap_or_default(), pc.name_any())
}

/// One reconcile of one PrometheusCluster.
#[tracing::instrument(skip(pc, ctx), fields(namespace = pc.namespace(), name = pc.name_any()))]
pub async fn reconcile(pc: Arc<PrometheusCluster>, ctx: Arc<Context>) -> Result<runtime::Action, Error> {
    let started = Instant::now();
    let key = key_of(&pc);
    let ns = pc.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<PrometheusCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let result = if pc.metadata.deletion_timestamp.is_some() {
        finalize(&api, &pc).await
    } else {
        Box::pin(apply(&pc, &ctx, &api)).await
    };
    ctx.metrics.observe_reconcile(CONTROLLER, started.elapsed(), result.as_ref().err().map(Error::category));
    if result.is_ok() {
        ctx.backoff.success(&key);
    }
    if let Err(e) = &result
        && pc.metadata.deletion_timestamp.is_none()
        && !matches!(e, Error::Stale | Error::WriteStatus(_) | Error::MissingNamespace)
    {
        report_failure(&ctx, &pc, e).await;
    }
    result
}

/// Says in the status that the reconcile failed and why (a read refused by RBAC names the resource and verb), so
/// the status never goes on saying the cluster matches its spec. Best effort: the reconcile is retried anyway.
async fn report_failure(ctx: &Context, pc: &PrometheusCluster, error: &Error) {
    let status = status::build_failure_status(pc.status.as_ref(), pc.metadata.generation, &error_chain(error), now());
    match write_status(ctx, pc, &status).await {
        Ok(_) => {
            let phase = status.phase.unwrap_or(Phase::Degraded);
            ctx.metrics.set_phase(&pc.namespace().unwrap_or_default(), &pc.name_any(), phase);
        }
        Err(e) => tracing::debug!(error = %error_chain(&e), "failed to report the failed reconcile in the status"),
    }
}

/// Removes the finalizer `observability.merlionos.org/finalizer` from a live object that carries it (set by
/// v1.0.0 or by earlier versions of this operator). The operator no longer adds it: it guarded only the operator's
/// own cleanup (metric series, an event), which now runs on the watch's delete event, while it blocked the deletion
/// of the object, and of its namespace, for as long as the operator was down or uninstalled. The JSON patch tests
/// the finalizer list first, so a finalizer another controller added meanwhile is never dropped. Returns the object
/// as the server holds it after the patch (its resourceVersion guards the status write that follows), or `None`
/// when there was nothing to remove.
async fn drop_legacy_finalizer(
    api: &Api<PrometheusCluster>,
    pc: &PrometheusCluster,
) -> Result<Option<PrometheusCluster>, Error> {
    if !pc.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(None);
    }
    let rest: Vec<String> = pc.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    let patch =
        finalizer_patch(pc.finalizers(), &rest).map_err(|e| Error::RemoveFinalizer(kube::Error::SerdeError(e)))?;
    let updated = api.patch(&pc.name_any(), &PatchParams::default(), &patch).await.map_err(Error::RemoveFinalizer)?;
    Ok(Some(updated))
}

/// A JSON patch replacing the finalizer list `current` (absent when empty) with `new`, after testing that the list
/// on the server is still `current`.
fn finalizer_patch(current: &[String], new: &[String]) -> Result<Patch<()>, serde_json::Error> {
    let (old, new) = (
        if current.is_empty() { serde_json::Value::Null } else { json!(current) },
        if new.is_empty() { serde_json::Value::Null } else { json!(new) },
    );
    let ops = json!([
        {"op": "test", "path": "/metadata/finalizers", "value": old},
        {"op": "add", "path": "/metadata/finalizers", "value": new},
    ]);
    Ok(Patch::Json(serde_json::from_value(ops)?))
}

/// Deletion: removes the legacy finalizer if the object still carries one (idempotent); the cleanup runs when the
/// object is gone ([`cleanup`], on the watch's delete event).
async fn finalize(api: &Api<PrometheusCluster>, pc: &PrometheusCluster) -> Result<runtime::Action, Error> {
    match drop_legacy_finalizer(api, pc).await {
        Ok(_) => Ok(runtime::Action::await_change()),
        Err(Error::RemoveFinalizer(kube::Error::Api(s))) if s.code == 404 => Ok(runtime::Action::await_change()),
        Err(e) => Err(e),
    }
}

/// Retry with per-object exponential backoff.
#[allow(clippy::needless_pass_by_value)] // the signature kube-runtime's Controller::run expects
pub fn error_policy(pc: Arc<PrometheusCluster>, error: &Error, ctx: Arc<Context>) -> runtime::Action {
    if matches!(error, Error::Stale) {
        // The newer version's watch event normally comes first; this only covers a missed one.
        tracing::debug!(
            namespace = pc.namespace(),
            name = pc.name_any(),
            "object changed meanwhile; reconciling again"
        );
        return runtime::Action::requeue(Duration::from_millis(500));
    }
    let delay = ctx.backoff.failure(&key_of(&pc));
    tracing::warn!(namespace = pc.namespace(), name = pc.name_any(), category = error.category(),
        error = %error_chain(error), retry_in = ?delay, "reconcile failed");
    runtime::Action::requeue(delay)
}

/// Observes the cluster, asks the core once ([`decide::decide_cluster`]) and carries the decision out.
async fn apply(pc: &PrometheusCluster, ctx: &Context, api: &Api<PrometheusCluster>) -> Result<runtime::Action, Error> {
    let ns = pc.namespace().ok_or(Error::MissingNamespace)?;
    let name = pc.name_any();

    // observe: the reads are independent and sent at once.
    let monitors = pc.spec.selects_prometheus_operator_objects().then(|| ctx.monitors.snapshot(&ns));
    let reads =
        decide::reads_with_monitors(pc, monitors.as_ref().map(super::monitors::MonitorSnapshot::observed).as_ref());
    let (children, secrets, pods, claims) = tokio::join!(
        children::observe_children(&ctx.client, &ns, &name, &ctx.settings, &reads.elsewhere),
        observe_secrets(ctx, &ns, &reads.secrets),
        children::observe_pods(&ctx.client, &ns, &name),
        children::observe_claims(&ctx.client, &ns, &name),
    );
    let (children, secrets, pods, claims) = (children?, secrets?, pods?, claims?);
    let class = storage::class_to_check(&pc.spec.storage, &claims);
    let (class_allows_expansion, agent_problems) = tokio::join!(
        async {
            match &class {
                Some(class) => children::observe_class_expansion(&ctx.client, class).await,
                None => Ok(None),
            }
        },
        observe_reload_problems(ctx, &pods),
    );
    let observation = ClusterObservation {
        cluster: pc,
        children: &children,
        pods: &pods,
        claims: &claims,
        class_allows_expansion: class_allows_expansion?,
        secrets: Some(&secrets),
        agent_problems: &agent_problems,
        monitors: monitors.as_ref().map(super::monitors::MonitorSnapshot::observed),
    };

    // decide
    let decision = decide::decide_cluster(&observation, &ctx.settings, now());

    // carry out
    carry_out(ctx, api, pc, &decision, &observation).await?;
    ctx.metrics.set_phase(&ns, &name, decision.phase());
    Ok(match decision.next {
        Next::AwaitChange => runtime::Action::await_change(),
        Next::After(delay) => runtime::Action::requeue(delay),
    })
}

/// Carries out a decision: the stages in order (a stage's steps at once, its events after they succeeded), the
/// legacy finalizer, the status, then the decision's events.
async fn carry_out(
    ctx: &Context,
    api: &Api<PrometheusCluster>,
    pc: &PrometheusCluster,
    decision: &ClusterDecision,
    observation: &ClusterObservation<'_>,
) -> Result<(), Error> {
    let ns = pc.namespace().ok_or(Error::MissingNamespace)?;
    let reference = pc.object_ref(&());
    let actor = ctx.events.operator_actor();
    for stage in &decision.stages {
        let done = futures::future::try_join_all(
            stage.steps.iter().map(|step| children::execute_step(&ctx.client, &ns, step)),
        )
        .await;
        if let Err(e) = done {
            // Say so in the status before retrying: it must never keep saying the cluster matches the spec.
            let status = decision.status_after_failure(observation, &error_chain(&e));
            if let Err(write) = write_status(ctx, pc, &status).await {
                tracing::debug!(error = %error_chain(&write), "failed to report the failed apply in the status");
            }
            return Err(e.into());
        }
        for event in &stage.events {
            ctx.events.publish(&reference, actor.clone(), event.clone());
        }
    }
    // Children are garbage collected through their ownerReferences; no finalizer holds up a deletion.
    let updated = if decision.remove_legacy_finalizer { drop_legacy_finalizer(api, pc).await? } else { None };
    let pc = updated.as_ref().unwrap_or(pc);
    if decision.status_changed {
        write_status(ctx, pc, &decision.status).await?;
    }
    for event in &decision.events {
        ctx.events.publish(&reference, actor.clone(), event.clone());
    }
    Ok(())
}

/// Asks the agent of each running pod whether Prometheus accepted the current configuration. An agent that
/// cannot be reached says nothing (self-healing judges reachability, not this).
async fn observe_reload_problems(ctx: &Context, pods: &[Pod]) -> Vec<Problem> {
    let asks = pods.iter().filter_map(|pod| {
        let status = pod.status.as_ref()?;
        let ip = status.pod_ip.clone()?;
        (status.phase.as_deref() == Some("Running")).then_some(async move {
            let agent = crate::agent_client::status(&ctx.http, &ip, ports::AGENT).await.ok()?;
            (!agent.last_reload_successful).then(|| Problem {
                reason: reasons::CONFIG_RELOAD_FAILED.to_owned(),
                message: format!(
                    "pod {}: Prometheus rejected the new configuration and keeps running the previous one: {}",
                    pod.name_any(),
                    agent.last_reload_error.unwrap_or_default()
                ),
            })
        })
    });
    futures::future::join_all(asks).await.into_iter().flatten().collect()
}

/// The keys of each Secret in `names` that exists.
async fn observe_secrets(
    ctx: &Context,
    ns: &str,
    names: &BTreeSet<String>,
) -> Result<BTreeMap<String, BTreeSet<String>>, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let mut found = BTreeMap::new();
    for name in names {
        let secret = api.get_opt(name).await.map_err(|source| Error::ReadSecret { name: name.clone(), source })?;
        if let Some(s) = secret {
            let keys = s
                .data
                .iter()
                .flat_map(|d| d.keys().cloned())
                .chain(s.string_data.iter().flat_map(|d| d.keys().cloned()))
                .collect();
            found.insert(name.clone(), keys);
        }
    }
    Ok(found)
}

/// Writes `status` when it differs from the object's; returns whether it wrote.
async fn write_status(ctx: &Context, pc: &PrometheusCluster, status: &PrometheusClusterStatus) -> Result<bool, Error> {
    if pc.status.as_ref() == Some(status) {
        return Ok(false);
    }
    // Only the fields and condition types this controller owns are written, guarded by the resourceVersion the
    // status was computed from; self-healing and backups write theirs the same way, so no writer drops another's.
    let mut fields = vec![("phase", json!(status.phase)), ("readyReplicas", json!(status.ready_replicas))];
    if let Some(g) = status.observed_generation {
        fields.push(("observedGeneration", json!(g)));
    }
    let recorded = pc.status.as_ref().is_some_and(|s| !s.discovery_namespaces.is_empty());
    if recorded || !status.discovery_namespaces.is_empty() {
        fields.push(("discoveryNamespaces", json!(status.discovery_namespaces)));
    }
    let ours: Vec<_> =
        status.conditions.iter().filter(|c| OWNED_CONDITIONS.contains(&c.type_.as_str())).cloned().collect();
    match super::patch_owned_status(ctx, pc, FIELD_MANAGER, fields, &OWNED_CONDITIONS, Some(ours)).await {
        Ok(()) => Ok(true),
        // The resourceVersion test failed (422) when the object changed since it was read.
        Err(kube::Error::Api(s)) if s.code == 422 || s.code == 409 => {
            let api: Api<PrometheusCluster> = Api::namespaced(ctx.client.clone(), &pc.namespace().unwrap_or_default());
            match api.get_opt(&pc.name_any()).await {
                Ok(Some(now)) if now.resource_version() != pc.resource_version() => Err(Error::Stale),
                _ => Err(Error::WriteStatus(kube::Error::Api(s))),
            }
        }
        Err(e) => Err(Error::WriteStatus(e)),
    }
}

/// The condition types the cluster controller writes.
const OWNED_CONDITIONS: [&str; 6] = conditions::WRITTEN_BY_CLUSTER_DECISION;

/// Cleanup when the cluster is deleted: bounded and free of external dependencies. Children are garbage
/// collected through their ownerReferences; the cluster's metric series are removed (seed behaviour).
fn cleanup(pc: &PrometheusCluster, ctx: &Context) {
    let ns = pc.namespace().unwrap_or_default();
    let name = pc.name_any();
    ctx.metrics.delete_cluster(&ns, &name);
    let reference = pc.object_ref(&());
    // Recording the event never holds up deletion: publishing does not wait for the API server.
    ctx.events.publish(&reference, ctx.events.operator_actor(), Action::Finalized);
    // The discovery objects in other namespaces, which no ownerReference takes away.
    let steps = decide::cleanup_when_gone(pc);
    if !steps.is_empty() {
        let client = ctx.client.clone();
        tokio::spawn(async move {
            for step in &steps {
                if let Err(e) = children::execute_step(&client, &ns, step).await {
                    tracing::warn!(namespace = ns, name, error = %error_chain(&e),
                        "failed to delete a discovery object of a deleted cluster; remove it with kubectl");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_includes_sources() {
        let e = Error::WriteStatus(kube::Error::LinesCodecMaxLineLengthExceeded);
        assert!(error_chain(&e).starts_with("failed to write the status: "));
        assert_eq!(e.category(), "WriteStatus");
    }
}
