//! Step `plan`: desired child objects vs what the server holds → an ordered list of [`Step`]s. Pure: no I/O.
//!
//! # Flow
//! 1. [`stamp`] adds the [`APPLIED_HASH`] annotation to each desired
//!    manifest: a stable hash (XXH3-128, see [`manifest_hash`]) of the manifest as the operator means to apply it.
//! 2. [`plan_children`] compares each desired manifest with the observed object of the same kind and name:
//!    - missing → `Apply` (reason `Create`);
//!    - the observed hash differs → `Apply` (`SpecChanged`): the operator's intent changed, including fields it
//!      stopped setting, which server-side apply then removes;
//!    - every field the operator sets is present with the same value (a *subset* match that ignores fields the
//!      API server defaulted and fields other managers own) → nothing to do; otherwise → `Apply` (`Drift`).
//!    - observed children the operator owns but no longer wants (for example the PodDisruptionBudget after a scale
//!      to one replica) → `Delete`.
//!
//! # Guarantees
//! - Idempotent: once the steps are applied, planning again against the server's copy yields no steps, whatever
//!   the server defaulted (`plan_is_idempotent_*` tests and the proptest in `core/tests/plan_props.rs`).
//! - Deterministic order: ConfigMap, Service, StatefulSet, PodDisruptionBudget, then deletions.

mod check;
mod diff;
mod events;
mod hash;

use std::collections::BTreeMap;
use std::convert::Infallible;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::build::{self, BuildSettings, DesiredObject, DesiredObjects};
use crate::constants::annotations::APPLIED_HASH;
use crate::quantity;
use crate::storage::{self, ObservedStorage, StorageDecision};
use crate::validate::ValidCluster;

/// Identifies a child object: in the cluster's namespace, or (the discovery Role and RoleBinding in the namespaces
/// the cluster's monitors discover targets in) in the namespace it names.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "camelCase")]
pub struct ChildKey {
    /// `apiVersion` of the object, for example `apps/v1`.
    pub api_version: String,
    /// `kind`, for example `StatefulSet`.
    pub kind: String,
    /// `metadata.name`.
    pub name: String,
    /// The namespace when it is not the cluster's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl ChildKey {
    /// The key of a manifest, if it has `apiVersion`, `kind` and `metadata.name`.
    pub fn of(manifest: &Value) -> Option<Self> {
        Some(Self {
            api_version: manifest.get("apiVersion")?.as_str()?.to_owned(),
            kind: manifest.get("kind")?.as_str()?.to_owned(),
            name: manifest.get("metadata")?.get("name")?.as_str()?.to_owned(),
            namespace: None,
        })
    }

    /// The key of `kind` (`Role`, `RoleBinding`, ...) `name` in `namespace`, another namespace than the cluster's.
    pub fn elsewhere(api_version: &str, kind: &str, name: &str, namespace: &str) -> Self {
        Self {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
            name: name.to_owned(),
            namespace: Some(namespace.to_owned()),
        }
    }

    fn rank(&self) -> u8 {
        match self.kind.as_str() {
            "ConfigMap" => 0,
            "Secret" => 1,
            "ServiceAccount" => 2,
            "Role" => 3,
            "Service" => 4,
            "RoleBinding" => 5,
            "StatefulSet" => 6,
            "PodDisruptionBudget" => 7,
            _ => 8,
        }
    }

    /// The group/kind without the version: `apps/StatefulSet`, `/ConfigMap`, `policy/PodDisruptionBudget`.
    /// Objects are the same across versions of a group (policy/v1 and policy/v1beta1).
    pub fn group_kind(&self) -> String {
        format!("{}/{}", self.group(), self.kind)
    }

    /// The API group: `apps`, `policy`, or empty for the core group.
    fn group(&self) -> &str {
        self.api_version.rsplit_once('/').map_or("", |(g, _)| g)
    }

    /// Whether both keys name the same object, in any version of its group.
    fn same_object(&self, other: &ChildKey) -> bool {
        self.name == other.name
            && self.kind == other.kind
            && self.group() == other.group()
            && self.namespace == other.namespace
    }
}

impl std::fmt::Display for ChildKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{}/{} in namespace {namespace}", self.kind, self.name),
            None => write!(f, "{}/{}", self.kind, self.name),
        }
    }
}

/// Why a child is applied.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ApplyReason {
    /// It does not exist.
    Create,
    /// The operator's desired object changed since it was last applied.
    SpecChanged,
    /// Someone else changed a field the operator sets.
    Drift {
        /// JSON path of the first field that differs, for example `spec.replicas`.
        field: String,
    },
}

impl std::fmt::Display for ApplyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyReason::Create => f.write_str("Create"),
            ApplyReason::SpecChanged => f.write_str("SpecChanged"),
            ApplyReason::Drift { field } => write!(f, "Drift of {field}"),
        }
    }
}

/// One thing to do, in order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum Step {
    /// Server-side apply `manifest` with the operator's field manager.
    Apply {
        /// The object.
        key: ChildKey,
        /// Why.
        reason: ApplyReason,
        /// The full manifest, already stamped with the applied hash.
        manifest: Value,
    },
    /// Delete an owned child the spec no longer asks for.
    Delete {
        /// The object.
        key: ChildKey,
    },
    /// Set a data volume claim's `spec.resources.requests.storage`; the storage provider grows the volume in
    /// place (see [`crate::storage`]).
    Resize {
        /// The PersistentVolumeClaim.
        key: ChildKey,
        /// The new size.
        size: String,
    },
    /// Delete the StatefulSet with `propagationPolicy: Orphan`: its pods keep running, and the next pass creates
    /// it again with a claim template that could not be updated in place (see [`crate::storage`]).
    Orphan {
        /// The StatefulSet.
        key: ChildKey,
    },
}

impl Step {
    /// The object the step is about.
    pub fn key(&self) -> &ChildKey {
        match self {
            Step::Apply { key, .. } | Step::Delete { key } | Step::Resize { key, .. } | Step::Orphan { key } => key,
        }
    }
}

/// An ordered list of steps; empty when the cluster matches the spec.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Steps in the order they must be executed.
    pub steps: Vec<Step>,
}

impl Plan {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// Hash of a manifest without its applied-hash annotation, as 32 hex digits: a stable tree hash built from
/// XXH3-128; see `core/src/plan/hash.rs` for the construction and why it is stable.
pub fn manifest_hash(manifest: &Value) -> String {
    hash::to_hex(hash::of_value(manifest))
}

/// Returns `manifest` with the applied-hash annotation set.
pub fn stamp(manifest: &Value) -> Value {
    stamp_owned(manifest.clone())
}

fn stamp_owned(manifest: Value) -> Value {
    let hash = manifest_hash(&manifest);
    stamp_with(manifest, hash)
}

fn stamp_with(mut manifest: Value, hash: String) -> Value {
    if let Some(obj) = manifest.as_object_mut() {
        let meta = obj.entry("metadata").or_insert_with(|| Value::Object(serde_json::Map::new()));
        if let Some(meta) = meta.as_object_mut() {
            let annotations = meta.entry("annotations").or_insert_with(|| Value::Object(serde_json::Map::new()));
            if let Some(annotations) = annotations.as_object_mut() {
                annotations.insert(APPLIED_HASH.to_owned(), Value::String(hash));
            }
        }
    }
    manifest
}

/// Plans the steps that bring `observed` to `desired`.
///
/// `desired` are unstamped manifests (the builders' output). `observed` are the owned children as read from the
/// server, keyed by kind and name; only children the operator owns may be passed, since any observed child that is
/// not desired is deleted. An object whose group and kind match but whose version differs (policy/v1 vs v1beta1)
/// counts as the same object.
pub fn plan_children(desired: &[Value], observed: &BTreeMap<ChildKey, Value>) -> Plan {
    plan_owned_children(desired.to_vec(), observed)
}

/// [`plan_children`] taking the desired manifests by value, which saves copying them.
pub fn plan_owned_children(desired: Vec<Value>, observed: &BTreeMap<ChildKey, Value>) -> Plan {
    let wanted = desired.into_iter().filter_map(|m| ChildKey::of(&m).map(|k| (k, stamp_owned(m)))).collect();
    let Ok(plan) = plan_wanted(wanted, observed, |manifest, current| Ok::<_, Infallible>(decide(manifest, current)));
    plan
}

/// [`plan_children`] for the typed objects [`build::build`] renders: the same plan, for less work.
///
/// Each object is hashed and compared with its observed copy straight from the typed object
/// (`core/src/plan/events.rs`); only the objects to apply are converted into JSON manifests, so a resync that
/// finds nothing to do builds no JSON at all. When several fields drifted, the field named in a `Drift` reason may be another one than
/// [`plan_children`] names (typed objects are walked in field declaration order, JSON objects in key order).
pub fn plan_objects(
    desired: &DesiredObjects,
    settings: &BuildSettings,
    observed: &BTreeMap<ChildKey, Value>,
) -> build::Result<Plan> {
    let own = desired.config_map.metadata.namespace.as_deref();
    let wanted = desired
        .objects(settings)
        .into_iter()
        .filter_map(|object| {
            let name = object.name()?;
            let key = ChildKey {
                api_version: object.api_version().to_owned(),
                kind: object.kind().to_owned(),
                name: name.to_owned(),
                namespace: object.namespace().filter(|ns| Some(*ns) != own).map(str::to_owned),
            };
            Some((key, object))
        })
        .collect();
    plan_wanted(wanted, observed, decide_typed)
}

/// [`plan_objects`] for a cluster, with what its storage change means for the volumes that exist
/// ([`storage::decide_storage`]): the StatefulSet is rendered with the claim template that can be applied, claims
/// to grow come first as [`Step::Resize`], and a StatefulSet whose template must change is deleted with its pods
/// orphaned ([`Step::Orphan`]) instead of applied; while an observed StatefulSet is being deleted it is not
/// applied either (the next pass creates it).
pub fn plan_cluster(
    valid: &ValidCluster<'_>,
    settings: &BuildSettings,
    chosen: &crate::monitors::ClusterMonitors,
    observed: &BTreeMap<ChildKey, Value>,
    storage: &ObservedStorage<'_>,
) -> build::Result<(Plan, StorageDecision)> {
    let cluster = valid.cluster();
    let decision = storage::decide_storage(&cluster.spec.storage, storage);
    let desired = if decision.render == cluster.spec.storage {
        build::build_with_monitors(valid, settings, chosen)?
    } else {
        let mut adjusted = cluster.clone();
        adjusted.spec.storage = decision.render.clone();
        build::build_with_monitors(&valid.with_storage_of(&adjusted), settings, chosen)?
    };
    let mut plan = plan_objects(&desired, settings, observed)?;
    let sts_key = |k: &ChildKey| k.kind == "StatefulSet";
    let terminating = observed
        .iter()
        .any(|(k, v)| sts_key(k) && v.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null()));
    if terminating || decision.recreate {
        let position = plan.steps.iter().position(|s| matches!(s, Step::Apply { key, .. } if sts_key(key)));
        plan.steps.retain(|s| !matches!(s, Step::Apply { key, .. } if sts_key(key)));
        if decision.recreate
            && !terminating
            && let Some(key) = observed.keys().find(|k| sts_key(k))
        {
            let at = position.unwrap_or(plan.steps.len()).min(plan.steps.len());
            plan.steps.insert(at, Step::Orphan { key: key.clone() });
        }
    }
    let resizes = decision.resize.iter().map(|r| Step::Resize {
        key: ChildKey {
            api_version: "v1".to_owned(),
            kind: "PersistentVolumeClaim".to_owned(),
            name: r.name.clone(),
            namespace: None,
        },
        size: r.size.clone(),
    });
    plan.steps.splice(0..0, resizes);
    Ok((plan, decision))
}

/// Why `manifest` (stamped) must be applied over `current`, if it must.
fn decide(manifest: Value, current: Option<&Value>) -> Option<(ApplyReason, Value)> {
    let reason = match current {
        None => ApplyReason::Create,
        Some(current) if applied_hash(current) == applied_hash(&manifest) => {
            ApplyReason::Drift { field: first_difference_of_object(&manifest, current)? }
        }
        Some(_) => ApplyReason::SpecChanged,
    };
    Some((reason, manifest))
}

/// [`decide`] for a typed object, converting it into a manifest only when it must be applied. Falls back to
/// the manifest when the typed object cannot be walked like its JSON value.
///
/// One walk hashes the object and, when the observed copy carries an applied hash, checks it for drift at the
/// same time (see [`check::HashAndDiff`]); the steady state needs nothing else.
fn decide_typed(object: DesiredObject<'_>, current: Option<&Value>) -> build::Result<Option<(ApplyReason, Value)>> {
    let observed_hash = current.and_then(applied_hash).and_then(Value::as_str);
    let diff = current.filter(|_| observed_hash.is_some()).map(diff::DiffSink::new);
    let mut sink = check::HashAndDiff::new(hash::HashSink::new(object.api_version()), diff);
    let (hash, drifted) = match events::walk(&object, &mut sink) {
        Ok(()) => sink.finish(),
        Err(_) => (None, false),
    };
    let Some(hash) = hash else { return Ok(decide(stamp_owned(object.to_manifest()?), current)) };
    let manifest = |hash: u128| object.to_manifest().map(|m| stamp_with(m, hash::to_hex(hash)));
    let reason = match current {
        None => ApplyReason::Create,
        Some(current) if observed_hash.is_some_and(|h| hash::is_hex_of(h, hash)) => {
            if !drifted {
                return Ok(None);
            }
            // Walk again to name the field; differences are rare.
            let mut differ = diff::DiffSink::with_path(current);
            match events::walk(&object, &mut differ) {
                Err(events::Stop::Unsupported) => return Ok(decide(manifest(hash)?, Some(current))),
                Ok(()) | Err(events::Stop::Done) => {
                    ApplyReason::Drift { field: differ.finish().unwrap_or_else(|| ".".to_owned()) }
                }
            }
        }
        Some(_) => ApplyReason::SpecChanged,
    };
    let manifest = manifest(hash)?;
    debug_assert_eq!(applied_hash(&manifest).and_then(Value::as_str), Some(manifest_hash(&manifest).as_str()));
    Ok(Some((reason, manifest)))
}

/// The planning both entry points share: orders the wanted children, asks `decide` about each against its
/// observed copy, and deletes observed children nobody wants.
fn plan_wanted<W, E>(
    mut wanted: Vec<(ChildKey, W)>,
    observed: &BTreeMap<ChildKey, Value>,
    mut decide: impl FnMut(W, Option<&Value>) -> Result<Option<(ApplyReason, Value)>, E>,
) -> Result<Plan, E> {
    wanted.sort_by(|(a, _), (b, _)| a.rank().cmp(&b.rank()).then_with(|| a.cmp(b)));

    let find_observed = |key: &ChildKey| {
        observed.get(key).or_else(|| observed.iter().find(|(k, _)| k.same_object(key)).map(|(_, v)| v))
    };

    let mut steps = Vec::new();
    let mut kept: Vec<ChildKey> = Vec::with_capacity(wanted.len());
    for (key, object) in wanted {
        match decide(object, find_observed(&key))? {
            Some((reason, manifest)) => {
                kept.push(key.clone());
                steps.push(Step::Apply { key, reason, manifest });
            }
            None => kept.push(key),
        }
    }

    let mut deletions: Vec<&ChildKey> = observed.keys().filter(|k| !kept.iter().any(|w| w.same_object(k))).collect();
    deletions.sort_by(|a, b| b.rank().cmp(&a.rank()).then_with(|| a.cmp(b)));
    steps.extend(deletions.into_iter().map(|k| Step::Delete { key: k.clone() }));
    Ok(Plan { steps })
}

/// [`first_difference`] of two whole objects, ignoring `apiVersion` (the server may serve another version of
/// the same group).
fn first_difference_of_object(desired: &Value, observed: &Value) -> Option<String> {
    let (Value::Object(d), Value::Object(_)) = (desired, observed) else {
        return first_difference(desired, observed, "");
    };
    d.iter().filter(|(k, _)| k.as_str() != "apiVersion").find_map(|(k, dv)| match observed.get(k) {
        Some(ov) => first_difference(dv, ov, k),
        None => (!is_empty(dv)).then(|| k.clone()),
    })
}

/// The applied-hash annotation of an object, if it has one.
fn applied_hash(object: &Value) -> Option<&Value> {
    object.get("metadata")?.get("annotations")?.get(APPLIED_HASH)
}

/// Whether every field set in `desired` has the same value in `observed`.
///
/// Fields only in `observed` (server defaults, other managers' fields, status) are ignored. Empty lists, maps,
/// `false`, `0` and
/// strings in `desired` match a missing field (the API server drops them). Strings that are both Kubernetes
/// quantities match when they denote the same amount (`1000m` and `1`). Lists match element-wise and must have the
/// same length.
pub fn is_subset(desired: &Value, observed: &Value) -> bool {
    match (desired, observed) {
        (Value::Object(d), Value::Object(o)) => d.iter().all(|(k, dv)| match o.get(k) {
            Some(ov) => is_subset(dv, ov),
            None => is_empty(dv),
        }),
        (Value::Array(d), Value::Array(o)) => d.len() == o.len() && d.iter().zip(o).all(|(a, b)| is_subset(a, b)),
        (Value::String(d), o) => str_is_subset(d, o),
        (Value::Number(d), Value::Number(o)) => d.as_f64() == o.as_f64(),
        (Value::Number(d), Value::String(o)) => quantity::same_amount(&d.to_string(), o),
        (d, Value::Null) => is_empty(d),
        (d, o) => d == o,
    }
}

/// [`is_subset`] for a desired string.
fn str_is_subset(desired: &str, observed: &Value) -> bool {
    match observed {
        Value::String(o) => desired == o || quantity::same_amount(desired, o),
        Value::Number(o) => quantity::same_amount(&o.to_string(), desired),
        Value::Null => desired.is_empty(),
        Value::Bool(_) | Value::Array(_) | Value::Object(_) => false,
    }
}

/// The path of the first field where `desired` is not a subset of `observed` (see [`is_subset`]), if any,
/// prefixed with `path`.
pub fn first_difference(desired: &Value, observed: &Value, path: &str) -> Option<String> {
    let mut segments = difference_segments(desired, observed)?;
    if !path.is_empty() {
        segments.push(Segment::Key(path.to_owned()));
    }
    Some(join_segments(segments))
}

enum Segment {
    Key(String),
    Index(usize),
}

/// The reversed path segments of the first difference; allocates only when there is one.
fn difference_segments(desired: &Value, observed: &Value) -> Option<Vec<Segment>> {
    match (desired, observed) {
        (Value::Object(d), Value::Object(o)) => d.iter().find_map(|(k, dv)| {
            let mut segments = match o.get(k) {
                Some(ov) => difference_segments(dv, ov)?,
                None if is_empty(dv) => return None,
                None => Vec::new(),
            };
            segments.push(Segment::Key(k.clone()));
            Some(segments)
        }),
        (Value::Array(d), Value::Array(o)) if d.len() == o.len() => {
            d.iter().zip(o).enumerate().find_map(|(i, (a, b))| {
                let mut segments = difference_segments(a, b)?;
                segments.push(Segment::Index(i));
                Some(segments)
            })
        }
        _ => (!is_subset(desired, observed)).then(Vec::new),
    }
}

fn join_segments(mut reversed: Vec<Segment>) -> String {
    reversed.reverse();
    let mut out = String::new();
    for s in reversed {
        match s {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&k);
            }
            Segment::Index(i) => {
                use std::fmt::Write as _;
                let _ = write!(out, "[{i}]");
            }
        }
    }
    if out.is_empty() { ".".to_owned() } else { out }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_empty),
        Value::String(s) => s.is_empty(),
        // Go's `omitempty` drops false and zero, so the server returns them as missing fields.
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(kind: &str, api: &str, name: &str) -> ChildKey {
        ChildKey { api_version: api.into(), kind: kind.into(), name: name.into(), namespace: None }
    }

    fn cm(data: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "demo-config"}, "data": {"prometheus.yml": data}})
    }

    /// What the API server returns after an apply: our fields plus defaults and metadata it adds.
    fn as_server_returns(applied: &Value) -> Value {
        let mut v = applied.clone();
        let meta = v["metadata"].as_object_mut().unwrap();
        meta.insert("uid".into(), json!("0000"));
        meta.insert("resourceVersion".into(), json!("42"));
        meta.insert("managedFields".into(), json!([{"manager": "tsdb-operator"}]));
        v
    }

    #[test]
    fn missing_child_is_created() {
        let plan = plan_children(&[cm("a")], &BTreeMap::new());
        assert!(matches!(&plan.steps[..], [Step::Apply { reason: ApplyReason::Create, .. }]));
    }

    #[test]
    fn plan_is_idempotent_after_apply_with_server_metadata() {
        let plan = plan_children(&[cm("a")], &BTreeMap::new());
        let Step::Apply { manifest, .. } = &plan.steps[0] else { panic!() };
        let observed = BTreeMap::from([(key("ConfigMap", "v1", "demo-config"), as_server_returns(manifest))]);
        assert!(plan_children(&[cm("a")], &observed).is_empty());
    }

    #[test]
    fn changed_intent_is_applied_as_spec_changed() {
        let first = stamp(&cm("a"));
        let observed = BTreeMap::from([(key("ConfigMap", "v1", "demo-config"), first)]);
        let plan = plan_children(&[cm("b")], &observed);
        assert!(matches!(&plan.steps[..], [Step::Apply { reason: ApplyReason::SpecChanged, .. }]));
    }

    #[test]
    fn foreign_edit_of_an_owned_field_is_drift() {
        let mut edited = stamp(&cm("a"));
        edited["data"]["prometheus.yml"] = json!("edited by hand");
        let observed = BTreeMap::from([(key("ConfigMap", "v1", "demo-config"), edited)]);
        let plan = plan_children(&[cm("a")], &observed);
        assert!(
            matches!(&plan.steps[..], [Step::Apply { reason: ApplyReason::Drift { field }, .. }] if field == "data.prometheus.yml")
        );
    }

    #[test]
    fn foreign_labels_and_server_defaults_are_not_drift() {
        let mut observed_cm = stamp(&cm("a"));
        observed_cm["metadata"]["labels"] = json!({"team": "x"});
        observed_cm["immutable"] = json!(false);
        let observed = BTreeMap::from([(key("ConfigMap", "v1", "demo-config"), observed_cm)]);
        assert!(plan_children(&[cm("a")], &observed).is_empty());
    }

    #[test]
    fn equal_quantities_in_another_form_are_not_drift() {
        let d = json!({"resources": {"requests": {"cpu": "1000m", "memory": "1Gi"}}, "empty": [], "none": null});
        let o = json!({"resources": {"requests": {"cpu": "1", "memory": "1073741824"}}});
        assert!(is_subset(&d, &o));
        assert!(!is_subset(&json!({"cpu": "2"}), &json!({"cpu": "1"})));
    }

    #[test]
    fn false_and_zero_match_fields_the_server_omits() {
        let d = json!({"spec": {"publishNotReadyAddresses": false, "port": 0, "clusterIP": "None"}});
        assert!(is_subset(&d, &json!({"spec": {"clusterIP": "None"}})));
        assert!(!is_subset(&json!({"spec": {"flag": true}}), &json!({"spec": {}})));
    }

    #[test]
    fn children_no_longer_desired_are_deleted_last() {
        let pdb = key("PodDisruptionBudget", "policy/v1beta1", "demo");
        let observed = BTreeMap::from([(pdb.clone(), json!({}))]);
        let plan = plan_children(&[cm("a")], &observed);
        assert_eq!(plan.steps.len(), 2);
        assert_eq!(plan.steps[1], Step::Delete { key: pdb });
    }

    #[test]
    fn same_object_under_another_version_of_its_group_is_matched() {
        let desired = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "demo"},
            "spec": {"maxUnavailable": 1}});
        let mut served = stamp(&desired);
        served["apiVersion"] = json!("policy/v1beta1");
        let observed = BTreeMap::from([(key("PodDisruptionBudget", "policy/v1beta1", "demo"), served)]);
        assert!(plan_children(&[desired], &observed).is_empty());
    }

    #[test]
    fn steps_are_ordered_config_service_statefulset_pdb() {
        let m = |kind: &str, api: &str| json!({"apiVersion": api, "kind": kind, "metadata": {"name": "demo"}});
        let desired = [
            m("PodDisruptionBudget", "policy/v1"),
            m("StatefulSet", "apps/v1"),
            m("Service", "v1"),
            m("ConfigMap", "v1"),
        ];
        let kinds: Vec<String> =
            plan_children(&desired, &BTreeMap::new()).steps.iter().map(|s| s.key().kind.clone()).collect();
        assert_eq!(kinds, ["ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget"]);
    }

    #[test]
    fn first_difference_names_nested_fields_and_list_items() {
        let d = json!({"spec": {"template": {"containers": [{"name": "a"}, {"name": "b", "image": "x"}]}}});
        let o = json!({"spec": {"template": {"containers": [{"name": "a"}, {"name": "b", "image": "y"}]}}});
        assert_eq!(first_difference(&d, &o, "").as_deref(), Some("spec.template.containers[1].image"));
        assert_eq!(first_difference(&d, &d, ""), None);
        assert_eq!(first_difference(&json!({"a": 1}), &json!({}), "").as_deref(), Some("a"));
    }

    #[test]
    fn hash_ignores_its_own_annotation() {
        let m = cm("a");
        assert_eq!(manifest_hash(&m), manifest_hash(&stamp(&m)));
        assert_ne!(manifest_hash(&m), manifest_hash(&cm("b")));
    }
}
