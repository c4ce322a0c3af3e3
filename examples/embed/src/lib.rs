//! A kube-runtime controller that embeds `tsdb-operator-core`: it observes a PrometheusCluster, asks the core once
//! ([`decide::decide_cluster`]) and carries the decision out, so it reconciles clusters as the operator does. What
//! the operator adds around the same decision (leader election, write fencing, metrics, Kubernetes Events, agent
//! reload reports, bounded caches) is left out to keep this short.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tsdb_operator_core::build::BuildSettings;
use tsdb_operator_core::constants::{FIELD_MANAGER, FINALIZER, labels};
use tsdb_operator_core::crd::PrometheusCluster;
use tsdb_operator_core::decide::{self, ClusterObservation, Next};
use tsdb_operator_core::plan::{ChildKey, Step};
use tsdb_operator_core::storage::{self, ObservedClaim};

struct Ctx {
    client: Client,
    settings: BuildSettings,
}

/// Runs the controller for `namespace` (all namespaces when `None`) until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: BuildSettings,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let clusters: Api<PrometheusCluster> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    Controller::new(clusters, watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(
            reconcile,
            |_, error, _| {
                tracing::warn!(%error, "reconcile failed");
                Action::requeue(std::time::Duration::from_secs(5))
            },
            Arc::new(Ctx { client, settings }),
        )
        .for_each(|_| std::future::ready(()))
        .await;
}

fn resource(key: &ChildKey) -> ApiResource {
    let (group, version) = key.api_version.split_once('/').unwrap_or(("", &key.api_version));
    let plural = format!("{}s", key.kind.to_ascii_lowercase());
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, &key.kind), &plural)
}

async fn reconcile(pc: Arc<PrometheusCluster>, ctx: Arc<Ctx>) -> Result<Action, kube::Error> {
    let (ns, name, client) = (pc.namespace().unwrap_or_default(), pc.name_any(), &ctx.client);
    // Observe: the objects with the children's names, pods, claims and their class, referenced Secrets.
    let mut children = BTreeMap::new();
    for key in decide::children_to_read(&name, &ctx.settings) {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource(&key));
        if let Some(object) = api.get_opt(&key.name).await? {
            let mut value = serde_json::to_value(object).map_err(kube::Error::SerdeError)?;
            value["apiVersion"] = json!(key.api_version);
            value["kind"] = json!(key.kind);
            children.insert(key, value);
        }
    }
    let by_label = ListParams::default().labels(&format!("{}={name}", labels::INSTANCE));
    let pods = Api::<Pod>::namespaced(client.clone(), &ns).list(&by_label).await?.items;
    let claims: Vec<ObservedClaim> = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
        .list(&by_label)
        .await?
        .into_iter()
        .filter(|c| storage::is_data_claim_of(&name, &c.name_any()))
        .map(|c| {
            let (spec, status) = (c.spec.clone().unwrap_or_default(), c.status.clone().unwrap_or_default());
            let requested = spec.resources.and_then(|r| r.requests).and_then(|r| r.get("storage").cloned());
            ObservedClaim {
                name: c.name_any(),
                storage_class_name: spec.storage_class_name,
                requested: requested.map(|q| q.0),
                capacity: status.capacity.and_then(|c| c.get("storage").cloned()).map(|q| q.0),
            }
        })
        .collect();
    let class_allows_expansion = match storage::class_to_check(&pc.spec.storage, &claims) {
        Some(class) => Api::<StorageClass>::all(client.clone())
            .get_opt(&class)
            .await?
            .map(|c| c.allow_volume_expansion == Some(true)),
        None => None,
    };
    let mut secrets = BTreeMap::new();
    for secret in decide::secrets_to_read(&pc) {
        if let Some(s) = Api::<Secret>::namespaced(client.clone(), &ns).get_opt(&secret).await? {
            let keys: BTreeSet<String> =
                s.data.unwrap_or_default().into_keys().chain(s.string_data.unwrap_or_default().into_keys()).collect();
            secrets.insert(secret, keys);
        }
    }
    let observation = ClusterObservation {
        pods: &pods,
        claims: &claims,
        class_allows_expansion,
        secrets: Some(&secrets),
        ..ClusterObservation::of(&pc, &children)
    };

    // Decide, once.
    let decision = decide::decide_cluster(&observation, &ctx.settings, k8s_openapi::jiff::Timestamp::now());

    // Carry out: stage by stage, then the legacy finalizer, the status and the events.
    for stage in &decision.stages {
        for step in &stage.steps {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource(step.key()));
            let name = &step.key().name;
            match step {
                Step::Apply { manifest, .. } => {
                    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(manifest)).await?;
                }
                Step::Resize { size, .. } => {
                    let patch = json!({"spec": {"resources": {"requests": {"storage": size}}}});
                    api.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await?;
                }
                Step::Delete { .. } => drop(api.delete(name, &DeleteParams::default()).await?),
                Step::Orphan { .. } => drop(api.delete(name, &DeleteParams::orphan()).await?),
            }
        }
        stage.events.iter().for_each(|e| tracing::info!(cluster = %name, reason = e.reason(), "{}", e.message()));
    }
    let clusters: Api<PrometheusCluster> = Api::namespaced(client.clone(), &ns);
    if decision.remove_legacy_finalizer {
        let rest: Vec<&String> = pc.finalizers().iter().filter(|f| *f != FINALIZER).collect();
        let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": pc.resource_version()}});
        clusters.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
    }
    if decision.status_changed {
        let status: Value = json!({"status": decision.status});
        clusters.patch_status(&name, &PatchParams::default(), &Patch::Merge(status)).await?;
    }
    decision.events.iter().for_each(|e| tracing::info!(cluster = %name, reason = e.reason(), "{}", e.message()));
    Ok(match decision.next {
        Next::AwaitChange => Action::await_change(),
        Next::After(delay) => Action::requeue(delay),
    })
}
