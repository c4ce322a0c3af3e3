//! Reading PrometheusClusters one object at a time, so that one the operator cannot read never stops the others.
//! Pure: no I/O (the watch stream it wraps does the I/O).
//!
//! kube's typed watcher decodes a whole LIST page at once: a single object that the CRD schema admits but the
//! operator's types cannot hold (an integer out of `i32` range admitted by an older CRD without bounds, a field of
//! the wrong shape written before a schema change) fails the page, and with it every cluster, after each restart.
//! Here the watch reads [`DynamicObject`]s (which always decode) and each one is decoded on its own.
//!
//! # Guarantees
//! - A readable object reaches the store and the controller exactly as the typed watcher would deliver it.
//! - An unreadable object never reaches the store; if an earlier, readable version is there, it is removed (the
//!   healer and the backup scheduler read the same store and must not act on a spec that no longer exists).
//! - Each unreadable object is reported once per watch event as [`Unreadable`], with the field path and the
//!   decoder's reason, so the caller can say why in the object's status.

use kube::api::DynamicObject;
use kube::runtime::watcher::Event;
use tsdb_operator_core::crd::{
    PrometheusCluster, PrometheusClusterSpec, PrometheusClusterStatus, UnreadableField, read_spec,
};

/// An object whose spec the operator cannot read.
#[derive(Clone, Debug)]
pub struct Unreadable {
    /// The object with its metadata and its status (when that could be read) and a default spec: enough to write
    /// its status and publish events, never to reconcile.
    pub object: PrometheusCluster,
    /// Path of the field that could not be read, such as `spec.replicas`.
    pub field: String,
    /// The decoder's reason, such as ``invalid value: integer `3000000000`, expected i32``.
    pub reason: String,
}

impl Unreadable {
    /// The message shown in status and events: the field, what is wrong with it and what to do.
    pub fn message(&self) -> String {
        UnreadableField { field: self.field.clone(), reason: self.reason.clone() }.message("prometheuscluster")
    }
}

/// Decodes one object.
pub fn decode_cluster(object: DynamicObject) -> Result<PrometheusCluster, Box<Unreadable>> {
    let DynamicObject { metadata, mut data, .. } = object;
    let spec = data.get_mut("spec").map_or_else(|| serde_json::json!({}), serde_json::Value::take);
    // A status the operator cannot read is rewritten by the next status write; it never makes the object unreadable.
    let status = data
        .get_mut("status")
        .map(serde_json::Value::take)
        .and_then(|s| serde_json::from_value::<PrometheusClusterStatus>(s).ok());
    match read_spec::<PrometheusClusterSpec>(spec) {
        Ok(spec) => Ok(PrometheusCluster { metadata, spec, status }),
        Err(UnreadableField { field, reason }) => {
            Err(Box::new(Unreadable { object: placeholder(metadata, status), field, reason }))
        }
    }
}

/// The object with the default spec.
fn placeholder(metadata: kube::api::ObjectMeta, status: Option<PrometheusClusterStatus>) -> PrometheusCluster {
    PrometheusCluster { metadata, spec: PrometheusClusterSpec::default(), status }
}

/// Turns a watch event of dynamic objects into one of PrometheusClusters, reporting unreadable objects to
/// `unreadable`. `None` when nothing is left for the store (an unreadable object during a relist).
pub fn decode_event(
    event: Event<DynamicObject>,
    unreadable: &mut impl FnMut(Unreadable),
) -> Option<Event<PrometheusCluster>> {
    match event {
        Event::Init => Some(Event::Init),
        Event::InitDone => Some(Event::InitDone),
        Event::InitApply(object) => match decode_cluster(object) {
            Ok(pc) => Some(Event::InitApply(pc)),
            Err(bad) => {
                unreadable(*bad);
                None
            }
        },
        Event::Apply(object) => match decode_cluster(object) {
            Ok(pc) => Some(Event::Apply(pc)),
            Err(bad) => {
                // Drop any readable version the store still holds.
                let gone = bad.object.clone();
                unreadable(*bad);
                Some(Event::Delete(gone))
            }
        },
        Event::Delete(object) => Some(Event::Delete(match decode_cluster(object) {
            Ok(pc) => pc,
            Err(bad) => bad.object,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ApiResource;
    use kube::core::GroupVersionKind;
    use serde_json::json;

    fn object(spec: &serde_json::Value) -> DynamicObject {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("observability.merlionos.org", "v1", "PrometheusCluster"),
            "prometheusclusters",
        );
        let mut o = DynamicObject::new("demo", &ar).within("team-a");
        o.data = json!({"spec": spec, "status": {"phase": "Active", "readyReplicas": 1}});
        o
    }

    #[test]
    fn a_readable_object_decodes_like_the_typed_watcher() {
        let pc = decode_cluster(object(&json!({"replicas": 3, "storage": {"size": "30Gi"}}))).unwrap();
        assert_eq!(pc.spec.replicas, 3);
        assert_eq!(pc.spec.storage.size.0, "30Gi");
        assert_eq!(pc.status.unwrap().ready_replicas, 1);
        assert_eq!(pc.metadata.namespace.as_deref(), Some("team-a"));
    }

    #[test]
    fn an_out_of_range_integer_names_the_field_and_the_fix() {
        let bad = decode_cluster(object(&json!({"replicas": 3_000_000_000_u64}))).unwrap_err();
        assert_eq!(bad.field, "spec.replicas");
        assert_eq!(
            bad.message(),
            "spec.replicas: Invalid value: invalid value: integer `3000000000`, expected i32: the operator cannot \
             read this field; set it to a value within the bounds that `kubectl explain \
             prometheuscluster.spec.replicas` documents"
        );
        assert_eq!(bad.object.metadata.name.as_deref(), Some("demo"));
        assert_eq!(
            bad.object.status.as_ref().and_then(|s| s.phase).map(tsdb_operator_core::crd::Phase::as_str),
            Some("Active")
        );
    }

    #[test]
    fn a_nested_field_of_the_wrong_shape_is_named_by_its_path() {
        let bad = decode_cluster(object(&json!({"backup": {"retention": {"keepLast": "many"}}}))).unwrap_err();
        assert_eq!(bad.field, "spec.backup.retention.keepLast");
    }

    #[test]
    fn an_unreadable_status_does_not_make_the_object_unreadable() {
        let mut o = object(&json!({}));
        o.data["status"] = json!({"readyReplicas": "lots"});
        let pc = decode_cluster(o).unwrap();
        assert!(pc.status.is_none());
    }

    #[test]
    fn an_unreadable_update_removes_the_old_version_from_the_store_and_is_reported() {
        let mut reported = Vec::new();
        let event = decode_event(Event::Apply(object(&json!({"replicas": -1.5}))), &mut |u| reported.push(u.field));
        assert!(matches!(event, Some(Event::Delete(pc)) if pc.metadata.name.as_deref() == Some("demo")));
        assert_eq!(reported, ["spec.replicas"]);
    }

    #[test]
    fn an_unreadable_object_in_a_relist_is_left_out_and_the_others_pass() {
        let mut reported = 0;
        let mut count = |_: Unreadable| reported += 1;
        assert!(decode_event(Event::InitApply(object(&json!({"replicas": "x"}))), &mut count).is_none());
        assert!(matches!(decode_event(Event::InitApply(object(&json!({}))), &mut count), Some(Event::InitApply(_))));
        assert_eq!(reported, 1);
    }
}
