//! Cluster-wide identities on a two-node lab: the same labels get the same
//! number on both nodes, every node's ipcache knows every pod (the other
//! node's included) and every node by identity, and a label set's number
//! goes when its last pod does.

mod support;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Lab, privileged};
use weir_datapath::ipcache::{ID_HOST, ID_INIT, ID_MIN, ID_REMOTE_NODE, IpCache};

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web-a, namespace: shop, labels: {app: web, pod-template-hash: one}}
spec: {nodeName: a, containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-b, namespace: shop, labels: {app: web, pod-template-hash: two}}
spec: {nodeName: b, containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db-b, namespace: shop, labels: {app: db}}
spec: {nodeName: b, containers: [{name: c, image: x}]}
"#;

const DB: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: db-b, namespace: shop}
"#;

/// Pod name → identity as each node's agent reports its endpoints.
fn endpoint_identities(lab: &Lab) -> BTreeMap<String, u32> {
    let status = lab.json(&["status"]);
    status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .flat_map(|n| n["endpoints"].as_array().cloned().unwrap_or_default())
        .map(|e: Value| {
            (
                e["pod"]["name"].as_str().unwrap_or_default().to_owned(),
                e["identity"].as_u64().unwrap_or_default() as u32,
            )
        })
        .collect()
}

fn ipcache(lab: &Lab, node: &str) -> BTreeMap<Ipv4Addr, u32> {
    let pins = PathBuf::from(format!("/sys/fs/bpf/weir/{}/{node}", lab.name));
    IpCache::open(&pins)
        .unwrap_or_else(|e| panic!("opening node {node}'s ipcache: {e}"))
        .entries()
        .expect("reading the ipcache")
}

/// Agents poll the lab's store: wait (a few seconds at most) until `ok`.
fn eventually<T: std::fmt::Debug>(what: &str, mut get: impl FnMut() -> T, ok: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = get();
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: still {v:?} after 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_same_labels_get_one_identity_on_every_node_and_every_node_knows_every_pod() {
    if !privileged() {
        return;
    }
    let lab = Lab::new("id");
    let topo = lab.file(
        "topo.yaml",
        &format!(
            "name: {}\nclusterCIDR: 10.251.0.0/16\nnodeCIDR: 172.31.249.0/24\nnodes:\n  - {{name: a, podCIDR: 10.251.1.0/24}}\n  - {{name: b, podCIDR: 10.251.2.0/24}}\n",
            lab.name
        ),
    );
    lab.ok(&["up", &topo]);
    lab.ok(&["apply", &lab.file("pods.yaml", PODS)]);

    let ids = eventually(
        "endpoint identities",
        || endpoint_identities(&lab),
        |ids| ids.len() == 3 && ids.values().all(|id| *id >= ID_MIN),
    );
    assert_eq!(
        ids["web-a"], ids["web-b"],
        "same labels on two nodes, one identity: {ids:?}"
    );
    assert_ne!(ids["web-a"], ids["db-b"], "{ids:?}");
    let allocated = lab.json(&["get", "weiridentities"]);
    assert_eq!(allocated["items"].as_array().map(Vec::len), Some(2), "{allocated}");

    // Node a knows node b's pods by identity, and both nodes.
    let ip = |pod: &str| lab.pod_ip(pod).parse::<Ipv4Addr>().unwrap();
    let (web_b, db_b) = (ip("shop/web-b"), ip("shop/db-b"));
    let on_a = eventually(
        "node a's ipcache",
        || ipcache(&lab, "a"),
        |c| c.get(&web_b) == Some(&ids["web-b"]) && c.get(&db_b) == Some(&ids["db-b"]),
    );
    assert_eq!(on_a[&ip("shop/web-a")], ids["web-a"]);
    assert_eq!(on_a[&"172.31.249.11".parse().unwrap()], ID_HOST, "{on_a:?}");
    assert_eq!(on_a[&"172.31.249.12".parse().unwrap()], ID_REMOTE_NODE, "{on_a:?}");
    assert!(on_a.values().all(|id| *id != ID_INIT), "{on_a:?}");

    // The last db pod goes: so do its identity and its ipcache entries.
    lab.ok(&["delete", &lab.file("db.yaml", DB)]);
    let allocated = lab.json(&["get", "weiridentities"]);
    let names: Vec<&str> = allocated["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, [ids["web-a"].to_string()], "db's identity released");
    eventually("node a forgets db", || ipcache(&lab, "a"), |c| !c.contains_key(&db_b));
}
