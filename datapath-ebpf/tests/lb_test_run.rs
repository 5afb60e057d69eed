//! ClusterIP services through BPF_PROG_TEST_RUN on `from_pod`: DNAT to a
//! backend with valid checksums, reverse NAT of replies, conntrack,
//! random and Maglev selection, session affinity, hairpin, the TCP RST and
//! ICMP port unreachable of a service without backends, and the drop
//! reasons. Services are programmed through `ServiceMaps`, the way the
//! agent does it. Needs root (to load programs), no namespaces.

mod support;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use support::{LO_IFINDEX, Loaded, OTHER_IFINDEX, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT};
use weir_datapath::drop::DropReason;
use weir_datapath::lb::{
    Algorithm, Backend, CT_ESTABLISHED, CT_F_HAIRPIN, CT_F_REVERSE, CT_SYN_SENT, CtKey, HAIRPIN_IP, Protocol,
    ServiceMaps, ServiceSpec, addr_of, monotonic_now_ns,
};
use weir_datapath::{LoadOptions, ProgramKind};
use weir_test_support::packet::{Flow, TCP, UDP, fold, parse, pseudo_sum, sum16};
use weir_test_support::require_root;

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const REMOTE_1: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
const REMOTE_2: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 6);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

const SCTP: u8 = 132;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// A datapath (support::Loaded) with pods A (on lo, so it is the sender of
/// every test packet) and B, and the service maps.
struct Fixture {
    t: Loaded,
    svc: ServiceMaps,
}

support::derefs_to_loaded!(Fixture);

impl Fixture {
    fn new(test: &str) -> Self {
        Self::with_options(test, &LoadOptions::default())
    }

    fn with_options(test: &str, options: &LoadOptions) -> Self {
        let t = Loaded::new(&format!("lb-{test}"), options);
        let svc = ServiceMaps::open(&t.pin_dir).unwrap_or_else(|e| panic!("opening service maps: {e:?}"));
        let mut fx = Self { t, svc };
        fx.place(POD_A, LO_IFINDEX, 1);
        fx.place(POD_B, OTHER_IFINDEX, 2);
        fx
    }

    fn run(&self, packet: &[u8]) -> (u32, Vec<u8>) {
        self.t.tc(ProgramKind::FromPod, packet)
    }

    fn service(&mut self, port: u16, proto: Protocol, backends: &[(Ipv4Addr, u16)], spec: ServiceSpec) -> u32 {
        let spec = ServiceSpec {
            backends: backends
                .iter()
                .map(|&(ip, port)| Backend {
                    ip,
                    port,
                    terminating: false,
                })
                .collect(),
            ..spec
        };
        self.svc.upsert_service(VIP, port, proto, &spec).unwrap()
    }
}

// --- packets ---------------------------------------------------------------

/// Pod A (the sender of every test packet) to the service VIP.
fn to_vip(sport: u16, dport: u16, proto: u8) -> Flow {
    Flow {
        src: POD_A,
        sport,
        dst: VIP,
        dport,
        proto,
    }
}

fn spec() -> ServiceSpec {
    ServiceSpec::default()
}

// --- tests -----------------------------------------------------------------

#[test]
fn tcp_to_a_vip_is_dnated_and_replies_are_reverse_natted() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("tcp");
    let id = fx.service(80, Protocol::Tcp, &[(POD_B, 8080)], spec());
    let flow = to_vip(40000, 80, TCP);

    let (verdict, out) = fx.run(&flow.packet(SYN));
    assert_eq!(verdict, TC_ACT_REDIRECT, "backend B is local");
    let seen = parse(&out);
    assert_eq!(
        (seen.src, seen.sport, seen.dst, seen.dport),
        (POD_A, 40000, POD_B, 8080)
    );

    let ct: BTreeMap<CtKey, _> = fx.svc.conntrack().unwrap().into_iter().collect();
    assert_eq!(ct.len(), 2, "forward and reverse entry: {ct:?}");
    let fwd = ct[&CtKey::new(POD_A, 40000, VIP, 80, Protocol::Tcp)];
    assert_eq!((addr_of(fwd.xlate_daddr), u16::from_be(fwd.xlate_dport)), (POD_B, 8080));
    assert_eq!(
        (fwd.service_id, fwd.flags, fwd.state, fwd.packets),
        (id, 0, CT_SYN_SENT, 1)
    );
    let now = monotonic_now_ns();
    assert!(
        fwd.expires_ns > now + 50_000_000_000 && fwd.expires_ns <= now + 60_000_000_000,
        "SYN timeout 60 s"
    );
    let rev = ct[&CtKey::new(POD_B, 8080, POD_A, 40000, Protocol::Tcp)];
    assert_eq!((addr_of(rev.xlate_saddr), u16::from_be(rev.xlate_sport)), (VIP, 80));
    assert_eq!(rev.flags, CT_F_REVERSE);

    // The reply, sent by B: move B onto lo (and A away) to run it through from_pod.
    fx.place(POD_B, LO_IFINDEX, 2);
    fx.place(POD_A, OTHER_IFINDEX, 1);
    let (verdict, out) = fx.run(&seen.reply().packet(SYN | ACK));
    assert_eq!(verdict, TC_ACT_REDIRECT, "A is local");
    let back = parse(&out);
    assert_eq!(
        (back.src, back.sport, back.dst, back.dport),
        (VIP, 80, POD_A, 40000),
        "client only sees the VIP"
    );

    // The handshake's last ACK, from A again: same backend, now established.
    fx.place(POD_A, LO_IFINDEX, 1);
    fx.place(POD_B, OTHER_IFINDEX, 2);
    let (_, out) = fx.run(&flow.packet(ACK));
    assert_eq!(parse(&out).dst, POD_B);
    let fwd = fx
        .svc
        .conntrack()
        .unwrap()
        .into_iter()
        .find(|(k, _)| k.daddr == u32::from_ne_bytes(VIP.octets()));
    let (_, fwd) = fwd.expect("forward entry");
    assert_eq!((fwd.state, fwd.packets), (CT_ESTABLISHED, 2));
    assert!(
        fwd.expires_ns > monotonic_now_ns() + 5 * 3600 * 1_000_000_000,
        "established timeout 6 h"
    );
    assert!(fx.dp.drops().unwrap().is_empty(), "{:?}", fx.dp.drops());
}

#[test]
fn udp_to_a_vip_is_translated_both_ways_and_a_zero_checksum_stays_zero() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("udp");
    fx.service(53, Protocol::Udp, &[(REMOTE_1, 5353)], spec());
    let flow = to_vip(40001, 53, UDP);
    let (verdict, out) = fx.run(&flow.packet(0));
    assert_eq!(verdict, TC_ACT_OK, "remote backend: to the stack");
    let seen = parse(&out);
    assert_eq!(
        (seen.src, seen.sport, seen.dst, seen.dport),
        (POD_A, 40001, REMOTE_1, 5353)
    );

    // No checksum (0) must stay "no checksum", not become a wrong one.
    let flow0 = to_vip(40002, 53, UDP);
    let (_, out) = fx.run(&flow0.build(0, true));
    assert_eq!(&out[34 + 6..34 + 8], &[0, 0]);
    assert_eq!(parse(&out).dst, REMOTE_1);

    // The reply comes from a pod on another node in real life; here the
    // "remote" backend is placed on lo to push it through from_pod.
    fx.place(REMOTE_1, LO_IFINDEX, 3);
    fx.place(POD_A, OTHER_IFINDEX, 1);
    let (verdict, out) = fx.run(&seen.reply().packet(0));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let back = parse(&out);
    assert_eq!((back.src, back.sport, back.dst, back.dport), (VIP, 53, POD_A, 40001));
    assert_eq!(fx.svc.conntrack_len().unwrap(), 4);
}

fn spread(fx: &Fixture, ports: std::ops::Range<u16>) -> BTreeMap<u16, Ipv4Addr> {
    ports
        .map(|p| {
            let (verdict, out) = fx.run(&to_vip(p, 80, TCP).packet(SYN));
            assert_ne!(verdict, TC_ACT_SHOT, "port {p}: {:?}", fx.dp.drops());
            (p, parse(&out).dst)
        })
        .collect()
}

fn histogram(choice: &BTreeMap<u16, Ipv4Addr>) -> BTreeMap<Ipv4Addr, usize> {
    let mut h = BTreeMap::new();
    for ip in choice.values() {
        *h.entry(*ip).or_default() += 1;
    }
    h
}

const THREE: [(Ipv4Addr, u16); 3] = [(POD_B, 8080), (REMOTE_1, 8080), (REMOTE_2, 8080)];

#[test]
fn random_selection_spreads_connections_and_each_keeps_its_backend() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("random");
    fx.service(80, Protocol::Tcp, &THREE, spec());
    let first = spread(&fx, 20000..20300);
    let h = histogram(&first);
    eprintln!("random, 300 connections over 3 backends: {h:?}");
    assert_eq!(h.len(), 3);
    // Expected 100 each, standard deviation about 8.2: 60..140 is ~5 sigma.
    assert!(h.values().all(|n| (60..=140).contains(n)), "{h:?}");
    // Later packets of the same connections stay where they went.
    for p in (20000..20300).step_by(7) {
        let (_, out) = fx.run(&to_vip(p, 80, TCP).packet(ACK));
        assert_eq!(parse(&out).dst, first[&p], "port {p} kept its backend");
    }
    assert_eq!(fx.svc.conntrack_len().unwrap(), 600);
}

#[test]
fn maglev_is_deterministic_per_tuple_across_nodes() {
    if !require_root() {
        return;
    }
    let maglev = || ServiceSpec {
        algorithm: Algorithm::Maglev,
        ..spec()
    };
    let mut node1 = Fixture::new("maglev1");
    let mut node2 = Fixture::new("maglev2");
    // Different service ids and slot orders on the two nodes do not matter.
    node1.service(80, Protocol::Tcp, &THREE, maglev());
    node2.service(443, Protocol::Tcp, &[(REMOTE_1, 1)], spec());
    let mut reversed = THREE;
    reversed.reverse();
    node2.service(80, Protocol::Tcp, &reversed, maglev());

    let a = spread(&node1, 30000..30300);
    let b = spread(&node2, 30000..30300);
    assert_eq!(a, b, "same tuple, same backend on every node");
    let h = histogram(&a);
    eprintln!("maglev, 300 connections over 3 backends: {h:?}");
    assert!(h.values().all(|n| (60..=140).contains(n)), "{h:?}");
}

#[test]
fn client_ip_affinity_pins_a_client_to_one_backend() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("affinity");
    let affinity = ServiceSpec {
        affinity_timeout: Some(Duration::from_secs(10800)),
        ..spec()
    };
    fx.service(80, Protocol::Tcp, &THREE, affinity);
    let choice = spread(&fx, 40000..40050);
    assert_eq!(
        histogram(&choice).len(),
        1,
        "every connection of the client to one backend: {choice:?}"
    );

    // Adding a backend keeps the client where it is.
    let pinned = *choice.values().next().unwrap();
    let four = [THREE[0], THREE[1], THREE[2], (Ipv4Addr::new(10, 244, 3, 9), 8080)];
    fx.service(
        80,
        Protocol::Tcp,
        &four,
        ServiceSpec {
            affinity_timeout: Some(Duration::from_secs(10800)),
            ..spec()
        },
    );
    let later = spread(&fx, 41000..41020);
    assert!(later.values().all(|ip| *ip == pinned), "{later:?}");
}

/// A TCP segment from A to the VIP with the given header fields, TCP
/// options and payload, valid checksums.
fn segment(dport: u16, flags: u8, seq: u32, ack: u32, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = (((20 + options.len()) / 4) as u8) << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    tcp.extend_from_slice(options);
    tcp.extend_from_slice(payload);
    let c = fold(pseudo_sum(POD_A, VIP, TCP, tcp.len()) + sum16(&tcp));
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut frame = to_vip(40000, dport, TCP).packet(0)[..34].to_vec();
    frame[16..18].copy_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
    frame[24..26].copy_from_slice(&[0, 0]);
    let c = fold(sum16(&frame[14..34]));
    frame[24..26].copy_from_slice(&c.to_be_bytes());
    frame.extend_from_slice(&tcp);
    frame
}

/// Inserts IPv4 options (a multiple of 4 bytes) into a frame, keeping its
/// checksums valid (L4 checksums do not cover the IP header).
fn with_ip_options(frame: &[u8], options: &[u8]) -> Vec<u8> {
    let mut f = frame[..34].to_vec();
    f.extend_from_slice(options);
    f.extend_from_slice(&frame[34..]);
    f[14] = 0x40 | ((20 + options.len()) / 4) as u8;
    let tot = u16::from_be_bytes([f[16], f[17]]) + options.len() as u16;
    f[16..18].copy_from_slice(&tot.to_be_bytes());
    f[24..26].copy_from_slice(&[0, 0]);
    let c = fold(sum16(&f[14..14 + 20 + options.len()]));
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// A service whose only backend is terminating: no backend for new connections.
fn no_backend_service(fx: &mut Fixture, port: u16, proto: Protocol) {
    let terminating = ServiceSpec {
        backends: vec![Backend {
            ip: POD_B,
            port: 8080,
            terminating: true,
        }],
        ..spec()
    };
    fx.svc.upsert_service(VIP, port, proto, &terminating).unwrap();
}

/// The reply sent back to A: into A's own namespace, from its gateway.
fn assert_back_to_a(verdict: u32, out: &[u8]) {
    assert_eq!(verdict, TC_ACT_REDIRECT, "redirected into the client");
    let a_mac = [0x02, 1, 0, 0, 0, 1]; // Fixture::place, endpoint 1
    assert_eq!(
        (&out[0..6], &out[6..12]),
        (&a_mac[..], &a_mac[..]),
        "pod and host MAC of A"
    );
    assert_eq!(&out[12..14], &[0x08, 0x00]);
}

#[test]
fn a_syn_to_a_service_without_backends_is_answered_with_a_reset() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("rejecttcp");
    no_backend_service(&mut fx, 80, Protocol::Tcp);

    // A SYN with options and 4 bytes of data (TCP Fast Open style): the
    // RST acknowledges SYN + data and carries neither options nor data.
    let mss = [2, 4, 0x05, 0xb4];
    let (verdict, out) = fx.run(&segment(80, SYN, 0x1122_3344, 0, &mss, b"weir"));
    assert_back_to_a(verdict, &out);
    assert_eq!(out.len(), 14 + 20 + 20, "no options, no payload: {out:02x?}");
    let rst = parse(&out); // checks the IP and TCP checksums
    assert_eq!(
        (rst.src, rst.sport, rst.dst, rst.dport, rst.proto),
        (VIP, 80, POD_A, 40000, TCP),
        "from the VIP"
    );
    let (ip, tcp) = (&out[14..34], &out[34..]);
    assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 40, "IP total length");
    assert_eq!(ip[8], 64, "TTL");
    assert_eq!(u32::from_be_bytes(tcp[4..8].try_into().unwrap()), 0, "seq");
    assert_eq!(
        u32::from_be_bytes(tcp[8..12].try_into().unwrap()),
        0x1122_3344 + 1 + 4,
        "ack = seq + SYN + data"
    );
    assert_eq!((tcp[12], tcp[13]), (5 << 4, 0x04 | ACK), "RST|ACK, no options");
    assert_eq!(fx.drops(DropReason::NoServiceBackend), 1, "counted under its reason");
    assert_eq!(fx.svc.conntrack_len().unwrap(), 0, "nothing tracked");
    let (ingress, _) = fx.dp.endpoint_traffic(1).unwrap();
    assert_eq!(ingress.packets, 1, "the RST is A's ingress");

    // A segment with ACK (a connection the client still believes in): the
    // RST takes its sequence number from that ACK, and carries no ACK.
    let (verdict, out) = fx.run(&with_ip_options(
        &segment(80, ACK, 7, 0xdead_beef, &[], b""),
        &[1, 1, 1, 0],
    ));
    assert_back_to_a(verdict, &out);
    assert_eq!(out.len(), 14 + 24 + 20, "IP options kept: {out:02x?}");
    assert_eq!(fold(sum16(&out[14..38])), 0, "IPv4 header checksum over the options");
    let tcp = &out[38..];
    assert_eq!(fold(pseudo_sum(VIP, POD_A, TCP, 20) + sum16(tcp)), 0, "TCP checksum");
    assert_eq!(
        u32::from_be_bytes(tcp[4..8].try_into().unwrap()),
        0xdead_beef,
        "seq = the segment's ack"
    );
    assert_eq!(tcp[13], 0x04, "RST alone");

    // A RST is never answered: dropped, still counted.
    let (verdict, _) = fx.run(&segment(80, 0x04, 9, 0, &[], b""));
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(fx.drops(DropReason::NoServiceBackend), 3);

    // Another port of the VIP is not a service: routed untouched.
    let pkt = to_vip(40000, 81, TCP).packet(SYN);
    let (verdict, out) = fx.run(&pkt);
    assert_eq!((verdict, parse(&out).dst), (TC_ACT_OK, VIP));
}

#[test]
fn a_datagram_to_a_service_without_backends_gets_port_unreachable() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("rejectudp");
    fx.service(53, Protocol::Udp, &[], spec());

    for options in [&[][..], &[1, 1, 1, 0][..]] {
        let sent = with_ip_options(&to_vip(40001, 53, UDP).packet(0), options);
        let ihl = 20 + options.len();
        let (verdict, out) = fx.run(&sent);
        assert_back_to_a(verdict, &out);
        let quote_len = ihl + 8;
        assert_eq!(
            out.len(),
            14 + 20 + 8 + quote_len,
            "IP + ICMP + quoted header and 8 bytes: {out:02x?}"
        );
        let ip = &out[14..34];
        assert_eq!(ip[0], 0x45);
        assert_eq!(fold(sum16(ip)), 0, "IPv4 header checksum valid");
        assert_eq!(
            u16::from_be_bytes([ip[2], ip[3]]) as usize,
            20 + 8 + quote_len,
            "IP total length"
        );
        assert_eq!((ip[8], ip[9]), (64, 1), "TTL, ICMP");
        assert_eq!(
            Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            VIP,
            "from the address A contacted"
        );
        assert_eq!(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]), POD_A);
        let icmp = &out[34..];
        assert_eq!(fold(sum16(icmp)), 0, "ICMP checksum valid");
        assert_eq!((icmp[0], icmp[1]), (3, 3), "destination unreachable, port unreachable");
        assert_eq!(&icmp[4..8], &[0; 4]);
        assert_eq!(
            &icmp[8..],
            &sent[14..14 + quote_len],
            "quotes the original IP header and 8 bytes"
        );
    }
    assert_eq!(fx.drops(DropReason::NoServiceBackend), 2);
    assert_eq!(fx.svc.conntrack_len().unwrap(), 0);
}

#[test]
fn a_full_conntrack_table_refuses_new_connections_and_gc_frees_it() {
    if !require_root() {
        return;
    }
    let options = LoadOptions {
        max_entries: vec![(weir_datapath::lb::maps::CONNTRACK, 4)],
        ..Default::default()
    };
    let mut fx = Fixture::with_options("ctfull", &options);
    fx.service(80, Protocol::Tcp, &[(REMOTE_1, 8080)], spec());
    for p in [50000, 50001] {
        assert_eq!(fx.run(&to_vip(p, 80, TCP).packet(SYN)).0, TC_ACT_OK);
    }
    assert_eq!(fx.run(&to_vip(50002, 80, TCP).packet(SYN)).0, TC_ACT_SHOT);
    assert_eq!(fx.drops(DropReason::CtMapFull), 1);
    // Established connections are not affected by the full table.
    assert_eq!(fx.run(&to_vip(50000, 80, TCP).packet(ACK)).0, TC_ACT_OK);

    // Nothing has expired yet; 7 hours later everything has.
    assert_eq!(fx.svc.gc_conntrack(monotonic_now_ns()).unwrap(), 0);
    assert_eq!(
        fx.svc
            .gc_conntrack(monotonic_now_ns() + 7 * 3600 * 1_000_000_000)
            .unwrap(),
        4
    );
    assert_eq!(fx.run(&to_vip(50002, 80, TCP).packet(SYN)).0, TC_ACT_OK);
    assert_eq!(fx.svc.conntrack_len().unwrap(), 2);
}

#[test]
fn removing_a_backend_keeps_its_established_connections() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("remove");
    fx.service(80, Protocol::Tcp, &[(REMOTE_1, 8080), (REMOTE_2, 8080)], spec());
    let before = spread(&fx, 60000..60040);
    assert_eq!(histogram(&before).len(), 2);

    // REMOTE_1 goes away (scaled down): no new connections, old ones stay.
    fx.service(80, Protocol::Tcp, &[(REMOTE_2, 8080)], spec());
    assert_eq!(fx.svc.backends(1).unwrap().len(), 1, "its slot is gone");
    for (p, ip) in &before {
        let (_, out) = fx.run(&to_vip(*p, 80, TCP).packet(ACK));
        assert_eq!(parse(&out).dst, *ip, "port {p}");
    }
    let after = spread(&fx, 61000..61040);
    assert!(after.values().all(|ip| *ip == REMOTE_2));

    // And even once the whole service is gone.
    fx.svc.remove_service(VIP, 80, Protocol::Tcp).unwrap();
    fx.svc.remove_service(VIP, 80, Protocol::Tcp).unwrap();
    let (p, ip) = before.iter().next().unwrap();
    let (_, out) = fx.run(&to_vip(*p, 80, TCP).packet(ACK));
    assert_eq!(parse(&out).dst, *ip);
}

#[test]
fn udp_flows_to_a_backend_that_left_are_flushed() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("udpflush");
    fx.service(53, Protocol::Udp, &[(REMOTE_1, 5353)], spec());
    let flow = to_vip(40010, 53, UDP);
    assert_eq!(parse(&fx.run(&flow.packet(0)).1).dst, REMOTE_1);

    // Terminating (the pod still serves): the flow stays where it is.
    let draining = ServiceSpec {
        backends: vec![
            Backend {
                ip: REMOTE_1,
                port: 5353,
                terminating: true,
            },
            Backend {
                ip: REMOTE_2,
                port: 5353,
                terminating: false,
            },
        ],
        ..spec()
    };
    fx.svc.upsert_service(VIP, 53, Protocol::Udp, &draining).unwrap();
    assert_eq!(fx.svc.conntrack_len().unwrap(), 2);
    assert_eq!(parse(&fx.run(&flow.packet(0)).1).dst, REMOTE_1);

    // Gone: its entries go, and the same flow picks a live backend.
    fx.service(53, Protocol::Udp, &[(REMOTE_2, 5353)], spec());
    assert_eq!(fx.svc.conntrack_len().unwrap(), 0);
    assert_eq!(parse(&fx.run(&flow.packet(0)).1).dst, REMOTE_2);

    // And when the whole service goes.
    fx.svc.remove_service(VIP, 53, Protocol::Udp).unwrap();
    assert_eq!(fx.svc.conntrack_len().unwrap(), 0);
}

#[test]
fn a_pod_reaching_itself_through_its_service_is_hairpinned() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("hairpin");
    fx.service(80, Protocol::Tcp, &[(POD_A, 8080)], spec());
    let (verdict, out) = fx.run(&to_vip(40000, 80, TCP).packet(SYN));
    assert_eq!(verdict, TC_ACT_REDIRECT, "back into A itself");
    let seen = parse(&out);
    assert_eq!(
        (seen.src, seen.sport, seen.dst, seen.dport),
        (HAIRPIN_IP, 40000, POD_A, 8080),
        "not its own address"
    );

    // A answers the hairpin address, and gets the answer from the VIP.
    let (verdict, out) = fx.run(&seen.reply().packet(SYN | ACK));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let back = parse(&out);
    assert_eq!((back.src, back.sport, back.dst, back.dport), (VIP, 80, POD_A, 40000));
    let ct = fx.svc.conntrack().unwrap();
    assert!(ct.iter().all(|(_, e)| e.flags & CT_F_HAIRPIN != 0), "{ct:?}");
}

#[test]
fn sctp_is_translated_by_address_only() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("sctp");
    fx.service(3868, Protocol::Sctp, &[(REMOTE_1, 3868)], spec());
    let (verdict, out) = fx.run(&to_vip(40000, 3868, SCTP).packet(0));
    assert_eq!(verdict, TC_ACT_OK);
    let seen = parse(&out);
    assert_eq!((seen.dst, seen.dport), (REMOTE_1, 3868));
    assert_eq!(
        &out[34 + 8..34 + 12],
        &[0; 4],
        "CRC32c untouched: it does not cover addresses"
    );

    // A port change would break the CRC32c: refused when programming.
    let err = fx
        .svc
        .upsert_service(
            VIP,
            3868,
            Protocol::Sctp,
            &ServiceSpec {
                backends: vec![Backend {
                    ip: REMOTE_1,
                    port: 9999,
                    terminating: false,
                }],
                ..spec()
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("SCTP"), "{err}");
}

#[test]
fn a_new_syn_after_close_picks_a_live_backend() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("reuse");
    fx.service(80, Protocol::Tcp, &[(REMOTE_1, 8080)], spec());
    let flow = to_vip(45000, 80, TCP);
    assert_eq!(parse(&fx.run(&flow.packet(SYN)).1).dst, REMOTE_1);
    fx.run(&flow.packet(ACK | 0x01)); // FIN closes both directions
    assert!(
        fx.svc
            .conntrack()
            .unwrap()
            .iter()
            .all(|(_, e)| e.state == weir_datapath::lb::CT_CLOSING)
    );

    fx.service(80, Protocol::Tcp, &[(REMOTE_2, 8080)], spec());
    // Same 4-tuple reused for a new connection: REMOTE_1 is not a backend any more.
    assert_eq!(parse(&fx.run(&flow.packet(SYN)).1).dst, REMOTE_2);
}
