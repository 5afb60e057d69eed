//! The one door to the kernel: veth, address, route and neighbour changes
//! over rtnetlink, and entering pod network namespaces.
//!
//! [`Node`] is what the command logic needs; [`Netlink`] implements it for
//! real. Work inside a pod's namespace runs on a dedicated thread that calls
//! `setns` and then opens its own netlink socket on its own current-thread
//! runtime, so the main thread never leaves the node's namespace.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures_util::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkMessage};
use netlink_packet_route::neighbour::NeighbourState;
use netlink_packet_route::route::RouteScope;
use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::statfs::{NSFS_MAGIC, fstatfs};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::names::format_mac;

/// Why a kernel operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The netns path exists but could not be opened.
    #[error("opening netns {path}")]
    OpenNetns {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The path is not a network namespace (not on nsfs).
    #[error("{path} is not a network namespace")]
    NotANetns { path: String },
    /// The "pod" namespace is the node's own: wiring it would replace the
    /// node's default route.
    #[error("{path} is the node's own network namespace, not a pod's")]
    NodeNetns { path: String },
    /// `setns` into the pod's namespace failed.
    #[error("entering netns {path}")]
    Setns {
        path: String,
        #[source]
        source: Errno,
    },
    /// A netlink request failed.
    #[error("{op}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// A link we just made or were told about is not there.
    #[error("link {name} not found{}", if *in_pod { " in the pod netns" } else { "" })]
    LinkMissing { name: String, in_pod: bool },
    /// Creating the netlink socket or the runtime failed.
    #[error("setting up netlink")]
    Setup(#[source] std::io::Error),
    /// The namespace worker thread panicked.
    #[error("netns worker thread panicked")]
    Panicked,
}

/// The two ends of a new pod veth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethSpec {
    /// Host-side name (stays in the node netns).
    pub host: String,
    /// Unique temporary name of the pod side while it is still in the node netns.
    pub temp_peer: String,
    /// Final name of the pod side inside the pod netns (`CNI_IFNAME`).
    pub ifname: String,
    pub mtu: Option<u32>,
}

/// MAC addresses of a veth pair, as `aa:bb:..` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethMacs {
    pub host: String,
    pub pod: String,
}

/// Layer 3 setup of the pod interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAddressing {
    pub ipv4: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub gateway_mac: [u8; 6],
}

/// Kernel operations the CNI commands need.
pub trait Node {
    /// An open network namespace.
    type Netns;
    /// Open the namespace at `path`; `Ok(None)` when the path does not exist.
    fn open_netns(&self, path: &str) -> Result<Option<Self::Netns>, NodeError>;
    /// Does a link with this name exist in the node netns?
    fn link_exists(&self, name: &str) -> Result<bool, NodeError>;
    /// Delete a link in the node netns (for a veth, both ends). `Ok(false)` if absent.
    fn delete_link(&self, name: &str) -> Result<bool, NodeError>;
    /// Create the pair, move the peer into `netns`, rename it, bring both ends
    /// and the pod's `lo` up. May leave a partial pair behind on error: the
    /// caller deletes `spec.host`.
    fn plumb_veth(&self, netns: &Self::Netns, spec: &VethSpec) -> Result<VethMacs, NodeError>;
    /// Address, routes and gateway neighbour on the pod interface. Idempotent.
    fn configure_pod(&self, netns: &Self::Netns, ifname: &str, addr: &PodAddressing) -> Result<(), NodeError>;
    /// IPv4 addresses (address, prefix) on `ifname` in the pod; `Ok(None)` if the link is missing.
    fn pod_ipv4s(&self, netns: &Self::Netns, ifname: &str) -> Result<Option<Vec<(Ipv4Addr, u8)>>, NodeError>;
}

/// An open pod namespace: the fd and the path it came from (for messages).
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: String,
}

/// The real [`Node`]: rtnetlink on the running kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct Netlink;

impl Node for Netlink {
    type Netns = Netns;

    fn open_netns(&self, path: &str) -> Result<Option<Netns>, NodeError> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        // O_NONBLOCK: a FIFO (or anything else that blocks on open) at the
        // path must not hang the plugin; nsfs does not care.
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
            .open(path);
        let file = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(NodeError::OpenNetns {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let same_as_ours = |file: &File| -> std::io::Result<bool> {
            let (theirs, ours) = (file.metadata()?, std::fs::metadata("/proc/thread-self/ns/net")?);
            Ok(theirs.dev() == ours.dev() && theirs.ino() == ours.ino())
        };
        match fstatfs(&file) {
            Ok(st) if st.filesystem_type() == NSFS_MAGIC => match same_as_ours(&file) {
                Ok(false) => Ok(Some(Netns {
                    file,
                    path: path.to_owned(),
                })),
                Ok(true) => Err(NodeError::NodeNetns { path: path.to_owned() }),
                Err(source) => Err(NodeError::OpenNetns {
                    path: path.to_owned(),
                    source,
                }),
            },
            Ok(_) => Err(NodeError::NotANetns { path: path.to_owned() }),
            Err(e) => Err(NodeError::OpenNetns {
                path: path.to_owned(),
                source: e.into(),
            }),
        }
    }

    fn link_exists(&self, name: &str) -> Result<bool, NodeError> {
        on_node(async |h| Ok(link_by_name(&h, name).await?.is_some()))
    }

    fn delete_link(&self, name: &str) -> Result<bool, NodeError> {
        on_node(async |h| delete_by_name(&h, name).await)
    }

    fn plumb_veth(&self, netns: &Netns, spec: &VethSpec) -> Result<VethMacs, NodeError> {
        let host_mac = on_node(async |h| {
            // The peer is born inside the pod's netns (IFLA_NET_NS_FD in the
            // peer message): moving it afterwards costs a synchronize_net,
            // about 20 ms per ADD on this machine.
            let peer = rtnetlink::LinkMessageBuilder::<LinkUnspec>::new()
                .name(spec.temp_peer.clone())
                .setns_by_fd(netns.file.as_raw_fd())
                .build();
            let mut veth =
                LinkVeth::new(&spec.host, &spec.temp_peer).set_info_data(InfoData::Veth(InfoVeth::Peer(peer)));
            if let Some(mtu) = spec.mtu {
                veth = veth.mtu(mtu);
            }
            h.link().add(veth.build()).execute().await.map_err(nl(format!(
                "creating veth {} / {} in {}",
                spec.host, spec.temp_peer, netns.path
            )))?;
            let host = require_link(&h, &spec.host, false).await?;
            Ok(mac_of(&host))
        })?;

        let pod_mac = in_netns(netns, async |h| {
            let peer = require_link(&h, &spec.temp_peer, true).await?;
            let index = peer.header.index;
            let mut rename = LinkUnspec::new_with_index(index).name(spec.ifname.clone());
            if let Some(mtu) = spec.mtu {
                rename = rename.mtu(mtu);
            }
            h.link()
                .set(rename.build())
                .execute()
                .await
                .map_err(nl(format!("renaming {} to {}", spec.temp_peer, spec.ifname)))?;
            // weir's datapath is IPv4-only for now: keep the pod from sending
            // IPv6 neighbour and router solicitations that would only be
            // dropped (and counted). This thread is in the pod's netns, so
            // /proc/sys/net is the pod's.
            let sysctl = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", spec.ifname);
            if let Err(e) = std::fs::write(&sysctl, "1") {
                tracing::debug!(error = %weir_error::Report(&e), "disabling IPv6 on the pod interface");
            }
            h.link()
                .set(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .map_err(nl(format!("setting {} up", spec.ifname)))?;
            let lo = require_link(&h, "lo", true).await?;
            h.link()
                .set(LinkUnspec::new_with_index(lo.header.index).up().build())
                .execute()
                .await
                .map_err(nl("setting lo up".into()))?;
            Ok(mac_of(&peer))
        })?;

        on_node(async |h| {
            let host = require_link(&h, &spec.host, false).await?;
            h.link()
                .set(LinkUnspec::new_with_index(host.header.index).up().build())
                .execute()
                .await
                .map_err(nl(format!("setting {} up", spec.host)))
        })?;
        Ok(VethMacs {
            host: host_mac,
            pod: pod_mac,
        })
    }

    fn configure_pod(&self, netns: &Netns, ifname: &str, addr: &PodAddressing) -> Result<(), NodeError> {
        in_netns(netns, async |h| {
            let index = require_link(&h, ifname, true).await?.header.index;
            h.address()
                .add(index, IpAddr::V4(addr.ipv4), 32)
                .replace()
                .execute()
                .await
                .map_err(nl(format!("adding {}/32 to {ifname}", addr.ipv4)))?;
            let gw_route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(addr.gateway, 32)
                .output_interface(index)
                .scope(RouteScope::Link)
                .build();
            h.route()
                .add(gw_route)
                .replace()
                .execute()
                .await
                .map_err(nl(format!("adding route {}/32 dev {ifname}", addr.gateway)))?;
            let default = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
                .gateway(addr.gateway)
                .output_interface(index)
                .build();
            h.route()
                .add(default)
                .replace()
                .execute()
                .await
                .map_err(nl(format!("adding default route via {}", addr.gateway)))?;
            h.neighbours()
                .add(index, IpAddr::V4(addr.gateway))
                .link_layer_address(&addr.gateway_mac)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(nl(format!(
                    "adding neighbour {} lladdr {}",
                    addr.gateway,
                    format_mac(&addr.gateway_mac)
                )))?;
            Ok(())
        })
    }

    fn pod_ipv4s(&self, netns: &Netns, ifname: &str) -> Result<Option<Vec<(Ipv4Addr, u8)>>, NodeError> {
        in_netns(netns, async |h| {
            let Some(link) = link_by_name(&h, ifname).await? else {
                return Ok(None);
            };
            let messages: Vec<_> = h
                .address()
                .get()
                .set_link_index_filter(link.header.index)
                .execute()
                .try_collect()
                .await
                .map_err(nl(format!("listing addresses of {ifname}")))?;
            let addrs = messages
                .iter()
                .filter(|m| m.header.index == link.header.index)
                .flat_map(|m| {
                    m.attributes.iter().filter_map(move |a| match a {
                        AddressAttribute::Address(IpAddr::V4(ip)) => Some((*ip, m.header.prefix_len)),
                        _ => None,
                    })
                })
                .collect();
            Ok(Some(addrs))
        })
    }
}

fn nl(op: String) -> impl FnOnce(rtnetlink::Error) -> NodeError {
    move |source| NodeError::Netlink { op, source }
}

fn runtime() -> Result<tokio::runtime::Runtime, NodeError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(NodeError::Setup)
}

/// Run netlink work against the namespace this thread is in.
async fn with_handle<T>(work: impl AsyncFnOnce(Handle) -> Result<T, NodeError>) -> Result<T, NodeError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(NodeError::Setup)?;
    let driver = tokio::spawn(connection);
    let out = work(handle).await;
    driver.abort();
    out
}

/// Netlink work in the node's namespace, on the calling thread.
fn on_node<T>(work: impl AsyncFnOnce(Handle) -> Result<T, NodeError>) -> Result<T, NodeError> {
    runtime()?.block_on(with_handle(work))
}

/// Netlink work inside `netns`, on a thread of its own that joins the
/// namespace first; the socket is opened after `setns`, so it lives there.
fn in_netns<T: Send>(
    netns: &Netns,
    work: impl AsyncFnOnce(Handle) -> Result<T, NodeError> + Send,
) -> Result<T, NodeError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(&netns.file, CloneFlags::CLONE_NEWNET).map_err(|source| NodeError::Setns {
                    path: netns.path.clone(),
                    source,
                })?;
                runtime()?.block_on(with_handle(work))
            })
            .join()
            .unwrap_or(Err(NodeError::Panicked))
    })
}

fn is_errno(err: &rtnetlink::Error, errno: Errno) -> bool {
    matches!(err, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -(errno as i32))
}

async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, NodeError> {
    match h.link().get().match_name(name.to_owned()).execute().try_next().await {
        Ok(link) => Ok(link),
        Err(e) if is_errno(&e, Errno::ENODEV) => Ok(None),
        Err(source) => Err(NodeError::Netlink {
            op: format!("looking up link {name}"),
            source,
        }),
    }
}

async fn require_link(h: &Handle, name: &str, in_pod: bool) -> Result<LinkMessage, NodeError> {
    link_by_name(h, name).await?.ok_or_else(|| NodeError::LinkMissing {
        name: name.to_owned(),
        in_pod,
    })
}

async fn delete_by_name(h: &Handle, name: &str) -> Result<bool, NodeError> {
    let Some(link) = link_by_name(h, name).await? else {
        return Ok(false);
    };
    match h.link().del(link.header.index).execute().await {
        Ok(()) => Ok(true),
        // Gone in between (its peer's namespace went away): just as good.
        Err(e) if is_errno(&e, Errno::ENODEV) => Ok(false),
        Err(source) => Err(NodeError::Netlink {
            op: format!("deleting link {name}"),
            source,
        }),
    }
}

fn mac_of(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(bytes) => Some(format_mac(bytes)),
            _ => None,
        })
        .unwrap_or_default()
}
