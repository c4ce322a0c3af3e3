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
//! All three are owned by the cluster and go with it. Monitors that discover in other namespaces need the
//! ServiceAccount bound there too; the `MonitorsAccepted` condition names those namespaces.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

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
}

/// The name of the discovery ServiceAccount, Role and RoleBinding: `<name>-discovery`.
pub fn discovery_name(cluster: &str) -> String {
    format!("{cluster}-discovery")
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
    let role = Role {
        metadata: ctx.object_meta(name.clone()),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["endpoints".to_owned(), "pods".to_owned(), "services".to_owned()]),
            verbs: vec!["list".to_owned(), "watch".to_owned()],
            ..PolicyRule::default()
        }]),
    };
    let role_binding = RoleBinding {
        metadata: ctx.object_meta(name.clone()),
        role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".to_owned(), kind: "Role".to_owned(), name },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: account,
            namespace: ctx.namespace.map(str::to_owned),
            ..Subject::default()
        }]),
    };
    Some(DiscoveryObjects { service_account, role, role_binding })
}
