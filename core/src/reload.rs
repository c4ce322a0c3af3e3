//! The agent sidecar's configuration reloads, decided: when to ask Prometheus to reload, and whether it did load
//! the configuration. Pure: the agent observes (the hash of the mounted files, Prometheus' answer, its
//! `/api/v1/status/runtimeinfo`) and carries the decision out.
//!
//! # Rules
//! - A changed configuration is reloaded on the next poll.
//! - A reload counts only when Prometheus loaded it: the answer to `/-/reload` is not enough. Prometheus' own
//!   view (`reloadConfigSuccess`, `lastConfigTime`) must agree, so a reload answered 200 that did not load
//!   (`reloadConfigSuccess: false`, or a `lastConfigTime` older than the request) is a failure.
//! - A failed reload is tried again without waiting for another change (a Secret or rule file the new
//!   configuration needs may arrive after it), first after one poll interval and then at most every
//!   [`MAX_RETRY`].
//! - Between reloads Prometheus' view wins: a failure it reports is shown, and a failure the agent recorded is
//!   cleared when Prometheus has loaded a configuration since (its container restarted with the fixed files).
//! - When Prometheus cannot be asked about itself (an old version without the endpoint, or not answering), the
//!   answer to `/-/reload` decides, as before.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// What the agent reports on `GET /status` (the wire type: the agent serves it, the operator reads it).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// Hash of the configuration files last seen.
    pub config_hash: String,
    /// Whether the last reload succeeded (`true` before the first reload: Prometheus loaded the config at start).
    pub last_reload_successful: bool,
    /// Prometheus' error message of the last failed reload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reload_error: Option<String>,
    /// Reloads attempted.
    pub reloads: u64,
}

/// The longest wait between two attempts to reload a configuration that failed.
pub const MAX_RETRY: Duration = Duration::from_mins(2);

/// What Prometheus says about its configuration (`GET /api/v1/status/runtimeinfo`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// `reloadConfigSuccess`: whether its last load of the configuration succeeded.
    pub success: bool,
    /// `lastConfigTime`: when it last loaded a configuration successfully (second resolution).
    pub at: Timestamp,
}

/// The reloader's state, kept by the agent between polls.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// The hash of the configuration last reloaded (or loaded at start).
    pub hash: String,
    /// Why the configuration is not the one Prometheus runs, when it is not.
    pub failure: Option<Failure>,
    /// Reloads asked for.
    pub attempts: u64,
}

/// A configuration Prometheus did not load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong, in words (Prometheus' message where it gave one).
    pub error: String,
    /// When it was found.
    pub since: Timestamp,
    /// Failed attempts in a row for this configuration.
    pub tries: u32,
    /// When to try again, if at all (a failure Prometheus reported between reloads is not retried by itself).
    pub retry_at: Option<Timestamp>,
}

/// The state at start: Prometheus loaded the configuration whose hash is `hash` (the init container or the kubelet
/// put the files there before it started).
pub fn started(hash: String) -> State {
    State { hash, failure: None, attempts: 0 }
}

/// Whether to ask Prometheus to reload now: the configuration changed, or the last attempt failed and its retry
/// is due.
pub fn should_reload(state: &State, hash: &str, now: Timestamp) -> bool {
    hash != state.hash || state.failure.as_ref().and_then(|f| f.retry_at).is_some_and(|at| at <= now)
}

/// The state after a reload of the configuration `hash` asked at `asked` and answered (`answer`); `loaded` is what
/// Prometheus said about itself right after, if it could be asked; `poll` is the agent's interval.
pub fn after_reload(
    state: &State,
    hash: &str,
    answer: Result<(), String>,
    loaded: Option<Loaded>,
    asked: Timestamp,
    now: Timestamp,
    poll: Duration,
) -> State {
    let problem = match (answer, loaded) {
        (Err(error), _) => Some(error),
        (Ok(()), Some(loaded)) if !loaded.success => Some(
            "Prometheus answered the reload but reports that loading the configuration failed \
             (runtimeinfo reloadConfigSuccess: false); see its log"
                .to_owned(),
        ),
        (Ok(()), Some(loaded)) if loaded.at < whole_second(asked) => Some(format!(
            "Prometheus answered the reload but still runs the configuration it loaded at {} \
             (runtimeinfo lastConfigTime); the reload was asked at {}",
            loaded.at,
            whole_second(asked)
        )),
        (Ok(()), _) => None,
    };
    let failure = problem.map(|error| {
        let same = state.failure.as_ref().filter(|_| state.hash == hash);
        let tries = same.map_or(1, |f| f.tries.saturating_add(1));
        Failure {
            error,
            since: same.map_or(now, |f| f.since),
            tries,
            retry_at: Some(now + signed(retry_after(poll, tries))),
        }
    });
    State { hash: hash.to_owned(), failure, attempts: state.attempts + 1 }
}

/// The state after Prometheus was asked about itself between reloads (`loaded`).
pub fn observed(state: &State, loaded: Loaded, now: Timestamp) -> State {
    match &state.failure {
        None if !loaded.success => State {
            failure: Some(Failure {
                error: "Prometheus reports that its last load of the configuration failed (runtimeinfo \
                        reloadConfigSuccess: false); see its log"
                    .to_owned(),
                since: now,
                tries: 0,
                retry_at: None,
            }),
            ..state.clone()
        },
        // Loaded since the failure was found, for example by a container restarted with the fixed files.
        Some(failure) if loaded.success && loaded.at >= whole_second(failure.since) => {
            State { failure: None, ..state.clone() }
        }
        _ => state.clone(),
    }
}

/// How long to wait before trying a failed configuration again: one poll interval after the first failure, then
/// doubling, at most [`MAX_RETRY`].
pub fn retry_after(poll: Duration, tries: u32) -> Duration {
    let doubled = poll.saturating_mul(1u32 << tries.saturating_sub(1).min(16));
    doubled.min(MAX_RETRY).max(poll.min(MAX_RETRY))
}

fn whole_second(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLL: Duration = Duration::from_secs(2);

    fn at(s: &str) -> Timestamp {
        s.parse().expect("a time")
    }

    fn loaded(success: bool, when: &str) -> Loaded {
        Loaded { success, at: at(when) }
    }

    #[test]
    fn a_changed_configuration_is_reloaded_once_and_a_loaded_one_is_success() {
        let state = started("a".into());
        let now = at("2026-12-06T08:00:00.500Z");
        assert!(!should_reload(&state, "a", now));
        assert!(should_reload(&state, "b", now));
        let after = after_reload(&state, "b", Ok(()), Some(loaded(true, "2026-12-06T08:00:00Z")), now, now, POLL);
        assert_eq!(after, State { hash: "b".into(), failure: None, attempts: 1 });
        assert!(!should_reload(&after, "b", now + SignedDuration::from_hours(1)));
    }

    #[test]
    fn a_reload_answered_ok_that_prometheus_did_not_load_is_a_failure() {
        let state = started("a".into());
        let now = at("2026-12-06T08:00:05Z");
        // Prometheus says its load failed.
        let after = after_reload(&state, "b", Ok(()), Some(loaded(false, "2026-12-06T07:00:00Z")), now, now, POLL);
        let failure = after.failure.expect("a failure");
        assert!(failure.error.contains("reloadConfigSuccess: false"), "{}", failure.error);
        // Prometheus still runs what it loaded an hour ago.
        let after = after_reload(&state, "b", Ok(()), Some(loaded(true, "2026-12-06T07:00:00Z")), now, now, POLL);
        let failure = after.failure.expect("a failure");
        assert!(failure.error.contains("still runs the configuration it loaded at 2026-12-06T07:00:00Z"));
        // Without Prometheus' view, the answer decides.
        assert_eq!(after_reload(&state, "b", Ok(()), None, now, now, POLL).failure, None);
    }

    #[test]
    fn a_failed_reload_is_retried_without_another_change_with_a_growing_wait() {
        let state = started("a".into());
        let t0 = at("2026-12-06T08:00:00Z");
        let failed = after_reload(&state, "b", Err("boom".into()), None, t0, t0, POLL);
        let first = failed.failure.clone().expect("a failure");
        assert_eq!((first.tries, first.retry_at), (1, Some(t0 + SignedDuration::from_secs(2))));
        assert!(!should_reload(&failed, "b", t0 + SignedDuration::from_secs(1)));
        assert!(should_reload(&failed, "b", t0 + SignedDuration::from_secs(2)));
        let t1 = t0 + SignedDuration::from_secs(2);
        let again = after_reload(&failed, "b", Err("boom".into()), None, t1, t1, POLL);
        let second = again.failure.clone().expect("a failure");
        assert_eq!((second.tries, second.since, second.retry_at), (2, t0, Some(t1 + SignedDuration::from_secs(4))));
        // The Secret the configuration needed arrived: the retry loads it.
        let t2 = t1 + SignedDuration::from_secs(4);
        let fixed = after_reload(&again, "b", Ok(()), Some(loaded(true, "2026-12-06T08:00:06Z")), t2, t2, POLL);
        assert_eq!(fixed.failure, None);
        assert_eq!(fixed.attempts, 3);
        // A new configuration starts counting again.
        let other = after_reload(&again, "c", Err("boom".into()), None, t2, t2, POLL);
        assert_eq!(other.failure.map(|f| (f.tries, f.since)), Some((1, t2)));
    }

    #[test]
    fn the_wait_doubles_up_to_the_bound() {
        let waits: Vec<u64> = (1..=10).map(|tries| retry_after(POLL, tries).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 64, 120, 120, 120, 120]);
        assert_eq!(retry_after(Duration::from_mins(5), 1), MAX_RETRY);
        assert_eq!(retry_after(POLL, u32::MAX), MAX_RETRY);
    }

    #[test]
    fn between_reloads_prometheus_view_wins() {
        let t0 = at("2026-12-06T08:00:00Z");
        let ok = started("a".into());
        let reported = observed(&ok, Loaded { success: false, at: at("2026-12-06T07:00:00Z") }, t0);
        let failure = reported.failure.clone().expect("a failure");
        assert_eq!((failure.tries, failure.retry_at), (0, None));
        assert!(!should_reload(&reported, "a", t0 + SignedDuration::from_hours(1)), "not retried by itself");
        // Loaded again (a restart with good files): cleared.
        let cleared = observed(&reported, Loaded { success: true, at: t0 }, t0 + SignedDuration::from_secs(3));
        assert_eq!(cleared.failure, None);

        // A failed reload stays failed while Prometheus runs the configuration from before it...
        let failed = after_reload(&ok, "b", Err("bad".into()), None, t0, t0, POLL);
        let still = observed(&failed, Loaded { success: true, at: at("2026-12-06T07:59:00Z") }, t0);
        assert_eq!(still, failed);
        // ...and is cleared once Prometheus loaded one after it.
        let later = Loaded { success: true, at: at("2026-12-06T08:00:30Z") };
        assert_eq!(observed(&failed, later, at("2026-12-06T08:00:31Z")).failure, None);
    }
}
