//! The admission webhook on the real API server: the operator serves it with its own certificate authority, keeps
//! the configuration's `caBundle` current, and the API server calls it for every create and update, as
//! `kubectl apply` would trigger it. Each test has its own namespace, operator and ValidatingWebhookConfiguration
//! (limited to that namespace). No kubelet: pods stay Pending, which these tests do not need.

mod support;

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::admissionregistration::v1::{ValidatingWebhookConfiguration, WebhookClientConfig};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use support::Operator;
use tsdb_operator_core::crd::PrometheusCluster;
use tsdb_operator_testenv::controlplane::ControlPlane;
use tsdb_operator_testenv::process::{Workdir, free_port};

const LOCALHOST: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// One test's webhook: its namespace, the operator serving it, and the configuration that points at it.
struct Webhook {
    cp: &'static ControlPlane,
    ns: String,
    port: u16,
    configuration: String,
    operator: Option<Operator>,
    workdir: Workdir,
    extra: Vec<String>,
}

impl Webhook {
    /// A namespace labelled for this test's configuration, the operator with `--enable-webhook`, and the
    /// configuration (failurePolicy Fail, an empty caBundle the operator fills in).
    async fn start(prefix: &str) -> Result<Self> {
        Self::start_with(prefix, |_| Vec::new()).await
    }

    /// [`Webhook::start`] with more operator arguments, made from the test's namespace and workdir.
    async fn start_with(prefix: &str, extra: impl FnOnce(&Workdir) -> Vec<String>) -> Result<Self> {
        Self::start_behind(prefix, extra, Ok).await
    }

    /// [`Webhook::start_with`], the API server calling the port `front` gives for the operator's port (a proxy).
    async fn start_behind(
        prefix: &str,
        extra: impl FnOnce(&Workdir) -> Vec<String>,
        front: impl FnOnce(u16) -> Result<u16>,
    ) -> Result<Self> {
        let cp = support::control_plane_only();
        let ns = cp.namespace(prefix).await;
        let label = json!({"metadata": {"labels": {"tsdb-webhook-test": ns}}});
        Api::<Namespace>::all(cp.client()).patch(&ns, &PatchParams::default(), &Patch::Merge(&label)).await?;
        let port = free_port(LOCALHOST)?;
        let url_port = front(port)?;
        let configuration = format!("tsdb-webhook-{ns}");
        let mut config =
            tsdb_operator_core::admission::webhook_configuration(&configuration, |path| WebhookClientConfig {
                url: Some(format!("https://127.0.0.1:{url_port}{path}")),
                ..WebhookClientConfig::default()
            });
        for hook in config.webhooks.iter_mut().flatten() {
            let labels = std::collections::BTreeMap::from([("tsdb-webhook-test".to_owned(), ns.clone())]);
            let selector = Some(LabelSelector { match_labels: Some(labels), ..LabelSelector::default() });
            // Sets are cluster-scoped, so a namespaceSelector does not keep other tests' sets (and other tests'
            // stopped operators) apart: the set webhook selects the objects carrying the test's label instead.
            if hook.name.starts_with("vprometheusclusterset") {
                hook.object_selector = selector;
            } else {
                hook.namespace_selector = selector;
            }
        }
        Api::<ValidatingWebhookConfiguration>::all(cp.client()).create(&PostParams::default(), &config).await?;
        let workdir = Workdir::create(&format!("webhook-{ns}"))?;
        let extra = extra(&workdir);
        let mut webhook = Self { cp, ns, port, configuration, operator: None, workdir, extra };
        webhook.start_operator()?;
        Ok(webhook)
    }

    fn start_operator(&mut self) -> Result<()> {
        let args = [
            "--enable-webhook".to_owned(),
            format!("--webhook-bind-address=127.0.0.1:{}", self.port),
            "--webhook-host=127.0.0.1".to_owned(),
            format!("--webhook-configuration-name={}", self.configuration),
            format!("--leader-election-namespace={}", self.ns),
            "--webhook-certificate-check-seconds=2".to_owned(),
            "--enable-backup=false".to_owned(),
        ];
        let args: Vec<&str> = args.iter().chain(&self.extra).map(String::as_str).collect();
        self.operator = Some(Operator::start_on(self.cp, &self.workdir, Some(&self.ns), &args)?);
        Ok(())
    }

    fn stop_operator(&mut self) -> Result<()> {
        if let Some(mut op) = self.operator.take() {
            op.process.stop()?;
        }
        Ok(())
    }

    fn clusters(&self) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("observability.merlionos.org", "v1", "PrometheusCluster");
        Api::namespaced_with(self.cp.client(), &self.ns, &ApiResource::from_gvk(&gvk))
    }

    fn sets(&self) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("observability.merlionos.org", "v1", "PrometheusClusterSet");
        Api::all_with(self.cp.client(), &ApiResource::from_gvk(&gvk))
    }

    /// Creates `object` as `kubectl create` does; the API server's refusal as its message.
    async fn create(&self, object: &Value, dry_run: bool) -> Result<(), String> {
        let object: DynamicObject = serde_json::from_value(object.clone()).map_err(|e| e.to_string())?;
        let pp = PostParams { dry_run, ..PostParams::default() };
        let api = if object.types.as_ref().is_some_and(|t| t.kind == "PrometheusClusterSet") {
            self.sets()
        } else {
            self.clusters()
        };
        api.create(&pp, &object).await.map(|_| ()).map_err(|e| match e {
            kube::Error::Api(status) => status.message,
            other => other.to_string(),
        })
    }

    /// Waits until the API server calls the operator's webhook with a certificate it trusts (the operator has put
    /// its authority into the caBundle): a bad spec is refused by the webhook.
    async fn wait_serving(&self) -> Result<Duration> {
        let started = Instant::now();
        let bad = cluster(&self.ns, "probe", both_scrape_sources());
        let mut last = String::new();
        while started.elapsed() < Duration::from_mins(1) {
            match self.create(&bad, true).await {
                Err(m) if m.contains("denied the request") => return Ok(started.elapsed()),
                Err(m) => last = m,
                Ok(()) => "admitted".clone_into(&mut last),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!("the webhook did not start refusing bad specs within 60 s; last answer: {last}")
    }

    async fn ca_bundle(&self) -> Result<Vec<u8>> {
        let config = Api::<ValidatingWebhookConfiguration>::all(self.cp.client()).get(&self.configuration).await?;
        let hooks = config.webhooks.unwrap_or_default();
        let bundles: Vec<Vec<u8>> =
            hooks.iter().map(|h| h.client_config.ca_bundle.clone().map(|b| b.0).unwrap_or_default()).collect();
        anyhow::ensure!(bundles.windows(2).all(|w| w[0] == w[1]), "every webhook carries the same bundle");
        Ok(bundles.into_iter().next().unwrap_or_default())
    }

    async fn finish(mut self) -> Result<()> {
        self.stop_operator()?;
        Api::<ValidatingWebhookConfiguration>::all(self.cp.client())
            .delete(&self.configuration, &DeleteParams::default())
            .await?;
        Api::<Namespace>::all(self.cp.client()).delete(&self.ns, &DeleteParams::background()).await?;
        Ok(())
    }
}

/// A spec only the webhook refuses (the CRD schema cannot say "one of"): the seed's
/// `inline and secretRef are mutually exclusive`.
fn both_scrape_sources() -> Value {
    json!({"additionalScrapeConfigs": {"inline": "- job_name: node\n", "secretRef": {"name": "extra", "key": "s.yml"}}})
}

#[allow(clippy::needless_pass_by_value)] // reads like the YAML it stands for
fn cluster(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "observability.merlionos.org/v1", "kind": "PrometheusCluster",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// The fixtures of `dir` as JSON objects moved into `ns` (name, object).
fn fixtures(dir: &str, ns: &str) -> Result<Vec<(String, Value)>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures").join(dir);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&root)? {
        let path = entry?.path();
        let mut object: Value = serde_yaml::from_str(&std::fs::read_to_string(&path)?)?;
        let meta = object["metadata"].as_object_mut().context("metadata")?;
        meta.insert("namespace".into(), ns.into());
        meta.remove("uid");
        // The test API server (1.20 built with a newer Go) takes an empty string for null and refuses it.
        if let Some(selector) = object.pointer_mut("/spec/nodeSelector").and_then(Value::as_object_mut) {
            selector.values_mut().filter(|v| *v == "").for_each(|v| *v = Value::String("true".to_owned()));
        }
        let name = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        out.push((name, object));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_are_refused_when_applied_with_the_seed_messages_and_good_ones_are_admitted() -> Result<()> {
    let webhook = Webhook::start("webhook-refuse").await?;
    let took = webhook.wait_serving().await?;
    eprintln!("the webhook refused its first bad spec {took:?} after the operator started");
    let ns = webhook.ns.clone();

    // Every invalid fixture is refused at create time: by the CRD schema where it can say what is wrong (the API
    // server checks it before calling webhooks), else by the webhook, which names each field with the core's (the
    // seed's) message.
    let mut by_webhook = 0;
    for (name, object) in fixtures("clusters-invalid", &ns)? {
        let message = webhook.create(&object, false).await.err().with_context(|| format!("{name} was admitted"))?;
        eprintln!("{name}: refused: {message}");
        if message.contains("admission webhook \"vprometheuscluster.merlionos.org\" denied the request") {
            let cluster: PrometheusCluster = serde_json::from_value(object.clone())?;
            let errors = tsdb_operator_core::validate::cluster(&cluster).expect_err("the core refuses it too");
            for e in &errors {
                assert!(message.contains(&e.to_string()), "{name}: {message} lacks {e}");
            }
            by_webhook += 1;
        }
    }
    assert!(by_webhook >= 5, "the checks the schema cannot make are the webhook's ({by_webhook} fixtures)");

    // Every valid fixture is admitted.
    for (name, object) in fixtures("clusters", &ns)? {
        webhook.create(&object, false).await.map_err(|m| anyhow::anyhow!("{name} was refused: {m}"))?;
    }

    // Updates: an invalid change is refused, a valid one admitted, a metadata-only change always.
    let clusters: Api<PrometheusCluster> = Api::namespaced(webhook.cp.client(), &ns);
    let merge = |spec: Value| Patch::Merge(json!({"spec": spec}));
    let refused = clusters.patch("prod", &PatchParams::default(), &merge(both_scrape_sources())).await;
    let Err(kube::Error::Api(status)) = refused else { panic!("an invalid change was admitted: {refused:?}") };
    assert!(status.message.contains("inline and secretRef are mutually exclusive"), "{}", status.message);
    clusters.patch("prod", &PatchParams::default(), &merge(json!({"replicas": 3}))).await?;
    let label = Patch::Merge(json!({"metadata": {"labels": {"team": "obs"}}}));
    clusters.patch("prod", &PatchParams::default(), &label).await?;

    // The operator's own writes (status, children) are not intercepted: the cluster gets its status and its
    // StatefulSet.
    let statefulsets: Api<StatefulSet> = Api::namespaced(webhook.cp.client(), &ns);
    support::eventually("the operator to create prod's StatefulSet and status", Duration::from_mins(1), || {
        let (clusters, statefulsets) = (clusters.clone(), statefulsets.clone());
        async move {
            let status = clusters.get("prod").await?.status;
            Ok((status.is_some() && statefulsets.get_opt("prod").await?.is_some()).then_some(()))
        }
    })
    .await?;

    // A storage change the operator cannot carry out is refused with the operator's reason.
    let shrink = clusters.patch("prod", &PatchParams::default(), &merge(json!({"storage": {"size": "50Gi"}}))).await;
    let Err(kube::Error::Api(status)) = shrink else { panic!("a shrink was admitted: {shrink:?}") };
    assert!(
        status.message.contains("spec.storage.size: Forbidden: cannot shrink the volumes from 100Gi to 50Gi"),
        "{}",
        status.message
    );
    let class = json!({"storage": {"size": "100Gi", "storageClassName": "slow"}});
    let moved = clusters.patch("prod", &PatchParams::default(), &merge(class)).await;
    assert!(moved.is_err_and(|e| e.to_string().contains("spec.storage.storageClassName")));

    // Cluster sets.
    let set = json!({"apiVersion": "observability.merlionos.org/v1", "kind": "PrometheusClusterSet",
        "metadata": {"name": format!("{ns}-set"), "labels": {"tsdb-webhook-test": ns}},
        "spec": {"clusterSelector": {"matchExpressions": [{"key": "team", "operator": "Sometimes"}]}}});
    // Sets are cluster-scoped: this one carries the test's label (the set webhook's objectSelector) and is
    // checked with a dry run, so other tests never see it.
    let message = webhook.create(&set, true).await.expect_err("a bad selector is refused");
    assert!(
        message.contains("vprometheusclusterset.merlionos.org") && message.contains("spec.clusterSelector"),
        "{message}"
    );
    webhook.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_webhook_down_creates_are_refused_fast_deletes_work_and_a_restart_keeps_the_authority() -> Result<()> {
    let mut webhook = Webhook::start("webhook-down").await?;
    webhook.wait_serving().await?;
    let ns = webhook.ns.clone();
    webhook.create(&cluster(&ns, "kept", json!({"replicas": 1})), false).await.map_err(anyhow::Error::msg)?;
    let bundle = webhook.ca_bundle().await?;
    let secret = Api::<Secret>::namespaced(webhook.cp.client(), &ns).get("tsdb-operator-webhook-tls").await?;
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));

    webhook.stop_operator()?;
    let started = Instant::now();
    let refused = webhook.create(&cluster(&ns, "late", json!({"replicas": 1})), false).await;
    let took = started.elapsed();
    let message = refused.expect_err("failurePolicy Fail: a create without the webhook is refused");
    assert!(message.contains("failed calling webhook"), "{message}");
    assert!(took < Duration::from_secs(5), "refused in {took:?}, not after the 10 s timeout");
    eprintln!("with the webhook down, a create was refused in {took:?}: {message}");
    // The delete webhook (it records deletes) is down too: Ignore, so the delete goes through at once.
    let started = Instant::now();
    webhook.clusters().delete("kept", &DeleteParams::default()).await.context("a delete needs no webhook")?;
    assert!(started.elapsed() < Duration::from_secs(3), "a delete took {:?} with the webhook down", started.elapsed());

    webhook.start_operator()?;
    webhook.wait_serving().await?;
    assert_eq!(webhook.ca_bundle().await?, bundle, "a restart reuses the authority in the Secret");
    webhook.create(&cluster(&ns, "late", json!({"replicas": 1})), false).await.map_err(anyhow::Error::msg)?;
    webhook.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_authority_is_replaced_under_load_without_a_failed_admission() -> Result<()> {
    let webhook = Webhook::start("webhook-rotate").await?;
    webhook.wait_serving().await?;
    let ns = webhook.ns.clone();
    let before = webhook.ca_bundle().await?;

    // Losing the Secret makes the operator mint a new authority; the one it serves from stays in the bundle
    // until it has loaded the new certificate.
    let load = async {
        let (mut admitted, mut failed) = (0, Vec::new());
        let started = Instant::now();
        let mut i = 0_u32;
        while started.elapsed() < Duration::from_secs(20) {
            i += 1;
            let good = cluster(&ns, &format!("load-{i}"), json!({"replicas": 1}));
            match webhook.create(&good, true).await {
                Ok(()) => admitted += 1,
                Err(m) => failed.push(m),
            }
            let bad = cluster(&ns, &format!("bad-{i}"), both_scrape_sources());
            match webhook.create(&bad, true).await {
                Err(m) if m.contains("denied the request") => admitted += 1,
                other => failed.push(format!("{other:?}")),
            }
        }
        (admitted, failed)
    };
    let rotate = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        Api::<Secret>::namespaced(webhook.cp.client(), &ns)
            .delete("tsdb-operator-webhook-tls", &DeleteParams::default())
            .await?;
        support::eventually("a new authority in the caBundle", Duration::from_secs(15), || async {
            let now = webhook.ca_bundle().await?;
            Ok((now != before).then_some(now))
        })
        .await
    };
    let ((answered, failed), rotated) = tokio::join!(load, rotate);
    let rotated = rotated?;
    eprintln!("{answered} admission answers during the rotation, {} failed", failed.len());
    assert!(failed.is_empty(), "failed admissions: {failed:?}");
    assert!(answered > 20, "the load ran ({answered} answers)");
    let text = String::from_utf8(rotated)?;
    assert_eq!(text.matches("BEGIN CERTIFICATE").count(), 2, "the new authority and the previous one");
    assert!(text.contains(std::str::from_utf8(&before)?.trim()), "the previous authority is still trusted");
    webhook.finish().await
}

/// Fault row 16, an expired certificate: the serving certificate in the Secret expired while the operator was down
/// (made here from the Secret's own authority, valid from 9 to 2 days ago, and marked so). At its start the
/// operator issues a new one from the same authority before it serves: no admission meets the expired certificate,
/// and the caBundle stays as it was (nothing new for the API server to trust).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_certificate_that_expired_while_the_operator_was_down_is_renewed_before_it_serves() -> Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
    let mut webhook = Webhook::start("webhook-expired").await?;
    webhook.wait_serving().await?;
    let ns = webhook.ns.clone();
    let bundle = webhook.ca_bundle().await?;
    webhook.stop_operator()?;

    let secrets = Api::<Secret>::namespaced(webhook.cp.client(), &ns);
    let mut secret = secrets.get("tsdb-operator-webhook-tls").await?;
    let text = |key: &str| -> Result<String> {
        let bytes = secret.data.as_ref().and_then(|d| d.get(key)).with_context(|| format!("the Secret's {key}"))?;
        Ok(String::from_utf8(bytes.0.clone())?)
    };
    let (authority_key, previous_pem) = (KeyPair::from_pem(&text("ca.key")?)?, text("tls.crt")?);
    let marks = secret.metadata.annotations.get_or_insert_default();
    let hosts: Vec<String> = marks
        .get("observability.merlionos.org/serving-hosts")
        .context("the Secret names the hosts")?
        .split(',')
        .map(str::to_owned)
        .collect();
    let mut authority = CertificateParams::default();
    authority.distinguished_name.push(DnType::CommonName, "tsdb-operator webhook CA");
    authority.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    authority.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let issuer = rcgen::Issuer::new(authority, &authority_key);
    let mut leaf = CertificateParams::new(hosts)?;
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let day = |days_ago: i64| {
        let date = (k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_hours(24 * days_ago))
            .to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC)
            .date();
        (
            date,
            rcgen::date_time_ymd(
                date.year().into(),
                date.month().try_into().unwrap_or(1),
                date.day().try_into().unwrap_or(1),
            ),
        )
    };
    let (expired_on, not_after) = day(2);
    (leaf.not_before, leaf.not_after) = (day(9).1, not_after);
    let key = KeyPair::generate()?;
    let expired = leaf.signed_by(&key, &issuer)?;
    marks.insert("observability.merlionos.org/serving-not-after".into(), format!("{expired_on}T00:00:00Z"));
    let data = secret.data.get_or_insert_default();
    data.insert("tls.crt".into(), k8s_openapi::ByteString(expired.pem().into_bytes()));
    data.insert("tls.key".into(), k8s_openapi::ByteString(key.serialize_pem().into_bytes()));
    secrets.replace("tsdb-operator-webhook-tls", &PostParams::default(), &secret).await?;

    // Served as it is, the API server refuses it for its age alone (the rest of the chain is sound).
    let bad = cluster(&ns, "probe", both_scrape_sources());
    let server = serve_tls(webhook.port, &expired, &key).await?;
    let refused = webhook.create(&bad, true).await.expect_err("an expired certificate is refused");
    server.abort();
    let _ = server.await;
    assert!(refused.contains("x509: certificate has expired"), "{refused}");

    webhook.start_operator()?;
    // Every answer until the webhook refuses a bad spec: connection refused while the operator starts, never a
    // certificate the API server refuses.
    let mut answers = Vec::new();
    let started = Instant::now();
    loop {
        match webhook.create(&bad, true).await {
            Err(m) if m.contains("denied the request") => break,
            other => answers.push(format!("{other:?}")),
        }
        anyhow::ensure!(started.elapsed() < Duration::from_mins(1), "the webhook never served: {answers:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused_certificate: Vec<&String> =
        answers.iter().filter(|a| a.contains("x509") || a.contains("certificate")).collect();
    assert!(
        refused_certificate.is_empty(),
        "admissions met a certificate the API server refused: {refused_certificate:?}"
    );

    let renewed = secrets.get("tsdb-operator-webhook-tls").await?;
    let now_served = renewed.data.as_ref().and_then(|d| d.get("tls.crt")).map(|b| b.0.clone()).unwrap_or_default();
    assert_ne!(now_served, expired.pem().into_bytes(), "the expired certificate was replaced");
    assert_ne!(now_served, previous_pem.into_bytes(), "by a new one");
    let until: k8s_openapi::jiff::Timestamp = renewed
        .annotations()
        .get("observability.merlionos.org/serving-not-after")
        .context("the renewed Secret says when it expires")?
        .parse()?;
    assert!(until > k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_hours(24 * 300));
    assert_eq!(webhook.ca_bundle().await?, bundle, "the same authority: the caBundle is unchanged");
    webhook.finish().await
}

/// A TLS server on `port` that presents `cert` and answers nothing: enough for the API server to judge the
/// certificate. Stopped by aborting the task.
async fn serve_tls(port: u16, cert: &rcgen::Certificate, key: &rcgen::KeyPair) -> Result<tokio::task::JoinHandle<()>> {
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let config =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind((LOCALHOST, port)).await?;
    Ok(tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    }))
}

/// `tsdb-ctl audit` on `dsn` for namespace `ns`, as JSON (newest first).
fn audit_trail(dsn: &str, ns: &str) -> Result<Vec<Value>> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tsdb-ctl"))
        .args(["audit", "--dsn", dsn, "-n", ns, "-o", "json", "--limit", "1000"])
        .output()?;
    anyhow::ensure!(out.status.success(), "tsdb-ctl audit: {}", String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Two users change a cluster through the API server (one change refused), the operator acts on it, and the
/// operator is killed right after a change was admitted: the trail shows each change with its user and diff and
/// each operator action, in order, and loses nothing to the kill.
async fn audit_scenario(prefix: &str, dsn: impl FnOnce(&Workdir) -> String) -> Result<()> {
    let mut dsn_used = String::new();
    let mut webhook = Webhook::start_with(prefix, |workdir| {
        dsn_used = dsn(workdir);
        let spool = workdir.path().join("audit-spool");
        vec![format!("--audit-dsn={dsn_used}"), format!("--audit-spool-dir={}", spool.display())]
    })
    .await?;
    webhook.wait_serving().await?;
    let (cp, ns) = (webhook.cp, webhook.ns.clone());
    // alice (a user of the token file) and bob (a ServiceAccount) may edit PrometheusClusters here.
    let bob_token = cp.service_account_token(&ns, "bob").await?;
    cp.apply_yaml(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: editors\n  namespace: {ns}\n\
         rules:\n  - apiGroups: [observability.merlionos.org]\n    resources: [prometheusclusters]\n    \
         verbs: [get, list, create, update, patch, delete]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n\
         metadata:\n  name: editors\n  namespace: {ns}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  \
         name: editors\nsubjects:\n  - kind: User\n    name: alice\n  - kind: ServiceAccount\n    name: bob\n    namespace: {ns}\n"
    ))
    .await?;
    let alice_token = cp.token_for("alice").context("alice's token")?.to_owned();
    let as_user =
        |token: &str| -> Result<Api<PrometheusCluster>> { Ok(Api::namespaced(cp.client_with_token(token)?, &ns)) };
    let (alice, bob) = (as_user(&alice_token)?, as_user(&bob_token)?);
    let shop: PrometheusCluster = serde_json::from_value(cluster(&ns, "shop", json!({"replicas": 1})))?;
    alice.create(&PostParams::default(), &shop).await?;
    let merge = |spec: Value| Patch::Merge(json!({"spec": spec}));
    bob.patch("shop", &PatchParams::default(), &merge(json!({"replicas": 2}))).await?;
    let refused = alice.patch("shop", &PatchParams::default(), &merge(both_scrape_sources())).await;
    assert!(refused.is_err(), "the invalid change is refused");
    // Killed at once after an admitted change: its record was on disk before the API server was answered.
    bob.patch("shop", &PatchParams::default(), &merge(json!({"retention": "7d"}))).await?;
    if let Some(op) = webhook.operator.as_mut() {
        op.process.kill()?;
    }
    webhook.operator = None;
    webhook.start_operator()?;
    webhook.wait_serving().await?;
    // A delete is recorded with its user too (the delete webhooks never refuse or hold it up).
    alice.delete("shop", &DeleteParams::default()).await?;

    let bob_name = format!("system:serviceaccount:{ns}:bob");
    let trail = support::eventually(
        "the audit trail to hold the users' changes and the operator's actions",
        Duration::from_mins(1),
        || {
            let (dsn, ns, bob_name) = (dsn_used.clone(), ns.clone(), bob_name.clone());
            async move {
                let trail = audit_trail(&dsn, &ns)?;
                let users = trail.iter().filter(|r| r["actorKind"] == "user").count();
                let created = trail.iter().any(|r| r["actorKind"] == "operator" && r["operation"] == "Created");
                let deleted = trail.iter().any(|r| r["actorKind"] == "user" && r["operation"] == "delete");
                let retention = trail.iter().any(|r| {
                    r["operator"] == bob_name.as_str() && r["diff"].as_str().is_some_and(|d| d.contains("/retention"))
                });
                Ok((users >= 5 && created && deleted && retention).then_some(trail))
            }
        },
    )
    .await?;
    let users: Vec<&Value> = trail.iter().rev().filter(|r| r["actorKind"] == "user").collect();
    let summary: Vec<(String, String, String)> = users
        .iter()
        .map(|r| {
            (
                r["operator"].as_str().unwrap_or_default().to_owned(),
                r["operation"].as_str().unwrap_or_default().to_owned(),
                r["result"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let expect = |who: &str, op: &str, result: &str| (who.to_owned(), op.to_owned(), result.to_owned());
    assert_eq!(
        summary,
        [
            expect("alice", "create", "success"),
            expect(&bob_name, "update", "success"),
            expect("alice", "update", "rejected"),
            expect(&bob_name, "update", "success"),
            expect("alice", "delete", "success"),
        ],
        "each change with its user, in order"
    );
    let diff: Value = serde_json::from_str(users[1]["diff"].as_str().unwrap_or("null"))?;
    assert_eq!(diff, json!([{"op": "replace", "path": "/replicas", "value": 2}]));
    assert!(users[2]["detail"].as_str().is_some_and(|d| d.contains("inline and secretRef are mutually exclusive")));
    assert!(users[1]["actorGroups"].as_array().is_some_and(|g| g.iter().any(|g| g == "system:serviceaccounts")));
    let operator_records: Vec<&Value> = trail.iter().filter(|r| r["actorKind"] == "operator").collect();
    assert!(
        operator_records
            .iter()
            .all(|r| r["clusterName"] == "shop" && r["objectUid"].as_str().is_some_and(|u| !u.is_empty()))
    );
    eprintln!("audit trail ({} records):\n{}", trail.len(), serde_json::to_string_pretty(&trail)?);
    webhook.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_on_sqlite_records_who_changed_what_and_what_the_operator_did() -> Result<()> {
    audit_scenario("audit-sqlite", |workdir| format!("sqlite:{}", workdir.path().join("audit.db").display())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_on_postgresql_records_who_changed_what_and_what_the_operator_did() -> Result<()> {
    let pg = tsdb_operator_testenv::postgres::Postgres::local()?;
    let name = pg.create_database("audit_scenario")?;
    let dsn = pg.dsn(&name);
    let result = audit_scenario("audit-postgres", |_| dsn.clone()).await;
    pg.drop_database(&name)?;
    result
}

/// Fault row 13, a deletion while the audit database is down: with PostgreSQL refusing every connection, deleting a
/// cluster completes at once (no finalizer waits on the database), the operator's cleanup runs (its `Finalized`
/// event), and once the database is back the trail holds the user's delete and the operator's cleanup: nothing was
/// lost to the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_deleted_while_postgresql_is_down_is_gone_at_once_and_the_trail_catches_up() -> Result<()> {
    use k8s_openapi::api::core::v1::Event;
    let pg = tsdb_operator_testenv::postgres::Postgres::local()?;
    let db = pg.create_database("audit_delete")?;
    let dsn = pg.dsn(&db);
    let scenario = async {
        let webhook = Webhook::start_with("audit-delete", |workdir| {
            let spool = workdir.path().join("audit-spool");
            vec![format!("--audit-dsn={dsn}"), format!("--audit-spool-dir={}", spool.display())]
        })
        .await?;
        webhook.wait_serving().await?;
        let ns = webhook.ns.clone();
        webhook.create(&cluster(&ns, "gone", json!({"replicas": 1})), false).await.map_err(anyhow::Error::msg)?;
        let sts = Api::<StatefulSet>::namespaced(webhook.cp.client(), &ns);
        support::eventually("the StatefulSet", Duration::from_mins(1), || async {
            sts.get_opt("gone").await.map_err(Into::into)
        })
        .await?;

        pg.psql("postgres", &format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS false"))?;
        pg.psql("postgres", &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"))?;
        let outage = async {
            let started = Instant::now();
            webhook.clusters().delete("gone", &DeleteParams::default()).await?;
            support::eventually("the cluster to be gone", Duration::from_secs(30), || async {
                Ok(webhook.clusters().get_opt("gone").await?.is_none().then_some(()))
            })
            .await?;
            let took = started.elapsed();
            anyhow::ensure!(audit_trail(&dsn, &ns).is_err(), "the database refuses connections during the outage");
            let events = Api::<Event>::namespaced(webhook.cp.client(), &ns);
            support::eventually("the operator's Finalized event", Duration::from_secs(30), || async {
                let all = events.list(&ListParams::default()).await?.items;
                Ok(all
                    .iter()
                    .any(|e| {
                        e.reason.as_deref() == Some("Finalized") && e.involved_object.name.as_deref() == Some("gone")
                    })
                    .then_some(()))
            })
            .await?;
            anyhow::Ok(took)
        }
        .await;
        pg.psql("postgres", &format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS true"))?;
        let took = outage?;
        eprintln!("deleted with PostgreSQL down in {took:?}");

        let trail = support::eventually("the delete and the cleanup in the trail", Duration::from_mins(1), || {
            let (dsn, ns) = (dsn.clone(), ns.clone());
            async move {
                let trail = audit_trail(&dsn, &ns)?;
                let of_gone = |kind: &str, op: &str| {
                    trail.iter().any(|r| r["clusterName"] == "gone" && r["actorKind"] == kind && r["operation"] == op)
                };
                Ok((of_gone("user", "delete") && of_gone("operator", "Finalized")).then_some(trail))
            }
        })
        .await?;
        let deletes = trail.iter().filter(|r| r["clusterName"] == "gone" && r["operation"] == "delete").count();
        assert_eq!(deletes, 1, "the delete is recorded once");
        webhook.finish().await
    }
    .await;
    pg.drop_database(&db)?;
    scenario
}

/// A TCP proxy on loopback that holds each admission request the API server sends for `delay` before passing it
/// on, so the webhook answers `delay` later. It cannot read inside TLS, so it tells requests (a few KiB of
/// AdmissionReview) from the handshake's messages (under a KiB) by size. Runs until the test process ends.
fn slow_proxy(target: u16, delay: Duration) -> Result<u16> {
    let listener = std::net::TcpListener::bind((LOCALHOST, 0))?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect((LOCALHOST, target)).await else { return };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let up = async {
                    let mut buf = vec![0_u8; 64 * 1024];
                    loop {
                        let n = match tokio::io::AsyncReadExt::read(&mut client_read, &mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if n > 1200 {
                            tokio::time::sleep(delay).await;
                        }
                        if tokio::io::AsyncWriteExt::write_all(&mut server_write, &buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                let down = tokio::io::copy(&mut server_read, &mut client_write);
                let _ = tokio::join!(up, down);
            });
        }
    });
    Ok(port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_answering_in_9_s_still_completes_within_the_10_s_timeout() -> Result<()> {
    let webhook =
        Webhook::start_behind("webhook-slow", |_| Vec::new(), |port| slow_proxy(port, Duration::from_secs(9))).await?;
    let ns = webhook.ns.clone();
    // The TLS handshake's messages are held too; wait until requests get through at all.
    webhook.wait_serving().await?;
    let started = Instant::now();
    let message = webhook.create(&cluster(&ns, "slow-bad", both_scrape_sources()), false).await.expect_err("refused");
    let took = started.elapsed();
    assert!(message.contains("denied the request"), "the webhook's answer, not a timeout: {message}");
    assert!(took >= Duration::from_secs(9), "the answer went through the 9 s delay ({took:?})");
    webhook.create(&cluster(&ns, "slow-good", json!({"replicas": 1})), false).await.map_err(anyhow::Error::msg)?;
    eprintln!("a webhook answering after 9 s: refused in {took:?}, and a valid create admitted");
    webhook.finish().await
}

/// Verifies that the server on `port` presents a certificate for 127.0.0.1 that `bundle` trusts, as the API server
/// would check it.
async fn trusted(port: u16, bundle: &[u8]) -> Result<()> {
    let connector = support::tls_client(bundle)?;
    let tcp = tokio::net::TcpStream::connect((LOCALHOST, port)).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?.to_owned();
    connector.connect(name, tcp).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_starting_together_serve_certificates_of_the_authority_in_the_bundle() -> Result<()> {
    // Two operators share the Secret and the configuration and start at the same moment: one wins the write of a
    // new authority; the other must serve the winner's certificate and leave the winner's bundle in place.
    let mut webhook = Webhook::start("webhook-pair").await?;
    let second_port = free_port(LOCALHOST)?;
    let args = [
        "--enable-webhook".to_owned(),
        format!("--webhook-bind-address=127.0.0.1:{second_port}"),
        "--webhook-host=127.0.0.1".to_owned(),
        format!("--webhook-configuration-name={}", webhook.configuration),
        format!("--leader-election-namespace={}", webhook.ns),
        "--webhook-certificate-check-seconds=2".to_owned(),
        "--enable-backup=false".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut second = Operator::start_on(webhook.cp, &webhook.workdir, Some(&webhook.ns), &args)?;
    webhook.wait_serving().await?;
    let both = support::eventually(
        "both replicas to serve certificates the bundle trusts",
        Duration::from_secs(30),
        || async {
            let bundle = webhook.ca_bundle().await?;
            trusted(webhook.port, &bundle).await?;
            trusted(second_port, &bundle).await?;
            Ok(Some(bundle))
        },
    )
    .await?;
    // And it stays so (no replica keeps replacing the other's bundle).
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(webhook.ca_bundle().await?, both);
    second.process.stop()?;
    webhook.stop_operator()?;
    webhook.finish().await
}

/// A bad request to the webhook: method, path, content type, body and the status it must get.
type BadReview = (reqwest::Method, &'static str, Option<&'static str>, Vec<u8>, u16);

/// A review as the API server sends it for a create of `spec` in `ns`.
fn admission_review(ns: &str, spec: Value) -> Value {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "7f0b2a8e-0000-4000-8000-000000000001",
        "kind": {"group": "observability.merlionos.org", "version": "v1", "kind": "PrometheusCluster"},
        "resource": {"group": "observability.merlionos.org", "version": "v1", "resource": "prometheusclusters"},
        "name": "web", "namespace": ns, "operation": "CREATE", "dryRun": true,
        "userInfo": {"username": "someone"},
        "object": cluster(ns, "web", spec)}})
}

/// Fault table row 18 for the admission webhook, over a real socket against the running operator: 10,000 requests
/// of a hand-made corpus (empty, not JSON, invalid UTF-8, 10,000-deep, mistyped, oversized, not a review, unknown
/// paths and methods) each get their 4xx, never a 5xx, and the operator's memory is where it was before them; a
/// 100 MB body is refused or cut off; a body that never finishes is cut off within the timeout, while a good
/// review is still answered at once. Only the API server should call the webhook, but any pod can reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one scenario, in order
async fn bad_reviews_get_4xx_or_are_cut_off_and_memory_stays_where_it_was() -> Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let webhook = Webhook::start("webhook-faults").await?;
    webhook.wait_serving().await?;
    let pid = webhook.operator.as_ref().context("operator")?.process.pid();
    let bundle = String::from_utf8(webhook.ca_bundle().await?)?;
    let http = support::https_trusting(&bundle)?;
    let base = format!("https://127.0.0.1:{}", webhook.port);
    let path = "/validate-observability-merlionos-org-v1-prometheuscluster";
    let good = admission_review(&webhook.ns, json!({"replicas": 1}));
    let answered = http.post(format!("{base}{path}")).json(&good).send().await?;
    assert_eq!(answered.status().as_u16(), 200);
    let verdict: Value = answered.json().await?;
    assert_eq!(verdict["response"]["allowed"], true, "{verdict}");

    // 10,000 levels deep where a review holds free-form JSON (the object's spec).
    let mut deep =
        br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"object": {"spec": "#.to_vec();
    deep.extend("[".repeat(10_000).bytes());
    deep.extend("]".repeat(10_000).bytes());
    deep.extend(b"}}}");
    let json_body = |body: Vec<u8>, want: u16| (reqwest::Method::POST, path, Some("application/json"), body, want);
    let corpus: Vec<BadReview> = vec![
        json_body(Vec::new(), 400),
        json_body(b"not json".to_vec(), 400),
        json_body(b"\xff\xfe{\"kind\": \"\xc3\x28\"}".to_vec(), 400),
        json_body(deep, 400),
        json_body(b"{\"kind\": \"AdmissionReview\"}".to_vec(), 422),
        json_body(b"{\"apiVersion\": \"admission.k8s.io/v1\", \"kind\": \"AdmissionReview\"}".to_vec(), 400),
        json_body(b"{\"apiVersion\": 5, \"request\": []}".to_vec(), 422),
        json_body(vec![b' '; 9 << 20], 413),
        (reqwest::Method::POST, path, Some("text/plain"), serde_json::to_vec(&good)?, 415),
        (reqwest::Method::POST, path, None, serde_json::to_vec(&good)?, 415),
        (reqwest::Method::GET, path, None, Vec::new(), 405),
        (reqwest::Method::POST, "/no-such-path", Some("application/json"), serde_json::to_vec(&good)?, 404),
    ];
    let send = |i: usize| {
        let (method, path, content_type, body, want) = &corpus[i % corpus.len()];
        let mut request = http.request(method.clone(), format!("{base}{path}")).body(body.clone());
        if let Some(t) = content_type {
            request = request.header(reqwest::header::CONTENT_TYPE, *t);
        }
        async move {
            match request.send().await {
                Ok(r) => (i, Some(r.status().as_u16()), r.text().await.unwrap_or_default()),
                // Cut off while still sending more than the limit: a closed connection, as good as 413.
                Err(_) if *want == 413 => (i, Some(413), "connection closed".to_owned()),
                Err(e) => (i, None, format!("{e:?}")),
            }
        }
    };
    let want = |i: usize| {
        let (method, path, content_type, _, want) = &corpus[i % corpus.len()];
        (*want, format!("{method} {path} ({content_type:?})"))
    };
    let baseline = support::ten_thousand_bad_requests("bad reviews over TLS", pid, send, want).await?;

    // A 100 MB body: refused or cut off after the limit, never read in full.
    let huge = http.post(format!("{base}{path}")).header(reqwest::header::CONTENT_TYPE, "application/json");
    match huge.body(vec![b'['; 100 << 20]).send().await {
        Ok(r) => assert_eq!(r.status().as_u16(), 413),
        Err(e) => eprintln!("100 MB body cut off: {e}"),
    }
    assert!(support::rss_kib(pid)? < baseline + 32 * 1024, "the 100 MB body was not kept");

    // A body that never finishes is cut off within the body timeout; a good review is answered meanwhile.
    let tcp = tokio::net::TcpStream::connect((LOCALHOST, webhook.port)).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?.to_owned();
    let mut slow = support::tls_client(bundle.as_bytes())?.connect(name, tcp).await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{"
    );
    slow.write_all(head.as_bytes()).await?;
    slow.flush().await?;
    let answered = http.post(format!("{base}{path}")).json(&good).send().await?;
    assert_eq!(answered.status().as_u16(), 200, "a good review is answered while a slow one waits");
    let cut = support::closed_within(&mut slow, Duration::from_secs(15))
        .await
        .context("a body that never finishes was not cut off within 15 s")?;
    assert!(cut.is_empty() || cut.starts_with("HTTP/1.1 4"), "an unfinished body gets a 4xx or nothing: {cut}");
    webhook.finish().await
}
