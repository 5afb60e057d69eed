//! `weir-bench --ui`: the service map page in headless Chromium (Debian's,
//! over WebDriver), drawing a map of 200 workloads in 10 namespaces and
//! 2,000 edges (a tenth with drops), timed by the browser itself
//! (`performance.now()` from receiving the map to the second animation
//! frame after it, so layout and paint are in). The page is the relay's,
//! served by `weir_relay::ui` in this process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use weir_test_support::browser::Browser;

/// A map as the relay sends it, made in the page (the same JSON shape).
const MAKE_AND_DRAW: &str = r#"
const [workloads, edges, done] = arguments;
// The relay's own (empty) maps must not replace this one mid-measure.
maps.close();
const nodes = [];
for (let i = 0; i < workloads; i++) {
  const ns = `ns-${i % 10}`, name = `app-${i}`;
  nodes.push({id: `${ns}/${name}`, kind: "workload", namespace: ns, name, select: [["namespace", ns], ["workload", name]]});
}
const list = [];
// Each workload calls the next edges/workloads ones along (distinct pairs,
// across namespaces).
for (let k = 0; k < edges; k++) {
  const a = k % workloads, b = (a + 1 + Math.floor(k / workloads) * 7) % workloads;
  const id = `${nodes[a].id}>${nodes[b].id}`;
  const denied = list.length % 10 === 0;
  list.push({id, from: nodes[a].id, to: nodes[b].id, ports: ["8080/TCP"], services: [], flows: 100,
    connections: 10, answered: denied ? 0 : 10, connections_per_s: 1.5, bytes_per_s: 12000, reply_bytes_per_s: 48000,
    bytes: 1000, reply_bytes: 4000, handshake_p50_ms: 0.2, handshake_p99_ms: 1.1, forwarded: denied ? 0 : 100,
    dropped: denied ? 5 : 0, drops_per_s: denied ? 0.5 : 0, drops: denied ? {policy_denied: 5} : {},
    denied_by: denied ? ["NetworkPolicy ns-0/deny-all"] : [], audited: 0, audited_by: [], last_seen: 0});
}
const map = {at: Math.floor(Date.now() / 1000), nodes, edges: list, namespaces: [...new Set(nodes.map((n) => n.namespace))], flows_seen: 0, evicted: 0};
const raw = JSON.stringify(map);
const t0 = performance.now();
receive(JSON.parse(raw), raw);
document.body.getBoundingClientRect();
requestAnimationFrame(() => requestAnimationFrame(() => done({
  ms: performance.now() - t0,
  edges: document.querySelectorAll("g.edge").length,
  nodes: document.querySelectorAll("g.node").length,
})));
"#;

pub fn run() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let addr = rt.block_on(async {
        let relay = weir_relay::Relay::new(Vec::new(), weir_relay::Limits::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(weir_relay::ui::serve(
            listener,
            weir_relay::ui::router(relay, weir_relay::ui::UiLimits::default(), None),
        ));
        addr
    });
    let Some(b) = Browser::start(1600, 1000) else {
        panic!("weir-bench --ui needs chromium and chromium-driver (scripts/deps.sh)");
    };
    b.goto(&format!("http://{addr}/"));
    std::thread::sleep(Duration::from_millis(500));
    println!("## The service map in headless Chromium\n");
    println!("| map | rounds | median draw (browser's own timing) | slowest |\n|---|---|---|---|");
    for (workloads, edges) in [(20, 50), (200, 2000)] {
        let mut ms = Vec::new();
        for _ in 0..5 {
            let r = b.eval_async(MAKE_AND_DRAW, json!([workloads, edges]));
            assert_eq!(r["nodes"].as_u64(), Some(workloads), "{r}");
            assert!(r["edges"].as_u64() >= Some(edges), "{r}");
            ms.push(r["ms"].as_f64().expect("ms"));
            // A different map each round would re-lay it out anyway; a
            // new page keeps rounds alike.
            b.goto(&format!("http://{addr}/"));
            std::thread::sleep(Duration::from_millis(300));
        }
        let slowest = ms.iter().copied().fold(0.0, f64::max);
        println!(
            "| {workloads} workloads, {edges} edges | 5 | {:.0} ms | {slowest:.0} ms |",
            crate::median(&mut ms)
        );
    }
    println!();
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = &s[s.rfind(')').map_or(0, |i| i + 2)..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// The real `weir-relay` following one agent at 1,000 flows/s, its CPU
/// with no page open and with 20 pages' map streams open, in alternating
/// rounds of 10 s.
pub fn streams() {
    use std::io::{Read, Write};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = std::env::temp_dir().join(format!("weir-bench-ui-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let agent = dir.join("agent.sock");
    rt.block_on(async {
        let listener = tokio::net::UnixListener::bind(&agent).expect("bind agent");
        tokio::spawn(weir_proto::server::serve(
            listener,
            None,
            weir_proto::observer::observer_server::ObserverServer::new(crate::agents::BenchAgent::Ticker),
        ));
    });
    let addr_file = dir.join("ui.addr");
    let mut relay = std::process::Command::new(weir_test_support::bin("weir-relay"))
        .arg("--peer")
        .arg(format!("node0=unix://{}", agent.display()))
        .arg("--socket")
        .arg(dir.join("relay.sock"))
        .args(["--ui-listen", "127.0.0.1:0", "--ui-address-file"])
        .arg(&addr_file)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("weir-relay");
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr = loop {
        if let Ok(a) = std::fs::read_to_string(&addr_file) {
            break a.trim().to_owned();
        }
        assert!(Instant::now() < deadline, "weir-relay did not serve its UI");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Warm up: the map holds every workload pair before measuring.
    std::thread::sleep(Duration::from_secs(5));
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let measure = |pages: usize| -> (f64, u64) {
        let stop = Arc::new(AtomicBool::new(false));
        let got = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..pages)
            .map(|_| {
                let (addr, stop, got) = (addr.clone(), stop.clone(), got.clone());
                std::thread::spawn(move || {
                    let mut s = std::net::TcpStream::connect(&addr).expect("connect");
                    s.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
                    s.write_all(b"GET /api/map/events HTTP/1.1\r\nHost: x\r\n\r\n")
                        .expect("GET");
                    let mut buf = vec![0u8; 1 << 16];
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok(n) = s.read(&mut buf) {
                            got.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(1));
        let (t0, c0) = (Instant::now(), cpu_ticks(relay.id()));
        std::thread::sleep(Duration::from_secs(10));
        let cpu = (cpu_ticks(relay.id()) - c0) as f64 / hz / t0.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            let _ = r.join();
        }
        (cpu, got.load(Ordering::Relaxed))
    };
    let (mut idle, mut busy) = (Vec::new(), Vec::new());
    let mut sent = 0;
    for round in 0..6 {
        match round % 2 {
            0 => idle.push(measure(0).0),
            _ => {
                let (cpu, bytes) = measure(20);
                busy.push(cpu);
                sent = bytes;
            }
        }
    }
    let _ = relay.kill();
    let _ = relay.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let (i, b) = (crate::median(&mut idle), crate::median(&mut busy));
    println!("## The relay's map stream: 1,000 flows/s, 200 workloads, 2,000 edges\n");
    println!("| pages open | rounds | relay CPU (median of 10 s rounds) |\n|---|---|---|");
    println!("| 0 | 3 | {:.1} % of a core |", i * 100.0);
    println!("| 20 | 3 | {:.1} % of a core |", b * 100.0);
    println!(
        "\n20 pages cost {:.1} % of a core over none; they received {:.1} MB in a 10 s round ({:.0} kB/s each).\n",
        (b - i) * 100.0,
        sent as f64 / 1e6,
        sent as f64 / 10.0 / 20.0 / 1e3
    );
}
