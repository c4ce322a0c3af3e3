//! Arbitrary PrometheusClusters for property tests and for checking rendered configs with the real `promtool`:
//! each field mostly a valid value, sometimes a known-bad one, sometimes anything. Included with `#[path]` by the
//! tests that use it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{LocalObjectReference, PodSecurityContext, SecretKeySelector};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use proptest::prelude::*;
use tsdb_operator_core::crd::{
    AdditionalScrapeConfigs, PrometheusCluster, PrometheusClusterSpec, RemoteWriteSpec, ThanosSpec,
};

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
    /// A cluster, valid or not: each field mostly valid, sometimes a known-bad value, sometimes anything.
    pub fn cluster()(
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
