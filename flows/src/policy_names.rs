//! Rule references to names, for flows and metrics: the policy
//! controller (the writer) updates them from each compile, the flow
//! pipeline (the reader) names verdicts with them at event time.
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use weir_model::policy::{RuleRef, RuleWhat};
use weir_proto::flow;

/// What a rule reference names, ready for flows.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyName {
    pub rule: RuleRef,
    /// Hubble's form (`*_allowed_by`, `*_denied_by`).
    pub hubble: flow::Policy,
    /// For people: "NetworkPolicy a/allow-web ingress[0]".
    pub text: String,
}

impl PolicyName {
    pub fn of(rule: &RuleRef) -> Self {
        let what = rule.what_text();
        let (kind, namespace, name) = match &rule.policy {
            Some(p) => (p.kind.name().to_string(), p.namespace.clone(), p.name.clone()),
            None => (
                "weir".to_string(),
                String::new(),
                match rule.what {
                    RuleWhat::HostAllowed => "host-allowed",
                    RuleWhat::OverBudget => "over-budget",
                    _ => "unknown-pod",
                }
                .to_string(),
            ),
        };
        let text = rule.text();
        let mut labels = vec![
            format!("k8s:io.cilium.k8s.policy.derived-from={kind}"),
            format!("k8s:io.cilium.k8s.policy.name={name}"),
        ];
        if !namespace.is_empty() {
            labels.push(format!("k8s:io.cilium.k8s.policy.namespace={namespace}"));
        }
        labels.push(format!("weir:rule={what}"));
        Self {
            rule: rule.clone(),
            hubble: flow::Policy {
                name,
                namespace,
                labels,
                revision: 0,
                kind,
            },
            text,
        }
    }
}

/// Rule references to names, shared by the controller (writer) and the
/// flow pipeline (reader, at event time).
#[derive(Debug, Default)]
pub struct PolicyNames {
    names: RwLock<BTreeMap<u32, Arc<PolicyName>>>,
    /// What the pass before last named and the last one did not: kept one
    /// pass more, for events already in the ring and connections not yet
    /// judged again (the revision bump re-judges them on their next
    /// packet), then forgotten, so names do not pile up as policies come
    /// and go.
    retired: RwLock<BTreeMap<u32, Arc<PolicyName>>>,
}

impl PolicyNames {
    pub fn get(&self, reference: u32) -> Option<Arc<PolicyName>> {
        if reference == 0 {
            return None;
        }
        let names = self.names.read().unwrap_or_else(|p| p.into_inner());
        names.get(&reference).cloned().or_else(|| {
            self.retired
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&reference)
                .cloned()
        })
    }

    /// Takes the compiler's references; a name that did not change keeps
    /// its `Arc`.
    pub fn update(&self, rules: &BTreeMap<u32, RuleRef>) {
        let mut names = self.names.write().unwrap_or_else(|p| p.into_inner());
        let mut next = BTreeMap::new();
        for (id, rule) in rules {
            let name = match names.remove(id) {
                Some(n) if n.rule == *rule => n,
                _ => Arc::new(PolicyName::of(rule)),
            };
            next.insert(*id, name);
        }
        let gone = std::mem::replace(&mut *names, next);
        *self.retired.write().unwrap_or_else(|p| p.into_inner()) = gone;
    }

    pub fn len(&self) -> usize {
        self.names.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_model::policy::{Direction, MatchType, PolicyId, PolicyKind};

    fn rule(name: &str, index: usize) -> RuleRef {
        RuleRef {
            policy: Some(PolicyId {
                kind: PolicyKind::NetworkPolicy,
                namespace: "x".into(),
                name: name.into(),
            }),
            direction: Direction::Ingress,
            what: RuleWhat::Allow {
                index,
                match_type: MatchType::L3L4,
            },
            audit: false,
        }
    }

    #[test]
    fn names_follow_the_rules_and_forget_old_ones_after_a_pass() {
        let names = PolicyNames::default();
        names.update(&[(1, rule("a", 0)), (2, rule("b", 0))].into());
        let a = names.get(1).unwrap();
        assert_eq!(a.text, "NetworkPolicy x/a ingress[0]");
        assert_eq!(a.hubble.kind, "NetworkPolicy");
        names.update(&[(1, rule("a", 0))].into());
        assert!(Arc::ptr_eq(&a, &names.get(1).unwrap()), "unchanged: the same name");
        assert_eq!(
            names.get(2).unwrap().rule,
            rule("b", 0),
            "kept one pass for events in flight"
        );
        names.update(&[(1, rule("a", 0))].into());
        assert!(names.get(2).is_none(), "then forgotten");
        assert_eq!(names.len(), 1);
        assert!(names.get(0).is_none(), "0 is no rule");
    }
}
