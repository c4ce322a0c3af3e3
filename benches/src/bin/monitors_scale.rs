//! A cluster that selects many ServiceMonitors: the core's choice and render time (`choose_for_cluster` +
//! `build_with_monitors`), the size of the ConfigMap it writes (against the 1 MiB a ConfigMap may hold), and the
//! time a real Prometheus 3.5 takes to reload that configuration, each against the floor of the same cluster with no
//! monitor, measured in the same run.
//!
//! `cargo run --release -p tsdb-operator-benches --bin monitors_scale -- --monitors 1000 --iterations 20`
//!
//! Each monitor has one endpoint with an interval, a metric relabeling and `targetLabels`, like the corpus in
//! `fixtures/servicemonitors/`. For the reload, each job's Kubernetes discovery points at a closed loopback port
//! (Prometheus outside a pod has no in-cluster configuration); discovery failing does not slow the reload itself.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tsdb_operator_benches::{arg, percentile};
use tsdb_operator_core::build::config::{CONFIG_KEY, MONITOR_SCRAPE_GZ_KEY, MONITOR_SCRAPE_KEY};
use tsdb_operator_core::build::{self, BuildSettings};
use tsdb_operator_core::crd::PrometheusCluster;
use tsdb_operator_core::monitors::{ObservedMonitors, ServiceMonitor, choose_for_cluster};
use tsdb_operator_testenv::paths::{self, PrometheusMajor};
use tsdb_operator_testenv::process::{ProcessBuilder, Workdir, free_port};

fn monitors(n: usize) -> Result<Vec<ServiceMonitor>> {
    (0..n)
        .map(|i| {
            Ok(serde_json::from_value(json!({
                "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
                "metadata": {"name": format!("app-{i}"), "namespace": "monitoring", "labels": {"team": "web"}},
                "spec": {
                    "selector": {"matchLabels": {"app.kubernetes.io/name": format!("app-{i}")}},
                    "targetLabels": ["team"],
                    "endpoints": [{
                        "port": "metrics", "interval": "30s", "path": "/metrics",
                        "metricRelabelings": [{"sourceLabels": ["__name__"], "regex": "go_gc_.*", "action": "drop"}],
                    }],
                },
            }))?)
        })
        .collect()
}

fn cluster() -> Result<PrometheusCluster> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "observability.merlionos.org/v1", "kind": "PrometheusCluster",
        "metadata": {"name": "web", "namespace": "monitoring", "uid": "u"},
        "spec": {"image": "prom/prometheus:v3.5.0", "serviceMonitorSelector": {"matchLabels": {"team": "web"}}},
    }))?)
}

/// What one render gives: the files Prometheus reads (the monitors' file decompressed), the bytes the ConfigMap
/// stores, the median choose + render time, and the jobs kept (the rest is refused when even gzipped it would not
/// fit).
struct Rendered {
    files: BTreeMap<String, String>,
    stored: usize,
    time: Duration,
    kept: usize,
}

fn render(n: usize, iterations: usize) -> Result<Rendered> {
    let all = monitors(n)?;
    let pc = cluster()?;
    let namespaces = BTreeMap::from([("monitoring".to_owned(), BTreeMap::new())]);
    let observed = ObservedMonitors {
        service_monitors: Some(&all),
        pod_monitors: Some(&[]),
        prometheus_rules: None,
        namespaces: &namespaces,
        secrets: None,
    };
    let settings = BuildSettings::default();
    let mut times = Vec::with_capacity(iterations);
    let mut config_map = k8s_openapi::api::core::v1::ConfigMap::default();
    let mut kept = 0;
    for _ in 0..iterations.max(1) {
        let started = Instant::now();
        let chosen = choose_for_cluster(&pc, &observed);
        let valid = tsdb_operator_core::validate::cluster(&pc).map_err(|e| anyhow::anyhow!("{e}"))?;
        let desired = build::build_with_monitors(&valid, &settings, &chosen)?;
        times.push(started.elapsed());
        if chosen.jobs.len() + chosen.refused.len() != n {
            bail!("{} jobs and {} refused for {n} monitors", chosen.jobs.len(), chosen.refused.len());
        }
        kept = chosen.jobs.len();
        config_map = desired.config_map;
    }
    times.sort();
    let mut files = config_map.data.unwrap_or_default();
    let binary = config_map.binary_data.unwrap_or_default();
    let stored = files.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        + binary.iter().map(|(k, v)| k.len() + v.0.len() * 4 / 3).sum::<usize>();
    if let Some(gz) = binary.get(MONITOR_SCRAPE_GZ_KEY) {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(gz.0.as_slice()), &mut text)?;
        files.insert(MONITOR_SCRAPE_KEY.to_owned(), text);
    }
    Ok(Rendered { files, stored, time: percentile(&times, 0.5), kept })
}

/// Writes the files for a Prometheus outside a pod (discovery pointed at a closed port) and returns the config path.
fn write_files(dir: &std::path::Path, data: &BTreeMap<String, String>, closed: u16) -> Result<std::path::PathBuf> {
    let monitors: Value = serde_yaml::from_str(data.get(MONITOR_SCRAPE_KEY).context("the monitors file")?)?;
    let mut jobs = monitors["scrape_configs"].as_array().cloned().unwrap_or_default();
    for job in &mut jobs {
        for sd in job["kubernetes_sd_configs"].as_array_mut().into_iter().flatten() {
            sd["api_server"] = json!(format!("http://127.0.0.1:{closed}"));
        }
    }
    std::fs::write(dir.join(MONITOR_SCRAPE_KEY), serde_yaml::to_string(&json!({"scrape_configs": jobs}))?)?;
    let main = data.get(CONFIG_KEY).context("prometheus.yml")?;
    let main = main
        .replace("/etc/prometheus/config/", &format!("{}/", dir.display()))
        .replace("/etc/prometheus/generated/", &format!("{}/", dir.display()));
    let path = dir.join(CONFIG_KEY);
    std::fs::write(&path, main)?;
    Ok(path)
}

/// Median time of `POST /-/reload` on the Prometheus at `port`, `times` times.
async fn reload_time(http: &reqwest::Client, port: u16, times: usize) -> Result<Duration> {
    let mut all = Vec::with_capacity(times);
    for _ in 0..times.max(1) {
        let started = Instant::now();
        let answer = http.post(format!("http://127.0.0.1:{port}/-/reload")).send().await?;
        all.push(started.elapsed());
        if !answer.status().is_success() {
            bail!("reload answered {}: {}", answer.status(), answer.text().await?);
        }
    }
    all.sort();
    Ok(percentile(&all, 0.5))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let n = usize::try_from(arg("--monitors", 1000))?;
    let iterations = usize::try_from(arg("--iterations", 20))?;
    let floor = render(0, iterations)?;
    let many = render(n, iterations)?;
    let (floor_data, floor_render) = (&floor.files, floor.time);
    let (data, render_time, kept) = (&many.files, many.time, many.kept);
    let text = data.get(MONITOR_SCRAPE_KEY).map_or(0, String::len);
    println!("render (choose + build), median of {iterations}:");
    println!("  0 monitors: {floor_render:?}; {n} monitors: {render_time:?} ({kept} jobs kept, {} refused)", n - kept);
    let (floor_size, size) = (floor.stored, many.stored);
    // Sizes are far below 2^52: exact in f64.
    #[allow(clippy::cast_precision_loss)]
    let share = size as f64 * 100.0 / 1_048_576.0;
    println!(
        "ConfigMap as stored (base64 for binaryData): 0 monitors {floor_size} bytes; {n} monitors {size} bytes \
         ({share:.1}% of 1 MiB; the monitors' file is {text} bytes as text)"
    );

    let workdir = Workdir::create("monitors-scale")?;
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_mins(2)).build()?;
    let closed = free_port(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))?;
    let mut results = Vec::new();
    for (label, files) in [("0 monitors", floor_data), ("monitors", data)] {
        let dir = workdir.subdir(&label.replace(' ', "-"))?;
        let config = write_files(&dir, files, closed)?;
        let port = free_port(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))?;
        let mut prometheus = ProcessBuilder::new(
            format!("prometheus-{}", label.replace(' ', "-")),
            paths::prometheus(PrometheusMajor::V3)?,
        )
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--web.enable-lifecycle")
        .spawn(&workdir)?;
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            let ready = http.get(format!("http://127.0.0.1:{port}/-/ready")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if Instant::now() > deadline {
                bail!("Prometheus with {label} not ready within a minute");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        results.push(reload_time(&http, port, iterations).await?);
        prometheus.stop()?;
    }
    let (floor, loaded) = (results[0], results[1]);
    println!("reload (POST /-/reload on Prometheus 3.5), median of {iterations}:");
    println!("  0 monitors: {floor:?}; {n} monitors: {loaded:?} ({:.1}x)", loaded.as_secs_f64() / floor.as_secs_f64());
    Ok(())
}
