//! # tsdb-operator-core
//!
//! The pure, synchronous core of tsdb-operator. Given a `PrometheusCluster` spec and what adapters observed in
//! the cluster (plain data), it says what the cluster should look like and what to do next, as plain data.
//! No I/O, no clock (`now` is an argument), no async, no environment.
//!
//! ```text
//!   spec ──► validate ──► build (desired objects) ──► plan (diff vs observed) ──► steps ──► adapters apply
//!                │                                         ▲
//!                └──────────► status (phase, conditions) ◄─┴── observed (StatefulSet, pods, children)
//! ```
#![warn(missing_docs)]

pub mod backup;
pub mod build;
pub mod clusterset;
pub mod constants;
pub mod crd;
pub mod duration;
pub mod events;
pub mod heal;
pub mod plan;
pub mod quantity;
pub mod schedule;
pub mod secrets;
pub mod selector;
pub mod status;
mod terms;
pub mod validate;
