/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Every struct and enum shared with userspace. The Rust twins live in
 * datapath-ebpf/src/abi.rs and a test checks both agree through this
 * object's BTF, so change them together. Explicit padding everywhere:
 * implicit holes would be uninitialised on one side and break hash keys. */
#ifndef WEIR_ABI_H
#define WEIR_ABI_H

#include <linux/types.h>

#define WEIR_AF_INET 4
#define WEIR_AF_INET6 6

/* Keyed by family + a 16-byte address so IPv6 fits without a new map. */
struct weir_ep_key {
	__u8 family;
	__u8 pad[3];
	__u32 addr[4]; /* network byte order; IPv4 uses addr[0] */
};

#define WEIR_EP_F_NONE 0

struct weir_ep_info {
	__u32 ifindex;      /* host side of the pod's veth */
	__u32 endpoint_id;  /* node-local id, keys the traffic counters */
	__u32 identity;     /* numeric identity of namespace + labels */
	__u8 pod_mac[6];    /* MAC of the pod's interface */
	__u8 host_mac[6];   /* MAC of the host side, the pod's gateway */
	__u32 flags;
};

#define WEIR_DIR_INGRESS 0 /* into the pod */
#define WEIR_DIR_EGRESS 1  /* out of the pod */
#define WEIR_DIR_UNKNOWN 2 /* no local pod known (yet) for the packet */

/* Observation points: the program that saw a packet (drops and, later,
 * flow events name it). 0 is "none recorded". */
#define WEIR_OBS_FROM_POD 1
#define WEIR_OBS_TO_POD 2
#define WEIR_OBS_FROM_NETDEV 3
#define WEIR_OBS_TO_NETDEV 4
#define WEIR_OBS_FROM_OVERLAY 5
#define WEIR_OBS_TO_OVERLAY 6
#define WEIR_OBS_XDP 7

/* The drop context in skb->cb (u32 words), see drop.h. */
#define WEIR_CB_OBS 0          /* observation point | direction << 8 */
#define WEIR_CB_ENDPOINT 1     /* the local endpoint id, 0 if none */
#define WEIR_CB_SRC_IDENTITY 2 /* 0 where not known */
#define WEIR_CB_DST_IDENTITY 3

struct weir_traffic_key {
	__u32 endpoint_id;
	__u32 direction;
};

struct weir_traffic {
	__u64 packets;
	__u64 bytes;
};

#define WEIR_ROUTING_NATIVE 0 /* the node's stack routes to other nodes */
#define WEIR_ROUTING_VXLAN 1  /* encapsulate towards the node owning the CIDR */

/* weir_config.flags */
#define WEIR_CFG_F_MASQUERADE 0x1 /* SNAT pod traffic leaving the cluster CIDR */

/* Node-wide settings, one entry, written by the agent at start. */
struct weir_config {
	__u32 routing_mode;
	__u32 tunnel_ifindex; /* the external-mode vxlan device */
	__be32 node_ip;
	__u32 flags;
	/* The cluster CIDR as network and mask (network byte order): pod
	 * traffic to anything outside it is masqueraded to node_ip. */
	__be32 cluster_net;
	__be32 cluster_mask;
};

/* LPM key: prefixlen counts the 32 bits of family+pad plus the CIDR bits,
 * so IPv4 and IPv6 routes share one trie. */
struct weir_route_key {
	__u32 prefixlen;
	__u8 family;
	__u8 pad[3];
	__u32 addr[4];
};

/* Which node owns a pod CIDR. */
struct weir_route {
	__be32 node_ip;
	__u32 flags;
};

/* Why the datapath dropped a packet. Userspace keeps the same list with a
 * text for each (src/drop.rs); append only, numbers are ABI. */
enum weir_drop_reason {
	WEIR_DROP_NONE = 0,
	WEIR_DROP_TRUNCATED_ETH = 1,
	WEIR_DROP_MALFORMED_IPV4 = 2,
	WEIR_DROP_UNSUPPORTED_L3 = 3,
	WEIR_DROP_INVALID_SOURCE = 4,
	WEIR_DROP_TRUNCATED_L4 = 5,
	WEIR_DROP_TTL_EXCEEDED = 6,
	WEIR_DROP_REWRITE_FAILED = 7,
	WEIR_DROP_CT_MAP_FULL = 8,        /* conntrack full: no new service connection */
	WEIR_DROP_NO_SERVICE_BACKEND = 9, /* service without a usable backend: rejected (reject.h) */
	WEIR_DROP_SNAT_PORTS_EXHAUSTED = 10, /* masquerade: no node port (or table entry) left */
	WEIR_DROP_NO_LOCAL_BACKEND = 11,  /* externalTrafficPolicy Local, no backend on this node */
	WEIR_DROP_NAT_NO_PORT = 12,       /* no free SNAT port towards that backend */
	WEIR_DROP_REASON_MAX = 64,
};

#endif /* WEIR_ABI_H */
