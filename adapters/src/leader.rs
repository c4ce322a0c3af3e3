//! Leader election with a coordination.k8s.io/v1 Lease (kube-lease-manager). Only the leader runs controllers;
//! a standby waits. On shutdown the leader releases the Lease, and a standby, which watches the Lease while it
//! waits, takes it at once (kube-lease-manager alone would wait until the copy it read expires); a leader that
//! loses its Lease stops acting. I/O: the Kubernetes API.
//!
//! kube-lease-manager keeps reporting leadership while it cannot reach the API server (it retries); a leader cut off
//! from the API server would then go on acting after a standby took the expired Lease. So a watchdog reads the Lease
//! itself and declares the leadership lost when its `renewTime` has not advanced for a whole Lease duration
//! (client-go's renew deadline): from then on a standby may hold it.
//!
//! # Fencing
//! Declaring the leadership lost takes a watchdog tick, and a process that was stopped (SIGSTOP, a long GC-like
//! pause, a frozen VM) runs its queued work the moment it resumes, before any tick. So every write of the
//! operator goes through a [`FenceLayer`] on its Kubernetes client: a request other than `GET` is refused, without
//! being sent, unless the Lease is known to be this process' until later than now. That bound is
//! [`Fence`]: the watchdog extends it to "the last read of the Lease before the one that showed this process'
//! newer `renewTime`, plus the Lease duration" (the renewal happened after that read, so the Lease is valid at
//! least until then), and closes it when another holder shows up or the leadership is lost. It is measured on the
//! monotonic clock, which keeps running while the process is stopped. The election itself uses a client without
//! the fence.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
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
    /// Runs the Lease manager ([`supervise`]).
    task: JoinHandle<()>,
    /// Tells `task` to release the Lease and end.
    stop: tokio::sync::oneshot::Sender<()>,
    /// Resolves when the Lease was not renewed for a whole Lease duration while this process led.
    watchdog: JoinHandle<()>,
    fence: Fence,
    duration: Duration,
}

/// Until when this process may write (see the module docs). Without leader election it is always open.
#[derive(Clone, Debug)]
pub struct Fence {
    /// `None`: no election, always open.
    until: Option<Arc<Mutex<Option<Instant>>>>,
}

impl Fence {
    /// A fence that never closes (no leader election).
    pub fn open() -> Self {
        Self { until: None }
    }

    /// A fence for an elected process: closed until the election confirms the leadership.
    pub fn closed() -> Self {
        Self { until: Some(Arc::new(Mutex::new(None))) }
    }

    /// Whether a write may be sent now.
    pub fn allows_writes(&self) -> bool {
        self.allows_writes_at(Instant::now())
    }

    fn allows_writes_at(&self, now: Instant) -> bool {
        self.until.as_ref().is_none_or(|u| u.lock().unwrap_or_else(PoisonError::into_inner).is_some_and(|t| now < t))
    }

    /// Lets writes through until `t` (never shortens a later bound).
    fn extend_to(&self, t: Instant) {
        if let Some(u) = &self.until {
            let mut u = u.lock().unwrap_or_else(PoisonError::into_inner);
            if u.is_none_or(|old| old < t) {
                *u = Some(t);
            }
        }
    }

    /// Refuses writes from now on (until extended again).
    fn close(&self) {
        if let Some(u) = &self.until {
            *u.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
    }
}

/// A write refused by the [`Fence`].
#[derive(Debug, thiserror::Error)]
#[error("failed to send {method} {path}: this process does not hold the leader Lease (fenced)")]
pub struct Fenced {
    method: String,
    path: String,
}

/// Tower layer that refuses writes while the [`Fence`] is closed.
#[derive(Clone, Debug)]
pub struct FenceLayer(pub Fence);

impl<S> tower::Layer<S> for FenceLayer {
    type Service = FenceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FenceService { inner, fence: self.0.clone() }
    }
}

/// See [`FenceLayer`].
#[derive(Clone, Debug)]
pub struct FenceService<S> {
    inner: S,
    fence: Fence,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B> tower::Service<http::Request<B>> for FenceService<S>
where
    S: tower::Service<http::Request<B>>,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let read = matches!(*req.method(), http::Method::GET | http::Method::HEAD | http::Method::OPTIONS);
        if !read && !self.fence.allows_writes() {
            let refused = Fenced { method: req.method().to_string(), path: req.uri().path().to_owned() };
            tracing::warn!(error = %refused, "write refused");
            return Box::pin(std::future::ready(Err(Box::new(refused) as BoxError)));
        }
        let fut = self.inner.call(req);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}

/// Starts competing for the Lease `name` in `namespace` as `identity`. `duration` is how long a Lease stays valid
/// without renewal (a crashed leader is replaced after at most that), `grace` how long before expiry it renews.
/// `client` must not be fenced; `fence` is opened and closed as the leadership is confirmed and lost.
pub async fn start(
    client: Client,
    fence: Fence,
    namespace: &str,
    name: &str,
    identity: &str,
    duration: u64,
    grace: u64,
) -> Result<Election, LeaseManagerError> {
    let lease = Api::<Lease>::namespaced(client.clone(), namespace);
    let params = Params {
        client,
        namespace: namespace.to_owned(),
        holder: Holder { name: name.to_owned(), identity: identity.to_owned() },
        duration,
        grace,
    };
    let manager = params.manager().await?;
    let (tx, is_leader) = watch::channel(false);
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(supervise(params, manager, tx, stopped));
    let duration = Duration::from_secs(duration);
    let watchdog = tokio::spawn(watchdog(
        lease,
        Holder { name: name.to_owned(), identity: identity.to_owned() },
        is_leader.clone(),
        duration,
        fence.clone(),
    ));
    Ok(Election { is_leader, task, stop, watchdog, fence, duration })
}

/// What a Lease manager is built from.
struct Params {
    client: Client,
    namespace: String,
    holder: Holder,
    duration: u64,
    grace: u64,
}

impl Params {
    async fn manager(&self) -> Result<kube_lease_manager::LeaseManager, LeaseManagerError> {
        LeaseManagerBuilder::new(self.client.clone(), &self.holder.name)
            .with_namespace(&self.namespace)
            .with_identity(&self.holder.identity)
            .with_duration(self.duration)
            .with_grace(self.grace)
            .build()
            .await
    }
}

/// Runs the Lease manager and passes on whether this process leads, until `stop` (then the manager releases the
/// Lease if it holds it).
///
/// A standby manager reads the Lease only when the copy it read last expires, so a Lease its leader released on
/// shutdown would stay unused until then: up to a whole Lease duration. While standing by, this also watches the
/// Lease, and when another holder releases it, replaces the manager by a fresh one, which reads the Lease and takes
/// it at once. A crashed leader, which releases nothing, is still replaced once its Lease expires.
async fn supervise(
    params: Params,
    mut manager: kube_lease_manager::LeaseManager,
    tx: watch::Sender<bool>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let lease = Api::<Lease>::namespaced(params.client.clone(), &params.namespace);
    loop {
        let (mut rx, handle) = manager.watch().await;
        let next = loop {
            let leading = *rx.borrow_and_update();
            tx.send_if_modified(|l| std::mem::replace(l, leading) != leading);
            tokio::select! {
                biased;
                _ = &mut stop => break Next::Stop,
                changed = rx.changed() => if changed.is_err() { break Next::Ended },
                () = released_by_other(&lease, &params.holder), if !leading => break Next::Compete,
            }
        };
        // Without receivers the manager releases the Lease (when it holds it) and ends. Bounded: an API server that
        // does not answer must not keep the process from exiting.
        drop(rx);
        match tokio::time::timeout(Duration::from_secs(5), handle).await {
            Err(_) => tracing::warn!("gave up releasing the leader lease after 5 s"),
            Ok(Ok(Ok(_))) if next == Next::Stop => tracing::info!("released the leader lease"),
            Ok(Ok(Ok(_))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "failed to release the leader lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "lease task failed"),
        }
        if next != Next::Compete {
            return;
        }
        tracing::debug!("the leader released its lease: competing for it now");
        manager = loop {
            tokio::select! {
                _ = &mut stop => return,
                built = params.manager() => match built {
                    Ok(m) => break m,
                    Err(e) => tracing::warn!(error = %e, "failed to read the leader lease; retrying in 1 s"),
                },
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
    }
}

/// Why [`supervise`] stopped following a Lease manager.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Next {
    /// The process shuts down.
    Stop,
    /// Another holder released the Lease: a fresh manager competes for it.
    Compete,
    /// The manager's task ended on its own (it ends only when it cannot report any more).
    Ended,
}

/// Resolves once the Lease, held by another process, has been released (no holder, or deleted).
async fn released_by_other(lease: &Api<Lease>, holder: &Holder) {
    fn holder_of(l: Option<&Lease>) -> Option<&str> {
        l?.spec.as_ref()?.holder_identity.as_deref().filter(|h| !h.is_empty())
    }
    let by_other = |l: Option<&Lease>| holder_of(l).is_some_and(|h| h != holder.identity);
    let free = |l: Option<&Lease>| holder_of(l).is_none();
    let mut failures = 0_u32;
    for condition in [&by_other as &(dyn Fn(Option<&Lease>) -> bool + Sync), &free] {
        // A watch that fails (the API server restarts, a missing `list`/`watch` on leases) is opened again, every
        // 1 s at first and every 30 s after a minute of failures; the manager's own expiry check goes on.
        while let Err(e) = kube::runtime::wait::await_condition(lease.clone(), &holder.name, condition).await {
            failures += 1;
            if failures == 1 {
                tracing::warn!(error = %e, "cannot watch the leader Lease: a released Lease is taken only once it \
                    expires (the operator needs list and watch on leases)");
            } else {
                tracing::debug!(error = %e, "watching the leader Lease failed again");
            }
            tokio::time::sleep(Duration::from_secs(if failures > 60 { 30 } else { 1 })).await;
        }
    }
}

/// The Lease and this process' identity in it.
struct Holder {
    name: String,
    identity: String,
}

/// Returns once this process leads and the Lease's `renewTime` has not advanced for `duration` (or the Lease could
/// not be read for that long). Checks four times per Lease duration, and keeps `fence` open only as long as the
/// Lease is known to be this process'.
async fn watchdog(
    lease: Api<Lease>,
    holder: Holder,
    mut is_leader: watch::Receiver<bool>,
    duration: Duration,
    fence: Fence,
) {
    let mut last_renew = None;
    let mut renewed_at = Instant::now();
    let mut last_read = Instant::now();
    loop {
        if !*is_leader.borrow_and_update() {
            fence.close();
            if is_leader.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            renewed_at = Instant::now();
            last_read = renewed_at;
            // The manager has just taken or renewed the Lease.
            fence.extend_to(renewed_at + duration / 2);
            continue;
        }
        let read_at = Instant::now();
        if let Ok(Ok(l)) = tokio::time::timeout(duration / 4, lease.get(&holder.name)).await {
            let spec = l.spec.unwrap_or_default();
            if spec.holder_identity.as_deref() != Some(holder.identity.as_str()) {
                fence.close();
            } else if spec.renew_time != last_renew {
                last_renew = spec.renew_time;
                renewed_at = Instant::now();
                // Renewed after the previous read: valid at least a Lease duration from then.
                fence.extend_to(last_read + duration);
            }
        }
        last_read = read_at;
        if renewed_at.elapsed() > duration {
            fence.close();
            tracing::error!(after = ?renewed_at.elapsed(), "the leader Lease was not renewed within its duration");
            return;
        }
        tokio::time::sleep(duration / 4).await;
    }
}

impl Election {
    /// Waits until this process is the leader.
    pub async fn acquired(&mut self) -> bool {
        let acquired = self.is_leader.wait_for(|l| *l).await.is_ok();
        if acquired {
            // The manager has just taken the Lease: writes may go out before the watchdog's first read.
            self.fence.extend_to(Instant::now() + self.duration / 2);
        }
        acquired
    }

    /// Waits until this process is no longer the leader: the Lease went to another holder, or it was not renewed
    /// within its duration (see the module docs). The fence is closed by then.
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
        // The task releases the Lease (bounded by 5 s) and ends.
        let _ = self.stop.send(());
        if tokio::time::timeout(Duration::from_secs(6), self.task).await.is_err() {
            tracing::warn!("gave up releasing the leader lease after 6 s");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_opens_only_until_its_bound_and_an_unelected_one_is_always_open() {
        let now = Instant::now();
        assert!(Fence::open().allows_writes_at(now));
        let fence = Fence::closed();
        assert!(!fence.allows_writes_at(now), "closed until the leadership is confirmed");
        fence.extend_to(now + Duration::from_secs(10));
        assert!(fence.allows_writes_at(now + Duration::from_secs(9)));
        assert!(!fence.allows_writes_at(now + Duration::from_secs(10)), "past the bound: as after a SIGSTOP");
        fence.extend_to(now + Duration::from_secs(5));
        assert!(fence.allows_writes_at(now + Duration::from_secs(9)), "a bound is never shortened");
        fence.close();
        assert!(!fence.allows_writes_at(now));
    }

    #[tokio::test]
    async fn writes_are_refused_without_being_sent_while_reads_pass() {
        use tower::{Layer as _, ServiceExt as _};
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = sent.clone();
        let inner = tower::service_fn(move |_req: http::Request<()>| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::ready(Ok::<_, std::convert::Infallible>(http::Response::new(())))
        });
        let fence = Fence::closed();
        let svc = FenceLayer(fence.clone()).layer(inner);
        let req =
            |m: http::Method| http::Request::builder().method(m).uri("/api/v1/namespaces/x/pods").body(()).unwrap();
        assert!(svc.clone().oneshot(req(http::Method::GET)).await.is_ok());
        let refused = svc.clone().oneshot(req(http::Method::PATCH)).await.unwrap_err();
        assert!(refused.to_string().contains("does not hold the leader Lease"), "{refused}");
        assert_eq!(sent.load(std::sync::atomic::Ordering::SeqCst), 1, "the refused write was not sent");
        fence.extend_to(Instant::now() + Duration::from_mins(1));
        assert!(svc.oneshot(req(http::Method::DELETE)).await.is_ok());
        assert_eq!(sent.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
