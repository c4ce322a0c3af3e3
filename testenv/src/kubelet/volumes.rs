//! Pod volumes: materializes them in the pod's directory and computes the bind mounts of each container.
//! Payload computation is pure; writing and the PVC lookups do I/O.
//!
//! ConfigMap, Secret, downwardAPI and projected volumes are written like the kubelet's atomic writer: the files
//! live in a timestamped directory `..2026_11_21_06_56_08.123456789`, the symlink `..data` points at it, and each
//! top-level entry is a symlink through `..data`. An update writes a new timestamped directory and renames a
//! fresh symlink over `..data`, so a reader sees the old or the new payload, never a mix. These volumes are
//! mounted read-only. emptyDir is a directory in the pod's directory (medium `Memory` too); a PVC is the
//! directory of its bound PersistentVolume (hostPath or local); hostPath is the host path.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, Volume,
};
use kube::{Api, Client};

use super::env::{Objects, PodFacts, field_value, format_map, resource_value};
use super::images::ImageProgram;
use super::runtime::BindMount;

/// Relative path -> (content, mode).
pub(crate) type Payload = BTreeMap<String, (Vec<u8>, u32)>;

/// A materialized volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PreparedVolume {
    pub(crate) path: PathBuf,
    /// ConfigMap, Secret, downwardAPI and projected volumes are always read-only.
    pub(crate) read_only: bool,
}

/// The payload of an atomically written volume, `None` for other kinds. An error means a required object or
/// key is missing (the pod stays in `ContainerCreating`).
pub(crate) fn payload(
    volume: &Volume,
    pod: &Pod,
    objects: &dyn Objects,
    facts: &PodFacts,
) -> Result<Option<Payload>, String> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut out = Payload::new();
    if let Some(source) = &volume.config_map {
        let mode = mode_or(source.default_mode, 0o644);
        config_map_files(&mut out, objects, &namespace, &source.name, source.items.as_deref(), source.optional, mode)?;
    } else if let Some(source) = &volume.secret {
        let name = source.secret_name.clone().unwrap_or_default();
        let mode = mode_or(source.default_mode, 0o644);
        secret_files(&mut out, objects, &namespace, &name, source.items.as_deref(), source.optional, mode)?;
    } else if let Some(source) = &volume.downward_api {
        let mode = mode_or(source.default_mode, 0o644);
        downward_files(&mut out, pod, facts, source.items.as_deref().unwrap_or_default(), mode)?;
    } else if let Some(source) = &volume.projected {
        let mode = mode_or(source.default_mode, 0o644);
        for projection in source.sources.iter().flatten() {
            if let Some(cm) = &projection.config_map {
                config_map_files(&mut out, objects, &namespace, &cm.name, cm.items.as_deref(), cm.optional, mode)?;
            }
            if let Some(secret) = &projection.secret {
                secret_files(
                    &mut out,
                    objects,
                    &namespace,
                    &secret.name,
                    secret.items.as_deref(),
                    secret.optional,
                    mode,
                )?;
            }
            if let Some(downward) = &projection.downward_api {
                downward_files(&mut out, pod, facts, downward.items.as_deref().unwrap_or_default(), mode)?;
            }
        }
    } else {
        return Ok(None);
    }
    Ok(Some(out))
}

fn mode_or(mode: Option<i32>, default: u32) -> u32 {
    mode.and_then(|m| u32::try_from(m).ok()).unwrap_or(default)
}

fn select(
    out: &mut Payload,
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    mode: u32,
    what: &str,
) -> Result<(), String> {
    match items {
        None => out.extend(data.into_iter().map(|(k, v)| (k, (v, mode)))),
        Some(items) => {
            for item in items {
                let value = data.get(&item.key).ok_or_else(|| format!("{what}: key {:?} not found", item.key))?;
                out.insert(item.path.clone(), (value.clone(), mode_or(item.mode, mode)));
            }
        }
    }
    Ok(())
}

fn config_map_files(
    out: &mut Payload,
    objects: &dyn Objects,
    namespace: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
    mode: u32,
) -> Result<(), String> {
    let Some(cm) = objects.config_map(namespace, name) else {
        return if optional == Some(true) { Ok(()) } else { Err(format!("configmap {name:?} not found")) };
    };
    let mut data: BTreeMap<String, Vec<u8>> =
        cm.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
    data.extend(cm.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)));
    select(out, data, items, mode, &format!("configmap {name:?}"))
}

fn secret_files(
    out: &mut Payload,
    objects: &dyn Objects,
    namespace: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
    mode: u32,
) -> Result<(), String> {
    let Some(secret) = objects.secret(namespace, name) else {
        return if optional == Some(true) { Ok(()) } else { Err(format!("secret {name:?} not found")) };
    };
    let data = secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
    select(out, data, items, mode, &format!("secret {name:?}"))
}

fn downward_files(
    out: &mut Payload,
    pod: &Pod,
    facts: &PodFacts,
    items: &[DownwardAPIVolumeFile],
    mode: u32,
) -> Result<(), String> {
    for item in items {
        let value = if let Some(field) = &item.field_ref {
            match field.field_path.as_str() {
                "metadata.labels" => format_map(pod.metadata.labels.as_ref()),
                "metadata.annotations" => format_map(pod.metadata.annotations.as_ref()),
                path => field_value(pod, path, facts).ok_or_else(|| format!("unsupported fieldPath {path:?}"))?,
            }
        } else if let Some(resource) = &item.resource_field_ref {
            let container = pod
                .spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .find(|c| Some(&c.name) == resource.container_name.as_ref())
                .cloned()
                .unwrap_or_default();
            resource_value(&container, &resource.resource)
        } else {
            String::new()
        };
        out.insert(item.path.clone(), (value.into_bytes(), mode_or(item.mode, mode)));
    }
    Ok(())
}

/// Writes a payload atomically into `dir`; returns whether anything changed.
pub(crate) fn write_atomic(dir: &Path, payload: &Payload, now: &str) -> std::io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let data_link = dir.join("..data");
    let current = std::fs::read_link(&data_link).ok();
    if let Some(current) = &current
        && read_payload(&dir.join(current))? == *payload
    {
        return Ok(false);
    }
    let ts_name = format!("..{now}");
    let ts_dir = dir.join(&ts_name);
    std::fs::create_dir_all(&ts_dir)?;
    for (path, (content, mode)) in payload {
        let file = ts_dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, content)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(*mode))?;
    }
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&ts_name, &tmp_link)?;
    std::fs::rename(&tmp_link, &data_link)?;
    let wanted: BTreeSet<String> = payload.keys().filter_map(|p| p.split('/').next().map(str::to_owned)).collect();
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !wanted.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    for name in &wanted {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), &link)?;
        }
    }
    if let Some(old) = current
        && old != Path::new(&ts_name)
    {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(true)
}

fn read_payload(dir: &Path) -> std::io::Result<Payload> {
    fn walk(root: &Path, dir: &Path, out: &mut Payload) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)?.flatten() {
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                walk(root, &path, out)?;
            } else {
                let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
                let mode = entry.metadata()?.permissions().mode() & 0o7777;
                out.insert(rel, (std::fs::read(&path)?, mode));
            }
        }
        Ok(())
    }
    let mut out = Payload::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

/// A timestamp for the atomic writer's directory names, unique per call within a process.
pub(crate) fn timestamp() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let now = k8s_openapi::jiff::Timestamp::now();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{}.{:09}_{seq}", now.strftime("%Y_%m_%d_%H_%M_%S"), now.subsec_nanosecond())
}

/// Materializes all volumes of a pod under `pod_dir/volumes`. An error is a message for the pod's events and
/// `ContainerCreating` state; the caller retries.
pub(crate) async fn prepare(
    client: &Client,
    pod: &Pod,
    objects: &dyn Objects,
    facts: &PodFacts,
    pod_dir: &Path,
) -> Result<BTreeMap<String, PreparedVolume>, String> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut prepared = BTreeMap::new();
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let dir = pod_dir.join("volumes").join(&volume.name);
        if let Some(payload) = payload(volume, pod, objects, facts)? {
            write_atomic(&dir, &payload, &timestamp()).map_err(|e| format!("volume {:?}: {e}", volume.name))?;
            prepared.insert(volume.name.clone(), PreparedVolume { path: dir, read_only: true });
        } else if volume.empty_dir.is_some() {
            std::fs::create_dir_all(&dir).map_err(|e| format!("volume {:?}: {e}", volume.name))?;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777));
            prepared.insert(volume.name.clone(), PreparedVolume { path: dir, read_only: false });
        } else if let Some(claim) = &volume.persistent_volume_claim {
            let path = claim_path(client, &namespace, &claim.claim_name).await?;
            prepared.insert(volume.name.clone(), PreparedVolume { path, read_only: claim.read_only == Some(true) });
        } else if let Some(host) = &volume.host_path {
            let path = PathBuf::from(&host.path);
            if matches!(host.type_.as_deref(), Some("DirectoryOrCreate")) {
                std::fs::create_dir_all(&path).map_err(|e| format!("volume {:?}: {e}", volume.name))?;
            }
            if !path.exists() {
                return Err(format!("volume {:?}: hostPath {} does not exist", volume.name, host.path));
            }
            prepared.insert(volume.name.clone(), PreparedVolume { path, read_only: false });
        } else {
            return Err(format!("volume {:?}: this volume type is not supported by the process kubelet", volume.name));
        }
    }
    Ok(prepared)
}

/// Rewrites the atomically written volumes (after a ConfigMap, Secret or pod change); returns the names of the
/// volumes that changed. Errors (a deleted object) leave the old content, like the kubelet.
pub(crate) fn refresh(pod: &Pod, objects: &dyn Objects, facts: &PodFacts, pod_dir: &Path) -> Vec<String> {
    let mut changed = Vec::new();
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        if let Ok(Some(payload)) = payload(volume, pod, objects, facts) {
            let dir = pod_dir.join("volumes").join(&volume.name);
            if write_atomic(&dir, &payload, &timestamp()).unwrap_or(false) {
                changed.push(volume.name.clone());
            }
        }
    }
    changed
}

fn refers(value: &serde_json::Value, keys: &[&str; 3], name: &str) -> bool {
    match value {
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| {
            (keys.contains(&k.as_str())
                && (v.get("name").and_then(|n| n.as_str()) == Some(name)
                    || v.get("secretName").and_then(|n| n.as_str()) == Some(name)))
                || refers(v, keys, name)
        }),
        serde_json::Value::Array(items) => items.iter().any(|v| refers(v, keys, name)),
        _ => false,
    }
}

/// Whether the pod's volumes or env refer to the object.
pub(crate) fn refers_to(pod: &Pod, kind: super::cache::Kind, name: &str) -> bool {
    let text = serde_json::to_value(&pod.spec).unwrap_or_default();
    let key = match kind {
        super::cache::Kind::ConfigMap => ["configMap", "configMapRef", "configMapKeyRef"],
        super::cache::Kind::Secret => ["secret", "secretRef", "secretKeyRef"],
    };
    refers(&text, &key, name)
}

async fn claim_path(client: &Client, namespace: &str, claim: &str) -> Result<PathBuf, String> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let pvc = pvcs.get_opt(claim).await.map_err(|e| format!("persistentvolumeclaim {claim:?}: {e}"))?;
    let pvc = pvc.ok_or_else(|| format!("persistentvolumeclaim {claim:?} not found"))?;
    let volume_name = pvc
        .spec
        .and_then(|s| s.volume_name)
        .filter(|_| pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
        .ok_or_else(|| format!("persistentvolumeclaim {claim:?} is not bound"))?;
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let pv = volumes.get(&volume_name).await.map_err(|e| format!("persistentvolume {volume_name:?}: {e}"))?;
    let spec = pv.spec.unwrap_or_default();
    let path = spec
        .host_path
        .map(|h| h.path)
        .or(spec.local.map(|l| l.path))
        .ok_or_else(|| format!("persistentvolume {volume_name:?} is neither hostPath nor local"))?;
    let path = PathBuf::from(path);
    std::fs::create_dir_all(&path).map_err(|e| format!("persistentvolume {volume_name:?}: {e}"))?;
    Ok(path)
}

/// The bind mounts of one container: the image's `VOLUME`s (fresh directories under `container_dir`, unless a
/// volume mount covers them), then the volume mounts in order.
pub(crate) fn container_mounts(
    container: &Container,
    volumes: &BTreeMap<String, PreparedVolume>,
    image: &ImageProgram,
    container_dir: &Path,
) -> Result<Vec<BindMount>, String> {
    let mounts = container.volume_mounts.as_deref().unwrap_or_default();
    let mut out = Vec::new();
    for (i, path) in image.volumes().iter().enumerate() {
        if mounts.iter().any(|m| m.mount_path.trim_end_matches('/') == path.trim_end_matches('/')) {
            continue;
        }
        let dir = container_dir.join(format!("image-volume-{i}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("image volume {path}: {e}"))?;
        out.push(BindMount { source: dir, target: path.clone(), read_only: false });
    }
    for mount in mounts {
        let volume =
            volumes.get(&mount.name).ok_or_else(|| format!("volumeMount {:?}: no volume of that name", mount.name))?;
        let mut source = volume.path.clone();
        if let Some(sub_path) = mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
            if sub_path.split('/').any(|c| c == "..") || sub_path.starts_with('/') {
                return Err(format!("volumeMount {:?}: invalid subPath {sub_path:?}", mount.name));
            }
            source = source.join(sub_path);
            if volume.read_only {
                // Resolve the `..data` symlinks: subPath mounts of these volumes are never updated.
                source = source.canonicalize().map_err(|e| format!("subPath {sub_path:?}: {e}"))?;
            } else if !source.exists() {
                std::fs::create_dir_all(&source).map_err(|e| format!("subPath {sub_path:?}: {e}"))?;
            }
        }
        out.push(BindMount {
            source,
            target: mount.mount_path.clone(),
            read_only: volume.read_only || mount.read_only == Some(true),
        });
    }
    Ok(out)
}

/// The `/etc/hosts` the kubelet writes for a pod (not for `hostNetwork` pods): localhost, the pod's own
/// name (`hostname.subdomain.namespace.svc.cluster.local` when it has a subdomain) and `hostAliases`.
pub(crate) fn build_hosts_file(pod: &Pod, pod_ip: &str, hostname: &str) -> String {
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let _ = match pod.spec.as_ref().and_then(|s| s.subdomain.as_deref()) {
        Some(subdomain) => {
            writeln!(out, "{pod_ip}\t{hostname}.{subdomain}.{namespace}.svc.cluster.local\t{hostname}")
        }
        None => writeln!(out, "{pod_ip}\t{hostname}"),
    };
    for alias in pod.spec.iter().flat_map(|s| s.host_aliases.iter().flatten()) {
        let names = alias.hostnames.clone().unwrap_or_default().join("\t");
        let _ = writeln!(out, "\n# Entries added by HostAliases.\n{}\t{names}", alias.ip);
    }
    out
}

/// The `/etc/resolv.conf` of a pod. There is no cluster DNS: the name server is the pod's own loopback, so
/// lookups of cluster names fail at once instead of timing out (and no query leaves the pod).
pub(crate) fn build_resolv_conf(namespace: &str) -> String {
    format!(
        "search {namespace}.svc.cluster.local svc.cluster.local cluster.local\nnameserver 127.0.0.1\noptions ndots:5\n"
    )
}

/// Writes the pod's `/etc/hosts` and `/etc/resolv.conf` and returns their bind mounts.
pub(crate) fn etc_mounts(pod: &Pod, pod_ip: &str, hostname: &str, pod_dir: &Path) -> std::io::Result<Vec<BindMount>> {
    let dir = pod_dir.join("etc");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("hosts"), build_hosts_file(pod, pod_ip, hostname))?;
    std::fs::write(dir.join("resolv.conf"), build_resolv_conf(&pod.metadata.namespace.clone().unwrap_or_default()))?;
    Ok(vec![
        BindMount { source: dir.join("hosts"), target: "/etc/hosts".to_owned(), read_only: false },
        BindMount { source: dir.join("resolv.conf"), target: "/etc/resolv.conf".to_owned(), read_only: false },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload_of(files: &[(&str, &str)]) -> Payload {
        files.iter().map(|(k, v)| ((*k).to_owned(), (v.as_bytes().to_vec(), 0o644))).collect()
    }

    #[test]
    fn hosts_file_names_the_pod_under_its_subdomain() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-0", "namespace": "ns"},
            "spec": {"containers": [], "hostname": "web-0", "subdomain": "web"}
        }))
        .unwrap();
        let hosts = build_hosts_file(&pod, "10.213.0.2", "web-0");
        assert!(hosts.contains("127.0.0.1\tlocalhost\n"));
        assert!(hosts.ends_with("10.213.0.2\tweb-0.web.ns.svc.cluster.local\tweb-0\n"), "{hosts}");
    }

    #[test]
    fn atomic_writer_swaps_data_and_links_files_through_it() {
        let dir = std::env::temp_dir().join(format!("tsdb-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(write_atomic(&dir, &payload_of(&[("a.yml", "one"), ("b", "x")]), &timestamp()).unwrap());
        assert_eq!(std::fs::read_link(dir.join("a.yml")).unwrap(), Path::new("..data/a.yml"));
        assert_eq!(std::fs::read_to_string(dir.join("a.yml")).unwrap(), "one");
        assert!(!write_atomic(&dir, &payload_of(&[("a.yml", "one"), ("b", "x")]), &timestamp()).unwrap());
        assert!(write_atomic(&dir, &payload_of(&[("a.yml", "two")]), &timestamp()).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a.yml")).unwrap(), "two");
        assert!(std::fs::symlink_metadata(dir.join("b")).is_err());
        let timestamped = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("..2"))
            .count();
        assert_eq!(timestamped, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
