//! Render + plan of a typical cluster (2 replicas, remote_write, backup, Thanos: `fixtures/clusters/typical.yaml`)
//! and the whole resync decision, next to serializing the same objects only (the floor). `cargo bench -p tsdb-operator-benches --bench render_plan`.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tsdb_operator_benches::{applied, now, settled_observation, typical_cluster};
use tsdb_operator_core::build::{self, BuildSettings};
use tsdb_operator_core::decide::{self, ClusterObservation};
use tsdb_operator_core::plan::{plan_objects, plan_owned_children};
use tsdb_operator_core::validate;

fn bench(c: &mut Criterion) {
    let pc = typical_cluster();
    let settings = BuildSettings::default();
    let observed = applied(&pc, &settings);
    let objects = build::build(&validate::cluster(&pc).expect("a valid cluster"), &settings).expect("builds");

    let mut group = c.benchmark_group("typical_cluster");
    // What the operator does on each reconcile: render the typed objects, plan them against what it observed
    // (`plan_objects` converts into JSON only the objects it applies).
    group.bench_function("render_and_plan_steady_state", |b| {
        b.iter(|| {
            let desired =
                build::build(&validate::cluster(black_box(&pc)).expect("a valid cluster"), &settings).expect("builds");
            let plan = plan_objects(&desired, &settings, black_box(&observed)).expect("plans");
            assert!(plan.is_empty());
            plan
        });
    });
    group.bench_function("render_and_plan_create", |b| {
        let empty = BTreeMap::new();
        b.iter(|| {
            let desired =
                build::build(&validate::cluster(black_box(&pc)).expect("a valid cluster"), &settings).expect("builds");
            plan_objects(&desired, &settings, black_box(&empty)).expect("plans")
        });
    });
    // The same through JSON manifests (`manifests` + `plan_owned_children`): every object converted, then planned.
    group.bench_function("render_and_plan_steady_state_via_manifests", |b| {
        b.iter(|| {
            let desired = build::build(&validate::cluster(black_box(&pc)).expect("a valid cluster"), &settings)
                .and_then(|d| d.manifests(&settings))
                .expect("builds");
            let plan = plan_owned_children(desired, black_box(&observed));
            assert!(plan.is_empty());
            plan
        });
    });
    // The whole decision the cluster controller takes on a resync (`decide::decide_cluster`): validation,
    // ownership, render + plan, status, events and the next check, for a settled cluster whose 2 pods run.
    let (observation_parts, settled) = settled_observation(&pc, &settings);
    group.bench_function("decide_steady_state", |b| {
        let (children, pods, secrets) = &observation_parts;
        b.iter(|| {
            let observation = ClusterObservation {
                pods,
                secrets: Some(secrets),
                ..ClusterObservation::of(black_box(&settled), children)
            };
            let decision = decide::decide_cluster(&observation, &settings, now());
            assert!(decision.stages.is_empty() && !decision.status_changed);
            decision
        });
    });
    group.bench_function("render_only", |b| {
        b.iter(|| {
            build::build(&validate::cluster(black_box(&pc)).expect("a valid cluster"), &settings).expect("builds")
        });
    });
    group.bench_function("serialize_only", |b| {
        b.iter(|| {
            let out = objects.manifests(&settings).expect("serializes");
            let bytes: usize = out.iter().map(|m| serde_json::to_vec(m).map_or(0, |v| v.len())).sum();
            black_box(bytes)
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
