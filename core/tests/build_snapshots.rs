//! Snapshots of every rendered object for every cluster fixture (`fixtures/clusters/*.yaml`), stored in
//! `snapshots/build/` and reviewed like code; and the validation errors of every invalid fixture
//! (`fixtures/clusters-invalid/`, in `snapshots/validate/`).

mod common;

use common::{fixtures, settings};
use tsdb_operator_core::build::{self, BuildSettings, PdbApi};
use tsdb_operator_core::validate;

#[test]
fn every_fixture_renders_the_reviewed_objects() {
    for (name, cluster) in fixtures("clusters") {
        let objects = build::build(&validate::cluster(&cluster).expect("a valid cluster"), &settings())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let prometheus_yml = objects.config_map.data.as_ref().and_then(|d| d.get("prometheus.yml")).cloned();
        insta::with_settings!({
            snapshot_path => "../../snapshots/build",
            prepend_module_to_snapshot => false,
            description => format!("fixtures/clusters/{name}.yaml"),
            omit_expression => true,
        }, {
            insta::assert_yaml_snapshot!(format!("{name}__config_map"), objects.config_map);
            insta::assert_snapshot!(format!("{name}__prometheus_yml"), prometheus_yml.unwrap_or_default());
            insta::assert_yaml_snapshot!(format!("{name}__service"), objects.service);
            insta::assert_yaml_snapshot!(format!("{name}__stateful_set"), objects.stateful_set);
            insta::assert_yaml_snapshot!(format!("{name}__pod_disruption_budget"), objects.pod_disruption_budget);
        });
    }
}

#[test]
fn every_invalid_fixture_is_rejected_by_validation_with_a_message_naming_the_field() {
    let all = fixtures("clusters-invalid");
    assert!(!all.is_empty());
    for (name, cluster) in all {
        let errors = validate::cluster(&cluster).expect_err(&name);
        insta::with_settings!({
            snapshot_path => "../../snapshots/validate",
            prepend_module_to_snapshot => false,
            description => format!("fixtures/clusters-invalid/{name}.yaml"),
            omit_expression => true,
        }, {
            insta::assert_snapshot!(format!("invalid__{name}"), errors.to_string());
        });
    }
}

#[test]
fn manifests_carry_api_version_and_kind_in_apply_order() {
    let (_, cluster) = fixtures("clusters").into_iter().find(|(n, _)| n == "typical").unwrap();
    let settings = settings();
    let manifests = build::build(&validate::cluster(&cluster).expect("a valid cluster"), &settings)
        .unwrap()
        .manifests(&settings)
        .unwrap();
    let kinds: Vec<(String, String)> = manifests
        .iter()
        .map(|m| (m["apiVersion"].as_str().unwrap().to_owned(), m["kind"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        kinds,
        [("v1", "ConfigMap"), ("v1", "Service"), ("policy/v1", "PodDisruptionBudget"), ("apps/v1", "StatefulSet")]
            .map(|(a, k)| (a.to_owned(), k.to_owned()))
    );
}

#[test]
fn pdb_manifest_uses_v1beta1_for_old_servers_with_the_same_spec() {
    let (_, cluster) = fixtures("clusters").into_iter().find(|(n, _)| n == "typical").unwrap();
    let v1 = settings();
    let v1beta1 = BuildSettings { pdb_api: PdbApi::V1beta1, ..settings() };
    let objects = build::build(&validate::cluster(&cluster).expect("a valid cluster"), &v1).unwrap();
    let pdb = |s: &BuildSettings| {
        objects.manifests(s).unwrap().into_iter().find(|m| m["kind"] == "PodDisruptionBudget").unwrap()
    };
    assert_eq!(pdb(&v1beta1)["apiVersion"], "policy/v1beta1");
    assert_eq!(pdb(&v1beta1)["spec"], pdb(&v1)["spec"]);
    assert_eq!(pdb(&v1beta1)["spec"]["maxUnavailable"], 1);
}

#[test]
fn single_replica_clusters_get_no_pdb_and_no_anti_affinity() {
    let (_, cluster) = fixtures("clusters").into_iter().find(|(n, _)| n == "minimal").unwrap();
    let objects = build::build(&validate::cluster(&cluster).expect("a valid cluster"), &settings()).unwrap();
    assert!(objects.pod_disruption_budget.is_none());
    let pod = objects.stateful_set.spec.unwrap().template.spec.unwrap();
    assert!(pod.affinity.is_none());
}

#[test]
fn dry_run_input_without_uid_gets_no_owner_reference() {
    let (_, cluster) = fixtures("clusters").into_iter().find(|(n, _)| n == "readme-sample").unwrap();
    assert!(cluster.metadata.uid.is_none());
    let objects = build::build(&validate::cluster(&cluster).expect("a valid cluster"), &settings()).unwrap();
    assert!(objects.config_map.metadata.owner_references.is_none());
    assert!(objects.stateful_set.metadata.owner_references.is_none());
}

#[test]
fn every_object_has_a_controller_owner_reference_to_the_cluster() {
    let (_, cluster) = fixtures("clusters").into_iter().find(|(n, _)| n == "typical").unwrap();
    let settings = settings();
    for manifest in build::build(&validate::cluster(&cluster).expect("a valid cluster"), &settings)
        .unwrap()
        .manifests(&settings)
        .unwrap()
    {
        let owners = manifest["metadata"]["ownerReferences"].as_array().unwrap();
        assert_eq!(owners.len(), 1, "{}", manifest["kind"]);
        assert_eq!(owners[0]["kind"], "PrometheusCluster");
        assert_eq!(owners[0]["apiVersion"], "observability.merlionos.org/v1");
        assert_eq!(owners[0]["uid"], cluster.metadata.uid.clone().unwrap());
        assert_eq!(owners[0]["controller"], true);
    }
}
