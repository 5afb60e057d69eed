//! weir installed into a cluster as its users install it: two real nodes
//! (kubelet + containerd) with no CNI, NotReady; then
//! `kubectl apply -f install/weir.yaml` (or `helm install`) and the nodes
//! turn Ready, pods run on weir across nodes, the in-cluster relay reaches
//! the agents over mutual TLS with the operator's certificates and serves
//! the stock hubble CLI through `kubectl port-forward` (over TLS too, with
//! Helm); uninstalled, the DaemonSet's pods go.
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Lab, REAL_NODES_WORKLOAD, pods_in, privileged, show};

/// Each test runs two kubelets, two containerd and a control plane: one
/// lab at a time on two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn repo(path: &str) -> String {
    format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))
}

/// A lab of two real nodes with nothing installed; node names carry
/// `tag`, since weir's DaemonSet pins by node name.
fn bare_cluster(tag: &str, segment: u8) -> Lab {
    let lab = Lab::new(tag);
    let topo = lab.file(
        "topo.yaml",
        &format!(
            "name: {}\nclusterCIDR: 10.244.0.0/16\nnodeCIDR: 172.31.{segment}.0/24\nrouting: native\ncontrolPlane: kubernetes\nkubelet: real\ninstall: none\nnodes:\n  - {{name: {tag}-a, podCIDR: 10.244.1.0/24}}\n  - {{name: {tag}-b, podCIDR: 10.244.2.0/24}}\n",
            lab.name
        ),
    );
    let up = lab.ok(&["up", &topo]);
    for node in ["a", "b"] {
        assert!(
            up.contains(&format!("node {tag}-{node}: NotReady (no CNI configured yet)")),
            "{up}"
        );
    }
    assert!(up.contains("weir is not installed"), "{up}");
    lab
}

fn kubectl(lab: &Lab, args: &[&str]) -> String {
    let mut all = vec!["kubectl", "--"];
    all.extend(args);
    lab.ok(&all)
}

/// Both nodes Ready and every part of weir rolled out (agents, operator,
/// relay), as `kubectl` reports them.
fn wait_installed(lab: &Lab) {
    kubectl(
        lab,
        &["wait", "--for=condition=Ready", "node", "--all", "--timeout=120s"],
    );
    for what in [
        "daemonset/weir-agent",
        "deployment/weir-operator",
        "deployment/weir-relay",
    ] {
        kubectl(lab, &["-n", "kube-system", "rollout", "status", what, "--timeout=120s"]);
    }
}

/// The workload runs on weir: pod to pod across nodes, and the Service.
fn pods_reach_pods(lab: &Lab) {
    let file = lab.file("workload.yaml", REAL_NODES_WORKLOAD);
    lab.ok(&["apply", &file]);
    let all = pods_in(lab, "rn");
    let web: Vec<_> = all.iter().filter(|p| p.0.starts_with("web-")).collect();
    assert_eq!(web.len(), 2, "{all:?}");
    let client_node = &all.iter().find(|p| p.0 == "client").expect("client").1;
    let remote = web
        .iter()
        .find(|p| &p.1 != client_node)
        .expect("a web pod on the other node");
    let out = lab.ok(&["probe", "rn/client", &format!("{}:8080/tcp", remote.2)]);
    assert_eq!(out.trim(), format!("connected: {}", remote.0), "{all:?}");
    let svc: serde_json::Value =
        serde_json::from_str(&lab.ok(&["get", "svc", "rn/web", "-o", "json"])).expect("service JSON");
    let vip = svc["spec"]["clusterIP"].as_str().expect("clusterIP").to_owned();
    let out = lab.ok(&["probe", "rn/client", &format!("{vip}:80/tcp")]);
    assert!(out.trim().starts_with("connected: web-"), "{out}");
    // By name, through CoreDNS (which runs on weir too).
    let t0 = Instant::now();
    loop {
        let out = lab.cmd(&[
            "kubectl",
            "--",
            "-n",
            "rn",
            "exec",
            "client",
            "--",
            "nslookup",
            "web.rn.svc.cluster.local",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.contains(&vip) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "nslookup: {}", show(&out));
        std::thread::sleep(Duration::from_millis(500));
    }
    // From outside the cluster, through a NodePort on either node.
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().expect("nodePort");
    let node_ip = svc_node_ip(lab, &remote.1);
    let answer = lab
        .external(&format!("{node_ip}:{node_port}/tcp"))
        .unwrap_or_else(|e| panic!("NodePort from the external host: {e}"));
    assert!(answer.starts_with("web-"), "{answer}");
}

/// A node's InternalIP, from its Node object.
fn svc_node_ip(lab: &Lab, node: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&kubectl(lab, &["get", "node", node, "-o", "json"])).expect("node JSON");
    v["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .expect("InternalIP")
        .to_owned()
}

/// One keep-alive HTTP connection from the client pod to `ip:8081`,
/// asking `/hostname` until told to stop; returns how many answers came
/// and the first failure, if any.
fn keep_asking(
    client_netns: String,
    ip: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(u32, Option<String>)> {
    use std::io::{BufRead, BufReader, Read, Write};
    std::thread::spawn(move || {
        let target = format!("{ip}:8081");
        let stream = weir_test_support::netns::in_netns(client_netns, move || {
            std::net::TcpStream::connect_timeout(&target.parse().expect("address"), Duration::from_secs(5))
        });
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => return (0, Some(format!("connect: {e}"))),
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut answers = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let ask = stream.write_all(b"GET /hostname HTTP/1.1\r\nHost: web\r\n\r\n");
            if let Err(e) = ask {
                return (answers, Some(format!("after {answers} answers, sending: {e}")));
            }
            let mut length = None;
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) => return (answers, Some(format!("after {answers} answers: closed"))),
                    Err(e) => return (answers, Some(format!("after {answers} answers, reading: {e}"))),
                    Ok(_) => {}
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse::<usize>().ok();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length.unwrap_or(0)];
            if let Err(e) = reader.read_exact(&mut body) {
                return (answers, Some(format!("after {answers} answers, body: {e}")));
            }
            answers += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        (answers, None)
    })
}

/// A rolling update of the agent DaemonSet to a new image tag: every
/// agent pod replaced, node by node, while a connection across nodes
/// keeps working (the datapath stays; each new agent adopts it).
fn rolling_update_keeps_connections(lab: &Lab) {
    let all = pods_in(lab, "rn");
    let client = lab.json(&["status"])["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["namespace"] == "rn" && p["name"] == "client")
        .map(|p| p["netns"].as_str().unwrap_or_default().to_owned())
        .expect("the client's netns");
    let client_node = &all.iter().find(|p| p.0 == "client").expect("client").1;
    let remote = all
        .iter()
        .find(|p| p.0.starts_with("web-") && &p.1 != client_node)
        .expect("a web pod on the other node");
    let before = kubectl(
        lab,
        &[
            "-n",
            "kube-system",
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=weir-agent",
            "-o",
            "name",
        ],
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let asker = keep_asking(client, remote.2.clone(), stop.clone());
    // The same image under a new tag, as a release would push it.
    let crane = weir_test_support::tool("crane").expect("crane is built by scripts/tools.sh");
    let tag = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}-external", lab.name))
        .arg("--")
        .arg(crane)
        .args([
            "tag",
            &format!("127.0.0.1:5000/weir-dev/weir:{}", env!("CARGO_PKG_VERSION")),
            "next",
        ])
        .output()
        .expect("crane tag");
    assert!(tag.status.success(), "crane tag: {}", show(&tag));
    kubectl(
        lab,
        &[
            "-n",
            "kube-system",
            "set",
            "image",
            "daemonset/weir-agent",
            "agent=ghcr.io/weir-dev/weir:next",
            "install-cni=ghcr.io/weir-dev/weir:next",
        ],
    );
    kubectl(
        lab,
        &[
            "-n",
            "kube-system",
            "rollout",
            "status",
            "daemonset/weir-agent",
            "--timeout=120s",
        ],
    );
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (answers, failure) = asker.join().expect("asker");
    assert_eq!(failure, None, "the connection broke during the rollout");
    assert!(answers > 10, "only {answers} answers");
    let after = kubectl(
        lab,
        &[
            "-n",
            "kube-system",
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=weir-agent",
            "-o",
            "name",
        ],
    );
    for old in before.lines() {
        assert!(!after.contains(old), "{old} was not replaced: {after}");
    }
    // New connections work after the rollout too.
    let out = lab.ok(&["probe", "rn/client", &format!("{}:8080/tcp", remote.2)]);
    assert_eq!(out.trim(), format!("connected: {}", remote.0));
}

/// `kubectl port-forward` to the relay's Service, in the control plane's
/// netns; killed on drop.
struct PortForward(Child);

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `weir ui` on a node (kubectl port-forward to the relay pod's loopback,
/// where relay.ui.enabled serves the map): the map it opens holds the
/// workload's pods talking.
fn service_map_through_weir_ui(lab: &Lab, node: &str) {
    use std::io::BufRead;
    let kubectl = weir_test_support::tool("kubectl").expect("kubectl is built by scripts/tools.sh");
    let path = format!(
        "{}:{}",
        kubectl.parent().expect("tools dir").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let netns = format!("--net=/var/run/netns/{}-{node}", lab.name);
    let mut child = Command::new("nsenter")
        .arg(&netns)
        .arg("--")
        .arg(weir_test_support::bin("weir"))
        .arg("ui")
        .arg(format!(
            "--kubeconfig={}",
            lab.dir.join("kube/admin.kubeconfig").display()
        ))
        .args(["--port", "0"])
        .env("PATH", path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("weir ui");
    let stdout = child.stdout.take().expect("weir ui's output");
    let _ui = PortForward(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("reading weir ui");
    let url = line
        .strip_prefix("service map: ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("weir ui said {line:?}"))
        .to_owned();
    let t0 = Instant::now();
    loop {
        let out = Command::new("nsenter")
            .arg(&netns)
            .args(["--", "curl", "-s", "--max-time", "5"])
            .arg(format!("{url}api/map"))
            .output()
            .expect("curl");
        let map: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let workloads: Vec<&str> = map["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["id"].as_str())
            .collect();
        if workloads.iter().any(|id| id.starts_with("rn/")) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the map through weir ui has no workload of rn: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The map's policy check reads the cluster with the relay's own
    // read-only role: deny-web (policy_drop_seen_through_the_relay) let
    // the client in again would allow what it denies now.
    let change = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                  metadata: {name: deny-web, namespace: rn}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  \
                  ingress: [{from: [{podSelector: {}}]}]\n";
    let out = Command::new("nsenter")
        .arg(&netns)
        .args(["--", "curl", "-s", "--max-time", "30", "--data-binary", change])
        .arg(format!("{url}api/policy/check"))
        .output()
        .expect("curl");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert!(
        report["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|g| g["server"] == "rn/web" && g["now"] == "denied" && g["after"] == "allowed"),
        "the policy check through weir ui: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// weir's CA, as a user fetches it: the Secret the operator keeps.
fn weir_ca(lab: &Lab) -> PathBuf {
    let t0 = Instant::now();
    let b64 = loop {
        let out = lab.cmd(&[
            "kubectl",
            "--",
            "-n",
            "kube-system",
            "get",
            "secret",
            "weir-hubble-ca",
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() && !text.is_empty() {
            break text;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no CA Secret: {}", show(&out));
        std::thread::sleep(Duration::from_millis(500));
    };
    let out = Command::new("base64")
        .arg("-d")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(b64.as_bytes())?;
            c.wait_with_output()
        })
        .expect("base64");
    let pem = String::from_utf8(out.stdout).expect("PEM");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    PathBuf::from(lab.file("ca.crt", &pem))
}

/// The stock hubble CLI, run in `node`'s netns.
fn hubble(lab: &Lab, node: &str, args: &[&str]) -> std::process::Output {
    let hubble = weir_test_support::tool("hubble").expect("hubble is built by scripts/tools.sh");
    Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}-{node}", lab.name))
        .arg("--")
        .arg(&hubble)
        .args(args)
        .output()
        .expect("hubble")
}

/// The stock hubble CLI, through `kubectl port-forward` to the relay, sees
/// both nodes (the relay reached both agents over mutual TLS) and the
/// workload's flows. With `ca`, over TLS to the relay, as the README says;
/// plaintext is then refused. Returns the `hubble` flags to reach it, and
/// the port-forward that must live while they are used.
fn hubble_through_the_relay(lab: &Lab, node: &str, ca: Option<&std::path::Path>) -> (Vec<String>, PortForward) {
    let port = 20000 + (std::process::id() % 20000) as u16;
    let pf = PortForward(
        lab.command(&[
            "kubectl",
            "--",
            "-n",
            "kube-system",
            "port-forward",
            "service/weir-relay",
            &format!("{port}:80"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl port-forward"),
    );
    let mut flags = vec!["--server".to_owned(), format!("localhost:{port}")];
    if let Some(ca) = ca {
        flags.extend([
            "--tls".to_owned(),
            format!("--tls-ca-cert-files={}", ca.display()),
            "--tls-server-name=relay.weir.dev".to_owned(),
        ]);
    }
    let run = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(flags.iter().map(String::as_str));
        hubble(lab, node, &all)
    };
    let t0 = Instant::now();
    loop {
        let status = run(&["status"]);
        let text = String::from_utf8_lossy(&status.stdout).into_owned();
        if text.contains("Connected Nodes: 2/2") {
            break;
        }
        // The agents' certificates come from the operator, through the
        // kubelet's Secret volumes.
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "hubble status: {}",
            show(&status)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("hubble status: 2/2 nodes {:?} after the rollout", t0.elapsed());
    let flows = run(&["observe", "--namespace", "rn", "--last", "200"]);
    let text = String::from_utf8_lossy(&flows.stdout);
    assert!(text.contains("rn/client"), "hubble observe: {}", show(&flows));
    if ca.is_some() {
        let plain = hubble(lab, node, &["status", "--server", &format!("localhost:{port}")]);
        assert!(!plain.status.success(), "plaintext to a TLS relay: {}", show(&plain));
    }
    (flags, pf)
}

/// An agent's Observer API on its node's address answers only clients
/// with a certificate from weir's CA: neither plaintext nor TLS without a
/// client certificate gets a flow.
fn agents_refuse_unauthenticated_clients(lab: &Lab, from: &str, agent_node: &str) {
    let server = format!("{}:4244", svc_node_ip(lab, agent_node));
    let plain = hubble(lab, from, &["observe", "--server", &server, "--last", "1"]);
    assert!(!plain.status.success(), "plaintext: {}", show(&plain));
    let anonymous = hubble(
        lab,
        from,
        &[
            "observe",
            "--server",
            &server,
            "--last",
            "1",
            "--tls",
            "--tls-allow-insecure",
        ],
    );
    assert!(
        !anonymous.status.success(),
        "no client certificate: {}",
        show(&anonymous)
    );
    assert!(
        String::from_utf8_lossy(&anonymous.stderr).contains("certificate"),
        "refused for its missing certificate: {}",
        show(&anonymous)
    );
}

/// A NetworkPolicy isolates the web pods: the client is refused, and the
/// stock hubble CLI through the relay (`relay`: its flags) shows the drop
/// and why.
fn policy_drop_seen_through_the_relay(lab: &Lab, node: &str, relay: &[String]) {
    let policy = lab.file(
        "deny-web.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-web, namespace: rn}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Ingress]\n",
    );
    kubectl(lab, &["apply", "-f", &policy]);
    let all = pods_in(lab, "rn");
    let web = all.iter().find(|p| p.0.starts_with("web-")).expect("a web pod");
    let t0 = Instant::now();
    loop {
        let out = lab.cmd(&["probe", "rn/client", &format!("{}:8080/tcp", web.2)]);
        if !out.status.success() {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "still allowed: {}", show(&out));
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut args = vec!["observe", "--namespace", "rn", "--verdict", "DROPPED", "--last", "50"];
    args.extend(relay.iter().map(String::as_str));
    let t0 = Instant::now();
    loop {
        let out = hubble(lab, node, &args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("rn/client") && text.contains(&web.0) && text.contains("Policy denied") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no policy drop: {}", show(&out));
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `weir status --kubeconfig` as the lab's admin, in the control plane's netns.
fn weir_status(lab: &Lab, node: &str) -> std::process::Output {
    Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}-{node}", lab.name))
        .arg("--")
        .arg(weir_test_support::bin("weir"))
        .arg("status")
        .arg(format!(
            "--kubeconfig={}",
            lab.dir.join("kube/admin.kubeconfig").display()
        ))
        .output()
        .expect("weir status")
}

/// `weir status` until it says ready (the relay reaches both agents once
/// their certificates are mounted), within a minute; its report.
fn weir_status_ready(lab: &Lab, node: &str) -> String {
    let t0 = Instant::now();
    loop {
        let status = weir_status(lab, node);
        let text = String::from_utf8_lossy(&status.stdout).into_owned();
        if status.status.success() {
            assert!(text.contains("weir is ready"), "{text}");
            assert!(text.contains("2 of 2 nodes connected"), "the relay's own count: {text}");
            return text;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "weir status: {}", show(&status));
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Every weir pod gone after an uninstall (the relay's too, whose CNI DEL
/// runs when the agent may already be gone).
fn pods_gone(lab: &Lab) {
    let t0 = Instant::now();
    loop {
        let left = kubectl(lab, &["-n", "kube-system", "get", "pods", "-o", "name"]);
        if !left.contains("weir-") {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "still there: {left}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn kubectl_apply_installs_weir_on_bare_nodes() {
    if !privileged() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let lab = bare_cluster("ik", 253);
    let name = lab.name.clone();
    // `weir status` with a kubeconfig: not installed, and says how.
    let status = weir_status(&lab, "ik-a");
    assert_eq!(status.status.code(), Some(1), "{}", show(&status));
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("kubectl apply -f install/weir.yaml"),
        "{}",
        show(&status)
    );
    // The README's install, as written: the API server's address (weir
    // replaces kube-proxy), then the one file.
    kubectl(
        &lab,
        &[
            "-n",
            "kube-system",
            "create",
            "configmap",
            "weir-kube-api",
            "--from-literal=KUBERNETES_SERVICE_HOST=172.31.253.11",
            "--from-literal=KUBERNETES_SERVICE_PORT=6443",
        ],
    );
    kubectl(&lab, &["apply", "-f", &repo("install/weir.yaml")]);
    wait_installed(&lab);
    let text = weir_status_ready(&lab, "ik-a");
    assert!(text.contains("weir-agent     desired 2, ready 2"), "{text}");
    pods_reach_pods(&lab);
    let (_, pf) = hubble_through_the_relay(&lab, "ik-a", None);
    drop(pf);
    agents_refuse_unauthenticated_clients(&lab, "ik-a", "ik-b");
    rolling_update_keeps_connections(&lab);

    // Uninstalled: the DaemonSet's pods go; what they leave on the nodes
    // goes with the documented cleanup.
    kubectl(
        &lab,
        &[
            "delete",
            "-f",
            &repo("install/weir.yaml"),
            "--wait=true",
            "--timeout=60s",
        ],
    );
    pods_gone(&lab);
    // The documented cleanup: each node as if weir had never run there.
    for node in ["ik-a", "ik-b"] {
        assert!(
            Path::new("/sys/fs/bpf/weir").join(node).exists(),
            "the agent's pins outlive it (restart safety)"
        );
    }
    kubectl(&lab, &["apply", "-f", &repo("install/cleanup.yaml")]);
    kubectl(
        &lab,
        &[
            "-n",
            "kube-system",
            "rollout",
            "status",
            "daemonset/weir-cleanup",
            "--timeout=120s",
        ],
    );
    for node in ["ik-a", "ik-b"] {
        let host = lab.dir.join("nodes").join(node).join("host");
        for left in ["etc/cni/net.d/05-weir.conflist", "opt/cni/bin/weir-cni"] {
            assert!(!host.join(left).exists(), "{node}: /{left} left");
        }
        let pins = Path::new("/sys/fs/bpf/weir").join(node);
        assert!(!pins.exists(), "{node}: {} left ({name})", pins.display());
        let links = Command::new("ip")
            .args(["-n", &format!("{name}-{node}"), "-d", "link", "show"])
            .output()
            .expect("ip link");
        let links = String::from_utf8_lossy(&links.stdout);
        assert!(
            !links.contains("xdp") && !links.contains("weir_vxlan"),
            "{node}: {links}"
        );
    }
    kubectl(
        &lab,
        &[
            "delete",
            "-f",
            &repo("install/cleanup.yaml"),
            "--wait=true",
            "--timeout=60s",
        ],
    );
    lab.ok(&["down"]);
}

#[test]
fn helm_install_installs_weir_on_bare_nodes() {
    if !privileged() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let lab = bare_cluster("ih", 254);
    let helm = |args: &[&str]| {
        let out = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}-ih-a", lab.name))
            .arg("--")
            .arg(weir_test_support::tool("helm").expect("helm is built by scripts/tools.sh"))
            .arg(format!(
                "--kubeconfig={}",
                lab.dir.join("kube/admin.kubeconfig").display()
            ))
            .args(args)
            .output()
            .expect("helm");
        assert!(out.status.success(), "helm {args:?}: {}", show(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    helm(&[
        "install",
        "weir",
        &repo("install/helm/weir"),
        "--namespace=kube-system",
        "--set=k8sServiceHost=172.31.254.11",
        "--set=k8sServicePort=6443",
        "--set=relay.tls.enabled=true",
        "--set=relay.ui.enabled=true",
    ]);
    wait_installed(&lab);
    // The relay asked over TLS (relay.tls.enabled), through a port-forward.
    weir_status_ready(&lab, "ih-a");
    pods_reach_pods(&lab);
    // The relay's own port over TLS, with the CA the operator issued.
    let ca = weir_ca(&lab);
    let (relay, pf) = hubble_through_the_relay(&lab, "ih-a", Some(&ca));
    policy_drop_seen_through_the_relay(&lab, "ih-a", &relay);
    drop(pf);
    service_map_through_weir_ui(&lab, "ih-a");
    helm(&[
        "uninstall",
        "weir",
        "--namespace=kube-system",
        "--wait",
        "--timeout=60s",
    ]);
    pods_gone(&lab);
}
