//! The audit trail's durable local spool: records are appended to a JSON-lines file and flushed to disk before they
//! count as recorded; a checkpoint file says how far the database has them. After a crash or an outage of the
//! database, what is past the checkpoint is sent again (the store skips ids it has). I/O: two files.
//!
//! - `audit.jsonl`: one record per line, appended; a torn last line (a crash during a write) is ignored.
//! - `audit.checkpoint`: the byte offset up to which the database has every record, replaced atomically.
//!
//! When the database has everything, the file is truncated, so the spool holds only what is not yet stored.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead as _, BufReader, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use tsdb_operator_core::audit::AuditRecord;

/// The spool files in one directory.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    file: File,
    len: u64,
    checkpoint: u64,
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
        let spool = Self { dir: dir.to_owned(), file, len: good_end, checkpoint: checkpoint.min(good_end) };
        Ok((spool, pending))
    }

    /// Appends `records` and flushes them to disk; returns the offset just past each one.
    pub fn append(&mut self, records: &[AuditRecord]) -> io::Result<Vec<u64>> {
        let mut buffer = Vec::new();
        let mut ends = Vec::with_capacity(records.len());
        for record in records {
            serde_json::to_writer(&mut buffer, record)?;
            buffer.push(b'\n');
            ends.push(self.len + buffer.len() as u64);
        }
        self.file.write_all(&buffer)?;
        self.file.sync_data()?;
        self.len += buffer.len() as u64;
        Ok(ends)
    }

    /// Notes that the database has every record up to `offset`; truncates the spool when that is all of it.
    pub fn commit(&mut self, offset: u64) -> io::Result<()> {
        if offset <= self.checkpoint && offset != self.len {
            return Ok(());
        }
        let offset = if offset >= self.len {
            self.file.set_len(0)?;
            self.file.sync_data()?;
            self.len = 0;
            0
        } else {
            offset
        };
        let tmp = self.dir.join("audit.checkpoint.tmp");
        std::fs::write(&tmp, offset.to_string())?;
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, self.dir.join("audit.checkpoint"))?;
        self.checkpoint = offset;
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
}
