//! `weir-bench --flows`: the flow pipeline and what recording costs.
//!
//! - Ring buffer to flow store, on one core: a producer thread makes the
//!   real datapath write events (BPF_PROG_TEST_RUN of `from_pod` on a
//!   spoofed frame, repeated in the kernel: every run is a drop event),
//!   and one consumer thread runs the agent's own pipeline (decode, name,
//!   store). Saturated: the consumer's rate. Paced at 10k, 100k and 200k
//!   events/s: lost events and the consumer thread's CPU.
//! - The flow store to a GetFlows client over a real Unix-socket gRPC
//!   connection, and the relay merging four such servers.
//! - Pod-to-pod latency and throughput with recording on vs off (two
//!   agents side by side, alternating rounds, medians).
//! - Agent RSS with flow rings of 4,095 and 65,535, full, and 1,000
//!   endpoints.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aya::programs::{TestRun, TestRunOptions};
use weir_datapath::abi::EpInfo;
use weir_datapath::{Datapath, LoadOptions, ProgramKind};
use weir_flows::enrich::Clock;
use weir_flows::store::FlowStore;
use weir_flows::{FlowStats, Pipeline};
use weir_test_support::packet::{Flow, UDP};

/// A datapath loaded in a pin dir of its own, removed on drop.
struct Loaded {
    dp: Datapath,
    dir: std::path::PathBuf,
}

impl Drop for Loaded {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn load() -> Loaded {
    let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/weir-test/bench-flows-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    weir_datapath::ensure_bpffs(std::path::Path::new("/sys/fs/bpf")).expect("bpffs");
    // Every event is a drop of one endpoint: the per-endpoint rate on drop
    // events would measure itself, not the pipeline.
    let options = LoadOptions {
        unlimited_drop_events: true,
        ..Default::default()
    };
    let dp = Datapath::load_with(&dir, &options).expect("loading the datapath");
    let mut l = Loaded { dp, dir };
    // A pod on lo (the test-run device); frames claiming another pod's
    // address from it are dropped as spoofed: one drop event per run.
    let mac = [2, 0, 0, 0, 0, 1];
    for (ip, id) in [(Ipv4Addr::new(10, 244, 1, 2), 1), (Ipv4Addr::new(10, 244, 1, 3), 2)] {
        let info = EpInfo {
            ifindex: if id == 1 { 1 } else { 4242 },
            endpoint_id: id,
            identity: 300,
            pod_mac: mac,
            host_mac: mac,
            flags: 0,
        };
        l.dp.upsert_endpoint(ip.into(), info).expect("endpoint");
    }
    l
}

fn spoofed() -> Vec<u8> {
    Flow {
        src: Ipv4Addr::new(10, 244, 1, 3),
        sport: 1234,
        dst: Ipv4Addr::new(10, 244, 1, 2),
        dport: 53,
        proto: UDP,
    }
    .packet(0)
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).expect("thread cpu clock");
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

struct Consumed {
    events: u64,
    cpu: Duration,
    wall: Duration,
}

/// Runs the agent's pipeline on the ring until `stop`; what it did.
fn consume(
    mut source: weir_datapath::events::EventSource,
    store: Arc<FlowStore>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(weir_datapath::events::EventSource, Consumed)> {
    std::thread::spawn(move || {
        let stats = Arc::new(FlowStats::default());
        let mut pipeline = Pipeline::new("bench".into(), Duration::from_secs(120), stats.clone(), None);
        pipeline.update_names(&Default::default());
        let (cpu0, t0) = (thread_cpu(), Instant::now());
        // The agent's reader loop: wait in poll(2), then drain.
        while !stop.load(Ordering::Relaxed) {
            {
                use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
                use std::os::fd::AsFd;
                let mut fds = [PollFd::new(source.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, PollTimeout::from(100u16));
            }
            weir_flows::pipeline::drain(&mut source, &mut pipeline, &store, Clock::now());
        }
        weir_flows::pipeline::drain(&mut source, &mut pipeline, &store, Clock::now());
        let c = Consumed {
            events: stats.events.load(Ordering::Relaxed),
            cpu: thread_cpu() - cpu0,
            wall: t0.elapsed(),
        };
        (source, c)
    })
}

/// Makes the datapath write `n` events (BPF_PROG_TEST_RUN repeats).
fn produce(l: &Loaded, frame: &[u8], n: u32) {
    let mut out = vec![0u8; frame.len() + 64];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(&mut out);
    opts.repeat = n;
    l.dp.program(ProgramKind::FromPod)
        .test_run(opts)
        .expect("BPF_PROG_TEST_RUN");
}

fn ring_to_store() {
    let mut l = load();
    let frame = spoofed();
    println!("## Flow pipeline: ring buffer to flow store (one consumer thread, release build)\n");
    println!(
        "| load | events made | stored | lost in the ring | consumer rate | consumer CPU |\n|---|---|---|---|---|---|"
    );
    let mut source = Some(l.dp.take_events().expect("events"));
    // Saturated, then paced.
    for rate in [None, Some(10_000u64), Some(100_000), Some(200_000)] {
        let store = Arc::new(FlowStore::new(4095));
        let stop = Arc::new(AtomicBool::new(false));
        let lost0 = source.as_ref().expect("source").lost().unwrap_or(0);
        let consumer = consume(source.take().expect("source"), store.clone(), stop.clone());
        let secs = 3u64;
        let made = AtomicU64::new(0);
        let t0 = Instant::now();
        match rate {
            None => {
                while t0.elapsed() < Duration::from_secs(secs) {
                    produce(&l, &frame, 20_000);
                    made.fetch_add(20_000, Ordering::Relaxed);
                }
            }
            Some(r) => {
                // Batches every millisecond.
                let per_ms = (r / 1000).max(1) as u32;
                let mut next = Instant::now();
                while t0.elapsed() < Duration::from_secs(secs) {
                    produce(&l, &frame, per_ms);
                    made.fetch_add(u64::from(per_ms), Ordering::Relaxed);
                    next += Duration::from_millis(1);
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        let (s, c) = consumer.join().expect("consumer");
        let lost = s.lost().unwrap_or(0) - lost0;
        source = Some(s);
        let made = made.load(Ordering::Relaxed);
        let label = rate.map_or("saturated (producer as fast as it can)".to_owned(), |r| {
            format!("{} k/s", r / 1000)
        });
        let active = if rate.is_none() {
            c.wall.as_secs_f64() - 0.2
        } else {
            c.wall.as_secs_f64()
        };
        println!(
            "| {label} | {made} | {} | {lost} | {:.0} k/s | {:.0} % of a core |",
            c.events,
            c.events as f64 / active / 1e3,
            100.0 * c.cpu.as_secs_f64() / c.wall.as_secs_f64()
        );
    }
    println!();
}

/// A store of `n` flows made by the pipeline from synthetic records.
fn filled_store(n: usize, node: &str) -> Arc<FlowStore> {
    let store = Arc::new(FlowStore::new(n));
    let stats = Arc::new(FlowStats::default());
    let mut p = Pipeline::new(node.into(), Duration::from_secs(120), stats, None);
    p.update_names(&Default::default());
    feed(&mut p, n, &store);
    store
}

/// `n` synthetic connection-start records through the pipeline.
fn feed(p: &mut Pipeline, n: usize, store: &FlowStore) {
    let clock = Clock::now();
    for i in 0..n {
        let raw = weir_datapath::abi::RawEvent {
            version: weir_datapath::abi::EVENT_VERSION,
            kind: 1,
            size: size_of::<weir_datapath::abi::RawEvent>() as u16,
            ts_ns: 1_000_000 + i as u64 * 1000,
            tuple: weir_datapath::abi::CtKey {
                saddr: u32::from_ne_bytes([10, 244, 1, 2]),
                daddr: u32::from_ne_bytes([10, 244, 2, 3]),
                sport: ((i % 60000) as u16 + 1024).to_be(),
                dport: 80u16.to_be(),
                proto: 6,
                pad: [0; 3],
            },
            ..Default::default()
        };
        p.process(raw.as_bytes(), clock, Instant::now(), store);
    }
    p.flush(store);
}

/// What the flow metrics cost the reader per event: the pipeline with no
/// metrics, with the agent's default (`flow`, read from the event), and
/// with the chart's default Hubble metrics (contexts: the flow is built
/// for them), in alternating rounds; thread CPU per event, medians.
pub fn metrics_cost() {
    const EVENTS: usize = 200_000;
    const ROUNDS: usize = 5;
    let chart = "flow:sourceContext=namespace|reserved-identity;destinationContext=namespace|reserved-identity \
                 drop:sourceContext=namespace|reserved-identity;destinationContext=namespace|reserved-identity \
                 port-distribution flows-to-world:sourceContext=namespace";
    let filtered = "flow:sourceContext=namespace;destinationContext=namespace";
    let excluding = "metrics:\n- name: flow\n  contextOptions: [{name: sourceContext, values: [namespace]}]\n  \
                     excludeFilters: [{source_pod: [kube-system/]}]\n";
    let configs: [(&str, Option<&str>); 5] = [
        ("no metrics", None),
        ("default (flow, no context)", Some("flow")),
        ("chart default (4 metrics, namespace context)", Some(chart)),
        ("flow, namespace context", Some(filtered)),
        ("flow, namespace context, kube-system excluded", Some(excluding)),
    ];
    let mut per_event: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    for _ in 0..ROUNDS {
        for (i, (_, flag)) in configs.iter().enumerate() {
            let metrics = flag.map(|f| {
                let specs = match f.starts_with("metrics:") {
                    true => weir_agent::metrics::context::parse_file(f),
                    false => weir_agent::metrics::context::parse_flag(f),
                }
                .expect("metrics configuration");
                Arc::new(weir_agent::metrics::Metrics::with_flow_metrics(true, specs))
                    as Arc<dyn weir_flows::FlowMetrics>
            });
            let store = FlowStore::new(4096);
            let mut p = Pipeline::new(
                "bench".into(),
                Duration::from_secs(120),
                Arc::new(FlowStats::default()),
                metrics,
            );
            p.update_names(&Default::default());
            let cpu0 = thread_cpu();
            feed(&mut p, EVENTS, &store);
            per_event[i].push((thread_cpu() - cpu0).as_nanos() as f64 / EVENTS as f64);
        }
    }
    println!("flow metrics: reader CPU per event, {ROUNDS} alternating rounds of {EVENTS} events, median");
    let base = crate::median(&mut per_event[0].clone());
    for ((name, _), v) in configs.iter().zip(per_event.iter_mut()) {
        let m = crate::median(v);
        println!("  {name:<46} {m:>7.0} ns/event ({:.2}x)", m / base);
    }
}

async fn serve_store(store: Arc<FlowStore>, node: &str, sock: &std::path::Path) -> tokio::task::JoinHandle<()> {
    let _ = std::fs::remove_file(sock);
    let listener = tokio::net::UnixListener::bind(sock).expect("bind");
    let svc = weir_flows::server::ObserverService {
        store,
        stats: Arc::new(FlowStats::default()),
        node: node.into(),
        address: sock.display().to_string(),
        started: Instant::now(),
        streams: Default::default(),
    };
    tokio::spawn(weir_flows::server::serve(listener, None, svc))
}

/// The stock hubble CLI's field mask for its compact, dict and table
/// output (hubble/pkg/defaults, Cilium v1.20).
const HUBBLE_DEFAULT_MASK: &[&str] = &[
    "time",
    "verdict",
    "ethernet",
    "IP",
    "l4",
    "source.identity",
    "source.namespace",
    "source.pod_name",
    "destination.identity",
    "destination.namespace",
    "destination.pod_name",
    "Type",
    "node_name",
    "l7",
    "event_type",
    "source_service",
    "destination_service",
    "is_reply",
    "Summary",
    "ip_trace_id",
    "traffic_direction",
    "policy_match_type",
    "ingress_allowed_by",
    "ingress_denied_by",
    "egress_allowed_by",
    "egress_denied_by",
];

async fn drain_flows(server: &str, number: u64) -> u64 {
    drain_masked(server, number, None).await.0
}

/// Flows read, and the bytes of their responses as encoded on the wire.
async fn drain_masked(server: &str, number: u64, mask: Option<&[&str]>) -> (u64, u64) {
    use tokio_stream::StreamExt;
    let ch = weir_proto::client::connect(
        &weir_proto::client::Server::parse(server).expect("addr"),
        Duration::from_secs(5),
    )
    .await
    .expect("connect");
    let mut s = weir_proto::observer::observer_client::ObserverClient::new(ch)
        .max_decoding_message_size(4 << 20)
        .get_flows(weir_proto::observer::GetFlowsRequest {
            number,
            field_mask: mask.map(|m| prost_types::FieldMask {
                paths: m.iter().map(|p| p.to_string()).collect(),
            }),
            ..Default::default()
        })
        .await
        .expect("GetFlows")
        .into_inner();
    let (mut n, mut bytes) = (0, 0);
    while let Some(r) = s.next().await {
        let r = r.expect("response");
        bytes += prost::Message::encoded_len(&r) as u64;
        if matches!(
            r.response_types,
            Some(weir_proto::observer::get_flows_response::ResponseTypes::Flow(_))
        ) {
            n += 1;
        }
    }
    (n, bytes)
}

fn grpc_clients() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = std::env::temp_dir().join(format!("weir-bench-flows-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    const N: usize = 65_535;
    rt.block_on(async {
        println!("## Flows to clients over gRPC (Unix sockets, one process, 2 cores)\n");
        println!("| path | flows per round | rounds | median rate |\n|---|---|---|---|");
        // The agent's server (each flow encoded once, the bytes shared)
        // and the copy-per-read baseline over the same store, in
        // alternating rounds.
        let store = filled_store(N, "node0");
        let one = dir.join("agent0.sock");
        let _s = serve_store(store.clone(), "node0", &one).await;
        let base = dir.join("baseline.sock");
        let _ = std::fs::remove_file(&base);
        let listener = tokio::net::UnixListener::bind(&base).expect("bind baseline");
        let baseline = weir_proto::observer::observer_server::ObserverServer::new(crate::agents::BenchAgent::CopyPerRead {
            store,
            node: "node0".into(),
        });
        let _b = tokio::spawn(weir_proto::server::serve(listener, None, baseline));
        let (mut shared, mut copied) = (Vec::new(), Vec::new());
        for round in 0..10 {
            let (sock, rates) = match round % 2 {
                0 => (&one, &mut shared),
                _ => (&base, &mut copied),
            };
            let t0 = Instant::now();
            let n = drain_flows(&format!("unix://{}", sock.display()), N as u64).await;
            assert_eq!(n, N as u64);
            rates.push(n as f64 / t0.elapsed().as_secs_f64());
        }
        // With the stock hubble CLI's field mask (what `hubble observe`
        // sends for compact output): the bytes on the wire and the rate.
        let mut masked = Vec::new();
        let (mut whole_bytes, mut masked_bytes) = (0, 0);
        for round in 0..6 {
            let mask = (round % 2 == 1).then_some(HUBBLE_DEFAULT_MASK);
            let t0 = Instant::now();
            let (n, bytes) = drain_masked(&format!("unix://{}", one.display()), N as u64, mask).await;
            assert_eq!(n, N as u64);
            match mask {
                Some(_) => {
                    masked.push(n as f64 / t0.elapsed().as_secs_f64());
                    masked_bytes = bytes / n;
                }
                None => whole_bytes = bytes / n,
            }
        }
        let (s, c) = (crate::median(&mut shared), crate::median(&mut copied));
        println!(
            "| agent store → GetFlows client (encoded once, shared) | {N} | 5 | {:.0} k/s |",
            s / 1e3
        );
        println!(
            "| the same, copied and encoded per read (before) | {N} | 5 | {:.0} k/s ({:.2}x) |",
            c / 1e3,
            s / c
        );
        println!(
            "| the same, with hubble's default field mask (masked on the server) | {N} | 3 | {:.0} k/s |",
            crate::median(&mut masked) / 1e3
        );
        println!(
            "\nBytes per flow on the wire: {whole_bytes} whole, {masked_bytes} with hubble's default field mask ({:.0} %).\n",
            masked_bytes as f64 * 100.0 / whole_bytes as f64
        );

        // Four agents behind the relay.
        let mut peers = Vec::new();
        let mut servers = Vec::new();
        for i in 1..=4 {
            let sock = dir.join(format!("agent{i}.sock"));
            servers.push(serve_store(filled_store(N / 4, &format!("node{i}")), &format!("node{i}"), &sock).await);
            peers.push((format!("node{i}"), weir_proto::client::Server::Unix(sock)));
        }
        let relay = weir_relay::Relay::new(peers, weir_relay::Limits::default());
        relay.spawn_health();
        let rsock = dir.join("relay.sock");
        let listener = tokio::net::UnixListener::bind(&rsock).expect("bind relay");
        let _r = tokio::spawn(weir_proto::server::serve(listener, None, relay.into_server()));
        // Until every peer is connected.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut rates = Vec::new();
        for _ in 0..5 {
            let t0 = Instant::now();
            let n = drain_flows(&format!("unix://{}", rsock.display()), N as u64).await;
            rates.push(n as f64 / t0.elapsed().as_secs_f64());
            assert!(n >= (N / 4 * 4) as u64 - 4, "relay delivered {n}");
        }
        println!(
            "| four agents → relay merge → client | {} | 5 | {:.0} k/s |\n",
            N / 4 * 4,
            crate::median(&mut rates) / 1e3
        );
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Only the gRPC rates (`--flows-grpc`).
pub fn grpc_only() {
    grpc_clients();
}

pub fn pipeline_only() {
    ring_to_store();
    grpc_clients();
    memory();
}

pub fn memory_only() {
    memory();
}

pub fn run() {
    ring_to_store();
    grpc_clients();
    recording_cost();
    memory();
}

/// Pod to pod with recording on vs off: two agents side by side (one with
/// --flow-events=false), alternating rounds.
pub fn recording_cost() {
    use crate::{ROUNDS, iperf, median, sockperf};
    let on = weir_e2e::Node::start_with("10.71.0.0/24", &[]);
    let off = weir_e2e::Node::start_with("10.72.0.0/24", &["--flow-events=false"]);
    let (a_on, b_on) = (on.add_pod("bench", "client"), on.add_pod("bench", "server"));
    let (a_off, b_off) = (off.add_pod("bench", "client"), off.add_pod("bench", "server"));
    let (ip_on, ip_off) = (b_on.ip.to_string(), b_off.ip.to_string());
    let (mut t1, mut t0, mut u1, mut u0, mut c1, mut c0) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        t1.push(iperf(&b_on.ns, &a_on.ns, &ip_on));
        t0.push(iperf(&b_off.ns, &a_off.ns, &ip_off));
        u1.push(sockperf(&b_on.ns, &a_on.ns, &ip_on, false));
        u0.push(sockperf(&b_off.ns, &a_off.ns, &ip_off, false));
        c1.push(sockperf(&b_on.ns, &a_on.ns, &ip_on, true));
        c0.push(sockperf(&b_off.ns, &a_off.ns, &ip_off, true));
    }
    let (t1, t0, u1, u0, c1, c0) = (
        median(&mut t1),
        median(&mut t0),
        median(&mut u1),
        median(&mut u0),
        median(&mut c1),
        median(&mut c0),
    );
    println!("## Recording on vs off, pod to pod on one node ({ROUNDS} alternating rounds, medians)\n");
    println!("| measure | recording on | recording off | on/off |\n|---|---|---|---|");
    println!(
        "| TCP throughput (iperf3, 1 stream) | {t1:.2} Gbit/s | {t0:.2} Gbit/s | {:.1}% |",
        t1 / t0 * 100.0
    );
    println!(
        "| UDP ping-pong RTT (sockperf p50) | {u1:.1} µs | {u0:.1} µs | {:.3}x |",
        u1 / u0
    );
    println!(
        "| TCP ping-pong RTT (sockperf p50) | {c1:.1} µs | {c0:.1} µs | {:.3}x |\n",
        c1 / c0
    );
}

/// Agent RSS with a full flow ring of each size and 1,000 endpoints; the
/// ring is filled by tracing one pod and sending it datagrams (every
/// packet is a flow).
fn memory() {
    println!("## Agent memory with full flow rings and 1,000 endpoints (RSS)\n");
    println!(
        "| flow ring | endpoints | flows stored | agent RSS | after a client read them all |\n|---|---|---|---|---|"
    );
    for ring in [4095usize, 65535] {
        let flag = format!("--flow-buffer={ring}");
        let node = weir_e2e::Node::start_with("10.73.0.0/20", &[&flag]);
        let pid = node.agent_pid().expect("agent");
        let client = node.add_pod("bench", "client");
        let server = node.add_pod("bench", "server");
        let mut pods = Vec::new();
        for i in 0..998 {
            let mut pod = weir_e2e::Pod::new("bench", &format!("p{i}"));
            let out = node.cni("ADD", &pod.spec, &node.netconf("1.1.0"));
            assert!(out.ok(), "{out:?}");
            pod.ip = out.ip().expect("ip");
            pods.push(pod);
        }
        node.client()
            .call(weir_agent_api::Request::EndpointTrace {
                pod: weir_agent_api::PodRef {
                    namespace: "bench".into(),
                    name: "client".into(),
                    uid: String::new(),
                },
                enabled: true,
            })
            .expect("trace on");
        // Datagrams until the ring is full (each is two trace events: out
        // of the client, into the server).
        let n = (ring * 2 / 3 + 1000).to_string();
        let ip = server.ip.to_string();
        let _ = client.ns.exec("ping", &["-q", "-c", &n, "-i", "0", "-W", "1", &ip]);
        std::thread::sleep(Duration::from_millis(500));
        let stored = node_flows(&node);
        let before = crate::rss_kib(pid) as f64 / 1024.0;
        // A client reads them all: flows are built on first read, and kept.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let read = rt.block_on(drain_flows(
            &format!("unix://{}", node.hubble_socket().display()),
            ring as u64,
        ));
        println!(
            "| {ring} | {} | {stored} | {before:.1} MiB | {:.1} MiB ({read} read) |",
            pods.len() + 2,
            crate::rss_kib(pid) as f64 / 1024.0
        );
        for pod in &pods {
            let _ = node.del_pod(pod);
        }
    }
    println!();
}

/// Flows in an e2e node's store (ServerStatus over its Observer socket).
fn node_flows(node: &weir_e2e::Node) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let server = weir_proto::client::Server::Unix(node.hubble_socket());
        let ch = weir_proto::client::connect(&server, Duration::from_secs(5))
            .await
            .expect("connect");
        weir_proto::observer::observer_client::ObserverClient::new(ch)
            .server_status(weir_proto::observer::ServerStatusRequest {})
            .await
            .map(|r| r.into_inner().num_flows)
            .unwrap_or(0)
    })
}
