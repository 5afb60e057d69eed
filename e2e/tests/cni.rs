//! The real `weir-cni` against a real agent in a node netns, invoked as a
//! container runtime does: results, connectivity through the datapath,
//! address release, concurrency and every error path.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use weir_agent_api::{Request, Response};
use weir_e2e::{CniOutput, NetNs, Node, Pod, PodSpec, in_netns, require_root, run_cni};

fn endpoint_counters(node: &Node) -> Vec<(String, u64, u64)> {
    match node.client().call(Request::EndpointList).expect("endpoint_list") {
        Response::Endpoints { endpoints } => endpoints
            .into_iter()
            .map(|e| {
                let c = e.counters.expect("list carries counters");
                (e.pod.name, c.ingress.packets, c.egress.packets)
            })
            .collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn add_check_del_for_every_spec_version() {
    if !require_root() {
        return;
    }
    let node = Node::start("10.61.0.0/24");
    for version in ["1.0.0", "1.1.0"] {
        let pod = Pod::new("demo", &format!("v{}", version.replace('.', "")));
        let conf = node.netconf(version);
        let out = node.cni("ADD", &pod.spec, &conf);
        assert!(out.ok(), "{version}: {out:?}");
        let r = out.json();
        assert_eq!(r["cniVersion"], version);
        let ifaces = r["interfaces"].as_array().expect("interfaces");
        assert!(ifaces[0]["name"].as_str().unwrap().starts_with("lxc"), "{r}");
        assert_eq!(ifaces[1]["name"], "eth0");
        assert_eq!(ifaces[1]["sandbox"], pod.spec.netns);
        assert_eq!(r["ips"][0]["gateway"], "169.254.1.1");
        assert_eq!(r["ips"][0]["interface"], 1);
        assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
        let ip = out.ip().unwrap();
        assert!(
            pod.ns
                .exec_ok("ip", &["-4", "addr", "show", "eth0"])
                .contains(&format!("{ip}/32"))
        );

        // CHECK with the result as prevResult, as runtimes send it.
        let mut with_prev: serde_json::Value = serde_json::from_str(&conf).unwrap();
        with_prev["prevResult"] = r.clone();
        let check = node.cni("CHECK", &pod.spec, &with_prev.to_string());
        assert!(
            check.ok() && check.stdout.trim().is_empty(),
            "{version} CHECK: {check:?}"
        );

        assert!(node.cni("DEL", &pod.spec, &conf).ok());
        assert!(node.cni("DEL", &pod.spec, &conf).ok(), "DEL is idempotent");
        assert!(!node.cni("CHECK", &pod.spec, &conf).ok(), "CHECK after DEL fails");
    }
    let v = node.cni("VERSION", &Pod::new("x", "y").spec, "{\"cniVersion\":\"1.1.0\"}");
    assert_eq!(v.json()["supportedVersions"], serde_json::json!(["1.0.0", "1.1.0"]));
    let st = node.cni("STATUS", &Pod::new("x", "y").spec, &node.netconf("1.1.0"));
    assert!(st.ok(), "STATUS with a running agent: {st:?}");
}

#[test]
fn tcp_udp_icmp_between_pods_pass_through_the_programs() {
    if !require_root() {
        return;
    }
    let node = Node::start("10.62.0.0/24");
    let a = node.add_pod("demo", "a");
    let b = node.add_pod("demo", "b");

    // ICMP both ways.
    assert!(a.ns.ping(b.ip), "a → b ping\n{}", node.log());
    assert!(b.ns.ping(a.ip), "b → a ping");

    // TCP and UDP with real sockets opened inside the pods' namespaces.
    let listener = in_netns(b.spec.netns.clone(), || {
        TcpListener::bind("0.0.0.0:8080").expect("bind tcp")
    });
    let udp_server = in_netns(b.spec.netns.clone(), || {
        UdpSocket::bind("0.0.0.0:5353").expect("bind udp")
    });
    let server = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().expect("accept");
        c.write_all(b"tcp-b").expect("tcp reply");
        drop(c);
        let mut buf = [0u8; 64];
        let (_, from) = udp_server.recv_from(&mut buf).expect("udp recv");
        udp_server.send_to(b"udp-b", from).expect("udp reply");
    });
    let b_ip = b.ip;
    let (tcp, udp) = in_netns(a.spec.netns.clone(), move || {
        let mut s = TcpStream::connect_timeout(&(b_ip, 8080).into(), Duration::from_secs(3)).expect("tcp connect");
        let mut tcp = String::new();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.read_to_string(&mut tcp).expect("tcp read");
        let u = UdpSocket::bind("0.0.0.0:0").expect("udp bind");
        u.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        u.send_to(b"hi", (b_ip, 5353)).expect("udp send");
        let mut buf = [0u8; 64];
        let n = u.recv(&mut buf).expect("udp reply within 3 s");
        (tcp, String::from_utf8_lossy(&buf[..n]).into_owned())
    });
    assert_eq!((tcp.as_str(), udp.as_str()), ("tcp-b", "udp-b"));
    server.join().expect("server thread");

    // The counters prove the programs saw it: a → b and b → a both counted.
    let counters = endpoint_counters(&node);
    for (name, ingress, egress) in &counters {
        assert!(
            *ingress >= 4 && *egress >= 4,
            "{name}: ingress {ingress}, egress {egress}: {counters:?}"
        );
    }
    // And no bridge: the host has no bridge device, only the veths.
    assert!(
        !node
            .ns
            .exec_ok("ip", &["-o", "link", "show", "type", "bridge"])
            .contains("bridge")
    );
}

#[test]
fn deleted_pod_loses_connectivity_and_its_address_returns() {
    if !require_root() {
        return;
    }
    // A /29 has six usable addresses.
    let node = Node::start("10.63.0.0/29");
    let pods: Vec<Pod> = (0..6).map(|i| node.add_pod("demo", &format!("p{i}"))).collect();
    let seventh = Pod::new("demo", "p6");
    let out = node.cni("ADD", &seventh.spec, &node.netconf("1.1.0"));
    assert_eq!(out.code(), Some(100), "exhausted pool is a clear error: {out:?}");
    let err = out.json();
    assert!(
        format!("{} {}", err["msg"], err["details"]).contains("exhausted"),
        "{out:?}"
    );
    assert!(
        !node.ns.exec_ok("ip", &["-o", "link"]).contains("wt"),
        "no half-made veth left"
    );

    assert!(pods[0].ns.ping(pods[1].ip));
    let gone_ip = pods[1].ip;
    assert!(node.del_pod(&pods[1]).ok());
    assert!(!pods[0].ns.ping(gone_ip), "deleted pod no longer reachable");

    let out = node.cni("ADD", &seventh.spec, &node.netconf("1.1.0"));
    assert!(out.ok(), "{out:?}");
    assert_eq!(out.ip(), Some(gone_ip), "the released address is the only free one");
}

#[test]
fn fifty_concurrent_adds_get_distinct_addresses_and_connectivity() {
    if !require_root() {
        return;
    }
    let node = Node::start("10.64.0.0/24");
    let pods: Vec<Pod> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let node = &node;
                s.spawn(move || node.add_pod("load", &format!("p{i}")))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("ADD thread")).collect()
    });
    let ips: BTreeSet<_> = pods.iter().map(|p| p.ip).collect();
    assert_eq!(ips.len(), 50, "distinct addresses");
    for p in &pods[1..] {
        assert!(pods[0].ns.ping(p.ip), "p0 → {} ({})", p.spec.name, p.ip);
    }
    match node.client().call(Request::Status).unwrap() {
        Response::Status(s) => assert_eq!(s.endpoints, 50),
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_error_path_returns_its_spec_code() {
    if !require_root() {
        return;
    }
    let node = Node::start("10.65.0.0/24");
    let pod = Pod::new("demo", "err");
    let good = node.netconf("1.1.0");

    let code = |cmd: &str, spec: &PodSpec, conf: &str| {
        let out = node.cni(cmd, spec, conf);
        assert!(!out.ok(), "{cmd} should fail: {out:?}");
        out.code().unwrap_or_else(|| panic!("error JSON on stdout: {out:?}"))
    };
    assert_eq!(code("ADD", &pod.spec, "{not json"), 6, "decoding failure");
    assert_eq!(
        code(
            "ADD",
            &pod.spec,
            r#"{"cniVersion":"0.3.1","name":"weir","type":"weir-cni"}"#
        ),
        1,
        "incompatible version"
    );
    assert_eq!(
        code(
            "ADD",
            &pod.spec,
            r#"{"cniVersion":"1.1.0","name":"weir","type":"bridge"}"#
        ),
        7,
        "wrong type"
    );
    assert_eq!(
        code("ADD", &pod.spec, r#"{"cniVersion":"1.1.0","type":"weir-cni"}"#),
        7,
        "missing name"
    );
    assert_eq!(code("FLY", &pod.spec, &good), 4, "unknown command");
    let mut no_ifname = pod.spec.clone();
    no_ifname.ifname = String::new();
    assert_eq!(code("ADD", &no_ifname, &good), 4, "missing CNI_IFNAME");
    let mut no_netns = pod.spec.clone();
    no_netns.netns = "/var/run/netns/does-not-exist".into();
    assert_eq!(code("ADD", &no_netns, &good), 3, "netns does not exist");
    assert!(
        node.cni("DEL", &no_netns, &good).ok(),
        "DEL with a missing netns succeeds"
    );

    // Agent unreachable: try again later, and nothing half-made.
    let away = serde_json::json!({"cniVersion":"1.1.0","name":"weir","type":"weir-cni","agentSocket":"/nonexistent/agent.sock"}).to_string();
    let links_before = node.ns.exec_ok("ip", &["-o", "link"]).lines().count();
    assert_eq!(code("ADD", &pod.spec, &away), 11);
    assert_eq!(
        node.ns.exec_ok("ip", &["-o", "link"]).lines().count(),
        links_before,
        "rolled back"
    );
    assert_eq!(
        pod.ns.exec_ok("ip", &["-o", "link"]).lines().count(),
        1,
        "pod netns untouched (lo only)"
    );
    assert_eq!(code("STATUS", &pod.spec, &away), 50, "plugin not available");
    assert_eq!(
        code("STATUS", &pod.spec, &node.netconf("1.0.0")),
        1,
        "STATUS needs 1.1.0"
    );

    // After all that, the same pod still comes up fine.
    assert!(node.cni("ADD", &pod.spec, &good).ok());
}

#[test]
fn cni_without_any_agent_socket_dir_still_answers_json() {
    if !require_root() {
        return;
    }
    let node_ns = NetNs::new(&weir_e2e::unique("wx"));
    let pod = Pod::new("demo", "lonely");
    let out = run_cni(
        &node_ns,
        "ADD",
        &pod.spec,
        r#"{"cniVersion":"1.0.0","name":"weir","type":"weir-cni","agentSocket":"/nonexistent/x.sock"}"#,
    );
    assert_eq!(out.code(), Some(11), "{out:?}");
    assert!(out.stderr.len() < 4096, "logs stay short");
}

/// Runs the plugin on a thread and fails the test (instead of hanging CI)
/// if it does not answer within `limit`.
fn cni_within(node: &Node, command: &str, spec: &PodSpec, conf: &str, limit: std::time::Duration) -> CniOutput {
    let (tx, rx) = std::sync::mpsc::channel();
    let what = command.to_owned();
    let (ns, command, spec, conf) = (
        NetNs::existing(&node.ns.name),
        command.to_owned(),
        spec.clone(),
        conf.to_owned(),
    );
    std::thread::spawn(move || {
        let _ = tx.send(run_cni(&ns, &command, &spec, &conf));
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("weir-cni {what} did not answer within {limit:?}"))
}

#[test]
fn the_plugin_never_hangs_and_never_wires_the_node_itself() {
    if !require_root() {
        return;
    }
    let node = Node::start("10.67.0.0/30"); // two usable addresses
    let conf = node.netconf("1.1.0");
    let limit = std::time::Duration::from_secs(15);

    // CNI_NETNS at a FIFO: opening one blocks until a writer comes.
    let dir = std::env::temp_dir().join(format!("weir-cni-fifo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("netns");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut spec = Pod::new("demo", "fifo").spec;
    spec.netns = fifo.to_string_lossy().into_owned();
    let out = cni_within(&node, "ADD", &spec, &conf, limit);
    assert_eq!(out.code(), Some(4), "not a network namespace: {out:?}");
    let _ = std::fs::remove_dir_all(&dir);

    // CNI_NETNS naming the node's own namespace: refused, its routes kept.
    let routes = node.ns.exec_ok("ip", &["route"]);
    let mut spec = Pod::new("demo", "self").spec;
    spec.netns = node.ns.path();
    let out = cni_within(&node, "ADD", &spec, &conf, limit);
    assert_eq!(out.code(), Some(4), "the node's own netns: {out:?}");
    assert_eq!(
        node.ns.exec_ok("ip", &["route"]),
        routes,
        "the node's routes are untouched"
    );

    // A full pod CIDR: STATUS says the plugin cannot serve ADDs.
    assert!(
        cni_within(&node, "STATUS", &spec, &conf, limit).ok(),
        "room left: ready"
    );
    let _a = node.add_pod("demo", "a");
    let _b = node.add_pod("demo", "b");
    let out = cni_within(&node, "STATUS", &spec, &conf, limit);
    assert_eq!(out.code(), Some(50), "no address left: {out:?}");
}

#[test]
fn the_agent_wires_only_a_pods_veth() {
    if !require_root() {
        return;
    }
    let node = Node::start("10.68.0.0/24");
    // Both ends of this veth are in the node's own netns.
    node.ns.exec_ok(
        "ip",
        &["link", "add", "lxcboth0", "type", "veth", "peer", "name", "lxcboth1"],
    );
    for host in ["lo", "lxcboth0"] {
        let req = weir_agent_api::EndpointAdd {
            container_id: format!("c-{host}"),
            ifname: "eth0".into(),
            netns: "/var/run/netns/whatever".into(),
            host_ifname: host.into(),
            pod_mac: "02:00:00:00:00:aa".into(),
            pod: weir_agent_api::PodRef {
                namespace: "demo".into(),
                name: host.into(),
                uid: String::new(),
            },
        };
        match node.client().call(Request::EndpointAdd(req)) {
            Err(weir_agent_api::ClientError::Api(e)) => {
                assert_eq!(e.code, weir_agent_api::ErrorCode::BadRequest, "{host}: {e:?}")
            }
            other => panic!("{host} must be refused: {other:?}"),
        }
    }
    // The node's loopback still works: nothing was attached to it.
    node.ns.exec_ok("ping", &["-c", "1", "-W", "1", "127.0.0.1"]);
    match node.client().call(Request::Status).unwrap() {
        Response::Status(s) => assert_eq!(s.endpoints, 0, "no address was handed out"),
        other => panic!("{other:?}"),
    }
}
