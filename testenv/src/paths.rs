//! Locating the binaries that `scripts/install-deps.sh` installs. Reads environment variables and checks
//! files; starts nothing.
//!
//! Each binary is looked up in this order:
//! 1. its environment variable (as printed by `bash scripts/install-deps.sh --print-env`),
//! 2. the default cache layout under `${TSDB_OPERATOR_CACHE:-$HOME/.cache/tsdb-operator}`
//!    (`/usr/bin/etcd` for etcd).
//!
//! A missing binary is an error whose message names the variable and tells the user to run
//! `scripts/install-deps.sh`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// Kubernetes version of the control-plane binaries.
pub const K8S_VERSION: &str = "1.20.2";
/// Version of the `s3s-fs` S3 server.
pub const S3S_VERSION: &str = "0.14.1";

/// Major version of Prometheus; both are installed side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrometheusMajor {
    /// Prometheus 2.53 (the 2.x LTS).
    V2,
    /// Prometheus 3.5 (the 3.x LTS).
    V3,
}

impl PrometheusMajor {
    fn number(self) -> u8 {
        match self {
            Self::V2 => 2,
            Self::V3 => 3,
        }
    }
}

/// The cache directory of `scripts/install-deps.sh`: `$TSDB_OPERATOR_CACHE`, else `$HOME/.cache/tsdb-operator`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = non_empty_env("TSDB_OPERATOR_CACHE") {
        return PathBuf::from(dir);
    }
    let home = non_empty_env("HOME").unwrap_or_else(|| "/root".to_owned());
    Path::new(&home).join(".cache").join("tsdb-operator")
}

/// Directory holding kube-apiserver, kube-controller-manager and kube-scheduler (`$TSDB_K8S_BIN`).
pub fn k8s_bin_dir() -> PathBuf {
    non_empty_env("TSDB_K8S_BIN").map_or_else(|| cache_dir().join(format!("k8s-{K8S_VERSION}")), PathBuf::from)
}

/// `kube-apiserver`.
pub fn kube_apiserver() -> Result<PathBuf> {
    executable(k8s_bin_dir().join("kube-apiserver"), "TSDB_K8S_BIN")
}

/// `kube-controller-manager`.
pub fn kube_controller_manager() -> Result<PathBuf> {
    executable(k8s_bin_dir().join("kube-controller-manager"), "TSDB_K8S_BIN")
}

/// `kube-scheduler`.
pub fn kube_scheduler() -> Result<PathBuf> {
    executable(k8s_bin_dir().join("kube-scheduler"), "TSDB_K8S_BIN")
}

/// `etcd` (`$TSDB_ETCD_BIN`, else `/usr/bin/etcd`).
pub fn etcd() -> Result<PathBuf> {
    let path = non_empty_env("TSDB_ETCD_BIN").map_or_else(|| PathBuf::from("/usr/bin/etcd"), PathBuf::from);
    executable(path, "TSDB_ETCD_BIN")
}

/// `prometheus` of the given major version (`$TSDB_PROMETHEUS2_BIN` / `$TSDB_PROMETHEUS3_BIN`).
pub fn prometheus(major: PrometheusMajor) -> Result<PathBuf> {
    let var = format!("TSDB_PROMETHEUS{}_BIN", major.number());
    let path = non_empty_env(&var)
        .map_or_else(|| cache_dir().join(format!("prometheus-{}", major.number())).join("prometheus"), PathBuf::from);
    executable(path, &var)
}

/// `promtool` of the given major version (`$TSDB_PROMTOOL2_BIN` / `$TSDB_PROMTOOL3_BIN`).
pub fn promtool(major: PrometheusMajor) -> Result<PathBuf> {
    let var = format!("TSDB_PROMTOOL{}_BIN", major.number());
    let path = non_empty_env(&var)
        .map_or_else(|| cache_dir().join(format!("prometheus-{}", major.number())).join("promtool"), PathBuf::from);
    executable(path, &var)
}

/// The `s3s-fs` S3 server (`$TSDB_S3S_BIN`).
pub fn s3s_fs() -> Result<PathBuf> {
    let path = non_empty_env("TSDB_S3S_BIN")
        .map_or_else(|| cache_dir().join(format!("s3s-fs-{S3S_VERSION}")).join("bin").join("s3s-fs"), PathBuf::from);
    executable(path, "TSDB_S3S_BIN")
}

/// Finds a program such as `openssl` or `psql` on `$PATH`.
pub fn on_path(program: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    bail!("`{program}` is not on PATH; run `bash scripts/install-deps.sh` from the repository root")
}

fn executable(path: PathBuf, var: &str) -> Result<PathBuf> {
    if is_executable(&path) {
        return Ok(path);
    }
    bail!(
        "{} is missing or not executable; run `bash scripts/install-deps.sh` from the repository root \
         (or point ${var} at the binary)",
        path.display()
    )
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_names_the_variable_and_the_install_script() {
        let err = executable(PathBuf::from("/nonexistent/kube-apiserver"), "TSDB_K8S_BIN").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/kube-apiserver"), "{msg}");
        assert!(msg.contains("TSDB_K8S_BIN"), "{msg}");
        assert!(msg.contains("scripts/install-deps.sh"), "{msg}");
    }

    #[test]
    fn programs_on_path_are_found() {
        assert!(on_path("sh").is_ok());
        assert!(on_path("no-such-program-tsdb").is_err());
    }
}
