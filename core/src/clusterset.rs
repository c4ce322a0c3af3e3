//! ClusterSet logic with the seed's semantics: member selection by cluster and namespace labels, the
//! backup-template overlay (opt-out annotation, member wins), sorted members and the per-phase count. Pure.
//!
//! # Flow
//! 1. [`select_members`]: clusters whose namespace matches `namespaceSelector` (unset or empty: all namespaces)
//!    and whose labels match `clusterSelector` (unset or empty: all clusters).
//! 2. [`decide_overlay`] for each member: the backup spec to write, or why nothing is written.
//! 3. [`build_set_status`]: members sorted by namespace then name, `memberCount`, `phaseCount` (members without a
//!    phase are not counted), `activeCount`, `notActive` and a `Ready` condition.
//!
//! Deleting a Set never undoes overlays (seed behaviour): members keep working with the backup they were given.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::constants::{annotations, conditions};
use crate::crd::{
    BackupSpec, ClusterSetMember, Phase, PrometheusCluster, PrometheusClusterSet, PrometheusClusterSetStatus,
};
use crate::selector;
use crate::status::merge_conditions;

/// Selects the members of `set` among `clusters`. `namespace_labels` maps each namespace to its labels; it is
/// consulted only when the set has a non-empty namespace selector (a namespace missing from it has no labels).
/// The result is sorted by namespace, then name.
pub fn select_members<'a>(
    set: &PrometheusClusterSet,
    clusters: impl IntoIterator<Item = &'a PrometheusCluster>,
    namespace_labels: &BTreeMap<String, BTreeMap<String, String>>,
) -> Vec<&'a PrometheusCluster> {
    let ns_selector = set.spec.namespace_selector.as_ref();
    let filter_namespaces = !selector::is_empty(ns_selector);
    let empty = BTreeMap::new();
    let mut members: Vec<&PrometheusCluster> = clusters
        .into_iter()
        .filter(|pc| {
            if !filter_namespaces {
                return true;
            }
            let ns = pc.metadata.namespace.as_deref().unwrap_or_default();
            selector::matches(ns_selector, namespace_labels.get(ns).unwrap_or(&empty))
        })
        .filter(|pc| {
            selector::matches(set.spec.cluster_selector.as_ref(), pc.metadata.labels.as_ref().unwrap_or(&empty))
        })
        .collect();
    members.sort_by(|a, b| {
        (a.metadata.namespace.as_deref(), a.metadata.name.as_deref())
            .cmp(&(b.metadata.namespace.as_deref(), b.metadata.name.as_deref()))
    });
    members
}

/// What the overlay does to one member.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "decision", rename_all = "camelCase")]
pub enum OverlayDecision {
    /// Write `backup` into the member's spec and stamp the `clusterset` annotation with the set's name.
    Apply {
        /// The backup spec to write (the template with `enabled: true`).
        backup: Box<BackupSpec>,
        /// The value of the `observability.merlionos.org/clusterset` annotation.
        set_name: String,
    },
    /// The set has no backup template.
    NoTemplate,
    /// The member opted out with the annotation.
    OptedOut,
    /// The member has backups enabled itself: member wins.
    MemberWins,
    /// The member already carries exactly this overlay.
    UpToDate,
}

/// Decides the backup overlay of `set` on `member` in the seed's order: no template, opt-out,
/// member wins, else replace the backup spec wholesale with the template and force `enabled`.
///
/// A member that a set overlaid before has `enabled: true`, so it counts as "member wins" afterwards, exactly as
/// in the seed — unless the overlay came from this set and the template changed, in which case the new template
/// is applied, so that editing a set's template reaches the members it overlaid.
pub fn decide_overlay(set: &PrometheusClusterSet, member: &PrometheusCluster) -> OverlayDecision {
    let Some(template) = &set.spec.backup_template else { return OverlayDecision::NoTemplate };
    let annotations = member.metadata.annotations.as_ref();
    if annotations.and_then(|a| a.get(annotations::CLUSTERSET_OPT_OUT)).is_some_and(|v| v == "true") {
        return OverlayDecision::OptedOut;
    }
    let set_name = set.metadata.name.clone().unwrap_or_default();
    let mut backup = template.clone();
    backup.enabled = true;
    if member.spec.backup.enabled {
        let stamped_by_us = annotations.and_then(|a| a.get(annotations::CLUSTERSET)).is_some_and(|v| *v == set_name);
        if !stamped_by_us {
            return OverlayDecision::MemberWins;
        }
        if member.spec.backup == backup {
            return OverlayDecision::UpToDate;
        }
    }
    OverlayDecision::Apply { backup: Box::new(backup), set_name }
}

/// Builds the set's status from its members (already sorted by [`select_members`]).
pub fn build_set_status(
    set: &PrometheusClusterSet,
    members: &[&PrometheusCluster],
    now: Timestamp,
) -> PrometheusClusterSetStatus {
    let mut list: Vec<ClusterSetMember> = members
        .iter()
        .map(|pc| ClusterSetMember {
            namespace: pc.metadata.namespace.clone().unwrap_or_default(),
            name: pc.metadata.name.clone().unwrap_or_default(),
            phase: pc.status.as_ref().and_then(|s| s.phase).map(|p| p.as_str().to_owned()).unwrap_or_default(),
        })
        .collect();
    list.sort();
    let mut phase_count = BTreeMap::new();
    for m in list.iter().filter(|m| !m.phase.is_empty()) {
        *phase_count.entry(m.phase.clone()).or_insert(0) += 1;
    }
    let not_active: Vec<String> =
        list.iter().filter(|m| !m.is_active()).map(|m| format!("{}/{}", m.namespace, m.name)).collect();
    let member_count = i32::try_from(list.len()).unwrap_or(i32::MAX);
    let active_count = phase_count.get(Phase::Active.as_str()).copied().unwrap_or(0);
    let ready = if not_active.is_empty() {
        ready_condition(true, "AllMembersActive", format!("{active_count}/{member_count} members are Active"))
    } else {
        let mut shown: Vec<&str> = not_active.iter().take(10).map(String::as_str).collect();
        if not_active.len() > 10 {
            shown.push("...");
        }
        ready_condition(
            false,
            "MembersNotActive",
            format!("{active_count}/{member_count} members are Active; not Active: {}", shown.join(", ")),
        )
    };
    let previous = set.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    PrometheusClusterSetStatus {
        member_count,
        phase_count,
        active_count,
        not_active,
        members: list,
        observed_generation: set.metadata.generation,
        conditions: merge_conditions(previous, vec![ready], set.metadata.generation, now),
    }
}

fn ready_condition(ok: bool, reason: &str, message: String) -> Condition {
    crate::status::new_condition(conditions::READY, ok, reason, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{PrometheusClusterSetSpec, PrometheusClusterStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn pc(ns: &str, name: &str, labels: &[(&str, &str)], phase: Option<Phase>) -> PrometheusCluster {
        let mut p = PrometheusCluster::new(name, serde_json::from_value(serde_json::json!({})).unwrap());
        p.metadata.namespace = Some(ns.into());
        p.metadata.labels = Some(labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect());
        p.status = phase.map(|ph| PrometheusClusterStatus { phase: Some(ph), ..Default::default() });
        p
    }

    fn set(spec: PrometheusClusterSetSpec) -> PrometheusClusterSet {
        PrometheusClusterSet::new("fleet", spec)
    }

    fn template() -> BackupSpec {
        BackupSpec { bucket: "fleet-backups".into(), schedule: "@daily".into(), ..Default::default() }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    #[test]
    fn selector_picks_labelled_clusters_across_namespaces_sorted() {
        let clusters = [
            pc("b", "x", &[("team", "a")], None),
            pc("a", "y", &[("team", "a")], None),
            pc("a", "z", &[("team", "b")], None),
        ];
        let s = set(PrometheusClusterSetSpec {
            cluster_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("team".into(), "a".into())])),
                ..Default::default()
            }),
            ..Default::default()
        });
        let names: Vec<_> = select_members(&s, &clusters, &BTreeMap::new())
            .iter()
            .map(|p| format!("{}/{}", p.metadata.namespace.as_deref().unwrap(), p.metadata.name.as_deref().unwrap()))
            .collect();
        assert_eq!(names, ["a/y", "b/x"]);
    }

    #[test]
    fn namespace_selector_filters_on_namespace_labels() {
        let clusters = [pc("prod", "x", &[], None), pc("dev", "y", &[], None)];
        let s = set(PrometheusClusterSetSpec {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("env".into(), "prod".into())])),
                ..Default::default()
            }),
            ..Default::default()
        });
        let ns = BTreeMap::from([
            ("prod".to_owned(), BTreeMap::from([("env".to_owned(), "prod".to_owned())])),
            ("dev".to_owned(), BTreeMap::from([("env".to_owned(), "dev".to_owned())])),
        ]);
        let members = select_members(&s, &clusters, &ns);
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].metadata.name.as_deref(), Some("x"));
    }

    #[test]
    fn overlay_forces_enabled_and_stamps_the_set_name() {
        let s = set(PrometheusClusterSetSpec { backup_template: Some(template()), ..Default::default() });
        let OverlayDecision::Apply { backup, set_name } = decide_overlay(&s, &pc("a", "x", &[], None)) else {
            panic!("expected an overlay")
        };
        assert!(backup.enabled);
        assert_eq!(backup.bucket, "fleet-backups");
        assert_eq!(set_name, "fleet");
    }

    #[test]
    fn overlay_respects_opt_out_member_wins_and_no_template() {
        let s = set(PrometheusClusterSetSpec { backup_template: Some(template()), ..Default::default() });
        let mut opted = pc("a", "x", &[], None);
        opted.metadata.annotations = Some(BTreeMap::from([(annotations::CLUSTERSET_OPT_OUT.into(), "true".into())]));
        assert_eq!(decide_overlay(&s, &opted), OverlayDecision::OptedOut);

        let mut own = pc("a", "y", &[], None);
        own.spec.backup = BackupSpec { enabled: true, bucket: "mine".into(), ..Default::default() };
        assert_eq!(decide_overlay(&s, &own), OverlayDecision::MemberWins);

        assert_eq!(decide_overlay(&set(PrometheusClusterSetSpec::default()), &own), OverlayDecision::NoTemplate);
    }

    #[test]
    fn overlay_by_this_set_is_up_to_date_or_follows_template_changes() {
        let s = set(PrometheusClusterSetSpec { backup_template: Some(template()), ..Default::default() });
        let mut member = pc("a", "x", &[], None);
        member.metadata.annotations = Some(BTreeMap::from([(annotations::CLUSTERSET.into(), "fleet".into())]));
        member.spec.backup = BackupSpec { enabled: true, ..template() };
        assert_eq!(decide_overlay(&s, &member), OverlayDecision::UpToDate);
        member.spec.backup.schedule = "@hourly".into();
        assert!(matches!(decide_overlay(&s, &member), OverlayDecision::Apply { .. }));
    }

    #[test]
    fn status_counts_phases_and_lists_members_not_active() {
        let clusters = [
            pc("a", "x", &[], Some(Phase::Active)),
            pc("a", "y", &[], Some(Phase::Provisioning)),
            pc("b", "z", &[], None),
        ];
        let s = set(PrometheusClusterSetSpec::default());
        let members = select_members(&s, &clusters, &BTreeMap::new());
        let status = build_set_status(&s, &members, now());
        assert_eq!(status.member_count, 3);
        assert_eq!(status.active_count, 1);
        assert_eq!(status.phase_count, BTreeMap::from([("Active".into(), 1), ("Provisioning".into(), 1)]));
        assert_eq!(status.not_active, ["a/y", "b/z"]);
        let ready = &status.conditions[0];
        assert_eq!((ready.type_.as_str(), ready.status.as_str()), ("Ready", "False"));
        assert!(ready.message.contains("a/y"));
    }
}
