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
mod types;

pub use render::{Refused, ScrapeJobs, build_pod_monitor_jobs, build_scrape_jobs};
pub use types::*;

use std::collections::BTreeMap;

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

#[cfg(test)]
mod tests;
