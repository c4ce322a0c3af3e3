//! The decision for a cluster that selects prometheus-operator's ServiceMonitors and PodMonitors: which monitors it
//! chooses, where their scrape jobs go (`monitor-scrape-configs.yml` in the ConfigMap, listed in
//! `scrape_config_files`), the ServiceAccount, Role and RoleBinding for Kubernetes service discovery (applied before
//! the StatefulSet, removed with the selectors), and the `MonitorsAccepted` condition.

mod common;

use std::collections::BTreeMap;

use common::settings;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use tsdb_operator_core::constants::{conditions, reasons};
use tsdb_operator_core::crd::PrometheusCluster;
use tsdb_operator_core::decide::{self, ClusterDecision, ClusterObservation};
use tsdb_operator_core::monitors::{ObservedMonitors, PodMonitor, ServiceMonitor};
use tsdb_operator_core::plan::{ChildKey, Step};

type Namespaces = BTreeMap<String, BTreeMap<String, String>>;

fn now() -> Timestamp {
    "2026-12-05T10:00:00Z".parse().expect("a timestamp")
}

fn cluster(spec: Value) -> PrometheusCluster {
    let mut pc = PrometheusCluster::new("web", serde_json::from_value(spec).expect("a spec"));
    pc.metadata.namespace = Some("monitoring".to_owned());
    pc.metadata.uid = Some("uid-1".to_owned());
    pc.metadata.generation = Some(1);
    pc
}

fn service_monitor(namespace: &str, name: &str, labels: &Value, endpoints: &Value) -> ServiceMonitor {
    serde_json::from_value(json!({
        "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"selector": {"matchLabels": {"app": name}}, "endpoints": endpoints},
    }))
    .expect("a ServiceMonitor")
}

fn pod_monitor(namespace: &str, name: &str, labels: &Value) -> PodMonitor {
    serde_json::from_value(json!({
        "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"selector": {"matchLabels": {"app": name}}, "podMetricsEndpoints": [{"port": "metrics"}]},
    }))
    .expect("a PodMonitor")
}

fn namespaces() -> Namespaces {
    let mut out = Namespaces::new();
    out.insert("monitoring".to_owned(), BTreeMap::new());
    out.insert("shop".to_owned(), BTreeMap::from([("team".to_owned(), "shop".to_owned())]));
    out.insert("other".to_owned(), BTreeMap::new());
    out
}

fn decide(
    pc: &PrometheusCluster,
    children: &BTreeMap<ChildKey, Value>,
    services: Option<&[ServiceMonitor]>,
    pods: Option<&[PodMonitor]>,
) -> ClusterDecision {
    let namespaces = namespaces();
    let observation = ClusterObservation {
        monitors: Some(ObservedMonitors {
            service_monitors: services,
            pod_monitors: pods,
            prometheus_rules: None,
            namespaces: &namespaces,
            secrets: None,
        }),
        ..ClusterObservation::of(pc, children)
    };
    decide::decide_cluster(&observation, &settings(), now())
}

fn applied<'a>(d: &'a ClusterDecision, kind: &str) -> Option<&'a Value> {
    d.steps().find_map(|s| match s {
        Step::Apply { key, manifest, .. } if key.kind == kind => Some(manifest),
        _ => None,
    })
}

fn monitors_condition(d: &ClusterDecision) -> Option<&Condition> {
    d.status.conditions.iter().find(|c| c.type_ == conditions::MONITORS_ACCEPTED)
}

fn job_names(config_map: &Value) -> Vec<String> {
    let file = config_map["data"]["monitor-scrape-configs.yml"].as_str().expect("the monitors file");
    let parsed: Value = serde_yaml::from_str(file).expect("YAML");
    parsed["scrape_configs"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|j| j["job_name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn team_monitors() -> Vec<ServiceMonitor> {
    vec![
        service_monitor("monitoring", "api", &json!({"team": "web"}), &json!([{"port": "http"}])),
        service_monitor("monitoring", "unlabelled", &json!({}), &json!([{"port": "http"}])),
        service_monitor("shop", "cart", &json!({"team": "web"}), &json!([{"port": "http"}])),
    ]
}

#[test]
fn the_selected_monitors_become_jobs_in_their_own_file_with_discovery_rights_before_the_pods() {
    let pc = cluster(json!({"serviceMonitorSelector": {"matchLabels": {"team": "web"}},
        "podMonitorSelector": {}}));
    let services = team_monitors();
    let pods = vec![pod_monitor("monitoring", "batch", &json!({})), pod_monitor("other", "far", &json!({}))];
    let d = decide(&pc, &BTreeMap::new(), Some(&services), Some(&pods));

    let config_map = applied(&d, "ConfigMap").expect("the ConfigMap");
    // No namespace selector: the cluster's own namespace only; the selector picks by label.
    assert_eq!(job_names(config_map), ["serviceMonitor/monitoring/api/0", "podMonitor/monitoring/batch/0"]);
    let prometheus_yml = config_map["data"]["prometheus.yml"].as_str().expect("prometheus.yml");
    assert!(prometheus_yml.contains("/etc/prometheus/generated/monitor-scrape-configs.yml"), "{prometheus_yml}");

    let kinds: Vec<&str> = d
        .steps()
        .filter_map(|s| match s {
            Step::Apply { key, .. } => Some(key.kind.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, ["ConfigMap", "ServiceAccount", "Role", "Service", "RoleBinding", "StatefulSet"]);
    // The RoleBinding goes with the pods, after its Role has been applied.
    let stages: Vec<Vec<&str>> = d
        .stages
        .iter()
        .map(|stage| {
            stage
                .steps
                .iter()
                .filter_map(|s| match s {
                    Step::Apply { key, .. } => Some(key.kind.as_str()),
                    _ => None,
                })
                .collect()
        })
        .collect();
    assert_eq!(stages, [vec!["ConfigMap", "ServiceAccount", "Role", "Service"], vec!["RoleBinding", "StatefulSet"]]);
    let role = applied(&d, "Role").expect("the Role");
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": [""], "resources": ["endpoints", "pods", "services"], "verbs": ["list", "watch"]}])
    );
    let binding = applied(&d, "RoleBinding").expect("the RoleBinding");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "web-discovery", "namespace": "monitoring"}])
    );
    assert_eq!(binding["roleRef"]["name"], "web-discovery");
    let sts = applied(&d, "StatefulSet").expect("the StatefulSet");
    assert_eq!(sts["spec"]["template"]["spec"]["serviceAccountName"], "web-discovery");

    let condition = monitors_condition(&d).expect("MonitorsAccepted");
    assert_eq!((condition.status.as_str(), condition.reason.as_str()), ("True", reasons::MONITORS_RENDERED));
    assert_eq!(condition.message, "1 ServiceMonitors and 1 PodMonitors chosen, 2 scrape jobs");
}

/// The steps of `d` as `(action, kind, namespace)`, for the objects in other namespaces.
fn elsewhere_steps(d: &ClusterDecision) -> Vec<(&'static str, String, String)> {
    d.steps()
        .filter_map(|s| {
            let action = match s {
                Step::Apply { .. } => "apply",
                Step::Delete { .. } => "delete",
                _ => "other",
            };
            let key = s.key();
            key.namespace.clone().map(|ns| (action, key.kind.clone(), ns))
        })
        .collect()
}

/// What a decision applied, as the server would return it (the observation of the next pass).
fn as_observed(d: &ClusterDecision, children: &mut BTreeMap<ChildKey, Value>) {
    for step in d.steps() {
        match step {
            Step::Apply { key, manifest, .. } => {
                children.insert(key.clone(), manifest.clone());
            }
            Step::Delete { key } => {
                children.remove(key);
            }
            _ => {}
        }
    }
}

#[test]
fn monitors_elsewhere_get_discovery_rights_in_their_namespace_which_go_when_they_are_not_needed() {
    let mut pc = cluster(json!({"serviceMonitorSelector": {"matchLabels": {"team": "web"}},
        "serviceMonitorNamespaceSelector": {"matchLabels": {"team": "shop"}}}));
    let services = team_monitors();
    let namespaces = namespaces();
    let observed = ObservedMonitors {
        service_monitors: Some(&services),
        pod_monitors: None,
        prometheus_rules: None,
        namespaces: &namespaces,
        secrets: None,
    };
    // What the adapter reads besides the usual children: the Role and RoleBinding in shop.
    let reads = decide::reads_with_monitors(&pc, Some(&observed));
    let read: Vec<String> = reads.elsewhere.iter().map(ToString::to_string).collect();
    assert_eq!(
        read,
        ["Role/monitoring.web-discovery in namespace shop", "RoleBinding/monitoring.web-discovery in namespace shop"]
    );

    let mut children = BTreeMap::new();
    let d = decide(&pc, &children, Some(&services), None);
    assert_eq!(job_names(applied(&d, "ConfigMap").expect("the ConfigMap")), ["serviceMonitor/shop/cart/0"]);
    assert_eq!(
        elsewhere_steps(&d),
        [("apply", "Role".to_owned(), "shop".to_owned()), ("apply", "RoleBinding".to_owned(), "shop".to_owned())]
    );
    let binding = d
        .steps()
        .find_map(|s| match s {
            Step::Apply { key, manifest, .. } if key.kind == "RoleBinding" && key.namespace.is_some() => Some(manifest),
            _ => None,
        })
        .expect("the RoleBinding in shop");
    assert_eq!(binding["metadata"]["namespace"], "shop");
    assert_eq!(binding["metadata"]["name"], "monitoring.web-discovery");
    assert_eq!(binding["metadata"]["labels"]["observability.merlionos.org/discovery-for"], "uid-1");
    assert!(binding["metadata"].get("ownerReferences").is_none(), "no ownerReference across namespaces");
    assert_eq!(binding["roleRef"]["name"], "monitoring.web-discovery");
    assert_eq!(
        binding["subjects"][0],
        json!({"kind": "ServiceAccount", "name": "web-discovery", "namespace": "monitoring"})
    );
    assert_eq!(d.status.discovery_namespaces, ["shop"]);
    let condition = monitors_condition(&d).expect("MonitorsAccepted");
    assert_eq!(condition.status, "True");
    assert!(
        condition.message.contains("discovery allowed in shop too (Role and RoleBinding monitoring.web-discovery)"),
        "{}",
        condition.message
    );

    // Applied: the next pass changes nothing.
    as_observed(&d, &mut children);
    pc.status = Some(d.status.clone());
    let again = decide(&pc, &children, Some(&services), None);
    assert!(again.steps().next().is_none(), "{:?}", again.steps().collect::<Vec<_>>());

    // A failed apply keeps what was recorded and what the steps were to create.
    let mut fresh = pc.clone();
    fresh.status = None;
    let failed = decide(&fresh, &BTreeMap::new(), Some(&services), None)
        .status_after_failure(&ClusterObservation::of(&fresh, &BTreeMap::new()), "boom");
    assert_eq!(failed.discovery_namespaces, ["shop"]);

    // The cluster deleted: its objects elsewhere are deleted by name (no garbage collection across namespaces).
    let gone: Vec<String> = decide::cleanup_when_gone(&pc).iter().map(|s| s.key().to_string()).collect();
    assert_eq!(
        gone,
        ["RoleBinding/monitoring.web-discovery in namespace shop", "Role/monitoring.web-discovery in namespace shop"]
    );

    // No monitor in shop any more: the status still lists shop, so they are read and deleted.
    let mut moved = pc.clone();
    moved.spec.service_monitor_namespace_selector = None;
    let reads = decide::reads_with_monitors(&moved, Some(&observed));
    assert_eq!(reads.elsewhere.len(), 2, "the recorded namespace is still read");
    let d = decide(&moved, &children, Some(&services), None);
    assert_eq!(
        elsewhere_steps(&d),
        [("delete", "RoleBinding".to_owned(), "shop".to_owned()), ("delete", "Role".to_owned(), "shop".to_owned())]
    );
    assert!(d.status.discovery_namespaces.is_empty());
}

#[test]
fn a_foreign_object_with_the_discovery_name_elsewhere_is_never_taken_over() {
    let pc = cluster(json!({"serviceMonitorSelector": {}, "serviceMonitorNamespaceSelector": {}}));
    let services = team_monitors();
    let key = ChildKey::elsewhere("rbac.authorization.k8s.io/v1", "RoleBinding", "monitoring.web-discovery", "shop");
    let foreign = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "monitoring.web-discovery", "namespace": "shop", "labels": {"team": "shop"}}});
    let children = BTreeMap::from([(key, foreign)]);
    let d = decide(&pc, &children, Some(&services), None);
    assert!(d.steps().next().is_none());
    match &d.outcome {
        decide::Outcome::NameConflict { message } => assert!(
            message.contains("RoleBinding monitoring.web-discovery exists in namespace shop but is not this"),
            "{message}"
        ),
        other => panic!("expected a name conflict, got {other:?}"),
    }
}

#[test]
fn any_namespace_asks_for_a_cluster_wide_binding() {
    let pc = cluster(json!({"serviceMonitorSelector": {}}));
    let services = vec![service_monitor("monitoring", "all", &json!({}), &json!([{"port": "http"}]))];
    let mut services = services;
    services[0].spec.namespace_selector = serde_json::from_value(json!({"any": true})).expect("a selector");
    let d = decide(&pc, &BTreeMap::new(), Some(&services), None);
    assert!(elsewhere_steps(&d).is_empty());
    let condition = monitors_condition(&d).expect("MonitorsAccepted");
    assert!(
        condition.message.contains(
            "every namespace (namespaceSelector.any): bind ServiceAccount monitoring/web-discovery cluster-wide"
        ),
        "{}",
        condition.message
    );
}

#[test]
fn a_refused_endpoint_is_named_in_the_condition_and_the_rest_is_still_scraped() {
    let pc = cluster(json!({"serviceMonitorSelector": {}}));
    let services = vec![service_monitor(
        "monitoring",
        "vault",
        &json!({}),
        &json!([{"port": "http"}, {"port": "https", "oauth2": {"clientId": {"secret": {"name": "s", "key": "u"}}}}]),
    )];
    let d = decide(&pc, &BTreeMap::new(), Some(&services), None);
    assert_eq!(job_names(applied(&d, "ConfigMap").expect("the ConfigMap")), ["serviceMonitor/monitoring/vault/0"]);
    let condition = monitors_condition(&d).expect("MonitorsAccepted");
    assert_eq!((condition.status.as_str(), condition.reason.as_str()), ("False", reasons::MONITORS_REFUSED));
    assert!(
        condition
            .message
            .contains("ServiceMonitor monitoring/vault: spec.endpoints[1].oauth2: OAuth2 is not supported"),
        "{}",
        condition.message
    );
    // A refused monitor is not a degraded cluster: the others are scraped.
    let degraded = d.status.conditions.iter().find(|c| c.type_ == conditions::DEGRADED).expect("Degraded");
    assert_eq!(degraded.status, "False");
}

#[test]
fn a_missing_crd_is_reported_and_the_cluster_still_runs_with_an_empty_monitor_file() {
    let pc = cluster(json!({"serviceMonitorSelector": {}}));
    let d = decide(&pc, &BTreeMap::new(), None, Some(&[]));
    let condition = monitors_condition(&d).expect("MonitorsAccepted");
    assert_eq!((condition.status.as_str(), condition.reason.as_str()), ("False", reasons::MONITOR_CRD_MISSING));
    assert!(condition.message.contains("ServiceMonitor"), "{}", condition.message);
    let config_map = applied(&d, "ConfigMap").expect("the ConfigMap");
    assert!(job_names(config_map).is_empty());
    assert!(applied(&d, "StatefulSet").is_some());
}

#[test]
fn the_users_own_service_account_is_bound_and_none_is_created() {
    let pc = cluster(json!({"serviceMonitorSelector": {}, "serviceAccountName": "scraper"}));
    let d = decide(&pc, &BTreeMap::new(), Some(&[]), None);
    assert!(applied(&d, "ServiceAccount").is_none());
    let binding = applied(&d, "RoleBinding").expect("the RoleBinding");
    assert_eq!(binding["subjects"][0]["name"], "scraper");
    let sts = applied(&d, "StatefulSet").expect("the StatefulSet");
    assert_eq!(sts["spec"]["template"]["spec"]["serviceAccountName"], "scraper");
}

#[test]
fn removing_the_selectors_removes_the_discovery_objects_the_file_and_the_condition() {
    let pc = cluster(json!({"serviceMonitorSelector": {}}));
    let first = decide(&pc, &BTreeMap::new(), Some(&[]), None);
    let mut children = BTreeMap::new();
    for step in first.steps() {
        if let Step::Apply { key, manifest, .. } = step {
            children.insert(key.clone(), manifest.clone());
        }
    }
    let mut plain = cluster(json!({}));
    plain.status = Some(first.status.clone());
    let d = decide(&plain, &children, Some(&[]), None);
    let deleted: Vec<&str> = d
        .steps()
        .filter_map(|s| match s {
            Step::Delete { key } => Some(key.kind.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(deleted, ["RoleBinding", "Role", "ServiceAccount"]);
    let config_map = applied(&d, "ConfigMap").expect("the ConfigMap changes");
    assert!(config_map["data"].get("monitor-scrape-configs.yml").is_none());
    assert!(monitors_condition(&d).is_none());
    let sts = applied(&d, "StatefulSet").expect("the StatefulSet changes");
    assert!(sts["spec"]["template"]["spec"].get("serviceAccountName").is_none());
}

#[test]
fn monitor_selectors_need_prometheus_2_43() {
    let pc = cluster(json!({"serviceMonitorSelector": {}, "image": "prom/prometheus:v2.40.0"}));
    let d = decide(&pc, &BTreeMap::new(), Some(&[]), None);
    let degraded = d.status.conditions.iter().find(|c| c.type_ == conditions::DEGRADED).expect("Degraded");
    assert!(degraded.message.contains("serviceMonitorSelector"), "{}", degraded.message);
    assert_eq!(d.steps().count(), 0);
}

#[test]
fn a_thousand_monitors_fit_gzipped_and_are_expanded_before_prometheus_starts() {
    use std::io::Read as _;
    let pc = cluster(json!({"serviceMonitorSelector": {}}));
    let endpoint = json!([{"port": "metrics", "interval": "30s",
        "metricRelabelings": [{"sourceLabels": ["__name__"], "regex": "go_gc_.*", "action": "drop"}]}]);
    let services: Vec<ServiceMonitor> =
        (0..1000).map(|i| service_monitor("monitoring", &format!("app-{i:04}"), &json!({}), &endpoint)).collect();
    let d = decide(&pc, &BTreeMap::new(), Some(&services), None);
    let config_map = applied(&d, "ConfigMap").expect("the ConfigMap");
    assert!(config_map["data"].get("monitor-scrape-configs.yml").is_none(), "too large to keep plain");
    let encoded = config_map["binaryData"]["monitor-scrape-configs.yml.gz"].as_str().expect("the gzipped file");
    let manifest_size = config_map.to_string().len();
    assert!(manifest_size < 256 * 1024, "the whole ConfigMap is {manifest_size} bytes");
    let gz: k8s_openapi::ByteString = serde_json::from_value(json!(encoded)).expect("base64");
    let mut yaml = String::new();
    flate2::read::GzDecoder::new(gz.0.as_slice()).read_to_string(&mut yaml).expect("gzip");
    let parsed: Value = serde_yaml::from_str(&yaml).expect("YAML");
    assert_eq!(parsed["scrape_configs"].as_array().map(Vec::len), Some(1000), "every monitor is scraped");
    assert_eq!(monitors_condition(&d).expect("MonitorsAccepted").status, "True");
    // The prometheus.yml reads the file the agent expands, and the pods expand it before Prometheus starts.
    let prometheus_yml = config_map["data"]["prometheus.yml"].as_str().expect("prometheus.yml");
    assert!(prometheus_yml.contains("/etc/prometheus/generated/monitor-scrape-configs.yml"), "{prometheus_yml}");
    let sts = applied(&d, "StatefulSet").expect("the StatefulSet");
    let init = &sts["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(init["name"], "expand-config");
    assert_eq!(
        init["args"],
        json!([
            "agent",
            "--expand-only",
            "--config-dir=/etc/prometheus/config",
            "--expand-dir=/etc/prometheus/generated"
        ])
    );
}

fn prometheus_rule(name: &str, labels: &Value, groups: &Value) -> tsdb_operator_core::monitors::PrometheusRule {
    serde_json::from_value(json!({
        "apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
        "metadata": {"name": name, "namespace": "monitoring", "labels": labels},
        "spec": {"groups": groups},
    }))
    .expect("a PrometheusRule")
}

fn decide_with_rules(
    pc: &PrometheusCluster,
    rules: Option<&[tsdb_operator_core::monitors::PrometheusRule]>,
) -> ClusterDecision {
    let namespaces = namespaces();
    let children = BTreeMap::new();
    let observation = ClusterObservation {
        monitors: Some(ObservedMonitors {
            service_monitors: None,
            pod_monitors: None,
            prometheus_rules: rules,
            namespaces: &namespaces,
            secrets: None,
        }),
        ..ClusterObservation::of(pc, &children)
    };
    decide::decide_cluster(&observation, &settings(), now())
}

#[test]
fn selected_prometheus_rules_become_rule_files_and_a_bad_rule_is_named_while_the_rest_loads() {
    let pc = cluster(json!({"ruleSelector": {"matchLabels": {"team": "web"}}}));
    let good = json!([{"name": "g", "rules": [{"record": "job:up:sum", "expr": "sum by (job) (up)"}]}]);
    let mixed = json!([{"name": "m", "rules": [
        {"alert": "Ok", "expr": "up == 0", "for": "1m"},
        {"alert": "Bad", "expr": "sum(up"},
    ]}]);
    let rules = [
        prometheus_rule("good", &json!({"team": "web"}), &good),
        prometheus_rule("mixed", &json!({"team": "web"}), &mixed),
        prometheus_rule("other-team", &json!({"team": "db"}), &good),
    ];
    let d = decide_with_rules(&pc, Some(&rules));
    let cm = applied(&d, "ConfigMap").expect("the ConfigMap is applied");
    let data = cm["data"].as_object().expect("data");
    let keys: Vec<&str> = data.keys().map(String::as_str).filter(|k| k.starts_with("rules_")).collect();
    assert_eq!(keys, ["rules_monitoring_good.yml", "rules_monitoring_mixed.yml"]);
    let mixed_file = data["rules_monitoring_mixed.yml"].as_str().unwrap_or_default();
    assert!(mixed_file.contains("alert: Ok") && !mixed_file.contains("Bad"), "{mixed_file}");
    let config = data["prometheus.yml"].as_str().unwrap_or_default();
    assert!(config.contains("rule_files:\n- /etc/prometheus/config/rules_*.yml"), "{config}");
    let condition = d.status.conditions.iter().find(|c| c.type_ == conditions::RULES_ACCEPTED).expect("condition");
    assert_eq!((condition.status.as_str(), condition.reason.as_str()), ("False", reasons::RULES_REFUSED));
    // The operator writes only the condition types the decision owns: every one it sets must be listed there.
    for c in &d.status.conditions {
        assert!(conditions::WRITTEN_BY_CLUSTER_DECISION.contains(&c.type_.as_str()), "{} is not listed", c.type_);
    }
    assert!(
        condition.message.starts_with("2 PrometheusRules chosen, 2 groups and 2 rules loaded; not loaded: ")
            && condition.message.contains("PrometheusRule monitoring/mixed: spec.groups[0].rules[1].expr"),
        "{}",
        condition.message
    );
    // A selected cluster without the CRD says so and still runs.
    let d = decide_with_rules(&pc, None);
    let condition = d.status.conditions.iter().find(|c| c.type_ == conditions::RULES_ACCEPTED).expect("condition");
    assert_eq!(condition.reason, reasons::RULE_CRD_MISSING);
    assert!(applied(&d, "StatefulSet").is_some());
    // Without the selector the condition and the files are gone.
    let d = decide_with_rules(&cluster(json!({})), Some(&rules));
    assert!(d.status.conditions.iter().all(|c| c.type_ != conditions::RULES_ACCEPTED));
    let cm = applied(&d, "ConfigMap").expect("the ConfigMap is applied");
    assert!(cm["data"].as_object().expect("data").keys().all(|k| !k.starts_with("rules_")));
}

#[test]
fn alertmanagers_get_discovery_rights_and_a_bad_inline_rule_refuses_the_spec() {
    let pc = cluster(json!({"alerting": {"alertmanagers": [{"name": "alertmanager", "port": "web"}]}}));
    let d = decide_with_rules(&pc, None);
    for kind in ["ServiceAccount", "Role", "RoleBinding"] {
        assert!(applied(&d, kind).is_some(), "{kind} for the Alertmanager discovery");
    }
    let sts = applied(&d, "StatefulSet").expect("the StatefulSet");
    assert_eq!(sts.pointer("/spec/template/spec/serviceAccountName"), Some(&json!("web-discovery")));
    assert!(elsewhere_steps(&d).is_empty(), "an Alertmanager in the cluster's namespace needs nothing elsewhere");
    // An Alertmanager in another namespace: the ServiceAccount must be bound there by the user.
    let far = cluster(json!({"alerting": {"alertmanagers": [{"namespace": "alerting", "name": "am", "port": "web"}]}}));
    let d = decide_with_rules(&far, None);
    assert!(elsewhere_steps(&d).is_empty());
    assert!(decide::reads_with_monitors(&far, None).elsewhere.is_empty());
    let bad = cluster(json!({"ruleGroups": [{"name": "g", "rules": [{"alert": "A", "expr": "up ==="}]}]}));
    let d = decide_with_rules(&bad, None);
    let decide::Outcome::Rejected { message } = &d.outcome else {
        unreachable!("a bad inline rule must refuse the spec, got {:?}", d.outcome)
    };
    assert!(message.contains("spec.ruleGroups[0].rules[0].expr"), "{message}");
}

#[test]
fn monitor_credentials_from_secrets_are_mounted_read_and_refused_when_out_of_reach() {
    let pc = cluster(json!({"serviceMonitorSelector": {"matchLabels": {"team": "web"}}}));
    let auth = json!([{"port": "metrics", "basicAuth": {
        "username": {"name": "scrape-auth", "key": "user"}, "password": {"name": "scrape-auth", "key": "pass"}}}]);
    let monitors = vec![
        service_monitor("monitoring", "ok", &json!({"team": "web"}), &auth),
        service_monitor(
            "monitoring",
            "no-key",
            &json!({"team": "web"}),
            &json!([{"port": "metrics",
            "bearerTokenSecret": {"name": "scrape-auth", "key": "token"}}]),
        ),
        service_monitor("shop", "elsewhere", &json!({"team": "web"}), &auth),
    ];
    let observed = ObservedMonitors {
        service_monitors: Some(&monitors),
        pod_monitors: None,
        prometheus_rules: None,
        namespaces: &namespaces(),
        secrets: None,
    };
    // What the adapter reads: the one Secret of the cluster's namespace the chosen monitors name.
    let to_read = decide::reads_with_monitors(&pc, Some(&observed)).secrets;
    assert_eq!(to_read.into_iter().collect::<Vec<_>>(), ["scrape-auth"]);
    let mut pc = pc;
    pc.spec.service_monitor_namespace_selector =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector::default());
    let secrets = BTreeMap::from([(
        "scrape-auth".to_owned(),
        ["user", "pass"].into_iter().map(str::to_owned).collect::<std::collections::BTreeSet<_>>(),
    )]);
    let namespaces = namespaces();
    let children = BTreeMap::new();
    let obs = ClusterObservation {
        secrets: Some(&secrets),
        monitors: Some(ObservedMonitors { namespaces: &namespaces, ..observed }),
        ..ClusterObservation::of(&pc, &children)
    };
    let d = decide::decide_cluster(&obs, &settings(), now());
    let cm = applied(&d, "ConfigMap").expect("the ConfigMap");
    assert_eq!(job_names(cm), ["serviceMonitor/monitoring/ok/0"]);
    let file = cm["data"]["monitor-scrape-configs.yml"].as_str().unwrap_or_default();
    assert!(file.contains("password_file: /etc/prometheus/secrets/scrape-auth/pass"), "{file}");
    let sts = applied(&d, "StatefulSet").expect("the StatefulSet");
    let volumes = sts.pointer("/spec/template/spec/volumes").and_then(Value::as_array).expect("volumes");
    assert!(volumes.iter().any(|v| v["secret"]["secretName"] == "scrape-auth"), "{volumes:?}");
    let condition = monitors_condition(&d).expect("MonitorsAccepted");
    assert_eq!(condition.reason, reasons::MONITORS_REFUSED);
    for wanted in [
        "ServiceMonitor monitoring/no-key: spec.endpoints[0].bearerTokenSecret: Secret monitoring/scrape-auth has no key \"token\"",
        "ServiceMonitor shop/elsewhere: spec.endpoints[0].basicAuth.username: credentials from Secrets work for monitors in the cluster's namespace monitoring only",
    ] {
        assert!(condition.message.contains(wanted), "{wanted} not in {}", condition.message);
    }
}

#[test]
fn discovery_objects_of_clusters_that_no_longer_exist_are_found_for_deletion() {
    let key = |kind: &str, ns: &str| {
        ChildKey::elsewhere("rbac.authorization.k8s.io/v1", kind, "monitoring.web-discovery", ns)
    };
    let found = vec![
        (key("Role", "shop"), "gone".to_owned()),
        (key("RoleBinding", "shop"), "gone".to_owned()),
        (key("Role", "other"), "live".to_owned()),
        (key("RoleBinding", "other"), "live".to_owned()),
    ];
    let live = std::collections::BTreeSet::from(["live".to_owned()]);
    let steps = decide::orphaned_elsewhere(&found, &live);
    let named: Vec<String> = steps.iter().map(|s| s.key().to_string()).collect();
    assert_eq!(
        named,
        ["RoleBinding/monitoring.web-discovery in namespace shop", "Role/monitoring.web-discovery in namespace shop"]
    );
    assert!(steps.iter().all(|s| matches!(s, Step::Delete { .. })));
    assert!(decide::orphaned_elsewhere(&found, &["gone".to_owned(), "live".to_owned()].into()).is_empty());
}

#[test]
fn no_discovery_rights_are_made_in_a_namespace_that_does_not_exist() {
    let pc = cluster(json!({"serviceMonitorSelector": {}}));
    let mut services = vec![service_monitor("monitoring", "far", &json!({}), &json!([{"port": "http"}]))];
    services[0].spec.namespace_selector =
        serde_json::from_value(json!({"matchNames": ["shop", "nowhere"]})).expect("a selector");
    let d = decide(&pc, &BTreeMap::new(), Some(&services), None);
    assert_eq!(
        elsewhere_steps(&d),
        [("apply", "Role".to_owned(), "shop".to_owned()), ("apply", "RoleBinding".to_owned(), "shop".to_owned())]
    );
    assert_eq!(d.status.discovery_namespaces, ["shop"]);
}
