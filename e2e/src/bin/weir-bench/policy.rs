//! `weir-bench --policy`: what network policy costs.
//!
//! - Pod-to-pod TCP throughput (iperf3), TCP ping-pong latency (sockperf)
//!   and new connections per second with 0, 100 and 10,000 rules selecting
//!   the destination pod, interleaved round by round. Half of the rules are
//!   identity and port rules, half CIDR rules, all of them programmed (a
//!   rule whose peer matches nothing would cost nothing and prove nothing).
//! - How long a policy change takes to reach the datapath with 1,000
//!   policies in place: the compiler and table write alone (in process, on
//!   the same objects), and end to end (the manifest written until a new
//!   connection gets through), which includes the standalone source's poll
//!   of the manifest directory (500 ms).
//! - Agent memory and policy-map memory with 10,000 rules.
use std::collections::BTreeMap;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use weir_e2e::{Node, Pod};

use super::{ROUNDS, iperf, median, rss_kib, sockperf};

const CRR_PORT: u16 = 9000;
const CRR_CONNECTIONS: usize = 500;

fn write(node: &Node, file: &str, text: &str) {
    std::fs::write(node.dir.join("manifests").join(file), text).expect("writing manifests");
}

/// Waits until the agent has applied the manifests as they are now
/// (services and policy both).
fn wait_applied(node: &Node) -> Duration {
    use weir_agent_api::revision::{manifest_files, revision};
    let dir = node.dir.join("manifests");
    let want = revision(&dir, &manifest_files(&dir));
    let t0 = Instant::now();
    loop {
        if let Ok(weir_agent_api::Response::Status(s)) = node.client().call(weir_agent_api::Request::Status)
            && s.policy_applied == Some(want)
            && s.services_applied == Some(want)
        {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "agent did not apply the manifests"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn base(client: &Pod, server: &Pod) -> String {
    let pod = |name: &str, ip: Ipv4Addr| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: bench, labels: {{app: {name}}}}}\nspec: {{containers: [{{name: c}}]}}\nstatus: {{podIP: {ip}}}\n---\n"
        )
    };
    let id = |n: u32, app: &str| {
        format!(
            "apiVersion: weir.dev/v1alpha1\nkind: WeirIdentity\nmetadata: {{name: \"{n}\"}}\nspec: {{namespace: bench, labels: {{app: {app}}}}}\n---\n"
        )
    };
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: bench}}\n---\n{}{}{}{}",
        pod("client", client.ip),
        pod("server", server.ip),
        id(256, "client"),
        id(257, "server")
    )
}

/// `n` ingress rules selecting the server, in policies of 100 rules: the
/// first allows the client on every port the benchmark uses, the others
/// alternate identity-and-port rules (client on 20000 + i) and CIDR rules
/// (10.i/8.i%256.0/24, every port).
fn rules(n: usize, extra_port: Option<u16>) -> String {
    let mut out = String::new();
    let mut i = 0;
    let mut policy = 0;
    while i < n {
        out.push_str(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{policy}, namespace: bench}}\nspec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n"
        ));
        for _ in 0..100.min(n - i) {
            if i == 0 {
                let extra = extra_port.map(|p| format!(", {{port: {p}}}")).unwrap_or_default();
                out.push_str(&format!("  - {{from: [{{podSelector: {{matchLabels: {{app: client}}}}}}], ports: [{{port: 5201}}, {{port: 11111}}, {{port: {CRR_PORT}}}{extra}]}}\n"));
            } else if i % 2 == 1 {
                out.push_str(&format!(
                    "  - {{from: [{{podSelector: {{matchLabels: {{app: client}}}}}}], ports: [{{port: {}}}]}}\n",
                    20000 + i
                ));
            } else {
                out.push_str(&format!(
                    "  - {{from: [{{ipBlock: {{cidr: 10.{}.{}.0/24}}}}]}}\n",
                    100 + i / 256,
                    i % 256
                ));
            }
            i += 1;
        }
        out.push_str("---\n");
        policy += 1;
    }
    out
}

/// 1,000 policies of one rule each (client on 30000 + i); `changed`
/// (index, port) also allows `port` in that policy.
fn thousand(changed: Option<(usize, u16)>) -> String {
    let mut out = String::new();
    for i in 0..1000 {
        let extra = match changed {
            Some((k, p)) if k == i => format!(", {{port: {p}}}"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: t{i}, namespace: bench}}\nspec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: client}}}}}}], ports: [{{port: {}}}{extra}]}}]\n---\n",
            30000 + i
        ));
    }
    out
}

/// A server in the pod's netns that accepts and closes, on `port`, until
/// the process ends.
fn acceptor(pod: &Pod, port: u16) {
    let path = pod.ns.path();
    std::thread::spawn(move || {
        weir_e2e::in_netns(path, move || {
            let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).expect("bind");
            for s in l.incoming().flatten() {
                drop(s);
            }
        })
    });
    std::thread::sleep(Duration::from_millis(100));
}

/// New TCP connections per second from `client` to `ip:port`: connect,
/// wait for the server's close, `CRR_CONNECTIONS` times.
fn crr(client: &Pod, ip: Ipv4Addr, port: u16) -> f64 {
    weir_e2e::in_netns(client.ns.path(), move || {
        let t0 = Instant::now();
        for _ in 0..CRR_CONNECTIONS {
            let mut s = TcpStream::connect_timeout(&SocketAddrV4::new(ip, port).into(), Duration::from_secs(2))
                .expect("connect");
            let _ = s.read(&mut [0u8; 1]);
        }
        CRR_CONNECTIONS as f64 / t0.elapsed().as_secs_f64()
    })
}

/// Does a new connection get through now (200 ms)?
fn connects(client: &Pod, ip: Ipv4Addr, port: u16) -> bool {
    weir_e2e::in_netns(client.ns.path(), move || {
        TcpStream::connect_timeout(&SocketAddrV4::new(ip, port).into(), Duration::from_millis(200)).is_ok()
    })
}

/// Bytes the kernel accounts to a pinned map (fdinfo's memlock).
fn map_bytes(pin: &std::path::Path) -> u64 {
    use std::os::fd::{AsFd, AsRawFd};
    let Ok(data) = aya::maps::MapData::from_pin(pin) else {
        return 0;
    };
    let fd = data.fd().as_fd().as_raw_fd();
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("memlock:").map(|v| v.trim().parse().unwrap_or(0)))
        })
        .unwrap_or(0)
}

fn policy_entries(node: &Node) -> usize {
    weir_datapath::policy::PolicyMaps::open(&node.bpffs).map_or(0, |m| m.len())
}

pub fn run() {
    let node = Node::start("10.71.0.0/24");
    let pid = node.agent_pid().expect("agent");
    let client = node.add_pod("bench", "client");
    let server = node.add_pod("bench", "server");
    write(&node, "base.yaml", &base(&client, &server));
    write(&node, "rules.yaml", "");
    wait_applied(&node);
    acceptor(&server, CRR_PORT);
    let ip = server.ip;
    let ip_s = ip.to_string();

    // --- datapath cost by rule count, interleaved ------------------------
    let counts = [0usize, 100, 10_000];
    let mut tput: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut rtt: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut conns: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut entries: BTreeMap<usize, usize> = BTreeMap::new();
    let mut rss: BTreeMap<usize, u64> = BTreeMap::new();
    for round in 0..ROUNDS {
        for &n in &counts {
            write(&node, "rules.yaml", &rules(n, None));
            wait_applied(&node);
            assert!(connects(&client, ip, CRR_PORT), "{n} rules: the client is allowed");
            if n > 0 {
                assert!(
                    !connects(&client, ip, 20000),
                    "{n} rules: what no rule allows is denied"
                );
            }
            tput.entry(n).or_default().push(iperf(&server.ns, &client.ns, &ip_s));
            rtt.entry(n)
                .or_default()
                .push(sockperf(&server.ns, &client.ns, &ip_s, true));
            conns.entry(n).or_default().push(crr(&client, ip, CRR_PORT));
            if round == 0 {
                entries.insert(n, policy_entries(&node));
                rss.insert(n, rss_kib(pid));
            }
        }
    }
    let base_t = median(&mut tput[&0].clone());
    let base_r = median(&mut rtt[&0].clone());
    let base_c = median(&mut conns[&0].clone());
    println!("## Network policy: rules selecting the destination pod ({ROUNDS} interleaved rounds, medians)\n");
    println!(
        "| rules | policy map entries | TCP throughput (iperf3) | vs 0 | TCP ping-pong RTT (sockperf p50) | vs 0 | new connections/s ({CRR_CONNECTIONS} per run) | vs 0 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for n in counts {
        let (t, r, c) = (
            median(&mut tput[&n].clone()),
            median(&mut rtt[&n].clone()),
            median(&mut conns[&n].clone()),
        );
        println!(
            "| {n} | {} | {t:.2} Gbit/s | {:.1}% | {r:.1} µs | {:.2}x | {c:.0} | {:.1}% |",
            entries[&n],
            t / base_t * 100.0,
            r / base_r,
            c / base_c * 100.0
        );
    }

    // --- memory with 10,000 rules ---------------------------------------
    write(&node, "rules.yaml", &rules(10_000, None));
    wait_applied(&node);
    std::thread::sleep(Duration::from_millis(500));
    let (rss_rules, n_entries) = (rss_kib(pid), policy_entries(&node));
    let table = map_bytes(&node.bpffs.join(weir_datapath::policy::MAP));
    let cidrs = map_bytes(&node.bpffs.join(weir_datapath::policy::CIDR_MAP));
    write(&node, "rules.yaml", "");
    wait_applied(&node);
    println!("\n## Memory with 10,000 rules\n");
    println!("| measure | value |\n|---|---|");
    println!(
        "| agent RSS, no policy (first round) | {:.1} MiB |",
        rss[&0] as f64 / 1024.0
    );
    println!("| agent RSS, 10,000 rules | {:.1} MiB |", rss_rules as f64 / 1024.0);
    println!("| weir_policy entries | {n_entries} |");
    println!(
        "| weir_policy memory (kernel's memlock) | {:.1} MiB |",
        table as f64 / 1048576.0
    );
    println!(
        "| weir_policy_cidr memory (5,000 CIDRs) | {:.1} MiB |",
        cidrs as f64 / 1048576.0
    );

    // --- a change with 1,000 policies in place --------------------------
    write(&node, "rules.yaml", &thousand(None));
    let first = wait_applied(&node);
    let mut state = weir_model::ClusterState::default();
    let text = format!("{}{}", base(&client, &server), thousand(None));
    let errors = weir_model::parse_manifests(&mut state, &text);
    assert!(errors.is_empty(), "{errors:?}");
    state.revision = Some(1);
    let eps = vec![weir_model::policy::LocalEndpoint {
        endpoint_id: 2,
        pod: weir_model::state::ObjectKey::new("bench", "server"),
    }];
    let mut numbers = weir_model::policy::Numbers::default();
    let mut compile = Vec::new();
    for _ in 0..20 {
        let t0 = Instant::now();
        let c = weir_model::policy::compile(&state, &eps, &mut numbers);
        compile.push(t0.elapsed().as_secs_f64() * 1e3);
        assert!(!c.slots.is_empty());
    }
    let mut e2e = Vec::new();
    for k in 0..5 {
        let port = 40000 + k as u16;
        acceptor(&server, port);
        assert!(!connects(&client, ip, port), "port {port} not allowed yet");
        write(&node, "rules.yaml", &thousand(Some((500 + k, port))));
        let t0 = Instant::now();
        while !connects(&client, ip, port) {
            assert!(t0.elapsed() < Duration::from_secs(10), "change not enforced in 10 s");
        }
        e2e.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    println!("\n## A policy change with 1,000 policies in place\n");
    println!("| measure | value |\n|---|---|");
    println!(
        "| compile 1,000 policies for the endpoint (in process, p50 of 20) | {:.1} ms |",
        median(&mut compile)
    );
    println!(
        "| manifest written until a new connection is allowed (p50 of 5, includes the 500 ms directory poll) | {:.0} ms |",
        median(&mut e2e)
    );
    println!(
        "| first load of the 1,000 policies (written until applied) | {:.0} ms |",
        first.as_secs_f64() * 1e3
    );
}
