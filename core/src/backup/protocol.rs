//! What the operator and the agent sidecar say to each other about backups (JSON over HTTP, bearer token), and
//! where backups are stored ([`StoreLocation`], resolved from a cluster's spec and the operator-wide defaults).
//! Pure data.

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::manifest::SourceCluster;
use super::retention::RetentionPolicy;
use crate::crd::{BackupSpec, RestoreSource};

/// Header value prefix of the agent's bearer token.
pub const BEARER: &str = "Bearer ";
/// Key of the token in the per-cluster agent token Secret.
pub const TOKEN_KEY: &str = "token";
/// Region used when neither the spec nor the operator names one (seed default).
pub const DEFAULT_REGION: &str = "us-east-1";

/// Operator-wide backup settings (`--s3-endpoint`, `--s3-region`, `--backup-dir`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BackupDefaults {
    /// Endpoint used when a cluster names none.
    #[serde(default)]
    pub endpoint: String,
    /// Region used when a cluster names none.
    #[serde(default)]
    pub region: String,
    /// A local directory used instead of S3 when no endpoint is set anywhere (demo and tests): the bucket is a
    /// folder inside it. The agents must see the same path (a shared or hostPath volume).
    #[serde(default)]
    pub local_dir: String,
    /// The operator has S3 credentials for clusters that name none (`--s3-credentials-secret`): it copies them
    /// into each such cluster's `<name>-s3-credentials` Secret, which the agent mounts.
    #[serde(default)]
    pub shared_credentials: bool,
}

/// Where a cluster's backups live.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all_fields = "camelCase")]
pub enum StoreLocation {
    /// An S3-compatible bucket.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Region.
        region: String,
        /// Endpoint URL (path-style addressing); AWS when empty.
        #[serde(default)]
        endpoint: String,
        /// Key prefix of the cluster root's parent.
        #[serde(default)]
        prefix: String,
    },
    /// A directory on the local file system (`<dir>/<bucket>`).
    Local {
        /// The directory that plays the bucket.
        dir: String,
        /// Key prefix of the cluster root's parent.
        #[serde(default)]
        prefix: String,
    },
}

impl StoreLocation {
    /// The key prefix.
    pub fn prefix(&self) -> &str {
        match self {
            StoreLocation::S3 { prefix, .. } | StoreLocation::Local { prefix, .. } => prefix,
        }
    }

    /// `s3://bucket/prefix` or `file:///dir/prefix`, for messages.
    pub fn describe(&self) -> String {
        match self {
            StoreLocation::S3 { bucket, prefix, endpoint, .. } if endpoint.is_empty() => {
                format!("s3://{bucket}/{prefix}")
            }
            StoreLocation::S3 { bucket, prefix, endpoint, .. } => format!("s3://{bucket}/{prefix} at {endpoint}"),
            StoreLocation::Local { dir, prefix } => format!("file://{dir}/{prefix}"),
        }
    }
}

fn resolve(bucket: &str, prefix: &str, endpoint: &str, region: &str, defaults: &BackupDefaults) -> StoreLocation {
    let endpoint = if endpoint.is_empty() { defaults.endpoint.as_str() } else { endpoint };
    if endpoint.is_empty() && !defaults.local_dir.is_empty() {
        let dir = format!("{}/{bucket}", defaults.local_dir.trim_end_matches('/'));
        return StoreLocation::Local { dir, prefix: prefix.to_owned() };
    }
    let region = [region, defaults.region.as_str()].into_iter().find(|r| !r.is_empty()).unwrap_or(DEFAULT_REGION);
    StoreLocation::S3 {
        bucket: bucket.to_owned(),
        region: region.to_owned(),
        endpoint: endpoint.to_owned(),
        prefix: prefix.to_owned(),
    }
}

/// Where a cluster's backups go: its spec, then the operator-wide defaults.
pub fn resolve_store(spec: &BackupSpec, defaults: &BackupDefaults) -> StoreLocation {
    resolve(&spec.bucket, &spec.prefix, &spec.endpoint, &spec.region, defaults)
}

/// Where a restore reads from: `spec.restore.source`, then the operator-wide defaults.
pub fn resolve_restore_store(source: &RestoreSource, defaults: &BackupDefaults) -> StoreLocation {
    resolve(&source.bucket, &source.prefix, &source.endpoint, &source.region, defaults)
}

/// `POST /backup` to the agent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BackupRequest {
    /// Id of the backup to take.
    pub id: String,
    /// The cluster (the root of its backups is `<prefix>/<namespace>/<name>`).
    pub cluster: SourceCluster,
    /// Where to store it.
    pub store: StoreLocation,
    /// Retention to apply after a successful backup.
    #[serde(default)]
    pub retention: RetentionPolicy,
}

/// State of a backup job in the agent.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Snapshotting or uploading.
    Running,
    /// The manifest was written.
    Succeeded,
    /// It failed; no manifest was written.
    Failed,
}

/// What went wrong, as a CamelCase reason for conditions, events and metrics.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// Prometheus refused or failed the snapshot (admin API off, disk full, ...).
    SnapshotFailed,
    /// Object storage refused or failed (outage, credentials, bucket missing).
    StorageFailed,
    /// Reading the snapshot from the data volume failed.
    ReadFailed,
    /// Retention failed after the backup itself succeeded (the backup is kept).
    RetentionFailed,
    /// The agent could not be reached or lost the job (agent restarted).
    AgentLost,
    /// The operator restarted and found the job gone.
    OperatorRestarted,
    /// The request was rejected (bad token, another backup running).
    Rejected,
}

impl FailureReason {
    /// The reason as written in conditions.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::SnapshotFailed => "SnapshotFailed",
            FailureReason::StorageFailed => "StorageFailed",
            FailureReason::ReadFailed => "ReadFailed",
            FailureReason::RetentionFailed => "RetentionFailed",
            FailureReason::AgentLost => "AgentLost",
            FailureReason::OperatorRestarted => "OperatorRestarted",
            FailureReason::Rejected => "Rejected",
        }
    }

    /// The reason [`Self::as_str`] wrote; `None` for any other text.
    pub fn parse(text: &str) -> Option<Self> {
        [
            FailureReason::SnapshotFailed,
            FailureReason::StorageFailed,
            FailureReason::ReadFailed,
            FailureReason::RetentionFailed,
            FailureReason::AgentLost,
            FailureReason::OperatorRestarted,
            FailureReason::Rejected,
        ]
        .into_iter()
        .find(|r| r.as_str() == text)
    }
}

/// A backup job as the agent reports it (`GET /backup/<id>`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    /// Id of the backup.
    pub id: String,
    /// State.
    pub state: JobState,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<FailureReason>,
    /// What failed, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When it started.
    pub start_time: Timestamp,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Timestamp>,
    /// Blocks in the backup.
    #[serde(default)]
    pub blocks: u64,
    /// Files in the backup.
    #[serde(default)]
    pub files: u64,
    /// Bytes of all files.
    #[serde(default)]
    pub total_bytes: u64,
    /// Bytes uploaded so far (the rest is reused from earlier backups).
    #[serde(default)]
    pub uploaded_bytes: u64,
    /// Backups deleted by retention afterwards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deleted_backups: Vec<String>,
    /// What retention left alone afterwards and why, one line each (a manifest it cannot read holds back all
    /// garbage collection, another cluster's backups, a manifest dated in the future).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retention_held: Vec<String>,
    /// Milliseconds the snapshot API call took.
    #[serde(default)]
    pub snapshot_millis: u64,
}

impl JobStatus {
    /// A job `id` that started at `start_time` and is running.
    pub fn running(id: &str, start_time: Timestamp) -> Self {
        Self {
            id: id.to_owned(),
            state: JobState::Running,
            reason: None,
            message: None,
            start_time,
            completion_time: None,
            blocks: 0,
            files: 0,
            total_bytes: 0,
            uploaded_bytes: 0,
            deleted_backups: Vec::new(),
            retention_held: Vec::new(),
            snapshot_millis: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_settings_win_over_defaults_and_a_local_dir_replaces_s3_only_without_endpoint() {
        let defaults = BackupDefaults {
            endpoint: String::new(),
            region: "eu-west-1".into(),
            local_dir: "/var/backups/".into(),
            shared_credentials: false,
        };
        let spec = BackupSpec { bucket: "b".into(), prefix: "p".into(), ..BackupSpec::default() };
        assert_eq!(
            resolve_store(&spec, &defaults),
            StoreLocation::Local { dir: "/var/backups/b".into(), prefix: "p".into() }
        );
        let spec = BackupSpec { endpoint: "http://minio:9000".into(), ..spec };
        assert_eq!(
            resolve_store(&spec, &defaults),
            StoreLocation::S3 {
                bucket: "b".into(),
                region: "eu-west-1".into(),
                endpoint: "http://minio:9000".into(),
                prefix: "p".into()
            }
        );
        let spec = BackupSpec { region: "ap-south-1".into(), ..spec };
        assert!(
            matches!(resolve_store(&spec, &BackupDefaults::default()), StoreLocation::S3 { region, .. } if region == "ap-south-1")
        );
        let spec = BackupSpec { region: String::new(), ..spec };
        assert!(
            matches!(resolve_store(&spec, &BackupDefaults::default()), StoreLocation::S3 { region, .. } if region == DEFAULT_REGION)
        );
    }

    #[test]
    fn requests_round_trip_as_json() {
        let r = BackupRequest {
            id: "X".into(),
            cluster: SourceCluster::default(),
            store: StoreLocation::Local { dir: "/d".into(), prefix: String::new() },
            retention: RetentionPolicy::default(),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""kind":"Local""#), "{json}");
        assert_eq!(serde_json::from_str::<BackupRequest>(&json).unwrap(), r);
    }
}
