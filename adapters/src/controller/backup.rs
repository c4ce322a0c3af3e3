//! The backup scheduler: runs on the leader only, decides in the core when each cluster's backup is due, asks
//! the agent of one ready replica to take it, follows the job, and records the outcome. I/O: the Kubernetes
//! API and HTTP to the agents.
//!
//! # Flow (every tick, for every PrometheusCluster with `spec.backup.enabled`)
//! 1. Make sure the agent token Secret `<name>-agent-token` exists (random token, owned by the cluster). A Secret
//!    of that name the cluster does not own (by ownerReference UID) is neither used nor replaced: the pass stops
//!    and `BackupHealthy=False` (`TokenSecretNotOwned`) names the Secret and the fix.
//! 2. Ask the core once ([`decide_pass`]) and carry out its step: repair a missing or stale `BackupHealthy`;
//!    follow the running job (read it from that pod's agent and hand the answer to [`follow_job`]; when it
//!    finished, write the outcome (`status.backup`, `status.lastBackupTime`, the `BackupHealthy` condition), count
//!    it in `tsdb_operator_backup_total{result}` and publish an event; a job its agent no longer knows or whose pod
//!    is gone is a failure, `AgentLost`); or, when a backup is due (schedule, one catch-up, jitter, suspend, the
//!    `backup-now` annotation), ask the replica [`choose_replica`] picks to take it (`POST /backup`) and record
//!    the job as running. Only pods whose controller is the cluster's own StatefulSet (name and UID, the
//!    StatefulSet controlled by the cluster) are ever sent the token, for starting and for following a job; the
//!    pods are listed only while a backup runs or is due.
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
//! - A rotated agent token is picked up without a restart: the token is cached, and when an agent refuses it
//!   (401/403) the Secret is read again and the call retried once with the new token.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::StatefulSet;
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
use tsdb_operator_core::backup::follow::{FollowInput, JobAnswer, follow_job, start_failed};
use tsdb_operator_core::backup::manifest::SourceCluster;
use tsdb_operator_core::backup::pass::{Gauges, Replica, Retention, Step, choose_replica, decide_pass};
use tsdb_operator_core::backup::protocol::{BackupDefaults, BackupRequest, TOKEN_KEY, resolve_store};
use tsdb_operator_core::backup::retention::RetentionPolicy;
use tsdb_operator_core::backup::status::{
    Outcome, REASON_TOKEN_SECRET_NOT_OWNED, backup_condition, merge_backup_condition, status_finished, status_started,
    token_secret_conflict_condition,
};
use tsdb_operator_core::build::backup::agent_token_secret;
use tsdb_operator_core::constants::{BACKUP_FIELD_MANAGER, conditions, labels, ports};
use tsdb_operator_core::crd::{BackupStatus, PrometheusCluster, RunningBackup};
use tsdb_operator_core::events::Action;

use super::Context;
use crate::agent_client as client;
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
    /// The operator's S3 credentials Secret (`--s3-credentials-secret`, namespace and name), copied into each
    /// cluster that names no `credentialsSecretRef` (set `defaults.shared_credentials` with it).
    pub shared_credentials: Option<(String, String)>,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            defaults: BackupDefaults::default(),
            tick: Duration::from_secs(15),
            gc_grace: Duration::from_hours(1),
            max_duration: Duration::from_hours(6),
            shared_credentials: None,
        }
    }
}

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
    allowed_age: Family<ClusterLabels, Gauge>,
    duration: Family<ClusterLabels, Histogram>,
    bytes: Family<BytesLabels, Gauge>,
}

impl BackupMetrics {
    fn register(ctx: &Context) -> Self {
        let m = Self {
            last_success: Family::default(),
            allowed_age: Family::default(),
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
            r.register(
                "tsdb_operator_backup_interval_seconds",
                "Longest time the schedule of each cluster leaves between two backups, jitter included",
                m.allowed_age.clone(),
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

    /// Sets the gauges the backup alerts compare ([`Gauges`]), and makes the cluster's series exist.
    fn set_gauges(&self, ctx: &Context, namespace: &str, cluster: &str, gauges: &Gauges) {
        let labels = ClusterLabels { namespace: namespace.to_owned(), cluster: cluster.to_owned() };
        ctx.metrics.init_backup(namespace, cluster);
        drop(self.duration.get_or_create(&labels));
        if let Some(t) = gauges.last_success_seconds {
            self.last_success.get_or_create(&labels).set(t);
        }
        match gauges.allowed_age_seconds {
            Some(secs) => {
                self.allowed_age.get_or_create(&labels).set(secs);
            }
            None => {
                self.allowed_age.remove(&labels);
            }
        }
    }

    fn forget(&self, namespace: &str, cluster: &str) {
        let labels = ClusterLabels { namespace: namespace.to_owned(), cluster: cluster.to_owned() };
        self.last_success.remove(&labels);
        self.allowed_age.remove(&labels);
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
    /// The agent token of each cluster, as last read from its Secret; read again when an agent refuses it.
    tokens: BTreeMap<String, String>,
    poll_failures: BTreeMap<String, u32>,
    /// The operator's shared credentials as read at the start of this tick (`None`: not configured or unreadable).
    shared: Option<SharedCredentials>,
    /// The hash of the shared credentials last copied into each cluster's Secret.
    shared_synced: BTreeMap<String, String>,
}

/// The data of the operator's credentials Secret and a hash of it.
struct SharedCredentials {
    data: BTreeMap<String, k8s_openapi::ByteString>,
    hash: String,
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
    /// A Secret with the agent token Secret's name exists and is not owned by the cluster.
    #[error(
        "failed to prepare the agent token: Secret {name} exists and is not owned by PrometheusCluster {cluster}; \
         rename or delete that Secret and the operator creates its own"
    )]
    TokenSecretNotOwned {
        /// The Secret.
        name: String,
        /// The cluster.
        cluster: String,
    },
    /// Listing pods failed.
    #[error("failed to list the pods")]
    Pods(#[source] kube::Error),
    /// Reading the cluster's StatefulSet failed.
    #[error("failed to read the StatefulSet")]
    StatefulSet(#[source] kube::Error),
    /// Writing the status failed.
    #[error("failed to write the backup status")]
    WriteStatus(#[source] kube::Error),
    /// Copying the operator's credentials into the cluster's Secret failed.
    #[error("failed to copy the operator's S3 credentials into Secret {name}")]
    SharedCredentials {
        /// The cluster's copy.
        name: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
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
        memory.shared = read_shared_credentials(&ctx, config.shared_credentials.as_ref()).await;
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
                tracing::warn!(namespace = %ns, name = %name, error = %crate::error_chain(&e), "backup pass failed");
            }
        }
        for (ns, name) in known.difference(&seen) {
            metrics.forget(ns, name);
            let key = format!("{ns}/{name}");
            memory.tokens.remove(&key);
            memory.poll_failures.remove(&key);
            memory.shared_synced.remove(&key);
        }
        known = seen;
    }
    tracing::info!("backup scheduler stopped");
}

/// Reads the operator's credentials Secret once per tick; `None` (logged) when it cannot be read, so that no copy
/// is changed on a transient error.
async fn read_shared_credentials(ctx: &Context, source: Option<&(String, String)>) -> Option<SharedCredentials> {
    use sha2::Digest as _;
    let (namespace, name) = source?;
    match Api::<Secret>::namespaced(ctx.client.clone(), namespace).get_opt(name).await {
        Ok(Some(secret)) => {
            let data = secret.data.unwrap_or_default();
            if !data.contains_key("AWS_ACCESS_KEY_ID") {
                tracing::warn!(%namespace, %name, "the --s3-credentials-secret Secret has no AWS_ACCESS_KEY_ID");
            }
            let mut hasher = sha2::Sha256::new();
            for (k, v) in &data {
                hasher.update(k.as_bytes());
                hasher.update([0]);
                hasher.update(&v.0);
                hasher.update([0]);
            }
            let hash = crate::backup::store::hex(&hasher.finalize());
            Some(SharedCredentials { data, hash })
        }
        Ok(None) => {
            tracing::warn!(%namespace, %name, "the --s3-credentials-secret Secret does not exist");
            None
        }
        Err(e) => {
            tracing::warn!(%namespace, %name, error = %e, "cannot read the --s3-credentials-secret Secret");
            None
        }
    }
}

/// Keeps `<name>-s3-credentials` equal to the operator's credentials for a cluster that names none: created owned
/// by the cluster, replaced when the operator's Secret changes. A Secret of that name the cluster does not own is
/// left alone (logged). Costs no request while nothing changed.
async fn sync_shared_credentials(
    ctx: &Context,
    pc: &PrometheusCluster,
    ns: &str,
    key: &str,
    memory: &mut Memory,
) -> Result<(), Error> {
    let Some(shared) = memory.shared.as_ref() else { return Ok(()) };
    if memory.shared_synced.get(key) == Some(&shared.hash) {
        return Ok(());
    }
    let name = tsdb_operator_core::build::backup::shared_credentials_secret(&pc.name_any());
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let err = |source| Error::SharedCredentials { name: name.clone(), source };
    let existing = api.get_opt(&name).await.map_err(err)?;
    let uid = pc.uid().unwrap_or_default();
    if let Some(existing) = &existing {
        if !existing.owner_references().iter().any(|o| !uid.is_empty() && o.uid == uid) {
            tracing::warn!(namespace = %ns, secret = %name, "a Secret with the name of the credentials copy exists and \
                is not owned by the cluster; it is left alone and backups use its contents");
            memory.shared_synced.insert(key.to_owned(), shared.hash.clone());
            return Ok(());
        }
        if existing.data.as_ref() == Some(&shared.data) {
            memory.shared_synced.insert(key.to_owned(), shared.hash.clone());
            return Ok(());
        }
    }
    let owner = pc.controller_owner_ref(&()).map(|mut o| {
        o.controller = Some(false);
        o
    });
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.to_owned()),
            resource_version: existing.as_ref().and_then(|s| s.metadata.resource_version.clone()),
            labels: Some(BTreeMap::from([
                (labels::MANAGED_BY.to_owned(), labels::MANAGED_BY_VALUE.to_owned()),
                (labels::INSTANCE.to_owned(), pc.name_any()),
            ])),
            owner_references: Some(owner.into_iter().collect()),
            ..kube::api::ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(shared.data.clone()),
        ..Secret::default()
    };
    if existing.is_some() {
        api.replace(&name, &PostParams::default(), &secret).await.map_err(err)?;
    } else {
        api.create(&PostParams::default(), &secret).await.map_err(err)?;
    }
    tracing::info!(namespace = %ns, secret = %name, "copied the operator's S3 credentials");
    memory.shared_synced.insert(key.to_owned(), shared.hash.clone());
    Ok(())
}

/// Reads the agent token from the Secret `<name>-agent-token`, creating the Secret (random token, owned by the
/// cluster) when it does not exist or holds no token. A Secret of that name the cluster does not own is left
/// alone: [`Error::TokenSecretNotOwned`], and the `BackupHealthy` condition says what to do.
async fn read_token(ctx: &Context, pc: &PrometheusCluster, ns: &str) -> Result<String, Error> {
    let name = agent_token_secret(&pc.name_any());
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let err = |source| Error::Token { name: name.clone(), source };
    let existing = api.get_opt(&name).await.map_err(err)?;
    let replace = match token_action(existing.as_ref(), &pc.uid().unwrap_or_default()) {
        TokenAction::Use(token) => return Ok(token),
        TokenAction::Refuse => {
            report_token_conflict(ctx, pc, &name).await;
            return Err(Error::TokenSecretNotOwned { name, cluster: pc.name_any() });
        }
        TokenAction::Create => false,
        TokenAction::Replace => true,
    };
    let token = crate::backup::store::hex(&rand::random::<[u8; 32]>());
    let owner = pc.controller_owner_ref(&()).map(|mut o| {
        o.controller = Some(false);
        o
    });
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "namespace": ns,
            // A replace fails (and is retried at the next pass) if the Secret changed since it was read.
            "resourceVersion": existing.as_ref().and_then(|s| s.metadata.resource_version.clone()),
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
    if replace {
        // Only ever a Secret this cluster owns (`token_action`).
        api.replace(&name, &PostParams::default(), &secret).await.map_err(err)?;
    } else {
        // On 409 another writer made it first: read theirs (and check its owner) next time.
        api.create(&PostParams::default(), &secret).await.map_err(err)?;
    }
    Ok(token)
}

/// Sets `BackupHealthy=False` (`TokenSecretNotOwned`) unless it already says so; a failed write is logged (the
/// error returned to the pass names the Secret anyway).
async fn report_token_conflict(ctx: &Context, pc: &PrometheusCluster, secret: &str) {
    let present = pc.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == conditions::BACKUP_HEALTHY));
    if present.is_some_and(|c| c.reason == REASON_TOKEN_SECRET_NOT_OWNED) {
        return;
    }
    let previous = pc.status.as_ref().and_then(|s| s.backup.clone()).unwrap_or_default();
    let condition = token_conflict_condition(pc, secret);
    if let Err(e) = write_status(ctx, pc, &previous, None, Some(condition)).await {
        tracing::warn!(error = %crate::error_chain(&e), "failed to report the agent token Secret conflict");
    }
}

/// The cluster's StatefulSet, whose pods alone may receive the agent token.
async fn statefulset(ctx: &Context, ns: &str, name: &str) -> Result<Option<StatefulSet>, Error> {
    Api::<StatefulSet>::namespaced(ctx.client.clone(), ns).get_opt(name).await.map_err(Error::StatefulSet)
}

/// What to do with the agent token Secret as found.
#[derive(Debug, PartialEq, Eq)]
enum TokenAction {
    /// Use its token.
    Use(String),
    /// It does not exist: create it.
    Create,
    /// It is this cluster's but holds no token: replace it.
    Replace,
    /// It exists and is not this cluster's: leave it alone.
    Refuse,
}

/// What to do with the agent token Secret as found. A Secret of that name that no ownerReference ties to this
/// cluster (by UID) is someone else's: its `token` may be any credential (a ServiceAccount token Secret has that
/// key too), so it is neither sent to a pod nor overwritten.
fn token_action(existing: Option<&Secret>, cluster_uid: &str) -> TokenAction {
    let Some(secret) = existing else { return TokenAction::Create };
    let owned = !cluster_uid.is_empty() && secret.owner_references().iter().any(|o| o.uid == cluster_uid);
    if !owned {
        return TokenAction::Refuse;
    }
    let token = secret
        .data
        .as_ref()
        .and_then(|d| d.get(TOKEN_KEY))
        .map(|b| String::from_utf8_lossy(&b.0).trim().to_owned())
        .filter(|t| !t.is_empty());
    token.map_or(TokenAction::Replace, TokenAction::Use)
}

/// The pods the agent token may be sent to: those whose controller is the cluster's StatefulSet `sts`, by name
/// and UID, when `sts` itself is controlled by the cluster. The label selector alone would also match any pod
/// someone labelled like the cluster's.
fn member_pods<'a>(pods: &'a [Pod], sts: Option<&StatefulSet>, cluster_uid: &str) -> Vec<&'a Pod> {
    let Some(sts) = sts else { return Vec::new() };
    let controlled_by = |refs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference],
                         kind: &str,
                         name: Option<&str>,
                         uid: &str| {
        !uid.is_empty()
            && refs.iter().any(|o| {
                o.controller == Some(true) && o.kind == kind && o.uid == uid && name.is_none_or(|n| o.name == n)
            })
    };
    if !controlled_by(sts.owner_references(), PrometheusCluster::kind(&()).as_ref(), None, cluster_uid) {
        return Vec::new();
    }
    let (sts_name, sts_uid) = (sts.name_any(), sts.uid().unwrap_or_default());
    pods.iter().filter(|p| controlled_by(p.owner_references(), "StatefulSet", Some(&sts_name), &sts_uid)).collect()
}

/// Calls an agent with the cached token, or with one read from the Secret when none is cached; returns the token
/// used and the agent's answer. When the agent refuses a cached token (401, 403: the Secret was rotated), the
/// Secret is read again and the call retried once with the new token.
///
/// Plain closures returning futures rather than async closures: the scheduler's future must be `Send`.
async fn call_with_token<T, R, RF, C, CF>(
    cached: Option<String>,
    read: R,
    call: C,
) -> Result<(String, Result<T, client::Error>), Error>
where
    R: Fn() -> RF,
    RF: Future<Output = Result<String, Error>>,
    C: Fn(String) -> CF,
    CF: Future<Output = Result<T, client::Error>>,
{
    let Some(cached) = cached else {
        let token = read().await?;
        let answer = call(token.clone()).await;
        return Ok((token, answer));
    };
    let answer = call(cached.clone()).await;
    if !answer.as_ref().is_err_and(client::Error::is_refused) {
        return Ok((cached, answer));
    }
    let token = read().await?;
    if token == cached {
        return Ok((cached, answer));
    }
    tracing::info!("the agent refused the cached token; retrying with the token read from the Secret again");
    let answer = call(token.clone()).await;
    Ok((token, answer))
}

fn pod_name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or_default()
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

/// One tick for one cluster: the token and credentials Secrets made sure of, then [`decide_pass`] once, and its
/// step carried out.
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
    // The Secret exists before a backup is due, so the pods have it mounted by then.
    if !memory.tokens.contains_key(&key) {
        let token = read_token(ctx, pc, ns).await?;
        memory.tokens.insert(key.clone(), token);
    }
    let uses_shared_credentials = pc.spec.backup.credentials_secret_ref.as_ref().is_none_or(|r| r.name.is_empty());
    if uses_shared_credentials {
        sync_shared_credentials(ctx, pc, ns, &key, memory).await?;
    }
    let now = Timestamp::now();
    let previous = pc.status.as_ref().and_then(|s| s.backup.clone()).unwrap_or_default();
    let (id, trigger, gauges, retention) = match decide_pass(pc, now) {
        Step::RepairCondition(condition) => return write_status(ctx, pc, &previous, None, Some(condition)).await,
        Step::ClearCondition => {
            return super::patch_owned_status(
                ctx,
                pc,
                BACKUP_FIELD_MANAGER,
                Vec::new(),
                &[conditions::BACKUP_HEALTHY],
                Some(Vec::new()),
            )
            .await
            .map_err(Error::WriteStatus);
        }
        Step::Follow(running) => return follow(ctx, config, metrics, memory, pc, ns, &running, now).await,
        Step::Disabled => {
            metrics.forget(ns, &name);
            return Ok(());
        }
        Step::Invalid { message } => {
            tracing::debug!(%key, %message, "no backup: the spec cannot be scheduled");
            return Ok(());
        }
        Step::Wait { gauges, .. } => {
            metrics.set_gauges(ctx, ns, &name, &gauges);
            return Ok(());
        }
        Step::SkipMissed { slot, status, gauges } => {
            metrics.set_gauges(ctx, ns, &name, &gauges);
            tracing::info!(%key, %slot, "skipping a missed backup slot (missedRuns: Skip)");
            return write_status(ctx, pc, &status, None, None).await;
        }
        Step::Start { id, trigger, gauges, retention } => (id, trigger, gauges, retention),
    };
    metrics.set_gauges(ctx, ns, &name, &gauges);
    // The copy of the operator's credentials is checked again before each backup (one read), so a deleted or
    // edited copy is restored instead of failing backups until the operator's Secret changes.
    if uses_shared_credentials {
        memory.shared_synced.remove(&key);
        sync_shared_credentials(ctx, pc, ns, &key, memory).await?;
    }
    // The token goes only to a pod of the cluster's own StatefulSet, never to any pod that carries its labels.
    let members = members(ctx, pc, ns).await?;
    let replicas: Vec<Replica<'_>> =
        members.iter().map(|p| Replica { name: pod_name(p), ready: is_ready(p) }).collect();
    let Some(chosen) = choose_replica(&replicas) else {
        tracing::debug!(%key, "a backup is due but no replica of the cluster's StatefulSet is ready; waiting");
        return Ok(());
    };
    let pod = chosen.name.to_owned();
    let ip = members.iter().find(|p| pod_name(p) == pod).and_then(|p| pod_ip(p)).unwrap_or_default();
    let request = BackupRequest {
        id: id.clone(),
        cluster: SourceCluster {
            namespace: ns.to_owned(),
            name: name.clone(),
            uid: pc.uid().unwrap_or_default(),
            pod: pod.clone(),
        },
        store: resolve_store(&pc.spec.backup, &config.defaults),
        retention: retention_policy(pc, retention, config),
    };
    let request = &request;
    let call = |token: String| async move { client::start_backup(&ctx.http, ip, ports::AGENT, &token, request).await };
    let cached = memory.tokens.get(&key).cloned();
    let answer = remember(memory, &key, call_with_token(cached, || read_token(ctx, pc, ns), call).await)?;
    match answer {
        Ok(started) => {
            // 409: the agent is busy with a job this operator did not record (it restarted): follow that one.
            let job_id = started.map_or_else(|running| running.id, |job| job.id);
            let status = status_started(&previous, &job_id, &pod, &trigger, now);
            write_status(ctx, pc, &status, None, None).await?;
            tracing::info!(%key, id = %job_id, %pod, trigger = trigger.as_str(), "backup started");
            let action = Action::BackupStarted { id: job_id, pod, trigger: trigger.as_str().to_owned() };
            ctx.events.publish(&pc.object_ref(&()), ctx.events.operator_actor(), action);
        }
        Err(e) => {
            let code = match &e {
                client::Error::Status { code, .. } => Some(*code),
                client::Error::Unreachable { .. } => None,
            };
            let outcome = start_failed(code, e.to_string());
            let status = status_started(&previous, &id, &pod, &trigger, now);
            finish(ctx, metrics, pc, ns, (&status, &id, now), &outcome, now).await?;
        }
    }
    Ok(())
}

/// The cluster's pods whose controller is its own StatefulSet ([`member_pods`]).
async fn members(ctx: &Context, pc: &PrometheusCluster, ns: &str) -> Result<Vec<Pod>, Error> {
    let name = pc.name_any();
    let pods = crate::kube::children::observe_pods(&ctx.client, ns, &name).await.map_err(|e| match e {
        crate::kube::children::Error::ListPods(e) => Error::Pods(e),
        other => Error::Pods(kube::Error::Service(Box::new(other))),
    })?;
    let sts = statefulset(ctx, ns, &name).await?;
    let uid = pc.uid().unwrap_or_default();
    Ok(member_pods(&pods, sts.as_ref(), &uid).into_iter().cloned().collect())
}

/// Asks the agent of the running backup's pod about it and carries out what [`follow_job`] decides.
#[allow(clippy::too_many_arguments)] // one tick's facts
async fn follow(
    ctx: &Context,
    config: &BackupConfig,
    metrics: &BackupMetrics,
    memory: &mut Memory,
    pc: &PrometheusCluster,
    ns: &str,
    running: &RunningBackup,
    now: Timestamp,
) -> Result<(), Error> {
    let name = pc.name_any();
    let key = format!("{ns}/{name}");
    let members = members(ctx, pc, ns).await?;
    let polled = match members.iter().find(|p| pod_name(p) == running.pod).and_then(|p| pod_ip(p)) {
        None => None,
        Some(ip) => {
            let call =
                |token: String| async move { client::job(&ctx.http, ip, ports::AGENT, &token, &running.id).await };
            let cached = memory.tokens.get(&key).cloned();
            Some(remember(memory, &key, call_with_token(cached, || read_token(ctx, pc, ns), call).await)?)
        }
    };
    let answer = match &polled {
        None => JobAnswer::PodGone,
        Some(Ok(Some(job))) => JobAnswer::Job(job),
        Some(Ok(None)) => JobAnswer::Unknown,
        Some(Err(e)) => JobAnswer::Unreachable { error: e.to_string() },
    };
    let decision = follow_job(&FollowInput {
        running,
        cluster: &name,
        answer,
        poll_failures: memory.poll_failures.get(&key).copied().unwrap_or_default(),
        now,
        max_duration: config.max_duration,
    });
    if decision.poll_failures > 0 {
        tracing::debug!(%key, failures = decision.poll_failures, "cannot read the backup job");
        memory.poll_failures.insert(key.clone(), decision.poll_failures);
    } else {
        memory.poll_failures.remove(&key);
    }
    let (reference, actor) = (pc.object_ref(&()), ctx.events.operator_actor());
    for event in decision.events {
        ctx.events.publish(&reference, actor.clone(), event);
    }
    if let Some(outcome) = decision.outcome {
        let previous = pc.status.as_ref().and_then(|s| s.backup.clone()).unwrap_or_default();
        finish(ctx, metrics, pc, ns, (&previous, &running.id, running.start_time.0), &outcome, now).await?;
    }
    Ok(())
}

/// Caches the token an agent call used (the one read again after a refusal, if any); forgets the cached token
/// when reading the Secret failed, so that the next pass reads it (and reports a conflict) before anything else.
fn remember<T>(memory: &mut Memory, key: &str, result: Result<(String, T), Error>) -> Result<T, Error> {
    match result {
        Ok((token, answer)) => {
            memory.tokens.insert(key.to_owned(), token);
            Ok(answer)
        }
        Err(e) => {
            memory.tokens.remove(key);
            Err(e)
        }
    }
}

/// The agent's retention after backup: what the core read from `spec.backup.retention`
/// ([`Step::Start`]), the operator's grace for leftovers, and the cluster's UID.
fn retention_policy(pc: &PrometheusCluster, retention: Retention, config: &BackupConfig) -> RetentionPolicy {
    RetentionPolicy {
        keep_last: retention.keep_last,
        max_age_seconds: retention.max_age.map(|d| d.as_secs()),
        grace_seconds: config.gc_grace.as_secs(),
        // Retention prunes only this cluster's backups: not those of an earlier cluster of the same name.
        cluster_uid: pc.uid().unwrap_or_default(),
    }
}

/// Records a finished backup: `(status before, id, start time)`, how it ended, and `now` (this tick's time).
async fn finish(
    ctx: &Context,
    metrics: &BackupMetrics,
    pc: &PrometheusCluster,
    ns: &str,
    (previous, id, started): (&BackupStatus, &str, Timestamp),
    outcome: &Outcome,
    now: Timestamp,
) -> Result<(), Error> {
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
    metrics.duration.get_or_create(&labels).observe(now.duration_since(started).as_secs_f64().max(0.0));
    let reference = pc.object_ref(&());
    let actor = ctx.events.operator_actor();
    match outcome {
        Outcome::Succeeded { id, total_bytes, uploaded_bytes } => {
            metrics.last_success.get_or_create(&labels).set(now.as_second());
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
                Action::BackupSucceeded { id: id.clone(), total_bytes: *total_bytes, uploaded_bytes: *uploaded_bytes };
            ctx.events.publish(&reference, actor, action);
        }
        Outcome::Failed { reason, message } => {
            tracing::warn!(namespace = ns, name = %name, %id, reason = reason.as_str(), %message, "backup failed");
            let action = Action::BackupFailed {
                id: id.to_owned(),
                reason: reason.as_str().to_owned(),
                message: message.clone(),
            };
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

/// The `BackupHealthy` condition while the agent token Secret's name is taken by a Secret the cluster does not own.
fn token_conflict_condition(pc: &PrometheusCluster, secret: &str) -> Condition {
    token_secret_conflict_condition(secret, &pc.name_any(), pc.metadata.generation, Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tsdb_operator_core::crd::PrometheusClusterSpec;

    fn cluster(uid: &str) -> PrometheusCluster {
        let mut pc = PrometheusCluster::new("demo", PrometheusClusterSpec::default());
        pc.metadata.namespace = Some("ns".to_owned());
        pc.metadata.uid = Some(uid.to_owned());
        pc
    }

    fn secret(owner_uid: Option<&str>, token: Option<&str>) -> Secret {
        serde_json::from_value(json!({
            "metadata": {
                "name": "demo-agent-token",
                "ownerReferences": owner_uid.map(|uid| vec![json!({
                    "apiVersion": "observability.merlionos.org/v1", "kind": "PrometheusCluster", "name": "demo",
                    "uid": uid, "controller": false
                })]),
            },
            "data": token.map(|t| json!({ TOKEN_KEY: k8s_openapi::ByteString(t.as_bytes().to_vec()) })),
        }))
        .unwrap()
    }

    #[test]
    fn a_token_secret_this_cluster_does_not_own_is_never_used_or_replaced() {
        assert_eq!(token_action(None, "uid-1"), TokenAction::Create);
        assert_eq!(token_action(Some(&secret(Some("uid-1"), Some("t0k"))), "uid-1"), TokenAction::Use("t0k".into()));
        assert_eq!(token_action(Some(&secret(Some("uid-1"), None)), "uid-1"), TokenAction::Replace);
        for foreign in [secret(None, None), secret(None, Some("t0k")), secret(Some("uid-of-another"), None)] {
            assert_eq!(token_action(Some(&foreign), "uid-1"), TokenAction::Refuse, "{foreign:?}");
        }
        let condition = token_conflict_condition(&cluster("uid-1"), "demo-agent-token");
        assert_eq!((condition.status.as_str(), condition.reason.as_str()), ("False", REASON_TOKEN_SECRET_NOT_OWNED));
        assert!(condition.message.contains("Secret demo-agent-token"), "{}", condition.message);
    }

    fn pod(name: &str, owner: Option<(&str, &str, bool)>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "ownerReferences": owner.map(|(name, uid, controller)| vec![json!({
                    "apiVersion": "apps/v1", "kind": "StatefulSet", "name": name, "uid": uid, "controller": controller
                })]),
            },
        }))
        .unwrap()
    }

    fn statefulset(owner_uid: &str) -> StatefulSet {
        serde_json::from_value(json!({
            "metadata": {
                "name": "demo", "uid": "sts-uid",
                "ownerReferences": [{
                    "apiVersion": "observability.merlionos.org/v1", "kind": "PrometheusCluster", "name": "demo",
                    "uid": owner_uid, "controller": true
                }],
            },
        }))
        .unwrap()
    }

    #[test]
    fn the_token_goes_only_to_pods_of_the_clusters_own_statefulset() {
        let pods = [
            pod("demo-0", Some(("demo", "sts-uid", true))),
            pod("demo-1", None),
            pod("demo-2", Some(("demo", "uid-of-an-older-statefulset", true))),
            pod("demo-3", Some(("other", "sts-uid", true))),
            pod("demo-4", Some(("demo", "sts-uid", false))),
        ];
        let names = |v: Vec<&Pod>| v.into_iter().map(ResourceExt::name_any).collect::<Vec<_>>();
        assert_eq!(names(member_pods(&pods, Some(&statefulset("uid-1")), "uid-1")), ["demo-0"]);
        assert!(member_pods(&pods, Some(&statefulset("uid-of-another")), "uid-1").is_empty());
        assert!(member_pods(&pods, None, "uid-1").is_empty());
    }

    #[tokio::test]
    async fn a_refused_token_is_read_again_from_the_secret_and_retried_once() {
        let reads = std::sync::atomic::AtomicU32::new(0);
        let calls = std::sync::Mutex::new(Vec::new());
        let read = || async {
            reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok("rotated".to_owned())
        };
        let call = |token: String| {
            calls.lock().unwrap().push(token.clone());
            async move {
                if token == "rotated" {
                    Ok("started")
                } else {
                    Err(client::Error::Status { url: "http://pod/backup".into(), code: 401, body: String::new() })
                }
            }
        };
        let (token, answer) = call_with_token(Some("stale".into()), read, call).await.unwrap();
        assert_eq!((token.as_str(), answer.unwrap()), ("rotated", "started"));
        assert_eq!(*calls.lock().unwrap(), ["stale", "rotated"]);
        assert_eq!(reads.load(std::sync::atomic::Ordering::Relaxed), 1);

        // A token read just now and refused is not read again; other errors are not retried.
        calls.lock().unwrap().clear();
        let (_, answer) = call_with_token(None, || async { Ok("wrong".to_owned()) }, call).await.unwrap();
        assert!(answer.is_err());
        assert_eq!(*calls.lock().unwrap(), ["wrong"]);
        let unreachable = |_: String| async {
            Err::<(), _>(client::Error::Status { url: "http://pod/backup".into(), code: 500, body: String::new() })
        };
        let (token, answer) = call_with_token(Some("stale".into()), read, unreachable).await.unwrap();
        assert_eq!(token, "stale");
        assert!(answer.is_err());
    }

    #[test]
    fn retention_prunes_only_the_backups_of_this_cluster_uid() {
        let retention = Retention { keep_last: Some(3), max_age: Some(std::time::Duration::from_hours(48)) };
        let policy = retention_policy(&cluster("uid-1"), retention, &BackupConfig::default());
        assert_eq!((policy.keep_last, policy.max_age_seconds), (Some(3), Some(172_800)));
        assert_eq!(policy.cluster_uid, "uid-1");
        assert_eq!(policy.grace_seconds, 3600);
    }
}
