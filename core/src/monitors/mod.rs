//! prometheus-operator's `ServiceMonitor` and `PodMonitor` (`monitoring.coreos.com/v1`), read unchanged and
//! rendered into Prometheus scrape jobs as prometheus-operator renders them: the same job names
//! (`serviceMonitor/<ns>/<name>/<i>`, `podMonitor/...`), the same Kubernetes service discovery and the same
//! relabelings, so that a monitor scrapes the same targets with the same labels (`namespace`, `service`, `pod`,
//! `container`, `node`, `job`, `endpoint`, `targetLabels`, `podTargetLabels`). Pure.
//!
//! # What is not supported yet
//! Fields whose values live in Secrets or ConfigMaps of the monitor's namespace (`basicAuth`, `authorization`,
//! `oauth2`, `bearerTokenSecret`, `tlsConfig.ca`/`cert`/`keySecret`): prometheus-operator copies their values
//! into its configuration Secret; this operator does not copy credentials between namespaces yet. Scrape classes
//! and sharding are not either. A monitor or endpoint that uses any field this module does not know is not
//! rendered at all (scraping it without its credentials would only fail), and [`Refused`] names the field, so the
//! caller can report it in status instead of ignoring it. Values Prometheus would refuse (a bad duration, scheme,
//! label name, relabel action or regular expression) are refused here too: one bad monitor must never make
//! Prometheus reject the whole configuration.
//!
//! # Flow
//! [`select`] picks the monitors a cluster's selectors choose, [`build_scrape_jobs`] and [`build_pod_monitor_jobs`]
//! render them (sorted by namespace and name, so the output is stable) and list what they refused.

mod render;
pub mod rules;
mod types;

pub use render::{
    AuthorizationFile, BasicAuthFiles, KubernetesSd, Refused, Relabel, ScrapeJob, ScrapeJobs, SecretUse, Tls,
    build_pod_monitor_jobs, build_scrape_jobs,
};
pub(crate) use render::{check_relabel, relabel};
pub use rules::{PrometheusRule, PrometheusRuleSpec, Rule, RuleFile, RuleGroup};
pub use types::*;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::crd::PrometheusCluster;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::selector;

/// The monitors chosen by a cluster in `own_namespace` with `monitor_selector` and `namespace_selector`, as
/// prometheus-operator chooses them: no monitor selector selects none (an empty one selects all); no namespace
/// selector means the cluster's own namespace only (an empty one means every namespace). `namespaces` holds the
/// labels of every namespace; a monitor in a namespace missing from it is not chosen. Sorted by namespace and name.
pub fn select<'a, M: kube::Resource>(
    monitors: &'a [M],
    monitor_selector: Option<&LabelSelector>,
    namespace_selector: Option<&LabelSelector>,
    own_namespace: &str,
    namespaces: &BTreeMap<String, BTreeMap<String, String>>,
) -> Vec<&'a M> {
    let Some(monitor_selector) = monitor_selector else { return Vec::new() };
    let in_namespace = |ns: &str| match namespace_selector {
        None => ns == own_namespace,
        Some(s) => namespaces.get(ns).is_some_and(|labels| selector::matches(Some(s), labels)),
    };
    let empty = BTreeMap::new();
    let mut chosen: Vec<&M> = monitors
        .iter()
        .filter(|m| in_namespace(m.meta().namespace.as_deref().unwrap_or_default()))
        .filter(|m| selector::matches(Some(monitor_selector), m.meta().labels.as_ref().unwrap_or(&empty)))
        .collect();
    chosen.sort_by(|a, b| (&a.meta().namespace, &a.meta().name).cmp(&(&b.meta().namespace, &b.meta().name)));
    chosen
}

/// What the operator saw of prometheus-operator's objects, for the decisions of the clusters that select them.
#[derive(Debug, Clone, Copy)]
pub struct ObservedMonitors<'a> {
    /// Every ServiceMonitor the operator may read; `None` when the ServiceMonitor CRD is not installed.
    pub service_monitors: Option<&'a [ServiceMonitor]>,
    /// Every PodMonitor the operator may read; `None` when the PodMonitor CRD is not installed.
    pub pod_monitors: Option<&'a [PodMonitor]>,
    /// Every PrometheusRule the operator may read; `None` when the PrometheusRule CRD is not installed.
    pub prometheus_rules: Option<&'a [PrometheusRule]>,
    /// The labels of every namespace, for the namespace selectors.
    pub namespaces: &'a BTreeMap<String, BTreeMap<String, String>>,
    /// The keys of the Secrets of the cluster's namespace that the chosen monitors' credentials name
    /// ([`crate::decide::reads_with_monitors`]); a Secret missing from the map does not exist. `None` when not observed (an offline
    /// dry run), which refuses no credentials.
    pub secrets: Option<&'a BTreeMap<String, BTreeSet<String>>>,
}

/// What one cluster's monitor selectors chose, rendered ([`choose_for_cluster`]).
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterMonitors {
    /// ServiceMonitors chosen.
    pub service_monitors: usize,
    /// PodMonitors chosen.
    pub pod_monitors: usize,
    /// The scrape jobs, ServiceMonitors' first, each kind sorted by namespace and name.
    pub jobs: Vec<ScrapeJob>,
    /// Monitors and endpoints not rendered, with the reason.
    pub refused: Vec<Refused>,
    /// PrometheusRules chosen by `ruleSelector`.
    pub prometheus_rules: usize,
    /// Their rule files (those with anything left to load), each keyed by its ConfigMap key.
    pub rule_files: Vec<RuleFile>,
    /// Rules, groups and PrometheusRules not loaded, with the reason.
    pub rules_refused: Vec<Refused>,
    /// Kinds a selector asks for whose CRD is not installed (`ServiceMonitor`, `PodMonitor`, `PrometheusRule`).
    pub missing_crds: Vec<&'static str>,
    /// The Secrets of the cluster's namespace whose keys the jobs read (basic auth, tokens, TLS): mounted into
    /// the pods under `/etc/prometheus/secrets/<name>/`.
    pub secrets: BTreeSet<String>,
    /// Namespaces other than the cluster's own that the jobs discover targets in and that exist (sorted): each gets
    /// the discovery Role and RoleBinding ([`crate::build::discovery`]).
    pub other_namespaces: BTreeSet<String>,
    /// Whether a job discovers in every namespace (`namespaceSelector.any`).
    pub all_namespaces: bool,
}

/// Most bytes `monitor-scrape-configs.yml` may take in the ConfigMap (a ConfigMap holds at most 1 MiB, shared with
/// `prometheus.yml`, the inline scrape configs and the rule files, [`rules::RULE_FILES_BUDGET`]). A larger file is stored gzipped (about 30 times smaller for
/// typical monitors), and only jobs beyond what even that holds are refused.
pub const MONITOR_FILE_BUDGET: usize = 640 * 1024;

/// The monitors and PrometheusRules `cluster`'s selectors choose among `observed`, rendered into scrape jobs and
/// rule files; the refusals and the CRDs that are missing. A cluster without such selectors gets an empty result.
pub fn choose_for_cluster(cluster: &PrometheusCluster, observed: &ObservedMonitors<'_>) -> ClusterMonitors {
    choose(cluster, observed, true)
}

/// [`choose_for_cluster`]; with `fit` false the jobs are not sized against [`MONITOR_FILE_BUDGET`] (which renders
/// and may gzip the whole file), for callers that only need which Secrets and namespaces the jobs use.
fn choose(cluster: &PrometheusCluster, observed: &ObservedMonitors<'_>, fit_budget: bool) -> ClusterMonitors {
    let spec = &cluster.spec;
    let own = cluster.metadata.namespace.as_deref().unwrap_or_default();
    let mut out = ClusterMonitors::default();
    let mut rendered = ScrapeJobs::default();
    if let Some(selector) = &spec.service_monitor_selector {
        match observed.service_monitors {
            Some(all) => {
                let chosen = select(
                    all,
                    Some(selector),
                    spec.service_monitor_namespace_selector.as_ref(),
                    own,
                    observed.namespaces,
                );
                out.service_monitors = chosen.len();
                rendered = build_scrape_jobs(&chosen);
            }
            None => out.missing_crds.push("ServiceMonitor"),
        }
    }
    if let Some(selector) = &spec.pod_monitor_selector {
        match observed.pod_monitors {
            Some(all) => {
                let chosen =
                    select(all, Some(selector), spec.pod_monitor_namespace_selector.as_ref(), own, observed.namespaces);
                out.pod_monitors = chosen.len();
                let pods = build_pod_monitor_jobs(&chosen);
                rendered.jobs.extend(pods.jobs);
                rendered.refused.extend(pods.refused);
            }
            None => out.missing_crds.push("PodMonitor"),
        }
    }
    if let Some(selector) = &spec.rule_selector {
        match observed.prometheus_rules {
            Some(all) => {
                let chosen =
                    select(all, Some(selector), spec.rule_namespace_selector.as_ref(), own, observed.namespaces);
                out.prometheus_rules = chosen.len();
                (out.rule_files, out.rules_refused) = rules::render_prometheus_rules(&chosen, rules::RULE_FILES_BUDGET);
            }
            None => out.missing_crds.push("PrometheusRule"),
        }
    }
    check_secrets(&mut rendered, own, observed.secrets);
    for sd in rendered.jobs.iter().flat_map(|j| &j.kubernetes_sd_configs) {
        match &sd.namespaces {
            None => out.all_namespaces = true,
            // Only namespaces that exist: a Role cannot be put into a missing one (and with --watch-namespace only
            // the cluster's own is known, so nothing is granted elsewhere).
            Some(ns) => out.other_namespaces.extend(
                ns.names.iter().filter(|n| n.as_str() != own && observed.namespaces.contains_key(n.as_str())).cloned(),
            ),
        }
    }
    out.jobs = rendered.jobs;
    out.refused = rendered.refused;
    if fit_budget {
        fit(&mut out, MONITOR_FILE_BUDGET);
    }
    out.secrets = out.jobs.iter().flat_map(|j| &j.secret_keys).map(|u| u.secret.clone()).collect();
    out
}

/// [`choose_for_cluster`] before the Secrets are known, without the PrometheusRules and without sizing the file:
/// what the adapter must read (the Secrets whose keys the chosen monitors read, the namespaces they discover in).
/// Jobs that the size budget would refuse may add a Secret or namespace to read; reading one more is harmless,
/// while rendering the whole file here too would cost a third render per reconcile.
pub(crate) fn choose_unchecked(cluster: &PrometheusCluster, observed: &ObservedMonitors<'_>) -> ClusterMonitors {
    let unchecked = ObservedMonitors { secrets: None, prometheus_rules: None, ..*observed };
    choose(cluster, &unchecked, false)
}

/// Refuses the jobs whose credentials the pods cannot read: a monitor outside the cluster's namespace (a pod
/// mounts only Secrets of its own namespace), or a Secret or key that does not exist (unless optional).
fn check_secrets(rendered: &mut ScrapeJobs, own: &str, found: Option<&BTreeMap<String, BTreeSet<String>>>) {
    let jobs = std::mem::take(&mut rendered.jobs);
    for job in jobs {
        let problem = job.secret_keys.iter().find_map(|u| {
            let (kind, ns, name, index) = job_parts(&job.job_name);
            let refuse = |reason: String| {
                let field = if kind == "PodMonitor" { "podMetricsEndpoints" } else { "endpoints" };
                Refused {
                    object: format!("{kind} {ns}/{name}"),
                    field: format!("spec.{field}[{index}].{}", u.field),
                    reason,
                }
            };
            if ns != own {
                return Some(refuse(format!(
                    "credentials from Secrets work for monitors in the cluster's namespace {own} only (a pod mounts                      Secrets of its own namespace): move the monitor there, or scrape without them"
                )));
            }
            let keys = found?;
            match keys.get(&u.secret) {
                _ if u.optional => None,
                None => Some(refuse(format!("Secret {ns}/{} does not exist: create it with the key {:?}", u.secret, u.key))),
                Some(k) if !k.contains(&u.key) => {
                    Some(refuse(format!("Secret {ns}/{} has no key {:?}: add it, or name another key", u.secret, u.key)))
                }
                Some(_) => None,
            }
        });
        match problem {
            Some(refused) => rendered.refused.push(refused),
            None => rendered.jobs.push(job),
        }
    }
}

/// `(kind, namespace, name, endpoint index)` of a job named `serviceMonitor/<ns>/<name>/<i>` or
/// `podMonitor/...`.
fn job_parts(job_name: &str) -> (&'static str, &str, &str, &str) {
    let mut parts = job_name.splitn(4, '/');
    let kind = match parts.next() {
        Some("podMonitor") => "PodMonitor",
        _ => "ServiceMonitor",
    };
    (kind, parts.next().unwrap_or_default(), parts.next().unwrap_or_default(), parts.next().unwrap_or_default())
}

/// Keeps the jobs whose YAML fits in `budget` bytes, in order, and refuses the rest (each named with its monitor and
/// endpoint): a ConfigMap over 1 MiB would be refused by the API server, and with it every change of the cluster.
fn fit(chosen: &mut ClusterMonitors, budget: usize) {
    let stored = |jobs: &[ScrapeJob]| {
        let yaml = serde_yaml::to_string(jobs).unwrap_or_default();
        if yaml.len() <= budget { yaml.len() } else { crate::build::config::gzip(yaml.as_bytes()).len() }
    };
    let mut size = stored(&chosen.jobs);
    if size <= budget {
        return;
    }
    // Keep the share of jobs that fits, a little less each round until it does (compression is not linear).
    let mut keep = chosen.jobs.len();
    while size > budget && keep > 0 {
        keep = (keep * budget / size.max(1)).min(keep - 1) * 19 / 20;
        size = stored(&chosen.jobs[..keep]);
    }
    let over = chosen.jobs.split_off(keep);
    for job in over {
        let (kind, ns, name, index) = job_parts(&job.job_name);
        let field = if kind == "PodMonitor" { "podMetricsEndpoints" } else { "endpoints" };
        chosen.refused.push(Refused {
            object: format!("{kind} {ns}/{name}"),
            field: format!("spec.{field}[{index}]"),
            reason: format!(
                "the cluster's scrape configuration is full ({budget} bytes of the ConfigMap's 1 MiB): select fewer \
                 monitors with serviceMonitorSelector/podMonitorSelector, or split them across clusters"
            ),
        });
    }
}

#[cfg(test)]
mod tests;
