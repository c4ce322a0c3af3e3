//! Typed records of what the operator did and why. Adapters publish them on a bus that the Kubernetes event
//! recorder, the metrics and (later) the audit log consume. Pure data: no I/O.

use serde::{Deserialize, Serialize};

/// Who caused an action.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Actor {
    /// The operator itself, acting on a spec change or on what it observed.
    Operator {
        /// The operator process' identity (pod name or host name).
        identity: String,
    },
    /// An authenticated user of the REST API or CLI.
    User {
        /// The user name as authenticated (for example from a TokenReview).
        name: String,
    },
}

/// What happened.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Action {
    /// A child object was created.
    Created {
        /// `Kind/name` of the child.
        object: String,
    },
    /// A child object was changed because the spec changed.
    Updated {
        /// `Kind/name` of the child.
        object: String,
    },
    /// A child object was changed back after someone else edited a field the operator owns.
    Reverted {
        /// `Kind/name` of the child.
        object: String,
    },
    /// A child the spec no longer asks for was deleted.
    Deleted {
        /// `Kind/name` of the child.
        object: String,
    },
    /// The replica count changes.
    Scaled {
        /// Replicas before.
        from: i32,
        /// Replicas after.
        to: i32,
    },
    /// The Prometheus image changes; pods roll one by one.
    Upgraded {
        /// Image before.
        from: String,
        /// Image after.
        to: String,
    },
    /// The phase changed.
    PhaseChanged {
        /// Phase before (empty when there was none).
        from: String,
        /// Phase after.
        to: String,
    },
    /// The spec cannot work; nothing was changed.
    Rejected {
        /// Why, naming the field and the fix.
        reason: String,
    },
    /// The cluster is paused; nothing was changed.
    Paused,
    /// The cluster is being deleted; the finalizer ran.
    Finalized,
    /// A ClusterSet wrote its backup template into a member.
    BackupOverlaid {
        /// The set's name.
        set: String,
    },
    /// Self-healing replaced a stuck replica (seed reason `FailoverTriggered`).
    FailoverTriggered {
        /// The pod.
        pod: String,
        /// Why it counted as stuck.
        reason: String,
        /// How: `evicting` or `deleting`.
        via: String,
    },
    /// Self-healing stopped acting: most replicas fail their probes at once (circuit breaker).
    HealingSuspended {
        /// Why.
        reason: String,
    },
    /// Self-healing acts again after the circuit breaker closed.
    HealingResumed,
    /// A backup started.
    BackupStarted {
        /// Backup id.
        id: String,
        /// The pod whose agent takes it.
        pod: String,
        /// `scheduled`, `catch-up` or `on-demand`.
        trigger: String,
    },
    /// A backup completed: its manifest is written.
    BackupSucceeded {
        /// Backup id.
        id: String,
        /// Bytes of all its files.
        total_bytes: u64,
        /// Bytes it uploaded (the rest was already stored).
        uploaded_bytes: u64,
    },
    /// A backup failed; nothing was recorded as a backup.
    BackupFailed {
        /// Backup id.
        id: String,
        /// CamelCase reason.
        reason: String,
        /// What happened.
        message: String,
    },
    /// Retention after a backup left something alone that it would otherwise have deleted, and why.
    RetentionHeld {
        /// The backup after which retention ran.
        id: String,
        /// What was held back and why, with what to do.
        held: String,
    },
}

impl Action {
    /// A stable CamelCase name used as the Kubernetes event reason and as the audit operation.
    pub fn reason(&self) -> &'static str {
        match self {
            Action::Created { .. } => "Created",
            Action::Updated { .. } => "Updated",
            Action::Reverted { .. } => "Reverted",
            Action::Deleted { .. } => "Deleted",
            Action::Scaled { .. } => "Scaled",
            Action::Upgraded { .. } => "Upgraded",
            Action::PhaseChanged { .. } => "PhaseChanged",
            Action::Rejected { .. } => "InvalidSpec",
            Action::Paused => "Paused",
            Action::Finalized => "Finalized",
            Action::BackupOverlaid { .. } => "BackupOverlaid",
            Action::FailoverTriggered { .. } => "FailoverTriggered",
            Action::HealingSuspended { .. } => "HealingSuspended",
            Action::HealingResumed => "HealingResumed",
            Action::BackupStarted { .. } => "BackupStarted",
            Action::BackupSucceeded { .. } => "BackupSucceeded",
            Action::BackupFailed { .. } => "BackupFailed",
            Action::RetentionHeld { .. } => "RetentionHeld",
        }
    }

    /// Whether the event is a warning (something is wrong) rather than normal operation.
    pub fn is_warning(&self) -> bool {
        matches!(
            self,
            Action::Rejected { .. }
                | Action::Reverted { .. }
                | Action::FailoverTriggered { .. }
                | Action::HealingSuspended { .. }
                | Action::BackupFailed { .. }
                | Action::RetentionHeld { .. }
        )
    }

    /// A human sentence for the Kubernetes event message.
    pub fn message(&self) -> String {
        match self {
            Action::Created { object } => format!("created {object}"),
            Action::Updated { object } => format!("updated {object} to match the spec"),
            Action::Reverted { object } => format!("reverted a change made to {object} by another writer"),
            Action::Deleted { object } => format!("deleted {object}, which the spec no longer asks for"),
            Action::Scaled { from, to } => format!("scaling from {from} to {to} replicas"),
            Action::Upgraded { from, to } => format!("upgrading Prometheus from {from} to {to}"),
            Action::PhaseChanged { from, to } if from.is_empty() => format!("phase is {to}"),
            Action::PhaseChanged { from, to } => format!("phase changed from {from} to {to}"),
            Action::Rejected { reason } => format!("spec cannot be applied: {reason}"),
            Action::Paused => "spec.paused is true: no changes are made".to_owned(),
            Action::Finalized => "cleanup done; children are removed by garbage collection".to_owned(),
            Action::BackupOverlaid { set } => format!("backup settings set from PrometheusClusterSet {set}"),
            Action::FailoverTriggered { pod, reason, via } => {
                format!("replica {pod} failed health check: {reason} — {via} pod to trigger rescheduling")
            }
            Action::HealingSuspended { reason } => format!("self-healing suspended: {reason}"),
            Action::HealingResumed => "self-healing resumed: probes succeed again".to_owned(),
            Action::BackupStarted { id, pod, trigger } => format!("{trigger} backup {id} started on {pod}"),
            Action::BackupSucceeded { id, total_bytes, uploaded_bytes } => {
                format!("backup {id} completed: {total_bytes} bytes, {uploaded_bytes} uploaded")
            }
            Action::BackupFailed { id, reason, message } => format!("backup {id} failed ({reason}): {message}"),
            Action::RetentionHeld { id, held } => format!("retention after backup {id} held back: {held}"),
        }
    }
}

/// One thing the operator did to one object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OperatorEvent {
    /// When it happened (RFC 3339), as given by the adapter's clock.
    pub at: String,
    /// Namespace of the PrometheusCluster (empty for cluster-scoped objects).
    pub namespace: String,
    /// Name of the PrometheusCluster or PrometheusClusterSet.
    pub name: String,
    /// Kind of the object: `PrometheusCluster` or `PrometheusClusterSet`.
    pub kind: String,
    /// UID of the object (empty when not known).
    #[serde(default)]
    pub uid: String,
    /// Who caused it.
    pub actor: Actor,
    /// What happened.
    pub action: Action,
}
