//! Part of the **build** step: what a cluster that scrapes prometheus-operator's monitors needs for Kubernetes
//! service discovery. Pure: no I/O.
//!
//! With `serviceMonitorSelector` or `podMonitorSelector` set, or Alertmanagers in `spec.alerting`, Prometheus watches Services, Endpoints and Pods
//! through the API server as its pods' ServiceAccount. The operator renders:
//! - the ServiceAccount `<name>-discovery`, unless `spec.serviceAccountName` names the user's own;
//! - the Role `<name>-discovery`: `list` and `watch` of `services`, `endpoints` and `pods` in the cluster's
//!   namespace, nothing else (no Secrets, no writes, no other namespace);
//! - the RoleBinding `<name>-discovery` of that Role to the pods' ServiceAccount.
//!
//! All three are owned by the cluster and go with it. In each other namespace the selected monitors discover
//! targets in (a ServiceMonitor's own namespace, `namespaceSelector.matchNames`; namespaces that exist), the same Role and a RoleBinding
//! of it to the pods' ServiceAccount, both named `<cluster namespace>.<name>-discovery`. An ownerReference
//! cannot point across namespaces, so these carry the label `observability.merlionos.org/discovery-for: <uid>`
//! instead, and the cluster's status lists their namespaces (`status.discoveryNamespaces`): the operator deletes
//! them when no monitor needs them any more and when the cluster is deleted
//! ([`crate::decide::cleanup_when_gone`], and [`crate::decide::orphaned_elsewhere`] for a deletion the operator did
//! not see). Monitors with `namespaceSelector.any` need the ServiceAccount bound
//! cluster-wide by the user; the `MonitorsAccepted` condition says so.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::constants::labels::DISCOVERY_FOR;

use super::BuildContext;

/// The discovery objects of one cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveryObjects {
    /// `<name>-discovery`, when the user names no ServiceAccount of their own.
    pub service_account: Option<ServiceAccount>,
    /// `<name>-discovery`: list/watch of Services, Endpoints and Pods.
    pub role: Role,
    /// `<name>-discovery`: the Role bound to the pods' ServiceAccount.
    pub role_binding: RoleBinding,
    /// `<cluster namespace>.<name>-discovery`: the same Role and its binding in each other namespace the
    /// selected monitors discover targets in, sorted by namespace.
    pub elsewhere: Vec<(Role, RoleBinding)>,
}

/// The name of the discovery ServiceAccount, Role and RoleBinding: `<name>-discovery`.
pub fn discovery_name(cluster: &str) -> String {
    format!("{cluster}-discovery")
}

/// The name of the discovery Role and RoleBinding of cluster `namespace/cluster` in another namespace:
/// `<namespace>.<cluster>-discovery` (a namespace has no dot, so two clusters never share it).
pub fn discovery_name_elsewhere(namespace: &str, cluster: &str) -> String {
    format!("{namespace}.{cluster}-discovery")
}

/// The namespaces other than the cluster's own that need the discovery Role and RoleBinding: those the chosen
/// monitors discover targets in (`monitors`, [`crate::monitors::ClusterMonitors::other_namespaces`], which holds
/// only namespaces that exist). An Alertmanager in another namespace needs the ServiceAccount bound there by the
/// user.
pub fn namespaces_elsewhere(
    cluster: &crate::crd::PrometheusCluster,
    monitors: Option<&BTreeSet<String>>,
) -> BTreeSet<String> {
    if !cluster.spec.uses_kubernetes_sd() {
        return BTreeSet::new();
    }
    monitors.cloned().unwrap_or_default()
}

/// The ServiceAccount the pods run as: `spec.serviceAccountName`; else, when the cluster selects monitors, the
/// or has Alertmanagers, the operator's `<name>-discovery`; else none (the namespace's `default`).
pub fn pod_service_account(ctx: &BuildContext<'_>) -> Option<String> {
    let spec = &ctx.cluster.spec;
    match spec.service_account_name.as_deref().filter(|s| !s.is_empty()) {
        Some(own) => Some(own.to_owned()),
        None => spec.uses_kubernetes_sd().then(|| discovery_name(ctx.name)),
    }
}

/// Renders the discovery objects; `None` when the cluster uses no Kubernetes service discovery (no monitor
/// selector, no Alertmanagers).
pub fn build_discovery(ctx: &BuildContext<'_>) -> Option<DiscoveryObjects> {
    if !ctx.cluster.spec.uses_kubernetes_sd() {
        return None;
    }
    let name = discovery_name(ctx.name);
    let own_account = ctx.cluster.spec.service_account_name.as_deref().filter(|s| !s.is_empty());
    let account = own_account.map_or_else(|| name.clone(), str::to_owned);
    let service_account = own_account
        .is_none()
        .then(|| ServiceAccount { metadata: ctx.object_meta(name.clone()), ..ServiceAccount::default() });
    let role = |metadata| Role {
        metadata,
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["endpoints".to_owned(), "pods".to_owned(), "services".to_owned()]),
            verbs: vec!["list".to_owned(), "watch".to_owned()],
            ..PolicyRule::default()
        }]),
    };
    let binding = |metadata, role: String| RoleBinding {
        metadata,
        role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".to_owned(), kind: "Role".to_owned(), name: role },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: account.clone(),
            namespace: ctx.namespace.map(str::to_owned),
            ..Subject::default()
        }]),
    };
    let elsewhere_name = discovery_name_elsewhere(ctx.namespace.unwrap_or_default(), ctx.name);
    let elsewhere = namespaces_elsewhere(ctx.cluster, ctx.discovery_namespaces)
        .into_iter()
        .map(|namespace| {
            let mut labels = ctx.common_labels();
            if let Some(uid) = ctx.cluster.metadata.uid.as_deref().filter(|u| !u.is_empty()) {
                labels.insert(DISCOVERY_FOR.to_owned(), uid.to_owned());
            }
            let metadata = ObjectMeta {
                name: Some(elsewhere_name.clone()),
                namespace: Some(namespace),
                labels: Some(labels),
                ..ObjectMeta::default()
            };
            (role(metadata.clone()), binding(metadata, elsewhere_name.clone()))
        })
        .collect();
    Some(DiscoveryObjects {
        service_account,
        role: role(ctx.object_meta(name.clone())),
        role_binding: binding(ctx.object_meta(name.clone()), name),
        elsewhere,
    })
}
