// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Programs on the host side of each pod's veth.
 *
 *   from_pod: TC ingress of the host veth, i.e. every packet the pod sends.
 *   to_pod:   TC egress of the host veth, i.e. packets the node's stack
 *             routes to the pod.
 *
 * Pod to pod on the same node never touches the host stack: from_pod finds
 * the destination endpoint, applies the to-pod step inline and redirects
 * straight into the destination pod's namespace with bpf_redirect_peer.
 *
 * from_pod runs in stages joined by tail calls (weir_calls, maps.h), so
 * each program stays far from the verifier's limits as policy, flow events
 * and IPv6 join: from_pod (parse, source check) -> from_pod_ct (conntrack,
 * services, delivery) -> pod_reject when a service has no backend; every
 * drop goes on to drop_notify. skb->cb carries the context across. */

#include "lib/ctx/skb.h"
#include "lib/common.h"
#include "lib/abi.h"
#include "lib/maps.h"
#include "lib/drop.h"
#include "lib/counters.h"
#include "lib/eth.h"
#include "lib/ipv4.h"
#include "lib/endpoint.h"
#include "lib/overlay.h"
#include "lib/lb.h"
#include "lib/nodeport.h"

/* from_pod's first stage: what the packet is, and whether this pod may
 * send it. */
SEC("classifier")
int from_pod(struct __sk_buff *skb)
{
	struct weir_ep_info *src;
	struct ipv4_meta meta = {};
	__u32 reason;
	__u16 proto;

	obs_begin(skb, WEIR_OBS_FROM_POD);
	proto = eth_proto(skb);
	if (!proto)
		return drop_packet(skb, WEIR_DROP_TRUNCATED_ETH);
	if (proto == ETH_P_ARP)
		return WEIR_PASS_ON;
	if (proto != ETH_P_IP)
		return drop_packet(skb, WEIR_DROP_UNSUPPORTED_L3);

	reason = ipv4_parse(skb, &meta);
	if (reason)
		return drop_packet(skb, reason);

	/* Anti-spoofing: the source must be the endpoint behind this very
	 * interface, so a pod cannot borrow a neighbour's address. */
	src = lookup_ep_v4(meta.saddr);
	if (!src || src->ifindex != skb->ifindex)
		return drop_packet(skb, WEIR_DROP_INVALID_SOURCE);
	obs_endpoint(skb, src, WEIR_DIR_EGRESS);
	flow_trace(skb, src, WEIR_DIR_EGRESS);
	count_traffic(src->endpoint_id, WEIR_DIR_EGRESS, skb->len);
	return tail_call_stage(skb, WEIR_CALL_FROM_POD_CT);
}

/* Second stage, conntrack and services, then delivery. */
SEC("classifier")
int from_pod_ct(struct __sk_buff *skb)
{
	struct weir_ep_info *dst;
	struct ipv4_meta meta = {};
	__u8 ct_flags = 0;
	int ret;

	/* A tail call keeps only skb->cb: parse again what the first stage
	 * checked (it cannot fail now). */
	if (ipv4_parse(skb, &meta))
		return drop_packet(skb, WEIR_DROP_MALFORMED_IPV4);
	/* Service translation (DNAT to a backend, reverse NAT of replies) runs
	 * before the destination lookup and updates meta's addresses; a service
	 * without backends is answered by the rejection stage. */
	ret = lb4_xlate(skb, &meta, &ct_flags);
	if (ret != WEIR_CONTINUE)
		return ret;

	dst = lookup_ep_v4(meta.daddr);
	if (dst) {
		obs_peer(skb, dst);
		return deliver_local(skb, dst, meta.ttl);
	}
	/* A local backend answering an external client through a NodePort or
	 * external IP: the source is now the node IP, which the stack would
	 * refuse on input (nodeport.h). */
	if ((ct_flags & (WEIR_CT_F_NODEPORT | WEIR_CT_F_REVERSE)) == (WEIR_CT_F_NODEPORT | WEIR_CT_F_REVERSE))
		return nodeport_redirect_out(skb, &meta);
	/* Remote pods and the outside world. */
	return route_remote_v4(skb, meta.daddr);
}

/* A connection to a service without backends, answered (reject.h). */
SEC("classifier")
int pod_reject(struct __sk_buff *skb)
{
	struct weir_ep_info *src;
	struct ipv4_meta meta = {};

	if (ipv4_parse(skb, &meta))
		return drop_packet(skb, WEIR_DROP_MALFORMED_IPV4);
	src = lookup_ep_v4(meta.saddr);
	if (!src)
		return drop_packet(skb, WEIR_DROP_INVALID_SOURCE);
	return reject4(skb, &meta, src);
}

/* Where every TC drop ends (drop.h). Lives here, in the pod object; the
 * node-device programs reach it through the same pinned weir_calls. */
SEC("classifier")
int drop_notify(struct __sk_buff *skb)
{
	return drop_notify_run(skb);
}

SEC("classifier")
int to_pod(struct __sk_buff *skb)
{
	struct weir_ep_info *dst;
	struct ipv4_meta meta = {};
	__u32 reason;
	__u16 proto;

	obs_begin(skb, WEIR_OBS_TO_POD);
	proto = eth_proto(skb);
	if (!proto)
		return drop_packet(skb, WEIR_DROP_TRUNCATED_ETH);
	if (proto != ETH_P_IP)
		return WEIR_PASS_ON;

	reason = ipv4_parse(skb, &meta);
	if (reason)
		return drop_packet(skb, reason);
	dst = lookup_ep_v4(meta.daddr);
	/* A service reply the stack routed here skipped the client's
	 * from_pod; anything else is tracked as it enters the pod. */
	/* A packet with a socket is the node's own (its stack, a host-network
	 * pod): policy lets the node reach its pods, as Kubernetes requires
	 * for probes, whatever address it sends from. */
	reason = ct_to_pod(skb, &meta, dst && dst->ifindex == skb->ifindex, skb->sk ? WEIR_ID_HOST : 0);
	if (reason)
		return drop_packet(skb, reason);
	dst = lookup_ep_v4(meta.daddr);
	if (!dst || dst->ifindex != skb->ifindex)
		return WEIR_PASS_ON;
	obs_endpoint(skb, dst, WEIR_DIR_INGRESS);
	return to_endpoint(skb, dst);
}

char _license[] SEC("license") = "Dual BSD/GPL";
