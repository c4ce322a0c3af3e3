//! Leader handover (fault table row 9): two operators with `--leader-elect` and the default 15 s Lease on the real
//! test control plane. Each round stops the leader, changes a cluster's spec at once, and times from the signal
//! until the StatefulSet shows the change (the standby took the Lease, started its controllers and reconciled).
//! Rounds alternate SIGTERM (the leader releases the Lease on its way out) and SIGKILL (nothing is released: the
//! standby waits for the Lease to expire); a fresh standby is started after each round. Reports median and worst
//! of each against the row's bounds: 3 s after SIGTERM, Lease duration + 2 s after SIGKILL.
//!
//! `cargo run --release -p tsdb-operator-benches --bin handover -- --rounds 6`
//! (build the operator first: `cargo build --release -p tsdb-operator --bin tsdb-operator`; `--lease-seconds N`
//! for another Lease duration, `--operator PATH` for another build).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use tsdb_operator_benches::{arg, percentile};
use tsdb_operator_core::crd::PrometheusCluster;
use tsdb_operator_testenv::controlplane::ControlPlane;
use tsdb_operator_testenv::process::{ProcessBuilder, Supervised, Workdir};

const LEASE: &str = "handover";

/// Starts operator number `n` competing for the Lease in `ns`.
fn operator(
    cp: &ControlPlane,
    program: &std::path::Path,
    workdir: &Workdir,
    ns: &str,
    n: usize,
    lease: u64,
) -> Result<Supervised> {
    ProcessBuilder::new(format!("op-{n}"), program)
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .arg("--metrics-bind-address=0")
        .arg("--health-probe-bind-address=0")
        .arg(format!("--watch-namespace={ns}"))
        .arg("--leader-elect")
        .arg(format!("--leader-election-id={LEASE}"))
        .arg(format!("--leader-election-namespace={ns}"))
        .arg(format!("--leader-election-lease-seconds={lease}"))
        .arg(format!("--identity=op-{n}"))
        .spawn(workdir)
}

/// The Lease's holder, waiting (at most `within`) until there is one.
async fn holder(leases: &Api<Lease>, within: Duration) -> Result<String> {
    let deadline = Instant::now() + within;
    loop {
        let held = leases.get_opt(LEASE).await?.and_then(|l| l.spec).and_then(|s| s.holder_identity);
        if let Some(h) = held.filter(|h| !h.is_empty()) {
            return Ok(h);
        }
        if Instant::now() > deadline {
            bail!("nobody took the Lease within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (polling every 20 ms, at most `within`) until the StatefulSet asks for `replicas`.
async fn wait_replicas(sts: &Api<StatefulSet>, replicas: i32, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if sts.get_opt("h").await?.and_then(|s| s.spec).and_then(|s| s.replicas) == Some(replicas) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the StatefulSet did not reach {replicas} replicas within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let rounds = usize::try_from(arg("--rounds", 6))?;
    let lease = arg("--lease-seconds", 15);
    let args: Vec<String> = std::env::args().collect();
    let given = args.iter().position(|a| a == "--operator").and_then(|i| args.get(i + 1));
    let program = tsdb_operator_benches::operator_binary(
        &given.map_or_else(|| PathBuf::from("target/release/tsdb-operator"), PathBuf::from),
    )?;
    let cp = ControlPlane::start()?;
    cp.install_project_crds().await?;
    let ns = cp.namespace("handover").await;
    let workdir = Workdir::create("handover")?;
    let (leases, sts) = (Api::<Lease>::namespaced(cp.client(), &ns), Api::<StatefulSet>::namespaced(cp.client(), &ns));
    let clusters: Api<PrometheusCluster> = Api::namespaced(cp.client(), &ns);

    let mut running: Vec<(String, Supervised)> = Vec::new();
    running.push(("op-0".into(), operator(&cp, &program, &workdir, &ns, 0, lease)?));
    holder(&leases, Duration::from_secs(30)).await?;
    running.push(("op-1".into(), operator(&cp, &program, &workdir, &ns, 1, lease)?));
    let pc: PrometheusCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "observability.merlionos.org/v1", "kind": "PrometheusCluster",
        "metadata": {"name": "h"}, "spec": {"replicas": 1, "storage": {"size": "1Gi"}}
    }))?;
    clusters.create(&PostParams::default(), &pc).await?;
    wait_replicas(&sts, 1, Duration::from_secs(30)).await?;

    let (mut term, mut kill) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // The standby has had time to read the Lease and go to sleep on it, as in a long-running deployment.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let leader = holder(&leases, Duration::from_secs(30)).await?;
        // The operator names itself `<--identity>-<pid>`.
        let at = running
            .iter()
            .position(|(id, p)| leader == format!("{id}-{}", p.pid()))
            .with_context(|| format!("the leader {leader} is one of ours"))?;
        let (_, mut process) = running.remove(at);
        let sigterm = round % 2 == 0;
        let replicas = if sigterm { 2 } else { 1 };
        let t = Instant::now();
        // stop() sends SIGTERM and waits for the exit; the clock runs from the signal.
        let stopping = if sigterm {
            Some(tokio::task::spawn_blocking(move || process.stop()))
        } else {
            process.kill()?;
            None
        };
        let patch = Patch::Merge(serde_json::json!({"spec": {"replicas": replicas}}));
        clusters.patch("h", &PatchParams::default(), &patch).await?;
        wait_replicas(&sts, replicas, Duration::from_secs(lease * 3)).await?;
        let took = t.elapsed();
        if let Some(stopping) = stopping {
            stopping.await??;
        }
        if sigterm { &mut term } else { &mut kill }.push(took);
        println!(
            "round {round}: {} of {leader}, the standby applied the change after {took:?}",
            if sigterm { "SIGTERM" } else { "SIGKILL" }
        );
        let n = round + 2;
        running.push((format!("op-{n}"), operator(&cp, &program, &workdir, &ns, n, lease)?));
    }
    for (_, mut p) in running {
        p.stop()?;
    }

    term.sort();
    kill.sort();
    println!("leader handover, Lease {lease} s, {rounds} rounds ({})", program.display());
    let bounds = [("SIGTERM", &term, Duration::from_secs(3)), ("SIGKILL", &kill, Duration::from_secs(lease + 2))];
    for (what, times, bound) in bounds {
        if times.is_empty() {
            continue;
        }
        let worst = times[times.len() - 1];
        println!(
            "  after {what}: median {:.2} s, worst {:.2} s (row 9 bound {} s: {})",
            percentile(times, 0.5).as_secs_f64(),
            worst.as_secs_f64(),
            bound.as_secs(),
            if worst <= bound { "met" } else { "NOT met" }
        );
    }
    Ok(())
}
