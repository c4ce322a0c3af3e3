//! The operator's memory against unrelated cluster content (fault table, row 23): with clusters converged, 5,000
//! Secrets of 100 KiB and 10,000 ConfigMaps that have nothing to do with the operator are created across 10
//! namespaces; the operator's resident set size before and after is the measure (target: it changes by less than
//! 5 MiB; the harness fails otherwise). The floor is the operator's own steady RSS measured in the same run,
//! before the flood.
//!
//! `cargo build --release --bins && cargo run --release -p tsdb-operator-benches --bin unrelated`
//! Options: `--secrets N` (5000), `--secret-kib K` (100), `--configmaps N` (10000), `--clusters N` (20),
//! `--operator PATH` (target/release/tsdb-operator, else target/debug/tsdb-operator).
//!
//! The row's second criterion, no LIST of all Secrets in the API server's audit log, is checked at the end (the
//! harness fails if the operator listed or watched Secrets, or ConfigMaps without a label selector).
//!
//! The operator runs as the ServiceAccount of deploy/rbac.yaml over all namespaces. That RBAC has no `list` or
//! `watch` on Secrets, so a LIST of all Secrets would be refused; ConfigMaps are watched for their metadata only and
//! only with the operator's `managed-by` label, so unrelated ones never reach it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{ListParams, PostParams};
use tsdb_operator_core::crd::PrometheusCluster;
use tsdb_operator_testenv::controlplane::{ControlPlane, OPERATOR_SA_USER};
use tsdb_operator_testenv::process::{ProcessBuilder, Workdir};

struct Options {
    secrets: usize,
    secret_kib: usize,
    configmaps: usize,
    clusters: usize,
    operator: PathBuf,
}

fn options() -> Result<Options> {
    let mut o = Options {
        secrets: 5000,
        secret_kib: 100,
        configmaps: 10_000,
        clusters: 20,
        operator: PathBuf::from("target/release/tsdb-operator"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--secrets" => o.secrets = value()?.parse()?,
            "--secret-kib" => o.secret_kib = value()?.parse()?,
            "--configmaps" => o.configmaps = value()?.parse()?,
            "--clusters" => o.clusters = value()?.parse()?,
            "--operator" => o.operator = value()?.into(),
            other => bail!("unknown option {other}"),
        }
    }
    o.operator = tsdb_operator_benches::operator_binary(&o.operator)?;
    Ok(o)
}

/// Resident set size of `pid` in KiB and its peak.
fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    tsdb_operator_benches::rss_kib(pid).context("the operator's /proc status")
}

/// The mean RSS of `pid` over 10 samples, 500 ms apart, in KiB.
async fn steady_rss(pid: u32) -> Result<u64> {
    let mut sum = 0;
    for _ in 0..10 {
        sum += rss_kib(pid)?.0;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(sum / 10)
}

/// How many benchmark clusters have a status for their current generation.
async fn converged(client: &kube::Client) -> Result<usize> {
    let list =
        Api::<PrometheusCluster>::all(client.clone()).list(&ListParams::default().labels("bench=unrelated")).await?;
    Ok(list
        .items
        .iter()
        .filter(|pc| {
            let s = pc.status.as_ref();
            s.and_then(|s| s.phase).is_some() && s.and_then(|s| s.observed_generation) == pc.metadata.generation
        })
        .count())
}

/// Creates `n` objects made by `make`, spread over `namespaces`, 16 at a time.
async fn create_many<K>(
    client: &kube::Client,
    namespaces: &[String],
    n: usize,
    make: impl Fn(usize) -> serde_json::Result<K>,
) -> Result<()>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
{
    futures::stream::iter(0..n)
        .map(|i| {
            let api: Api<K> = Api::namespaced(client.clone(), &namespaces[i % namespaces.len()]);
            let object = make(i);
            async move { api.create(&PostParams::default(), &object?).await.map_err(anyhow::Error::from) }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let opts = options()?;
    let cp = ControlPlane::start()?;
    cp.install_project_crds().await?;
    cp.apply_yaml(include_str!("../../../deploy/rbac.yaml")).await?;
    let client = cp.client();
    let workdir = Workdir::create("unrelated")?;
    let mut namespaces = Vec::new();
    for _ in 0..10 {
        namespaces.push(cp.namespace("unrelated").await);
    }
    let kubeconfig = cp.kubeconfig_path_for(OPERATOR_SA_USER).context("operator user")?;
    let mut op = ProcessBuilder::new("operator", &opts.operator)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--metrics-bind-address=0")
        .arg("--health-probe-bind-address=0")
        .env("RUST_LOG", "warn")
        .spawn(&workdir)?;
    let pid = op.pid();

    // Clusters to look after, converged (no kubelet: pods stay Pending).
    for i in 0..opts.clusters {
        let pc: PrometheusCluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "observability.merlionos.org/v1", "kind": "PrometheusCluster",
            "metadata": {"name": format!("c{i:03}"), "labels": {"bench": "unrelated"}},
            "spec": {"replicas": 2, "storage": {"size": "1Gi"}},
        }))?;
        Api::<PrometheusCluster>::namespaced(client.clone(), &namespaces[i % namespaces.len()])
            .create(&PostParams::default(), &pc)
            .await?;
    }
    let deadline = Instant::now() + Duration::from_mins(5);
    while converged(&client).await? < opts.clusters {
        if Instant::now() > deadline {
            bail!("the clusters did not converge within 5 minutes");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(20)).await;
    let before = steady_rss(pid).await?;
    let (_, peak_before) = rss_kib(pid)?;
    println!(
        "operator ({}) over {} clusters in {} namespaces",
        opts.operator.display(),
        opts.clusters,
        namespaces.len()
    );
    println!("  steady RSS before: {:.1} MiB (peak so far {:.1} MiB)", kib_to_mib(before), kib_to_mib(peak_before));

    // The flood of unrelated objects.
    let started = Instant::now();
    let payload = "x".repeat(opts.secret_kib * 1024);
    create_many(&client, &namespaces, opts.secrets, |i| {
        serde_json::from_value::<Secret>(serde_json::json!({
            "metadata": {"name": format!("unrelated-{i:05}")},
            "stringData": {"blob": payload},
        }))
    })
    .await?;
    let secrets_in = started.elapsed();
    let started = Instant::now();
    create_many(&client, &namespaces, opts.configmaps, |i| {
        serde_json::from_value::<ConfigMap>(serde_json::json!({
            "metadata": {"name": format!("unrelated-{i:05}"), "labels": {"app": "unrelated"}},
            "data": {"key": format!("value {i}")},
        }))
    })
    .await?;
    let configmaps_in = started.elapsed();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let after = steady_rss(pid).await?;
    let (_, peak_after) = rss_kib(pid)?;
    op.check_running()?;
    op.stop()?;

    println!(
        "  created {} Secrets of {} KiB in {:.1} s and {} ConfigMaps in {:.1} s",
        opts.secrets,
        opts.secret_kib,
        secrets_in.as_secs_f64(),
        opts.configmaps,
        configmaps_in.as_secs_f64()
    );
    println!("  steady RSS after: {:.1} MiB (peak {:.1} MiB)", kib_to_mib(after), kib_to_mib(peak_after));
    let delta = i128::from(after) - i128::from(before);
    #[allow(clippy::cast_precision_loss)] // KiB counts of a process are far below 2^52
    let delta_mib = delta as f64 / 1024.0;
    #[allow(clippy::cast_precision_loss)]
    let ratio = after as f64 / before.max(1) as f64;
    println!("  change: {delta_mib:+.2} MiB ({ratio:.3}x the floor, the RSS before the flood); target: < 5 MiB");
    audit_check(&cp)?;
    if delta_mib >= 5.0 {
        bail!("the operator's steady RSS grew by {delta_mib:.2} MiB with unrelated objects (target: < 5 MiB)");
    }
    Ok(())
}

/// The row's second criterion: no LIST of all Secrets in the API server's audit log (nor any LIST or WATCH of
/// Secrets, nor of ConfigMaps without a label selector), refused or not.
fn audit_check(cp: &ControlPlane) -> Result<()> {
    let requests = cp.audit_requests_by(OPERATOR_SA_USER)?;
    let unscoped = tsdb_operator_testenv::audit::unscoped_reads(&requests);
    let secret_gets = requests
        .iter()
        .filter(|e| e.verb == "get" && e.object_ref.as_ref().is_some_and(|o| o.resource == "secrets"))
        .count();
    println!(
        "  audit: {} requests by the operator, {secret_gets} GETs of named Secrets, {} unscoped LIST/WATCH of Secrets or ConfigMaps",
        requests.len(),
        unscoped.len()
    );
    for e in &unscoped {
        println!("    {e} {}", e.request_uri);
    }
    if !unscoped.is_empty() {
        bail!("the operator listed or watched Secrets or unselected ConfigMaps");
    }
    Ok(())
}

#[allow(clippy::cast_precision_loss)] // KiB counts of a process are far below 2^52
fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
