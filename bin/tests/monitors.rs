//! prometheus-operator's ServiceMonitor and PodMonitor, rendered by the core, on the real control plane with real
//! Prometheus: a pod (run by the process kubelet) behind a Service, the jobs the core renders from a ServiceMonitor
//! and a PodMonitor given to a real Prometheus (outside the cluster, so its Kubernetes discovery is pointed at the
//! test API server), and the series that arrive carry the labels prometheus-operator gives them.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::{Value, json};
use support::{env, eventually};
use tsdb_operator_core::monitors::{PodMonitor, ServiceMonitor, build_pod_monitor_jobs, build_scrape_jobs};
use tsdb_operator_testenv::paths::{self, PrometheusMajor};
use tsdb_operator_testenv::process::{ProcessBuilder, free_port};

const LOCALHOST: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// The app: a Prometheus (it serves its own `/metrics`) in a pod labelled `app: web`, with a named container port.
fn app_pod(ns: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-0\n  namespace: {ns}\n  labels:\n    app: web\n    \
         app.kubernetes.io/version: \"1.2.3\"\nspec:\n  containers:\n    - name: app\n      image: \
         prom/prometheus:v3.5.0\n      args: [\"--config.file=/dev/null\", \"--storage.tsdb.path=data\", \
         \"--web.listen-address=:9090\"]\n      ports:\n        - name: metrics\n          protocol: TCP\n          containerPort: 9090\n"
    )
}

/// A Service selecting the app's pod, with `labels`.
fn service(ns: &str, name: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {labels}\nspec:\n  \
         selector:\n    app: web\n  ports:\n    - name: metrics\n      protocol: TCP\n      port: 9090\n      targetPort: metrics\n"
    )
}

/// The rendered jobs, each discovery pointed at the test API server with `token_file` (in a pod, Prometheus uses
/// its in-cluster configuration instead).
fn jobs_for_the_test_api_server(jobs: &Value, token_file: &str) -> Value {
    let cp = env().cp;
    let mut jobs = jobs.clone();
    for job in jobs.as_array_mut().into_iter().flatten() {
        for sd in job["kubernetes_sd_configs"].as_array_mut().into_iter().flatten() {
            sd["api_server"] = json!(cp.server_url());
            sd["tls_config"] = json!({"ca_file": cp.ca_cert_path()});
            sd["authorization"] = json!({"credentials_file": token_file});
        }
    }
    jobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_and_pod_monitor_targets_carry_the_labels_prometheus_operator_gives_them() -> Result<()> {
    let env = env();
    let ns = support::namespace("monitors").await;
    env.cp.apply_yaml(&app_pod(&ns)).await?;
    env.cp.apply_yaml(&service(&ns, "web", "{app.kubernetes.io/name: web, team: obs}")).await?;
    env.cp.apply_yaml(&service(&ns, "other", "{app.kubernetes.io/name: other, team: obs}")).await?;
    let monitor: ServiceMonitor = serde_yaml::from_str(&format!(
        "apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata:\n  name: web\n  namespace: {ns}\n\
         spec:\n  selector:\n    matchLabels:\n      app.kubernetes.io/name: web\n  targetLabels: [team]\n  \
         podTargetLabels: [app.kubernetes.io/version]\n  endpoints:\n    - port: metrics\n      interval: 1s\n"
    ))?;
    let pod_monitor: PodMonitor = serde_yaml::from_str(&format!(
        "apiVersion: monitoring.coreos.com/v1\nkind: PodMonitor\nmetadata:\n  name: web\n  namespace: {ns}\n\
         spec:\n  selector:\n    matchLabels:\n      app: web\n  podTargetLabels: [app.kubernetes.io/version]\n  \
         podMetricsEndpoints:\n    - port: metrics\n      interval: 1s\n"
    ))?;
    let mut rendered = build_scrape_jobs(&[&monitor]);
    let pods = build_pod_monitor_jobs(&[&pod_monitor]);
    rendered.jobs.extend(pods.jobs);
    rendered.refused.extend(pods.refused);
    anyhow::ensure!(rendered.refused.is_empty(), "{:?}", rendered.refused);

    // Prometheus discovers with the least a ServiceAccount needs: list and watch of the namespace's Services,
    // Endpoints and Pods.
    env.cp
        .apply_yaml(&format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: discovery\n  namespace: {ns}\n\
             rules:\n  - apiGroups: [\"\"]\n    resources: [services, endpoints, pods]\n    verbs: [get, list, watch]\n\
             ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: discovery\n  \
             namespace: {ns}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: discovery\n\
             subjects:\n  - kind: ServiceAccount\n    name: scraper\n    namespace: {ns}\n"
        ))
        .await?;
    let token = env.cp.service_account_token(&ns, "scraper").await?;
    let work = env.workdir.subdir(&format!("monitors-{ns}"))?;
    let token_file = work.join("token");
    std::fs::write(&token_file, token)?;
    let jobs = jobs_for_the_test_api_server(&serde_json::to_value(&rendered.jobs)?, &token_file.to_string_lossy());
    let config = serde_yaml::to_string(&json!({"global": {"scrape_interval": "1s"}, "scrape_configs": jobs}))?;
    std::fs::write(work.join("prometheus.yml"), config)?;
    let port = free_port(LOCALHOST)?;
    let mut scraper = ProcessBuilder::new(format!("scraper-{ns}"), paths::prometheus(PrometheusMajor::V3)?)
        .arg(format!("--config.file={}", work.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", work.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .spawn(&env.workdir)?;

    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build()?;
    let series = eventually("the app's series scraped through both monitors", Duration::from_mins(3), || async {
        let answer: Value = http
            .get(format!("http://127.0.0.1:{port}/api/v1/query"))
            .query(&[("query", "up == 1")])
            .send()
            .await?
            .json()
            .await?;
        let result = answer["data"]["result"].as_array().cloned().unwrap_or_default();
        Ok((result.len() >= 2).then_some(result))
    })
    .await?;
    scraper.stop()?;

    assert_eq!(series.len(), 2, "the selected Service's endpoint and the pod, once each: {series:?}");
    let labelled = |job: &str| -> Result<BTreeMap<String, String>> {
        let found = series.iter().find(|s| s["metric"]["job"] == job).with_context(|| format!("job {job}"))?;
        Ok(serde_json::from_value(found["metric"].clone())?)
    };
    let labels = labelled("web")?;
    let pod_ip = labels.get("instance").and_then(|i| i.strip_suffix(":9090")).context("instance")?.to_owned();
    assert!(pod_ip.starts_with("10."), "the pod's address: {pod_ip}");
    let want: BTreeMap<String, String> = [
        ("__name__", "up"),
        ("container", "app"),
        ("endpoint", "metrics"),
        ("instance", &format!("{pod_ip}:9090")),
        ("job", "web"),
        ("namespace", &ns),
        ("pod", "web-0"),
        ("service", "web"),
        ("team", "obs"),
        ("app_kubernetes_io_version", "1.2.3"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(labels, want);
    // The PodMonitor's target: no service, the job named after the monitor.
    let mut want = want;
    want.remove("service");
    want.remove("team");
    want.insert("job".to_owned(), format!("{ns}/web"));
    assert_eq!(labelled(&format!("{ns}/web"))?, want);
    support::release_namespace(&ns).await
}
