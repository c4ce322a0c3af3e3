//! ServiceMonitor endpoints -> scrape jobs, with prometheus-operator's relabelings, and the refusals.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::types::{
    Endpoint, JobOptions, NamespaceSelector, PodMonitor, RelabelConfig, SecretKeyRef, SecretOrConfigMap,
    ServiceMonitor, TlsConfig,
};
use crate::build::is_label_name;

/// The scrape jobs of the rendered monitors, and what was refused.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct ScrapeJobs {
    /// One job per endpoint, in monitor (namespace, name) and endpoint order.
    pub jobs: Vec<ScrapeJob>,
    /// Monitors and endpoints not rendered, with the reason.
    pub refused: Vec<Refused>,
}

/// A monitor, or one of its endpoints, that was not rendered.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// `ServiceMonitor <namespace>/<name>`.
    pub object: String,
    /// The field at fault, e.g. `spec.endpoints[1].basicAuth`.
    pub field: String,
    /// Why, and what to do.
    pub reason: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.field, self.reason)
    }
}

/// One `scrape_configs` entry, keys in prometheus-operator's order.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct ScrapeJob {
    /// `serviceMonitor/<namespace>/<name>/<endpoint index>`.
    pub job_name: String,
    /// `honor_labels`.
    pub honor_labels: bool,
    /// `honor_timestamps`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub honor_timestamps: Option<bool>,
    /// `track_timestamps_staleness`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track_timestamps_staleness: Option<bool>,
    /// One `endpoints` discovery.
    pub kubernetes_sd_configs: Vec<KubernetesSd>,
    /// `scrape_interval`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scrape_interval: Option<String>,
    /// `scrape_timeout`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scrape_timeout: Option<String>,
    /// `metrics_path`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_path: Option<String>,
    /// `proxy_url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<String>,
    /// `params`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<BTreeMap<String, Vec<String>>>,
    /// `scheme`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// `follow_redirects`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub follow_redirects: Option<bool>,
    /// `enable_http2`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_http2: Option<bool>,
    /// `tls_config`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_config: Option<Tls>,
    /// `bearer_token_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<String>,
    /// `basic_auth`, from files of the mounted Secrets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuthFiles>,
    /// `authorization`, from a file of a mounted Secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization: Option<AuthorizationFile>,
    /// The generated relabelings, then the endpoint's own.
    pub relabel_configs: Vec<Relabel>,
    /// `sample_limit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_limit: Option<u64>,
    /// `target_limit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_limit: Option<u64>,
    /// `label_limit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_limit: Option<u64>,
    /// `label_name_length_limit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_name_length_limit: Option<u64>,
    /// `label_value_length_limit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_value_length_limit: Option<u64>,
    /// `keep_dropped_targets`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_dropped_targets: Option<u64>,
    /// `scrape_protocols`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scrape_protocols: Vec<String>,
    /// `body_size_limit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_size_limit: Option<String>,
    /// `metric_relabel_configs`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metric_relabel_configs: Vec<Relabel>,
    /// The Secret keys the job reads (mounted under [`crate::constants::paths::SECRETS_DIR`]); not part of the
    /// file.
    #[serde(skip)]
    pub secret_keys: Vec<SecretUse>,
}

/// A Secret key a job reads, and the endpoint field that names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretUse {
    /// The field under the endpoint, e.g. `basicAuth.password`.
    pub field: String,
    /// The Secret, in the monitor's namespace.
    pub secret: String,
    /// The key.
    pub key: String,
    /// Whether it may be missing.
    pub optional: bool,
}

/// `basic_auth` with files.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct BasicAuthFiles {
    /// `username_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username_file: Option<String>,
    /// `password_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
}

/// `authorization` with a file.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct AuthorizationFile {
    /// `type`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// `credentials_file`.
    pub credentials_file: String,
}

/// A `kubernetes_sd_configs` entry.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct KubernetesSd {
    /// Always `endpoints`.
    pub role: &'static str,
    /// The namespaces to watch; absent: all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Namespaces>,
    /// `attach_metadata`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attach_metadata: Option<NodeMetadata>,
}

/// `namespaces.names`.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Namespaces {
    /// The names.
    pub names: Vec<String>,
}

/// `attach_metadata.node`.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct NodeMetadata {
    /// Whether node labels are attached.
    pub node: bool,
}

/// `tls_config` (of a scrape job or a remote write entry).
#[derive(Serialize, serde::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    /// `ca_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// `cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    /// `key_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// `server_name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// `insecure_skip_verify`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

/// A `relabel_configs` entry as Prometheus reads it.
#[derive(Serialize, serde::Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct Relabel {
    /// `source_labels`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_labels: Vec<String>,
    /// `separator`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub separator: Option<String>,
    /// `target_label`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_label: Option<String>,
    /// `regex`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// `modulus`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modulus: Option<u64>,
    /// `replacement`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
    /// `action`, lower case.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

impl Relabel {
    fn keep_or_drop(action: &str, sources: &[String], regex: String) -> Self {
        Self { action: Some(action.to_owned()), source_labels: sources.to_vec(), regex: Some(regex), ..Self::default() }
    }

    /// `source` into `target` when it is not empty.
    fn copy(source: String, target: String) -> Self {
        Self {
            source_labels: vec![source],
            target_label: Some(target),
            regex: Some("(.+)".to_owned()),
            replacement: Some("${1}".to_owned()),
            ..Self::default()
        }
    }
}

/// prometheus-operator's label name sanitizer: every character outside `[a-zA-Z0-9_]` becomes `_`.
fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

/// What a monitor selects: a Service's endpoints or a pod's containers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Service,
    Pod,
}

/// The fields of a ServiceMonitor or a PodMonitor that rendering reads.
struct View<'a> {
    kind: Kind,
    namespace: &'a str,
    name: &'a str,
    job_label: Option<&'a str>,
    target_labels: &'a [String],
    pod_target_labels: &'a [String],
    endpoints: &'a [Endpoint],
    endpoints_field: &'static str,
    selector: &'a LabelSelector,
    namespace_selector: &'a NamespaceSelector,
    options: &'a JobOptions,
    unsupported: &'a BTreeMap<String, serde_json::Value>,
}

impl<'a> View<'a> {
    fn service(m: &'a ServiceMonitor) -> Self {
        let spec = &m.spec;
        View {
            kind: Kind::Service,
            namespace: m.metadata.namespace.as_deref().unwrap_or_default(),
            name: m.metadata.name.as_deref().unwrap_or_default(),
            job_label: spec.job_label.as_deref(),
            target_labels: &spec.target_labels,
            pod_target_labels: &spec.pod_target_labels,
            endpoints: &spec.endpoints,
            endpoints_field: "endpoints",
            selector: &spec.selector,
            namespace_selector: &spec.namespace_selector,
            options: &spec.options,
            unsupported: &spec.unsupported,
        }
    }

    fn pod(m: &'a PodMonitor) -> Self {
        let spec = &m.spec;
        View {
            kind: Kind::Pod,
            namespace: m.metadata.namespace.as_deref().unwrap_or_default(),
            name: m.metadata.name.as_deref().unwrap_or_default(),
            job_label: spec.job_label.as_deref(),
            target_labels: &[],
            pod_target_labels: &spec.pod_target_labels,
            endpoints: &spec.pod_metrics_endpoints,
            endpoints_field: "podMetricsEndpoints",
            selector: &spec.selector,
            namespace_selector: &spec.namespace_selector,
            options: &spec.options,
            unsupported: &spec.unsupported,
        }
    }

    /// `ServiceMonitor <ns>/<name>` or `PodMonitor <ns>/<name>`.
    fn object(&self) -> String {
        let kind = match self.kind {
            Kind::Service => "ServiceMonitor",
            Kind::Pod => "PodMonitor",
        };
        format!("{kind} {}/{}", self.namespace, self.name)
    }

    /// The meta label prefix of the selected objects' labels.
    fn label_meta(&self) -> &'static str {
        match self.kind {
            Kind::Service => "__meta_kubernetes_service_label",
            Kind::Pod => "__meta_kubernetes_pod_label",
        }
    }
}

/// Renders the endpoints of ServiceMonitors (already chosen and sorted, see [`super::select`]).
pub fn build_scrape_jobs(monitors: &[&ServiceMonitor]) -> ScrapeJobs {
    render(monitors.iter().map(|m| View::service(m)))
}

/// Renders the endpoints of PodMonitors (already chosen and sorted, see [`super::select`]): jobs named
/// `podMonitor/<ns>/<name>/<i>`, pod discovery, `job` = `<ns>/<name>` unless `jobLabel` says otherwise.
pub fn build_pod_monitor_jobs(monitors: &[&PodMonitor]) -> ScrapeJobs {
    render(monitors.iter().map(|m| View::pod(m)))
}

fn render<'a>(views: impl Iterator<Item = View<'a>>) -> ScrapeJobs {
    let mut out = ScrapeJobs::default();
    for view in views {
        let object = view.object();
        if let Err((field, reason)) = check_monitor(&view) {
            out.refused.push(Refused { object, field, reason });
            continue;
        }
        for (i, endpoint) in view.endpoints.iter().enumerate() {
            match check_endpoint(endpoint) {
                Ok(()) => out.jobs.push(job(&view, i, endpoint)),
                Err((field, reason)) => {
                    let field = format!("spec.{}[{i}].{field}", view.endpoints_field);
                    out.refused.push(Refused { object: object.clone(), field, reason });
                }
            }
        }
    }
    out
}

/// A refused field (relative path) and the reason.
type Fault = (String, String);

const CREDENTIALS: &str = "OAuth2 is not supported yet: use basicAuth or authorization with a Secret";

fn unsupported(map: &BTreeMap<String, serde_json::Value>, prefix: &str) -> Result<(), Fault> {
    match map.keys().next() {
        None => Ok(()),
        Some(key) => {
            let reason = match key.as_str() {
                "oauth2" => CREDENTIALS.to_owned(),
                _ => "this field is not supported yet (docs/prometheus-operator.md lists what is)".to_owned(),
            };
            Err((format!("{prefix}{key}"), reason))
        }
    }
}

fn check_monitor(view: &View<'_>) -> Result<(), Fault> {
    unsupported(view.unsupported, "spec.")?;
    if view.job_label.is_some_and(str::is_empty) {
        return Err(("spec.jobLabel".to_owned(), "must not be empty when set".to_owned()));
    }
    if let Some(limit) = &view.options.body_size_limit
        && !is_byte_size(limit)
    {
        return Err(("spec.bodySizeLimit".to_owned(), format!("{limit:?} is not a size such as 10MB or 512KiB")));
    }
    for protocol in &view.options.scrape_protocols {
        if !SCRAPE_PROTOCOLS.contains(&protocol.as_str()) {
            return Err((
                "spec.scrapeProtocols".to_owned(),
                format!("{protocol:?} is not one of {}", SCRAPE_PROTOCOLS.join(", ")),
            ));
        }
    }
    for expression in view.selector.match_expressions.iter().flatten() {
        if !["In", "NotIn", "Exists", "DoesNotExist"].contains(&expression.operator.as_str()) {
            return Err((
                "spec.selector.matchExpressions".to_owned(),
                format!("operator {:?} is not In, NotIn, Exists or DoesNotExist", expression.operator),
            ));
        }
    }
    Ok(())
}

/// Scrape protocols every Prometheus this operator runs (2.x and 3.x) knows.
const SCRAPE_PROTOCOLS: [&str; 4] =
    ["PrometheusProto", "OpenMetricsText0.0.1", "OpenMetricsText1.0.0", "PrometheusText0.0.4"];

fn is_byte_size(s: &str) -> bool {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let unit = &s[digits..];
    digits > 0 && ["B", "KB", "MB", "GB", "TB", "PB", "EB", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"].contains(&unit)
}

fn check_endpoint(endpoint: &Endpoint) -> Result<(), Fault> {
    unsupported(&endpoint.unsupported, "")?;
    if let Some(tls) = &endpoint.tls_config {
        unsupported(&tls.unsupported, "tlsConfig.")?;
    }
    check_credentials(endpoint)?;
    for (field, value) in [("interval", &endpoint.interval), ("scrapeTimeout", &endpoint.scrape_timeout)] {
        if let Some(v) = value
            && let Err(e) = crate::duration::parse(v)
        {
            return Err((field.to_owned(), format!("{e}; use a Prometheus duration such as 30s or 1m")));
        }
    }
    if let (Some(interval), Some(timeout)) = (&endpoint.interval, &endpoint.scrape_timeout)
        && crate::duration::parse(timeout).ok() > crate::duration::parse(interval).ok()
    {
        return Err(("scrapeTimeout".to_owned(), format!("{timeout} is longer than the interval {interval}")));
    }
    if let Some(scheme) = &endpoint.scheme
        && !["http", "https"].contains(&scheme.as_str())
    {
        return Err(("scheme".to_owned(), format!("{scheme:?} is not http or https")));
    }
    if let Some(path) = &endpoint.path
        && !path.starts_with('/')
    {
        return Err(("path".to_owned(), format!("{path:?} must start with /")));
    }
    for (field, rules) in [("relabelings", &endpoint.relabelings), ("metricRelabelings", &endpoint.metric_relabelings)]
    {
        for (i, rule) in rules.iter().enumerate() {
            check_relabel(rule).map_err(|reason| (format!("{field}[{i}]"), reason))?;
        }
    }
    Ok(())
}

/// What Prometheus refuses among an endpoint's credentials: two kinds of authentication at once, a `Basic`
/// authorization type, a Secret reference without name or key, a ConfigMap source (not supported yet).
fn check_credentials(endpoint: &Endpoint) -> Result<(), Fault> {
    let set = [
        ("basicAuth", endpoint.basic_auth.is_some()),
        ("authorization", endpoint.authorization.is_some()),
        ("bearerTokenSecret", endpoint.bearer_token_secret.is_some()),
        ("bearerTokenFile", endpoint.bearer_token_file.is_some()),
    ];
    let chosen: Vec<&str> = set.iter().filter(|(_, on)| *on).map(|(f, _)| *f).collect();
    if chosen.len() > 1 {
        return Err((
            chosen[1].to_owned(),
            format!("{} and {} cannot both be set: keep one of them", chosen[0], chosen[1]),
        ));
    }
    if let Some(kind) = endpoint.authorization.as_ref().and_then(|a| a.type_.as_deref())
        && kind.eq_ignore_ascii_case("basic")
    {
        return Err(("authorization.type".to_owned(), "Basic is not allowed here: use basicAuth".to_owned()));
    }
    if endpoint.authorization.as_ref().is_some_and(|a| a.credentials.is_none()) {
        return Err(("authorization.credentials".to_owned(), "is required: name a Secret key".to_owned()));
    }
    if endpoint.basic_auth.as_ref().is_some_and(|b| b.username.is_none()) {
        return Err(("basicAuth.username".to_owned(), "is required: name a Secret key".to_owned()));
    }
    for (field, reference) in secret_refs(endpoint) {
        if reference.name.is_empty() || reference.key.is_empty() {
            return Err((field, "needs both name and key".to_owned()));
        }
        if reference.key.contains('/') || reference.key == ".." || reference.key == "." {
            return Err((field, format!("key {:?} is not a Secret key", reference.key)));
        }
    }
    if let Some(tls) = &endpoint.tls_config {
        for (field, source, file) in [("ca", &tls.ca, &tls.ca_file), ("cert", &tls.cert, &tls.cert_file)] {
            let Some(source) = source else { continue };
            if source.config_map.is_some() {
                return Err((
                    format!("tlsConfig.{field}.configMap"),
                    "certificates from ConfigMaps are not supported yet: put the certificate in a Secret".to_owned(),
                ));
            }
            if file.is_some() {
                return Err((format!("tlsConfig.{field}"), format!("{field} and {field}File cannot both be set")));
            }
        }
        if tls.key_secret.is_some() && tls.key_file.is_some() {
            return Err(("tlsConfig.keySecret".to_owned(), "keySecret and keyFile cannot both be set".to_owned()));
        }
    }
    Ok(())
}

/// The endpoint's Secret references, each with its field under the endpoint.
fn secret_refs(endpoint: &Endpoint) -> Vec<(String, &SecretKeyRef)> {
    let mut out = Vec::new();
    if let Some(basic) = &endpoint.basic_auth {
        out.extend(basic.username.as_ref().map(|r| ("basicAuth.username".to_owned(), r)));
        out.extend(basic.password.as_ref().map(|r| ("basicAuth.password".to_owned(), r)));
    }
    out.extend(endpoint.bearer_token_secret.as_ref().map(|r| ("bearerTokenSecret".to_owned(), r)));
    out.extend(
        endpoint
            .authorization
            .as_ref()
            .and_then(|a| a.credentials.as_ref())
            .map(|r| ("authorization.credentials".to_owned(), r)),
    );
    if let Some(tls) = &endpoint.tls_config {
        out.extend(tls.ca.as_ref().and_then(|c| c.secret.as_ref()).map(|r| ("tlsConfig.ca.secret".to_owned(), r)));
        out.extend(tls.cert.as_ref().and_then(|c| c.secret.as_ref()).map(|r| ("tlsConfig.cert.secret".to_owned(), r)));
        out.extend(tls.key_secret.as_ref().map(|r| ("tlsConfig.keySecret".to_owned(), r)));
    }
    out
}

/// Where the pod finds `key` of the mounted Secret `secret`.
fn secret_file(secret: &str, key: &str) -> String {
    format!("{}/{secret}/{key}", crate::constants::paths::SECRETS_DIR)
}

/// Prometheus' own checks of a relabel rule, so that one bad rule never makes it refuse the whole configuration.
pub(crate) fn check_relabel(rule: &RelabelConfig) -> Result<(), String> {
    let action = rule.action.as_deref().unwrap_or("replace").to_ascii_lowercase();
    let target = rule.target_label.as_deref();
    if let Some(regex) = &rule.regex
        && let Err(e) = regex::Regex::new(&format!("^(?:{regex})$"))
    {
        return Err(format!("regex {regex:?} does not compile: {e}"));
    }
    for source in &rule.source_labels {
        if !is_label_name(source) {
            return Err(format!("source label {source:?} is not a label name"));
        }
    }
    match action.as_str() {
        "replace" => match target {
            Some(t) if is_target_template(t) => Ok(()),
            Some(t) => Err(format!("target label {t:?} is not a label name or a ${{1}} template")),
            None => Err("action replace needs targetLabel".to_owned()),
        },
        "hashmod" | "lowercase" | "uppercase" | "keepequal" | "dropequal" => {
            if !target.is_some_and(is_label_name) {
                return Err(format!("action {action} needs targetLabel, a label name"));
            }
            if action == "hashmod" && rule.modulus.unwrap_or(0) == 0 {
                return Err("action hashmod needs a modulus above 0".to_owned());
            }
            if (action == "keepequal" || action == "dropequal") && rule.regex.is_some() {
                return Err(format!("action {action} takes no regex"));
            }
            Ok(())
        }
        "keep" | "drop" | "labelmap" => Ok(()),
        "labeldrop" | "labelkeep" => {
            if rule.source_labels.is_empty() && target.is_none() && rule.modulus.is_none() {
                Ok(())
            } else {
                Err(format!("action {action} takes only a regex"))
            }
        }
        other => Err(format!(
            "action {other:?} is not one of replace, keep, drop, keepequal, dropequal, hashmod, labelmap, labeldrop, \
             labelkeep, lowercase, uppercase"
        )),
    }
}

/// A label name, or one made of `$1`, `${name}` and name characters, as `replace` accepts.
fn is_target_template(t: &str) -> bool {
    let mut rest = t;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("${") {
            let Some(end) = after.find('}') else { return false };
            if end == 0 || !after[..end].chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return false;
            }
            rest = &after[end + 1..];
        } else if let Some(after) = rest.strip_prefix('$') {
            let n = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').count();
            if n == 0 {
                return false;
            }
            rest = &after[n..];
        } else {
            let c = rest.chars().next().unwrap_or('-');
            if !(c.is_ascii_alphanumeric() || c == '_') {
                return false;
            }
            rest = &rest[c.len_utf8()..];
        }
    }
    !t.starts_with(|c: char| c.is_ascii_digit())
}

pub(crate) fn relabel(rule: &RelabelConfig) -> Relabel {
    Relabel {
        source_labels: rule.source_labels.clone(),
        separator: rule.separator.clone(),
        target_label: rule.target_label.clone(),
        regex: rule.regex.clone(),
        modulus: rule.modulus,
        replacement: rule.replacement.clone(),
        action: rule.action.as_deref().map(str::to_ascii_lowercase),
    }
}

fn tls(config: &TlsConfig) -> Tls {
    let from_secret = |source: &Option<SecretOrConfigMap>| {
        source.as_ref().and_then(|s| s.secret.as_ref()).map(|r| secret_file(&r.name, &r.key))
    };
    Tls {
        ca_file: config.ca_file.clone().or_else(|| from_secret(&config.ca)),
        cert_file: config.cert_file.clone().or_else(|| from_secret(&config.cert)),
        key_file: config.key_file.clone().or_else(|| config.key_secret.as_ref().map(|r| secret_file(&r.name, &r.key))),
        server_name: config.server_name.clone(),
        insecure_skip_verify: config.insecure_skip_verify,
    }
}

fn port_text(port: &IntOrString) -> String {
    match port {
        IntOrString::Int(n) => n.to_string(),
        IntOrString::String(s) => s.clone(),
    }
}

fn job(view: &View<'_>, i: usize, endpoint: &Endpoint) -> ScrapeJob {
    let names = if view.namespace_selector.any {
        None
    } else if view.namespace_selector.match_names.is_empty() {
        Some(Namespaces { names: vec![view.namespace.to_owned()] })
    } else {
        Some(Namespaces { names: view.namespace_selector.match_names.clone() })
    };
    let (prefix, role) = match view.kind {
        Kind::Service => ("serviceMonitor", "endpoints"),
        Kind::Pod => ("podMonitor", "pod"),
    };
    let options = view.options;
    ScrapeJob {
        job_name: format!("{prefix}/{}/{}/{i}", view.namespace, view.name),
        honor_labels: endpoint.honor_labels,
        honor_timestamps: endpoint.honor_timestamps,
        track_timestamps_staleness: endpoint.track_timestamps_staleness,
        kubernetes_sd_configs: vec![KubernetesSd {
            role,
            namespaces: names,
            attach_metadata: options.attach_metadata.as_ref().map(|m| NodeMetadata { node: m.node.unwrap_or(false) }),
        }],
        scrape_interval: endpoint.interval.clone(),
        scrape_timeout: endpoint.scrape_timeout.clone(),
        metrics_path: endpoint.path.clone(),
        proxy_url: endpoint.proxy_url.clone(),
        params: endpoint.params.clone(),
        scheme: endpoint.scheme.clone(),
        follow_redirects: endpoint.follow_redirects,
        enable_http2: endpoint.enable_http2,
        tls_config: endpoint.tls_config.as_ref().map(tls),
        bearer_token_file: endpoint.bearer_token_file.clone(),
        basic_auth: endpoint.basic_auth.as_ref().map(|b| BasicAuthFiles {
            username_file: b.username.as_ref().map(|r| secret_file(&r.name, &r.key)),
            password_file: b.password.as_ref().map(|r| secret_file(&r.name, &r.key)),
        }),
        authorization: authorization(endpoint),
        relabel_configs: relabelings(view, endpoint),
        sample_limit: options.sample_limit,
        target_limit: options.target_limit,
        label_limit: options.label_limit,
        label_name_length_limit: options.label_name_length_limit,
        label_value_length_limit: options.label_value_length_limit,
        keep_dropped_targets: options.keep_dropped_targets,
        scrape_protocols: options.scrape_protocols.clone(),
        body_size_limit: options.body_size_limit.clone(),
        metric_relabel_configs: endpoint.metric_relabelings.iter().map(relabel).collect(),
        secret_keys: secret_refs(endpoint)
            .into_iter()
            .map(|(field, r)| SecretUse {
                field,
                secret: r.name.clone(),
                key: r.key.clone(),
                optional: r.optional == Some(true),
            })
            .collect(),
    }
}

/// `authorization` from `authorization.credentials` or `bearerTokenSecret`.
fn authorization(endpoint: &Endpoint) -> Option<AuthorizationFile> {
    if let Some(auth) = &endpoint.authorization {
        let credentials = auth.credentials.as_ref()?;
        return Some(AuthorizationFile {
            type_: auth.type_.clone().filter(|t| !t.is_empty()),
            credentials_file: secret_file(&credentials.name, &credentials.key),
        });
    }
    let token = endpoint.bearer_token_secret.as_ref()?;
    Some(AuthorizationFile { type_: None, credentials_file: secret_file(&token.name, &token.key) })
}

/// prometheus-operator's relabelings of an endpoint, in its order, then the endpoint's own.
fn relabelings(view: &View<'_>, endpoint: &Endpoint) -> Vec<Relabel> {
    let meta = view.label_meta();
    let running_filter =
        || Relabel::keep_or_drop("drop", &["__meta_kubernetes_pod_phase".to_owned()], "(Failed|Succeeded)".to_owned());
    // The job name as it was, for rules that want it.
    let mut rules = vec![Relabel {
        source_labels: vec!["job".to_owned()],
        target_label: Some("__tmp_prometheus_job_name".to_owned()),
        ..Relabel::default()
    }];
    let filter_running = endpoint.filter_running.unwrap_or(true);
    if view.kind == Kind::Pod && filter_running {
        rules.push(running_filter());
    }
    rules.extend(selection(view, endpoint));
    match view.kind {
        Kind::Service => {
            // Where the target is: node or pod, namespace, service, pod, container.
            let target = vec![
                "__meta_kubernetes_endpoint_address_target_kind".to_owned(),
                "__meta_kubernetes_endpoint_address_target_name".to_owned(),
            ];
            for (kind, label) in [("Node", "node"), ("Pod", "pod")] {
                rules.push(Relabel {
                    source_labels: target.clone(),
                    separator: Some(";".to_owned()),
                    regex: Some(format!("{kind};(.*)")),
                    replacement: Some("${1}".to_owned()),
                    target_label: Some(label.to_owned()),
                    ..Relabel::default()
                });
            }
            rules.extend(copies(&[
                ("__meta_kubernetes_namespace", "namespace"),
                ("__meta_kubernetes_service_name", "service"),
                ("__meta_kubernetes_pod_name", "pod"),
                ("__meta_kubernetes_pod_container_name", "container"),
            ]));
            if filter_running {
                rules.push(running_filter());
            }
        }
        Kind::Pod => rules.extend(copies(&[
            ("__meta_kubernetes_namespace", "namespace"),
            ("__meta_kubernetes_pod_container_name", "container"),
            ("__meta_kubernetes_pod_name", "pod"),
        ])),
    }
    for label in view.target_labels {
        rules.push(Relabel::copy(format!("__meta_kubernetes_service_label_{}", sanitize(label)), sanitize(label)));
    }
    for label in view.pod_target_labels {
        rules.push(Relabel::copy(format!("__meta_kubernetes_pod_label_{}", sanitize(label)), sanitize(label)));
    }
    // The job: the Service's name (a PodMonitor's `<ns>/<name>`), or the value of the jobLabel label.
    rules.push(match view.kind {
        Kind::Service => Relabel {
            source_labels: vec!["__meta_kubernetes_service_name".to_owned()],
            target_label: Some("job".to_owned()),
            replacement: Some("${1}".to_owned()),
            ..Relabel::default()
        },
        Kind::Pod => Relabel {
            target_label: Some("job".to_owned()),
            replacement: Some(format!("{}/{}", view.namespace, view.name)),
            ..Relabel::default()
        },
    });
    if let Some(label) = view.job_label {
        rules.push(Relabel::copy(format!("{meta}_{}", sanitize(label)), "job".to_owned()));
    }
    // The endpoint label: the port's name, else the target port.
    let endpoint_label = match (&endpoint.port, &endpoint.target_port) {
        (Some(port), _) if !port.is_empty() => Some(port.clone()),
        (_, Some(target)) if !port_text(target).is_empty() => Some(port_text(target)),
        _ => None,
    };
    if let Some(value) = endpoint_label {
        rules.push(Relabel {
            target_label: Some("endpoint".to_owned()),
            replacement: Some(value),
            ..Relabel::default()
        });
    }
    rules.extend(endpoint.relabelings.iter().map(relabel));
    rules
}

/// The keep and drop rules of the monitor's selector and of the endpoint's port.
fn selection(view: &View<'_>, endpoint: &Endpoint) -> Vec<Relabel> {
    let meta = view.label_meta();
    let selected_label = |key: &str| {
        let key = sanitize(key);
        vec![format!("{meta}_{key}"), format!("{meta}present_{key}")]
    };
    let present = |key: &str| vec![format!("{meta}present_{}", sanitize(key))];
    let mut rules = Vec::new();
    // The selected Services or pods.
    for (key, value) in view.selector.match_labels.iter().flatten() {
        rules.push(Relabel::keep_or_drop("keep", &selected_label(key), format!("({value});true")));
    }
    for expression in view.selector.match_expressions.iter().flatten() {
        let values = expression.values.as_deref().unwrap_or_default().join("|");
        let rule = match expression.operator.as_str() {
            "In" => Relabel::keep_or_drop("keep", &selected_label(&expression.key), format!("({values});true")),
            "NotIn" => Relabel::keep_or_drop("drop", &selected_label(&expression.key), format!("({values});true")),
            "Exists" => Relabel::keep_or_drop("keep", &present(&expression.key), "true".to_owned()),
            _ => Relabel::keep_or_drop("drop", &present(&expression.key), "true".to_owned()),
        };
        rules.push(rule);
    }
    // The endpoint's port: a Service port's name, or a container port's name or number.
    let port_name_meta = match view.kind {
        Kind::Service => "__meta_kubernetes_endpoint_port_name",
        Kind::Pod => "__meta_kubernetes_pod_container_port_name",
    };
    let port_rule = match (&endpoint.port, &endpoint.target_port) {
        (Some(port), _) if !port.is_empty() => Some((port_name_meta, port.clone())),
        (_, Some(IntOrString::String(name))) if !name.is_empty() => {
            Some(("__meta_kubernetes_pod_container_port_name", name.clone()))
        }
        (_, Some(IntOrString::Int(n))) if *n != 0 => {
            Some(("__meta_kubernetes_pod_container_port_number", n.to_string()))
        }
        _ => None,
    };
    if let Some((source, regex)) = port_rule {
        rules.push(Relabel::keep_or_drop("keep", &[source.to_owned()], regex));
    }
    rules
}

/// `source` copied into `target` as is, for each pair.
fn copies(pairs: &[(&str, &str)]) -> Vec<Relabel> {
    pairs
        .iter()
        .map(|(source, target)| Relabel {
            source_labels: vec![(*source).to_owned()],
            target_label: Some((*target).to_owned()),
            ..Relabel::default()
        })
        .collect()
}
