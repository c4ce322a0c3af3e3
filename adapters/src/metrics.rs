//! Operator metrics in the Prometheus text format (prometheus-client), keeping the seed's names
//! (`tsdb_operator_cluster_phase`, `tsdb_operator_backup_total`, `tsdb_operator_failover_total`) and adding
//! reconcile duration and errors by category. I/O: none here; [`crate::http`] serves them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tsdb_operator_core::crd::Phase;

/// Labels of the per-cluster phase gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// Namespace of the cluster.
    pub namespace: String,
    /// Name of the cluster.
    pub cluster: String,
    /// One of the phases.
    pub phase: String,
}

/// Labels of per-cluster counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    /// Namespace of the cluster.
    pub namespace: String,
    /// Name of the cluster.
    pub cluster: String,
}

/// Labels of the backup counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackupLabels {
    /// Namespace of the cluster.
    pub namespace: String,
    /// Name of the cluster.
    pub cluster: String,
    /// `success` or `error`.
    pub result: String,
}

/// Labels of controller metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `prometheuscluster` or `prometheusclusterset`.
    pub controller: String,
}

/// Labels of reconcile errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The controller.
    pub controller: String,
    /// The error's category (`Error::category`).
    pub category: String,
}

/// All operator metrics and their registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    /// `tsdb_operator_cluster_phase`: 1 for the current phase, 0 for the others.
    pub cluster_phase: Family<PhaseLabels, Gauge>,
    /// `tsdb_operator_backup_total{result}`.
    pub backup_total: Family<BackupLabels, Counter>,
    /// `tsdb_operator_failover_total`.
    pub failover_total: Family<ClusterLabels, Counter>,
    /// `tsdb_operator_reconcile_duration_seconds`.
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    /// `tsdb_operator_reconcile_errors_total{category}`.
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// `tsdb_operator_reconcile_total`.
    pub reconcile_total: Family<ControllerLabels, Counter>,
    /// `tsdb_operator_leader`: 1 while this process holds the leader lease.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let cluster_phase = Family::<PhaseLabels, Gauge>::default();
        let backup_total = Family::<BackupLabels, Counter>::default();
        let failover_total = Family::<ClusterLabels, Counter>::default();
        let reconcile_duration = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
        });
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_total = Family::<ControllerLabels, Counter>::default();
        let leader = Gauge::default();
        registry.register(
            "tsdb_operator_cluster_phase",
            "Phase of each PrometheusCluster (1 for the current phase)",
            cluster_phase.clone(),
        );
        registry.register("tsdb_operator_backup", "Backups by result", backup_total.clone());
        registry.register("tsdb_operator_failover", "Replicas replaced by self-healing", failover_total.clone());
        registry.register(
            "tsdb_operator_reconcile_duration_seconds",
            "Duration of reconciles",
            reconcile_duration.clone(),
        );
        registry.register(
            "tsdb_operator_reconcile_errors",
            "Failed reconciles by error category",
            reconcile_errors.clone(),
        );
        registry.register("tsdb_operator_reconcile", "Reconciles run", reconcile_total.clone());
        registry.register("tsdb_operator_leader", "1 while this process is the leader", leader.clone());
        Self {
            registry: Arc::new(Mutex::new(registry)),
            cluster_phase,
            backup_total,
            failover_total,
            reconcile_duration,
            reconcile_errors,
            reconcile_total,
            leader,
        }
    }

    /// Sets the phase gauge of a cluster: 1 for `phase`, 0 for every other phase.
    pub fn set_phase(&self, namespace: &str, cluster: &str, phase: Phase) {
        for p in Phase::ALL {
            let labels = PhaseLabels {
                namespace: namespace.to_owned(),
                cluster: cluster.to_owned(),
                phase: p.as_str().to_owned(),
            };
            self.cluster_phase.get_or_create(&labels).set(i64::from(p == phase));
        }
    }

    /// Removes every series of a deleted cluster (seed: `metrics.DeleteCluster`).
    pub fn delete_cluster(&self, namespace: &str, cluster: &str) {
        for p in Phase::ALL {
            self.cluster_phase.remove(&PhaseLabels {
                namespace: namespace.to_owned(),
                cluster: cluster.to_owned(),
                phase: p.as_str().to_owned(),
            });
        }
        for result in ["success", "error"] {
            self.backup_total.remove(&BackupLabels {
                namespace: namespace.to_owned(),
                cluster: cluster.to_owned(),
                result: result.to_owned(),
            });
        }
        self.failover_total.remove(&ClusterLabels { namespace: namespace.to_owned(), cluster: cluster.to_owned() });
    }

    /// Starts a controller's reconcile counters at zero, its error counter for each of `categories` too, so that
    /// the first error is an increase alerts can see.
    pub fn init_controller(&self, controller: &str, categories: &[&str]) {
        let labels = ControllerLabels { controller: controller.to_owned() };
        drop(self.reconcile_total.get_or_create(&labels));
        for category in categories {
            let labels = ErrorLabels { controller: controller.to_owned(), category: (*category).to_owned() };
            drop(self.reconcile_errors.get_or_create(&labels));
        }
    }

    /// Starts a cluster's backup counters at zero (while its backups are enabled).
    pub fn init_backup(&self, namespace: &str, cluster: &str) {
        for result in ["success", "error"] {
            drop(self.backup_total.get_or_create(&BackupLabels {
                namespace: namespace.to_owned(),
                cluster: cluster.to_owned(),
                result: result.to_owned(),
            }));
        }
    }

    /// Records one reconcile.
    pub fn observe_reconcile(&self, controller: &str, took: Duration, error_category: Option<&str>) {
        let labels = ControllerLabels { controller: controller.to_owned() };
        self.reconcile_total.get_or_create(&labels).inc();
        self.reconcile_duration.get_or_create(&labels).observe(took.as_secs_f64());
        if let Some(category) = error_category {
            self.reconcile_errors
                .get_or_create(&ErrorLabels { controller: controller.to_owned(), category: category.to_owned() })
                .inc();
        }
    }

    /// Registers more metrics (other components register their own).
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        let mut registry = self.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut registry)
    }

    /// Encodes every metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        encode_registry(&self.registry)
    }
}

/// Encodes a shared registry in the OpenMetrics text format.
pub fn encode_registry(registry: &Mutex<Registry>) -> String {
    let registry = registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut out = String::new();
    // Encoding into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_gauge_has_one_for_current_phase_and_is_removed_on_delete() {
        let m = Metrics::new();
        m.set_phase("ns", "demo", Phase::Active);
        let text = m.encode();
        assert!(
            text.contains(r#"tsdb_operator_cluster_phase{namespace="ns",cluster="demo",phase="Active"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"tsdb_operator_cluster_phase{namespace="ns",cluster="demo",phase="Scaling"} 0"#));
        m.delete_cluster("ns", "demo");
        assert!(!m.encode().contains(r#"cluster="demo""#));
    }

    #[test]
    fn seed_counter_names_are_kept() {
        let m = Metrics::new();
        m.backup_total
            .get_or_create(&BackupLabels { namespace: "a".into(), cluster: "b".into(), result: "success".into() })
            .inc();
        m.failover_total.get_or_create(&ClusterLabels { namespace: "a".into(), cluster: "b".into() }).inc();
        let text = m.encode();
        assert!(text.contains("tsdb_operator_backup_total{"));
        assert!(text.contains("tsdb_operator_failover_total{"));
    }

    #[test]
    fn counters_alerts_use_start_at_zero() {
        let m = Metrics::new();
        m.init_backup("ns", "demo");
        m.init_controller("prometheuscluster", &["ApplyChild", "WriteStatus"]);
        let text = m.encode();
        for line in [
            r#"tsdb_operator_backup_total{namespace="ns",cluster="demo",result="error"} 0"#,
            r#"tsdb_operator_backup_total{namespace="ns",cluster="demo",result="success"} 0"#,
            r#"tsdb_operator_reconcile_errors_total{controller="prometheuscluster",category="ApplyChild"} 0"#,
            r#"tsdb_operator_reconcile_total{controller="prometheuscluster"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
    }
}
