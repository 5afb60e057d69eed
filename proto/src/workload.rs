//! What an endpoint of a flow is part of, for people: its workload (a
//! Deployment or other controller, else its `app` label, else the pod),
//! the world, or a node; with the `weir observe` flags that select it. The
//! service map's nodes and `weir observe --aggregate-by` name ends alike.

use crate::flow::Endpoint;

/// One end of a flow, grouped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadRef {
    /// `namespace/name`, `world`, `node:NAME`, `remote-node`.
    pub id: String,
    /// workload, pod, world, host, remote-node or unknown.
    pub kind: &'static str,
    /// Empty outside namespaces.
    pub namespace: String,
    pub name: String,
    /// The `weir observe` flags (without `--from-`/`--to-`) that select it,
    /// each with its value.
    pub select: Vec<(String, String)>,
}

/// The label users name their apps by, when a pod has no controller.
const APP_LABELS: [&str; 3] = ["app.kubernetes.io/name", "app", "k8s-app"];

impl WorkloadRef {
    /// What `e` is part of, as seen on node `observer` (which names the
    /// host).
    pub fn of(e: &Endpoint, observer: &str) -> Self {
        let reserved = e.labels.iter().find_map(|l| l.strip_prefix("reserved:"));
        if e.pod_name.is_empty() || reserved.is_some() {
            let (id, kind, select) = match reserved {
                Some("world") => ("world".to_owned(), "world", vec![sel("label", "reserved:world")]),
                Some("host") => (
                    format!("node:{observer}"),
                    "host",
                    vec![sel("label", "reserved:host"), sel("node-name", observer)],
                ),
                Some("remote-node") => (
                    "remote-node".to_owned(),
                    "remote-node",
                    vec![sel("label", "reserved:remote-node")],
                ),
                Some(other) => (
                    format!("reserved:{other}"),
                    "unknown",
                    vec![sel("label", &format!("reserved:{other}"))],
                ),
                None => (
                    "unknown".to_owned(),
                    "unknown",
                    vec![sel("identity", &e.identity.to_string())],
                ),
            };
            let name = match kind {
                "host" => observer.to_owned(),
                _ => id.clone(),
            };
            return WorkloadRef {
                id,
                kind,
                namespace: String::new(),
                name,
                select,
            };
        }
        let ns = &e.namespace;
        let (kind, name, mut select) = if let Some(w) = e.workloads.first() {
            ("workload", w.name.clone(), vec![sel("workload", &w.name)])
        } else if let Some((key, value)) = APP_LABELS.iter().find_map(|k| {
            let prefix = format!("k8s:{k}=");
            e.labels.iter().find_map(|l| l.strip_prefix(&prefix)).map(|v| (*k, v))
        }) {
            (
                "workload",
                value.to_owned(),
                vec![sel("label", &format!("{key}={value}"))],
            )
        } else {
            (
                "pod",
                e.pod_name.clone(),
                vec![sel("pod", &format!("{ns}/{}", e.pod_name))],
            )
        };
        if kind != "pod" {
            select.insert(0, sel("namespace", ns));
        }
        WorkloadRef {
            id: format!("{ns}/{name}"),
            kind,
            namespace: ns.clone(),
            name,
            select,
        }
    }
}

fn sel(flag: &str, value: &str) -> (String, String) {
    (flag.to_owned(), value.to_owned())
}
