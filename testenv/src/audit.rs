//! The API server's audit log, to count the write requests a client makes (for example the operator's writes
//! while its clusters are idle). I/O: reads the log file.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

/// Audit policy: write verbs at `Metadata` level, nothing else.
pub const POLICY: &str = "\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [\"RequestReceived\"]
rules:
- level: Metadata
  verbs: [\"create\", \"update\", \"patch\", \"delete\", \"deletecollection\"]
- level: None
";

/// One audited request.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// `create`, `update`, `patch`, `delete`, ...
    pub verb: String,
    /// The authenticated user.
    pub user: AuditUser,
    /// The client's user agent.
    #[serde(default)]
    pub user_agent: String,
    /// The object.
    #[serde(default)]
    pub object_ref: Option<AuditObjectRef>,
    /// When the response was sent (RFC 3339).
    #[serde(default)]
    pub stage_timestamp: String,
    /// The response's status, when the request was answered.
    #[serde(default)]
    pub response_status: Option<AuditResponseStatus>,
}

/// The status of an audited response.
#[derive(Debug, Clone, Deserialize)]
pub struct AuditResponseStatus {
    /// HTTP status code, e.g. 409 for a conflict.
    #[serde(default)]
    pub code: u16,
}

impl AuditEntry {
    /// The response's HTTP status code, when the request was answered.
    pub fn code(&self) -> Option<u16> {
        self.response_status.as_ref().map(|s| s.code)
    }
}

/// The user of an audited request.
#[derive(Debug, Clone, Deserialize)]
pub struct AuditUser {
    /// User name.
    #[serde(default)]
    pub username: String,
}

/// The object of an audited request.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditObjectRef {
    /// Resource, e.g. `statefulsets`.
    #[serde(default)]
    pub resource: String,
    /// Namespace.
    #[serde(default)]
    pub namespace: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Subresource, e.g. `status`.
    #[serde(default)]
    pub subresource: String,
}

impl std::fmt::Display for AuditEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = self.object_ref.clone().unwrap_or(AuditObjectRef {
            resource: String::new(),
            namespace: String::new(),
            name: String::new(),
            subresource: String::new(),
        });
        write!(f, "{} {} {} {}/{}/{}", self.stage_timestamp, self.verb, o.resource, o.namespace, o.name, o.subresource)
    }
}

/// Write requests by `user` in the audit log at `path`.
pub fn writes_by(path: &Path, user: &str) -> Result<Vec<AuditEntry>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<AuditEntry>(l).ok())
        .filter(|e| e.user.username == user)
        .collect())
}
