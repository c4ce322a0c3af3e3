//! The backup scheduler's decision for one cluster on one tick. Pure: the cluster as stored and `now` are inputs.
//!
//! The scheduler observes the cluster, calls [`decide_pass`] once, and carries out the [`Step`] it returns. Two
//! steps need one more observation, which the scheduler makes only then: [`Step::Follow`] needs the agent's
//! answer about the running job ([`super::follow::follow_job`] decides from it), and [`Step::Start`] needs the
//! cluster's ready replicas ([`choose_replica`] picks the one to ask). So the pods are listed only while a backup
//! runs or is due.
//!
//! # Rules
//! - `BackupHealthy` always says what `status.backup` implies; a missing or stale copy (the cluster controller
//!   wrote an old one) is repaired before anything else.
//! - A running backup is followed to its end, also when backups were disabled meanwhile.
//! - The schedule, jitter and retention are parsed here, once; a spec where one does not parse starts nothing
//!   (the cluster's status names the field: validation refuses it). Retention is never run with a part of it
//!   dropped: a `maxAge` that does not parse would otherwise keep every backup for ever, silently.
//! - At most one backup starts per second of the clock: the id is the start time, and an id already recorded is
//!   not started again.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;

use super::backup_id;
use super::decide::{DecideInput, Decision, Trigger, decide_backup};
use super::follow::implied_condition;
use super::status::{REASON_TOKEN_SECRET_NOT_OWNED, status_skipped};
use crate::constants::{annotations, conditions};
use crate::crd::{BackupStatus, PrometheusCluster, RunningBackup};
use crate::schedule::parse_schedule;

/// How many fire times [`Gauges::allowed_age_seconds`] looks ahead (a weekday schedule needs 6 to see its weekend).
const GAP_FIRES: usize = 8;

/// What the backup alerts compare, kept from the status so that they survive a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    /// The longest gap between two slots plus the jitter: how old the last successful backup may be before one
    /// was missed. `None` without a schedule, or while it is suspended.
    pub allowed_age_seconds: Option<i64>,
    /// When the last backup succeeded (Unix seconds), if one did.
    pub last_success_seconds: Option<i64>,
}

/// What to do on this tick.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Write this `BackupHealthy` condition (it was missing or stale), nothing else this tick.
    RepairCondition(Condition),
    /// Remove `BackupHealthy`: the agent token Secret conflict it reported is resolved and no backup finished yet.
    ClearCondition,
    /// A backup runs: ask the agent of its pod about it and hand the answer to
    /// [`super::follow::follow_job`].
    Follow(RunningBackup),
    /// Backups are off: forget the cluster's gauges.
    Disabled,
    /// The spec's schedule, jitter or retention does not parse: nothing starts.
    Invalid {
        /// The field and why, in words.
        message: String,
    },
    /// Nothing to start now.
    Wait {
        /// When the next backup is due, when known.
        next: Option<Timestamp>,
        /// The alerts' gauges.
        gauges: Gauges,
    },
    /// A slot was missed and `missedRuns: Skip`: write this `status.backup`, start nothing.
    SkipMissed {
        /// The missed slot.
        slot: Timestamp,
        /// The status to write.
        status: Box<BackupStatus>,
        /// The alerts' gauges.
        gauges: Gauges,
    },
    /// Start backup `id` on a ready replica ([`choose_replica`]); record it with
    /// [`super::status::status_started`].
    Start {
        /// The backup's id.
        id: String,
        /// Why it starts.
        trigger: Trigger,
        /// The alerts' gauges.
        gauges: Gauges,
        /// What the agent's retention after the backup keeps.
        retention: Retention,
    },
}

/// The decision for `cluster` at `now`.
pub fn decide_pass(cluster: &PrometheusCluster, now: Timestamp) -> Step {
    let previous = cluster.status.as_ref().and_then(|s| s.backup.clone()).unwrap_or_default();
    let present =
        cluster.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == conditions::BACKUP_HEALTHY));
    match implied_condition(present, &previous, cluster.metadata.generation) {
        Some(implied) if present.is_none_or(|c| c.status != implied.status || c.reason != implied.reason) => {
            return Step::RepairCondition(implied);
        }
        None if present.is_some_and(|c| c.reason == REASON_TOKEN_SECRET_NOT_OWNED) => return Step::ClearCondition,
        _ => {}
    }
    if let Some(running) = previous.running {
        return Step::Follow(running);
    }
    let spec = &cluster.spec.backup;
    if !spec.enabled {
        return Step::Disabled;
    }
    let Read { schedule, max_jitter, retention } = match read(spec) {
        Ok(read) => read,
        Err(message) => return Step::Invalid { message },
    };
    let created = cluster.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
    let anchor = previous.last_schedule_time.as_ref().map_or(created, |t| t.0);
    let gauges = Gauges {
        allowed_age_seconds: schedule
            .as_ref()
            .filter(|_| !spec.suspend)
            .and_then(|s| s.longest_gap(now, anchor, GAP_FIRES))
            .map(|gap| i64::try_from((gap + max_jitter).as_secs()).unwrap_or(i64::MAX)),
        last_success_seconds: previous.last_successful_backup_time.as_ref().map(|t| t.0.as_second()),
    };
    let uid = cluster.metadata.uid.as_deref().unwrap_or_default();
    let decision = decide_backup(&DecideInput {
        now,
        schedule: schedule.as_ref(),
        suspended: spec.suspend,
        anchor,
        max_jitter,
        jitter_seed: uid,
        missed_runs: spec.missed_runs.unwrap_or_default(),
        in_flight: false,
        requested: cluster
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(annotations::BACKUP_NOW))
            .map(String::as_str),
        last_request: previous.last_request.as_deref(),
    });
    match decision {
        Decision::Wait { next } => Step::Wait { next, gauges },
        Decision::SkipMissed { slot } => {
            Step::SkipMissed { slot, status: Box::new(status_skipped(&previous, now)), gauges }
        }
        Decision::Run(trigger) => {
            let id = backup_id(now);
            if previous.last_backup_id.as_deref() == Some(id.as_str()) {
                // Started in this very second already.
                return Step::Wait { next: None, gauges };
            }
            Step::Start { id, trigger, gauges, retention }
        }
    }
}

/// What a backup's retention keeps, read from `spec.backup.retention`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// `keepLast`: keep at most this many complete backups.
    pub keep_last: Option<u32>,
    /// `maxAge`: delete complete backups that started longer ago than this.
    pub max_age: Option<std::time::Duration>,
}

/// The parts of `spec.backup` the scheduler reads, parsed once.
struct Read {
    schedule: Option<crate::schedule::Schedule>,
    max_jitter: std::time::Duration,
    retention: Retention,
}

/// Reads `spec.backup`; `Err` names the first field that does not parse (validation, which refuses the spec,
/// names them all).
fn read(spec: &crate::crd::BackupSpec) -> Result<Read, String> {
    let schedule = match spec.schedule.as_str() {
        "" => None,
        text => Some(parse_schedule(text).map_err(|e| format!("spec.backup.schedule {text:?}: {e}"))?),
    };
    let duration = |field: &str, text: &str| {
        crate::duration::parse(text).map_err(|e| format!("spec.backup.{field} {text:?}: {e}"))
    };
    let max_jitter = match spec.jitter.as_deref().filter(|j| !j.is_empty()) {
        None => std::time::Duration::ZERO,
        Some(text) => duration("jitter", text)?,
    };
    let configured = spec.retention.clone().unwrap_or_default();
    let keep_last = match configured.keep_last {
        None => None,
        Some(n) => Some(
            u32::try_from(n)
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| format!("spec.backup.retention.keepLast {n}: must be >= 1"))?,
        ),
    };
    let max_age = match configured.max_age.as_deref().filter(|a| !a.is_empty()) {
        None => None,
        Some(text) => Some(duration("retention.maxAge", text)?),
    };
    Ok(Read { schedule, max_jitter, retention: Retention { keep_last, max_age } })
}

/// A pod of the cluster's own StatefulSet, as observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replica<'a> {
    /// The pod's name.
    pub name: &'a str,
    /// Whether it is running, ready, not being deleted and has an address.
    pub ready: bool,
}

/// The replica a backup is asked of: the first ready one by name (the same one on every tick while nothing
/// changes), or `None` while none is ready.
pub fn choose_replica<'a>(replicas: &[Replica<'a>]) -> Option<Replica<'a>> {
    replicas.iter().filter(|r| r.ready).min_by_key(|r| r.name).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::status::{backup_condition, status_finished, status_started};
    use crate::backup::{protocol::FailureReason, status::Outcome, to_time};
    use serde_json::json;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("a time")
    }

    fn cluster(backup: &serde_json::Value) -> PrometheusCluster {
        serde_json::from_value(json!({
            "apiVersion": "observability.merlionos.org/v1", "kind": "PrometheusCluster",
            "metadata": {"name": "prod", "namespace": "obs", "uid": "u1", "generation": 2,
                         "creationTimestamp": "2026-12-03T09:00:00Z"},
            "spec": {"backup": backup}
        }))
        .expect("a cluster")
    }

    fn hourly() -> PrometheusCluster {
        cluster(&json!({"enabled": true, "bucket": "b", "schedule": "0 * * * *"}))
    }

    #[test]
    fn retention_is_read_whole_or_nothing_starts() {
        let with = |retention: serde_json::Value| {
            let spec = json!({"enabled": true, "bucket": "b", "schedule": "0 * * * *", "retention": retention});
            decide_pass(&cluster(&spec), at("2026-12-03T10:00:30Z"))
        };
        let step = with(json!({"keepLast": 7, "maxAge": "30d"}));
        let Step::Start { retention, .. } = step else { panic!("{step:?}") };
        let max_age = Some(std::time::Duration::from_hours(30 * 24));
        assert_eq!(retention, Retention { keep_last: Some(7), max_age });
        // A maxAge that does not parse used to be dropped, which kept every backup for ever without a word.
        let step = with(json!({"keepLast": 7, "maxAge": "30 days"}));
        let Step::Invalid { message } = step else { panic!("{step:?}") };
        assert!(message.starts_with("spec.backup.retention.maxAge \"30 days\""), "{message}");
        let step = with(json!({"keepLast": 0}));
        let Step::Invalid { message } = step else { panic!("{step:?}") };
        assert!(message.contains("keepLast 0: must be >= 1"), "{message}");
    }

    #[test]
    fn a_due_slot_starts_a_backup_with_the_gauges_and_a_slot_ahead_waits() {
        let step = decide_pass(&hourly(), at("2026-12-03T10:00:30Z"));
        let Step::Start { id, trigger, gauges, retention } = step else { panic!("{step:?}") };
        assert_eq!(retention, Retention::default());
        assert_eq!(id, backup_id(at("2026-12-03T10:00:30Z")));
        assert_eq!(trigger, Trigger::Scheduled { slot: at("2026-12-03T10:00:00Z") });
        assert_eq!(gauges, Gauges { allowed_age_seconds: Some(3600), last_success_seconds: None });

        let mut waiting = hourly();
        let started = status_started(&BackupStatus::default(), "b", "prod-0", &trigger, at("2026-12-03T10:00:30Z"));
        let done = status_finished(
            &BackupStatus { running: None, ..started },
            &Outcome::Succeeded { id: "b".into(), total_bytes: 1, uploaded_bytes: 1 },
            at("2026-12-03T10:01:00Z"),
        );
        let condition = backup_condition(
            &Outcome::Succeeded { id: "b".into(), total_bytes: 1, uploaded_bytes: 1 },
            Some(2),
            at("2026-12-03T10:01:00Z"),
        );
        waiting.status = Some(crate::crd::PrometheusClusterStatus {
            backup: Some(done),
            conditions: vec![condition],
            ..Default::default()
        });
        let step = decide_pass(&waiting, at("2026-12-03T10:30:00Z"));
        let Step::Wait { next, gauges } = step else { panic!("{step:?}") };
        assert_eq!(next, Some(at("2026-12-03T11:00:00Z")));
        assert_eq!(gauges.last_success_seconds, Some(at("2026-12-03T10:01:00Z").as_second()));
    }

    #[test]
    fn a_missing_or_stale_condition_is_repaired_before_anything_else() {
        let mut pc = hourly();
        let failed = status_finished(
            &BackupStatus::default(),
            &Outcome::Failed { reason: FailureReason::StorageFailed, message: "503".into() },
            at("2026-12-03T10:01:00Z"),
        );
        pc.status = Some(crate::crd::PrometheusClusterStatus { backup: Some(failed), ..Default::default() });
        let step = decide_pass(&pc, at("2026-12-03T11:00:10Z"));
        let Step::RepairCondition(c) = step else { panic!("{step:?}") };
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "StorageFailed"));
    }

    #[test]
    fn a_running_backup_is_followed_also_when_backups_were_disabled() {
        let mut pc = cluster(&json!({"enabled": false}));
        let running =
            RunningBackup { id: "b1".into(), pod: "prod-0".into(), start_time: to_time(at("2026-12-03T10:00:00Z")) };
        pc.status = Some(crate::crd::PrometheusClusterStatus {
            backup: Some(BackupStatus { running: Some(running.clone()), ..Default::default() }),
            ..Default::default()
        });
        assert_eq!(decide_pass(&pc, at("2026-12-03T10:00:20Z")), Step::Follow(running));
        pc.status = None;
        assert_eq!(decide_pass(&pc, at("2026-12-03T10:00:20Z")), Step::Disabled);
    }

    #[test]
    fn a_schedule_or_jitter_that_does_not_parse_starts_nothing_and_says_which() {
        let pc = cluster(&json!({"enabled": true, "bucket": "b", "schedule": "every day"}));
        let Step::Invalid { message } = decide_pass(&pc, at("2026-12-03T10:00:00Z")) else { panic!() };
        assert!(message.starts_with("spec.backup.schedule \"every day\""), "{message}");
        let pc = cluster(&json!({"enabled": true, "bucket": "b", "schedule": "0 * * * *", "jitter": "soon"}));
        let Step::Invalid { message } = decide_pass(&pc, at("2026-12-03T10:00:00Z")) else { panic!() };
        assert!(message.starts_with("spec.backup.jitter \"soon\""), "{message}");
    }

    #[test]
    fn an_on_demand_request_runs_once_and_a_missed_slot_is_skipped_when_asked() {
        let mut pc = cluster(&json!({"enabled": true, "bucket": "b"}));
        pc.metadata.annotations = Some([(annotations::BACKUP_NOW.to_owned(), "r1".to_owned())].into());
        let step = decide_pass(&pc, at("2026-12-03T10:00:00Z"));
        assert!(matches!(step, Step::Start { trigger: Trigger::OnDemand { .. }, .. }), "{step:?}");
        pc.status = Some(crate::crd::PrometheusClusterStatus {
            backup: Some(BackupStatus { last_request: Some("r1".into()), ..Default::default() }),
            ..Default::default()
        });
        assert_eq!(decide_pass(&pc, at("2026-12-03T10:00:00Z")), Step::Wait { next: None, gauges: Gauges::default() });

        let skip = cluster(&json!({"enabled": true, "bucket": "b", "schedule": "0 * * * *", "missedRuns": "Skip"}));
        let step = decide_pass(&skip, at("2026-12-03T12:00:00Z"));
        let Step::SkipMissed { slot, status, .. } = step else { panic!("{step:?}") };
        assert_eq!(slot, at("2026-12-03T10:00:00Z"));
        assert_eq!(status.last_schedule_time, Some(to_time(at("2026-12-03T12:00:00Z"))));
    }

    #[test]
    fn a_backup_is_not_started_twice_in_one_second() {
        let mut pc = hourly();
        let now = at("2026-12-03T10:00:30Z");
        pc.status = Some(crate::crd::PrometheusClusterStatus {
            backup: Some(BackupStatus { last_backup_id: Some(backup_id(now)), ..Default::default() }),
            ..Default::default()
        });
        assert!(matches!(decide_pass(&pc, now), Step::Wait { next: None, .. }));
    }

    #[test]
    fn the_first_ready_replica_by_name_is_asked() {
        let r = |name, ready| Replica { name, ready };
        assert_eq!(choose_replica(&[r("p-2", true), r("p-0", false), r("p-1", true)]), Some(r("p-1", true)));
        assert_eq!(choose_replica(&[r("p-0", false)]), None);
    }
}
