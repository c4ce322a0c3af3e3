//! Which Secrets (and keys) a cluster's spec needs, and the problems reported when they are missing. Pure: the
//! adapters look the Secrets up and pass what they found.

use std::collections::{BTreeMap, BTreeSet};

use crate::constants::reasons;
use crate::crd::PrometheusClusterSpec;
use crate::status::Problem;

/// One Secret key the cluster needs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SecretNeed {
    /// The spec field that names the Secret.
    pub field: String,
    /// The Secret's name.
    pub secret: String,
    /// The key that must exist in it.
    pub key: String,
}

/// Every Secret key the pods need to start or the backup needs to run, in spec order.
pub fn required_secrets(spec: &PrometheusClusterSpec) -> Vec<SecretNeed> {
    let mut out = Vec::new();
    let mut need = |field: String, secret: &str, key: &str| {
        if !secret.is_empty() {
            out.push(SecretNeed { field, secret: secret.to_owned(), key: key.to_owned() });
        }
    };
    for (i, rw) in spec.remote_write.iter().enumerate() {
        if let Some(r) = &rw.basic_auth_secret_ref {
            need(format!("spec.remoteWrite[{i}].basicAuthSecretRef"), &r.name, "username");
            need(format!("spec.remoteWrite[{i}].basicAuthSecretRef"), &r.name, "password");
        }
        if let Some(r) = &rw.bearer_token_secret_ref {
            need(format!("spec.remoteWrite[{i}].bearerTokenSecretRef"), &r.name, "token");
        }
        for (field, secret, key) in rw.tls_config.iter().flat_map(|t| t.secret_keys()) {
            need(format!("spec.remoteWrite[{i}].tlsConfig.{field}"), secret, key);
        }
        if let Some(oauth2) = &rw.oauth2 {
            let (secret, key) = oauth2.secret_key();
            need(format!("spec.remoteWrite[{i}].oauth2.clientSecret"), secret, key);
        }
    }
    if spec.thanos.enabled
        && let Some(r) = &spec.thanos.object_storage_config_secret_ref
    {
        need("spec.thanos.objectStorageConfigSecretRef".to_owned(), &r.name, "objstore.yml");
    }
    if let Some(sel) = spec.additional_scrape_configs.as_ref().and_then(|a| a.secret_ref.as_ref())
        && sel.optional != Some(true)
    {
        need("spec.additionalScrapeConfigs.secretRef".to_owned(), &sel.name, &sel.key);
    }
    if spec.backup.enabled
        && let Some(r) = &spec.backup.credentials_secret_ref
    {
        need("spec.backup.credentialsSecretRef".to_owned(), &r.name, "AWS_ACCESS_KEY_ID");
        need("spec.backup.credentialsSecretRef".to_owned(), &r.name, "AWS_SECRET_ACCESS_KEY");
    }
    out
}

/// The distinct Secret names of `needs`.
pub fn secret_names(needs: &[SecretNeed]) -> BTreeSet<String> {
    needs.iter().map(|n| n.secret.clone()).collect()
}

/// Problems for needs that are not met. `found` maps each Secret that exists to its keys; a Secret missing from
/// the map does not exist.
pub fn missing_secret_problems(needs: &[SecretNeed], found: &BTreeMap<String, BTreeSet<String>>) -> Vec<Problem> {
    let mut out: Vec<Problem> = Vec::new();
    for n in needs {
        let message = match found.get(&n.secret) {
            None => format!(
                "{}: Secret {:?} does not exist; create it in the cluster's namespace with the key {:?}",
                n.field, n.secret, n.key
            ),
            Some(keys) if !keys.contains(&n.key) => format!(
                "{}: Secret {:?} has no key {:?}; add the key or point the field at another Secret",
                n.field, n.secret, n.key
            ),
            Some(_) => continue,
        };
        if !out.iter().any(|p| p.message == message) {
            out.push(Problem { reason: reasons::MISSING_SECRET.to_owned(), message });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> PrometheusClusterSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn remote_write_thanos_and_scrape_secrets_are_required() {
        let s = spec(serde_json::json!({
            "remoteWrite": [{"url": "http://a", "basicAuthSecretRef": {"name": "rw"}, "bearerTokenSecretRef": {"name": "tok"}}],
            "thanos": {"enabled": true, "objectStorageConfigSecretRef": {"name": "objstore"}},
            "additionalScrapeConfigs": {"secretRef": {"name": "extra", "key": "jobs.yml"}}
        }));
        let needs = required_secrets(&s);
        let pairs: Vec<(&str, &str)> = needs.iter().map(|n| (n.secret.as_str(), n.key.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("rw", "username"),
                ("rw", "password"),
                ("tok", "token"),
                ("objstore", "objstore.yml"),
                ("extra", "jobs.yml")
            ]
        );
    }

    #[test]
    fn missing_secret_and_missing_key_name_the_field_and_fix() {
        let s = spec(serde_json::json!({"remoteWrite": [{"url": "http://a", "bearerTokenSecretRef": {"name": "tok"}},
            {"url": "http://b", "basicAuthSecretRef": {"name": "rw"}}]}));
        let needs = required_secrets(&s);
        let found = BTreeMap::from([("rw".to_owned(), BTreeSet::from(["username".to_owned()]))]);
        let problems = missing_secret_problems(&needs, &found);
        assert_eq!(problems.len(), 2);
        assert!(
            problems[0].message.starts_with("spec.remoteWrite[0].bearerTokenSecretRef: Secret \"tok\" does not exist")
        );
        assert!(problems[1].message.contains("has no key \"password\""));
        assert!(problems.iter().all(|p| p.reason == reasons::MISSING_SECRET));
    }

    #[test]
    fn disabled_features_need_no_secrets() {
        let s = spec(serde_json::json!({"thanos": {"enabled": false, "objectStorageConfigSecretRef": {"name": "x"}},
            "backup": {"enabled": false, "credentialsSecretRef": {"name": "y"}}}));
        assert!(required_secrets(&s).is_empty());
    }
}
