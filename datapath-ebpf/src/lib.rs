//! weir's eBPF datapath: the compiled C programs, the Rust twins of the
//! structures they share with userspace, and the loader that pins, attaches
//! and programs them.

pub mod abi;
mod bpffs;
pub mod conntrack;
mod datapath;
pub mod drop;
pub mod events;
pub mod ipcache;
pub mod lb;
pub mod pins;
pub mod policy;
pub mod snat;
mod socket_lb;

pub use bpffs::{BpffsError, ensure_bpffs};
pub use datapath::{
    Datapath, DatapathError, EndpointEntry, LoadOptions, ProgramKind, RouteMaps, TailCall, XDP_PROGRAM,
};
pub use socket_lb::{SOCK_PROGRAMS, netns_cookie};

/// The object with the programs for the host side of a pod's veth, built by
/// `build.rs` from `bpf/bpf_lxc.c`.
pub const BPF_LXC: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bpf_lxc.o"));

/// The object with the programs for the node's own devices (uplink, vxlan),
/// built from `bpf/bpf_host.c`.
pub const BPF_HOST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bpf_host.o"));

/// The XDP program for the node's uplink (NodePort / external IPs), built
/// from `bpf/bpf_xdp.c`.
pub const BPF_XDP: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bpf_xdp.o"));

/// The socket-level service programs (cgroup connect4, sendmsg4, recvmsg4,
/// getpeername4) for the node's own sockets, built from `bpf/bpf_sock.c`.
pub const BPF_SOCK: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bpf_sock.o"));

/// XDP_PASS alone, for the far end of a veth whose near end sends with
/// XDP_TX (the kernel only delivers those when the peer has an XDP program):
/// `weir lab` puts it on its switch's ports. Built from `bpf/bpf_xdp_pass.c`.
pub const BPF_XDP_PASS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bpf_xdp_pass.o"));

/// Map names, as declared in `bpf/lib/maps.h`.
pub mod maps {
    pub const ENDPOINTS: &str = "weir_endpoints";
    pub const EP_TRAFFIC: &str = "weir_ep_traffic";
    pub const DROPS: &str = "weir_drops";
    pub const CONFIG: &str = "weir_config";
    pub const NODE_ROUTES: &str = "weir_node_routes";
    pub const NODES: &str = "weir_nodes";
    pub const CALLS: &str = "weir_calls";
    pub const IPCACHE: &str = "weir_ipcache";
    pub const SOCK_NETNS: &str = "weir_sock_netns";
}
