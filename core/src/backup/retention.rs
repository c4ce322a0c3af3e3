//! Step **plan** of retention: which backups to delete and which objects no remaining backup needs. Pure.
//!
//! # Guarantees
//! - The newest complete backup is never deleted, whatever the policy.
//! - No object referenced by a kept backup is deleted.
//! - Objects not referenced by any manifest (shared blocks of deleted backups, leftovers of failed or running
//!   backups) are deleted only once they are older than the grace period, so a backup that is still uploading
//!   is never robbed of its files.
//! - Keys this operator did not write are never touched.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::manifest::{KeyKind, Layout, Manifest};

/// Which backups to keep.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RetentionPolicy {
    /// Keep at most this many complete backups (at least 1 is always kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// Delete complete backups that started longer ago than this (seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_seconds: Option<u64>,
    /// Objects referenced by no manifest are deleted only when older than this (seconds).
    #[serde(default)]
    pub grace_seconds: u64,
}

impl RetentionPolicy {
    /// Whether the policy deletes any backup at all (garbage collection of unreferenced objects runs anyway).
    pub fn limits_backups(&self) -> bool {
        self.keep_last.is_some() || self.max_age_seconds.is_some()
    }
}

/// An object under a cluster root, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredObject {
    /// Key relative to the cluster root.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// When it was last written.
    pub last_modified: DateTime<Utc>,
}

/// What retention deletes. The executor deletes the manifests of `delete_backups` first (so those backups stop
/// being listed or restorable at once), then `delete_objects`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionPlan {
    /// Ids of complete backups to delete, oldest first.
    pub delete_backups: Vec<String>,
    /// Relative keys to delete (never a kept backup's file, never a manifest of a kept backup).
    pub delete_objects: Vec<String>,
    /// Bytes `delete_objects` frees.
    pub freed_bytes: u64,
}

/// Plans retention over the complete backups (`manifests`) and every object under the cluster root.
pub fn plan_retention(
    manifests: &[Manifest],
    objects: &[StoredObject],
    policy: &RetentionPolicy,
    now: DateTime<Utc>,
) -> RetentionPlan {
    let mut sorted: Vec<&Manifest> = manifests.iter().collect();
    // Newest first; the id breaks ties deterministically.
    sorted.sort_by(|a, b| b.start_time.cmp(&a.start_time).then_with(|| b.id.cmp(&a.id)));
    let max_age = policy.max_age_seconds.map(Duration::from_secs);
    let mut kept: Vec<&Manifest> = Vec::new();
    let mut deleted: Vec<&Manifest> = Vec::new();
    for (i, m) in sorted.iter().enumerate() {
        let beyond_count = policy.keep_last.is_some_and(|n| i >= usize::try_from(n.max(1)).unwrap_or(usize::MAX));
        let too_old = max_age
            .is_some_and(|age| now.signed_duration_since(m.start_time).to_std().is_ok_and(|elapsed| elapsed > age));
        if i > 0 && (beyond_count || too_old) { deleted.push(m) } else { kept.push(m) }
    }
    let kept_ids: BTreeSet<&str> = kept.iter().map(|m| m.id.as_str()).collect();
    let deleted_ids: BTreeSet<&str> = deleted.iter().map(|m| m.id.as_str()).collect();
    let referenced: BTreeSet<&str> = kept.iter().flat_map(|m| m.files().map(|f| f.key.as_str())).collect();
    let grace = Duration::from_secs(policy.grace_seconds);
    let old_enough =
        |o: &StoredObject| now.signed_duration_since(o.last_modified).to_std().is_ok_and(|age| age >= grace);

    let mut plan = RetentionPlan::default();
    for o in objects {
        if referenced.contains(o.key.as_str()) {
            continue;
        }
        let delete = match Layout::classify(&o.key) {
            KeyKind::Block { .. } => old_enough(o),
            KeyKind::BackupFile { id } if deleted_ids.contains(id) => true,
            // A backup folder without a manifest: a failed or running backup.
            KeyKind::BackupFile { id } => !kept_ids.contains(id) && old_enough(o),
            // Manifests of deleted backups go first, through `delete_backups`; unknown keys are never touched.
            KeyKind::Manifest { .. } | KeyKind::Other => false,
        };
        if delete {
            plan.freed_bytes += o.size;
            plan.delete_objects.push(o.key.clone());
        }
    }
    plan.delete_objects.sort();
    deleted.reverse();
    plan.delete_backups = deleted.iter().map(|m| m.id.clone()).collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::manifest::{BlockEntry, FileEntry, SourceCluster};
    use proptest::prelude::*;

    const ULIDS: [&str; 4] = [
        "01HZX3Q6W7Y8Z9ABCDEFGHJKM0",
        "01HZX3Q6W7Y8Z9ABCDEFGHJKM1",
        "01HZX3Q6W7Y8Z9ABCDEFGHJKM2",
        "01HZX3Q6W7Y8Z9ABCDEFGHJKM3",
    ];

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn manifest(id: &str, start: i64, blocks: &[usize]) -> Manifest {
        Manifest {
            version: 1,
            id: id.into(),
            cluster: SourceCluster::default(),
            start_time: at(start),
            completion_time: at(start + 1),
            snapshot: String::new(),
            blocks: blocks
                .iter()
                .map(|&b| BlockEntry {
                    ulid: ULIDS[b].into(),
                    min_time: None,
                    max_time: None,
                    files: vec![
                        FileEntry {
                            path: "index".into(),
                            key: Layout::block_file_key(ULIDS[b], "index"),
                            size: 10,
                            sha256: "0".repeat(64),
                        },
                        FileEntry {
                            path: "meta.json".into(),
                            key: Layout::backup_file_key(id, ULIDS[b], "meta.json"),
                            size: 1,
                            sha256: "0".repeat(64),
                        },
                    ],
                })
                .collect(),
            uploaded_bytes: 0,
        }
    }

    fn objects_of(manifests: &[Manifest], modified: i64) -> Vec<StoredObject> {
        let mut keys: BTreeSet<String> = BTreeSet::new();
        for m in manifests {
            keys.insert(Layout::manifest_key(&m.id));
            keys.extend(m.files().map(|f| f.key.clone()));
        }
        keys.into_iter().map(|key| StoredObject { key, size: 1, last_modified: at(modified) }).collect()
    }

    #[test]
    fn keep_last_deletes_older_backups_and_their_unshared_blocks() {
        let ms = [manifest("a", 100, &[0]), manifest("b", 200, &[0, 1]), manifest("c", 300, &[1, 2])];
        let policy = RetentionPolicy { keep_last: Some(2), ..RetentionPolicy::default() };
        let plan = plan_retention(&ms, &objects_of(&ms, 0), &policy, at(1000));
        assert_eq!(plan.delete_backups, ["a"]);
        assert_eq!(plan.delete_objects, [Layout::backup_file_key("a", ULIDS[0], "meta.json")]);
        let policy = RetentionPolicy { keep_last: Some(1), ..RetentionPolicy::default() };
        let plan = plan_retention(&ms, &objects_of(&ms, 0), &policy, at(1000));
        assert_eq!(plan.delete_backups, ["a", "b"]);
        assert!(plan.delete_objects.contains(&Layout::block_file_key(ULIDS[0], "index")));
        assert!(!plan.delete_objects.contains(&Layout::block_file_key(ULIDS[1], "index")));
    }

    #[test]
    fn max_age_never_deletes_the_newest_backup() {
        let ms = [manifest("a", 100, &[0]), manifest("b", 200, &[1])];
        let policy = RetentionPolicy { max_age_seconds: Some(10), ..RetentionPolicy::default() };
        let plan = plan_retention(&ms, &objects_of(&ms, 0), &policy, at(100_000));
        assert_eq!(plan.delete_backups, ["a"]);
    }

    #[test]
    fn leftovers_of_failed_backups_wait_for_the_grace_period() {
        let ms = [manifest("a", 100, &[0])];
        let mut objects = objects_of(&ms, 0);
        objects.push(StoredObject { key: Layout::block_file_key(ULIDS[3], "index"), size: 5, last_modified: at(990) });
        objects.push(StoredObject { key: "backups/failed/files/x".into(), size: 5, last_modified: at(990) });
        objects.push(StoredObject { key: "unrelated/file".into(), size: 5, last_modified: at(0) });
        let policy = RetentionPolicy { grace_seconds: 60, ..RetentionPolicy::default() };
        assert!(plan_retention(&ms, &objects, &policy, at(1000)).delete_objects.is_empty());
        let plan = plan_retention(&ms, &objects, &policy, at(2000));
        assert_eq!(
            plan.delete_objects,
            ["backups/failed/files/x".to_owned(), Layout::block_file_key(ULIDS[3], "index")]
        );
        assert_eq!(plan.freed_bytes, 10);
    }

    proptest! {
        #[test]
        fn retention_keeps_the_newest_backup_and_everything_kept_backups_reference(
            specs in proptest::collection::vec((0i64..1000, proptest::collection::vec(0usize..4, 0..4)), 0..8),
            keep_last in proptest::option::of(0u32..5),
            max_age in proptest::option::of(0u64..2000),
            grace in 0u64..2000,
            now in 0i64..3000,
        ) {
            let ms: Vec<Manifest> =
                specs.iter().enumerate().map(|(i, (t, b))| manifest(&format!("b{i}"), *t, b)).collect();
            let mut objects = objects_of(&ms, 500);
            objects.push(StoredObject { key: Layout::block_file_key(ULIDS[3], "index"), size: 1, last_modified: at(0) });
            let policy = RetentionPolicy { keep_last, max_age_seconds: max_age, grace_seconds: grace };
            let plan = plan_retention(&ms, &objects, &policy, at(now));
            if let Some(newest) = ms.iter().max_by(|a, b| a.start_time.cmp(&b.start_time).then_with(|| a.id.cmp(&b.id))) {
                prop_assert!(!plan.delete_backups.contains(&newest.id));
            }
            let deleted: BTreeSet<&String> = plan.delete_objects.iter().collect();
            for m in ms.iter().filter(|m| !plan.delete_backups.contains(&m.id)) {
                for f in m.files() {
                    prop_assert!(!deleted.contains(&f.key), "kept backup {} loses {}", m.id, f.key);
                }
                prop_assert!(!deleted.contains(&Layout::manifest_key(&m.id)));
            }
            if let Some(n) = keep_last {
                prop_assert!(ms.len() - plan.delete_backups.len() >= usize::try_from(n.max(1)).unwrap().min(ms.len()) || max_age.is_some());
            }
        }
    }
}
