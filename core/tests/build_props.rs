//! Properties of the build step over arbitrary clusters, valid or not: it never panics (bad input is an `Err`),
//! it is deterministic (same input, byte-identical YAML), it never changes its input, what it renders is
//! consistent (every mount has a volume, volume names are unique and valid), and a spec that passes validation
//! with a valid name always builds.

#[path = "common/generate.rs"]
mod generate;

use std::collections::BTreeSet;

use generate::cluster;
use proptest::prelude::*;
use tsdb_operator_core::build::{self, BuildSettings, DesiredObjects, PdbApi};
use tsdb_operator_core::validate;

fn settings() -> BuildSettings {
    BuildSettings {
        agent_image: "ghcr.io/merlionos/tsdb-operator:test".to_owned(),
        pdb_api: PdbApi::V1beta1,
        ..BuildSettings::default()
    }
}

fn to_yaml(objects: &DesiredObjects) -> String {
    let manifests = objects.manifests(&settings()).expect("manifests serialize");
    manifests
        .iter()
        .map(|m| serde_yaml::to_string(m).expect("a manifest serializes to YAML"))
        .collect::<Vec<_>>()
        .join("---\n")
}

fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Every mount names a volume or the claim template; volume names are unique valid DNS labels.
fn check_consistent(objects: &DesiredObjects) -> Result<(), TestCaseError> {
    let sts = objects.stateful_set.spec.as_ref().expect("a StatefulSet spec");
    let pod = sts.template.spec.as_ref().expect("a pod spec");
    let mut volumes = BTreeSet::new();
    for v in pod.volumes.iter().flatten() {
        prop_assert!(is_dns1123_label(&v.name), "volume name {:?}", v.name);
        prop_assert!(volumes.insert(v.name.clone()), "duplicate volume {:?}", v.name);
    }
    for claim in sts.volume_claim_templates.iter().flatten() {
        volumes.insert(claim.metadata.name.clone().unwrap_or_default());
    }
    for container in &pod.containers {
        let mut paths = BTreeSet::new();
        for m in container.volume_mounts.iter().flatten() {
            prop_assert!(volumes.contains(&m.name), "{} mounts unknown volume {:?}", container.name, m.name);
            prop_assert!(paths.insert(m.mount_path.clone()), "{} mounts {:?} twice", container.name, m.mount_path);
        }
    }
    let template_labels = sts.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    for (k, v) in sts.selector.match_labels.iter().flatten() {
        prop_assert_eq!(template_labels.get(k), Some(v));
    }
    prop_assert_eq!(sts.service_name.as_deref(), objects.stateful_set.metadata.name.as_deref());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn validation_and_build_never_panic_are_deterministic_and_leave_their_input_alone(cluster in cluster()) {
        let before = cluster.clone();
        let first = validate::cluster(&cluster).map(|valid| build::build(&valid, &settings()));
        prop_assert_eq!(&cluster.metadata, &before.metadata);
        prop_assert_eq!(&cluster.spec, &before.spec);
        prop_assert_eq!(&cluster.status, &before.status);
        let second = validate::cluster(&cluster).map(|valid| build::build(&valid, &settings()));
        match (&first, &second) {
            (Ok(Ok(a)), Ok(Ok(b))) => {
                prop_assert_eq!(to_yaml(a), to_yaml(b));
                check_consistent(a)?;
            }
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            _ => prop_assert!(false, "two validations and builds of the same input disagree: {first:?} {second:?}"),
        }
    }

    /// Every cluster that validation accepts builds: the builders check nothing of their own.
    #[test]
    fn every_cluster_that_passes_validation_builds(cluster in cluster()) {
        if let Ok(valid) = validate::cluster(&cluster) {
            let built = build::build(&valid, &settings());
            prop_assert!(built.is_ok(), "validation passed but build failed: {:?}", built.err());
        }
    }
}
