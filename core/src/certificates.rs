//! When the operator renews the certificates of its admission webhook, in the mode where it manages them itself
//! (no cert-manager). Pure: no I/O, `now` is an argument.
//!
//! The operator keeps a small certificate authority and a serving certificate signed by it in one Secret, and puts
//! the authority in the webhook configuration's `caBundle`. The serving certificate is renewed well before it
//! expires or when the names it must carry change; the authority is renewed a year before it expires, and the
//! previous authority stays in `caBundle` until then, so a replica still serving a certificate of the old
//! authority is trusted while it reloads.
//!
//! # Guarantees
//! - A serving certificate is never issued to outlive its authority.
//! - Deterministic: the same observation and `now` give the same answer.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

/// How long an authority is valid.
pub const AUTHORITY_LIFETIME: Duration = Duration::from_hours(10 * 365 * 24);
/// How long a serving certificate is valid.
pub const SERVING_LIFETIME: Duration = Duration::from_hours(365 * 24);
/// The authority is renewed when less than this is left.
pub const AUTHORITY_RENEW_BEFORE: Duration = Duration::from_hours(365 * 24);
/// The serving certificate is renewed when less than this is left (a third of its life).
pub const SERVING_RENEW_BEFORE: Duration = Duration::from_secs(SERVING_LIFETIME.as_secs() / 3);

/// What the Secret says about the certificates it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// When the authority expires.
    pub authority_not_after: Timestamp,
    /// When the serving certificate expires.
    pub serving_not_after: Timestamp,
    /// The DNS names and IP addresses the serving certificate carries.
    pub hosts: Vec<String>,
}

/// What to do about the certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Serve what is there.
    Keep,
    /// Issue a new serving certificate from the same authority.
    Serving,
    /// Make a new authority (keeping the previous one trusted) and a serving certificate from it.
    Authority,
}

/// Decides what to renew. `issued` is `None` when there is no Secret or it cannot be read; `hosts` are the names
/// the serving certificate must carry.
pub fn decide_renewal(issued: Option<&Issued>, hosts: &[String], now: Timestamp) -> Renewal {
    let Some(issued) = issued else { return Renewal::Authority };
    let left = |until: Timestamp| crate::schedule::between(now, until).unwrap_or(Duration::ZERO);
    if left(issued.authority_not_after) < AUTHORITY_RENEW_BEFORE {
        return Renewal::Authority;
    }
    let mut wanted = hosts.to_vec();
    let mut have = issued.hosts.clone();
    wanted.sort();
    have.sort();
    if wanted != have || left(issued.serving_not_after) < SERVING_RENEW_BEFORE {
        return Renewal::Serving;
    }
    Renewal::Keep
}

/// When a serving certificate issued at `now` expires: [`SERVING_LIFETIME`] later, or when its authority does.
pub fn serving_not_after(authority_not_after: Timestamp, now: Timestamp) -> Timestamp {
    let full = now.checked_add(SERVING_LIFETIME).unwrap_or(authority_not_after);
    full.min(authority_not_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn hosts() -> Vec<String> {
        vec!["tsdb-operator-webhook.ops.svc".to_owned(), "127.0.0.1".to_owned()]
    }

    #[test]
    fn nothing_issued_makes_an_authority() {
        assert_eq!(decide_renewal(None, &hosts(), at("2026-01-01T00:00:00Z")), Renewal::Authority);
    }

    #[test]
    fn certificates_are_renewed_ahead_of_expiry_and_when_names_change() {
        let issued = Issued {
            authority_not_after: at("2036-01-01T00:00:00Z"),
            serving_not_after: at("2027-01-01T00:00:00Z"),
            hosts: hosts().into_iter().rev().collect(),
        };
        assert_eq!(decide_renewal(Some(&issued), &hosts(), at("2026-01-02T00:00:00Z")), Renewal::Keep, "order");
        assert_eq!(decide_renewal(Some(&issued), &hosts(), at("2026-09-30T00:00:00Z")), Renewal::Serving);
        assert_eq!(decide_renewal(Some(&issued), &hosts()[..1], at("2026-01-02T00:00:00Z")), Renewal::Serving);
        assert_eq!(decide_renewal(Some(&issued), &hosts(), at("2035-02-01T00:00:00Z")), Renewal::Authority);
        assert_eq!(decide_renewal(Some(&issued), &hosts(), at("2040-01-01T00:00:00Z")), Renewal::Authority);
    }

    #[test]
    fn a_serving_certificate_never_outlives_its_authority() {
        let authority = at("2026-06-01T00:00:00Z");
        assert_eq!(serving_not_after(authority, at("2026-01-01T00:00:00Z")), authority);
        let later = at("2030-01-01T00:00:00Z");
        assert_eq!(serving_not_after(later, at("2026-01-01T00:00:00Z")), at("2027-01-01T00:00:00Z"));
    }
}
