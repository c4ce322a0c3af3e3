//! The object storage port: S3-compatible buckets (`object_store::aws`) and local directories
//! (`object_store::local`), with the upload and download disciplines backups need. I/O: object storage and the
//! local file system.
//!
//! # Guarantees
//! - Memory is bounded: files are read in parts of [`Tuning::part_size`], at most [`Tuning::parts_in_flight`]
//!   parts of one file are buffered or in flight.
//! - Every request is retried with exponential backoff (object_store's retry) within [`Tuning::retry_budget`];
//!   a multipart upload that fails is aborted.
//! - Every byte uploaded or downloaded is hashed with SHA-256 on the way; downloads are checked against the
//!   expected size and digest before they count.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt as _;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt as _, PutPayload, RetryConfig, WriteMultipart,
};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt as _;
use tokio::io::AsyncWriteExt as _;
use tsdb_operator_core::backup::protocol::StoreLocation;
use tsdb_operator_core::backup::retention::StoredObject;

/// What failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store could not be configured.
    #[error("failed to open {location}")]
    Open {
        /// The store.
        location: String,
        /// The cause.
        #[source]
        source: object_store::Error,
    },
    /// A request to the store failed (after retries).
    #[error("failed to {op} {key}")]
    Request {
        /// `put`, `get`, `list`, `delete`, `upload`, `complete`.
        op: &'static str,
        /// The key.
        key: String,
        /// The cause.
        #[source]
        source: object_store::Error,
    },
    /// A local file could not be read or written.
    #[error("failed to {op} {}", path.display())]
    Io {
        /// `read`, `write`, `create`.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A downloaded object does not match its manifest.
    #[error(
        "checksum mismatch in {key}: expected {expected_size} bytes with sha256 {expected}, got {actual_size} bytes with sha256 {actual}"
    )]
    Checksum {
        /// The object.
        key: String,
        /// SHA-256 in the manifest.
        expected: String,
        /// SHA-256 of the content.
        actual: String,
        /// Size in the manifest.
        expected_size: u64,
        /// Size of the content.
        actual_size: u64,
    },
}

impl Error {
    /// Whether the error is the store's (as opposed to the local disk's or the data's).
    pub fn is_storage(&self) -> bool {
        matches!(self, Error::Open { .. } | Error::Request { .. })
    }
}

/// `type Result<T> = Result<T, store::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Static credentials for S3 (read from the mounted Secret); `None` uses the environment's.
#[derive(Clone, Default)]
pub struct Credentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// `AWS_SESSION_TOKEN`, if any.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("access_key_id", &self.access_key_id).finish_non_exhaustive()
    }
}

impl Credentials {
    /// Reads `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and optionally `AWS_SESSION_TOKEN` from files in `dir`
    /// (a mounted Secret). Read at every use, so rotated credentials apply without a restart. `None` when the
    /// directory has no key id.
    pub fn from_dir(dir: &Path) -> Option<Self> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name)).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
        };
        Some(Self {
            access_key_id: read("AWS_ACCESS_KEY_ID")?,
            secret_access_key: read("AWS_SECRET_ACCESS_KEY").unwrap_or_default(),
            session_token: read("AWS_SESSION_TOKEN"),
        })
    }
}

/// Upload and retry parameters.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// Files up to this size go in one PUT; larger ones in parts of this size.
    pub part_size: usize,
    /// Parts of one file buffered or in flight at most.
    pub parts_in_flight: usize,
    /// Files uploaded at once.
    pub files_in_flight: usize,
    /// Retries of one request at most: a bound on the loop, set high enough that [`Tuning::retry_budget`] ends the
    /// retries first even if every jittered wait were the shortest (200 ms). With 5, retries took under 4 s, so a
    /// 5-second outage failed a backup that the budget was meant to carry through.
    pub max_retries: usize,
    /// Total time one request may take including retries: no retry starts after it (a request that hangs still
    /// runs up to [`Tuning::request_timeout`]).
    pub retry_budget: Duration,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            part_size: 8 << 20,
            parts_in_flight: 2,
            files_in_flight: 2,
            max_retries: 300,
            retry_budget: Duration::from_mins(1),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// The longest wait between two tries of one request.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// object_store's retries for `tuning`. object_store decides whether to retry before it waits, so its
/// `retry_timeout` is the budget less the longest wait: the last retry then starts within the budget.
fn retry_config(tuning: &Tuning) -> RetryConfig {
    let max_backoff = MAX_BACKOFF.min(tuning.retry_budget / 2);
    RetryConfig {
        backoff: BackoffConfig { init_backoff: Duration::from_millis(200), max_backoff, base: 2.0 },
        max_retries: tuning.max_retries,
        retry_timeout: tuning.retry_budget.saturating_sub(max_backoff),
    }
}

/// An open object store with the backup disciplines.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    tuning: Tuning,
    description: String,
}

/// Opens the store of `location`.
pub fn open(location: &StoreLocation, credentials: Option<&Credentials>, tuning: &Tuning) -> Result<Store> {
    let description = location.describe();
    let inner: Arc<dyn ObjectStore> = match location {
        StoreLocation::S3 { bucket, region, endpoint, .. } => {
            let mut b = if credentials.is_some() { AmazonS3Builder::new() } else { AmazonS3Builder::from_env() };
            b = b.with_bucket_name(bucket).with_region(region);
            if !endpoint.is_empty() {
                b = b
                    .with_endpoint(endpoint)
                    .with_virtual_hosted_style_request(false)
                    .with_allow_http(endpoint.starts_with("http://"));
            }
            if let Some(c) = credentials {
                b = b.with_access_key_id(&c.access_key_id).with_secret_access_key(&c.secret_access_key);
                if let Some(t) = &c.session_token {
                    b = b.with_token(t);
                }
            }
            let retry = retry_config(tuning);
            let client = ClientOptions::new()
                .with_allow_http(endpoint.starts_with("http://"))
                .with_connect_timeout(Duration::from_secs(5))
                .with_timeout(tuning.request_timeout);
            Arc::new(
                b.with_retry(retry)
                    .with_client_options(client)
                    .build()
                    .map_err(|source| Error::Open { location: description.clone(), source })?,
            )
        }
        StoreLocation::Local { dir, .. } => {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io { op: "create", path: dir.into(), source })?;
            Arc::new(
                LocalFileSystem::new_with_prefix(dir)
                    .map_err(|source| Error::Open { location: description.clone(), source })?,
            )
        }
    };
    Ok(Store { inner, tuning: tuning.clone(), description })
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

impl Store {
    /// A store over any `ObjectStore` (tests, benchmarks).
    pub fn from_object_store(inner: Arc<dyn ObjectStore>, tuning: Tuning) -> Self {
        let description = inner.to_string();
        Self { inner, tuning, description }
    }

    /// The underlying store.
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// Upload tuning.
    pub fn tuning(&self) -> &Tuning {
        &self.tuning
    }

    /// `s3://bucket/...` or `file://...`.
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// Every object under `prefix` (a folder; all pages).
    pub async fn list(&self, prefix: &str) -> Result<Vec<StoredObject>> {
        let path = ObjectPath::from(prefix);
        let prefix_path = (!prefix.is_empty()).then_some(&path);
        self.inner
            .list(prefix_path)
            .map_ok(|m| StoredObject {
                key: m.location.to_string(),
                size: m.size,
                last_modified: timestamp(m.last_modified),
            })
            .try_collect()
            .await
            .map_err(|source| Error::Request { op: "list", key: prefix.to_owned(), source })
    }

    /// The content of `key`; `Ok(None)` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        match self.inner.get(&ObjectPath::from(key)).await {
            Ok(r) => {
                Ok(Some(r.bytes().await.map_err(|source| Error::Request { op: "get", key: key.to_owned(), source })?))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(Error::Request { op: "get", key: key.to_owned(), source }),
        }
    }

    /// Writes `bytes` to `key` in one atomic PUT.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        self.inner
            .put(&ObjectPath::from(key), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|source| Error::Request { op: "put", key: key.to_owned(), source })
    }

    /// Deletes `key` (a missing key is fine).
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.inner.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(Error::Request { op: "delete", key: key.to_owned(), source }),
        }
    }

    /// [`Store::delete`] taking the key by value (for streams of deletes).
    pub async fn delete_owned(&self, key: String) -> Result<()> {
        self.delete(&key).await
    }

    /// Uploads a local file to `key`, hashing it on the way; returns its size and SHA-256. Small files go in
    /// one PUT, large ones as a multipart upload that is aborted on any failure. `on_bytes` is called with the
    /// size of each part read.
    pub async fn upload_file(
        &self,
        file: &Path,
        key: &str,
        on_bytes: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(u64, String)> {
        let io = |op, source| Error::Io { op, path: file.to_owned(), source };
        let mut f = tokio::fs::File::open(file).await.map_err(|e| io("read", e))?;
        let len = f.metadata().await.map_err(|e| io("read", e))?.len();
        let part = self.tuning.part_size.max(5 << 20);
        let mut hasher = Sha256::new();
        let location = ObjectPath::from(key);
        if len <= part as u64 {
            let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(part));
            f.read_to_end(&mut buf).await.map_err(|e| io("read", e))?;
            hasher.update(&buf);
            let size = buf.len() as u64;
            on_bytes(size);
            self.inner.put(&location, PutPayload::from(buf)).await.map_err(|source| Error::Request {
                op: "put",
                key: key.to_owned(),
                source,
            })?;
            return Ok((size, hex(&hasher.finalize())));
        }
        let upload = self.inner.put_multipart(&location).await.map_err(|source| Error::Request {
            op: "upload",
            key: key.to_owned(),
            source,
        })?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, part);
        let mut size = 0u64;
        let result: Result<()> = async {
            loop {
                writer
                    .wait_for_capacity(self.tuning.parts_in_flight.max(1))
                    .await
                    .map_err(|source| Error::Request { op: "upload", key: key.to_owned(), source })?;
                let mut buf = vec![0u8; part];
                let mut filled = 0;
                while filled < part {
                    let n = f.read(&mut buf[filled..]).await.map_err(|e| io("read", e))?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 {
                    break;
                }
                buf.truncate(filled);
                hasher.update(&buf);
                size += filled as u64;
                on_bytes(filled as u64);
                writer.put(Bytes::from(buf));
            }
            // Every part stored before `finish`, which would report a failed abort instead of the part's error.
            writer.wait_for_capacity(0).await.map_err(|source| Error::Request {
                op: "upload",
                key: key.to_owned(),
                source,
            })
        }
        .await;
        match result {
            Ok(()) => {
                writer.finish().await.map_err(|source| Error::Request {
                    op: "complete",
                    key: key.to_owned(),
                    source,
                })?;
                Ok((size, hex(&hasher.finalize())))
            }
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(key, error = %abort, "failed to abort the multipart upload; a bucket lifecycle rule removes it");
                }
                Err(e)
            }
        }
    }

    /// Streams `key` into `dest`, checking size and SHA-256; `dest` is removed when they do not match.
    pub async fn download_verified(
        &self,
        key: &str,
        dest: &Path,
        expected_size: u64,
        expected_sha256: &str,
        on_bytes: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<()> {
        let io = |op, source| Error::Io { op, path: dest.to_owned(), source };
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(|e| io("create", e))?;
        }
        let result = self.stream_hash(key, Some(dest), on_bytes).await;
        let (size, sha) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = tokio::fs::remove_file(dest).await;
                return Err(e);
            }
        };
        if size != expected_size || sha != expected_sha256 {
            let _ = tokio::fs::remove_file(dest).await;
            return Err(Error::Checksum {
                key: key.to_owned(),
                expected: expected_sha256.to_owned(),
                actual: sha,
                expected_size,
                actual_size: size,
            });
        }
        Ok(())
    }

    /// Reads `key` and checks size and SHA-256 without keeping it.
    pub async fn verify_object(&self, key: &str, expected_size: u64, expected_sha256: &str) -> Result<()> {
        let (size, sha) = self.stream_hash(key, None, &|_| {}).await?;
        if size != expected_size || sha != expected_sha256 {
            return Err(Error::Checksum {
                key: key.to_owned(),
                expected: expected_sha256.to_owned(),
                actual: sha,
                expected_size,
                actual_size: size,
            });
        }
        Ok(())
    }

    async fn stream_hash(
        &self,
        key: &str,
        dest: Option<&Path>,
        on_bytes: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(u64, String)> {
        let req = |source| Error::Request { op: "get", key: key.to_owned(), source };
        let mut stream = self.inner.get(&ObjectPath::from(key)).await.map_err(req)?.into_stream();
        // Buffered: the stream yields small chunks, and each write to a `tokio::fs::File` is a trip to the blocking
        // thread pool.
        let mut file = match dest {
            Some(p) => Some(tokio::io::BufWriter::with_capacity(
                1 << 20,
                tokio::fs::File::create(p).await.map_err(|source| Error::Io {
                    op: "write",
                    path: p.to_owned(),
                    source,
                })?,
            )),
            None => None,
        };
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.try_next().await.map_err(req)? {
            hasher.update(&chunk);
            size += chunk.len() as u64;
            on_bytes(chunk.len() as u64);
            if let (Some(f), Some(p)) = (file.as_mut(), dest) {
                f.write_all(&chunk).await.map_err(|source| Error::Io { op: "write", path: p.to_owned(), source })?;
            }
        }
        if let (Some(mut f), Some(p)) = (file, dest) {
            f.flush().await.map_err(|source| Error::Io { op: "write", path: p.to_owned(), source })?;
            f.get_ref().sync_all().await.map_err(|source| Error::Io { op: "write", path: p.to_owned(), source })?;
        }
        Ok((size, hex(&hasher.finalize())))
    }
}

/// object_store's time (chrono) as the core's.
fn timestamp(t: chrono::DateTime<chrono::Utc>) -> jiff::Timestamp {
    jiff::Timestamp::new(t.timestamp(), i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0))
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_retry_starts_within_the_budget_and_the_count_does_not_end_retries_first() {
        for budget in [Duration::from_secs(1), Duration::from_secs(15), Duration::from_mins(1), Duration::from_mins(5)]
        {
            let tuning = Tuning { retry_budget: budget, ..Tuning::default() };
            let retry = retry_config(&tuning);
            assert!(retry.retry_timeout + retry.backoff.max_backoff <= budget, "{budget:?}: {retry:?}");
            assert!(retry.retry_timeout >= budget / 2, "{budget:?}: most of the budget is used: {retry:?}");
        }
        // Even if every jittered wait were as short as the first one, the count outlasts the default budget.
        let tuning = Tuning::default();
        let retry = retry_config(&tuning);
        let shortest = retry.backoff.init_backoff * u32::try_from(tuning.max_retries).unwrap_or(u32::MAX);
        assert!(shortest >= retry.retry_timeout, "{retry:?}");
    }
}
