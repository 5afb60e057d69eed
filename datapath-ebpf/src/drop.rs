//! Drop reasons: the numbers of `enum weir_drop_reason` in `bpf/lib/abi.h`,
//! each with the text operators see in metrics and flows.

macro_rules! drop_reasons {
    ($($variant:ident = $num:literal, $name:literal, $text:literal;)*) => {
        /// Why the datapath dropped a packet.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u32)]
        pub enum DropReason { $($variant = $num,)* }

        impl DropReason {
            pub const ALL: &[DropReason] = &[$(DropReason::$variant,)*];

            pub fn from_u32(n: u32) -> Option<Self> {
                match n { $($num => Some(Self::$variant),)* _ => None }
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
    TruncatedEth = 1, "truncated_ethernet", "frame shorter than an Ethernet header";
    MalformedIpv4 = 2, "malformed_ipv4", "truncated or malformed IPv4 header";
    UnsupportedL3 = 3, "unsupported_l3", "unsupported L3 protocol";
    InvalidSource = 4, "invalid_source", "source address does not belong to the sending endpoint";
    TruncatedL4 = 5, "truncated_l4", "truncated TCP, UDP or ICMP header";
    TtlExceeded = 6, "ttl_exceeded", "TTL exceeded";
    RewriteFailed = 7, "rewrite_failed", "failed to rewrite the packet";
    CtMapFull = 8, "ct_map_full", "connection tracking table full: new service connection refused";
    NoServiceBackend = 9, "no_service_backend", "service has no usable backend: rejected (TCP reset or ICMP port unreachable)";
    SnatPortsExhausted = 10, "snat_ports_exhausted", "masquerade: no free node port (or SNAT table entry) for a new flow";
    NoLocalBackend = 11, "no_local_backend", "externalTrafficPolicy Local and no backend on this node";
    NatNoPort = 12, "nat_no_port", "no free source NAT port towards the backend";
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
    }
}
