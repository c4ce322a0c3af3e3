//! The audit trail: every user change seen at admission and every operator action, stored in SQLite or PostgreSQL
//! without ever slowing a reconcile and without losing a record silently. I/O: a spool directory and the database.
//!
//! # Flow
//! ```text
//!  webhook ── record_durably ──┐                  ┌── spooler: append + fsync, then ack ──► spool file
//!  event bus ── record ────────┴─► bounded queue ─┤
//!                                                 └── shipper: batches ──► INSERT .. ON CONFLICT DO NOTHING
//!                                                                          then the spool's checkpoint
//! ```
//! - [`Audit::record`] never waits: the queue is bounded ([`Limits::queue`]); when it is full the record is
//!   dropped and counted (`tsdb_operator_audit_dropped_total`), never silently.
//! - [`Audit::record_durably`] (the webhook's records) returns once the record is on disk in the spool, so an
//!   admitted change is recorded even if the operator is killed right after answering.
//! - The shipper writes batches in order; while the database is down or slow, records wait in the spool (up to
//!   [`Limits::pending`] records; beyond, new ones are dropped and counted) and are sent again, oldest first, with
//!   a capped backoff. A batch sent twice stores each record once (its event id).
//! - The pruner deletes records older than `--audit-retention-days` every hour and sets the row gauge.

pub mod spool;
pub mod store;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Notify, mpsc, oneshot};
use tsdb_operator_core::audit::AuditRecord;

use crate::metrics::Metrics;
use spool::Spool;
use store::AuditStore;

/// Labels of the seed's record counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RecordLabels {
    /// The object's name (the seed's label).
    pub cluster: String,
    /// The record's result.
    pub result: String,
}

/// The audit trail's metrics: the seed's three and the ones that make losses and backlogs visible.
#[derive(Clone, Default)]
pub struct AuditMetrics {
    /// `tsdb_operator_audit_record_total{cluster,result}`: records stored.
    pub records: Family<RecordLabels, Counter>,
    /// `tsdb_operator_audit_prune_total`: records deleted by retention.
    pub pruned: Counter,
    /// `tsdb_operator_audit_rows`: records in the database.
    pub rows: Gauge,
    /// `tsdb_operator_audit_dropped_total`: records lost because the queue or the spool was full.
    pub dropped: Counter,
    /// `tsdb_operator_audit_pending`: records spooled and not yet stored.
    pub pending: Gauge,
    /// `tsdb_operator_audit_write_errors_total`: failed writes to the database (retried).
    pub write_errors: Counter,
}

impl AuditMetrics {
    /// Registers the metrics with the operator's.
    pub fn register(metrics: &Metrics) -> Self {
        let m = Self::default();
        metrics.with_registry(|r| {
            r.register("tsdb_operator_audit_record", "Audit records stored", m.records.clone());
            r.register("tsdb_operator_audit_prune", "Audit records deleted by retention", m.pruned.clone());
            r.register("tsdb_operator_audit_rows", "Audit records in the database", m.rows.clone());
            r.register("tsdb_operator_audit_dropped", "Audit records lost: queue or spool full", m.dropped.clone());
            r.register("tsdb_operator_audit_pending", "Audit records spooled, not yet stored", m.pending.clone());
            r.register("tsdb_operator_audit_write_errors", "Failed audit database writes", m.write_errors.clone());
        });
        m
    }
}

/// Bounds of the pipeline.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Records waiting to be spooled.
    pub queue: usize,
    /// Records spooled and not yet stored.
    pub pending: usize,
    /// Records per database write.
    pub batch: usize,
    /// Longest wait between two attempts while the database fails.
    pub max_backoff: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self { queue: 10_000, pending: 1_000_000, batch: 500, max_backoff: Duration::from_secs(30) }
    }
}

/// Why a durable record was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The queue was full or the pipeline stopped.
    #[error("the audit trail is not taking records (queue full or stopped)")]
    Unavailable,
    /// The spool could not be written.
    #[error("the audit spool could not be written: {0}")]
    Spool(String),
}

enum Entry {
    Record(AuditRecord),
    Durable(AuditRecord, oneshot::Sender<Result<(), String>>),
}

/// The handle producers record through. Cheap to clone.
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<Entry>,
    metrics: AuditMetrics,
    dropped: Arc<AtomicU64>,
}

impl Audit {
    /// Records `record` without waiting; when the queue is full it is dropped and counted.
    pub fn record(&self, record: AuditRecord) {
        if self.tx.try_send(Entry::Record(record)).is_err() {
            self.drop_one();
        }
    }

    /// Records `record` and returns once it is on disk in the spool.
    pub async fn record_durably(&self, record: AuditRecord) -> Result<(), RecordError> {
        let (ack, done) = oneshot::channel();
        if self.tx.try_send(Entry::Durable(record, ack)).is_err() {
            self.drop_one();
            return Err(RecordError::Unavailable);
        }
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(RecordError::Spool(e)),
            Err(_) => Err(RecordError::Unavailable),
        }
    }

    fn drop_one(&self) {
        self.count_dropped(1);
    }

    fn count_dropped(&self, n: u64) {
        self.metrics.dropped.inc_by(n);
        let before = self.dropped.fetch_add(n, Ordering::Relaxed);
        if (before + n).ilog2() != before.checked_ilog2().unwrap_or(u32::MAX) {
            tracing::error!(dropped = before + n, "audit records dropped: the audit queue or spool is full");
        }
    }
}

/// Records every event published on `bus` from now on, with the operator as the actor; events the subscription
/// missed (it fell behind the bus) are counted as dropped. Ends when the bus is gone.
pub fn follow_events(bus: &crate::events::EventBus, audit: Audit) -> tokio::task::JoinHandle<()> {
    use tokio::sync::broadcast::error::RecvError;
    let mut events = bus.subscribe();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(event) => {
                    let id = format!("{:032x}", rand::random::<u128>());
                    audit.record(tsdb_operator_core::audit::from_event(&event, id));
                }
                Err(RecvError::Lagged(missed)) => audit.count_dropped(missed),
                Err(RecvError::Closed) => return,
            }
        }
    })
}

/// What the spooler and the shipper share: records spooled and not yet stored, with their spool offsets.
struct Shared {
    pending: Mutex<VecDeque<(AuditRecord, Option<u64>)>>,
    spool: Mutex<Spool>,
    wake: Notify,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, VecDeque<(AuditRecord, Option<u64>)>> {
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn spool(&self) -> std::sync::MutexGuard<'_, Spool> {
        self.spool.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Opens the spool in `spool_dir` and starts the spooler and the shipper writing to `store`. Records the spool
/// held from before (a crash, an outage) are sent first. The tasks end when every [`Audit`] handle is dropped and
/// the queue is drained.
pub fn start<S: AuditStore>(
    store: Arc<S>,
    spool_dir: &Path,
    limits: Limits,
    metrics: AuditMetrics,
) -> std::io::Result<(Audit, tokio::task::JoinHandle<()>)> {
    let (spool, recovered) = Spool::open(spool_dir)?;
    if !recovered.is_empty() {
        tracing::info!(records = recovered.len(), "sending audit records spooled before the restart");
    }
    let pending = recovered.into_iter().map(|(r, end)| (r, Some(end))).collect::<VecDeque<_>>();
    metrics.pending.set(i64::try_from(pending.len()).unwrap_or(i64::MAX));
    let shared = Arc::new(Shared { pending: Mutex::new(pending), spool: Mutex::new(spool), wake: Notify::new() });
    let (tx, rx) = mpsc::channel(limits.queue.max(1));
    let dropped = Arc::new(AtomicU64::new(0));
    let audit = Audit { tx, metrics: metrics.clone(), dropped: dropped.clone() };
    let spooler = tokio::spawn(spool_entries(shared.clone(), rx, limits, audit.clone_counters()));
    let task = tokio::spawn(async move {
        let (done_tx, done_rx) = tokio::sync::watch::channel(false);
        let shipper = tokio::spawn(ship(store, shared.clone(), limits, metrics, done_rx));
        let _ = spooler.await;
        let _ = done_tx.send(true);
        shared.wake.notify_one();
        let _ = shipper.await;
    });
    Ok((audit, task))
}

/// The drop counters of a handle, without its sender (so the spooler does not keep its own queue open).
struct Counters {
    metrics: AuditMetrics,
    dropped: Arc<AtomicU64>,
}

impl Audit {
    fn clone_counters(&self) -> Counters {
        Counters { metrics: self.metrics.clone(), dropped: self.dropped.clone() }
    }
}

async fn spool_entries(shared: Arc<Shared>, mut rx: mpsc::Receiver<Entry>, limits: Limits, counters: Counters) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, limits.batch.max(1)).await > 0 {
        let room = limits.pending.saturating_sub(shared.pending().len());
        let mut records = Vec::with_capacity(batch.len());
        let mut acks = Vec::new();
        for (i, entry) in batch.drain(..).enumerate() {
            let (record, ack) = match entry {
                Entry::Record(r) => (r, None),
                Entry::Durable(r, ack) => (r, Some(ack)),
            };
            if i >= room {
                counters.metrics.dropped.inc();
                let dropped = counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::error!(dropped, "audit records dropped: the spool holds its limit of unstored records");
                }
                if let Some(ack) = ack {
                    let _ = ack.send(Err("the audit spool is full".to_owned()));
                }
                continue;
            }
            records.push(record);
            acks.push(ack);
        }
        if records.is_empty() {
            continue;
        }
        let written = shared.spool().append(&records);
        let (ends, outcome) = match written {
            Ok(ends) => (ends.into_iter().map(Some).collect::<Vec<_>>(), Ok(())),
            Err(e) => {
                // Kept in memory and still sent; only the crash safety is lost, and the webhook is told.
                tracing::error!(error = %e, "could not write the audit spool");
                (vec![None; records.len()], Err(e.to_string()))
            }
        };
        {
            let mut pending = shared.pending();
            pending.extend(records.into_iter().zip(ends));
            counters.metrics.pending.set(i64::try_from(pending.len()).unwrap_or(i64::MAX));
        }
        for ack in acks.into_iter().flatten() {
            let _ = ack.send(outcome.clone());
        }
        shared.wake.notify_one();
    }
}

async fn ship<S: AuditStore>(
    store: Arc<S>,
    shared: Arc<Shared>,
    limits: Limits,
    metrics: AuditMetrics,
    mut done: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let batch: Vec<AuditRecord> =
            shared.pending().iter().take(limits.batch.max(1)).map(|(r, _)| r.clone()).collect();
        if batch.is_empty() {
            if *done.borrow() {
                return;
            }
            tokio::select! {
                () = shared.wake.notified() => {}
                _ = done.changed() => {}
            }
            continue;
        }
        match store.insert(&batch).await {
            Ok(_) => {
                backoff = Duration::from_millis(250);
                let last_end = {
                    let mut pending = shared.pending();
                    let mut last = None;
                    for _ in 0..batch.len() {
                        if let Some((record, end)) = pending.pop_front() {
                            metrics
                                .records
                                .get_or_create(&RecordLabels { cluster: record.cluster_name, result: record.result })
                                .inc();
                            last = end.or(last);
                        }
                    }
                    metrics.pending.set(i64::try_from(pending.len()).unwrap_or(i64::MAX));
                    last
                };
                if let Some(end) = last_end
                    && let Err(e) = shared.spool().commit(end)
                {
                    tracing::warn!(error = %e, "could not move the audit spool's checkpoint (records may be sent twice)");
                }
            }
            Err(e) => {
                metrics.write_errors.inc();
                tracing::warn!(error = %crate::error_chain(&e), records = batch.len(), retry_in = ?backoff,
                    "audit records not stored yet; they stay in the spool");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = done.changed() => {}
                }
                if *done.borrow() && shared.pending().len() == batch.len() {
                    // Shutting down with the database unreachable: the spool keeps them for the next start.
                    return;
                }
                backoff = (backoff * 2).min(limits.max_backoff);
            }
        }
    }
}

/// Deletes records older than `retention_days` now and every hour (nothing when 0), and sets the row gauge.
pub async fn prune<S: AuditStore>(
    store: Arc<S>,
    retention_days: u32,
    metrics: AuditMetrics,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        if retention_days > 0 {
            let before = chrono::Utc::now() - chrono::Duration::days(i64::from(retention_days));
            match store.prune(before).await {
                Ok(n) => {
                    metrics.pruned.inc_by(n);
                    if n > 0 {
                        tracing::info!(deleted = n, retention_days, "pruned the audit trail");
                    }
                }
                Err(e) => tracing::warn!(error = %crate::error_chain(&e), "could not prune the audit trail"),
            }
        }
        match store.count().await {
            Ok(n) => {
                metrics.rows.set(n);
            }
            Err(e) => tracing::debug!(error = %crate::error_chain(&e), "could not count the audit records"),
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(Duration::from_hours(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests;
