//! Masquerading through BPF_PROG_TEST_RUN: `to_netdev` SNATs local pods'
//! traffic bound outside the cluster CIDR to the node IP with valid
//! checksums, keeps a flow's port, and `from_netdev` turns the replies back
//! into the pod's and delivers them. Needs root (to load programs), no
//! namespaces.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};

use support::{LO_IFINDEX, Loaded, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC};
use weir_datapath::abi::{Config, EpInfo};
use weir_datapath::conntrack::{CT_F_MASQ, CT_F_REVERSE, Conntrack, CtEntry};
use weir_datapath::drop::DropReason;
use weir_datapath::lb::{CT_CLOSING, CT_SYN_SENT, CtKey, addr_of, be_addr, monotonic_now_ns};
use weir_datapath::snat::PORT_RANGE;
use weir_datapath::{LoadOptions, ProgramKind};
use weir_test_support::packet::{TCP, UDP, fold, ipv4_frame, pseudo_sum, sum16};
use weir_test_support::{in_fresh_netns, require_root};

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const A_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 2];
const A_HOST_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 1, 2];
const NODE: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 11);
const OTHER_NODE: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 12);
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 254);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);

const ICMP: u8 = 1;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;
const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;

/// A datapath (support::Loaded) with pod A on lo and masquerading of
/// 10.244.0.0/16 to NODE.
struct Fixture {
    t: Loaded,
    ct: Conntrack,
    /// The node-route maps, handed over as the agent's routing controller gets them.
    routes: weir_datapath::RouteMaps,
}

support::derefs_to_loaded!(Fixture);

impl Fixture {
    fn new(test: &str) -> Self {
        Self::with_options(test, &LoadOptions::default())
    }

    fn with_options(test: &str, options: &LoadOptions) -> Self {
        let mut t = Loaded::new(&format!("snat-{test}"), options);
        let info = EpInfo {
            ifindex: LO_IFINDEX,
            endpoint_id: 1,
            identity: 100,
            pod_mac: A_MAC,
            host_mac: A_HOST_MAC,
            flags: 0,
        };
        t.dp.upsert_endpoint(IpAddr::V4(POD_A), info).unwrap();
        let ct = Conntrack::open(&t.pin_dir).unwrap_or_else(|e| panic!("opening the conntrack map: {e:?}"));
        let routes = t.dp.take_route_maps().expect("route maps");
        let mut fx = Self { t, ct, routes };
        fx.masquerade(true);
        fx
    }

    fn masquerade(&mut self, on: bool) {
        let config = Config {
            node_ip: be_addr(NODE),
            ..Default::default()
        };
        let config = if on {
            config.with_masquerade("10.244.0.0/16".parse().unwrap())
        } else {
            config
        };
        self.t.dp.set_config(config).unwrap();
    }

    fn run(&self, kind: ProgramKind, packet: &[u8]) -> (u32, Vec<u8>) {
        self.t.tc(kind, packet)
    }

    fn out(&self, flow: &Flow, tcp_flags: u8) -> (u32, Vec<u8>) {
        self.run(ProgramKind::ToNetdev, &flow.packet(tcp_flags))
    }

    fn entries(&self) -> HashMap<CtKey, CtEntry> {
        self.ct.entries().unwrap().into_iter().collect()
    }
}

// --- packets ---------------------------------------------------------------

/// A flow; for ICMP, `sport` is the echo identifier and `icmp_type` says
/// request or reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flow {
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    proto: u8,
    icmp_type: u8,
}

impl Flow {
    fn new(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, proto: u8) -> Self {
        Self {
            src,
            sport,
            dst,
            dport,
            proto,
            icmp_type: ECHO_REQUEST,
        }
    }

    fn ping(src: Ipv4Addr, id: u16, dst: Ipv4Addr) -> Self {
        Self {
            src,
            sport: id,
            dst,
            dport: 0,
            proto: ICMP,
            icmp_type: ECHO_REQUEST,
        }
    }

    /// An Ethernet + IPv4 frame with valid IPv4 and L4 checksums.
    fn packet(&self, tcp_flags: u8) -> Vec<u8> {
        let payload = b"weir";
        let mut l4 = match self.proto {
            TCP => {
                let mut t = vec![0u8; 20];
                t[0..2].copy_from_slice(&self.sport.to_be_bytes());
                t[2..4].copy_from_slice(&self.dport.to_be_bytes());
                t[12] = 5 << 4;
                t[13] = tcp_flags;
                t
            }
            UDP => {
                let mut u = vec![0u8; 8];
                u[0..2].copy_from_slice(&self.sport.to_be_bytes());
                u[2..4].copy_from_slice(&self.dport.to_be_bytes());
                u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                u
            }
            _ => {
                let mut i = vec![self.icmp_type, 0, 0, 0];
                i.extend_from_slice(&self.sport.to_be_bytes());
                i.extend_from_slice(&7u16.to_be_bytes()); // sequence
                i
            }
        };
        l4.extend_from_slice(payload);
        let c = match self.proto {
            TCP | UDP => fold(pseudo_sum(self.src, self.dst, self.proto, l4.len()) + sum16(&l4)),
            _ => fold(sum16(&l4)),
        };
        let at = match self.proto {
            TCP => 16,
            UDP => 6,
            _ => 2,
        };
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
        ipv4_frame(self.src, self.dst, self.proto, &l4)
    }

    /// The answer to this flow as the remote sends it.
    fn reply(&self) -> Self {
        if self.proto == ICMP {
            return Self {
                src: self.dst,
                sport: self.sport,
                dst: self.src,
                dport: 0,
                proto: ICMP,
                icmp_type: ECHO_REPLY,
            };
        }
        Self {
            src: self.dst,
            sport: self.dport,
            dst: self.src,
            dport: self.sport,
            proto: self.proto,
            icmp_type: 0,
        }
    }
}

/// The flow a frame carries, after checking its IPv4 and L4 checksums.
fn parse(frame: &[u8]) -> Flow {
    let ip = &frame[14..34];
    assert_eq!(fold(sum16(ip)), 0, "IPv4 header checksum valid");
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let proto = ip[9];
    let l4 = &frame[34..];
    let be = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
    if proto == ICMP {
        assert_eq!(fold(sum16(l4)), 0, "ICMP checksum valid");
        return Flow {
            src,
            sport: be(4),
            dst,
            dport: 0,
            proto,
            icmp_type: l4[0],
        };
    }
    assert_eq!(
        fold(pseudo_sum(src, dst, proto, l4.len()) + sum16(l4)),
        0,
        "{proto} checksum valid"
    );
    Flow {
        src,
        sport: be(0),
        dst,
        dport: be(2),
        proto,
        icmp_type: 0,
    }
}

// --- tests -----------------------------------------------------------------

#[test]
fn tcp_udp_and_ping_leave_as_the_node_and_replies_come_back_to_the_pod() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("rewrite");
    let flows = [
        Flow::new(POD_A, 40000, EXTERNAL, 8080, TCP),
        Flow::new(POD_A, 40001, EXTERNAL, 5353, UDP),
        Flow::ping(POD_A, 0x1234, EXTERNAL),
    ];
    for flow in flows {
        let (verdict, out) = fx.out(&flow, SYN);
        assert_eq!(verdict, TC_ACT_OK, "{flow:?} translated");
        let seen = parse(&out);
        assert_eq!(
            (seen.src, seen.dst, seen.dport),
            (NODE, EXTERNAL, flow.dport),
            "{flow:?}: source is the node"
        );
        assert!(
            PORT_RANGE.contains(&seen.sport),
            "{flow:?}: port {} in the SNAT range",
            seen.sport
        );
        assert_eq!(out.len(), flow.packet(SYN).len(), "no bytes added or removed");

        // The remote answers the node; from_netdev hands it to pod A.
        let (verdict, back) = fx.run(ProgramKind::FromNetdev, &seen.reply().packet(SYN | ACK));
        assert_eq!(verdict, TC_ACT_REDIRECT, "{flow:?}: reply delivered into the pod");
        assert_eq!(&back[0..12], &[A_MAC, A_HOST_MAC].concat(), "as A's gateway sends it");
        assert_eq!(back[14 + 8], 63, "one routing hop");
        assert_eq!(parse(&back), flow.reply(), "the pod sees its own flow's reply");
    }
    let entries = fx.entries();
    assert_eq!(entries.len(), 6, "two entries per flow: {entries:?}");
    let fwd = entries[&CtKey {
        saddr: be_addr(POD_A),
        daddr: be_addr(EXTERNAL),
        sport: 40000u16.to_be(),
        dport: 8080u16.to_be(),
        proto: TCP,
        pad: [0; 3],
    }];
    assert_eq!((addr_of(fwd.xlate_saddr), fwd.flags, fwd.packets), (NODE, CT_F_MASQ, 1));
    let rev = entries[&fwd.partner_key(TCP)];
    assert_eq!(
        (
            addr_of(rev.xlate_daddr),
            u16::from_be(rev.xlate_dport),
            rev.flags,
            rev.packets
        ),
        (POD_A, 40000, CT_F_MASQ | CT_F_REVERSE, 1)
    );
    assert_eq!(rev.state, CT_SYN_SENT, "a SYN+ACK keeps the handshake timeout");
    assert_eq!(
        fx.dp.endpoint_traffic(1).unwrap().0.packets,
        3,
        "replies counted as A's ingress"
    );
    assert!(fx.dp.drops().unwrap().is_empty(), "{:?}", fx.dp.drops());
}

#[test]
fn a_flow_keeps_its_port_and_flows_to_one_remote_never_share_one() {
    if !require_root() {
        return;
    }
    let fx = Fixture::new("keep");
    let flow = Flow::new(POD_A, 40000, EXTERNAL, 80, TCP);
    let first = parse(&fx.out(&flow, SYN).1).sport;
    for flags in [ACK, ACK, ACK] {
        assert_eq!(parse(&fx.out(&flow, flags).1).sport, first, "same flow, same node port");
    }
    let ping = Flow::ping(POD_A, 7, EXTERNAL);
    let id = parse(&fx.out(&ping, 0).1).sport;
    assert_eq!(parse(&fx.out(&ping, 0).1).sport, id, "pings of one id keep theirs");

    // 200 flows to one remote endpoint: 200 distinct node ports.
    let ports: BTreeSet<u16> = (41000..41200)
        .map(|p| parse(&fx.out(&Flow::new(POD_A, p, EXTERNAL, 80, TCP), SYN).1).sport)
        .collect();
    assert_eq!(ports.len(), 200);
    assert!(!ports.contains(&first));

    // FIN closes both directions; a fresh SYN on the closed flow gets a
    // fresh port and the old reverse entry goes.
    assert_eq!(fx.out(&flow, FIN | ACK).0, TC_ACT_OK);
    let key = CtKey {
        saddr: be_addr(POD_A),
        daddr: be_addr(EXTERNAL),
        sport: 40000u16.to_be(),
        dport: 80u16.to_be(),
        proto: TCP,
        pad: [0; 3],
    };
    let entries = fx.entries();
    let fwd = entries[&key];
    assert_eq!(
        (fwd.state, entries[&fwd.partner_key(key.proto)].state),
        (CT_CLOSING, CT_CLOSING)
    );
    let before = entries.len();
    let again = parse(&fx.out(&flow, SYN).1).sport;
    let entries = fx.entries();
    assert_eq!(entries.len(), before, "the old pair was replaced, not leaked");
    assert_eq!(u16::from_be(entries[&key].xlate_sport), again);
}

#[test]
fn cluster_traffic_the_nodes_own_and_other_packets_are_untouched() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("untouched");
    let untouched = [
        Flow::new(POD_A, 40000, REMOTE_POD, 80, TCP), // another node's pod
        Flow::new(POD_A, 40000, NODE, 80, TCP),       // this node
        Flow::new(NODE, 40000, EXTERNAL, 80, TCP),    // the node's own traffic
        Flow::new(Ipv4Addr::new(10, 244, 1, 99), 1, EXTERNAL, 80, UDP), // not a local pod
        Flow {
            icmp_type: ECHO_REPLY,
            ..Flow::ping(POD_A, 9, EXTERNAL)
        }, // not an echo request
    ];
    for flow in untouched {
        let pkt = flow.packet(SYN);
        assert_eq!(
            fx.run(ProgramKind::ToNetdev, &pkt),
            (TC_ACT_UNSPEC, pkt.clone()),
            "{flow:?}"
        );
    }
    // Other nodes' IPs are outside the cluster CIDR: masqueraded, unless
    // the agent knows them as nodes (then they are cluster members).
    assert_eq!(
        parse(&fx.out(&Flow::new(POD_A, 40000, OTHER_NODE, 80, TCP), SYN).1).src,
        NODE
    );
    assert_eq!(fx.entries().len(), 2);
    fx.routes.sync_node_ips(&[OTHER_NODE]).unwrap();
    let to_node = Flow::new(POD_A, 40001, OTHER_NODE, 80, TCP).packet(SYN);
    assert_eq!(
        fx.run(ProgramKind::ToNetdev, &to_node),
        (TC_ACT_UNSPEC, to_node.clone()),
        "known node: untouched"
    );

    // Traffic to the node that no masqueraded flow expects is the node's own.
    let stray = Flow::new(EXTERNAL, 80, NODE, 33333, TCP).packet(SYN);
    assert_eq!(fx.run(ProgramKind::FromNetdev, &stray), (TC_ACT_UNSPEC, stray.clone()));

    // Without a cluster CIDR nothing is masqueraded.
    fx.masquerade(false);
    let pkt = Flow::new(POD_A, 40001, EXTERNAL, 80, TCP).packet(SYN);
    assert_eq!(fx.run(ProgramKind::ToNetdev, &pkt), (TC_ACT_UNSPEC, pkt.clone()));
    assert_eq!(fx.entries().len(), 2);
    assert!(fx.dp.drops().unwrap().is_empty(), "{:?}", fx.dp.drops());
}

#[test]
fn a_full_snat_table_drops_new_flows_with_a_reason_and_gc_frees_it() {
    if !require_root() {
        return;
    }
    let options = LoadOptions {
        max_entries: vec![(weir_datapath::conntrack::MAP, 4)],
        ..Default::default()
    };
    let mut fx = Fixture::with_options("full", &options);
    let flow = |p| Flow::new(POD_A, p, EXTERNAL, 80, TCP);
    assert_eq!(fx.out(&flow(50000), SYN).0, TC_ACT_OK);
    assert_eq!(fx.out(&Flow::ping(POD_A, 1, EXTERNAL), 0).0, TC_ACT_OK);
    assert_eq!(fx.out(&flow(50001), SYN).0, TC_ACT_SHOT, "no room for a third flow");
    assert_eq!(fx.drops(DropReason::SnatPortsExhausted), 1);
    assert_eq!(fx.entries().len(), 4, "the failed attempt left nothing behind");
    assert_eq!(fx.out(&flow(50000), ACK).0, TC_ACT_OK, "established flows keep going");

    // Nothing has expired yet; 7 hours later everything has.
    assert_eq!(fx.ct.gc(monotonic_now_ns()).unwrap(), 0);
    assert_eq!(fx.ct.gc(monotonic_now_ns() + 7 * 3600 * 1_000_000_000).unwrap(), 4);
    assert_eq!(fx.out(&flow(50001), SYN).0, TC_ACT_OK);
    assert_eq!(fx.entries().len(), 2);
}

#[test]
fn ports_held_by_node_sockets_or_other_flows_are_not_handed_out() {
    if !require_root() {
        return;
    }
    in_fresh_netns(|| {
        // One port to hand out, so every outcome is deterministic.
        let options = LoadOptions {
            snat_ports: Some(40000..=40000),
            ..Default::default()
        };
        let fx = Fixture::with_options("range", &options);
        let udp = Flow::new(POD_A, 1000, EXTERNAL, 53, UDP);
        let tcp = Flow::new(POD_A, 1000, EXTERNAL, 80, TCP);

        // The node's own sockets own the port: no flow may take it.
        let node_udp = std::net::UdpSocket::bind("0.0.0.0:40000").expect("binding the node's UDP socket");
        let node_tcp = std::net::TcpListener::bind("0.0.0.0:40000").expect("binding the node's TCP listener");
        assert_eq!(fx.out(&udp, 0).0, TC_ACT_SHOT, "UDP port held by a node socket");
        assert_eq!(fx.out(&tcp, SYN).0, TC_ACT_SHOT, "TCP port held by a node listener");
        assert_eq!(fx.drops(DropReason::SnatPortsExhausted), 2);
        assert_eq!(
            parse(&fx.out(&Flow::ping(POD_A, 5, EXTERNAL), 0).1).sport,
            40000,
            "echo ids are not sockets"
        );
        drop((node_udp, node_tcp));

        assert_eq!(
            parse(&fx.out(&udp, 0).1).sport,
            40000,
            "free once the node's socket is gone"
        );
        // A second flow to the same remote ip:port finds the only port taken...
        assert_eq!(fx.out(&Flow::new(POD_A, 1001, EXTERNAL, 53, UDP), 0).0, TC_ACT_SHOT);
        assert_eq!(fx.drops(DropReason::SnatPortsExhausted), 3);
        // ...while another remote endpoint can have the same port.
        assert_eq!(
            parse(&fx.out(&Flow::new(POD_A, 1001, EXTERNAL, 54, UDP), 0).1).sport,
            40000
        );
        assert_eq!(parse(&fx.out(&tcp, SYN).1).sport, 40000);
    });
}
