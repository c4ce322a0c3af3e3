//! Step **decide**: whether a cluster's backup should start now. Pure: `now` is an argument, the jitter is
//! derived from the cluster's UID.
//!
//! # Rules
//! - At most one backup per cluster is in flight: nothing starts while one runs.
//! - An on-demand request (a new value of the `backup-now` annotation) runs even when the schedule is suspended.
//! - A scheduled backup is due at the first slot after the last scheduled start (or the cluster's creation), plus
//!   the cluster's jitter. A slot more than [`LATE_TOLERANCE`] in the past counts as missed: with `CatchUpOnce`
//!   one backup runs for all missed slots, with `Skip` the scheduler only moves on to the next slot. Either way,
//!   the next slot is computed from the time of that decision, so there is never more than one catch-up.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::crd::MissedRunPolicy;
use crate::schedule::Schedule;
use crate::schedule::{between, plus};

/// How late a slot may be acted on and still count as on time.
pub const LATE_TOLERANCE: Duration = Duration::from_mins(5);

/// Everything the decision needs.
#[derive(Clone, Debug)]
pub struct DecideInput<'a> {
    /// The current time.
    pub now: Timestamp,
    /// The parsed schedule; `None` when the spec has none (on-demand backups only).
    pub schedule: Option<&'a Schedule>,
    /// `spec.backup.suspend`.
    pub suspended: bool,
    /// When the last scheduled backup started (or a missed slot was skipped); else the cluster's creation time.
    pub anchor: Timestamp,
    /// `spec.backup.jitter`, zero when unset.
    pub max_jitter: Duration,
    /// Seed of the jitter (the cluster's UID).
    pub jitter_seed: &'a str,
    /// `spec.backup.missedRuns`.
    pub missed_runs: MissedRunPolicy,
    /// Whether a backup of this cluster is running.
    pub in_flight: bool,
    /// The value of the `backup-now` annotation, if set.
    pub requested: Option<&'a str>,
    /// The last request acted on (`status.backup.lastRequest`).
    pub last_request: Option<&'a str>,
}

/// Why a backup starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Its slot came.
    Scheduled {
        /// The slot.
        slot: Timestamp,
    },
    /// One or more slots were missed; this one run makes up for them.
    CatchUp {
        /// The first missed slot.
        slot: Timestamp,
    },
    /// A user asked for it with the `backup-now` annotation.
    OnDemand {
        /// The annotation's value.
        request: String,
    },
}

impl Trigger {
    /// `scheduled`, `catch-up` or `on-demand`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Trigger::Scheduled { .. } => "scheduled",
            Trigger::CatchUp { .. } => "catch-up",
            Trigger::OnDemand { .. } => "on-demand",
        }
    }
}

/// The decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Start a backup now.
    Run(Trigger),
    /// A slot was missed and the policy is `Skip`: record `now` as the last scheduled time, start nothing.
    SkipMissed {
        /// The missed slot.
        slot: Timestamp,
    },
    /// Nothing to do; look again at `next` (when known).
    Wait {
        /// When the next backup is due.
        next: Option<Timestamp>,
    },
}

/// Decides whether to start a backup now.
pub fn decide_backup(input: &DecideInput<'_>) -> Decision {
    if input.in_flight {
        return Decision::Wait { next: None };
    }
    if let Some(request) = input.requested.filter(|r| !r.is_empty())
        && input.last_request != Some(request)
    {
        return Decision::Run(Trigger::OnDemand { request: request.to_owned() });
    }
    let Some(schedule) = input.schedule.filter(|_| !input.suspended) else {
        return Decision::Wait { next: None };
    };
    let Some(slot) = schedule.next_after(input.anchor) else {
        return Decision::Wait { next: None };
    };
    let due = plus(slot, jitter(schedule, slot, input.max_jitter, input.jitter_seed));
    if due > input.now {
        return Decision::Wait { next: Some(due) };
    }
    let late = between(due, input.now).unwrap_or_default();
    if late <= LATE_TOLERANCE {
        return Decision::Run(Trigger::Scheduled { slot });
    }
    match input.missed_runs {
        MissedRunPolicy::CatchUpOnce => Decision::Run(Trigger::CatchUp { slot }),
        MissedRunPolicy::Skip => Decision::SkipMissed { slot },
    }
}

/// The cluster's jitter after `slot`: a fixed fraction (from the seed) of `max`, capped at half the time to the
/// slot after.
pub fn jitter(schedule: &Schedule, slot: Timestamp, max: Duration, seed: &str) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    let gap = schedule.next_after(slot).and_then(|next| between(slot, next)).unwrap_or(max.saturating_mul(2));
    let cap = max.min(gap / 2);
    let fraction = f64::from(fnv1a32(seed)) / f64::from(u32::MAX);
    Duration::from_secs_f64(cap.as_secs_f64() * fraction).min(cap)
}

fn fnv1a32(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::parse_schedule;
    use proptest::prelude::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn input<'a>(schedule: &'a Schedule, anchor: &str, now: &str) -> DecideInput<'a> {
        DecideInput {
            now: t(now),
            schedule: Some(schedule),
            suspended: false,
            anchor: t(anchor),
            max_jitter: Duration::ZERO,
            jitter_seed: "uid",
            missed_runs: MissedRunPolicy::CatchUpOnce,
            in_flight: false,
            requested: None,
            last_request: None,
        }
    }

    #[test]
    fn a_backup_is_due_at_its_slot_and_not_before() {
        let s = parse_schedule("0 * * * *").unwrap();
        let i = input(&s, "2026-01-01T00:00:00Z", "2026-01-01T00:59:59Z");
        assert_eq!(decide_backup(&i), Decision::Wait { next: Some(t("2026-01-01T01:00:00Z")) });
        let i = input(&s, "2026-01-01T00:00:00Z", "2026-01-01T01:00:10Z");
        assert_eq!(decide_backup(&i), Decision::Run(Trigger::Scheduled { slot: t("2026-01-01T01:00:00Z") }));
    }

    #[test]
    fn three_missed_slots_give_exactly_one_catch_up() {
        let s = parse_schedule("0 * * * *").unwrap();
        let i = input(&s, "2026-01-01T00:00:00Z", "2026-01-01T03:30:00Z");
        assert_eq!(decide_backup(&i), Decision::Run(Trigger::CatchUp { slot: t("2026-01-01T01:00:00Z") }));
        // The run records `now` as the anchor: the next decision waits for the next slot.
        let i = input(&s, "2026-01-01T03:30:00Z", "2026-01-01T03:30:05Z");
        assert_eq!(decide_backup(&i), Decision::Wait { next: Some(t("2026-01-01T04:00:00Z")) });
        let i = DecideInput {
            missed_runs: MissedRunPolicy::Skip,
            ..input(&s, "2026-01-01T00:00:00Z", "2026-01-01T03:30:00Z")
        };
        assert_eq!(decide_backup(&i), Decision::SkipMissed { slot: t("2026-01-01T01:00:00Z") });
    }

    #[test]
    fn in_flight_suspend_and_on_demand_requests() {
        let s = parse_schedule("0 * * * *").unwrap();
        let due = input(&s, "2026-01-01T00:00:00Z", "2026-01-01T01:00:10Z");
        assert_eq!(
            decide_backup(&DecideInput { in_flight: true, requested: Some("x"), ..due.clone() }),
            Decision::Wait { next: None }
        );
        assert_eq!(decide_backup(&DecideInput { suspended: true, ..due.clone() }), Decision::Wait { next: None });
        let on_demand = DecideInput { suspended: true, requested: Some("now-1"), ..due.clone() };
        assert_eq!(decide_backup(&on_demand), Decision::Run(Trigger::OnDemand { request: "now-1".into() }));
        let handled = DecideInput { requested: Some("now-1"), last_request: Some("now-1"), suspended: true, ..due };
        assert_eq!(decide_backup(&handled), Decision::Wait { next: None });
    }

    #[test]
    fn jitter_is_stable_per_cluster_spread_across_clusters_and_capped() {
        let s = parse_schedule("0 * * * *").unwrap();
        let slot = t("2026-01-01T01:00:00Z");
        let max = Duration::from_mins(10);
        assert_eq!(jitter(&s, slot, max, "a"), jitter(&s, slot, max, "a"));
        let spread: std::collections::BTreeSet<u64> =
            (0..100).map(|i| jitter(&s, slot, max, &format!("uid-{i}")).as_secs()).collect();
        assert!(spread.len() > 50, "{spread:?}");
        assert!(jitter(&s, slot, Duration::from_hours(2), "a") <= Duration::from_mins(30));
    }

    proptest! {
        #[test]
        fn a_run_is_never_decided_before_its_slot(anchor in 0i64..10_000_000, ahead in 0i64..1_000_000, j in 0u64..3600) {
            let s = parse_schedule("*/7 * * * *").unwrap();
            let anchor = Timestamp::from_second(1_700_000_000 + anchor).unwrap();
            let now = plus(anchor, Duration::from_secs(ahead.unsigned_abs()));
            let i = DecideInput { max_jitter: Duration::from_secs(j), ..input(&s, "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z") };
            let i = DecideInput { now, anchor, ..i };
            match decide_backup(&i) {
                Decision::Run(Trigger::Scheduled { slot } | Trigger::CatchUp { slot }) | Decision::SkipMissed { slot } => {
                    prop_assert!(slot > anchor && slot <= now);
                }
                Decision::Wait { next } => prop_assert!(next.is_none_or(|n| n > now)),
                Decision::Run(Trigger::OnDemand { .. }) => prop_assert!(false),
            }
        }
    }
}
