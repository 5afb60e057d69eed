//! End-to-end: NodePorts and LoadBalancer IPs from outside the cluster. Two
//! lab nodes, a backend pod on each, and the lab's external host probing
//! both nodes' IP:nodePort over TCP and UDP (`weir lab probe --from-external`),
//! in native and vxlan routing. Covers XDP on the uplink (forced on: the
//! agent's default keeps XDP off veth uplinks, tested too): local backends,
//! remote backends with SNAT and XDP_TX in native mode; in vxlan mode the
//! TC fallback encapsulates; externalTrafficPolicy Local (the answer comes
//! from the contacted node; a node without a local backend drops), and a
//! LoadBalancer ingress IP routed to one node; and a SYN flood from the
//! external host that must shut out neither the NodePort's genuine clients
//! nor the node's pods. Needs root and the workspace
//! built (`cargo build --workspace`).

use std::process::Command;

mod support;
use support::{Lab, privileged, show};

/// A backend on each node; `web` (Cluster) selects both, `web-local`
/// (Local) too, `only-b` (Cluster) only b's pod, `only-a-local` (Local)
/// only a's, `web-lb` a LoadBalancer (Local) over both.
const MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: np}
---
apiVersion: v1
kind: Pod
metadata: {name: web-a, namespace: np, labels: {app: web, at: a}}
spec: {nodeName: a, containers: [{name: c, image: x, ports: [{name: http, containerPort: 80}, {name: dns, containerPort: 53, protocol: UDP}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-b, namespace: np, labels: {app: web, at: b}}
spec: {nodeName: b, containers: [{name: c, image: x, ports: [{name: http, containerPort: 80}, {name: dns, containerPort: 53, protocol: UDP}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: np}
spec:
  type: NodePort
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: http, nodePort: 30080, protocol: TCP}
    - {name: dns, port: 53, targetPort: dns, nodePort: 30053, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: web-local, namespace: np}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: http, nodePort: 30081, protocol: TCP}
    - {name: dns, port: 53, targetPort: dns, nodePort: 30054, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: only-b, namespace: np}
spec:
  type: NodePort
  selector: {at: b}
  ports:
    - {name: http, port: 80, targetPort: http, nodePort: 30082, protocol: TCP}
    - {name: dns, port: 53, targetPort: dns, nodePort: 30055, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: only-a-local, namespace: np}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {at: a}
  ports: [{name: http, port: 80, targetPort: http, nodePort: 30083, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: web-lb, namespace: np}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {app: web}
  ports: [{name: http, port: 8080, targetPort: http, protocol: TCP}]
"#;

/// `xdp` is the topology's `nodePortXDP`: `true` puts XDP on the veth
/// uplinks, `auto` leaves them to TC (the agent's choice for veth).
fn nodeports(routing: &str, xdp: &str) {
    if !privileged() {
        return;
    }
    let lab = Lab::new(&format!("np{}{}", &routing[..1], &xdp[..1]));
    let topo = lab.file(
        "topo.yaml",
        &format!(
            "name: {}\nclusterCIDR: 10.253.0.0/16\nnodeCIDR: 172.31.251.0/24\nloadBalancerCIDR: 172.31.252.0/24\nrouting: {routing}\nnodePortXDP: {xdp}\nnodes:\n  - {{name: a, podCIDR: 10.253.1.0/24}}\n  - {{name: b, podCIDR: 10.253.2.0/24}}\n",
            lab.name
        ),
    );
    lab.ok(&["up", &topo]);
    lab.ok(&["apply", &lab.file("np.yaml", MANIFESTS)]);

    // The agents program services once they see the new objects.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    for target in ["a:30080/tcp", "b:30080/tcp"] {
        while let Err(e) = lab.external(target) {
            assert!(
                std::time::Instant::now() < deadline,
                "{target} never answered: {e}\n{}",
                lab.logs()
            );
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    }

    let attempts = 6;
    let mut failures = Vec::new();
    let mut check = |target: String, allowed: &[&str]| {
        for _ in 0..attempts {
            match lab.external(&target) {
                Ok(pod) if allowed.contains(&pod.as_str()) => {}
                Ok(pod) => failures.push(format!("{target}: answered by {pod}, expected one of {allowed:?}")),
                Err(e) => failures.push(format!("{target}: {e}")),
            }
        }
    };
    for node in ["a", "b"] {
        let here = format!("web-{node}");
        // Cluster: any backend, local (DNAT) or remote (DNAT + SNAT).
        check(format!("{node}:30080/tcp"), &["web-a", "web-b"]);
        check(format!("{node}:30053/udp"), &["web-a", "web-b"]);
        // Only a remote backend from node a: the SNAT path, every time.
        check(format!("{node}:30082/tcp"), &["web-b"]);
        check(format!("{node}:30055/udp"), &["web-b"]);
        // Local: always the contacted node's pod.
        check(format!("{node}:30081/tcp"), &[here.as_str()]);
        check(format!("{node}:30054/udp"), &[here.as_str()]);
    }
    assert!(
        failures.is_empty(),
        "{} failed attempts:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        lab.logs()
    );

    // Local with the only backend on a: b drops (counted), a answers.
    assert_eq!(lab.external("a:30083/tcp").as_deref(), Ok("web-a"));
    let out = lab.cmd(&["probe", "--from-external", "b:30083/tcp", "--timeout", "1"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "node b has no local backend: dropped, so timed out: {}",
        show(&out)
    );
    let status: serde_json::Value = serde_json::from_str(&lab.ok(&["status", "-o", "json"])).expect("status json");
    assert!(
        status.to_string().contains("no_local_backend"),
        "drop counted: {status}"
    );

    syn_flood_case(&lab);

    // The LoadBalancer IP, routed by the external host to node a (as an
    // L2/BGP announcement would): Local, so a's pod answers.
    let svc: serde_json::Value =
        serde_json::from_str(&lab.ok(&["get", "svc", "np/web-lb", "-o", "json"])).expect("svc json");
    let lb_ip = svc["status"]["loadBalancer"]["ingress"][0]["ip"]
        .as_str()
        .unwrap_or_else(|| panic!("no LB IP: {svc}"));
    let route = Command::new("ip")
        .args([
            "-n",
            &format!("{}-external", lab.name),
            "route",
            "add",
            &format!("{lb_ip}/32"),
            "via",
            "172.31.251.11",
        ])
        .output()
        .expect("ip route");
    assert!(route.status.success(), "{}", show(&route));
    for _ in 0..attempts {
        assert_eq!(
            lab.external(&format!("{lb_ip}:8080/tcp")).as_deref(),
            Ok("web-a"),
            "{}",
            lab.logs()
        );
    }
}

#[test]
fn nodeports_from_outside_native_routing() {
    nodeports("native", "true");
}

#[test]
fn nodeports_from_outside_vxlan_routing() {
    nodeports("vxlan", "true");
}

/// The default on veth uplinks: no XDP, the same answers from TC.
#[test]
fn nodeports_from_outside_native_routing_tc_by_default() {
    nodeports("native", "auto");
}

/// SYNs sent in the flood: more than six times the 4,536 SNAT ports node a
/// has towards web-b.
const FLOOD: u32 = 30_000;

/// The external host floods node a's NodePort 30082 (whose only backend is
/// on b: the SNAT path) with SYNs from spoofed addresses of the lab segment
/// that no host answers for, so no handshake ever completes and each holds
/// a SNAT port. Right after it a genuine client of the same NodePort, and
/// node a's pod through a ClusterIP, must both be answered: before the
/// node's share and the shedding of unconfirmed handshakes, every port
/// stayed held for the 60 s SYN timeout and the client timed out.
fn syn_flood_case(lab: &Lab) {
    use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, sendto, socket};
    use std::os::fd::AsRawFd;

    let node_a = std::net::Ipv4Addr::new(172, 31, 251, 11);
    let started = std::time::Instant::now();
    let sent = weir_test_support::netns::in_netns(format!("/var/run/netns/{}-external", lab.name), move || {
        // IPPROTO_RAW: the packets carry their own IPv4 header, spoofed source included.
        let fd = socket(AddressFamily::Inet, SockType::Raw, SockFlag::empty(), SockProtocol::Raw).expect("raw socket");
        let to = SockaddrIn::from(std::net::SocketAddrV4::new(node_a, 0));
        let mut sent = 0u32;
        for i in 0..FLOOD {
            let syn = weir_test_support::packet::Flow {
                // 172.31.251.100-199: on the segment, no host behind them.
                src: std::net::Ipv4Addr::new(172, 31, 251, 100 + (i % 100) as u8),
                sport: 1024 + (i / 100) as u16,
                dst: node_a,
                dport: 30082,
                proto: weir_test_support::packet::TCP,
            }
            .packet(0x02);
            if sendto(fd.as_raw_fd(), &syn[14..], &to, MsgFlags::empty()).is_ok() {
                sent += 1;
            }
        }
        sent
    });
    assert!(sent >= FLOOD * 9 / 10, "the flood was sent: {sent} of {FLOOD}");
    let flood_took = started.elapsed();
    let status = lab.ok(&["status", "-o", "json"]);
    let connect = std::time::Instant::now();
    let genuine = lab.external("a:30082/tcp");
    eprintln!(
        "syn flood: {sent} SYNs in {flood_took:?}; the genuine client then connected in {:?}",
        connect.elapsed()
    );
    assert_eq!(
        genuine.as_deref(),
        Ok("web-b"),
        "a genuine client right after {sent} spoofed SYNs\n{status}\n{}",
        lab.logs()
    );
    for _ in 0..3 {
        assert_eq!(lab.external("a:30082/tcp").as_deref(), Ok("web-b"));
    }
    // The node's pods keep their service connections: the flood held the
    // node's share of the table, not the table.
    let svc: serde_json::Value =
        serde_json::from_str(&lab.ok(&["get", "svc", "np/web", "-o", "json"])).expect("svc json");
    let vip = svc["spec"]["clusterIP"].as_str().expect("clusterIP").to_owned();
    let said = lab.ok(&["probe", "np/web-a", &format!("{vip}:80/tcp")]);
    assert!(said.contains("connected: web-"), "a's pod through a ClusterIP: {said}");
}
