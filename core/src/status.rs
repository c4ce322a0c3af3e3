//! Step `status`: phase and conditions of a PrometheusCluster from what was observed. Pure: `now` is an argument.
//!
//! # Phases (the seed's semantics, plus `Failed` and `Degraded`)
//! - `Failed`: the spec is invalid, or no replica is ready and a problem explains why (missing Secret, containers
//!   that cannot start).
//! - `Degraded`: replicas run, but a problem is reported (missing Secret, failing container, rejected config).
//! - `Scaling`: the StatefulSet's replica count differs from the spec, or a cluster that was up has more or fewer
//!   pods than the spec asks for, until the new replicas are ready.
//! - `Provisioning`: the StatefulSet does not exist yet, or fewer replicas than desired are ready.
//! - `Active`: all desired replicas are ready and up to date.
//!
//! # Conditions
//! `Available`, `Progressing`, `Degraded` and `Paused` follow Kubernetes conventions: `True`/`False`, a CamelCase
//! reason, `observedGeneration`, and a `lastTransitionTime` that is kept while the condition's status is unchanged.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::constants::{conditions, reasons};
use crate::crd::{Phase, PrometheusCluster, PrometheusClusterStatus};

/// A problem that keeps the cluster from working as specified, found by the adapters or the validator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// CamelCase reason, one of [`crate::constants::reasons`].
    pub reason: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Everything the status is computed from.
#[derive(Clone, Debug)]
pub struct StatusInput<'a> {
    /// The cluster, with its previous status.
    pub cluster: &'a PrometheusCluster,
    /// The observed StatefulSet, if it exists.
    pub stateful_set: Option<&'a StatefulSet>,
    /// The cluster's pods.
    pub pods: &'a [Pod],
    /// Whether the spec passed validation; `Some(message)` when it did not.
    pub invalid_spec: Option<String>,
    /// Problems found while observing (missing Secrets, config reload failures).
    pub problems: &'a [Problem],
    /// Parts of the spec that were not carried out (a refused storage change, a failed apply): shown in `Degraded`
    /// like any problem, and `Progressing` never says the cluster matches the spec while there is one.
    pub unapplied: &'a [Problem],
    /// Volume claims still being expanded by the storage provider.
    pub resizing: &'a [String],
    /// The current time.
    pub now: Timestamp,
}

/// Container waiting reasons that mean the container cannot start without a change.
const FAILING_WAITING_REASONS: [&str; 7] = [
    "CrashLoopBackOff",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "ImageNotMapped",
];

/// Problems visible in the pods themselves: containers that cannot start.
pub fn observe_pod_problems(pods: &[Pod]) -> Vec<Problem> {
    let mut out = Vec::new();
    for pod in pods {
        let name = pod.metadata.name.as_deref().unwrap_or("?");
        let statuses = pod
            .status
            .iter()
            .flat_map(|s| s.init_container_statuses.iter().flatten().chain(s.container_statuses.iter().flatten()));
        for cs in statuses {
            if let Some(waiting) = cs.state.as_ref().and_then(|s| s.waiting.as_ref())
                && let Some(reason) = waiting.reason.as_deref()
                && FAILING_WAITING_REASONS.contains(&reason)
            {
                out.push(Problem {
                    reason: reasons::CONTAINER_FAILING.to_owned(),
                    message: format!(
                        "container {} of pod {name} is {reason}: {}",
                        cs.name,
                        waiting.message.as_deref().unwrap_or("no message")
                    ),
                });
            }
        }
    }
    out
}

/// The `Progressing` condition: what is under way, what was refused, or that the cluster matches the spec.
fn progressing_condition(input: &StatusInput<'_>, reason: Option<&str>, ready: i32, desired: i32) -> Condition {
    match reason {
        Some(reason) => {
            new_condition(conditions::PROGRESSING, true, reason, progressing_message(reason, ready, desired))
        }
        None if input.invalid_spec.is_none() && !input.unapplied.is_empty() => {
            let first = &input.unapplied[0];
            let message = input.unapplied.iter().map(|p| p.message.as_str()).collect::<Vec<_>>().join("; ");
            new_condition(conditions::PROGRESSING, false, &first.reason, format!("not carried out: {message}"))
        }
        None if !input.resizing.is_empty() => new_condition(
            conditions::PROGRESSING,
            true,
            reasons::RESIZING_VOLUMES,
            format!("expanding volume claims: {}", input.resizing.join(", ")),
        ),
        None => new_condition(
            conditions::PROGRESSING,
            false,
            reasons::RECONCILED,
            "the cluster matches the spec".to_owned(),
        ),
    }
}

/// Computes the new status. The seed fields the status step does not own (`lastBackupTime`,
/// `lastFailoverTime`) and conditions owned by other controllers (`BackupHealthy`) are carried over.
pub fn build_status(input: &StatusInput<'_>) -> PrometheusClusterStatus {
    let cluster = input.cluster;
    let previous = cluster.status.clone().unwrap_or_default();
    let generation = cluster.metadata.generation;
    let desired = cluster.spec.replicas.max(0);

    let sts_spec_replicas = input.stateful_set.and_then(|s| s.spec.as_ref()).and_then(|s| s.replicas);
    let sts_status = input.stateful_set.and_then(|s| s.status.as_ref());
    let ready = sts_status.and_then(|s| s.ready_replicas).unwrap_or(0);
    let current = sts_status.map_or(0, |s| s.replicas);
    let updated = sts_status.and_then(|s| s.updated_replicas).unwrap_or(0);
    let sts_observed_current = match (input.stateful_set, sts_status) {
        (Some(sts), Some(st)) => st.observed_generation == sts.metadata.generation,
        _ => false,
    };

    let mut problems: Vec<Problem> = input.unapplied.to_vec();
    problems.extend(input.problems.iter().cloned());
    problems.extend(observe_pod_problems(input.pods));

    let (phase, progressing_reason) = if let Some(msg) = &input.invalid_spec {
        problems.insert(0, Problem { reason: reasons::INVALID_SPEC.to_owned(), message: msg.clone() });
        (Phase::Failed, None)
    } else if input.stateful_set.is_none() {
        (Phase::Provisioning, Some(reasons::CREATING))
    } else if sts_spec_replicas != Some(desired)
        || current > desired
        || (current < desired && matches!(previous.phase, Some(Phase::Active | Phase::Scaling | Phase::Degraded)))
    {
        (Phase::Scaling, Some(reasons::SCALING))
    } else if ready < desired {
        let reason =
            if previous.phase == Some(Phase::Scaling) { reasons::SCALING } else { reasons::REPLICAS_NOT_READY };
        let phase = if previous.phase == Some(Phase::Scaling) { Phase::Scaling } else { Phase::Provisioning };
        (phase, Some(reason))
    } else if !sts_observed_current || updated < desired {
        (Phase::Provisioning, Some(reasons::ROLLING_UPDATE))
    } else {
        (Phase::Active, None)
    };

    let phase = match phase {
        Phase::Failed => Phase::Failed,
        _ if !problems.is_empty() && ready == 0 && input.stateful_set.is_some() => Phase::Failed,
        _ if !problems.is_empty() => Phase::Degraded,
        p => p,
    };

    let mut conds = Vec::new();
    conds.push(if ready >= desired && input.stateful_set.is_some() {
        new_condition(
            conditions::AVAILABLE,
            true,
            reasons::ALL_REPLICAS_READY,
            format!("{ready}/{desired} replicas are ready"),
        )
    } else {
        new_condition(
            conditions::AVAILABLE,
            false,
            reasons::REPLICAS_NOT_READY,
            format!("{ready}/{desired} replicas are ready"),
        )
    });
    conds.push(progressing_condition(input, progressing_reason, ready, desired));
    conds.push(match problems.first() {
        Some(p) => {
            let message = problems.iter().map(|p| p.message.as_str()).collect::<Vec<_>>().join("; ");
            new_condition(conditions::DEGRADED, true, &p.reason, message)
        }
        None => new_condition(conditions::DEGRADED, false, reasons::AS_EXPECTED, "no problems found".to_owned()),
    });
    conds.push(if cluster.spec.paused {
        new_condition(
            conditions::PAUSED,
            true,
            reasons::PAUSED,
            "spec.paused is true: the operator changes nothing".to_owned(),
        )
    } else {
        new_condition(conditions::PAUSED, false, reasons::NOT_PAUSED, "the operator reconciles this cluster".to_owned())
    });
    // Keep conditions owned by other controllers.
    for c in &previous.conditions {
        if !conds.iter().any(|n| n.type_ == c.type_) {
            conds.push(c.clone());
        }
    }

    let conditions = merge_conditions(&previous.conditions, conds, generation, input.now);
    PrometheusClusterStatus {
        phase: Some(phase),
        ready_replicas: ready,
        last_backup_time: previous.last_backup_time,
        last_failover_time: previous.last_failover_time,
        observed_generation: generation,
        conditions,
        backup: previous.backup,
        discovery_namespaces: previous.discovery_namespaces,
    }
}

fn progressing_message(reason: &str, ready: i32, desired: i32) -> String {
    match reason {
        reasons::CREATING => "creating the StatefulSet".to_owned(),
        reasons::SCALING => format!("scaling to {desired} replicas ({ready} ready)"),
        reasons::ROLLING_UPDATE => "rolling pods to the new template".to_owned(),
        _ => format!("waiting for replicas: {ready}/{desired} ready"),
    }
}

/// A condition with `status` `True` or `False`; [`merge_conditions`] fills in `observedGeneration` and
/// `lastTransitionTime`.
pub fn new_condition(type_: &str, status: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: None,
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
    }
}

/// Sets `observedGeneration` and `lastTransitionTime` on `new`: the previous transition time is kept when the
/// condition's status did not change, otherwise it is `now`. The result is sorted by type.
pub fn merge_conditions(
    previous: &[Condition],
    new: Vec<Condition>,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = new
        .into_iter()
        .map(|mut c| {
            let old = previous.iter().find(|p| p.type_ == c.type_);
            if c.observed_generation.is_none() {
                c.observed_generation = generation;
            }
            c.last_transition_time = match old {
                Some(o) if o.status == c.status => o.last_transition_time.clone(),
                _ if c.last_transition_time.0 != Timestamp::UNIX_EPOCH && old.is_none() => c.last_transition_time,
                _ => Time(now),
            };
            c
        })
        .collect();
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// Sets the condition `type_` of `status` to `condition` (its `observedGeneration` and `lastTransitionTime` as
/// [`merge_conditions`] sets them against the cluster's previous status), or removes it when `condition` is
/// `None`. Conditions stay sorted by type.
pub fn set_condition(
    status: &mut PrometheusClusterStatus,
    cluster: &PrometheusCluster,
    type_: &str,
    condition: Option<Condition>,
    now: Timestamp,
) {
    status.conditions.retain(|c| c.type_ != type_);
    let Some(condition) = condition else { return };
    let previous = cluster.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    status.conditions.extend(merge_conditions(previous, vec![condition], cluster.metadata.generation, now));
    status.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// The status after a reconcile failed with `error` (already rendered with its causes) before it could say
/// anything else: the previous status, with `Progressing=False` and `Degraded=True` carrying
/// [`reasons::RECONCILE_FAILED`] and the error, and an `Active` phase turned `Degraded`, so the status never goes on
/// saying the cluster matches the spec. Unchanged when the previous status already reports this error (in either
/// reason, so a failed apply that was reported with [`reasons::APPLY_FAILED`] is not written twice).
pub fn build_failure_status(
    previous: Option<&PrometheusClusterStatus>,
    generation: Option<i64>,
    error: &str,
    now: Timestamp,
) -> PrometheusClusterStatus {
    let previous = previous.cloned().unwrap_or_default();
    let reported = previous
        .conditions
        .iter()
        .any(|c| c.type_ == conditions::PROGRESSING && c.status == "False" && c.message.contains(error));
    if reported {
        return previous;
    }
    let message = format!("not carried out: {error}");
    let ours = [conditions::PROGRESSING, conditions::DEGRADED];
    let mut conditions: Vec<Condition> =
        previous.conditions.iter().filter(|c| !ours.contains(&c.type_.as_str())).cloned().collect();
    let new = merge_conditions(
        &previous.conditions,
        vec![
            new_condition(conditions::PROGRESSING, false, reasons::RECONCILE_FAILED, message.clone()),
            new_condition(conditions::DEGRADED, true, reasons::RECONCILE_FAILED, message),
        ],
        generation,
        now,
    );
    conditions.extend(new);
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    let phase = match previous.phase {
        Some(Phase::Active) | None => Some(Phase::Degraded),
        other => other,
    };
    PrometheusClusterStatus { phase, conditions, ..previous }
}

/// Whether two statuses differ in anything but `lastTransitionTime` values that were kept; used to skip writes
/// that would change nothing.
pub fn status_changed(old: Option<&PrometheusClusterStatus>, new: &PrometheusClusterStatus) -> bool {
    old != Some(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::PrometheusClusterSpec;
    use k8s_openapi::api::apps::v1::{StatefulSetSpec, StatefulSetStatus};
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateWaiting, ContainerStatus, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn cluster(replicas: i32, phase: Option<Phase>) -> PrometheusCluster {
        let spec: PrometheusClusterSpec = serde_json::from_value(serde_json::json!({"replicas": replicas})).unwrap();
        let mut pc = PrometheusCluster::new("demo", spec);
        pc.metadata.generation = Some(3);
        pc.status = phase.map(|p| PrometheusClusterStatus { phase: Some(p), ..Default::default() });
        pc
    }

    fn sts(spec_replicas: i32, current: i32, ready: i32, updated: i32) -> StatefulSet {
        StatefulSet {
            metadata: ObjectMeta { generation: Some(1), ..Default::default() },
            spec: Some(StatefulSetSpec { replicas: Some(spec_replicas), ..Default::default() }),
            status: Some(StatefulSetStatus {
                replicas: current,
                ready_replicas: Some(ready),
                updated_replicas: Some(updated),
                observed_generation: Some(1),
                ..Default::default()
            }),
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn status_of(pc: &PrometheusCluster, sts: Option<&StatefulSet>, pods: &[Pod]) -> PrometheusClusterStatus {
        build_status(&StatusInput {
            cluster: pc,
            stateful_set: sts,
            pods,
            invalid_spec: None,
            problems: &[],
            unapplied: &[],
            resizing: &[],
            now: now(),
        })
    }

    fn condition<'a>(s: &'a PrometheusClusterStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn a_failed_reconcile_is_reported_once_and_never_reads_as_matching_the_spec() {
        let t = |s| Timestamp::from_second(s).unwrap();
        let previous = PrometheusClusterStatus {
            phase: Some(Phase::Active),
            conditions: merge_conditions(
                &[],
                vec![
                    new_condition(conditions::PROGRESSING, false, reasons::RECONCILED, "matches".to_owned()),
                    new_condition(conditions::AVAILABLE, true, "Ready", "1/1".to_owned()),
                ],
                Some(1),
                t(100),
            ),
            ..PrometheusClusterStatus::default()
        };
        let error = "storageclasses.storage.k8s.io \"fast\" is forbidden";
        let failed = build_failure_status(Some(&previous), Some(2), error, t(200));
        assert_eq!(failed.phase, Some(Phase::Degraded));
        let progressing = failed.conditions.iter().find(|c| c.type_ == conditions::PROGRESSING).unwrap();
        assert_eq!((progressing.status.as_str(), progressing.reason.as_str()), ("False", reasons::RECONCILE_FAILED));
        assert!(progressing.message.contains(error));
        let degraded = failed.conditions.iter().find(|c| c.type_ == conditions::DEGRADED).unwrap();
        assert_eq!((degraded.status.as_str(), degraded.last_transition_time.0), ("True", t(200)));
        let available = failed.conditions.iter().find(|c| c.type_ == conditions::AVAILABLE).unwrap();
        assert_eq!(available.last_transition_time.0, t(100), "other conditions are kept as they were");
        // The same error again: nothing to write.
        assert_eq!(build_failure_status(Some(&failed), Some(2), error, t(300)), failed);
    }

    #[test]
    fn a_refused_change_never_reads_as_matching_the_spec() {
        let pc = cluster(2, None);
        let refused = [Problem {
            reason: reasons::STORAGE_CHANGE_REFUSED.to_owned(),
            message: "spec.storage.size: cannot shrink the volumes from 30Gi to 20Gi".to_owned(),
        }];
        let s = build_status(&StatusInput {
            cluster: &pc,
            stateful_set: Some(&sts(2, 2, 2, 2)),
            pods: &[],
            invalid_spec: None,
            problems: &[],
            unapplied: &refused,
            resizing: &[],
            now: now(),
        });
        assert_eq!(s.phase, Some(Phase::Degraded));
        let progressing = condition(&s, conditions::PROGRESSING);
        assert_eq!((progressing.status.as_str(), progressing.reason.as_str()), ("False", "StorageChangeRefused"));
        assert_eq!(
            progressing.message,
            "not carried out: spec.storage.size: cannot shrink the volumes from 30Gi to 20Gi"
        );
        assert_eq!(condition(&s, conditions::DEGRADED).reason, "StorageChangeRefused");
    }

    #[test]
    fn claims_being_expanded_show_as_progressing() {
        let pc = cluster(2, None);
        let resizing = ["data-demo-0".to_owned()];
        let s = build_status(&StatusInput {
            cluster: &pc,
            stateful_set: Some(&sts(2, 2, 2, 2)),
            pods: &[],
            invalid_spec: None,
            problems: &[],
            unapplied: &[],
            resizing: &resizing,
            now: now(),
        });
        let progressing = condition(&s, conditions::PROGRESSING);
        assert_eq!((progressing.status.as_str(), progressing.reason.as_str()), ("True", "ResizingVolumes"));
        assert_eq!(progressing.message, "expanding volume claims: data-demo-0");
    }

    #[test]
    fn missing_statefulset_is_provisioning() {
        let s = status_of(&cluster(2, None), None, &[]);
        assert_eq!(s.phase, Some(Phase::Provisioning));
        assert_eq!(condition(&s, conditions::PROGRESSING).reason, reasons::CREATING);
        assert_eq!(s.observed_generation, Some(3));
    }

    #[test]
    fn all_ready_is_active_and_available() {
        let s = status_of(&cluster(2, None), Some(&sts(2, 2, 2, 2)), &[]);
        assert_eq!(s.phase, Some(Phase::Active));
        assert_eq!(s.ready_replicas, 2);
        assert_eq!(condition(&s, conditions::AVAILABLE).status, "True");
        assert_eq!(condition(&s, conditions::DEGRADED).status, "False");
    }

    #[test]
    fn replica_change_is_scaling_until_all_are_ready() {
        let pc = cluster(3, Some(Phase::Active));
        assert_eq!(status_of(&pc, Some(&sts(1, 1, 1, 1)), &[]).phase, Some(Phase::Scaling));
        let pc = cluster(3, Some(Phase::Active));
        assert_eq!(status_of(&pc, Some(&sts(3, 1, 1, 1)), &[]).phase, Some(Phase::Scaling), "after the apply");
        let pc = cluster(3, Some(Phase::Scaling));
        assert_eq!(status_of(&pc, Some(&sts(3, 2, 1, 2)), &[]).phase, Some(Phase::Scaling));
        assert_eq!(status_of(&pc, Some(&sts(3, 3, 2, 3)), &[]).phase, Some(Phase::Scaling));
        assert_eq!(status_of(&pc, Some(&sts(3, 3, 3, 3)), &[]).phase, Some(Phase::Active));
    }

    #[test]
    fn scale_down_is_scaling_while_pods_remain() {
        let pc = cluster(2, Some(Phase::Scaling));
        assert_eq!(status_of(&pc, Some(&sts(2, 3, 3, 3)), &[]).phase, Some(Phase::Scaling));
    }

    #[test]
    fn not_ready_replicas_are_provisioning() {
        assert_eq!(status_of(&cluster(2, None), Some(&sts(2, 2, 1, 2)), &[]).phase, Some(Phase::Provisioning));
        let creating = cluster(2, Some(Phase::Provisioning));
        assert_eq!(status_of(&creating, Some(&sts(2, 1, 0, 1)), &[]).phase, Some(Phase::Provisioning));
    }

    #[test]
    fn invalid_spec_is_failed_with_reason() {
        let pc = cluster(2, None);
        let s = build_status(&StatusInput {
            cluster: &pc,
            stateful_set: None,
            pods: &[],
            invalid_spec: Some("spec.replicas: Invalid value: 0: must be >= 1".into()),
            problems: &[],
            unapplied: &[],
            resizing: &[],
            now: now(),
        });
        assert_eq!(s.phase, Some(Phase::Failed));
        let d = condition(&s, conditions::DEGRADED);
        assert_eq!((d.status.as_str(), d.reason.as_str()), ("True", reasons::INVALID_SPEC));
        assert!(d.message.contains("must be >= 1"));
    }

    #[test]
    fn crash_looping_container_with_no_ready_replica_is_failed() {
        let pod = Pod {
            metadata: ObjectMeta { name: Some("demo-0".into()), ..Default::default() },
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "prometheus".into(),
                    state: Some(ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some("CrashLoopBackOff".into()),
                            message: Some("back-off 10s".into()),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = status_of(&cluster(1, None), Some(&sts(1, 1, 0, 1)), std::slice::from_ref(&pod));
        assert_eq!(s.phase, Some(Phase::Failed));
        assert!(condition(&s, conditions::DEGRADED).message.contains("demo-0"));
        // With one replica still ready the cluster is degraded, not failed.
        let s = status_of(&cluster(2, None), Some(&sts(2, 2, 1, 2)), &[pod]);
        assert_eq!(s.phase, Some(Phase::Degraded));
    }

    #[test]
    fn transition_time_is_kept_while_status_is_unchanged() {
        let mut pc = cluster(2, None);
        let first = status_of(&pc, Some(&sts(2, 2, 2, 2)), &[]);
        pc.status = Some(first.clone());
        let later = build_status(&StatusInput {
            cluster: &pc,
            stateful_set: Some(&sts(2, 2, 2, 2)),
            pods: &[],
            invalid_spec: None,
            problems: &[],
            unapplied: &[],
            resizing: &[],
            now: Timestamp::from_second(1_900_000_000).unwrap(),
        });
        assert_eq!(first, later, "an unchanged cluster must produce an identical status (no write)");
        assert!(!status_changed(Some(&first), &later));
    }

    #[test]
    fn paused_cluster_says_so() {
        let mut pc = cluster(1, None);
        pc.spec.paused = true;
        let s = status_of(&pc, Some(&sts(1, 1, 1, 1)), &[]);
        assert_eq!(condition(&s, conditions::PAUSED).status, "True");
    }

    #[test]
    fn conditions_of_other_controllers_are_kept() {
        let mut pc = cluster(1, None);
        let mut backup = new_condition(conditions::BACKUP_HEALTHY, true, "BackupSucceeded", "ok".into());
        backup.last_transition_time = Time(Timestamp::from_second(1_700_000_000).unwrap());
        pc.status = Some(PrometheusClusterStatus { conditions: vec![backup.clone()], ..Default::default() });
        let s = status_of(&pc, Some(&sts(1, 1, 1, 1)), &[]);
        assert_eq!(condition(&s, conditions::BACKUP_HEALTHY).last_transition_time, backup.last_transition_time);
    }
}
