//! The operator's memory with prometheus-operator's objects in the cluster (issue 12): 1,000 ServiceMonitors and
//! 10,000 Endpoints on the real test control plane, against the floor of the same operator process with none of
//! them, measured in the same run.
//!
//! `cargo build --release -p tsdb-operator --bin tsdb-operator && cargo run --release -p tsdb-operator-benches --bin
//! operator_rss_monitors -- --monitors 1000 --endpoints 10000`
//! Options: `--monitors N` (1000), `--endpoints N` (10000), `--namespaces K` (10; monitors and Endpoints are spread
//! over K namespaces, so the 10,000 Endpoints carry 1,000 Services' names, each name once per namespace),
//! `--settle-seconds S` (30; wait after each phase before sampling), `--sample-seconds S` (150), `--operator PATH`
//! (target/release/tsdb-operator, else target/debug/tsdb-operator).
//!
//! The stand-in CRDs of `fixtures/crds/monitoring.coreos.com.yaml` are installed before the operator starts; it runs
//! as the ServiceAccount of deploy/rbac.yaml over all namespaces, with one PrometheusCluster that selects every
//! ServiceMonitor in every namespace (`serviceMonitorSelector: {}`, `serviceMonitorNamespaceSelector: {}`). No
//! kubelet runs: the cluster's pod stays Pending, which does not matter here; what is measured is the operator
//! holding the decoded monitors and rendering them into the cluster's ConfigMap. Three phases, one process:
//! 1. floor: the cluster converged, no monitor and no Endpoints;
//! 2. the Endpoints (one address each; no Service, no pod): the operator does not watch Endpoints (Prometheus
//!    does), so this phase shows that they do not reach it;
//! 3. the ServiceMonitors (one endpoint each, as in `monitors_scale`), until the ConfigMap `<cluster>-config`
//!    holds one scrape job per monitor.
//!
//! Each phase: created `CONCURRENCY` at a time, then `--settle-seconds`, then `VmRSS` from `/proc/<pid>/status`
//! once a second for `--sample-seconds` (median, min, max) and the peak since the start (`VmHWM`). The cluster's
//! pod stays Pending, so the operator reconciles it again every minute (and renders every monitor again each
//! time); the default window of 150 s spans at least two of those, so the median and the range include the
//! memory a render holds for a while after it (jemalloc returns freed pages after its 10 s decay).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use serde_json::{Value, json};
use tsdb_operator_core::build::config::{MONITOR_SCRAPE_GZ_KEY, MONITOR_SCRAPE_KEY};
use tsdb_operator_core::crd::PrometheusCluster;
use tsdb_operator_testenv::controlplane::{ControlPlane, OPERATOR_SA_USER};
use tsdb_operator_testenv::process::{ProcessBuilder, Supervised, Workdir};

/// Creates in flight at once: the API server, etcd and the operator share the machine's 2 cores.
const CONCURRENCY: usize = 8;
/// The benchmark's cluster, in the first namespace.
const CLUSTER: &str = "web";
/// The label on everything the benchmark creates.
const LABEL: &str = "bench=operator-rss-monitors";

struct Options {
    monitors: usize,
    endpoints: usize,
    namespaces: usize,
    settle: Duration,
    sample: Duration,
    operator: PathBuf,
}

fn options() -> Result<Options> {
    let mut o = Options {
        monitors: 1000,
        endpoints: 10_000,
        namespaces: 10,
        settle: Duration::from_secs(30),
        sample: Duration::from_secs(150),
        operator: PathBuf::from("target/release/tsdb-operator"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--monitors" => o.monitors = value()?.parse()?,
            "--endpoints" => o.endpoints = value()?.parse()?,
            "--namespaces" => o.namespaces = value()?.parse::<usize>()?.max(1),
            "--settle-seconds" => o.settle = Duration::from_secs(value()?.parse()?),
            "--sample-seconds" => o.sample = Duration::from_secs(value()?.parse::<u64>()?.max(1)),
            "--operator" => o.operator = value()?.into(),
            other => bail!("unknown option {other}"),
        }
    }
    o.operator = tsdb_operator_benches::operator_binary(&o.operator)?;
    Ok(o)
}

fn service_monitors(client: &kube::Client, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor");
    Api::namespaced_with(client.clone(), namespace, &ApiResource::from_gvk_with_plural(&gvk, "servicemonitors"))
}

/// Monitor `i`, in its namespace: one endpoint with an interval, a path, a metric relabeling and `targetLabels`,
/// selecting the Service (and so the Endpoints) named `app-<i>`, like the corpus in `fixtures/servicemonitors/`.
fn service_monitor(i: usize) -> serde_json::Result<DynamicObject> {
    serde_json::from_value(json!({
        "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
        "metadata": {"name": format!("app-{i:04}"), "labels": {"team": "web", "bench": "operator-rss-monitors"}},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": format!("app-{i:04}")}},
            "targetLabels": ["team"],
            "endpoints": [{
                "port": "metrics", "interval": "30s", "path": "/metrics",
                "metricRelabelings": [{"sourceLabels": ["__name__"], "regex": "go_gc_.*", "action": "drop"}],
            }],
        },
    }))
}

/// Endpoints `i` of `namespaces` namespaces: named after Service `app-<i / namespaces>`, one address, one port.
fn endpoints(i: usize, namespaces: usize) -> Result<Endpoints> {
    let service = i / namespaces;
    let ip = std::net::Ipv4Addr::from(0x0a00_0000 | (u32::try_from(i)? + 1)); // 10.0.0.1 on
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("app-{service:04}"),
            "labels": {"app.kubernetes.io/name": format!("app-{service:04}"), "bench": "operator-rss-monitors"},
        },
        "subsets": [{
            "addresses": [{"ip": ip.to_string()}],
            "ports": [{"name": "metrics", "port": 8080, "protocol": "TCP"}],
        }],
    }))
    .map_err(Into::into)
}

fn cluster() -> serde_json::Result<PrometheusCluster> {
    serde_json::from_value(json!({
        "apiVersion": "observability.merlionos.org/v1", "kind": "PrometheusCluster",
        "metadata": {"name": CLUSTER, "labels": {"bench": "operator-rss-monitors"}},
        "spec": {
            "replicas": 1, "image": "prom/prometheus:v3.5.0", "storage": {"size": "1Gi"},
            "serviceMonitorSelector": {}, "serviceMonitorNamespaceSelector": {},
        },
    }))
}

/// Creates `n` objects, object `i` in `namespaces[i % len]`, `CONCURRENCY` at a time; returns the time taken.
async fn create_many<F, Fut>(namespaces: &[String], n: usize, create: F) -> Result<Duration>
where
    F: Fn(usize, String) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| create(i, namespaces[i % namespaces.len()].clone()))
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(started.elapsed())
}

/// Resident set size of `pid` now and its peak since the start, in KiB.
fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    tsdb_operator_benches::rss_kib(pid).context("the operator's /proc status (did it exit?)")
}

/// One phase's memory, in KiB: `VmRSS` sampled once a second (median, min, max, and how many of the samples were
/// more than 5 MiB above the min) and `VmHWM` after the samples.
struct Memory {
    rss: u64,
    min: u64,
    max: u64,
    high: usize,
    samples: usize,
    hwm: u64,
}

async fn steady(op: &mut Supervised, window: Duration) -> Result<Memory> {
    let mut samples = Vec::new();
    for _ in 0..window.as_secs().max(1) {
        op.check_running()?;
        samples.push(rss_kib(op.pid())?.0);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    samples.sort_unstable();
    let (min, max) = (samples[0], samples[samples.len() - 1]);
    let high = samples.iter().filter(|&&s| s > min + 5 * 1024).count();
    Ok(Memory { rss: samples[samples.len() / 2], min, max, high, samples: samples.len(), hwm: rss_kib(op.pid())?.1 })
}

/// The cluster has a status for its current generation.
async fn converged(client: &kube::Client, namespace: &str) -> Result<bool> {
    let pc = Api::<PrometheusCluster>::namespaced(client.clone(), namespace).get_opt(CLUSTER).await?;
    Ok(pc.is_some_and(|pc| {
        let status = pc.status.as_ref();
        status.and_then(|s| s.phase).is_some() && status.and_then(|s| s.observed_generation) == pc.metadata.generation
    }))
}

/// What the cluster's ConfigMap holds: its size as stored (base64 for binaryData) and the number of jobs in the
/// monitors' file (0 without the file); `None` before the ConfigMap exists.
async fn rendered(client: &kube::Client, namespace: &str) -> Result<Option<(usize, usize)>> {
    let Some(cm) =
        Api::<ConfigMap>::namespaced(client.clone(), namespace).get_opt(&format!("{CLUSTER}-config")).await?
    else {
        return Ok(None);
    };
    let data = cm.data.unwrap_or_default();
    let binary = cm.binary_data.unwrap_or_default();
    let stored = data.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        + binary.iter().map(|(k, v)| k.len() + v.0.len().div_ceil(3) * 4).sum::<usize>();
    let text = if let Some(gz) = binary.get(MONITOR_SCRAPE_GZ_KEY) {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(gz.0.as_slice()), &mut text)?;
        Some(text)
    } else {
        data.get(MONITOR_SCRAPE_KEY).cloned()
    };
    let jobs = match text {
        Some(text) => {
            let file: Value = serde_yaml::from_str(&text)?;
            file["scrape_configs"].as_array().map_or(0, Vec::len)
        }
        None => 0,
    };
    Ok(Some((stored, jobs)))
}

/// Waits (at most `limit`) until the cluster is converged and its ConfigMap holds `jobs` monitor jobs; returns
/// the time and the ConfigMap's stored size.
async fn wait_rendered(
    client: &kube::Client,
    op: &mut Supervised,
    namespace: &str,
    jobs: usize,
    limit: Duration,
) -> Result<(Duration, usize)> {
    let started = Instant::now();
    let mut last = None;
    loop {
        op.check_running()?;
        if converged(client, namespace).await? {
            last = rendered(client, namespace).await?;
            if let Some((stored, found)) = last
                && found == jobs
            {
                return Ok((started.elapsed(), stored));
            }
        }
        if started.elapsed() > limit {
            bail!(
                "after {limit:?} the cluster's ConfigMap holds {} of {jobs} monitor jobs; condition: {}",
                last.map_or_else(|| "no ConfigMap, so none".to_owned(), |(_, n)| n.to_string()),
                monitors_condition(client, namespace).await.unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The cluster's `MonitorsAccepted` condition as `status: message`.
async fn monitors_condition(client: &kube::Client, namespace: &str) -> Result<String> {
    let pc = Api::<PrometheusCluster>::namespaced(client.clone(), namespace).get(CLUSTER).await?;
    let status = serde_json::to_value(&pc.status)?;
    let condition = status["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "MonitorsAccepted");
    Ok(condition.map_or_else(
        || "(none)".to_owned(),
        |c| format!("{}: {}", c["status"].as_str().unwrap_or_default(), c["message"].as_str().unwrap_or_default()),
    ))
}

/// Waits (at most a minute) until the API server serves the servicemonitors resource.
async fn wait_served(client: &kube::Client, namespace: &str) -> Result<()> {
    let api = service_monitors(client, namespace);
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        match api.list_metadata(&ListParams::default().limit(1)).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => bail!("servicemonitors not served within a minute: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

#[allow(clippy::cast_precision_loss)] // KiB counts of a process are far below 2^52
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[allow(clippy::cast_precision_loss)] // the same
fn ratio(a: u64, b: u64) -> f64 {
    a as f64 / b.max(1) as f64
}

/// `after - before` in KiB, signed.
fn delta(after: u64, before: u64) -> i128 {
    i128::from(after) - i128::from(before)
}

#[allow(clippy::cast_precision_loss)] // the same
fn signed_mib(kib: i128) -> f64 {
    kib as f64 / 1024.0
}

fn line(what: &str, m: &Memory, floor: &Memory) -> String {
    format!(
        "  {what}: RSS median {:.1} MiB ({:+.2} MiB, {:.3}x the floor), {:.1}-{:.1} ({} of {} s above min + 5 MiB); \
         peak (VmHWM) {:.1} MiB",
        mib(m.rss),
        signed_mib(delta(m.rss, floor.rss)),
        ratio(m.rss, floor.rss),
        mib(m.min),
        mib(m.max),
        m.high,
        m.samples,
        mib(m.hwm)
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let opts = options()?;
    let cp = ControlPlane::start()?;
    cp.install_project_crds().await?;
    cp.apply_yaml(include_str!("../../../deploy/rbac.yaml")).await?;
    cp.install_crds_yaml(include_str!("../../../fixtures/crds/monitoring.coreos.com.yaml")).await?;
    let client = cp.client();
    let workdir = Workdir::create("operator-rss-monitors")?;
    let mut namespaces = Vec::new();
    for _ in 0..opts.namespaces {
        namespaces.push(cp.namespace("rss-monitors").await);
    }
    let home = namespaces[0].clone();
    wait_served(&client, &home).await?;

    let kubeconfig = cp.kubeconfig_path_for(OPERATOR_SA_USER).context("operator user")?;
    let mut op = ProcessBuilder::new("operator", &opts.operator)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--metrics-bind-address=0")
        .arg("--health-probe-bind-address=0")
        .env("RUST_LOG", "warn")
        .spawn(&workdir)?;
    println!(
        "operator {} (pid {}) over all namespaces; {} monitors and {} Endpoints over {} namespaces; settle {} s",
        opts.operator.display(),
        op.pid(),
        opts.monitors,
        opts.endpoints,
        namespaces.len(),
        opts.settle.as_secs()
    );

    // 1. Floor: the cluster that selects every ServiceMonitor, converged with none to select.
    Api::<PrometheusCluster>::namespaced(client.clone(), &home).create(&PostParams::default(), &cluster()?).await?;
    let (took, stored) = wait_rendered(&client, &mut op, &home, 0, Duration::from_mins(5)).await?;
    println!("  floor: cluster converged {:.1} s after its create, ConfigMap {stored} bytes", took.as_secs_f64());
    tokio::time::sleep(opts.settle).await;
    let floor = steady(&mut op, opts.sample).await?;
    println!(
        "  floor (no monitors, no Endpoints): RSS median {:.1} MiB, {:.1}-{:.1}; peak (VmHWM) {:.1} MiB",
        mib(floor.rss),
        mib(floor.min),
        mib(floor.max),
        mib(floor.hwm)
    );

    // 2. The Endpoints, which the operator does not watch.
    let k = namespaces.len();
    let took = create_many(&namespaces, opts.endpoints, |i, ns| {
        let api: Api<Endpoints> = Api::namespaced(client.clone(), &ns);
        async move {
            api.create(&PostParams::default(), &endpoints(i, k)?).await?;
            Ok(())
        }
    })
    .await?;
    println!("  {} Endpoints created in {:.1} s", opts.endpoints, took.as_secs_f64());
    tokio::time::sleep(opts.settle).await;
    let with_endpoints = steady(&mut op, opts.sample).await?;
    println!("{}", line(&format!("{} Endpoints", opts.endpoints), &with_endpoints, &floor));

    // 3. The ServiceMonitors, until the cluster's ConfigMap holds one job per monitor.
    let started = Instant::now();
    let took = create_many(&namespaces, opts.monitors, |i, ns| {
        let api = service_monitors(&client, &ns);
        async move {
            api.create(&PostParams::default(), &service_monitor(i)?).await?;
            Ok(())
        }
    })
    .await?;
    println!("  {} ServiceMonitors created in {:.1} s", opts.monitors, took.as_secs_f64());
    let (_, stored) = wait_rendered(&client, &mut op, &home, opts.monitors, Duration::from_mins(20)).await?;
    println!(
        "  all {} rendered {:.1} s after the first create; ConfigMap {stored} bytes as stored; {}",
        opts.monitors,
        started.elapsed().as_secs_f64(),
        monitors_condition(&client, &home).await?
    );
    tokio::time::sleep(opts.settle).await;
    let with_monitors = steady(&mut op, opts.sample).await?;
    println!("{}", line(&format!("+ {} ServiceMonitors", opts.monitors), &with_monitors, &floor));

    // Everything still there (no controller removed the Endpoints, which have no Service).
    let label = ListParams::default().labels(LABEL);
    let endpoints_left = Api::<Endpoints>::all(client.clone()).list_metadata(&label).await?.items.len();
    let mut monitors_left = 0;
    for ns in &namespaces {
        monitors_left += service_monitors(&client, ns).list_metadata(&label).await?.items.len();
    }
    op.check_running()?;
    op.stop()?;
    println!("  at the end: {endpoints_left} Endpoints and {monitors_left} ServiceMonitors in the cluster");
    summary(opts.monitors, &floor, &with_endpoints, &with_monitors)
}

/// The differences between the phases, and per monitor.
fn summary(monitors: usize, floor: &Memory, with_endpoints: &Memory, with_monitors: &Memory) -> Result<()> {
    let n = u64::try_from(monitors.max(1))?;
    let by_monitors = delta(with_monitors.rss, with_endpoints.rss);
    let by_both = delta(with_monitors.rss, floor.rss);
    let by_both_min = delta(with_monitors.min, floor.min);
    println!(
        "  medians: floor {:.1} MiB -> with both {:.1} MiB: {:+.2} MiB ({:.3}x); the monitors alone (over the \
         Endpoints phase) {:+.2} MiB, {} bytes per monitor ({} over the floor); the Endpoints alone {:+.2} MiB",
        mib(floor.rss),
        mib(with_monitors.rss),
        signed_mib(by_both),
        ratio(with_monitors.rss, floor.rss),
        signed_mib(by_monitors),
        by_monitors * 1024 / i128::from(n),
        by_both * 1024 / i128::from(n),
        signed_mib(delta(with_endpoints.rss, floor.rss)),
    );
    println!(
        "  minimums: floor {:.1} MiB -> with both {:.1} MiB: {:+.2} MiB, {} bytes per monitor",
        mib(floor.min),
        mib(with_monitors.min),
        signed_mib(by_both_min),
        by_both_min * 1024 / i128::from(n),
    );
    println!(
        "  peak (VmHWM) {:.1} MiB at the end, {:+.2} MiB over the floor phase's peak",
        mib(with_monitors.hwm),
        signed_mib(delta(with_monitors.hwm, floor.hwm))
    );
    Ok(())
}
