//! End-to-end egress: pods on two lab nodes reach the lab's external host
//! (outside the cluster, on the node segment) over TCP, UDP and ICMP, and the
//! external host sees each pod's node IP as the source (masquerading in
//! `to_netdev`), in both routing modes. Needs root, `weir-agent` + `weir-cni`
//! built into the same target dir (`cargo build --workspace` first), and `ping`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn weir() -> &'static str {
    env!("CARGO_BIN_EXE_weir")
}

/// One lab: unique name and dir; `Drop` runs `weir lab down` even on panic.
struct Lab {
    name: String,
    dir: PathBuf,
    work: PathBuf,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let id = format!("{:x}{}", std::process::id(), tag);
        let work = std::env::temp_dir().join(format!("weir-lab-test-{id}"));
        std::fs::create_dir_all(&work).expect("creating test work dir");
        Lab { name: format!("wt{id}"), dir: work.join("lab"), work }
    }

    fn cmd(&self, args: &[&str]) -> Output {
        let bin_dir = Path::new(weir()).parent().expect("binary dir");
        Command::new(weir())
            .arg("lab")
            .args(args)
            .env("WEIR_LAB_DIR", &self.dir)
            .env("WEIR_BIN_DIR", bin_dir)
            .output()
            .expect("running weir")
    }

    /// Run and require success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args);
        assert!(out.status.success(), "weir lab {args:?} failed: {}", show(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn file(&self, name: &str, text: &str) -> String {
        let path = self.work.join(name);
        std::fs::write(&path, text).expect("writing test file");
        path.to_string_lossy().into_owned()
    }

    fn pod_ip(&self, pod: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["get", "pod", pod, "-o", "json"])).expect("get json");
        v["status"]["podIP"].as_str().unwrap_or_else(|| panic!("{pod} has no podIP: {v}")).to_owned()
    }

    fn leftover_netns(&self) -> Vec<String> {
        let prefix = format!("{}-", self.name);
        std::fs::read_dir("/var/run/netns")
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = self.cmd(&["down"]);
        if !out.status.success() && !std::thread::panicking() {
            panic!("weir lab down failed: {}", show(&out));
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

fn show(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Root is required; under CI that is a failure, elsewhere a printed skip.
fn privileged() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    // "Uid:\treal\teffective\t..."
    let euid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1));
    if euid == Some("0") {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("lab tests need root (network namespaces, bpf) and CI=true: refusing to skip");
    }
    eprintln!("skipping lab test: not root (network namespaces and bpf need root)");
    false
}


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
    assert!(lab.pod_ip("default/left").starts_with("10.253.1."), "left lands on node a");

    let external = "172.31.251.254";
    for (pod, node_ip, other_node) in [("default/left", "172.31.251.11", "172.31.251.12"), ("default/right", "172.31.251.12", "172.31.251.11")] {
        // Twice each: the second connection is a new flow with a new port.
        for _ in 0..2 {
            let tcp = lab.ok(&["probe", pod, &format!("{external}:8080/tcp")]);
            assert_eq!(tcp.trim(), format!("connected: external {node_ip}"), "tcp {pod} -> external");
            let udp = lab.ok(&["probe", pod, &format!("{external}:5353/udp")]);
            assert_eq!(udp.trim(), format!("connected: external {node_ip}"), "udp {pod} -> external");
        }
        assert_eq!(lab.ok(&["probe", pod, &format!("{external}/icmp")]).trim(), "reachable", "icmp {pod} -> external");
        // Another node's IP is outside the cluster CIDR too.
        assert_eq!(lab.ok(&["probe", pod, &format!("{other_node}/icmp")]).trim(), "reachable", "{pod} -> {other_node}");
    }
    // Pod to pod stays unmasqueraded and working.
    assert_eq!(lab.ok(&["probe", "default/left", "right:8080/tcp"]).trim(), "connected: right");

    let status: serde_json::Value = serde_json::from_str(&lab.ok(&["status", "-o", "json"])).expect("status json");
    assert!(!status.to_string().contains("snat_ports_exhausted"), "no SNAT drops: {status}");

    lab.ok(&["down"]);
    assert!(lab.leftover_netns().is_empty(), "netns left behind: {:?}", lab.leftover_netns());
}

#[test]
fn pods_reach_the_external_host_as_their_node_native_routing() {
    egress("native");
}

#[test]
fn pods_reach_the_external_host_as_their_node_vxlan_overlay() {
    egress("vxlan");
}
