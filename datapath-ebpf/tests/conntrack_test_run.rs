//! The one conntrack table through BPF_PROG_TEST_RUN: every pod connection
//! is tracked once (two entries), whichever hook sees it first, and its
//! replies follow it; a connection translated elsewhere is not tracked a
//! second time; masquerading leaves the replies of connections the remote
//! opened alone; the GC collects every kind, and never a connection
//! reopened between its walk and its delete. Needs root (to load
//! programs), no namespaces.

mod support;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use support::{LO_IFINDEX, Loaded, OTHER_IFINDEX, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_UNSPEC, XDP_PASS};
use weir_datapath::abi::Config;
use weir_datapath::conntrack::{CT_ESTABLISHED, CT_F_NODEPORT, CT_F_REVERSE, CT_SYN_SENT, Conntrack, CtEntry, CtKey};
use weir_datapath::lb::{Backend, Protocol, ServiceMaps, ServiceSpec, TrafficPolicy, be_addr, monotonic_now_ns};
use weir_datapath::{LoadOptions, ProgramKind};
use weir_test_support::packet::{Flow, TCP, UDP, fold, ipv4_frame, parse, sum16};
use weir_test_support::require_root;

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
const NODE: Ipv4Addr = Ipv4Addr::new(172, 31, 97, 11);
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(172, 31, 97, 254);
const NODE_PORT: u16 = 30090;

const ICMP: u8 = 1;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;

/// A datapath (support::Loaded) with this node's IP in the config, pod A
/// on lo (the sender of from_pod's test packets) and pod B behind another
/// interface.
struct Fixture {
    t: Loaded,
    ct: Conntrack,
    svc: ServiceMaps,
}

support::derefs_to_loaded!(Fixture);

impl Fixture {
    fn new(test: &str, options: &LoadOptions) -> Self {
        let t = Loaded::new(&format!("ct-{test}"), options);
        let ct = Conntrack::open(&t.pin_dir).unwrap_or_else(|e| panic!("opening conntrack: {e:?}"));
        let svc = ServiceMaps::open(&t.pin_dir).unwrap_or_else(|e| panic!("opening service maps: {e:?}"));
        let mut fx = Self { t, ct, svc };
        fx.config(false);
        fx.place(POD_A, LO_IFINDEX, 1);
        fx.place(POD_B, OTHER_IFINDEX, 2);
        fx
    }

    fn config(&mut self, masquerade: bool) {
        let config = Config {
            node_ip: be_addr(NODE),
            ..Default::default()
        };
        let config = if masquerade {
            config.with_masquerade("10.244.0.0/16".parse().unwrap())
        } else {
            config
        };
        self.t.dp.set_config(config).unwrap();
    }

    fn entries(&self) -> BTreeMap<CtKey, CtEntry> {
        self.ct.entries().unwrap().into_iter().collect()
    }
}

fn flow(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, proto: u8) -> Flow {
    Flow {
        src,
        sport,
        dst,
        dport,
        proto,
    }
}

/// An ICMP echo request with identifier `id`.
fn echo_request(src: Ipv4Addr, id: u16, dst: Ipv4Addr) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&[0, 1]);
    let c = fold(sum16(&icmp));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4_frame(src, dst, ICMP, &icmp)
}

fn key(f: &Flow) -> CtKey {
    let proto = match f.proto {
        TCP => Protocol::Tcp,
        UDP => Protocol::Udp,
        p => panic!("no key for protocol {p}"),
    };
    CtKey::new(f.src, f.sport, f.dst, f.dport, proto)
}

#[test]
fn every_pod_connection_is_tracked_once_and_its_replies_follow_it() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("plain", &LoadOptions::default());

    // A opens a TCP connection to B on this node.
    let ab = flow(POD_A, 40000, POD_B, 80, TCP);
    assert_eq!(fx.tc(ProgramKind::FromPod, &ab.packet(SYN)).0, TC_ACT_REDIRECT);
    let ct = fx.entries();
    assert_eq!(ct.len(), 2, "one pair: {ct:?}");
    let fwd = ct[&key(&ab)];
    assert_eq!(
        (fwd.flags, fwd.service_id, fwd.state, fwd.packets),
        (0, 0, CT_SYN_SENT, 1)
    );
    let rev = ct[&key(&ab.reply())];
    assert_eq!((rev.flags, rev.packets), (CT_F_REVERSE, 0));
    assert_eq!(fwd.partner_key(TCP), key(&ab.reply()), "nothing translated");

    // B answers (through its own from_pod), A completes the handshake.
    fx.place(POD_B, LO_IFINDEX, 2);
    fx.place(POD_A, OTHER_IFINDEX, 1);
    let (verdict, out) = fx.tc(ProgramKind::FromPod, &ab.reply().packet(SYN | ACK));
    assert_eq!((verdict, parse(&out)), (TC_ACT_REDIRECT, ab.reply()), "untouched");
    fx.place(POD_A, LO_IFINDEX, 1);
    fx.place(POD_B, OTHER_IFINDEX, 2);
    fx.tc(ProgramKind::FromPod, &ab.packet(ACK));
    let ct = fx.entries();
    assert_eq!(ct.len(), 2, "replies follow the pair, no new one");
    assert_eq!((ct[&key(&ab)].state, ct[&key(&ab)].packets), (CT_ESTABLISHED, 2));
    assert_eq!(ct[&key(&ab.reply())].packets, 1);

    // A pod on another node reaches B through the uplink: tracked where it
    // enters B, and B's reply follows that pair.
    let rb = flow(REMOTE_POD, 5000, POD_B, 53, UDP);
    assert_eq!(fx.tc(ProgramKind::FromNetdev, &rb.packet(0)).0, TC_ACT_REDIRECT);
    assert_eq!(fx.entries().len(), 4);
    fx.place(POD_B, LO_IFINDEX, 2);
    assert_eq!(
        fx.tc(ProgramKind::FromPod, &rb.reply().packet(0)).0,
        TC_ACT_OK,
        "to the stack"
    );
    let ct = fx.entries();
    assert_eq!(ct.len(), 4);
    assert_eq!((ct[&key(&rb)].packets, ct[&key(&rb.reply())].packets), (1, 1));
    fx.place(POD_B, OTHER_IFINDEX, 2);

    // ICMP echo: the identifier is the request's source port and the
    // reply's destination port.
    assert_eq!(
        fx.tc(ProgramKind::FromPod, &echo_request(POD_A, 7, POD_B)).0,
        TC_ACT_REDIRECT
    );
    let ct = fx.entries();
    assert_eq!(ct.len(), 6);
    let echo = CtKey {
        saddr: be_addr(POD_A),
        daddr: be_addr(POD_B),
        sport: 7u16.to_be(),
        dport: 0,
        proto: ICMP,
        pad: [0; 3],
    };
    assert_eq!(ct[&echo].flags, 0);
    assert_eq!(ct[&ct[&echo].partner_key(ICMP)].flags, CT_F_REVERSE);

    // The node's stack sending to A (to_pod) is tracked too.
    let na = flow(NODE, 6000, POD_A, 8080, TCP);
    assert_eq!(fx.tc(ProgramKind::ToPod, &na.packet(SYN)).0, TC_ACT_OK);
    assert_eq!(fx.entries().len(), 8);
    assert_eq!(fx.entries()[&key(&na)].flags, 0);
}

#[test]
fn the_backend_side_of_a_nodeport_connection_xdp_translated_is_not_tracked_again() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("npxdp", &LoadOptions::default());
    let spec = ServiceSpec {
        backends: vec![Backend {
            ip: POD_B,
            port: 8080,
            terminating: false,
        }],
        external: Some(TrafficPolicy::Cluster),
        ..Default::default()
    };
    fx.svc.upsert_service(NODE, NODE_PORT, Protocol::Tcp, &spec).unwrap();
    let f = flow(EXTERNAL, 40000, NODE, NODE_PORT, TCP);
    let (verdict, translated) = fx.xdp(&f.packet(SYN));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(parse(&translated).dst, POD_B);

    // TC sees what XDP made of it (client -> backend): delivered, and the
    // connection's reverse entry is left as NodePort made it.
    assert_eq!(fx.tc(ProgramKind::FromNetdev, &translated).0, TC_ACT_REDIRECT);
    let ct = fx.entries();
    assert_eq!(ct.len(), 2, "{ct:?}");
    let to_b = parse(&translated);
    assert_eq!(ct[&key(&to_b.reply())].flags, CT_F_NODEPORT | CT_F_REVERSE);

    // So B's reply still leaves as the NodePort.
    fx.place(POD_B, LO_IFINDEX, 2);
    let (_, out) = fx.tc(ProgramKind::FromPod, &to_b.reply().packet(SYN | ACK));
    let back = parse(&out);
    assert_eq!((back.src, back.sport, back.dst), (NODE, NODE_PORT, EXTERNAL));
}

#[test]
fn masquerading_leaves_replies_of_connections_the_remote_opened_alone() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("masqrev", &LoadOptions::default());
    fx.config(true);

    // Native routing: a host outside the cluster reaches pod A directly.
    let ea = flow(EXTERNAL, 7000, POD_A, 80, TCP);
    assert_eq!(fx.tc(ProgramKind::FromNetdev, &ea.packet(SYN)).0, TC_ACT_REDIRECT);
    fx.tc(ProgramKind::FromPod, &ea.reply().packet(SYN | ACK));
    let reply = ea.reply().packet(SYN | ACK);
    assert_eq!(
        fx.tc(ProgramKind::ToNetdev, &reply),
        (TC_ACT_UNSPEC, reply.clone()),
        "the remote expects the pod's own address"
    );
    assert_eq!(fx.entries().len(), 2);

    // A connection A opens to the same host is masqueraded, and from_pod
    // left it to to_netdev (one pair, the masquerade's).
    let ae = flow(POD_A, 41000, EXTERNAL, 80, TCP);
    fx.tc(ProgramKind::FromPod, &ae.packet(SYN));
    assert_eq!(fx.entries().len(), 2, "from_pod tracks nothing it will masquerade");
    let (verdict, out) = fx.tc(ProgramKind::ToNetdev, &ae.packet(SYN));
    assert_eq!((verdict, parse(&out).src), (TC_ACT_OK, NODE));
    assert_eq!(fx.entries().len(), 4);
}

#[test]
fn a_full_table_leaves_plain_connections_flowing_untracked() {
    if !require_root() {
        return;
    }
    let options = LoadOptions {
        max_entries: vec![(weir_datapath::conntrack::MAP, 4)],
        ..Default::default()
    };
    let fx = Fixture::new("full", &options);
    for p in [1, 2, 3] {
        let f = flow(POD_A, 40000 + p, POD_B, 80, TCP);
        assert_eq!(
            fx.tc(ProgramKind::FromPod, &f.packet(SYN)).0,
            TC_ACT_REDIRECT,
            "port {p}"
        );
    }
    assert_eq!(fx.entries().len(), 4, "two tracked, the third untracked");
    assert!(fx.dp.drops().unwrap().is_empty(), "{:?}", fx.dp.drops());
}

#[test]
fn gc_collects_thousands_of_connections() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("gc", &LoadOptions::default());
    for p in 0..5000u16 {
        let f = flow(POD_A, 10000 + p, POD_B, 53, UDP);
        assert_eq!(fx.tc(ProgramKind::FromPod, &f.packet(0)).0, TC_ACT_REDIRECT);
    }
    assert_eq!(fx.ct.len().unwrap(), 10_000);
    assert_eq!(fx.ct.gc(monotonic_now_ns()).unwrap(), 0, "nothing expired yet");
    // UDP idles out after 60 s.
    assert_eq!(fx.ct.gc(monotonic_now_ns() + 61_000_000_000).unwrap(), 10_000);
    assert!(fx.ct.is_empty().unwrap());
}

/// A TCP service at `vip`:80 with one backend (a remote pod).
fn one_backend_service(fx: &mut Fixture, vip: Ipv4Addr) {
    let spec = ServiceSpec {
        backends: vec![Backend {
            ip: REMOTE_POD,
            port: 8080,
            terminating: false,
        }],
        ..Default::default()
    };
    fx.svc.upsert_service(vip, 80, Protocol::Tcp, &spec).unwrap();
}

/// A datapath whose pods each have a share of 4 entries (two connections),
/// and a TCP service at `vip`:80 with one backend (a remote pod).
fn share_fixture(test: &str, vip: Ipv4Addr) -> (Fixture, Ipv4Addr) {
    let options = LoadOptions {
        ct_endpoint_max: Some(4),
        ..Default::default()
    };
    let mut fx = Fixture::new(test, &options);
    one_backend_service(&mut fx, vip);
    (fx, vip)
}

/// Pod A's SYN from `port` to `vip`:80: what from_pod does with it.
fn syn_to(fx: &mut Fixture, vip: Ipv4Addr, port: u16) -> u32 {
    fx.tc(ProgramKind::FromPod, &flow(POD_A, port, vip, 80, TCP).packet(SYN))
        .0
}

#[test]
fn one_pod_cannot_take_more_than_its_share_of_the_table() {
    if !require_root() {
        return;
    }
    let (mut fx, vip) = share_fixture("share", Ipv4Addr::new(10, 96, 9, 9));

    // Pod A fills its share: two service connections.
    for p in [40000, 40001] {
        let f = flow(POD_A, p, vip, 80, TCP);
        assert_eq!(fx.tc(ProgramKind::FromPod, &f.packet(SYN)).0, TC_ACT_OK, "port {p}");
    }
    let third = flow(POD_A, 40002, vip, 80, TCP);
    assert_eq!(fx.tc(ProgramKind::FromPod, &third.packet(SYN)).0, support::TC_ACT_SHOT);
    assert_eq!(fx.drops(weir_datapath::drop::DropReason::CtEndpointLimit), 1);
    // A plain connection over the share still flows, untracked.
    let plain = flow(POD_A, 40003, POD_B, 80, TCP);
    assert_eq!(fx.tc(ProgramKind::FromPod, &plain.packet(SYN)).0, TC_ACT_REDIRECT);
    assert_eq!(fx.entries().len(), 4);

    // Pod B has a share of its own.
    fx.place(POD_B, LO_IFINDEX, 2);
    fx.place(POD_A, OTHER_IFINDEX, 1);
    let b = flow(POD_B, 41000, vip, 80, TCP);
    assert_eq!(
        fx.tc(ProgramKind::FromPod, &b.packet(SYN)).0,
        TC_ACT_OK,
        "another pod is not refused"
    );
    assert_eq!(fx.entries().len(), 6);

    // A's connections expire and the GC releases them: A may connect again.
    assert_eq!(fx.ct.gc(monotonic_now_ns() + 7 * 3600 * 1_000_000_000).unwrap(), 6);
    fx.place(POD_A, LO_IFINDEX, 1);
    fx.place(POD_B, OTHER_IFINDEX, 2);
    assert_eq!(fx.tc(ProgramKind::FromPod, &third.packet(SYN)).0, TC_ACT_OK, "released");
}

#[test]
fn a_closed_connection_hands_back_its_share_at_once() {
    if !require_root() {
        return;
    }
    let (mut fx, vip) = share_fixture("closed", Ipv4Addr::new(10, 96, 9, 10));
    let syn = |fx: &mut Fixture, port: u16| syn_to(fx, vip, port);

    assert_eq!(syn(&mut fx, 42000), TC_ACT_OK);
    assert_eq!(syn(&mut fx, 42001), TC_ACT_OK);
    assert_eq!(syn(&mut fx, 42002), support::TC_ACT_SHOT, "the share is full");
    // The client closes its first connection: no GC has run, yet A may
    // open another at once (a pod churning short connections is held to
    // what it has open, not to what it closed in the last 10 s).
    let fin = flow(POD_A, 42000, vip, 80, TCP).packet(FIN | ACK);
    assert_eq!(fx.tc(ProgramKind::FromPod, &fin).0, TC_ACT_OK);
    assert_eq!(fx.entries().len(), 4, "the closed connection's entries linger");
    assert_eq!(
        syn(&mut fx, 42003),
        TC_ACT_OK,
        "the closed connection's share came back"
    );
    assert_eq!(syn(&mut fx, 42004), support::TC_ACT_SHOT, "two open again: full");
    // Its entries are collected after the closing timeout, and released
    // only once: the share is still two open connections.
    assert_eq!(fx.ct.gc(monotonic_now_ns() + 11_000_000_000).unwrap(), 2);
    assert_eq!(
        syn(&mut fx, 42005),
        support::TC_ACT_SHOT,
        "the GC released nothing twice"
    );
    assert_eq!(fx.drops(weir_datapath::drop::DropReason::CtEndpointLimit), 3);
}

#[test]
fn a_connection_reopened_between_the_gcs_walk_and_its_delete_keeps_its_entries_and_share() {
    if !require_root() {
        return;
    }
    let (mut fx, vip) = share_fixture("reopen", Ipv4Addr::new(10, 96, 9, 11));
    let syn = |fx: &mut Fixture, port: u16| syn_to(fx, vip, port);
    assert_eq!(syn(&mut fx, 43000), TC_ACT_OK);
    assert_eq!(syn(&mut fx, 43001), TC_ACT_OK);
    let fin = flow(POD_A, 43000, vip, 80, TCP).packet(FIN | ACK);
    assert_eq!(fx.tc(ProgramKind::FromPod, &fin).0, TC_ACT_OK);

    // The GC walks the table 11 s on: the closed connection has expired.
    let later = monotonic_now_ns() + 11_000_000_000;
    let walked: std::collections::HashMap<CtKey, CtEntry> = fx.ct.entries().unwrap().into_iter().collect();
    let doomed: Vec<(CtKey, CtEntry)> = weir_datapath::conntrack::expired(&walked, later)
        .into_iter()
        .map(|k| (k, walked[&k]))
        .collect();
    assert_eq!(doomed.len(), 2, "the closed connection's two entries");
    // Before it deletes them, the client opens a new connection from the
    // same port: the datapath takes the keys over, charged to pod A.
    assert_eq!(syn(&mut fx, 43000), TC_ACT_OK);
    fx.ct.remove(&doomed).unwrap();
    let reopened = key(&flow(POD_A, 43000, vip, 80, TCP));
    assert!(
        fx.entries().contains_key(&reopened),
        "the delete left the new connection tracked"
    );
    assert_eq!(syn(&mut fx, 43002), support::TC_ACT_SHOT, "two open: the share is full");

    // Everything expires and is collected: A's whole share comes back,
    // none of it leaked to the entries the GC took out.
    fx.ct.gc(monotonic_now_ns() + 7 * 3600 * 1_000_000_000).unwrap();
    assert!(fx.entries().is_empty());
    assert_eq!(syn(&mut fx, 43010), TC_ACT_OK);
    assert_eq!(syn(&mut fx, 43011), TC_ACT_OK, "no share leaked");
}

#[test]
fn a_flooding_pod_is_held_to_its_default_share() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("flood", &LoadOptions::default());
    // 20,000 new UDP flows from A (40,000 entries' worth), as fast as the
    // datapath takes them.
    let start = std::time::Instant::now();
    for i in 0..20_000u32 {
        let f = flow(POD_A, 10_000 + (i % 50_000) as u16, POD_B, 1 + (i / 50_000) as u16, UDP);
        fx.tc(ProgramKind::FromPod, &f.packet(0));
    }
    let flood = start.elapsed();
    let share = weir_datapath::conntrack::CT_MAX_ENTRIES as usize / 8;
    assert_eq!(fx.entries().len(), share, "A holds exactly its share");
    // B still gets its connections tracked (and, through a service, made).
    fx.place(POD_B, LO_IFINDEX, 2);
    fx.place(POD_A, OTHER_IFINDEX, 1);
    let b = flow(POD_B, 30000, POD_A, 80, TCP);
    assert_eq!(fx.tc(ProgramKind::FromPod, &b.packet(SYN)).0, TC_ACT_REDIRECT);
    assert_eq!(fx.entries().len(), share + 2, "B's connection is tracked");
    eprintln!(
        "flood of 20000 flows in {flood:?}: A holds {share} of {} entries, B unaffected",
        weir_datapath::conntrack::CT_MAX_ENTRIES
    );
}

#[test]
fn a_full_table_sheds_closed_connections_before_it_refuses_a_new_one() {
    if !require_root() {
        return;
    }
    // A table of 64 entries (32 connections), so filling it is quick.
    let options = LoadOptions {
        max_entries: vec![("weir_ct4", 64)],
        ..Default::default()
    };
    let mut fx = Fixture::new("full-closed", &options);
    let vip = Ipv4Addr::new(10, 96, 9, 10);
    one_backend_service(&mut fx, vip);
    let open = |fx: &mut Fixture, port: u16| {
        fx.tc(ProgramKind::FromPod, &flow(POD_A, port, vip, 80, TCP).packet(SYN))
            .0
    };

    // A busy client fills the table with connections it opened and closed:
    // their entries wait out the closing timeout and the GC.
    for p in 0..32u16 {
        assert_eq!(open(&mut fx, 40000 + p), TC_ACT_OK, "port {}", 40000 + p);
        let fin = flow(POD_A, 40000 + p, vip, 80, TCP).packet(FIN | ACK);
        assert_eq!(fx.tc(ProgramKind::FromPod, &fin).0, TC_ACT_OK);
    }
    assert_eq!(fx.entries().len(), 64, "the table is full");

    // New connections take the places of the oldest closed ones, not a
    // ct_map_full drop.
    for p in 0..32u16 {
        let verdict = open(&mut fx, 41000 + p);
        let drops = fx.drops(weir_datapath::drop::DropReason::CtMapFull);
        assert_eq!(
            verdict, TC_ACT_OK,
            "new connection {p} on a full table ({drops} ct_map_full drops)"
        );
    }
    assert_eq!(fx.drops(weir_datapath::drop::DropReason::CtMapFull), 0);
    let ct = fx.entries();
    assert_eq!(ct.len(), 64);
    assert!(
        ct.keys()
            .all(|k| u16::from_be(k.sport) >= 41000 || u16::from_be(k.dport) >= 41000),
        "only the open connections are left: {ct:?}"
    );

    // Open connections are never shed: the next one is refused, counted.
    assert_eq!(open(&mut fx, 42000), support::TC_ACT_SHOT);
    assert_eq!(fx.drops(weir_datapath::drop::DropReason::CtMapFull), 1);
    assert_eq!(fx.entries().len(), 64);
}
