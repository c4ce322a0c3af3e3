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

/// A ServiceMonitor selecting the Services labelled `app.kubernetes.io/name: <service>`, labelled `labels`.
fn service_monitor(ns: &str, name: &str, service: &str, labels: &str, endpoint: &str) -> String {
    format!(
        "apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata:\n  name: {name}\n  namespace: {ns}\n  \
         labels: {labels}\nspec:\n  selector:\n    matchLabels:\n      app.kubernetes.io/name: {service}\n  \
         targetLabels: [team]\n  endpoints:\n    - {endpoint}\n"
    )
}

/// Applies the ServiceMonitor `web` (labelled `team: obs`, selecting the Service `web`), once the CRD just
/// installed is served.
async fn apply_web_monitor(ns: &str) -> Result<()> {
    eventually("the ServiceMonitor CRD to be served", Duration::from_secs(30), || async {
        let applied = env()
            .cp
            .apply_yaml(&service_monitor(ns, "web", "web", "{team: obs}", "port: metrics\n      interval: 1s"))
            .await;
        Ok(applied.is_ok().then_some(()))
    })
    .await
}

async fn monitors_condition(ns: &str, name: &str) -> Result<Option<(String, String, String)>> {
    let api: kube::Api<tsdb_operator_core::crd::PrometheusCluster> = kube::Api::namespaced(support::client(), ns);
    let pc = api.get(name).await?;
    Ok(pc
        .status
        .unwrap_or_default()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "MonitorsAccepted")
        .map(|c| (c.status, c.reason, c.message)))
}

/// Hundreds more selected monitors: the configuration no longer fits a ConfigMap as text, so it is stored gzipped
/// and expanded by the agent in the pod; Prometheus at `ip` loads all of it by a reload, and still scrapes `other`.
async fn hundreds_more_are_stored_gzipped_and_loaded(ns: &str, ip: &str, other: &str) -> Result<()> {
    let bulk: String = (0..600)
        .map(|i| service_monitor(ns, &format!("bulk-{i:03}"), &format!("bulk-{i:03}"), "{team: obs}", "port: metrics"))
        .collect::<Vec<_>>()
        .join("---\n");
    env().cp.apply_yaml(&bulk).await?;
    let config_maps = kube::Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(support::client(), ns);
    eventually("the monitors' file stored gzipped", Duration::from_mins(2), || async {
        let cm = config_maps.get("sel-config").await?;
        Ok(cm.binary_data.is_some_and(|b| b.contains_key("monitor-scrape-configs.yml.gz")).then_some(()))
    })
    .await?;
    let last = format!("serviceMonitor/{ns}/bulk-599/0");
    eventually("Prometheus running the expanded configuration", Duration::from_mins(2), || {
        let (ip, last) = (ip.to_owned(), last.clone());
        async move {
            let pools = support::prom_get(&ip, "/api/v1/scrape_pools").await?;
            let pools = pools["data"]["scrapePools"].as_array().cloned().unwrap_or_default();
            Ok(pools.iter().any(|p| p.as_str() == Some(&last)).then_some(()))
        }
    })
    .await?;
    assert!(support::healthy_pools(ip).await?.contains(other), "the other monitor is still scraped");
    Ok(())
}

/// The whole path as a user meets it: prometheus-operator's CRDs installed, the operator running, a cluster that
/// selects monitors by label. Its Prometheus discovers the app through the API server as the operator-made
/// ServiceAccount (with only the Role the operator made), a new ServiceMonitor is scraped after a reload without a
/// pod restart, a deleted one stops being scraped, and a monitor that cannot be rendered is named in the status
/// while the others go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_scrapes_the_monitors_it_selects_and_follows_them_without_a_restart() -> Result<()> {
    let env = env();
    let ns = support::namespace("selects").await;
    env.cp.apply_yaml(include_str!("../../fixtures/crds/monitoring.coreos.com.yaml")).await?;
    let _operator = support::Operator::start(Some(&ns), &[])?;
    env.cp.apply_yaml(&app_pod(&ns)).await?;
    env.cp.apply_yaml(&service(&ns, "web", "{app.kubernetes.io/name: web, team: obs}")).await?;
    env.cp.apply_yaml(&service(&ns, "other", "{app.kubernetes.io/name: other, team: obs}")).await?;
    apply_web_monitor(&ns).await?;
    // Not selected: no `team: obs` label.
    env.cp
        .apply_yaml(&service_monitor(&ns, "ignored", "other", "{team: else}", "port: metrics\n      interval: 1s"))
        .await?;
    support::apply_cluster(
        &ns,
        "apiVersion: observability.merlionos.org/v1\nkind: PrometheusCluster\nmetadata:\n  name: sel\nspec:\n  \
         replicas: 1\n  image: prom/prometheus:v3.5.0\n  retention: 1d\n  scrapeInterval: 1s\n  storage:\n    \
         size: 1Gi\n  serviceMonitorSelector:\n    matchLabels:\n      team: obs\n",
    )
    .await?;
    support::wait_phase(&ns, "sel", tsdb_operator_core::crd::Phase::Active, 1, Duration::from_mins(3)).await?;
    let pod = support::pods(&ns, "sel").await?.into_iter().next().context("the cluster's pod")?;
    let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).context("pod IP")?;
    let uid = pod.metadata.uid.clone();
    assert_eq!(pod.spec.as_ref().and_then(|s| s.service_account_name.as_deref()), Some("sel-discovery"));

    // The selected monitor's target, found through the API server and labelled as prometheus-operator labels it.
    let web = format!("serviceMonitor/{ns}/web/0");
    eventually("the selected ServiceMonitor's target up", Duration::from_mins(2), || {
        let (ip, web) = (ip.clone(), web.clone());
        async move { Ok(support::healthy_pools(&ip).await?.contains(&web).then_some(())) }
    })
    .await?;
    let up = support::prom_get(&ip, "/api/v1/query?query=up%7Bjob%3D%22web%22%7D").await?;
    let metric = &up["data"]["result"][0]["metric"];
    assert_eq!(
        (&metric["namespace"], &metric["service"], &metric["pod"], &metric["endpoint"], &metric["team"]),
        (&json!(ns), &json!("web"), &json!("web-0"), &json!("metrics"), &json!("obs")),
        "{up}"
    );
    let condition = monitors_condition(&ns, "sel").await?.context("MonitorsAccepted")?;
    assert_eq!(condition.0, "True", "{condition:?}");
    assert!(condition.2.starts_with("1 ServiceMonitors and 0 PodMonitors chosen"), "{condition:?}");

    // A new selected monitor is scraped after a reload, in the same pod.
    env.cp
        .apply_yaml(&service_monitor(&ns, "other", "other", "{team: obs}", "port: metrics\n      interval: 1s"))
        .await?;
    let other = format!("serviceMonitor/{ns}/other/0");
    eventually("the new ServiceMonitor's target up", Duration::from_mins(2), || {
        let (ip, other) = (ip.clone(), other.clone());
        async move { Ok(support::healthy_pools(&ip).await?.contains(&other).then_some(())) }
    })
    .await?;
    hundreds_more_are_stored_gzipped_and_loaded(&ns, &ip, &other).await?;

    // A monitor that cannot be rendered is named; the others are still scraped.
    env.cp
        .apply_yaml(&service_monitor(
            &ns,
            "secret",
            "other",
            "{team: obs}",
            "port: metrics\n      basicAuth: {username: {name: creds, key: user}}",
        ))
        .await?;
    let refused = eventually("the refusal in the status", Duration::from_mins(1), || {
        let ns = ns.clone();
        async move { Ok(monitors_condition(&ns, "sel").await?.filter(|c| c.0 == "False")) }
    })
    .await?;
    assert_eq!(refused.1, "MonitorsRefused");
    assert!(refused.2.contains(&format!("ServiceMonitor {ns}/secret: spec.endpoints[0].basicAuth")), "{refused:?}");
    // A deleted monitor stops being scraped.
    let monitors = kube::Api::<kube::api::DynamicObject>::namespaced_with(
        support::client(),
        &ns,
        &kube::api::ApiResource::erase::<ServiceMonitor>(&()),
    );
    monitors.delete("web", &kube::api::DeleteParams::default()).await?;
    let pools = eventually("the deleted ServiceMonitor's target gone", Duration::from_mins(2), || {
        let (ip, web) = (ip.clone(), web.clone());
        async move {
            let pools = support::healthy_pools(&ip).await?;
            Ok((!pools.contains(&web)).then_some(pools))
        }
    })
    .await?;
    assert!(pools.contains(&other), "the other monitor is still scraped: {pools:?}");
    let pod = support::pods(&ns, "sel").await?.into_iter().next().context("the cluster's pod")?;
    assert_eq!(pod.metadata.uid, uid, "every change was a reload, never a restart");
    support::release_namespace(&ns).await
}

/// The receiver's TLS Secret: a certificate for `receiver.test` and the authority that issued it (`ca.crt`,
/// `tls.crt`, `tls.key`, as cert-manager lays them out); and the authority's PEM.
fn receiver_tls(ns: &str) -> Result<(String, String)> {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "receiver-test-ca");
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate()?)?;
    let key = rcgen::KeyPair::generate()?;
    let leaf = rcgen::CertificateParams::new(vec![RECEIVER_NAME.to_owned()])?.signed_by(&key, &ca)?;
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "receiver-tls", "namespace": ns},
        "stringData": {"ca.crt": ca.pem(), "tls.crt": leaf.pem(), "tls.key": key.serialize_pem()}});
    Ok((serde_json::to_string(&secret)?, ca.pem()))
}

/// The name in the receiver's certificate (its URL holds the pod's IP; the agent checks this name instead).
const RECEIVER_NAME: &str = "receiver.test";

/// A Prometheus that receives remote write (`--web.enable-remote-write-receiver`) over HTTPS behind basic auth, in a
/// pod.
fn receiver(ns: &str, user: &str, password: &str) -> Result<String> {
    let hash = bcrypt::hash(password, 4)?;
    Ok(format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: receiver-web\n  namespace: {ns}\ndata:\n  web.yml: |\n    \
         tls_server_config:\n      cert_file: /etc/tls/tls.crt\n      key_file: /etc/tls/tls.key\n    \
         basic_auth_users:\n      {user}: \"{hash}\"\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: receiver\n  \
         namespace: {ns}\nspec:\n  containers:\n    - name: prometheus\n      image: prom/prometheus:v3.5.0\n      \
         args: [\"--config.file=/dev/null\", \"--storage.tsdb.path=data\", \"--web.listen-address=:9090\", \
         \"--web.enable-remote-write-receiver\", \"--web.config.file=/etc/web/web.yml\"]\n      volumeMounts:\n        \
         - name: web\n          mountPath: /etc/web\n        - name: tls\n          mountPath: /etc/tls\n  volumes:\n    \
         - name: web\n      configMap:\n        name: receiver-web\n    - name: tls\n      secret:\n        \
         secretName: receiver-tls\n"
    ))
}

/// An HTTPS client that trusts `ca` and reaches the receiver at `ip` by its certificate's name.
fn receiver_client(ca: &str, ip: &str) -> Result<reqwest::Client> {
    let addr: std::net::SocketAddr = format!("{ip}:9090").parse()?;
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes())?)
        .resolve(RECEIVER_NAME, addr)
        .build()?)
}

/// The newest sample of `up{job="web"}` the receiver holds, as (Unix time, value), asked with basic auth.
async fn received_up(http: &reqwest::Client, password: &str) -> Result<Option<(f64, String)>> {
    let answer: Value = http
        .get(format!("https://{RECEIVER_NAME}:9090/api/v1/query"))
        .basic_auth("greptime", Some(password))
        .query(&[("query", "up{job=\"web\"}")])
        .send()
        .await?
        .json()
        .await?;
    let value = &answer["data"]["result"][0]["value"];
    Ok(value[0].as_f64().zip(value[1].as_str().map(str::to_owned)))
}

/// Agent mode as a user meets it: a cluster with `mode: Agent` (its write-ahead log on an emptyDir) selects a
/// ServiceMonitor, scrapes the app and
/// remote-writes into a second, real Prometheus (the receiver) over HTTPS checked against a private authority from
/// a Secret, with a `?db=public` query parameter, basic auth from a Secret and a header; the samples arrive, keep
/// arriving after the receiver is restarted, and the agent itself answers no queries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cluster_forwards_what_it_scrapes_to_a_remote_write_receiver_and_survives_its_restart() -> Result<()> {
    let env = env();
    let ns = support::namespace("agent").await;
    let password = "s3cret-for-the-receiver";
    env.cp.apply_yaml(include_str!("../../fixtures/crds/monitoring.coreos.com.yaml")).await?;
    let _operator = support::Operator::start(Some(&ns), &[])?;
    let (tls_secret, ca) = receiver_tls(&ns)?;
    env.cp.apply_yaml(&tls_secret).await?;
    env.cp.apply_yaml(&receiver(&ns, "greptime", password)?).await?;
    env.cp.apply_yaml(&app_pod(&ns)).await?;
    env.cp.apply_yaml(&service(&ns, "web", "{app.kubernetes.io/name: web, team: obs}")).await?;
    env.cp
        .apply_yaml(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: receiver-auth\n  namespace: {ns}\nstringData:\n  \
             username: greptime\n  password: {password}\n"
        ))
        .await?;
    apply_web_monitor(&ns).await?;
    let receiver_ip = eventually("the receiver's pod IP", Duration::from_mins(1), || async {
        Ok(env.kubelet.faults().pod_ip(&ns, "receiver").map(|ip| ip.to_string()))
    })
    .await?;
    support::apply_cluster(
        &ns,
        &format!(
            "apiVersion: observability.merlionos.org/v1\nkind: PrometheusCluster\nmetadata:\n  name: edge\nspec:\n  \
             mode: Agent\n  replicas: 1\n  image: prom/prometheus:v3.5.0\n  scrapeInterval: 1s\n  storage:\n    \
             size: 1Gi\n    emptyDir: {{}}\n  serviceMonitorSelector:\n    matchLabels:\n      team: obs\n  remoteWrite:\n    - url: \
             https://{receiver_ip}:9090/api/v1/write?db=public\n      basicAuthSecretRef:\n        name: receiver-auth\n      \
             tlsConfig:\n        ca:\n          name: receiver-tls\n        serverName: {RECEIVER_NAME}\n      \
             headers:\n        X-Scope-OrgID: edge\n      queueConfig:\n        batchSendDeadline: 1s\n        \
             minBackoff: 100ms\n        maxBackoff: 1s\n"
        ),
    )
    .await?;
    support::wait_phase(&ns, "edge", tsdb_operator_core::crd::Phase::Active, 1, Duration::from_mins(3)).await?;

    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build()?;
    let tls = receiver_client(&ca, &receiver_ip)?;
    let (first, up) = eventually("the app's samples at the receiver", Duration::from_mins(2), || {
        let tls = tls.clone();
        async move { received_up(&tls, password).await }
    })
    .await?;
    assert_eq!(up, "1");
    // Without the credentials the receiver refuses, so what arrived came with the Secret's basic auth; and it
    // speaks only TLS, so what arrived came over TLS checked against the Secret's authority.
    let refused = tls.get(format!("https://{RECEIVER_NAME}:9090/api/v1/query?query=up")).send().await?;
    assert_eq!(refused.status(), reqwest::StatusCode::UNAUTHORIZED);
    let plain = http.get(format!("http://{receiver_ip}:9090/api/v1/query?query=up")).send().await?;
    assert_eq!(plain.status(), reqwest::StatusCode::BAD_REQUEST, "plain HTTP to a TLS port");
    // The agent answers no queries.
    let agent = support::pods(&ns, "edge").await?.into_iter().next().context("the agent's pod")?;
    let volumes = agent.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default();
    let data = volumes.iter().find(|v| v.name == "data").context("the data volume")?;
    assert!(data.empty_dir.is_some() && data.persistent_volume_claim.is_none(), "the WAL on an emptyDir: {data:?}");
    let claims = kube::Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(support::client(), &ns);
    assert!(
        claims.list(&kube::api::ListParams::default()).await?.items.is_empty(),
        "an agent on an emptyDir claims no volume"
    );
    let agent_ip = agent.status.and_then(|s| s.pod_ip).context("the agent's IP")?;
    let query = http.get(format!("http://{agent_ip}:9090/api/v1/query?query=up")).send().await?;
    assert!(!query.status().is_success(), "an agent answers no queries: {}", query.status());

    // The receiver restarts (its process killed, the kubelet starts it again in the same pod); samples go on.
    let killed_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
    env.kubelet.faults().kill(&ns, "receiver", "prometheus")?;
    let (after, _) = eventually("samples newer than the receiver's restart", Duration::from_mins(2), || {
        let tls = tls.clone();
        async move {
            Ok(match received_up(&tls, password).await {
                Ok(Some((at, value))) if at > killed_at + 2.0 => Some((at, value)),
                _ => None,
            })
        }
    })
    .await?;
    assert!(after > first, "samples kept arriving: first {first}, after the restart {after}");
    support::release_namespace(&ns).await
}

/// A PrometheusRule named `name` labelled `role: rules`, with `groups` (YAML, indented for `spec.groups`).
fn prometheus_rule(ns: &str, name: &str, groups: &str) -> String {
    format!(
        "apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n  name: {name}\n  namespace: {ns}\n  \
         labels:\n    role: rules\nspec:\n  groups:\n{groups}"
    )
}

async fn rules_condition(ns: &str, name: &str) -> Result<Option<(String, String, String)>> {
    let api: kube::Api<tsdb_operator_core::crd::PrometheusCluster> = kube::Api::namespaced(support::client(), ns);
    let pc = api.get(name).await?;
    Ok(pc
        .status
        .unwrap_or_default()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "RulesAccepted")
        .map(|c| (c.status, c.reason, c.message)))
}

/// The names of the rules the Prometheus at `ip` has loaded, by group.
async fn loaded_rules(ip: &str) -> Result<BTreeMap<String, Vec<String>>> {
    let rules = support::prom_get(ip, "/api/v1/rules").await?;
    Ok(rules["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            let names = g["rules"].as_array().into_iter().flatten();
            let names = names.filter_map(|r| r["name"].as_str().map(str::to_owned)).collect();
            (g["name"].as_str().unwrap_or_default().to_owned(), names)
        })
        .collect())
}

/// Rules as a user meets them: a cluster selects PrometheusRules by label and has its own rule groups. The
/// recording rule's series appear, the alert fires (`/api/v1/alerts`), the broken rule is named in `RulesAccepted`
/// while the rest of its group loads, a new PrometheusRule is loaded by a reload without a pod restart, and the
/// Alertmanager behind a Service is discovered through the operator-made ServiceAccount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_loads_the_rules_it_selects_names_a_broken_one_and_finds_its_alertmanager() -> Result<()> {
    let env = env();
    let ns = support::namespace("rules").await;
    env.cp.apply_yaml(include_str!("../../fixtures/crds/monitoring.coreos.com.yaml")).await?;
    let _operator = support::Operator::start(Some(&ns), &[])?;
    // The Alertmanager stand-in: the app's pod behind a Service with a port named `web` (only discovery is checked).
    env.cp.apply_yaml(&app_pod(&ns)).await?;
    env.cp
        .apply_yaml(&format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: alertmanager\n  namespace: {ns}\nspec:\n  selector:\n    \
             app: web\n  ports:\n    - name: web\n      protocol: TCP\n      port: 9093\n      targetPort: metrics\n"
        ))
        .await?;
    let groups = "    - name: health\n      rules:\n        - record: job:up:sum\n          expr: sum by (job) (up)\n        \
                  - alert: MissingParen\n          expr: sum(up\n        - alert: AlwaysFiring\n          expr: vector(1)\n          \
                  labels:\n            severity: info\n          annotations:\n            summary: '{{ $value }} always'\n";
    eventually("the PrometheusRule CRD to be served", Duration::from_secs(30), || async {
        Ok(env.cp.apply_yaml(&prometheus_rule(&ns, "health", groups)).await.is_ok().then_some(()))
    })
    .await?;
    support::apply_cluster(
        &ns,
        "apiVersion: observability.merlionos.org/v1\nkind: PrometheusCluster\nmetadata:\n  name: ruled\nspec:\n  \
         replicas: 1\n  image: prom/prometheus:v3.5.0\n  retention: 1d\n  scrapeInterval: 1s\n  evaluationInterval: 1s\n  \
         storage:\n    size: 1Gi\n  ruleSelector:\n    matchLabels:\n      role: rules\n  ruleGroups:\n    - name: own\n      \
         rules:\n        - record: own:up:count\n          expr: count(up)\n  alerting:\n    alertmanagers:\n      \
         - name: alertmanager\n        port: web\n",
    )
    .await?;
    support::wait_phase(&ns, "ruled", tsdb_operator_core::crd::Phase::Active, 1, Duration::from_mins(3)).await?;
    let pod = support::pods(&ns, "ruled").await?.into_iter().next().context("the cluster's pod")?;
    let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).context("pod IP")?;
    let uid = pod.metadata.uid.clone();

    let loaded = loaded_rules(&ip).await?;
    assert_eq!(loaded.get("health"), Some(&vec!["job:up:sum".to_owned(), "AlwaysFiring".to_owned()]), "{loaded:?}");
    assert_eq!(loaded.get("own"), Some(&vec!["own:up:count".to_owned()]), "{loaded:?}");
    let condition = rules_condition(&ns, "ruled").await?.context("RulesAccepted")?;
    assert_eq!((condition.0.as_str(), condition.1.as_str()), ("False", "RulesRefused"), "{condition:?}");
    assert!(
        condition.2.contains(&format!("PrometheusRule {ns}/health: spec.groups[0].rules[1].expr: is not valid PromQL")),
        "{condition:?}"
    );
    eventually("the recording rule's series", Duration::from_mins(1), || {
        let ip = ip.clone();
        async move {
            let answer = support::prom_get(&ip, "/api/v1/query?query=job%3Aup%3Asum").await?;
            let jobs = answer["data"]["result"].as_array().cloned().unwrap_or_default();
            Ok(jobs.iter().any(|s| s["metric"]["job"] == "prometheus").then_some(()))
        }
    })
    .await?;
    eventually("the alert firing", Duration::from_mins(1), || {
        let ip = ip.clone();
        async move {
            let alerts = support::prom_get(&ip, "/api/v1/alerts").await?;
            let alerts = alerts["data"]["alerts"].as_array().cloned().unwrap_or_default();
            Ok(alerts
                .iter()
                .any(|a| {
                    a["labels"]["alertname"] == "AlwaysFiring"
                        && a["state"] == "firing"
                        && a["labels"]["severity"] == "info"
                })
                .then_some(()))
        }
    })
    .await?;
    let app_ip = eventually("the app's pod IP", Duration::from_mins(1), || async {
        Ok(env.kubelet.faults().pod_ip(&ns, "web-0").map(|ip| ip.to_string()))
    })
    .await?;
    eventually("the Alertmanager discovered through its Service", Duration::from_mins(1), || {
        let (ip, want) = (ip.clone(), format!("http://{app_ip}:9090/api/v2/alerts"));
        async move {
            let found = support::prom_get(&ip, "/api/v1/alertmanagers").await?;
            let active = found["data"]["activeAlertmanagers"].as_array().cloned().unwrap_or_default();
            Ok(active.iter().any(|a| a["url"] == want.as_str()).then_some(()))
        }
    })
    .await?;

    // A new PrometheusRule is loaded by a reload, in the same pod; the condition follows once the broken rule goes.
    let more = "    - name: more\n      rules:\n        - record: more:up:max\n          expr: max(up)\n";
    env.cp.apply_yaml(&prometheus_rule(&ns, "more", more)).await?;
    let fixed = groups.replace("        - alert: MissingParen\n          expr: sum(up\n", "");
    env.cp.apply_yaml(&prometheus_rule(&ns, "health", &fixed)).await?;
    eventually("the new PrometheusRule loaded", Duration::from_mins(2), || {
        let ip = ip.clone();
        async move { Ok(loaded_rules(&ip).await?.contains_key("more").then_some(())) }
    })
    .await?;
    let condition = eventually("RulesAccepted true", Duration::from_mins(1), || {
        let ns = ns.clone();
        async move { Ok(rules_condition(&ns, "ruled").await?.filter(|c| c.0 == "True")) }
    })
    .await?;
    assert_eq!(condition.1, "RulesLoaded");
    assert!(condition.2.starts_with("2 PrometheusRules chosen, 2 groups and 3 rules loaded"), "{condition:?}");
    let pod = support::pods(&ns, "ruled").await?.into_iter().next().context("the cluster's pod")?;
    assert_eq!(pod.metadata.uid, uid, "every change was a reload, never a restart");
    support::release_namespace(&ns).await
}

/// A ServiceMonitor whose target asks for basic auth: the credentials come from a Secret of the cluster's
/// namespace, which the operator mounts into the pods; the target is up only with them. A monitor naming a key
/// the Secret lacks is named in the status and the first one is still scraped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_scrapes_a_target_behind_basic_auth_with_credentials_from_a_secret() -> Result<()> {
    let env = env();
    let ns = support::namespace("creds").await;
    let password = "scrape-me-please";
    env.cp.apply_yaml(include_str!("../../fixtures/crds/monitoring.coreos.com.yaml")).await?;
    let _operator = support::Operator::start(Some(&ns), &[])?;
    // The target: a Prometheus serving /metrics only to `scraper` with the password (bcrypt in its web config).
    let hash = bcrypt::hash(password, 4)?;
    env.cp
        .apply_yaml(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: secured-web\n  namespace: {ns}\ndata:\n  web.yml: |\n    \
             basic_auth_users:\n      scraper: \"{hash}\"\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: secured\n  \
             namespace: {ns}\n  labels:\n    app: secured\nspec:\n  containers:\n    - name: app\n      image: \
             prom/prometheus:v3.5.0\n      args: [\"--config.file=/dev/null\", \"--storage.tsdb.path=data\", \
             \"--web.listen-address=:9090\", \"--web.config.file=/etc/web/web.yml\"]\n      ports:\n        - name: metrics\n          \
             protocol: TCP\n          containerPort: 9090\n      volumeMounts:\n        - name: web\n          mountPath: /etc/web\n  \
             volumes:\n    - name: web\n      configMap:\n        name: secured-web\n---\napiVersion: v1\nkind: Service\n\
             metadata:\n  name: secured\n  namespace: {ns}\n  labels:\n    app.kubernetes.io/name: secured\nspec:\n  \
             selector:\n    app: secured\n  ports:\n    - name: metrics\n      protocol: TCP\n      port: 9090\n      \
             targetPort: metrics\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: scrape-auth\n  namespace: {ns}\n\
             stringData:\n  user: scraper\n  pass: {password}\n"
        ))
        .await?;
    let monitor = |name: &str, endpoint: &str| service_monitor(&ns, name, "secured", "{team: obs}", endpoint);
    let auth = "port: metrics\n      interval: 1s\n      basicAuth:\n        username: {name: scrape-auth, key: user}\n        \
                password: {name: scrape-auth, key: pass}";
    eventually("the ServiceMonitor CRD to be served", Duration::from_secs(30), || async {
        Ok(env.cp.apply_yaml(&monitor("secured", auth)).await.is_ok().then_some(()))
    })
    .await?;
    env.cp
        .apply_yaml(&monitor("wrong-key", "port: metrics\n      bearerTokenSecret: {name: scrape-auth, key: token}"))
        .await?;
    support::apply_cluster(
        &ns,
        "apiVersion: observability.merlionos.org/v1\nkind: PrometheusCluster\nmetadata:\n  name: cred\nspec:\n  \
         replicas: 1\n  image: prom/prometheus:v3.5.0\n  retention: 1d\n  scrapeInterval: 1s\n  storage:\n    \
         size: 1Gi\n  serviceMonitorSelector:\n    matchLabels:\n      team: obs\n",
    )
    .await?;
    support::wait_phase(&ns, "cred", tsdb_operator_core::crd::Phase::Active, 1, Duration::from_mins(3)).await?;
    let pod = support::pods(&ns, "cred").await?.into_iter().next().context("the cluster's pod")?;
    let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).context("pod IP")?;
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default();
    assert!(
        volumes.iter().any(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some("scrape-auth")),
        "the Secret is mounted: {volumes:?}"
    );
    let pool = format!("serviceMonitor/{ns}/secured/0");
    eventually("the target behind basic auth up", Duration::from_mins(2), || {
        let (ip, pool) = (ip.clone(), pool.clone());
        async move { Ok(support::healthy_pools(&ip).await?.contains(&pool).then_some(())) }
    })
    .await?;
    let condition = monitors_condition(&ns, "cred").await?.context("MonitorsAccepted")?;
    assert_eq!(condition.1, "MonitorsRefused", "{condition:?}");
    assert!(
        condition.2.contains(&format!(
            "ServiceMonitor {ns}/wrong-key: spec.endpoints[0].bearerTokenSecret: Secret {ns}/scrape-auth has no key \"token\""
        )),
        "{condition:?}"
    );
    // Without the credentials the target refuses: what made it up was the Secret's password.
    let app_ip = env.kubelet.faults().pod_ip(&ns, "secured").context("the target's IP")?;
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build()?;
    let anonymous = http.get(format!("http://{app_ip}:9090/metrics")).send().await?;
    assert_eq!(anonymous.status(), reqwest::StatusCode::UNAUTHORIZED);
    support::release_namespace(&ns).await
}
