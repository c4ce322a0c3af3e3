//! The `prometheusclusterset` controller: membership, backup-template overlay and status (the seed's semantics).
//! I/O: the Kubernetes API.
//!
//! # Flow
//! 1. Read the PrometheusClusters from the operator's one store (filled by the cluster controller's watch, which
//!    reads each object on its own, so an unreadable cluster never stops the sets), and list Namespaces (metadata
//!    only) when the set has a namespace selector.
//! 2. `select_members` and `decide_overlay` in the core; overlays are written with an optimistic-concurrency
//!    replace of the member (a conflict is retried), and a `BackupOverlaid` event is published on the member.
//! 3. `build_set_status`; written with server-side apply on the status subresource when it changed.
//!
//! Any PrometheusCluster change (a metadata-only watch, which always decodes) enqueues every set, so membership
//! and phases are reflected within seconds.
//! Deleting a set leaves its members untouched.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self as runtime, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tsdb_operator_core::clusterset::{OverlayDecision, build_set_status, decide_overlay, select_members};
use tsdb_operator_core::constants::{FIELD_MANAGER, annotations};
use tsdb_operator_core::crd::{PrometheusCluster, PrometheusClusterSet};
use tsdb_operator_core::events::Action;
use tsdb_operator_core::selector;

use super::{Context, now};

/// Name of the controller.
pub const CONTROLLER: &str = "prometheusclusterset";

/// Why a set reconcile failed. Retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Listing clusters or namespaces failed.
    #[error("failed to list {what}")]
    List {
        /// What was listed.
        what: &'static str,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Writing the overlay into a member failed.
    #[error("failed to overlay the backup template on {member}")]
    Overlay {
        /// `namespace/name` of the member.
        member: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Writing the status failed.
    #[error("failed to write the status")]
    WriteStatus(#[source] kube::Error),
}

impl Error {
    /// Every category [`Error::category`] returns.
    pub const CATEGORIES: [&'static str; 3] = ["List", "Overlay", "WriteStatus"];

    /// A short, stable name of the error's kind, the `category` label of `tsdb_operator_reconcile_errors_total`.
    pub fn category(&self) -> &'static str {
        match self {
            Error::List { .. } => "List",
            Error::Overlay { .. } => "Overlay",
            Error::WriteStatus(_) => "WriteStatus",
        }
    }
}

/// What a set reconcile reads: the shared context and the operator's store of PrometheusClusters.
pub struct SetContext {
    /// The controllers' shared context.
    pub ctx: Arc<Context>,
    /// Every PrometheusCluster the operator could read.
    pub clusters: Store<PrometheusCluster>,
}

/// Runs the controller until `shutdown` resolves. `clusters` is the store the cluster controller fills; sets are
/// reconciled once it holds its first complete list.
pub async fn run(
    ctx: Arc<Context>,
    clusters: Store<PrometheusCluster>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    if clusters.wait_until_ready().await.is_err() {
        return;
    }
    ctx.metrics.init_controller(CONTROLLER, &Error::CATEGORIES);
    let client = ctx.client.clone();
    let controller = Controller::new(Api::<PrometheusClusterSet>::all(client.clone()), super::watch_config());
    let sets = controller.store();
    let cluster_changes =
        watcher(Api::<PartialObjectMeta<PrometheusCluster>>::all(client), super::watch_config()).touched_objects();
    let concurrency = ctx.concurrency;
    controller
        .watches_stream(cluster_changes, move |_pc| {
            sets.state().iter().map(|s| ObjectRef::from_obj(s.as_ref())).collect::<Vec<_>>()
        })
        .trigger_backoff(super::watch_backoff())
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, Arc::new(SetContext { ctx, clusters }))
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "set reconcile failed");
            }
        })
        .await;
}

/// One reconcile of one set.
#[tracing::instrument(skip(set, sctx), fields(name = set.name_any()))]
pub async fn reconcile(set: Arc<PrometheusClusterSet>, sctx: Arc<SetContext>) -> Result<runtime::Action, Error> {
    let started = Instant::now();
    let ctx = &sctx.ctx;
    let result = reconcile_inner(&set, ctx, &sctx.clusters).await;
    ctx.metrics.observe_reconcile(CONTROLLER, started.elapsed(), result.as_ref().err().map(Error::category));
    if result.is_ok() {
        ctx.backoff.success(&format!("set/{}", set.name_any()));
    }
    result
}

async fn reconcile_inner(
    set: &PrometheusClusterSet,
    ctx: &Context,
    clusters: &Store<PrometheusCluster>,
) -> Result<runtime::Action, Error> {
    let clusters = clusters.state();
    let mut namespace_labels = BTreeMap::new();
    if !selector::is_empty(set.spec.namespace_selector.as_ref()) {
        let ns_api: Api<PartialObjectMeta<Namespace>> = Api::all(ctx.client.clone());
        let lp = ListParams::default().limit(super::LIST_PAGE_SIZE);
        let mut continue_token: Option<String> = None;
        // Bounded: a page per LIST_PAGE_SIZE namespaces, and at most 1,000 pages.
        for _ in 0..1_000 {
            let lp = match &continue_token {
                Some(token) => lp.clone().continue_token(token),
                None => lp.clone(),
            };
            let page = ns_api.list_metadata(&lp).await.map_err(|source| Error::List { what: "Namespaces", source })?;
            for ns in page.items {
                namespace_labels.insert(ns.name_any(), ns.metadata.labels.unwrap_or_default());
            }
            continue_token = page.metadata.continue_.filter(|t| !t.is_empty());
            if continue_token.is_none() {
                break;
            }
        }
    }
    let members = select_members(set, clusters.iter().map(AsRef::as_ref), &namespace_labels);

    for member in &members {
        if let OverlayDecision::Apply { backup, set_name } = decide_overlay(set, member) {
            let ns = member.namespace().unwrap_or_default();
            let id = format!("{ns}/{}", member.name_any());
            let mut updated = (*member).clone();
            updated.spec.backup = *backup;
            updated.annotations_mut().insert(annotations::CLUSTERSET.to_owned(), set_name.clone());
            let api: Api<PrometheusCluster> = Api::namespaced(ctx.client.clone(), &ns);
            // The replace carries the member's resourceVersion: a concurrent edit makes it fail and we retry.
            api.replace(
                &member.name_any(),
                &PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() },
                &updated,
            )
            .await
            .map_err(|source| Error::Overlay { member: id, source })?;
            ctx.events.publish(
                &member.object_ref(&()),
                ctx.events.operator_actor(),
                Action::BackupOverlaid { set: set_name },
            );
        }
    }

    let status = build_set_status(set, &members, now());
    if set.status.as_ref() != Some(&status) {
        let api: Api<PrometheusClusterSet> = Api::all(ctx.client.clone());
        let patch = json!({
            "apiVersion": PrometheusClusterSet::api_version(&()),
            "kind": PrometheusClusterSet::kind(&()),
            "status": status,
        });
        api.patch_status(&set.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
            .await
            .map_err(Error::WriteStatus)?;
    }
    // Namespace label changes are not watched; a slow resync picks them up.
    Ok(runtime::Action::requeue(Duration::from_mins(2)))
}

/// Retry with per-object exponential backoff.
#[allow(clippy::needless_pass_by_value)] // the signature kube-runtime's Controller::run expects
pub fn error_policy(set: Arc<PrometheusClusterSet>, error: &Error, sctx: Arc<SetContext>) -> runtime::Action {
    let delay = sctx.ctx.backoff.failure(&format!("set/{}", set.name_any()));
    tracing::warn!(name = set.name_any(), category = error.category(), error = %crate::error_chain(error),
        retry_in = ?delay, "set reconcile failed");
    runtime::Action::requeue(delay)
}
