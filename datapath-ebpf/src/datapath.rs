//! Loading, pinning, attaching and programming the datapath through aya.
//! This module is the only door from userspace into the kernel's BPF side.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, ProgramArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle};
use aya::programs::xdp::XdpLink;
use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use ipnet::Ipv4Net;

use crate::abi::{Config, DIR_EGRESS, DIR_INGRESS, EpInfo, EpKey, Route, RouteKey, Traffic, TrafficKey};
use crate::drop::DropReason;
use crate::maps;

/// Every TC program of the datapath.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramKind {
    /// TC ingress of a pod's host veth: what the pod sends.
    FromPod,
    /// TC egress of a pod's host veth: what the node's stack sends to the pod.
    ToPod,
    /// TC ingress of the node's uplink: traffic routed here for local pods,
    /// and replies to masqueraded flows.
    FromNetdev,
    /// TC egress of the node's uplink: masquerades local pods' traffic
    /// leaving the cluster CIDR to the node IP.
    ToNetdev,
    /// TC ingress of the vxlan device: decapsulated traffic for local pods.
    FromOverlay,
    /// TC egress of the vxlan device: the node's own traffic to remote pods.
    ToOverlay,
}

impl ProgramKind {
    /// The programs on each pod's host veth.
    pub const POD: [ProgramKind; 2] = [ProgramKind::FromPod, ProgramKind::ToPod];
    pub const ALL: [ProgramKind; 6] = [
        ProgramKind::FromPod,
        ProgramKind::ToPod,
        ProgramKind::FromNetdev,
        ProgramKind::ToNetdev,
        ProgramKind::FromOverlay,
        ProgramKind::ToOverlay,
    ];

    pub fn program_name(self) -> &'static str {
        match self {
            Self::FromPod => "from_pod",
            Self::ToPod => "to_pod",
            Self::FromNetdev => "from_netdev",
            Self::ToNetdev => "to_netdev",
            Self::FromOverlay => "from_overlay",
            Self::ToOverlay => "to_overlay",
        }
    }

    fn attach_type(self) -> TcAttachType {
        match self {
            Self::ToPod | Self::ToNetdev | Self::ToOverlay => TcAttachType::Egress,
            Self::FromPod | Self::FromNetdev | Self::FromOverlay => TcAttachType::Ingress,
        }
    }

    /// Pod programs live in bpf_lxc.o, node-device programs in bpf_host.o.
    fn in_host_object(self) -> bool {
        matches!(
            self,
            Self::FromNetdev | Self::ToNetdev | Self::FromOverlay | Self::ToOverlay
        )
    }
}

/// The XDP program in bpf_xdp.o.
pub const XDP_PROGRAM: &str = "from_netdev_xdp";

/// The programs that are only ever tail-called, each in its slot of
/// `weir_calls` (`WEIR_CALL_*` in abi.h). They live in bpf_lxc.o; the
/// node-device programs reach them through the same pinned array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailCall {
    /// Every TC drop: the accounting (and, later, the drop event).
    DropNotify,
    /// from_pod after its source check: conntrack, services, delivery.
    FromPodCt,
    /// The TCP RST / ICMP unreachable for a service without backends.
    PodReject,
}

impl TailCall {
    pub const ALL: [TailCall; 3] = [TailCall::DropNotify, TailCall::FromPodCt, TailCall::PodReject];

    pub fn program_name(self) -> &'static str {
        match self {
            Self::DropNotify => "drop_notify",
            Self::FromPodCt => "from_pod_ct",
            Self::PodReject => "pod_reject",
        }
    }

    /// Its slot in `weir_calls`.
    pub fn slot(self) -> u32 {
        match self {
            Self::DropNotify => crate::abi::sys::WEIR_CALL_DROP_NOTIFY,
            Self::FromPodCt => crate::abi::sys::WEIR_CALL_FROM_POD_CT,
            Self::PodReject => crate::abi::sys::WEIR_CALL_POD_REJECT,
        }
    }
}

/// Pod programs are classic tc filters (a clsact qdisc and cls_bpf in
/// direct-action mode), not TCX links: creating a TCX link waits for an RCU
/// grace period under the RTNL lock (about 15 ms here, twice per pod, most
/// of a CNI ADD), a netlink filter does not. They stay attached when the
/// agent exits (no pin needed) and a restarted agent replaces them in
/// place, atomically, by priority and handle. Node devices keep TCX: few,
/// long-lived, attached once.
const POD_TC_PRIORITY: u16 = 1;
const POD_TC_HANDLE: TcHandle = TcHandle::new(0, 1);

/// The oldest kernel the datapath loads on (major, minor).
pub const MIN_KERNEL: (u8, u8) = (6, 6);

/// Host veths of pods (weir-cni names them `lxc` + 11 hex digits).
const POD_IFACE_PREFIX: &str = "lxc";

/// Errors from the datapath, each naming what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The embedded object failed to load (verifier log included).
    #[error("loading the datapath object")]
    Load(#[source] aya::EbpfError),
    /// A program failed to load into the kernel.
    #[error("loading program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// The load options cannot be used.
    #[error("invalid load options: {0}")]
    Options(String),
    /// The running kernel is older than the datapath needs.
    #[error(
        "kernel {found} is older than {}.{}, which the datapath needs (TCX links on node devices: 6.6; BPF_XCHG, SO_NETNS_COOKIE, lookup-and-delete on hash maps: 5.14)",
        MIN_KERNEL.0, MIN_KERNEL.1
    )]
    Kernel { found: String },
    /// The object lacks a program or map the loader expects.
    #[error("the datapath object has no {0}")]
    Missing(&'static str),
    /// Attaching a program to an interface failed.
    #[error("attaching {program} to {iface}")]
    Attach {
        program: &'static str,
        iface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// Converting a link handle (to pin or replace it) failed.
    #[error("link of {program} on {iface}")]
    Link {
        program: &'static str,
        iface: String,
        #[source]
        source: aya::programs::links::LinkError,
    },
    /// The pin directory is not this agent's alone.
    #[error(transparent)]
    PinDir(#[from] crate::BpffsError),
    /// Pinning or unpinning under bpffs failed.
    #[error("pinning {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The embedded objects did not parse (to read their map declarations).
    #[error("parsing the datapath objects")]
    Parse(#[source] aya_obj::ParseError),
    /// A map operation failed.
    #[error("map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

type Result<T, E = DatapathError> = std::result::Result<T, E>;

/// An endpoint as the datapath holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointEntry {
    pub key: EpKey,
    pub info: EpInfo,
}

/// Load-time knobs for [`Datapath::load_with`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `max_entries` overrides by map name.
    pub max_entries: Vec<(&'static str, u32)>,
    /// Node ports for masqueraded flows, instead of
    /// [`crate::snat::PORT_RANGE`] (tests narrow it to exhaust it).
    pub snat_ports: Option<std::ops::RangeInclusive<u16>>,
    /// Conntrack entries one endpoint may hold (`weir_ct_endpoint_max`;
    /// default an eighth of the table). Tests narrow it.
    pub ct_endpoint_max: Option<u32>,
    /// Conntrack entries the node's connections from outside (NodePorts,
    /// external IPs) may hold (`weir_ct_node_max`; default a quarter of
    /// the table). Tests narrow it.
    pub ct_node_max: Option<u32>,
    /// No flow events at all (`weir_flow_events` 0): the benchmark's
    /// recording-off baseline. Counters and conntrack are unchanged.
    pub no_flow_events: bool,
    /// How often a live connection reports its counters (default 10 s).
    pub flow_report_interval: Option<std::time::Duration>,
    /// No per-endpoint rate on drop events (`weir_drop_events_per_sec` 0):
    /// the flow benchmark makes its events out of drops of one endpoint.
    pub unlimited_drop_events: bool,
}

/// The loaded datapath of one node.
///
/// Maps are pinned under `<pin_dir>` and reused by the next load, and the
/// links attaching programs to pod interfaces are pinned under
/// `<pin_dir>/links`, so the agent can exit and restart without a pod
/// losing a packet.
pub struct Datapath {
    pub(crate) ebpf: Ebpf,
    /// bpf_host.o: shares every map with `ebpf` through the pins.
    host: Ebpf,
    /// bpf_xdp.o: the uplink's XDP program, same maps again.
    xdp: Ebpf,
    /// bpf_sock.o: socket-level services for the node's own sockets
    /// (socket_lb.rs), same maps again.
    pub(crate) sock: Ebpf,
    pub(crate) links_dir: PathBuf,
    nr_cpus: usize,
    /// Pinned maps that no longer fit the objects and were replaced.
    replaced: Vec<crate::pins::PinReplacement>,
    /// Pinned maps of an older datapath that no object declares any more.
    retired: Vec<String>,
}

impl Datapath {
    /// Loads the programs, creating or reusing the maps pinned under `pin_dir`
    /// (which must be on bpffs).
    pub fn load(pin_dir: &Path) -> Result<Self> {
        Self::load_with(pin_dir, &LoadOptions::default())
    }

    /// [`Datapath::load`] with non-default map sizes (tests shrink the
    /// conntrack table to see it fill up). Sizes only apply to maps this
    /// load creates: maps already pinned keep theirs.
    pub fn load_with(pin_dir: &Path, options: &LoadOptions) -> Result<Self> {
        // Said plainly up front, not as a verifier log or an EINVAL from a
        // link call halfway through. A version that cannot be read (an odd
        // uname) is let through: the load itself says what is missing.
        if let Ok(found) = aya::util::KernelVersion::current()
            && found < aya::util::KernelVersion::new(MIN_KERNEL.0, MIN_KERNEL.1, 0)
        {
            return Err(DatapathError::Kernel {
                found: found.to_string(),
            });
        }
        if let Some(ports) = &options.snat_ports
            && (ports.is_empty() || *ports.start() == 0)
        {
            return Err(DatapathError::Options(format!(
                "SNAT port range {ports:?} is empty or starts at 0"
            )));
        }
        let links_dir = pin_dir.join("links");
        for dir in [pin_dir, &links_dir] {
            crate::bpffs::ensure_private_dir(dir)?;
        }
        // A pin that no longer fits what the objects declare is replaced,
        // never reused (pins.rs).
        let declared = crate::pins::declared(
            &[crate::BPF_LXC, crate::BPF_HOST, crate::BPF_XDP, crate::BPF_SOCK],
            &options.max_entries.iter().map(|(n, s)| (n.to_string(), *s)).collect(),
        )
        .map_err(DatapathError::Parse)?;
        let replaced = crate::pins::incompatible(&declared, &crate::pins::pinned(pin_dir, &declared));
        let retired = crate::pins::obsolete(pin_dir, &declared);
        for name in replaced.iter().map(|r| &r.map).chain(&retired) {
            let path = pin_dir.join(name);
            std::fs::remove_file(&path).map_err(|source| DatapathError::Pin { path, source })?;
        }
        let report_ns = options
            .flow_report_interval
            .map(|every| u64::try_from(every.as_nanos()).unwrap_or(u64::MAX));
        // The first load creates and pins the maps, the second reuses them.
        let loader = || {
            let mut loader = EbpfLoader::new();
            loader.default_map_pin_directory(pin_dir);
            for (name, size) in &options.max_entries {
                loader.map_max_entries(name, *size);
            }
            if let Some(max) = &options.ct_endpoint_max {
                loader.override_global("weir_ct_endpoint_max", max, false);
            }
            if let Some(max) = &options.ct_node_max {
                loader.override_global("weir_ct_node_max", max, false);
            }
            if options.no_flow_events {
                loader.override_global("weir_flow_events", &0u32, true);
            }
            if options.unlimited_drop_events {
                loader.override_global("weir_drop_events_per_sec", &0u32, true);
            }
            if let Some(ns) = &report_ns {
                loader.override_global("weir_flow_report_ns", ns, true);
            }
            if let Some(ports) = &options.snat_ports {
                // Only bpf_host.o has these: not required to exist.
                loader.override_global("weir_snat_port_min", ports.start(), false);
                loader.override_global("weir_snat_port_max", ports.end(), false);
            }
            loader
        };
        let mut ebpf = loader().load(crate::BPF_LXC).map_err(DatapathError::Load)?;
        let mut host = loader().load(crate::BPF_HOST).map_err(DatapathError::Load)?;
        let mut xdp = loader().load(crate::BPF_XDP).map_err(DatapathError::Load)?;
        // The socket programs have none of the packet programs' globals.
        let mut sock = {
            let mut loader = EbpfLoader::new();
            loader.default_map_pin_directory(pin_dir);
            for (name, size) in &options.max_entries {
                loader.map_max_entries(name, *size);
            }
            loader.load(crate::BPF_SOCK).map_err(DatapathError::Load)?
        };
        crate::socket_lb::load_programs(&mut sock)?;
        {
            let name = XDP_PROGRAM;
            let prog: &mut Xdp = xdp
                .program_mut(name)
                .ok_or(DatapathError::Missing(name))?
                .try_into()
                .map_err(|source| DatapathError::Program { name, source })?;
            prog.load().map_err(|source| DatapathError::Program { name, source })?;
        }
        for kind in ProgramKind::ALL {
            let name = kind.program_name();
            let object = if kind.in_host_object() { &mut host } else { &mut ebpf };
            let prog: &mut SchedClassifier = object
                .program_mut(name)
                .ok_or(DatapathError::Missing(name))?
                .try_into()
                .map_err(|source| DatapathError::Program { name, source })?;
            prog.load().map_err(|source| DatapathError::Program { name, source })?;
        }
        // The tail-call stages, then their slots: a stage is in the array
        // only once it is loaded, and replacing a slot is atomic, so the
        // programs already attached (an earlier agent's) go on through
        // the new stages without a gap.
        for call in TailCall::ALL {
            let name = call.program_name();
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(DatapathError::Missing(name))?
                .try_into()
                .map_err(|source| DatapathError::Program { name, source })?;
            prog.load().map_err(|source| DatapathError::Program { name, source })?;
        }
        {
            let map = ebpf.take_map(maps::CALLS).ok_or(DatapathError::Missing(maps::CALLS))?;
            let mut calls = ProgramArray::try_from(map).map_err(|source| DatapathError::Map {
                map: maps::CALLS,
                source,
            })?;
            for call in TailCall::ALL {
                let name = call.program_name();
                let prog: &SchedClassifier = ebpf
                    .program(name)
                    .and_then(|p| p.try_into().ok())
                    .ok_or(DatapathError::Missing(name))?;
                let fd = prog.fd().map_err(|source| DatapathError::Program { name, source })?;
                calls.set(call.slot(), fd, 0).map_err(|source| DatapathError::Map {
                    map: maps::CALLS,
                    source,
                })?;
            }
        }
        let nr_cpus = aya::util::nr_cpus().map_err(|(_, source)| DatapathError::Pin {
            path: "/sys/devices/system/cpu/possible".into(),
            source,
        })?;
        Ok(Self {
            ebpf,
            host,
            xdp,
            sock,
            links_dir,
            nr_cpus,
            replaced,
            retired,
        })
    }

    /// The pinned maps this load replaced because they no longer fitted.
    pub fn replaced_pins(&self) -> &[crate::pins::PinReplacement] {
        &self.replaced
    }

    /// The pinned maps of an older datapath this load removed because no
    /// object declares them any more.
    pub fn retired_pins(&self) -> &[String] {
        &self.retired
    }

    /// The loaded program, e.g. for `BPF_PROG_TEST_RUN`.
    pub fn program(&self, kind: ProgramKind) -> &SchedClassifier {
        let name = kind.program_name();
        let object = if kind.in_host_object() { &self.host } else { &self.ebpf };
        object
            .program(name)
            .and_then(|p| p.try_into().ok())
            .expect("load() checked every program exists and is a classifier")
    }

    /// A loaded tail-call stage, e.g. for its verifier statistics.
    pub fn tail_call_program(&self, call: TailCall) -> &SchedClassifier {
        self.ebpf
            .program(call.program_name())
            .and_then(|p| p.try_into().ok())
            .expect("load() checked every stage exists and is a classifier")
    }

    /// The uplink's XDP program (`from_netdev_xdp`), e.g. for `BPF_PROG_TEST_RUN`.
    pub fn xdp_program(&self) -> &Xdp {
        self.xdp
            .program(XDP_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("load() checked the XDP program exists")
    }

    fn xdp_program_mut(&mut self) -> &mut Xdp {
        self.xdp
            .program_mut(XDP_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("load() checked the XDP program exists")
    }

    /// Attaches the NodePort XDP program to the uplink in native (driver)
    /// mode, or swaps this process's program into the link an earlier agent
    /// pinned (no gap).
    pub fn attach_xdp(&mut self, iface: &str) -> Result<()> {
        let pin = self.links_dir.join(format!("{iface}-{XDP_PROGRAM}"));
        let program = XDP_PROGRAM;
        let attach_err = attach_error(program, iface);
        let link_err = |source| DatapathError::Link {
            program,
            iface: iface.to_owned(),
            source,
        };
        if let Ok(pinned) = PinnedLink::from_pin(&pin) {
            let link = XdpLink::try_from(FdLink::from(pinned)).map_err(link_err)?;
            let prog = self.xdp_program_mut();
            let id = prog.attach_to_link(link).map_err(attach_err)?;
            drop(prog.take_link(id).map_err(attach_err)?);
            return Ok(());
        }
        let prog = self.xdp_program_mut();
        let id = prog.attach(iface, XdpMode::Driver).map_err(attach_err)?;
        let link = FdLink::try_from(prog.take_link(id).map_err(attach_err)?).map_err(link_err)?;
        link.pin(&pin).map_err(|e| DatapathError::Pin {
            path: pin.clone(),
            source: io::Error::other(e),
        })?;
        Ok(())
    }

    /// Detaches the uplink's XDP program (removes its link pin). Idempotent.
    pub fn detach_xdp(&self, iface: &str) -> Result<()> {
        remove_pin(self.links_dir.join(format!("{iface}-{XDP_PROGRAM}")))
    }

    fn program_mut(&mut self, kind: ProgramKind) -> &mut SchedClassifier {
        let name = kind.program_name();
        let object = if kind.in_host_object() {
            &mut self.host
        } else {
            &mut self.ebpf
        };
        object
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .expect("load() checked every program exists and is a classifier")
    }

    fn link_pin(&self, iface: &str, kind: ProgramKind) -> PathBuf {
        // bpffs refuses names with a '.', hence the '-'.
        self.links_dir.join(format!("{iface}-{}", kind.program_name()))
    }

    /// Attaches both programs to a freshly created host veth (tc filters,
    /// see [`POD_TC_PRIORITY`]), replacing what an earlier interface of the
    /// same name left.
    pub fn attach_endpoint(&mut self, iface: &str) -> Result<()> {
        self.detach_endpoint(iface)?;
        self.add_clsact(iface)?;
        for kind in ProgramKind::POD {
            self.attach_pod_filter(iface, kind, true)?;
        }
        Ok(())
    }

    /// After an agent restart: swap this process's programs into the
    /// filters the previous one left (atomic: no packet sees a gap), or
    /// into TCX links an older agent pinned; attach fresh where neither is.
    pub fn reattach_endpoint(&mut self, iface: &str) -> Result<()> {
        for kind in ProgramKind::POD {
            if PinnedLink::from_pin(self.link_pin(iface, kind)).is_ok() {
                self.reattach(iface, kind)?;
            } else if self.attach_pod_filter(iface, kind, false).is_err() {
                self.add_clsact(iface)?;
                self.attach_pod_filter(iface, kind, true)?;
            }
        }
        Ok(())
    }

    fn add_clsact(&self, iface: &str) -> Result<()> {
        const EEXIST: i32 = 17;
        match aya::programs::tc::qdisc_add_clsact(iface) {
            Ok(()) => Ok(()),
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(EEXIST) => Ok(()),
            Err(e) => Err(DatapathError::Attach {
                program: "clsact qdisc",
                iface: iface.to_owned(),
                source: e.into(),
            }),
        }
    }

    /// Attaches (`create`) or replaces (the filter must exist) one pod
    /// program at the pods' priority and handle. The link handle is
    /// forgotten, not dropped: dropping it would detach the filter.
    fn attach_pod_filter(&mut self, iface: &str, kind: ProgramKind, create: bool) -> Result<()> {
        let program = kind.program_name();
        let attach_err = attach_error(program, iface);
        let prog = self.program_mut(kind);
        let id = if create {
            prog.attach_with_options(
                iface,
                kind.attach_type(),
                TcAttachOptions::Netlink(NlOptions {
                    priority: POD_TC_PRIORITY,
                    handle: POD_TC_HANDLE,
                    classid: None,
                }),
            )
        } else {
            let link = SchedClassifierLink::attached(iface, kind.attach_type(), POD_TC_PRIORITY, POD_TC_HANDLE, None)
                .map_err(|e| attach_err(aya::programs::ProgramError::from(TcError::IoError(e))))?;
            prog.attach_to_link(link)
        }
        .map_err(attach_err)?;
        std::mem::forget(prog.take_link(id).map_err(attach_err)?);
        Ok(())
    }

    /// Attaches a node-device program (uplink or vxlan), replacing the
    /// program in a link pinned by an earlier agent without a gap.
    pub fn attach_device(&mut self, iface: &str, kind: ProgramKind) -> Result<()> {
        self.reattach(iface, kind)
    }

    /// Detaches a node-device program. Idempotent.
    pub fn detach_device(&self, iface: &str, kind: ProgramKind) -> Result<()> {
        remove_pin(self.link_pin(iface, kind))
    }

    fn reattach(&mut self, iface: &str, kind: ProgramKind) -> Result<()> {
        let pin = self.link_pin(iface, kind);
        let program = kind.program_name();
        let attach_err = attach_error(program, iface);
        match PinnedLink::from_pin(&pin) {
            Ok(pinned) => {
                let link =
                    SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|source| DatapathError::Link {
                        program,
                        iface: iface.to_owned(),
                        source,
                    })?;
                let prog = self.program_mut(kind);
                let id = prog.attach_to_link(link).map_err(attach_err)?;
                // The pin keeps the link alive; drop our handle without detaching.
                drop(prog.take_link(id).map_err(attach_err)?);
                Ok(())
            }
            Err(_) => self.attach_fresh(iface, kind),
        }
    }

    fn attach_fresh(&mut self, iface: &str, kind: ProgramKind) -> Result<()> {
        let pin = self.link_pin(iface, kind);
        let program = kind.program_name();
        let attach_err = attach_error(program, iface);
        let prog = self.program_mut(kind);
        let id = prog.attach(iface, kind.attach_type()).map_err(attach_err)?;
        let link = FdLink::try_from(prog.take_link(id).map_err(attach_err)?).map_err(|source| DatapathError::Link {
            program,
            iface: iface.to_owned(),
            source,
        })?;
        link.pin(&pin).map_err(|e| DatapathError::Pin {
            path: pin.clone(),
            source: io::Error::other(e),
        })?;
        Ok(())
    }

    /// Detaches the pod programs: their tc filters, and the TCX link pins
    /// of an older agent. Idempotent (a missing interface has nothing).
    pub fn detach_endpoint(&self, iface: &str) -> Result<()> {
        for kind in ProgramKind::POD {
            match aya::programs::tc::qdisc_detach_program(iface, kind.attach_type(), kind.program_name()) {
                Ok(()) => {}
                Err(TcError::IoError(e))
                    if matches!(e.kind(), io::ErrorKind::NotFound) || e.raw_os_error() == Some(19) => {}
                Err(TcError::NetlinkError(e)) if matches!(e.raw_os_error(), Some(2 | 19 | 22)) => {}
                Err(e) => {
                    return Err(DatapathError::Attach {
                        program: kind.program_name(),
                        iface: iface.to_owned(),
                        source: e.into(),
                    });
                }
            }
            remove_pin(self.link_pin(iface, kind))?;
        }
        Ok(())
    }

    /// Pod interfaces that may have weir's programs (for reconciling after a
    /// restart): every pod-named host veth in this netns, and every
    /// interface with a TCX link pinned by an older agent.
    pub fn attached_interfaces(&self) -> Vec<String> {
        let present = nix::net::if_::if_nameindex()
            .map(|list| {
                list.iter()
                    .filter_map(|i| i.name().to_str().ok().map(str::to_owned))
                    .filter(|n| n.starts_with(POD_IFACE_PREFIX))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let mut names: Vec<String> = std::fs::read_dir(&self.links_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let (iface, program) = name.to_str()?.rsplit_once('-')?;
                ProgramKind::POD
                    .iter()
                    .any(|k| k.program_name() == program)
                    .then(|| iface.to_owned())
            })
            .collect();
        names.extend(present);
        names.sort();
        names.dedup();
        names
    }

    /// Writes the node-wide settings every program reads.
    pub fn set_config(&mut self, config: Config) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(maps::CONFIG)
            .ok_or(DatapathError::Missing(maps::CONFIG))?;
        let mut array: Array<&mut MapData, Config> = Array::try_from(map).map_err(|source| DatapathError::Map {
            map: maps::CONFIG,
            source,
        })?;
        array.set(0, config, 0).map_err(|source| DatapathError::Map {
            map: maps::CONFIG,
            source,
        })
    }

    /// Hands the ipcache to its one owner (the ipcache controller).
    pub fn take_ipcache(&mut self) -> Result<crate::ipcache::IpCache> {
        let map = self
            .ebpf
            .take_map(maps::IPCACHE)
            .ok_or(DatapathError::Missing(maps::IPCACHE))?;
        crate::ipcache::IpCache::from_map(map)
    }

    /// Hands the policy tables to their one owner (the policy controller).
    pub fn take_policy_maps(&mut self) -> Result<crate::policy::PolicyMaps> {
        use crate::policy::{CIDR_MAP, MAP, REV_MAP};
        let table = self.ebpf.take_map(MAP).ok_or(DatapathError::Missing(MAP))?;
        let cidrs = self.ebpf.take_map(CIDR_MAP).ok_or(DatapathError::Missing(CIDR_MAP))?;
        let rev = self.ebpf.take_map(REV_MAP).ok_or(DatapathError::Missing(REV_MAP))?;
        crate::policy::PolicyMaps::from_maps(table, cidrs, rev)
    }

    /// Hands the flow-event ring buffer and its loss counters to their one
    /// reader (the agent's flow pipeline).
    pub fn take_events(&mut self) -> Result<crate::events::EventSource> {
        use crate::events::{LOST_MAP, MAP};
        let ring = self.ebpf.take_map(MAP).ok_or(DatapathError::Missing(MAP))?;
        let lost = self.ebpf.take_map(LOST_MAP).ok_or(DatapathError::Missing(LOST_MAP))?;
        crate::events::EventSource::from_maps(ring, lost).map_err(|source| DatapathError::Map { map: MAP, source })
    }

    /// Hands the node-route maps to their one owner (the routing
    /// controller); the programs keep using them.
    pub fn take_route_maps(&mut self) -> Result<RouteMaps> {
        let mut take = |name: &'static str| self.ebpf.take_map(name).ok_or(DatapathError::Missing(name));
        let routes = LpmTrie::try_from(take(maps::NODE_ROUTES)?).map_err(|source| DatapathError::Map {
            map: maps::NODE_ROUTES,
            source,
        })?;
        let nodes = HashMap::try_from(take(maps::NODES)?).map_err(|source| DatapathError::Map {
            map: maps::NODES,
            source,
        })?;
        Ok(RouteMaps { routes, nodes })
    }

    /// Hands the service maps (services, backends, Maglev) and the one
    /// conntrack table to their one owner (the services controller, which
    /// flushes UDP flows of departed backends and collects every expired
    /// connection, masqueraded ones included).
    pub fn take_service_maps(&mut self) -> std::result::Result<crate::lb::ServiceMaps, crate::lb::LbError> {
        use crate::lb::maps as lb;
        let mut take = |name: &'static str| self.ebpf.take_map(name).ok_or(crate::lb::LbError::Missing(name));
        crate::lb::ServiceMaps::from_maps(
            take(lb::SERVICES)?,
            take(lb::BACKENDS)?,
            take(lb::MAGLEV)?,
            take(lb::CONNTRACK)?,
            take(crate::conntrack::RELEASED_MAP)?,
        )
    }

    fn endpoints_map(&mut self) -> Result<HashMap<&mut MapData, EpKey, EpInfo>> {
        let map = self
            .ebpf
            .map_mut(maps::ENDPOINTS)
            .ok_or(DatapathError::Missing(maps::ENDPOINTS))?;
        HashMap::try_from(map).map_err(|source| DatapathError::Map {
            map: maps::ENDPOINTS,
            source,
        })
    }

    fn traffic_map(&mut self) -> Result<PerCpuHashMap<&mut MapData, TrafficKey, Traffic>> {
        let map = self
            .ebpf
            .map_mut(maps::EP_TRAFFIC)
            .ok_or(DatapathError::Missing(maps::EP_TRAFFIC))?;
        PerCpuHashMap::try_from(map).map_err(|source| DatapathError::Map {
            map: maps::EP_TRAFFIC,
            source,
        })
    }

    /// Programs an endpoint and (re)sets its counters to zero.
    pub fn upsert_endpoint(&mut self, ip: IpAddr, info: EpInfo) -> Result<()> {
        let nr_cpus = self.nr_cpus;
        let mut traffic = self.traffic_map()?;
        for direction in [DIR_INGRESS, DIR_EGRESS] {
            let key = TrafficKey {
                endpoint_id: info.endpoint_id,
                direction,
            };
            // Keep counters of an endpoint that is only being re-programmed.
            if traffic.get(&key, 0).is_err() {
                traffic
                    .insert(key, zero_per_cpu(nr_cpus), 0)
                    .map_err(|source| DatapathError::Map {
                        map: maps::EP_TRAFFIC,
                        source,
                    })?;
            }
        }
        self.endpoints_map()?
            .insert(EpKey::new(ip), info, 0)
            .map_err(|source| DatapathError::Map {
                map: maps::ENDPOINTS,
                source,
            })
    }

    /// Removes an endpoint and its counters. Missing entries are fine.
    pub fn remove_endpoint(&mut self, ip: IpAddr, endpoint_id: u32) -> Result<()> {
        ignore_missing(self.endpoints_map()?.remove(&EpKey::new(ip)), maps::ENDPOINTS)?;
        let mut traffic = self.traffic_map()?;
        for direction in [DIR_INGRESS, DIR_EGRESS] {
            ignore_missing(traffic.remove(&TrafficKey { endpoint_id, direction }), maps::EP_TRAFFIC)?;
        }
        Ok(())
    }

    /// Every endpoint in the map.
    pub fn endpoints(&mut self) -> Result<Vec<EndpointEntry>> {
        let map = self.endpoints_map()?;
        map.iter()
            .map(|r| r.map(|(key, info)| EndpointEntry { key, info }))
            .collect::<Result<_, _>>()
            .map_err(|source| DatapathError::Map {
                map: maps::ENDPOINTS,
                source,
            })
    }

    /// Ingress and egress traffic of one endpoint, summed over CPUs.
    pub fn endpoint_traffic(&mut self, endpoint_id: u32) -> Result<(Traffic, Traffic)> {
        let map = self.traffic_map()?;
        let read = |direction| -> Result<Traffic> {
            match map.get(&TrafficKey { endpoint_id, direction }, 0) {
                Ok(values) => Ok(sum(values.iter())),
                Err(aya::maps::MapError::KeyNotFound) => Ok(Traffic::default()),
                Err(source) => Err(DatapathError::Map {
                    map: maps::EP_TRAFFIC,
                    source,
                }),
            }
        };
        Ok((read(DIR_INGRESS)?, read(DIR_EGRESS)?))
    }

    /// Drops by reason, summed over CPUs; reasons with no drops are left out.
    pub fn drops(&self) -> Result<Vec<(DropReason, Traffic)>> {
        let map = self.ebpf.map(maps::DROPS).ok_or(DatapathError::Missing(maps::DROPS))?;
        let array: PerCpuArray<&MapData, Traffic> =
            PerCpuArray::try_from(map).map_err(|source| DatapathError::Map {
                map: maps::DROPS,
                source,
            })?;
        let mut out = Vec::new();
        for reason in DropReason::ALL {
            let values = array.get(&(*reason as u32), 0).map_err(|source| DatapathError::Map {
                map: maps::DROPS,
                source,
            })?;
            let total = sum(values.iter());
            if total.packets > 0 {
                out.push((*reason, total));
            }
        }
        Ok(out)
    }
}

fn zero_per_cpu(nr_cpus: usize) -> PerCpuValues<Traffic> {
    PerCpuValues::try_from(vec![Traffic::default(); nr_cpus]).expect("nr_cpus is at least one")
}

/// The maps that say where other nodes are: the pod-CIDR → node LPM trie
/// (both modes) and the set of node IPs (never masqueraded). Owned by the
/// routing controller ([`Datapath::take_route_maps`]).
pub struct RouteMaps {
    routes: LpmTrie<MapData, RouteKey, Route>,
    nodes: HashMap<MapData, u32, u32>,
}

impl RouteMaps {
    /// Replaces the set of remote pod CIDRs and the nodes owning them.
    pub fn sync_node_routes(&mut self, routes: &[(Ipv4Net, Ipv4Addr)]) -> Result<()> {
        let map = &mut self.routes;
        let wanted: Vec<(Key<RouteKey>, Route)> = routes
            .iter()
            .map(|(cidr, node)| {
                (
                    RouteKey::v4(*cidr),
                    Route {
                        node_ip: u32::from_ne_bytes(node.octets()),
                        flags: 0,
                    },
                )
            })
            .collect();
        let stale: Vec<Key<RouteKey>> = map
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| {
                !wanted
                    .iter()
                    .any(|(w, _)| w.prefix_len() == k.prefix_len() && w.data() == k.data())
            })
            .collect();
        for key in stale {
            ignore_missing(map.remove(&key), maps::NODE_ROUTES)?;
        }
        for (key, route) in wanted {
            map.insert(&key, route, 0).map_err(|source| DatapathError::Map {
                map: maps::NODE_ROUTES,
                source,
            })?;
        }
        Ok(())
    }

    /// Replaces the set of other nodes' IPs (never masqueraded).
    pub fn sync_node_ips(&mut self, ips: &[Ipv4Addr]) -> Result<()> {
        let map = &mut self.nodes;
        let wanted: Vec<u32> = ips.iter().map(|ip| u32::from_ne_bytes(ip.octets())).collect();
        let stale: Vec<u32> = map
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !wanted.contains(k))
            .collect();
        for key in stale {
            ignore_missing(map.remove(&key), maps::NODES)?;
        }
        for key in wanted {
            map.insert(key, 0, 0).map_err(|source| DatapathError::Map {
                map: maps::NODES,
                source,
            })?;
        }
        Ok(())
    }
}

/// Maps a program error to the attach error naming program and interface.
fn attach_error<'a>(
    program: &'static str,
    iface: &'a str,
) -> impl Fn(aya::programs::ProgramError) -> DatapathError + Copy + 'a {
    move |source| DatapathError::Attach {
        program,
        iface: iface.to_owned(),
        source,
    }
}

pub(crate) fn remove_pin(pin: PathBuf) -> Result<()> {
    match std::fs::remove_file(&pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DatapathError::Pin { path: pin, source }),
    }
}

fn sum<'a>(values: impl Iterator<Item = &'a Traffic>) -> Traffic {
    values.fold(Traffic::default(), |acc, t| Traffic {
        packets: acc.packets + t.packets,
        bytes: acc.bytes + t.bytes,
    })
}

fn ignore_missing(r: Result<(), aya::maps::MapError>, map: &'static str) -> Result<()> {
    match r {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DatapathError::Map { map, source }),
    }
}
