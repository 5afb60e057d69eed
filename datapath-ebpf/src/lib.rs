//! weir's eBPF datapath: the compiled C programs, the Rust twins of the
//! structures they share with userspace, and the loader that pins, attaches
//! and programs them.

pub mod abi;
mod bpffs;
mod datapath;
pub mod drop;

pub use bpffs::{BpffsError, ensure_bpffs};
pub use datapath::{Datapath, DatapathError, EndpointEntry, ProgramKind};

/// The object with the programs for the host side of a pod's veth, built by
/// `build.rs` from `bpf/bpf_lxc.c`.
pub const BPF_LXC: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bpf_lxc.o"));

/// Map names, as declared in `bpf/lib/maps.h`.
pub mod maps {
    pub const ENDPOINTS: &str = "weir_endpoints";
    pub const EP_TRAFFIC: &str = "weir_ep_traffic";
    pub const DROPS: &str = "weir_drops";
}
