//! The audit store on a real SQLite file and on the machine's PostgreSQL: migrations (over the seed's own table),
//! exactly-once inserts, queries, pruning; and the pipeline through a PostgreSQL outage and slow statements.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tsdb_operator_adapters::audit::store::{AuditStore, SqlStore};
use tsdb_operator_adapters::audit::{self, AuditMetrics, Limits};
use tsdb_operator_core::audit::{ActorKind, AuditRecord, Filter};
use tsdb_operator_testenv::postgres::Postgres;

fn record(i: usize, ns: &str, cluster: &str, actor: &str, at: &str) -> AuditRecord {
    AuditRecord {
        event_id: format!("{ns}-{i:06}"),
        timestamp: at.to_owned(),
        namespace: ns.to_owned(),
        kind: "PrometheusCluster".to_owned(),
        cluster_name: cluster.to_owned(),
        object_uid: "uid-1".to_owned(),
        operation: if actor == "alice" { "update" } else { "Scaled" }.to_owned(),
        operator: actor.to_owned(),
        actor_kind: if actor == "alice" { ActorKind::User } else { ActorKind::Operator },
        actor_groups: if actor == "alice" { vec!["team".to_owned(), "dev".to_owned()] } else { vec![] },
        result: "success".to_owned(),
        detail: format!("record {i}"),
        diff: if actor == "alice" { r#"[{"op":"replace","path":"/replicas","value":3}]"# } else { "" }.to_owned(),
    }
}

async fn store_behaves(store: &SqlStore) -> Result<()> {
    let records = vec![
        record(1, "a", "demo", "alice", "2026-12-01T10:00:00Z"),
        record(2, "a", "demo", "tsdb-operator", "2026-12-01T10:00:01Z"),
        record(3, "b", "demo", "alice", "2026-12-02T10:00:00Z"),
        record(4, "a", "other", "tsdb-operator", "2020-01-01T00:00:00Z"),
    ];
    assert_eq!(store.insert(&records).await?, 4);
    assert_eq!(store.insert(&records[..2]).await?, 0, "an id stored already is skipped");
    assert_eq!(store.count().await?, 4);

    let newest_first =
        store.query(&Filter { namespace: Some("a".into()), cluster: Some("demo".into()), ..Filter::default() }).await?;
    let ids: Vec<&str> = newest_first.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(ids, ["a-000002", "a-000001"]);
    let mut written = records[0].clone();
    "2026-12-01T10:00:00.000000Z".clone_into(&mut written.timestamp); // read back in UTC with microseconds
    assert_eq!(newest_first[1], written, "a record reads back as written");
    let by_alice = store.query(&Filter { actor: Some("alice".into()), ..Filter::default() }).await?;
    assert_eq!(by_alice.len(), 2);
    let since = store.query(&Filter { since: Some("2026-12-02T00:00:00Z".into()), ..Filter::default() }).await?;
    assert_eq!(since.iter().map(|r| r.event_id.as_str()).collect::<Vec<_>>(), ["b-000003"]);
    let limited = store.query(&Filter { limit: 1, ..Filter::default() }).await?;
    assert_eq!(limited.len(), 1);

    let before = chrono::DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z")?.with_timezone(&chrono::Utc);
    assert_eq!(store.prune(before).await?, 1);
    assert_eq!(store.count().await?, 3);
    Ok(())
}

#[tokio::test]
async fn sqlite_stores_queries_and_prunes() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("tsdb-audit-sqlite-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let dsn = format!("sqlite:{}", dir.join("audit.db").display());
    store_behaves(&SqlStore::connect(&dsn).await?).await?;
    // Opening it again runs no migration twice and keeps the rows.
    assert_eq!(SqlStore::connect(&dsn).await?.count().await?, 3);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test]
async fn postgres_takes_over_the_seeds_table_and_stores_queries_and_prunes() -> Result<()> {
    let pg = Postgres::local()?;
    let name = pg.create_database("audit_store")?;
    // The Go operator's table with one of its rows.
    pg.psql(
        &name,
        "CREATE TABLE audit_log (id BIGSERIAL PRIMARY KEY, cluster_name TEXT NOT NULL, operation TEXT NOT NULL, \
         operator TEXT NOT NULL, timestamp TIMESTAMPTZ NOT NULL DEFAULT NOW(), result TEXT NOT NULL, \
         detail TEXT NOT NULL DEFAULT ''); \
         INSERT INTO audit_log (cluster_name, operation, operator, result) VALUES ('legacy', 'create', 'anonymous', 'success')",
    )?;
    let store = SqlStore::connect(&pg.dsn(&name)).await?;
    let legacy = store.query(&Filter { cluster: Some("legacy".into()), ..Filter::default() }).await?;
    assert_eq!(legacy.len(), 1, "the seed's rows stay readable");
    assert_eq!(legacy[0].operator, "anonymous");
    pg.psql(&name, "DELETE FROM audit_log")?;
    store_behaves(&store).await?;
    // The seed's own query still works on the table.
    let seed =
        pg.psql(&name, "SELECT operator FROM audit_log WHERE cluster_name='demo' ORDER BY timestamp DESC LIMIT 100")?;
    assert_eq!(seed.lines().count(), 3);
    pg.drop_database(&name)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_then_slow_loses_nothing_and_never_blocks_the_recorder() -> Result<()> {
    let pg = Postgres::local()?;
    let name = pg.create_database("audit_outage")?;
    let store = Arc::new(SqlStore::connect(&pg.dsn(&name)).await?);
    let dir = std::env::temp_dir().join(format!("tsdb-audit-outage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let metrics = AuditMetrics::default();
    let limits = Limits { max_backoff: Duration::from_secs(1), ..Limits::default() };
    let (recorder, task) = audit::start(store.clone(), &dir, limits, metrics.clone())?;

    // 100 records a second for 16 s: 4 s normal, 6 s with PostgreSQL refusing connections, 6 s with every insert
    // statement taking 2 s.
    let (outage_at, slow_at, end) = (400, 1000, 1600);
    let mut slowest_record = Duration::ZERO;
    let started = Instant::now();
    for i in 0..end {
        if i == outage_at {
            pg.psql("postgres", &format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false"))?;
            pg.psql(
                "postgres",
                &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"),
            )?;
        }
        if i == slow_at {
            pg.psql("postgres", &format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true"))?;
            pg.psql(
                &name,
                "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$; \
                 CREATE TRIGGER slow BEFORE INSERT ON audit_log FOR EACH STATEMENT EXECUTE FUNCTION slow()",
            )?;
        }
        let at = chrono::Utc::now().to_rfc3339();
        let cluster = format!("c{}", i % 5);
        let t = Instant::now();
        recorder.record(record(i, "load", &cluster, "tsdb-operator", &at));
        slowest_record = slowest_record.max(t.elapsed());
        let next = started + Duration::from_millis(10 * (i as u64 + 1));
        tokio::time::sleep_until(next.into()).await;
    }
    pg.psql(&name, "DROP TRIGGER slow ON audit_log")?;
    let drained = all_stored_once_in_order(&store, pg, &name, end).await?;
    eprintln!(
        "{end} records at 100/s through a 6 s outage and 6 s of 2 s statements: all stored {drained:?} after the \
         load ended; slowest record() call {slowest_record:?}; {} failed writes retried",
        metrics.write_errors.get()
    );
    assert!(metrics.write_errors.get() > 0, "the outage was seen");
    assert_eq!(metrics.dropped.get(), 0);
    drop(recorder);
    task.await?;
    std::fs::remove_dir_all(&dir)?;
    pg.drop_database(&name)?;
    Ok(())
}

/// Waits (up to a minute) until `end` records are in `database`, then checks each is there once and in the order
/// recorded; returns how long the wait took.
async fn all_stored_once_in_order(store: &SqlStore, pg: &Postgres, database: &str, end: usize) -> Result<Duration> {
    let took = wait_stored(store, end).await?;
    let in_order = pg.psql(
        database,
        "SELECT count(*) FROM (SELECT event_id, lag(event_id) OVER (ORDER BY id) AS before FROM audit_log) t \
         WHERE before > event_id",
    )?;
    assert_eq!(in_order.trim(), "0", "stored in the order recorded");
    assert_eq!(pg.psql(database, "SELECT count(DISTINCT event_id) FROM audit_log")?.trim(), end.to_string());
    Ok(took)
}

/// Waits (up to a minute) until `store` holds `end` records, failing if it does not; returns how long it took.
async fn wait_stored(store: &SqlStore, end: usize) -> Result<Duration> {
    let started = Instant::now();
    let mut stored = 0;
    for _ in 0..600 {
        stored = store.count().await.unwrap_or(0);
        if stored >= i64::try_from(end)? {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stored, i64::try_from(end)?, "every record stored");
    Ok(started.elapsed())
}

/// A database whose tablespace is a 24 MiB tmpfs, so that a test can fill its disk; everything is removed when it
/// is dropped (database, tablespace, mount).
struct SmallDisk {
    pg: &'static Postgres,
    dir: std::path::PathBuf,
    tablespace: String,
    database: String,
}

impl SmallDisk {
    fn create(pg: &'static Postgres, prefix: &str) -> Result<Self> {
        let id = std::process::id();
        // Under the server's own home: its /tmp may be private to it.
        let dir = std::path::PathBuf::from(format!("/var/lib/postgresql/tsdb-{prefix}-{id}"));
        std::fs::create_dir_all(&dir)?;
        let owner = |flag: &str| -> Result<String> {
            let out = std::process::Command::new("id").args([flag, "postgres"]).output()?;
            Ok(String::from_utf8(out.stdout)?.trim().to_owned())
        };
        let options = format!("size=24m,mode=0700,uid={},gid={}", owner("-u")?, owner("-g")?);
        let mounted =
            std::process::Command::new("mount").args(["-t", "tmpfs", "-o", &options, "tmpfs"]).arg(&dir).status()?;
        anyhow::ensure!(mounted.success(), "could not mount a tmpfs on {} (the test needs root)", dir.display());
        let disk = Self { pg, dir, tablespace: format!("tsdb_{prefix}_{id}"), database: format!("tsdb_{prefix}_{id}") };
        pg.psql("postgres", &format!("CREATE TABLESPACE {} LOCATION '{}'", disk.tablespace, disk.dir.display()))?;
        pg.psql("postgres", &format!("CREATE DATABASE {} TABLESPACE {}", disk.database, disk.tablespace))?;
        Ok(disk)
    }

    /// Fills the disk with a table of its own, in committed steps, until PostgreSQL says it is full.
    fn fill(&self) -> Result<()> {
        self.pg
            .psql(&self.database, "CREATE TABLE filler(x text); ALTER TABLE filler ALTER COLUMN x SET STORAGE PLAIN")?;
        for _ in 0..200 {
            let step = "INSERT INTO filler SELECT repeat(md5(g::text), 8) FROM generate_series(1, 2500) g";
            match self.pg.psql(&self.database, step) {
                Ok(_) => {}
                Err(e) if format!("{e:#}").contains("No space left on device") => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        anyhow::bail!("the 24 MiB tablespace did not fill up")
    }

    /// Frees the disk (dropping a table needs no new space, unlike TRUNCATE).
    fn free(&self) -> Result<()> {
        self.pg.psql(&self.database, "DROP TABLE filler")?;
        Ok(())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = self.pg.drop_database(&self.database);
        let _ = self.pg.psql("postgres", &format!("DROP TABLESPACE IF EXISTS {}", self.tablespace));
        let _ = std::process::Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Fault table row 15, disk full: the audit database on a tablespace that fills up while 100 records a second
/// arrive. Every insert fails with "No space left on device" for 4 s; recording never blocks, nothing is dropped,
/// and once space is freed every record is stored exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_disk_full_loses_nothing_and_never_blocks_the_recorder() -> Result<()> {
    let pg = Postgres::local()?;
    let disk = SmallDisk::create(pg, "audit_full")?;
    let store = Arc::new(SqlStore::connect(&pg.dsn(&disk.database)).await?);
    let dir = std::env::temp_dir().join(format!("tsdb-audit-full-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let metrics = AuditMetrics::default();
    let limits = Limits { max_backoff: Duration::from_secs(1), ..Limits::default() };
    let (recorder, task) = audit::start(store.clone(), &dir, limits, metrics.clone())?;

    // 100 records a second for 8 s: 2 s normal, 4 s with the disk full, 2 s after it was freed.
    let (full_at, freed_at, end) = (200, 600, 800);
    let mut slowest_record = Duration::ZERO;
    let mut errors_while_full = 0;
    let started = Instant::now();
    for i in 0..end {
        if i == full_at {
            disk.fill()?;
        }
        if i == freed_at {
            errors_while_full = metrics.write_errors.get();
            disk.free()?;
        }
        let at = chrono::Utc::now().to_rfc3339();
        let t = Instant::now();
        recorder.record(record(i, "full", &format!("c{}", i % 5), "tsdb-operator", &at));
        slowest_record = slowest_record.max(t.elapsed());
        let next = started + Duration::from_millis(10 * (i as u64 + 1));
        tokio::time::sleep_until(next.into()).await;
    }
    let drained = all_stored_once_in_order(&store, pg, &disk.database, end).await?;
    eprintln!(
        "{end} records at 100/s with the disk full for 4 s: all stored {drained:?} after the load ended; slowest \
         record() call {slowest_record:?}; {errors_while_full} failed writes while full"
    );
    assert!(errors_while_full > 0, "the full disk was seen");
    assert_eq!(metrics.dropped.get(), 0);
    drop(recorder);
    task.await?;
    drop(store);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// A tmpfs of `size` mounted on a new directory, unmounted and removed when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(name: &str, size: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(&dir)
            .status()?;
        anyhow::ensure!(mounted.success(), "could not mount a tmpfs on {} (the test needs root)", dir.display());
        Ok(Self(dir))
    }

    /// Writes a file of zeros until the filesystem says it is full; returns the bytes written.
    fn fill(&self) -> Result<u64> {
        use std::io::Write;
        let mut file = std::fs::File::create(self.0.join("filler"))?;
        let chunk = vec![0_u8; 64 * 1024];
        let mut written = 0_u64;
        for _ in 0..1024 {
            match file.write(&chunk) {
                Ok(0) => return Ok(written),
                Ok(n) => written += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => return Ok(written),
                Err(e) => return Err(e.into()),
            }
        }
        anyhow::bail!("the tmpfs did not fill up after {written} bytes")
    }

    fn free(&self) -> Result<()> {
        std::fs::remove_file(self.0.join("filler"))?;
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Fault table row 15, disk full, on the embedded default: the SQLite file (WAL mode) on an 8 MiB tmpfs that
/// fills up while 100 records a second arrive (the spool is on another disk). Writes fail with "database or disk
/// is full" for 4 s; recording never blocks, nothing is dropped, and once space is freed every record is stored
/// exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_disk_full_loses_nothing_and_never_blocks_the_recorder() -> Result<()> {
    let disk = Tmpfs::mount("tsdb-audit-sqlite-full", "8m")?;
    let file = disk.0.join("audit.db");
    let store = Arc::new(SqlStore::connect(&format!("sqlite:{}", file.display())).await?);
    let spool = std::env::temp_dir().join(format!("tsdb-audit-sqlite-full-spool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool);
    let metrics = AuditMetrics::default();
    let limits = Limits { max_backoff: Duration::from_secs(1), ..Limits::default() };
    let (recorder, task) = audit::start(store.clone(), &spool, limits, metrics.clone())?;

    // 100 records a second for 8 s: 2 s normal, 4 s with the disk full, 2 s after it was freed.
    let (full_at, freed_at, end) = (200, 600, 800);
    let mut slowest_record = Duration::ZERO;
    let (mut errors_while_full, mut filled) = (0, 0);
    let started = Instant::now();
    for i in 0..end {
        if i == full_at {
            filled = disk.fill()?;
        }
        if i == freed_at {
            errors_while_full = metrics.write_errors.get();
            disk.free()?;
        }
        let at = chrono::Utc::now().to_rfc3339();
        let t = Instant::now();
        recorder.record(record(i, "full", &format!("c{}", i % 5), "tsdb-operator", &at));
        slowest_record = slowest_record.max(t.elapsed());
        let next = started + Duration::from_millis(10 * (i as u64 + 1));
        tokio::time::sleep_until(next.into()).await;
    }
    let drained = wait_stored(&store, end).await?;
    drop(recorder);
    task.await?;
    drop(store);
    // As after a restart: only what was committed is there. (Before the store closed a connection whose COMMIT
    // had failed, 484 of these 800 records were counted as stored and rolled back when it closed.)
    let sqlite = sqlx::SqlitePool::connect(&format!("sqlite:{}", file.display())).await?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log").fetch_one(&sqlite).await?;
    assert_eq!(rows, i64::try_from(end)?, "every record still there when the file is opened again");
    let out_of_order: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT event_id, lag(event_id) OVER (ORDER BY id) AS before FROM audit_log) t \
         WHERE before > event_id",
    )
    .fetch_one(&sqlite)
    .await?;
    assert_eq!(out_of_order, 0, "stored in the order recorded");
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT event_id) FROM audit_log").fetch_one(&sqlite).await?;
    assert_eq!(distinct, i64::try_from(end)?, "each record once");
    eprintln!(
        "{end} records at 100/s with the SQLite disk full for 4 s ({filled} bytes of filler): all stored {drained:?} \
         after the load ended; slowest record() call {slowest_record:?}; {errors_while_full} failed writes while full"
    );
    assert!(errors_while_full > 0, "the full disk was seen");
    assert_eq!(metrics.dropped.get(), 0);
    sqlite.close().await;
    std::fs::remove_dir_all(&spool)?;
    Ok(())
}
