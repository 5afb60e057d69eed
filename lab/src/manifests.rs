//! The lab's "API server": Kubernetes objects as typed k8s-openapi values,
//! stored one file per object under `<lab-dir>/manifests`, where the agents
//! read them. Parsing, paths, pod placement and pod status are pure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Pod, PodCondition, PodIP, PodStatus};
pub use weir_model::{Kind, Object, ParseError};

use super::state::write_atomic;

/// Directory name used for cluster-scoped objects.
pub const CLUSTER_SCOPE: &str = "_cluster";

/// Why a manifest could not be parsed, stored or loaded.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A document is not YAML, or not an object the lab handles.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// Reading or writing the store failed.
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
}

/// Multi-document YAML (and `kind: List`) into typed objects; any bad
/// document fails the whole text, as `kubectl apply` would.
pub fn parse_documents(text: &str) -> Result<Vec<Object>, ManifestError> {
    Ok(weir_model::parse_documents(text)?)
}

/// Longest name (or namespace) a file or directory of the store is named
/// after as it is: `<name>.yaml` and a writer's temporary
/// `.<name>.yaml.tmp` (`state::write_atomic`) both fit in the 255 bytes a
/// file name may have. Every name the store could hold before longer
/// names were bounded is still stored under the same path.
pub const PLAIN_NAME_MAX: usize = 245;
/// How much of a longer name a bounded file name keeps, for people reading
/// the directory.
const BOUNDED_PREFIX: usize = 200;

/// `stem` as the stem of a file name that fits the limit with an extension
/// and a writer's temporary prefix and suffix: unchanged up to
/// [`PLAIN_NAME_MAX`] bytes; longer (a pod's name may have 253
/// characters), its first 200 bytes, `_` and 16 hex digits of FNV-1a over
/// the whole of it. `_` is in no Kubernetes name, so a bounded stem is never
/// another object's plain one.
pub fn bounded_stem(stem: &str) -> String {
    if stem.len() <= PLAIN_NAME_MAX {
        return stem.to_owned();
    }
    let mut cut = BOUNDED_PREFIX;
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    let hash = weir_agent_api::names::fnv1a64(stem.as_bytes());
    format!("{}_{hash:016x}", &stem[..cut])
}

/// One file per object: `<root>/<kind>/<namespace or _cluster>/<name>.yaml`,
/// the namespace and name bounded by [`bounded_stem`] (the object in the
/// file has its full name; readers list the files and read the objects).
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
        self.root
            .join(kind.dir())
            .join(bounded_stem(scope))
            .join(format!("{}.yaml", bounded_stem(name)))
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
        let wanted = namespace.filter(|_| kind.namespaced()).map(bounded_stem);
        for scope in sorted_entries(&kind_dir)? {
            if wanted
                .as_deref()
                .is_some_and(|ns| scope.file_name().is_some_and(|f| f != ns))
            {
                continue;
            }
            let mut objects = Vec::new();
            for file in sorted_entries(&scope)? {
                let visible = file.file_name().is_some_and(|f| !f.to_string_lossy().starts_with('.'));
                if visible && file.extension().is_some_and(|e| e == "yaml") {
                    objects.extend(load(kind, &file)?);
                }
            }
            // In the order of the files' plain names, as before names were
            // bounded (a bounded file name sorts by its hash).
            objects.sort_by_cached_key(|o| format!("{}.yaml", o.name()));
            out.extend(objects);
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
    let value: serde_json::Value = serde_yaml_ng::from_str(&text).map_err(|e| ManifestError::Io {
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

    const DEMO: &str = include_str!("../demo/pods.yaml");

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
    fn long_names_get_bounded_file_names_and_round_trip() {
        let dir = std::env::temp_dir().join(format!("weir-store-long-{}", std::process::id()));
        let store = Store::new(&dir);
        let pod = |name: &str| {
            parse_documents(&format!("kind: Pod\nmetadata: {{name: {name}, namespace: shop}}\n"))
                .unwrap()
                .remove(0)
        };
        // The longest a pod's name may be, and another that differs only at its end.
        let a = format!("{}.{}x", "a".repeat(200), "b".repeat(51));
        let b = format!("{}y", &a[..252]);
        assert_eq!((a.len(), b.len()), (253, 253));
        for name in [&a, &b] {
            store.put(&pod(name)).unwrap();
            let file = store.path(Kind::Pod, Some("shop"), name);
            let file_name = file.file_name().unwrap().to_string_lossy().into_owned();
            assert!(file.exists(), "{file_name}");
            assert!(
                format!(".{file_name}.tmp").len() <= 255,
                "{} bytes: {file_name}",
                file_name.len()
            );
            assert!(
                file_name.starts_with(&name[..200]) && file_name.contains('_'),
                "{file_name}"
            );
            assert_eq!(store.get(Kind::Pod, Some("shop"), name).unwrap().unwrap().name(), name);
        }
        assert_ne!(
            store.path(Kind::Pod, Some("shop"), &a),
            store.path(Kind::Pod, Some("shop"), &b)
        );
        let listed: Vec<String> = store
            .list(Kind::Pod, Some("shop"))
            .unwrap()
            .iter()
            .map(|o| o.name().to_owned())
            .collect();
        assert_eq!(listed, [a.clone(), b.clone()]);
        assert!(store.remove(Kind::Pod, Some("shop"), &a).unwrap());
        assert!(store.get(Kind::Pod, Some("shop"), &a).unwrap().is_none());
        assert!(store.get(Kind::Pod, Some("shop"), &b).unwrap().is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_that_always_fitted_keep_their_file_names() {
        let store = Store::new("/m");
        let fits = "c".repeat(PLAIN_NAME_MAX);
        assert_eq!(
            store.path(Kind::Pod, Some("shop"), &fits),
            PathBuf::from(format!("/m/pod/shop/{fits}.yaml"))
        );
        assert_eq!(
            store.path(Kind::Namespace, None, "shop"),
            PathBuf::from("/m/namespace/_cluster/shop.yaml")
        );
        let longer = format!("{fits}c");
        let bounded = bounded_stem(&longer);
        assert_eq!(bounded.len(), 200 + 1 + 16);
        assert_eq!(bounded, bounded_stem(&longer), "stable");
        assert_eq!(bounded_stem("web-0"), "web-0");
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
