//! What the agent lets through to Prometheus' web API. Pure: no I/O.
//!
//! Prometheus listens on the pod's loopback only ([`ports::PROMETHEUS_LOCAL`]); the agent sidecar serves the
//! pod's web port [`ports::PROMETHEUS`] and forwards each request there unless [`decide_forward`] refuses it.
//! Refused, whatever the method:
//! - the admin API (`/api/v1/admin/...`: snapshots, `delete_series`, `clean_tombstones`), which the agent itself
//!   uses on the loopback address for backups;
//! - the lifecycle API (`/-/quit`, `/-/reload`), which the agent uses for config reloads;
//! - any path that is not in canonical form (`//`, `.` or `..` segments, percent-encoded `/`, `.`, `\` or `%`,
//!   backslashes, control characters), so that no spelling reaches a refused endpoint after Prometheus' router
//!   cleans it.
//!
//! Everything else (queries, federation, `/metrics`, `/-/ready`, `/-/healthy`, the UI) is forwarded.
//!
//! [`ports::PROMETHEUS_LOCAL`]: crate::constants::ports::PROMETHEUS_LOCAL
//! [`ports::PROMETHEUS`]: crate::constants::ports::PROMETHEUS

/// Why a request is not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The admin API.
    #[error("the admin API is reachable only from inside the pod")]
    AdminApi,
    /// The lifecycle API.
    #[error("the lifecycle API (/-/quit, /-/reload) is reachable only from inside the pod")]
    Lifecycle,
    /// A path that is not in canonical form.
    #[error("the path is not in canonical form (no //, . or .. segments, or encoded separators)")]
    NonCanonicalPath,
}

impl Refusal {
    /// Every refusal, so that metrics can start each category at zero.
    pub const ALL: [Refusal; 3] = [Refusal::AdminApi, Refusal::Lifecycle, Refusal::NonCanonicalPath];

    /// A stable label for metrics and logs.
    pub fn category(self) -> &'static str {
        match self {
            Self::AdminApi => "admin_api",
            Self::Lifecycle => "lifecycle",
            Self::NonCanonicalPath => "non_canonical_path",
        }
    }
}

/// Path prefixes refused, compared without regard to ASCII case, with what they are.
const REFUSED: [(&str, Refusal); 3] =
    [("/api/v1/admin", Refusal::AdminApi), ("/-/quit", Refusal::Lifecycle), ("/-/reload", Refusal::Lifecycle)];

/// Whether a request for `path` (the URI path as sent, before any query) may be forwarded to Prometheus. The
/// path is judged after percent-decoding, as Prometheus' router sees it.
pub fn decide_forward(path: &str) -> Result<(), Refusal> {
    let decoded = decode(path).ok_or(Refusal::NonCanonicalPath)?;
    if !is_canonical(&decoded) {
        return Err(Refusal::NonCanonicalPath);
    }
    for (prefix, refusal) in REFUSED {
        let Some(head) = decoded.get(..prefix.len()) else { continue };
        if head.eq_ignore_ascii_case(prefix) && matches!(decoded.as_bytes().get(prefix.len()), None | Some(b'/')) {
            return Err(refusal);
        }
    }
    Ok(())
}

/// Percent-decodes `path`; `None` when an escape is malformed, encodes `/`, `.`, `\` or `%` (which could become a
/// separator or a second escape downstream), or the result is not UTF-8.
fn decode(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            let byte = u8::from_str_radix(hex, 16).ok()?;
            if matches!(byte, b'/' | b'.' | b'\\' | b'%') {
                return None;
            }
            out.push(byte);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn is_canonical(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains("//")
        && !path.contains('\\')
        && !path.chars().any(char::is_control)
        && !path.split('/').skip(1).any(|segment| segment == "." || segment == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_is_listed_once() {
        let labels: std::collections::BTreeSet<_> = Refusal::ALL.iter().map(|r| r.category()).collect();
        assert_eq!(labels.len(), Refusal::ALL.len());
        for (_, refusal) in REFUSED {
            assert!(Refusal::ALL.contains(&refusal));
        }
    }

    #[test]
    fn queries_federation_metrics_probes_and_the_ui_are_forwarded() {
        for path in [
            "/api/v1/query",
            "/api/v1/query_range",
            "/api/v1/series",
            "/api/v1/labels",
            "/api/v1/label/job/values",
            "/api/v1/targets",
            "/api/v1/status/config",
            "/api/v1/administrators", // not the admin API: the prefix must end at a segment boundary
            "/federate",
            "/metrics",
            "/-/ready",
            "/-/healthy",
            "/graph",
            "/query",
            "/static/js/main.js",
            "/",
        ] {
            assert_eq!(decide_forward(path), Ok(()), "{path}");
        }
    }

    #[test]
    fn admin_and_lifecycle_endpoints_are_refused_in_every_spelling() {
        for path in [
            "/api/v1/admin",
            "/api/v1/admin/",
            "/api/v1/admin/tsdb/snapshot",
            "/api/v1/admin/tsdb/delete_series",
            "/api/v1/admin/tsdb/clean_tombstones",
            "/API/V1/Admin/tsdb/snapshot",
            "/api/v1/%61dmin/tsdb/snapshot",
            "/api/v1/%41DMIN/tsdb/snapshot",
        ] {
            assert_eq!(decide_forward(path), Err(Refusal::AdminApi), "{path}");
        }
        for path in ["/-/quit", "/-/reload", "/-/reload/", "/-/QUIT", "/-/%71uit"] {
            assert_eq!(decide_forward(path), Err(Refusal::Lifecycle), "{path}");
        }
        for path in [
            "//api/v1/admin/tsdb/snapshot",
            "/api//v1/admin/tsdb/snapshot",
            "/api/v1/./admin/tsdb/snapshot",
            "/api/v1/query/../admin/tsdb/snapshot",
            "/api/v1/%61dmin/../admin",
            "/api%2fv1%2fadmin/tsdb/snapshot",
            "/api/v1/admin%2Ftsdb",
            "/%2e%2e/-/quit",
            "/%252e",
            "/-\\quit",
            "/-/qu\u{0}it",
            "/-/qu%00it",
            "/api/v1/admin%",
            "/api/v1/admin%zz",
            "/%ff",
            "-/quit",
            "",
        ] {
            assert_eq!(decide_forward(path), Err(Refusal::NonCanonicalPath), "{path:?}");
        }
    }
}
