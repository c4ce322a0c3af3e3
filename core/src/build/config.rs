//! Part of the **build** step: renders `prometheus.yml` (and the inline additional scrape configs) from a serde
//! model, and the ConfigMap `<name>-config` that holds them. Pure: no I/O.
//!
//! The layout follows the seed's: `global`, `scrape_configs` (the self-scrape job), `scrape_config_files`,
//! `remote_write`. Its defects are fixed:
//! - the replica external label is `${POD_NAME}`, which Prometheus really expands per pod (the seed's
//!   `${POD_NAME:-unknown}` names a variable that does not exist and expands to nothing; docs/seed-compatibility.md);
//! - bearer tokens use `authorization.credentials_file` (the documented form in 2.x and 3.x) and every secret file
//!   points under [`paths::SECRETS_DIR`], where the StatefulSet really mounts those Secrets (the seed did not);
//! - scrape and evaluation intervals and external labels come from the spec; `$` in spec label values stays
//!   literal.
//!
//! The paths inside the rendered files come from [`ConfigPaths`], so that tests can render the same files for a
//! temporary directory and check them with the real `promtool`.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ConfigMap;
use serde::{Deserialize, Serialize};

use super::{BuildContext, Error, Result, non_empty};
use crate::constants::{paths, ports};
use crate::crd::cluster::{DEFAULT_INTERVAL, DEFAULT_REPLICA_LABEL};
use crate::validate::ScrapeConfigsSource;

/// ConfigMap key of the Prometheus configuration.
pub const CONFIG_KEY: &str = "prometheus.yml";
/// ConfigMap key of the scrape configs rendered from `additionalScrapeConfigs.inline`.
pub const INLINE_SCRAPE_KEY: &str = "additional-scrape-configs.yml";
/// ConfigMap key of the scrape jobs rendered from the selected ServiceMonitors and PodMonitors, and the name of the
/// file the agent writes from it into [`paths::GENERATED_DIR`], where `prometheus.yml` reads it.
pub const MONITOR_SCRAPE_KEY: &str = "monitor-scrape-configs.yml";
/// ConfigMap `binaryData` key of the same file gzipped, used instead of [`MONITOR_SCRAPE_KEY`] when the plain file
/// would not fit ([`crate::monitors::MONITOR_FILE_BUDGET`]): as prometheus-operator does, so that thousands of
/// monitors fit in a ConfigMap's 1 MiB.
pub const MONITOR_SCRAPE_GZ_KEY: &str = "monitor-scrape-configs.yml.gz";
/// Job name of the self-scrape job.
pub const SELF_SCRAPE_JOB: &str = "prometheus";
/// Environment variable holding the pod name, set on the Prometheus container from `metadata.name`.
pub const POD_NAME_ENV: &str = "POD_NAME";
/// Value of the replica external label; Prometheus replaces it with the pod name.
pub const REPLICA_LABEL_VALUE: &str = "${POD_NAME}";
/// Key of the basic-auth username in a remote write Secret (seed).
pub const BASIC_AUTH_USERNAME_KEY: &str = "username";
/// Key of the basic-auth password in a remote write Secret (seed).
pub const BASIC_AUTH_PASSWORD_KEY: &str = "password";
/// Key of the bearer token in a remote write Secret (seed).
pub const BEARER_TOKEN_KEY: &str = "token";
/// External label that names the cluster when replicas > 1 or Thanos is on (the seed: with Thanos only).
pub const CLUSTER_LABEL: &str = "cluster";

/// Where the files that `prometheus.yml` refers to live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigPaths {
    /// Directory of the ConfigMap mount ([`paths::CONFIG_DIR`]).
    pub config_dir: String,
    /// Directory of the additional scrape configs Secret ([`paths::EXTRA_SECRET_DIR`]).
    pub extra_secret_dir: String,
    /// Directory under which each remote write Secret is mounted as `<secret>/` ([`paths::SECRETS_DIR`]).
    pub secrets_dir: String,
    /// Directory of the files the agent expands from the ConfigMap ([`paths::GENERATED_DIR`]).
    pub generated_dir: String,
}

impl Default for ConfigPaths {
    /// The paths inside the pod.
    fn default() -> Self {
        Self {
            config_dir: paths::CONFIG_DIR.to_owned(),
            extra_secret_dir: paths::EXTRA_SECRET_DIR.to_owned(),
            secrets_dir: paths::SECRETS_DIR.to_owned(),
            generated_dir: paths::GENERATED_DIR.to_owned(),
        }
    }
}

impl ConfigPaths {
    /// The pod's paths moved under `root` (`<root>/etc/prometheus/config`, ...), for checking the rendered files
    /// outside a pod.
    pub fn rooted_at(root: &str) -> Self {
        let root = root.trim_end_matches('/');
        Self {
            config_dir: format!("{root}{}", paths::CONFIG_DIR),
            extra_secret_dir: format!("{root}{}", paths::EXTRA_SECRET_DIR),
            secrets_dir: format!("{root}{}", paths::SECRETS_DIR),
            generated_dir: format!("{root}{}", paths::GENERATED_DIR),
        }
    }

    /// Path of `prometheus.yml`.
    pub fn config_file(&self) -> String {
        format!("{}/{CONFIG_KEY}", self.config_dir)
    }

    /// Path of the inline scrape configs file.
    pub fn inline_scrape_file(&self) -> String {
        format!("{}/{INLINE_SCRAPE_KEY}", self.config_dir)
    }

    /// Path of the monitors' scrape configs file, as the agent writes it.
    pub fn monitor_scrape_file(&self) -> String {
        format!("{}/{MONITOR_SCRAPE_KEY}", self.generated_dir)
    }

    /// Path of a key of a mounted remote write Secret.
    pub fn secret_file(&self, secret: &str, key: &str) -> String {
        format!("{}/{secret}/{key}", self.secrets_dir)
    }
}

/// The rendered `prometheus.yml`, as a typed model. Field order is the file's key order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrometheusConfig {
    /// `global`.
    pub global: GlobalConfig,
    /// `scrape_configs`: the self-scrape job.
    pub scrape_configs: Vec<StaticScrapeConfig>,
    /// `scrape_config_files`: the additional scrape configs (inline file or mounted Secret key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scrape_config_files: Vec<String>,
    /// `rule_files`: the rule files in the ConfigMap, by a glob, when the cluster has rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rule_files: Vec<String>,
    /// `alerting`, with `spec.alerting.alertmanagers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerting: Option<AlertingConfig>,
    /// `remote_write`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_write: Vec<RemoteWriteConfig>,
}

/// `alerting` of `prometheus.yml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertingConfig {
    /// `alertmanagers`: one entry per `spec.alerting.alertmanagers` entry.
    pub alertmanagers: Vec<AlertmanagerConfig>,
}

/// One `alertmanagers` entry: the endpoints of one Service, found by Kubernetes service discovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertmanagerConfig {
    /// `scheme`.
    pub scheme: String,
    /// `path_prefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// `timeout`.
    pub timeout: String,
    /// `api_version`.
    pub api_version: String,
    /// `kubernetes_sd_configs`: the endpoints of the Service's namespace.
    pub kubernetes_sd_configs: Vec<EndpointsSd>,
    /// `relabel_configs`: keep the Service's endpoints on its port.
    pub relabel_configs: Vec<crate::monitors::Relabel>,
}

/// A `kubernetes_sd_configs` entry of role `endpoints` in one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointsSd {
    /// `role`: `endpoints`.
    pub role: String,
    /// `namespaces`.
    pub namespaces: SdNamespaces,
}

/// `namespaces` of a `kubernetes_sd_configs` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SdNamespaces {
    /// `names`.
    pub names: Vec<String>,
}

/// `global` of `prometheus.yml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalConfig {
    /// `scrape_interval`.
    pub scrape_interval: String,
    /// `evaluation_interval`.
    pub evaluation_interval: String,
    /// `external_labels`, sorted by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub external_labels: BTreeMap<String, String>,
}

/// A scrape job with static targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticScrapeConfig {
    /// `job_name`.
    pub job_name: String,
    /// `static_configs`.
    pub static_configs: Vec<StaticTargets>,
}

/// One `static_configs` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticTargets {
    /// `targets`.
    pub targets: Vec<String>,
}

/// One `remote_write` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteWriteConfig {
    /// `url`.
    pub url: String,
    /// `name`, when the spec gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `basic_auth` with files of the mounted Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuthConfig>,
    /// `authorization` (bearer token) with a file of the mounted Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<AuthorizationConfig>,
    /// `headers`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// `write_relabel_configs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write_relabel_configs: Vec<crate::monitors::Relabel>,
    /// `queue_config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_config: Option<QueueConfigFile>,
    /// `metadata_config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_config: Option<MetadataConfigFile>,
    /// `tls_config`, with files of the mounted Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_config: Option<crate::monitors::Tls>,
    /// `oauth2`, the client secret from a file of the mounted Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Config>,
}

/// `oauth2` of a remote write entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuth2Config {
    /// `client_id`.
    pub client_id: String,
    /// `client_secret_file`.
    pub client_secret_file: String,
    /// `token_url`.
    pub token_url: String,
    /// `scopes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// `endpoint_params`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub endpoint_params: BTreeMap<String, String>,
}

/// `queue_config` of a remote write entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfigFile {
    /// `capacity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    /// `min_shards`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_shards: Option<u32>,
    /// `max_shards`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_shards: Option<u32>,
    /// `max_samples_per_send`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_samples_per_send: Option<u32>,
    /// `batch_send_deadline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_send_deadline: Option<String>,
    /// `min_backoff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_backoff: Option<String>,
    /// `max_backoff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<String>,
    /// `retry_on_http_429`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on_http_429: Option<bool>,
    /// `sample_age_limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_age_limit: Option<String>,
}

/// `metadata_config` of a remote write entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataConfigFile {
    /// `send`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<bool>,
    /// `send_interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_interval: Option<String>,
    /// `max_samples_per_send`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_samples_per_send: Option<u32>,
}

/// `basic_auth` read from files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasicAuthConfig {
    /// `username_file`.
    pub username_file: String,
    /// `password_file`.
    pub password_file: String,
}

/// `authorization` read from a file; the type defaults to `Bearer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationConfig {
    /// `credentials_file`.
    pub credentials_file: String,
}

/// The rendered files of the ConfigMap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFiles {
    /// `prometheus.yml`.
    pub prometheus_yml: String,
    /// `additional-scrape-configs.yml`, only with `additionalScrapeConfigs.inline`.
    pub inline_scrape_configs_yml: Option<String>,
    /// `monitor-scrape-configs.yml`, only when the cluster selects monitors (then always, with no jobs as an
    /// empty list, so that `prometheus.yml` does not change as monitors come and go).
    pub monitor_scrape_configs_yml: Option<String>,
    /// The rule files (ConfigMap key, content): `spec.ruleGroups`' and the selected PrometheusRules'.
    pub rule_files: Vec<(String, String)>,
}

#[derive(Serialize)]
struct MonitorScrapeFile<'a> {
    scrape_configs: &'a [crate::monitors::ScrapeJob],
}

#[derive(Serialize)]
struct ScrapeConfigFile<'a> {
    scrape_configs: &'a [serde_yaml::Mapping],
}

/// Renders the `prometheus.yml` model for files under `paths`.
pub fn build_prometheus_config(ctx: &BuildContext<'_>, paths: &ConfigPaths) -> PrometheusConfig {
    let spec = &ctx.cluster.spec;
    let scrape_interval = non_empty(&spec.scrape_interval).unwrap_or(DEFAULT_INTERVAL);
    let evaluation_interval = non_empty(&spec.evaluation_interval).unwrap_or(DEFAULT_INTERVAL);

    let mut scrape_config_files = match ctx.scrape_configs {
        None => vec![],
        Some(ScrapeConfigsSource::Inline(_)) => vec![paths.inline_scrape_file()],
        Some(ScrapeConfigsSource::Secret { key, .. }) => vec![format!("{}/{key}", paths.extra_secret_dir)],
    };
    if spec.selects_monitors() {
        scrape_config_files.push(paths.monitor_scrape_file());
    }

    let rule_files = if spec.has_rules() {
        vec![format!("{}/{}", paths.config_dir, crate::monitors::rules::RULE_FILES_GLOB)]
    } else {
        Vec::new()
    };
    PrometheusConfig {
        global: GlobalConfig {
            scrape_interval: scrape_interval.to_owned(),
            evaluation_interval: evaluation_interval.to_owned(),
            external_labels: external_labels(ctx),
        },
        scrape_configs: vec![StaticScrapeConfig {
            job_name: SELF_SCRAPE_JOB.to_owned(),
            static_configs: vec![StaticTargets { targets: vec![format!("localhost:{}", ports::PROMETHEUS)] }],
        }],
        scrape_config_files,
        rule_files,
        alerting: alerting(ctx),
        remote_write: remote_write(ctx, paths),
    }
}

/// `alerting`: per Alertmanager Service, its endpoints in its namespace, kept by Service name and port (by name,
/// or by number in the address), as prometheus-operator renders `alerting.alertmanagers`.
fn alerting(ctx: &BuildContext<'_>) -> Option<AlertingConfig> {
    let spec = ctx.cluster.spec.alerting.as_ref().filter(|a| !a.alertmanagers.is_empty())?;
    let own = ctx.namespace.unwrap_or_default();
    let alertmanagers = spec
        .alertmanagers
        .iter()
        .map(|am| {
            let keep = |source: &str, regex: String| crate::monitors::Relabel {
                source_labels: vec![source.to_owned()],
                regex: Some(regex),
                action: Some("keep".to_owned()),
                ..crate::monitors::Relabel::default()
            };
            let port = match &am.port {
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => {
                    keep("__meta_kubernetes_endpoint_port_name", name.clone())
                }
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(number) => {
                    keep("__address__", format!(".+:{number}"))
                }
            };
            AlertmanagerConfig {
                scheme: am.scheme.clone().unwrap_or_else(|| "http".to_owned()),
                path_prefix: am.path_prefix.clone().filter(|p| !p.is_empty() && p != "/"),
                timeout: am.timeout.clone().unwrap_or_else(|| "10s".to_owned()),
                api_version: am.api_version.clone().unwrap_or_else(|| "v2".to_owned()),
                kubernetes_sd_configs: vec![EndpointsSd {
                    role: "endpoints".to_owned(),
                    namespaces: SdNamespaces {
                        names: vec![am.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| own.to_owned())],
                    },
                }],
                relabel_configs: vec![keep("__meta_kubernetes_service_name", am.name.clone()), port],
            }
        })
        .collect();
    Some(AlertingConfig { alertmanagers })
}

/// Renders `prometheus.yml` and the inline scrape configs file for files under `paths`.
pub fn build_config_files(ctx: &BuildContext<'_>, paths: &ConfigPaths) -> Result<ConfigFiles> {
    let config = build_prometheus_config(ctx, paths);
    let prometheus_yml = match plain_yaml(&config) {
        Some(yaml) => yaml,
        None => to_yaml(&config)?,
    };
    let inline_scrape_configs_yml = match ctx.scrape_configs {
        Some(ScrapeConfigsSource::Inline(entries)) => Some(to_yaml(&ScrapeConfigFile { scrape_configs: entries })?),
        _ => None,
    };
    let monitor_scrape_configs_yml = if ctx.cluster.spec.selects_monitors() {
        Some(to_yaml(&MonitorScrapeFile { scrape_configs: ctx.monitor_jobs })?)
    } else {
        None
    };
    let mut rule_files = Vec::with_capacity(ctx.rule_files.len() + 1);
    if !ctx.cluster.spec.rule_groups.is_empty() {
        let (object, field) = ("PrometheusCluster", "spec.ruleGroups");
        let key = crate::monitors::rules::INLINE_RULES_KEY.to_owned();
        // Validation refused any rule Prometheus would refuse, so every group is rendered.
        if let (Some(file), _) =
            crate::monitors::rules::render_rule_file(object, field, key, &ctx.cluster.spec.rule_groups)
        {
            rule_files.push((file.key, file.content));
        }
    }
    rule_files.extend(ctx.rule_files.iter().map(|f| (f.key.clone(), f.content.clone())));
    Ok(ConfigFiles { prometheus_yml, inline_scrape_configs_yml, monitor_scrape_configs_yml, rule_files })
}

/// Renders the ConfigMap `<name>-config` with the files for the pod's paths.
pub fn build_config_map(ctx: &BuildContext<'_>) -> Result<ConfigMap> {
    let files = build_config_files(ctx, &ConfigPaths::default())?;
    let mut data = super::map([(CONFIG_KEY.to_owned(), files.prometheus_yml)]);
    if let Some(inline) = files.inline_scrape_configs_yml {
        data.insert(INLINE_SCRAPE_KEY.to_owned(), inline);
    }
    data.extend(files.rule_files);
    let mut binary_data = None;
    if let Some(monitors) = files.monitor_scrape_configs_yml {
        if monitors.len() <= crate::monitors::MONITOR_FILE_BUDGET {
            data.insert(MONITOR_SCRAPE_KEY.to_owned(), monitors);
        } else {
            let gz = k8s_openapi::ByteString(gzip(monitors.as_bytes()));
            binary_data = Some(super::map([(MONITOR_SCRAPE_GZ_KEY.to_owned(), gz)]));
        }
    }
    Ok(ConfigMap {
        metadata: ctx.object_meta(ctx.config_map_name()),
        data: Some(data),
        binary_data,
        ..ConfigMap::default()
    })
}

/// `bytes` gzipped, deterministically (no time or name in the header), for [`MONITOR_SCRAPE_GZ_KEY`].
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder =
        flate2::write::GzEncoder::new(Vec::with_capacity(bytes.len() / 8), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(bytes);
    encoder.finish().unwrap_or_default()
}

/// The name of the replica external label (`spec.replicaExternalLabelName`, default `replica`).
pub fn replica_label_name<'a>(ctx: &BuildContext<'a>) -> &'a str {
    ctx.cluster.spec.replica_external_label_name.as_deref().and_then(non_empty).unwrap_or(DEFAULT_REPLICA_LABEL)
}

/// The distinct Secrets of remote write and of the selected monitors' credentials, sorted: each is mounted at
/// `<secrets dir>/<name>`.
pub fn remote_write_secrets(ctx: &BuildContext<'_>) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = ctx
        .cluster
        .spec
        .remote_write
        .iter()
        .flat_map(|rw| [&rw.basic_auth_secret_ref, &rw.bearer_token_secret_ref])
        .flatten()
        .map(|r| r.name.clone())
        .collect();
    let tls = ctx.cluster.spec.remote_write.iter().flat_map(|rw| rw.tls_config.iter().flat_map(|t| t.secret_keys()));
    out.extend(tls.map(|(_, secret, _)| secret.to_owned()));
    let oauth2 = ctx.cluster.spec.remote_write.iter().filter_map(|rw| rw.oauth2.as_ref());
    out.extend(oauth2.map(|o| o.secret_key().0.to_owned()));
    out.extend(ctx.monitor_secrets.into_iter().flatten().cloned());
    out
}

/// The Secret key mounted for `additionalScrapeConfigs.secretRef`, if that is the source.
pub fn extra_scrape_secret<'a>(ctx: &BuildContext<'a>) -> Option<(&'a str, &'a str)> {
    match ctx.scrape_configs? {
        ScrapeConfigsSource::Secret { name, key } => Some((name, key)),
        ScrapeConfigsSource::Inline(_) => None,
    }
}

/// The external labels: the spec's, with every `$` escaped as `$$` so that they stay literal (Prometheus expands
/// `${VAR}` in external label values: always on 3.x, and on 2.x with the flag the operator passes); then, when
/// replicas > 1 or Thanos is on, `cluster: <name>` and `<replica label>: ${POD_NAME}`, which override spec labels
/// of the same name (validation forbids those names): replicas must stay distinguishable. The seed set both only
/// with Thanos; with more than one replica and no Thanos, remote-written series of the replicas would collide.
fn external_labels(ctx: &BuildContext<'_>) -> BTreeMap<String, String> {
    let spec = &ctx.cluster.spec;
    let mut labels = BTreeMap::new();
    for (name, value) in &spec.external_labels {
        labels.insert(name.clone(), value.replace('$', "$$"));
    }
    if ctx.needs_replica_label() {
        labels.insert(CLUSTER_LABEL.to_owned(), ctx.name.to_owned());
        labels.insert(replica_label_name(ctx).to_owned(), REPLICA_LABEL_VALUE.to_owned());
    }
    labels
}

/// The remote write entries. Validation saw to it that each has a URL, at most one kind of credentials, valid
/// Secret names and relabel rules, and that no two are the same endpoint with the same credentials or name.
fn remote_write(ctx: &BuildContext<'_>, paths: &ConfigPaths) -> Vec<RemoteWriteConfig> {
    let mut out: Vec<RemoteWriteConfig> = Vec::with_capacity(ctx.cluster.spec.remote_write.len());
    for rw in &ctx.cluster.spec.remote_write {
        let basic_auth = rw.basic_auth_secret_ref.as_ref().map(|secret| BasicAuthConfig {
            username_file: paths.secret_file(&secret.name, BASIC_AUTH_USERNAME_KEY),
            password_file: paths.secret_file(&secret.name, BASIC_AUTH_PASSWORD_KEY),
        });
        let authorization = rw
            .bearer_token_secret_ref
            .as_ref()
            .map(|secret| AuthorizationConfig { credentials_file: paths.secret_file(&secret.name, BEARER_TOKEN_KEY) });
        let oauth2 = rw.oauth2.as_ref().map(|o| {
            let (secret, key) = o.secret_key();
            OAuth2Config {
                client_id: o.client_id.clone(),
                client_secret_file: paths.secret_file(secret, key),
                token_url: o.token_url.clone(),
                scopes: o.scopes.clone(),
                endpoint_params: o.endpoint_params.clone(),
            }
        });
        let entry = RemoteWriteConfig {
            url: rw.url.trim().to_owned(),
            name: Some(rw.name.clone()).filter(|n| !n.is_empty()),
            basic_auth,
            authorization,
            headers: rw.headers.clone(),
            write_relabel_configs: rw.write_relabel_configs.iter().map(crate::monitors::relabel).collect(),
            queue_config: rw.queue_config.as_ref().map(|q| QueueConfigFile {
                capacity: q.capacity,
                min_shards: q.min_shards,
                max_shards: q.max_shards,
                max_samples_per_send: q.max_samples_per_send,
                batch_send_deadline: q.batch_send_deadline.clone(),
                min_backoff: q.min_backoff.clone(),
                max_backoff: q.max_backoff.clone(),
                retry_on_http_429: q.retry_on_rate_limit,
                sample_age_limit: q.sample_age_limit.clone(),
            }),
            metadata_config: rw.metadata_config.as_ref().map(|m| MetadataConfigFile {
                send: m.send,
                send_interval: m.send_interval.clone(),
                max_samples_per_send: m.max_samples_per_send,
            }),
            tls_config: rw.tls_config.as_ref().map(|tls| {
                let mut files = crate::monitors::Tls {
                    ca_file: None,
                    cert_file: None,
                    key_file: None,
                    server_name: tls.server_name.clone().filter(|n| !n.is_empty()),
                    insecure_skip_verify: tls.insecure_skip_verify,
                };
                for (field, secret, key) in tls.secret_keys() {
                    let file = Some(paths.secret_file(secret, key));
                    match field {
                        "ca" => files.ca_file = file,
                        "cert" => files.cert_file = file,
                        _ => files.key_file = file,
                    }
                }
                files
            }),
            oauth2,
        };
        out.push(entry);
    }
    out
}

/// `prometheus.yml` written directly, byte for byte what [`to_yaml`] writes, when every string in it is one
/// serde_yaml writes unquoted (see [`is_plain`]); `None` otherwise, and the caller uses serde_yaml. Rendering runs
/// on every reconcile, and serde_yaml's emitter cost more than the rest of the ConfigMap.
fn plain_yaml(config: &PrometheusConfig) -> Option<String> {
    // Destructured in full, so that a new field does not go unwritten.
    let PrometheusConfig { global, scrape_configs, scrape_config_files, rule_files, alerting, remote_write } = config;
    if alerting.is_some() {
        return None;
    }
    let GlobalConfig { scrape_interval, evaluation_interval, external_labels } = global;
    let mut out = String::with_capacity(512);
    let o = &mut out;
    yaml_line(o, "", "global", None)?;
    yaml_line(o, "  ", "scrape_interval", Some(scrape_interval))?;
    yaml_line(o, "  ", "evaluation_interval", Some(evaluation_interval))?;
    if !external_labels.is_empty() {
        yaml_line(o, "  ", "external_labels", None)?;
        for (name, value) in external_labels {
            // Keys are simple keys: no flow indicators, at most 128 characters.
            if name.len() > 128 || name.contains(['{', '}']) || !is_plain(name) {
                return None;
            }
            yaml_line(o, "    ", name, Some(value))?;
        }
    }
    if scrape_configs.is_empty() {
        return None;
    }
    yaml_line(o, "", "scrape_configs", None)?;
    for StaticScrapeConfig { job_name, static_configs } in scrape_configs {
        yaml_line(o, "- ", "job_name", Some(job_name))?;
        if static_configs.is_empty() {
            return None;
        }
        yaml_line(o, "  ", "static_configs", None)?;
        for StaticTargets { targets } in static_configs {
            if targets.is_empty() {
                return None;
            }
            yaml_line(o, "  - ", "targets", None)?;
            for target in targets {
                yaml_item(o, "    ", target)?;
            }
        }
    }
    if !scrape_config_files.is_empty() {
        yaml_line(o, "", "scrape_config_files", None)?;
        for file in scrape_config_files {
            yaml_item(o, "", file)?;
        }
    }
    if !rule_files.is_empty() {
        yaml_line(o, "", "rule_files", None)?;
        for file in rule_files {
            yaml_item(o, "", file)?;
        }
    }
    if !remote_write.is_empty() {
        yaml_line(o, "", "remote_write", None)?;
        for entry in remote_write {
            let RemoteWriteConfig {
                url,
                name,
                basic_auth,
                authorization,
                headers,
                write_relabel_configs,
                queue_config,
                metadata_config,
                tls_config,
                oauth2,
            } = entry;
            if !headers.is_empty()
                || !write_relabel_configs.is_empty()
                || queue_config.is_some()
                || metadata_config.is_some()
                || tls_config.is_some()
                || oauth2.is_some()
            {
                return None;
            }
            yaml_line(o, "- ", "url", Some(url))?;
            if let Some(name) = name {
                yaml_line(o, "  ", "name", Some(name))?;
            }
            if let Some(BasicAuthConfig { username_file, password_file }) = basic_auth {
                yaml_line(o, "  ", "basic_auth", None)?;
                yaml_line(o, "    ", "username_file", Some(username_file))?;
                yaml_line(o, "    ", "password_file", Some(password_file))?;
            }
            if let Some(AuthorizationConfig { credentials_file }) = authorization {
                yaml_line(o, "  ", "authorization", None)?;
                yaml_line(o, "    ", "credentials_file", Some(credentials_file))?;
            }
        }
    }
    Some(out)
}

/// `<indent><key>:` and, with a value, ` <value>`, then a newline; `None` if the value is not [plain](is_plain).
fn yaml_line(out: &mut String, indent: &str, key: &str, value: Option<&str>) -> Option<()> {
    out.push_str(indent);
    out.push_str(key);
    out.push(':');
    if let Some(value) = value {
        if !is_plain(value) {
            return None;
        }
        out.push(' ');
        out.push_str(value);
    }
    out.push('\n');
    Some(())
}

/// `<indent>- <value>` and a newline; `None` if the value is not [plain](is_plain).
fn yaml_item(out: &mut String, indent: &str, value: &str) -> Option<()> {
    if !is_plain(value) {
        return None;
    }
    out.push_str(indent);
    out.push_str("- ");
    out.push_str(value);
    out.push('\n');
    Some(())
}

/// Whether serde_yaml surely writes `s` as a plain (unquoted) scalar in block context: it has only letters,
/// digits and `._/:${}@=+%~-`, does not end with `:`, is not a YAML boolean or null, and starts with a letter,
/// `/`, `$`, `_`, or a digit other than 0 when something in it cannot be part of a number (`30s`, not `1e3`).
/// Conservative: some strings serde_yaml also writes plain are refused.
fn is_plain(s: &str) -> bool {
    let bytes = s.as_bytes();
    let first_ok = match bytes.first() {
        Some(b) if b.is_ascii_alphabetic() || matches!(b, b'/' | b'$' | b'_') => true,
        Some(b'1'..=b'9') => bytes.iter().any(|b| !b"0123456789.eE+-".contains(b)),
        _ => false,
    };
    first_ok
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || b"._/:${}@=+%~-".contains(b))
        && !s.ends_with(':')
        && !matches!(s, "true" | "True" | "TRUE" | "false" | "False" | "FALSE" | "null" | "Null" | "NULL")
}

fn to_yaml<T: Serialize>(value: &T) -> Result<String> {
    serde_yaml::to_string(value)
        .map_err(|e| Error::Serialize { kind: "prometheus configuration", reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_paths_match_the_constants() {
        let p = ConfigPaths::default();
        assert_eq!(p.config_file(), paths::CONFIG_FILE);
        assert_eq!(p.inline_scrape_file(), paths::INLINE_SCRAPE_FILE);
        assert_eq!(p.secret_file("s", "k"), format!("{}/s/k", paths::SECRETS_DIR));
    }

    #[test]
    fn rooted_paths_keep_the_pod_layout_under_the_root() {
        let p = ConfigPaths::rooted_at("/tmp/x/");
        assert_eq!(p.config_file(), format!("/tmp/x{}", paths::CONFIG_FILE));
        assert_eq!(p.extra_secret_dir, format!("/tmp/x{}", paths::EXTRA_SECRET_DIR));
    }

    fn config(strings: &[String], labels: BTreeMap<String, String>, auth: u8) -> PrometheusConfig {
        let s = |i: usize| strings[i % strings.len()].clone();
        PrometheusConfig {
            global: GlobalConfig { scrape_interval: s(0), evaluation_interval: s(1), external_labels: labels },
            scrape_configs: vec![StaticScrapeConfig {
                job_name: s(2),
                static_configs: vec![StaticTargets { targets: vec![s(3), s(4)] }],
            }],
            scrape_config_files: if auth.is_multiple_of(2) { vec![s(5)] } else { vec![] },
            rule_files: if auth.is_multiple_of(5) { vec![s(11)] } else { vec![] },
            alerting: None,
            remote_write: vec![RemoteWriteConfig {
                url: s(6),
                name: (!auth.is_multiple_of(3)).then(|| s(7)),
                basic_auth: (auth % 3 == 1).then(|| BasicAuthConfig { username_file: s(8), password_file: s(9) }),
                authorization: (auth % 3 == 2).then(|| AuthorizationConfig { credentials_file: s(10) }),
                headers: BTreeMap::new(),
                write_relabel_configs: Vec::new(),
                queue_config: None,
                metadata_config: None,
                tls_config: None,
                oauth2: None,
            }],
        }
    }

    proptest::proptest! {
        #[test]
        fn the_direct_yaml_is_what_serde_yaml_writes_or_nothing(
            strings in proptest::collection::vec(
                proptest::string::string_regex("[a-zA-Z0-9 ._/:$#{}@=+%~,&*!?'\"-]{0,12}|true|NULL|~|0x1f|\\.inf|1e3|012|\\$\\{POD_NAME\\}")
                    .expect("valid regex"),
                11,
            ),
            labels in proptest::collection::btree_map("[a-zA-Z_{:][a-zA-Z0-9_:]{0,8}|true|null", "[a-z$0-9:{} -]{0,8}", 0..4),
            auth in 0..6u8,
        ) {
            let config = config(&strings, labels, auth);
            let serde = to_yaml(&config).expect("serializes");
            if let Some(direct) = plain_yaml(&config) {
                proptest::prop_assert_eq!(direct, serde);
            }
        }

        #[test]
        fn plain_strings_are_written_unquoted_by_serde_yaml(
            s in "[a-zA-Z/$~0-9._][a-zA-Z0-9 ._/:$#{}@=+%~,&*!?'\"-]{0,20}|true|Null|FALSE|inf|nan|y|no|on|a:|a:b|a-b:",
        ) {
            if is_plain(&s) {
                let value = serde_yaml::to_string(&BTreeMap::from([("k", s.as_str())])).expect("serializes");
                proptest::prop_assert_eq!(value, format!("k: {s}\n"));
                if !s.contains(['{', '}']) {
                    let key = serde_yaml::to_string(&BTreeMap::from([(s.as_str(), "v")])).expect("serializes");
                    proptest::prop_assert_eq!(key, format!("{s}: v\n"));
                }
            }
        }

        #[test]
        fn plain_configs_are_written_directly(
            strings in proptest::collection::vec("([a-z]|[1-9][0-9]*[g-z])[a-zA-Z0-9._/:${}-]{0,30}[a-z0-9]", 11),
            labels in proptest::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,20}", "[a-z$_][a-z0-9.${}-]{0,20}", 0..4),
            auth in 0..6u8,
        ) {
            proptest::prop_assume!(strings.iter().all(|s| is_plain(s)));
            let config = config(&strings, labels, auth);
            proptest::prop_assume!(config.global.external_labels.keys().all(|k| is_plain(k)));
            proptest::prop_assume!(config.global.external_labels.values().all(|v| is_plain(v)));
            proptest::prop_assert_eq!(plain_yaml(&config), Some(to_yaml(&config).expect("serializes")));
        }
    }

    #[test]
    fn secret_keys_cannot_escape_the_mount() {
        use crate::validate::names::check_secret_key;
        assert!(check_secret_key("scrape.yml").is_ok());
        for bad in [".", "..", "a/b", "../x"] {
            assert!(check_secret_key(bad).is_err(), "{bad}");
        }
    }
}
