//! A container's environment and `$(VAR)` expansion, as the kubelet computes them. Pure: ConfigMaps and
//! Secrets come from a lookup passed in.
//!
//! Order (kubelet `makeEnvironmentVariables`): `envFrom` sources in order (with their prefix; keys that are not
//! valid variable names are skipped), then `env` entries, each value expanded with the variables defined so far;
//! later definitions win. Then the defaults a container runtime adds when absent: `PATH`, `HOSTNAME`, and the
//! `KUBERNETES_SERVICE_*` variables.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};

/// Where ConfigMaps and Secrets come from.
pub(crate) trait Objects: Send + Sync {
    fn config_map(&self, namespace: &str, name: &str) -> Option<ConfigMap>;
    fn secret(&self, namespace: &str, name: &str) -> Option<Secret>;
}

impl Objects for super::cache::ObjectCache {
    fn config_map(&self, namespace: &str, name: &str) -> Option<ConfigMap> {
        super::cache::ObjectCache::config_map(self, namespace, name)
    }
    fn secret(&self, namespace: &str, name: &str) -> Option<Secret> {
        super::cache::ObjectCache::secret(self, namespace, name)
    }
}

/// Runtime facts the environment may refer to.
#[derive(Debug, Clone, Default)]
pub(crate) struct PodFacts {
    pub(crate) pod_ip: String,
    pub(crate) host_ip: String,
    pub(crate) hostname: String,
    /// `(host, port)` of the API server as the pod reaches it, for `KUBERNETES_SERVICE_HOST`/`_PORT`/`_PORT_HTTPS`:
    /// the `kubernetes` Service's ClusterIP and port for pods in their own network namespace, the kubelet's own
    /// address for `hostNetwork` pods.
    pub(crate) apiserver: Option<(String, u16)>,
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Expands `$(VAR)` references; `$$` is an escaped `$`; unknown references are kept as written.
pub fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            if let Some(end) = inner.find(')') {
                let name = &inner[..end];
                if let Some(value) = lookup(name) {
                    out.push_str(&value);
                } else {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
                rest = &inner[end + 1..];
            } else {
                out.push_str("$(");
                rest = inner;
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Why the environment cannot be built (`CreateContainerConfigError`).
pub(crate) type ConfigError = String;

/// The container's environment.
pub(crate) fn build_env(
    pod: &Pod,
    container: &Container,
    objects: &dyn Objects,
    facts: &PodFacts,
) -> Result<Vec<(String, String)>, ConfigError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        if let Some(cm_ref) = &source.config_map_ref {
            match objects.config_map(&namespace, &cm_ref.name) {
                Some(cm) => {
                    for (key, value) in cm.data.unwrap_or_default() {
                        insert_valid(&mut vars, format!("{prefix}{key}"), value);
                    }
                }
                None if cm_ref.optional == Some(true) => {}
                None => return Err(format!("configmap {:?} not found", cm_ref.name)),
            }
        }
        if let Some(secret_ref) = &source.secret_ref {
            match objects.secret(&namespace, &secret_ref.name) {
                Some(secret) => {
                    for (key, value) in secret.data.unwrap_or_default() {
                        insert_valid(
                            &mut vars,
                            format!("{prefix}{key}"),
                            String::from_utf8_lossy(&value.0).into_owned(),
                        );
                    }
                }
                None if secret_ref.optional == Some(true) => {}
                None => return Err(format!("secret {:?} not found", secret_ref.name)),
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value = if let Some(value) = &var.value {
            let defined = vars.clone();
            expand(value, &|name| defined.get(name).cloned())
        } else if let Some(source) = &var.value_from {
            if let Some(field) = &source.field_ref {
                field_value(pod, &field.field_path, facts)
                    .ok_or_else(|| format!("env {:?}: unsupported fieldPath {:?}", var.name, field.field_path))?
            } else if let Some(key_ref) = &source.config_map_key_ref {
                let value = objects
                    .config_map(&namespace, &key_ref.name)
                    .and_then(|cm| cm.data.and_then(|mut data| data.remove(&key_ref.key)));
                match value {
                    Some(value) => value,
                    None if key_ref.optional == Some(true) => continue,
                    None => {
                        return Err(format!(
                            "couldn't find key {} in ConfigMap {}/{}",
                            key_ref.key, namespace, key_ref.name
                        ));
                    }
                }
            } else if let Some(key_ref) = &source.secret_key_ref {
                let value = objects
                    .secret(&namespace, &key_ref.name)
                    .and_then(|s| s.data.and_then(|mut data| data.remove(&key_ref.key)));
                match value {
                    Some(value) => String::from_utf8_lossy(&value.0).into_owned(),
                    None if key_ref.optional == Some(true) => continue,
                    None => {
                        return Err(format!(
                            "couldn't find key {} in Secret {}/{}",
                            key_ref.key, namespace, key_ref.name
                        ));
                    }
                }
            } else if let Some(resource) = &source.resource_field_ref {
                resource_value(container, &resource.resource)
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        vars.insert(var.name.clone(), value);
    }
    vars.entry("PATH".to_owned()).or_insert_with(|| DEFAULT_PATH.to_owned());
    vars.entry("HOSTNAME".to_owned()).or_insert_with(|| facts.hostname.clone());
    if let Some((host, port)) = &facts.apiserver {
        vars.entry("KUBERNETES_SERVICE_HOST".to_owned()).or_insert_with(|| host.clone());
        vars.entry("KUBERNETES_SERVICE_PORT".to_owned()).or_insert_with(|| port.to_string());
        vars.entry("KUBERNETES_SERVICE_PORT_HTTPS".to_owned()).or_insert_with(|| port.to_string());
    }
    Ok(vars.into_iter().collect())
}

fn insert_valid(vars: &mut BTreeMap<String, String>, key: String, value: String) {
    let valid = !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if valid {
        vars.insert(key, value);
    }
}

/// The value of a `fieldRef` (env) or downward API `fieldRef` (volume).
pub(crate) fn field_value(pod: &Pod, path: &str, facts: &PodFacts) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let bracketed =
        |prefix: &str| -> Option<String> { path.strip_prefix(prefix)?.strip_suffix("']").map(str::to_owned) };
    if let Some(key) = bracketed("metadata.labels['") {
        return Some(meta.labels.as_ref().and_then(|l| l.get(&key).cloned()).unwrap_or_default());
    }
    if let Some(key) = bracketed("metadata.annotations['") {
        return Some(meta.annotations.as_ref().and_then(|a| a.get(&key).cloned()).unwrap_or_default());
    }
    Some(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        "status.hostIP" => facts.host_ip.clone(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone(),
        _ => return None,
    })
}

/// `key="value"` lines, sorted, as the downward API writes label and annotation files.
pub(crate) fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `limits.cpu` and friends: the container's value, in the resource's base unit (cpu rounded up to cores).
pub(crate) fn resource_value(container: &Container, resource: &str) -> String {
    let (section, name) = resource.split_once('.').unwrap_or(("limits", resource));
    let resources = container.resources.as_ref();
    let quantities = match section {
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => resources.and_then(|r| r.limits.as_ref()),
    };
    let Some(quantity) = quantities.and_then(|q| q.get(name)) else {
        return if name == "cpu" { "4".to_owned() } else { "8589934592".to_owned() };
    };
    let raw = quantity.0.as_str();
    if name == "cpu" {
        if let Some(milli) = raw.strip_suffix('m').and_then(|m| m.parse::<u64>().ok()) {
            return milli.div_ceil(1000).to_string();
        }
        return raw.to_owned();
    }
    parse_bytes(raw).map_or_else(|| raw.to_owned(), |b| b.to_string())
}

fn parse_bytes(raw: &str) -> Option<u64> {
    const UNITS: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (suffix, factor) in UNITS {
        if let Some(number) = raw.strip_suffix(suffix) {
            return number.parse::<u64>().ok().map(|n| n * factor);
        }
    }
    raw.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector};

    struct NoObjects;
    impl Objects for NoObjects {
        fn config_map(&self, _: &str, _: &str) -> Option<ConfigMap> {
            None
        }
        fn secret(&self, _: &str, _: &str) -> Option<Secret> {
            None
        }
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let lookup = |name: &str| (name == "A").then(|| "x".to_owned());
        assert_eq!(expand("$(A)-$(B)", &lookup), "x-$(B)");
        assert_eq!(expand("$$(A) $$ $ $(A", &lookup), "$(A) $ $ $(A");
        assert_eq!(expand("--flag=$(A)$(A)", &lookup), "--flag=xx");
    }

    #[test]
    fn env_refers_to_earlier_variables_and_pod_fields() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web-0".to_owned());
        pod.metadata.labels = Some([("app".to_owned(), "web".to_owned())].into());
        let field = |path: &str| EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.to_owned(), ..Default::default() }),
            ..Default::default()
        };
        let container = Container {
            name: "c".to_owned(),
            env: Some(vec![
                EnvVar { name: "NAME".to_owned(), value_from: Some(field("metadata.name")), ..Default::default() },
                EnvVar {
                    name: "APP".to_owned(),
                    value_from: Some(field("metadata.labels['app']")),
                    ..Default::default()
                },
                EnvVar { name: "IP".to_owned(), value_from: Some(field("status.podIP")), ..Default::default() },
                EnvVar {
                    name: "URL".to_owned(),
                    value: Some("http://$(IP):9090/$(NAME)".to_owned()),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let facts = PodFacts { pod_ip: "10.213.0.2".to_owned(), ..Default::default() };
        let env: BTreeMap<_, _> = build_env(&pod, &container, &NoObjects, &facts).unwrap().into_iter().collect();
        assert_eq!(env["URL"], "http://10.213.0.2:9090/web-0");
        assert_eq!(env["APP"], "web");
    }

    #[test]
    fn missing_required_config_map_is_a_config_error() {
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "c",
            "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}]
        }))
        .unwrap();
        let err = build_env(&Pod::default(), &container, &NoObjects, &PodFacts::default()).unwrap_err();
        assert!(err.contains("couldn't find key k"), "{err}");
    }
}
