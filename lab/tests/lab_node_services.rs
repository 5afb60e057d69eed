//! End-to-end: Services from a node's own network namespace (socket-level
//! load balancing, `bpf_sock.c`): the node's processes, kubelet probes and
//! host-network pods reach a ClusterIP (a backend on this node or on the
//! other), this node's NodePort, get refused at once by a Service without
//! endpoints, and see the Service's address as their peer, on connected
//! and unconnected sockets. Two-node lab (`lab/demo/services.yaml`), native
//! routing. Needs root and the workspace built (`cargo build --workspace`).

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

mod support;
use support::{Lab, cluster_ip, demo_lab, privileged, show};

/// `weir lab probe --from-node NODE TARGET`: what it printed.
fn from_node(lab: &Lab, node: &str, target: &str) -> String {
    let out = lab.cmd(&["probe", "--from-node", node, target, "--timeout", "2"]);
    assert!(
        matches!(out.status.code(), Some(0..=2)),
        "probe from {node} → {target}: {}",
        show(&out)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn wait_connected(lab: &Lab, node: &str, target: &str) -> String {
    let t0 = Instant::now();
    loop {
        let said = from_node(lab, node, target);
        if let Some(pod) = said.strip_prefix("connected: ") {
            return pod.to_owned();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{target} from node {node}: {said}\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn node_port(lab: &Lab, svc: &str) -> u64 {
    lab.json(&["get", "svc", svc])["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .unwrap_or_else(|| panic!("{svc} has no nodePort"))
}

#[test]
fn a_node_reaches_services_from_its_own_sockets() {
    if !privileged() {
        return;
    }
    let lab = demo_lab("ns", "172.31.251.0/24");
    let web = cluster_ip(&lab, "svc-demo/web");
    let web_pods: BTreeSet<String> = lab.json(&["get", "pod", "-n", "svc-demo"])["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|p| p["metadata"]["labels"]["app"] == "web")
        .map(|p| p["metadata"]["name"].as_str().expect("name").to_owned())
        .collect();
    assert_eq!(web_pods.len(), 3, "{web_pods:?}");

    // ClusterIP, TCP and UDP, from both nodes: every backend answers over
    // enough connections, those on the other node included.
    for node in ["a", "b"] {
        for proto in ["80/tcp", "53/udp"] {
            let target = format!("{web}:{proto}");
            wait_connected(&lab, node, &target);
            let mut seen = BTreeSet::new();
            for _ in 0..40 {
                seen.insert(wait_connected(&lab, node, &target));
                if seen == web_pods {
                    break;
                }
            }
            assert_eq!(seen, web_pods, "{target} from node {node}: every backend");
        }
    }

    // The node's own NodePort (another node's answered before this too).
    let port = node_port(&lab, "svc-demo/web-np");
    for node in ["a", "b"] {
        // A node's name is its address for the probe.
        let pod = wait_connected(&lab, node, &format!("{node}:{port}/tcp"));
        assert!(web_pods.contains(&pod), "{pod}");
    }

    // No endpoints: refused at once, TCP and UDP (ECONNREFUSED from
    // connect), where the node would otherwise wait for a timeout.
    let empty = cluster_ip(&lab, "svc-demo/empty");
    for proto in ["80/tcp", "53/udp"] {
        let t0 = Instant::now();
        let said = from_node(&lab, "a", &format!("{empty}:{proto}"));
        assert_eq!(said, "refused", "{empty}:{proto}");
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "refused at once: {:?}",
            t0.elapsed()
        );
    }

    // What the socket sees: the Service's address as its peer (TCP
    // getpeername), and as the source of an unconnected UDP socket's
    // answer (recvmsg), which a resolver checks before it trusts one.
    let netns = format!("/var/run/netns/{}-a", lab.name);
    let tcp_vip: SocketAddr = format!("{web}:80").parse().expect("addr");
    let udp_vip: SocketAddr = format!("{web}:53").parse().expect("addr");
    let (peer, from, answer) = weir_test_support::netns::in_netns(netns, move || {
        let tcp = TcpStream::connect_timeout(&tcp_vip, Duration::from_secs(2)).expect("connect to the ClusterIP");
        let peer = tcp.peer_addr().expect("getpeername");
        let udp = UdpSocket::bind("0.0.0.0:0").expect("bind");
        udp.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        let mut answer = (None, String::new());
        for _ in 0..5 {
            udp.send_to(b"probe\n", udp_vip).expect("sendto the ClusterIP");
            let mut buf = [0u8; 512];
            if let Ok((n, from)) = udp.recv_from(&mut buf) {
                answer = (Some(from), String::from_utf8_lossy(&buf[..n]).trim().to_owned());
                break;
            }
        }
        (peer, answer.0, answer.1)
    });
    assert_eq!(peer, tcp_vip, "a TCP socket's peer is the Service");
    assert_eq!(from, Some(udp_vip), "an unconnected UDP answer comes from the Service");
    assert!(web_pods.contains(&answer), "answered by a backend: {answer:?}");
}

/// A pod with hostPorts on node `a`: TCP and UDP on the node's address,
/// and TCP on the node's loopback only.
const HOST_PORTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: hp}
---
apiVersion: v1
kind: Pod
metadata: {name: hp, namespace: hp}
spec:
  nodeName: a
  containers:
  - name: c
    image: x
    ports:
    - {name: http, containerPort: 80, hostPort: 8080}
    - {name: dns, containerPort: 53, hostPort: 8053, protocol: UDP}
    - {name: local, containerPort: 80, hostPort: 8081, hostIP: 127.0.0.1}
"#;

#[test]
fn host_ports_answer_from_outside_other_nodes_and_the_node_itself() {
    if !privileged() {
        return;
    }
    let lab = Lab::new("hp");
    let topo = lab.file(
        "topo.yaml",
        &format!(
            "name: {}\nclusterCIDR: 10.244.0.0/16\nnodeCIDR: 172.31.250.0/24\nrouting: native\nnodes:\n  - {{name: a, podCIDR: 10.244.1.0/24}}\n  - {{name: b, podCIDR: 10.244.2.0/24}}\n",
            lab.name
        ),
    );
    lab.ok(&["up", &topo]);
    lab.ok(&["apply", &lab.file("hp.yaml", HOST_PORTS)]);

    // From outside the cluster, TCP and UDP, on the pod's node.
    let t0 = Instant::now();
    for target in ["a:8080/tcp", "a:8053/udp"] {
        loop {
            match lab.external(target) {
                Ok(pod) => {
                    assert_eq!(pod, "hp", "{target}");
                    break;
                }
                Err(e) => assert!(
                    t0.elapsed() < Duration::from_secs(30),
                    "{target} from outside: {e}\n{}",
                    lab.logs()
                ),
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    // From the other node, and from the pod's node itself (its address,
    // and the loopback-only hostIP).
    assert_eq!(wait_connected(&lab, "b", "a:8080/tcp"), "hp");
    assert_eq!(wait_connected(&lab, "a", "a:8080/tcp"), "hp");
    assert_eq!(wait_connected(&lab, "a", "a:8053/udp"), "hp");
    assert_eq!(wait_connected(&lab, "a", "127.0.0.1:8081/tcp"), "hp");
    // Only where the pod runs, and the loopback one only on the node.
    assert!(lab.external("b:8080/tcp").is_err(), "no hostPort on node b");
    assert!(
        lab.external("a:8081/tcp").is_err(),
        "8081 is bound to the node's loopback"
    );
}
