//! The operator at rest: run with only the RBAC of deploy/rbac.yaml, it brings clusters up, and once they are
//! Active it makes zero write requests for two minutes (counted in the API server's audit log by user).

mod support;

use std::time::Duration;

use anyhow::{Context as _, Result};
use serde::Deserialize as _;
use support::*;
use tsdb_operator_core::crd::Phase;
use tsdb_operator_testenv::controlplane::OPERATOR_SA_USER;
use tsdb_operator_testenv::process::{ProcessBuilder, free_port};

/// The operator as the ServiceAccount of deploy/rbac.yaml (applied by the caller), watching `ns`.
fn start_least_privilege(name: &str, ns: &str, extra: &[&str]) -> Result<tsdb_operator_testenv::process::Supervised> {
    start_as(OPERATOR_SA_USER, name, ns, extra)
}

/// The operator as `user`, watching `ns`.
fn start_as(user: &str, name: &str, ns: &str, extra: &[&str]) -> Result<tsdb_operator_testenv::process::Supervised> {
    let env = env();
    let kubeconfig = env.cp.kubeconfig_path_for(user).context("operator user")?;
    let port = free_port(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))?;
    ProcessBuilder::new(name, operator_binary())
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg(format!("--metrics-bind-address=127.0.0.1:{port}"))
        .arg("--health-probe-bind-address=0")
        .arg(format!("--watch-namespace={ns}"))
        .args(extra)
        .spawn(&env.workdir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clusters_cost_zero_writes_with_least_privilege_rbac() -> Result<()> {
    let env = env();
    env.cp.apply_yaml(include_str!("../../deploy/rbac.yaml")).await?;
    let ns = namespace("idle").await;
    let _op = start_least_privilege("operator-rbac", &ns, &[])?;

    for name in ["idle-a", "idle-b"] {
        let yaml = format!(
            "apiVersion: observability.merlionos.org/v1\nkind: PrometheusCluster\nmetadata:\n  name: {name}\nspec:\n  replicas: 2\n  storage:\n    size: 1Gi\n"
        );
        apply_cluster(&ns, &yaml).await?;
    }
    for name in ["idle-a", "idle-b"] {
        wait_phase(&ns, name, Phase::Active, 2, Duration::from_mins(3)).await?;
    }
    // Writes in this test's namespace (other tests of this binary run operators as the same ServiceAccount).
    let writes = || -> Result<Vec<tsdb_operator_testenv::audit::AuditEntry>> {
        Ok(env
            .cp
            .audit_writes_by(OPERATOR_SA_USER)?
            .into_iter()
            .filter(|w| w.object_ref.as_ref().is_some_and(|o| o.namespace == ns))
            .collect())
    };
    let during_create = writes()?.len();
    assert!(during_create > 0, "the operator wrote the children under its least-privilege identity");

    // Let in-flight follow-ups (the status write after the last pod became ready) settle.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let before = writes()?.len();
    tokio::time::sleep(Duration::from_mins(2)).await;
    let after = writes()?;
    let idle_writes: Vec<String> = after[before..].iter().map(ToString::to_string).collect();
    eprintln!("operator writes: {during_create} while creating 2 clusters, {} while idle for 120 s", idle_writes.len());
    assert!(idle_writes.is_empty(), "writes while idle: {idle_writes:#?}");
    Ok(())
}

/// The backup and self-healing paths under exactly the RBAC of deploy/rbac.yaml (fault table, row 22, and the
/// RBAC floor): the operator creates the agent token Secret, starts and follows a backup, and replaces a frozen
/// replica through the eviction API, and in all of it the API server refuses it nothing (no "forbidden" in its
/// log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_and_self_healing_work_with_least_privilege_rbac() -> Result<()> {
    use support::backup::*;
    let env = env();
    env.cp.apply_yaml(include_str!("../../deploy/rbac.yaml")).await?;
    let s3 = tsdb_operator_testenv::s3::S3Server::start()?;
    let fwd = Forwarder::to_s3(&s3).await?;
    let ns = namespace("rbac-paths").await;
    create_credentials(&ns, &s3).await?;
    // Unrelated Secrets and ConfigMaps beside the cluster (fault table row 23): the operator must not read them.
    for i in 0..20 {
        let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(
            serde_json::json!({"metadata": {"name": format!("unrelated-{i}")}, "stringData": {"blob": "x".repeat(100 * 1024)}}),
        )?;
        kube::Api::namespaced(client(), &ns).create(&kube::api::PostParams::default(), &secret).await?;
        let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(
            serde_json::json!({"metadata": {"name": format!("unrelated-{i}")}, "data": {"key": "value"}}),
        )?;
        kube::Api::namespaced(client(), &ns).create(&kube::api::PostParams::default(), &cm).await?;
    }
    let op = start_least_privilege("operator-rbac-paths", &ns, &["--backup-tick-seconds=1"])?;

    let mut yaml: serde_json::Value = serde_yaml::from_str(&cluster_yaml(
        "guarded",
        &fwd.endpoint(),
        s3.bucket(),
        Some(serde_json::json!({})),
        None,
    ))?;
    yaml["spec"]["replicas"] = 2.into();
    yaml["spec"]["selfHealing"] =
        serde_json::json!({"probeInterval": "2s", "failureThreshold": 3, "startupBudget": "60s", "cooldown": "30s"});
    apply_cluster(&ns, &serde_yaml::to_string(&yaml)?).await?;
    wait_phase(&ns, "guarded", Phase::Active, 2, Duration::from_mins(3)).await?;

    let id = successful_backup(&ns, "guarded", "rbac").await?;
    eprintln!("backup {id} taken under the least-privilege RBAC");

    let pods_api: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client(), &ns);
    let uid = pods_api.get("guarded-1").await?.metadata.uid.context("uid")?;
    env.kubelet.faults().freeze(&ns, "guarded-1", "prometheus")?;
    eventually("the frozen replica to be replaced", Duration::from_mins(2), || async {
        Ok(pods_api.get_opt("guarded-1").await?.and_then(|p| p.metadata.uid).filter(|u| *u != uid))
    })
    .await?;
    wait_phase(&ns, "guarded", Phase::Active, 2, Duration::from_mins(3)).await?;
    let reasons: Vec<String> = support::backup::events(&ns, "guarded", "FailoverTriggered")
        .await?
        .into_iter()
        .filter_map(|e| e.message)
        .collect();
    assert!(reasons.iter().any(|m| m.contains("evict")), "replaced through the eviction API: {reasons:?}");

    let log = std::fs::read_to_string(op.log_path())?;
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("forbidden") || l.contains("Forbidden")).collect();
    assert!(refused.is_empty(), "the API server refused the operator something:\n{}", refused.join("\n"));

    // Fault row 23, in the API server's audit log: the operator (every instance this binary ran as the
    // ServiceAccount) never listed or watched Secrets, nor ConfigMaps without its label selector, and in this
    // namespace it read by name only the S3 credentials and the agent token.
    let requests = env.cp.audit_requests_by(OPERATOR_SA_USER)?;
    let unscoped: Vec<String> = tsdb_operator_testenv::audit::unscoped_reads(&requests)
        .iter()
        .map(|e| format!("{e} {}", e.request_uri))
        .collect();
    assert!(unscoped.is_empty(), "reads that bring unrelated objects into the operator: {unscoped:#?}");
    // Not vacuous: the log holds the operator's ConfigMap list (its watch is still open, so not yet logged).
    let configmap_lists = requests
        .iter()
        .filter(|e| e.verb == "list" && e.object_ref.as_ref().is_some_and(|o| o.resource == "configmaps"))
        .count();
    assert!(configmap_lists > 0, "the audit log shows the operator's ConfigMap list");
    let secrets_read: std::collections::BTreeSet<&str> = requests
        .iter()
        .filter(|e| e.verb == "get")
        .filter_map(|e| e.object_ref.as_ref())
        .filter(|o| o.resource == "secrets" && o.namespace == ns)
        .map(|o| o.name.as_str())
        .collect();
    assert_eq!(
        secrets_read,
        ["guarded-agent-token", "s3-creds"].into_iter().collect(),
        "Secrets the operator read by name"
    );
    Ok(())
}

/// Fault row 22, a missing RBAC verb: with deploy/rbac.yaml less `get` on StorageClasses (which only a growing
/// volume needs), the cluster whose storage grows says in its status that the operator was refused, naming the
/// resource, and stops claiming to match its spec; another cluster keeps reconciling (a scale goes through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_permission_is_named_in_the_status_and_other_clusters_keep_reconciling() -> Result<()> {
    use k8s_openapi::api::storage::v1::StorageClass;
    use kube::Api;
    use kube::api::{Patch, PatchParams, PostParams};
    use tsdb_operator_testenv::controlplane::ALICE_USER;
    let env = env();
    let ns = namespace("rbac-missing").await;
    // deploy/rbac.yaml's ClusterRole without the storageclasses rule, bound to another user.
    let mut role: serde_json::Value = serde_yaml::Deserializer::from_str(include_str!("../../deploy/rbac.yaml"))
        .map(serde_json::Value::deserialize)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .find(|d| d["kind"] == "ClusterRole")
        .context("the ClusterRole")?;
    let rules = role["rules"].as_array_mut().context("rules")?;
    let before = rules.len();
    rules.retain(|r| r["resources"] != serde_json::json!(["storageclasses"]));
    assert_eq!(rules.len(), before - 1, "one rule removed");
    role["metadata"]["name"] = "tsdb-operator-without-storageclasses".into();
    let binding = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "tsdb-operator-without-storageclasses"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
            "name": "tsdb-operator-without-storageclasses"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": ALICE_USER}],
    });
    env.cp.apply_yaml(&format!("{}---\n{}", serde_yaml::to_string(&role)?, serde_yaml::to_string(&binding)?)).await?;
    let class = format!("{ns}-expandable");
    let sc: StorageClass = serde_json::from_value(serde_json::json!({
        "metadata": {"name": class},
        "provisioner": tsdb_operator_testenv::kubelet::PROVISIONER,
        "allowVolumeExpansion": true,
    }))?;
    let classes: Api<StorageClass> = Api::all(client());
    classes.create(&PostParams::default(), &sc).await?;
    let _op = start_as(ALICE_USER, "operator-missing-verb", &ns, &[])?;

    let result = async {
        for (name, extra) in [("grows", format!("\n    storageClassName: {class}")), ("scales", String::new())] {
            let yaml = format!(
                "apiVersion: observability.merlionos.org/v1\nkind: PrometheusCluster\nmetadata:\n  name: {name}\n\
                 spec:\n  replicas: 1\n  storage:\n    size: 1Gi{extra}\n"
            );
            apply_cluster(&ns, &yaml).await?;
        }
        for name in ["grows", "scales"] {
            wait_phase(&ns, name, Phase::Active, 1, Duration::from_mins(3)).await?;
        }
        let api: Api<tsdb_operator_core::crd::PrometheusCluster> = Api::namespaced(client(), &ns);
        let merge = |spec: serde_json::Value| Patch::Merge(serde_json::json!({ "spec": spec }));
        api.patch("grows", &PatchParams::default(), &merge(serde_json::json!({"storage": {"size": "2Gi"}}))).await?;
        api.patch("scales", &PatchParams::default(), &merge(serde_json::json!({"replicas": 2}))).await?;
        let message =
            eventually("the refusal in the status of the growing cluster", Duration::from_mins(1), || async {
                let pc = api.get("grows").await?;
                let status = pc.status.unwrap_or_default();
                let progressing = status.conditions.iter().find(|c| c.type_ == "Progressing").cloned();
                Ok(progressing
                    .filter(|c| c.status == "False" && c.reason == "ReconcileFailed")
                    .filter(|c| c.message.contains("storageclasses") && c.message.contains("forbidden"))
                    .map(|c| (c.message, status.phase)))
            })
            .await?;
        eprintln!("missing permission reported as: {message:?}");
        assert_ne!(message.1, Some(Phase::Active), "not Active while it cannot be reconciled");
        wait_phase(&ns, "scales", Phase::Active, 2, Duration::from_mins(3)).await?;
        anyhow::Ok(())
    }
    .await;
    let _ = classes.delete(&class, &kube::api::DeleteParams::default()).await;
    result
}

/// A CA of the test and a certificate it issues for `metrics.test`: (CA PEM, certificate PEM, key PEM).
fn issue_metrics_certificate(ca_name: &str) -> Result<(String, String, String)> {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, ca_name);
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate()?)?;
    let key = rcgen::KeyPair::generate()?;
    let leaf = rcgen::CertificateParams::new(vec!["metrics.test".to_owned()])?.signed_by(&key, &ca)?;
    Ok((ca.pem(), leaf.pem(), key.serialize_pem()))
}

/// Issue 15, secure metrics, with the operator under deploy/rbac.yaml: /metrics is HTTPS with the mounted
/// certificate (re-read when it is rotated); a ServiceAccount token bound to tsdb-operator-metrics-reader reads it,
/// no token or a made-up one gets 401, another ServiceAccount's token 403, plain HTTP nothing; a removed binding
/// takes effect within the one-minute cache; the health endpoint stays plain HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_over_https_only_to_tokens_allowed_to_read_them() -> Result<()> {
    let env = env();
    env.cp.apply_yaml(include_str!("../../deploy/rbac.yaml")).await?;
    let ns = namespace("metrics-tls").await;
    let reader = env.cp.service_account_token(&ns, "scraper").await?;
    let stranger = env.cp.service_account_token(&ns, "stranger").await?;
    let binding = format!("metrics-reader-{ns}");
    env.cp
        .apply_yaml(&format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: {binding}\n\
             roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: tsdb-operator-metrics-reader\n\
             subjects:\n  - kind: ServiceAccount\n    name: scraper\n    namespace: {ns}\n"
        ))
        .await?;
    let certs = env.workdir.subdir(&format!("metrics-certs-{ns}"))?;
    let (ca_one, cert_one, key_one) = issue_metrics_certificate("test CA one")?;
    std::fs::write(certs.join("tls.crt"), &cert_one)?;
    std::fs::write(certs.join("tls.key"), &key_one)?;

    let loopback = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    let (port, health) = (free_port(loopback)?, free_port(loopback)?);
    let kubeconfig = env.cp.kubeconfig_path_for(OPERATOR_SA_USER).context("operator user")?;
    let _op = ProcessBuilder::new("operator-metrics-tls", operator_binary())
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg(format!("--metrics-bind-address=127.0.0.1:{port}"))
        .arg(format!("--health-probe-bind-address=127.0.0.1:{health}"))
        .arg(format!("--metrics-cert-path={}", certs.display()))
        .arg(format!("--watch-namespace={ns}"))
        .spawn(&env.workdir)?;

    let trusting = |ca: &str| -> Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes())?)
            .resolve("metrics.test", std::net::SocketAddr::new(loopback, port))
            .build()?)
    };
    let url = format!("https://metrics.test:{port}/metrics");
    let get = |client: reqwest::Client, token: Option<String>| {
        let url = url.clone();
        async move {
            let mut request = client.get(&url);
            if let Some(t) = token {
                request = request.bearer_auth(t);
            }
            let response = request.send().await?;
            anyhow::Ok((response.status().as_u16(), response.text().await?))
        }
    };
    let plain = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build()?;
    eventually("the health endpoint over plain HTTP", Duration::from_secs(30), || async {
        let r = plain.get(format!("http://127.0.0.1:{health}/healthz")).send().await?;
        Ok((r.status() == reqwest::StatusCode::OK).then_some(()))
    })
    .await?;
    let one = trusting(&ca_one)?;
    let (status, body) = eventually("metrics over HTTPS", Duration::from_secs(30), || async {
        Ok(Some(get(one.clone(), Some(reader.clone())).await?))
    })
    .await?;
    assert_eq!(status, 200, "the reader's token reads the metrics: {body}");
    assert!(body.contains("tsdb_operator_"), "{body}");
    let (status, body) = get(one.clone(), None).await?;
    assert_eq!(status, 401, "no token: {body}");
    assert_eq!(get(one.clone(), Some("made-up-token".to_owned())).await?.0, 401, "a made-up token");
    let (status, body) = get(one.clone(), Some(stranger.clone())).await?;
    assert_eq!(status, 403, "a valid token without the permission: {body}");
    let over_http = plain.get(format!("http://127.0.0.1:{port}/metrics")).bearer_auth(&reader).send().await;
    assert!(over_http.is_err() || over_http.is_ok_and(|r| r.status() != 200), "no metrics over plain HTTP");

    // Rotation: a certificate from another CA replaces the files; the server presents it without a restart.
    let (ca_two, cert_two, key_two) = issue_metrics_certificate("test CA two")?;
    let two = trusting(&ca_two)?;
    assert!(get(two.clone(), Some(reader.clone())).await.is_err(), "the second CA does not vouch for the first cert");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(certs.join("tls.key.new"), &key_two)?;
    std::fs::write(certs.join("tls.crt.new"), &cert_two)?;
    std::fs::rename(certs.join("tls.key.new"), certs.join("tls.key"))?;
    std::fs::rename(certs.join("tls.crt.new"), certs.join("tls.crt"))?;
    let status = eventually("the rotated certificate", Duration::from_secs(30), || async {
        Ok(get(two.clone(), Some(reader.clone())).await.ok().map(|(s, _)| s))
    })
    .await?;
    assert_eq!(status, 200);

    // Revoking the binding takes effect once the cached decision expires (a minute).
    let bindings: kube::Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = kube::Api::all(client());
    bindings.delete(&binding, &kube::api::DeleteParams::default()).await?;
    let revoked_at = std::time::Instant::now();
    eventually("403 after the binding is gone", Duration::from_secs(90), || async {
        Ok((get(two.clone(), Some(reader.clone())).await?.0 == 403).then_some(()))
    })
    .await?;
    eprintln!("BENCH secure metrics: a removed binding refused after {:.0}s", revoked_at.elapsed().as_secs_f64());
    Ok(())
}
