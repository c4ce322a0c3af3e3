//! The operator at rest: run with only the RBAC of deploy/rbac.yaml, it brings clusters up, and once they are
//! Active it makes zero write requests for two minutes (counted in the API server's audit log by user).

mod support;

use std::time::Duration;

use anyhow::{Context as _, Result};
use support::*;
use tsdb_operator_core::crd::Phase;
use tsdb_operator_testenv::controlplane::OPERATOR_SA_USER;
use tsdb_operator_testenv::process::{ProcessBuilder, free_port};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clusters_cost_zero_writes_with_least_privilege_rbac() -> Result<()> {
    let env = env();
    env.cp.apply_yaml(include_str!("../../deploy/rbac.yaml")).await?;
    let ns = namespace("idle").await;
    let kubeconfig = env.cp.kubeconfig_path_for(OPERATOR_SA_USER).context("operator user")?;
    let port = free_port(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))?;
    let _op = ProcessBuilder::new("operator-rbac", operator_binary())
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg(format!("--metrics-bind-address=127.0.0.1:{port}"))
        .arg("--health-probe-bind-address=0")
        .arg(format!("--watch-namespace={ns}"))
        .spawn(&env.workdir)?;

    for name in ["idle-a", "idle-b"] {
        let yaml = format!(
            "apiVersion: observability.merlionos.org/v1\nkind: PrometheusCluster\nmetadata:\n  name: {name}\nspec:\n  replicas: 2\n  storage:\n    size: 1Gi\n"
        );
        apply_cluster(&ns, &yaml).await?;
    }
    for name in ["idle-a", "idle-b"] {
        wait_phase(&ns, name, Phase::Active, 2, Duration::from_mins(3)).await?;
    }
    let during_create = env.cp.audit_writes_by(OPERATOR_SA_USER)?.len();
    assert!(during_create > 0, "the operator wrote the children under its least-privilege identity");

    // Let in-flight follow-ups (the status write after the last pod became ready) settle.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let before = env.cp.audit_writes_by(OPERATOR_SA_USER)?.len();
    tokio::time::sleep(Duration::from_mins(2)).await;
    let after = env.cp.audit_writes_by(OPERATOR_SA_USER)?;
    let idle_writes: Vec<String> = after[before..].iter().map(ToString::to_string).collect();
    eprintln!("operator writes: {during_create} while creating 2 clusters, {} while idle for 120 s", idle_writes.len());
    assert!(idle_writes.is_empty(), "writes while idle: {idle_writes:#?}");
    Ok(())
}
