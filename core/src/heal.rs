//! Step `decide` of self-healing: which replica, if any, to replace, from the history of probes and the pods'
//! state. Pure and deterministic: no I/O, no clock (`now` is an argument), no randomness.
//!
//! The adapter probes each replica's `/-/healthy` and `/-/ready` and feeds the results to a [`Healer`] with
//! [`Healer::record_probe`]; then [`Healer::decide`] looks at every cluster at once and says what to do. The
//! adapter executes a [`Replacement`] (eviction, delete as a fallback) and reports success with
//! [`Healer::record_replacement`].
//!
//! # Flow
//! 1. Each probe result is kept per pod, for the pod's current container run (UID, container start time and
//!    restart count). A new run starts a new history: a container the kubelet restarted starts from zero.
//! 2. Each replica gets a [`Verdict`]:
//!    - `Terminating`, `Restarting` (the kubelet does not report the container as running) or `Unknown` (no
//!      recent probe) replicas are left to Kubernetes;
//!    - `Ready` when the last probe found `/-/ready` answering 200;
//!    - `Starting` while the replica has not been ready in this run and its container started less than
//!      `startupBudget` ago, whatever the probes say (WAL replay answers 503 on `/-/ready` for minutes);
//!    - `Failing` below `failureThreshold` consecutive failed probes;
//!    - `Disputed` when the threshold is reached but the kubelet still reports the pod Ready: the operator's
//!      view disagrees with the node's, so the operator does not act;
//!    - `Stuck` otherwise.
//! 3. The circuit breaker opens for a cluster when at least two and more than half of its replicas did not
//!    answer their last probe (unreachable, whatever their verdict), and for every cluster when that holds for
//!    all replicas of all clusters with healing enabled: the operator suspects its own network view and does
//!    nothing. A replica that answers, even with an error, shows that the network between them works.
//! 4. At most one `Stuck` replica per cluster is replaced (the one with the longest failure streak, then the
//!    lowest name), and only when no other replacement of the cluster is still in progress, the cooldown since the
//!    last replacement (`status.lastFailoverTime` or this process' memory, whichever is later) has passed, and
//!    the other replicas that are ready (for both the operator and the kubelet) number at least `replicas - 1`.
//!
//! # Guarantees
//! - Never more than one replacement per cluster per cooldown.
//! - Never a replacement that leaves fewer than `replicas - 1` replicas ready.
//! - Never a replacement of a replica within its startup budget that has not been ready since it started.
//! - Never a replacement while the circuit breaker is open.
//! - The same inputs give the same decisions.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::constants::{conditions, reasons};
use crate::crd::PrometheusClusterSpec;
use crate::duration;

/// Grace period given to a replica that does not answer at all: a hung process cannot shut down cleanly, and
/// the pod's own grace period (600 s) would keep the replacement from starting for ten minutes.
pub const UNRESPONSIVE_GRACE_PERIOD_SECONDS: u32 = 10;

/// A probe history older than this many probe intervals (plus [`STALE_SLACK`]) is not trusted.
const STALE_INTERVALS: u32 = 3;
/// Added to the staleness limit, so that a probe round slowed by timeouts does not look stale.
const STALE_SLACK: Duration = Duration::from_secs(10);

/// Why self-healing settings could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A duration field does not parse.
    #[error("failed to read spec.selfHealing.{field}")]
    Duration {
        /// The field.
        field: &'static str,
        /// Why.
        #[source]
        source: duration::Error,
    },
    /// A duration that must be positive is zero.
    #[error("spec.selfHealing.{field} must be greater than 0")]
    Zero {
        /// The field.
        field: &'static str,
    },
}

/// Self-healing settings of one cluster, parsed from `spec.selfHealing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealSettings {
    /// Whether replicas may be replaced: `selfHealing.enabled` and not `spec.paused`.
    pub enabled: bool,
    /// `spec.paused` (reported as the reason when healing is off).
    pub paused: bool,
    /// Time between two probes of a replica.
    pub probe_interval: Duration,
    /// Consecutive failed probes before a replica counts as stuck (at least 1).
    pub failure_threshold: u32,
    /// How long a starting replica may take to become ready.
    pub startup_budget: Duration,
    /// Minimum time between two replacements in the cluster.
    pub cooldown: Duration,
}

impl HealSettings {
    /// Reads the settings of a cluster. A paused cluster is never healed.
    pub fn from_spec(spec: &PrometheusClusterSpec) -> Result<Self, Error> {
        let h = &spec.self_healing;
        let parse = |field: &'static str, value: &str| {
            duration::parse(value).map_err(|source| Error::Duration { field, source })
        };
        let probe_interval = parse("probeInterval", &h.probe_interval)?;
        if probe_interval.is_zero() {
            return Err(Error::Zero { field: "probeInterval" });
        }
        Ok(Self {
            enabled: h.enabled && !spec.paused,
            paused: spec.paused,
            probe_interval,
            failure_threshold: u32::try_from(h.failure_threshold).unwrap_or(1).max(1),
            startup_budget: parse("startupBudget", &h.startup_budget)?,
            cooldown: parse("cooldown", &h.cooldown)?,
        })
    }
}

/// The result of probing one replica once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    /// `/-/healthy` and `/-/ready` answered 200.
    Ready,
    /// `/-/healthy` answered 200 but `/-/ready` did not: starting, replaying the WAL, or shutting down.
    NotReady {
        /// What `/-/ready` answered (`503 Service Unavailable`, or the transport error).
        detail: String,
    },
    /// `/-/healthy` answered with an error status.
    Unhealthy {
        /// The status and body.
        detail: String,
    },
    /// `/-/healthy` did not answer: refused, reset or timed out.
    Unreachable {
        /// The transport error.
        detail: String,
    },
}

impl ProbeResult {
    /// Whether the probe failed (anything but [`ProbeResult::Ready`]).
    pub fn is_failure(&self) -> bool {
        !matches!(self, ProbeResult::Ready)
    }

    /// Every [`ProbeResult::label`], so that metrics can start each result at zero.
    pub const LABELS: [&'static str; 4] = ["ready", "not_ready", "unhealthy", "unreachable"];

    /// A short label for metrics: `ready`, `not_ready`, `unhealthy`, `unreachable`.
    pub fn label(&self) -> &'static str {
        match self {
            ProbeResult::Ready => "ready",
            ProbeResult::NotReady { .. } => "not_ready",
            ProbeResult::Unhealthy { .. } => "unhealthy",
            ProbeResult::Unreachable { .. } => "unreachable",
        }
    }

    fn describe(&self) -> String {
        match self {
            ProbeResult::Ready => "ready".to_owned(),
            ProbeResult::NotReady { detail } => format!("/-/ready: {detail}"),
            ProbeResult::Unhealthy { detail } => format!("/-/healthy: {detail}"),
            ProbeResult::Unreachable { detail } => format!("unreachable: {detail}"),
        }
    }
}

/// Identifies a cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What the Kubernetes API says about one replica's pod (filled by the adapter from the Pod object).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)] // independent facts of the Pod status, not a state encoded in flags
pub struct ReplicaFacts {
    /// Pod name.
    pub name: String,
    /// Pod UID.
    pub uid: String,
    /// The Prometheus container is in state `running`.
    pub running: bool,
    /// When the Prometheus container's current run started (else the pod's start time).
    pub started_at: Option<Timestamp>,
    /// The Prometheus container's restart count.
    pub restart_count: i32,
    /// The kubelet's startup probe passed for this run (`containerStatuses[].started`).
    pub started: bool,
    /// The pod's `Ready` condition is `True`.
    pub kubelet_ready: bool,
    /// The pod has a `deletionTimestamp`.
    pub terminating: bool,
}

/// Everything the decision needs about one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// Which cluster.
    pub key: ClusterKey,
    /// Its settings.
    pub settings: HealSettings,
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.lastFailoverTime`.
    pub last_failover_time: Option<Timestamp>,
    /// Its pods.
    pub pods: Vec<ReplicaFacts>,
}

/// How a replica looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The pod is being deleted.
    Terminating,
    /// The kubelet does not report the container as running (it is being started or restarted).
    Restarting,
    /// No recent probe.
    Unknown,
    /// The last probe found the replica ready.
    Ready,
    /// Within the startup budget and not yet ready in this run.
    Starting,
    /// Failed the last probes, fewer than the threshold.
    Failing {
        /// Consecutive failed probes.
        failures: u32,
    },
    /// Failed enough probes, but the kubelet reports the pod Ready.
    Disputed {
        /// Consecutive failed probes.
        failures: u32,
    },
    /// Failed enough probes and the kubelet agrees it is not ready.
    Stuck {
        /// Consecutive failed probes.
        failures: u32,
        /// The last probe's result.
        last: ProbeResult,
    },
}

impl Verdict {
    /// A short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Terminating => "terminating",
            Verdict::Restarting => "restarting",
            Verdict::Unknown => "unknown",
            Verdict::Ready => "ready",
            Verdict::Starting => "starting",
            Verdict::Failing { .. } => "failing",
            Verdict::Disputed { .. } => "disputed",
            Verdict::Stuck { .. } => "stuck",
        }
    }
}

/// Why the circuit breaker is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Suspension {
    /// Most replicas of this cluster failed their last probe.
    Cluster {
        /// Replicas failing.
        failing: u32,
        /// Replicas counted.
        of: u32,
    },
    /// Most probed replicas of all clusters failed their last probe.
    Everywhere {
        /// Replicas failing.
        failing: u32,
        /// Replicas counted.
        of: u32,
    },
    /// `selfHealing.enabled` is false.
    Disabled,
    /// `spec.paused` is true.
    Paused,
}

impl Suspension {
    /// Whether this is the circuit breaker (rather than the user turning healing off).
    pub fn is_breaker(&self) -> bool {
        matches!(self, Suspension::Cluster { .. } | Suspension::Everywhere { .. })
    }

    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Suspension::Cluster { .. } => reasons::MOST_REPLICAS_FAILING,
            Suspension::Everywhere { .. } => reasons::MOST_PODS_FAILING,
            Suspension::Disabled => reasons::HEALING_DISABLED,
            Suspension::Paused => reasons::PAUSED,
        }
    }

    /// A sentence for the condition and the event.
    pub fn message(&self) -> String {
        match self {
            Suspension::Cluster { failing, of } => format!(
                "{failing} of {of} replicas fail their probes at once: the operator may be cut off from the pods, \
                 so no replica is replaced until probes succeed again"
            ),
            Suspension::Everywhere { failing, of } => format!(
                "{failing} of {of} probed replicas of all clusters fail their probes at once: the operator may be \
                 cut off from the pods, so no replica is replaced until probes succeed again"
            ),
            Suspension::Disabled => "spec.selfHealing.enabled is false".to_owned(),
            Suspension::Paused => "spec.paused is true".to_owned(),
        }
    }
}

/// Why a stuck replica was not replaced now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// The circuit breaker is open.
    CircuitOpen,
    /// Another replica of the cluster is still being replaced.
    ReplacementInProgress {
        /// That replica.
        pod: String,
    },
    /// The cooldown since the last replacement has not passed.
    Cooldown {
        /// When it passes.
        until: Timestamp,
    },
    /// Replacing would leave fewer than `replicas - 1` replicas ready.
    QuorumGuard {
        /// Other replicas ready.
        ready: u32,
        /// Needed.
        needed: u32,
    },
}

impl Hold {
    /// Every [`Hold::label`], so that metrics can start each reason at zero.
    pub const LABELS: [&'static str; 4] = ["circuit_open", "replacement_in_progress", "cooldown", "quorum_guard"];

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Hold::CircuitOpen => "circuit_open",
            Hold::ReplacementInProgress { .. } => "replacement_in_progress",
            Hold::Cooldown { .. } => "cooldown",
            Hold::QuorumGuard { .. } => "quorum_guard",
        }
    }
}

/// Replace one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    /// Pod name.
    pub pod: String,
    /// Pod UID (a precondition of the eviction, so that a newer pod of the same name is never hit).
    pub uid: String,
    /// Why, for the event and the condition.
    pub reason: String,
    /// Grace period of the deletion; `None` keeps the pod's own.
    pub grace_period_seconds: Option<u32>,
}

/// What to do about one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing is stuck.
    Nothing,
    /// Replace this replica.
    Replace(Replacement),
    /// A replica is stuck, but is not replaced now.
    Held {
        /// The stuck replica.
        pod: String,
        /// Why not.
        hold: Hold,
    },
}

/// The decision about one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDecision {
    /// Which cluster.
    pub key: ClusterKey,
    /// Each replica's verdict, by pod name.
    pub verdicts: BTreeMap<String, Verdict>,
    /// Why healing is suspended, if it is.
    pub suspended: Option<Suspension>,
    /// The replica being replaced (an earlier replacement not yet ready), if any.
    pub replacing: Option<InProgress>,
    /// What to do.
    pub outcome: Outcome,
}

/// A replacement that has not finished: the new pod of that name is not ready yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InProgress {
    /// Pod name.
    pub pod: String,
    /// UID of the pod that was replaced.
    pub old_uid: String,
    /// Why it was replaced.
    pub reason: String,
    /// When.
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct History {
    uid: String,
    started_at: Option<Timestamp>,
    restart_count: i32,
    failures: u32,
    ready_this_run: bool,
    last: ProbeResult,
    last_at: Timestamp,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ClusterMemory {
    last_replacement: Option<Timestamp>,
    in_progress: Option<InProgress>,
}

/// The self-healing state machine: probe histories and replacements of every cluster, kept in memory by the
/// leader. A new leader starts empty; `status.lastFailoverTime` carries the cooldown over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Healer {
    histories: BTreeMap<(ClusterKey, String), History>,
    clusters: BTreeMap<ClusterKey, ClusterMemory>,
}

impl Healer {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one probe of `pod`. A new pod UID, container start or restart count starts a new history.
    pub fn record_probe(&mut self, cluster: &ClusterKey, pod: &ReplicaFacts, result: ProbeResult, now: Timestamp) {
        let key = (cluster.clone(), pod.name.clone());
        let same_run = self.histories.get(&key).is_some_and(|h| {
            h.uid == pod.uid && h.started_at == pod.started_at && h.restart_count == pod.restart_count
        });
        if !same_run {
            self.histories.insert(
                key.clone(),
                History {
                    uid: pod.uid.clone(),
                    started_at: pod.started_at,
                    restart_count: pod.restart_count,
                    failures: 0,
                    ready_this_run: false,
                    last: ProbeResult::Ready,
                    last_at: now,
                },
            );
        }
        if let Some(h) = self.histories.get_mut(&key) {
            if result.is_failure() {
                h.failures = h.failures.saturating_add(1);
            } else {
                h.failures = 0;
                h.ready_this_run = true;
            }
            h.last = result;
            h.last_at = now;
        }
    }

    /// Records that `replacement` of `cluster` was carried out at `now`.
    pub fn record_replacement(&mut self, cluster: &ClusterKey, replacement: &Replacement, now: Timestamp) {
        let memory = self.clusters.entry(cluster.clone()).or_default();
        memory.last_replacement = Some(now);
        memory.in_progress = Some(InProgress {
            pod: replacement.pod.clone(),
            old_uid: replacement.uid.clone(),
            reason: replacement.reason.clone(),
            at: now,
        });
        self.histories.remove(&(cluster.clone(), replacement.pod.clone()));
    }

    /// Decides for every cluster at once (the circuit breaker looks across clusters). Forgets pods and clusters
    /// that are not in `views` and replacements that finished.
    pub fn decide(&mut self, views: &[ClusterView], now: Timestamp) -> Vec<ClusterDecision> {
        self.forget_missing(views);
        let verdicts: Vec<BTreeMap<String, Verdict>> = views.iter().map(|v| self.judge_cluster(v, now)).collect();

        // The operator-wide breaker counts every enabled cluster's replicas.
        let (mut failing_all, mut of_all) = (0u32, 0u32);
        for view in views {
            if view.settings.enabled {
                let (failing, of) = self.unreachable_of(view, now);
                failing_all += failing;
                of_all += of;
            }
        }
        let everywhere = breaker_open(failing_all, of_all);

        let mut out = Vec::with_capacity(views.len());
        for (view, verdicts) in views.iter().zip(verdicts) {
            let replacing = self.update_in_progress(view, &verdicts, now);
            let (failing, of) = self.unreachable_of(view, now);
            let suspended = if view.settings.enabled {
                if breaker_open(failing, of) {
                    Some(Suspension::Cluster { failing, of })
                } else if everywhere {
                    Some(Suspension::Everywhere { failing: failing_all, of: of_all })
                } else {
                    None
                }
            } else if view.settings.paused {
                Some(Suspension::Paused)
            } else {
                Some(Suspension::Disabled)
            };
            let outcome = if view.settings.enabled {
                self.choose(view, &verdicts, suspended.as_ref(), replacing.as_ref(), now)
            } else {
                Outcome::Nothing
            };
            out.push(ClusterDecision { key: view.key.clone(), verdicts, suspended, replacing, outcome });
        }
        out
    }

    fn forget_missing(&mut self, views: &[ClusterView]) {
        let present: BTreeMap<&ClusterKey, &ClusterView> = views.iter().map(|v| (&v.key, v)).collect();
        self.histories.retain(|(cluster, pod), h| {
            present.get(cluster).is_some_and(|v| v.pods.iter().any(|p| &p.name == pod && p.uid == h.uid))
        });
        self.clusters.retain(|k, _| present.contains_key(k));
    }

    fn judge_cluster(&self, view: &ClusterView, now: Timestamp) -> BTreeMap<String, Verdict> {
        view.pods
            .iter()
            .map(|pod| {
                let history = self.histories.get(&(view.key.clone(), pod.name.clone()));
                (pod.name.clone(), judge(pod, history, &view.settings, now))
            })
            .collect()
    }

    /// The replacement in progress after this pass: cleared once the new pod is ready, or after the startup
    /// budget (the new pod is then judged like any other).
    fn update_in_progress(
        &mut self,
        view: &ClusterView,
        verdicts: &BTreeMap<String, Verdict>,
        now: Timestamp,
    ) -> Option<InProgress> {
        let memory = self.clusters.get_mut(&view.key)?;
        let current = memory.in_progress.clone()?;
        let successor_ready = view.pods.iter().any(|p| {
            p.name == current.pod && p.uid != current.old_uid && verdicts.get(&p.name) == Some(&Verdict::Ready)
        });
        let expired = now >= add(current.at, view.settings.startup_budget);
        if successor_ready || expired {
            memory.in_progress = None;
            None
        } else {
            Some(current)
        }
    }

    fn choose(
        &self,
        view: &ClusterView,
        verdicts: &BTreeMap<String, Verdict>,
        suspended: Option<&Suspension>,
        replacing: Option<&InProgress>,
        now: Timestamp,
    ) -> Outcome {
        let mut stuck: Vec<(&String, u32, &ProbeResult)> = verdicts
            .iter()
            .filter_map(|(name, v)| match v {
                Verdict::Stuck { failures, last } => Some((name, *failures, last)),
                _ => None,
            })
            .collect();
        // Longest streak first, then the lowest name (BTreeMap order is kept by the stable sort).
        stuck.sort_by_key(|s| std::cmp::Reverse(s.1));
        let Some(&(name, failures, last_probe)) = stuck.first() else { return Outcome::Nothing };
        let held = |hold| Outcome::Held { pod: name.clone(), hold };
        if suspended.is_some_and(Suspension::is_breaker) {
            return held(Hold::CircuitOpen);
        }
        if let Some(r) = replacing {
            return held(Hold::ReplacementInProgress { pod: r.pod.clone() });
        }
        let memory_last = self.clusters.get(&view.key).and_then(|m| m.last_replacement);
        let last = memory_last.max(view.last_failover_time);
        if let Some(last) = last {
            let until = add(last, view.settings.cooldown);
            if now < until {
                return held(Hold::Cooldown { until });
            }
        }
        let needed = u32::try_from(view.replicas.max(1) - 1).unwrap_or(0);
        let ready = u32::try_from(
            view.pods
                .iter()
                .filter(|p| &p.name != name && p.kubelet_ready && verdicts.get(&p.name) == Some(&Verdict::Ready))
                .count(),
        )
        .unwrap_or(u32::MAX);
        if ready < needed {
            return held(Hold::QuorumGuard { ready, needed });
        }
        let Some(pod) = view.pods.iter().find(|p| &p.name == name) else { return Outcome::Nothing };
        let grace_period_seconds = match last_probe {
            ProbeResult::Unreachable { .. } | ProbeResult::Unhealthy { .. } => Some(UNRESPONSIVE_GRACE_PERIOD_SECONDS),
            ProbeResult::NotReady { .. } | ProbeResult::Ready => None,
        };
        Outcome::Replace(Replacement {
            pod: name.clone(),
            uid: pod.uid.clone(),
            reason: format!("{failures} probes in a row failed, last {}", last_probe.describe()),
            grace_period_seconds,
        })
    }
}

/// The replica's verdict.
fn judge(pod: &ReplicaFacts, history: Option<&History>, settings: &HealSettings, now: Timestamp) -> Verdict {
    if pod.terminating {
        return Verdict::Terminating;
    }
    if !pod.running {
        return Verdict::Restarting;
    }
    let Some(h) = history.filter(|h| {
        h.uid == pod.uid
            && h.started_at == pod.started_at
            && h.restart_count == pod.restart_count
            && now <= add(h.last_at, settings.probe_interval * STALE_INTERVALS + STALE_SLACK)
    }) else {
        return Verdict::Unknown;
    };
    if !h.last.is_failure() {
        return Verdict::Ready;
    }
    let was_ready = h.ready_this_run || pod.started;
    let within_budget = pod.started_at.is_none_or(|s| now < add(s, settings.startup_budget));
    if !was_ready && within_budget {
        return Verdict::Starting;
    }
    if h.failures < settings.failure_threshold {
        return Verdict::Failing { failures: h.failures };
    }
    if pod.kubelet_ready {
        return Verdict::Disputed { failures: h.failures };
    }
    Verdict::Stuck { failures: h.failures, last: h.last.clone() }
}

impl Healer {
    /// Replicas unreachable and replicas counted for the circuit breaker of one cluster. A replica counts as
    /// unreachable when its last recent probe got no answer, whatever its container run: a replica the kubelet
    /// is restarting, or that started again, still counts, so restarts caused by the same outage do not close the
    /// breaker. A replica that answers, even with an error, shows that the operator reaches it.
    fn unreachable_of(&self, view: &ClusterView, now: Timestamp) -> (u32, u32) {
        let stale_after = view.settings.probe_interval * STALE_INTERVALS + STALE_SLACK;
        let failing = view
            .pods
            .iter()
            .filter(|p| !p.terminating)
            .filter_map(|p| self.histories.get(&(view.key.clone(), p.name.clone())))
            .filter(|h| matches!(h.last, ProbeResult::Unreachable { .. }) && now <= add(h.last_at, stale_after))
            .count();
        let alive = view.pods.iter().filter(|p| !p.terminating).count();
        let failing = u32::try_from(failing).unwrap_or(u32::MAX);
        let of = u32::try_from(alive.max(usize::try_from(view.replicas.max(0)).unwrap_or(0))).unwrap_or(u32::MAX);
        (failing, of)
    }
}

/// At least two and more than half fail: suspect the operator's own view.
fn breaker_open(failing: u32, of: u32) -> bool {
    failing >= 2 && u64::from(failing) * 2 > u64::from(of)
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    let d = SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX);
    t.checked_add(d).unwrap_or(Timestamp::MAX)
}

/// The `Healing` and `HealingSuspended` conditions for a decision, with transition times kept from `previous`
/// while their status does not change. Messages do not change between passes unless the state does, so an
/// unchanged cluster needs no write.
pub fn build_heal_conditions(
    decision: &ClusterDecision,
    replaced_now: Option<&Replacement>,
    previous: &[Condition],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let healing = match (replaced_now, &decision.replacing) {
        (Some(r), _) => crate::status::new_condition(
            conditions::HEALING,
            true,
            reasons::REPLACING_REPLICA,
            format!("replacing pod {}: {}", r.pod, r.reason),
        ),
        (None, Some(p)) => crate::status::new_condition(
            conditions::HEALING,
            true,
            reasons::REPLACING_REPLICA,
            format!("replacing pod {}: {}", p.pod, p.reason),
        ),
        (None, None) => crate::status::new_condition(
            conditions::HEALING,
            false,
            reasons::AS_EXPECTED,
            "no replica is being replaced".to_owned(),
        ),
    };
    let suspended = match &decision.suspended {
        Some(s) => crate::status::new_condition(conditions::HEALING_SUSPENDED, true, s.reason(), s.message()),
        None => crate::status::new_condition(
            conditions::HEALING_SUSPENDED,
            false,
            reasons::AS_EXPECTED,
            "self-healing is active".to_owned(),
        ),
    };
    let previous: Vec<Condition> = previous
        .iter()
        .filter(|c| c.type_ == conditions::HEALING || c.type_ == conditions::HEALING_SUSPENDED)
        .cloned()
        .collect();
    crate::status::merge_conditions(&previous, vec![healing, suspended], generation, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn the_label_lists_hold_every_label() {
        let detail = String::new;
        let probes = [
            ProbeResult::Ready,
            ProbeResult::NotReady { detail: detail() },
            ProbeResult::Unhealthy { detail: detail() },
            ProbeResult::Unreachable { detail: detail() },
        ];
        assert_eq!(probes.map(|p| p.label()), ProbeResult::LABELS);
        let holds = [
            Hold::CircuitOpen,
            Hold::ReplacementInProgress { pod: detail() },
            Hold::Cooldown { until: t(0) },
            Hold::QuorumGuard { ready: 0, needed: 1 },
        ];
        assert_eq!(holds.map(|h| h.label()), Hold::LABELS);
    }

    #[test]
    fn settings_come_from_the_spec_and_paused_turns_healing_off() {
        let mut spec: PrometheusClusterSpec = serde_json::from_value(serde_json::json!({})).unwrap();
        let s = HealSettings::from_spec(&spec).unwrap();
        assert_eq!(
            s,
            HealSettings {
                enabled: true,
                paused: false,
                probe_interval: Duration::from_secs(30),
                failure_threshold: 3,
                startup_budget: Duration::from_mins(15),
                cooldown: Duration::from_mins(5),
            }
        );
        spec.paused = true;
        assert!(!HealSettings::from_spec(&spec).unwrap().enabled);
        spec.self_healing.probe_interval = "0s".into();
        assert_eq!(HealSettings::from_spec(&spec), Err(Error::Zero { field: "probeInterval" }));
        spec.self_healing.probe_interval = "soon".into();
        assert!(matches!(HealSettings::from_spec(&spec), Err(Error::Duration { field: "probeInterval", .. })));
    }

    #[test]
    fn conditions_do_not_change_between_passes_when_nothing_changes() {
        let decision = ClusterDecision {
            key: ClusterKey { namespace: "ns".into(), name: "demo".into() },
            verdicts: BTreeMap::new(),
            suspended: Some(Suspension::Cluster { failing: 2, of: 2 }),
            replacing: None,
            outcome: Outcome::Held { pod: "demo-1".into(), hold: Hold::CircuitOpen },
        };
        let first = build_heal_conditions(&decision, None, &[], Some(1), t(0));
        let second = build_heal_conditions(&decision, None, &first, Some(1), t(60));
        assert_eq!(first, second, "an unchanged decision needs no status write");
        let suspended = first.iter().find(|c| c.type_ == conditions::HEALING_SUSPENDED).unwrap();
        assert_eq!((suspended.status.as_str(), suspended.reason.as_str()), ("True", reasons::MOST_REPLICAS_FAILING));
        let healing = first.iter().find(|c| c.type_ == conditions::HEALING).unwrap();
        assert_eq!(healing.status, "False");
    }

    #[test]
    fn a_replacement_sets_healing_until_the_successor_is_ready() {
        let key = ClusterKey { namespace: "ns".into(), name: "demo".into() };
        let settings = HealSettings {
            enabled: true,
            paused: false,
            probe_interval: Duration::from_secs(1),
            failure_threshold: 1,
            startup_budget: Duration::from_mins(1),
            cooldown: Duration::ZERO,
        };
        let pod = |uid: &str, kubelet_ready| ReplicaFacts {
            name: "demo-0".into(),
            uid: uid.into(),
            running: true,
            started_at: Some(t(0)),
            restart_count: 0,
            started: true,
            kubelet_ready,
            terminating: false,
        };
        let view = |p: ReplicaFacts| ClusterView {
            key: key.clone(),
            settings,
            replicas: 1,
            last_failover_time: None,
            pods: vec![p],
        };
        let mut healer = Healer::new();
        healer.record_probe(&key, &pod("old", false), ProbeResult::Unreachable { detail: "x".into() }, t(100));
        let d = healer.decide(&[view(pod("old", false))], t(100));
        let Outcome::Replace(r) = &d[0].outcome else { panic!("{d:?}") };
        assert_eq!(r.grace_period_seconds, Some(UNRESPONSIVE_GRACE_PERIOD_SECONDS));
        healer.record_replacement(&key, r, t(100));
        let d = healer.decide(&[view(pod("new", false))], t(105));
        assert_eq!(d[0].replacing.as_ref().map(|p| p.pod.as_str()), Some("demo-0"));
        healer.record_probe(&key, &pod("new", true), ProbeResult::Ready, t(110));
        let d = healer.decide(&[view(pod("new", true))], t(110));
        assert_eq!(d[0].replacing, None);
        assert_eq!(d[0].outcome, Outcome::Nothing);
    }
}
