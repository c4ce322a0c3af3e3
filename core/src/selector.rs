//! Kubernetes label selectors (`matchLabels` and `matchExpressions`), evaluated against label maps. Pure.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` match `selector`. `None` and an empty selector match everything, as in the seed.
/// An expression with an unknown operator matches nothing (validation rejects such selectors up front).
pub fn matches(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = selector else { return true };
    let labels_ok =
        selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k).is_some_and(|actual| actual == v));
    let exprs_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let actual = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => actual.is_some_and(|a| values.contains(a)),
            "NotIn" => actual.is_none_or(|a| !values.contains(a)),
            "Exists" => actual.is_some(),
            "DoesNotExist" => actual.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// Whether the selector selects everything (unset, or no labels and no expressions).
pub fn is_empty(selector: Option<&LabelSelector>) -> bool {
    selector.is_none_or(|s| {
        s.match_labels.as_ref().is_none_or(BTreeMap::is_empty) && s.match_expressions.as_ref().is_none_or(Vec::is_empty)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
        }
    }

    #[test]
    fn unset_and_empty_selectors_match_everything() {
        assert!(matches(None, &labels(&[])));
        assert!(matches(Some(&LabelSelector::default()), &labels(&[("a", "b")])));
        assert!(is_empty(Some(&LabelSelector::default())));
    }

    #[test]
    fn match_labels_and_expressions_must_all_hold() {
        let sel = LabelSelector {
            match_labels: Some(BTreeMap::from([("team".to_owned(), "a".to_owned())])),
            match_expressions: Some(vec![
                expr("env", "In", &["prod", "stage"]),
                expr("legacy", "DoesNotExist", &[]),
                expr("tier", "NotIn", &["dev"]),
            ]),
        };
        assert!(matches(Some(&sel), &labels(&[("team", "a"), ("env", "prod")])));
        assert!(!matches(Some(&sel), &labels(&[("team", "a"), ("env", "dev")])));
        assert!(!matches(Some(&sel), &labels(&[("team", "a"), ("env", "prod"), ("legacy", "1")])));
        assert!(!matches(Some(&sel), &labels(&[("team", "a"), ("env", "prod"), ("tier", "dev")])));
        assert!(!matches(Some(&sel), &labels(&[("env", "prod")])));
    }

    #[test]
    fn unknown_operator_matches_nothing() {
        let sel = LabelSelector { match_expressions: Some(vec![expr("a", "Like", &["x"])]), ..Default::default() };
        assert!(!matches(Some(&sel), &labels(&[("a", "x")])));
    }
}
