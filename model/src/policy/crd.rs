//! weir's own policy kinds, `WeirNetworkPolicy` (namespaced) and
//! `WeirClusterNetworkPolicy` (cluster-wide): defined once here, as Rust
//! types with kube's `CustomResource` derive (which also makes their
//! CustomResourceDefinitions, `install/` writes them out), and read the same
//! way from YAML in standalone mode.
//!
//! What they add to Kubernetes NetworkPolicy, in the shape Cilium users know:
//! - `ingressDeny` / `egressDeny`: explicit deny rules, which win over every
//!   allow of every policy. A policy with deny rules only does not isolate
//!   the pods it selects: it denies what it names and nothing else.
//! - peers by entity (`world`, `cluster`, `host`, `remote-node`, `all`),
//!   besides pod and namespace selectors across namespaces and CIDRs with
//!   exceptions;
//! - ports without a protocol mean TCP, UDP and SCTP;
//! - `enforcement: audit`: the policy never drops; what it would deny is
//!   forwarded and recorded as an AUDIT verdict naming it, so a policy can
//!   be staged against live traffic before it is enforced.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The spec both kinds share.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "WeirNetworkPolicy",
    namespaced,
    shortname = "wnp",
    status = "PolicyStatus",
    derive = "PartialEq",
    derive = "Default",
    // Columns as JSON: the structured form repeats `type_ = "string"`,
    // which clippy takes for a duplicated attribute.
    printcolumn = r#"{"name": "Accepted", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].status", "description": "Whether the agents accept the policy (the operator judges it as they do)"}"#,
    printcolumn = r#"{"name": "Reason", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].reason"}"#,
    printcolumn = r#"{"name": "Enforcement", "type": "string", "jsonPath": ".spec.enforcement"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct WeirNetworkPolicySpec {
    #[serde(flatten)]
    pub rules: PolicyRules,
}

/// `WeirClusterNetworkPolicy`: the same rules for pods of any namespace.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "WeirClusterNetworkPolicy",
    shortname = "wcnp",
    status = "PolicyStatus",
    derive = "PartialEq",
    derive = "Default",
    // Columns as JSON: the structured form repeats `type_ = "string"`,
    // which clippy takes for a duplicated attribute.
    printcolumn = r#"{"name": "Accepted", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].status", "description": "Whether the agents accept the policy (the operator judges it as they do)"}"#,
    printcolumn = r#"{"name": "Reason", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].reason"}"#,
    printcolumn = r#"{"name": "Enforcement", "type": "string", "jsonPath": ".spec.enforcement"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct WeirClusterNetworkPolicySpec {
    /// The namespaces whose pods it selects (omitted: every namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(flatten)]
    pub rules: PolicyRules,
}

/// Which pods, and what they may send and receive.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRules {
    /// The pods the policy applies to (empty: all of them, in its scope).
    #[serde(default)]
    pub endpoint_selector: LabelSelector,
    #[serde(default)]
    pub enforcement: Enforcement,
    /// Allowed traffic into the selected pods. Present (even empty), it
    /// isolates them for ingress: what no rule allows is denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<Rule>>,
    /// Denied traffic into them, whatever else allows it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_deny: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<Rule>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_deny: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    /// Drops what it denies.
    #[default]
    Enforce,
    /// Never drops; records AUDIT verdicts for what it would deny.
    Audit,
}

/// One rule: peers (`from` in ingress rules, `to` in egress rules) and
/// ports. No peers: any peer. No ports: every port and protocol.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Peer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Peer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRule>,
}

/// A peer: pods (by pod and namespace labels), a CIDR, or entities;
/// exactly one kind per peer.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    /// Pods with these labels, in the namespaces `namespaceSelector`
    /// selects (omitted: the policy's own namespace; for a cluster-wide
    /// policy, every namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// An IPv4 CIDR (pod and node addresses in it count too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entities: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortRule {
    /// A number, or a container port's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "int_or_string")]
    pub port: Option<PortValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i32>,
    /// TCP, UDP or SCTP; omitted: all three.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// What the API server's structural schemas call int-or-string (as for
/// NetworkPolicy's own ports).
fn int_or_string(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"x-kubernetes-int-or-string": true})
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum PortValue {
    Number(i32),
    Name(String),
}

/// What weir's operator reports on the policy: whether the agents accept
/// it (condition `Accepted`), for which generation of its spec. Only the
/// operator writes it (server-side apply, field manager `weir-operator`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// The `metadata.generation` the conditions were judged on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`: `True`, or `False` with reason `Invalid` and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<PolicyCondition>,
}

/// A condition in Kubernetes' usual shape (the fields of meta/v1
/// `Condition`), every field but `type` and `status` optional, so a status
/// written by anything else never makes the policy unreadable to an agent.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyCondition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// One CamelCase word: why the condition is what it is.
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    /// When `status` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// The `metadata.generation` this condition was judged on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
