//! prometheus-operator's `PrometheusRule` (`monitoring.coreos.com/v1`) and the inline `spec.ruleGroups` of a
//! PrometheusCluster: checked rule by rule as Prometheus checks a rule file, and rendered into rule files. A rule
//! Prometheus would refuse is left out and named in a [`Refused`], so that one bad rule never makes Prometheus refuse
//! the whole reload (which would keep every other change out too); the other rules of its group still load.
//!
//! # What is checked
//! As Prometheus' `rulefmt`: exactly one of `record` and `alert`; `expr` set and valid PromQL (parsed with the
//! `promql-parser` crate); a recording rule's name a valid metric name and no `for`, `keep_firing_for` or
//! `annotations` on it; label names valid (not `__name__`), annotation names valid; durations in Prometheus' syntax;
//! group names set and distinct within a file; templates in an alert's labels and annotations with balanced
//! `{{`/`}}` (Prometheus parses them as Go templates; a deeper error there is found only by Prometheus, which then
//! keeps the previous rules and the agent reports the failed reload). Fields this module does not know (such as
//! Thanos' `partial_response_strategy`) refuse their group, by name.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Refused;

/// `monitoring.coreos.com/v1` `PrometheusRule`: groups of recording and alerting rules.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(group = "monitoring.coreos.com", version = "v1", kind = "PrometheusRule", namespaced, schema = "disabled")]
pub struct PrometheusRuleSpec {
    /// The rule groups.
    #[serde(default)]
    pub groups: Vec<RuleGroup>,
}

/// A group of rules evaluated together, as in a Prometheus rule file (prometheus-operator's field names).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct RuleGroup {
    /// The group's name, distinct within its PrometheusRule (or within `spec.ruleGroups`).
    pub name: String,
    /// How often the rules are evaluated (default: `evaluationInterval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Most alerts or series a rule of the group may produce (0: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// How far back in time the rules are evaluated (Prometheus 2.53 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_offset: Option<String>,
    /// The rules, evaluated in order.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Fields this version does not render; a group with any of them is refused.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(skip)]
    pub unsupported: BTreeMap<String, serde_json::Value>,
}

/// A recording rule (`record`) or an alerting rule (`alert`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct Rule {
    /// Name of the series a recording rule writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// Name of an alerting rule's alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<String>,
    /// The PromQL expression.
    pub expr: IntOrString,
    /// How long an alert's condition must hold before it fires.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<String>,
    /// How long an alert keeps firing after its condition stopped holding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_firing_for: Option<String>,
    /// Labels added to the series or alerts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// An alert's annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Fields this version does not render; a rule with any of them is refused.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(skip)]
    pub unsupported: BTreeMap<String, serde_json::Value>,
}

/// One rendered rule file: its ConfigMap key and content.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct RuleFile {
    /// The ConfigMap key: `rules_<namespace>_<name>.yml` for a PrometheusRule (neither part can hold `_`), or
    /// [`INLINE_RULES_KEY`].
    pub key: String,
    /// The Prometheus rule file.
    pub content: String,
    /// Rule groups in it.
    pub groups: usize,
    /// Rules in it.
    pub rules: usize,
}

/// ConfigMap key of the rule file rendered from `spec.ruleGroups`.
pub const INLINE_RULES_KEY: &str = "rules_spec.yml";
/// The rule files' names in the ConfigMap, as `prometheus.yml` lists them.
pub const RULE_FILES_GLOB: &str = "rules_*.yml";

/// Most bytes the rule files of the selected PrometheusRules may take in the ConfigMap together; objects beyond it
/// are refused (a ConfigMap holds at most 1 MiB, shared with the monitors' jobs and `prometheus.yml`).
pub const RULE_FILES_BUDGET: usize = 256 * 1024;

/// The ConfigMap key of `namespace/name`'s rule file.
pub fn rule_file_key(namespace: &str, name: &str) -> String {
    format!("rules_{namespace}_{name}.yml")
}

#[derive(Serialize)]
struct FileOut<'a> {
    groups: Vec<GroupOut<'a>>,
}

#[derive(Serialize)]
struct GroupOut<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    query_offset: Option<&'a str>,
    rules: Vec<RuleOut<'a>>,
}

#[derive(Serialize)]
struct RuleOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alert: Option<&'a str>,
    expr: String,
    #[serde(rename = "for", skip_serializing_if = "Option::is_none")]
    for_: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_firing_for: Option<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: &'a BTreeMap<String, String>,
}

/// The rule file of `groups` (`object` and `field` name them in refusals: `PrometheusRule ns/name` and
/// `spec.groups`), keyed `key`; the rules and groups Prometheus would refuse are left out and listed. `None` when
/// nothing is left to load.
pub fn render_rule_file(
    object: &str,
    field: &str,
    key: String,
    groups: &[RuleGroup],
) -> (Option<RuleFile>, Vec<Refused>) {
    let mut refused = Vec::new();
    let mut out = Vec::new();
    let mut names = BTreeSet::new();
    for (g, group) in groups.iter().enumerate() {
        let at = format!("{field}[{g}]");
        let mut refuse =
            |field: String, reason: String| refused.push(Refused { object: object.to_owned(), field, reason });
        if let Some(error) = check_group(group, &mut names) {
            let (sub, reason) = error;
            refuse(format!("{at}{sub}"), reason);
            continue;
        }
        let mut rules = Vec::with_capacity(group.rules.len());
        for (r, rule) in group.rules.iter().enumerate() {
            match check_rule(rule) {
                Ok(expr) => rules.push(RuleOut {
                    record: rule.record.as_deref(),
                    alert: rule.alert.as_deref(),
                    expr,
                    for_: rule.for_.as_deref(),
                    keep_firing_for: rule.keep_firing_for.as_deref(),
                    labels: &rule.labels,
                    annotations: &rule.annotations,
                }),
                Err((sub, reason)) => refuse(format!("{at}.rules[{r}]{sub}"), reason),
            }
        }
        out.push(GroupOut {
            name: &group.name,
            interval: group.interval.as_deref(),
            limit: group.limit,
            query_offset: group.query_offset.as_deref(),
            rules,
        });
    }
    let rules = out.iter().map(|g| g.rules.len()).sum();
    if out.is_empty() {
        return (None, refused);
    }
    let groups = out.len();
    let content = serde_yaml::to_string(&FileOut { groups: out }).unwrap_or_default();
    (Some(RuleFile { key, content, groups, rules }), refused)
}

/// Why a group cannot load as a whole: (the field under the group, the reason).
fn check_group(group: &RuleGroup, names: &mut BTreeSet<String>) -> Option<(String, String)> {
    if let Some(field) = group.unsupported.keys().next() {
        return Some((format!(".{field}"), "is not supported by this operator: remove it".to_owned()));
    }
    if group.name.trim().is_empty() {
        return Some((".name".to_owned(), "must be set".to_owned()));
    }
    if !names.insert(group.name.clone()) {
        return Some((
            ".name".to_owned(),
            format!("group {:?} is repeated in the same object: give every group its own name", group.name),
        ));
    }
    for (field, value) in [("interval", &group.interval), ("query_offset", &group.query_offset)] {
        if let Some(value) = value
            && let Err(e) = crate::duration::parse(value)
        {
            return Some((format!(".{field}"), e.to_string()));
        }
    }
    None
}

/// The rule's expression when Prometheus would load the rule; else (the field under the rule, the reason).
fn check_rule(rule: &Rule) -> Result<String, (String, String)> {
    let fail = |field: &str, reason: String| Err((field.to_owned(), reason));
    if let Some(field) = rule.unsupported.keys().next() {
        return fail(&format!(".{field}"), "is not supported by this operator: remove it".to_owned());
    }
    let expr = match &rule.expr {
        IntOrString::Int(i) => i.to_string(),
        IntOrString::String(s) => s.clone(),
    };
    match (rule.record.as_deref(), rule.alert.as_deref()) {
        (Some(_), Some(_)) => return fail("", "only one of 'record' and 'alert' may be set".to_owned()),
        (None | Some(""), None) | (None, Some("")) => {
            return fail("", "one of 'record' or 'alert' must be set".to_owned());
        }
        (Some(record), None) => {
            if !is_metric_name(record) {
                return fail(".record", format!("{record:?} is not a valid metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)"));
            }
            for (field, set) in [
                ("for", rule.for_.is_some()),
                ("keep_firing_for", rule.keep_firing_for.is_some()),
                ("annotations", !rule.annotations.is_empty()),
            ] {
                if set {
                    return fail(&format!(".{field}"), format!("a recording rule cannot have '{field}': remove it"));
                }
            }
        }
        (None, Some(_)) => {}
    }
    if expr.trim().is_empty() {
        return fail(".expr", "must be set".to_owned());
    }
    if let Err(e) = promql_parser::parser::parse(&expr) {
        return fail(".expr", format!("is not valid PromQL: {}", e.trim()));
    }
    for (field, value) in [("for", &rule.for_), ("keep_firing_for", &rule.keep_firing_for)] {
        if let Some(value) = value
            && let Err(e) = crate::duration::parse(value)
        {
            return fail(&format!(".{field}"), e.to_string());
        }
    }
    for (name, value) in &rule.labels {
        if !crate::build::is_label_name(name) || name == "__name__" {
            return fail(".labels", format!("{name:?} is not a valid label name"));
        }
        if rule.alert.is_some() && !balanced_template(value) {
            return fail(&format!(".labels.{name}"), "has an unbalanced template ('{{' without '}}')".to_owned());
        }
    }
    for (name, value) in &rule.annotations {
        if !crate::build::is_label_name(name) {
            return fail(".annotations", format!("{name:?} is not a valid annotation name"));
        }
        if !balanced_template(value) {
            return fail(&format!(".annotations.{name}"), "has an unbalanced template ('{{' without '}}')".to_owned());
        }
    }
    Ok(expr)
}

fn is_metric_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// Whether every `{{` is closed by a `}}` before the next `{{`, and no `}}` comes without one.
fn balanced_template(s: &str) -> bool {
    let mut open = false;
    let mut rest = s;
    while let Some(i) = rest.find(if open { "}}" } else { "{{" }) {
        if !open && rest[..i].contains("}}") {
            return false;
        }
        if open && rest[..i].contains("{{") {
            return false;
        }
        open = !open;
        rest = &rest[i + 2..];
    }
    !open && !rest.contains("}}")
}

/// The rule files of the chosen PrometheusRules (sorted by namespace and name), as many as fit in `budget` bytes
/// together; the rules, groups and objects left out.
pub fn render_prometheus_rules(chosen: &[&PrometheusRule], budget: usize) -> (Vec<RuleFile>, Vec<Refused>) {
    let mut files = Vec::new();
    let mut refused = Vec::new();
    let mut used = 0;
    for rule in chosen {
        let ns = rule.metadata.namespace.as_deref().unwrap_or_default();
        let name = rule.metadata.name.as_deref().unwrap_or_default();
        let object = format!("PrometheusRule {ns}/{name}");
        let (file, mut why) = render_rule_file(&object, "spec.groups", rule_file_key(ns, name), &rule.spec.groups);
        refused.append(&mut why);
        let Some(file) = file else { continue };
        if used + file.content.len() > budget {
            refused.push(Refused {
                object,
                field: "spec.groups".to_owned(),
                reason: format!(
                    "the cluster's rule files are full ({budget} bytes of the ConfigMap's 1 MiB): select fewer \
                     PrometheusRules with ruleSelector, or split them across clusters"
                ),
            });
            continue;
        }
        used += file.content.len();
        files.push(file);
    }
    (files, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(yaml: &str) -> Rule {
        serde_yaml::from_str(yaml).unwrap_or_else(|e| unreachable!("{e}"))
    }

    fn group(name: &str, rules: Vec<Rule>) -> RuleGroup {
        RuleGroup { name: name.to_owned(), rules, ..RuleGroup::default() }
    }

    #[test]
    fn a_bad_rule_is_named_and_the_others_of_its_group_still_load() {
        let groups = vec![group(
            "app",
            vec![
                rule("record: job:up:sum\nexpr: sum by (job) (up)"),
                rule("alert: Broken\nexpr: sum(rate(x[5m])"),
                rule("alert: Down\nexpr: up == 0\nfor: 5m\nannotations:\n  summary: '{{ $labels.job }} is down'"),
            ],
        )];
        let (file, refused) = render_rule_file("PrometheusRule ns/app", "spec.groups", "k".into(), &groups);
        let file = file.unwrap_or_else(|| unreachable!());
        assert_eq!((file.groups, file.rules), (1, 2));
        assert!(file.content.contains("record: job:up:sum") && file.content.contains("alert: Down"));
        assert!(!file.content.contains("Broken"));
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].field, "spec.groups[0].rules[1].expr");
        assert!(refused[0].reason.starts_with("is not valid PromQL"), "{}", refused[0].reason);
    }

    #[test]
    fn what_prometheus_refuses_is_refused_with_the_field() {
        let cases = [
            ("record: a\nalert: b\nexpr: up", "", "only one"),
            ("expr: up", "", "must be set"),
            ("record: 'bad-name'\nexpr: up", ".record", "metric name"),
            ("record: ok\nexpr: up\nfor: 5m", ".for", "recording rule"),
            ("record: ok\nexpr: up\nannotations:\n  a: b", ".annotations", "recording rule"),
            ("alert: A\nexpr: up\nfor: 5 minutes", ".for", "duration"),
            ("alert: A\nexpr: up\nlabels:\n  __name__: x", ".labels", "label name"),
            ("alert: A\nexpr: up\nlabels:\n  bad-label: x", ".labels", "label name"),
            ("alert: A\nexpr: up\nannotations:\n  s: '{{ $value'", ".annotations.s", "unbalanced"),
            ("alert: A\nexpr: ''", ".expr", "must be set"),
            ("alert: A\nexpr: up\nthanos: x", ".thanos", "not supported"),
        ];
        for (yaml, field, reason) in cases {
            let (file, refused) = render_rule_file("o", "f", "k".into(), &[group("g", vec![rule(yaml)])]);
            assert!(file.is_some_and(|f| f.rules == 0), "{yaml}");
            assert_eq!(refused.len(), 1, "{yaml}");
            assert_eq!(refused[0].field, format!("f[0].rules[0]{field}"), "{yaml}");
            assert!(refused[0].reason.contains(reason), "{yaml}: {}", refused[0].reason);
        }
    }

    #[test]
    fn groups_need_distinct_names_and_valid_intervals() {
        let ok = || vec![rule("record: r\nexpr: '1'")];
        let mut bad_interval = group("b", ok());
        bad_interval.interval = Some("1 minute".to_owned());
        let groups = [group("a", ok()), group("a", ok()), bad_interval, group("", ok())];
        let (file, refused) = render_rule_file("o", "spec.groups", "k".into(), &groups);
        assert_eq!(file.map(|f| f.groups), Some(1));
        let fields: Vec<&str> = refused.iter().map(|r| r.field.as_str()).collect();
        assert_eq!(fields, ["spec.groups[1].name", "spec.groups[2].interval", "spec.groups[3].name"]);
    }

    #[test]
    fn rule_files_beyond_the_budget_are_refused_by_object() {
        let make = |name: &str| PrometheusRule {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("ns".to_owned()),
                ..Default::default()
            },
            spec: PrometheusRuleSpec { groups: vec![group("g", vec![rule("record: r\nexpr: up")])] },
        };
        let objects = [make("a"), make("b"), make("c")];
        let refs: Vec<&PrometheusRule> = objects.iter().collect();
        let (all, none) = render_prometheus_rules(&refs, RULE_FILES_BUDGET);
        assert_eq!((all.len(), none.len()), (3, 0));
        assert_eq!(all[0].key, "rules_ns_a.yml");
        let (two, refused) = render_prometheus_rules(&refs, all[0].content.len() * 2);
        assert_eq!(two.len(), 2);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].object, "PrometheusRule ns/c");
    }

    #[test]
    fn templates_are_balanced_or_refused() {
        for ok in ["", "plain", "{{ $value }}", "{{ a }} and {{ b }}", "{ x }"] {
            assert!(balanced_template(ok), "{ok}");
        }
        for bad in ["{{ a", "a }}", "{{ a {{ b }}", "{{ a }} }}"] {
            assert!(!balanced_template(bad), "{bad}");
        }
    }
}
