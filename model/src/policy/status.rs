//! The status the operator reports on a policy: condition `Accepted`,
//! `True`, or `False` with reason `Invalid` and the message the agents log
//! when they reject it. VerdictKind exactly as an agent judges: the object read
//! into its type as the agent's Kubernetes source reads it
//! ([`Object::from_value`]), then the parser the agent's policy compiler
//! runs ([`parse`]); no rule is restated here.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::Value;

use super::crd::{PolicyCondition, PolicyStatus};
use super::parse::{self, PolicyKind};
use crate::object::Object;

/// The condition's type.
pub const ACCEPTED: &str = "Accepted";
/// Its reason when the policy is accepted.
pub const REASON_VALID: &str = "Valid";
/// Its reason when the agents reject the policy (they deny in its place).
pub const REASON_INVALID: &str = "Invalid";

/// What the agents make of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// Rejected, with the reason the agents log.
    Invalid(String),
}

/// The agents' verdict on a policy object as the API server stores it.
pub fn judge(kind: PolicyKind, value: Value) -> Verdict {
    let object = match Object::from_value(kind.kind(), value) {
        Ok(o) => o,
        Err(e) => return Verdict::Invalid(parse::unreadable_reason(&e.to_string())),
    };
    let parsed = match &object {
        Object::NetworkPolicy(p) => parse::network_policy(p).map(drop),
        Object::WeirNetworkPolicy(p) => parse::weir_network_policy(p).map(drop),
        Object::WeirClusterNetworkPolicy(p) => parse::weir_cluster_network_policy(p).map(drop),
        Object::ClusterNetworkPolicy(p) => parse::cluster_network_policy(p).map(drop),
        other => unreachable!("{} is not a policy kind", other.describe()),
    };
    match parsed {
        Ok(()) => Verdict::Accepted,
        Err(r) => Verdict::Invalid(r.reason),
    }
}

impl PolicyStatus {
    /// The `Accepted` condition, if reported.
    pub fn accepted(&self) -> Option<&PolicyCondition> {
        self.conditions.iter().find(|c| c.type_ == ACCEPTED)
    }
}

/// The status to report `verdict` on `generation`, given the status the
/// object has (`old`): the transition time stays while the condition's
/// status does, so reporting the same verdict again changes nothing.
pub fn desired(verdict: &Verdict, generation: Option<i64>, old: Option<&PolicyStatus>, now: Time) -> PolicyStatus {
    let (status, reason, message) = match verdict {
        Verdict::Accepted => ("True", REASON_VALID, "valid: the agents apply it".to_owned()),
        Verdict::Invalid(why) => ("False", REASON_INVALID, why.clone()),
    };
    let since = match old.and_then(PolicyStatus::accepted) {
        Some(c) if c.status == status => c.last_transition_time.clone().unwrap_or(now),
        _ => now,
    };
    PolicyStatus {
        observed_generation: generation,
        conditions: vec![PolicyCondition {
            type_: ACCEPTED.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            last_transition_time: Some(since),
            observed_generation: generation,
        }],
    }
}

/// Whether `old` already says what `desired` says (the `Accepted`
/// condition and the observed generation; conditions others report are
/// theirs).
pub fn up_to_date(old: Option<&PolicyStatus>, desired: &PolicyStatus) -> bool {
    old.is_some_and(|o| o.observed_generation == desired.observed_generation && o.accepted() == desired.accepted())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    fn wnp(spec: Value) -> Value {
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "WeirNetworkPolicy",
               "metadata": {"name": "p", "namespace": "d", "generation": 3}, "spec": spec})
    }

    #[test]
    fn the_verdict_is_the_agents_own() {
        let ok = wnp(
            json!({"endpointSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": [{"entities": ["world"]}]}]}),
        );
        assert_eq!(judge(PolicyKind::WeirNetworkPolicy, ok), Verdict::Accepted);
        // The parser's own message, as the agent logs it.
        let bad = wnp(json!({"endpointSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]}}));
        let Verdict::Invalid(why) = judge(PolicyKind::WeirNetworkPolicy, bad.clone()) else {
            panic!("accepted")
        };
        let bad: crate::policy::crd::WeirNetworkPolicy = serde_json::from_value(bad).unwrap();
        assert_eq!(why, parse::weir_network_policy(&bad).unwrap_err().reason);
        assert!(why.contains("needs values"), "{why}");
        // Peers under the wrong key: rejected by the rules' parser.
        let wrong = wnp(json!({"ingress": [{"to": [{"entities": ["world"]}]}]}));
        assert!(matches!(
            judge(PolicyKind::WeirNetworkPolicy, wrong),
            Verdict::Invalid(_)
        ));
        // What the agent cannot read at all (a loosened schema let it in).
        let unreadable = wnp(json!({"ingress": "everything"}));
        let Verdict::Invalid(why) = judge(PolicyKind::WeirNetworkPolicy, unreadable) else {
            panic!("accepted")
        };
        assert!(why.starts_with("cannot be read: "), "{why}");
        let cluster = json!({"apiVersion": "weir.dev/v1alpha1", "kind": "WeirClusterNetworkPolicy",
            "metadata": {"name": "c"}, "spec": {"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Sometimes"}]}}});
        let Verdict::Invalid(why) = judge(PolicyKind::WeirClusterNetworkPolicy, cluster) else {
            panic!("accepted")
        };
        assert!(
            why.contains("namespaceSelector") && why.contains("unknown operator"),
            "{why}"
        );
    }

    #[test]
    fn the_transition_time_moves_only_with_the_status() {
        let t = |s: i64| Time(Timestamp::from_second(s).unwrap());
        let first = desired(&Verdict::Accepted, Some(1), None, t(100));
        assert_eq!(first.observed_generation, Some(1));
        let c = first.accepted().unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", REASON_VALID));
        assert_eq!(c.last_transition_time, Some(t(100)));
        assert!(up_to_date(
            Some(&first),
            &desired(&Verdict::Accepted, Some(1), Some(&first), t(200))
        ));

        let edited = desired(&Verdict::Accepted, Some(2), Some(&first), t(200));
        assert!(!up_to_date(Some(&first), &edited), "a new generation is reported");
        assert_eq!(
            edited.accepted().unwrap().last_transition_time,
            Some(t(100)),
            "still True"
        );

        let broken = desired(&Verdict::Invalid("no".into()), Some(3), Some(&edited), t(300));
        let c = broken.accepted().unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
            ("False", REASON_INVALID, "no")
        );
        assert_eq!(c.last_transition_time, Some(t(300)));
        assert!(!up_to_date(None, &broken));
    }
}
