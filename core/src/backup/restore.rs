//! Step **plan** of a restore: where each object of a backup goes in a Prometheus data directory. Pure.
//!
//! Blocks go directly under the data directory (`<dest>/<ULID>/...`), where Prometheus loads them. The seed's
//! runbook extracted a tar of `<snapshot>/<ULID>/...` into `/prometheus/`, one level too deep, so Prometheus never
//! saw the data (C.14.2).

use super::manifest::{Manifest, Result};

/// One file to download.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreItem {
    /// Object key relative to the cluster root.
    pub key: String,
    /// Path relative to the data directory: `<ULID>/<path in block>`.
    pub dest: String,
    /// Expected size.
    pub size: u64,
    /// Expected SHA-256 (lowercase hex).
    pub sha256: String,
}

/// Every file of a checked manifest and where it goes, blocks in ULID order.
pub fn plan_restore(manifest: &Manifest) -> Result<Vec<RestoreItem>> {
    manifest.check()?;
    Ok(manifest
        .blocks
        .iter()
        .flat_map(|b| {
            b.files.iter().map(move |f| RestoreItem {
                key: f.key.clone(),
                dest: format!("{}/{}", b.ulid, f.path),
                size: f.size,
                sha256: f.sha256.clone(),
            })
        })
        .collect())
}

/// Names in a data directory that do not make it "in use": the file system's `lost+found` and the restore's own
/// staging folder and marker.
pub fn ignorable_in_empty_dir(name: &str) -> bool {
    name == "lost+found" || name.starts_with(".tsdb-restore")
}

/// Name of the marker a restore leaves in the data directory (holds the backup id).
pub const RESTORED_MARKER: &str = ".tsdb-restored";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::manifest::tests_support::sample;

    #[test]
    fn blocks_are_restored_directly_under_the_data_directory() {
        let items = plan_restore(&sample()).unwrap();
        assert!(items.iter().all(|i| i.dest.starts_with("01HZX3Q6W7Y8Z9ABCDEFGHJKMN/")), "{items:?}");
        assert!(items.iter().any(|i| i.dest == "01HZX3Q6W7Y8Z9ABCDEFGHJKMN/chunks/000001"));
        let mut bad = sample();
        bad.blocks[0].files[0].path = "../x".into();
        assert!(plan_restore(&bad).is_err());
    }
}
