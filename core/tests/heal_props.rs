//! Self-healing on a simulated clock: clusters of replicas with scripted behaviour (healthy, slow WAL replay,
//! frozen, flapping, cut off from the operator) are probed and decided on step by step, and every replacement is
//! checked against the guarantees of `tsdb_operator_core::heal`.
// A test harness: its helpers may fail loudly; the behaviour table reads better with one arm per state.
#![allow(clippy::unwrap_used, clippy::match_same_arms)]

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use tsdb_operator_core::heal::{
    ClusterDecision, ClusterKey, ClusterView, HealSettings, Healer, Outcome, ProbeResult, ReplicaFacts,
};

/// How a replica behaves, seen from the operator, relative to its container start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Ready after `replay` seconds of WAL replay (healthy, not ready), then stays ready.
    Replays { replay: u64 },
    /// Like `Replays`, then frozen (no answer) from `at` seconds of simulated time on, until replaced.
    FreezesAt { replay: u64, at: u64 },
    /// Ready, but unreachable for `down` seconds of every `period` seconds, forever (also after replacement).
    Flaps { period: u64, down: u64 },
}

#[derive(Debug, Clone)]
struct Replica {
    name: String,
    generation: u32,
    started: u64,
    behaviour: Behaviour,
    ready_this_run: bool,
}

impl Replica {
    fn uid(&self) -> String {
        format!("{}-{}", self.name, self.generation)
    }

    /// The truth at simulated second `t`: what a probe from the operator returns, and whether the kubelet
    /// (which is not cut off) sees the replica ready.
    fn probe(&self, t: u64, cut_off: bool, kubelet_cut_off: bool) -> (ProbeResult, bool) {
        let since = t.saturating_sub(self.started);
        let truth = match self.behaviour {
            Behaviour::Replays { replay } if since < replay => ProbeResult::NotReady { detail: "503".into() },
            Behaviour::Replays { .. } => ProbeResult::Ready,
            Behaviour::FreezesAt { at, .. } if t >= at && self.generation == 0 => {
                ProbeResult::Unreachable { detail: "timed out".into() }
            }
            Behaviour::FreezesAt { replay, .. } if since < replay => ProbeResult::NotReady { detail: "503".into() },
            Behaviour::FreezesAt { .. } => ProbeResult::Ready,
            Behaviour::Flaps { period, down } if t % period.max(1) < down => {
                ProbeResult::Unreachable { detail: "refused".into() }
            }
            Behaviour::Flaps { .. } => ProbeResult::Ready,
        };
        let kubelet_ready = truth == ProbeResult::Ready && !(cut_off && kubelet_cut_off);
        let seen = if cut_off { ProbeResult::Unreachable { detail: "no route".into() } } else { truth };
        (seen, kubelet_ready)
    }
}

#[derive(Debug, Clone)]
struct Cluster {
    key: ClusterKey,
    settings: HealSettings,
    replicas: Vec<Replica>,
    last_failover: Option<u64>,
}

fn at(t: u64) -> Timestamp {
    Timestamp::from_second(1_700_000_000).unwrap() + SignedDuration::from_secs(i64::try_from(t).unwrap())
}

/// Everything a run produced, to check and to compare runs.
#[derive(Debug, Default, PartialEq)]
struct Log {
    decisions: Vec<(u64, Vec<ClusterDecision>)>,
    replacements: Vec<(u64, ClusterKey, String)>,
}

#[derive(Debug, Clone)]
struct Scenario {
    clusters: Vec<Cluster>,
    /// Simulated seconds during which the operator reaches no pod.
    cut_off: Option<(u64, u64)>,
    /// The kubelet is cut off too (as with the process kubelet, which probes from the host like the operator).
    kubelet_cut_off: bool,
    step: u64,
    steps: u64,
}

/// Runs the scenario and asserts the guarantees at every replacement.
fn run(scenario: &Scenario) -> Log {
    let mut clusters = scenario.clusters.clone();
    let mut healer = Healer::new();
    let mut log = Log::default();
    for i in 0..scenario.steps {
        let t = i * scenario.step;
        let cut_off = scenario.cut_off.is_some_and(|(a, b)| t >= a && t < b);
        let now = at(t);
        // Probe every replica of every enabled cluster; remember what each probe said.
        let mut seen: Vec<Vec<(ProbeResult, bool)>> = Vec::new();
        for c in &mut clusters {
            let mut row = Vec::new();
            for r in &mut c.replicas {
                let (result, kubelet_ready) = r.probe(t, cut_off, scenario.kubelet_cut_off);
                if result == ProbeResult::Ready {
                    r.ready_this_run = true;
                }
                let facts = facts(r, kubelet_ready);
                if c.settings.enabled {
                    healer.record_probe(&c.key, &facts, result.clone(), now);
                }
                row.push((result, kubelet_ready));
            }
            seen.push(row);
        }
        let views: Vec<ClusterView> = clusters
            .iter()
            .zip(&seen)
            .map(|(c, row)| ClusterView {
                key: c.key.clone(),
                settings: c.settings,
                replicas: i32::try_from(c.replicas.len()).unwrap(),
                last_failover_time: c.last_failover.map(at),
                pods: c.replicas.iter().zip(row).map(|(r, (_, k))| facts(r, *k)).collect(),
            })
            .collect();
        let decisions = healer.decide(&views, now);

        // The breaker, computed from the truth: replicas that did not answer this step's probe.
        let failing = |c: &Cluster, row: &[(ProbeResult, bool)]| -> (u32, u32) {
            let f = row.iter().filter(|(p, _)| matches!(p, ProbeResult::Unreachable { .. })).count();
            (u32::try_from(f).unwrap(), u32::try_from(c.replicas.len()).unwrap())
        };
        let open = |(f, of): (u32, u32)| f >= 2 && f * 2 > of;
        let (mut fa, mut oa) = (0, 0);
        for (c, row) in clusters.iter().zip(&seen) {
            if c.settings.enabled {
                let (f, o) = failing(c, row);
                fa += f;
                oa += o;
            }
        }

        for ((c, row), d) in clusters.iter_mut().zip(&seen).zip(&decisions) {
            let Outcome::Replace(rep) = &d.outcome else { continue };
            assert!(c.settings.enabled, "replaced a replica of a disabled cluster");
            // Never while the circuit breaker is open.
            assert!(!open(failing(c, row)) && !open((fa, oa)), "replaced {} at {t}s with the breaker open", rep.pod);
            // Never more than one per cooldown.
            if let Some(last) = c.last_failover {
                assert!(
                    t >= last + c.settings.cooldown.as_secs(),
                    "replaced {} at {t}s, {}s after the previous one (cooldown {:?})",
                    rep.pod,
                    t - last,
                    c.settings.cooldown
                );
            }
            let idx = c.replicas.iter().position(|r| r.name == rep.pod).unwrap();
            let victim = &c.replicas[idx];
            assert_eq!(rep.uid, victim.uid(), "the UID precondition names the judged pod");
            // Never during the startup budget of a replica that has not been ready.
            assert!(
                victim.ready_this_run || t >= victim.started + c.settings.startup_budget.as_secs(),
                "replaced {} at {t}s during its startup budget (started {}s)",
                rep.pod,
                victim.started
            );
            // Never below the quorum guard: the others that are ready number at least replicas - 1.
            let ready_others = c
                .replicas
                .iter()
                .zip(row)
                .enumerate()
                .filter(|(j, (_, (p, k)))| *j != idx && *p == ProbeResult::Ready && *k)
                .count();
            assert!(ready_others + 1 >= c.replicas.len(), "replaced {} at {t}s leaving {ready_others} ready", rep.pod);

            healer.record_replacement(&c.key, rep, now);
            log.replacements.push((t, c.key.clone(), rep.pod.clone()));
            c.last_failover = Some(t);
            let r = &mut c.replicas[idx];
            r.generation += 1;
            r.started = t + 1;
            r.ready_this_run = false;
        }
        log.decisions.push((t, decisions));
    }
    log
}

fn facts(r: &Replica, kubelet_ready: bool) -> ReplicaFacts {
    ReplicaFacts {
        name: r.name.clone(),
        uid: r.uid(),
        running: true,
        started_at: Some(at(r.started)),
        restart_count: 0,
        started: r.ready_this_run,
        kubelet_ready,
        terminating: false,
    }
}

fn settings(interval: u64, threshold: u32, budget: u64, cooldown: u64) -> HealSettings {
    HealSettings {
        enabled: true,
        paused: false,
        probe_interval: Duration::from_secs(interval),
        failure_threshold: threshold,
        startup_budget: Duration::from_secs(budget),
        cooldown: Duration::from_secs(cooldown),
    }
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    prop_oneof![
        (0u64..300).prop_map(|replay| Behaviour::Replays { replay }),
        (0u64..60, 0u64..400).prop_map(|(replay, at)| Behaviour::FreezesAt { replay, at }),
        (2u64..60, 1u64..30).prop_map(|(period, down)| Behaviour::Flaps { period, down: down.min(period - 1) }),
    ]
}

fn cluster(i: usize) -> impl Strategy<Value = Cluster> {
    (
        proptest::collection::vec(behaviour(), 1..=4),
        1u64..10,
        1u32..5,
        0u64..200,
        0u64..300,
        proptest::bool::weighted(0.9),
        proptest::option::of(0u64..100),
    )
        .prop_map(move |(bs, interval, threshold, budget, cooldown, enabled, last)| {
            let mut s = settings(interval, threshold, budget, cooldown);
            s.enabled = enabled;
            Cluster {
                key: ClusterKey { namespace: "ns".into(), name: format!("c{i}") },
                settings: s,
                replicas: bs
                    .into_iter()
                    .enumerate()
                    .map(|(j, behaviour)| Replica {
                        name: format!("c{i}-{j}"),
                        generation: 0,
                        started: 0,
                        behaviour,
                        ready_this_run: false,
                    })
                    .collect(),
                last_failover: last,
            }
        })
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        proptest::collection::vec(0usize..1, 1..=3).prop_flat_map(|v| (0..v.len()).map(cluster).collect::<Vec<_>>()),
        proptest::option::of((0u64..400, 1u64..200)),
        proptest::bool::ANY,
        1u64..6,
    )
        .prop_map(|(clusters, cut, kubelet_cut_off, step)| Scenario {
            clusters,
            cut_off: cut.map(|(a, len)| (a, a + len)),
            kubelet_cut_off,
            step,
            steps: 600 / step,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Cooldown, quorum guard, startup budget and circuit breaker hold at every replacement (asserted in `run`),
    /// and the same inputs give the same decisions.
    #[test]
    fn guarantees_hold_and_decisions_are_deterministic(s in scenario()) {
        let first = run(&s);
        let second = run(&s);
        prop_assert_eq!(first, second);
    }

    /// A replica that replays its WAL within the startup budget is never replaced, however many probes fail.
    #[test]
    fn replay_within_the_budget_is_never_replaced(
        replays in proptest::collection::vec(0u64..290, 1..=3),
        interval in 1u64..10,
        threshold in 1u32..4,
    ) {
        let c = Cluster {
            key: ClusterKey { namespace: "ns".into(), name: "wal".into() },
            settings: settings(interval, threshold, 300, 0),
            replicas: replays.iter().enumerate().map(|(j, &replay)| Replica {
                name: format!("wal-{j}"), generation: 0, started: 0,
                behaviour: Behaviour::Replays { replay }, ready_this_run: false,
            }).collect(),
            last_failover: None,
        };
        let log = run(&Scenario { clusters: vec![c], cut_off: None, kubelet_cut_off: false, step: interval, steps: 600 / interval });
        prop_assert!(log.replacements.is_empty(), "{:?}", log.replacements);
    }

    /// When the operator is cut off from every pod of two or more replicas, nothing is replaced while it lasts,
    /// even when the kubelet cannot reach them either.
    #[test]
    fn nothing_is_replaced_while_the_operator_is_cut_off(
        sizes in proptest::collection::vec(1usize..=3, 1..=3),
        from in 0u64..100,
        threshold in 1u32..4,
        kubelet_cut_off in proptest::bool::ANY,
    ) {
        let clusters: Vec<Cluster> = sizes.iter().enumerate().map(|(i, &n)| Cluster {
            key: ClusterKey { namespace: "ns".into(), name: format!("c{i}") },
            settings: settings(1, threshold, 10, 0),
            replicas: (0..n).map(|j| Replica {
                name: format!("c{i}-{j}"), generation: 0, started: 0,
                behaviour: Behaviour::Replays { replay: 5 }, ready_this_run: false,
            }).collect(),
            last_failover: None,
        }).collect();
        let total: usize = sizes.iter().sum();
        prop_assume!(total >= 2);
        let log = run(&Scenario { clusters, cut_off: Some((from, from + 300)), kubelet_cut_off, step: 1, steps: 500 });
        prop_assert!(log.replacements.is_empty(), "{:?}", log.replacements);
    }

    /// A flapping replica is replaced at most once per cooldown.
    #[test]
    fn flapping_is_bounded_by_the_cooldown(period in 4u64..40, down in 2u64..20, cooldown in 30u64..200) {
        let c = Cluster {
            key: ClusterKey { namespace: "ns".into(), name: "flap".into() },
            settings: settings(1, 2, 5, cooldown),
            replicas: vec![
                Replica { name: "flap-0".into(), generation: 0, started: 0,
                    behaviour: Behaviour::Replays { replay: 0 }, ready_this_run: false },
                Replica { name: "flap-1".into(), generation: 0, started: 0,
                    behaviour: Behaviour::Flaps { period, down: down.min(period - 1) }, ready_this_run: false },
            ],
            last_failover: None,
        };
        let log = run(&Scenario { clusters: vec![c], cut_off: None, kubelet_cut_off: false, step: 1, steps: 1200 });
        prop_assert!(log.replacements.len() as u64 <= 1200 / cooldown + 1, "{:?}", log.replacements);
    }
}

#[test]
fn a_frozen_replica_is_replaced_once_and_only_it() {
    let c = Cluster {
        key: ClusterKey { namespace: "ns".into(), name: "demo".into() },
        settings: settings(2, 3, 60, 30),
        replicas: vec![
            Replica {
                name: "demo-0".into(),
                generation: 0,
                started: 0,
                behaviour: Behaviour::Replays { replay: 4 },
                ready_this_run: false,
            },
            Replica {
                name: "demo-1".into(),
                generation: 0,
                started: 0,
                behaviour: Behaviour::FreezesAt { replay: 4, at: 100 },
                ready_this_run: false,
            },
        ],
        last_failover: None,
    };
    let log = run(&Scenario { clusters: vec![c], cut_off: None, kubelet_cut_off: false, step: 2, steps: 150 });
    assert_eq!(log.replacements.len(), 1, "{:?}", log.replacements);
    let (t, _, pod) = &log.replacements[0];
    assert_eq!(pod, "demo-1");
    // Three failed probes, two seconds apart, starting at 100 s.
    assert_eq!(*t, 104);
}

#[test]
fn a_frozen_replica_is_not_replaced_while_the_kubelet_still_sees_it_ready() {
    let key = ClusterKey { namespace: "ns".into(), name: "d".into() };
    let mut healer = Healer::new();
    let pod = |kubelet_ready| ReplicaFacts {
        name: "d-0".into(),
        uid: "u".into(),
        running: true,
        started_at: Some(at(0)),
        restart_count: 0,
        started: true,
        kubelet_ready,
        terminating: false,
    };
    for t in 100..110 {
        healer.record_probe(&key, &pod(true), ProbeResult::Unreachable { detail: "x".into() }, at(t));
    }
    let view = |k| ClusterView {
        key: key.clone(),
        settings: settings(1, 3, 10, 0),
        replicas: 1,
        last_failover_time: None,
        pods: vec![pod(k)],
    };
    let d = healer.decide(&[view(true)], at(110));
    assert_eq!(d[0].outcome, Outcome::Nothing);
    let d = healer.decide(&[view(false)], at(110));
    assert!(matches!(d[0].outcome, Outcome::Replace(_)), "{:?}", d[0]);
}

#[test]
fn replicas_restarted_by_the_kubelet_during_an_outage_keep_the_breaker_open() {
    let key = |n: &str| ClusterKey { namespace: "ns".into(), name: n.into() };
    let pod = |name: &str, running: bool, started: u64| ReplicaFacts {
        name: name.into(),
        uid: name.into(),
        running,
        started_at: Some(at(started)),
        restart_count: i32::from(started > 0),
        started: started == 0,
        kubelet_ready: false,
        terminating: false,
    };
    let mut healer = Healer::new();
    let down = || ProbeResult::Unreachable { detail: "no route".into() };
    for t in 100..106 {
        healer.record_probe(&key("a"), &pod("a-0", true, 0), down(), at(t));
        healer.record_probe(&key("a"), &pod("a-1", true, 0), down(), at(t));
        healer.record_probe(&key("b"), &pod("b-0", true, 0), down(), at(t));
    }
    // The kubelet restarted a-0 (not running yet) and b-0 (running again, within its startup budget).
    healer.record_probe(&key("b"), &pod("b-0", true, 106), down(), at(106));
    healer.record_probe(&key("a"), &pod("a-1", true, 0), down(), at(106));
    let views = [
        ClusterView {
            key: key("a"),
            settings: settings(1, 2, 10, 0),
            replicas: 2,
            last_failover_time: None,
            pods: vec![pod("a-0", false, 0), pod("a-1", true, 0)],
        },
        ClusterView {
            key: key("b"),
            settings: settings(1, 2, 10, 0),
            replicas: 1,
            last_failover_time: None,
            pods: vec![pod("b-0", true, 106)],
        },
    ];
    for d in healer.decide(&views, at(106)) {
        assert!(!matches!(d.outcome, Outcome::Replace(_)), "{d:?}");
        assert!(d.suspended.as_ref().is_some_and(tsdb_operator_core::heal::Suspension::is_breaker), "{d:?}");
    }
}
