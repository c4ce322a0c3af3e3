//! The operator's side of the agent protocol: read an agent's reload status, start a backup on a pod's agent, read
//! a job. The wire types are the core's ([`tsdb_operator_core::reload::AgentStatus`],
//! [`tsdb_operator_core::backup::protocol`]). I/O: HTTP to pod IPs.

use std::time::Duration;

use tsdb_operator_core::backup::protocol::{BEARER, BackupRequest, JobStatus};
use tsdb_operator_core::reload::AgentStatus;

/// What an agent answered.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The agent could not be reached.
    #[error("failed to reach the agent at {url}")]
    Unreachable {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The agent answered with an error.
    #[error("the agent at {url} answered {code}: {body}")]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status.
        code: u16,
        /// The body.
        body: String,
    },
}

impl Error {
    /// Whether the agent refused the bearer token (401 or 403): the token may have been rotated.
    pub fn is_refused(&self) -> bool {
        matches!(self, Error::Status { code: 401 | 403, .. })
    }
}

/// Starts a backup. `Ok(Err(job))` when another job is running (HTTP 409): the running job.
pub async fn start_backup(
    http: &reqwest::Client,
    pod_ip: &str,
    port: i32,
    token: &str,
    request: &BackupRequest,
) -> Result<Result<JobStatus, JobStatus>, Error> {
    let url = format!("http://{pod_ip}:{port}/backup");
    let resp = http
        .post(&url)
        .header(reqwest::header::AUTHORIZATION, format!("{BEARER}{token}"))
        .timeout(Duration::from_secs(10))
        .json(request)
        .send()
        .await
        .map_err(|source| Error::Unreachable { url: url.clone(), source })?;
    let code = resp.status();
    if code.as_u16() == 409 {
        let job = resp.json().await.map_err(|source| Error::Unreachable { url: url.clone(), source })?;
        return Ok(Err(job));
    }
    if !code.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(Error::Status { url, code: code.as_u16(), body });
    }
    Ok(Ok(resp.json().await.map_err(|source| Error::Unreachable { url, source })?))
}

/// Reads a job; `Ok(None)` when the agent does not know it (HTTP 404).
pub async fn job(
    http: &reqwest::Client,
    pod_ip: &str,
    port: i32,
    token: &str,
    id: &str,
) -> Result<Option<JobStatus>, Error> {
    let url = format!("http://{pod_ip}:{port}/backup/{id}");
    let resp = http
        .get(&url)
        .header(reqwest::header::AUTHORIZATION, format!("{BEARER}{token}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|source| Error::Unreachable { url: url.clone(), source })?;
    if resp.status().as_u16() == 404 {
        return Ok(None);
    }
    if !resp.status().is_success() {
        let code = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        return Err(Error::Status { url, code, body });
    }
    Ok(Some(resp.json().await.map_err(|source| Error::Unreachable { url, source })?))
}

/// Reads an agent's reload status (`GET /status`, no token: it holds no secret).
pub async fn status(http: &reqwest::Client, pod_ip: &str, port: i32) -> Result<AgentStatus, reqwest::Error> {
    http.get(format!("http://{pod_ip}:{port}/status")).send().await?.error_for_status()?.json().await
}
