//! Taking one backup, in the agent sidecar. I/O: the local Prometheus (admin API on 127.0.0.1), the data
//! volume, object storage.
//!
//! # Flow
//! 1. Read the catalogue of the cluster root: which immutable block files are already stored (and still exist
//!    with the recorded size).
//! 2. `POST /api/v1/admin/tsdb/snapshot` on the local Prometheus. Anything but HTTP 2xx with
//!    `{"status":"success","data":{"name":...}}` is a failed backup: nothing is uploaded.
//! 3. Upload each file of each block that is not already stored (index and chunks once under `blocks/`,
//!    meta.json and tombstones with the backup), hashing on the way.
//! 4. Write `backups/<id>/manifest.json` last.
//! 5. Apply retention.
//!
//! # Guarantees
//! - The snapshot directory `<data>/snapshots/<name>` is removed whatever happens after it was made; a failed
//!   snapshot call also removes any directory it left behind. The agent removes leftovers at start too
//!   ([`clean_snapshots`]) in case it was killed mid-backup.
//! - Without the manifest there is no backup: a failure at any step leaves at most unreferenced objects, which
//!   retention removes after its grace period.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use futures::TryStreamExt as _;
use jiff::Timestamp;
use tsdb_operator_core::backup::manifest::{
    BlockEntry, FileEntry, Layout, MANIFEST_VERSION, Manifest, is_immutable, is_ulid,
};
use tsdb_operator_core::backup::protocol::{BackupRequest, FailureReason, JobState, JobStatus};
use tsdb_operator_core::backup::retention::plan_retention;

use super::catalogue::cluster_state;
use super::store::{self, Credentials, Store, Tuning};

/// Where the agent finds things.
#[derive(Clone, Debug)]
pub struct TakeConfig {
    /// Base URL of the local Prometheus.
    pub prometheus_url: String,
    /// The Prometheus data directory (the same volume Prometheus uses).
    pub data_dir: PathBuf,
    /// Directory of the mounted credentials Secret.
    pub credentials_dir: PathBuf,
    /// Upload tuning.
    pub tuning: Tuning,
}

/// A failed step.
#[derive(Debug)]
struct Failure {
    reason: FailureReason,
    message: String,
}

impl Failure {
    fn new(reason: FailureReason, message: impl Into<String>) -> Self {
        Self { reason, message: message.into() }
    }

    fn store(e: &store::Error) -> Self {
        let reason = if e.is_storage() { FailureReason::StorageFailed } else { FailureReason::ReadFailed };
        Self { reason, message: crate::error_chain(e) }
    }
}

/// Progress shared with the HTTP handlers while a job runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes uploaded so far.
    pub uploaded: AtomicU64,
}

/// Removes every directory under `<data>/snapshots/` (leftovers of a killed agent). Only the agent asks for
/// snapshots (the admin API is reachable from inside the pod only), so they are all its own.
pub fn clean_snapshots(data_dir: &Path) -> usize {
    let dir = data_dir.join("snapshots");
    let Ok(entries) = std::fs::read_dir(&dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        if std::fs::remove_dir_all(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

fn snapshot_entries(data_dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(data_dir.join("snapshots"))
        .map(|it| it.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Asks Prometheus for a snapshot; returns its name.
async fn snapshot(client: &reqwest::Client, prometheus_url: &str) -> Result<String, Failure> {
    let url = format!("{}/api/v1/admin/tsdb/snapshot?skip_head=false", prometheus_url.trim_end_matches('/'));
    let resp = client.post(&url).send().await.map_err(|e| {
        Failure::new(FailureReason::SnapshotFailed, format!("failed to reach Prometheus at {url}: {e}"))
    })?;
    let code = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if !code.is_success() {
        return Err(Failure::new(
            FailureReason::SnapshotFailed,
            format!("Prometheus answered the snapshot request with {code}: {}", body.trim()),
        ));
    }
    let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    match (value["status"].as_str(), value["data"]["name"].as_str()) {
        (Some("success"), Some(name)) if !name.is_empty() && !name.contains('/') && name != ".." => Ok(name.to_owned()),
        _ => Err(Failure::new(
            FailureReason::SnapshotFailed,
            format!("Prometheus answered the snapshot request without a snapshot name: {}", body.trim()),
        )),
    }
}

/// A file of the snapshot to back up.
struct LocalFile {
    ulid: String,
    path: String,
    local: PathBuf,
    size: u64,
}

fn walk_block(block_dir: &Path, ulid: &str, rel: &str, out: &mut Vec<LocalFile>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(block_dir.join(rel))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let child = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let meta = entry.metadata()?;
        if meta.is_dir() {
            walk_block(block_dir, ulid, &child, out)?;
        } else if meta.is_file() {
            out.push(LocalFile { ulid: ulid.to_owned(), path: child, local: entry.path(), size: meta.len() });
        }
    }
    Ok(())
}

fn block_times(block_dir: &Path) -> (Option<i64>, Option<i64>) {
    let meta: serde_json::Value = std::fs::read(block_dir.join("meta.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    (meta["minTime"].as_i64(), meta["maxTime"].as_i64())
}

/// Takes the backup `req` and reports the finished job. Never panics; the snapshot directory is removed
/// before it returns.
pub async fn take_backup(config: &TakeConfig, req: &BackupRequest, progress: &Arc<Progress>) -> JobStatus {
    let started = Timestamp::now();
    let mut job = JobStatus::running(&req.id, started);
    match run(config, req, progress, &mut job).await {
        Ok(()) => job.state = JobState::Succeeded,
        Err(f) => {
            tracing::warn!(id = %req.id, reason = f.reason.as_str(), message = %f.message, "backup failed");
            job.state = JobState::Failed;
            job.reason = Some(f.reason);
            job.message = Some(f.message);
        }
    }
    job.uploaded_bytes = progress.uploaded.load(Ordering::Relaxed);
    job.completion_time = Some(Timestamp::now());
    job
}

async fn run(
    config: &TakeConfig,
    req: &BackupRequest,
    progress: &Arc<Progress>,
    job: &mut JobStatus,
) -> Result<(), Failure> {
    tsdb_operator_core::backup::manifest::check_id(&req.id)
        .map_err(|e| Failure::new(FailureReason::Rejected, e.to_string()))?;
    let credentials = Credentials::from_dir(&config.credentials_dir);
    let store = store::open(&req.store, credentials.as_ref(), &config.tuning).map_err(|e| Failure::store(&e))?;
    let layout = Layout::new(req.store.prefix(), &req.cluster.namespace, &req.cluster.name);

    // 1. What is stored already.
    let (manifests, objects) = cluster_state(&store, &layout).await.map_err(|e| Failure::store(&e))?;
    // An unreadable manifest with that id (a newer format, a damaged file) is never overwritten either.
    if manifests.iter().any(|m| m.id == req.id) || manifests.unreadable.iter().any(|u| u.id == req.id) {
        return Err(Failure::new(FailureReason::Rejected, format!("backup {} already exists", req.id)));
    }
    let present: BTreeMap<&str, u64> = objects.iter().map(|o| (o.key.as_str(), o.size)).collect();
    let mut reusable: BTreeMap<String, FileEntry> = BTreeMap::new();
    for f in manifests.iter().flat_map(Manifest::files) {
        if f.key.starts_with("blocks/") && present.get(f.key.as_str()) == Some(&f.size) {
            reusable.insert(f.key.clone(), f.clone());
        }
    }

    // 2. The snapshot.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_mins(10))
        .build()
        .map_err(|e| Failure::new(FailureReason::SnapshotFailed, e.to_string()))?;
    let before = snapshot_entries(&config.data_dir);
    let t = Instant::now();
    let name = match snapshot(&client, &config.prometheus_url).await {
        Ok(name) => name,
        Err(f) => {
            // A failed snapshot may leave a partial directory (prometheus#11347).
            for leftover in snapshot_entries(&config.data_dir).difference(&before) {
                let _ = std::fs::remove_dir_all(config.data_dir.join("snapshots").join(leftover));
            }
            return Err(f);
        }
    };
    job.snapshot_millis = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX);
    let snap_dir = config.data_dir.join("snapshots").join(&name);
    let result = upload_snapshot(&store, &layout, req, &snap_dir, &name, &reusable, progress, job).await;
    if let Err(e) = tokio::fs::remove_dir_all(&snap_dir).await {
        tracing::warn!(dir = %snap_dir.display(), error = %e, "failed to remove the snapshot directory");
    }
    result?;

    // 5. Retention (the backup exists now; a retention failure does not undo it).
    let grace = req.retention.grace_seconds;
    match cluster_state(&store, &layout).await {
        Ok((manifests, objects)) => {
            let plan = plan_retention(&manifests, &objects, &req.retention, Timestamp::now());
            for held in &plan.held {
                tracing::warn!(id = %req.id, "retention held back: {}", held.describe());
            }
            job.retention_held = plan.held.iter().map(tsdb_operator_core::backup::retention::Held::describe).collect();
            let mut failed = None;
            for id in &plan.delete_backups {
                if let Err(e) = store.delete(&layout.full(&Layout::manifest_key(id))).await {
                    failed = Some(e);
                    break;
                }
                job.deleted_backups.push(id.clone());
            }
            if failed.is_none() {
                let futures: Vec<_> =
                    plan.delete_objects.iter().map(|key| Box::pin(store.delete_owned(layout.full(key)))).collect();
                let deletes = futures::stream::iter(futures).buffer_unordered(8).try_collect::<Vec<()>>().await;
                failed = deletes.err();
            }
            if let Some(e) = failed {
                job.reason = Some(FailureReason::RetentionFailed);
                job.message = Some(format!("the backup completed, but retention failed: {}", crate::error_chain(&e)));
            } else if !plan.delete_backups.is_empty() || !plan.delete_objects.is_empty() {
                tracing::info!(backups = ?plan.delete_backups, objects = plan.delete_objects.len(), freed = plan.freed_bytes, grace, "retention applied");
            }
        }
        Err(e) => {
            job.reason = Some(FailureReason::RetentionFailed);
            job.message = Some(format!("the backup completed, but retention failed: {}", crate::error_chain(&e)));
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)] // one call site; the steps share these
async fn upload_snapshot(
    store: &Store,
    layout: &Layout,
    req: &BackupRequest,
    snap_dir: &Path,
    snapshot_name: &str,
    reusable: &BTreeMap<String, FileEntry>,
    progress: &Arc<Progress>,
    job: &mut JobStatus,
) -> Result<(), Failure> {
    // 3. The files.
    let mut blocks: BTreeMap<String, (Option<i64>, Option<i64>)> = BTreeMap::new();
    let mut files = Vec::new();
    let entries = std::fs::read_dir(snap_dir)
        .map_err(|e| Failure::new(FailureReason::ReadFailed, format!("failed to read {}: {e}", snap_dir.display())))?;
    for entry in entries.flatten() {
        let ulid = entry.file_name().to_string_lossy().into_owned();
        if !is_ulid(&ulid) || !entry.path().is_dir() {
            continue;
        }
        walk_block(&entry.path(), &ulid, "", &mut files)
            .map_err(|e| Failure::new(FailureReason::ReadFailed, format!("failed to read block {ulid}: {e}")))?;
        blocks.insert(ulid, block_times(&entry.path()));
    }
    job.blocks = blocks.len() as u64;
    job.files = files.len() as u64;
    job.total_bytes = files.iter().map(|f| f.size).sum();

    let futures: Vec<_> = files
        .into_iter()
        .map(|f| {
            let progress = progress.clone();
            Box::pin(async move {
                let shared_key = Layout::block_file_key(&f.ulid, &f.path);
                if is_immutable(&f.path)
                    && let Some(known) = reusable.get(&shared_key)
                    && known.size == f.size
                {
                    return Ok((f.ulid, FileEntry { path: f.path, ..known.clone() }));
                }
                let key =
                    if is_immutable(&f.path) { shared_key } else { Layout::backup_file_key(&req.id, &f.ulid, &f.path) };
                let on_bytes = move |n: u64| {
                    progress.uploaded.fetch_add(n, Ordering::Relaxed);
                };
                let (size, sha256) =
                    store.upload_file(&f.local, &layout.full(&key), &on_bytes).await.map_err(|e| Failure::store(&e))?;
                Ok::<_, Failure>((f.ulid, FileEntry { path: f.path, key, size, sha256 }))
            })
        })
        .collect();
    let uploads = futures::stream::iter(futures)
        .buffer_unordered(store.tuning().files_in_flight.max(1))
        .try_collect::<Vec<_>>()
        .await?;

    let mut by_block: BTreeMap<String, Vec<FileEntry>> = BTreeMap::new();
    for (ulid, entry) in uploads {
        by_block.entry(ulid).or_default().push(entry);
    }
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        id: req.id.clone(),
        cluster: req.cluster.clone(),
        start_time: job.start_time,
        completion_time: Timestamp::now(),
        snapshot: snapshot_name.to_owned(),
        blocks: by_block
            .into_iter()
            .map(|(ulid, mut files)| {
                files.sort_by(|a, b| a.path.cmp(&b.path));
                let (min_time, max_time) = blocks.get(&ulid).copied().unwrap_or_default();
                BlockEntry { ulid, min_time, max_time, files }
            })
            .collect(),
        uploaded_bytes: progress.uploaded.load(Ordering::Relaxed),
    };
    manifest.check().map_err(|e| Failure::new(FailureReason::ReadFailed, e.to_string()))?;

    // 4. The manifest, last.
    store
        .put(&layout.full(&Layout::manifest_key(&req.id)), Bytes::from(manifest.to_json()))
        .await
        .map_err(|e| Failure::store(&e))?;
    tracing::info!(id = %req.id, blocks = job.blocks, files = job.files, total = job.total_bytes,
        uploaded = manifest.uploaded_bytes, "backup completed");
    Ok(())
}
