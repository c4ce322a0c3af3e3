//! The catalogue: the complete backups in a store, read from their manifests. I/O: object storage.
//!
//! A backup is listed only when its manifest exists and passes its checks; folders without a manifest (failed
//! or running backups) are never listed.

use tsdb_operator_core::backup::manifest::{Layout, MANIFEST_FILE, Manifest};
use tsdb_operator_core::backup::retention::StoredObject;

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

/// The complete backups of one cluster root and every object under it (for retention and reuse).
pub async fn cluster_state(store: &Store, layout: &Layout) -> Result<(Vec<Manifest>, Vec<StoredObject>)> {
    let mut objects = store.list(layout.root()).await?;
    for o in &mut objects {
        if let Some(rel) = layout.relative(&o.key) {
            o.key = rel.to_owned();
        }
    }
    let mut manifests = Vec::new();
    for o in &objects {
        if Layout::manifest_id(&o.key).is_some()
            && let Some(bytes) = store.get(&layout.full(&o.key)).await?
        {
            match Manifest::from_json(&bytes) {
                Ok(m) => manifests.push(m),
                Err(e) => tracing::warn!(key = %o.key, error = %e, "ignoring an unreadable manifest"),
            }
        }
    }
    Ok((manifests, objects))
}
