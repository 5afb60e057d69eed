//! Socket-level services (`bpf/bpf_sock.c`): the node's own sockets reach
//! a ClusterIP, this node's NodePort or an external IP by being pointed at a
//! backend when they connect or send. The programs sit at the root of the
//! cgroup v2 hierarchy, where every socket of the machine passes; they act
//! on sockets of the network namespaces in `weir_sock_netns` only (this
//! node's), so each node of a lab on one machine, each with its own agent
//! and its own attachment, keeps to its own sockets.
//!
//! The links are pinned under the node's `links/` like the device
//! programs: they outlive the agent, so the node keeps reaching services
//! while the agent restarts, and a new agent swaps in its programs by
//! pinning its links over the old pins (both run for that instant; the
//! second finds a backend address, no frontend, and leaves it).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use aya::Ebpf;
use aya::maps::HashMap;
use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr};

use crate::datapath::{Datapath, DatapathError, remove_pin};
use crate::maps;

/// The programs of bpf_sock.o, one per hook.
pub const SOCK_PROGRAMS: [&str; 4] = ["sock_connect4", "sock_sendmsg4", "sock_recvmsg4", "sock_getpeername4"];

type Result<T, E = DatapathError> = std::result::Result<T, E>;

/// Loads (verifies) the programs; attaching is [`Datapath::attach_socket_lb`].
pub(crate) fn load_programs(sock: &mut Ebpf) -> Result<()> {
    for name in SOCK_PROGRAMS {
        program(sock, name)?
            .load()
            .map_err(|source| DatapathError::Program { name, source })?;
    }
    Ok(())
}

fn program<'a>(sock: &'a mut Ebpf, name: &'static str) -> Result<&'a mut CgroupSockAddr> {
    sock.program_mut(name)
        .ok_or(DatapathError::Missing(name))?
        .try_into()
        .map_err(|source| DatapathError::Program { name, source })
}

/// The cookie of the calling thread's network namespace, as the programs'
/// `bpf_get_netns_cookie` sees it (SO_NETNS_COOKIE, Linux 5.14).
pub fn netns_cookie() -> io::Result<u64> {
    // Any socket of the namespace tells; bound to no address in particular
    // (a fresh namespace has no loopback address yet).
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    crate::abi::socket_netns_cookie(&socket)
}

impl Datapath {
    fn sock_link_pin(&self, program: &str) -> PathBuf {
        self.links_dir.join(format!("cgroup-{program}"))
    }

    /// Attaches the socket programs to the cgroup v2 directory `cgroup`
    /// (the hierarchy's root, for every socket of the node) for sockets of
    /// the network namespace `netns_cookie` ([`netns_cookie`]). Replaces
    /// what an earlier agent attached, without a gap.
    pub fn attach_socket_lb(&mut self, cgroup: &Path, netns_cookie: u64) -> Result<()> {
        self.set_socket_netns(netns_cookie)?;
        let cgroup_dir = File::open(cgroup).map_err(|source| DatapathError::Pin {
            path: cgroup.to_owned(),
            source,
        })?;
        let iface = cgroup.display().to_string();
        for name in SOCK_PROGRAMS {
            let pin = self.sock_link_pin(name);
            let fresh = pin.with_file_name(format!("cgroup-{name}-new"));
            remove_pin(fresh.clone())?;
            let attach_err = |source| DatapathError::Attach {
                program: name,
                iface: iface.clone(),
                source,
            };
            let prog = program(&mut self.sock, name)?;
            // A bpf_link on a cgroup always lets other programs run too
            // (the kernel attaches links with BPF_F_ALLOW_MULTI); the flags
            // passed must be none.
            let id = prog.attach(&cgroup_dir, CgroupAttachMode::Single).map_err(attach_err)?;
            let link =
                FdLink::try_from(prog.take_link(id).map_err(attach_err)?).map_err(|source| DatapathError::Link {
                    program: name,
                    iface: iface.clone(),
                    source,
                })?;
            link.pin(&fresh).map_err(|e| DatapathError::Pin {
                path: fresh.clone(),
                source: io::Error::other(e),
            })?;
            // The old pin's link, if any, goes with its last reference.
            std::fs::rename(&fresh, &pin).map_err(|source| DatapathError::Pin { path: pin, source })?;
        }
        Ok(())
    }

    /// A loaded socket program by name ([`SOCK_PROGRAMS`]), e.g. for its
    /// verifier statistics. Panics on another name.
    pub fn socket_program(&self, name: &str) -> &CgroupSockAddr {
        self.sock
            .program(name)
            .and_then(|p| p.try_into().ok())
            .unwrap_or_else(|| panic!("bpf_sock.o has no program {name}"))
    }

    /// Detaches the socket programs (their pinned links). Idempotent.
    pub fn detach_socket_lb(&mut self) -> Result<()> {
        for name in SOCK_PROGRAMS {
            remove_pin(self.sock_link_pin(name))?;
        }
        Ok(())
    }

    /// Whether the socket programs are attached (their links pinned).
    pub fn socket_lb_attached(&self) -> bool {
        SOCK_PROGRAMS.iter().all(|name| self.sock_link_pin(name).exists())
    }

    /// Makes `cookie` the one namespace whose sockets the programs serve.
    fn set_socket_netns(&mut self, cookie: u64) -> Result<()> {
        let map_err = |source| DatapathError::Map {
            map: maps::SOCK_NETNS,
            source,
        };
        let map = self
            .sock
            .map_mut(maps::SOCK_NETNS)
            .ok_or(DatapathError::Missing(maps::SOCK_NETNS))?;
        let mut netns: HashMap<_, u64, u8> = HashMap::try_from(map).map_err(map_err)?;
        let stale: Vec<u64> = netns.keys().filter_map(|k| k.ok()).filter(|k| *k != cookie).collect();
        netns.insert(cookie, 1, 0).map_err(map_err)?;
        for key in stale {
            netns.remove(&key).map_err(map_err)?;
        }
        Ok(())
    }
}
