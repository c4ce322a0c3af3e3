//! What the admission webhook adds to `kubectl apply`: the latency of a create (server-side dry run, so nothing
//! accumulates) of a valid PrometheusCluster in a namespace the webhook covers vs one it does not, interleaved, on
//! the real test control plane with the operator serving the webhook over HTTPS. Reports p50 and p99 of each and
//! the difference.
//!
//! `cargo run --release -p tsdb-operator-benches --bin admission_latency -- --requests 500`
//! (build the operator first: `cargo build --release -p tsdb-operator --bin tsdb-operator`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::admissionregistration::v1::{ValidatingWebhookConfiguration, WebhookClientConfig};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use tsdb_operator_benches::{arg, percentile};
use tsdb_operator_core::crd::PrometheusCluster;
use tsdb_operator_testenv::controlplane::ControlPlane;
use tsdb_operator_testenv::process::{ProcessBuilder, Workdir, free_port};

fn cluster(ns: &str, i: usize) -> Result<PrometheusCluster> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "observability.merlionos.org/v1", "kind": "PrometheusCluster",
        "metadata": {"name": format!("c{i}"), "namespace": ns},
        "spec": {"replicas": 2, "storage": {"size": "10Gi"}, "remoteWrite": [{"url": "https://rw.example.com/write"}],
                 "backup": {"enabled": true, "bucket": "b", "schedule": "0 */6 * * *"}}
    }))?)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let requests = usize::try_from(arg("--requests", 500))?;
    let operator = PathBuf::from("target/release/tsdb-operator");
    let operator = std::fs::canonicalize(&operator).context("build target/release/tsdb-operator first")?;
    let cp = ControlPlane::start()?;
    cp.install_project_crds().await?;
    let client = cp.client();
    let (with, without) = (cp.namespace("with-webhook").await, cp.namespace("without-webhook").await);
    let label = serde_json::json!({"metadata": {"labels": {"tsdb-webhook-bench": "on"}}});
    Api::<Namespace>::all(client.clone()).patch(&with, &PatchParams::default(), &Patch::Merge(&label)).await?;
    let port = free_port(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))?;
    let mut config = tsdb_operator_core::admission::webhook_configuration("tsdb-operator", |path| {
        WebhookClientConfig { url: Some(format!("https://127.0.0.1:{port}{path}")), ..WebhookClientConfig::default() }
    });
    for hook in config.webhooks.iter_mut().flatten() {
        let labels = std::collections::BTreeMap::from([("tsdb-webhook-bench".to_owned(), "on".to_owned())]);
        hook.namespace_selector = Some(LabelSelector { match_labels: Some(labels), ..LabelSelector::default() });
    }
    Api::<ValidatingWebhookConfiguration>::all(client.clone()).create(&PostParams::default(), &config).await?;
    let workdir = Workdir::create("admission-bench")?;
    let mut op = ProcessBuilder::new("tsdb-operator", &operator)
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .arg("--enable-webhook")
        .arg(format!("--webhook-bind-address=127.0.0.1:{port}"))
        .arg("--webhook-host=127.0.0.1")
        .arg(format!("--leader-election-namespace={with}"))
        .arg(format!("--watch-namespace={with}"))
        .arg("--metrics-bind-address=0")
        .arg("--health-probe-bind-address=0")
        .arg("--enable-backup=false")
        .spawn(&workdir)?;

    let dry = PostParams { dry_run: true, ..PostParams::default() };
    // Wait until the webhook is called (a bad spec refused), then warm up both paths.
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let mut bad = cluster(&with, 0)?;
        bad.spec.additional_scrape_configs = serde_json::from_value(
            serde_json::json!({"inline": "- job_name: a\n", "secretRef": {"name": "s", "key": "k"}}),
        )?;
        if let Err(kube::Error::Api(s)) =
            Api::<PrometheusCluster>::namespaced(client.clone(), &with).create(&dry, &bad).await
            && s.message.contains("denied the request")
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("the webhook did not answer: {}", op.log_tail(20));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (mut on, mut off) = (Vec::with_capacity(requests), Vec::with_capacity(requests));
    for i in 0..requests + 50 {
        for (ns, out) in [(&with, &mut on), (&without, &mut off)] {
            let api = Api::<PrometheusCluster>::namespaced(client.clone(), ns);
            let c = cluster(ns, i)?;
            let started = Instant::now();
            api.create(&dry, &c).await?;
            if i >= 50 {
                out.push(started.elapsed());
            }
        }
    }
    on.sort();
    off.sort();
    let (on50, on99, off50, off99) =
        (percentile(&on, 0.5), percentile(&on, 0.99), percentile(&off, 0.5), percentile(&off, 0.99));
    println!("| | p50 | p99 |\n|---|---|---|");
    println!("| create, webhook | {on50:?} | {on99:?} |");
    println!("| create, no webhook | {off50:?} | {off99:?} |");
    println!("| added by the webhook | {:?} | {:?} |", on50.saturating_sub(off50), on99.saturating_sub(off99));
    #[allow(clippy::cast_precision_loss)] // ratios to print
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!("| ratio | {:.2} | {:.2} |", ratio(on50, off50), ratio(on99, off99));
    op.stop()?;
    Ok(())
}
