//! Leader election with a coordination.k8s.io/v1 Lease (kube-lease-manager). Only the leader runs controllers;
//! a standby waits. On shutdown the leader releases the Lease so that a standby takes over at once; a leader that
//! loses its Lease stops acting. I/O: the Kubernetes API.
//!
//! kube-lease-manager keeps reporting leadership while it cannot reach the API server (it retries); a leader cut off
//! from the API server would then go on acting after a standby took the expired Lease. So a watchdog reads the Lease
//! itself and declares the leadership lost when its `renewTime` has not advanced for a whole Lease duration
//! (client-go's renew deadline): from then on a standby may hold it.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
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
    /// Resolves when the Lease was not renewed for a whole Lease duration while this process led.
    watchdog: JoinHandle<()>,
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
    let lease = Api::<Lease>::namespaced(client.clone(), namespace);
    let manager = LeaseManagerBuilder::new(client, name)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(duration)
        .with_grace(grace)
        .build()
        .await?;
    let (is_leader, task) = manager.watch().await;
    let watchdog = tokio::spawn(watchdog(lease, name.to_owned(), is_leader.clone(), Duration::from_secs(duration)));
    Ok(Election { is_leader, task, watchdog })
}

/// Returns once this process leads and the Lease's `renewTime` has not advanced for `duration` (or the Lease could
/// not be read for that long). Checks four times per Lease duration.
async fn watchdog(lease: Api<Lease>, name: String, mut is_leader: watch::Receiver<bool>, duration: Duration) {
    let mut last_renew = None;
    let mut renewed_at = Instant::now();
    loop {
        if !*is_leader.borrow_and_update() {
            if is_leader.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            renewed_at = Instant::now();
            continue;
        }
        if let Ok(Ok(l)) = tokio::time::timeout(duration / 4, lease.get(&name)).await {
            let renew = l.spec.and_then(|s| s.renew_time);
            if renew != last_renew {
                last_renew = renew;
                renewed_at = Instant::now();
            }
        }
        if renewed_at.elapsed() > duration {
            tracing::error!(after = ?renewed_at.elapsed(), "the leader Lease was not renewed within its duration");
            return;
        }
        tokio::time::sleep(duration / 4).await;
    }
}

impl Election {
    /// Waits until this process is the leader.
    pub async fn acquired(&mut self) -> bool {
        self.is_leader.wait_for(|l| *l).await.is_ok()
    }

    /// Waits until this process is no longer the leader: the Lease went to another holder, or it was not renewed
    /// within its duration (see the module docs).
    pub async fn lost(&mut self) {
        tokio::select! {
            _ = self.is_leader.wait_for(|l| !*l) => {}
            _ = &mut self.watchdog => {}
        }
    }

    /// Releases the Lease (if held) and stops competing.
    pub async fn release(self) {
        self.watchdog.abort();
        drop(self.is_leader);
        // Bounded: an API server that does not answer must not keep the process from exiting.
        let Ok(result) = tokio::time::timeout(Duration::from_secs(5), self.task).await else {
            tracing::warn!("gave up releasing the leader lease after 5 s");
            return;
        };
        match result {
            Ok(Ok(_)) => tracing::info!("released the leader lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "failed to release the leader lease"),
            Err(e) => tracing::warn!(error = %e, "lease task failed"),
        }
    }
}
