//! Properties of the plan step: once the steps are applied, planning again against what the API server returns
//! yields no steps (no hot loop), whatever fields the server adds by defaulting and whatever empty fields it
//! drops; a changed spec always yields steps; planning is deterministic. Planning the typed objects
//! (`plan_objects`) gives the same plan as planning their JSON manifests (`plan_children`).

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{Value, json};
use tsdb_operator_core::build::{self, BuildSettings, PdbApi};
use tsdb_operator_core::crd::PrometheusCluster;
use tsdb_operator_core::plan::{ApplyReason, ChildKey, Plan, Step, manifest_hash, plan_children, plan_objects};

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
            Step::Delete { .. } | Step::Resize { .. } | Step::Orphan { .. } => None,
        })
        .collect()
}

fn manifests(pc: &PrometheusCluster, pdb: PdbApi) -> Vec<Value> {
    let settings = BuildSettings { pdb_api: pdb, ..BuildSettings::default() };
    build::build(&tsdb_operator_core::validate::cluster(pc).expect("a valid cluster"), &settings)
        .and_then(|d| d.manifests(&settings))
        .expect("builds")
}

/// `plan_objects` of the cluster's typed objects, checked against `plan_children` of its manifests.
fn plan_typed(
    pc: &PrometheusCluster,
    pdb: PdbApi,
    observed: &BTreeMap<ChildKey, Value>,
) -> Result<Plan, TestCaseError> {
    let settings = BuildSettings { pdb_api: pdb, ..BuildSettings::default() };
    let objects =
        build::build(&tsdb_operator_core::validate::cluster(pc).expect("a valid cluster"), &settings).expect("builds");
    let typed = plan_objects(&objects, &settings, observed).expect("plans");
    let from_json = plan_children(&objects.manifests(&settings).expect("serializes"), observed);
    prop_assert_eq!(&typed, &from_json);
    Ok(typed)
}

/// JSON pointers of the scalar leaves of `v`.
fn leaves(v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                leaves(v, &format!("{path}/{}", k.replace('~', "~0").replace('/', "~1")), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                leaves(v, &format!("{path}/{i}"), out);
            }
        }
        _ => out.push(path.to_owned()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Planning both ways: the typed objects (`plan_objects`) and their manifests (`plan_children`).
    #[test]
    fn plan_is_idempotent_after_the_server_applied_it(
        replicas in 1..6i32,
        other_replicas in 1..6i32,
        retention in prop::sample::select(vec!["15d", "1h", "2w"]),
        remote_writes in 0..3usize,
        thanos: bool,
        backup: bool,
        v1beta1: bool,
        salt in 0..1000u32,
    ) {
        let pdb = if v1beta1 { PdbApi::V1beta1 } else { PdbApi::V1 };
        let pc = cluster(replicas, retention, remote_writes, thanos, backup);
        let first = plan_typed(&pc, pdb, &BTreeMap::new())?;
        prop_assert_eq!(first.steps.len(), manifests(&pc, pdb).len(), "everything is created");
        for step in &first.steps {
            let Step::Apply { manifest, .. } = step else { panic!("only applies") };
            let stamped = &manifest["metadata"]["annotations"]["observability.merlionos.org/applied-hash"];
            let hash = manifest_hash(manifest);
            prop_assert_eq!(stamped.as_str(), Some(hash.as_str()));
        }
        let observed = applied(&first.steps, salt);
        let second = plan_typed(&pc, pdb, &observed)?;
        prop_assert!(second.is_empty(), "second plan must be empty, got {:?}", second.steps);
        // Another spec: the same steps (SpecChanged, deletions) both ways.
        plan_typed(&cluster(other_replicas, "2w", remote_writes, !thanos, backup), pdb, &observed)?;
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

    #[test]
    fn an_edited_field_is_drift_of_that_field_on_both_paths(
        replicas in 1..4i32,
        thanos: bool,
        backup: bool,
        pick in any::<prop::sample::Index>(),
        salt in 0..1000u32,
    ) {
        let pc = cluster(replicas, "15d", 1, thanos, backup);
        let created = plan_typed(&pc, PdbApi::V1, &BTreeMap::new())?;
        let mut observed = applied(&created.steps, salt);
        // Edit one leaf the operator set (not its own hash, not apiVersion, which is never compared).
        let mut candidates = Vec::new();
        for (key, served) in &observed {
            let Some(Step::Apply { manifest, .. }) = created.steps.iter().find(|s| s.key() == key) else { continue };
            let mut paths = Vec::new();
            leaves(manifest, "", &mut paths);
            candidates.extend(
                paths
                    .into_iter()
                    .filter(|p| !p.contains("applied-hash") && p != "/apiVersion" && served.pointer(p).is_some())
                    .map(|p| (key.clone(), p)),
            );
        }
        let (key, pointer) = pick.get(&candidates).clone();
        let leaf = observed.get_mut(&key).and_then(|o| o.pointer_mut(&pointer)).expect("leaf exists");
        *leaf = match leaf.take() {
            Value::Bool(b) => json!(!b),
            Value::Number(n) => json!(n.as_f64().unwrap_or(0.0) + 7.0),
            other => json!(format!("{}-edited", other.as_str().unwrap_or("x"))),
        };
        let plan = plan_typed(&pc, PdbApi::V1, &observed)?;
        prop_assert_eq!(plan.steps.len(), 1, "{:?}", plan.steps);
        let Step::Apply { key: applied_key, reason: ApplyReason::Drift { field }, .. } = &plan.steps[0] else {
            return Err(TestCaseError::fail(format!("not drift: {:?}", plan.steps)));
        };
        prop_assert_eq!(applied_key, &key);
        let expected = pointer.trim_start_matches('/').split('/').fold(String::new(), |mut out, segment| {
            let segment = segment.replace("~1", "/").replace("~0", "~");
            if segment.parse::<usize>().is_ok() {
                out.push('[');
                out.push_str(&segment);
                out.push(']');
            } else {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&segment);
            }
            out
        });
        prop_assert_eq!(field, &expected);
    }
}
