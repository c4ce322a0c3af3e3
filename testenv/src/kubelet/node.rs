//! Node registration and heartbeats. Does I/O.
//!
//! # Flow
//! Each node is created (or adopted if it exists) with the labels a kubelet sets, then its status (capacity,
//! allocatable, `Ready` and the pressure conditions, addresses, nodeInfo) is written through the status
//! subresource. Every heartbeat (10 s by default) renews the node's Lease in `kube-node-lease` (this is what the
//! 1.20 node lifecycle controller watches) and rewrites the status with a fresh `lastHeartbeatTime`, so nodes
//! never go `NotReady` while the kubelet runs.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};

use super::{Error, Result};

/// Field manager of everything the process kubelet writes.
pub(crate) const MANAGER: &str = "process-kubelet";
/// Lease duration, as the kubelet's default.
const LEASE_SECONDS: i32 = 40;

/// Capacity reported by each node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocatable {
    /// CPU cores, e.g. `"4"`.
    pub cpu: String,
    /// Memory, e.g. `"8Gi"`.
    pub memory: String,
    /// Maximum pods.
    pub pods: String,
}

impl Default for Allocatable {
    fn default() -> Self {
        Self { cpu: "4".to_owned(), memory: "8Gi".to_owned(), pods: "110".to_owned() }
    }
}

/// The Node object to create.
pub(crate) fn build_node(name: &str) -> Node {
    let labels: BTreeMap<String, String> = [
        ("kubernetes.io/hostname", name),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", "amd64"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels),
            annotations: Some([("node.alpha.kubernetes.io/ttl".to_owned(), "0".to_owned())].into()),
            ..ObjectMeta::default()
        },
        ..Node::default()
    }
}

/// The node's status at `now`.
pub(crate) fn build_node_status(
    name: &str,
    address: &str,
    allocatable: &Allocatable,
    now: Timestamp,
    since: Timestamp,
) -> NodeStatus {
    let condition = |kind: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: kind.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(since)),
    };
    let resources: BTreeMap<String, Quantity> = [
        ("cpu", allocatable.cpu.as_str()),
        ("memory", allocatable.memory.as_str()),
        ("pods", allocatable.pods.as_str()),
        ("ephemeral-storage", "100Gi"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Quantity(v.to_owned())))
    .collect();
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        conditions: Some(vec![
            condition(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        ]),
        addresses: Some(vec![
            NodeAddress { type_: "InternalIP".to_owned(), address: address.to_owned() },
            NodeAddress { type_: "Hostname".to_owned(), address: name.to_owned() },
        ]),
        node_info: Some(NodeSystemInfo {
            architecture: "amd64".to_owned(),
            boot_id: String::new(),
            container_runtime_version: "process://0.1.0".to_owned(),
            kernel_version: String::new(),
            kube_proxy_version: "v1.20.2".to_owned(),
            kubelet_version: "v1.20.2".to_owned(),
            machine_id: name.to_owned(),
            operating_system: "linux".to_owned(),
            os_image: "tsdb-operator process kubelet".to_owned(),
            system_uuid: name.to_owned(),
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    }
}

/// Registers the nodes (creating or adopting them) and writes their first status and lease.
pub(crate) async fn register(
    client: &Client,
    names: &[String],
    address: &str,
    allocatable: &Allocatable,
) -> Result<Timestamp> {
    let nodes: Api<Node> = Api::all(client.clone());
    let since = Timestamp::now();
    for name in names {
        match nodes.create(&PostParams::default(), &build_node(name)).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {
                // Adopt a node left by an earlier run: make it schedulable again.
                let patch = serde_json::json!({"spec": {"unschedulable": null, "taints": null}});
                nodes
                    .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|source| Error::Api { action: "adopt", object: format!("node {name}"), source })?;
            }
            Err(source) => return Err(Error::Api { action: "create", object: format!("node {name}"), source }),
        }
    }
    heartbeat(client, names, address, allocatable, since).await?;
    Ok(since)
}

/// Renews the leases and refreshes the Ready conditions of all nodes once.
pub(crate) async fn heartbeat(
    client: &Client,
    names: &[String],
    address: &str,
    allocatable: &Allocatable,
    since: Timestamp,
) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    for name in names {
        let now = Timestamp::now();
        let status = build_node_status(name, address, allocatable, now, since);
        let patch = serde_json::json!({ "status": status });
        let node = nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| Error::Api { action: "update status of", object: format!("node {name}"), source })?;
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some("kube-node-lease".to_owned()),
                owner_references: Some(vec![OwnerReference {
                    api_version: "v1".to_owned(),
                    kind: "Node".to_owned(),
                    name: name.clone(),
                    uid: node.metadata.uid.clone().unwrap_or_default(),
                    ..OwnerReference::default()
                }]),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(name.clone()),
                lease_duration_seconds: Some(LEASE_SECONDS),
                renew_time: Some(MicroTime(now)),
                ..LeaseSpec::default()
            }),
        };
        leases
            .patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&lease))
            .await
            .map_err(|source| Error::Api { action: "renew", object: format!("lease {name}"), source })?;
    }
    Ok(())
}

/// Heartbeats until stopped; failures are logged and retried at the next beat.
pub(crate) async fn heartbeat_loop(
    client: Client,
    names: Vec<String>,
    address: String,
    allocatable: Allocatable,
    since: Timestamp,
    every: Duration,
) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        interval.tick().await;
        if let Err(err) = heartbeat(&client, &names, &address, &allocatable, since).await {
            tracing::warn!(error = %err, "node heartbeat failed");
        }
    }
}

/// Deletes the nodes (their leases are garbage-collected through the owner reference).
pub(crate) async fn deregister(client: &Client, names: &[String]) {
    let nodes: Api<Node> = Api::all(client.clone());
    for name in names {
        let _ = nodes.delete(name, &kube::api::DeleteParams::default()).await;
    }
}
