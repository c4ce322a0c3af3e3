//! Backups: the object layout and manifest format, when to take a backup, which backups and blocks to delete,
//! and how a backup maps onto a Prometheus data directory. Pure: no I/O, no clock (`now` is an argument).
//!
//! ```text
//!  operator (leader)                         agent sidecar (in the Prometheus pod)            object storage
//!  decide::decide_backup(now, ...) ──POST /backup──► snapshot via 127.0.0.1:9090 admin API
//!                                                  upload new block files  ───────────────────► <root>/blocks/<ULID>/...
//!                                                  manifest last           ───────────────────► <root>/backups/<id>/manifest.json
//!                                                  retention::plan_retention ── deletes ──────►
//!  poll GET /backup/<id> ◄──────────────────────── job status; snapshot directory always removed
//!  status + metrics + events
//! ```
//!
//! # Flow
//! 1. [`decide::decide_backup`] says whether a backup is due (schedule, one catch-up, jitter, suspend,
//!    on-demand requests, at most one in flight).
//! 2. The agent snapshots Prometheus, uploads each file that no earlier backup holds, then writes the
//!    [`manifest::Manifest`] (per-file SHA-256) last: a backup exists if and only if its manifest does.
//! 3. [`retention::plan_retention`] picks the backups to delete and the objects no remaining backup references.
//! 4. [`restore::plan_restore`] maps a verified manifest onto a data directory: blocks go directly under it.
//!
//! # Guarantees
//! - A manifest is only ever written after every object it references was uploaded, so listing manifests never
//!   shows a partial backup.
//! - Retention never deletes the newest complete backup and never deletes an object a kept backup references; it
//!   prunes only backups of the current cluster UID, holds garbage collection back while any manifest is
//!   unreadable, and ignores objects of other clusters' roots nested under its own (see [`retention`]).
//! - Every manifest path is checked ([`manifest::Manifest::check`]) before a restore writes anything: no absolute
//!   paths, no `..`, keys only inside the cluster's prefix.

pub mod decide;
pub mod follow;
pub mod manifest;
pub mod pass;
pub mod protocol;
pub mod restore;
pub mod retention;
pub mod status;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// The Kubernetes time of `t`, truncated to whole seconds as the API server stores it.
pub fn to_time(t: Timestamp) -> Time {
    Time(Timestamp::from_second(t.as_second()).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// The id of a backup started at `at`: `YYYYMMDDTHHMMSSZ` in UTC (the seed's key stamp), which sorts by time.
pub fn backup_id(at: Timestamp) -> String {
    at.strftime("%Y%m%dT%H%M%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_ids_use_the_seed_stamp_and_times_truncate_to_seconds() {
        let t: Timestamp = "2026-04-13T00:19:00.75Z".parse().unwrap();
        assert_eq!(backup_id(t), "20260413T001900Z");
        assert_eq!(to_time(t).0, "2026-04-13T00:19:00Z".parse::<Timestamp>().unwrap());
    }
}
