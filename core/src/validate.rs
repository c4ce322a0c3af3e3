//! The validate step: checks a `PrometheusCluster` or `PrometheusClusterSet` spec before anything is built.
//! Pure: no I/O; the same input always gives the same errors, in the same order.
//!
//! Errors are modelled on Kubernetes field errors (`k8s.io/apimachinery/pkg/util/validation/field`): each
//! names the field path (`spec.remoteWrite[0].url`), a kind (`Required value`, `Invalid value`, ...), the bad
//! value where it helps, and a lowercase message that says what is wrong and how to fix it. They render as the
//! API server renders them (`spec.replicas: Invalid value: 0: must be >= 1`), and [`FieldErrors::to_status`]
//! gives the `Status` an admission webhook returns.
//!
//! # Guarantees
//! - Every error is reported at once, in spec order; validation never stops at the first problem.
//! - Every message of the Go seed's webhook is kept word for word (docs/seed-compatibility.md).
//! - It never panics, whatever the input (checked by property tests with arbitrary strings).

pub mod bytes;
pub mod names;
mod valid;

use valid::Read;
pub use valid::{ScrapeConfigsSource, ValidCluster};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::core::v1::{LocalObjectReference, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ListMeta, Status, StatusCause, StatusDetails};

use crate::constants::GROUP;
use crate::crd::cluster::{DEFAULT_IMAGE, DEFAULT_REPLICA_LABEL, limits};
use crate::crd::{
    AdditionalScrapeConfigs, BackupSpec, PrometheusCluster, PrometheusClusterSetSpec, PrometheusClusterSpec,
    RemoteWriteSpec, SelfHealingSpec,
};
use crate::schedule::check_schedule;

/// The external label the operator sets to the cluster's name.
pub const CLUSTER_LABEL: &str = "cluster";
/// The scrape job the operator renders for Prometheus itself; inline scrape configs may not reuse it.
pub const OWN_JOB_NAME: &str = "prometheus";
/// Values longer than this many characters are shortened in error messages.
pub const MAX_SHOWN_VALUE: usize = 256;

/// The kind of a field error, as Kubernetes names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FieldErrorKind {
    /// A required value is missing.
    Required,
    /// The value is malformed or out of range.
    Invalid,
    /// The field may not be set (in this combination).
    Forbidden,
    /// The value repeats one that must be unique.
    Duplicate,
    /// The value is longer than allowed.
    TooLong,
    /// The value is not one of a fixed set.
    NotSupported,
}

impl FieldErrorKind {
    /// The `reason` of a Kubernetes `StatusCause` (`FieldValueInvalid`, ...).
    pub fn reason(self) -> &'static str {
        match self {
            Self::Required => "FieldValueRequired",
            Self::Invalid => "FieldValueInvalid",
            Self::Forbidden => "FieldValueForbidden",
            Self::Duplicate => "FieldValueDuplicate",
            Self::TooLong => "FieldValueTooLong",
            Self::NotSupported => "FieldValueNotSupported",
        }
    }

    /// The words the API server prints (`Invalid value`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Required => "Required value",
            Self::Invalid => "Invalid value",
            Self::Forbidden => "Forbidden",
            Self::Duplicate => "Duplicate value",
            Self::TooLong => "Too long",
            Self::NotSupported => "Unsupported value",
        }
    }

    /// Whether the API server prints the bad value for this kind.
    fn shows_value(self) -> bool {
        matches!(self, Self::Invalid | Self::Duplicate | Self::NotSupported)
    }
}

impl fmt::Display for FieldErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rejected value of a field error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadValue {
    /// A number, printed as is (`0`).
    Int(i64),
    /// A string, printed quoted (`"15x"`); shortened to [`MAX_SHOWN_VALUE`] characters.
    Str(String),
    /// A value too large or too sensitive to show, printed as `"<elided>"` like the seed does.
    Elided,
}

impl BadValue {
    fn str(s: &str) -> Self {
        match s.char_indices().nth(MAX_SHOWN_VALUE) {
            Some((cut, _)) => Self::Str(format!("{}...", &s[..cut])),
            None => Self::Str(s.to_owned()),
        }
    }
}

impl fmt::Display for BadValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(i) => write!(f, "{i}"),
            Self::Str(s) => write!(f, "{s:?}"),
            Self::Elided => f.write_str("\"<elided>\""),
        }
    }
}

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {}", self.body())]
pub struct FieldError {
    /// Path of the field, like `spec.remoteWrite[0].url`.
    pub field: String,
    /// What kind of problem it is.
    pub kind: FieldErrorKind,
    /// The rejected value, when it is shown.
    pub value: Option<BadValue>,
    /// What is wrong and how to fix it (lowercase).
    pub message: String,
}

impl FieldError {
    /// A required value is missing.
    pub fn required(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), kind: FieldErrorKind::Required, value: None, message: message.into() }
    }

    /// A string value is invalid.
    pub fn invalid(field: impl Into<String>, value: &str, message: impl Into<String>) -> Self {
        Self::with_value(field, FieldErrorKind::Invalid, BadValue::str(value), message)
    }

    /// A value of any kind is invalid.
    pub fn invalid_value(field: impl Into<String>, value: BadValue, message: impl Into<String>) -> Self {
        Self::with_value(field, FieldErrorKind::Invalid, value, message)
    }

    /// The field may not be set.
    pub fn forbidden(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), kind: FieldErrorKind::Forbidden, value: None, message: message.into() }
    }

    /// The value repeats one that must be unique.
    pub fn duplicate(field: impl Into<String>, value: &str, message: impl Into<String>) -> Self {
        Self::with_value(field, FieldErrorKind::Duplicate, BadValue::str(value), message)
    }

    /// The value is longer than `max` bytes.
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::TooLong,
            value: None,
            message: format!("may not be more than {max} bytes"),
        }
    }

    /// The value is not one of `supported`.
    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let list = supported.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
        Self::with_value(field, FieldErrorKind::NotSupported, BadValue::str(value), format!("supported values: {list}"))
    }

    fn with_value(field: impl Into<String>, kind: FieldErrorKind, value: BadValue, message: impl Into<String>) -> Self {
        Self { field: field.into(), kind, value: Some(value), message: message.into() }
    }

    /// The error without the field path, as Kubernetes puts it in a `StatusCause` message
    /// (`Invalid value: 0: must be >= 1`).
    pub fn body(&self) -> String {
        let mut out = self.kind.as_str().to_owned();
        if let (true, Some(value)) = (self.kind.shows_value(), &self.value) {
            out.push_str(": ");
            out.push_str(&value.to_string());
        }
        if !self.message.is_empty() {
            out.push_str(": ");
            out.push_str(&self.message);
        }
        out
    }

    /// The Kubernetes `StatusCause` of this error.
    pub fn to_status_cause(&self) -> StatusCause {
        StatusCause {
            field: Some(self.field.clone()),
            message: Some(self.body()),
            reason: Some(self.kind.reason().to_owned()),
        }
    }
}

/// All problems found in one spec, in spec order. Displays like a Kubernetes error list: one error as is,
/// several as `[first, second]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct FieldErrors(Vec<FieldError>);

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "{one}"),
            many => {
                f.write_str("[")?;
                for (i, e) in many.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{e}")?;
                }
                f.write_str("]")
            }
        }
    }
}

impl FieldErrors {
    /// The errors, in spec order.
    pub fn errors(&self) -> &[FieldError] {
        &self.0
    }

    /// Iterates over the errors, in spec order.
    pub fn iter(&self) -> std::slice::Iter<'_, FieldError> {
        self.0.iter()
    }

    /// The errors, by value.
    pub fn into_vec(self) -> Vec<FieldError> {
        self.0
    }

    /// How many errors there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The Kubernetes `StatusCause` of each error, as `details.causes` of an Invalid status lists them.
    pub fn to_status_causes(&self) -> Vec<StatusCause> {
        self.0.iter().map(FieldError::to_status_cause).collect()
    }

    /// The `Status` the API server returns for an invalid object (`apierrors.NewInvalid`): code 422, reason
    /// `Invalid`, message `PrometheusCluster.observability.merlionos.org "name" is invalid: ...` and one cause
    /// per error. `kind` is the object's kind, `name` its name.
    pub fn to_status(&self, kind: &str, name: &str) -> Status {
        let message = if self.is_empty() {
            format!("{kind}.{GROUP} {name:?} is invalid")
        } else {
            format!("{kind}.{GROUP} {name:?} is invalid: {self}")
        };
        Status {
            code: Some(422),
            details: Some(StatusDetails {
                causes: Some(self.to_status_causes()),
                group: Some(GROUP.to_owned()),
                kind: Some(kind.to_owned()),
                name: Some(name.to_owned()),
                retry_after_seconds: None,
                uid: None,
            }),
            message: Some(message),
            metadata: ListMeta::default(),
            reason: Some("Invalid".to_owned()),
            status: Some("Failure".to_owned()),
        }
    }
}

impl From<Vec<FieldError>> for FieldErrors {
    fn from(errors: Vec<FieldError>) -> Self {
        Self(errors)
    }
}

impl IntoIterator for FieldErrors {
    type Item = FieldError;
    type IntoIter = std::vec::IntoIter<FieldError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a FieldErrors {
    type Item = &'a FieldError;
    type IntoIter = std::slice::Iter<'a, FieldError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

fn finish(errors: Vec<FieldError>) -> Result<(), FieldErrors> {
    if errors.is_empty() { Ok(()) } else { Err(FieldErrors(errors)) }
}

/// Validates a `PrometheusCluster`: its name (it names every child) and its spec. `Ok` holds the cluster with
/// what validation read from it, which is what [`crate::build`] and the decisions take; `Err` holds every problem
/// found, the name's first.
pub fn cluster(cluster: &PrometheusCluster) -> Result<ValidCluster<'_>, FieldErrors> {
    let mut errs = Vec::new();
    let name = check_cluster_name(&mut errs, cluster.metadata.name.as_deref());
    let read = check_spec(&mut errs, &cluster.spec);
    match (name, read) {
        (Some(name), Some(read)) if errs.is_empty() => Ok(ValidCluster::new(cluster, name, read)),
        _ => Err(FieldErrors(errs)),
    }
}

/// Validates a `PrometheusCluster` spec alone (an admission review of an update, where the name cannot change);
/// `Err` holds every problem found. [`cluster`] checks the name as well and keeps what it read.
pub fn validate_cluster(spec: &PrometheusClusterSpec) -> Result<(), FieldErrors> {
    let mut errs = Vec::new();
    let _ = check_spec(&mut errs, spec);
    finish(errs)
}

/// Checks a cluster's `metadata.name` as [`cluster`] does (an admission review of a create).
///
/// # Errors
/// The problem, naming `metadata.name`.
pub fn cluster_name(name: &str) -> Result<(), FieldError> {
    let mut errs = Vec::new();
    match check_cluster_name(&mut errs, Some(name)) {
        Some(_) => Ok(()),
        None => Err(errs.remove(0)),
    }
}

/// `metadata.name`, when it can name the cluster's children: a Service (a DNS-1123 label starting with a letter)
/// and a StatefulSet whose pods carry `controller-revision-hash: <name>-<hash>` (at most 63 characters).
fn check_cluster_name<'a>(errs: &mut Vec<FieldError>, name: Option<&'a str>) -> Option<&'a str> {
    const FIELD: &str = "metadata.name";
    let max = crate::build::MAX_NAME_LEN;
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        errs.push(FieldError::required(FIELD, "the PrometheusCluster needs a name"));
        return None;
    };
    let problem = if name.len() > max {
        format!("must be no more than {max} characters: StatefulSet pod labels need the room; choose a shorter name")
    } else if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        "must start with a lowercase letter: it names a Service".to_owned()
    } else if !crate::build::is_dns1123_label(name) {
        "must consist of lowercase letters, digits and '-', and end with a letter or digit: it names a Service"
            .to_owned()
    } else {
        return Some(name);
    };
    errs.push(FieldError::invalid(FIELD, name, problem));
    None
}

/// Checks every field of `spec` into `errs`; what the builders read from it, when the checks that read it passed
/// (the caller still looks at `errs`).
fn check_spec<'a>(errs_out: &mut Vec<FieldError>, spec: &'a PrometheusClusterSpec) -> Option<Read<'a>> {
    let mut errs = Vec::new();
    if spec.replicas < 1 {
        errs.push(FieldError::invalid_value("spec.replicas", BadValue::Int(spec.replicas.into()), "must be >= 1"));
    } else if spec.replicas > limits::MAX_REPLICAS {
        errs.push(FieldError::invalid_value(
            "spec.replicas",
            BadValue::Int(spec.replicas.into()),
            format!(
                "must be <= {}: every replica holds all the data; split the targets across clusters instead",
                limits::MAX_REPLICAS
            ),
        ));
    }
    check_image(&mut errs, "spec.image", &spec.image, DEFAULT_IMAGE);
    let version = crate::build::version::PrometheusVersion::from_image(&spec.image);
    if let Some(version) = version
        && let Some(reason) = crate::build::version::unsupported(
            version,
            spec.additional_scrape_configs.is_some() || spec.selects_monitors(),
        )
    {
        errs.push(FieldError::invalid("spec.image", &spec.image, format!("is Prometheus {version}, {reason}")));
    }
    check_retention(&mut errs, spec);
    let storage_nanos = check_storage(&mut errs, spec);
    if let Some(empty) = &spec.storage.empty_dir {
        check_empty_dir(&mut errs, spec, empty);
    }
    if let Some(resources) = &spec.resources {
        check_resources(&mut errs, "spec.resources", resources);
    }
    if spec.backup.enabled {
        check_backup(&mut errs, "spec.backup", &spec.backup, "bucket is required when backup is enabled");
    }
    if let Some(restore) = &spec.restore {
        check_restore(&mut errs, restore);
    }
    check_remote_write(&mut errs, &spec.remote_write);
    if spec.thanos.enabled {
        check_image(&mut errs, "spec.thanos.image", &spec.thanos.image, crate::crd::cluster::DEFAULT_THANOS_IMAGE);
        if let Some(r) = &spec.thanos.object_storage_config_secret_ref {
            check_secret_ref(&mut errs, "spec.thanos.objectStorageConfigSecretRef", r, "objstore.yml");
        }
    }
    let scrape_configs =
        spec.additional_scrape_configs.as_ref().map(|extra| check_additional_scrape_configs(&mut errs, extra));
    check_interval(&mut errs, "spec.scrapeInterval", &spec.scrape_interval);
    check_interval(&mut errs, "spec.evaluationInterval", &spec.evaluation_interval);
    check_external_labels(&mut errs, spec);
    check_node_selector(&mut errs, &spec.node_selector);
    let selectors = [
        ("spec.serviceMonitorSelector", &spec.service_monitor_selector),
        ("spec.serviceMonitorNamespaceSelector", &spec.service_monitor_namespace_selector),
        ("spec.podMonitorSelector", &spec.pod_monitor_selector),
        ("spec.podMonitorNamespaceSelector", &spec.pod_monitor_namespace_selector),
        ("spec.ruleSelector", &spec.rule_selector),
        ("spec.ruleNamespaceSelector", &spec.rule_namespace_selector),
    ];
    for (field, selector) in selectors {
        if let Some(selector) = selector {
            check_label_selector(&mut errs, field, selector);
        }
    }
    let object_names = [
        ("spec.priorityClassName", &spec.priority_class_name, "use the name of an existing PriorityClass"),
        (
            "spec.serviceAccountName",
            &spec.service_account_name,
            "use the name of a ServiceAccount in the cluster's namespace",
        ),
    ];
    for (field, value, fix) in object_names {
        if let Some(name) = value.as_deref().filter(|n| !n.is_empty())
            && let Err(reason) = names::check_dns1123_subdomain(name)
        {
            errs.push(FieldError::invalid(field, name, format!("{reason}: {fix}")));
        }
    }
    let startup_budget = check_self_healing(&mut errs, &spec.self_healing);
    check_rule_groups(&mut errs, &spec.rule_groups);
    if let Some(alerting) = &spec.alerting {
        check_alerting(&mut errs, alerting);
    }
    if spec.mode == crate::crd::Mode::Agent {
        check_agent(&mut errs, spec);
    }
    let read = || {
        Some(Read {
            storage_nanos: storage_nanos?,
            scrape_configs: match scrape_configs {
                None => None,
                Some(source) => Some(source?),
            },
            startup_budget: startup_budget?,
            version,
        })
    };
    let read = if errs.is_empty() { read() } else { None };
    errs_out.extend(errs);
    read
}

/// Validates a `PrometheusClusterSet` spec; `Err` holds every problem found.
pub fn validate_cluster_set(spec: &PrometheusClusterSetSpec) -> Result<(), FieldErrors> {
    let mut errs = Vec::new();
    if let Some(selector) = &spec.cluster_selector {
        check_label_selector(&mut errs, "spec.clusterSelector", selector);
    }
    if let Some(selector) = &spec.namespace_selector {
        check_label_selector(&mut errs, "spec.namespaceSelector", selector);
    }
    if let Some(template) = &spec.backup_template {
        // The template turns backups on for members, so it is checked as an enabled backup.
        check_backup(
            &mut errs,
            "spec.backupTemplate",
            template,
            "bucket is required: the template enables backups on its members",
        );
    }
    finish(errs)
}

fn check_image(errs: &mut Vec<FieldError>, field: &str, image: &str, example: &str) {
    if image.is_empty() {
        errs.push(FieldError::required(field, format!("set an image such as {example}, or remove the field")));
    } else if let Err(reason) = names::check_image_reference(image) {
        errs.push(FieldError::invalid(
            field,
            image,
            format!("not a valid image reference: {reason}; use a reference such as {example}"),
        ));
    }
}

/// Describes a Prometheus duration problem; `None` when the value is fine.
fn duration_problem(value: &str, allow_zero: bool, example: &str) -> Option<String> {
    match crate::duration::parse(value) {
        Ok(d) if d.is_zero() && !allow_zero => Some(format!("must be greater than 0, for example {example}")),
        Ok(_) => None,
        Err(crate::duration::Error::Overflow { .. }) => {
            Some("is too large: Prometheus durations must be shorter than 292 years".to_owned())
        }
        Err(_) => Some(format!(
            "must be a duration such as {example}: a number and a unit (ms, s, m, h, d, w, y), units largest first, \
             like 1h30m"
        )),
    }
}

/// Checks a duration field; the duration when it is valid.
fn check_duration(
    errs: &mut Vec<FieldError>,
    field: &str,
    value: &str,
    allow_zero: bool,
    example: &str,
) -> Option<std::time::Duration> {
    if value.is_empty() {
        errs.push(FieldError::required(field, format!("set a duration such as {example}")));
        return None;
    }
    match duration_problem(value, allow_zero, example) {
        Some(problem) => {
            errs.push(FieldError::invalid(field, value, problem));
            None
        }
        None => crate::duration::parse(value).ok(),
    }
}

fn check_interval(errs: &mut Vec<FieldError>, field: &str, value: &str) {
    let _ = check_duration(errs, field, value, false, "30s");
}

fn check_retention(errs: &mut Vec<FieldError>, spec: &PrometheusClusterSpec) {
    let size = spec.retention_size.as_deref().filter(|s| !s.is_empty());
    if spec.retention.is_empty() {
        errs.push(FieldError::required("spec.retention", "set a duration such as 15d"));
    } else if let Some(problem) = duration_problem(&spec.retention, true, "15d") {
        errs.push(FieldError::invalid("spec.retention", &spec.retention, problem));
    } else if size.is_none() && crate::duration::parse(&spec.retention).is_ok_and(|d| d.is_zero()) {
        errs.push(FieldError::invalid(
            "spec.retention",
            &spec.retention,
            "must be greater than 0 unless retentionSize is set: set a duration such as 15d",
        ));
    }
    if let Some(size) = size {
        match bytes::parse_base2_bytes(size) {
            Ok(0) => errs.push(FieldError::invalid(
                "spec.retentionSize",
                size,
                "must be greater than 0: remove retentionSize to keep blocks regardless of their size",
            )),
            Ok(_) => {}
            Err(e) => errs.push(FieldError::invalid("spec.retentionSize", size, e.to_string())),
        }
    }
}

/// Checks `spec.storage`; the size in nano-units when it is valid (0 for the default).
fn check_storage(errs: &mut Vec<FieldError>, spec: &PrometheusClusterSpec) -> Option<i128> {
    let size = &spec.storage.size.0;
    let parsed = match crate::quantity::parse_nanos(size) {
        // Zero means the default size, as in the seed.
        Ok(n) if n >= 0 => Some(n),
        Ok(_) => {
            errs.push(FieldError::invalid(
                "spec.storage.size",
                size,
                "must not be negative: set a size such as 20Gi, or 0 for the default of 20Gi",
            ));
            None
        }
        Err(_) => {
            errs.push(FieldError::invalid(
                "spec.storage.size",
                size,
                "must be a Kubernetes quantity such as 20Gi, 500Gi or 1Ti",
            ));
            None
        }
    };
    if let Some(class) = spec.storage.storage_class_name.as_deref().filter(|c| !c.is_empty())
        && let Err(reason) = names::check_dns1123_subdomain(class)
    {
        errs.push(FieldError::invalid(
            "spec.storage.storageClassName",
            class,
            format!("{reason}: use the name of an existing StorageClass"),
        ));
    }
    parsed
}

type Quantities = BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>;

/// Checks the names and amounts of `requests` or `limits`; returns the valid amounts in nano-units.
fn parse_quantities<'a>(
    errs: &mut Vec<FieldError>,
    field: &str,
    map: Option<&'a Quantities>,
) -> BTreeMap<&'a str, (i128, &'a str)> {
    let mut parsed = BTreeMap::new();
    for (name, quantity) in map.into_iter().flatten() {
        if let Err(reason) = names::check_qualified_name(name) {
            errs.push(FieldError::invalid(field, name, format!("resource name {reason}")));
        }
        let path = format!("{field}[{name}]");
        match crate::quantity::parse_nanos(&quantity.0) {
            Ok(n) if n < 0 => errs.push(FieldError::invalid(path, &quantity.0, "must be greater than or equal to 0")),
            Ok(n) => {
                parsed.insert(name.as_str(), (n, quantity.0.as_str()));
            }
            Err(_) => errs.push(FieldError::invalid(
                path,
                &quantity.0,
                "must be a Kubernetes quantity such as 500m, 2, 512Mi or 4Gi",
            )),
        }
    }
    parsed
}

fn check_resources(errs: &mut Vec<FieldError>, field: &str, resources: &ResourceRequirements) {
    let limits = parse_quantities(errs, &format!("{field}.limits"), resources.limits.as_ref());
    let requests = parse_quantities(errs, &format!("{field}.requests"), resources.requests.as_ref());
    for (name, (request, request_text)) in &requests {
        if let Some((limit, limit_text)) = limits.get(name)
            && request > limit
        {
            errs.push(FieldError::invalid(
                format!("{field}.requests[{name}]"),
                request_text,
                format!(
                    "must be less than or equal to {name} limit of {limit_text}: lower the request or raise the limit"
                ),
            ));
        }
    }
}

fn check_backup(errs: &mut Vec<FieldError>, field: &str, backup: &BackupSpec, bucket_required: &str) {
    if backup.bucket.is_empty() {
        errs.push(FieldError::required(format!("{field}.bucket"), bucket_required));
    } else if backup.bucket.contains('/') || backup.bucket.chars().any(|c| c.is_whitespace() || c.is_control()) {
        errs.push(FieldError::invalid(
            format!("{field}.bucket"),
            &backup.bucket,
            "must be a bare bucket name such as tsdb-backups, without s3:// or a path: put any path in prefix",
        ));
    }
    if !backup.schedule.is_empty()
        && let Err(e) = check_schedule(&backup.schedule)
    {
        errs.push(FieldError::invalid(
            format!("{field}.schedule"),
            &backup.schedule,
            format!("not a valid cron expression: {e}"),
        ));
    }
    if backup.prefix.starts_with('/') {
        errs.push(FieldError::invalid(
            format!("{field}.prefix"),
            &backup.prefix,
            "must not start with '/': object keys would begin with an empty segment; write it without the leading \
             slash, like prod/cluster-a",
        ));
    }
    if !backup.endpoint.is_empty()
        && let Err(reason) = names::check_http_url(&backup.endpoint)
    {
        errs.push(FieldError::invalid(
            format!("{field}.endpoint"),
            &backup.endpoint,
            format!("must be an http or https URL such as https://minio.example.com:9000: {reason}"),
        ));
    }
    if let Some(r) = &backup.credentials_secret_ref {
        check_secret_ref(
            errs,
            &format!("{field}.credentialsSecretRef"),
            r,
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        );
    }
    if let Some(jitter) = &backup.jitter {
        let _ = check_duration(errs, &format!("{field}.jitter"), jitter, true, "10m");
    }
    if let Some(retention) = &backup.retention {
        if let Some(keep) = retention.keep_last
            && keep < 1
        {
            errs.push(FieldError::invalid_value(
                format!("{field}.retention.keepLast"),
                BadValue::Int(keep.into()),
                "must be >= 1: the newest backup is always kept; remove keepLast to keep every backup",
            ));
        } else if let Some(keep) = retention.keep_last
            && keep > limits::MAX_KEEP_LAST
        {
            errs.push(FieldError::invalid_value(
                format!("{field}.retention.keepLast"),
                BadValue::Int(keep.into()),
                format!("must be <= {}: remove keepLast to keep every backup", limits::MAX_KEEP_LAST),
            ));
        }
        if let Some(max_age) = &retention.max_age {
            let _ = check_duration(errs, &format!("{field}.retention.maxAge"), max_age, false, "30d");
        }
    }
}

fn check_restore(errs: &mut Vec<FieldError>, restore: &crate::crd::RestoreSpec) {
    let source = &restore.source;
    if source.cluster.is_empty() {
        errs.push(FieldError::required("spec.restore.source.cluster", "name the cluster whose backup to restore"));
    }
    if source.bucket.is_empty() {
        errs.push(FieldError::required("spec.restore.source.bucket", "name the bucket that holds the backup"));
    }
    if let Some(id) = restore.backup_id.as_deref().filter(|id| !id.is_empty())
        && crate::backup::manifest::check_id(id).is_err()
    {
        errs.push(FieldError::invalid(
            "spec.restore.backupId",
            id,
            "must be a backup id such as 20260413T001900Z (see tsdb-ctl list); leave it empty for the newest",
        ));
    }
    if !source.endpoint.is_empty()
        && let Err(reason) = names::check_http_url(&source.endpoint)
    {
        errs.push(FieldError::invalid(
            "spec.restore.source.endpoint",
            &source.endpoint,
            format!("must be an http or https URL such as https://minio.example.com:9000: {reason}"),
        ));
    }
    if let Some(r) = &source.credentials_secret_ref {
        check_secret_ref(
            errs,
            "spec.restore.source.credentialsSecretRef",
            r,
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        );
    }
}

/// Checks a reference to a whole Secret; `keys` says which keys the Secret must hold, for the message.
fn check_secret_ref(errs: &mut Vec<FieldError>, field: &str, reference: &LocalObjectReference, keys: &str) {
    check_secret_name(errs, &format!("{field}.name"), &reference.name, &format!("name the Secret that holds {keys}"));
}

fn check_secret_name(errs: &mut Vec<FieldError>, field: &str, name: &str, required: &str) {
    if name.is_empty() {
        errs.push(FieldError::required(field, required));
    } else if let Err(reason) = names::check_dns1123_subdomain(name) {
        errs.push(FieldError::invalid(field, name, format!("{reason}: use the name of a Secret in this namespace")));
    }
}

fn check_remote_write(errs: &mut Vec<FieldError>, entries: &[RemoteWriteSpec]) {
    let mut names_seen: BTreeSet<&str> = BTreeSet::new();
    let mut unnamed_seen: Vec<&RemoteWriteSpec> = Vec::new();
    for (i, rw) in entries.iter().enumerate() {
        let field = format!("spec.remoteWrite[{i}]");
        if rw.url.is_empty() {
            errs.push(FieldError::required(format!("{field}.url"), "url is required"));
        } else if let Err(reason) = names::check_http_url(&rw.url) {
            errs.push(FieldError::invalid(
                format!("{field}.url"),
                &rw.url,
                format!("must be an http or https URL such as https://receiver.example.com/api/v1/write: {reason}"),
            ));
        }
        if rw.name.is_empty() {
            if unnamed_seen.iter().any(|other| other.url == rw.url && same_credentials(other, rw)) {
                errs.push(FieldError::duplicate(
                    format!("{field}.url"),
                    &rw.url,
                    "another remote write entry has the same url and credentials: remove it or give the entries \
                     distinct names",
                ));
            }
            unnamed_seen.push(rw);
        } else if !names_seen.insert(rw.name.as_str()) {
            errs.push(FieldError::duplicate(
                format!("{field}.name"),
                &rw.name,
                "remote write names must be unique: rename one of the entries",
            ));
        }
        if let Some(r) = &rw.basic_auth_secret_ref {
            check_secret_ref(errs, &format!("{field}.basicAuthSecretRef"), r, "username and password");
        }
        if let Some(r) = &rw.bearer_token_secret_ref {
            check_secret_ref(errs, &format!("{field}.bearerTokenSecretRef"), r, "token");
        }
        if rw.basic_auth_secret_ref.is_some() && rw.bearer_token_secret_ref.is_some() {
            errs.push(FieldError::forbidden(
                format!("{field}.bearerTokenSecretRef"),
                "basicAuthSecretRef and bearerTokenSecretRef are mutually exclusive: keep one of them",
            ));
        }
        if let Some(oauth2) = &rw.oauth2 {
            check_remote_write_oauth2(errs, &format!("{field}.oauth2"), oauth2);
            if rw.basic_auth_secret_ref.is_some() || rw.bearer_token_secret_ref.is_some() {
                errs.push(FieldError::forbidden(
                    format!("{field}.oauth2"),
                    "oauth2 cannot be used with basicAuthSecretRef or bearerTokenSecretRef: keep one of them",
                ));
            }
        }
        check_remote_write_options(errs, &field, rw);
    }
}

/// Headers Prometheus sets itself and refuses in `headers`.
const RESERVED_HEADERS: [&str; 14] = [
    "authorization",
    "host",
    "content-encoding",
    "content-length",
    "content-type",
    "user-agent",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "www-authenticate",
    "accept-encoding",
    "x-prometheus-remote-write-version",
    "x-prometheus-scrape-timeout-seconds",
];

fn check_remote_write_options(errs: &mut Vec<FieldError>, field: &str, rw: &RemoteWriteSpec) {
    if let Some(tls) = &rw.tls_config {
        check_remote_write_tls(errs, &format!("{field}.tlsConfig"), tls);
    }
    for (name, value) in &rw.headers {
        let token =
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            errs.push(FieldError::invalid(
                format!("{field}.headers"),
                name,
                "is not an HTTP header name: use letters, digits and -",
            ));
        } else if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            errs.push(FieldError::forbidden(
                format!("{field}.headers.{name}"),
                "Prometheus sets this header itself: use basicAuthSecretRef or bearerTokenSecretRef for credentials",
            ));
        }
        if value.contains(['\r', '\n']) {
            errs.push(FieldError::invalid_value(
                format!("{field}.headers.{name}"),
                BadValue::Elided,
                "a header value cannot contain a line break",
            ));
        }
    }
    for (j, rule) in rw.write_relabel_configs.iter().enumerate() {
        if let Err(reason) = crate::monitors::check_relabel(rule) {
            errs.push(FieldError::invalid_value(format!("{field}.writeRelabelConfigs[{j}]"), BadValue::Elided, reason));
        }
    }
    if let Some(queue) = &rw.queue_config {
        let durations = [
            ("batchSendDeadline", &queue.batch_send_deadline, "5s"),
            ("minBackoff", &queue.min_backoff, "30ms"),
            ("maxBackoff", &queue.max_backoff, "5s"),
            ("sampleAgeLimit", &queue.sample_age_limit, "1h"),
        ];
        for (name, value, example) in durations {
            if let Some(value) = value {
                let _ = check_duration(errs, &format!("{field}.queueConfig.{name}"), value, false, example);
            }
        }
        if let (Some(min), Some(max)) = (queue.min_shards, queue.max_shards)
            && min > max
        {
            errs.push(FieldError::invalid_value(
                format!("{field}.queueConfig.minShards"),
                BadValue::Int(min.into()),
                format!("must not exceed maxShards ({max})"),
            ));
        }
    }
    if let Some(interval) = rw.metadata_config.as_ref().and_then(|m| m.send_interval.as_ref()) {
        let _ = check_duration(errs, &format!("{field}.metadataConfig.sendInterval"), interval, false, "1m");
    }
}

/// What agent mode cannot have: it keeps no TSDB (no backups, Thanos or restore) and forwards everything.
fn check_agent(errs: &mut Vec<FieldError>, spec: &PrometheusClusterSpec) {
    if spec.remote_write.is_empty() {
        errs.push(FieldError::required(
            "spec.remoteWrite",
            "an agent forwards everything it scrapes: give at least one remote write endpoint, or set mode: Server",
        ));
    }
    let refused = [
        ("spec.backup.enabled", spec.backup.enabled, "backups"),
        ("spec.thanos.enabled", spec.thanos.enabled, "the Thanos sidecar"),
        ("spec.restore", spec.restore.is_some(), "a restore"),
        ("spec.ruleSelector", spec.rule_selector.is_some(), "rules"),
        ("spec.ruleGroups", !spec.rule_groups.is_empty(), "rules"),
        ("spec.alerting", spec.alerting.is_some(), "alerting"),
    ];
    for (field, set, what) in refused {
        if set {
            errs.push(FieldError::forbidden(
                field,
                format!("an agent keeps no TSDB, so {what} cannot apply: remove it, or set mode: Server"),
            ));
        }
    }
    if let Some(version) = crate::build::version::PrometheusVersion::from_image(&spec.image)
        && version < crate::build::version::MIN_AGENT
    {
        errs.push(FieldError::invalid(
            "spec.image",
            &spec.image,
            format!("is Prometheus {version}, older than 2.32, which agent mode needs: use 2.32 or later"),
        ));
    }
}

/// `remoteWrite[].oauth2`: a client ID, a Secret key Kubernetes accepts, an http(s) token URL.
fn check_remote_write_oauth2(errs: &mut Vec<FieldError>, field: &str, oauth2: &crate::crd::cluster::RemoteWriteOAuth2) {
    if oauth2.client_id.is_empty() {
        errs.push(FieldError::required(format!("{field}.clientId"), "the OAuth 2.0 client ID is required"));
    }
    let (secret, key) = oauth2.secret_key();
    check_secret_name(errs, &format!("{field}.clientSecret.name"), secret, "name a Secret in the cluster's namespace");
    if let Err(reason) = names::check_secret_key(key) {
        errs.push(FieldError::invalid(format!("{field}.clientSecret.key"), key, reason));
    }
    if let Err(reason) = names::check_http_url(&oauth2.token_url) {
        errs.push(FieldError::invalid(
            format!("{field}.tokenUrl"),
            &oauth2.token_url,
            format!("must be an http or https URL such as https://auth.example.com/oauth2/token: {reason}"),
        ));
    }
}

/// `remoteWrite[].tlsConfig`: Secret names and keys Kubernetes accepts, a client certificate with its key.
fn check_remote_write_tls(errs: &mut Vec<FieldError>, field: &str, tls: &crate::crd::cluster::RemoteWriteTls) {
    for (sub, secret, key) in tls.secret_keys() {
        check_secret_name(errs, &format!("{field}.{sub}.name"), secret, "name a Secret in the cluster's namespace");
        if let Err(reason) = names::check_secret_key(key) {
            errs.push(FieldError::invalid(format!("{field}.{sub}.key"), key, reason));
        }
    }
    if tls.cert.is_some() != tls.key_secret.is_some() {
        errs.push(FieldError::required(
            format!("{field}.{}", if tls.cert.is_some() { "keySecret" } else { "cert" }),
            "a client certificate needs both cert and keySecret",
        ));
    }
}

/// `spec.storage.emptyDir`: agents only, a medium Kubernetes knows, a size limit that parses.
fn check_empty_dir(
    errs: &mut Vec<FieldError>,
    spec: &PrometheusClusterSpec,
    empty: &crate::crd::cluster::EmptyDirStorage,
) {
    if spec.mode != crate::crd::Mode::Agent {
        errs.push(FieldError::forbidden(
            "spec.storage.emptyDir",
            "only an agent may keep its data on an emptyDir: a server would lose its TSDB whenever a pod is deleted; \
             remove it, or set mode: Agent",
        ));
    }
    if let Some(medium) = empty.medium.as_deref().filter(|m| !m.is_empty() && *m != "Memory") {
        errs.push(FieldError::not_supported("spec.storage.emptyDir.medium", medium, &["", "Memory"]));
    }
    if let Some(limit) = &empty.size_limit
        && crate::quantity::parse_nanos(&limit.0).is_err()
    {
        errs.push(FieldError::invalid(
            "spec.storage.emptyDir.sizeLimit",
            &limit.0,
            "is not a quantity such as 2Gi or 500Mi",
        ));
    }
}

/// Every rule of `spec.ruleGroups` as Prometheus checks it ([`crate::monitors::rules`]), named by its field.
fn check_rule_groups(errs: &mut Vec<FieldError>, groups: &[crate::monitors::RuleGroup]) {
    if groups.is_empty() {
        return;
    }
    let (_, refused) =
        crate::monitors::rules::render_rule_file("PrometheusCluster", "spec.ruleGroups", String::new(), groups);
    for r in refused {
        errs.push(FieldError::invalid_value(r.field, BadValue::Elided, r.reason));
    }
}

/// `spec.alerting.alertmanagers`: names Kubernetes accepts, a port, and values Prometheus accepts.
fn check_alerting(errs: &mut Vec<FieldError>, alerting: &crate::crd::cluster::AlertingSpec) {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    for (i, am) in alerting.alertmanagers.iter().enumerate() {
        let field = format!("spec.alerting.alertmanagers[{i}]");
        if let Err(reason) = names::check_dns1123_label(&am.name) {
            errs.push(FieldError::invalid(
                format!("{field}.name"),
                &am.name,
                format!("{reason}: use the Service's name"),
            ));
        }
        if let Some(ns) = am.namespace.as_deref().filter(|n| !n.is_empty())
            && let Err(reason) = names::check_dns1123_label(ns)
        {
            errs.push(FieldError::invalid(format!("{field}.namespace"), ns, reason));
        }
        match &am.port {
            IntOrString::Int(p) if !(1..=65535).contains(p) => errs.push(FieldError::invalid_value(
                format!("{field}.port"),
                BadValue::Int((*p).into()),
                "must be a port number between 1 and 65535, or the name of the Service's port",
            )),
            IntOrString::String(name) if names::check_dns1123_label(name).is_err() || name.len() > 15 => {
                errs.push(FieldError::invalid(
                    format!("{field}.port"),
                    name,
                    "must be the name of the Service's port (at most 15 lowercase letters, digits and '-'), or its number",
                ));
            }
            _ => {}
        }
        if let Some(scheme) = am.scheme.as_deref().filter(|s| !matches!(*s, "http" | "https")) {
            errs.push(FieldError::not_supported(format!("{field}.scheme"), scheme, &["http", "https"]));
        }
        if let Some(version) = am.api_version.as_deref().filter(|v| *v != "v2") {
            errs.push(FieldError::not_supported(format!("{field}.apiVersion"), version, &["v2"]));
        }
        if let Some(prefix) = am.path_prefix.as_deref().filter(|p| !p.is_empty() && !p.starts_with('/')) {
            errs.push(FieldError::invalid(format!("{field}.pathPrefix"), prefix, "must start with '/'"));
        }
        if let Some(timeout) = &am.timeout {
            let _ = check_duration(errs, &format!("{field}.timeout"), timeout, false, "10s");
        }
    }
}

fn same_credentials(a: &RemoteWriteSpec, b: &RemoteWriteSpec) -> bool {
    a.basic_auth_secret_ref == b.basic_auth_secret_ref
        && a.bearer_token_secret_ref == b.bearer_token_secret_ref
        && a.oauth2 == b.oauth2
}

/// Checks `spec.additionalScrapeConfigs`; where the scrape configs come from when it is valid.
fn check_additional_scrape_configs<'a>(
    errs: &mut Vec<FieldError>,
    extra: &'a AdditionalScrapeConfigs,
) -> Option<ScrapeConfigsSource<'a>> {
    const FIELD: &str = "spec.additionalScrapeConfigs";
    // As in the seed, an empty inline string counts as unset.
    let inline = extra.inline.as_deref().filter(|s| !s.is_empty());
    let before = errs.len();
    match (inline, &extra.secret_ref) {
        (Some(_), Some(_)) => {
            errs.push(FieldError::invalid_value(
                FIELD,
                BadValue::Elided,
                "inline and secretRef are mutually exclusive",
            ));
        }
        (None, None) => {
            errs.push(FieldError::required(FIELD, "set inline or secretRef when additionalScrapeConfigs is present"));
        }
        _ => {}
    }
    let entries = inline.and_then(|inline| check_inline_scrape_configs(errs, inline));
    if let Some(selector) = &extra.secret_ref {
        let field = format!("{FIELD}.secretRef");
        check_secret_name(errs, &format!("{field}.name"), &selector.name, "secretRef.name is required");
        if selector.key.is_empty() {
            errs.push(FieldError::required(format!("{field}.key"), "secretRef.key is required"));
        } else if let Err(reason) = names::check_secret_key(&selector.key) {
            errs.push(FieldError::invalid(format!("{field}.key"), &selector.key, reason));
        }
    }
    if errs.len() > before {
        return None;
    }
    match (entries, &extra.secret_ref) {
        (Some(entries), None) => Some(ScrapeConfigsSource::Inline(entries)),
        (None, Some(secret)) => Some(ScrapeConfigsSource::Secret { name: &secret.name, key: &secret.key }),
        _ => None,
    }
}

/// Checks the inline scrape configs; the entries when they are valid.
fn check_inline_scrape_configs(errs: &mut Vec<FieldError>, inline: &str) -> Option<Vec<serde_yaml::Mapping>> {
    const FIELD: &str = "spec.additionalScrapeConfigs.inline";
    // The seed unmarshals into `[]map[string]any`: a list whose items are mappings or null.
    let entries: Vec<Option<serde_yaml::Mapping>> = match serde_yaml::from_str::<Option<Vec<_>>>(inline) {
        Ok(entries) => entries.unwrap_or_default(),
        Err(e) => {
            errs.push(FieldError::invalid_value(
                FIELD,
                BadValue::Elided,
                format!("must be a YAML list of scrape_config entries: {e}"),
            ));
            return None;
        }
    };
    let before = errs.len();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for (i, entry) in entries.iter().enumerate() {
        let field = format!("{FIELD}[{i}].job_name");
        match entry.as_ref().and_then(|m| m.get("job_name")) {
            None | Some(serde_yaml::Value::Null) => {
                errs.push(FieldError::required(field, "every scrape config needs a job_name"));
            }
            Some(serde_yaml::Value::String(name)) if name.is_empty() => {
                errs.push(FieldError::required(field, "every scrape config needs a job_name"));
            }
            Some(serde_yaml::Value::String(name)) if name == OWN_JOB_NAME => {
                errs.push(FieldError::invalid(
                    field,
                    name,
                    "is the operator's own scrape job for Prometheus itself: choose another job_name",
                ));
            }
            Some(serde_yaml::Value::String(name)) => {
                if !seen.insert(name.clone()) {
                    errs.push(FieldError::duplicate(field, name, "job names must be unique: rename one of the jobs"));
                }
            }
            Some(_) => {
                errs.push(FieldError::invalid_value(field, BadValue::Elided, "job_name must be a string"));
            }
        }
    }
    // Every entry has a job_name, so none is null.
    (errs.len() == before).then(|| entries.into_iter().flatten().collect())
}

fn check_external_labels(errs: &mut Vec<FieldError>, spec: &PrometheusClusterSpec) {
    let replica_label = match spec.replica_external_label_name.as_deref() {
        None => DEFAULT_REPLICA_LABEL,
        Some(name) => {
            const FIELD: &str = "spec.replicaExternalLabelName";
            if let Err(reason) = names::check_label_name(name) {
                errs.push(FieldError::invalid(FIELD, name, reason));
            } else if name.starts_with("__") {
                errs.push(FieldError::invalid(
                    FIELD,
                    name,
                    "label names starting with __ are reserved for Prometheus' internal use: choose another name",
                ));
            } else if name == CLUSTER_LABEL {
                errs.push(FieldError::invalid(
                    FIELD,
                    name,
                    "cluster is the label the operator sets to the cluster's name: choose another name, like replica",
                ));
            }
            name
        }
    };
    for key in spec.external_labels.keys() {
        const FIELD: &str = "spec.externalLabels";
        if let Err(reason) = names::check_label_name(key) {
            errs.push(FieldError::invalid(FIELD, key, reason));
        } else if key.starts_with("__") {
            errs.push(FieldError::invalid(
                FIELD,
                key,
                "label names starting with __ are reserved for Prometheus' internal use: rename the label",
            ));
        } else if key == CLUSTER_LABEL {
            errs.push(FieldError::forbidden(
                format!("{FIELD}[{key}]"),
                "the operator sets the cluster label to the cluster's name: remove it from externalLabels",
            ));
        } else if key == replica_label {
            errs.push(FieldError::forbidden(
                format!("{FIELD}[{key}]"),
                format!(
                    "the operator sets the {key} label to the pod name to tell replicas apart: remove it from \
                     externalLabels, or set replicaExternalLabelName to another name"
                ),
            ));
        }
    }
}

fn check_labels(errs: &mut Vec<FieldError>, field: &str, labels: &BTreeMap<String, String>) {
    for (key, value) in labels {
        if let Err(reason) = names::check_qualified_name(key) {
            errs.push(FieldError::invalid(field, key, format!("label key {reason}")));
        }
        if let Err(reason) = names::check_label_value(value) {
            errs.push(FieldError::invalid(format!("{field}[{key}]"), value, format!("label value {reason}")));
        }
    }
}

fn check_node_selector(errs: &mut Vec<FieldError>, selector: &BTreeMap<String, String>) {
    check_labels(errs, "spec.nodeSelector", selector);
}

/// Checks `spec.selfHealing`; the startup budget when it is valid.
fn check_self_healing(errs: &mut Vec<FieldError>, healing: &SelfHealingSpec) -> Option<std::time::Duration> {
    const FIELD: &str = "spec.selfHealing";
    let _ = check_duration(errs, &format!("{FIELD}.probeInterval"), &healing.probe_interval, false, "30s");
    if healing.failure_threshold < 1 {
        errs.push(FieldError::invalid_value(
            format!("{FIELD}.failureThreshold"),
            BadValue::Int(healing.failure_threshold.into()),
            "must be >= 1: the number of failed probes in a row before a replica is replaced",
        ));
    } else if healing.failure_threshold > limits::MAX_FAILURE_THRESHOLD {
        errs.push(FieldError::invalid_value(
            format!("{FIELD}.failureThreshold"),
            BadValue::Int(healing.failure_threshold.into()),
            format!(
                "must be <= {}: set selfHealing.enabled to false to never replace replicas",
                limits::MAX_FAILURE_THRESHOLD
            ),
        ));
    }
    let startup_budget = check_duration(errs, &format!("{FIELD}.startupBudget"), &healing.startup_budget, false, "15m");
    let _ = check_duration(errs, &format!("{FIELD}.cooldown"), &healing.cooldown, true, "5m");
    startup_budget
}

const SELECTOR_OPERATORS: [&str; 4] = ["DoesNotExist", "Exists", "In", "NotIn"];

fn check_label_selector(errs: &mut Vec<FieldError>, field: &str, selector: &LabelSelector) {
    if let Some(labels) = &selector.match_labels {
        check_labels(errs, &format!("{field}.matchLabels"), labels);
    }
    for (i, req) in selector.match_expressions.iter().flatten().enumerate() {
        let path = format!("{field}.matchExpressions[{i}]");
        if req.key.is_empty() {
            errs.push(FieldError::required(format!("{path}.key"), "set the label key to match"));
        } else if let Err(reason) = names::check_qualified_name(&req.key) {
            errs.push(FieldError::invalid(format!("{path}.key"), &req.key, format!("label key {reason}")));
        }
        let values = req.values.as_deref().unwrap_or_default();
        match req.operator.as_str() {
            "In" | "NotIn" => {
                if values.is_empty() {
                    errs.push(FieldError::required(
                        format!("{path}.values"),
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    ));
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    errs.push(FieldError::forbidden(
                        format!("{path}.values"),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    ));
                }
            }
            other => errs.push(FieldError::not_supported(format!("{path}.operator"), other, &SELECTOR_OPERATORS)),
        }
        for (j, value) in values.iter().enumerate() {
            if let Err(reason) = names::check_label_value(value) {
                errs.push(FieldError::invalid(format!("{path}.values[{j}]"), value, format!("label value {reason}")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{BackupRetentionSpec, ThanosSpec};
    use k8s_openapi::api::core::v1::SecretKeySelector;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use serde_json::json;

    /// A spec with every default, which is valid.
    fn spec() -> PrometheusClusterSpec {
        serde_json::from_value(json!({})).unwrap()
    }

    /// Every error of `spec`, rendered as the API server renders them.
    fn errors(spec: &PrometheusClusterSpec) -> Vec<String> {
        match validate_cluster(spec) {
            Ok(()) => Vec::new(),
            Err(errs) => errs.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn an_agent_needs_remote_write_and_refuses_what_needs_a_tsdb() {
        let agent: PrometheusClusterSpec = serde_json::from_value(json!({
            "mode": "Agent",
            "image": "prom/prometheus:v2.30.0",
            "backup": {"enabled": true, "bucket": "b"},
            "thanos": {"enabled": true},
        }))
        .unwrap();
        let errs = errors(&agent);
        for wanted in [
            "spec.remoteWrite: Required value: an agent forwards everything it scrapes",
            "spec.backup.enabled: Forbidden: an agent keeps no TSDB, so backups cannot apply",
            "spec.thanos.enabled: Forbidden: an agent keeps no TSDB, so the Thanos sidecar cannot apply",
            "older than 2.32, which agent mode needs",
        ] {
            assert!(errs.iter().any(|e| e.contains(wanted)), "no {wanted:?} in {errs:#?}");
        }
        let fine: PrometheusClusterSpec = serde_json::from_value(json!({
            "mode": "Agent",
            "image": "prom/prometheus:v3.5.0",
            "remoteWrite": [{"url": "http://greptime:4000/v1/prometheus/write?db=public"}],
            "storage": {"size": "1Gi", "emptyDir": {"medium": "Memory", "sizeLimit": "512Mi"}},
        }))
        .unwrap();
        assert_eq!(errors(&fine), Vec::<String>::new());
        let server: PrometheusClusterSpec = serde_json::from_value(json!({
            "storage": {"emptyDir": {"medium": "Tape", "sizeLimit": "lots"}},
        }))
        .unwrap();
        let errs = errors(&server);
        for wanted in [
            "spec.storage.emptyDir: Forbidden: only an agent may keep its data on an emptyDir",
            "spec.storage.emptyDir.medium: Unsupported value: \"Tape\"",
            "spec.storage.emptyDir.sizeLimit: Invalid value: \"lots\"",
        ] {
            assert!(errs.iter().any(|e| e.contains(wanted)), "no {wanted:?} in {errs:#?}");
        }
    }

    #[test]
    fn inline_rules_and_alertmanagers_prometheus_would_refuse_are_named() {
        let spec: PrometheusClusterSpec = serde_json::from_value(json!({
            "ruleGroups": [{"name": "g", "rules": [
                {"record": "ok", "expr": "sum(up)"},
                {"alert": "Bad", "expr": "rate(x[5m]"},
            ]}],
            "alerting": {"alertmanagers": [
                {"name": "Alertmanager", "port": 0, "scheme": "ftp", "apiVersion": "v1", "pathPrefix": "am",
                 "timeout": "ten"},
            ]},
        }))
        .unwrap();
        let errs = errors(&spec);
        for wanted in [
            "spec.ruleGroups[0].rules[1].expr: Invalid value: \"<elided>\": is not valid PromQL",
            "spec.alerting.alertmanagers[0].name: Invalid value: \"Alertmanager\": must be a lowercase RFC 1123 label",
            "spec.alerting.alertmanagers[0].port: Invalid value: 0: must be a port number",
            "spec.alerting.alertmanagers[0].scheme: Unsupported value: \"ftp\"",
            "spec.alerting.alertmanagers[0].apiVersion: Unsupported value: \"v1\"",
            "spec.alerting.alertmanagers[0].pathPrefix: Invalid value: \"am\": must start with '/'",
            "spec.alerting.alertmanagers[0].timeout",
        ] {
            assert!(errs.iter().any(|e| e.contains(wanted)), "no {wanted:?} in {errs:#?}");
        }
        assert_eq!(errs.len(), 7, "{errs:#?}");
        let agent: PrometheusClusterSpec = serde_json::from_value(json!({
            "mode": "Agent",
            "remoteWrite": [{"url": "http://receiver:9090/api/v1/write"}],
            "ruleSelector": {},
            "alerting": {"alertmanagers": [{"name": "am", "port": "web"}]},
        }))
        .unwrap();
        let errs = errors(&agent);
        assert!(errs.iter().any(|e| e.contains("spec.ruleSelector: Forbidden: an agent keeps no TSDB")), "{errs:#?}");
        assert!(errs.iter().any(|e| e.contains("spec.alerting: Forbidden")), "{errs:#?}");
    }

    #[test]
    fn remote_write_oauth2_needs_a_client_id_a_secret_key_and_a_token_url_and_no_other_auth() {
        let spec: PrometheusClusterSpec = serde_json::from_value(json!({
            "remoteWrite": [
                {"url": "https://a.example.com/write", "oauth2": {"clientId": "", "clientSecret": {"name": "c", "key": "bad/key"},
                 "tokenUrl": "ftp://auth.example.com/token"}},
                {"url": "https://b.example.com/write", "bearerTokenSecretRef": {"name": "t"},
                 "oauth2": {"clientId": "id", "clientSecret": {"name": "c"}, "tokenUrl": "https://auth.example.com/token"}},
                {"url": "https://c.example.com/write",
                 "oauth2": {"clientId": "id", "clientSecret": {"name": "c"}, "tokenUrl": "https://auth.example.com/token"}},
            ],
        }))
        .unwrap();
        let errs = errors(&spec);
        for wanted in [
            "spec.remoteWrite[0].oauth2.clientId: Required value",
            "spec.remoteWrite[0].oauth2.clientSecret.key: Invalid value: \"bad/key\"",
            "spec.remoteWrite[0].oauth2.tokenUrl: Invalid value: \"ftp://auth.example.com/token\"",
            "spec.remoteWrite[1].oauth2: Forbidden: oauth2 cannot be used with basicAuthSecretRef or bearerTokenSecretRef",
        ] {
            assert!(errs.iter().any(|e| e.contains(wanted)), "no {wanted:?} in {errs:#?}");
        }
        assert_eq!(errs.len(), 4, "{errs:#?}");
        let needs = crate::secrets::required_secrets(&spec);
        assert!(
            needs.iter().any(|n| n.field == "spec.remoteWrite[2].oauth2.clientSecret"
                && n.secret == "c"
                && n.key == "clientSecret"),
            "the client secret is mounted and checked: {needs:?}"
        );
    }

    #[test]
    fn remote_write_tls_needs_a_client_key_with_its_certificate_and_valid_secret_keys() {
        let spec: PrometheusClusterSpec = serde_json::from_value(json!({
            "remoteWrite": [
                {"url": "https://a.example.com/write", "tlsConfig": {"ca": {"name": "ca", "key": "bad/key"},
                 "cert": {"name": "client"}}},
                {"url": "https://b.example.com/write", "tlsConfig": {"ca": {"name": "Bad_Name"}}},
            ],
        }))
        .unwrap();
        let errs = errors(&spec);
        for wanted in [
            "spec.remoteWrite[0].tlsConfig.ca.key: Invalid value: \"bad/key\"",
            "spec.remoteWrite[0].tlsConfig.keySecret: Required value: a client certificate needs both cert and keySecret",
            "spec.remoteWrite[1].tlsConfig.ca.name: Invalid value: \"Bad_Name\"",
        ] {
            assert!(errs.iter().any(|e| e.contains(wanted)), "no {wanted:?} in {errs:#?}");
        }
        assert_eq!(errs.len(), 3, "{errs:#?}");
    }

    #[test]
    fn remote_write_options_prometheus_would_refuse_are_named() {
        let spec: PrometheusClusterSpec = serde_json::from_value(json!({
            "remoteWrite": [{
                "url": "http://receiver:9090/api/v1/write",
                "headers": {"Authorization": "Bearer x", "bad header": "v", "X-Tenant": "a\nb"},
                "writeRelabelConfigs": [{"sourceLabels": ["__name__"], "regex": "(", "action": "drop"}],
                "queueConfig": {"minShards": 10, "maxShards": 2, "batchSendDeadline": "soon"},
                "metadataConfig": {"sendInterval": "0s"},
            }],
        }))
        .unwrap();
        let errs = errors(&spec);
        for wanted in [
            "spec.remoteWrite[0].headers.Authorization: Forbidden: Prometheus sets this header itself",
            "spec.remoteWrite[0].headers: Invalid value: \"bad header\": is not an HTTP header name",
            "spec.remoteWrite[0].headers.X-Tenant: Invalid value: \"<elided>\": a header value cannot contain a line break",
            "spec.remoteWrite[0].writeRelabelConfigs[0]: Invalid value: \"<elided>\": regex \"(\" does not compile",
            "spec.remoteWrite[0].queueConfig.minShards: Invalid value: 10: must not exceed maxShards (2)",
            "spec.remoteWrite[0].queueConfig.batchSendDeadline: Invalid value: \"soon\"",
            "spec.remoteWrite[0].metadataConfig.sendInterval: Invalid value: \"0s\"",
        ] {
            assert!(errs.iter().any(|e| e.contains(wanted)), "no {wanted:?} in {errs:#?}");
        }
    }

    fn set_errors(spec: &PrometheusClusterSetSpec) -> Vec<String> {
        match validate_cluster_set(spec) {
            Ok(()) => Vec::new(),
            Err(errs) => errs.iter().map(ToString::to_string).collect(),
        }
    }

    fn backup(schedule: &str) -> BackupSpec {
        BackupSpec { enabled: true, bucket: "tsdb-backups".into(), schedule: schedule.into(), ..BackupSpec::default() }
    }

    fn secret(name: &str) -> LocalObjectReference {
        LocalObjectReference { name: name.into() }
    }

    fn rw(url: &str, name: &str) -> RemoteWriteSpec {
        RemoteWriteSpec { url: url.into(), name: name.into(), ..RemoteWriteSpec::default() }
    }

    fn inline(yaml: &str) -> AdditionalScrapeConfigs {
        AdditionalScrapeConfigs { inline: Some(yaml.into()), secret_ref: None }
    }

    #[test]
    fn default_spec_is_valid() {
        assert_eq!(errors(&spec()), Vec::<String>::new());
    }

    #[test]
    fn replicas_below_one_is_rejected_with_seed_message() {
        let mut s = spec();
        s.replicas = 0;
        assert_eq!(errors(&s), ["spec.replicas: Invalid value: 0: must be >= 1"]);
        s.replicas = i32::MIN;
        assert_eq!(errors(&s), ["spec.replicas: Invalid value: -2147483648: must be >= 1"]);
    }

    #[test]
    fn replicas_above_the_crd_maximum_are_rejected_with_the_bound() {
        let mut s = spec();
        s.replicas = limits::MAX_REPLICAS;
        assert!(errors(&s).is_empty());
        s.replicas = i32::MAX;
        assert_eq!(
            errors(&s),
            ["spec.replicas: Invalid value: 2147483647: must be <= 100: every replica holds all the data; split the \
              targets across clusters instead"]
        );
    }

    #[test]
    fn enabled_backup_without_bucket_is_rejected_with_seed_message() {
        let mut s = spec();
        s.backup = BackupSpec { enabled: true, ..BackupSpec::default() };
        assert_eq!(errors(&s), ["spec.backup.bucket: Required value: bucket is required when backup is enabled"]);
    }

    #[test]
    fn disabled_backup_is_not_checked() {
        let mut s = spec();
        s.backup = BackupSpec { enabled: false, schedule: "nope".into(), prefix: "/x".into(), ..BackupSpec::default() };
        assert_eq!(errors(&s), Vec::<String>::new());
    }

    #[test]
    fn invalid_backup_schedule_is_rejected_with_seed_message_and_cron_error() {
        let mut s = spec();
        s.backup = backup("61 * * * *");
        assert_eq!(
            errors(&s),
            [
                r#"spec.backup.schedule: Invalid value: "61 * * * *": not a valid cron expression: minute field: end of range (61) above maximum (59): 61"#
            ]
        );
    }

    #[test]
    fn six_field_schedule_is_rejected_naming_the_fix() {
        let mut s = spec();
        s.backup = backup("0 0 */6 * * *");
        assert_eq!(
            errors(&s),
            [
                r#"spec.backup.schedule: Invalid value: "0 0 */6 * * *": not a valid cron expression: expected exactly 5 fields (minute hour day-of-month month day-of-week), found 6: seconds are not supported, drop the first field (for example "0 */6 * * *" runs every six hours)"#
            ]
        );
    }

    #[test]
    fn empty_schedule_and_seed_schedules_are_accepted() {
        for schedule in ["", "0 */6 * * *", "@daily", "@every 6h", "30 2 * * sun", "0 0 1,15 * *"] {
            let mut s = spec();
            s.backup = backup(schedule);
            assert_eq!(errors(&s), Vec::<String>::new(), "{schedule:?}");
        }
    }

    #[test]
    fn remote_write_without_url_is_rejected_with_seed_message() {
        let mut s = spec();
        s.remote_write = vec![rw("https://a.example.com/push", ""), rw("", "")];
        assert_eq!(errors(&s), ["spec.remoteWrite[1].url: Required value: url is required"]);
    }

    #[test]
    fn inline_and_secret_ref_together_are_rejected_with_seed_message() {
        let mut s = spec();
        s.additional_scrape_configs = Some(AdditionalScrapeConfigs {
            inline: Some("- job_name: node\n".into()),
            secret_ref: Some(SecretKeySelector { name: "extra".into(), key: "scrape.yml".into(), optional: None }),
        });
        assert_eq!(
            errors(&s),
            [r#"spec.additionalScrapeConfigs: Invalid value: "<elided>": inline and secretRef are mutually exclusive"#]
        );
    }

    #[test]
    fn additional_scrape_configs_without_a_source_are_rejected_with_seed_message() {
        let mut s = spec();
        s.additional_scrape_configs = Some(AdditionalScrapeConfigs::default());
        assert_eq!(
            errors(&s),
            ["spec.additionalScrapeConfigs: Required value: set inline or secretRef when additionalScrapeConfigs is \
              present"]
        );
        // As in the seed, an empty inline string is no source.
        s.additional_scrape_configs = Some(inline(""));
        assert_eq!(errors(&s).len(), 1);
    }

    #[test]
    fn inline_that_is_not_a_list_is_rejected_with_seed_message() {
        let mut s = spec();
        s.additional_scrape_configs = Some(inline("scrape_configs:\n  - job_name: node\n"));
        let errs = errors(&s);
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with(
                r#"spec.additionalScrapeConfigs.inline: Invalid value: "<elided>": must be a YAML list of scrape_config entries: "#
            ),
            "{}",
            errs[0]
        );
        s.additional_scrape_configs = Some(inline("- just a string\n"));
        assert!(errors(&s)[0].contains("must be a YAML list of scrape_config entries: "));
    }

    #[test]
    fn secret_ref_without_name_or_key_is_rejected_with_seed_messages() {
        let mut s = spec();
        s.additional_scrape_configs =
            Some(AdditionalScrapeConfigs { inline: None, secret_ref: Some(SecretKeySelector::default()) });
        assert_eq!(
            errors(&s),
            [
                "spec.additionalScrapeConfigs.secretRef.name: Required value: secretRef.name is required",
                "spec.additionalScrapeConfigs.secretRef.key: Required value: secretRef.key is required",
            ]
        );
    }

    #[test]
    fn secret_ref_name_and_key_must_be_valid() {
        let mut s = spec();
        s.additional_scrape_configs = Some(AdditionalScrapeConfigs {
            inline: None,
            secret_ref: Some(SecretKeySelector { name: "Extra".into(), key: "../x".into(), optional: None }),
        });
        let errs = errors(&s);
        assert_eq!(errs.len(), 2);
        assert!(errs[0].starts_with(r#"spec.additionalScrapeConfigs.secretRef.name: Invalid value: "Extra": must be a lowercase RFC 1123 subdomain"#), "{}", errs[0]);
        assert!(
            errs[1].starts_with(
                r#"spec.additionalScrapeConfigs.secretRef.key: Invalid value: "../x": a valid Secret key"#
            ),
            "{}",
            errs[1]
        );
    }

    #[test]
    fn inline_scrape_jobs_need_unique_job_names_other_than_prometheus() {
        let mut s = spec();
        s.additional_scrape_configs = Some(inline(
            "- job_name: node\n- static_configs: []\n- job_name: node\n- job_name: prometheus\n- job_name: 7\n-\n",
        ));
        assert_eq!(
            errors(&s),
            [
                "spec.additionalScrapeConfigs.inline[1].job_name: Required value: every scrape config needs a job_name",
                r#"spec.additionalScrapeConfigs.inline[2].job_name: Duplicate value: "node": job names must be unique: rename one of the jobs"#,
                r#"spec.additionalScrapeConfigs.inline[3].job_name: Invalid value: "prometheus": is the operator's own scrape job for Prometheus itself: choose another job_name"#,
                r#"spec.additionalScrapeConfigs.inline[4].job_name: Invalid value: "<elided>": job_name must be a string"#,
                "spec.additionalScrapeConfigs.inline[5].job_name: Required value: every scrape config needs a job_name",
            ]
        );
    }

    #[test]
    fn retention_must_be_a_prometheus_duration() {
        let mut s = spec();
        s.retention = "15x".into();
        assert_eq!(
            errors(&s),
            [
                r#"spec.retention: Invalid value: "15x": must be a duration such as 15d: a number and a unit (ms, s, m, h, d, w, y), units largest first, like 1h30m"#
            ]
        );
        s.retention = String::new();
        assert_eq!(errors(&s), ["spec.retention: Required value: set a duration such as 15d"]);
        s.retention = "300y".into();
        assert_eq!(
            errors(&s),
            [
                r#"spec.retention: Invalid value: "300y": is too large: Prometheus durations must be shorter than 292 years"#
            ]
        );
        s.retention = "1w3d".into();
        assert_eq!(errors(&s), Vec::<String>::new());
    }

    #[test]
    fn zero_retention_is_allowed_only_with_a_retention_size() {
        let mut s = spec();
        s.retention = "0d".into();
        assert_eq!(
            errors(&s),
            [
                r#"spec.retention: Invalid value: "0d": must be greater than 0 unless retentionSize is set: set a duration such as 15d"#
            ]
        );
        s.retention_size = Some("50GB".into());
        assert_eq!(errors(&s), Vec::<String>::new());
    }

    #[test]
    fn retention_size_must_be_a_base2_size() {
        let mut s = spec();
        for ok in ["512MB", "50GB", "1TB", "1.5TB", "100GiB", ""] {
            s.retention_size = Some(ok.into());
            assert_eq!(errors(&s), Vec::<String>::new(), "{ok:?}");
        }
        s.retention_size = Some("50G".into());
        assert_eq!(
            errors(&s),
            [
                r#"spec.retentionSize: Invalid value: "50G": must be a size like 512MB, 50GB or 1TB (units B, KB, MB, GB, TB, PB, EB; powers of 1024)"#
            ]
        );
        s.retention_size = Some("0".into());
        assert_eq!(
            errors(&s),
            [
                r#"spec.retentionSize: Invalid value: "0": must be greater than 0: remove retentionSize to keep blocks regardless of their size"#
            ]
        );
        s.retention_size = Some("-1GB".into());
        assert_eq!(errors(&s), [r#"spec.retentionSize: Invalid value: "-1GB": must not be negative"#]);
    }

    #[test]
    fn scrape_and_evaluation_intervals_must_be_positive_durations() {
        let mut s = spec();
        s.scrape_interval = "0s".into();
        s.evaluation_interval = "30 s".into();
        assert_eq!(
            errors(&s),
            [
                r#"spec.scrapeInterval: Invalid value: "0s": must be greater than 0, for example 30s"#,
                r#"spec.evaluationInterval: Invalid value: "30 s": must be a duration such as 30s: a number and a unit (ms, s, m, h, d, w, y), units largest first, like 1h30m"#,
            ]
        );
    }

    #[test]
    fn storage_size_must_be_a_non_negative_quantity() {
        let mut s = spec();
        s.storage.size = Quantity("20GB".into());
        assert_eq!(
            errors(&s),
            [r#"spec.storage.size: Invalid value: "20GB": must be a Kubernetes quantity such as 20Gi, 500Gi or 1Ti"#]
        );
        s.storage.size = Quantity("-1Gi".into());
        assert_eq!(
            errors(&s),
            [
                r#"spec.storage.size: Invalid value: "-1Gi": must not be negative: set a size such as 20Gi, or 0 for the default of 20Gi"#
            ]
        );
        // Zero means the default size, as in the seed.
        for ok in ["20Gi", "500G", "1e12", "1.5Ti", "0"] {
            s.storage.size = Quantity(ok.into());
            assert_eq!(errors(&s), Vec::<String>::new(), "{ok}");
        }
    }

    #[test]
    fn storage_class_name_must_be_a_dns_subdomain() {
        let mut s = spec();
        s.storage.storage_class_name = Some(String::new());
        assert_eq!(errors(&s), Vec::<String>::new(), "an empty class means no class, as in Kubernetes");
        s.storage.storage_class_name = Some("Fast_SSD".into());
        assert_eq!(
            errors(&s),
            [
                r#"spec.storage.storageClassName: Invalid value: "Fast_SSD": must be a lowercase RFC 1123 subdomain: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit (e.g. 'example.com'): use the name of an existing StorageClass"#
            ]
        );
    }

    #[test]
    fn resource_quantities_must_parse_and_requests_must_not_exceed_limits() {
        let q = |pairs: &[(&str, &str)]| {
            Some(pairs.iter().map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned()))).collect::<BTreeMap<_, _>>())
        };
        let mut s = spec();
        s.resources = Some(ResourceRequirements {
            limits: q(&[("cpu", "1"), ("memory", "2Gi")]),
            requests: q(&[("cpu", "1500m"), ("memory", "2G"), ("ephemeral-storage", "lots")]),
            claims: None,
        });
        assert_eq!(
            errors(&s),
            [
                r#"spec.resources.requests[ephemeral-storage]: Invalid value: "lots": must be a Kubernetes quantity such as 500m, 2, 512Mi or 4Gi"#,
                r#"spec.resources.requests[cpu]: Invalid value: "1500m": must be less than or equal to cpu limit of 1: lower the request or raise the limit"#,
            ]
        );
        s.resources = Some(ResourceRequirements { limits: q(&[("cpu", "-1")]), requests: None, claims: None });
        assert_eq!(
            errors(&s),
            [r#"spec.resources.limits[cpu]: Invalid value: "-1": must be greater than or equal to 0"#]
        );
    }

    #[test]
    fn image_must_be_set_and_a_valid_reference() {
        let mut s = spec();
        s.image = String::new();
        assert_eq!(
            errors(&s),
            ["spec.image: Required value: set an image such as prom/prometheus:v2.55.1, or remove the field"]
        );
        s.image = "Prom/Prometheus:latest".into();
        assert_eq!(
            errors(&s),
            [
                r#"spec.image: Invalid value: "Prom/Prometheus:latest": not a valid image reference: the repository path "Prometheus" must be lowercase; use a reference such as prom/prometheus:v2.55.1"#
            ]
        );
    }

    #[test]
    fn thanos_image_is_checked_only_when_thanos_is_enabled() {
        let mut s = spec();
        s.thanos = ThanosSpec { enabled: false, image: "bad image".into(), object_storage_config_secret_ref: None };
        assert_eq!(errors(&s), Vec::<String>::new());
        s.thanos.enabled = true;
        assert_eq!(
            errors(&s),
            [
                r#"spec.thanos.image: Invalid value: "bad image": not a valid image reference: must not contain whitespace; use a reference such as quay.io/thanos/thanos:v0.37.2"#
            ]
        );
        s.thanos.image = String::new();
        assert_eq!(
            errors(&s),
            [
                "spec.thanos.image: Required value: set an image such as quay.io/thanos/thanos:v0.37.2, or remove the field"
            ]
        );
    }

    #[test]
    fn remote_write_url_must_be_an_absolute_http_url() {
        let mut s = spec();
        s.remote_write = vec![rw("receiver:9090/api/v1/write", "")];
        assert_eq!(
            errors(&s),
            [
                r#"spec.remoteWrite[0].url: Invalid value: "receiver:9090/api/v1/write": must be an http or https URL such as https://receiver.example.com/api/v1/write: must start with http:// or https://"#
            ]
        );
    }

    #[test]
    fn remote_write_names_must_be_unique() {
        let mut s = spec();
        s.remote_write = vec![rw("https://a.example.com", "main"), rw("https://b.example.com", "main")];
        assert_eq!(
            errors(&s),
            [
                r#"spec.remoteWrite[1].name: Duplicate value: "main": remote write names must be unique: rename one of the entries"#
            ]
        );
    }

    #[test]
    fn identical_unnamed_remote_writes_are_duplicates() {
        let mut s = spec();
        s.remote_write = vec![rw("https://a.example.com", ""), rw("https://a.example.com", "")];
        assert_eq!(
            errors(&s),
            [
                r#"spec.remoteWrite[1].url: Duplicate value: "https://a.example.com": another remote write entry has the same url and credentials: remove it or give the entries distinct names"#
            ]
        );
        s.remote_write[1].bearer_token_secret_ref = Some(secret("other-tenant"));
        assert_eq!(errors(&s), Vec::<String>::new(), "different credentials make a different queue");
    }

    #[test]
    fn remote_write_cannot_use_basic_auth_and_bearer_token_together() {
        let mut s = spec();
        let mut entry = rw("https://metrics.example.com/api/v1/push", "");
        entry.basic_auth_secret_ref = Some(secret("a"));
        entry.bearer_token_secret_ref = Some(secret("b"));
        s.remote_write = vec![entry];
        assert_eq!(
            errors(&s),
            ["spec.remoteWrite[0].bearerTokenSecretRef: Forbidden: basicAuthSecretRef and bearerTokenSecretRef are \
              mutually exclusive: keep one of them"]
        );
    }

    #[test]
    fn secret_ref_names_must_be_set_and_dns_subdomains() {
        let mut s = spec();
        let mut entry = rw("https://metrics.example.com/api/v1/push", "");
        entry.basic_auth_secret_ref = Some(secret(""));
        s.remote_write = vec![entry];
        s.thanos = ThanosSpec {
            enabled: true,
            object_storage_config_secret_ref: Some(secret("Objstore")),
            ..ThanosSpec::default()
        };
        s.backup = BackupSpec { credentials_secret_ref: Some(secret("s3 creds")), ..backup("") };
        let errs = errors(&s);
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert_eq!(
            errs[0],
            "spec.backup.credentialsSecretRef.name: Invalid value: \"s3 creds\": must be a lowercase RFC 1123 \
             subdomain: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit (e.g. \
             'example.com'): use the name of a Secret in this namespace"
        );
        assert_eq!(
            errs[1],
            "spec.remoteWrite[0].basicAuthSecretRef.name: Required value: name the Secret that holds username and \
             password"
        );
        assert!(errs[2].starts_with(r#"spec.thanos.objectStorageConfigSecretRef.name: Invalid value: "Objstore": "#));
    }

    #[test]
    fn external_label_names_must_be_valid_prometheus_label_names() {
        let mut s = spec();
        s.external_labels = [("1region", "eu"), ("__meta", "x"), ("team", "")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(
            errors(&s),
            [
                r#"spec.externalLabels: Invalid value: "1region": must be a Prometheus label name: a letter or '_' followed by letters, digits or '_' (e.g. 'region' or 'team_name')"#,
                r#"spec.externalLabels: Invalid value: "__meta": label names starting with __ are reserved for Prometheus' internal use: rename the label"#,
            ]
        );
    }

    #[test]
    fn external_labels_cannot_reuse_the_operator_labels() {
        let mut s = spec();
        s.external_labels =
            [("cluster", "a"), ("replica", "b")].into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        assert_eq!(
            errors(&s),
            [
                "spec.externalLabels[cluster]: Forbidden: the operator sets the cluster label to the cluster's name: \
                 remove it from externalLabels",
                "spec.externalLabels[replica]: Forbidden: the operator sets the replica label to the pod name to tell \
                 replicas apart: remove it from externalLabels, or set replicaExternalLabelName to another name",
            ]
        );
        s.replica_external_label_name = Some("prometheus_replica".into());
        assert_eq!(errors(&s).len(), 1, "replica is free once the replica label has another name");
    }

    #[test]
    fn replica_external_label_name_must_be_a_valid_label_name() {
        let mut s = spec();
        for (name, message) in [
            ("", "must be a Prometheus label name"),
            ("pod-name", "must be a Prometheus label name"),
            ("__replica", "label names starting with __ are reserved"),
            ("cluster", "cluster is the label the operator sets to the cluster's name"),
        ] {
            s.replica_external_label_name = Some(name.into());
            let errs = errors(&s);
            assert_eq!(errs.len(), 1, "{name:?}");
            assert!(
                errs[0].starts_with(&format!("spec.replicaExternalLabelName: Invalid value: {name:?}: {message}")),
                "{}",
                errs[0]
            );
        }
    }

    #[test]
    fn node_selector_keys_and_values_must_be_valid_labels() {
        let mut s = spec();
        s.node_selector = [("kubernetes.io/os", "linux"), ("bad key", "x"), ("zone", "eu west")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let errs = errors(&s);
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(
            errs[0].starts_with(r#"spec.nodeSelector: Invalid value: "bad key": label key must be a qualified name"#)
        );
        assert!(
            errs[1].starts_with(r#"spec.nodeSelector[zone]: Invalid value: "eu west": label value must be empty or"#)
        );
    }

    #[test]
    fn object_names_must_be_dns_subdomains_and_the_fix_is_named() {
        type Field = fn(&mut PrometheusClusterSpec) -> &mut Option<String>;
        let fields: [(&str, Field, &str, &str); 2] = [
            (
                "spec.priorityClassName",
                |s| &mut s.priority_class_name,
                "an existing PriorityClass",
                "system-cluster-critical",
            ),
            (
                "spec.serviceAccountName",
                |s| &mut s.service_account_name,
                "a ServiceAccount in the cluster's namespace",
                "prometheus-irsa",
            ),
        ];
        for (field, get, fix, good) in fields {
            let mut s = spec();
            *get(&mut s) = Some("High_Priority".into());
            let errs = errors(&s);
            assert_eq!(errs.len(), 1, "{errs:?}");
            let start = format!(r#"{field}: Invalid value: "High_Priority": must be a lowercase RFC 1123 subdomain"#);
            assert!(errs[0].starts_with(&start), "{}", errs[0]);
            assert!(errs[0].ends_with(&format!(": use the name of {fix}")), "{}", errs[0]);
            *get(&mut s) = Some(good.into());
            assert_eq!(errors(&s), Vec::<String>::new());
        }
    }

    #[test]
    fn self_healing_durations_and_threshold_are_checked() {
        let mut s = spec();
        s.self_healing = SelfHealingSpec {
            enabled: true,
            probe_interval: "0s".into(),
            failure_threshold: 0,
            startup_budget: "15 minutes".into(),
            cooldown: "0s".into(),
        };
        let errs = errors(&s);
        assert_eq!(
            errs,
            [
                r#"spec.selfHealing.probeInterval: Invalid value: "0s": must be greater than 0, for example 30s"#,
                "spec.selfHealing.failureThreshold: Invalid value: 0: must be >= 1: the number of failed probes in a row \
                 before a replica is replaced",
                r#"spec.selfHealing.startupBudget: Invalid value: "15 minutes": must be a duration such as 15m: a number and a unit (ms, s, m, h, d, w, y), units largest first, like 1h30m"#,
            ]
        );
    }

    #[test]
    fn backup_retention_keep_last_and_max_age_are_checked() {
        let mut s = spec();
        s.backup = BackupSpec {
            retention: Some(BackupRetentionSpec { keep_last: Some(0), max_age: Some("thirty days".into()) }),
            ..backup("@daily")
        };
        assert_eq!(
            errors(&s),
            [
                "spec.backup.retention.keepLast: Invalid value: 0: must be >= 1: the newest backup is always kept; \
                 remove keepLast to keep every backup",
                r#"spec.backup.retention.maxAge: Invalid value: "thirty days": must be a duration such as 30d: a number and a unit (ms, s, m, h, d, w, y), units largest first, like 1h30m"#,
            ]
        );
    }

    #[test]
    fn backup_prefix_must_not_start_with_a_slash() {
        let mut s = spec();
        s.backup = BackupSpec { prefix: "/prod".into(), ..backup("") };
        assert_eq!(
            errors(&s),
            [
                r#"spec.backup.prefix: Invalid value: "/prod": must not start with '/': object keys would begin with an empty segment; write it without the leading slash, like prod/cluster-a"#
            ]
        );
    }

    #[test]
    fn backup_endpoint_must_be_an_http_url() {
        let mut s = spec();
        s.backup = BackupSpec { endpoint: "minio:9000".into(), ..backup("") };
        assert_eq!(
            errors(&s),
            [
                r#"spec.backup.endpoint: Invalid value: "minio:9000": must be an http or https URL such as https://minio.example.com:9000: must start with http:// or https://"#
            ]
        );
        s.backup.endpoint = "http://minio.minio.svc:9000".into();
        assert_eq!(errors(&s), Vec::<String>::new());
    }

    #[test]
    fn backup_bucket_must_be_a_bare_name() {
        let mut s = spec();
        s.backup = BackupSpec { bucket: "s3://tsdb-backups/prod".into(), ..backup("") };
        assert_eq!(
            errors(&s),
            [
                r#"spec.backup.bucket: Invalid value: "s3://tsdb-backups/prod": must be a bare bucket name such as tsdb-backups, without s3:// or a path: put any path in prefix"#
            ]
        );
    }

    #[test]
    fn long_values_are_shortened_in_messages() {
        let mut s = spec();
        s.retention = "x".repeat(100_000);
        let errs = validate_cluster(&s).unwrap_err();
        let Some(BadValue::Str(shown)) = &errs.errors()[0].value else { panic!("a string value") };
        assert_eq!(shown.len(), MAX_SHOWN_VALUE + 3);
        assert!(shown.ends_with("..."));
    }

    #[test]
    fn errors_render_as_the_api_server_renders_them() {
        let mut s = spec();
        s.replicas = 0;
        s.backup = BackupSpec { enabled: true, ..BackupSpec::default() };
        let errs = validate_cluster(&s).unwrap_err();
        assert_eq!(
            errs.to_string(),
            "[spec.replicas: Invalid value: 0: must be >= 1, spec.backup.bucket: Required value: bucket is required \
             when backup is enabled]"
        );
        let causes = errs.to_status_causes();
        assert_eq!(causes[0].field.as_deref(), Some("spec.replicas"));
        assert_eq!(causes[0].reason.as_deref(), Some("FieldValueInvalid"));
        assert_eq!(causes[0].message.as_deref(), Some("Invalid value: 0: must be >= 1"));
        assert_eq!(causes[1].reason.as_deref(), Some("FieldValueRequired"));
        let status = errs.to_status("PrometheusCluster", "demo");
        assert_eq!(status.code, Some(422));
        assert_eq!(status.reason.as_deref(), Some("Invalid"));
        assert_eq!(status.status.as_deref(), Some("Failure"));
        assert!(
            status.message.as_deref().unwrap().starts_with(
                r#"PrometheusCluster.observability.merlionos.org "demo" is invalid: [spec.replicas: Invalid value: 0"#
            ),
            "{status:?}"
        );
        let details = status.details.unwrap();
        assert_eq!(details.causes.unwrap().len(), 2);
        assert_eq!(details.kind.as_deref(), Some("PrometheusCluster"));
    }

    #[test]
    fn every_kind_renders_its_kubernetes_words() {
        assert_eq!(FieldError::too_long("a", 63).to_string(), "a: Too long: may not be more than 63 bytes");
        assert_eq!(
            FieldError::not_supported("op", "Has", &["In", "NotIn"]).to_string(),
            r#"op: Unsupported value: "Has": supported values: "In", "NotIn""#
        );
        assert_eq!(FieldError::forbidden("f", "no").to_string(), "f: Forbidden: no");
        assert_eq!(FieldError::duplicate("d", "x", "").to_string(), r#"d: Duplicate value: "x""#);
        assert_eq!(FieldErrorKind::TooLong.reason(), "FieldValueTooLong");
        assert_eq!(FieldErrorKind::NotSupported.reason(), "FieldValueNotSupported");
    }

    fn selector(exprs: &[(&str, &str, Option<&[&str]>)]) -> LabelSelector {
        LabelSelector {
            match_labels: None,
            match_expressions: Some(
                exprs
                    .iter()
                    .map(|(k, op, values)| LabelSelectorRequirement {
                        key: (*k).to_owned(),
                        operator: (*op).to_owned(),
                        values: values.map(|v| v.iter().map(|s| (*s).to_owned()).collect()),
                    })
                    .collect(),
            ),
        }
    }

    #[test]
    fn cluster_set_selector_operators_must_be_known() {
        let set = PrometheusClusterSetSpec {
            cluster_selector: Some(selector(&[("env", "Equals", Some(&["prod"]))])),
            ..PrometheusClusterSetSpec::default()
        };
        assert_eq!(
            set_errors(&set),
            [
                r#"spec.clusterSelector.matchExpressions[0].operator: Unsupported value: "Equals": supported values: "DoesNotExist", "Exists", "In", "NotIn""#
            ]
        );
    }

    #[test]
    fn cluster_set_selector_values_are_present_exactly_for_in_and_not_in() {
        let set = PrometheusClusterSetSpec {
            namespace_selector: Some(selector(&[
                ("env", "In", None),
                ("team", "NotIn", Some(&[])),
                ("tier", "Exists", Some(&["x"])),
                ("zone", "DoesNotExist", None),
                ("ok", "In", Some(&["a", "b"])),
            ])),
            ..PrometheusClusterSetSpec::default()
        };
        assert_eq!(
            set_errors(&set),
            [
                "spec.namespaceSelector.matchExpressions[0].values: Required value: must be specified when `operator` \
                 is 'In' or 'NotIn'",
                "spec.namespaceSelector.matchExpressions[1].values: Required value: must be specified when `operator` \
                 is 'In' or 'NotIn'",
                "spec.namespaceSelector.matchExpressions[2].values: Forbidden: may not be specified when `operator` is \
                 'Exists' or 'DoesNotExist'",
            ]
        );
    }

    #[test]
    fn cluster_set_selector_keys_and_values_must_be_labels() {
        let mut sel = selector(&[("", "Exists", None), ("env", "In", Some(&["not ok"]))]);
        sel.match_labels = Some([("bad key".to_owned(), "v".to_owned())].into_iter().collect());
        let set = PrometheusClusterSetSpec { cluster_selector: Some(sel), ..PrometheusClusterSetSpec::default() };
        let errs = set_errors(&set);
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert!(errs[0].starts_with(r#"spec.clusterSelector.matchLabels: Invalid value: "bad key": label key"#));
        assert_eq!(errs[1], "spec.clusterSelector.matchExpressions[0].key: Required value: set the label key to match");
        assert!(errs[2].starts_with(r#"spec.clusterSelector.matchExpressions[1].values[0]: Invalid value: "not ok""#));
    }

    #[test]
    fn cluster_set_backup_template_is_checked_as_an_enabled_backup() {
        let set = PrometheusClusterSetSpec {
            backup_template: Some(BackupSpec { enabled: false, schedule: "every day".into(), ..BackupSpec::default() }),
            ..PrometheusClusterSetSpec::default()
        };
        assert_eq!(
            set_errors(&set),
            [
                "spec.backupTemplate.bucket: Required value: bucket is required: the template enables backups on its \
                 members",
                r#"spec.backupTemplate.schedule: Invalid value: "every day": not a valid cron expression: expected exactly 5 fields (minute hour day-of-month month day-of-week), found 2"#,
            ]
        );
        let ok =
            PrometheusClusterSetSpec { backup_template: Some(backup("@daily")), ..PrometheusClusterSetSpec::default() };
        assert_eq!(set_errors(&ok), Vec::<String>::new());
        assert_eq!(set_errors(&PrometheusClusterSetSpec::default()), Vec::<String>::new());
    }
}
