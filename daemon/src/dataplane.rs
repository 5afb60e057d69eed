//! The door between endpoint logic and the kernel: the real implementation
//! drives the eBPF datapath and reads interfaces; tests use a fake.

use std::net::{IpAddr, Ipv4Addr};

use weir_agent_api::{EndpointCounters, Traffic};
use weir_datapath::Datapath;
use weir_datapath::abi::EpInfo;

use crate::netdev::Netdev;

/// What the endpoint manager needs from the kernel.
pub trait Dataplane: Send {
    /// ifindex and MAC of an interface in the agent's netns, or None if absent.
    fn interface(&self, name: &str) -> Option<(u32, [u8; 6])>;
    /// Programs the endpoint map and attaches the programs to `iface`.
    /// `fresh` is false when re-adopting an interface after a restart.
    fn wire(&mut self, iface: &str, ip: Ipv4Addr, info: EpInfo, fresh: bool) -> Result<(), String>;
    /// Undoes `wire`. Idempotent.
    fn unwire(&mut self, iface: &str, ip: Ipv4Addr, endpoint_id: u32) -> Result<(), String>;
    fn counters(&mut self, endpoint_id: u32) -> Result<EndpointCounters, String>;
    /// Drops by reason name.
    fn drops(&self) -> Result<Vec<(String, Traffic)>, String>;
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
    fn interface(&self, name: &str) -> Option<(u32, [u8; 6])> {
        let ifindex = nix::net::if_::if_nametoindex(name).ok()?;
        let mac = nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
            (a.interface_name == name)
                .then(|| a.address.and_then(|s| s.as_link_addr().and_then(|l| l.addr())))
                .flatten()
        })?;
        Some((ifindex, mac))
    }

    fn wire(&mut self, iface: &str, ip: Ipv4Addr, info: EpInfo, fresh: bool) -> Result<(), String> {
        self.datapath
            .upsert_endpoint(IpAddr::V4(ip), info)
            .map_err(|e| e.to_string())?;
        let attached = if fresh {
            self.datapath.attach_endpoint(iface)
        } else {
            self.datapath.reattach_endpoint(iface)
        };
        attached.map_err(|e| format!("{e}: {}", error_chain(&e)))?;
        // Deleting the veth later takes this route and neighbour with it.
        self.runtime
            .block_on(self.netdev.add_pod_route(ip, info.ifindex, info.pod_mac))
            .map_err(|e| format!("{e}: {}", error_chain(&e)))
    }

    fn unwire(&mut self, iface: &str, ip: Ipv4Addr, endpoint_id: u32) -> Result<(), String> {
        let detached = self.datapath.detach_endpoint(iface).map_err(|e| e.to_string());
        let removed = self
            .datapath
            .remove_endpoint(IpAddr::V4(ip), endpoint_id)
            .map_err(|e| e.to_string());
        detached.and(removed)
    }

    fn counters(&mut self, endpoint_id: u32) -> Result<EndpointCounters, String> {
        let (i, e) = self.datapath.endpoint_traffic(endpoint_id).map_err(|e| e.to_string())?;
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

    fn drops(&self) -> Result<Vec<(String, Traffic)>, String> {
        Ok(self
            .datapath
            .drops()
            .map_err(|e| e.to_string())?
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

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}
