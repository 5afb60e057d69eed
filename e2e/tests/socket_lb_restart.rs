//! Socket-level services across an agent restart: the node's own sockets
//! reach a ClusterIP through the cgroup programs (`bpf_sock.c`), whose
//! links are pinned, so they keep reaching it while the agent is away; the
//! next agent swaps its programs in by re-pinning, leaving one set.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use weir_e2e::kube::{KubeNode, echo_server, vip, wait_for};
use weir_e2e::{in_netns, require_root};

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: sl}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
";

/// A new connection from the node's own netns to `to` gets a line echoed.
fn node_answers(k: &KubeNode, to: SocketAddr) -> bool {
    in_netns(k.node.ns.path(), move || {
        let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_millis(800)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut line = String::new();
        s.write_all(b"hi\n").is_ok() && BufReader::new(s).read_line(&mut line).is_ok() && line.trim() == "echo hi"
    })
}

fn cgroup_link_pins(k: &KubeNode) -> Vec<String> {
    let mut pins: Vec<String> = std::fs::read_dir(k.node.bpffs.join("links"))
        .expect("links dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("cgroup-"))
        .collect();
    pins.sort();
    pins
}

#[test]
fn the_node_reaches_a_cluster_ip_while_the_agent_restarts() {
    if !require_root() {
        return;
    }
    let Some(mut k) = KubeNode::start(&[]) else {
        return;
    };
    k.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: sl}\n");
    let web = k.run_pod("sl", "web", "web");
    echo_server(&web, 8080);
    k.apply(SERVICE);
    let to = vip(&k.cp, "sl", "web", 80);
    // This harness's node has no uplink, so no address to speak from: one
    // on its loopback, as a node's own address.
    k.node.ns.exec_ok("ip", &["addr", "add", "192.0.2.10/32", "dev", "lo"]);
    let backend = SocketAddr::from((web.ip, 8080));
    assert!(node_answers(&k, backend), "the node reaches the backend itself");
    wait_for("the node reaches the ClusterIP", Duration::from_secs(20), || {
        node_answers(&k, to)
    });

    let pins = cgroup_link_pins(&k);
    assert_eq!(
        pins,
        [
            "cgroup-sock_connect4",
            "cgroup-sock_getpeername4",
            "cgroup-sock_recvmsg4",
            "cgroup-sock_sendmsg4"
        ],
        "one pinned link per hook"
    );
    k.node.stop_agent();
    assert!(
        node_answers(&k, to),
        "the node reaches the ClusterIP while the agent is away"
    );
    k.node.start_agent();
    wait_for("the agent is back", Duration::from_secs(20), || {
        k.node.client().call(weir_agent_api::Request::Status).is_ok()
    });
    assert!(node_answers(&k, to), "and after it is back");
    assert_eq!(cgroup_link_pins(&k), pins, "the new links replaced the old pins");
}
