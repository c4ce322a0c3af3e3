//! Validation of whole specs: the seed's sample, the shared fixtures, several errors at once, and properties
//! over arbitrary specs (never panics, deterministic, every message names a field and starts lowercase).

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{LocalObjectReference, ResourceRequirements, SecretKeySelector};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use tsdb_operator_core::crd::{
    AdditionalScrapeConfigs, BackupRetentionSpec, BackupSpec, PrometheusCluster, PrometheusClusterSetSpec,
    PrometheusClusterSpec, RemoteWriteSpec, SelfHealingSpec, StorageSpec, ThanosSpec,
};
use tsdb_operator_core::validate::{FieldErrorKind, FieldErrors, validate_cluster, validate_cluster_set};

const SEED_SAMPLE: &str = r#"
apiVersion: observability.merlionos.org/v1
kind: PrometheusCluster
metadata:
  name: demo
spec:
  replicas: 2
  retention: 15d
  storage:
    size: 20Gi
  backup:
    enabled: true
    bucket: tsdb-backups
    schedule: "0 */6 * * *"
"#;

fn fixtures(dir: &str) -> Vec<(String, PrometheusCluster)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("fixtures").join(dir);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .expect("the fixtures directory exists")
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("a readable fixture");
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let cluster = serde_yaml::from_str(&text).expect("a fixture that parses as a PrometheusCluster");
            (name, cluster)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn seed_sample_spec_is_valid() {
    let cluster: PrometheusCluster = serde_yaml::from_str(SEED_SAMPLE).unwrap();
    assert_eq!(validate_cluster(&cluster.spec), Ok(()));
}

#[test]
fn every_valid_fixture_passes_validation() {
    let all = fixtures("clusters");
    assert!(!all.is_empty());
    for (name, cluster) in all {
        assert_eq!(validate_cluster(&cluster.spec), Ok(()), "{name}");
    }
}

#[test]
fn invalid_fixtures_with_spec_mistakes_are_rejected_at_the_right_field() {
    let expected = BTreeMap::from([
        ("conflicting-remote-write-auth.yaml", "spec.remoteWrite[0].bearerTokenSecretRef"),
        ("inline-and-secret.yaml", "spec.additionalScrapeConfigs"),
        ("inline-not-a-list.yaml", "spec.additionalScrapeConfigs.inline"),
        ("zero-replicas.yaml", "spec.replicas"),
    ]);
    let all = fixtures("clusters-invalid");
    for (name, field) in expected {
        let (_, cluster) = all.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("fixture {name} exists"));
        let errs = validate_cluster(&cluster.spec).expect_err(name);
        assert_eq!(errs.errors()[0].field, field, "{name}: {errs}");
    }
}

#[test]
fn multiple_errors_are_reported_together_in_spec_order() {
    let spec: PrometheusClusterSpec = serde_yaml::from_str(
        r#"
replicas: 0
retention: 15days
backup:
  enabled: true
  schedule: "0 0 */6 * * *"
  prefix: /prod
remoteWrite:
  - url: ""
  - url: ftp://example.com
additionalScrapeConfigs: {}
externalLabels:
  cluster: x
selfHealing:
  failureThreshold: 0
"#,
    )
    .unwrap();
    let errs = validate_cluster(&spec).unwrap_err();
    let fields: Vec<(&str, FieldErrorKind)> = errs.iter().map(|e| (e.field.as_str(), e.kind)).collect();
    assert_eq!(
        fields,
        [
            ("spec.replicas", FieldErrorKind::Invalid),
            ("spec.retention", FieldErrorKind::Invalid),
            ("spec.backup.bucket", FieldErrorKind::Required),
            ("spec.backup.schedule", FieldErrorKind::Invalid),
            ("spec.backup.prefix", FieldErrorKind::Invalid),
            ("spec.remoteWrite[0].url", FieldErrorKind::Required),
            ("spec.remoteWrite[1].url", FieldErrorKind::Invalid),
            ("spec.additionalScrapeConfigs", FieldErrorKind::Required),
            ("spec.externalLabels[cluster]", FieldErrorKind::Forbidden),
            ("spec.selfHealing.failureThreshold", FieldErrorKind::Invalid),
        ]
    );
    assert_eq!(errs.to_status_causes().len(), 10);
}

/// Strings that exercise every parser: near-valid values, unicode, control characters and huge values.
fn text() -> impl Strategy<Value = String> {
    const NEAR_VALID: &[&str] = &[
        "",
        "0",
        "-1",
        "15d",
        "1h30m",
        "0s",
        "300y",
        "20Gi",
        "1e3",
        "1e999999999",
        "99999999999999999999999999999999999999999Ei",
        "0.0000000001",
        ".",
        "+",
        "-",
        "50GB",
        "1.5TB",
        "8EB",
        "0 */6 * * *",
        "*/0 * * * *",
        "0 0 31 2 *",
        "0 0 15 * 1",
        "@every 1h",
        "@every -1s",
        "@every 99999999999h",
        "CRON_TZ=Europe/Berlin 0 0 * * *",
        "https://receiver.example.com/api/v1/write",
        "http://[::1",
        "http://host:99999",
        "prom/prometheus:v2.55.1",
        "Prom/Prometheus",
        "registry:5000/a@sha256:0123456789abcdef0123456789abcdef",
        "- job_name: a\n- job_name: a\n",
        "- job_name: prometheus\n",
        "job_name: x",
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        "&a [*a, *a, *a, *a]",
        "__meta",
        "cluster",
        "replica",
        "example.com/key",
        "In",
        "NotIn",
        "Exists",
        "DoesNotExist",
        "..",
        "ü",
        "\u{0}",
    ];
    prop_oneof![
        4 => prop::sample::select(NEAR_VALID).prop_map(str::to_owned),
        3 => "\\PC{0,16}",
        2 => ".{0,40}",
        2 => "[0-9a-zA-Z:/@._*?,+\\- \\[\\]]{0,30}",
        1 => (any::<char>(), 1_000usize..20_000).prop_map(|(c, n)| c.to_string().repeat(n)),
    ]
}

fn secret() -> impl Strategy<Value = Option<LocalObjectReference>> {
    option::of(text().prop_map(|name| LocalObjectReference { name }))
}

fn quantities() -> impl Strategy<Value = Option<BTreeMap<String, Quantity>>> {
    option::of(btree_map(text(), text().prop_map(Quantity), 0..4))
}

fn backup() -> impl Strategy<Value = BackupSpec> {
    (
        (any::<bool>(), text(), text(), text(), text(), text()),
        (secret(), option::of((option::of(any::<i32>()), option::of(text()))), any::<bool>()),
    )
        .prop_map(
            |((enabled, bucket, region, endpoint, prefix, schedule), (credentials_secret_ref, retention, suspend))| {
                BackupSpec {
                    enabled,
                    bucket,
                    region,
                    endpoint,
                    prefix,
                    schedule,
                    credentials_secret_ref,
                    retention: retention.map(|(keep_last, max_age)| BackupRetentionSpec { keep_last, max_age }),
                    suspend,
                    jitter: None,
                    missed_runs: None,
                }
            },
        )
}

fn remote_write() -> impl Strategy<Value = RemoteWriteSpec> {
    (text(), text(), secret(), secret(), labels()).prop_map(
        |(url, name, basic_auth_secret_ref, bearer_token_secret_ref, headers)| RemoteWriteSpec {
            url,
            name,
            basic_auth_secret_ref,
            bearer_token_secret_ref,
            headers,
            ..RemoteWriteSpec::default()
        },
    )
}

fn scrape_configs() -> impl Strategy<Value = Option<AdditionalScrapeConfigs>> {
    option::of((option::of(text()), option::of((text(), text()))).prop_map(|(inline, secret)| {
        AdditionalScrapeConfigs {
            inline,
            secret_ref: secret.map(|(name, key)| SecretKeySelector { name, key, optional: None }),
        }
    }))
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map(text(), text(), 0..4)
}

prop_compose! {
    fn cluster_spec()(
        (replicas, image, retention, retention_size, storage_class_name, size) in
            (any::<i32>(), text(), text(), option::of(text()), option::of(text()), text()),
        (limits, requests) in (quantities(), quantities()),
        backup in backup(),
        remote_write in vec(remote_write(), 0..4),
        (thanos_enabled, thanos_image, thanos_secret) in (any::<bool>(), text(), secret()),
        additional_scrape_configs in scrape_configs(),
        (paused, scrape_interval, evaluation_interval) in (any::<bool>(), text(), text()),
        (external_labels, replica_external_label_name, node_selector, priority_class_name) in
            (labels(), option::of(text()), labels(), option::of(text())),
        (healing_enabled, probe_interval, failure_threshold, startup_budget, cooldown) in
            (any::<bool>(), text(), any::<i32>(), text(), text()),
        (service_monitor_selector, pod_monitor_selector, service_monitor_namespace_selector) in
            (selector(), selector(), selector()),
    ) -> PrometheusClusterSpec {
        PrometheusClusterSpec {
            mode: tsdb_operator_core::crd::Mode::Server,
            replicas,
            image,
            retention,
            retention_size,
            storage: StorageSpec { storage_class_name, size: Quantity(size), empty_dir: None },
            resources: Some(ResourceRequirements { limits, requests, claims: None }),
            backup,
            remote_write,
            thanos: ThanosSpec {
                enabled: thanos_enabled,
                image: thanos_image,
                object_storage_config_secret_ref: thanos_secret,
            },
            additional_scrape_configs,
            service_monitor_selector,
            service_monitor_namespace_selector,
            pod_monitor_selector,
            pod_monitor_namespace_selector: None,
            rule_selector: None,
            rule_namespace_selector: None,
            rule_groups: Vec::new(),
            alerting: None,
            paused,
            scrape_interval,
            evaluation_interval,
            external_labels,
            replica_external_label_name,
            node_selector,
            tolerations: Vec::new(),
            affinity: None,
            security_context: None,
            priority_class_name,
            service_account_name: None,
            self_healing: SelfHealingSpec {
                enabled: healing_enabled,
                probe_interval,
                failure_threshold,
                startup_budget,
                cooldown,
            },
            restore: None,
        }
    }
}

fn selector() -> impl Strategy<Value = Option<LabelSelector>> {
    let requirement = (text(), text(), option::of(vec(text(), 0..3)))
        .prop_map(|(key, operator, values)| LabelSelectorRequirement { key, operator, values });
    option::of(
        (option::of(labels()), option::of(vec(requirement, 0..4)))
            .prop_map(|(match_labels, match_expressions)| LabelSelector { match_labels, match_expressions }),
    )
}

fn set_spec() -> impl Strategy<Value = PrometheusClusterSetSpec> {
    (selector(), selector(), option::of(backup())).prop_map(
        |(cluster_selector, namespace_selector, backup_template)| PrometheusClusterSetSpec {
            cluster_selector,
            namespace_selector,
            backup_template,
        },
    )
}

/// Every error names a field under `spec` and has a lowercase message.
fn assert_well_formed(errs: &FieldErrors) -> Result<(), TestCaseError> {
    prop_assert!(!errs.is_empty());
    for e in errs {
        prop_assert!(e.field.starts_with("spec"), "{}", e.field);
        prop_assert!(!e.message.is_empty(), "{e}");
        prop_assert!(!e.message.starts_with(|c: char| c.is_uppercase()), "{e}");
    }
    prop_assert_eq!(errs.to_status_causes().len(), errs.len());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn validate_cluster_never_panics_and_is_deterministic(spec in cluster_spec()) {
        let first = validate_cluster(&spec);
        let again = validate_cluster(&spec.clone());
        prop_assert_eq!(&first, &again);
        if let Err(errs) = &first {
            assert_well_formed(errs)?;
            let _ = errs.to_string();
            let _ = errs.to_status("PrometheusCluster", "x");
        }
    }

    #[test]
    fn validate_cluster_set_never_panics_and_is_deterministic(spec in set_spec()) {
        let first = validate_cluster_set(&spec);
        prop_assert_eq!(&first, &validate_cluster_set(&spec.clone()));
        if let Err(errs) = &first {
            assert_well_formed(errs)?;
        }
    }

    #[test]
    fn each_seed_field_error_is_independent_of_the_others(replicas in -5i32..5, bucket in "[a-z-]{0,8}") {
        // The replicas error appears exactly when replicas < 1, whatever the backup section says.
        let mut spec: PrometheusClusterSpec = serde_yaml::from_str("{}").unwrap();
        spec.replicas = replicas;
        spec.backup = BackupSpec { enabled: true, bucket: bucket.clone(), ..BackupSpec::default() };
        let fields: Vec<String> = match validate_cluster(&spec) {
            Ok(()) => Vec::new(),
            Err(errs) => errs.into_iter().map(|e| e.field).collect(),
        };
        prop_assert_eq!(fields.contains(&"spec.replicas".to_owned()), replicas < 1);
        prop_assert_eq!(fields.contains(&"spec.backup.bucket".to_owned()), bucket.is_empty());
    }
}
