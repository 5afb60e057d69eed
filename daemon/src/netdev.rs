//! The agent's netlink door: the vxlan device, per-pod host routes and
//! neighbours, and routes to other nodes' pod CIDRs.

use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkInfo};
use netlink_packet_route::neighbour::NeighbourState;
use netlink_packet_route::route::{RouteProtocol, RouteScope};
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};

/// Routes weir owns carry this protocol number, so they can be told apart
/// from anything an operator added ("weir" in /etc/iproute2/rt_protos style).
const RTPROT_WEIR: u8 = 0xf3;

/// VXLAN's IANA port; Linux's historic default is 8472, Cilium uses 8472 too.
pub const VXLAN_PORT: u16 = 8472;
pub const VXLAN_DEVICE: &str = "weir_vxlan";

/// Inner destination MAC for the node's own packets into the tunnel: the far
/// side's `from_overlay` rewrites it before delivery, so any unicast MAC does.
const OVERLAY_PEER_MAC: [u8; 6] = [0x02, 0x77, 0x65, 0x69, 0x72, 0x00];

#[derive(Debug, thiserror::Error)]
pub enum NetdevError {
    /// Opening the netlink socket failed.
    #[error("netlink socket")]
    Socket(#[source] std::io::Error),
    /// A netlink request failed.
    #[error("{what}")]
    Request {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// A device the agent needs is missing.
    #[error("no interface {0}")]
    NoLink(String),
}

#[derive(Clone)]
pub struct Netdev {
    handle: Handle,
}

fn req(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetdevError {
    let what = what.into();
    move |source| NetdevError::Request { what, source }
}

impl Netdev {
    /// Opens a netlink connection; its task runs on the current runtime.
    pub fn connect() -> Result<Self, NetdevError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetdevError::Socket)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    pub async fn link_index(&self, name: &str) -> Result<Option<u32>, NetdevError> {
        let mut links = self.handle.link().get().match_name(name.to_owned()).execute();
        match links.try_next().await {
            Ok(link) => Ok(link.map(|l| l.header.index)),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc_enodev() => Ok(None),
            Err(source) => Err(NetdevError::Request {
                what: format!("looking up {name}"),
                source,
            }),
        }
    }

    /// The first IPv4 address on an interface.
    /// The link kind netlink reports (`veth`, `bridge`, `vxlan`, ...); `None`
    /// for a physical device, which has none.
    pub async fn link_kind(&self, index: u32) -> Result<Option<String>, NetdevError> {
        let mut links = self.handle.link().get().match_index(index).execute();
        let link = links
            .try_next()
            .await
            .map_err(req(format!("looking up link {index}")))?
            .ok_or_else(|| NetdevError::NoLink(index.to_string()))?;
        Ok(link.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                LinkInfo::Kind(kind) => Some(kind.to_string()),
                _ => None,
            }),
            _ => None,
        }))
    }

    /// An interface by name in one request: its index, MAC, and whether
    /// it is a pod's host side (a veth whose peer lives in another network
    /// namespace; not loopback, not the uplink, not a veth with both ends
    /// here). `None` when there is no such interface.
    pub async fn link_facts(&self, name: &str) -> Result<Option<crate::dataplane::Interface>, NetdevError> {
        let mut links = self.handle.link().get().match_name(name.to_owned()).execute();
        let link = match links.try_next().await {
            Ok(Some(link)) => link,
            Ok(None) => return Ok(None),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc_enodev() => return Ok(None),
            Err(source) => {
                return Err(NetdevError::Request {
                    what: format!("looking up {name}"),
                    source,
                });
            }
        };
        let mut facts = crate::dataplane::Interface {
            ifindex: link.header.index,
            mac: [0; 6],
            pod_veth: false,
        };
        let (mut veth, mut peer_elsewhere) = (false, false);
        for a in &link.attributes {
            match a {
                LinkAttribute::Address(m) => {
                    if let Ok(mac) = m.as_slice().try_into() {
                        facts.mac = mac;
                    }
                }
                LinkAttribute::LinkInfo(infos) => {
                    veth |= infos
                        .iter()
                        .any(|i| matches!(i, LinkInfo::Kind(k) if k.to_string() == "veth"));
                }
                LinkAttribute::LinkNetNsId(_) => peer_elsewhere = true,
                _ => {}
            }
        }
        facts.pod_veth = veth && peer_elsewhere;
        Ok(Some(facts))
    }

    /// The name of the interface holding `ip` (the node's uplink, found
    /// from the Node's InternalIP).
    pub async fn link_with_ipv4(&self, ip: Ipv4Addr) -> Result<Option<String>, NetdevError> {
        let mut addrs = self.handle.address().get().execute();
        let mut index = None;
        while let Some(msg) = addrs.try_next().await.map_err(req("listing addresses"))? {
            if msg.attributes.contains(&AddressAttribute::Address(IpAddr::V4(ip))) {
                index = Some(msg.header.index);
            }
        }
        let Some(index) = index else {
            return Ok(None);
        };
        let mut links = self.handle.link().get().match_index(index).execute();
        let link = links.try_next().await.map_err(req("looking up the uplink"))?;
        Ok(link.and_then(|l| {
            l.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n),
                _ => None,
            })
        }))
    }

    pub async fn ipv4_of(&self, index: u32) -> Result<Option<Ipv4Addr>, NetdevError> {
        let mut addrs = self.handle.address().get().set_link_index_filter(index).execute();
        while let Some(msg) = addrs.try_next().await.map_err(req("listing addresses"))? {
            for attr in msg.attributes {
                if let AddressAttribute::Address(IpAddr::V4(a)) = attr {
                    return Ok(Some(a));
                }
            }
        }
        Ok(None)
    }

    /// Creates (or adopts) the external-mode vxlan device, up; returns its
    /// ifindex. External mode: the datapath sets the remote per packet.
    pub async fn ensure_vxlan(&self) -> Result<u32, NetdevError> {
        if self.link_index(VXLAN_DEVICE).await?.is_none() {
            let vxlan = LinkVxlan::new(VXLAN_DEVICE, 0)
                .port(VXLAN_PORT)
                .collect_metadata(true)
                .learning(false)
                .build();
            self.handle
                .link()
                .add(vxlan)
                .execute()
                .await
                .map_err(req("creating the vxlan device"))?;
        }
        let index = self
            .link_index(VXLAN_DEVICE)
            .await?
            .ok_or_else(|| NetdevError::NoLink(VXLAN_DEVICE.into()))?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(req("setting the vxlan device up"))?;
        Ok(index)
    }

    /// `ip link del`: gone already is fine.
    pub async fn delete_link(&self, index: u32) -> Result<(), NetdevError> {
        match self.handle.link().del(index).execute().await {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc_enodev() => Ok(()),
            other => other.map_err(req(format!("deleting link {index}"))),
        }
    }

    /// `ip route replace <pod>/32 dev <host veth> scope link` plus a
    /// permanent neighbour, so the node reaches the pod without ARP and
    /// reverse-path checks accept the pod's packets.
    pub async fn add_pod_route(&self, ip: Ipv4Addr, ifindex: u32, pod_mac: [u8; 6]) -> Result<(), NetdevError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(ip, 32)
            .output_interface(ifindex)
            .scope(RouteScope::Link)
            .protocol(RouteProtocol::Other(RTPROT_WEIR))
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(req(format!("route to pod {ip}")))?;
        self.handle
            .neighbours()
            .add(ifindex, IpAddr::V4(ip))
            .link_layer_address(&pod_mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(req(format!("neighbour for pod {ip}")))
    }

    /// A route to another node's pod CIDR via its node IP: over the uplink
    /// (native routing), or `onlink` over the vxlan device, where a
    /// permanent neighbour stands in for ARP and the datapath's `to_overlay`
    /// picks the tunnel endpoint.
    pub async fn replace_node_route(
        &self,
        cidr: Ipv4Net,
        via: Ipv4Addr,
        dev: u32,
        overlay: bool,
    ) -> Result<(), NetdevError> {
        let mut route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(cidr.network(), cidr.prefix_len())
            .gateway(via)
            .output_interface(dev)
            .protocol(RouteProtocol::Other(RTPROT_WEIR));
        if overlay {
            route = route.onlink();
            self.handle
                .neighbours()
                .add(dev, IpAddr::V4(via))
                .link_layer_address(&OVERLAY_PEER_MAC)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(req(format!("overlay neighbour {via}")))?;
        }
        self.handle
            .route()
            .add(route.build())
            .replace()
            .execute()
            .await
            .map_err(req(format!("route {cidr} via {via}")))
    }

    pub async fn delete_node_route(&self, cidr: Ipv4Net) -> Result<(), NetdevError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(cidr.network(), cidr.prefix_len())
            .protocol(RouteProtocol::Other(RTPROT_WEIR))
            .build();
        match self.handle.route().del(route).execute().await {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc_esrch() => Ok(()),
            other => other.map_err(req(format!("deleting route {cidr}"))),
        }
    }

    /// Routes weir installed to other nodes' pod CIDRs (for cleanup after a restart).
    pub async fn weir_node_routes(&self) -> Result<Vec<Ipv4Net>, NetdevError> {
        let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut routes = self.handle.route().get(filter).execute();
        let mut out = Vec::new();
        while let Some(msg) = routes.try_next().await.map_err(req("listing routes"))? {
            if msg.header.protocol != RouteProtocol::Other(RTPROT_WEIR) || msg.header.destination_prefix_length == 32 {
                continue;
            }
            for attr in &msg.attributes {
                if let netlink_packet_route::route::RouteAttribute::Destination(
                    netlink_packet_route::route::RouteAddress::Inet(a),
                ) = attr
                    && let Ok(net) = Ipv4Net::new(*a, msg.header.destination_prefix_length)
                {
                    out.push(net);
                }
            }
        }
        Ok(out)
    }

    pub async fn mac_of(&self, index: u32) -> Result<Option<[u8; 6]>, NetdevError> {
        let mut links = self.handle.link().get().match_index(index).execute();
        let Some(link) = links.try_next().await.map_err(req("reading link"))? else {
            return Ok(None);
        };
        Ok(link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(m) => m.as_slice().try_into().ok(),
            _ => None,
        }))
    }
}

fn libc_enodev() -> i32 {
    nix::errno::Errno::ENODEV as i32
}

fn libc_esrch() -> i32 {
    nix::errno::Errno::ESRCH as i32
}
