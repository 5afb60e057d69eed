//! Flows across an agent restart: what the datapath records while the
//! agent is away waits in the pinned ring buffer, and the restarted agent
//! serves it named with the pods that existed before it. Real agent, real
//! CNI, real gRPC over the agent's Observer socket.

use std::time::{Duration, Instant, SystemTime};

use weir_e2e::{Node, require_root};
use weir_proto::flow::Flow;
use weir_proto::observer::observer_client::ObserverClient;
use weir_proto::observer::{GetFlowsRequest, get_flows_response::ResponseTypes};

/// The pod as the agent's standalone source reads it: name, labels and
/// the address CNI gave it.
fn pod_manifest(node: &Node, name: &str, ip: std::net::Ipv4Addr) {
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: demo, labels: {{app: {name}}}}}\nspec: {{nodeName: {}, containers: []}}\nstatus: {{podIP: {ip}}}\n",
        node.name
    );
    std::fs::write(node.dir.join("manifests").join(format!("pod-{name}.yaml")), yaml).expect("manifest");
}

fn flows(node: &Node) -> Vec<Flow> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        use tokio_stream::StreamExt;
        let server = weir_proto::client::Server::Unix(node.hubble_socket());
        let Ok(ch) = weir_proto::client::connect(&server, Duration::from_secs(2)).await else {
            return Vec::new();
        };
        let Ok(s) = ObserverClient::new(ch)
            .get_flows(GetFlowsRequest {
                number: 10_000,
                ..Default::default()
            })
            .await
        else {
            return Vec::new();
        };
        let mut s = s.into_inner();
        let mut out = Vec::new();
        while let Some(Ok(r)) = s.next().await {
            if let Some(ResponseTypes::Flow(f)) = r.response_types {
                out.push(f);
            }
        }
        out
    })
}

fn names(f: &Flow) -> (String, String) {
    let n = |e: &Option<weir_proto::flow::Endpoint>| {
        e.as_ref()
            .map(|e| format!("{}/{}", e.namespace, e.pod_name))
            .unwrap_or_default()
    };
    (n(&f.source), n(&f.destination))
}

fn time(f: &Flow) -> SystemTime {
    f.time
        .as_ref()
        .and_then(weir_proto::time::from_timestamp)
        .expect("a flow has a time")
}

fn wait_for(node: &Node, what: &str, ok: impl Fn(&[Flow]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let f = flows(node);
        if ok(&f) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {f:#?}\nagent log:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn flows_made_while_the_agent_was_away_are_served_named_after_it_restarts() {
    if !require_root() {
        return;
    }
    let mut node = Node::start("10.67.0.0/24");
    let a = node.add_pod("demo", "a");
    let b = node.add_pod("demo", "b");
    pod_manifest(&node, "a", a.ip);
    pod_manifest(&node, "b", b.ip);
    let pair = (String::from("demo/a"), String::from("demo/b"));

    // Named while the agent runs (the source picks the manifests up).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        assert!(a.ns.ping(b.ip), "a reaches b");
        if flows(&node).iter().any(|f| names(f) == pair) {
            break;
        }
        assert!(Instant::now() < deadline, "never named: {:#?}", flows(&node));
        std::thread::sleep(Duration::from_millis(300));
    }

    // The agent goes; a new connection is made meanwhile (a ping with a
    // new echo id: a new conntrack pair, a flow-start event).
    node.stop_agent();
    let away = SystemTime::now();
    assert!(a.ns.ping(b.ip), "pods talk while the agent is away");
    let back = SystemTime::now();
    node.start_agent();

    wait_for(&node, "the flow made while away, named", |fs| {
        fs.iter()
            .any(|f| names(f) == pair && time(f) >= away && time(f) <= back)
    });
}
