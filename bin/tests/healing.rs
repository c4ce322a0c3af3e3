//! Self-healing against the real control plane with the process kubelet running real Prometheus: a frozen
//! replica is replaced, a replica replaying a large WAL is left alone, replicas cut off from the operator are
//! left alone behind the circuit breaker, and a flapping replica is replaced at most once per cooldown.
//! The tests run one at a time (they measure timings and share two cores); each has its own namespace and
//! operator process.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use support::*;
use tsdb_operator_core::crd::{Phase, PrometheusCluster};

const READY: Duration = Duration::from_mins(3);

/// One test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn cluster_yaml(name: &str, replicas: i32, healing: &str, extra: &str) -> String {
    format!(
        "apiVersion: observability.merlionos.org/v1\nkind: PrometheusCluster\nmetadata:\n  name: {name}\n\
         spec:\n  replicas: {replicas}\n  retention: 1d\n  scrapeInterval: 2s\n  evaluationInterval: 5s\n  \
         storage:\n    size: 1Gi\n  selfHealing:\n{healing}{extra}"
    )
}

fn healing(interval: &str, threshold: i32, budget: &str, cooldown: &str) -> String {
    format!(
        "    probeInterval: {interval}\n    failureThreshold: {threshold}\n    startupBudget: {budget}\n    \
         cooldown: {cooldown}\n"
    )
}

async fn uid_of(ns: &str, pod: &str) -> Result<Option<String>> {
    Ok(Api::<Pod>::namespaced(client(), ns).get_opt(pod).await?.and_then(|p| p.metadata.uid))
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ip(p: &Pod) -> Option<String> {
    p.status.as_ref().and_then(|s| s.pod_ip.clone())
}

async fn event_reasons(ns: &str) -> Result<Vec<(String, String)>> {
    let events =
        Api::<k8s_openapi::api::events::v1::Event>::namespaced(client(), ns).list(&ListParams::default()).await?;
    Ok(events.items.into_iter().map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default())).collect())
}

/// The value of a metric line that starts with `prefix` (labels included), 0 when absent.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn condition(pc: &PrometheusCluster, type_: &str) -> Option<(String, String)> {
    pc.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_).map(|c| (c.status.clone(), c.reason.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_replica_is_replaced_and_the_cluster_is_active_again() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let ns = namespace("heal-freeze").await;
    let op = Operator::start(Some(&ns), &[])?;
    apply_cluster(&ns, &cluster_yaml("demo", 2, &healing("2s", 3, "60s", "30s"), "")).await?;
    wait_phase(&ns, "demo", Phase::Active, 2, READY).await?;
    let uid0 = uid_of(&ns, "demo-0").await?.context("demo-0")?;
    let uid1 = uid_of(&ns, "demo-1").await?.context("demo-1")?;

    let frozen_at = Instant::now();
    env().kubelet.faults().freeze(&ns, "demo-1", "prometheus")?;
    let new_uid = eventually("demo-1 to be replaced", Duration::from_mins(2), || async {
        Ok(uid_of(&ns, "demo-1").await?.filter(|u| *u != uid1))
    })
    .await?;
    let replaced_after = frozen_at.elapsed();
    eventually("the replacement demo-1 to be Ready", READY, || async {
        let p = Api::<Pod>::namespaced(client(), &ns).get_opt("demo-1").await?;
        Ok(p.filter(|p| p.metadata.uid.as_deref() == Some(new_uid.as_str()) && pod_ready(p)).map(|_| ()))
    })
    .await?;
    let ready_after = frozen_at.elapsed();
    let pc = wait_phase(&ns, "demo", Phase::Active, 2, READY).await?;
    let active_after = frozen_at.elapsed();
    eprintln!(
        "BENCH freeze->replacement pod created {:.1}s, ->replacement Ready {:.1}s, ->cluster Active {:.1}s",
        replaced_after.as_secs_f64(),
        ready_after.as_secs_f64(),
        active_after.as_secs_f64()
    );

    assert_eq!(uid_of(&ns, "demo-0").await?.as_deref(), Some(uid0.as_str()), "the healthy replica is untouched");
    assert!(pc.status.as_ref().and_then(|s| s.last_failover_time.as_ref()).is_some(), "lastFailoverTime is set");
    let events = event_reasons(&ns).await?;
    let failovers: Vec<_> = events.iter().filter(|(r, _)| r == "FailoverTriggered").collect();
    assert_eq!(failovers.len(), 1, "one FailoverTriggered event: {events:?}");
    assert!(failovers[0].1.contains("demo-1"), "{failovers:?}");
    let metrics = op.metrics().await?;
    let counter = format!("tsdb_operator_failover_total{{namespace=\"{ns}\",cluster=\"demo\"}}");
    assert!((metric(&metrics, &counter) - 1.0).abs() < f64::EPSILON, "{counter} is 1:\n{metrics}");
    // The Healing condition clears once the replacement is ready.
    let api: Api<PrometheusCluster> = Api::namespaced(client(), &ns);
    eventually("Healing=False", Duration::from_secs(30), || async {
        let pc = api.get("demo").await?;
        Ok((condition(&pc, "Healing").map(|c| c.0).as_deref() == Some("False")).then_some(()))
    })
    .await?;
    release_namespace(&ns).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_replaying_a_large_wal_is_not_replaced() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let ns = namespace("heal-wal").await;
    let op = Operator::start(Some(&ns), &[])?;
    // 800 copies of Prometheus' own metrics every 10 s (one target per `copy` label, all on Prometheus' own
    // loopback listener): about 400k series, so that replaying the WAL after a restart takes seconds, during which
    // /-/ready answers 503. With 200 copies every 2 s for 100 s the replay took 1.4 s on a fast machine: one probe.
    // 400 copies every 2 s (100k samples/s) kept both cores of a slower machine busy: probes through the pod's port
    // timed out for seconds, the kubelet's too, and the replica was (rightly, by its settings) replaced before the
    // test killed it. Replay time grows with the series more than with the samples, so many series scraped rarely.
    let copies: Vec<String> =
        (0..800).map(|i| format!("{{targets: [\"127.0.0.1:9089\"], labels: {{copy: \"{i}\"}}}}")).collect();
    let extra = format!(
        "  additionalScrapeConfigs:\n    inline: |\n      - job_name: load\n        scrape_interval: 10s\n        \
         static_configs: [{}]\n",
        copies.join(", ")
    );
    apply_cluster(&ns, &cluster_yaml("wal", 1, &healing("1s", 2, "120s", "0s"), &extra)).await?;
    wait_phase(&ns, "wal", Phase::Active, 1, READY).await?;
    let pod = Api::<Pod>::namespaced(client(), &ns).get("wal-0").await?;
    let uid = pod.metadata.uid.clone().context("uid")?;
    let ip = pod_ip(&pod).context("pod IP")?;
    // Each copy is about 450-500 series depending on what Prometheus has seen so far; the first scrape of every
    // target creates its series, which takes a while on two busy cores. 300k series are enough for a replay of
    // seconds. The count seen last is in the error when it never gets there.
    let head_series = |ip: String| async move {
        let v = prom_get(&ip, "/api/v1/query?query=prometheus_tsdb_head_series%7Bjob%3D%22prometheus%22%7D").await?;
        let n: f64 = v["data"]["result"][0]["value"][1].as_str().and_then(|s| s.parse().ok()).unwrap_or(0.0);
        anyhow::Ok(n)
    };
    let series_at = Instant::now();
    eventually("300k head series", Duration::from_mins(5), || {
        let ip = ip.clone();
        async move {
            let n = head_series(ip).await?;
            anyhow::ensure!(n >= 300_000.0, "{n} head series");
            Ok(Some(()))
        }
    })
    .await?;
    eprintln!("BENCH WAL replay: 300k head series after {:.0}s", series_at.elapsed().as_secs_f64());
    // Let the WAL grow for a while (about 6M samples).
    tokio::time::sleep(Duration::from_secs(150)).await;
    eprintln!("BENCH WAL replay: {} head series before the kill", head_series(ip.clone()).await?);

    let failed_probes = |text: &str| {
        metric(text, "tsdb_operator_heal_probes_total{result=\"not_ready\"}")
            + metric(text, "tsdb_operator_heal_probes_total{result=\"unreachable\"}")
    };
    let failed_before = failed_probes(&op.metrics().await?);
    // SIGKILL: the kubelet restarts the container, which replays the WAL.
    env().kubelet.faults().kill(&ns, "wal-0", "prometheus")?;
    let killed_at = Instant::now();
    // Polled through the pod's port: 502 while Prometheus is down, 503 while it replays, 200 when ready. A poll
    // can also time out while the replay keeps both cores busy, so any answer but 200 counts as not ready.
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(3)).build()?;
    let (mut first_503, mut not_ready_since, mut ready_at) = (None, None, None);
    while killed_at.elapsed() < Duration::from_secs(150) {
        let ready = http.get(format!("http://{ip}:9090/-/ready")).send().await.map_or(0, |r| r.status().as_u16());
        if ready != 200 && not_ready_since.is_none() {
            not_ready_since = Some(killed_at.elapsed());
        }
        if ready == 503 && first_503.is_none() {
            first_503 = Some(killed_at.elapsed());
        }
        if ready == 200 && not_ready_since.is_some() {
            ready_at = Some(killed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let not_ready_since = not_ready_since.context("never saw the replica not ready after the kill")?;
    let ready_at = ready_at.context("not ready again within 150 s")?;
    let first_503 = first_503.unwrap_or(not_ready_since);
    let replay = ready_at.saturating_sub(first_503);
    eprintln!("BENCH WAL replay: /-/ready answered 503 for {:.1}s (healthy, not ready)", replay.as_secs_f64());
    // A few more probe periods, then check nothing was replaced.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(uid_of(&ns, "wal-0").await?, Some(uid), "the replaying replica was not replaced");
    let metrics = op.metrics().await?;
    let failed = failed_probes(&metrics) - failed_before;
    eprintln!("BENCH WAL replay: the operator saw {failed} failed probes of the restarting replica, replaced nothing");
    assert!(
        failed >= 2.0,
        "the operator must have seen at least failureThreshold (2) failed probes; the seed acts on the first"
    );
    let counter = format!("tsdb_operator_failover_total{{namespace=\"{ns}\",cluster=\"wal\"}}");
    assert!(metric(&metrics, &counter) < 0.5, "no failover:\n{metrics}");
    assert!(event_reasons(&ns).await?.iter().all(|(r, _)| r != "FailoverTriggered"), "no FailoverTriggered event");
    wait_phase(&ns, "wal", Phase::Active, 1, READY).await?;
    release_namespace(&ns).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_cut_off_from_the_operator_are_left_alone_behind_the_circuit_breaker() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let ns = namespace("heal-cut").await;
    let op = Operator::start(Some(&ns), &[])?;
    let settings = healing("1s", 2, "10s", "0s");
    apply_cluster(&ns, &cluster_yaml("pair", 2, &settings, "")).await?;
    apply_cluster(&ns, &cluster_yaml("solo", 1, &settings, "")).await?;
    wait_phase(&ns, "pair", Phase::Active, 2, READY).await?;
    wait_phase(&ns, "solo", Phase::Active, 1, READY).await?;
    let pods = ["pair-0", "pair-1", "solo-0"];
    let mut uids = Vec::new();
    for p in pods {
        uids.push(uid_of(&ns, p).await?.context("uid")?);
    }

    let faults = env().kubelet.faults();
    for p in pods {
        faults.make_unreachable(&ns, p).await?;
    }
    let cut_at = Instant::now();
    let api: Api<PrometheusCluster> = Api::namespaced(client(), &ns);
    let opened = eventually("HealingSuspended=True on both clusters", Duration::from_mins(1), || async {
        let pair = condition(&api.get("pair").await?, "HealingSuspended");
        let solo = condition(&api.get("solo").await?, "HealingSuspended");
        Ok((pair.as_ref().is_some_and(|c| c.0 == "True") && solo.as_ref().is_some_and(|c| c.0 == "True"))
            .then_some((pair, solo)))
    })
    .await;
    let cut_result: Result<()> = async {
        let (pair, solo) = opened?;
        eprintln!(
            "BENCH cut off -> HealingSuspended {:.1}s: pair {pair:?}, solo {solo:?}",
            cut_at.elapsed().as_secs_f64()
        );
        assert_eq!(pair.map(|c| c.1).as_deref(), Some("MostReplicasFailing"));
        assert_eq!(solo.map(|c| c.1).as_deref(), Some("MostPodsFailing"), "the operator-wide breaker");
        let metrics = op.metrics().await?;
        let gauge = format!("tsdb_operator_healing_suspended{{namespace=\"{ns}\",cluster=\"pair\"}}");
        assert!((metric(&metrics, &gauge) - 1.0).abs() < f64::EPSILON, "{gauge} is 1:\n{metrics}");
        // Stay cut off well past failureThreshold x probeInterval and the startup budget; the kubelet, which
        // cannot reach the pods either, restarts their containers meanwhile.
        tokio::time::sleep(Duration::from_secs(40)).await;
        Ok(())
    }
    .await;
    for p in pods {
        faults.make_reachable(&ns, p).await?;
    }
    cut_result?;
    let restored_at = Instant::now();
    eventually("HealingSuspended=False on both clusters", Duration::from_mins(1), || async {
        let pair = condition(&api.get("pair").await?, "HealingSuspended");
        let solo = condition(&api.get("solo").await?, "HealingSuspended");
        Ok((pair.is_some_and(|c| c.0 == "False") && solo.is_some_and(|c| c.0 == "False")).then_some(()))
    })
    .await?;
    eprintln!("BENCH reachable again -> HealingSuspended=False {:.1}s", restored_at.elapsed().as_secs_f64());

    for (p, uid) in pods.iter().zip(&uids) {
        assert_eq!(uid_of(&ns, p).await?.as_ref(), Some(uid), "{p} was not replaced");
    }
    let metrics = op.metrics().await?;
    // (The counters start at 0, so that a first failover is an increase alerts see.)
    let failovers = metric_sum(&metrics, "tsdb_operator_failover_total{");
    assert!(failovers < 0.5, "no failover, saw {failovers}:\n{metrics}");
    let reasons: BTreeSet<String> = event_reasons(&ns).await?.into_iter().map(|e| e.0).collect();
    assert!(reasons.contains("HealingSuspended") && reasons.contains("HealingResumed"), "{reasons:?}");
    assert!(!reasons.contains("FailoverTriggered"), "{reasons:?}");
    wait_phase(&ns, "pair", Phase::Active, 2, READY).await?;
    release_namespace(&ns).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_replica_is_replaced_at_most_once_per_cooldown() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let ns = namespace("heal-flap").await;
    let op = Operator::start(Some(&ns), &[])?;
    let cooldown = Duration::from_secs(45);
    apply_cluster(&ns, &cluster_yaml("flap", 2, &healing("1s", 2, "20s", "45s"), "")).await?;
    wait_phase(&ns, "flap", Phase::Active, 2, READY).await?;
    let steady = uid_of(&ns, "flap-0").await?;

    // Freeze flap-1 for 22 s out of every 27 s, whichever pod currently has that name, for 150 s: long enough for
    // the kubelet to see it not ready (about 15 s), short of its liveness restart (about 30 s).
    let faults = env().kubelet.faults();
    let window = Duration::from_secs(150);
    let started = Instant::now();
    let mut seen = BTreeSet::new();
    while started.elapsed() < window {
        if let Some(uid) = uid_of(&ns, "flap-1").await? {
            seen.insert(uid);
        }
        let frozen = faults.freeze(&ns, "flap-1", "prometheus").is_ok();
        tokio::time::sleep(Duration::from_secs(22)).await;
        if frozen {
            let _ = faults.thaw(&ns, "flap-1", "prometheus");
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    if let Some(uid) = uid_of(&ns, "flap-1").await? {
        seen.insert(uid);
    }
    let metrics = op.metrics().await?;
    let counter = format!("tsdb_operator_failover_total{{namespace=\"{ns}\",cluster=\"flap\"}}");
    let failovers = metric(&metrics, &counter);
    let bound = f64::from(u32::try_from(window.as_secs() / cooldown.as_secs() + 1)?);
    eprintln!(
        "BENCH flapping for {}s with cooldown {}s: {failovers} replacements",
        window.as_secs(),
        cooldown.as_secs()
    );
    assert!(failovers <= bound, "{failovers} replacements in {window:?} with cooldown {cooldown:?}");
    assert!(failovers >= 1.0, "a replica frozen for 22 s at a time is stuck by the settings and gets replaced");
    assert!(f64::from(u32::try_from(seen.len())?) <= failovers + 1.0, "replaced pods {seen:?} vs counter {failovers}");
    assert_eq!(uid_of(&ns, "flap-0").await?, steady, "the steady replica was never replaced");
    wait_phase(&ns, "flap", Phase::Active, 2, READY).await?;
    release_namespace(&ns).await?;
    Ok(())
}
