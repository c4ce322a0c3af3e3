//! Helpers of the backup tests: the pods' way to the loopback S3 server (a TCP forwarder that can be slowed
//! down), seed backups of known or bulky data made by `promtool`, clusters with backups, on-demand requests, the
//! agent's view of a job, and checks on what is stored.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tsdb_operator_adapters::backup::catalogue::cluster_state;
use tsdb_operator_adapters::backup::store::{self, Credentials, Store, Tuning};
use tsdb_operator_core::backup::manifest::{
    BlockEntry, FileEntry, Layout, MANIFEST_VERSION, Manifest, SourceCluster, is_immutable,
};
use tsdb_operator_core::backup::protocol::StoreLocation;
use tsdb_operator_core::crd::{BackupStatus, PrometheusCluster};
use tsdb_operator_testenv::openmetrics::write_random_samples;
use tsdb_operator_testenv::paths::{self, PrometheusMajor};
use tsdb_operator_testenv::s3::S3Server;

use super::{Operator, client, env, eventually};

/// Key prefix of every backup test cluster (`spec.backup.prefix`).
pub const PREFIX: &str = "tsdb";

/// A shared bandwidth limit in bytes per second (0: unlimited), applied to every chunk a [`Forwarder`] copies in
/// either direction.
#[derive(Debug, Default)]
pub struct Throttle {
    bytes_per_second: AtomicU64,
    next_free: std::sync::Mutex<Option<Instant>>,
}

impl Throttle {
    /// Sets the limit (0 lifts it).
    pub fn set(&self, bytes_per_second: u64) {
        self.bytes_per_second.store(bytes_per_second, Ordering::Relaxed);
    }

    async fn take(&self, bytes: usize) {
        let rate = self.bytes_per_second.load(Ordering::Relaxed);
        if rate == 0 {
            return;
        }
        #[allow(clippy::cast_precision_loss)] // chunk sizes and rates are small
        let cost = Duration::from_secs_f64(bytes as f64 / rate as f64);
        let start = {
            let mut next = self.next_free.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            let start = next.map_or(now, |n| n.max(now));
            *next = Some(start + cost);
            start
        };
        tokio::time::sleep_until(start.into()).await;
    }
}

/// Forwards `bind` to `target` (the pods' way to the loopback S3 server), at most as fast as its [`Throttle`]
/// allows. Stops accepting when dropped.
pub struct Forwarder {
    pub addr: SocketAddr,
    pub throttle: Arc<Throttle>,
    upstream: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    throttle: Arc<Throttle>,
    counter: Option<Arc<AtomicU64>>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        throttle.take(n).await;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        if let Some(c) = &counter {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    let _ = to.shutdown().await;
}

impl Forwarder {
    pub async fn start(bind: IpAddr, target: SocketAddr) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(bind, 0)).await?;
        let addr = listener.local_addr()?;
        let throttle = Arc::new(Throttle::default());
        let upstream = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let (shared, counter, accepted) = (throttle.clone(), upstream.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                let (throttle, counter) = (shared.clone(), counter.clone());
                tokio::spawn(async move {
                    if let Ok(outbound) = tokio::net::TcpStream::connect(target).await {
                        let (in_read, in_write) = inbound.into_split();
                        let (out_read, out_write) = outbound.into_split();
                        tokio::join!(
                            pump(in_read, out_write, throttle.clone(), Some(counter)),
                            pump(out_read, in_write, throttle, None)
                        );
                    }
                });
            }
        });
        Ok(Self { addr, throttle, upstream, connections, task })
    }

    /// Bytes forwarded towards the server so far (requests and their bodies).
    pub fn upstream_bytes(&self) -> u64 {
        self.upstream.load(Ordering::Relaxed)
    }

    /// Connections accepted so far (each try of a request the server is not there for is one).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// A forwarder on the pod bridge's host address to `s3`.
    pub async fn to_s3(s3: &S3Server) -> Result<Self> {
        let bridge = IpAddr::V4(Ipv4Addr::new(10, 213, env().kubelet.subnet_index(), 1));
        Self::start(bridge, s3.addr()).await
    }

    /// The endpoint pods use.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What every backup test against a cluster needs: its own S3 server, the pods' forwarder to it, a fresh
/// namespace holding the credentials Secret `s3-creds`, and an operator watching that namespace.
pub struct BackupEnv {
    pub s3: S3Server,
    pub fwd: Forwarder,
    pub ns: String,
    pub op: Operator,
}

impl BackupEnv {
    /// Starts all of it; `operator_args` go to the operator.
    pub async fn start(label: &str, operator_args: &[&str]) -> Result<Self> {
        let s3 = S3Server::start()?;
        let fwd = Forwarder::to_s3(&s3).await?;
        let ns = super::namespace(label).await;
        create_credentials(&ns, &s3).await?;
        let op = Operator::start(Some(&ns), operator_args)?;
        Ok(Self { s3, fwd, ns, op })
    }

    /// [`cluster_yaml`] against this S3 server.
    pub fn cluster_yaml(&self, name: &str, backup: Option<serde_json::Value>, restore: Option<(&str, &str)>) -> String {
        cluster_yaml(name, &self.fwd.endpoint(), self.s3.bucket(), backup, restore)
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// Writes OpenMetrics with `series` series of `samples` samples one minute apart, the last one `end` (unix s);
/// the value of sample k of series i is `i * 1000 + k`. Returns the sum of all values.
pub fn known_samples(path: &Path, series: u64, samples: u64, end: u64) -> Result<u64> {
    let mut text = String::from("# HELP backup_test Known samples.\n# TYPE backup_test gauge\n");
    let mut sum = 0;
    for i in 0..series {
        for k in 0..samples {
            let ts = end - (samples - 1 - k) * 60;
            let v = i * 1000 + k;
            sum += v;
            let _ = writeln!(text, "backup_test{{series=\"{i}\"}} {v} {ts}");
        }
    }
    text.push_str("# EOF\n");
    std::fs::write(path, text)?;
    Ok(sum)
}

/// Writes OpenMetrics of `series` series with `samples` pseudo-random values each, one every 15 s up to `end`
/// (about 9 bytes per sample in a block).
pub fn bulky_samples(path: &Path, series: u64, samples: u64, end: u64) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    write_random_samples(&mut out, "backup_bulk", series, samples, end - (samples - 1) * 15, 15, 0x9e37_79b9)?;
    std::io::Write::flush(&mut out)?;
    Ok(())
}

/// Turns OpenMetrics into TSDB blocks in `out` with the cached promtool (`extra`: flags such as
/// `--max-block-duration=24h`).
pub fn promtool_blocks(input: &Path, out: &Path, extra: &[&str]) -> Result<()> {
    let run = Command::new(paths::promtool(PrometheusMajor::V3)?)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .args(extra)
        .arg(input)
        .arg(out)
        .output()?;
    ensure!(run.status.success(), "promtool: {}", String::from_utf8_lossy(&run.stderr));
    Ok(())
}

/// Uploads the blocks in `dir` as backup `id` of `layout`, in the backup format (a hand-made seed backup).
pub async fn upload_seed(store: &Store, layout: &Layout, dir: &Path, id: &str) -> Result<()> {
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
        start_time: jiff::Timestamp::now(),
        completion_time: jiff::Timestamp::now(),
        snapshot: String::new(),
        blocks,
        uploaded_bytes: 0,
    };
    store.put(&layout.full(&Layout::manifest_key(id)), bytes::Bytes::from(manifest.to_json())).await?;
    Ok(())
}

/// The test's own client of the S3 server (on loopback, not through the forwarder).
pub fn s3_store(s3: &S3Server, prefix: &str) -> Result<Store> {
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

/// The Secret `s3-creds` with the server's keys.
pub async fn create_credentials(ns: &str, s3: &S3Server) -> Result<()> {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "s3-creds"},
        "stringData": {"AWS_ACCESS_KEY_ID": s3.access_key(), "AWS_SECRET_ACCESS_KEY": s3.secret_key()},
    }))?;
    Api::<Secret>::namespaced(client(), ns).create(&PostParams::default(), &secret).await?;
    Ok(())
}

/// Runs a PromQL instant query at `time` on `addr` (pod IP or host:port) and returns the result vector.
pub async fn query(addr: &str, promql: &str, time: u64) -> Result<serde_json::Value> {
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

/// A one-replica Prometheus 3.5 cluster. `backup`: fields merged over the defaults (backups enabled to
/// `bucket` under [`PREFIX`] through `endpoint`, `keepLast: 2`); `None` leaves backups off. `restore`: the
/// source cluster and backup id of a declarative restore.
pub fn cluster_yaml(
    name: &str,
    endpoint: &str,
    bucket: &str,
    backup: Option<serde_json::Value>,
    restore: Option<(&str, &str)>,
) -> String {
    let mut spec = json!({
        "replicas": 1,
        "image": "prom/prometheus:v3.5.0",
        "retention": "30d",
        "scrapeInterval": "2s",
        "storage": {"size": "1Gi"},
    });
    if let Some(overrides) = backup {
        let mut b = json!({
            "enabled": true, "bucket": bucket, "prefix": PREFIX, "endpoint": endpoint,
            "credentialsSecretRef": {"name": "s3-creds"}, "retention": {"keepLast": 2},
        });
        if let (Some(b), Some(o)) = (b.as_object_mut(), overrides.as_object()) {
            b.extend(o.clone());
        }
        spec["backup"] = b;
    }
    if let Some((cluster, id)) = restore {
        spec["restore"] = json!({
            "backupId": id,
            "source": {"cluster": cluster, "bucket": bucket, "prefix": PREFIX, "endpoint": endpoint,
                "credentialsSecretRef": {"name": "s3-creds"}},
        });
    }
    serde_yaml::to_string(&json!({
        "apiVersion": "observability.merlionos.org/v1", "kind": "PrometheusCluster",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap_or_default()
}

pub fn pod_ip_of(ns: &str, pod: &str) -> Result<String> {
    env().kubelet.faults().pod_ip(ns, pod).map(|ip| ip.to_string()).context("no pod IP")
}

/// Sets the `backup-now` annotation to `token`.
pub async fn request_backup(ns: &str, name: &str, token: &str) -> Result<()> {
    let api: Api<PrometheusCluster> = Api::namespaced(client(), ns);
    let patch = json!({"metadata": {"annotations": {"observability.merlionos.org/backup-now": token}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// `status.backup` of a cluster.
pub async fn backup_status(ns: &str, name: &str) -> Result<BackupStatus> {
    let pc = Api::<PrometheusCluster>::namespaced(client(), ns).get(name).await?;
    Ok(pc.status.and_then(|s| s.backup).unwrap_or_default())
}

/// The condition `type_` of a cluster.
pub async fn condition(ns: &str, name: &str, type_: &str) -> Result<Option<Condition>> {
    let pc = Api::<PrometheusCluster>::namespaced(client(), ns).get(name).await?;
    Ok(pc.status.and_then(|s| s.conditions.into_iter().find(|c| c.type_ == type_)))
}

/// Waits until the request `token` has finished (within `timeout`); returns the status.
pub async fn wait_request_done(ns: &str, name: &str, token: &str, timeout: Duration) -> Result<BackupStatus> {
    eventually(&format!("backup {token} of {ns}/{name} to finish"), timeout, || async move {
        let b = backup_status(ns, name).await?;
        Ok((b.last_request.as_deref() == Some(token) && b.running.is_none()).then_some(b))
    })
    .await
}

/// Asks for a backup with the annotation and waits for its outcome; returns the status.
pub async fn backup_now(ns: &str, name: &str, token: &str) -> Result<BackupStatus> {
    request_backup(ns, name, token).await?;
    wait_request_done(ns, name, token, Duration::from_mins(2)).await
}

/// Asks for a backup and checks that it succeeded: a new `lastBackupId`, and the last success no older than the
/// last failure (`lastBackupError` keeps the last failure's reason). Returns the id.
pub async fn successful_backup(ns: &str, name: &str, token: &str) -> Result<String> {
    let before = backup_status(ns, name).await?;
    let after = backup_now(ns, name, token).await?;
    let at = |t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| t.map(|t| t.0);
    ensure!(
        after.last_backup_id.is_some()
            && after.last_backup_id != before.last_backup_id
            && at(after.last_successful_backup_time.as_ref()) >= at(after.last_failed_backup_time.as_ref()),
        "backup {token} of {ns}/{name} did not succeed: {after:?}"
    );
    after.last_backup_id.context("no id")
}

/// Every directory under a `snapshots` folder below `root`.
pub fn snapshot_dirs(root: &Path) -> Vec<PathBuf> {
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

/// The snapshot directories in the volumes of namespace `ns` only (the tests of a binary share the kubelet, and
/// another test's backup may be running).
pub async fn namespace_snapshot_dirs(ns: &str) -> Result<Vec<PathBuf>> {
    let claims = Api::<PersistentVolumeClaim>::namespaced(client(), ns).list(&kube::api::ListParams::default()).await?;
    let pv = env().kubelet.state_dir().join("pv");
    Ok(claims
        .items
        .iter()
        .filter_map(|c| c.metadata.uid.as_ref())
        .flat_map(|uid| snapshot_dirs(&pv.join(format!("pvc-{uid}"))))
        .collect())
}

/// The data directory of a pod of a cluster: the directory of the PV bound to its claim `data-<pod>`.
pub async fn pod_data_dir(ns: &str, pod: &str) -> Result<PathBuf> {
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client(), ns).get(&format!("data-{pod}")).await?;
    let uid = pvc.metadata.uid.context("claim without uid")?;
    Ok(env().kubelet.state_dir().join("pv").join(format!("pvc-{uid}")))
}

/// Runs `tsdb-ctl` with the S3 flags of `s3` and [`PREFIX`].
pub fn tsdb_ctl(s3: &S3Server, args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_tsdb-ctl"))
        .args(args)
        .args(["--endpoint", &s3.endpoint(), "--bucket", s3.bucket(), "--prefix", PREFIX])
        .env("AWS_ACCESS_KEY_ID", s3.access_key())
        .env("AWS_SECRET_ACCESS_KEY", s3.secret_key())
        .output()?)
}

/// The lines `tsdb-ctl list --cluster <ns>/<name>` prints (fails when it fails).
pub fn listed_backups(s3: &S3Server, ns: &str, name: &str) -> Result<Vec<String>> {
    let out = tsdb_ctl(s3, &["list", "--cluster", &format!("{ns}/{name}")])?;
    ensure!(out.status.success(), "tsdb-ctl list: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect())
}

/// Every file under `dir` with its size.
pub fn walk(dir: &Path) -> Vec<(String, u64)> {
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

/// The agent's view of job `id` (`GET /backup/<id>` on the pod, with the cluster's agent token).
pub async fn agent_job(ns: &str, cluster: &str, pod: &str, id: &str) -> Result<Option<serde_json::Value>> {
    agent_get(ns, cluster, pod, &format!("/backup/{id}")).await
}

/// `GET <path>` on the agent of `pod`; `None` on 404.
pub async fn agent_get(ns: &str, cluster: &str, pod: &str, path: &str) -> Result<Option<serde_json::Value>> {
    let secret = Api::<Secret>::namespaced(client(), ns).get(&format!("{cluster}-agent-token")).await?;
    let token = secret.data.and_then(|d| d.get("token").map(|t| String::from_utf8_lossy(&t.0).trim().to_owned()));
    let url = format!("http://{}:9091{path}", pod_ip_of(ns, pod)?);
    let resp = reqwest::Client::new()
        .get(&url)
        .bearer_auth(token.unwrap_or_default())
        .timeout(Duration::from_secs(5))
        .send()
        .await?;
    if resp.status().as_u16() == 404 {
        return Ok(None);
    }
    ensure!(resp.status().is_success(), "GET {url}: {}", resp.status());
    Ok(Some(resp.json().await?))
}

/// Waits until the cluster's running backup has sent at least `bytes` through `fwd` (counted from the call) and
/// its agent still reports it running; returns its id and pod.
pub async fn wait_uploading(
    fwd: &Forwarder,
    ns: &str,
    name: &str,
    bytes: u64,
    timeout: Duration,
) -> Result<(String, String)> {
    let base = fwd.upstream_bytes();
    eventually(&format!("a backup of {ns}/{name} to send {bytes} bytes"), timeout, || async move {
        let Some(running) = backup_status(ns, name).await?.running else { return Ok(None) };
        let Some(job) = agent_job(ns, name, &running.pod, &running.id).await? else { return Ok(None) };
        ensure!(job["state"] == "Running", "the backup finished before the fault: {job}");
        Ok((fwd.upstream_bytes() - base >= bytes).then_some((running.id, running.pod)))
    })
    .await
}

/// Events of `object` in `ns` with `reason`.
pub async fn events(ns: &str, object: &str, reason: &str) -> Result<Vec<Event>> {
    let list = Api::<Event>::namespaced(client(), ns)
        .list(&ListParams::default().fields(&format!("involvedObject.name={object}")))
        .await?;
    Ok(list.items.into_iter().filter(|e| e.reason.as_deref() == Some(reason)).collect())
}

/// Checks that every object under the cluster root is a manifest of a complete backup or referenced by one
/// (nothing left of failed, interrupted or expired backups); returns the ids of the complete backups, oldest
/// first.
pub async fn only_referenced_objects(store: &Store, layout: &Layout) -> Result<Vec<String>> {
    let (manifests, objects) = cluster_state(store, layout).await?;
    let referenced: BTreeSet<&str> = manifests.iter().flat_map(|m| m.files().map(|f| f.key.as_str())).collect();
    let manifest_keys: BTreeSet<String> = manifests.iter().map(|m| Layout::manifest_key(&m.id)).collect();
    let stray: Vec<&str> = objects
        .iter()
        .map(|o| o.key.as_str())
        .filter(|k| !referenced.contains(k) && !manifest_keys.contains(*k))
        .collect();
    ensure!(stray.is_empty(), "objects no backup references under {}: {stray:?}", layout.root());
    let mut ids: Vec<String> = manifests.iter().map(|m| m.id.clone()).collect();
    ids.sort();
    Ok(ids)
}
