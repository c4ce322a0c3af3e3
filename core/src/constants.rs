//! Names shared by the core and the adapters: label keys, annotations, the finalizer, the field manager,
//! container and volume names, ports, paths, condition types and reasons. Pure data.

/// API group of the custom resources.
pub const GROUP: &str = "observability.merlionos.org";

/// Finalizer put on every PrometheusCluster (seed name).
pub const FINALIZER: &str = "observability.merlionos.org/finalizer";

/// Field manager of every server-side apply the operator sends.
pub const FIELD_MANAGER: &str = "tsdb-operator";

/// Field manager of the backup scheduler's status writes (`status.backup`, `status.lastBackupTime`, the
/// `BackupHealthy` condition), so that they never fight the cluster controller's.
pub const BACKUP_FIELD_MANAGER: &str = "tsdb-operator-backup";

/// Label keys put on every child object.
pub mod labels {
    /// `app.kubernetes.io/name`, always `prometheus` (seed).
    pub const NAME: &str = "app.kubernetes.io/name";
    /// Value of [`NAME`].
    pub const NAME_VALUE: &str = "prometheus";
    /// `app.kubernetes.io/instance`: the PrometheusCluster's name (seed selector).
    pub const INSTANCE: &str = "app.kubernetes.io/instance";
    /// `app.kubernetes.io/managed-by`.
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// Value of [`MANAGED_BY`].
    pub const MANAGED_BY_VALUE: &str = "tsdb-operator";
    /// Label the StatefulSet controller puts on each pod with the pod's name.
    pub const STATEFULSET_POD_NAME: &str = "statefulset.kubernetes.io/pod-name";
    /// On the discovery Role and RoleBinding the operator puts in namespaces other than the cluster's own (where
    /// no ownerReference can point at the cluster): the cluster's UID.
    pub const DISCOVERY_FOR: &str = "observability.merlionos.org/discovery-for";
}

/// Annotation keys.
pub mod annotations {
    /// On a member PrometheusCluster: `"true"` keeps a ClusterSet from overlaying its backup template (seed).
    pub const CLUSTERSET_OPT_OUT: &str = "observability.merlionos.org/clusterset-opt-out";
    /// Stamped on members whose backup a ClusterSet overlaid; informational (seed).
    pub const CLUSTERSET: &str = "observability.merlionos.org/clusterset";
    /// On each child: hash of the object the operator last applied, so that removed fields are noticed.
    pub const APPLIED_HASH: &str = "observability.merlionos.org/applied-hash";
    /// On a PrometheusCluster: a new value (any string, for example a timestamp) asks for one backup now.
    pub const BACKUP_NOW: &str = "observability.merlionos.org/backup-now";
    /// On the pod template: hash of the rendered configuration (informational; config changes are hot-reloaded).
    pub const CONFIG_HASH: &str = "observability.merlionos.org/config-hash";
}

/// Container names.
pub mod containers {
    /// The Prometheus container.
    pub const PROMETHEUS: &str = "prometheus";
    /// The agent sidecar (config reload, backups).
    pub const AGENT: &str = "agent";
    /// The Thanos sidecar.
    pub const THANOS: &str = "thanos-sidecar";
    /// The init container that expands the monitors' scrape configs before Prometheus starts.
    pub const EXPAND_CONFIG: &str = "expand-config";
}

/// Volume names.
pub mod volumes {
    /// The data volume claim template.
    pub const DATA: &str = "data";
    /// The rendered configuration (ConfigMap).
    pub const CONFIG: &str = "config";
    /// The Thanos object storage Secret.
    pub const THANOS_OBJSTORE: &str = "thanos-objstore";
    /// The additional scrape configs Secret.
    pub const EXTRA_SCRAPE_SECRET: &str = "extra-scrape-secret";
    /// Prefix of the volumes of remote-write Secrets (`rw-secret-<secret name>`).
    pub const REMOTE_WRITE_SECRET_PREFIX: &str = "rw-secret-";
    /// Files the agent writes from the ConfigMap (the monitors' scrape configs, decompressed): an emptyDir.
    pub const GENERATED: &str = "generated";
}

/// Ports.
pub mod ports {
    /// Prometheus' web port as the pod serves it (seed): the agent listens here and forwards to Prometheus
    /// everything but the admin and lifecycle APIs (see [`crate::web`]).
    pub const PROMETHEUS: i32 = 9090;
    /// Name of the Prometheus port.
    pub const PROMETHEUS_NAME: &str = "http";
    /// Where Prometheus itself listens: on the pod's loopback address only, so its admin and lifecycle APIs are
    /// reachable from inside the pod only (the agent's backups and reloads).
    pub const PROMETHEUS_LOCAL: i32 = 9089;
    /// Agent HTTP port (metrics, health, backup requests).
    pub const AGENT: i32 = 9091;
    /// Name of the agent port.
    pub const AGENT_NAME: &str = "agent";
    /// Thanos sidecar HTTP port.
    pub const THANOS_HTTP: i32 = 10902;
    /// Thanos sidecar gRPC port.
    pub const THANOS_GRPC: i32 = 10901;
}

/// Paths inside the pod.
pub mod paths {
    /// Where the rendered configuration is mounted.
    pub const CONFIG_DIR: &str = "/etc/prometheus/config";
    /// The Prometheus configuration file.
    pub const CONFIG_FILE: &str = "/etc/prometheus/config/prometheus.yml";
    /// The additional scrape configs rendered from `inline`.
    pub const INLINE_SCRAPE_FILE: &str = "/etc/prometheus/config/additional-scrape-configs.yml";
    /// Where the agent writes the files it expands from the ConfigMap (the monitors' scrape configs).
    pub const GENERATED_DIR: &str = "/etc/prometheus/generated";
    /// Where the additional scrape configs Secret is mounted.
    pub const EXTRA_SECRET_DIR: &str = "/etc/prometheus/extra-secret";
    /// Where remote-write Secrets are mounted (`<dir>/<secret name>/<key>`), as the seed's config points.
    pub const SECRETS_DIR: &str = "/etc/prometheus/secrets";
    /// The TSDB data directory.
    pub const DATA_DIR: &str = "/prometheus";
    /// Where the Thanos object storage Secret is mounted.
    pub const THANOS_OBJSTORE_DIR: &str = "/etc/thanos/objstore";
}

/// Condition types.
pub mod conditions {
    /// All desired replicas are ready.
    pub const AVAILABLE: &str = "Available";
    /// The cluster is moving toward the spec (creating, scaling, rolling).
    pub const PROGRESSING: &str = "Progressing";
    /// Something the cluster needs is missing or broken.
    pub const DEGRADED: &str = "Degraded";
    /// `spec.paused` is set: the operator changes nothing.
    pub const PAUSED: &str = "Paused";
    /// The last backup succeeded (set by the backup controller).
    pub const BACKUP_HEALTHY: &str = "BackupHealthy";
    /// All members of a ClusterSet are Active.
    pub const READY: &str = "Ready";
    /// Self-healing is replacing a replica (set by the healer).
    pub const HEALING: &str = "Healing";
    /// Self-healing does nothing: disabled, paused, or the circuit breaker is open (set by the healer).
    pub const HEALING_SUSPENDED: &str = "HealingSuspended";
    /// The ServiceMonitors and PodMonitors the cluster selects are all scraped (only with a monitor selector).
    pub const MONITORS_ACCEPTED: &str = "MonitorsAccepted";
    /// Every rule of the PrometheusRules the cluster selects is loaded (only with `ruleSelector`).
    pub const RULES_ACCEPTED: &str = "RulesAccepted";
    /// The condition types the cluster controller's decision ([`crate::decide::decide_cluster`]) writes; the
    /// others belong to the backup controller and the healer, and a status write keeps them as they are.
    pub const WRITTEN_BY_CLUSTER_DECISION: [&str; 6] =
        [AVAILABLE, PROGRESSING, DEGRADED, PAUSED, MONITORS_ACCEPTED, RULES_ACCEPTED];
}

/// Condition reasons (CamelCase).
pub mod reasons {
    /// Every selected monitor endpoint is scraped.
    pub const MONITORS_RENDERED: &str = "MonitorsRendered";
    /// Some selected monitors or endpoints are not scraped; the message names each field and why.
    pub const MONITORS_REFUSED: &str = "MonitorsRefused";
    /// A monitor selector is set but prometheus-operator's CRD of that kind is not installed.
    pub const MONITOR_CRD_MISSING: &str = "MonitorCrdMissing";
    /// Every rule of the selected PrometheusRules is in the rule files.
    pub const RULES_LOADED: &str = "RulesLoaded";
    /// Some rules, groups or PrometheusRules are left out; the message names each field and why.
    pub const RULES_REFUSED: &str = "RulesRefused";
    /// `ruleSelector` is set but prometheus-operator's PrometheusRule CRD is not installed.
    pub const RULE_CRD_MISSING: &str = "RuleCrdMissing";
    /// All replicas are ready.
    pub const ALL_REPLICAS_READY: &str = "AllReplicasReady";
    /// Some replicas are not ready yet.
    pub const REPLICAS_NOT_READY: &str = "ReplicasNotReady";
    /// The StatefulSet does not exist yet.
    pub const CREATING: &str = "Creating";
    /// The replica count is changing.
    pub const SCALING: &str = "Scaling";
    /// Pods are being replaced with a new template.
    pub const ROLLING_UPDATE: &str = "RollingUpdate";
    /// Nothing left to do.
    pub const RECONCILED: &str = "Reconciled";
    /// Nothing is wrong.
    pub const AS_EXPECTED: &str = "AsExpected";
    /// The spec fails validation.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// A referenced Secret or key does not exist.
    pub const MISSING_SECRET: &str = "MissingSecret";
    /// A container cannot start (image pull, crash loop, config error).
    pub const CONTAINER_FAILING: &str = "ContainerFailing";
    /// The agent reported that Prometheus rejected its configuration.
    pub const CONFIG_RELOAD_FAILED: &str = "ConfigReloadFailed";
    /// `spec.paused` is true.
    pub const PAUSED: &str = "Paused";
    /// `spec.paused` is false.
    pub const NOT_PAUSED: &str = "NotPaused";
    /// Self-healing evicted a stuck replica; its replacement is not ready yet.
    pub const REPLACING_REPLICA: &str = "ReplacingReplica";
    /// Most replicas of the cluster fail their probes at once (circuit breaker).
    pub const MOST_REPLICAS_FAILING: &str = "MostReplicasFailing";
    /// Most probed replicas of all clusters fail their probes at once (circuit breaker).
    pub const MOST_PODS_FAILING: &str = "MostPodsFailing";
    /// `spec.selfHealing.enabled` is false.
    pub const HEALING_DISABLED: &str = "HealingDisabled";
    /// A storage change that cannot be carried out (shrinking, another class, no expansion support).
    pub const STORAGE_CHANGE_REFUSED: &str = "StorageChangeRefused";
    /// Volume claims are being expanded.
    pub const RESIZING_VOLUMES: &str = "ResizingVolumes";
    /// An object with a child's name exists and belongs to someone else.
    pub const NAME_CONFLICT: &str = "NameConflict";
    /// An apply of a child failed; the operator retries it.
    pub const APPLY_FAILED: &str = "ApplyFailed";
    /// A reconcile failed before anything could be applied (a read refused by RBAC, the API server unreachable);
    /// the operator retries it.
    pub const RECONCILE_FAILED: &str = "ReconcileFailed";
}
