//! Service connection setup: weir's eBPF load balancer vs the rules
//! kube-proxy's iptables and nftables modes write, with 1, 1,000 and
//! 10,000 services.
//!
//! Both sides use the same shape: a client netns and a server netns behind
//! one node netns, the same built-in server (answers with its name and
//! closes), and the same client loop (connect, read the reply, close). The
//! measured service is the one in the middle of the list, where iptables'
//! linear KUBE-SERVICES chain puts an average service.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weir_e2e::{NetNs, bin, in_netns, unique};

use crate::percentile;

const TIERS: [usize; 3] = [1, 1_000, 10_000];
const LOOP_FOR: Duration = Duration::from_secs(3);

/// Connections per second and latency percentiles (µs) of one loop.
struct Rate {
    per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    failed: usize,
}

fn connect_loop(netns: &str, vip: Ipv4Addr, port: u16) -> Rate {
    let addr = SocketAddr::from((vip, port));
    in_netns(netns.to_owned(), move || {
        let (mut ok, mut failed, mut lat) = (0usize, 0usize, Vec::new());
        let start = Instant::now();
        while start.elapsed() < LOOP_FOR {
            let t = Instant::now();
            // Read the one-line reply, then close first, as an HTTP client
            // with a finished response does: TIME_WAIT stays with the client,
            // whose port allocator sees it, not with the shared backend.
            let done = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).and_then(|s| {
                s.set_read_timeout(Some(Duration::from_secs(1)))?;
                let mut reply = String::new();
                std::io::BufRead::read_line(&mut std::io::BufReader::new(&s), &mut reply).map(|_| reply)
            });
            match done {
                Ok(reply) if !reply.is_empty() => {
                    ok += 1;
                    lat.push(t.elapsed().as_secs_f64() * 1e6);
                }
                _ => failed += 1,
            }
        }
        let secs = start.elapsed().as_secs_f64();
        let (p50, p99) = if lat.is_empty() {
            (0.0, 0.0)
        } else {
            (percentile(&mut lat, 0.5), percentile(&mut lat, 0.99))
        };
        Rate {
            per_sec: ok as f64 / secs,
            p50_us: p50,
            p99_us: p99,
            failed,
        }
    })
}

/// Widen the client's ephemeral ports: thousands of connections a second.
fn tune_client(ns: &NetNs) {
    ns.exec_ok("sysctl", &["-qw", "net.ipv4.ip_local_port_range=1024 65000"]);
}

fn service_yaml(from: usize, to: usize) -> String {
    (from..to)
        .map(|i| {
            format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: default}}\nspec: {{selector: {{app: web}}, ports: [{{port: 80, targetPort: http}}]}}\n"
            )
        })
        .collect()
}

fn lab(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(bin("weir"))
        .arg("lab")
        .args(args)
        .env("WEIR_LAB_DIR", dir)
        .output()
        .expect("weir lab");
    assert!(
        out.status.success(),
        "weir lab {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One-node weir lab with a client and a server pod.
struct WeirSide {
    /// The lab's name (its netns names start with it).
    name: String,
    client: NetNs,
    programmed: usize,
    // Last: tears the lab down after the client handle is gone.
    lab: LabDir,
}

/// The lab's files; `Drop` runs `weir lab down` and removes them.
struct LabDir {
    dir: PathBuf,
    lab_dir: PathBuf,
}

impl Drop for LabDir {
    fn drop(&mut self) {
        let _ = Command::new(bin("weir"))
            .args(["lab", "down"])
            .env("WEIR_LAB_DIR", &self.lab_dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl WeirSide {
    fn up() -> Self {
        let name = unique("wbs");
        let dir = std::env::temp_dir().join(format!("weir-bench-{name}"));
        std::fs::create_dir_all(&dir).expect("bench dir");
        let me = LabDir {
            lab_dir: dir.join("lab"),
            dir,
        };
        let topo = me.dir.join("topo.yaml");
        std::fs::write(&topo, format!("name: {name}\nclusterCIDR: 10.250.0.0/16\nnodeCIDR: 172.31.252.0/24\nnodes:\n  - {{name: n, podCIDR: 10.250.1.0/24}}\n")).expect("topo");
        lab(&me.lab_dir, &["up", topo.to_str().expect("utf-8")]);
        let pods = me.dir.join("pods.yaml");
        std::fs::write(
            &pods,
            "apiVersion: v1\nkind: Pod\nmetadata: {name: server, namespace: default, labels: {app: web}}\nspec: {containers: [{name: c, image: x, ports: [{name: http, containerPort: 80}]}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: default}\nspec: {containers: [{name: c, image: x}]}\n",
        )
        .expect("pods");
        lab(&me.lab_dir, &["apply", pods.to_str().expect("utf-8")]);
        let client = NetNs::existing(&format!("{name}-default-client"));
        tune_client(&client);
        Self {
            name,
            client,
            programmed: 0,
            lab: me,
        }
    }

    /// The lab node's own network namespace (the socket programs' side).
    fn node_netns(&self) -> NetNs {
        NetNs::existing(&format!("{}-n", self.name))
    }

    /// The server pod's address.
    fn server_ip(&self) -> Ipv4Addr {
        let json = lab(&self.lab.lab_dir, &["get", "pod", "default/server", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&json).expect("pod json");
        v["status"]["podIP"].as_str().expect("podIP").parse().expect("ip")
    }

    /// Programs services up to `n` and returns the measured VIP once it answers.
    fn program(&mut self, n: usize) -> Ipv4Addr {
        if n > self.programmed {
            let file = self.lab.dir.join("svc.yaml");
            std::fs::write(&file, service_yaml(self.programmed, n)).expect("services");
            lab(&self.lab.lab_dir, &["apply", file.to_str().expect("utf-8")]);
            self.programmed = n;
        }
        let json = lab(
            &self.lab.lab_dir,
            &["get", "svc", &format!("default/svc-{}", n / 2), "-o", "json"],
        );
        let v: serde_json::Value = serde_json::from_str(&json).expect("svc json");
        let vip: Ipv4Addr = v["spec"]["clusterIP"].as_str().expect("clusterIP").parse().expect("ip");
        let deadline = Instant::now() + Duration::from_secs(60);
        while connect_loop_once(&self.client.path(), vip).is_err() {
            assert!(Instant::now() < deadline, "weir never programmed {vip}");
            std::thread::sleep(Duration::from_millis(200));
        }
        // The measured VIP answers before the agent has finished the rest:
        // measure once it is idle, so its CPU use does not count.
        wait_idle(&self.lab.lab_dir);
        vip
    }
}

impl WeirSide {
    /// Request/response latency from the client pod to the server pod,
    /// through a ClusterIP (the per-packet path: pods' connections are
    /// translated in from_pod) and to the pod's own address: sockperf TCP
    /// ping-pong ([`crate::sockperf_to`], 5 s), alternating, medians of 5
    /// rounds.
    fn round_trip_through_a_cluster_ip(&mut self) {
        const ROUNDS: usize = 5;
        let file = self.lab.dir.join("rtt.yaml");
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: Service\nmetadata: {name: rtt, namespace: default}\nspec: {selector: {app: web}, ports: [{port: 11111, targetPort: 11111}]}\n",
        )
        .expect("rtt service");
        lab(&self.lab.lab_dir, &["apply", file.to_str().expect("utf-8")]);
        let json = lab(&self.lab.lab_dir, &["get", "svc", "default/rtt", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&json).expect("svc json");
        let vip = v["spec"]["clusterIP"].as_str().expect("clusterIP").to_owned();
        wait_idle(&self.lab.lab_dir);
        let server = NetNs::existing(&format!("{}-default-server", self.name));
        let pod = self.server_ip().to_string();
        let (mut through, mut direct) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            // sockperf's server listens on the pod's address; the client
            // connects to the VIP or to that address.
            let measure = |target: &str| crate::sockperf_to(&server, &self.client, &pod, target, true);
            if round % 2 == 0 {
                through.push(measure(&vip));
                direct.push(measure(&pod));
            } else {
                direct.push(measure(&pod));
                through.push(measure(&vip));
            }
        }
        let (t, d) = (crate::median(&mut through), crate::median(&mut direct));
        println!(
            "\n## Request/response through a ClusterIP (sockperf TCP ping-pong, {ROUNDS} interleaved rounds of 5 s, medians)\n\n| path | RTT p50 |\n|---|---|\n| pod → ClusterIP (per packet) | {t:.1} µs |\n| pod → pod IP | {d:.1} µs |\n\nThrough the ClusterIP: {:.3}x the direct round trip.",
            t / d
        );
    }
}

/// Waits until the lab's agents use (almost) no CPU for a second.
fn wait_idle(lab_dir: &Path) {
    let pids: Vec<u32> = std::fs::read_to_string(lab_dir.join("lab.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .map(|v| {
            v["nodes"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(_, n)| n["agent"]["pid"].as_u64())
                .map(|p| p as u32)
                .collect()
        })
        .unwrap_or_default();
    assert!(!pids.is_empty(), "no agent pid in {}", lab_dir.display());
    let ticks = || -> u64 {
        pids.iter()
            .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
            .map(|s| {
                let after = &s[s.rfind(')').map_or(0, |i| i + 2)..];
                let f: Vec<&str> = after.split_whitespace().collect();
                f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0)
            })
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let before = ticks();
        std::thread::sleep(Duration::from_secs(1));
        if ticks() - before <= 2 || Instant::now() > deadline {
            return;
        }
    }
}

fn connect_loop_once(netns: &str, vip: Ipv4Addr) -> std::io::Result<()> {
    in_netns(netns.to_owned(), move || {
        TcpStream::connect_timeout(&SocketAddr::from((vip, 80)), Duration::from_millis(300)).map(drop)
    })
}

/// The kube-proxy baselines: plain routing through a node netns whose
/// netfilter holds what kube-proxy writes, in its iptables mode (linear
/// KUBE-SERVICES chain) or its nftables mode (a verdict map keyed by
/// address, protocol and port).
struct IptablesSide {
    node: NetNs,
    client: NetNs,
    _server: NetNs,
    server_proc: Child,
}

const IPT_CLIENT: &str = "10.249.1.2";
const IPT_SERVER: &str = "10.249.2.2";

impl IptablesSide {
    fn up() -> Self {
        let node = NetNs::new(&unique("wbin"));
        let client = NetNs::new(&unique("wbic"));
        let server = NetNs::new(&unique("wbis"));
        for (ns, addr, gw, dev) in [
            (&client, IPT_CLIENT, "10.249.1.1", "ic0"),
            (&server, IPT_SERVER, "10.249.2.1", "is0"),
        ] {
            let ok = |args: &[&str]| {
                assert!(
                    Command::new("ip").args(args).status().expect("ip").success(),
                    "ip {args:?}"
                )
            };
            ok(&[
                "link", "add", dev, "netns", &node.name, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
            ]);
            node.exec_ok("ip", &["addr", "add", &format!("{gw}/24"), "dev", dev]);
            node.exec_ok("ip", &["link", "set", dev, "up"]);
            ns.exec_ok("ip", &["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            ns.exec_ok("ip", &["link", "set", "eth0", "up"]);
            ns.exec_ok("ip", &["route", "add", "default", "via", gw]);
        }
        node.exec_ok("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        tune_client(&client);
        let server_proc = Command::new(bin("weir"))
            .args([
                "lab",
                "serve",
                "--netns",
                &server.path(),
                "--name",
                "server",
                "--port",
                "80/TCP",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("server");
        std::thread::sleep(Duration::from_millis(300));
        Self {
            node,
            client,
            _server: server,
            server_proc,
        }
    }

    fn vip(i: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 97, 0, 0)) + 2 + i as u32)
    }

    /// Loads `n` services laid out as kube-proxy's iptables mode does, with
    /// iptables-restore (as kube-proxy does), replacing the nat table.
    fn program(&self, n: usize) -> Ipv4Addr {
        let mut rules = String::from(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n",
        );
        for i in 0..n {
            rules.push_str(&format!(":KUBE-SVC-{i:016X} - [0:0]\n:KUBE-SEP-{i:016X} - [0:0]\n"));
        }
        rules.push_str("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n");
        rules.push_str("-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n");
        rules.push_str("-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n");
        rules.push_str("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n");
        rules.push_str("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n");
        rules.push_str("-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n");
        rules.push_str(
            "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE\n",
        );
        for i in 0..n {
            let vip = Self::vip(i);
            rules.push_str(&format!(
                "-A KUBE-SERVICES -d {vip}/32 -p tcp -m comment --comment \"default/svc-{i}:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-{i:016X}\n\
                 -A KUBE-SVC-{i:016X} ! -s 10.249.0.0/16 -d {vip}/32 -p tcp -m comment --comment \"default/svc-{i}:http cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ\n\
                 -A KUBE-SVC-{i:016X} -m comment --comment \"default/svc-{i}:http -> {IPT_SERVER}:80\" -j KUBE-SEP-{i:016X}\n\
                 -A KUBE-SEP-{i:016X} -s {IPT_SERVER}/32 -m comment --comment \"default/svc-{i}:http\" -j KUBE-MARK-MASQ\n\
                 -A KUBE-SEP-{i:016X} -p tcp -m comment --comment \"default/svc-{i}:http\" -m tcp -j DNAT --to-destination {IPT_SERVER}:80\n"
            ));
        }
        rules.push_str("COMMIT\n");
        let mut restore = self
            .node
            .command("iptables-restore")
            .stdin(Stdio::piped())
            .spawn()
            .expect("iptables-restore");
        std::io::Write::write_all(restore.stdin.as_mut().expect("stdin"), rules.as_bytes()).expect("rules");
        assert!(
            restore.wait().expect("iptables-restore").success(),
            "iptables-restore failed"
        );
        Self::vip(n / 2)
    }
}

impl IptablesSide {
    /// Loads `n` services as kube-proxy's nftables mode lays them out
    /// (table `ip kube-proxy`: the `service-ips` verdict map, a chain per
    /// service with its masquerade mark and `numgen` endpoint choice, a
    /// chain per endpoint with the DNAT), replacing the table with one
    /// `nft -f` transaction as kube-proxy does. iptables' nat table is
    /// emptied first: one baseline at a time.
    fn program_nft(&self, n: usize) -> Ipv4Addr {
        let flush = self
            .node
            .command("iptables")
            .args(["-t", "nat", "-F"])
            .status()
            .expect("iptables -F");
        assert!(flush.success(), "iptables -t nat -F");
        // One statement per line: nft 1.0's parser wants a newline (or ';')
        // before each closing brace.
        let mut rules = String::from(
            "table ip kube-proxy\ndelete table ip kube-proxy\ntable ip kube-proxy {\n\
             chain mark-for-masquerade {\nmark set mark or 0x4000\n}\n\
             chain masquerading {\ntype nat hook postrouting priority srcnat; policy accept;\n\
             mark and 0x4000 == 0 return\nmark set mark xor 0x4000\nmasquerade fully-random\n}\n\
             chain nat-prerouting {\ntype nat hook prerouting priority dstnat; policy accept;\njump services\n}\n\
             chain nat-output {\ntype nat hook output priority -100; policy accept;\njump services\n}\n",
        );
        rules.push_str("map service-ips {\ntype ipv4_addr . inet_proto . inet_service : verdict\n");
        if n > 0 {
            rules.push_str("elements = {\n");
            for i in 0..n {
                rules.push_str(&format!("{} . tcp . 80 : goto service-{i},\n", Self::vip(i)));
            }
            rules.push_str("}\n");
        }
        rules.push_str("}\nchain services {\nip daddr . meta l4proto . th dport vmap @service-ips\n}\n");
        for i in 0..n {
            let vip = Self::vip(i);
            rules.push_str(&format!(
                "chain service-{i} {{\nip daddr {vip} tcp dport 80 ip saddr != 10.249.0.0/16 jump mark-for-masquerade\n\
                 numgen random mod 1 vmap {{ 0 : goto endpoint-{i} }}\n}}\n\
                 chain endpoint-{i} {{\nip saddr {IPT_SERVER} jump mark-for-masquerade\n\
                 meta l4proto tcp dnat to {IPT_SERVER}:80\n}}\n"
            ));
        }
        rules.push_str("}\n");
        let mut nft = self
            .node
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft (scripts/deps.sh installs nftables)");
        std::io::Write::write_all(nft.stdin.as_mut().expect("stdin"), rules.as_bytes()).expect("rules");
        assert!(nft.wait().expect("nft").success(), "nft -f failed");
        Self::vip(n / 2)
    }

    /// Removes the nftables layout (before the iptables one goes back in).
    fn clear_nft(&self) {
        let _ = self
            .node
            .command("nft")
            .args(["delete", "table", "ip", "kube-proxy"])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for IptablesSide {
    fn drop(&mut self) {
        let _ = self.server_proc.kill();
        let _ = self.server_proc.wait();
    }
}

pub fn run() {
    println!(
        "## Service connection setup: weir vs kube-proxy's iptables and nftables layouts (connect, read reply, close; {} s per point, one client)\n",
        LOOP_FOR.as_secs()
    );
    println!(
        "| services | weir conn/s | iptables conn/s | nftables conn/s | weir/iptables | weir/nftables | weir p50 / p99 | iptables p50 / p99 | nftables p50 / p99 | failed (weir/iptables/nftables) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut weir = WeirSide::up();
    let ipt = IptablesSide::up();
    let mut weir_rates = Vec::new();
    for n in TIERS {
        let wvip = weir.program(n);
        ipt.clear_nft();
        let ivip = ipt.program(n);
        let w = connect_loop(&weir.client.path(), wvip, 80);
        let i = connect_loop(&ipt.client.path(), ivip, 80);
        // The nftables layout on the same baseline node, iptables' gone.
        // Its VIP is the same as iptables': wait out the TIME_WAIT the
        // iptables loop left at the shared backend first (see below).
        std::thread::sleep(Duration::from_secs(61));
        let fvip = ipt.program_nft(n);
        let f = connect_loop(&ipt.client.path(), fvip, 80);
        println!(
            "| {n} | {:.0} | {:.0} | {:.0} | {:.2}x | {:.2}x | {:.0} / {:.0} µs | {:.0} / {:.0} µs | {:.0} / {:.0} µs | {} / {} / {} |",
            w.per_sec,
            i.per_sec,
            f.per_sec,
            w.per_sec / i.per_sec,
            w.per_sec / f.per_sec,
            w.p50_us,
            w.p99_us,
            i.p50_us,
            i.p99_us,
            f.p50_us,
            f.p99_us,
            w.failed,
            i.failed,
            f.failed
        );
        weir_rates.push(w.per_sec);
        // Between points, let the server's TIME_WAIT sockets (60 s) and
        // weir's closed conntrack entries (10 s, GC every 10 s) expire: the
        // next point measures another VIP, and a client port reused towards
        // it would otherwise meet the previous point's TIME_WAIT at the
        // shared backend. (iptables' conntrack would remap such a port;
        // weir's per-packet load balancer cannot see the backend's sockets:
        // see docs/benchmarks.md.)
        std::thread::sleep(Duration::from_secs(61));
    }
    println!(
        "\nweir at 10,000 services vs 1 service: {:+.1}% connection rate",
        (weir_rates[2] / weir_rates[0] - 1.0) * 100.0
    );
}

/// Connections from the node itself: to a ClusterIP through the socket
/// programs (the connect is pointed at the backend before a port is
/// chosen), to the backend's own address (no load balancing at all: the
/// floor), and from a pod to the same ClusterIP through the per-packet
/// path. Interleaved rounds, medians, at 1 and 10,000 services.
pub fn run_from_node() {
    const ROUNDS: usize = 5;
    println!(
        "## Services from the node: socket-level vs per-packet vs no load balancing ({ROUNDS} interleaved rounds of {} s, one client, medians)\n",
        LOOP_FOR.as_secs()
    );
    println!("| services | path | conn/s | p50 | p99 | failed (per round) |\n|---|---|---|---|---|---|");
    let mut weir = WeirSide::up();
    let node_ns = weir.node_netns();
    tune_client(&node_ns);
    let node = node_ns.path();
    let server = weir.server_ip();
    for n in [1, 10_000] {
        let vip = weir.program(n);
        let paths: [(&str, String, Ipv4Addr); 3] = [
            ("node → ClusterIP (socket)", node.clone(), vip),
            ("node → pod IP (none)", node.clone(), server),
            ("pod → ClusterIP (per packet)", weir.client.path(), vip),
        ];
        let mut got: Vec<Vec<Rate>> = paths.iter().map(|_| Vec::new()).collect();
        for round in 0..ROUNDS {
            let order: Vec<usize> = if round % 2 == 0 { vec![0, 1, 2] } else { vec![2, 1, 0] };
            for i in order {
                got[i].push(connect_loop(&paths[i].1, paths[i].2, 80));
            }
        }
        // The datapath's own account of what it dropped meanwhile.
        let status: serde_json::Value =
            serde_json::from_str(&lab(&weir.lab.lab_dir, &["status", "-o", "json"])).expect("status json");
        let drops: Vec<String> = status["nodes"][0]["status"]["drops"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(reason, t)| {
                let packets = t["packets"].as_u64().filter(|p| *p > 0)?;
                Some(format!("{reason} {packets}"))
            })
            .collect();
        eprintln!("{n} services: drops so far: {drops:?}");
        for ((label, _, _), rates) in paths.iter().zip(got) {
            let mut per_sec: Vec<f64> = rates.iter().map(|r| r.per_sec).collect();
            let mut p50: Vec<f64> = rates.iter().map(|r| r.p50_us).collect();
            let mut p99: Vec<f64> = rates.iter().map(|r| r.p99_us).collect();
            // Per round, in run order: where failures fall says what they are.
            let failed: Vec<String> = rates.iter().map(|r| r.failed.to_string()).collect();
            let failed = failed.join("+");
            println!(
                "| {n} | {label} | {:.0} | {:.0} µs | {:.0} µs | {failed} |",
                crate::median(&mut per_sec),
                crate::median(&mut p50),
                crate::median(&mut p99)
            );
        }
    }
    weir.round_trip_through_a_cluster_ip();
}
