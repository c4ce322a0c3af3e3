-- The seed's audit_log columns, and the ones it lacked. Times are RFC 3339 text in UTC, which sorts as time.
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    cluster_name TEXT NOT NULL,
    operation TEXT NOT NULL,
    operator TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    result TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    event_id TEXT UNIQUE,
    namespace TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL DEFAULT '',
    object_uid TEXT NOT NULL DEFAULT '',
    actor_kind TEXT NOT NULL DEFAULT 'user',
    actor_groups TEXT NOT NULL DEFAULT '',
    diff TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_log_cluster_ts ON audit_log (cluster_name, timestamp DESC);
CREATE INDEX IF NOT EXISTS audit_log_ts ON audit_log (timestamp);
CREATE INDEX IF NOT EXISTS audit_log_namespace_cluster_ts ON audit_log (namespace, cluster_name, timestamp DESC);
