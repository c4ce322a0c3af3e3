//! Part of the **build** step: the StatefulSet `<name>` that runs the Prometheus pods. Pure: no I/O.
//!
//! Pod layout:
//! - `prometheus`: Prometheus with the flags its version needs (see [`prometheus_args`]) and three probes
//!   (see [`STARTUP_PROBE_PERIOD_SECONDS`] for why the startup probe is on `/-/ready`);
//! - `agent`: the operator binary as a sidecar (`tsdb-operator agent`, flags `--config-dir`, `--prometheus-url`,
//!   `--listen`, `--proxy-listen`); it replaces the seed's configmap-reload (hot-reloads the config through
//!   `/-/reload`), serves `/status`, `/metrics` and `/healthz` on port 9091, and mounts the data volume for
//!   snapshots. It also serves the pod's Prometheus port 9090: Prometheus itself listens on `127.0.0.1:9089` only
//!   and the agent forwards everything but the admin and lifecycle APIs (see [`crate::web`]), so those are
//!   reachable from inside the pod only. The Prometheus container's probes go through the same port (the kubelet
//!   cannot reach a loopback address), so the agent's liveness probe is the faster of the two: a hung agent is
//!   restarted before Prometheus' own liveness probe could fail on its account;
//! - `thanos-sidecar`: only with `spec.thanos.enabled`, as in the seed.
//!
//! Volumes: the ConfigMap at [`paths::CONFIG_DIR`] (read-only, never nested with secrets), one volume per distinct
//! remote write Secret at `<SECRETS_DIR>/<secret>` (the seed never mounted them; docs/seed-compatibility.md), the additional scrape
//! configs Secret, the Thanos object storage Secret, and the `data` claim template.
//!
//! Only fields a 1.20 API server knows are set: no `minReadySeconds`, `persistentVolumeClaimRetentionPolicy`,
//! `ordinals` or rolling-update `maxUnavailable` on the StatefulSet, no probe-level grace periods.
//!
//! The pod template carries no hash of the configuration: the agent hot-reloads it, and a changing template
//! annotation would roll every pod on each config change.

use std::fmt::Write as _;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount, VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config::{self, POD_NAME_ENV};
use super::service::{THANOS_GRPC_NAME, THANOS_HTTP_NAME};
use super::{BuildContext, concat, is_dns1123_label, version, with_port};
use crate::constants::{containers, paths, ports, volumes};

/// Grace period of the pods: Prometheus flushes its head block and WAL on shutdown, which can take minutes on
/// large instances (prometheus-operator uses the same 600 s).
pub const TERMINATION_GRACE_PERIOD_SECONDS: i64 = 600;

/// Period of the startup probe; its failure threshold is `selfHealing.startupBudget / period`, rounded up.
///
/// Why the startup probe is on `/-/ready` and not `/-/healthy`: while Prometheus replays its WAL it already answers
/// `/-/healthy` with 200 but `/-/ready` with 503. A startup probe on `/-/healthy` would pass at once and give no
/// protection. On `/-/ready` it holds back the liveness probe (Kubernetes runs liveness only after the startup
/// probe passed) for the whole replay, up to the startup budget, so a slow or CPU-starved replay is not killed and
/// restarted from scratch (the restart loop of prometheus-operator #3094/#3391). A replay that exceeds the budget
/// is treated as stuck and the kubelet restarts the container. The operator's self-healing reads the same budget
/// and leaves a replica alone while its container has not started.
pub const STARTUP_PROBE_PERIOD_SECONDS: i32 = 5;

/// Name of the data volume claim template and of its mounts.
const DATA_VOLUME: &str = volumes::DATA;

/// User and group `nobody`, which the Prometheus image runs as.
const NOBODY: i64 = 65534;

/// Renders the StatefulSet `<name>`.
pub fn build_statefulset(ctx: &BuildContext<'_>) -> StatefulSet {
    let spec = &ctx.cluster.spec;
    let startup_budget = ctx.startup_budget;

    let mut pod_containers = Vec::with_capacity(3);
    pod_containers.push(prometheus_container(ctx, startup_budget));
    pod_containers.push(agent_container(ctx));
    if ctx.thanos_enabled() {
        pod_containers.push(thanos_container(ctx));
    }

    // The restore container is based on the agent's; only rendered with `spec.restore`.
    let init_containers: Vec<Container> = ctx
        .cluster
        .spec
        .restore
        .as_ref()
        .and_then(|_| super::backup::restore_init_container(ctx, agent_container(ctx)))
        .into_iter()
        .chain(expand_init_container(ctx))
        .collect();
    let init_containers = (!init_containers.is_empty()).then_some(init_containers);
    let pod_spec = PodSpec {
        init_containers,
        containers: pod_containers,
        volumes: Some(pod_volumes(ctx)),
        security_context: Some(pod_security_context(spec.security_context.as_ref())),
        affinity: affinity(ctx),
        node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
        tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
        priority_class_name: spec.priority_class_name.clone().filter(|p| !p.is_empty()),
        service_account_name: super::discovery::pod_service_account(ctx),
        termination_grace_period_seconds: Some(TERMINATION_GRACE_PERIOD_SECONDS),
        ..PodSpec::default()
    };

    StatefulSet {
        metadata: ctx.object_meta(ctx.name.to_owned()),
        spec: Some(StatefulSetSpec {
            replicas: Some(spec.replicas),
            selector: LabelSelector { match_labels: Some(ctx.selector_labels()), match_expressions: None },
            service_name: Some(ctx.name.to_owned()),
            // The seed's default. Immutable, so changing it would force re-creating seed StatefulSets; and
            // rolling updates are one pod at a time under either policy.
            pod_management_policy: Some("OrderedReady".to_owned()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: None,
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(ctx.common_labels()),
                    annotations: Some(super::map([(
                        "kubectl.kubernetes.io/default-container".to_owned(),
                        containers::PROMETHEUS.to_owned(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec),
            },
            volume_claim_templates: ctx
                .cluster
                .spec
                .storage
                .empty_dir
                .is_none()
                .then(|| vec![data_claim_template(ctx)]),
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

/// The Prometheus command line, in this order: config file, data path, retention time (and size), the loopback
/// listen address (the agent serves the pod's port, see [`crate::web`]), lifecycle API,
/// admin API only with backups (snapshots need it; it stays off otherwise), 2h blocks with Thanos (so
/// the sidecar uploads every block), and `--enable-feature=expand-external-labels` for 2.x and unknown versions
/// (3.x always expands external labels).
pub fn prometheus_args(ctx: &BuildContext<'_>) -> Vec<String> {
    let spec = &ctx.cluster.spec;
    let mut args = Vec::with_capacity(10);
    args.push(concat(&["--config.file=", paths::CONFIG_FILE]));
    if spec.mode == crate::crd::Mode::Agent {
        // Agent mode refuses the TSDB flags; its write-ahead log lives on the same volume.
        args.push(
            if ctx.version.is_some_and(|v| v.major >= 3) { "--agent" } else { "--enable-feature=agent" }.to_owned(),
        );
        args.push(concat(&["--storage.agent.path=", paths::DATA_DIR]));
    } else {
        args.push(concat(&["--storage.tsdb.path=", paths::DATA_DIR]));
        args.push(concat(&["--storage.tsdb.retention.time=", ctx.retention]));
        if let Some(size) = spec.retention_size.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            args.push(concat(&["--storage.tsdb.retention.size=", size]));
        }
    }
    args.push(with_port("--web.listen-address=127.0.0.1:", ports::PROMETHEUS_LOCAL));
    args.push("--web.enable-lifecycle".to_owned());
    if spec.backup.enabled {
        args.push("--web.enable-admin-api".to_owned());
    }
    if ctx.thanos_enabled() {
        args.push("--storage.tsdb.min-block-duration=2h".to_owned());
        args.push("--storage.tsdb.max-block-duration=2h".to_owned());
    }
    if version::needs_expand_external_labels_flag(ctx.version) {
        args.push("--enable-feature=expand-external-labels".to_owned());
    }
    args
}

/// Name of the volume of a remote write Secret: `rw-secret-<secret>` when that is a valid volume name, else a
/// shortened name with a hash of the Secret name (Secret names may have dots and 253 characters, volume names
/// may not).
pub fn remote_write_volume_name(secret: &str) -> String {
    let plain = concat(&[volumes::REMOTE_WRITE_SECRET_PREFIX, secret]);
    if is_dns1123_label(&plain) {
        return plain;
    }
    let mut short: String =
        secret.chars().map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' }).take(40).collect();
    while short.ends_with('-') {
        short.pop();
    }
    let mut name = volumes::REMOTE_WRITE_SECRET_PREFIX.to_owned();
    if !short.is_empty() {
        name.push_str(&short);
        name.push('-');
    }
    let _ = write!(name, "{:08x}", fnv1a32(secret));
    name
}

/// FNV-1a, 32 bits: a stable, dependency-free hash for names (not for security).
fn fnv1a32(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

fn prometheus_container(ctx: &BuildContext<'_>, startup_budget: std::time::Duration) -> Container {
    let secrets = config::remote_write_secrets(ctx);
    let mut mounts = Vec::with_capacity(3 + secrets.len());
    mounts.push(mount(DATA_VOLUME, paths::DATA_DIR, false));
    mounts.push(mount(volumes::CONFIG, paths::CONFIG_DIR, true));
    if config::extra_scrape_secret(ctx).is_some() {
        mounts.push(mount(volumes::EXTRA_SCRAPE_SECRET, paths::EXTRA_SECRET_DIR, true));
    }
    if ctx.cluster.spec.selects_monitors() {
        mounts.push(mount(volumes::GENERATED, paths::GENERATED_DIR, true));
    }
    for secret in &secrets {
        mounts.push(mount(&remote_write_volume_name(secret), &concat(&[paths::SECRETS_DIR, "/", secret]), true));
    }
    let startup_failures = startup_failure_threshold(startup_budget);
    Container {
        name: containers::PROMETHEUS.to_owned(),
        image: Some(ctx.image.to_owned()),
        args: Some(prometheus_args(ctx)),
        env: Some(vec![field_env(POD_NAME_ENV, "metadata.name")]),
        // No port: Prometheus listens on the loopback address; the agent serves the pod's port, and the probes
        // go there by number (a named port would have to be this container's).
        startup_probe: Some(http_probe(
            "/-/ready",
            IntOrString::Int(ports::PROMETHEUS),
            STARTUP_PROBE_PERIOD_SECONDS,
            startup_failures,
        )),
        readiness_probe: Some(http_probe("/-/ready", IntOrString::Int(ports::PROMETHEUS), 5, 3)),
        liveness_probe: Some(http_probe("/-/healthy", IntOrString::Int(ports::PROMETHEUS), 5, 6)),
        resources: ctx.cluster.spec.resources.clone(),
        volume_mounts: Some(mounts),
        security_context: Some(container_security_context()),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Container::default()
    }
}

/// Failures of the startup probe that add up to the startup budget, rounded up; at least 1.
pub fn startup_failure_threshold(startup_budget: std::time::Duration) -> i32 {
    let period_ms = u128::from(STARTUP_PROBE_PERIOD_SECONDS.unsigned_abs()) * 1000;
    i32::try_from(startup_budget.as_millis().div_ceil(period_ms)).unwrap_or(i32::MAX).max(1)
}

fn agent_container(ctx: &BuildContext<'_>) -> Container {
    Container {
        name: containers::AGENT.to_owned(),
        image: Some(ctx.settings.agent_image.clone()),
        args: Some(
            [
                "agent".to_owned(),
                concat(&["--config-dir=", paths::CONFIG_DIR]),
                with_port("--prometheus-url=http://127.0.0.1:", ports::PROMETHEUS_LOCAL),
                with_port("--listen=0.0.0.0:", ports::AGENT),
                with_port("--proxy-listen=0.0.0.0:", ports::PROMETHEUS),
            ]
            .into_iter()
            .chain(ctx.cluster.spec.selects_monitors().then(|| concat(&["--expand-dir=", paths::GENERATED_DIR])))
            .collect(),
        ),
        env: Some(vec![field_env(POD_NAME_ENV, "metadata.name"), field_env("POD_NAMESPACE", "metadata.namespace")]),
        ports: Some(vec![
            container_port(ports::PROMETHEUS_NAME, ports::PROMETHEUS),
            container_port(ports::AGENT_NAME, ports::AGENT),
        ]),
        // Liveness only, and faster than Prometheus' (5 s x 6): Prometheus' probes pass through the agent, so a
        // hung agent must be restarted before it could get Prometheus restarted.
        liveness_probe: Some(http_probe("/healthz", IntOrString::String(ports::AGENT_NAME.to_owned()), 5, 3)),
        resources: Some(ResourceRequirements {
            requests: Some(super::map([
                ("cpu".to_owned(), Quantity("10m".to_owned())),
                ("memory".to_owned(), Quantity("32Mi".to_owned())),
            ])),
            limits: Some(super::map([("memory".to_owned(), Quantity("128Mi".to_owned()))])),
            ..ResourceRequirements::default()
        }),
        volume_mounts: Some(
            [mount(volumes::CONFIG, paths::CONFIG_DIR, true), mount(DATA_VOLUME, paths::DATA_DIR, false)]
                .into_iter()
                .chain(
                    ctx.cluster.spec.selects_monitors().then(|| mount(volumes::GENERATED, paths::GENERATED_DIR, false)),
                )
                .chain(super::backup::agent_backup_mounts(ctx))
                .collect(),
        ),
        security_context: Some(container_security_context()),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Container::default()
    }
}

fn thanos_container(ctx: &BuildContext<'_>) -> Container {
    let objstore = thanos_objstore_secret(ctx);
    let mut args = Vec::with_capacity(6);
    args.push("sidecar".to_owned());
    args.push(concat(&["--tsdb.path=", paths::DATA_DIR]));
    args.push(with_port("--prometheus.url=http://127.0.0.1:", ports::PROMETHEUS_LOCAL));
    args.push(with_port("--http-address=0.0.0.0:", ports::THANOS_HTTP));
    args.push(with_port("--grpc-address=0.0.0.0:", ports::THANOS_GRPC));
    let mut mounts = Vec::with_capacity(2);
    mounts.push(mount(DATA_VOLUME, paths::DATA_DIR, false));
    if objstore.is_some() {
        args.push(concat(&["--objstore.config-file=", paths::THANOS_OBJSTORE_DIR, "/", OBJSTORE_KEY]));
        mounts.push(mount(volumes::THANOS_OBJSTORE, paths::THANOS_OBJSTORE_DIR, true));
    }
    Container {
        name: containers::THANOS.to_owned(),
        image: Some(ctx.thanos_image.to_owned()),
        args: Some(args),
        ports: Some(vec![
            container_port(THANOS_HTTP_NAME, ports::THANOS_HTTP),
            container_port(THANOS_GRPC_NAME, ports::THANOS_GRPC),
        ]),
        readiness_probe: Some(http_probe("/-/ready", IntOrString::String(THANOS_HTTP_NAME.to_owned()), 5, 3)),
        volume_mounts: Some(mounts),
        security_context: Some(container_security_context()),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Container::default()
    }
}

/// Key of the Thanos object storage configuration in its Secret (seed).
pub const OBJSTORE_KEY: &str = "objstore.yml";

fn pod_volumes(ctx: &BuildContext<'_>) -> Vec<Volume> {
    let secrets = config::remote_write_secrets(ctx);
    let mut out = Vec::with_capacity(6 + secrets.len());
    out.push(Volume {
        name: volumes::CONFIG.to_owned(),
        config_map: Some(ConfigMapVolumeSource { name: ctx.config_map_name(), ..ConfigMapVolumeSource::default() }),
        ..Volume::default()
    });
    if let Some(empty) = &ctx.cluster.spec.storage.empty_dir {
        // The agent's write-ahead log, when it lives on the node (`spec.storage.emptyDir`).
        out.push(Volume {
            name: DATA_VOLUME.to_owned(),
            empty_dir: Some(k8s_openapi::api::core::v1::EmptyDirVolumeSource {
                medium: empty.medium.clone().filter(|m| !m.is_empty()),
                size_limit: Some(empty.size_limit.clone().unwrap_or_else(|| Quantity(ctx.storage_size.to_owned()))),
            }),
            ..Volume::default()
        });
    }
    for secret in &secrets {
        out.push(secret_volume(&remote_write_volume_name(secret), secret));
    }
    if let Some((secret, _key)) = config::extra_scrape_secret(ctx) {
        out.push(secret_volume(volumes::EXTRA_SCRAPE_SECRET, secret));
    }
    if let Some(objstore) = thanos_objstore_secret(ctx) {
        out.push(secret_volume(volumes::THANOS_OBJSTORE, objstore));
    }
    if ctx.cluster.spec.selects_monitors() {
        out.push(Volume {
            name: volumes::GENERATED.to_owned(),
            empty_dir: Some(k8s_openapi::api::core::v1::EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
    }
    out.extend(super::backup::backup_volumes(ctx));
    out
}

/// With monitor selectors: the agent expands the monitors' scrape configs from the ConfigMap (gzipped when large)
/// into the `generated` emptyDir, where `prometheus.yml` reads them; once before Prometheus starts (this init
/// container), then after every change (the sidecar, `--expand-dir`).
fn expand_init_container(ctx: &BuildContext<'_>) -> Option<Container> {
    if !ctx.cluster.spec.selects_monitors() {
        return None;
    }
    let agent = agent_container(ctx);
    Some(Container {
        name: containers::EXPAND_CONFIG.to_owned(),
        args: Some(vec![
            "agent".to_owned(),
            "--expand-only".to_owned(),
            concat(&["--config-dir=", paths::CONFIG_DIR]),
            concat(&["--expand-dir=", paths::GENERATED_DIR]),
        ]),
        volume_mounts: Some(vec![
            mount(volumes::CONFIG, paths::CONFIG_DIR, true),
            mount(volumes::GENERATED, paths::GENERATED_DIR, false),
        ]),
        image: agent.image,
        resources: agent.resources,
        security_context: agent.security_context,
        termination_message_policy: agent.termination_message_policy,
        ..Container::default()
    })
}

/// The Thanos object storage Secret, when Thanos is on and one is named.
fn thanos_objstore_secret<'a>(ctx: &BuildContext<'a>) -> Option<&'a str> {
    let secret = ctx.cluster.spec.thanos.object_storage_config_secret_ref.as_ref()?;
    (ctx.thanos_enabled() && !secret.name.is_empty()).then_some(secret.name.as_str())
}

/// A Secret volume. Optional (as in the seed): a missing Secret must not keep Prometheus from starting; the
/// operator reports it in the `Degraded` condition instead.
fn secret_volume(name: &str, secret: &str) -> Volume {
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

fn data_claim_template(ctx: &BuildContext<'_>) -> PersistentVolumeClaim {
    // Only the name in metadata, like the seed: claim templates are immutable, and labels here would make the
    // StatefulSet of a migrated seed cluster impossible to update.
    PersistentVolumeClaim {
        metadata: ObjectMeta { name: Some(DATA_VOLUME.to_owned()), ..ObjectMeta::default() },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            storage_class_name: ctx.cluster.spec.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(super::map([("storage".to_owned(), Quantity(ctx.storage_size.to_owned()))])),
                limits: None,
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

/// The spec's affinity; else, with more than one replica, a preferred anti-affinity that spreads replicas across
/// nodes (preferred, so a small cluster still schedules every replica).
fn affinity(ctx: &BuildContext<'_>) -> Option<Affinity> {
    if let Some(affinity) = &ctx.cluster.spec.affinity {
        return Some(affinity.clone());
    }
    if ctx.cluster.spec.replicas <= 1 {
        return None;
    }
    Some(Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                weight: 100,
                pod_affinity_term: PodAffinityTerm {
                    label_selector: Some(LabelSelector {
                        match_labels: Some(ctx.selector_labels()),
                        match_expressions: None,
                    }),
                    topology_key: "kubernetes.io/hostname".to_owned(),
                    ..PodAffinityTerm::default()
                },
            }]),
            required_during_scheduling_ignored_during_execution: None,
        }),
        ..Affinity::default()
    })
}

/// The pod security context: `spec.securityContext` merged field by field over the defaults (non-root `nobody`,
/// fsGroup 65534, RuntimeDefault seccomp). A field the user sets wins, even where it weakens a default
/// (`runAsNonRoot: false`, another seccomp profile); a field the user leaves unset keeps its default, so setting
/// `runAsUser` alone does not drop `runAsNonRoot` or the seccomp profile.
pub fn pod_security_context(user: Option<&PodSecurityContext>) -> PodSecurityContext {
    let defaults = default_pod_security_context();
    let Some(user) = user else { return defaults };
    PodSecurityContext {
        run_as_non_root: user.run_as_non_root.or(defaults.run_as_non_root),
        run_as_user: user.run_as_user.or(defaults.run_as_user),
        run_as_group: user.run_as_group.or(defaults.run_as_group),
        fs_group: user.fs_group.or(defaults.fs_group),
        seccomp_profile: user.seccomp_profile.clone().or(defaults.seccomp_profile),
        // The defaults set nothing else: every other field is the user's.
        ..user.clone()
    }
}

fn default_pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(NOBODY),
        run_as_group: Some(NOBODY),
        fs_group: Some(NOBODY),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_owned(), localhost_profile: None }),
        ..PodSecurityContext::default()
    }
}

fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), add: None }),
        ..SecurityContext::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".to_owned()),
                field_path: field_path.to_owned(),
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }
}

fn http_probe(path: &str, port: IntOrString, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port,
            scheme: Some("HTTP".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        timeout_seconds: Some(3),
        failure_threshold: Some(failure_threshold),
        success_threshold: Some(1),
        ..Probe::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_budget_is_rounded_up_to_whole_probe_periods() {
        let secs = std::time::Duration::from_secs;
        assert_eq!(startup_failure_threshold(secs(15 * 60)), 180);
        assert_eq!(startup_failure_threshold(secs(16)), 4);
        assert_eq!(startup_failure_threshold(secs(0)), 1);
        assert_eq!(startup_failure_threshold(secs(u64::MAX / 2000)), i32::MAX);
    }

    #[test]
    fn a_user_security_context_is_merged_over_the_defaults_field_by_field() {
        assert_eq!(pod_security_context(None), default_pod_security_context());
        let user = PodSecurityContext {
            run_as_user: Some(1000),
            fs_group: Some(2000),
            supplemental_groups: Some(vec![3000]),
            ..PodSecurityContext::default()
        };
        let merged = pod_security_context(Some(&user));
        assert_eq!(merged.run_as_user, Some(1000));
        assert_eq!(merged.fs_group, Some(2000));
        assert_eq!(merged.supplemental_groups, Some(vec![3000]));
        // Not set by the user: the hardened defaults stay.
        assert_eq!(merged.run_as_non_root, Some(true));
        assert_eq!(merged.run_as_group, Some(NOBODY));
        assert_eq!(merged.seccomp_profile.as_ref().map(|p| p.type_.as_str()), Some("RuntimeDefault"));

        // Set explicitly: the user wins, even where it weakens the defaults.
        let user = PodSecurityContext {
            run_as_non_root: Some(false),
            run_as_user: Some(0),
            seccomp_profile: Some(SeccompProfile { type_: "Unconfined".to_owned(), localhost_profile: None }),
            ..PodSecurityContext::default()
        };
        let merged = pod_security_context(Some(&user));
        assert_eq!(merged.run_as_non_root, Some(false));
        assert_eq!(merged.run_as_user, Some(0));
        assert_eq!(merged.seccomp_profile.map(|p| p.type_), Some("Unconfined".to_owned()));
        assert_eq!(merged.fs_group, Some(NOBODY));
    }

    #[test]
    fn remote_write_volume_names_are_valid_and_distinct() {
        assert_eq!(remote_write_volume_name("rw-creds"), "rw-secret-rw-creds");
        let dotted = remote_write_volume_name("rw.creds");
        assert!(is_dns1123_label(&dotted), "{dotted}");
        assert_ne!(dotted, remote_write_volume_name("rw-creds"));
        let long = remote_write_volume_name(&"a".repeat(253));
        assert!(is_dns1123_label(&long), "{long}");
        assert!(is_dns1123_label(&remote_write_volume_name("...")));
    }
}
