//! Properties of the plan step: once the steps are applied, planning again against what the API server returns
//! yields no steps (no hot loop), whatever fields the server adds by defaulting and whatever empty fields it
//! drops; a changed spec always yields steps; planning is deterministic.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{Value, json};
use tsdb_operator_core::build::{self, BuildSettings, PdbApi};
use tsdb_operator_core::crd::PrometheusCluster;
use tsdb_operator_core::plan::{ChildKey, Step, plan_children};

fn cluster(replicas: i32, retention: &str, remote_writes: usize, thanos: bool, backup: bool) -> PrometheusCluster {
    let rw: Vec<Value> = (0..remote_writes)
        .map(|i| json!({"url": format!("https://rw{i}.example.com/api/v1/write"), "name": format!("rw{i}")}))
        .collect();
    let mut pc: PrometheusCluster = serde_json::from_value(json!({
        "apiVersion": "observability.merlionos.org/v1",
        "kind": "PrometheusCluster",
        "metadata": {"name": "demo", "namespace": "monitoring", "uid": "1b4e28ba-2fa1-11d2-883f-0016d3cca427"},
        "spec": {
            "replicas": replicas,
            "retention": retention,
            "remoteWrite": rw,
            "thanos": {"enabled": thanos},
            "backup": {"enabled": backup, "bucket": "b", "schedule": "@daily"},
            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
        }
    }))
    .expect("valid cluster");
    pc.metadata.generation = Some(1);
    pc
}

/// What an API server does to an applied object: it drops empty and false fields (Go's omitempty), adds
/// defaulted fields and metadata, and writes quantities in canonical form.
fn as_served(v: &Value, salt: u32) -> Value {
    match v {
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (k, val) in map {
                let empty = matches!(val, Value::Bool(false) | Value::Null)
                    || val.as_str() == Some("")
                    || val.as_array().is_some_and(Vec::is_empty)
                    || val.as_object().is_some_and(serde_json::Map::is_empty)
                    || val.as_i64() == Some(0);
                if !empty {
                    out.insert(k.clone(), as_served(val, salt.wrapping_add(1)));
                }
            }
            out.insert(format!("defaulted{salt}"), json!("server"));
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|i| as_served(i, salt)).collect()),
        Value::String(s) if s == "1Gi" => json!("1073741824"),
        Value::String(s) if s == "500m" => json!("0.5"),
        other => other.clone(),
    }
}

fn applied(steps: &[Step], salt: u32) -> BTreeMap<ChildKey, Value> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Apply { key, manifest, .. } => {
                let mut served = as_served(manifest, salt);
                served["metadata"]["resourceVersion"] = json!("7");
                served["status"] = json!({"observedGeneration": 1});
                Some((key.clone(), served))
            }
            Step::Delete { .. } => None,
        })
        .collect()
}

fn manifests(pc: &PrometheusCluster, pdb: PdbApi) -> Vec<Value> {
    let settings = BuildSettings { pdb_api: pdb, ..BuildSettings::default() };
    build::build(pc, &settings).and_then(|d| d.manifests(&settings)).expect("builds")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn plan_is_idempotent_after_the_server_applied_it(
        replicas in 1..6i32,
        retention in prop::sample::select(vec!["15d", "1h", "2w"]),
        remote_writes in 0..3usize,
        thanos: bool,
        backup: bool,
        v1beta1: bool,
        salt in 0..1000u32,
    ) {
        let pdb = if v1beta1 { PdbApi::V1beta1 } else { PdbApi::V1 };
        let desired = manifests(&cluster(replicas, retention, remote_writes, thanos, backup), pdb);
        let first = plan_children(&desired, &BTreeMap::new());
        prop_assert_eq!(first.steps.len(), desired.len(), "everything is created");
        let observed = applied(&first.steps, salt);
        let second = plan_children(&desired, &observed);
        prop_assert!(second.is_empty(), "second plan must be empty, got {:?}", second.steps);
    }

    #[test]
    fn a_changed_spec_always_yields_steps_and_planning_is_deterministic(
        replicas in 1..6i32,
        other_replicas in 1..6i32,
        salt in 0..1000u32,
    ) {
        prop_assume!(replicas != other_replicas);
        let before = manifests(&cluster(replicas, "15d", 1, false, false), PdbApi::V1);
        let observed = applied(&plan_children(&before, &BTreeMap::new()).steps, salt);
        let after = manifests(&cluster(other_replicas, "15d", 1, false, false), PdbApi::V1);
        let plan = plan_children(&after, &observed);
        prop_assert!(plan.steps.iter().any(|s| s.key().kind == "StatefulSet"), "{:?}", plan.steps);
        prop_assert_eq!(plan.clone(), plan_children(&after, &observed));
        // Going to one replica removes the PodDisruptionBudget.
        if other_replicas == 1 {
            let deletes_pdb = plan.steps.iter().any(|s| matches!(s, Step::Delete { key } if key.kind == "PodDisruptionBudget"));
            prop_assert!(deletes_pdb, "{:?}", plan.steps);
        }
    }
}
