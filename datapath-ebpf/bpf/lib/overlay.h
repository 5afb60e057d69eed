/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Leaving the node: native routing hands the packet to the node's stack,
 * which has a route per remote pod CIDR; VXLAN mode encapsulates it through
 * the external-mode vxlan device towards the node that owns the CIDR. */
#ifndef WEIR_OVERLAY_H
#define WEIR_OVERLAY_H

#include <linux/if_ether.h>
#include "common.h"
#include "maps.h"

static __always_inline struct weir_config *node_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&weir_config, &zero);
}

static __always_inline struct weir_route *lookup_route_v4(__be32 addr)
{
	struct weir_route_key key = { .prefixlen = 32 + 32, .family = WEIR_AF_INET };

	key.addr[0] = addr;
	return bpf_map_lookup_elem(&weir_node_routes, &key);
}

/* Points the external-mode vxlan device at the node owning the route. */
static __always_inline int set_tunnel_dst(struct __sk_buff *skb, const struct weir_route *route)
{
	struct bpf_tunnel_key tkey = {};

	tkey.remote_ipv4 = bpf_ntohl(route->node_ip);
	tkey.tunnel_ttl = 64;
	return bpf_skb_set_tunnel_key(skb, &tkey, sizeof(tkey), BPF_F_ZERO_CSUM_TX);
}

/* What arrives through the tunnel speaks for a node: the outer sender must
 * be a node of the cluster (weir_nodes), and the inner source one of that
 * node's pods (its pod CIDR in weir_node_routes) or the node itself (its
 * own traffic, and what it forwards after SNAT to its address: NodePort).
 * Otherwise anyone who can reach the VXLAN port could claim any pod's
 * address, and with it that pod's identity before policy. 0, or the drop
 * reason. */
static __always_inline __u32 overlay_check_source(struct __sk_buff *skb, __be32 inner_saddr)
{
	struct bpf_tunnel_key tkey = {};
	struct weir_route *route;
	__be32 outer;

	if (bpf_skb_get_tunnel_key(skb, &tkey, sizeof(tkey), 0))
		return WEIR_DROP_TUNNEL_SOURCE;
	outer = bpf_htonl(tkey.remote_ipv4);
	if (!bpf_map_lookup_elem(&weir_nodes, &outer))
		return WEIR_DROP_TUNNEL_SOURCE;
	if (inner_saddr == outer)
		return 0;
	route = lookup_route_v4(inner_saddr);
	if (!route || route->node_ip != outer)
		return WEIR_DROP_TUNNEL_SOURCE;
	return 0;
}

#ifndef AF_INET
#define AF_INET 2
#endif

#ifdef WEIR_CTX_SKB
/* What arrives on the uplink with another node's pod address as its
 * source speaks for that pod, so it must come from that node: through the
 * device and from the MAC (the next hop's, as the FIB resolves it) this
 * node would use to reach it. Anyone else on the node network, or beyond
 * a router, could otherwise claim any pod's address and its identity
 * before policy. VXLAN mode: such packets come through the tunnel, never
 * the uplink, so the same check drops every one. Before this node has
 * resolved the next hop (no neighbour entry yet) there is nothing to
 * compare with: the packet goes on, as it does on a routed underlay whose
 * next hop is a router (any host behind it has the router's MAC). 0, or
 * the drop reason. */
static __always_inline __u32 routed_check_source(struct __sk_buff *skb, __be32 saddr)
{
	struct bpf_fib_lookup fib = {};
	struct weir_route *route;
	__u8 smac[ETH_ALEN];

	route = lookup_route_v4(saddr);
	if (!route)
		return 0;
	fib.family = AF_INET;
	fib.ipv4_dst = route->node_ip;
	fib.ifindex = skb->ifindex;
	if (bpf_fib_lookup(skb, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return 0;
	if (ctx_load_bytes(skb, ETH_ALEN, smac, ETH_ALEN))
		return WEIR_DROP_ROUTED_SOURCE;
	if (fib.ifindex != skb->ifindex || __builtin_memcmp(smac, fib.dmac, ETH_ALEN))
		return WEIR_DROP_ROUTED_SOURCE;
	return 0;
}
#endif /* WEIR_CTX_SKB */

/* Pod traffic for another node's pod goes straight into the tunnel,
 * skipping the node's routing stack. */
static __always_inline int route_remote_v4(struct __sk_buff *skb, __be32 daddr)
{
	struct weir_config *cfg = node_config();
	struct weir_route *route;

	if (!cfg || cfg->routing_mode != WEIR_ROUTING_VXLAN || !cfg->tunnel_ifindex)
		return TC_ACT_OK;
	route = lookup_route_v4(daddr);
	if (!route)
		/* Not a pod CIDR of another node: the stack decides. */
		return TC_ACT_OK;
	if (set_tunnel_dst(skb, route))
		return drop_packet(skb, WEIR_DROP_REWRITE_FAILED);
	return bpf_redirect(cfg->tunnel_ifindex, 0);
}

#endif /* WEIR_OVERLAY_H */
