//! Part of the **build** step: the PodDisruptionBudget `<name>`, so that node drains take at most one replica
//! down at a time. Pure: no I/O.
//!
//! Rendered as `policy/v1` types; `DesiredObjects::manifests` switches the `apiVersion` to `policy/v1beta1` for
//! servers older than 1.21 (the spec fields used here are the same in both).

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::BuildContext;

/// Renders the PodDisruptionBudget: `maxUnavailable: 1` when there is more than one replica, `None` otherwise
/// (with one replica a budget would block every drain).
pub fn build_pdb(ctx: &BuildContext<'_>) -> Option<PodDisruptionBudget> {
    if ctx.cluster.spec.replicas <= 1 {
        return None;
    }
    Some(PodDisruptionBudget {
        metadata: ctx.object_meta(ctx.name.to_owned()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(ctx.selector_labels()), match_expressions: None }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}
