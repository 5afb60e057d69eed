//! End-to-end: traffic to ClusterIP services in a two-node lab (native
//! routing). `lab/demo/services.yaml` puts three `web` backends on both
//! nodes and a client pod; `weir lab probe` connects to the Service's
//! ClusterIP from inside a pod and prints which backend answered.
//!
//! A probe's socket is connected to the VIP, so an answer at all means the
//! reply came back from the VIP: reverse NAT worked on whichever node the
//! backend is. Needs root and the workspace built (`cargo build --workspace`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod support;
use support::{Lab, cluster_ip, demo_lab, privileged, show};

/// Session affinity on top of the demo: the same backends, other ports.
const STICKY: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web-sticky, namespace: svc-demo}
spec:
  selector: {app: web}
  sessionAffinity: ClientIP
  ports:
  - {name: http, port: 8080, targetPort: http, protocol: TCP}
  - {name: dns, port: 5353, targetPort: dns, protocol: UDP}
";

/// Backend pod name → node, for the pods of Deployment `web`.
fn web_pods(lab: &Lab) -> BTreeMap<String, String> {
    let list = lab.json(&["get", "pod", "-n", "svc-demo"]);
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|p| p["metadata"]["labels"]["app"] == "web")
        .map(|p| {
            let name = p["metadata"]["name"].as_str().expect("name").to_owned();
            (name, p["spec"]["nodeName"].as_str().expect("nodeName").to_owned())
        })
        .collect()
}

/// One `weir lab probe`: what it printed and how long it took.
fn probe(lab: &Lab, from: &str, target: &str, timeout: &str) -> (String, Duration) {
    let start = Instant::now();
    let out = lab.cmd(&["probe", from, target, "--timeout", timeout]);
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        matches!(out.status.code(), Some(0..=2)),
        "probe {from} → {target}: {}",
        show(&out)
    );
    (said, start.elapsed())
}

/// The backend that answered, or a panic naming what happened instead.
fn backend(lab: &Lab, from: &str, target: &str) -> String {
    let (said, _) = probe(lab, from, target, "2");
    said.strip_prefix("connected: ")
        .unwrap_or_else(|| panic!("probe {from} → {target}: {said}"))
        .to_owned()
}

/// Agents pick Services up from the lab's store by polling: wait until
/// `target` answers as `expect` says (a backend, or a refusal).
fn wait_for(lab: &Lab, from: &str, target: &str, expect: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (said, _) = probe(lab, from, target, "1");
        if expect(&said) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{from} → {target} never became ready: last said {said:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn serving(said: &str) -> bool {
    said.starts_with("connected: ")
}

/// `n` probes; returns how many times each backend answered.
fn spread(lab: &Lab, from: &str, target: &str, n: usize) -> BTreeMap<String, usize> {
    let mut h = BTreeMap::new();
    for _ in 0..n {
        *h.entry(backend(lab, from, target)).or_default() += 1;
    }
    h
}

#[test]
fn clusterip_spreads_tcp_and_udp_over_backends_on_both_nodes() {
    if !privileged() {
        return;
    }
    let lab = demo_lab("cs", "172.31.251.0/24");
    let pods = web_pods(&lab);
    assert_eq!(pods.len(), 3, "{pods:?}");
    let nodes: BTreeSet<&String> = pods.values().collect();
    assert_eq!(nodes.len(), 2, "backends on both nodes: {pods:?}");
    let vip = cluster_ip(&lab, "svc-demo/web");

    for proto in ["80/tcp", "53/udp"] {
        let target = format!("{vip}:{proto}");
        wait_for(&lab, "svc-demo/client", &target, serving);
        // 90 connections, each from a fresh source port: 30 expected per
        // backend, standard deviation 4.5; 15% (13.5) is 3.7 sigma away.
        let n = 90;
        let h = spread(&lab, "svc-demo/client", &target, n);
        eprintln!("{target}: {h:?}");
        assert_eq!(
            h.keys().collect::<BTreeSet<_>>(),
            pods.keys().collect(),
            "{target}: every backend, only backends"
        );
        assert!(
            h.values().all(|c| *c * 100 >= n * 15),
            "{target}: each backend ≥ 15%: {h:?}"
        );
    }
}

#[test]
fn client_ip_affinity_pins_the_client_to_one_backend() {
    if !privileged() {
        return;
    }
    let lab = demo_lab("ca", "172.31.251.0/24");
    lab.ok(&["apply", &lab.file("sticky.yaml", STICKY)]);
    let vip = cluster_ip(&lab, "svc-demo/web-sticky");
    for proto in ["8080/tcp", "5353/udp"] {
        let target = format!("{vip}:{proto}");
        wait_for(&lab, "svc-demo/client", &target, serving);
        let h = spread(&lab, "svc-demo/client", &target, 30);
        assert_eq!(
            h.len(),
            1,
            "{target}: one backend for every connection of the client: {h:?}"
        );
    }
    // Without affinity the same client is spread (the control).
    let web = format!("{}:80/tcp", cluster_ip(&lab, "svc-demo/web"));
    wait_for(&lab, "svc-demo/client", &web, serving);
    assert!(spread(&lab, "svc-demo/client", &web, 30).len() > 1);
}

#[test]
fn a_service_without_endpoints_refuses_at_once() {
    if !privileged() {
        return;
    }
    let lab = demo_lab("ce", "172.31.251.0/24");
    let vip = cluster_ip(&lab, "svc-demo/empty");
    let tcp = format!("{vip}:80/tcp");
    let udp = format!("{vip}:53/udp");
    // Before the agent programs the service, the VIP is just an address.
    wait_for(&lab, "svc-demo/client", &tcp, |s| s == "refused");
    let client_node = lab.json(&["get", "pod", "svc-demo/client"])["spec"]["nodeName"]
        .as_str()
        .expect("node")
        .to_owned();
    let rejected = || -> u64 {
        let status = lab.json(&["status"]);
        let node = status["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .find(|n| n["name"] == *client_node)
            .cloned();
        node.expect("client's node")["status"]["drops"]["no_service_backend"]["packets"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = rejected();

    for _ in 0..5 {
        // The probe would wait 5 s for an answer that never comes.
        let (said, took) = probe(&lab, "svc-demo/client", &tcp, "5");
        assert_eq!(said, "refused", "TCP: answered with a RST");
        assert!(took < Duration::from_secs(1), "TCP refused at once, took {took:?}");
        let (said, took) = probe(&lab, "svc-demo/client", &udp, "5");
        // The datapath answers port unreachable: refused. A host or
        // network unreachable would be acceptable too, but would not be ours.
        assert_eq!(said, "refused", "UDP: answered with ICMP port unreachable");
        assert!(took < Duration::from_secs(1), "UDP refused at once, took {took:?}");
    }
    assert_eq!(
        rejected() - before,
        10,
        "each rejection counted as no_service_backend on {client_node}"
    );

    // The other services of the same lab are unaffected.
    let web = format!("{}:80/tcp", cluster_ip(&lab, "svc-demo/web"));
    wait_for(&lab, "svc-demo/client", &web, serving);
}

#[test]
fn a_backend_reaching_its_own_service_can_land_on_itself() {
    if !privileged() {
        return;
    }
    let lab = demo_lab("ch", "172.31.251.0/24");
    let vip = cluster_ip(&lab, "svc-demo/web");
    for proto in ["80/tcp", "53/udp"] {
        let target = format!("{vip}:{proto}");
        wait_for(&lab, "svc-demo/web-0", &target, serving);
        // 40 tries: missing itself every time has odds (2/3)^40, about 1e-7.
        let h = spread(&lab, "svc-demo/web-0", &target, 40);
        assert!(h.contains_key("web-0"), "{target}: web-0 never reached itself: {h:?}");
        assert!(h.len() > 1, "{target}: and the others too: {h:?}");
    }
}

#[test]
fn scaling_while_probing_fails_no_probe() {
    if !privileged() {
        return;
    }
    let lab = Arc::new(demo_lab("cx", "172.31.251.0/24"));
    let vip = cluster_ip(&lab, "svc-demo/web");
    let targets = [format!("{vip}:80/tcp"), format!("{vip}:53/udp")];
    for t in &targets {
        wait_for(&lab, "svc-demo/client", t, serving);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (lab, stop, targets) = (Arc::clone(&lab), Arc::clone(&stop), targets.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            for t in targets.iter().cycle() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (said, _) = probe(&lab, "svc-demo/client", t, "2");
                seen.push((Instant::now(), t.clone(), said));
            }
            seen
        })
    };
    let scale = |n: &str| {
        lab.ok(&[
            "scale",
            "deployment/web",
            "--replicas",
            n,
            "-n",
            "svc-demo",
            "--grace",
            "1",
        ]);
        Instant::now()
    };
    let settle = || std::thread::sleep(Duration::from_millis(1500));
    scale("5");
    settle();
    let shrunk = scale("2");
    settle();
    let regrow = Instant::now();
    scale("4");
    settle();
    let last = scale("1");
    settle();
    stop.store(true, Ordering::Relaxed);
    let seen = prober.join().expect("prober thread");

    let failed: Vec<_> = seen
        .iter()
        .filter(|(_, _, said)| !serving(said))
        .map(|(at, t, said)| {
            format!(
                "{t} {said} at {:?} after the scale to 2",
                at.saturating_duration_since(shrunk)
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} probes failed (scale to 4 at {:?}, to 1 at {:?}): {failed:?}",
        failed.len(),
        seen.len(),
        regrow - shrunk,
        last - shrunk
    );
    assert!(seen.len() >= 40, "the prober kept going: {} probes", seen.len());
    let names = |from: Instant, to: Instant| -> BTreeSet<&str> {
        seen.iter()
            .filter(|(at, _, _)| *at > from && *at < to)
            .map(|(_, _, s)| &s["connected: ".len()..])
            .collect()
    };
    let all = names(shrunk - Duration::from_secs(3600), Instant::now());
    assert!(
        all.contains("web-3") && all.contains("web-4"),
        "scaled-up backends took connections: {all:?}"
    );
    // Once a scale-down has returned its pods are gone, and nobody answers as them.
    assert_eq!(
        names(shrunk, regrow),
        BTreeSet::from(["web-0", "web-1"]),
        "between scale to 2 and to 4"
    );
    assert_eq!(
        names(last, Instant::now()),
        BTreeSet::from(["web-0"]),
        "after scale to 1"
    );
    let pods = web_pods(&lab);
    assert_eq!(pods.keys().collect::<Vec<_>>(), ["web-0"], "{pods:?}");
}

/// A process stopped with SIGSTOP until dropped (SIGCONT), also on panic.
struct Frozen(u32);

impl Frozen {
    fn new(pid: u32) -> Self {
        let ok = std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .expect("kill -STOP")
            .success();
        assert!(ok, "could not stop pid {pid}");
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// The pid of the agent of node `node`, from the lab's own record.
fn agent_pid(lab: &Lab, node: &str) -> u32 {
    let text = std::fs::read_to_string(lab.dir.join("lab.json")).expect("lab.json");
    let state: serde_json::Value = serde_json::from_str(&text).expect("lab.json is JSON");
    state["nodes"][node]["agent"]["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or_else(|| panic!("no agent pid for node {node}: {}", state["nodes"]))
}

/// Two backends pinned to nodes a and b, a client on a, one UDP service.
const PINNED: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: pin}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: pin}
spec: {nodeName: a, containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-a, namespace: pin, labels: {app: web}}
spec: {nodeName: a, containers: [{name: c, image: x, ports: [{name: dns, containerPort: 53, protocol: UDP}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-b, namespace: pin, labels: {app: web}}
spec: {nodeName: b, containers: [{name: c, image: x, ports: [{name: dns, containerPort: 53, protocol: UDP}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: pin}
spec:
  selector: {app: web}
  ports: [{name: dns, port: 53, targetPort: dns, protocol: UDP}]
"#;

/// A pod's network goes only once every agent has stopped sending to it.
/// The client's agent (node a) is frozen while web-b (node b) is deleted,
/// so it cannot drop web-b from the service; a UDP flow pinned to web-b
/// (the same source port each time) must be answered, by web-a, right after
/// the delete returns. With a fixed wait instead, the lab deleted web-b
/// first and the flow went nowhere until the agent came back.
#[test]
fn a_backend_goes_only_once_the_agents_stopped_using_it() {
    if !privileged() {
        return;
    }
    let lab = Lab::new("sd");
    let topo = lab.file(
        "topo.yaml",
        &format!(
            "name: {}\nclusterCIDR: 10.244.0.0/16\nnodeCIDR: 172.31.251.0/24\nrouting: native\nnodes:\n  - {{name: a, podCIDR: 10.244.1.0/24}}\n  - {{name: b, podCIDR: 10.244.2.0/24}}\n",
            lab.name
        ),
    );
    lab.ok(&["up", &topo]);
    let manifests = lab.file("pinned.yaml", PINNED);
    lab.ok(&["apply", &manifests]);
    let vip = cluster_ip(&lab, "pin/web");
    let target = format!("{vip}:53/udp");
    wait_for(&lab, "pin/client", &target, serving);
    let from_port = |port: u16| -> String {
        let out = lab.cmd(&[
            "probe",
            "pin/client",
            &target,
            "--timeout",
            "2",
            "--source-port",
            &port.to_string(),
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let port = (42000..42100)
        .find(|p| from_port(*p) == "connected: web-b")
        .expect("some flow lands on web-b");
    assert_eq!(from_port(port), "connected: web-b", "a flow keeps its backend");

    let frozen = Frozen::new(agent_pid(&lab, "a"));
    let freeze = Duration::from_secs(3);
    let thaw = std::thread::spawn(move || {
        std::thread::sleep(freeze);
        drop(frozen);
    });
    let started = Instant::now();
    let web_b = lab.file(
        "web-b.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web-b, namespace: pin}\nspec: {nodeName: b, containers: [{name: c, image: x}]}\n",
    );
    lab.ok(&["delete", &web_b, "--grace", "1"]);
    let took = started.elapsed();
    let after = from_port(port);
    thaw.join().expect("thaw thread");
    assert_eq!(
        after, "connected: web-a",
        "the flow from port {port} right after the delete, which took {took:?}"
    );
    assert!(
        took >= freeze,
        "the delete waited for the frozen agent: it took {took:?}"
    );
}

/// Large UDP datagrams (fragmented both ways past the pods' 1500-byte
/// MTU), as a large DNS answer would be: through a ClusterIP to backends
/// on both nodes, and masqueraded to the host outside the cluster.
#[test]
fn fragmented_udp_through_a_service_and_masquerade_arrives_both_ways() {
    if !privileged() {
        return;
    }
    let lab = demo_lab("fr", "172.31.251.0/24");
    let vip = cluster_ip(&lab, "svc-demo/web");
    let target = format!("{vip}:53/udp");
    wait_for(&lab, "svc-demo/client", &target, serving);
    for size in ["3000", "8000"] {
        let mut answered = BTreeSet::new();
        for _ in 0..15 {
            let out = lab.cmd(&["probe", "svc-demo/client", &target, "--size", size, "--timeout", "2"]);
            let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            assert!(out.status.success(), "{size} bytes to {target}: {}", show(&out));
            answered.insert(said);
        }
        assert!(
            answered.len() >= 2,
            "{size} bytes: backends on both nodes answer: {answered:?}"
        );
        let out = lab.cmd(&[
            "probe",
            "svc-demo/client",
            "external:5353/udp",
            "--size",
            size,
            "--timeout",
            "2",
        ]);
        assert!(out.status.success(), "{size} bytes masqueraded: {}", show(&out));
    }
}
