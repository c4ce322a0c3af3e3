//! CR apply -> all children created: the operator vs a null operator (a minimal kube-rs client that watches the
//! CR and sends exactly the same pre-rendered server-side-apply patches in the same order, with no logic: the
//! floor). Reports medians and the ratio. Runs against the real test control plane.
//!
//! `cargo run --release -p tsdb-operator-benches --bin apply_latency -- --iterations 20`
//! (build the operator first: `cargo build --release -p tsdb-operator --bin tsdb-operator`).
//!
//! With `--audit-outage`, also the operator with its audit trail on the machine's PostgreSQL, measured the same way
//! while PostgreSQL answers and while it refuses every connection (fault table row 15: recording must never slow
//! reconciliation).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use tsdb_operator_core::build::{self, BuildSettings, PdbApi};
use tsdb_operator_core::crd::PrometheusCluster;
use tsdb_operator_core::plan::{Step, plan_children};
use tsdb_operator_testenv::controlplane::ControlPlane;
use tsdb_operator_testenv::process::{ProcessBuilder, Workdir};

fn cluster(name: &str) -> PrometheusCluster {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "observability.merlionos.org/v1", "kind": "PrometheusCluster",
        "metadata": {"name": name},
        "spec": {"replicas": 2, "storage": {"size": "1Gi"}, "remoteWrite": [{"url": "https://rw.example.com/write"}]}
    }))
    .expect("valid cluster")
}

/// Waits until ConfigMap, Service and StatefulSet of `name` exist (polled every 5 ms).
async fn wait_children(client: &kube::Client, ns: &str, name: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (cms, svcs, stss) = (
        Api::<ConfigMap>::namespaced(client.clone(), ns),
        Api::<Service>::namespaced(client.clone(), ns),
        Api::<StatefulSet>::namespaced(client.clone(), ns),
    );
    loop {
        if stss.get_opt(name).await?.is_some()
            && svcs.get_opt(name).await?.is_some()
            && cms.get_opt(&format!("{name}-config")).await?.is_some()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("children of {ns}/{name} did not appear in 30 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The null operator: on every PrometheusCluster event in `ns`, send the pre-rendered manifests.
async fn null_operator(client: kube::Client, ns: String) {
    let api: Api<PrometheusCluster> = Api::namespaced(client.clone(), &ns);
    let settings = BuildSettings { pdb_api: PdbApi::V1beta1, ..BuildSettings::default() };
    let mut stream = watcher(api, watcher::Config::default()).applied_objects().boxed();
    while let Some(Ok(pc)) = stream.next().await {
        let Ok(valid) = tsdb_operator_core::validate::cluster(&pc) else { continue };
        let Ok(desired) = build::build(&valid, &settings).and_then(|d| d.manifests(&settings)) else { continue };
        for step in plan_children(&desired, &std::collections::BTreeMap::default()).steps {
            if let Step::Apply { key, manifest, .. } = &step {
                let (group, version) = key.api_version.split_once('/').unwrap_or(("", key.api_version.as_str()));
                let plural = format!("{}s", key.kind.to_ascii_lowercase());
                let gvk = GroupVersionKind::gvk(group, version, &key.kind);
                let dyn_api: Api<DynamicObject> =
                    Api::namespaced_with(client.clone(), &ns, &ApiResource::from_gvk_with_plural(&gvk, &plural));
                let pp = PatchParams::apply("null-operator").force();
                let _ = dyn_api.patch(&key.name, &pp, &Patch::Apply(manifest)).await;
            }
        }
    }
}

/// Creates `iterations` clusters one after another and times each from the create request until its children
/// exist. With a `settle` pause before each create, every apply meets an idle operator (the latency a user sees);
/// without it, a create arrives while the operator still finishes the previous cluster (its finalizer, status,
/// Kubernetes Events and the reconcile its own writes trigger), which measures back-to-back throughput instead.
async fn measure(
    client: &kube::Client,
    ns: &str,
    prefix: &str,
    iterations: usize,
    settle: Duration,
) -> Result<Vec<Duration>> {
    let api: Api<PrometheusCluster> = Api::namespaced(client.clone(), ns);
    let mut out = Vec::new();
    for i in 0..iterations {
        tokio::time::sleep(settle).await;
        let name = format!("{prefix}-{i}");
        let t = Instant::now();
        api.create(&PostParams::default(), &cluster(&name)).await?;
        wait_children(client, ns, &name).await?;
        out.push(t.elapsed());
    }
    Ok(out)
}

/// A pause long enough for the operator to finish the previous cluster (its tail work takes about 50 ms).
const SETTLE: Duration = Duration::from_millis(500);

fn report(what: &str, null: Vec<Duration>, ours: Vec<Duration>) {
    let (mn, mo) = (quantile(null.clone(), 0.5), quantile(ours.clone(), 0.5));
    println!("  {what}:");
    println!("    null operator: median {:.1} ms, p90 {:.1} ms", ms(mn), ms(quantile(null, 0.9)));
    println!("    tsdb-operator: median {:.1} ms, p90 {:.1} ms", ms(mo), ms(quantile(ours, 0.9)));
    println!("    ratio (median): {:.2}x", mo.as_secs_f64() / mn.as_secs_f64());
}

fn quantile(mut v: Vec<Duration>, q: f64) -> Duration {
    v.sort();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let mut iterations = 20usize;
    let mut operator = PathBuf::from("target/release/tsdb-operator");
    let mut audit_outage = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--iterations" => iterations = args.next().context("--iterations N")?.parse()?,
            "--operator" => operator = args.next().context("--operator PATH")?.into(),
            "--audit-outage" => audit_outage = true,
            _ => {}
        }
    }
    let operator = tsdb_operator_benches::operator_binary(&operator)?;
    let cp = ControlPlane::start()?;
    cp.install_project_crds().await?;
    let client = cp.client();
    let workdir = Workdir::create("apply-latency")?;

    let null_ns = cp.namespace("null").await;
    let task = tokio::spawn(null_operator(client.clone(), null_ns.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let null_idle = measure(&client, &null_ns, "n", iterations, SETTLE).await?;
    let null_b2b = measure(&client, &null_ns, "nb", iterations, Duration::ZERO).await?;
    task.abort();

    let op_ns = cp.namespace("op").await;
    let mut op = ProcessBuilder::new("tsdb-operator", &operator)
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .arg("--metrics-bind-address=0")
        .arg("--health-probe-bind-address=0")
        .arg(format!("--watch-namespace={op_ns}"))
        .spawn(&workdir)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ours_idle = measure(&client, &op_ns, "o", iterations, SETTLE).await?;
    let ours_b2b = measure(&client, &op_ns, "ob", iterations, Duration::ZERO).await?;
    op.stop()?;

    println!("CR apply -> ConfigMap, Service and StatefulSet exist ({iterations} iterations, {})", operator.display());
    report(
        &format!("one at a time ({} ms pause before each create)", SETTLE.as_millis()),
        null_idle.clone(),
        ours_idle,
    );
    report("back to back (each create right after the previous children appeared)", null_b2b, ours_b2b);
    if audit_outage {
        let (up, down) = with_audit_outage(&cp, &operator, &workdir, iterations).await?;
        println!("  with the audit trail on PostgreSQL, one at a time:");
        report("PostgreSQL answering", null_idle.clone(), up.clone());
        report("PostgreSQL refusing every connection", null_idle, down.clone());
        let (mu, md) = (quantile(up, 0.5), quantile(down, 0.5));
        println!("    outage / answering (median): {:.2}x", md.as_secs_f64() / mu.as_secs_f64());
    }
    Ok(())
}

/// The operator with `--audit-dsn` on a fresh database of the machine's PostgreSQL: latencies while the database
/// answers, then while it refuses every connection (restored afterwards).
async fn with_audit_outage(
    cp: &ControlPlane,
    operator: &std::path::Path,
    workdir: &Workdir,
    iterations: usize,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let pg = tsdb_operator_testenv::postgres::Postgres::local()?;
    let db = pg.create_database("apply_latency_audit")?;
    let ns = cp.namespace("audited").await;
    let mut op = ProcessBuilder::new("tsdb-operator-audited", operator)
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .arg("--metrics-bind-address=0")
        .arg("--health-probe-bind-address=0")
        .arg(format!("--watch-namespace={ns}"))
        .arg(format!("--audit-dsn={}", pg.dsn(&db)))
        .arg(format!("--audit-spool-dir={}", workdir.subdir("audit-spool")?.display()))
        .spawn(workdir)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let client = cp.client();
    let up = measure(&client, &ns, "au", iterations, SETTLE).await?;
    pg.psql("postgres", &format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS false"))?;
    pg.psql("postgres", &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"))?;
    let down = measure(&client, &ns, "ad", iterations, SETTLE).await;
    pg.psql("postgres", &format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS true"))?;
    op.stop()?;
    pg.drop_database(&db)?;
    Ok((up, down?))
}
