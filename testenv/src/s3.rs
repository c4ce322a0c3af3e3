//! A real S3-compatible server for tests: `s3s-fs` (SigV4, objects stored as files) on a free loopback port
//! with a fresh directory and bucket. Does I/O (a process and files).
//!
//! Outages can be injected: [`S3Server::stop`] takes the server down (connections are refused) and keeps its
//! data, [`S3Server::restart`] brings it back on the same port, [`S3Server::freeze`] makes it hang (SIGSTOP:
//! connections are accepted by the kernel but never answered) until [`S3Server::thaw`].
//!
//! Known limit of s3s-fs 0.14: no `ListMultipartUploads`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::paths;
use crate::process::{ProcessBuilder, Supervised, Workdir, free_port, random_hex, sanitize, wait_for_port};

/// Region to configure in clients; s3s-fs accepts any.
pub const REGION: &str = "us-east-1";

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A running (or deliberately stopped) s3s-fs server. Stopped on drop; its directory is removed then.
#[derive(Debug)]
pub struct S3Server {
    builder: ProcessBuilder,
    addr: SocketAddr,
    data: PathBuf,
    bucket: String,
    access_key: String,
    secret_key: String,
    process: Mutex<Option<Supervised>>,
    workdir: Workdir,
}

impl S3Server {
    /// Starts s3s-fs with a fresh directory, random credentials and a fresh bucket `tsdb-test-<random>`.
    /// Blocks until it listens (about 10 ms).
    pub fn start() -> Result<Self> {
        let binary = paths::s3s_fs()?;
        let workdir = Workdir::create("s3")?;
        let data = workdir.fast_subdir("s3-data")?;
        let bucket = format!("tsdb-test-{}", random_hex(4));
        std::fs::create_dir(data.join(&bucket))?;
        let access_key = format!("AK{}", random_hex(8).to_uppercase());
        let secret_key = random_hex(20);
        let mut last = None;
        for _ in 0..3 {
            let port = free_port(LOOPBACK)?;
            let builder = ProcessBuilder::new("s3s-fs", &binary)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", &access_key, "--secret-key", &secret_key])
                .arg(&data)
                .env("RUST_LOG", "s3s_fs=info,s3s=warn")
                .grace(Duration::from_secs(2));
            let addr = SocketAddr::new(LOOPBACK, port);
            let mut process = builder.spawn(&workdir)?;
            match wait_for_port(&mut process, addr, Duration::from_secs(10)) {
                Ok(()) => {
                    return Ok(Self {
                        builder,
                        addr,
                        data,
                        bucket,
                        access_key,
                        secret_key,
                        process: Mutex::new(Some(process)),
                        workdir,
                    });
                }
                Err(e) if format!("{e:#}").contains("in use") => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("s3s-fs did not start")))
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bucket made at start.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Access key id.
    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    /// Secret access key.
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// Region to configure in clients ([`REGION`]).
    pub fn region(&self) -> &'static str {
        REGION
    }

    /// Environment variables that point an AWS-style client at this server (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`), for processes under test
    /// (object_store's `AmazonS3Builder::from_env` reads them). The bucket is not included.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
        ]
    }

    /// The directory served: each subdirectory is a bucket, each file an object.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Makes another empty bucket and returns its name (`<prefix>-<random>`).
    pub fn create_bucket(&self, prefix: &str) -> Result<String> {
        let name = format!("{}-{}", sanitize(prefix), random_hex(4));
        std::fs::create_dir(self.data.join(&name)).with_context(|| format!("failed to create bucket {name}"))?;
        Ok(name)
    }

    /// Whether the server process is running (a frozen server counts as running).
    pub fn is_running(&self) -> bool {
        self.lock().as_mut().is_some_and(Supervised::is_running)
    }

    /// Stops the server (requests then fail with "connection refused"). The data is kept. Idempotent.
    pub fn stop(&self) -> Result<()> {
        if let Some(mut process) = self.lock().take() {
            process.stop()?;
        }
        Ok(())
    }

    /// Starts the server again on the same port with the same data and credentials; no-op if running.
    pub fn restart(&self) -> Result<()> {
        let mut guard = self.lock();
        if guard.as_mut().is_some_and(Supervised::is_running) {
            return Ok(());
        }
        // The port was ours a moment ago; retry briefly in case the socket is still being released.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut process = self.builder.spawn(&self.workdir)?;
            match wait_for_port(&mut process, self.addr, Duration::from_secs(10)) {
                Ok(()) => {
                    *guard = Some(process);
                    return Ok(());
                }
                Err(e) if attempt < 20 && format!("{e:#}").contains("in use") => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e).context("failed to restart s3s-fs on its old port"),
            }
        }
    }

    /// Freezes the server with SIGSTOP: connections hang instead of failing.
    pub fn freeze(&self) -> Result<()> {
        match self.lock().as_ref() {
            Some(process) => process.freeze(),
            None => bail!("s3s-fs is stopped; cannot freeze it"),
        }
    }

    /// Resumes a frozen server.
    pub fn thaw(&self) -> Result<()> {
        match self.lock().as_ref() {
            Some(process) => process.thaw(),
            None => bail!("s3s-fs is stopped; cannot thaw it"),
        }
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        crate::process::tail_of(&self.workdir.logs().join("s3s-fs.log"), lines)
    }

    fn lock(&self) -> MutexGuard<'_, Option<Supervised>> {
        self.process.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.get_mut().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = process.stop();
        }
    }
}
