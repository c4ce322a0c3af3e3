//! The steady state of `benches/benches/render_plan.rs` in a plain loop, for counting instructions:
//! `valgrind --tool=callgrind target/release/render_plan_loop 1000` (argument: iterations; a second argument
//! `render` renders only, `decide` takes the cluster controller's whole decision for a settled cluster).

use std::hint::black_box;

use tsdb_operator_benches::{applied, now, settled_observation, typical_cluster};
use tsdb_operator_core::build::{self, BuildSettings};
use tsdb_operator_core::decide::{self, ClusterObservation};
use tsdb_operator_core::plan::plan_objects;
use tsdb_operator_core::validate;

fn main() {
    let mut args = std::env::args().skip(1);
    let iterations: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let mode = args.next().unwrap_or_default();
    let pc = typical_cluster();
    let settings = BuildSettings::default();
    if mode == "decide" {
        let ((children, pods, secrets), settled) = settled_observation(&pc, &settings);
        for _ in 0..iterations {
            let observation = ClusterObservation {
                pods: &pods,
                secrets: Some(&secrets),
                ..ClusterObservation::of(&settled, &children)
            };
            let decision = decide::decide_cluster(black_box(&observation), &settings, now());
            assert!(decision.stages.is_empty() && !decision.status_changed);
            black_box(decision);
        }
        return;
    }
    let observed = applied(&pc, &settings);
    for _ in 0..iterations {
        let desired =
            build::build(&validate::cluster(black_box(&pc)).expect("a valid cluster"), &settings).expect("builds");
        if mode == "render" {
            black_box(desired);
            continue;
        }
        let plan = plan_objects(&desired, &settings, black_box(&observed)).expect("plans");
        assert!(plan.is_empty());
        black_box(plan);
    }
}
