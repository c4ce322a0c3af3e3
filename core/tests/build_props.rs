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
use tsdb_operator_core::validate::validate_cluster;

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
    fn build_never_panics_is_deterministic_and_leaves_its_input_alone(cluster in cluster()) {
        let before = cluster.clone();
        let first = build::build(&cluster, &settings());
        prop_assert_eq!(&cluster.metadata, &before.metadata);
        prop_assert_eq!(&cluster.spec, &before.spec);
        prop_assert_eq!(&cluster.status, &before.status);
        let second = build::build(&cluster, &settings());
        match (&first, &second) {
            (Ok(a), Ok(b)) => {
                prop_assert_eq!(to_yaml(a), to_yaml(b));
                check_consistent(a)?;
            }
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            _ => prop_assert!(false, "two builds of the same input disagree"),
        }
    }

    /// Every spec that validation accepts builds, with two known gaps of validation that build catches (and the
    /// operator reports on the cluster): validation does not read the image's version, so an old image with what
    /// it cannot run passes; and it accepts identical unnamed remote writes, which stop Prometheus from starting.
    #[test]
    fn a_spec_that_passes_validation_with_a_valid_name_builds(cluster in cluster()) {
        let name_ok = cluster.metadata.name.as_deref().is_some_and(|n| {
            n.len() <= build::MAX_NAME_LEN && n.starts_with(|c: char| c.is_ascii_lowercase()) && is_dns1123_label(n)
        });
        if name_ok && validate_cluster(&cluster.spec).is_ok() {
            match build::build(&cluster, &settings()) {
                Ok(_) | Err(build::Error::UnsupportedPrometheusVersion { .. }) => {}
                Err(build::Error::DuplicateRemoteWrite { index, first })
                    if cluster.spec.remote_write[index] == cluster.spec.remote_write[first]
                        && cluster.spec.remote_write[index].name.is_empty() => {}
                Err(e) => prop_assert!(false, "validation passed but build failed: {e}"),
            }
        }
    }
}
