//! `tsdb-operator`: the operator (default), its agent sidecar (`agent`, `agent restore`) and the CRD printer
//! (`crd`). Wiring only.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use kube::runtime::reflector;
use tokio::sync::watch;
use tsdb_operator_adapters::controller::{self, Context};
use tsdb_operator_adapters::events::EventBus;
use tsdb_operator_adapters::http::{self, Health};
use tsdb_operator_adapters::kube::discovery;
use tsdb_operator_adapters::metrics::Metrics;
use tsdb_operator_adapters::{agent, api, audit, certificate, leader, secure_metrics, tls, webhook};
use tsdb_operator_core::build::BuildSettings;
use tsdb_operator_core::crd::PrometheusCluster;

#[path = "../seed_flags.rs"]
mod seed_flags;
#[path = "../store_args.rs"]
mod store_args;

/// jemalloc, with background threads that return freed pages to the system (after its 10 s decay), keeps the
/// resident memory close to the live heap; glibc's per-thread arenas held on to ~40 MiB at 1,000 clusters.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "tsdb-operator", version, about = "Kubernetes operator for Prometheus clusters")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    operator: OperatorArgs,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start
enum Command {
    /// Run the operator (the default when no subcommand is given).
    Operator(OperatorArgs),
    /// Run the sidecar agent in a Prometheus pod: reloads the configuration when it changes and takes backups.
    Agent(AgentCli),
    /// Print the CustomResourceDefinitions as YAML.
    Crd,
}

#[derive(Args, Clone)]
struct OperatorArgs {
    /// Kubeconfig to use; in-cluster config or $KUBECONFIG when unset.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Address of /metrics; "0" turns it off.
    #[arg(long, default_value = ":8082")]
    metrics_bind_address: String,
    /// Address of /healthz and /readyz; "0" turns it off.
    #[arg(long, default_value = ":8081")]
    health_probe_bind_address: String,
    /// Elect a leader with a Lease so that only one replica acts.
    #[arg(long, value_parser = seed_flags::go_bool, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(long, default_value = leader::LEASE_NAME)]
    leader_election_id: String,
    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    leader_election_namespace: String,
    /// Seconds a Lease stays valid without renewal.
    #[arg(long, default_value_t = 15)]
    leader_election_lease_seconds: u64,
    /// This process' identity in the Lease and in events; the pod name or host name by default.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Image of the agent sidecar added to every Prometheus pod.
    #[arg(long, env = "TSDB_AGENT_IMAGE", default_value = tsdb_operator_core::build::DEFAULT_AGENT_IMAGE)]
    agent_image: String,
    /// Maximum reconciles running at once per controller.
    #[arg(long, default_value_t = 8)]
    concurrency: u16,
    /// Log format: text or json.
    #[arg(long, env = "TSDB_LOG_FORMAT", default_value = "text")]
    log_format: String,
    /// Watch only this namespace (PrometheusClusterSets, which span namespaces, are then not reconciled).
    #[arg(long, env = "TSDB_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Run the backup scheduler.
    #[arg(long, value_parser = seed_flags::go_bool, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "true", action = clap::ArgAction::Set)]
    enable_backup: bool,
    /// S3 endpoint used by clusters whose spec.backup.endpoint is empty.
    #[arg(long, default_value = "")]
    s3_endpoint: String,
    /// Region used by clusters whose spec.backup.region is empty.
    #[arg(long, default_value = "us-east-1")]
    s3_region: String,
    /// S3 credentials for clusters whose spec.backup names no credentialsSecretRef: a Secret with
    /// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN optional), as NAMESPACE/NAME or NAME in
    /// $POD_NAMESPACE. The operator copies it into `<cluster>-s3-credentials` in each such cluster's namespace.
    #[arg(long, env = "TSDB_S3_CREDENTIALS_SECRET", default_value = "")]
    s3_credentials_secret: String,
    /// A local directory used instead of S3 when no endpoint is set (demo; the agents must see the same path).
    #[arg(long, default_value = "")]
    backup_dir: String,
    /// Seconds between two passes of the backup scheduler.
    #[arg(long, default_value_t = 15)]
    backup_tick_seconds: u64,
    /// Objects that no backup references are deleted only when older than this (Prometheus duration).
    #[arg(long, default_value = "1h")]
    backup_gc_grace: String,
    #[command(flatten)]
    seed: seed_flags::SeedFlags,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct AgentCli {
    #[command(subcommand)]
    command: Option<AgentCommand>,
    #[command(flatten)]
    run: AgentArgs,
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Restore a backup into an empty data directory (the init container of `spec.restore`); does nothing when
    /// the directory already holds data.
    Restore(RestoreArgs),
}

#[derive(Args)]
struct RestoreArgs {
    #[command(flatten)]
    store: store_args::StoreArgs,
    #[command(flatten)]
    which: store_args::BackupArgs,
    /// The data directory to restore into.
    #[arg(long, default_value = tsdb_operator_core::constants::paths::DATA_DIR)]
    dest: PathBuf,
}

#[derive(Args)]
struct AgentArgs {
    /// The mounted configuration directory to watch.
    #[arg(long, default_value = tsdb_operator_core::constants::paths::CONFIG_DIR)]
    config_dir: PathBuf,
    /// URL of the local Prometheus.
    #[arg(long, default_value = "http://127.0.0.1:9090")]
    prometheus_url: String,
    /// Address of /status, /metrics and /healthz.
    #[arg(long, default_value = "0.0.0.0:9091")]
    listen: SocketAddr,
    /// Address where the agent serves Prometheus' web API in front of --prometheus-url, refusing the admin and
    /// lifecycle APIs (HOST:PORT, :PORT, or 0 for off).
    #[arg(long, default_value = "0")]
    proxy_listen: String,
    /// Seconds between checks for a changed configuration.
    #[arg(long, default_value_t = 2)]
    poll_seconds: u64,
    /// The Prometheus data directory (snapshots are read from `<dir>/snapshots`).
    #[arg(long, default_value = tsdb_operator_core::constants::paths::DATA_DIR)]
    data_dir: PathBuf,
    /// Directory of the mounted agent token Secret; backup requests need this bearer token.
    #[arg(long, default_value = tsdb_operator_core::build::backup::AGENT_TOKEN_DIR)]
    token_dir: PathBuf,
    /// Directory of the mounted backup credentials Secret.
    #[arg(long, default_value = tsdb_operator_core::build::backup::BACKUP_CREDENTIALS_DIR)]
    credentials_dir: PathBuf,
    /// Where to expand the monitors' scrape configs from --config-dir (gunzipped when the ConfigMap holds them
    /// compressed) before every reload.
    #[arg(long)]
    expand_dir: Option<PathBuf>,
    /// Expand into --expand-dir once and exit (the init container that runs before Prometheus).
    #[arg(long, requires = "expand_dir")]
    expand_only: bool,
    /// Log format: text or json.
    #[arg(long, env = "TSDB_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

/// Logs to stderr: `RUST_LOG` or the flags' filter; colours only on a terminal, so `kubectl logs` and log files
/// show plain lines.
fn init_tracing(settings: &seed_flags::LogSettings) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if settings.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Parses `:8081`, `0.0.0.0:8081` or `0` (off).
/// Starts the metrics server (HTTPS behind the API server's authentication unless --metrics-secure=false) and the
/// plain health server; `review_client` is not fenced, so a standby replica answers too.
async fn start_servers(
    (metrics_addr, health_addr): (Option<SocketAddr>, Option<SocketAddr>),
    seed: &seed_flags::SeedFlags,
    review_client: &kube::Client,
    metrics: &Metrics,
    health: &Health,
    shutdown: &watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<std::io::Result<()>>>> {
    let mut servers = Vec::new();
    match metrics_addr {
        Some(addr) if seed.metrics_secure => {
            let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
            names.extend(hostname());
            if !addr.ip().is_unspecified() {
                names.push(addr.ip().to_string());
            }
            let tls = tls::server_config(&seed.metrics_tls(names))
                .context("cannot serve metrics over HTTPS (--metrics-secure)")?;
            let review = secure_metrics::CachedReview::new(
                secure_metrics::KubeAccessReview::new(review_client.clone()),
                secure_metrics::CacheTtl::default(),
            );
            let router = secure_metrics::router(metrics.clone(), std::sync::Arc::new(review));
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on --metrics-bind-address {addr}"))?;
            tracing::info!(%addr, "serving metrics over HTTPS to authorised callers");
            servers.push(tokio::spawn(http::serve_tls(listener, router, METRICS_LIMITS, tls, until(shutdown))));
        }
        Some(addr) => {
            tracing::warn!(%addr, "--metrics-secure=false: serving metrics over plain HTTP to anyone who can connect");
            servers.push(tokio::spawn(http::serve(
                addr,
                http::router(metrics.clone(), health.clone()),
                until(shutdown),
            )));
        }
        None => {}
    }
    if let Some(addr) = health_addr
        && Some(addr) != metrics_addr
    {
        servers.push(tokio::spawn(http::serve(addr, http::router(metrics.clone(), health.clone()), until(shutdown))));
    }
    Ok(servers)
}

/// The backup defaults the build uses and the scheduler's settings, from the flags.
fn backup_settings(
    args: &OperatorArgs,
) -> Result<(tsdb_operator_core::backup::protocol::BackupDefaults, controller::backup::BackupConfig)> {
    let shared_credentials = shared_credentials(args)?;
    let backup_defaults = tsdb_operator_core::backup::protocol::BackupDefaults {
        endpoint: args.s3_endpoint.clone(),
        region: args.s3_region.clone(),
        local_dir: args.backup_dir.clone(),
        shared_credentials: shared_credentials.is_some(),
    };
    let backup_config = controller::backup::BackupConfig {
        defaults: backup_defaults.clone(),
        tick: Duration::from_secs(args.backup_tick_seconds.max(1)),
        gc_grace: tsdb_operator_core::duration::parse(&args.backup_gc_grace)
            .map_err(|e| anyhow::anyhow!("--backup-gc-grace {:?}: {e}", args.backup_gc_grace))?,
        shared_credentials,
        ..controller::backup::BackupConfig::default()
    };
    Ok((backup_defaults, backup_config))
}

/// `--s3-credentials-secret` as (namespace, name); a bare name is in `--leader-election-namespace` ($POD_NAMESPACE).
fn shared_credentials(args: &OperatorArgs) -> Result<Option<(String, String)>> {
    let flag = &args.s3_credentials_secret;
    let parsed = match flag.split_once('/') {
        _ if flag.is_empty() => return Ok(None),
        Some((ns, name)) => (ns.to_owned(), name.to_owned()),
        None => (args.leader_election_namespace.clone(), flag.clone()),
    };
    let valid = |s: &str| tsdb_operator_core::validate::names::check_dns1123_subdomain(s).is_ok();
    anyhow::ensure!(
        valid(&parsed.0) && valid(&parsed.1),
        "--s3-credentials-secret {flag:?}: give NAMESPACE/NAME or NAME of an existing Secret"
    );
    Ok(Some(parsed))
}

/// Starts the audit trail when `--audit-dsn` names a database: the store (schema migrated), the spool and its
/// shipper, the pruner, and the recording of every operator event. `None` when the trail is off.
async fn start_audit(
    seed: &seed_flags::SeedFlags,
    events: &tsdb_operator_adapters::events::EventBus,
    metrics: &Metrics,
    shutdown: &watch::Receiver<bool>,
) -> Result<Option<(audit::Audit, audit::store::SqlStore)>> {
    if seed.audit_dsn.is_empty() {
        return Ok(None);
    }
    let shown = audit::store::redact(&seed.audit_dsn);
    let mut attempt = 0;
    let store = loop {
        attempt += 1;
        match audit::store::SqlStore::connect(&seed.audit_dsn).await {
            Ok(store) => break std::sync::Arc::new(store),
            Err(e) if attempt < 5 && !matches!(e, audit::store::Error::Dsn { .. }) => {
                tracing::warn!(error = %tsdb_operator_adapters::error_chain(&e), dsn = %shown, "audit database not ready; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot open the audit trail's database {shown} (--audit-dsn); the operator starts once it can"
                )));
            }
        }
    };
    let audit_metrics = audit::AuditMetrics::register(metrics);
    let (recorder, _pipeline) = audit::start(
        store.clone(),
        std::path::Path::new(&seed.audit_spool_dir),
        audit::Limits::default(),
        audit_metrics.clone(),
    )
    .with_context(|| format!("cannot open the audit spool in {} (--audit-spool-dir)", seed.audit_spool_dir))?;
    audit::follow_events(events, recorder.clone());
    tokio::spawn(audit::prune(store.clone(), seed.audit_retention_days, audit_metrics, until(shutdown)));
    tracing::info!(dsn = %shown, spool = %seed.audit_spool_dir, "recording the audit trail");
    Ok(Some((recorder, (*store).clone())))
}

/// Bounds of the REST API server.
const API_LIMITS: http::Limits = http::Limits { max_connections: 128, header_read_timeout: Duration::from_secs(10) };

/// Starts the REST API (every replica serves it: its writes go through the API server, not the fenced client)
/// with its certificate: mounted files, or the operator's own, kept current by a task that runs until shutdown.
async fn start_api(
    args: &OperatorArgs,
    client: &kube::Client,
    audit: Option<(audit::Audit, audit::store::SqlStore)>,
    health: &Health,
    shutdown: &watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<std::io::Result<()>>>> {
    let Some(addr) = parse_addr(&args.seed.api_address)? else {
        anyhow::bail!("--enable-api needs --api-address (HOST:PORT or :PORT), not 0");
    };
    let mut tasks = Vec::new();
    let certificates = args.seed.api_certificates(&args.leader_election_namespace);
    let source = certificate_source(args, client, certificates, health, shutdown, &mut tasks);
    let config = tls::server_config(&source).context("cannot serve the REST API over HTTPS")?;
    let (audit, audit_store) = audit.unzip();
    let router = api::router(api::Parts {
        authorizer: api::ports::CachedAuthorizer::new(
            api::ports::KubeAuthorizer::new(client.clone()),
            api::ports::CacheTtl::default(),
        ),
        clusters: api::ports::KubeClusters::new(client.clone()),
        audit_store,
        audit,
        settings: api::Settings { namespace: args.seed.api_namespace.clone(), backups_enabled: args.enable_backup },
    });
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on --api-address {addr}"))?;
    tracing::info!(%addr, namespace = %args.seed.api_namespace, "serving the REST API over HTTPS to authorised callers");
    tasks.push(tokio::spawn(http::serve_tls(listener, router, API_LIMITS, config, until(shutdown))));
    Ok(tasks)
}

/// Bounds of the webhook server: the API server keeps a few connections open and reuses them.
const WEBHOOK_LIMITS: http::Limits = http::Limits { max_connections: 64, header_read_timeout: Duration::from_secs(10) };

/// Starts the admission webhook server (every replica serves it, leader or not) with its certificate: mounted
/// files, or the operator's own, kept current by a task that runs until shutdown.
async fn start_webhook(
    args: &OperatorArgs,
    client: &kube::Client,
    audit: Option<audit::Audit>,
    health: &Health,
    shutdown: &watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<std::io::Result<()>>>> {
    let Some(addr) = parse_addr(&args.seed.webhook_bind_address)? else {
        anyhow::bail!("--enable-webhook needs --webhook-bind-address (HOST:PORT or :PORT), not 0");
    };
    let mut tasks = Vec::new();
    let certificates = args.seed.webhook_certificates(&args.leader_election_namespace);
    let source = certificate_source(args, client, certificates, health, shutdown, &mut tasks);
    let config = tls::server_config(&source).context("cannot serve the webhook over HTTPS")?;
    let router = webhook::router(std::sync::Arc::new(webhook::KubeStorage::new(client.clone())), audit);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on --webhook-bind-address {addr}"))?;
    tracing::info!(%addr, "serving the admission webhook");
    tasks.push(tokio::spawn(http::serve_tls(listener, router, WEBHOOK_LIMITS, config, until(shutdown))));
    Ok(tasks)
}

/// The TLS source of a server: mounted files as they are; the operator's own certificate is kept current by a
/// task pushed onto `tasks`, and the replica is not ready until it is loaded.
fn certificate_source(
    args: &OperatorArgs,
    client: &kube::Client,
    certificates: seed_flags::Certificates,
    health: &Health,
    shutdown: &watch::Receiver<bool>,
    tasks: &mut Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
) -> tls::TlsSource {
    match certificates {
        seed_flags::Certificates::Files(files) => files,
        seed_flags::Certificates::Managed(settings) => {
            let managed = std::sync::Arc::new(certificate::ManagedCertificate::new(client.clone(), settings));
            let loaded = managed.clone();
            health.also_wait_for(move || loaded.is_loaded());
            let every = Duration::from_secs(args.seed.webhook_certificate_check_seconds.max(1));
            let keeper = managed.clone().keep_current(every, until(shutdown));
            tasks.push(tokio::spawn(async move {
                keeper.await;
                Ok(())
            }));
            tls::TlsSource::Resolver(managed)
        }
    }
}

/// Bounds of the secure metrics server: scrapers are few.
const METRICS_LIMITS: http::Limits = http::Limits { max_connections: 32, header_read_timeout: Duration::from_secs(10) };

/// The machine's host name (the pod name in a pod), if it can be read.
fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned()).filter(|h| !h.is_empty())
}

fn parse_addr(s: &str) -> Result<Option<SocketAddr>> {
    if s == "0" || s.is_empty() {
        return Ok(None);
    }
    let full = if s.starts_with(':') { format!("0.0.0.0{s}") } else { s.to_owned() };
    Ok(Some(full.parse().with_context(|| format!("invalid address {s:?}: use HOST:PORT, :PORT or 0"))?))
}

/// A watch channel that turns true on SIGTERM or SIGINT.
fn shutdown_signal() -> Result<watch::Receiver<bool>> {
    let (tx, rx) = watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    Ok(rx)
}

fn until(rx: &watch::Receiver<bool>) -> impl std::future::Future<Output = ()> + Send + Sync + 'static {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|v| *v).await;
    }
}

async fn config_from(kubeconfig: Option<&PathBuf>) -> Result<kube::Config> {
    Ok(match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("failed to read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer().await.context("failed to find a Kubernetes configuration")?,
    })
}

/// The operator's clients: one for everything, whose writes pass only while `fence` allows them, and one without
/// the fence for the leader election. Both name this process in their User-Agent, so the API server's audit log
/// tells the replicas apart.
fn clients(mut config: kube::Config, identity: &str, fence: leader::Fence) -> Result<(kube::Client, kube::Client)> {
    let agent = format!("tsdb-operator/{} ({identity})", env!("CARGO_PKG_VERSION"));
    let agent = ::http::HeaderValue::from_str(&agent).context("the identity is not a valid header value")?;
    config.headers.push((::http::header::USER_AGENT, agent));
    let election = kube::Client::try_from(config.clone())?;
    let fenced = kube::client::ClientBuilder::try_from(config)?.with_layer(&leader::FenceLayer(fence)).build();
    Ok((fenced, election))
}

async fn run_operator(args: OperatorArgs) -> Result<()> {
    args.seed.refuse_unavailable()?;
    let metrics_addr = parse_addr(&args.metrics_bind_address)?;
    let health_addr = parse_addr(&args.health_probe_bind_address)?;
    if args.seed.metrics_secure && metrics_addr.is_some() && metrics_addr == health_addr {
        anyhow::bail!(
            "--health-probe-bind-address and --metrics-bind-address are both {}: with --metrics-secure the \
             health endpoints stay plain HTTP on their own address; give them different ports or set \
             --metrics-secure=false",
            args.metrics_bind_address
        );
    }
    if args.seed.enable_http2 {
        tracing::warn!("--enable-http2=true: the operator's servers speak HTTP/1.1 only");
    }
    let (backup_defaults, backup_config) = backup_settings(&args)?;
    let shutdown = shutdown_signal()?;
    let identity = args.identity.clone().or_else(hostname).unwrap_or_default();
    let identity = format!("{identity}-{}", std::process::id());
    let fence = if args.leader_elect { leader::Fence::closed() } else { leader::Fence::open() };
    let (client, election_client) = clients(config_from(args.kubeconfig.as_ref()).await?, &identity, fence.clone())?;
    let pdb_api =
        discovery::discover_pdb_api(&client).await.context("failed to discover the PodDisruptionBudget API")?;
    let enable_backup = args.enable_backup;
    let enable_healing = args.seed.enable_ha;
    if !enable_healing {
        tracing::warn!("--enable-ha=false: self-healing is off for every cluster, whatever its spec.selfHealing says");
    }
    let settings = BuildSettings { agent_image: args.agent_image.clone(), pdb_api, backup: backup_defaults };
    let metrics = Metrics::new();
    let health = Health::default();
    let events = EventBus::new(client.clone(), &identity);
    let ctx = std::sync::Arc::new(Context {
        concurrency: args.concurrency.max(1),
        namespace: args.watch_namespace.clone(),
        ..Context::new(client.clone(), settings, metrics.clone(), events)
    });

    let mut servers =
        start_servers((metrics_addr, health_addr), &args.seed, &election_client, &metrics, &health, &shutdown).await?;
    let audit = start_audit(&args.seed, &ctx.events, &metrics, &shutdown).await?;
    if args.seed.enable_webhook {
        let recorder = audit.as_ref().map(|(recorder, _)| recorder.clone());
        servers.extend(start_webhook(&args, &election_client, recorder, &health, &shutdown).await?);
    }
    if args.seed.enable_api {
        servers.extend(start_api(&args, &election_client, audit, &health, &shutdown).await?);
    }
    tracing::info!(%identity, pdb = pdb_api.api_version(), leader_elect = args.leader_elect, "operator starting");

    let run_controllers = move |ctx: std::sync::Arc<Context>, stop: watch::Receiver<bool>| {
        let backup_config = backup_config.clone();
        async move {
            // One store of PrometheusClusters, filled by the cluster controller's watch, read by all three.
            let (clusters, writer) = reflector::store::<PrometheusCluster>();
            let clusters_for_sets = clusters.clone();
            let healer = {
                let (ctx, clusters, stop) = (ctx.clone(), clusters.clone(), until(&stop));
                Box::pin(async move {
                    if enable_healing {
                        controller::heal::run(ctx, controller::heal::HealerConfig::default(), clusters, stop).await;
                    }
                })
            };
            let backups = async {
                if enable_backup {
                    controller::backup::run(ctx.clone(), backup_config, clusters, until(&stop)).await;
                }
            };
            if ctx.namespace.is_some() {
                tokio::join!(controller::cluster::run(ctx.clone(), writer, until(&stop)), healer, backups);
            } else {
                tokio::join!(
                    controller::cluster::run(ctx.clone(), writer, until(&stop)),
                    controller::clusterset::run(ctx.clone(), clusters_for_sets, until(&stop)),
                    healer,
                    backups,
                );
            }
        }
    };

    let exit_code = if args.leader_elect {
        run_with_election(&args, (election_client, fence), &identity, &health, &metrics, &shutdown, || {
            let (stop_tx, stop_rx) = watch::channel(false);
            (stop_tx, tokio::spawn(run_controllers(ctx.clone(), stop_rx)))
        })
        .await?
    } else {
        health.set_ready(true);
        Box::pin(run_controllers(ctx.clone(), shutdown.clone())).await;
        0
    };
    for s in servers {
        let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
    }
    if exit_code != 0 {
        std::process::exit(exit_code);
    }
    Ok(())
}

/// Competes for the Lease; runs the controllers (started by `start`) while this process leads. Returns the exit
/// code: 1 when the Lease was lost, 0 on a shutdown signal.
async fn run_with_election(
    args: &OperatorArgs,
    (client, fence): (kube::Client, leader::Fence),
    identity: &str,
    health: &Health,
    metrics: &Metrics,
    shutdown: &watch::Receiver<bool>,
    start: impl FnOnce() -> (watch::Sender<bool>, tokio::task::JoinHandle<()>),
) -> Result<i32> {
    let mut election = leader::start(
        client,
        fence,
        &args.leader_election_namespace,
        &args.leader_election_id,
        identity,
        args.leader_election_lease_seconds,
        (args.leader_election_lease_seconds / 3).max(1),
    )
    .await
    .context("failed to start leader election")?;
    health.set_ready(true);
    let mut sd = shutdown.clone();
    let acquired = tokio::select! {
        acquired = election.acquired() => acquired,
        _ = sd.wait_for(|v| *v) => false,
    };
    let mut exit_code = 0;
    if acquired {
        tracing::info!(%identity, "became the leader");
        metrics.leader.set(1);
        let (stop_tx, controllers) = start();
        tokio::select! {
            _ = sd.wait_for(|v| *v) => {}
            () = election.lost() => {
                tracing::error!("lost the leader lease; stopping");
                exit_code = 1;
            }
        }
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(20), controllers).await;
        metrics.leader.set(0);
    }
    election.release().await;
    Ok(exit_code)
}

async fn run_agent(args: AgentArgs) -> Result<()> {
    if args.expand_only {
        let out = args.expand_dir.as_deref().context("--expand-only needs --expand-dir")?;
        agent::expand_config(&args.config_dir, out)
            .with_context(|| format!("failed to expand the monitors' scrape configs into {}", out.display()))?;
        return Ok(());
    }
    let shutdown = shutdown_signal()?;
    let backup = tsdb_operator_adapters::backup::agent::BackupAgentConfig {
        take: tsdb_operator_adapters::backup::take::TakeConfig {
            prometheus_url: args.prometheus_url.clone(),
            data_dir: args.data_dir,
            credentials_dir: args.credentials_dir,
            tuning: tsdb_operator_adapters::backup::store::Tuning::default(),
        },
        token_dir: args.token_dir,
    };
    agent::run(
        agent::AgentConfig {
            config_dir: args.config_dir,
            prometheus_url: args.prometheus_url,
            poll: Duration::from_secs(args.poll_seconds.max(1)),
            listen: args.listen,
            proxy_listen: parse_addr(&args.proxy_listen)?,
            backup: Some(backup),
            expand_dir: args.expand_dir,
        },
        until(&shutdown),
    )
    .await?;
    Ok(())
}

/// The init container's restore: only into an empty data directory, so a running cluster is never restored
/// over; verified file by file before anything appears in the data directory.
async fn run_restore(args: RestoreArgs) -> Result<()> {
    use tsdb_operator_adapters::backup::restore;
    // An interrupted restore is undone here and runs again: its blocks are not data of the volume's own.
    if let Some(entry) = restore::existing_data(&args.dest)? {
        tracing::info!(dest = %args.dest.display(), %entry, "the data directory already holds data; nothing to restore");
        return Ok(());
    }
    let store = args.store.open()?;
    let (layout, id) = store_args::find_backup(&store, &args.store, &args.which).await?;
    tracing::info!(root = layout.root(), %id, dest = %args.dest.display(), "restoring");
    let last = std::sync::Mutex::new(0u64);
    let progress: restore::ProgressFn = std::sync::Arc::new(move |p: restore::Progress| {
        let pct = (p.bytes_done * 100).checked_div(p.bytes_total).unwrap_or(100);
        let mut last = last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if pct >= *last + 10 || p.files_done == p.files_total {
            *last = pct;
            tracing::info!(
                files = p.files_done,
                of = p.files_total,
                bytes = p.bytes_done,
                total = p.bytes_total,
                "restore progress"
            );
        }
    });
    let done = restore::restore(&store, &layout, &id, &args.dest, false, Some(progress)).await?;
    tracing::info!(%id, blocks = done.blocks, files = done.files, bytes = done.bytes, "restore complete");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    // object_store brings aws-lc-rs next to kube's ring: pick one for rustls, or kube's TLS setup panics.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse_from(seed_flags::normalize_go_args(std::env::args_os()));
    let plain = |format: &str| seed_flags::LogSettings {
        format: format.to_owned(),
        filter: seed_flags::DEFAULT_FILTER.to_owned(),
    };
    match cli.command {
        Some(Command::Crd) => {
            print!("{}", tsdb_operator_core::crd::crds_yaml()?);
            Ok(())
        }
        Some(Command::Agent(AgentCli { command: Some(AgentCommand::Restore(args)), .. })) => {
            init_tracing(&plain("text"));
            run_restore(args).await
        }
        Some(Command::Agent(AgentCli { command: None, run })) => {
            init_tracing(&plain(&run.log_format));
            run_agent(run).await
        }
        Some(Command::Operator(args)) => {
            init_tracing(&args.seed.log_settings(&args.log_format));
            Box::pin(run_operator(args)).await
        }
        None => {
            init_tracing(&cli.operator.seed.log_settings(&cli.operator.log_format));
            Box::pin(run_operator(cli.operator)).await
        }
    }
}
