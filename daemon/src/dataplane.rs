//! The door between endpoint logic and the kernel: the real implementation
//! drives the eBPF datapath and reads interfaces; tests use a fake.

use std::net::{IpAddr, Ipv4Addr};

use weir_agent_api::{EndpointCounters, Traffic};
use weir_datapath::Datapath;
use weir_datapath::abi::EpInfo;

use crate::netdev::{Netdev, NetdevError};

/// Why the kernel side of an endpoint operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The eBPF datapath: its maps, programs or links.
    #[error(transparent)]
    Datapath(#[from] weir_datapath::DatapathError),
    /// Netlink: the pod's host route and neighbour.
    #[error(transparent)]
    Netdev(#[from] NetdevError),
}

/// An interface of the agent's netns, as the endpoint manager needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interface {
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// A pod's host side: a veth whose peer is in another network namespace.
    pub pod_veth: bool,
}

/// What the endpoint manager needs from the kernel.
pub trait Dataplane: Send {
    /// An interface in the agent's netns, or None if absent.
    fn interface(&self, name: &str) -> Option<Interface>;
    /// Programs the endpoint map and attaches the programs to `iface`.
    /// `fresh` is false when re-adopting an interface after a restart.
    fn wire(&mut self, iface: &str, ip: Ipv4Addr, info: EpInfo, fresh: bool) -> Result<(), DataplaneError>;
    /// Rewrites the endpoint map's entry of a wired endpoint (its identity
    /// changed); the interface and its programs stay as they are.
    fn update(&mut self, ip: Ipv4Addr, info: EpInfo) -> Result<(), DataplaneError>;
    /// Undoes `wire`. Idempotent; tries every step and returns the first error.
    fn unwire(&mut self, iface: &str, ip: Ipv4Addr, endpoint_id: u32) -> Result<(), DataplaneError>;
    fn counters(&mut self, endpoint_id: u32) -> Result<EndpointCounters, DataplaneError>;
    /// Drops by reason name.
    fn drops(&self) -> Result<Vec<(String, Traffic)>, DataplaneError>;
    /// Interfaces that still have programs attached (pins on bpffs).
    fn attached_interfaces(&self) -> Vec<String>;
}

/// The real dataplane: the eBPF datapath plus interface lookups and host
/// routes in this netns.
pub struct Kernel {
    pub datapath: Datapath,
    pub netdev: Netdev,
    /// Runs netlink requests from the blocking threads the API uses.
    pub runtime: tokio::runtime::Handle,
}

impl Dataplane for Kernel {
    fn interface(&self, name: &str) -> Option<Interface> {
        // One netlink request (getifaddrs would dump every link and address).
        self.runtime.block_on(self.netdev.link_facts(name)).unwrap_or_else(|e| {
            tracing::warn!(iface = name, error = %weir_error::Report(&e), "looking up the interface");
            None
        })
    }

    fn wire(&mut self, iface: &str, ip: Ipv4Addr, info: EpInfo, fresh: bool) -> Result<(), DataplaneError> {
        self.datapath.upsert_endpoint(IpAddr::V4(ip), info)?;
        if fresh {
            self.datapath.attach_endpoint(iface)?;
        } else {
            self.datapath.reattach_endpoint(iface)?;
        }
        // Deleting the veth later takes this route and neighbour with it.
        self.runtime
            .block_on(self.netdev.add_pod_route(ip, info.ifindex, info.pod_mac))?;
        Ok(())
    }

    fn update(&mut self, ip: Ipv4Addr, info: EpInfo) -> Result<(), DataplaneError> {
        Ok(self.datapath.upsert_endpoint(IpAddr::V4(ip), info)?)
    }

    fn unwire(&mut self, iface: &str, ip: Ipv4Addr, endpoint_id: u32) -> Result<(), DataplaneError> {
        let detached = self.datapath.detach_endpoint(iface);
        let removed = self.datapath.remove_endpoint(IpAddr::V4(ip), endpoint_id);
        detached.and(removed).map_err(DataplaneError::from)
    }

    fn counters(&mut self, endpoint_id: u32) -> Result<EndpointCounters, DataplaneError> {
        let (i, e) = self.datapath.endpoint_traffic(endpoint_id)?;
        Ok(EndpointCounters {
            ingress: Traffic {
                packets: i.packets,
                bytes: i.bytes,
            },
            egress: Traffic {
                packets: e.packets,
                bytes: e.bytes,
            },
        })
    }

    fn drops(&self) -> Result<Vec<(String, Traffic)>, DataplaneError> {
        Ok(self
            .datapath
            .drops()?
            .into_iter()
            .map(|(r, t)| {
                (
                    r.name().to_owned(),
                    Traffic {
                        packets: t.packets,
                        bytes: t.bytes,
                    },
                )
            })
            .collect())
    }

    fn attached_interfaces(&self) -> Vec<String> {
        self.datapath.attached_interfaces()
    }
}
