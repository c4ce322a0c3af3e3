//! The Helm chart `charts/tsdb-operator`, with Helm's own Go library (scripts/helm.py over helm-sdkpy) against the
//! test control plane: lint, refusals, install, the operator's pod running from the image, upgrade and uninstall.
//!
//! The image is built from this build's binaries with scripts/build-image.sh (buildah) and unpacked with umoci; the
//! process kubelet runs the containers of that image (the operator's pod and the Prometheus pods' agents) inside
//! its root filesystem, from its entrypoint, as its user or the securityContext's, with the pod's volumes, network
//! namespace and ServiceAccount token, as a container runtime would.

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
use tsdb_operator_testenv::kubelet::ImageProgram;

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

/// The image, unpacked: its root filesystem, entrypoint, working directory and `(uid, gid)`.
struct Image {
    rootfs: PathBuf,
    entrypoint: Vec<String>,
    workdir: String,
    user: (u32, u32),
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
    let id = |key: &str| u32::try_from(process["user"][key].as_u64().unwrap_or_default());
    Ok(Image {
        rootfs: bundle.join("rootfs"),
        entrypoint: entrypoint.collect(),
        workdir: process["cwd"].as_str().unwrap_or("/").to_owned(),
        user: (id("uid")?, id("gid")?),
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

/// Issue 15's installation check: the chart installed, the operator's pod running from the image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one scenario, in order
async fn install_run_upgrade_and_uninstall_the_chart() -> Result<()> {
    let env = env();
    let ns = namespace("chart").await;
    let release = format!("r{}", &ns[ns.len() - 8..]);

    // The image, built and unpacked; from now on the kubelet runs the chart's image from it.
    let image = build_image()?;
    assert_eq!(image.entrypoint, ["/usr/local/bin/tsdb-operator"]);
    assert_ne!(image.user.0, 0, "the image runs as a non-root user");
    for label in ["title", "version", "revision", "source", "licenses", "created"] {
        let key = format!("org.opencontainers.image.{label}");
        assert!(image.labels.get(&key).is_some_and(|v| !v.is_empty()), "{key} in {:?}", image.labels);
    }
    for absent in ["bin/sh", "usr/bin/apt-get", "bin/busybox"] {
        assert!(!image.rootfs.join(absent).exists(), "no {absent} in the image");
    }
    let entrypoint: Vec<&str> = image.entrypoint.iter().map(String::as_str).collect();
    let unpacked = ImageProgram::unpacked(&image.rootfs, image.user).entrypoint(&entrypoint).workdir(&image.workdir);
    env.kubelet.map_image("ghcr.io/merlionos/tsdb-operator-rs:", unpacked);

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
    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    let selector = selector.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
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
    let sa = pod.service_account_name.clone().context("serviceAccountName")?;
    Api::<ServiceAccount>::namespaced(client(), &ns).get(&sa).await?;
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

    // The Deployment's pod: Running and Ready (the kubelet's probes) from the image's filesystem, as the image's
    // user, with the chart's ServiceAccount token (in-cluster configuration, no kubeconfig).
    let operator_pod = ready_pods(&ns, &selector, 1, Duration::from_mins(2)).await?.remove(0);
    let pid = env.kubelet.faults().pid(&ns, &operator_pod, "manager").context("the manager's process")?;
    let root = std::fs::read_link(format!("/proc/{pid}/root"))?;
    assert_eq!(root, image.rootfs.canonicalize()?, "the operator runs in the image's root filesystem");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
    assert_eq!(exe, image.rootfs.canonicalize()?.join("usr/local/bin/tsdb-operator"), "from the image's binary");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let uid = status.lines().find(|l| l.starts_with("Uid:")).context("Uid")?;
    assert_eq!(uid.split_whitespace().nth(1), Some(image.user.0.to_string().as_str()), "as the image's user");
    let pod_ip = env.kubelet.faults().pod_ip(&ns, &operator_pod).context("the operator pod's IP")?;

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
    // A second cluster that lives through the uninstall.
    apply_cluster(&ns, &yaml.replace("name: web", "name: kept")).await?;
    wait_phase(&ns, "web", Phase::Active, 1, Duration::from_mins(3)).await?;
    Api::<Service>::namespaced(client(), &ns).get("web").await?;
    let sts = Api::<StatefulSet>::namespaced(client(), &ns).get("web").await?;
    let pod_spec = sts.spec.and_then(|s| s.template.spec).context("pod template")?;
    assert_eq!(pod_spec.service_account_name.as_deref(), Some("prometheus"));
    let running = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client(), &ns).get("web-0").await?;
    assert_eq!(running.spec.and_then(|s| s.service_account_name).as_deref(), Some("prometheus"));
    let agent = pod_spec.containers.into_iter().find(|c| c.name == "agent");
    assert_eq!(agent.and_then(|c| c.image), Some(image_name.clone()), "the agent runs the chart's image");
    // ... and the kubelet ran it from the image too.
    let agent_pid = env.kubelet.faults().pid(&ns, "web-0", "agent").context("the agent's process")?;
    assert_eq!(std::fs::read_link(format!("/proc/{agent_pid}/root"))?, image.rootfs.canonicalize()?);
    let config = Api::<ConfigMap>::namespaced(client(), &ns).get("web-config").await?;
    assert!(config.data.is_some_and(|d| d.values().any(|v| !v.trim().is_empty())), "web-config has the configuration");

    // Metrics on the pod's port: 200 for a ServiceAccount bound to the chart's reader role, 403 for one that is not,
    // 401 without.
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
    let url = format!("https://{pod_ip}:8443/metrics");
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

    // The audit trail on the chart's SQLite volume (an emptyDir: read where the kubelet keeps it) has its actions.
    let audit_db = env.kubelet.faults().volume_path(&ns, &operator_pod, "audit")?.join("audit.db");
    anyhow::ensure!(audit_db.is_file(), "the operator made {}", audit_db.display());
    let trail = eventually("the operator's actions in the audit trail", Duration::from_mins(1), || async {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tsdb-ctl"))
            .args(["audit", "--dsn", &format!("sqlite:{}", audit_db.display()), "-n", &ns, "--cluster", "web"])
            .output()?;
        anyhow::ensure!(out.status.success(), "tsdb-ctl audit: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok(text.contains("created StatefulSet/web").then_some(text))
    })
    .await?;
    eprintln!("audit trail:\n{trail}");

    // The REST API, with the chart's rules: a caller bound to the chart's editor role creates and deletes a
    // cluster through it (the operator's own role allows those writes), one without a binding may not.
    assert!(args.iter().any(|a| a == &format!("--api-namespace={ns}")), "the API's namespace is the watched one");
    let api_service = format!("{fullname}-api");
    Api::<Service>::namespaced(client(), &ns).get(&api_service).await?;
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
    // by its Service's name (resolved to the pod) trusting that authority only.
    let as_editor = env.cp.client_with_token(&editor)?;
    let bundle = support::api_authority(&as_editor, &ns, &format!("{fullname}-api-ca")).await?;
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(as_editor, &ns);
    assert!(secrets.get_opt(&format!("{fullname}-api-tls")).await.is_err(), "the editor may not read the key");
    let host = format!("{api_service}.{ns}.svc");
    let https = support::https_trusting_at(&bundle, Some((&host, std::net::SocketAddr::new(pod_ip, 8080))))?;
    let api = format!("https://{host}:8080/api/clusters");
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

    // Upgrade: a changed pod template (JSON logs) rolls the operator's pods; two replicas get a
    // PodDisruptionBudget, the dashboard ConfigMap carries the Grafana sidecar label; the cluster's pods and
    // StatefulSet are left alone.
    helm(&[
        "upgrade",
        &release,
        &chart(),
        &ns,
        &json!({"replicaCount": 2, "dashboard": {"enabled": true}, "watchNamespace": ns, "logFormat": "json"})
            .to_string(),
    ])?;
    let rolled = eventually("the operator's pods rolled", Duration::from_mins(3), || async {
        let pods = ready_pods(&ns, &selector, 2, Duration::from_secs(1)).await.ok();
        Ok(pods.filter(|pods| !pods.contains(&operator_pod)))
    })
    .await?;
    let new_pid = env.kubelet.faults().pid(&ns, &rolled[0], "manager").context("the new manager's process")?;
    let logs = env.kubelet.faults().logs(&ns, &rolled[0], "manager")?;
    let first = logs.lines().next().context("the new operator logs")?;
    assert!(serde_json::from_str::<serde_json::Value>(first).is_ok(), "JSON logs after the upgrade: {first}");
    assert_eq!(std::fs::read_link(format!("/proc/{new_pid}/root"))?, image.rootfs.canonicalize()?);
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
    helm(&["uninstall", &release, &ns])?;
    assert!(deployments.get_opt(&fullname).await?.is_none());
    assert!(Api::<ClusterRole>::all(client()).get_opt(&fullname).await?.is_none());
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client());
    assert!(crds.get_opt("prometheusclusters.observability.merlionos.org").await?.is_some());
    // ... and the clusters with their StatefulSets, volumes and running pods stay, as docs/install.md says.
    wait_phase(&ns, "kept", Phase::Active, 1, Duration::from_mins(1)).await?;
    let kept_pod = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client(), &ns).get("kept-0").await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(clusters.get_opt("kept").await?.is_some(), "the PrometheusCluster stays");
    assert!(sts_api.get_opt("kept").await?.is_some(), "its StatefulSet stays");
    let claims = Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(client(), &ns);
    assert!(claims.get_opt("data-kept-0").await?.is_some(), "its volume stays");
    let still = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client(), &ns).get("kept-0").await?;
    assert_eq!(still.metadata.uid, kept_pod.metadata.uid, "its pod keeps running");
    // Without the operator nobody removes the finalizer; the test does, so its namespace can go.
    clusters.patch("kept", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await?;
    let _ = Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(client())
        .delete(&format!("{fullname}-scraper"), &DeleteParams::default())
        .await;
    Ok(())
}

/// Waits until exactly `count` pods match `selector` in `ns` and all are Ready; their names.
async fn ready_pods(ns: &str, selector: &str, count: usize, within: Duration) -> Result<Vec<String>> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client(), ns);
    eventually(&format!("{count} ready pods of {selector}"), within, || async {
        let listed = pods.list(&kube::api::ListParams::default().labels(selector)).await?;
        let all_ready = listed.items.len() == count && listed.items.iter().all(pod_ready);
        Ok(all_ready.then(|| listed.items.iter().filter_map(|p| p.metadata.name.clone()).collect()))
    })
    .await
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
