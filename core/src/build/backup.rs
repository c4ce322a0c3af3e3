//! Part of the **build** step: what backups and restores add to the pod. Pure: no I/O.
//!
//! - With `spec.backup.enabled`, the `agent` container mounts the per-cluster token Secret `<name>-agent-token`
//!   (the operator creates it; the agent accepts backup requests only with this bearer token) and, when set,
//!   the `spec.backup.credentialsSecretRef` Secret (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optionally
//!   `AWS_SESSION_TOKEN`) as files. Files rather than environment variables, so that rotated credentials take
//!   effect at the next backup without restarting the pod. The operator never reads a cluster's own credentials.
//!   Without that reference, when the operator has shared credentials (`--s3-credentials-secret`), the agent
//!   mounts the operator's copy `<name>-s3-credentials` instead; otherwise it uses the environment's.
//! - With `spec.restore`, an init container `restore` (`tsdb-operator agent restore`) downloads and verifies the
//!   backup into the empty data volume before Prometheus starts; it does nothing when the volume holds data.

use k8s_openapi::api::core::v1::{Container, SecretVolumeSource, Volume, VolumeMount};

use super::BuildContext;
use crate::backup::protocol::{StoreLocation, resolve_restore_store};
use crate::constants::{containers, paths, volumes};

/// Name of the init container that restores a backup.
pub const RESTORE_CONTAINER: &str = "restore";
/// Volume of the agent token Secret.
pub const AGENT_TOKEN_VOLUME: &str = "agent-token";
/// Where the agent token Secret is mounted (the token is the file `token`).
pub const AGENT_TOKEN_DIR: &str = "/etc/tsdb-operator/agent-token";
/// Volume of the backup credentials Secret.
pub const BACKUP_CREDENTIALS_VOLUME: &str = "backup-credentials";
/// Where the backup credentials Secret is mounted.
pub const BACKUP_CREDENTIALS_DIR: &str = "/etc/tsdb-operator/backup-credentials";
/// Volume of the restore source's credentials Secret.
pub const RESTORE_CREDENTIALS_VOLUME: &str = "restore-credentials";
/// Where the restore source's credentials Secret is mounted.
pub const RESTORE_CREDENTIALS_DIR: &str = "/etc/tsdb-operator/restore-credentials";

/// Name of the Secret the operator copies its S3 credentials into for a cluster that names none
/// (`--s3-credentials-secret`).
pub fn shared_credentials_secret(cluster: &str) -> String {
    format!("{cluster}-s3-credentials")
}

/// The Secret the agent reads backup credentials from: the cluster's own `credentialsSecretRef`, else the
/// operator's copy when the operator has shared credentials, else none (the environment's credentials).
pub fn backup_credentials_secret(ctx: &BuildContext<'_>) -> Option<String> {
    let backup = &ctx.cluster.spec.backup;
    match backup.credentials_secret_ref.as_ref().filter(|r| !r.name.is_empty()) {
        Some(own) => Some(own.name.clone()),
        None => ctx.settings.backup.shared_credentials.then(|| shared_credentials_secret(ctx.name)),
    }
}

/// Name of a cluster's agent token Secret.
pub fn agent_token_secret(cluster: &str) -> String {
    format!("{cluster}-agent-token")
}

/// Volumes that backups and restores add to the pod.
pub fn backup_volumes(ctx: &BuildContext<'_>) -> Vec<Volume> {
    let spec = &ctx.cluster.spec;
    let mut out = Vec::new();
    if spec.backup.enabled {
        out.push(optional_secret_volume(AGENT_TOKEN_VOLUME, &agent_token_secret(ctx.name)));
        if let Some(creds) = backup_credentials_secret(ctx) {
            out.push(optional_secret_volume(BACKUP_CREDENTIALS_VOLUME, &creds));
        }
    }
    if let Some(creds) = restore_credentials(ctx) {
        out.push(optional_secret_volume(RESTORE_CREDENTIALS_VOLUME, creds));
    }
    out
}

/// Mounts that backups add to the agent container.
pub fn agent_backup_mounts(ctx: &BuildContext<'_>) -> Vec<VolumeMount> {
    let backup = &ctx.cluster.spec.backup;
    let mut out = Vec::new();
    if backup.enabled {
        out.push(mount(AGENT_TOKEN_VOLUME, AGENT_TOKEN_DIR));
        if backup_credentials_secret(ctx).is_some() {
            out.push(mount(BACKUP_CREDENTIALS_VOLUME, BACKUP_CREDENTIALS_DIR));
        }
    }
    out
}

fn restore_credentials<'a>(ctx: &BuildContext<'a>) -> Option<&'a str> {
    let restore = ctx.cluster.spec.restore.as_ref()?;
    restore.source.credentials_secret_ref.as_ref().map(|r| r.name.as_str()).filter(|n| !n.is_empty())
}

/// The init container that restores `spec.restore` into an empty data volume, or `None` without `spec.restore`.
/// `image` and `security` come from the StatefulSet builder so that the container matches the agent.
pub fn restore_init_container(ctx: &BuildContext<'_>, base: Container) -> Option<Container> {
    let restore = ctx.cluster.spec.restore.as_ref()?;
    let source = &restore.source;
    let namespace = if source.namespace.is_empty() { ctx.namespace.unwrap_or_default() } else { &source.namespace };
    let mut args = vec!["agent".to_owned(), "restore".to_owned(), format!("--dest={}", paths::DATA_DIR)];
    args.push(format!("--cluster={namespace}/{}", source.cluster));
    match resolve_restore_store(source, &ctx.settings.backup) {
        StoreLocation::S3 { bucket, region, endpoint, prefix } => {
            args.push(format!("--bucket={bucket}"));
            args.push(format!("--region={region}"));
            if !endpoint.is_empty() {
                args.push(format!("--endpoint={endpoint}"));
            }
            if !prefix.is_empty() {
                args.push(format!("--prefix={prefix}"));
            }
        }
        StoreLocation::Local { dir, prefix } => {
            args.push(format!("--dir={dir}"));
            if !prefix.is_empty() {
                args.push(format!("--prefix={prefix}"));
            }
        }
    }
    if let Some(id) = restore.backup_id.as_deref().filter(|id| !id.is_empty()) {
        args.push(format!("--backup={id}"));
    }
    let mut mounts = vec![VolumeMount {
        name: volumes::DATA.to_owned(),
        mount_path: paths::DATA_DIR.to_owned(),
        ..VolumeMount::default()
    }];
    if restore_credentials(ctx).is_some() {
        args.push(format!("--credentials-dir={RESTORE_CREDENTIALS_DIR}"));
        mounts.push(mount(RESTORE_CREDENTIALS_VOLUME, RESTORE_CREDENTIALS_DIR));
    }
    Some(Container {
        name: RESTORE_CONTAINER.to_owned(),
        args: Some(args),
        volume_mounts: Some(mounts),
        ports: None,
        liveness_probe: None,
        readiness_probe: None,
        env: None,
        ..base
    })
}

/// Which container names a restore adds (for messages).
pub const RESTORE_CONTAINERS: [&str; 1] = [RESTORE_CONTAINER];

/// The agent's container name (re-exported for adapters).
pub const AGENT_CONTAINER: &str = containers::AGENT;

fn optional_secret_volume(name: &str, secret: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            optional: Some(true),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount { name: name.to_owned(), mount_path: path.to_owned(), read_only: Some(true), ..VolumeMount::default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::BuildSettings;
    use crate::crd::{PrometheusCluster, PrometheusClusterSpec};

    #[test]
    fn the_agent_mounts_the_clusters_credentials_else_the_operators_copy_else_none() {
        let mut spec: PrometheusClusterSpec =
            serde_json::from_value(serde_json::json!({"backup": {"enabled": true, "bucket": "b"}})).unwrap();
        let with = |spec: &PrometheusClusterSpec, shared: bool| {
            let cluster = PrometheusCluster::new("web", spec.clone());
            let mut settings = BuildSettings::default();
            settings.backup.shared_credentials = shared;
            let valid = crate::validate::cluster(&cluster).unwrap();
            let ctx = BuildContext::new(&valid, &settings);
            let volume = backup_volumes(&ctx)
                .into_iter()
                .find(|v| v.name == BACKUP_CREDENTIALS_VOLUME)
                .and_then(|v| v.secret)
                .and_then(|s| s.secret_name);
            let mounted = agent_backup_mounts(&ctx).iter().any(|m| m.mount_path == BACKUP_CREDENTIALS_DIR);
            assert_eq!(volume.is_some(), mounted);
            volume
        };
        assert_eq!(with(&spec, false), None, "the environment's credentials");
        assert_eq!(with(&spec, true).as_deref(), Some("web-s3-credentials"));
        spec.backup.credentials_secret_ref =
            Some(k8s_openapi::api::core::v1::LocalObjectReference { name: "own".into() });
        assert_eq!(with(&spec, true).as_deref(), Some("own"), "the cluster's own reference wins");
        assert_eq!(with(&spec, false).as_deref(), Some("own"));
    }
}
