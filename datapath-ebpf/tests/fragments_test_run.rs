//! Fragmented datagrams through BPF_PROG_TEST_RUN: every fragment of a
//! translated datagram is translated (ClusterIP, its replies, masquerade),
//! the later ones by the ports their first fragment recorded, and a later
//! fragment whose first one was never seen is dropped and counted. Needs
//! root (to load programs), no namespaces.

mod support;

use std::net::Ipv4Addr;

use support::{LO_IFINDEX, Loaded, OTHER_IFINDEX, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT};
use weir_datapath::abi::Config;
use weir_datapath::drop::DropReason;
use weir_datapath::lb::{Backend, Protocol, ServiceMaps, ServiceSpec, be_addr};
use weir_datapath::{LoadOptions, ProgramKind};
use weir_test_support::packet::{UDP, fold, ipv4_fragment, sum16};
use weir_test_support::require_root;

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 53);
const NODE: Ipv4Addr = Ipv4Addr::new(172, 31, 96, 11);
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(172, 31, 96, 254);

/// The two halves of one UDP datagram (no UDP checksum: fragments do not
/// carry the whole datagram a checksum would cover): a first fragment with
/// the UDP header and 24 bytes, and a later one with 16 bytes at offset 32.
fn datagram(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, id: u16) -> (Vec<u8>, Vec<u8>) {
    let mut first = Vec::new();
    first.extend_from_slice(&sport.to_be_bytes());
    first.extend_from_slice(&dport.to_be_bytes());
    first.extend_from_slice(&(8u16 + 24 + 16).to_be_bytes());
    first.extend_from_slice(&[0, 0]);
    first.extend_from_slice(&[0xaa; 24]);
    (
        ipv4_fragment(src, dst, UDP, id, 0, true, &first),
        ipv4_fragment(src, dst, UDP, id, 4, false, &[0xbb; 16]),
    )
}

/// Source, destination and (for a first fragment) UDP ports of a frame,
/// after checking its IPv4 header checksum.
fn addrs(frame: &[u8]) -> (Ipv4Addr, Ipv4Addr) {
    let ip = &frame[14..34];
    assert_eq!(fold(sum16(ip)), 0, "IPv4 header checksum valid");
    (
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
    )
}

fn ports(frame: &[u8]) -> (u16, u16) {
    let l4 = &frame[34..];
    (u16::from_be_bytes([l4[0], l4[1]]), u16::from_be_bytes([l4[2], l4[3]]))
}

fn fixture(test: &str) -> (Loaded, ServiceMaps) {
    let mut t = Loaded::new(&format!("frag-{test}"), &LoadOptions::default());
    t.dp.set_config(
        Config {
            node_ip: be_addr(NODE),
            ..Default::default()
        }
        .with_masquerade("10.244.0.0/16".parse().unwrap()),
    )
    .unwrap();
    t.place(POD_A, LO_IFINDEX, 1);
    let svc = ServiceMaps::open(&t.pin_dir).unwrap();
    (t, svc)
}

#[test]
fn every_fragment_of_a_service_datagram_and_of_its_reply_is_translated() {
    if !require_root() {
        return;
    }
    let (mut t, mut svc) = fixture("svc");
    let spec = ServiceSpec {
        backends: vec![Backend {
            ip: BACKEND,
            port: 5353,
            terminating: false,
        }],
        ..Default::default()
    };
    svc.upsert_service(VIP, 53, Protocol::Udp, &spec).unwrap();

    let (first, later) = datagram(POD_A, 40000, VIP, 53, 0x1234);
    let (verdict, out) = t.tc(ProgramKind::FromPod, &first);
    assert_eq!(verdict, TC_ACT_OK, "remote backend: to the stack");
    assert_eq!(addrs(&out), (POD_A, BACKEND));
    assert_eq!(ports(&out), (40000, 5353));
    let (verdict, out) = t.tc(ProgramKind::FromPod, &later);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(addrs(&out), (POD_A, BACKEND), "the later fragment follows its first");
    assert_eq!(&out[34..], &later[34..], "its bytes are not touched");

    // The backend's fragmented reply: both halves come from the VIP.
    t.place(BACKEND, LO_IFINDEX, 3);
    t.place(POD_A, OTHER_IFINDEX, 1);
    let (first, later) = datagram(BACKEND, 5353, POD_A, 40000, 0x4321);
    let (verdict, out) = t.tc(ProgramKind::FromPod, &first);
    assert_eq!(verdict, TC_ACT_REDIRECT, "A is local");
    assert_eq!((addrs(&out), ports(&out)), ((VIP, POD_A), (53, 40000)));
    let (verdict, out) = t.tc(ProgramKind::FromPod, &later);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(addrs(&out), (VIP, POD_A));
    assert!(t.dp.drops().unwrap().is_empty(), "{:?}", t.dp.drops());
}

#[test]
fn every_fragment_of_a_masqueraded_datagram_and_of_its_reply_is_translated() {
    if !require_root() {
        return;
    }
    let (t, _svc) = fixture("masq");
    let (first, later) = datagram(POD_A, 41000, EXTERNAL, 53, 0x0101);
    let (verdict, out) = t.tc(ProgramKind::ToNetdev, &first);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(addrs(&out), (NODE, EXTERNAL));
    let node_port = ports(&out).0;
    let (verdict, out) = t.tc(ProgramKind::ToNetdev, &later);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        addrs(&out),
        (NODE, EXTERNAL),
        "the later fragment leaves as the node too"
    );

    let (first, later) = datagram(EXTERNAL, 53, NODE, node_port, 0x0202);
    let (verdict, out) = t.tc(ProgramKind::FromNetdev, &first);
    assert_eq!(verdict, TC_ACT_REDIRECT, "the reply goes into pod A");
    assert_eq!((addrs(&out), ports(&out)), ((EXTERNAL, POD_A), (53, 41000)));
    let (verdict, out) = t.tc(ProgramKind::FromNetdev, &later);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(addrs(&out), (EXTERNAL, POD_A));
}

#[test]
fn a_later_fragment_without_its_first_is_dropped_and_counted() {
    if !require_root() {
        return;
    }
    let (t, _svc) = fixture("orphan");
    let (_, later) = datagram(POD_A, 42000, VIP, 53, 0x0707);
    assert_eq!(t.tc(ProgramKind::FromPod, &later).0, TC_ACT_SHOT);
    assert_eq!(t.drops(DropReason::FragNotFound), 1);
    let (_, later) = datagram(POD_A, 42001, EXTERNAL, 53, 0x0808);
    assert_eq!(
        t.tc(ProgramKind::ToNetdev, &later).0,
        TC_ACT_SHOT,
        "masquerade cannot place it either"
    );
    assert_eq!(t.drops(DropReason::FragNotFound), 2);
}
