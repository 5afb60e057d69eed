/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The one kernel ABI: every struct, flag, constant and size shared with
 * userspace, and nothing else. build.rs generates the Rust side from this
 * file with bindgen (datapath-ebpf/src/abi.rs wraps it), so this header is
 * the only source of truth; tests/abi_layout.rs also compares the layout
 * with the BTF in the compiled objects. Explicit padding everywhere:
 * implicit holes would be uninitialised on one side and break hash keys.
 * No BPF helpers or macros here: bindgen reads it as plain C. */
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

#define WEIR_MAX_ENDPOINTS 16384

#define WEIR_EP_F_NONE 0
#define WEIR_EP_F_TRACE 0x1 /* every packet in or out is a trace event (flow.h) */

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

/* Observation points: the program that saw a packet (drops and flow
 * events name it). 0 is "none recorded". */
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
#define WEIR_CB_SCRATCH 4      /* one stage to the next: the drop reason, conntrack flags */

/* Tail calls: the slots of weir_calls (calls.h). Programs that are only
 * ever tail-called, each named for what it does. */
#define WEIR_CALL_DROP_NOTIFY 0 /* every drop ends here: accounting and the drop event */
#define WEIR_CALL_FROM_POD_CT 1 /* from_pod after the source check: conntrack, services, delivery */
#define WEIR_CALL_POD_REJECT 2  /* the TCP RST / ICMP unreachable for a service without backends */
#define WEIR_CALLS_MAX 8

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

/* ---- Identities (the ipcache) ---- */

/* Reserved identities; label sets are numbered from WEIR_ID_MIN (the
 * model crate's identity.rs allocates them). */
#define WEIR_ID_UNKNOWN 0
#define WEIR_ID_HOST 1
#define WEIR_ID_WORLD 2
#define WEIR_ID_INIT 5
#define WEIR_ID_REMOTE_NODE 6
#define WEIR_ID_MIN 256

#define WEIR_IPCACHE_MAX 65536

/* The identity of an address anywhere in the cluster: every pod (remote
 * ones included) and every node, keyed like the routes (weir_route_key:
 * /32 entries for now, prefixes later for CIDR identities). Written by
 * the agent's ipcache controller from the cluster state. */
struct weir_ipcache_entry {
	__u32 identity;
	__u32 flags; /* none yet */
};

/* Why the datapath dropped a packet; append only, numbers are ABI. Rust
 * gets this enum generated, and src/drop.rs must name and describe every
 * reason (an exhaustive match: a new one fails the build until it does). */
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
	WEIR_DROP_MISSED_TAIL_CALL = 13,  /* the next stage's program is not loaded */
	WEIR_DROP_FRAG_NOT_FOUND = 14,    /* a later fragment whose first one was not seen (or made no connection) */
	WEIR_DROP_CT_ENDPOINT_LIMIT = 15, /* the endpoint holds its share of the conntrack table */
	WEIR_DROP_POLICY_DENIED = 16,     /* network policy: no rule allows it (an isolated endpoint's default deny) */
	WEIR_DROP_POLICY_DENY = 17,       /* network policy: an explicit deny rule */
	WEIR_DROP_TUNNEL_SOURCE = 18,     /* encapsulated by no known node, or for a source that node does not own */
	WEIR_DROP_CT_NODE_LIMIT = 19,     /* the node's share (connections from outside) is held by live connections */
	WEIR_DROP_ROUTED_SOURCE = 20,     /* a pod's address routed in by a host that is not its node's next hop */
	WEIR_DROP_REASON_MAX = 64,
};

/* A policy drop carries the rule that decided it along the drop path (the
 * return values, skb->cb, drop.h) in one u32: the reason in the low bits,
 * WEIR_DROP_F_INGRESS when the destination's ingress policy decided (else
 * the source's egress), the rule's reference (WEIR_PV_REF_MASK) above. */
#define WEIR_DROP_REASON_MASK 0x3f
#define WEIR_DROP_F_INGRESS 0x40
#define WEIR_DROP_REF_SHIFT 8


/* ---- Conntrack (conntrack.h) ---- */

/* Both directions of every tracked connection: 128k connections. */
#define WEIR_CT_MAX_ENTRIES 262144

/* One entry per direction, keyed by the 5-tuple as that direction's
 * packets carry it. IPv4; IPv6 gets a second map of the same shape with
 * 16-byte addresses. ICMP echo uses its identifier as a port: the
 * request's sport, the reply's dport (the other port 0). */
struct weir_ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* What the packet becomes (the key holds what it was): the tuple itself
 * for a connection nothing translates. Swapping source and destination of
 * the xlate tuple gives the key of the other direction's entry. */
struct weir_ct_entry {
	__u64 expires_ns; /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) deadline */
	__u64 packets;    /* this direction's, and its bytes: */
	__u64 bytes;
	__u64 created_ns; /* both entries of a pair share it (handshake latency) */
	__u64 report_ns;  /* the last flow event of this direction (flow.h) */
	__be32 xlate_saddr;
	__be32 xlate_daddr;
	__be16 xlate_sport;
	__be16 xlate_dport;
	__u32 service_id; /* the service a translated connection reached, 0 if none */
	__u8 flags;
	__u8 state;
	__u8 seen;  /* WEIR_CT_SEEN_*: the TCP events this direction reported */
	__u8 pad;
	__u32 owner; /* the local endpoint the entry is charged to, 0 for none */
	/* The policy verdicts made on the connection's first packet
	 * (WEIR_PV_*, policy.h), the same in both entries: the source pod's
	 * egress and the destination pod's ingress, where they are local. */
	__u32 policy_egress;
	__u32 policy_ingress;
	/* The policy revision (weir_policy_rev) those verdicts were made at:
	 * a forward entry of an older one is judged again on its next packet. */
	__u32 policy_rev;
	__u32 pad2;
};

/* weir_ct_entry.seen: each TCP event is reported once per direction. */
#define WEIR_CT_SEEN_SYN 0x1
#define WEIR_CT_SEEN_SYNACK 0x2
#define WEIR_CT_SEEN_FIN 0x4
#define WEIR_CT_SEEN_RST 0x8

/* Fairness: each local endpoint may hold at most weir_ct_endpoint_max
 * conntrack entries of open connections (both directions count), so one
 * pod cannot fill the node's table and deny every other pod new
 * connections; a connection that closes hands its charge back at once
 * (owner set to 0), before the GC collects its entries. The datapath
 * counts what it creates (and the few entries it deletes itself); the
 * agent, the only writer of weir_ep_ct_released, counts what its GC and
 * flushes delete. Charged = created - dp_released - released. */
#define WEIR_CT_ENDPOINT_MAX_DEFAULT (WEIR_CT_MAX_ENTRIES / 8)

/* The node's share: every connection that reaches the node from outside
 * through a NodePort, externalIP or LoadBalancer IP is charged to this
 * owner (no endpoint id is ever this), so a flood from outside holds at
 * most this much of the table and never a backend pod's own share. When
 * it is full, the oldest of these connections whose handshake never
 * completed go before anyone is refused (conntrack.h's ring). */
#define WEIR_CT_OWNER_NODE 0xffffffffu
#define WEIR_CT_NODE_MAX_DEFAULT (WEIR_CT_MAX_ENTRIES / 4)
/* The ring of the node's connections, oldest first: one slot per
 * connection its share can hold. */
#define WEIR_CT_NODE_RING (WEIR_CT_NODE_MAX_DEFAULT / 2)
/* The ring of closed connections, oldest first: what a full table sheds
 * before it refuses a new connection (their entries otherwise wait out
 * the closing timeout and the agent's GC, 10-20 s). */
#define WEIR_CT_CLOSED_RING (WEIR_CT_MAX_ENTRIES / 4)

struct weir_ep_ct_count {
	__u64 created;
	__u64 dp_released;
};

/* weir_ct_entry.flags. No flag but REVERSE: a plain pod connection. */
#define WEIR_CT_F_REVERSE 0x1 /* the answering direction */
#define WEIR_CT_F_HAIRPIN 0x2 /* the client is its own backend: source NATed */
#define WEIR_CT_F_NODEPORT 0x4 /* created on the uplink for an external frontend */
#define WEIR_CT_F_SNAT 0x8     /* NodePort: source NATed to the node IP (remote backend) */
#define WEIR_CT_F_MASQ 0x10    /* masquerade: a pod's connection out of the cluster, source NATed */

/* weir_ct_entry.state (TCP; UDP and SCTP stay NEW) */
#define WEIR_CT_NEW 0
#define WEIR_CT_SYN_SENT 1
#define WEIR_CT_ESTABLISHED 2
#define WEIR_CT_CLOSING 3

/* Fragments: the ports of a fragmented datagram, recorded from its first
 * fragment (the only one with an L4 header) so later fragments find the
 * same connection. Keyed by what identifies a datagram (RFC 791). */
#define WEIR_FRAG_MAX_ENTRIES 8192

struct weir_frag_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;
	__u8 proto;
	__u8 pad;
};

struct weir_frag_ports {
	__be16 sport;
	__be16 dport;
};

/* ---- Services (lb.h, nodeport.h) ---- */

#define WEIR_LB_MAX_SERVICES 65536
#define WEIR_LB_MAX_BACKENDS 262144
/* Maglev table size: a prime well above the backend count of any one
 * service, so the disruption bound of the paper holds (M >> N). */
#define WEIR_LB_MAGLEV_M 1021

#define WEIR_LB_ALG_RANDOM 0
#define WEIR_LB_ALG_MAGLEV 1

/* The source a pod sees when it reached its own service (hairpin), in
 * host byte order: 169.254.42.1. */
#define WEIR_LB_HAIRPIN_IP_HOST 0xa9fe2a01

struct weir_lb_svc_key {
	__be32 vip;
	__be16 dport;
	__u8 proto;
	__u8 pad;
};

struct weir_lb_svc {
	__u32 service_id;
	__u32 count; /* backends usable for new connections: slots 1..count */
	__u32 affinity_timeout_s; /* ClientIP session affinity; 0 = none */
	__u8 algorithm;
	__u8 flags;
	__u16 pad;
};

struct weir_lb_backend_key {
	__u32 service_id;
	__u32 slot;
};

struct weir_lb_backend {
	__be32 ip;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct weir_lb_maglev {
	__u32 slots[WEIR_LB_MAGLEV_M]; /* backend slot per table index */
};

struct weir_lb_affinity_key {
	__be32 client;
	__u32 service_id;
};

struct weir_lb_affinity {
	__u32 slot;
	/* The slot's backend when it was chosen: slots are renumbered when
	 * backends change, and a stale slot must not send the client elsewhere
	 * silently; a mismatch means "choose again". */
	__be32 backend_ip;
	__u64 last_used_ns;
};

/* weir_lb_svc.flags */
#define WEIR_LB_F_EXTERNAL 0x1 /* reached from outside: NodePort, externalIP, LB IP */
#define WEIR_LB_F_LOCAL 0x2    /* externalTrafficPolicy Local: no SNAT, local backends only */

/* ---- Socket-level load balancing (bpf_sock.c) ---- */

/* The network namespaces whose sockets this node's programs translate
 * (the node's own: the node, host-network pods and the kubelet), by
 * bpf_get_netns_cookie(); written by the agent. */
#define WEIR_SOCK_MAX_NETNS 1024

/* A socket's view of a service it reached: the backend its connect or
 * sendmsg went to, by socket cookie, so that recvmsg and getpeername
 * answer with the service's address, never the backend's. */
struct weir_sock_rev_key {
	__u64 cookie;
	__be32 backend_ip;
	__be16 backend_port;
	__u8 proto;
	__u8 pad;
};

struct weir_sock_rev {
	__be32 vip;
	__be16 vport;
	__u16 pad;
};

/* An unconnected UDP socket's backend per service, so its datagrams to one
 * service keep to one backend (as a kernel conntrack entry per 5-tuple
 * does), while the backend is still in the service's slot. */
struct weir_sock_fwd_key {
	__u64 cookie;
	__be32 vip;
	__be16 vport;
	__u8 proto;
	__u8 pad;
};

struct weir_sock_fwd {
	__u32 service_id;
	__u32 slot;
	__be32 backend_ip;
	__be16 backend_port;
	__u16 pad;
};

#define WEIR_NAT_PORT_MIN 61000
#define WEIR_NAT_PORT_COUNT 4536 /* 61000..65535: NodePort SNAT to remote backends */

/* ---- Masquerade (snat.h) ---- */

/* Masquerade's node ports: Linux's default ip_local_port_range. Its flows
 * are conntrack entries flagged WEIR_CT_F_MASQ. */
#define WEIR_SNAT_PORT_MIN 32768
#define WEIR_SNAT_PORT_MAX 60999


/* ---- Flow events (flow.h) ---- */

/* One record per event in the weir_events ring buffer. Events come from
 * the conntrack (a flow starts, a TCP flag is seen for the first time in
 * a direction, a periodic update, the end), from the one drop helper, and
 * from traced endpoints (every packet). Userspace checks version and size
 * before it trusts a record: anything else is counted and skipped. */
#define WEIR_EVENT_VERSION 2
#define WEIR_EVENTS_BYTES (4 * 1024 * 1024)
/* weir_events_lost's slots (flow.h): events the ring had no room for, and
 * drop events an endpoint's rate held back. */
#define WEIR_LOST_RING_FULL 0
#define WEIR_LOST_RATE_LIMITED 1
#define WEIR_LOST_SLOTS 2
/* Drop events of one endpoint (traffic of no local endpoint counts as one,
 * endpoint 0): WEIR_DROP_EVENTS_PER_SEC a second on each CPU, after a
 * burst of WEIR_DROP_EVENTS_BURST. A pod spraying drops cannot fill the
 * ring and hide other pods' drops and verdicts; its drops are still
 * counted per reason (weir_drops), only their events are held back. */
#define WEIR_DROP_EVENTS_PER_SEC 100
#define WEIR_DROP_EVENTS_BURST 200

enum weir_event_kind {
	WEIR_EV_FLOW_START = 1,  /* the first packet of a tracked connection */
	WEIR_EV_TCP = 2,         /* SYN, SYN-ACK, FIN or RST seen first in this direction */
	WEIR_EV_FLOW_UPDATE = 3, /* periodic: the counters of a live connection */
	WEIR_EV_FLOW_END = 4,    /* FIN or RST: the counters at the end */
	WEIR_EV_DROP = 5,        /* a dropped packet, with its reason */
	WEIR_EV_TRACE = 6,       /* one packet of a traced endpoint */
};

struct weir_event {
	__u8 version;     /* WEIR_EVENT_VERSION */
	__u8 kind;        /* enum weir_event_kind */
	__u8 obs;         /* WEIR_OBS_*: the program that saw it */
	__u8 direction;   /* WEIR_DIR_*, relative to endpoint_id */
	__u8 tcp_flags;   /* of the packet (TCP), or the ICMP type */
	__u8 ct_flags;    /* WEIR_CT_F_* of the entry, 0 without one */
	__u8 ct_state;
	__u8 pad;
	__u16 size;       /* sizeof(struct weir_event) */
	__u16 pad2;
	__u32 drop_reason; /* enum weir_drop_reason (WEIR_EV_DROP) */
	__u64 ts_ns;      /* bpf_ktime_get_ns() */
	__u32 endpoint_id; /* the local endpoint, 0 if none */
	__u32 src_identity; /* 0 where the datapath did not know it */
	__u32 dst_identity;
	__u32 service_id;  /* the service a translated connection reached */
	__u32 ifindex;     /* the interface the program ran on */
	__u32 len;         /* the packet's length */
	/* The packet as the program saw it, and what its connection makes of
	 * it: for a service, tuple has the VIP (or NodePort) the client dialled
	 * and xlate the backend (and, with SNAT or masquerade, the node's
	 * address and port). xlate equals tuple when nothing translates. */
	struct weir_ct_key tuple;
	struct weir_ct_key xlate;
	__u64 packets;      /* this direction's, so far */
	__u64 bytes;
	__u64 rev_packets;  /* the other direction's (updates and the end) */
	__u64 rev_bytes;
	__u64 handshake_ns; /* SYN to SYN-ACK, on the SYN-ACK event; 0 otherwise */
	/* The connection's policy verdicts (WEIR_PV_*), or for a policy drop
	 * the deciding one on its side. */
	__u32 policy_egress;
	__u32 policy_ingress;
};


/* ---- Network policy (policy.h) ---- */

/* The agent compiles every policy into per-endpoint tables of verdicts, so
 * the datapath never scans rules: a few LPM lookups on a connection's first
 * packet, whose verdict the conntrack entries then keep.
 *
 * A key is one local endpoint, one direction, one peer and a protocol/port
 * prefix. The peer is an identity (the ipcache's for the other address),
 * the id of the most specific policy CIDR containing it (weir_policy_cidr),
 * or WEIR_POLICY_PEER_ANY. The data after prefixlen is matched bit by bit:
 * endpoint, peer and direction always whole (WEIR_POLICY_PREFIX_PEER), then
 * the protocol, then the port's high bits (port ranges become prefixes). */
struct weir_policy_key {
	__u32 prefixlen;
	__u32 endpoint_id;
	__u32 peer;
	__u8 direction; /* WEIR_DIR_INGRESS or WEIR_DIR_EGRESS */
	__u8 proto;
	__be16 dport;
};

#define WEIR_POLICY_PREFIX_PEER 72
#define WEIR_POLICY_PREFIX_PROTO 80
#define WEIR_POLICY_PREFIX_FULL 96
#define WEIR_POLICY_PEER_ANY 0
/* CIDR peers are numbered above every identity (24 bits). */
#define WEIR_POLICY_CIDR_MIN 0x01000000
#define WEIR_POLICY_MAX_ENTRIES (1 << 20)
#define WEIR_POLICY_CIDR_MAX 65536

/* Actions by precedence: the datapath takes the highest of the lookups
 * (peer identity, peer CIDR, any peer), so an explicit deny beats every
 * allow and an allow beats the default deny of an isolated endpoint. The
 * agent writes each table so that its most specific entry is already the
 * combined answer for that peer. */
#define WEIR_PA_NONE 0
#define WEIR_PA_DEFAULT_DENY 1
#define WEIR_PA_ALLOW 2
#define WEIR_PA_DENY 3

/* The NetworkPolicy tier's two layers: what is enforced, and what would
 * be with the audit-mode policies enforced too. A connection the second
 * denies and the first does not is forwarded as an audit verdict.
 * ClusterNetworkPolicy's tiers are two more: Admin, judged before them,
 * and Baseline, judged after them where they decide nothing. */
struct weir_policy_entry {
	__u8 action;       /* WEIR_PA_* enforced */
	__u8 audit_action; /* WEIR_PA_* with audit-mode policies too */
	__u16 pad;
	__u32 rule;        /* the deciding rule of each layer (the agent numbers them) */
	__u32 audit_rule;
	__u32 admin;       /* WEIR_PT_*: the tier's first rule covering the slot */
	__u32 admin_rule;
	__u32 baseline;
	__u32 baseline_rule;
};

/* A tier layer's value: the rule's rank << WEIR_PT_RANK_SHIFT | its
 * action. Ranks count down from the tier's first rule (lowest priority
 * first), so the highest value of the lookups is the first rule that
 * matches, which decides: Accept and Deny for good, Pass to the next
 * tier. 0: no rule of the tier matches. */
#define WEIR_PT_NONE 0
#define WEIR_PT_ACCEPT 1
#define WEIR_PT_DENY 2
#define WEIR_PT_PASS 3
#define WEIR_PT_KIND_MASK 3
#define WEIR_PT_RANK_SHIFT 2

/* A verdict in one u32, as conntrack entries and events keep it:
 * WEIR_PV_* << WEIR_PV_SHIFT | the deciding rule's reference. */
#define WEIR_PV_NONE 0   /* no policy selects the endpoint in this direction */
#define WEIR_PV_ALLOW 1
#define WEIR_PV_AUDIT 2  /* forwarded; an audit-mode policy would deny it (the ref) */
#define WEIR_PV_DENIED 3 /* dropped: nothing allows it (default deny) */
#define WEIR_PV_DENY 4   /* dropped: an explicit deny rule */
#define WEIR_PV_SHIFT 24
#define WEIR_PV_REF_MASK 0x7fffff

#endif /* WEIR_ABI_H */
