//! Backups end to end: real Prometheus pods (process kubelet) with known series, the real agent sidecar, the
//! s3s-fs S3 server, the operator's scheduler, `tsdb-ctl` and the declarative restore init container.
//!
//! The source cluster is itself created from a seed backup (blocks made by `promtool` from known samples), so its
//! data has persistent blocks: that is what makes the incremental case measurable. Pods reach the S3 server,
//! which listens on loopback, through a TCP forwarder on the pod bridge's host address.

mod support;

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use support::*;
use tsdb_operator_adapters::backup::store::{self, Credentials, Store, Tuning};
use tsdb_operator_core::backup::manifest::{
    BlockEntry, FileEntry, Layout, MANIFEST_VERSION, Manifest, SourceCluster, is_immutable,
};
use tsdb_operator_core::backup::protocol::StoreLocation;
use tsdb_operator_core::crd::{Phase, PrometheusCluster};
use tsdb_operator_testenv::paths::{self, PrometheusMajor};
use tsdb_operator_testenv::process::{ProcessBuilder, free_port};
use tsdb_operator_testenv::s3::S3Server;

const READY: Duration = Duration::from_mins(3);
const SERIES: u64 = 2000;
const SAMPLES: u64 = 120;

/// Forwards `bind` to `target` (the pods' way to the loopback S3 server). Stops when dropped.
struct Forwarder {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn start(bind: IpAddr, target: SocketAddr) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(bind, 0)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Ok(Self { addr, task })
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// Writes OpenMetrics with `SERIES` series of `SAMPLES` samples one minute apart, the last one `end` (unix s);
/// the value of sample k of series i is `i * 1000 + k`. Returns the sum of all values.
fn known_samples(path: &Path, end: u64) -> Result<u64> {
    let mut text = String::from("# HELP backup_test Known samples.\n# TYPE backup_test gauge\n");
    let mut sum = 0;
    for i in 0..SERIES {
        for k in 0..SAMPLES {
            let ts = end - (SAMPLES - 1 - k) * 60;
            let v = i * 1000 + k;
            sum += v;
            let _ = writeln!(text, "backup_test{{series=\"{i}\"}} {v} {ts}");
        }
    }
    text.push_str("# EOF\n");
    std::fs::write(path, text)?;
    Ok(sum)
}

/// Uploads the blocks in `dir` as backup `id` of `layout`, in the backup format (a hand-made seed backup).
async fn upload_seed(store: &Store, layout: &Layout, dir: &Path, id: &str) -> Result<()> {
    let mut blocks = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ulid = entry.file_name().to_string_lossy().into_owned();
        if !entry.path().join("meta.json").is_file() {
            continue;
        }
        let mut files = Vec::new();
        let mut stack = vec![(entry.path(), String::new())];
        while let Some((d, rel)) = stack.pop() {
            for f in std::fs::read_dir(&d)? {
                let f = f?;
                let name = f.file_name().to_string_lossy().into_owned();
                let path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
                if f.path().is_dir() {
                    stack.push((f.path(), path));
                    continue;
                }
                let key = if is_immutable(&path) {
                    Layout::block_file_key(&ulid, &path)
                } else {
                    Layout::backup_file_key(id, &ulid, &path)
                };
                let (size, sha256) = store.upload_file(&f.path(), &layout.full(&key), &|_| {}).await?;
                files.push(FileEntry { path, key, size, sha256 });
            }
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        blocks.push(BlockEntry { ulid, min_time: None, max_time: None, files });
    }
    blocks.sort_by(|a, b| a.ulid.cmp(&b.ulid));
    ensure!(!blocks.is_empty(), "promtool made no blocks in {}", dir.display());
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        id: id.to_owned(),
        cluster: SourceCluster { namespace: "seed".into(), name: "seed".into(), ..SourceCluster::default() },
        start_time: chrono::Utc::now(),
        completion_time: chrono::Utc::now(),
        snapshot: String::new(),
        blocks,
        uploaded_bytes: 0,
    };
    store.put(&layout.full(&Layout::manifest_key(id)), bytes::Bytes::from(manifest.to_json())).await?;
    Ok(())
}

fn s3_store(s3: &S3Server, prefix: &str) -> Result<Store> {
    let location = StoreLocation::S3 {
        bucket: s3.bucket().to_owned(),
        region: s3.region().to_owned(),
        endpoint: s3.endpoint(),
        prefix: prefix.to_owned(),
    };
    let creds = Credentials {
        access_key_id: s3.access_key().to_owned(),
        secret_access_key: s3.secret_key().to_owned(),
        session_token: None,
    };
    Ok(store::open(&location, Some(&creds), &Tuning::default())?)
}

async fn create_credentials(ns: &str, s3: &S3Server) -> Result<()> {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "s3-creds"},
        "stringData": {"AWS_ACCESS_KEY_ID": s3.access_key(), "AWS_SECRET_ACCESS_KEY": s3.secret_key()},
    }))?;
    Api::<Secret>::namespaced(client(), ns).create(&PostParams::default(), &secret).await?;
    Ok(())
}

/// Runs a PromQL instant query at `time` on `addr` (pod IP or host:port) and returns the result vector.
async fn query(addr: &str, promql: &str, time: u64) -> Result<serde_json::Value> {
    let url = format!("http://{addr}/api/v1/query");
    let resp: serde_json::Value = reqwest::Client::new()
        .get(&url)
        .query(&[("query", promql), ("time", &time.to_string())])
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .json()
        .await?;
    ensure!(resp["status"] == "success", "{promql}: {resp}");
    Ok(resp["data"]["result"].clone())
}

/// The known series, checked by count, sample count and sum of values at `end + 1`.
async fn known_data(addr: &str, end: u64) -> Result<(u64, u64, u64)> {
    let scalar = |v: serde_json::Value| -> Result<u64> {
        let s = v[0]["value"][1].as_str().with_context(|| format!("no value in {v}"))?;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // small whole numbers
        Ok(s.parse::<f64>()? as u64)
    };
    let window = format!("{}m", SAMPLES + 10);
    Ok((
        scalar(query(addr, &format!("count(last_over_time(backup_test[{window}]))"), end + 1).await?)?,
        scalar(query(addr, &format!("sum(count_over_time(backup_test[{window}]))"), end + 1).await?)?,
        scalar(query(addr, &format!("sum(sum_over_time(backup_test[{window}]))"), end + 1).await?)?,
    ))
}

fn cluster_yaml(name: &str, s3_endpoint: &str, bucket: &str, backup: bool, restore: Option<(&str, &str)>) -> String {
    let mut spec = json!({
        "replicas": 1,
        "image": "prom/prometheus:v3.5.0",
        "retention": "30d",
        "scrapeInterval": "2s",
        "storage": {"size": "1Gi"},
    });
    if backup {
        spec["backup"] = json!({
            "enabled": true, "bucket": bucket, "prefix": "tsdb", "endpoint": s3_endpoint,
            "credentialsSecretRef": {"name": "s3-creds"}, "retention": {"keepLast": 2},
        });
    }
    if let Some((cluster, id)) = restore {
        spec["restore"] = json!({
            "backupId": id,
            "source": {"cluster": cluster, "bucket": bucket, "prefix": "tsdb", "endpoint": s3_endpoint,
                "credentialsSecretRef": {"name": "s3-creds"}},
        });
    }
    serde_yaml::to_string(&json!({
        "apiVersion": "observability.merlionos.org/v1", "kind": "PrometheusCluster",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap_or_default()
}

fn pod_ip_of(ns: &str, pod: &str) -> Result<String> {
    env().kubelet.faults().pod_ip(ns, pod).map(|ip| ip.to_string()).context("no pod IP")
}

/// Asks for a backup with the annotation and waits for its outcome; returns the status.
async fn backup_now(ns: &str, name: &str, token: &str) -> Result<tsdb_operator_core::crd::BackupStatus> {
    let api: Api<PrometheusCluster> = Api::namespaced(client(), ns);
    let patch = json!({"metadata": {"annotations": {"observability.merlionos.org/backup-now": token}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    eventually(&format!("backup {token} of {ns}/{name} to finish"), Duration::from_mins(2), || {
        let api = api.clone();
        async move {
            let pc = api.get(name).await?;
            let b = pc.status.and_then(|s| s.backup).unwrap_or_default();
            Ok((b.last_request.as_deref() == Some(token) && b.running.is_none()).then_some(b))
        }
    })
    .await
}

fn snapshot_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if e.file_name() == "snapshots" {
                    out.extend(std::fs::read_dir(&p).into_iter().flatten().flatten().map(|s| s.path()));
                } else {
                    stack.push(p);
                }
            }
        }
    }
    out
}

fn tsdb_ctl(s3: &S3Server, args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_tsdb-ctl"))
        .args(args)
        .args(["--endpoint", &s3.endpoint(), "--bucket", s3.bucket(), "--prefix", "tsdb"])
        .env("AWS_ACCESS_KEY_ID", s3.access_key())
        .env("AWS_SECRET_ACCESS_KEY", s3.secret_key())
        .output()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one story: seed, back up twice, restore three ways, break things
async fn backups_round_trip_incrementally_and_restore_into_new_clusters() -> Result<()> {
    let env = env();
    let s3 = S3Server::start()?;
    let bridge = IpAddr::V4(Ipv4Addr::new(10, 213, env.kubelet.subnet_index(), 1));
    let fwd = Forwarder::start(bridge, s3.addr()).await?;
    let endpoint = format!("http://{}", fwd.addr);
    let ns = namespace("backup").await;
    create_credentials(&ns, &s3).await?;

    // A seed backup of known samples, made by promtool, uploaded in the backup format.
    let work = env.workdir.subdir(&format!("{ns}-seed"))?;
    let end = now_secs() - 3600;
    let sum = known_samples(&work.join("input.om"), end)?;
    let blocks_dir = work.join("blocks");
    let out = Command::new(paths::promtool(PrometheusMajor::V3)?)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(work.join("input.om"))
        .arg(&blocks_dir)
        .output()?;
    ensure!(out.status.success(), "promtool: {}", String::from_utf8_lossy(&out.stderr));
    let store = s3_store(&s3, "tsdb")?;
    upload_seed(&store, &Layout::new("tsdb", &ns, "seed"), &blocks_dir, "20200101T000000Z").await?;

    let op = Operator::start(Some(&ns), &["--backup-tick-seconds=1", "--backup-gc-grace=0s"])?;

    // 1. Declarative restore: `src` starts from the seed backup and holds exactly the known samples.
    apply_cluster(&ns, &cluster_yaml("src", &endpoint, s3.bucket(), true, Some(("seed", "20200101T000000Z")))).await?;
    wait_phase(&ns, "src", Phase::Active, 1, READY).await?;
    let src_ip = pod_ip_of(&ns, "src-0")?;
    let src_addr = format!("{src_ip}:9090");
    let expected = (SERIES, SERIES * SAMPLES, sum);
    let got = eventually("known samples in src", Duration::from_secs(30), || {
        let a = src_addr.clone();
        async move { Ok(known_data(&a, end).await.ok().filter(|g| *g == expected)) }
    })
    .await?;
    eprintln!("src restored from the seed: (series, samples, sum) = {got:?}");

    // 2. Two backups of src; the second reuses the persistent blocks.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let first = backup_now(&ns, "src", "one").await?;
    ensure!(first.last_backup_error.is_none(), "first backup failed: {first:?}");
    let second = backup_now(&ns, "src", "two").await?;
    ensure!(second.last_backup_error.is_none(), "second backup failed: {second:?}");
    let (total1, up1) = (first.last_backup_bytes.unwrap_or(0), first.last_backup_uploaded_bytes.unwrap_or(0));
    let (total2, up2) = (second.last_backup_bytes.unwrap_or(0), second.last_backup_uploaded_bytes.unwrap_or(0));
    eprintln!("backup 1: {total1} bytes, {up1} uploaded; backup 2: {total2} bytes, {up2} uploaded");
    ensure!(up1 == total1, "the first backup uploads everything");
    let seed_bytes: u64 = std::fs::read_dir(&blocks_dir)?
        .flatten()
        .flat_map(|b| walk(&b.path()))
        .filter(|(p, _)| p.contains("/chunks/") || p.ends_with("/index"))
        .map(|(_, s)| s)
        .sum();
    ensure!(
        u64::try_from(total2 - up2)? >= seed_bytes,
        "backup 2 reuses at least the seed blocks' index and chunks ({seed_bytes} bytes): reused {}",
        total2 - up2
    );
    let pc = Api::<PrometheusCluster>::namespaced(client(), &ns).get("src").await?;
    let healthy = pc.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "BackupHealthy")).cloned();
    ensure!(
        healthy.as_ref().is_some_and(|c| c.status == "True"),
        "BackupHealthy: {healthy:?} in {:?} managed {}",
        pc.status,
        serde_json::to_string(&pc.metadata.managed_fields)?
    );
    ensure!(pc.status.as_ref().and_then(|s| s.last_backup_time.as_ref()).is_some());
    let metrics = op.metrics().await?;
    for needle in [
        format!("tsdb_operator_backup_total{{namespace=\"{ns}\",cluster=\"src\",result=\"success\"}} 2"),
        "tsdb_operator_backup_last_success_timestamp_seconds".to_owned(),
        "tsdb_operator_backup_duration_seconds".to_owned(),
        "tsdb_operator_backup_bytes".to_owned(),
    ] {
        ensure!(metrics.contains(&needle), "metrics lack {needle}");
    }
    ensure!(
        snapshot_dirs(env.kubelet.state_dir()).is_empty(),
        "snapshot directories left: {:?}",
        snapshot_dirs(env.kubelet.state_dir())
    );

    // 3. tsdb-ctl list and verify; restore into a directory that a real Prometheus loads as is.
    let list = tsdb_ctl(&s3, &["list", "--cluster", &format!("{ns}/src")])?;
    let listed = String::from_utf8_lossy(&list.stdout).to_string();
    ensure!(list.status.success() && listed.lines().count() == 2, "list: {listed}");
    let id2 = second.last_backup_id.clone().context("second id")?;
    ensure!(listed.lines().next().is_some_and(|l| l.contains(&id2) && l.contains("Completed")), "{listed}");
    let verify = tsdb_ctl(&s3, &["verify", "--cluster", &format!("{ns}/src")])?;
    ensure!(verify.status.success(), "verify: {}", String::from_utf8_lossy(&verify.stderr));
    let dest = work.join("restored");
    let restore = tsdb_ctl(&s3, &["restore", "--cluster", &format!("{ns}/src"), "--dest", &dest.to_string_lossy()])?;
    ensure!(restore.status.success(), "restore: {}", String::from_utf8_lossy(&restore.stderr));
    let again = tsdb_ctl(&s3, &["restore", "--cluster", &format!("{ns}/src"), "--dest", &dest.to_string_lossy()])?;
    ensure!(!again.status.success(), "a non-empty destination is refused");
    ensure!(String::from_utf8_lossy(&again.stderr).contains("not empty"), "{}", String::from_utf8_lossy(&again.stderr));
    let port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
    let mut local = ProcessBuilder::new("restored-prometheus", paths::prometheus(PrometheusMajor::V3)?)
        .arg(format!("--storage.tsdb.path={}", dest.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg(format!("--config.file={}", write_empty_config(&work)?.display()))
        .arg("--storage.tsdb.retention.time=30d")
        .spawn(&env.workdir)?;
    let local_addr = format!("127.0.0.1:{port}");
    let got = eventually("known samples in the restored directory", Duration::from_secs(30), || {
        let a = local_addr.clone();
        async move { Ok(known_data(&a, end).await.ok()) }
    })
    .await?;
    local.stop()?;
    ensure!(got == expected, "tsdb-ctl restore: {got:?} != {expected:?}");

    // 4. Declarative restore of the latest backup into a new cluster: same series, same values.
    apply_cluster(&ns, &cluster_yaml("dst", &endpoint, s3.bucket(), false, Some(("src", &id2)))).await?;
    wait_phase(&ns, "dst", Phase::Active, 1, READY).await?;
    let dst_addr = format!("{}:9090", pod_ip_of(&ns, "dst-0")?);
    let got = eventually("known samples in dst", Duration::from_secs(30), || {
        let a = dst_addr.clone();
        async move { Ok(known_data(&a, end).await.ok()) }
    })
    .await?;
    ensure!(got == expected, "declarative restore: {got:?} != {expected:?}");
    // The self-scraped series of src up to the backup are in dst too.
    let t = now_secs() - 1;
    let up_in_src = query(&src_addr, "count(count_over_time(up[10m]))", t).await?;
    let up_in_dst = query(&dst_addr, "count(count_over_time(up[10m]))", t).await?;
    ensure!(up_in_src[0]["value"][1] == up_in_dst[0]["value"][1], "up series: src {up_in_src} dst {up_in_dst}");

    // 5. Faults: S3 down -> Failed with a reason, no manifest, no snapshot left; the next run succeeds.
    s3.stop()?;
    let failed = backup_now(&ns, "src", "three").await?;
    let error = failed.last_backup_error.clone().unwrap_or_default();
    ensure!(error.starts_with("StorageFailed"), "backup with S3 down: {failed:?}");
    ensure!(snapshot_dirs(env.kubelet.state_dir()).is_empty(), "snapshot left after a failed backup");
    let pc = Api::<PrometheusCluster>::namespaced(client(), &ns).get("src").await?;
    let cond = pc.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "BackupHealthy")).cloned();
    ensure!(cond.as_ref().is_some_and(|c| c.status == "False" && c.reason == "StorageFailed"), "{cond:?}");
    s3.restart()?;
    let manifests_before = store.list("tsdb").await?.iter().filter(|o| o.key.ends_with("manifest.json")).count();
    let recovered = backup_now(&ns, "src", "four").await?;
    ensure!(recovered.last_backup_id != second.last_backup_id, "the next backup succeeds: {recovered:?}");
    ensure!(
        recovered.last_successful_backup_time > failed.last_successful_backup_time,
        "the next backup succeeds: {recovered:?}"
    );
    // Retention keeps 2 of src; the seed backup is another cluster's and untouched.
    let manifests: Vec<String> =
        store.list("tsdb").await?.into_iter().map(|o| o.key).filter(|k| k.ends_with("manifest.json")).collect();
    ensure!(manifests.len() == 3 && manifests_before == 3, "manifests: {manifests:?}");

    // 6. One flipped byte: verify and restore fail naming the object; nothing is written.
    let chunk = walk(&s3.data_dir().join(s3.bucket()).join("tsdb").join(&ns).join("src").join("blocks"))
        .into_iter()
        .find(|(p, _)| p.contains("/chunks/"))
        .context("a chunk object")?;
    let mut bytes = std::fs::read(&chunk.0)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&chunk.0, bytes)?;
    let name = chunk.0.rsplit_once("/blocks/").map(|(_, rest)| rest.to_owned()).unwrap_or_default();
    let verify = tsdb_ctl(&s3, &["verify", "--cluster", &format!("{ns}/src")])?;
    let stderr = String::from_utf8_lossy(&verify.stderr).to_string();
    ensure!(!verify.status.success() && stderr.contains(&name), "verify of a corrupted object: {stderr}");
    let dest2 = work.join("restored-corrupt");
    let restore = tsdb_ctl(&s3, &["restore", "--cluster", &format!("{ns}/src"), "--dest", &dest2.to_string_lossy()])?;
    let stderr = String::from_utf8_lossy(&restore.stderr).to_string();
    ensure!(!restore.status.success() && stderr.contains(&name), "restore of a corrupted object: {stderr}");
    ensure!(std::fs::read_dir(&dest2).map_or(0, Iterator::count) == 0, "nothing written on a failed restore");
    drop(fwd);
    Ok(())
}

fn walk(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(m) = e.metadata() {
                out.push((p.to_string_lossy().into_owned(), m.len()));
            }
        }
    }
    out
}

fn write_empty_config(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("empty.yml");
    std::fs::write(&path, "global:\n  scrape_interval: 1m\n")?;
    Ok(path)
}

/// The snapshot API disabled: the agent reports a failed backup and uploads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_fails_and_uploads_nothing_when_the_snapshot_api_is_disabled() -> Result<()> {
    let env = env();
    let work = env.workdir.subdir("snapshot-disabled")?;
    let (data, bucket, token, config) = (work.join("data"), work.join("bucket"), work.join("token"), work.join("cfg"));
    for d in [&data, &bucket, &token, &config] {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(token.join("token"), "t0ken")?;
    std::fs::write(config.join("prometheus.yml"), "global:\n  scrape_interval: 1s\n")?;
    let (pport, aport) = (free_port(IpAddr::V4(Ipv4Addr::LOCALHOST))?, free_port(IpAddr::V4(Ipv4Addr::LOCALHOST))?);
    let mut prom = ProcessBuilder::new("prometheus-no-admin", paths::prometheus(PrometheusMajor::V3)?)
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{pport}"))
        .arg(format!("--config.file={}", config.join("prometheus.yml").display()))
        .spawn(&env.workdir)?;
    let mut agent = ProcessBuilder::new("agent-no-admin", operator_binary())
        .args(["agent", &format!("--config-dir={}", config.display())])
        .arg(format!("--prometheus-url=http://127.0.0.1:{pport}"))
        .arg(format!("--listen=127.0.0.1:{aport}"))
        .arg(format!("--data-dir={}", data.display()))
        .arg(format!("--token-dir={}", token.display()))
        .arg("--credentials-dir=/nonexistent")
        .spawn(&env.workdir)?;
    let http = reqwest::Client::new();
    let request = json!({
        "id": "20260101T000000Z", "cluster": {"namespace": "ns", "name": "demo"},
        "store": {"kind": "Local", "dir": bucket.to_string_lossy(), "prefix": "p"},
    });
    let url = format!("http://127.0.0.1:{aport}/backup");
    // Unauthenticated requests are refused.
    let unauth = eventually("the agent to listen", Duration::from_secs(20), || {
        let (http, url, request) = (http.clone(), url.clone(), request.clone());
        async move { Ok(http.post(&url).json(&request).send().await.ok().map(|r| r.status().as_u16())) }
    })
    .await?;
    ensure!(unauth == 401, "unauthenticated: {unauth}");
    let started = eventually("Prometheus to be ready", Duration::from_secs(20), || {
        let (http, url, request) = (http.clone(), url.clone(), request.clone());
        async move {
            let ready = http
                .get(format!("http://127.0.0.1:{pport}/-/ready"))
                .send()
                .await
                .ok()
                .is_some_and(|r| r.status().is_success());
            if !ready {
                return Ok(None);
            }
            Ok(Some(http.post(&url).bearer_auth("t0ken").json(&request).send().await?.status().as_u16()))
        }
    })
    .await?;
    ensure!(started == 202, "start: {started}");
    let job: serde_json::Value = eventually("the job to finish", Duration::from_secs(20), || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let j: serde_json::Value =
                http.get(format!("{url}/20260101T000000Z")).bearer_auth("t0ken").send().await?.json().await?;
            Ok((j["state"] != "Running").then_some(j))
        }
    })
    .await?;
    agent.stop()?;
    prom.stop()?;
    ensure!(job["state"] == "Failed" && job["reason"] == "SnapshotFailed", "{job}");
    ensure!(job["message"].as_str().unwrap_or_default().contains("admin APIs disabled"), "{job}");
    ensure!(walk(&bucket).is_empty(), "nothing uploaded: {:?}", walk(&bucket));
    ensure!(snapshot_dirs(&data).is_empty(), "no snapshot directory");
    Ok(())
}

/// Deleting a cluster never waits for the object store: with backups enabled and the S3 server stopped, the
/// PrometheusCluster is gone within a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_cluster_completes_while_the_object_store_is_down() -> Result<()> {
    let env = env();
    let s3 = S3Server::start()?;
    let bridge = IpAddr::V4(Ipv4Addr::new(10, 213, env.kubelet.subnet_index(), 1));
    let fwd = Forwarder::start(bridge, s3.addr()).await?;
    let endpoint = format!("http://{}", fwd.addr);
    let ns = namespace("delete-s3-down").await;
    create_credentials(&ns, &s3).await?;
    let _op = Operator::start(Some(&ns), &["--backup-tick-seconds=1"])?;
    apply_cluster(&ns, &cluster_yaml("gone", &endpoint, s3.bucket(), true, None)).await?;
    wait_phase(&ns, "gone", Phase::Active, 1, READY).await?;

    s3.stop()?;
    let api: Api<tsdb_operator_core::crd::PrometheusCluster> = Api::namespaced(client(), &ns);
    api.delete("gone", &kube::api::DeleteParams::default()).await?;
    eventually("the cluster to be deleted with S3 down", Duration::from_mins(1), || async {
        Ok(api.get_opt("gone").await?.is_none().then_some(()))
    })
    .await?;
    Ok(())
}
