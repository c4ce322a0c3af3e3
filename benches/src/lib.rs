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
            Step::Delete { .. } | Step::Resize { .. } | Step::Orphan { .. } => None,
        })
        .collect()
}

/// The operator binary for a harness: `given` (by default `target/release/tsdb-operator`), else the debug build,
/// as an absolute path.
pub fn operator_binary(given: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context as _;
    let path = if given.exists() { given } else { std::path::Path::new("target/debug/tsdb-operator") };
    std::fs::canonicalize(path).context("build the operator first: cargo build --release --bins")
}

/// Resident set size of `pid` now and at its peak (`VmRSS`, `VmHWM` from `/proc`), in KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}
