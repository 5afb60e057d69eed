//! NodePort / external frontends through BPF_PROG_TEST_RUN: the uplink's XDP
//! program (`from_netdev_xdp`) and its TC fallback (`from_netdev`). DNAT to a
//! local backend with valid checksums and the reply's reverse NAT in
//! from_pod; a remote backend under policy Cluster (SNAT + DNAT: XDP leaves
//! it to TC when it cannot forward itself, which is always the case here:
//! the test's ingress device is lo); policy Local without a local backend
//! (dropped, counted); a SYN flood from outside, which sheds its own
//! handshakes before it refuses a genuine client and holds no more than the
//! node's share of the table. Needs root (to load programs), no namespaces.

mod support;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use support::{LO_IFINDEX, Loaded, OTHER_IFINDEX, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS};
use weir_datapath::ProgramKind;
use weir_datapath::abi::Config;
use weir_datapath::drop::DropReason;
use weir_datapath::lb::{
    Backend, CT_F_NODEPORT, CT_F_REVERSE, CT_F_SNAT, CtKey, NAT_PORTS, Protocol, ServiceMaps, ServiceSpec,
    TrafficPolicy, addr_of, be_addr,
};
use weir_test_support::packet::{Flow, TCP, UDP, parse};
use weir_test_support::require_root;

const NODE: Ipv4Addr = Ipv4Addr::new(172, 31, 99, 11);
const CLIENT: Ipv4Addr = Ipv4Addr::new(172, 31, 99, 254);
const LB_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 98, 10);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const REMOTE_1: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
const NODE_PORT: u16 = 30080;

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// A datapath (support::Loaded) with this node's IP in the config map, and
/// pod B local (behind some other interface).
struct Fixture {
    t: Loaded,
    svc: ServiceMaps,
}

support::derefs_to_loaded!(Fixture);

impl Fixture {
    fn new(test: &str) -> Self {
        Self::with(test, &Default::default())
    }

    fn with(test: &str, options: &weir_datapath::LoadOptions) -> Self {
        let mut t = Loaded::new(&format!("np-{test}"), options);
        t.dp.set_config(Config {
            node_ip: be_addr(NODE),
            ..Default::default()
        })
        .unwrap();
        let svc = ServiceMaps::open(&t.pin_dir).unwrap_or_else(|e| panic!("opening service maps: {e:?}"));
        let mut fx = Self { t, svc };
        fx.place(POD_B, OTHER_IFINDEX, 2);
        fx
    }

    fn frontend(
        &mut self,
        vip: Ipv4Addr,
        port: u16,
        proto: Protocol,
        backends: &[(Ipv4Addr, u16)],
        policy: Option<TrafficPolicy>,
    ) -> u32 {
        let spec = ServiceSpec {
            backends: backends
                .iter()
                .map(|&(ip, port)| Backend {
                    ip,
                    port,
                    terminating: false,
                })
                .collect(),
            external: policy,
            ..Default::default()
        };
        self.svc.upsert_service(vip, port, proto, &spec).unwrap()
    }

    fn conntrack(&self) -> BTreeMap<CtKey, weir_datapath::lb::CtEntry> {
        self.svc.conntrack().unwrap().into_iter().collect()
    }
}

fn proto_of(p: u8) -> Protocol {
    if p == TCP { Protocol::Tcp } else { Protocol::Udp }
}

// --- packets ---------------------------------------------------------------

fn flow(dst: Ipv4Addr, dport: u16, proto: u8) -> Flow {
    Flow {
        src: CLIENT,
        sport: 40000,
        dst,
        dport,
        proto,
    }
}

fn ttl(frame: &[u8]) -> u8 {
    frame[14 + 8]
}

// --- tests -----------------------------------------------------------------

#[test]
fn xdp_dnats_to_a_local_backend_and_from_pod_reverses_the_reply() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("local");
    for proto in [TCP, UDP] {
        let id = fx.frontend(
            NODE,
            NODE_PORT,
            proto_of(proto),
            &[(POD_B, 8080)],
            Some(TrafficPolicy::Cluster),
        );
        let f = flow(NODE, NODE_PORT, proto);
        let (verdict, out) = fx.xdp(&f.packet(SYN));
        assert_eq!(verdict, XDP_PASS, "local backend: the stack (or from_netdev) delivers");
        let seen = parse(&out);
        assert_eq!(
            (seen.src, seen.sport, seen.dst, seen.dport),
            (CLIENT, 40000, POD_B, 8080),
            "DNAT, source kept"
        );
        assert_eq!(ttl(&out), 64, "not forwarded by XDP: TTL untouched");

        let ct = fx.conntrack();
        let fwd = ct[&CtKey::new(CLIENT, 40000, NODE, NODE_PORT, proto_of(proto))];
        assert_eq!((fwd.service_id, fwd.flags), (id, CT_F_NODEPORT));
        let rev = ct[&CtKey::new(POD_B, 8080, CLIENT, 40000, proto_of(proto))];
        assert_eq!(rev.flags, CT_F_NODEPORT | CT_F_REVERSE);

        // The same connection's next packet follows the entry.
        let (verdict, again) = fx.xdp(&f.packet(ACK));
        assert_eq!((verdict, parse(&again).dst), (XDP_PASS, POD_B));

        // The reply leaves the pod through from_pod (B on lo for the test
        // run), which finds the reverse entry and restores the NodePort.
        fx.place(POD_B, LO_IFINDEX, 2);
        let (verdict, back) = fx.tc(ProgramKind::FromPod, &seen.reply().packet(SYN | ACK));
        assert_eq!(
            verdict, TC_ACT_REDIRECT,
            "straight out (the stack would drop the node IP as source)"
        );
        let back = parse(&back);
        assert_eq!(
            (back.src, back.sport, back.dst, back.dport),
            (NODE, NODE_PORT, CLIENT, 40000)
        );
        fx.place(POD_B, OTHER_IFINDEX, 2);
    }

    // to_pod (what the stack routes to the pod) must not touch the DNATed packet.
    let f = flow(NODE, NODE_PORT, TCP);
    let dnated = parse(&fx.xdp(&f.packet(ACK)).1).packet(ACK);
    fx.place(POD_B, LO_IFINDEX, 2);
    let (verdict, out) = fx.tc(ProgramKind::ToPod, &dnated);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out[14..], dnated[14..], "to_pod only rewrites MACs");
}

#[test]
fn remote_backend_is_snatted_and_dnated_with_tc_when_xdp_cannot_forward() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("remote");
    fx.frontend(
        NODE,
        NODE_PORT,
        Protocol::Tcp,
        &[(REMOTE_1, 8080)],
        Some(TrafficPolicy::Cluster),
    );
    let f = flow(NODE, NODE_PORT, TCP);
    let syn = f.packet(SYN);

    // The next hop is not on the ingress device (lo): XDP creates the
    // entries and passes the packet on untouched.
    let (verdict, out) = fx.xdp(&syn);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(out, syn, "untouched: from_netdev translates it");
    let ct = fx.conntrack();
    assert_eq!(ct.len(), 2, "{ct:?}");
    let fwd = ct[&CtKey::new(CLIENT, 40000, NODE, NODE_PORT, Protocol::Tcp)];
    let nat_port = u16::from_be(fwd.xlate_sport);
    assert!(NAT_PORTS.contains(&nat_port), "SNAT port {nat_port}");
    assert_eq!(
        (
            addr_of(fwd.xlate_saddr),
            addr_of(fwd.xlate_daddr),
            u16::from_be(fwd.xlate_dport)
        ),
        (NODE, REMOTE_1, 8080)
    );
    assert_eq!(fwd.flags, CT_F_NODEPORT | CT_F_SNAT);
    let rev = ct[&CtKey::new(REMOTE_1, 8080, NODE, nat_port, Protocol::Tcp)];
    assert_eq!(rev.flags, CT_F_NODEPORT | CT_F_SNAT | CT_F_REVERSE);
    assert_eq!(
        (addr_of(rev.xlate_saddr), u16::from_be(rev.xlate_sport)),
        (NODE, NODE_PORT)
    );

    // TC follows the entries: SNAT + DNAT, one router hop, out again.
    let (verdict, out) = fx.tc(ProgramKind::FromNetdev, &syn);
    assert_eq!(verdict, TC_ACT_REDIRECT, "bpf_redirect_neigh back out of the uplink");
    let seen = parse(&out);
    assert_eq!(
        (seen.src, seen.sport, seen.dst, seen.dport),
        (NODE, nat_port, REMOTE_1, 8080)
    );
    assert_eq!(ttl(&out), 63);
    assert_eq!(fx.conntrack().len(), 2, "no second connection");

    // The backend's reply reaches the uplink addressed to (node, SNAT port).
    let reply = seen.reply().packet(SYN | ACK);
    let (verdict, out) = fx.xdp(&reply);
    assert_eq!((verdict, &out), (XDP_PASS, &reply));
    let (verdict, out) = fx.tc(ProgramKind::FromNetdev, &reply);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let back = parse(&out);
    assert_eq!(
        (back.src, back.sport, back.dst, back.dport),
        (NODE, NODE_PORT, CLIENT, 40000),
        "client sees the NodePort"
    );

    // Another client connection gets its own SNAT port.
    let g = Flow { sport: 40001, ..f };
    let (verdict, out) = fx.tc(ProgramKind::FromNetdev, &g.packet(SYN));
    assert_eq!(verdict, TC_ACT_REDIRECT, "TC alone (XDP off) does the same");
    let other = parse(&out);
    assert_eq!((other.src, other.dst), (NODE, REMOTE_1));
    assert_ne!(other.sport, nat_port);
}

#[test]
fn external_and_lb_ips_and_policy_local() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("policy");
    // Local policy, no backend on this node: dropped and counted, in XDP and TC.
    fx.frontend(NODE, NODE_PORT, Protocol::Tcp, &[], Some(TrafficPolicy::Local));
    let f = flow(NODE, NODE_PORT, TCP);
    assert_eq!(fx.xdp(&f.packet(SYN)).0, XDP_DROP);
    assert_eq!(fx.drops(DropReason::NoLocalBackend), 1);
    assert_eq!(fx.tc(ProgramKind::FromNetdev, &f.packet(SYN)).0, TC_ACT_SHOT);
    assert_eq!(fx.drops(DropReason::NoLocalBackend), 2);
    assert!(fx.conntrack().is_empty());

    // A LoadBalancer IP with policy Local: the client's address is kept even
    // for a backend this node does not know (no SNAT, ever).
    fx.frontend(
        LB_IP,
        80,
        Protocol::Udp,
        &[(REMOTE_1, 5353)],
        Some(TrafficPolicy::Local),
    );
    let u = flow(LB_IP, 80, UDP);
    let (verdict, out) = fx.tc(ProgramKind::FromNetdev, &u.packet(0));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let seen = parse(&out);
    assert_eq!(
        (seen.src, seen.sport, seen.dst, seen.dport),
        (CLIENT, 40000, REMOTE_1, 5353)
    );

    // A UDP datagram without a checksum keeps none.
    fx.frontend(LB_IP, 81, Protocol::Udp, &[(POD_B, 5353)], Some(TrafficPolicy::Cluster));
    let z = flow(LB_IP, 81, UDP).build(0, true);
    let (verdict, out) = fx.xdp(&z);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(&out[34 + 6..34 + 8], &[0, 0]);
    assert_eq!(parse(&out).dst, POD_B);

    // A ClusterIP service on the same address is not an external frontend:
    // the uplink leaves it alone.
    fx.frontend(LB_IP, 82, Protocol::Tcp, &[(POD_B, 8080)], None);
    let c = flow(LB_IP, 82, TCP).packet(SYN);
    let before = fx.conntrack().len();
    assert_eq!(fx.xdp(&c), (XDP_PASS, c.clone()));
    assert_eq!(fx.conntrack().len(), before);
}

/// `n` SYNs at `dst`:`dport` from spoofed sources (198.18.0.0/15, none of
/// them ever completing a handshake), through the uplink's TC program.
fn syn_flood(fx: &Fixture, dst: Ipv4Addr, dport: u16, first: u32, n: u32) {
    for i in first..first + n {
        let f = Flow {
            src: Ipv4Addr::from(0xc612_0000 + i / 4),
            sport: 1024 + (i % 4) as u16,
            dst,
            dport,
            proto: TCP,
        };
        fx.tc(ProgramKind::FromNetdev, &f.packet(SYN));
    }
}

/// A genuine client's handshake through the NodePort to a remote backend:
/// SYN, the backend's SYN-ACK, the client's ACK. Returns the SNAT port.
fn handshake(fx: &Fixture, f: &Flow) -> u16 {
    let (verdict, out) = fx.tc(ProgramKind::FromNetdev, &f.packet(SYN));
    assert_eq!(verdict, TC_ACT_REDIRECT, "the genuine client's SYN goes to the backend");
    let seen = parse(&out);
    let (verdict, back) = fx.tc(ProgramKind::FromNetdev, &seen.reply().packet(SYN | ACK));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!((parse(&back).dst, parse(&back).dport), (f.src, f.sport));
    let (verdict, again) = fx.tc(ProgramKind::FromNetdev, &f.packet(ACK));
    assert_eq!((verdict, parse(&again).sport), (TC_ACT_REDIRECT, seen.sport));
    seen.sport
}

#[test]
fn a_syn_flood_holding_every_snat_port_does_not_shut_out_a_genuine_client() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("flood-ports");
    fx.frontend(
        NODE,
        NODE_PORT,
        Protocol::Tcp,
        &[(REMOTE_1, 8080)],
        Some(TrafficPolicy::Cluster),
    );

    // 20,000 spoofed SYNs: more than the 4,536 SNAT ports towards the one
    // backend. Each that finds its tries taken sheds the oldest handshake
    // among them, so the flood competes with itself.
    syn_flood(&fx, NODE, NODE_PORT, 0, 20_000);
    let held = fx.conntrack().len();
    assert!(held >= 2 * 4000, "the flood holds (nearly) every port: {held} entries");

    let genuine = flow(NODE, NODE_PORT, TCP);
    let port = handshake(&fx, &genuine);

    // The flood goes on: the established connection keeps its port.
    syn_flood(&fx, NODE, NODE_PORT, 20_000, 20_000);
    let (verdict, out) = fx.tc(ProgramKind::FromNetdev, &genuine.packet(ACK));
    assert_eq!((verdict, parse(&out).sport), (TC_ACT_REDIRECT, port));
    let ct = fx.conntrack();
    let fwd = ct[&CtKey::new(CLIENT, 40000, NODE, NODE_PORT, Protocol::Tcp)];
    assert_eq!(fwd.state, weir_datapath::conntrack::CT_ESTABLISHED);
    assert!(
        ct.len() <= 2 * NAT_PORTS.len() + 2,
        "no more than the port range: {}",
        ct.len()
    );
    // And a second genuine client after the flood.
    let late = Flow {
        sport: 40001,
        ..genuine
    };
    assert_ne!(handshake(&fx, &late), port);
}

#[test]
fn a_flood_from_outside_holds_only_the_nodes_share_and_sheds_its_oldest_handshakes() {
    if !require_root() {
        return;
    }
    // A share of 64 entries: 32 connections.
    let options = weir_datapath::LoadOptions {
        ct_node_max: Some(64),
        ..Default::default()
    };
    let mut fx = Fixture::with("flood-share", &options);
    fx.frontend(
        NODE,
        NODE_PORT,
        Protocol::Tcp,
        &[(REMOTE_1, 8080)],
        Some(TrafficPolicy::Cluster),
    );
    // A local backend too: its pod's own share is not the flood's to take.
    fx.frontend(
        NODE,
        NODE_PORT + 1,
        Protocol::Tcp,
        &[(POD_B, 8080)],
        Some(TrafficPolicy::Cluster),
    );

    syn_flood(&fx, NODE, NODE_PORT, 0, 1_000);
    syn_flood(&fx, NODE, NODE_PORT + 1, 1_000, 1_000);
    let ct = fx.conntrack();
    assert!(
        ct.len() <= 64,
        "the flood holds at most the node's share: {} entries",
        ct.len()
    );
    assert!(
        ct.values().all(|e| e.owner == weir_datapath::abi::CT_OWNER_NODE),
        "charged to the node, never the backend pod"
    );
    assert_eq!(
        fx.drops(DropReason::CtNodeLimit),
        0,
        "the flood shed its own oldest handshakes"
    );
    // What the agent's GC reports as the node's share (a metric).
    let mut ct = weir_datapath::conntrack::Conntrack::open(&fx.t.pin_dir).unwrap();
    ct.gc(weir_datapath::lb::monotonic_now_ns()).unwrap();
    assert_eq!(ct.occupancy().node, fx.conntrack().len());

    // A genuine client gets in, and the flood that follows cannot push it out.
    let genuine = flow(NODE, NODE_PORT, TCP);
    let port = handshake(&fx, &genuine);
    syn_flood(&fx, NODE, NODE_PORT, 2_000, 1_000);
    let (verdict, out) = fx.tc(ProgramKind::FromNetdev, &genuine.packet(ACK));
    assert_eq!((verdict, parse(&out).sport), (TC_ACT_REDIRECT, port));

    // Established connections are never shed: once they hold the whole
    // share, a new one is refused, counted as the node's limit.
    for p in 1..32u16 {
        handshake(
            &fx,
            &Flow {
                sport: 40000 + p,
                ..genuine
            },
        );
    }
    let refused = Flow {
        sport: 41000,
        ..genuine
    };
    assert_eq!(fx.tc(ProgramKind::FromNetdev, &refused.packet(SYN)).0, TC_ACT_SHOT);
    assert!(fx.drops(DropReason::CtNodeLimit) >= 1);
    assert_eq!(fx.conntrack().len(), 64);
}
