//! A volume provisioner: one PersistentVolume per pending PVC, backed by a directory under the state dir, and
//! removal of released ones. Does I/O.
//!
//! # Flow
//! - A PVC without `spec.volumeName` whose binding is immediate (no storageClassName, or a class that does not
//!   exist or has `volumeBindingMode: Immediate`) gets a `hostPath` PV at once; one whose class waits for the
//!   first consumer gets a `local` PV with node affinity once the scheduler picked a node
//!   (annotation `volume.kubernetes.io/selected-node`) of this kubelet.
//! - The PV is named `pvc-<claim uid>`, pre-bound with `spec.claimRef` (name, namespace, uid), has the claim's
//!   access modes, requested size and class, and `persistentVolumeReclaimPolicy: Delete`. The PV controller
//!   then binds the claim to it.
//! - PVs this provisioner created (annotation `pv.kubernetes.io/provisioned-by`) that are `Released` or
//!   `Failed` are deleted with their directory, as a dynamic provisioner does.
//! - A bound claim whose request differs from its capacity is expanded, as the external resizer and the kubelet
//!   do together for a volume that needs no file system step: the PV's `spec.capacity` and then the claim's
//!   `status.capacity` take the new size. The API server has already checked that the claim's StorageClass has
//!   `allowVolumeExpansion` and that the request grew (shrinking is refused there).
//!
//! # Guarantees
//! The directory of a bound PV outlives pods, so data survives pod deletion and rescheduling.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, LocalVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference,
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec, VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};

/// Provisioner name in `pv.kubernetes.io/provisioned-by`; a StorageClass may name it as its provisioner.
pub const PROVISIONER: &str = "tsdb-operator.io/process-kubelet";
const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

/// How a claim's volume binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Binding {
    Immediate,
    /// Wait for the scheduler; `Some(node)` once it picked one.
    WaitForFirstConsumer(Option<String>),
}

/// Decides whether to provision for a claim now, and where. Pure.
pub(crate) fn decide_binding(pvc: &PersistentVolumeClaim, class: Option<&StorageClass>) -> Binding {
    let waits = class.and_then(|c| c.volume_binding_mode.as_deref()) == Some("WaitForFirstConsumer");
    if waits {
        Binding::WaitForFirstConsumer(pvc.annotations().get(SELECTED_NODE).cloned())
    } else {
        Binding::Immediate
    }
}

/// The claim's storage class name (`spec.storageClassName`, else the beta annotation).
pub(crate) fn class_name(pvc: &PersistentVolumeClaim) -> String {
    pvc.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .or_else(|| pvc.annotations().get("volume.beta.kubernetes.io/storage-class").cloned())
        .unwrap_or_default()
}

/// The PV for a claim. Pure.
pub(crate) fn build_pv(pvc: &PersistentVolumeClaim, dir: &Path, node: Option<&str>) -> PersistentVolume {
    let spec = pvc.spec.clone().unwrap_or_default();
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage").cloned())
        .unwrap_or_else(|| Quantity("1Gi".to_owned()));
    let path = dir.to_string_lossy().into_owned();
    let (host_path, local, node_affinity) = match node {
        None => (Some(HostPathVolumeSource { path, type_: Some("DirectoryOrCreate".to_owned()) }), None, None),
        Some(node) => (
            None,
            Some(LocalVolumeSource { path, fs_type: None }),
            Some(VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: "kubernetes.io/hostname".to_owned(),
                            operator: "In".to_owned(),
                            values: Some(vec![node.to_owned()]),
                        }]),
                        ..NodeSelectorTerm::default()
                    }],
                }),
            }),
        ),
    };
    let class = class_name(pvc);
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(pv_name(pvc)),
            annotations: Some([("pv.kubernetes.io/provisioned-by".to_owned(), PROVISIONER.to_owned())].into()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([("storage".to_owned(), size)])),
            access_modes: Some(
                spec.access_modes.filter(|m| !m.is_empty()).unwrap_or_else(|| vec!["ReadWriteOnce".to_owned()]),
            ),
            persistent_volume_reclaim_policy: Some("Delete".to_owned()),
            storage_class_name: (!class.is_empty()).then_some(class),
            volume_mode: Some("Filesystem".to_owned()),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("PersistentVolumeClaim".to_owned()),
                name: pvc.metadata.name.clone(),
                namespace: pvc.metadata.namespace.clone(),
                uid: pvc.metadata.uid.clone(),
                ..ObjectReference::default()
            }),
            host_path,
            local,
            node_affinity,
            ..PersistentVolumeSpec::default()
        }),
        ..PersistentVolume::default()
    }
}

fn pv_name(pvc: &PersistentVolumeClaim) -> String {
    format!("pvc-{}", pvc.metadata.uid.clone().unwrap_or_default())
}

/// Watches claims and provisions; runs until aborted.
pub(crate) async fn run_provisioner(client: Client, state_dir: PathBuf, nodes: Vec<String>) {
    let pvcs: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let mut stream = watcher::watcher(pvcs, watcher::Config::default()).default_backoff().boxed();
    while let Some(event) = stream.next().await {
        let pvc = match event {
            Ok(Event::Apply(pvc) | Event::InitApply(pvc)) => pvc,
            Ok(_) => continue,
            Err(err) => {
                tracing::debug!(error = %err, "pvc watch error");
                continue;
            }
        };
        if pvc.spec.as_ref().and_then(|s| s.volume_name.as_ref()).is_some() || pvc.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        if let Err(err) = provision(&client, &state_dir, &nodes, &pvc).await {
            tracing::warn!(pvc = %pvc.name_any(), error = %err, "provisioning failed");
        }
    }
}

async fn provision(
    client: &Client,
    state_dir: &Path,
    nodes: &[String],
    pvc: &PersistentVolumeClaim,
) -> Result<(), kube::Error> {
    let class_name = class_name(pvc);
    let class = if class_name.is_empty() {
        None
    } else {
        Api::<StorageClass>::all(client.clone()).get_opt(&class_name).await?
    };
    let node = match decide_binding(pvc, class.as_ref()) {
        Binding::Immediate => None,
        Binding::WaitForFirstConsumer(Some(node)) if nodes.contains(&node) => Some(node),
        // Not yet scheduled, or scheduled to another kubelet's node.
        Binding::WaitForFirstConsumer(_) => return Ok(()),
    };
    let dir = state_dir.join("pv").join(pv_name(pvc));
    if let Err(err) = std::fs::create_dir_all(&dir) {
        tracing::warn!(dir = %dir.display(), error = %err, "cannot create PV directory");
        return Ok(());
    }
    let pv = build_pv(pvc, &dir, node.as_deref());
    match Api::<PersistentVolume>::all(client.clone()).create(&PostParams::default(), &pv).await {
        Ok(_) => {
            tracing::info!(pvc = %pvc.name_any(), pv = %pv.name_any(), "provisioned");
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(err) => Err(err),
    }
}

/// Deletes released PVs of this provisioner and their directories; runs until aborted.
pub(crate) async fn run_reclaimer(client: Client, state_dir: PathBuf) {
    let pvs: Api<PersistentVolume> = Api::all(client);
    let mut stream = watcher::watcher(pvs.clone(), watcher::Config::default()).default_backoff().boxed();
    while let Some(event) = stream.next().await {
        let Ok(Event::Apply(pv) | Event::InitApply(pv)) = event else {
            continue;
        };
        let ours = pv.annotations().get("pv.kubernetes.io/provisioned-by").map(String::as_str) == Some(PROVISIONER);
        let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref());
        if !ours || !matches!(phase, Some("Released" | "Failed")) {
            continue;
        }
        let dir = state_dir.join("pv").join(pv.name_any());
        if pvs.delete(&pv.name_any(), &DeleteParams::default()).await.is_ok() {
            let _ = std::fs::remove_dir_all(&dir);
            tracing::info!(pv = %pv.name_any(), "deleted released volume");
        }
    }
}

/// The size a bound claim is to be expanded to: its request, when that differs from its capacity. Pure.
pub(crate) fn decide_resize(pvc: &PersistentVolumeClaim) -> Option<String> {
    let status = pvc.status.as_ref()?;
    if status.phase.as_deref() != Some("Bound") {
        return None;
    }
    let requested = pvc.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?.get("storage")?;
    let capacity = status.capacity.as_ref().and_then(|c| c.get("storage"));
    // The API server keeps quantities in canonical form, so equal sizes are equal strings.
    (capacity != Some(requested)).then(|| requested.0.clone())
}

/// Expands bound claims of this provisioner's volumes whose request grew; runs until aborted.
pub(crate) async fn run_resizer(client: Client) {
    let pvcs: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let mut stream = watcher::watcher(pvcs, watcher::Config::default()).default_backoff().boxed();
    while let Some(event) = stream.next().await {
        let Ok(Event::Apply(pvc) | Event::InitApply(pvc)) = event else {
            continue;
        };
        let Some(size) = decide_resize(&pvc) else { continue };
        if let Err(err) = expand(&client, &pvc, &size).await {
            tracing::warn!(pvc = %pvc.name_any(), error = %err, "expanding failed");
        }
    }
}

async fn expand(client: &Client, pvc: &PersistentVolumeClaim, size: &str) -> Result<(), kube::Error> {
    let Some(volume) = pvc.spec.as_ref().and_then(|s| s.volume_name.clone()) else { return Ok(()) };
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let Some(pv) = pvs.get_opt(&volume).await? else { return Ok(()) };
    if pv.annotations().get("pv.kubernetes.io/provisioned-by").map(String::as_str) != Some(PROVISIONER) {
        return Ok(());
    }
    let params = PatchParams::default();
    pvs.patch(&volume, &params, &Patch::Merge(serde_json::json!({"spec": {"capacity": {"storage": size}}}))).await?;
    let ns = pvc.namespace().unwrap_or_default();
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
        .patch_status(
            &pvc.name_any(),
            &params,
            &Patch::Merge(serde_json::json!({"status": {"capacity": {"storage": size}, "conditions": null}})),
        )
        .await?;
    tracing::info!(pvc = %pvc.name_any(), pv = %volume, %size, "expanded");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_claims_are_expanded_to_their_request_and_others_are_left_alone() {
        let claim = |phase: &str, requested: &str, capacity: Option<&str>| -> PersistentVolumeClaim {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "data-a-0", "namespace": "ns"},
                "spec": {"resources": {"requests": {"storage": requested}}, "volumeName": "pvc-1"},
                "status": {"phase": phase, "capacity": capacity.map(|c| serde_json::json!({"storage": c}))},
            }))
            .unwrap()
        };
        assert_eq!(decide_resize(&claim("Bound", "2Gi", Some("1Gi"))), Some("2Gi".to_owned()));
        assert_eq!(decide_resize(&claim("Bound", "2Gi", None)), Some("2Gi".to_owned()));
        assert_eq!(decide_resize(&claim("Bound", "2Gi", Some("2Gi"))), None);
        assert_eq!(decide_resize(&claim("Pending", "2Gi", Some("1Gi"))), None);
    }

    fn claim(class: Option<&str>) -> PersistentVolumeClaim {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "data-web-0", "namespace": "ns", "uid": "u1"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                     "resources": {"requests": {"storage": "2Gi"}}}
        }))
        .unwrap()
    }

    #[test]
    fn pv_is_pre_bound_to_the_claim() {
        let pv = build_pv(&claim(None), Path::new("/state/pv/pvc-u1"), None);
        let spec = pv.spec.unwrap();
        let claim_ref = spec.claim_ref.unwrap();
        assert_eq!((claim_ref.name.as_deref(), claim_ref.uid.as_deref()), (Some("data-web-0"), Some("u1")));
        assert_eq!(spec.capacity.unwrap()["storage"], Quantity("2Gi".to_owned()));
        assert_eq!(spec.host_path.unwrap().path, "/state/pv/pvc-u1");
        assert_eq!(spec.storage_class_name, None);
    }

    #[test]
    fn wait_for_first_consumer_waits_for_the_selected_node() {
        let class: StorageClass = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "local"}, "provisioner": PROVISIONER, "volumeBindingMode": "WaitForFirstConsumer"
        }))
        .unwrap();
        let mut pvc = claim(Some("local"));
        assert_eq!(decide_binding(&pvc, Some(&class)), Binding::WaitForFirstConsumer(None));
        pvc.annotations_mut().insert(SELECTED_NODE.to_owned(), "tsdb-node-1".to_owned());
        assert_eq!(decide_binding(&pvc, Some(&class)), Binding::WaitForFirstConsumer(Some("tsdb-node-1".to_owned())));
        assert_eq!(decide_binding(&pvc, None), Binding::Immediate);
        let pv = build_pv(&pvc, Path::new("/d"), Some("tsdb-node-1"));
        assert!(pv.spec.unwrap().local.is_some());
    }
}
