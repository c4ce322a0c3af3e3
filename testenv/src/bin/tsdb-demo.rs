//! `tsdb-demo`: the README's quick start. Brings up the local cluster (real control plane + process kubelet),
//! installs the CRDs, runs the operator, applies a sample PrometheusCluster, waits until it is Active and prints
//! where to look. Runs until Ctrl-C, then stops everything it started.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use k8s_openapi::api::admissionregistration::v1::{ValidatingWebhookConfiguration, WebhookClientConfig};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Api;
use kube::api::PostParams;
use kube::api::{ListParams, Patch, PatchParams};
use tsdb_operator_core::crd::{Phase, PrometheusCluster};
use tsdb_operator_testenv::controlplane::ControlPlane;
use tsdb_operator_testenv::kubelet::Kubelet;
use tsdb_operator_testenv::process::{ProcessBuilder, Workdir};

/// Local demo of tsdb-operator on embedded defaults.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The PrometheusCluster to apply.
    #[arg(long, default_value = "deploy/samples/prometheuscluster.yaml")]
    sample: PathBuf,
    /// The operator binary.
    #[arg(long, default_value = "target/debug/tsdb-operator")]
    operator: PathBuf,
    /// Namespace of the sample.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Exit once the sample is Active instead of running until Ctrl-C.
    #[arg(long)]
    exit_when_active: bool,
}

/// Where the operator serves its admission webhook.
const WEBHOOK_PORT: u16 = 9443;
/// Where the operator serves its REST API (the seed's port).
const API_PORT: u16 = 8080;

/// Files a caller of the REST API needs.
struct ApiCaller {
    /// The ServiceAccount token.
    token: PathBuf,
    /// The authority of the operator's own API certificate, from the ConfigMap it publishes.
    ca: PathBuf,
}

/// Where the API is, the token and CA files and an example request.
fn print_api(namespace: &str, name: &str, caller: &ApiCaller) {
    println!("  REST API:     https://127.0.0.1:{API_PORT}/api/clusters   (docs/api.md)");
    println!("                token of {namespace}/demo-user (API editor role): {}", caller.token.display());
    println!(
        "                CA of the operator's own certificate (ConfigMap {namespace}/tsdb-operator-api-ca): {}",
        caller.ca.display()
    );
    println!(
        "                curl --cacert {} -H \"Authorization: Bearer $(cat {})\" https://127.0.0.1:{API_PORT}/api/clusters/{name}",
        caller.ca.display(),
        caller.token.display()
    );
}

/// The authority of the operator's API certificate: key `ca.crt` of the ConfigMap it publishes in `namespace`.
/// Waits up to 30 seconds for it.
async fn api_authority(cp: &ControlPlane, namespace: &str) -> Result<String> {
    let config_maps: Api<ConfigMap> = Api::namespaced(cp.client(), namespace);
    for _ in 0..30 {
        if let Some(bundle) = config_maps.get_opt("tsdb-operator-api-ca").await?.and_then(|c| c.data?.remove("ca.crt"))
        {
            return Ok(bundle);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bail!("the operator did not publish its API authority in ConfigMap {namespace}/tsdb-operator-api-ca")
}

/// A ServiceAccount `demo-user` bound to the API's editor role (deploy/api-rbac.yaml) in `namespace`; calls
/// `GET /api/clusters` with its token, trusting only the operator's published authority, fails unless that
/// answers 200, and returns the files holding the token and the authority.
async fn api_user(cp: &ControlPlane, workdir: &Workdir, namespace: &str) -> Result<ApiCaller> {
    cp.apply_yaml(include_str!("../../../deploy/api-rbac.yaml")).await?;
    let token = cp.service_account_token(namespace, "demo-user").await?;
    cp.apply_yaml(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: demo-user-api\n  \
         namespace: {namespace}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: \
         tsdb-operator-api-editor\nsubjects:\n  - kind: ServiceAccount\n    name: demo-user\n    namespace: {namespace}\n"
    ))
    .await?;
    let file = workdir.path().join("demo-user.token");
    std::fs::write(&file, &token)?;
    let bundle = api_authority(cp, namespace).await?;
    let ca = workdir.path().join("api-ca.crt");
    std::fs::write(&ca, &bundle)?;
    let mut http = reqwest::Client::builder().tls_built_in_root_certs(false).timeout(Duration::from_secs(10));
    for cert in reqwest::Certificate::from_pem_bundle(bundle.as_bytes())? {
        http = http.add_root_certificate(cert);
    }
    let http = http.build()?;
    let url = format!("https://127.0.0.1:{API_PORT}/api/clusters");
    let mut last = String::new();
    for _ in 0..30 {
        match http.get(&url).bearer_auth(&token).send().await {
            Ok(r) if r.status().is_success() => return Ok(ApiCaller { token: file, ca }),
            Ok(r) => last = format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bail!("GET {url} as demo-user did not answer 200: {last}")
}

/// Sends a spec with backups on and no bucket (a dry run, as `kubectl apply --dry-run=server` does) and returns the
/// webhook's refusal; fails if it is admitted. Waits up to a minute for the webhook to be called.
async fn refused_at_apply(api: &Api<PrometheusCluster>, namespace: &str) -> Result<String> {
    let bad: PrometheusCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "observability.merlionos.org/v1", "kind": "PrometheusCluster",
        "metadata": {"name": "no-bucket", "namespace": namespace},
        "spec": {"backup": {"enabled": true, "schedule": "@daily"}},
    }))?;
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let last = match api.create(&PostParams { dry_run: true, ..PostParams::default() }, &bad).await {
            Err(kube::Error::Api(status)) if status.message.contains("denied the request") => return Ok(status.message),
            Err(e) => e.to_string(),
            Ok(_) => "admitted".to_owned(),
        };
        if Instant::now() > deadline {
            bail!("the webhook did not refuse a spec without spec.backup.bucket (last answer: {last})");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The newest records of the audit trail in `namespace`, as `tsdb-ctl audit` prints them, once the sample's
/// creation is there (the operator writes the trail in the background).
async fn audit_trail(ctl: &std::path::Path, dsn: &str, namespace: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = std::process::Command::new(ctl)
            .args(["audit", "--dsn", dsn, "-n", namespace, "--limit", "8"])
            .output()
            .with_context(|| format!("failed to run {}", ctl.display()))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.contains(" create ") {
            return Ok(text);
        }
        if Instant::now() > deadline {
            bail!(
                "the audit trail does not show the sample's creation: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    println!("starting the local control plane (etcd, kube-apiserver, controller-manager, scheduler)...");
    let cp = ControlPlane::start()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run(&args, &cp, started))
}

async fn run(args: &Args, cp: &ControlPlane, started: Instant) -> Result<()> {
    cp.install_project_crds().await?;
    let workdir = Workdir::create("demo")?;
    let operator = std::fs::canonicalize(&args.operator)
        .with_context(|| format!("operator binary {} not found: run `cargo build --bins`", args.operator.display()))?;
    println!("starting the process kubelet (3 nodes, pods run as local processes)...");
    let kubelet = Kubelet::builder(cp.kubeconfig_path())
        .nodes(3)
        .state_dir(workdir.subdir("kubelet")?)
        .operator_binary(&operator)
        .start()
        .await?;
    println!("starting the operator with its admission webhook and REST API...");
    let backups = workdir.subdir("backups")?;
    let audit_dsn = format!("sqlite:{}", workdir.path().join("audit.db").display());
    // The webhook is called by URL on loopback here; on a cluster the chart points it at a Service.
    let config = tsdb_operator_core::admission::webhook_configuration("tsdb-operator", |path| WebhookClientConfig {
        url: Some(format!("https://127.0.0.1:{WEBHOOK_PORT}{path}")),
        ..WebhookClientConfig::default()
    });
    Api::<ValidatingWebhookConfiguration>::all(cp.client()).create(&PostParams::default(), &config).await?;
    let mut op = ProcessBuilder::new("tsdb-operator", &operator)
        .arg("--enable-webhook")
        .arg(format!("--webhook-bind-address=127.0.0.1:{WEBHOOK_PORT}"))
        .arg("--webhook-host=127.0.0.1")
        .arg("--webhook-configuration-name=tsdb-operator")
        .arg(format!("--leader-election-namespace={}", args.namespace))
        .arg(format!("--audit-dsn={audit_dsn}"))
        .arg(format!("--audit-spool-dir={}", workdir.subdir("audit-spool")?.display()))
        .arg(format!("--backup-dir={}", backups.display()))
        .arg("--enable-api")
        .arg(format!("--api-address=127.0.0.1:{API_PORT}"))
        .arg(format!("--api-namespace={}", args.namespace))
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .arg("--metrics-bind-address=127.0.0.1:8082")
        // Plain HTTP on loopback for the local demo; on a cluster, metrics are HTTPS behind the API server's
        // authentication (docs/operator.md, Metrics).
        .arg("--metrics-secure=false")
        .arg("--health-probe-bind-address=127.0.0.1:8081")
        .spawn(&workdir)?;

    let client = cp.client();
    let text =
        std::fs::read_to_string(&args.sample).with_context(|| format!("failed to read {}", args.sample.display()))?;
    let mut value: serde_json::Value = serde_yaml::from_str(&text)?;
    let name = value["metadata"]["name"].as_str().context("the sample has no metadata.name")?.to_owned();
    value["metadata"]["namespace"] = serde_json::Value::String(args.namespace.clone());
    let api: Api<PrometheusCluster> = Api::namespaced(client.clone(), &args.namespace);
    let refusal = refused_at_apply(&api, &args.namespace).await?;
    api.patch(&name, &PatchParams::apply("tsdb-demo").force(), &Patch::Apply(&value)).await?;
    println!("applied PrometheusCluster {}/{name}; waiting until it is Active...", args.namespace);

    let deadline = Instant::now() + Duration::from_mins(5);
    let pc = loop {
        let pc = api.get(&name).await?;
        let st = pc.status.clone().unwrap_or_default();
        if st.phase == Some(Phase::Active) {
            break pc;
        }
        if Instant::now() > deadline {
            bail!(
                "{name} did not become Active in 5 minutes (phase {:?}); operator log: {}",
                st.phase,
                op.log_tail(20)
            );
        }
        op.check_running()?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let ready = pc.status.as_ref().map_or(0, |s| s.ready_replicas);
    println!(
        "\nPrometheusCluster {}/{name} is Active with {ready} ready replicas ({:.1?} after start).\n",
        args.namespace,
        started.elapsed()
    );
    println!("  kubeconfig:   {}", cp.kubeconfig_path().display());
    println!("  try:          kubectl --kubeconfig {} get prometheusclusters -A", cp.kubeconfig_path().display());
    let pods: Api<Pod> = Api::namespaced(client, &args.namespace);
    for pod in pods.list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={name}"))).await? {
        if let Some(ip) = pod.status.and_then(|s| s.pod_ip) {
            println!("  Prometheus:   http://{ip}:9090   ({})", pod.metadata.name.unwrap_or_default());
        }
    }
    let caller = api_user(cp, &workdir, &args.namespace).await?;
    println!("  metrics:      http://127.0.0.1:8082/metrics   (operator)");
    print_api(&args.namespace, &name, &caller);
    println!("  webhook:      a bad spec is refused at apply time:\n                {refusal}");
    println!("  backups:      {}   (local directory standing in for S3)", backups.display());
    let ctl = operator.with_file_name("tsdb-ctl");
    println!("  audit trail:  {} audit --dsn {audit_dsn}", ctl.display());
    println!("{}", audit_trail(&ctl, &audit_dsn, &args.namespace).await?);
    println!("  logs:         {}", workdir.logs().display());
    if args.exit_when_active {
        op.stop()?;
        kubelet.shutdown().await;
        return Ok(());
    }
    println!("\nPress Ctrl-C to stop everything.");
    tokio::signal::ctrl_c().await?;
    println!("stopping...");
    op.stop()?;
    kubelet.shutdown().await;
    Ok(())
}
