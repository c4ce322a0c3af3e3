//! The cluster controller's decision: from everything observed about one PrometheusCluster and `now`, what to do,
//! as data. Pure: no I/O, no clock.
//!
//! [`decide_cluster`] is the one entry point the operator's cluster controller, `tsdb-ctl plan` and embedders
//! call. It runs validate → ownership → pause → build/plan → status → events → next check and returns a
//! [`ClusterDecision`]; the caller observes (see [`secrets_to_read`] and [`child_names`] for what), carries the
//! decision out, and asks again on the next event or at [`ClusterDecision::next`].
//!
//! # Carrying a decision out
//! 1. Remove the legacy finalizer when [`ClusterDecision::remove_legacy_finalizer`] says so.
//! 2. Execute [`ClusterDecision::stages`] in order, the steps of one stage at once; publish a stage's events after
//!    its steps succeeded. When a step fails, write [`ClusterDecision::status_after_failure`] and retry later.
//! 3. Write [`ClusterDecision::status`] when [`ClusterDecision::status_changed`], then publish
//!    [`ClusterDecision::events`].
//!
//! The status is the one the cluster will have once the steps are applied: a StatefulSet whose spec is changed
//! is reported as rolling (its controller has not seen the new generation yet), so the status never says "matches
//! the spec" for a change that is only under way. The StatefulSet's watch event brings the next decision.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;

use crate::build::BuildSettings;
use crate::constants::{FIELD_MANAGER, FINALIZER, conditions, containers, reasons};
use crate::crd::{Phase, PrometheusCluster, PrometheusClusterStatus};
use crate::events::Action;
use crate::monitors::{self, ClusterMonitors, ObservedMonitors};
use crate::plan::{self, ApplyReason, ChildKey, Step};
use crate::status::{self, Problem, StatusInput};
use crate::storage::{ObservedClaim, ObservedStorage, StorageRefusal};
use crate::{secrets, validate};

/// Everything the cluster controller observed about one cluster, as plain data.
#[derive(Clone, Debug)]
pub struct ClusterObservation<'a> {
    /// The cluster as the server holds it, with its previous status.
    pub cluster: &'a PrometheusCluster,
    /// The objects that carry the names of the cluster's children ([`child_names`]), owned by it or not, as JSON
    /// with `apiVersion` and `kind`.
    pub children: &'a BTreeMap<ChildKey, Value>,
    /// The cluster's pods.
    pub pods: &'a [Pod],
    /// The cluster's data volume claims.
    pub claims: &'a [ObservedClaim],
    /// `allowVolumeExpansion` of the StorageClass [`crate::storage::class_to_check`] names; `None` when not read.
    pub class_allows_expansion: Option<bool>,
    /// The keys of each Secret of [`secrets_to_read`] that exists; `None` when Secrets were not observed (an
    /// offline dry run), which reports no missing Secret.
    pub secrets: Option<&'a BTreeMap<String, BTreeSet<String>>>,
    /// What the pods' agents reported (Prometheus rejected its configuration).
    pub agent_problems: &'a [Problem],
    /// prometheus-operator's ServiceMonitors and PodMonitors and the namespaces' labels, for a cluster with a
    /// monitor selector; `None` when not observed, which chooses no monitor.
    pub monitors: Option<ObservedMonitors<'a>>,
}

impl<'a> ClusterObservation<'a> {
    /// An observation of `cluster` and the objects with its children's names, and nothing else: no pods, claims,
    /// Secrets (not observed: no missing Secret is reported) or agent reports. The fields are public to add them.
    pub fn of(cluster: &'a PrometheusCluster, children: &'a BTreeMap<ChildKey, Value>) -> Self {
        Self {
            cluster,
            children,
            pods: &[],
            claims: &[],
            class_allows_expansion: None,
            secrets: None,
            agent_problems: &[],
            monitors: None,
        }
    }
}

/// What the decision is about.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Outcome {
    /// The spec cannot be carried out (invalid, or it cannot be rendered); nothing is changed.
    Rejected {
        /// The field errors, naming the field and the fix.
        message: String,
    },
    /// An object with a child's name belongs to someone else; nothing is changed.
    NameConflict {
        /// Which object, and what to do.
        message: String,
    },
    /// `spec.paused`: nothing is changed, the status still reports what is observed.
    Paused,
    /// The cluster is brought to its spec by the stages (none when it matches).
    Reconcile,
}

/// Steps that may run at once, and the events they stand for.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Stage {
    /// The steps, each independent of the others.
    pub steps: Vec<Step>,
    /// What the steps did, to publish once they succeeded.
    pub events: Vec<Action>,
}

/// When to look at the cluster again, beyond the watch events.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Next {
    /// Only when the cluster changes.
    AwaitChange,
    /// After this long at the latest.
    After(Duration),
}

/// The decision for one cluster; see the [module documentation](self) for how to carry it out.
#[derive(Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ClusterDecision {
    /// What the decision is about.
    pub outcome: Outcome,
    /// Remove `observability.merlionos.org/finalizer`, which v1.0.0 added and this operator no longer uses.
    pub remove_legacy_finalizer: bool,
    /// The steps, in dependency stages: configuration and Service, then the StatefulSet and its budget, then
    /// deletions, so pods never start before their ConfigMap exists.
    pub stages: Vec<Stage>,
    /// The status once the stages are applied.
    pub status: PrometheusClusterStatus,
    /// Whether [`Self::status`] differs from the one the cluster has (write it only then).
    pub status_changed: bool,
    /// Events to publish after the status was written.
    pub events: Vec<Action>,
    /// When to look again.
    pub next: Next,
    /// What the status was computed from besides the observation, for [`Self::status_after_failure`].
    #[serde(skip)]
    found: Found,
}

/// The problems, refused changes and resizing claims the status shows, and when it was computed.
#[derive(Clone, Debug, Default)]
struct Found {
    problems: Vec<Problem>,
    unapplied: Vec<Problem>,
    resizing: Vec<String>,
    now: Option<Timestamp>,
}

impl ClusterDecision {
    /// Every step, in order.
    pub fn steps(&self) -> impl Iterator<Item = &Step> {
        self.stages.iter().flat_map(|s| s.steps.iter())
    }

    /// The phase the status reports.
    pub fn phase(&self) -> Phase {
        self.status.phase.unwrap_or(Phase::Provisioning)
    }

    /// The status to write when a step failed with `error` (rendered with its causes), from the observation the
    /// decision was taken on: the cluster is reported as not carried out (`ApplyFailed`), never as matching the
    /// spec. Computed only when a step failed, so a decision carries no copy of the observation.
    pub fn status_after_failure(&self, obs: &ClusterObservation<'_>, error: &str) -> PrometheusClusterStatus {
        let Some(now) = self.found.now else { return self.status.clone() };
        let mut unapplied = self.found.unapplied.clone();
        unapplied.push(Problem { reason: reasons::APPLY_FAILED.to_owned(), message: error.to_owned() });
        let mut status = status::build_status(&StatusInput {
            cluster: obs.cluster,
            stateful_set: observed_stateful_set(obs.children).as_ref(),
            pods: obs.pods,
            invalid_spec: None,
            problems: &self.found.problems,
            unapplied: &unapplied,
            resizing: &self.found.resizing,
            now,
        });
        // Discovery objects elsewhere that may exist now: those recorded before and those the steps were to apply.
        let mut recorded: BTreeSet<String> = status.discovery_namespaces.drain(..).collect();
        recorded.extend(self.status.discovery_namespaces.iter().cloned());
        status.discovery_namespaces = recorded.into_iter().collect();
        status
    }
}

/// Names of the objects a cluster named `cluster` owns besides its pods and claims: the ConfigMap
/// `<name>-config`, and the Service, StatefulSet and PodDisruptionBudget `<name>`. With a monitor selector it also
/// owns the ServiceAccount, Role and RoleBinding `<name>-discovery`: [`children_to_read`] lists them all.
pub fn child_names(cluster: &str) -> [String; 2] {
    [format!("{cluster}-config"), cluster.to_owned()]
}

/// Every object the observation of a cluster named `cluster` must hold when it exists (owned by the cluster or
/// not), in apply order: the ConfigMap, the discovery ServiceAccount and Role, the Service, the discovery
/// RoleBinding, the StatefulSet and the PodDisruptionBudget (in the API of `settings.pdb_api`).
pub fn children_to_read(cluster: &str, settings: &BuildSettings) -> Vec<ChildKey> {
    let [config, main] = child_names(cluster);
    let discovery = crate::build::discovery::discovery_name(cluster);
    let key = |api_version: &str, kind: &str, name: &str| ChildKey {
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
        name: name.to_owned(),
        namespace: None,
    };
    vec![
        key("v1", "ConfigMap", &config),
        key("v1", "ServiceAccount", &discovery),
        key("rbac.authorization.k8s.io/v1", "Role", &discovery),
        key("v1", "Service", &main),
        key("rbac.authorization.k8s.io/v1", "RoleBinding", &discovery),
        key("apps/v1", "StatefulSet", &main),
        key(settings.pdb_api.api_version(), "PodDisruptionBudget", &main),
    ]
}

/// The Secrets whose keys [`ClusterObservation::secrets`] must hold; none for a spec that fails validation.
/// Monitors' credentials add theirs: see [`reads_with_monitors`].
pub fn secrets_to_read(cluster: &PrometheusCluster) -> BTreeSet<String> {
    if validate::cluster(cluster).is_err() {
        return BTreeSet::new();
    }
    secrets::secret_names(&secrets::required_secrets(&cluster.spec))
}

/// What the observation of a cluster that selects prometheus-operator's objects holds besides
/// [`children_to_read`], its pods and claims: see [`reads_with_monitors`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MonitorReads {
    /// The Secrets whose keys [`ClusterObservation::secrets`] must hold: [`secrets_to_read`] and those the chosen
    /// monitors' credentials name (basic auth, tokens, TLS keys in the cluster's namespace).
    pub secrets: BTreeSet<String>,
    /// The discovery Roles and RoleBindings in other namespaces that [`ClusterObservation::children`] must hold
    /// when they exist: in the namespaces the status lists (`status.discoveryNamespaces`, to delete those no
    /// longer needed) and in those the chosen monitors discover targets in.
    pub elsewhere: Vec<ChildKey>,
}

/// [`MonitorReads`] of `cluster`, whose observed prometheus-operator objects are `monitors` (`None` when it
/// selects none or they were not read).
pub fn reads_with_monitors(cluster: &PrometheusCluster, monitors: Option<&ObservedMonitors<'_>>) -> MonitorReads {
    let valid = validate::cluster(cluster).is_ok();
    let mut secrets =
        if valid { secrets::secret_names(&secrets::required_secrets(&cluster.spec)) } else { BTreeSet::new() };
    let mut namespaces: BTreeSet<String> =
        cluster.status.as_ref().map(|s| s.discovery_namespaces.iter().cloned().collect()).unwrap_or_default();
    if valid {
        let chosen = monitors.map(|m| monitors::choose_unchecked(cluster, m));
        if let Some(chosen) = &chosen {
            secrets.extend(chosen.secrets.iter().cloned());
        }
        let elsewhere = chosen.as_ref().map(|c| &c.other_namespaces);
        namespaces.extend(crate::build::discovery::namespaces_elsewhere(cluster, elsewhere));
    }
    let name = crate::build::discovery::discovery_name_elsewhere(
        cluster.metadata.namespace.as_deref().unwrap_or_default(),
        cluster.metadata.name.as_deref().unwrap_or_default(),
    );
    let elsewhere = namespaces
        .into_iter()
        .flat_map(|ns| {
            [
                ChildKey::elsewhere("rbac.authorization.k8s.io/v1", "Role", &name, &ns),
                ChildKey::elsewhere("rbac.authorization.k8s.io/v1", "RoleBinding", &name, &ns),
            ]
        })
        .collect();
    MonitorReads { secrets, elsewhere }
}

/// What to do once `cluster` is gone (the watch reported its deletion; the last state the operator saw is
/// `cluster`): delete its discovery Roles and RoleBindings in other namespaces, which no ownerReference takes
/// away. Everything in its own namespace goes by garbage collection.
pub fn cleanup_when_gone(cluster: &PrometheusCluster) -> Vec<Step> {
    let recorded = cluster.status.as_ref().map(|s| s.discovery_namespaces.as_slice()).unwrap_or_default();
    let name = crate::build::discovery::discovery_name_elsewhere(
        cluster.metadata.namespace.as_deref().unwrap_or_default(),
        cluster.metadata.name.as_deref().unwrap_or_default(),
    );
    recorded
        .iter()
        .flat_map(|ns| {
            [
                Step::Delete { key: ChildKey::elsewhere("rbac.authorization.k8s.io/v1", "RoleBinding", &name, ns) },
                Step::Delete { key: ChildKey::elsewhere("rbac.authorization.k8s.io/v1", "Role", &name, ns) },
            ]
        })
        .collect()
}

/// The discovery Roles and RoleBindings in other namespaces whose cluster is gone, to delete: `found` are those
/// that exist, each with the UID of its label [`crate::constants::labels::DISCOVERY_FOR`], and `clusters` the UIDs
/// of every PrometheusCluster that exists (readable or not), listed *after* `found`, so that an object in `found`
/// whose cluster is not in `clusters` belongs to a cluster deleted meanwhile. [`cleanup_when_gone`] removes them
/// when the operator sees the deletion; this finds those of clusters deleted while it was not running.
pub fn orphaned_elsewhere(found: &[(ChildKey, String)], clusters: &BTreeSet<String>) -> Vec<Step> {
    let mut orphans: Vec<&ChildKey> = found
        .iter()
        .filter(|(key, uid)| key.namespace.is_some() && !clusters.contains(uid))
        .map(|(key, _)| key)
        .collect();
    // Bindings before the Roles they bind.
    orphans.sort_by_key(|key| (key.kind != "RoleBinding", key.namespace.clone(), key.name.clone()));
    orphans.into_iter().map(|key| Step::Delete { key: key.clone() }).collect()
}

/// The decision for a cluster the operator cannot read (it does not decode: `message` names the field): rejected
/// like an invalid spec.
pub fn decide_unreadable(cluster: &PrometheusCluster, message: String, now: Timestamp) -> ClusterDecision {
    let children = BTreeMap::new();
    let obs = ClusterObservation::of(cluster, &children);
    let remove_legacy_finalizer = cluster.metadata.finalizers.iter().flatten().any(|f| f == FINALIZER);
    Draft { obs: &obs, now, remove_legacy_finalizer }.rejected(message, None)
}

/// Decides what to do for one cluster; see the [module documentation](self).
pub fn decide_cluster(obs: &ClusterObservation<'_>, settings: &BuildSettings, now: Timestamp) -> ClusterDecision {
    let pc = obs.cluster;
    let remove_legacy_finalizer = pc.metadata.finalizers.iter().flatten().any(|f| f == FINALIZER);
    let d = Draft { obs, now, remove_legacy_finalizer };

    let valid = match validate::cluster(pc) {
        Ok(valid) => valid,
        Err(errors) => return d.rejected(errors.to_string(), None),
    };
    if let Some(message) = name_conflict(pc, obs.children) {
        return d.name_conflict(message);
    }
    let sts = observed_stateful_set(obs.children);
    let mut problems = obs
        .secrets
        .map(|found| secrets::missing_secret_problems(&secrets::required_secrets(&pc.spec), found))
        .unwrap_or_default();
    problems.extend(obs.agent_problems.iter().cloned());
    problems.sort_by(|a, b| a.message.cmp(&b.message));
    if pc.spec.paused {
        return d.paused(sts.as_ref(), &problems);
    }

    let observed_storage = ObservedStorage {
        stateful_set: obs.children.iter().find(|(k, _)| k.kind == "StatefulSet").map(|(_, v)| v),
        claims: obs.claims,
        class_allows_expansion: obs.class_allows_expansion,
    };
    let chosen = obs
        .monitors
        .as_ref()
        .map(|m| monitors::choose_for_cluster(pc, &ObservedMonitors { secrets: obs.secrets, ..*m }))
        .unwrap_or_default();
    let (plan, storage) = match plan::plan_cluster(&valid, settings, &chosen, obs.children, &observed_storage) {
        Ok(planned) => planned,
        Err(e) => return d.rejected(e.to_string(), sts.as_ref()),
    };
    let unapplied: Vec<Problem> = storage.refused.iter().map(StorageRefusal::problem).collect();
    let observed_sts = observed_stateful_set_json(obs.children);
    let stages = stages(plan.steps, observed_sts);
    let predicted = predict_stateful_set(sts, observed_sts, stages.iter().flat_map(|s| &s.steps));
    let mut status = status::build_status(&StatusInput {
        cluster: pc,
        stateful_set: predicted.as_ref(),
        pods: obs.pods,
        invalid_spec: None,
        problems: &problems,
        unapplied: &unapplied,
        resizing: &storage.resizing,
        now,
    });
    status.discovery_namespaces =
        crate::build::discovery::namespaces_elsewhere(pc, Some(&chosen.other_namespaces)).into_iter().collect();
    let monitors_condition = pc.spec.selects_monitors().then(|| monitors_condition(pc, &chosen));
    status::set_condition(&mut status, pc, conditions::MONITORS_ACCEPTED, monitors_condition, now);
    let rules_condition = pc.spec.rule_selector.is_some().then(|| rules_condition(&chosen));
    status::set_condition(&mut status, pc, conditions::RULES_ACCEPTED, rules_condition, now);
    let mut events = Vec::new();
    let old_phase = pc.status.as_ref().and_then(|s| s.phase);
    if let Some(new) = status.phase
        && old_phase != Some(new)
    {
        let from = old_phase.map(|p| p.as_str().to_owned()).unwrap_or_default();
        events.push(Action::PhaseChanged { from, to: new.as_str().to_owned() });
    }
    let waiting = !problems.is_empty() || !unapplied.is_empty() || !storage.resizing.is_empty();
    let next = next_check(&status, &stages, obs, waiting, now);
    let found = Found { problems, unapplied, resizing: storage.resizing, now: Some(now) };
    ClusterDecision {
        outcome: Outcome::Reconcile,
        remove_legacy_finalizer,
        stages,
        status_changed: pc.status.as_ref() != Some(&status),
        status,
        events,
        next,
        found,
    }
}

/// Refusals named in full in the `MonitorsAccepted` message; the rest are counted.
const REFUSALS_SHOWN: usize = 5;

/// The `MonitorsAccepted` condition of a cluster with a monitor selector.
fn monitors_condition(
    pc: &PrometheusCluster,
    chosen: &ClusterMonitors,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    let own = pc.metadata.namespace.as_deref().unwrap_or_default();
    let missing: Vec<&str> = chosen.missing_crds.iter().copied().filter(|k| *k != "PrometheusRule").collect();
    if !missing.is_empty() {
        let kinds = missing.join(" and ");
        let message = format!(
            "a selector for {kinds} is set but the CRD of {kinds} (monitoring.coreos.com/v1) is not installed: \
             install prometheus-operator's CRDs; nothing of that kind is scraped until then"
        );
        return status::new_condition(conditions::MONITORS_ACCEPTED, false, reasons::MONITOR_CRD_MISSING, message);
    }
    let counted = format!(
        "{} ServiceMonitors and {} PodMonitors chosen, {} scrape jobs",
        chosen.service_monitors,
        chosen.pod_monitors,
        chosen.jobs.len()
    );
    if !chosen.refused.is_empty() {
        let shown: Vec<String> = chosen.refused.iter().take(REFUSALS_SHOWN).map(ToString::to_string).collect();
        let more = chosen.refused.len().saturating_sub(REFUSALS_SHOWN);
        let more = if more > 0 { format!("; and {more} more") } else { String::new() };
        let message = format!("{counted}; not scraped: {}{more}", shown.join("; "));
        return status::new_condition(conditions::MONITORS_ACCEPTED, false, reasons::MONITORS_REFUSED, message);
    }
    let mut message = counted;
    if !chosen.other_namespaces.is_empty() {
        let names = chosen.other_namespaces.iter().cloned().collect::<Vec<_>>().join(", ");
        let binding =
            crate::build::discovery::discovery_name_elsewhere(own, pc.metadata.name.as_deref().unwrap_or_default());
        message = format!("{message}; discovery allowed in {names} too (Role and RoleBinding {binding})");
    }
    if chosen.all_namespaces {
        let account = crate::build::discovery::discovery_name(pc.metadata.name.as_deref().unwrap_or_default());
        let account = pc.spec.service_account_name.as_deref().filter(|s| !s.is_empty()).unwrap_or(&account);
        message = format!(
            "{message}; some jobs discover targets in every namespace (namespaceSelector.any): bind ServiceAccount \
             {own}/{account} cluster-wide to list and watch services, endpoints and pods"
        );
    }
    status::new_condition(conditions::MONITORS_ACCEPTED, true, reasons::MONITORS_RENDERED, message)
}

/// The `RulesAccepted` condition of a cluster with `ruleSelector`.
fn rules_condition(chosen: &ClusterMonitors) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    let condition = |ok, reason, message| status::new_condition(conditions::RULES_ACCEPTED, ok, reason, message);
    if chosen.missing_crds.contains(&"PrometheusRule") {
        let message = "ruleSelector is set but the PrometheusRule CRD (monitoring.coreos.com/v1) is not installed: \
                       install prometheus-operator's CRDs; no PrometheusRule is loaded until then";
        return condition(false, reasons::RULE_CRD_MISSING, message.to_owned());
    }
    let groups: usize = chosen.rule_files.iter().map(|f| f.groups).sum();
    let rules: usize = chosen.rule_files.iter().map(|f| f.rules).sum();
    let counted =
        format!("{} PrometheusRules chosen, {groups} groups and {rules} rules loaded", chosen.prometheus_rules);
    if chosen.rules_refused.is_empty() {
        return condition(true, reasons::RULES_LOADED, counted);
    }
    let shown: Vec<String> = chosen.rules_refused.iter().take(REFUSALS_SHOWN).map(ToString::to_string).collect();
    let more = chosen.rules_refused.len().saturating_sub(REFUSALS_SHOWN);
    let more = if more > 0 { format!("; and {more} more") } else { String::new() };
    condition(false, reasons::RULES_REFUSED, format!("{counted}; not loaded: {}{more}", shown.join("; ")))
}

/// The decisions that change nothing.
struct Draft<'o, 'a> {
    obs: &'o ClusterObservation<'a>,
    now: Timestamp,
    remove_legacy_finalizer: bool,
}

impl Draft<'_, '_> {
    fn status(
        &self,
        sts: Option<&StatefulSet>,
        pods: &[Pod],
        invalid: Option<String>,
        problems: &[Problem],
    ) -> PrometheusClusterStatus {
        status::build_status(&StatusInput {
            cluster: self.obs.cluster,
            stateful_set: sts,
            pods,
            invalid_spec: invalid,
            problems,
            unapplied: &[],
            resizing: &[],
            now: self.now,
        })
    }

    fn finish(
        self,
        outcome: Outcome,
        status: PrometheusClusterStatus,
        events: Vec<Action>,
        next: Next,
    ) -> ClusterDecision {
        ClusterDecision {
            outcome,
            remove_legacy_finalizer: self.remove_legacy_finalizer,
            stages: Vec::new(),
            status_changed: self.obs.cluster.status.as_ref() != Some(&status),
            status,
            events,
            next,
            found: Found::default(),
        }
    }

    /// `Failed` with the reason and one `Rejected` event when the status changes; the next change of the object
    /// brings it back.
    fn rejected(self, message: String, sts: Option<&StatefulSet>) -> ClusterDecision {
        let pods = if sts.is_some() { self.obs.pods } else { &[] };
        let status = self.status(sts, pods, Some(message.clone()), &[]);
        let changed = self.obs.cluster.status.as_ref() != Some(&status);
        let events = if changed { vec![Action::Rejected { reason: message.clone() }] } else { Vec::new() };
        self.finish(Outcome::Rejected { message }, status, events, Next::AwaitChange)
    }

    /// The problem in the status; looked at again in a minute (the other object's deletion sends no event this
    /// controller watches).
    fn name_conflict(self, message: String) -> ClusterDecision {
        let problem = Problem { reason: reasons::NAME_CONFLICT.to_owned(), message: message.clone() };
        let status = self.status(None, &[], None, &[problem]);
        let mut decision =
            self.finish(Outcome::NameConflict { message }, status, Vec::new(), Next::After(Duration::from_mins(1)));
        // Until the conflict is resolved nothing of the cluster is touched, the object included.
        decision.remove_legacy_finalizer = false;
        decision
    }

    /// Status only, with the `Paused` condition, and one `Paused` event when it was not paused before.
    fn paused(self, sts: Option<&StatefulSet>, problems: &[Problem]) -> ClusterDecision {
        let status = self.status(sts, self.obs.pods, None, problems);
        let was_paused = self
            .obs
            .cluster
            .status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == conditions::PAUSED && c.status == "True"));
        let events = if was_paused { Vec::new() } else { vec![Action::Paused] };
        self.finish(Outcome::Paused, status, events, Next::AwaitChange)
    }
}

/// The first object with a child's name that the cluster does not control, as a message naming it and the fix.
///
/// Without a uid (dry-run input) ownership cannot be proved: an object is taken as the cluster's unless another
/// object controls it.
fn name_conflict(pc: &PrometheusCluster, children: &BTreeMap<ChildKey, Value>) -> Option<String> {
    let uid = pc.metadata.uid.as_deref().filter(|u| !u.is_empty());
    let name = pc.metadata.name.as_deref().unwrap_or_default();
    children.iter().find_map(|(key, object)| {
        if let Some(namespace) = &key.namespace {
            // No ownerReference can point across namespaces: the label says whose it is.
            let label = object.pointer(&format!("/metadata/labels/{DISCOVERY_FOR_POINTER}")).and_then(Value::as_str);
            let owned = uid.is_none_or(|uid| label == Some(uid));
            return (!owned).then(|| {
                format!(
                    "{} {} exists in namespace {namespace} but is not this PrometheusCluster's (label {}): rename \
                     the cluster or remove the object",
                    key.kind,
                    key.name,
                    crate::constants::labels::DISCOVERY_FOR
                )
            });
        }
        let controller = object
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .and_then(|refs| refs.iter().find(|r| r["controller"] == Value::Bool(true)));
        let owned = match (uid, controller) {
            (Some(uid), Some(c)) => c["uid"] == uid,
            (Some(_), None) => false,
            (None, Some(c)) => c["kind"] == "PrometheusCluster" && c["name"] == name,
            (None, None) => true,
        };
        (!owned).then(|| {
            format!(
                "{} {} exists but is not owned by this PrometheusCluster; rename the cluster or remove the object",
                key.kind, key.name
            )
        })
    })
}

/// [`crate::constants::labels::DISCOVERY_FOR`] as a JSON pointer segment (`/` escaped).
const DISCOVERY_FOR_POINTER: &str = "observability.merlionos.org~1discovery-for";

fn observed_stateful_set_json(children: &BTreeMap<ChildKey, Value>) -> Option<&Value> {
    children.iter().find(|(k, _)| k.kind == "StatefulSet").map(|(_, v)| v)
}

/// The observed StatefulSet with the fields the status reads (generation, `spec.replicas`, `status`) and nothing
/// else: its pod template is never deserialized.
fn observed_stateful_set(children: &BTreeMap<ChildKey, Value>) -> Option<StatefulSet> {
    use k8s_openapi::api::apps::v1::{StatefulSetSpec, StatefulSetStatus};
    use serde::Deserialize as _;
    let object = observed_stateful_set_json(children)?;
    let mut sts = StatefulSet::default();
    sts.metadata.generation = object.pointer("/metadata/generation").and_then(Value::as_i64);
    let replicas = object.pointer("/spec/replicas").and_then(Value::as_i64);
    sts.spec = Some(StatefulSetSpec {
        replicas: replicas.map(|r| i32::try_from(r).unwrap_or(i32::MAX)),
        ..StatefulSetSpec::default()
    });
    sts.status = object.get("status").and_then(|s| StatefulSetStatus::deserialize(s).ok());
    Some(sts)
}

/// The StatefulSet as it will be once the steps are applied, for the status: a changed spec bumps the generation
/// its controller has not observed yet, and sets the replica count; a StatefulSet re-created for a new claim
/// template counts as changed too.
fn predict_stateful_set<'s>(
    observed: Option<StatefulSet>,
    observed_json: Option<&Value>,
    mut steps: impl Iterator<Item = &'s Step>,
) -> Option<StatefulSet> {
    let mut sts = observed?;
    let changed = steps.find_map(|step| match step {
        Step::Apply { key, manifest, .. } if key.kind == "StatefulSet" => Some(Some(manifest)),
        Step::Orphan { key } if key.kind == "StatefulSet" => Some(None),
        _ => None,
    });
    let Some(manifest) = changed else { return Some(sts) };
    let spec_changes = manifest.is_none_or(|m| {
        let observed_spec = observed_json.and_then(|o| o.get("spec")).unwrap_or(&Value::Null);
        !plan::is_subset(&m["spec"], observed_spec)
    });
    if spec_changes {
        sts.metadata.generation = Some(sts.metadata.generation.unwrap_or(0) + 1);
    }
    if let Some(replicas) = manifest.and_then(|m| m.pointer("/spec/replicas")).and_then(Value::as_i64)
        && let Some(spec) = sts.spec.as_mut()
    {
        spec.replicas = Some(i32::try_from(replicas).unwrap_or(i32::MAX));
    }
    Some(sts)
}

/// Groups consecutive steps that may run at once: ConfigMaps, Secrets, Services and claim resizes; then
/// StatefulSets and PodDisruptionBudgets; then a StatefulSet deleted with its pods kept; then deletions. The plan
/// is already in that order.
fn stages(steps: Vec<Step>, before: Option<&Value>) -> Vec<Stage> {
    let stage_of = |s: &Step| match s {
        Step::Delete { .. } => 3,
        Step::Orphan { .. } => 2,
        Step::Resize { .. } => 0,
        // A RoleBinding after its Role: the API server checks a binding against the Role it names.
        Step::Apply { key, .. }
            if matches!(key.kind.as_str(), "ConfigMap" | "Secret" | "ServiceAccount" | "Role" | "Service") =>
        {
            0
        }
        Step::Apply { .. } => 1,
    };
    let mut out: Vec<Stage> = Vec::new();
    let mut last = None;
    for step in steps {
        let rank = stage_of(&step);
        if last != Some(rank) {
            out.push(Stage { steps: Vec::new(), events: Vec::new() });
            last = Some(rank);
        }
        if let Some(stage) = out.last_mut() {
            stage.events.extend(describe_step(&step, before));
            stage.steps.push(step);
        }
    }
    out
}

/// The events a step stands for: a StatefulSet change is described as a scale and an upgrade where it is one.
fn describe_step(step: &Step, before: Option<&Value>) -> Vec<Action> {
    match step {
        Step::Delete { key } => vec![Action::Deleted { object: key.to_string() }],
        Step::Orphan { key } => {
            vec![Action::Deleted {
                object: format!("{key} (pods kept; re-created with the new volume claim template)"),
            }]
        }
        Step::Resize { key, size } => vec![Action::Updated { object: format!("{key} (storage request {size})") }],
        Step::Apply { key, reason: ApplyReason::Create, .. } => vec![Action::Created { object: key.to_string() }],
        Step::Apply { key, reason: ApplyReason::Drift { field }, .. } => {
            vec![Action::Reverted { object: format!("{key} (field {field})") }]
        }
        Step::Apply { key, reason: ApplyReason::SpecChanged, manifest } => {
            let mut out = Vec::new();
            if key.kind == "StatefulSet"
                && let Some(before) = before
            {
                let old_replicas = before.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
                let old_replicas = i32::try_from(old_replicas).unwrap_or(i32::MAX);
                let new_replicas = manifest.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
                let new_replicas = i32::try_from(new_replicas).unwrap_or(i32::MAX);
                if old_replicas != new_replicas {
                    out.push(Action::Scaled { from: old_replicas, to: new_replicas });
                }
                let old_image = prometheus_image(before);
                let new_image = prometheus_image(manifest);
                if let (Some(from), Some(to)) = (old_image, new_image)
                    && from != to
                {
                    out.push(Action::Upgraded { from, to });
                }
            }
            if out.is_empty() {
                out.push(Action::Updated { object: key.to_string() });
            }
            out
        }
    }
}

/// The image of the Prometheus container of a StatefulSet given as JSON.
fn prometheus_image(sts: &Value) -> Option<String> {
    sts.pointer("/spec/template/spec/containers")?
        .as_array()?
        .iter()
        .find(|c| c["name"] == containers::PROMETHEUS)?["image"]
        .as_str()
        .map(str::to_owned)
}

/// When to look again, beyond the watch events (the cluster, its StatefulSet, Service and ConfigMap) that
/// already bring every change of phase:
/// - in 5 s while the StatefulSet is deleted with its pods kept (its deletion event brings the pass that creates
///   it again; this covers a missed one);
/// - in 10 s while a problem is shown (a Secret created later sends no event this controller watches), and for
///   two minutes after a configuration change while pods run (the agent reports whether Prometheus accepted it
///   only after the kubelet updated the mounted files, and no watch event says when that happened);
/// - in 5 minutes when Active with nothing to do (reads only; a safety net);
/// - in 1 minute otherwise (pods starting or Pending: their progress arrives as StatefulSet status events, so
///   a thousand clusters waiting for nodes do not cost a hundred reads a second).
fn next_check(
    status: &PrometheusClusterStatus,
    stages: &[Stage],
    obs: &ClusterObservation<'_>,
    waiting: bool,
    now: Timestamp,
) -> Next {
    let steps = || stages.iter().flat_map(|s| s.steps.iter());
    if steps().any(|s| matches!(s, Step::Orphan { .. })) {
        return Next::After(Duration::from_secs(5));
    }
    let pods_running = obs.pods.iter().any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
    let config_changed_recently = steps().any(|s| s.key().kind == "ConfigMap")
        || obs
            .children
            .iter()
            .find(|(k, _)| k.kind == "ConfigMap")
            .and_then(|(_, cm)| last_applied_at(cm))
            .is_some_and(|t| now.duration_since(t).as_secs() < 120);
    if waiting || (config_changed_recently && pods_running) {
        return Next::After(Duration::from_secs(10));
    }
    match status.phase {
        Some(Phase::Active) if stages.is_empty() => Next::After(Duration::from_mins(5)),
        _ => Next::After(Duration::from_mins(1)),
    }
}

/// When the operator's field manager last applied `object`, from its managedFields.
fn last_applied_at(object: &Value) -> Option<Timestamp> {
    object
        .pointer("/metadata/managedFields")?
        .as_array()?
        .iter()
        .filter(|m| m["manager"] == FIELD_MANAGER && m["operation"] == "Apply")
        .filter_map(|m| m["time"].as_str()?.parse::<Timestamp>().ok())
        .max()
}
