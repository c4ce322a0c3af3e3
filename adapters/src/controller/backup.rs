//! The backup scheduler: runs on the leader only, decides in the core when each cluster's backup is due, asks
//! the agent of one ready replica to take it, follows the job, and records the outcome. I/O: the Kubernetes
//! API and HTTP to the agents.
//!
//! # Flow (every tick, for every PrometheusCluster with `spec.backup.enabled`)
//! 1. Make sure the agent token Secret `<name>-agent-token` exists (random token, owned by the cluster).
//! 2. If `status.backup.running` names a job, read it from that pod's agent; when it finished, write the outcome
//!    (`status.backup`, `status.lastBackupTime`, the `BackupHealthy` condition), count it in
//!    `tsdb_operator_backup_total{result}` and publish an event. A job its agent no longer knows (the agent
//!    restarted) or whose pod is gone is a failure (`AgentLost`).
//! 3. Otherwise `decide_backup` (schedule, one catch-up, jitter, suspend, the `backup-now` annotation); to run,
//!    pick the first ready replica, `POST /backup` to its agent and record the job as running.
//!
//! # Guarantees
//! - At most one backup per cluster is in flight: the running job is recorded in the status before anything
//!   else starts, and survives operator restarts (the new leader follows the same job).
//! - Status is written with a JSON patch guarded by the object's `resourceVersion` under its own field manager
//!   (`tsdb-operator-backup`); the cluster controller leaves `status.backup` and `status.lastBackupTime` out of
//!   its applies and carries `BackupHealthy` over; a stale copy of the condition is repaired at the next tick.
//! - A cluster whose backup is disabled, or that is deleted, is never backed up again; a backup running when
//!   backups were disabled is still followed and recorded.
//! - The operator never reads bucket credentials: the agent reads them from its mounted Secret.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, PostParams};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use serde_json::json;
use tsdb_operator_core::backup::decide::{DecideInput, Decision, decide_backup};
use tsdb_operator_core::backup::manifest::SourceCluster;
use tsdb_operator_core::backup::protocol::{BackupDefaults, BackupRequest, FailureReason, TOKEN_KEY, resolve_store};
use tsdb_operator_core::backup::retention::RetentionPolicy;
use tsdb_operator_core::backup::status::{
    Outcome, backup_condition, merge_backup_condition, status_finished, status_skipped, status_started,
};
use tsdb_operator_core::backup::{backup_id, from_time};
use tsdb_operator_core::build::backup::agent_token_secret;
use tsdb_operator_core::constants::{BACKUP_FIELD_MANAGER, annotations, conditions, labels, ports};
use tsdb_operator_core::crd::{BackupStatus, PrometheusCluster};
use tsdb_operator_core::events::Action as Did;
use tsdb_operator_core::schedule::parse_schedule;

use super::Context;
use crate::backup::client;
use crate::metrics::BackupLabels;

/// Settings of the backup scheduler.
#[derive(Clone, Debug)]
pub struct BackupConfig {
    /// Operator-wide defaults (`--s3-endpoint`, `--s3-region`, `--backup-dir`).
    pub defaults: BackupDefaults,
    /// Time between two passes.
    pub tick: Duration,
    /// Objects no backup references are deleted only when older than this.
    pub gc_grace: Duration,
    /// A job still running after this long is given up (`AgentLost`).
    pub max_duration: Duration,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            defaults: BackupDefaults::default(),
            tick: Duration::from_secs(15),
            gc_grace: Duration::from_hours(1),
            max_duration: Duration::from_hours(6),
        }
    }
}

/// Polls of a running job that may fail in a row before it counts as lost.
const MAX_POLL_FAILURES: u32 = 5;

/// Labels of the per-cluster backup gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    namespace: String,
    cluster: String,
}

/// Labels of the backup size gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    namespace: String,
    cluster: String,
    /// `total` or `uploaded`.
    kind: String,
}

/// The scheduler's metrics.
#[derive(Clone)]
struct BackupMetrics {
    last_success: Family<ClusterLabels, Gauge>,
    duration: Family<ClusterLabels, Histogram>,
    bytes: Family<BytesLabels, Gauge>,
}

impl BackupMetrics {
    fn register(ctx: &Context) -> Self {
        let m = Self {
            last_success: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 10800.0])
            }),
            bytes: Family::default(),
        };
        ctx.metrics.with_registry(|r| {
            r.register(
                "tsdb_operator_backup_last_success_timestamp_seconds",
                "Unix time of the last successful backup of each cluster",
                m.last_success.clone(),
            );
            r.register("tsdb_operator_backup_duration_seconds", "Duration of finished backups", m.duration.clone());
            r.register(
                "tsdb_operator_backup_bytes",
                "Bytes of the last successful backup: all its files (total) and those it uploaded (uploaded)",
                m.bytes.clone(),
            );
        });
        m
    }

    fn forget(&self, namespace: &str, cluster: &str) {
        let labels = ClusterLabels { namespace: namespace.to_owned(), cluster: cluster.to_owned() };
        self.last_success.remove(&labels);
        self.duration.remove(&labels);
        for kind in ["total", "uploaded"] {
            self.bytes.remove(&BytesLabels {
                namespace: namespace.to_owned(),
                cluster: cluster.to_owned(),
                kind: kind.to_owned(),
            });
        }
    }
}

/// What the scheduler remembers between ticks (only caches: the truth is in the status).
#[derive(Default)]
struct Memory {
    tokens: BTreeMap<String, String>,
    poll_failures: BTreeMap<String, u32>,
}

/// Why one cluster's pass failed (logged; the next tick retries).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or creating the agent token Secret failed.
    #[error("failed to prepare the agent token Secret {name}")]
    Token {
        /// The Secret.
        name: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// Listing pods failed.
    #[error("failed to list the pods")]
    Pods(#[source] kube::Error),
    /// Writing the status failed.
    #[error("failed to write the backup status")]
    WriteStatus(#[source] kube::Error),
}

/// Runs the scheduler until `shutdown` resolves. `clusters` is the cluster controller's store (filled by its
/// watch): a pass reads it instead of listing every cluster from the API server.
pub async fn run(
    ctx: Arc<Context>,
    config: BackupConfig,
    clusters: Store<PrometheusCluster>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let metrics = BackupMetrics::register(&ctx);
    let mut memory = Memory::default();
    let mut known: BTreeSet<(String, String)> = BTreeSet::new();
    let mut tick = tokio::time::interval(config.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    tokio::select! {
        () = &mut shutdown => return,
        ready = clusters.wait_until_ready() => if ready.is_err() { return },
    }
    tracing::info!(tick = ?config.tick, "backup scheduler started");
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = tick.tick() => {}
        }
        let mut seen = BTreeSet::new();
        for pc in clusters.state() {
            let (Some(ns), name) = (pc.namespace(), pc.name_any()) else { continue };
            // A backup that was running when backups were disabled is still followed to its end.
            let running = pc.status.as_ref().and_then(|s| s.backup.as_ref()).is_some_and(|b| b.running.is_some());
            if !(pc.spec.backup.enabled || running) || pc.metadata.deletion_timestamp.is_some() {
                continue;
            }
            seen.insert((ns.clone(), name.clone()));
            if let Err(e) = pass(&ctx, &config, &metrics, &mut memory, &pc, &ns).await {
                tracing::warn!(namespace = %ns, name = %name, error = %super::cluster::error_chain(&e), "backup pass failed");
            }
        }
        for (ns, name) in known.difference(&seen) {
            metrics.forget(ns, name);
            let key = format!("{ns}/{name}");
            memory.tokens.remove(&key);
            memory.poll_failures.remove(&key);
        }
        known = seen;
    }
    tracing::info!("backup scheduler stopped");
}

async fn token(ctx: &Context, memory: &mut Memory, pc: &PrometheusCluster, ns: &str) -> Result<String, Error> {
    let key = format!("{ns}/{}", pc.name_any());
    if let Some(t) = memory.tokens.get(&key) {
        return Ok(t.clone());
    }
    let name = agent_token_secret(&pc.name_any());
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let err = |source| Error::Token { name: name.clone(), source };
    let existing = api.get_opt(&name).await.map_err(err)?;
    #[allow(clippy::single_match_else)] // the None arm creates the Secret
    let token = match existing
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .and_then(|d| d.get(TOKEN_KEY))
        .map(|b| String::from_utf8_lossy(&b.0).trim().to_owned())
        .filter(|t| !t.is_empty())
    {
        Some(t) => t,
        None => {
            let token = crate::backup::store::hex(&rand::random::<[u8; 32]>());
            let owner = pc.controller_owner_ref(&()).map(|mut o| {
                o.controller = Some(false);
                o
            });
            let secret: Secret = serde_json::from_value(json!({
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "labels": {
                        labels::MANAGED_BY: labels::MANAGED_BY_VALUE,
                        labels::INSTANCE: pc.name_any(),
                    },
                    "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
                },
                "type": "Opaque",
                "stringData": { TOKEN_KEY: token },
            }))
            .unwrap_or_default();
            if existing.is_some() {
                api.replace(&name, &PostParams::default(), &secret).await.map_err(err)?;
            } else {
                match api.create(&PostParams::default(), &secret).await {
                    Ok(_) => {}
                    // Another writer made it first; read theirs next time.
                    Err(kube::Error::Api(e)) if e.code == 409 => return Err(err(kube::Error::Api(e))),
                    Err(e) => return Err(err(e)),
                }
            }
            token
        }
    };
    memory.tokens.insert(key, token.clone());
    Ok(token)
}

fn pod_ip(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.pod_ip.as_deref()
}

fn is_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else { return false };
    pod.metadata.deletion_timestamp.is_none()
        && status.phase.as_deref() == Some("Running")
        && status.pod_ip.is_some()
        && status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True")
}

#[allow(clippy::too_many_lines)] // one pass reads top to bottom: follow the running job, or decide and start
async fn pass(
    ctx: &Context,
    config: &BackupConfig,
    metrics: &BackupMetrics,
    memory: &mut Memory,
    pc: &PrometheusCluster,
    ns: &str,
) -> Result<(), Error> {
    let name = pc.name_any();
    let key = format!("{ns}/{name}");
    let token = token(ctx, memory, pc, ns).await?;
    let pods = crate::kube::children::observe_pods(&ctx.client, ns, &name).await.map_err(|e| match e {
        crate::kube::children::Error::ListPods(e) => Error::Pods(e),
        other => Error::Pods(kube::Error::Service(Box::new(other))),
    })?;
    let previous = pc.status.as_ref().and_then(|s| s.backup.clone()).unwrap_or_default();
    let now = Utc::now();
    let present = pc.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == conditions::BACKUP_HEALTHY));
    if let Some(implied) = implied_condition(pc, &previous)
        && present.is_none_or(|c| c.status != implied.status || c.reason != implied.reason)
    {
        return write_status(ctx, pc, &previous, None, Some(implied)).await;
    }

    if let Some(running) = &previous.running {
        let pod = pods.iter().find(|p| p.name_any() == running.pod);
        let started = from_time(&running.start_time);
        let outcome = match pod.and_then(pod_ip) {
            None => Some(Outcome::Failed {
                reason: FailureReason::AgentLost,
                message: format!("pod {} that was taking the backup is gone", running.pod),
            }),
            Some(ip) => match client::job(&ctx.http, ip, ports::AGENT, &token, &running.id).await {
                Ok(Some(job)) => {
                    memory.poll_failures.remove(&key);
                    match Outcome::of_job(&job) {
                        Some(o) => Some(o),
                        None if (now - started).to_std().unwrap_or_default() > config.max_duration => {
                            Some(Outcome::Failed {
                                reason: FailureReason::AgentLost,
                                message: format!("the backup ran longer than {:?}; given up", config.max_duration),
                            })
                        }
                        None => None,
                    }
                }
                Ok(None) => Some(Outcome::Failed {
                    reason: FailureReason::AgentLost,
                    message: format!(
                        "the agent of {} no longer knows backup {} (it restarted); no manifest was written by this run",
                        running.pod, running.id
                    ),
                }),
                Err(e) => {
                    let failures = memory.poll_failures.entry(key.clone()).or_default();
                    *failures += 1;
                    tracing::debug!(%key, error = %e, failures = *failures, "cannot read the backup job");
                    (*failures >= MAX_POLL_FAILURES).then(|| Outcome::Failed {
                        reason: FailureReason::AgentLost,
                        message: format!("the agent of {} cannot be reached: {e}", running.pod),
                    })
                }
            },
        };
        if let Some(outcome) = outcome {
            memory.poll_failures.remove(&key);
            finish(ctx, metrics, pc, ns, &previous, &running.id, started, &outcome).await?;
        }
        return Ok(());
    }

    let spec = &pc.spec.backup;
    if !spec.enabled {
        return Ok(());
    }
    let schedule = (!spec.schedule.is_empty()).then(|| parse_schedule(&spec.schedule).ok()).flatten();
    let created = pc.metadata.creation_timestamp.as_ref().map_or(now, from_time);
    let anchor = previous.last_schedule_time.as_ref().map_or(created, from_time);
    let max_jitter =
        spec.jitter.as_deref().and_then(|j| tsdb_operator_core::duration::parse(j).ok()).unwrap_or_default();
    let uid = pc.uid().unwrap_or_default();
    let requested = pc.annotations().get(annotations::BACKUP_NOW).map(String::as_str);
    let decision = decide_backup(&DecideInput {
        now,
        schedule: schedule.as_ref(),
        suspended: spec.suspend,
        anchor,
        max_jitter,
        jitter_seed: &uid,
        missed_runs: spec.missed_runs.unwrap_or_default(),
        in_flight: false,
        requested,
        last_request: previous.last_request.as_deref(),
    });
    let trigger = match decision {
        Decision::Wait { .. } => return Ok(()),
        Decision::SkipMissed { slot } => {
            tracing::info!(%key, %slot, "skipping a missed backup slot (missedRuns: Skip)");
            return write_status(ctx, pc, &status_skipped(&previous, now), None, None).await;
        }
        Decision::Run(trigger) => trigger,
    };
    let mut ready: Vec<&Pod> = pods.iter().filter(|p| is_ready(p)).collect();
    ready.sort_by_key(|p| p.name_any());
    let Some(pod) = ready.first() else {
        tracing::debug!(%key, "a backup is due but no replica is ready; waiting");
        return Ok(());
    };
    let id = backup_id(now);
    if previous.last_backup_id.as_deref() == Some(id.as_str()) {
        return Ok(());
    }
    let request = BackupRequest {
        id: id.clone(),
        cluster: SourceCluster { namespace: ns.to_owned(), name: name.clone(), uid, pod: pod.name_any() },
        store: resolve_store(spec, &config.defaults),
        retention: retention_policy(pc, config),
    };
    let ip = pod_ip(pod).unwrap_or_default();
    let reference = pc.object_ref(&());
    let actor = ctx.events.operator_actor();
    match client::start_backup(&ctx.http, ip, ports::AGENT, &token, &request).await {
        Ok(started) => {
            // 409: the agent is busy with a job this operator did not record (it restarted): follow that one.
            let job_id = started.map_or_else(|running| running.id, |job| job.id);
            let status = status_started(&previous, &job_id, &pod.name_any(), &trigger, now);
            write_status(ctx, pc, &status, None, None).await?;
            tracing::info!(%key, id = %job_id, pod = %pod.name_any(), trigger = trigger.as_str(), "backup started");
            ctx.events.publish(
                &reference,
                actor,
                Did::BackupStarted { id: job_id, pod: pod.name_any(), trigger: trigger.as_str().to_owned() },
            );
        }
        Err(e) => {
            let reason = match &e {
                client::Error::Status { code: 401 | 403 | 503, .. } => FailureReason::Rejected,
                _ => FailureReason::AgentLost,
            };
            let outcome = Outcome::Failed { reason, message: e.to_string() };
            let status = status_started(&previous, &id, &pod.name_any(), &trigger, now);
            finish(ctx, metrics, pc, ns, &status, &id, now, &outcome).await?;
        }
    }
    Ok(())
}

fn retention_policy(pc: &PrometheusCluster, config: &BackupConfig) -> RetentionPolicy {
    let r = pc.spec.backup.retention.clone().unwrap_or_default();
    RetentionPolicy {
        keep_last: r.keep_last.and_then(|n| u32::try_from(n).ok()),
        max_age_seconds: r
            .max_age
            .as_deref()
            .and_then(|a| tsdb_operator_core::duration::parse(a).ok())
            .map(|d| d.as_secs()),
        grace_seconds: config.gc_grace.as_secs(),
    }
}

#[allow(clippy::too_many_arguments)] // the facts of one finished backup
async fn finish(
    ctx: &Context,
    metrics: &BackupMetrics,
    pc: &PrometheusCluster,
    ns: &str,
    previous: &BackupStatus,
    id: &str,
    started: DateTime<Utc>,
    outcome: &Outcome,
) -> Result<(), Error> {
    let now = Utc::now();
    let name = pc.name_any();
    let status = status_finished(previous, outcome, now);
    let old = pc.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == conditions::BACKUP_HEALTHY));
    let condition = merge_backup_condition(old, backup_condition(outcome, pc.metadata.generation, now));
    write_status(ctx, pc, &status, Some(tsdb_operator_core::backup::to_time(now)), Some(condition)).await?;
    ctx.metrics
        .backup_total
        .get_or_create(&BackupLabels {
            namespace: ns.to_owned(),
            cluster: name.clone(),
            result: outcome.result_label().to_owned(),
        })
        .inc();
    let labels = ClusterLabels { namespace: ns.to_owned(), cluster: name.clone() };
    metrics.duration.get_or_create(&labels).observe((now - started).to_std().unwrap_or_default().as_secs_f64());
    let reference = pc.object_ref(&());
    let actor = ctx.events.operator_actor();
    match outcome {
        Outcome::Succeeded { id, total_bytes, uploaded_bytes } => {
            metrics.last_success.get_or_create(&labels).set(now.timestamp());
            for (kind, v) in [("total", total_bytes), ("uploaded", uploaded_bytes)] {
                metrics
                    .bytes
                    .get_or_create(&BytesLabels {
                        namespace: ns.to_owned(),
                        cluster: name.clone(),
                        kind: kind.to_owned(),
                    })
                    .set(i64::try_from(*v).unwrap_or(i64::MAX));
            }
            tracing::info!(namespace = ns, name = %name, %id, total_bytes, uploaded_bytes, "backup succeeded");
            let action =
                Did::BackupSucceeded { id: id.clone(), total_bytes: *total_bytes, uploaded_bytes: *uploaded_bytes };
            ctx.events.publish(&reference, actor, action);
        }
        Outcome::Failed { reason, message } => {
            tracing::warn!(namespace = ns, name = %name, %id, reason = reason.as_str(), %message, "backup failed");
            let action =
                Did::BackupFailed { id: id.to_owned(), reason: reason.as_str().to_owned(), message: message.clone() };
            ctx.events.publish(&reference, actor, action);
        }
    }
    Ok(())
}

/// Writes `status.backup`, `status.lastBackupTime` and the `BackupHealthy` condition with a JSON patch that first
/// tests the object's `resourceVersion`: a read-modify-write of the whole conditions list that fails instead of
/// overwriting a newer status (API servers that treat the list as atomic for server-side apply would otherwise let
/// two writers drop each other's conditions). A failed test is retried at the next tick.
async fn write_status(
    ctx: &Context,
    pc: &PrometheusCluster,
    backup: &BackupStatus,
    last_backup_time: Option<Time>,
    condition: Option<Condition>,
) -> Result<(), Error> {
    let mut fields =
        vec![("backup", serde_json::to_value(backup).map_err(|e| Error::WriteStatus(kube::Error::SerdeError(e)))?)];
    if let Some(t) = last_backup_time {
        fields.push((
            "lastBackupTime",
            serde_json::to_value(t).map_err(|e| Error::WriteStatus(kube::Error::SerdeError(e)))?,
        ));
    }
    super::patch_owned_status(
        ctx,
        pc,
        BACKUP_FIELD_MANAGER,
        fields,
        &[conditions::BACKUP_HEALTHY],
        condition.map(|c| vec![c]),
    )
    .await
    .map_err(Error::WriteStatus)
}

/// The `BackupHealthy` condition that `status.backup` implies (the last outcome), if any backup finished.
fn implied_condition(pc: &PrometheusCluster, b: &BackupStatus) -> Option<Condition> {
    let ok = b.last_successful_backup_time.as_ref().map(from_time);
    let failed = b.last_failed_backup_time.as_ref().map(from_time);
    let outcome = match (ok, failed) {
        (None, None) => return None,
        (Some(o), Some(f)) if f > o => failed_outcome(b),
        (None, Some(_)) => failed_outcome(b),
        _ => Outcome::Succeeded {
            id: b.last_backup_id.clone().unwrap_or_default(),
            total_bytes: b.last_backup_bytes.and_then(|v| u64::try_from(v).ok()).unwrap_or_default(),
            uploaded_bytes: b.last_backup_uploaded_bytes.and_then(|v| u64::try_from(v).ok()).unwrap_or_default(),
        },
    };
    let when = ok.max(failed).unwrap_or_default();
    let old = pc.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == conditions::BACKUP_HEALTHY));
    Some(merge_backup_condition(old, backup_condition(&outcome, pc.metadata.generation, when)))
}

fn failed_outcome(b: &BackupStatus) -> Outcome {
    let error = b.last_backup_error.clone().unwrap_or_default();
    let (reason, message) = error.split_once(": ").unwrap_or(("StorageFailed", error.as_str()));
    let reason = [
        FailureReason::SnapshotFailed,
        FailureReason::StorageFailed,
        FailureReason::ReadFailed,
        FailureReason::RetentionFailed,
        FailureReason::AgentLost,
        FailureReason::OperatorRestarted,
        FailureReason::Rejected,
    ]
    .into_iter()
    .find(|r| r.as_str() == reason)
    .unwrap_or(FailureReason::StorageFailed);
    Outcome::Failed { reason, message: message.to_owned() }
}
