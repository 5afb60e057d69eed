// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Programs on the node's own devices.
 *
 *   from_netdev:  TC ingress of the uplink. NodePort / externalIP / LB
 *                 translation for what XDP (bpf_xdp.c) left to it or when
 *                 XDP is off (nodeport.h); replies to masqueraded flows get
 *                 their pod's address back (snat.h); then packets for a
 *                 local pod (native routing, or such replies) go straight
 *                 into the pod's netns.
 *   to_netdev:    TC egress of the uplink. Local pods' packets bound outside
 *                 the cluster CIDR leave with the node IP as source.
 *   from_overlay: TC ingress of the vxlan device. Decapsulated packets for a
 *                 local pod, likewise.
 *   to_overlay:   TC egress of the vxlan device. The node's own stack routes
 *                 remote pod CIDRs here (replies from the node to a remote
 *                 pod); the datapath picks the tunnel endpoint.
 *
 * Everything else is not weir's business here and goes on to the stack. */

#include "lib/ctx/skb.h"
#include "lib/common.h"
#include "lib/abi.h"
#include "lib/maps.h"
#include "lib/drop.h"
#include "lib/eth.h"
#include "lib/ipv4.h"
#include "lib/endpoint.h"
#include "lib/overlay.h"
#include "lib/lb.h"
#include "lib/snat.h"
#include "lib/nodeport.h"

/* A packet from_overlay parsed, for a local pod or none of weir's business. */
static __always_inline int to_local_pod(struct __sk_buff *skb, struct ipv4_meta *meta)
{
	struct weir_ep_info *dst;
	__u32 reason;

	dst = lookup_ep_v4(meta->daddr);
	if (!dst)
		return WEIR_PASS_ON;
	obs_endpoint(skb, dst, WEIR_DIR_INGRESS);
	/* A backend on another node answered a local client: restore the
	 * service address the client connected to. */
	reason = ct_to_pod(skb, meta, 1, 0);
	if (reason)
		return drop_packet(skb, reason);
	return deliver_local(skb, dst, meta->ttl);
}

/* NodePort translation in TC, on the packet from_netdev parsed and the
 * entry it looked up. WEIR_CONTINUE when the packet is none of its
 * business, otherwise the verdict. */
static __always_inline int nodeport_tc(struct __sk_buff *skb, struct ipv4_meta *meta, const struct weir_ct_key *key,
				       struct weir_ct_entry *ct, __u8 l4_flags, __u64 now)
{
	struct weir_ct_key to = {};
	struct weir_ep_info *dst;
	__u32 reason;
	int ret;

	ret = nodeport_ct(skb, key, ct, l4_flags, now, !meta->later_fragment, &to);
	if (ret == 0)
		return WEIR_CONTINUE;
	if (ret < 0)
		return drop_packet(skb, -ret);
	reason = nat_rewrite4(skb, meta, key, to.saddr, to.daddr, to.sport, to.dport);
	if (reason)
		return drop_packet(skb, reason);
	dst = lookup_ep_v4(meta->daddr);
	if (dst) {
		obs_endpoint(skb, dst, WEIR_DIR_INGRESS);
		return deliver_local(skb, dst, meta->ttl);
	}
	return nodeport_redirect_out(skb, meta);
}

SEC("classifier")
int from_netdev(struct __sk_buff *skb)
{
	struct weir_ct_entry *ct = NULL;
	struct weir_ct_key key = {};
	struct weir_ep_info *dst;
	struct ipv4_meta meta = {};
	__u8 l4_flags = 0;
	__u32 reason;
	__u64 now;
	int tracked, ret, create = 1;

	obs_begin(skb, WEIR_OBS_FROM_NETDEV);
	/* Parsed once for every stage below. Malformed packets are the
	 * stack's to judge on a node device. */
	if (eth_proto(skb) != ETH_P_IP || ipv4_parse(skb, &meta))
		return WEIR_PASS_ON;
	tracked = ct_tuple(skb, &meta, &key, &l4_flags);
	now = bpf_ktime_get_ns();
	if (tracked > 0) {
		/* The one conntrack lookup: NodePort, masquerade and service
		 * replies all follow the entry it finds. NodePort's SNAT ports
		 * (61000-65535) and masquerade's (32768-60999) do not overlap,
		 * so their reply tuples cannot claim each other's. */
		ct = bpf_map_lookup_elem(&weir_ct4, &key);
		ret = nodeport_tc(skb, &meta, &key, ct, l4_flags, now);
		if (ret != WEIR_CONTINUE)
			return ret;
		/* Before the endpoint lookup: a masqueraded reply is addressed
		 * to the node until this turns it back into the pod's. */
		if (ct && (ct->flags & (WEIR_CT_F_MASQ | WEIR_CT_F_REVERSE)) == (WEIR_CT_F_MASQ | WEIR_CT_F_REVERSE)) {
			reason = snat4_reply(skb, &meta, &key, ct, l4_flags);
			if (reason)
				return drop_packet(skb, reason);
			/* A service whose backend is outside the cluster: the
			 * reply, the pod's again, may be a service reply too.
			 * Nothing new is tracked for it: it is the masqueraded
			 * connection's. */
			key.daddr = meta.daddr;
			key.dport = ct->xlate_dport;
			ct = bpf_map_lookup_elem(&weir_ct4, &key);
			create = 0;
		}
	}
	dst = lookup_ep_v4(meta.daddr);
	if (!dst)
		return WEIR_PASS_ON;
	obs_endpoint(skb, dst, WEIR_DIR_INGRESS);
	if (tracked < 0)
		return drop_packet(skb, -tracked);
	reason = routed_check_source(skb, meta.saddr);
	if (reason)
		return drop_packet(skb, reason);
	if (tracked > 0) {
		reason = ct_into_pod(skb, &meta, &key, ct, l4_flags, now, create, 0);
		if (reason)
			return drop_packet(skb, reason);
	}
	return deliver_local(skb, dst, meta.ttl);
}

SEC("classifier")
int to_netdev(struct __sk_buff *skb)
{
	struct ipv4_meta meta = {};
	int translated = 0;
	__u32 reason;

	obs_begin(skb, WEIR_OBS_TO_NETDEV);
	if (eth_proto(skb) != ETH_P_IP || ipv4_parse(skb, &meta))
		return WEIR_PASS_ON;
	reason = snat4_egress(skb, &meta, &translated);
	if (reason)
		return drop_packet(skb, reason);
	return translated ? TC_ACT_OK : WEIR_PASS_ON;
}

SEC("classifier")
int from_overlay(struct __sk_buff *skb)
{
	struct ipv4_meta meta = {};
	__u32 reason;

	obs_begin(skb, WEIR_OBS_FROM_OVERLAY);
	/* Parsed once for both stages. Malformed packets are the stack's to
	 * judge on a node device. */
	if (eth_proto(skb) != ETH_P_IP || ipv4_parse(skb, &meta))
		return WEIR_PASS_ON;
	reason = overlay_check_source(skb, meta.saddr);
	if (reason)
		return drop_packet(skb, reason);
	return to_local_pod(skb, &meta);
}

SEC("classifier")
int to_overlay(struct __sk_buff *skb)
{
	struct ipv4_meta meta = {};
	struct weir_route *route;

	obs_begin(skb, WEIR_OBS_TO_OVERLAY);
	if (eth_proto(skb) != ETH_P_IP || ipv4_parse(skb, &meta))
		return WEIR_PASS_ON;
	route = lookup_route_v4(meta.daddr);
	if (!route)
		return WEIR_PASS_ON;
	/* Packets redirected by from_pod already carry the same key. */
	if (set_tunnel_dst(skb, route))
		return drop_packet(skb, WEIR_DROP_REWRITE_FAILED);
	return TC_ACT_OK;
}

char _license[] SEC("license") = "Dual BSD/GPL";
