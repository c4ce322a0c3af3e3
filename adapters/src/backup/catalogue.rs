//! The catalogue: the complete backups in a store, read from their manifests. I/O: object storage.
//!
//! A backup is listed only when its manifest exists; folders without a manifest (failed or running backups) are
//! never listed. A manifest that does not parse, fails its checks or has a newer format version is listed as
//! unreadable, never dropped: retention must see it to leave alone what it may reference.

use tsdb_operator_core::backup::manifest::{Layout, MANIFEST_FILE, Manifest};
use tsdb_operator_core::backup::retention::{Catalogue, StoredObject};

use super::store::{Result, Store};

/// One backup in the catalogue.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Its cluster root.
    pub layout: Layout,
    /// Full key of its manifest.
    pub manifest_key: String,
    /// Its manifest, or why it could not be read.
    pub manifest: std::result::Result<Manifest, String>,
    /// When the manifest was written.
    pub stored: StoredObject,
}

impl Entry {
    /// The backup id.
    pub fn id(&self) -> &str {
        Layout::split_manifest_key(&self.manifest_key).map_or("", |(_, id)| id)
    }
}

/// Every backup under `prefix` (all clusters, all pages), newest first.
pub async fn list_backups(store: &Store, prefix: &str) -> Result<Vec<Entry>> {
    let objects = store.list(prefix.trim_matches('/')).await?;
    let mut out = Vec::new();
    for o in objects.into_iter().filter(|o| o.key.ends_with(MANIFEST_FILE)) {
        let Some((layout, _)) = Layout::split_manifest_key(&o.key) else { continue };
        let manifest = match store.get(&o.key).await? {
            Some(bytes) => Manifest::from_json(&bytes).map_err(|e| e.to_string()),
            // Deleted between list and get (retention): not a backup any more.
            None => continue,
        };
        out.push(Entry { layout, manifest_key: o.key.clone(), manifest, stored: o });
    }
    out.sort_by(|a, b| {
        let time = |e: &Entry| e.manifest.as_ref().map_or(e.stored.last_modified, |m| m.start_time);
        time(b).cmp(&time(a)).then_with(|| b.manifest_key.cmp(&a.manifest_key))
    });
    Ok(out)
}

/// The backups of one cluster root, newest first: [`list_backups`] of the root, without the backups of other
/// clusters whose roots are nested under it (another cluster's prefix may lie inside this root).
pub async fn list_cluster_backups(store: &Store, layout: &Layout) -> Result<Vec<Entry>> {
    let mut entries = list_backups(store, layout.root()).await?;
    entries.retain(|e| e.layout == *layout);
    Ok(entries)
}

/// The backups of one cluster root (readable and unreadable manifests) and every object under it, keyed
/// relative to the root (for retention and reuse).
pub async fn cluster_state(store: &Store, layout: &Layout) -> Result<(Catalogue, Vec<StoredObject>)> {
    let mut objects = store.list(layout.root()).await?;
    objects.retain_mut(|o| match layout.relative(&o.key) {
        Some(rel) => {
            o.key = rel.to_owned();
            true
        }
        None => false,
    });
    let mut catalogue = Catalogue::default();
    for o in &objects {
        if let Some(id) = Layout::manifest_id(&o.key)
            && let Some(bytes) = store.get(&layout.full(&o.key)).await?
        {
            catalogue.add(id, &bytes);
        }
    }
    Ok((catalogue, objects))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use object_store::local::LocalFileSystem;
    use tsdb_operator_core::backup::manifest::{BlockEntry, FileEntry, SourceCluster};

    use super::*;
    use crate::backup::store::Tuning;

    const ULID: &str = "01HZX3Q6W7Y8Z9ABCDEFGHJKM0";

    fn temp_store(name: &str) -> (Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("tsdb-catalogue-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fs = LocalFileSystem::new_with_prefix(&dir).unwrap();
        (Store::from_object_store(Arc::new(fs), Tuning::default()), dir)
    }

    fn manifest(id: &str) -> Manifest {
        let file = |path: &str, key: String| FileEntry { path: path.into(), key, size: 1, sha256: "0".repeat(64) };
        Manifest {
            version: 1,
            id: id.into(),
            cluster: SourceCluster { namespace: "ns".into(), name: "a".into(), uid: "u".into(), pod: String::new() },
            start_time: jiff::Timestamp::UNIX_EPOCH,
            completion_time: jiff::Timestamp::UNIX_EPOCH,
            snapshot: String::new(),
            blocks: vec![BlockEntry {
                ulid: ULID.into(),
                min_time: None,
                max_time: None,
                files: vec![
                    file("index", Layout::block_file_key(ULID, "index")),
                    file("meta.json", Layout::backup_file_key(id, ULID, "meta.json")),
                ],
            }],
            uploaded_bytes: 0,
        }
    }

    #[tokio::test]
    async fn unreadable_manifests_stay_in_the_catalogue_and_nested_roots_stay_out() {
        let (store, dir) = temp_store("state");
        let ours = Layout::new("p", "ns", "a");
        let nested = Layout::new("p/ns/a", "backups", "x");
        let put = |layout: &Layout, key: &str, bytes: Vec<u8>| {
            let (store, key) = (store.clone(), layout.full(key));
            async move { store.put(&key, Bytes::from(bytes)).await.unwrap() }
        };
        put(&ours, &Layout::manifest_key("good"), manifest("good").to_json()).await;
        put(&ours, &Layout::manifest_key("broken"), b"{not json".to_vec()).await;
        put(&ours, &Layout::block_file_key(ULID, "index"), b"x".to_vec()).await;
        put(&nested, &Layout::manifest_key("theirs"), manifest("theirs").to_json()).await;

        let (catalogue, objects) = cluster_state(&store, &ours).await.unwrap();
        assert_eq!(catalogue.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["good"]);
        assert_eq!(catalogue.unreadable.len(), 1, "{catalogue:?}");
        assert_eq!(catalogue.unreadable[0].id, "broken");
        assert!(objects.iter().all(|o| !o.key.starts_with("p/")), "keys are relative to the root: {objects:?}");

        let listed = list_cluster_backups(&store, &ours).await.unwrap();
        let mut ids: Vec<&str> = listed.iter().map(Entry::id).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["broken", "good"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
