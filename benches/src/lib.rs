//! Benchmarks live in `benches/`; harnesses that report numbers in `src/bin/`. Shared inputs here.

use std::collections::BTreeMap;

use serde_json::Value;
use tsdb_operator_core::build::{self, BuildSettings};
use tsdb_operator_core::crd::PrometheusCluster;
use tsdb_operator_core::plan::{ChildKey, Step, plan_children};

/// The typical cluster of the render + plan benchmark (`fixtures/clusters/typical.yaml`: 2 replicas,
/// remote_write, backup, Thanos).
///
/// # Panics
/// When the committed fixture does not parse.
pub fn typical_cluster() -> PrometheusCluster {
    serde_yaml::from_str(include_str!("../../fixtures/clusters/typical.yaml")).expect("fixture parses")
}

/// What the server holds after the first apply of `pc`'s children: the steady state the operator sees on every
/// resync.
///
/// # Panics
/// When `pc` does not render.
pub fn applied(pc: &PrometheusCluster, settings: &BuildSettings) -> BTreeMap<ChildKey, Value> {
    let desired = build::build(pc, settings).and_then(|d| d.manifests(settings)).expect("builds");
    plan_children(&desired, &BTreeMap::new())
        .steps
        .into_iter()
        .filter_map(|s| match s {
            Step::Apply { key, manifest, .. } => Some((key, manifest)),
            Step::Delete { .. } => None,
        })
        .collect()
}
