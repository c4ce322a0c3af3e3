//! The Helm chart `charts/tsdb-operator`, with Helm's own Go library (scripts/helm.py over helm-sdkpy) against the
//! test control plane: lint, refusals, install, the operator running with exactly the Deployment's arguments as the
//! chart's ServiceAccount, upgrade and uninstall.
//!
//! The process kubelet cannot run the operator's pod here (a pod's network namespace cannot reach the API server
//! on 127.0.0.1), so the test runs the image itself: it builds it with scripts/build-image.sh (buildah), unpacks it
//! with umoci and starts its entrypoint in its own root filesystem (chroot) as its user, with the arguments,
//! environment and ServiceAccount the installed Deployment names.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use support::*;
use tsdb_operator_core::crd::{Phase, PrometheusCluster};
use tsdb_operator_testenv::process::{ProcessBuilder, free_port};

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn chart() -> String {
    repo().join("charts/tsdb-operator").display().to_string()
}

/// Runs scripts/helm.py; `Err` carries Helm's message.
fn helm(args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new("python3")
        .arg(repo().join("scripts/helm.py"))
        .args(args)
        .env("KUBECONFIG", env().cp.kubeconfig_path())
        .output()
        .context("python3 runs")?;
    if !out.status.success() {
        bail!("helm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The image, unpacked: its root filesystem, entrypoint and `uid:gid`.
struct Image {
    rootfs: PathBuf,
    entrypoint: Vec<String>,
    user: String,
    labels: BTreeMap<String, String>,
}

/// Builds the image from this build's binaries and unpacks it into the workdir.
fn build_image() -> Result<Image> {
    let dir = env().workdir.subdir("image")?;
    let bin_dir = operator_binary().parent().context("bin dir")?.to_path_buf();
    let oci = dir.join("oci");
    let out = Command::new("bash")
        .arg(repo().join("scripts/build-image.sh"))
        .args(["--bin-dir", &bin_dir.display().to_string(), "--tag", "test", "--oci", &oci.display().to_string()])
        .env("TSDB_IMAGE_CONTEXT", dir.join("context"))
        .current_dir(repo())
        .output()?;
    if !out.status.success() {
        bail!("build-image.sh: {}", String::from_utf8_lossy(&out.stderr));
    }
    let bundle = dir.join("bundle");
    let out = Command::new("umoci")
        .args(["unpack", "--rootless", "--image", &format!("{}:test", oci.display())])
        .arg(&bundle)
        .output()?;
    if !out.status.success() {
        bail!("umoci unpack: {}", String::from_utf8_lossy(&out.stderr));
    }
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(bundle.join("config.json"))?)?;
    let process = &config["process"];
    let entrypoint = process["args"].as_array().context("args")?.iter().filter_map(|a| a.as_str()).map(String::from);
    Ok(Image {
        rootfs: bundle.join("rootfs"),
        entrypoint: entrypoint.collect(),
        user: format!("{}:{}", process["user"]["uid"], process["user"]["gid"]),
        labels: serde_json::from_value(config["annotations"].clone())?,
    })
}

/// The rules of deploy/rbac.yaml's ClusterRole `tsdb-operator`.
fn plain_manifest_rules() -> Result<serde_json::Value> {
    for doc in serde_yaml::Deserializer::from_str(include_str!("../../deploy/rbac.yaml")) {
        let v = serde_json::Value::deserialize(doc)?;
        if v["kind"] == "ClusterRole" && v["metadata"]["name"] == "tsdb-operator" {
            return Ok(v["rules"].clone());
        }
    }
    bail!("deploy/rbac.yaml has no ClusterRole tsdb-operator")
}

use serde::Deserialize as _;

#[test]
fn the_chart_lints_and_refuses_values_that_cannot_work_together_with_the_fix() -> Result<()> {
    let lint = helm(&["lint", &chart()])?;
    assert_eq!(lint["TotalChartsLinted"], 1, "{lint}");
    assert!(lint["Errors"].as_array().is_none_or(Vec::is_empty), "{lint}");
    // Only informational messages (severity 1, such as a missing icon).
    let messages = lint["Messages"].as_array().cloned().unwrap_or_default();
    assert!(messages.iter().all(|m| m["Severity"].as_i64().unwrap_or(0) <= 1), "{lint}");

    let values = json!({"features": {"audit": true}, "replicaCount": 2});
    let err = helm(&["install", "refused", &chart(), "default", &values.to_string()]).unwrap_err().to_string();
    assert!(err.contains("audit.dsnSecretRef") && err.contains("replicaCount is 2"), "{err}");
    // The chart's copies of the CRDs, the dashboard and the alerts are the project's.
    for (copy, source) in [
        ("charts/tsdb-operator/crds/crds.yaml", "deploy/crds/crds.yaml"),
        ("charts/tsdb-operator/files/grafana-dashboard.json", "deploy/monitoring/grafana-dashboard.json"),
        ("charts/tsdb-operator/files/alerts.yaml", "deploy/monitoring/alerts.yaml"),
    ] {
        let (a, b) = (std::fs::read_to_string(repo().join(copy))?, std::fs::read_to_string(repo().join(source))?);
        assert!(a == b, "{copy} differs from {source}: copy it again");
    }
    Ok(())
}

/// Issue 15's installation check, short of running the pod from the image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one scenario, in order
async fn install_run_upgrade_and_uninstall_the_chart() -> Result<()> {
    let env = env();
    let ns = namespace("chart").await;
    let release = format!("r{}", &ns[ns.len() - 8..]);
    // Watching its own namespace only: the namespaced rules are a Role there, not cluster-wide. The webhook with
    // the operator's own certificates; Ignore, because the test API server cannot reach a Service (the webhook
    // itself is tested by tests/webhook.rs).
    let values = json!({"watchNamespace": ns, "features": {"webhook": true, "audit": true, "api": true},
        "webhook": {"failurePolicy": "Ignore"}, "audit": {"retentionDays": 30}});
    let installed = helm(&["install", &release, &chart(), &ns, &values.to_string()])?;
    let fullname = format!("{release}-tsdb-operator");
    let manifest = installed["manifest"].as_str().context("the install's manifest")?;
    assert!(manifest.contains("kind: Deployment"), "{manifest}");

    // The Deployment: the seed's probes and ports, locked-down security context, one image for both sides.
    let deployments: Api<Deployment> = Api::namespaced(client(), &ns);
    let deployment = deployments.get(&fullname).await?;
    let spec = deployment.spec.clone().context("spec")?;
    assert_eq!(spec.replicas, Some(1));
    // The process kubelet would run the Deployment's pod with the host's operator binary under the image's name
    // (pods reach the API server through the kubernetes Service). This test runs what is inside the image instead
    // (below), so the Deployment is scaled to 0 first and its pod, which may have taken the leader lease, is gone
    // (it releases the lease on the way out) before the image's operator starts.
    deployments
        .patch(
            &fullname,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await?;
    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    let selector = selector.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client(), &ns);
    eventually("the Deployment's pods gone", Duration::from_mins(1), || async {
        let left = pods.list(&kube::api::ListParams::default().labels(&selector)).await?;
        Ok(left.items.is_empty().then_some(()))
    })
    .await?;
    let pod = spec.template.spec.clone().context("pod spec")?;
    let manager = pod.containers.iter().find(|c| c.name == "manager").context("container manager")?;
    let args = manager.args.clone().unwrap_or_default();
    assert!(!args.iter().any(|a| a.starts_with("--s3-credentials-secret")), "no shared credentials by default");
    for want in ["operator", "--leader-elect=true", "--metrics-secure=true", "--metrics-bind-address=:8443"] {
        assert!(args.iter().any(|a| a == want), "{want} in {args:?}");
    }
    let image_name = manager.image.clone().context("image")?;
    let agent_image = manager.env.iter().flatten().find(|e| e.name == "TSDB_AGENT_IMAGE").and_then(|e| e.value.clone());
    assert_eq!(agent_image.as_deref(), Some(image_name.as_str()), "the agent runs the operator's own image");
    assert!(
        image_name.ends_with(":0.1.0") && !image_name.starts_with("ghcr.io/merlionos/tsdb-operator:"),
        "{image_name}"
    );
    let security = manager.security_context.clone().context("securityContext")?;
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.run_as_non_root, Some(true));
    let liveness = manager.liveness_probe.clone().context("liveness")?;
    assert_eq!(liveness.http_get.map(|g| g.path), Some(Some("/healthz".to_owned())));
    assert!(manager.readiness_probe.is_some());
    // Least privilege: with watchNamespace, the ClusterRole holds cluster-scoped kinds only (the default install's
    // ClusterRole is deploy/rbac.yaml's: the plain manifest test).
    let role = Api::<ClusterRole>::all(client()).get(&fullname).await?;
    let cluster_wide: Vec<String> =
        role.rules.iter().flatten().flat_map(|r| r.resources.clone().unwrap_or_default()).collect();
    assert_eq!(cluster_wide, ["storageclasses", "tokenreviews", "subjectaccessreviews"], "only cluster-scoped kinds");
    Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(client(), &ns).get(&fullname).await?;
    let pdbs = pdb_names(&ns).await?;
    assert!(pdbs.is_empty(), "no PodDisruptionBudget for one replica: {pdbs:?}");
    Api::<Service>::namespaced(client(), &ns).get(&format!("{fullname}-metrics")).await?;

    // The operator as the Deployment says: its arguments and environment, as the chart's ServiceAccount (ports
    // moved to free loopback ones).
    let sa = pod.service_account_name.clone().context("serviceAccountName")?;
    Api::<ServiceAccount>::namespaced(client(), &ns).get(&sa).await?;
    let token = env.cp.service_account_token(&ns, &sa).await?;
    let may = |namespace: &str, verb: &str, resource: &str| {
        let review = json!({"spec": {
            "user": format!("system:serviceaccount:{ns}:{sa}"),
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}")],
            "resourceAttributes": {"namespace": namespace, "verb": verb, "group": "apps", "resource": resource},
        }});
        async move {
            let review: k8s_openapi::api::authorization::v1::SubjectAccessReview = serde_json::from_value(review)?;
            let api: Api<k8s_openapi::api::authorization::v1::SubjectAccessReview> = Api::all(client());
            let answer = api.create(&kube::api::PostParams::default(), &review).await?;
            anyhow::Ok(answer.status.is_some_and(|s| s.allowed))
        }
    };
    assert!(may(&ns, "update", "statefulsets").await?, "the operator may manage StatefulSets where it watches");
    assert!(!may("default", "list", "statefulsets").await?, "and nowhere else");
    let image = build_image()?;
    assert_eq!(image.entrypoint, ["/usr/local/bin/tsdb-operator"]);
    assert!(!image.user.starts_with("0:"), "the image runs as a non-root user: {}", image.user);
    for label in ["title", "version", "revision", "source", "licenses", "created"] {
        let key = format!("org.opencontainers.image.{label}");
        assert!(image.labels.get(&key).is_some_and(|v| !v.is_empty()), "{key} in {:?}", image.labels);
    }
    for absent in ["bin/sh", "usr/bin/apt-get", "bin/busybox"] {
        assert!(!image.rootfs.join(absent).exists(), "no {absent} in the image");
    }
    // The ServiceAccount's credentials where a pod has them, inside the image's filesystem.
    let kubeconfig = "/tmp/kubeconfig";
    std::fs::write(image.rootfs.join("tmp/kubeconfig"), env.cp.kubeconfig_for_token(&sa, &token)?)?;
    let loopback = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    let (metrics_port, health_port) = (free_port(loopback)?, free_port(loopback)?);
    let (webhook_port, api_port) = (free_port(loopback)?, free_port(loopback)?);
    let run = OperatorRun {
        image: &image,
        fullname: &fullname,
        ns: &ns,
        kubeconfig,
        metrics_port,
        health_port,
        webhook_port,
        api_port,
    };
    // The Deployment's volumes, as a kubelet would mount them: writable directories owned by the image's user.
    for mount in manager.volume_mounts.iter().flatten().filter(|m| m.read_only != Some(true)) {
        let dir = image.rootfs.join(mount.mount_path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir)?;
        let (uid, gid) = image.user.split_once(':').context("uid:gid")?;
        std::os::unix::fs::chown(&dir, Some(uid.parse()?), Some(gid.parse()?))?;
    }
    let op = run.start(manager)?;

    run.ready().await?;
    // The webhook's certificates, with the chart's least-privilege rules: the operator made its Secret and put its
    // authority into the chart's ValidatingWebhookConfiguration.
    let configurations =
        Api::<k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration>::all(client());
    eventually("the operator to fill in the webhook's caBundle", Duration::from_mins(1), || async {
        let config = configurations.get(&fullname).await?;
        let hooks = config.webhooks.unwrap_or_default();
        // Two that validate, two that record deletes (the audit trail is on).
        let filled = hooks.len() == 4
            && hooks.iter().all(|h| h.client_config.ca_bundle.as_ref().is_some_and(|b| !b.0.is_empty()));
        Ok(filled.then_some(()))
    })
    .await?;
    let secret =
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client(), &ns).get("tsdb-operator-webhook-tls").await?;
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    assert!(args.iter().any(|a| a == "--enable-webhook=true"), "{args:?}");
    // The Prometheus pods run as their own ServiceAccount (workload identity for backups).
    env.cp.service_account_token(&ns, "prometheus").await?;
    let yaml = "apiVersion: observability.merlionos.org/v1\nkind: PrometheusCluster\nmetadata:\n  name: web\nspec:\n  replicas: 1\n  storage:\n    size: 1Gi\n  serviceAccountName: prometheus\n";
    apply_cluster(&ns, yaml).await?;
    wait_phase(&ns, "web", Phase::Active, 1, Duration::from_mins(3)).await?;
    Api::<Service>::namespaced(client(), &ns).get("web").await?;
    let sts = Api::<StatefulSet>::namespaced(client(), &ns).get("web").await?;
    let pod_spec = sts.spec.and_then(|s| s.template.spec).context("pod template")?;
    assert_eq!(pod_spec.service_account_name.as_deref(), Some("prometheus"));
    let running = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client(), &ns).get("web-0").await?;
    assert_eq!(running.spec.and_then(|s| s.service_account_name).as_deref(), Some("prometheus"));
    let agent = pod_spec.containers.into_iter().find(|c| c.name == "agent");
    assert_eq!(agent.and_then(|c| c.image), Some(image_name.clone()), "the agent runs the chart's image");
    // The audit trail on the chart's SQLite volume has the operator's actions.
    let audit_db = image.rootfs.join("var/lib/tsdb-operator/audit.db");
    let trail = eventually("the operator's actions in the audit trail", Duration::from_mins(1), || async {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tsdb-ctl"))
            .args(["audit", "--dsn", &format!("sqlite:{}", audit_db.display()), "-n", &ns, "--cluster", "web"])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok(text.contains("created StatefulSet/web").then_some(text))
    })
    .await?;
    eprintln!("audit trail:\n{trail}");
    let config = Api::<ConfigMap>::namespaced(client(), &ns).get("web-config").await?;
    assert!(config.data.is_some_and(|d| d.values().any(|v| !v.trim().is_empty())), "web-config has the configuration");

    // Metrics: 200 for a ServiceAccount bound to the chart's reader role, 403 for one that is not, 401 without.
    let reader = env.cp.service_account_token(&ns, "scraper").await?;
    let stranger = env.cp.service_account_token(&ns, "stranger").await?;
    env.cp
        .apply_yaml(&format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: {fullname}-scraper\n\
             roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: {fullname}-metrics-reader\n\
             subjects:\n  - kind: ServiceAccount\n    name: scraper\n    namespace: {ns}\n"
        ))
        .await?;
    let https = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .danger_accept_invalid_certs(true) // the generated self-signed certificate
        .build()?;
    let url = format!("https://127.0.0.1:{metrics_port}/metrics");
    let status = |token: Option<String>| {
        let (https, url) = (https.clone(), url.clone());
        async move {
            let mut request = https.get(&url);
            if let Some(t) = token {
                request = request.bearer_auth(t);
            }
            anyhow::Ok(request.send().await?.status().as_u16())
        }
    };
    assert_eq!(status(Some(reader.clone())).await?, 200);
    assert_eq!(status(Some(stranger)).await?, 403);
    assert_eq!(status(None).await?, 401);

    // The REST API, with the chart's rules: a caller bound to the chart's editor role creates and deletes a
    // cluster through it (the operator's own role allows those writes), one without a binding may not.
    assert!(args.iter().any(|a| a == &format!("--api-namespace={ns}")), "the API's namespace is the watched one");
    Api::<Service>::namespaced(client(), &ns).get(&format!("{fullname}-api")).await?;
    let editor = env.cp.service_account_token(&ns, "api-editor").await?;
    env.cp
        .apply_yaml(&format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: api-editor\n  namespace: {ns}\n\
             roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: {fullname}-api-editor\n\
             subjects:\n  - kind: ServiceAccount\n    name: api-editor\n    namespace: {ns}\n"
        ))
        .await?;
    // The operator's own certificate, with the chart's rules: it made the Secret and published the authority in a
    // ConfigMap that any authenticated user reads (here the editor, who may not read Secrets); the API is called
    // trusting that authority only.
    let as_editor = env.cp.client_with_token(&editor)?;
    let bundle = support::api_authority(&as_editor, &ns, &format!("{fullname}-api-ca")).await?;
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(as_editor, &ns);
    assert!(secrets.get_opt(&format!("{fullname}-api-tls")).await.is_err(), "the editor may not read the key");
    let https = support::https_trusting(&bundle)?;
    let api = format!("https://127.0.0.1:{api_port}/api/clusters");
    let body = json!({"name": "from-api", "spec": {"replicas": 1, "storage": {"size": "1Gi"}}});
    let created = https.post(&api).bearer_auth(&editor).json(&body).send().await?;
    assert_eq!(created.status().as_u16(), 201, "{}", created.text().await?);
    let refused = https.post(&api).bearer_auth(&reader).json(&body).send().await?;
    assert_eq!(refused.status().as_u16(), 403, "the scraper has no API role");
    let deleted = https.delete(format!("{api}/from-api")).bearer_auth(&editor).send().await?;
    assert_eq!(deleted.status().as_u16(), 204, "{}", deleted.text().await?);

    // Replicas 2 and backups on change the StatefulSet.
    let clusters: Api<PrometheusCluster> = Api::namespaced(client(), &ns);
    let before = Api::<StatefulSet>::namespaced(client(), &ns).get("web").await?;
    let patch = json!({"spec": {"replicas": 2, "backup": {"enabled": true, "bucket": "b", "schedule": "@daily"}}});
    clusters.patch("web", &PatchParams::default(), &Patch::Merge(&patch)).await?;
    let after = eventually("the StatefulSet to change", Duration::from_mins(1), || async {
        let sts = Api::<StatefulSet>::namespaced(client(), &ns).get("web").await?;
        let changed = sts.spec.as_ref().and_then(|s| s.replicas) == Some(2)
            && sts.spec.as_ref().map(|s| &s.template) != before.spec.as_ref().map(|s| &s.template);
        Ok(changed.then_some(sts))
    })
    .await?;
    assert_eq!(after.spec.and_then(|s| s.replicas), Some(2));
    let sts_api = Api::<StatefulSet>::namespaced(client(), &ns);
    let settled = eventually("two replicas ready", Duration::from_mins(3), || async {
        let sts = sts_api.get("web").await?;
        let ready = sts.status.as_ref().and_then(|s| s.ready_replicas) == Some(2)
            && sts.status.as_ref().and_then(|s| s.updated_replicas) == Some(2);
        Ok(ready.then_some(sts))
    })
    .await?;
    let pod_uids = || async {
        let mut uids = Vec::new();
        for name in ["web-0", "web-1"] {
            let pod = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client(), &ns).get(name).await?;
            uids.push(pod.metadata.uid.unwrap_or_default());
        }
        anyhow::Ok(uids)
    };
    let uids_before = pod_uids().await?;

    // Upgrade: two operator replicas get a PodDisruptionBudget, the dashboard ConfigMap carries the Grafana sidecar
    // label; the operator restarted with the upgraded Deployment leaves the cluster's pods and StatefulSet alone.
    helm(&[
        "upgrade",
        &release,
        &chart(),
        &ns,
        &json!({"replicaCount": 2, "dashboard": {"enabled": true}, "watchNamespace": ns}).to_string(),
    ])?;
    drop(op);
    let upgraded = deployments.get(&fullname).await?;
    let containers = upgraded.spec.clone().and_then(|s| s.template.spec).map(|p| p.containers).unwrap_or_default();
    let manager = containers.iter().find(|c| c.name == "manager").context("container manager")?;
    let op = run.start(manager)?;
    run.ready().await?;
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(pod_uids().await?, uids_before, "the upgrade replaced no Prometheus pod");
    let sts = sts_api.get("web").await?;
    assert_eq!(sts.metadata.generation, settled.metadata.generation, "the StatefulSet was not changed");

    // `kubectl delete --wait`: the finalizer is removed and the object gone within a minute.
    clusters.delete("web", &DeleteParams::default()).await?;
    eventually("the cluster deleted", Duration::from_mins(1), || async {
        Ok(clusters.get_opt("web").await?.is_none().then_some(()))
    })
    .await?;

    let deployment = deployments.get(&fullname).await?;
    assert_eq!(deployment.spec.and_then(|s| s.replicas), Some(2));
    // (The deleted cluster's own budget may still wait for the garbage collector.)
    assert!(pdb_names(&ns).await?.contains(&fullname), "a PodDisruptionBudget for two replicas");
    let dashboard = Api::<ConfigMap>::namespaced(client(), &ns).get(&format!("{fullname}-dashboard")).await?;
    let labels: BTreeMap<String, String> = dashboard.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("grafana_dashboard").map(String::as_str), Some("1"));
    let json_text = dashboard.data.and_then(|d| d.get("tsdb-operator.json").cloned()).context("dashboard json")?;
    let parsed: serde_json::Value = serde_json::from_str(&json_text)?;
    let shipped: serde_json::Value =
        serde_json::from_str(include_str!("../../deploy/monitoring/grafana-dashboard.json"))?;
    assert_eq!(parsed, shipped);

    // Uninstall removes the operator's objects and keeps the CRDs (Helm never deletes crds/), so clusters and
    // their data stay.
    drop(op);
    helm(&["uninstall", &release, &ns])?;
    assert!(deployments.get_opt(&fullname).await?.is_none());
    assert!(Api::<ClusterRole>::all(client()).get_opt(&fullname).await?.is_none());
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client());
    assert!(crds.get_opt("prometheusclusters.observability.merlionos.org").await?.is_some());
    let _ = Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(client())
        .delete(&format!("{fullname}-scraper"), &DeleteParams::default())
        .await;
    Ok(())
}

/// The operator run from the unpacked image as the installed Deployment says: its arguments (ports moved to free
/// loopback ones) and environment, in the image's root filesystem as the image's user.
struct OperatorRun<'a> {
    image: &'a Image,
    fullname: &'a str,
    ns: &'a str,
    kubeconfig: &'a str,
    metrics_port: u16,
    health_port: u16,
    webhook_port: u16,
    api_port: u16,
}

impl OperatorRun<'_> {
    fn start(
        &self,
        manager: &k8s_openapi::api::core::v1::Container,
    ) -> Result<tsdb_operator_testenv::process::Supervised> {
        let args: Vec<String> = manager
            .args
            .iter()
            .flatten()
            .map(|a| {
                if a.starts_with("--metrics-bind-address=") {
                    format!("--metrics-bind-address=127.0.0.1:{}", self.metrics_port)
                } else if a.starts_with("--health-probe-bind-address=") {
                    format!("--health-probe-bind-address=127.0.0.1:{}", self.health_port)
                } else if a.starts_with("--webhook-bind-address=") {
                    format!("--webhook-bind-address=127.0.0.1:{}", self.webhook_port)
                } else if a.starts_with("--api-address=") {
                    format!("--api-address=127.0.0.1:{}", self.api_port)
                } else {
                    a.clone()
                }
            })
            .collect();
        let mut builder = ProcessBuilder::new("operator-from-image", "chroot");
        for var in manager.env.iter().flatten() {
            let field = var.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.as_str());
            let value = match field {
                Some("metadata.name") => format!("{}-test", self.fullname),
                Some("metadata.namespace") => self.ns.to_owned(),
                Some(other) => bail!("the test does not know the field {other} of env {}", var.name),
                None => var.value.clone().unwrap_or_default(),
            };
            builder = builder.env(&var.name, value);
        }
        builder
            .arg(format!("--userspec={}", self.image.user))
            .arg(&self.image.rootfs)
            .args(&self.image.entrypoint)
            .args(&args)
            .arg("--kubeconfig")
            .arg(self.kubeconfig)
            .spawn(&env().workdir)
    }

    async fn ready(&self) -> Result<()> {
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build()?;
        eventually("the operator ready", Duration::from_mins(1), || async {
            let r = http.get(format!("http://127.0.0.1:{}/readyz", self.health_port)).send().await;
            Ok(r.ok().filter(|r| r.status() == 200).map(|_| ()))
        })
        .await
    }
}

/// Names of the PodDisruptionBudgets in `ns` (policy/v1beta1, the version the 1.20 test API server serves).
async fn pdb_names(ns: &str) -> Result<Vec<String>> {
    let resource = kube::core::ApiResource::from_gvk_with_plural(
        &kube::core::GroupVersionKind::gvk("policy", "v1beta1", "PodDisruptionBudget"),
        "poddisruptionbudgets",
    );
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client(), ns, &resource);
    Ok(api.list(&kube::api::ListParams::default()).await?.items.into_iter().filter_map(|o| o.metadata.name).collect())
}

const PLAIN_MANIFEST: &str = "deploy/tsdb-operator.yaml";
const PLAIN_HEADER: &str = "# tsdb-operator for users without Helm: the chart rendered with its default values as release \
tsdb-operator in\n# namespace tsdb-system. Generated: bin/tests/chart.rs checks it (TSDB_WRITE_MANIFESTS=1 rewrites \
it).\n#   kubectl apply --server-side -f deploy/crds/crds.yaml\n#   kubectl apply -f deploy/tsdb-operator.yaml\n\
apiVersion: v1\nkind: Namespace\nmetadata:\n  name: tsdb-system\n";

/// deploy/tsdb-operator.yaml is what the chart renders with its defaults, so both install the same operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_manifest_is_the_chart_rendered_with_its_defaults() -> Result<()> {
    env();
    let ns = "tsdb-system";
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client());
    if namespaces.get_opt(ns).await?.is_none() {
        let namespace: k8s_openapi::api::core::v1::Namespace =
            serde_json::from_value(json!({"metadata": {"name": ns}}))?;
        namespaces.create(&kube::api::PostParams::default(), &namespace).await?;
    }
    let installed = helm(&["install", "tsdb-operator", &chart(), ns, "{}"]);
    let _ = helm(&["uninstall", "tsdb-operator", ns]);
    let manifest = installed?["manifest"].as_str().context("manifest")?.to_owned();
    let rendered = format!("{PLAIN_HEADER}{manifest}");
    let path = repo().join(PLAIN_MANIFEST);
    if std::env::var_os("TSDB_WRITE_MANIFESTS").is_some() {
        std::fs::write(&path, &rendered)?;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    // Its ClusterRole grants what deploy/rbac.yaml does, rule for rule.
    let mut rendered_rules = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&manifest) {
        let v = serde_json::Value::deserialize(doc)?;
        if v["kind"] == "ClusterRole" && v["metadata"]["name"] == "tsdb-operator" {
            rendered_rules = v["rules"].as_array().cloned().unwrap_or_default();
        }
    }
    let mut plain = plain_manifest_rules()?.as_array().cloned().unwrap_or_default();
    let key = |r: &serde_json::Value| r.to_string();
    rendered_rules.sort_by_key(key);
    plain.sort_by_key(key);
    assert_eq!(rendered_rules, plain, "the chart's ClusterRole and deploy/rbac.yaml agree");
    assert!(
        committed == rendered,
        "{PLAIN_MANIFEST} is out of date: run TSDB_WRITE_MANIFESTS=1 cargo test -p tsdb-operator --test chart \
         the_plain_manifest and commit it"
    );
    Ok(())
}
