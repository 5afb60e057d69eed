//! End-to-end egress: pods on two lab nodes reach the lab's external host
//! (outside the cluster, on the node segment) over TCP, UDP and ICMP, and the
//! external host sees each pod's node IP as the source (masquerading in
//! `to_netdev`), in both routing modes. Needs root, `weir-agent` + `weir-cni`
//! built into the same target dir (`cargo build --workspace` first), and `ping`.

mod support;
use support::{Lab, privileged};

/// Two nodes, a pod on each; every pod reaches the external host and the
/// other node as its own node.
fn egress(routing: &str) {
    if !privileged() {
        return;
    }
    let lab = Lab::new(&format!("e{}", &routing[..1]));
    let topo = lab.file(
        "topo.yaml",
        &format!(
            "name: {}\nclusterCIDR: 10.253.0.0/16\nnodeCIDR: 172.31.251.0/24\nrouting: {routing}\nnodes:\n  - {{name: a, podCIDR: 10.253.1.0/24}}\n  - {{name: b, podCIDR: 10.253.2.0/24}}\n",
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
spec: {nodeName: a, containers: [{name: c, image: x, ports: [{containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: right, namespace: default}
spec: {nodeName: b, containers: [{name: c, image: x, ports: [{containerPort: 8080}]}]}
"#,
    );
    lab.ok(&["apply", &pods]);
    assert!(
        lab.pod_ip("default/left").starts_with("10.253.1."),
        "left lands on node a"
    );

    let external = "172.31.251.254";
    for (pod, node_ip, other_node) in [
        ("default/left", "172.31.251.11", "172.31.251.12"),
        ("default/right", "172.31.251.12", "172.31.251.11"),
    ] {
        // Twice each: the second connection is a new flow with a new port.
        for _ in 0..2 {
            let tcp = lab.ok(&["probe", pod, &format!("{external}:8080/tcp")]);
            assert_eq!(
                tcp.trim(),
                format!("connected: external {node_ip}"),
                "tcp {pod} -> external"
            );
            let udp = lab.ok(&["probe", pod, &format!("{external}:5353/udp")]);
            assert_eq!(
                udp.trim(),
                format!("connected: external {node_ip}"),
                "udp {pod} -> external"
            );
        }
        assert_eq!(
            lab.ok(&["probe", pod, &format!("{external}/icmp")]).trim(),
            "reachable",
            "icmp {pod} -> external"
        );
        // Another node's IP is outside the cluster CIDR too.
        assert_eq!(
            lab.ok(&["probe", pod, &format!("{other_node}/icmp")]).trim(),
            "reachable",
            "{pod} -> {other_node}"
        );
    }
    // Pod to pod stays unmasqueraded and working.
    assert_eq!(
        lab.ok(&["probe", "default/left", "right:8080/tcp"]).trim(),
        "connected: right"
    );

    let status: serde_json::Value = serde_json::from_str(&lab.ok(&["status", "-o", "json"])).expect("status json");
    assert!(
        !status.to_string().contains("snat_ports_exhausted"),
        "no SNAT drops: {status}"
    );

    lab.ok(&["down"]);
    assert!(
        lab.leftover_netns().is_empty(),
        "netns left behind: {:?}",
        lab.leftover_netns()
    );
}

#[test]
fn pods_reach_the_external_host_as_their_node_native_routing() {
    egress("native");
}

#[test]
fn pods_reach_the_external_host_as_their_node_vxlan_overlay() {
    egress("vxlan");
}
