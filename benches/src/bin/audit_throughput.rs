//! Audit trail numbers: insert throughput into SQLite and the machine's PostgreSQL by batch size (the store alone),
//! and the pipeline's recovery after a PostgreSQL outage at a steady rate (records wait in the spool and are
//! stored once the database answers).
//!
//! `cargo run --release -p tsdb-operator-benches --bin audit_throughput -- --records 20000 --outage-seconds 60`

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tsdb_operator_adapters::audit::store::{AuditStore, SqlStore};
use tsdb_operator_adapters::audit::{self, AuditMetrics, Limits};
use tsdb_operator_benches::arg;
use tsdb_operator_core::audit::{ActorKind, AuditRecord};
use tsdb_operator_testenv::postgres::Postgres;

fn record(run: &str, i: usize) -> AuditRecord {
    AuditRecord {
        event_id: format!("{run}-{i:08}"),
        timestamp: chrono_now(),
        namespace: format!("team-{}", i % 20),
        kind: "PrometheusCluster".to_owned(),
        cluster_name: format!("cluster-{}", i % 100),
        object_uid: "0b6f2c6e-1d7e-4b8e-9d3a-5a1f0c4e0006".to_owned(),
        operation: "Scaled".to_owned(),
        operator: "tsdb-operator-7d9f8-abcde".to_owned(),
        actor_kind: ActorKind::Operator,
        actor_groups: vec![],
        result: "success".to_owned(),
        detail: "scaling from 2 to 3 replicas".to_owned(),
        diff: String::new(),
    }
}

fn chrono_now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

async fn throughput(store: &SqlStore, label: &str, records: usize) -> Result<()> {
    for batch in [1, 50, 500, 2000] {
        let n = if batch == 1 { records / 10 } else { records };
        let run = format!("{label}-{batch}-{}", std::process::id());
        let all: Vec<AuditRecord> = (0..n).map(|i| record(&run, i)).collect();
        let started = Instant::now();
        for chunk in all.chunks(batch) {
            store.insert(chunk).await?;
        }
        let took = started.elapsed();
        #[allow(clippy::cast_precision_loss)] // a rate to print
        let rate = n as f64 / took.as_secs_f64();
        println!("| {label} | {batch} | {n} | {rate:.0} |");
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let records = usize::try_from(arg("--records", 20_000))?;
    let outage = Duration::from_secs(arg("--outage-seconds", 60));
    let dir = std::env::temp_dir().join(format!("tsdb-audit-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let pg = Postgres::local()?;
    let name = pg.create_database("audit_bench")?;

    println!("| store | batch | records | records/s |\n|---|---|---|---|");
    let sqlite = SqlStore::connect(&format!("sqlite:{}", dir.join("audit.db").display())).await?;
    throughput(&sqlite, "SQLite", records).await?;
    let postgres = SqlStore::connect(&pg.dsn(&name)).await?;
    throughput(&postgres, "PostgreSQL", records).await?;

    // 100 records/s; PostgreSQL refuses connections for `outage`, then the rate goes on until the spool is empty.
    let store = Arc::new(postgres);
    let before = store.count().await?;
    let metrics = AuditMetrics::default();
    let (recorder, task) = audit::start(store.clone(), &dir.join("spool"), Limits::default(), metrics.clone())?;
    let started = Instant::now();
    let mut i = 0;
    let mut restored_at = None;
    let mut recovered = None;
    pg.psql("postgres", &format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false"))?;
    pg.psql("postgres", &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))?;
    while recovered.is_none() && started.elapsed() < outage + Duration::from_mins(2) {
        recorder.record(record("outage", i));
        i += 1;
        if restored_at.is_none() && started.elapsed() >= outage {
            pg.psql("postgres", &format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true"))?;
            restored_at = Some(Instant::now());
            println!("\noutage over after {:?} with {} records spooled", started.elapsed(), metrics.pending.get());
        }
        if let Some(at) = restored_at
            && metrics.pending.get() <= 1
            && at.elapsed() > Duration::from_millis(100)
        {
            recovered = Some(at.elapsed());
        }
        tokio::time::sleep_until((started + Duration::from_millis(10 * (i as u64 + 1))).into()).await;
    }
    let recovered = recovered.context("the spool did not drain within 2 minutes of the outage's end")?;
    drop(recorder);
    task.await?;
    let stored = store.count().await? - before;
    println!(
        "recovery: {i} records at 100/s through a {outage:?} outage; spool drained {recovered:?} after the database \
         came back; stored {stored} (dropped {}, failed writes retried {})",
        metrics.dropped.get(),
        metrics.write_errors.get()
    );
    pg.drop_database(&name)?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
