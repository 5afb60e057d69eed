//! Rust twins of `bpf/lib/abi.h`. `tests/abi_layout.rs` compares sizes and
//! field offsets with the BTF clang wrote into the object.
#![allow(
    unsafe_code,
    reason = "aya::Pod is an unsafe marker trait; each impl is justified below"
)]

use std::net::{IpAddr, Ipv4Addr};

pub const AF_INET: u8 = 4;
pub const AF_INET6: u8 = 6;

pub const DIR_INGRESS: u32 = 0;
pub const DIR_EGRESS: u32 = 1;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct EpKey {
    pub family: u8,
    pub pad: [u8; 3],
    /// Network byte order, as the packet carries it; IPv4 uses `addr[0]`.
    pub addr: [u32; 4],
}

impl EpKey {
    pub fn new(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::v4(v4),
            IpAddr::V6(v6) => {
                let o = v6.octets();
                let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                Self {
                    family: AF_INET6,
                    pad: [0; 3],
                    addr: [word(0), word(4), word(8), word(12)],
                }
            }
        }
    }

    pub fn v4(ip: Ipv4Addr) -> Self {
        // Keep the wire's byte order in memory: the program compares raw words.
        Self {
            family: AF_INET,
            pad: [0; 3],
            addr: [u32::from_ne_bytes(ip.octets()), 0, 0, 0],
        }
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EpInfo {
    pub ifindex: u32,
    pub endpoint_id: u32,
    pub identity: u32,
    pub pod_mac: [u8; 6],
    pub host_mac: [u8; 6],
    pub flags: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TrafficKey {
    pub endpoint_id: u32,
    pub direction: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

pub const ROUTING_NATIVE: u32 = 0;
pub const ROUTING_VXLAN: u32 = 1;

/// `WEIR_CFG_F_MASQUERADE`: SNAT local pods' traffic leaving the cluster CIDR.
pub const CFG_F_MASQUERADE: u32 = 0x1;

/// `struct weir_config`: node-wide settings.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Config {
    pub routing_mode: u32,
    pub tunnel_ifindex: u32,
    /// Network byte order.
    pub node_ip: u32,
    pub flags: u32,
    /// The cluster CIDR's network, network byte order.
    pub cluster_net: u32,
    /// The cluster CIDR's mask, network byte order.
    pub cluster_mask: u32,
}

impl Config {
    /// Masquerades pods' traffic to destinations outside `cluster` to the
    /// node IP (sets the flag and the network/mask pair).
    pub fn with_masquerade(mut self, cluster: ipnet::Ipv4Net) -> Self {
        self.flags |= CFG_F_MASQUERADE;
        self.cluster_net = u32::from_ne_bytes(cluster.network().octets());
        self.cluster_mask = u32::from_ne_bytes(cluster.netmask().octets());
        self
    }
}

/// `struct weir_route_key` without the LPM prefix length, which aya's
/// `lpm_trie::Key` carries.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteKey {
    pub family: u8,
    pub pad: [u8; 3],
    pub addr: [u32; 4],
}

impl RouteKey {
    /// The trie key for an IPv4 CIDR: family and padding count as 32
    /// leading bits that every IPv4 key shares.
    pub fn v4(cidr: ipnet::Ipv4Net) -> aya::maps::lpm_trie::Key<Self> {
        let data = Self {
            family: AF_INET,
            pad: [0; 3],
            addr: [u32::from_ne_bytes(cidr.network().octets()), 0, 0, 0],
        };
        aya::maps::lpm_trie::Key::new(32 + u32::from(cidr.prefix_len()), data)
    }
}

/// `struct weir_route`: the node owning a pod CIDR.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Route {
    /// Network byte order.
    pub node_ip: u32,
    pub flags: u32,
}

// SAFETY: all of these are `repr(C)`, `Copy`, made only of integers and byte
// arrays, with explicit padding fields, so every bit pattern is valid and no
// byte is uninitialised.
unsafe impl aya::Pod for EpKey {}
// SAFETY: as above.
unsafe impl aya::Pod for EpInfo {}
// SAFETY: as above.
unsafe impl aya::Pod for TrafficKey {}
// SAFETY: as above.
unsafe impl aya::Pod for Traffic {}
// SAFETY: as above.
unsafe impl aya::Pod for Config {}
// SAFETY: as above.
unsafe impl aya::Pod for RouteKey {}
// SAFETY: as above.
unsafe impl aya::Pod for Route {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masquerade_config_keeps_wire_byte_order() {
        let c = Config::default().with_masquerade("10.244.0.0/16".parse().unwrap());
        assert_eq!(c.cluster_net.to_ne_bytes(), [10, 244, 0, 0]);
        assert_eq!(c.cluster_mask.to_ne_bytes(), [255, 255, 0, 0]);
        assert_eq!(c.flags, CFG_F_MASQUERADE);
    }

    #[test]
    fn v4_key_keeps_wire_byte_order() {
        let k = EpKey::v4(Ipv4Addr::new(10, 244, 1, 7));
        assert_eq!(k.addr[0].to_ne_bytes(), [10, 244, 1, 7]);
        assert_eq!(k.family, AF_INET);
    }
}
