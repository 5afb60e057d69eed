//! The Rust twins in `src/abi.rs` must match the C structs byte for byte.
//! Sizes and member offsets are read from the BTF clang wrote into the
//! embedded object, so this fails as soon as one side changes alone.

use std::collections::HashMap;
use std::mem::{offset_of, size_of};

use object::{Object, ObjectSection};
use weir_datapath::abi::{Config, EpInfo, EpKey, Route, RouteKey, Traffic, TrafficKey};

/// name → (size, [(member, byte offset)]) for every struct in the BTF.
/// Struct name -> (size, [(member, byte offset)]) from an object's BTF.
type Structs = HashMap<String, (u32, Vec<(String, u32)>)>;

fn btf_structs(obj: &[u8]) -> Structs {
    let file = object::File::parse(obj).expect("embedded object is ELF");
    let btf = file.section_by_name(".BTF").expect("object has .BTF (compile with -g)");
    let data = btf.data().expect(".BTF readable");
    let u32_at = |off: usize| u32::from_le_bytes(data[off..off + 4].try_into().unwrap());

    // struct btf_header: magic u16, version u8, flags u8, hdr_len u32,
    // type_off, type_len, str_off, str_len (u32 each, relative to hdr end).
    assert_eq!(u16::from_le_bytes([data[0], data[1]]), 0xeb9f, "BTF magic");
    let hdr_len = u32_at(4) as usize;
    let (type_off, type_len) = (hdr_len + u32_at(8) as usize, u32_at(12) as usize);
    let str_off = hdr_len + u32_at(16) as usize;
    let name = |off: u32| {
        let s = &data[str_off + off as usize..];
        String::from_utf8_lossy(&s[..s.iter().position(|&b| b == 0).unwrap()]).into_owned()
    };

    let mut out = HashMap::new();
    let mut p = type_off;
    while p < type_off + type_len {
        let (name_off, info, size) = (u32_at(p), u32_at(p + 4), u32_at(p + 8));
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        p += 12;
        // Trailing data per kind, from the kernel's Documentation/bpf/btf.rst.
        let extra = match kind {
            1 => 4,             // INT
            3 => 12,            // ARRAY
            4 | 5 => 12 * vlen, // STRUCT, UNION
            6 => 8 * vlen,      // ENUM
            13 => 8 * vlen,     // FUNC_PROTO
            14 => 4,            // VAR
            15 => 12 * vlen,    // DATASEC
            17 => 4,            // DECL_TAG
            19 => 12 * vlen,    // ENUM64
            _ => 0,
        };
        if kind == 4 {
            let kind_flag = info >> 31 == 1;
            let members = (0..vlen)
                .map(|i| {
                    let m = p + i * 12;
                    let bits = u32_at(m + 8);
                    let bit_off = if kind_flag { bits & 0xff_ffff } else { bits };
                    (name(u32_at(m)), bit_off / 8)
                })
                .collect();
            out.insert(name(name_off), (size, members));
        }
        p += extra;
    }
    out
}

macro_rules! assert_layout {
    ($structs:expr, $c_name:literal, $rust:ty, [$($field:ident),* $(,)?]) => {{
        let (size, members) = $structs.get($c_name).unwrap_or_else(|| panic!("struct {} not in BTF", $c_name));
        assert_eq!(*size as usize, size_of::<$rust>(), "size of {}", $c_name);
        let rust_fields: Vec<(String, u32)> = vec![$((stringify!($field).to_string(), offset_of!($rust, $field) as u32)),*];
        assert_eq!(members, &rust_fields, "members and offsets of {}", $c_name);
    }};
}

#[test]
fn rust_abi_matches_c_structs_in_btf() {
    let structs = btf_structs(weir_datapath::BPF_LXC);
    assert_layout!(structs, "weir_ep_key", EpKey, [family, pad, addr]);
    assert_layout!(
        structs,
        "weir_ep_info",
        EpInfo,
        [ifindex, endpoint_id, identity, pod_mac, host_mac, flags]
    );
    assert_layout!(structs, "weir_traffic_key", TrafficKey, [endpoint_id, direction]);
    assert_layout!(structs, "weir_traffic", Traffic, [packets, bytes]);
    assert_layout!(
        structs,
        "weir_config",
        Config,
        [routing_mode, tunnel_ifindex, node_ip, flags, cluster_net, cluster_mask]
    );
    assert_layout!(structs, "weir_route", Route, [node_ip, flags]);
    assert_layout!(
        structs,
        "weir_ipcache_entry",
        weir_datapath::abi::IpCacheEntry,
        [identity, flags]
    );
    // aya's lpm_trie::Key<T> is { prefix_len: u32, data: T }: the C key is
    // that u32 followed by RouteKey's fields.
    let (size, members) = &structs["weir_route_key"];
    assert_eq!(*size as usize, 4 + size_of::<RouteKey>());
    let shifted: Vec<(String, u32)> = [
        ("prefixlen", 0),
        ("family", 4 + offset_of!(RouteKey, family)),
        ("pad", 4 + offset_of!(RouteKey, pad)),
        ("addr", 4 + offset_of!(RouteKey, addr)),
    ]
    .into_iter()
    .map(|(n, o)| (n.to_string(), o as u32))
    .collect();
    assert_eq!(members, &shifted);
}

/// The policy tables' key (an LPM key: prefixlen, then PolicyKey) and entry.
#[test]
fn policy_abi_matches_c_structs_in_btf() {
    use weir_datapath::abi::{PolicyEntry, PolicyKey};
    for obj in [weir_datapath::BPF_LXC, weir_datapath::BPF_HOST, weir_datapath::BPF_XDP] {
        let structs = btf_structs(obj);
        assert_layout!(
            structs,
            "weir_policy_entry",
            PolicyEntry,
            [
                action,
                audit_action,
                pad,
                rule,
                audit_rule,
                admin,
                admin_rule,
                baseline,
                baseline_rule
            ]
        );
        let (size, members) = &structs["weir_policy_key"];
        assert_eq!(*size as usize, 4 + size_of::<PolicyKey>());
        let shifted: Vec<(String, u32)> = [
            ("prefixlen", 0),
            ("endpoint_id", 4 + offset_of!(PolicyKey, endpoint_id)),
            ("peer", 4 + offset_of!(PolicyKey, peer)),
            ("direction", 4 + offset_of!(PolicyKey, direction)),
            ("proto", 4 + offset_of!(PolicyKey, proto)),
            ("dport", 4 + offset_of!(PolicyKey, dport)),
        ]
        .into_iter()
        .map(|(n, o)| (n.to_string(), o as u32))
        .collect();
        assert_eq!(members, &shifted);
    }
}

#[test]
fn service_and_conntrack_abi_matches_c_structs_in_btf() {
    use weir_datapath::lb::{
        AffinityKey, AffinityValue, BackendKey, BackendValue, MAGLEV_M, MaglevTable, ServiceKey, ServiceValue,
    };
    let structs = btf_structs(weir_datapath::BPF_LXC);
    assert_layout!(structs, "weir_lb_svc_key", ServiceKey, [vip, dport, proto, pad]);
    assert_layout!(
        structs,
        "weir_lb_svc",
        ServiceValue,
        [service_id, count, affinity_timeout_s, algorithm, flags, pad]
    );
    assert_layout!(structs, "weir_lb_backend_key", BackendKey, [service_id, slot]);
    assert_layout!(structs, "weir_lb_backend", BackendValue, [ip, port, proto, pad]);
    assert_layout!(structs, "weir_lb_affinity_key", AffinityKey, [client, service_id]);
    assert_layout!(
        structs,
        "weir_lb_affinity",
        AffinityValue,
        [slot, backend_ip, last_used_ns]
    );
    conntrack_layout(&structs);
    let (size, members) = structs.get("weir_lb_maglev").expect("weir_lb_maglev in BTF");
    assert_eq!(*size as usize, size_of::<MaglevTable>());
    assert_eq!(members, &vec![("slots".to_string(), 0)]);
    assert_eq!(size_of::<MaglevTable>(), MAGLEV_M * 4);
}

/// The conntrack key and entry, as one object's BTF has them.
fn conntrack_layout(structs: &Structs) {
    use weir_datapath::conntrack::{CtEntry, CtKey};
    assert_layout!(structs, "weir_ct_key", CtKey, [saddr, daddr, sport, dport, proto, pad]);
    assert_layout!(
        structs,
        "weir_ct_entry",
        CtEntry,
        [
            expires_ns,
            packets,
            bytes,
            created_ns,
            report_ns,
            xlate_saddr,
            xlate_daddr,
            xlate_sport,
            xlate_dport,
            service_id,
            flags,
            state,
            seen,
            pad,
            owner,
            policy_egress,
            policy_ingress,
            policy_rev,
            pad2
        ]
    );
}

/// The flow event, as every object that writes it has it.
#[test]
fn event_abi_matches_c_structs_in_btf() {
    use weir_datapath::abi::RawEvent;
    for obj in [weir_datapath::BPF_LXC, weir_datapath::BPF_HOST, weir_datapath::BPF_XDP] {
        let structs = btf_structs(obj);
        assert_layout!(
            structs,
            "weir_event",
            RawEvent,
            [
                version,
                kind,
                obs,
                direction,
                tcp_flags,
                ct_flags,
                ct_state,
                pad,
                size,
                pad2,
                drop_reason,
                ts_ns,
                endpoint_id,
                src_identity,
                dst_identity,
                service_id,
                ifindex,
                len,
                tuple,
                xlate,
                packets,
                bytes,
                rev_packets,
                rev_bytes,
                handshake_ns,
                policy_egress,
                policy_ingress
            ]
        );
    }
}

#[test]
fn host_abi_matches_c_structs_in_btf() {
    // bpf_host.o declares the conntrack table too (masquerade, NodePort):
    // its idea of the layout must be the same one.
    let structs = btf_structs(weir_datapath::BPF_HOST);
    conntrack_layout(&structs);
    assert_layout!(
        structs,
        "weir_config",
        Config,
        [routing_mode, tunnel_ifindex, node_ip, flags, cluster_net, cluster_mask]
    );
}

/// Every map name userspace opens by name is a map some object declares.
#[test]
fn map_names_userspace_uses_exist_in_the_objects() {
    use object::ObjectSymbol;
    let mut declared = std::collections::BTreeSet::new();
    for obj in [
        weir_datapath::BPF_LXC,
        weir_datapath::BPF_HOST,
        weir_datapath::BPF_XDP,
        weir_datapath::BPF_SOCK,
    ] {
        let file = object::File::parse(obj).expect("ELF");
        let maps = file.section_by_name(".maps").expect(".maps section").index();
        for sym in file.symbols() {
            if sym.section_index() == Some(maps) {
                declared.insert(sym.name().unwrap_or_default().to_owned());
            }
        }
    }
    let used = [
        weir_datapath::maps::ENDPOINTS,
        weir_datapath::maps::EP_TRAFFIC,
        weir_datapath::maps::DROPS,
        weir_datapath::maps::CONFIG,
        weir_datapath::maps::NODE_ROUTES,
        weir_datapath::maps::NODES,
        weir_datapath::maps::CALLS,
        weir_datapath::maps::IPCACHE,
        weir_datapath::maps::SOCK_NETNS,
        weir_datapath::lb::maps::SERVICES,
        weir_datapath::lb::maps::BACKENDS,
        weir_datapath::lb::maps::MAGLEV,
        weir_datapath::lb::maps::AFFINITY,
        weir_datapath::lb::maps::CONNTRACK,
        weir_datapath::conntrack::MAP,
        weir_datapath::events::MAP,
        weir_datapath::events::LOST_MAP,
    ];
    for name in used {
        assert!(
            declared.contains(name),
            "map {name} is not declared by any object: {declared:?}"
        );
    }
}
