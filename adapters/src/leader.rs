//! Leader election with a coordination.k8s.io/v1 Lease (kube-lease-manager). Only the leader runs controllers;
//! a standby waits. On shutdown the leader releases the Lease so that a standby takes over at once; a leader that
//! loses its Lease stops acting. I/O: the Kubernetes API.

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Lease name of the seed (`ab0397ab.merlionos.org`).
pub const LEASE_NAME: &str = "ab0397ab.merlionos.org";

/// A running election.
pub struct Election {
    /// `true` while this process holds the Lease.
    pub is_leader: watch::Receiver<bool>,
    task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

/// Starts competing for the Lease `name` in `namespace` as `identity`. `duration` is how long a Lease stays valid
/// without renewal (a crashed leader is replaced after at most that), `grace` how long before expiry it renews.
pub async fn start(
    client: Client,
    namespace: &str,
    name: &str,
    identity: &str,
    duration: u64,
    grace: u64,
) -> Result<Election, LeaseManagerError> {
    let manager = LeaseManagerBuilder::new(client, name)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(duration)
        .with_grace(grace)
        .build()
        .await?;
    let (is_leader, task) = manager.watch().await;
    Ok(Election { is_leader, task })
}

impl Election {
    /// Waits until this process is the leader.
    pub async fn acquired(&mut self) -> bool {
        self.is_leader.wait_for(|l| *l).await.is_ok()
    }

    /// Waits until this process is no longer the leader.
    pub async fn lost(&mut self) {
        let _ = self.is_leader.wait_for(|l| !*l).await;
    }

    /// Releases the Lease (if held) and stops competing.
    pub async fn release(self) {
        drop(self.is_leader);
        match self.task.await {
            Ok(Ok(_)) => tracing::info!("released the leader lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "failed to release the leader lease"),
            Err(e) => tracing::warn!(error = %e, "lease task failed"),
        }
    }
}
