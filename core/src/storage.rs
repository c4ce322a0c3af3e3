//! Step **decide** for storage changes: what a change of `spec.storage` means for the volumes that exist. Pure: no
//! I/O.
//!
//! A StatefulSet's `volumeClaimTemplates` cannot be changed (the API server refuses the whole update), and its
//! claims are never resized by Kubernetes itself. Applying a changed template as it is would fail every later
//! apply of the StatefulSet, scaling and upgrades included. So the template is changed only in ways that can be
//! carried out, the way CloudNativePG and the VictoriaMetrics operator do it:
//!
//! # Flow
//! 1. Compare the spec's size and class with the template of the observed StatefulSet (or, when none exists, with
//!    the claims that exist, which outlive it).
//! 2. **Growing** the size, when the claims' StorageClass allows expansion: every existing claim smaller than the
//!    spec is resized in place ([`StorageDecision::resize`]), and the StatefulSet is deleted with its pods
//!    orphaned ([`StorageDecision::recreate`]): the pods keep running, and the next pass creates the StatefulSet
//!    with the new template, which adopts them without a restart (same labels, same pod template).
//! 3. A change that cannot be carried out (shrinking, another class, a class without expansion, claims without a
//!    class) is **refused**: the StatefulSet keeps the template it has ([`StorageDecision::render`]), so every
//!    other change still goes through, and [`StorageDecision::refused`] says why and what to do, for the status.
//! 4. Claims whose capacity is still below their request are reported in [`StorageDecision::resizing`].
//!
//! # Guarantees
//! - No step deletes a pod or a claim; the StatefulSet is only ever deleted with `propagationPolicy: Orphan`.
//! - The rendered template is always one the API server accepts as an update of the observed StatefulSet.
//! - Deterministic: claims in name order.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::constants::reasons;
use crate::crd::StorageSpec;
use crate::crd::cluster::DEFAULT_STORAGE_SIZE;
use crate::quantity;
use crate::status::Problem;

/// A data volume claim of the cluster, as observed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ObservedClaim {
    /// Name of the claim (`data-<cluster>-<ordinal>`).
    pub name: String,
    /// `spec.storageClassName`.
    pub storage_class_name: Option<String>,
    /// `spec.resources.requests.storage`.
    pub requested: Option<String>,
    /// `status.capacity.storage`.
    pub capacity: Option<String>,
}

/// What exists of the cluster's storage.
#[derive(Clone, Debug, Default)]
pub struct ObservedStorage<'a> {
    /// The observed StatefulSet, as JSON.
    pub stateful_set: Option<&'a Value>,
    /// The cluster's data volume claims.
    pub claims: &'a [ObservedClaim],
    /// `allowVolumeExpansion` of the claims' StorageClass; `None` when there is no such class.
    pub class_allows_expansion: Option<bool>,
}

/// A claim to resize.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClaimResize {
    /// Name of the claim.
    pub name: String,
    /// The new `spec.resources.requests.storage`.
    pub size: String,
}

/// What to do about the cluster's storage.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageDecision {
    /// The storage the StatefulSet's claim template must say.
    pub render: StorageSpec,
    /// Claims to resize before anything else.
    pub resize: Vec<ClaimResize>,
    /// Delete the observed StatefulSet, orphaning its pods, so that the next pass creates it with the new template.
    pub recreate: bool,
    /// A storage change that is not carried out, with the reason and the fix.
    pub refused: Option<StorageRefusal>,
    /// Claims whose capacity is below their request (being resized by the storage provider).
    pub resizing: Vec<String>,
}

/// Decides what `spec` means for the storage that exists.
pub fn decide_storage(spec: &StorageSpec, observed: &ObservedStorage<'_>) -> StorageDecision {
    let wanted_size = effective_size(&spec.size.0);
    let wanted_class = spec.storage_class_name.clone().filter(|c| !c.is_empty());
    let resizing = observed.claims.iter().filter(|c| is_resizing(c)).map(|c| c.name.clone()).collect();
    let mut decision = StorageDecision {
        render: StorageSpec {
            storage_class_name: spec.storage_class_name.clone(),
            size: Quantity(wanted_size.clone()),
            empty_dir: spec.empty_dir.clone(),
        },
        resize: Vec::new(),
        recreate: false,
        refused: None,
        resizing,
    };

    let template = observed.stateful_set.and_then(claim_template);
    if let Some((render, refused)) = refuse_volume_kind_switch(spec, observed.stateful_set, template.as_ref()) {
        (decision.render, decision.refused) = (render, Some(refused));
        return decision;
    } else if spec.empty_dir.is_some() {
        return decision;
    }
    if let Some((raw_class, size)) = &template {
        let class = raw_class.clone().filter(|c| !c.is_empty());
        if class != wanted_class {
            decision.render =
                StorageSpec { storage_class_name: raw_class.clone(), size: Quantity(size.clone()), empty_dir: None };
            decision.refused = Some(refuse(
                "spec.storage.storageClassName",
                &format!(
                    "cannot move the volumes from StorageClass {} to {} in place: set it back, or create a new \
                     cluster with the new class and restore a backup into it (spec.restore)",
                    show_class(class.as_deref()),
                    show_class(wanted_class.as_deref())
                ),
            ));
            return decision;
        }
        if less(&wanted_size, size) {
            decision.render =
                StorageSpec { storage_class_name: raw_class.clone(), size: Quantity(size.clone()), empty_dir: None };
            decision.refused = Some(refuse(
                "spec.storage.size",
                &format!(
                    "cannot shrink the volumes from {size} to {wanted_size}: volumes only grow; set it back to \
                     {size}, or create a new cluster with the smaller size and restore a backup into it"
                ),
            ));
            return decision;
        }
        // The template's own spelling of an unchanged class or amount (`1Gi` for `1024Mi`): any other text would
        // be an update of an immutable field.
        decision.render.storage_class_name.clone_from(raw_class);
        if !less(size, &wanted_size) {
            decision.render.size = Quantity(size.clone());
        }
    }

    // Claims below the wanted size (all of them after a size increase; some when an earlier resize was cut short).
    let small: Vec<&ObservedClaim> =
        observed.claims.iter().filter(|c| c.requested.as_deref().is_some_and(|r| less(r, &wanted_size))).collect();
    let grows = template.as_ref().is_some_and(|(_, size)| less(size, &wanted_size));
    if !small.is_empty() {
        let classless = small.iter().any(|c| c.storage_class_name.as_deref().is_none_or(str::is_empty));
        let blocker = if classless {
            Some("the volume claims have no StorageClass, so they cannot be expanded".to_owned())
        } else {
            match observed.class_allows_expansion {
                Some(true) => None,
                Some(false) => Some(format!(
                    "StorageClass {} does not allow volume expansion (allowVolumeExpansion is not true)",
                    show_class(small[0].storage_class_name.as_deref())
                )),
                None => Some(format!(
                    "StorageClass {} of the volume claims does not exist",
                    show_class(small[0].storage_class_name.as_deref())
                )),
            }
        };
        if let Some(blocker) = blocker {
            if let Some((_, size)) = template {
                decision.render.size = Quantity(size);
            }
            decision.refused = Some(refuse(
                "spec.storage.size",
                &format!(
                    "cannot grow the volumes to {wanted_size}: {blocker}; ask the cluster administrator to allow \
                     expansion, or set the size back"
                ),
            ));
            return decision;
        }
        decision.resize =
            small.iter().map(|c| ClaimResize { name: c.name.clone(), size: wanted_size.clone() }).collect();
        decision.resize.sort_by(|a, b| a.name.cmp(&b.name));
    }
    decision.recreate = grows;
    decision
}

/// The StorageClass whose `allowVolumeExpansion` [`decide_storage`] needs for `spec`, if it needs one: the class
/// of the first claim smaller than the spec asks for. Lets an adapter skip the read when nothing grows.
pub fn class_to_check(spec: &StorageSpec, claims: &[ObservedClaim]) -> Option<String> {
    let wanted = effective_size(&spec.size.0);
    claims
        .iter()
        .find(|c| c.requested.as_deref().is_some_and(|r| less(r, &wanted)))
        .and_then(|c| c.storage_class_name.clone())
        .filter(|c| !c.is_empty())
}

/// Whether `name` is a data volume claim of the StatefulSet `cluster` (`data-<cluster>-<ordinal>`).
pub fn is_data_claim_of(cluster: &str, name: &str) -> bool {
    name.strip_prefix(crate::constants::volumes::DATA)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|rest| rest.strip_prefix(cluster))
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|ordinal| !ordinal.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit()))
}

/// The size the claim template gets for `size` (empty or zero means the default).
fn effective_size(size: &str) -> String {
    match quantity::parse_nanos(size) {
        Ok(n) if n > 0 => size.to_owned(),
        _ if size.trim().is_empty() => DEFAULT_STORAGE_SIZE.to_owned(),
        Ok(_) => DEFAULT_STORAGE_SIZE.to_owned(),
        Err(_) => size.to_owned(),
    }
}

/// Whether quantity `a` is less than `b`; unparsable quantities compare as not less.
fn less(a: &str, b: &str) -> bool {
    matches!((quantity::parse_nanos(a), quantity::parse_nanos(b)), (Ok(a), Ok(b)) if a < b)
}

fn show_class(class: Option<&str>) -> String {
    class.map_or_else(|| "(the cluster default)".to_owned(), |c| format!("{c:?}"))
}

fn refuse(field: &'static str, message: &str) -> StorageRefusal {
    StorageRefusal { field, message: message.to_owned() }
}

/// A storage change that cannot be carried out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageRefusal {
    /// The field whose change is refused (`spec.storage.size` or `spec.storage.storageClassName`).
    pub field: &'static str,
    /// Why, and what to do instead.
    pub message: String,
}

impl StorageRefusal {
    /// The refusal as a status problem (reason `StorageChangeRefused`, message `field: why`).
    pub fn problem(&self) -> Problem {
        Problem {
            reason: reasons::STORAGE_CHANGE_REFUSED.to_owned(),
            message: format!("{}: {}", self.field, self.message),
        }
    }
}

/// Class and size of the `data` claim template of an observed StatefulSet.
/// A StatefulSet's claim templates cannot change: a claim stays a claim and an emptyDir an emptyDir. The storage to
/// render instead and the refusal, when `spec` asks for the other kind than the observed StatefulSet has.
fn refuse_volume_kind_switch(
    spec: &StorageSpec,
    sts: Option<&Value>,
    template: Option<&(Option<String>, String)>,
) -> Option<(StorageSpec, StorageRefusal)> {
    let sts = sts?;
    match (template, &spec.empty_dir) {
        (Some((raw_class, size)), Some(_)) => Some((
            StorageSpec { storage_class_name: raw_class.clone(), size: Quantity(size.clone()), empty_dir: None },
            refuse(
                "spec.storage.emptyDir",
                "cannot move the write-ahead log from its volume claims to an emptyDir in place: remove emptyDir, \
                 or delete the cluster and create it again with it",
            ),
        )),
        (None, None) => {
            let empty = empty_dir_of(sts)?;
            Some((
                StorageSpec { empty_dir: Some(empty), ..spec.clone() },
                refuse(
                    "spec.storage.emptyDir",
                    "cannot move the write-ahead log from an emptyDir to volume claims in place: set emptyDir again, \
                     or delete the cluster and create it again without it",
                ),
            ))
        }
        _ => None,
    }
}

/// The emptyDir of the data volume of an observed StatefulSet, if it has one.
fn empty_dir_of(sts: &Value) -> Option<crate::crd::cluster::EmptyDirStorage> {
    let volume = sts
        .pointer("/spec/template/spec/volumes")?
        .as_array()?
        .iter()
        .find(|v| v.pointer("/name").and_then(Value::as_str) == Some(crate::constants::volumes::DATA))?;
    let empty = volume.get("emptyDir")?;
    Some(crate::crd::cluster::EmptyDirStorage {
        medium: empty.get("medium").and_then(Value::as_str).filter(|m| !m.is_empty()).map(str::to_owned),
        size_limit: empty.get("sizeLimit").and_then(Value::as_str).map(|q| Quantity(q.to_owned())),
    })
}

/// Whether the claim's capacity is below its request (the provider is growing it).
fn is_resizing(claim: &ObservedClaim) -> bool {
    match (claim.requested.as_deref(), claim.capacity.as_deref()) {
        (Some(r), Some(c)) => less(c, r),
        _ => false,
    }
}

fn claim_template(sts: &Value) -> Option<(Option<String>, String)> {
    let template = sts
        .pointer("/spec/volumeClaimTemplates")?
        .as_array()?
        .iter()
        .find(|t| t.pointer("/metadata/name").and_then(Value::as_str) == Some(crate::constants::volumes::DATA))?;
    let size = template.pointer("/spec/resources/requests/storage")?.as_str()?.to_owned();
    let class = template.pointer("/spec/storageClassName").and_then(Value::as_str).map(str::to_owned);
    Some((class, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(size: &str, class: Option<&str>) -> StorageSpec {
        StorageSpec { storage_class_name: class.map(str::to_owned), size: Quantity(size.to_owned()), empty_dir: None }
    }

    fn sts(size: &str, class: Option<&str>) -> Value {
        let mut t = json!({"metadata": {"name": "data"}, "spec": {"resources": {"requests": {"storage": size}}}});
        if let Some(c) = class {
            t["spec"]["storageClassName"] = json!(c);
        }
        json!({"spec": {"volumeClaimTemplates": [t]}})
    }

    fn claim(name: &str, requested: &str, capacity: &str) -> ObservedClaim {
        ObservedClaim {
            name: name.to_owned(),
            storage_class_name: Some("fast".to_owned()),
            requested: Some(requested.to_owned()),
            capacity: Some(capacity.to_owned()),
        }
    }

    #[test]
    fn a_claim_stays_a_claim_and_an_empty_dir_stays_an_empty_dir() {
        let empty = crate::crd::cluster::EmptyDirStorage { medium: None, size_limit: None };
        let with_empty = StorageSpec { empty_dir: Some(empty.clone()), ..spec("2Gi", None) };
        // A new agent gets its emptyDir.
        let none = ObservedStorage { stateful_set: None, claims: &[], class_allows_expansion: None };
        let d = decide_storage(&with_empty, &none);
        assert_eq!((d.render.empty_dir.as_ref(), d.refused.is_none()), (Some(&empty), true));
        // Claims observed: the emptyDir is refused and the claims are kept.
        let claims = sts("2Gi", None);
        let observed = ObservedStorage { stateful_set: Some(&claims), claims: &[], class_allows_expansion: None };
        let d = decide_storage(&with_empty, &observed);
        assert_eq!(d.render.empty_dir, None);
        assert_eq!(d.refused.as_ref().map(|r| r.field), Some("spec.storage.emptyDir"));
        // An emptyDir observed: removing it is refused and the emptyDir kept.
        let on_node =
            json!({"spec": {"template": {"spec": {"volumes": [{"name": "data", "emptyDir": {"medium": "Memory"}}]}}}});
        let observed = ObservedStorage { stateful_set: Some(&on_node), claims: &[], class_allows_expansion: None };
        let d = decide_storage(&spec("2Gi", None), &observed);
        assert_eq!(d.render.empty_dir.and_then(|e| e.medium).as_deref(), Some("Memory"));
        assert!(d.refused.is_some_and(|r| r.message.contains("from an emptyDir to volume claims")));
        // And keeping it changes nothing.
        let d = decide_storage(&with_empty, &observed);
        assert!(d.refused.is_none() && d.resize.is_empty() && !d.recreate);
    }

    #[test]
    fn only_claims_named_after_the_statefulset_are_data_claims() {
        assert!(is_data_claim_of("demo", "data-demo-0"));
        assert!(is_data_claim_of("demo", "data-demo-12"));
        assert!(!is_data_claim_of("demo", "data-demo-x-0"));
        assert!(!is_data_claim_of("demo", "data-demo-"));
        assert!(!is_data_claim_of("demo", "data-demonic-0"));
    }

    #[test]
    fn the_class_is_read_only_when_a_claim_must_grow() {
        let claims = [claim("data-demo-0", "20Gi", "20Gi")];
        assert_eq!(class_to_check(&spec("20Gi", None), &claims), None);
        assert_eq!(class_to_check(&spec("30Gi", None), &claims).as_deref(), Some("fast"));
    }

    #[test]
    fn an_unchanged_size_changes_nothing() {
        let s = sts("20Gi", Some("fast"));
        let claims = [claim("data-demo-0", "20Gi", "20Gi")];
        let d = decide_storage(
            &spec("20Gi", Some("fast")),
            &ObservedStorage { stateful_set: Some(&s), claims: &claims, class_allows_expansion: Some(false) },
        );
        assert_eq!(d.render, spec("20Gi", Some("fast")));
        assert!(d.resize.is_empty() && !d.recreate && d.refused.is_none() && d.resizing.is_empty());
    }

    #[test]
    fn growing_resizes_every_claim_and_recreates_the_statefulset_with_its_pods_orphaned() {
        let s = sts("20Gi", Some("fast"));
        let claims = [claim("data-demo-1", "20Gi", "20Gi"), claim("data-demo-0", "20Gi", "20Gi")];
        let d = decide_storage(
            &spec("30Gi", Some("fast")),
            &ObservedStorage { stateful_set: Some(&s), claims: &claims, class_allows_expansion: Some(true) },
        );
        assert_eq!(d.render, spec("30Gi", Some("fast")));
        assert_eq!(
            d.resize,
            [
                ClaimResize { name: "data-demo-0".into(), size: "30Gi".into() },
                ClaimResize { name: "data-demo-1".into(), size: "30Gi".into() }
            ]
        );
        assert!(d.recreate);
        assert!(d.refused.is_none());
    }

    #[test]
    fn after_the_recreate_the_new_statefulset_is_created_and_claims_still_growing_are_reported() {
        let claims = [claim("data-demo-0", "30Gi", "20Gi")];
        let d = decide_storage(
            &spec("30Gi", Some("fast")),
            &ObservedStorage { stateful_set: None, claims: &claims, class_allows_expansion: Some(true) },
        );
        assert_eq!(d.render, spec("30Gi", Some("fast")));
        assert!(d.resize.is_empty() && !d.recreate && d.refused.is_none());
        assert_eq!(d.resizing, ["data-demo-0"]);
    }

    #[test]
    fn shrinking_is_refused_and_the_observed_template_is_kept() {
        let s = sts("30Gi", None);
        let d = decide_storage(&spec("20Gi", None), &ObservedStorage { stateful_set: Some(&s), ..Default::default() });
        assert_eq!(d.render, spec("30Gi", None));
        assert!(d.resize.is_empty() && !d.recreate);
        let refused = d.refused.unwrap().problem();
        assert_eq!(refused.reason, "StorageChangeRefused");
        assert_eq!(
            refused.message,
            "spec.storage.size: cannot shrink the volumes from 30Gi to 20Gi: volumes only grow; set it back to \
             30Gi, or create a new cluster with the smaller size and restore a backup into it"
        );
    }

    #[test]
    fn a_new_storage_class_is_refused() {
        let s = sts("20Gi", Some("fast"));
        let d = decide_storage(
            &spec("20Gi", Some("slow")),
            &ObservedStorage { stateful_set: Some(&s), ..Default::default() },
        );
        assert_eq!(d.render, spec("20Gi", Some("fast")));
        assert!(d.refused.unwrap().problem().message.starts_with(
            "spec.storage.storageClassName: cannot move the volumes from StorageClass \"fast\" to \"slow\" in place"
        ));
    }

    #[test]
    fn growing_without_expansion_support_is_refused_and_nothing_is_resized() {
        let s = sts("20Gi", Some("fast"));
        let claims = [claim("data-demo-0", "20Gi", "20Gi")];
        for (allows, why) in [
            (Some(false), "StorageClass \"fast\" does not allow volume expansion"),
            (None, "StorageClass \"fast\" of the volume claims does not exist"),
        ] {
            let d = decide_storage(
                &spec("30Gi", Some("fast")),
                &ObservedStorage { stateful_set: Some(&s), claims: &claims, class_allows_expansion: allows },
            );
            assert_eq!(d.render, spec("20Gi", Some("fast")));
            assert!(d.resize.is_empty() && !d.recreate);
            let message = d.refused.unwrap().problem().message;
            assert!(message.starts_with("spec.storage.size: cannot grow the volumes to 30Gi: "), "{message}");
            assert!(message.contains(why), "{message}");
        }
    }

    #[test]
    fn growing_before_any_claim_exists_only_recreates_the_statefulset() {
        let s = sts("20Gi", None);
        let d = decide_storage(&spec("30Gi", None), &ObservedStorage { stateful_set: Some(&s), ..Default::default() });
        assert_eq!(d.render, spec("30Gi", None));
        assert!(d.recreate && d.resize.is_empty() && d.refused.is_none());
    }

    #[test]
    fn the_same_amount_in_other_units_is_no_change() {
        let s = sts("1Gi", None);
        let d =
            decide_storage(&spec("1024Mi", None), &ObservedStorage { stateful_set: Some(&s), ..Default::default() });
        assert!(!d.recreate && d.refused.is_none());
        assert_eq!(d.render, spec("1Gi", None), "the template keeps its own spelling");
    }
}
