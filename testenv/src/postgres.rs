//! The machine's PostgreSQL (127.0.0.1:5432, trust auth) for tests: fresh databases per test. Does I/O
//! (runs `psql` and, if the server is down, `pg_ctlcluster`).
//!
//! Overrides: `TSDB_POSTGRES_HOST`, `TSDB_POSTGRES_PORT`, `TSDB_POSTGRES_USER`.
//!
//! # Guarantees
//! - [`Postgres::local`] checks the server once per process; if it does not answer it runs
//!   `pg_ctlcluster --skip-systemctl-redirect <version> main start` and waits up to 30 s.
//! - [`Postgres::fresh_database`] names databases `<prefix>_<pid>_<random>`, so parallel tests and test
//!   binaries never share one. They are not dropped automatically (use [`Postgres::drop_database`]).

use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::paths;
use crate::process::random_hex;

/// The local PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Postgres {
    host: String,
    port: u16,
    user: String,
}

impl Postgres {
    /// The local server, checked (and started if down) on first use. Blocks.
    pub fn local() -> Result<&'static Self> {
        static LOCAL: OnceLock<Result<Postgres, String>> = OnceLock::new();
        LOCAL.get_or_init(|| Self::connect().map_err(|e| format!("{e:#}"))).as_ref().map_err(|e| anyhow!("{e}"))
    }

    /// Creates a fresh database on the local server and returns its DSN
    /// (`postgres://postgres@127.0.0.1:5432/<name>`). Blocks for about 0.1 s.
    pub fn fresh_database(prefix: &str) -> Result<String> {
        let pg = Self::local()?;
        let name = pg.create_database(prefix)?;
        Ok(pg.dsn(&name))
    }

    /// Connects to the server described by the environment (defaults 127.0.0.1:5432, user postgres),
    /// starting the machine's cluster if it does not answer.
    pub fn connect() -> Result<Self> {
        let pg = Self {
            host: env_or("TSDB_POSTGRES_HOST", "127.0.0.1"),
            port: env_or("TSDB_POSTGRES_PORT", "5432").parse().context("TSDB_POSTGRES_PORT is not a port")?,
            user: env_or("TSDB_POSTGRES_USER", "postgres"),
        };
        paths::on_path("psql")?;
        if pg.psql("postgres", "select 1").is_ok() {
            return Ok(pg);
        }
        start_local_cluster()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match pg.psql("postgres", "select 1") {
                Ok(_) => return Ok(pg),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).context("PostgreSQL did not answer within 30 s after pg_ctlcluster start");
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// DSN of database `name`.
    pub fn dsn(&self, name: &str) -> String {
        format!("postgres://{}@{}:{}/{name}", self.user, self.host, self.port)
    }

    /// Creates a database `<prefix>_<pid>_<random>` and returns its name.
    pub fn create_database(&self, prefix: &str) -> Result<String> {
        let mut base: String =
            prefix.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
        base.truncate(30);
        let name = format!("{}_{}_{}", base.trim_matches('_'), std::process::id(), random_hex(4));
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))?;
        Ok(name)
    }

    /// Drops a database (closing its connections).
    pub fn drop_database(&self, name: &str) -> Result<()> {
        if name.contains('"') {
            bail!("invalid database name {name:?}");
        }
        self.psql("postgres", &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))?;
        Ok(())
    }

    /// Runs SQL with `psql` in `database` and returns the unaligned, tuples-only output.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String> {
        let output = Command::new("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", &self.host, "-p", &self.port.to_string(), "-U", &self.user, "-d", database, "-c", sql])
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .context("failed to run psql")?;
        if !output.status.success() {
            bail!("psql failed ({}) on {sql:?}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }
}

fn start_local_cluster() -> Result<()> {
    let version = std::fs::read_dir("/etc/postgresql")
        .context("PostgreSQL is not answering and /etc/postgresql does not exist")?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .max()
        .ok_or_else(|| anyhow!("no cluster version in /etc/postgresql"))?;
    let output = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "start"])
        .output()
        .context("failed to run pg_ctlcluster")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        // Another test binary may have started it a moment ago.
        if !stderr.contains("already running") {
            bail!("pg_ctlcluster {version} main start failed ({}): {}", output.status, stderr.trim());
        }
    }
    Ok(())
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned())
}
