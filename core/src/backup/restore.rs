//! Step **plan** of a restore: where each object of a backup goes in a Prometheus data directory. Pure.
//!
//! Blocks go directly under the data directory (`<dest>/<ULID>/...`), where Prometheus loads them. The seed's
//! runbook extracted a tar of `<snapshot>/<ULID>/...` into `/prometheus/`, one level too deep, so Prometheus never
//! saw the data (a defect of the seed's restore; docs/backup.md).

use super::manifest::{Error, Manifest, Result, check_id, is_ulid};

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

/// Name of the journal a restore writes into the data directory before it moves the first block there, and
/// removes only after the last block and the marker are in place. A journal found at the next start means the
/// restore stopped half way: the blocks it names are removed and the restore runs again. (Its name starts like
/// the staging folder's, so [`ignorable_in_empty_dir`] ignores it.)
pub const RESTORE_JOURNAL: &str = ".tsdb-restore-journal";

/// What a restore in progress is moving into a data directory: the backup and its blocks. Written as text, the
/// id on the first line and one ULID per line after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreJournal {
    /// The backup being restored.
    pub id: String,
    /// The blocks it moves into the data directory (directory names, all ULIDs).
    pub blocks: Vec<String>,
}

impl RestoreJournal {
    /// The journal of restoring `manifest`.
    pub fn of(manifest: &Manifest) -> Self {
        Self { id: manifest.id.clone(), blocks: manifest.blocks.iter().map(|b| b.ulid.clone()).collect() }
    }

    /// The journal as written to disk.
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(27 * (self.blocks.len() + 1));
        for line in std::iter::once(&self.id).chain(&self.blocks) {
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// Reads a journal back. Every block must be a ULID, so that undoing a restore never removes anything but a
    /// block directory.
    pub fn parse(text: &str) -> Result<Self> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let id = lines.next().unwrap_or_default();
        check_id(id)?;
        let blocks: Vec<String> = lines.map(str::to_owned).collect();
        if let Some(bad) = blocks.iter().find(|b| !is_ulid(b)) {
            return Err(Error::Invalid { field: RESTORE_JOURNAL.to_owned(), value: bad.clone(), reason: "not a ULID" });
        }
        Ok(Self { id: id.to_owned(), blocks })
    }
}

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

    #[test]
    fn a_journal_round_trips_and_names_only_block_directories() {
        let journal = RestoreJournal::of(&sample());
        assert_eq!(journal.to_text(), "20260413T001900Z\n01HZX3Q6W7Y8Z9ABCDEFGHJKMN\n");
        assert_eq!(RestoreJournal::parse(&journal.to_text()), Ok(journal));
        assert!(RestoreJournal::parse("20260413T001900Z\n../../etc\n").is_err());
        assert!(RestoreJournal::parse("20260413T001900Z\nlost+found\n").is_err());
        assert!(RestoreJournal::parse("").is_err());
        assert!(ignorable_in_empty_dir(RESTORE_JOURNAL));
    }
}
