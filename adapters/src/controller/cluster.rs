//! The `prometheuscluster` controller. I/O: the Kubernetes API.
//!
//! # Flow (one reconcile)
//! 1. The finalizer `observability.merlionos.org/finalizer` is added right after the children are applied (it only
//!    guards the operator's own cleanup; children go by garbage collection); on deletion, [`cleanup`] runs.
//! 2. `validate`: an invalid spec that the API server admitted gets phase `Failed` with the field errors in the
//!    `Degraded` condition; nothing is changed.
//! 3. `observe`: the children by name, the referenced Secrets by name, the pods by label.
//! 4. `paused`: status only, with the `Paused` condition.
//! 5. `build` and `plan` in the core; each step is executed with server-side apply (one field manager).
//! 6. `status`: written through the status subresource, only when it changed: a JSON patch of this controller's
//!    fields and condition types, guarded by the resourceVersion (a write that lost to another writer is retried
//!    at once, see [`Error::Stale`]).
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
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tsdb_operator_core::constants::{FIELD_MANAGER, FINALIZER, conditions, labels, ports, reasons};
use tsdb_operator_core::crd::{Phase, PrometheusCluster, PrometheusClusterStatus};
use tsdb_operator_core::events::Action as Did;
use tsdb_operator_core::plan::{ApplyReason, ChildKey, Step, plan_objects};
use tsdb_operator_core::status::{Problem, StatusInput, build_status};
use tsdb_operator_core::{build, secrets, validate};

use super::{Context, now, strip_managed_fields};
use crate::kube::children;

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
    /// Adding the finalizer failed.
    #[error("failed to add the finalizer")]
    AddFinalizer(#[source] kube::Error),
    /// Removing the finalizer failed.
    #[error("failed to remove the finalizer")]
    RemoveFinalizer(#[source] kube::Error),
    /// The object changed after it was read (another writer's status, a finalizer): not a failure; its watch
    /// event brings a fresh reconcile.
    #[error("the PrometheusCluster changed while it was reconciled")]
    Stale,
}

impl Error {
    /// Short category for metrics and event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::MissingNamespace => "MissingNamespace",
            Error::Children(e) => e.category(),
            Error::ReadSecret { .. } => "ReadSecret",
            Error::WriteStatus(_) => "WriteStatus",
            Error::AddFinalizer(_) => "AddFinalizer",
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
    let owned = super::watch_config().labels(&format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE));
    let store = writer.as_reader();
    let clusters = watcher(ctx.api::<PrometheusCluster>(), super::watch_config()).modify(strip_managed_fields);
    let clusters = reflector::reflector(writer, clusters).applied_objects();
    // Each watch backs off and recovers on its own; errors are logged here and never reach the controller, which
    // would pause all its watches together after an error of any of them (after an API-server restart every watch
    // must relist once, and those pauses added up to 10 s).
    Controller::for_stream(recovering(clusters), store)
        .owns_stream(recovering(owned_metadata::<StatefulSet>(&ctx, &owned)))
        .owns_stream(recovering(owned_metadata::<Service>(&ctx, &owned)))
        .owns_stream(recovering(owned_metadata::<ConfigMap>(&ctx, &owned)))
        .with_config(kube::runtime::controller::Config::default().concurrency(ctx.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "reconcile failed");
            }
        })
        .await;
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
pub async fn reconcile(pc: Arc<PrometheusCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let key = key_of(&pc);
    let ns = pc.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<PrometheusCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let result = if pc.metadata.deletion_timestamp.is_some() {
        finalize(&api, &pc, &ctx).await
    } else {
        apply(&pc, &ctx, &api).await
    };
    ctx.metrics.observe_reconcile(CONTROLLER, started.elapsed(), result.as_ref().err().map(Error::category));
    if result.is_ok() {
        ctx.backoff.success(&key);
    }
    result
}

/// Adds the finalizer to a live object, after the children were applied, instead of in a reconcile of its own
/// (kube's `finalizer` helper would add it and wait for the watch event of its own patch, one round trip later).
/// A JSON patch that first tests the finalizer list it was computed from: a finalizer another controller added
/// meanwhile makes it fail (and the reconcile is retried), while status writes by self-healing or backups do not.
/// Returns the object as the server holds it after the patch (its resourceVersion guards the status write that
/// follows), or `None` when the finalizer was already there.
async fn ensure_finalizer(
    api: &Api<PrometheusCluster>,
    pc: &PrometheusCluster,
) -> Result<Option<PrometheusCluster>, Error> {
    if pc.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(None);
    }
    let mut finalizers = pc.finalizers().to_vec();
    finalizers.push(FINALIZER.to_owned());
    let patch =
        finalizer_patch(pc.finalizers(), &finalizers).map_err(|e| Error::AddFinalizer(kube::Error::SerdeError(e)))?;
    let updated = api.patch(&pc.name_any(), &PatchParams::default(), &patch).await.map_err(Error::AddFinalizer)?;
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

/// Deletion: run [`cleanup`] and remove the finalizer (idempotent; nothing to do when it is already gone).
/// The removal tests the finalizer list first, so it never drops a finalizer another controller added meanwhile.
async fn finalize(api: &Api<PrometheusCluster>, pc: &PrometheusCluster, ctx: &Context) -> Result<Action, Error> {
    if !pc.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    cleanup(pc, ctx);
    let rest: Vec<String> = pc.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    let patch =
        finalizer_patch(pc.finalizers(), &rest).map_err(|e| Error::RemoveFinalizer(kube::Error::SerdeError(e)))?;
    match api.patch(&pc.name_any(), &PatchParams::default(), &patch).await {
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Action::await_change()),
        Err(e) => Err(Error::RemoveFinalizer(e)),
    }
}

/// Retry with per-object exponential backoff.
#[allow(clippy::needless_pass_by_value)] // the signature kube-runtime's Controller::run expects
pub fn error_policy(pc: Arc<PrometheusCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    if matches!(error, Error::Stale) {
        // The newer version's watch event normally comes first; this only covers a missed one.
        tracing::debug!(
            namespace = pc.namespace(),
            name = pc.name_any(),
            "object changed meanwhile; reconciling again"
        );
        return Action::requeue(Duration::from_millis(500));
    }
    let delay = ctx.backoff.failure(&key_of(&pc));
    tracing::warn!(namespace = pc.namespace(), name = pc.name_any(), category = error.category(),
        error = %error_chain(error), retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Renders an error with its sources, for logs and conditions.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

async fn apply(pc: &PrometheusCluster, ctx: &Context, api: &Api<PrometheusCluster>) -> Result<Action, Error> {
    let ns = pc.namespace().ok_or(Error::MissingNamespace)?;
    let name = pc.name_any();
    let uid = pc.uid().unwrap_or_default();
    let reference = pc.object_ref(&());
    let actor = ctx.events.operator_actor();

    // validate
    if let Err(errors) = validate::validate_cluster(&pc.spec) {
        let updated = ensure_finalizer(api, pc).await?;
        let pc = updated.as_ref().unwrap_or(pc);
        let message = errors.to_string();
        let status = compute_status(pc, None, &[], Some(message.clone()), &[]);
        if write_status(ctx, pc, &status).await? {
            ctx.events.publish(&reference, actor, Did::Rejected { reason: message });
        }
        return Ok(Action::await_change());
    }

    // observe
    let pdb_version = ctx.settings.pdb_api.api_version();
    // The reads are independent: children, referenced Secrets and pods are read at once.
    let (observed, secret_problems, pods) = tokio::join!(
        children::observe_children(&ctx.client, &ns, &name, &uid, pdb_version),
        observe_secret_problems(ctx, &ns, pc),
        children::observe_pods(&ctx.client, &ns, &name),
    );
    let observed = match observed {
        Ok(o) => o,
        Err(e @ children::Error::NotOwned { .. }) => {
            let problem = Problem { reason: "NameConflict".into(), message: e.to_string() };
            let status = compute_status(pc, None, &[], None, &[problem]);
            write_status(ctx, pc, &status).await?;
            return Ok(Action::requeue(Duration::from_mins(1)));
        }
        Err(e) => return Err(e.into()),
    };
    let mut problems = secret_problems?;
    let pods = pods?;
    let sts: Option<StatefulSet> = observed
        .iter()
        .find(|(k, _)| k.kind == "StatefulSet")
        .and_then(|(_, v)| serde_json::from_value(v.clone()).ok());

    if pc.spec.paused {
        let updated = ensure_finalizer(api, pc).await?;
        let pc = updated.as_ref().unwrap_or(pc);
        problems.extend(observe_reload_problems(ctx, &pods).await);
        let status = compute_status(pc, sts.as_ref(), &pods, None, &problems);
        let was_paused = pc
            .status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == conditions::PAUSED && c.status == "True"));
        write_status(ctx, pc, &status).await?;
        if !was_paused {
            ctx.events.publish(&reference, actor, Did::Paused);
        }
        ctx.metrics.set_phase(&ns, &name, status.phase.unwrap_or(Phase::Provisioning));
        return Ok(Action::await_change());
    }

    // build + plan
    // Hashed and compared as typed objects; only the objects to apply become JSON.
    let plan = match build::build(pc, &ctx.settings).and_then(|d| plan_objects(&d, &ctx.settings, &observed)) {
        Ok(plan) => plan,
        Err(e) => {
            let message = format!("{e}");
            let status = compute_status(pc, sts.as_ref(), &pods, Some(message.clone()), &[]);
            if write_status(ctx, pc, &status).await? {
                ctx.events.publish(&reference, actor, Did::Rejected { reason: message });
            }
            return Ok(Action::await_change());
        }
    };

    // apply: independent children at once, in dependency stages (configuration and Service, then the
    // StatefulSet and its budget, then deletions), so the pods never start before their ConfigMap exists.
    for stage in stages(&plan.steps) {
        futures::future::try_join_all(stage.iter().map(|step| children::execute_step(&ctx.client, &ns, step))).await?;
        for step in stage {
            for action in describe_step(step, sts.as_ref()) {
                ctx.events.publish(&reference, actor.clone(), action);
            }
        }
    }
    // The finalizer only guards the operator's own cleanup (metric series, an event); children are garbage
    // collected through their ownerReferences whether it is there or not. Adding it after the children keeps it
    // off the path from a new cluster to its objects.
    let updated = ensure_finalizer(api, pc).await?;
    let pc = updated.as_ref().unwrap_or(pc);

    // status
    let sts = if plan.steps.iter().any(|s| s.key().kind == "StatefulSet") {
        // Read back what the server now holds, so the phase reflects the change (Scaling, rolling).
        let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
        api.get_opt(&name).await.map_err(|e| {
            Error::Children(children::Error::Read { kind: "StatefulSet".into(), name: name.clone(), source: e })
        })?
    } else {
        sts
    };
    // After the apply: the agents' answers only matter for the status.
    problems.extend(observe_reload_problems(ctx, &pods).await);
    problems.sort_by(|a, b| a.message.cmp(&b.message));
    let status = compute_status(pc, sts.as_ref(), &pods, None, &problems);
    let old_phase = pc.status.as_ref().and_then(|s| s.phase);
    write_status(ctx, pc, &status).await?;
    if old_phase != status.phase
        && let Some(new) = status.phase
    {
        let from = old_phase.map(|p| p.as_str().to_owned()).unwrap_or_default();
        ctx.events.publish(&reference, actor, Did::PhaseChanged { from, to: new.as_str().to_owned() });
    }
    let phase = status.phase.unwrap_or(Phase::Provisioning);
    ctx.metrics.set_phase(&ns, &name, phase);
    let pods_running = pods.iter().any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
    Ok(next_check(phase, &plan, &observed, pods_running, !problems.is_empty()))
}

/// Groups consecutive steps that may run at once: ConfigMaps, Secrets and Services; then StatefulSets and
/// PodDisruptionBudgets; then deletions. The plan is already in that order.
fn stages(steps: &[Step]) -> Vec<&[Step]> {
    let stage_of = |s: &Step| match s {
        Step::Delete { .. } => 2,
        Step::Apply { key, .. } if matches!(key.kind.as_str(), "ConfigMap" | "Secret" | "Service") => 0,
        Step::Apply { .. } => 1,
    };
    steps.chunk_by(|a, b| stage_of(a) == stage_of(b)).collect()
}

/// When to look again, beyond the watch events (the cluster, its StatefulSet, Service and ConfigMap) that
/// already bring every change of phase:
/// - in 10 s while a problem is shown (a Secret created later sends no event this controller watches), and for
///   two minutes after a configuration change while pods run (the agent reports whether Prometheus accepted it
///   only after the kubelet updated the mounted files, and no watch event says when that happened);
/// - in 5 minutes when Active with nothing to do (reads only; a safety net);
/// - in 1 minute otherwise (pods starting or Pending: their progress arrives as StatefulSet status events, so
///   a thousand clusters waiting for nodes do not cost a hundred reads a second).
fn next_check(
    phase: Phase,
    plan: &tsdb_operator_core::plan::Plan,
    observed: &BTreeMap<ChildKey, serde_json::Value>,
    pods_running: bool,
    has_problems: bool,
) -> Action {
    let config_changed_recently = plan.steps.iter().any(|s| s.key().kind == "ConfigMap")
        || observed
            .iter()
            .find(|(k, _)| k.kind == "ConfigMap")
            .and_then(|(_, cm)| last_applied_at(cm))
            .is_some_and(|t| now().duration_since(t).as_secs() < 120);
    if has_problems || (config_changed_recently && pods_running) {
        return Action::requeue(Duration::from_secs(10));
    }
    match phase {
        Phase::Active if plan.is_empty() => Action::requeue(Duration::from_mins(5)),
        _ => Action::requeue(Duration::from_mins(1)),
    }
}

/// When the operator's field manager last applied `object`, from its managedFields.
fn last_applied_at(object: &serde_json::Value) -> Option<jiff::Timestamp> {
    object
        .pointer("/metadata/managedFields")?
        .as_array()?
        .iter()
        .filter(|m| m["manager"] == FIELD_MANAGER && m["operation"] == "Apply")
        .filter_map(|m| m["time"].as_str()?.parse::<jiff::Timestamp>().ok())
        .max()
}

/// The events a step stands for.
fn describe_step(step: &Step, before: Option<&StatefulSet>) -> Vec<Did> {
    match step {
        Step::Delete { key } => vec![Did::Deleted { object: key.to_string() }],
        Step::Apply { key, reason: ApplyReason::Create, .. } => vec![Did::Created { object: key.to_string() }],
        Step::Apply { key, reason: ApplyReason::Drift { field }, .. } => {
            vec![Did::Reverted { object: format!("{key} (field {field})") }]
        }
        Step::Apply { key, reason: ApplyReason::SpecChanged, manifest } => {
            let mut out = Vec::new();
            if key.kind == "StatefulSet"
                && let Some(before) = before
            {
                let old_replicas = before.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                let new_replicas = manifest.pointer("/spec/replicas").and_then(serde_json::Value::as_i64).unwrap_or(1);
                let new_replicas = i32::try_from(new_replicas).unwrap_or(i32::MAX);
                if old_replicas != new_replicas {
                    out.push(Did::Scaled { from: old_replicas, to: new_replicas });
                }
                let image_of = |v: &serde_json::Value| {
                    v.pointer("/spec/template/spec/containers")
                        .and_then(|c| c.as_array())
                        .and_then(|c| c.iter().find(|c| c["name"] == "prometheus"))
                        .and_then(|c| c["image"].as_str().map(str::to_owned))
                };
                let old_image = serde_json::to_value(before).ok().as_ref().and_then(image_of);
                let new_image = image_of(manifest);
                if let (Some(from), Some(to)) = (old_image, new_image)
                    && from != to
                {
                    out.push(Did::Upgraded { from, to });
                }
            }
            if out.is_empty() {
                out.push(Did::Updated { object: key.to_string() });
            }
            out
        }
    }
}

/// Asks the agent of each running pod whether Prometheus accepted the current configuration. An agent that
/// cannot be reached says nothing (self-healing judges reachability, not this).
async fn observe_reload_problems(ctx: &Context, pods: &[k8s_openapi::api::core::v1::Pod]) -> Vec<Problem> {
    let asks = pods.iter().filter_map(|pod| {
        let status = pod.status.as_ref()?;
        let ip = status.pod_ip.clone()?;
        (status.phase.as_deref() == Some("Running")).then_some(async move {
            let agent = crate::agent::fetch_status(&ctx.http, &ip, ports::AGENT).await.ok()?;
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

async fn observe_secret_problems(ctx: &Context, ns: &str, pc: &PrometheusCluster) -> Result<Vec<Problem>, Error> {
    let needs = secrets::required_secrets(&pc.spec);
    if needs.is_empty() {
        return Ok(Vec::new());
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for name in secrets::secret_names(&needs) {
        let secret = api.get_opt(&name).await.map_err(|source| Error::ReadSecret { name: name.clone(), source })?;
        if let Some(s) = secret {
            let keys = s
                .data
                .iter()
                .flat_map(|d| d.keys().cloned())
                .chain(s.string_data.iter().flat_map(|d| d.keys().cloned()))
                .collect();
            found.insert(name, keys);
        }
    }
    Ok(secrets::missing_secret_problems(&needs, &found))
}

fn compute_status(
    pc: &PrometheusCluster,
    sts: Option<&StatefulSet>,
    pods: &[k8s_openapi::api::core::v1::Pod],
    invalid_spec: Option<String>,
    problems: &[Problem],
) -> PrometheusClusterStatus {
    build_status(&StatusInput { cluster: pc, stateful_set: sts, pods, invalid_spec, problems, now: now() })
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
const OWNED_CONDITIONS: [&str; 4] =
    [conditions::AVAILABLE, conditions::PROGRESSING, conditions::DEGRADED, conditions::PAUSED];

/// Cleanup when the cluster is deleted: bounded and free of external dependencies. Children are garbage
/// collected through their ownerReferences; the cluster's metric series are removed (seed behaviour).
fn cleanup(pc: &PrometheusCluster, ctx: &Context) {
    let ns = pc.namespace().unwrap_or_default();
    let name = pc.name_any();
    ctx.metrics.delete_cluster(&ns, &name);
    let reference = pc.object_ref(&());
    // Recording the event never holds up deletion: publishing does not wait for the API server.
    ctx.events.publish(&reference, ctx.events.operator_actor(), Did::Finalized);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tsdb_operator_core::plan::ChildKey;

    #[test]
    fn replica_and_image_changes_are_described_as_scale_and_upgrade() {
        let before: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "demo"},
            "spec": {"replicas": 1, "serviceName": "demo", "selector": {},
                "template": {"spec": {"containers": [{"name": "prometheus", "image": "prom/prometheus:v2.53.3"}]}}}
        }))
        .unwrap();
        let manifest = json!({"spec": {"replicas": 3,
            "template": {"spec": {"containers": [{"name": "prometheus", "image": "prom/prometheus:v3.5.0"}]}}}});
        let key = ChildKey { api_version: "apps/v1".into(), kind: "StatefulSet".into(), name: "demo".into() };
        let did = describe_step(&Step::Apply { key, reason: ApplyReason::SpecChanged, manifest }, Some(&before));
        assert_eq!(
            did,
            [
                Did::Scaled { from: 1, to: 3 },
                Did::Upgraded { from: "prom/prometheus:v2.53.3".into(), to: "prom/prometheus:v3.5.0".into() }
            ]
        );
    }

    #[test]
    fn independent_children_are_applied_in_stages() {
        let apply = |kind: &str| Step::Apply {
            key: ChildKey { api_version: "v1".into(), kind: kind.into(), name: "demo".into() },
            reason: ApplyReason::Create,
            manifest: json!({}),
        };
        let delete = Step::Delete { key: ChildKey { api_version: "v1".into(), kind: "X".into(), name: "d".into() } };
        let steps = [apply("ConfigMap"), apply("Service"), apply("StatefulSet"), apply("PodDisruptionBudget"), delete];
        let sizes: Vec<usize> = stages(&steps).iter().map(|s| s.len()).collect();
        assert_eq!(sizes, [2, 2, 1]);
    }

    #[test]
    fn error_chain_includes_sources() {
        let e = Error::WriteStatus(kube::Error::LinesCodecMaxLineLengthExceeded);
        assert!(error_chain(&e).starts_with("failed to write the status: "));
        assert_eq!(e.category(), "WriteStatus");
    }
}
