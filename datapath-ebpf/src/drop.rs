//! Drop reasons: `enum weir_drop_reason` of `bpf/lib/abi.h` (generated,
//! so the numbers come from the header), each with the name and text
//! operators see in metrics and flows. [`DropReason::from_abi`] matches the
//! generated enum exhaustively: a reason added in C fails the build until
//! it gets its name and text here.

use crate::abi::sys::weir_drop_reason as C;

macro_rules! drop_reasons {
    ($($variant:ident = $c:ident, $name:literal, $text:literal;)*) => {
        /// Why the datapath dropped a packet.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u32)]
        pub enum DropReason { $($variant = C::$c as u32,)* }

        impl DropReason {
            pub const ALL: &[DropReason] = &[$(DropReason::$variant,)*];

            /// The reason the header calls `r`; `None` for the markers that
            /// are no reason (NONE, REASON_MAX).
            pub fn from_abi(r: C) -> Option<Self> {
                match r {
                    C::WEIR_DROP_NONE | C::WEIR_DROP_REASON_MAX => None,
                    $(C::$c => Some(Self::$variant),)*
                }
            }

            pub fn from_u32(n: u32) -> Option<Self> {
                Self::ALL.iter().copied().find(|r| *r as u32 == n)
            }

            /// Stable snake_case name, for metric labels and JSON.
            pub fn name(self) -> &'static str {
                match self { $(Self::$variant => $name,)* }
            }

            /// A sentence for people.
            pub fn text(self) -> &'static str {
                match self { $(Self::$variant => $text,)* }
            }
        }
    };
}

drop_reasons! {
    TruncatedEth = WEIR_DROP_TRUNCATED_ETH, "truncated_ethernet", "frame shorter than an Ethernet header";
    MalformedIpv4 = WEIR_DROP_MALFORMED_IPV4, "malformed_ipv4", "truncated or malformed IPv4 header";
    UnsupportedL3 = WEIR_DROP_UNSUPPORTED_L3, "unsupported_l3", "unsupported L3 protocol";
    InvalidSource = WEIR_DROP_INVALID_SOURCE, "invalid_source", "source address does not belong to the sending endpoint";
    TruncatedL4 = WEIR_DROP_TRUNCATED_L4, "truncated_l4", "truncated TCP, UDP or ICMP header";
    TtlExceeded = WEIR_DROP_TTL_EXCEEDED, "ttl_exceeded", "TTL exceeded";
    RewriteFailed = WEIR_DROP_REWRITE_FAILED, "rewrite_failed", "failed to rewrite the packet";
    CtMapFull = WEIR_DROP_CT_MAP_FULL, "ct_map_full", "connection tracking table full: new service connection refused";
    NoServiceBackend = WEIR_DROP_NO_SERVICE_BACKEND, "no_service_backend", "service has no usable backend: rejected (TCP reset or ICMP port unreachable)";
    SnatPortsExhausted = WEIR_DROP_SNAT_PORTS_EXHAUSTED, "snat_ports_exhausted", "masquerade: no free node port (or SNAT table entry) for a new flow";
    NoLocalBackend = WEIR_DROP_NO_LOCAL_BACKEND, "no_local_backend", "externalTrafficPolicy Local and no backend on this node";
    NatNoPort = WEIR_DROP_NAT_NO_PORT, "nat_no_port", "no free source NAT port towards the backend";
    MissedTailCall = WEIR_DROP_MISSED_TAIL_CALL, "missed_tail_call", "the datapath's next stage is not loaded";
    CtEndpointLimit = WEIR_DROP_CT_ENDPOINT_LIMIT, "ct_endpoint_limit", "the endpoint holds its share of the conntrack table: new connection refused";
    PolicyDenied = WEIR_DROP_POLICY_DENIED, "policy_denied", "network policy: no rule allows the connection (default deny of an isolated pod)";
    PolicyDeny = WEIR_DROP_POLICY_DENY, "policy_deny", "network policy: an explicit deny rule";
    TunnelSource = WEIR_DROP_TUNNEL_SOURCE, "tunnel_source", "encapsulated by no known node, or for an inner source that node does not own";
    CtNodeLimit = WEIR_DROP_CT_NODE_LIMIT, "ct_node_limit", "the node's share of the conntrack table (connections from outside through NodePorts and external IPs) is held by live connections: new connection refused";
    RoutedSource = WEIR_DROP_ROUTED_SOURCE, "routed_source", "another node's pod address routed in from the network by a host that is not that node (or its next hop)";
    FragNotFound = WEIR_DROP_FRAG_NOT_FOUND, "frag_not_found", "a later fragment of a datagram whose first fragment was not seen or made no connection";
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_names_are_unique() {
        let mut names = std::collections::HashSet::new();
        for r in DropReason::ALL {
            assert_eq!(DropReason::from_u32(*r as u32), Some(*r));
            assert!(names.insert(r.name()), "duplicate name {}", r.name());
        }
        assert_eq!(DropReason::from_u32(0), None);
        assert_eq!(DropReason::TtlExceeded as u32, 6, "numbers are ABI: append only");
        assert_eq!(
            DropReason::from_abi(C::WEIR_DROP_CT_MAP_FULL),
            Some(DropReason::CtMapFull)
        );
        assert!((*DropReason::ALL.last().unwrap() as u32) < C::WEIR_DROP_REASON_MAX as u32);
    }
}
