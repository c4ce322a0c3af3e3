//! Monitors in other namespaces than the cluster's, on the real control plane with real Prometheus: the operator
//! (watching every namespace, with only the RBAC of deploy/rbac.yaml) gives the cluster's ServiceAccount the right
//! to discover targets in the namespaces its monitors live in, and takes it back when no monitor needs it and when
//! the cluster is deleted. Its own binary: an operator over all namespaces would reconcile other tests' clusters.

mod support;

use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::{Patch, PatchParams};
use support::{env, eventually, operator_binary};
use tsdb_operator_core::crd::{Phase, PrometheusCluster};
use tsdb_operator_testenv::controlplane::OPERATOR_SA_USER;
use tsdb_operator_testenv::process::{ProcessBuilder, free_port};

/// The app: a Prometheus (it serves its own `/metrics`) in a pod labelled `app: web`, behind the Service `web`,
/// and the ServiceMonitor `web` that selects it, all in `ns`.
fn app(ns: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-0\n  namespace: {ns}\n  labels:\n    app: web\nspec:\n  \
         containers:\n    - name: app\n      image: prom/prometheus:v3.5.0\n      args: [\"--config.file=/dev/null\", \
         \"--storage.tsdb.path=data\", \"--web.listen-address=:9090\"]\n      ports:\n        - name: metrics\n          \
         protocol: TCP\n          containerPort: 9090\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  \
         namespace: {ns}\n  labels:\n    app.kubernetes.io/name: web\nspec:\n  selector:\n    app: web\n  ports:\n    \
         - name: metrics\n      protocol: TCP\n      port: 9090\n      targetPort: metrics\n"
    )
}

fn service_monitor(ns: &str) -> String {
    format!(
        "apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata:\n  name: web\n  namespace: {ns}\n\
         spec:\n  selector:\n    matchLabels:\n      app.kubernetes.io/name: web\n  endpoints:\n    - port: metrics\n      \
         interval: 1s\n"
    )
}

/// The operator as the ServiceAccount of deploy/rbac.yaml, over all namespaces.
fn start_operator() -> Result<tsdb_operator_testenv::process::Supervised> {
    let env = env();
    let kubeconfig = env.cp.kubeconfig_path_for(OPERATOR_SA_USER).context("operator user")?;
    let port = free_port(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))?;
    ProcessBuilder::new("operator-all", operator_binary())
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg(format!("--metrics-bind-address=127.0.0.1:{port}"))
        .arg("--metrics-secure=false")
        .arg("--health-probe-bind-address=0")
        .env("RUST_LOG", "info,tsdb_operator_adapters=debug,kube=warn")
        .grace(Duration::from_secs(10))
        .spawn(&env.workdir)
}

/// Whether the Role and the RoleBinding `name` exist in `ns`.
async fn discovery_objects(ns: &str, name: &str) -> Result<(bool, bool)> {
    let client = support::client();
    let role = Api::<Role>::namespaced(client.clone(), ns).get_opt(name).await?;
    let binding = Api::<RoleBinding>::namespaced(client, ns).get_opt(name).await?;
    Ok((role.is_some(), binding.is_some()))
}

async fn set_namespace_label(ns: &str, value: Option<&str>) -> Result<()> {
    let patch = serde_json::json!({"metadata": {"labels": {"tsdb-test/discovery": value}}});
    Api::<Namespace>::all(support::client()).patch(ns, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitors_in_other_namespaces_are_discovered_with_rights_the_operator_grants_and_takes_back() -> Result<()> {
    let env = env();
    env.cp.apply_yaml(include_str!("../../fixtures/crds/monitoring.coreos.com.yaml")).await?;
    env.cp.apply_yaml(include_str!("../../deploy/rbac.yaml")).await?;
    let home = support::namespace("disc-home").await;
    let apps = support::namespace("disc-apps").await;
    let mut operator = start_operator()?;

    env.cp.apply_yaml(&app(&apps)).await?;
    eventually("the ServiceMonitor CRD to be served", Duration::from_secs(30), || async {
        Ok(env.cp.apply_yaml(&service_monitor(&apps)).await.is_ok().then_some(()))
    })
    .await?;
    set_namespace_label(&apps, Some("yes")).await?;
    support::apply_cluster(
        &home,
        "apiVersion: observability.merlionos.org/v1\nkind: PrometheusCluster\nmetadata:\n  name: sel\nspec:\n  \
         replicas: 1\n  image: prom/prometheus:v3.5.0\n  retention: 1d\n  scrapeInterval: 1s\n  storage:\n    \
         size: 1Gi\n  serviceMonitorSelector: {}\n  serviceMonitorNamespaceSelector:\n    matchLabels:\n      \
         tsdb-test/discovery: \"yes\"\n",
    )
    .await?;
    support::wait_phase(&home, "sel", Phase::Active, 1, Duration::from_mins(3)).await?;
    let pod = support::pods(&home, "sel").await?.into_iter().next().context("the cluster's pod")?;
    let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).context("pod IP")?;

    // The operator granted discovery in the monitor's namespace, and Prometheus (as sel-discovery, which holds
    // no other right there) finds the target and scrapes it.
    let name = format!("{home}.sel-discovery");
    assert_eq!(discovery_objects(&apps, &name).await?, (true, true));
    let binding = Api::<RoleBinding>::namespaced(support::client(), &apps).get(&name).await?;
    let uid = Api::<PrometheusCluster>::namespaced(support::client(), &home).get("sel").await?.metadata.uid;
    assert_eq!(
        binding.metadata.labels.unwrap_or_default().get("observability.merlionos.org/discovery-for"),
        uid.as_ref()
    );
    let pool = format!("serviceMonitor/{apps}/web/0");
    eventually("the target in the other namespace up", Duration::from_mins(2), || {
        let (ip, pool) = (ip.clone(), pool.clone());
        async move { Ok(support::healthy_pools(&ip).await?.contains(&pool).then_some(())) }
    })
    .await?;
    let status = |pc: PrometheusCluster| pc.status.unwrap_or_default().discovery_namespaces;
    let clusters = Api::<PrometheusCluster>::namespaced(support::client(), &home);
    assert_eq!(status(clusters.get("sel").await?), std::slice::from_ref(&apps));

    // The namespace no longer selected: its monitor is dropped and the rights are taken back.
    set_namespace_label(&apps, None).await?;
    eventually("the rights in the unselected namespace gone", Duration::from_mins(1), || {
        let (apps, name) = (apps.clone(), name.clone());
        async move { Ok((discovery_objects(&apps, &name).await? == (false, false)).then_some(())) }
    })
    .await?;
    eventually("the status without the namespace", Duration::from_secs(30), || async {
        Ok(status(clusters.get("sel").await?).is_empty().then_some(()))
    })
    .await?;

    // Selected again, then the cluster deleted: the rights follow it, though no ownerReference can.
    set_namespace_label(&apps, Some("yes")).await?;
    eventually("the rights granted again", Duration::from_mins(1), || {
        let (apps, name) = (apps.clone(), name.clone());
        async move { Ok((discovery_objects(&apps, &name).await? == (true, true)).then_some(())) }
    })
    .await?;
    eventually("the status listing the namespace again", Duration::from_secs(30), || async {
        Ok((status(clusters.get("sel").await?) == std::slice::from_ref(&apps)).then_some(()))
    })
    .await?;
    clusters.delete("sel", &kube::api::DeleteParams::default()).await?;
    eventually("the rights of the deleted cluster gone", Duration::from_mins(1), || {
        let (apps, name) = (apps.clone(), name.clone());
        async move { Ok((discovery_objects(&apps, &name).await? == (false, false)).then_some(())) }
    })
    .await?;

    let _operator = swept_after_a_restart(&home, &apps, &mut operator).await?;
    support::release_namespace(&apps).await?;
    support::release_namespace(&home).await
}

/// A cluster deleted while the operator is stopped: the next operator finds its rights by their label and deletes
/// them, while those of a cluster that still exists stay. Returns the new operator.
async fn swept_after_a_restart(
    home: &str,
    apps: &str,
    operator: &mut tsdb_operator_testenv::process::Supervised,
) -> Result<tsdb_operator_testenv::process::Supervised> {
    let clusters = Api::<PrometheusCluster>::namespaced(support::client(), home);
    for name in ["gone", "kept"] {
        support::apply_cluster(
            home,
            &format!(
                "apiVersion: observability.merlionos.org/v1\nkind: PrometheusCluster\nmetadata:\n  name: {name}\n\
                 spec:\n  replicas: 1\n  image: prom/prometheus:v3.5.0\n  storage:\n    size: 1Gi\n  \
                 serviceMonitorSelector: {{}}\n  serviceMonitorNamespaceSelector:\n    matchLabels:\n      \
                 tsdb-test/discovery: \"yes\"\n"
            ),
        )
        .await?;
    }
    let (gone, kept) = (format!("{home}.gone-discovery"), format!("{home}.kept-discovery"));
    eventually("the rights of both clusters", Duration::from_mins(1), || {
        let (apps, gone, kept) = (apps.to_owned(), gone.clone(), kept.clone());
        async move {
            let both = discovery_objects(&apps, &gone).await? == (true, true)
                && discovery_objects(&apps, &kept).await? == (true, true);
            Ok(both.then_some(()))
        }
    })
    .await?;
    operator.stop()?;
    clusters.delete("gone", &kube::api::DeleteParams::default()).await?;
    eventually("the cluster gone from the API server", Duration::from_secs(30), || async {
        Ok(clusters.get_opt("gone").await?.is_none().then_some(()))
    })
    .await?;
    assert_eq!(discovery_objects(apps, &gone).await?, (true, true), "nothing removed them while stopped");
    let operator = start_operator()?;
    eventually("the rights of the cluster deleted while stopped gone", Duration::from_mins(1), || {
        let (apps, gone) = (apps.to_owned(), gone.clone());
        async move { Ok((discovery_objects(&apps, &gone).await? == (false, false)).then_some(())) }
    })
    .await?;
    assert_eq!(discovery_objects(apps, &kept).await?, (true, true), "the live cluster's rights stay");
    Ok(operator)
}
