//! The agent's configuration reloads against real Prometheus 2.53 and 3.5 (fault row 14): a reload Prometheus
//! refuses is reported with its message, and it is tried again without another change of the configuration
//! directory, so a file the configuration needs that arrives later (here a rule file outside the directory, in the
//! pod a Secret or a rule file mounted apart) is loaded within the retry wait. What Prometheus says about itself
//! (`/api/v1/status/runtimeinfo`) is read as the agent reads it.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use tsdb_operator_adapters::agent::{self, AgentConfig};
use tsdb_operator_adapters::agent_client;
use tsdb_operator_core::reload::AgentStatus;

/// A process stopped when the test ends, whatever happens.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port(ip: &str) -> SocketAddr {
    TcpListener::bind((ip, 0)).and_then(|l| l.local_addr()).expect("a free port")
}

const GOOD_RULES: &str = "groups:\n- name: g\n  rules:\n  - record: one\n    expr: vector(1)\n";
const BAD_RULES: &str = "groups:\n- name: g\n  rules:\n  - record: one\n    expr: vector(\n";

fn config(rules: &Path, comment: &str) -> String {
    format!("# {comment}\nglobal:\n  scrape_interval: 5s\nrule_files:\n- {}\nscrape_configs: []\n", rules.display())
}

fn start_prometheus(major: u32, dir: &Path, addr: SocketAddr) -> Running {
    let binary = std::env::var(format!("TSDB_PROMETHEUS{major}_BIN"))
        .expect("$TSDB_PROMETHEUS<major>_BIN is set: source ~/.cache/tsdb-operator/env.sh");
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("a log file");
    let child = Command::new(binary)
        .arg(format!("--config.file={}", dir.join("config/prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--web.enable-lifecycle")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("a log file"))
        .stderr(log)
        .spawn()
        .expect("Prometheus starts");
    Running(child)
}

async fn eventually<T>(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn scenario(major: u32, ip: &str) {
    let dir = std::env::temp_dir().join(format!("tsdb-reload-{major}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for sub in ["config", "rules", "data"] {
        std::fs::create_dir_all(dir.join(sub)).expect("a directory");
    }
    let rules = dir.join("rules/rules.yml");
    std::fs::write(&rules, GOOD_RULES).expect("rules written");
    std::fs::write(dir.join("config/prometheus.yml"), config(&rules, "first")).expect("config written");
    let prometheus_addr = free_port(ip);
    let _prometheus = start_prometheus(major, &dir, prometheus_addr);
    let prometheus_url = format!("http://{prometheus_addr}");
    let client = reqwest::Client::new();
    let ready = format!("{prometheus_url}/-/ready");
    let client_ = client.clone();
    eventually("Prometheus ready", Duration::from_secs(30), async || {
        client_.get(&ready).send().await.ok().filter(|r| r.status().is_success())
    })
    .await;
    let loaded = agent::runtime_info(&client, &prometheus_url).await.expect("runtimeinfo of a real Prometheus reads");
    assert!(loaded.success);
    assert!(loaded.at <= Timestamp::now() && loaded.at.as_second() > Timestamp::now().as_second() - 60);

    let agent_addr = free_port(ip);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(agent::run(
        AgentConfig {
            config_dir: dir.join("config"),
            prometheus_url: prometheus_url.clone(),
            poll: Duration::from_millis(200),
            listen: agent_addr,
            proxy_listen: None,
            backup: None,
            expand_dir: None,
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let status =
        async || -> Option<AgentStatus> { agent_client::status(&client, ip, i32::from(agent_addr.port())).await.ok() };
    let first = eventually("the agent answers", Duration::from_secs(10), status).await;
    assert!(first.last_reload_successful && first.reloads == 0, "{first:?}");

    // A new configuration whose rule file Prometheus refuses: reported with Prometheus' message.
    std::fs::write(&rules, BAD_RULES).expect("rules written");
    std::fs::write(dir.join("config/prometheus.yml"), config(&rules, "second")).expect("config written");
    let failed = eventually("the refused reload reported", Duration::from_secs(10), async || {
        status().await.filter(|s| !s.last_reload_successful)
    })
    .await;
    let error = failed.last_reload_error.clone().unwrap_or_default();
    assert!(error.contains("500") && error.contains("failed to reload config"), "Prometheus' message: {error}");
    let loaded = agent::runtime_info(&client, &prometheus_url).await.expect("runtimeinfo reads");
    assert!(!loaded.success, "Prometheus says the load failed too");

    // Only the rule file is fixed (the configuration directory does not change): the retry loads it.
    let fixed_at = Timestamp::now();
    std::fs::write(&rules, GOOD_RULES).expect("rules written");
    let healthy = eventually("the retried reload succeeds", Duration::from_secs(15), async || {
        status().await.filter(|s| s.last_reload_successful)
    })
    .await;
    assert!(healthy.reloads >= 2, "{healthy:?}");
    assert_eq!(healthy.config_hash, failed.config_hash, "no change of the configuration directory");
    let loaded = agent::runtime_info(&client, &prometheus_url).await.expect("runtimeinfo reads");
    assert!(loaded.success && loaded.at.as_second() >= fixed_at.as_second(), "{loaded:?}");
    eprintln!(
        "prometheus {major}: fixed at {fixed_at}, reported healthy after {:?}",
        Timestamp::now().duration_since(fixed_at)
    );

    let _ = stop.send(());
    agent.await.expect("the agent task").expect("the agent stops cleanly");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn prometheus_2_53_a_refused_reload_is_reported_and_retried_until_the_missing_file_arrives() {
    scenario(2, "127.0.71.2").await;
}

#[tokio::test]
async fn prometheus_3_5_a_refused_reload_is_reported_and_retried_until_the_missing_file_arrives() {
    scenario(3, "127.0.71.3").await;
}
