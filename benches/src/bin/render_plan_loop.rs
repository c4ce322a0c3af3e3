//! The steady state of `benches/benches/render_plan.rs` in a plain loop, for counting instructions:
//! `valgrind --tool=callgrind target/release/render_plan_loop 1000` (argument: iterations; `render` as a
//! second argument renders only).

use std::hint::black_box;

use tsdb_operator_benches::{applied, typical_cluster};
use tsdb_operator_core::build::{self, BuildSettings};
use tsdb_operator_core::plan::plan_objects;

fn main() {
    let mut args = std::env::args().skip(1);
    let iterations: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let render_only = args.next().as_deref() == Some("render");
    let pc = typical_cluster();
    let settings = BuildSettings::default();
    let observed = applied(&pc, &settings);
    for _ in 0..iterations {
        let desired = build::build(black_box(&pc), &settings).expect("builds");
        if render_only {
            black_box(desired);
            continue;
        }
        let plan = plan_objects(&desired, &settings, black_box(&observed)).expect("plans");
        assert!(plan.is_empty());
        black_box(plan);
    }
}
