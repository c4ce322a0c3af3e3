//! The pipeline against an in-memory database that fails on command.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicUsize;

use chrono::{DateTime, Utc};
use tsdb_operator_core::audit::{ActorKind, Filter};

use super::store::Error as StoreError;
use super::*;

/// Stores records in memory, keeping ids unique like the real tables.
#[derive(Default)]
struct FakeStore {
    rows: Mutex<Vec<AuditRecord>>,
    /// Inserts fail while this is above zero (each failure counts it down).
    failures: AtomicUsize,
    /// Inserts store the batch and then fail (a connection lost after the commit) while above zero.
    lost_acks: AtomicUsize,
    inserts: AtomicUsize,
}

fn outage() -> StoreError {
    StoreError::Database { what: "insert records", source: sqlx::Error::PoolTimedOut }
}

impl FakeStore {
    fn store(&self, records: &[AuditRecord]) -> u64 {
        let mut rows = self.rows.lock().unwrap();
        let mut ids: BTreeSet<String> = rows.iter().map(|r| r.event_id.clone()).collect();
        let mut new = 0;
        for r in records {
            if ids.insert(r.event_id.clone()) {
                rows.push(r.clone());
                new += 1;
            }
        }
        new
    }

    fn ids(&self) -> Vec<String> {
        self.rows.lock().unwrap().iter().map(|r| r.event_id.clone()).collect()
    }
}

fn take(counter: &AtomicUsize) -> bool {
    counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
}

impl AuditStore for FakeStore {
    async fn insert(&self, records: &[AuditRecord]) -> Result<u64, StoreError> {
        self.inserts.fetch_add(1, Ordering::SeqCst);
        if take(&self.failures) {
            return Err(outage());
        }
        let new = self.store(records);
        if take(&self.lost_acks) {
            return Err(outage());
        }
        Ok(new)
    }

    async fn prune(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut rows = self.rows.lock().unwrap();
        let n = rows.len();
        rows.retain(|r| DateTime::parse_from_rfc3339(&r.timestamp).is_ok_and(|t| t >= before));
        Ok((n - rows.len()) as u64)
    }

    async fn count(&self) -> Result<i64, StoreError> {
        Ok(i64::try_from(self.rows.lock().unwrap().len()).unwrap())
    }

    async fn query(&self, _: &Filter) -> Result<Vec<AuditRecord>, StoreError> {
        Ok(self.rows.lock().unwrap().iter().rev().cloned().collect())
    }
}

fn record(i: usize) -> AuditRecord {
    AuditRecord {
        event_id: format!("e{i:05}"),
        timestamp: "2026-12-03T10:00:00Z".to_owned(),
        namespace: "obs".to_owned(),
        kind: "PrometheusCluster".to_owned(),
        cluster_name: format!("c{}", i % 3),
        object_uid: String::new(),
        operation: "Scaled".to_owned(),
        operator: "tsdb-operator".to_owned(),
        actor_kind: ActorKind::Operator,
        actor_groups: vec![],
        result: "success".to_owned(),
        detail: String::new(),
        diff: String::new(),
    }
}

fn spool_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tsdb-audit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn fast() -> Limits {
    Limits { max_backoff: Duration::from_millis(20), ..Limits::default() }
}

async fn settle(store: &FakeStore, want: usize) {
    for _ in 0..500 {
        if store.ids().len() >= want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_outage_loses_nothing_stores_each_record_once_and_keeps_the_order() {
    let store = Arc::new(FakeStore::default());
    store.failures.store(5, Ordering::SeqCst);
    store.lost_acks.store(2, Ordering::SeqCst);
    let dir = spool_dir("outage");
    let (audit, task) = start(store.clone(), &dir, fast(), AuditMetrics::default()).unwrap();
    for i in 0..2000 {
        audit.record(record(i));
    }
    settle(&store, 2000).await;
    drop(audit);
    task.await.unwrap();
    let want: Vec<String> = (0..2000).map(|i| record(i).event_id).collect();
    assert_eq!(store.ids(), want, "every record once, in the order recorded");
    assert!(store.inserts.load(Ordering::SeqCst) > 5, "the failed batches were sent again");
    assert!(Spool::open(&dir).unwrap().1.is_empty(), "the spool is empty once everything is stored");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn durable_records_survive_a_stop_while_the_database_is_down() {
    let dir = spool_dir("restart");
    let down = Arc::new(FakeStore::default());
    down.failures.store(usize::MAX, Ordering::SeqCst);
    let (audit, task) = start(down.clone(), &dir, fast(), AuditMetrics::default()).unwrap();
    for i in 0..10 {
        audit.record_durably(record(i)).await.unwrap();
    }
    drop(audit);
    task.await.unwrap();
    assert!(down.ids().is_empty());

    let up = Arc::new(FakeStore::default());
    let metrics = AuditMetrics::default();
    let (audit, task) = start(up.clone(), &dir, fast(), metrics.clone()).unwrap();
    audit.record(record(10));
    settle(&up, 11).await;
    drop(audit);
    task.await.unwrap();
    assert_eq!(up.ids(), (0..11).map(|i| record(i).event_id).collect::<Vec<_>>());
    assert_eq!(metrics.pending.get(), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn beyond_the_bounds_records_are_dropped_and_counted_never_silently() {
    let store = Arc::new(FakeStore::default());
    store.failures.store(usize::MAX, Ordering::SeqCst);
    let dir = spool_dir("bounds");
    let metrics = AuditMetrics::default();
    let limits = Limits { queue: 4, pending: 10, batch: 4, max_backoff: Duration::from_millis(5) };
    let (audit, task) = start(store.clone(), &dir, limits, metrics.clone()).unwrap();
    let sent = 200;
    for i in 0..sent {
        audit.record(record(i));
        if i % 8 == 0 {
            tokio::task::yield_now().await;
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = audit.record_durably(record(999)).await;
    assert!(refused.is_err(), "a durable record beyond the bound is refused, not acknowledged");
    let spooled = usize::try_from(metrics.pending.get()).unwrap();
    let dropped = usize::try_from(metrics.dropped.get()).unwrap();
    assert_eq!(spooled, 10, "the spool holds its limit");
    assert_eq!(spooled + dropped, sent + 1, "every record is either spooled or counted as dropped");
    store.failures.store(0, Ordering::SeqCst);
    settle(&store, 10).await;
    drop(audit);
    task.await.unwrap();
    assert_eq!(store.ids().len(), 10);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn the_pruner_deletes_old_records_and_sets_the_row_gauge() {
    let store = Arc::new(FakeStore::default());
    let mut old = record(1);
    old.timestamp = "2020-01-01T00:00:00Z".to_owned();
    let mut new = record(2);
    new.timestamp = Utc::now().to_rfc3339();
    store.store(&[old, new]);
    let metrics = AuditMetrics::default();
    prune(store.clone(), 30, metrics.clone(), async {}).await;
    assert_eq!(store.ids(), ["e00002"]);
    assert_eq!((metrics.pruned.get(), metrics.rows.get()), (1, 1));
}
