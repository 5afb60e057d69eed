//! Kubernetes objects weir reads, parsed from multi-document YAML or JSON
//! into k8s-openapi types. One parser for the agent's manifest directory
//! and the lab's `apply`: the lab refuses a text with any bad document
//! ([`parse_documents`]), the agent keeps the good ones ([`parse_each`]).
//!
//! YAML is read with serde_yaml_ng (the maintained fork of serde_yaml, which
//! is deprecated upstream; YAML 1.2, so `n` and `on` stay strings) into a
//! JSON value first: k8s-openapi's types are made for JSON, and the `kind`
//! decides the type before the typed pass.

use crate::identity::WeirIdentity;
use crate::policy::cnp::ClusterNetworkPolicy;
use crate::policy::crd::{WeirClusterNetworkPolicy, WeirNetworkPolicy};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why a manifest could not be used. Documents count from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The text is not YAML (JSON is YAML too).
    #[error("not valid YAML: {0}")]
    Yaml(String),
    /// A document is not an object with a `kind`.
    #[error("document {index}: no `kind`")]
    NoKind { index: usize },
    /// A kind weir does not handle.
    #[error("document {index}: kind {kind:?} is not handled")]
    UnknownKind { index: usize, kind: String },
    /// A known kind whose fields do not fit its type, or whose name or
    /// namespace is not a valid Kubernetes name.
    #[error("document {index}: invalid {kind}: {reason}")]
    Invalid {
        index: usize,
        kind: &'static str,
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    Service,
    EndpointSlice,
    NetworkPolicy,
    Node,
    Deployment,
    WeirIdentity,
    WeirNetworkPolicy,
    WeirClusterNetworkPolicy,
    ClusterNetworkPolicy,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::NetworkPolicy,
        Kind::Deployment,
        Kind::WeirIdentity,
        Kind::WeirNetworkPolicy,
        Kind::WeirClusterNetworkPolicy,
        Kind::ClusterNetworkPolicy,
    ];

    /// Parse a kind the way kubectl does: singular, plural, short name, any case.
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s.to_ascii_lowercase().as_str() {
            "pod" | "pods" | "po" => Kind::Pod,
            "service" | "services" | "svc" => Kind::Service,
            "namespace" | "namespaces" | "ns" => Kind::Namespace,
            "node" | "nodes" | "no" => Kind::Node,
            "endpointslice" | "endpointslices" => Kind::EndpointSlice,
            "networkpolicy" | "networkpolicies" | "netpol" => Kind::NetworkPolicy,
            "deployment" | "deployments" | "deploy" => Kind::Deployment,
            "weiridentity" | "weiridentities" => Kind::WeirIdentity,
            "weirnetworkpolicy" | "weirnetworkpolicies" | "wnp" => Kind::WeirNetworkPolicy,
            "weirclusternetworkpolicy" | "weirclusternetworkpolicies" | "wcnp" => Kind::WeirClusterNetworkPolicy,
            "clusternetworkpolicy" | "clusternetworkpolicies" | "cnp" => Kind::ClusterNetworkPolicy,
            _ => return None,
        })
    }

    /// The `kind:` field.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Node => "Node",
            Kind::Deployment => "Deployment",
            Kind::WeirIdentity => "WeirIdentity",
            Kind::WeirNetworkPolicy => "WeirNetworkPolicy",
            Kind::WeirClusterNetworkPolicy => "WeirClusterNetworkPolicy",
            Kind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
        }
    }

    /// Lower-case name, as in messages and directory names.
    pub fn dir(self) -> String {
        self.name().to_ascii_lowercase()
    }

    pub fn namespaced(self) -> bool {
        !matches!(
            self,
            Kind::Namespace
                | Kind::Node
                | Kind::WeirIdentity
                | Kind::WeirClusterNetworkPolicy
                | Kind::ClusterNetworkPolicy
        )
    }
}

/// One Kubernetes object of a kind weir handles.
#[expect(
    clippy::large_enum_variant,
    reason = "objects are parsed a handful at a time; boxing buys nothing"
)]
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    Service(Service),
    EndpointSlice(EndpointSlice),
    NetworkPolicy(NetworkPolicy),
    Node(Node),
    Deployment(Deployment),
    WeirIdentity(WeirIdentity),
    WeirNetworkPolicy(WeirNetworkPolicy),
    WeirClusterNetworkPolicy(WeirClusterNetworkPolicy),
    ClusterNetworkPolicy(ClusterNetworkPolicy),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
            Object::Node(_) => Kind::Node,
            Object::Deployment(_) => Kind::Deployment,
            Object::WeirIdentity(_) => Kind::WeirIdentity,
            Object::WeirNetworkPolicy(_) => Kind::WeirNetworkPolicy,
            Object::WeirClusterNetworkPolicy(_) => Kind::WeirClusterNetworkPolicy,
            Object::ClusterNetworkPolicy(_) => Kind::ClusterNetworkPolicy,
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::Deployment(o) => &o.metadata,
            Object::WeirIdentity(o) => &o.metadata,
            Object::WeirNetworkPolicy(o) => &o.metadata,
            Object::WeirClusterNetworkPolicy(o) => &o.metadata,
            Object::ClusterNetworkPolicy(o) => &o.metadata,
        }
    }

    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Namespace(o) => &mut o.metadata,
            Object::Pod(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::EndpointSlice(o) => &mut o.metadata,
            Object::NetworkPolicy(o) => &mut o.metadata,
            Object::Node(o) => &mut o.metadata,
            Object::Deployment(o) => &mut o.metadata,
            Object::WeirIdentity(o) => &mut o.metadata,
            Object::WeirNetworkPolicy(o) => &mut o.metadata,
            Object::WeirClusterNetworkPolicy(o) => &mut o.metadata,
            Object::ClusterNetworkPolicy(o) => &mut o.metadata,
        }
    }

    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }

    /// The namespace, `None` for cluster-scoped kinds.
    pub fn namespace(&self) -> Option<&str> {
        self.kind()
            .namespaced()
            .then(|| self.meta().namespace.as_deref().unwrap_or("default"))
    }

    /// `kind ns/name`, for messages.
    pub fn describe(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{} {ns}/{}", self.kind().dir(), self.name()),
            None => format!("{} {}", self.kind().dir(), self.name()),
        }
    }

    pub fn to_json(&self) -> Value {
        fn j<T: Serialize>(t: &T) -> Value {
            serde_json::to_value(t).unwrap_or(Value::Null)
        }
        match self {
            Object::Namespace(o) => j(o),
            Object::Pod(o) => j(o),
            Object::Service(o) => j(o),
            Object::EndpointSlice(o) => j(o),
            Object::NetworkPolicy(o) => j(o),
            Object::Node(o) => j(o),
            Object::Deployment(o) => j(o),
            Object::WeirIdentity(o) => j(o),
            Object::WeirNetworkPolicy(o) => j(o),
            Object::WeirClusterNetworkPolicy(o) => j(o),
            Object::ClusterNetworkPolicy(o) => j(o),
        }
    }

    pub fn to_yaml(&self) -> String {
        to_yaml(&self.to_json())
    }

    /// The typed object of a known kind from its JSON value.
    pub fn from_value(kind: Kind, value: Value) -> Result<Object, serde_json::Error> {
        fn de<T: DeserializeOwned>(v: Value) -> Result<T, serde_json::Error> {
            serde_json::from_value(v)
        }
        Ok(match kind {
            Kind::Namespace => Object::Namespace(de(value)?),
            Kind::Pod => Object::Pod(de(value)?),
            Kind::Service => Object::Service(de(value)?),
            Kind::EndpointSlice => Object::EndpointSlice(de(value)?),
            Kind::NetworkPolicy => Object::NetworkPolicy(de(value)?),
            Kind::Node => Object::Node(de(value)?),
            Kind::Deployment => Object::Deployment(de(value)?),
            Kind::WeirIdentity => Object::WeirIdentity(de(value)?),
            Kind::WeirNetworkPolicy => Object::WeirNetworkPolicy(de(value)?),
            Kind::WeirClusterNetworkPolicy => Object::WeirClusterNetworkPolicy(de(value)?),
            Kind::ClusterNetworkPolicy => Object::ClusterNetworkPolicy(de(value)?),
        })
    }
}

/// YAML text of any serializable value (objects, `get -o yaml`).
pub fn to_yaml<T: Serialize>(value: &T) -> String {
    serde_yaml_ng::to_string(value).unwrap_or_default()
}

/// A Kubernetes object name: 1-253 chars of [a-z0-9.-], starting and ending alphanumeric.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// Every object of a multi-document YAML text (and of `kind: List` items),
/// or the first reason one cannot be used. Namespaced objects without a
/// namespace get `default`, as kubectl would put them.
pub fn parse_documents(text: &str) -> Result<Vec<Object>, ParseError> {
    let docs = documents(text)?;
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        push_document(i + 1, doc, &mut out, &mut |e| Err(e))?;
    }
    Ok(out)
}

/// Every usable object, and a reason for each document that is not. Kinds
/// weir does not handle are left out silently: a manifest directory may
/// hold anything a cluster holds.
pub fn parse_each(text: &str) -> (Vec<Object>, Vec<ParseError>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    match documents(text) {
        Ok(docs) => {
            for (i, doc) in docs.into_iter().enumerate() {
                let _ = push_document(i + 1, doc, &mut out, &mut |e| {
                    if !matches!(e, ParseError::UnknownKind { .. }) {
                        errors.push(e);
                    }
                    Ok(())
                });
            }
        }
        Err(e) => errors.push(e),
    }
    (out, errors)
}

/// The non-empty documents of a YAML text. A syntax error ends the text:
/// the parser cannot find the next document after one (and its document
/// iterator would repeat the error forever).
fn documents(text: &str) -> Result<Vec<Value>, ParseError> {
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).map_err(|e| ParseError::Yaml(e.to_string()))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// Adds the objects of one document to `out`; `fail` decides whether an
/// error ends the parse (`Err`) or is recorded and skipped (`Ok`).
fn push_document(
    index: usize,
    value: Value,
    out: &mut Vec<Object>,
    fail: &mut dyn FnMut(ParseError) -> Result<(), ParseError>,
) -> Result<(), ParseError> {
    let Some(kind) = value.get("kind").and_then(Value::as_str).map(str::to_owned) else {
        return fail(ParseError::NoKind { index });
    };
    if kind == "List" || kind.ends_with("List") && value.get("items").is_some() {
        let Value::Object(mut map) = value else { return Ok(()) };
        if let Some(Value::Array(items)) = map.remove("items") {
            for item in items {
                push_document(index, item, out, fail)?;
            }
        }
        return Ok(());
    }
    let Some(k) = Kind::ALL.into_iter().find(|k| k.name() == kind) else {
        return fail(ParseError::UnknownKind { index, kind });
    };
    let invalid = |reason: String| ParseError::Invalid {
        index,
        kind: k.name(),
        reason,
    };
    let mut obj = match Object::from_value(k, value) {
        Ok(o) => o,
        Err(e) => return fail(invalid(e.to_string())),
    };
    if !valid_name(obj.name()) {
        return fail(invalid(format!("invalid or missing metadata.name {:?}", obj.name())));
    }
    if k.namespaced() {
        let ns = obj.meta_mut().namespace.get_or_insert_with(|| "default".into()).clone();
        if !valid_name(&ns) {
            return fail(invalid(format!("{}: invalid namespace {ns:?}", obj.name())));
        }
    }
    out.push(obj);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_namespace_and_expands_lists() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: s}\n  spec: {ports: [{port: 80}]}\n---\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}}\n";
        let objs = parse_documents(text).unwrap();
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[0].describe(), "service default/s");
        assert_eq!(objs[1].describe(), "networkpolicy x/p");
    }

    #[test]
    fn rejects_unknown_kinds_and_bad_names() {
        assert!(matches!(
            parse_documents("apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: d}\n"),
            Err(ParseError::UnknownKind { index: 1, .. })
        ));
        assert!(
            parse_documents("apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name}\nspec: {containers: []}\n").is_err()
        );
        assert!(parse_documents("apiVersion: v1\nkind: Pod\nmetadata: {}\nspec: {containers: []}\n").is_err());
        assert!(matches!(parse_documents("a: [1, 2\n"), Err(ParseError::Yaml(_))));
    }

    #[test]
    fn a_syntax_error_is_one_error_not_a_hang() {
        let (objs, errors) =
            parse_each("kind: Namespace\nmetadata: {name: a}\n---\na: [1\n---\nkind: Namespace\nmetadata: {name: b}\n");
        assert!(objs.is_empty());
        assert_eq!(errors.len(), 1, "{errors:?}");
    }

    #[test]
    fn lenient_parse_keeps_good_documents_and_ignores_unknown_kinds() {
        let (objs, errors) = parse_each(
            "kind: Pod\nmetadata: {name: ok}\n---\nkind: Pod\nmetadata: {name: broken}\nspec: {containers: 1}\n---\nkind: Widget\nmetadata: {name: w}\n",
        );
        assert_eq!(objs.len(), 1);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].to_string().starts_with("document 2: invalid Pod"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn yaml_round_trip_keeps_strings_that_look_like_numbers() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: n, labels: {version: \"1.10\", on: \"true\", y: \"01\"}}\nspec: {ports: [{port: 80, targetPort: \"8080\"}]}\n";
        let obj = parse_documents(text).unwrap().remove(0);
        let again = parse_documents(&obj.to_yaml()).unwrap().remove(0);
        assert_eq!(obj, again);
    }
}
