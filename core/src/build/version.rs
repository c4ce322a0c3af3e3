//! Part of the **build** step: reads the Prometheus version from the image tag and says which flags and config
//! keys that version needs. Pure: no I/O (the tag is all we know; the image is never pulled).
//!
//! What differs between the supported lines (checked against the real 2.53.3 and 3.5.3 binaries):
//! - `${VAR}` in `global.external_labels` is expanded by 2.x only with `--enable-feature=expand-external-labels`;
//!   3.x always expands it, and given the flag it only logs `Unknown option for --enable-feature` and starts.
//!   So the flag is rendered for 2.x and for unknown tags (safe on both), and left out for 3.x.
//! - `scrape_config_files` exists since 2.43.

use std::fmt;

/// First 2.x release with `--enable-feature=expand-external-labels`.
const MIN_EXPAND_EXTERNAL_LABELS: PrometheusVersion = PrometheusVersion { major: 2, minor: 27 };
/// First release with agent mode (`--enable-feature=agent`; 3.x has `--agent`).
pub const MIN_AGENT: PrometheusVersion = PrometheusVersion { major: 2, minor: 32 };
/// First 2.x release with `scrape_config_files`.
const MIN_SCRAPE_CONFIG_FILES: PrometheusVersion = PrometheusVersion { major: 2, minor: 43 };

/// The `major.minor` of a Prometheus image, read from its tag (`v2.55.1`, `v3.5.0-distroless`, `3.5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PrometheusVersion {
    /// Major version.
    pub major: u32,
    /// Minor version; 0 when the tag gives only the major (`v3`).
    pub minor: u32,
}

impl fmt::Display for PrometheusVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl PrometheusVersion {
    /// Reads the version from an image reference. `None` when there is no tag, the tag is not a version
    /// (`latest`, `main`), or the image is pinned by digest only.
    pub fn from_image(image: &str) -> Option<Self> {
        let without_digest = image.split('@').next().unwrap_or(image);
        let last_segment = without_digest.rsplit('/').next().unwrap_or(without_digest);
        let (_, tag) = last_segment.split_once(':')?;
        let tag = tag.strip_prefix('v').unwrap_or(tag);
        let mut parts = tag.split(['.', '-', '+', '_']);
        let major = parts.next().filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))?;
        let major = major.parse().ok()?;
        let minor = match parts.next() {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok()?,
            _ => 0,
        };
        Some(Self { major, minor })
    }
}

/// Whether Prometheus needs `--enable-feature=expand-external-labels` so that `${POD_NAME}` in external labels is
/// expanded: yes for 2.x and for unknown versions, no for 3.x and later (always on there).
pub fn needs_expand_external_labels_flag(version: Option<PrometheusVersion>) -> bool {
    version.is_none_or(|v| v.major < 3)
}

/// Why `version` cannot run the cluster (with or without additional scrape configs), and the fix; `None` when it
/// can.
pub fn unsupported(version: PrometheusVersion, additional_scrape_configs: bool) -> Option<&'static str> {
    if version < MIN_EXPAND_EXTERNAL_LABELS {
        return Some("older than 2.27; use 2.53 or later");
    }
    if version < MIN_SCRAPE_CONFIG_FILES && additional_scrape_configs {
        return Some(
            "older than 2.43, which additionalScrapeConfigs and monitor selectors need (scrape_config_files); use 2.43 \
             or later, or remove additionalScrapeConfigs, serviceMonitorSelector and podMonitorSelector",
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::unnecessary_wraps)] // compared with `from_image`, which returns an Option
    fn v(major: u32, minor: u32) -> Option<PrometheusVersion> {
        Some(PrometheusVersion { major, minor })
    }

    #[test]
    fn versions_are_read_from_tags() {
        assert_eq!(PrometheusVersion::from_image("prom/prometheus:v2.55.1"), v(2, 55));
        assert_eq!(PrometheusVersion::from_image("quay.io/prometheus/prometheus:v3.5.0"), v(3, 5));
        assert_eq!(PrometheusVersion::from_image("registry:5000/prometheus:v3.5.0-distroless"), v(3, 5));
        assert_eq!(PrometheusVersion::from_image("prom/prometheus:3"), v(3, 0));
        assert_eq!(PrometheusVersion::from_image("prom/prometheus:v2.53.3@sha256:abcd"), v(2, 53));
    }

    #[test]
    fn tags_without_a_version_are_unknown() {
        for image in [
            "prom/prometheus",
            "prom/prometheus:latest",
            "registry:5000/prometheus",
            "prom/prometheus@sha256:abcd",
            "prom/prometheus:main",
            "prom/prometheus:v",
            "",
        ] {
            assert_eq!(PrometheusVersion::from_image(image), None, "{image}");
        }
    }

    #[test]
    fn expand_flag_is_kept_for_2x_and_unknown_and_dropped_for_3x() {
        assert!(needs_expand_external_labels_flag(v(2, 53)));
        assert!(needs_expand_external_labels_flag(None));
        assert!(!needs_expand_external_labels_flag(v(3, 5)));
        assert!(!needs_expand_external_labels_flag(v(4, 0)));
    }
}
