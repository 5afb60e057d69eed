//! Kubernetes label selectors, as Services, Deployments and NetworkPolicies
//! use them.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Does a label selector (matchLabels and matchExpressions) select `labels`?
/// An empty selector selects everything; an unknown operator selects
/// nothing, so a typo never widens what a selector means.
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = sel.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let have = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn match_labels_and_expressions() {
        let sel: LabelSelector = serde_json::from_str(
            r#"{"matchLabels": {"app": "api"}, "matchExpressions": [
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "app", "operator": "In", "values": ["api", "web"]}]}"#,
        )
        .unwrap();
        assert!(selector_matches(&sel, &l(&[("app", "api")])));
        assert!(!selector_matches(&sel, &l(&[("app", "db")])));
        assert!(!selector_matches(&sel, &l(&[("app", "api"), ("canary", "1")])));
        assert!(selector_matches(&LabelSelector::default(), &l(&[])));
        let bad: LabelSelector =
            serde_json::from_str(r#"{"matchExpressions": [{"key": "app", "operator": "Like"}]}"#).unwrap();
        assert!(!selector_matches(&bad, &l(&[("app", "api")])));
    }
}
