//! Verify and restore backups. I/O: object storage and the local file system.
//!
//! # Flow of a restore
//! 1. Read and check the manifest (no manifest: not a backup; bad paths: refused).
//! 2. Undo an interrupted restore into the destination, if its journal is there ([`recover_interrupted`]).
//! 3. Refuse a destination that holds anything (but `lost+found`) unless forced.
//! 4. Download every file into the hidden staging folder `<dest>/.tsdb-restore-<id>/`, checking size and SHA-256
//!    of each; the first mismatch stops the restore, names the object and removes the staging folder.
//! 5. Write the journal `.tsdb-restore-journal` (the backup id and its blocks) durably, move each verified block
//!    into `<dest>/<ULID>` (directly under the data directory, where Prometheus loads blocks), write the marker
//!    `.tsdb-restored` with the backup id, remove the journal (the commit point), remove the staging folder.
//!
//! # Guarantees
//! - Nothing appears in the destination's block layout unless every file of the backup was verified.
//! - A restore that stops between its first move and its commit point (killed, node crash, disk error) is never
//!   taken for data: [`existing_data`], which the restore init container asks at every start, and every
//!   [`restore`] first undo it (remove the blocks the journal names, the marker and the staging folder), so the
//!   restore runs again from the start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt as _;
use futures::TryStreamExt as _;
use tsdb_operator_core::backup::manifest::{Layout, Manifest};
use tsdb_operator_core::backup::restore::{
    RESTORE_JOURNAL, RESTORED_MARKER, RestoreItem, RestoreJournal, ignorable_in_empty_dir, plan_restore,
};

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
    /// The journal of an interrupted restore cannot be read, so it cannot be undone safely.
    #[error(
        "failed to read the restore journal {}: a restore into this directory was interrupted; empty the directory \
         and restore again",
        path.display()
    )]
    Journal {
        /// The journal.
        path: PathBuf,
        /// The problem.
        #[source]
        source: tsdb_operator_core::backup::manifest::Error,
    },
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

/// Whether `dest` already holds data, so that the restore init container must leave it alone; returns one such
/// entry. A restore that was interrupted there is undone first ([`recover_interrupted`]): its blocks are not data
/// of the directory's own, and the restore must run again.
pub fn existing_data(dest: &Path) -> Result<Option<String>, Error> {
    if let Some(id) = recover_interrupted(dest)? {
        tracing::warn!(dest = %dest.display(), %id, "a restore was interrupted here; its blocks were removed to restore again");
    }
    non_empty_entry(dest)
}

/// Undoes a restore that stopped after it began moving blocks into `dest` (killed, node crash, disk error): when
/// `dest` holds a [`RESTORE_JOURNAL`], removes the blocks it names, the marker and the staging folder, then the
/// journal, so that `dest` is as it was before and the restore can run again. Returns the interrupted backup id.
/// A crash during this is safe too: the journal goes last.
pub fn recover_interrupted(dest: &Path) -> Result<Option<String>, Error> {
    let path = dest.join(RESTORE_JOURNAL);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::Io { op: "read", path, source }),
    };
    let journal = RestoreJournal::parse(&text).map_err(|source| Error::Journal { path: path.clone(), source })?;
    let io = |op, path: PathBuf| move |source| Error::Io { op, path, source };
    for name in journal.blocks.iter().map(String::as_str).chain([staging_name(&journal.id).as_str()]) {
        let dir = dest.join(name);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("remove", dir)(e)),
            _ => {}
        }
    }
    let marker = dest.join(RESTORED_MARKER);
    match std::fs::remove_file(&marker) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("remove", marker)(e)),
        _ => {}
    }
    sync_dir(dest)?;
    std::fs::remove_file(&path).map_err(io("remove", path.clone()))?;
    sync_dir(dest)?;
    Ok(Some(journal.id))
}

fn staging_name(id: &str) -> String {
    format!(".tsdb-restore-{id}")
}

/// Makes the entries of `dir` (created, renamed, removed) durable.
fn sync_dir(dir: &Path) -> Result<(), Error> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|source| Error::Io {
        op: "sync",
        path: dir.to_owned(),
        source,
    })
}

/// Writes `dir/name` so that it is either absent or complete, even across a crash: a temporary file, synced,
/// renamed into place, the directory synced.
async fn write_durably(dir: &Path, name: &str, contents: &str) -> Result<(), Error> {
    use tokio::io::AsyncWriteExt as _;
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let write = async {
        let mut f = tokio::fs::File::create(&tmp).await?;
        f.write_all(contents.as_bytes()).await?;
        f.sync_all().await
    };
    write.await.map_err(|source| Error::Io { op: "write", path: tmp.clone(), source })?;
    tokio::fs::rename(&tmp, &path).await.map_err(|source| Error::Io { op: "write", path, source })?;
    sync_dir(dir)
}

/// Called after each block moved into the destination with the number moved so far (tests stop a restore here).
type AfterMove<'a> = &'a (dyn Fn(usize) -> std::io::Result<()> + Sync);

/// Restores backup `id` into `dest` (see the module docs).
pub async fn restore(
    store: &Store,
    layout: &Layout,
    id: &str,
    dest: &Path,
    force: bool,
    progress: Option<ProgressFn>,
) -> Result<Restored, Error> {
    restore_with(store, layout, id, dest, force, progress, &|_| Ok(())).await
}

async fn restore_with(
    store: &Store,
    layout: &Layout,
    id: &str,
    dest: &Path,
    force: bool,
    progress: Option<ProgressFn>,
    after_move: AfterMove<'_>,
) -> Result<Restored, Error> {
    let manifest = read_manifest(store, layout, id).await?;
    let items = plan_restore(&manifest).map_err(|source| Error::Manifest { id: id.to_owned(), source })?;
    recover_interrupted(dest)?;
    if !force && let Some(entry) = non_empty_entry(dest)? {
        return Err(Error::NotEmpty { dest: dest.to_owned(), entry });
    }
    let staging = dest.join(staging_name(id));
    download(store, layout, &items, &staging, progress).await?;
    install(dest, &staging, &RestoreJournal::of(&manifest), after_move).await?;
    Ok(Restored { blocks: manifest.blocks.len(), files: items.len(), bytes: manifest.total_bytes() })
}

/// Downloads and verifies every item into `staging` (emptied first); removes it when anything fails.
async fn download(
    store: &Store,
    layout: &Layout,
    items: &[RestoreItem],
    staging: &Path,
    progress: Option<ProgressFn>,
) -> Result<(), Error> {
    let io = |op, source| Error::Io { op, path: staging.to_owned(), source };
    if staging.exists() {
        tokio::fs::remove_dir_all(staging).await.map_err(|e| io("remove", e))?;
    }
    tokio::fs::create_dir_all(staging).await.map_err(|e| io("create", e))?;
    let counter = Counter::new(items, progress);
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
        let _ = tokio::fs::remove_dir_all(staging).await;
        return Err(e);
    }
    Ok(())
}

/// Moves the verified blocks from `staging` into `dest` under the journal: the journal is durable before the first
/// move, and removed only after the last move and the marker; until then, [`recover_interrupted`] undoes it.
async fn install(
    dest: &Path,
    staging: &Path,
    journal: &RestoreJournal,
    after_move: AfterMove<'_>,
) -> Result<(), Error> {
    let io = |op, path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { op, path, source }
    };
    write_durably(dest, RESTORE_JOURNAL, &journal.to_text()).await?;
    let marker = dest.join(RESTORED_MARKER);
    if marker.exists() {
        tokio::fs::remove_file(&marker).await.map_err(io("remove", &marker))?;
    }
    for (moved, ulid) in journal.blocks.iter().enumerate() {
        let from = staging.join(ulid);
        let to = dest.join(ulid);
        if to.exists() {
            tokio::fs::remove_dir_all(&to).await.map_err(io("replace", &to))?;
        }
        tokio::fs::rename(&from, &to).await.map_err(io("move", &to))?;
        after_move(moved + 1).map_err(io("move", &to))?;
    }
    write_durably(dest, RESTORED_MARKER, &format!("{}\n", journal.id)).await?;
    // The commit point: from here on the restore is complete.
    let path = dest.join(RESTORE_JOURNAL);
    tokio::fs::remove_file(&path).await.map_err(io("remove", &path))?;
    sync_dir(dest)?;
    tokio::fs::remove_dir_all(staging).await.map_err(io("remove", staging))?;
    Ok(())
}

struct Counter {
    files: AtomicU64,
    bytes: AtomicU64,
    total: Progress,
    report: Option<ProgressFn>,
}

impl Counter {
    fn new(items: &[RestoreItem], report: Option<ProgressFn>) -> Self {
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use object_store::local::LocalFileSystem;
    use sha2::{Digest as _, Sha256};
    use tsdb_operator_core::backup::manifest::{BlockEntry, FileEntry, SourceCluster};

    use super::*;
    use crate::backup::store::{Tuning, hex};

    const ULIDS: [&str; 2] = ["01HZX3Q6W7Y8Z9ABCDEFGHJKM0", "01HZX3Q6W7Y8Z9ABCDEFGHJKM1"];
    const ID: &str = "20260413T001900Z";

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tsdb-restore-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A store under `dir` holding backup [`ID`] of two blocks.
    async fn store_with_backup(dir: &Path) -> (Store, Layout) {
        std::fs::create_dir_all(dir).unwrap();
        let fs = LocalFileSystem::new_with_prefix(dir).unwrap();
        let store = Store::from_object_store(Arc::new(fs), Tuning::default());
        let layout = Layout::new("p", "ns", "src");
        let mut blocks = Vec::new();
        for ulid in ULIDS {
            let mut files = Vec::new();
            for (path, key) in [
                ("index", Layout::block_file_key(ulid, "index")),
                ("meta.json", Layout::backup_file_key(ID, ulid, "meta.json")),
            ] {
                let body = format!("{ulid}/{path}");
                store.put(&layout.full(&key), Bytes::from(body.clone())).await.unwrap();
                let sha256 = hex(&Sha256::digest(body.as_bytes()));
                files.push(FileEntry { path: path.into(), key, size: body.len() as u64, sha256 });
            }
            blocks.push(BlockEntry { ulid: ulid.into(), min_time: None, max_time: None, files });
        }
        let manifest = Manifest {
            version: 1,
            id: ID.into(),
            cluster: SourceCluster::default(),
            start_time: jiff::Timestamp::UNIX_EPOCH,
            completion_time: jiff::Timestamp::UNIX_EPOCH,
            snapshot: String::new(),
            blocks,
            uploaded_bytes: 0,
        };
        store.put(&layout.full(&Layout::manifest_key(ID)), Bytes::from(manifest.to_json())).await.unwrap();
        (store, layout)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut out: Vec<String> =
            std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        out.sort();
        out
    }

    #[tokio::test]
    async fn a_restore_killed_after_its_first_move_is_redone_at_the_next_start() {
        for crash_at in [1, 2] {
            let dir = temp_dir(&format!("crash-{crash_at}"));
            let (store, layout) = store_with_backup(&dir.join("bucket")).await;
            let dest = dir.join("data");

            // The init container dies right after a block is in place.
            let crash = |moved: usize| if moved == crash_at { Err(std::io::Error::other("killed")) } else { Ok(()) };
            let died = restore_with(&store, &layout, ID, &dest, false, None, &crash).await;
            assert!(died.is_err());
            assert!(dest.join(ULIDS[0]).is_dir(), "the first block was moved: {:?}", names(&dest));
            assert!(!dest.join(RESTORED_MARKER).exists());
            assert!(dest.join(RESTORE_JOURNAL).exists());

            // The next start must not take the half-restored directory for data of its own.
            assert_eq!(existing_data(&dest).unwrap(), None, "left: {:?}", names(&dest));
            let done = restore(&store, &layout, ID, &dest, false, None).await.unwrap();
            assert_eq!(done.blocks, 2);
            assert_eq!(names(&dest), [RESTORED_MARKER, ULIDS[0], ULIDS[1]]);
            let index = std::fs::read_to_string(dest.join(ULIDS[1]).join("index")).unwrap();
            assert_eq!(index, format!("{}/index", ULIDS[1]));
            assert_eq!(existing_data(&dest).unwrap().as_deref(), Some(ULIDS[0]));
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn a_journal_that_cannot_be_read_is_an_error_not_a_guess() {
        let dir = temp_dir("bad-journal");
        std::fs::write(dir.join(RESTORE_JOURNAL), "20260413T001900Z\n../elsewhere\n").unwrap();
        std::fs::create_dir_all(dir.join(ULIDS[0])).unwrap();
        let err = existing_data(&dir).unwrap_err();
        assert!(matches!(err, Error::Journal { .. }), "{err}");
        assert!(err.to_string().starts_with("failed to read the restore journal"), "{err}");
        assert!(dir.join(ULIDS[0]).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
