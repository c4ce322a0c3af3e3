//! Verify and restore backups. I/O: object storage and the local file system.
//!
//! # Flow of a restore
//! 1. Read and check the manifest (no manifest: not a backup; bad paths: refused).
//! 2. Refuse a destination that holds anything (but `lost+found`) unless forced.
//! 3. Download every file into the hidden staging folder `<dest>/.tsdb-restore-<id>/`, checking size and SHA-256
//!    of each; the first mismatch stops the restore, names the object and removes the staging folder.
//! 4. Move each verified block into `<dest>/<ULID>` (directly under the data directory, where Prometheus loads
//!    blocks), write the marker `.tsdb-restored` with the backup id, remove the staging folder.
//!
//! # Guarantees
//! Nothing appears in the destination's block layout unless every file of the backup was verified.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt as _;
use futures::TryStreamExt as _;
use tsdb_operator_core::backup::manifest::{Layout, Manifest};
use tsdb_operator_core::backup::restore::{RESTORED_MARKER, ignorable_in_empty_dir, plan_restore};

use super::store::{self, Store};

/// Why a verify or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// There is no manifest: no such backup, or an incomplete one.
    #[error("backup {id} not found under {root}: no manifest (an upload without its manifest is not a backup)")]
    NotFound {
        /// The id.
        id: String,
        /// The cluster root.
        root: String,
    },
    /// The manifest is unreadable or unsafe.
    #[error("the manifest of backup {id} is invalid")]
    Manifest {
        /// The id.
        id: String,
        /// The problem.
        #[source]
        source: tsdb_operator_core::backup::manifest::Error,
    },
    /// The destination holds data.
    #[error("{} is not empty (it holds {entry}); restore only into an empty directory, or pass --force", dest.display())]
    NotEmpty {
        /// The destination.
        dest: PathBuf,
        /// One entry found.
        entry: String,
    },
    /// Object storage or local disk failed, or an object does not match the manifest.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Preparing the destination failed.
    #[error("failed to {op} {}", path.display())]
    Io {
        /// What.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Progress of a verify or restore.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Files done.
    pub files_done: u64,
    /// Files in all.
    pub files_total: u64,
    /// Bytes done.
    pub bytes_done: u64,
    /// Bytes in all.
    pub bytes_total: u64,
}

/// Called with progress after each file.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// Reads and checks a backup's manifest.
pub async fn read_manifest(store: &Store, layout: &Layout, id: &str) -> Result<Manifest, Error> {
    let key = layout.full(&Layout::manifest_key(id));
    let bytes =
        store.get(&key).await?.ok_or_else(|| Error::NotFound { id: id.to_owned(), root: layout.root().to_owned() })?;
    let manifest = Manifest::from_json(&bytes).map_err(|source| Error::Manifest { id: id.to_owned(), source })?;
    if manifest.id != id {
        return Err(Error::Manifest {
            id: id.to_owned(),
            source: tsdb_operator_core::backup::manifest::Error::Invalid {
                field: "id".into(),
                value: manifest.id,
                reason: "does not match the folder the manifest is in",
            },
        });
    }
    Ok(manifest)
}

/// Reads every object of a backup and checks its size and SHA-256 against the manifest. Returns the manifest.
pub async fn verify(store: &Store, layout: &Layout, id: &str, progress: Option<ProgressFn>) -> Result<Manifest, Error> {
    let manifest = read_manifest(store, layout, id).await?;
    let items = plan_restore(&manifest).map_err(|source| Error::Manifest { id: id.to_owned(), source })?;
    let counter = Counter::new(&items, progress);
    futures::stream::iter(items.iter())
        .map(|item| {
            let counter = &counter;
            async move {
                store.verify_object(&layout.full(&item.key), item.size, &item.sha256).await?;
                counter.file_done(item.size);
                Ok::<(), Error>(())
            }
        })
        .buffer_unordered(4)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(manifest)
}

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    /// Blocks written.
    pub blocks: usize,
    /// Files written.
    pub files: usize,
    /// Bytes written.
    pub bytes: u64,
}

/// Whether `dest` holds anything that counts as data; returns one such entry.
pub fn non_empty_entry(dest: &Path) -> Result<Option<String>, Error> {
    match std::fs::read_dir(dest) {
        Ok(entries) => Ok(entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| !ignorable_in_empty_dir(n))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io { op: "read", path: dest.to_owned(), source }),
    }
}

/// Restores backup `id` into `dest` (see the module docs).
pub async fn restore(
    store: &Store,
    layout: &Layout,
    id: &str,
    dest: &Path,
    force: bool,
    progress: Option<ProgressFn>,
) -> Result<Restored, Error> {
    let manifest = read_manifest(store, layout, id).await?;
    let items = plan_restore(&manifest).map_err(|source| Error::Manifest { id: id.to_owned(), source })?;
    if !force && let Some(entry) = non_empty_entry(dest)? {
        return Err(Error::NotEmpty { dest: dest.to_owned(), entry });
    }
    let io = |op, path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { op, path, source }
    };
    let staging = dest.join(format!(".tsdb-restore-{id}"));
    if staging.exists() {
        tokio::fs::remove_dir_all(&staging).await.map_err(io("remove", &staging))?;
    }
    tokio::fs::create_dir_all(&staging).await.map_err(io("create", &staging))?;
    let counter = Counter::new(&items, progress);
    let downloaded = futures::stream::iter(items.iter())
        .map(|item| {
            let counter = &counter;
            let target = staging.join(&item.dest);
            async move {
                store.download_verified(&layout.full(&item.key), &target, item.size, &item.sha256, &|_| {}).await?;
                counter.file_done(item.size);
                Ok::<(), Error>(())
            }
        })
        .buffer_unordered(4)
        .try_collect::<Vec<()>>()
        .await;
    if let Err(e) = downloaded {
        let _ = tokio::fs::remove_dir_all(&staging).await;
        return Err(e);
    }
    for block in &manifest.blocks {
        let from = staging.join(&block.ulid);
        let to = dest.join(&block.ulid);
        if to.exists() {
            tokio::fs::remove_dir_all(&to).await.map_err(io("replace", &to))?;
        }
        tokio::fs::rename(&from, &to).await.map_err(io("move", &to))?;
    }
    let marker = dest.join(RESTORED_MARKER);
    tokio::fs::write(&marker, format!("{id}\n")).await.map_err(io("write", &marker))?;
    tokio::fs::remove_dir_all(&staging).await.map_err(io("remove", &staging))?;
    Ok(Restored { blocks: manifest.blocks.len(), files: items.len(), bytes: manifest.total_bytes() })
}

struct Counter {
    files: AtomicU64,
    bytes: AtomicU64,
    total: Progress,
    report: Option<ProgressFn>,
}

impl Counter {
    fn new(items: &[tsdb_operator_core::backup::restore::RestoreItem], report: Option<ProgressFn>) -> Self {
        let total = Progress {
            files_done: 0,
            files_total: items.len() as u64,
            bytes_done: 0,
            bytes_total: items.iter().map(|i| i.size).sum(),
        };
        Self { files: AtomicU64::new(0), bytes: AtomicU64::new(0), total, report }
    }

    fn file_done(&self, size: u64) {
        let files = self.files.fetch_add(1, Ordering::Relaxed) + 1;
        let bytes = self.bytes.fetch_add(size, Ordering::Relaxed) + size;
        if let Some(report) = &self.report {
            report(Progress { files_done: files, bytes_done: bytes, ..self.total });
        }
    }
}
