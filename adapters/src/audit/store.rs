//! Where audit records are kept: SQLite (a file, the embedded default) or PostgreSQL (the seed's database), through
//! sqlx with migrations (`adapters/migrations/`). I/O: the database.
//!
//! Inserts are idempotent: `INSERT ... ON CONFLICT (event_id) DO NOTHING`, so a batch sent again after an outage
//! (the first attempt may have committed before the connection broke) stores each record once.

use std::future::Future;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row};
use tsdb_operator_core::audit::{ActorKind, AuditRecord, Filter};

/// Errors of the audit store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The DSN is not one the store understands.
    #[error("--audit-dsn {dsn:?}: {reason}")]
    Dsn {
        /// The DSN, without its password.
        dsn: String,
        /// What is wrong, and the fix.
        reason: String,
    },
    /// The database failed.
    #[error("the audit database failed to {what}")]
    Database {
        /// What was being done.
        what: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The schema could not be brought up to date.
    #[error("the audit database's schema could not be migrated")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::Database { what, source }
}

/// The port to the audit database. [`SqlStore`] is the real one.
pub trait AuditStore: Send + Sync + 'static {
    /// Stores `records` (in order) in one transaction; records whose id is stored already are skipped. Returns how
    /// many were new.
    fn insert(&self, records: &[AuditRecord]) -> impl Future<Output = Result<u64, Error>> + Send;
    /// Deletes records older than `before`; returns how many.
    fn prune(&self, before: DateTime<Utc>) -> impl Future<Output = Result<u64, Error>> + Send;
    /// How many records there are.
    fn count(&self) -> impl Future<Output = Result<i64, Error>> + Send;
    /// Records matching `filter`, newest first.
    fn query(&self, filter: &Filter) -> impl Future<Output = Result<Vec<AuditRecord>, Error>> + Send;
}

/// A shared store is a store.
impl<T: AuditStore> AuditStore for std::sync::Arc<T> {
    async fn insert(&self, records: &[AuditRecord]) -> Result<u64, Error> {
        (**self).insert(records).await
    }
    async fn prune(&self, before: DateTime<Utc>) -> Result<u64, Error> {
        (**self).prune(before).await
    }
    async fn count(&self) -> Result<i64, Error> {
        (**self).count().await
    }
    async fn query(&self, filter: &Filter) -> Result<Vec<AuditRecord>, Error> {
        (**self).query(filter).await
    }
}

/// SQLite or PostgreSQL.
#[derive(Clone, Debug)]
pub enum SqlStore {
    /// A SQLite file.
    Sqlite(SqlitePool),
    /// A PostgreSQL database.
    Postgres(PgPool),
}

/// The DSN with any password replaced, for messages.
pub fn redact(dsn: &str) -> String {
    match (dsn.find("://"), dsn.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &dsn[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &dsn[..scheme + 3], &dsn[at..])
        }
        _ => dsn.to_owned(),
    }
}

impl SqlStore {
    /// Connects to `dsn` (`sqlite:PATH` / `sqlite://PATH`, or `postgres://...` / `postgresql://...`) and brings the
    /// schema up to date. A SQLite file is created when missing.
    pub async fn connect(dsn: &str) -> Result<Self, Error> {
        let bad = |reason: String| Error::Dsn { dsn: redact(dsn), reason };
        if dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(dsn).map_err(|e| bad(e.to_string()))?;
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(std::time::Duration::from_secs(5))
                .connect_lazy_with(options);
            sqlx::migrate!("./migrations/postgres").run(&pool).await.map_err(Error::Migrate)?;
            Ok(Self::Postgres(pool))
        } else if dsn.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(dsn)
                .map_err(|e| bad(e.to_string()))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(std::time::Duration::from_secs(5));
            let pool = SqlitePoolOptions::new().max_connections(2).connect_with(options).await.map_err(db("open"))?;
            sqlx::migrate!("./migrations/sqlite").run(&pool).await.map_err(Error::Migrate)?;
            Ok(Self::Sqlite(pool))
        } else {
            Err(bad("use sqlite:/path/to/audit.db or postgres://user@host/db".to_owned()))
        }
    }
}

fn time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).map_or_else(|_| Utc::now(), |t| t.with_timezone(&Utc))
}

const COLUMNS: &str = "event_id, timestamp, namespace, kind, cluster_name, object_uid, operation, operator, \
                       actor_kind, actor_groups, result, detail, diff";

fn push_values<DB: sqlx::Database>(builder: &mut QueryBuilder<DB>, records: &[AuditRecord], sqlite: bool)
where
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    builder.push_values(records, |mut row, r| {
        row.push_bind(r.event_id.clone());
        if sqlite {
            // RFC 3339 in UTC with a fixed width sorts as time.
            row.push_bind(time(&r.timestamp).format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string());
        } else {
            row.push_bind(time(&r.timestamp));
        }
        row.push_bind(r.namespace.clone())
            .push_bind(r.kind.clone())
            .push_bind(r.cluster_name.clone())
            .push_bind(r.object_uid.clone())
            .push_bind(r.operation.clone())
            .push_bind(r.operator.clone())
            .push_bind(r.actor_kind.as_str().to_owned())
            .push_bind(r.actor_groups.join(","))
            .push_bind(r.result.clone())
            .push_bind(r.detail.clone())
            .push_bind(r.diff.clone());
    });
}

/// Rows per INSERT statement (13 parameters each, under SQLite's 32,766 and PostgreSQL's 65,535).
const ROWS_PER_STATEMENT: usize = 1000;

fn push_filter<DB: sqlx::Database>(builder: &mut QueryBuilder<DB>, filter: &Filter)
where
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    builder.push(" WHERE 1=1");
    let equal = [
        ("namespace", &filter.namespace),
        ("cluster_name", &filter.cluster),
        ("operator", &filter.actor),
        ("operation", &filter.operation),
    ];
    for (column, value) in equal {
        if let Some(v) = value {
            builder.push(format!(" AND {column} = ")).push_bind(v.clone());
        }
    }
}

/// A record from a row of the query in [`AuditStore::query`].
fn read<'r, R: Row>(row: &'r R, timestamp: String) -> Result<AuditRecord, sqlx::Error>
where
    &'r str: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let text = |column: &'r str| row.try_get::<String, _>(column);
    let actor_kind = text("actor_kind")?;
    let groups = text("actor_groups")?;
    Ok(AuditRecord {
        event_id: text("event_id")?,
        timestamp,
        namespace: text("namespace")?,
        kind: text("kind")?,
        cluster_name: text("cluster_name")?,
        object_uid: text("object_uid")?,
        operation: text("operation")?,
        operator: text("operator")?,
        actor_kind: ActorKind::parse(&actor_kind).unwrap_or(ActorKind::User),
        actor_groups: groups.split(',').filter(|g| !g.is_empty()).map(str::to_owned).collect(),
        result: text("result")?,
        detail: text("detail")?,
        diff: text("diff")?,
    })
}

/// One batch into SQLite, in one transaction on `conn`.
async fn insert_sqlite(conn: &mut sqlx::SqliteConnection, records: &[AuditRecord]) -> Result<u64, Error> {
    let mut new = 0;
    let mut tx = sqlx::Connection::begin(conn).await.map_err(db("begin a transaction"))?;
    for chunk in records.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::new(format!("INSERT INTO audit_log ({COLUMNS}) "));
        push_values(&mut q, chunk, true);
        q.push(" ON CONFLICT (event_id) DO NOTHING");
        new += q.build().execute(&mut *tx).await.map_err(db("insert records"))?.rows_affected();
    }
    tx.commit().await.map_err(db("commit"))?;
    Ok(new)
}

impl AuditStore for SqlStore {
    async fn insert(&self, records: &[AuditRecord]) -> Result<u64, Error> {
        let mut new = 0;
        match self {
            Self::Postgres(pool) => {
                let mut tx = pool.begin().await.map_err(db("begin a transaction"))?;
                for chunk in records.chunks(ROWS_PER_STATEMENT) {
                    let mut q = QueryBuilder::new(format!("INSERT INTO audit_log ({COLUMNS}) "));
                    push_values(&mut q, chunk, false);
                    q.push(" ON CONFLICT (event_id) DO NOTHING");
                    new += q.build().execute(&mut *tx).await.map_err(db("insert records"))?.rows_affected();
                }
                tx.commit().await.map_err(db("commit"))?;
            }
            Self::Sqlite(pool) => {
                let mut conn = pool.acquire().await.map_err(db("open a connection"))?;
                let inserted = insert_sqlite(&mut conn, records).await;
                if inserted.is_err() {
                    // A statement or COMMIT that failed with SQLITE_FULL or SQLITE_IOERR may leave the transaction
                    // open on this connection: later inserts on it would only seem to commit, and be rolled back
                    // when it closes (records lost after a disk-full, found by the audit_store test). Close it
                    // instead of returning it to the pool; SQLite rolls back whatever is open, and the batch is
                    // retried on a fresh connection.
                    let _ = sqlx::Connection::close(conn.detach()).await;
                }
                new = inserted?;
            }
        }
        Ok(new)
    }

    async fn prune(&self, before: DateTime<Utc>) -> Result<u64, Error> {
        Ok(match self {
            Self::Postgres(pool) => sqlx::query("DELETE FROM audit_log WHERE timestamp < $1")
                .bind(before)
                .execute(pool)
                .await
                .map_err(db("prune"))?
                .rows_affected(),
            Self::Sqlite(pool) => sqlx::query("DELETE FROM audit_log WHERE timestamp < $1")
                .bind(before.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
                .execute(pool)
                .await
                .map_err(db("prune"))?
                .rows_affected(),
        })
    }

    async fn count(&self) -> Result<i64, Error> {
        let sql = "SELECT COUNT(*) FROM audit_log";
        Ok(match self {
            Self::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.map_err(db("count"))?,
            Self::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.map_err(db("count"))?,
        })
    }

    async fn query(&self, filter: &Filter) -> Result<Vec<AuditRecord>, Error> {
        let limit = i64::from(if filter.limit == 0 { 100 } else { filter.limit });
        let select = "SELECT COALESCE(event_id, CAST(id AS TEXT)) AS event_id, namespace, kind, cluster_name, \
                      object_uid, operation, operator, actor_kind, actor_groups, result, detail, diff";
        match self {
            Self::Postgres(pool) => {
                let mut q = QueryBuilder::new(format!("{select}, timestamp FROM audit_log"));
                push_filter(&mut q, filter);
                if let Some(since) = &filter.since {
                    q.push(" AND timestamp >= ").push_bind(time(since));
                }
                if let Some(until) = &filter.until {
                    q.push(" AND timestamp < ").push_bind(time(until));
                }
                q.push(" ORDER BY timestamp DESC, id DESC LIMIT ").push_bind(limit);
                let rows = q.build().fetch_all(pool).await.map_err(db("query"))?;
                rows.iter()
                    .map(|row| {
                        let at: DateTime<Utc> = row.try_get("timestamp")?;
                        read(row, at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
                    })
                    .collect::<Result<_, _>>()
                    .map_err(db("read records"))
            }
            Self::Sqlite(pool) => {
                let mut q = QueryBuilder::new(format!("{select}, timestamp FROM audit_log"));
                push_filter(&mut q, filter);
                if let Some(since) = &filter.since {
                    q.push(" AND timestamp >= ").push_bind(time(since).format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string());
                }
                if let Some(until) = &filter.until {
                    q.push(" AND timestamp < ").push_bind(time(until).format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string());
                }
                q.push(" ORDER BY timestamp DESC, id DESC LIMIT ").push_bind(limit);
                let rows = q.build().fetch_all(pool).await.map_err(db("query"))?;
                rows.iter()
                    .map(|row| {
                        let at: String = row.try_get("timestamp")?;
                        read(row, at)
                    })
                    .collect::<Result<_, _>>()
                    .map_err(db("read records"))
            }
        }
    }
}
