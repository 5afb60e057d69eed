//! A datapath event becomes a Hubble flow: the wire tuple and what the
//! connection made of it (the VIP dialled, the backend reached, the SNAT
//! address) in one record, the endpoints named with Kubernetes context as
//! it is at that moment, the verdict, Hubble's codes for the drop reason
//! and the observation point, and weir's own details. Pure.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use weir_datapath::abi::{DIR_EGRESS, DIR_INGRESS, obs};
use weir_datapath::drop::DropReason;
use weir_datapath::events::{Event, EventKind};
use weir_proto::flow::{
    self, CiliumEventType, Endpoint, Flow, FlowType, Ip, IpVersion, Layer4, NetworkInterface, TcpFlags,
    TraceObservationPoint, TraceReason, TrafficDirection, Verdict, layer4,
};
use weir_proto::weir::flow::v1::{Address, FlowDetails};

use crate::names::{FlowNames, Frontend};
use crate::policy_names::{PolicyName, PolicyNames};
use weir_datapath::policy::VerdictKind;

/// Hubble's monitor message types (Flow.event_type.type).
pub const MESSAGE_DROP: i32 = 1;
/// A per-packet capture of a traced endpoint (Hubble's debug capture type).
pub const MESSAGE_CAPTURE: i32 = 3;
pub const MESSAGE_TRACE: i32 = 4;

/// CLOCK_MONOTONIC (the datapath's clock) to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall_at_zero: SystemTime,
}

impl Clock {
    /// Reads both clocks now; cheap enough to redo per batch of events, so
    /// a wall-clock step shows up promptly.
    pub fn now() -> Self {
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
            .unwrap_or_default();
        Self {
            wall_at_zero: SystemTime::now() - mono,
        }
    }

    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        self.wall_at_zero + Duration::from_nanos(mono_ns)
    }
}

/// Hubble's drop code for a weir reason (weir's own, finer reason is in
/// the flow's details).
pub fn hubble_drop_code(r: DropReason) -> flow::DropReason {
    use DropReason as W;
    use flow::DropReason as H;
    match r {
        W::TruncatedEth | W::MalformedIpv4 => H::InvalidPacketDropped,
        W::UnsupportedL3 => H::UnsupportedL3Protocol,
        W::InvalidSource | W::TunnelSource | W::RoutedSource => H::InvalidSourceIp,
        W::TruncatedL4 => H::CtTruncatedOrInvalidHeader,
        W::TtlExceeded => H::TtlExceeded,
        W::RewriteFailed => H::ErrorWritingToPacket,
        W::CtMapFull | W::CtEndpointLimit | W::CtNodeLimit => H::CtMapInsertionFailed,
        W::NoServiceBackend | W::NoLocalBackend => H::ServiceBackendNotFound,
        W::SnatPortsExhausted | W::NatNoPort => H::NoMappingForNatMasquerade,
        W::MissedTailCall => H::MissedTailCall,
        W::FragNotFound => H::FirstLogicalDatagramFragmentNotFound,
        W::PolicyDenied => H::PolicyDenied,
        W::PolicyDeny => H::PolicyDeny,
    }
}

/// weir's observation point: its name, Hubble's point and the sub-type
/// Hubble's monitor gives trace events seen there.
pub fn observation(point: u8) -> (&'static str, TraceObservationPoint, i32) {
    use TraceObservationPoint as P;
    match u32::from(point) {
        obs::FROM_POD => ("from-pod", P::FromEndpoint, 5),
        obs::TO_POD => ("to-pod", P::ToEndpoint, 0),
        obs::FROM_NETDEV => ("from-netdev", P::FromNetwork, 10),
        obs::TO_NETDEV => ("to-netdev", P::ToNetwork, 11),
        obs::FROM_OVERLAY => ("from-overlay", P::FromOverlay, 9),
        obs::TO_OVERLAY => ("to-overlay", P::ToOverlay, 4),
        obs::XDP => ("xdp", P::FromNetwork, 10),
        _ => ("unknown", P::UnknownPoint, 0),
    }
}

fn event_name(k: EventKind) -> &'static str {
    match k {
        EventKind::FlowStart => "flow-start",
        EventKind::Tcp => "tcp",
        EventKind::FlowUpdate => "update",
        EventKind::FlowEnd => "end",
        EventKind::Drop => "drop",
        EventKind::Trace => "trace",
    }
}

/// An address as text without the formatting machinery (`Display` costs
/// more than the rest of a flow's addresses together; every flow has two).
pub fn ip_string(ip: Ipv4Addr) -> String {
    let mut s = String::with_capacity(15);
    for (i, o) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        if o >= 100 {
            s.push((b'0' + o / 100) as char);
        }
        if o >= 10 {
            s.push((b'0' + (o / 10) % 10) as char);
        }
        s.push((b'0' + o % 10) as char);
    }
    s
}

fn addr(ip: Ipv4Addr, port: u16) -> Address {
    Address {
        ip: ip_string(ip),
        port: u32::from(port),
    }
}

/// What the wire carried and what the connection made of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The flow's two ends as a user thinks of them: the sender, and the
    /// pod (or remote) it reached after translation.
    pub src: (Ipv4Addr, u16),
    pub dst: (Ipv4Addr, u16),
    /// What the client dialled, when a service translated the connection.
    pub dialled: Option<(Ipv4Addr, u16)>,
    /// The backend that connection reached.
    pub backend: Option<(Ipv4Addr, u16)>,
    /// The source after masquerade or NodePort SNAT.
    pub snat: Option<(Ipv4Addr, u16)>,
}

/// An event's translation. A conntrack event has the packet's tuple and
/// its entry's (see conntrack.h): forward, the tuple holds what the client
/// sent and the entry what it became; an answer's tuple holds what the
/// backend sent and the entry what the client gets.
pub fn translation(e: &Event) -> Translation {
    let (t, x) = (&e.tuple, &e.xlate);
    let ct = !matches!(e.kind, EventKind::Drop | EventKind::Trace);
    let pair = |ip: Ipv4Addr, port: u16| (ip, port);
    let same = |a: (Ipv4Addr, u16), b: (Ipv4Addr, u16)| a == b;
    let (ts, td, xs, xd) = (
        pair(t.saddr, t.sport),
        pair(t.daddr, t.dport),
        pair(x.saddr, x.sport),
        pair(x.daddr, x.dport),
    );
    if !ct {
        // A packet event holds the packet; a policy drop of a service
        // connection adds the backend it was judged against (flow.h).
        let dialled = (!same(td, xd)).then_some(td);
        return Translation {
            src: ts,
            dst: xd,
            dialled,
            backend: dialled.map(|_| xd),
            snat: None,
        };
    }
    if !e.is_reply() {
        let dialled = (!same(td, xd)).then_some(td);
        Translation {
            src: ts,
            dst: xd,
            dialled,
            backend: dialled.map(|_| xd),
            snat: (!same(ts, xs)).then_some(xs),
        }
    } else {
        let dialled = (!same(xs, ts)).then_some(xs);
        Translation {
            src: ts,
            dst: xd,
            dialled,
            backend: dialled.map(|_| ts),
            snat: (!same(td, xd)).then_some(td),
        }
    }
}

fn l4(proto: u8, sport: u16, dport: u16, flags: u8) -> Option<Layer4> {
    let p = match proto {
        6 => layer4::Protocol::Tcp(flow::Tcp {
            source_port: u32::from(sport),
            destination_port: u32::from(dport),
            flags: Some(TcpFlags {
                fin: flags & 0x01 != 0,
                syn: flags & 0x02 != 0,
                rst: flags & 0x04 != 0,
                psh: flags & 0x08 != 0,
                ack: flags & 0x10 != 0,
                urg: flags & 0x20 != 0,
                ece: flags & 0x40 != 0,
                cwr: flags & 0x80 != 0,
                ns: false,
            }),
        }),
        17 => layer4::Protocol::Udp(flow::Udp {
            source_port: u32::from(sport),
            destination_port: u32::from(dport),
        }),
        132 => layer4::Protocol::Sctp(flow::Sctp {
            source_port: u32::from(sport),
            destination_port: u32::from(dport),
        }),
        1 => layer4::Protocol::IcmPv4(flow::IcmPv4 {
            r#type: u32::from(flags),
            code: 0,
        }),
        _ => return None,
    };
    Some(Layer4 { protocol: Some(p) })
}

/// The one line the hubble CLI shows in parentheses: Hubble's TCP flags
/// (or protocol), then what weir adds, the translation and the handshake.
fn summary(e: &Event, tr: &Translation, service: Option<&flow::Service>) -> String {
    let mut s = match e.tuple.proto {
        6 => {
            let names = [
                (0x01, "FIN"),
                (0x02, "SYN"),
                (0x04, "RST"),
                (0x08, "PSH"),
                (0x10, "ACK"),
                (0x20, "URG"),
                (0x40, "ECE"),
                (0x80, "CWR"),
            ];
            let set: Vec<&str> = names
                .iter()
                .filter(|(bit, _)| e.tcp_flags & bit != 0)
                .map(|(_, n)| *n)
                .collect();
            format!("TCP Flags: {}", set.join(", "))
        }
        17 => "UDP".to_owned(),
        132 => "SCTP".to_owned(),
        1 => match e.tcp_flags {
            8 => "ICMPv4 EchoRequest".to_owned(),
            0 => "ICMPv4 EchoReply".to_owned(),
            t => format!("ICMPv4 type {t}"),
        },
        p => format!("IP protocol {p}"),
    };
    if let Some((ip, port)) = tr.dialled {
        match service {
            Some(svc) => s.push_str(&format!("; via {}/{} {ip}:{port}", svc.namespace, svc.name)),
            None => s.push_str(&format!("; via {ip}:{port}")),
        }
    }
    if let Some((ip, port)) = tr.snat {
        s.push_str(&format!("; SNAT {ip}:{port}"));
    }
    if e.handshake_ns > 0 {
        s.push_str(&format!("; handshake {:.3} ms", e.handshake_ns as f64 / 1e6));
    }
    if matches!(e.kind, EventKind::FlowUpdate | EventKind::FlowEnd) {
        s.push_str(&format!("; {} B / {} B", e.bytes, e.rev_bytes));
    }
    s
}

/// Everything enrichment needs besides the event.
pub struct Context<'a> {
    pub names: &'a FlowNames,
    /// Rule references to names (none: the verdicts stay unnamed).
    pub policy: Option<&'a PolicyNames>,
    pub node: &'a str,
    pub clock: Clock,
    pub now: Instant,
}

pub fn to_flow(e: &Event, cx: &Context<'_>) -> Flow {
    build(e, &name(e, cx), cx.node)
}

/// What a flow says beyond its event: its ends and service as the
/// cluster was when it was seen, and when that was. Cheap (lookups and
/// reference counts): the agent keeps this with the event and builds the
/// protobuf only when a client reads the flow.
#[derive(Debug, Clone)]
pub struct Named {
    pub src: Arc<Endpoint>,
    pub dst: Arc<Endpoint>,
    /// The service the client dialled (or the destination is).
    pub service: Option<Arc<flow::Service>>,
    pub wall: SystemTime,
    /// The rules behind the event's policy verdicts, egress then ingress,
    /// named when the event was read (a rule may be gone by a later read).
    pub policy: [Option<Arc<PolicyName>>; 2],
}

pub fn name(e: &Event, cx: &Context<'_>) -> Named {
    let tr = translation(e);
    let frontend = tr.dialled.unwrap_or(tr.dst);
    Named {
        src: cx.names.endpoint(tr.src.0, cx.now).clone(),
        dst: cx.names.endpoint(tr.dst.0, cx.now).clone(),
        service: cx
            .names
            .service(Frontend {
                ip: frontend.0,
                port: frontend.1,
                proto: e.tuple.proto,
            })
            .cloned(),
        wall: cx.clock.wall(e.ts_ns),
        policy: [e.policy_egress, e.policy_ingress].map(|v| cx.policy.and_then(|p| p.get(v.rule))),
    }
}

/// Hubble's message type of a policy verdict (Cilium's monitor numbering).
pub const MESSAGE_POLICY_VERDICT: i32 = 5;

/// A connection's verdict fields: Hubble's `*_allowed_by` / `*_denied_by`
/// per direction, the match type of the deciding rule, and whether it is an
/// audit verdict.
struct PolicyFields {
    egress_allowed_by: Vec<flow::Policy>,
    ingress_allowed_by: Vec<flow::Policy>,
    egress_denied_by: Vec<flow::Policy>,
    ingress_denied_by: Vec<flow::Policy>,
    match_type: u32,
    audit: bool,
    /// Any verdict at all.
    decided: bool,
    text: Vec<String>,
}

fn policy_fields(e: &Event, named: &Named) -> PolicyFields {
    let mut out = PolicyFields {
        egress_allowed_by: Vec::new(),
        ingress_allowed_by: Vec::new(),
        egress_denied_by: Vec::new(),
        ingress_denied_by: Vec::new(),
        match_type: 0,
        audit: false,
        decided: false,
        text: Vec::new(),
    };
    for (i, (v, side)) in [(e.policy_egress, "egress"), (e.policy_ingress, "ingress")]
        .into_iter()
        .enumerate()
    {
        if v.kind == VerdictKind::None {
            continue;
        }
        out.decided = true;
        let name = named.policy[i].as_deref();
        let hubble = name.map(|n| n.hubble.clone()).unwrap_or_else(|| flow::Policy {
            name: format!("rule-{}", v.rule),
            kind: "weir".into(),
            ..Default::default()
        });
        let allowed = v.kind == VerdictKind::Allow;
        let list = match (i, allowed) {
            (0, true) => &mut out.egress_allowed_by,
            (0, false) => &mut out.egress_denied_by,
            (_, true) => &mut out.ingress_allowed_by,
            (_, false) => &mut out.ingress_denied_by,
        };
        list.push(hubble);
        if let Some(n) = name
            && (out.match_type == 0 || i == 1)
        {
            out.match_type = n.rule.what.match_type() as u32;
        }
        out.audit |= v.kind == VerdictKind::Audit;
        let what = match v.kind {
            VerdictKind::Allow => "allowed by",
            VerdictKind::Audit => "audit: would be denied by",
            VerdictKind::Denied | VerdictKind::Deny => "denied by",
            VerdictKind::None => "",
        };
        let rule = name.map_or_else(|| format!("rule {}", v.rule), |n| n.text.clone());
        out.text.push(format!("{side} {what} {rule}"));
    }
    out
}

/// The Hubble flow of an event and its names.
/// A flow's traffic direction as Hubble gives it: the connection's,
/// relative to the local pod (an answer leaving a pod belongs to a
/// connection that came in); a policy drop is the deciding side's (the
/// destination's ingress policy refuses what the source's egress let out).
pub fn traffic_direction(e: &Event) -> TrafficDirection {
    let ct = !matches!(e.kind, EventKind::Drop | EventKind::Trace);
    let packet_dir = match u32::from(e.direction) {
        DIR_EGRESS => TrafficDirection::Egress,
        DIR_INGRESS => TrafficDirection::Ingress,
        _ => TrafficDirection::Unknown,
    };
    let connection_dir = match (e.is_reply() && ct, packet_dir) {
        (true, TrafficDirection::Egress) => TrafficDirection::Ingress,
        (true, TrafficDirection::Ingress) => TrafficDirection::Egress,
        (_, d) => d,
    };
    match (e.kind == EventKind::Drop, e.policy_ingress.kind, e.policy_egress.kind) {
        (true, VerdictKind::Denied | VerdictKind::Deny, _) => TrafficDirection::Ingress,
        (true, _, VerdictKind::Denied | VerdictKind::Deny) => TrafficDirection::Egress,
        _ => connection_dir,
    }
}

#[allow(
    deprecated,
    reason = "Hubble's old clients still read drop_reason and reply: weir fills them as Hubble does"
)]
pub fn build(e: &Event, named: &Named, node: &str) -> Flow {
    let tr = translation(e);
    let reply = e.is_reply();
    let ct = !matches!(e.kind, EventKind::Drop | EventKind::Trace);
    let mut source = (*named.src).clone();
    let mut destination = (*named.dst).clone();
    // The local endpoint the program saw the packet leave or enter.
    match u32::from(e.direction) {
        DIR_EGRESS => source.id = e.endpoint_id,
        DIR_INGRESS => destination.id = e.endpoint_id,
        _ => {}
    }
    let (point_name, point, trace_sub) = observation(e.obs);
    let service = named.service.as_deref().cloned();
    let summary = summary(e, &tr, service.as_ref());
    let (source_service, destination_service) = if reply { (service, None) } else { (None, service) };
    let traffic_direction = traffic_direction(e);
    let drop = (e.kind == EventKind::Drop).then_some(e.drop_reason);
    let drop_code = drop.flatten().map(hubble_drop_code);
    let policy = policy_fields(e, named);
    // What got through: AUDIT when an audit-mode policy would have denied it.
    let forwarded = if policy.audit {
        Verdict::Audit
    } else {
        Verdict::Forwarded
    };
    let (verdict, event_type) = match drop {
        Some(_) => (
            Verdict::Dropped,
            CiliumEventType {
                r#type: MESSAGE_DROP,
                sub_type: drop_code.map_or(0, |c| c as i32),
            },
        ),
        // A traced endpoint's packet: seen, with no verdict of its own.
        None if e.kind == EventKind::Trace => (
            Verdict::Traced,
            CiliumEventType {
                r#type: MESSAGE_CAPTURE,
                sub_type: 0,
            },
        ),
        // The first packet of a connection a policy decided on: Hubble's
        // policy-verdict event (what `--type policy-verdict` shows).
        None if e.kind == EventKind::FlowStart && !reply && policy.decided => (
            forwarded,
            CiliumEventType {
                r#type: MESSAGE_POLICY_VERDICT,
                sub_type: 0,
            },
        ),
        None => (
            forwarded,
            CiliumEventType {
                r#type: MESSAGE_TRACE,
                sub_type: trace_sub,
            },
        ),
    };
    let trace_reason = match (ct, reply, e.kind) {
        (false, _, _) => TraceReason::Unknown,
        (true, true, _) => TraceReason::Reply,
        (true, false, EventKind::FlowStart) => TraceReason::New,
        _ => TraceReason::Established,
    };
    let details = FlowDetails {
        event: event_name(e.kind).into(),
        observation_point: point_name.into(),
        dialled: tr.dialled.map(|(i, p)| addr(i, p)),
        backend: tr.backend.map(|(i, p)| addr(i, p)),
        snat: tr.snat.map(|(i, p)| addr(i, p)),
        packets: e.packets,
        bytes: e.bytes,
        reply_packets: e.rev_packets,
        reply_bytes: e.rev_bytes,
        handshake_ns: e.handshake_ns,
        drop_reason: drop.flatten().map(|r| r.name().to_owned()).unwrap_or_default(),
        drop_reason_text: match drop {
            Some(Some(r)) => r.text().to_owned(),
            Some(None) => format!("unknown drop reason {}", e.drop_code),
            None => String::new(),
        },
        policy: policy.text.join("; "),
    };
    Flow {
        time: Some(weir_proto::time::to_timestamp(named.wall)),
        node_name: node.to_owned(),
        verdict: verdict as i32,
        drop_reason: drop_code.map_or(0, |c| c as u32),
        drop_reason_desc: drop_code.map_or(0, |c| c as i32),
        r#type: FlowType::L3L4 as i32,
        event_type: Some(event_type),
        trace_observation_point: point as i32,
        trace_reason: trace_reason as i32,
        interface: Some(NetworkInterface {
            index: e.ifindex,
            name: String::new(),
        }),
        ip: Some(Ip {
            source: ip_string(tr.src.0),
            source_xlated: tr.snat.map(|(i, _)| ip_string(i)).unwrap_or_default(),
            destination: ip_string(tr.dst.0),
            ip_version: IpVersion::IPv4 as i32,
            encrypted: false,
        }),
        l4: l4(e.tuple.proto, tr.src.1, tr.dst.1, e.tcp_flags),
        reply: ct && reply,
        is_reply: ct.then_some(reply),
        traffic_direction: traffic_direction as i32,
        source: Some(source),
        destination: Some(destination),
        source_service,
        destination_service,
        weir: Some(details),
        summary,
        egress_allowed_by: policy.egress_allowed_by,
        ingress_allowed_by: policy.ingress_allowed_by,
        egress_denied_by: policy.egress_denied_by,
        ingress_denied_by: policy.ingress_denied_by,
        policy_match_type: policy.match_type,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_datapath::abi::CT_F_REVERSE;
    use weir_datapath::events::Tuple;

    fn ev(kind: EventKind, t: (&str, u16, &str, u16), x: (&str, u16, &str, u16), flags: u8) -> Event {
        let tuple = |(s, sp, d, dp): (&str, u16, &str, u16)| Tuple {
            saddr: s.parse().unwrap(),
            daddr: d.parse().unwrap(),
            sport: sp,
            dport: dp,
            proto: 6,
        };
        Event {
            kind,
            obs: obs::FROM_POD as u8,
            direction: DIR_EGRESS as u8,
            tcp_flags: 0x02,
            ct_flags: flags,
            ct_state: 0,
            drop_reason: None,
            drop_code: 0,
            ts_ns: 1,
            endpoint_id: 7,
            src_identity: 0,
            dst_identity: 0,
            service_id: 1,
            ifindex: 3,
            len: 60,
            tuple: tuple(t),
            xlate: tuple(x),
            packets: 1,
            bytes: 60,
            rev_packets: 0,
            rev_bytes: 0,
            handshake_ns: 0,
            policy_egress: Default::default(),
            policy_ingress: Default::default(),
        }
    }

    fn ip(s: &str, p: u16) -> (Ipv4Addr, u16) {
        (s.parse().unwrap(), p)
    }

    #[test]
    fn ip_text_is_what_display_writes() {
        for ip in [
            "0.0.0.0",
            "10.244.1.5",
            "255.255.255.255",
            "172.31.100.9",
            "1.20.103.250",
        ] {
            let a: Ipv4Addr = ip.parse().unwrap();
            assert_eq!(ip_string(a), a.to_string());
        }
    }

    #[test]
    fn a_service_connection_names_vip_and_backend_both_ways() {
        let fwd = ev(
            EventKind::FlowStart,
            ("10.244.1.2", 40000, "10.96.0.10", 80),
            ("10.244.1.2", 40000, "10.244.2.5", 8080),
            0,
        );
        let t = translation(&fwd);
        assert_eq!((t.src, t.dst), (ip("10.244.1.2", 40000), ip("10.244.2.5", 8080)));
        assert_eq!(t.dialled, Some(ip("10.96.0.10", 80)));
        assert_eq!(t.backend, Some(ip("10.244.2.5", 8080)));
        assert_eq!(t.snat, None);

        let rev = ev(
            EventKind::Tcp,
            ("10.244.2.5", 8080, "10.244.1.2", 40000),
            ("10.96.0.10", 80, "10.244.1.2", 40000),
            CT_F_REVERSE,
        );
        let t = translation(&rev);
        assert_eq!((t.src, t.dst), (ip("10.244.2.5", 8080), ip("10.244.1.2", 40000)));
        assert_eq!(t.dialled, Some(ip("10.96.0.10", 80)));
    }

    #[test]
    fn masquerade_shows_the_node_address_both_ways() {
        let fwd = ev(
            EventKind::FlowStart,
            ("10.244.1.2", 40000, "192.0.2.9", 443),
            ("172.31.0.1", 33000, "192.0.2.9", 443),
            0x10,
        );
        let t = translation(&fwd);
        assert_eq!(
            (t.dst, t.dialled, t.snat),
            (ip("192.0.2.9", 443), None, Some(ip("172.31.0.1", 33000)))
        );
        let rev = ev(
            EventKind::Tcp,
            ("192.0.2.9", 443, "172.31.0.1", 33000),
            ("192.0.2.9", 443, "10.244.1.2", 40000),
            0x10 | CT_F_REVERSE,
        );
        let t = translation(&rev);
        assert_eq!(
            (t.dst, t.snat),
            (ip("10.244.1.2", 40000), Some(ip("172.31.0.1", 33000)))
        );
    }

    #[test]
    fn a_drop_is_dropped_with_hubbles_code_and_weirs_reason() {
        let mut e = ev(
            EventKind::Drop,
            ("10.244.1.2", 40000, "10.96.0.11", 81),
            ("10.244.1.2", 40000, "10.96.0.11", 81),
            0,
        );
        e.drop_reason = Some(DropReason::NoServiceBackend);
        let names = FlowNames::new(Duration::from_secs(1));
        let cx = Context {
            names: &names,
            policy: None,
            node: "node-a",
            clock: Clock::now(),
            now: Instant::now(),
        };
        let f = to_flow(&e, &cx);
        assert_eq!(f.verdict, Verdict::Dropped as i32);
        assert_eq!(f.drop_reason_desc, flow::DropReason::ServiceBackendNotFound as i32);
        assert_eq!(f.event_type.unwrap().r#type, MESSAGE_DROP);
        assert_eq!(f.is_reply, None, "a drop does not know its direction in a connection");
        let d = f.weir.unwrap();
        assert_eq!(d.drop_reason, "no_service_backend");
        assert!(d.drop_reason_text.contains("no usable backend"));
        assert_eq!(f.source.unwrap().id, 7, "the sending pod is the local endpoint");
        assert_eq!(f.destination.unwrap().labels, ["reserved:world"]);
    }
}
