//! The backup format in object storage: where each object goes ([`Layout`]) and what a backup is
//! ([`Manifest`]). Pure data and checks.
//!
//! ```text
//! <prefix>/<namespace>/<cluster>/
//!     blocks/<ULID>/index                      immutable block files, uploaded once, shared by backups
//!     blocks/<ULID>/chunks/000001
//!     backups/<id>/files/<ULID>/meta.json      files Prometheus may rewrite (meta.json, tombstones): per backup
//!     backups/<id>/files/<ULID>/tombstones
//!     backups/<id>/manifest.json               written last; a backup exists iff this exists
//! ```
//!
//! Keys in a manifest are relative to the cluster root `<prefix>/<namespace>/<cluster>`, so a copied backup
//! still restores under another prefix.

use std::collections::BTreeSet;

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Version of the manifest format this code writes and reads.
pub const MANIFEST_VERSION: u32 = 1;
/// File name of the manifest inside `backups/<id>/`.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Folder of the shared, immutable block files.
pub const BLOCKS_DIR: &str = "blocks";
/// Folder of the backups.
pub const BACKUPS_DIR: &str = "backups";

/// Why a manifest or a key was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The manifest's version is not one this code reads.
    #[error("unsupported manifest version {found}: this tsdb-operator reads version {MANIFEST_VERSION}")]
    Version {
        /// The version found.
        found: u32,
    },
    /// The manifest does not parse.
    #[error("failed to parse the manifest: {reason}")]
    Parse {
        /// The parser's message.
        reason: String,
    },
    /// A field of the manifest is not well formed.
    #[error("invalid manifest: {field} {value:?}: {reason}")]
    Invalid {
        /// The field.
        field: String,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// `type Result<T> = Result<T, manifest::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The cluster a backup was taken from.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SourceCluster {
    /// Namespace of the PrometheusCluster.
    pub namespace: String,
    /// Name of the PrometheusCluster.
    pub name: String,
    /// UID of the PrometheusCluster.
    #[serde(default)]
    pub uid: String,
    /// The pod whose Prometheus was snapshotted.
    #[serde(default)]
    pub pod: String,
}

/// One complete backup: every file of every block with its size and SHA-256.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Format version ([`MANIFEST_VERSION`]).
    pub version: u32,
    /// Id of the backup (`YYYYMMDDTHHMMSSZ`).
    pub id: String,
    /// Where it was taken.
    pub cluster: SourceCluster,
    /// When the backup started.
    pub start_time: Timestamp,
    /// When its last file was uploaded (just before the manifest was written).
    pub completion_time: Timestamp,
    /// Name of the Prometheus snapshot it was made from.
    #[serde(default)]
    pub snapshot: String,
    /// The blocks, sorted by ULID.
    pub blocks: Vec<BlockEntry>,
    /// Bytes this backup uploaded itself; the rest was already in the bucket.
    #[serde(default)]
    pub uploaded_bytes: u64,
}

/// One TSDB block.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BlockEntry {
    /// The block's ULID (its directory name).
    pub ulid: String,
    /// Earliest sample time in the block (ms since the epoch), from `meta.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_time: Option<i64>,
    /// Latest sample time in the block (ms since the epoch, exclusive), from `meta.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_time: Option<i64>,
    /// Its files, sorted by path.
    pub files: Vec<FileEntry>,
}

/// One file of a block.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FileEntry {
    /// Path inside the block directory (`index`, `meta.json`, `chunks/000001`).
    pub path: String,
    /// Object key relative to the cluster root.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
}

impl Manifest {
    /// Parses and checks a manifest.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        #[derive(Deserialize)]
        struct VersionOnly {
            version: u32,
        }
        let version: VersionOnly = serde_json::from_slice(bytes).map_err(|e| Error::Parse { reason: e.to_string() })?;
        if version.version != MANIFEST_VERSION {
            return Err(Error::Version { found: version.version });
        }
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| Error::Parse { reason: e.to_string() })?;
        manifest.check()?;
        Ok(manifest)
    }

    /// The manifest as pretty JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings, numbers and vectors always serializes.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Total size of all files.
    pub fn total_bytes(&self) -> u64 {
        self.files().map(|f| f.size).sum()
    }

    /// Number of files.
    pub fn file_count(&self) -> usize {
        self.blocks.iter().map(|b| b.files.len()).sum()
    }

    /// Every file of every block.
    pub fn files(&self) -> impl Iterator<Item = &FileEntry> {
        self.blocks.iter().flat_map(|b| b.files.iter())
    }

    /// Checks everything a restore relies on: the id, ULIDs, relative paths without `..`, keys inside this
    /// backup's or the shared block folder, hex digests, no duplicates, and a `meta.json` in every block.
    pub fn check(&self) -> Result<()> {
        if self.version != MANIFEST_VERSION {
            return Err(Error::Version { found: self.version });
        }
        check_id(&self.id)?;
        let mut ulids = BTreeSet::new();
        for block in &self.blocks {
            if !is_ulid(&block.ulid) {
                return Err(invalid("blocks[].ulid", &block.ulid, "not a ULID"));
            }
            if !ulids.insert(block.ulid.as_str()) {
                return Err(invalid("blocks[].ulid", &block.ulid, "listed twice"));
            }
            let mut paths = BTreeSet::new();
            for file in &block.files {
                check_relative_path(&file.path)?;
                if !paths.insert(file.path.as_str()) {
                    return Err(invalid("files[].path", &file.path, "listed twice in one block"));
                }
                let shared = Layout::block_file_key(&block.ulid, &file.path);
                let own = Layout::backup_file_key(&self.id, &block.ulid, &file.path);
                if file.key != shared && file.key != own {
                    return Err(invalid(
                        "files[].key",
                        &file.key,
                        "must be blocks/<ULID>/<path> or backups/<id>/files/<ULID>/<path>",
                    ));
                }
                if file.sha256.len() != 64
                    || !file.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    return Err(invalid("files[].sha256", &file.sha256, "not a lowercase hex SHA-256"));
                }
            }
            if !paths.contains("meta.json") {
                return Err(invalid("blocks[].files", &block.ulid, "the block has no meta.json"));
            }
        }
        Ok(())
    }
}

fn invalid(field: &str, value: &str, reason: &'static str) -> Error {
    Error::Invalid { field: field.to_owned(), value: value.to_owned(), reason }
}

/// Checks a backup id: 1 to 64 characters of `[A-Za-z0-9._-]`, not starting with a dot.
pub fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok { Ok(()) } else { Err(invalid("id", id, "must be 1-64 characters of A-Z a-z 0-9 . _ -")) }
}

/// Checks a path inside a block: relative, `/`-separated, each segment of `[A-Za-z0-9._-]`, no `.` or `..`.
pub fn check_relative_path(path: &str) -> Result<()> {
    let ok = !path.is_empty()
        && path.len() <= 256
        && path.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
    if ok { Ok(()) } else { Err(invalid("files[].path", path, "must be a relative path without .. or odd characters")) }
}

/// Whether `s` is a ULID: 26 characters of Crockford's base32, the first at most `7`.
pub fn is_ulid(s: &str) -> bool {
    s.len() == 26
        && s.bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'H' | b'J' | b'K' | b'M' | b'N' | b'P'..=b'T' | b'V'..=b'Z'))
        && s.as_bytes()[0] <= b'7'
}

/// Whether a block file never changes once written (`index`, `chunks/*`): such files are stored once under
/// `blocks/` and shared. Prometheus may rewrite `meta.json` and `tombstones`, so those are stored per backup.
pub fn is_immutable(path: &str) -> bool {
    path == "index" || path.strip_prefix("chunks/").is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
}

/// Object keys of one cluster's backups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    root: String,
}

impl Layout {
    /// The layout under `<prefix>/<namespace>/<cluster>` (an empty prefix leaves no leading `/`).
    pub fn new(prefix: &str, namespace: &str, cluster: &str) -> Self {
        let mut parts: Vec<&str> = prefix.split('/').filter(|s| !s.is_empty()).collect();
        parts.push(namespace);
        parts.push(cluster);
        Self { root: parts.join("/") }
    }

    /// The layout of a root found in a listing (`<prefix>/<namespace>/<cluster>`).
    pub fn from_root(root: &str) -> Self {
        Self { root: root.trim_matches('/').to_owned() }
    }

    /// The cluster root of a full manifest key (`<root>/backups/<id>/manifest.json`) and the backup id.
    pub fn split_manifest_key(full: &str) -> Option<(Self, &str)> {
        let (root, rest) = full.rsplit_once(&format!("/{BACKUPS_DIR}/"))?;
        let id = rest.strip_suffix(MANIFEST_FILE)?.strip_suffix('/')?;
        check_id(id).ok()?;
        Some((Self::from_root(root), id))
    }

    /// The cluster root, without a trailing `/`.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The full key of a key relative to the root.
    pub fn full(&self, relative: &str) -> String {
        format!("{}/{relative}", self.root)
    }

    /// A full key relative to the root, if it is under the root.
    pub fn relative<'a>(&self, full: &'a str) -> Option<&'a str> {
        full.strip_prefix(self.root.as_str())?.strip_prefix('/')
    }

    /// Relative key of a shared block file.
    pub fn block_file_key(ulid: &str, path: &str) -> String {
        format!("{BLOCKS_DIR}/{ulid}/{path}")
    }

    /// Relative key of a file stored with one backup.
    pub fn backup_file_key(id: &str, ulid: &str, path: &str) -> String {
        format!("{BACKUPS_DIR}/{id}/files/{ulid}/{path}")
    }

    /// Relative key of a backup's manifest.
    pub fn manifest_key(id: &str) -> String {
        format!("{BACKUPS_DIR}/{id}/{MANIFEST_FILE}")
    }

    /// The backup id of a relative manifest key.
    pub fn manifest_id(relative: &str) -> Option<&str> {
        let id =
            relative.strip_prefix(BACKUPS_DIR)?.strip_prefix('/')?.strip_suffix(MANIFEST_FILE)?.strip_suffix('/')?;
        check_id(id).ok().map(|()| id)
    }

    /// What a relative key is. Only the exact shapes this operator writes are recognised; anything else is
    /// [`KeyKind::Other`] and never touched:
    /// - `blocks/<ULID>/index` and `blocks/<ULID>/chunks/<file>`,
    /// - `backups/<id>/manifest.json`,
    /// - `backups/<id>/files/<ULID>/<file>` and `backups/<id>/files/<ULID>/<dir>/<file>`.
    ///
    /// A cluster root nested under this one (another cluster's prefix can be anything, `<this root>/backups/x`
    /// included) puts at least `<namespace>/<name>/` and a folder of its own between this root and its objects,
    /// so none of its keys has one of these shapes: this root's retention never deletes them.
    pub fn classify(relative: &str) -> KeyKind<'_> {
        if let Some(rest) = relative.strip_prefix(BLOCKS_DIR).and_then(|r| r.strip_prefix('/')) {
            return match rest.split_once('/') {
                Some((ulid, path)) if is_ulid(ulid) && is_immutable(path) => KeyKind::Block { ulid },
                _ => KeyKind::Other,
            };
        }
        let Some((id, file)) = relative
            .strip_prefix(BACKUPS_DIR)
            .and_then(|r| r.strip_prefix('/'))
            .and_then(|rest| rest.split_once('/'))
            .filter(|(id, _)| check_id(id).is_ok())
        else {
            return KeyKind::Other;
        };
        if file == MANIFEST_FILE {
            return KeyKind::Manifest { id };
        }
        let in_block = file.strip_prefix("files/").and_then(|f| f.split_once('/'));
        match in_block {
            Some((ulid, path))
                if is_ulid(ulid) && path.split('/').count() <= 2 && check_relative_path(path).is_ok() =>
            {
                KeyKind::BackupFile { id }
            }
            _ => KeyKind::Other,
        }
    }
}

/// What an object under a cluster root is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind<'a> {
    /// A shared block file.
    Block {
        /// The block.
        ulid: &'a str,
    },
    /// A backup's manifest.
    Manifest {
        /// The backup.
        id: &'a str,
    },
    /// A block file stored with one backup (`backups/<id>/files/<ULID>/...`).
    BackupFile {
        /// The backup.
        id: &'a str,
    },
    /// Something this operator did not write; never touched.
    Other,
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    const ULID: &str = "01HZX3Q6W7Y8Z9ABCDEFGHJKMN";

    pub(crate) fn sample() -> Manifest {
        let file = |path: &str, key: String| FileEntry { path: path.into(), key, size: 3, sha256: "a".repeat(64) };
        Manifest {
            version: 1,
            id: "20260413T001900Z".into(),
            cluster: SourceCluster { namespace: "ns".into(), name: "demo".into(), ..SourceCluster::default() },
            start_time: Timestamp::UNIX_EPOCH,
            completion_time: Timestamp::UNIX_EPOCH,
            snapshot: "snap".into(),
            blocks: vec![BlockEntry {
                ulid: ULID.into(),
                min_time: Some(0),
                max_time: Some(1),
                files: vec![
                    file("chunks/000001", Layout::block_file_key(ULID, "chunks/000001")),
                    file("index", Layout::block_file_key(ULID, "index")),
                    file("meta.json", Layout::backup_file_key("20260413T001900Z", ULID, "meta.json")),
                ],
            }],
            uploaded_bytes: 9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::sample;
    use super::*;

    const ULID: &str = "01HZX3Q6W7Y8Z9ABCDEFGHJKMN";

    #[test]
    fn a_written_manifest_reads_back_and_passes_its_checks() {
        let m = sample();
        assert_eq!(Manifest::from_json(&m.to_json()).unwrap(), m);
        assert_eq!(m.total_bytes(), 9);
        assert_eq!(m.file_count(), 3);
    }

    /// Times in manifests are RFC 3339 in UTC with `Z`, as earlier releases wrote them (fractional seconds now
    /// without trailing zeros); the offsets and nine-digit fractions that other writers use read as the same instant.
    #[test]
    fn manifest_times_keep_their_wire_format() {
        let mut m = sample();
        m.start_time = "2026-04-13T00:19:00Z".parse().unwrap();
        m.completion_time = "2026-04-13T00:19:07.25Z".parse().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
        assert_eq!(json["startTime"], "2026-04-13T00:19:00Z");
        assert_eq!(json["completionTime"], "2026-04-13T00:19:07.25Z");
        let mut other = json.clone();
        other["startTime"] = "2026-04-13T08:19:00+08:00".into();
        other["completionTime"] = "2026-04-13T00:19:07.250000000Z".into();
        assert_eq!(Manifest::from_json(&serde_json::to_vec(&other).unwrap()).unwrap(), m);
    }

    #[test]
    fn manifests_with_escaping_paths_or_foreign_keys_are_rejected() {
        let mut m = sample();
        m.blocks[0].files[0].path = "../../etc/passwd".into();
        assert!(m.check().is_err());
        let mut m = sample();
        m.blocks[0].files[0].key = "blocks/OTHER/chunks/000001".into();
        assert!(m.check().is_err());
        let mut m = sample();
        m.blocks[0].ulid = "not-a-ulid".into();
        assert!(m.check().is_err());
        let mut m = sample();
        m.blocks[0].files.retain(|f| f.path != "meta.json");
        assert!(m.check().is_err());
        let mut m = sample();
        m.version = 2;
        assert_eq!(Manifest::from_json(&m.to_json()), Err(Error::Version { found: 2 }));
    }

    #[test]
    fn keys_are_laid_out_under_prefix_namespace_and_cluster() {
        let l = Layout::new("/p/", "ns", "demo");
        assert_eq!(l.root(), "p/ns/demo");
        assert_eq!(Layout::new("", "ns", "demo").root(), "ns/demo");
        assert_eq!(l.full(&Layout::manifest_key("X")), "p/ns/demo/backups/X/manifest.json");
        assert_eq!(l.relative("p/ns/demo/blocks/a"), Some("blocks/a"));
        assert_eq!(l.relative("p/ns/demo2/blocks/a"), None);
        assert_eq!(Layout::manifest_id("backups/X/manifest.json"), Some("X"));
        let (root, id) = Layout::split_manifest_key("p/ns/demo/backups/X/manifest.json").unwrap();
        assert_eq!((root.root(), id), ("p/ns/demo", "X"));
        assert_eq!(Layout::classify(&Layout::block_file_key(ULID, "index")), KeyKind::Block { ulid: ULID });
        assert_eq!(Layout::classify("backups/X/manifest.json"), KeyKind::Manifest { id: "X" });
        assert_eq!(Layout::classify(&Layout::backup_file_key("X", ULID, "meta.json")), KeyKind::BackupFile { id: "X" });
        assert_eq!(Layout::classify("backups/X/files/a"), KeyKind::Other);
        assert_eq!(Layout::classify(&format!("blocks/{ULID}/other")), KeyKind::Other);
        assert_eq!(Layout::classify("something/else"), KeyKind::Other);
    }

    #[test]
    fn only_index_and_chunks_are_shared_between_backups() {
        assert!(is_immutable("index"));
        assert!(is_immutable("chunks/000001"));
        assert!(!is_immutable("meta.json"));
        assert!(!is_immutable("tombstones"));
        assert!(!is_immutable("chunks/"));
    }
}
