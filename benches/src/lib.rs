//! Benchmarks live in `benches/`; harnesses that report numbers in `src/bin/`. Shared inputs here.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use tsdb_operator_core::build::{self, BuildSettings};
use tsdb_operator_core::crd::PrometheusCluster;
use tsdb_operator_core::decide::{self, ClusterObservation};
use tsdb_operator_core::plan::{ChildKey, Step, plan_children};
use tsdb_operator_core::validate;

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
    let desired = build::build(&validate::cluster(pc).expect("a valid cluster"), settings)
        .and_then(|d| d.manifests(settings))
        .expect("builds");
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

pub use tsdb_operator_testenv::process::rss_kib;

/// The fixed `now` of the decision benchmarks.
///
/// # Panics
/// Never: the timestamp is in range.
pub fn now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).expect("a timestamp")
}

/// Children, pods and Secrets (name to keys) observed for a settled cluster.
pub type Observed = (BTreeMap<ChildKey, Value>, Vec<Pod>, BTreeMap<String, BTreeSet<String>>);

/// What the operator observes for `pc` once it is settled: its children with a ready StatefulSet, two running
/// pods and every Secret it refers to; and `pc` with the status the operator wrote.
///
/// # Panics
/// When `pc` does not render.
pub fn settled_observation(pc: &PrometheusCluster, settings: &BuildSettings) -> (Observed, PrometheusCluster) {
    let mut pc = pc.clone();
    pc.metadata.namespace.get_or_insert_with(|| "default".to_owned());
    let mut children = applied(&pc, settings);
    for (key, object) in &mut children {
        if key.kind == "StatefulSet" {
            object["metadata"]["generation"] = json!(1);
            object["status"] =
                json!({"observedGeneration": 1, "replicas": 2, "readyReplicas": 2, "updatedReplicas": 2});
        }
    }
    let pods: Vec<Pod> = (0..2)
        .map(|i| {
            serde_json::from_value(json!({"metadata": {"name": format!("prod-{i}")}, "status": {"phase": "Running"}}))
        })
        .collect::<Result<_, _>>()
        .expect("pods");
    let secrets = decide::secrets_to_read(&pc)
        .into_iter()
        .map(|s| {
            let keys = ["username", "password", "token", "objstore.yml", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"];
            (s, keys.into_iter().map(str::to_owned).collect())
        })
        .collect();
    let observed = (children, pods, secrets);
    let status = {
        let (children, pods, secrets) = &observed;
        let observation = ClusterObservation { pods, secrets: Some(secrets), ..ClusterObservation::of(&pc, children) };
        decide::decide_cluster(&observation, settings, now()).status
    };
    pc.status = Some(status);
    (observed, pc)
}

/// The number after `name` on the command line, or `default`.
pub fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The `p` quantile (0..=1) of `sorted`, nearest rank.
///
/// # Panics
/// When `sorted` is empty.
pub fn percentile(sorted: &[std::time::Duration], p: f64) -> std::time::Duration {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)] // an index
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
