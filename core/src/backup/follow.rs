//! Following a running backup, and what a failed start means. Pure: the agent's answer and `now` are inputs.
//!
//! The backup scheduler asks the agent of the pod that takes the backup about the job on every tick, and hands
//! the answer to [`follow_job`], which says whether the backup finished and how, what to say about it, and how many
//! unanswered polls in a row there have been. [`start_failed`] says what a refused or failed start means, and
//! [`implied_condition`] what `BackupHealthy` says given `status.backup`.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;

use super::protocol::{FailureReason, JobState, JobStatus};
use super::status::{Outcome, backup_condition, merge_backup_condition};
use crate::crd::{BackupStatus, RunningBackup};
use crate::events::Action;

/// Polls in a row that the agent may leave unanswered before the backup counts as lost.
pub const MAX_POLL_FAILURES: u32 = 5;

/// What the scheduler learned about the running job on this tick.
#[derive(Clone, Debug, PartialEq)]
pub enum JobAnswer<'a> {
    /// The pod that takes the backup is gone, or no longer a pod of the cluster's own StatefulSet (its agent is
    /// not asked: the token goes to the cluster's pods only).
    PodGone,
    /// The agent's report.
    Job(&'a JobStatus),
    /// The agent does not know the job: it restarted, and no manifest was written by this run.
    Unknown,
    /// The agent did not answer.
    Unreachable {
        /// Why, in words.
        error: String,
    },
}

/// Everything [`follow_job`] decides from.
#[derive(Clone, Debug)]
pub struct FollowInput<'a> {
    /// The running backup, as recorded in `status.backup.running`.
    pub running: &'a RunningBackup,
    /// The cluster's name, for messages.
    pub cluster: &'a str,
    /// This tick's answer.
    pub answer: JobAnswer<'a>,
    /// Unanswered polls in a row before this one.
    pub poll_failures: u32,
    /// The current time.
    pub now: Timestamp,
    /// How long a backup may run before it is given up.
    pub max_duration: Duration,
}

/// What to do after a poll.
#[derive(Clone, Debug, PartialEq)]
pub struct FollowDecision {
    /// How the backup ended; `None` while it runs.
    pub outcome: Option<Outcome>,
    /// Unanswered polls in a row after this one (0 once answered or finished).
    pub poll_failures: u32,
    /// Events to publish now: what retention held back, once, when the job is seen finished.
    pub events: Vec<Action>,
}

/// Decides what a poll of the running job means.
pub fn follow_job(input: &FollowInput<'_>) -> FollowDecision {
    let running = input.running;
    let lost = |message: String| Some(Outcome::Failed { reason: FailureReason::AgentLost, message });
    let (outcome, poll_failures, events) = match &input.answer {
        JobAnswer::PodGone => (
            lost(format!(
                "pod {} that was taking the backup is gone or no longer a pod of StatefulSet {}",
                running.pod, input.cluster
            )),
            0,
            Vec::new(),
        ),
        JobAnswer::Unknown => (
            lost(format!(
                "the agent of {} no longer knows backup {} (it restarted); no manifest was written by this run",
                running.pod, running.id
            )),
            0,
            Vec::new(),
        ),
        JobAnswer::Unreachable { error } => {
            let failures = input.poll_failures.saturating_add(1);
            if failures >= MAX_POLL_FAILURES {
                (lost(format!("the agent of {} cannot be reached: {error}", running.pod)), 0, Vec::new())
            } else {
                (None, failures, Vec::new())
            }
        }
        JobAnswer::Job(job) => {
            let events = if job.state == JobState::Running {
                Vec::new()
            } else {
                job.retention_held
                    .iter()
                    .map(|held| Action::RetentionHeld { id: job.id.clone(), held: held.clone() })
                    .collect()
            };
            let ran_for = crate::schedule::between(running.start_time.0, input.now).unwrap_or_default();
            let outcome = match Outcome::of_job(job) {
                Some(o) => Some(o),
                None if ran_for > input.max_duration => {
                    lost(format!("the backup ran longer than {:?}; given up", input.max_duration))
                }
                None => None,
            };
            (outcome, 0, events)
        }
    };
    FollowDecision { outcome, poll_failures, events }
}

/// The outcome of a start the agent refused or failed, from its HTTP status (`None`: no answer at all): a bad
/// token or a busy, not ready agent (401, 403, 503) is `Rejected`, anything else `AgentLost`.
pub fn start_failed(http_status: Option<u16>, message: String) -> Outcome {
    let reason = match http_status {
        Some(401 | 403 | 503) => FailureReason::Rejected,
        _ => FailureReason::AgentLost,
    };
    Outcome::Failed { reason, message }
}

/// The `BackupHealthy` condition that `status.backup` implies (the last outcome), merged over `previous`; `None`
/// while no backup finished.
pub fn implied_condition(
    previous: Option<&Condition>,
    backup: &BackupStatus,
    generation: Option<i64>,
) -> Option<Condition> {
    let ok = backup.last_successful_backup_time.as_ref().map(|t| t.0);
    let failed = backup.last_failed_backup_time.as_ref().map(|t| t.0);
    let outcome = match (ok, failed) {
        (None, None) => return None,
        (Some(o), Some(f)) if f > o => failed_outcome(backup),
        (None, Some(_)) => failed_outcome(backup),
        _ => Outcome::Succeeded {
            id: backup.last_backup_id.clone().unwrap_or_default(),
            total_bytes: backup.last_backup_bytes.and_then(|v| u64::try_from(v).ok()).unwrap_or_default(),
            uploaded_bytes: backup.last_backup_uploaded_bytes.and_then(|v| u64::try_from(v).ok()).unwrap_or_default(),
        },
    };
    let when = ok.max(failed).unwrap_or_default();
    Some(merge_backup_condition(previous, backup_condition(&outcome, generation, when)))
}

/// The last failure as `status.backup.lastBackupError` records it: `<Reason>: <message>`
/// ([`super::status::status_finished`] writes it so). An error without a known reason counts as `StorageFailed`.
fn failed_outcome(backup: &BackupStatus) -> Outcome {
    let error = backup.last_backup_error.clone().unwrap_or_default();
    let parsed = error.split_once(": ").and_then(|(reason, message)| Some((FailureReason::parse(reason)?, message)));
    match parsed {
        Some((reason, message)) => Outcome::Failed { reason, message: message.to_owned() },
        None => Outcome::Failed { reason: FailureReason::StorageFailed, message: error },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::to_time;
    use crate::constants::conditions;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("a time")
    }

    fn running() -> RunningBackup {
        RunningBackup { id: "b1".into(), pod: "prod-0".into(), start_time: to_time(at("2026-12-03T10:00:00Z")) }
    }

    fn job(state: JobState) -> JobStatus {
        serde_json::from_value(serde_json::json!({
            "id": "b1", "state": state, "startTime": "2026-12-03T10:00:00Z", "totalBytes": 10, "uploadedBytes": 4,
            "retentionHeld": ["backups/x/manifest.json: unreadable"], "reason": "SnapshotFailed", "message": "disk full"
        }))
        .expect("a job")
    }

    fn follow(answer: JobAnswer<'_>, poll_failures: u32, now: &str) -> FollowDecision {
        let running = running();
        follow_job(&FollowInput {
            running: &running,
            cluster: "prod",
            answer,
            poll_failures,
            now: at(now),
            max_duration: Duration::from_hours(6),
        })
    }

    #[test]
    fn a_finished_job_gives_its_outcome_and_says_what_retention_held_back_once() {
        let done = job(JobState::Succeeded);
        let d = follow(JobAnswer::Job(&done), 2, "2026-12-03T10:05:00Z");
        assert_eq!(d.outcome, Some(Outcome::Succeeded { id: "b1".into(), total_bytes: 10, uploaded_bytes: 4 }));
        assert_eq!(d.poll_failures, 0);
        assert!(matches!(&d.events[..], [Action::RetentionHeld { id, .. }] if id == "b1"));

        let failed = job(JobState::Failed);
        let d = follow(JobAnswer::Job(&failed), 0, "2026-12-03T10:05:00Z");
        assert_eq!(
            d.outcome,
            Some(Outcome::Failed { reason: FailureReason::SnapshotFailed, message: "disk full".into() })
        );
    }

    #[test]
    fn a_running_job_is_followed_until_it_runs_too_long() {
        let still = job(JobState::Running);
        let d = follow(JobAnswer::Job(&still), 3, "2026-12-03T11:00:00Z");
        assert_eq!((d.outcome, d.poll_failures, d.events.len()), (None, 0, 0), "an answer resets the failures");
        let d = follow(JobAnswer::Job(&still), 0, "2026-12-03T16:00:01Z");
        assert!(matches!(d.outcome, Some(Outcome::Failed { reason: FailureReason::AgentLost, ref message })
            if message.contains("ran longer")));
    }

    #[test]
    fn an_agent_that_does_not_answer_is_given_up_after_five_polls_in_a_row() {
        let unreachable = || JobAnswer::Unreachable { error: "connection refused".into() };
        let mut failures = 0;
        for _ in 1..MAX_POLL_FAILURES {
            let d = follow(unreachable(), failures, "2026-12-03T10:01:00Z");
            assert_eq!(d.outcome, None);
            failures = d.poll_failures;
        }
        assert_eq!(failures, MAX_POLL_FAILURES - 1);
        let d = follow(unreachable(), failures, "2026-12-03T10:01:00Z");
        assert!(matches!(d.outcome, Some(Outcome::Failed { reason: FailureReason::AgentLost, ref message })
            if message.contains("cannot be reached: connection refused")));
        assert_eq!(d.poll_failures, 0);
    }

    #[test]
    fn a_gone_pod_or_a_forgotten_job_is_lost_at_once() {
        for answer in [JobAnswer::PodGone, JobAnswer::Unknown] {
            let d = follow(answer, 0, "2026-12-03T10:01:00Z");
            assert!(matches!(d.outcome, Some(Outcome::Failed { reason: FailureReason::AgentLost, .. })));
        }
    }

    #[test]
    fn a_refused_start_is_rejected_and_a_lost_one_agent_lost() {
        for (code, reason) in [
            (Some(401), FailureReason::Rejected),
            (Some(403), FailureReason::Rejected),
            (Some(503), FailureReason::Rejected),
            (Some(500), FailureReason::AgentLost),
            (None, FailureReason::AgentLost),
        ] {
            assert_eq!(start_failed(code, "m".into()), Outcome::Failed { reason, message: "m".into() });
        }
    }

    #[test]
    fn the_condition_follows_the_latest_outcome_with_its_typed_reason() {
        let mut b = BackupStatus::default();
        assert_eq!(implied_condition(None, &b, Some(1)), None, "nothing finished yet");
        b.last_successful_backup_time = Some(to_time(at("2026-12-03T09:00:00Z")));
        b.last_backup_id = Some("b0".into());
        let ok = implied_condition(None, &b, Some(1)).expect("a condition");
        assert_eq!((ok.type_.as_str(), ok.status.as_str()), (conditions::BACKUP_HEALTHY, "True"));

        b.last_failed_backup_time = Some(to_time(at("2026-12-03T10:00:00Z")));
        b.last_backup_error = Some("RetentionFailed: bucket: 403: Forbidden".into());
        let failed = implied_condition(Some(&ok), &b, Some(1)).expect("a condition");
        assert_eq!((failed.status.as_str(), failed.reason.as_str()), ("False", "RetentionFailed"));
        assert!(failed.message.contains("bucket: 403: Forbidden"), "the message keeps its own colons");

        b.last_backup_error = Some("something else".into());
        let unknown = implied_condition(None, &b, Some(1)).expect("a condition");
        assert_eq!(unknown.reason, "StorageFailed");
    }
}
