//! Network policy through BPF_PROG_TEST_RUN: real programs judge real
//! frames against policy tables written the way the agent writes them.
//! An isolated pod's default deny drops a new connection with its own
//! reason and rule; an allow lets it through and its replies pass; an
//! explicit deny beats an allow; audit forwards and says so; CIDR peers and
//! port ranges match; a service connection is judged on its backend; an
//! established connection keeps its verdict. Needs root.

mod support;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use support::{LO_IFINDEX, Loaded, OTHER_IFINDEX, TC_ACT_REDIRECT, TC_ACT_SHOT};
use weir_datapath::abi::{DIR_EGRESS, DIR_INGRESS};
use weir_datapath::drop::DropReason;
use weir_datapath::events::{Event, EventKind, EventSource};
use weir_datapath::ipcache::IpCache;
use weir_datapath::lb::{Backend, Protocol, ServiceMaps, ServiceSpec};
use weir_datapath::policy::{CIDR_MIN, PEER_ANY, PolicyMaps, Slot, Verdict, VerdictKind, Verdicts, action, tier};
use weir_datapath::{LoadOptions, ProgramKind};
use weir_test_support::packet::{Flow, TCP, UDP};
use weir_test_support::require_root;

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const ID_A: u32 = 300;
const ID_B: u32 = 301;
const EP_A: u32 = 1;
const EP_B: u32 = 2;

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

struct Fixture {
    t: Loaded,
    events: EventSource,
    policy: PolicyMaps,
    slots: BTreeMap<Slot, Verdicts>,
    cidrs: BTreeMap<Ipv4Net, u32>,
}

support::derefs_to_loaded!(Fixture);

impl Fixture {
    fn new(test: &str) -> Self {
        let mut t = Loaded::new(&format!("policy-{test}"), &LoadOptions::default());
        let events = t.dp.take_events().expect("event maps");
        let policy = t.dp.take_policy_maps().expect("policy maps");
        let mut ipcache = IpCache::open(&t.pin_dir).unwrap();
        ipcache.sync(&[(POD_A, ID_A), (POD_B, ID_B)].into()).unwrap();
        let mut fx = Self {
            t,
            events,
            policy,
            slots: BTreeMap::new(),
            cidrs: BTreeMap::new(),
        };
        fx.place(POD_A, LO_IFINDEX, EP_A);
        fx.place(POD_B, OTHER_IFINDEX, EP_B);
        fx
    }

    fn set(&mut self, slot: Slot, action: u8, rule: u32) {
        self.set_both(slot, action, rule, action, rule);
    }

    fn set_both(&mut self, slot: Slot, action: u8, rule: u32, audit_action: u8, audit_rule: u32) {
        self.slots.insert(
            slot,
            Verdicts {
                action,
                reference: rule,
                audit_action,
                audit_reference: audit_rule,
                ..Default::default()
            },
        );
        self.policy.sync(&self.slots, &self.cidrs).unwrap();
    }

    fn set_verdicts(&mut self, slot: Slot, v: Verdicts) {
        self.slots.insert(slot, v);
        self.policy.sync(&self.slots, &self.cidrs).unwrap();
    }

    fn unset(&mut self, slot: Slot) {
        self.slots.remove(&slot);
        self.policy.sync(&self.slots, &self.cidrs).unwrap();
    }

    fn drain(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(e) = self.events.next(Event::decode) {
            out.push(e.expect("a record this build reads"));
        }
        out
    }

    fn a_sends(&self, f: &Flow, flags: u8) -> u32 {
        self.tc(ProgramKind::FromPod, &f.packet(flags)).0
    }

    fn b_sends(&mut self, f: &Flow, flags: u8) -> u32 {
        self.place(POD_B, LO_IFINDEX, EP_B);
        self.place(POD_A, OTHER_IFINDEX, EP_A);
        let v = self.tc(ProgramKind::FromPod, &f.packet(flags)).0;
        self.place(POD_A, LO_IFINDEX, EP_A);
        self.place(POD_B, OTHER_IFINDEX, EP_B);
        v
    }

    /// The one event of `kind` in the ring (others are drained away).
    fn only(&mut self, kind: EventKind) -> Event {
        let events: Vec<Event> = self.drain().into_iter().filter(|e| e.kind == kind).collect();
        assert_eq!(events.len(), 1, "one {kind:?} event: {events:#?}");
        events.into_iter().next().unwrap()
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

/// Every protocol and port of a direction of an endpoint, for any peer:
/// where the agent puts an isolated endpoint's default deny.
fn isolation(endpoint_id: u32, direction: u32) -> Slot {
    Slot {
        endpoint_id,
        direction: direction as u8,
        peer: PEER_ANY,
        proto: 0,
        port: 0,
        port_bits: 0,
    }
}

fn port(endpoint_id: u32, direction: u32, peer: u32, proto: u8, port: u16, port_bits: u8) -> Slot {
    Slot {
        endpoint_id,
        direction: direction as u8,
        peer,
        proto,
        port,
        port_bits,
    }
}

#[test]
fn an_isolated_pod_denies_until_a_rule_allows_and_replies_pass() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("isolate");
    let ab = flow(POD_A, 40000, POD_B, 80, TCP);
    assert_eq!(fx.a_sends(&ab, SYN), TC_ACT_REDIRECT, "no policy: allowed");
    let start = fx.only(EventKind::FlowStart);
    assert_eq!(start.policy_ingress, Verdict::default(), "and no verdict named");

    fx.set(isolation(EP_B, DIR_INGRESS), action::DEFAULT_DENY, 11);
    let ab = flow(POD_A, 40001, POD_B, 80, TCP);
    assert_eq!(fx.a_sends(&ab, SYN), TC_ACT_SHOT, "isolated: default deny");
    assert_eq!(fx.drops(DropReason::PolicyDenied), 1);
    let drop = fx.only(EventKind::Drop);
    assert_eq!(drop.drop_reason, Some(DropReason::PolicyDenied));
    assert_eq!(
        drop.policy_ingress,
        Verdict {
            kind: VerdictKind::Denied,
            rule: 11
        },
        "the default deny names its rule, on the ingress side"
    );
    assert_eq!(drop.policy_egress, Verdict::default());

    // An allow for A's identity on TCP 80: through, and the reply too.
    fx.set(port(EP_B, DIR_INGRESS, ID_A, TCP, 80, 16), action::ALLOW, 12);
    assert_eq!(fx.a_sends(&ab, SYN), TC_ACT_REDIRECT);
    let start = fx.only(EventKind::FlowStart);
    assert_eq!(
        start.policy_ingress,
        Verdict {
            kind: VerdictKind::Allow,
            rule: 12
        }
    );
    assert_eq!(fx.b_sends(&ab.reply(), SYN | ACK), TC_ACT_REDIRECT, "the reply passes");
    // Another port is still denied, and so is UDP on 80.
    assert_eq!(fx.a_sends(&flow(POD_A, 40002, POD_B, 81, TCP), SYN), TC_ACT_SHOT);
    assert_eq!(fx.a_sends(&flow(POD_A, 40003, POD_B, 80, UDP), 0), TC_ACT_SHOT);

    // The allow goes: a new connection is denied at once; the open one
    // keeps its verdict until the revision says the tables changed, then
    // is judged again on its next packet, and comes back with the allow.
    fx.unset(port(EP_B, DIR_INGRESS, ID_A, TCP, 80, 16));
    assert_eq!(fx.a_sends(&flow(POD_A, 40004, POD_B, 80, TCP), SYN), TC_ACT_SHOT);
    assert_eq!(fx.a_sends(&ab, ACK), TC_ACT_REDIRECT, "same revision: kept");
    fx.policy.bump().unwrap();
    assert_eq!(fx.a_sends(&ab, ACK), TC_ACT_SHOT, "judged again: denied now");
    assert_eq!(fx.a_sends(&ab, ACK), TC_ACT_SHOT, "and on every packet while denied");
    fx.set(port(EP_B, DIR_INGRESS, ID_A, TCP, 80, 16), action::ALLOW, 13);
    fx.policy.bump().unwrap();
    assert_eq!(fx.a_sends(&ab, ACK), TC_ACT_REDIRECT, "allowed again");
    // A UDP flow reusing its tuple after a change is judged by the change.
    let udp = flow(POD_A, 40005, POD_B, 80, UDP);
    fx.set(port(EP_B, DIR_INGRESS, ID_A, UDP, 80, 16), action::ALLOW, 14);
    assert_eq!(fx.a_sends(&udp, 0), TC_ACT_REDIRECT);
    fx.unset(port(EP_B, DIR_INGRESS, ID_A, UDP, 80, 16));
    fx.policy.bump().unwrap();
    assert_eq!(fx.a_sends(&udp, 0), TC_ACT_SHOT, "the same tuple, the new policy");
}

#[test]
fn a_pod_spraying_drops_cannot_hide_another_pods_drops() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("spray");
    fx.set(isolation(EP_B, DIR_INGRESS), action::DEFAULT_DENY, 11);
    fx.set(isolation(EP_A, DIR_INGRESS), action::DEFAULT_DENY, 12);
    // A sends 2,000 denied SYNs at once, more than its burst of events.
    let sprayed = 2000u32;
    for i in 0..sprayed {
        let f = flow(POD_A, 10_000 + i as u16, POD_B, 80, TCP);
        assert_eq!(fx.a_sends(&f, SYN), TC_ACT_SHOT);
    }
    // Then one of B's packets is denied: its drop still has an event.
    assert_eq!(fx.b_sends(&flow(POD_B, 50_000, POD_A, 22, TCP), SYN), TC_ACT_SHOT);
    assert_eq!(
        fx.drops(DropReason::PolicyDenied),
        u64::from(sprayed) + 1,
        "every drop counted"
    );
    let drops: Vec<Event> = fx.drain().into_iter().filter(|e| e.kind == EventKind::Drop).collect();
    let from_b = drops.iter().filter(|e| e.endpoint_id == EP_B).count();
    let from_a = drops.len() - from_b;
    assert_eq!(from_b, 1, "B's drop is seen");
    let cpus = aya::util::nr_cpus().expect("cpus") as usize;
    let burst = weir_datapath::abi::sys::WEIR_DROP_EVENTS_BURST as usize;
    assert!(
        (burst..=burst * cpus + 10).contains(&from_a),
        "A's events held to its burst (a few more as time passes): {from_a}"
    );
    let held = fx.events.rate_limited().unwrap();
    assert_eq!(
        held as usize,
        sprayed as usize - from_a,
        "what was held back is counted"
    );
    assert_eq!(fx.events.lost().unwrap(), 0, "the ring never filled");
}

#[test]
fn a_full_ipcache_and_policy_table_take_a_whole_new_set() {
    if !require_root() {
        return;
    }
    // Tables of 8 entries, full, then a set of 8 others: what goes must go
    // before what comes, or every sync fails from then on.
    let options = LoadOptions {
        max_entries: vec![(weir_datapath::maps::IPCACHE, 8), (weir_datapath::policy::MAP, 8)],
        ..Default::default()
    };
    let t = Loaded::new("policy-full", &options);
    let mut ipcache = IpCache::open(&t.pin_dir).unwrap();
    let set = |base: u8| -> BTreeMap<Ipv4Addr, u32> {
        (0..8u8)
            .map(|i| (Ipv4Addr::new(10, 99, base, i), 300 + u32::from(i)))
            .collect()
    };
    ipcache.sync(&set(1)).unwrap();
    ipcache.sync(&set(2)).expect("the old eight make room for the new");
    assert_eq!(ipcache.entries().unwrap().len(), 8);

    let mut dp = t;
    let mut policy = dp.dp.take_policy_maps().unwrap();
    let slots = |ep: u32| -> BTreeMap<Slot, Verdicts> {
        (0..8u16)
            .map(|p| {
                let v = Verdicts {
                    action: action::ALLOW,
                    reference: 1,
                    audit_action: action::ALLOW,
                    audit_reference: 1,
                    ..Default::default()
                };
                (port(ep, DIR_INGRESS, ID_A, TCP, 8000 + p, 16), v)
            })
            .collect()
    };
    policy.sync(&slots(1), &BTreeMap::new()).unwrap();
    policy
        .sync(&slots(2), &BTreeMap::new())
        .expect("the old slots make room");
}

#[test]
fn an_explicit_deny_beats_an_allow_and_egress_is_judged_at_the_source() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("deny");
    fx.set(port(EP_B, DIR_INGRESS, ID_A, TCP, 80, 16), action::ALLOW, 1);
    fx.set(port(EP_B, DIR_INGRESS, PEER_ANY, TCP, 0, 0), action::DENY, 2);
    assert_eq!(fx.a_sends(&flow(POD_A, 40000, POD_B, 80, TCP), SYN), TC_ACT_SHOT);
    assert_eq!(
        fx.drops(DropReason::PolicyDeny),
        1,
        "an explicit deny has its own reason"
    );
    let drop = fx.only(EventKind::Drop);
    assert_eq!(drop.policy_ingress.rule, 2);
    fx.unset(port(EP_B, DIR_INGRESS, PEER_ANY, TCP, 0, 0));
    fx.unset(port(EP_B, DIR_INGRESS, ID_A, TCP, 80, 16));

    fx.set(isolation(EP_A, DIR_EGRESS), action::DEFAULT_DENY, 3);
    assert_eq!(fx.a_sends(&flow(POD_A, 40001, POD_B, 80, TCP), SYN), TC_ACT_SHOT);
    let drop = fx.only(EventKind::Drop);
    assert_eq!(
        drop.policy_egress,
        Verdict {
            kind: VerdictKind::Denied,
            rule: 3
        }
    );
    assert_eq!(drop.policy_ingress, Verdict::default());
}

/// A ClusterNetworkPolicy tier value: rank and action.
fn tiered(rank: u32, kind: u32) -> u32 {
    rank << tier::RANK_SHIFT | kind
}

#[test]
fn cluster_network_policy_tiers_admin_first_then_networkpolicy_then_baseline() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("tiers");
    let judged = |fx: &mut Fixture, sport: u16| -> (u32, Verdict) {
        let act = fx.a_sends(&flow(POD_A, sport, POD_B, 80, TCP), SYN);
        let kind = if act == TC_ACT_SHOT {
            EventKind::Drop
        } else {
            EventKind::FlowStart
        };
        (act, fx.only(kind).policy_ingress)
    };
    let v = |kind, rule| Verdict { kind, rule };

    // NetworkPolicy isolates B (default deny); a Baseline Accept of A is
    // not consulted: NetworkPolicy decided.
    fx.set_verdicts(
        isolation(EP_B, DIR_INGRESS),
        Verdicts {
            action: action::DEFAULT_DENY,
            reference: 1,
            audit_action: action::DEFAULT_DENY,
            audit_reference: 1,
            ..Default::default()
        },
    );
    fx.set_verdicts(
        port(EP_B, DIR_INGRESS, ID_A, TCP, 0, 0),
        Verdicts {
            baseline: tiered(5, tier::ACCEPT),
            baseline_reference: 2,
            ..Default::default()
        },
    );
    assert_eq!(judged(&mut fx, 40000), (TC_ACT_SHOT, v(VerdictKind::Denied, 1)));

    // An Admin Accept of A's identity comes first: allowed, and named.
    let mut by_id = Verdicts {
        admin: tiered(9, tier::ACCEPT),
        admin_reference: 3,
        baseline: tiered(5, tier::ACCEPT),
        baseline_reference: 2,
        ..Default::default()
    };
    fx.set_verdicts(port(EP_B, DIR_INGRESS, ID_A, TCP, 0, 0), by_id);
    assert_eq!(judged(&mut fx, 40001), (TC_ACT_REDIRECT, v(VerdictKind::Allow, 3)));

    // An earlier Admin Deny for any peer (a higher rank, in another
    // lookup) wins over it: the first matching rule decides.
    fx.set_verdicts(
        port(EP_B, DIR_INGRESS, PEER_ANY, TCP, 80, 16),
        Verdicts {
            admin: tiered(10, tier::DENY),
            admin_reference: 4,
            ..Default::default()
        },
    );
    assert_eq!(judged(&mut fx, 40002), (TC_ACT_SHOT, v(VerdictKind::Deny, 4)));
    assert_eq!(fx.drops(DropReason::PolicyDeny), 1, "an explicit deny's reason");

    // That rule becomes Pass: NetworkPolicy decides again (default deny).
    fx.set_verdicts(
        port(EP_B, DIR_INGRESS, PEER_ANY, TCP, 80, 16),
        Verdicts {
            admin: tiered(10, tier::PASS),
            admin_reference: 4,
            action: action::DEFAULT_DENY,
            reference: 1,
            audit_action: action::DEFAULT_DENY,
            audit_reference: 1,
            ..Default::default()
        },
    );
    assert_eq!(judged(&mut fx, 40003), (TC_ACT_SHOT, v(VerdictKind::Denied, 1)));

    // No NetworkPolicy: the Baseline tier decides, Deny and Accept alike.
    fx.unset(isolation(EP_B, DIR_INGRESS));
    fx.unset(port(EP_B, DIR_INGRESS, PEER_ANY, TCP, 80, 16));
    by_id.admin = 0;
    fx.set_verdicts(port(EP_B, DIR_INGRESS, ID_A, TCP, 0, 0), by_id);
    assert_eq!(judged(&mut fx, 40004), (TC_ACT_REDIRECT, v(VerdictKind::Allow, 2)));
    by_id.baseline = tiered(5, tier::DENY);
    fx.set_verdicts(port(EP_B, DIR_INGRESS, ID_A, TCP, 0, 0), by_id);
    assert_eq!(judged(&mut fx, 40005), (TC_ACT_SHOT, v(VerdictKind::Deny, 2)));
    // A Baseline Pass is no verdict at all.
    by_id.baseline = tiered(5, tier::PASS);
    fx.set_verdicts(port(EP_B, DIR_INGRESS, ID_A, TCP, 0, 0), by_id);
    assert_eq!(judged(&mut fx, 40006), (TC_ACT_REDIRECT, Verdict::default()));
}

#[test]
fn audit_forwards_and_names_the_rule_that_would_deny() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("audit");
    // Only an audit-mode policy isolates B: enforced layer empty.
    fx.set_both(isolation(EP_B, DIR_INGRESS), action::NONE, 0, action::DEFAULT_DENY, 21);
    assert_eq!(fx.a_sends(&flow(POD_A, 40000, POD_B, 80, TCP), SYN), TC_ACT_REDIRECT);
    let start = fx.only(EventKind::FlowStart);
    assert_eq!(
        start.policy_ingress,
        Verdict {
            kind: VerdictKind::Audit,
            rule: 21
        }
    );
    assert_eq!(fx.drops(DropReason::PolicyDenied), 0, "audit never drops");
}

#[test]
fn cidr_peers_and_port_ranges_match() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("cidr");
    fx.set(isolation(EP_B, DIR_INGRESS), action::DEFAULT_DENY, 1);
    // 10.244.1.0/24 (A is in it) on TCP 8080-8095: one 12-bit prefix.
    fx.cidrs.insert("10.244.1.0/24".parse().unwrap(), CIDR_MIN + 1);
    fx.set(port(EP_B, DIR_INGRESS, CIDR_MIN + 1, TCP, 8080, 12), action::ALLOW, 2);
    assert_eq!(fx.a_sends(&flow(POD_A, 40000, POD_B, 8085, TCP), SYN), TC_ACT_REDIRECT);
    assert_eq!(fx.a_sends(&flow(POD_A, 40001, POD_B, 8096, TCP), SYN), TC_ACT_SHOT);
    // A more specific CIDR (an `except`) without the rule: denied.
    fx.cidrs.insert("10.244.1.0/30".parse().unwrap(), CIDR_MIN + 2);
    fx.policy.sync(&fx.slots, &fx.cidrs).unwrap();
    assert_eq!(fx.a_sends(&flow(POD_A, 40002, POD_B, 8085, TCP), SYN), TC_ACT_SHOT);
}

#[test]
fn a_service_connection_is_judged_on_its_backend() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new("svc");
    let mut svc = ServiceMaps::open(&fx.pin_dir).unwrap();
    let spec = ServiceSpec {
        backends: vec![Backend {
            ip: POD_B,
            port: 8080,
            terminating: false,
        }],
        ..Default::default()
    };
    svc.upsert_service(VIP, 80, Protocol::Tcp, &spec).unwrap();
    fx.set(isolation(EP_B, DIR_INGRESS), action::DEFAULT_DENY, 1);
    // The service port allowed: not what counts.
    fx.set(port(EP_B, DIR_INGRESS, ID_A, TCP, 80, 16), action::ALLOW, 2);
    assert_eq!(fx.a_sends(&flow(POD_A, 40000, VIP, 80, TCP), SYN), TC_ACT_SHOT);
    // The backend's port: allowed, and its reply is translated back.
    fx.set(port(EP_B, DIR_INGRESS, ID_A, TCP, 8080, 16), action::ALLOW, 3);
    assert_eq!(fx.a_sends(&flow(POD_A, 40001, VIP, 80, TCP), SYN), TC_ACT_REDIRECT);
    let start = fx.only(EventKind::FlowStart);
    assert_eq!((start.xlate.daddr, start.policy_ingress.rule), (POD_B, 3));
    assert_eq!(
        fx.b_sends(&flow(POD_B, 8080, POD_A, 40001, TCP), SYN | ACK),
        TC_ACT_REDIRECT
    );
}
