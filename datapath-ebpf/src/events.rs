//! Flow events from the datapath (`bpf/lib/flow.h`): the typed form of a
//! ring-buffer record, its decoding (pure: a record that is not exactly
//! what this build expects is an error, never a guess), and the source the
//! agent drains, which owns the ring buffer and the lost-event counters.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use aya::maps::{MapData, PerCpuArray, RingBuf};

use crate::abi::{CtKey, EVENT_VERSION, RawEvent, sys};
use crate::drop::DropReason;
use crate::policy::Verdict;

/// Map names, as declared in `bpf/lib/flow.h`.
pub const MAP: &str = "weir_events";
pub const LOST_MAP: &str = "weir_events_lost";

/// What an event reports (`enum weir_event_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The first packet of a connection (or of its answering direction).
    FlowStart,
    /// A SYN, SYN-ACK, FIN or RST seen first in its direction.
    Tcp,
    /// A live connection's counters, periodically.
    FlowUpdate,
    /// FIN or RST: the connection's counters at its end.
    FlowEnd,
    /// A dropped packet.
    Drop,
    /// One packet of a traced endpoint.
    Trace,
}

impl EventKind {
    fn from_abi(n: u8) -> Option<Self> {
        use sys::weir_event_kind as K;
        const ALL: [(K, EventKind); 6] = [
            (K::WEIR_EV_FLOW_START, EventKind::FlowStart),
            (K::WEIR_EV_TCP, EventKind::Tcp),
            (K::WEIR_EV_FLOW_UPDATE, EventKind::FlowUpdate),
            (K::WEIR_EV_FLOW_END, EventKind::FlowEnd),
            (K::WEIR_EV_DROP, EventKind::Drop),
            (K::WEIR_EV_TRACE, EventKind::Trace),
        ];
        ALL.iter().find(|(c, _)| *c as u32 == u32::from(n)).map(|(_, k)| *k)
    }
}

/// An IPv4 5-tuple (ICMP echo: the identifier as sport or dport).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub saddr: Ipv4Addr,
    pub daddr: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl Tuple {
    fn from_abi(k: &CtKey) -> Self {
        Self {
            saddr: Ipv4Addr::from(k.saddr.to_ne_bytes()),
            daddr: Ipv4Addr::from(k.daddr.to_ne_bytes()),
            sport: u16::from_be(k.sport),
            dport: u16::from_be(k.dport),
            proto: k.proto,
        }
    }
}

/// One decoded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// `WEIR_OBS_*` ([`crate::abi::obs`]).
    pub obs: u8,
    /// `WEIR_DIR_*`, relative to `endpoint_id`.
    pub direction: u8,
    /// TCP flags of the packet, or the ICMP type.
    pub tcp_flags: u8,
    /// `WEIR_CT_F_*` of the connection's entry.
    pub ct_flags: u8,
    pub ct_state: u8,
    /// Set on drops: `None` for a number this build does not know.
    pub drop_reason: Option<DropReason>,
    pub drop_code: u32,
    /// CLOCK_MONOTONIC, as `bpf_ktime_get_ns()` reads it.
    pub ts_ns: u64,
    pub endpoint_id: u32,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub service_id: u32,
    pub ifindex: u32,
    pub len: u32,
    /// The packet as seen; for a service, what the client dialled.
    pub tuple: Tuple,
    /// What its connection makes of it (the backend, the SNAT address).
    pub xlate: Tuple,
    pub packets: u64,
    pub bytes: u64,
    pub rev_packets: u64,
    pub rev_bytes: u64,
    /// SYN to SYN-ACK, on the SYN-ACK's event.
    pub handshake_ns: u64,
    /// The connection's policy verdicts (the source pod's egress, the
    /// destination pod's ingress); on a policy drop, the deciding one.
    pub policy_egress: Verdict,
    pub policy_ingress: Verdict,
}

/// A record that is not one this build can read: counted and skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("event of {0} bytes, expected {expected}", expected = size_of::<RawEvent>())]
    Size(usize),
    #[error("event version {0}, expected {EVENT_VERSION}")]
    Version(u8),
    #[error("event size field {0}, expected {expected}", expected = size_of::<RawEvent>())]
    SizeField(u16),
    #[error("unknown event kind {0}")]
    Kind(u8),
}

impl Event {
    /// Decodes one ring-buffer record.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let raw = RawEvent::read(bytes).ok_or(DecodeError::Size(bytes.len()))?;
        if raw.version != EVENT_VERSION {
            return Err(DecodeError::Version(raw.version));
        }
        if usize::from(raw.size) != size_of::<RawEvent>() {
            return Err(DecodeError::SizeField(raw.size));
        }
        let kind = EventKind::from_abi(raw.kind).ok_or(DecodeError::Kind(raw.kind))?;
        Ok(Self {
            kind,
            obs: raw.obs,
            direction: raw.direction,
            tcp_flags: raw.tcp_flags,
            ct_flags: raw.ct_flags,
            ct_state: raw.ct_state,
            drop_reason: DropReason::from_u32(raw.drop_reason),
            drop_code: raw.drop_reason,
            ts_ns: raw.ts_ns,
            endpoint_id: raw.endpoint_id,
            src_identity: raw.src_identity,
            dst_identity: raw.dst_identity,
            service_id: raw.service_id,
            ifindex: raw.ifindex,
            len: raw.len,
            tuple: Tuple::from_abi(&raw.tuple),
            xlate: Tuple::from_abi(&raw.xlate),
            packets: raw.packets,
            bytes: raw.bytes,
            rev_packets: raw.rev_packets,
            rev_bytes: raw.rev_bytes,
            handshake_ns: raw.handshake_ns,
            policy_egress: Verdict::unpack(raw.policy_egress),
            policy_ingress: Verdict::unpack(raw.policy_ingress),
        })
    }

    /// An event of no kind in particular, all zero (a stand-in where a
    /// flow came from elsewhere than the datapath).
    pub fn placeholder() -> Self {
        let zero = Tuple {
            saddr: std::net::Ipv4Addr::UNSPECIFIED,
            daddr: std::net::Ipv4Addr::UNSPECIFIED,
            sport: 0,
            dport: 0,
            proto: 0,
        };
        Self {
            kind: EventKind::Trace,
            obs: 0,
            direction: crate::abi::DIR_UNKNOWN as u8,
            tcp_flags: 0,
            ct_flags: 0,
            ct_state: 0,
            drop_reason: None,
            drop_code: 0,
            ts_ns: 0,
            endpoint_id: 0,
            src_identity: 0,
            dst_identity: 0,
            service_id: 0,
            ifindex: 0,
            len: 0,
            tuple: zero,
            xlate: zero,
            packets: 0,
            bytes: 0,
            rev_packets: 0,
            rev_bytes: 0,
            handshake_ns: 0,
            policy_egress: Verdict::default(),
            policy_ingress: Verdict::default(),
        }
    }

    /// The answering direction of its connection.
    pub fn is_reply(&self) -> bool {
        self.ct_flags & crate::abi::CT_F_REVERSE != 0
    }
}

/// The ring buffer and its loss counters, handed to the agent's one
/// reader. Poll its fd for readability, then drain with [`Self::next`].
pub struct EventSource {
    ring: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
}

impl EventSource {
    pub(crate) fn from_maps(ring: aya::maps::Map, lost: aya::maps::Map) -> Result<Self, aya::maps::MapError> {
        Ok(Self {
            ring: RingBuf::try_from(ring)?,
            lost: PerCpuArray::try_from(lost)?,
        })
    }

    /// The next record, `None` when the ring is empty. The record's bytes
    /// are only valid until the callback returns (the slot goes back to the
    /// kernel), so `f` sees them borrowed.
    pub fn next<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        self.ring.next().map(|item| f(&item))
    }

    /// Events the datapath could not write since the maps were created
    /// (the ring was full), over all CPUs.
    pub fn lost(&self) -> Result<u64, aya::maps::MapError> {
        Ok(self.lost.get(&sys::WEIR_LOST_RING_FULL, 0)?.iter().sum())
    }

    /// Drop events the per-endpoint rate held back since the maps were
    /// created (`WEIR_DROP_EVENTS_*`), over all CPUs; the drops themselves
    /// are counted per reason all the same.
    pub fn rate_limited(&self) -> Result<u64, aya::maps::MapError> {
        Ok(self.lost.get(&sys::WEIR_LOST_RATE_LIMITED, 0)?.iter().sum())
    }
}

impl AsFd for EventSource {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

impl AsRawFd for EventSource {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawEvent {
        RawEvent {
            version: EVENT_VERSION,
            kind: sys::weir_event_kind::WEIR_EV_DROP as u8,
            size: size_of::<RawEvent>() as u16,
            drop_reason: DropReason::InvalidSource as u32,
            tuple: CtKey {
                saddr: u32::from_ne_bytes([10, 244, 0, 5]),
                daddr: u32::from_ne_bytes([10, 244, 1, 9]),
                sport: 40000u16.to_be(),
                dport: 80u16.to_be(),
                proto: 6,
                pad: [0; 3],
            },
            ..Default::default()
        }
    }

    fn bytes(e: &RawEvent) -> Vec<u8> {
        e.as_bytes().to_vec()
    }

    #[test]
    fn decodes_a_drop_with_its_tuple_in_host_order() {
        let e = Event::decode(&bytes(&raw())).unwrap();
        assert_eq!(e.kind, EventKind::Drop);
        assert_eq!(e.drop_reason, Some(DropReason::InvalidSource));
        assert_eq!(e.tuple.saddr, Ipv4Addr::new(10, 244, 0, 5));
        assert_eq!(e.tuple.dport, 80);
        assert_eq!(e.tuple.sport, 40000);
    }

    #[test]
    fn garbage_is_an_error_not_a_guess() {
        let good = bytes(&raw());
        assert_eq!(Event::decode(&good[..10]), Err(DecodeError::Size(10)));
        let mut v = raw();
        v.version = 9;
        assert_eq!(Event::decode(&bytes(&v)), Err(DecodeError::Version(9)));
        let mut v = raw();
        v.kind = 77;
        assert_eq!(Event::decode(&bytes(&v)), Err(DecodeError::Kind(77)));
        let mut v = raw();
        v.size = 3;
        assert_eq!(Event::decode(&bytes(&v)), Err(DecodeError::SizeField(3)));
    }
}
