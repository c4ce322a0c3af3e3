//! The API server's audit log, to count the write requests a client makes (for example the operator's writes
//! while its clusters are idle) and to see how it reads Secrets and ConfigMaps (a LIST of every Secret would
//! bring unrelated content into its memory). I/O: reads the log file.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

/// Audit policy at `Metadata` level: write verbs, and every read of Secrets and ConfigMaps; nothing else.
pub const POLICY: &str = "\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [\"RequestReceived\"]
rules:
- level: Metadata
  verbs: [\"create\", \"update\", \"patch\", \"delete\", \"deletecollection\"]
- level: Metadata
  verbs: [\"get\", \"list\", \"watch\"]
  resources: [{group: \"\", resources: [\"secrets\", \"configmaps\"]}]
- level: None
";

/// The verbs that change something.
pub const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

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
    /// The path and query of the request, e.g. `/api/v1/configmaps?labelSelector=...&watch=true`.
    #[serde(default, rename = "requestURI")]
    pub request_uri: String,
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
    Ok(requests_by(path, user)?.into_iter().filter(|e| WRITE_VERBS.contains(&e.verb.as_str())).collect())
}

/// Every audited request by `user` in the audit log at `path` (writes, and reads of Secrets and ConfigMaps).
pub fn requests_by(path: &Path, user: &str) -> Result<Vec<AuditEntry>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<AuditEntry>(l).ok())
        .filter(|e| e.user.username == user)
        .collect())
}

/// The requests among `entries` that would bring objects unrelated to the client into its memory: any LIST or
/// WATCH of Secrets (at any scope), and any LIST or WATCH of ConfigMaps without a label selector.
pub fn unscoped_reads(entries: &[AuditEntry]) -> Vec<&AuditEntry> {
    entries
        .iter()
        .filter(|e| matches!(e.verb.as_str(), "list" | "watch"))
        .filter(|e| match e.object_ref.as_ref().map(|o| o.resource.as_str()) {
            Some("secrets") => true,
            Some("configmaps") => !e.request_uri.contains("labelSelector="),
            _ => false,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(verb: &str, resource: &str, uri: &str) -> AuditEntry {
        serde_json::from_value(serde_json::json!({
            "verb": verb,
            "user": {"username": "op"},
            "requestURI": uri,
            "objectRef": {"resource": resource},
        }))
        .unwrap()
    }

    #[test]
    fn lists_of_secrets_and_unselected_configmaps_are_unscoped() {
        let entries = [
            entry("get", "secrets", "/api/v1/namespaces/a/secrets/s3-creds"),
            entry("list", "secrets", "/api/v1/secrets?limit=500"),
            entry("watch", "configmaps", "/api/v1/configmaps?labelSelector=app.kubernetes.io%2Fmanaged-by&watch=true"),
            entry("list", "configmaps", "/api/v1/namespaces/a/configmaps"),
        ];
        let found: Vec<&str> = unscoped_reads(&entries).iter().map(|e| e.request_uri.as_str()).collect();
        assert_eq!(found, ["/api/v1/secrets?limit=500", "/api/v1/namespaces/a/configmaps"]);
    }
}
