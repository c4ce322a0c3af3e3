//! The agent sidecar (`tsdb-operator agent`), replacing the seed's configmap-reload image: it watches the mounted
//! configuration and asks its local Prometheus to reload when it changes, and reports the outcome on
//! `GET /status` (JSON) and `/metrics` so the operator can show reload failures. Prometheus keeps its old
//! configuration when a reload fails. It also serves the pod's Prometheus port in front of Prometheus, which
//! listens on the loopback address only (see [`crate::web_proxy`]). I/O: the file system, HTTP to Prometheus on
//! localhost, two listeners.
//!
//! Both listeners are bounded ([`crate::http::serve_bounded`]): connections, header read time, and on the agent's
//! own port 10 s for each part of a body and a 30 s request timeout. If either server stops, the agent exits, so the kubelet restarts it.
//!
//! # Flow
//! Every `poll` interval the agent hashes the regular files of the config directory (following the kubelet's
//! `..data` symlink, skipping its hidden entries). When the hash changes it POSTs `/-/reload`; transport errors
//! (Prometheus restarting) are retried a few times, an HTTP error is a failed reload with Prometheus' message.
//! A reload counts only when Prometheus says it loaded the configuration (`/api/v1/status/runtimeinfo`); a failed
//! one is tried again without waiting for another change, and between reloads Prometheus' own view is shown. The
//! rules are the core's ([`tsdb_operator_core::reload`]).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use k8s_openapi::jiff::Timestamp;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::sync::RwLock;
use tsdb_operator_core::reload::{self, AgentStatus};

/// Settings of the agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The mounted configuration directory.
    pub config_dir: PathBuf,
    /// Base URL of the local Prometheus.
    pub prometheus_url: String,
    /// How often to look for changes.
    pub poll: Duration,
    /// Where to serve `/status`, `/metrics` and `/healthz`.
    pub listen: SocketAddr,
    /// Where to serve Prometheus' web API in front of `prometheus_url` (the pod's port 9090); `None`: not served.
    pub proxy_listen: Option<SocketAddr>,
    /// Backup endpoints (`/backup`); see [`crate::backup::agent`].
    pub backup: Option<crate::backup::agent::BackupAgentConfig>,
    /// Where to expand the monitors' scrape configs from `config_dir` ([`expand_config`]) before every reload;
    /// `None`: nothing to expand.
    pub expand_dir: Option<PathBuf>,
}

/// Writes `monitor-scrape-configs.yml` into `out_dir` from the configuration directory: gunzipped from
/// `monitor-scrape-configs.yml.gz` when the ConfigMap holds it compressed, else copied (an empty job list when
/// neither is there). Replaces the file atomically (a rename), so Prometheus never reads half of it, and only when
/// its content changes. Returns whether it changed.
///
/// # Errors
/// The files cannot be read, decompressed or written.
pub fn expand_config(config_dir: &Path, out_dir: &Path) -> std::io::Result<bool> {
    use std::io::Read as _;
    use tsdb_operator_core::build::config::{MONITOR_SCRAPE_GZ_KEY, MONITOR_SCRAPE_KEY};
    let compressed = config_dir.join(MONITOR_SCRAPE_GZ_KEY);
    let plain = config_dir.join(MONITOR_SCRAPE_KEY);
    let content = if compressed.exists() {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&compressed)?).read_to_end(&mut out)?;
        out
    } else if plain.exists() {
        std::fs::read(&plain)?
    } else {
        b"scrape_configs: []\n".to_vec()
    };
    let target = out_dir.join(MONITOR_SCRAPE_KEY);
    if std::fs::read(&target).is_ok_and(|old| old == content) {
        return Ok(false);
    }
    let temporary = out_dir.join(format!(".{MONITOR_SCRAPE_KEY}.tmp"));
    std::fs::write(&temporary, &content)?;
    std::fs::rename(&temporary, &target)?;
    Ok(true)
}

/// Reloads by result (`tsdb_operator_agent_reload_total`).
type ReloadCounter = Family<Vec<(String, String)>, Counter>;

#[derive(Clone)]
struct Shared {
    status: Arc<RwLock<AgentStatus>>,
    registry: Arc<std::sync::Mutex<Registry>>,
}

/// Hashes the regular files under `dir` (following symlinks), skipping entries whose name starts with `..`.
pub fn hash_config_dir(dir: &Path) -> std::io::Result<String> {
    let mut files = Vec::new();
    collect_files(dir, dir, &mut files)?;
    files.sort();
    let mut hasher = DefaultHasher::new();
    for (rel, content) in files {
        rel.hash(&mut hasher);
        content.hash(&mut hasher);
    }
    Ok(format!("{:016x}", hasher.finish()))
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("..") {
            continue;
        }
        let path = entry.path();
        let meta = std::fs::metadata(&path)?;
        if meta.is_dir() {
            collect_files(root, &path, out)?;
        } else if meta.is_file() {
            let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
            out.push((rel, std::fs::read(&path)?));
        }
    }
    Ok(())
}

/// Asks Prometheus to reload. Transport errors are retried up to 5 times, 1 s apart.
pub async fn reload(client: &reqwest::Client, prometheus_url: &str) -> Result<(), String> {
    let url = format!("{}/-/reload", prometheus_url.trim_end_matches('/'));
    let mut last = String::new();
    for _ in 0..5 {
        match client.post(&url).send().await {
            Ok(resp) if resp.status().is_success() => return Ok(()),
            Ok(resp) => {
                let code = resp.status();
                let body = resp.text().await.unwrap_or_default();
                return Err(format!("Prometheus answered {code}: {}", body.trim()));
            }
            Err(e) => {
                last = format!("failed to reach Prometheus at {url}: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    Err(last)
}

/// Limits of the agent's own port (status, metrics, backup requests from the operator).
const AGENT_LIMITS: crate::http::Limits =
    crate::http::Limits { max_connections: 64, header_read_timeout: Duration::from_secs(10) };

/// Limits of the Prometheus port (queries from users, Grafana, federation, scrapes).
const PROXY_LIMITS: crate::http::Limits =
    crate::http::Limits { max_connections: 512, header_read_timeout: Duration::from_secs(10) };

/// Runs the agent until `shutdown` resolves; an error if one of its servers fails.
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut registry = Registry::default();
    let reloads = ReloadCounter::default();
    let last_ok = Gauge::<i64>::default();
    let refused = crate::web_proxy::RefusedCounter::default();
    // Every series starts at zero, so that the first failure or refusal is an increase alerts can see.
    for result in ["success", "error"] {
        drop(reloads.get_or_create(&vec![("result".to_owned(), result.to_owned())]));
    }
    for reason in tsdb_operator_core::web::Refusal::ALL {
        drop(refused.get_or_create(&vec![("reason".to_owned(), reason.category().to_owned())]));
    }
    registry.register("tsdb_operator_agent_reload", "Configuration reloads by result", reloads.clone());
    registry.register(
        "tsdb_operator_agent_config_last_reload_successful",
        "1 when the last configuration reload succeeded",
        last_ok.clone(),
    );
    registry.register(
        "tsdb_operator_agent_proxy_refused",
        "Requests to the Prometheus port refused by reason (admin_api, lifecycle, non_canonical_path)",
        refused.clone(),
    );
    last_ok.set(1);
    let initial = hash_config_dir(&config.config_dir).unwrap_or_default();
    if let Some(out) = &config.expand_dir {
        // The init container expanded this configuration already; this covers a sidecar restarted after a change.
        if let Err(e) = expand_config(&config.config_dir, out) {
            tracing::warn!(error = %e, dir = %out.display(), "cannot expand the monitors' scrape configs");
        }
    }
    let shared = Shared {
        status: Arc::new(RwLock::new(AgentStatus {
            config_hash: initial.clone(),
            last_reload_successful: true,
            ..AgentStatus::default()
        })),
        registry: Arc::new(std::sync::Mutex::new(registry)),
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/status", get(status_handler))
        .route("/metrics", get(metrics_handler))
        .with_state(shared.clone());
    let app = match config.backup.clone() {
        Some(backup) => app.merge(crate::backup::agent::BackupAgent::new(backup).router()),
        None => app,
    };
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(Duration::from_secs(10))).layer(
        tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(30),
        ),
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut servers = tokio::task::JoinSet::new();
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    servers.spawn(crate::http::serve_bounded(listener, app, AGENT_LIMITS, stopped()));
    if let Some(addr) = config.proxy_listen {
        let proxy = crate::web_proxy::router(&config.prometheus_url, refused).map_err(std::io::Error::other)?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        servers.spawn(crate::http::serve_bounded(listener, proxy, PROXY_LIMITS, stopped()));
        tracing::info!(listen = %addr, prometheus = %config.prometheus_url, "serving the Prometheus port");
    }
    tracing::info!(listen = %config.listen, dir = %config.config_dir.display(), "agent started");

    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().map_err(std::io::Error::other)?;
    let mut state = reload::started(initial);
    let mut tick = tokio::time::interval(config.poll);
    tokio::pin!(shutdown);
    let outcome = loop {
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            ended = servers.join_next() => {
                let error = match ended {
                    Some(Ok(Err(e))) => e,
                    Some(Err(e)) => std::io::Error::other(e),
                    Some(Ok(Ok(()))) | None => std::io::Error::other("a server stopped"),
                };
                tracing::error!(error = %error, "an agent server stopped; exiting");
                break Err(error);
            }
            _ = tick.tick() => {}
        }
        check_config(&config, &client, &shared, &mut state, (&reloads, &last_ok)).await;
    };
    let _ = stop_tx.send(true);
    while servers.join_next().await.is_some() {}
    outcome
}

/// One poll: reloads Prometheus when the core says so ([`reload::should_reload`]: the configuration changed, or a
/// failed one is due again), judges the reload by what Prometheus says it loaded ([`reload::after_reload`]), and
/// between reloads takes Prometheus' own view ([`reload::observed`]); then publishes the state.
async fn check_config(
    config: &AgentConfig,
    client: &reqwest::Client,
    shared: &Shared,
    state: &mut reload::State,
    (reloads, last_ok): (&ReloadCounter, &Gauge<i64>),
) {
    let hash = match hash_config_dir(&config.config_dir) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the config directory");
            return;
        }
    };
    let now = Timestamp::now();
    if reload::should_reload(state, &hash, now) {
        if hash == state.hash {
            tracing::info!(hash = %hash, "trying the configuration Prometheus did not load again");
        } else {
            tracing::info!(old = %state.hash, new = %hash, "configuration changed; reloading Prometheus");
        }
        let expanded = match &config.expand_dir {
            Some(out) => expand_config(&config.config_dir, out)
                .map(|_| ())
                .map_err(|e| format!("cannot expand the monitors' scrape configs into {}: {e}", out.display())),
            None => Ok(()),
        };
        let asked = Timestamp::now();
        let answer = match expanded {
            Ok(()) => reload(client, &config.prometheus_url).await,
            Err(e) => Err(e),
        };
        let loaded = runtime_info(client, &config.prometheus_url).await;
        *state = reload::after_reload(state, &hash, answer, loaded, asked, Timestamp::now(), config.poll);
        match &state.failure {
            None => {
                reloads.get_or_create(&vec![("result".to_owned(), "success".to_owned())]).inc();
                tracing::info!("Prometheus reloaded its configuration");
            }
            Some(failure) => {
                reloads.get_or_create(&vec![("result".to_owned(), "error".to_owned())]).inc();
                tracing::warn!(error = %failure.error, tries = failure.tries, retry_at = ?failure.retry_at,
                    "Prometheus did not load the new configuration; it keeps the old one");
            }
        }
    } else if let Some(loaded) = runtime_info(client, &config.prometheus_url).await {
        let before = state.failure.is_some();
        *state = reload::observed(state, loaded, now);
        match (&state.failure, before) {
            (Some(failure), false) => tracing::warn!(error = %failure.error, "Prometheus reports a failed load"),
            (None, true) => tracing::info!("Prometheus has loaded a configuration since the failure; cleared"),
            _ => {}
        }
    }
    last_ok.set(i64::from(state.failure.is_none()));
    let mut status = shared.status.write().await;
    status.config_hash.clone_from(&state.hash);
    status.last_reload_successful = state.failure.is_none();
    status.last_reload_error = state.failure.as_ref().map(|f| f.error.clone());
    status.reloads = state.attempts;
}

/// What Prometheus says about its configuration (`GET /api/v1/status/runtimeinfo`); `None` when it cannot be asked
/// (not answering, or a version without the endpoint).
pub async fn runtime_info(client: &reqwest::Client, prometheus_url: &str) -> Option<reload::Loaded> {
    #[derive(Deserialize)]
    struct Answer {
        data: RuntimeInfo,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct RuntimeInfo {
        reload_config_success: bool,
        last_config_time: Timestamp,
    }
    let url = format!("{}/api/v1/status/runtimeinfo", prometheus_url.trim_end_matches('/'));
    let answer = client.get(&url).timeout(Duration::from_secs(5)).send().await.ok()?.error_for_status().ok()?;
    let info = answer.json::<Answer>().await.ok()?.data;
    Some(reload::Loaded { success: info.reload_config_success, at: info.last_config_time })
}

async fn status_handler(State(shared): State<Shared>) -> Json<AgentStatus> {
    Json(shared.status.read().await.clone())
}

async fn metrics_handler(State(shared): State<Shared>) -> String {
    crate::metrics::encode_registry(&shared.registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_changes_with_content_and_ignores_kubelet_internal_entries() {
        let dir = std::env::temp_dir().join(format!("tsdb-agent-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("..2026_01_01")).unwrap();
        std::fs::write(dir.join("prometheus.yml"), "a").unwrap();
        let h1 = hash_config_dir(&dir).unwrap();
        std::fs::write(dir.join("..2026_01_01/prometheus.yml"), "ignored").unwrap();
        assert_eq!(h1, hash_config_dir(&dir).unwrap());
        std::fs::write(dir.join("prometheus.yml"), "b").unwrap();
        assert_ne!(h1, hash_config_dir(&dir).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_monitors_file_is_expanded_from_gzip_or_copied_and_replaced_only_when_it_changes() {
        use tsdb_operator_core::build::config::{MONITOR_SCRAPE_GZ_KEY, MONITOR_SCRAPE_KEY, gzip};
        let root = std::env::temp_dir().join(format!("tsdb-agent-expand-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (config, out) = (root.join("config"), root.join("out"));
        std::fs::create_dir_all(&config).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        let read = || std::fs::read_to_string(out.join(MONITOR_SCRAPE_KEY)).unwrap();

        assert!(expand_config(&config, &out).unwrap(), "nothing yet: an empty job list");
        assert_eq!(read(), "scrape_configs: []\n");
        assert!(!expand_config(&config, &out).unwrap(), "unchanged: not rewritten");

        std::fs::write(config.join(MONITOR_SCRAPE_KEY), "scrape_configs:\n- job_name: plain\n").unwrap();
        assert!(expand_config(&config, &out).unwrap());
        assert_eq!(read(), "scrape_configs:\n- job_name: plain\n");

        let big = format!("scrape_configs:\n{}", "- job_name: zipped\n".repeat(1000));
        std::fs::remove_file(config.join(MONITOR_SCRAPE_KEY)).unwrap();
        std::fs::write(config.join(MONITOR_SCRAPE_GZ_KEY), gzip(big.as_bytes())).unwrap();
        assert!(expand_config(&config, &out).unwrap());
        assert_eq!(read(), big);
        assert!(!out.join(format!(".{MONITOR_SCRAPE_KEY}.tmp")).exists(), "the temporary file was renamed");

        std::fs::write(config.join(MONITOR_SCRAPE_GZ_KEY), b"not gzip").unwrap();
        assert!(expand_config(&config, &out).is_err(), "a corrupt file is an error, the old content stays");
        assert_eq!(read(), big);
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A Prometheus that answers every reload 200 and says about itself what the test sets.
    #[derive(Default)]
    struct Fake {
        reloads: u32,
        success: bool,
        loaded_at: i64,
        /// Applied on a reload: whether it loads (`success` and `loaded_at` move) or only answers 200.
        loads: bool,
    }

    async fn fake_prometheus(fake: Arc<std::sync::Mutex<Fake>>) -> (String, tokio::task::JoinHandle<()>) {
        use axum::routing::post;
        let reload_state = fake.clone();
        let app = Router::new()
            .route(
                "/-/reload",
                post(move || {
                    let fake = reload_state.clone();
                    async move {
                        let mut f = fake.lock().unwrap();
                        f.reloads += 1;
                        if f.loads {
                            f.success = true;
                            f.loaded_at = Timestamp::now().as_second();
                        }
                    }
                }),
            )
            .route(
                "/api/v1/status/runtimeinfo",
                get(move || {
                    let fake = fake.clone();
                    async move {
                        let f = fake.lock().unwrap();
                        let at = Timestamp::from_second(f.loaded_at).unwrap();
                        Json(serde_json::json!({"status": "success",
                            "data": {"reloadConfigSuccess": f.success, "lastConfigTime": at.to_string()}}))
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        (url, tokio::spawn(async move { axum::serve(listener, app).await.unwrap() }))
    }

    /// Row 14's "reload OK but not applied": Prometheus answers the reload 200 but does not load the files. The
    /// agent reports it from Prometheus' own view, tries again without another change, and reports success once
    /// Prometheus loads them.
    #[tokio::test]
    async fn a_reload_answered_ok_that_did_not_load_is_reported_and_retried_until_it_loads() {
        let dir = std::env::temp_dir().join(format!("tsdb-agent-reload-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("prometheus.yml"), "a").unwrap();
        let started = Timestamp::now().as_second() - 3600;
        let fake = Arc::new(std::sync::Mutex::new(Fake { success: true, loaded_at: started, ..Fake::default() }));
        let (url, server) = fake_prometheus(fake.clone()).await;
        let config = AgentConfig {
            config_dir: dir.clone(),
            prometheus_url: url,
            poll: Duration::from_millis(50),
            listen: "127.0.0.1:0".parse().unwrap(),
            proxy_listen: None,
            backup: None,
            expand_dir: None,
        };
        let shared = Shared {
            status: Arc::new(RwLock::new(AgentStatus::default())),
            registry: Arc::new(std::sync::Mutex::new(Registry::default())),
        };
        let (reloads, last_ok) = (ReloadCounter::default(), Gauge::<i64>::default());
        let client = reqwest::Client::new();
        let mut state = reload::started(hash_config_dir(&dir).unwrap());
        let poll = async |state: &mut reload::State| {
            check_config(&config, &client, &shared, state, (&reloads, &last_ok)).await;
            shared.status.read().await.clone()
        };

        // Nothing changed: no reload, healthy.
        let status = poll(&mut state).await;
        assert!(status.last_reload_successful);
        assert_eq!(fake.lock().unwrap().reloads, 0);

        // The files change; Prometheus answers 200 but runs what it loaded an hour ago.
        std::fs::write(dir.join("prometheus.yml"), "b").unwrap();
        let status = poll(&mut state).await;
        assert_eq!(fake.lock().unwrap().reloads, 1);
        assert!(!status.last_reload_successful, "{status:?}");
        let error = status.last_reload_error.unwrap_or_default();
        assert!(error.contains("still runs the configuration it loaded at"), "{error}");
        assert_eq!(last_ok.get(), 0);

        // Answered 200 while Prometheus says the load failed.
        fake.lock().unwrap().success = false;
        tokio::time::sleep(Duration::from_millis(60)).await;
        let status = poll(&mut state).await;
        assert_eq!(fake.lock().unwrap().reloads, 2, "retried without another change");
        let error = status.last_reload_error.unwrap_or_default();
        assert!(error.contains("reloadConfigSuccess: false"), "{error}");

        // Prometheus loads on the next attempt (after the doubled wait): healthy, with no change of the files.
        fake.lock().unwrap().loads = true;
        let mut polls = 0;
        let status = loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            polls += 1;
            let status = poll(&mut state).await;
            if status.last_reload_successful || polls == 40 {
                break status;
            }
        };
        assert!(status.last_reload_successful, "{status:?}");
        assert_eq!(fake.lock().unwrap().reloads, 3);
        assert_eq!(status.reloads, 3);
        assert_eq!(last_ok.get(), 1);

        // Between reloads, a failed load Prometheus reports (another reloader, a restart) is shown.
        fake.lock().unwrap().success = false;
        let status = poll(&mut state).await;
        assert!(!status.last_reload_successful);
        assert_eq!(fake.lock().unwrap().reloads, 3, "a failure Prometheus reports is not retried by the agent");

        server.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
