/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Endpoint lookup and delivery into a local pod. */
#ifndef WEIR_ENDPOINT_H
#define WEIR_ENDPOINT_H

#include "common.h"
#include "maps.h"
#include "counters.h"
#include "eth.h"
#include "drop.h"
#include "ipv4.h"

static __always_inline struct weir_ep_info *lookup_ep_v4(__be32 addr)
{
	struct weir_ep_key key = { .family = WEIR_AF_INET };

	key.addr[0] = addr;
	return bpf_map_lookup_elem(&weir_endpoints, &key);
}

#ifdef WEIR_CTX_SKB
/* Delivery is TC's: XDP passes what is for a local pod on to it. */

/* Rewrites the frame as if the destination's gateway had sent it and counts
 * it as ingress of that endpoint. Shared by to-pod (stack → pod) and by
 * from-pod for pod → pod on this node, which skips the host's egress hook. */
static __always_inline int to_endpoint(struct __sk_buff *skb, const struct weir_ep_info *dst)
{
	__u8 pod_mac[ETH_ALEN], host_mac[ETH_ALEN];

	/* Copy out: the map value must not be the source of a store helper. */
	__builtin_memcpy(pod_mac, dst->pod_mac, ETH_ALEN);
	__builtin_memcpy(host_mac, dst->host_mac, ETH_ALEN);
	if (eth_rewrite(skb, pod_mac, host_mac))
		return drop_packet(skb, WEIR_DROP_REWRITE_FAILED);
	count_traffic(dst->endpoint_id, WEIR_DIR_INGRESS, skb->len);
	flow_trace(skb, dst, WEIR_DIR_INGRESS);
	return TC_ACT_OK;
}

/* One routing hop into a local pod's namespace: TTL, rewrite, then
 * bpf_redirect_peer, which skips the host veth's egress and the backlog
 * queue. Only valid from a TC ingress hook. */
static __always_inline int deliver_local(struct __sk_buff *skb, const struct weir_ep_info *dst, __u8 ttl)
{
	__u32 ifindex = dst->ifindex;

	if (ttl <= 1)
		return drop_packet(skb, WEIR_DROP_TTL_EXCEEDED);
	if (ipv4_dec_ttl(skb, ttl))
		return drop_packet(skb, WEIR_DROP_REWRITE_FAILED);
	if (to_endpoint(skb, dst) != TC_ACT_OK)
		return TC_ACT_SHOT;
	return bpf_redirect_peer(ifindex, 0);
}

#endif /* WEIR_CTX_SKB */

#endif /* WEIR_ENDPOINT_H */
