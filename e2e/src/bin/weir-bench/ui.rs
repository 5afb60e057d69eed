//! `weir-bench --ui`: the service map page in headless Chromium (Debian's,
//! over WebDriver), drawing a map of 200 workloads in 10 namespaces and
//! 2,000 edges (a tenth with drops), timed by the browser itself
//! (`performance.now()` from receiving the map to the second animation
//! frame after it, so layout and paint are in). The page is the relay's,
//! served by `weir_relay::ui` in this process.

use std::time::Duration;

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
            weir_relay::ui::router(relay, weir_relay::ui::UiLimits::default()),
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
