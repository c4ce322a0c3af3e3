//! Snapshots of the scrape jobs rendered from a corpus of real-world ServiceMonitors and PodMonitors
//! (`fixtures/servicemonitors/`, `fixtures/podmonitors/`),
//! and of what was refused, stored in `snapshots/monitors/` and reviewed like code. `tests/promtool.rs` checks the
//! same jobs with the real `promtool`.

mod common;

use tsdb_operator_core::monitors::{PodMonitor, ServiceMonitor, build_pod_monitor_jobs, build_scrape_jobs};

#[test]
fn every_service_monitor_renders_the_reviewed_scrape_jobs() {
    for (name, monitor) in common::objects::<ServiceMonitor>("servicemonitors") {
        let rendered = build_scrape_jobs(&[&monitor]);
        assert_eq!(
            rendered.jobs.len() + rendered.refused.len(),
            monitor.spec.endpoints.len(),
            "{name}: each endpoint is a job or a refusal"
        );
        insta::with_settings!({
            snapshot_path => "../../snapshots/monitors",
            prepend_module_to_snapshot => false,
            description => format!("fixtures/servicemonitors/{name}.yaml"),
            omit_expression => true,
        }, {
            insta::assert_yaml_snapshot!(name, rendered);
        });
    }
}

#[test]
fn every_pod_monitor_renders_the_reviewed_scrape_jobs() {
    for (name, monitor) in common::objects::<PodMonitor>("podmonitors") {
        let rendered = build_pod_monitor_jobs(&[&monitor]);
        assert_eq!(
            rendered.jobs.len() + rendered.refused.len(),
            monitor.spec.pod_metrics_endpoints.len(),
            "{name}: each endpoint is a job or a refusal"
        );
        insta::with_settings!({
            snapshot_path => "../../snapshots/monitors",
            prepend_module_to_snapshot => false,
            description => format!("fixtures/podmonitors/{name}.yaml"),
            omit_expression => true,
        }, {
            insta::assert_yaml_snapshot!(format!("pod__{name}"), rendered);
        });
    }
}

#[test]
fn every_prometheus_rule_renders_the_reviewed_rule_file() {
    use tsdb_operator_core::monitors::PrometheusRule;
    use tsdb_operator_core::monitors::rules::{RULE_FILES_BUDGET, render_prometheus_rules};
    for (name, rule) in common::objects::<PrometheusRule>("prometheusrules") {
        let (files, refused) = render_prometheus_rules(&[&rule], RULE_FILES_BUDGET);
        let content = files.first().map(|f| f.content.clone()).unwrap_or_default();
        let refused: Vec<String> = refused.iter().map(ToString::to_string).collect();
        insta::with_settings!({
            snapshot_path => "../../snapshots/monitors",
            prepend_module_to_snapshot => false,
            description => format!("fixtures/prometheusrules/{name}.yaml"),
            omit_expression => true,
        }, {
            insta::assert_snapshot!(format!("rule__{name}"), format!("{content}---\nrefused:\n{}", refused.join("\n")));
        });
    }
}
