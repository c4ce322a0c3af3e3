//! Every rendered `prometheus.yml` passes `promtool check config` of Prometheus 2.53 and 3.5, and the real
//! Prometheus of both lines starts with the rendered flags and expands the replica external label to the pod name.
//!
//! The files are rendered with `ConfigPaths::rooted_at(<temp dir>)`, so every path they refer to (inline scrape
//! file, mounted Secrets) exists under the temp dir exactly as it would in the pod. The binaries come from
//! `scripts/install-deps.sh` (`$TSDB_PROMTOOL{2,3}_BIN`, `$TSDB_PROMETHEUS{2,3}_BIN`, else its cache directory);
//! when they are missing the tests fail and say so.
//!
//! This is a test: it does I/O (files, processes, a loopback socket). The library under test does none.

// The core's purity lints guard the library; this harness must read the environment (where the binaries are),
// a clock (start-up deadline) and stop loudly on any failure of its own plumbing.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::panic)]

mod common;
#[path = "common/generate.rs"]
mod generate;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tsdb_operator_core::build::config::{self, ConfigPaths};
use tsdb_operator_core::build::statefulset::prometheus_args;
use tsdb_operator_core::build::{BuildContext, BuildSettings};
use tsdb_operator_core::constants::paths;
use tsdb_operator_core::crd::PrometheusCluster;

const SECRET_SCRAPE_FILE: &str =
    "scrape_configs:\n- job_name: from-secret\n  static_configs:\n  - targets: ['127.0.0.1:9100']\n";

fn cache_dir() -> PathBuf {
    match std::env::var("TSDB_OPERATOR_CACHE") {
        Ok(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var("HOME").expect("HOME is set")).join(".cache/tsdb-operator"),
    }
}

/// `promtool` or `prometheus` of a major version; fails the test when it is not installed.
fn binary(tool: &str, major: u32) -> PathBuf {
    let var = format!("TSDB_{}{major}_BIN", tool.to_uppercase());
    let path = match std::env::var(&var) {
        Ok(p) if !p.is_empty() => PathBuf::from(p),
        _ => cache_dir().join(format!("prometheus-{major}")).join(tool),
    };
    assert!(
        path.is_file(),
        "{tool} {major}.x not found at {} (set ${var}); run scripts/install-deps.sh to install it",
        path.display()
    );
    path
}

fn fixtures() -> Vec<(String, PrometheusCluster)> {
    common::fixtures("clusters")
}

fn fixture(name: &str) -> PrometheusCluster {
    fixtures().into_iter().find(|(n, _)| n == name).unwrap().1
}

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tsdb-operator-promtool-{}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write(path: &str, content: &str) {
    let path = Path::new(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// Renders the cluster's files under `root` as the pod would see them, with dummy Secret files. Returns the path
/// of `prometheus.yml`.
fn render_into(cluster: &PrometheusCluster, root: &str) -> String {
    let settings = BuildSettings::default();
    let valid = tsdb_operator_core::validate::cluster(cluster).expect("a valid cluster");
    let ctx = BuildContext::new(&valid, &settings);
    let rooted = ConfigPaths::rooted_at(root);
    let files = config::build_config_files(&ctx, &rooted).unwrap();

    // The rooted render is the pod's render with every path moved under the root, nothing else.
    let in_pod = config::build_config_files(&ctx, &ConfigPaths::default()).unwrap();
    assert_eq!(files.prometheus_yml.replace(&format!("{root}/etc/"), "/etc/"), in_pod.prometheus_yml);
    assert_eq!(files.inline_scrape_configs_yml, in_pod.inline_scrape_configs_yml);

    write(&rooted.config_file(), &files.prometheus_yml);
    if let Some(inline) = &files.inline_scrape_configs_yml {
        write(&rooted.inline_scrape_file(), inline);
    }
    assert_eq!(files.rule_files, in_pod.rule_files);
    for (key, content) in &files.rule_files {
        write(&format!("{}/{key}", rooted.config_dir), content);
    }
    for secret in config::remote_write_secrets(&ctx) {
        for key in [
            config::BASIC_AUTH_USERNAME_KEY,
            config::BASIC_AUTH_PASSWORD_KEY,
            config::BEARER_TOKEN_KEY,
            "ca.crt",
            "tls.crt",
            "tls.key",
            "clientSecret",
        ] {
            write(&rooted.secret_file(&secret, key), "dummy");
        }
    }
    if let Some((_, key)) = config::extra_scrape_secret(&ctx) {
        write(&format!("{}/{key}", rooted.extra_secret_dir), SECRET_SCRAPE_FILE);
    }
    rooted.config_file()
}

#[test]
fn every_rendered_config_passes_promtool_of_2_x_and_3_x() {
    let promtools = [binary("promtool", 2), binary("promtool", 3)];
    for (name, cluster) in fixtures() {
        let dir = TempDir::new(&name);
        check_config(&promtools, &render_into(&cluster, dir.path()), &name);
    }
}

/// `promtool check config` of each of `promtools` passes on `config_file`; `what` names the input on failure.
fn check_config(promtools: &[PathBuf], config_file: &str, what: &str) {
    for promtool in promtools {
        let out = Command::new(promtool).args(["check", "config", config_file]).output().unwrap();
        assert!(
            out.status.success(),
            "{what}: {} check config failed:\n{}{}\n--- prometheus.yml\n{}",
            promtool.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(config_file).unwrap()
        );
    }
}

/// Configs rendered from generated specs (fault table row 14), not only the fixtures: the first 40 generated
/// clusters (a fixed seed, so a failure reproduces) that validation accepts and that build renders pass `promtool
/// check config` of 2.53 and 3.5. What validation accepts must not be a config Prometheus refuses at reload.
#[test]
fn configs_rendered_from_generated_valid_specs_pass_promtool_of_2_x_and_3_x() {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::TestRunner;
    let promtools = [binary("promtool", 2), binary("promtool", 3)];
    let strategy = generate::cluster();
    let mut runner = TestRunner::deterministic();
    let (mut checked, mut generated) = (0, 0);
    while checked < 40 && generated < 5_000 {
        generated += 1;
        let mut cluster = strategy.new_tree(&mut runner).unwrap().current();
        if cluster.metadata.name.as_deref().is_none_or(str::is_empty) {
            cluster.metadata.name = Some("generated".to_owned());
        }
        if tsdb_operator_core::validate::cluster(&cluster).is_err() {
            continue;
        }
        checked += 1;
        let dir = TempDir::new(&format!("generated-{checked}"));
        let spec = serde_yaml::to_string(&cluster.spec).unwrap();
        check_config(&promtools, &render_into(&cluster, dir.path()), &format!("generated cluster with spec\n{spec}"));
    }
    assert_eq!(checked, 40, "40 valid clusters among {generated} generated");
}

#[test]
fn scrape_jobs_rendered_from_service_and_pod_monitors_pass_promtool_of_2_x_and_3_x() {
    use tsdb_operator_core::monitors::{PodMonitor, ServiceMonitor, build_pod_monitor_jobs, build_scrape_jobs};
    let monitors = common::objects::<ServiceMonitor>("servicemonitors");
    let refs: Vec<&ServiceMonitor> = monitors.iter().map(|(_, m)| m).collect();
    let mut rendered = build_scrape_jobs(&refs);
    let pod_monitors = common::objects::<PodMonitor>("podmonitors");
    let refs: Vec<&PodMonitor> = pod_monitors.iter().map(|(_, m)| m).collect();
    let pods = build_pod_monitor_jobs(&refs);
    rendered.jobs.extend(pods.jobs);
    rendered.refused.extend(pods.refused);
    assert_eq!(rendered.jobs.len(), 12, "the corpus renders 12 jobs (1 endpoint refused)");
    assert_eq!(rendered.refused.len(), 1);
    let text = serde_yaml::to_string(&serde_json::json!({
        "global": {"scrape_interval": "30s", "scrape_timeout": "30s"},
        "scrape_configs": rendered.jobs,
    }))
    .unwrap();
    let dir = TempDir::new("service-monitors");
    // promtool reads the files a job names: the pod's ServiceAccount token, here under the temp dir.
    let token = "/var/run/secrets/kubernetes.io/serviceaccount/token";
    assert!(text.contains(token), "the corpus names the token file");
    let rooted_token = format!("{}{token}", dir.path());
    write(&rooted_token, "dummy");
    let text = text.replace(token, &rooted_token);
    // The monitors' credentials: files of the Secrets mounted under /etc/prometheus/secrets.
    let secrets_dir = format!("{}{}", dir.path(), paths::SECRETS_DIR);
    let text = text.replace(paths::SECRETS_DIR, &secrets_dir);
    let mut credential_files = 0;
    for job in &rendered.jobs {
        for used in &job.secret_keys {
            write(&format!("{secrets_dir}/{}/{}", used.secret, used.key), "dummy");
            credential_files += 1;
        }
    }
    assert!(credential_files >= 3, "the corpus reads credentials from Secrets");
    let config_file = format!("{}/prometheus.yml", dir.path());
    write(&config_file, &text);
    for promtool in [binary("promtool", 2), binary("promtool", 3)] {
        let out = Command::new(&promtool).args(["check", "config", &config_file]).output().unwrap();
        assert!(
            out.status.success(),
            "{} check config failed:\n{}{}\n--- prometheus.yml\n{text}",
            promtool.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    }
}

#[test]
fn rule_files_rendered_from_prometheus_rules_pass_promtool_of_2_x_and_3_x() {
    use tsdb_operator_core::monitors::PrometheusRule;
    use tsdb_operator_core::monitors::rules::{RULE_FILES_BUDGET, render_prometheus_rules};
    let objects = common::objects::<PrometheusRule>("prometheusrules");
    let refs: Vec<&PrometheusRule> = objects.iter().map(|(_, r)| r).collect();
    let (files, refused) = render_prometheus_rules(&refs, RULE_FILES_BUDGET);
    // broken.yaml: three bad rules and one unsupported group refused; its good rule still loads.
    let fields: Vec<&str> = refused.iter().map(|r| r.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.groups[0].rules[1].expr",
            "spec.groups[0].rules[2].record",
            "spec.groups[0].rules[3].for",
            "spec.groups[1].partial_response_strategy"
        ]
    );
    assert_eq!(files.len(), 3);
    let dir = TempDir::new("prometheus-rules");
    let mut paths = Vec::new();
    for file in &files {
        let path = format!("{}/{}", dir.path(), file.key);
        write(&path, &file.content);
        paths.push(path);
    }
    for promtool in [binary("promtool", 2), binary("promtool", 3)] {
        let out = Command::new(&promtool).args(["check", "rules"]).args(&paths).output().unwrap();
        assert!(
            out.status.success(),
            "{} check rules failed:\n{}{}",
            promtool.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    }
    // The refusals are real: the original broken object, written as it is, fails promtool.
    let (_, broken) = objects.iter().find(|(n, _)| n == "broken").unwrap();
    let raw = serde_yaml::to_string(&serde_json::json!({"groups": broken.spec.groups})).unwrap();
    let raw_path = format!("{}/raw.yml", dir.path());
    write(&raw_path, &raw);
    let out = Command::new(binary("promtool", 3)).args(["check", "rules", &raw_path]).output().unwrap();
    assert!(!out.status.success(), "promtool accepts the unfiltered broken rules");
}

#[test]
fn promtool_loads_the_referenced_scrape_files() {
    // Guards the test above: promtool must actually read scrape_config_files, or a broken inline file would pass.
    let promtool = binary("promtool", 3);
    let dir = TempDir::new("broken-inline");
    let config_file = render_into(&fixture("inline-scrape"), dir.path());
    write(&ConfigPaths::rooted_at(dir.path()).inline_scrape_file(), "scrape_configs:\n- job_name: prometheus\n");
    let out = Command::new(promtool).args(["check", "config", &config_file]).output().unwrap();
    assert!(!out.status.success(), "a duplicate job in the inline file must fail promtool");
}

/// Kills the child process when dropped, so a failing assertion never leaks a Prometheus.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A minimal blocking HTTP/1.0 GET; returns the status code and body.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

fn free_port(ip: &str) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).unwrap();
    listener.local_addr().unwrap()
}

/// Real Prometheus `major` on the `rendered` flags with this test's paths (config file, data directory under `dir`)
/// and a free port of `ip`, as pod `pod`; returns once it is ready (fails with its log if it exits or is not ready
/// within 30 s).
fn start_rendered(
    major: u32,
    rendered: Vec<String>,
    config_file: &str,
    dir: &str,
    ip: &str,
    pod: &str,
) -> (Running, SocketAddr) {
    let prometheus = binary("prometheus", major);
    let data_dir = format!("{dir}/data");
    let addr = free_port(ip);
    // The rendered flags with the paths and the listen address of this test (the flag may not be repeated).
    let args: Vec<String> = rendered
        .into_iter()
        .map(|a| {
            if a.starts_with("--web.listen-address=") {
                return format!("--web.listen-address={addr}");
            }
            let mut a =
                a.replace(&format!("--config.file={}", paths::CONFIG_FILE), &format!("--config.file={config_file}"));
            for flag in ["--storage.tsdb.path", "--storage.agent.path"] {
                a = a.replace(&format!("{flag}={}", paths::DATA_DIR), &format!("{flag}={data_dir}"));
            }
            a
        })
        .collect();
    let log_path = format!("{dir}/prometheus.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new(&prometheus)
        .args(&args)
        .env("POD_NAME", pod)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut running = Running(child);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = running.0.try_wait().unwrap() {
            panic!("prometheus {major}.x exited with {status} on the rendered flags {args:?}:\n{}", log());
        }
        if matches!(http_get(addr, "/-/ready"), Ok((200, _))) {
            return (running, addr);
        }
        assert!(Instant::now() < deadline, "prometheus {major}.x not ready within 30s:\n{}", log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The configuration the Prometheus at `addr` loaded.
fn loaded_config(addr: SocketAddr) -> serde_yaml::Value {
    let (status, body) = http_get(addr, "/api/v1/status/config").unwrap();
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    serde_yaml::from_str(json["data"]["yaml"].as_str().unwrap()).unwrap()
}

fn run_real_prometheus(major: u32, image: &str, ip: &str) {
    let mut cluster = fixture("typical");
    image.clone_into(&mut cluster.spec.image);
    // A spec label value with `$` must stay literal, not expand the environment.
    cluster.spec.external_labels.insert("owner".to_owned(), "$HOME ${POD_NAME} $$".to_owned());
    let dir = TempDir::new(&format!("real-{major}"));
    let config_file = render_into(&cluster, dir.path());

    let settings = BuildSettings::default();
    let valid = tsdb_operator_core::validate::cluster(&cluster).expect("a valid cluster");
    let ctx = BuildContext::new(&valid, &settings);
    let rendered = prometheus_args(&ctx);
    assert_eq!(
        rendered.iter().any(|a| a == "--enable-feature=expand-external-labels"),
        major == 2,
        "the expand flag is for 2.x only: {rendered:?}"
    );
    assert!(
        rendered.iter().any(|a| a == "--web.listen-address=127.0.0.1:9089"),
        "Prometheus listens on the loopback address only: {rendered:?}"
    );
    let (running, addr) = start_rendered(major, rendered, &config_file, dir.path(), ip, "prod-1");
    let loaded = loaded_config(addr);
    let labels = &loaded["global"]["external_labels"];
    assert_eq!(labels["replica"].as_str(), Some("prod-1"), "prometheus {major}.x external labels: {labels:?}");
    assert_eq!(labels["cluster"].as_str(), Some("prod"));
    assert_eq!(labels["region"].as_str(), Some("eu-west-1"));
    assert_eq!(labels["owner"].as_str(), Some("$HOME ${POD_NAME} $$"));
    drop(running);
}

#[test]
fn real_prometheus_2_53_expands_the_replica_label_to_the_pod_name() {
    run_real_prometheus(2, "prom/prometheus:v2.53.3", "127.0.61.2");
}

#[test]
fn real_prometheus_3_5_expands_the_replica_label_to_the_pod_name() {
    run_real_prometheus(3, "prom/prometheus:v3.5.0", "127.0.61.3");
}

/// The agent fixture's flags and configuration on a real Prometheus of `major`: it starts in agent mode (ready, its
/// loaded configuration carries the remote write options, and it answers no queries).
fn run_real_agent(major: u32, image: &str, ip: &str) {
    let mut cluster = fixture("agent");
    image.clone_into(&mut cluster.spec.image);
    let dir = TempDir::new(&format!("agent-{major}"));
    let config_file = render_into(&cluster, dir.path());
    let settings = BuildSettings::default();
    let valid = tsdb_operator_core::validate::cluster(&cluster).expect("a valid cluster");
    let rendered = prometheus_args(&BuildContext::new(&valid, &settings));
    assert!(!rendered.iter().any(|a| a.starts_with("--storage.tsdb")), "no TSDB flags in agent mode: {rendered:?}");
    let (running, addr) = start_rendered(major, rendered, &config_file, dir.path(), ip, "edge-0");
    let loaded = loaded_config(addr);
    let rw = &loaded["remote_write"][0];
    assert_eq!(rw["url"].as_str(), Some("http://greptimedb.greptimedb-cluster.svc:4000/v1/prometheus/write?db=public"));
    assert_eq!(rw["headers"]["X-Scope-OrgID"].as_str(), Some("edge"), "{rw:?}");
    assert_eq!(rw["queue_config"]["max_shards"].as_u64(), Some(50), "{rw:?}");
    assert_eq!(rw["write_relabel_configs"][0]["action"].as_str(), Some("drop"), "{rw:?}");
    let (status, body) = http_get(addr, "/api/v1/query?query=up").unwrap();
    assert_ne!(status, 200, "an agent answers no queries: {body}");
    drop(running);
}

#[test]
fn real_prometheus_2_53_runs_the_rendered_agent() {
    run_real_agent(2, "prom/prometheus:v2.53.3", "127.0.61.4");
}

#[test]
fn real_prometheus_3_5_runs_the_rendered_agent() {
    run_real_agent(3, "prom/prometheus:v3.5.0", "127.0.61.5");
}
