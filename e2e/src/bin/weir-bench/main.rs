//! `weir-bench`: the foundation benchmarks, side by side in one run.
//!
//! - CNI ADD and DEL latency over 100 pods, and ADD until the new pod
//!   answers a ping (usable connectivity).
//! - Pod-to-pod TCP throughput (iperf3) and UDP/TCP request-response
//!   latency (sockperf ping-pong) through weir vs two namespaces joined by a
//!   bare veth pair (no eBPF, no routing hop), interleaved run by run.
//! - Agent RSS idle and with 100 pods.
//!
//! Needs root, iperf3 and sockperf. Prints a Markdown report. `--cni-only`
//! stops after the CNI and memory part; `--cross-node` measures pod to pod
//! across two lab nodes (native routing and VXLAN) instead; `--services`
//! compares service connection setup with kube-proxy's iptables layout;
//! `--socket-lb` what a connection from the node to a ClusterIP costs
//! through the socket programs, against the backend's own address and
//! against a pod's per-packet path;
//! `--nodeport` compares NodePort packet rates in XDP and in TC; `--flows`
//! measures the flow pipeline, its clients, the relay, what recording costs
//! the datapath, and the agent's memory with full flow rings
//! (`--flows-recording`: only what recording costs, `--flows-pipeline`: the
//! rest, for reruns); `--kubernetes` weir on a real API server (Service and
//! policy changes to the datapath, memory with 10,000 pods and Services);
//! `--policy` what network policy costs (rules selecting
//! the destination pod, a change with 1,000 policies, memory);
//! `--real-nodes` weir installed on real kubelets and containerd (pod
//! start, CNI ADD as containerd calls it, image size, agent memory).

use std::time::{Duration, Instant};

use std::path::PathBuf;

mod agents;
mod flows;
mod kubernetes;
mod nodeport;
mod policy;
mod real_nodes;
mod scale;
mod services;
mod ui;

use weir_e2e::{NetNs, Node, Pod, bin, require_root, unique};

const PODS: usize = 100;
const ROUNDS: usize = 5;
const SECONDS: &str = "5";

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[idx]
}

fn median(samples: &mut [f64]) -> f64 {
    percentile(samples, 0.5)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Two namespaces on one veth pair: the physical limit.
struct Bare {
    a: NetNs,
    b: NetNs,
}

impl Bare {
    fn new() -> Self {
        let a = NetNs::new(&unique("wba"));
        let b = NetNs::new(&unique("wbb"));
        let (va, vb) = (unique("bva"), unique("bvb"));
        let ok = |args: &[&str]| {
            assert!(
                std::process::Command::new("ip").args(args).status().unwrap().success(),
                "ip {args:?}"
            )
        };
        ok(&[
            "link", "add", &va, "netns", &a.name, "type", "veth", "peer", "name", &vb, "netns", &b.name,
        ]);
        a.exec_ok("ip", &["addr", "add", "10.199.0.1/24", "dev", &va]);
        b.exec_ok("ip", &["addr", "add", "10.199.0.2/24", "dev", &vb]);
        a.exec_ok("ip", &["link", "set", &va, "up"]);
        b.exec_ok("ip", &["link", "set", &vb, "up"]);
        Self { a, b }
    }
}

/// Gbit/s from one iperf3 run, server in `server`, client in `client`.
fn iperf(server: &NetNs, client: &NetNs, server_ip: &str) -> f64 {
    let mut srv = server
        .command("iperf3")
        .args(["-s", "-1", "-B", server_ip])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 -s");
    std::thread::sleep(Duration::from_millis(300));
    let out = client.exec_ok("iperf3", &["-c", server_ip, "-t", SECONDS, "-J"]);
    let _ = srv.wait();
    let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("bits_per_second")
        / 1e9
}

/// Median round-trip latency in µs from sockperf ping-pong.
fn sockperf(server: &NetNs, client: &NetNs, server_ip: &str, tcp: bool) -> f64 {
    sockperf_to(server, client, server_ip, server_ip, tcp)
}

/// [`sockperf`] with the client aimed at `target` (a Service's address
/// that leads to `server_ip`).
fn sockperf_to(server: &NetNs, client: &NetNs, server_ip: &str, target: &str, tcp: bool) -> f64 {
    let mut args = vec!["sr", "-i", server_ip, "-p", "11111"];
    if tcp {
        args.push("--tcp");
    }
    let mut srv = server
        .command("sockperf")
        .args(&args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sockperf sr");
    std::thread::sleep(Duration::from_millis(300));
    let mut cargs = vec!["pp", "-i", target, "-p", "11111", "-t", SECONDS];
    if tcp {
        cargs.push("--tcp");
    }
    let out = client.exec_ok("sockperf", &cargs);
    let _ = srv.kill();
    let _ = srv.wait();
    // "sockperf: ---> percentile 50.000 =   12.345" is one-way latency (RTT/2).
    let p50 = out
        .lines()
        .find(|l| l.contains("percentile 50.000"))
        .and_then(|l| l.rsplit('=').next()?.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no p50 in sockperf output:\n{out}"));
    p50 * 2.0
}

/// A two-node lab (via the real `weir lab`) with one pod on each node.
struct CrossNode {
    client: NetNs,
    server: NetNs,
    server_ip: String,
    // Last: dropped after the netns handles, it tears the lab down.
    _lab: LabGuard,
}

/// Runs `weir lab down` and removes the lab's files on drop.
struct LabGuard(PathBuf);

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new(bin("weir"))
            .args(["lab", "down"])
            .env("WEIR_LAB_DIR", self.0.join("lab"))
            .output();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl CrossNode {
    fn up(routing: &str, xdp: bool) -> Self {
        let name = unique("wbx");
        let dir = std::env::temp_dir().join(format!("weir-bench-{name}"));
        std::fs::create_dir_all(&dir).expect("bench dir");
        let topo = dir.join("topo.yaml");
        std::fs::write(
            &topo,
            format!("name: {name}\nclusterCIDR: 10.251.0.0/16\nnodeCIDR: 172.31.251.0/24\nrouting: {routing}\nnodePortXDP: {xdp}\nnodes:\n  - {{name: a, podCIDR: 10.251.1.0/24}}\n  - {{name: b, podCIDR: 10.251.2.0/24}}\n"),
        )
        .expect("topology");
        let pods = dir.join("pods.yaml");
        std::fs::write(
            &pods,
            "apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: bench}\nspec: {nodeName: a, containers: [{name: c, image: x}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: server, namespace: bench}\nspec: {nodeName: b, containers: [{name: c, image: x}]}\n",
        )
        .expect("pods");
        let lab_dir = dir.join("lab");
        let guard = LabGuard(dir);
        lab_cmd(&lab_dir, &["up", topo.to_str().expect("utf-8")]);
        lab_cmd(&lab_dir, &["apply", pods.to_str().expect("utf-8")]);
        let json = lab_cmd(&lab_dir, &["get", "pod", "bench/server", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&json).expect("pod json");
        Self {
            client: NetNs::existing(&format!("{name}-bench-client")),
            server: NetNs::existing(&format!("{name}-bench-server")),
            server_ip: v["status"]["podIP"].as_str().expect("podIP").to_owned(),
            _lab: guard,
        }
    }
}

fn lab_cmd(lab_dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(bin("weir"))
        .arg("lab")
        .args(args)
        .env("WEIR_LAB_DIR", lab_dir)
        .output()
        .expect("weir lab");
    assert!(
        out.status.success(),
        "weir lab {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn main() {
    if !require_root() {
        std::process::exit(1);
    }
    for tool in ["iperf3", "sockperf"] {
        assert!(
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .unwrap()
                .status
                .success(),
            "{tool} missing: run scripts/deps.sh"
        );
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    println!(
        "Machine: {} CPUs, {model}, kernel {kernel}\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    if std::env::args().any(|a| a == "--ui") {
        ui::run();
        ui::streams();
        return;
    }
    if std::env::args().any(|a| a == "--flows-grpc") {
        flows::grpc_only();
        return;
    }
    if std::env::args().any(|a| a == "--scale" || a.starts_with("--scale=")) {
        scale::api();
        return;
    }
    if std::env::args().any(|a| a == "--scale-model") {
        scale::model_costs();
        scale::change_costs();
        return;
    }
    if std::env::args().any(|a| a == "--standalone-reload") {
        standalone_reload();
        return;
    }
    if std::env::args().any(|a| a == "--flows-memory") {
        flows::memory_only();
        return;
    }
    if std::env::args().any(|a| a == "--flow-metrics") {
        flows::metrics_cost();
        return;
    }
    if std::env::args().any(|a| a == "--flows-pipeline") {
        flows::pipeline_only();
        return;
    }
    if std::env::args().any(|a| a == "--flows-recording") {
        flows::recording_cost();
        return;
    }
    if std::env::args().any(|a| a == "--flows") {
        flows::run();
        return;
    }
    if std::env::args().any(|a| a == "--policy") {
        policy::run();
        return;
    }
    if std::env::args().any(|a| a == "--real-nodes") {
        real_nodes::run();
        return;
    }
    if std::env::args().any(|a| a == "--kubernetes") {
        kubernetes::run();
        return;
    }
    if std::env::args().any(|a| a == "--nodeport") {
        nodeport::run();
        return;
    }
    if std::env::args().any(|a| a == "--services") {
        services::run();
        return;
    }
    if std::env::args().any(|a| a == "--socket-lb") {
        services::run_from_node();
        return;
    }
    if std::env::args().any(|a| a == "--cross-node") {
        println!("## Pod to pod across two nodes vs bare veth ({ROUNDS} interleaved rounds of {SECONDS} s, medians)\n");
        println!("| measure | weir | bare veth | ratio |\n|---|---|---|---|");
        cross_node();
        return;
    }

    // --- CNI latency and agent memory -------------------------------------
    let node = Node::start("10.70.0.0/24");
    let pid = node.agent_pid().expect("agent running");
    std::thread::sleep(Duration::from_millis(500));
    let rss_idle = rss_kib(pid);
    let probe = node.add_pod("bench", "probe");
    let (mut add, mut ready, mut del) = (Vec::new(), Vec::new(), Vec::new());
    let mut pods = Vec::new();
    for i in 0..PODS {
        let mut pod = Pod::new("bench", &format!("p{i}"));
        let t0 = Instant::now();
        let out = node.cni("ADD", &pod.spec, &node.netconf("1.1.0"));
        add.push(t0.elapsed().as_secs_f64() * 1e3);
        assert!(out.ok(), "{out:?}");
        pod.ip = out.ip().expect("ip");
        while !probe.ns.ping(pod.ip) {
            assert!(t0.elapsed() < Duration::from_secs(5), "pod {i} not reachable");
        }
        ready.push(t0.elapsed().as_secs_f64() * 1e3);
        pods.push(pod);
    }
    let rss_100 = rss_kib(pid);
    for pod in &pods {
        let t0 = Instant::now();
        assert!(node.del_pod(pod).ok());
        del.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    println!("## CNI and agent ({PODS} pods, sequential, release build)\n");
    println!("| measure | p50 | p99 |\n|---|---|---|");
    println!(
        "| CNI ADD (process start to result) | {:.1} ms | {:.1} ms |",
        percentile(&mut add, 0.5),
        percentile(&mut add, 0.99)
    );
    println!(
        "| ADD until the pod answers a ping | {:.1} ms | {:.1} ms |",
        percentile(&mut ready, 0.5),
        percentile(&mut ready, 0.99)
    );
    println!(
        "| CNI DEL | {:.1} ms | {:.1} ms |",
        percentile(&mut del, 0.5),
        percentile(&mut del, 0.99)
    );
    println!(
        "\n| agent RSS | idle | with {PODS} pods |\n|---|---|---|\n| weir-agent | {:.1} MiB | {:.1} MiB |\n",
        rss_idle as f64 / 1024.0,
        rss_100 as f64 / 1024.0
    );
    drop(pods);
    drop(probe);
    if std::env::args().any(|a| a == "--cni-only") {
        return;
    }

    // --- datapath vs bare veth ---------------------------------------------
    let a = node.add_pod("bench", "client");
    let b = node.add_pod("bench", "server");
    let bare = Bare::new();
    let b_ip = b.ip.to_string();
    let (mut tw, mut tb, mut uw, mut ub, mut cw, mut cb) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        tw.push(iperf(&b.ns, &a.ns, &b_ip));
        tb.push(iperf(&bare.b, &bare.a, "10.199.0.2"));
        uw.push(sockperf(&b.ns, &a.ns, &b_ip, false));
        ub.push(sockperf(&bare.b, &bare.a, "10.199.0.2", false));
        cw.push(sockperf(&b.ns, &a.ns, &b_ip, true));
        cb.push(sockperf(&bare.b, &bare.a, "10.199.0.2", true));
    }
    let (tw, tb) = (median(&mut tw), median(&mut tb));
    let (uw, ub) = (median(&mut uw), median(&mut ub));
    let (cw, cb) = (median(&mut cw), median(&mut cb));
    println!("## Pod to pod on one node vs bare veth ({ROUNDS} interleaved rounds of {SECONDS} s, medians)\n");
    println!("| measure | weir | bare veth | ratio |\n|---|---|---|---|");
    println!(
        "| TCP throughput (iperf3, 1 stream) | {tw:.2} Gbit/s | {tb:.2} Gbit/s | {:.1}% |",
        tw / tb * 100.0
    );
    println!(
        "| UDP ping-pong RTT (sockperf p50) | {uw:.1} µs | {ub:.1} µs | {:.2}x |",
        uw / ub
    );
    println!(
        "| TCP ping-pong RTT (sockperf p50) | {cw:.1} µs | {cb:.1} µs | {:.2}x |",
        cw / cb
    );
}

/// Cross-node pod to pod, both routing modes, against the same bare veth.
fn cross_node() {
    let bare = Bare::new();
    for (routing, xdp) in [("native", true), ("native", false), ("vxlan", true), ("vxlan", false)] {
        let lab = CrossNode::up(routing, xdp);
        let routing = if xdp {
            format!("{routing}, XDP on uplink")
        } else {
            format!("{routing}, no XDP")
        };
        let (mut tw, mut tb, mut cw, mut cb) = (vec![], vec![], vec![], vec![]);
        for _ in 0..ROUNDS {
            tw.push(iperf(&lab.server, &lab.client, &lab.server_ip));
            tb.push(iperf(&bare.b, &bare.a, "10.199.0.2"));
            cw.push(sockperf(&lab.server, &lab.client, &lab.server_ip, true));
            cb.push(sockperf(&bare.b, &bare.a, "10.199.0.2", true));
        }
        let (tw, tb, cw, cb) = (median(&mut tw), median(&mut tb), median(&mut cw), median(&mut cb));
        println!(
            "| {routing}: TCP throughput (iperf3) | {tw:.2} Gbit/s | {tb:.2} Gbit/s | {:.1}% |",
            tw / tb * 100.0
        );
        println!(
            "| {routing}: TCP ping-pong RTT (sockperf p50) | {cw:.1} µs | {cb:.1} µs | {:.2}x |",
            cw / cb
        );
    }
}

/// Standalone mode after one manifest changes: every file parsed again
/// (what the agent did before issue 22) against only the changed one, on
/// 5,000 pods and 1,000 Services in files of their own; alternating
/// rounds, medians.
fn standalone_reload() {
    use weir_agent::cluster::Parsed;
    let dir = std::env::temp_dir().join(format!("weir-bench-standalone-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("pod")).expect("dir");
    std::fs::create_dir_all(dir.join("service")).expect("dir");
    for i in 0..5000 {
        std::fs::write(
            dir.join(format!("pod/p{i}.yaml")),
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: ns{}, labels: {{app: a{}}}}}\n\
                 spec: {{nodeName: n1, containers: [{{name: c, image: x, ports: [{{name: http, containerPort: 8080}}]}}]}}\n\
                 status: {{podIP: 10.{}.{}.{}}}\n",
                i % 50,
                i % 500,
                (i >> 16) & 255,
                (i >> 8) & 255,
                i & 255
            ),
        )
        .expect("pod");
    }
    for i in 0..1000 {
        std::fs::write(
            dir.join(format!("service/s{i}.yaml")),
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: ns{}}}\n\
                 spec: {{selector: {{app: a{}}}, ports: [{{port: 80, targetPort: http}}]}}\n",
                i % 50,
                i % 500
            ),
        )
        .expect("service");
    }
    let mut warm = Parsed::default();
    let _ = warm.load(&dir);
    let (mut full, mut incremental) = (Vec::new(), Vec::new());
    for round in 0..5 {
        // One pod's labels change (and its size with them).
        std::fs::write(
            dir.join("pod/p42.yaml"),
            format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p42, namespace: ns42, labels: {{app: r{round}x}}}}\nspec: {{containers: []}}\n"),
        )
        .expect("pod");
        let t = Instant::now();
        let (a, _) = Parsed::default().load(&dir);
        full.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let (b, _) = warm.load(&dir);
        incremental.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(a.pods.len(), b.pods.len());
    }
    let (f, i) = (median(&mut full), median(&mut incremental));
    println!("standalone reload after one change, 5,000 pods + 1,000 Services (5 rounds, medians):");
    println!(
        "  every file parsed: {f:.1} ms\n  only the changed one: {i:.1} ms ({:.1}x faster)",
        f / i
    );
    let _ = std::fs::remove_dir_all(&dir);
}
