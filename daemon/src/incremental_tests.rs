//! The incremental controllers hold what a full pass would: after any
//! sequence of changes (objects added, changed, removed; addresses that
//! collide; identities that come and go; claims that conflict), the table
//! kept up to date change by change equals the one computed from the
//! final model alone.
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::json;
use weir_model::{Changes, ClusterState, Kind, Object, ObjectKey};

use crate::{ipcache, services};
use weir_flows::names::FlowNames;

/// One change to the model; small numbers so that objects collide.
#[derive(Debug, Clone)]
enum Op {
    Pod {
        name: u8,
        app: u8,
        node: u8,
        ip: Option<u8>,
        finished: bool,
        deleting: bool,
        created: u8,
        host_port: Option<u8>,
    },
    DelPod(u8),
    Service {
        name: u8,
        vip: Option<u8>,
        port: u8,
        node_port: Option<u8>,
        external_ip: Option<u8>,
        created: u8,
    },
    DelService(u8),
    Slice {
        name: u8,
        service: u8,
        ips: Vec<u8>,
        ready: bool,
        node: u8,
    },
    DelSlice(u8),
    Identity {
        id: u8,
        app: u8,
    },
    DelIdentity(u8),
    Node {
        name: u8,
        ip: Option<u8>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..8u8, 0..3u8, 0..2u8, proptest::option::of(0..6u8), any::<bool>(), any::<bool>(), 0..4u8, proptest::option::weighted(0.2, 0..3u8))
            .prop_map(|(name, app, node, ip, finished, deleting, created, host_port)| Op::Pod {
                name, app, node, ip, finished: finished && name % 3 == 0, deleting: deleting && name % 2 == 0, created, host_port
            }),
        1 => (0..8u8).prop_map(Op::DelPod),
        3 => (0..5u8, proptest::option::weighted(0.9, 0..4u8), 0..2u8, proptest::option::of(0..3u8), proptest::option::weighted(0.3, 0..3u8), 0..4u8)
            .prop_map(|(name, vip, port, node_port, external_ip, created)| Op::Service { name, vip, port, node_port, external_ip, created }),
        1 => (0..5u8).prop_map(Op::DelService),
        3 => (0..6u8, 0..5u8, proptest::collection::vec(0..6u8, 0..3), any::<bool>(), 0..2u8)
            .prop_map(|(name, service, ips, ready, node)| Op::Slice { name, service, ips, ready, node }),
        1 => (0..6u8).prop_map(Op::DelSlice),
        2 => (0..4u8, 0..3u8).prop_map(|(id, app)| Op::Identity { id, app }),
        1 => (0..4u8).prop_map(Op::DelIdentity),
        1 => (0..3u8, proptest::option::of(0..3u8)).prop_map(|(name, ip)| Op::Node { name, ip }),
    ]
}

fn obj(kind: Kind, v: serde_json::Value) -> Object {
    Object::from_value(kind, v).expect("object")
}

fn time(t: u8) -> String {
    format!("2026-01-0{}T00:00:00Z", 1 + t)
}

fn node_name(n: u8) -> String {
    format!("n{n}")
}

fn apply(s: &mut ClusterState, op: &Op) {
    match op.clone() {
        Op::Pod {
            name,
            app,
            node,
            ip,
            finished,
            deleting,
            created,
            host_port,
        } => {
            let mut meta = json!({"name": format!("p{name}"), "namespace": "d", "labels": {"app": format!("a{app}")},
                                  "creationTimestamp": time(created)});
            if deleting {
                meta["deletionTimestamp"] = json!(time(3));
            }
            let ports: Vec<_> = host_port
                .map(|p| json!({"containerPort": 8080, "hostPort": 30000 + u32::from(p)}))
                .into_iter()
                .collect();
            let mut status = json!({"phase": if finished { "Succeeded" } else { "Running" }});
            if let Some(ip) = ip {
                status["podIP"] = json!(format!("10.244.0.{ip}"));
            }
            s.insert(obj(
                Kind::Pod,
                json!({"metadata": meta, "spec": {"nodeName": node_name(node), "containers": [{"name": "c", "ports": ports}]},
                       "status": status}),
            ));
        }
        Op::DelPod(name) => {
            s.remove(Kind::Pod, &ObjectKey::new("d", format!("p{name}")));
        }
        Op::Service {
            name,
            vip,
            port,
            node_port,
            external_ip,
            created,
        } => {
            let mut spec = json!({"ports": [{"name": "p", "port": 80 + u32::from(port), "protocol": "TCP"}]});
            if let Some(v) = vip {
                spec["clusterIP"] = json!(format!("10.96.0.{v}"));
            }
            if let Some(np) = node_port {
                spec["type"] = json!("NodePort");
                spec["ports"][0]["nodePort"] = json!(30000 + u32::from(np));
            }
            if let Some(e) = external_ip {
                // 10.96.0.x: an external IP may claim another's ClusterIP.
                spec["externalIPs"] = json!([format!("10.96.0.{e}")]);
            }
            s.insert(obj(
                Kind::Service,
                json!({"metadata": {"name": format!("s{name}"), "namespace": "d", "creationTimestamp": time(created)},
                       "spec": spec}),
            ));
        }
        Op::DelService(name) => {
            s.remove(Kind::Service, &ObjectKey::new("d", format!("s{name}")));
        }
        Op::Slice {
            name,
            service,
            ips,
            ready,
            node,
        } => {
            let endpoints: Vec<_> = ips
                .iter()
                .map(|ip| json!({"addresses": [format!("10.244.0.{ip}")], "conditions": {"ready": ready, "serving": true, "terminating": !ready}, "nodeName": node_name(node)}))
                .collect();
            s.insert(obj(
                Kind::EndpointSlice,
                json!({"metadata": {"name": format!("e{name}"), "namespace": "d",
                                    "labels": {"kubernetes.io/service-name": format!("s{service}")}},
                       "addressType": "IPv4", "endpoints": endpoints,
                       "ports": [{"name": "p", "port": 8080, "protocol": "TCP"}]}),
            ));
        }
        Op::DelSlice(name) => {
            s.remove(Kind::EndpointSlice, &ObjectKey::new("d", format!("e{name}")));
        }
        Op::Identity { id, app } => {
            let key = weir_model::IdentityKey::of("d", &[("app".to_string(), format!("a{app}"))].into());
            s.insert(Object::WeirIdentity(weir_model::WeirIdentity::numbered(
                300 + u32::from(id),
                key,
            )));
        }
        Op::DelIdentity(id) => {
            s.remove(
                Kind::WeirIdentity,
                &ObjectKey::new("", (300 + u32::from(id)).to_string()),
            );
        }
        Op::Node { name, ip } => match ip {
            Some(ip) => s.insert(obj(
                Kind::Node,
                json!({"metadata": {"name": node_name(name)},
                       "status": {"addresses": [{"type": "InternalIP", "address": format!("10.244.0.{ip}")}]}}),
            )),
            None => {
                s.remove(Kind::Node, &ObjectKey::new("", node_name(name)));
            }
        },
    }
}

/// The snapshots a sequence makes: one per change, and sometimes several
/// changes in one snapshot, as a debouncing source publishes them.
fn snapshots(ops: &[Op], batch: &[bool]) -> Vec<Arc<ClusterState>> {
    let mut s = ClusterState::default();
    let mut out = vec![Arc::new(s.clone())];
    for (i, op) in ops.iter().enumerate() {
        apply(&mut s, op);
        if !batch.get(i).copied().unwrap_or(false) {
            out.push(Arc::new(s.clone()));
        }
    }
    out.push(Arc::new(s));
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_ipcache_kept_by_changes_equals_a_full_pass(
        ops in proptest::collection::vec(op(), 1..40),
        batch in proptest::collection::vec(any::<bool>(), 40),
    ) {
        let states = snapshots(&ops, &batch);
        let mut table = ipcache::Table::full(&states[0], "n0");
        let mut kept = table.desired();
        for w in states.windows(2) {
            let touched = table.update(&w[1], &Changes::between(&w[0], &w[1]));
            for ip in touched {
                match table.get(&ip) {
                    Some(id) => kept.insert(ip, id),
                    None => kept.remove(&ip),
                };
            }
            prop_assert_eq!(&kept, &ipcache::desired(&w[1], "n0"));
            prop_assert_eq!(&table.desired(), &kept);
        }
    }

    #[test]
    fn the_service_table_kept_by_changes_equals_a_full_pass(
        ops in proptest::collection::vec(op(), 1..40),
        batch in proptest::collection::vec(any::<bool>(), 40),
    ) {
        let states = snapshots(&ops, &batch);
        let node = services::NodeInfo { name: "n0".into(), ip: Some("192.168.0.1".parse().unwrap()) };
        let alg = weir_datapath::lb::Algorithm::Random;
        let mut table = services::Table::full(&states[0], alg, &node);
        let mut kept = table.desired();
        for w in states.windows(2) {
            let touched = table.update(&w[1], &Changes::between(&w[0], &w[1]));
            for key in touched {
                match table.get(&key) {
                    Some(spec) => kept.insert(key, spec.clone()),
                    None => kept.remove(&key),
                };
            }
            prop_assert_eq!(&kept, &services::desired(&w[1], alg, &node));
        }
    }

    #[test]
    fn flow_names_kept_by_changes_equal_a_full_update(
        ops in proptest::collection::vec(op(), 1..40),
        batch in proptest::collection::vec(any::<bool>(), 40),
    ) {
        let states = snapshots(&ops, &batch);
        let grace = std::time::Duration::from_secs(60);
        let now = std::time::Instant::now();
        let (mut kept, mut full) = (FlowNames::new(grace), FlowNames::new(grace));
        kept.update(&states[0], "n0", now);
        full.update(&states[0], "n0", now);
        for w in states.windows(2) {
            kept.update_with(&w[1], Some(&Changes::between(&w[0], &w[1])), "n0", now);
            full.update(&w[1], "n0", now);
            prop_assert_eq!(kept.contents(), full.contents());
        }
    }
}
