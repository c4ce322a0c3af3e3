//! The cluster controller's decision ([`decide::decide_cluster`]): snapshots for every fixture beside the rendered
//! objects (`snapshots/decide/`), and the decisions the operator's behaviour rests on: rejected, name conflict,
//! paused, create, nothing to do, scale and upgrade, a failed apply, and when to look again.

mod common;

use std::collections::BTreeMap;

use common::settings;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use tsdb_operator_core::constants::{FINALIZER, conditions, reasons};
use tsdb_operator_core::crd::{Phase, PrometheusCluster};
use tsdb_operator_core::decide::{self, ClusterDecision, ClusterObservation, Next, Outcome};
use tsdb_operator_core::events::Action;
use tsdb_operator_core::plan::{ChildKey, Step};

fn now() -> Timestamp {
    "2026-12-03T10:00:00Z".parse().expect("a timestamp")
}

fn fixtures(dir: &str) -> Vec<(String, PrometheusCluster)> {
    let mut all = common::fixtures(dir);
    for (_, cluster) in &mut all {
        cluster.metadata.namespace.get_or_insert_with(|| "default".to_owned());
    }
    all
}

/// What a test observed: children, pods, Secrets found, agent problems.
#[derive(Default)]
struct World {
    children: BTreeMap<ChildKey, Value>,
    pods: Vec<Pod>,
    secrets: BTreeMap<String, std::collections::BTreeSet<String>>,
}

impl World {
    fn decide(&self, pc: &PrometheusCluster) -> ClusterDecision {
        self.decide_at(pc, now())
    }

    fn observe<'a>(&'a self, pc: &'a PrometheusCluster) -> ClusterObservation<'a> {
        ClusterObservation {
            pods: &self.pods,
            secrets: Some(&self.secrets),
            ..ClusterObservation::of(pc, &self.children)
        }
    }

    fn decide_at(&self, pc: &PrometheusCluster, now: Timestamp) -> ClusterDecision {
        decide::decide_cluster(&self.observe(pc), &settings(), now)
    }

    /// Applies the decision's steps as the API server would: the manifests become the observed children, with a
    /// generation the StatefulSet controller has observed and `ready` ready replicas.
    fn apply(&mut self, decision: &ClusterDecision, ready: i32) {
        for step in decision.steps() {
            match step {
                Step::Apply { key, manifest, .. } => {
                    let mut object = manifest.clone();
                    if key.kind == "StatefulSet" {
                        let generation = self.children.get(key).and_then(|o| o["metadata"]["generation"].as_i64());
                        let generation = generation.unwrap_or(0) + 1;
                        object["metadata"]["generation"] = json!(generation);
                        let replicas = object["spec"]["replicas"].clone();
                        object["status"] = json!({"observedGeneration": generation, "replicas": replicas,
                            "readyReplicas": ready, "updatedReplicas": replicas});
                    }
                    self.children.insert(key.clone(), object);
                }
                Step::Delete { key } | Step::Orphan { key } => {
                    self.children.remove(key);
                }
                Step::Resize { .. } => {}
            }
        }
    }
}

/// The cluster with the decision's status, as the server holds it after the write.
fn with_status(pc: &PrometheusCluster, decision: &ClusterDecision) -> PrometheusCluster {
    let mut pc = pc.clone();
    pc.status = Some(decision.status.clone());
    pc
}

fn cluster(spec: Value) -> PrometheusCluster {
    let mut pc = PrometheusCluster::new("demo", serde_json::from_value(spec).expect("a spec"));
    pc.metadata.namespace = Some("monitoring".to_owned());
    pc.metadata.uid = Some("uid-1".to_owned());
    pc.metadata.generation = Some(1);
    pc
}

/// A cluster with `spec` whose children were created and whose replicas are all ready, with the status the
/// operator wrote once they were.
fn settled(spec: Value) -> (World, PrometheusCluster) {
    let mut world = World::default();
    let pc = cluster(spec);
    let created = world.decide(&pc);
    world.apply(&created, pc.spec.replicas);
    let settled = world.decide(&with_status(&pc, &created));
    (world, with_status(&pc, &settled))
}

fn condition<'a>(d: &'a ClusterDecision, type_: &str) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    d.status.conditions.iter().find(|c| c.type_ == type_).expect("the condition")
}

/// A review-friendly summary of a decision: steps without their manifests (those are in `snapshots/build/`).
fn summary(d: &ClusterDecision) -> Value {
    let stages: Vec<Value> = d
        .stages
        .iter()
        .map(|s| {
            json!({
                "steps": s.steps.iter().map(|step| match step {
                    Step::Apply { key, reason, .. } => format!("apply {key} ({reason})"),
                    Step::Delete { key } => format!("delete {key}"),
                    Step::Resize { key, size } => format!("resize {key} to {size}"),
                    Step::Orphan { key } => format!("orphan {key}"),
                }).collect::<Vec<_>>(),
                "events": s.events.iter().map(|e| format!("{}: {}", e.reason(), e.message())).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "outcome": d.outcome,
        "removeLegacyFinalizer": d.remove_legacy_finalizer,
        "stages": stages,
        "phase": d.status.phase,
        "conditions": d.status.conditions.iter()
            .map(|c| format!("{}={} {}: {}", c.type_, c.status, c.reason, c.message)).collect::<Vec<_>>(),
        "events": d.events.iter().map(|e| format!("{}: {}", e.reason(), e.message())).collect::<Vec<_>>(),
        "next": d.next,
    })
}

#[test]
fn every_fixture_decides_the_reviewed_decision_when_new_and_nothing_once_applied() {
    for (name, pc) in fixtures("clusters") {
        let mut world = World::default();
        let first = world.decide(&pc);
        insta::with_settings!({
            snapshot_path => "../../snapshots/decide",
            prepend_module_to_snapshot => false,
            description => format!("fixtures/clusters/{name}.yaml, nothing observed"),
            omit_expression => true,
        }, {
            insta::assert_yaml_snapshot!(format!("{name}__new"), summary(&first));
        });
        if first.outcome != Outcome::Reconcile {
            continue;
        }
        world.apply(&first, pc.spec.replicas);
        let again = world.decide(&with_status(&pc, &first));
        assert_eq!(again.steps().count(), 0, "{name}: nothing to do once applied: {:#?}", summary(&again));
    }
}

#[test]
fn every_invalid_fixture_is_rejected_once_with_the_field() {
    for (name, pc) in fixtures("clusters-invalid") {
        let d = World::default().decide(&pc);
        let Outcome::Rejected { message } = &d.outcome else { panic!("{name}: {:?}", d.outcome) };
        assert!(message.contains("spec.") || message.contains("metadata."), "{name}: names the field: {message}");
        assert_eq!(d.status.phase, Some(Phase::Failed), "{name}");
        assert_eq!(d.steps().count(), 0, "{name}: nothing is changed");
        assert_eq!(d.events, [Action::Rejected { reason: message.clone() }], "{name}");
        assert_eq!(d.next, Next::AwaitChange);
        let again = World::default().decide(&with_status(&pc, &d));
        assert!(!again.status_changed && again.events.is_empty(), "{name}: reported once");
    }
}

#[test]
fn an_object_with_a_childs_name_that_someone_else_owns_is_a_name_conflict_and_nothing_is_touched() {
    let mut pc = cluster(json!({"replicas": 1}));
    pc.metadata.finalizers = Some(vec![FINALIZER.to_owned()]);
    let mut world = World::default();
    let key = ChildKey { api_version: "v1".into(), kind: "Service".into(), name: "demo".into(), namespace: None };
    world.children.insert(
        key,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "demo",
            "ownerReferences": [{"kind": "Deployment", "name": "web", "uid": "other", "controller": true}]}}),
    );
    let d = world.decide(&pc);
    let Outcome::NameConflict { message } = &d.outcome else { panic!("{:?}", d.outcome) };
    assert!(message.contains("Service demo") && message.contains("rename the cluster"), "{message}");
    assert_eq!(d.steps().count(), 0);
    assert!(!d.remove_legacy_finalizer, "the object is not touched either");
    assert_eq!(condition(&d, conditions::DEGRADED).reason, reasons::NAME_CONFLICT);
    assert_eq!(d.next, Next::After(std::time::Duration::from_mins(1)));

    // Our own uid: no conflict.
    let own = json!([{"kind": "PrometheusCluster", "name": "demo", "uid": "uid-1", "controller": true}]);
    for object in world.children.values_mut() {
        object["metadata"]["ownerReferences"] = own.clone();
    }
    assert_eq!(world.decide(&pc).outcome, Outcome::Reconcile);
}

#[test]
fn a_paused_cluster_changes_nothing_and_says_so_once() {
    let pc = cluster(json!({"replicas": 2, "paused": true}));
    let d = World::default().decide(&pc);
    assert_eq!(d.outcome, Outcome::Paused);
    assert_eq!(d.steps().count(), 0);
    assert_eq!(d.events, [Action::Paused]);
    assert_eq!(condition(&d, conditions::PAUSED).status, "True");
    let again = World::default().decide(&with_status(&pc, &d));
    assert!(again.events.is_empty(), "the Paused event is sent once");
}

#[test]
fn a_new_cluster_creates_its_configuration_before_its_pods_and_reports_provisioning() {
    let pc = cluster(json!({"replicas": 2}));
    let d = World::default().decide(&pc);
    let kinds: Vec<Vec<&str>> =
        d.stages.iter().map(|s| s.steps.iter().map(|st| st.key().kind.as_str()).collect()).collect();
    assert_eq!(kinds, [vec!["ConfigMap", "Service"], vec!["StatefulSet", "PodDisruptionBudget"]]);
    assert!(d.stages[1].events.contains(&Action::Created { object: "StatefulSet/demo".into() }));
    assert_eq!(d.status.phase, Some(Phase::Provisioning));
    assert_eq!(d.events, [Action::PhaseChanged { from: String::new(), to: "Provisioning".into() }]);
    assert_eq!(d.next, Next::After(std::time::Duration::from_mins(1)));
}

#[test]
fn a_scale_and_an_upgrade_are_described_as_such_and_never_reported_as_matching_the_spec() {
    let (world, mut pc) = settled(json!({"replicas": 1, "image": "prom/prometheus:v2.53.3"}));
    let idle = world.decide(&pc);
    assert_eq!(idle.status.phase, Some(Phase::Active));
    assert_eq!(idle.next, Next::After(std::time::Duration::from_mins(5)), "idle: a safety-net check only");
    assert!(!idle.status_changed && idle.events.is_empty() && idle.stages.is_empty(), "idle costs no write");

    pc.spec.replicas = 3;
    pc.spec.image = "prom/prometheus:v3.5.0".to_owned();
    pc.metadata.generation = Some(2);
    let d = world.decide(&pc);
    let events: Vec<&Action> = d.stages.iter().flat_map(|s| &s.events).collect();
    assert!(events.contains(&&Action::Scaled { from: 1, to: 3 }), "{events:?}");
    assert!(
        events.iter().any(|e| matches!(e, Action::Upgraded { from, to }
        if from.ends_with("v2.53.3") && to.ends_with("v3.5.0"))),
        "{events:?}"
    );
    assert_eq!(d.status.phase, Some(Phase::Scaling));
    assert_ne!(condition(&d, conditions::PROGRESSING).reason, reasons::RECONCILED);

    // An upgrade alone: the StatefulSet's controller has not seen the new template yet.
    let (world, mut pc) = settled(json!({"replicas": 1, "image": "prom/prometheus:v2.53.3"}));
    pc.spec.image = "prom/prometheus:v3.5.0".to_owned();
    let d = world.decide(&pc);
    assert_eq!(condition(&d, conditions::PROGRESSING).reason, reasons::ROLLING_UPDATE);
    assert_ne!(d.status.phase, Some(Phase::Active));
}

#[test]
fn a_reverted_label_is_not_reported_as_a_rolling_update() {
    let (mut world, pc) = settled(json!({"replicas": 1}));
    let key = world.children.keys().find(|k| k.kind == "StatefulSet").cloned().expect("the StatefulSet");
    let labels = world.children.get_mut(&key).and_then(|o| o["metadata"]["labels"].as_object_mut()).expect("labels");
    labels.insert("app.kubernetes.io/instance".into(), json!("edited"));
    let d = world.decide(&pc);
    assert!(d.stages.iter().flat_map(|s| &s.events).any(|e| matches!(e, Action::Reverted { .. })));
    assert_eq!(d.status.phase, Some(Phase::Active), "a metadata change rolls no pod");
}

#[test]
fn a_failed_apply_is_reported_as_not_carried_out() {
    let (pc, world) = (cluster(json!({"replicas": 1})), World::default());
    let created = world.decide(&pc);
    let failed = created.status_after_failure(&world.observe(&pc), "failed to apply StatefulSet demo: forbidden");
    let degraded = failed.conditions.iter().find(|c| c.type_ == conditions::DEGRADED).expect("Degraded");
    assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", reasons::APPLY_FAILED));
    assert!(degraded.message.contains("forbidden"));

    let (world, mut pc) = settled(json!({"replicas": 1}));
    pc.spec.replicas = 2;
    let d = world.decide(&pc);
    let failed = d.status_after_failure(&world.observe(&pc), "failed to apply StatefulSet demo: forbidden");
    let progressing = failed.conditions.iter().find(|c| c.type_ == conditions::PROGRESSING).expect("Progressing");
    assert_ne!(progressing.reason, reasons::RECONCILED, "never says it matches the spec");
    assert_ne!(failed.phase, Some(Phase::Active));
}

#[test]
fn missing_secrets_are_problems_and_checked_again_soon() {
    let pc = cluster(json!({"replicas": 1, "remoteWrite": [{"url": "https://example.org/write",
        "bearerTokenSecretRef": {"name": "rw"}}]}));
    assert_eq!(decide::secrets_to_read(&pc).into_iter().collect::<Vec<_>>(), ["rw"]);
    let d = World::default().decide(&pc);
    assert_eq!(condition(&d, conditions::DEGRADED).reason, reasons::MISSING_SECRET);
    assert_eq!(d.next, Next::After(std::time::Duration::from_secs(10)));
    let mut world = World::default();
    world.secrets.insert("rw".into(), ["token".to_owned()].into());
    assert_eq!(condition(&world.decide(&pc), conditions::DEGRADED).status, "False");
}

#[test]
fn a_configuration_change_is_followed_for_two_minutes_while_pods_run() {
    let (mut world, pc) = settled(json!({"replicas": 1}));
    world.pods = vec![
        serde_json::from_value(json!({"metadata": {"name": "demo-0"}, "status": {"phase": "Running"}})).expect("a pod"),
    ];
    let config = world.children.keys().find(|k| k.kind == "ConfigMap").cloned().expect("the ConfigMap");
    world.children.get_mut(&config).expect("the ConfigMap")["metadata"]["managedFields"] =
        json!([{"manager": "tsdb-operator", "operation": "Apply", "time": "2026-12-03T09:59:00Z"}]);
    assert_eq!(world.decide(&pc).next, Next::After(std::time::Duration::from_secs(10)));
    let later: Timestamp = "2026-12-03T10:05:00Z".parse().expect("a timestamp");
    assert_eq!(world.decide_at(&pc, later).next, Next::After(std::time::Duration::from_mins(5)));
}

/// The backup scheduler's decision ([`tsdb_operator_core::backup::pass::decide_pass`]) for every fixture, created an
/// hour before the first instant and never backed up: at creation, when the first slot of a schedule has come, and
/// three days on (missed slots). Reviewed snapshots beside the cluster decisions.
#[test]
fn every_fixture_decides_the_reviewed_backup_steps() {
    use tsdb_operator_core::backup::pass::decide_pass;
    let created: Timestamp = "2026-12-03T09:00:00Z".parse().expect("a time");
    for (name, mut pc) in fixtures("clusters") {
        pc.metadata.uid = Some("9f0c2a4e-uid".to_owned());
        pc.metadata.creation_timestamp = Some(tsdb_operator_core::backup::to_time(created));
        let instants = [
            ("created", std::time::Duration::ZERO),
            ("+3h00m30s", std::time::Duration::from_secs(3 * 3600 + 30)),
            ("+3d", std::time::Duration::from_hours(72)),
        ];
        let steps: Vec<String> = instants
            .iter()
            .map(|(label, after)| format!("{label}: {:?}", decide_pass(&pc, created + *after)))
            .collect();
        insta::with_settings!({
            snapshot_path => "../../snapshots/decide",
            prepend_module_to_snapshot => false,
            description => format!("fixtures/clusters/{name}.yaml, never backed up"),
            omit_expression => true,
        }, {
            insta::assert_yaml_snapshot!(format!("{name}__backup"), steps);
        });
    }
}
