//! The Observer API cannot stall the agent: while six clients hammer
//! GetFlows with as many and as large label-selector filters as a request
//! may carry, pods are still added through the real CNI plugin, each ADD
//! as it would be without them. Before the limits and the matching off the
//! async workers, a pod's ADD failed after 17 s ("talking to the weir agent
//! failed") under this load, and with matching on both of the agent's
//! blocking threads each ADD queued behind it for about 1 s. Real agent, real CNI, real gRPC over the
//! agent's Observer socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use weir_e2e::{Node, require_root};
use weir_proto::flow::FlowFilter;
use weir_proto::observer::GetFlowsRequest;
use weir_proto::observer::observer_client::ObserverClient;

const CLIENTS: usize = 6;

/// The largest request the agent takes: 64 filters in the whitelist, each
/// a label selector of about 1 KB (64 KiB in all, the bound).
fn heavy_request() -> GetFlowsRequest {
    let selector: Vec<String> = (0..60).map(|i| format!("k8s:app{i:03}=v{i:03}")).collect();
    let filter = FlowFilter {
        source_label: vec![selector.join(",")],
        ..Default::default()
    };
    GetFlowsRequest {
        number: 10_000,
        whitelist: vec![filter; 60],
        ..Default::default()
    }
}

/// One client: GetFlows after GetFlows, each read to its end, until `stop`.
/// Counts the requests the agent answered (with flows or with a refusal).
fn hammer(socket: std::path::PathBuf, stop: Arc<AtomicBool>, answered: Arc<AtomicU64>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        use tokio_stream::StreamExt;
        let server = weir_proto::client::Server::Unix(socket);
        while !stop.load(Ordering::Relaxed) {
            let Ok(ch) = weir_proto::client::connect(&server, Duration::from_secs(2)).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let mut client = ObserverClient::new(ch);
            while !stop.load(Ordering::Relaxed) {
                if let Ok(s) = client.get_flows(heavy_request()).await {
                    let mut s = s.into_inner();
                    while let Some(Ok(_)) = s.next().await {}
                }
                answered.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
}

#[test]
fn a_cni_add_goes_through_while_clients_hammer_get_flows() {
    if !require_root() {
        return;
    }
    let node = Node::start("10.68.0.0/24");
    let a = node.add_pod("demo", "a");
    let b = node.add_pod("demo", "b");
    // Flows for the filters to match against: 2,000 UDP connections a -> b.
    let target = b.ip;
    weir_test_support::netns::in_netns(a.ns.path(), move || {
        for port in 0..2_000u16 {
            let sock = std::net::UdpSocket::bind(("0.0.0.0", 20_000 + port)).expect("udp socket");
            let _ = sock.send_to(b"x", (target, 9));
        }
    });
    // The usual ADD, unloaded.
    let started = Instant::now();
    node.add_pod("demo", "quiet");
    let quiet = started.elapsed();

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (socket, stop, answered) = (node.hubble_socket(), stop.clone(), answered.clone());
            std::thread::spawn(move || hammer(socket, stop, answered))
        })
        .collect();
    // Let the load build up before the ADDs.
    std::thread::sleep(Duration::from_secs(2));
    let mut loaded = Vec::new();
    for i in 0..5 {
        let started = Instant::now();
        // Panics with the CNI error if the ADD fails.
        node.add_pod("demo", &format!("busy-{i}"));
        loaded.push(started.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    let requests = answered.load(Ordering::Relaxed);
    eprintln!(
        "CNI ADD: {quiet:?} unloaded; under {CLIENTS} GetFlows clients ({requests} requests answered): {loaded:?}"
    );
    assert!(
        requests >= CLIENTS as u64,
        "the clients were answered meanwhile: {requests}"
    );
    // As without the clients (about 20 ms here, 20-36 ms under them). The
    // agent whose workers matched flows took 17 s and then failed; the one
    // whose two blocking threads both matched, about 1 s per ADD.
    let slowest = loaded.iter().max().copied().unwrap_or_default();
    assert!(
        slowest < Duration::from_millis(500),
        "the slowest ADD under load took {slowest:?} (unloaded {quiet:?})\n{}",
        node.log()
    );
}
