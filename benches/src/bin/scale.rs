//! The operator at scale: N PrometheusClusters (default 1,000) on the real test control plane. No kubelet runs, so
//! the pods stay Pending and the operator is what is measured: its work to bring every cluster to its first
//! converged state (children applied, status written for the current generation), its write requests (counted in
//! the API server's audit log under the operator's least-privilege identity), its idle writes, its memory (peak and
//! steady resident set size from `/proc`) and what a restart over converged clusters costs.
//!
//! `cargo build --release --bins && cargo run --release -p tsdb-operator-benches --bin scale -- --clusters 1000`
//! Options: `--clusters N`, `--namespaces K` (clusters are spread over K namespaces; 10), `--idle-seconds S` (120),
//! `--operator PATH` (target/release/tsdb-operator), `--no-delete` (skip the last phase, which waits for the
//! garbage collector).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::Api;
use kube::api::{ListParams, PostParams};
use tsdb_operator_core::crd::PrometheusCluster;
use tsdb_operator_testenv::audit::AuditEntry;
use tsdb_operator_testenv::controlplane::{ControlPlane, OPERATOR_SA_USER};
use tsdb_operator_testenv::process::{ProcessBuilder, Supervised, Workdir};

struct Options {
    clusters: usize,
    namespaces: usize,
    idle: Duration,
    operator: PathBuf,
    delete: bool,
}

fn options() -> Result<Options> {
    let mut o = Options {
        clusters: 1000,
        namespaces: 10,
        idle: Duration::from_mins(2),
        operator: PathBuf::from("target/release/tsdb-operator"),
        delete: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--clusters" => o.clusters = value()?.parse()?,
            "--namespaces" => o.namespaces = value()?.parse()?,
            "--idle-seconds" => o.idle = Duration::from_secs(value()?.parse()?),
            "--operator" => o.operator = value()?.into(),
            "--no-delete" => o.delete = false,
            other => bail!("unknown option {other}"),
        }
    }
    o.operator = tsdb_operator_benches::operator_binary(&o.operator)?;
    Ok(o)
}

/// A typical small cluster: 2 replicas, a remote_write target, the defaults for everything else.
fn cluster(name: &str) -> PrometheusCluster {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "observability.merlionos.org/v1", "kind": "PrometheusCluster",
        "metadata": {"name": name, "labels": {"bench": "scale"}},
        "spec": {"replicas": 2, "storage": {"size": "1Gi"}, "remoteWrite": [{"url": "https://rw.example.com/write"}]}
    }))
    .expect("valid cluster")
}

/// Samples the resident set size of `pid` every 250 ms into `current`/`peak` until the task is aborted.
fn sample_rss(pid: u32, current: Arc<AtomicU64>, peak: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Some((rss, hwm)) = tsdb_operator_benches::rss_kib(pid) {
                current.store(rss, Ordering::Relaxed);
                peak.fetch_max(hwm, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
}

/// How many clusters have a status for their current generation.
async fn converged(client: &kube::Client) -> Result<usize> {
    let api: Api<PrometheusCluster> = Api::all(client.clone());
    let list = api.list(&ListParams::default().labels("bench=scale")).await?;
    Ok(list
        .items
        .iter()
        .filter(|pc| {
            let status = pc.status.as_ref();
            status.and_then(|s| s.phase).is_some()
                && status.and_then(|s| s.observed_generation) == pc.metadata.generation
        })
        .count())
}

fn start_operator(opts: &Options, cp: &ControlPlane, workdir: &Workdir, name: &str) -> Result<Supervised> {
    let kubeconfig = cp.kubeconfig_path_for(OPERATOR_SA_USER).context("operator user")?;
    ProcessBuilder::new(name, &opts.operator)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--metrics-bind-address=0")
        .arg("--health-probe-bind-address=0")
        .env("RUST_LOG", "warn")
        .spawn(workdir)
}

/// Operator writes by resource (and subresource), most first.
fn by_resource(writes: &[AuditEntry]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for w in writes {
        let o = w.object_ref.as_ref();
        let resource = o.map(|o| o.resource.as_str()).unwrap_or_default();
        let sub = o.map(|o| o.subresource.as_str()).filter(|s| !s.is_empty());
        let key = sub.map_or_else(|| format!("{} {resource}", w.verb), |s| format!("{} {resource}/{s}", w.verb));
        *counts.entry(key).or_default() += 1;
    }
    let mut sorted: Vec<_> = counts.into_iter().collect();
    sorted.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    sorted.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
}

#[allow(clippy::cast_precision_loss)]
fn per(n: usize, d: f64) -> f64 {
    n as f64 / d
}

#[allow(clippy::cast_precision_loss)]
fn mib(kib: &AtomicU64) -> f64 {
    kib.load(Ordering::Relaxed) as f64 / 1024.0
}

/// Prints the writes of a phase: total, per cluster (when `clusters` is given) and by resource.
fn report_writes(what: &str, writes: &[AuditEntry], clusters: Option<usize>) {
    #[allow(clippy::cast_precision_loss)]
    let per_cluster =
        clusters.map(|n| format!(" ({:.2} per cluster)", per(writes.len(), n as f64))).unwrap_or_default();
    let detail = if writes.is_empty() { String::new() } else { format!(": {}", by_resource(writes)) };
    println!("  {what}: {} operator writes{per_cluster}{detail}", writes.len());
}

async fn wait_converged(client: &kube::Client, n: usize, since: Instant, limit: Duration) -> Result<Duration> {
    loop {
        let done = converged(client).await?;
        if done == n {
            return Ok(since.elapsed());
        }
        if since.elapsed() > limit {
            bail!("only {done} of {n} clusters converged in {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn count_children(client: &kube::Client) -> Result<(usize, usize, usize)> {
    let lp = ListParams::default().labels("app.kubernetes.io/managed-by=tsdb-operator");
    Ok((
        Api::<StatefulSet>::all(client.clone()).list_metadata(&lp).await?.items.len(),
        Api::<Service>::all(client.clone()).list_metadata(&lp).await?.items.len(),
        Api::<ConfigMap>::all(client.clone()).list_metadata(&lp).await?.items.len(),
    ))
}

/// Deletes every benchmark cluster and waits until the clusters (finalizers cleared by the operator) and then their
/// children (garbage collector) are gone; prints both times.
async fn delete_all(client: &kube::Client, namespaces: &[String]) -> Result<()> {
    let t = Instant::now();
    for ns in namespaces {
        Api::<PrometheusCluster>::namespaced(client.clone(), ns)
            .delete_collection(&kube::api::DeleteParams::background(), &ListParams::default().labels("bench=scale"))
            .await?;
    }
    let api: Api<PrometheusCluster> = Api::all(client.clone());
    let mut clusters_gone = None;
    let gone = loop {
        let left = api.list_metadata(&ListParams::default().labels("bench=scale")).await?.items.len();
        if left == 0 && clusters_gone.is_none() {
            clusters_gone = Some(t.elapsed());
        }
        let (sts, svc, cm) = count_children(client).await?;
        if left + sts + svc + cm == 0 {
            break t.elapsed();
        }
        if t.elapsed() > Duration::from_mins(30) {
            bail!("after 30 min: {left} clusters, {sts} StatefulSets, {svc} Services, {cm} ConfigMaps left");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "  delete all: every finalizer cleared and the clusters gone in {:.1} s; children collected by the \
         garbage collector (kube-controller-manager, 20 requests/s by default) in {:.1} s",
        clusters_gone.unwrap_or(gone).as_secs_f64(),
        gone.as_secs_f64()
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let opts = options()?;
    let n = opts.clusters;
    let cp = ControlPlane::start()?;
    cp.install_project_crds().await?;
    cp.apply_yaml(include_str!("../../../deploy/rbac.yaml")).await?;
    let client = cp.client();
    let workdir = Workdir::create("scale")?;
    let mut namespaces = Vec::new();
    for _ in 0..opts.namespaces.max(1) {
        namespaces.push(cp.namespace("scale").await);
    }
    let writes_since =
        |from: usize| -> Result<Vec<AuditEntry>> { Ok(cp.audit_writes_by(OPERATOR_SA_USER)?.split_off(from)) };
    let writes_so_far = || -> Result<usize> { Ok(cp.audit_writes_by(OPERATOR_SA_USER)?.len()) };

    // 1. Flood: N clusters created 8 at a time while the operator runs.
    let mut op = start_operator(&opts, &cp, &workdir, "operator")?;
    let (current, peak) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let sampler = sample_rss(op.pid(), current.clone(), peak.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "{n} PrometheusClusters in {} namespaces (2 replicas each; no kubelet: pods stay Pending)",
        namespaces.len()
    );
    println!("  operator RSS at start, no clusters: {:.1} MiB", mib(&current));
    let from = writes_so_far()?;
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let api: Api<PrometheusCluster> = Api::namespaced(client.clone(), &namespaces[i % namespaces.len()]);
            async move { api.create(&PostParams::default(), &cluster(&format!("c{i:04}"))).await }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await?;
    let created_in = started.elapsed();
    let converge = wait_converged(&client, n, started, Duration::from_mins(30)).await?;
    let (sts, svc, cm) = count_children(&client).await?;
    println!("  created by the client in {:.1} s", created_in.as_secs_f64());
    println!("  all converged {:.1} s after the first create", converge.as_secs_f64());
    println!("  children: {sts} StatefulSets, {svc} Services, {cm} ConfigMaps");
    report_writes("while converging", &writes_since(from)?, Some(n));
    println!("  operator RSS peak while converging: {:.1} MiB", mib(&peak));

    // 2. Idle.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let from = writes_so_far()?;
    tokio::time::sleep(opts.idle).await;
    let idle = writes_since(from)?;
    report_writes(&format!("idle for {} s", opts.idle.as_secs()), &idle, None);
    println!("  operator RSS steady (end of idle): {:.1} MiB, peak so far {:.1} MiB", mib(&current), mib(&peak));
    sampler.abort();
    op.stop()?;

    // 3. Restart over converged clusters: the new process reads everything and should change nothing.
    let from = writes_so_far()?;
    let op = start_operator(&opts, &cp, &workdir, "operator-restarted")?;
    let (current, peak) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let sampler = sample_rss(op.pid(), current.clone(), peak.clone());
    tokio::time::sleep(Duration::from_mins(1)).await;
    report_writes("restarted operator, first 60 s", &writes_since(from)?, None);
    println!("  restarted operator RSS: {:.1} MiB, peak {:.1} MiB", mib(&current), mib(&peak));

    // 4. A canary created after the flood.
    let canary_ns = &namespaces[0];
    let t = Instant::now();
    Api::<PrometheusCluster>::namespaced(client.clone(), canary_ns)
        .create(&PostParams::default(), &cluster("canary"))
        .await?;
    let canary = wait_converged(&client, n + 1, t, Duration::from_mins(5)).await?;
    println!("  canary created after the flood converged in {:.0} ms", canary.as_secs_f64() * 1e3);

    // 5. Delete everything: every finalizer cleared, every child collected, nothing recreated.
    if !opts.delete {
        return Ok(());
    }
    let from = writes_so_far()?;
    delete_all(&client, &namespaces).await?;
    let deletion = writes_since(from)?;
    let recreated = deletion
        .iter()
        .filter(|w| w.object_ref.as_ref().is_some_and(|o| o.resource != "prometheusclusters" && o.resource != "events"))
        .count();
    report_writes("while deleting", &deletion, Some(n + 1));
    println!("  children written after deletion started: {recreated}");
    println!("  restarted operator RSS at the end: {:.1} MiB, peak {:.1} MiB", mib(&current), mib(&peak));
    sampler.abort();
    drop(op);
    Ok(())
}
