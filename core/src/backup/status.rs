//! Step **status** of backups: `status.backup`, the seed's `status.lastBackupTime` and the `BackupHealthy`
//! condition after each event of a backup's life. Pure: `now` is an argument.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::decide::Trigger;
use super::protocol::{FailureReason, JobState, JobStatus};
use super::to_time;
use crate::constants::conditions;
use crate::crd::{BackupStatus, RequestedBackup, RunningBackup};

/// States of [`RequestedBackup::state`].
pub mod requested_states {
    /// Started, not finished.
    pub const RUNNING: &str = "Running";
    /// The backup was written.
    pub const SUCCEEDED: &str = "Succeeded";
    /// It failed; the message says why.
    pub const FAILED: &str = "Failed";
}

/// Reason of a True `BackupHealthy` condition.
pub const REASON_SUCCEEDED: &str = "BackupSucceeded";
/// Reason of a False `BackupHealthy` condition while a Secret the cluster does not own has the agent token
/// Secret's name (`<name>-agent-token`): no backup runs until it is renamed or deleted.
pub const REASON_TOKEN_SECRET_NOT_OWNED: &str = "TokenSecretNotOwned";

/// The status after a backup started.
pub fn status_started(previous: &BackupStatus, id: &str, pod: &str, trigger: &Trigger, now: Timestamp) -> BackupStatus {
    let mut s = previous.clone();
    match trigger {
        Trigger::Scheduled { .. } | Trigger::CatchUp { .. } => s.last_schedule_time = Some(to_time(now)),
        Trigger::OnDemand { request } => {
            s.last_request = Some(request.clone());
            s.last_requested_backup = Some(RequestedBackup {
                request: request.clone(),
                id: id.to_owned(),
                state: requested_states::RUNNING.to_owned(),
                message: None,
            });
        }
    }
    s.running = Some(RunningBackup { id: id.to_owned(), pod: pod.to_owned(), start_time: to_time(now) });
    s
}

/// The status after a missed slot was skipped.
pub fn status_skipped(previous: &BackupStatus, now: Timestamp) -> BackupStatus {
    BackupStatus { last_schedule_time: Some(to_time(now)), ..previous.clone() }
}

/// The outcome of a finished backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The manifest was written.
    Succeeded {
        /// Backup id.
        id: String,
        /// Bytes of all files.
        total_bytes: u64,
        /// Bytes uploaded.
        uploaded_bytes: u64,
    },
    /// It failed.
    Failed {
        /// Why.
        reason: FailureReason,
        /// What happened.
        message: String,
    },
}

impl Outcome {
    /// The outcome of a finished job; `None` while it runs. A job whose backup succeeded but whose retention
    /// failed counts as a success (the backup exists).
    pub fn of_job(job: &JobStatus) -> Option<Outcome> {
        match job.state {
            JobState::Running => None,
            JobState::Succeeded => Some(Outcome::Succeeded {
                id: job.id.clone(),
                total_bytes: job.total_bytes,
                uploaded_bytes: job.uploaded_bytes,
            }),
            JobState::Failed => Some(Outcome::Failed {
                reason: job.reason.unwrap_or(FailureReason::StorageFailed),
                message: job.message.clone().unwrap_or_default(),
            }),
        }
    }

    /// `success` or `error`, the seed's metric label.
    pub fn result_label(&self) -> &'static str {
        match self {
            Outcome::Succeeded { .. } => "success",
            Outcome::Failed { .. } => "error",
        }
    }
}

/// The status after a backup finished, and the seed's `lastBackupTime` (the time of the last attempt).
pub fn status_finished(previous: &BackupStatus, outcome: &Outcome, now: Timestamp) -> BackupStatus {
    let mut s = previous.clone();
    let finished = s.running.take().map(|r| r.id);
    if let Some(requested) = &mut s.last_requested_backup
        && requested.state == requested_states::RUNNING
        && finished.as_deref().is_none_or(|id| id == requested.id)
    {
        let (state, message) = match outcome {
            Outcome::Succeeded { .. } => (requested_states::SUCCEEDED, None),
            Outcome::Failed { reason, message } => {
                (requested_states::FAILED, Some(format!("{}: {message}", reason.as_str())))
            }
        };
        state.clone_into(&mut requested.state);
        requested.message = message;
    }
    match outcome {
        Outcome::Succeeded { id, total_bytes, uploaded_bytes } => {
            s.last_successful_backup_time = Some(to_time(now));
            s.last_backup_id = Some(id.clone());
            s.last_backup_bytes = Some(i64::try_from(*total_bytes).unwrap_or(i64::MAX));
            s.last_backup_uploaded_bytes = Some(i64::try_from(*uploaded_bytes).unwrap_or(i64::MAX));
        }
        Outcome::Failed { reason, message } => {
            s.last_failed_backup_time = Some(to_time(now));
            s.last_backup_error = Some(format!("{}: {message}", reason.as_str()));
        }
    }
    s
}

/// The `BackupHealthy` condition while the agent token Secret `secret` exists but is not owned by the cluster
/// `cluster`: the operator neither uses nor replaces it, so no backup runs.
pub fn token_secret_conflict_condition(
    secret: &str,
    cluster: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    Condition {
        type_: conditions::BACKUP_HEALTHY.to_owned(),
        status: "False".to_owned(),
        reason: REASON_TOKEN_SECRET_NOT_OWNED.to_owned(),
        message: format!(
            "failed to prepare the agent token: Secret {secret} exists and is not owned by PrometheusCluster \
             {cluster}, so it is neither used nor replaced; rename or delete that Secret and the operator creates \
             its own"
        ),
        observed_generation: generation,
        last_transition_time: to_time(now),
    }
}

/// The `BackupHealthy` condition for an outcome (its transition time is merged by the caller).
pub fn backup_condition(outcome: &Outcome, generation: Option<i64>, now: Timestamp) -> Condition {
    let (status, reason, message) = match outcome {
        Outcome::Succeeded { id, .. } => ("True", REASON_SUCCEEDED, format!("backup {id} completed")),
        Outcome::Failed { reason, message } => ("False", reason.as_str(), format!("the last backup failed: {message}")),
    };
    Condition {
        type_: conditions::BACKUP_HEALTHY.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: to_time(now),
    }
}

/// Keeps the previous transition time when the condition's status did not change.
pub fn merge_backup_condition(previous: Option<&Condition>, mut new: Condition) -> Condition {
    if let Some(p) = previous
        && p.status == new.status
    {
        new.last_transition_time = p.last_transition_time.clone();
    }
    new
}

/// The seed's `status.lastBackupTime` after an outcome: the time of the last finished attempt.
pub fn last_backup_time(now: Timestamp) -> Time {
    to_time(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    #[test]
    fn a_failure_keeps_the_last_success_and_sets_the_condition_false_with_the_reason() {
        let ok = Outcome::Succeeded { id: "A".into(), total_bytes: 10, uploaded_bytes: 4 };
        let s = status_finished(&BackupStatus::default(), &ok, now());
        assert_eq!(s.last_backup_id.as_deref(), Some("A"));
        assert_eq!(s.last_backup_uploaded_bytes, Some(4));
        let failed = Outcome::Failed { reason: FailureReason::SnapshotFailed, message: "admin APIs disabled".into() };
        let s2 = status_finished(&s, &failed, now());
        assert_eq!(s2.last_backup_id.as_deref(), Some("A"));
        assert_eq!(s2.last_backup_error.as_deref(), Some("SnapshotFailed: admin APIs disabled"));
        let c = backup_condition(&failed, Some(3), now());
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "SnapshotFailed"));
        let earlier = Condition { last_transition_time: to_time(Timestamp::UNIX_EPOCH), ..c.clone() };
        assert_eq!(merge_backup_condition(Some(&earlier), c).last_transition_time, earlier.last_transition_time);
    }

    #[test]
    fn starting_records_the_schedule_time_or_the_request() {
        let s = status_started(&BackupStatus::default(), "A", "demo-0", &Trigger::Scheduled { slot: now() }, now());
        assert!(s.last_schedule_time.is_some() && s.running.is_some());
        let s =
            status_started(&BackupStatus::default(), "A", "demo-0", &Trigger::OnDemand { request: "1".into() }, now());
        assert!(s.last_schedule_time.is_none());
        assert_eq!(s.last_request.as_deref(), Some("1"));
    }

    #[test]
    fn a_requested_backup_is_followed_to_its_outcome_and_a_scheduled_one_never_ends_it() {
        let request = Trigger::OnDemand { request: "api-1".into() };
        let s = status_started(&BackupStatus::default(), "A", "demo-0", &request, now());
        let requested = s.last_requested_backup.clone().unwrap();
        assert_eq!((requested.request.as_str(), requested.id.as_str()), ("api-1", "A"));
        assert_eq!(requested.state, requested_states::RUNNING);
        let failed = Outcome::Failed { reason: FailureReason::StorageFailed, message: "503".into() };
        let done = status_finished(&s, &failed, now());
        let requested = done.last_requested_backup.clone().unwrap();
        assert_eq!(requested.state, requested_states::FAILED);
        assert_eq!(requested.message.as_deref(), Some("StorageFailed: 503"));

        // A scheduled backup B that finishes later leaves the request's outcome as it was.
        let scheduled = status_started(&done, "B", "demo-0", &Trigger::Scheduled { slot: now() }, now());
        let ok = Outcome::Succeeded { id: "B".into(), total_bytes: 1, uploaded_bytes: 1 };
        let after = status_finished(&scheduled, &ok, now());
        assert_eq!(after.last_requested_backup.unwrap().state, requested_states::FAILED);
        assert_eq!(after.last_backup_id.as_deref(), Some("B"));
    }
}
