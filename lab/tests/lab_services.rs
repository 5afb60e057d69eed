//! End-to-end: the lab as the Services control plane. `weir lab up` one node,
//! apply `lab/demo/services.yaml` (a Deployment and three Services), and check
//! what the lab wrote: ClusterIPs, NodePorts, EndpointSlices, their terminating
//! phase while a Deployment scales down, and cleanup. Needs root and the
//! workspace built (`cargo build --workspace`). Traffic to ClusterIPs is in
//! `lab_clusterip.rs`.

use std::time::{Duration, Instant};

use serde_json::Value;

mod support;
use support::{Lab, privileged, show};

/// `get KIND -n svc-demo` as a map from name to object.
fn items(lab: &Lab, kind: &str) -> std::collections::BTreeMap<String, Value> {
    let list = lab.json(&["get", kind, "-n", "svc-demo"]);
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|o| (o["metadata"]["name"].as_str().expect("name").to_owned(), o.clone()))
        .collect()
}

fn demo_file() -> String {
    format!("{}/demo/services.yaml", env!("CARGO_MANIFEST_DIR"))
}

fn ip_in_service_cidr(ip: &str) -> bool {
    let ip: std::net::Ipv4Addr = ip.parse().unwrap_or_else(|_| panic!("clusterIP {ip:?} is not IPv4"));
    let [a, b, c, d] = ip.octets();
    a == 10 && b == 96 && !(c == 0 && d <= 1) && !(c == 255 && d == 255)
}

/// `(address, ready, serving, terminating)` of each endpoint of a slice, and its ports.
/// An endpoint: address, ready, serving, terminating.
type Ep = (String, bool, bool, bool);
/// A slice port: name, number, protocol.
type Port = (String, i64, String);

fn endpoints(slice: &Value) -> (Vec<Ep>, Vec<Port>) {
    let eps = slice["endpoints"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    let c = &e["conditions"];
                    let b = |k: &str| c[k].as_bool().unwrap_or_else(|| panic!("condition {k} missing: {e}"));
                    (
                        e["addresses"][0].as_str().expect("address").to_owned(),
                        b("ready"),
                        b("serving"),
                        b("terminating"),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let ports = slice["ports"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["name"].as_str().expect("port name").to_owned(),
                        p["port"].as_i64().expect("port"),
                        p["protocol"].as_str().expect("protocol").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (eps, ports)
}

fn port(name: &str, n: i64, proto: &str) -> Port {
    (name.into(), n, proto.into())
}

#[test]
fn services_get_addresses_and_endpointslices_follow_pods() {
    if !privileged() {
        return;
    }
    let lab = Lab::new("svc");
    let topo = lab.work.join("topo.yaml");
    std::fs::write(
        &topo,
        format!(
            "name: {}\nclusterCIDR: 10.244.0.0/16\nnodes:\n  - name: n1\n    podCIDR: 10.244.1.0/24\n",
            lab.name
        ),
    )
    .expect("writing topology");
    lab.ok(&["up", &topo.to_string_lossy()]);
    let demo = demo_file();
    lab.ok(&["apply", &demo]);

    // Services: ClusterIPs in 10.96.0.0/16 (not .0 or .1), distinct; a NodePort in range.
    let svcs = items(&lab, "svc");
    assert_eq!(svcs.keys().collect::<Vec<_>>(), ["empty", "web", "web-np"]);
    let mut ips = Vec::new();
    for (name, s) in &svcs {
        let ip = s["spec"]["clusterIP"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no clusterIP: {s}"))
            .to_owned();
        assert!(
            ip_in_service_cidr(&ip),
            "{name}: clusterIP {ip} not a usable address of 10.96.0.0/16"
        );
        assert_eq!(s["spec"]["clusterIPs"], serde_json::json!([ip]), "{name}");
        assert_eq!(s["spec"]["ipFamilies"], serde_json::json!(["IPv4"]), "{name}");
        assert_eq!(s["spec"]["ipFamilyPolicy"], "SingleStack", "{name}");
        ips.push(ip);
    }
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 3, "ClusterIPs must be distinct: {svcs:?}");
    let node_port = svcs["web-np"]["spec"]["ports"][0]["nodePort"]
        .as_i64()
        .expect("web-np has a nodePort");
    assert!((30000..=32767).contains(&node_port), "nodePort {node_port}");
    assert!(
        svcs["web"]["spec"]["ports"][0]["nodePort"].is_null(),
        "a ClusterIP service has no nodePort"
    );

    // EndpointSlices: three ready pods, named ports resolved; the empty service has none.
    let slices = items(&lab, "endpointslice");
    assert_eq!(
        slices.keys().collect::<Vec<_>>(),
        ["empty-weir", "web-np-weir", "web-weir"]
    );
    let web = &slices["web-weir"];
    assert_eq!(web["addressType"], "IPv4");
    assert_eq!(web["metadata"]["labels"]["kubernetes.io/service-name"], "web");
    assert_eq!(
        web["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        "weir-lab"
    );
    let (eps, ports) = endpoints(web);
    assert_eq!(ports, [port("http", 80, "TCP"), port("dns", 53, "UDP")]);
    assert_eq!(eps.len(), 3, "{web}");
    assert!(eps.iter().all(|(_, r, s, t)| *r && *s && !*t), "all ready: {eps:?}");
    let pods = items(&lab, "pod");
    let mut pod_ips: Vec<String> = ["web-0", "web-1", "web-2"]
        .iter()
        .map(|p| pods[*p]["status"]["podIP"].as_str().expect("podIP").to_owned())
        .collect();
    pod_ips.sort();
    let mut slice_ips: Vec<String> = eps.iter().map(|e| e.0.clone()).collect();
    slice_ips.sort();
    assert_eq!(slice_ips, pod_ips);
    assert_eq!(web["endpoints"][0]["targetRef"]["kind"], "Pod");
    assert_eq!(web["endpoints"][0]["nodeName"], "n1");
    let (np_eps, np_ports) = endpoints(&slices["web-np-weir"]);
    assert_eq!((np_eps.len(), np_ports), (3, vec![port("http", 80, "TCP")]));
    assert!(endpoints(&slices["empty-weir"]).0.is_empty());

    let deploy = lab.json(&["get", "deployment", "svc-demo/web"]);
    assert_eq!(deploy["status"]["readyReplicas"], 3, "{deploy}");

    let status = lab.json(&["status"]);
    let web_status = status["services"]
        .as_array()
        .expect("services in status")
        .iter()
        .find(|s| s["name"] == "web")
        .cloned()
        .expect("web in status");
    assert_eq!(web_status["readyEndpoints"], 3, "{web_status}");

    // Scale to one: the two pods going away are terminating (serving, not
    // ready) during the grace period, then gone.
    let scale = lab
        .command(&[
            "scale",
            "deployment/web",
            "--replicas",
            "1",
            "-n",
            "svc-demo",
            "--grace",
            "4",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting scale");
    let deadline = Instant::now() + Duration::from_secs(20);
    let terminating = loop {
        let (eps, _) = endpoints(&lab.json(&["get", "endpointslice", "svc-demo/web-weir"]));
        let t: Vec<_> = eps.iter().filter(|e| e.3).cloned().collect();
        if !t.is_empty() {
            break (eps, t);
        }
        assert!(
            Instant::now() < deadline,
            "no endpoint ever turned terminating: {eps:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(terminating.1.len(), 2, "{:?}", terminating.0);
    assert!(
        terminating.1.iter().all(|(_, r, s, _)| !*r && *s),
        "terminating = serving, not ready: {:?}",
        terminating.0
    );
    let out = scale.wait_with_output().expect("waiting for scale");
    assert!(out.status.success(), "scale failed: {}", show(&out));
    let (eps, _) = endpoints(&lab.json(&["get", "endpointslice", "svc-demo/web-weir"]));
    assert_eq!(eps.len(), 1, "{eps:?}");
    assert!(eps[0].1 && !eps[0].3);
    let pods = items(&lab, "pod");
    assert!(
        pods.contains_key("web-0") && !pods.contains_key("web-1") && !pods.contains_key("web-2"),
        "{:?}",
        pods.keys()
    );

    // Re-applying keeps every allocation and scales back to three.
    lab.ok(&["apply", &demo]);
    let again = items(&lab, "svc");
    for (name, s) in &svcs {
        assert_eq!(
            again[name]["spec"]["clusterIP"], s["spec"]["clusterIP"],
            "{name}: clusterIP changed on re-apply"
        );
        assert_eq!(
            again[name]["spec"]["ports"], s["spec"]["ports"],
            "{name}: ports changed on re-apply"
        );
    }
    assert_eq!(endpoints(&items(&lab, "endpointslice")["web-weir"]).0.len(), 3);

    // Delete everything: slices go with their services, pods with the deployment.
    lab.ok(&["delete", &demo, "--grace", "0"]);
    assert!(items(&lab, "endpointslice").is_empty(), "slices left behind");
    assert!(items(&lab, "svc").is_empty());
    assert!(items(&lab, "pod").is_empty());
    assert!(items(&lab, "deployment").is_empty());

    lab.ok(&["down"]);
    assert!(
        lab.leftover_netns().is_empty(),
        "netns left behind: {:?}",
        lab.leftover_netns()
    );
}
