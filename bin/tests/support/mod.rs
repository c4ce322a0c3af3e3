//! Shared environment of the operator's integration tests: one real control plane and one process kubelet per
//! test binary, the project's CRDs installed, and the real `tsdb-operator` binary started per test.
#![allow(dead_code)] // each test binary uses a different part of this module
#![allow(clippy::panic)] // test support: a broken environment fails the test

pub mod backup;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use tsdb_operator_core::crd::{Phase, PrometheusCluster};
use tsdb_operator_testenv::controlplane::ControlPlane;
use tsdb_operator_testenv::kubelet::{Kubelet, KubeletHandle};
use tsdb_operator_testenv::process::{ProcessBuilder, Supervised, Workdir, free_port};

/// The shared environment.
pub struct Env {
    pub cp: &'static ControlPlane,
    pub kubelet: KubeletHandle,
    pub workdir: Workdir,
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"), PathBuf::from)
}

/// The freshly built operator binary (the same package, so cargo builds it before the tests).
pub fn operator_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tsdb-operator"))
}

/// Starts the shared environment once per test binary.
pub fn env() -> &'static Env {
    static ENV: OnceLock<Result<Env, String>> = OnceLock::new();
    // Started on its own thread: the caller may be inside a tokio runtime, which cannot block on another one.
    let env = ENV.get_or_init(|| {
        std::thread::spawn(|| start_env().map_err(|e| format!("{e:#}")))
            .join()
            .unwrap_or_else(|_| Err("the environment thread panicked".to_owned()))
    });
    match env {
        Ok(e) => e,
        Err(e) => panic!("the test environment did not start: {e}"),
    }
}

fn start_env() -> Result<Env> {
    let _ = target_dir();
    let cp = ControlPlane::shared();
    let workdir = Workdir::create("operator-tests")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let kubelet = rt.block_on(async {
        cp.install_project_crds().await?;
        let kubelet = Kubelet::builder(cp.kubeconfig_path())
            .nodes(3)
            .state_dir(workdir.subdir("kubelet")?)
            .operator_binary(operator_binary())
            .backoff(Duration::from_secs(1), Duration::from_secs(10))
            .start()
            .await
            .context("failed to start the process kubelet")?;
        anyhow::Ok(kubelet)
    })?;
    Ok(Env { cp, kubelet, workdir })
}

/// The shared control plane with the project's CRDs, without a kubelet (pods stay Pending).
pub fn control_plane_only() -> &'static ControlPlane {
    static CRDS: OnceLock<Result<(), String>> = OnceLock::new();
    let cp = ControlPlane::shared();
    let installed = CRDS.get_or_init(|| {
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            rt.block_on(cp.install_project_crds()).map_err(|e| format!("{e:#}"))
        })
        .join()
        .unwrap_or_else(|_| Err("the CRD install thread panicked".to_owned()))
    });
    if let Err(e) = installed {
        panic!("failed to install the CRDs: {e}");
    }
    cp
}

/// A running operator process.
pub struct Operator {
    pub process: Supervised,
    pub metrics_port: u16,
}

impl Operator {
    /// Starts `tsdb-operator` watching `namespace` (all namespaces when `None`), with `extra` arguments.
    pub fn start(namespace: Option<&str>, extra: &[&str]) -> Result<Self> {
        let env = env();
        Self::start_on(env.cp, &env.workdir, namespace, extra)
    }

    /// Starts `tsdb-operator` against `cp`, logging into `workdir`.
    pub fn start_on(cp: &ControlPlane, workdir: &Workdir, namespace: Option<&str>, extra: &[&str]) -> Result<Self> {
        Self::start_with(cp.kubeconfig_path(), workdir, namespace, extra)
    }

    /// Starts `tsdb-operator` on `cp` as `user` (e.g. the ServiceAccount of deploy/rbac.yaml, which the caller
    /// applies).
    #[allow(dead_code)] // not every test binary uses it
    pub fn start_as(
        cp: &ControlPlane,
        user: &str,
        workdir: &Workdir,
        namespace: Option<&str>,
        extra: &[&str],
    ) -> Result<Self> {
        let kubeconfig = cp.kubeconfig_path_for(user).with_context(|| format!("no kubeconfig for {user}"))?;
        Self::start_with(&kubeconfig, workdir, namespace, extra)
    }

    fn start_with(kubeconfig: &Path, workdir: &Workdir, namespace: Option<&str>, extra: &[&str]) -> Result<Self> {
        let port = free_port(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))?;
        let mut builder = ProcessBuilder::new(format!("operator-{}", namespace.unwrap_or("all")), operator_binary())
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg(format!("--metrics-bind-address=127.0.0.1:{port}"))
            .arg("--health-probe-bind-address=0")
            .env("RUST_LOG", "info,tsdb_operator_adapters=debug,kube=warn")
            .grace(Duration::from_secs(10));
        if let Some(ns) = namespace {
            builder = builder.arg(format!("--watch-namespace={ns}"));
        }
        // Plain HTTP, so that tests read the metrics without a token, unless the test chooses.
        if !extra.iter().any(|a| a.trim_start_matches('-').starts_with("metrics-secure")) {
            builder = builder.arg("--metrics-secure=false");
        }
        builder = builder.args(extra);
        let process = builder.spawn(workdir)?;
        Ok(Self { process, metrics_port: port })
    }

    /// The operator's metrics text.
    pub async fn metrics(&self) -> Result<String> {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        Ok(reqwest::get(&url).await?.text().await?)
    }
}

/// The sum of the values of every metric line that starts with `prefix` (labels included); 0 when none does.
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// A fresh namespace.
pub async fn namespace(prefix: &str) -> String {
    env().cp.namespace(prefix).await
}

/// Deletes a test's namespace once the test is done with it, so that its Prometheus pods stop taking CPU from the
/// tests that follow in the same binary. Objects held by a finalizer stay until their operator removes it.
#[allow(dead_code)] // not every test binary uses it
pub async fn release_namespace(ns: &str) -> Result<()> {
    use k8s_openapi::api::core::v1::Namespace;
    Api::<Namespace>::all(client()).delete(ns, &kube::api::DeleteParams::background()).await?;
    Ok(())
}

/// An API client.
pub fn client() -> kube::Client {
    env().cp.client()
}

/// Polls `check` every 500 ms until it returns `Some`, failing after `timeout` with `what` and the last state.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("timed out after {timeout:?} waiting for {what} (last error: {last})")
}

/// Waits until the cluster reports `phase` with `ready` ready replicas.
pub async fn wait_phase(
    ns: &str,
    name: &str,
    phase: Phase,
    ready: i32,
    timeout: Duration,
) -> Result<PrometheusCluster> {
    let api: Api<PrometheusCluster> = Api::namespaced(client(), ns);
    eventually(&format!("{ns}/{name} to be {phase} with {ready} ready"), timeout, || {
        let api = api.clone();
        async move {
            let pc = api.get(name).await?;
            let st = pc.status.clone().unwrap_or_default();
            Ok((st.phase == Some(phase) && st.ready_replicas == ready).then_some(pc))
        }
    })
    .await
}

/// The pods of a cluster.
/// Whether the pod is Ready and not being deleted.
#[allow(dead_code)] // not every test binary uses it
pub fn pod_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

pub async fn pods(ns: &str, name: &str) -> Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(client(), ns);
    Ok(api.list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={name}"))).await?.items)
}

/// GET a Prometheus API path on a pod IP.
pub async fn prom_get(pod_ip: &str, path: &str) -> Result<serde_json::Value> {
    let url = format!("http://{pod_ip}:9090{path}");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let resp = client.get(&url).send().await.with_context(|| format!("GET {url}"))?;
    Ok(resp.json().await?)
}

/// Applies a PrometheusCluster from YAML with server-side apply as a user would (`kubectl apply --server-side`).
pub async fn apply_cluster(ns: &str, yaml: &str) -> Result<PrometheusCluster> {
    let value: serde_json::Value = serde_yaml::from_str(yaml)?;
    let name = value["metadata"]["name"].as_str().context("metadata.name")?.to_owned();
    let api: Api<PrometheusCluster> = Api::namespaced(client(), ns);
    let pp = kube::api::PatchParams::apply("test-user").force();
    Ok(api.patch(&name, &pp, &kube::api::Patch::Apply(&value)).await?)
}

/// Installs the ClusterRoles of deploy/api-rbac.yaml and binds the ServiceAccount `user` of `ns` to `role` there.
pub async fn bind_api_role(client: &kube::Client, ns: &str, user: &str, role: &str) -> Result<()> {
    use serde::Deserialize as _;
    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(client.clone());
    for doc in serde_yaml::Deserializer::from_str(include_str!("../../../deploy/api-rbac.yaml")) {
        let v = serde_json::Value::deserialize(doc)?;
        if v["kind"] == "ClusterRole" {
            let name = v["metadata"]["name"].as_str().context("name")?;
            let apply = kube::api::PatchParams::apply("tsdb-operator-tests").force();
            roles.patch(name, &apply, &kube::api::Patch::Apply(&v)).await?;
        }
    }
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{user}-{role}"), "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": user, "namespace": ns}],
    }))?;
    let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> = Api::namespaced(client.clone(), ns);
    bindings.create(&kube::api::PostParams::default(), &binding).await?;
    Ok(())
}

/// CPU time (user + system) of `pid` from `/proc/<pid>/stat`, in clock ticks (100 per second on Linux).
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

/// Resident set size of process `pid` (`VmRSS`), in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    tsdb_operator_testenv::process::rss_kib(pid).map(|(rss, _)| rss).with_context(|| format!("no VmRSS of {pid}"))
}

/// A TLS client that trusts the certificates of the PEM `bundle` only.
pub fn tls_client(bundle: &[u8]) -> Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(bundle) {
        roots.add(cert?)?;
    }
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)))
}

/// An HTTPS client that trusts the authorities of the PEM `bundle` only, not the machine's roots.
#[allow(dead_code)] // not every test binary uses it
pub fn https_trusting(bundle: &str) -> Result<reqwest::Client> {
    https_trusting_at(bundle, None)
}

/// [`https_trusting`], reaching `host` at an address of the test's choosing (a Service's name, resolved to a pod).
pub fn https_trusting_at(bundle: &str, resolve: Option<(&str, std::net::SocketAddr)>) -> Result<reqwest::Client> {
    let mut builder =
        reqwest::Client::builder().no_proxy().tls_built_in_root_certs(false).timeout(Duration::from_secs(20));
    if let Some((host, address)) = resolve {
        builder = builder.resolve(host, address);
    }
    for cert in reqwest::Certificate::from_pem_bundle(bundle.as_bytes())? {
        builder = builder.add_root_certificate(cert);
    }
    Ok(builder.build()?)
}

/// The authorities of the operator's own REST API certificate, as it publishes them for callers (key `ca.crt` of
/// `configmap` in `namespace`), read with `client`; waits up to a minute for the operator to publish them.
#[allow(dead_code)] // not every test binary uses it
pub async fn api_authority(client: &kube::Client, namespace: &str, configmap: &str) -> Result<String> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    eventually("the operator to publish its API authority", Duration::from_mins(1), || async {
        let found = config_maps.get_opt(configmap).await?;
        Ok(found.and_then(|c| c.data?.remove("ca.crt")).filter(|b| b.contains("BEGIN CERTIFICATE")))
    })
    .await
}

/// Fault table row 18's measure: requests `0..1_000` warm up, then `1_000..11_000` are sent, 8 at a time, by `send`
/// (the request's index -> its status, or `None` when it failed, and the answer or error). Each must get exactly
/// `want(i)` and none a 5xx; the resident memory of `pid` may grow by 8 MiB at most. Prints the figures as a
/// `BENCH` line about `what`; returns the RSS before, in KiB.
#[allow(dead_code)] // not every test binary uses it
pub async fn ten_thousand_bad_requests<F, Fut>(
    what: &str,
    pid: u32,
    send: F,
    want: impl Fn(usize) -> (u16, String),
) -> Result<u64>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = (usize, Option<u16>, String)>,
{
    use futures::StreamExt as _;
    let run = |range: std::ops::Range<usize>| futures::stream::iter(range.map(&send)).buffer_unordered(8);
    for (i, status, text) in run(0..1_000).collect::<Vec<_>>().await {
        let (code, request) = want(i);
        anyhow::ensure!(status == Some(code), "warm-up request {i}, {request}: {status:?} (want {code}): {text}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline = rss_kib(pid)?;
    let started = Instant::now();
    let answers = run(1_000..11_000).collect::<Vec<_>>().await;
    let took = started.elapsed();
    let mut wrong = Vec::new();
    for (i, status, text) in &answers {
        let (code, request) = want(*i);
        anyhow::ensure!(status.is_none_or(|s| s < 500), "a 5xx: {request}: {text}");
        if *status != Some(code) {
            wrong.push(format!("{request} -> {status:?} (want {code}): {text}"));
        }
    }
    anyhow::ensure!(
        wrong.is_empty(),
        "{} of 10,000 got another answer: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid)?;
    eprintln!(
        "BENCH 10,000 {what} in {took:?}; RSS {baseline} KiB before, {after} KiB after ({:+} KiB)",
        i64::try_from(after)? - i64::try_from(baseline)?
    );
    anyhow::ensure!(after <= baseline + 8 * 1024, "RSS grew from {baseline} KiB to {after} KiB over 10,000 {what}");
    Ok(baseline)
}

/// Whether the server closes `stream` (end of stream or an error) within `within`; what it sent before is returned.
#[allow(dead_code)] // not every test binary uses it
pub async fn closed_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, within: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt as _;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(String::from_utf8_lossy(&seen).into_owned()),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// The scrape pools of the active targets of the Prometheus at `ip` whose health is `up`.
#[allow(dead_code)] // not every test binary uses it
pub async fn healthy_pools(ip: &str) -> Result<std::collections::BTreeSet<String>> {
    let targets = prom_get(ip, "/api/v1/targets?state=active").await?;
    Ok(targets["data"]["activeTargets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["health"] == "up")
        .filter_map(|t| t["scrapePool"].as_str().map(str::to_owned))
        .collect())
}
