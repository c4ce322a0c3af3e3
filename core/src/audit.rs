//! The audit trail's records: who changed what, and what the operator did about it. Pure: no I/O; the adapter
//! gives each record its id and time, spools it, and writes it to SQLite or PostgreSQL.
//!
//! A record is one row of the seed's `audit_log` table (`cluster_name`, `operation`, `operator`, `timestamp`,
//! `result`, `detail`, so the seed's queries keep working) plus what it lacked: the namespace, a unique event id
//! (records are inserted exactly once after any outage), the kind of actor, the object's UID and, for a user's
//! change, the spec diff.
//!
//! # Sources
//! - [`from_admission`]: a create, update or delete of a PrometheusCluster or PrometheusClusterSet as the API
//!   server saw it at admission: the authenticated user (never a header), the operation, the old -> new spec as an
//!   RFC 6902 JSON Patch, and whether the webhook admitted it.
//! - [`from_event`]: every action the operator publishes (children created, scaled, upgraded, failover with its
//!   evidence, backups, retention, pause, deletion), with the operator as the actor.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::admission::Operation;
use crate::events::{Actor, OperatorEvent};

/// Who acted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ActorKind {
    /// A person or a client authenticated by the API server.
    User,
    /// The operator itself.
    Operator,
}

impl ActorKind {
    /// As stored (`user`, `operator`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Operator => "operator",
        }
    }

    /// Reads a stored value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Self::User),
            "operator" => Some(Self::Operator),
            _ => None,
        }
    }
}

/// How it ended (the seed's `result` column).
pub mod results {
    /// Done, or admitted.
    pub const SUCCESS: &str = "success";
    /// Refused by the admission webhook.
    pub const REJECTED: &str = "rejected";
    /// Tried and failed (a backup that failed, a spec the operator cannot apply).
    pub const ERROR: &str = "error";
}

/// One audit record.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// Unique id; a record with an id already stored is not stored again.
    pub event_id: String,
    /// When it happened (RFC 3339).
    pub timestamp: String,
    /// Namespace of the object (empty for a PrometheusClusterSet).
    pub namespace: String,
    /// Kind of the object.
    pub kind: String,
    /// Name of the object (the seed's `cluster_name`).
    pub cluster_name: String,
    /// UID of the object, when known.
    pub object_uid: String,
    /// `create`, `update`, `delete` for a user's change; the action's reason (`Scaled`, `BackupSucceeded`, ...)
    /// for the operator's.
    pub operation: String,
    /// The user name, or the operator's identity (the seed's `operator` column).
    pub operator: String,
    /// Whether a user or the operator acted.
    pub actor_kind: ActorKind,
    /// The user's groups, for a user.
    pub actor_groups: Vec<String>,
    /// One of [`results`].
    pub result: String,
    /// What happened, in words: the refusal, the action's message.
    pub detail: String,
    /// For a user's change: the spec change as an RFC 6902 JSON Patch (`[]` when the spec did not change).
    pub diff: String,
}

/// An admission request, as the webhook saw it.
#[derive(Clone, Debug)]
pub struct Admission<'a> {
    /// The request's UID (unique per request, also per retry of one request).
    pub uid: &'a str,
    /// `metadata.generation` of the stored object an update changes.
    pub old_generation: Option<i64>,
    /// `metadata.resourceVersion` of the stored object an update changes.
    pub old_resource_version: Option<&'a str>,
    /// When it was reviewed (RFC 3339).
    pub timestamp: String,
    /// Kind, namespace, name and UID of the object.
    pub kind: &'a str,
    /// Namespace (empty for cluster-scoped kinds).
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// UID (empty on create).
    pub object_uid: &'a str,
    /// What was done.
    pub operation: Operation,
    /// The authenticated user.
    pub username: &'a str,
    /// The user's groups.
    pub groups: &'a [String],
    /// The spec sent (absent on delete).
    pub spec: Option<&'a Value>,
    /// The spec stored before an update or delete.
    pub old_spec: Option<&'a Value>,
    /// `Err` with the refusal when the webhook refused it.
    pub refused: Option<String>,
}

/// The record id of an admission request.
///
/// The API server may review one update or delete twice, each time with a new request UID: its storage layer tries
/// the change on its cached copy of the object first, and when that fails (a conflict, or a refusal) while the
/// cached copy may be stale, reads the stored object and tries once more. Both reviews are of the same change by
/// the same user, so a change of a stored object is identified by what it is: the operation, the user, the object, the generation it changes (status and
/// finalizer writes leave it alone, every spec change moves it), the old and new spec, the verdict, and, for an
/// update that leaves the spec as it was, the stored version. The same change made again after another spec
/// change has a newer generation and is recorded again; the same refused change sent twice in a row against one
/// generation is one record, since it cannot be told apart from the API server's second try; so is a second delete
/// of an object already being deleted. A create is reviewed once and keeps its request UID.
pub fn admission_event_id(a: &Admission<'_>) -> String {
    use sha2::{Digest as _, Sha256};
    let Some(generation) = a.old_generation else {
        return a.uid.to_owned();
    };
    let null = Value::Null;
    let (old, new) = (a.old_spec.unwrap_or(&null), a.spec.unwrap_or(&null));
    let version = if old == new { a.old_resource_version.unwrap_or(a.uid) } else { "" };
    let mut hash = Sha256::new();
    for part in [
        operation_name(a.operation),
        a.username,
        a.kind,
        a.namespace,
        a.name,
        a.object_uid,
        &generation.to_string(),
        &old.to_string(),
        &new.to_string(),
        version,
        a.refused.as_deref().unwrap_or("admitted"),
    ] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    format!("{:x}", hash.finalize())
}

fn operation_name(operation: Operation) -> &'static str {
    match operation {
        Operation::Create => "create",
        Operation::Update => "update",
        Operation::Delete => "delete",
        Operation::Connect => "connect",
    }
}

/// The record of an admission request, with the id [`admission_event_id`] gives it.
pub fn from_admission(a: &Admission<'_>) -> AuditRecord {
    let operation = operation_name(a.operation);
    let null = Value::Null;
    let diff = json_patch::diff(a.old_spec.unwrap_or(&null), a.spec.unwrap_or(&null));
    let (result, detail) = match &a.refused {
        Some(why) => (results::REJECTED, why.clone()),
        None => (results::SUCCESS, String::new()),
    };
    AuditRecord {
        event_id: admission_event_id(a),
        timestamp: a.timestamp.clone(),
        namespace: a.namespace.to_owned(),
        kind: a.kind.to_owned(),
        cluster_name: a.name.to_owned(),
        object_uid: a.object_uid.to_owned(),
        operation: operation.to_owned(),
        operator: a.username.to_owned(),
        actor_kind: ActorKind::User,
        actor_groups: a.groups.to_vec(),
        result: result.to_owned(),
        detail,
        diff: serde_json::to_string(&diff).unwrap_or_else(|_| "[]".to_owned()),
    }
}

/// The record of an operator event, with the id `event_id`.
pub fn from_event(event: &OperatorEvent, event_id: String) -> AuditRecord {
    let (operator, actor_kind) = match &event.actor {
        Actor::Operator { identity } => (identity.clone(), ActorKind::Operator),
        Actor::User { name } => (name.clone(), ActorKind::User),
    };
    let failed =
        matches!(event.action, crate::events::Action::BackupFailed { .. } | crate::events::Action::Rejected { .. });
    AuditRecord {
        event_id,
        timestamp: event.at.clone(),
        namespace: event.namespace.clone(),
        kind: event.kind.clone(),
        cluster_name: event.name.clone(),
        object_uid: event.uid.clone(),
        operation: event.action.reason().to_owned(),
        operator,
        actor_kind,
        actor_groups: Vec::new(),
        result: if failed { results::ERROR } else { results::SUCCESS }.to_owned(),
        detail: event.action.message(),
        diff: String::new(),
    }
}

/// A call of the REST API that changed something, as the API served it.
#[derive(Clone, Debug)]
pub struct ApiCall<'a> {
    /// Unique id of the call.
    pub id: &'a str,
    /// When it was served (RFC 3339).
    pub timestamp: String,
    /// Namespace of the cluster.
    pub namespace: &'a str,
    /// Name of the cluster.
    pub name: &'a str,
    /// UID of the cluster, when known.
    pub object_uid: &'a str,
    /// The seed's operation: `create`, `delete`, `backup`.
    pub operation: &'a str,
    /// The user the API server authenticated.
    pub username: &'a str,
    /// The user's groups.
    pub groups: &'a [String],
    /// The caller's `X-Operator` header, if any: kept as a note, never as the actor.
    pub note: Option<&'a str>,
    /// `Err` with what went wrong when the call failed.
    pub outcome: Result<String, String>,
    /// For a create: the spec sent.
    pub spec: Option<&'a Value>,
}

/// The record of a REST API call: the authenticated user is the actor.
pub fn from_api_call(c: &ApiCall<'_>) -> AuditRecord {
    let (result, mut detail) = match &c.outcome {
        Ok(done) => (results::SUCCESS, done.clone()),
        Err(why) => (results::ERROR, why.clone()),
    };
    if let Some(note) = c.note.filter(|n| !n.is_empty()) {
        let note: String = note.chars().filter(|ch| !ch.is_control()).take(256).collect();
        detail =
            if detail.is_empty() { format!("(X-Operator: {note})") } else { format!("{detail} (X-Operator: {note})") };
    }
    let diff = c.spec.map(|spec| json_patch::diff(&Value::Null, spec));
    AuditRecord {
        event_id: c.id.to_owned(),
        timestamp: c.timestamp.clone(),
        namespace: c.namespace.to_owned(),
        kind: "PrometheusCluster".to_owned(),
        cluster_name: c.name.to_owned(),
        object_uid: c.object_uid.to_owned(),
        operation: c.operation.to_owned(),
        operator: c.username.to_owned(),
        actor_kind: ActorKind::User,
        actor_groups: c.groups.to_vec(),
        result: result.to_owned(),
        detail,
        diff: diff.map_or_else(String::new, |d| serde_json::to_string(&d).unwrap_or_else(|_| "[]".to_owned())),
    }
}

/// Which records to read, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Only this object name.
    pub cluster: Option<String>,
    /// Only this actor (user name or operator identity).
    pub actor: Option<String>,
    /// Only this operation.
    pub operation: Option<String>,
    /// Only records at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Only records before this time (RFC 3339).
    pub until: Option<String>,
    /// At most this many (the seed's default: 100).
    pub limit: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Action;
    use serde_json::json;

    #[test]
    fn a_users_change_carries_the_user_and_the_spec_diff() {
        let (old, new) = (json!({"replicas": 1, "retention": "15d"}), json!({"replicas": 3, "retention": "15d"}));
        let groups = vec!["team".to_owned()];
        let record = from_admission(&Admission {
            uid: "req-1",
            old_generation: Some(1),
            old_resource_version: Some("100"),
            timestamp: "2026-12-03T10:00:00Z".into(),
            kind: "PrometheusCluster",
            namespace: "obs",
            name: "demo",
            object_uid: "u1",
            operation: Operation::Update,
            username: "alice",
            groups: &groups,
            spec: Some(&new),
            old_spec: Some(&old),
            refused: None,
        });
        assert_eq!(
            (record.operator.as_str(), record.actor_kind, record.result.as_str()),
            ("alice", ActorKind::User, "success")
        );
        assert_eq!(record.operation, "update");
        let diff: Value = serde_json::from_str(&record.diff).unwrap();
        assert_eq!(diff, json!([{"op": "replace", "path": "/replicas", "value": 3}]));
    }

    #[test]
    fn a_refused_change_is_recorded_as_rejected_with_the_reason() {
        let new = json!({"replicas": 0});
        let record = from_admission(&Admission {
            uid: "req-2",
            old_generation: None,
            old_resource_version: None,
            timestamp: "2026-12-03T10:00:00Z".into(),
            kind: "PrometheusCluster",
            namespace: "obs",
            name: "demo",
            object_uid: "",
            operation: Operation::Create,
            username: "bob",
            groups: &[],
            spec: Some(&new),
            old_spec: None,
            refused: Some("spec.replicas: Invalid value: 0: must be >= 1".into()),
        });
        assert_eq!(record.result, results::REJECTED);
        assert!(record.detail.contains("must be >= 1"));
    }

    fn update_id(uid: &str, generation: i64, version: &str, refused: Option<&str>, new: &Value) -> String {
        admission_event_id(&Admission {
            uid,
            old_generation: Some(generation),
            old_resource_version: Some(version),
            timestamp: String::new(),
            kind: "PrometheusCluster",
            namespace: "obs",
            name: "demo",
            object_uid: "u1",
            operation: Operation::Update,
            username: "bob",
            groups: &[],
            spec: Some(new),
            old_spec: Some(&json!({"replicas": 1})),
            refused: refused.map(str::to_owned),
        })
    }

    #[test]
    fn a_retried_review_of_one_update_is_one_record_and_a_repeated_change_is_another() {
        let (new, same) = (json!({"replicas": 2}), json!({"replicas": 1}));
        // The storage layer's retry: a new request UID and a fresher resourceVersion (a status write), same change.
        let first = update_id("req-1", 3, "100", None, &new);
        assert_eq!(first, update_id("req-2", 3, "101", None, &new));
        // The same change made again after it was undone moves from a newer generation.
        assert_ne!(first, update_id("req-9", 5, "140", None, &new));
        // A refusal is reviewed again on the stored copy: one record; an admitted change is another record.
        let refused = update_id("req-3", 3, "100", Some("no"), &new);
        assert_eq!(refused, update_id("req-4", 3, "101", Some("no"), &new));
        assert_ne!(refused, first);
        // A delete reviewed twice is one record as well.
        let delete = |uid| {
            admission_event_id(&Admission {
                uid,
                old_generation: Some(3),
                old_resource_version: Some(uid),
                timestamp: String::new(),
                kind: "PrometheusCluster",
                namespace: "obs",
                name: "demo",
                object_uid: "u1",
                operation: Operation::Delete,
                username: "bob",
                groups: &[],
                spec: None,
                old_spec: Some(&new),
                refused: None,
            })
        };
        assert_eq!(delete("req-7"), delete("req-8"));
        assert_ne!(delete("req-7"), first);
        // Updates that leave the spec alone (labels, annotations) are told apart by the stored version.
        assert_ne!(update_id("req-5", 3, "100", None, &same), update_id("req-6", 3, "101", None, &same));
    }

    #[test]
    fn operator_actions_are_recorded_with_the_operator_as_actor() {
        let event = OperatorEvent {
            at: "2026-12-03T10:00:00Z".into(),
            namespace: "obs".into(),
            name: "demo".into(),
            kind: "PrometheusCluster".into(),
            uid: "u1".into(),
            actor: Actor::Operator { identity: "tsdb-operator-0".into() },
            action: Action::BackupFailed { id: "b1".into(), reason: "UploadFailed".into(), message: "503".into() },
        };
        let record = from_event(&event, "e1".into());
        assert_eq!(record.object_uid, "u1");
        assert_eq!(record.actor_kind, ActorKind::Operator);
        assert_eq!(record.operator, "tsdb-operator-0");
        assert_eq!(record.operation, "BackupFailed");
        assert_eq!(record.result, results::ERROR);
        assert!(record.detail.contains("UploadFailed"));
    }

    #[test]
    fn an_api_call_names_the_authenticated_user_and_keeps_the_header_as_a_note() {
        let groups = vec!["system:authenticated".to_owned()];
        let spec = serde_json::json!({"replicas": 2});
        let call = ApiCall {
            id: "api-1",
            timestamp: "2026-12-04T12:00:00Z".into(),
            namespace: "team-a",
            name: "demo",
            object_uid: "",
            operation: "create",
            username: "alice",
            groups: &groups,
            note: Some("mallory\n"),
            outcome: Ok(String::new()),
            spec: Some(&spec),
        };
        let r = from_api_call(&call);
        assert_eq!((r.operator.as_str(), r.actor_kind, r.result.as_str()), ("alice", ActorKind::User, "success"));
        assert_eq!(r.detail, "(X-Operator: mallory)");
        assert!(r.diff.contains("replicas"), "{}", r.diff);
        let failed = from_api_call(&ApiCall { outcome: Err("not found".into()), note: None, spec: None, ..call });
        assert_eq!((failed.result.as_str(), failed.detail.as_str(), failed.diff.as_str()), ("error", "not found", ""));
    }
}
