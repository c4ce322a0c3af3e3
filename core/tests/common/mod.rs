//! Shared by the core's integration tests: the fixtures and the build settings of the snapshots.

use std::path::{Path, PathBuf};

use tsdb_operator_core::build::{BuildSettings, PdbApi};
use tsdb_operator_core::crd::PrometheusCluster;

/// A fixed agent image, so that snapshots do not change with the crate version.
#[allow(dead_code)] // not every test binary uses it
pub fn settings() -> BuildSettings {
    BuildSettings {
        agent_image: "ghcr.io/merlionos/tsdb-operator:snapshot".to_owned(),
        pdb_api: PdbApi::V1,
        ..BuildSettings::default()
    }
}

/// The clusters in `fixtures/<dir>/*.yaml`, by file stem, in name order.
#[allow(dead_code)] // not every test binary uses it
pub fn fixtures(dir: &str) -> Vec<(String, PrometheusCluster)> {
    objects(dir)
}

/// The objects in `fixtures/<dir>/*.yaml`, by file stem, in name order.
pub fn objects<T: serde::de::DeserializeOwned>(dir: &str) -> Vec<(String, T)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("fixtures").join(dir);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the fixtures directory exists")
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no fixtures in {}", dir.display());
    paths
        .into_iter()
        .map(|p| {
            let name = p.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let text = std::fs::read_to_string(&p).expect("a readable fixture");
            let object = serde_yaml::from_str(&text).expect("a fixture that parses as its kind");
            (name, object)
        })
        .collect()
}
