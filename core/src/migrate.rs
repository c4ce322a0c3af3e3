//! `tsdb-ctl migrate`: prometheus-operator's `Prometheus` or `PrometheusAgent` (`monitoring.coreos.com`) turned into
//! the equivalent `PrometheusCluster`, with every field that could not be carried over named and why. Pure.
//!
//! Carried over: `replicas`, `image` (or `version` as `quay.io/prometheus/prometheus:<version>`), `retention`,
//! `retentionSize`, the claim size and class of `storage.volumeClaimTemplate`, `resources`, the monitor selectors,
//! `remoteWrite` (`url`, `name`, `headers`, `writeRelabelConfigs`, `queueConfig`, `metadataConfig`, basic auth from
//! one Secret with the keys `username` and `password`, a bearer token from a Secret key `token`), `externalLabels`,
//! `replicaExternalLabelName`, `scrapeInterval`, `evaluationInterval`, `nodeSelector`, `tolerations`, `affinity`,
//! `securityContext`, `priorityClassName`, `serviceAccountName`, `paused`, `additionalScrapeConfigs`, and `thanos`
//! (image, and `objectStorageConfig` with the key `objstore.yml`). A `PrometheusAgent` becomes `mode: Agent`.

use serde_json::{Map, Value, json};

use crate::crd::PrometheusCluster;

/// A field of the source that the cluster does not carry, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotCarried {
    /// The source's field, e.g. `spec.remoteWrite[0].oauth2`.
    pub field: String,
    /// Why, and what to do.
    pub reason: String,
}

impl std::fmt::Display for NotCarried {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// The migrated cluster and what was left behind.
#[derive(Debug, Clone)]
pub struct Migrated {
    /// The equivalent PrometheusCluster (same name, namespace and labels).
    pub cluster: PrometheusCluster,
    /// Fields not carried over, in the source's order.
    pub not_carried: Vec<NotCarried>,
}

/// Why an object could not be migrated at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not a `monitoring.coreos.com` `Prometheus` or `PrometheusAgent`.
    #[error("failed to migrate: {0} is not a monitoring.coreos.com Prometheus or PrometheusAgent")]
    NotPrometheus(String),
    /// The carried fields do not make a PrometheusCluster spec (a value of the wrong type).
    #[error("failed to migrate {name}: {reason}")]
    Spec {
        /// The object.
        name: String,
        /// What did not fit.
        reason: String,
    },
}

const NO_EQUIVALENT: &str = "PrometheusCluster has no equivalent; set it up another way or drop it";

/// Fields whose name and meaning are the same in both.
const SAME: [&str; 21] = [
    "replicas",
    "image",
    "retention",
    "retentionSize",
    "resources",
    "serviceMonitorSelector",
    "serviceMonitorNamespaceSelector",
    "podMonitorSelector",
    "podMonitorNamespaceSelector",
    "ruleSelector",
    "ruleNamespaceSelector",
    "externalLabels",
    "replicaExternalLabelName",
    "scrapeInterval",
    "evaluationInterval",
    "nodeSelector",
    "tolerations",
    "affinity",
    "securityContext",
    "priorityClassName",
    "serviceAccountName",
];

/// Migrates one `Prometheus` or `PrometheusAgent` object.
///
/// # Errors
/// See [`Error`].
pub fn migrate(object: &Value) -> Result<Migrated, Error> {
    let kind = object["kind"].as_str().unwrap_or_default();
    let group = object["apiVersion"].as_str().unwrap_or_default().split('/').next().unwrap_or_default();
    let agent = match (group, kind) {
        ("monitoring.coreos.com", "Prometheus") => false,
        ("monitoring.coreos.com", "PrometheusAgent") => true,
        _ => return Err(Error::NotPrometheus(format!("{} {kind}", object["apiVersion"].as_str().unwrap_or("?")))),
    };
    let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    let mut spec = Map::new();
    let mut not_carried = Vec::new();
    let mut skip = |field: String, reason: &str| not_carried.push(NotCarried { field, reason: reason.to_owned() });
    if agent {
        spec.insert("mode".to_owned(), json!("Agent"));
    }
    for (key, value) in object["spec"].as_object().into_iter().flatten() {
        let field = format!("spec.{key}");
        match key.as_str() {
            k if SAME.contains(&k) => {
                if !(agent && matches!(k, "retention" | "retentionSize")) {
                    spec.insert(k.to_owned(), value.clone());
                }
            }
            "paused" => {
                spec.insert("paused".to_owned(), value.clone());
            }
            "version" => {
                if object["spec"].get("image").is_none()
                    && let Some(version) = value.as_str()
                {
                    spec.insert("image".to_owned(), json!(format!("quay.io/prometheus/prometheus:{version}")));
                }
            }
            "enableAdminAPI" if value == &json!(false) => {}
            "enableAdminAPI" => skip(field, "the admin API is never exposed; backups use it inside the pod only"),
            "storage" => storage(value, &mut spec, &mut skip),
            "remoteWrite" => {
                let entries: Vec<Value> = value
                    .as_array()
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .map(|(i, rw)| remote_write(i, rw, &mut skip))
                    .collect();
                spec.insert("remoteWrite".to_owned(), Value::Array(entries));
            }
            "additionalScrapeConfigs" => {
                spec.insert("additionalScrapeConfigs".to_owned(), json!({"secretRef": value}));
            }
            "thanos" => thanos(value, &mut spec, &mut skip),
            "alerting" => alerting(value, &mut spec, &mut skip),
            _ => skip(field, NO_EQUIVALENT),
        }
    }
    let mut metadata = json!({"name": name});
    for key in ["namespace", "labels"] {
        if let Some(v) = object["metadata"].get(key) {
            metadata[key] = v.clone();
        }
    }
    let cluster = json!({
        "apiVersion": "observability.merlionos.org/v1", "kind": "PrometheusCluster",
        "metadata": metadata, "spec": Value::Object(spec),
    });
    let cluster: PrometheusCluster =
        serde_json::from_value(cluster).map_err(|e| Error::Spec { name: name.clone(), reason: e.to_string() })?;
    Ok(Migrated { cluster, not_carried })
}

fn storage(value: &Value, spec: &mut Map<String, Value>, skip: &mut impl FnMut(String, &str)) {
    let claim = &value["volumeClaimTemplate"]["spec"];
    let mut out = Map::new();
    if let Some(size) = claim["resources"]["requests"]["storage"].as_str() {
        out.insert("size".to_owned(), json!(size));
    }
    if let Some(class) = claim["storageClassName"].as_str() {
        out.insert("storageClassName".to_owned(), json!(class));
    }
    if !out.is_empty() {
        spec.insert("storage".to_owned(), Value::Object(out));
    }
    for key in value.as_object().into_iter().flatten().map(|(k, _)| k).filter(|k| *k != "volumeClaimTemplate") {
        skip(format!("spec.storage.{key}"), "only a volume claim (size and class) is supported");
    }
}

fn remote_write(i: usize, rw: &Value, skip: &mut impl FnMut(String, &str)) -> Value {
    let mut out = Map::new();
    for (key, value) in rw.as_object().into_iter().flatten() {
        let field = format!("spec.remoteWrite[{i}].{key}");
        match key.as_str() {
            "url" | "name" | "headers" | "writeRelabelConfigs" | "queueConfig" | "metadataConfig" => {
                out.insert(key.clone(), value.clone());
            }
            "basicAuth" => {
                let (user, password) = (&value["username"], &value["password"]);
                if user["name"] == password["name"] && user["key"] == "username" && password["key"] == "password" {
                    out.insert("basicAuthSecretRef".to_owned(), json!({"name": user["name"]}));
                } else {
                    skip(field, "basic auth must come from one Secret with the keys username and password");
                }
            }
            "bearerTokenSecret" | "authorization" => {
                let secret = if key == "authorization" { &value["credentials"] } else { value };
                if secret["key"] == "token" && secret["name"].is_string() {
                    out.insert("bearerTokenSecretRef".to_owned(), json!({"name": secret["name"]}));
                } else {
                    skip(field, "the bearer token must be the key token of a Secret");
                }
            }
            _ => skip(field, NO_EQUIVALENT),
        }
    }
    Value::Object(out)
}

fn thanos(value: &Value, spec: &mut Map<String, Value>, skip: &mut impl FnMut(String, &str)) {
    let mut out = Map::from_iter([("enabled".to_owned(), json!(true))]);
    for (key, v) in value.as_object().into_iter().flatten() {
        match key.as_str() {
            "image" => {
                out.insert("image".to_owned(), v.clone());
            }
            "objectStorageConfig" if v["key"] == "objstore.yml" => {
                out.insert("objectStorageConfigSecretRef".to_owned(), json!({"name": v["name"]}));
            }
            "objectStorageConfig" => {
                skip("spec.thanos.objectStorageConfig".to_owned(), "the Secret's key must be objstore.yml");
            }
            _ => skip(format!("spec.thanos.{key}"), NO_EQUIVALENT),
        }
    }
    spec.insert("thanos".to_owned(), Value::Object(out));
}

/// `alerting.alertmanagers`: the Service, port and plain options carry over; credentials and TLS do not yet.
fn alerting(value: &Value, spec: &mut Map<String, Value>, skip: &mut impl FnMut(String, &str)) {
    const CARRIED: [&str; 7] = ["namespace", "name", "port", "scheme", "pathPrefix", "apiVersion", "timeout"];
    let mut entries = Vec::new();
    for (key, v) in value.as_object().into_iter().flatten() {
        if key != "alertmanagers" {
            skip(format!("spec.alerting.{key}"), NO_EQUIVALENT);
            continue;
        }
        for (i, am) in v.as_array().into_iter().flatten().enumerate() {
            let mut entry = Map::new();
            for (k, v) in am.as_object().into_iter().flatten() {
                if CARRIED.contains(&k.as_str()) {
                    entry.insert(k.clone(), v.clone());
                } else {
                    skip(
                        format!("spec.alerting.alertmanagers[{i}].{k}"),
                        "not supported for Alertmanagers yet (plain HTTP(S) without credentials): drop it or put \
                         a proxy in front",
                    );
                }
            }
            entries.push(Value::Object(entry));
        }
    }
    if !entries.is_empty() {
        spec.insert("alerting".to_owned(), json!({"alertmanagers": entries}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Mode;

    #[test]
    fn the_articles_prometheus_becomes_a_valid_cluster_and_the_rest_is_named() {
        let source: Value = serde_yaml::from_str(
            "apiVersion: monitoring.coreos.com/v1\nkind: Prometheus\nmetadata:\n  name: prometheus\n  namespace: default\n\
             spec:\n  image: quay.io/prometheus/prometheus:v2.53.0\n  serviceAccountName: prometheus\n  \
             serviceMonitorSelector:\n    matchLabels:\n      team: frontend\n  podMonitorSelector:\n    matchLabels:\n      \
             team: frontend\n  resources:\n    requests:\n      memory: 400Mi\n  enableAdminAPI: false\n  \
             storage:\n    volumeClaimTemplate:\n      spec:\n        storageClassName: fast\n        resources:\n          \
             requests:\n            storage: 40Gi\n  ruleSelector: {}\n  alerting:\n    alertmanagers:\n    - namespace: \
             monitoring\n      name: alertmanager-main\n      port: web\n      bearerTokenFile: /var/token\n",
        )
        .unwrap();
        let migrated = migrate(&source).unwrap();
        let spec = &migrated.cluster.spec;
        assert_eq!(spec.image, "quay.io/prometheus/prometheus:v2.53.0");
        assert_eq!(spec.service_account_name.as_deref(), Some("prometheus"));
        assert!(spec.service_monitor_selector.is_some() && spec.pod_monitor_selector.is_some());
        assert_eq!(spec.storage.size.0, "40Gi");
        assert_eq!(spec.storage.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(migrated.cluster.metadata.namespace.as_deref(), Some("default"));
        let names: Vec<String> = migrated.not_carried.iter().map(ToString::to_string).collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(names[0].starts_with("spec.alerting.alertmanagers[0].bearerTokenFile: not supported"), "{names:?}");
        assert!(spec.rule_selector.is_some());
        let am = &spec.alerting.as_ref().unwrap().alertmanagers[0];
        assert_eq!((am.namespace.as_deref(), am.name.as_str()), (Some("monitoring"), "alertmanager-main"));
        crate::validate::validate_cluster(spec).unwrap();
    }

    #[test]
    fn the_articles_prometheus_agent_becomes_an_agent_cluster() {
        let source: Value = serde_yaml::from_str(
            "apiVersion: monitoring.coreos.com/v1alpha1\nkind: PrometheusAgent\nmetadata:\n  name: prometheus-agent\n\
             spec:\n  image: quay.io/prometheus/prometheus:v2.53.0\n  replicas: 1\n  serviceAccountName: prometheus-agent\n  \
             remoteWrite:\n    - url: http://my-greptimedb-frontend.default:4000/v1/prometheus/write?db=public\n      \
             basicAuth:\n        username: {name: greptime, key: username}\n        password: {name: greptime, key: password}\n      \
             remoteTimeout: 30s\n  serviceMonitorSelector:\n    matchLabels:\n      team: frontend\n",
        )
        .unwrap();
        let migrated = migrate(&source).unwrap();
        let spec = &migrated.cluster.spec;
        assert_eq!(spec.mode, Mode::Agent);
        assert_eq!(
            spec.remote_write[0].url,
            "http://my-greptimedb-frontend.default:4000/v1/prometheus/write?db=public"
        );
        assert_eq!(spec.remote_write[0].basic_auth_secret_ref.as_ref().map(|r| r.name.as_str()), Some("greptime"));
        let names: Vec<&str> = migrated.not_carried.iter().map(|n| n.field.as_str()).collect();
        assert_eq!(names, ["spec.remoteWrite[0].remoteTimeout"]);
        crate::validate::validate_cluster(spec).unwrap();
    }

    #[test]
    fn other_kinds_are_refused() {
        let err = migrate(&json!({"apiVersion": "apps/v1", "kind": "Deployment"})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "failed to migrate: apps/v1 Deployment is not a monitoring.coreos.com Prometheus or PrometheusAgent"
        );
    }
}
