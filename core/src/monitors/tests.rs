use std::collections::BTreeMap;

use serde_json::json;

use super::*;

#[allow(clippy::needless_pass_by_value)] // reads like the YAML it stands for
fn monitor(namespace: &str, name: &str, labels: &[(&str, &str)], spec: serde_json::Value) -> ServiceMonitor {
    serde_json::from_value(json!({
        "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": labels.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect::<serde_json::Map<_, _>>()},
        "spec": spec,
    }))
    .unwrap()
}

#[allow(clippy::needless_pass_by_value)]
fn web(spec: serde_json::Value) -> ServiceMonitor {
    monitor("shop", "web", &[], spec)
}

fn rendered(m: &ServiceMonitor) -> ScrapeJobs {
    build_scrape_jobs(&[m])
}

/// The rules of `job` as compact JSON, one string per rule, for assertions that read like the configuration.
fn rules(job: &render::ScrapeJob) -> Vec<String> {
    job.relabel_configs.iter().map(|r| serde_json::to_string(r).unwrap()).collect()
}

#[test]
fn a_monitor_selects_services_by_label_and_port_and_labels_targets_as_prometheus_operator_does() {
    let m = web(json!({
        "selector": {"matchLabels": {"app.kubernetes.io/name": "web"},
                     "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "edge"]},
                                          {"key": "canary", "operator": "DoesNotExist"}]},
        "endpoints": [{"port": "metrics", "interval": "15s"}],
        "targetLabels": ["team"], "podTargetLabels": ["app.kubernetes.io/version"],
    }));
    let out = rendered(&m);
    assert!(out.refused.is_empty(), "{:?}", out.refused);
    let job = &out.jobs[0];
    assert_eq!(job.job_name, "serviceMonitor/shop/web/0");
    assert_eq!(job.scrape_interval.as_deref(), Some("15s"));
    assert_eq!(job.kubernetes_sd_configs[0].namespaces.as_ref().unwrap().names, ["shop"], "its own namespace");
    let rules = rules(job);
    let want = [
        r#"{"source_labels":["job"],"target_label":"__tmp_prometheus_job_name"}"#,
        r#"{"source_labels":["__meta_kubernetes_service_label_app_kubernetes_io_name","__meta_kubernetes_service_labelpresent_app_kubernetes_io_name"],"regex":"(web);true","action":"keep"}"#,
        r#"{"source_labels":["__meta_kubernetes_service_label_tier","__meta_kubernetes_service_labelpresent_tier"],"regex":"(front|edge);true","action":"keep"}"#,
        r#"{"source_labels":["__meta_kubernetes_service_labelpresent_canary"],"regex":"true","action":"drop"}"#,
        r#"{"source_labels":["__meta_kubernetes_endpoint_port_name"],"regex":"metrics","action":"keep"}"#,
    ];
    assert_eq!(rules[..want.len()], want);
    let tail = [
        r#"{"source_labels":["__meta_kubernetes_service_label_team"],"target_label":"team","regex":"(.+)","replacement":"${1}"}"#,
        r#"{"source_labels":["__meta_kubernetes_pod_label_app_kubernetes_io_version"],"target_label":"app_kubernetes_io_version","regex":"(.+)","replacement":"${1}"}"#,
        r#"{"source_labels":["__meta_kubernetes_service_name"],"target_label":"job","replacement":"${1}"}"#,
        r#"{"target_label":"endpoint","replacement":"metrics"}"#,
    ];
    assert_eq!(rules[rules.len() - tail.len()..], tail);
    for label in ["node", "pod", "namespace", "service", "container"] {
        assert!(rules.iter().any(|r| r.contains(&format!("\"target_label\":\"{label}\""))), "{label}: {rules:?}");
    }
    assert!(rules.iter().any(|r| r.contains("(Failed|Succeeded)")), "finished pods are dropped by default");
}

#[test]
fn job_label_target_port_and_namespace_selector_follow_prometheus_operator() {
    let m = web(json!({
        "jobLabel": "app.kubernetes.io/name",
        "namespaceSelector": {"matchNames": ["a", "b"]},
        "endpoints": [{"targetPort": 9100, "filterRunning": false},
                      {"targetPort": "http-metrics", "path": "/m", "scheme": "https",
                       "tlsConfig": {"caFile": "/etc/ca.crt", "serverName": "web"}}],
    }));
    let out = rendered(&m);
    assert!(out.refused.is_empty(), "{:?}", out.refused);
    let (first, second) = (&out.jobs[0], &out.jobs[1]);
    assert_eq!(first.kubernetes_sd_configs[0].namespaces.as_ref().unwrap().names, ["a", "b"]);
    let first_rules = rules(first);
    assert!(
        first_rules.contains(
            &r#"{"source_labels":["__meta_kubernetes_pod_container_port_number"],"regex":"9100","action":"keep"}"#
                .to_owned()
        )
    );
    assert!(first_rules.contains(&r#"{"source_labels":["__meta_kubernetes_service_label_app_kubernetes_io_name"],"target_label":"job","regex":"(.+)","replacement":"${1}"}"#.to_owned()));
    assert!(first_rules.contains(&r#"{"target_label":"endpoint","replacement":"9100"}"#.to_owned()));
    assert!(!first_rules.iter().any(|r| r.contains("Failed|Succeeded")), "filterRunning: false");
    assert!(rules(second).contains(&r#"{"source_labels":["__meta_kubernetes_pod_container_port_name"],"regex":"http-metrics","action":"keep"}"#.to_owned()));
    assert_eq!(second.job_name, "serviceMonitor/shop/web/1");
    assert_eq!((second.metrics_path.as_deref(), second.scheme.as_deref()), (Some("/m"), Some("https")));
    assert_eq!(second.tls_config.as_ref().unwrap().ca_file.as_deref(), Some("/etc/ca.crt"));

    let any = rendered(&web(json!({"namespaceSelector": {"any": true}, "endpoints": [{"port": "m"}]})));
    assert_eq!(any.jobs[0].kubernetes_sd_configs[0].namespaces, None, "every namespace");
}

#[test]
fn the_endpoints_own_relabelings_come_last_with_actions_in_lower_case() {
    let m = web(json!({"endpoints": [{"port": "m",
        "relabelings": [{"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "instance", "action": "Replace"}],
        "metricRelabelings": [{"sourceLabels": ["__name__"], "regex": "go_.*", "action": "Drop"}]}]}));
    let out = rendered(&m);
    let last = out.jobs[0].relabel_configs.last().unwrap();
    assert_eq!(last.target_label.as_deref(), Some("instance"));
    assert_eq!(last.action.as_deref(), Some("replace"));
    assert_eq!(out.jobs[0].metric_relabel_configs[0].action.as_deref(), Some("drop"));
}

#[test]
fn credentials_from_secrets_become_files_of_the_mounted_secrets_and_what_prometheus_refuses_is_named() {
    let m = web(json!({"endpoints": [
        {"port": "a"},
        {"port": "b", "basicAuth": {"username": {"name": "s", "key": "u"}, "password": {"name": "s", "key": "p"}}},
        {"port": "c", "scheme": "https", "tlsConfig": {"ca": {"secret": {"name": "tls", "key": "ca.crt"}},
            "cert": {"secret": {"name": "tls", "key": "tls.crt"}}, "keySecret": {"name": "tls", "key": "tls.key"}}},
        {"port": "d", "bearerTokenSecret": {"name": "tok", "key": "token"}},
        {"port": "e", "authorization": {"type": "Custom", "credentials": {"name": "tok", "key": "token"}}},
        {"port": "f", "oauth2": {"clientId": {"secret": {"name": "o", "key": "id"}}}},
        {"port": "g", "tlsConfig": {"ca": {"configMap": {"name": "ca", "key": "ca.crt"}}}},
        {"port": "h", "basicAuth": {"username": {"name": "s", "key": "u"}}, "bearerTokenSecret": {"name": "t", "key": "k"}},
        {"port": "i", "authorization": {"type": "Basic", "credentials": {"name": "s", "key": "p"}}},
    ]}));
    let out = rendered(&m);
    let names: Vec<&str> = out.jobs.iter().map(|j| j.job_name.as_str()).collect();
    assert_eq!(names, (0..5).map(|i| format!("serviceMonitor/shop/web/{i}")).collect::<Vec<_>>());
    let basic = out.jobs[1].basic_auth.as_ref().unwrap();
    assert_eq!(basic.username_file.as_deref(), Some("/etc/prometheus/secrets/s/u"));
    assert_eq!(basic.password_file.as_deref(), Some("/etc/prometheus/secrets/s/p"));
    let tls = out.jobs[2].tls_config.as_ref().unwrap();
    assert_eq!(
        (tls.ca_file.as_deref(), tls.cert_file.as_deref(), tls.key_file.as_deref()),
        (
            Some("/etc/prometheus/secrets/tls/ca.crt"),
            Some("/etc/prometheus/secrets/tls/tls.crt"),
            Some("/etc/prometheus/secrets/tls/tls.key")
        )
    );
    let bearer = out.jobs[3].authorization.as_ref().unwrap();
    assert_eq!(
        (bearer.type_.as_deref(), bearer.credentials_file.as_str()),
        (None, "/etc/prometheus/secrets/tok/token")
    );
    assert_eq!(out.jobs[4].authorization.as_ref().unwrap().type_.as_deref(), Some("Custom"));
    let used: Vec<(&str, &str)> = out.jobs[2].secret_keys.iter().map(|u| (u.field.as_str(), u.key.as_str())).collect();
    assert_eq!(
        used,
        [("tlsConfig.ca.secret", "ca.crt"), ("tlsConfig.cert.secret", "tls.crt"), ("tlsConfig.keySecret", "tls.key")]
    );
    let fields: Vec<&str> = out.refused.iter().map(|r| r.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.endpoints[5].oauth2",
            "spec.endpoints[6].tlsConfig.ca.configMap",
            "spec.endpoints[7].bearerTokenSecret",
            "spec.endpoints[8].authorization.type"
        ]
    );
}

#[test]
fn values_prometheus_would_refuse_are_refused_here_so_the_other_monitors_still_load() {
    let cases = [
        (json!({"interval": "15 seconds"}), "spec.endpoints[0].interval"),
        (json!({"interval": "10s", "scrapeTimeout": "30s"}), "spec.endpoints[0].scrapeTimeout"),
        (json!({"scheme": "ftp"}), "spec.endpoints[0].scheme"),
        (json!({"path": "metrics"}), "spec.endpoints[0].path"),
        (json!({"relabelings": [{"regex": "(unclosed", "targetLabel": "x"}]}), "spec.endpoints[0].relabelings[0]"),
        (json!({"relabelings": [{"targetLabel": "bad-label"}]}), "spec.endpoints[0].relabelings[0]"),
        (json!({"relabelings": [{"action": "hashmod", "targetLabel": "h"}]}), "spec.endpoints[0].relabelings[0]"),
        (json!({"relabelings": [{"action": "explode"}]}), "spec.endpoints[0].relabelings[0]"),
        (
            json!({"metricRelabelings": [{"action": "labeldrop", "regex": "x", "targetLabel": "y"}]}),
            "spec.endpoints[0].metricRelabelings[0]",
        ),
        (json!({"somethingNew": true}), "spec.endpoints[0].somethingNew"),
    ];
    for (endpoint, field) in cases {
        let out = rendered(&web(json!({"endpoints": [endpoint.clone()]})));
        assert!(out.jobs.is_empty(), "{endpoint}: {:?}", out.jobs);
        assert_eq!(out.refused.len(), 1, "{endpoint}");
        assert_eq!(out.refused[0].field, field, "{endpoint}: {}", out.refused[0]);
    }
    let template =
        rendered(&web(json!({"endpoints": [{"relabelings": [{"targetLabel": "${1}_x", "regex": "(.*)"}]}]})));
    assert!(template.refused.is_empty(), "a ${{1}} template is a valid replace target: {:?}", template.refused);
    for (spec, field) in [
        (json!({"scrapeClass": "tls", "endpoints": [{"port": "m"}]}), "spec.scrapeClass"),
        (json!({"bodySizeLimit": "lots", "endpoints": [{"port": "m"}]}), "spec.bodySizeLimit"),
        (json!({"scrapeProtocols": ["Telepathy"], "endpoints": [{"port": "m"}]}), "spec.scrapeProtocols"),
    ] {
        let out = rendered(&web(spec));
        assert!(out.jobs.is_empty());
        assert_eq!(out.refused[0].field, field);
    }
}

#[test]
fn selection_follows_the_cluster_selectors_as_prometheus_operator_does() {
    let monitors = vec![
        monitor("b", "two", &[("team", "obs")], json!({})),
        monitor("a", "one", &[("team", "obs")], json!({})),
        monitor("a", "other-team", &[("team", "web")], json!({})),
        monitor("c", "unlabelled-namespace", &[("team", "obs")], json!({})),
    ];
    let namespaces = BTreeMap::from([
        ("a".to_owned(), BTreeMap::from([("monitoring".to_owned(), "on".to_owned())])),
        ("b".to_owned(), BTreeMap::from([("monitoring".to_owned(), "on".to_owned())])),
        ("c".to_owned(), BTreeMap::new()),
    ]);
    let by_team: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector =
        serde_json::from_value(json!({"matchLabels": {"team": "obs"}})).unwrap();
    let labelled: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector =
        serde_json::from_value(json!({"matchLabels": {"monitoring": "on"}})).unwrap();
    let everything = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector::default();
    let names = |chosen: Vec<&ServiceMonitor>| -> Vec<String> {
        chosen
            .iter()
            .map(|m| format!("{}/{}", m.metadata.namespace.as_deref().unwrap(), m.metadata.name.as_deref().unwrap()))
            .collect()
    };
    assert!(select(&monitors, None, Some(&everything), "a", &namespaces).is_empty(), "no selector: none");
    assert_eq!(names(select(&monitors, Some(&by_team), None, "a", &namespaces)), ["a/one"], "own namespace only");
    assert_eq!(names(select(&monitors, Some(&by_team), Some(&labelled), "a", &namespaces)), ["a/one", "b/two"]);
    assert_eq!(
        names(select(&monitors, Some(&everything), Some(&everything), "x", &namespaces)),
        ["a/one", "a/other-team", "b/two", "c/unlabelled-namespace"],
        "empty selectors: everything, sorted"
    );
}

#[test]
fn a_pod_monitor_selects_pods_by_label_and_container_port_and_names_the_job_after_itself() {
    let m: PodMonitor = serde_json::from_value(json!({
        "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
        "metadata": {"name": "workers", "namespace": "jobs"},
        "spec": {"selector": {"matchLabels": {"app": "worker"}}, "podTargetLabels": ["team"],
                 "podMetricsEndpoints": [{"port": "metrics"}, {"port": "m", "authorization": {"type": "Bearer"}}]},
    }))
    .unwrap();
    let out = build_pod_monitor_jobs(&[&m]);
    assert_eq!(out.jobs.len(), 1);
    assert_eq!(
        out.refused[0].to_string().split(": ").take(2).collect::<Vec<_>>(),
        ["PodMonitor jobs/workers", "spec.podMetricsEndpoints[1].authorization.credentials"]
    );
    let job = &out.jobs[0];
    assert_eq!(job.job_name, "podMonitor/jobs/workers/0");
    assert_eq!(job.kubernetes_sd_configs[0].role, "pod");
    let rules = rules(job);
    let want = [
        r#"{"source_labels":["job"],"target_label":"__tmp_prometheus_job_name"}"#,
        r#"{"source_labels":["__meta_kubernetes_pod_phase"],"regex":"(Failed|Succeeded)","action":"drop"}"#,
        r#"{"source_labels":["__meta_kubernetes_pod_label_app","__meta_kubernetes_pod_labelpresent_app"],"regex":"(worker);true","action":"keep"}"#,
        r#"{"source_labels":["__meta_kubernetes_pod_container_port_name"],"regex":"metrics","action":"keep"}"#,
        r#"{"source_labels":["__meta_kubernetes_namespace"],"target_label":"namespace"}"#,
        r#"{"source_labels":["__meta_kubernetes_pod_container_name"],"target_label":"container"}"#,
        r#"{"source_labels":["__meta_kubernetes_pod_name"],"target_label":"pod"}"#,
        r#"{"source_labels":["__meta_kubernetes_pod_label_team"],"target_label":"team","regex":"(.+)","replacement":"${1}"}"#,
        r#"{"target_label":"job","replacement":"jobs/workers"}"#,
        r#"{"target_label":"endpoint","replacement":"metrics"}"#,
    ];
    assert_eq!(rules, want);
}

#[test]
fn jobs_beyond_the_budget_are_refused_by_monitor_and_endpoint_in_order() {
    let monitors: Vec<ServiceMonitor> = (0..200)
        .map(|i| {
            let path = format!("/metrics/{i:03}/{}", i * 7919 % 10_007);
            monitor("shop", &format!("svc-{i:03}"), &[], json!({"endpoints": [{"port": "http", "path": path}]}))
        })
        .collect();
    let chosen: Vec<&ServiceMonitor> = monitors.iter().collect();
    let rendered = build_scrape_jobs(&chosen);
    let mut out = ClusterMonitors { jobs: rendered.jobs, ..ClusterMonitors::default() };
    let whole = serde_yaml::to_string(&out.jobs).unwrap().len();
    // A budget the plain file exceeds and its gzipped form too.
    let budget = 2048;
    assert!(
        whole > budget
            && crate::build::config::gzip(serde_yaml::to_string(&out.jobs).unwrap().as_bytes()).len() > budget
    );
    fit(&mut out, budget);
    assert!(!out.jobs.is_empty() && out.jobs.len() < 200, "{} kept", out.jobs.len());
    assert_eq!(out.jobs.len() + out.refused.len(), 200);
    assert_eq!(out.jobs[0].job_name, "serviceMonitor/shop/svc-000/0", "the first jobs are kept");
    let first = &out.refused[0];
    assert_eq!(first.object, format!("ServiceMonitor shop/svc-{:03}", out.jobs.len()));
    assert_eq!(first.field, "spec.endpoints[0]");
    assert!(first.reason.contains("the cluster's scrape configuration is full"), "{}", first.reason);
    let kept = serde_yaml::to_string(&out.jobs).unwrap();
    let stored = if kept.len() <= budget { kept.len() } else { crate::build::config::gzip(kept.as_bytes()).len() };
    assert!(stored <= budget, "what is kept fits: {stored}");
}
