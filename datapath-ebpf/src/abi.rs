//! The kernel ABI's Rust side: every struct, enum and constant of
//! `bpf/lib/abi.h`, generated from that header by bindgen at build time
//! (`build.rs`), under the names the rest of the crate uses. Nothing here
//! is kept in step by hand except [`RouteKey`], the LPM key without its
//! prefix length (aya's `lpm_trie::Key` carries that); `tests/abi_layout.rs`
//! checks it and every generated struct against the objects' BTF.
//!
//! This is also the crate's one home of `unsafe`: the `aya::Pod` markers,
//! the map syscalls aya has no API for ([`lookup_batch`],
//! [`lookup_and_delete`] on a hash map) and the one socket option neither nix nor libc names
//! ([`socket_netns_cookie`]).
#![allow(
    unsafe_code,
    reason = "aya::Pod is an unsafe marker trait and the map calls are raw bpf(2); each is justified below"
)]

use std::net::{IpAddr, Ipv4Addr};

/// What bindgen made of abi.h, untouched: its structs and enums generated
/// here, its constants in `weir-abi` (generated there, once).
#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    dead_code,
    clippy::all,
    reason = "generated code keeps the C names"
)]
pub mod sys {
    pub use weir_abi::sys::*;
    include!(concat!(env!("OUT_DIR"), "/abi_gen.rs"));
}

use weir_abi::{u8_of, u16_of};

pub const AF_INET: u8 = u8_of(sys::WEIR_AF_INET);
pub const AF_INET6: u8 = u8_of(sys::WEIR_AF_INET6);

pub const MAX_ENDPOINTS: u32 = sys::WEIR_MAX_ENDPOINTS;

pub use weir_abi::{DIR_EGRESS, DIR_INGRESS, DIR_UNKNOWN};

/// Observation points (`WEIR_OBS_*`): which program saw a packet.
pub mod obs {
    use super::sys;
    pub const FROM_POD: u32 = sys::WEIR_OBS_FROM_POD;
    pub const TO_POD: u32 = sys::WEIR_OBS_TO_POD;
    pub const FROM_NETDEV: u32 = sys::WEIR_OBS_FROM_NETDEV;
    pub const TO_NETDEV: u32 = sys::WEIR_OBS_TO_NETDEV;
    pub const FROM_OVERLAY: u32 = sys::WEIR_OBS_FROM_OVERLAY;
    pub const TO_OVERLAY: u32 = sys::WEIR_OBS_TO_OVERLAY;
    pub const XDP: u32 = sys::WEIR_OBS_XDP;
}

/// `struct weir_ep_key`: family + 16 address bytes, so IPv6 fits later.
pub type EpKey = sys::weir_ep_key;
/// `struct weir_ep_info`: what the datapath knows of a local endpoint.
pub type EpInfo = sys::weir_ep_info;
/// `struct weir_traffic_key`: endpoint id and direction.
pub type TrafficKey = sys::weir_traffic_key;
/// `struct weir_traffic`: packets and bytes.
pub type Traffic = sys::weir_traffic;
/// `struct weir_config`: node-wide settings.
pub type Config = sys::weir_config;
/// `struct weir_route`: the node owning a pod CIDR.
pub type Route = sys::weir_route;
/// `struct weir_ipcache_entry`: the identity of an address.
pub type IpCacheEntry = sys::weir_ipcache_entry;

/// `struct weir_policy_entry`: the verdicts of one policy-table slot.
pub type PolicyEntry = sys::weir_policy_entry;

pub type CtKey = sys::weir_ct_key;
pub type CtEntry = sys::weir_ct_entry;
/// `struct weir_event`: one record of the flow-event ring buffer.
pub type RawEvent = sys::weir_event;
pub const EVENT_VERSION: u8 = u8_of(sys::WEIR_EVENT_VERSION);
pub const EP_F_TRACE: u32 = sys::WEIR_EP_F_TRACE;
pub type ServiceKey = sys::weir_lb_svc_key;
pub type ServiceValue = sys::weir_lb_svc;
pub type BackendKey = sys::weir_lb_backend_key;
pub type BackendValue = sys::weir_lb_backend;
pub type AffinityKey = sys::weir_lb_affinity_key;
pub type AffinityValue = sys::weir_lb_affinity;

pub const ROUTING_NATIVE: u32 = sys::WEIR_ROUTING_NATIVE;
pub const ROUTING_VXLAN: u32 = sys::WEIR_ROUTING_VXLAN;

/// `WEIR_CFG_F_MASQUERADE`: SNAT local pods' traffic leaving the cluster CIDR.
pub const CFG_F_MASQUERADE: u32 = sys::WEIR_CFG_F_MASQUERADE;

pub const CT_MAX_ENTRIES: u32 = sys::WEIR_CT_MAX_ENTRIES;
/// The owner the node's connections from outside are charged to.
pub const CT_OWNER_NODE: u32 = sys::WEIR_CT_OWNER_NODE;
/// The node's share of the table, by default.
pub const CT_NODE_MAX_DEFAULT: u32 = sys::WEIR_CT_NODE_MAX_DEFAULT;
pub const CT_F_REVERSE: u8 = u8_of(sys::WEIR_CT_F_REVERSE);
pub const CT_F_HAIRPIN: u8 = u8_of(sys::WEIR_CT_F_HAIRPIN);
pub const CT_F_NODEPORT: u8 = u8_of(sys::WEIR_CT_F_NODEPORT);
pub const CT_F_SNAT: u8 = u8_of(sys::WEIR_CT_F_SNAT);
pub const CT_F_MASQ: u8 = u8_of(sys::WEIR_CT_F_MASQ);
pub const CT_NEW: u8 = u8_of(sys::WEIR_CT_NEW);
pub const CT_SYN_SENT: u8 = u8_of(sys::WEIR_CT_SYN_SENT);
pub const CT_ESTABLISHED: u8 = u8_of(sys::WEIR_CT_ESTABLISHED);
pub const CT_CLOSING: u8 = u8_of(sys::WEIR_CT_CLOSING);

pub const MAGLEV_M: usize = sys::WEIR_LB_MAGLEV_M as usize;
pub const MAX_SERVICES: u32 = sys::WEIR_LB_MAX_SERVICES;
pub const MAX_BACKENDS: u32 = sys::WEIR_LB_MAX_BACKENDS;
pub const HAIRPIN_IP: Ipv4Addr = Ipv4Addr::from_bits(sys::WEIR_LB_HAIRPIN_IP_HOST);
pub const ALG_RANDOM: u8 = u8_of(sys::WEIR_LB_ALG_RANDOM);
pub const ALG_MAGLEV: u8 = u8_of(sys::WEIR_LB_ALG_MAGLEV);
pub const LB_F_EXTERNAL: u8 = u8_of(sys::WEIR_LB_F_EXTERNAL);
pub const LB_F_LOCAL: u8 = u8_of(sys::WEIR_LB_F_LOCAL);
/// NodePort SNAT ports towards remote backends.
pub const NAT_PORTS: std::ops::RangeInclusive<u16> =
    u16_of(sys::WEIR_NAT_PORT_MIN)..=u16_of(sys::WEIR_NAT_PORT_MIN + sys::WEIR_NAT_PORT_COUNT - 1);

/// Node ports (and ICMP echo identifiers) handed to masqueraded flows.
pub const SNAT_PORTS: std::ops::RangeInclusive<u16> = u16_of(sys::WEIR_SNAT_PORT_MIN)..=u16_of(sys::WEIR_SNAT_PORT_MAX);

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
/// `lpm_trie::Key` carries: the one hand-written twin.
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

/// `struct weir_policy_key` without the LPM prefix length (as [`RouteKey`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyKey {
    pub endpoint_id: u32,
    pub peer: u32,
    pub direction: u8,
    pub proto: u8,
    /// Network byte order.
    pub dport: u16,
}

// SAFETY (every impl below): the type is `repr(C)` (bindgen emits
// `#[repr(C)]` for every struct), `Copy`, made only of integers and arrays
// of integers, with explicit padding fields in the C header (checked by
// tests/abi_layout.rs: member offsets leave no hole), so every bit pattern
// is valid and no byte is uninitialised.
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
// SAFETY: as above.
unsafe impl aya::Pod for IpCacheEntry {}
// SAFETY: as above.
unsafe impl aya::Pod for PolicyKey {}
// SAFETY: as above.
unsafe impl aya::Pod for PolicyEntry {}
// SAFETY: as above.
unsafe impl aya::Pod for CtKey {}
// SAFETY: as above.
unsafe impl aya::Pod for CtEntry {}
// SAFETY: as above.
unsafe impl aya::Pod for RawEvent {}
// SAFETY: as above.
unsafe impl aya::Pod for ServiceKey {}
// SAFETY: as above.
unsafe impl aya::Pod for ServiceValue {}
// SAFETY: as above.
unsafe impl aya::Pod for BackendKey {}
// SAFETY: as above.
unsafe impl aya::Pod for BackendValue {}
// SAFETY: as above.
unsafe impl aya::Pod for AffinityKey {}
// SAFETY: as above.
unsafe impl aya::Pod for AffinityValue {}

impl RawEvent {
    /// The record in `bytes` (a ring buffer sample: no alignment promised),
    /// `None` when it is not exactly one record long. Version and kind are
    /// the caller's to check.
    pub fn read(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != size_of::<Self>() {
            return None;
        }
        // SAFETY: the slice holds exactly size_of::<RawEvent>() bytes, and
        // RawEvent is plain integers with explicit padding (the Pod argument
        // above), so any bytes are a valid value; read_unaligned copes with
        // the ring buffer's 8-byte (not 8-byte-of-the-struct) alignment.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }

    /// The record's bytes as the datapath writes them (tests and the
    /// benchmark feed these to the agent's decoder).
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: `self` is a live RawEvent of size_of::<RawEvent>() bytes,
        // all initialised (integers and explicit padding, no holes: see the
        // Pod argument above); the slice borrows `self`.
        unsafe { std::slice::from_raw_parts((self as *const Self).cast::<u8>(), size_of::<Self>()) }
    }
}

// --- batched map operations -------------------------------------------------

/// bpf(2) with one `bpf_attr` whose `batch` member is set: its outcome
/// (errno read at once) and the count the kernel wrote back.
fn bpf_batch(
    cmd: aya_obj::generated::bpf_cmd,
    batch: aya_obj::generated::bpf_attr__bindgen_ty_3,
) -> (std::io::Result<()>, u32) {
    let mut attr: aya_obj::generated::bpf_attr = zeroed_attr();
    attr.batch = batch;
    // The pointers in `batch` (set by the callers below) point at buffers
    // that live across the call and are as large as `count` says.
    let outcome = sys_bpf(cmd, &mut attr);
    // SAFETY: the kernel wrote `count` back into the union's batch member.
    (outcome, unsafe { attr.batch.count })
}

/// bpf(2) with `attr`; the errno read at once.
fn sys_bpf(cmd: aya_obj::generated::bpf_cmd, attr: &mut aya_obj::generated::bpf_attr) -> std::io::Result<()> {
    // SAFETY: `attr` is a valid, fully initialised bpf_attr of the size we
    // pass; every pointer in the member the callers set points at memory
    // that lives across the call and is as large as the map's key or value
    // (or the batch's count) says.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_int,
            attr as *mut aya_obj::generated::bpf_attr,
            size_of::<aya_obj::generated::bpf_attr>() as libc::c_uint,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` on a hash map (Linux 5.14): deletes
/// `key` and returns the value it had at that moment, `None` if it had
/// none. Unlike a read then a delete, what comes back is exactly what went.
pub(crate) fn lookup_and_delete<K: aya::Pod, V: aya::Pod + Default>(
    fd: std::os::fd::BorrowedFd<'_>,
    key: &K,
) -> std::io::Result<Option<V>> {
    use std::os::fd::AsRawFd;
    let mut value = V::default();
    let mut attr: aya_obj::generated::bpf_attr = zeroed_attr();
    attr.__bindgen_anon_2 = aya_obj::generated::bpf_attr__bindgen_ty_2 {
        map_fd: fd.as_raw_fd() as u32,
        key: key as *const K as u64,
        __bindgen_anon_1: aya_obj::generated::bpf_attr__bindgen_ty_2__bindgen_ty_1 {
            value: &mut value as *mut V as u64,
        },
        flags: 0,
    };
    match sys_bpf(aya_obj::generated::bpf_cmd::BPF_MAP_LOOKUP_AND_DELETE_ELEM, &mut attr) {
        Ok(()) => Ok(Some(value)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn zeroed_attr() -> aya_obj::generated::bpf_attr {
    // SAFETY: bpf_attr is a C union of integer structs: all zeroes is the
    // value the kernel expects for every member not set.
    unsafe { std::mem::zeroed() }
}

/// One `BPF_MAP_LOOKUP_BATCH` on a hash map: fills `keys` and `values` from
/// the bucket after `token` (the start for `None`) and returns how many it
/// filled and the token to go on from, `None` once the map is done. Hash
/// maps return a whole bucket or nothing: `ENOSPC` means the buffers are
/// smaller than one bucket (the caller grows them).
pub(crate) fn lookup_batch<K: aya::Pod, V: aya::Pod>(
    fd: std::os::fd::BorrowedFd<'_>,
    token: Option<u32>,
    keys: &mut [K],
    values: &mut [V],
) -> std::io::Result<(usize, Option<u32>)> {
    use std::os::fd::AsRawFd;
    let in_batch = token.unwrap_or(0);
    let mut out_batch = 0u32;
    let count = keys.len().min(values.len()) as u32;
    let batch = aya_obj::generated::bpf_attr__bindgen_ty_3 {
        in_batch: if token.is_some() {
            &in_batch as *const u32 as u64
        } else {
            0
        },
        out_batch: &mut out_batch as *mut u32 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count,
        map_fd: fd.as_raw_fd() as u32,
        elem_flags: 0,
        flags: 0,
    };
    match bpf_batch(aya_obj::generated::bpf_cmd::BPF_MAP_LOOKUP_BATCH, batch) {
        (Ok(()), filled) => Ok((filled as usize, Some(out_batch))),
        // The end of the map, with the last entries (if any) filled.
        (Err(e), filled) if e.raw_os_error() == Some(libc::ENOENT) => Ok((filled as usize, None)),
        (Err(e), _) => Err(e),
    }
}

/// SO_NETNS_COOKIE (include/uapi/asm-generic/socket.h; Linux 5.14): the
/// cookie of the socket's network namespace, as `bpf_get_netns_cookie`.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The network namespace cookie of `socket`'s namespace.
pub(crate) fn socket_netns_cookie(socket: &impl std::os::fd::AsRawFd) -> std::io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, a u64
    // we own, and `len` says exactly that size; the fd is borrowed live.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

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
