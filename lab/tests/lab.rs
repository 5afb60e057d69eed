//! End-to-end: the real `weir` binary drives real `weir-agent`s and `weir-cni`
//! in a lab of network namespaces. Needs root, and `weir-agent` + `weir-cni`
//! built into the same target dir (`cargo build --workspace` first), and `ping`.

use std::path::Path;
use std::process::Command;

mod support;
use support::{Lab, privileged, show};

const PODS: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: t}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: t, labels: {app: a}}
spec:
  containers:
  - name: c
    image: none
    ports: [{name: http, containerPort: 80}, {name: dns, containerPort: 53, protocol: UDP}]
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: t, labels: {app: b}}
spec:
  containers:
  - name: c
    image: none
    ports: [{name: http, containerPort: 80}, {name: dns, containerPort: 53, protocol: UDP}]
";

const POD_B: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: t}\nspec: {containers: []}\n";

/// `weir lab up` with one node, n1, pod CIDR 10.244.1.0/24.
fn up_one_node(lab: &Lab) {
    let topo = lab.file(
        "topo.yaml",
        &format!(
            "name: {}\nclusterCIDR: 10.244.0.0/16\nnodes:\n  - name: n1\n    podCIDR: 10.244.1.0/24\n",
            lab.name
        ),
    );
    lab.ok(&["up", &topo]);
}

#[test]
fn one_node_two_pods_talk_then_delete_and_down() {
    if !privileged() {
        return;
    }
    let lab = Lab::new("a");
    up_one_node(&lab);
    let pods = lab.file("pods.yaml", PODS);
    lab.ok(&["apply", &pods]);

    let a_ip = lab.pod_ip("t/a");
    let b_ip = lab.pod_ip("t/b");
    assert_ne!(a_ip, b_ip);

    for (from, to, name) in [("t/a", &b_ip, "b"), ("t/b", &a_ip, "a")] {
        let tcp = lab.ok(&["probe", from, &format!("{to}:80/tcp")]);
        assert_eq!(tcp.trim(), format!("connected: {name}"), "tcp {from} -> {to}");
        let udp = lab.ok(&["probe", from, &format!("{to}:53/UDP")]);
        assert_eq!(udp.trim(), format!("connected: {name}"), "udp {from} -> {to}");
        let icmp = lab.ok(&["probe", from, &format!("{to}/icmp")]);
        assert_eq!(icmp.trim(), "reachable", "icmp {from} -> {to}");
    }

    let status: serde_json::Value = serde_json::from_str(&lab.ok(&["status", "-o", "json"])).expect("status json");
    let endpoints: Vec<serde_json::Value> = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .flat_map(|n| n["endpoints"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(endpoints.len(), 2, "two endpoints expected: {status}");
    for e in &endpoints {
        for dir in ["ingress", "egress"] {
            let pkts = e["counters"][dir]["packets"].as_u64().unwrap_or(0);
            let bytes = e["counters"][dir]["bytes"].as_u64().unwrap_or(0);
            assert!(
                pkts > 0 && bytes > 0,
                "{dir} counters of {} are zero: {e}",
                e["pod"]["name"]
            );
        }
    }

    let b_file = lab.file("b.yaml", POD_B);
    lab.ok(&["delete", &b_file]);
    let out = lab.cmd(&["probe", "t/a", &format!("{b_ip}:80/tcp"), "--timeout", "1"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        matches!(out.status.code(), Some(1) | Some(2))
            && ["refused", "unreachable", "timed out"].iter().any(|w| said.contains(w)),
        "probe to a deleted pod must fail: {}",
        show(&out)
    );

    lab.ok(&["down"]);
    assert!(
        lab.leftover_netns().is_empty(),
        "netns left behind: {:?}",
        lab.leftover_netns()
    );
    let bpffs = format!("/sys/fs/bpf/weir/{}", lab.name);
    assert!(!Path::new(&bpffs).exists(), "{bpffs} left behind");
    // A second down is a no-op success (the guard runs a third).
    lab.ok(&["down"]);
}

#[test]
fn invalid_topology_creates_nothing() {
    if !privileged() {
        return;
    }
    let lab = Lab::new("b");
    let topo = lab.file(
        "bad.yaml",
        &format!(
            "name: {}\nclusterCIDR: 10.244.0.0/16\nnodes:\n  - name: n1\n    podCIDR: 10.244.1.0/24\n  - name: n2\n    podCIDR: 10.244.1.128/25\n",
            lab.name
        ),
    );
    let out = lab.cmd(&["up", &topo]);
    assert!(
        !out.status.success(),
        "overlapping podCIDRs must be rejected: {}",
        show(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("overlaps"),
        "{}",
        show(&out)
    );
    assert!(lab.leftover_netns().is_empty());
    assert!(!lab.dir.join("lab.json").exists());
}

#[test]
fn down_removes_only_what_the_lab_made() {
    if !privileged() {
        return;
    }
    let lab = Lab::new("own");
    up_one_node(&lab);
    // Another lab's or an operator's namespace that merely shares the prefix.
    let other = weir_test_support::netns::NetNs::new(&format!("{}-x", lab.name));
    lab.ok(&["down"]);
    assert!(
        Path::new("/var/run/netns").join(&other.name).exists(),
        "down deleted {}, which the lab never made",
        other.name
    );
    assert_eq!(
        lab.leftover_netns(),
        std::slice::from_ref(&other.name),
        "everything of the lab's own is gone"
    );
}

/// Two nodes on the lab segment: pods on different nodes reach each other
/// over TCP, UDP and ICMP, in both routing modes; node ↔ pod works too.
fn two_nodes(routing: &str) {
    if !privileged() {
        return;
    }
    let lab = Lab::new(&format!("m{}", &routing[..1]));
    let topo = lab.file(
        "topo.yaml",
        &format!(
            "name: {}\nclusterCIDR: 10.252.0.0/16\nnodeCIDR: 172.31.250.0/24\nrouting: {routing}\nnodes:\n  - {{name: a, podCIDR: 10.252.1.0/24}}\n  - {{name: b, podCIDR: 10.252.2.0/24}}\n",
            lab.name
        ),
    );
    lab.ok(&["up", &topo]);
    let pods = lab.file(
        "pods.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: left, namespace: default}
spec: {nodeName: a, containers: [{name: c, image: x, ports: [{containerPort: 8080}, {containerPort: 5353, protocol: UDP}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: right, namespace: default}
spec: {nodeName: b, containers: [{name: c, image: x, ports: [{containerPort: 8080}, {containerPort: 5353, protocol: UDP}]}]}
"#,
    );
    lab.ok(&["apply", &pods]);
    let right = lab.pod_ip("default/right");
    assert!(right.starts_with("10.252.2."), "right lands on node b: {right}");
    for (from, to) in [("default/left", "right"), ("default/right", "left")] {
        assert_eq!(
            lab.ok(&["probe", from, &format!("{to}:8080/tcp")]).trim(),
            format!("connected: {to}")
        );
        assert_eq!(
            lab.ok(&["probe", from, &format!("{to}:5353/udp")]).trim(),
            format!("connected: {to}")
        );
        assert_eq!(lab.ok(&["probe", from, &format!("{to}/icmp")]).trim(), "reachable");
    }
    // Pod to the other node's address, and the node's own stack to its pod.
    assert_eq!(
        lab.ok(&["probe", "default/left", "172.31.250.12/icmp"]).trim(),
        "reachable"
    );
    let node_b = format!("{}-b", lab.name);
    let ping = Command::new("ip")
        .args(["netns", "exec", &node_b, "ping", "-c", "1", "-W", "2", &right])
        .output()
        .unwrap();
    assert!(ping.status.success(), "node b → its pod: {}", show(&ping));
}

#[test]
fn two_nodes_native_routing() {
    two_nodes("native");
}

#[test]
fn two_nodes_vxlan_overlay() {
    two_nodes("vxlan");
}

#[test]
fn an_interrupted_apply_leaves_no_pod_half_made() {
    use std::os::unix::process::CommandExt;
    if !privileged() {
        return;
    }
    let lab = Lab::new("int");
    up_one_node(&lab);
    let pods: String = (0..40)
        .map(|i| format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: default}}\nspec: {{containers: []}}\n---\n"))
        .collect();
    let file = lab.file("many.yaml", &pods);
    // As a terminal's Ctrl-C: SIGINT to the whole process group (the lab
    // and the CNI plugins it runs), once the apply has recorded a pod.
    let mut apply = lab.command(&["apply", &file]);
    let mut child = apply.process_group(0).spawn().expect("starting apply");
    let state_file = lab.dir.join("lab.json");
    let pods_in_state = || -> Vec<(String, serde_json::Value)> {
        std::fs::read_to_string(&state_file)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["pods"].as_object().cloned())
            .map(|m| m.into_iter().collect())
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while pods_in_state().is_empty() {
        assert!(std::time::Instant::now() < deadline, "apply never recorded a pod");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGINT).expect("SIGINT to the group");
    let status = child.wait().expect("waiting for apply");
    assert!(!status.success(), "an interrupted apply reports it");

    let half: Vec<String> = pods_in_state()
        .into_iter()
        .filter(|(_, p)| p["ip"].is_null())
        .map(|(k, _)| k)
        .collect();
    assert!(half.is_empty(), "pods recorded without an address: {half:?}");
    // No netns of a pod the lab no longer records.
    let recorded: Vec<String> = pods_in_state()
        .into_iter()
        .filter_map(|(_, p)| p["netns"].as_str().map(str::to_owned))
        .collect();
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    let lab_own: Vec<String> = state["netns"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect();
    let stray: Vec<String> = lab
        .leftover_netns()
        .into_iter()
        .filter(|n| !recorded.contains(n) && !lab_own.contains(n))
        .collect();
    assert!(stray.is_empty(), "namespaces of pods the lab forgot: {stray:?}");
}
