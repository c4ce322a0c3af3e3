//! # tsdb-operator-core
//!
//! The pure, synchronous core of tsdb-operator. Given a `PrometheusCluster` and what adapters observed in the
//! cluster (plain data) and `now`, it says what to do, as plain data. No I/O, no clock (`now` is an argument), no
//! async, no environment; `scripts/check-core-purity.sh` enforces it.
//!
//! ```text
//!   observed (cluster, children, pods, claims, Secrets, agent reports) + now
//!        │
//!        ▼
//!   decide::decide_cluster ── validate ─► ownership ─► paused? ─► build ─► plan ─► status ─► events ─► next
//!        │
//!        ▼
//!   ClusterDecision { outcome, stages (steps + events), status, events, next }  ──► the caller carries it out
//! ```
//!
//! # Embedding the core
//! A controller of your own (kube-runtime or any other) that reconciles PrometheusClusters like the operator:
//! 1. Observe: the objects named by [`decide::child_names`] (as JSON with `apiVersion` and `kind`), the cluster's
//!    pods and claims, and the Secrets of [`decide::secrets_to_read`]. Start from
//!    [`decide::ClusterObservation::of`] and fill in what you observed.
//! 2. Decide: [`decide::decide_cluster`] with your [`build::BuildSettings`] and the current time.
//! 3. Carry out: apply each stage's [`plan::Step`]s with server-side apply, write the status when
//!    [`decide::ClusterDecision::status_changed`], publish the events, and look again at
//!    [`decide::ClusterDecision::next`]. `examples/embed` in the repository does this in one file.
//!
//! The other decisions follow the same shape: [`heal`] (self-healing), [`backup`] (schedules, retention,
//! restore plans) and [`clusterset`] (cluster sets).
#![warn(missing_docs)]

pub mod admission;
pub mod api;
pub mod audit;
pub mod backup;
pub mod build;
pub mod certificates;
pub mod clusterset;
pub mod constants;
pub mod crd;
pub mod decide;
pub mod duration;
pub mod events;
pub mod heal;
pub mod migrate;
pub mod monitors;
pub mod plan;
pub mod quantity;
pub mod reload;
pub mod schedule;
pub mod secrets;
pub mod selector;
pub mod status;
pub mod storage;
mod terms;
pub mod validate;
pub mod web;
