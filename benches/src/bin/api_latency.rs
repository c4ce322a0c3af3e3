//! What the REST API costs over kube's client: `GET /api/clusters` with 1,000 PrometheusClusters in the namespace,
//! and `POST /api/clusters` (a create), each timed against the same operation done with kube's client directly
//! against the API server as the same ServiceAccount (the floor), interleaved, on the real test control plane with
//! the operator binary serving the API over HTTPS. Reports p50, p99 and requests/s (one at a time) of each, and
//! the ratio to the floor.
//!
//! `cargo build --release -p tsdb-operator --bin tsdb-operator && cargo run --release -p tsdb-operator-benches --bin
//! api_latency -- --clusters 1000 --lists 200 --creates 300`

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::{Value, json};
use tsdb_operator_benches::{arg, operator_binary, percentile};
use tsdb_operator_core::crd::PrometheusCluster;
use tsdb_operator_testenv::controlplane::ControlPlane;
use tsdb_operator_testenv::process::{ProcessBuilder, Workdir, free_port};

const LOCALHOST: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn spec() -> Value {
    json!({"replicas": 2, "retention": "15d", "storage": {"size": "10Gi"},
           "remoteWrite": [{"url": "https://rw.example.com/write"}]})
}

fn cluster(ns: &str, name: &str) -> Result<PrometheusCluster> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "observability.merlionos.org/v1", "kind": "PrometheusCluster",
        "metadata": {"name": name, "namespace": ns}, "spec": spec()
    }))?)
}

/// Timings of one operation: (API, floor).
#[derive(Default)]
struct Pair {
    api: Vec<Duration>,
    floor: Vec<Duration>,
}

impl Pair {
    fn report(&mut self, what: &str) {
        self.api.sort();
        self.floor.sort();
        #[allow(clippy::cast_precision_loss)] // rates and ratios to print
        let rate = |d: &[Duration]| d.len() as f64 / d.iter().sum::<Duration>().as_secs_f64();
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
        let (a50, a99, f50, f99) = (
            percentile(&self.api, 0.5),
            percentile(&self.api, 0.99),
            percentile(&self.floor, 0.5),
            percentile(&self.floor, 0.99),
        );
        println!("| {what}, REST API | {a50:.2?} | {a99:.2?} | {:.1} |", rate(&self.api));
        println!("| {what}, kube client (floor) | {f50:.2?} | {f99:.2?} | {:.1} |", rate(&self.floor));
        println!(
            "| {what}, ratio to the floor | {:.2} | {:.2} | {:.2} |",
            ratio(a50, f50),
            ratio(a99, f99),
            rate(&self.api) / rate(&self.floor)
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let clusters = usize::try_from(arg("--clusters", 1000))?;
    let lists = usize::try_from(arg("--lists", 200))?;
    let creates = usize::try_from(arg("--creates", 300))?;
    let operator = operator_binary(Path::new("target/release/tsdb-operator"))?;
    let cp = ControlPlane::start()?;
    cp.install_project_crds().await?;
    cp.apply_yaml(include_str!("../../../deploy/api-rbac.yaml")).await?;
    let admin = cp.client();
    let (ns, elsewhere) = (cp.namespace("api-bench").await, cp.namespace("operator").await);
    let token = cp.service_account_token(&ns, "bench").await?;
    cp.apply_yaml(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: bench\n  namespace: {ns}\n\
         roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: tsdb-operator-api-editor\n\
         subjects:\n  - kind: ServiceAccount\n    name: bench\n    namespace: {ns}\n"
    ))
    .await?;
    let typed: Api<PrometheusCluster> = Api::namespaced(admin.clone(), &ns);
    let started = Instant::now();
    for i in 0..clusters {
        typed.create(&PostParams::default(), &cluster(&ns, &format!("c{i:04}"))?).await?;
    }
    eprintln!("{clusters} clusters created in {:?}", started.elapsed());

    // The operator serves the API for `ns` and reconciles only `elsewhere` (nothing here is reconciled, so the
    // API server's load is the benchmark's own).
    let port = free_port(LOCALHOST)?;
    let workdir = Workdir::create("api-bench")?;
    let mut op = ProcessBuilder::new("tsdb-operator", &operator)
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .arg("--enable-api")
        .arg(format!("--api-address=127.0.0.1:{port}"))
        .arg(format!("--api-namespace={ns}"))
        .arg(format!("--watch-namespace={elsewhere}"))
        .arg(format!("--leader-election-namespace={elsewhere}"))
        .arg("--metrics-bind-address=0")
        .arg("--health-probe-bind-address=0")
        .arg("--enable-backup=false")
        .spawn(&workdir)?;
    // The operator's self-signed certificate on loopback.
    let http = reqwest::Client::builder().danger_accept_invalid_certs(true).timeout(Duration::from_mins(1)).build()?;
    let base = format!("https://127.0.0.1:{port}");
    let list_via_api = || async {
        let response = http.get(format!("{base}/api/clusters")).bearer_auth(&token).send().await?;
        let status = response.status();
        let items: Value = serde_json::from_slice(&response.bytes().await?)?;
        anyhow::Ok((status.as_u16(), items.as_array().map_or(0, Vec::len)))
    };
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        match list_via_api().await {
            Ok((200, n)) if n == clusters => break,
            other if Instant::now() > deadline => bail!("the API does not list {clusters}: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let as_user: Api<PrometheusCluster> = Api::namespaced(cp.client_with_token(&token)?, &ns);

    let mut list = Pair::default();
    for i in 0..lists + 10 {
        let t = Instant::now();
        let (status, n) = list_via_api().await?;
        let api = t.elapsed();
        anyhow::ensure!(status == 200 && n == clusters, "API list: {status}, {n} items");
        let t = Instant::now();
        let n = as_user.list(&ListParams::default()).await?.items.len();
        let floor = t.elapsed();
        anyhow::ensure!(n == clusters, "kube list: {n} items");
        if i >= 10 {
            list.api.push(api);
            list.floor.push(floor);
        }
    }

    let mut create = Pair::default();
    for i in 0..creates + 10 {
        let t = Instant::now();
        let body = json!({"name": format!("api-{i:04}"), "spec": spec()});
        let response = http.post(format!("{base}/api/clusters")).bearer_auth(&token).json(&body).send().await?;
        let status = response.status();
        response.bytes().await?;
        let api = t.elapsed();
        anyhow::ensure!(status == 201, "API create: {status}");
        let t = Instant::now();
        as_user.create(&PostParams::default(), &cluster(&ns, &format!("kube-{i:04}"))?).await?;
        let floor = t.elapsed();
        if i >= 10 {
            create.api.push(api);
            create.floor.push(floor);
        }
    }

    println!("| operation | p50 | p99 | requests/s (one at a time) |\n|---|---|---|---|");
    list.report(&format!("list {clusters} clusters"));
    create.report("create");
    op.stop()?;
    Ok(())
}
