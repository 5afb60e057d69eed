//! A node on a real API server, for the tests and the benchmark: the
//! control plane (`weir_test_support::kube`) in the node's netns, as on a
//! control-plane node; weir's CRDs and RBAC; a Node object that is Ready,
//! its pod CIDR from kube-controller-manager's allocator; the operator; the
//! agent with a token of its service account. The caller plays the
//! kubelet ([`KubeNode::run_pod`]: the pod object, weir-cni ADD, the pod's
//! IP and readiness in its status).
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use weir_test_support::kube::ControlPlane;

use crate::{Node, Pod, bin, in_netns};

/// A process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    t0.elapsed()
}

pub fn repo(path: &str) -> String {
    std::fs::read_to_string(format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))).expect(path)
}

pub fn apply(cp: &ControlPlane, yaml: &str) {
    let out = cp.apply(yaml);
    assert!(
        out.status.success(),
        "apply: {}\n{yaml}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// weir's CRDs and RBAC, a Node object that is Ready, its pod CIDR from
/// the allocator.
pub fn install(cp: &ControlPlane, node: &str) -> String {
    for f in [
        "install/crds/weir-policies.yaml",
        "install/crds/weir-identities.yaml",
        "install/rbac.yaml",
    ] {
        apply(cp, &repo(f));
    }
    let wait = weir_k8s::wait_for_crds_args();
    cp.kubectl_ok(&wait.iter().map(String::as_str).collect::<Vec<_>>());
    apply(
        cp,
        &format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {node}, labels: {{kubernetes.io/hostname: {node}}}}}\n"
        ),
    );
    let status = r#"{"status":{"conditions":[{"type":"Ready","status":"True","reason":"KubeletReady","message":"the test plays the kubelet"}]}}"#;
    cp.kubectl_ok(&[
        "patch",
        "node",
        node,
        "--subresource=status",
        "--type=merge",
        "-p",
        status,
    ]);
    let mut cidr = String::new();
    wait_for(
        "the node's pod CIDR from kube-controller-manager",
        Duration::from_secs(30),
        || {
            cidr = cp.kubectl_ok(&["get", "node", node, "-o", "jsonpath={.spec.podCIDR}"]);
            !cidr.is_empty()
        },
    );
    cidr
}

/// The kubelet's part for one pod: the object bound to the node, its
/// netns through weir-cni, its IP and readiness in its status.
pub fn run_pod(cp: &ControlPlane, node: &Node, ns: &str, name: &str, app: &str) -> Pod {
    apply(
        cp,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}\nspec:\n  nodeName: {}\n  containers: [{{name: c, image: weir.lab/serve, ports: [{{name: echo, containerPort: 8080}}]}}]\n",
            node.name
        ),
    );
    let pod = node.add_pod(ns, name);
    let status = format!(
        r#"{{"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}],"conditions":[{{"type":"Ready","status":"True"}},{{"type":"ContainersReady","status":"True"}}]}}}}"#,
        ip = pod.ip
    );
    cp.kubectl_ok(&[
        "patch",
        "pod",
        "-n",
        ns,
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status,
    ]);
    pod
}

/// A line echo server on `port` in the pod, for every connection.
pub fn echo_server(pod: &Pod, port: u16) {
    let listener = in_netns(pod.spec.netns.clone(), move || {
        TcpListener::bind(("0.0.0.0", port)).expect("bind")
    });
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            std::thread::spawn(move || {
                let mut w = conn.try_clone().expect("clone");
                for line in BufReader::new(conn).lines() {
                    let Ok(line) = line else { return };
                    if w.write_all(format!("echo {line}\n").as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

pub fn connect(pod: &Pod, to: SocketAddr, timeout: Duration) -> Option<TcpStream> {
    let s = in_netns(pod.spec.netns.clone(), move || TcpStream::connect_timeout(&to, timeout)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    Some(s)
}

pub fn round_trip(stream: &mut TcpStream, msg: &str) -> bool {
    let Ok(mut reader) = stream.try_clone().map(BufReader::new) else {
        return false;
    };
    let mut line = String::new();
    stream.write_all(format!("{msg}\n").as_bytes()).is_ok()
        && reader.read_line(&mut line).is_ok()
        && line.trim() == format!("echo {msg}")
}

/// A new connection from `pod` to `to` gets its line echoed.
pub fn answers(pod: &Pod, to: SocketAddr) -> bool {
    connect(pod, to, Duration::from_millis(800)).is_some_and(|mut s| round_trip(&mut s, "hello"))
}

pub fn vip(cp: &ControlPlane, ns: &str, svc: &str, port: u16) -> SocketAddr {
    let ip = cp.kubectl_ok(&["get", "svc", "-n", ns, svc, "-o", "jsonpath={.spec.clusterIP}"]);
    let ip: Ipv4Addr = ip.trim().parse().expect("a ClusterIP from the API server");
    (ip, port).into()
}

/// The agent's /metrics (loopback of the node); empty if it does not answer.
pub fn scrape(node: &Node) -> String {
    in_netns(node.ns.path(), || {
        let mut s = TcpStream::connect("127.0.0.1:9962").ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        Some(body)
    })
    .unwrap_or_default()
}

/// The sum of a metric's series on the agent's /metrics (loopback of the node).
pub fn metric(node: &Node, name: &str, label: &str) -> f64 {
    scrape(node)
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A node following a real API server, everything started.
pub struct KubeNode {
    pub node: Node,
    pub cp: ControlPlane,
    /// The pod CIDR the allocator gave the node.
    pub cidr: String,
    _operator: Proc,
}

impl KubeNode {
    /// `None` when the control plane is not built (a skip outside CI).
    pub fn start(agent_args: &[&str]) -> Option<KubeNode> {
        let mut node = Node::without_agent("", agent_args);
        let cp = ControlPlane::start_in(Some((&node.ns.path(), None)))?;
        let cidr = install(&cp, &node.name);
        let operator = cp.kubeconfig_for("kube-system", "weir-operator");
        let log = std::fs::File::create(cp.path().join("weir-operator.log")).expect("log");
        let operator = Proc(
            node.ns
                .command(bin("weir-operator").to_str().expect("utf-8"))
                .arg("--kubeconfig")
                .arg(&operator)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("weir-operator"),
        );
        node.kubeconfig = Some(cp.kubeconfig_for("kube-system", "weir-agent"));
        node.start_agent();
        Some(KubeNode {
            node,
            cp,
            cidr,
            _operator: operator,
        })
    }

    pub fn apply(&self, yaml: &str) {
        apply(&self.cp, yaml)
    }

    pub fn run_pod(&self, ns: &str, name: &str, app: &str) -> Pod {
        run_pod(&self.cp, &self.node, ns, name, app)
    }
}
