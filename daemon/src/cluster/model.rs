use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

/// namespace ("" for cluster-scoped objects) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn of(meta: &ObjectMeta) -> Self {
        Self::new(
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        )
    }
}

/// The parts of the cluster the agent acts on.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    pub namespaces: BTreeMap<ObjectKey, Namespace>,
    pub nodes: BTreeMap<ObjectKey, Node>,
    pub pods: BTreeMap<ObjectKey, Pod>,
    pub services: BTreeMap<ObjectKey, Service>,
    pub endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    pub network_policies: BTreeMap<ObjectKey, NetworkPolicy>,
}

impl ClusterState {
    /// Adds one object given as YAML/JSON value; unknown kinds are ignored,
    /// malformed known kinds are an error naming the object.
    pub fn insert_value(&mut self, value: serde_yaml::Value) -> Result<(), String> {
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_owned();
        fn de<T: for<'de> Deserialize<'de>>(kind: &str, v: serde_yaml::Value) -> Result<T, String> {
            T::deserialize(v).map_err(|e| format!("invalid {kind}: {e}"))
        }
        // Namespaced objects without a namespace live in "default", as kubectl would put them.
        fn ns_key(meta: &mut ObjectMeta) -> ObjectKey {
            meta.namespace.get_or_insert_with(|| "default".into());
            ObjectKey::of(meta)
        }
        match kind.as_str() {
            "Namespace" => {
                let o: Namespace = de(&kind, value)?;
                self.namespaces.insert(ObjectKey::of(&o.metadata), o);
            }
            "Node" => {
                let o: Node = de(&kind, value)?;
                self.nodes.insert(ObjectKey::of(&o.metadata), o);
            }
            "Pod" => {
                let mut o: Pod = de(&kind, value)?;
                self.pods.insert(ns_key(&mut o.metadata), o);
            }
            "Service" => {
                let mut o: Service = de(&kind, value)?;
                self.services.insert(ns_key(&mut o.metadata), o);
            }
            "EndpointSlice" => {
                let mut o: EndpointSlice = de(&kind, value)?;
                self.endpoint_slices.insert(ns_key(&mut o.metadata), o);
            }
            "NetworkPolicy" => {
                let mut o: NetworkPolicy = de(&kind, value)?;
                self.network_policies.insert(ns_key(&mut o.metadata), o);
            }
            "List" => {
                if let Some(items) = value.get("items").and_then(|i| i.as_sequence()) {
                    for item in items.clone() {
                        self.insert_value(item)?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Labels of a pod, if the model knows it.
    pub fn pod_labels(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
        self.pods
            .get(&ObjectKey::new(namespace, name))
            .map(|p| p.metadata.labels.clone().unwrap_or_default())
    }
}

/// Parses a multi-document YAML text into the model; returns one error per
/// bad document and keeps every good one.
pub fn parse_manifests(state: &mut ClusterState, text: &str) -> Vec<String> {
    let mut errors = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        match serde_yaml::Value::deserialize(doc) {
            Ok(serde_yaml::Value::Null) => {}
            Ok(value) => {
                if let Err(e) = state.insert_value(value) {
                    errors.push(format!("document {}: {e}", i + 1));
                }
            }
            Err(e) => errors.push(format!("document {}: {e}", i + 1)),
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_manifests_and_keeps_good_documents() {
        let mut s = ClusterState::default();
        let errors = parse_manifests(
            &mut s,
            r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  namespace: demo
  labels: {app: web}
spec:
  containers:
    - name: web
      image: nginx
      ports: [{name: http, containerPort: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: broken}
spec: {containers: "not a list"}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{port: 80, targetPort: http}]}
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: ignored}
"#,
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("document 3") && errors[0].contains("invalid Pod"),
            "{errors:?}"
        );
        assert_eq!(s.namespaces.len(), 1);
        assert_eq!(
            s.pod_labels("demo", "web-0").unwrap().get("app").map(String::as_str),
            Some("web")
        );
        assert!(
            s.services.contains_key(&ObjectKey::new("default", "web")),
            "namespace defaults to default"
        );
    }
}
