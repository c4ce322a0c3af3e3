//! The agent's backup endpoints. I/O: HTTP (served), and through [`super::take`] Prometheus, the data volume
//! and object storage.
//!
//! ```text
//! POST /backup          BackupRequest -> 202 JobStatus (Running); 409 with the running job if one runs
//! GET  /backup          -> [JobStatus]   the running and recent jobs
//! GET  /backup/{id}     -> JobStatus     404 when the agent does not know the job (for example after a restart)
//! ```
//!
//! Every request needs `Authorization: Bearer <token>`, the token in the mounted per-cluster Secret (read at each
//! request, so a rotated token applies at once). Without a token file the endpoints answer 503: backups are
//! never served unauthenticated. The token is checked before anything else, the request body included (a layer
//! in front of the routes), and bodies are limited to [`MAX_REQUEST_BODY`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use jiff::Timestamp;
use tokio::sync::Mutex;
use tsdb_operator_core::backup::protocol::{BEARER, BackupRequest, JobStatus, TOKEN_KEY};

use super::take::{Progress, TakeConfig, take_backup};

/// Largest `POST /backup` body (a request names a store and an id: a few hundred bytes).
pub const MAX_REQUEST_BODY: usize = 64 << 10;

/// Finished jobs kept for `GET /backup`.
const HISTORY: usize = 20;

/// Settings of the backup endpoints.
#[derive(Clone, Debug)]
pub struct BackupAgentConfig {
    /// How to take backups.
    pub take: TakeConfig,
    /// Directory of the mounted token Secret (the token is the file `token`).
    pub token_dir: PathBuf,
}

#[derive(Default)]
struct Jobs {
    running: Option<(JobStatus, Arc<Progress>)>,
    finished: BTreeMap<String, JobStatus>,
}

/// Shared state of the endpoints.
#[derive(Clone)]
pub struct BackupAgent {
    config: Arc<BackupAgentConfig>,
    jobs: Arc<Mutex<Jobs>>,
}

impl BackupAgent {
    /// Creates the endpoints' state and removes snapshot directories left by an earlier run.
    pub fn new(config: BackupAgentConfig) -> Self {
        let removed = super::take::clean_snapshots(&config.take.data_dir);
        if removed > 0 {
            tracing::warn!(removed, "removed snapshot directories left behind by an interrupted backup");
        }
        Self { config: Arc::new(config), jobs: Arc::default() }
    }

    /// The routes (`/backup`, `/backup/{id}`), behind the token check and the body limit.
    pub fn router(self) -> Router {
        Router::new()
            .route("/backup", get(list).post(start))
            .route("/backup/{id}", get(one))
            .route_layer(axum::middleware::from_fn_with_state(self.clone(), require_token))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BODY))
            .with_state(self)
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), Box<Response>> {
        let token = std::fs::read_to_string(self.config.token_dir.join(TOKEN_KEY)).unwrap_or_default();
        let token = token.trim();
        if token.is_empty() {
            let refused = (StatusCode::SERVICE_UNAVAILABLE, "no agent token is mounted; backups are disabled");
            return Err(Box::new(refused.into_response()));
        }
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix(BEARER))
            .unwrap_or_default();
        if constant_time_eq(given.as_bytes(), token.as_bytes()) {
            Ok(())
        } else {
            Err(Box::new((StatusCode::UNAUTHORIZED, "missing or wrong bearer token").into_response()))
        }
    }
}

/// Refuses a request without the right bearer token before its body is read.
async fn require_token(
    State(agent): State<BackupAgent>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match agent.authorize(req.headers()) {
        Ok(()) => next.run(req).await,
        Err(refused) => *refused,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn with_progress(job: &JobStatus, progress: &Progress) -> JobStatus {
    JobStatus { uploaded_bytes: progress.uploaded.load(Ordering::Relaxed), ..job.clone() }
}

async fn start(State(agent): State<BackupAgent>, Json(req): Json<BackupRequest>) -> Response {
    let mut jobs = agent.jobs.lock().await;
    if let Some((job, progress)) = &jobs.running {
        return (StatusCode::CONFLICT, Json(with_progress(job, progress))).into_response();
    }
    if let Some(done) = jobs.finished.get(&req.id) {
        return (StatusCode::CONFLICT, Json(done.clone())).into_response();
    }
    let job = JobStatus::running(&req.id, Timestamp::now());
    let progress = Arc::new(Progress::default());
    jobs.running = Some((job.clone(), progress.clone()));
    drop(jobs);
    tracing::info!(id = %req.id, store = %req.store.describe(), "backup requested");
    let state = agent.clone();
    tokio::spawn(async move {
        let done = take_backup(&state.config.take, &req, &progress).await;
        let mut jobs = state.jobs.lock().await;
        jobs.running = None;
        jobs.finished.insert(done.id.clone(), done);
        while jobs.finished.len() > HISTORY {
            let Some(oldest) = jobs.finished.keys().next().cloned() else { break };
            jobs.finished.remove(&oldest);
        }
    });
    (StatusCode::ACCEPTED, Json(job)).into_response()
}

async fn list(State(agent): State<BackupAgent>) -> Response {
    let jobs = agent.jobs.lock().await;
    let mut out: Vec<JobStatus> = jobs.finished.values().cloned().collect();
    if let Some((job, progress)) = &jobs.running {
        out.push(with_progress(job, progress));
    }
    Json(out).into_response()
}

async fn one(State(agent): State<BackupAgent>, Path(id): Path<String>) -> Response {
    let jobs = agent.jobs.lock().await;
    if let Some((job, progress)) = jobs.running.as_ref().filter(|(j, _)| j.id == id) {
        return Json(with_progress(job, progress)).into_response();
    }
    match jobs.finished.get(&id) {
        Some(job) => Json(job.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, "no such backup job").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_token_is_checked_before_the_body_is_read() {
        use tower::ServiceExt as _;
        let dir = std::env::temp_dir().join(format!("tsdb-agent-token-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("token")).unwrap();
        std::fs::write(dir.join("token").join(TOKEN_KEY), "s3cret\n").unwrap();
        let agent = BackupAgent::new(BackupAgentConfig {
            take: TakeConfig {
                prometheus_url: "http://127.0.0.1:1".to_owned(),
                data_dir: dir.join("data"),
                credentials_dir: dir.join("credentials"),
                tuning: super::super::store::Tuning::default(),
            },
            token_dir: dir.join("token"),
        });
        let app = agent.router();
        let send = |auth: Option<&str>, body: Vec<u8>| {
            let mut req = axum::http::Request::builder().method("POST").uri("/backup");
            if let Some(auth) = auth {
                req = req.header("authorization", auth);
            }
            let req = req.header("content-type", "application/json").body(axum::body::Body::from(body)).unwrap();
            app.clone().oneshot(req)
        };
        // Garbage, and a body over the limit: without the token both are 401, not a parse error.
        assert_eq!(send(None, b"{not json".to_vec()).await.unwrap().status(), StatusCode::UNAUTHORIZED);
        let huge = vec![b'x'; MAX_REQUEST_BODY * 4];
        assert_eq!(send(Some("Bearer wrong"), huge.clone()).await.unwrap().status(), StatusCode::UNAUTHORIZED);
        // With the token, the same bodies reach the parser and the limit.
        assert_eq!(send(Some("Bearer s3cret"), b"{not json".to_vec()).await.unwrap().status(), StatusCode::BAD_REQUEST);
        assert_eq!(send(Some("Bearer s3cret"), huge).await.unwrap().status(), StatusCode::PAYLOAD_TOO_LARGE);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tokens_compare_in_constant_time_and_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
