//! The lab's "API server": Kubernetes objects as typed k8s-openapi values,
//! stored one file per object under `<lab-dir>/manifests`, where the agents
//! read them. Parsing, paths, pod placement and pod status are pure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, PodCondition, PodIP, PodStatus, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

use super::state::write_atomic;

/// Directory name used for cluster-scoped objects.
pub const CLUSTER_SCOPE: &str = "_cluster";

/// Why a manifest could not be parsed, stored or loaded.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A YAML document did not parse.
    #[error("document {index}: {source}")]
    Yaml {
        index: usize,
        #[source]
        source: serde_yaml::Error,
    },
    /// A document parsed but is not an object the lab handles.
    #[error("document {index}: {reason}")]
    Unsupported { index: usize, reason: String },
    /// Reading or writing the store failed.
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Pod,
    Service,
    EndpointSlice,
    NetworkPolicy,
    Node,
    Deployment,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::NetworkPolicy,
        Kind::Deployment,
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
        }
    }

    /// Directory under the manifests dir.
    pub fn dir(self) -> String {
        self.name().to_ascii_lowercase()
    }

    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node)
    }
}

/// One object the lab holds.
#[expect(
    clippy::large_enum_variant,
    reason = "a handful of objects per command; boxing buys nothing"
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
        }
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Namespace(o) => &mut o.metadata,
            Object::Pod(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::EndpointSlice(o) => &mut o.metadata,
            Object::NetworkPolicy(o) => &mut o.metadata,
            Object::Node(o) => &mut o.metadata,
            Object::Deployment(o) => &mut o.metadata,
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

    pub fn to_json(&self) -> serde_json::Value {
        fn j<T: Serialize>(t: &T) -> serde_json::Value {
            serde_json::to_value(t).unwrap_or(serde_json::Value::Null)
        }
        match self {
            Object::Namespace(o) => j(o),
            Object::Pod(o) => j(o),
            Object::Service(o) => j(o),
            Object::EndpointSlice(o) => j(o),
            Object::NetworkPolicy(o) => j(o),
            Object::Node(o) => j(o),
            Object::Deployment(o) => j(o),
        }
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(&self.to_json()).unwrap_or_default()
    }

    fn from_value(kind: Kind, value: serde_yaml::Value) -> Result<Object, serde_yaml::Error> {
        Ok(match kind {
            Kind::Namespace => Object::Namespace(serde_yaml::from_value(value)?),
            Kind::Pod => Object::Pod(serde_yaml::from_value(value)?),
            Kind::Service => Object::Service(serde_yaml::from_value(value)?),
            Kind::EndpointSlice => Object::EndpointSlice(serde_yaml::from_value(value)?),
            Kind::NetworkPolicy => Object::NetworkPolicy(serde_yaml::from_value(value)?),
            Kind::Node => Object::Node(serde_yaml::from_value(value)?),
            Kind::Deployment => Object::Deployment(serde_yaml::from_value(value)?),
        })
    }
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

/// Parse multi-document YAML (and `kind: List`) into typed objects.
/// Namespaced objects without a namespace get `default`.
pub fn parse_documents(text: &str) -> Result<Vec<Object>, ManifestError> {
    let mut out = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = <serde_yaml::Value as serde::Deserialize>::deserialize(doc)
            .map_err(|source| ManifestError::Yaml { index, source })?;
        if value.is_null() {
            continue;
        }
        push_value(index, value, &mut out)?;
    }
    Ok(out)
}

fn push_value(index: usize, value: serde_yaml::Value, out: &mut Vec<Object>) -> Result<(), ManifestError> {
    let unsupported = |reason: String| ManifestError::Unsupported { index, reason };
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .ok_or_else(|| unsupported("no `kind`".into()))?
        .to_owned();
    if kind == "List" || kind.ends_with("List") && value.get("items").is_some() {
        let items = value
            .get("items")
            .and_then(|i| i.as_sequence())
            .cloned()
            .unwrap_or_default();
        for item in items {
            push_value(index, item, out)?;
        }
        return Ok(());
    }
    let k = Kind::ALL
        .into_iter()
        .find(|k| k.name() == kind)
        .ok_or_else(|| unsupported(format!("kind {kind:?} is not handled by the lab")))?;
    let mut obj = Object::from_value(k, value).map_err(|source| ManifestError::Yaml { index, source })?;
    if !valid_name(obj.name()) {
        return Err(unsupported(format!(
            "{kind}: invalid or missing metadata.name {:?}",
            obj.name()
        )));
    }
    if k.namespaced() {
        let ns = obj.meta_mut().namespace.get_or_insert_with(|| "default".into()).clone();
        if !valid_name(&ns) {
            return Err(unsupported(format!("{kind} {}: invalid namespace {ns:?}", obj.name())));
        }
    }
    out.push(obj);
    Ok(())
}

/// One file per object: `<root>/<kind>/<namespace or _cluster>/<name>.yaml`.
#[derive(Debug, Clone)]
pub struct Store {
    pub root: PathBuf,
}

impl Store {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn path(&self, kind: Kind, namespace: Option<&str>, name: &str) -> PathBuf {
        let scope = if kind.namespaced() {
            namespace.unwrap_or("default")
        } else {
            CLUSTER_SCOPE
        };
        self.root.join(kind.dir()).join(scope).join(format!("{name}.yaml"))
    }

    fn path_of(&self, obj: &Object) -> PathBuf {
        self.path(obj.kind(), obj.namespace(), obj.name())
    }

    /// Write (create or replace) an object atomically.
    pub fn put(&self, obj: &Object) -> Result<(), ManifestError> {
        let path = self.path_of(obj);
        write_atomic(&path, obj.to_yaml().as_bytes()).map_err(|e| ManifestError::Io {
            path: path.clone(),
            reason: format!("{e:#}"),
        })
    }

    pub fn get(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Result<Option<Object>, ManifestError> {
        load(kind, &self.path(kind, namespace, name))
    }

    /// Remove an object; `false` when it was not there.
    pub fn remove(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Result<bool, ManifestError> {
        let path = self.path(kind, namespace, name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(ManifestError::Io {
                path,
                reason: e.to_string(),
            }),
        }
    }

    /// All objects of a kind, optionally in one namespace, sorted by namespace and name.
    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> Result<Vec<Object>, ManifestError> {
        let mut out = Vec::new();
        let kind_dir = self.root.join(kind.dir());
        for scope in sorted_entries(&kind_dir)? {
            if namespace.is_some_and(|ns| kind.namespaced() && scope.file_name().is_some_and(|f| f != ns)) {
                continue;
            }
            for file in sorted_entries(&scope)? {
                let visible = file.file_name().is_some_and(|f| !f.to_string_lossy().starts_with('.'));
                if visible && file.extension().is_some_and(|e| e == "yaml") {
                    out.extend(load(kind, &file)?);
                }
            }
        }
        Ok(out)
    }
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
            v.sort();
            Ok(v)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(ManifestError::Io {
            path: dir.to_owned(),
            reason: e.to_string(),
        }),
    }
}

fn load(kind: Kind, path: &Path) -> Result<Option<Object>, ManifestError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ManifestError::Io {
                path: path.to_owned(),
                reason: e.to_string(),
            });
        }
    };
    let value: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| ManifestError::Io {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    Object::from_value(kind, value)
        .map(Some)
        .map_err(|e| ManifestError::Io {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

/// Pick a node for a pod: the one with the fewest pods, ties broken by the
/// order of `nodes` (the topology's order).
pub fn pick_node<'a>(nodes: &'a [String], pods_per_node: &BTreeMap<String, usize>) -> Option<&'a String> {
    nodes.iter().min_by_key(|n| pods_per_node.get(*n).copied().unwrap_or(0))
}

/// Fill in a pod's status the way kubelet does once its sandbox has an address.
pub fn set_running(pod: &mut Pod, ip: &str) {
    let cond = |t: &str| PodCondition {
        type_: t.into(),
        status: "True".into(),
        ..Default::default()
    };
    pod.status = Some(PodStatus {
        phase: Some("Running".into()),
        pod_ip: Some(ip.into()),
        pod_ips: Some(vec![PodIP { ip: ip.into() }]),
        conditions: Some(vec![
            cond("PodScheduled"),
            cond("Initialized"),
            cond("ContainersReady"),
            cond("Ready"),
        ]),
        ..Default::default()
    });
}

/// `(port, "TCP"|"UDP")` for every declared container port (TCP when unset).
pub fn container_ports(pod: &Pod) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        for p in c.ports.iter().flatten() {
            let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into()).to_ascii_uppercase();
            if let Ok(port) = u16::try_from(p.container_port) {
                out.push((port, proto));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A random RFC 4122 version 4 UUID string.
pub fn new_uid() -> std::io::Result<String> {
    let mut b = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = include_str!("../../../lab/demo/pods.yaml");

    #[test]
    fn parses_the_demo_manifests() {
        let objs = parse_documents(DEMO).unwrap();
        let kinds: Vec<_> = objs.iter().map(|o| o.describe()).collect();
        assert_eq!(
            kinds,
            ["namespace demo", "pod demo/client", "pod demo/web-0", "pod demo/web-1"]
        );
        let Object::Pod(web) = &objs[2] else { panic!() };
        assert_eq!(container_ports(web), [(53, "UDP".to_string()), (80, "TCP".to_string())]);
    }

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
        assert!(parse_documents("apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: d}\n").is_err());
        assert!(
            parse_documents("apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name}\nspec: {containers: []}\n").is_err()
        );
        assert!(parse_documents("apiVersion: v1\nkind: Pod\nmetadata: {}\nspec: {containers: []}\n").is_err());
    }

    #[test]
    fn kind_aliases() {
        assert_eq!(Kind::parse("po"), Some(Kind::Pod));
        assert_eq!(Kind::parse("SVC"), Some(Kind::Service));
        assert_eq!(Kind::parse("netpol"), Some(Kind::NetworkPolicy));
        assert_eq!(Kind::parse("endpointslices"), Some(Kind::EndpointSlice));
        assert_eq!(Kind::parse("nodes"), Some(Kind::Node));
        assert_eq!(Kind::parse("deploy"), Some(Kind::Deployment));
        assert_eq!(Kind::parse("replicaset"), None);
    }

    #[test]
    fn store_round_trips_and_lists() {
        let dir = std::env::temp_dir().join(format!("weir-store-test-{}", std::process::id()));
        let store = Store::new(&dir);
        for o in parse_documents(DEMO).unwrap() {
            store.put(&o).unwrap();
        }
        assert!(dir.join("pod/demo/web-0.yaml").exists());
        assert!(dir.join("namespace/_cluster/demo.yaml").exists());
        std::fs::write(dir.join("pod/demo/.web-9.yaml.tmp"), "junk").unwrap();
        let pods = store.list(Kind::Pod, None).unwrap();
        assert_eq!(
            pods.iter().map(|p| p.name()).collect::<Vec<_>>(),
            ["client", "web-0", "web-1"]
        );
        assert!(store.list(Kind::Pod, Some("other")).unwrap().is_empty());
        assert!(store.remove(Kind::Pod, Some("demo"), "web-0").unwrap());
        assert!(!store.remove(Kind::Pod, Some("demo"), "web-0").unwrap());
        assert!(store.get(Kind::Pod, Some("demo"), "web-0").unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn spreads_pods_over_the_least_loaded_node() {
        let nodes = vec!["a".to_string(), "b".to_string()];
        let mut counts = BTreeMap::new();
        assert_eq!(pick_node(&nodes, &counts).unwrap(), "a");
        counts.insert("a".to_string(), 1);
        assert_eq!(pick_node(&nodes, &counts).unwrap(), "b");
        counts.insert("b".to_string(), 1);
        assert_eq!(pick_node(&nodes, &counts).unwrap(), "a");
        assert!(pick_node(&[], &counts).is_none());
    }

    #[test]
    fn running_status_has_ip_and_ready() {
        let mut pod = Pod::default();
        set_running(&mut pod, "10.244.1.7");
        let s = pod.status.unwrap();
        assert_eq!(s.pod_ip.as_deref(), Some("10.244.1.7"));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert!(
            s.conditions
                .unwrap()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        );
    }

    #[test]
    fn uids_look_like_uuids() {
        let u = new_uid().unwrap();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, new_uid().unwrap());
    }
}
