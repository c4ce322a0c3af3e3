//! The operator against the real control plane with the process kubelet running real Prometheus:
//! create -> Active, scaling, hot config reload through the agent, deletion, pause, invalid specs,
//! crash recovery and leader election. Each test has its own namespace and its own operator process.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Result;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod, Service};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use support::*;
use tsdb_operator_core::crd::{Phase, PrometheusCluster};

const READY: Duration = Duration::from_mins(3);

fn cluster_yaml(name: &str, replicas: i32) -> String {
    format!(
        "apiVersion: observability.merlionos.org/v1\nkind: PrometheusCluster\nmetadata:\n  name: {name}\n\
         spec:\n  replicas: {replicas}\n  retention: 1d\n  scrapeInterval: 2s\n  evaluationInterval: 5s\n  \
         storage:\n    size: 1Gi\n"
    )
}

async fn set_spec(ns: &str, name: &str, spec: serde_json::Value) -> Result<()> {
    let api: Api<PrometheusCluster> = Api::namespaced(client(), ns);
    api.patch(name, &PatchParams::default(), &Patch::Merge(json!({ "spec": spec }))).await?;
    Ok(())
}

async fn sts(ns: &str, name: &str) -> Result<Option<StatefulSet>> {
    Ok(Api::<StatefulSet>::namespaced(client(), ns).get_opt(name).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_becomes_active_scrapes_itself_and_scales() -> Result<()> {
    let ns = namespace("lifecycle").await;
    let op = Operator::start(Some(&ns), &[])?;
    let started = Instant::now();
    apply_cluster(&ns, &cluster_yaml("demo", 1)).await?;
    let pc = wait_phase(&ns, "demo", Phase::Active, 1, READY).await?;
    eprintln!("create -> Active with 1 ready replica took {:?}", started.elapsed());
    let uid = pc.metadata.uid.clone().unwrap();

    // Children exist and are owned by the cluster.
    let sts = sts(&ns, "demo").await?.expect("statefulset");
    let cm = Api::<ConfigMap>::namespaced(client(), &ns).get("demo-config").await?;
    let svc = Api::<Service>::namespaced(client(), &ns).get("demo").await?;
    for refs in [&sts.metadata.owner_references, &cm.metadata.owner_references, &svc.metadata.owner_references] {
        let refs = refs.as_ref().expect("owner references");
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].uid, uid);
        assert_eq!(refs[0].controller, Some(true));
    }
    assert_eq!(svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()), Some("None"));

    // The phase metric keeps the seed's name; Kubernetes events say what was done.
    let metrics = op.metrics().await?;
    let active = format!("tsdb_operator_cluster_phase{{namespace=\"{ns}\",cluster=\"demo\",phase=\"Active\"}} 1");
    assert!(metrics.contains(&active), "{metrics}");
    let events =
        Api::<k8s_openapi::api::events::v1::Event>::namespaced(client(), &ns).list(&ListParams::default()).await?;
    let reasons: BTreeSet<String> = events.items.iter().filter_map(|e| e.reason.clone()).collect();
    assert!(reasons.contains("Created") && reasons.contains("PhaseChanged"), "event reasons: {reasons:?}");
    // One event per child and per phase, not one series that keeps only the first note.
    let notes: BTreeSet<String> = events.items.iter().filter_map(|e| e.note.clone()).collect();
    for note in [
        "created ConfigMap/demo-config",
        "created Service/demo",
        "created StatefulSet/demo",
        "phase changed from Provisioning to Active",
    ] {
        assert!(notes.contains(note), "no event {note:?} in {notes:?}");
    }

    // The real Prometheus scrapes itself: `up` is 1 when queried through the pod IP.
    let first = pods(&ns, "demo").await?;
    let ip = first[0].status.as_ref().and_then(|s| s.pod_ip.clone()).expect("pod IP");
    let up = eventually("up{job=\"prometheus\"} == 1", Duration::from_mins(1), || {
        let ip = ip.clone();
        async move {
            let v = prom_get(&ip, "/api/v1/query?query=up%7Bjob%3D%22prometheus%22%7D").await?;
            Ok(v["data"]["result"][0]["value"][1].as_str().map(str::to_owned))
        }
    })
    .await?;
    assert_eq!(up, "1");

    // Scale 1 -> 3: Scaling, then Active with 3 ready.
    set_spec(&ns, "demo", json!({"replicas": 3})).await?;
    let api: Api<PrometheusCluster> = Api::namespaced(client(), &ns);
    let mut phases = BTreeSet::new();
    let deadline = Instant::now() + READY;
    loop {
        let st = api.get("demo").await?.status.unwrap_or_default();
        if let Some(p) = st.phase {
            phases.insert(p);
        }
        if st.phase == Some(Phase::Active) && st.ready_replicas == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "did not reach Active with 3 replicas; phases seen: {phases:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(phases.contains(&Phase::Scaling), "phases seen while scaling up: {phases:?}");
    let pdb_exists = kube::Api::<kube::api::DynamicObject>::namespaced_with(
        client(),
        &ns,
        &kube::core::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk("policy", "v1beta1", "PodDisruptionBudget"),
            "poddisruptionbudgets",
        ),
    )
    .get_opt("demo")
    .await?
    .is_some();
    assert!(pdb_exists, "a PodDisruptionBudget protects a cluster with more than one replica");

    // Scale 3 -> 2.
    set_spec(&ns, "demo", json!({"replicas": 2})).await?;
    wait_phase(&ns, "demo", Phase::Active, 2, READY).await?;
    eventually("two pods", Duration::from_mins(1), || async {
        Ok((pods(&ns, "demo").await?.len() == 2).then_some(()))
    })
    .await?;

    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_change_reaches_running_prometheus_without_restart() -> Result<()> {
    let ns = namespace("reload").await;
    let _op = Operator::start(Some(&ns), &[])?;
    apply_cluster(&ns, &cluster_yaml("cfg", 1)).await?;
    wait_phase(&ns, "cfg", Phase::Active, 1, READY).await?;
    let before = pods(&ns, "cfg").await?.remove(0);
    let ip = before.status.as_ref().and_then(|s| s.pod_ip.clone()).expect("pod IP");
    // Restarts before the change (a container restarted under load while starting) are not the change's doing:
    // compare counts, and Prometheus' own start time, before and after.
    let started = prom_get(&ip, "/api/v1/status/runtimeinfo").await?["data"]["startTime"].clone();
    assert!(started.is_string(), "Prometheus reports its start time: {started}");

    set_spec(&ns, "cfg", json!({"remoteWrite": [{"url": "http://127.0.0.1:1/api/v1/write", "name": "sink"}]})).await?;
    eventually("the running Prometheus to load the remote_write config", Duration::from_mins(2), || {
        let ip = ip.clone();
        async move {
            let v = prom_get(&ip, "/api/v1/status/config").await?;
            Ok(v["data"]["yaml"].as_str().is_some_and(|y| y.contains("127.0.0.1:1/api/v1/write")).then_some(()))
        }
    })
    .await?;
    let after = pods(&ns, "cfg").await?.remove(0);
    assert_eq!(before.metadata.uid, after.metadata.uid, "the pod was not replaced");
    let restarted_since = prom_get(&ip, "/api/v1/status/runtimeinfo").await?["data"]["startTime"].clone();
    let events = Api::<Event>::namespaced(client(), &ns)
        .list(&ListParams::default().fields(&format!("involvedObject.name={}", after.name_any())))
        .await?
        .items
        .into_iter()
        .map(|e| format!("{}: {}", e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect::<Vec<_>>();
    assert_eq!(started, restarted_since, "the Prometheus process was not restarted; pod events: {events:#?}");
    assert_eq!(restart_counts(&before), restart_counts(&after), "no container restarted; pod events: {events:#?}");
    Ok(())
}

/// Restart count of each container of a pod, by name.
fn restart_counts(pod: &Pod) -> BTreeMap<String, i32> {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| (c.name.clone(), c.restart_count)).collect())
        .unwrap_or_default()
}

/// Deletion never waits for the operator: the finalizer v1.0.0 added is removed from live objects, and with the
/// operator stopped a cluster, a paused cluster and then their namespace are deleted, children included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_cluster_removes_it_and_its_children() -> Result<()> {
    use k8s_openapi::api::core::v1::Namespace;
    let ns = namespace("delete").await;
    let mut op = Operator::start(Some(&ns), &[])?;
    // As v1.0.0 left it: with the finalizer.
    let legacy = cluster_yaml("gone", 1)
        .replace("  name: gone\n", "  name: gone\n  finalizers: [observability.merlionos.org/finalizer]\n");
    apply_cluster(&ns, &legacy).await?;
    apply_cluster(&ns, &format!("{}  paused: true\n", cluster_yaml("held", 1))).await?;
    eventually("the StatefulSet", Duration::from_mins(1), || async { sts(&ns, "gone").await }).await?;
    let api: Api<PrometheusCluster> = Api::namespaced(client(), &ns);
    eventually("the legacy finalizer to be removed", Duration::from_secs(30), || async {
        let pc = api.get("gone").await?;
        Ok(pc.metadata.finalizers.unwrap_or_default().is_empty().then_some(()))
    })
    .await?;
    eventually("the paused cluster to be reported", Duration::from_secs(30), || async {
        let pc = api.get("held").await?;
        Ok(condition(&pc, "Paused").is_some_and(|c| c.status == "True").then_some(()))
    })
    .await?;
    assert!(api.get("held").await?.metadata.finalizers.unwrap_or_default().is_empty(), "no finalizer on a paused one");

    // The operator is down from here on.
    op.process.kill()?;
    api.delete("gone", &DeleteParams::default()).await?;
    eventually("the PrometheusCluster to be gone without the operator", Duration::from_secs(30), || async {
        Ok(api.get_opt("gone").await?.is_none().then_some(()))
    })
    .await?;
    eventually("children to be garbage collected", Duration::from_mins(2), || async {
        let sts_gone = sts(&ns, "gone").await?.is_none();
        let cm_gone = Api::<ConfigMap>::namespaced(client(), &ns).get_opt("gone-config").await?.is_none();
        let svc_gone = Api::<Service>::namespaced(client(), &ns).get_opt("gone").await?.is_none();
        Ok((sts_gone && cm_gone && svc_gone).then_some(()))
    })
    .await?;
    // The operator back (as after a scale to 0 and back to 1): it recreates nothing of the deleted cluster and
    // creates nothing for the paused one.
    let mut back = Operator::start(Some(&ns), &[])?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    back.process.check_running()?;
    assert!(sts(&ns, "gone").await?.is_none(), "the deleted cluster's StatefulSet is not recreated");
    assert!(sts(&ns, "held").await?.is_none(), "the paused cluster gets no children (only its status is written)");
    back.process.stop()?;
    let namespaces: Api<Namespace> = Api::all(client());
    namespaces.delete(&ns, &DeleteParams::default()).await?;
    eventually("the namespace, with the paused cluster, to be gone", Duration::from_mins(3), || async {
        Ok(namespaces.get_opt(&ns).await?.is_none().then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_cluster_is_left_alone_until_unpaused() -> Result<()> {
    let ns = namespace("paused").await;
    let _op = Operator::start(Some(&ns), &[])?;
    apply_cluster(&ns, &cluster_yaml("p", 1)).await?;
    eventually("the StatefulSet", Duration::from_mins(1), || async { sts(&ns, "p").await }).await?;
    set_spec(&ns, "p", json!({"paused": true, "replicas": 2})).await?;
    let api: Api<PrometheusCluster> = Api::namespaced(client(), &ns);
    eventually("the Paused condition", Duration::from_mins(1), || async {
        let pc = api.get("p").await?;
        let paused = pc.status.unwrap_or_default().conditions.iter().any(|c| c.type_ == "Paused" && c.status == "True");
        Ok(paused.then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let replicas = sts(&ns, "p").await?.and_then(|s| s.spec).and_then(|s| s.replicas);
    assert_eq!(replicas, Some(1), "a paused cluster's StatefulSet is not changed");

    set_spec(&ns, "p", json!({"paused": false})).await?;
    eventually("the StatefulSet to follow the spec after unpausing", Duration::from_mins(1), || async {
        Ok((sts(&ns, "p").await?.and_then(|s| s.spec).and_then(|s| s.replicas) == Some(2)).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_admitted_spec_is_failed_with_a_reason_and_others_still_work() -> Result<()> {
    let ns = namespace("invalid").await;
    let _op = Operator::start(Some(&ns), &[])?;
    let bad = format!("{}  additionalScrapeConfigs:\n    inline: \"job_name: not-a-list\"\n", cluster_yaml("bad", 1));
    apply_cluster(&ns, &bad).await?;
    apply_cluster(&ns, &cluster_yaml("good", 1)).await?;
    let api: Api<PrometheusCluster> = Api::namespaced(client(), &ns);
    let pc = eventually("the bad cluster to be Failed", Duration::from_mins(1), || async {
        let pc = api.get("bad").await?;
        Ok((pc.status.as_ref().and_then(|s| s.phase) == Some(Phase::Failed)).then_some(pc))
    })
    .await?;
    let degraded = pc.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Degraded").expect("Degraded");
    assert_eq!(degraded.status, "True");
    assert_eq!(degraded.reason, "InvalidSpec");
    assert!(degraded.message.contains("spec.additionalScrapeConfigs.inline"), "{}", degraded.message);
    assert!(sts(&ns, "bad").await?.is_none(), "nothing is created for an invalid spec");
    wait_phase(&ns, "good", Phase::Active, 1, READY).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_killed_mid_reconcile_converges_without_duplicates() -> Result<()> {
    let ns = namespace("crash").await;
    let mut op = Operator::start(Some(&ns), &[])?;
    apply_cluster(&ns, &cluster_yaml("c", 2)).await?;
    tokio::time::sleep(Duration::from_millis(700)).await;
    op.process.kill()?;
    let _op2 = Operator::start(Some(&ns), &[])?;
    wait_phase(&ns, "c", Phase::Active, 2, READY).await?;
    let lp = ListParams::default().labels("app.kubernetes.io/instance=c");
    assert_eq!(Api::<StatefulSet>::namespaced(client(), &ns).list(&lp).await?.items.len(), 1);
    assert_eq!(Api::<Service>::namespaced(client(), &ns).list(&lp).await?.items.len(), 1);
    assert_eq!(Api::<ConfigMap>::namespaced(client(), &ns).list(&lp).await?.items.len(), 1);
    Ok(())
}

/// Two operators competing for a 6 s Lease in `ns` (the second starts 2 s after the first), and the cluster `name`
/// with its StatefulSet created by the leader. Returns the leader, the standby and the election arguments.
async fn elected_pair(ns: &str, name: &str, lease_seconds: u32) -> Result<(Operator, Operator, Vec<String>)> {
    elected_pair_as(None, ns, name, lease_seconds).await
}

/// [`elected_pair`] run as `user` (the cluster admin when `None`).
async fn elected_pair_as(
    user: Option<&str>,
    ns: &str,
    name: &str,
    lease_seconds: u32,
) -> Result<(Operator, Operator, Vec<String>)> {
    let elect = vec![
        "--leader-elect".to_owned(),
        format!("--leader-election-id=tsdb-{ns}"),
        format!("--leader-election-namespace={ns}"),
        format!("--leader-election-lease-seconds={lease_seconds}"),
    ];
    let args: Vec<&str> = elect.iter().map(String::as_str).collect();
    let start = || match user {
        None => Operator::start(Some(ns), &args),
        Some(user) => Operator::start_as(env().cp, user, &env().workdir, Some(ns), &args),
    };
    let a = start()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let b = start()?;
    apply_cluster(ns, &cluster_yaml(name, 1)).await?;
    eventually("the StatefulSet", Duration::from_mins(1), || async { sts(ns, name).await }).await?;
    // Exactly one of them is the leader.
    let leader_of = |text: &str| text.lines().any(|l| l.starts_with("tsdb_operator_leader ") && l.ends_with(" 1"));
    let (a_leads, b_leads) = (leader_of(&a.metrics().await?), leader_of(&b.metrics().await?));
    assert!(a_leads ^ b_leads, "exactly one leader (a: {a_leads}, b: {b_leads})");
    Ok(if a_leads { (a, b, elect) } else { (b, a, elect) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_when_the_leader_dies_or_steps_down() -> Result<()> {
    let ns = namespace("leader").await;
    let (mut leader, mut standby, elect) = elected_pair(&ns, "l", 6).await?;
    let (leader, standby) = (&mut leader, &mut standby);
    let leader_of = |text: &str| text.lines().any(|l| l.starts_with("tsdb_operator_leader ") && l.ends_with(" 1"));

    // SIGTERM releases the lease: the standby acts within seconds.
    leader.process.stop()?;
    let t = Instant::now();
    set_spec(&ns, "l", json!({"replicas": 2})).await?;
    eventually("the standby to apply a change made after the leader stopped", Duration::from_secs(30), || async {
        Ok((sts(&ns, "l").await?.and_then(|s| s.spec).and_then(|s| s.replicas) == Some(2)).then_some(()))
    })
    .await?;
    eprintln!("handover after SIGTERM took {:?}", t.elapsed());
    assert!(leader_of(&standby.metrics().await?));

    // A leader killed with SIGKILL cannot release the lease: a new standby takes over once it expires.
    let elect: Vec<&str> = elect.iter().map(String::as_str).collect();
    let mut c = Operator::start(Some(&ns), &elect)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    standby.process.kill()?;
    let t = Instant::now();
    set_spec(&ns, "l", json!({"replicas": 1})).await?;
    eventually(
        "the new standby to apply a change made after the leader was killed",
        Duration::from_secs(45),
        || async { Ok((sts(&ns, "l").await?.and_then(|s| s.spec).and_then(|s| s.replicas) == Some(1)).then_some(())) },
    )
    .await?;
    eprintln!("takeover after SIGKILL took {:?} (lease 6 s)", t.elapsed());
    assert!(leader_of(&c.metrics().await?));
    c.process.stop()?;
    Ok(())
}

/// A leader stopped with SIGTERM releases its Lease, and the standby takes it then, not when the Lease would have
/// expired: a standby that only woke up at the expiry of the copy it had read took up to a whole Lease duration
/// (about 12 s with the default 15 s Lease; `benches/src/bin/handover.rs` measures it). Shown on the Lease itself with
/// a 60 s Lease: the standby acquired it before the leader's last renewal plus 60 s. Both run with only the RBAC of
/// deploy/rbac.yaml, which must let a standby watch the Lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_lease_is_taken_before_it_would_have_expired() -> Result<()> {
    use k8s_openapi::api::coordination::v1::Lease;
    let ns = namespace("release").await;
    env().cp.apply_yaml(include_str!("../../deploy/rbac.yaml")).await?;
    let user = Some(tsdb_operator_testenv::controlplane::OPERATOR_SA_USER);
    let (mut leader, mut standby, _) = elected_pair_as(user, &ns, "r", 60).await?;
    // The standby has read the held Lease by now and waits on it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leases: Api<Lease> = Api::namespaced(client(), &ns);
    let held = leases.get(&format!("tsdb-{ns}")).await?.spec.unwrap_or_default();
    let renewed = held.renew_time.map(|t| t.0).ok_or_else(|| anyhow::anyhow!("the held Lease has a renewTime"))?;
    leader.process.stop()?;
    set_spec(&ns, "r", json!({"replicas": 2})).await?;
    eventually("the standby to apply a change made after the leader stopped", Duration::from_secs(50), || async {
        Ok((sts(&ns, "r").await?.and_then(|s| s.spec).and_then(|s| s.replicas) == Some(2)).then_some(()))
    })
    .await?;
    let taken = leases.get(&format!("tsdb-{ns}")).await?.spec.unwrap_or_default();
    assert_ne!(taken.holder_identity, held.holder_identity, "the standby holds the Lease");
    let acquired = taken.acquire_time.map(|t| t.0).ok_or_else(|| anyhow::anyhow!("the Lease has an acquireTime"))?;
    let expiry = renewed + k8s_openapi::jiff::SignedDuration::from_secs(60);
    assert!(acquired < expiry, "taken at {acquired}, not before the released Lease would have expired ({expiry})");
    standby.process.stop()?;
    Ok(())
}

/// Writes (other than to its Lease) of the operator process `pid`, told apart by the User-Agent it sends.
fn writes_of_process(pid: u32) -> Result<Vec<String>> {
    let tag = format!("-{pid})");
    Ok(env()
        .cp
        .audit_writes_by(tsdb_operator_testenv::controlplane::ADMIN_USER)?
        .into_iter()
        .filter(|w| w.user_agent.contains(&tag))
        .filter(|w| w.object_ref.as_ref().is_none_or(|o| o.resource != "leases"))
        .map(|w| w.to_string())
        .collect())
}

/// Fault row 9: a leader stopped (SIGSTOP) for longer than its Lease, as in a long pause, makes no write when it
/// resumes, although work for it piled up meanwhile (a changed spec): its writes are fenced by the Lease, on the
/// monotonic clock, before the watchdog even notices. The standby took over and carried out the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_past_its_lease_writes_nothing_when_it_resumes() -> Result<()> {
    let ns = namespace("stale").await;
    let (leader, standby, _) = elected_pair(&ns, "s", 6).await?;
    let leader_of = |text: &str| text.lines().any(|l| l.starts_with("tsdb_operator_leader ") && l.ends_with(" 1"));
    let pid = leader.process.pid();
    assert!(!writes_of_process(pid)?.is_empty(), "the leader's writes are told apart by its User-Agent");

    leader.process.freeze()?;
    let frozen = Instant::now();
    let stopped = async {
        // The standby takes the expired Lease and carries out a change made meanwhile.
        set_spec(&ns, "s", json!({"replicas": 2})).await?;
        eventually("the standby to apply the change", Duration::from_secs(45), || async {
            Ok((sts(&ns, "s").await?.and_then(|s| s.spec).and_then(|s| s.replicas) == Some(2)).then_some(()))
        })
        .await?;
        // More work for the stopped leader to find when it resumes.
        set_spec(&ns, "s", json!({"replicas": 1, "retention": "2d"})).await?;
        // Stopped for 30 s in all, as in the fault table's row.
        tokio::time::sleep(Duration::from_secs(30).saturating_sub(frozen.elapsed()).max(Duration::from_secs(3))).await;
        writes_of_process(pid)
    }
    .await;
    leader.process.thaw()?;
    let before = stopped?;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let after = writes_of_process(pid)?;
    let late: Vec<&String> = after.iter().skip(before.len()).collect();
    assert!(late.is_empty(), "the resumed stale leader wrote after its Lease expired: {late:#?}");
    assert!(leader_of(&standby.metrics().await?), "the standby leads");
    eventually(
        "the standby to apply the change made while the leader was stopped",
        Duration::from_secs(30),
        || async { Ok((sts(&ns, "s").await?.and_then(|s| s.spec).and_then(|s| s.replicas) == Some(1)).then_some(())) },
    )
    .await?;
    Ok(())
}

fn condition(pc: &PrometheusCluster, type_: &str) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    pc.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_configuration_is_reported_as_degraded_and_recovers() -> Result<()> {
    let ns = namespace("badcfg").await;
    let _op = Operator::start(Some(&ns), &[])?;
    apply_cluster(&ns, &cluster_yaml("r", 1)).await?;
    wait_phase(&ns, "r", Phase::Active, 1, READY).await?;
    let uids = |pods: Vec<Pod>| -> Vec<String> { pods.into_iter().filter_map(|p| p.metadata.uid).collect() };
    let before = uids(pods(&ns, "r").await?);
    assert_eq!(before.len(), 1);
    // Valid YAML that Prometheus refuses: a scrape timeout longer than the interval.
    let inline = "- job_name: slow\n  scrape_interval: 5s\n  scrape_timeout: 10s\n  static_configs:\n  - targets: ['127.0.0.1:9']\n";
    set_spec(&ns, "r", json!({"additionalScrapeConfigs": {"inline": inline}})).await?;
    let api: Api<PrometheusCluster> = Api::namespaced(client(), &ns);
    let pc = eventually("Degraded with ConfigReloadFailed", Duration::from_secs(90), || async {
        let pc = api.get("r").await?;
        let hit = condition(&pc, "Degraded").is_some_and(|c| c.status == "True" && c.reason == "ConfigReloadFailed");
        Ok(hit.then_some(pc))
    })
    .await?;
    assert_eq!(pc.status.as_ref().and_then(|s| s.phase), Some(Phase::Degraded));
    assert_eq!(uids(pods(&ns, "r").await?), before, "no replica is replaced because of a bad configuration");

    set_spec(&ns, "r", json!({"additionalScrapeConfigs": null})).await?;
    wait_phase(&ns, "r", Phase::Active, 1, Duration::from_secs(90)).await?;
    assert_eq!(uids(pods(&ns, "r").await?), before, "the same pod serves the repaired configuration");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_secret_is_reported_with_the_field_and_clears_when_created() -> Result<()> {
    let ns = namespace("secret").await;
    let _op = Operator::start(Some(&ns), &[])?;
    let yaml = format!(
        "{}  remoteWrite:\n  - url: http://127.0.0.1:1/write\n    bearerTokenSecretRef:\n      name: rw-token\n",
        cluster_yaml("s", 1)
    );
    apply_cluster(&ns, &yaml).await?;
    let api: Api<PrometheusCluster> = Api::namespaced(client(), &ns);
    let pc = eventually("Degraded with MissingSecret", Duration::from_secs(90), || async {
        let pc = api.get("s").await?;
        Ok(condition(&pc, "Degraded").is_some_and(|c| c.reason == "MissingSecret").then_some(pc))
    })
    .await?;
    let msg = condition(&pc, "Degraded").unwrap().message;
    assert!(msg.contains("spec.remoteWrite[0].bearerTokenSecretRef") && msg.contains("rw-token"), "{msg}");

    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client(), &ns);
    let secret = serde_json::from_value(json!({"metadata": {"name": "rw-token"}, "stringData": {"token": "t"}}))?;
    secrets.create(&kube::api::PostParams::default(), &secret).await?;
    eventually("the Degraded condition to clear", Duration::from_secs(90), || async {
        let pc = api.get("s").await?;
        Ok(condition(&pc, "Degraded").is_some_and(|c| c.status == "False").then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_change_rolls_the_pods_to_the_new_arguments() -> Result<()> {
    let ns = namespace("roll").await;
    let _op = Operator::start(Some(&ns), &[])?;
    apply_cluster(&ns, &cluster_yaml("roll", 1)).await?;
    wait_phase(&ns, "roll", Phase::Active, 1, READY).await?;
    let before = pods(&ns, "roll").await?.remove(0);

    set_spec(&ns, "roll", json!({"retention": "2d"})).await?;
    let after = eventually("a new pod running with the new retention", READY, || async {
        let pods = pods(&ns, "roll").await?;
        let Some(pod) = pods.into_iter().next() else { return Ok(None) };
        let args = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| c.name == "prometheus"))
            .and_then(|c| c.args.clone());
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let rolled = pod.metadata.uid != before.metadata.uid
            && args.is_some_and(|a| a.iter().any(|a| a == "--storage.tsdb.retention.time=2d"));
        Ok((rolled && ready).then_some(pod))
    })
    .await?;
    let ip = after.status.and_then(|s| s.pod_ip).expect("pod IP");
    let flags = prom_get(&ip, "/api/v1/status/flags").await?;
    assert_eq!(flags["data"]["storage.tsdb.retention.time"], "2d", "the running Prometheus uses the new retention");
    wait_phase(&ns, "roll", Phase::Active, 1, READY).await?;
    Ok(())
}

/// Another writer edits the StatefulSet at 10 requests a second while the operator reconciles (fault A7.10): the
/// operator puts back only what it owns (replicas), keeps the other writer's labels and annotations (server-side
/// apply ownership), writes no more often than the other writer changes owned fields, and does not fight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_writer_keeps_its_metadata_and_owned_fields_converge_without_a_write_fight() -> Result<()> {
    use tsdb_operator_testenv::controlplane::ALICE_USER;
    let env = env();
    let ns = namespace("writers").await;
    let _op = Operator::start(Some(&ns), &[])?;
    // Alice may edit workloads in the namespace (the built-in `edit` role), as a user with kubectl would.
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "alice-edit", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": ALICE_USER}]
    });
    env.cp.apply_yaml(&serde_json::to_string(&binding)?).await?;
    // Pods stay Pending (no node matches): only the objects matter here.
    let yaml = format!("{}  nodeSelector:\n    tsdb-test/nowhere: \"true\"\n", cluster_yaml("w", 1));
    apply_cluster(&ns, &yaml).await?;
    eventually("the StatefulSet exists", Duration::from_mins(1), || async { Ok(sts(&ns, "w").await?.map(|_| ())) })
        .await?;
    let alice: Api<StatefulSet> = Api::namespaced(env.cp.client_for_user(ALICE_USER)?, &ns);
    let writes_before = operator_sts_writes(&ns)?;
    let conflicts_before = operator_conflicts(&ns)?;

    // 100 edits over about 10 s: every fifth sets replicas (owned by the operator), the others add metadata.
    let mut replica_edits = 0;
    for i in 0..100u32 {
        let patch = if i % 5 == 0 {
            replica_edits += 1;
            json!({"spec": {"replicas": 3 + i % 2}})
        } else {
            json!({"metadata": {"labels": {format!("team-{}", i % 4): "x"}, "annotations": {"owner/note": format!("edit {i}")}}})
        };
        alice.patch("w", &PatchParams::default(), &Patch::Merge(&patch)).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let converged = eventually("replicas back at 1", Duration::from_secs(30), || async {
        Ok(sts(&ns, "w").await?.filter(|s| s.spec.as_ref().and_then(|s| s.replicas) == Some(1)))
    })
    .await?;
    let labels = converged.metadata.labels.clone().unwrap_or_default();
    let annotations = converged.metadata.annotations.clone().unwrap_or_default();
    for i in 0..4 {
        assert_eq!(labels.get(&format!("team-{i}")).map(String::as_str), Some("x"), "labels: {labels:?}");
    }
    assert_eq!(annotations.get("owner/note").map(String::as_str), Some("edit 99"), "annotations: {annotations:?}");
    assert_eq!(labels.get("app.kubernetes.io/managed-by").map(String::as_str), Some("tsdb-operator"));

    // Quiet afterwards, and the operator wrote at most once per owned-field edit (plus the revert in flight).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = operator_sts_writes(&ns)? - writes_before;
    eprintln!(
        "another writer: {replica_edits} replica edits, 80 metadata edits; operator StatefulSet writes: {during}"
    );
    assert!(during >= 1, "the operator reverted replicas");
    assert!(during <= replica_edits + 2, "operator wrote {during} times for {replica_edits} edits of owned fields");
    let after = operator_sts_writes(&ns)?;
    let conflicts = operator_conflicts(&ns)?;
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(operator_sts_writes(&ns)?, after, "the operator kept writing after the other writer stopped");
    // No 409 storm: the operator's writes (children by forced server-side apply, status by patches without a
    // resourceVersion) are not refused for conflicts, during the edits or after them.
    let answered = operator_writes_answered(&ns, |code| code < 300)?;
    assert!(answered >= during, "the operator's writes are told apart by their User-Agent and answer ({answered})");
    let (during_conflicts, after_conflicts) = (conflicts - conflicts_before, operator_conflicts(&ns)? - conflicts);
    eprintln!("another writer: operator requests answered 409: {during_conflicts} during, {after_conflicts} after");
    assert!(during_conflicts <= 2, "the operator's writes met {during_conflicts} conflicts (409)");
    assert_eq!(after_conflicts, 0, "409s went on after the other writer stopped");

    Ok(())
}

/// The operator's write requests in `ns` (told apart by its User-Agent) that the API server answered with 409.
fn operator_conflicts(ns: &str) -> Result<usize> {
    operator_writes_answered(ns, |code| code == 409)
}

/// The operator's write requests in `ns` whose answer's code passes `code`.
fn operator_writes_answered(ns: &str, code: impl Fn(u16) -> bool) -> Result<usize> {
    Ok(env()
        .cp
        .audit_writes_by(tsdb_operator_testenv::controlplane::ADMIN_USER)?
        .iter()
        .filter(|w| w.user_agent.starts_with("tsdb-operator/") && w.code().is_some_and(&code))
        .filter(|w| w.object_ref.as_ref().is_some_and(|o| o.namespace == ns))
        .count())
}

/// The operator's (admin here) writes to StatefulSets in `ns`, from the API server's audit log; the controller
/// manager writes only their status.
fn operator_sts_writes(ns: &str) -> Result<usize> {
    Ok(env()
        .cp
        .audit_writes_by(tsdb_operator_testenv::controlplane::ADMIN_USER)?
        .iter()
        .filter_map(|w| w.object_ref.as_ref())
        .filter(|o| o.resource == "statefulsets" && o.subresource.is_empty() && o.namespace == ns)
        .count())
}

/// Sets the schema of `spec.replicas` in the live PrometheusCluster CRD; returns the schema it had.
async fn set_replicas_schema(schema: serde_json::Value) -> Result<serde_json::Value> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client());
    let name = "prometheusclusters.observability.merlionos.org";
    let mut crd = serde_json::to_value(crds.get(name).await?)?;
    let slot = crd
        .pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/replicas")
        .ok_or_else(|| anyhow::anyhow!("no spec.replicas in the CRD schema"))?;
    let before = std::mem::replace(slot, schema);
    crds.replace(name, &kube::api::PostParams::default(), &serde_json::from_value(crd)?).await?;
    Ok(before)
}

/// Issue 11, defect 1: an object the schema let through but the operator cannot read (here `replicas: 3000000000`,
/// admitted while the CRD had no maximum, as v1.0.0's CRD did) is reported as Failed naming the field, and stops
/// nothing: not the running operator, and not one restarted with the object already stored (its first LIST).
/// Hostile objects are refused by the schema itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_object_stops_no_other_cluster_also_after_a_restart() -> Result<()> {
    let ns = namespace("unreadable").await;
    let mut op = Operator::start(Some(&ns), &[])?;
    apply_cluster(&ns, &cluster_yaml("before", 1)).await?;

    // The schema of v1.0.0 (no maximum) admits the value; the bounded one is put back at once.
    let bounded = set_replicas_schema(json!({"type": "integer", "format": "int32"})).await?;
    let created = async {
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(client(), &ns, &kube::api::ApiResource::erase::<PrometheusCluster>(&()));
        let bad: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "observability.merlionos.org/v1", "kind": "PrometheusCluster",
            "metadata": {"name": "huge"}, "spec": {"replicas": 3_000_000_000_u64, "storage": {"size": "1Gi"}},
        }))?;
        api.create(&kube::api::PostParams::default(), &bad).await?;
        anyhow::Ok(())
    }
    .await;
    set_replicas_schema(bounded.clone()).await?;
    created?;
    assert!(bounded["maximum"].is_number(), "the installed CRD bounds spec.replicas: {bounded}");

    let raw: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client(), &ns, &kube::api::ApiResource::erase::<PrometheusCluster>(&()));
    let failed_naming_the_field = || async {
        let obj = raw.get("huge").await?;
        let status = &obj.data["status"];
        let degraded = status["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == "Degraded"));
        let message = degraded.and_then(|c| c["message"].as_str()).unwrap_or_default().to_owned();
        Ok((status["phase"] == "Failed" && message.contains("spec.replicas")).then_some(message))
    };
    let message =
        eventually("the unreadable cluster to be Failed naming spec.replicas", Duration::from_mins(1), || {
            failed_naming_the_field()
        })
        .await?;
    eprintln!("unreadable object reported as: {message}");
    wait_phase(&ns, "before", Phase::Active, 1, READY).await?;

    // A restart: the first LIST now holds the unreadable object.
    op.process.kill()?;
    let _op = Operator::start(Some(&ns), &[])?;
    apply_cluster(&ns, &cluster_yaml("after", 1)).await?;
    wait_phase(&ns, "after", Phase::Active, 1, READY).await?;
    eventually("the unreadable cluster still Failed after the restart", Duration::from_secs(30), || {
        failed_naming_the_field()
    })
    .await?;
    assert!(sts(&ns, "huge").await?.is_none(), "nothing is created for an unreadable object");

    // Hostile objects never get in: the API server refuses them with the field.
    let hostile = [
        ("spec.replicas", json!({"replicas": 3_000_000_000_u64})),
        ("spec.replicas", json!({"replicas": -1})),
        ("spec.retention", json!({"retention": format!("{}d", "9".repeat(100_000))})),
        ("spec.image", json!({"image": "x".repeat(1 << 20)})),
        (
            "spec.externalLabels",
            json!({"externalLabels": (0..10_000).map(|i| (format!("l{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()}),
        ),
        ("spec.backup.retention.keepLast", json!({"backup": {"retention": {"keepLast": 1_000_000_000}}})),
    ];
    for (field, spec) in hostile {
        let obj: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "observability.merlionos.org/v1", "kind": "PrometheusCluster",
            "metadata": {"name": "hostile"}, "spec": spec,
        }))?;
        match raw.create(&kube::api::PostParams::default(), &obj).await {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422, "{field}: {e:?}");
                assert!(e.message.contains(field), "{field}: the refusal names the field: {}", e.message);
            }
            other => panic!("{field}: a hostile object was admitted: {:?}", other.map(|o| o.metadata.name)),
        }
    }
    // Deep nesting in an unknown field is pruned by the structural schema; the object reconciles.
    let mut deep = json!("leaf");
    for _ in 0..200 {
        deep = json!({ "a": deep });
    }
    let nested: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "observability.merlionos.org/v1", "kind": "PrometheusCluster",
        "metadata": {"name": "nested"}, "spec": {"replicas": 1, "storage": {"size": "1Gi"}, "unknown": deep},
    }))?;
    raw.create(&kube::api::PostParams::default(), &nested).await?;
    assert!(raw.get("nested").await?.data["spec"].get("unknown").is_none(), "the unknown field was pruned");
    wait_phase(&ns, "nested", Phase::Active, 1, READY).await?;
    Ok(())
}

/// Issue 11, defect 3: growing `spec.storage.size` expands the claims in place (StorageClass with
/// `allowVolumeExpansion`) and carries the size into the StatefulSet without replacing the pod; shrinking is
/// refused with a condition naming the field, while a scale made afterwards still happens, and the status never
/// says the cluster matches the spec while the change is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_grows_in_place_and_a_refused_shrink_blocks_nothing_else() -> Result<()> {
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    use k8s_openapi::api::storage::v1::StorageClass;
    let ns = namespace("storage").await;
    let _op = Operator::start(Some(&ns), &[])?;
    let class_name = format!("{ns}-expandable");
    let class: StorageClass = serde_json::from_value(json!({
        "metadata": {"name": class_name},
        "provisioner": tsdb_operator_testenv::kubelet::PROVISIONER,
        "allowVolumeExpansion": true,
        "volumeBindingMode": "Immediate",
    }))?;
    let classes: Api<StorageClass> = Api::all(client());
    classes.create(&kube::api::PostParams::default(), &class).await?;
    let yaml = cluster_yaml("vol", 1)
        .replace("    size: 1Gi\n", &format!("    size: 1Gi\n    storageClassName: {class_name}\n"));
    apply_cluster(&ns, &yaml).await?;
    wait_phase(&ns, "vol", Phase::Active, 1, READY).await?;
    let pod_uid = pods(&ns, "vol").await?.remove(0).metadata.uid;

    let result = async {
        set_spec(&ns, "vol", json!({"storage": {"size": "2Gi", "storageClassName": class_name}})).await?;
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client(), &ns);
        eventually("the claim to be expanded to 2Gi", Duration::from_mins(1), || async {
            let pvc = claims.get("data-vol-0").await?;
            let capacity = pvc.status.and_then(|s| s.capacity).and_then(|c| c.get("storage").cloned());
            Ok((capacity.map(|q| q.0).as_deref() == Some("2Gi")).then_some(()))
        })
        .await?;
        eventually("the StatefulSet template to say 2Gi", Duration::from_mins(1), || async {
            let template = sts(&ns, "vol").await?.and_then(|s| s.spec).and_then(|s| s.volume_claim_templates);
            let size = template
                .and_then(|t| t.into_iter().next())
                .and_then(|t| t.spec)
                .and_then(|s| s.resources)
                .and_then(|r| r.requests)
                .and_then(|r| r.get("storage").cloned());
            Ok((size.map(|q| q.0).as_deref() == Some("2Gi")).then_some(()))
        })
        .await?;
        let api: Api<PrometheusCluster> = Api::namespaced(client(), &ns);
        eventually("Progressing=False Reconciled after the resize", Duration::from_mins(1), || async {
            let pc = api.get("vol").await?;
            Ok(condition(&pc, "Progressing").is_some_and(|c| c.reason == "Reconciled").then_some(()))
        })
        .await?;
        assert_eq!(pods(&ns, "vol").await?.remove(0).metadata.uid, pod_uid, "the pod was not replaced by the resize");

        // Shrinking is refused; a scale made afterwards still happens.
        set_spec(&ns, "vol", json!({"storage": {"size": "1Gi", "storageClassName": class_name}})).await?;
        let refused =
            eventually("the shrink to be refused naming spec.storage.size", Duration::from_mins(1), || async {
                let pc = api.get("vol").await?;
                Ok(condition(&pc, "Progressing")
                    .filter(|c| c.reason == "StorageChangeRefused" && c.message.contains("spec.storage.size"))
                    .map(|c| c.message))
            })
            .await?;
        eprintln!("shrink refused: {refused}");
        set_spec(&ns, "vol", json!({"replicas": 2})).await?;
        // Degraded, not Active: the cluster does not match its spec while the shrink is refused.
        wait_phase(&ns, "vol", Phase::Degraded, 2, READY).await?;
        let pc = api.get("vol").await?;
        let progressing = condition(&pc, "Progressing").expect("Progressing");
        assert_ne!(progressing.reason, "Reconciled", "a refused change never reads as matching the spec");
        let degraded = condition(&pc, "Degraded").expect("Degraded");
        assert!(degraded.status == "True" && degraded.message.contains("spec.storage.size"), "{degraded:?}");
        anyhow::Ok(())
    }
    .await;
    let _ = classes.delete(&class_name, &DeleteParams::default()).await;
    result
}

/// The Go operator's Deployment arguments (Go flag syntax, zap flags, features off) run this operator: a cluster
/// becomes Active, `--enable-ha=false` keeps self-healing from probing at all, and the log has no colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_deployment_arguments_run_the_operator_with_plain_logs() -> Result<()> {
    let ns = namespace("seedflags").await;
    let op = Operator::start(
        Some(&ns),
        &[
            "-enable-ha=false",
            "--enable-backup",
            "--metrics-secure=false",
            "--enable-http2=false",
            "--enable-webhook=false",
            "--enable-api=false",
            "--api-address=:8080",
            "--webhook-cert-path=/tmp/k8s-webhook-server/serving-certs",
            "--zap-devel=false",
            "--zap-encoder=console",
            "--zap-stacktrace-level=error",
            "--zap-time-encoding=rfc3339",
        ],
    )?;
    let healing = "  selfHealing:\n    probeInterval: 1s\n";
    apply_cluster(&ns, &format!("{}{healing}", cluster_yaml("seed", 1))).await?;
    wait_phase(&ns, "seed", Phase::Active, 1, READY).await?;
    // Probes every second would have counted by now with self-healing on.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let metrics = op.metrics().await?;
    let probes = metric_sum(&metrics, "tsdb_operator_heal_probes_total");
    assert!(probes < 0.5, "--enable-ha=false: no replica is probed, saw {probes}");
    let log = std::fs::read_to_string(op.process.log_path())?;
    assert!(log.contains("--enable-ha=false"), "the operator says self-healing is off:\n{log}");
    assert!(!log.contains('\u{1b}'), "a log that is not a terminal has no colour codes:\n{log}");
    Ok(())
}
