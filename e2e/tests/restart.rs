//! Restart safety: an established TCP connection between two pods keeps
//! working while the agent is stopped and after it comes back.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use weir_agent_api::{Request, Response};
use weir_e2e::{Node, in_netns, require_root};

/// The ids of the BPF programs tc runs on `dev` (ingress, then egress).
fn tc_program_ids(node: &Node, dev: &str) -> Vec<String> {
    ["ingress", "egress"]
        .iter()
        .flat_map(|dir| {
            let out = node.ns.exec_ok("tc", &["filter", "show", "dev", dev, dir]);
            out.split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .filter(|w| w[0] == "id")
                .map(|w| w[1].to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn round_trip(stream: &mut TcpStream, reader: &mut BufReader<TcpStream>, msg: &str) -> String {
    stream.write_all(format!("{msg}\n").as_bytes()).expect("write");
    let mut line = String::new();
    reader.read_line(&mut line).expect("echo");
    line.trim().to_owned()
}

#[test]
fn established_tcp_survives_agent_restart() {
    if !require_root() {
        return;
    }
    let mut node = Node::start("10.66.0.0/24");
    let a = node.add_pod("demo", "client");
    let b = node.add_pod("demo", "server");

    let listener = in_netns(b.spec.netns.clone(), || {
        TcpListener::bind("0.0.0.0:7000").expect("bind")
    });
    std::thread::spawn(move || {
        let (conn, _) = listener.accept().expect("accept");
        let mut w = conn.try_clone().expect("clone");
        for line in BufReader::new(conn).lines() {
            let Ok(line) = line else { break };
            if w.write_all(format!("echo {line}\n").as_bytes()).is_err() {
                break;
            }
        }
    });
    let b_ip = b.ip;
    let mut stream = in_netns(a.spec.netns.clone(), move || {
        TcpStream::connect_timeout(&(b_ip, 7000).into(), Duration::from_secs(3)).expect("connect")
    });
    stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());

    assert_eq!(round_trip(&mut stream, &mut reader, "before"), "echo before");
    let dev = match node.client().call(Request::EndpointList).unwrap() {
        Response::Endpoints { endpoints } => {
            endpoints
                .into_iter()
                .find(|e| e.ipv4 == a.ip)
                .expect("client's endpoint")
                .host_ifname
        }
        other => panic!("endpoint_list: {other:?}"),
    };
    let before = tc_program_ids(&node, &dev);
    assert_eq!(before.len(), 2, "from_pod and to_pod on {dev}: {before:?}");
    node.stop_agent();
    assert_eq!(
        tc_program_ids(&node, &dev),
        before,
        "the programs stay attached while the agent is away"
    );
    assert_eq!(
        round_trip(&mut stream, &mut reader, "while-down"),
        "echo while-down",
        "datapath works without the agent"
    );
    node.start_agent();
    assert_eq!(round_trip(&mut stream, &mut reader, "after"), "echo after");
    let after = tc_program_ids(&node, &dev);
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(
        after.iter().all(|id| !before.contains(id)),
        "the new agent swapped its own programs in: {before:?} then {after:?}"
    );

    // The restarted agent adopted both endpoints, with their counters intact.
    match node.client().call(Request::EndpointList).unwrap() {
        Response::Endpoints { endpoints } => {
            assert_eq!(endpoints.len(), 2);
            for e in endpoints {
                let c = e.counters.unwrap();
                assert!(
                    c.egress.packets >= 3,
                    "{}: counters kept across restart: {c:?}",
                    e.pod.name
                );
            }
        }
        other => panic!("{other:?}"),
    }
    // New pods still work after the restart.
    let c = node.add_pod("demo", "late");
    assert!(c.ns.ping(a.ip));
}
