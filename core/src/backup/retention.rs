//! Step **plan** of retention: which backups to delete and which objects no remaining backup needs. Pure.
//!
//! # Guarantees
//! - The newest complete backup of this cluster (not dated in the future) is never deleted, whatever the policy.
//! - No object referenced by a kept backup is deleted.
//! - Only backups of this cluster are pruned: a manifest whose `cluster.uid` is not the policy's
//!   [`RetentionPolicy::cluster_uid`] (a deleted cluster re-created with the same name, or a manifest without a
//!   UID) is kept with everything it references.
//! - A manifest that cannot be read (does not parse, fails its checks, newer format) is kept, and while one
//!   exists no object under the root is deleted: it may reference any of them.
//! - A manifest dated more than [`MAX_CLOCK_SKEW`] in the future never counts as the newest backup, so it cannot
//!   push out a backup taken now.
//! - Objects not referenced by any manifest (shared blocks of deleted backups, leftovers of failed or running
//!   backups) are deleted only once they are older than the grace period, so a backup that is still uploading
//!   is never robbed of its files.
//! - Keys this operator did not write, in the exact shapes of [`Layout::classify`], are never touched; so are
//!   the objects of another cluster whose root is nested under this one.
//! - Everything left alone for one of these reasons is reported in [`RetentionPlan::held`].

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
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
    /// UID of the cluster whose backups this policy prunes (the operator sets the PrometheusCluster's UID).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster_uid: String,
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
    pub last_modified: Timestamp,
}

/// A manifest found under a cluster root that this code cannot read: it does not parse, fails its checks, is
/// in another folder than its id says, or has a format version this operator does not know (a newer operator
/// wrote it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnreadableManifest {
    /// The backup id (the folder the manifest is in).
    pub id: String,
    /// Why it cannot be read.
    pub reason: String,
}

/// The backups under one cluster root: the manifests this code reads, and those it cannot read. Derefs to the
/// readable manifests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalogue {
    /// Manifests that parsed and passed their checks.
    pub manifests: Vec<Manifest>,
    /// Manifests that exist but cannot be read.
    pub unreadable: Vec<UnreadableManifest>,
}

impl Catalogue {
    /// Adds the manifest found in `backups/<id>/manifest.json`: readable, or kept as unreadable with the reason
    /// (it does not parse, fails its checks, has another format version, or names another id than its folder).
    pub fn add(&mut self, id: &str, bytes: &[u8]) {
        let reason = match Manifest::from_json(bytes) {
            Ok(m) if m.id == id => return self.manifests.push(m),
            Ok(m) => format!("the manifest's id {:?} is not the id of its folder backups/{id}/", m.id),
            Err(e) => e.to_string(),
        };
        self.unreadable.push(UnreadableManifest { id: id.to_owned(), reason });
    }
}

impl From<Vec<Manifest>> for Catalogue {
    fn from(manifests: Vec<Manifest>) -> Self {
        Self { manifests, unreadable: Vec::new() }
    }
}

impl std::ops::Deref for Catalogue {
    type Target = [Manifest];

    fn deref(&self) -> &[Manifest] {
        &self.manifests
    }
}

/// A manifest dated more than this after `now` is not ranked by time (see [`Held::FutureDated`]): a clock this far
/// ahead is wrong, and such a backup would otherwise count as the newest and push real ones out.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_mins(5);

/// What retention left alone although it might otherwise have deleted it, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Held {
    /// A manifest this operator cannot read: while it exists, no object under the root is deleted (it may
    /// reference any of them) and the manifest itself is kept.
    Unreadable {
        /// The backup id.
        id: String,
        /// Why it cannot be read.
        reason: String,
    },
    /// A backup of another cluster with the same namespace and name (a different UID), or of an unknown one
    /// (a manifest without a UID, or a policy without the current UID): never pruned, its objects kept.
    OtherCluster {
        /// The backup id.
        id: String,
        /// The UID in its manifest (empty when it has none).
        uid: String,
    },
    /// A backup dated more than [`MAX_CLOCK_SKEW`] after now: it does not count as newer than real backups and
    /// is never pruned while its date is in the future.
    FutureDated {
        /// The backup id.
        id: String,
        /// Its start time.
        start_time: Timestamp,
    },
}

impl Held {
    /// One line for logs, events and status messages, naming the backup and what to do.
    pub fn describe(&self) -> String {
        match self {
            Held::Unreadable { id, reason } => format!(
                "backup {id} has a manifest this operator cannot read ({reason}); no object is garbage-collected \
                 while it exists: upgrade the operator, or delete backups/{id}/ if it is not needed"
            ),
            Held::OtherCluster { id, uid } if uid.is_empty() => format!(
                "backup {id} records no cluster UID; it is kept: delete backups/{id}/manifest.json by hand if it is \
                 not needed"
            ),
            Held::OtherCluster { id, uid } => format!(
                "backup {id} belongs to another cluster with the same name (uid {uid}); it is kept: delete \
                 backups/{id}/manifest.json by hand if it is not needed"
            ),
            Held::FutureDated { id, start_time } => format!(
                "backup {id} is dated in the future ({start_time}); it is kept and does not count as the newest: \
                 check the clock of the pod that took it"
            ),
        }
    }
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
    /// What retention left alone and why.
    pub held: Vec<Held>,
}

/// Plans retention over the backups under one cluster root (`catalogue`) and every object under it.
///
/// Only backups of this cluster are ranked and pruned: manifests whose `cluster.uid` equals
/// [`RetentionPolicy::cluster_uid`] and that are not dated more than [`MAX_CLOCK_SKEW`] after `now`. Manifests of
/// another UID, manifests without a UID (an older format: whose they are cannot be told, so they are treated as
/// another cluster's and left for a person to delete), and far-future ones are kept with everything they
/// reference, and reported in [`RetentionPlan::held`]; with an empty `cluster_uid` nothing is pruned. While any
/// manifest is unreadable, no object is deleted at all (it may reference any of them); expired readable backups
/// still lose their manifests, and their files are collected once the unreadable manifest is gone.
pub fn plan_retention(
    catalogue: &Catalogue,
    objects: &[StoredObject],
    policy: &RetentionPolicy,
    now: Timestamp,
) -> RetentionPlan {
    let mut held: Vec<Held> = Vec::new();
    let horizon = crate::schedule::plus(now, MAX_CLOCK_SKEW);
    let mut ranked: Vec<&Manifest> = Vec::new();
    for m in &catalogue.manifests {
        if policy.cluster_uid.is_empty() || m.cluster.uid != policy.cluster_uid {
            held.push(Held::OtherCluster { id: m.id.clone(), uid: m.cluster.uid.clone() });
        } else if m.start_time > horizon {
            held.push(Held::FutureDated { id: m.id.clone(), start_time: m.start_time });
        } else {
            ranked.push(m);
        }
    }
    held.extend(catalogue.unreadable.iter().map(|u| Held::Unreadable { id: u.id.clone(), reason: u.reason.clone() }));
    held.sort_by(|a, b| held_id(a).cmp(held_id(b)));

    // Newest first; the id breaks ties deterministically.
    ranked.sort_by(|a, b| b.start_time.cmp(&a.start_time).then_with(|| b.id.cmp(&a.id)));
    let max_age = policy.max_age_seconds.map(Duration::from_secs);
    let mut deleted: Vec<&Manifest> = Vec::new();
    for (i, m) in ranked.iter().enumerate() {
        let beyond_count = policy.keep_last.is_some_and(|n| i >= usize::try_from(n.max(1)).unwrap_or(usize::MAX));
        let too_old =
            max_age.is_some_and(|age| crate::schedule::between(m.start_time, now).is_some_and(|elapsed| elapsed > age));
        if i > 0 && (beyond_count || too_old) {
            deleted.push(m);
        }
    }
    let deleted_ids: BTreeSet<&str> = deleted.iter().map(|m| m.id.as_str()).collect();
    // Every backup that stays, whoever it belongs to, keeps its folder and everything it references.
    let kept = catalogue.manifests.iter().filter(|m| !deleted_ids.contains(m.id.as_str()));
    let mut kept_ids: BTreeSet<&str> = catalogue.unreadable.iter().map(|u| u.id.as_str()).collect();
    let mut referenced: BTreeSet<&str> = BTreeSet::new();
    for m in kept {
        kept_ids.insert(m.id.as_str());
        referenced.extend(m.files().map(|f| f.key.as_str()));
    }
    let grace = Duration::from_secs(policy.grace_seconds);
    let old_enough = |o: &StoredObject| crate::schedule::between(o.last_modified, now).is_some_and(|age| age >= grace);

    let mut plan = RetentionPlan::default();
    let collect = catalogue.unreadable.is_empty();
    for o in objects.iter().filter(|_| collect) {
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
    plan.held = held;
    plan
}

fn held_id(h: &Held) -> &str {
    match h {
        Held::Unreadable { id, .. } | Held::OtherCluster { id, .. } | Held::FutureDated { id, .. } => id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::manifest::{BlockEntry, FileEntry, MANIFEST_VERSION, SourceCluster};
    use proptest::prelude::*;

    const ULIDS: [&str; 4] = [
        "01HZX3Q6W7Y8Z9ABCDEFGHJKM0",
        "01HZX3Q6W7Y8Z9ABCDEFGHJKM1",
        "01HZX3Q6W7Y8Z9ABCDEFGHJKM2",
        "01HZX3Q6W7Y8Z9ABCDEFGHJKM3",
    ];
    /// UID of the cluster whose retention is planned.
    const UID: &str = "5f0c6a2e-uid-of-this-cluster";

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn own() -> RetentionPolicy {
        RetentionPolicy { cluster_uid: UID.into(), ..RetentionPolicy::default() }
    }

    fn plan(ms: &[Manifest], objects: &[StoredObject], policy: &RetentionPolicy, now: i64) -> RetentionPlan {
        plan_retention(&Catalogue::from(ms.to_vec()), objects, policy, at(now))
    }

    fn manifest(id: &str, start: i64, blocks: &[usize]) -> Manifest {
        manifest_of(UID, id, start, blocks)
    }

    fn manifest_of(uid: &str, id: &str, start: i64, blocks: &[usize]) -> Manifest {
        Manifest {
            version: 1,
            id: id.into(),
            cluster: SourceCluster { uid: uid.into(), ..SourceCluster::default() },
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

    fn object(key: &str, modified: i64) -> StoredObject {
        StoredObject { key: key.to_owned(), size: 1, last_modified: at(modified) }
    }

    #[test]
    fn keep_last_deletes_older_backups_and_their_unshared_blocks() {
        let ms = [manifest("a", 100, &[0]), manifest("b", 200, &[0, 1]), manifest("c", 300, &[1, 2])];
        let policy = RetentionPolicy { keep_last: Some(2), ..own() };
        let p = plan(&ms, &objects_of(&ms, 0), &policy, 1000);
        assert_eq!(p.delete_backups, ["a"]);
        assert_eq!(p.delete_objects, [Layout::backup_file_key("a", ULIDS[0], "meta.json")]);
        let policy = RetentionPolicy { keep_last: Some(1), ..own() };
        let p = plan(&ms, &objects_of(&ms, 0), &policy, 1000);
        assert_eq!(p.delete_backups, ["a", "b"]);
        assert!(p.delete_objects.contains(&Layout::block_file_key(ULIDS[0], "index")));
        assert!(!p.delete_objects.contains(&Layout::block_file_key(ULIDS[1], "index")));
    }

    #[test]
    fn max_age_never_deletes_the_newest_backup() {
        let ms = [manifest("a", 100, &[0]), manifest("b", 200, &[1])];
        let policy = RetentionPolicy { max_age_seconds: Some(10), ..own() };
        let p = plan(&ms, &objects_of(&ms, 0), &policy, 100_000);
        assert_eq!(p.delete_backups, ["a"]);
    }

    #[test]
    fn leftovers_of_failed_backups_wait_for_the_grace_period() {
        let ms = [manifest("a", 100, &[0])];
        let mut objects = objects_of(&ms, 0);
        objects.push(StoredObject { key: Layout::block_file_key(ULIDS[3], "index"), size: 5, last_modified: at(990) });
        let failed = Layout::backup_file_key("failed", ULIDS[3], "meta.json");
        objects.push(StoredObject { key: failed.clone(), size: 5, last_modified: at(990) });
        objects.push(StoredObject { key: "unrelated/file".into(), size: 5, last_modified: at(0) });
        let policy = RetentionPolicy { grace_seconds: 60, ..own() };
        assert!(plan(&ms, &objects, &policy, 1000).delete_objects.is_empty());
        let p = plan(&ms, &objects, &policy, 2000);
        assert_eq!(p.delete_objects, [failed, Layout::block_file_key(ULIDS[3], "index")]);
        assert_eq!(p.freed_bytes, 10);
        assert!(p.held.is_empty(), "{:?}", p.held);
    }

    #[test]
    fn unreadable_or_newer_manifests_hold_back_garbage_collection() {
        let mut catalogue = Catalogue::from(vec![manifest("a", 100, &[0]), manifest("b", 200, &[1])]);
        let mut newer = serde_json::to_value(manifest("v2", 300, &[2])).unwrap();
        newer["version"] = serde_json::json!(MANIFEST_VERSION + 1);
        catalogue.add("v2", newer.to_string().as_bytes());
        catalogue.add("zz", b"{not json");
        // A manifest in another backup's folder would make retention delete or keep the wrong backup.
        catalogue.add("moved", &manifest("b", 200, &[1]).to_json());
        assert_eq!(catalogue.len(), 2, "only readable manifests deref");
        assert_eq!(catalogue.unreadable.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(), ["v2", "zz", "moved"]);
        assert!(catalogue.unreadable[0].reason.contains("version 2"), "{:?}", catalogue.unreadable[0]);

        let mut objects = objects_of(&catalogue, 0);
        // What the newer manifest may reference, and a leftover that would be collected without it.
        for key in [
            Layout::manifest_key("v2"),
            Layout::manifest_key("zz"),
            Layout::block_file_key(ULIDS[2], "index"),
            Layout::backup_file_key("v2", ULIDS[2], "meta.json"),
            Layout::backup_file_key("zz", ULIDS[3], "meta.json"),
            Layout::block_file_key(ULIDS[3], "index"),
        ] {
            objects.push(object(&key, 0));
        }
        let policy = RetentionPolicy { keep_last: Some(1), ..own() };
        let p = plan_retention(&catalogue, &objects, &policy, at(100_000));
        // The policy still expires readable backups (their manifests go), but nothing else is deleted.
        assert_eq!(p.delete_backups, ["a"]);
        assert!(p.delete_objects.is_empty(), "garbage collection must wait: {:?}", p.delete_objects);
        assert_eq!(p.freed_bytes, 0);
        let unreadable: Vec<&str> = p
            .held
            .iter()
            .filter_map(|h| match h {
                Held::Unreadable { id, .. } => Some(id.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(unreadable, ["moved", "v2", "zz"]);
        assert!(p.held.iter().all(|h| !h.describe().is_empty()));

        // Once they are gone, the leftovers go.
        let readable = Catalogue::from(catalogue.manifests.clone());
        let p = plan_retention(&readable, &objects, &policy, at(100_000));
        assert!(p.delete_objects.contains(&Layout::block_file_key(ULIDS[3], "index")), "{:?}", p.delete_objects);
    }

    #[test]
    fn only_backups_of_this_cluster_uid_are_pruned() {
        let ms = [
            manifest_of("", "legacy", 50, &[3]),
            manifest_of("uid-of-a-deleted-cluster", "old1", 100, &[0]),
            manifest_of("uid-of-a-deleted-cluster", "old2", 200, &[1]),
            manifest("new1", 300, &[2]),
            manifest("new2", 400, &[2]),
        ];
        let policy = RetentionPolicy { keep_last: Some(1), max_age_seconds: Some(1), ..own() };
        let p = plan(&ms, &objects_of(&ms, 0), &policy, 100_000);
        assert_eq!(p.delete_backups, ["new1"]);
        assert_eq!(p.delete_objects, [Layout::backup_file_key("new1", ULIDS[2], "meta.json")]);
        let foreign: Vec<&str> = p
            .held
            .iter()
            .filter_map(|h| match h {
                Held::OtherCluster { id, .. } => Some(id.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(foreign, ["legacy", "old1", "old2"]);

        // Without the current UID, nothing is pruned.
        let p = plan(&ms, &objects_of(&ms, 0), &RetentionPolicy { keep_last: Some(1), ..Default::default() }, 100_000);
        assert!(p.delete_backups.is_empty() && p.delete_objects.is_empty(), "{p:?}");
    }

    #[test]
    fn objects_of_a_cluster_root_nested_under_this_one_are_never_touched() {
        let ms = [manifest("a", 100, &[0])];
        let mut objects = objects_of(&ms, 0);
        let ours = Layout::new("p", "ns", "a");
        // Other clusters whose roots lie under `p/ns/a/` (a prefix of theirs can be anything).
        for nested in [
            Layout::new("p/ns/a", "backups", "x"),
            Layout::new("p/ns/a", "blocks", "y"),
            Layout::new("p/ns/a/backups/x", "files", "z"),
            Layout::new(&format!("p/ns/a/backups/x/files/{}", ULIDS[3]), "ns", "n"),
            Layout::new(&format!("p/ns/a/blocks/{}", ULIDS[3]), "chunks", "n"),
        ] {
            for key in [
                Layout::block_file_key(ULIDS[1], "index"),
                Layout::block_file_key(ULIDS[1], "chunks/000001"),
                Layout::backup_file_key("b", ULIDS[1], "meta.json"),
                Layout::manifest_key("b"),
            ] {
                let full = nested.full(&key);
                let relative = ours.relative(&full).unwrap();
                assert_eq!(Layout::classify(relative), KeyKind::Other, "{relative}");
                objects.push(object(relative, 0));
            }
        }
        let p = plan(&ms, &objects, &RetentionPolicy { keep_last: Some(1), ..own() }, 100_000);
        assert!(p.delete_objects.is_empty(), "{:?}", p.delete_objects);
    }

    #[test]
    fn a_far_future_manifest_does_not_make_a_new_backup_delete_itself() {
        let now = 1_000_000;
        let ms = [manifest("future", now + 365 * 86_400, &[0]), manifest("taken-now", now - 10, &[1])];
        let policy = RetentionPolicy { keep_last: Some(1), max_age_seconds: Some(60), ..own() };
        let p = plan(&ms, &objects_of(&ms, 0), &policy, now);
        assert!(p.delete_backups.is_empty(), "{:?}", p.delete_backups);
        assert!(p.delete_objects.is_empty(), "{:?}", p.delete_objects);
        assert!(matches!(p.held.as_slice(), [Held::FutureDated { id, .. }] if id == "future"), "{:?}", p.held);

        // Within the tolerated skew a manifest counts as it is dated.
        let skew = i64::try_from(MAX_CLOCK_SKEW.as_secs()).unwrap();
        let ms = [manifest("ahead", now + skew - 1, &[0]), manifest("older", now - 100, &[1])];
        let p = plan(&ms, &objects_of(&ms, 0), &policy, now);
        assert_eq!(p.delete_backups, ["older"]);
        assert!(p.held.is_empty(), "{:?}", p.held);
    }

    proptest! {
        #[test]
        fn retention_keeps_the_newest_backup_and_everything_kept_backups_reference(
            specs in proptest::collection::vec(
                (0i64..4000, proptest::collection::vec(0usize..4, 0..4), any::<bool>()), 0..8),
            keep_last in proptest::option::of(0u32..5),
            max_age in proptest::option::of(0u64..2000),
            grace in 0u64..2000,
            now in 0i64..3000,
            unreadable in any::<bool>(),
        ) {
            let ms: Vec<Manifest> = specs
                .iter()
                .enumerate()
                .map(|(i, (t, b, mine))| manifest_of(if *mine { UID } else { "other" }, &format!("b{i}"), *t, b))
                .collect();
            let mut objects = objects_of(&ms, 500);
            objects.push(StoredObject { key: Layout::block_file_key(ULIDS[3], "index"), size: 1, last_modified: at(0) });
            let mut catalogue = Catalogue::from(ms.clone());
            if unreadable {
                catalogue.add("broken", b"{}");
            }
            let policy = RetentionPolicy { keep_last, max_age_seconds: max_age, grace_seconds: grace, cluster_uid: UID.into() };
            let p = plan_retention(&catalogue, &objects, &policy, at(now));
            let horizon = at(now) + MAX_CLOCK_SKEW;
            let ranked = ms.iter().filter(|m| m.cluster.uid == UID && m.start_time <= horizon);
            if let Some(newest) = ranked.max_by(|a, b| a.start_time.cmp(&b.start_time).then_with(|| a.id.cmp(&b.id))) {
                prop_assert!(!p.delete_backups.contains(&newest.id));
            }
            for m in ms.iter().filter(|m| m.cluster.uid != UID || m.start_time > horizon) {
                prop_assert!(!p.delete_backups.contains(&m.id), "{} is not this cluster's or not yet due", m.id);
            }
            if unreadable {
                prop_assert!(p.delete_objects.is_empty());
            }
            let deleted: BTreeSet<&String> = p.delete_objects.iter().collect();
            for m in ms.iter().filter(|m| !p.delete_backups.contains(&m.id)) {
                for f in m.files() {
                    prop_assert!(!deleted.contains(&f.key), "kept backup {} loses {}", m.id, f.key);
                }
                prop_assert!(!deleted.contains(&Layout::manifest_key(&m.id)));
            }
            if let Some(n) = keep_last {
                let mine = ms.iter().filter(|m| m.cluster.uid == UID).count();
                let kept = mine - p.delete_backups.len();
                prop_assert!(kept >= usize::try_from(n.max(1)).unwrap().min(mine) || max_age.is_some());
            }
        }
    }
}
