//! [`ValidCluster`]: a cluster that passed validation, with what validation read from it.

use std::time::Duration;

use crate::build::PrometheusVersion;
use crate::crd::PrometheusCluster;
use crate::crd::cluster::{DEFAULT_IMAGE, DEFAULT_RETENTION, DEFAULT_STORAGE_SIZE, DEFAULT_THANOS_IMAGE};

/// What validation read from a spec while checking it, so that nothing reads it again.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Read<'a> {
    /// `spec.storage.size` in nano-units; 0 for the default size.
    pub(super) storage_nanos: i128,
    /// `spec.additionalScrapeConfigs`, when set.
    pub(super) scrape_configs: Option<ScrapeConfigsSource<'a>>,
    /// `spec.selfHealing.startupBudget`.
    pub(super) startup_budget: Duration,
    /// The Prometheus version of `spec.image`'s tag, when it tells one.
    pub(super) version: Option<PrometheusVersion>,
}

/// Where a cluster's additional scrape configs come from (`spec.additionalScrapeConfigs`), as validated.
#[derive(Debug, Clone, PartialEq)]
pub enum ScrapeConfigsSource<'a> {
    /// `inline`: the scrape configs, each a mapping with a distinct `job_name` that is not the operator's own.
    Inline(Vec<serde_yaml::Mapping>),
    /// `secretRef`: the key of a Secret in the cluster's namespace, both valid names.
    Secret {
        /// The Secret's name.
        name: &'a str,
        /// The key holding the scrape configs.
        key: &'a str,
    },
}

/// A `PrometheusCluster` that passed [`validate::cluster`](super::cluster): its name can name every child, its
/// spec has no problem, and the values the builders need are read once, with the seed's defaults applied. Only
/// validation makes one, so what takes it needs no checks of its own: [`crate::build`] cannot fail on the spec.
#[derive(Debug, Clone)]
pub struct ValidCluster<'a> {
    cluster: &'a PrometheusCluster,
    name: &'a str,
    read: Read<'a>,
}

impl<'a> ValidCluster<'a> {
    pub(super) fn new(cluster: &'a PrometheusCluster, name: &'a str, read: Read<'a>) -> Self {
        Self { cluster, name, read }
    }

    /// The cluster as given (borrowed, never changed).
    pub fn cluster(&self) -> &'a PrometheusCluster {
        self.cluster
    }

    /// `metadata.name`.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// `metadata.namespace`, if it has one (a dry run's input may not).
    pub fn namespace(&self) -> Option<&'a str> {
        self.cluster.metadata.namespace.as_deref().filter(|n| !n.is_empty())
    }

    /// The Prometheus image: `spec.image`, or [`DEFAULT_IMAGE`].
    pub fn image(&self) -> &'a str {
        non_empty(&self.cluster.spec.image).unwrap_or(DEFAULT_IMAGE)
    }

    /// The Prometheus version read from the image's tag; `None` when the tag says nothing (`latest`, a digest).
    pub fn version(&self) -> Option<PrometheusVersion> {
        self.read.version
    }

    /// `--storage.tsdb.retention.time`: `spec.retention`, or [`DEFAULT_RETENTION`].
    pub fn retention(&self) -> &'a str {
        non_empty(&self.cluster.spec.retention).unwrap_or(DEFAULT_RETENTION)
    }

    /// The size of each data volume: `spec.storage.size`, or [`DEFAULT_STORAGE_SIZE`] when empty or zero (seed).
    pub fn storage_size(&self) -> &'a str {
        match non_empty(&self.cluster.spec.storage.size.0) {
            Some(size) if self.read.storage_nanos > 0 => size,
            _ => DEFAULT_STORAGE_SIZE,
        }
    }

    /// The Thanos sidecar's image: `spec.thanos.image`, or [`DEFAULT_THANOS_IMAGE`].
    pub fn thanos_image(&self) -> &'a str {
        non_empty(&self.cluster.spec.thanos.image).unwrap_or(DEFAULT_THANOS_IMAGE)
    }

    /// `spec.additionalScrapeConfigs`, when set.
    pub fn scrape_configs(&self) -> Option<&ScrapeConfigsSource<'a>> {
        self.read.scrape_configs.as_ref()
    }

    /// `spec.selfHealing.startupBudget`.
    pub fn startup_budget(&self) -> Duration {
        self.read.startup_budget
    }

    /// This cluster as `adjusted`, a copy whose `spec.storage` is what the existing volumes allow
    /// ([`crate::storage::StorageDecision::render`]): that storage comes from what the API server stored, so its
    /// size is rendered as it is.
    pub(crate) fn with_storage_of<'b>(&self, adjusted: &'b PrometheusCluster) -> ValidCluster<'b>
    where
        'a: 'b,
    {
        let storage_nanos = crate::quantity::parse_nanos(&adjusted.spec.storage.size.0).unwrap_or(1);
        ValidCluster { cluster: adjusted, name: self.name, read: Read { storage_nanos, ..self.read.clone() } }
    }
}

fn non_empty(s: &str) -> Option<&str> {
    let s = s.trim();
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use crate::crd::PrometheusCluster;
    use crate::crd::cluster::DEFAULT_STORAGE_SIZE;

    fn named(name: &str) -> PrometheusCluster {
        let mut pc = PrometheusCluster::new(name, crate::crd::PrometheusClusterSpec::default());
        pc.metadata.namespace = Some("default".to_owned());
        pc
    }

    #[test]
    fn empty_and_zero_sizes_get_the_seed_default() {
        for zero in ["0", "0Gi", "0.0"] {
            let mut pc = named("demo");
            pc.spec.storage.size.0 = zero.to_owned();
            let valid = super::super::cluster(&pc).unwrap_or_else(|e| panic!("{zero:?}: {e}"));
            assert_eq!(valid.storage_size(), DEFAULT_STORAGE_SIZE, "{zero:?}");
        }
        let mut pc = named("demo");
        pc.spec.storage.size.0 = "50Gi".to_owned();
        assert_eq!(super::super::cluster(&pc).unwrap().storage_size(), "50Gi");
        for bad in ["-1Gi", "lots"] {
            pc.spec.storage.size.0 = bad.to_owned();
            let errors = super::super::cluster(&pc).unwrap_err();
            assert_eq!(errors.errors()[0].field, "spec.storage.size", "{bad}");
        }
    }

    #[test]
    fn the_name_must_fit_every_child() {
        for bad in ["1demo", "Demo", "demo-", "de.mo", ""] {
            let errors = super::super::cluster(&named(bad)).unwrap_err();
            assert_eq!(errors.errors()[0].field, "metadata.name", "{bad:?}");
        }
        let long = "a".repeat(crate::build::MAX_NAME_LEN + 1);
        let errors = super::super::cluster(&named(&long)).unwrap_err();
        assert!(errors.to_string().contains("must be no more than 52 characters"), "{errors}");
        assert!(super::super::cluster(&named(&"a".repeat(crate::build::MAX_NAME_LEN))).is_ok());
        let mut nameless = named("demo");
        nameless.metadata.name = None;
        assert_eq!(super::super::cluster(&nameless).unwrap_err().errors()[0].field, "metadata.name");
    }

    #[test]
    fn inline_scrape_configs_must_be_a_list_of_distinct_jobs_and_are_kept() {
        let with_inline = |inline: &str| {
            let mut pc = named("demo");
            pc.spec.additional_scrape_configs =
                Some(crate::crd::AdditionalScrapeConfigs { inline: Some(inline.to_owned()), secret_ref: None });
            pc
        };
        let pc = with_inline("- job_name: a\n- job_name: b\n");
        let valid = super::super::cluster(&pc).unwrap();
        let Some(super::ScrapeConfigsSource::Inline(entries)) = valid.scrape_configs() else { panic!("inline") };
        assert_eq!(entries.len(), 2);
        for bad in [
            "job_name: a",
            "scrape_configs:\n- job_name: a",
            "- job_name: a\n- job_name: a\n",
            "- job_name: prometheus\n",
            "- static_configs: []\n",
            "- 1\n",
            "[",
        ] {
            let errors = super::super::cluster(&with_inline(bad)).expect_err(bad);
            assert!(errors.errors()[0].field.starts_with("spec.additionalScrapeConfigs.inline"), "{bad}: {errors}");
        }
    }
}
