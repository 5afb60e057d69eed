//! Flow events through BPF_PROG_TEST_RUN: what the ring buffer holds after
//! real programs ran on real frames. A TCP connection is a handful of
//! events (start, SYN-ACK with the handshake time, the end with both
//! directions' counters), not one per packet; a service connection's
//! start carries the VIP and the backend in one record; drops carry their
//! reason and tuple; a traced endpoint reports every packet; a full ring
//! counts what it lost; recording off writes nothing. Needs root.

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use support::{LO_IFINDEX, Loaded, OTHER_IFINDEX, TC_ACT_REDIRECT, TC_ACT_SHOT};
use weir_datapath::abi::{CT_F_REVERSE, EP_F_TRACE, EpInfo, obs};
use weir_datapath::drop::DropReason;
use weir_datapath::events::{Event, EventKind, EventSource};
use weir_datapath::lb::{Backend, Protocol, ServiceMaps, ServiceSpec};
use weir_datapath::{LoadOptions, ProgramKind};
use weir_test_support::packet::{Flow, TCP, UDP};
use weir_test_support::require_root;

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;
const PSH: u8 = 0x08;

struct Fixture {
    t: Loaded,
    events: EventSource,
}

support::derefs_to_loaded!(Fixture);

impl Fixture {
    fn new(test: &str, options: &LoadOptions) -> Self {
        let mut t = Loaded::new(&format!("flow-{test}"), options);
        let events = t.dp.take_events().expect("event maps");
        let mut fx = Self { t, events };
        fx.place(POD_A, LO_IFINDEX, 1);
        fx.place(POD_B, OTHER_IFINDEX, 2);
        fx
    }

    /// Everything in the ring, decoded (a record that does not decode
    /// fails the test).
    fn drain(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(e) = self.events.next(Event::decode) {
            out.push(e.expect("a record this build reads"));
        }
        out
    }

    /// Pod A sends, as if from its own veth (lo in test runs).
    fn a_sends(&self, f: &Flow, flags: u8) -> u32 {
        self.tc(ProgramKind::FromPod, &f.packet(flags)).0
    }

    /// Pod B sends: it moves onto lo for the run, A off it.
    fn b_sends(&mut self, f: &Flow, flags: u8) -> u32 {
        self.place(POD_B, LO_IFINDEX, 2);
        self.place(POD_A, OTHER_IFINDEX, 1);
        let v = self.tc(ProgramKind::FromPod, &f.packet(flags)).0;
        self.place(POD_A, LO_IFINDEX, 1);
        self.place(POD_B, OTHER_IFINDEX, 2);
        v
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

fn kinds(events: &[Event]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind).collect()
}

#[test]
fn a_tcp_connection_is_a_handful_of_events_with_handshake_and_counters() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("tcp", &LoadOptions::default());
    let ab = flow(POD_A, 40000, POD_B, 80, TCP);

    assert_eq!(fx.a_sends(&ab, SYN), TC_ACT_REDIRECT);
    std::thread::sleep(Duration::from_millis(2));
    assert_eq!(fx.b_sends(&ab.reply(), SYN | ACK), TC_ACT_REDIRECT);
    fx.a_sends(&ab, ACK);
    for _ in 0..50 {
        fx.a_sends(&ab, PSH | ACK);
        fx.b_sends(&ab.reply(), ACK);
    }
    fx.a_sends(&ab, FIN | ACK);

    let events = fx.drain();
    assert_eq!(
        kinds(&events),
        [EventKind::FlowStart, EventKind::Tcp, EventKind::FlowEnd],
        "102 packets, three events: {events:#?}"
    );
    let (start, synack, end) = (&events[0], &events[1], &events[2]);
    assert_eq!((start.tuple.saddr, start.tuple.daddr), (POD_A, POD_B));
    assert_eq!(
        (start.tuple.sport, start.tuple.dport, start.tuple.proto),
        (40000, 80, TCP)
    );
    assert_eq!(start.xlate, start.tuple, "nothing translated");
    assert_eq!((start.obs, start.endpoint_id), (obs::FROM_POD as u8, 1));
    assert_eq!(start.tcp_flags, SYN);

    assert!(synack.is_reply(), "the answering direction");
    assert_eq!(synack.tuple.saddr, POD_B);
    assert_eq!(synack.tcp_flags, SYN | ACK);
    assert!(
        synack.handshake_ns >= 2_000_000,
        "SYN to SYN-ACK took at least the 2 ms slept: {}",
        synack.handshake_ns
    );

    assert!(!end.is_reply());
    assert_eq!(end.packets, 53, "A's SYN, ACK, 50 data, FIN");
    assert_eq!(end.rev_packets, 51, "B's SYN-ACK and 50 ACKs");
    assert_eq!(end.bytes, 53 * ab.packet(ACK).len() as u64);
    assert!(end.ts_ns > start.ts_ns);
}

#[test]
fn a_service_connection_carries_the_vip_and_the_backend_in_one_record() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("svc", &LoadOptions::default());
    let mut svc = ServiceMaps::open(&fx.pin_dir).unwrap();
    let spec = ServiceSpec {
        backends: vec![Backend {
            ip: POD_B,
            port: 8080,
            terminating: false,
        }],
        ..Default::default()
    };
    let id = svc.upsert_service(VIP, 80, Protocol::Tcp, &spec).unwrap();

    assert_eq!(fx.a_sends(&flow(POD_A, 40001, VIP, 80, TCP), SYN), TC_ACT_REDIRECT);
    let events = fx.drain();
    assert_eq!(kinds(&events), [EventKind::FlowStart]);
    let e = &events[0];
    assert_eq!((e.tuple.daddr, e.tuple.dport), (VIP, 80), "what the client dialled");
    assert_eq!((e.xlate.daddr, e.xlate.dport), (POD_B, 8080), "the backend");
    assert_eq!(e.service_id, id);

    // The backend's answer names both again, the other way round.
    assert_eq!(
        fx.b_sends(&flow(POD_B, 8080, POD_A, 40001, TCP), SYN | ACK),
        TC_ACT_REDIRECT
    );
    let events = fx.drain();
    assert_eq!(kinds(&events), [EventKind::Tcp]);
    assert_eq!(events[0].ct_flags & CT_F_REVERSE, CT_F_REVERSE);
    assert_eq!((events[0].xlate.saddr, events[0].xlate.sport), (VIP, 80));
}

#[test]
fn drops_carry_their_reason_and_tuple() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("drop", &LoadOptions::default());
    let mut svc = ServiceMaps::open(&fx.pin_dir).unwrap();
    // A spoofed source: B's address sent from A's interface.
    let spoofed = flow(POD_B, 1234, POD_A, 53, UDP);
    assert_eq!(fx.a_sends(&spoofed, 0), TC_ACT_SHOT);
    // A service without backends: answered with a RST, reported as dropped.
    svc.upsert_service(VIP, 81, Protocol::Tcp, &ServiceSpec::default())
        .unwrap();
    fx.a_sends(&flow(POD_A, 40002, VIP, 81, TCP), SYN);

    let events = fx.drain();
    assert_eq!(kinds(&events), [EventKind::Drop, EventKind::Drop], "{events:#?}");
    let (spoof, reject) = (&events[0], &events[1]);
    assert_eq!(spoof.drop_reason, Some(DropReason::InvalidSource));
    assert_eq!(
        (spoof.tuple.saddr, spoof.tuple.dport, spoof.tuple.proto),
        (POD_B, 53, UDP)
    );
    assert_eq!(spoof.obs, obs::FROM_POD as u8);
    assert_eq!(reject.drop_reason, Some(DropReason::NoServiceBackend));
    assert_eq!((reject.tuple.daddr, reject.tuple.dport), (VIP, 81));
    assert_eq!(reject.endpoint_id, 1, "the client pod");
    assert_eq!(reject.tcp_flags, SYN);
}

#[test]
fn a_traced_endpoint_reports_every_packet_and_others_do_not() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("trace", &LoadOptions::default());
    let ab = flow(POD_A, 40003, POD_B, 9000, UDP);
    fx.a_sends(&ab, 0);
    fx.a_sends(&ab, 0);
    assert_eq!(kinds(&fx.drain()), [EventKind::FlowStart], "untraced: aggregated");

    let mac = [0x02, 1, 0, 0, 0, 1];
    let traced = EpInfo {
        ifindex: LO_IFINDEX,
        endpoint_id: 1,
        identity: 100,
        pod_mac: mac,
        host_mac: mac,
        flags: EP_F_TRACE,
    };
    fx.dp.upsert_endpoint(POD_A.into(), traced).unwrap();
    for _ in 0..3 {
        fx.a_sends(&ab, 0);
    }
    let events = fx.drain();
    assert_eq!(kinds(&events), [EventKind::Trace; 3]);
    assert!(events.iter().all(|e| e.endpoint_id == 1 && e.tuple.dport == 9000));
}

#[test]
fn live_connections_report_periodically() {
    if !require_root() {
        return;
    }
    let options = LoadOptions {
        flow_report_interval: Some(Duration::from_millis(20)),
        ..Default::default()
    };
    let mut fx = Fixture::new("update", &options);
    let ab = flow(POD_A, 40004, POD_B, 9001, UDP);
    fx.a_sends(&ab, 0);
    fx.a_sends(&ab, 0);
    std::thread::sleep(Duration::from_millis(30));
    fx.a_sends(&ab, 0);
    let events = fx.drain();
    assert_eq!(kinds(&events), [EventKind::FlowStart, EventKind::FlowUpdate]);
    assert_eq!(events[1].packets, 3);
}

#[test]
fn a_full_ring_counts_what_it_lost_and_recording_off_writes_nothing() {
    if !require_root() {
        return;
    }
    // One page of ring: a few dozen records.
    let options = LoadOptions {
        max_entries: vec![(weir_datapath::events::MAP, 4096)],
        unlimited_drop_events: true,
        ..Default::default()
    };
    let mut fx = Fixture::new("lost", &options);
    let spoofed = flow(POD_B, 1, POD_A, 53, UDP);
    for _ in 0..200 {
        fx.a_sends(&spoofed, 0);
    }
    let kept = fx.drain().len() as u64;
    let lost = fx.events.lost().unwrap();
    assert!(kept > 0 && kept < 200, "kept {kept}");
    assert_eq!(kept + lost, 200, "every drop is an event or a counted loss");
    assert_eq!(
        fx.drops(DropReason::InvalidSource),
        200,
        "the packets are counted either way"
    );

    let off = LoadOptions {
        no_flow_events: true,
        ..Default::default()
    };
    let mut fx = Fixture::new("off", &off);
    fx.a_sends(&spoofed, 0);
    fx.a_sends(&flow(POD_A, 40005, POD_B, 80, TCP), SYN);
    assert!(fx.drain().is_empty());
    assert_eq!(fx.events.lost().unwrap(), 0);
    assert_eq!(fx.drops(DropReason::InvalidSource), 1);
}

#[test]
fn a_reused_port_into_a_pod_is_a_new_flow() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("reuse", &LoadOptions::default());
    // A remote client reaches B through the uplink, closes, and opens a
    // new connection from the same port.
    let remote = Ipv4Addr::new(10, 244, 2, 9);
    let f = flow(remote, 41000, POD_B, 80, TCP);
    let netdev = |fx: &Fixture, flags: u8| fx.tc(ProgramKind::FromNetdev, &f.packet(flags)).0;
    assert_eq!(netdev(&fx, SYN), TC_ACT_REDIRECT);
    netdev(&fx, FIN | ACK);
    fx.drain();
    assert_eq!(netdev(&fx, SYN), TC_ACT_REDIRECT);
    let events = fx.drain();
    assert_eq!(
        kinds(&events),
        [EventKind::FlowStart],
        "the new connection is seen: {events:#?}"
    );
    assert_eq!(events[0].packets, 1, "with its own counters");
}
