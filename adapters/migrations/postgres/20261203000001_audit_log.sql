-- The seed's table (kept as it is, so its queries keep working), then the columns it lacked.
CREATE TABLE IF NOT EXISTS audit_log (
    id BIGSERIAL PRIMARY KEY,
    cluster_name TEXT NOT NULL,
    operation TEXT NOT NULL,
    operator TEXT NOT NULL,
    timestamp TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    result TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_log_cluster_ts ON audit_log (cluster_name, timestamp DESC);
CREATE INDEX IF NOT EXISTS audit_log_ts ON audit_log (timestamp);

ALTER TABLE audit_log ADD COLUMN IF NOT EXISTS event_id TEXT;
ALTER TABLE audit_log ADD COLUMN IF NOT EXISTS namespace TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN IF NOT EXISTS kind TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN IF NOT EXISTS object_uid TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN IF NOT EXISTS actor_kind TEXT NOT NULL DEFAULT 'user';
ALTER TABLE audit_log ADD COLUMN IF NOT EXISTS actor_groups TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN IF NOT EXISTS diff TEXT NOT NULL DEFAULT '';
-- Rows the seed wrote have no event id; every row this operator writes has one, inserted once.
CREATE UNIQUE INDEX IF NOT EXISTS audit_log_event_id ON audit_log (event_id);
CREATE INDEX IF NOT EXISTS audit_log_namespace_cluster_ts ON audit_log (namespace, cluster_name, timestamp DESC);
