//! `tsdb-ctl validate` and `tsdb-ctl plan` on the fixtures: exit codes, messages, and output that kubectl or yq
//! can read (multi-document YAML of valid Kubernetes objects).

#![allow(clippy::unwrap_used)] // test helpers

use std::process::Command;

fn ctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tsdb-ctl"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("tsdb-ctl runs")
}

#[test]
fn validate_accepts_every_valid_fixture() {
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/clusters")).unwrap() {
        let path = entry.unwrap().path();
        let out = ctl(&["validate", "-f", path.to_str().unwrap()]);
        assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn validate_exits_1_with_the_seed_message_and_the_field() {
    let out = ctl(&["validate", "-f", "fixtures/clusters-invalid/zero-replicas.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("spec.replicas: Invalid value: 0: must be >= 1"), "{stderr}");
}

#[test]
fn validate_reports_a_missing_file_clearly() {
    let out = ctl(&["validate", "-f", "does-not-exist.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("failed to read does-not-exist.yaml"));
}

fn documents(yaml: &str) -> Vec<serde_json::Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &serde_json::Value| !v.is_null())
        .collect()
}

#[test]
fn plan_prints_the_objects_to_apply_with_steps_as_comments() {
    let out = ctl(&["plan", "-f", "fixtures/clusters/typical.yaml", "--pdb-api", "v1beta1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.starts_with("# tsdb-ctl plan: PrometheusCluster monitoring/prod: 4 step(s)"), "{stdout}");
    let docs = documents(&stdout);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget"]);
    assert!(docs.iter().all(|d| d["metadata"]["namespace"] == "monitoring"));
    assert_eq!(docs[3]["apiVersion"], "policy/v1beta1");
}

#[test]
fn plan_against_the_observed_state_lists_only_what_changes() {
    // Observed = what the plan would create, as a kubectl `List`; then the spec changes replicas.
    let first = ctl(&["plan", "-f", "fixtures/clusters/typical.yaml"]);
    let items = documents(&String::from_utf8(first.stdout).unwrap());
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    let dir = std::env::temp_dir().join(format!("tsdb-ctl-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let observed = dir.join("observed.yaml");
    std::fs::write(&observed, serde_yaml::to_string(&list).unwrap()).unwrap();

    let same = ctl(&[
        "plan",
        "-f",
        "fixtures/clusters/typical.yaml",
        "--observed",
        observed.to_str().unwrap(),
        "--output",
        "steps",
    ]);
    assert!(same.status.success());
    assert_eq!(String::from_utf8(same.stdout).unwrap().trim(), "[]", "nothing to do against its own output");

    let changed = dir.join("changed.yaml");
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/clusters/typical.yaml")).unwrap();
    std::fs::write(&changed, text.replace("replicas: 2", "replicas: 1")).unwrap();
    let out =
        ctl(&["plan", "-f", changed.to_str().unwrap(), "--observed", observed.to_str().unwrap(), "--output", "steps"]);
    let steps = documents(&String::from_utf8(out.stdout).unwrap()).remove(0);
    let steps: Vec<(String, String)> = steps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["action"].as_str().unwrap().to_owned(), s["kind"].as_str().unwrap().to_owned()))
        .collect();
    assert!(steps.contains(&("apply".into(), "StatefulSet".into())), "{steps:?}");
    assert!(steps.contains(&("delete".into(), "PodDisruptionBudget".into())), "{steps:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
