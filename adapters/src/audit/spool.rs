//! The audit trail's durable local spool: records are appended to a JSON-lines file and flushed to disk before they
//! count as recorded; a checkpoint file says how far the database has them. After a crash or an outage of the
//! database, what is past the checkpoint is sent again (the store skips ids it has). I/O: two files.
//!
//! - `audit.jsonl`: one record per line, appended; a torn last line (a crash during a write) is ignored.
//! - `audit.checkpoint`: the byte offset up to which the database has every record, replaced atomically.
//!
//! When the database has everything, the file is truncated; under a steady load that never lets it catch up
//! exactly, the stored head is cut off once it passes [`COMPACT_AT`] (the unstored tail is copied into a new file),
//! so the spool holds about what is not yet stored. Offsets handed out are logical (they keep growing across
//! truncations), so a commit always means the same records.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead as _, BufReader, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use tsdb_operator_core::audit::AuditRecord;

/// Stored bytes at the head of the file beyond which the file is rewritten without them.
pub const COMPACT_AT: u64 = 64 << 20;

/// The spool files in one directory.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    file: File,
    /// Logical offset of the file's first byte.
    base: u64,
    /// Bytes in the file.
    len: u64,
    /// Bytes of the file the database has.
    checkpoint: u64,
    compact_at: u64,
}

/// A record read back from the spool, with the offset just past it.
pub type Spooled = (AuditRecord, u64);

impl Spool {
    /// Opens (or creates) the spool in `dir` and returns the records past the checkpoint, in order.
    pub fn open(dir: &Path) -> io::Result<(Self, Vec<Spooled>)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("audit.jsonl");
        let file = OpenOptions::new().create(true).read(true).append(true).open(&path)?;
        let checkpoint = std::fs::read_to_string(dir.join("audit.checkpoint"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let mut pending = Vec::new();
        let mut reader = BufReader::new(&file);
        let len = reader.seek(SeekFrom::End(0))?;
        let mut offset = checkpoint.min(len);
        reader.seek(SeekFrom::Start(offset))?;
        let mut good_end = offset;
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line)?;
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            offset += n as u64;
            match serde_json::from_str::<AuditRecord>(line.trim_end()) {
                Ok(record) => pending.push((record, offset)),
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable line of the audit spool"),
            }
            good_end = offset;
        }
        drop(reader);
        if good_end < len {
            // A torn last line: cut it off, so the next record starts on a line of its own.
            file.set_len(good_end)?;
            file.sync_data()?;
        }
        let spool = Self {
            dir: dir.to_owned(),
            file,
            base: 0,
            len: good_end,
            checkpoint: checkpoint.min(good_end),
            compact_at: COMPACT_AT,
        };
        Ok((spool, pending))
    }

    /// Rewrites the file once this many stored bytes are at its head (instead of [`COMPACT_AT`]).
    #[must_use]
    pub fn compacting_at(mut self, bytes: u64) -> Self {
        self.compact_at = bytes;
        self
    }

    /// Appends `records` and flushes them to disk; returns the (logical) offset just past each one.
    pub fn append(&mut self, records: &[AuditRecord]) -> io::Result<Vec<u64>> {
        let mut buffer = Vec::new();
        let mut ends = Vec::with_capacity(records.len());
        for record in records {
            serde_json::to_writer(&mut buffer, record)?;
            buffer.push(b'\n');
            ends.push(self.base + self.len + buffer.len() as u64);
        }
        self.file.write_all(&buffer)?;
        self.file.sync_data()?;
        self.len += buffer.len() as u64;
        Ok(ends)
    }

    /// Notes that the database has every record up to the logical `offset`; truncates the spool when that is all
    /// of it, and cuts the stored head off when it has grown past the compaction size.
    pub fn commit(&mut self, offset: u64) -> io::Result<()> {
        let at = offset.saturating_sub(self.base).min(self.len);
        if at <= self.checkpoint && at != self.len {
            return Ok(());
        }
        if at == self.len {
            // The checkpoint first: a crash between the two re-sends stored records (skipped by their ids) rather
            // than skipping unstored ones.
            self.write_checkpoint(0)?;
            self.file.set_len(0)?;
            self.file.sync_data()?;
            self.base += self.len;
            self.len = 0;
        } else if at >= self.compact_at {
            let path = self.dir.join("audit.jsonl");
            let tmp = self.dir.join("audit.jsonl.tmp");
            let mut tail = Vec::new();
            let mut source = File::open(&path)?;
            source.seek(SeekFrom::Start(at))?;
            io::Read::read_to_end(&mut source, &mut tail)?;
            let mut fresh = File::create(&tmp)?;
            fresh.write_all(&tail)?;
            fresh.sync_all()?;
            self.write_checkpoint(0)?;
            std::fs::rename(&tmp, &path)?;
            self.file = OpenOptions::new().read(true).append(true).open(&path)?;
            self.base += at;
            self.len -= at;
        } else {
            self.write_checkpoint(at)?;
        }
        Ok(())
    }

    fn write_checkpoint(&mut self, at: u64) -> io::Result<()> {
        let tmp = self.dir.join("audit.checkpoint.tmp");
        std::fs::write(&tmp, at.to_string())?;
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, self.dir.join("audit.checkpoint"))?;
        self.checkpoint = at;
        Ok(())
    }

    /// Bytes in the spool (stored and not yet stored records).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the spool is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tsdb_operator_core::audit::ActorKind;

    pub(crate) fn record(id: &str) -> AuditRecord {
        AuditRecord {
            event_id: id.to_owned(),
            timestamp: "2026-12-03T10:00:00Z".to_owned(),
            namespace: "obs".to_owned(),
            kind: "PrometheusCluster".to_owned(),
            cluster_name: "demo".to_owned(),
            object_uid: String::new(),
            operation: "update".to_owned(),
            operator: "alice".to_owned(),
            actor_kind: ActorKind::User,
            actor_groups: vec![],
            result: "success".to_owned(),
            detail: String::new(),
            diff: "[]".to_owned(),
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tsdb-spool-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn what_the_database_does_not_have_is_read_back_after_a_restart_and_a_torn_line_is_cut() {
        let d = dir("restart");
        let (mut spool, pending) = Spool::open(&d).unwrap();
        assert!(pending.is_empty());
        let ends = spool.append(&[record("a"), record("b"), record("c")]).unwrap();
        spool.commit(ends[0]).unwrap();
        drop(spool);
        // A crash in the middle of a write.
        OpenOptions::new().append(true).open(d.join("audit.jsonl")).unwrap().write_all(b"{\"eventId\":\"d").unwrap();
        let (mut spool, pending) = Spool::open(&d).unwrap();
        let ids: Vec<&str> = pending.iter().map(|(r, _)| r.event_id.as_str()).collect();
        assert_eq!(ids, ["b", "c"]);
        let ends = spool.append(&[record("e")]).unwrap();
        drop(spool);
        let (mut spool, pending) = Spool::open(&d).unwrap();
        let ids: Vec<&str> = pending.iter().map(|(r, _)| r.event_id.as_str()).collect();
        assert_eq!(ids, ["b", "c", "e"], "the torn record is gone, the next one is whole");
        spool.commit(ends[0]).unwrap();
        assert!(spool.is_empty(), "everything stored: the spool is truncated");
        drop(spool);
        assert!(Spool::open(&d).unwrap().1.is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn under_a_load_that_never_lets_it_catch_up_the_stored_head_is_cut_off() {
        let d = dir("compact");
        let (spool, _) = Spool::open(&d).unwrap();
        let mut spool = spool.compacting_at(2000);
        let mut unstored = Vec::new();
        let mut last_committed = String::new();
        for round in 0..50 {
            // Each round stores the oldest record while a new one is always waiting.
            let ends = spool.append(&[record(&format!("r{round}"))]).unwrap();
            unstored.push((format!("r{round}"), ends[0]));
            if unstored.len() > 1 {
                let (id, end) = unstored.remove(0);
                spool.commit(end).unwrap();
                last_committed = id;
            }
        }
        assert!(spool.len() < 2000 + 1000, "the file stays small: {} bytes", spool.len());
        drop(spool);
        let (_, pending) = Spool::open(&d).unwrap();
        let ids: Vec<&str> = pending.iter().map(|(r, _)| r.event_id.as_str()).collect();
        assert_eq!(ids, ["r49"], "only the unstored record is read back (last stored: {last_committed})");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
