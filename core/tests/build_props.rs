//! Properties of the build step over arbitrary clusters, valid or not: it never panics (bad input is an `Err`),
//! it is deterministic (same input, byte-identical YAML), it never changes its input, what it renders is
//! consistent (every mount has a volume, volume names are unique and valid), and a spec that passes validation
//! with a valid name always builds.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{LocalObjectReference, PodSecurityContext, SecretKeySelector};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use proptest::prelude::*;
use tsdb_operator_core::build::{self, BuildSettings, DesiredObjects, PdbApi};
use tsdb_operator_core::crd::{
    AdditionalScrapeConfigs, PrometheusCluster, PrometheusClusterSpec, RemoteWriteSpec, ThanosSpec,
};
use tsdb_operator_core::validate::validate_cluster;

/// Mostly valid values, sometimes known-bad ones, sometimes anything.
fn text(valid: &'static [&'static str], invalid: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        20 => proptest::sample::select(valid).prop_map(str::to_owned),
        1 => proptest::sample::select(invalid).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

fn secret_ref() -> impl Strategy<Value = Option<LocalObjectReference>> {
    proptest::option::weighted(
        0.3,
        text(&["creds", "rw.token", "other"], &["", "Bad_Name", "a/b"]).prop_map(|name| LocalObjectReference { name }),
    )
}

fn remote_write() -> impl Strategy<Value = RemoteWriteSpec> {
    (
        text(&["https://metrics.example.com/api/v1/push", "http://10.0.0.1:9201/write"], &[""]),
        text(&["", "a", "b"], &[" "]),
        secret_ref(),
        secret_ref(),
    )
        .prop_map(|(url, name, basic, bearer)| RemoteWriteSpec {
            url,
            name,
            basic_auth_secret_ref: basic,
            bearer_token_secret_ref: bearer,
            ..RemoteWriteSpec::default()
        })
}

fn scrape_configs() -> impl Strategy<Value = Option<AdditionalScrapeConfigs>> {
    let inline = || {
        text(
            &["- job_name: node\n  static_configs:\n  - targets: ['a:9100']\n", "- job_name: a\n- job_name: b\n", "[]"],
            &["- job_name: prometheus\n", "scrape_configs: []\n", "- job_name: [", ""],
        )
    };
    let secret = || {
        (text(&["extra"], &[""]), text(&["scrape.yml"], &["", "../x"])).prop_map(|(name, key)| SecretKeySelector {
            name,
            key,
            optional: None,
        })
    };
    let asc = |inline, secret_ref| Some(AdditionalScrapeConfigs { inline, secret_ref });
    prop_oneof![
        10 => Just(None),
        5 => inline().prop_map(move |i| asc(Some(i), None)),
        5 => secret().prop_map(move |s| asc(None, Some(s))),
        1 => (inline(), secret()).prop_map(move |(i, s)| asc(Some(i), Some(s))),
        1 => Just(asc(None, None)),
    ]
}

fn node_selector() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map(
        text(&["disktype", "kubernetes.io/os"], &["Bad Key!"]),
        text(&["ssd", "linux", ""], &["bad value!"]),
        0..2,
    )
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map(
        text(&["env", "region", "team"], &["replica", "cluster", "9bad", "a-b"]),
        any::<String>(),
        0..3,
    )
}

prop_compose! {
    fn cluster()(
        name in proptest::option::weighted(0.8, text(&["demo", "prod-eu"], &["", "Upper", "a-very-long-name-that-is-longer-than-fifty-two-characters"])),
        namespace in proptest::option::weighted(0.8, text(&["monitoring"], &[""])),
        uid in proptest::option::weighted(0.8, text(&["6a1f0c4e-0000-4000-8000-000000000001"], &[""])),
        (replicas, image, retention, retention_size, size) in (
            prop_oneof![4 => 1i32..5, 1 => any::<i32>()],
            text(
                &["prom/prometheus:v2.53.3", "prom/prometheus:v3.5.0", "prom/prometheus:latest"],
                &["", "prom/prometheus:v2.42.0", "prom/prometheus:v1.8.2", "prom/prometheus@sha256:00"],
            ),
            text(&["15d", "1h30m"], &["", "0", "15x", "99999999999y"]),
            proptest::option::weighted(0.8, text(&["50GB", "", "512MB"], &["lots"])),
            text(&["20Gi", "1e3", "50Gi"], &["", "0", "-1Gi", "lots"]),
        ),
        (remote_write, thanos_enabled, thanos_image, objstore, additional_scrape_configs) in (
            proptest::collection::vec(remote_write(), 0..3),
            any::<bool>(),
            text(&["quay.io/thanos/thanos:v0.37.2"], &["", "Bad Image"]),
            secret_ref(),
            scrape_configs(),
        ),
        (scrape_interval, evaluation_interval, external_labels, replica_label, budget) in (
            text(&["30s", "15s"], &["", "1m1h", "0"]),
            text(&["30s", "1m"], &["", "1x"]),
            labels(),
            proptest::option::weighted(0.8, text(&["replica", "prometheus_replica"], &["", "bad-label"])),
            text(&["15m", "30m", "5s", "1y"], &["", "0s", "1x"]),
        ),
        (node_selector, priority_class, own_security_context, backup) in (
            node_selector(),
            proptest::option::weighted(0.8, text(&["system-cluster-critical", ""], &["Bad Class"])),
            any::<bool>(),
            any::<bool>(),
        ),
    ) -> PrometheusCluster {
        let mut spec: PrometheusClusterSpec = serde_yaml::from_str("{}").expect("an empty spec takes every default");
        spec.replicas = replicas;
        spec.image = image;
        spec.retention = retention;
        spec.retention_size = retention_size;
        spec.storage.size = Quantity(size);
        spec.remote_write = remote_write;
        spec.thanos = ThanosSpec { enabled: thanos_enabled, image: thanos_image, object_storage_config_secret_ref: objstore };
        spec.additional_scrape_configs = additional_scrape_configs;
        spec.scrape_interval = scrape_interval;
        spec.evaluation_interval = evaluation_interval;
        spec.external_labels = external_labels;
        spec.replica_external_label_name = replica_label;
        spec.self_healing.startup_budget = budget;
        spec.node_selector = node_selector;
        spec.priority_class_name = priority_class;
        if own_security_context {
            spec.security_context = Some(PodSecurityContext { run_as_user: Some(1000), ..PodSecurityContext::default() });
        }
        spec.backup.enabled = backup;
        "b".clone_into(&mut spec.backup.bucket);
        let mut cluster = PrometheusCluster::new("placeholder", spec);
        cluster.metadata.name = name;
        cluster.metadata.namespace = namespace;
        cluster.metadata.uid = uid;
        cluster
    }
}

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
